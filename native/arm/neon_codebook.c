/* arm/neon_codebook.c — int8 multiply-add kernels for the codebook family (c4g*, v2g*) on aarch64: the
 * `neon` set's path (ARMv8.0: tbl + smull/smlal + sadalp) and the `neon-dotprod` set's (tbl + sdot),
 * both named in their sets' structs (arm/neon.c, arm/neon_packed.c).
 *
 * arm/neon_packed.c's 4-bit paths, whose prepare they share (int8 activations per block of 32, float
 * scale s_b, Σx̂ per block), with one lookup in front: the tile's 16 signed int8 levels are one
 * register, and vqtbl1q_s8 turns 16 nibble indices into their levels, which both paths multiply as
 * signed bytes (no bias, unlike x86's u8 x s8 instructions); v2's centroids are two such registers
 * (c0, c1), each nibble looked up in both. Per block of 32 the int32 sums
 * dot[r] = Σ_k level[r,k] xq[k] are exact:
 *   - sdot adds 4 products per 32-bit lane, at most 4 x 64 x 127 per step;
 *   - smull/smlal add into int16 lanes: |level x xq| <= 64 x 127 = 8128, so 4 products fit
 *     (32512): the sums are widened by sadalp every 4 products per lane (2 quads of c4, 1 of v2).
 * Then the float steps of x86/avx2_codebook.c and x86/avx512_codebook.c, in the same order: per
 * block dot_f = fma(dot, s_b, dot_f), per group acc = fma(scale, dot_f, acc) (+ fma(min, Σx̂, .)), so
 * every SIMD set gives the same bits. sdot exists only in functions compiled with
 * target("arch=armv8.2-a+dotprod"), reached only through the neon-dotprod set (its HWCAP check).
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "packed_acts.h"

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

#define EQ_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

/* dot[v] (rows 4v..4v+3, int32) = Σ over one block's 32 columns of level[r,k] xq[k]. A quad covers
 * 8 x span columns as 2 x span runs of 4 (edgeq.h): run q takes the low nibbles (q < span) or the
 * high ones, looked up in codebook[q % span] (c4: its one table; v2: the centroids' c0, then c1). */
typedef void (*block_dot_fn)(const uint8_t *indices, const int8x16_t codebook[2], int span, const int8_t *xq,
                             int32x4_t dot[4]);

/* The quad's 4 activations in every 32-bit lane */
static inline int8x16_t repeat4(const int8_t *xq)
{
    int32_t four;
    memcpy(&four, xq, sizeof four);
    return vreinterpretq_s8_s32(vdupq_n_s32(four));
}

/* 16 bytes of a quad (4 rows x 4 bytes) -> the levels of its 2 x span runs */
static inline __attribute__((always_inline)) void
lookup(const uint8_t *bytes, const int8x16_t codebook[2], const int span, int8x16_t run[4])
{
    const uint8x16_t packed = vld1q_u8(bytes);
    const uint8x16_t nibbles[2] = {vandq_u8(packed, vdupq_n_u8(0x0f)), vshrq_n_u8(packed, 4)};
EQ_UNROLL(4)
    for (int q = 0; q < 2 * span; q++)
        run[q] = vqtbl1q_s8(codebook[q % span], nibbles[q / span]);
}

/* ARMv8.0: 4 rows at a time, smull/smlal into int16 (rows 2 at a time), sadalp every 4 products per
 * lane (2 quads of c4, 1 of v2) */
static inline __attribute__((always_inline)) void
block_dot_mull(const uint8_t *indices, const int8x16_t codebook[2], const int span, const int8_t *xq,
               int32x4_t dot[4])
{
    int8x16_t x4[BLOCK / 4];   /* the 4 activations of columns 4j..4j+3 in every 32-bit lane */
EQ_UNROLL(8)
    for (int j = 0; j < BLOCK / 4; j++)
        x4[j] = repeat4(xq + 4 * j);
EQ_UNROLL(4)
    for (int v = 0; v < 4; v++) {
        int32x4_t pairs[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
EQ_UNROLL(2)
        for (int j0 = 0; j0 < BLOCK / (8 * span); j0 += 2 / span) {
            int16x8_t sums[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};
EQ_UNROLL(2)
            for (int j = j0; j < j0 + 2 / span; j++) {
                int8x16_t run[4];
                lookup(indices + 64 * j + 16 * v, codebook, span, run);
EQ_UNROLL(4)
                for (int q = 0; q < 2 * span; q++) {   /* columns 4 (2 span j + q) .. + 3 */
                    sums[0] = vmlal_s8(sums[0], vget_low_s8(run[q]), vget_low_s8(x4[2 * span * j + q]));
                    sums[1] = vmlal_high_s8(sums[1], run[q], x4[2 * span * j + q]);
                }
            }
            pairs[0] = vpadalq_s16(pairs[0], sums[0]);
            pairs[1] = vpadalq_s16(pairs[1], sums[1]);
        }
        dot[v] = vpaddq_s32(pairs[0], pairs[1]);
    }
}

/* dot[v] += levels[v] x the 4 activations in lane `lane` of x (lane: a constant after inlining) */
static inline __attribute__((always_inline)) EQ_TARGET_DOTPROD void
quad_sdot(const int8x16_t levels[4], int8x16_t x, const int lane, int32x4_t dot[4])
{
EQ_UNROLL(4)
    for (int v = 0; v < 4; v++) {
        switch (lane) {   /* the lane is an immediate of sdot */
        case 0: dot[v] = vdotq_laneq_s32(dot[v], levels[v], x, 0); break;
        case 1: dot[v] = vdotq_laneq_s32(dot[v], levels[v], x, 1); break;
        case 2: dot[v] = vdotq_laneq_s32(dot[v], levels[v], x, 2); break;
        default: dot[v] = vdotq_laneq_s32(dot[v], levels[v], x, 3); break;
        }
    }
}

/* Dot-product extension: one sdot per 4 rows x 4 columns; run R = 2 span j + q of quad j (columns
 * 4R..4R+3) is lane R % 4 of x[R / 4] */
static inline __attribute__((always_inline)) EQ_TARGET_DOTPROD void
block_dot_sdot(const uint8_t *indices, const int8x16_t codebook[2], const int span, const int8_t *xq,
               int32x4_t dot[4])
{
    const int8x16_t x[2] = {vld1q_s8(xq), vld1q_s8(xq + 16)};
EQ_UNROLL(4)
    for (int v = 0; v < 4; v++)
        dot[v] = vdupq_n_s32(0);
EQ_UNROLL(4)
    for (int j = 0; j < BLOCK / (8 * span); j++) {
        int8x16_t run[4][4];   /* [v][q] */
        int8x16_t rows_of_run[4];
EQ_UNROLL(4)
        for (int v = 0; v < 4; v++)
            lookup(indices + 64 * j + 16 * v, codebook, span, run[v]);
EQ_UNROLL(4)
        for (int q = 0; q < 2 * span; q++) {
            const int r = 2 * span * j + q;
EQ_UNROLL(4)
            for (int v = 0; v < 4; v++)
                rows_of_run[v] = run[v][q];
            quad_sdot(rows_of_run, x[r / 4], r % 4, dot);
        }
    }
}

/* 4 fp16 values (little-endian, maybe unaligned) as fp32 */
static inline float32x4_t load_f16x4(const uint8_t *p)
{
    uint16_t bits[4];
    memcpy(bits, p, sizeof bits);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits)));
}

/* The kernel body, inlined per (group, block_dot) so that the loops unroll and block_dot inlines. */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const size_t group, const int span, block_dot_fn block_dot)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;

    for (size_t tile = 0; tile < n_tiles; tile++) {
        const int8_t *tile_codebook = (const int8_t *)(data + tile * tile_bytes);
        const int8x16_t codebook[2] = {vld1q_s8(tile_codebook),
                                       span == 2 ? vld1q_s8(tile_codebook + EQ_CODEBOOK_SIZE) : vdupq_n_s8(0)};
        for (size_t v = 0; v < in->n; v++) {
            const eq_packed_acts x = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            const uint8_t *block = data + tile * tile_bytes + EQ_CODEBOOK_SIZE * (size_t)span;
            float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = g + 1 < n_groups ? group : eq_packed_group_cols(type, cols, g);
                const uint8_t *indices = block + header_bytes;
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
                float32x4_t dot_f[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
                float sum_x = 0.0f;
                for (size_t c = 0, b = g * group / BLOCK; c < block_cols; c += BLOCK, b++) {
                    int32x4_t dot[4];
                    block_dot(indices + c * 8 / (size_t)span, codebook, span, x.xq + b * BLOCK, dot);
                    const float32x4_t scale = vdupq_n_f32(x.scale[b]);
EQ_UNROLL(4)
                    for (int i = 0; i < 4; i++)
                        dot_f[i] = vfmaq_f32(dot_f[i], vcvtq_f32_s32(dot[i]), scale);
                    sum_x += x.sum[b];
                }
EQ_UNROLL(4)
                for (int i = 0; i < 4; i++) {   /* rows 4i..4i+3 */
                    acc[i] = vfmaq_f32(acc[i], load_f16x4(block + 8 * i), dot_f[i]);
                    if (!type->symmetric)
                        acc[i] = vfmaq_f32(acc[i], load_f16x4(block + scale_bytes + 8 * i), vdupq_n_f32(sum_x));
                }
                block += eq_packed_block_bytes(type, block_cols);
            }
            float out[EQ_TILE_ROWS];
EQ_UNROLL(4)
            for (int i = 0; i < 4; i++)
                vst1q_f32(out + 4 * i, acc[i]);
            const size_t row0 = tile * EQ_TILE_ROWS;
            const size_t n_rows = rows - row0 < EQ_TILE_ROWS ? rows - row0 : EQ_TILE_ROWS;
            memcpy(y + v * y_stride + row0, out, n_rows * sizeof(float));
        }
    }
}

/* gemm_body specialized per type (kernels.h, EQ_CODEBOOK_DISPATCH), with the set's block dot */
#define MULL_BODY(group, span) gemm_body(type, data, rows, cols, in, y, y_stride, group, span, block_dot_mull)
#define SDOT_BODY(group, span) gemm_body(type, data, rows, cols, in, y, y_stride, group, span, block_dot_sdot)

/* the `neon` set's path (ARMv8.0) */
void eq_codebook_gemm_neon(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride)
{
    EQ_CODEBOOK_DISPATCH(type, MULL_BODY);
}

/* the `neon-dotprod` set's path: only called when the CPU has the dot-product extension */
EQ_TARGET_DOTPROD void eq_codebook_gemm_neon_dotprod(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                                                     size_t cols, const eq_input *in, float *y, size_t y_stride)
{
    EQ_CODEBOOK_DISPATCH(type, SDOT_BODY);
}

#undef MULL_BODY
#undef SDOT_BODY

#else   /* not aarch64: nothing here (the neon sets are never available) */

typedef int eq_neon_codebook_not_aarch64;   /* ISO C: a translation unit must declare something */

#endif
