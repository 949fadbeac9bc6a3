/* threadpool.h — internal: a persistent pool of worker threads for the forward pass.
 *
 * eq_pool_run(pool, fn, ctx) calls fn(ctx, i, n) once for every thread index i in [0, n), the
 * calling thread taking index 0, and returns when all calls are done. Workers spin briefly for the
 * next job (a token's forward pass issues a few hundred jobs back to back) and then sleep.
 * One caller at a time: the model serializes its use of the pool.
 */
#ifndef EDGEQ_THREADPOOL_H
#define EDGEQ_THREADPOOL_H

typedef struct eq_pool eq_pool;
typedef void (*eq_pool_fn)(void *ctx, int index, int n_threads);

/* A pool of n_threads (>= 1; 1 means no extra threads). NULL if threads cannot be created. */
eq_pool *eq_pool_create(int n_threads);
void eq_pool_destroy(eq_pool *pool);
int eq_pool_size(const eq_pool *pool);
void eq_pool_run(eq_pool *pool, eq_pool_fn fn, void *ctx);

#endif /* EDGEQ_THREADPOOL_H */
