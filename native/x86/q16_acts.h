/* x86/q16_acts.h — the prepared input of the multiply-add (prefill) path: int16 activations per
 * block of 32 with a float scale. Written by eq_prefill_prepare_avx2 (x86/avx2_prefill.c), read by
 * the prefill gemms of x86/avx2_prefill.c and x86/avx512_prefill.c; and EQ_PREFILL_GEMM, the
 * dispatch both files share (at the end). Plain C: no ISA code here.
 *
 * One vector of cols activations, padded = cols rounded up to EQ_LARGEST_GROUP (zeros past cols):
 *     q      (padded,)       int16  round(x / d_b), |q| <= EQ_Q16_LEVELS, block b = columns 32b .. 32b+31
 *     scale  (padded / 32,)  float  d_b = max_{k in b} |x_k| / EQ_Q16_LEVELS  (0 for an all-zero block)
 *     sum    (padded / 32,)  float  d_b * Σ_{k in b} q_k  (Σ of the dequantized block, for the min
 *                                   and zero-point terms, so the product is exactly W x̂)
 * q starts the buffer (64-byte aligned by the caller); the floats follow at a multiple of 256 bytes.
 */
#ifndef EDGEQ_X86_Q16_ACTS_H
#define EDGEQ_X86_Q16_ACTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

enum {
    EQ_Q16_BLOCK = 32,       /* activations per scale */
    EQ_Q16_LEVELS = 32767    /* max |x| of a block maps to this (x86/avx2_prefill.c: the s32 bound) */
};

typedef struct eq_q16_acts {
    int16_t *q;       /* (padded,) */
    float *scale;     /* (padded / 32,) */
    float *sum;       /* (padded / 32,) */
} eq_q16_acts;

static inline size_t eq_q16_padded(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

static inline size_t eq_q16_prepared_bytes(size_t cols)
{
    size_t padded = eq_q16_padded(cols);
    return padded * sizeof(int16_t) + 2u * (padded / EQ_Q16_BLOCK) * sizeof(float);
}

static inline eq_q16_acts eq_q16_acts_at(const uint8_t *prepared, size_t cols)
{
    size_t padded = eq_q16_padded(cols);
    eq_q16_acts a;
    a.q = (int16_t *)(uintptr_t)prepared;
    a.scale = (float *)(uintptr_t)(prepared + padded * sizeof(int16_t));
    a.sum = a.scale + padded / EQ_Q16_BLOCK;
    return a;
}

/* EQ_PREFILL_GEMM(isa): eq_prefill_gemm_<isa> for a file that defines prefill_gemm_body(type, data,
 * rows, cols, in, y, y_stride, bits, group) (always inline): the body once per (bits, group) with both
 * constant (loops unrolled), each in a function of its own, and the default case with run-time
 * values (a type added to the table without a case: correct, not unrolled; with EQ_KERNELS_GENERIC,
 * kernels.h, the only one). With all eighteen bodies in one function gcc took about 40 s to optimize
 * x86/avx2_prefill.c (some passes grow faster than the function), with one each 28 s; same code. */
#define EQ_PREFILL_BODY(b, g)                                                                                \
    static __attribute__((noinline)) void prefill_gemm_##b##_##g(const eq_qtype_traits *type,               \
                                                                 const uint8_t *data, size_t rows,          \
                                                                 size_t cols, const eq_input *in, float *y, \
                                                                 size_t y_stride)                           \
    {                                                                                                        \
        prefill_gemm_body(type, data, rows, cols, in, y, y_stride, (b), (g));                                \
    }
#define EQ_PREFILL_CASE(b, g) \
    case (b) * 1000 + (g): prefill_gemm_##b##_##g(type, data, rows, cols, in, y, y_stride); return;
#ifdef EQ_KERNELS_GENERIC
#define EQ_PREFILL_FOR_EACH(x)
#else
#define EQ_PREFILL_FOR_EACH(x) x(2, 32) x(2, 64) x(2, 128) x(3, 32) x(3, 64) x(3, 128) x(4, 32) x(4, 64) \
    x(4, 128) x(5, 32) x(5, 64) x(5, 128) x(6, 32) x(6, 64) x(6, 128) x(8, 32) x(8, 64) x(8, 128)
#endif
#define EQ_PREFILL_GEMM(isa)                                                                                 \
    EQ_PREFILL_FOR_EACH(EQ_PREFILL_BODY)                                                                     \
    void eq_prefill_gemm_##isa(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,  \
                               const eq_input *in, float *y, size_t y_stride)                                \
    {                                                                                                        \
        switch (type->bits * 1000 + type->group) {                                                          \
        EQ_PREFILL_FOR_EACH(EQ_PREFILL_CASE)                                                                 \
        default:                                                                                             \
            prefill_gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group);     \
        }                                                                                                    \
    }

#endif /* EDGEQ_X86_Q16_ACTS_H */
