/* x86/avx2_packed.c — int8 multiply-add decode kernels for the uniform packed family, set `avx2`.
 *
 * Same algorithm as scalar/packed.c (activations int8 per block of 32 with a float scale s_b, and
 * Σx̂ = s_b Σ xq per block for the min / zero-point term; per 16-row tile and block an int32 dot product of levels and int8 activations,
 * scaled per block in fp32, then per group by the fp16 scale, + min Σx or - zero_point scale Σx),
 * with vpmaddubsw (u8 x s8 -> pairs summed into s16) and vpmaddwd (pairs of s16 -> s32):
 *   - one 32-byte load of levels is 8 rows x 4 columns (4-bit: 8 rows x 8 columns, two nibbles),
 *     multiplied by the block's 4 activations broadcast to every row (vpbroadcastd);
 *   - 4, 5, 6 bits: levels <= 63, so a u8 x s8 pair is at most 2 x 63 x 127 = 16002: two quads
 *     (4-bit: all four of a block, 8 x 15 x 127 = 15240) add in s16 before one vpmaddwd;
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

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

/* ---- prepare: int8 activations per block of 32 ------------------------------------------------ */

/* One vector's prepared bytes (padded = cols rounded up to EQ_LARGEST_GROUP, zeros past cols):
 * int8 xq[padded], then per block of 32: float scale s_b, int32 Σ xq, float Σx̂ = s_b Σ xq. */
typedef struct int8_input {
    const int8_t *xq;
    const float *scales;
    const int32_t *xq_sums;
    const float *sums;
} int8_input;

static size_t padded_columns(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

static int8_input int8_input_at(const uint8_t *prepared, size_t cols)
{
    const size_t padded = padded_columns(cols), blocks = padded / BLOCK;
    const float *scales = (const float *)(const void *)(prepared + padded);
    return (int8_input){(const int8_t *)prepared, scales, (const int32_t *)(const void *)(scales + blocks),
                        scales + 2 * blocks};
}

size_t eq_packed_prepared_bytes_avx2(size_t cols)
{
    const size_t padded = padded_columns(cols);
    return padded + 3 * (padded / BLOCK) * sizeof(float);
}

void eq_packed_prepare_avx2(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = padded_columns(cols), blocks = padded / BLOCK;
    int8_t *xq = (int8_t *)out;
    float *scales = (float *)(void *)(out + padded), *sums = scales + 2 * blocks;
    int32_t *xq_sums = (int32_t *)(void *)(scales + blocks);
    for (size_t b = 0; b < blocks; b++) {
        float values[BLOCK] = {0}, largest = 0.0f;
        for (size_t i = 0; i < BLOCK && b * BLOCK + i < cols; i++)
            values[i] = x[b * BLOCK + i];
        for (int i = 0; i < BLOCK; i++)
            largest = fabsf(values[i]) > largest ? fabsf(values[i]) : largest;
        const float inv = largest > 0.0f ? 127.0f / largest : 0.0f;
        int32_t xq_sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            xq[b * BLOCK + (size_t)i] = (int8_t)lrintf(values[i] * inv);
            xq_sum += xq[b * BLOCK + (size_t)i];
        }
        scales[b] = largest / 127.0f;
        xq_sums[b] = xq_sum;
        sums[b] = scales[b] * (float)xq_sum;
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

static inline __m256i broadcast4(const int8_t *p)   /* 4 activations to every 32-bit lane */
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* *low, *high (8 x int32: rows 0-7, 8-15) = Σ over one block's 32 columns of q[r,k] xq[k];
 * levels: the block's first 64-byte quad, xq: its 32 activations. */
static inline __attribute__((always_inline)) void
block_dot(const uint8_t *levels, const int bits, const int8_t *xq, __m256i *low, __m256i *high)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 4) {        /* 4 quads of 8 columns: low nibbles columns 0-3, high 4-7 */
        const __m256i nibble = _mm256_set1_epi8(0x0f);
        __m256i sum_low = _mm256_setzero_si256(), sum_high = _mm256_setzero_si256();
        for (int j = 0; j < BLOCK / 8; j++) {
            const __m256i x_first = broadcast4(xq + 8 * j), x_second = broadcast4(xq + 8 * j + 4);
            const __m256i rows_low = _mm256_loadu_si256((const __m256i *)(levels + 64 * j));
            const __m256i rows_high = _mm256_loadu_si256((const __m256i *)(levels + 64 * j + 32));
            sum_low = _mm256_add_epi16(sum_low, _mm256_maddubs_epi16(_mm256_and_si256(rows_low, nibble), x_first));
            sum_low = _mm256_add_epi16(sum_low, _mm256_maddubs_epi16(
                _mm256_and_si256(_mm256_srli_epi16(rows_low, 4), nibble), x_second));
            sum_high = _mm256_add_epi16(sum_high, _mm256_maddubs_epi16(_mm256_and_si256(rows_high, nibble), x_first));
            sum_high = _mm256_add_epi16(sum_high, _mm256_maddubs_epi16(
                _mm256_and_si256(_mm256_srli_epi16(rows_high, 4), nibble), x_second));
        }
        *low = _mm256_madd_epi16(sum_low, ones);
        *high = _mm256_madd_epi16(sum_high, ones);
    } else if (bits <= 6) { /* 8 quads of 4 columns, levels <= 63: two quads per s16 sum */
        __m256i dot_low = _mm256_setzero_si256(), dot_high = _mm256_setzero_si256();
        for (int j = 0; j < BLOCK / 4; j += 2) {
            const __m256i x_first = broadcast4(xq + 4 * j), x_second = broadcast4(xq + 4 * j + 4);
            const __m256i *quads = (const __m256i *)(levels + 64 * j);
            __m256i pair_low = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_loadu_si256(quads), x_first),
                                                _mm256_maddubs_epi16(_mm256_loadu_si256(quads + 2), x_second));
            __m256i pair_high = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_loadu_si256(quads + 1), x_first),
                                                 _mm256_maddubs_epi16(_mm256_loadu_si256(quads + 3), x_second));
            dot_low = _mm256_add_epi32(dot_low, _mm256_madd_epi16(pair_low, ones));
            dot_high = _mm256_add_epi32(dot_high, _mm256_madd_epi16(pair_high, ones));
        }
        *low = dot_low;
        *high = dot_high;
    } else {                /* 7-8 bits: |q - 128| x (x with the sign of q - 128), pairs <= 32512 */
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        __m256i dot_low = _mm256_setzero_si256(), dot_high = _mm256_setzero_si256();
        for (int j = 0; j < BLOCK / 4; j++) {
            const __m256i x4 = broadcast4(xq + 4 * j);
            const __m256i w_low = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(levels + 64 * j)), flip);
            const __m256i w_high = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(levels + 64 * j + 32)), flip);
            dot_low = _mm256_add_epi32(dot_low, _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_abs_epi8(w_low), _mm256_sign_epi8(x4, w_low)), ones));
            dot_high = _mm256_add_epi32(dot_high, _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_abs_epi8(w_high), _mm256_sign_epi8(x4, w_high)), ones));
        }
        *low = dot_low;
        *high = dot_high;
    }
}

/* The kernel body, inlined per (bits, group) by eq_packed_gemm_avx2 so the block loops unroll. */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const size_t quad_cols = bits == 4 ? 8 : 4;                       /* columns per 64-byte quad */
    const float zero_point = (float)((1u << bits) - 1u) / 2.0f;

    for (size_t tile = 0; tile < n_tiles; tile++) {
        for (size_t v = 0; v < in->n; v++) {
            const int8_input x = int8_input_at(in->prepared + v * in->stride, cols);
            const uint8_t *block = data + tile * tile_bytes;
            __m256 acc_low = _mm256_setzero_ps(), acc_high = _mm256_setzero_ps();   /* rows 0-7, 8-15 */
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = g + 1 < n_groups ? group : eq_packed_group_cols(type, cols, g);
                const uint8_t *levels = block + header_bytes;
                __m256 dot_low = _mm256_setzero_ps(), dot_high = _mm256_setzero_ps();
                float sum_x = 0.0f;
                for (size_t c = 0, b = g * group / BLOCK; c < block_cols; c += BLOCK, b++) {
                    __m256i low, high;
                    block_dot(levels + c / quad_cols * 64, bits, x.xq + b * BLOCK, &low, &high);
                    if (bits > 6) {                                    /* Σ q x = Σ (q - 128) x + 128 Σ x */
                        const __m256i offset = _mm256_set1_epi32(128 * x.xq_sums[b]);
                        low = _mm256_add_epi32(low, offset);
                        high = _mm256_add_epi32(high, offset);
                    }
                    const __m256 scale = _mm256_set1_ps(x.scales[b]);
                    dot_low = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), scale, dot_low);
                    dot_high = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), scale, dot_high);
                    sum_x += x.sums[b];
                }
                const __m256 scale_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
                const __m256 scale_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
                if (type->symmetric) {
                    const __m256 offset = _mm256_set1_ps(zero_point * sum_x);
                    acc_low = _mm256_fmadd_ps(scale_low, _mm256_sub_ps(dot_low, offset), acc_low);
                    acc_high = _mm256_fmadd_ps(scale_high, _mm256_sub_ps(dot_high, offset), acc_high);
                } else {
                    const __m256 min_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
                    const __m256 min_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
                    const __m256 sum = _mm256_set1_ps(sum_x);
                    acc_low = _mm256_fmadd_ps(min_low, sum, _mm256_fmadd_ps(scale_low, dot_low, acc_low));
                    acc_high = _mm256_fmadd_ps(min_high, sum, _mm256_fmadd_ps(scale_high, dot_high, acc_high));
                }
                block += eq_packed_block_bytes(type, block_cols);
            }
            float out[EQ_TILE_ROWS];
            _mm256_storeu_ps(out, acc_low);
            _mm256_storeu_ps(out + 8, acc_high);
            const size_t row0 = tile * EQ_TILE_ROWS;
            const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, out, n_rows * sizeof(float));
        }
    }
}

void eq_packed_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
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

#else   /* not x86: nothing here (the avx2 set is never available) */

typedef int eq_avx2_packed_not_x86;   /* ISO C: a translation unit must declare something */

#endif
