/* packed_acts.h — the prepared input of the uniform packed family's int8 multiply-add paths: int8
 * activations per block of 32 with a float scale. One layout for every set: written by
 * eq_packed_prepare_scalar (scalar/packed.c), eq_packed_prepare_avx2 (x86/avx2_packed.c, also the
 * avx512 set's) and eq_packed_prepare_neon (arm/neon_packed.c), which give the same bytes for the
 * same input, and read by each set's packed gemms (decode and prefill). Plain C: no ISA code here.
 *
 * One vector of cols activations, padded = cols rounded up to EQ_LARGEST_GROUP (zeros past cols):
 *     xq     (padded,)       int8   round(x / s_b) (ties to even), |xq| <= 127, block b = columns 32b .. 32b+31
 *     scale  (padded / 32,)  float  s_b = max_{k in b} |x_k| / 127  (0 for an all-zero block)
 *     xq_sum (padded / 32,)  int32  Σ_{k in b} xq_k  (the 8-bit kernels' offset: Σ q x = Σ (q - 128) x + 128 Σ xq)
 *     sum    (padded / 32,)  float  s_b Σ_{k in b} xq_k  (Σ of the dequantized block, for the min and
 *                                   zero-point terms, so the product is exactly W x̂)
 * xq starts the buffer (64-byte aligned by the caller); the rest follows at a multiple of 128 bytes.
 */
#ifndef EDGEQ_PACKED_ACTS_H
#define EDGEQ_PACKED_ACTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

enum {
    EQ_PACKED_ACTS_BLOCK = EQ_PACKED_BLOCK_COLS,   /* activations per scale (32) */
    EQ_PACKED_ACTS_LEVELS = 127                    /* max |x| of a block maps to this */
};

typedef struct eq_packed_acts {
    int8_t *xq;          /* (padded,) */
    float *scale;        /* (padded / 32,) */
    int32_t *xq_sum;     /* (padded / 32,) */
    float *sum;          /* (padded / 32,) */
} eq_packed_acts;

static inline size_t eq_packed_acts_padded(size_t cols)
{
    return (cols + EQ_LARGEST_GROUP - 1) / EQ_LARGEST_GROUP * EQ_LARGEST_GROUP;
}

static inline size_t eq_packed_acts_bytes(size_t cols)
{
    size_t padded = eq_packed_acts_padded(cols);
    return padded + 3u * (padded / EQ_PACKED_ACTS_BLOCK) * sizeof(float);
}

/* The arrays of one prepared vector (const-ness is the caller's: prepare writes, gemm reads). */
static inline eq_packed_acts eq_packed_acts_at(const uint8_t *prepared, size_t cols)
{
    size_t padded = eq_packed_acts_padded(cols), blocks = padded / EQ_PACKED_ACTS_BLOCK;
    eq_packed_acts a;
    a.xq = (int8_t *)(uintptr_t)prepared;
    a.scale = (float *)(uintptr_t)(prepared + padded);
    a.xq_sum = (int32_t *)(uintptr_t)(a.scale + blocks);
    a.sum = (float *)(uintptr_t)(a.scale + 2 * blocks);
    return a;
}

#endif /* EDGEQ_PACKED_ACTS_H */
