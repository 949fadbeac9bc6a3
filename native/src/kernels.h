/* kernels.h — internal: the kernel signatures every ISA folder implements, and byte readers.
 *
 * Not part of the public API (edgeq.h). Kernels receive arguments already validated by the public
 * entry points in src/quant_types.c: known type, non-NULL pointers, data long enough, rows in range.
 * Each ISA folder (ref/, scalar/, x86/, later arm/) defines the functions of one kernel set with its
 * own suffix: eq_dequantize_rows_<isa>, eq_gemv_<isa>, and for the LUT sets eq_prepare_<isa>,
 * eq_gemm_<isa> (the batched product over prepared activations).
 */
#ifndef EDGEQ_KERNELS_H
#define EDGEQ_KERNELS_H

#include <stdint.h>
#include <string.h>

#include "edgeq.h"

/* Activations prepared for a kernel set: n vectors of cols floats, plus whatever that set's
 * prepare step derives from them once per input (the LUT kernels' int8 tables), so every matrix
 * multiplied by the same input (q/k/v, gate/up) and every thread shares one copy. */
enum {
    EQ_ACTS_PAD = 128,          /* columns are padded with zeros to a multiple of the largest group */
    EQ_LUT_UNIT = 64,           /* activations per int8 table scale */
    EQ_LUT_BYTES_PER_COL = 8    /* 16 two-byte entries per 4 activations */
};

typedef struct eq_acts {
    size_t n, cols, padded_cols;    /* padded_cols: cols rounded up to EQ_ACTS_PAD */
    const float *x;                 /* (n, cols) row-major, the caller's */
    int8_t *tables;                 /* (capacity, padded_cols * 4) set-specific table layout */
    float *table_scales;            /* (capacity, padded_cols / EQ_LUT_UNIT) */
    float *sums;                    /* (capacity, padded_cols / 32) Σ x per 32 columns */
    size_t capacity_bytes;          /* of tables; scales and sums are sized to match */
} eq_acts;

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of W (rows, cols) */
typedef void (*eq_dequantize_rows_fn)(const eq_qtype_traits *type, const uint8_t *data,
                                      size_t rows, size_t cols, size_t row_begin, size_t row_count,
                                      float *out);

/* y (rows,) = W (rows, cols) x (cols,) */
typedef void (*eq_gemv_fn)(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                           size_t cols, const float *x, float *y);

/* Fill the set's derived data for vectors [first, first + count) of acts (threads split n). */
typedef void (*eq_prepare_fn)(eq_acts *acts, size_t first, size_t count);

/* y[v * y_stride + r] = (W acts->x[v])[r] for every vector v < acts->n and row r < rows */
typedef void (*eq_gemm_fn)(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                           size_t cols, const eq_acts *acts, float *y, size_t y_stride);

/* Attention over an fp16 KV cache: Σ a[i] b[i], and y[i] += w x[i], for fp16 a / x. */
typedef float (*eq_dot_f16_fn)(const uint16_t *a, const float *b, size_t n);
typedef void (*eq_axpy_f16_fn)(float *y, float w, const uint16_t *x, size_t n);

/* One kernel set per ISA; src/quant_types.c holds the list and picks one at first use.
 * A set without prepare/gemm reads x directly and multiplies one vector at a time with gemv. */
typedef struct eq_kernel_set {
    const char *isa;                         /* "ref", "scalar", "avx2" (EDGEQ_ISA values) */
    int (*is_available)(void);               /* nonzero if this CPU runs the set */
    eq_dequantize_rows_fn dequantize_rows;
    eq_gemv_fn gemv;                         /* used when gemm is NULL */
    eq_prepare_fn prepare;                   /* NULL: nothing to derive */
    eq_gemm_fn gemm;                         /* NULL: gemv per vector */
    eq_dot_f16_fn dot_f16;
    eq_axpy_f16_fn axpy_f16;
} eq_kernel_set;

/* The active set (selected at first use) and the generic entry points built on a set; the model
 * takes the set once per evaluation so that prepare and gemm always come from the same one. */
const eq_kernel_set *eq_active_kernels(void);
int eq_acts_reserve(eq_acts *acts, size_t n, size_t cols);    /* grow buffers; EQ_ERR_NO_MEMORY */
void eq_acts_free(eq_acts *acts);
void eq_acts_bind(eq_acts *acts, const float *x, size_t n, size_t cols);   /* after reserve */
void eq_acts_prepare(const eq_kernel_set *set, eq_acts *acts, size_t first, size_t count);
void eq_gemm_prepared(const eq_kernel_set *set, const eq_qtype_traits *type, const uint8_t *data,
                      size_t rows, size_t cols, const eq_acts *acts, float *y, size_t y_stride);

/* *out = bytes of a (rows >= 1, cols >= 1) tensor of `type`, or EQ_ERR_SIZE_OVERFLOW (or
 * EQ_ERR_UNKNOWN_QTYPE: a family without a size rule). eq_padded_tail_nbytes: in the layout of
 * files without the "compact-tail" feature, a partial last group padded to G columns. */
int eq_tensor_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out);
int eq_padded_tail_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out);

/* out (eq_tensor_nbytes) = the bit-plane tensor `padded` (eq_padded_tail_nbytes) with its partial
 * last group cut to eq_last_group_cols columns; only for cols % G != 0. */
void eq_compact_tail(const eq_qtype_traits *type, const uint8_t *padded, size_t rows, size_t cols,
                     uint8_t *out);

void eq_dequantize_rows_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                            size_t cols, size_t row_begin, size_t row_count, float *out);
void eq_gemv_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const float *x, float *y);

/* scalar/: portable LUT kernels with float tables (faster than ref, no SIMD) */
void eq_gemv_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                    const float *x, float *y);
float eq_dot_f16_scalar(const uint16_t *a, const float *b, size_t n);
void eq_axpy_f16_scalar(float *y, float w, const uint16_t *x, size_t n);

/* x86/: AVX2 + FMA + F16C LUT kernels with int8 tables (pshufb) */
int eq_avx2_available(void);
void eq_prepare_avx2(eq_acts *acts, size_t first, size_t count);
void eq_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                  const eq_acts *acts, float *y, size_t y_stride);
float eq_dot_f16_avx2(const uint16_t *a, const float *b, size_t n);
void eq_axpy_f16_avx2(float *y, float w, const uint16_t *x, size_t n);

/* ---- layout helpers shared by the kernels ---------------------------------------------------- */

/* A bit-plane tensor of K = cols columns is ceil(K / G) groups per tile: every group but the last
 * holds G columns, the last one K - (n_groups - 1) G weights stored in eq_last_group_cols columns
 * (a multiple of EQ_GROUP_STEP). Group g of a tile starts g * eq_block_bytes(type) into the tile. */

/* Bytes of one (tile, group) block of `width` stored columns: scales, mins, planes. */
static inline size_t eq_group_block_bytes(const eq_qtype_traits *type, size_t width)
{
    size_t scale_bytes = 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    return scale_bytes + (size_t)type->bits * 2u * width;
}

/* Bytes of a whole (tile, group) block: scales, mins, planes of G columns. */
static inline size_t eq_block_bytes(const eq_qtype_traits *type)
{
    return eq_group_block_bytes(type, (size_t)type->group);
}

/* Stored columns of the last group of a row of cols >= 1 weights: G, or a partial group's
 * columns rounded up to EQ_GROUP_STEP. */
static inline size_t eq_last_group_cols(const eq_qtype_traits *type, size_t cols)
{
    size_t last = (cols - 1) % (size_t)type->group + 1;
    return (last + EQ_GROUP_STEP - 1) / EQ_GROUP_STEP * EQ_GROUP_STEP;
}

/* Bytes of one tile (16 rows) of a (rows, cols >= 1) tensor; the caller has checked that the whole
 * tensor's size does not overflow (eq_qtype_nbytes), so neither does this. */
static inline size_t eq_tile_bytes(const eq_qtype_traits *type, size_t cols)
{
    size_t n_groups = (cols - 1) / (size_t)type->group + 1;
    return (n_groups - 1) * eq_block_bytes(type) + eq_group_block_bytes(type, eq_last_group_cols(type, cols));
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
