/* x86/avx512_packed.c — int8 multiply-add decode kernels for the uniform packed family with AVX-512
 * VNNI: the `avx512` set's decode path for that family (x86/avx512.c names them in its struct).
 *
 * The algorithm of scalar/packed.c, whose prepare (int8 activations per block of 32, float scale
 * and Σx̂ = s_b Σ xq per block) it shares: vpdpbusd multiplies u8 levels by s8 activations and adds each row's
 * 4 products into its int32 lane without saturation (4 x 255 x 127 per step), so every width takes
 * the same path: one 64-byte load of levels is the 16 rows x 4 columns of a quad (edgeq.h), the
 * quad's 4 activations broadcast to every lane; 4-bit quads are masked and shifted into two.
 * Compiled for AVX-512 F/BW/VL/VNNI + FMA/F16C by its pragma; call only when
 * eq_packed_avx512_available() says the CPU has them (the avx512 set's own check includes VNNI).
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

/* cpuid: FMA, F16C, OSXSAVE (leaf 1 ECX 12, 29, 27), AVX512F/BW/VL (leaf 7 EBX 16, 30, 31),
 * AVX512_VNNI (leaf 7 ECX 11); XCR0: SSE, AVX, opmask, ZMM state (bits 1, 2, 5, 6, 7). */
int eq_packed_avx512_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 12) & 1) || !((ecx >> 27) & 1) || !((ecx >> 29) & 1))
        return 0;
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xe6u) != 0xe6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return ((ebx >> 16) & 1) && ((ebx >> 30) & 1) && ((ebx >> 31) & 1) && ((ecx >> 11) & 1);
}

/* The prepared layout is scalar/packed.c's: int8 xq[padded], float scale[padded/32], float Σx̂[padded/32]. */
static size_t padded_columns(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

size_t eq_packed_prepared_bytes_avx512(size_t cols)
{
    return eq_packed_prepared_bytes_scalar(cols);
}

void eq_packed_prepare_avx512(const float *x, size_t cols, uint8_t *out)
{
    eq_packed_prepare_scalar(x, cols, out);
}

static inline __m512i broadcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* 16 x int32: Σ over one block's 32 columns of q[r,k] xq[k] for the tile's 16 rows */
static inline __attribute__((always_inline)) __m512i block_dot(const uint8_t *levels, const int bits, const int8_t *xq)
{
    __m512i dot = _mm512_setzero_si512();
    if (bits == 4) {
        const __m512i nibble = _mm512_set1_epi8(0x0f);
        for (int j = 0; j < BLOCK / 8; j++) {
            const __m512i quad = _mm512_loadu_si512(levels + 64 * j);
            dot = _mm512_dpbusd_epi32(dot, _mm512_and_si512(quad, nibble), broadcast4(xq + 8 * j));
            dot = _mm512_dpbusd_epi32(dot, _mm512_and_si512(_mm512_srli_epi16(quad, 4), nibble), broadcast4(xq + 8 * j + 4));
        }
    } else {
        for (int j = 0; j < BLOCK / 4; j++)
            dot = _mm512_dpbusd_epi32(dot, _mm512_loadu_si512(levels + 64 * j), broadcast4(xq + 4 * j));
    }
    return dot;
}

static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const size_t quad_cols = bits == 4 ? 8 : 4;
    const size_t padded = padded_columns(cols);
    const float zero_point = (float)((1u << bits) - 1u) / 2.0f;

    for (size_t tile = 0; tile < n_tiles; tile++) {
        for (size_t v = 0; v < in->n; v++) {
            const uint8_t *prepared = in->prepared + v * in->stride;
            const int8_t *xq = (const int8_t *)prepared;
            const float *scales = (const float *)(const void *)(prepared + padded), *sums = scales + padded / BLOCK;
            const uint8_t *block = data + tile * tile_bytes;
            __m512 acc = _mm512_setzero_ps();                          /* the tile's 16 rows */
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = g + 1 < n_groups ? group : eq_packed_group_cols(type, cols, g);
                const uint8_t *levels = block + header_bytes;
                __m512 dot = _mm512_setzero_ps();
                float sum_x = 0.0f;
                for (size_t c = 0, b = g * group / BLOCK; c < block_cols; c += BLOCK, b++) {
                    const __m512i sums_int = block_dot(levels + c / quad_cols * 64, bits, xq + b * BLOCK);
                    dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums_int), _mm512_set1_ps(scales[b]), dot);
                    sum_x += sums[b];
                }
                const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
                if (type->symmetric) {
                    acc = _mm512_fmadd_ps(scale, _mm512_sub_ps(dot, _mm512_set1_ps(zero_point * sum_x)), acc);
                } else {
                    const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
                    acc = _mm512_fmadd_ps(min, _mm512_set1_ps(sum_x), _mm512_fmadd_ps(scale, dot, acc));
                }
                block += eq_packed_block_bytes(type, block_cols);
            }
            const size_t row0 = tile * EQ_TILE_ROWS;
            const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            _mm512_mask_storeu_ps(y + v * y_stride + row0, (__mmask16)((1u << n_rows) - 1u), acc);
        }
    }
}

void eq_packed_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): gemm_body(type, data, rows, cols, in, y, y_stride, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86 */

int eq_packed_avx512_available(void);
int eq_packed_avx512_available(void)
{
    return 0;
}

#endif
