/* arm/neon.c — the LUT kernel set for aarch64 Advanced SIMD (NEON, ARMv8.0: Cortex-A53/A72 up).
 *
 * Same arithmetic as x86/avx2.c (and so the same results, bit for bit, on the same input):
 * prepare: for every group of 4 activations ("quad") the 16 subset sums T[idx] = Σ_{bit i of idx}
 * x[k0+i], quantized to int16 with one scale per 64 activations (max |T| -> 32767; int8 tables cost
 * 2.5 % perplexity at 8 bits) and split into a low-byte table and a high-byte table stored + 128,
 * so that both are unsigned. Stored per 8 columns (one plane chunk, quads 2c and 2c+1), 64 bytes:
 *     low(quad 2c) low(quad 2c+1) high(quad 2c) high(quad 2c+1)        16 bytes each
 * gemm: a 16-byte plane chunk is one byte per row of a tile; its low nibbles index quad 2c's tables,
 * its high nibbles quad 2c+1's, and one vqtbl1q_u8 looks up 16 rows x 4 activations. The looked-up
 * bytes are weighed by 2^(p - p0) and summed into uint16 with vmlal_u8, low and high bytes apart,
 * planes four at a time over one 64-column unit: at most 8 chunks x 2 lookups x 255 x (1+2+4+8) =
 * 61200 < 2^16, so nothing wraps. Per unit the high bytes' +128 is removed while widening to int32
 * (256 high + low, << p0), scaled by the table scale, and per group by the fp16 scale (+ min x Σx, or
 * - zero_point x Σx for symmetric types) in fp32 with FMA. Σx per group is exact (float).
 * The plain family (f32/f16 rows) is fp32 FMA; the fp16 attention helpers convert with vcvt_f32_f16.
 *
 * Deliberately not here: sdot/udot. They add four adjacent bytes, which in the bit-plane layout are
 * four different rows, so they fit a multiply-add path over packed weights, not these lookups: the
 * uniform packed family's path is arm/neon_packed.c (this set's ARMv8.0 smull/smlal kernel; its
 * sdot kernel is set neon-dotprod, listed before this one, which takes everything else from here).
 * Baseline ARMv8.0 needs no target attribute; other architectures compile stubs of a set that is
 * never available (as x86/avx2.c does off x86).
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "kernels.h"

/* AdvSIMD with fp16 conversions is part of every aarch64 CPU that runs Linux distributions, but
 * the kernel says so in AT_HWCAP; elsewhere (macOS, the BSDs) aarch64 implies it. */
static int neon_available(void)
{
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
    return 1;
#endif
}

/* ---- prepare: int16 tables as two byte tables ------------------------------------------------- */

enum {
    LUT_UNIT = 64,                  /* activations per table scale */
    LUT_BYTES_PER_COL = 8,          /* 16 two-byte entries per 4 activations */
    QUADS_PER_UNIT = LUT_UNIT / 4,
    CHUNK_TABLE_BYTES = 8 * LUT_BYTES_PER_COL   /* 64: the four byte tables of one plane chunk */
};

/* The 16 subset sums of one quad, entries 4j..4j+3 in entries[j]: added in the order x86/avx2.c
 * adds them (((a0 + a1) + a2) + a3, skipping absent terms), so the tables are the same bits. */
static inline void quad_entries(const float a[4], float32x4_t entries[4])
{
    const float32x4_t base = {0.0f, a[0], a[1], a[0] + a[1]};
    entries[0] = base;
    entries[1] = vaddq_f32(base, vdupq_n_f32(a[2]));
    entries[2] = vaddq_f32(base, vdupq_n_f32(a[3]));
    entries[3] = vaddq_f32(entries[1], vdupq_n_f32(a[3]));
}

/* round(entries * inv) (ties to even, |value| <= 32767) as 16 int16, stored as 16 low bytes at
 * low_out and 16 high bytes + 128 at high_out */
static inline void quantize_table(const float32x4_t entries[4], float32x4_t inv, uint8_t *low_out,
                                  uint8_t *high_out)
{
    int16x8_t first = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(entries[0], inv))),
                                   vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(entries[1], inv))));
    int16x8_t second = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(entries[2], inv))),
                                    vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(entries[3], inv))));
    const uint8x16_t sign = vdupq_n_u8(0x80);   /* + 128 on a byte is flipping its top bit */
    vst1q_u8(low_out, vcombine_u8(vmovn_u16(vreinterpretq_u16_s16(first)),
                                  vmovn_u16(vreinterpretq_u16_s16(second))));
    vst1q_u8(high_out, veorq_u8(vreinterpretq_u8_s8(vcombine_s8(vshrn_n_s16(first, 8),
                                                                vshrn_n_s16(second, 8))), sign));
}

/* One vector's prepared bytes: (padded / 8, 64) byte tables, then padded / 64 float table scales,
 * then padded / 32 float sums of x; padded = cols rounded up to EQ_LARGEST_GROUP. */
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
    return padded * LUT_BYTES_PER_COL + (padded / LUT_UNIT + padded / 32) * sizeof(float);
}

static lut_input lut_input_at(uint8_t *prepared, size_t cols)
{
    size_t padded = padded_columns(cols);
    lut_input in = {prepared, (float *)(void *)(prepared + padded * LUT_BYTES_PER_COL), NULL};
    in.sums = in.table_scales + padded / LUT_UNIT;
    return in;
}

static void lut_prepare(const float *x, size_t cols, uint8_t *bytes)
{
    const size_t padded = padded_columns(cols);
    const lut_input prepared = lut_input_at(bytes, cols);
    for (size_t u0 = 0; u0 < padded; u0 += LUT_UNIT) {
        float32x4_t entries[QUADS_PER_UNIT][4];
        float quad_sum[QUADS_PER_UNIT];
        float32x4_t max_abs = vdupq_n_f32(0.0f);
        for (int q = 0; q < QUADS_PER_UNIT; q++) {
            float a[4];
            for (int i = 0; i < 4; i++) {
                size_t k = u0 + 4u * (size_t)q + (size_t)i;
                a[i] = k < cols ? x[k] : 0.0f;
            }
            quad_entries(a, entries[q]);
            for (int j = 0; j < 4; j++)
                max_abs = vmaxq_f32(max_abs, vabsq_f32(entries[q][j]));
            quad_sum[q] = ((a[0] + a[1]) + a[2]) + a[3];
        }
        float largest = vmaxvq_f32(max_abs);
        prepared.table_scales[u0 / LUT_UNIT] = largest / 32767.0f;
        float32x4_t inv = vdupq_n_f32(largest > 0.0f ? 32767.0f / largest : 0.0f);
        for (int half = 0; half < 2; half++) {
            float sum = 0.0f;
            for (int q = 8 * half; q < 8 * half + 8; q++)
                sum += quad_sum[q];
            prepared.sums[u0 / 32 + (size_t)half] = sum;
        }
        for (int q = 0; q < QUADS_PER_UNIT; q++) {
            /* quad q is chunk q/2's even (low-nibble) or odd (high-nibble) quad */
            uint8_t *chunk = prepared.tables + (u0 / 8 + (size_t)q / 2) * CHUNK_TABLE_BYTES + 16 * (q % 2);
            quantize_table(entries[q], inv, chunk, chunk + 32);
        }
    }
}

/* ---- gemm: uniform bit-plane family --------------------------------------------------------- */

/* Looked-up byte sums of one tile over one unit and up to four planes: rows 0-7 in [0], 8-15 in [1]. */
typedef struct unit_sums {
    uint16x8_t low[2];    /* Σ 2^(p-p0) x low-byte lookups */
    uint16x8_t high[2];   /* Σ 2^(p-p0) x (high-byte lookups + 128) */
} unit_sums;

/* One plane chunk (16 rows x 8 columns) against its four byte tables, weighed by `weight`. */
static inline void lookup_chunk(const uint8_t *plane_chunk, const uint8_t *chunk_tables, uint8x16_t weight,
                                unit_sums *sums)
{
    const uint8x16_t packed = vld1q_u8(plane_chunk);
    const uint8x16_t even = vandq_u8(packed, vdupq_n_u8(0x0f));   /* columns 0-3: quad 2c */
    const uint8x16_t odd = vshrq_n_u8(packed, 4);                 /* columns 4-7: quad 2c+1 */
    const uint8x16_t low_even = vqtbl1q_u8(vld1q_u8(chunk_tables), even);
    const uint8x16_t low_odd = vqtbl1q_u8(vld1q_u8(chunk_tables + 16), odd);
    const uint8x16_t high_even = vqtbl1q_u8(vld1q_u8(chunk_tables + 32), even);
    const uint8x16_t high_odd = vqtbl1q_u8(vld1q_u8(chunk_tables + 48), odd);
    const uint8x8_t weight_half = vget_low_u8(weight);
    sums->low[0] = vmlal_u8(vmlal_u8(sums->low[0], vget_low_u8(low_even), weight_half),
                            vget_low_u8(low_odd), weight_half);
    sums->low[1] = vmlal_high_u8(vmlal_high_u8(sums->low[1], low_even, weight), low_odd, weight);
    sums->high[0] = vmlal_u8(vmlal_u8(sums->high[0], vget_low_u8(high_even), weight_half),
                             vget_low_u8(high_odd), weight_half);
    sums->high[1] = vmlal_high_u8(vmlal_high_u8(sums->high[1], high_even, weight), high_odd, weight);
}

/* total[i] (rows 4i..4i+3) += (256 (high - bias) + low) << p0, in int32: the exact table-unit dot
 * product of planes p0.. (bias = what the +128 of the high bytes added, at most 61200). */
static inline void widen_unit_sums(const unit_sums *sums, uint16_t bias, int p0, int32x4_t total[4])
{
    const uint16x4_t bias4 = vdup_n_u16(bias);
    const int32x4_t shift = vdupq_n_s32(p0);
    for (int half = 0; half < 2; half++) {
        const uint16x8_t low = sums->low[half], high = sums->high[half];
        /* uint32 (high - bias) wraps to the right int32 when negative */
        int32x4_t first = vshlq_n_s32(vreinterpretq_s32_u32(vsubl_u16(vget_low_u16(high), bias4)), 8);
        int32x4_t second = vshlq_n_s32(vreinterpretq_s32_u32(vsubl_high_u16(high, vdupq_n_u16(bias))), 8);
        first = vaddq_s32(first, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(low))));
        second = vaddq_s32(second, vreinterpretq_s32_u32(vmovl_high_u16(low)));
        total[2 * half] = vaddq_s32(total[2 * half], vshlq_s32(first, shift));
        total[2 * half + 1] = vaddq_s32(total[2 * half + 1], vshlq_s32(second, shift));
    }
}

/* 4 fp16 values (little-endian, maybe unaligned) as fp32 */
static inline float32x4_t load_f16x4(const uint8_t *p)
{
    uint16_t bits[4];
    memcpy(bits, p, sizeof bits);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits)));
}

/* total[4] (int32, rows 4i..4i+3) = the 16 rows' Σ_p 2^p Σ_k bit_p(q[r,k]) T-quantized over one unit
 * of 8 * chunks columns (a whole LUT_UNIT, or 32 columns) */
static inline __attribute__((always_inline)) void
unit_dot(const uint8_t *unit_planes, size_t plane_bytes, const uint8_t *unit_tables, const int bits,
         const size_t chunks, int32x4_t total[4])
{
    for (int i = 0; i < 4; i++)
        total[i] = vdupq_n_s32(0);
EQ_UNROLL(2)
    for (int p0 = 0; p0 < bits; p0 += 4) {
        const int p_end = bits < p0 + 4 ? bits : p0 + 4;
        unit_sums unit = {{vdupq_n_u16(0), vdupq_n_u16(0)}, {vdupq_n_u16(0), vdupq_n_u16(0)}};
#pragma GCC unroll 2   /* 4 and 8 spill registers at 5-8 bits (objdump) */
        for (size_t c = 0; c < chunks; c++) {
EQ_UNROLL(4)
            for (int p = p0; p < p_end; p++)
                lookup_chunk(unit_planes + (size_t)p * plane_bytes + 16 * c,
                             unit_tables + CHUNK_TABLE_BYTES * c,
                             vdupq_n_u8((uint8_t)(1u << (p - p0))), &unit);
        }
        const uint16_t bias = (uint16_t)(2u * 128u * chunks * ((1u << (p_end - p0)) - 1u));
        widen_unit_sums(&unit, bias, p0, total);
    }
}

/* acc[4] (rows 4i..4i+3) += one group's contribution to W x: its planes' sums in units of LUT_UNIT
 * columns (32 for a 32-column group or the last 32 columns of a partial group), each scaled by its
 * table scale, then the group's fp16 scales (+ min x Σx, or - zero_point x Σx).
 *   block  the group's block of `width` stored columns (G, or a partial last group's: a multiple of
 *          32) starting at column col0 */
static inline __attribute__((always_inline)) void
group_dot(const eq_qtype_traits *type, const lut_input *prepared, const uint8_t *block, const size_t width,
          size_t col0, const int bits, const float zero_point, float32x4_t acc[4])
{
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const uint8_t *planes = block + scale_bytes * (type->symmetric ? 1u : 2u);
    float32x4_t dot[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (size_t u0 = 0; u0 < width; u0 += LUT_UNIT) {
        const uint8_t *unit_tables = prepared->tables + (col0 + u0) * LUT_BYTES_PER_COL;
        int32x4_t total[4];
        if (width - u0 >= LUT_UNIT)
            unit_dot(planes + 2u * u0, 2u * width, unit_tables, bits, LUT_UNIT / EQ_CHUNK_COLS, total);
        else
            unit_dot(planes + 2u * u0, 2u * width, unit_tables, bits, 32 / EQ_CHUNK_COLS, total);
        const float32x4_t table_scale = vdupq_n_f32(prepared->table_scales[(col0 + u0) / LUT_UNIT]);
EQ_UNROLL(4)
        for (int i = 0; i < 4; i++)
            dot[i] = vfmaq_f32(dot[i], vcvtq_f32_s32(total[i]), table_scale);
    }
    float sum_x = 0.0f;
    for (size_t i = 0; i < width / 32; i++)
        sum_x += prepared->sums[col0 / 32 + i];
EQ_UNROLL(4)
    for (int i = 0; i < 4; i++) {   /* rows 4i..4i+3 */
        const float32x4_t scale = load_f16x4(block + 8 * i);
        if (type->symmetric) {
            const float32x4_t offset = vdupq_n_f32(zero_point * sum_x);
            acc[i] = vfmaq_f32(acc[i], scale, vsubq_f32(dot[i], offset));
        } else {
            const float32x4_t min = load_f16x4(block + scale_bytes + 8 * i);
            acc[i] = vfmaq_f32(vfmaq_f32(acc[i], scale, dot[i]), min, vdupq_n_f32(sum_x));
        }
    }
}

/* The kernel body, inlined once per (bits, group) by gemm_packed so that the plane and chunk loops
 * of whole groups have constant trip counts and unroll; a partial last group (its stored width
 * known only at run time) goes through the same steps in units of LUT_UNIT and 32 columns. */
static inline __attribute__((always_inline)) void
gemm_packed_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const eq_input *in, float *y, size_t y_stride, const int bits, const size_t group)
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
            const lut_input prepared = lut_input_at((uint8_t *)in->prepared + v * in->stride, cols);
            float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
            const uint8_t *block = tile_data;
            for (size_t g = 0; g < n_full; g++, block += block_bytes) {
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, block_bytes);
                group_dot(type, &prepared, block, group, g * group, bits, zero_point, acc);
            }
            if (last_width)
                group_dot(type, &prepared, block, last_width, n_full * group, bits, zero_point, acc);
            float out[EQ_TILE_ROWS];
            for (int i = 0; i < 4; i++)
                vst1q_f32(out + 4 * i, acc[i]);
            size_t row0 = tile * EQ_TILE_ROWS;
            size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, out, n_rows * sizeof(float));
        }
    }
}

static void lut_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                     const eq_input *in, float *y, size_t y_stride)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): gemm_packed_body(type, data, rows, cols, in, y, y_stride, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        gemm_packed_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

/* ---- gemm: plain family ---------------------------------------------------------------------- */

/* Σ of two accumulators of 4 lanes in x86/avx2.c's order: lanes (0+4, 1+5, 2+6, 3+7), then
 * (0+2) + (1+3) */
static inline float horizontal_sum(float32x4_t first, float32x4_t second)
{
    float32x4_t s = vaddq_f32(first, second);
    float32x2_t pair = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    return vget_lane_f32(pair, 0) + vget_lane_f32(pair, 1);
}

/* 8 weights of a plain row (f32 or f16, little-endian, maybe unaligned) as fp32 */
static inline void load_row8(const uint8_t *w, size_t width, float32x4_t out[2])
{
    if (width == 4) {
        out[0] = vreinterpretq_f32_u8(vld1q_u8(w));
        out[1] = vreinterpretq_f32_u8(vld1q_u8(w + 16));
    } else {
        float16x8_t halves = vreinterpretq_f16_u8(vld1q_u8(w));
        out[0] = vcvt_f32_f16(vget_low_f16(halves));
        out[1] = vcvt_high_f32_f16(halves);
    }
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
            float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
            for (size_t k = 0; k < body; k += 8) {
                float32x4_t weights[2];
                load_row8(w + width * k, width, weights);
                acc[0] = vfmaq_f32(acc[0], weights[0], vld1q_f32(x + k));
                acc[1] = vfmaq_f32(acc[1], weights[1], vld1q_f32(x + k + 4));
            }
            float dot = horizontal_sum(acc[0], acc[1]);
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
        float32x4_t low[4], high[4];
        for (int j = 0; j < 4; j++)
            low[j] = high[j] = vdupq_n_f32(0.0f);
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const float32x4_t q_low = vld1q_f32(b + i), q_high = vld1q_f32(b + i + 4);
            for (int j = 0; j < 4; j++) {
                float16x8_t halves = vreinterpretq_f16_u16(vld1q_u16(a + (size_t)j * stride + i));
                low[j] = vfmaq_f32(low[j], vcvt_f32_f16(vget_low_f16(halves)), q_low);
                high[j] = vfmaq_f32(high[j], vcvt_high_f32_f16(halves), q_high);
            }
        }
        for (int j = 0; j < 4; j++) {
            float dot = horizontal_sum(low[j], high[j]);
            for (size_t k = i; k < n; k++)
                dot += eq_fp16_to_fp32(a[(size_t)j * stride + k]) * b[k];
            out[r + (size_t)j] = dot;
        }
    }
    for (; r < n_rows; r++, a += stride) {
        float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            float16x8_t halves = vreinterpretq_f16_u16(vld1q_u16(a + i));
            acc[0] = vfmaq_f32(acc[0], vcvt_f32_f16(vget_low_f16(halves)), vld1q_f32(b + i));
            acc[1] = vfmaq_f32(acc[1], vcvt_high_f32_f16(halves), vld1q_f32(b + i + 4));
        }
        float dot = horizontal_sum(acc[0], acc[1]);
        for (; i < n; i++)
            dot += eq_fp16_to_fp32(a[i]) * b[i];
        out[r] = dot;
    }
}

/* y in registers, 16 values at a time, while every row adds to them */
static void axpy_f16(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t y0 = vld1q_f32(y + i), y1 = vld1q_f32(y + i + 4);
        float32x4_t y2 = vld1q_f32(y + i + 8), y3 = vld1q_f32(y + i + 12);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride) {
            const float32x4_t weight = vdupq_n_f32(w[r]);
            float16x8_t first = vreinterpretq_f16_u16(vld1q_u16(row));
            float16x8_t second = vreinterpretq_f16_u16(vld1q_u16(row + 8));
            y0 = vfmaq_f32(y0, weight, vcvt_f32_f16(vget_low_f16(first)));
            y1 = vfmaq_f32(y1, weight, vcvt_high_f32_f16(first));
            y2 = vfmaq_f32(y2, weight, vcvt_f32_f16(vget_low_f16(second)));
            y3 = vfmaq_f32(y3, weight, vcvt_high_f32_f16(second));
        }
        vst1q_f32(y + i, y0);
        vst1q_f32(y + i + 4, y1);
        vst1q_f32(y + i + 8, y2);
        vst1q_f32(y + i + 12, y3);
    }
    for (; i + 8 <= n; i += 8) {
        float32x4_t y0 = vld1q_f32(y + i), y1 = vld1q_f32(y + i + 4);
        const uint16_t *row = x + i;
        for (size_t r = 0; r < n_rows; r++, row += stride) {
            const float32x4_t weight = vdupq_n_f32(w[r]);
            float16x8_t halves = vreinterpretq_f16_u16(vld1q_u16(row));
            y0 = vfmaq_f32(y0, weight, vcvt_f32_f16(vget_low_f16(halves)));
            y1 = vfmaq_f32(y1, weight, vcvt_high_f32_f16(halves));
        }
        vst1q_f32(y + i, y0);
        vst1q_f32(y + i + 4, y1);
    }
    for (; i < n; i++) {
        float sum = y[i];
        for (size_t r = 0; r < n_rows; r++)
            sum += w[r] * eq_fp16_to_fp32(x[r * stride + i]);
        y[i] = sum;
    }
}

/* fcvtn under the FPCR Linux gives a process (round to nearest even, no flush to zero, NaNs kept
 * quiet with their payload): the value eq_fp32_to_fp16 gives */
static void to_f16(const float *x, size_t n, uint16_t *out)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t halves = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(x + i)), vld1q_f32(x + i + 4));
        vst1q_u16(out + i, vreinterpretq_u16_f16(halves));
    }
    for (; i < n; i++)
        out[i] = eq_fp32_to_fp16(x[i]);
}

/* kernels.h's e^x steps, four at a time (vmaxq keeps a NaN, unlike ref's clamp: the lanes it
 * reaches are replaced by the NaN at the end, and nothing on the way traps) */
static inline float32x4_t exp4(float32x4_t v)
{
    const float32x4_t c = vminq_f32(vmaxq_f32(v, vdupq_n_f32(EQ_EXP_LOW)), vdupq_n_f32(EQ_EXP_HIGH));
    const float32x4_t rounder = vdupq_n_f32(EQ_EXP_ROUNDER);
    const float32x4_t t = vaddq_f32(vmulq_f32(c, vdupq_n_f32(EQ_EXP_LOG2E)), rounder);
    const float32x4_t k = vsubq_f32(t, rounder);
    const uint32x4_t exponent = vaddq_u32(vsubq_u32(vreinterpretq_u32_f32(t), vdupq_n_u32(0x4b400000u)),
                                          vdupq_n_u32(127u));
    const float32x4_t scale = vreinterpretq_f32_u32(vshlq_n_u32(exponent, 23));
    const float32x4_t r = vsubq_f32(vsubq_f32(c, vmulq_f32(k, vdupq_n_f32(EQ_EXP_LN2_HIGH))),
                                    vmulq_f32(k, vdupq_n_f32(EQ_EXP_LN2_LOW)));
    float32x4_t p = vdupq_n_f32(EQ_EXP_C5);
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(EQ_EXP_C4));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(EQ_EXP_C3));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(EQ_EXP_C2));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(EQ_EXP_C1));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(EQ_EXP_C0));
    float32x4_t e = vaddq_f32(vaddq_f32(vmulq_f32(p, vmulq_f32(r, r)), r), vdupq_n_f32(1.0f));
    e = vmulq_f32(e, scale);
    e = vbslq_f32(vcgtq_f32(v, vdupq_n_f32(EQ_EXP_HIGH)), vdupq_n_f32(INFINITY), e);
    e = vbslq_f32(vcltq_f32(v, vdupq_n_f32(EQ_EXP_LOW)), vdupq_n_f32(0.0f), e);
    return vbslq_f32(vceqq_f32(v, v), e, v);
}

static void exp_f32(const float *x, float *y, size_t n)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, exp4(vld1q_f32(x + i)));
    if (i < n) {   /* the tail through the same steps */
        float rest[4] = {0};
        memcpy(rest, x + i, (n - i) * sizeof *x);
        vst1q_f32(rest, exp4(vld1q_f32(rest)));
        memcpy(y + i, rest, (n - i) * sizeof *y);
    }
}

/* ---- attention over an int8 KV cache (layout in kernels.h) --------------------------------- */

/* an fp16 scale as float (the same value as eq_fp16_to_fp32, without the call) */
static inline float scale_f32(uint16_t bits)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))), 0);
}

static float dot_q8(const int8_t *a, const uint16_t *scales, const float *b, size_t n)
{
    float32x4_t acc = vdupq_n_f32(0.0f);
    float rest = 0.0f;
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n, i = begin;
        float scale = scale_f32(scales[block]);
        float32x4_t sum[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (; i + 8 <= end; i += 8) {
            int16x8_t levels = vmovl_s8(vld1_s8(a + i));
            sum[0] = vfmaq_f32(sum[0], vcvtq_f32_s32(vmovl_s16(vget_low_s16(levels))), vld1q_f32(b + i));
            sum[1] = vfmaq_f32(sum[1], vcvtq_f32_s32(vmovl_high_s16(levels)), vld1q_f32(b + i + 4));
        }
        acc = vfmaq_n_f32(acc, vaddq_f32(sum[0], sum[1]), scale);
        float tail = 0.0f;
        for (; i < end; i++)
            tail += (float)a[i] * b[i];
        rest += scale * tail;
    }
    return vaddvq_f32(acc) + rest;
}

static void axpy_q8(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n, i = begin;
        float weight = w * scale_f32(scales[block]);
        for (; i + 8 <= end; i += 8) {
            int16x8_t levels = vmovl_s8(vld1_s8(x + i));
            vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvtq_f32_s32(vmovl_s16(vget_low_s16(levels))), weight));
            vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vcvtq_f32_s32(vmovl_high_s16(levels)), weight));
        }
        for (; i < end; i++)
            y[i] += weight * (float)x[i];
    }
}

/* ---- attention over an int4 value cache (layout in kernels.h) ------------------------------ */

/* 16 int4 levels from 8 bytes (value i in byte i / 2, low nibble first, stored + 8) as int8, in order */
static inline int8x16_t load_q4x16(const uint8_t *x)
{
    uint8x8_t bytes = vld1_u8(x);
    uint8x8_t low = vand_u8(bytes, vdup_n_u8(15)), high = vshr_n_u8(bytes, 4);
    uint8x16_t stored = vcombine_u8(vzip1_u8(low, high), vzip2_u8(low, high));
    return vsubq_s8(vreinterpretq_s8_u8(stored), vdupq_n_s8(8));
}

/* y[0 .. 8) += weight * 8 int8 levels */
static inline void axpy_levels8(float *y, float weight, int8x8_t levels)
{
    int16x8_t wide = vmovl_s8(levels);
    vst1q_f32(y, vfmaq_n_f32(vld1q_f32(y), vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))), weight));
    vst1q_f32(y + 4, vfmaq_n_f32(vld1q_f32(y + 4), vcvtq_f32_s32(vmovl_high_s16(wide)), weight));
}

static void axpy_q4(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n, i = begin;
        float weight = w * scale_f32(scales[block]);
        for (; i + 16 <= end; i += 16) {   /* i even: values i .. i + 15 are bytes i / 2 .. i / 2 + 7 */
            int8x16_t levels = load_q4x16(x + i / 2);
            axpy_levels8(y + i, weight, vget_low_s8(levels));
            axpy_levels8(y + i + 8, weight, vget_high_s8(levels));
        }
        for (; i < end; i++)
            y[i] += weight * (float)(((x[i / 2] >> (4 * (i % 2))) & 15) - 8);
    }
}

/* ---- the set -------------------------------------------------------------------------------- */

const eq_kernel_set eq_kernels_neon = {
    .isa = "neon",
    .is_available = neon_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = {.decode = {"float", "fp32 FMA dot products (NEON)", NULL, NULL, plain_gemm}},
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: int16 tables of 4-activation subset sums, two vqtbl1q per lookup",
                       lut_prepared_bytes, lut_prepare, lut_gemm},
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = {   /* kernels in arm/neon_packed.c (its sdot path: set neon-dotprod) */
            .decode = {"multiply-add", "int8 multiply-add: activations int8 per 32, smull/smlal + sadalp (ARMv8.0, no sdot)",
                       eq_packed_prepared_bytes_neon, eq_packed_prepare_neon, eq_packed_gemm_neon},
        },
        [EQ_QFAMILY_CODEBOOK] = {   /* kernels in arm/neon_codebook.c (its sdot path: set neon-dotprod) */
            .decode = {"multiply-add", "int8 multiply-add: index -> level by tbl, activations int8 per 32, smull/smlal + sadalp",
                       eq_packed_prepared_bytes_neon, eq_packed_prepare_neon, eq_codebook_gemm_neon},
        },
    },
    .dot_f16 = dot_f16,
    .axpy_f16 = axpy_f16,
    .to_f16 = to_f16,
    .exp = exp_f32,
    .dot_q8 = dot_q8,
    .axpy_q8 = axpy_q8,
    .axpy_q4 = axpy_q4,
};

#else   /* not aarch64: the set exists but is never available */

#include "kernels.h"

static int neon_available(void)
{
    return 0;
}

const eq_kernel_set eq_kernels_neon = {.isa = "neon", .is_available = neon_available};

#endif
