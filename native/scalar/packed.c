/* scalar/packed.c — portable int8 multiply-add for the uniform packed family (p*g*), set `scalar`.
 *
 * The algorithm every multiply-add set runs, in plain C (the model for a NEON sdot port):
 * prepare quantizes each input vector once to int8 per block of 32 activations,
 *     s_b = max |x| / 127 over block b,   xq = round(x / s_b) in [-127, 127],
 * and keeps Σx̂ = s_b Σ xq per block: the min / zero-point term sees the same rounded activations
 * as the levels, so the product is exactly W x̂ (with Σx from x itself it would be off by
 * Σ (w - min) Δx, twice as much for centred weights: +1.7 % perplexity on SmolLM2 8-bit against
 * +0.3 % measured). gemm then reads the levels whole (layout in edgeq.h) and per 16-row tile and block
 *     dot[r] = Σ_k q[r,k] xq[k]          (int32: |dot| <= 32 x 255 x 127, no overflow)
 *     group[r] += s_b dot[r]             (float)
 * and per group  y[r] += scale[r] group[r] + (min[r] or -zero_point scale[r]) Σx.
 * Error against the reference: |x - s_b xq| <= s_b / 2, so |Δy[r]| <= Σ_k |w[r,k]| s_b(k) / 2
 * (tests/test_native_quant.py holds every set to this bound). Not the specification (ref/gemv.c is).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

/* The prepared layout (int8 xq, then per block of 32: float scale, int32 Σ xq, float Σx̂) is
 * packed_acts.h's, shared by every set's packed path. */
size_t eq_packed_prepared_bytes_scalar(size_t cols)
{
    return eq_packed_acts_bytes(cols);
}

void eq_packed_prepare_scalar(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = eq_packed_acts_padded(cols);
    const eq_packed_acts a = eq_packed_acts_at(out, cols);
    for (size_t b = 0; b < padded / BLOCK; b++) {
        float largest = 0.0f;
        for (size_t k = b * BLOCK; k < (b + 1) * BLOCK && k < cols; k++)
            largest = fabsf(x[k]) > largest ? fabsf(x[k]) : largest;
        const float inv = largest > 0.0f ? 127.0f / largest : 0.0f;
        int32_t xq_sum = 0;
        for (size_t k = b * BLOCK; k < (b + 1) * BLOCK; k++) {
            a.xq[k] = k < cols ? (int8_t)lrintf(x[k] * inv) : 0;
            xq_sum += a.xq[k];
        }
        a.scale[b] = largest / 127.0f;
        a.xq_sum[b] = xq_sum;
        a.sum[b] = a.scale[b] * (float)xq_sum;
    }
}

/* dot[r] (16,) = Σ over the 32 columns of one block of q[r,k] xq[k]; levels at the block's first quad */
static void block_dot(const uint8_t *levels, int bits, const int8_t *xq, int32_t dot[EQ_TILE_ROWS])
{
    memset(dot, 0, EQ_TILE_ROWS * sizeof dot[0]);
    if (bits == 4) {                                   /* 4 quads of 8 columns: low, high nibbles */
        for (int j = 0; j < BLOCK / 8; j++, levels += 64)
            for (int r = 0; r < EQ_TILE_ROWS; r++)
                for (int i = 0; i < 4; i++) {
                    const uint8_t byte = levels[r * 4 + i];
                    dot[r] += (byte & 15) * xq[8 * j + i] + (byte >> 4) * xq[8 * j + 4 + i];
                }
        return;
    }
    if (bits == 8) {
        for (int j = 0; j < BLOCK / 4; j++, levels += 64)   /* 8 quads of 4 columns, a byte each */
            for (int r = 0; r < EQ_TILE_ROWS; r++)
                for (int i = 0; i < 4; i++)
                    dot[r] += levels[r * 4 + i] * xq[4 * j + i];
        return;
    }
    for (int r = 0; r < EQ_TILE_ROWS; r++)                     /* 2, 3, 5, 6 bits: planes of fields */
        for (int k = 0; k < BLOCK; k++)
            dot[r] += (int32_t)eq_packed_level(levels, bits, (size_t)r, (size_t)k) * xq[k];
}

void eq_packed_gemm_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const float zero_point = eq_zero_point(type);

    for (size_t tile = 0; tile < n_tiles; tile++) {
        for (size_t v = 0; v < in->n; v++) {
            const eq_packed_acts x = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            const uint8_t *block = data + tile * tile_bytes;
            float acc[EQ_TILE_ROWS] = {0};
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = eq_packed_group_cols(type, cols, g);
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
                float group_dot[EQ_TILE_ROWS] = {0}, sum_x = 0.0f;
                for (size_t c = 0; c < block_cols; c += BLOCK) {
                    const size_t b = (g * group + c) / BLOCK;
                    int32_t dot[EQ_TILE_ROWS];
                    block_dot(block + header_bytes + c / BLOCK * eq_packed_run_bytes(type->bits), type->bits,
                              x.xq + b * BLOCK, dot);
                    for (int r = 0; r < EQ_TILE_ROWS; r++)
                        group_dot[r] += x.scale[b] * (float)dot[r];
                    sum_x += x.sum[b];
                }
                for (int r = 0; r < EQ_TILE_ROWS; r++) {
                    const float scale = eq_read_f16le(block + 2 * r);
                    if (type->symmetric)
                        acc[r] += scale * (group_dot[r] - zero_point * sum_x);
                    else
                        acc[r] += scale * group_dot[r] + eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * r) * sum_x;
                }
                block += eq_packed_block_bytes(type, block_cols);
            }
            const size_t row0 = tile * EQ_TILE_ROWS;
            const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, acc, n_rows * sizeof(float));
        }
    }
}
