/* x86/avx2_codebook.c — int8 multiply-add kernels for the codebook family (c4g*, v2g*), set `avx2`.
 *
 * The packed family's multiply-add (x86/avx2_packed.c, whose prepare it shares: int8 activations per
 * block of 32, float scale s_b, Σ xq and Σx̂ per block) with one lookup in front: per tile the 16 int8
 * levels, biased by +64 to u8 codes in [0, 127], sit in both 128-bit lanes of one register, and
 * vpshufb turns 32 nibble indices into their codes. Then
 *   - vpmaddubsw: code (u8 <= 127) x xq (s8): a pair is at most 2 x 127 x 127 = 32258, no saturation,
 *     but two pairs could be, so every vpmaddubsw is widened at once by vpmaddwd into int32;
 *   - dot[r] = Σ (level + 64) xq - 64 Σ xq per block: exact in int32, the same integers as
 *     scalar's and neon's (which multiply the signed levels), then per block dot_f = fma(dot, s_b, dot_f),
 *     per group acc = fma(scale, dot_f, acc) (+ fma(min, Σx̂, .) for asymmetric types): the float steps
 *     of x86/avx512_codebook.c and arm/neon_codebook.c, so the three give the same bits.
 * v2 (2-D centroids): the same with a second table (c1) and two lookups per nibble (block_dots).
 * One 32-byte load is 8 rows x 4 columns x 2 nibbles of a 64-byte quad (edgeq.h); decode takes one
 * vector at a time, prefill VECTORS per load of a tile's quad. Compiled for AVX2/FMA/F16C by its pragma;
 * reached only through the avx2 set after its cpuid check.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum {
    BLOCK = EQ_PACKED_BLOCK_COLS,
    VECTORS = 4,          /* prefill: vectors multiplied per load of a quad of indices */
    BIAS = 64             /* level + BIAS: a u8 code in [0, 127] */
};

static inline __m256i broadcast4(const int8_t *p)   /* 4 activations to every 32-bit lane */
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The tile's 16 levels + BIAS as u8 codes, in both 128-bit lanes (the vpshufb table). */
static inline __m256i load_codes(const uint8_t *codebook)
{
    const __m128i levels = _mm_loadu_si128((const __m128i *)codebook);
    return _mm256_broadcastsi128_si256(_mm_add_epi8(levels, _mm_set1_epi8(BIAS)));
}

/* sum (8 x int32) += Σ over each row's 4 columns of code x xq */
static inline __attribute__((always_inline)) __m256i
add_products(__m256i sum, __m256i codes, __m256i x4)
{
    return _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x4), _mm256_set1_epi16(1)));
}

/* low[v], high[v] (8 x int32: rows 0-7, 8-15) = Σ over one block's 32 columns of (level + 64) xq_v
 * for v < vectors; indices: the block's first quad. A quad covers 8 x span columns as 2 x span runs
 * of 4 (edgeq.h): run q takes the low nibbles (q < span) or the high ones, looked up in codes[q %
 * span] (c4: its one table; v2: c0, then c1). Each quad is looked up once for every vector. */
static inline __attribute__((always_inline)) void
block_dots(const uint8_t *indices, const __m256i *codes, const int span, const int8_t *const *xq,
           const int vectors, __m256i *low, __m256i *high)
{
    const __m256i nibble = _mm256_set1_epi8(0x0f);
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++)
        low[v] = high[v] = _mm256_setzero_si256();
EQ_UNROLL(4)
    for (int j = 0; j < BLOCK / (8 * span); j++) {
        const __m256i rows_low = _mm256_loadu_si256((const __m256i *)(indices + 64 * j));
        const __m256i rows_high = _mm256_loadu_si256((const __m256i *)(indices + 64 * j + 32));
        const __m256i nibbles_low[2] = {_mm256_and_si256(rows_low, nibble),
                                        _mm256_and_si256(_mm256_srli_epi16(rows_low, 4), nibble)};
        const __m256i nibbles_high[2] = {_mm256_and_si256(rows_high, nibble),
                                         _mm256_and_si256(_mm256_srli_epi16(rows_high, 4), nibble)};
        __m256i run_low[4], run_high[4];
EQ_UNROLL(4)
        for (int q = 0; q < 2 * span; q++) {
            run_low[q] = _mm256_shuffle_epi8(codes[q % span], nibbles_low[q / span]);
            run_high[q] = _mm256_shuffle_epi8(codes[q % span], nibbles_high[q / span]);
        }
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
EQ_UNROLL(4)
            for (int q = 0; q < 2 * span; q++) {
                const __m256i x4 = broadcast4(xq[v] + 8 * span * j + 4 * q);
                low[v] = add_products(low[v], run_low[q], x4);
                high[v] = add_products(high[v], run_high[q], x4);
            }
    }
}

/* acc_low[v], acc_high[v] (rows 0-7, 8-15) += one group's contribution to W x_v for v < vectors:
 * its blocks' dot products, each scaled by its activation scale, then the group's fp16 scales
 * (+ min Σx for asymmetric types).
 *   block       the group's bytes (scales, mins, indices) of block_cols columns from column b0 * 32
 *               (a constant for whole groups, so that the block loop unrolls) */
static inline __attribute__((always_inline)) void
group_step(const eq_qtype_traits *type, const uint8_t *block, const size_t block_cols, const size_t b0,
           const __m256i *codes, const int span, const eq_packed_acts *x, const int vectors,
           __m256 *acc_low, __m256 *acc_high)
{
    const uint8_t *indices = block + eq_packed_header_bytes(type);
    if (vectors == 1)   /* decode streams the weights from memory (prefill: the tile is reused) */
        eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
    __m256 dot_low[VECTORS], dot_high[VECTORS];
    float sum_x[VECTORS];
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++) {
        dot_low[v] = dot_high[v] = _mm256_setzero_ps();
        sum_x[v] = 0.0f;
    }
EQ_UNROLL(4)
    for (size_t c = 0, b = b0; c < block_cols; c += BLOCK, b++) {
        const int8_t *block_xq[VECTORS];
        __m256i low[VECTORS], high[VECTORS];
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
            block_xq[v] = x[v].xq + b * BLOCK;
        block_dots(indices + c * 8 / (size_t)span, codes, span, block_xq, vectors, low, high);
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            const __m256i bias = _mm256_set1_epi32(BIAS * x[v].xq_sum[b]);   /* Σ level xq, exact */
            const __m256 scale = _mm256_set1_ps(x[v].scale[b]);
            dot_low[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(low[v], bias)), scale, dot_low[v]);
            dot_high[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(high[v], bias)), scale, dot_high[v]);
            sum_x[v] += x[v].sum[b];
        }
    }
    const __m256 scale_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
    const __m256 scale_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++) {
        acc_low[v] = _mm256_fmadd_ps(scale_low, dot_low[v], acc_low[v]);
        acc_high[v] = _mm256_fmadd_ps(scale_high, dot_high[v], acc_high[v]);
    }
    if (!type->symmetric) {
        const __m256 min_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
        const __m256 min_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            const __m256 sum = _mm256_set1_ps(sum_x[v]);
            acc_low[v] = _mm256_fmadd_ps(min_low, sum, acc_low[v]);
            acc_high[v] = _mm256_fmadd_ps(min_high, sum, acc_high[v]);
        }
    }
}

/* y[v] (the 16 rows of one tile) = W x_v for `vectors` prepared vectors (1 .. VECTORS); a vector's
 * bits do not depend on the batch it is in (the same float steps in the same order). Whole groups
 * go through group_step with their width a constant, a partial last group with its own. */
static inline __attribute__((always_inline)) void
tile_vectors(const eq_qtype_traits *type, const uint8_t *tile_data, size_t cols, const eq_packed_acts *x,
             const int vectors, const size_t group, const int span, const size_t n_rows, float *const *y)
{
    const size_t n_groups = (cols + group - 1) / group;
    const size_t last_cols = eq_packed_group_cols(type, cols, n_groups - 1);
    const size_t n_whole = last_cols == group ? n_groups : n_groups - 1;
    const size_t whole_bytes = eq_packed_block_bytes(type, group);
    const __m256i codes[2] = {load_codes(tile_data),
                              span == 2 ? load_codes(tile_data + EQ_CODEBOOK_SIZE) : _mm256_setzero_si256()};
    __m256 acc_low[VECTORS], acc_high[VECTORS];                       /* rows 0-7, 8-15 per vector */
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++)
        acc_low[v] = acc_high[v] = _mm256_setzero_ps();
    const uint8_t *block = tile_data + EQ_CODEBOOK_SIZE * (size_t)span;
    for (size_t g = 0; g < n_whole; g++, block += whole_bytes)
        group_step(type, block, group, g * group / BLOCK, codes, span, x, vectors, acc_low, acc_high);
    if (n_whole < n_groups)
        group_step(type, block, last_cols, n_whole * group / BLOCK, codes, span, x, vectors, acc_low, acc_high);
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++) {
        float out[EQ_TILE_ROWS];
        _mm256_storeu_ps(out, acc_low[v]);
        _mm256_storeu_ps(out + 8, acc_high[v]);
        memcpy(y[v], out, n_rows * sizeof(float));
    }
}

/* Every tile times every vector, `vectors` at a time (then one by one for the rest of the batch). */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int vectors, const size_t group, const int span)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    for (size_t tile = 0; tile < n_tiles; tile++) {
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        const uint8_t *tile_data = data + tile * tile_bytes;
        eq_packed_acts x[VECTORS];
        float *out[VECTORS];
        size_t v = 0;
        for (; v + (size_t)vectors <= in->n; v += (size_t)vectors) {
            for (int i = 0; i < vectors; i++) {
                x[i] = eq_packed_acts_at(in->prepared + (v + (size_t)i) * in->stride, cols);
                out[i] = y + (v + (size_t)i) * y_stride + row0;
            }
            tile_vectors(type, tile_data, cols, x, vectors, group, span, n_rows, out);
        }
        for (; v < in->n; v++) {
            x[0] = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            out[0] = y + v * y_stride + row0;
            tile_vectors(type, tile_data, cols, x, 1, group, span, n_rows, out);
        }
    }
}

/* gemm_body specialized per type (kernels.h, EQ_CODEBOOK_DISPATCH) */
static inline __attribute__((always_inline)) void
dispatch(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
         float *y, size_t y_stride, int vectors)
{
#define BODY(group, span) gemm_body(type, data, rows, cols, in, y, y_stride, vectors, group, span)
    EQ_CODEBOOK_DISPATCH(type, BODY);
#undef BODY
}

/* decode: one vector at a time */
void eq_codebook_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, 1);
}

/* prefill: VECTORS vectors per load of a quad of indices (the same bits as decode) */
void eq_codebook_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                   const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, VECTORS);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: nothing here (the avx2 set is never available) */

typedef int eq_avx2_codebook_not_x86;   /* ISO C: a translation unit must declare something */

#endif
