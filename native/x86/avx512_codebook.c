/* x86/avx512_codebook.c — int8 multiply-add kernels for the codebook family (c4g*, v2g*) with AVX-512
 * VNNI: the `avx512` set's paths for that family (x86/avx512.c names them in its struct).
 *
 * x86/avx512_packed.c's 4-bit path with one lookup in front: per tile the 16 int8 levels, biased by
 * +64 to u8 codes in [0, 127], fill every 128-bit lane of one register and vpshufb turns 64 nibble
 * indices (16 rows x 4 columns) into their codes; vpdpbusd multiplies them by the quad's 4 int8
 * activations broadcast to every row and adds into int32 without saturation (v2: a second table of
 * the centroids' c1, two lookups per nibble, block_dots). Per block of 32
 * dot = Σ (level + 64) xq - 64 Σ xq (exact: the integers of every set), then the float steps of
 * x86/avx2_codebook.c and arm/neon_codebook.c: per block dot_f = fma(dot, s_b, dot_f), per group
 * acc = fma(scale, dot_f, acc) (+ fma(min, Σx̂, .)), so the three sets give the same bits.
 * Prepare: the packed family's (eq_packed_prepare_avx512). Compiled for AVX-512 F/BW/VL/VNNI +
 * FMA/F16C by its pragma, reached only through the avx512 set, whose check covers them.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")
#endif

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum {
    BLOCK = EQ_PACKED_BLOCK_COLS,
    VECTORS = 8,          /* prefill: vectors multiplied per load of a quad of indices */
    BIAS = 64             /* level + BIAS: a u8 code in [0, 127] */
};

static inline __m512i broadcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* dot[v] (16 x int32) = Σ over one block's 32 columns of (level + 64) xq_v for the tile's 16 rows.
 * A quad covers 8 x span columns as 2 x span runs of 4 (edgeq.h): run q takes the low nibbles
 * (q < span) or the high ones, looked up in codes[q % span] (c4: its one table; v2: c0, then c1). */
static inline __attribute__((always_inline)) void
block_dots(const uint8_t *indices, const __m512i *codes, const int span, const int8_t *const *xq,
           const int vectors, __m512i *dot)
{
    const __m512i nibble = _mm512_set1_epi8(0x0f);
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        dot[v] = _mm512_setzero_si512();
EQ_UNROLL(4)
    for (int j = 0; j < BLOCK / (8 * span); j++) {
        const __m512i quad = _mm512_loadu_si512(indices + 64 * j);
        const __m512i nibbles[2] = {_mm512_and_si512(quad, nibble),
                                    _mm512_and_si512(_mm512_srli_epi16(quad, 4), nibble)};
        __m512i run[4];
EQ_UNROLL(4)
        for (int q = 0; q < 2 * span; q++)
            run[q] = _mm512_shuffle_epi8(codes[q % span], nibbles[q / span]);
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
EQ_UNROLL(4)
            for (int q = 0; q < 2 * span; q++)
                dot[v] = _mm512_dpbusd_epi32(dot[v], run[q], broadcast4(xq[v] + 8 * span * j + 4 * q));
    }
}

/* The tile's 16 levels (or one coordinate of its 16 centroids) + BIAS as u8 codes in every 128-bit
 * lane: the vpshufb table. */
static inline __m512i load_codes(const uint8_t *codebook)
{
    return _mm512_broadcast_i32x4(_mm_add_epi8(_mm_loadu_si128((const __m128i *)codebook), _mm_set1_epi8(BIAS)));
}

/* acc[v] (the tile's 16 rows) += one group's contribution to W x_v for v < vectors: its blocks' dot
 * products, each scaled by its activation scale, then the group's fp16 scales (+ min Σx for
 * asymmetric types).
 *   block       the group's bytes (scales, mins, indices) of block_cols columns from column b0 * 32
 *               (a constant for whole groups, so that the block loop unrolls) */
static inline __attribute__((always_inline)) void
group_step(const eq_qtype_traits *type, const uint8_t *block, const size_t block_cols, const size_t b0,
           const __m512i *codes, const int span, const eq_packed_acts *x, const int vectors, __m512 *acc)
{
    const uint8_t *indices = block + eq_packed_header_bytes(type);
    if (vectors == 1)   /* decode streams the weights from memory (prefill: the tile is reused) */
        eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
    __m512 dot[VECTORS];
    float sum_x[VECTORS];
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++) {
        dot[v] = _mm512_setzero_ps();
        sum_x[v] = 0.0f;
    }
EQ_UNROLL(4)
    for (size_t c = 0, b = b0; c < block_cols; c += BLOCK, b++) {
        const int8_t *block_xq[VECTORS];
        __m512i sums_int[VECTORS];
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
            block_xq[v] = x[v].xq + b * BLOCK;
        block_dots(indices + c * 8 / (size_t)span, codes, span, block_xq, vectors, sums_int);
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++) {
            const __m512i exact = _mm512_sub_epi32(sums_int[v], _mm512_set1_epi32(BIAS * x[v].xq_sum[b]));
            dot[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_set1_ps(x[v].scale[b]), dot[v]);
            sum_x[v] += x[v].sum[b];
        }
    }
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        acc[v] = _mm512_fmadd_ps(scale, dot[v], acc[v]);
    if (!type->symmetric) {
        const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
            acc[v] = _mm512_fmadd_ps(min, _mm512_set1_ps(sum_x[v]), acc[v]);
    }
}

/* y[v] (16 rows of one tile) = W x_v for `vectors` prepared vectors (1 .. VECTORS). Whole groups go
 * through group_step with their width a constant, a partial last group with its own. */
static inline __attribute__((always_inline)) void
tile_vectors(const eq_qtype_traits *type, const uint8_t *tile_data, size_t cols, const eq_packed_acts *x,
             const int vectors, const size_t group, const int span, const __mmask16 row_mask, float *const *y)
{
    const size_t n_groups = (cols + group - 1) / group;
    const size_t last_cols = eq_packed_group_cols(type, cols, n_groups - 1);
    const size_t n_whole = last_cols == group ? n_groups : n_groups - 1;
    const size_t whole_bytes = eq_packed_block_bytes(type, group);
    const __m512i codes[2] = {load_codes(tile_data),
                              span == 2 ? load_codes(tile_data + EQ_CODEBOOK_SIZE) : _mm512_setzero_si512()};
    __m512 acc[VECTORS];
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        acc[v] = _mm512_setzero_ps();
    const uint8_t *block = tile_data + EQ_CODEBOOK_SIZE * (size_t)span;
    for (size_t g = 0; g < n_whole; g++, block += whole_bytes)
        group_step(type, block, group, g * group / BLOCK, codes, span, x, vectors, acc);
    if (n_whole < n_groups)
        group_step(type, block, last_cols, n_whole * group / BLOCK, codes, span, x, vectors, acc);
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        _mm512_mask_storeu_ps(y[v], row_mask, acc[v]);
}

/* Every tile times every vector, `vectors` at a time (then 4, then one by one for the rest). */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int vectors, const size_t group, const int span)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    for (size_t tile = 0; tile < n_tiles; tile++) {
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        const __mmask16 row_mask = (__mmask16)((1u << n_rows) - 1u);
        const uint8_t *tile_data = data + tile * tile_bytes;
        eq_packed_acts x[VECTORS];
        float *out[VECTORS];
        size_t v = 0;
        for (; v + (size_t)vectors <= in->n; v += (size_t)vectors) {
            for (int i = 0; i < vectors; i++) {
                x[i] = eq_packed_acts_at(in->prepared + (v + (size_t)i) * in->stride, cols);
                out[i] = y + (v + (size_t)i) * y_stride + row0;
            }
            tile_vectors(type, tile_data, cols, x, vectors, group, span, row_mask, out);
        }
        if (vectors > 4 && v + 4 <= in->n) {
            for (int i = 0; i < 4; i++) {
                x[i] = eq_packed_acts_at(in->prepared + (v + (size_t)i) * in->stride, cols);
                out[i] = y + (v + (size_t)i) * y_stride + row0;
            }
            tile_vectors(type, tile_data, cols, x, 4, group, span, row_mask, out);
            v += 4;
        }
        for (; v < in->n; v++) {
            x[0] = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            out[0] = y + v * y_stride + row0;
            tile_vectors(type, tile_data, cols, x, 1, group, span, row_mask, out);
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
void eq_codebook_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                             const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, 1);
}

/* prefill: VECTORS vectors per load of a quad of indices (the same bits as decode) */
void eq_codebook_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                     const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, VECTORS);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: nothing here (the avx512 set is never available) */

typedef int eq_avx512_codebook_not_x86;   /* ISO C: a translation unit must declare something */

#endif
