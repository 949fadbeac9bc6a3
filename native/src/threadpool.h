/* threadpool.h — internal: a persistent pool of worker threads for the forward pass.
 *
 * A job is a list of phases; phase p is n_chunks calls fn(ctx, chunk, thread), chunk in
 * [0, n_chunks). Every chunk of phase p finishes before any chunk of phase p + 1 starts (a
 * barrier), so one job can hold a whole token's forward pass: one hand-off to the workers per job,
 * not one per matrix product. Threads, the caller included (thread 0), claim chunks one at a time
 * from a shared counter, so a thread the OS has descheduled only holds up the chunk it is running,
 * never the chunks it has not claimed yet; a pool of one thread runs everything on the caller.
 * `thread` (in [0, eq_pool_size)) indexes per-thread scratch; which thread runs which chunk varies
 * from run to run, so a chunk's result must depend only on its index.
 *
 * Waiting (for a job, or at a barrier) spins briefly with a pause, then yields the core, then
 * sleeps (a futex on Linux, a condition variable elsewhere), so an oversubscribed machine is not
 * made worse by threads that wait. When waits at barriers or an uneven share of the chunks show that
 * one thread's core is taken by another process, the next jobs run on the caller alone, the workers
 * asleep; now and then the workers check beside it, without running chunks, whether they have a core
 * to themselves (CPU time against wall time, preemptions), to go back to threaded (see STALL_NS in
 * threadpool.c).
 * One caller at a time: the model serializes its use of the pool.
 */
#ifndef EDGEQ_THREADPOOL_H
#define EDGEQ_THREADPOOL_H

#include <stdint.h>

/* A spinning thread's hint to the core (pause / yield), for waits of a few hundred nanoseconds */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EQ_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define EQ_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define EQ_CPU_RELAX() ((void)0)
#endif

typedef struct eq_pool eq_pool;
typedef void (*eq_pool_fn)(void *ctx, int chunk, int thread);

typedef struct eq_pool_phase {
    eq_pool_fn fn;
    void *ctx;
    int n_chunks;          /* >= 0; a phase of 0 chunks is skipped */
} eq_pool_phase;

/* A pool of n_threads (>= 1; 1 means no extra threads). NULL if threads cannot be created. */
eq_pool *eq_pool_create(int n_threads);
void eq_pool_destroy(eq_pool *pool);
int eq_pool_size(const eq_pool *pool);

/* Run the phases in order (see above) and return when every chunk is done. The phases array and
 * what the contexts point to must stay valid until then. */
void eq_pool_run(eq_pool *pool, const eq_pool_phase *phases, int n_phases);

/* Jobs of more than one chunk run on a pool of several threads since it was created, and how many
 * of them ran on one thread because a core was contended (probes included). */
void eq_pool_counts(const eq_pool *pool, uint64_t *jobs, uint64_t *jobs_alone);

#endif /* EDGEQ_THREADPOOL_H */
