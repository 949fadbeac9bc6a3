/* gguf.c — the GGUF container loader: map the file read-only, walk header, metadata and tensor
 * infos with a bounds-checked cursor, index keys and tensor names in small hash tables (SipHash-1-3
 * keyed with a fresh random seed per open, so no file can be built to make the probing quadratic).
 *
 * Layout read (GGUF v2/v3, little-endian): "GGUF", u32 version, u64 tensor count, u64 key count;
 * keys (u64 length + bytes, u32 value type, value); tensor infos (name, u32 n_dims, u64 dims[n_dims],
 * u32 ggml type, u64 offset); padding to general.alignment; tensor data, each offset relative to the
 * start of the data section and aligned.
 * Every length is checked against the bytes left before it is used; no count is trusted further
 * than the file size can back it; tensor data must lie inside the file and no two tensors may
 * share a byte. Not here: what the keys mean (model.c), big-endian files, writing.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE      /* getentropy */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"

enum {
    HEADER_BYTES = 4 + 4 + 8 + 8,
    MIN_KEY_BYTES = 8 + 1 + 4 + 1,            /* key length, >= 1 key byte, value type, >= 1 value byte */
    MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8,  /* name length, name, n_dims, one dim, type, offset */
    /* Caps from what a real file needs, far above it: an edgeq file has 6 keys per tensor (type,
     * shape, bits, group, symmetric, method) plus ~40 others (a 135M-parameter model: 273 tensors,
     * ~1680 keys; a 1000-layer dense model would have ~12000 tensors). Room is left for two more
     * keys per tensor and 4096 other keys in later format versions. */
    MAX_TENSORS = 1 << 16,
    MAX_KEYS = 8 * MAX_TENSORS + 4096,
    MAX_TENSOR_NAME_BYTES = 256,
    PRINT_NAME_BYTES = 64                     /* longer names are cut in error messages */
};

/* A byte string inside the map (not NUL-terminated). */
typedef struct name_ref {
    const uint8_t *bytes;
    uint64_t len;
} name_ref;

typedef struct gguf_kv {
    name_ref key;            /* first member: the name index reads entries as name_ref */
    uint32_t type;           /* EQ_GGUF_TYPE_* */
    uint32_t elem_type;      /* arrays: the element type */
    const uint8_t *value;    /* scalars: the value bytes; strings: the characters; arrays: element 0 */
    uint64_t count;          /* strings: bytes; arrays: elements; scalars: 1 */
} gguf_kv;

/* What a tensor info says before the data section is placed. */
typedef struct tensor_entry {
    name_ref name;           /* first member: the name index reads entries as name_ref */
    uint64_t offset;         /* from the start of the data section */
} tensor_entry;

/* Open addressing over an entry array: slot = entry index + 1, 0 = empty; at most half full.
 * Hashed with SipHash-1-3 under a per-open random key, so probe runs stay short whatever the names. */
typedef struct name_index {
    uint32_t *slots;
    uint64_t mask;
    uint64_t seed[2];
} name_index;

struct eq_gguf {
    const uint8_t *map;
    uint64_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;              /* start of the tensor data section */
    uint64_t n_keys;
    gguf_kv *keys;                     /* (n_keys,) */
    name_index key_index;
    uint64_t n_tensors;
    eq_gguf_tensor *tensors;           /* (n_tensors,) */
    tensor_entry *tensor_entries;      /* (n_tensors,) names inside the map and offsets, as read */
    name_index tensor_index;
    char *name_storage;                /* the NUL-terminated copies tensors[i].name point into */
};

/* ============================================================================================= */
/* value types                                                                                    */
/* ============================================================================================= */

/*                                           u8 i8 u16 i16 u32 i32 f32 bool str arr u64 i64 f64 */
static const uint8_t value_type_bytes[EQ_GGUF_TYPE_COUNT] = {1, 1, 2,  2,  4,  4,  4,  1,   0,  0,  8,  8,  8};

static const char *const value_type_names[EQ_GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
    "uint64", "int64", "float64",
};

static const char *value_type_name(uint32_t type)
{
    return type < EQ_GGUF_TYPE_COUNT ? value_type_names[type] : "unknown";
}

/* ggml tensor type names, for refusing the ones edgeq does not read by name. */
static const char *ggml_type_name(uint32_t type)
{
    static const char *const names[] = {
        [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [6] = "Q5_0", [7] = "Q5_1",
        [8] = "Q8_0", [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K", [12] = "Q4_K", [13] = "Q5_K",
        [14] = "Q6_K", [15] = "Q8_K", [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS",
        [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS",
        [24] = "I8", [25] = "I16", [26] = "I32", [27] = "I64", [28] = "F64", [29] = "IQ1_M",
        [30] = "BF16", [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4", [40] = "NVFP4", [41] = "Q1_0",
    };
    if (type < sizeof names / sizeof names[0] && names[type] != NULL) {
        return names[type];
    }
    return NULL;
}

/* Bytes per element of the tensor types the runtime reads; 0 for every other type. */
static uint64_t tensor_element_bytes(uint32_t type)
{
    switch (type) {
    case EQ_GGML_TYPE_F32: return 4;
    case EQ_GGML_TYPE_F16: return 2;
    case EQ_GGML_TYPE_I8: return 1;
    default: return 0;
    }
}

/* ============================================================================================= */
/* errors                                                                                         */
/* ============================================================================================= */

/* A name from the file, made safe for a one-line message: non-printable bytes become '?', long
 * names are cut with "...". */
typedef struct printable {
    char text[PRINT_NAME_BYTES + 4];
} printable;

static printable printable_name(const uint8_t *bytes, uint64_t len)
{
    printable out;
    uint64_t n = len < PRINT_NAME_BYTES ? len : PRINT_NAME_BYTES;
    for (uint64_t i = 0; i < n; i++) {
        out.text[i] = (bytes[i] >= 0x20 && bytes[i] < 0x7f) ? (char)bytes[i] : '?';
    }
    if (len > PRINT_NAME_BYTES) {
        memcpy(out.text + n, "...", 3);
        n += 3;
    }
    out.text[n] = '\0';
    return out;
}

typedef struct parser {
    eq_gguf *file;
    uint64_t pos;            /* cursor into file->map; always <= file->size */
    char *err;
    size_t err_size;
} parser;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int fail(char *err, size_t err_size, int code, const char *format, ...)
{
    if (err != NULL && err_size > 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_size, format, args);
        va_end(args);
    }
    return code;
}

/* ============================================================================================= */
/* the cursor                                                                                     */
/* ============================================================================================= */

/* *bytes = the next n bytes, or false if fewer are left. */
static bool take(parser *p, uint64_t n, const uint8_t **bytes)
{
    if (n > p->file->size - p->pos) {
        return false;
    }
    *bytes = p->file->map + p->pos;
    p->pos += n;
    return true;
}

static bool take_u32(parser *p, uint32_t *value)
{
    const uint8_t *bytes;
    if (!take(p, 4, &bytes)) {
        return false;
    }
    *value = eq_gguf_read_u32le(bytes);
    return true;
}

static bool take_u64(parser *p, uint64_t *value)
{
    const uint8_t *bytes;
    if (!take(p, 8, &bytes)) {
        return false;
    }
    *value = eq_gguf_read_u64le(bytes);
    return true;
}

/* A GGUF string: u64 length, then the bytes. */
static bool take_string(parser *p, name_ref *string)
{
    return take_u64(p, &string->len) && take(p, string->len, &string->bytes);
}

static uint64_t bytes_left(const parser *p)
{
    return p->file->size - p->pos;
}

/* ============================================================================================= */
/* the name index                                                                                 */
/* ============================================================================================= */

static uint64_t rotl64(uint64_t x, int bits)
{
    return (x << bits) | (x >> (64 - bits));
}

static void sip_round(uint64_t v[4])
{
    v[0] += v[1]; v[1] = rotl64(v[1], 13); v[1] ^= v[0]; v[0] = rotl64(v[0], 32);
    v[2] += v[3]; v[3] = rotl64(v[3], 16); v[3] ^= v[2];
    v[0] += v[3]; v[3] = rotl64(v[3], 21); v[3] ^= v[0];
    v[2] += v[1]; v[1] = rotl64(v[1], 17); v[1] ^= v[2]; v[2] = rotl64(v[2], 32);
}

/* SipHash-1-3 (one compression round, three finalization rounds) of the bytes under `seed`. */
static uint64_t hash_bytes(const uint64_t seed[2], const uint8_t *bytes, uint64_t len)
{
    uint64_t v[4] = {seed[0] ^ UINT64_C(0x736f6d6570736575), seed[1] ^ UINT64_C(0x646f72616e646f6d),
                     seed[0] ^ UINT64_C(0x6c7967656e657261), seed[1] ^ UINT64_C(0x7465646279746573)};
    uint64_t whole = len - len % 8;
    for (uint64_t i = 0; i < whole; i += 8) {
        uint64_t m = eq_gguf_read_u64le(bytes + i);
        v[3] ^= m;
        sip_round(v);
        v[0] ^= m;
    }
    uint64_t last = (len & 0xff) << 56;
    for (uint64_t i = 0; i < len % 8; i++) {
        last |= (uint64_t)bytes[whole + i] << (8 * i);
    }
    v[3] ^= last;
    sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(v);
    sip_round(v);
    sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* 16 unpredictable bytes: the kernel's entropy, or (should getentropy fail) the clock, the
 * address of `seed` and a counter mixed together. */
static void random_seed(uint64_t seed[2])
{
    if (getentropy(seed, 2 * sizeof seed[0]) == 0) {
        return;
    }
    static atomic_uint_fast64_t counter = 0;
    uint64_t count = (uint64_t)atomic_fetch_add(&counter, 1);
    struct timespec now = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t fallback[2] = {(uint64_t)now.tv_nsec ^ ((uint64_t)now.tv_sec << 30),
                            (uint64_t)(uintptr_t)seed ^ (count * UINT64_C(0x9e3779b97f4a7c15))};
    seed[0] = hash_bytes(fallback, (const uint8_t *)fallback, sizeof fallback);
    seed[1] = hash_bytes(fallback, (const uint8_t *)seed, sizeof seed[0]);
}

static int index_init(name_index *index, uint64_t n_entries)
{
    uint64_t capacity = 16;
    while (capacity < 2 * n_entries) {
        capacity *= 2;
    }
    random_seed(index->seed);
    index->slots = calloc((size_t)capacity, sizeof *index->slots);
    index->mask = capacity - 1;
    return index->slots != NULL ? EQ_OK : EQ_ERR_NO_MEMORY;
}

/* The slot holding `name` (its entry index + 1), or the empty slot where it would go. Entries are
 * `stride` bytes apart and each starts with a name_ref. */
static uint32_t *index_slot(const name_index *index, const void *entries, size_t stride,
                            const uint8_t *name, uint64_t len)
{
    uint64_t i = hash_bytes(index->seed, name, len) & index->mask;
    for (;;) {
        uint32_t *slot = &index->slots[i];
        if (*slot == 0) {
            return slot;
        }
        const name_ref *entry = (const name_ref *)((const char *)entries + (size_t)(*slot - 1) * stride);
        if (entry->len == len && memcmp(entry->bytes, name, (size_t)len) == 0) {
            return slot;
        }
        i = (i + 1) & index->mask;
    }
}

/* ============================================================================================= */
/* metadata                                                                                       */
/* ============================================================================================= */

static int parse_value(parser *p, gguf_kv *kv)
{
    const uint64_t size = p->file->size;
    printable key = printable_name(kv->key.bytes, kv->key.len);
    if (kv->type >= EQ_GGUF_TYPE_COUNT) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: metadata key '%s' has unknown value type %" PRIu32, key.text, kv->type);
    }
    if (kv->type == EQ_GGUF_TYPE_STRING) {
        name_ref string;
        if (!take_u64(p, &string.len)) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: the string value of metadata key '%s' ends past the end of the "
                        "file (file is %" PRIu64 " bytes)", key.text, size);
        }
        if (!take(p, string.len, &string.bytes)) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: the string value of metadata key '%s' (%" PRIu64 " bytes) ends "
                        "past the end of the file (file is %" PRIu64 " bytes)", key.text, string.len, size);
        }
        kv->value = string.bytes;
        kv->count = string.len;
        return EQ_OK;
    }
    if (kv->type != EQ_GGUF_TYPE_ARRAY) {
        kv->count = 1;
        if (!take(p, value_type_bytes[kv->type], &kv->value)) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: the value of metadata key '%s' ends past the end of the file "
                        "(file is %" PRIu64 " bytes)", key.text, size);
        }
        if (kv->type == EQ_GGUF_TYPE_BOOL && kv->value[0] > 1) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "corrupt: metadata key '%s' is a bool of value %u (must be 0 or 1)",
                        key.text, kv->value[0]);
        }
        return EQ_OK;
    }

    if (!take_u32(p, &kv->elem_type) || !take_u64(p, &kv->count)) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated: the array header of metadata key '%s' ends past the end of the file "
                    "(file is %" PRIu64 " bytes)", key.text, size);
    }
    if (kv->elem_type == EQ_GGUF_TYPE_ARRAY) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "unsupported: metadata key '%s' is an array of arrays", key.text);
    }
    if (kv->elem_type >= EQ_GGUF_TYPE_COUNT) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: metadata key '%s' is an array of unknown element type %" PRIu32,
                    key.text, kv->elem_type);
    }
    uint64_t element_bytes = kv->elem_type == EQ_GGUF_TYPE_STRING ? 8 : value_type_bytes[kv->elem_type];
    kv->value = p->file->map + p->pos;
    if (kv->count > bytes_left(p) / element_bytes) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated: metadata key '%s' (array of %" PRIu64 " %s) ends past the end of the "
                    "file (file is %" PRIu64 " bytes)",
                    key.text, kv->count, value_type_name(kv->elem_type), size);
    }
    if (kv->elem_type != EQ_GGUF_TYPE_STRING) {
        const uint8_t *elements;
        take(p, kv->count * element_bytes, &elements);   /* cannot fail: checked above */
        return EQ_OK;
    }
    for (uint64_t i = 0; i < kv->count; i++) {
        name_ref string;
        if (!take_string(p, &string)) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: string %" PRIu64 " of metadata key '%s' ends past the end of the "
                        "file (file is %" PRIu64 " bytes)", i, key.text, size);
        }
    }
    return EQ_OK;
}

static int parse_keys(parser *p)
{
    eq_gguf *file = p->file;
    int status = index_init(&file->key_index, file->n_keys);
    if (status != EQ_OK) {
        return fail(p->err, p->err_size, status, "out of memory indexing %" PRIu64 " metadata keys",
                    file->n_keys);
    }
    for (uint64_t i = 0; i < file->n_keys; i++) {
        gguf_kv *kv = &file->keys[i];
        if (!take_string(p, &kv->key) || !take_u32(p, &kv->type)) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: metadata key #%" PRIu64 " ends past the end of the file "
                        "(file is %" PRIu64 " bytes)", i, file->size);
        }
        if (kv->key.len == 0) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "corrupt: metadata key #%" PRIu64 " has an empty name", i);
        }
        status = parse_value(p, kv);
        if (status != EQ_OK) {
            return status;
        }
        uint32_t *slot = index_slot(&file->key_index, file->keys, sizeof *file->keys,
                                    kv->key.bytes, kv->key.len);
        if (*slot != 0) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT, "corrupt: duplicate metadata key '%s'",
                        printable_name(kv->key.bytes, kv->key.len).text);
        }
        *slot = (uint32_t)(i + 1);
    }
    return EQ_OK;
}

static const gguf_kv *find_key(const eq_gguf *file, const char *key)
{
    if (file == NULL || key == NULL) {
        return NULL;
    }
    uint32_t slot = *index_slot(&file->key_index, file->keys, sizeof *file->keys,
                                (const uint8_t *)key, strlen(key));
    return slot != 0 ? &file->keys[slot - 1] : NULL;
}

/* An integer metadata value as int64/uint64: 0, or EQ_ERR_FORMAT for a non-integer type. */
static int integer_value(const gguf_kv *kv, bool *negative, uint64_t *magnitude)
{
    const uint8_t *v = kv->value;
    int64_t s;
    *negative = false;
    switch (kv->type) {
    case EQ_GGUF_TYPE_UINT8: *magnitude = v[0]; return EQ_OK;
    case EQ_GGUF_TYPE_UINT16: *magnitude = (uint64_t)v[0] | ((uint64_t)v[1] << 8); return EQ_OK;
    case EQ_GGUF_TYPE_UINT32: *magnitude = eq_gguf_read_u32le(v); return EQ_OK;
    case EQ_GGUF_TYPE_UINT64: *magnitude = eq_gguf_read_u64le(v); return EQ_OK;
    case EQ_GGUF_TYPE_INT8: s = (int8_t)v[0]; break;
    case EQ_GGUF_TYPE_INT16: s = (int16_t)(uint16_t)((unsigned)v[0] | ((unsigned)v[1] << 8)); break;
    case EQ_GGUF_TYPE_INT32: s = (int32_t)eq_gguf_read_u32le(v); break;
    case EQ_GGUF_TYPE_INT64: s = (int64_t)eq_gguf_read_u64le(v); break;
    default: return EQ_ERR_FORMAT;
    }
    *negative = s < 0;
    *magnitude = s < 0 ? 0u - (uint64_t)s : (uint64_t)s;
    return EQ_OK;
}

/* general.alignment: absent (the default), or an integer that is a power of two <= 4096. */
static int read_alignment(parser *p)
{
    eq_gguf *file = p->file;
    const gguf_kv *kv = find_key(file, "general.alignment");
    file->alignment = EQ_GGUF_DEFAULT_ALIGNMENT;
    if (kv == NULL) {
        return EQ_OK;
    }
    bool negative;
    uint64_t value;
    if (integer_value(kv, &negative, &value) != EQ_OK) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: general.alignment is a %s, not an integer", value_type_name(kv->type));
    }
    if (negative || value == 0 || value > EQ_GGUF_MAX_ALIGNMENT || (value & (value - 1)) != 0) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: general.alignment is %s%" PRIu64 "; it must be a power of two no larger "
                    "than %d", negative ? "-" : "", value, EQ_GGUF_MAX_ALIGNMENT);
    }
    file->alignment = (uint32_t)value;
    return EQ_OK;
}

/* ============================================================================================= */
/* tensor infos and data                                                                          */
/* ============================================================================================= */

static int truncated_tensor_info(parser *p, const printable *name)
{
    return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                "truncated: the info of tensor '%s' ends past the end of the file (file is %" PRIu64
                " bytes)", name->text, p->file->size);
}

/* Shape, type and size of tensor i: n_dims 1..4, no 0 dimension, no overflow, F32/F16/I8 only. */
static int parse_tensor_shape(parser *p, eq_gguf_tensor *tensor, const printable *name)
{
    if (!take_u32(p, &tensor->n_dims)) {
        return truncated_tensor_info(p, name);
    }
    if (tensor->n_dims < 1 || tensor->n_dims > EQ_GGUF_MAX_DIMS) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: tensor '%s' has %" PRIu32 " dimensions (1 to %d supported)",
                    name->text, tensor->n_dims, EQ_GGUF_MAX_DIMS);
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < EQ_GGUF_MAX_DIMS; d++) {
        tensor->dims[d] = 1;
    }
    for (uint32_t d = 0; d < tensor->n_dims; d++) {
        if (!take_u64(p, &tensor->dims[d])) {
            return truncated_tensor_info(p, name);
        }
        if (tensor->dims[d] == 0) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "corrupt: tensor '%s' has a dimension of size 0", name->text);
        }
        if (elements > UINT64_MAX / tensor->dims[d]) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "corrupt: the element count of tensor '%s' overflows 64 bits", name->text);
        }
        elements *= tensor->dims[d];
    }
    if (!take_u32(p, &tensor->type)) {
        return truncated_tensor_info(p, name);
    }
    uint64_t element_bytes = tensor_element_bytes(tensor->type);
    if (element_bytes == 0) {
        const char *type_name = ggml_type_name(tensor->type);
        if (type_name != NULL) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "unsupported: tensor '%s' has ggml type %s (%" PRIu32 "); edgeq files hold F32, "
                        "F16 and I8 tensors only (convert llama.cpp files with `edgeq convert`)",
                        name->text, type_name, tensor->type);
        }
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: tensor '%s' has unknown ggml type %" PRIu32, name->text, tensor->type);
    }
    if (elements > UINT64_MAX / element_bytes) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: the byte size of tensor '%s' overflows 64 bits", name->text);
    }
    tensor->nbytes = elements * element_bytes;
    return EQ_OK;
}

static int parse_tensor_info(parser *p, uint64_t i)
{
    eq_gguf *file = p->file;
    tensor_entry *entry = &file->tensor_entries[i];
    if (!take_string(p, &entry->name)) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated: the name of tensor #%" PRIu64 " ends past the end of the file "
                    "(file is %" PRIu64 " bytes)", i, file->size);
    }
    if (entry->name.len == 0 || entry->name.len > MAX_TENSOR_NAME_BYTES) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: the name of tensor #%" PRIu64 " is %" PRIu64 " bytes long (1 to %d allowed)",
                    i, entry->name.len, MAX_TENSOR_NAME_BYTES);
    }
    printable name = printable_name(entry->name.bytes, entry->name.len);
    if (memchr(entry->name.bytes, '\0', (size_t)entry->name.len) != NULL) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: the name of tensor '%s' holds a NUL byte", name.text);
    }
    int status = parse_tensor_shape(p, &file->tensors[i], &name);
    if (status != EQ_OK) {
        return status;
    }
    if (!take_u64(p, &entry->offset)) {
        return truncated_tensor_info(p, &name);
    }
    if (entry->offset % file->alignment != 0) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "corrupt: tensor '%s' has data offset %" PRIu64 ", not a multiple of the "
                    "alignment %" PRIu32, name.text, entry->offset, file->alignment);
    }
    uint32_t *slot = index_slot(&file->tensor_index, file->tensor_entries, sizeof *file->tensor_entries,
                                entry->name.bytes, entry->name.len);
    if (*slot != 0) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT, "corrupt: duplicate tensor name '%s'", name.text);
    }
    *slot = (uint32_t)(i + 1);
    return EQ_OK;
}

typedef struct extent {
    uint64_t offset;         /* from the start of the data section */
    uint64_t index;          /* of the tensor */
} extent;

static int by_offset(const void *a, const void *b)
{
    uint64_t x = ((const extent *)a)->offset, y = ((const extent *)b)->offset;
    return (x > y) - (x < y);
}

/* No two tensors share a byte: sorted by offset, each ends at or before the next begins. The
 * extents are already known to lie inside the file, so offset + nbytes cannot wrap. */
static int check_no_overlap(parser *p)
{
    const eq_gguf *file = p->file;
    extent *order = malloc((size_t)file->n_tensors * sizeof *order);
    if (order == NULL) {
        return fail(p->err, p->err_size, EQ_ERR_NO_MEMORY, "out of memory sorting %" PRIu64 " tensors",
                    file->n_tensors);
    }
    for (uint64_t i = 0; i < file->n_tensors; i++) {
        order[i] = (extent){file->tensor_entries[i].offset, i};
    }
    qsort(order, (size_t)file->n_tensors, sizeof *order, by_offset);
    int status = EQ_OK;
    for (uint64_t k = 1; k < file->n_tensors && status == EQ_OK; k++) {
        uint64_t end = order[k - 1].offset + file->tensors[order[k - 1].index].nbytes;
        if (end > order[k].offset) {
            const name_ref *before = &file->tensor_entries[order[k - 1].index].name;
            const name_ref *after = &file->tensor_entries[order[k].index].name;
            status = fail(p->err, p->err_size, EQ_ERR_FORMAT,
                          "corrupt: the data of tensors '%s' (bytes %" PRIu64 " to %" PRIu64 ") and '%s' "
                          "(from byte %" PRIu64 ") overlap",
                          printable_name(before->bytes, before->len).text, order[k - 1].offset, end,
                          printable_name(after->bytes, after->len).text, order[k].offset);
        }
    }
    free(order);
    return status;
}

/* Data section start, every tensor's extent inside the file, and the NUL-terminated name copies. */
static int place_tensors(parser *p)
{
    eq_gguf *file = p->file;
    file->data_offset = p->pos + (file->alignment - p->pos % file->alignment) % file->alignment;
    if (file->n_tensors == 0) {
        return EQ_OK;
    }
    if (file->data_offset > file->size) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated: the tensor data section would start at byte %" PRIu64 ", past the end of "
                    "the file (file is %" PRIu64 " bytes)", file->data_offset, file->size);
    }
    uint64_t available = file->size - file->data_offset;
    uint64_t name_bytes = 0;
    for (uint64_t i = 0; i < file->n_tensors; i++) {
        eq_gguf_tensor *tensor = &file->tensors[i];
        const tensor_entry *entry = &file->tensor_entries[i];
        uint64_t offset = entry->offset;
        if (offset > available || tensor->nbytes > available - offset) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "truncated: tensor data of '%s' (%" PRIu64 " bytes at offset %" PRIu64 ") ends "
                        "past the end of the file (file is %" PRIu64 " bytes)",
                        printable_name(entry->name.bytes, entry->name.len).text,
                        tensor->nbytes, offset, file->size);
        }
        tensor->data = file->map + file->data_offset + offset;
        name_bytes += entry->name.len + 1;   /* each <= MAX_TENSOR_NAME_BYTES: no overflow */
    }
    int status = check_no_overlap(p);
    if (status != EQ_OK) {
        return status;
    }
    file->name_storage = malloc((size_t)name_bytes);
    if (file->name_storage == NULL) {
        return fail(p->err, p->err_size, EQ_ERR_NO_MEMORY, "out of memory copying tensor names");
    }
    char *next = file->name_storage;
    for (uint64_t i = 0; i < file->n_tensors; i++) {
        const name_ref *name = &file->tensor_entries[i].name;
        memcpy(next, name->bytes, (size_t)name->len);
        next[name->len] = '\0';
        file->tensors[i].name = next;
        next += name->len + 1;
    }
    return EQ_OK;
}

/* ============================================================================================= */
/* open / close                                                                                   */
/* ============================================================================================= */

static int parse_header(parser *p)
{
    eq_gguf *file = p->file;
    const uint8_t *map = file->map;
    if (file->size < 4 || memcmp(map, "GGUF", 4) != 0) {
        if (file->size < 4) {
            return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                        "not a GGUF file: only %" PRIu64 " bytes", file->size);
        }
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "not a GGUF file: it starts with bytes %02x %02x %02x %02x, not \"GGUF\"",
                    map[0], map[1], map[2], map[3]);
    }
    if (file->size < HEADER_BYTES) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated: the file is %" PRIu64 " bytes, shorter than a GGUF header (%d bytes)",
                    file->size, HEADER_BYTES);
    }
    p->pos = 4;
    take_u32(p, &file->version);
    take_u64(p, &file->n_tensors);
    take_u64(p, &file->n_keys);
    if (file->version != 2 && file->version != 3) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "unsupported: GGUF version %" PRIu32 "%s (versions 2 and 3 are read)", file->version,
                    (file->version & 0xffffu) == 0 ? ", a big-endian file?" : "");
    }
    uint64_t left = bytes_left(p);
    if (file->n_keys > left / MIN_KEY_BYTES) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated or corrupt: the header claims %" PRIu64 " metadata keys, more than a "
                    "file of %" PRIu64 " bytes can hold", file->n_keys, file->size);
    }
    if (file->n_keys > MAX_KEYS) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "unsupported: the header claims %" PRIu64 " metadata keys, more than the %d an "
                    "edgeq file may have", file->n_keys, MAX_KEYS);
    }
    if (file->n_tensors > (left - file->n_keys * MIN_KEY_BYTES) / MIN_TENSOR_INFO_BYTES) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "truncated or corrupt: the header claims %" PRIu64 " tensors, more than a file of "
                    "%" PRIu64 " bytes can hold", file->n_tensors, file->size);
    }
    if (file->n_tensors > MAX_TENSORS) {
        return fail(p->err, p->err_size, EQ_ERR_FORMAT,
                    "unsupported: the header claims %" PRIu64 " tensors, more than the %d an edgeq "
                    "file may have", file->n_tensors, MAX_TENSORS);
    }
    return EQ_OK;
}

static int parse(parser *p)
{
    eq_gguf *file = p->file;
    int status = parse_header(p);
    if (status != EQ_OK) {
        return status;
    }
    /* Both counts are bounded by the file size and the MAX_* limits above. */
    file->keys = calloc((size_t)file->n_keys + 1, sizeof *file->keys);
    file->tensors = calloc((size_t)file->n_tensors + 1, sizeof *file->tensors);
    file->tensor_entries = calloc((size_t)file->n_tensors + 1, sizeof *file->tensor_entries);
    if (file->keys == NULL || file->tensors == NULL || file->tensor_entries == NULL) {
        return fail(p->err, p->err_size, EQ_ERR_NO_MEMORY, "out of memory for %" PRIu64 " keys and %"
                    PRIu64 " tensors", file->n_keys, file->n_tensors);
    }
    status = parse_keys(p);
    if (status == EQ_OK) {
        status = read_alignment(p);
    }
    if (status == EQ_OK) {
        status = index_init(&file->tensor_index, file->n_tensors);
        if (status != EQ_OK) {
            return fail(p->err, p->err_size, status, "out of memory indexing %" PRIu64 " tensors",
                        file->n_tensors);
        }
    }
    for (uint64_t i = 0; status == EQ_OK && i < file->n_tensors; i++) {
        status = parse_tensor_info(p, i);
    }
    if (status == EQ_OK) {
        status = place_tensors(p);
    }
    return status;
}

/* Open and map the file: EQ_OK, or EQ_ERR_IO / EQ_ERR_FORMAT (empty) with a message. */
static int map_file(const char *path, eq_gguf *file, char *err, size_t err_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return fail(err, err_size, EQ_ERR_IO, "cannot open: %s", strerror(errno));
    }
    struct stat info;
    if (fstat(fd, &info) != 0) {
        int saved = errno;
        close(fd);
        return fail(err, err_size, EQ_ERR_IO, "cannot stat: %s", strerror(saved));
    }
    if (!S_ISREG(info.st_mode)) {
        close(fd);
        return fail(err, err_size, EQ_ERR_IO, "not a regular file");
    }
    if (info.st_size <= 0) {
        close(fd);
        return fail(err, err_size, EQ_ERR_FORMAT, "not a GGUF file: the file is empty");
    }
    if ((uint64_t)info.st_size > SIZE_MAX) {
        close(fd);
        return fail(err, err_size, EQ_ERR_IO, "the file is too large to map on this system");
    }
    void *map = mmap(NULL, (size_t)info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);   /* the mapping keeps the file */
    if (map == MAP_FAILED) {
        return fail(err, err_size, EQ_ERR_IO, "cannot map %" PRIu64 " bytes: %s",
                    (uint64_t)info.st_size, strerror(saved));
    }
    file->map = map;
    file->size = (uint64_t)info.st_size;
    return EQ_OK;
}

int eq_gguf_open(const char *path, eq_gguf **out, char *err, size_t err_size)
{
    if (err != NULL && err_size > 0) {
        err[0] = '\0';
    }
    if (out == NULL) {
        return fail(err, err_size, EQ_ERR_INVALID_ARGUMENT, "invalid argument: out is NULL");
    }
    *out = NULL;
    if (path == NULL) {
        return fail(err, err_size, EQ_ERR_INVALID_ARGUMENT, "invalid argument: path is NULL");
    }
    eq_gguf *file = calloc(1, sizeof *file);
    if (file == NULL) {
        return fail(err, err_size, EQ_ERR_NO_MEMORY, "out of memory");
    }
    int status = map_file(path, file, err, err_size);
    if (status == EQ_OK) {
        parser p = {file, 0, err, err_size};
        status = parse(&p);
    }
    if (status != EQ_OK) {
        eq_gguf_close(file);
        return status;
    }
    *out = file;
    return EQ_OK;
}

void eq_gguf_close(eq_gguf *file)
{
    if (file == NULL) {
        return;
    }
    if (file->map != NULL) {
        munmap((void *)(uintptr_t)file->map, (size_t)file->size);
    }
    free(file->keys);
    free(file->key_index.slots);
    free(file->tensors);
    free(file->tensor_entries);
    free(file->tensor_index.slots);
    free(file->name_storage);
    free(file);
}

/* ============================================================================================= */
/* getters                                                                                        */
/* ============================================================================================= */

uint64_t eq_gguf_file_size(const eq_gguf *file)
{
    return file != NULL ? file->size : 0;
}

uint32_t eq_gguf_version(const eq_gguf *file)
{
    return file != NULL ? file->version : 0;
}

uint32_t eq_gguf_alignment(const eq_gguf *file)
{
    return file != NULL ? file->alignment : 0;
}

/* The key's entry in *kv: EQ_OK, EQ_ERR_INVALID_ARGUMENT or EQ_ERR_NOT_FOUND. */
static int lookup(const eq_gguf *file, const char *key, const void *out, const gguf_kv **kv)
{
    if (file == NULL || key == NULL || out == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    *kv = find_key(file, key);
    return *kv != NULL ? EQ_OK : EQ_ERR_NOT_FOUND;
}

int eq_gguf_get_u32(const eq_gguf *file, const char *key, uint32_t *out)
{
    const gguf_kv *kv;
    int status = lookup(file, key, out, &kv);
    if (status != EQ_OK) {
        return status;
    }
    bool negative;
    uint64_t value;
    if (integer_value(kv, &negative, &value) != EQ_OK || negative || value > UINT32_MAX) {
        return EQ_ERR_FORMAT;
    }
    *out = (uint32_t)value;
    return EQ_OK;
}

int eq_gguf_get_f64(const eq_gguf *file, const char *key, double *out)
{
    const gguf_kv *kv;
    int status = lookup(file, key, out, &kv);
    if (status != EQ_OK) {
        return status;
    }
    if (kv->type == EQ_GGUF_TYPE_FLOAT32) {
        uint32_t bits = eq_gguf_read_u32le(kv->value);
        float value;
        memcpy(&value, &bits, sizeof value);
        *out = value;
        return EQ_OK;
    }
    if (kv->type == EQ_GGUF_TYPE_FLOAT64) {
        uint64_t bits = eq_gguf_read_u64le(kv->value);
        memcpy(out, &bits, sizeof *out);
        return EQ_OK;
    }
    return EQ_ERR_FORMAT;
}

int eq_gguf_get_bool(const eq_gguf *file, const char *key, bool *out)
{
    const gguf_kv *kv;
    int status = lookup(file, key, out, &kv);
    if (status != EQ_OK) {
        return status;
    }
    if (kv->type != EQ_GGUF_TYPE_BOOL) {
        return EQ_ERR_FORMAT;
    }
    *out = kv->value[0] != 0;
    return EQ_OK;
}

int eq_gguf_get_str(const eq_gguf *file, const char *key, const char **ptr, uint64_t *len)
{
    const gguf_kv *kv;
    int status = lookup(file, key, ptr, &kv);
    if (status != EQ_OK) {
        return status;
    }
    if (len == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    if (kv->type != EQ_GGUF_TYPE_STRING) {
        return EQ_ERR_FORMAT;
    }
    *ptr = (const char *)kv->value;
    *len = kv->count;
    return EQ_OK;
}

int eq_gguf_get_array(const eq_gguf *file, const char *key, uint32_t *elem_type,
                      const uint8_t **ptr, uint64_t *count)
{
    const gguf_kv *kv;
    int status = lookup(file, key, ptr, &kv);
    if (status != EQ_OK) {
        return status;
    }
    if (elem_type == NULL || count == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    if (kv->type != EQ_GGUF_TYPE_ARRAY || kv->elem_type == EQ_GGUF_TYPE_STRING) {
        return EQ_ERR_FORMAT;
    }
    *elem_type = kv->elem_type;
    *ptr = kv->value;
    *count = kv->count;
    return EQ_OK;
}

int eq_gguf_get_str_element(const eq_gguf *file, const char *key, uint64_t index, const char **ptr,
                            uint64_t *len, uint64_t *count)
{
    const gguf_kv *kv;
    int status = lookup(file, key, ptr, &kv);
    if (status != EQ_OK) {
        return status;
    }
    if (len == NULL || count == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    if (kv->type != EQ_GGUF_TYPE_ARRAY || kv->elem_type != EQ_GGUF_TYPE_STRING) {
        return EQ_ERR_FORMAT;
    }
    *count = kv->count;
    *ptr = NULL;
    *len = 0;
    if (index >= kv->count) {
        return EQ_OK;
    }
    /* every length was checked against the file when it was parsed */
    const uint8_t *cursor = kv->value;
    for (uint64_t i = 0; i < index; i++) {
        cursor += 8 + eq_gguf_read_u64le(cursor);
    }
    *len = eq_gguf_read_u64le(cursor);
    *ptr = (const char *)cursor + 8;
    return EQ_OK;
}

int eq_gguf_get_u64_array(const eq_gguf *file, const char *key, const uint8_t **ptr, uint64_t *count)
{
    uint32_t elem_type;
    const uint8_t *elements;
    uint64_t n;
    int status = eq_gguf_get_array(file, key, &elem_type, &elements, &n);
    if (status != EQ_OK) {
        return status;
    }
    if (ptr == NULL || count == NULL) {
        return EQ_ERR_INVALID_ARGUMENT;
    }
    if (elem_type != EQ_GGUF_TYPE_UINT64) {
        return EQ_ERR_FORMAT;
    }
    *ptr = elements;
    *count = n;
    return EQ_OK;
}

const eq_gguf_tensor *eq_gguf_find_tensor(const eq_gguf *file, const char *name)
{
    if (file == NULL || name == NULL) {
        return NULL;
    }
    uint32_t slot = *index_slot(&file->tensor_index, file->tensor_entries, sizeof *file->tensor_entries,
                                (const uint8_t *)name, strlen(name));
    return slot != 0 ? &file->tensors[slot - 1] : NULL;
}

uint64_t eq_gguf_tensor_count(const eq_gguf *file)
{
    return file != NULL ? file->n_tensors : 0;
}

const eq_gguf_tensor *eq_gguf_tensor_at(const eq_gguf *file, uint64_t index)
{
    if (file == NULL || index >= file->n_tensors) {
        return NULL;
    }
    return &file->tensors[index];
}
