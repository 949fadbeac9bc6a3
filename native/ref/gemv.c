/* ref/gemv.c — scalar reference GEMV, y = W x, reading the packed layouts directly.
 *
 * Uniform packed family (p*g*: whole levels for the multiply-add kernels): gemv_uniform_packed,
 * the same sums level by level; codebook family (c4g*, v2g*): gemv_codebook, each index's level
 * (eq_codebook_level). Uniform bit-plane family (u*g*): gemv_packed below.
 * The specification for the LUT kernels, and structured like them: tiles of 16 rows, groups,
 * bit-planes, 16-byte chunks; per group  Σ_k q[r,k] x[k] = Σ_p 2^p Σ_k bit_p(q[r,k]) x[k],  then
 *   asymmetric  y[r] += scale[r] * Σ q x + min[r] * Σ x
 *   symmetric   y[r] += scale[r] * (Σ q x - zero_point * Σ x)
 * It never builds the dequantized matrix, and accumulates in double so that it is an accurate
 * oracle: SIMD kernels (int8 tables, fp32 sums) are compared against it with a tolerance.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* y (rows,) = W x for a packed W (rows, cols); x (cols,). Padding columns (cols .. Ks) are skipped,
 * exactly as if x were padded with zeros; padding rows (rows .. Mp) are computed and dropped. */
static void gemv_packed(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                        const float *x, float *y)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;                      /* 16 fp16 values */
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const double zero_point = (double)eq_zero_point(type);

    for (size_t tile = 0; tile < n_tiles; tile++) {
        double acc[EQ_TILE_ROWS] = {0};                                /* (16,) y of this tile */

        for (size_t g = 0; g < n_groups; g++) {
            const uint8_t *block = data + tile * tile_bytes + g * block_bytes;
            const size_t width = g + 1 < n_groups ? group : eq_last_group_cols(type, cols);
            const size_t n_chunks = width / EQ_CHUNK_COLS;
            const size_t plane_bytes = 2u * width;                     /* (width/8, 16) */
            const uint8_t *planes = block + planes_offset;             /* (bits, width/8, 16) */
            const float *x_group = x + g * group;                      /* (n_valid,) */
            const size_t n_valid = cols - g * group < group ? cols - g * group : group;

            double x_sum = 0.0;                                        /* Σ x over the group */
            for (size_t k = 0; k < n_valid; k++) {
                x_sum += x_group[k];
            }

            double dot[EQ_TILE_ROWS] = {0};                            /* (16,) Σ_k q[r,k] x[k] */
            for (int p = 0; p < type->bits; p++) {
                double plane_dot[EQ_TILE_ROWS] = {0};                  /* (16,) Σ_k bit_p x[k] */
                for (size_t c = 0; c < n_chunks; c++) {
                    const uint8_t *chunk = planes + (size_t)p * plane_bytes + c * EQ_TILE_ROWS;
                    for (int r = 0; r < EQ_TILE_ROWS; r++) {
                        /* chunk[r]: bit i = column 8c + i of row r (low nibble 0..3, high 4..7) */
                        for (size_t i = 0; i < EQ_CHUNK_COLS; i++) {
                            const size_t k = c * EQ_CHUNK_COLS + i;
                            if (k < n_valid && ((chunk[r] >> i) & 1u)) {
                                plane_dot[r] += x_group[k];
                            }
                        }
                    }
                }
                for (int r = 0; r < EQ_TILE_ROWS; r++) {
                    dot[r] += plane_dot[r] * (double)(1u << p);
                }
            }

            for (int r = 0; r < EQ_TILE_ROWS; r++) {
                const double scale = eq_read_f16le(block + 2 * r);
                if (type->symmetric) {
                    acc[r] += scale * (dot[r] - zero_point * x_sum);
                } else {
                    const double min = eq_read_f16le(block + scale_bytes + 2 * r);
                    acc[r] += scale * dot[r] + min * x_sum;
                }
            }
        }

        for (int r = 0; r < EQ_TILE_ROWS; r++) {
            const size_t row = tile * EQ_TILE_ROWS + (size_t)r;
            if (row < rows) {
                y[row] = (float)acc[r];
            }
        }
    }
}

/* y (rows,) = W x for a uniform packed W (rows, cols) (layout in edgeq.h): per tile and group,
 * Σ_k q[r,k] x[k] over the group's stored columns that are < cols, then the same scale and min (or
 * zero point) terms as the bit-plane family. The multiply-add kernels quantize x to int8; this does
 * not: it is what they approximate. */
static void gemv_uniform_packed(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                const float *x, float *y)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t header_bytes = eq_packed_header_bytes(type);
    const double zero_point = (double)eq_zero_point(type);
    const uint8_t *block = data;                                       /* blocks in (tile, group) order */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        double acc[EQ_TILE_ROWS] = {0};                                /* (16,) y of this tile */
        for (size_t g = 0; g < n_groups; g++) {
            const size_t block_cols = eq_packed_group_cols(type, cols, g);
            const uint8_t *levels = block + header_bytes;              /* (quads, 16, 4) */
            const float *x_group = x + g * group;
            const size_t n_valid = cols - g * group < block_cols ? cols - g * group : block_cols;
            double x_sum = 0.0;
            for (size_t k = 0; k < n_valid; k++)
                x_sum += x_group[k];
            for (int r = 0; r < EQ_TILE_ROWS; r++) {
                double dot = 0.0;                                      /* Σ_k q[r,k] x[k] */
                for (size_t k = 0; k < n_valid; k++)
                    dot += (double)eq_packed_level(levels, type->bits, (size_t)r, k) * x_group[k];
                const double scale = eq_read_f16le(block + 2 * r);
                if (type->symmetric)
                    acc[r] += scale * (dot - zero_point * x_sum);
                else
                    acc[r] += scale * dot + (double)eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * r) * x_sum;
            }
            block += eq_packed_block_bytes(type, block_cols);
        }
        for (int r = 0; r < EQ_TILE_ROWS; r++) {
            const size_t row = tile * EQ_TILE_ROWS + (size_t)r;
            if (row < rows)
                y[row] = (float)acc[r];
        }
    }
}

/* y (rows,) = W x for a codebook W (rows, cols) (layout in edgeq.h): per tile and group,
 * Σ_k level[r,k] x[k] over the group's columns < cols (eq_codebook_level: c4 or v2), then y[r] += scale[r] Σ + min[r] Σx
 * (symmetric: no min term; the levels carry their own zero). Float activations, double sums. */
static void gemv_codebook(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                          const float *x, float *y)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t header_bytes = eq_packed_header_bytes(type);
    const uint8_t *block = data;                                       /* tiles: codebook, then blocks */

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const int8_t *codebook = (const int8_t *)block;                /* (16,) or v2's (32,) */
        block += eq_tile_header_bytes(type);
        double acc[EQ_TILE_ROWS] = {0};                                /* (16,) y of this tile */
        for (size_t g = 0; g < n_groups; g++) {
            const size_t block_cols = eq_packed_group_cols(type, cols, g);
            const uint8_t *indices = block + header_bytes;             /* (quads, 16, 4) nibbles */
            const float *x_group = x + g * group;
            const size_t n_valid = cols - g * group < block_cols ? cols - g * group : block_cols;
            double x_sum = 0.0;
            for (size_t k = 0; k < n_valid; k++)
                x_sum += x_group[k];
            for (int r = 0; r < EQ_TILE_ROWS; r++) {
                double dot = 0.0;                                      /* Σ_k level[r,k] x[k] */
                for (size_t k = 0; k < n_valid; k++)
                    dot += (double)eq_codebook_level(type, codebook, indices, (size_t)r, k) * x_group[k];
                acc[r] += (double)eq_read_f16le(block + 2 * r) * dot;
                if (!type->symmetric)
                    acc[r] += (double)eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * r) * x_sum;
            }
            block += eq_packed_block_bytes(type, block_cols);
        }
        for (int r = 0; r < EQ_TILE_ROWS; r++) {
            const size_t row = tile * EQ_TILE_ROWS + (size_t)r;
            if (row < rows)
                y[row] = (float)acc[r];
        }
    }
}

/* y (rows,) = W x for a plain f32 or f16 W (rows, cols), row-major. */
static void gemv_plain(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                       const float *x, float *y)
{
    const size_t value_bytes = (size_t)type->bits / 8u;
    for (size_t row = 0; row < rows; row++) {
        const uint8_t *w = data + row * cols * value_bytes;           /* (cols,) */
        double acc = 0.0;
        for (size_t k = 0; k < cols; k++) {
            const float value = value_bytes == 4 ? eq_read_f32le(w + 4 * k) : eq_read_f16le(w + 2 * k);
            acc += (double)value * x[k];
        }
        y[row] = (float)acc;
    }
}

void eq_gemv_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const float *x, float *y)
{
    switch ((eq_qfamily)type->family) {
    case EQ_QFAMILY_PLAIN:
        gemv_plain(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_UNIFORM_BITPLANE:
        gemv_packed(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_UNIFORM_PACKED:
        gemv_uniform_packed(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_CODEBOOK:
        gemv_codebook(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_COUNT:
        break;   /* not a family: the entry points only pass table rows */
    }
}

/* The batched product, one vector at a time: the reference prepares nothing. */
static void gemm_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                     const eq_input *in, float *y, size_t y_stride)
{
    for (size_t v = 0; v < in->n; v++)
        eq_gemv_ref(type, data, rows, cols, in->x + v * in->cols, y + v * y_stride);
}

/* ---- attention over an fp16 KV cache ------------------------------------------------------- */

void eq_dot_f16_ref(const uint16_t *a, size_t stride, size_t n_rows, const float *b, size_t n, float *out)
{
    for (size_t r = 0; r < n_rows; r++, a += stride) {
        float dot = 0.0f;
        for (size_t i = 0; i < n; i++)
            dot += eq_fp16_to_fp32(a[i]) * b[i];
        out[r] = dot;
    }
}

void eq_axpy_f16_ref(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows, size_t n)
{
    for (size_t r = 0; r < n_rows; r++, x += stride)
        for (size_t i = 0; i < n; i++)
            y[i] += w[r] * eq_fp16_to_fp32(x[i]);
}

void eq_to_f16_ref(const float *x, size_t n, uint16_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = eq_fp32_to_fp16(x[i]);
}

/* kernels.h's steps, one value at a time */
void eq_exp_ref(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        float c = v >= EQ_EXP_LOW ? v : EQ_EXP_LOW;   /* a NaN becomes EQ_EXP_LOW here, and v below */
        c = c <= EQ_EXP_HIGH ? c : EQ_EXP_HIGH;
        const float t = c * EQ_EXP_LOG2E + EQ_EXP_ROUNDER;
        const float k = t - EQ_EXP_ROUNDER;
        uint32_t t_bits, scale_bits;
        memcpy(&t_bits, &t, sizeof t_bits);
        scale_bits = (t_bits - 0x4b400000u + 127u) << 23;   /* k + 127 in [1, 254] */
        float scale;
        memcpy(&scale, &scale_bits, sizeof scale);
        const float r = (c - k * EQ_EXP_LN2_HIGH) - k * EQ_EXP_LN2_LOW;
        float p = EQ_EXP_C5;
        p = p * r + EQ_EXP_C4;
        p = p * r + EQ_EXP_C3;
        p = p * r + EQ_EXP_C2;
        p = p * r + EQ_EXP_C1;
        p = p * r + EQ_EXP_C0;
        float e = ((p * (r * r) + r) + 1.0f) * scale;
        if (v > EQ_EXP_HIGH)
            e = INFINITY;
        else if (v < EQ_EXP_LOW)
            e = 0.0f;
        else if (v != v)
            e = v;
        y[i] = e;
    }
}

/* ---- attention over an int8 KV cache (layout in kernels.h) --------------------------------- */

/* q, scales = x (n,) as int8 levels per block of EQ_KV_Q8_BLOCK with an fp16 scale: the scale is
 * max |x| / 127 rounded to fp16 (the largest finite fp16 if that overflows; NaNs are ignored for the
 * maximum and stored as 0), a level x / scale rounded to nearest, clamped to [-127, 127]. */
void eq_kv_q8_quantize(const float *x, size_t n, int8_t *q, uint16_t *scales)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
        float amax = 0.0f;
        for (size_t i = begin; i < end; i++)
            if (fabsf(x[i]) > amax)
                amax = fabsf(x[i]);
        uint16_t bits = eq_fp32_to_fp16(amax / 127.0f);
        float scale = eq_fp16_to_fp32(bits);
        if (!(scale <= 65504.0f)) {   /* overflowed to infinity */
            bits = 0x7bff;
            scale = 65504.0f;
        }
        scales[block] = bits;
        float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (size_t i = begin; i < end; i++) {
            float level = x[i] * inverse;
            level = level > 127.0f ? 127.0f : level < -127.0f ? -127.0f : level;   /* NaN stays NaN */
            q[i] = level == level ? (int8_t)lrintf(level) : 0;
        }
    }
}

/* Σ_b d[b] Σ_{i in b} q[i] b[i]: float sums in index order within a block, then over blocks */
float eq_dot_q8_ref(const int8_t *a, const uint16_t *scales, const float *b, size_t n)
{
    float dot = 0.0f;
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
        float sum = 0.0f;
        for (size_t i = begin; i < end; i++)
            sum += (float)a[i] * b[i];
        dot += eq_fp16_to_fp32(scales[block]) * sum;
    }
    return dot;
}

/* y[i] += (w d[b]) q[i] */
void eq_axpy_q8_ref(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
        float weight = w * eq_fp16_to_fp32(scales[block]);
        for (size_t i = begin; i < end; i++)
            y[i] += weight * (float)x[i];
    }
}

/* ---- attention over an int4 value cache (layout in kernels.h) ------------------------------ */

/* q, scales = x (n,) as int4 levels per block of EQ_KV_Q4_BLOCK with an fp16 scale: m is the block's
 * value of largest magnitude (the first of equals; NaNs are ignored and stored as level 0), the scale
 * m / -8 rounded to fp16 (-+65504 if that overflows), a level x / scale rounded to nearest, clamped to
 * [-8, 7], stored + 8 in nibble i % 2 (low first) of byte i / 2. */
void eq_kv_q4_quantize(const float *x, size_t n, uint8_t *q, uint16_t *scales)
{
    memset(q, 0, (n + 1) / 2);
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n;
        float largest = 0.0f;
        for (size_t i = begin; i < end; i++)
            if (fabsf(x[i]) > fabsf(largest))
                largest = x[i];
        uint16_t bits = eq_fp32_to_fp16(largest / -8.0f);
        float scale = eq_fp16_to_fp32(bits);
        if (!(fabsf(scale) <= 65504.0f)) {   /* overflowed to infinity */
            bits = scale > 0.0f ? 0x7bff : 0xfbff;
            scale = scale > 0.0f ? 65504.0f : -65504.0f;
        } else if (scale == 0.0f) {           /* all zeros (or under fp16's range): +0, not -0 */
            bits = 0;
        }
        scales[block] = bits;
        float inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
        for (size_t i = begin; i < end; i++) {
            float level = x[i] * inverse;
            level = level > 7.0f ? 7.0f : level < -8.0f ? -8.0f : level;   /* NaN stays NaN */
            long stored = (level == level ? lrintf(level) : 0) + 8;
            q[i / 2] |= (uint8_t)(stored << (4 * (i % 2)));
        }
    }
}

/* y[i] += (w d[b]) q[i] */
void eq_axpy_q4_ref(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n)
{
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n;
        float weight = w * eq_fp16_to_fp32(scales[block]);
        for (size_t i = begin; i < end; i++)
            y[i] += weight * (float)(((x[i / 2] >> (4 * (i % 2))) & 15) - 8);
    }
}

/* ---- the set -------------------------------------------------------------------------------- */

static int always_available(void)
{
    return 1;
}

const eq_kernel_set eq_kernels_ref = {
    .isa = "ref",
    .is_available = always_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = {
            .decode = {"reference", "reference: double accumulation", NULL, NULL, gemm_ref},
            .dequantize_rows = eq_dequantize_rows_ref,
        },
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"reference", "reference: bit by bit, double accumulation", NULL, NULL, gemm_ref},
            .dequantize_rows = eq_dequantize_rows_ref,
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = {
            .decode = {"reference", "reference: level by level, float activations, double accumulation",
                       NULL, NULL, gemm_ref},
            .dequantize_rows = eq_dequantize_rows_ref,
        },
        [EQ_QFAMILY_CODEBOOK] = {
            .decode = {"reference", "reference: index -> level by level, float activations, double accumulation",
                       NULL, NULL, gemm_ref},
            .dequantize_rows = eq_dequantize_rows_ref,
        },
    },
    .dot_f16 = eq_dot_f16_ref,
    .axpy_f16 = eq_axpy_f16_ref,
    .to_f16 = eq_to_f16_ref,
    .exp = eq_exp_ref,
    .dot_q8 = eq_dot_q8_ref,
    .axpy_q8 = eq_axpy_q8_ref,
    .axpy_q4 = eq_axpy_q4_ref,
};
