/*
 * pool.c - the persistent thread pool of the CPU kernels (kernels/cpu/cpu.h).
 *
 * Threads are created once by dsv4_pool_init.  A job is published by
 * bumping an atomic generation counter; tasks are claimed with an atomic
 * counter, so a thread slowed down by other load on the machine simply
 * claims fewer tasks.  The calling thread works as thread 0, so a pool of n
 * threads starts n - 1.  Per-thread scratch buffers (and a few shared ones)
 * grow on first use and are kept, so steady-state calls never allocate.
 *
 * Why workers spin: a decode step is hundreds of small jobs back to back, and
 * waking a thread from a condition variable costs tens of microseconds, as
 * much as a small job itself.  So a worker polls the generation for a short
 * while (POOL_SPIN pauses, some microseconds) before it sleeps on the
 * condition variable, and the caller likewise polls for the job's end before
 * sleeping.  Sleep and wake-up cannot miss each other: the publisher stores
 * the generation and then reads the sleeper count, a sleeper increments the
 * count and then reads the generation (both sequentially consistent), so at
 * least one of them sees the other; the same for `pending` and the caller's
 * `waiting` flag.
 *
 * Invariant: one job at a time per pool (dsv4_pool_run is not re-entrant and
 * a pool is driven by one thread); `pending` counts workers that have not yet
 * finished the current generation.
 */
#include "kernels/cpu/cpu.h"

#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"

#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct scratch {
    void *p;
    size_t n;
};

struct worker {
    struct dsv4_pool *pool;
    pthread_t th;
    int id;
};

/* Polls before sleeping (each a PAUSE: tens of cycles). */
#define POOL_SPIN 4000

struct dsv4_pool {
    int n;
    struct worker *w;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    atomic_uint_fast64_t gen;
    atomic_int pending, sleepers, waiting, stop;
    dsv4_pool_fn fn;
    void *arg;
    int64_t ntasks;
    atomic_int_fast64_t next;
    /* n per-thread buffers for callers, n per-thread buffers of the kernels
     * (so a kernel never moves a buffer its caller still holds), then the
     * shared slots */
    struct scratch *scr;
};

static void run_tasks(struct dsv4_pool *p, int thread)
{
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->ntasks)
            return;
        p->fn(p->arg, i, thread);
    }
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

/* Waits until the generation differs from seen (or stop); returns the new one. */
static uint64_t wait_job(struct dsv4_pool *p, uint64_t seen)
{
    for (int i = 0; i < POOL_SPIN; i++) {
        uint64_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop))
            return g;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv_job, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return atomic_load(&p->gen);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct dsv4_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load(&p->stop))
            break;
        run_tasks(p, w->id);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int dsv4_pool_init(int nthreads, struct dsv4_pool **out)
{
    struct dsv4_pool *p;
    int started = 0, rc;
    *out = NULL;
    if (nthreads < 1 || nthreads > 1024)
        return dsv4_error(DSV4_EINVAL, "thread pool: %d threads (1..1024)", nthreads);
    p = calloc(1, sizeof(*p));
    if (!p)
        return dsv4_error(DSV4_ENOMEM, "thread pool: out of memory");
    p->n = nthreads;
    p->w = calloc((size_t)nthreads, sizeof(*p->w));
    p->scr = calloc(2 * (size_t)nthreads + DSV4_POOL_SHARED_SLOTS, sizeof(*p->scr));
    if (!p->w || !p->scr) {
        free(p->w);
        free(p->scr);
        free(p);
        return dsv4_error(DSV4_ENOMEM, "thread pool: out of memory");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->next, 0);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->waiting, 0);
    atomic_init(&p->stop, 0);
    for (int i = 1; i < nthreads; i++) {
        p->w[i].pool = p;
        p->w[i].id = i;
        rc = pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]);
        if (rc != 0) {
            rc = dsv4_error(DSV4_ENOMEM, "thread pool: pthread_create: %s", strerror(rc));
            goto fail;
        }
        started++;
    }
    for (int i = 0; i < nthreads; i++)
        if (!dsv4_pool_kscratch(p, i, LIN_SCRATCH)) {
            rc = dsv4_error(DSV4_ENOMEM, "thread pool: out of memory for scratch");
            goto fail;
        }
    *out = p;
    return 0;
fail:
    p->n = started + 1;
    dsv4_pool_free(p);
    return rc;
}

void dsv4_pool_free(struct dsv4_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->w[i].th, NULL);
    for (int i = 0; i < 2 * p->n + DSV4_POOL_SHARED_SLOTS; i++)
        free(p->scr[i].p);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
    free(p->scr);
    free(p->w);
    free(p);
}

int dsv4_pool_threads(const struct dsv4_pool *p)
{
    return p->n;
}

void dsv4_pool_run(struct dsv4_pool *p, dsv4_pool_fn fn, void *arg, int64_t n)
{
    if (n <= 0)
        return;
    if (p->n == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++)
            fn(arg, i, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->ntasks = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p, 0);
    for (int i = 0; i < POOL_SPIN && atomic_load(&p->pending) > 0; i++)
        cpu_relax();
    if (atomic_load(&p->pending) > 0) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->waiting, 1);
        while (atomic_load(&p->pending) > 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->waiting, 0);
        pthread_mutex_unlock(&p->mu);
    }
}

static void *grow(struct scratch *s, size_t bytes)
{
    if (bytes <= s->n)
        return s->p;
    void *q = NULL;
    size_t n = (bytes + 4095) & ~(size_t)4095;
    if (posix_memalign(&q, 64, n) != 0)
        return NULL;
    free(s->p);
    s->p = q;
    s->n = n;
    return q;
}

void *dsv4_pool_scratch(struct dsv4_pool *p, int thread, size_t bytes)
{
    DSV4_ASSERT(thread >= 0 && thread < p->n);
    return grow(&p->scr[thread], bytes);
}

void *dsv4_pool_shared(struct dsv4_pool *p, int slot, size_t bytes)
{
    DSV4_ASSERT(slot >= 0 && slot < DSV4_POOL_SHARED_SLOTS);
    return grow(&p->scr[2 * p->n + slot], bytes);
}

void *dsv4_pool_kscratch(struct dsv4_pool *p, int thread, size_t bytes)
{
    DSV4_ASSERT(thread >= 0 && thread < p->n);
    return grow(&p->scr[p->n + thread], bytes);
}
