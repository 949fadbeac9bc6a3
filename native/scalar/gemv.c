/* scalar/gemv.c — portable lookup-table GEMV: the T-MAC idea in plain C, with float tables.
 *
 * For every group of 4 activations x[k0..k0+3] a 16-entry table T[idx] = Σ_{bit i of idx} x[k0+i]
 * is built once per call and shared by all rows and bit-planes; then each plane byte of the packed
 * layout (the 4-bit indices of one row for two groups of 4) costs two lookups and two adds:
 *     plane_dot[r] += T[2c][byte & 15] + T[2c+1][byte >> 4]
 * and per group  y[r] += scale[r] * Σ_p 2^p plane_dot_p[r]  + (min[r] or -zero_point*scale[r]) * Σx.
 * Same arithmetic as ref/gemv.c (the specification) in float instead of double; the SIMD kernels
 * do the same with int8 tables. Used where no SIMD kernel set applies.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

enum { TABLE = 16 };

/* tables (Kp/4, 16): sums of every subset of each group of 4 activations (zeros past cols) */
static void build_tables(const float *x, size_t cols, size_t padded_cols, float *tables)
{
    for (size_t k0 = 0; k0 < padded_cols; k0 += 4) {
        float v[4];
        for (int i = 0; i < 4; i++)
            v[i] = k0 + (size_t)i < cols ? x[k0 + (size_t)i] : 0.0f;
        float *t = tables + (k0 / 4) * TABLE;
        t[0] = 0.0f;
        for (int idx = 1; idx < TABLE; idx++) {
            int low = __builtin_ctz((unsigned)idx);                 /* lowest set bit */
            t[idx] = t[idx & (idx - 1)] + v[low];
        }
    }
}

static void gemv_packed(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                        const float *x, float *y, float *tables)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const float zero_point = (float)((1u << type->bits) - 1u) / 2.0f;

    build_tables(x, cols, n_groups * group, tables);
    for (size_t tile = 0; tile < n_tiles; tile++) {
        float acc[EQ_TILE_ROWS] = {0};
        for (size_t g = 0; g < n_groups; g++) {
            const uint8_t *block = data + tile * tile_bytes + g * block_bytes;
            const size_t width = g + 1 < n_groups ? group : eq_last_group_cols(type, cols);
            const size_t n_chunks = width / EQ_CHUNK_COLS;
            const uint8_t *plane = block + planes_offset;              /* (bits, width/8, 16) */
            const float *group_tables = tables + g * (group / 4) * TABLE;
            float sum_x = 0.0f;                                        /* Σ x: entry 15 sums all 4 */
            for (size_t q = 0; q < width / 4; q++)
                sum_x += group_tables[q * TABLE + TABLE - 1];
            float dot[EQ_TILE_ROWS] = {0};                             /* Σ_k q[r,k] x[k] */
            for (int p = 0; p < type->bits; p++) {
                float plane_dot[EQ_TILE_ROWS] = {0};
                for (size_t c = 0; c < n_chunks; c++, plane += EQ_TILE_ROWS) {
                    const float *low = group_tables + (2 * c) * TABLE, *high = low + TABLE;
                    for (int r = 0; r < EQ_TILE_ROWS; r++)
                        plane_dot[r] += low[plane[r] & 15u] + high[plane[r] >> 4];
                }
                const float weight = (float)(1u << p);
                for (int r = 0; r < EQ_TILE_ROWS; r++)
                    dot[r] += weight * plane_dot[r];
            }
            for (int r = 0; r < EQ_TILE_ROWS; r++) {
                const float scale = eq_read_f16le(block + 2 * r);
                if (type->symmetric)
                    acc[r] += scale * (dot[r] - zero_point * sum_x);
                else
                    acc[r] += scale * dot[r] + eq_read_f16le(block + scale_bytes + 2 * r) * sum_x;
            }
        }
        for (int r = 0; r < EQ_TILE_ROWS; r++)
            if (tile * EQ_TILE_ROWS + (size_t)r < rows)
                y[tile * EQ_TILE_ROWS + (size_t)r] = acc[r];
    }
}

static void gemv_plain(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                       const float *x, float *y)
{
    for (size_t row = 0; row < rows; row++) {
        float acc = 0.0f;
        if (type->bits == 32) {
            const uint8_t *w = data + row * cols * 4;
            for (size_t k = 0; k < cols; k++)
                acc += eq_read_f32le(w + 4 * k) * x[k];
        } else {
            const uint8_t *w = data + row * cols * 2;
            for (size_t k = 0; k < cols; k++)
                acc += eq_read_f16le(w + 2 * k) * x[k];
        }
        y[row] = acc;
    }
}

/* The LUT product for the uniform bit-plane family, with its float tables. */
static void gemv_uniform_bitplane(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                  const float *x, float *y)
{
    size_t padded_cols = (cols + (size_t)type->group - 1) / (size_t)type->group * (size_t)type->group;
    float *tables = malloc(sizeof(float) * (padded_cols / 4) * TABLE);
    if (!tables) {   /* cannot happen for model-sized rows; fall back to the table-free reference */
        eq_gemv_ref(type, data, rows, cols, x, y);
        return;
    }
    gemv_packed(type, data, rows, cols, x, y, tables);
    free(tables);
}

void eq_gemv_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                    const float *x, float *y)
{
    switch ((eq_qfamily)type->family) {
    case EQ_QFAMILY_PLAIN:
        gemv_plain(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_UNIFORM_BITPLANE:
        gemv_uniform_bitplane(type, data, rows, cols, x, y);
        break;
    case EQ_QFAMILY_COUNT:
        break;   /* not a family: the entry points only pass table rows */
    }
}

/* ---- attention over an fp16 KV cache ------------------------------------------------------- */

float eq_dot_f16_scalar(const uint16_t *a, const float *b, size_t n)
{
    float dot = 0.0f;
    for (size_t i = 0; i < n; i++)
        dot += eq_fp16_to_fp32(a[i]) * b[i];
    return dot;
}

void eq_axpy_f16_scalar(float *y, float w, const uint16_t *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += w * eq_fp16_to_fp32(x[i]);
}
