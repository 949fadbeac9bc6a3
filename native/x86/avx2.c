/* x86/avx2.c — the LUT kernel set for AVX2 (+ FMA, F16C): int16 tables looked up with pshufb; the
 * set's struct (its uniform packed family's multiply-add kernels are in x86/avx2_packed.c).
 *
 * prepare: for every group of 4 activations the 16 subset sums T[idx] = Σ_{bit i of idx} x[k0+i],
 * quantized to int16 with one scale per 64 activations (max |T| -> 32767) and split into a low-byte
 * table and a high-byte table (stored + 128, so both are unsigned): pshufb looks bytes up, and int8
 * tables alone (max |T| -> 127) cost 2.5 % perplexity at 8 bits on SmolLM2, more than the weights'
 * own error. Stored so that one 32-byte load gives the tables a 32-byte load of weight planes needs:
 *     per 16 columns (a chunk pair c, c+1), 128 bytes:
 *     low bytes  T(quad 0) T(quad 2) | T(quad 1) T(quad 3),  then high bytes in the same order
 * A plane load covers chunk c in its low 128-bit lane and chunk c+1 in its high lane; its low
 * nibbles index quads 0 and 2 of the 16 columns, its high nibbles quads 1 and 3, and pshufb looks
 * up within each lane: 32 rows x 4 activations per instruction and byte table.
 * gemm: per (tile, vector, group, 64-column unit: 32 for groups of 32 and the last 32 columns of a
 * partial last group), lookups are summed in int16 (maddubs adds a row's
 * low- and high-nibble lookups and weighs plane p by 2^(p - p0)), planes four at a time (per lane
 * at most 4 pairs x 15 x 510 < 2^15), the high bytes' +128 removed, then widened to int32 as
 * 256 high + low, scaled by the table scale, and per group by the fp16 scale (+ min x Σx, or
 * - zero_point x Σx for symmetric types) in fp32. Σx per group is exact (float), not from tables.
 * Each weight tile is read once per call and reused for every vector while it is in cache.
 * The loops over planes and chunk pairs are unrolled per (bits, group) (gemm_packed's switch),
 * and once more for the partial last group of a K that is not a multiple of G (64- and 32-column units).
 * That is the decode path; batches from 16 vectors (prompts) take x86/avx2_prefill.c's multiply-add
 * path (int16 activations, vpmaddwd), hooked in the set below.
 *
 * Set avx2-lut8 (opt-in: EDGEQ_ISA=avx2-lut8; a measurement of issue 10's "table precision"): the
 * same, except that types of 2-3 bits look up int8 tables, one pshufb per lookup. Its prepare
 * appends to the int16 layout int8 tables of the same subset sums (max |T| -> 127, one scale per
 * 64 activations), 64 bytes per 16 columns in the same quad order; its gemm sums a row's two
 * lookups per plane byte in int16 by maddubs (plane weight 2^p unsigned, entries signed), the
 * bound in unit_dot8. Each lookup is off by at most (1/2 + 2^-7) L / 127 instead of L / 32767
 * (native/tests/check_kernels.c). Wider types take avx2's int16 tables from the same bytes, and
 * every batch size takes the tables (no prefill path), so its perplexity is the tables' cost.
 *
 * Everything here is compiled for AVX2/FMA/F16C by the pragmas (GCC's target, clang's attribute)
 * and only called after avx2_available() said the CPU has them; other translation units stay
 * portable.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* cpuid: AVX2 (leaf 7 EBX bit 5), FMA and F16C (leaf 1 ECX bits 12, 29), and the OS saving the
 * YMM registers (OSXSAVE, ECX bit 27, then XCR0 bits 1-2). */
static int avx2_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    int fma = (ecx >> 12) & 1, osxsave = (ecx >> 27) & 1, f16c = (ecx >> 29) & 1;
    if (!fma || !osxsave || !f16c)
        return 0;
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 6u) != 6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ebx >> 5) & 1;
}

/* ---- prepare: int16 tables (and the avx2-lut8 set's int8 tables) --------------------------- */

enum {
    EQ_LUT_UNIT = 64,            /* activations per table scale */
    EQ_LUT_BYTES_PER_COL = 8,    /* 16 two-byte entries per 4 activations */
    EQ_LUT8_BYTES_PER_COL = 4,   /* 16 one-byte entries per 4 activations (avx2-lut8) */
    EQ_LUT8_MAX_BITS = 3,        /* avx2-lut8 looks up int8 tables for types of at most 3 bits */
    QUADS_PER_UNIT = EQ_LUT_UNIT / 4
};

static float horizontal_max(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* values = round(entries * inv) as int16 (|values| <= 32767) for entries 0..7 in `first`, 8..15
 * in `second`; stores their 16 low bytes at low_out and 16 high bytes + 128 (unsigned) at high_out */
static void quantize_table(__m256 first, __m256 second, __m256 inv, int8_t *low_out, int8_t *high_out)
{
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(first, inv));     /* round to nearest even */
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(second, inv));
    __m256i values = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);   /* 16 x int16 */
    __m256i bytes = _mm256_set1_epi16(0xff);
    __m256i low = _mm256_and_si256(values, bytes);
    __m256i high = _mm256_add_epi16(_mm256_srai_epi16(values, 8), _mm256_set1_epi16(128));   /* 0..255 */
    __m256i low_bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(low, low), 0xD8);
    __m256i high_bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(high, high), 0xD8);
    _mm_storeu_si128((__m128i *)low_out, _mm256_castsi256_si128(low_bytes));
    _mm_storeu_si128((__m128i *)high_out, _mm256_castsi256_si128(high_bytes));
}

/* the 16 entries round(entries * inv) as int8 (|entry| <= 127: inv = 127 / largest |entry|), in
 * order, at out: entries 0..7 in `lower`, 8..15 in `upper` */
static void quantize_table8(__m256 lower, __m256 upper, __m256 inv, int8_t *out)
{
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(lower, inv));     /* round to nearest even */
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(upper, inv));
    __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);   /* 0..7 | 8..15 */
    __m256i entries = _mm256_permute4x64_epi64(_mm256_packs_epi16(words, words), 0xD8);   /* 0..15 | again */
    _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(entries));
}

/* One vector's prepared bytes: (padded / 16, 128) int16 tables as byte tables, then padded / 64
 * float table scales, then padded / 32 float sums of x; padded = cols rounded up to
 * EQ_LARGEST_GROUP. The avx2-lut8 set's prepare appends, from the next 64-byte boundary,
 * (padded / 16, 64) int8 tables and padded / 64 float scales of those (tables8 and table_scales8;
 * NULL in the avx2 set's layout). */
typedef struct lut_input {
    int8_t *tables;
    float *table_scales;
    float *sums;
    int8_t *tables8;
    float *table_scales8;
} lut_input;

static size_t padded_columns(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

static size_t lut_prepared_bytes(size_t cols)
{
    size_t padded = padded_columns(cols);
    return padded * EQ_LUT_BYTES_PER_COL + (padded / EQ_LUT_UNIT + padded / 32) * sizeof(float);
}

static size_t lut8_offset(size_t cols)   /* where the int8 tables start: 64-byte aligned */
{
    return (lut_prepared_bytes(cols) + EQ_PREPARED_ALIGN - 1) / EQ_PREPARED_ALIGN * EQ_PREPARED_ALIGN;
}

static size_t lut8_prepared_bytes(size_t cols)
{
    size_t padded = padded_columns(cols);
    return lut8_offset(cols) + padded * EQ_LUT8_BYTES_PER_COL + padded / EQ_LUT_UNIT * sizeof(float);
}

static lut_input lut_input_at(uint8_t *prepared, size_t cols, const int int8)
{
    size_t padded = padded_columns(cols);
    lut_input in = {(int8_t *)prepared, (float *)(void *)(prepared + padded * EQ_LUT_BYTES_PER_COL), NULL, NULL, NULL};
    in.sums = in.table_scales + padded / EQ_LUT_UNIT;
    if (int8) {
        in.tables8 = (int8_t *)(prepared + lut8_offset(cols));
        in.table_scales8 = (float *)(void *)(prepared + lut8_offset(cols) + padded * EQ_LUT8_BYTES_PER_COL);
    }
    return in;
}

/* The tables of one vector: int16 always, int8 too when int8 (the avx2-lut8 layout). Both are
 * rounded from the same float subset sums, each with its own scale per 64 activations. */
static inline __attribute__((always_inline)) void
prepare_tables(const float *x, size_t cols, uint8_t *bytes, const int int8)
{
    const size_t padded = padded_columns(cols);
    const lut_input prepared = lut_input_at(bytes, cols, int8);
    const __m256 bit0 = _mm256_setr_ps(0, 1, 0, 1, 0, 1, 0, 1);
    const __m256 bit1 = _mm256_setr_ps(0, 0, 1, 1, 0, 0, 1, 1);
    const __m256 bit2 = _mm256_setr_ps(0, 0, 0, 0, 1, 1, 1, 1);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    {
        int8_t *tables = prepared.tables;
        float *scales = prepared.table_scales;
        float *sums = prepared.sums;
        for (size_t u0 = 0; u0 < padded; u0 += EQ_LUT_UNIT) {
            __m256 low[QUADS_PER_UNIT], high[QUADS_PER_UNIT];     /* entries 0..7, 8..15 */
            float quad_sum[QUADS_PER_UNIT];
            __m256 max_abs = _mm256_setzero_ps();
            for (int q = 0; q < QUADS_PER_UNIT; q++) {
                float a[4];
                for (int i = 0; i < 4; i++) {
                    size_t k = u0 + 4u * (size_t)q + (size_t)i;
                    a[i] = k < cols ? x[k] : 0.0f;
                }
                __m256 t = _mm256_mul_ps(bit0, _mm256_set1_ps(a[0]));
                t = _mm256_fmadd_ps(bit1, _mm256_set1_ps(a[1]), t);
                t = _mm256_fmadd_ps(bit2, _mm256_set1_ps(a[2]), t);
                low[q] = t;
                high[q] = _mm256_add_ps(t, _mm256_set1_ps(a[3]));
                max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, low[q]));
                max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, high[q]));
                quad_sum[q] = ((a[0] + a[1]) + a[2]) + a[3];
            }
            float largest = horizontal_max(max_abs);
            scales[u0 / EQ_LUT_UNIT] = largest / 32767.0f;
            __m256 inv = _mm256_set1_ps(largest > 0.0f ? 32767.0f / largest : 0.0f);
            for (int half = 0; half < 2; half++) {
                float sum = 0.0f;
                for (int q = 8 * half; q < 8 * half + 8; q++)
                    sum += quad_sum[q];
                sums[u0 / 32 + (size_t)half] = sum;
            }
            for (int q = 0; q < QUADS_PER_UNIT; q++) {
                int within = q % 4, slot = (within & 1) * 2 + (within >> 1);   /* 0 2 1 3 order */
                int8_t *out = tables + (u0 + 16u * (size_t)(q / 4)) * EQ_LUT_BYTES_PER_COL + 16 * slot;
                quantize_table(low[q], high[q], inv, out, out + 64);
            }
            if (int8) {   /* the same layout with one byte per entry: 64 bytes per 16 columns */
                prepared.table_scales8[u0 / EQ_LUT_UNIT] = largest / 127.0f;
                __m256 inv8 = _mm256_set1_ps(largest > 0.0f ? 127.0f / largest : 0.0f);
                for (int q = 0; q < QUADS_PER_UNIT; q++) {
                    int within = q % 4, slot = (within & 1) * 2 + (within >> 1);
                    quantize_table8(low[q], high[q], inv8,
                                    prepared.tables8 + (u0 + 16u * (size_t)(q / 4)) * EQ_LUT8_BYTES_PER_COL + 16 * slot);
                }
            }
        }
    }
}

static void lut_prepare(const float *x, size_t cols, uint8_t *bytes)
{
    prepare_tables(x, cols, bytes, 0);
}

static void lut8_prepare(const float *x, size_t cols, uint8_t *bytes)
{
    prepare_tables(x, cols, bytes, 1);
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* *total_low, *total_high (rows 0-7, 8-15; int32) = Σ_p 2^p Σ_k bit_p[r, k] T[k] in table units, over
 * one unit of 16 * pairs columns (pairs = 4: a whole 64-column unit, 2: 32 columns).
 *   planes  (bits, plane_bytes) the unit's first plane bytes in each of the group's planes
 *   tables  the unit's int16 tables, 128 bytes per 16 columns (prepare's layout) */
static inline __attribute__((always_inline)) void
unit_dot(const uint8_t *planes, size_t plane_bytes, const int8_t *tables, const int bits, const size_t pairs,
         __m256i *total_low, __m256i *total_high)
{
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    *total_low = _mm256_setzero_si256();
    *total_high = _mm256_setzero_si256();
EQ_UNROLL(2)
    for (int p0 = 0; p0 < bits; p0 += 4) {
        /* int16 sums of rows 0-7 (_a) and 8-15 (_b) per lane (lanes: even/odd chunks), from the
         * high-byte (hi_) and low-byte (lo_) tables; maddubs weighs plane p by 2^(p - p0) as it
         * adds a row's two lookups (both byte tables unsigned, so the weight can be its signed
         * memory operand) */
        __m256i hi_a = _mm256_setzero_si256(), hi_b = _mm256_setzero_si256();
        __m256i lo_a = _mm256_setzero_si256(), lo_b = _mm256_setzero_si256();
        const int p_end = bits < p0 + 4 ? bits : p0 + 4;
EQ_UNROLL(4)
        for (size_t c = 0; c < pairs; c++) {
            const __m256i *t = (const __m256i *)(tables + 128 * c);
            const __m256i low_even = _mm256_load_si256(t), low_odd = _mm256_load_si256(t + 1);
            const __m256i high_even = _mm256_load_si256(t + 2), high_odd = _mm256_load_si256(t + 3);
EQ_UNROLL(4)
            for (int p = p0; p < p_end; p++) {
                const __m256i weight = _mm256_set1_epi8((char)(1 << (p - p0)));
                __m256i packed = _mm256_loadu_si256((const __m256i *)(planes + (size_t)p * plane_bytes + 32 * c));
                __m256i lo = _mm256_and_si256(packed, nibble);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                __m256i high_lo = _mm256_shuffle_epi8(high_even, lo);
                __m256i high_hi = _mm256_shuffle_epi8(high_odd, hi);
                hi_a = _mm256_add_epi16(hi_a, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(high_lo, high_hi), weight));
                hi_b = _mm256_add_epi16(hi_b, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(high_lo, high_hi), weight));
                __m256i low_lo = _mm256_shuffle_epi8(low_even, lo);
                __m256i low_hi = _mm256_shuffle_epi8(low_odd, hi);
                lo_a = _mm256_add_epi16(lo_a, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(low_lo, low_hi), weight));
                lo_b = _mm256_add_epi16(lo_b, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(low_lo, low_hi), weight));
            }
        }
        /* the high bytes carry +128: 2 lookups x 128 x 2^(p - p0) per plane and pair */
        const __m256i bias = _mm256_set1_epi16((short)(256 * (int)pairs * ((1 << (p_end - p0)) - 1)));
        hi_a = _mm256_sub_epi16(hi_a, bias);
        hi_b = _mm256_sub_epi16(hi_b, bias);
        __m256i sum_a = _mm256_add_epi32(
            _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(hi_a), _mm256_extracti128_si256(hi_a, 1))), 8),
            _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo_a)), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo_a, 1))));
        __m256i sum_b = _mm256_add_epi32(
            _mm256_slli_epi32(_mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(hi_b), _mm256_extracti128_si256(hi_b, 1))), 8),
            _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo_b)), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo_b, 1))));
        __m128i shift = _mm_cvtsi32_si128(p0);
        *total_low = _mm256_add_epi32(*total_low, _mm256_sll_epi32(sum_a, shift));
        *total_high = _mm256_add_epi32(*total_high, _mm256_sll_epi32(sum_b, shift));
    }
}

/* The same over int8 tables (avx2-lut8, bits <= 4; used for bits <= EQ_LUT8_MAX_BITS): one
 * pshufb per lookup instead of two.
 *   tables  the unit's int8 tables, 64 bytes per 16 columns: T(quad 0) T(quad 2) | T(quad 1) T(quad 3)
 * Per plane and 16 columns: a row's low- and high-nibble lookups (signed bytes, |entry| <= 127) are
 * interleaved and added by maddubs with the plane's weight 2^p as its unsigned operand, into int16
 * sums of rows 0-7 (_a) and 8-15 (_b) per lane (even / odd chunk of 8 columns). No overflow: per
 * lane |sum| <= pairs x Σ_p 2^p x 2 x 127 <= 4 x 15 x 254 = 15240 at 4 bits (7112 at 3), and the
 * two lanes added, 30480 < 32767 (the harness's equal-activation cases hold every entry at 127,
 * its all-levels-maximal cases every weight at 2^b - 1). */
static inline __attribute__((always_inline)) void
unit_dot8(const uint8_t *planes, size_t plane_bytes, const int8_t *tables, const int bits, const size_t pairs,
          __m256i *total_low, __m256i *total_high)
{
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    __m256i sum_a = _mm256_setzero_si256(), sum_b = _mm256_setzero_si256();
EQ_UNROLL(4)
    for (size_t c = 0; c < pairs; c++) {
        const __m256i *t = (const __m256i *)(tables + 64 * c);
        const __m256i even = _mm256_load_si256(t), odd = _mm256_load_si256(t + 1);
EQ_UNROLL(4)
        for (int p = 0; p < bits; p++) {
            const __m256i weight = _mm256_set1_epi8((char)(1 << p));
            __m256i packed = _mm256_loadu_si256((const __m256i *)(planes + (size_t)p * plane_bytes + 32 * c));
            __m256i from_low = _mm256_shuffle_epi8(even, _mm256_and_si256(packed, nibble));
            __m256i from_high = _mm256_shuffle_epi8(odd, _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble));
            sum_a = _mm256_add_epi16(sum_a, _mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(from_low, from_high)));
            sum_b = _mm256_add_epi16(sum_b, _mm256_maddubs_epi16(weight, _mm256_unpackhi_epi8(from_low, from_high)));
        }
    }
    *total_low = _mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(sum_a), _mm256_extracti128_si256(sum_a, 1)));
    *total_high = _mm256_cvtepi16_epi32(_mm_add_epi16(_mm256_castsi256_si128(sum_b), _mm256_extracti128_si256(sum_b, 1)));
}

/* *acc_low, *acc_high (rows 0-7, 8-15) += the group's contribution to W x: its planes' dot products
 * with the tables, in units of 64 columns (32 for a 32-column group or tail) each scaled by its table
 * scale, then the group's fp16 scales (+ min x Σx, or - zero_point x Σx for symmetric types).
 *   block  the group's block of `width` stored columns (G, or a partial last group's, a multiple of
 *          32) starting at column col0 */
static inline __attribute__((always_inline)) void
group_dot(const eq_qtype_traits *type, const uint8_t *block, const size_t width, size_t col0,
          const lut_input *prepared, const int bits, const int int8, const float zero_point,
          __m256 *acc_low, __m256 *acc_high)
{
    const uint8_t *planes = block + 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    const float *table_scales = int8 ? prepared->table_scales8 : prepared->table_scales;
    const float *sums = prepared->sums;
    __m256 dot_low = _mm256_setzero_ps(), dot_high = _mm256_setzero_ps();
    for (size_t u0 = 0; u0 < width; u0 += EQ_LUT_UNIT) {
        const size_t pairs = width - u0 >= EQ_LUT_UNIT ? EQ_LUT_UNIT / 16 : 2;   /* 64 or 32 columns */
        __m256i total_low, total_high;
        if (int8 && pairs == EQ_LUT_UNIT / 16)
            unit_dot8(planes + 2u * u0, 2u * width, prepared->tables8 + (col0 + u0) * EQ_LUT8_BYTES_PER_COL,
                      bits, EQ_LUT_UNIT / 16, &total_low, &total_high);
        else if (int8)
            unit_dot8(planes + 2u * u0, 2u * width, prepared->tables8 + (col0 + u0) * EQ_LUT8_BYTES_PER_COL,
                      bits, 2, &total_low, &total_high);
        else if (pairs == EQ_LUT_UNIT / 16)
            unit_dot(planes + 2u * u0, 2u * width, prepared->tables + (col0 + u0) * EQ_LUT_BYTES_PER_COL,
                     bits, EQ_LUT_UNIT / 16, &total_low, &total_high);
        else
            unit_dot(planes + 2u * u0, 2u * width, prepared->tables + (col0 + u0) * EQ_LUT_BYTES_PER_COL,
                     bits, 2, &total_low, &total_high);
        __m256 table_scale = _mm256_set1_ps(table_scales[(col0 + u0) / EQ_LUT_UNIT]);
        dot_low = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total_low), table_scale, dot_low);
        dot_high = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total_high), table_scale, dot_high);
    }
    float sum_x = 0.0f;
    for (size_t i = 0; i < width / 32; i++)
        sum_x += sums[col0 / 32 + i];
    __m256 scale_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)block));
    __m256 scale_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16)));
    if (type->symmetric) {
        __m256 offset = _mm256_set1_ps(zero_point * sum_x);
        *acc_low = _mm256_fmadd_ps(scale_low, _mm256_sub_ps(dot_low, offset), *acc_low);
        *acc_high = _mm256_fmadd_ps(scale_high, _mm256_sub_ps(dot_high, offset), *acc_high);
    } else {
        __m256 min_low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32)));
        __m256 min_high = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 48)));
        __m256 sum = _mm256_set1_ps(sum_x);
        *acc_low = _mm256_fmadd_ps(min_low, sum, _mm256_fmadd_ps(scale_low, dot_low, *acc_low));
        *acc_high = _mm256_fmadd_ps(min_high, sum, _mm256_fmadd_ps(scale_high, dot_high, *acc_high));
    }
}

/* The kernel body, inlined once per (bits, group, table width) by lut_gemm / lut8_gemm so that the
 * plane and chunk loops of whole groups have constant trip counts and unroll; a partial last group
 * (its stored width known only at run time) goes through the same steps in units of 64 and 32
 * columns. int8: the avx2-lut8 layout's int8 tables, else the int16 ones. */
static inline __attribute__((always_inline)) void
gemm_packed_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group,
                 const int int8)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_full = cols / group;                           /* whole groups, then ... */
    const size_t last_width = cols % group ? eq_last_group_cols(type, cols) : 0;   /* ... a partial one */
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const float zero_point = eq_zero_point(type);                 /* once per call, not per group */
    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * tile_bytes;
        for (size_t v = 0; v < in->n; v++) {
            const lut_input prepared = lut_input_at((uint8_t *)in->prepared + v * in->stride, cols, int8);
            __m256 acc_low = _mm256_setzero_ps(), acc_high = _mm256_setzero_ps();   /* rows 0-7, 8-15 */
            const uint8_t *block = tile_data;
            for (size_t g = 0; g < n_full; g++, block += block_bytes) {
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, block_bytes);
                group_dot(type, block, group, g * group, &prepared, bits, int8, zero_point, &acc_low, &acc_high);
            }
            if (last_width)
                group_dot(type, block, last_width, n_full * group, &prepared, bits, int8, zero_point,
                          &acc_low, &acc_high);
            float out[EQ_TILE_ROWS];
            _mm256_storeu_ps(out, acc_low);
            _mm256_storeu_ps(out + 8, acc_high);
            size_t row0 = tile * EQ_TILE_ROWS;
            size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, out, n_rows * sizeof(float));
        }
    }
}

/* (bits, group) -> its unrolled body; the default case (a type added to the table without a case
 * here, or every type in EQ_KERNELS_GENERIC builds) is correct, not unrolled */
#define BODY_CASE(b, g, int8) \
    case (b) * 1000 + (g): gemm_packed_body(type, data, rows, cols, in, y, y_stride, (b), (g), (int8)); return;
#define BODY_CASES(b, int8) BODY_CASE(b, 32, int8) BODY_CASE(b, 64, int8) BODY_CASE(b, 128, int8)

static void lut_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                     const eq_input *in, float *y, size_t y_stride)
{
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2, 0) BODY_CASES(3, 0) BODY_CASES(4, 0) BODY_CASES(5, 0) BODY_CASES(6, 0) BODY_CASES(8, 0)
#endif
    default:
        gemm_packed_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group, 0);
    }
}

/* avx2-lut8: int8 tables for types of at most EQ_LUT8_MAX_BITS bits; wider types read the int16
 * tables at the start of the same prepared bytes, exactly as lut_gemm (the same bits as avx2) */
static void lut8_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                      const eq_input *in, float *y, size_t y_stride)
{
    if (type->bits > EQ_LUT8_MAX_BITS) {
        lut_gemm(type, data, rows, cols, in, y, y_stride);
        return;
    }
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC
    BODY_CASES(2, 1) BODY_CASES(3, 1)
#endif
    default:
        gemm_packed_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group, 1);
    }
}
#undef BODY_CASES
#undef BODY_CASE

static float horizontal_sum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* plain f32 / f16 rows: fp32 FMA dot products, each row reused for every vector */
static void plain_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                       const eq_input *in, float *y, size_t y_stride)
{
    const size_t width = (size_t)type->bits / 8u, body = cols / 8 * 8;
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *w = data + r * cols * width;
        for (size_t v = 0; v < in->n; v++) {
            const float *x = in->x + v * in->cols;
            __m256 acc = _mm256_setzero_ps();
            for (size_t k = 0; k < body; k += 8) {
                __m256 wv = width == 4 ? _mm256_loadu_ps((const float *)(w + 4 * k))
                                       : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * k)));
                acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + k), acc);
            }
            float dot = horizontal_sum(acc);
            for (size_t k = body; k < cols; k++)
                dot += (width == 4 ? eq_read_f32le(w + 4 * k) : eq_read_f16le(w + 2 * k)) * x[k];
            y[v * y_stride + r] = dot;
        }
    }
}

/* ---- attention over an fp16 KV cache ------------------------------------------------------- */

/* rows four at a time (b loaded once for the four), each summed exactly as a row alone */
static void dot_f16(const uint16_t *a, size_t stride, size_t n_rows, const float *b, size_t n, float *out)
{
    size_t r = 0;
    for (; r + 4 <= n_rows; r += 4, a += 4 * stride) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 q = _mm256_loadu_ps(b + i);
            acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), q, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + stride + i))), q, acc1);
            acc2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + 2 * stride + i))), q, acc2);
            acc3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + 3 * stride + i))), q, acc3);
        }
        float dots[4] = {horizontal_sum(acc0), horizontal_sum(acc1), horizontal_sum(acc2), horizontal_sum(acc3)};
        for (int j = 0; j < 4; j++) {
            for (size_t k = i; k < n; k++)
                dots[j] += eq_fp16_to_fp32(a[(size_t)j * stride + k]) * b[k];
            out[r + (size_t)j] = dots[j];
        }
    }
    for (; r < n_rows; r++, a += stride) {
        __m256 acc = _mm256_setzero_ps();
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), acc);
        float dot = horizontal_sum(acc);
        for (; i < n; i++)
            dot += eq_fp16_to_fp32(a[i]) * b[i];
        out[r] = dot;
    }
}

/* y in registers, 32 values at a time, while every row adds to them */
static void axpy_f16(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows, size_t n)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 y0 = _mm256_loadu_ps(y + i), y1 = _mm256_loadu_ps(y + i + 8);
        __m256 y2 = _mm256_loadu_ps(y + i + 16), y3 = _mm256_loadu_ps(y + i + 24);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride) {
            const __m256 weight = _mm256_set1_ps(w[r]);
            y0 = _mm256_fmadd_ps(weight, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)row)), y0);
            y1 = _mm256_fmadd_ps(weight, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 8))), y1);
            y2 = _mm256_fmadd_ps(weight, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 16))), y2);
            y3 = _mm256_fmadd_ps(weight, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 24))), y3);
        }
        _mm256_storeu_ps(y + i, y0);
        _mm256_storeu_ps(y + i + 8, y1);
        _mm256_storeu_ps(y + i + 16, y2);
        _mm256_storeu_ps(y + i + 24, y3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 sum = _mm256_loadu_ps(y + i);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride)
            sum = _mm256_fmadd_ps(_mm256_set1_ps(w[r]), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)row)), sum);
        _mm256_storeu_ps(y + i, sum);
    }
    for (; i < n; i++) {
        float sum = y[i];
        for (size_t r = 0; r < n_rows; r++)
            sum += w[r] * eq_fp16_to_fp32(x[r * stride + i]);
        y[i] = sum;
    }
}

/* F16C's conversion with the rounding given in the instruction (nearest even, whatever MXCSR says):
 * the value eq_fp32_to_fp16 gives, NaN payloads included */
enum { NEAREST = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC };   /* an immediate (clang wants a constant) */

static void to_f16(const float *x, size_t n, uint16_t *out)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), NEAREST));
    for (; i < n; i++)
        out[i] = _cvtss_sh(x[i], NEAREST);
}

/* kernels.h's e^x steps, eight at a time (max_ps returns its second operand for a NaN: EQ_EXP_LOW,
 * as ref's clamp; the NaN itself is put back at the end) */
static inline __m256 exp8(__m256 v)
{
    __m256 c = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(EQ_EXP_LOW)), _mm256_set1_ps(EQ_EXP_HIGH));
    const __m256 rounder = _mm256_set1_ps(EQ_EXP_ROUNDER);
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(c, _mm256_set1_ps(EQ_EXP_LOG2E)), rounder);
    const __m256 k = _mm256_sub_ps(t, rounder);
    const __m256i exponent = _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4b400000)),
                                              _mm256_set1_epi32(127));
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(exponent, 23));
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(c, _mm256_mul_ps(k, _mm256_set1_ps(EQ_EXP_LN2_HIGH))),
                                   _mm256_mul_ps(k, _mm256_set1_ps(EQ_EXP_LN2_LOW)));
    __m256 p = _mm256_set1_ps(EQ_EXP_C5);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EQ_EXP_C0));
    __m256 e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
    e = _mm256_mul_ps(e, scale);
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(v, _mm256_set1_ps(EQ_EXP_HIGH), _CMP_GT_OQ));
    e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(v, _mm256_set1_ps(EQ_EXP_LOW), _CMP_LT_OQ));
    return _mm256_blendv_ps(e, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

static void exp_f32(const float *x, float *y, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {   /* the tail through the same steps */
        float rest[8] = {0};
        memcpy(rest, x + i, (n - i) * sizeof *x);
        _mm256_storeu_ps(rest, exp8(_mm256_loadu_ps(rest)));
        memcpy(y + i, rest, (n - i) * sizeof *y);
    }
}

/* ---- attention over an int8 KV cache (layout in kernels.h) --------------------------------- */
/* scales converted by F16C (_cvtsh_ss: the value eq_fp16_to_fp32 gives, without the call) */

/* 8 int8 levels as floats */
static inline __m256 load_q8x8(const int8_t *q)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

static float dot_q8(const int8_t *a, const uint16_t *scales, const float *b, size_t n)
{
    __m256 acc = _mm256_setzero_ps();
    float rest = 0.0f;
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n, i = begin;
        float scale = _cvtsh_ss(scales[block]);
        __m256 sum = _mm256_setzero_ps();
        for (; i + 8 <= end; i += 8)
            sum = _mm256_fmadd_ps(load_q8x8(a + i), _mm256_loadu_ps(b + i), sum);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), sum, acc);
        float tail = 0.0f;
        for (; i < end; i++)
            tail += (float)a[i] * b[i];
        rest += scale * tail;
    }
    return horizontal_sum(acc) + rest;
}

static void axpy_q8(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n, i = begin;
        float weight = w * _cvtsh_ss(scales[block]);
        __m256 weights = _mm256_set1_ps(weight);
        for (; i + 8 <= end; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(weights, load_q8x8(x + i), _mm256_loadu_ps(y + i)));
        for (; i < end; i++)
            y[i] += weight * (float)x[i];
    }
}

/* ---- attention over an int4 value cache (layout in kernels.h) ------------------------------ */

/* 16 int4 levels from 8 bytes (value i in byte i / 2, low nibble first, stored + 8) as int8, in order */
static inline __m128i load_q4x16(const uint8_t *x)
{
    const __m128i nibble = _mm_set1_epi8(15);
    __m128i bytes = _mm_loadl_epi64((const __m128i *)x);
    __m128i low = _mm_and_si128(bytes, nibble), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
    return _mm_sub_epi8(_mm_unpacklo_epi8(low, high), _mm_set1_epi8(8));
}

static void axpy_q4(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n, i = begin;
        float weight = w * _cvtsh_ss(scales[block]);
        __m256 weights = _mm256_set1_ps(weight);
        for (; i + 16 <= end; i += 16) {   /* i even: values i .. i + 15 are bytes i / 2 .. i / 2 + 7 */
            __m128i levels = load_q4x16(x + i / 2);
            __m256 first = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(levels));
            __m256 second = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(levels, 8)));
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(weights, first, _mm256_loadu_ps(y + i)));
            _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(weights, second, _mm256_loadu_ps(y + i + 8)));
        }
        for (; i < end; i++)
            y[i] += weight * (float)(((x[i / 2] >> (4 * (i % 2))) & 15) - 8);
    }
}

/* ---- the sets ------------------------------------------------------------------------------- */

/* what avx2 and avx2-lut8 share: every family but the bit-plane decode path, and the attention helpers */
#define AVX2_PLAIN_KERNELS {.decode = {"float", "fp32 FMA dot products (AVX2)", NULL, NULL, plain_gemm}}
#define AVX2_PACKED_KERNELS {   /* kernels in x86/avx2_packed.c */ \
        .decode = {"multiply-add", "int8 multiply-add: activations int8 per 32, vpmaddubsw + vpmaddwd", \
                   eq_packed_prepared_bytes_avx2, eq_packed_prepare_avx2, eq_packed_gemm_avx2}, \
        /* the same int8 activations and float steps, 4 vectors per load of a quad: bit-identical per vector */ \
        .prefill = {"multiply-add", "int8 multiply-add: activations int8 per 32, vpmaddubsw + vpmaddwd, 4 vectors per quad load", \
                    eq_packed_prepared_bytes_avx2, eq_packed_prepare_avx2, eq_packed_prefill_gemm_avx2}, \
        .prefill_from = 4, \
    }
#define AVX2_CODEBOOK_KERNELS {   /* kernels in x86/avx2_codebook.c */ \
        .decode = {"multiply-add", "int8 multiply-add: index -> level by pshufb, activations int8 per 32, vpmaddubsw + vpmaddwd", \
                   eq_packed_prepared_bytes_avx2, eq_packed_prepare_avx2, eq_codebook_gemm_avx2}, \
        .prefill = {"multiply-add", "int8 multiply-add: index -> level by pshufb, vpmaddubsw + vpmaddwd, 4 vectors per quad load", \
                    eq_packed_prepared_bytes_avx2, eq_packed_prepare_avx2, eq_codebook_prefill_gemm_avx2}, \
        .prefill_from = 4, \
    }
#define AVX2_ATTENTION_HELPERS \
    .dot_f16 = dot_f16, .axpy_f16 = axpy_f16, .to_f16 = to_f16, .exp = exp_f32, .dot_q8 = dot_q8, .axpy_q8 = axpy_q8, .axpy_q4 = axpy_q4

const eq_kernel_set eq_kernels_avx2 = {
    .isa = "avx2",
    .is_available = avx2_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = AVX2_PLAIN_KERNELS,
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: int16 tables of 4-activation subset sums, two pshufb per lookup",
                       lut_prepared_bytes, lut_prepare, lut_gemm},
            /* prompts (batches from 16: below it LUT is as fast or faster at 2-4 bits, measured in
             * benchmarks/README.md "Prefill"): int16 activations, as accurate as the LUT tables */
            .prefill = {"multiply-add", "multiply-add: int16 activations per 32, int16 levels expanded once per tile, vpmaddwd",
                        eq_prefill_prepared_bytes_avx2, eq_prefill_prepare_avx2, eq_prefill_gemm_avx2},
            .prefill_from = 16,
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = AVX2_PACKED_KERNELS,
        [EQ_QFAMILY_CODEBOOK] = AVX2_CODEBOOK_KERNELS,
    },
    AVX2_ATTENTION_HELPERS,
};

/* avx2-lut8: avx2 with int8 tables (one pshufb per lookup) for bit-plane types of 2-3 bits, for
 * measuring them against avx2's int16 tables in one build (benchmarks/README.md "Int8 LUT tables at
 * 2-3 bits"). Listed after avx2, so never chosen unless EDGEQ_ISA=avx2-lut8 names it. No prefill
 * path: every batch of a bit-plane type takes the tables, so `edgeq perplexity` (batches of 64)
 * measures what they cost. */
const eq_kernel_set eq_kernels_avx2_lut8 = {
    .isa = "avx2-lut8",
    .is_available = avx2_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = AVX2_PLAIN_KERNELS,
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: int8 tables (one pshufb per lookup) at 2-3 bits, avx2's int16 tables above; every batch size",
                       lut8_prepared_bytes, lut8_prepare, lut8_gemm},
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = AVX2_PACKED_KERNELS,
        [EQ_QFAMILY_CODEBOOK] = AVX2_CODEBOOK_KERNELS,
    },
    AVX2_ATTENTION_HELPERS,
};

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: the set exists but is never available */

#include "kernels.h"

static int avx2_available(void)
{
    return 0;
}

const eq_kernel_set eq_kernels_avx2 = {.isa = "avx2", .is_available = avx2_available};
const eq_kernel_set eq_kernels_avx2_lut8 = {.isa = "avx2-lut8", .is_available = avx2_available};

#endif
