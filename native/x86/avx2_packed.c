/* x86/avx2_packed.c — int8 multiply-add decode kernels for the uniform packed family, set `avx2`.
 *
 * Same algorithm as scalar/packed.c (activations int8 per block of 32 with a float scale s_b, and
 * Σx̂ = s_b Σ xq per block for the min / zero-point term; per 16-row tile and block an int32 dot product of levels and int8 activations,
 * scaled per block in fp32, then per group by the fp16 scale, + min Σx or - zero_point scale Σx),
 * with vpmaddubsw (u8 x s8 -> pairs summed into s16) and vpmaddwd (pairs of s16 -> s32):
 *   - one 32-byte load of levels is 8 rows x 4 columns (4-bit: 8 rows x 8 columns, two nibbles),
 *     multiplied by the block's 4 activations broadcast to every row (vpbroadcastd);
 *   - 2, 3, 5, 6 bits: a quad's bytes are put together from the planes of bit fields (a shift and a
 *     mask per plane, edgeq.h); levels <= 63, so a u8 x s8 pair is at most 2 x 63 x 127 = 16002:
 *     two quads (2-3 bits, levels <= 7: all eight, 8 x 2 x 7 x 127 = 14224; 4-bit: all four of a
 *     block, 8 x 15 x 127 = 15240) add in s16 before one vpmaddwd;
 *   - 8 bits: levels up to 255 would saturate s16 (2 x 255 x 127 = 64770 > 32767), so a level is
 *     flipped to the signed w' = q - 128 (xor 0x80) and multiplied as |w'| (u8, <= 128) by the
 *     activation carrying w's sign: pairs <= 2 x 128 x 127 = 32512, exact; Σ q x = Σ w' x + 128 Σ xq
 *     with Σ xq per block from prepare. (|x| x sign(w', x) would be cheaper but wrong for w' = -128,
 *     whose negation does not fit in s8.)
 * Each 16-row tile is read once per call and reused for every vector while it is in cache.
 * Compiled for AVX2/FMA/F16C by its pragma; the set in x86/avx2.c is only used after its cpuid check.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum {
    BLOCK = EQ_PACKED_BLOCK_COLS,
    VECTORS = 4           /* prefill: vectors multiplied per load of a block's levels */
};

/* ---- prepare: int8 activations per block of 32 ------------------------------------------------ */

/* The layout is packed_acts.h's; the bytes are eq_packed_prepare_scalar's (the same float steps:
 * max |x|, inv = 127 / max, round(x inv) to nearest even as lrintf, s_b = max / 127, s_b Σ xq).
 * Also the avx512 set's prepare. */
size_t eq_packed_prepared_bytes_avx2(size_t cols)
{
    return eq_packed_acts_bytes(cols);
}

/* Block b of a (32 activations v0..v3, columns 0-7, ..., 24-31), in straight-line code: with the
 * values in an array GCC kept them on the stack, stored in halves and reloaded whole (a failed
 * store forward per load), which made the prepare ~3x slower. */
static inline __attribute__((always_inline)) void
prepare_block(__m256 v0, __m256 v1, __m256 v2, __m256 v3, const eq_packed_acts *a, size_t b)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 largest8 = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                          _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 largest4 = _mm_max_ps(_mm256_castps256_ps128(largest8), _mm256_extractf128_ps(largest8, 1));
    largest4 = _mm_max_ps(largest4, _mm_movehl_ps(largest4, largest4));
    largest4 = _mm_max_ss(largest4, _mm_shuffle_ps(largest4, largest4, 1));
    const float largest = _mm_cvtss_f32(largest4);
    const __m256 inv = _mm256_set1_ps(largest > 0.0f ? 127.0f / largest : 0.0f);
    /* cvtps: the MXCSR rounding, nearest even (lrintf's) */
    const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
    const __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), q3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
    /* (|q| <= 127: the packs never saturate) 32 x int32 -> 32 x int8 in column order */
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8);
    const __m256i words2 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q2, q3), 0xd8);
    const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(words, words2), 0xd8);
    _mm256_storeu_si256((__m256i *)(a->xq + b * BLOCK), bytes);
    const __m256i xq_sum8 = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    __m128i xq_sum4 = _mm_add_epi32(_mm256_castsi256_si128(xq_sum8), _mm256_extracti128_si256(xq_sum8, 1));
    xq_sum4 = _mm_add_epi32(xq_sum4, _mm_shuffle_epi32(xq_sum4, 0x4e));
    xq_sum4 = _mm_add_epi32(xq_sum4, _mm_shuffle_epi32(xq_sum4, 0xb1));
    a->scale[b] = largest / 127.0f;
    a->xq_sum[b] = _mm_cvtsi128_si32(xq_sum4);
    a->sum[b] = a->scale[b] * (float)a->xq_sum[b];
}

void eq_packed_prepare_avx2(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = eq_packed_acts_padded(cols), blocks = padded / BLOCK;
    const eq_packed_acts a = eq_packed_acts_at(out, cols);
    size_t b = 0;
    for (; (b + 1) * BLOCK <= cols; b++) {
        const float *p = x + b * BLOCK;
        prepare_block(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24),
                      &a, b);
    }
    for (; b < blocks; b++) {   /* the last partial block and the padding: zeros past cols */
        float values[BLOCK] = {0};
        for (size_t i = 0; i < BLOCK && b * BLOCK + i < cols; i++)
            values[i] = x[b * BLOCK + i];
        prepare_block(_mm256_loadu_ps(values), _mm256_loadu_ps(values + 8), _mm256_loadu_ps(values + 16),
                      _mm256_loadu_ps(values + 24), &a, b);
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

static inline __m256i broadcast4(const int8_t *p)   /* 4 activations to every 32-bit lane */
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The width-bit fields at bit `from` of every byte of v, moved to bit `to`, the other bits cleared
 * (a 16-bit shift: the bits it carries across a byte boundary land outside the mask). */
static inline __attribute__((always_inline)) __m256i field(__m256i v, const int from, const int to, const int width)
{
    if (to > from)
        v = _mm256_slli_epi16(v, to - from);
    else if (from > to)
        v = _mm256_srli_epi16(v, from - to);
    return _mm256_and_si256(v, _mm256_set1_epi8((char)(((1 << width) - 1) << to)));
}

/* Rows 8h..8h+7 of quad j (columns 4j..4j+3) from the plane of width-bit fields at `plane` (a
 * field's bits go to bit `at` of the level) */
static inline __attribute__((always_inline)) __m256i
plane_quad(const uint8_t *plane, const int width, const int at, const int j, const int h)
{
    const int quads = 8 / width;                                       /* quads per 64-byte chunk */
    return field(_mm256_loadu_si256((const __m256i *)(plane + 64 * (j / quads) + 32 * h)), width * (j % quads),
                 at, width);
}

/* Quad j (columns 4j..4j+3) of a 32-column run of 2, 3, 5 or 6-bit levels (kernels.h,
 * eq_packed_level), as one byte per level: *low rows 0-7, *high rows 8-15. Straight-line code:
 * with bits and j constants every shift is an immediate. */
static inline __attribute__((always_inline)) void
quad_levels(const uint8_t *run, const int bits, const int j, __m256i *low, __m256i *high)
{
    const int nibbles = eq_packed_has_plane(bits, 4), pairs = eq_packed_has_plane(bits, 2);
    for (int h = 0; h < 2; h++) {
        __m256i rows = _mm256_setzero_si256();
        if (nibbles)
            rows = plane_quad(run, 4, 0, j, h);
        if (pairs)
            rows = _mm256_or_si256(rows, plane_quad(run + 256 * nibbles, 2, 4 * nibbles, j, h));
        if (eq_packed_has_plane(bits, 1))
            rows = _mm256_or_si256(rows, plane_quad(run + 64 * (bits - 1), 1, bits - 1, j, h));
        *(h ? high : low) = rows;
    }
}

/* sum_low[v], sum_high[v] (s16 per row and column pair) += quad j's levels (rows 0-7, 8-15) times
 * its 4 activations of each vector */
static inline __attribute__((always_inline)) void
add_quad(const __m256i quad_low, const __m256i quad_high, const int8_t *const *xq, const int j, const int vectors,
         __m256i *sum_low, __m256i *sum_high)
{
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++) {
        const __m256i x4 = broadcast4(xq[v] + 4 * j);
        sum_low[v] = _mm256_add_epi16(sum_low[v], _mm256_maddubs_epi16(quad_low, x4));
        sum_high[v] = _mm256_add_epi16(sum_high[v], _mm256_maddubs_epi16(quad_high, x4));
    }
}

/* low[v], high[v] (8 x int32: rows 0-7, 8-15) = Σ over one block's 32 columns of q[r,k] xq_v[k]
 * for v < vectors; levels: the block's first 64-byte quad, xq[v]: its 32 activations. Each quad's
 * levels are loaded (and split, flipped) once for every vector. */
static inline __attribute__((always_inline)) void
block_dots(const uint8_t *levels, const int bits, const int8_t *const *xq, const int vectors, __m256i *low,
           __m256i *high)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 4) {        /* 4 quads of 8 columns: low nibbles columns 0-3, high 4-7 */
        const __m256i nibble = _mm256_set1_epi8(0x0f);
        __m256i sum_low[VECTORS], sum_high[VECTORS];
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
            sum_low[v] = sum_high[v] = _mm256_setzero_si256();
EQ_UNROLL(4)
        for (int j = 0; j < BLOCK / 8; j++) {
            const __m256i rows_low = _mm256_loadu_si256((const __m256i *)(levels + 64 * j));
            const __m256i rows_high = _mm256_loadu_si256((const __m256i *)(levels + 64 * j + 32));
            const __m256i low_first = _mm256_and_si256(rows_low, nibble);
            const __m256i low_second = _mm256_and_si256(_mm256_srli_epi16(rows_low, 4), nibble);
            const __m256i high_first = _mm256_and_si256(rows_high, nibble);
            const __m256i high_second = _mm256_and_si256(_mm256_srli_epi16(rows_high, 4), nibble);
EQ_UNROLL(4)
            for (int v = 0; v < vectors; v++) {
                const __m256i x_first = broadcast4(xq[v] + 8 * j), x_second = broadcast4(xq[v] + 8 * j + 4);
                sum_low[v] = _mm256_add_epi16(sum_low[v], _mm256_maddubs_epi16(low_first, x_first));
                sum_low[v] = _mm256_add_epi16(sum_low[v], _mm256_maddubs_epi16(low_second, x_second));
                sum_high[v] = _mm256_add_epi16(sum_high[v], _mm256_maddubs_epi16(high_first, x_first));
                sum_high[v] = _mm256_add_epi16(sum_high[v], _mm256_maddubs_epi16(high_second, x_second));
            }
        }
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            low[v] = _mm256_madd_epi16(sum_low[v], ones);
            high[v] = _mm256_madd_epi16(sum_high[v], ones);
        }
    } else if (bits <= 3) { /* 8 quads of 4 columns, levels <= 7: one s16 sum, 8 x 2 x 7 x 127 = 14224 */
        const __m256i pair = _mm256_set1_epi8(0x03);
        __m256i sum_low[VECTORS], sum_high[VECTORS];
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
            sum_low[v] = sum_high[v] = _mm256_setzero_si256();
EQ_UNROLL(2)
        for (int c = 0; c < 2; c++) {   /* a 64-byte chunk of the 2-bit plane: quads 4c .. 4c + 3 */
            const __m256i pairs_low = _mm256_loadu_si256((const __m256i *)(levels + 64 * c));
            const __m256i pairs_high = _mm256_loadu_si256((const __m256i *)(levels + 64 * c + 32));
EQ_UNROLL(4)
            for (int k = 0; k < 4; k++) {
                const int j = 4 * c + k;
                __m256i quad_low = _mm256_and_si256(_mm256_srli_epi16(pairs_low, 2 * k), pair);
                __m256i quad_high = _mm256_and_si256(_mm256_srli_epi16(pairs_high, 2 * k), pair);
                if (bits == 3) {    /* bit 2 from the plane of 1-bit fields */
                    quad_low = _mm256_or_si256(quad_low, plane_quad(levels + 128, 1, 2, j, 0));
                    quad_high = _mm256_or_si256(quad_high, plane_quad(levels + 128, 1, 2, j, 1));
                }
                add_quad(quad_low, quad_high, xq, j, vectors, sum_low, sum_high);
            }
        }
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            low[v] = _mm256_madd_epi16(sum_low[v], ones);
            high[v] = _mm256_madd_epi16(sum_high[v], ones);
        }
    } else if (bits <= 6) { /* 8 quads of 4 columns from the fields, levels <= 63 */
        const int per_sum = 2;                  /* quads an s16 sum holds: 2 x 2 x 63 x 127 */
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
            low[v] = high[v] = _mm256_setzero_si256();
EQ_UNROLL(4)
        for (int j0 = 0; j0 < BLOCK / 4; j0 += per_sum) {
            __m256i sum_low[VECTORS], sum_high[VECTORS];
EQ_UNROLL(4)
            for (int v = 0; v < vectors; v++)
                sum_low[v] = sum_high[v] = _mm256_setzero_si256();
EQ_UNROLL(8)
            for (int j = j0; j < j0 + per_sum; j++) {
                __m256i quad_low, quad_high;
                quad_levels(levels, bits, j, &quad_low, &quad_high);
                add_quad(quad_low, quad_high, xq, j, vectors, sum_low, sum_high);
            }
EQ_UNROLL(4)
            for (int v = 0; v < vectors; v++) {
                low[v] = _mm256_add_epi32(low[v], _mm256_madd_epi16(sum_low[v], ones));
                high[v] = _mm256_add_epi32(high[v], _mm256_madd_epi16(sum_high[v], ones));
            }
        }
    } else {                /* 7-8 bits: |q - 128| x (x with the sign of q - 128), pairs <= 32512 */
        const __m256i flip = _mm256_set1_epi8((char)0x80);
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++)
            low[v] = high[v] = _mm256_setzero_si256();
EQ_UNROLL(8)
        for (int j = 0; j < BLOCK / 4; j++) {
            const __m256i w_low = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(levels + 64 * j)), flip);
            const __m256i w_high = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(levels + 64 * j + 32)), flip);
            const __m256i abs_low = _mm256_abs_epi8(w_low), abs_high = _mm256_abs_epi8(w_high);
EQ_UNROLL(4)
            for (int v = 0; v < vectors; v++) {
                const __m256i x4 = broadcast4(xq[v] + 4 * j);
                low[v] = _mm256_add_epi32(low[v], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(abs_low, _mm256_sign_epi8(x4, w_low)), ones));
                high[v] = _mm256_add_epi32(high[v], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(abs_high, _mm256_sign_epi8(x4, w_high)), ones));
            }
        }
    }
}

/* acc_low[v], acc_high[v] (rows 0-7, 8-15) += one group's contribution to W x_v for v < vectors:
 * its blocks' dot products, each scaled by its activation scale, then the group's fp16 scales
 * (+ min Σx, or - zero_point scale Σx).
 *   block       the group's bytes (scales, mins, levels) of block_cols columns from column b0 * 32
 *               (a constant for whole groups, so that the block loop unrolls) */
static inline __attribute__((always_inline)) void
group_step(const eq_qtype_traits *type, const uint8_t *block, const size_t block_cols, const size_t b0,
           const eq_packed_acts *x, const int vectors, const int bits, const float zero_point,
           __m256 *acc_low, __m256 *acc_high)
{
    const uint8_t *levels = block + eq_packed_header_bytes(type);
    if (vectors == 1)   /* decode streams the weights from memory (prefill: the tile is reused); a
                           loop of requests measured faster than straight-line ones (p8g64a decode) */
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
        block_dots(levels + c / BLOCK * eq_packed_run_bytes(bits), bits, block_xq, vectors, low, high);
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            if (bits > 6) {                                        /* Σ q x = Σ (q - 128) x + 128 Σ x */
                const __m256i offset = _mm256_set1_epi32(128 * x[v].xq_sum[b]);
                low[v] = _mm256_add_epi32(low[v], offset);
                high[v] = _mm256_add_epi32(high[v], offset);
            }
            const __m256 scale = _mm256_set1_ps(x[v].scale[b]);
            dot_low[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low[v]), scale, dot_low[v]);
            dot_high[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high[v]), scale, dot_high[v]);
            sum_x[v] += x[v].sum[b];
        }
    }
    const __m256 scale_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
    const __m256 scale_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
    if (type->symmetric) {
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            const __m256 offset = _mm256_set1_ps(zero_point * sum_x[v]);
            acc_low[v] = _mm256_fmadd_ps(scale_low, _mm256_sub_ps(dot_low[v], offset), acc_low[v]);
            acc_high[v] = _mm256_fmadd_ps(scale_high, _mm256_sub_ps(dot_high[v], offset), acc_high[v]);
        }
    } else {
        const __m256 min_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
        const __m256 min_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
EQ_UNROLL(4)
        for (int v = 0; v < vectors; v++) {
            const __m256 sum = _mm256_set1_ps(sum_x[v]);
            acc_low[v] = _mm256_fmadd_ps(min_low, sum, _mm256_fmadd_ps(scale_low, dot_low[v], acc_low[v]));
            acc_high[v] = _mm256_fmadd_ps(min_high, sum, _mm256_fmadd_ps(scale_high, dot_high[v], acc_high[v]));
        }
    }
}

/* y[v] (the 16 rows of one tile) = W x_v for `vectors` prepared vectors (1 .. VECTORS). Every
 * vector goes through the same float steps in the same order whatever `vectors` is, so a vector's
 * bits do not depend on the batch it is in (decode = vectors 1). Whole groups go through
 * group_step with their width a constant, a partial last group with its own. */
static inline __attribute__((always_inline)) void
tile_vectors(const eq_qtype_traits *type, const uint8_t *tile_data, size_t cols, const eq_packed_acts *x,
             const int vectors, const int bits, const size_t group, const size_t n_rows, float *const *y)
{
    const size_t n_groups = (cols + group - 1) / group;
    const size_t last_cols = eq_packed_group_cols(type, cols, n_groups - 1);
    const size_t n_whole = last_cols == group ? n_groups : n_groups - 1;
    const size_t whole_bytes = eq_packed_block_bytes(type, group);
    const float zero_point = eq_zero_point(type);
    __m256 acc_low[VECTORS], acc_high[VECTORS];                       /* rows 0-7, 8-15 per vector */
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++)
        acc_low[v] = acc_high[v] = _mm256_setzero_ps();
    const uint8_t *block = tile_data;
    for (size_t g = 0; g < n_whole; g++, block += whole_bytes)
        group_step(type, block, group, g * group / BLOCK, x, vectors, bits, zero_point, acc_low, acc_high);
    if (n_whole < n_groups)
        group_step(type, block, last_cols, n_whole * group / BLOCK, x, vectors, bits, zero_point, acc_low,
                   acc_high);
EQ_UNROLL(4)
    for (int v = 0; v < vectors; v++) {
        float out[EQ_TILE_ROWS];
        _mm256_storeu_ps(out, acc_low[v]);
        _mm256_storeu_ps(out + 8, acc_high[v]);
        memcpy(y[v], out, n_rows * sizeof(float));
    }
}

/* Every tile times every vector, `vectors` at a time (then one by one for the rest of the batch);
 * each 16-row tile is read once per call and reused for every vector while it is in cache. */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int vectors, const int bits, const size_t group)
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
            tile_vectors(type, tile_data, cols, x, vectors, bits, group, n_rows, out);
        }
        for (; v < in->n; v++) {
            x[0] = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            out[0] = y + v * y_stride + row0;
            tile_vectors(type, tile_data, cols, x, 1, bits, group, n_rows, out);
        }
    }
}

/* gemm_body with its width and group as constants for the table's types (`vectors`, a constant at
 * each call, is inlined through), a run-time body for any other type */
static inline __attribute__((always_inline)) void
dispatch(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
         float *y, size_t y_stride, int vectors)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): gemm_body(type, data, rows, cols, in, y, y_stride, vectors, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        gemm_body(type, data, rows, cols, in, y, y_stride, vectors, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

/* decode: one vector at a time (a batch below prefill_from) */
void eq_packed_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                         const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, 1);
}

/* prefill: VECTORS vectors per load of a quad of levels */
void eq_packed_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                 const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, VECTORS);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: nothing here (the avx2 set is never available) */

typedef int eq_avx2_packed_not_x86;   /* ISO C: a translation unit must declare something */

#endif
