/* threadpool.c — persistent worker threads: spin on a job counter for a short while, then sleep
 * on a condition variable. See threadpool.h for the contract.
 */
#define _POSIX_C_SOURCE 200809L
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EQ_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define EQ_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define EQ_CPU_RELAX() ((void)0)
#endif

enum {
    SPIN_ROUNDS = 1 << 13,   /* then sleep: a few milliseconds of spinning and yielding at most */
    PAUSE_ROUNDS = 1 << 10   /* after these, each round also yields: an oversubscribed machine
                                (another busy process) must not starve the thread we wait for */
};

static void relax(int round)
{
    if (round < PAUSE_ROUNDS)
        EQ_CPU_RELAX();
    else
        sched_yield();
}

struct eq_pool {
    int n_threads;
    pthread_t *threads;          /* n_threads - 1 workers */
    pthread_mutex_t mutex;
    pthread_cond_t wake;         /* a new job (or shutdown) */
    pthread_cond_t done;         /* the last worker finished */
    atomic_uint generation;      /* bumped for every job */
    atomic_int pending;          /* workers still running the current job */
    atomic_int sleepers;         /* workers waiting on `wake` */
    atomic_bool shutdown;
    eq_pool_fn fn;               /* the current job, published before generation is bumped */
    void *ctx;
};

typedef struct worker_arg {
    eq_pool *pool;
    int index;
} worker_arg;

static void *worker_main(void *raw)
{
    worker_arg arg = *(worker_arg *)raw;
    free(raw);
    eq_pool *pool = arg.pool;
    unsigned seen = 0;   /* the generation at creation: a job posted before this thread runs is not missed */
    for (;;) {
        unsigned now = seen;
        for (int spin = 0; spin < SPIN_ROUNDS; spin++) {
            now = atomic_load_explicit(&pool->generation, memory_order_acquire);
            if (now != seen || atomic_load(&pool->shutdown))
                break;
            relax(spin);
        }
        if (now == seen && !atomic_load(&pool->shutdown)) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->sleepers, 1);
            while ((now = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->shutdown))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->shutdown))
            return NULL;
        seen = now;
        pool->fn(pool->ctx, arg.index, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
}

eq_pool *eq_pool_create(int n_threads)
{
    if (n_threads < 1)
        n_threads = 1;
    eq_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    if (!pool->threads) {
        eq_pool_destroy(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg) {
            arg->pool = pool;
            arg->index = i;
        }
        if (!arg || pthread_create(&pool->threads[i - 1], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i;   /* only the workers created so far are joined */
            eq_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
}

void eq_pool_destroy(eq_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->shutdown, true);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    if (pool->threads)
        for (int i = 1; i < pool->n_threads; i++)
            pthread_join(pool->threads[i - 1], NULL);
    free(pool->threads);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool);
}

int eq_pool_size(const eq_pool *pool)
{
    return pool ? pool->n_threads : 1;
}

void eq_pool_run(eq_pool *pool, eq_pool_fn fn, void *ctx)
{
    if (pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store(&pool->pending, pool->n_threads - 1);
    atomic_fetch_add(&pool->generation, 1);   /* seq_cst: ordered before the sleepers check */
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    fn(ctx, 0, pool->n_threads);
    for (int spin = 0; spin < SPIN_ROUNDS && atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; spin++)
        relax(spin);
    if (atomic_load(&pool->pending) > 0) {
        pthread_mutex_lock(&pool->mutex);
        while (atomic_load(&pool->pending) > 0)
            pthread_cond_wait(&pool->done, &pool->mutex);
        pthread_mutex_unlock(&pool->mutex);
    }
}
