/* edgeq.h — the one public header of the edgeq C runtime.
 *
 * For now: the quant-type table (mirror of edgeq/quant_types.py), the packed-layout helpers and the
 * reference-or-SIMD dequantize/GEMV entry points. The loader and forward pass will be added here.
 *
 * The text between the EQ_CDEF_BEGIN and EQ_CDEF_END markers is fed verbatim to cffi's cdef
 * (native/build_ffi.py), which does not run the preprocessor: keep that block free of #directives
 * and macros, and use enum constants instead of #defines there.
 *
 * Packed layout of a uniform grouped tensor W (M, K) with b bits and group G (see quant_types.py):
 *   K padded to Kp = ceil(K/G)*G, M padded to Mp = ceil(M/16)*16; tiles of 16 rows; the tensor is
 *   (Mp/16, Kp/G) blocks, each: scale[16] fp16, min[16] fp16 (asymmetric only), then b planes of
 *   2*G bytes = G/8 chunks of 16 bytes (byte r = row r of the tile; bit i = column 8c+i of the
 *   chunk). All fp16 values are little-endian.
 *     asymmetric  w = scale * q + min
 *     symmetric   w = scale * (q - (2^b - 1) / 2)
 * Plain types (f32, f16) are (M, K) row-major little-endian floats.
 */
#ifndef EDGEQ_H
#define EDGEQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* EQ_CDEF_BEGIN */

/* ---------------------------------------------------------------------------------------------
 * errors: every function that can fail returns 0 (EQ_OK) or one of these negative codes
 * ------------------------------------------------------------------------------------------- */

typedef enum eq_error {
    EQ_OK = 0,
    EQ_ERR_INVALID_ARGUMENT = -1,  /* NULL pointer, or a zero row/column count */
    EQ_ERR_UNKNOWN_QTYPE = -2,     /* id is not in the quant-type table */
    EQ_ERR_SIZE_OVERFLOW = -3,     /* the tensor's byte size does not fit in size_t */
    EQ_ERR_DATA_TOO_SHORT = -4,    /* data_bytes < eq_qtype_nbytes(id, rows, cols) */
    EQ_ERR_ROW_RANGE = -5          /* row_begin + row_count > rows */
} eq_error;

/* A static, human-readable description of an error code ("unknown error" for other values). */
const char *eq_error_string(int code);

/* ---------------------------------------------------------------------------------------------
 * quant types: ids equal the Python ids in edgeq/quant_types.py (f32, f16, then
 * u{bits}g{group}{a|s} for bits in 2,3,4,5,6,8, group in 32,64,128, asymmetric before symmetric)
 * ------------------------------------------------------------------------------------------- */

typedef enum eq_qtype {
    EQ_QTYPE_F32 = 0,
    EQ_QTYPE_F16 = 1,
    EQ_QTYPE_U2G32A = 2,
    EQ_QTYPE_U2G32S = 3,
    EQ_QTYPE_U2G64A = 4,
    EQ_QTYPE_U2G64S = 5,
    EQ_QTYPE_U2G128A = 6,
    EQ_QTYPE_U2G128S = 7,
    EQ_QTYPE_U3G32A = 8,
    EQ_QTYPE_U3G32S = 9,
    EQ_QTYPE_U3G64A = 10,
    EQ_QTYPE_U3G64S = 11,
    EQ_QTYPE_U3G128A = 12,
    EQ_QTYPE_U3G128S = 13,
    EQ_QTYPE_U4G32A = 14,
    EQ_QTYPE_U4G32S = 15,
    EQ_QTYPE_U4G64A = 16,
    EQ_QTYPE_U4G64S = 17,
    EQ_QTYPE_U4G128A = 18,
    EQ_QTYPE_U4G128S = 19,
    EQ_QTYPE_U5G32A = 20,
    EQ_QTYPE_U5G32S = 21,
    EQ_QTYPE_U5G64A = 22,
    EQ_QTYPE_U5G64S = 23,
    EQ_QTYPE_U5G128A = 24,
    EQ_QTYPE_U5G128S = 25,
    EQ_QTYPE_U6G32A = 26,
    EQ_QTYPE_U6G32S = 27,
    EQ_QTYPE_U6G64A = 28,
    EQ_QTYPE_U6G64S = 29,
    EQ_QTYPE_U6G128A = 30,
    EQ_QTYPE_U6G128S = 31,
    EQ_QTYPE_U8G32A = 32,
    EQ_QTYPE_U8G32S = 33,
    EQ_QTYPE_U8G64A = 34,
    EQ_QTYPE_U8G64S = 35,
    EQ_QTYPE_U8G128A = 36,
    EQ_QTYPE_U8G128S = 37,
    EQ_QTYPE_COUNT = 38
} eq_qtype;

/* Layout constants shared by every packed type. */
enum {
    EQ_TILE_ROWS = 16,  /* rows per tile: one plane byte per row, 16 bytes per chunk */
    EQ_CHUNK_COLS = 8   /* columns covered by one plane byte (low nibble 0..3, high nibble 4..7) */
};

/* One row of the quant-type table. */
typedef struct eq_qtype_traits {
    const char *name;  /* as stored in the file, e.g. "u4g64a" */
    int id;            /* the eq_qtype value; equals the row's index in the table */
    int bits;          /* bits per weight before scales (32 / 16 for plain types) */
    int group;         /* weights per scale along K (0 for plain types) */
    bool symmetric;    /* scale only, zero point (2^bits - 1) / 2; else scale and min */
    bool plain;        /* stored as a plain float tensor, not packed */
} eq_qtype_traits;

/* The table row for `id`, or NULL if id is not a quant type. The pointer is to static storage. */
const eq_qtype_traits *eq_qtype_get(int id);

/* Number of rows in the table (EQ_QTYPE_COUNT); ids are 0 .. count-1. */
int eq_qtype_count(void);

/* The id of the type called `name` (e.g. "u3g128s"), or -1 if unknown or name is NULL. */
int eq_qtype_from_name(const char *name);

/* Bytes of a (rows, cols) tensor of type `id` in the canonical layout, padding included
 * (plain: rows*cols*bits/8). Returns 0 if id is unknown, rows or cols is 0, or the size
 * overflows size_t. */
size_t eq_qtype_nbytes(int id, size_t rows, size_t cols);

/* ---------------------------------------------------------------------------------------------
 * fp16 <-> fp32, portable (no _Float16 / F16C needed): IEEE binary16 bit patterns
 * ------------------------------------------------------------------------------------------- */

/* Exact conversion (every fp16 value is an fp32 value); NaN payloads are kept. */
float eq_fp16_to_fp32(uint16_t bits);

/* Round to nearest, ties to even; overflow gives ±inf, NaN stays NaN (quiet). */
uint16_t eq_fp32_to_fp16(float value);

/* ---------------------------------------------------------------------------------------------
 * kernels (dispatched once, at first use, to the best kernel set this CPU runs; EDGEQ_ISA=ref
 * forces the scalar reference; an unknown or unavailable EDGEQ_ISA value falls back to the best
 * available set)
 * ------------------------------------------------------------------------------------------- */

/* Dequantize rows [row_begin, row_begin + row_count) of the (rows, cols) tensor of type `id`.
 *   data        packed bytes of the whole tensor, data_bytes of them (>= eq_qtype_nbytes)
 *   out         (row_count, cols) float32, row-major; padding columns are not written
 * Returns EQ_OK, or EQ_ERR_UNKNOWN_QTYPE, EQ_ERR_INVALID_ARGUMENT (NULL data/out, rows or cols 0),
 * EQ_ERR_SIZE_OVERFLOW, EQ_ERR_DATA_TOO_SHORT, EQ_ERR_ROW_RANGE. row_count 0 is a no-op. */
int eq_dequantize_rows(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
                       size_t row_begin, size_t row_count, float *out);

/* y = W x for the (rows, cols) tensor W of type `id`.
 *   data        packed bytes of W, data_bytes of them (>= eq_qtype_nbytes)
 *   x           (cols,) float32; padding columns of W never contribute, whatever they hold
 *   y           (rows,) float32, overwritten
 * Returns EQ_OK, or EQ_ERR_UNKNOWN_QTYPE, EQ_ERR_INVALID_ARGUMENT (NULL pointer, rows or cols 0),
 * EQ_ERR_SIZE_OVERFLOW, EQ_ERR_DATA_TOO_SHORT. */
int eq_gemv(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
            const float *x, float *y);

/* Name of the active kernel set: "ref" (later also "avx2", "neon"). Selects it if not yet done. */
const char *eq_isa_name(void);

/* EQ_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* EDGEQ_H */
