/* check_packed_avx512.c — the AVX-512 VNNI multiply-add kernels of the uniform packed family
 * (x86/avx512_packed.c, the avx512 set's packed decode path) against the portable ones
 * (scalar/packed.c) they share a prepare with: float rounding is the only difference allowed.
 *
 *     check_packed_avx512          prints "skip: ..." (exit 0) on a CPU without AVX-512 VNNI, else
 *                                  one line per failing case and "ok N" / exit 1 on any failure
 * Every packed type, shapes with rows % 16 != 0 and cols % group != 0 (a last group of 32..G-32
 * columns), batches of 1 and 3 vectors with an outlier activation; the int32 sums are exact in both,
 * so the float results may differ only by rounding order (bound: 1e-5 of Σ|terms| per row).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"
#include "kernels.h"

static uint64_t state = 88172645463325252ull;

static double uniform(void)   /* xorshift64, in [0, 1) */
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}

static void fill_packed(const eq_qtype_traits *type, uint8_t *data, size_t rows, size_t cols)
{
    const size_t n_tiles = (rows + EQ_TILE_ROWS - 1) / EQ_TILE_ROWS, n_groups = (cols + type->group - 1) / type->group;
    uint8_t *block = data;
    for (size_t t = 0; t < n_tiles; t++)
        for (size_t g = 0; g < n_groups; g++) {
            const size_t width = eq_packed_group_cols(type, cols, g), bytes = eq_packed_block_bytes(type, width);
            for (size_t i = 0; i < eq_packed_header_bytes(type) / 2; i++) {
                uint16_t half = eq_fp32_to_fp16((float)((uniform() - 0.5) * (i < EQ_TILE_ROWS ? 0.1 : 1.0)));
                block[2 * i] = (uint8_t)(half & 0xff);
                block[2 * i + 1] = (uint8_t)(half >> 8);
            }
            for (size_t i = eq_packed_header_bytes(type); i < bytes; i++)   /* any byte is levels (edgeq.h) */
                block[i] = (uint8_t)(uniform() * 256.0);
            block += bytes;
        }
}

int main(void)
{
    if (!eq_packed_avx512_available()) {
        printf("skip: this CPU has no AVX-512 F/BW/VL/VNNI\n");
        return 0;
    }
    const size_t shapes[][2] = {{33, 69}, {16, 32}, {1, 200}, {45, 300}, {64, 576}, {17, 1536}};
    int failures = 0, cases = 0;
    for (int id = 0; id < eq_qtype_count(); id++) {
        const eq_qtype_traits *type = eq_qtype_get(id);
        if (type->family != EQ_QFAMILY_UNIFORM_PACKED)
            continue;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const size_t rows = shapes[s][0], cols = shapes[s][1], n = 3;
            uint8_t *data = malloc(eq_qtype_nbytes(id, rows, cols));
            const size_t stride = (eq_packed_prepared_bytes_scalar(cols) + 63) / 64 * 64;
            uint8_t *prepared = aligned_alloc(64, stride * n);
            float *x = malloc(n * cols * sizeof(float)), *want = malloc(n * rows * sizeof(float));
            float *got = malloc(n * rows * sizeof(float));
            fill_packed(type, data, rows, cols);
            for (size_t i = 0; i < n * cols; i++)
                x[i] = (float)(uniform() * 2.0 - 1.0);
            x[cols + cols / 2] = 40.0f;                                 /* an outlier activation */
            for (size_t v = 0; v < n; v++)
                eq_packed_prepare_avx512(x + v * cols, cols, prepared + v * stride);
            const eq_input in = {n, cols, x, prepared, stride};
            eq_packed_gemm_scalar(type, data, rows, cols, &in, want, rows);
            eq_packed_gemm_avx512(type, data, rows, cols, &in, got, rows);
            /* Σ_k (|w[r,k]| + 1) |x[k]| bounds the terms both sums add (|scale q| <= |w| + |min|, |min| <= 0.5) */
            float *w = malloc(rows * cols * sizeof(float));
            eq_dequantize_rows(id, data, eq_qtype_nbytes(id, rows, cols), rows, cols, 0, rows, w);
            for (size_t i = 0; i < n * rows; i++) {
                const size_t v = i / rows, r = i % rows;
                double magnitude = 0.0;
                for (size_t k = 0; k < cols; k++)
                    magnitude += (fabs((double)w[r * cols + k]) + 1.0) * fabs((double)x[v * cols + k]);
                if (!(fabs((double)got[i] - (double)want[i]) <= 1e-5 * magnitude)) {
                    printf("%s (%zu, %zu): y[%zu] avx512 %.9g, scalar %.9g\n", type->name, rows, cols, i, got[i], want[i]);
                    failures++;
                    break;
                }
            }
            free(w);
            cases++;
            free(data), free(prepared), free(x), free(want), free(got);
        }
    }
    printf(failures ? "FAILED %d of %d\n" : "ok %d\n", failures ? failures : cases, cases);
    return failures != 0;
}
