/* x86/avx512_prefill.c — the multiply-add (prefill) path for uniform bit-plane types on AVX-512 with
 * VNNI: int8 activations times weight levels expanded once per tile, vpdpbusd.
 *
 * The same arithmetic as x86/avx2_prefill.c (read its opening comment for the prepared input, the
 * per-group formula and the error bound, which hold here unchanged: the integer part is exact), with
 * what AVX-512 offers:
 *   - one zmm holds a whole expanded quad: 16 rows x 4 columns of levels (layout (span / 4, 16, 4));
 *   - vpdpbusd multiplies u8 levels with s8 activations and adds the 4 products of each row into
 *     its s32 lane, with no s16 intermediate: no saturation at any width (a block of 32 sums at most
 *     32 x 255 x 127 < 2^31), so 8-bit levels need no offset;
 *   - expansion tests each plane bit with vptestmb into a mask and adds 2^p under it.
 * Per quad, one level load serves VECTORS broadcast activations (4 vectors at a time).
 * The prepared input is x86/avx2_prefill.c's (eq_prefill_prepare_avx2, layout in q8_acts.h):
 * every CPU with AVX-512 has AVX2, and eq_prefill_avx512_available checks both.
 *
 * Compiled for AVX-512 F/BW/VL/VNNI (+ AVX2, FMA, F16C) by the pragmas; called only by a set whose
 * availability check includes eq_prefill_avx512_available.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "q8_acts.h"

enum {
    SPAN_COLS = 256,        /* columns expanded at once per tile: 16 x 256 levels = 4 KB in L1 */
    QUAD_BYTES = 64,        /* one expanded quad: 16 rows x 4 columns, one zmm */
    BATCH_MAX = 64,         /* vectors whose tile accumulators stay in L1 (4 KB) per pass */
    VECTORS = 4             /* vectors multiplied per level load */
};

/* cpuid: AVX2 (leaf 7 EBX bit 5), AVX-512 F, BW, VL (EBX bits 16, 30, 31), VNNI (ECX bit 11); FMA,
 * F16C, OSXSAVE (leaf 1 ECX bits 12, 29, 27); the OS saving YMM and ZMM state and the opmask
 * registers (XCR0 bits 1, 2, 5, 6, 7). */
int eq_prefill_avx512_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    if (!((ecx >> 12) & 1) || !((ecx >> 27) & 1) || !((ecx >> 29) & 1))
        return 0;
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xe6u) != 0xe6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    const unsigned int needed_ebx = (1u << 5) | (1u << 16) | (1u << 30) | (1u << 31);
    return (ebx & needed_ebx) == needed_ebx && ((ecx >> 11) & 1);
}

/* ---- expand: bit-planes -> levels ------------------------------------------------------------- */

/* levels (group / 4, 16, 4) of one (tile, group) block from its planes (bits, group / 8, 16): per
 * 8-column chunk, each row's plane byte is spread over its 4-byte lane (pshufb within each 128-bit
 * lane of 4 rows), bit i tested in byte i mod 4 (columns 0-3, then 4-7), and 2^p added under the
 * mask. */
static inline __attribute__((always_inline)) void
expand_group(const uint8_t *planes, const int bits, const size_t group, uint8_t *levels)
{
    const __m512i spread = _mm512_set_epi32(0x0f0f0f0f, 0x0e0e0e0e, 0x0d0d0d0d, 0x0c0c0c0c,
                                            0x0b0b0b0b, 0x0a0a0a0a, 0x09090909, 0x08080808,
                                            0x07070707, 0x06060606, 0x05050505, 0x04040404,
                                            0x03030303, 0x02020202, 0x01010101, 0x00000000);
    const __m512i columns_0_3 = _mm512_set1_epi32(0x08040201);
    const __m512i columns_4_7 = _mm512_set1_epi32((int)0x80402010u);
    const size_t plane_bytes = 2u * group;
    for (size_t c = 0; c < group / EQ_CHUNK_COLS; c++) {
        __m512i low = _mm512_setzero_si512(), high = _mm512_setzero_si512();   /* columns 0-3, 4-7 */
        for (int p = 0; p < bits; p++) {
            /* row r's byte in all of dword r: the 16 bytes in every lane, lane L picks rows 4L..4L+3 */
            const __m512i chunk = _mm512_broadcast_i32x4(
                _mm_loadu_si128((const __m128i *)(planes + (size_t)p * plane_bytes + 16u * c)));
            const __m512i spread_rows = _mm512_shuffle_epi8(chunk, spread);
            const __m512i weight = _mm512_set1_epi8((char)(1u << p));
            low = _mm512_mask_add_epi8(low, _mm512_test_epi8_mask(spread_rows, columns_0_3), low, weight);
            high = _mm512_mask_add_epi8(high, _mm512_test_epi8_mask(spread_rows, columns_4_7), high, weight);
        }
        _mm512_store_si512((void *)(levels + 2u * c * QUAD_BYTES), low);
        _mm512_store_si512((void *)(levels + (2u * c + 1u) * QUAD_BYTES), high);
    }
}

/* ---- multiply: `vectors` vectors against one expanded group ------------------------------------- */

/* y[v] (16 rows) += scale[r] Σ_b d_b Σ_{k in b} l[r, k] q_v[k] + bias[r] Σ x̂_v over group g, for
 * `vectors` (1 .. VECTORS) vectors; levels (group / 4, 16, 4), scale and bias (16,) */
static inline __attribute__((always_inline)) void
group_product(const uint8_t *levels, const eq_q8_acts *x, const int vectors, size_t g, __m512 scale,
              __m512 bias, const size_t group, __m512 *y)
{
    const size_t first_block = g * group / EQ_Q8_BLOCK;
    __m512 dot[VECTORS];
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        dot[v] = _mm512_setzero_ps();
    for (size_t b = 0; b < group / EQ_Q8_BLOCK; b++) {
        const size_t block = first_block + b;
        __m512i sum[VECTORS];                                /* s32 per row */
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++)
            sum[v] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int j = 0; j < EQ_Q8_BLOCK / 4; j++) {
            const __m512i w = _mm512_load_si512((const void *)(levels + (b * (EQ_Q8_BLOCK / 4) + (size_t)j) * QUAD_BYTES));
#pragma GCC unroll 8
            for (int v = 0; v < vectors; v++) {
                int32_t four;
                memcpy(&four, x[v].q + block * EQ_Q8_BLOCK + 4 * (size_t)j, sizeof four);
                sum[v] = _mm512_dpbusd_epi32(sum[v], w, _mm512_set1_epi32(four));
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++)
            dot[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[v]), _mm512_set1_ps(x[v].scale[block]), dot[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++) {
        float x_sum = 0.0f;
        for (size_t b = 0; b < group / EQ_Q8_BLOCK; b++)
            x_sum += x[v].sum[first_block + b];
        y[v] = _mm512_fmadd_ps(scale, dot[v], _mm512_fmadd_ps(bias, _mm512_set1_ps(x_sum), y[v]));
    }
}

/* acc[v] (16 rows) += the span's groups g0 .. g_end applied to `vectors` vectors */
static inline __attribute__((always_inline)) void
span_vectors(const uint8_t *levels, const float (*scales)[EQ_TILE_ROWS], const float (*biases)[EQ_TILE_ROWS],
             const eq_q8_acts *x, const int vectors, size_t g0, size_t g_end, const size_t group,
             float (*acc)[EQ_TILE_ROWS])
{
    __m512 y[VECTORS];
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        y[v] = _mm512_load_ps(acc[v]);
    for (size_t g = g0; g < g_end; g++)
        group_product(levels + (g - g0) * group * EQ_TILE_ROWS, x, vectors, g, _mm512_load_ps(scales[g - g0]),
                      _mm512_load_ps(biases[g - g0]), group, y);
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        _mm512_store_ps(acc[v], y[v]);
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* The kernel body, inlined once per (bits, group) by eq_prefill_gemm_avx512 so that the loops over
 * planes, chunks and quads have constant trip counts. */
static inline __attribute__((always_inline)) void
prefill_gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                  const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t block_bytes = eq_block_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const size_t span_groups = SPAN_COLS / group;
    const __m512 zero_point = _mm512_set1_ps((float)((1u << bits) - 1u) / 2.0f);

    _Alignas(64) uint8_t levels[SPAN_COLS / 4 * QUAD_BYTES];          /* (span / 4, 16, 4) */
    _Alignas(64) float acc[BATCH_MAX][EQ_TILE_ROWS];                   /* y of the tile per vector */
    _Alignas(64) float scales[SPAN_COLS / EQ_Q8_BLOCK][EQ_TILE_ROWS];  /* per group of the span */
    _Alignas(64) float biases[SPAN_COLS / EQ_Q8_BLOCK][EQ_TILE_ROWS];  /* what multiplies Σ x̂ */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * n_groups * block_bytes;
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        for (size_t v0 = 0; v0 < in->n; v0 += BATCH_MAX) {
            const size_t n_vectors = in->n - v0 < BATCH_MAX ? in->n - v0 : BATCH_MAX;
            memset(acc, 0, n_vectors * sizeof acc[0]);
            for (size_t g0 = 0; g0 < n_groups; g0 += span_groups) {
                const size_t g_end = g0 + span_groups < n_groups ? g0 + span_groups : n_groups;
                for (size_t g = g0; g < g_end; g++) {
                    const uint8_t *block = tile_data + g * block_bytes;
                    expand_group(block + planes_offset, bits, group, levels + (g - g0) * group * EQ_TILE_ROWS);
                    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
                    const __m512 bias = type->symmetric
                        ? _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(scale, zero_point))
                        : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + scale_bytes)));
                    _mm512_store_ps(scales[g - g0], scale);
                    _mm512_store_ps(biases[g - g0], bias);
                }
                eq_q8_acts x[VECTORS];
                size_t v = 0;
                for (; v + VECTORS <= n_vectors; v += VECTORS) {
                    for (int i = 0; i < VECTORS; i++)
                        x[i] = eq_q8_acts_at(in->prepared + (v0 + v + (size_t)i) * in->stride, cols);
                    span_vectors(levels, scales, biases, x, VECTORS, g0, g_end, group, acc + v);
                }
                for (; v < n_vectors; v++) {
                    x[0] = eq_q8_acts_at(in->prepared + (v0 + v) * in->stride, cols);
                    span_vectors(levels, scales, biases, x, 1, g0, g_end, group, acc + v);
                }
            }
            for (size_t v = 0; v < n_vectors; v++)
                memcpy(y + (v0 + v) * y_stride + row0, acc[v], n_rows * sizeof(float));
        }
    }
}

void eq_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                            const eq_input *in, float *y, size_t y_stride)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): prefill_gemm_body(type, data, rows, cols, in, y, y_stride, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
    default:   /* a type added to the table without a case here: correct, not unrolled */
        prefill_gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: never available, never called */

#include "kernels.h"

int eq_prefill_avx512_available(void)
{
    return 0;
}

void eq_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                            const eq_input *in, float *y, size_t y_stride)
{
}

#endif
