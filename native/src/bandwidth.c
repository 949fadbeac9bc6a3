/* bandwidth.c — a memory read-bandwidth probe: the numerator of the decode roofline.
 *
 * Decoding one token reads every weight once, so (bytes read per second) / (weight bytes per token)
 * bounds decode tokens/s. This file measures the first figure the way the forward pass reads
 * weights: the threads of the runtime's pool sum contiguous slices (one per thread, claimed as the
 * forward pass claims chunks) of a buffer much larger than the caches. Portable C (no intrinsics); the summing loop is simple enough for -O2 to vectorize.
 * Not here: write or copy bandwidth, latency, NUMA placement beyond first touch.
 */
#define _POSIX_C_SOURCE 200809L   /* clock_gettime */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "edgeq.h"
#include "threadpool.h"

enum {
    BANDWIDTH_DEFAULT_MB = 256,   /* >= 4x the L3 of the machines we target */
    BANDWIDTH_DEFAULT_REPEATS = 5,
    BANDWIDTH_ALIGN = 64,         /* slices start on cache lines */
    BANDWIDTH_LANES = 8           /* uint64 words per step: one cache line */
};

typedef struct bandwidth_job {
    uint64_t *words;       /* (n_words,) the buffer */
    size_t n_words;        /* a multiple of n_threads * BANDWIDTH_LANES */
    int n_slices;          /* n_threads */
    uint64_t *sums;        /* (n_slices,) one result per slice, read after the run: keeps the loads */
} bandwidth_job;

/* The slice [begin, end) of chunk `index`; whole cache lines each. */
static void slice(const bandwidth_job *job, int index, size_t *begin, size_t *end)
{
    size_t per_slice = job->n_words / (size_t)job->n_slices;
    *begin = per_slice * (size_t)index;
    *end = *begin + per_slice;
}

/* First touch from a thread of the pool (usually the one that will read the slice). */
static void fill_worker(void *ctx, int index, int thread)
{
    (void)thread;
    const bandwidth_job *job = ctx;
    size_t begin, end;
    slice(job, index, &begin, &end);
    for (size_t i = begin; i < end; i++)
        job->words[i] = (uint64_t)i * 0x9E3779B97F4A7C15u;
}

/* Eight accumulators, one cache line per step: -O2's SLP vectorizer turns them into vector adds
 * (four 16-byte adds on baseline x86-64); an array of lanes would stay in memory instead. */
static void sum_worker(void *ctx, int index, int thread)
{
    (void)thread;
    const bandwidth_job *job = ctx;
    size_t begin, end;
    slice(job, index, &begin, &end);
    const uint64_t *words = job->words;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (size_t i = begin; i < end; i += BANDWIDTH_LANES) {   /* end - begin: a multiple of LANES */
        s0 += words[i];
        s1 += words[i + 1];
        s2 += words[i + 2];
        s3 += words[i + 3];
        s4 += words[i + 4];
        s5 += words[i + 5];
        s6 += words[i + 6];
        s7 += words[i + 7];
    }
    job->sums[index] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;   /* read by the caller: loads stay */
}

static double seconds_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

double eq_memory_read_bandwidth(size_t bytes, int32_t n_threads, int32_t repeats)
{
    if (n_threads < 0 || repeats < 0)
        return EQ_ERR_INVALID_ARGUMENT;
    if (bytes == 0)
        bytes = (size_t)BANDWIDTH_DEFAULT_MB << 20;
    if (n_threads == 0)
        n_threads = eq_physical_cores();
    if (repeats == 0)
        repeats = BANDWIDTH_DEFAULT_REPEATS;
    size_t unit = (size_t)n_threads * BANDWIDTH_LANES * sizeof(uint64_t);   /* one cache line per thread */
    bytes -= bytes % unit;
    if (bytes == 0)
        return EQ_ERR_INVALID_ARGUMENT;

    uint64_t *words = aligned_alloc(BANDWIDTH_ALIGN, bytes);   /* bytes is a multiple of 64 */
    uint64_t *sums = calloc((size_t)n_threads, sizeof *sums);
    eq_pool *pool = words && sums ? eq_pool_create(n_threads) : NULL;
    if (!pool) {
        free(words);
        free(sums);
        return EQ_ERR_NO_MEMORY;
    }
    bandwidth_job job = {words, bytes / sizeof(uint64_t), n_threads, sums};
    eq_pool_phase fill = {fill_worker, &job, n_threads}, sum = {sum_worker, &job, n_threads};
    eq_pool_run(pool, &fill, 1);
    eq_pool_run(pool, &sum, 1);                   /* warm-up: threads awake, pages mapped */
    double best = 0.0;
    volatile uint64_t sink = 0;
    for (int32_t r = 0; r < repeats; r++) {
        double start = seconds_now();
        eq_pool_run(pool, &sum, 1);
        double elapsed = seconds_now() - start;
        for (int32_t t = 0; t < n_threads; t++)
            sink += sums[t];
        double rate = (double)bytes / (elapsed > 1e-9 ? elapsed : 1e-9) / 1e9;
        if (rate > best)
            best = rate;
    }
    (void)sink;
    eq_pool_destroy(pool);
    free(sums);
    free(words);
    return best;
}
