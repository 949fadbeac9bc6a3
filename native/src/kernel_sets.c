/* kernel_sets.c — the one list of kernel sets, how one is chosen, and prepared activations.
 *
 * The list is the only place that names the sets: tests, `edgeq info` and the benchmarks enumerate
 * it through eq_kernel_set_count / eq_kernel_set_name. Each set is resolved once: every family and
 * helper it leaves empty is filled from the next available set, the reference last. Kernels
 * themselves live in the ISA folders; this file never looks inside a set's prepared bytes.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"
#include "kernels.h"

/* ============================================================================================= */
/* the list, best first; the reference is last and runs everywhere                                */
/* ============================================================================================= */

static const eq_kernel_set *const kernel_sets[] = {
    &eq_kernels_avx512,
    &eq_kernels_avx2,
    &eq_kernels_avx2_lut8,      /* avx2 with int8 LUT tables at 2-3 bits: after avx2, so only
                                   EDGEQ_ISA=avx2-lut8 selects it (a measurement, not a default) */
    &eq_kernels_neon_dotprod,   /* only the packed family (sdot); the rest from neon */
    &eq_kernels_neon,
    &eq_kernels_scalar,
    &eq_kernels_ref,
};

enum { KERNEL_SET_COUNT = sizeof kernel_sets / sizeof kernel_sets[0] };

static int set_available[KERNEL_SET_COUNT];
static eq_kernels resolved[KERNEL_SET_COUNT];
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

/* resolved[i]: set i with each empty slot taken from the first available set after it */
static void resolve_sets(void)
{
    for (int i = 0; i < KERNEL_SET_COUNT; i++)
        set_available[i] = kernel_sets[i]->is_available() != 0;
    for (int i = 0; i < KERNEL_SET_COUNT; i++) {
        eq_kernels *k = &resolved[i];
        k->isa = kernel_sets[i]->isa;
        for (int j = i; j < KERNEL_SET_COUNT; j++) {
            const eq_kernel_set *set = kernel_sets[j];
            if (j > i && !set_available[j])
                continue;
            for (int f = 0; f < EQ_QFAMILY_COUNT; f++) {
                const eq_family_kernels *have = &set->family[f];
                eq_family_kernels *want = &k->family[f];
                if (want->decode.gemm == NULL && have->decode.gemm != NULL) {
                    want->decode = have->decode;
                    k->decode_isa[f] = set->isa;
                }
                if (want->prefill.gemm == NULL && have->prefill.gemm != NULL) {
                    want->prefill = have->prefill;
                    want->prefill_from = have->prefill_from < 2 ? 2 : have->prefill_from;
                    k->prefill_isa[f] = set->isa;
                }
                if (want->dequantize_rows == NULL)
                    want->dequantize_rows = have->dequantize_rows;
            }
            if (k->dot_f16 == NULL)
                k->dot_f16 = set->dot_f16;
            if (k->axpy_f16 == NULL)
                k->axpy_f16 = set->axpy_f16;
            if (k->to_f16 == NULL)
                k->to_f16 = set->to_f16;
            if (k->exp == NULL)
                k->exp = set->exp;
            if (k->dot_q8 == NULL)
                k->dot_q8 = set->dot_q8;
            if (k->axpy_q8 == NULL)
                k->axpy_q8 = set->axpy_q8;
            if (k->axpy_q4 == NULL)
                k->axpy_q4 = set->axpy_q4;
        }
    }
}

static int set_index(const char *isa)
{
    for (int i = 0; isa != NULL && i < KERNEL_SET_COUNT; i++)
        if (strcmp(kernel_sets[i]->isa, isa) == 0)
            return i;
    return -1;
}

const eq_kernels *eq_kernels_named(const char *isa)
{
    pthread_once(&resolve_once, resolve_sets);
    int i = set_index(isa);
    return i >= 0 && set_available[i] ? &resolved[i] : NULL;
}

/* EDGEQ_ISA unset, empty or "auto": the first available set; a set's name: that set if this CPU
 * runs it, else no set at all (NULL: the entry points report EQ_ERR_ISA, never a silent fallback). */
static const eq_kernels *select_kernels(void)
{
    const char *requested = getenv("EDGEQ_ISA");
    if (requested != NULL && requested[0] != '\0' && strcmp(requested, "auto") != 0)
        return eq_kernels_named(requested);
    for (int i = 0; i < KERNEL_SET_COUNT; i++)
        if (eq_kernels_named(kernel_sets[i]->isa) != NULL)
            return &resolved[i];
    return NULL;   /* unreachable: the reference is always available */
}

/* Chosen at first use; eq_select_isa replaces it. Selection is deterministic, so a race at first use
 * only stores the same pointer twice. */
static _Atomic(const eq_kernels *) active_kernels = NULL;
static atomic_int active_chosen = 0;

const eq_kernels *eq_active_kernels(void)
{
    if (!atomic_load_explicit(&active_chosen, memory_order_acquire)) {
        atomic_store_explicit(&active_kernels, select_kernels(), memory_order_release);
        atomic_store_explicit(&active_chosen, 1, memory_order_release);
    }
    return atomic_load_explicit(&active_kernels, memory_order_acquire);
}

/* ============================================================================================= */
/* the public view of the list                                                                    */
/* ============================================================================================= */

int eq_kernel_set_count(void)
{
    return KERNEL_SET_COUNT;
}

const char *eq_kernel_set_name(int index)
{
    return index >= 0 && index < KERNEL_SET_COUNT ? kernel_sets[index]->isa : NULL;
}

int eq_isa_available(const char *isa)
{
    return eq_kernels_named(isa) != NULL;
}

const char *eq_isa_name(void)
{
    const eq_kernels *k = eq_active_kernels();
    return k != NULL ? k->isa : NULL;
}

int eq_select_isa(const char *isa)
{
    const eq_kernels *k = eq_kernels_named(isa);
    if (k == NULL)
        return EQ_ERR_NOT_FOUND;
    atomic_store_explicit(&active_kernels, k, memory_order_release);
    atomic_store_explicit(&active_chosen, 1, memory_order_release);
    return EQ_OK;
}

int eq_kernel_route(const char *isa, int qtype_id, size_t batch, const char **set_isa, const char **path,
                    const char **detail)
{
    const eq_kernels *k = isa != NULL ? eq_kernels_named(isa) : eq_active_kernels();
    const eq_qtype_traits *type = eq_qtype_get(qtype_id);
    if (k == NULL)
        return isa != NULL ? EQ_ERR_NOT_FOUND : EQ_ERR_ISA;
    if (type == NULL)
        return EQ_ERR_UNKNOWN_QTYPE;
    const eq_path_kernels *route = eq_path_for(k, type->family, batch);
    if (set_isa != NULL)
        *set_isa = route == &k->family[type->family].prefill ? k->prefill_isa[type->family]
                                                              : k->decode_isa[type->family];
    if (path != NULL)
        *path = route->path;
    if (detail != NULL)
        *detail = route->detail;
    return EQ_OK;
}

/* ============================================================================================= */
/* prepared activations and the batched product                                                   */
/* ============================================================================================= */

/* Bytes per prepared vector of a batch of n of `family` under k, aligned; 0: nothing prepared. */
static size_t prepared_stride(const eq_kernels *k, int family, size_t n, size_t cols)
{
    const eq_path_kernels *route = eq_path_for(k, family, n);
    if (route->prepared_bytes == NULL)
        return 0;
    size_t bytes = route->prepared_bytes(cols);
    return (bytes + EQ_PREPARED_ALIGN - 1) / EQ_PREPARED_ALIGN * EQ_PREPARED_ALIGN;
}

/* Bytes family f needs for any batch of up to n vectors of cols under any available set (the
 * widest of every set's paths); SIZE_MAX on overflow. */
static size_t family_bytes(int f, size_t n, size_t cols)
{
    pthread_once(&resolve_once, resolve_sets);
    size_t widest = 0;
    for (int i = 0; i < KERNEL_SET_COUNT; i++) {
        if (!set_available[i])
            continue;
        size_t decode = prepared_stride(&resolved[i], f, 1, cols);
        size_t prefill = prepared_stride(&resolved[i], f, n, cols);   /* the prefill path, if n reaches it */
        widest = decode > widest ? decode : widest;
        widest = prefill > widest ? prefill : widest;
    }
    return widest != 0 && n > SIZE_MAX / widest ? SIZE_MAX : widest * n;
}

int eq_acts_reserve(eq_acts *acts, size_t n, size_t cols, unsigned families)
{
    acts->families |= families;
    for (int f = 0; f < EQ_QFAMILY_COUNT; f++) {
        if (!(acts->families & (1u << f)))
            continue;
        size_t bytes = family_bytes(f, n, cols);
        if (bytes == SIZE_MAX)
            return EQ_ERR_SIZE_OVERFLOW;
        if (bytes <= acts->capacity[f])
            continue;
        free(acts->prepared[f]);
        acts->prepared[f] = aligned_alloc(EQ_PREPARED_ALIGN, bytes);
        acts->capacity[f] = acts->prepared[f] != NULL ? bytes : 0;
        if (acts->prepared[f] == NULL)
            return EQ_ERR_NO_MEMORY;
    }
    return EQ_OK;
}

size_t eq_prepared_bytes(int qtype_id, size_t n, size_t cols)
{
    const eq_qtype_traits *type = eq_qtype_get(qtype_id);
    if (type == NULL)
        return 0;
    size_t bytes = family_bytes(type->family, n, cols);
    return bytes == SIZE_MAX ? 0 : bytes;
}

void eq_acts_free(eq_acts *acts)
{
    for (int f = 0; f < EQ_QFAMILY_COUNT; f++) {
        free(acts->prepared[f]);
        acts->prepared[f] = NULL;
        acts->capacity[f] = 0;
    }
}

void eq_acts_bind(eq_acts *acts, const float *x, size_t n, size_t cols)
{
    acts->x = x;
    acts->n = n;
    acts->cols = cols;
}

void eq_acts_prepare(const eq_kernels *kernels, eq_acts *acts, unsigned families, size_t first, size_t count)
{
    for (int f = 0; f < EQ_QFAMILY_COUNT; f++) {
        const eq_path_kernels *route = eq_path_for(kernels, f, acts->n);
        if (!(acts->families & families & (1u << f)) || route->prepare == NULL)
            continue;
        size_t stride = prepared_stride(kernels, f, acts->n, acts->cols);
        for (size_t v = first; v < first + count; v++)
            route->prepare(acts->x + v * acts->cols, acts->cols, acts->prepared[f] + v * stride);
    }
}

void eq_gemm_prepared(const eq_kernels *kernels, const eq_qtype_traits *type, const uint8_t *data,
                      size_t rows, size_t cols, const eq_acts *acts, float *y, size_t y_stride)
{
    const eq_path_kernels *route = eq_path_for(kernels, type->family, acts->n);
    eq_input in = {acts->n, acts->cols, acts->x, NULL, 0};
    if (route->prepared_bytes != NULL) {
        in.prepared = acts->prepared[type->family];
        in.stride = prepared_stride(kernels, type->family, acts->n, acts->cols);
    }
    route->gemm(type, data, rows, cols, &in, y, y_stride);
}
