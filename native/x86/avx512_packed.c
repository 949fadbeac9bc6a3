/* x86/avx512_packed.c — int8 multiply-add decode kernels for the uniform packed family with AVX-512
 * VNNI: the `avx512` set's decode path for that family (x86/avx512.c names them in its struct).
 *
 * The algorithm of scalar/packed.c, whose prepare (int8 activations per block of 32, float scale
 * and Σx̂ = s_b Σ xq per block) it shares: vpdpbusd multiplies u8 levels by s8 activations and adds each row's
 * 4 products into its int32 lane without saturation (4 x 255 x 127 per step), so every width takes
 * the same path: one 64-byte load of levels is the 16 rows x 4 columns of a quad (edgeq.h), the
 * quad's 4 activations broadcast to every lane; 4-bit quads are masked and shifted into two, 2, 3,
 * 5 and 6-bit quads put together from their planes of bit fields (edgeq.h).
 * Compiled for AVX-512 F/BW/VL/VNNI + FMA/F16C by its pragma; call only when
 * eq_packed_avx512_available() says the CPU has them (the avx512 set's own check includes VNNI).
 */
#if defined(__x86_64__) || defined(__i386__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum {
    BLOCK = EQ_PACKED_BLOCK_COLS,
    VECTORS = 8           /* prefill: vectors multiplied per load of a quad of levels */
};

/* cpuid: FMA, F16C, OSXSAVE (leaf 1 ECX 12, 29, 27), AVX512F/BW/VL (leaf 7 EBX 16, 30, 31),
 * AVX512_VNNI (leaf 7 ECX 11); XCR0: SSE, AVX, opmask, ZMM state (bits 1, 2, 5, 6, 7). */
int eq_packed_avx512_available(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 12) & 1) || !((ecx >> 27) & 1) || !((ecx >> 29) & 1))
        return 0;
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xe6u) != 0xe6u)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return ((ebx >> 16) & 1) && ((ebx >> 30) & 1) && ((ebx >> 31) & 1) && ((ecx >> 11) & 1);
}

/* The prepared layout is packed_acts.h's, written by x86/avx2_packed.c's prepare (every CPU with
 * AVX-512 has AVX2). */
size_t eq_packed_prepared_bytes_avx512(size_t cols)
{
    return eq_packed_acts_bytes(cols);
}

void eq_packed_prepare_avx512(const float *x, size_t cols, uint8_t *out)
{
    eq_packed_prepare_avx2(x, cols, out);
}

static inline __m512i broadcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* Quad j (columns 4j..4j+3, 16 rows) from the plane of width-bit fields at `plane`, the field moved
 * to bit `at` of the level (a 16-bit shift: what it carries across a byte boundary lands outside the
 * mask) and masked */
static inline __attribute__((always_inline)) __m512i
plane_quad(const uint8_t *plane, const int width, const int at, const int j)
{
    const int quads = 8 / width, from = width * (j % quads);          /* quads per 64-byte chunk */
    __m512i chunk = _mm512_loadu_si512(plane + 64 * (j / quads));
    if (at > from)
        chunk = _mm512_slli_epi16(chunk, (unsigned)(at - from));
    else if (from > at)
        chunk = _mm512_srli_epi16(chunk, (unsigned)(from - at));
    return _mm512_and_si512(chunk, _mm512_set1_epi8((char)(((1 << width) - 1) << at)));
}

/* Quad j of a 32-column run of 2, 3, 5 or 6-bit levels (kernels.h, eq_packed_level), one byte per
 * level. Straight-line code: with bits and j constants every shift is an immediate. */
static inline __attribute__((always_inline)) __m512i quad_levels(const uint8_t *run, const int bits, const int j)
{
    const int nibbles = eq_packed_has_plane(bits, 4), pairs = eq_packed_has_plane(bits, 2);
    __m512i quad = _mm512_setzero_si512();
    if (nibbles)
        quad = plane_quad(run, 4, 0, j);
    if (pairs)
        quad = _mm512_or_si512(quad, plane_quad(run + 256 * nibbles, 2, 4 * nibbles, j));
    if (eq_packed_has_plane(bits, 1))
        quad = _mm512_or_si512(quad, plane_quad(run + 64 * (bits - 1), 1, bits - 1, j));
    return quad;
}

/* dot[v] (16 x int32) = Σ over one block's 32 columns of q[r,k] xq_v[k] for the tile's 16 rows,
 * v < vectors: each quad of levels is loaded (and split into nibbles) once for every vector */
static inline __attribute__((always_inline)) void
block_dots(const uint8_t *levels, const int bits, const int8_t *const *xq, const int vectors, __m512i *dot)
{
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        dot[v] = _mm512_setzero_si512();
    if (bits == 4) {
        const __m512i nibble = _mm512_set1_epi8(0x0f);
EQ_UNROLL(4)
        for (int j = 0; j < BLOCK / 8; j++) {
            const __m512i quad = _mm512_loadu_si512(levels + 64 * j);
            const __m512i low = _mm512_and_si512(quad, nibble), high = _mm512_and_si512(_mm512_srli_epi16(quad, 4), nibble);
EQ_UNROLL(8)
            for (int v = 0; v < vectors; v++) {
                dot[v] = _mm512_dpbusd_epi32(dot[v], low, broadcast4(xq[v] + 8 * j));
                dot[v] = _mm512_dpbusd_epi32(dot[v], high, broadcast4(xq[v] + 8 * j + 4));
            }
        }
    } else {
EQ_UNROLL(8)
        for (int j = 0; j < BLOCK / 4; j++) {
            const __m512i quad = bits > 6 ? _mm512_loadu_si512(levels + 64 * j) : quad_levels(levels, bits, j);
EQ_UNROLL(8)
            for (int v = 0; v < vectors; v++)
                dot[v] = _mm512_dpbusd_epi32(dot[v], quad, broadcast4(xq[v] + 4 * j));
        }
    }
}

/* acc[v] (the tile's 16 rows) += one group's contribution to W x_v for v < vectors: its blocks' dot
 * products, each scaled by its activation scale, then the group's fp16 scales (+ min Σx, or
 * - zero_point scale Σx).
 *   block       the group's bytes (scales, mins, levels) of block_cols columns from column b0 * 32
 *               (a constant for whole groups, so that the block loop unrolls) */
static inline __attribute__((always_inline)) void
group_step(const eq_qtype_traits *type, const uint8_t *block, const size_t block_cols, const size_t b0,
           const eq_packed_acts *x, const int vectors, const int bits, const float zero_point, __m512 *acc)
{
    const uint8_t *levels = block + eq_packed_header_bytes(type);
    if (vectors == 1)   /* decode streams the weights from memory (prefill: the tile is reused) */
        eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
    __m512 dot[VECTORS];
    float sum_x[VECTORS];
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++) {
        dot[v] = _mm512_setzero_ps();
        sum_x[v] = 0.0f;
    }
EQ_UNROLL(4)
    for (size_t c = 0, b = b0; c < block_cols; c += BLOCK, b++) {
        const int8_t *block_xq[VECTORS];
        __m512i sums_int[VECTORS];
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
            block_xq[v] = x[v].xq + b * BLOCK;
        block_dots(levels + c / BLOCK * eq_packed_run_bytes(bits), bits, block_xq, vectors, sums_int);
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++) {
            dot[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums_int[v]), _mm512_set1_ps(x[v].scale[b]), dot[v]);
            sum_x[v] += x[v].sum[b];
        }
    }
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
    if (type->symmetric) {
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
            acc[v] = _mm512_fmadd_ps(scale, _mm512_sub_ps(dot[v], _mm512_set1_ps(zero_point * sum_x[v])), acc[v]);
    } else {
        const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
EQ_UNROLL(8)
        for (int v = 0; v < vectors; v++)
            acc[v] = _mm512_fmadd_ps(min, _mm512_set1_ps(sum_x[v]), _mm512_fmadd_ps(scale, dot[v], acc[v]));
    }
}

/* y[v] (16 rows of tile `tile`) = W x_v for `vectors` prepared vectors x (1 .. VECTORS). Every
 * vector goes through the same float steps in the same order whatever `vectors` is, so a vector's
 * bits do not depend on the batch it is in (decode = vectors 1). Whole groups go through
 * group_step with their width a constant, a partial last group with its own. */
static inline __attribute__((always_inline)) void
tile_vectors(const eq_qtype_traits *type, const uint8_t *tile_data, size_t cols, const eq_packed_acts *x,
             const int vectors, const int bits, const size_t group, const __mmask16 row_mask, float *const *y)
{
    const size_t n_groups = (cols + group - 1) / group;
    const size_t last_cols = eq_packed_group_cols(type, cols, n_groups - 1);
    const size_t n_whole = last_cols == group ? n_groups : n_groups - 1;
    const size_t whole_bytes = eq_packed_block_bytes(type, group);
    const float zero_point = eq_zero_point(type);
    __m512 acc[VECTORS];                                           /* the tile's 16 rows per vector */
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        acc[v] = _mm512_setzero_ps();
    const uint8_t *block = tile_data;
    for (size_t g = 0; g < n_whole; g++, block += whole_bytes)
        group_step(type, block, group, g * group / BLOCK, x, vectors, bits, zero_point, acc);
    if (n_whole < n_groups)
        group_step(type, block, last_cols, n_whole * group / BLOCK, x, vectors, bits, zero_point, acc);
EQ_UNROLL(8)
    for (int v = 0; v < vectors; v++)
        _mm512_mask_storeu_ps(y[v], row_mask, acc[v]);
}

/* Every tile times every vector, `vectors` at a time (then 4, then one by one for the rest). */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int vectors, const int bits, const size_t group)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    for (size_t tile = 0; tile < n_tiles; tile++) {
        const size_t row0 = tile * EQ_TILE_ROWS;
        const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
        const __mmask16 row_mask = (__mmask16)((1u << n_rows) - 1u);
        const uint8_t *tile_data = data + tile * tile_bytes;
        eq_packed_acts x[VECTORS];
        float *out[VECTORS];
        size_t v = 0;
        for (; v + (size_t)vectors <= in->n; v += (size_t)vectors) {
            for (int i = 0; i < vectors; i++) {
                x[i] = eq_packed_acts_at(in->prepared + (v + (size_t)i) * in->stride, cols);
                out[i] = y + (v + (size_t)i) * y_stride + row0;
            }
            tile_vectors(type, tile_data, cols, x, vectors, bits, group, row_mask, out);
        }
        if (vectors > 4 && v + 4 <= in->n) {
            for (int i = 0; i < 4; i++) {
                x[i] = eq_packed_acts_at(in->prepared + (v + (size_t)i) * in->stride, cols);
                out[i] = y + (v + (size_t)i) * y_stride + row0;
            }
            tile_vectors(type, tile_data, cols, x, 4, bits, group, row_mask, out);
            v += 4;
        }
        for (; v < in->n; v++) {
            x[0] = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            out[0] = y + v * y_stride + row0;
            tile_vectors(type, tile_data, cols, x, 1, bits, group, row_mask, out);
        }
    }
}

/* gemm_body with its width and group as constants for the table's types (`vectors`, a constant at
 * each call, is inlined through), a run-time body for any other type */
static inline __attribute__((always_inline)) void
dispatch(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
         float *y, size_t y_stride, int vectors)
{
#define BODY_CASE(b, g) \
    case (b) * 1000 + (g): gemm_body(type, data, rows, cols, in, y, y_stride, vectors, (b), (g)); return;
#define BODY_CASES(b) BODY_CASE(b, 32) BODY_CASE(b, 64) BODY_CASE(b, 128)
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2) BODY_CASES(3) BODY_CASES(4) BODY_CASES(5) BODY_CASES(6) BODY_CASES(8)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        gemm_body(type, data, rows, cols, in, y, y_stride, vectors, type->bits, (size_t)type->group);
    }
#undef BODY_CASES
#undef BODY_CASE
}

/* decode: one vector at a time (a batch below prefill_from) */
void eq_packed_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, 1);
}

/* prefill: VECTORS vectors per load of a quad of levels */
void eq_packed_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                   const eq_input *in, float *y, size_t y_stride)
{
    dispatch(type, data, rows, cols, in, y, y_stride, VECTORS);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else   /* not x86 */

int eq_packed_avx512_available(void);
int eq_packed_avx512_available(void)
{
    return 0;
}

#endif
