/* scalar/codebook.c — portable int8 multiply-add for the codebook family (c4g*, v2g*), set `scalar`.
 *
 * The packed family's algorithm (scalar/packed.c, whose prepare it shares: int8 activations per
 * block of 32 with a float scale s_b, Σ xq and Σx̂ = s_b Σ xq per block), with each 4-bit index turned
 * into its tile's int8 level by a table lookup first (v2: each index into two, block_dot). Per 16-row
 * tile and block of 32 columns
 *     dot[r] = Σ_k codebook[index[r,k]] xq[k]     (int32: |dot| <= 32 x 64 x 127, exact)
 *     group[r] += s_b dot[r]                       (float)
 * and per group  y[r] += scale[r] group[r] (+ min[r] Σx̂, asymmetric types). No zero point: the
 * levels are signed. Error against the reference as the packed family's: |Δy[r]| <= Σ_k |w[r,k]| s_b(k) / 2.
 * Not the specification (ref/gemv.c is); the SIMD sets (x86/avx2_codebook.c, ...) fuse what this
 * rounds twice, so they agree with it within that bound, not bit for bit.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

/* dot[r] (16,) = Σ over one block's 32 columns of level[r,k] xq[k]; indices: the block's first quad.
 * c4 (span 1): 4 quads of 8 columns, low nibbles columns 8j..8j+3, high nibbles 8j+4..8j+7, each a
 * codebook[index]; v2 (span 2): 2 quads of 16 columns, low nibble P of byte (r, i) gives columns
 * 16j+i (codebook[P]) and 16j+4+i (codebook[16 + P]), the high one Q columns 16j+8+i and 16j+12+i. */
static void block_dot(const uint8_t *indices, const int8_t *codebook, size_t span, const int8_t *xq,
                      int32_t dot[EQ_TILE_ROWS])
{
    memset(dot, 0, EQ_TILE_ROWS * sizeof dot[0]);
    for (size_t j = 0; j < BLOCK / (8 * span); j++, indices += 64) {
        const int8_t *x = xq + 8 * span * j;
        for (int r = 0; r < EQ_TILE_ROWS; r++)
            for (int i = 0; i < 4; i++) {
                const uint8_t byte = indices[r * 4 + i];
                if (span == 1) {
                    dot[r] += codebook[byte & 15] * x[i] + codebook[byte >> 4] * x[4 + i];
                } else {
                    dot[r] += codebook[byte & 15] * x[i] + codebook[EQ_CODEBOOK_SIZE + (byte & 15)] * x[4 + i] +
                              codebook[byte >> 4] * x[8 + i] + codebook[EQ_CODEBOOK_SIZE + (byte >> 4)] * x[12 + i];
                }
            }
    }
}

void eq_codebook_gemm_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                             const eq_input *in, float *y, size_t y_stride)
{
    const size_t group = (size_t)type->group;
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const size_t span = eq_codebook_span(type);
        int8_t codebook[2 * EQ_CODEBOOK_SIZE];
        memcpy(codebook, data + tile * tile_bytes, eq_tile_header_bytes(type));
        for (size_t v = 0; v < in->n; v++) {
            const eq_packed_acts x = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            const uint8_t *block = data + tile * tile_bytes + eq_tile_header_bytes(type);
            float acc[EQ_TILE_ROWS] = {0};
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = eq_packed_group_cols(type, cols, g);
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
                float group_dot[EQ_TILE_ROWS] = {0}, sum_x = 0.0f;
                for (size_t c = 0; c < block_cols; c += BLOCK) {
                    const size_t b = (g * group + c) / BLOCK;
                    int32_t dot[EQ_TILE_ROWS];
                    block_dot(block + header_bytes + c * 8 / span, codebook, span, x.xq + b * BLOCK, dot);
                    for (int r = 0; r < EQ_TILE_ROWS; r++)
                        group_dot[r] += x.scale[b] * (float)dot[r];
                    sum_x += x.sum[b];
                }
                for (int r = 0; r < EQ_TILE_ROWS; r++) {
                    acc[r] += eq_read_f16le(block + 2 * r) * group_dot[r];
                    if (!type->symmetric)
                        acc[r] += eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * r) * sum_x;
                }
                block += eq_packed_block_bytes(type, block_cols);
            }
            const size_t row0 = tile * EQ_TILE_ROWS;
            const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, acc, n_rows * sizeof(float));
        }
    }
}
