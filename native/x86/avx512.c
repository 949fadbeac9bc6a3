/* x86/avx512.c — the kernel set for AVX-512 (F, BW, VL, VBMI, VNNI + FMA, F16C): LUT lookups with
 * vpermb from 64-entry tables summed by vpdpbusd, fp32 FMA for plain rows, masked tails.
 *
 * LUT (uniform bit-plane family), the same int16 tables and integer sums as x86/avx2.c, so the two
 * sets give the same bits:
 * prepare: for every group of 4 activations (a quad) the 16 subset sums T[idx] = Σ_{bit i of idx}
 * x[k0+i], quantized to int16 with one scale per 64 activations (max |T| -> 32767), split into a
 * low-byte and a high-byte table (stored + 128, so both are unsigned). Per 32 columns (quads 0..7),
 * 256 bytes: low bytes T(q0) T(q1) T(q2) T(q3) | T(q4) .. T(q7), then high bytes likewise: each
 * 64 bytes is one vpermb table of the 4 quads of two chunks.
 * gemm: a 64-byte plane load holds chunks 0..3 (columns 8c..8c+7) of the tile's 16 rows. vpermb
 * gathers them so that each qword holds two rows' four bytes, vpmultishiftqb cuts out a row's 4
 * nibbles of chunks (0, 1) (quads 0..3) and vpternlogd puts each nibble's quad in bits 4-5: one
 * 64-entry vpermb lookup per byte table then gives 16 rows x 4 quads, and vpdpbusd adds a row's 4
 * lookups, weighted 2^(p - p0), straight into its int32 sum; chunks (2, 3) likewise. Planes up to 7 at a time
 * (int8 weights <= 64), the high bytes' +128 removed, 256 high + low per row; no widening or lane
 * reduction is left (the avx2 algorithm on 512 bits, which kept them, took 1.3x the time and 1.8x
 * the instructions: benchmarks/README.md). Then per 64-column unit the table scale, per group the
 * fp16 scale (+ min x Σx, or - zero_point x Σx for symmetric types) in fp32, in avx2's order; a
 * partial last group (stored in a multiple of 32 columns) runs units of 64 and 32 columns.
 *
 * Everything here is compiled for AVX-512 by the pragmas (GCC's target, clang's attribute) and only
 * called after avx512_available() said the CPU and the OS have it; other translation units stay
 * portable. Prefill (batches from 16 vectors) is x86/avx512_prefill.c's multiply-add path: int16
 * activations, vpdpwssd; measured in benchmarks/README.md "Prefill".
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* cpuid: FMA, F16C, OSXSAVE (leaf 1 ECX bits 12, 29, 27); AVX512F, BW, VL (leaf 7 EBX bits 16, 30,
 * 31), VBMI and VNNI (leaf 7 ECX bits 1, 11); and the OS saving the YMM, opmask and ZMM state (XCR0
 * bits 1, 2 and 5, 6, 7). */
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
    int f = (ebx >> 16) & 1, bw = (ebx >> 30) & 1, vl = (ebx >> 31) & 1;
    int vbmi = (ecx >> 1) & 1, vnni = (ecx >> 11) & 1;
    return f && bw && vl && vbmi && vnni;
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
            /* quad q of the unit: load block q / 8, table (q % 8) / 4 of it, slot q % 4 */
            uint8_t *out = prepared.tables + (u0 + EQ_LUT_LOAD_COLS * (size_t)(q / 8)) * EQ_LUT_BYTES_PER_COL +
                           64 * ((q % 8) / 4) + 16 * (q % 4);
            __m512i values = _mm512_cvtps_epi32(_mm512_mul_ps(table[q], inv));   /* |values| <= 32767 */
            __m512i high = _mm512_add_epi32(_mm512_srai_epi32(values, 8), _mm512_set1_epi32(128));
            _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(values));          /* low bytes */
            _mm_storeu_si128((__m128i *)(out + 128), _mm512_cvtepi32_epi8(high));    /* 0..255 */
        }
    }
}

/* ---- gemm ------------------------------------------------------------------------------------- */

/* Indices of one plane load's 4 chunks as vpermb reads them: gathered so that qword k holds rows
 * 2k, 2k+1 of the 4 chunks (pick: chunk 0, 1 of row 2k, of row 2k + 1, then chunks 2, 3 likewise),
 * cut into 4 nibbles per row and chunk pair (vpmultishiftqb, chunks 0-1 or 2-3), each nibble's table
 * slot in bits 4-5 (ternlog): byte 4r + n of a result indexes quad n of the chunk pair. */
typedef struct plane_indices {
    __m512i pick, shifts_first, shifts_second, nibble_mask, slots;
} plane_indices;

static plane_indices plane_indices_make(void)
{
    plane_indices c;
    uint8_t pick[64], first[64], second[64], slots[64];
    for (int k = 0; k < 8; k++) {
        for (int j = 0; j < 8; j++) {
            int n = j % 4;   /* row 2k + j / 4; n: low/high nibble of the first/second chunk of a pair */
            int byte = 8 * k + j;
            pick[byte] = (uint8_t)(32 * (j / 4) + 16 * (j % 2) + 2 * k + (j / 2) % 2);
            first[byte] = (uint8_t)(16 * (j / 4) + 4 * n);
            second[byte] = (uint8_t)(first[byte] + 32);
            slots[byte] = (uint8_t)(n << 4);
        }
    }
    c.pick = _mm512_loadu_si512(pick);
    c.shifts_first = _mm512_loadu_si512(first);
    c.shifts_second = _mm512_loadu_si512(second);
    c.nibble_mask = _mm512_set1_epi8(0x0f);
    c.slots = _mm512_loadu_si512(slots);
    return c;
}

/* 64 lookups' table indices of one chunk pair of a gathered plane load, 16 rows x 4 quads */
static inline __m512i plane_lookup_indices(const plane_indices *c, __m512i shifts, __m512i gathered)
{
    __m512i nibbles = _mm512_multishift_epi64_epi8(shifts, gathered);
    return _mm512_ternarylogic_epi32(nibbles, c->nibble_mask, c->slots, 0xEA);   /* (a & b) | c */
}

/* The 16 rows' int32 Σ_p 2^p Σ_k bit_p(q[r,k]) T-quantized over one unit of unit_cols columns */
static inline __attribute__((always_inline)) __m512i
unit_dot(const plane_indices *c, const uint8_t *unit_tables, const uint8_t *unit_planes, size_t plane_bytes,
         const int bits, const size_t loads)
{
    __m512i total = _mm512_setzero_si512();
EQ_UNROLL(2)
    for (int p0 = 0; p0 < bits; p0 += 7) {   /* plane weights 2^(p - p0) <= 64 fit the int8 operand */
        const int p_end = bits < p0 + 7 ? bits : p0 + 7;
        /* int32 sums per row of the low / high byte tables' lookups, chunks (0, 1) and (2, 3) */
        __m512i low_first = _mm512_setzero_si512(), high_first = _mm512_setzero_si512();
        __m512i low_second = _mm512_setzero_si512(), high_second = _mm512_setzero_si512();
EQ_UNROLL(2)
        for (size_t l = 0; l < loads; l++) {
            const __m512i *t = (const __m512i *)(unit_tables + 256 * l);
            const __m512i low_table_first = _mm512_load_si512(t), low_table_second = _mm512_load_si512(t + 1);
            const __m512i high_table_first = _mm512_load_si512(t + 2), high_table_second = _mm512_load_si512(t + 3);
EQ_UNROLL(8)
            for (int p = p0; p < p_end; p++) {
                const __m512i weight = _mm512_set1_epi8((char)(1 << (p - p0)));
                __m512i packed = _mm512_loadu_si512(unit_planes + (size_t)p * plane_bytes + 64 * l);
                __m512i gathered = _mm512_permutexvar_epi8(c->pick, packed);
                __m512i first = plane_lookup_indices(c, c->shifts_first, gathered);
                __m512i second = plane_lookup_indices(c, c->shifts_second, gathered);
                low_first = _mm512_dpbusd_epi32(low_first, _mm512_permutexvar_epi8(first, low_table_first), weight);
                high_first = _mm512_dpbusd_epi32(high_first, _mm512_permutexvar_epi8(first, high_table_first), weight);
                low_second = _mm512_dpbusd_epi32(low_second, _mm512_permutexvar_epi8(second, low_table_second), weight);
                high_second = _mm512_dpbusd_epi32(high_second, _mm512_permutexvar_epi8(second, high_table_second), weight);
            }
        }
        /* the high bytes carry +128: 2 x 4 lookups x 128 x 2^(p - p0) per plane and load */
        const __m512i bias = _mm512_set1_epi32(1024 * (int)loads * ((1 << (p_end - p0)) - 1));
        __m512i high = _mm512_sub_epi32(_mm512_add_epi32(high_first, high_second), bias);
        __m512i sum = _mm512_add_epi32(_mm512_add_epi32(low_first, low_second), _mm512_slli_epi32(high, 8));
        total = _mm512_add_epi32(total, _mm512_sll_epi32(sum, _mm_cvtsi32_si128(p0)));
    }
    return total;
}

/* acc (16 rows) += one group's contribution to W x: its planes' sums over the tables in units of
 * 64 columns (32 for a 32-column group or the last 32 columns of a partial group), each scaled by
 * its table scale, then the group's fp16 scales (+ min x Σx, or - zero_point x Σx), in avx2's order.
 *   block  the group's block of `width` stored columns (G, or a partial last group's: a multiple of
 *          32) starting at column col0 */
static inline __attribute__((always_inline)) __m512
group_dot(const eq_qtype_traits *type, const plane_indices *indices, const lut_input *prepared,
          const uint8_t *block, const size_t width, size_t col0, const int bits, const float zero_point,
          __m512 acc)
{
    const uint8_t *planes = block + 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    __m512 dot = _mm512_setzero_ps();
    for (size_t u0 = 0; u0 < width; u0 += EQ_LUT_UNIT) {
        const uint8_t *unit_tables = prepared->tables + (col0 + u0) * EQ_LUT_BYTES_PER_COL;
        __m512i total = width - u0 >= EQ_LUT_UNIT
            ? unit_dot(indices, unit_tables, planes + 2u * u0, 2u * width, bits, EQ_LUT_UNIT / EQ_LUT_LOAD_COLS)
            : unit_dot(indices, unit_tables, planes + 2u * u0, 2u * width, bits, 1);
        __m512 table_scale = _mm512_set1_ps(prepared->table_scales[(col0 + u0) / EQ_LUT_UNIT]);
        dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), table_scale, dot);
    }
    float sum_x = 0.0f;
    for (size_t i = 0; i < width / 32; i++)
        sum_x += prepared->sums[col0 / 32 + i];
    __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
    if (type->symmetric) {
        __m512 offset = _mm512_set1_ps(zero_point * sum_x);
        return _mm512_fmadd_ps(scale, _mm512_sub_ps(dot, offset), acc);
    }
    __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
    return _mm512_fmadd_ps(min, _mm512_set1_ps(sum_x), _mm512_fmadd_ps(scale, dot, acc));
}

/* The kernel body, inlined once per (bits, group) by lut_gemm so that the plane and load loops of
 * whole groups have constant trip counts and unroll; a partial last group (its stored width known
 * only at run time) goes through the same steps in units of 64 and 32 columns. */
static inline __attribute__((always_inline)) void
lut_gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
              const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_full = cols / group;                           /* whole groups, then ... */
    const size_t last_width = cols % group ? eq_last_group_cols(type, cols) : 0;   /* ... a partial one */
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const plane_indices indices = plane_indices_make();
    const float zero_point = eq_zero_point(type);                 /* once per call, not per group */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const uint8_t *tile_data = data + tile * tile_bytes;
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        const __mmask16 row_mask = (__mmask16)((1u << n_rows) - 1u);
        for (size_t v = 0; v < in->n; v++) {
            const lut_input prepared = lut_input_at((uint8_t *)in->prepared + v * in->stride, cols);
            __m512 acc = _mm512_setzero_ps();   /* (16,) y of this tile */
            const uint8_t *block = tile_data;
            for (size_t g = 0; g < n_full; g++, block += block_bytes) {
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, block_bytes);
                acc = group_dot(type, &indices, &prepared, block, group, g * group, bits, zero_point, acc);
            }
            if (last_width)
                acc = group_dot(type, &indices, &prepared, block, last_width, n_full * group, bits, zero_point, acc);
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
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
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

/* rows four at a time (b loaded once for the four), each summed exactly as a row alone */
static void dot_f16(const uint16_t *a, size_t stride, size_t n_rows, const float *b, size_t n, float *out)
{
    const __mmask16 tail = (__mmask16)((1u << (n % 16)) - 1u);
    size_t r = 0;
    for (; r + 4 <= n_rows; r += 4, a += 4 * stride) {
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const __m512 q = _mm512_loadu_ps(b + i);
            acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))), q, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + stride + i))), q, acc1);
            acc2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + 2 * stride + i))), q, acc2);
            acc3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + 3 * stride + i))), q, acc3);
        }
        if (i < n) {
            const __m512 q = _mm512_maskz_loadu_ps(tail, b + i);
            acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + i)), q, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + stride + i)), q, acc1);
            acc2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + 2 * stride + i)), q, acc2);
            acc3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + 3 * stride + i)), q, acc3);
        }
        out[r] = _mm512_reduce_add_ps(acc0);
        out[r + 1] = _mm512_reduce_add_ps(acc1);
        out[r + 2] = _mm512_reduce_add_ps(acc2);
        out[r + 3] = _mm512_reduce_add_ps(acc3);
    }
    for (; r < n_rows; r++, a += stride) {
        __m512 acc = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= n; i += 16)
            acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))), _mm512_loadu_ps(b + i), acc);
        if (i < n)
            acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, a + i)), _mm512_maskz_loadu_ps(tail, b + i), acc);
        out[r] = _mm512_reduce_add_ps(acc);
    }
}

/* y in registers, 64 values at a time, while every row adds to them */
static void axpy_f16(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows, size_t n)
{
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 y0 = _mm512_loadu_ps(y + i), y1 = _mm512_loadu_ps(y + i + 16);
        __m512 y2 = _mm512_loadu_ps(y + i + 32), y3 = _mm512_loadu_ps(y + i + 48);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride) {
            const __m512 weight = _mm512_set1_ps(w[r]);
            y0 = _mm512_fmadd_ps(weight, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)row)), y0);
            y1 = _mm512_fmadd_ps(weight, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 16))), y1);
            y2 = _mm512_fmadd_ps(weight, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 32))), y2);
            y3 = _mm512_fmadd_ps(weight, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 48))), y3);
        }
        _mm512_storeu_ps(y + i, y0);
        _mm512_storeu_ps(y + i + 16, y1);
        _mm512_storeu_ps(y + i + 32, y2);
        _mm512_storeu_ps(y + i + 48, y3);
    }
    for (; i < n; i += 16) {   /* 16 at a time, the last ones masked */
        const __mmask16 lanes = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 sum = _mm512_maskz_loadu_ps(lanes, y + i);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride)
            sum = _mm512_fmadd_ps(_mm512_set1_ps(w[r]), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, row)), sum);
        _mm512_mask_storeu_ps(y + i, lanes, sum);
    }
}

/* ---- attention over an int8 KV cache (layout in kernels.h) --------------------------------- */
/* scales converted by F16C (_cvtsh_ss: the value eq_fp16_to_fp32 gives, without the call) */

/* up to 16 int8 levels as floats (lanes past `lanes` zero) */
static inline __m512 load_q8x16(const int8_t *q, __mmask16 lanes)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, q)));
}

static float dot_q8(const int8_t *a, const uint16_t *scales, const float *b, size_t n)
{
    __m512 acc = _mm512_setzero_ps();
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
        __m512 sum = _mm512_setzero_ps();
        for (size_t i = begin; i < end; i += 16) {
            __mmask16 lanes = end - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (end - i)) - 1u);
            sum = _mm512_fmadd_ps(load_q8x16(a + i, lanes), _mm512_maskz_loadu_ps(lanes, b + i), sum);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(scales[block])), sum, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static void axpy_q8(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
        __m512 weight = _mm512_set1_ps(w * _cvtsh_ss(scales[block]));
        for (size_t i = begin; i < end; i += 16) {
            __mmask16 lanes = end - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (end - i)) - 1u);
            _mm512_mask_storeu_ps(y + i, lanes, _mm512_fmadd_ps(weight, load_q8x16(x + i, lanes),
                                                                _mm512_maskz_loadu_ps(lanes, y + i)));
        }
    }
}

/* ---- attention over an int4 value cache (layout in kernels.h) ------------------------------ */

/* up to 16 int4 levels (value i in byte i / 2, low nibble first, stored + 8) as floats; only the
 * bytes of bytes_read are read (lanes past them are level -8: the caller masks them off) */
static inline __m512 load_q4x16(const uint8_t *x, __mmask16 bytes_read)
{
    const __m128i nibble = _mm_set1_epi8(15);
    __m128i bytes = _mm_maskz_loadu_epi8(bytes_read, x);
    __m128i low = _mm_and_si128(bytes, nibble), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
    __m128i levels = _mm_sub_epi8(_mm_unpacklo_epi8(low, high), _mm_set1_epi8(8));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(levels));
}

static void axpy_q4(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n;
        __m512 weight = _mm512_set1_ps(w * _cvtsh_ss(scales[block]));
        for (size_t i = begin; i < end; i += 16) {   /* i even: values i .. are bytes i / 2 .. */
            size_t count = end - i >= 16 ? 16 : end - i;
            __mmask16 lanes = (__mmask16)((1u << count) - 1u), bytes_read = (__mmask16)((1u << ((count + 1) / 2)) - 1u);
            _mm512_mask_storeu_ps(y + i, lanes, _mm512_fmadd_ps(weight, load_q4x16(x + i / 2, bytes_read),
                                                                _mm512_maskz_loadu_ps(lanes, y + i)));
        }
    }
}

/* ---- the set -------------------------------------------------------------------------------- */

const eq_kernel_set eq_kernels_avx512 = {
    .isa = "avx512",
    .is_available = avx512_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = {.decode = {"float", "fp32 FMA dot products (AVX-512, masked tails)", NULL, NULL, plain_gemm}},
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: int16 tables of 4-activation subset sums, vpermb from 64-entry tables (two per lookup), vpdpbusd sums",
                       lut_prepared_bytes, lut_prepare, lut_gemm},
            /* prompts (batches from 16: below it LUT is as fast or faster at 2-3 bits, measured in
             * benchmarks/README.md "Prefill"): int16 activations, as accurate as the LUT tables */
            .prefill = {"multiply-add", "multiply-add: int16 activations per 32, int16 levels expanded once per tile, vpdpwssd",
                        eq_prefill_prepared_bytes_avx2, eq_prefill_prepare_avx2, eq_prefill_gemm_avx512},
            .prefill_from = 16,
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = {   /* kernels in x86/avx512_packed.c (this set requires VNNI) */
            .decode = {"multiply-add", "int8 multiply-add: activations int8 per 32, vpdpbusd on 16-row quads",
                       eq_packed_prepared_bytes_avx512, eq_packed_prepare_avx512, eq_packed_gemm_avx512},
            /* the same int8 activations and float steps, 8 vectors per load of a quad: bit-identical per vector */
            .prefill = {"multiply-add", "int8 multiply-add: activations int8 per 32, vpdpbusd on 16-row quads, 8 vectors per quad load",
                        eq_packed_prepared_bytes_avx512, eq_packed_prepare_avx512, eq_packed_prefill_gemm_avx512},
            .prefill_from = 4,
        },
        [EQ_QFAMILY_CODEBOOK] = {   /* kernels in x86/avx512_codebook.c */
            .decode = {"multiply-add", "int8 multiply-add: index -> level by vpshufb, activations int8 per 32, vpdpbusd on 16-row quads",
                       eq_packed_prepared_bytes_avx512, eq_packed_prepare_avx512, eq_codebook_gemm_avx512},
            .prefill = {"multiply-add", "int8 multiply-add: index -> level by vpshufb, vpdpbusd on 16-row quads, 8 vectors per quad load",
                        eq_packed_prepared_bytes_avx512, eq_packed_prepare_avx512, eq_codebook_prefill_gemm_avx512},
            .prefill_from = 4,
        },
    },
    .dot_f16 = dot_f16,
    .axpy_f16 = axpy_f16,
    .dot_q8 = dot_q8,
    .axpy_q8 = axpy_q8,
    .axpy_q4 = axpy_q4,
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
