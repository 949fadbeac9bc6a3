/* ref/dequant.c — scalar reference dequantization: packed bytes -> float32 rows.
 *
 * Part of the specification the SIMD kernels are tested against; reads the canonical layout
 * byte by byte (see edgeq.h / edgeq/quant_types.py) and is written for clarity, not speed.
 * Must agree bit for bit with edgeq.quant_types.dequantize: each value is computed in float32 with
 * one rounding per operation, so the build uses -ffp-contract=off (no fused multiply-add).
 */
#include <stdint.h>

#include "kernels.h"

/* Level q in [0, 2^bits) of row `lane` of a tile, column `col` of a group (0 <= col < width).
 *   planes   (bits, width/8, 16) bytes: plane p, chunk c, tile row r at p*2*width + c*16 + r */
static unsigned packed_level(const uint8_t *planes, int bits, size_t width, size_t lane, size_t col)
{
    const size_t chunk = col / EQ_CHUNK_COLS;
    const unsigned bit = (unsigned)(col % EQ_CHUNK_COLS);  /* low nibble: 0..3, high nibble: 4..7 */
    unsigned level = 0;
    for (int p = 0; p < bits; p++) {
        const uint8_t byte = planes[(size_t)p * 2 * width + chunk * EQ_TILE_ROWS + lane];
        level |= ((byte >> bit) & 1u) << p;
    }
    return level;
}

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of a packed (rows, cols) tensor.
 *   data   (ceil(rows/16), ceil(cols/G)) blocks of eq_block_bytes(type) bytes, the last group of
 *          each tile eq_group_block_bytes(type, eq_last_group_cols(type, cols)) */
static void dequantize_rows_packed(const eq_qtype_traits *type, const uint8_t *data, size_t cols,
                                   size_t row_begin, size_t row_count, float *out)
{
    const size_t group = (size_t)type->group;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_tile_bytes(type, cols);
    const size_t block_bytes = eq_block_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;                      /* 16 fp16 values */
    const size_t planes_offset = scale_bytes * (type->symmetric ? 1u : 2u);
    const float zero_point = eq_zero_point(type);  /* symmetric: 0.5 .. 127.5, z types 8 .. 128 */

    for (size_t i = 0; i < row_count; i++) {
        const size_t row = row_begin + i;
        const size_t tile = row / EQ_TILE_ROWS;
        const size_t lane = row % EQ_TILE_ROWS;
        float *out_row = out + i * cols;                               /* (cols,) */

        for (size_t g = 0; g < n_groups; g++) {
            const uint8_t *block = data + tile * tile_bytes + g * block_bytes;
            const size_t width = g + 1 < n_groups ? group : eq_last_group_cols(type, cols);
            const float scale = eq_read_f16le(block + 2 * lane);
            const float min = type->symmetric ? 0.0f : eq_read_f16le(block + scale_bytes + 2 * lane);
            const uint8_t *planes = block + planes_offset;
            const size_t col_begin = g * group;
            const size_t col_end = col_begin + group < cols ? col_begin + group : cols;

            for (size_t col = col_begin; col < col_end; col++) {
                const float level =
                    (float)packed_level(planes, type->bits, width, lane, col - col_begin);
                if (type->symmetric) {
                    out_row[col] = scale * (level - zero_point);
                } else {
                    const float scaled = scale * level;  /* rounded, then the min added: no FMA */
                    out_row[col] = scaled + min;
                }
            }
        }
    }
}

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of a uniform packed tensor:
 * the same values as the bit-plane family, levels read whole (edgeq.h's layout). */
static void dequantize_rows_uniform_packed(const eq_qtype_traits *type, const uint8_t *data, size_t cols,
                                           size_t row_begin, size_t row_count, float *out)
{
    const size_t group = (size_t)type->group;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const float zero_point = eq_zero_point(type);

    for (size_t i = 0; i < row_count; i++) {
        const size_t row = row_begin + i;
        const size_t lane = row % EQ_TILE_ROWS;
        const uint8_t *block = data + row / EQ_TILE_ROWS * tile_bytes;
        float *out_row = out + i * cols;                               /* (cols,) */
        for (size_t g = 0; g < n_groups; g++) {
            const size_t block_cols = eq_packed_group_cols(type, cols, g);
            const float scale = eq_read_f16le(block + 2 * lane);
            const float min = type->symmetric ? 0.0f : eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * lane);
            const size_t col_end = g * group + block_cols < cols ? g * group + block_cols : cols;
            for (size_t col = g * group; col < col_end; col++) {
                const float level = (float)eq_packed_level(block + header_bytes, type->bits, lane, col - g * group);
                if (type->symmetric) {
                    out_row[col] = scale * (level - zero_point);
                } else {
                    const float scaled = scale * level;  /* rounded, then the min added: no FMA */
                    out_row[col] = scaled + min;
                }
            }
            block += eq_packed_block_bytes(type, block_cols);
        }
    }
}

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of a codebook tensor (edgeq.h):
 * w = scale * level (+ min), the level its index selects (eq_codebook_level: c4 or v2). */
static void dequantize_rows_codebook(const eq_qtype_traits *type, const uint8_t *data, size_t cols,
                                     size_t row_begin, size_t row_count, float *out)
{
    const size_t group = (size_t)type->group;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);

    for (size_t i = 0; i < row_count; i++) {
        const size_t row = row_begin + i;
        const size_t lane = row % EQ_TILE_ROWS;
        const int8_t *codebook = (const int8_t *)(data + row / EQ_TILE_ROWS * tile_bytes);   /* (16 or 32,) */
        const uint8_t *block = data + row / EQ_TILE_ROWS * tile_bytes + eq_tile_header_bytes(type);
        float *out_row = out + i * cols;                               /* (cols,) */
        for (size_t g = 0; g < n_groups; g++) {
            const size_t block_cols = eq_packed_group_cols(type, cols, g);
            const float scale = eq_read_f16le(block + 2 * lane);
            const float min = type->symmetric ? 0.0f : eq_read_f16le(block + 2 * EQ_TILE_ROWS + 2 * lane);
            const size_t col_end = g * group + block_cols < cols ? g * group + block_cols : cols;
            for (size_t col = g * group; col < col_end; col++) {
                const int level = eq_codebook_level(type, codebook, block + header_bytes, lane, col - g * group);
                const float scaled = scale * (float)level;
                out_row[col] = type->symmetric ? scaled : scaled + min;   /* two roundings: no FMA */
            }
            block += eq_packed_block_bytes(type, block_cols);
        }
    }
}

/* out (row_count, cols) = rows of a plain f32 or f16 (rows, cols) row-major tensor. */
static void dequantize_rows_plain(const eq_qtype_traits *type, const uint8_t *data, size_t cols,
                                  size_t row_begin, size_t row_count, float *out)
{
    const size_t value_bytes = (size_t)type->bits / 8u;
    const uint8_t *src = data + row_begin * cols * value_bytes;
    const size_t count = row_count * cols;
    for (size_t i = 0; i < count; i++) {
        out[i] = value_bytes == 4 ? eq_read_f32le(src + 4 * i) : eq_read_f16le(src + 2 * i);
    }
}

void eq_dequantize_rows_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                            size_t cols, size_t row_begin, size_t row_count, float *out)
{
    (void)rows;  /* already checked: row_begin + row_count <= rows */
    switch ((eq_qfamily)type->family) {
    case EQ_QFAMILY_PLAIN:
        dequantize_rows_plain(type, data, cols, row_begin, row_count, out);
        break;
    case EQ_QFAMILY_UNIFORM_BITPLANE:
        dequantize_rows_packed(type, data, cols, row_begin, row_count, out);
        break;
    case EQ_QFAMILY_UNIFORM_PACKED:
        dequantize_rows_uniform_packed(type, data, cols, row_begin, row_count, out);
        break;
    case EQ_QFAMILY_CODEBOOK:
        dequantize_rows_codebook(type, data, cols, row_begin, row_count, out);
        break;
    case EQ_QFAMILY_COUNT:
        break;   /* not a family: the entry points only pass table rows */
    }
}
