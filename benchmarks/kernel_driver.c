/* kernel_driver.c — one decode GEMV of one kernel set, timed or counted (benchmarks/bench_kernels.py),
 * or one path's GEMM over a batch of vectors, timed (the prefill_from measurement, benchmarks/README).
 *
 *   kernel_driver time  ISA TYPE ROWS COLS REPEAT   median ns of prepare and of gemm over REPEAT runs
 *   kernel_driver time  ISA TYPE ROWS COLS REPEAT PATH N   the same for N vectors through the set's
 *                                                   `decode` or `prefill` path (whatever N the set
 *                                                   would route there; prepare: all N vectors)
 *   kernel_driver count ISA TYPE ROWS COLS          user-mode instructions of one prepare, one gemm
 *   kernel_driver count ISA TYPE ROWS COLS 0 PATH N the same for N vectors through that path
 *                                                   (prepare: all N vectors)
 *
 * Built from the native sources by bench_kernels.py. Counting single-steps the work under ptrace
 * in a forked child (about 50 µs a step on the development VM): valgrind 3.19 has no AVX-512 and
 * the VM exposes no hardware counters, and single-stepping counts every ISA alike. The child marks
 * each measured region with raise(SIGSTOP) before and after; an empty region, counted the same way,
 * is subtracted. Weights are random bits with scales and mins 1.0; inputs are random.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edgeq.h"
#include "kernels.h"

static const eq_qtype_traits *type_named(const char *name)
{
    for (int id = 0; id < eq_qtype_count(); id++)
        if (strcmp(eq_qtype_get(id)->name, name) == 0)
            return eq_qtype_get(id);
    return NULL;
}

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* (bytes,) weights of a (rows, cols) matrix of `type`: random bits, fp16 scales and mins 1.0 */
static uint8_t *random_weights(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *bytes)
{
    if (eq_tensor_nbytes(type, rows, cols, bytes) != EQ_OK)
        return NULL;
    uint8_t *data = aligned_alloc(64, (*bytes + 63) / 64 * 64);
    uint64_t state = 0x9E3779B97F4A7C15u;
    if (data == NULL)
        return NULL;
    for (size_t i = 0; i < *bytes; i++)
        data[i] = (uint8_t)next_random(&state);
    if (type->family == EQ_QFAMILY_PLAIN) {
        for (size_t i = 0; i < rows * cols; i++) {
            if (type->bits == 32) {
                float value = 0.01f;
                memcpy(data + 4 * i, &value, 4);
            } else {
                data[2 * i] = 0x1f, data[2 * i + 1] = 0x21;   /* fp16 0.01 */
            }
        }
        return data;
    }
    size_t scale_bytes = 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    if (type->family == EQ_QFAMILY_UNIFORM_BITPLANE) {
        size_t block_bytes = eq_block_bytes(type);
        for (size_t block = 0; block < *bytes / block_bytes; block++)
            for (size_t i = 0; i < scale_bytes; i += 2)
                data[block * block_bytes + i] = 0x00, data[block * block_bytes + i + 1] = 0x3c;
        return data;
    }
    /* packed and codebook: tiles of (codebook levels in [-64, 63],) then one block per group */
    const size_t tile_bytes = eq_packed_tile_bytes(type, cols), n_groups = (cols + type->group - 1) / type->group;
    for (uint8_t *tile = data; tile < data + *bytes; tile += tile_bytes) {
        for (size_t i = 0; i < eq_tile_header_bytes(type); i++)
            tile[i] = (uint8_t)((tile[i] & 127u) - 64u);
        uint8_t *block = tile + eq_tile_header_bytes(type);
        for (size_t g = 0; g < n_groups; g++) {
            for (size_t i = 0; i < scale_bytes; i += 2)
                block[i] = 0x00, block[i + 1] = 0x3c;
            block += eq_packed_block_bytes(type, eq_packed_group_cols(type, cols, g));
        }
    }
    return data;
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Instructions the child runs between its next two SIGSTOPs (the child is stopped at a SIGSTOP). */
static long count_between_stops(pid_t child)
{
    long steps = 0;
    int status;
    for (;;) {
        if (ptrace(PTRACE_SINGLESTEP, child, NULL, NULL) != 0)
            return -1;
        if (waitpid(child, &status, 0) != child || !WIFSTOPPED(status))
            return -1;
        if (WSTOPSIG(status) != SIGTRAP)
            return steps;   /* the closing SIGSTOP */
        steps++;
    }
}

int main(int argc, char **argv)
{
    if (argc < 6 || (strcmp(argv[1], "time") != 0 && strcmp(argv[1], "count") != 0)) {
        fprintf(stderr, "usage: %s time|count ISA TYPE ROWS COLS [REPEAT]\n", argv[0]);
        return 2;
    }
    const int counting = strcmp(argv[1], "count") == 0;
    const eq_kernels *kernels = eq_kernels_named(argv[2]);
    const eq_qtype_traits *type = type_named(argv[3]);
    const size_t rows = strtoul(argv[4], NULL, 10), cols = strtoul(argv[5], NULL, 10);
    const int repeat = argc > 6 ? atoi(argv[6]) : 50;
    const char *path_name = argc > 8 ? argv[7] : "decode";
    const size_t n = argc > 8 ? strtoul(argv[8], NULL, 10) : 1;
    if (kernels == NULL || type == NULL || rows == 0 || cols == 0 || n == 0) {
        fprintf(stderr, "no runnable set %s, no type %s, an empty shape or batch\n", argv[2], argv[3]);
        return 2;
    }
    const eq_family_kernels *family = &kernels->family[type->family];
    const eq_path_kernels *path = strcmp(path_name, "prefill") == 0 ? &family->prefill : &family->decode;
    if (path->gemm == NULL) {
        fprintf(stderr, "set %s has no %s path for %s\n", argv[2], path_name, argv[3]);
        return 2;
    }
    size_t bytes;
    uint8_t *weights = random_weights(type, rows, cols, &bytes);
    float *x = malloc(n * cols * sizeof(float)), *y = malloc(n * rows * sizeof(float));
    size_t prepared_bytes = path->prepared_bytes != NULL ? path->prepared_bytes(cols) : 0;
    size_t stride = (prepared_bytes / EQ_PREPARED_ALIGN + 1) * EQ_PREPARED_ALIGN;
    uint8_t *prepared = aligned_alloc(EQ_PREPARED_ALIGN, n * stride);
    if (weights == NULL || x == NULL || y == NULL || prepared == NULL)
        return 1;
    uint64_t state = 12345;
    for (size_t k = 0; k < n * cols; k++)
        x[k] = (float)((int64_t)(next_random(&state) % 2001) - 1000) / 1000.0f;
    eq_input in = {n, cols, x, path->prepare != NULL ? prepared : NULL, stride};

    if (!counting) {
        double *prepare_ns = malloc((size_t)repeat * sizeof(double)), *gemm_ns = malloc((size_t)repeat * sizeof(double));
        for (int run = -3; run < repeat; run++) {   /* 3 warm-up runs */
            double t0 = now_ns();
            for (size_t v = 0; v < n && path->prepare != NULL; v++)
                path->prepare(x + v * cols, cols, prepared + v * stride);
            double t1 = now_ns();
            path->gemm(type, weights, rows, cols, &in, y, rows);
            double t2 = now_ns();
            if (run >= 0)
                prepare_ns[run] = t1 - t0, gemm_ns[run] = t2 - t1;
        }
        qsort(prepare_ns, (size_t)repeat, sizeof(double), compare_doubles);
        qsort(gemm_ns, (size_t)repeat, sizeof(double), compare_doubles);
        printf("{\"prepare_ns\": %.0f, \"gemm_ns\": %.0f, \"weight_bytes\": %zu, \"check\": %g}\n",
               prepare_ns[repeat / 2], gemm_ns[repeat / 2], bytes, (double)y[rows / 2]);
        return 0;
    }

    pid_t child = fork();
    if (child == 0) {
        ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        for (size_t v = 0; v < n && path->prepare != NULL; v++)   /* warm: lazy binding, first-touch faults */
            path->prepare(x + v * cols, cols, prepared + v * stride);
        path->gemm(type, weights, rows, cols, &in, y, rows);
        raise(SIGSTOP);
        raise(SIGSTOP);   /* the empty region */
        raise(SIGSTOP);
        for (size_t v = 0; v < n && path->prepare != NULL; v++)
            path->prepare(x + v * cols, cols, prepared + v * stride);
        raise(SIGSTOP);
        path->gemm(type, weights, rows, cols, &in, y, rows);
        raise(SIGSTOP);
        _exit(0);
    }
    int status;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFSTOPPED(status))
        return 1;
    long empty = count_between_stops(child);
    if (ptrace(PTRACE_CONT, child, NULL, NULL) != 0 || waitpid(child, &status, 0) != child)
        return 1;
    long prepare = count_between_stops(child);
    long gemm = count_between_stops(child);
    ptrace(PTRACE_CONT, child, NULL, NULL);
    waitpid(child, &status, 0);
    if (empty < 0 || prepare < 0 || gemm < 0)
        return 1;
    printf("{\"prepare_instructions\": %ld, \"gemm_instructions\": %ld, \"weight_bytes\": %zu}\n",
           prepare - empty, gemm - empty, bytes);
    return 0;
}
