/* x86/avx512.c — the kernel set for AVX-512 (F, BW, VL, VBMI + FMA, F16C): the avx2 LUT algorithm
 * on 512-bit registers, fp32 FMA for plain rows, masked tails.
 *
 * LUT (uniform bit-plane family), the same int16 tables and integer sums as x86/avx2.c, so the two
 * sets give the same bits:
 * prepare: for every group of 4 activations the 16 subset sums T[idx] = Σ_{bit i of idx} x[k0+i],
 * quantized to int16 with one scale per 64 activations (max |T| -> 32767), split into a low-byte
 * and a high-byte table (stored + 128, so both are unsigned). Stored so that one 64-byte load gives
 * the tables a 64-byte load of weight planes (4 chunks = 32 columns of 16 rows) needs:
 *     per 32 columns (quads 0..7), 256 bytes:
 *     low bytes  T(q0) T(q2) T(q4) T(q6) | T(q1) T(q3) T(q5) T(q7),  then high bytes likewise
 * Lane j of a plane load is chunk j (columns 8j..8j+7): its low nibbles index quad 2j, its high
 * nibbles quad 2j+1, and vpshufb looks up within each lane: 64 rows x 4 activations per instruction
 * and byte table.
 * gemm: per (tile, vector, group, 64-column unit), lookups are summed in int16 (maddubs adds a row's
 * low- and high-nibble lookups and weighs plane p by 2^(p - p0)), planes four at a time (per lane
 * at most 2 loads x 15 x 510 < 2^15), the high bytes' +128 removed; vpmaddwd makes 256 high + low
 * per row and lane in int32, a 4x4 transpose of 128-bit lanes adds the four chunks, leaving the 16
 * rows of the tile in one register: scaled by the table scale, then per group by the fp16 scale
 * (+ min x Σx, or - zero_point x Σx for symmetric types) in fp32, in the same order as avx2.
 * Why not vpermb: the file's nibbles are laid out for 16-entry tables per 128-bit lane, which
 * vpshufb serves in one instruction; a 64/128-entry vpermb/vpermi2b lookup needs the lane and
 * nibble folded into each index first (one more instruction per lookup register) and saves none of
 * the widening (unpack + maddubs + add), which is two thirds of the work (benchmarks/README.md).
 *
 * Everything here is compiled for AVX-512 by the pragmas (GCC's target, clang's attribute) and only
 * called after avx512_available() said the CPU and the OS have it; other translation units stay
 * portable. No prefill path here: the next set in the list that has one fills it.
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* cpuid: FMA, F16C, OSXSAVE (leaf 1 ECX bits 12, 29, 27); AVX512F, BW, VL (leaf 7 EBX bits 16, 30,
 * 31) and VBMI (leaf 7 ECX bit 1); and the OS saving the YMM, opmask and ZMM state (XCR0 bits 1, 2
 * and 5, 6, 7). */
static int avx512_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    int fma = (ecx >> 12) & 1, osxsave = (ecx >> 27) & 1, f16c = (ecx >> 29) & 1;
    if (!fma || !osxsave || !f16c)
        return 0;
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xE6u) != 0xE6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    int f = (ebx >> 16) & 1, bw = (ebx >> 30) & 1, vl = (ebx >> 31) & 1, vbmi = (ecx >> 1) & 1;
    return f && bw && vl && vbmi;
}

/* ---- prepare: int16 tables as two byte tables ----------------------------------------------- */

enum {
    EQ_LUT_UNIT = 64,            /* activations per table scale */
    EQ_LUT_BYTES_PER_COL = 8,    /* 16 two-byte entries per 4 activations */
    EQ_LUT_LOAD_COLS = 32,       /* columns of one 64-byte plane load (4 chunks) */
    QUADS_PER_UNIT = EQ_LUT_UNIT / 4
};

/* One vector's prepared bytes: (padded / 32, 256) byte tables, then padded / 64 float table
 * scales, then padded / 32 float sums of x; padded = cols rounded up to EQ_LARGEST_GROUP. */
typedef struct lut_input {
    uint8_t *tables;
    float *table_scales;
    float *sums;
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

static lut_input lut_input_at(uint8_t *prepared, size_t cols)
{
    size_t padded = padded_columns(cols);
    lut_input in = {prepared, (float *)(void *)(prepared + padded * EQ_LUT_BYTES_PER_COL), NULL};
    in.sums = in.table_scales + padded / EQ_LUT_UNIT;
    return in;
}

/* The 16 subset sums of a[0..3] (entry idx = Σ_{bit i of idx} a[i]), rounded as avx2 rounds them:
 * ((a0 + a1) + a2) for the low 8 entries, then + a3 for the high 8. */
static __m512 quad_table(const float a[4])
{
    const __m512 bit0 = _mm512_setr_ps(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
    const __m512 bit1 = _mm512_setr_ps(0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1);
    const __m512 bit2 = _mm512_setr_ps(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    __m512 t = _mm512_mul_ps(bit0, _mm512_set1_ps(a[0]));
    t = _mm512_fmadd_ps(bit1, _mm512_set1_ps(a[1]), t);
    t = _mm512_fmadd_ps(bit2, _mm512_set1_ps(a[2]), t);
    return _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(a[3]));
}

static void lut_prepare(const float *x, size_t cols, uint8_t *bytes)
{
    const size_t padded = padded_columns(cols);
    const lut_input prepared = lut_input_at(bytes, cols);
    for (size_t u0 = 0; u0 < padded; u0 += EQ_LUT_UNIT) {
        __m512 table[QUADS_PER_UNIT];
        float quad_sum[QUADS_PER_UNIT];
        __m512 max_abs = _mm512_setzero_ps();
        for (int q = 0; q < QUADS_PER_UNIT; q++) {
            float a[4];
            for (int i = 0; i < 4; i++) {
                size_t k = u0 + 4u * (size_t)q + (size_t)i;
                a[i] = k < cols ? x[k] : 0.0f;
            }
            table[q] = quad_table(a);
            max_abs = _mm512_max_ps(max_abs, _mm512_abs_ps(table[q]));
            quad_sum[q] = ((a[0] + a[1]) + a[2]) + a[3];
        }
        float largest = _mm512_reduce_max_ps(max_abs);
        prepared.table_scales[u0 / EQ_LUT_UNIT] = largest / 32767.0f;
        __m512 inv = _mm512_set1_ps(largest > 0.0f ? 32767.0f / largest : 0.0f);
        for (int half = 0; half < 2; half++) {
            float sum = 0.0f;
            for (int q = 8 * half; q < 8 * half + 8; q++)
                sum += quad_sum[q];
            prepared.sums[u0 / 32 + (size_t)half] = sum;
        }
        for (int q = 0; q < QUADS_PER_UNIT; q++) {
            /* quad q of the unit: load block q / 8, chunk (lane) (q % 8) / 2, odd table if q is odd */
            uint8_t *out = prepared.tables + (u0 + EQ_LUT_LOAD_COLS * (size_t)(q / 8)) * EQ_LUT_BYTES_PER_COL +
                           64 * (q % 2) + 16 * ((q % 8) / 2);
            __m512i values = _mm512_cvtps_epi32(_mm512_mul_ps(table[q], inv));   /* |values| <= 32767 */
            __m512i high = _mm512_add_epi32(_mm512_srai_epi32(values, 8), _mm512_set1_epi32(128));
            _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(values));          /* low bytes */
            _mm_storeu_si128((__m128i *)(out + 128), _mm512_cvtepi32_epi8(high));    /* 0..255 */
        }
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* The four 128-bit lanes of (rows 0-3 | 4-7 | 8-11 | 12-15) x lane sums added: in each of p, q, r, s
 * lane j holds chunk j's int32 sums of 4 rows (p rows 0-3, q 4-7, r 8-11, s 12-15); the result is
 * the 16 rows' totals in order. */
static inline __m512i sum_lanes_4x4(__m512i p, __m512i q, __m512i r, __m512i s)
{
    __m512i pq = _mm512_add_epi32(_mm512_shuffle_i32x4(p, q, 0x44), _mm512_shuffle_i32x4(p, q, 0xEE));
    __m512i rs = _mm512_add_epi32(_mm512_shuffle_i32x4(r, s, 0x44), _mm512_shuffle_i32x4(r, s, 0xEE));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(pq, rs, 0x88), _mm512_shuffle_i32x4(pq, rs, 0xDD));
}

/* int16 sums per lane of one byte table's lookups, rows 0-7 and 8-15 of a tile */
typedef struct lookup_sums {
    __m512i rows_low, rows_high;
} lookup_sums;

/* sums += 2^(p - p0) x (the table looked up at a row's low nibbles + at its high nibbles) */
static inline __attribute__((always_inline)) void
lookup_add(lookup_sums *sums, __m512i even_table, __m512i odd_table, __m512i low_nibbles,
           __m512i high_nibbles, __m512i weight)
{
    __m512i at_low = _mm512_shuffle_epi8(even_table, low_nibbles);
    __m512i at_high = _mm512_shuffle_epi8(odd_table, high_nibbles);
    sums->rows_low = _mm512_add_epi16(sums->rows_low,
                                      _mm512_maddubs_epi16(_mm512_unpacklo_epi8(at_low, at_high), weight));
    sums->rows_high = _mm512_add_epi16(sums->rows_high,
                                       _mm512_maddubs_epi16(_mm512_unpackhi_epi8(at_low, at_high), weight));
}

/* The 16 rows' int32 Σ (256 high + low) over the lanes, the high bytes' bias already removed. */
static inline __m512i combine_bytes(lookup_sums low, lookup_sums high)
{
    const __m512i byte_weights = _mm512_set1_epi32(0x01000001);   /* (1, 256) per int16 pair */
    __m512i p = _mm512_madd_epi16(_mm512_unpacklo_epi16(low.rows_low, high.rows_low), byte_weights);
    __m512i q = _mm512_madd_epi16(_mm512_unpackhi_epi16(low.rows_low, high.rows_low), byte_weights);
    __m512i r = _mm512_madd_epi16(_mm512_unpacklo_epi16(low.rows_high, high.rows_high), byte_weights);
    __m512i s = _mm512_madd_epi16(_mm512_unpackhi_epi16(low.rows_high, high.rows_high), byte_weights);
    return sum_lanes_4x4(p, q, r, s);
}

/* Σ_p 2^p Σ_k bit_p(q[r,k]) T-quantized over one unit of unit_cols columns, for the 16 rows */
static inline __attribute__((always_inline)) __m512i
unit_dot(const uint8_t *unit_tables, const uint8_t *unit_planes, size_t plane_bytes, const int bits,
         const size_t loads)
{
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512i total = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int p0 = 0; p0 < bits; p0 += 4) {
        lookup_sums low = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        lookup_sums high = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        const int p_end = bits < p0 + 4 ? bits : p0 + 4;
#pragma GCC unroll 2
        for (size_t c = 0; c < loads; c++) {
            const __m512i *t = (const __m512i *)(unit_tables + 256 * c);
            const __m512i low_even = _mm512_load_si512(t), low_odd = _mm512_load_si512(t + 1);
            const __m512i high_even = _mm512_load_si512(t + 2), high_odd = _mm512_load_si512(t + 3);
#pragma GCC unroll 4
            for (int p = p0; p < p_end; p++) {
                const __m512i weight = _mm512_set1_epi8((char)(1 << (p - p0)));
                __m512i packed = _mm512_loadu_si512(unit_planes + (size_t)p * plane_bytes + 64 * c);
                __m512i low_nibbles = _mm512_and_si512(packed, nibble);
                __m512i high_nibbles = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
                lookup_add(&high, high_even, high_odd, low_nibbles, high_nibbles, weight);
                lookup_add(&low, low_even, low_odd, low_nibbles, high_nibbles, weight);
            }
        }
        /* the high bytes carry +128: 2 lookups x 128 x 2^(p - p0) per plane and load */
        const __m512i bias = _mm512_set1_epi16((short)(256 * (int)loads * ((1 << (p_end - p0)) - 1)));
        high.rows_low = _mm512_sub_epi16(high.rows_low, bias);
        high.rows_high = _mm512_sub_epi16(high.rows_high, bias);
        total = _mm512_add_epi32(total, _mm512_sll_epi32(combine_bytes(low, high), _mm_cvtsi32_si128(p0)));
    }
    return total;
}

/* The kernel body, inlined once per (bits, group) by lut_gemm so that the plane and load loops have
 * constant trip counts and unroll. */
static inline __attribute__((always_inline)) void
lut_gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
              const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t block_bytes = eq_block_bytes(type);
    const size_t planes_offset = 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    const size_t plane_bytes = 2u * group;
    const size_t unit_cols = group < EQ_LUT_UNIT ? group : EQ_LUT_UNIT;
    const size_t units = group / unit_cols, loads = unit_cols / EQ_LUT_LOAD_COLS;
    const float zero_point = (float)((1u << bits) - 1u) / 2.0f;

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * n_groups * block_bytes;
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        const __mmask16 row_mask = (__mmask16)((1u << n_rows) - 1u);
        for (size_t v = 0; v < in->n; v++) {
            const lut_input prepared = lut_input_at((uint8_t *)in->prepared + v * in->stride, cols);
            __m512 acc = _mm512_setzero_ps();   /* (16,) y of this tile */
            const uint8_t *block = tile_data;
            for (size_t g = 0; g < n_groups; g++, block += block_bytes) {
                __m512 dot = _mm512_setzero_ps();
                for (size_t u = 0; u < units; u++) {
                    const size_t col0 = g * group + u * unit_cols;
                    __m512i total = unit_dot(prepared.tables + col0 * EQ_LUT_BYTES_PER_COL,
                                             block + planes_offset + u * unit_cols * 2u, plane_bytes, bits, loads);
                    __m512 table_scale = _mm512_set1_ps(prepared.table_scales[col0 / EQ_LUT_UNIT]);
                    dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), table_scale, dot);
                }
                float sum_x = 0.0f;
                for (size_t i = 0; i < group / 32; i++)
                    sum_x += prepared.sums[g * group / 32 + i];
                __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
                if (type->symmetric) {
                    __m512 offset = _mm512_set1_ps(zero_point * sum_x);
                    acc = _mm512_fmadd_ps(scale, _mm512_sub_ps(dot, offset), acc);
                } else {
                    __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
                    acc = _mm512_fmadd_ps(min, _mm512_set1_ps(sum_x), _mm512_fmadd_ps(scale, dot, acc));
                }
            }
            _mm512_mask_storeu_ps(y + v * y_stride + row0, row_mask, acc);
        }
    }
}

static void lut_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                     const eq_input *in, float *y, size_t y_stride)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): lut_gemm_body(type, data, rows, cols, in, y, y_stride, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
    default:   /* a type added to the table without a case here: correct, not unrolled */
        lut_gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

/* ---- plain f32 / f16 rows ------------------------------------------------------------------- */

/* 16 weights from column k of a row of `width`-byte floats, the lanes outside mask zero */
static inline __m512 load_plain(const uint8_t *w, size_t width, size_t k, __mmask16 mask)
{
    if (width == 4)
        return _mm512_maskz_loadu_ps(mask, w + 4 * k);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + 2 * k));
}

/* fp32 FMA dot products, each row reused for every vector; the last < 16 columns masked */
static void plain_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                       const eq_input *in, float *y, size_t y_stride)
{
    const size_t width = (size_t)type->bits / 8u, body = cols / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (cols - body)) - 1u);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *w = data + r * cols * width;
        for (size_t v = 0; v < in->n; v++) {
            const float *x = in->x + v * in->cols;
            __m512 acc = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps();
            size_t k = 0;
            for (; k + 32 <= body; k += 32) {
                acc = _mm512_fmadd_ps(load_plain(w, width, k, 0xFFFF), _mm512_loadu_ps(x + k), acc);
                acc2 = _mm512_fmadd_ps(load_plain(w, width, k + 16, 0xFFFF), _mm512_loadu_ps(x + k + 16), acc2);
            }
            if (k < body) {
                acc = _mm512_fmadd_ps(load_plain(w, width, k, 0xFFFF), _mm512_loadu_ps(x + k), acc);
                k += 16;
            }
            if (tail != 0)
                acc2 = _mm512_fmadd_ps(load_plain(w, width, k, tail), _mm512_maskz_loadu_ps(tail, x + k), acc2);
            y[v * y_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc, acc2));
        }
    }
}

/* ---- attention over an fp16 KV cache ------------------------------------------------------- */

static float dot_f16(const uint16_t *a, const float *b, size_t n)
{
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + i)), _mm512_maskz_loadu_ps(tail, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static void axpy_f16(float *y, float w, const uint16_t *x, size_t n)
{
    const __m512 weight = _mm512_set1_ps(w);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 values = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(weight, values, _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        __mmask16 tail = (__mmask16)((1u << (n - i)) - 1u);
        __m512 values = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, x + i));
        _mm512_mask_storeu_ps(y + i, tail, _mm512_fmadd_ps(weight, values, _mm512_maskz_loadu_ps(tail, y + i)));
    }
}

/* ---- the set -------------------------------------------------------------------------------- */

const eq_kernel_set eq_kernels_avx512 = {
    .isa = "avx512",
    .is_available = avx512_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = {.decode = {"float", "fp32 FMA dot products (AVX-512, masked tails)", NULL, NULL, plain_gemm}},
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: int16 tables of 4-activation subset sums, two vpshufb per lookup, 64 rows per instruction",
                       lut_prepared_bytes, lut_prepare, lut_gemm},
        },
    },
    .dot_f16 = dot_f16,
    .axpy_f16 = axpy_f16,
};

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86: the set exists but is never available */

#include "kernels.h"

static int avx512_available(void)
{
    return 0;
}

const eq_kernel_set eq_kernels_avx512 = {.isa = "avx512", .is_available = avx512_available};

#endif
