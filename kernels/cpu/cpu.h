/*
 * cpu.h - fast CPU kernels (AVX2/FMA with runtime dispatch, scalar fallback)
 * and the persistent thread pool they run on.
 *
 * Every kernel here computes exactly the math of its kernels/ref oracle (same
 * quantisation, same block structure); only summation order may differ.
 * Kernels do not allocate per call: scratch comes from the pool, sized once.
 */
#ifndef DSV4_CPU_H
#define DSV4_CPU_H

#include "kernels/linear.h"

#include <stddef.h>
#include <stdint.h>

struct dsv4_pool;

/* A pool of n threads (n >= 1; the caller's thread counts as one). */
int dsv4_pool_init(int nthreads, struct dsv4_pool **out);
void dsv4_pool_free(struct dsv4_pool *p);
int dsv4_pool_threads(const struct dsv4_pool *p);

/* Runs fn(arg, i, thread) for i in [0, n) across the pool and waits. */
typedef void (*dsv4_pool_fn)(void *arg, int64_t i, int thread);
void dsv4_pool_run(struct dsv4_pool *p, dsv4_pool_fn fn, void *arg, int64_t n);

/* Per-thread scratch of at least `bytes` (grown on first use, kept). */
void *dsv4_pool_scratch(struct dsv4_pool *p, int thread, size_t bytes);

/* Which instruction set the dispatcher picked ("avx2+fma" or "scalar"). */
const char *dsv4_cpu_isa(void);

/* y[m, rows] = act(x)[m, cols] . W^T, threaded over output rows; m in 1..64 typical, any m works. */
void dsv4_cpu_linear(struct dsv4_pool *p, const struct dsv4_qweight *w, enum dsv4_act act,
                     const float *x, int64_t m, float *y);

#endif
