/* check_kernels.c — every kernel set this CPU runs against the reference set "ref", for every quant
 * type in the table, in plain C through the public API (edgeq.h); no Python.
 *
 *     check_kernels [SEED]        (default seed 1; exit 0: all agree, 1: a mismatch, 2: usage/setup)
 *
 * CHECK_KERNELS_SETS=a,b,... checks only the sets named (ref is always the comparison and always
 * checked): tests/test_aarch64.py splits the sets between its two qemu CPU models this way, since a
 * set's code is the same on both and emulation makes each set cost seconds.
 *
 * The sets come from the library (eq_kernel_set_count / eq_kernel_set_name, filtered by
 * eq_isa_available), the types from its table (eq_qtype_count / eq_qtype_get). For each type, a list
 * of cases (below: random shapes whose rows and columns are multiples of nothing, batches of 1..64
 * vectors, and worst cases for a narrow accumulator: every level maximal with one huge activation,
 * all-negative rows, activations all equal so every table sits at its largest entry, weights at
 * level 0 or 2^b - 1 in every plane, K up to 4883, activations from 2^-24 to 2^24). The weights
 * are random levels / fp16 scales / fp16 mins, packed here by the layout in edgeq.h's opening
 * comment (padding rows and columns hold random levels too: they must never reach a result; a
 * partial last group is stored in its columns rounded up to EQ_GROUP_STEP, stored_columns below).
 *
 * What is checked, for a batch x (n, K), weights W (M, K), one output y[v][r]:
 *   1. ref against a float64 oracle computed here from the levels: |ref - exact| <= 2^-24 |exact|
 *      + (D + K) 2^-50 A (its final float rounding; it and the oracle accumulate in double). This
 *      also checks that the packing here and the library agree on the layout (and on the byte
 *      count, eq_qtype_nbytes).
 *   2. eq_dequantize_rows through every set, whole tensor and a row range: bit-exact against the
 *      float32 formula of edgeq.h computed here (scale * q rounded, then + min; or
 *      scale * (q - zero_point)), since every set must dequantize exactly like the reference.
 *   3. eq_gemm_isa(set) against eq_gemm_isa("ref"): |got - ref| <= table_term + float_term, and
 *      vectors 0 and n-1 multiplied alone give the same bits as inside the batch when one vector
 *      and n vectors take the same route; when the batch takes a prefill path, each of them alone
 *      (the decode route) is held to the decode route's own bound, so every case checks both.
 *   4. every batch size 1..64 on one more case per type (check_batches): each vector of a batch
 *      that takes the one-vector route (the packed family's register-blocked prefill gemms name
 *      the same set, path and precision) gives the bits it gets alone; under another route it is
 *      held to that route's bound against ref.
 *
 * The tolerance (per vector v and row r):
 *   A = Σ_g (|scale| (2^b - 1) + (symmetric ? |scale| zero_point : |min|)) Σ_{k in g} |x_k|
 *       for packed types (it bounds every intermediate a kernel may round: lookups, plane sums,
 *       Σx, scale products), and A = Σ_k |w_k| |x_k| for plain f32/f16 (no set is exact there:
 *       ref accumulates in double, the others in float).
 *   float_term = D 2^-23 A + 1e-30: twice the unit roundoff per step of the longest chain of
 *       float operations a set makes, D = n_groups + G/4 + b + 64 (packed: a table entry is 3 adds,
 *       a plane sum G/4 lookups, b planes, one add per group, Σx at most G/4 + 3 adds) or
 *       D = K + 64 (plain: one sequential dot product).
 *   table_term, for paths that quantize their activation tables (avx2's lut: int16, one scale
 *       per 64 activations, "levels" 32767; avx2-lut8's at 2-3 bits: int8, levels 127): the table of a quad of 4 activations holds every subset sum
 *       T, stored as round(T / s) with s = L / 32767 and L the largest |T| of the 64-column unit,
 *       L = max over its quads of max(Σ positive x, -Σ negative x). Each lookup is then off by at
 *       most s/2, plus 2 x 32767 x 2^-24 s from rounding T x (32767 / L) in float: (1/2 + 2^-7) s.
 *       A group's dot product Σ_p 2^p Σ_quads T_quad[index_p] makes, per quad holding a valid
 *       column, lookups weighted Σ_p 2^p = 2^b - 1, so
 *           table_term = Σ_g |scale_g| (2^b - 1) Σ_{quads q of g with k < K} (1/2 + 2^-7) s_unit(q)
 *       (the integer sums after the lookup are exact: the harness's all-levels-maximal cases with
 *       tables at +-32767 are where an int16 sum would wrap and break the bound by 2^16 s).
 *       avx2-lut8's int8 tables (2-3-bit types; path_precisions' max_bits) are the same with levels
 *       127: s = L / 127, and the float rounding of T x (127 / L) adds at most 2 x 127 x 2^-24 s,
 *       far inside the 2^-7 s allowed, so the same (1/2 + 2^-7) s per lookup: 258x avx2's bound.
 *       Their int16 sums (x86/avx2.c unit_dot8) reach 2 lanes x 4 pairs x 7 x 254 = 14224 at 3 bits
 *       in the equal-activation and all-levels-maximal cases (every entry +-127, every weight
 *       2^b - 1), where a narrower sum would wrap by 2^8 or 2^16 table steps.
 *       Float tables (scalar's lut) and the "float" and "reference" paths have table_term = 0.
 *       Multiply-add paths (activations quantized per block of 32, d_b = max |x| / L with L = 32767
 *       for the bit-plane prefill path's int16, 127 for the packed family's int8) have instead
 *       table_term = Σ_k |w_k| (1/2 + 2^-7) d_b(k)  (x86/avx2_prefill.c derives it: rounding to
 *       nearest, plus the float rounding of x L / max and of d_b; the integer sums are exact).
 * Which set and path multiply a type under a set comes from the library (eq_kernel_route: a set
 * hands a family it lacks to the next one); how that path rounds is in path_precisions[] below. A
 * route this table does not describe is an error (a new set or path states how it rounds before it
 * is trusted).
 *
 * A mismatch prints the set, type, case, shape, vector, row, got, expected, error and bound (the
 * first 20; all are counted); at the end, one summary line per set, and one line of FNV-1a digests
 * over the multiply-add families' cases (uniform packed and codebook; the line keeps its name
 * "uniform-packed digests"): of their inputs, and per set of the bits of its outputs (sets with
 * equal digests on equal inputs gave the same bits, across machines too).
 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"

/* ============================================================================================= */
/* how each route rounds: what the tolerance is derived from (see the opening comment)           */
/* ============================================================================================= */

/* One (set, path) as eq_kernel_route names it, for one family or all: the set that runs a product
 * and how (a set's "multiply-add" rounds differently per family: int16 activations for bit-plane
 * prefill, int8 for packed types). */
enum { ANY_FAMILY = -1 };

typedef struct path_precision {
    const char *isa;
    const char *path;
    int family;         /* EQ_QFAMILY_*, or ANY_FAMILY */
    int table_levels;   /* largest |entry| of its quantized activation tables; 0: none or float */
    int table_unit;     /* activations sharing one table scale, aligned from column 0 */
    int act_block;      /* multiply-add paths: activations per scale (max |x| -> act_levels); 0: none */
    int act_levels;     /* largest |q| of their quantized activations */
    int max_bits;       /* the row holds for types of at most this many bits; 0: any width */
} path_precision;

static const path_precision path_precisions[] = {
    {"ref", "reference", ANY_FAMILY, 0, 0, 0, 0, 0},     /* the specification: double accumulation */
    {"scalar", "float", ANY_FAMILY, 0, 0, 0, 0, 0},      /* float dot products */
    {"scalar", "lut", ANY_FAMILY, 0, 0, 0, 0, 0},        /* float tables */
    {"avx2", "float", ANY_FAMILY, 0, 0, 0, 0, 0},        /* fp32 FMA dot products */
    {"avx2", "lut", ANY_FAMILY, 32767, 64, 0, 0, 0},     /* int16 tables split into two pshufb byte tables */
    /* avx2-lut8: int8 tables at 2-3 bits, avx2's int16 tables above; the rest is avx2's */
    {"avx2-lut8", "lut", ANY_FAMILY, 127, 64, 0, 0, 3},
    {"avx2-lut8", "lut", ANY_FAMILY, 32767, 64, 0, 0, 0},
    {"avx2-lut8", "float", ANY_FAMILY, 0, 0, 0, 0, 0},
    {"avx2-lut8", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},
    {"avx2-lut8", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
    {"avx512", "float", ANY_FAMILY, 0, 0, 0, 0, 0},      /* fp32 FMA dot products, masked tails */
    {"avx512", "lut", ANY_FAMILY, 32767, 64, 0, 0, 0},   /* avx2's int16 tables, vpermb lookups, vpdpbusd sums */
    /* the bit-plane prefill path: int16 activations per 32 (x86/avx2_prefill.c, avx512_prefill.c) */
    {"avx2", "multiply-add", EQ_QFAMILY_UNIFORM_BITPLANE, 0, 0, 32, 32767, 0},
    {"avx512", "multiply-add", EQ_QFAMILY_UNIFORM_BITPLANE, 0, 0, 32, 32767, 0},
    /* the packed family's paths: int8 activations per 32 (avx2_packed.c, scalar/packed.c, avx512_packed.c) */
    {"avx2", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},
    {"scalar", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},
    {"avx512", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},
    {"neon", "float", ANY_FAMILY, 0, 0, 0, 0, 0},        /* fp32 FMA dot products */
    {"neon", "lut", ANY_FAMILY, 32767, 64, 0, 0, 0},     /* the same int16 tables, two vqtbl1q byte tables */
    {"neon", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},          /* int8 activations per 32, smull/smlal (arm/neon_packed.c) */
    {"neon-dotprod", "multiply-add", EQ_QFAMILY_UNIFORM_PACKED, 0, 0, 32, 127, 0},  /* the same with sdot (arm/neon_packed.c) */
    /* the codebook family: the packed family's int8 activations, a table lookup per index (*_codebook.c) */
    {"scalar", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
    {"avx2", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
    {"avx512", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
    {"neon", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
    {"neon-dotprod", "multiply-add", EQ_QFAMILY_CODEBOOK, 0, 0, 32, 127, 0},
};

/* The precision of the route that multiplies `type` with a batch of n vectors under set `isa`
 * (decode and prefill may take different paths); exits if it has none. */
static const path_precision *route_precision(const char *isa, const eq_qtype_traits *type, size_t n)
{
    const char *run_isa = NULL, *path = NULL;
    int code = eq_kernel_route(isa, type->id, n, &run_isa, &path, NULL);
    if (code != EQ_OK) {
        fprintf(stderr, "check_kernels: eq_kernel_route(%s, %s, %zu): %s\n", isa, type->name, n,
                eq_error_string(code));
        exit(2);
    }
    for (size_t i = 0; i < sizeof path_precisions / sizeof path_precisions[0]; i++) {
        if (strcmp(path_precisions[i].isa, run_isa) == 0 && strcmp(path_precisions[i].path, path) == 0 &&
            (path_precisions[i].family == ANY_FAMILY || path_precisions[i].family == (int)type->family) &&
            (path_precisions[i].max_bits == 0 || type->bits <= path_precisions[i].max_bits)) {
            return &path_precisions[i];
        }
    }
    fprintf(stderr, "check_kernels: set %s multiplies %s x %zu vectors by set %s, path \"%s\", which "
            "path_precisions[] does not describe: add how it rounds there\n", isa, type->name, n, run_isa, path);
    exit(2);
}

/* ============================================================================================= */
/* deterministic random numbers (splitmix64)                                                      */
/* ============================================================================================= */

typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(rng *r)   /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * 0x1p-53;
}

static size_t rng_range(rng *r, size_t low, size_t high)   /* [low, high] */
{
    return low + (size_t)(rng_next(r) % (uint64_t)(high - low + 1));
}

static double rng_sign(rng *r)
{
    return (rng_next(r) & 1u) ? 1.0 : -1.0;
}

static double rng_normal(rng *r)   /* roughly N(0, 1): a sum of 4 uniforms, rescaled */
{
    return (rng_uniform(r) + rng_uniform(r) + rng_uniform(r) + rng_uniform(r) - 2.0) * 1.7320508;
}

/* ============================================================================================= */
/* cases                                                                                          */
/* ============================================================================================= */

typedef enum weight_pattern {
    WEIGHTS_RANDOM,           /* random levels; scales ~ 0.05 (10 % fp16 subnormals), mins ~ 0.5 */
    WEIGHTS_MAX_LEVELS,       /* every level 2^b - 1 (every plane byte 0xff); positive scales and
                                 mins from 2^-14 to 65504: every weight positive and maximal */
    WEIGHTS_EXTREME_LEVELS    /* levels 0 or 2^b - 1 at random; scales, mins of either sign over
                                 the whole fp16 range, subnormals included */
} weight_pattern;

typedef enum activation_pattern {
    ACTS_NORMAL,              /* ~ N(0, 1) */
    ACTS_ONE_HUGE,            /* ~ N(0, 1) and one activation of +-30000 */
    ACTS_ALL_NEGATIVE,        /* every activation in [-4, -0.5] */
    ACTS_EQUAL_POSITIVE,      /* every activation 1.5: every table at its largest entry */
    ACTS_DYNAMIC_RANGE,       /* +-2^u, u uniform in [-24, 24] */
    ACTS_PATTERN_COUNT,
    ACTS_MIXED = ACTS_PATTERN_COUNT   /* vector v uses pattern v % ACTS_PATTERN_COUNT */
} activation_pattern;

typedef struct test_case {
    const char *name;
    size_t rows, cols, n;     /* W (rows, cols), x (n, cols) */
    weight_pattern weights;
    activation_pattern acts;
} test_case;

enum { LONG_K = 4883, MAX_CASES = 16, MAX_BATCH = 64 };   /* 4883 = 4864 + 19: a multiple of no group or tile */

/* The cases for a type with group G (plain types: G = 64 for the shapes). */
static int make_cases(rng *r, size_t group, test_case *cases)
{
    int count = 0;
    cases[count++] = (test_case){"one weight", 1, 1, 1, WEIGHTS_RANDOM, ACTS_NORMAL};
    cases[count++] = (test_case){"aligned", 2 * EQ_TILE_ROWS, 2 * group, 2, WEIGHTS_RANDOM, ACTS_MIXED};
    cases[count++] = (test_case){"awkward", 33, 2 * group + 5, 7, WEIGHTS_RANDOM, ACTS_MIXED};
    /* random shapes: the first with a full batch of 64, the second with one vector */
    cases[count++] = (test_case){"random, 64 vectors", rng_range(r, 1, 24), rng_range(r, 1, 2 * group + 40),
                                 MAX_BATCH, WEIGHTS_RANDOM, ACTS_MIXED};
    cases[count++] = (test_case){"random, 1 vector", rng_range(r, 1, 80), rng_range(r, 1, 3 * group + 40),
                                 1, WEIGHTS_RANDOM, ACTS_MIXED};
    for (int i = 0; i < 3; i++) {
        cases[count++] = (test_case){"random", rng_range(r, 1, 70), rng_range(r, 1, 3 * group + 40),
                                     rng_range(r, 1, 24), WEIGHTS_RANDOM, ACTS_MIXED};
    }
    cases[count++] = (test_case){"max levels, one huge activation, long K", 17, LONG_K, 2,
                                 WEIGHTS_MAX_LEVELS, ACTS_ONE_HUGE};
    cases[count++] = (test_case){"max levels, all-negative activations, long K", 20, LONG_K, 3,
                                 WEIGHTS_MAX_LEVELS, ACTS_ALL_NEGATIVE};
    cases[count++] = (test_case){"max levels, equal positive activations, long K", 16, 4864, 1,
                                 WEIGHTS_MAX_LEVELS, ACTS_EQUAL_POSITIVE};
    cases[count++] = (test_case){"extreme levels, activations 2^-24..2^24", 35, 1000 + group + 1, 4,
                                 WEIGHTS_EXTREME_LEVELS, ACTS_DYNAMIC_RANGE};
    cases[count++] = (test_case){"extreme levels, mixed activations, 64 vectors", 19, 3 * group + 3, MAX_BATCH,
                                 WEIGHTS_EXTREME_LEVELS, ACTS_MIXED};
    /* partial last groups stored in 64 and G - 32 columns (a 32-column tail is in the cases above) */
    if (group > 64) {
        cases[count++] = (test_case){"max levels, one huge activation, 64-column tail", 18, 2 * group + 57, 3,
                                     WEIGHTS_MAX_LEVELS, ACTS_ONE_HUGE};
    }
    if (group > 32) {
        cases[count++] = (test_case){"max levels, all-negative activations, (G-32)-column tail", 21,
                                     2 * group - 39, 5, WEIGHTS_MAX_LEVELS, ACTS_ALL_NEGATIVE};
    }
    return count;
}

/* x (n, cols) */
static void fill_activations(rng *r, const test_case *c, float *x)
{
    for (size_t v = 0; v < c->n; v++) {
        activation_pattern pattern = c->acts == ACTS_MIXED ? (activation_pattern)(v % ACTS_PATTERN_COUNT) : c->acts;
        float *row = x + v * c->cols;
        for (size_t k = 0; k < c->cols; k++) {
            switch (pattern) {
            case ACTS_NORMAL:
            case ACTS_ONE_HUGE:
                row[k] = (float)rng_normal(r);
                break;
            case ACTS_ALL_NEGATIVE:
                row[k] = (float)(-0.5 - 3.5 * rng_uniform(r));
                break;
            case ACTS_EQUAL_POSITIVE:
                row[k] = 1.5f;
                break;
            case ACTS_DYNAMIC_RANGE:
            case ACTS_PATTERN_COUNT:
                row[k] = (float)(rng_sign(r) * exp2(48.0 * rng_uniform(r) - 24.0));
                break;
            }
        }
        if (pattern == ACTS_ONE_HUGE) {
            row[rng_range(r, 0, c->cols - 1)] = (float)(30000.0 * rng_sign(r));
        }
    }
}

/* ============================================================================================= */
/* a tensor: levels, scales and mins drawn here, packed by the layout in edgeq.h                  */
/* ============================================================================================= */

typedef struct tensor {
    const eq_qtype_traits *type;
    size_t rows, cols;
    size_t padded_rows, n_groups;   /* packed types: rows rounded up to 16, ceil(cols / G) */
    uint8_t *levels;                /* (padded_rows, n_groups * G) packed types */
    uint16_t *scales;               /* (padded_rows, n_groups) fp16 bits */
    uint16_t *mins;                 /* (padded_rows, n_groups) fp16 bits; asymmetric types only */
    int8_t *codebooks;              /* (padded_rows / 16, 16 x span) codebook types: each tile's entries */
    float *values;                  /* (rows, cols) plain types: each value, exactly */
    double *exact;                  /* (rows, cols) every type: W[row][k] exactly (weight_exact) */
    uint8_t *data;                  /* nbytes, the stored form */
    size_t nbytes;
} tensor;

static int is_packed(const eq_qtype_traits *type)
{
    switch ((eq_qfamily)type->family) {
    case EQ_QFAMILY_PLAIN: return 0;
    case EQ_QFAMILY_UNIFORM_BITPLANE: return 1;
    case EQ_QFAMILY_UNIFORM_PACKED: return 1;
    case EQ_QFAMILY_CODEBOOK: return 1;
    case EQ_QFAMILY_COUNT: break;
    }
    fprintf(stderr, "check_kernels: type %s has family %d, which this harness does not know\n",
            type->name, type->family);
    exit(2);
}

static void *checked_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size);
    if (p == NULL) {
        fprintf(stderr, "check_kernels: out of memory\n");
        exit(2);
    }
    return p;
}

/* fp16 bits of sign * 2^u * (1 + uniform) for u uniform in [low, high]: log-uniform magnitudes */
static uint16_t random_fp16(rng *r, double sign, double low, double high)
{
    double value = sign * exp2(low + (high - low) * rng_uniform(r)) * (1.0 + rng_uniform(r));
    if (fabs(value) > 65504.0) {
        value = sign * 65504.0;
    }
    return eq_fp32_to_fp16((float)value);
}

static uint16_t draw_scale(rng *r, weight_pattern pattern)
{
    switch (pattern) {
    case WEIGHTS_RANDOM:
        if (rng_uniform(r) < 0.1) {
            return eq_fp32_to_fp16((float)(rng_normal(r) * 3e-6));      /* fp16 subnormals */
        }
        return eq_fp32_to_fp16((float)(rng_normal(r) * 0.05));
    case WEIGHTS_MAX_LEVELS:
        return random_fp16(r, 1.0, -14.0, 15.0);
    case WEIGHTS_EXTREME_LEVELS:
        return random_fp16(r, rng_sign(r), -24.0, 15.0);
    }
    return 0;
}

static uint16_t draw_min(rng *r, weight_pattern pattern)
{
    switch (pattern) {
    case WEIGHTS_RANDOM:
        return eq_fp32_to_fp16((float)(rng_normal(r) * 0.5));
    case WEIGHTS_MAX_LEVELS:
        return random_fp16(r, 1.0, -14.0, 15.0);
    case WEIGHTS_EXTREME_LEVELS:
        return random_fp16(r, rng_sign(r), -24.0, 15.0);
    }
    return 0;
}

static uint8_t draw_level(rng *r, weight_pattern pattern, int bits)
{
    const unsigned top = (1u << bits) - 1u;
    switch (pattern) {
    case WEIGHTS_RANDOM: return (uint8_t)(rng_next(r) & top);
    case WEIGHTS_MAX_LEVELS: return (uint8_t)top;
    case WEIGHTS_EXTREME_LEVELS: return (uint8_t)((rng_next(r) & 1u) ? top : 0u);
    }
    return 0;
}

static void write_u16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)(v >> 8);
}

/* A codebook level in [-64, 63]: random, all 63 (with level 15 everywhere, every weight maximal and
 * of one sign), or -64 / 63 at random. */
static int8_t draw_codebook_level(rng *r, weight_pattern pattern)
{
    switch (pattern) {
    case WEIGHTS_RANDOM: return (int8_t)((int)(rng_next(r) & 127u) - 64);
    case WEIGHTS_MAX_LEVELS: return 63;
    case WEIGHTS_EXTREME_LEVELS: return (int8_t)((rng_next(r) & 1u) ? 63 : -64);
    }
    return 0;
}

/* Codebook types: weights per index, 2 for v2 (2-D centroids c0, c1 of a pair), else 1 (edgeq.h). */
static size_t codebook_span(const eq_qtype_traits *type)
{
    return type->family == EQ_QFAMILY_CODEBOOK && type->bits == 2 ? 2u : 1u;
}

/* Multiply-add families: levels (packed) or indices (codebook) whole, in 64-byte quads. */
static int has_quads(const eq_qtype_traits *type)
{
    return type->family == EQ_QFAMILY_UNIFORM_PACKED || type->family == EQ_QFAMILY_CODEBOOK;
}

/* Columns stored for group g (the planes' width): G, except a partial last group (K % G != 0),
 * stored in its columns rounded up to EQ_GROUP_STEP. The one place that says how wide a group is. */
static size_t stored_columns(const tensor *t, size_t g)
{
    const size_t group = (size_t)t->type->group, tail = t->cols % group;
    if (g + 1 < t->n_groups || tail == 0) {
        return group;
    }
    return (tail + EQ_GROUP_STEP - 1) / EQ_GROUP_STEP * EQ_GROUP_STEP;
}

/* Bytes of one (tile, group) block: scale[16] fp16, min[16] fp16 (asymmetric), then b planes of
 * one 16-byte chunk per 8 stored columns, or (packed) b bits per level (a byte at 8 bits), a nibble
 * per pair of columns (v2, 2 bits per weight). */
static size_t block_bytes(const tensor *t, size_t g)
{
    const size_t scale_bytes = 2u * EQ_TILE_ROWS * (t->type->symmetric ? 1u : 2u);
    if (has_quads(t->type)) {
        const size_t bits = t->type->bits > 6 ? 8u : (size_t)t->type->bits;
        return scale_bytes + stored_columns(t, g) * EQ_TILE_ROWS * bits / 8u;
    }
    return scale_bytes + (size_t)t->type->bits * (stored_columns(t, g) / EQ_CHUNK_COLS) * EQ_TILE_ROWS;
}

/* Bytes of t by the layout in edgeq.h's opening comment: tiles of 16 rows, each (its codebook, then)
 * a run of blocks, one per group. */
static size_t layout_bytes(const tensor *t)
{
    size_t tile_bytes = t->type->family == EQ_QFAMILY_CODEBOOK ? EQ_CODEBOOK_SIZE * codebook_span(t->type) : 0;
    for (size_t g = 0; g < t->n_groups; g++) {
        tile_bytes += block_bytes(t, g);
    }
    return t->padded_rows / EQ_TILE_ROWS * tile_bytes;
}

/* out (layout_bytes(t)) = t's levels, scales and mins packed: byte r of chunk c of plane p holds
 * bit p of the levels of tile row r, columns 8c..8c+7 of the group (bit i = column 8c + i). */
static void pack_levels(const tensor *t, uint8_t *out)
{
    const size_t group = (size_t)t->type->group, padded_cols = t->n_groups * group;
    uint8_t *p = out;
    for (size_t tile = 0; tile < t->padded_rows / EQ_TILE_ROWS; tile++) {
        if (t->type->family == EQ_QFAMILY_CODEBOOK) {   /* the tile's 16 levels (v2: c0 of 16, c1 of 16) first */
            const size_t entry_bytes = EQ_CODEBOOK_SIZE * codebook_span(t->type);
            memcpy(p, t->codebooks + tile * entry_bytes, entry_bytes);
            p += entry_bytes;
        }
        for (size_t g = 0; g < t->n_groups; g++) {
            for (int r = 0; r < EQ_TILE_ROWS; r++, p += 2) {
                write_u16le(p, t->scales[(tile * EQ_TILE_ROWS + (size_t)r) * t->n_groups + g]);
            }
            for (int r = 0; !t->type->symmetric && r < EQ_TILE_ROWS; r++, p += 2) {
                write_u16le(p, t->mins[(tile * EQ_TILE_ROWS + (size_t)r) * t->n_groups + g]);
            }
            const int bits = t->type->bits;
            if (t->type->family == EQ_QFAMILY_UNIFORM_PACKED && bits != 4 && bits != 8) {
                /* runs of 32 columns, each a plane of 4-bit fields (b >= 4), of 2-bit fields (b = 2, 3,
                 * 6), of 1-bit fields (b odd), lowest level bits first; the w-bit plane is w chunks of
                 * 64 bytes [16 rows][4], byte (r, i) of chunk m holding the fields of columns
                 * m 32 / w + i + 4 f at bits w f */
                const int widths[3] = {bits >= 4 ? 4 : 0, bits == 2 || bits == 3 || bits == 6 ? 2 : 0, bits % 2};
                for (size_t run = 0; run < stored_columns(t, g) / 32; run++) {
                    int at = 0;
                    for (int n = 0; n < 3; n++) {
                        const int w = widths[n];
                        for (int m = 0; m < w; m++) {
                            for (int r = 0; r < EQ_TILE_ROWS; r++) {
                                const uint8_t *levels = t->levels + (tile * EQ_TILE_ROWS + (size_t)r) * padded_cols
                                                        + g * group + run * 32 + (size_t)(m * 32 / w);
                                for (int i = 0; i < 4; i++, p++) {
                                    uint8_t byte = 0;
                                    for (int f = 0; f < 8 / w; f++) {
                                        byte |= (uint8_t)(((levels[i + 4 * f] >> at) & ((1u << w) - 1u)) << (w * f));
                                    }
                                    *p = byte;
                                }
                            }
                        }
                        at += w;
                    }
                }
                continue;
            }
            if (has_quads(t->type)) {
                /* quads of 64 bytes [16 rows][4 columns]: byte (j, r, i) = level of column 4j + i,
                 * or at 4 bits column 8j + i in the low nibble and 8j + 4 + i in the high one, or
                 * (v2) the pair index of column 16j + i (pair (16j+i, 16j+4+i)) in the low nibble
                 * and of 16j + 8 + i in the high one */
                const size_t quad_cols = t->type->bits == 4 ? 8 : t->type->bits == 2 ? 16 : 4;
                for (size_t j = 0; j < stored_columns(t, g) / quad_cols; j++) {
                    for (int r = 0; r < EQ_TILE_ROWS; r++) {
                        const uint8_t *levels = t->levels + (tile * EQ_TILE_ROWS + (size_t)r) * padded_cols
                                                + g * group + j * quad_cols;
                        for (int i = 0; i < 4; i++, p++) {
                            *p = quad_cols == 8    ? (uint8_t)(levels[i] | (levels[4 + i] << 4))
                                 : quad_cols == 16 ? (uint8_t)(levels[i] | (levels[8 + i] << 4))
                                                   : levels[i];
                        }
                    }
                }
                continue;
            }
            for (int plane = 0; plane < t->type->bits; plane++) {
                for (size_t chunk = 0; chunk < stored_columns(t, g) / EQ_CHUNK_COLS; chunk++) {
                    for (int r = 0; r < EQ_TILE_ROWS; r++, p++) {
                        const uint8_t *levels = t->levels + (tile * EQ_TILE_ROWS + (size_t)r) * padded_cols
                                                + g * group + chunk * EQ_CHUNK_COLS;
                        uint8_t byte = 0;
                        for (int i = 0; i < EQ_CHUNK_COLS; i++) {
                            byte |= (uint8_t)(((levels[i] >> plane) & 1u) << i);
                        }
                        *p = byte;
                    }
                }
            }
        }
    }
}

static double weight_exact_from_levels(const tensor *t, size_t row, size_t k);

/* t->exact from the stored form's levels, scales and minimums (or the plain values) */
static void fill_exact(tensor *t)
{
    t->exact = checked_calloc(t->rows * t->cols, sizeof(double));
    for (size_t row = 0; row < t->rows; row++) {
        for (size_t k = 0; k < t->cols; k++) {
            t->exact[row * t->cols + k] = weight_exact_from_levels(t, row, k);
        }
    }
}

static tensor make_tensor(rng *r, const eq_qtype_traits *type, const test_case *c)
{
    tensor t = {.type = type, .rows = c->rows, .cols = c->cols};
    t.nbytes = eq_qtype_nbytes(type->id, c->rows, c->cols);
    if (t.nbytes == 0) {
        fprintf(stderr, "check_kernels: eq_qtype_nbytes(%s, %zu, %zu) is 0\n", type->name, c->rows, c->cols);
        exit(2);
    }
    t.data = checked_calloc(t.nbytes, 1);
    if (!is_packed(type)) {
        t.values = checked_calloc(c->rows * c->cols, sizeof(float));
        const size_t width = (size_t)type->bits / 8u;
        for (size_t i = 0; i < c->rows * c->cols; i++) {
            uint16_t half;
            switch (c->weights) {
            case WEIGHTS_RANDOM: half = eq_fp32_to_fp16((float)rng_normal(r)); break;
            case WEIGHTS_MAX_LEVELS: half = random_fp16(r, 1.0, 14.0, 15.0); break;
            default: half = random_fp16(r, rng_sign(r), -24.0, 15.0); break;
            }
            /* f32 values carry 13 more random mantissa bits than the fp16 draw */
            float value = eq_fp16_to_fp32(half);
            if (width == 4) {
                value *= (float)(1.0 + rng_uniform(r) * 0x1p-11);
                uint32_t bits;
                memcpy(&bits, &value, sizeof bits);
                for (int b = 0; b < 4; b++) {
                    t.data[4 * i + (size_t)b] = (uint8_t)(bits >> (8 * b));
                }
            } else {
                write_u16le(t.data + 2 * i, half);
            }
            t.values[i] = value;
        }
        if (width * c->rows * c->cols != t.nbytes) {
            fprintf(stderr, "check_kernels: %s (%zu, %zu): eq_qtype_nbytes says %zu bytes, row-major "
                    "floats are %zu\n", type->name, c->rows, c->cols, t.nbytes, width * c->rows * c->cols);
            exit(2);
        }
        fill_exact(&t);
        return t;
    }
    const size_t group = (size_t)type->group;
    t.padded_rows = (c->rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS * EQ_TILE_ROWS;
    t.n_groups = (c->cols + group - 1) / group;
    t.levels = checked_calloc(t.padded_rows * t.n_groups * group, 1);
    t.scales = checked_calloc(t.padded_rows * t.n_groups, sizeof(uint16_t));
    t.mins = checked_calloc(t.padded_rows * t.n_groups, sizeof(uint16_t));
    for (size_t i = 0; i < t.padded_rows * t.n_groups * group; i++) {
        t.levels[i] = draw_level(r, c->weights, type->family == EQ_QFAMILY_CODEBOOK ? 4 : type->bits);
    }
    for (size_t i = 0; i < t.padded_rows * t.n_groups; i++) {
        t.scales[i] = draw_scale(r, c->weights);
        t.mins[i] = type->symmetric ? 0 : draw_min(r, c->weights);
    }
    t.codebooks = checked_calloc(t.padded_rows * codebook_span(type), sizeof(int8_t));   /* 16 x span per tile */
    for (size_t i = 0; type->family == EQ_QFAMILY_CODEBOOK && i < t.padded_rows * codebook_span(type); i++) {
        t.codebooks[i] = draw_codebook_level(r, c->weights);
    }
    const size_t packed = layout_bytes(&t);
    if (packed != t.nbytes) {
        fprintf(stderr, "check_kernels: %s (%zu, %zu): eq_qtype_nbytes says %zu bytes, the layout in "
                "edgeq.h gives %zu: update stored_columns\n", type->name, c->rows, c->cols, t.nbytes, packed);
        exit(2);
    }
    pack_levels(&t, t.data);
    fill_exact(&t);
    return t;
}

static void free_tensor(tensor *t)
{
    free(t->levels);
    free(t->scales);
    free(t->mins);
    free(t->codebooks);
    free(t->values);
    free(t->exact);
    free(t->data);
}

/* The zero point of symmetric types: (2^b - 1) / 2 for uniform levels, 2^(b - 1) for the z types,
 * 0 for codebook levels (written out here, not taken from the library's eq_zero_point). */
static double zero_point(const eq_qtype_traits *type)
{
    if (type->family == EQ_QFAMILY_CODEBOOK)
        return 0.0;
    return type->integer_zero ? (double)(1u << (type->bits - 1)) : (double)((1u << type->bits) - 1u) / 2.0;
}

/* The level of W[row][k]: uniform, or the codebook entry its index selects (v2: the pair (k, k + 4)
 * for k % 8 < 4 is indexed by levels[k], and takes c0 at k, c1 at k + 4). */
static int weight_level(const tensor *t, size_t row, size_t k)
{
    const size_t span = codebook_span(t->type), second = span == 2 && k % 8 >= 4;
    const int stored = t->levels[row * t->n_groups * (size_t)t->type->group + k - 4 * second];
    if (t->type->family == EQ_QFAMILY_CODEBOOK)
        return t->codebooks[(row / EQ_TILE_ROWS * span + second) * EQ_CODEBOOK_SIZE + (size_t)stored];
    return stored;
}

/* The largest |level| a type can multiply by a scale. */
static double largest_level(const eq_qtype_traits *type)
{
    return type->family == EQ_QFAMILY_CODEBOOK ? 64.0 : (double)((1u << type->bits) - 1u);
}

/* W[row][k] exactly (float64 holds scale * q + min of fp16 values and a <= 8-bit level). */
static double weight_exact_from_levels(const tensor *t, size_t row, size_t k)
{
    if (!is_packed(t->type)) {
        return t->values[row * t->cols + k];
    }
    const size_t group = (size_t)t->type->group, g = k / group;
    const double q = weight_level(t, row, k);
    const double scale = eq_fp16_to_fp32(t->scales[row * t->n_groups + g]);
    if (t->type->symmetric) {
        return scale * (q - zero_point(t->type));
    }
    return scale * q + (double)eq_fp16_to_fp32(t->mins[row * t->n_groups + g]);
}

/* W[row][k] exactly, from the table make_tensor fills once (the oracle and the bounds read every
 * weight once per vector: decoding fp16 scales each time dominated the harness under qemu). */
static double weight_exact(const tensor *t, size_t row, size_t k)
{
    return t->exact[row * t->cols + k];
}

/* W[row][k] as edgeq.h's formula gives it in float32: scale * q rounded, then + min rounded
 * (this file is compiled with -ffp-contract=off, so no fused multiply-add), or scale * (q - zp). */
static float weight_dequantized(const tensor *t, size_t row, size_t k)
{
    if (!is_packed(t->type)) {
        return t->values[row * t->cols + k];
    }
    const size_t group = (size_t)t->type->group, g = k / group;
    const float q = (float)weight_level(t, row, k);
    const float scale = eq_fp16_to_fp32(t->scales[row * t->n_groups + g]);
    if (t->type->symmetric) {
        return scale * (q - (float)zero_point(t->type));
    }
    const float scaled = scale * q;
    return scaled + eq_fp16_to_fp32(t->mins[row * t->n_groups + g]);
}

/* ============================================================================================= */
/* the oracle and the bounds                                                                      */
/* ============================================================================================= */

/* exact (n, rows) = x W^T in float64; magnitude (n, rows) = A of the opening comment. */
static void oracle(const tensor *t, const float *x, size_t n, double *exact, double *magnitude)
{
    const eq_qtype_traits *type = t->type;
    for (size_t v = 0; v < n; v++) {
        const float *xv = x + v * t->cols;
        for (size_t row = 0; row < t->rows; row++) {
            double sum = 0.0, bound = 0.0;
            for (size_t k = 0; k < t->cols; k++) {
                sum += weight_exact(t, row, k) * (double)xv[k];
            }
            if (!is_packed(type)) {
                for (size_t k = 0; k < t->cols; k++) {
                    bound += fabs(weight_exact(t, row, k) * (double)xv[k]);
                }
            } else {
                const size_t group = (size_t)type->group;
                for (size_t g = 0; g < t->n_groups; g++) {
                    double abs_x = 0.0;
                    for (size_t k = g * group; k < t->cols && k < (g + 1) * group; k++) {
                        abs_x += fabs((double)xv[k]);
                    }
                    const double scale = fabs((double)eq_fp16_to_fp32(t->scales[row * t->n_groups + g]));
                    const double offset = type->symmetric ? scale * zero_point(type)
                                                          : fabs((double)eq_fp16_to_fp32(t->mins[row * t->n_groups + g]));
                    bound += (scale * largest_level(type) + offset) * abs_x;
                }
            }
            exact[v * t->rows + row] = sum;
            magnitude[v * t->rows + row] = bound;
        }
    }
}

/* D of the opening comment: the longest chain of float operations behind one output. */
static double float_depth(const tensor *t)
{
    if (!is_packed(t->type)) {
        return (double)t->cols + 64.0;
    }
    return (double)t->n_groups + (double)t->type->group / 4.0 + t->type->bits + 64.0;
}

/* error (n, rows) = Σ_k |w_rk| (1/2 + 2^-7) d_b(k), d_b = max |x| over block b / levels: quantized
 * activations rounded to nearest are off by d_b / 2 each (plus float rounding of x levels / max and of d_b), and
 * the integer products and sums after them are exact (x86/avx2_prefill.c derives it). */
static void activation_bound(const tensor *t, const float *x, size_t n, size_t block, int levels, double *error)
{
    double *step = checked_calloc((t->cols + block - 1) / block, sizeof(double));
    for (size_t v = 0; v < n; v++) {
        const float *xv = x + v * t->cols;
        for (size_t b = 0; b * block < t->cols; b++) {
            double largest = 0.0;
            for (size_t k = b * block; k < (b + 1) * block && k < t->cols; k++)
                largest = fmax(largest, fabs((double)xv[k]));
            step[b] = (0.5 + 0x1p-7) * largest / (double)levels;
        }
        for (size_t row = 0; row < t->rows; row++) {
            double bound = 0.0;
            for (size_t k = 0; k < t->cols; k++)
                bound += fabs(weight_exact(t, row, k)) * step[k / block];
            error[v * t->rows + row] = bound;
        }
    }
    free(step);
}

/* table_error (n, rows): table_term of the opening comment for a set whose tables have
 * `levels` and `unit` (0 for float tables: all zero). */
static void table_error_bound(const tensor *t, const float *x, size_t n, const path_precision *precision,
                              double *table_error)
{
    memset(table_error, 0, n * t->rows * sizeof(double));
    if (precision->act_block != 0 && is_packed(t->type)) {
        activation_bound(t, x, n, (size_t)precision->act_block, precision->act_levels, table_error);
        return;
    }
    if (precision->table_levels == 0 || !is_packed(t->type)) {
        return;
    }
    const size_t group = (size_t)t->type->group, unit = (size_t)precision->table_unit;
    const size_t n_units = (t->n_groups * group + unit - 1) / unit;
    double *unit_step = checked_calloc(n_units, sizeof(double));      /* (n_units,) error per lookup */
    double *group_error = checked_calloc(t->n_groups, sizeof(double)); /* (n_groups,) Σ over quads */
    for (size_t v = 0; v < n; v++) {
        const float *xv = x + v * t->cols;
        for (size_t u = 0; u < n_units; u++) {
            double largest = 0.0;
            for (size_t q0 = u * unit; q0 < (u + 1) * unit && q0 < t->cols; q0 += 4) {
                double positive = 0.0, negative = 0.0;
                for (size_t k = q0; k < q0 + 4 && k < t->cols; k++) {
                    *(xv[k] > 0 ? &positive : &negative) += (double)xv[k];
                }
                largest = fmax(largest, fmax(positive, -negative));
            }
            unit_step[u] = (0.5 + 0x1p-7) * largest / precision->table_levels;
        }
        for (size_t g = 0; g < t->n_groups; g++) {
            group_error[g] = 0.0;
            for (size_t q0 = g * group; q0 < (g + 1) * group && q0 < t->cols; q0 += 4) {
                group_error[g] += unit_step[q0 / unit];
            }
        }
        for (size_t row = 0; row < t->rows; row++) {
            double bound = 0.0;
            for (size_t g = 0; g < t->n_groups; g++) {
                bound += fabs((double)eq_fp16_to_fp32(t->scales[row * t->n_groups + g])) * group_error[g];
            }
            table_error[v * t->rows + row] = bound * (double)((1u << t->type->bits) - 1u);
        }
    }
    free(unit_step);
    free(group_error);
}

/* ============================================================================================= */
/* checking                                                                                       */
/* ============================================================================================= */

enum { MAX_SETS = 16, MAX_PRINTED = 20 };

typedef struct set_report {
    const char *isa;
    int available;
    int skipped;          /* available, but not in CHECK_KERNELS_SETS */
    int types, cases;
    size_t products, outputs, mismatches;
    double worst_ratio;   /* largest error / bound seen, and where */
    const char *worst_type, *worst_case;
    uint64_t packed_digest;   /* FNV-1a of the bits of every packed / codebook product's outputs */
} set_report;

static size_t printed;

/* FNV-1a over the packed and codebook cases' inputs (activations, tensor bytes): sets on different
 * machines whose packed digests agree gave the same bits on the same inputs when these agree too
 * (tests/test_aarch64.py compares x86's avx2/avx512 with aarch64's neon/neon-dotprod this way). */
static uint64_t packed_inputs_digest = 0xcbf29ce484222325ull;

static uint64_t fnv1a(uint64_t hash, const void *bytes, size_t n)
{
    const uint8_t *p = bytes;
    for (size_t i = 0; i < n; i++) {
        hash = (hash ^ p[i]) * 0x100000001b3ull;
    }
    return hash;
}

static void report_mismatch(const char *what, const char *isa, const eq_qtype_traits *type,
                            const test_case *c, size_t v, size_t row, double got, double expected,
                            double bound)
{
    if (printed++ >= MAX_PRINTED) {
        return;
    }
    printf("MISMATCH %s: set %s, type %s, case \"%s\", shape (%zu, %zu) x %zu vectors, vector %zu, "
           "row %zu: got %.9g, expected %.9g, error %.3g > bound %.3g\n",
           what, isa, type->name, c->name, c->rows, c->cols, c->n, v, row, got, expected,
           fabs(got - expected), bound);
}

/* |got - expected| <= bound for every output, counted into *report. */
static void compare(set_report *report, const char *what, const eq_qtype_traits *type,
                    const test_case *c, const float *got, const double *expected, const double *bound)
{
    for (size_t v = 0; v < c->n; v++) {
        for (size_t row = 0; row < c->rows; row++) {
            const size_t i = v * c->rows + row;
            const double error = fabs((double)got[i] - expected[i]);
            if (!(error <= bound[i])) {       /* NaN fails too */
                report->mismatches++;
                report_mismatch(what, report->isa, type, c, v, row, got[i], expected[i], bound[i]);
            } else if (bound[i] > 0 && error / bound[i] > report->worst_ratio) {
                report->worst_ratio = error / bound[i];
                report->worst_type = type->name;
                report->worst_case = c->name;
            }
        }
        report->outputs += c->rows;
    }
}

static void check_call(int code, const char *what, const char *isa, const eq_qtype_traits *type,
                       const test_case *c)
{
    if (code != EQ_OK) {
        printf("ERROR %s through set %s, type %s, case \"%s\" (%zu, %zu) x %zu: %s\n", what, isa,
               type->name, c->name, c->rows, c->cols, c->n, eq_error_string(code));
        exit(1);
    }
}

/* eq_dequantize_rows through `report`'s set: whole tensor and rows [begin, begin + count), bit-exact. */
static void check_dequantize(set_report *report, const tensor *t, const test_case *c, size_t begin,
                             size_t count)
{
    check_call(eq_select_isa(report->isa), "eq_select_isa", report->isa, t->type, c);
    float *out = checked_calloc(t->rows * t->cols, sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        const size_t row_begin = pass == 0 ? 0 : begin, row_count = pass == 0 ? t->rows : count;
        check_call(eq_dequantize_rows(t->type->id, t->data, t->nbytes, t->rows, t->cols, row_begin,
                                      row_count, out),
                   "eq_dequantize_rows", report->isa, t->type, c);
        for (size_t i = 0; i < row_count; i++) {
            for (size_t k = 0; k < t->cols; k++) {
                const float expected = weight_dequantized(t, row_begin + i, k), got = out[i * t->cols + k];
                if (memcmp(&expected, &got, sizeof got) != 0) {
                    report->mismatches++;
                    if (printed++ < MAX_PRINTED) {
                        printf("MISMATCH dequantize: set %s, type %s, case \"%s\", shape (%zu, %zu), "
                               "rows %zu..%zu: row %zu column %zu: got %.9g, expected %.9g (bit-exact)\n",
                               report->isa, t->type->name, c->name, t->rows, t->cols, row_begin,
                               row_begin + row_count - 1, row_begin + i, k, got, expected);
                    }
                }
            }
        }
    }
    free(out);
}

/* One type and case through every set: ref against the oracle, the others against ref. */
static void check_case(set_report *reports, int n_sets, const eq_qtype_traits *type,
                       const test_case *c, rng *r)
{
    tensor t = make_tensor(r, type, c);
    const size_t outputs = c->n * c->rows;
    float *x = checked_calloc(c->n * c->cols, sizeof(float));
    float *y_ref = checked_calloc(outputs, sizeof(float)), *y = checked_calloc(outputs, sizeof(float));
    float *y_one = checked_calloc(c->rows, sizeof(float));
    double *exact = checked_calloc(outputs, sizeof(double)), *magnitude = checked_calloc(outputs, sizeof(double));
    double *ref_as_double = checked_calloc(outputs, sizeof(double)), *bound = checked_calloc(outputs, sizeof(double));
    fill_activations(r, c, x);
    const size_t begin = rng_range(r, 0, c->rows - 1), count = rng_range(r, 1, c->rows - begin);
    oracle(&t, x, c->n, exact, magnitude);
    const double depth = float_depth(&t);
    const int packed_family = has_quads(type);   /* multiply-add families: digests of their bits */
    if (packed_family) {
        packed_inputs_digest = fnv1a(packed_inputs_digest, x, c->n * c->cols * sizeof(float));
        packed_inputs_digest = fnv1a(packed_inputs_digest, t.data, t.nbytes);
    }

    check_call(eq_gemm_isa("ref", type->id, t.data, t.nbytes, c->rows, c->cols, x, c->n, y_ref),
               "eq_gemm_isa", "ref", type, c);
    for (size_t i = 0; i < outputs; i++) {
        ref_as_double[i] = y_ref[i];
    }

    for (int s = 0; s < n_sets; s++) {
        set_report *report = &reports[s];
        if (!report->available) {
            continue;
        }
        check_dequantize(report, &t, c, begin, count);
        report->products++;
        if (strcmp(report->isa, "ref") == 0) {
            for (size_t i = 0; i < outputs; i++) {
                bound[i] = 0x1p-24 * fabs(exact[i]) + (depth + (double)c->cols) * 0x1p-50 * magnitude[i] + 1e-30;
            }
            compare(report, "gemm against the float64 oracle", type, c, y_ref, exact, bound);
            continue;
        }
        check_call(eq_gemm_isa(report->isa, type->id, t.data, t.nbytes, c->rows, c->cols, x, c->n, y),
                   "eq_gemm_isa", report->isa, type, c);
        if (packed_family) {
            report->packed_digest = fnv1a(report->packed_digest, y, outputs * sizeof(float));
        }
        const path_precision *route = route_precision(report->isa, type, c->n);
        table_error_bound(&t, x, c->n, route, bound);
        for (size_t i = 0; i < outputs; i++) {
            bound[i] += depth * 0x1p-23 * magnitude[i] + 1e-30;
        }
        compare(report, "gemm against ref", type, c, y, ref_as_double, bound);
        /* vectors 0 and n - 1 alone: the decode route. Where the batch took another route (a
         * prefill path), each is held to the decode route's own bound, so every case checks both
         * paths; where it took the same route, alone gives the bits it gets inside the batch. */
        const path_precision *alone_route = route_precision(report->isa, type, 1);
        for (size_t v = 0; v < c->n; v += (c->n > 1 ? c->n - 1 : 1)) {
            check_call(eq_gemm_isa(report->isa, type->id, t.data, t.nbytes, c->rows, c->cols,
                                   x + v * c->cols, 1, y_one),
                       "eq_gemm_isa", report->isa, type, c);
            if (route != alone_route) {
                test_case one = *c;
                one.n = 1;
                table_error_bound(&t, x + v * c->cols, 1, alone_route, bound);
                for (size_t row = 0; row < c->rows; row++) {
                    bound[row] += depth * 0x1p-23 * magnitude[v * c->rows + row] + 1e-30;
                }
                compare(report, "gemm of one vector against ref", type, &one, y_one,
                        ref_as_double + v * c->rows, bound);
                continue;
            }
            if (memcmp(y_one, y + v * c->rows, c->rows * sizeof(float)) != 0) {
                report->mismatches++;
                if (printed++ < MAX_PRINTED) {
                    printf("MISMATCH batch: set %s, type %s, case \"%s\", shape (%zu, %zu) x %zu vectors: "
                           "vector %zu alone differs from vector %zu of the batch\n",
                           report->isa, type->name, c->name, c->rows, c->cols, c->n, v, v);
                }
            }
        }
    }
    free(x);
    free(y_ref);
    free(y);
    free(y_one);
    free(exact);
    free(magnitude);
    free(ref_as_double);
    free(bound);
    free_tensor(&t);
}

/* Every batch size 1..MAX_BATCH through every set, on one tensor and MAX_BATCH vectors: where a batch
 * of n takes the route one vector takes (or another route that is meant to give the same bits: same
 * set, same path name and precision, as the packed family's decode and register-blocked prefill
 * gemms), every vector of the batch gives the bits it gets alone; where it takes another route,
 * every vector is held to that route's bound against ref. So each register block of a prefill
 * gemm (8, 4, 1 vectors at a time ...) and its remainders are checked at every batch size. */
static void check_batches(set_report *reports, int n_sets, const eq_qtype_traits *type, size_t group, rng *r)
{
    /* a full tile and a partial one, a full group and a partial last one: small, since it runs
     * 2080 vector products per set (under qemu and ASan too) */
    const test_case c = {"batches 1..64", 19, group + 37, MAX_BATCH, WEIGHTS_RANDOM, ACTS_MIXED};
    tensor t = make_tensor(r, type, &c);
    const size_t outputs = c.n * c.rows;
    float *x = checked_calloc(c.n * c.cols, sizeof(float));
    float *y_ref = checked_calloc(outputs, sizeof(float)), *y = checked_calloc(outputs, sizeof(float));
    float *y_alone = checked_calloc(outputs, sizeof(float));
    double *exact = checked_calloc(outputs, sizeof(double)), *magnitude = checked_calloc(outputs, sizeof(double));
    double *ref_as_double = checked_calloc(outputs, sizeof(double)), *bound = checked_calloc(outputs, sizeof(double));
    fill_activations(r, &c, x);
    oracle(&t, x, c.n, exact, magnitude);
    const double depth = float_depth(&t);
    check_call(eq_gemm_isa("ref", type->id, t.data, t.nbytes, c.rows, c.cols, x, c.n, y_ref), "eq_gemm_isa", "ref",
               type, &c);
    for (size_t i = 0; i < outputs; i++) {
        ref_as_double[i] = y_ref[i];
    }
    for (int s = 0; s < n_sets; s++) {
        set_report *report = &reports[s];
        if (!report->available || strcmp(report->isa, "ref") == 0) {
            continue;
        }
        const path_precision *alone_route = route_precision(report->isa, type, 1);
        for (size_t v = 0; v < c.n; v++) {
            check_call(eq_gemm_isa(report->isa, type->id, t.data, t.nbytes, c.rows, c.cols, x + v * c.cols, 1,
                                   y_alone + v * c.rows),
                       "eq_gemm_isa", report->isa, type, &c);
        }
        const path_precision *bound_route = NULL;
        for (size_t n = 1; n <= c.n; n++) {
            const path_precision *route = route_precision(report->isa, type, n);
            test_case batch = c;
            batch.n = n;
            check_call(eq_gemm_isa(report->isa, type->id, t.data, t.nbytes, c.rows, c.cols, x, n, y),
                       "eq_gemm_isa", report->isa, type, &batch);
            report->products++;
            if (route == alone_route) {
                for (size_t v = 0; v < n; v++) {
                    if (memcmp(y + v * c.rows, y_alone + v * c.rows, c.rows * sizeof(float)) != 0) {
                        report->mismatches++;
                        if (printed++ < MAX_PRINTED) {
                            printf("MISMATCH batch: set %s, type %s, case \"%s\", shape (%zu, %zu) x %zu "
                                   "vectors: vector %zu differs from itself alone\n",
                                   report->isa, type->name, c.name, c.rows, c.cols, n, v);
                        }
                    }
                }
                report->outputs += n * c.rows;
                continue;
            }
            if (route != bound_route) {   /* the bound of every vector under this route, once */
                table_error_bound(&t, x, c.n, route, bound);
                for (size_t i = 0; i < outputs; i++) {
                    bound[i] += depth * 0x1p-23 * magnitude[i] + 1e-30;
                }
                bound_route = route;
            }
            compare(report, "gemm against ref", type, &batch, y, ref_as_double, bound);
        }
    }
    free(x);
    free(y_ref);
    free(y);
    free(y_alone);
    free(exact);
    free(magnitude);
    free(ref_as_double);
    free(bound);
    free_tensor(&t);
}

/* Keeps available only the sets in the comma-separated list (and ref); 0 after a one-line error if
 * the list names a set the library does not have. */
static int select_sets(const char *list, set_report *reports, int n_sets)
{
    int wanted[MAX_SETS] = {0};
    for (const char *name = list; *name != '\0';) {
        const size_t length = strcspn(name, ",");
        int found = 0;
        for (int s = 0; s < n_sets; s++) {
            if (strlen(reports[s].isa) == length && strncmp(reports[s].isa, name, length) == 0) {
                wanted[s] = found = 1;
            }
        }
        if (!found) {
            fprintf(stderr, "check_kernels: CHECK_KERNELS_SETS names \"%.*s\", which is no kernel set of the library\n",
                    (int)length, name);
            return 0;
        }
        name += length + (name[length] == ',');
    }
    for (int s = 0; s < n_sets; s++) {
        if (reports[s].available && !wanted[s] && strcmp(reports[s].isa, "ref") != 0) {
            reports[s].available = 0;
            reports[s].skipped = 1;
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    uint64_t seed = 1;
    if (argc > 2 || (argc == 2 && sscanf(argv[1], "%" SCNu64, &seed) != 1)) {
        fprintf(stderr, "usage: %s [SEED]\n", argv[0]);
        return 2;
    }

    set_report reports[MAX_SETS];
    const int n_sets = eq_kernel_set_count();
    if (n_sets < 1 || n_sets > MAX_SETS) {
        fprintf(stderr, "check_kernels: the library lists %d kernel sets\n", n_sets);
        return 2;
    }
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        reports[s] = (set_report){.isa = isa, .available = eq_isa_available(isa), .packed_digest = 0xcbf29ce484222325ull};
    }
    if (!eq_isa_available("ref")) {
        fprintf(stderr, "check_kernels: the reference set \"ref\" is not available\n");
        return 2;
    }
    const char *only = getenv("CHECK_KERNELS_SETS");
    if (only != NULL && !select_sets(only, reports, n_sets)) {
        return 2;
    }

    printf("check_kernels: seed %" PRIu64 ", %d quant types, kernel sets:", seed, eq_qtype_count());
    for (int s = 0; s < n_sets; s++) {
        printf(" %s%s", reports[s].isa, reports[s].available ? "" : reports[s].skipped ? " (not selected)" : " (not on this CPU)");
    }
    printf("\n");
    /* every route known before anything runs; one line per set: which set and path run each family */
    for (int s = 0; s < n_sets; s++) {
        if (!reports[s].available) {
            continue;
        }
        printf("  %s:", reports[s].isa);
        for (int family = 0; family < EQ_QFAMILY_COUNT; family++) {
            for (int id = 0; id < eq_qtype_count(); id++) {
                if (eq_qtype_get(id)->family == family) {
                    const path_precision *decode = route_precision(reports[s].isa, eq_qtype_get(id), 1);
                    const path_precision *batch = route_precision(reports[s].isa, eq_qtype_get(id), MAX_BATCH);
                    printf("%s %s by %s %s", family ? "," : "", eq_qfamily_name(family), decode->isa, decode->path);
                    if (batch != decode) {
                        printf(" (%d vectors: %s %s)", MAX_BATCH, batch->isa, batch->path);
                    }
                    break;
                }
            }
        }
        for (int id = 0; id < eq_qtype_count(); id++) {
            for (size_t n = 1; n <= MAX_BATCH; n++) {
                route_precision(reports[s].isa, eq_qtype_get(id), n);
            }
        }
        printf("\n");
    }

    int n_cases_total = 0;
    for (int id = 0; id < eq_qtype_count(); id++) {
        const eq_qtype_traits *type = eq_qtype_get(id);
        rng r = {seed * 0x100000001b3ull + (uint64_t)id};   /* a type's cases depend on nothing else */
        test_case cases[MAX_CASES];
        const int n_cases = make_cases(&r, is_packed(type) ? (size_t)type->group : 64, cases);
        for (int i = 0; i < n_cases; i++) {
            check_case(reports, n_sets, type, &cases[i], &r);
        }
        check_batches(reports, n_sets, type, is_packed(type) ? (size_t)type->group : 64, &r);
        n_cases_total += n_cases + 1;
        for (int s = 0; s < n_sets; s++) {
            reports[s].types += reports[s].available;
        }
    }

    size_t mismatches = 0;
    for (int s = 0; s < n_sets; s++) {
        const set_report *report = &reports[s];
        if (!report->available) {
            printf("%-8s not run: %s\n", report->isa,
                   report->skipped ? "not in CHECK_KERNELS_SETS" : "this CPU does not run it");
            continue;
        }
        printf("%-8s %d types x %d cases = %zu products, %zu outputs against %s, %zu mismatches; "
               "largest error %.3f of its bound (%s, \"%s\")\n",
               report->isa, report->types, n_cases_total / eq_qtype_count(), report->products,
               report->outputs, strcmp(report->isa, "ref") == 0 ? "float64" : "ref",
               report->mismatches, report->worst_ratio, report->worst_type ? report->worst_type : "-",
               report->worst_case ? report->worst_case : "-");
        mismatches += report->mismatches;
    }
    /* which sets gave the same bits on the packed family (ref's digest covers nothing: it is
     * compared with the oracle, not hashed) */
    printf("uniform-packed digests: inputs %016" PRIx64, packed_inputs_digest);
    for (int s = 0; s < n_sets; s++) {
        if (reports[s].available && strcmp(reports[s].isa, "ref") != 0) {
            printf(", %s %016" PRIx64, reports[s].isa, reports[s].packed_digest);
        }
    }
    printf("\n");
    if (mismatches > 0) {
        printf("check_kernels: FAILED, %zu mismatches (seed %" PRIu64 ")\n", mismatches, seed);
        return 1;
    }
    printf("check_kernels: ok\n");
    return 0;
}
