/* model.c — the runtime: open an edgeq file (validated as untrusted input, format versions 1-2),
 * the llama / qwen2 / qwen3 / gemma3 forward pass over a KV cache, and the public eq_model_* API.
 * The architectures share llama's block; the config's optional fields switch on the rest: per-head
 * q/k RMSNorm before RoPE, post-norms on the attention and MLP outputs, GeGLU, scaled embeddings,
 * a custom attention scale, soft caps on scores and logits, sliding-window layers with their own
 * RoPE base (the cache keeps every position; a sliding layer just reads the last window of it).
 *
 * Reads top to bottom: config, weights (pointers into the mmapped file), run state, validation and
 * open, the building blocks (rmsnorm, rope, matrix products cut into chunks of rows, attention),
 * the forward pass over batches of up to BATCH tokens (prefill reuses every weight tile across the
 * batch; decode is a batch of one) as one thread-pool job of phases per batch (the head included),
 * the public entry points.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "edgeq.h"
#include "gguf.h"
#include "kernels.h"
#include "threadpool.h"

/* The format-compatibility policy (the same in every reader: edgeq/fileformat.py, `edgeq info`):
 * every edgeq.format_version from 1 to FORMAT_VERSION_MAX is read; a higher one is refused. Version 2
 * adds the optional edgeq.required_features (array of strings, absent = none): a file naming a
 * feature missing from known_features is refused, naming it. Config keys added after version 1 are
 * optional, with the defaults the format documents (edgeq/fileformat.py: the qwen3/gemma3 fields, whose
 * defaults are llama's block; read_config reads them with read_*_or).
 * Feature "compact-tail": a partial last group is stored in EQ_GROUP_STEP columns (edgeq.h). Files
 * without it padded that group to G columns; their tensors with K % G != 0 are converted to today's
 * layout into memory the model owns (a copy, only for those files: the kernels know one layout).
 * Feature "packed-fields": packed levels of 5 and 6 bits are stored as planes of bit fields (edgeq.h);
 * files without it stored them a byte each, and their p5/p6 tensors are refused (convert again). */
enum {
    FORMAT_VERSION_MIN = 1,
    FORMAT_VERSION_MAX = 2,
    BATCH = 64,         /* tokens evaluated together: each weight tile is read once per batch */
    CHUNK_BYTES = 256 * 1024,   /* weights per chunk of a large threaded product, at most ... */
    CHUNKS_PER_THREAD = 2       /* ... and at least this many chunks per thread for a small one */
};

/* ============================================================================================= */
/* config, weights, state                                                                         */
/* ============================================================================================= */

typedef struct config {
    int arch;                   /* EQ_ARCH_* */
    int vocab_size, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, max_seq_len;
    double rope_theta, norm_eps;
    bool tied_embeddings, attn_bias;
    bool qk_norm;               /* RMSNorm per head on q and k before RoPE */
    bool post_norms;            /* RMSNorm on the attention and MLP outputs before the residual add */
    bool gelu;                  /* GeGLU (tanh gelu) instead of SwiGLU */
    float embed_scale;          /* embeddings times this (1 but for gemma3) */
    float attn_scale;           /* q.k times this: 1/sqrt(head_dim) unless the file says otherwise */
    float attn_softcap, final_softcap;   /* x -> cap tanh(x / cap) on scores / logits when > 0 */
    int sliding_window;         /* keys a sliding layer's query sees, itself included (0: none) */
    bool *sliding;              /* (n_layers,) true for a sliding-window layer */
    double *inv_freq;           /* (head_dim/2,) rotation frequencies, rope scaling applied */
    double *inv_freq_local;     /* (head_dim/2,) sliding layers' own (unscaled), or NULL: inv_freq */
} config;

typedef struct matrix {         /* a (rows, cols) weight in any quant type, pointing into the map */
    int qtype;
    const uint8_t *data;
    uint8_t *owned;             /* data when it is a converted copy (files before "compact-tail"), else NULL */
    size_t nbytes;
    size_t rows, cols;
    size_t tile_rows;           /* rows per unit of work: 16 for bit-plane types, 1 for plain */
    size_t tile_bytes;          /* bytes per tile_rows rows */
} matrix;

typedef struct layer {
    const float *attn_norm, *ffn_norm;          /* (dim,) */
    const float *q_norm, *k_norm;               /* (head_dim,) or NULL */
    const float *post_attn_norm, *post_ffn_norm;/* (dim,) or NULL */
    matrix wq, wk, wv, wo;                      /* (q_dim, dim), (kv_dim, dim) x2, (dim, q_dim) */
    const float *bq, *bk, *bv;                  /* (q_dim,), (kv_dim,) x2, or NULL */
    matrix w_gate, w_up, w_down;                /* (hidden, dim) x2, (dim, hidden) */
} layer;

/* The pass is one pool job of STEPS_PER_LAYER phases per layer, then HEAD_STEPS for the logits (the
 * workers are handed work once per batch); a phase waits for the one before. Per-token steps take
 * one token per chunk, products a run of rows, attention one (token, head) pair. A decode pass on
 * several threads leaves the norm, prepare and rope steps out: each thread norms and prepares the
 * products' inputs for itself (own_inputs), each attention chunk ropes its query head and the first of
 * a group its kv head (ropes_for_head): 5 phases a layer instead of 10. */
typedef enum step_kind {
    STEP_ATTN_NORM,       /* x -> rmsnorm -> xb, prepared in acts_x                 (per token)  */
    STEP_QKV,             /* q, k, v = xb wq^T, xb wk^T, xb wv^T                    (row chunks) */
    STEP_ROPE,            /* + biases, head norms, rope on q and k, k v into the cache (per token) */
    STEP_ATTENTION,       /* -> xb (n, q_dim)                                        (per pair)  */
    STEP_ATTN_PREPARE,    /* xb prepared in acts_attn                               (per token)  */
    STEP_ATTN_OUT,        /* x += xb wo^T (post-norms: xb2 = xb wo^T)               (row chunks) */
    STEP_ATTN_POST_NORM,  /* post-norms only: x += rmsnorm(xb2)                     (per token)  */
    STEP_FFN_NORM,        /* x -> rmsnorm -> xb, prepared in acts_x                 (per token)  */
    STEP_GATE_UP,         /* hb = act(xb w_gate^T) * (xb w_up^T), act silu or gelu (row chunks) */
    STEP_FFN_PREPARE,     /* hb prepared in acts_ffn                                (per token)  */
    STEP_FFN_DOWN,        /* x += hb w_down^T (post-norms: xb2 = hb w_down^T)       (row chunks) */
    STEP_FFN_POST_NORM,   /* post-norms only: x += rmsnorm(xb2)                     (per token)  */
    STEPS_PER_LAYER,      /* the most steps a layer has (without post-norms it skips two) */
    STEP_OUTPUT_NORM = STEPS_PER_LAYER,   /* the head: x -> rmsnorm -> xb, in acts_head  (per token) */
    STEP_OUTPUT,          /* logits = xb output^T                                   (row chunks) */
    HEAD_STEPS = STEP_OUTPUT + 1 - STEPS_PER_LAYER
} step_kind;

typedef struct forward_step {
    eq_model *m;
    int layer;
    step_kind kind;
} forward_step;

/* How one half of the KV cache (the keys or the values) stores a head's row of head_dim values for
 * one token: fp16, fp32, int8 levels per block of 32 with fp16 scales, or int4 levels (two per byte)
 * per block of 32 with fp16 scales (layouts in src/kernels.h). EQ_KV_K8V4 is STORE_Q8 keys and
 * STORE_Q4 values; the others store both alike (kv_stores). */
typedef enum store_kind { STORE_F16, STORE_F32, STORE_Q8, STORE_Q4 } store_kind;

typedef struct kv_store {
    store_kind kind;
    size_t row_bytes;    /* one head's row of levels or floats: 2 or 4 x head_dim, head_dim, head_dim / 2 */
    size_t row_scales;   /* its fp16 scales, one per block (int8, int4), else 0 */
    uint8_t *data;       /* (n_layers, n_ctx, n_kv_heads, row_bytes) */
    uint16_t *scales;    /* (n_layers, n_ctx, n_kv_heads, row_scales), NULL without scales */
} kv_store;

/* One thread's own copies of a decode pass's product inputs (run_state.own). A prepare step is a
 * phase of one chunk: one thread norms and prepares while the others wait at two barriers. With one
 * token and several threads, each thread instead norms and prepares for itself, on its first chunk of
 * a product, and the four prepare phases of a layer (and their barriers) are gone. */
typedef struct own_inputs {
    float *normed;                      /* (dim,) rmsnorm of x, this thread's */
    eq_acts x, attn, ffn;               /* normed, run_state.xb and .hb prepared for this thread (n 1) */
    const forward_step *x_step, *attn_step, *ffn_step;   /* the steps they were prepared for this pass */
    char pad[64];                       /* the next thread's steps on another cache line */
} own_inputs;

/* Activations of one batch of up to BATCH tokens, row-major (token, feature). */
typedef struct run_state {
    float *x;          /* (BATCH, dim) residual stream */
    float *xb;         /* (BATCH, max(dim, q_dim)) normed input / attention output */
    float *xb2;        /* (BATCH, dim) */
    float *hb, *hb2;   /* (BATCH, hidden_dim) */
    float *q, *k, *v;  /* (BATCH, q_dim), (BATCH, kv_dim), (BATCH, kv_dim) */
    float *scores;     /* (n_threads, n_ctx) attention weights, one row per thread */
    float *rotations;  /* (BATCH, head_dim): per token cos then sin of its RoPE angles, made once per
                          batch before the phases and read by every layer (libm once per token) */
    float *rotations_local;    /* (BATCH, head_dim): the same for sliding layers' own base, or NULL */
    eq_acts acts_x;    /* the products' inputs prepared for the kernel set: normed x (n, dim), */
    eq_acts acts_attn; /* attention output (n, q_dim), */
    eq_acts acts_ffn;  /* SwiGLU output (n, hidden_dim), */
    eq_acts acts_head; /* acts_x's buffers bound to the head's batch: normed x (n_logits, dim) */
    own_inputs *own;   /* (n_threads,) per-thread inputs, used when own_inputs; NULL with one thread */
    bool own_inputs;   /* this pass: one token, several threads: no prepare or rope phases */
    atomic_uchar *kv_state;    /* (n_layers, n_kv_heads): decode's kv heads readied (ropes_for_head) */
    int n, pos0;       /* the batch being evaluated: tokens at positions pos0 .. pos0 + n - 1 */
    int n_logits;      /* the head's batch: the last n_logits tokens, */
    float *logits;     /* (n_logits, vocab) */
    forward_step *steps;       /* (n_layers * STEPS_PER_LAYER + HEAD_STEPS,) the pass's phases and */
    eq_pool_phase *phases;     /* their pool descriptions, rebuilt per batch */
    kv_store keys, values;     /* the KV cache (the stores of m->kv_type: kv_stores) */
} run_state;

struct eq_model {
    eq_gguf *file;
    config cfg;
    matrix token_embd, output;       /* output aliases token_embd when tied */
    const float *output_norm;
    layer *layers;
    run_state s;
    int n_ctx, n_past;
    int kv_type;                     /* EQ_KV_* */
    eq_pool *pool;
    const eq_kernels *kernels;       /* taken at the start of each eval */
    atomic_int busy;
    char last_error[192];            /* why the latest eval/truncate failed */
};

/* ============================================================================================= */
/* validation helpers: every value read from the file is checked before use                      */
/* ============================================================================================= */

typedef struct loader {
    eq_gguf *file;
    char *err;
    size_t err_size;
    int failed;
    char writer[48];    /* edgeq.converter_version, for messages ("unknown" if absent) */
    bool compact_tail;  /* the file requires "compact-tail"; else partial last groups are padded to G */
    bool packed_fields; /* the file requires "packed-fields"; else p5/p6 tensors are in a byte layout */
} loader;

/* Features this reader implements, by the names files list in edgeq.required_features. */
static const char *const known_features[] = {"compact-tail", "packed-fields", NULL};

static int fail(loader *ld, const char *format, ...)
{
    if (!ld->failed && ld->err && ld->err_size) {
        va_list args;
        va_start(args, format);
        vsnprintf(ld->err, ld->err_size, format, args);
        va_end(args);
        for (char *c = ld->err; *c; c++)       /* text quoted from the file stays on one line */
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
    }
    ld->failed = 1;
    return -1;
}

static int read_int(loader *ld, const char *key, int lo, int hi, int *out)
{
    uint32_t value;
    int rc = eq_gguf_get_u32(ld->file, key, &value);
    if (rc == EQ_ERR_NOT_FOUND)
        return fail(ld, "metadata %s is missing; the file is incomplete (convert the model again)", key);
    if (rc != EQ_OK || value < (uint32_t)lo || value > (uint32_t)hi)
        return fail(ld, "metadata %s is invalid (expected an integer in [%d, %d])", key, lo, hi);
    *out = (int)value;
    return 0;
}

static int read_real(loader *ld, const char *key, double lo, double hi, double *out)
{
    int rc = eq_gguf_get_f64(ld->file, key, out);
    if (rc == EQ_ERR_NOT_FOUND)
        return fail(ld, "metadata %s is missing; the file is incomplete (convert the model again)", key);
    if (rc != EQ_OK || !isfinite(*out) || *out < lo || *out > hi)
        return fail(ld, "metadata %s is invalid (expected a number in [%g, %g])", key, lo, hi);
    return 0;
}

static int read_bool(loader *ld, const char *key, bool *out)
{
    int rc = eq_gguf_get_bool(ld->file, key, out);
    if (rc != EQ_OK)
        return fail(ld, "metadata %s is %s", key, rc == EQ_ERR_NOT_FOUND ? "missing" : "not a boolean");
    return 0;
}

/* Optional keys (added after format version 1): absent means the default. */
static int read_int_or(loader *ld, const char *key, int lo, int hi, int fallback, int *out)
{
    uint32_t value;
    if (eq_gguf_get_u32(ld->file, key, &value) == EQ_ERR_NOT_FOUND) {
        *out = fallback;
        return 0;
    }
    return read_int(ld, key, lo, hi, out);
}

static int read_real_or(loader *ld, const char *key, double lo, double hi, double fallback, double *out)
{
    if (eq_gguf_get_f64(ld->file, key, out) == EQ_ERR_NOT_FOUND) {
        *out = fallback;
        return 0;
    }
    return read_real(ld, key, lo, hi, out);
}

static int read_bool_or(loader *ld, const char *key, bool fallback, bool *out)
{
    if (eq_gguf_get_bool(ld->file, key, out) == EQ_ERR_NOT_FOUND) {
        *out = fallback;
        return 0;
    }
    return read_bool(ld, key, out);
}

/* Copy a metadata string into buf (NUL-terminated). */
static int read_string(loader *ld, const char *key, char *buf, size_t size)
{
    const char *ptr;
    uint64_t len;
    int rc = eq_gguf_get_str(ld->file, key, &ptr, &len);
    if (rc != EQ_OK)
        return fail(ld, "metadata %s is %s", key, rc == EQ_ERR_NOT_FOUND ? "missing" : "not a string");
    if (len >= size)
        return fail(ld, "metadata %s is too long", key);
    memcpy(buf, ptr, (size_t)len);
    buf[len] = '\0';
    return 0;
}

/* How a family is stored in the container and split between threads. */
typedef struct family_storage {
    uint32_t ggml_type;          /* the container's tensor type: F32 / F16 for plain, I8 blobs for packed */
    size_t tile_rows;            /* rows per unit of work: the family's tile */
    size_t data_alignment;       /* what its kernels' loads need of the data pointer */
} family_storage;

static int storage_of(const eq_qtype_traits *traits, family_storage *out)
{
    switch ((eq_qfamily)traits->family) {
    case EQ_QFAMILY_PLAIN:
        *out = (family_storage){traits->bits == 32 ? EQ_GGML_TYPE_F32 : EQ_GGML_TYPE_F16, 1, 1};
        return 0;
    case EQ_QFAMILY_UNIFORM_BITPLANE:
    case EQ_QFAMILY_UNIFORM_PACKED:
    case EQ_QFAMILY_CODEBOOK:
        *out = (family_storage){EQ_GGML_TYPE_I8, EQ_TILE_ROWS, 4};
        return 0;
    case EQ_QFAMILY_COUNT:
        break;
    }
    return -1;
}

/* Find tensor `name`, check its metadata against the expected logical shape, and describe it.
 * cols == 0 means a 1-D tensor of `rows` values, which must be f32. */
static int load_matrix(loader *ld, const char *name, size_t rows, size_t cols, matrix *out)
{
    char key[256], type_name[32];
    const eq_gguf_tensor *t = eq_gguf_find_tensor(ld->file, name);
    if (!t)
        return fail(ld, "tensor %s is missing; the file is incomplete (convert the model again)", name);
    snprintf(key, sizeof key, "edgeq.tensor.%s.type", name);
    if (read_string(ld, key, type_name, sizeof type_name))
        return -1;
    int id = eq_qtype_from_name(type_name);
    if (id < 0)
        return fail(ld, "tensor %s has quant type '%s' (written by edgeq %s), which this edgeq (%s) does not "
                    "know; upgrade edgeq", name, type_name, ld->writer, eq_version());
    const eq_qtype_traits *traits = eq_qtype_get(id);

    const uint8_t *shape;
    uint64_t n_dims;
    snprintf(key, sizeof key, "edgeq.tensor.%s.shape", name);
    if (eq_gguf_get_u64_array(ld->file, key, &shape, &n_dims) != EQ_OK)
        return fail(ld, "metadata %s is missing or invalid", key);
    uint64_t expected[2] = {rows, cols};
    uint64_t want_dims = cols ? 2 : 1;
    bool same = n_dims == want_dims;
    for (uint64_t d = 0; same && d < n_dims; d++)
        same = eq_gguf_read_u64le(shape + d * 8) == expected[d];
    if (!same)
        return fail(ld, "tensor %s has a shape that does not match the model's dimensions", name);

    int bits, group;
    bool symmetric;
    snprintf(key, sizeof key, "edgeq.tensor.%s.bits", name);
    if (read_int(ld, key, 0, 64, &bits))
        return -1;
    snprintf(key, sizeof key, "edgeq.tensor.%s.group", name);
    if (read_int(ld, key, 0, 1 << 20, &group))
        return -1;
    snprintf(key, sizeof key, "edgeq.tensor.%s.symmetric", name);
    if (read_bool(ld, key, &symmetric))
        return -1;
    if (bits != traits->bits || group != traits->group || symmetric != traits->symmetric)
        return fail(ld, "tensor %s: bits/group/symmetric disagree with its type %s", name, traits->name);

    size_t nbytes = eq_qtype_nbytes(id, rows, cols ? cols : 1);
    if (!cols && id != EQ_QTYPE_F32)
        return fail(ld, "tensor %s must be f32, not %s", name, traits->name);
    if (nbytes == 0)
        return fail(ld, "tensor %s: a (%zu, %zu) %s tensor does not fit in this system's address space",
                    name, rows, cols ? cols : 1, traits->name);
    family_storage storage;
    if (storage_of(traits, &storage))
        return fail(ld, "tensor %s has quant type %s of an unknown family", name, traits->name);
    if (traits->family == EQ_QFAMILY_UNIFORM_PACKED && (traits->bits == 5 || traits->bits == 6) && !ld->packed_fields)
        return fail(ld, "tensor %s: %s stored a byte per level (written by edgeq %s before the 'packed-fields' "
                    "layout), which this edgeq does not read; convert the model again", name, traits->name,
                    ld->writer);
    size_t stored_bytes = nbytes;   /* <= nbytes for files before "compact-tail", which fit too */
    if (!ld->compact_tail && eq_padded_tail_nbytes(traits, rows, cols ? cols : 1, &stored_bytes) != EQ_OK)
        return fail(ld, "tensor %s: a (%zu, %zu) %s tensor does not fit in this system's address space",
                    name, rows, cols ? cols : 1, traits->name);
    if (t->type != storage.ggml_type || t->nbytes != stored_bytes)
        return fail(ld, "tensor %s: stored size or type disagrees with its metadata (%s)", name, traits->name);
    if ((uintptr_t)t->data % storage.data_alignment != 0)
        return fail(ld, "tensor %s is misaligned", name);
    out->qtype = id;
    out->data = t->data;
    out->owned = NULL;
    if (stored_bytes != nbytes) {   /* a partial last group padded to G: convert to today's layout */
        out->owned = aligned_alloc(64, (nbytes + 63) / 64 * 64);
        if (!out->owned)
            return fail(ld, "out of memory converting tensor %s to the compact-tail layout", name);
        eq_compact_tail(traits, t->data, rows, cols, out->owned);
        out->data = out->owned;
    }
    out->nbytes = nbytes;
    out->rows = rows;
    out->cols = cols ? cols : 1;
    out->tile_rows = storage.tile_rows;
    out->tile_bytes = eq_qtype_nbytes(id, storage.tile_rows, out->cols);   /* <= nbytes: no overflow */
    return 0;
}

static int read_string(loader *ld, const char *key, char *buf, size_t size);

static int read_string_or(loader *ld, const char *key, const char *fallback, char *buf, size_t size)
{
    const char *ptr;
    uint64_t len;
    if (eq_gguf_get_str(ld->file, key, &ptr, &len) == EQ_ERR_NOT_FOUND) {
        snprintf(buf, size, "%s", fallback);
        return 0;
    }
    return read_string(ld, key, buf, size);
}

static int load_vector(loader *ld, const char *name, size_t n, const float **out)
{
    matrix m;
    if (load_matrix(ld, name, n, 0, &m))
        return -1;
    if ((uintptr_t)m.data % sizeof(float) != 0)
        return fail(ld, "tensor %s is misaligned", name);
    *out = (const float *)m.data;
    return 0;
}

/* ============================================================================================= */
/* open                                                                                           */
/* ============================================================================================= */

/* edgeq.converter_version (optional) into ld->writer, edgeq.format_version within what this reader
 * knows, every edgeq.required_features entry among known_features. */
static int read_compatibility(loader *ld)
{
    const char *text;
    uint64_t len;
    snprintf(ld->writer, sizeof ld->writer, "unknown");
    if (eq_gguf_get_str(ld->file, "edgeq.converter_version", &text, &len) == EQ_OK && len < sizeof ld->writer) {
        memcpy(ld->writer, text, (size_t)len);
        ld->writer[len] = '\0';
    }
    int version;
    if (read_int(ld, "edgeq.format_version", 0, 1 << 30, &version))
        return -1;
    if (version < FORMAT_VERSION_MIN || version > FORMAT_VERSION_MAX)
        return fail(ld, "edgeq format version %d, written by edgeq %s; this edgeq (%s) reads versions "
                    "%d\u2013%d: upgrade edgeq", version, ld->writer, eq_version(), FORMAT_VERSION_MIN,
                    FORMAT_VERSION_MAX);
    uint64_t count = 0;
    for (uint64_t i = 0; i == 0 || i < count; i++) {
        int rc = eq_gguf_get_str_element(ld->file, "edgeq.required_features", i, &text, &len, &count);
        if (rc == EQ_ERR_NOT_FOUND || (rc == EQ_OK && text == NULL))
            return 0;
        if (rc != EQ_OK)
            return fail(ld, "metadata edgeq.required_features is not an array of strings");
        bool known = false;
        for (const char *const *feature = known_features; *feature && !known; feature++)
            known = strlen(*feature) == len && memcmp(*feature, text, (size_t)len) == 0;
        if (!known)
            return fail(ld, "needs feature '%.*s' (written by edgeq %s), which this edgeq (%s) does not "
                        "have; upgrade edgeq", len > 64 ? 64 : (int)len, text, ld->writer, eq_version());
        if (len == strlen("compact-tail") && memcmp(text, "compact-tail", (size_t)len) == 0)
            ld->compact_tail = true;
        if (len == strlen("packed-fields") && memcmp(text, "packed-fields", (size_t)len) == 0)
            ld->packed_fields = true;
    }
    return 0;
}

/* The optional fields of the newer architectures (ModelConfig's defaults: llama's block). */
static int read_block_options(loader *ld, config *c)
{
    char text[16];
    double embed_scale, attn_scale, attn_softcap, final_softcap;
    if (read_bool_or(ld, "edgeq.qk_norm", false, &c->qk_norm) ||
        read_bool_or(ld, "edgeq.post_norms", false, &c->post_norms) ||
        read_string_or(ld, "edgeq.ffn_act", "silu", text, sizeof text) ||
        read_real_or(ld, "edgeq.embed_scale", 1e-6, 1e6, 1.0, &embed_scale) ||
        read_real_or(ld, "edgeq.attn_scale", 0.0, 1e3, 0.0, &attn_scale) ||
        read_real_or(ld, "edgeq.attn_softcap", 0.0, 1e6, 0.0, &attn_softcap) ||
        read_real_or(ld, "edgeq.final_softcap", 0.0, 1e6, 0.0, &final_softcap) ||
        read_int_or(ld, "edgeq.sliding_window", 0, 1 << 24, 0, &c->sliding_window))
        return -1;
    if (strcmp(text, "silu") != 0 && strcmp(text, "gelu_tanh") != 0)
        return fail(ld, "MLP activation '%s' is not supported (silu, gelu_tanh)", text);
    c->gelu = strcmp(text, "gelu_tanh") == 0;
    c->embed_scale = (float)embed_scale;
    c->attn_scale = attn_scale > 0.0 ? (float)attn_scale : 1.0f / sqrtf((float)c->head_dim);
    c->attn_softcap = (float)attn_softcap;
    c->final_softcap = (float)final_softcap;
    c->sliding = calloc((size_t)c->n_layers, sizeof *c->sliding);
    if (!c->sliding)
        return fail(ld, "out of memory");
    const char *types;
    uint64_t len;
    int rc = eq_gguf_get_str(ld->file, "edgeq.layer_types", &types, &len);
    if (rc != EQ_ERR_NOT_FOUND && (rc != EQ_OK || (len != 0 && len != (uint64_t)c->n_layers)))
        return fail(ld, "metadata edgeq.layer_types is invalid (one letter, g or s, per layer)");
    bool any_sliding = false;
    for (uint64_t i = 0; rc == EQ_OK && i < len; i++) {
        if (types[i] != 'g' && types[i] != 's')
            return fail(ld, "metadata edgeq.layer_types is invalid (one letter, g or s, per layer)");
        c->sliding[i] = types[i] == 's' && c->sliding_window > 0;
        any_sliding |= c->sliding[i];
    }
    double local_theta;
    if (read_real_or(ld, "edgeq.rope_local_theta", 0.0, 1e12, 0.0, &local_theta))
        return -1;
    if (any_sliding && local_theta > 0.0) {
        int half = c->head_dim / 2;
        c->inv_freq_local = malloc(sizeof(double) * (size_t)half);
        if (!c->inv_freq_local)
            return fail(ld, "out of memory");
        for (int i = 0; i < half; i++)
            c->inv_freq_local[i] = 1.0 / pow(local_theta, (2.0 * i) / c->head_dim);
    }
    return 0;
}

static int read_config(loader *ld, config *c)
{
    char text[64];
    if (read_string(ld, "general.architecture", text, sizeof text))
        return -1;
    if (strcmp(text, "edgeq") != 0)
        return fail(ld, "a GGUF file for '%s', not an edgeq file; convert it with `edgeq convert`", text);
    if (read_compatibility(ld))
        return -1;
    if (read_string(ld, "edgeq.arch", text, sizeof text))
        return -1;
    if (strcmp(text, "llama") == 0)
        c->arch = EQ_ARCH_LLAMA;
    else if (strcmp(text, "qwen2") == 0)
        c->arch = EQ_ARCH_QWEN2;
    else if (strcmp(text, "qwen3") == 0)
        c->arch = EQ_ARCH_QWEN3;
    else if (strcmp(text, "gemma3") == 0)
        c->arch = EQ_ARCH_GEMMA3;
    else
        return fail(ld, "architecture '%s' (written by edgeq %s) is not supported by this edgeq (%s): "
                    "llama, qwen2, qwen3, gemma3", text, ld->writer, eq_version());
    if (read_int(ld, "edgeq.vocab_size", 1, 1 << 24, &c->vocab_size) ||
        read_int(ld, "edgeq.dim", 1, 1 << 16, &c->dim) ||
        read_int(ld, "edgeq.hidden_dim", 1, 1 << 18, &c->hidden_dim) ||
        read_int(ld, "edgeq.n_layers", 1, 1 << 10, &c->n_layers) ||
        read_int(ld, "edgeq.n_heads", 1, 1 << 10, &c->n_heads) ||
        read_int(ld, "edgeq.n_kv_heads", 1, 1 << 10, &c->n_kv_heads) ||
        read_int(ld, "edgeq.head_dim", 2, 1 << 10, &c->head_dim) ||
        read_int(ld, "edgeq.max_seq_len", 1, 1 << 24, &c->max_seq_len) ||
        read_real(ld, "edgeq.rope_theta", 1e-3, 1e12, &c->rope_theta) ||
        read_real(ld, "edgeq.norm_eps", 0.0, 1.0, &c->norm_eps) ||
        read_bool(ld, "edgeq.tied_embeddings", &c->tied_embeddings) ||
        read_bool(ld, "edgeq.attn_bias", &c->attn_bias))
        return -1;
    if (c->head_dim % 2 || c->n_heads % c->n_kv_heads)
        return fail(ld, "inconsistent attention dimensions (head_dim %d, heads %d, kv heads %d)",
                    c->head_dim, c->n_heads, c->n_kv_heads);
    if (read_block_options(ld, c))
        return -1;

    /* rope frequencies exactly as Hugging Face computes them (in double), scaling applied */
    int half = c->head_dim / 2;
    c->inv_freq = malloc(sizeof(double) * (size_t)half);
    if (!c->inv_freq)
        return fail(ld, "out of memory");
    for (int i = 0; i < half; i++)
        c->inv_freq[i] = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
    if (read_string(ld, "edgeq.rope_scaling_type", text, sizeof text))
        return -1;
    double factor = 1.0;
    if (strcmp(text, "none") != 0 && read_real(ld, "edgeq.rope_scaling_factor", 1e-6, 1e6, &factor))
        return -1;
    if (strcmp(text, "linear") == 0) {
        for (int i = 0; i < half; i++)
            c->inv_freq[i] /= factor;
    } else if (strcmp(text, "llama3") == 0) {
        double low, high;
        int original;
        if (read_real(ld, "edgeq.rope_low_freq_factor", 1e-6, 1e6, &low) ||
            read_real(ld, "edgeq.rope_high_freq_factor", 1e-6, 1e6, &high) ||
            read_int(ld, "edgeq.rope_original_max_seq_len", 1, 1 << 24, &original))
            return -1;
        if (high <= low)
            return fail(ld, "llama3 rope scaling needs high_freq_factor > low_freq_factor");
        double low_wavelen = original / low, high_wavelen = original / high;
        for (int i = 0; i < half; i++) {
            double wavelen = 2.0 * 3.14159265358979323846 / c->inv_freq[i];
            if (wavelen > low_wavelen) {
                c->inv_freq[i] /= factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (original / wavelen - low) / (high - low);
                c->inv_freq[i] = (1.0 - smooth) * c->inv_freq[i] / factor + smooth * c->inv_freq[i];
            }
        }
    } else if (strcmp(text, "none") != 0) {
        return fail(ld, "rope scaling '%s' is not supported (none, linear, llama3)", text);
    }
    return 0;
}

static int load_weights(loader *ld, eq_model *m)
{
    const config *c = &m->cfg;
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim, vocab = (size_t)c->vocab_size;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim, kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    if (load_matrix(ld, "token_embd.weight", vocab, dim, &m->token_embd) ||
        load_vector(ld, "output_norm.weight", dim, &m->output_norm))
        return -1;
    if (c->tied_embeddings)
        m->output = m->token_embd;
    else if (load_matrix(ld, "output.weight", vocab, dim, &m->output))
        return -1;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return fail(ld, "out of memory");
    char name[96];
#define TENSOR(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, i), name)
    for (int i = 0; i < c->n_layers; i++) {
        layer *l = &m->layers[i];
        if (load_vector(ld, TENSOR("attn_norm.weight"), dim, &l->attn_norm) ||
            load_vector(ld, TENSOR("ffn_norm.weight"), dim, &l->ffn_norm) ||
            load_matrix(ld, TENSOR("attn_q.weight"), q_dim, dim, &l->wq) ||
            load_matrix(ld, TENSOR("attn_k.weight"), kv_dim, dim, &l->wk) ||
            load_matrix(ld, TENSOR("attn_v.weight"), kv_dim, dim, &l->wv) ||
            load_matrix(ld, TENSOR("attn_output.weight"), dim, q_dim, &l->wo) ||
            load_matrix(ld, TENSOR("ffn_gate.weight"), hidden, dim, &l->w_gate) ||
            load_matrix(ld, TENSOR("ffn_up.weight"), hidden, dim, &l->w_up) ||
            load_matrix(ld, TENSOR("ffn_down.weight"), dim, hidden, &l->w_down))
            return -1;
        if (c->qk_norm &&
            (load_vector(ld, TENSOR("attn_q_norm.weight"), (size_t)c->head_dim, &l->q_norm) ||
             load_vector(ld, TENSOR("attn_k_norm.weight"), (size_t)c->head_dim, &l->k_norm)))
            return -1;
        if (c->post_norms &&
            (load_vector(ld, TENSOR("post_attention_norm.weight"), dim, &l->post_attn_norm) ||
             load_vector(ld, TENSOR("post_ffw_norm.weight"), dim, &l->post_ffn_norm)))
            return -1;
        if (c->attn_bias &&
            (load_vector(ld, TENSOR("attn_q.bias"), q_dim, &l->bq) ||
             load_vector(ld, TENSOR("attn_k.bias"), kv_dim, &l->bk) ||
             load_vector(ld, TENSOR("attn_v.bias"), kv_dim, &l->bv)))
            return -1;
    }
#undef TENSOR
    return 0;
}

/* *out = a * b * c, false if that overflows size_t (every buffer size from the file goes through
 * here, so a 32-bit build refuses what it cannot address instead of wrapping). */
static bool size_product(size_t a, size_t b, size_t c, size_t *out)
{
    if ((b != 0 && a > SIZE_MAX / b) || (c != 0 && a * b > SIZE_MAX / c))
        return false;
    *out = a * b * c;
    return true;
}

/* calloc of a (count,) buffer of `size`-byte elements, with count 0 allocating one element */
static void *alloc_array(size_t count, size_t size)
{
    return calloc(count ? count : 1, size);
}

/* Bit f set when a product reads an input prepared for family f */
#define FAMILY_BIT(w) (1u << eq_qtype_get((w).qtype)->family)

/* Which families acts_x (normed x: q/k/v, gate/up, the head), acts_attn (wo) and acts_ffn (w_down)
 * have room for: every layer's (each step prepares only for its own layer's readers, step_families). */
static void input_families(const eq_model *m, unsigned *x_families, unsigned *attn_families,
                           unsigned *ffn_families)
{
    *x_families = FAMILY_BIT(m->output);
    *attn_families = *ffn_families = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const layer *l = &m->layers[i];
        *x_families |= FAMILY_BIT(l->wq) | FAMILY_BIT(l->wk) | FAMILY_BIT(l->wv) | FAMILY_BIT(l->w_gate) |
                       FAMILY_BIT(l->w_up);
        *attn_families |= FAMILY_BIT(l->wo);
        *ffn_families |= FAMILY_BIT(l->w_down);
    }
}

/* The key and value stores of KV cache type kv_type (EQ_KV_*, checked) for heads of head_dim values */
static void kv_stores(int kv_type, size_t head_dim, kv_store *keys, kv_store *values)
{
    store_kind key_kind = kv_type == EQ_KV_F32 ? STORE_F32 : kv_type == EQ_KV_Q8 || kv_type == EQ_KV_K8V4 ? STORE_Q8
                        : STORE_F16;
    store_kind value_kind = kv_type == EQ_KV_K8V4 ? STORE_Q4 : key_kind;
    kv_store *stores[2] = {keys, values};
    store_kind kinds[2] = {key_kind, value_kind};
    for (int i = 0; i < 2; i++) {
        memset(stores[i], 0, sizeof *stores[i]);
        stores[i]->kind = kinds[i];
        switch (kinds[i]) {
        case STORE_F16: stores[i]->row_bytes = 2 * head_dim; break;
        case STORE_F32: stores[i]->row_bytes = 4 * head_dim; break;
        case STORE_Q8: stores[i]->row_bytes = head_dim; stores[i]->row_scales = eq_kv_q8_blocks(head_dim); break;
        case STORE_Q4: stores[i]->row_bytes = (head_dim + 1) / 2; stores[i]->row_scales = eq_kv_q4_blocks(head_dim); break;
        }
    }
}

static int alloc_state(loader *ld, eq_model *m)
{
    const config *c = &m->cfg;
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim, kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t wide = q_dim > dim ? q_dim : dim;
    run_state *s = &m->s;
    kv_stores(m->kv_type, (size_t)c->head_dim, &s->keys, &s->values);
    kv_store *stores[2] = {&s->keys, &s->values};
    /* floats per buffer: (BATCH, dim), (BATCH, wide), (BATCH, hidden), (BATCH, q_dim), (BATCH, kv_dim),
     * (n_threads, n_ctx); per K and V store: head rows (n_layers, n_ctx, n_kv_heads) of row_bytes, and
     * their fp16 scales (n_layers, n_ctx, n_kv_heads, row_scales) */
    size_t n_dim, n_wide, n_hidden, n_q, n_kv, n_scores, n_rows, n_data[2], n_scale_bytes[2];
    if (!size_product(BATCH, dim, sizeof(float), &n_dim) || !size_product(BATCH, wide, sizeof(float), &n_wide) ||
        !size_product(BATCH, hidden, sizeof(float), &n_hidden) || !size_product(BATCH, q_dim, sizeof(float), &n_q) ||
        !size_product(BATCH, kv_dim, sizeof(float), &n_kv) ||
        !size_product((size_t)eq_pool_size(m->pool), (size_t)m->n_ctx, sizeof(float), &n_scores))
        return fail(ld, "the model's dimensions (dim %d, hidden %d, heads %d x %d) need buffers larger than "
                        "this system can address", c->dim, c->hidden_dim, c->n_heads, c->head_dim);
    bool fits = size_product((size_t)c->n_layers, (size_t)m->n_ctx, (size_t)c->n_kv_heads, &n_rows);
    size_t n_total = 0;   /* bytes of both stores with their scales */
    for (int i = 0; fits && i < 2; i++) {
        fits = size_product(n_rows, stores[i]->row_bytes, 1, &n_data[i]) &&
               size_product(n_rows, stores[i]->row_scales, sizeof(uint16_t), &n_scale_bytes[i]) &&
               n_data[i] <= SIZE_MAX - n_total && n_scale_bytes[i] <= SIZE_MAX - n_total - n_data[i];
        if (fits)
            n_total += n_data[i] + n_scale_bytes[i];
    }
    if (!fits)
        return fail(ld, "the KV cache for context %d does not fit in this system's address space; "
                        "choose a smaller context", m->n_ctx);
    s->x = alloc_array(n_dim / sizeof(float), sizeof(float));
    s->xb = alloc_array(n_wide / sizeof(float), sizeof(float));
    s->xb2 = alloc_array(n_dim / sizeof(float), sizeof(float));
    s->hb = alloc_array(n_hidden / sizeof(float), sizeof(float));
    s->hb2 = alloc_array(n_hidden / sizeof(float), sizeof(float));
    s->q = alloc_array(n_q / sizeof(float), sizeof(float));
    s->k = alloc_array(n_kv / sizeof(float), sizeof(float));
    s->v = alloc_array(n_kv / sizeof(float), sizeof(float));
    s->scores = alloc_array(n_scores / sizeof(float), sizeof(float));
    s->rotations = alloc_array(n_q / sizeof(float), sizeof(float));   /* head_dim <= q_dim */
    if (c->inv_freq_local && !(s->rotations_local = alloc_array(n_q / sizeof(float), sizeof(float))))
        return fail(ld, "out of memory");
    bool stores_allocated = true;
    for (int i = 0; i < 2; i++) {
        stores[i]->data = alloc_array(n_data[i], 1);
        stores[i]->scales = stores[i]->row_scales ? alloc_array(n_scale_bytes[i] / sizeof(uint16_t), sizeof(uint16_t)) : NULL;
        stores_allocated &= stores[i]->data != NULL && (!stores[i]->row_scales || stores[i]->scales != NULL);
    }
    unsigned x_families, attn_families, ffn_families;
    input_families(m, &x_families, &attn_families, &ffn_families);
    s->steps = alloc_array((size_t)c->n_layers * STEPS_PER_LAYER + HEAD_STEPS, sizeof *s->steps);
    s->phases = alloc_array((size_t)c->n_layers * STEPS_PER_LAYER + HEAD_STEPS, sizeof *s->phases);
    bool own_allocated = true;
    if (eq_pool_size(m->pool) > 1 &&
        !(s->kv_state = alloc_array((size_t)c->n_layers * (size_t)c->n_kv_heads, sizeof *s->kv_state)))
        own_allocated = false;
    if (eq_pool_size(m->pool) > 1 && (s->own = alloc_array((size_t)eq_pool_size(m->pool), sizeof *s->own)))
        for (int t = 0; t < eq_pool_size(m->pool); t++) {
            own_inputs *own = &s->own[t];
            own_allocated &= (own->normed = alloc_array(dim, sizeof(float))) != NULL &&
                             eq_acts_reserve(&own->x, 1, dim, x_families) == EQ_OK &&
                             eq_acts_reserve(&own->attn, 1, q_dim, attn_families) == EQ_OK &&
                             eq_acts_reserve(&own->ffn, 1, hidden, ffn_families) == EQ_OK;
        }
    if (!s->x || !s->xb || !s->xb2 || !s->hb || !s->hb2 || !s->q || !s->k || !s->v || !s->scores || !s->rotations ||
        !stores_allocated || (eq_pool_size(m->pool) > 1 && !s->own) || !own_allocated ||
        !s->steps || !s->phases ||
        eq_acts_reserve(&s->acts_x, BATCH, (size_t)c->dim, x_families) != EQ_OK ||
        eq_acts_reserve(&s->acts_attn, BATCH, q_dim, attn_families) != EQ_OK ||
        eq_acts_reserve(&s->acts_ffn, BATCH, (size_t)c->hidden_dim, ffn_families) != EQ_OK)
        return fail(ld, "out of memory allocating the KV cache and buffers for context %d "
                        "(%.1f MB); choose a smaller context", m->n_ctx,
                    (double)n_total / 1e6);
    return 0;
}

eq_model *eq_model_open(const char *path, const eq_model_params *params, char *err, size_t err_size)
{
    loader ld = {NULL, err, err_size, 0, "unknown", false, false};
    if (err && err_size)
        err[0] = '\0';
    if (!path) {
        fail(&ld, "no model path given");
        return NULL;
    }
    eq_model *m = calloc(1, sizeof *m);
    if (!m) {
        fail(&ld, "out of memory");
        return NULL;
    }
    if (eq_gguf_open(path, &m->file, err, err_size) != EQ_OK) {
        ld.failed = 1;
        eq_model_close(m);
        return NULL;
    }
    ld.file = m->file;
    if (read_config(&ld, &m->cfg) || load_weights(&ld, m))
        goto failed;
    eq_model_params defaults = {0, 0, 0, 0};
    if (!params)
        params = &defaults;
    m->n_ctx = params->n_ctx > 0 ? params->n_ctx : (m->cfg.max_seq_len < 4096 ? m->cfg.max_seq_len : 4096);
    if (params->n_ctx < 0 || m->n_ctx > m->cfg.max_seq_len) {
        fail(&ld, "context %d is outside [1, %d], the model's maximum", params->n_ctx, m->cfg.max_seq_len);
        goto failed;
    }
    if (params->kv_type < EQ_KV_F16 || params->kv_type > EQ_KV_K8V4 ||
        (params->kv_fp32 && params->kv_type != EQ_KV_F16 && params->kv_type != EQ_KV_F32)) {
        fail(&ld, "KV cache type %d (with kv_fp32 %d) is not one of fp16 (0), fp32 (1), int8 (2), "
                  "int8 keys with int4 values (3)",
             params->kv_type, params->kv_fp32);
        goto failed;
    }
    m->kv_type = params->kv_fp32 ? EQ_KV_F32 : params->kv_type;
    int n_threads = params->n_threads > 0 ? params->n_threads : eq_physical_cores();
    if (n_threads > 256)
        n_threads = 256;
    m->pool = eq_pool_create(n_threads);
    if (!m->pool) {
        fail(&ld, "cannot start %d threads", n_threads);
        goto failed;
    }
    if (alloc_state(&ld, m))
        goto failed;
    if (eq_active_kernels() == NULL) {
        fail(&ld, "EDGEQ_ISA=%s names no kernel set this CPU runs", getenv("EDGEQ_ISA"));
        goto failed;
    }
    return m;
failed:
    eq_model_close(m);
    return NULL;
}

void eq_model_close(eq_model *m)
{
    if (!m)
        return;
    for (int t = 0; m->s.own && t < eq_pool_size(m->pool); t++) {
        own_inputs *own = &m->s.own[t];
        free(own->normed);
        eq_acts_free(&own->x); eq_acts_free(&own->attn); eq_acts_free(&own->ffn);
    }
    free(m->s.own);
    free(m->s.kv_state);
    eq_pool_destroy(m->pool);
    free(m->s.x); free(m->s.xb); free(m->s.xb2); free(m->s.hb); free(m->s.hb2);
    free(m->s.q); free(m->s.k); free(m->s.v); free(m->s.scores); free(m->s.rotations); free(m->s.rotations_local);
    free(m->s.keys.data); free(m->s.values.data); free(m->s.keys.scales); free(m->s.values.scales);
    free(m->s.steps); free(m->s.phases);
    eq_acts_free(&m->s.acts_x); eq_acts_free(&m->s.acts_attn); eq_acts_free(&m->s.acts_ffn);
    free(m->token_embd.owned);
    if (m->output.owned != m->token_embd.owned)   /* the same matrix when tied */
        free(m->output.owned);
    for (int i = 0; m->layers && i < m->cfg.n_layers; i++) {
        layer *l = &m->layers[i];
        free(l->wq.owned); free(l->wk.owned); free(l->wv.owned); free(l->wo.owned);
        free(l->w_gate.owned); free(l->w_up.owned); free(l->w_down.owned);
    }
    free(m->layers);
    free(m->cfg.inv_freq);
    free(m->cfg.inv_freq_local);
    free(m->cfg.sliding);
    eq_gguf_close(m->file);
    free(m);
}

/* ============================================================================================= */
/* building blocks                                                                                */
/* ============================================================================================= */

/* out = x * rsqrt(mean(x^2) + eps) * weight, as Hugging Face computes it in float32; out may be x.
 * The sum of squares runs in 8 interleaved partial sums, added pairwise at the end (one
 * chain of n dependent adds was most of the norm: ~1 us at dim 576, twice a layer, while the other
 * threads wait); the order is the same on every CPU. */
static void rmsnorm(float *out, const float *x, const float *weight, int n, double eps)
{
    float partial[8] = {0.0f};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            partial[j] += x[i + j] * x[i + j];
    for (; i < n; i++)
        partial[i % 8] += x[i] * x[i];
    float ss = ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
               ((partial[4] + partial[5]) + (partial[6] + partial[7]));
    float scale = 1.0f / sqrtf(ss / (float)n + (float)eps);
    for (i = 0; i < n; i++)
        out[i] = x[i] * scale * weight[i];
}

/* rotation (head_dim,) = cos, then sin, of position pos's angle per pair (head_dim / 2 each) */
static void rope_rotation(float *rotation, int head_dim, int pos, const double *inv_freq)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double angle = (double)pos * inv_freq[i];
        rotation[i] = (float)cos(angle);
        rotation[half + i] = (float)sin(angle);
    }
}

/* one head's halves (a, b) rotated by the angles' cosines and sines (scalar at -O2: 0.5 us a layer
 * for SmolLM2's 12 heads, benchmarks/README.md "The work between the products") */
static void rotate_halves(float *restrict a, float *restrict b, const float *restrict cosines,
                          const float *restrict sines, int half)
{
    for (int i = 0; i < half; i++) {
        float first = a[i], second = b[i];
        a[i] = first * cosines[i] - second * sines[i];
        b[i] = second * cosines[i] + first * sines[i];
    }
}

/* Rotate each head of vec (n_heads, head_dim) in place by rotation (rope_rotation): Hugging Face's
 * rotate_half convention, dimension i pairs with i + head_dim/2. */
static void rope(float *vec, int n_heads, int head_dim, const float *rotation)
{
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *head = vec + (size_t)h * (size_t)head_dim;
        rotate_halves(head, head + half, rotation, rotation + half, half);
    }
}

/* gelu, tanh approximation (PyTorch's approximate="tanh") */
static float gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* gate[i] = silu(gate[i]) up[i] = gate[i] / (1 + e^-gate[i]) up[i] (the set's e^x), or with gelu */
static void gated(const eq_model *m, float *gate, const float *up, size_t n)
{
    if (m->cfg.gelu) {
        for (size_t i = 0; i < n; i++)
            gate[i] = gelu_tanh(gate[i]) * up[i];
        return;
    }
    enum { PIECE = 64 };
    float e[PIECE];
    for (size_t begin = 0; begin < n; begin += PIECE) {
        size_t count = n - begin < PIECE ? n - begin : PIECE;
        for (size_t i = 0; i < count; i++)
            e[i] = -gate[begin + i];
        m->kernels->exp(e, e, count);
        for (size_t i = 0; i < count; i++)
            gate[begin + i] = gate[begin + i] / (1.0f + e[i]) * up[begin + i];
    }
}

static float softcap(float x, float cap)
{
    return cap > 0.0f ? cap * tanhf(x / cap) : x;
}

/* ---- matrix products: each matrix's rows cut into chunks of about CHUNK_BYTES of weights (whole
 * 16-row tiles), more chunks than threads, so the threads balance the work between them --------- */

static size_t row_unit(const matrix *w)         /* rows per split unit: the family's tile */
{
    return w->tile_rows;
}

/* How a product's rows are cut: `equal` chunks of whole units, then the last of them cut again
 * into `taper` + 1 pieces of 1/2, 1/4, ..., the last two equal. Threads claim chunks in order, so
 * at the barrier after the product the thread that finishes first waits only for the piece the
 * other one is on, not for a whole chunk: with equal chunks of 256 KB a barrier cost half a chunk
 * (~9 us at 14 GB/s per thread) on average and a whole one when the count was odd. */
typedef struct row_split {
    size_t rows, unit, units;
    int equal, taper;
} row_split;

enum { MAX_TAPER = 3 };

/* Chunks of a product of `bytes` of weights: few enough that claiming them (an atomic on a shared
 * line) and restarting the prefetcher cost little against the weights each streams (measured on Qwen
 * 0.5B 4-bit decode at 2 threads: 32 KB chunks 44 tok/s, 128 KB 63, 256 KB 68, 512 KB 56), enough that
 * every thread gets some of a small matrix and one thread's late chunk holds back little. One
 * thread runs the chunks in order, so nothing is cut further. */
static row_split pool_row_split(const eq_pool *pool, size_t rows, size_t unit, size_t bytes)
{
    row_split s = {rows, unit, (rows + unit - 1) / unit, 0, 0};
    size_t chunks = (bytes + CHUNK_BYTES - 1) / CHUNK_BYTES;
    size_t fewest = (size_t)CHUNKS_PER_THREAD * (size_t)eq_pool_size(pool);
    if (chunks < fewest)
        chunks = fewest;
    s.equal = (int)(chunks > s.units ? s.units : chunks);
    if (eq_pool_size(pool) > 1 && s.equal > 1) {
        size_t last = s.units - s.units * (size_t)(s.equal - 1) / (size_t)s.equal;   /* units in it */
        while (s.taper < MAX_TAPER && last >> (s.taper + 1) > 0)
            s.taper++;
    }
    return s;
}

static int split_chunks(row_split s)
{
    return s.equal + s.taper;
}

/* rows [*row0, *row1) of chunk `chunk` of split s: a contiguous run of whole units */
static void split_rows(row_split s, int chunk, size_t *row0, size_t *row1)
{
    size_t last = s.units * (size_t)(s.equal - 1) / (size_t)s.equal, tail = s.units - last;
    size_t begin, end;
    if (chunk < s.equal - 1) {
        begin = s.units * (size_t)chunk / (size_t)s.equal;
        end = s.units * (size_t)(chunk + 1) / (size_t)s.equal;
    } else {   /* piece k of the last equal chunk starts where 1 - 2^-k of it is done */
        int k = chunk - (s.equal - 1);
        begin = last + tail - (tail >> k);
        end = k == s.taper ? s.units : last + tail - (tail >> (k + 1));
    }
    *row0 = begin * s.unit;
    *row1 = end * s.unit < s.rows ? end * s.unit : s.rows;
}

/* y (acts->n, w->rows), rows [row0, row1) only = acts->x W^T; row0 is a multiple of row_unit(w) */
static void gemm_rows(const eq_model *m, const matrix *w, const eq_acts *acts, size_t row0, size_t row1, float *y)
{
    if (row0 == row1)
        return;
    const uint8_t *data = w->data + row0 / row_unit(w) * w->tile_bytes;
    eq_gemm_prepared(m->kernels, eq_qtype_get(w->qtype), data, row1 - row0, w->cols, acts, y + row0, w->rows);
}

static row_split matrix_split(const eq_model *m, const matrix *w)
{
    return pool_row_split(m->pool, w->rows, row_unit(w), w->nbytes);
}

/* gate and up are cut at the same rows, so a chunk can apply SwiGLU to what it computed */
static row_split gate_up_split(const eq_model *m, const layer *l)
{
    size_t a = row_unit(&l->w_gate), b = row_unit(&l->w_up);
    return pool_row_split(m->pool, l->w_gate.rows, a > b ? a : b, l->w_gate.nbytes + l->w_up.nbytes);
}

/* ---- attention: one (token, head) pair per chunk --------------------------------------------- */

/* Head row `row` of a store is index (layer, position, kv head) of its (n_layers, n_ctx, n_kv_heads)
 * rows. For the n_rows head rows row, row + stride, ...: scores[r] = q . its keys, and out += Σ_r
 * weights[r] its values, for head_dim = n values (the fp16 store in one call of the set's helper,
 * the others a row at a time). */
static void cache_dots(const eq_model *m, const kv_store *st, size_t row, size_t stride, size_t n_rows,
                       const float *q, size_t n, float *scores)
{
    if (st->kind == STORE_F16) {
        m->kernels->dot_f16((const uint16_t *)(void *)(st->data + row * st->row_bytes), stride * st->row_bytes / 2,
                            n_rows, q, n, scores);
        return;
    }
    for (size_t r = 0; r < n_rows; r++, row += stride) {
        const uint8_t *data = st->data + row * st->row_bytes;
        if (st->kind == STORE_Q8) {
            scores[r] = m->kernels->dot_q8((const int8_t *)data, st->scales + row * st->row_scales, q, n);
        } else {   /* STORE_F32 (keys are never int4) */
            const float *keys = (const float *)(const void *)data;
            float dot = 0.0f;
            for (size_t i = 0; i < n; i++)
                dot += q[i] * keys[i];
            scores[r] = dot;
        }
    }
}

static void cache_axpys(const eq_model *m, const kv_store *st, size_t row, size_t stride, size_t n_rows,
                        const float *weights, float *out, size_t n)
{
    if (st->kind == STORE_F16) {
        m->kernels->axpy_f16(out, weights, (const uint16_t *)(void *)(st->data + row * st->row_bytes),
                             stride * st->row_bytes / 2, n_rows, n);
        return;
    }
    for (size_t r = 0; r < n_rows; r++, row += stride) {
        const uint8_t *data = st->data + row * st->row_bytes;
        switch (st->kind) {
        case STORE_Q8:
            m->kernels->axpy_q8(out, weights[r], (const int8_t *)data, st->scales + row * st->row_scales, n);
            break;
        case STORE_Q4:
            m->kernels->axpy_q4(out, weights[r], data, st->scales + row * st->row_scales, n);
            break;
        default: {   /* STORE_F32 */
            const float *values = (const float *)(const void *)data;
            for (size_t i = 0; i < n; i++)
                out[i] += weights[r] * values[i];
            break;
        }
        }
    }
}

/* One head's row of head_dim values into head row `row` (each head quantized on its own) */
static void cache_write_head(eq_model *m, kv_store *st, size_t row, const float *x)
{
    size_t head_dim = (size_t)m->cfg.head_dim;
    uint8_t *data = st->data + row * st->row_bytes;
    switch (st->kind) {
    case STORE_F16:
        m->kernels->to_f16(x, head_dim, (uint16_t *)data);
        break;
    case STORE_F32:
        memcpy(data, x, head_dim * sizeof(float));
        break;
    case STORE_Q8:
        eq_kv_q8_quantize(x, head_dim, (int8_t *)data, st->scales + row * st->row_scales);
        break;
    case STORE_Q4:
        eq_kv_q4_quantize(x, head_dim, data, st->scales + row * st->row_scales);
        break;
    }
}

/* xb[token, head] = softmax(softcap(q . keys * attn_scale)) . values over positions 0 .. pos0 + token
 * (a sliding layer: the last sliding_window of them); `scores` is this thread's (n_ctx,) row */
static void attention_head(eq_model *m, int layer_index, int token, int h, float *scores)
{
    const config *c = &m->cfg;
    run_state *s = &m->s;
    int head_dim = c->head_dim, group = c->n_heads / c->n_kv_heads, pos = s->pos0 + token;
    size_t q_dim = (size_t)c->n_heads * (size_t)head_dim, n_kv_heads = (size_t)c->n_kv_heads;
    size_t head_row = (size_t)layer_index * (size_t)m->n_ctx * n_kv_heads + (size_t)(h / group);   /* + t n_kv_heads */
    int first = c->sliding[layer_index] && pos >= c->sliding_window ? pos - c->sliding_window + 1 : 0;
    const float *q = s->q + (size_t)token * q_dim + (size_t)h * (size_t)head_dim;
    size_t n_rows = (size_t)(pos - first + 1), row0 = head_row + (size_t)first * n_kv_heads;
    cache_dots(m, &s->keys, row0, n_kv_heads, n_rows, q, (size_t)head_dim, scores + first);
    float max_score = -INFINITY;
    for (int t = first; t <= pos; t++) {
        scores[t] = softcap(scores[t] * c->attn_scale, c->attn_softcap);
        if (scores[t] > max_score)
            max_score = scores[t];
    }
    for (int t = first; t <= pos; t++)
        scores[t] -= max_score;
    m->kernels->exp(scores + first, scores + first, n_rows);
    float sum = 0.0f;
    for (int t = first; t <= pos; t++)
        sum += scores[t];
    for (int t = first; t <= pos; t++)
        scores[t] /= sum;
    float *out = s->xb + (size_t)token * q_dim + (size_t)h * (size_t)head_dim;
    memset(out, 0, sizeof(float) * (size_t)head_dim);
    cache_axpys(m, &s->values, row0, n_kv_heads, n_rows, scores + first, out, (size_t)head_dim);
}

/* ============================================================================================= */
/* the forward pass: n <= BATCH tokens at positions pos0 .. pos0 + n - 1                          */
/* ============================================================================================= */

static int step_chunks(const eq_model *m, const forward_step *st)
{
    const run_state *s = &m->s;
    const layer *l = st->kind < STEPS_PER_LAYER ? &m->layers[st->layer] : NULL;
    switch (st->kind) {
    case STEP_QKV:
        return split_chunks(matrix_split(m, &l->wq)) + split_chunks(matrix_split(m, &l->wk)) +
               split_chunks(matrix_split(m, &l->wv));
    case STEP_ATTENTION:
        return s->n * m->cfg.n_heads;
    case STEP_ATTN_OUT:
        return split_chunks(matrix_split(m, &l->wo));
    case STEP_GATE_UP:
        return split_chunks(gate_up_split(m, l));
    case STEP_FFN_DOWN:
        return split_chunks(matrix_split(m, &l->w_down));
    case STEP_OUTPUT_NORM:
        return s->n_logits;
    case STEP_OUTPUT:
        return split_chunks(matrix_split(m, &m->output));
    default:
        return s->n;
    }
}

/* x (n, rows) += y (n, rows), rows [row0, row1) only */
static void add_rows(float *x, const float *y, int n, size_t rows, size_t row0, size_t row1)
{
    for (int t = 0; t < n; t++)
        for (size_t j = row0; j < row1; j++)
            x[(size_t)t * rows + j] += y[(size_t)t * rows + j];
}

/* The families a prepare step prepares its output for: those of the products that read it next (a
 * mixed file's layer reads one or two of the families the whole model uses; preparing for all of
 * them cost a single-threaded prepare per family and layer) */
static unsigned step_families(const eq_model *m, const forward_step *st)
{
    const layer *l = st->kind < STEPS_PER_LAYER ? &m->layers[st->layer] : NULL;
    switch (st->kind) {
    case STEP_ATTN_NORM:
        return FAMILY_BIT(l->wq) | FAMILY_BIT(l->wk) | FAMILY_BIT(l->wv);
    case STEP_FFN_NORM:
        return FAMILY_BIT(l->w_gate) | FAMILY_BIT(l->w_up);
    case STEP_ATTN_PREPARE:
        return FAMILY_BIT(l->wo);
    case STEP_FFN_PREPARE:
        return FAMILY_BIT(l->w_down);
    case STEP_OUTPUT_NORM:
        return FAMILY_BIT(m->output);
    default:
        return 0;
    }
}
#undef FAMILY_BIT

/* The steps a decode pass with threads leaves out (own_inputs): the products and attention do them */
static bool left_to_readers(step_kind kind)
{
    return kind == STEP_ATTN_NORM || kind == STEP_ROPE || kind == STEP_ATTN_PREPARE || kind == STEP_FFN_NORM ||
           kind == STEP_FFN_PREPARE;
}

/* The prepared input product step st reads: the shared one its prepare step made, or in a pass with
 * own inputs this thread's, normed and prepared on its first chunk of st (the same steps, so the same
 * bytes as the shared one) */
static const eq_acts *step_input(eq_model *m, const forward_step *st, int thread)
{
    run_state *s = &m->s;
    const layer *l = &m->layers[st->layer];
    bool attention = st->kind == STEP_QKV || st->kind == STEP_ATTN_OUT;
    if (!s->own_inputs)
        return st->kind == STEP_ATTN_OUT ? &s->acts_attn : st->kind == STEP_FFN_DOWN ? &s->acts_ffn : &s->acts_x;
    own_inputs *own = &s->own[thread];
    eq_acts *acts = st->kind == STEP_ATTN_OUT ? &own->attn : st->kind == STEP_FFN_DOWN ? &own->ffn : &own->x;
    const forward_step **done = st->kind == STEP_ATTN_OUT ? &own->attn_step
                              : st->kind == STEP_FFN_DOWN ? &own->ffn_step : &own->x_step;
    if (*done != st) {
        forward_step prepare = {m, st->layer, st->kind == STEP_QKV ? STEP_ATTN_NORM : st->kind == STEP_GATE_UP
                                              ? STEP_FFN_NORM : attention ? STEP_ATTN_PREPARE : STEP_FFN_PREPARE};
        if (prepare.kind == STEP_ATTN_NORM || prepare.kind == STEP_FFN_NORM)
            rmsnorm(own->normed, s->x, attention ? l->attn_norm : l->ffn_norm, m->cfg.dim, m->cfg.norm_eps);
        eq_acts_prepare(m->kernels, acts, step_families(m, &prepare), 0, 1);
        *done = st;
    }
    return acts;
}

/* The rotation (cos, sin) of token t for this layer: its RoPE base's (made per batch by forward) */
static const float *token_rotation(const eq_model *m, int layer_index, size_t t)
{
    const run_state *s = &m->s;
    size_t head_dim = (size_t)m->cfg.head_dim;
    return m->cfg.sliding[layer_index] && s->rotations_local ? s->rotations_local + t * head_dim
                                                             : s->rotations + t * head_dim;
}

/* Query head h of token t made ready for attention, in place: + bias, per-head norm, RoPE */
static void query_head_ready(eq_model *m, int layer_index, size_t t, int h)
{
    const config *c = &m->cfg;
    const layer *l = &m->layers[layer_index];
    size_t head_dim = (size_t)c->head_dim, q_dim = (size_t)c->n_heads * head_dim, first = (size_t)h * head_dim;
    float *q = m->s.q + t * q_dim + first;
    if (l->bq)
        for (size_t j = 0; j < head_dim; j++)
            q[j] += l->bq[first + j];
    if (l->q_norm)
        rmsnorm(q, q, l->q_norm, c->head_dim, c->norm_eps);
    rope(q, 1, c->head_dim, token_rotation(m, layer_index, t));
}

/* Kv head g of token t: key + bias, per-head norm and RoPE, value + bias, both into the cache */
static void kv_head_ready(eq_model *m, int layer_index, size_t t, int g)
{
    const config *c = &m->cfg;
    const layer *l = &m->layers[layer_index];
    run_state *s = &m->s;
    size_t head_dim = (size_t)c->head_dim, kv_dim = (size_t)c->n_kv_heads * head_dim, first = (size_t)g * head_dim;
    float *k = s->k + t * kv_dim + first, *v = s->v + t * kv_dim + first;
    if (l->bk)
        for (size_t j = 0; j < head_dim; j++) {
            k[j] += l->bk[first + j];
            v[j] += l->bv[first + j];
        }
    if (l->k_norm)
        rmsnorm(k, k, l->k_norm, c->head_dim, c->norm_eps);
    rope(k, 1, c->head_dim, token_rotation(m, layer_index, t));
    size_t row = ((size_t)layer_index * (size_t)m->n_ctx + (size_t)s->pos0 + t) * (size_t)c->n_kv_heads + (size_t)g;
    cache_write_head(m, &s->keys, row, k);
    cache_write_head(m, &s->values, row, v);
}

/* Decode without a rope phase (own_inputs): attention head h readies its own query and, the first of
 * its group to get there, its kv head (kv_state: 0 not begun, 1 begun, 2 in the cache); the others of
 * the group wait for that, well under a microsecond of work by a running thread. */
static void ropes_for_head(eq_model *m, int layer_index, int h)
{
    const config *c = &m->cfg;
    int g = h / (c->n_heads / c->n_kv_heads);
    atomic_uchar *state = &m->s.kv_state[(size_t)layer_index * (size_t)c->n_kv_heads + (size_t)g];
    query_head_ready(m, layer_index, 0, h);
    unsigned char idle = 0;
    if (atomic_compare_exchange_strong_explicit(state, &idle, 1, memory_order_acq_rel, memory_order_acquire)) {
        kv_head_ready(m, layer_index, 0, g);
        atomic_store_explicit(state, 2, memory_order_release);
        return;
    }
    for (unsigned spins = 1; atomic_load_explicit(state, memory_order_acquire) != 2; spins++) {
        EQ_CPU_RELAX();
        if (spins % 1024 == 0)
            sched_yield();   /* the thread it waits for was descheduled */
    }
}

static void forward_chunk(void *raw, int chunk, int thread)
{
    const forward_step *st = raw;
    eq_model *m = st->m;
    const config *c = &m->cfg;
    run_state *s = &m->s;
    const layer *l = st->kind < STEPS_PER_LAYER ? &m->layers[st->layer] : NULL;
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim, row0, row1;
    size_t t = (size_t)chunk;
    switch (st->kind) {
    case STEP_ATTN_NORM:
    case STEP_FFN_NORM:
        rmsnorm(s->xb + t * dim, s->x + t * dim, st->kind == STEP_ATTN_NORM ? l->attn_norm : l->ffn_norm,
                c->dim, c->norm_eps);
        eq_acts_prepare(m->kernels, &s->acts_x, step_families(m, st), t, 1);
        break;
    case STEP_QKV: {
        const matrix *w[3] = {&l->wq, &l->wk, &l->wv};
        float *y[3] = {s->q, s->k, s->v};
        int j = 0;
        row_split split = matrix_split(m, w[0]);
        while (chunk >= split_chunks(split)) {
            chunk -= split_chunks(split);
            split = matrix_split(m, w[++j]);
        }
        split_rows(split, chunk, &row0, &row1);
        gemm_rows(m, w[j], step_input(m, st, thread), row0, row1, y[j]);
        break;
    }
    case STEP_ROPE:
        for (int h = 0; h < c->n_heads; h++)
            query_head_ready(m, st->layer, t, h);
        for (int g = 0; g < c->n_kv_heads; g++)
            kv_head_ready(m, st->layer, t, g);
        break;
    case STEP_ATTENTION:
        if (s->own_inputs)   /* no rope phase: this head's query, and its kv head's once (kv_state) */
            ropes_for_head(m, st->layer, chunk % c->n_heads);
        attention_head(m, st->layer, chunk / c->n_heads, chunk % c->n_heads,
                       s->scores + (size_t)thread * (size_t)m->n_ctx);
        break;
    case STEP_ATTN_PREPARE:
        eq_acts_prepare(m->kernels, &s->acts_attn, step_families(m, st), t, 1);
        break;
    case STEP_ATTN_OUT:
        split_rows(matrix_split(m, &l->wo), chunk, &row0, &row1);
        gemm_rows(m, &l->wo, step_input(m, st, thread), row0, row1, s->xb2);
        if (!c->post_norms)
            add_rows(s->x, s->xb2, s->n, dim, row0, row1);
        break;
    case STEP_ATTN_POST_NORM:
    case STEP_FFN_POST_NORM:
        rmsnorm(s->xb2 + t * dim, s->xb2 + t * dim,
                st->kind == STEP_ATTN_POST_NORM ? l->post_attn_norm : l->post_ffn_norm, c->dim, c->norm_eps);
        add_rows(s->x + t * dim, s->xb2 + t * dim, 1, dim, 0, dim);
        break;
    case STEP_GATE_UP: {
        const eq_acts *input = step_input(m, st, thread);
        split_rows(gate_up_split(m, l), chunk, &row0, &row1);
        gemm_rows(m, &l->w_gate, input, row0, row1, s->hb);
        gemm_rows(m, &l->w_up, input, row0, row1, s->hb2);
        for (int token = 0; token < s->n; token++)
            gated(m, s->hb + (size_t)token * hidden + row0, s->hb2 + (size_t)token * hidden + row0, row1 - row0);
        break;
    }
    case STEP_FFN_PREPARE:
        eq_acts_prepare(m->kernels, &s->acts_ffn, step_families(m, st), t, 1);
        break;
    case STEP_FFN_DOWN:
        split_rows(matrix_split(m, &l->w_down), chunk, &row0, &row1);
        gemm_rows(m, &l->w_down, step_input(m, st, thread), row0, row1, s->xb2);
        if (!c->post_norms)
            add_rows(s->x, s->xb2, s->n, dim, row0, row1);
        break;
    case STEP_OUTPUT_NORM:
        rmsnorm(s->xb + t * dim, s->x + ((size_t)(s->n - s->n_logits) + t) * dim, m->output_norm, c->dim,
                c->norm_eps);
        eq_acts_prepare(m->kernels, &s->acts_head, step_families(m, st), t, 1);
        break;
    case STEP_OUTPUT:
        split_rows(matrix_split(m, &m->output), chunk, &row0, &row1);
        gemm_rows(m, &m->output, &s->acts_head, row0, row1, s->logits);
        if (c->final_softcap > 0.0f)
            for (int token = 0; token < s->n_logits; token++)
                for (size_t j = row0; j < row1; j++) {
                    float *logit = s->logits + (size_t)token * m->output.rows + j;
                    *logit = softcap(*logit, c->final_softcap);
                }
        break;
    }
}

/* A layer's phases in order: llama's block, or with the post-norm phases (gemma3). */
static const step_kind block_steps[] = {STEP_ATTN_NORM, STEP_QKV, STEP_ROPE, STEP_ATTENTION, STEP_ATTN_PREPARE,
                                        STEP_ATTN_OUT, STEP_FFN_NORM, STEP_GATE_UP, STEP_FFN_PREPARE,
                                        STEP_FFN_DOWN};
static const step_kind post_norm_block_steps[] = {STEP_ATTN_NORM, STEP_QKV, STEP_ROPE, STEP_ATTENTION,
                                                  STEP_ATTN_PREPARE, STEP_ATTN_OUT, STEP_ATTN_POST_NORM,
                                                  STEP_FFN_NORM, STEP_GATE_UP, STEP_FFN_PREPARE,
                                                  STEP_FFN_DOWN, STEP_FFN_POST_NORM};
_Static_assert(sizeof post_norm_block_steps / sizeof *post_norm_block_steps == STEPS_PER_LAYER,
               "every layer step is in the post-norm block");

static const step_kind *layer_steps(const config *c, int *count)
{
    *count = c->post_norms ? (int)(sizeof post_norm_block_steps / sizeof *post_norm_block_steps)
                           : (int)(sizeof block_steps / sizeof *block_steps);
    return c->post_norms ? post_norm_block_steps : block_steps;
}

/* logits: NULL, (vocab,) for the last token, or (n, vocab) when all_logits */
static void forward(eq_model *m, const int32_t *tokens, int n, int pos0, float *logits, bool all_logits)
{
    const config *c = &m->cfg;
    run_state *s = &m->s;
    size_t dim = (size_t)c->dim;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim;

    const eq_qtype_traits *embd_type = eq_qtype_get(m->token_embd.qtype);
    for (int t = 0; t < n; t++)   /* tokens checked against the vocabulary by eq_model_eval */
        m->kernels->family[embd_type->family].dequantize_rows(embd_type, m->token_embd.data, m->token_embd.rows, m->token_embd.cols,
                                    (size_t)tokens[t], 1, s->x + (size_t)t * dim);
    if (c->embed_scale != 1.0f)
        for (size_t j = 0; j < (size_t)n * dim; j++)
            s->x[j] *= c->embed_scale;
    s->n = n;
    s->pos0 = pos0;
    eq_acts_bind(&s->acts_x, s->xb, (size_t)n, dim);
    eq_acts_bind(&s->acts_attn, s->xb, (size_t)n, q_dim);
    eq_acts_bind(&s->acts_ffn, s->hb, (size_t)n, (size_t)c->hidden_dim);
    s->n_logits = !logits ? 0 : all_logits ? n : 1;
    s->logits = logits;
    s->acts_head = s->acts_x;   /* the head's norm overwrites acts_x's tables after the last layer's barrier */
    eq_acts_bind(&s->acts_head, s->xb, (size_t)s->n_logits, dim);
    for (int t = 0; t < n; t++) {   /* each token's RoPE cos/sin, once for every layer */
        rope_rotation(s->rotations + (size_t)t * (size_t)c->head_dim, c->head_dim, pos0 + t, c->inv_freq);
        if (s->rotations_local)
            rope_rotation(s->rotations_local + (size_t)t * (size_t)c->head_dim, c->head_dim, pos0 + t,
                          c->inv_freq_local);
    }
    s->own_inputs = n == 1 && s->own;
    for (size_t i = 0; s->own_inputs && i < (size_t)c->n_layers * (size_t)c->n_kv_heads; i++)
        atomic_store_explicit(&s->kv_state[i], 0, memory_order_relaxed);   /* published with the job */
    for (int t = 0; s->own_inputs && t < eq_pool_size(m->pool); t++) {
        own_inputs *own = &s->own[t];
        eq_acts_bind(&own->x, own->normed, 1, dim);
        eq_acts_bind(&own->attn, s->xb, 1, q_dim);
        eq_acts_bind(&own->ffn, s->hb, 1, (size_t)c->hidden_dim);
        own->x_step = own->attn_step = own->ffn_step = NULL;   /* the step addresses repeat every pass */
    }
    int per_layer, n_steps = 0;
    const step_kind *kinds = layer_steps(c, &per_layer);
    for (int layer_index = 0; layer_index < c->n_layers; layer_index++)
        for (int k = 0; k < per_layer; k++)
            if (!s->own_inputs || !left_to_readers(kinds[k]))
                s->steps[n_steps++] = (forward_step){m, layer_index, kinds[k]};
    for (int k = 0; logits && k < HEAD_STEPS; k++)
        s->steps[n_steps++] = (forward_step){m, 0, (step_kind)(STEP_OUTPUT_NORM + k)};
    for (int i = 0; i < n_steps; i++)
        s->phases[i] = (eq_pool_phase){forward_chunk, &s->steps[i], step_chunks(m, &s->steps[i])};
    eq_pool_run(m->pool, s->phases, n_steps);   /* one hand-off to the workers per batch */
}

/* ============================================================================================= */
/* public API                                                                                     */
/* ============================================================================================= */

/* Claim the model for this thread: EQ_ERR_BUSY if another thread has it. Release with
 * atomic_store(&m->busy, 0). */
static int claim(eq_model *m)
{
    if (!m)
        return EQ_ERR_INVALID_ARGUMENT;
    return atomic_exchange(&m->busy, 1) ? EQ_ERR_BUSY : EQ_OK;
}

int eq_model_get_info(eq_model *m, eq_model_info *info)
{
    if (!info)
        return EQ_ERR_INVALID_ARGUMENT;
    int rc = claim(m);   /* n_past changes during an eval */
    if (rc != EQ_OK)
        return rc;
    const config *c = &m->cfg;
    memset(info, 0, sizeof *info);
    info->arch = c->arch;
    info->vocab_size = c->vocab_size;
    info->dim = c->dim;
    info->hidden_dim = c->hidden_dim;
    info->n_layers = c->n_layers;
    info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv_heads;
    info->head_dim = c->head_dim;
    info->max_seq_len = c->max_seq_len;
    info->n_ctx = m->n_ctx;
    info->n_past = m->n_past;
    info->n_threads = eq_pool_size(m->pool);
    info->kv_fp32 = m->kv_type == EQ_KV_F32;
    info->kv_type = m->kv_type;
    uint64_t weights = m->output.nbytes + (uint64_t)c->dim * sizeof(float);
    for (int i = 0; i < c->n_layers; i++) {
        const layer *l = &m->layers[i];
        weights += l->wq.nbytes + l->wk.nbytes + l->wv.nbytes + l->wo.nbytes + l->w_gate.nbytes +
                   l->w_up.nbytes + l->w_down.nbytes + 2u * (uint64_t)c->dim * sizeof(float);
        if (l->bq)
            weights += (l->wq.rows + l->wk.rows + l->wv.rows) * sizeof(float);
        if (l->q_norm)
            weights += 2u * (uint64_t)c->head_dim * sizeof(float);
        if (l->post_attn_norm)
            weights += 2u * (uint64_t)c->dim * sizeof(float);
    }
    info->weight_bytes = weights;
    /* bytes per head and token of K and V: the levels or floats, plus an fp16 scale per block */
    const kv_store *keys = &m->s.keys, *values = &m->s.values;
    uint64_t head_bytes = keys->row_bytes + 2u * keys->row_scales + values->row_bytes + 2u * values->row_scales;
    info->kv_bytes = (uint64_t)c->n_layers * (uint64_t)m->n_ctx * (uint64_t)c->n_kv_heads * head_bytes;
    info->file_bytes = eq_gguf_file_size(m->file);
    eq_pool_counts(m->pool, &info->pool_jobs, &info->pool_jobs_alone);
    atomic_store(&m->busy, 0);
    return EQ_OK;
}

/* Start a call that changes the model's state: claim it (EQ_ERR_BUSY if another thread has it) and
 * clear the last error. The call ends with atomic_store(&m->busy, 0). */
static int enter(eq_model *m)
{
    int rc = claim(m);
    if (rc == EQ_OK)
        m->last_error[0] = '\0';
    return rc;
}

int eq_model_eval(eq_model *m, const int32_t *tokens, int32_t n_tokens, float *logits, int32_t all_logits)
{
    int rc = enter(m);
    if (rc != EQ_OK)
        return rc;
    if (!tokens || n_tokens < 1) {
        rc = EQ_ERR_INVALID_ARGUMENT;
        snprintf(m->last_error, sizeof m->last_error, "no tokens to evaluate");
    }
    for (int32_t i = 0; i < n_tokens && rc == EQ_OK; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            rc = EQ_ERR_INVALID_ARGUMENT;
            snprintf(m->last_error, sizeof m->last_error, "token %d (at %d) is outside the vocabulary [0, %d)",
                     (int)tokens[i], (int)i, m->cfg.vocab_size);
        }
    }
    if (rc == EQ_OK && n_tokens > m->n_ctx - m->n_past) {
        rc = EQ_ERR_CONTEXT_FULL;
        snprintf(m->last_error, sizeof m->last_error, "context full: %d tokens in the cache + %d new > context %d",
                 m->n_past, (int)n_tokens, m->n_ctx);
    }
    m->kernels = eq_active_kernels();
    if (rc == EQ_OK && m->kernels == NULL) {
        rc = EQ_ERR_ISA;
        snprintf(m->last_error, sizeof m->last_error, "EDGEQ_ISA=%s names no kernel set this CPU runs",
                 getenv("EDGEQ_ISA"));
    }
    for (int32_t i = 0; i < n_tokens && rc == EQ_OK; i += BATCH) {
        int n = n_tokens - i < BATCH ? (int)(n_tokens - i) : BATCH;
        float *out = NULL;
        if (logits && all_logits)
            out = logits + (size_t)i * (size_t)m->cfg.vocab_size;
        else if (logits && i + n == n_tokens)
            out = logits;
        forward(m, tokens + i, n, m->n_past, out, all_logits != 0);
        m->n_past += n;
    }
    atomic_store(&m->busy, 0);
    return rc;
}

int eq_model_truncate(eq_model *m, int32_t n_keep)
{
    int rc = enter(m);
    if (rc != EQ_OK)
        return rc;
    if (n_keep < 0 || n_keep > m->n_past) {
        rc = EQ_ERR_INVALID_ARGUMENT;
        snprintf(m->last_error, sizeof m->last_error, "cannot keep %d tokens: the cache holds %d",
                 (int)n_keep, m->n_past);
    } else {
        m->n_past = n_keep;   /* later positions are overwritten before they are read */
    }
    atomic_store(&m->busy, 0);
    return rc;
}

const char *eq_model_last_error(const eq_model *m)
{
    return m ? m->last_error : "no model";
}

/* ============================================================================================= */
/* timing one product as decode runs it (`edgeq profile`)                                         */
/* ============================================================================================= */

typedef struct timed_product {
    const eq_kernels *kernels;
    const eq_qtype_traits *type;
    const uint8_t *data;        /* the copy being timed */
    size_t cols, tile_bytes;
    row_split split;
    const eq_acts *acts;
    float *y;                   /* (rows,) */
} timed_product;

static void timed_product_chunk(void *raw, int chunk, int thread)
{
    const timed_product *p = raw;
    size_t row0, row1;
    (void)thread;
    split_rows(p->split, chunk, &row0, &row1);
    if (row0 < row1)
        eq_gemm_prepared(p->kernels, p->type, p->data + row0 / p->split.unit * p->tile_bytes, row1 - row0,
                         p->cols, p->acts, p->y + row0, p->split.rows);
}

static double timing_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int eq_gemv_time(int id, const void *data, size_t data_bytes, size_t rows, size_t cols, size_t copies,
                 int32_t n_threads, int32_t repeats, double *seconds)
{
    const eq_qtype_traits *type = eq_qtype_get(id);
    const eq_kernels *kernels = eq_active_kernels();
    family_storage storage;
    if (type == NULL)
        return EQ_ERR_UNKNOWN_QTYPE;
    if (kernels == NULL)
        return EQ_ERR_ISA;
    if (!data || !seconds || rows == 0 || cols == 0 || copies == 0 || n_threads < 0 || repeats < 1 ||
        storage_of(type, &storage))
        return EQ_ERR_INVALID_ARGUMENT;
    size_t nbytes = eq_qtype_nbytes(id, rows, cols), stride, total;
    if (nbytes == 0)
        return EQ_ERR_SIZE_OVERFLOW;
    if (data_bytes < nbytes)
        return EQ_ERR_DATA_TOO_SHORT;
    stride = (nbytes + 63) / 64 * 64;
    if (!size_product(stride, copies, 1, &total))
        return EQ_ERR_SIZE_OVERFLOW;
    if (n_threads == 0)
        n_threads = eq_physical_cores();
    uint8_t *block = aligned_alloc(64, total);
    float *x = malloc(cols * sizeof *x), *y = malloc(rows * sizeof *y);
    double *times = malloc((size_t)repeats * sizeof *times);
    eq_pool *pool = block && x && y && times ? eq_pool_create(n_threads) : NULL;
    eq_acts acts = {0};
    int rc = pool ? eq_acts_reserve(&acts, 1, cols, 1u << type->family) : EQ_ERR_NO_MEMORY;
    if (rc == EQ_OK) {
        for (size_t c = 0; c < copies; c++)
            memcpy(block + c * stride, data, nbytes);
        uint32_t state = 0x12345678u;       /* inputs in [-1, 1): what a normed activation looks like */
        for (size_t j = 0; j < cols; j++) {
            state = state * 1664525u + 1013904223u;
            x[j] = (float)(state >> 8) / 8388608.0f - 1.0f;
        }
        eq_acts_bind(&acts, x, 1, cols);
        eq_acts_prepare(kernels, &acts, acts.families, 0, 1);
        timed_product product = {kernels, type, block, cols, eq_qtype_nbytes(id, storage.tile_rows, cols),
                                 pool_row_split(pool, rows, storage.tile_rows, nbytes), &acts, y};
        eq_pool_phase phase = {timed_product_chunk, &product, split_chunks(product.split)};
        eq_pool_run(pool, &phase, 1);        /* warm-up: threads awake, copy 0 read once */
        for (int32_t r = 0; r < repeats; r++) {
            product.data = block + (size_t)(r + 1) % copies * stride;   /* the least recently read copy */
            double start = timing_now();
            eq_pool_run(pool, &phase, 1);
            times[r] = timing_now() - start;
        }
        qsort(times, (size_t)repeats, sizeof *times, compare_doubles);
        *seconds = repeats % 2 ? times[repeats / 2] : 0.5 * (times[repeats / 2 - 1] + times[repeats / 2]);
    }
    eq_acts_free(&acts);
    eq_pool_destroy(pool);
    free(times);
    free(y);
    free(x);
    free(block);
    return rc;
}

int32_t eq_physical_cores(void)
{
    /* distinct (package, core) pairs among the online CPUs; falls back to the online count */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int n_online = online > 0 ? (int)online : 1;
    int pairs[1024][2], n_pairs = 0;
    for (int cpu = 0; cpu < n_online && cpu < 1024; cpu++) {
        char path[128];
        int ids[2] = {-1, -1};
        const char *files[2] = {"physical_package_id", "core_id"};
        for (int f = 0; f < 2; f++) {
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, files[f]);
            FILE *fp = fopen(path, "r");
            if (!fp || fscanf(fp, "%d", &ids[f]) != 1) {
                if (fp)
                    fclose(fp);
                return n_online;
            }
            fclose(fp);
        }
        int seen = 0;
        for (int p = 0; p < n_pairs && !seen; p++)
            seen = pairs[p][0] == ids[0] && pairs[p][1] == ids[1];
        if (!seen) {
            pairs[n_pairs][0] = ids[0];
            pairs[n_pairs][1] = ids[1];
            n_pairs++;
        }
    }
    return n_pairs > 0 ? n_pairs : n_online;
}
