/* x86/avx2_prefill.c — the multiply-add (prefill) path of the avx2 set for uniform bit-plane types:
 * int8 activations times weight levels expanded once per tile and reused for every vector.
 *
 * It does not serve decode (one vector pays the expansion alone: the LUT path in x86/avx2.c wins
 * there) and stores nothing in the file: the bit-planes are expanded in L1 at run time.
 *
 * prepare (eq_prefill_prepare_avx2), per vector, blocks of 32 activations (layout in q8_acts.h):
 *     d_b = max |x| / 127,  q = round(x / d_b) (to nearest, ties to even),  sum_b = d_b Σ q
 * gemm, per 16-row tile and span of up to 256 columns: the bit-planes of the span's groups are
 * expanded once into levels l (0 .. 2^b - 1) laid out (span / 4, 16 rows, 4 columns), so one 32-byte
 * load holds 8 rows x 4 columns; then for every vector of the batch, per 4 columns, the 4 int8
 * activations are broadcast and multiplied with 8 rows at once:
 *     maddubs (u8 levels x s8 activations -> s16 pairs), madd with ones (-> s32, one per row)
 * No horizontal sums: each register lane stays one row. Per block of 32 the s32 row sums are
 * converted to float and weighed by d_b; per group, with dot = Σ_k l'_k x̂_k:
 *     asymmetric  y += scale * dot + (min + offset * scale) * Σ x̂
 *     symmetric   y += scale * (dot - (zero_point - offset) * Σ x̂)
 * where l' = l - offset and Σ x̂ = Σ_b sum_b over the group's blocks.
 *
 * Overflow. A maddubs lane is l'_0 q_0 + l'_1 q_1 with |q| <= 127. For b <= 6 (offset 0, l' = l <=
 * 2^b - 1) it is at most 254 (2^b - 1) <= 16002 < 32767, and RUN = 32767 / (254 (2^b - 1)) quads
 * (8 at b <= 4 — a whole block —, 4 at b = 5, 2 at b = 6) are summed in s16 before widening.
 * At b = 8, 2 x 255 x 127 > 32767 would saturate, so levels are stored as l' = l - 128 (s8) and
 * maddubs(|l'|, sign(q, l')) gives l' q with |l'_0 q_0 + l'_1 q_1| <= 2 x 128 x 127 = 32512 (RUN = 1);
 * the 128 Σ x̂ it leaves out is the `offset` term above. s32 sums of a block: at most 32 x 255 x 127.
 *
 * Error against the reference (ref/gemv.c, the specification). The integer part is exact, so up
 * to fp32 rounding the result is W x̂ with x̂_k = d_b q_k. Rounding to nearest gives
 * |x_k - x̂_k| <= d_b / 2 (the product x * 127/max is off by an ulp at most, far inside that), hence
 *     |y_r - (W x)_r| <= Σ_k |w_rk| d_{b(k)} / 2  + fp32 accumulation (~1e-6 Σ_k |w_rk| |x_k|)
 * for every row r; tests/test_native_quant.py checks exactly this bound for every type. It is the
 * error llama.cpp's Q8 activations make in its x86 dot products.
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
#include "q8_acts.h"

enum {
    SPAN_COLS = 256,        /* columns expanded at once per tile: 16 x 256 levels = 4 KB in L1 */
    QUAD_BYTES = 64,        /* one expanded quad: 16 rows x 4 columns */
    BATCH_MAX = 64          /* vectors whose tile accumulators stay in L1 (4 KB) per pass */
};

/* ---- prepare: int8 activations per block of 32 ----------------------------------------------- */

size_t eq_prefill_prepared_bytes_avx2(size_t cols)
{
    return eq_q8_prepared_bytes(cols);
}

void eq_prefill_prepare_avx2(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = eq_q8_padded(cols);
    const eq_q8_acts acts = eq_q8_acts_at(out, cols);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t b = 0; b < padded / EQ_Q8_BLOCK; b++) {
        const size_t k0 = b * EQ_Q8_BLOCK;
        float tail[EQ_Q8_BLOCK];
        const float *block = x + k0;
        if (k0 + EQ_Q8_BLOCK > cols) {   /* the last partial block, and the padding: zeros past cols */
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
        const __m256 inverse = _mm256_set1_ps(max_abs > 0.0f ? 127.0f / max_abs : 0.0f);
        __m256i q[4];
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));   /* nearest, ties to even */
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
        /* packs interleave 4-value pieces across lanes; the permute restores column order */
        __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_store_si256((__m256i *)(acts.q + k0), _mm256_permutevar8x32_epi32(bytes, order));
        acts.scale[b] = max_abs / 127.0f;
        acts.sum[b] = acts.scale[b] * (float)_mm_cvtsi128_si32(s);
    }
}

/* ---- expand: bit-planes -> levels ------------------------------------------------------------- */

/* levels (width / 4, 16, 4) of one (tile, group) block from its planes (bits, width / 8, 16), width
 * its stored columns (the group's G, or a partial last group's multiple of EQ_GROUP_STEP):
 * per 8-column chunk, each row's plane byte is spread over 4 bytes (pshufb), bit i is tested in
 * byte i mod 4 of columns 0-3 / 4-7, and a set bit adds 2^p. At 8 bits the result is l - 128. */
static inline __attribute__((always_inline)) void
expand_group(const uint8_t *planes, const int bits, const size_t width, uint8_t *levels)
{
    const __m256i spread_rows_0_7 = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                     4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m256i spread_rows_8_15 = _mm256_add_epi8(spread_rows_0_7, _mm256_set1_epi8(8));
    const __m256i columns_0_3 = _mm256_set1_epi32(0x08040201);
    const __m256i columns_4_7 = _mm256_set1_epi32((int)0x80402010u);
    const size_t plane_bytes = 2u * width;
    for (size_t c = 0; c < width / EQ_CHUNK_COLS; c++) {
        __m256i low_0_7 = _mm256_setzero_si256(), low_8_15 = _mm256_setzero_si256();     /* cols 0-3 */
        __m256i high_0_7 = _mm256_setzero_si256(), high_8_15 = _mm256_setzero_si256();   /* cols 4-7 */
        for (int p = 0; p < bits; p++) {
            const __m256i chunk = _mm256_broadcastsi128_si256(
                _mm_loadu_si128((const __m128i *)(planes + (size_t)p * plane_bytes + 16u * c)));
            const __m256i rows_0_7 = _mm256_shuffle_epi8(chunk, spread_rows_0_7);
            const __m256i rows_8_15 = _mm256_shuffle_epi8(chunk, spread_rows_8_15);
            const __m256i weight = _mm256_set1_epi8((char)(1u << p));
#define ADD_PLANE(levels_, rows_, columns_) \
            levels_ = _mm256_or_si256(levels_, _mm256_and_si256(weight, \
                          _mm256_cmpeq_epi8(_mm256_and_si256(rows_, columns_), columns_)))
            ADD_PLANE(low_0_7, rows_0_7, columns_0_3);
            ADD_PLANE(low_8_15, rows_8_15, columns_0_3);
            ADD_PLANE(high_0_7, rows_0_7, columns_4_7);
            ADD_PLANE(high_8_15, rows_8_15, columns_4_7);
#undef ADD_PLANE
        }
        if (bits == 8) {
            const __m256i offset = _mm256_set1_epi8((char)0x80);
            low_0_7 = _mm256_xor_si256(low_0_7, offset);
            low_8_15 = _mm256_xor_si256(low_8_15, offset);
            high_0_7 = _mm256_xor_si256(high_0_7, offset);
            high_8_15 = _mm256_xor_si256(high_8_15, offset);
        }
        __m256i *out = (__m256i *)(levels + 2u * c * QUAD_BYTES);
        _mm256_store_si256(out, low_0_7);
        _mm256_store_si256(out + 1, low_8_15);
        _mm256_store_si256(out + 2, high_0_7);
        _mm256_store_si256(out + 3, high_8_15);
    }
}

/* ---- multiply: one vector against one expanded group ------------------------------------------ */

/* quads summed in s16 before widening (see the opening comment) */
static inline int s16_run(int bits)
{
    return bits <= 4 ? 8 : bits == 5 ? 4 : bits == 6 ? 2 : 1;
}

/* y[v][0], y[v][1] (rows 0-7, 8-15) += scale[r] Σ_b d_b Σ_{k in b} l'[r, k] q_v[k] + bias[r] Σ x̂_v
 * over group g's `width` stored columns, for `vectors` (1 or 2: each level load serves both)
 * vectors; levels (width / 4, 16, 4) as expand_group left them, x[v] the vectors' prepared inputs
 * (blocks of 32 up to cols rounded up to 32: exactly a partial last group's stored columns), scale
 * and bias (16,) per row */
static inline __attribute__((always_inline)) void
group_product(const uint8_t *levels, const eq_q8_acts x[2], const int vectors, size_t g, const float *scale,
              const float *bias, const int bits, const size_t group, const size_t width, __m256 y[2][2])
{
    const int run = s16_run(bits);
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t first_block = g * group / EQ_Q8_BLOCK;
    for (size_t b = 0; b < width / EQ_Q8_BLOCK; b++) {
        const size_t block = first_block + b;
        __m256i sum[2][2];                                   /* s32 per (vector, row half) */
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++)
            sum[v][0] = sum[v][1] = _mm256_setzero_si256();
        for (int j0 = 0; j0 < EQ_Q8_BLOCK / 4; j0 += run) {
            __m256i pairs[2][2];                             /* s16 */
#pragma GCC unroll 8
            for (int v = 0; v < vectors; v++)
                pairs[v][0] = pairs[v][1] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = j0; j < j0 + run; j++) {
                const size_t quad = b * (EQ_Q8_BLOCK / 4) + (size_t)j;
                const __m256i w_0_7 = _mm256_load_si256((const __m256i *)(levels + quad * QUAD_BYTES));
                const __m256i w_8_15 = _mm256_load_si256((const __m256i *)(levels + quad * QUAD_BYTES + 32));
#pragma GCC unroll 8
                for (int v = 0; v < vectors; v++) {
                    int32_t four;
                    memcpy(&four, x[v].q + block * EQ_Q8_BLOCK + 4 * (size_t)j, sizeof four);
                    const __m256i xv = _mm256_set1_epi32(four);
                    if (bits == 8) {   /* l' = l - 128 signed: |l'| x sign(q, l') */
                        pairs[v][0] = _mm256_add_epi16(pairs[v][0], _mm256_maddubs_epi16(_mm256_abs_epi8(w_0_7), _mm256_sign_epi8(xv, w_0_7)));
                        pairs[v][1] = _mm256_add_epi16(pairs[v][1], _mm256_maddubs_epi16(_mm256_abs_epi8(w_8_15), _mm256_sign_epi8(xv, w_8_15)));
                    } else {
                        pairs[v][0] = _mm256_add_epi16(pairs[v][0], _mm256_maddubs_epi16(w_0_7, xv));
                        pairs[v][1] = _mm256_add_epi16(pairs[v][1], _mm256_maddubs_epi16(w_8_15, xv));
                    }
                }
            }
#pragma GCC unroll 8
            for (int v = 0; v < vectors; v++) {
                sum[v][0] = _mm256_add_epi32(sum[v][0], _mm256_madd_epi16(pairs[v][0], ones));
                sum[v][1] = _mm256_add_epi32(sum[v][1], _mm256_madd_epi16(pairs[v][1], ones));
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < vectors; v++) {
            const __m256 d = _mm256_set1_ps(x[v].scale[block]);
#pragma GCC unroll 8
            for (int half = 0; half < 2; half++)
                y[v][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[v][half]),
                                             _mm256_mul_ps(d, _mm256_load_ps(scale + 8 * half)), y[v][half]);
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++) {
        float x_sum = 0.0f;
        for (size_t b = 0; b < width / EQ_Q8_BLOCK; b++)
            x_sum += x[v].sum[first_block + b];
        const __m256 sum = _mm256_set1_ps(x_sum);
#pragma GCC unroll 8
        for (int half = 0; half < 2; half++)
            y[v][half] = _mm256_fmadd_ps(_mm256_load_ps(bias + 8 * half), sum, y[v][half]);
    }
}

/* acc[v] (16 rows) += the span's groups g0 .. g_end applied to `vectors` (1 or 2) vectors; the
 * last group of the row (n_groups - 1) stores last_width columns */
static inline __attribute__((always_inline)) void
span_vectors(const uint8_t *levels, const float (*scales)[EQ_TILE_ROWS], const float (*biases)[EQ_TILE_ROWS],
             const eq_q8_acts x[2], const int vectors, size_t g0, size_t g_end, const int bits,
             const size_t group, const size_t n_groups, const size_t last_width, float *const acc[2])
{
    __m256 y[2][2];
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++) {
        y[v][0] = _mm256_load_ps(acc[v]);
        y[v][1] = _mm256_load_ps(acc[v] + 8);
    }
    for (size_t g = g0; g < g_end; g++) {
        const uint8_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
        if (g + 1 == n_groups && last_width != group)   /* a partial last group: its own trip counts */
            group_product(group_levels, x, vectors, g, scales[g - g0], biases[g - g0], bits, group, last_width, y);
        else
            group_product(group_levels, x, vectors, g, scales[g - g0], biases[g - g0], bits, group, group, y);
    }
#pragma GCC unroll 8
    for (int v = 0; v < vectors; v++) {
        _mm256_store_ps(acc[v], y[v][0]);
        _mm256_store_ps(acc[v] + 8, y[v][1]);
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* The kernel body, inlined once per (bits, group) by eq_prefill_gemm_avx2 so that the loops over
 * planes, chunks and quads have constant trip counts. */
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
    const size_t span_groups = SPAN_COLS / group;
    const float offset = bits == 8 ? 128.0f : 0.0f;
    const float zero_point = (float)((1u << bits) - 1u) / 2.0f;

    _Alignas(64) uint8_t levels[SPAN_COLS / 4 * QUAD_BYTES];          /* (span / 4, 16, 4) */
    _Alignas(32) float acc[BATCH_MAX][EQ_TILE_ROWS];                   /* y of the tile per vector */
    _Alignas(32) float scales[SPAN_COLS / EQ_Q8_BLOCK][EQ_TILE_ROWS];  /* per group of the span */
    _Alignas(32) float biases[SPAN_COLS / EQ_Q8_BLOCK][EQ_TILE_ROWS];  /* what multiplies Σ x̂ */

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
                    uint8_t *group_levels = levels + (g - g0) * group * EQ_TILE_ROWS;
                    if (g + 1 == n_groups && last_width != group)
                        expand_group(block + planes_offset, bits, last_width, group_levels);
                    else
                        expand_group(block + planes_offset, bits, group, group_levels);
#pragma GCC unroll 8
                    for (int half = 0; half < 2; half++) {
                        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16 * half)));
                        __m256 bias;
                        if (type->symmetric)
                            bias = _mm256_mul_ps(scale, _mm256_set1_ps(offset - zero_point));
                        else
                            bias = _mm256_fmadd_ps(scale, _mm256_set1_ps(offset),
                                       _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + scale_bytes + 16 * half))));
                        _mm256_store_ps(scales[g - g0] + 8 * half, scale);
                        _mm256_store_ps(biases[g - g0] + 8 * half, bias);
                    }
                }
                /* at 8 bits one |l'| serves two vectors; below, one vector at a time keeps every
                 * accumulator in the 16 registers (measured: 2 at a time spills, ~10 % slower) */
                const size_t step = bits == 8 ? 2 : 1;
                for (size_t v = 0; v < n_vectors; v += step) {
                    const int vectors = n_vectors - v >= step ? (int)step : 1;
                    const eq_q8_acts x[2] = {
                        eq_q8_acts_at(in->prepared + (v0 + v) * in->stride, cols),
                        eq_q8_acts_at(in->prepared + (v0 + v + (size_t)vectors - 1) * in->stride, cols)};
                    float *const out[2] = {acc[v], acc[v + (size_t)vectors - 1]};
                    if (vectors == 2)
                        span_vectors(levels, scales, biases, x, 2, g0, g_end, bits, group, n_groups, last_width, out);
                    else
                        span_vectors(levels, scales, biases, x, 1, g0, g_end, bits, group, n_groups, last_width, out);
                }
            }
            for (size_t v = 0; v < n_vectors; v++)
                memcpy(y + (v0 + v) * y_stride + row0, acc[v], n_rows * sizeof(float));
        }
    }
}

void eq_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
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

#else   /* not x86: nothing here (x86/avx2.c's set is never available) */

typedef int eq_avx2_prefill_unused;

#endif
