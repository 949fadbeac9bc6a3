/* check_attention.c — the fp16 KV cache's attention helpers (dot_f16, axpy_f16), the int8 KV cache's
 * quantizer and helpers (dot_q8, axpy_q8), and the int4 value cache's (EQ_KV_K8V4:
 * eq_kv_q4_quantize, axpy_q4), of every kernel set this CPU runs,
 * against ref and a float64 oracle. Plain C, built with the library's sources (it reads the internal
 * kernels.h: the helpers are not public API).
 *
 *   make check-attention [CHECK_KERNELS_SEED=n]      (tests/test_native_kernels.py runs it)
 *
 * What is checked, per row length n (1 .. 300, the ones models use: 64, 128, and partial blocks)
 * and value pattern (normal, outliers, all equal, zeros, tiny (fp16-subnormal scales), huge
 * (scale overflow clamped)):
 *   1. eq_kv_q8_quantize (the one writer, in ref/gemv.c): |q| <= 127, and per block with scale d and
 *      largest magnitude amax, |x - d q| <= d/2 (1 + 2^-16) + 127 d 2^-11 (the fp16 rounding of
 *      amax / 127 can make amax / d exceed 127 by 2^-11 relative: clamped); d is 0 only when
 *      amax / 127 <= 2^-25 (rounds to fp16 zero), d = 65504 with saturated levels only when it
 *      overflows fp16;
 *   2. ref's dot against the float64 oracle S = Σ_b d_b Σ_i q_i b_i: a float sum of k terms in any
 *      order is off by at most (k - 1) u Σ|terms| (u = 2^-24), each product and each block's scaling
 *      adds u of its magnitude, so |dot - S| <= (n + 4) u T, T = Σ|d_b q_i b_i|;
 *   3. every set's dot against ref's: both within that bound of S, so |set - ref| <= 2 (n + 4) u T;
 *   4. every set's axpy against ref's, per element: both compute the block weight p = w d_b the same
 *      way (one float product), then ref rounds p q_i and the sum, a fused multiply-add only the sum:
 *      the sums differ by u |p q_i| before rounding and each rounds by u of its magnitude, so
 *      |set - ref| <= u (2 |y| + 3 |p q_i|) (+ the smallest normal float for underflow).
 * The int4 values, on the same rows and patterns:
 *   5. eq_kv_q4_quantize: per block with m its value of largest magnitude, the scale d is m / -8 to
 *      fp16's precision, |d + m/8| <= 2^-11 |m/8| + 2^-25 (or -+65504 when |m|/8 overflows fp16, 0 only
 *      when |m|/8 <= 2^-25), every level is x / d rounded to nearest and clamped to [-8, 7]
 *      (|q - clamp(x / d)| <= 1/2 + 2^-18: float's x * (1 / d) is off x / d by 2^-23 relative, and
 *      |x / d| <= 8 (1 + 2^-10)), the value m itself is level -8 when d is a normal fp16 (a
 *      subnormal d can be far from m / -8 relative to it), unclamped values are within
 *      |d| (1/2 + 2^-18) of x, and an odd row's unused last nibble is 0 (the two rounding checks
 *      report only the excess over half a level, so a near-tie does not read as a full bound);
 *   6. ref's axpy_q4 against float64 y + w d q: ref rounds w d, p q and the sum, so within
 *      u (|y| + 4 |w d q|); every set's against ref's as in 4.
 * The fp16 cache (the default), the same rows stored as fp16 a:
 *   7. every set's dot_f16 against the float64 oracle Σ a_i b_i (every product exact in float64): a
 *      float sum of n terms in any order and grouping (sets keep several partial sums) is off by at
 *      most (n - 1) u T, each product rounds by u of its magnitude: |dot - S| <= (n + 1) u T,
 *      T = Σ|a_i b_i|;
 *   8. every set's axpy_f16 against float64 y + w a, per element: at most one rounding of w a and
 *      one of the sum, so within u (2 |y| + 3 |w a|) (+ the smallest normal float).
 *   Both also over 5 rows at once (the row, its reverse, their negations, the row halved; rows 5 NaN
 *   values apart, which a helper reading past a row would turn into a NaN): each score as in 7, and
 *   y + Σ_r w_r a_r within 11 u (|y| + Σ_r |w_r a_r|) (two roundings per row, each below u of that).
 *   Rows whose values overflow fp16 (the "huge" pattern) are skipped: an fp16 cache cannot hold them.
 *   9. every set's to_f16 (the cache's writer) gives eq_fp32_to_fp16's bits exactly, on every row and
 *      pattern (the huge ones overflow to inf, the tiny ones are fp16 subnormals) and on the edge
 *      values: signed zeros, infinities, NaNs with payloads, the largest finite half, the overflow
 *      and underflow boundaries and ties to even at both ends of the subnormal range.
 * The softmax's and silu's e^x (kernels.h: steps without fused operations, so sets can agree):
 *  10. ref's exp within EXP_ULPS units in the last place of float64 exp over [EQ_EXP_LOW, EQ_EXP_HIGH]
 *      (every 2^-10 there, and random values), +inf above EQ_EXP_HIGH, 0 below EQ_EXP_LOW, NaN for NaN;
 *      every set's exp gives ref's bits exactly, on those values, on rows of every length 1 .. 40
 *      (the vector bodies and tails) and in place (y = x).
 * A mismatch prints set, check, n, pattern, index, got, expected and bound, and the exit status is 1;
 * the last lines give per set the largest error as a fraction of its bound. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"
#include "kernels.h"

#define MAX_N 300
#define U (1.0 / 16777216.0)   /* 2^-24: float's unit roundoff */

typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r)   /* splitmix64 */
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(rng *r)   /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) / 9007199254740992.0;
}

static double rng_normal(rng *r)   /* roughly N(0, 1) */
{
    return (rng_uniform(r) + rng_uniform(r) + rng_uniform(r) + rng_uniform(r) - 2.0) * 1.7320508;
}

enum { NORMAL, OUTLIERS, EQUAL, ZEROS, TINY, HUGE_VALUES, PATTERNS };
static const char *pattern_names[PATTERNS] = {"normal", "outliers", "equal", "zeros", "tiny", "huge"};

static void fill(rng *r, int pattern, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v = rng_normal(r);
        switch (pattern) {
        case OUTLIERS: v *= rng_uniform(r) < 0.05 ? 300.0 : 1.0; break;
        case EQUAL: v = (i % 2 ? -1.0 : 1.0) * 3.25; break;
        case ZEROS: v = 0.0; break;
        case TINY: v *= 1e-7; break;                       /* scales in fp16's subnormal range, some 0 */
        case HUGE_VALUES: v *= 1e7; break;                 /* amax / 127 beyond fp16: clamped to 65504 */
        default: break;
        }
        x[i] = (float)v;
    }
}

static int failures;

typedef struct worst_errors {   /* per set: the largest error / bound, of which check and pattern */
    double fraction[64];
    const char *what[64];
    int pattern[64];
} worst_errors;
static worst_errors worst_q8, worst_q4, worst_f16;   /* the int8 cache's checks (1-4), the int4 values' (5, 6), fp16's (7, 8) */


/* at most PRINTED mismatch lines per set and check, so that one broken helper (or set) does not hide
 * another's; the sets and checks name themselves with strings that stay put, compared as pointers */
enum { PRINTED = 5, CHECK_KINDS = 256 };
static int printed(const char *isa, const char *what)
{
    static const char *kinds[CHECK_KINDS][2];
    static int counts[CHECK_KINDS];
    for (int k = 0; k < CHECK_KINDS; k++)
        if ((kinds[k][0] == isa && kinds[k][1] == what) || kinds[k][1] == NULL) {
            kinds[k][0] = isa;
            kinds[k][1] = what;
            return counts[k]++;
        }
    return PRINTED;
}

static void check(worst_errors *worst, int set, const char *isa, const char *what, size_t n, int pattern,
                  size_t i, double got, double expected, double bound)
{
    double error = fabs(got - expected);
    if (!(error <= bound)) {   /* NaN fails too */
        failures++;
        if (printed(isa, what) < PRINTED)
            fprintf(stderr, "MISMATCH set %s %s n %zu pattern %s index %zu: got %.9g expected %.9g bound %.3g\n",
                    isa, what, n, pattern_names[pattern], i, got, expected, bound);
    } else if (bound > 0 && error / bound > worst->fraction[set]) {
        worst->fraction[set] = error / bound;
        worst->what[set] = what;
        worst->pattern[set] = pattern;
    }
}

/* 7, 8: every set's fp16 dot and axpy against float64, on one row and on F16_ROWS rows at once (the
 * row, its reverse, their negations and the row halved, F16_PAD values apart that hold NaN: read,
 * they would show; 5 rows: the sets' blocks of 4 rows and a row after them) */
#define F16_ROWS 5
#define F16_PAD 5
static void check_f16(int n_sets, size_t n, int pattern, const float *x, const float *b, const float *y0, float w)
{
    const size_t stride = n + F16_PAD;
    uint16_t a[F16_ROWS * (MAX_N + F16_PAD)];
    double exact[F16_ROWS], magnitude[F16_ROWS];
    const float weights[F16_ROWS] = {w, -0.5f * w, 3.0f * w, 0.25f * w, -2.0f * w};
    for (size_t i = 0; i < F16_ROWS * stride; i++)
        a[i] = 0x7e00;   /* fp16 NaN */
    for (size_t i = 0; i < n; i++) {
        a[i] = eq_fp32_to_fp16(x[i]);
        if (!isfinite(eq_fp16_to_fp32(a[i])))   /* beyond fp16's range ("huge"): no fp16 cache holds it */
            return;
        a[stride + i] = eq_fp32_to_fp16(x[n - 1 - i]);
        a[2 * stride + i] = a[i] ^ 0x8000;
        a[3 * stride + i] = a[stride + i] ^ 0x8000;
        a[4 * stride + i] = eq_fp32_to_fp16(0.5f * eq_fp16_to_fp32(a[i]));
    }
    for (int r = 0; r < F16_ROWS; r++) {
        exact[r] = magnitude[r] = 0.0;
        for (size_t i = 0; i < n; i++) {
            exact[r] += (double)eq_fp16_to_fp32(a[(size_t)r * stride + i]) * b[i];
            magnitude[r] += fabs((double)eq_fp16_to_fp32(a[(size_t)r * stride + i]) * b[i]);
        }
    }
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        const eq_kernels *k = eq_isa_available(isa) ? eq_kernels_named(isa) : NULL;
        if (!k)
            continue;
        float dots[F16_ROWS];
        k->dot_f16(a, stride, 1, b, n, dots);
        check(&worst_f16, s, isa, "dot_f16 vs float64", n, pattern, 0, dots[0], exact[0],
              (double)(n + 1) * U * magnitude[0] + DBL_MIN);
        k->dot_f16(a, stride, F16_ROWS, b, n, dots);
        for (int r = 0; r < F16_ROWS; r++)
            check(&worst_f16, s, isa, "dot_f16 rows vs float64", n, pattern, (size_t)r, dots[r], exact[r],
                  (double)(n + 1) * U * magnitude[r] + DBL_MIN);
        float y[MAX_N];
        memcpy(y, y0, sizeof(float) * n);
        k->axpy_f16(y, weights, a, stride, 1, n);
        for (size_t i = 0; i < n; i++) {
            double product = (double)w * eq_fp16_to_fp32(a[i]);
            check(&worst_f16, s, isa, "axpy_f16 vs float64", n, pattern, i, y[i], y0[i] + product,
                  U * (2.0 * fabs(y0[i]) + 3.0 * fabs(product)) + FLT_MIN);
        }
        /* F16_ROWS rows: each adds at most one rounding of its product and one of the sum, every one
         * at most u of |y0| + Σ|products| (the largest the partial sums can be): (2 rows + 1) u of it */
        memcpy(y, y0, sizeof(float) * n);
        k->axpy_f16(y, weights, a, stride, F16_ROWS, n);
        for (size_t i = 0; i < n; i++) {
            double sum = y0[i], size = fabs(y0[i]);
            for (int r = 0; r < F16_ROWS; r++) {
                double product = (double)weights[r] * eq_fp16_to_fp32(a[(size_t)r * stride + i]);
                sum += product;
                size += fabs(product);
            }
            check(&worst_f16, s, isa, "axpy_f16 rows vs float64", n, pattern, i, y[i], sum,
                  (2.0 * F16_ROWS + 1.0) * U * size + FLT_MIN);
        }
    }
}

/* 9. every set's fp16 writer against eq_fp32_to_fp16, bit for bit */
static int to_f16_mismatches[64];

static void check_to_f16(int n_sets, size_t n, int pattern, const float *x)
{
    uint16_t expected[MAX_N + 1], got[MAX_N + 1];
    for (size_t i = 0; i < n; i++)
        expected[i] = eq_fp32_to_fp16(x[i]);
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        const eq_kernels *k = eq_isa_available(isa) ? eq_kernels_named(isa) : NULL;
        if (!k)
            continue;
        got[n] = 0x5a5a;   /* a guard past the row: the writer must not touch it */
        k->to_f16(x, n, got);
        for (size_t i = 0; i <= n; i++) {
            uint16_t want = i < n ? expected[i] : 0x5a5a;
            if (got[i] == want)
                continue;
            failures++;
            if (to_f16_mismatches[s]++ < PRINTED)
                fprintf(stderr, "MISMATCH set %s to_f16 vs eq_fp32_to_fp16 n %zu pattern %s index %zu: got 0x%04x "
                        "expected 0x%04x (x %a)\n", isa, n, pattern < 0 ? "edges" : pattern_names[pattern], i, got[i],
                        want, i < n ? (double)x[i] : 0.0);
        }
    }
}

static float float_bits(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static void check_to_f16_edges(int n_sets)
{
    static const uint32_t edges[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,      /* zeros, infinities */
        0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fa02000u,      /* quiet and signaling NaNs, payloads */
        0x477fe000u, 0x477fefffu, 0x477ff000u, 0xc77ff000u,      /* 65504; below and at the overflow tie */
        0x38800000u, 0x387fffffu, 0x387fe000u, 0x387ff000u,      /* smallest normal half; just below it */
        0x33800000u, 0x33000000u, 0x33000001u, 0xb3000001u,      /* smallest subnormal; the zero tie */
        0x33c00000u, 0x34200000u, 0x3f801000u, 0x3f803000u,      /* 1.5 and 2.5 subnormal steps; ties at 1 */
        0x00000001u, 0x3f800000u, 0xbf7fffffu, 0x497423f0u,      /* float subnormal; 1; just below -1; 1e6 */
    };
    float x[sizeof edges / sizeof edges[0]];
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        x[i] = float_bits(edges[i]);
    check_to_f16(n_sets, sizeof edges / sizeof edges[0], -1, x);
}

/* 10. e^x: ref within EXP_ULPS ulp of float64, every set bit for bit equal to ref */
enum { EXP_VALUES = 1 << 18, EXP_ULPS = 1 };
static int exp_mismatches[64];
static double exp_worst_ulps;

static double ulp_of(double value)   /* float's unit in the last place at |value| (normal range) */
{
    int exponent;
    frexp(value, &exponent);
    return ldexp(1.0, exponent - 24);
}

static void check_exp(const eq_kernels *ref, int n_sets, rng *r)
{
    static float x[EXP_VALUES], expected[EXP_VALUES], got[EXP_VALUES];
    size_t n = 0;
    for (double v = EQ_EXP_LOW; v <= EQ_EXP_HIGH; v += 1.0 / 1024.0)
        x[n++] = (float)v;
    static const float edges[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 88.0f, 88.00001f, 88.72284f, 89.0f, 1e30f, INFINITY,
                                  -87.0f, -87.00001f, -103.0f, -1e30f, -INFINITY, NAN, -NAN};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        x[n++] = edges[i];
    while (n < EXP_VALUES)
        x[n++] = (float)((rng_uniform(r) - 0.5) * 400.0);
    ref->exp(x, expected, n);
    for (size_t i = 0; i < n; i++) {
        double want = exp((double)x[i]), error;
        if (isnan(x[i]))
            error = isnan(expected[i]) ? 0.0 : INFINITY;
        else if (x[i] > EQ_EXP_HIGH)
            error = expected[i] == INFINITY ? 0.0 : INFINITY;
        else if (x[i] < EQ_EXP_LOW)
            error = expected[i] == 0.0f ? 0.0 : INFINITY;
        else
            error = fabs(expected[i] - want) / ulp_of(want);
        if (error > exp_worst_ulps)
            exp_worst_ulps = error;
        if (!(error <= EXP_ULPS)) {
            failures++;
            if (exp_mismatches[0]++ < PRINTED)
                fprintf(stderr, "MISMATCH set ref exp vs float64 n 1 pattern values index %zu: got %.9g expected %.9g "
                        "(x %a, %.2f ulp)\n", i, expected[i], want, x[i], error);
        }
    }
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        const eq_kernels *k = eq_isa_available(isa) ? eq_kernels_named(isa) : NULL;
        if (!k)
            continue;
        k->exp(x, got, n);
        for (size_t length = 1; length <= 40; length++) {   /* bodies and tails; in place */
            float row[40];
            memcpy(row, x + 7 * length, length * sizeof *row);
            k->exp(row, row, length);
            memcpy(got + 7 * length, row, length * sizeof *row);
        }
        for (size_t i = 0; i < n; i++) {
            if (memcmp(&got[i], &expected[i], sizeof got[i]) == 0 || (isnan(got[i]) && isnan(expected[i])))
                continue;
            failures++;
            if (exp_mismatches[s]++ < PRINTED)
                fprintf(stderr, "MISMATCH set %s exp vs ref n %zu pattern values index %zu: got %a expected %a (x %a)\n",
                        isa, n, i, got[i], expected[i], x[i]);
        }
    }
}

/* level i of an int4 row (kernels.h: byte i / 2, low nibble first, stored + 8) */
static int q4_level(const uint8_t *q, size_t i)
{
    return ((q[i / 2] >> (4 * (i % 2))) & 15) - 8;
}

/* 5, 6: the int4 quantizer of x (n,) and every set's axpy_q4 against ref */
static void check_q4(int r_set, int n_sets, size_t n, int pattern, const float *x, const float *y0, float w)
{
    uint8_t q[MAX_N / 2 + 1];
    uint16_t scales[MAX_N / EQ_KV_Q4_BLOCK + 1];
    float y_ref[MAX_N], y[MAX_N];
    eq_kv_q4_quantize(x, n, q, scales);
    for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q4_BLOCK, block++) {
        size_t end = n - begin > EQ_KV_Q4_BLOCK ? begin + EQ_KV_Q4_BLOCK : n, largest = begin;
        for (size_t i = begin; i < end; i++)
            largest = fabs(x[i]) > fabs(x[largest]) ? i : largest;
        double d = eq_fp16_to_fp32(scales[block]), m = x[largest];
        if (fabs(d) == 65504.0 && fabs(m) / 8.0 > 65504.0) {   /* clamped scale: the sign of -m */
            check(&worst_q4, r_set, "ref", "q4 clamped scale sign", n, pattern, begin, d * m < 0 ? 0 : 1, 0, 0);
        } else {
            check(&worst_q4, r_set, "ref", "q4 scale", n, pattern, begin, d, -m / 8.0,
                  fabs(m / 8.0) / 2048.0 + ldexp(1.0, -25));
            if (fabs(d) >= ldexp(1.0, -14))   /* a normal fp16: within 2^-11 of m / -8 */
                check(&worst_q4, r_set, "ref", "q4 largest is level -8", n, pattern, largest,
                      q4_level(q, largest), -8, 0);
        }
        for (size_t i = begin; i < end; i++) {
            int level = q4_level(q, i);
            if (d == 0) {
                check(&worst_q4, r_set, "ref", "q4 level under a zero scale", n, pattern, i, level, 0, 0);
                continue;
            }
            double ratio = x[i] / d, clamped = ratio > 7 ? 7 : ratio < -8 ? -8 : ratio;
            /* nearest: at most half a level off, beyond that only the float slack (tracked apart) */
            check(&worst_q4, r_set, "ref", "q4 level beyond half", n, pattern, i,
                  fabs(level - clamped) > 0.5 ? fabs(level - clamped) - 0.5 : 0.0, 0.0, ldexp(1.0, -18));
            double error = fabs(d * level - x[i]);   /* unclamped: half a step, and the same slack */
            if (clamped == ratio)
                check(&worst_q4, r_set, "ref", "q4 quantize beyond half a step", n, pattern, i,
                      error > 0.5 * fabs(d) ? error - 0.5 * fabs(d) : 0.0, 0.0, fabs(d) * ldexp(1.0, -18));
        }
    }
    if (n % 2)
        check(&worst_q4, r_set, "ref", "q4 unused nibble", n, pattern, n, q[n / 2] >> 4, 0, 0);
    memcpy(y_ref, y0, sizeof(float) * n);
    eq_kernels_named("ref")->axpy_q4(y_ref, w, q, scales, n);
    for (size_t i = 0; i < n; i++) {
        double product = (double)w * eq_fp16_to_fp32(scales[i / EQ_KV_Q4_BLOCK]) * q4_level(q, i);
        check(&worst_q4, r_set, "ref", "q4 axpy vs float64", n, pattern, i, y_ref[i], y0[i] + product,
              U * (fabs(y0[i]) + 4.0 * fabs(product)) + FLT_MIN);
    }
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        const eq_kernels *k = eq_isa_available(isa) ? eq_kernels_named(isa) : NULL;
        if (!k)
            continue;
        memcpy(y, y0, sizeof(float) * n);
        k->axpy_q4(y, w, q, scales, n);
        for (size_t i = 0; i < n; i++) {
            float weight = w * eq_fp16_to_fp32(scales[i / EQ_KV_Q4_BLOCK]);
            double bound = U * (2.0 * fabs(y0[i]) + 3.0 * fabs((double)weight * q4_level(q, i))) + FLT_MIN;
            check(&worst_q4, s, isa, "q4 axpy vs ref", n, pattern, i, y[i], y_ref[i], bound);
        }
    }
}

int main(int argc, char **argv)
{
    rng r = {argc > 1 ? strtoull(argv[1], NULL, 10) : 1};
    int n_sets = eq_kernel_set_count();
    if (n_sets > 64)
        n_sets = 64;
    const eq_kernels *ref = eq_kernels_named("ref");
    int r_set = 0;   /* ref's index, where its own checks are reported */
    for (int s = 0; s < n_sets; s++)
        if (strcmp(eq_kernel_set_name(s), "ref") == 0)
            r_set = s;
    if (!ref) {
        fprintf(stderr, "check_attention: no ref set\n");
        return 1;
    }
    static const size_t fixed[] = {1, 7, 8, 16, 31, 32, 33, 63, 64, 65, 80, 96, 128, 256, 300};
    size_t cases = 0;
    check_to_f16_edges(n_sets);
    check_exp(ref, n_sets, &r);
    for (int round = 0; round < 40; round++) {
        size_t n = round < (int)(sizeof fixed / sizeof fixed[0]) ? fixed[round]
                                                              : 1 + (size_t)(rng_uniform(&r) * MAX_N);
        for (int pattern = 0; pattern < PATTERNS; pattern++, cases++) {
            float x[MAX_N], b[MAX_N], y0[MAX_N], y_ref[MAX_N], y[MAX_N];
            int8_t q[MAX_N];
            uint16_t scales[MAX_N / EQ_KV_Q8_BLOCK + 1];
            fill(&r, pattern, x, n);
            fill(&r, round % 3 == 0 ? OUTLIERS : NORMAL, b, n);
            for (size_t i = 0; i < n; i++)
                y0[i] = (float)rng_normal(&r);
            float w = (float)rng_uniform(&r);
            eq_kv_q8_quantize(x, n, q, scales);

            /* 1. the quantizer; the oracle S and T of the dot */
            double exact = 0.0, magnitude = 0.0;
            for (size_t begin = 0, block = 0; begin < n; begin += EQ_KV_Q8_BLOCK, block++) {
                size_t end = n - begin > EQ_KV_Q8_BLOCK ? begin + EQ_KV_Q8_BLOCK : n;
                double d = eq_fp16_to_fp32(scales[block]), amax = 0.0;
                for (size_t i = begin; i < end; i++)
                    amax = fabs(x[i]) > amax ? fabs(x[i]) : amax;
                if (d == 0)   /* only when amax / 127 rounds to fp16 zero: at most 2^-25 */
                    check(&worst_q8, r_set, "ref", "zero scale", n, pattern, begin, amax / 127.0, 0.0, ldexp(1.0, -25));
                for (size_t i = begin; i < end; i++) {
                    if (d == 0)
                        check(&worst_q8, r_set, "ref", "level under a zero scale", n, pattern, i, q[i], 0.0, 0.0);
                    else if (d == 65504.0 && 127.0 * d < amax)   /* clamped scale: levels saturate */
                        check(&worst_q8, r_set, "ref", "saturated level", n, pattern, i, fabs(d * q[i]),
                              fabs(x[i]) > 127.0 * d ? 127.0 * d : fabs(d * q[i]), 0.0);
                    else
                        check(&worst_q8, r_set, "ref", "quantize", n, pattern, i, d * q[i], x[i],
                              0.5 * d * (1.0 + 1.0 / 65536.0) + 127.0 * d / 2048.0);
                    if (q[i] < -127)
                        check(&worst_q8, r_set, "ref", "level range", n, pattern, i, q[i], -127, 0);
                    exact += d * q[i] * (double)b[i];
                    magnitude += fabs(d * q[i] * (double)b[i]);
                }
            }
            /* 2. ref against the oracle */
            double dot_bound = (double)(n + 4) * U * magnitude + DBL_MIN;
            double dot_ref = ref->dot_q8(q, scales, b, n);
            check(&worst_q8, r_set, "ref", "dot vs float64", n, pattern, 0, dot_ref, exact, dot_bound);
            memcpy(y_ref, y0, sizeof(float) * n);
            ref->axpy_q8(y_ref, w, q, scales, n);

            /* 3, 4. every set this CPU runs against ref */
            for (int s = 0; s < n_sets; s++) {
                const char *isa = eq_kernel_set_name(s);
                const eq_kernels *k = eq_isa_available(isa) ? eq_kernels_named(isa) : NULL;
                if (!k)
                    continue;
                check(&worst_q8, s, isa, "dot vs ref", n, pattern, 0, k->dot_q8(q, scales, b, n), dot_ref, 2.0 * dot_bound);
                memcpy(y, y0, sizeof(float) * n);
                k->axpy_q8(y, w, q, scales, n);
                for (size_t i = 0; i < n; i++) {
                    float weight = w * eq_fp16_to_fp32(scales[i / EQ_KV_Q8_BLOCK]);
                    double bound = U * (2.0 * fabs(y0[i]) + 3.0 * fabs((double)weight * q[i])) + FLT_MIN;
                    check(&worst_q8, s, isa, "axpy vs ref", n, pattern, i, y[i], y_ref[i], bound);
                }
            }
            check_q4(r_set, n_sets, n, pattern, x, y0, w);
            check_f16(n_sets, n, pattern, x, b, y0, w);
            check_to_f16(n_sets, n, pattern, x);
        }
    }
    for (int s = 0; s < n_sets; s++) {
        const char *isa = eq_kernel_set_name(s);
        if (!eq_isa_available(isa))
            continue;
        printf("check_attention: %-13s %zu cases (fp16 KV): largest error %.3f of its bound (%s, %s); "
               "fp16 writer: %d values differ from eq_fp32_to_fp16\n",
               isa, cases, worst_f16.fraction[s], worst_f16.what[s] ? worst_f16.what[s] : "-",
               pattern_names[worst_f16.pattern[s]], to_f16_mismatches[s]);
        printf("check_attention: %-13s %zu cases (int8 KV, blocks of %d): largest error %.3f of its bound (%s, %s)\n",
               isa, cases, EQ_KV_Q8_BLOCK, worst_q8.fraction[s], worst_q8.what[s] ? worst_q8.what[s] : "-",
               pattern_names[worst_q8.pattern[s]]);
        printf("check_attention: %-13s %zu cases (int4 KV values, blocks of %d): largest error %.3f of its bound (%s, %s)\n",
               isa, cases, EQ_KV_Q4_BLOCK, worst_q4.fraction[s], worst_q4.what[s] ? worst_q4.what[s] : "-",
               pattern_names[worst_q4.pattern[s]]);
    }
    printf("check_attention: exp: %d values, ref within %.3f ulp of float64 (bound %d); sets differing from ref's "
           "bits:", EXP_VALUES, exp_worst_ulps, EXP_ULPS);
    for (int s = 0; s < n_sets; s++)
        if (eq_isa_available(eq_kernel_set_name(s)))
            printf(" %s %d", eq_kernel_set_name(s), exp_mismatches[s]);
    printf("\n");
    if (failures) {
        printf("check_attention: %d mismatches\n", failures);
        return 1;
    }
    printf("check_attention: all sets agree with ref\n");
    return 0;
}
