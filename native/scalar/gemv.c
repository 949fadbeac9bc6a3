/* scalar/gemv.c — portable lookup-table GEMV: the T-MAC idea in plain C, with float tables; and
 * the set `scalar` (its uniform packed family's multiply-add kernels are in scalar/packed.c).
 *
 * For every group of 4 activations x[k0..k0+3] a 16-entry table T[idx] = Σ_{bit i of idx} x[k0+i]
 * is built once per input vector (prepare) and shared by all rows, bit-planes and matrices; then each plane byte of the packed
 * layout (the 4-bit indices of one row for two groups of 4) costs two lookups and two adds:
 *     plane_dot[r] += T[2c][byte & 15] + T[2c+1][byte >> 4]
 * and per group  y[r] += scale[r] * Σ_p 2^p plane_dot_p[r]  + (min[r] or -zero_point*scale[r]) * Σx.
 * Same arithmetic as ref/gemv.c (the specification) in float instead of double; the SIMD kernels
 * do the same with int8 tables. Used where no SIMD kernel set applies.
 */
#include <stdint.h>

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
                        const float *tables, float *y)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const float zero_point = eq_zero_point(type);

    for (size_t tile = 0; tile < n_tiles; tile++) {
        float acc[EQ_TILE_ROWS] = {0};
        for (size_t g = 0; g < n_groups; g++) {
            const uint8_t *block = data + tile * tile_bytes + g * block_bytes;
            const size_t width = g + 1 < n_groups ? group : eq_last_group_cols(type, cols);
            eq_prefetch_ahead(block, block_bytes);
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

/* ---- prepare and gemm ------------------------------------------------------------------------ */

static size_t padded_columns(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

/* prepared: (padded_cols / 4, 16) float tables */
static size_t bitplane_prepared_bytes(size_t cols)
{
    return padded_columns(cols) / 4 * TABLE * sizeof(float);
}

static void bitplane_prepare(const float *x, size_t cols, uint8_t *out)
{
    build_tables(x, cols, padded_columns(cols), (float *)(void *)out);
}

static void bitplane_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                          const eq_input *in, float *y, size_t y_stride)
{
    for (size_t v = 0; v < in->n; v++)
        gemv_packed(type, data, rows, cols, (const float *)(const void *)(in->prepared + v * in->stride),
                    y + v * y_stride);
}

static void plain_gemm(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                       const eq_input *in, float *y, size_t y_stride)
{
    for (size_t v = 0; v < in->n; v++)
        gemv_plain(type, data, rows, cols, in->x + v * in->cols, y + v * y_stride);
}

/* ---- attention over an fp16 KV cache ------------------------------------------------------- */

/* The reference's plain loops (ref/gemv.c) are already what portable C can do. */

/* ---- the set -------------------------------------------------------------------------------- */

static int always_available(void)
{
    return 1;
}

const eq_kernel_set eq_kernels_scalar = {
    .isa = "scalar",
    .is_available = always_available,
    .family = {
        [EQ_QFAMILY_PLAIN] = {.decode = {"float", "portable C, float accumulation", NULL, NULL, plain_gemm}},
        [EQ_QFAMILY_UNIFORM_BITPLANE] = {
            .decode = {"lut", "LUT: float tables of 4-activation subset sums, portable C",
                       bitplane_prepared_bytes, bitplane_prepare, bitplane_gemm},
        },
        [EQ_QFAMILY_UNIFORM_PACKED] = {
            .decode = {"multiply-add", "int8 multiply-add: activations int8 per 32 (float scale), portable C",
                       eq_packed_prepared_bytes_scalar, eq_packed_prepare_scalar, eq_packed_gemm_scalar},
        },
        [EQ_QFAMILY_CODEBOOK] = {   /* kernels in scalar/codebook.c */
            .decode = {"multiply-add", "int8 multiply-add: index -> int8 level, activations int8 per 32, portable C",
                       eq_packed_prepared_bytes_scalar, eq_packed_prepare_scalar, eq_codebook_gemm_scalar},
        },
    },
};
