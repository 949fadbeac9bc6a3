/* quant_types.c — the quant-type table (C mirror of edgeq/quant_types.py), the generic functions on
 * it (sizes, fp16 conversion), and the public kernel entry points: validate, dispatch once, call.
 *
 * Does not touch weights itself: the kernels live in the ISA folders, the list of kernel sets and
 * prepared activations in src/kernel_sets.c.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"
#include "kernels.h"

/* ============================================================================================= */
/* errors                                                                                         */
/* ============================================================================================= */

const char *eq_error_string(int code)
{
    switch (code) {
    case EQ_OK: return "ok";
    case EQ_ERR_INVALID_ARGUMENT: return "invalid argument (NULL pointer or empty shape)";
    case EQ_ERR_UNKNOWN_QTYPE: return "unknown quant type id";
    case EQ_ERR_SIZE_OVERFLOW: return "tensor size overflows size_t";
    case EQ_ERR_DATA_TOO_SHORT: return "tensor data is shorter than its type and shape require";
    case EQ_ERR_ROW_RANGE: return "row range is outside the tensor";
    case EQ_ERR_CONTEXT_FULL: return "the context is full: the tokens do not fit in the KV cache";
    case EQ_ERR_BUSY: return "the model is in use by another thread";
    case EQ_ERR_NO_MEMORY: return "out of memory";
    case EQ_ERR_NOT_FOUND: return "not found";
    case EQ_ERR_FORMAT: return "malformed file or value of the wrong type";
    case EQ_ERR_IO: return "cannot open, read or map the file";
    case EQ_ERR_ISA: return "EDGEQ_ISA names a kernel set that does not exist or this CPU cannot run";
    default: return "unknown error";
    }
}

/* ============================================================================================= */
/* the table: one row per type, indexed by id                                                     */
/* ============================================================================================= */

/*                                           name       id                family                       bits group symm */
static const eq_qtype_traits qtype_table[EQ_QTYPE_COUNT] = {
    [EQ_QTYPE_F32]     = {"f32",     EQ_QTYPE_F32,     EQ_QFAMILY_PLAIN,            32,   0, false},
    [EQ_QTYPE_F16]     = {"f16",     EQ_QTYPE_F16,     EQ_QFAMILY_PLAIN,            16,   0, false},
    [EQ_QTYPE_U2G32A]  = {"u2g32a",  EQ_QTYPE_U2G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 2,   32, false},
    [EQ_QTYPE_U2G32S]  = {"u2g32s",  EQ_QTYPE_U2G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 2,   32, true},
    [EQ_QTYPE_U2G64A]  = {"u2g64a",  EQ_QTYPE_U2G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 2,   64, false},
    [EQ_QTYPE_U2G64S]  = {"u2g64s",  EQ_QTYPE_U2G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 2,   64, true},
    [EQ_QTYPE_U2G128A] = {"u2g128a", EQ_QTYPE_U2G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 2,  128, false},
    [EQ_QTYPE_U2G128S] = {"u2g128s", EQ_QTYPE_U2G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 2,  128, true},
    [EQ_QTYPE_U3G32A]  = {"u3g32a",  EQ_QTYPE_U3G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 3,   32, false},
    [EQ_QTYPE_U3G32S]  = {"u3g32s",  EQ_QTYPE_U3G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 3,   32, true},
    [EQ_QTYPE_U3G64A]  = {"u3g64a",  EQ_QTYPE_U3G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 3,   64, false},
    [EQ_QTYPE_U3G64S]  = {"u3g64s",  EQ_QTYPE_U3G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 3,   64, true},
    [EQ_QTYPE_U3G128A] = {"u3g128a", EQ_QTYPE_U3G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 3,  128, false},
    [EQ_QTYPE_U3G128S] = {"u3g128s", EQ_QTYPE_U3G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 3,  128, true},
    [EQ_QTYPE_U4G32A]  = {"u4g32a",  EQ_QTYPE_U4G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 4,   32, false},
    [EQ_QTYPE_U4G32S]  = {"u4g32s",  EQ_QTYPE_U4G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 4,   32, true},
    [EQ_QTYPE_U4G64A]  = {"u4g64a",  EQ_QTYPE_U4G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 4,   64, false},
    [EQ_QTYPE_U4G64S]  = {"u4g64s",  EQ_QTYPE_U4G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 4,   64, true},
    [EQ_QTYPE_U4G128A] = {"u4g128a", EQ_QTYPE_U4G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 4,  128, false},
    [EQ_QTYPE_U4G128S] = {"u4g128s", EQ_QTYPE_U4G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 4,  128, true},
    [EQ_QTYPE_U5G32A]  = {"u5g32a",  EQ_QTYPE_U5G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 5,   32, false},
    [EQ_QTYPE_U5G32S]  = {"u5g32s",  EQ_QTYPE_U5G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 5,   32, true},
    [EQ_QTYPE_U5G64A]  = {"u5g64a",  EQ_QTYPE_U5G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 5,   64, false},
    [EQ_QTYPE_U5G64S]  = {"u5g64s",  EQ_QTYPE_U5G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 5,   64, true},
    [EQ_QTYPE_U5G128A] = {"u5g128a", EQ_QTYPE_U5G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 5,  128, false},
    [EQ_QTYPE_U5G128S] = {"u5g128s", EQ_QTYPE_U5G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 5,  128, true},
    [EQ_QTYPE_U6G32A]  = {"u6g32a",  EQ_QTYPE_U6G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 6,   32, false},
    [EQ_QTYPE_U6G32S]  = {"u6g32s",  EQ_QTYPE_U6G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 6,   32, true},
    [EQ_QTYPE_U6G64A]  = {"u6g64a",  EQ_QTYPE_U6G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 6,   64, false},
    [EQ_QTYPE_U6G64S]  = {"u6g64s",  EQ_QTYPE_U6G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 6,   64, true},
    [EQ_QTYPE_U6G128A] = {"u6g128a", EQ_QTYPE_U6G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 6,  128, false},
    [EQ_QTYPE_U6G128S] = {"u6g128s", EQ_QTYPE_U6G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 6,  128, true},
    [EQ_QTYPE_U8G32A]  = {"u8g32a",  EQ_QTYPE_U8G32A,  EQ_QFAMILY_UNIFORM_BITPLANE, 8,   32, false},
    [EQ_QTYPE_U8G32S]  = {"u8g32s",  EQ_QTYPE_U8G32S,  EQ_QFAMILY_UNIFORM_BITPLANE, 8,   32, true},
    [EQ_QTYPE_U8G64A]  = {"u8g64a",  EQ_QTYPE_U8G64A,  EQ_QFAMILY_UNIFORM_BITPLANE, 8,   64, false},
    [EQ_QTYPE_U8G64S]  = {"u8g64s",  EQ_QTYPE_U8G64S,  EQ_QFAMILY_UNIFORM_BITPLANE, 8,   64, true},
    [EQ_QTYPE_U8G128A] = {"u8g128a", EQ_QTYPE_U8G128A, EQ_QFAMILY_UNIFORM_BITPLANE, 8,  128, false},
    [EQ_QTYPE_U8G128S] = {"u8g128s", EQ_QTYPE_U8G128S, EQ_QFAMILY_UNIFORM_BITPLANE, 8,  128, true},
    [EQ_QTYPE_P4G32A]  = {"p4g32a",  EQ_QTYPE_P4G32A,  EQ_QFAMILY_UNIFORM_PACKED,   4,   32, false},
    [EQ_QTYPE_P4G32S]  = {"p4g32s",  EQ_QTYPE_P4G32S,  EQ_QFAMILY_UNIFORM_PACKED,   4,   32, true},
    [EQ_QTYPE_P4G64A]  = {"p4g64a",  EQ_QTYPE_P4G64A,  EQ_QFAMILY_UNIFORM_PACKED,   4,   64, false},
    [EQ_QTYPE_P4G64S]  = {"p4g64s",  EQ_QTYPE_P4G64S,  EQ_QFAMILY_UNIFORM_PACKED,   4,   64, true},
    [EQ_QTYPE_P4G128A] = {"p4g128a", EQ_QTYPE_P4G128A, EQ_QFAMILY_UNIFORM_PACKED,   4,  128, false},
    [EQ_QTYPE_P4G128S] = {"p4g128s", EQ_QTYPE_P4G128S, EQ_QFAMILY_UNIFORM_PACKED,   4,  128, true},
    [EQ_QTYPE_P5G32A]  = {"p5g32a",  EQ_QTYPE_P5G32A,  EQ_QFAMILY_UNIFORM_PACKED,   5,   32, false},
    [EQ_QTYPE_P5G32S]  = {"p5g32s",  EQ_QTYPE_P5G32S,  EQ_QFAMILY_UNIFORM_PACKED,   5,   32, true},
    [EQ_QTYPE_P5G64A]  = {"p5g64a",  EQ_QTYPE_P5G64A,  EQ_QFAMILY_UNIFORM_PACKED,   5,   64, false},
    [EQ_QTYPE_P5G64S]  = {"p5g64s",  EQ_QTYPE_P5G64S,  EQ_QFAMILY_UNIFORM_PACKED,   5,   64, true},
    [EQ_QTYPE_P5G128A] = {"p5g128a", EQ_QTYPE_P5G128A, EQ_QFAMILY_UNIFORM_PACKED,   5,  128, false},
    [EQ_QTYPE_P5G128S] = {"p5g128s", EQ_QTYPE_P5G128S, EQ_QFAMILY_UNIFORM_PACKED,   5,  128, true},
    [EQ_QTYPE_P6G32A]  = {"p6g32a",  EQ_QTYPE_P6G32A,  EQ_QFAMILY_UNIFORM_PACKED,   6,   32, false},
    [EQ_QTYPE_P6G32S]  = {"p6g32s",  EQ_QTYPE_P6G32S,  EQ_QFAMILY_UNIFORM_PACKED,   6,   32, true},
    [EQ_QTYPE_P6G64A]  = {"p6g64a",  EQ_QTYPE_P6G64A,  EQ_QFAMILY_UNIFORM_PACKED,   6,   64, false},
    [EQ_QTYPE_P6G64S]  = {"p6g64s",  EQ_QTYPE_P6G64S,  EQ_QFAMILY_UNIFORM_PACKED,   6,   64, true},
    [EQ_QTYPE_P6G128A] = {"p6g128a", EQ_QTYPE_P6G128A, EQ_QFAMILY_UNIFORM_PACKED,   6,  128, false},
    [EQ_QTYPE_P6G128S] = {"p6g128s", EQ_QTYPE_P6G128S, EQ_QFAMILY_UNIFORM_PACKED,   6,  128, true},
    [EQ_QTYPE_P8G32A]  = {"p8g32a",  EQ_QTYPE_P8G32A,  EQ_QFAMILY_UNIFORM_PACKED,   8,   32, false},
    [EQ_QTYPE_P8G32S]  = {"p8g32s",  EQ_QTYPE_P8G32S,  EQ_QFAMILY_UNIFORM_PACKED,   8,   32, true},
    [EQ_QTYPE_P8G64A]  = {"p8g64a",  EQ_QTYPE_P8G64A,  EQ_QFAMILY_UNIFORM_PACKED,   8,   64, false},
    [EQ_QTYPE_P8G64S]  = {"p8g64s",  EQ_QTYPE_P8G64S,  EQ_QFAMILY_UNIFORM_PACKED,   8,   64, true},
    [EQ_QTYPE_P8G128A] = {"p8g128a", EQ_QTYPE_P8G128A, EQ_QFAMILY_UNIFORM_PACKED,   8,  128, false},
    [EQ_QTYPE_P8G128S] = {"p8g128s", EQ_QTYPE_P8G128S, EQ_QFAMILY_UNIFORM_PACKED,   8,  128, true},
    [EQ_QTYPE_C4G32A]  = {"c4g32a",  EQ_QTYPE_C4G32A,  EQ_QFAMILY_CODEBOOK,         4,   32, false},
    [EQ_QTYPE_C4G32S]  = {"c4g32s",  EQ_QTYPE_C4G32S,  EQ_QFAMILY_CODEBOOK,         4,   32, true},
    [EQ_QTYPE_C4G64A]  = {"c4g64a",  EQ_QTYPE_C4G64A,  EQ_QFAMILY_CODEBOOK,         4,   64, false},
    [EQ_QTYPE_C4G64S]  = {"c4g64s",  EQ_QTYPE_C4G64S,  EQ_QFAMILY_CODEBOOK,         4,   64, true},
    [EQ_QTYPE_C4G128A] = {"c4g128a", EQ_QTYPE_C4G128A, EQ_QFAMILY_CODEBOOK,         4,  128, false},
    [EQ_QTYPE_C4G128S] = {"c4g128s", EQ_QTYPE_C4G128S, EQ_QFAMILY_CODEBOOK,         4,  128, true},
    /*                                                                                         integer zero */
    [EQ_QTYPE_U4G32Z]  = {"u4g32z",  EQ_QTYPE_U4G32Z,  EQ_QFAMILY_UNIFORM_BITPLANE, 4,   32, true, true},
    [EQ_QTYPE_U5G32Z]  = {"u5g32z",  EQ_QTYPE_U5G32Z,  EQ_QFAMILY_UNIFORM_BITPLANE, 5,   32, true, true},
    [EQ_QTYPE_U8G32Z]  = {"u8g32z",  EQ_QTYPE_U8G32Z,  EQ_QFAMILY_UNIFORM_BITPLANE, 8,   32, true, true},
    [EQ_QTYPE_P4G32Z]  = {"p4g32z",  EQ_QTYPE_P4G32Z,  EQ_QFAMILY_UNIFORM_PACKED,   4,   32, true, true},
    [EQ_QTYPE_P5G32Z]  = {"p5g32z",  EQ_QTYPE_P5G32Z,  EQ_QFAMILY_UNIFORM_PACKED,   5,   32, true, true},
    [EQ_QTYPE_P8G32Z]  = {"p8g32z",  EQ_QTYPE_P8G32Z,  EQ_QFAMILY_UNIFORM_PACKED,   8,   32, true, true},
    /* 2-D codebook: bits = 2 per weight, a 4-bit index per pair */
    [EQ_QTYPE_V2G64S]  = {"v2g64s",  EQ_QTYPE_V2G64S,  EQ_QFAMILY_CODEBOOK,         2,   64, true},
    [EQ_QTYPE_V2G128S] = {"v2g128s", EQ_QTYPE_V2G128S, EQ_QFAMILY_CODEBOOK,         2,  128, true},
    /* packed at 2 and 3 bits (added after the 2-D codebook) */
    [EQ_QTYPE_P2G32A]  = {"p2g32a",  EQ_QTYPE_P2G32A,  EQ_QFAMILY_UNIFORM_PACKED,   2,   32, false},
    [EQ_QTYPE_P2G32S]  = {"p2g32s",  EQ_QTYPE_P2G32S,  EQ_QFAMILY_UNIFORM_PACKED,   2,   32, true},
    [EQ_QTYPE_P2G64A]  = {"p2g64a",  EQ_QTYPE_P2G64A,  EQ_QFAMILY_UNIFORM_PACKED,   2,   64, false},
    [EQ_QTYPE_P2G64S]  = {"p2g64s",  EQ_QTYPE_P2G64S,  EQ_QFAMILY_UNIFORM_PACKED,   2,   64, true},
    [EQ_QTYPE_P2G128A] = {"p2g128a", EQ_QTYPE_P2G128A, EQ_QFAMILY_UNIFORM_PACKED,   2,  128, false},
    [EQ_QTYPE_P2G128S] = {"p2g128s", EQ_QTYPE_P2G128S, EQ_QFAMILY_UNIFORM_PACKED,   2,  128, true},
    [EQ_QTYPE_P3G32A]  = {"p3g32a",  EQ_QTYPE_P3G32A,  EQ_QFAMILY_UNIFORM_PACKED,   3,   32, false},
    [EQ_QTYPE_P3G32S]  = {"p3g32s",  EQ_QTYPE_P3G32S,  EQ_QFAMILY_UNIFORM_PACKED,   3,   32, true},
    [EQ_QTYPE_P3G64A]  = {"p3g64a",  EQ_QTYPE_P3G64A,  EQ_QFAMILY_UNIFORM_PACKED,   3,   64, false},
    [EQ_QTYPE_P3G64S]  = {"p3g64s",  EQ_QTYPE_P3G64S,  EQ_QFAMILY_UNIFORM_PACKED,   3,   64, true},
    [EQ_QTYPE_P3G128A] = {"p3g128a", EQ_QTYPE_P3G128A, EQ_QFAMILY_UNIFORM_PACKED,   3,  128, false},
    [EQ_QTYPE_P3G128S] = {"p3g128s", EQ_QTYPE_P3G128S, EQ_QFAMILY_UNIFORM_PACKED,   3,  128, true},
};

_Static_assert(sizeof qtype_table / sizeof qtype_table[0] == EQ_QTYPE_COUNT,
               "one table row per eq_qtype value");

const eq_qtype_traits *eq_qtype_get(int id)
{
    if (id < 0 || id >= EQ_QTYPE_COUNT) {
        return NULL;
    }
    return &qtype_table[id];
}

const char *eq_qfamily_name(int family)
{
    switch (family) {
    case EQ_QFAMILY_PLAIN: return "plain";
    case EQ_QFAMILY_UNIFORM_BITPLANE: return "uniform-bitplane";
    case EQ_QFAMILY_UNIFORM_PACKED: return "uniform-packed";
    case EQ_QFAMILY_CODEBOOK: return "codebook";
    default: return NULL;
    }
}

const char *eq_version(void)
{
    return EQ_VERSION_STRING;
}

int eq_qtype_count(void)
{
    return EQ_QTYPE_COUNT;
}

int eq_qtype_from_name(const char *name)
{
    if (name == NULL) {
        return -1;
    }
    for (int id = 0; id < EQ_QTYPE_COUNT; id++) {
        if (strcmp(qtype_table[id].name, name) == 0) {
            return id;
        }
    }
    return -1;
}

/* ============================================================================================= */
/* sizes                                                                                          */
/* ============================================================================================= */

/* *out = a * b, or EQ_ERR_SIZE_OVERFLOW. */
static int multiply_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) {
        return EQ_ERR_SIZE_OVERFLOW;
    }
    *out = a * b;
    return EQ_OK;
}

/* *out = a + b, or EQ_ERR_SIZE_OVERFLOW. */
static int add_size(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a) {
        return EQ_ERR_SIZE_OVERFLOW;
    }
    *out = a + b;
    return EQ_OK;
}

/* *out = bytes of a (rows, cols) tensor whose bit-plane rows store cols rounded up to `step` columns
 * (EQ_GROUP_STEP: today's layout; G: files without "compact-tail"). */
static int stored_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t step, size_t *out)
{
    size_t count;
    int err;
    switch ((eq_qfamily)type->family) {
    case EQ_QFAMILY_PLAIN:
        if ((err = multiply_size(rows, cols, &count)) != EQ_OK) {
            return err;
        }
        return multiply_size(count, (size_t)type->bits / 8u, out);
    case EQ_QFAMILY_UNIFORM_BITPLANE: {
        /* a tile: n_groups blocks of scales (and mins), then bits planes of 2 bytes per stored column;
         * ceil without overflow: (n - 1) / d + 1 for n >= 1 */
        size_t n_tiles = (rows - 1) / EQ_TILE_ROWS + 1;
        size_t n_groups = (cols - 1) / (size_t)type->group + 1;
        size_t stored_cols, scale_bytes, plane_bytes, tile_bytes;
        if ((err = multiply_size((cols - 1) / step + 1, step, &stored_cols)) != EQ_OK ||
            (err = multiply_size(n_groups, eq_group_block_bytes(type, 0), &scale_bytes)) != EQ_OK ||
            (err = multiply_size(stored_cols, 2u * (size_t)type->bits, &plane_bytes)) != EQ_OK ||
            (err = add_size(scale_bytes, plane_bytes, &tile_bytes)) != EQ_OK) {
            return err;
        }
        return multiply_size(n_tiles, tile_bytes, out);
    }
    case EQ_QFAMILY_UNIFORM_PACKED:
    case EQ_QFAMILY_CODEBOOK: {
        /* tiles of equal size: (codebook,) whole groups, then the last group's columns rounded up to 32 */
        size_t n_tiles = (rows - 1) / EQ_TILE_ROWS + 1;
        size_t stored = ((cols - 1) / EQ_GROUP_STEP + 1) * EQ_GROUP_STEP;   /* cols <= SIZE_MAX / 2; never padded to G */
        size_t full = stored / (size_t)type->group, tail = stored % (size_t)type->group;
        if (cols > SIZE_MAX / 2 || (err = multiply_size(full, eq_packed_block_bytes(type, (size_t)type->group),
                                                        &count)) != EQ_OK) {
            return EQ_ERR_SIZE_OVERFLOW;
        }
        size_t tail_bytes = (tail ? eq_packed_block_bytes(type, tail) : 0) + eq_tile_header_bytes(type);
        if (count > SIZE_MAX - tail_bytes) {
            return EQ_ERR_SIZE_OVERFLOW;
        }
        return multiply_size(n_tiles, count + tail_bytes, out);
    }
    case EQ_QFAMILY_COUNT:
        break;
    }
    return EQ_ERR_UNKNOWN_QTYPE;
}

int eq_tensor_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out)
{
    return stored_nbytes(type, rows, cols, EQ_GROUP_STEP, out);
}

int eq_padded_tail_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out)
{
    return stored_nbytes(type, rows, cols, type->group > 0 ? (size_t)type->group : 1u, out);
}

void eq_compact_tail(const eq_qtype_traits *type, const uint8_t *padded, size_t rows, size_t cols,
                     uint8_t *out)
{
    const size_t n_tiles = (rows - 1) / EQ_TILE_ROWS + 1;
    const size_t n_full = cols / (size_t)type->group;                 /* whole groups, then the last */
    const size_t full_bytes = n_full * eq_block_bytes(type);
    const size_t scale_bytes = eq_group_block_bytes(type, 0);
    const size_t width = eq_last_group_cols(type, cols);              /* < G: cols % G != 0 */
    for (size_t tile = 0; tile < n_tiles; tile++) {
        memcpy(out, padded, full_bytes + scale_bytes);
        out += full_bytes + scale_bytes;
        padded += full_bytes + scale_bytes;
        for (int p = 0; p < type->bits; p++) {                       /* each plane's first chunks */
            memcpy(out, padded, 2u * width);
            out += 2u * width;
            padded += 2u * (size_t)type->group;
        }
    }
}

size_t eq_qtype_nbytes(int id, size_t rows, size_t cols)
{
    const eq_qtype_traits *type = eq_qtype_get(id);
    size_t nbytes;
    if (type == NULL || rows == 0 || cols == 0 || eq_tensor_nbytes(type, rows, cols, &nbytes) != EQ_OK) {
        return 0;
    }
    return nbytes;
}

/* ============================================================================================= */
/* fp16 <-> fp32 on bit patterns (binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits)        */
/* ============================================================================================= */

float eq_fp16_to_fp32(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1fu;
    uint32_t mantissa = bits & 0x3ffu;
    uint32_t out;
    if (exponent == 0x1fu) {                       /* inf / NaN: keep the payload */
        out = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {                    /* normal: rebias 15 -> 127 */
        out = sign | ((exponent + (127u - 15u)) << 23) | (mantissa << 13);
    } else {                                       /* zero / subnormal: mantissa * 2^-24, exact */
        float magnitude = (float)mantissa * 0x1p-24f;
        uint32_t magnitude_bits;
        memcpy(&magnitude_bits, &magnitude, sizeof magnitude_bits);
        out = sign | magnitude_bits;
    }
    float value;
    memcpy(&value, &out, sizeof value);
    return value;
}

uint16_t eq_fp32_to_fp16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7fffffffu;

    if (magnitude > 0x7f800000u) {                 /* NaN: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    }
    if (magnitude >= 0x477ff000u) {                /* >= 65520 (incl. inf) rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (magnitude < 0x38800000u) {                 /* < 2^-14: subnormal half or zero */
        if (magnitude <= 0x33000000u) {            /* <= 2^-25: rounds (ties to even) to 0 */
            return sign;
        }
        /* value = m * 2^(e - 150) with the implicit bit; the half's mantissa is value / 2^-24 */
        uint32_t exponent = magnitude >> 23;
        uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - exponent;          /* 14 .. 24 here */
        uint32_t half = mantissa >> shift;
        uint32_t rest = mantissa & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (half & 1u))) {
            half++;                                /* may carry into the smallest normal: correct */
        }
        return (uint16_t)(sign | half);
    }
    /* normal: rebias 127 -> 15, drop 13 mantissa bits with round to nearest even */
    uint32_t half = (magnitude >> 13) - ((127u - 15u) << 10);
    uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) {
        half++;                                    /* a mantissa carry bumps the exponent: correct */
    }
    return (uint16_t)(sign | half);
}

/* ============================================================================================= */
/* public kernel entry points: validate, then call the active set                                 */
/* ============================================================================================= */

/* Common checks of a (rows, cols) tensor argument; sets *type on success. */
static int check_tensor(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
                        const eq_qtype_traits **type)
{
    *type = eq_qtype_get(id);
    if (*type == NULL) {
        return EQ_ERR_UNKNOWN_QTYPE;
    }
    if (data == NULL || rows == 0 || cols == 0) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    size_t nbytes;
    int err = eq_tensor_nbytes(*type, rows, cols, &nbytes);
    if (err != EQ_OK) {
        return err;
    }
    if (data_bytes < nbytes) {
        return EQ_ERR_DATA_TOO_SHORT;
    }
    return EQ_OK;
}

int eq_dequantize_rows(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
                       size_t row_begin, size_t row_count, float *out)
{
    const eq_qtype_traits *type;
    int err = check_tensor(id, data, data_bytes, rows, cols, &type);
    if (err != EQ_OK) {
        return err;
    }
    if (row_begin > rows || row_count > rows - row_begin) {
        return EQ_ERR_ROW_RANGE;
    }
    if (row_count == 0) {
        return EQ_OK;
    }
    if (out == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    const eq_kernels *kernels = eq_active_kernels();
    if (kernels == NULL) {
        return EQ_ERR_ISA;
    }
    kernels->family[type->family].dequantize_rows(type, (const uint8_t *)data, rows, cols, row_begin,
                                                  row_count, out);
    return EQ_OK;
}

/* Validate, then y (n, rows) = W x[v] through `kernels` with activations prepared here. */
static int gemm_with(const eq_kernels *kernels, int id, const void *data, size_t data_bytes,
                     size_t rows, size_t cols, const float *x, size_t n, float *y)
{
    const eq_qtype_traits *type;
    int err = check_tensor(id, data, data_bytes, rows, cols, &type);
    if (err != EQ_OK) {
        return err;
    }
    if (x == NULL || y == NULL || n == 0) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    if (kernels == NULL) {
        return EQ_ERR_ISA;
    }
    eq_acts acts = {0};
    if ((err = eq_acts_reserve(&acts, n, cols, 1u << type->family)) != EQ_OK) {
        eq_acts_free(&acts);
        return err;
    }
    eq_acts_bind(&acts, x, n, cols);
    eq_acts_prepare(kernels, &acts, acts.families, 0, n);
    eq_gemm_prepared(kernels, type, (const uint8_t *)data, rows, cols, &acts, y, rows);
    eq_acts_free(&acts);
    return EQ_OK;
}

int eq_gemv(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
            const float *x, float *y)
{
    return gemm_with(eq_active_kernels(), id, data, data_bytes, rows, cols, x, 1, y);
}

int eq_gemm(int id, const void *data, size_t data_bytes, size_t rows, size_t cols,
            const float *x, size_t n, float *y)
{
    return gemm_with(eq_active_kernels(), id, data, data_bytes, rows, cols, x, n, y);
}

int eq_gemm_isa(const char *isa, int id, const void *data, size_t data_bytes, size_t rows,
                size_t cols, const float *x, size_t n, float *y)
{
    const eq_kernels *kernels = eq_kernels_named(isa);
    if (kernels == NULL) {
        return EQ_ERR_NOT_FOUND;
    }
    return gemm_with(kernels, id, data, data_bytes, rows, cols, x, n, y);
}
