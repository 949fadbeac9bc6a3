/* arm/neon_packed.c — int8 multiply-add decode kernels for the uniform packed family (p*g*) on
 * aarch64, two ways: `sdot` for CPUs with the dot-product extension (set `neon-dotprod`, defined
 * at the end of this file: Cortex-A55/A76 and later, Pi 5, Apple silicon, Graviton 2+), and
 * smull/smlal + sadalp for plain ARMv8.0 (the `neon` set's path, arm/neon.c: Cortex-A53/A72, Pi 4).
 *
 * Same algorithm as scalar/packed.c, and the same float steps in the same order as
 * x86/avx2_packed.c and x86/avx512_packed.c, so both paths give the bits of those two sets (not of
 * scalar's, which multiplies and adds without fusing): prepare quantizes each input vector once to
 * int8 per block of 32 activations (s_b = max |x| / 127, xq = round(x / s_b), ties to even) and keeps
 * Σ xq and Σx̂ = s_b Σ xq per block; per 16-row tile and block the int32 dot products
 * dot[r] = Σ_k q[r,k] xq[k] are exact (both paths), then per block dot_f[r] = fma(dot[r], s_b, dot_f[r])
 * and per group acc[r] = fma(min[r], Σx̂, fma(scale[r], dot_f[r], acc[r])), or for symmetric types
 * fma(scale[r], dot_f[r] - zero_point Σx̂, acc[r]).
 *
 * A 64-byte quad of levels (edgeq.h; at 2, 3, 5, 6 bits put together from the planes of bit fields
 * by a shift and a mask each) is four 16-byte vectors, rows 4v..4v+3 x the quad's 4 columns:
 *   - sdot (vdotq_laneq_s32) adds each 32-bit lane's 4 bytes times 4 activations into that row's
 *     int32 lane: one instruction per 4 rows x 4 columns, exact at any width (4 x 128 x 127 per step);
 *   - ARMv8.0, 4 rows at a time: smull/smlal (8 x s8 -> s16: rows 2 at a time, the quad's 4
 *     activations repeated)
 *     add up to 4 quads in int16 (2, 3, 5, 6 bits: levels <= 63, 4 x 63 x 127 = 32004; 4 bits: a block's 8
 *     nibble products, 8 x 15 x 127 = 15240; 8 bits: 2 quads, 2 x 128 x 127 = 32512), sadalp widens
 *     pairs into int32, and one addp per 4 rows folds the column pairs.
 * Levels are unsigned; both multiply signed bytes, so 8-bit levels are flipped to q - 128 (eor 0x80)
 * and Σ q x = Σ (q - 128) x + 128 Σ xq (as avx2 does); 2-6-bit levels are < 128 and used as they are.
 * The dot-product instructions exist only inside functions compiled with
 * target("arch=armv8.2-a+dotprod") (EQ_TARGET_DOTPROD), reached only through the `neon-dotprod`
 * set, which the CPU must report (getauxval(AT_HWCAP) & HWCAP_ASIMDDP). Static instruction counts
 * of both block loops, and what they predict for a Pi 5: benchmarks/README "Raspberry Pi 5".
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "kernels.h"
#include "packed_acts.h"

enum { BLOCK = EQ_PACKED_BLOCK_COLS };

/* ---- prepare: int8 activations per block of 32 (both paths) ------------------------------------ */

/* The prepared layout (int8 xq, then per block of 32: float scale, int32 Σ xq, float Σx̂) is
 * packed_acts.h's: this prepare writes the bytes eq_packed_prepare_scalar writes. */
size_t eq_packed_prepared_bytes_neon(size_t cols)
{
    return eq_packed_acts_bytes(cols);
}

void eq_packed_prepare_neon(const float *x, size_t cols, uint8_t *out)
{
    const size_t padded = eq_packed_acts_padded(cols), blocks = padded / BLOCK;
    const eq_packed_acts a = eq_packed_acts_at(out, cols);
    int8_t *xq = a.xq;
    for (size_t b = 0; b < blocks; b++) {
        float values[BLOCK] = {0};
        for (size_t i = 0; i < BLOCK && b * BLOCK + i < cols; i++)
            values[i] = x[b * BLOCK + i];
        float32x4_t v[BLOCK / 4], largest4 = vdupq_n_f32(0.0f);
        for (int i = 0; i < BLOCK / 4; i++) {
            v[i] = vld1q_f32(values + 4 * i);
            largest4 = vmaxq_f32(largest4, vabsq_f32(v[i]));
        }
        const float largest = vmaxvq_f32(largest4);
        const float32x4_t inv = vdupq_n_f32(largest > 0.0f ? 127.0f / largest : 0.0f);
        int32x4_t xq_sum4 = vdupq_n_s32(0);
        for (int i = 0; i < BLOCK / 8; i++) {   /* round to nearest, ties to even (lrintf's default) */
            const int32x4_t first = vcvtnq_s32_f32(vmulq_f32(v[2 * i], inv));
            const int32x4_t second = vcvtnq_s32_f32(vmulq_f32(v[2 * i + 1], inv));
            xq_sum4 = vaddq_s32(xq_sum4, vaddq_s32(first, second));
            vst1_s8(xq + b * BLOCK + 8 * (size_t)i, vqmovn_s16(vcombine_s16(vqmovn_s32(first), vqmovn_s32(second))));
        }
        a.scale[b] = largest / 127.0f;
        a.xq_sum[b] = vaddvq_s32(xq_sum4);
        a.sum[b] = a.scale[b] * (float)a.xq_sum[b];
    }
}

/* ---- one block's integer dot products, two ways ----------------------------------------------- */

/* dot[v] (rows 4v..4v+3, int32) = Σ over one block's 32 columns of q[r,k] xq[k];
 * levels: the block's first quad, xq: its 32 activations. */
typedef void (*block_dot_fn)(const uint8_t *levels, int bits, const int8_t *xq, int32x4_t dot[4]);

/* The quad's 4 activations in every 32-bit lane (8 bytes: a half of that) */
static inline int8x16_t repeat4(const int8_t *xq)
{
    int32_t four;
    memcpy(&four, xq, sizeof four);
    return vreinterpretq_s8_s32(vdupq_n_s32(four));
}

/* the four 16-byte vectors of one quad as signed bytes (the 4-bit path: nibbles are < 128) */
static inline __attribute__((always_inline)) void
load_quad(const uint8_t *quad, int8x16_t rows[4])
{
EQ_UNROLL(4)
    for (int v = 0; v < 4; v++)
        rows[v] = vreinterpretq_s8_u8(vld1q_u8(quad + 16 * v));
}

/* Rows 4v..4v+3 of quad j (columns 4j..4j+3) from the plane of width-bit fields at `plane`, the
 * field moved to bit `at` of the level (vshl: left for a positive count, right for a negative one)
 * and masked */
static inline __attribute__((always_inline)) uint8x16_t
plane_rows(const uint8_t *plane, const int width, const int at, const int j, const int v)
{
    const int quads = 8 / width;                                       /* quads per 64-byte chunk */
    const uint8x16_t chunk = vld1q_u8(plane + 64 * (j / quads) + 16 * v);
    const uint8x16_t moved = vshlq_u8(chunk, vdupq_n_s8((int8_t)(at - width * (j % quads))));
    return vandq_u8(moved, vdupq_n_u8((uint8_t)(((1 << width) - 1) << at)));
}

/* Rows 4v..4v+3 of quad j of a 32-column run of levels (kernels.h, eq_packed_level), one byte per
 * level: at 8 bits the quad's bytes flipped to q - 128; at 2, 3, 5, 6 bits put
 * together from the planes of fields (straight-line: bits and j are constants after inlining). */
static inline __attribute__((always_inline)) int8x16_t
quad_rows(const uint8_t *run, const int bits, const int j, const int v)
{
    if (bits > 6) {
        const uint8x16_t bytes = vld1q_u8(run + 64 * j + 16 * v);
        return vreinterpretq_s8_u8(veorq_u8(bytes, vdupq_n_u8(0x80)));
    }
    const int nibbles = eq_packed_has_plane(bits, 4), pairs = eq_packed_has_plane(bits, 2);
    uint8x16_t rows = vdupq_n_u8(0);
    if (nibbles)
        rows = plane_rows(run, 4, 0, j, v);
    if (pairs)
        rows = vorrq_u8(rows, plane_rows(run + 256 * nibbles, 2, 4 * nibbles, j, v));
    if (eq_packed_has_plane(bits, 1))
        rows = vorrq_u8(rows, plane_rows(run + 64 * (bits - 1), 1, bits - 1, j, v));
    return vreinterpretq_s8_u8(rows);
}

/* sums[h] (int16 x 8: rows 4v+2h, 4v+2h+1 x 4 columns) += rows (16 bytes: 4 rows x 4 columns) x x4 */
static inline __attribute__((always_inline)) void
rows_mlal(int8x16_t rows, int8x16_t x4, int16x8_t sums[2])
{
    sums[0] = vmlal_s8(sums[0], vget_low_s8(rows), vget_low_s8(x4));
    sums[1] = vmlal_high_s8(sums[1], rows, x4);
}

/* ARMv8.0: 4 rows at a time (few live registers: no spills), each quad's 16 bytes by smull/smlal
 * into int16, sadalp into int32 every `per_flush` quads, one addp folding the column pairs. */
static inline __attribute__((always_inline)) void
block_dot_mull(const uint8_t *levels, const int bits, const int8_t *xq, int32x4_t dot[4])
{
    int8x16_t x4[BLOCK / 4];   /* the 4 activations of columns 4j..4j+3 in every 32-bit lane */
EQ_UNROLL(8)
    for (int j = 0; j < BLOCK / 4; j++)
        x4[j] = repeat4(xq + 4 * j);
EQ_UNROLL(4)
    for (int v = 0; v < 4; v++) {   /* rows 4v..4v+3: bytes 16v..16v+15 of every quad */
        int32x4_t pairs[2];   /* [h]: lanes (row 4v+2h, columns 0-1), (.., 2-3), (row 4v+2h+1, 0-1), (.., 2-3) */
        if (bits == 4) {      /* 4 quads of 8 columns: low nibbles columns 8j..8j+3, high 8j+4..8j+7 */
            int16x8_t sums[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};
EQ_UNROLL(4)
            for (int j = 0; j < BLOCK / 8; j++) {
                const uint8x16_t packed = vld1q_u8(levels + 64 * j + 16 * v);
                rows_mlal(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), x4[2 * j], sums);
                rows_mlal(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), x4[2 * j + 1], sums);
            }
            pairs[0] = vpaddlq_s16(sums[0]);
            pairs[1] = vpaddlq_s16(sums[1]);
        } else {              /* 8 quads of 4 columns, a byte each (8 bits) or from the fields */
            const int per_flush = bits <= 6 ? 4 : 2;   /* quads an int16 sum holds (opening comment) */
            pairs[0] = pairs[1] = vdupq_n_s32(0);
EQ_UNROLL(4)
            for (int j0 = 0; j0 < BLOCK / 4; j0 += per_flush) {
                int16x8_t sums[2] = {vdupq_n_s16(0), vdupq_n_s16(0)};
EQ_UNROLL(4)
                for (int j = j0; j < j0 + per_flush; j++)
                    rows_mlal(quad_rows(levels, bits, j, v), x4[j], sums);
                pairs[0] = vpadalq_s16(pairs[0], sums[0]);
                pairs[1] = vpadalq_s16(pairs[1], sums[1]);
            }
        }
        dot[v] = vpaddq_s32(pairs[0], pairs[1]);
    }
}

/* gcc's arm_neon.h defines the sdot intrinsics under target("arch=armv8.2-a+dotprod"), and a function
 * inlines them only with at least those features; every CPU with the extension is ARMv8.2 or later. */
#define EQ_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

/* dot[v] += rows x the 4 activations in lane `lane` of x (lane: a constant after inlining) */
static inline __attribute__((always_inline)) EQ_TARGET_DOTPROD void
quad_sdot(const int8x16_t rows[4], int8x16_t x, const int lane, int32x4_t dot[4])
{
    EQ_UNROLL(4)
    for (int v = 0; v < 4; v++) {
        switch (lane) {   /* the lane is an immediate of sdot */
        case 0: dot[v] = vdotq_laneq_s32(dot[v], rows[v], x, 0); break;
        case 1: dot[v] = vdotq_laneq_s32(dot[v], rows[v], x, 1); break;
        case 2: dot[v] = vdotq_laneq_s32(dot[v], rows[v], x, 2); break;
        default: dot[v] = vdotq_laneq_s32(dot[v], rows[v], x, 3); break;
        }
    }
}

/* Dot-product extension: one sdot per 4 rows x 4 columns, the block's 32 activations in 2 registers. */
static inline __attribute__((always_inline)) EQ_TARGET_DOTPROD void
block_dot_sdot(const uint8_t *levels, const int bits, const int8_t *xq, int32x4_t dot[4])
{
    const int8x16_t x[2] = {vld1q_s8(xq), vld1q_s8(xq + 16)};
    EQ_UNROLL(4)
    for (int v = 0; v < 4; v++)
        dot[v] = vdupq_n_s32(0);
    if (bits == 4) {         /* quad j: columns 8j..8j+3 are lane 2j % 4 of x[j / 2], 8j+4.. the next */
EQ_UNROLL(4)
        for (int j = 0; j < BLOCK / 8; j++) {
            int8x16_t packed[4], nibbles[4];
            load_quad(levels + 64 * j, packed);
            EQ_UNROLL(4)
            for (int v = 0; v < 4; v++)
                nibbles[v] = vandq_s8(packed[v], vdupq_n_s8(0x0f));
            quad_sdot(nibbles, x[j / 2], (2 * j) % 4, dot);
            EQ_UNROLL(4)
            for (int v = 0; v < 4; v++)
                nibbles[v] = vreinterpretq_s8_u8(vshrq_n_u8(vreinterpretq_u8_s8(packed[v]), 4));
            quad_sdot(nibbles, x[j / 2], (2 * j + 1) % 4, dot);
        }
    } else {                 /* quad j: columns 4j..4j+3, lane j % 4 of x[j / 4] */
#pragma GCC unroll 8   /* whole: the lane of sdot is an immediate */
        for (int j = 0; j < BLOCK / 4; j++) {
            int8x16_t rows[4];
            EQ_UNROLL(4)
            for (int v = 0; v < 4; v++)
                rows[v] = quad_rows(levels, bits, j, v);
            quad_sdot(rows, x[j / 4], j % 4, dot);
        }
    }
}

/* ---- gemm: the float steps, shared ----------------------------------------------------------- */

/* 4 fp16 values (little-endian, maybe unaligned) as fp32 */
static inline float32x4_t load_f16x4(const uint8_t *p)
{
    uint16_t bits[4];
    memcpy(bits, p, sizeof bits);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits)));
}

/* The kernel body, inlined per (bits, group, block_dot) so that the block loops unroll and the
 * block_dot call (a constant after inlining) is inlined too; block_dot is one of the two above. */
static inline __attribute__((always_inline)) void
gemm_body(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols, const eq_input *in,
          float *y, size_t y_stride, const int bits, const size_t group, block_dot_fn block_dot)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS;
    const size_t n_groups = (cols + group - 1) / group;
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols);
    const size_t header_bytes = eq_packed_header_bytes(type);
    const size_t scale_bytes = 2u * EQ_TILE_ROWS;
    const float zero_point = eq_zero_point(type);

    for (size_t tile = 0; tile < n_tiles; tile++) {
        for (size_t v = 0; v < in->n; v++) {
            const eq_packed_acts x = eq_packed_acts_at(in->prepared + v * in->stride, cols);
            const uint8_t *block = data + tile * tile_bytes;
            float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
            for (size_t g = 0; g < n_groups; g++) {
                const size_t block_cols = g + 1 < n_groups ? group : eq_packed_group_cols(type, cols, g);
                const uint8_t *levels = block + header_bytes;
                if (v == 0)   /* the first vector streams the tile from memory, the others find it in cache */
                    eq_prefetch_ahead(block, eq_packed_block_bytes(type, block_cols));
                float32x4_t dot_f[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
                float sum_x = 0.0f;
                for (size_t c = 0, b = g * group / BLOCK; c < block_cols; c += BLOCK, b++) {
                    int32x4_t dot[4];
                    block_dot(levels + c / BLOCK * eq_packed_run_bytes(bits), bits, x.xq + b * BLOCK, dot);
                    const float32x4_t scale = vdupq_n_f32(x.scale[b]);
                    EQ_UNROLL(4)
                    for (int i = 0; i < 4; i++) {
                        if (bits > 6)                                  /* Σ q x = Σ (q - 128) x + 128 Σ x */
                            dot[i] = vaddq_s32(dot[i], vdupq_n_s32(128 * x.xq_sum[b]));
                        dot_f[i] = vfmaq_f32(dot_f[i], vcvtq_f32_s32(dot[i]), scale);
                    }
                    sum_x += x.sum[b];
                }
                EQ_UNROLL(4)
                for (int i = 0; i < 4; i++) {   /* rows 4i..4i+3 */
                    const float32x4_t scale = load_f16x4(block + 8 * i);
                    if (type->symmetric) {
                        const float32x4_t offset = vdupq_n_f32(zero_point * sum_x);
                        acc[i] = vfmaq_f32(acc[i], scale, vsubq_f32(dot_f[i], offset));
                    } else {
                        const float32x4_t min = load_f16x4(block + scale_bytes + 8 * i);
                        acc[i] = vfmaq_f32(vfmaq_f32(acc[i], scale, dot_f[i]), min, vdupq_n_f32(sum_x));
                    }
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

#define BODY_CASE(b, g, dot) \
    case (b) * 1000 + (g): gemm_body(type, data, rows, cols, in, y, y_stride, (b), (g), dot); return;
#define BODY_CASES(b, dot) BODY_CASE(b, 32, dot) BODY_CASE(b, 64, dot) BODY_CASE(b, 128, dot)

/* the `neon` set's path (ARMv8.0) */
void eq_packed_gemm_neon(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                         const eq_input *in, float *y, size_t y_stride)
{
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2, block_dot_mull) BODY_CASES(3, block_dot_mull)
    BODY_CASES(4, block_dot_mull) BODY_CASES(5, block_dot_mull)
    BODY_CASES(6, block_dot_mull) BODY_CASES(8, block_dot_mull)
#endif
    default:   /* a type added to the table without a case here: correct, not unrolled */
        gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group, block_dot_mull);
    }
}

/* the `neon-dotprod` set's path: only called when the CPU has the dot-product extension */
static EQ_TARGET_DOTPROD void gemm_dotprod(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                                           size_t cols, const eq_input *in, float *y, size_t y_stride)
{
    switch (type->bits * 1000 + type->group) {
#ifndef EQ_KERNELS_GENERIC   /* kernels.h: sanitizer builds compile the generic body only */
    BODY_CASES(2, block_dot_sdot) BODY_CASES(3, block_dot_sdot)
    BODY_CASES(4, block_dot_sdot) BODY_CASES(5, block_dot_sdot)
    BODY_CASES(6, block_dot_sdot) BODY_CASES(8, block_dot_sdot)
#endif
    default:
        gemm_body(type, data, rows, cols, in, y, y_stride, type->bits, (size_t)type->group, block_dot_sdot);
    }
}

#undef BODY_CASES
#undef BODY_CASE

/* ---- the set `neon-dotprod` ------------------------------------------------------------------ */

/* NEON with the dot-product extension (ARMv8.2 optional, ARMv8.4 mandatory): Linux says so in
 * AT_HWCAP; elsewhere only a build whose baseline already has it (Apple silicon) runs the set. */
static int neon_dotprod_available(void)
{
#if defined(__linux__)
    const unsigned long hwcap = getauxval(AT_HWCAP);
    return (hwcap & HWCAP_ASIMD) != 0 && (hwcap & HWCAP_ASIMDDP) != 0;
#elif defined(__ARM_FEATURE_DOTPROD)
    return 1;
#else
    return 0;
#endif
}

/* Only the packed and codebook families: every other family, and the attention helpers, come from `neon`, the next
 * set in the list (src/kernel_sets.c). */
const eq_kernel_set eq_kernels_neon_dotprod = {
    .isa = "neon-dotprod",
    .is_available = neon_dotprod_available,
    .family = {
        [EQ_QFAMILY_UNIFORM_PACKED] = {
            .decode = {"multiply-add", "int8 multiply-add: activations int8 per 32, sdot on 4-row x 4-column quads",
                       eq_packed_prepared_bytes_neon, eq_packed_prepare_neon, gemm_dotprod},
        },
        [EQ_QFAMILY_CODEBOOK] = {   /* kernels in arm/neon_codebook.c */
            .decode = {"multiply-add", "int8 multiply-add: index -> level by tbl, activations int8 per 32, sdot on 4-row x 4-column quads",
                       eq_packed_prepared_bytes_neon, eq_packed_prepare_neon, eq_codebook_gemm_neon_dotprod},
        },
    },
};

#else   /* not aarch64: the set exists but is never available */

#include "kernels.h"

static int neon_dotprod_available(void)
{
    return 0;
}

const eq_kernel_set eq_kernels_neon_dotprod = {.isa = "neon-dotprod", .is_available = neon_dotprod_available};

#endif
