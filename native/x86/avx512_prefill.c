/* x86/avx512_prefill.c — the multiply-add (prefill) path for uniform bit-plane types on AVX-512 with
 * VNNI: int16 activations times int16 weight levels expanded once per tile, vpdpwssd.
 *
 * The same arithmetic as x86/avx2_prefill.c (read its opening comment for the prepared input, the
 * per-group formula, the overflow bound and the error bound, which hold here unchanged: the
 * integer part is exact and each block's s32 sum is converted to float alone), with what AVX-512
 * offers:
 *   - one zmm holds a whole expanded pair: 16 rows x 2 columns of int16 levels (layout
 *     (span / 2, 16, 2));
 *   - vpdpwssd multiplies them with the vector's 2 broadcast int16 activations and adds both
 *     products of each row into its s32 lane in one instruction (non-saturating: the lane is a
 *     plain s32 sum, at most 32 x 255 x 32767 < 2^28 per block);
 *   - expansion spreads each row's plane byte over its two int16 lanes (vpermw) and adds 2^p under
 *     a vptestmw mask per column pair.
 * Per pair, one level load serves VECTORS broadcast activations (8 vectors at a time).
 * Splitting the int16 activations into two int8 halves for vpdpbusd would read half the level
 * bytes for the same number of multiply-adds (two vpdpbusd per 4 columns against two vpdpwssd);
 * not measured yet.
 * A partial last group (compact-tail: stored in its columns rounded up to 32) runs its own trip
 * count, as in x86/avx2_prefill.c.
 * The prepared input is x86/avx2_prefill.c's (eq_prefill_prepare_avx2, layout in q16_acts.h):
 * every CPU with AVX-512 has AVX2.
 *
 * Compiled for AVX-512 F/BW/VL/VNNI (+ AVX2, FMA, F16C) by the pragmas; called only through the
 * avx512 set (x86/avx512.c), whose availability check covers them.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "q16_acts.h"

enum {
    SPAN_COLS = 128,        /* columns expanded at once per tile: 16 x 128 int16 levels = 4 KB in L1 */
    PAIR_LEVELS = 32,       /* one expanded pair: 16 rows x 2 columns of int16, one zmm */
    BATCH_MAX = 64,         /* vectors whose tile accumulators stay in L1 (4 KB) per pass */
    VECTORS = 8             /* vectors multiplied per level load */
};

/* ---- expand: bit-planes -> int16 levels ------------------------------------------------------ */

/* levels (width / 2, 16, 2) int16 of one (tile, group) block from its planes (bits, width / 8, 16),
 * width its stored columns (the group's G, or a partial last group's multiple of EQ_GROUP_STEP):
 * per 8-column chunk and plane, row r's plane byte is widened and copied into int16 lanes 2r and
 * 2r + 1 (vpermw); for column pair j, lane 2r + c tests bit 2j + c and adds 2^p under the mask. */
static inline __attribute__((always_inline)) void
expand_group(const uint8_t *planes, const int bits, const size_t width, int16_t *levels)
{
    const __m512i spread = _mm512_set_epi16(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8,
                                            7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    __m512i column_bits[4];                              /* (1 << 2j, 1 << 2j + 1) in every row */
    for (int j = 0; j < 4; j++)
        column_bits[j] = _mm512_set1_epi32((int)((1u << (2 * j)) | (1u << (2 * j + 1 + 16))));
    const size_t plane_bytes = 2u * width;
    for (size_t c = 0; c < width / EQ_CHUNK_COLS; c++) {
        __m512i pairs[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                            _mm512_setzero_si512()};
        for (int p = 0; p < bits; p++) {
            const __m128i chunk = _mm_loadu_si128((const __m128i *)(planes + (size_t)p * plane_bytes + 16u * c));
            const __m512i rows = _mm512_permutexvar_epi16(spread, _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(chunk)));
            const __m512i weight = _mm512_set1_epi16((short)(1u << p));
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                pairs[j] = _mm512_mask_add_epi16(pairs[j], _mm512_test_epi16_mask(rows, column_bits[j]), pairs[j], weight);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            _mm512_store_si512((void *)(levels + (4u * c + (unsigned)j) * PAIR_LEVELS), pairs[j]);
    }
}

/* ---- multiply: `vectors` vectors against one expanded group ------------------------------------- */

/* y[v] (16 rows) += scale[r] Σ_b d_b Σ_{k in b} l[r, k] q_v[k] + bias[r] Σ x̂_v over group g's
 * `width` stored columns, for `vectors` (1 .. VECTORS) vectors; levels (width / 2, 16, 2), scale
 * and bias (16,) */
static inline __attribute__((always_inline)) void
group_product(const int16_t *levels, const eq_q16_acts *x, const int vectors, size_t g, __m512 scale,
              __m512 bias, const size_t group, const size_t width, __m512 *y)
{
    const size_t first_block = g * group / EQ_Q16_BLOCK;
    __m512 dot[VECTORS];
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        dot[v] = _mm512_setzero_ps();
    for (size_t b = 0; b < width / EQ_Q16_BLOCK; b++) {
        const size_t block = first_block + b;
        __m512i sum[VECTORS];                                /* s32 per row */
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++)
            sum[v] = _mm512_setzero_si512();
#pragma GCC unroll 16
        for (int j = 0; j < EQ_Q16_BLOCK / 2; j++) {
            const __m512i w = _mm512_load_si512((const void *)(levels + (b * (EQ_Q16_BLOCK / 2) + (size_t)j) * PAIR_LEVELS));
#pragma GCC unroll 8
            for (int v = 0; v < vectors; v++) {
                int32_t two;
                memcpy(&two, x[v].q + block * EQ_Q16_BLOCK + 2 * (size_t)j, sizeof two);
                sum[v] = _mm512_dpwssd_epi32(sum[v], w, _mm512_set1_epi32(two));
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++)
            dot[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[v]), _mm512_set1_ps(x[v].scale[block]), dot[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++) {
        float x_sum = 0.0f;
        for (size_t b = 0; b < width / EQ_Q16_BLOCK; b++)
            x_sum += x[v].sum[first_block + b];
        y[v] = _mm512_fmadd_ps(scale, dot[v], _mm512_fmadd_ps(bias, _mm512_set1_ps(x_sum), y[v]));
    }
}

/* acc[v] (16 rows) += the span's groups g0 .. g_end applied to `vectors` vectors; the last group of
 * the row (n_groups - 1) stores last_width columns */
static inline __attribute__((always_inline)) void
span_vectors(const int16_t *levels, const float (*scales)[EQ_TILE_ROWS], const float (*biases)[EQ_TILE_ROWS],
             const eq_q16_acts *x, const int vectors, size_t g0, size_t g_end, const size_t group,
             const size_t n_groups, const size_t last_width, float (*acc)[EQ_TILE_ROWS])
{
    __m512 y[VECTORS];
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        y[v] = _mm512_load_ps(acc[v]);
    for (size_t g = g0; g < g_end; g++) {
        const int16_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
        const __m512 scale = _mm512_load_ps(scales[g - g0]), bias = _mm512_load_ps(biases[g - g0]);
        if (g + 1 == n_groups && last_width != group)   /* a partial last group: its own trip counts */
            group_product(group_levels, x, vectors, g, scale, bias, group, last_width, y);
        else
            group_product(group_levels, x, vectors, g, scale, bias, group, group, y);
    }
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++)
        _mm512_store_ps(acc[v], y[v]);
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* The kernel body, inlined once per (bits, group) by eq_prefill_gemm_avx512 so that the loops over
 * planes, chunks and pairs have constant trip counts. */
static inline __attribute__((always_inline)) void
prefill_gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                  const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t block_bytes = eq_block_bytes(type);
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t last_width = eq_last_group_cols(type, cols);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const size_t span_groups = group >= SPAN_COLS ? 1u : SPAN_COLS / group;
    const __m512 minus_zero_point = _mm512_set1_ps(-(float)((1u << bits) - 1u) / 2.0f);

    _Alignas(64) int16_t levels[SPAN_COLS / 2 * PAIR_LEVELS];         /* (span / 2, 16, 2) */
    _Alignas(64) float acc[BATCH_MAX][EQ_TILE_ROWS];                   /* y of the tile per vector */
    _Alignas(64) float scales[SPAN_COLS / EQ_Q16_BLOCK][EQ_TILE_ROWS]; /* per group of the span */
    _Alignas(64) float biases[SPAN_COLS / EQ_Q16_BLOCK][EQ_TILE_ROWS]; /* what multiplies Σ x̂ */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * tile_bytes;
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        for (size_t v0 = 0; v0 < in->n; v0 += BATCH_MAX) {
            const size_t n_vectors = in->n - v0 < BATCH_MAX ? in->n - v0 : BATCH_MAX;
            memset(acc, 0, n_vectors * sizeof acc[0]);
            for (size_t g0 = 0; g0 < n_groups; g0 += span_groups) {
                const size_t g_end = g0 + span_groups < n_groups ? g0 + span_groups : n_groups;
                for (size_t g = g0; g < g_end; g++) {
                    const uint8_t *block = tile_data + g * block_bytes;
                    int16_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
                    if (g + 1 == n_groups && last_width != group)
                        expand_group(block + planes_offset, bits, last_width, group_levels);
                    else
                        expand_group(block + planes_offset, bits, group, group_levels);
                    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
                    const __m512 bias = type->symmetric
                        ? _mm512_mul_ps(scale, minus_zero_point)
                        : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + scale_bytes)));
                    _mm512_store_ps(scales[g - g0], scale);
                    _mm512_store_ps(biases[g - g0], bias);
                }
                eq_q16_acts x[VECTORS];
                size_t v = 0;
                for (; v + VECTORS <= n_vectors; v += VECTORS) {
                    for (int i = 0; i < VECTORS; i++)
                        x[i] = eq_q16_acts_at(in->prepared + (v0 + v + (size_t)i) * in->stride, cols);
                    span_vectors(levels, scales, biases, x, VECTORS, g0, g_end, group, n_groups, last_width, acc + v);
                }
                if (v + 4 <= n_vectors) {   /* the rest: 4 at a time, then one by one */
                    for (int i = 0; i < 4; i++)
                        x[i] = eq_q16_acts_at(in->prepared + (v0 + v + (size_t)i) * in->stride, cols);
                    span_vectors(levels, scales, biases, x, 4, g0, g_end, group, n_groups, last_width, acc + v);
                    v += 4;
                }
                for (; v < n_vectors; v++) {
                    x[0] = eq_q16_acts_at(in->prepared + (v0 + v) * in->stride, cols);
                    span_vectors(levels, scales, biases, x, 1, g0, g_end, group, n_groups, last_width, acc + v);
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
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        prefill_gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: nothing here (x86/avx512.c's set is never available) */

typedef int eq_avx512_prefill_unused;

#endif
