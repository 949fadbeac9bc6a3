/* gguf.h — internal: the GGUF container loader (mmap, parse, validate; zero-copy tensor data).
 *
 * Every file is untrusted input: eq_gguf_open checks the header, every string and array length,
 * every tensor's shape, type, alignment and extent against the file, and refuses anything else with
 * a one-line message; after a successful open every pointer handed out lies inside the map.
 * It knows the container only (GGUF v2/v3, little-endian), not what an edgeq model means: the
 * model loader (model.c) reads the keys and tensors it needs through the getters below.
 * Not part of the public API (edgeq.h). POSIX mmap; the map is read-only and private. A file
 * truncated by another process while it is mapped can still raise SIGBUS: that is outside its reach.
 */
#ifndef EDGEQ_GGUF_H
#define EDGEQ_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edgeq.h"

/* GGUF metadata value types (the container's own enum). */
enum {
    EQ_GGUF_TYPE_UINT8 = 0,
    EQ_GGUF_TYPE_INT8 = 1,
    EQ_GGUF_TYPE_UINT16 = 2,
    EQ_GGUF_TYPE_INT16 = 3,
    EQ_GGUF_TYPE_UINT32 = 4,
    EQ_GGUF_TYPE_INT32 = 5,
    EQ_GGUF_TYPE_FLOAT32 = 6,
    EQ_GGUF_TYPE_BOOL = 7,
    EQ_GGUF_TYPE_STRING = 8,
    EQ_GGUF_TYPE_ARRAY = 9,
    EQ_GGUF_TYPE_UINT64 = 10,
    EQ_GGUF_TYPE_INT64 = 11,
    EQ_GGUF_TYPE_FLOAT64 = 12,
    EQ_GGUF_TYPE_COUNT = 13        /* ids >= this are unknown */
};

/* ggml tensor types the runtime accepts; every other id is refused at open, by name. */
enum {
    EQ_GGML_TYPE_F32 = 0,
    EQ_GGML_TYPE_F16 = 1,
    EQ_GGML_TYPE_I8 = 24
};

enum {
    EQ_GGUF_MAX_DIMS = 4,
    EQ_GGUF_DEFAULT_ALIGNMENT = 32,
    EQ_GGUF_MAX_ALIGNMENT = 4096
};

typedef struct eq_gguf eq_gguf;

typedef struct eq_gguf_tensor {
    const char *name;        /* NUL-terminated copy, owned by the eq_gguf */
    uint32_t n_dims;         /* 1..4 */
    uint64_t dims[4];        /* ggml order: dims[0] varies fastest (numpy shape reversed);
                              * unused dims are 1; none is 0; the product fits in uint64 */
    uint32_t type;           /* EQ_GGML_TYPE_F32, _F16 or _I8 */
    const uint8_t *data;     /* inside the map, aligned to general.alignment */
    uint64_t nbytes;         /* product of dims * element size; data + nbytes is inside the map */
} eq_gguf_tensor;

/* mmap `path` read-only, parse and validate it. Returns 0 and *out, or a negative eq_error
 * (EQ_ERR_IO, EQ_ERR_FORMAT, EQ_ERR_NO_MEMORY, EQ_ERR_INVALID_ARGUMENT) with a one-line,
 * NUL-terminated message in err (err may be NULL / err_size 0). Messages do not name the file:
 * callers prefix the path. */
int eq_gguf_open(const char *path, eq_gguf **out, char *err, size_t err_size);

/* Unmap and free; NULL is a no-op. Pointers obtained from the file die with it. */
void eq_gguf_close(eq_gguf *file);

uint64_t eq_gguf_file_size(const eq_gguf *file);
uint32_t eq_gguf_version(const eq_gguf *file);
uint32_t eq_gguf_alignment(const eq_gguf *file);

/* Metadata getters: 0 (EQ_OK), EQ_ERR_NOT_FOUND (no such key), EQ_ERR_FORMAT (the key holds another
 * type, or the value is out of range), EQ_ERR_INVALID_ARGUMENT (NULL argument). */

/* Any integer type (u8..i64) whose value fits in uint32. */
int eq_gguf_get_u32(const eq_gguf *file, const char *key, uint32_t *out);

/* FLOAT32 or FLOAT64. */
int eq_gguf_get_f64(const eq_gguf *file, const char *key, double *out);

int eq_gguf_get_bool(const eq_gguf *file, const char *key, bool *out);

/* A STRING: *ptr points into the map and is NOT NUL-terminated; *len bytes. */
int eq_gguf_get_str(const eq_gguf *file, const char *key, const char **ptr, uint64_t *len);

/* An ARRAY of UINT64 (e.g. edgeq.tensor.<name>.shape): *count elements of 8 bytes from *ptr, which
 * may be unaligned: read them with eq_gguf_read_u64le. */
int eq_gguf_get_u64_array(const eq_gguf *file, const char *key, const uint8_t **ptr, uint64_t *count);

/* Any ARRAY whose elements have a fixed size (every type but STRING): its element type
 * (EQ_GGUF_TYPE_*), *count elements from the possibly unaligned *ptr. Arrays of strings give
 * EQ_ERR_FORMAT. */
int eq_gguf_get_array(const eq_gguf *file, const char *key, uint32_t *elem_type,
                      const uint8_t **ptr, uint64_t *count);

/* Element `index` of an ARRAY of STRING (e.g. edgeq.required_features): *count is always the
 * number of elements; for index < *count, *ptr / *len are that string (inside the map, NOT
 * NUL-terminated), else *ptr is NULL and *len 0. Other value types give EQ_ERR_FORMAT. */
int eq_gguf_get_str_element(const eq_gguf *file, const char *key, uint64_t index, const char **ptr,
                            uint64_t *len, uint64_t *count);

/* The tensor called `name`, or NULL if absent (or file/name is NULL). */
const eq_gguf_tensor *eq_gguf_find_tensor(const eq_gguf *file, const char *name);

/* Tensors in file order: index 0 .. count-1 (NULL past the end). */
uint64_t eq_gguf_tensor_count(const eq_gguf *file);
const eq_gguf_tensor *eq_gguf_tensor_at(const eq_gguf *file, uint64_t index);

/* Little-endian readers for array elements (the map may hold them unaligned). */
static inline uint32_t eq_gguf_read_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t eq_gguf_read_u64le(const uint8_t *p)
{
    return (uint64_t)eq_gguf_read_u32le(p) | ((uint64_t)eq_gguf_read_u32le(p + 4) << 32);
}

#endif /* EDGEQ_GGUF_H */
