/* model.c — the runtime: open an edgeq file (validated as untrusted input), the llama / qwen2
 * forward pass over a KV cache, and the public eq_model_* API.
 *
 * Reads top to bottom: config, weights (pointers into the mmapped file), run state, validation and
 * open, the building blocks (rmsnorm, rope, attention, threaded matrix products), the
 * forward pass over batches of up to BATCH tokens (prefill reuses every weight tile across the
 * batch; decode is a batch of one), the public entry points.
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
#include <unistd.h>

#include "edgeq.h"
#include "gguf.h"
#include "kernels.h"
#include "threadpool.h"

enum {
    FORMAT_VERSION = 2,
    MAX_JOBS = 3,
    BATCH = 64          /* tokens evaluated together: each weight tile is read once per batch */
};

/* ============================================================================================= */
/* config, weights, state                                                                         */
/* ============================================================================================= */

typedef struct config {
    int arch;                   /* EQ_ARCH_* */
    int vocab_size, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, max_seq_len;
    double rope_theta, norm_eps;
    bool tied_embeddings, attn_bias;
    double *inv_freq;           /* (head_dim/2,) rotation frequencies, rope scaling applied */
} config;

typedef struct matrix {         /* a (rows, cols) weight in any quant type, pointing into the map */
    int qtype;
    const uint8_t *data;
    size_t nbytes;
    size_t rows, cols;
    size_t tile_bytes;          /* bytes per 16-row tile (per row for plain types) */
} matrix;

typedef struct layer {
    const float *attn_norm, *ffn_norm;          /* (dim,) */
    matrix wq, wk, wv, wo;                      /* (q_dim, dim), (kv_dim, dim) x2, (dim, q_dim) */
    const float *bq, *bk, *bv;                  /* (q_dim,), (kv_dim,) x2, or NULL */
    matrix w_gate, w_up, w_down;                /* (hidden, dim) x2, (dim, hidden) */
} layer;

/* Activations of one batch of up to BATCH tokens, row-major (token, feature). */
typedef struct run_state {
    float *x;          /* (BATCH, dim) residual stream */
    float *xb;         /* (BATCH, max(dim, q_dim)) normed input / attention output */
    float *xb2;        /* (BATCH, dim) */
    float *hb, *hb2;   /* (BATCH, hidden_dim) */
    float *q, *k, *v;  /* (BATCH, q_dim), (BATCH, kv_dim), (BATCH, kv_dim) */
    float *scores;     /* (n_threads, n_ctx) attention weights, one row per thread */
    eq_acts acts;      /* the current matmul input, prepared for the kernel set */
    void *key_cache;   /* (n_layers, n_ctx, kv_dim) fp16 or fp32 */
    void *value_cache;
} run_state;

struct eq_model {
    eq_gguf *file;
    config cfg;
    matrix token_embd, output;       /* output aliases token_embd when tied */
    const float *output_norm;
    layer *layers;
    run_state s;
    int n_ctx, n_past;
    bool kv_fp32;
    eq_pool *pool;
    const eq_kernel_set *kernels;    /* taken at the start of each eval */
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
} loader;

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
        return fail(ld, "tensor %s has quant type '%s', which this edgeq does not know (upgrade edgeq)", name, type_name);
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
    uint32_t ggml_type = traits->plain ? (id == EQ_QTYPE_F32 ? 0u : 1u) : 24u;   /* F32, F16, I8 */
    if (nbytes == 0 || t->type != ggml_type || t->nbytes != nbytes)
        return fail(ld, "tensor %s: stored size or type disagrees with its metadata (%s)", name, traits->name);
    out->qtype = id;
    out->data = t->data;
    out->nbytes = nbytes;
    out->rows = rows;
    out->cols = cols ? cols : 1;
    out->tile_bytes = traits->plain ? (size_t)(traits->bits / 8) * out->cols
                                    : eq_qtype_nbytes(id, EQ_TILE_ROWS, out->cols);
    if (!traits->plain && ((uintptr_t)t->data % 4 != 0))
        return fail(ld, "tensor %s is misaligned", name);
    return 0;
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

static int read_config(loader *ld, config *c)
{
    char text[64];
    if (read_string(ld, "general.architecture", text, sizeof text))
        return -1;
    if (strcmp(text, "edgeq") != 0)
        return fail(ld, "a GGUF file for '%s', not an edgeq file; convert it with `edgeq convert`", text);
    int version;
    if (read_int(ld, "edgeq.format_version", 0, 1 << 30, &version))
        return -1;
    if (version < 1 || version > FORMAT_VERSION)   /* every version up to FORMAT_VERSION is read */
        return fail(ld, "edgeq format version %d is not supported (this runtime reads versions 1-%d)", version, FORMAT_VERSION);
    if (read_string(ld, "edgeq.arch", text, sizeof text))
        return -1;
    if (strcmp(text, "llama") == 0)
        c->arch = EQ_ARCH_LLAMA;
    else if (strcmp(text, "qwen2") == 0)
        c->arch = EQ_ARCH_QWEN2;
    else
        return fail(ld, "architecture '%s' is not supported (llama, qwen2)", text);
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
        if (c->attn_bias &&
            (load_vector(ld, TENSOR("attn_q.bias"), q_dim, &l->bq) ||
             load_vector(ld, TENSOR("attn_k.bias"), kv_dim, &l->bk) ||
             load_vector(ld, TENSOR("attn_v.bias"), kv_dim, &l->bv)))
            return -1;
    }
#undef TENSOR
    return 0;
}

static void *alloc_floats(size_t n)
{
    return calloc(n ? n : 1, sizeof(float));
}

static int alloc_state(loader *ld, eq_model *m)
{
    const config *c = &m->cfg;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim, kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t wide = q_dim > (size_t)c->dim ? q_dim : (size_t)c->dim;
    size_t widest = wide > (size_t)c->hidden_dim ? wide : (size_t)c->hidden_dim;
    run_state *s = &m->s;
    s->x = alloc_floats(BATCH * (size_t)c->dim);
    s->xb = alloc_floats(BATCH * wide);
    s->xb2 = alloc_floats(BATCH * (size_t)c->dim);
    s->hb = alloc_floats(BATCH * (size_t)c->hidden_dim);
    s->hb2 = alloc_floats(BATCH * (size_t)c->hidden_dim);
    s->q = alloc_floats(BATCH * q_dim);
    s->k = alloc_floats(BATCH * kv_dim);
    s->v = alloc_floats(BATCH * kv_dim);
    s->scores = alloc_floats((size_t)eq_pool_size(m->pool) * (size_t)m->n_ctx);
    size_t per_layer = (size_t)m->n_ctx * kv_dim;
    size_t elem = m->kv_fp32 ? sizeof(float) : sizeof(uint16_t);
    if (per_layer > SIZE_MAX / elem / (size_t)c->n_layers)
        return fail(ld, "the KV cache for context %d does not fit in memory", m->n_ctx);
    s->key_cache = calloc(per_layer * (size_t)c->n_layers, elem);
    s->value_cache = calloc(per_layer * (size_t)c->n_layers, elem);
    if (!s->x || !s->xb || !s->xb2 || !s->hb || !s->hb2 || !s->q || !s->k || !s->v || !s->scores ||
        !s->key_cache || !s->value_cache || eq_acts_reserve(&s->acts, BATCH, widest) != EQ_OK)
        return fail(ld, "out of memory allocating the KV cache and buffers for context %d "
                        "(%.1f MB); choose a smaller context", m->n_ctx,
                    2.0 * (double)(per_layer * (size_t)c->n_layers * elem) / 1e6);
    return 0;
}

eq_model *eq_model_open(const char *path, const eq_model_params *params, char *err, size_t err_size)
{
    loader ld = {NULL, err, err_size, 0};
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
    eq_model_params defaults = {0, 0, 0};
    if (!params)
        params = &defaults;
    m->n_ctx = params->n_ctx > 0 ? params->n_ctx : (m->cfg.max_seq_len < 4096 ? m->cfg.max_seq_len : 4096);
    if (params->n_ctx < 0 || m->n_ctx > m->cfg.max_seq_len) {
        fail(&ld, "context %d is outside [1, %d], the model's maximum", params->n_ctx, m->cfg.max_seq_len);
        goto failed;
    }
    m->kv_fp32 = params->kv_fp32 != 0;
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
    return m;
failed:
    eq_model_close(m);
    return NULL;
}

void eq_model_close(eq_model *m)
{
    if (!m)
        return;
    eq_pool_destroy(m->pool);
    free(m->s.x); free(m->s.xb); free(m->s.xb2); free(m->s.hb); free(m->s.hb2);
    free(m->s.q); free(m->s.k); free(m->s.v); free(m->s.scores);
    free(m->s.key_cache); free(m->s.value_cache);
    eq_acts_free(&m->s.acts);
    free(m->layers);
    free(m->cfg.inv_freq);
    eq_gguf_close(m->file);
    free(m);
}

/* ============================================================================================= */
/* building blocks                                                                                */
/* ============================================================================================= */

/* out = x * rsqrt(mean(x^2) + eps) * weight, as Hugging Face computes it in float32 */
static void rmsnorm(float *out, const float *x, const float *weight, int n, double eps)
{
    float ss = 0.0f;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + (float)eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * weight[i];
}

/* Rotate each head of vec (n_heads, head_dim) in place: Hugging Face's rotate_half convention,
 * dimension i pairs with i + head_dim/2. */
static void rope(float *vec, int n_heads, int head_dim, int pos, const double *inv_freq)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double angle = (double)pos * inv_freq[i];
        float c = (float)cos(angle), s = (float)sin(angle);
        for (int h = 0; h < n_heads; h++) {
            float *head = vec + (size_t)h * (size_t)head_dim;
            float a = head[i], b = head[i + half];
            head[i] = a * c - b * s;
            head[i + half] = b * c + a * s;
        }
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* ---- threaded matrix products: prepare the input once, then each thread takes a contiguous run
 * of whole tiles of every matrix and multiplies it with all the batch's tokens ------------------ */

typedef struct matmul_job {
    const matrix *w;
    float *y;          /* (n, w->rows) */
} matmul_job;

typedef struct matmul_batch {
    eq_model *m;
    matmul_job jobs[MAX_JOBS];
    int n_jobs;
} matmul_batch;

static void prepare_worker(void *raw, int index, int n_threads)
{
    eq_model *m = raw;
    size_t n = m->s.acts.n;
    size_t first = n * (size_t)index / (size_t)n_threads, last = n * (size_t)(index + 1) / (size_t)n_threads;
    eq_acts_prepare(m->kernels, &m->s.acts, first, last - first);
}

static void matmul_worker(void *raw, int index, int n_threads)
{
    matmul_batch *batch = raw;
    for (int j = 0; j < batch->n_jobs; j++) {
        const matrix *w = batch->jobs[j].w;
        const eq_qtype_traits *type = eq_qtype_get(w->qtype);
        size_t unit = type->plain ? 1 : EQ_TILE_ROWS;   /* rows per split unit */
        size_t units = (w->rows + unit - 1) / unit;
        size_t begin = units * (size_t)index / (size_t)n_threads;
        size_t end = units * (size_t)(index + 1) / (size_t)n_threads;
        if (begin == end)
            continue;
        size_t row0 = begin * unit, row1 = end * unit < w->rows ? end * unit : w->rows;
        eq_gemm_prepared(batch->m->kernels, type, w->data + begin * w->tile_bytes, row1 - row0, w->cols,
                         &batch->m->s.acts, batch->jobs[j].y + row0, w->rows);
    }
}

/* y_j (n, rows_j) = x (n, cols) W_j^T for every job; all W_j have `cols` columns */
static void matmul(eq_model *m, const float *x, int n, size_t cols, int n_jobs, const matmul_job *jobs)
{
    eq_acts_bind(&m->s.acts, x, (size_t)n, cols);
    if (n > 1)
        eq_pool_run(m->pool, prepare_worker, m);
    else
        eq_acts_prepare(m->kernels, &m->s.acts, 0, 1);
    matmul_batch batch;
    batch.m = m;
    batch.n_jobs = n_jobs;
    memcpy(batch.jobs, jobs, sizeof(matmul_job) * (size_t)n_jobs);
    eq_pool_run(m->pool, matmul_worker, &batch);
}

/* ---- attention: (token, head) pairs spread over the threads ---------------------------------- */

typedef struct attention_job {
    eq_model *m;
    int layer, pos0, n;    /* tokens pos0 .. pos0 + n - 1, already in the cache */
} attention_job;

/* q . key row, and out += weight * value row, for a cache row of n values (fp16 or fp32) */
static float cache_dot(const eq_model *m, const void *cache, size_t base, const float *q, size_t n)
{
    if (!m->kv_fp32)
        return m->kernels->dot_f16((const uint16_t *)cache + base, q, n);
    const float *row = (const float *)cache + base;
    float dot = 0.0f;
    for (size_t i = 0; i < n; i++)
        dot += q[i] * row[i];
    return dot;
}

static void cache_axpy(const eq_model *m, const void *cache, size_t base, float weight, float *out, size_t n)
{
    if (!m->kv_fp32) {
        m->kernels->axpy_f16(out, weight, (const uint16_t *)cache + base, n);
        return;
    }
    const float *row = (const float *)cache + base;
    for (size_t i = 0; i < n; i++)
        out[i] += weight * row[i];
}

static void attention_worker(void *raw, int index, int n_threads)
{
    attention_job *job = raw;
    eq_model *m = job->m;
    const config *c = &m->cfg;
    run_state *s = &m->s;
    int head_dim = c->head_dim, group = c->n_heads / c->n_kv_heads;
    size_t q_dim = (size_t)c->n_heads * (size_t)head_dim, kv_dim = (size_t)c->n_kv_heads * (size_t)head_dim;
    size_t layer_base = (size_t)job->layer * (size_t)m->n_ctx * kv_dim;
    float inv_sqrt = 1.0f / sqrtf((float)head_dim);
    float *scores = s->scores + (size_t)index * (size_t)m->n_ctx;
    for (int item = index; item < job->n * c->n_heads; item += n_threads) {
        int token = item / c->n_heads, h = item % c->n_heads, pos = job->pos0 + token;
        const float *q = s->q + (size_t)token * q_dim + (size_t)h * (size_t)head_dim;
        size_t head_base = layer_base + (size_t)(h / group) * (size_t)head_dim;
        float max_score = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            float dot = cache_dot(m, s->key_cache, head_base + (size_t)t * kv_dim, q, (size_t)head_dim);
            scores[t] = dot * inv_sqrt;
            if (scores[t] > max_score)
                max_score = scores[t];
        }
        float sum = 0.0f;
        for (int t = 0; t <= pos; t++) {
            scores[t] = expf(scores[t] - max_score);
            sum += scores[t];
        }
        float *out = s->xb + (size_t)token * q_dim + (size_t)h * (size_t)head_dim;
        memset(out, 0, sizeof(float) * (size_t)head_dim);
        for (int t = 0; t <= pos; t++)
            cache_axpy(m, s->value_cache, head_base + (size_t)t * kv_dim, scores[t] / sum, out, (size_t)head_dim);
    }
}

/* ============================================================================================= */
/* the forward pass: n <= BATCH tokens at positions pos0 .. pos0 + n - 1                          */
/* ============================================================================================= */

static void cache_write(eq_model *m, void *cache, size_t base, const float *values, size_t n)
{
    if (m->kv_fp32)
        memcpy((float *)cache + base, values, n * sizeof(float));
    else
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)cache)[base + i] = eq_fp32_to_fp16(values[i]);
}

/* logits: NULL, (vocab,) for the last token, or (n, vocab) when all_logits */
static void forward(eq_model *m, const int32_t *tokens, int n, int pos0, float *logits, bool all_logits)
{
    const config *c = &m->cfg;
    run_state *s = &m->s;
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim, kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;

    for (int t = 0; t < n; t++)
        eq_dequantize_rows(m->token_embd.qtype, m->token_embd.data, m->token_embd.nbytes, m->token_embd.rows,
                           m->token_embd.cols, (size_t)tokens[t], 1, s->x + (size_t)t * dim);
    for (int i = 0; i < c->n_layers; i++) {
        const layer *l = &m->layers[i];
        /* attention */
        for (int t = 0; t < n; t++)
            rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, l->attn_norm, c->dim, c->norm_eps);
        matmul(m, s->xb, n, dim, 3, (matmul_job[]){{&l->wq, s->q}, {&l->wk, s->k}, {&l->wv, s->v}});
        for (int t = 0; t < n; t++) {
            float *q = s->q + (size_t)t * q_dim, *k = s->k + (size_t)t * kv_dim, *v = s->v + (size_t)t * kv_dim;
            if (l->bq) {
                for (size_t j = 0; j < q_dim; j++)
                    q[j] += l->bq[j];
                for (size_t j = 0; j < kv_dim; j++) {
                    k[j] += l->bk[j];
                    v[j] += l->bv[j];
                }
            }
            rope(q, c->n_heads, c->head_dim, pos0 + t, c->inv_freq);
            rope(k, c->n_kv_heads, c->head_dim, pos0 + t, c->inv_freq);
            size_t base = ((size_t)i * (size_t)m->n_ctx + (size_t)(pos0 + t)) * kv_dim;
            cache_write(m, s->key_cache, base, k, kv_dim);
            cache_write(m, s->value_cache, base, v, kv_dim);
        }
        attention_job job = {m, i, pos0, n};
        eq_pool_run(m->pool, attention_worker, &job);            /* -> s->xb (n, q_dim) */
        matmul(m, s->xb, n, q_dim, 1, (matmul_job[]){{&l->wo, s->xb2}});
        for (size_t j = 0; j < (size_t)n * dim; j++)
            s->x[j] += s->xb2[j];
        /* SwiGLU MLP */
        for (int t = 0; t < n; t++)
            rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, l->ffn_norm, c->dim, c->norm_eps);
        matmul(m, s->xb, n, dim, 2, (matmul_job[]){{&l->w_gate, s->hb}, {&l->w_up, s->hb2}});
        for (size_t j = 0; j < (size_t)n * hidden; j++)
            s->hb[j] = silu(s->hb[j]) * s->hb2[j];
        matmul(m, s->hb, n, hidden, 1, (matmul_job[]){{&l->w_down, s->xb2}});
        for (size_t j = 0; j < (size_t)n * dim; j++)
            s->x[j] += s->xb2[j];
    }
    if (logits) {
        int first = all_logits ? 0 : n - 1, count = n - first;
        for (int t = 0; t < count; t++)
            rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)(first + t) * dim, m->output_norm, c->dim, c->norm_eps);
        matmul(m, s->xb, count, dim, 1, (matmul_job[]){{&m->output, logits}});
    }
}

/* ============================================================================================= */
/* public API                                                                                     */
/* ============================================================================================= */

int eq_model_get_info(const eq_model *m, eq_model_info *info)
{
    if (!m || !info)
        return EQ_ERR_INVALID_ARGUMENT;
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
    info->kv_fp32 = m->kv_fp32;
    uint64_t weights = m->output.nbytes + (uint64_t)c->dim * sizeof(float);
    for (int i = 0; i < c->n_layers; i++) {
        const layer *l = &m->layers[i];
        weights += l->wq.nbytes + l->wk.nbytes + l->wv.nbytes + l->wo.nbytes + l->w_gate.nbytes +
                   l->w_up.nbytes + l->w_down.nbytes + 2u * (uint64_t)c->dim * sizeof(float);
        if (l->bq)
            weights += (l->wq.rows + l->wk.rows + l->wv.rows) * sizeof(float);
    }
    info->weight_bytes = weights;
    info->kv_bytes = 2u * (uint64_t)c->n_layers * (uint64_t)m->n_ctx * (uint64_t)c->n_kv_heads *
                     (uint64_t)c->head_dim * (m->kv_fp32 ? 4u : 2u);
    info->file_bytes = eq_gguf_file_size(m->file);
    return EQ_OK;
}

/* Start a call that uses the model's state: claim it (EQ_ERR_BUSY if another thread has it) and
 * clear the last error. The call ends with atomic_store(&m->busy, 0). */
static int enter(eq_model *m)
{
    if (!m)
        return EQ_ERR_INVALID_ARGUMENT;
    if (atomic_exchange(&m->busy, 1))
        return EQ_ERR_BUSY;
    m->last_error[0] = '\0';
    return EQ_OK;
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
