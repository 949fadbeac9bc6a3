/* edgeq.h — the one public header of the edgeq C runtime.
 *
 * The quant-type table (mirror of edgeq/quant_types.py), the packed-layout helpers, the
 * reference-or-SIMD dequantize/GEMV entry points, and the runtime: open a model file, evaluate
 * tokens into logits over a KV cache.
 *
 * The text between the EQ_CDEF_BEGIN and EQ_CDEF_END markers is fed verbatim to cffi's cdef
 * (native/build_ffi.py), which does not run the preprocessor: keep that block free of #directives
 * and macros, and use enum constants instead of #defines there.
 *
 * Packed layout of a uniform grouped tensor W (M, K) with b bits and group G (see quant_types.py):
 *   M padded to Mp = ceil(M/16)*16; tiles of 16 rows; the tensor is (Mp/16, ceil(K/G)) blocks, each:
 *   scale[16] fp16, min[16] fp16 (asymmetric only), then b planes of 2*w bytes = w/8 chunks of 16
 *   bytes (byte r = row r of the tile; bit i = column 8c+i of the chunk), where w = G, except for a
 *   partial last group (K % G != 0): w = its columns rounded up to EQ_GROUP_STEP = 32. So K is
 *   stored as Ks = ceil(K/32)*32 columns. All fp16 values are little-endian.
 *     asymmetric  w = scale * q + min
 *     symmetric   w = scale * (q - (2^b - 1) / 2)
 *     z types     w = scale * (q - 2^(b - 1))   (symmetric, integer_zero: llama.cpp's _0 grids;
 *                                                the scale may be negative)
 * Packed layout of a uniform packed tensor (p{b}g{G}{a|s|z}, b in 2,3,4,5,6,8; the same numbers, for
 * the int8 multiply-add kernels): M padded to Mp as above, groups stored as above: group g stores
 * c_g = min(G, Ks - g*G) columns, Ks = ceil(K/32)*32 (zeros past K). Each tile is ceil(K/G) blocks:
 *   scale[16] fp16, min[16] fp16 (asymmetric only), then the levels of c_g columns:
 *   b = 8: c_g/4 64-byte quads [quad][16 rows][4 columns], byte (j, r, i) = q[r, 4j+i];
 *   b < 8: c_g/32 runs of 64 b bytes, each 32 columns as planes of bit fields, lowest bits first:
 *     4-bit fields (b >= 4), 2-bit fields (b = 2, 3, 6), 1-bit fields (b odd). The plane of w-bit
 *     fields is 64 w bytes: w chunks [16 rows][4 bytes] of 32/w columns each, byte (r, i) of chunk
 *     m holding the w-bit fields of columns m*32/w + i + 4f at bits w*f (f < 8/w). At b = 4 this
 *     is byte (j, r, i) = q[r, 8j+i] | q[r, 8j+4+i] << 4; at 6, q = nibble | 2-bit field << 4.
 *   One 64-byte load is 16 rows x 4 columns for vpdpbusd (AVX-512 VNNI), two 32-byte loads feed
 *   vpmaddubsw (AVX2), four 16-byte loads NEON sdot; a plane's fields become a quad's bytes by a
 *   shift and a mask, so b bits cost b/8 of a byte in memory (files written before the 2-3 bit
 *   types stored 5 and 6 bits a byte each: feature "packed-fields", native/src/model.c).
 * Codebook layout (c4g{G}{a|s}: 4-bit indices into 16 learned levels): tiles as the packed family's,
 * each starting with codebook[16] int8 (levels in [-64, 63]), then exactly the blocks of p4g{G}{a|s}
 * with indices in place of levels: w = scale * codebook[index] (+ min, asymmetric; no zero point).
 * 2-D codebook layout (v2g{G}s: 2 bits per weight, a 4-bit index per pair of weights): tiles as the
 * codebook's, each starting with codebook[32] int8 (16 centroids (c0, c1): c0 of all 16, then c1 of
 * all 16, each in [-64, 63]), then per group scale[16] fp16 and the pair indices as 64-byte quads
 * [quad][16 rows][4]: quad j covers columns 16j..16j+15, byte (j, r, i) holds in its low nibble the
 * index P of the pair (16j+i, 16j+4+i) and in its high nibble the index Q of (16j+8+i, 16j+12+i):
 * w[16j+i] = scale c0[P], w[16j+4+i] = scale c1[P], w[16j+8+i] = scale c0[Q], w[16j+12+i] = scale c1[Q]
 * (c_g/16 quads per group). So one quad decodes, by two table lookups per nibble, into the four
 * 16-row x 4-column blocks of levels the codebook family's kernels multiply.
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

/* The library's version, equal to edgeq.__version__ (tests/test_native_safety.py checks it). */
#define EQ_VERSION_STRING "0.1.0"

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
    EQ_ERR_ROW_RANGE = -5,         /* row_begin + row_count > rows */
    EQ_ERR_CONTEXT_FULL = -6,      /* the tokens do not fit in the KV cache */
    EQ_ERR_BUSY = -7,              /* the model is in use by another thread */
    EQ_ERR_NO_MEMORY = -8,         /* an allocation failed */
    EQ_ERR_NOT_FOUND = -9,         /* a metadata key or tensor is absent */
    EQ_ERR_FORMAT = -10,           /* the file is malformed, or a value has the wrong type or range */
    EQ_ERR_IO = -11,               /* the file cannot be opened, read or mapped */
    EQ_ERR_ISA = -12               /* EDGEQ_ISA names no kernel set this CPU runs */
} eq_error;

/* A static, human-readable description of an error code ("unknown error" for other values). */
const char *eq_error_string(int code);

/* ---------------------------------------------------------------------------------------------
 * quant types: ids equal the Python ids in edgeq/quant_types.py (f32, f16, then
 * u{bits}g{group}{a|s} for bits in 2,3,4,5,6,8, group in 32,64,128, asymmetric before symmetric,
 * then the packed p{bits}g{group}{a|s} for bits in 4,5,6,8 in the same order, then the codebook
 * c4g{group}{a|s}, then the z types u{4,5,8}g32z, p{4,5,8}g32z: symmetric with the integer zero
 * point 2^(bits-1), llama.cpp's Q4_0 / Q5_0 / Q8_0 grids, then the 2-D codebook types v2g{64,128}s,
 * then the packed p{2,3}g{group}{a|s} in the order of the others)
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
    EQ_QTYPE_P4G32A = 38,
    EQ_QTYPE_P4G32S = 39,
    EQ_QTYPE_P4G64A = 40,
    EQ_QTYPE_P4G64S = 41,
    EQ_QTYPE_P4G128A = 42,
    EQ_QTYPE_P4G128S = 43,
    EQ_QTYPE_P5G32A = 44,
    EQ_QTYPE_P5G32S = 45,
    EQ_QTYPE_P5G64A = 46,
    EQ_QTYPE_P5G64S = 47,
    EQ_QTYPE_P5G128A = 48,
    EQ_QTYPE_P5G128S = 49,
    EQ_QTYPE_P6G32A = 50,
    EQ_QTYPE_P6G32S = 51,
    EQ_QTYPE_P6G64A = 52,
    EQ_QTYPE_P6G64S = 53,
    EQ_QTYPE_P6G128A = 54,
    EQ_QTYPE_P6G128S = 55,
    EQ_QTYPE_P8G32A = 56,
    EQ_QTYPE_P8G32S = 57,
    EQ_QTYPE_P8G64A = 58,
    EQ_QTYPE_P8G64S = 59,
    EQ_QTYPE_P8G128A = 60,
    EQ_QTYPE_P8G128S = 61,
    EQ_QTYPE_C4G32A = 62,
    EQ_QTYPE_C4G32S = 63,
    EQ_QTYPE_C4G64A = 64,
    EQ_QTYPE_C4G64S = 65,
    EQ_QTYPE_C4G128A = 66,
    EQ_QTYPE_C4G128S = 67,
    EQ_QTYPE_U4G32Z = 68,
    EQ_QTYPE_U5G32Z = 69,
    EQ_QTYPE_U8G32Z = 70,
    EQ_QTYPE_P4G32Z = 71,
    EQ_QTYPE_P5G32Z = 72,
    EQ_QTYPE_P8G32Z = 73,
    EQ_QTYPE_V2G64S = 74,
    EQ_QTYPE_V2G128S = 75,
    EQ_QTYPE_P2G32A = 76,
    EQ_QTYPE_P2G32S = 77,
    EQ_QTYPE_P2G64A = 78,
    EQ_QTYPE_P2G64S = 79,
    EQ_QTYPE_P2G128A = 80,
    EQ_QTYPE_P2G128S = 81,
    EQ_QTYPE_P3G32A = 82,
    EQ_QTYPE_P3G32S = 83,
    EQ_QTYPE_P3G64A = 84,
    EQ_QTYPE_P3G64S = 85,
    EQ_QTYPE_P3G128A = 86,
    EQ_QTYPE_P3G128S = 87,
    EQ_QTYPE_COUNT = 88
} eq_qtype;

/* Layout constants shared by every packed type. */
enum {
    EQ_TILE_ROWS = 16,  /* rows per tile: one plane byte per row, 16 bytes per chunk */
    EQ_CHUNK_COLS = 8,  /* columns covered by one plane byte (low nibble 0..3, high nibble 4..7) */
    EQ_GROUP_STEP = 32, /* a partial last group is stored in a multiple of this many columns */
    EQ_PACKED_BLOCK_COLS = 32,  /* uniform packed: activations per int8 scale in multiply-add kernels */
    EQ_CODEBOOK_SIZE = 16       /* codebook: entries (int8 levels, or 2-D centroids) per tile: 4-bit indices */
};

/* How a type's weights are stored and multiplied; kernels and the loader dispatch on the family,
 * never on a type's name. Names as in edgeq/quant_types.py. */
typedef enum eq_qfamily {
    EQ_QFAMILY_PLAIN = 0,             /* "plain": f32 / f16, (M, K) row-major */
    EQ_QFAMILY_UNIFORM_BITPLANE = 1,  /* "uniform-bitplane": the u{b}g{G}{a|s} bit-plane layout above */
    EQ_QFAMILY_UNIFORM_PACKED = 2,    /* "uniform-packed": the p{b}g{G}{a|s} level layout above */
    EQ_QFAMILY_CODEBOOK = 3,          /* "codebook": the c4g{G}{a|s} and v2g{G}s layouts above */
    EQ_QFAMILY_COUNT = 4
} eq_qfamily;

/* One row of the quant-type table. */
typedef struct eq_qtype_traits {
    const char *name;  /* as stored in the file, e.g. "u4g64a" */
    int id;            /* the eq_qtype value; equals the row's index in the table */
    int family;        /* eq_qfamily */
    int bits;          /* bits per weight before scales (32 / 16 for plain types) */
    int group;         /* weights per scale along K (0 for plain types) */
    bool symmetric;    /* scale only (zero point (2^bits - 1) / 2; codebook: none); else scale and min */
    bool integer_zero; /* symmetric with zero point 2^(bits - 1) instead (the z types) */
} eq_qtype_traits;

/* The family's name as in edgeq/quant_types.py ("plain", "uniform-bitplane", "uniform-packed",
 * "codebook"), or NULL. */
const char *eq_qfamily_name(int family);

/* This library's version (edgeq.__version__ of the package it was built with), e.g. "0.1.0". */
const char *eq_version(void);

/* The table row for `id`, or NULL if id is not a quant type. The pointer is to static storage. */
const eq_qtype_traits *eq_qtype_get(int id);

/* Number of rows in the table (EQ_QTYPE_COUNT); ids are 0 .. count-1. */
int eq_qtype_count(void);

/* The id of the type called `name` (e.g. "u3g128s"), or -1 if unknown or name is NULL. */
int eq_qtype_from_name(const char *name);

/* Bytes of a (rows, cols) tensor of type `id` in the canonical layout, padding included
 * (plain: rows*cols*bits/8). Files without the "compact-tail" feature padded a partial last group
 * to G columns; the loader converts such tensors to this layout. Returns 0 if id is unknown, rows or cols is 0, or the size
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
 * kernels (dispatched once, at first use, to the best kernel set this CPU runs; EDGEQ_ISA=<set>
 * forces a set, and one that does not exist or that this CPU cannot run makes every kernel call
 * and eq_model_open fail with EQ_ERR_ISA instead of falling back; unset, empty or "auto" chooses)
 * ------------------------------------------------------------------------------------------- */

/* Dequantize rows [row_begin, row_begin + row_count) of the (rows, cols) tensor of type `id`.
 *   data        packed bytes of the whole tensor, data_bytes of them (>= eq_qtype_nbytes)
 *   out         (row_count, cols) float32, row-major; padding columns are not written
 * Returns EQ_OK, or EQ_ERR_UNKNOWN_QTYPE, EQ_ERR_INVALID_ARGUMENT (NULL data/out, rows or cols 0),
 * EQ_ERR_SIZE_OVERFLOW, EQ_ERR_DATA_TOO_SHORT, EQ_ERR_ROW_RANGE, EQ_ERR_ISA. row_count 0 is a no-op. */
int eq_dequantize_rows(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
                       size_t row_begin, size_t row_count, float *out);

/* y = W x for the (rows, cols) tensor W of type `id`.
 *   data        packed bytes of W, data_bytes of them (>= eq_qtype_nbytes)
 *   x           (cols,) float32; padding columns of W never contribute, whatever they hold
 *   y           (rows,) float32, overwritten
 * Returns EQ_OK, or EQ_ERR_UNKNOWN_QTYPE, EQ_ERR_INVALID_ARGUMENT (NULL pointer, rows or cols 0),
 * EQ_ERR_SIZE_OVERFLOW, EQ_ERR_DATA_TOO_SHORT, EQ_ERR_NO_MEMORY (the sets' prepared input),
 * EQ_ERR_ISA. */
int eq_gemv(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
            const float *x, float *y);

/* Y = X W^T for n vectors at once: x (n, cols) and y (n, rows) row-major float32. The kernel sets
 * prepare each x once (lookup tables, quantized activations) and reuse every weight tile across
 * the n vectors.
 * Same returns as eq_gemv, plus EQ_ERR_NO_MEMORY; n 0 is EQ_ERR_INVALID_ARGUMENT. */
int eq_gemm(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
            const float *x, size_t n, float *y);

/* The kernel sets this library has, best first (the reference "ref" last), whether or not this
 * CPU runs them: index 0 .. eq_kernel_set_count() - 1; eq_kernel_set_name is NULL out of range. */
int eq_kernel_set_count(void);
const char *eq_kernel_set_name(int index);

/* Name of the active kernel set (selected at first use), or NULL when EDGEQ_ISA names no set
 * this CPU runs. */
const char *eq_isa_name(void);

/* 1 if the kernel set called `isa` exists and this CPU runs it, else 0. */
int eq_isa_available(const char *isa);

/* Make `isa` the active kernel set for the whole process (tests, benchmarks). A model evaluation
 * already running finishes with the set it started with. EQ_ERR_NOT_FOUND if that set does not
 * exist or this CPU cannot run it. */
int eq_select_isa(const char *isa);

/* eq_gemm through the named kernel set instead of the active one (tests compare every set with
 * "ref"). EQ_ERR_NOT_FOUND if that set does not exist or this CPU cannot run it. */
int eq_gemm_isa(const char *isa, int id, const void *data, size_t data_bytes, size_t rows,
                size_t cols, const float *x, size_t n, float *y);

/* Which set runs a product of quant type `qtype_id` with a batch of `batch` vectors (1: decode, a
 * prompt's tokens: prefill) under kernel set `isa` (NULL: the active one; a set hands a path it
 * does not have to the next available set, the reference last), by which path ("lut",
 * "multiply-add", "float", "reference") and a one-line description. Any out pointer may be NULL.
 * EQ_ERR_NOT_FOUND (isa unknown or unavailable), EQ_ERR_ISA (isa NULL and EDGEQ_ISA invalid),
 * EQ_ERR_UNKNOWN_QTYPE. */
int eq_kernel_route(const char *isa, int qtype_id, size_t batch, const char **set_isa, const char **path,
                    const char **detail);

/* Bytes the runtime reserves to prepare n input vectors of cols activations for products of quant
 * type `qtype_id` (the widest of the sets this CPU runs; 0 if the family prepares nothing, the id
 * is unknown or the size overflows). `edgeq info`'s memory estimate adds these up. */
size_t eq_prepared_bytes(int qtype_id, size_t n, size_t cols);

/* ---------------------------------------------------------------------------------------------
 * the runtime: open a converted file (mmapped, validated as untrusted input), evaluate tokens
 * into logits over a KV cache. One eq_model is used by one thread at a time: a call made while
 * another thread is inside eq_model_eval/eq_model_truncate/eq_model_get_info on the same model
 * returns EQ_ERR_BUSY.
 * Different models are independent.
 * ------------------------------------------------------------------------------------------- */

typedef struct eq_model eq_model;

enum {
    EQ_ARCH_LLAMA = 0,
    EQ_ARCH_QWEN2 = 1,
    EQ_ARCH_QWEN3 = 2,
    EQ_ARCH_GEMMA3 = 3
};

/* How the KV cache stores keys and values. */
enum {
    EQ_KV_F16 = 0,   /* fp16 (the default) */
    EQ_KV_F32 = 1,   /* fp32 */
    EQ_KV_Q8 = 2,    /* int8 levels per block of 32 values of a head, one fp16 scale per block
                        (head_dim + 2 ceil(head_dim / 32) bytes per head and token, K or V) */
    EQ_KV_K8V4 = 3   /* keys as EQ_KV_Q8, values int4 levels per block of 32, one fp16 scale per
                        block (head_dim / 2 + 2 ceil(head_dim / 32) bytes per head and token) */
};

/* Options for eq_model_open; zero fields take the defaults. */
typedef struct eq_model_params {
    int32_t n_threads;   /* 0: number of physical cores */
    int32_t n_ctx;       /* KV cache length in tokens; 0: min(max_seq_len, 4096); > max_seq_len is an error */
    int32_t kv_fp32;     /* nonzero: fp32 KV cache (the same as kv_type EQ_KV_F32) */
    int32_t kv_type;     /* EQ_KV_*; 0: fp16, or fp32 with kv_fp32. Unknown, or not EQ_KV_F32 with kv_fp32: an error */
} eq_model_params;

/* What an open model is. */
typedef struct eq_model_info {
    int32_t arch;            /* EQ_ARCH_* */
    int32_t vocab_size;
    int32_t dim;
    int32_t hidden_dim;
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t max_seq_len;     /* what the model was trained for */
    int32_t n_ctx;           /* the KV cache length chosen at open */
    int32_t n_past;          /* tokens currently in the KV cache */
    int32_t n_threads;
    int32_t kv_fp32;         /* kv_type == EQ_KV_F32 */
    int32_t kv_type;         /* EQ_KV_* */
    uint64_t weight_bytes;   /* bytes of weights read per generated token (every matrix once) */
    uint64_t kv_bytes;       /* bytes of the KV cache allocation */
    uint64_t file_bytes;     /* size of the mapped file */
    uint64_t pool_jobs;      /* threaded jobs since open (a forward pass is one or two: layers, head) */
    uint64_t pool_jobs_alone;  /* of those, run on one thread alone because one of the threads'
                                  cores was taken by another process (threadpool.h) */
} eq_model_info;

/* Open, map and validate `path`. On success returns the model; on failure returns NULL and writes
 * a one-line, NUL-terminated message into err (err_size bytes, may be 0 / err NULL). */
eq_model *eq_model_open(const char *path, const eq_model_params *params, char *err, size_t err_size);

/* Unmap and free; NULL is a no-op. Must not race with other calls on the same model. */
void eq_model_close(eq_model *model);

/* Fill *info. Returns EQ_OK, EQ_ERR_INVALID_ARGUMENT, or EQ_ERR_BUSY (another thread is inside
 * eq_model_eval / eq_model_truncate / eq_model_get_info on this model: n_past would be torn). */
int eq_model_get_info(eq_model *model, eq_model_info *info);

/* Append n_tokens tokens at position n_past and run the forward pass.
 *   tokens   (n_tokens,) ids in [0, vocab_size)
 *   logits   NULL (only fill the cache), or (vocab,) floats for the last token when all_logits is 0,
 *            or (n_tokens, vocab) when all_logits is nonzero
 * Returns EQ_OK, EQ_ERR_INVALID_ARGUMENT (NULL tokens, n_tokens < 1, a token out of range),
 * EQ_ERR_CONTEXT_FULL (n_past + n_tokens > n_ctx; nothing is evaluated), EQ_ERR_BUSY. */
int eq_model_eval(eq_model *model, const int32_t *tokens, int32_t n_tokens, float *logits, int32_t all_logits);

/* Keep the first n_keep tokens of the KV cache (0 resets). Returns EQ_OK, EQ_ERR_INVALID_ARGUMENT
 * (n_keep < 0 or > n_past), EQ_ERR_BUSY. */
int eq_model_truncate(eq_model *model, int32_t n_keep);

/* Why the latest eq_model_eval / eq_model_truncate on this model failed, with the numbers (e.g.
 * "context full: 4090 tokens in the cache + 20 new > context 4096"); "" if it did not fail. A call
 * refused with EQ_ERR_BUSY leaves it alone (another thread owns the model). Valid until the next
 * call on the model. */
const char *eq_model_last_error(const eq_model *model);

/* Median seconds of `repeats` decode products y = W x of the (rows, cols) tensor W of type `id`,
 * run as the forward pass runs one: the input prepared once for the active kernel set, the rows cut
 * into the same chunks on a pool of n_threads threads (0: physical cores). W is copied `copies`
 * times into one buffer and each repetition reads the copy read longest ago, so copies x nbytes
 * beyond the last-level cache times weights streamed from memory, as in decode (`edgeq profile`).
 *   data        packed bytes of W, data_bytes of them (>= eq_qtype_nbytes)
 * Returns EQ_OK, or EQ_ERR_UNKNOWN_QTYPE, EQ_ERR_INVALID_ARGUMENT (NULL pointer, rows, cols or
 * copies 0, n_threads < 0, repeats < 1), EQ_ERR_SIZE_OVERFLOW, EQ_ERR_DATA_TOO_SHORT,
 * EQ_ERR_NO_MEMORY, EQ_ERR_ISA. */
int eq_gemv_time(int id, const void *data, size_t data_bytes, size_t rows, size_t cols, size_t copies,
                 int32_t n_threads, int32_t repeats, double *seconds);

/* Physical cores of this machine (at least 1). */
int32_t eq_physical_cores(void);

/* ---------------------------------------------------------------------------------------------
 * memory read bandwidth (native/src/bandwidth.c): the numerator of the decode roofline,
 * max decode tokens/s = bandwidth / eq_model_info.weight_bytes
 * ------------------------------------------------------------------------------------------- */

/* The best of `repeats` timed passes, in GB/s (1e9 bytes/s), of n_threads threads each summing one
 * contiguous slice of a `bytes` buffer (filled first by the same threads, then one untimed pass).
 *   bytes       buffer size, rounded down to whole cache lines per thread; 0: 256 MiB (choose >= 4x
 *               the last-level cache, or the figure is cache bandwidth)
 *   n_threads   0: number of physical cores
 *   repeats     0: 5
 * Returns the bandwidth (> 0), or a negative eq_error: EQ_ERR_INVALID_ARGUMENT (negative n_threads
 * or repeats, bytes smaller than one cache line per thread), EQ_ERR_NO_MEMORY (buffer or threads). */
double eq_memory_read_bandwidth(size_t bytes, int32_t n_threads, int32_t repeats);

/* EQ_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* EDGEQ_H */
