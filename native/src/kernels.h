/* kernels.h — internal: the kernel signatures every ISA folder implements, and byte readers.
 *
 * Not part of the public API (edgeq.h). Kernels receive arguments already validated by the public
 * entry points in src/quant_types.c: known type, non-NULL pointers, data long enough, rows in range.
 * Each ISA folder (ref/, scalar/, later x86/, arm/) defines the same functions with its own suffix:
 *   eq_dequantize_rows_<isa>, eq_gemv_<isa>.
 */
#ifndef EDGEQ_KERNELS_H
#define EDGEQ_KERNELS_H

#include <stdint.h>
#include <string.h>

#include "edgeq.h"

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of W (rows, cols) */
typedef void (*eq_dequantize_rows_fn)(const eq_qtype_traits *type, const uint8_t *data,
                                      size_t rows, size_t cols, size_t row_begin, size_t row_count,
                                      float *out);

/* y (rows,) = W (rows, cols) x (cols,) */
typedef void (*eq_gemv_fn)(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                           size_t cols, const float *x, float *y);

/* One kernel set per ISA; src/quant_types.c holds the list and picks one at first use. */
typedef struct eq_kernel_set {
    const char *isa;                         /* "ref", "avx2", "neon" (EDGEQ_ISA values) */
    int (*is_available)(void);               /* nonzero if this CPU runs the set */
    eq_dequantize_rows_fn dequantize_rows;
    eq_gemv_fn gemv;
} eq_kernel_set;

void eq_dequantize_rows_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                            size_t cols, size_t row_begin, size_t row_count, float *out);
void eq_gemv_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const float *x, float *y);

/* scalar/: portable LUT kernels with float tables (faster than ref, no SIMD) */
void eq_gemv_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                    const float *x, float *y);

/* ---- layout helpers shared by the kernels ---------------------------------------------------- */

/* Bytes of one (tile, group) block of a packed type: scales, mins, planes. */
static inline size_t eq_block_bytes(const eq_qtype_traits *type)
{
    size_t scale_bytes = 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    return scale_bytes + (size_t)type->bits * 2u * (size_t)type->group;
}

/* Little-endian readers: the file format is little-endian and mmapped data may be unaligned. */
static inline uint16_t eq_read_u16le(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline float eq_read_f16le(const uint8_t *p)
{
    return eq_fp16_to_fp32(eq_read_u16le(p));
}

static inline float eq_read_f32le(const uint8_t *p)
{
    uint32_t bits = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                    ((uint32_t)p[3] << 24);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#endif /* EDGEQ_KERNELS_H */
