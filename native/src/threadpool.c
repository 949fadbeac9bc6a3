/* threadpool.c — persistent worker threads that claim chunks of a phased job from one atomic
 * counter; waiting spins, then yields, then sleeps; under a busy core, jobs run on one thread that
 * has a core to itself. See threadpool.h for the contract.
 *
 * Publishing a job: the caller fills the job slot of generation g (two slots, alternating, so a
 * worker still looking at job g - 1 never reads a slot being rewritten for g), resets `done`, sets
 * `claim` to (g << 32 | 0), then bumps `generation` (the futex workers sleep on).
 * Claiming: compare-and-swap `claim` from (g, i) to (g, i + 1); a worker that finds another
 * generation there has missed its job (it is finished) and goes back to waiting. A successful claim
 * means job g is unfinished (chunk i is not done), so its slot and phases are still valid.
 * Barriers: chunk i of phase p starts once `done` (chunks finished in this job) reaches the number
 * of chunks before phase p; the job is over when `done` reaches the total.
 */
#define _GNU_SOURCE   /* syscall(), for the futex; RUSAGE_THREAD */
#include "threadpool.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* How long a waiting thread keeps the core before it sleeps. A chunk takes a few microseconds, and
 * the gap between two jobs (between tokens: sampling in Python) tens of microseconds; a thread that
 * waits longer than that is waiting for a descheduled thread or for the next request, and then it
 * must leave the core: to the thread it waits for, to the other process, or to the scheduler, which
 * moves a runnable thread onto a core that goes idle. */
enum {
    PAUSE_ROUNDS = 1 << 9,              /* spin with a pause instruction (~10 us) ... */
    JOB_WAIT_NS = 200 * 1000,           /* ... then yield until this long before sleeping for a job */
    BARRIER_WAIT_NS = 50 * 1000         /* ... or for the rest of a job (a barrier, or its end) */
};

/* When a core is taken by another process, the thread that shares it runs in time slices of a few
 * milliseconds, and every barrier it holds up costs the others that long: a job of many barriers
 * then runs slower on two threads than on one. So the pool watches for it: a wait at a barrier that
 * lasts longer than STALL_NS (a phase takes microseconds) counts as a stall, and a job that spent more
 * than 1/STALL_SHARE of its time stalled is contended. So is a job in which one thread ran less than
 * 1/IDLE_SHARE of its fair share of the chunks: when the busy core is the caller's, the caller holds
 * nobody up (its few chunks are short), it just gets little done. STALLED_IN_A_ROW contended jobs
 * make the next ones run on the caller alone ("solo"), the workers asleep: exactly a one-thread run,
 * and the kernel's load balancer moves a lone runnable thread off the busy core as it does for
 * `-t 1`. (Handing solo jobs to the worker that got the most done was tried: the caller then wakes it
 * for every job and the wake-up often lands on the busy core; Qwen decoded at 0.70x of `-t 1`
 * against 0.96x for the caller, 2026-12-01.) A single contended job is more often the first pass
 * over freshly mapped weights (page faults) than a busy core.
 *
 * After SOLO_FIRST solo jobs (then twice as many each time, up to SOLO_MAX) a job is a probe: the
 * caller still runs it alone, while every worker spins beside it and checks whether it has a core to
 * itself: from the job's start to its end the thread was never preempted (involuntary context
 * switches, Linux) and got at least FREE_SHARE_EIGHTHS/8 of the wall time as CPU time. A probe costs
 * the other process a share of its core for one job, and us nothing: a threaded probe would hold
 * every barrier for a time slice. If every thread had a core, jobs run threaded again (if that is
 * contended, solo resumes with a doubled stretch); else the stretch doubles. The decision is made at
 * the start of the next job (one per evaluation): a worker's report is written just after the job
 * ends. On an idle machine none of this triggers, and nothing changes. */
enum {
    STALL_NS = 250 * 1000,
    STALL_SHARE = 8,
    STALLED_IN_A_ROW = 2,
    IDLE_SHARE = 4,
    FREE_SHARE_EIGHTHS = 7,
    SOLO_FIRST = 64,
    SOLO_MAX = 256
};

typedef struct job {
    const eq_pool_phase *phases;
    int n_phases;
    atomic_bool probe;                  /* the caller runs it alone, the workers check their cores
                                           (atomic: read before a claim, so possibly while rewritten) */
    atomic_uint total;                  /* chunks over all phases; read before a claim is won */
    _Atomic uint64_t start_ns;          /* when the caller published it (CLOCK_MONOTONIC) */
} job;

typedef struct thread_slot {
    atomic_uint n;                      /* chunks this thread ran in the current job */
    _Atomic uint64_t had_core;          /* a worker's report on a probe:
                                           generation << 32 | 1 if it had a core to itself, else 0 */
    char pad[64 - 2 * sizeof(uint64_t)];                     /* one cache line per thread */
} thread_slot;

struct eq_pool {
    int n_threads;
    pthread_t *threads;                 /* n_threads - 1 workers */
    unsigned next_generation;           /* the caller's own count of jobs */
    job jobs[2];                        /* job g lives in jobs[g & 1] */
    _Atomic uint64_t claim;             /* generation << 32 | next chunk to hand out */
    atomic_uint generation;             /* the latest job (futex word for idle workers) */
    atomic_uint done;                   /* chunks finished in the current job (futex word at barriers) */
    atomic_int job_sleepers, done_sleepers;
    atomic_bool shutdown;
    _Atomic uint64_t stalled_ns;        /* time waited in stalls during the current job */
    bool solo;                          /* the caller's: jobs run on the caller alone */
    unsigned solo_left;                 /* the caller's: solo jobs before the next probe */
    unsigned solo_next;                 /* the caller's: length of the next solo stretch */
    unsigned stalled_in_a_row;          /* the caller's: consecutive contended threaded jobs */
    bool probe_pending;                 /* the caller's: a probe ran and has not been judged yet */
    unsigned probe_generation;          /* the caller's: its generation */
    bool caller_had_core;               /* the caller's: it had a core during that probe */
    thread_slot *ran;                   /* (n_threads,) per-thread counts and reports */
    uint64_t n_jobs, n_jobs_alone;      /* the caller's: threaded jobs asked for, and run alone */
#if !defined(__linux__)
    pthread_mutex_t mutex;              /* the futex fallback: one mutex and condition for both words */
    pthread_cond_t changed;
#endif
};

/* ---- waiting: sleep while *word == expected ------------------------------------------------- */

#if defined(__linux__)
static void sleep_while_equal(eq_pool *pool, atomic_uint *word, unsigned expected)
{
    (void)pool;
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void wake_all(eq_pool *pool, atomic_uint *word)
{
    (void)pool;
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static void sleep_while_equal(eq_pool *pool, atomic_uint *word, unsigned expected)
{
    pthread_mutex_lock(&pool->mutex);
    while (atomic_load(word) == expected)
        pthread_cond_wait(&pool->changed, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
}

static void wake_all(eq_pool *pool, atomic_uint *word)
{
    (void)word;   /* the word was changed before: a waiter that checked it under the mutex is waiting */
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->changed);
    pthread_mutex_unlock(&pool->mutex);
}
#endif

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- does this thread have a core to itself? ------------------------------------------------ */

typedef struct core_sample {
    uint64_t cpu_ns;                    /* this thread's CPU time */
    long preempted;                     /* its involuntary context switches (Linux; else 0) */
} core_sample;

static core_sample core_sample_now(void)
{
    core_sample sample = {0, 0};
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) == 0)
        sample.cpu_ns = (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
#if defined(__linux__)
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) == 0)
        sample.preempted = usage.ru_nivcsw;
#endif
    return sample;
}

/* Since `since_ns` (the job's start; `before` sampled on this thread after it), this thread was not
 * preempted and got at least FREE_SHARE_EIGHTHS/8 of the wall time as CPU time. */
static bool had_core_since(uint64_t since_ns, const core_sample *before)
{
    core_sample after = core_sample_now();
    uint64_t wall = now_ns() - since_ns;
    return after.preempted == before->preempted &&
           (after.cpu_ns - before->cpu_ns) * 8 >= wall * FREE_SHARE_EIGHTHS;
}

/* One round of waiting: a pause at first, then sched_yield; false once the budget is spent. */
typedef struct backoff {
    int rounds;
    uint64_t yield_until;
    uint64_t budget_ns;
} backoff;

static bool backoff_step(backoff *b)
{
    if (b->rounds < PAUSE_ROUNDS) {
        b->rounds++;
        EQ_CPU_RELAX();
        return true;
    }
    uint64_t t = now_ns();
    if (b->rounds == PAUSE_ROUNDS) {
        b->rounds++;
        b->yield_until = t + b->budget_ns;
    }
    if (t >= b->yield_until)
        return false;
    sched_yield();
    return true;
}

/* Count the wait that started at `since` (0: it never left the pause rounds) if it was a stall. */
static void note_wait(eq_pool *pool, uint64_t since)
{
    if (since) {
        uint64_t waited = now_ns() - since;
        if (waited > STALL_NS)
            atomic_fetch_add_explicit(&pool->stalled_ns, waited, memory_order_relaxed);
    }
}

/* Wait until the current job has finished `target` chunks. */
static void wait_for_done(eq_pool *pool, unsigned target)
{
    backoff b = {0, 0, BARRIER_WAIT_NS};
    for (;;) {
        unsigned done = atomic_load_explicit(&pool->done, memory_order_acquire);
        if (done >= target) {
            note_wait(pool, b.rounds > PAUSE_ROUNDS ? b.yield_until - b.budget_ns : 0);
            return;
        }
        if (backoff_step(&b))
            continue;
        atomic_fetch_add(&pool->done_sleepers, 1);            /* seq_cst: before the re-check */
        done = atomic_load(&pool->done);
        if (done < target)
            sleep_while_equal(pool, &pool->done, done);
        atomic_fetch_sub(&pool->done_sleepers, 1);
    }
}

/* ---- running a job ------------------------------------------------------------------------- */

/* Claim and run chunks of job `generation` until none are left (or the job is no longer current). */
static void claim_chunks(eq_pool *pool, unsigned generation, int thread)
{
    job *j = &pool->jobs[generation & 1];
    int phase = 0;
    unsigned phase_begin = 0, phase_end = 0;   /* this thread's cursor: claimed indices only grow */
    bool cursor_set = false;
    for (;;) {
        uint64_t claim = atomic_load_explicit(&pool->claim, memory_order_acquire);
        if ((unsigned)(claim >> 32) != generation)
            return;
        unsigned index = (unsigned)claim;
        if (index >= atomic_load_explicit(&j->total, memory_order_relaxed))
            return;
        if (!atomic_compare_exchange_weak_explicit(&pool->claim, &claim, claim + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (!cursor_set) {
            phase_end = (unsigned)j->phases[0].n_chunks;
            cursor_set = true;
        }
        while (index >= phase_end) {
            phase++;
            phase_begin = phase_end;
            phase_end += (unsigned)j->phases[phase].n_chunks;
        }
        if (phase_begin > 0)
            wait_for_done(pool, phase_begin);                  /* the barrier before this phase */
        const eq_pool_phase *p = &j->phases[phase];
        p->fn(p->ctx, (int)(index - phase_begin), thread);
        atomic_fetch_add_explicit(&pool->ran[thread].n, 1, memory_order_relaxed);   /* before `done` */
        atomic_fetch_add(&pool->done, 1);                      /* seq_cst: before the sleepers check */
        if (atomic_load(&pool->done_sleepers) > 0)
            wake_all(pool, &pool->done);
    }
}

/* Spin until job `generation` is over (a probe: the spinning measures whether this thread has a core). */
static void spin_through_job(eq_pool *pool, unsigned generation)
{
    job *j = &pool->jobs[generation & 1];
    for (;;) {
        uint64_t claim = atomic_load_explicit(&pool->claim, memory_order_acquire);
        if ((unsigned)(claim >> 32) != generation ||
            atomic_load_explicit(&pool->done, memory_order_acquire) >= atomic_load_explicit(&j->total, memory_order_relaxed))
            return;
        EQ_CPU_RELAX();
    }
}

/* A worker's part in job `generation`: claim chunks, or on a probe check its core beside the caller
 * and report whether it had one. A stale slot (the job is over) only makes claims fail. */
static void run_chunks(eq_pool *pool, unsigned generation, int thread)
{
    job *j = &pool->jobs[generation & 1];
    if (!atomic_load_explicit(&j->probe, memory_order_relaxed)) {
        claim_chunks(pool, generation, thread);
        return;
    }
    core_sample before = core_sample_now();
    spin_through_job(pool, generation);
    bool had_core = had_core_since(atomic_load_explicit(&j->start_ns, memory_order_relaxed), &before);
    atomic_store_explicit(&pool->ran[thread].had_core, (uint64_t)generation << 32 | had_core, memory_order_release);
}

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
        backoff b = {0, 0, JOB_WAIT_NS};
        unsigned now;
        while ((now = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load(&pool->shutdown)) {
            if (backoff_step(&b))
                continue;
            atomic_fetch_add(&pool->job_sleepers, 1);          /* seq_cst: before the re-check */
            if (atomic_load(&pool->generation) == seen && !atomic_load(&pool->shutdown))
                sleep_while_equal(pool, &pool->generation, seen);
            atomic_fetch_sub(&pool->job_sleepers, 1);
        }
        if (atomic_load(&pool->shutdown))
            return NULL;
        seen = now;
        run_chunks(pool, now, arg.index);
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
#if !defined(__linux__)
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->changed, NULL);
#endif
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    pool->ran = calloc((size_t)n_threads, sizeof *pool->ran);
    if (!pool->threads || !pool->ran) {
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
    atomic_store(&pool->shutdown, true);
    atomic_fetch_add(&pool->generation, 1);
    wake_all(pool, &pool->generation);
    if (pool->threads)
        for (int i = 1; i < pool->n_threads; i++)
            pthread_join(pool->threads[i - 1], NULL);
    free(pool->threads);
    free(pool->ran);
#if !defined(__linux__)
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->changed);
#endif
    free(pool);
}

int eq_pool_size(const eq_pool *pool)
{
    return pool ? pool->n_threads : 1;
}

static void run_alone(const eq_pool_phase *phases, int n_phases)
{
    for (int p = 0; p < n_phases; p++)
        for (int c = 0; c < phases[p].n_chunks; c++)
            phases[p].fn(phases[p].ctx, c, 0);
}

/* Before a job: the last probe decides whether jobs run threaded again (every thread had a core)
 * or the caller keeps them for a stretch twice as long. A worker with no report yet had no core. */
static void judge_probe(eq_pool *pool)
{
    pool->probe_pending = false;
    bool all_free = pool->caller_had_core;
    for (int t = 1; t < pool->n_threads; t++) {
        uint64_t report = atomic_load_explicit(&pool->ran[t].had_core, memory_order_acquire);
        all_free = all_free && report == ((uint64_t)pool->probe_generation << 32 | 1);
    }
    if (all_free) {
        pool->solo = false;             /* threaded again; solo_next kept: if contended, a longer stretch */
        pool->stalled_in_a_row = 0;
    } else {
        pool->solo_left = pool->solo_next;
        pool->solo_next = pool->solo_next * 2 > SOLO_MAX ? SOLO_MAX : pool->solo_next * 2;
    }
}

/* Publish job `generation` (probe: the caller runs it alone, the workers check their cores). */
static void publish(eq_pool *pool, unsigned generation, const eq_pool_phase *phases, int n_phases, unsigned total,
                    bool probe, uint64_t start)
{
    for (int t = 0; t < pool->n_threads; t++)
        atomic_store_explicit(&pool->ran[t].n, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->stalled_ns, 0, memory_order_relaxed);
    job *j = &pool->jobs[generation & 1];
    j->phases = phases;
    j->n_phases = n_phases;
    atomic_store_explicit(&j->probe, probe, memory_order_relaxed);   /* published by `claim` below */
    atomic_store_explicit(&j->total, total, memory_order_relaxed);
    atomic_store_explicit(&j->start_ns, start, memory_order_relaxed);
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->claim, (uint64_t)generation << 32, memory_order_release);
    atomic_store(&pool->generation, generation);               /* seq_cst: before the sleepers check */
    if (atomic_load(&pool->job_sleepers) > 0)
        wake_all(pool, &pool->generation);
}

/* A solo job: on the caller, the workers asleep, or spinning beside it on a probe. */
static void run_solo(eq_pool *pool, const eq_pool_phase *phases, int n_phases, unsigned total)
{
    pool->n_jobs_alone++;
    if (pool->solo_left > 0) {
        pool->solo_left--;
        run_alone(phases, n_phases);
        return;
    }
    uint64_t start = now_ns();
    core_sample before = core_sample_now();
    unsigned generation = ++pool->next_generation;
    publish(pool, generation, phases, n_phases, total, true, start);
    run_alone(phases, n_phases);
    atomic_store_explicit(&pool->done, total, memory_order_release);   /* the probers stop */
    pool->caller_had_core = had_core_since(start, &before);
    pool->probe_pending = true;
    pool->probe_generation = generation;
}

void eq_pool_run(eq_pool *pool, const eq_pool_phase *phases, int n_phases)
{
    unsigned total = 0;
    for (int p = 0; p < n_phases; p++)
        total += (unsigned)phases[p].n_chunks;
    if (pool->n_threads == 1 || total == 0) {
        run_alone(phases, n_phases);
        return;
    }
    pool->n_jobs++;
    if (pool->probe_pending)            /* a core was contended: see STALL_NS */
        judge_probe(pool);
    if (pool->solo) {
        run_solo(pool, phases, n_phases, total);
        return;
    }
    uint64_t start = now_ns();
    unsigned generation = ++pool->next_generation;
    publish(pool, generation, phases, n_phases, total, false, start);
    claim_chunks(pool, generation, 0);
    wait_for_done(pool, total);
    /* every chunk is done, so every stall and every chunk of this job has been counted (a worker
     * counts its barrier wait before it runs the chunk it waited for, and a chunk before `done`).
     * Contended: long barrier waits, or a thread that ran under 1/IDLE_SHARE of its fair share of
     * the chunks (the caller itself shares a busy core: it holds nobody up, it just does little). */
    uint64_t stalled = atomic_load_explicit(&pool->stalled_ns, memory_order_relaxed);
    unsigned fewest = UINT_MAX;
    for (int t = 0; t < pool->n_threads; t++) {
        unsigned n = atomic_load_explicit(&pool->ran[t].n, memory_order_relaxed);
        fewest = n < fewest ? n : fewest;
    }
    bool starved = total >= (unsigned)(IDLE_SHARE * pool->n_threads) &&
                   fewest * (unsigned)(IDLE_SHARE * pool->n_threads) < total;
    if (!starved && stalled * STALL_SHARE <= now_ns() - start) {
        pool->stalled_in_a_row = 0;
        pool->solo_next = 0;
    } else if (++pool->stalled_in_a_row >= STALLED_IN_A_ROW || pool->solo_next) {
        pool->solo_left = pool->solo_next ? pool->solo_next : SOLO_FIRST;   /* a contended return doubles it */
        pool->solo = true;
        pool->solo_next = pool->solo_left * 2 > SOLO_MAX ? SOLO_MAX : pool->solo_left * 2;
    }
}

void eq_pool_counts(const eq_pool *pool, uint64_t *jobs, uint64_t *jobs_alone)
{
    *jobs = pool ? pool->n_jobs : 0;
    *jobs_alone = pool ? pool->n_jobs_alone : 0;
}
