/* x86/avx2_prefill.c — the multiply-add (prefill) path of the avx2 set for uniform bit-plane types:
 * int16 activations times weight levels expanded once per tile and reused for every vector.
 *
 * It does not serve decode (one vector pays the expansion alone: the LUT path in x86/avx2.c wins
 * there) and stores nothing in the file: the bit-planes are expanded in L1 at run time.
 *
 * prepare (eq_prefill_prepare_avx2), per vector, blocks of 32 activations (layout in q16_acts.h):
 *     d_b = max |x| / 32767,  q = round(x / d_b) (to nearest, ties to even),  sum_b = d_b Σ q
 * (a block whose max |x| is below ~1e-34, where 32767 / max |x| overflows float, is stored as zeros).
 * gemm, per 16-row tile and span of up to 128 columns: the bit-planes of the span's groups are
 * expanded once into int16 levels l (0 .. 2^b - 1) laid out (span / 2, 16 rows, 2 columns), so one
 * 32-byte load holds 8 rows x 2 columns; then for every vector of the batch (VECTORS per level
 * load), per 2 columns, the vector's 2 int16 activations are broadcast and
 *     vpmaddwd (s16 levels x s16 activations -> one s32 per row: l_0 q_0 + l_1 q_1)
 * is added into an s32 lane per row. No horizontal sums: each register lane stays one row. Per
 * block of 32 the s32 row sums are converted to float and weighed by d_b times the row's scale; per
 * group, with dot = Σ_k l_k x̂_k and x̂_k = d_b q_k:
 *     asymmetric  y += scale * dot + min * Σ x̂
 *     symmetric   y += scale * (dot - zero_point * Σ x̂)
 * where Σ x̂ = Σ_b sum_b over the group's blocks.
 *
 * Overflow. A vpmaddwd lane is l_0 q_0 + l_1 q_1 with l <= 255 and |q| <= 32767: at most
 * 2 x 255 x 32767 = 16 711 170 in magnitude (it wraps only for two (-32768)^2 products, which
 * levels >= 0 never make). An s32 lane may therefore add n products while n x 255 x 32767 < 2^31,
 * n <= 257: 128 pairs, 256 columns, before it must be converted to float. A block is 32 columns
 * (at most 32 x 255 x 32767 = 267 M, 1/8 of the range), so nothing wraps at any width, 8 bits
 * included (no level offset is needed, unlike int8 maddubs).
 *
 * Error against the reference (ref/gemv.c, the specification). The integer part is exact, so up
 * to fp32 rounding the result is W x̂. Rounding to nearest gives |x_k - x̂_k| <= d_b / 2, plus
 * the float rounding of x * (32767 / max) (two roundings of a number <= 32767: 2^-8 of a step) and
 * of d_b (2^-24 relative, times |q| <= 32767: 2^-9 of a step), hence
 *     |y_r - (W x)_r| <= Σ_k |w_rk| (1/2 + 2^-7) d_{b(k)}  + fp32 accumulation
 * with d_b = max_b |x| / 32767: 2^-16 of the block's largest activation per weight, 2^8 times
 * smaller than int8 activations (d_b = max / 127) and below the LUT path's int16 tables (whose
 * step is 2^-15 of the largest 4-activation subset sum of 64 columns, per lookup).
 * tests/test_native_quant.py and native/tests/check_kernels.c (path_precisions[]) check exactly this
 * bound for every type. The fp32 part: each block's s32 sum (< 2^28) converts with a relative
 * error 2^-24, then one FMA per block and one per group, as the LUT path.
 *
 * Register blocking. A block of 32 columns x 16 rows x VECTORS (4) vectors keeps its 8 s32 sums, the
 * pair's 2 level registers and one broadcast in 11 of the 16 ymm registers, and every address of a
 * vector in one general register (its q of the block; d_b and sum_b at offsets shared by the
 * vectors), so the inner loop is the floor of this layout: per pair 2 level loads + per vector 1
 * broadcast, 2 vpmaddwd, 2 vpaddd (AVX2 has no multiply-add into an accumulator; holding the levels
 * in memory operands instead would need 1.5 loads per vpmaddwd). Per (block, vector) the float work
 * is 2 converts, 2 x d_b x scale, 2 FMAs into the tile's accumulators in L1 (+ 2 FMAs for Σ x̂ at a
 * group's end), with no branch: accumulators start at zero per tile and are copied to y once.
 * Conversion per block is inherent: each block of 32 has its own d_b (an s32 lane could hold 256
 * columns, but summing two blocks in integers would need one scale for both, a coarser d_b and a
 * larger error bound). Instructions of one 64 x 896 gemm over 64 vectors (benchmarks/README.md
 * "Register blocking of the bit-plane prefill on avx2"): u3g32a 1 265 k -> 852 k, same bits.
 *
 * Compiled for AVX2/FMA/F16C by the pragmas, called only through sets whose availability check
 * covers them (avx2, avx512).
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
#include "q16_acts.h"

enum {
    SPAN_COLS = 128,        /* columns expanded at once per tile: 16 x 128 int16 levels = 4 KB in L1 */
    PAIR_LEVELS = 32,       /* one expanded pair: 16 rows x 2 columns of int16 (64 bytes) */
    BATCH_MAX = 64,         /* vectors whose tile accumulators stay in L1 (4 KB) per pass */
    VECTORS = 4             /* vectors multiplied per level load */
};

/* ---- prepare: int16 activations per block of 32 --------------------------------------------- */

size_t eq_prefill_prepared_bytes_avx2(size_t cols)
{
    return eq_q16_prepared_bytes(cols);
}

void eq_prefill_prepare_avx2(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = eq_q16_padded(cols);
    const eq_q16_acts acts = eq_q16_acts_at(out, cols);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (size_t b = 0; b < padded / EQ_Q16_BLOCK; b++) {
        const size_t k0 = b * EQ_Q16_BLOCK;
        float tail[EQ_Q16_BLOCK];
        const float *block = x + k0;
        if (k0 + EQ_Q16_BLOCK > cols) {   /* the last partial block, and the padding: zeros past cols */
            memset(tail, 0, sizeof tail);
            if (k0 < cols)
                memcpy(tail, x + k0, (cols - k0) * sizeof(float));
            block = tail;
        }
        __m256 v[4], largest = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(block + 8 * i);
            largest = _mm256_max_ps(largest, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(largest), _mm256_extractf128_ps(largest, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float max_abs = _mm_cvtss_f32(m);
        float inverse = max_abs > 0.0f ? (float)EQ_Q16_LEVELS / max_abs : 0.0f;
        if (!(inverse <= 3.0e38f))   /* max |x| < ~1e-34 (or NaN): the block is stored as zeros */
            inverse = 0.0f;
        const __m256 scale = _mm256_set1_ps(inverse);
        __m256i q[4];
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], scale));   /* nearest, ties to even */
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        /* packs interleave 4-value pieces across lanes; the 64-bit permute restores column order */
        for (int i = 0; i < 2; i++)
            _mm256_store_si256((__m256i *)(acts.q + k0) + i,
                               _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2 * i], q[2 * i + 1]), 0xd8));
        acts.scale[b] = inverse > 0.0f ? max_abs / (float)EQ_Q16_LEVELS : 0.0f;
        acts.sum[b] = acts.scale[b] * (float)_mm_cvtsi128_si32(s);
    }
}

/* ---- expand: bit-planes -> int16 levels ------------------------------------------------------ */

/* levels (width / 2, 16, 2) int16 of one (tile, group) block from its planes (bits, width / 8, 16),
 * width its stored columns (the group's G, or a partial last group's multiple of EQ_GROUP_STEP):
 * per 8-column chunk, each row's plane byte is spread over 4 bytes (pshufb), bit i is tested in
 * byte i mod 4 of columns 0-3 / 4-7, and a set bit adds 2^p (bytes: rows x 4 columns); then each
 * row's 4 bytes are widened to int16 and split into its column pairs (0, 1) and (2, 3). */
static inline __attribute__((always_inline)) void
expand_group(const uint8_t *planes, const int bits, const size_t width, int16_t *levels)
{
    const __m256i spread_rows_0_7 = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                     4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m256i spread_rows_8_15 = _mm256_add_epi8(spread_rows_0_7, _mm256_set1_epi8(8));
    const __m256i columns_0_3 = _mm256_set1_epi32(0x08040201);
    const __m256i columns_4_7 = _mm256_set1_epi32((int)0x80402010u);
    const __m256i pairs_apart = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const size_t plane_bytes = 2u * width;
    for (size_t c = 0; c < width / EQ_CHUNK_COLS; c++) {
        __m256i quads[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),   /* cols 0-3: rows 0-7, 8-15 */
                            _mm256_setzero_si256(), _mm256_setzero_si256()};  /* cols 4-7: rows 0-7, 8-15 */
EQ_UNROLL(8)
        for (int p = 0; p < bits; p++) {
            const __m256i chunk = _mm256_broadcastsi128_si256(
                _mm_loadu_si128((const __m128i *)(planes + (size_t)p * plane_bytes + 16u * c)));
            const __m256i rows_0_7 = _mm256_shuffle_epi8(chunk, spread_rows_0_7);
            const __m256i rows_8_15 = _mm256_shuffle_epi8(chunk, spread_rows_8_15);
            const __m256i weight = _mm256_set1_epi8((char)(1u << p));
#define ADD_PLANE(levels_, rows_, columns_) \
            levels_ = _mm256_or_si256(levels_, _mm256_and_si256(weight, \
                          _mm256_cmpeq_epi8(_mm256_and_si256(rows_, columns_), columns_)))
            ADD_PLANE(quads[0], rows_0_7, columns_0_3);
            ADD_PLANE(quads[1], rows_8_15, columns_0_3);
            ADD_PLANE(quads[2], rows_0_7, columns_4_7);
            ADD_PLANE(quads[3], rows_8_15, columns_4_7);
#undef ADD_PLANE
        }
        /* per quad (8 rows x 4 columns of bytes): rows 0-3 and 4-7 widened to int16 hold, per row,
         * the pair (0, 1) then (2, 3) as two dwords; gather the first pairs, then the second ones */
EQ_UNROLL(2)
        for (int h = 0; h < 2; h++) {            /* columns 0-3, 4-7 */
EQ_UNROLL(2)
            for (int r = 0; r < 2; r++) {        /* rows 0-7, 8-15 */
                const __m256i quad = quads[2 * h + r];
                const __m256i rows_0_3 = _mm256_permutevar8x32_epi32(
                    _mm256_cvtepu8_epi16(_mm256_castsi256_si128(quad)), pairs_apart);
                const __m256i rows_4_7 = _mm256_permutevar8x32_epi32(
                    _mm256_cvtepu8_epi16(_mm256_extracti128_si256(quad, 1)), pairs_apart);
                int16_t *pair = levels + (4u * c + 2u * (unsigned)h) * PAIR_LEVELS + 16u * (unsigned)r;
                _mm256_store_si256((__m256i *)pair, _mm256_permute2x128_si256(rows_0_3, rows_4_7, 0x20));
                _mm256_store_si256((__m256i *)(pair + PAIR_LEVELS), _mm256_permute2x128_si256(rows_0_3, rows_4_7, 0x31));
            }
        }
    }
}

/* ---- multiply: a register block of `vectors` vectors against one expanded group ---------------- */

/* sum[v] (rows 0-7, rows 8-15: s32) = Σ_{k in block} l[r, k] q_v[k] over one block of 32 columns:
 * levels (16, 16, 2) the block's pairs as expand_group laid them out, q[v] vector v's q of the block.
 * Per pair: 2 level loads shared by the block's vectors, then per vector 1 broadcast, 2 vpmaddwd,
 * 2 vpaddd (the floor of this layout on AVX2, which has no multiply-add into an accumulator). */
static inline __attribute__((always_inline)) void
block_sums(const int16_t *levels, const uint8_t *const *q, const int vectors, __m256i (*sum)[2])
{
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        sum[v][0] = sum[v][1] = _mm256_setzero_si256();
EQ_UNROLL(16)
    for (int j = 0; j < EQ_Q16_BLOCK / 2; j++) {
        const __m256i w_0_7 = _mm256_load_si256((const __m256i *)(levels + (size_t)j * PAIR_LEVELS));
        const __m256i w_8_15 = _mm256_load_si256((const __m256i *)(levels + (size_t)j * PAIR_LEVELS + 16));
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++) {
            int32_t two;
            memcpy(&two, q[v] + 4u * (size_t)j, sizeof two);
            const __m256i xv = _mm256_set1_epi32(two);
            sum[v][0] = _mm256_add_epi32(sum[v][0], _mm256_madd_epi16(w_0_7, xv));
            sum[v][1] = _mm256_add_epi32(sum[v][1], _mm256_madd_epi16(w_8_15, xv));
            /* keep each sum one chain in one register: otherwise gcc reassociates the unrolled
             * additions into a tree, computes every product first and spills them */
            __asm__("" : "+x"(sum[v][0]), "+x"(sum[v][1]));
        }
    }
}

/* acc[v] (16 rows) += cvt(sum[v]) d_b scale[r], then + bias[r] Σ x̂_v when bias is not NULL (the
 * group's last block: Σ x̂ over its n_sum_blocks blocks, the last one this block), for `vectors`
 * vectors whose d_b of this block is at q[v] + scale_at and whose sum_b at q[v] + sum_at */
static inline __attribute__((always_inline)) void
block_output(__m256i (*sum)[2], const uint8_t *const *q, const int vectors, const size_t scale_at,
             const size_t sum_at, const float *scale, const float *bias, const size_t n_sum_blocks,
             float (*acc)[EQ_TILE_ROWS])
{
    const __m256 scale_0_7 = _mm256_load_ps(scale), scale_8_15 = _mm256_load_ps(scale + 8);
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++) {
        float d_b;
        memcpy(&d_b, q[v] + scale_at, sizeof d_b);
        const __m256 d = _mm256_set1_ps(d_b);
        __m256 y_0_7 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[v][0]), _mm256_mul_ps(d, scale_0_7), _mm256_load_ps(acc[v]));
        __m256 y_8_15 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[v][1]), _mm256_mul_ps(d, scale_8_15), _mm256_load_ps(acc[v] + 8));
        if (bias != NULL) {   /* the group's Σ x̂ term, once per group, after its blocks */
            float x_sum;
            memcpy(&x_sum, q[v] + sum_at - (n_sum_blocks - 1) * sizeof(float), sizeof x_sum);
            for (size_t i = 1; i < n_sum_blocks; i++) {
                float sum_b;
                memcpy(&sum_b, q[v] + sum_at - (n_sum_blocks - 1 - i) * sizeof(float), sizeof sum_b);
                x_sum += sum_b;
            }
            const __m256 sum_x = _mm256_set1_ps(x_sum);
            y_0_7 = _mm256_fmadd_ps(_mm256_load_ps(bias), sum_x, y_0_7);
            y_8_15 = _mm256_fmadd_ps(_mm256_load_ps(bias + 8), sum_x, y_8_15);
        }
        _mm256_store_ps(acc[v], y_0_7);
        _mm256_store_ps(acc[v] + 8, y_8_15);
    }
}

/* Where the next block of a register block's vectors is read: q[v] vector v's q of that block, and
 * its d_b and sum_b at q[v] + scale_at and q[v] + sum_at (offsets shared by the vectors, so each
 * vector costs one register for the whole row). */
typedef struct block_cursor {
    const uint8_t *q[VECTORS];
    size_t scale_at, sum_at;
} block_cursor;

static inline __attribute__((always_inline)) block_cursor
block_cursor_at(const eq_input *in, const size_t first, const int vectors, const size_t block)
{
    const eq_q16_acts layout = eq_q16_acts_at(in->prepared, in->cols);
    const size_t q_at = block * EQ_Q16_BLOCK * sizeof(int16_t);
    block_cursor at;
    at.scale_at = (size_t)((const uint8_t *)layout.scale - in->prepared) + block * sizeof(float) - q_at;
    at.sum_at = (size_t)((const uint8_t *)layout.sum - in->prepared) + block * sizeof(float) - q_at;
    for (int v = 0; v < vectors; v++)
        at.q[v] = in->prepared + (first + (size_t)v) * in->stride + q_at;
    return at;
}

/* acc[v] (16 rows) += scale[r] Σ_b d_b Σ_{k in b} l[r, k] q_v[k] + bias[r] Σ x̂_v over one group's
 * `width` stored columns, for `vectors` (1 .. VECTORS) vectors from the cursor's block on (the
 * cursor moves past the group); levels (width / 2, 16, 2), scale and bias (16,) */
static inline __attribute__((always_inline)) void
group_product(const int16_t *levels, block_cursor *at, const int vectors, const float *scale, const float *bias,
              const size_t width, float (*acc)[EQ_TILE_ROWS])
{
    const size_t n_blocks = width / EQ_Q16_BLOCK;
EQ_UNROLL(4)
    for (size_t b = 0; b < n_blocks; b++) {
        __m256i sum[VECTORS][2];
        block_sums(levels + b * (EQ_Q16_BLOCK / 2) * PAIR_LEVELS, at->q, vectors, sum);
        block_output(sum, at->q, vectors, at->scale_at, at->sum_at, scale, b + 1 == n_blocks ? bias : NULL,
                     n_blocks, acc);
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++) {
            at->q[v] += EQ_Q16_BLOCK * sizeof(int16_t);
            /* keep one register per vector: without the barrier gcc derives a pointer per vector
             * and offset from spilled starts at every block */
            __asm__("" : "+r"(at->q[v]));
        }
        at->scale_at += sizeof(float) - EQ_Q16_BLOCK * sizeof(int16_t);
        at->sum_at += sizeof(float) - EQ_Q16_BLOCK * sizeof(int16_t);
    }
}

/* acc[v] += the span's groups g0 .. g_end applied to `vectors` vectors from in's vector `first`;
 * the last group of the row (n_groups - 1) stores last_width columns */
static inline __attribute__((always_inline)) void
span_vectors(const int16_t *levels, const float (*scales)[EQ_TILE_ROWS], const float (*biases)[EQ_TILE_ROWS],
             const eq_input *in, const size_t first, const int vectors, size_t g0, size_t g_end,
             const size_t group, const size_t n_groups, const size_t last_width, float (*acc)[EQ_TILE_ROWS])
{
    block_cursor at = block_cursor_at(in, first, vectors, g0 * group / EQ_Q16_BLOCK);
    for (size_t g = g0; g < g_end; g++) {
        const int16_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
        if (g + 1 == n_groups && last_width != group)   /* a partial last group: its own trip counts */
            group_product(group_levels, &at, vectors, scales[g - g0], biases[g - g0], last_width, acc);
        else
            group_product(group_levels, &at, vectors, scales[g - g0], biases[g - g0], group, acc);
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* The kernel body, inlined once per (bits, group) by eq_prefill_gemm_avx2 so that the loops over
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
    const __m256 minus_zero_point = _mm256_set1_ps(-eq_zero_point(type));

    _Alignas(64) int16_t levels[SPAN_COLS / 2 * PAIR_LEVELS];         /* (span / 2, 16, 2) */
    _Alignas(32) float acc[BATCH_MAX][EQ_TILE_ROWS];                   /* y of the tile per vector, between blocks */
    _Alignas(32) float scales[SPAN_COLS / EQ_Q16_BLOCK][EQ_TILE_ROWS]; /* per group of the span */
    _Alignas(32) float biases[SPAN_COLS / EQ_Q16_BLOCK][EQ_TILE_ROWS]; /* what multiplies Σ x̂ */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * tile_bytes;
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        for (size_t v0 = 0; v0 < in->n; v0 += BATCH_MAX) {
            const size_t n_vectors = in->n - v0 < BATCH_MAX ? in->n - v0 : BATCH_MAX;
            for (size_t v = 0; v < n_vectors; v++) {
                _mm256_store_ps(acc[v], _mm256_setzero_ps());
                _mm256_store_ps(acc[v] + 8, _mm256_setzero_ps());
            }
            for (size_t g0 = 0; g0 < n_groups; g0 += span_groups) {
                const size_t g_end = g0 + span_groups < n_groups ? g0 + span_groups : n_groups;
                for (size_t g = g0; g < g_end; g++) {
                    const uint8_t *block = tile_data + g * block_bytes;
                    int16_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
                    if (g + 1 == n_groups && last_width != group)
                        expand_group(block + planes_offset, bits, last_width, group_levels);
                    else
                        expand_group(block + planes_offset, bits, group, group_levels);
EQ_UNROLL(2)
                    for (int half = 0; half < 2; half++) {
                        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16 * half)));
                        const __m256 bias = type->symmetric
                            ? _mm256_mul_ps(scale, minus_zero_point)
                            : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + scale_bytes + 16 * half)));
                        _mm256_store_ps(scales[g - g0] + 8 * half, scale);
                        _mm256_store_ps(biases[g - g0] + 8 * half, bias);
                    }
                }
                size_t v = 0;
                for (; v + VECTORS <= n_vectors; v += VECTORS)
                    span_vectors(levels, scales, biases, in, v0 + v, VECTORS, g0, g_end, group, n_groups, last_width, acc + v);
                if (v + 2 <= n_vectors) {   /* the rest: 2 at a time, then one by one */
                    span_vectors(levels, scales, biases, in, v0 + v, 2, g0, g_end, group, n_groups, last_width, acc + v);
                    v += 2;
                }
                for (; v < n_vectors; v++)
                    span_vectors(levels, scales, biases, in, v0 + v, 1, g0, g_end, group, n_groups, last_width, acc + v);
            }
            for (size_t v = 0; v < n_vectors; v++) {
                float *y_v = y + (v0 + v) * y_stride + row0;
                if (n_rows == EQ_TILE_ROWS) {
                    _mm256_storeu_ps(y_v, _mm256_load_ps(acc[v]));
                    _mm256_storeu_ps(y_v + 8, _mm256_load_ps(acc[v] + 8));
                } else {   /* a last tile of fewer rows */
                    memcpy(y_v, acc[v], n_rows * sizeof(float));
                }
            }
        }
    }
}

EQ_PREFILL_GEMM(avx2)

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: nothing here (x86/avx2.c's set is never available) */

typedef int eq_avx2_prefill_unused;

#endif
