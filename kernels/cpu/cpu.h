/*
 * cpu.h - fast CPU kernels (AVX2/FMA and AVX-512 with runtime dispatch,
 * scalar fallback) and the persistent thread pool they run on.
 *
 * Every kernel here computes exactly the math of its kernels/ref oracle (same
 * quantisation, same block structure, every product bit-identical); only the
 * order of the FP32 sums may differ.  Paths: batch 1 has fused kernels that
 * decode weights in registers (memory-bound); batched products decode tiles
 * of weights into L1 and run a register-blocked micro-kernel; NVFP4 W4A4
 * uses exact int8 dot products of the E2M1 codes in both (cpu_int.h,
 * linear_simd.h).
 *
 * Batch invariance: for a given instruction set, output row i of
 * dsv4_cpu_linear is bitwise the same whatever m, the other rows of x, the
 * pool's thread count and the row split (each set has one summation order
 * per output that all its paths follow).  The sets differ from each other.
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

/* Per-thread scratch of at least `bytes` (grown on first use, kept; 64-byte
 * aligned; NULL only when that first growth fails).  Owned by the pool. */
void *dsv4_pool_scratch(struct dsv4_pool *p, int thread, size_t bytes);
/* Buffers of the same kind for data all threads of a job read, by slot
 * (0 .. DSV4_POOL_SHARED_SLOTS-1; dsv4_cpu_linear uses slot 0). */
#define DSV4_POOL_SHARED_SLOTS 4
void *dsv4_pool_shared(struct dsv4_pool *p, int slot, size_t bytes);

/* Which instruction set the dispatcher picked ("avx512", "avx2+fma" or "scalar"). */
const char *dsv4_cpu_isa(void);
/*
 * The machine's multiply-add peak in FLOP/s (2 per FMA lane) on every thread of pool p, with
 * the vectors of the picked instruction set (SSE multiply + add for "scalar"): twelve
 * independent chains per thread, the best of three runs of about 20 ms.  The compute
 * roofline that the batched kernels are measured against (benchmarks).
 */
double dsv4_cpu_fma_peak(struct dsv4_pool *p);
/* Forces "scalar", "avx2+fma" or "avx512" (if the CPU has it) for every
 * later call (diagnostics and tests; the math is the same up to the order
 * of FP32 sums).  Not thread-safe against running kernels.  Also
 * DSV4_CPU_ISA=scalar|avx2+fma at start. */
int dsv4_cpu_force_isa(const char *name);

/*
 * y[m, rows] = act(x)[m, cols] . W^T, threaded over output rows; any m >= 0.
 * w and act must pass dsv4_linear_check (asserted).  Batch-invariant (see
 * above).  Not re-entrant per pool: call it from the thread that drives the
 * pool, never from inside a dsv4_pool_run task.  Scratch: the kernels' own
 * per-thread buffers (allocated by dsv4_pool_init) and shared slot 0 (the
 * quantised activations, m rows of cols rounded up to 128, 4 bytes per
 * column), grown on the first call that needs more;
 * dsv4_cpu_linear_reserve sizes it up front so that no call allocates.
 */
void dsv4_cpu_linear(struct dsv4_pool *p, const struct dsv4_qweight *w, enum dsv4_act act,
                     const float *x, int64_t m, float *y);
/*
 * n independent products (n <= DSV4_CPU_LIN_MULTI_MAX) in two pool jobs,
 * the activations of all of them and then the rows of all of them, each
 * output bitwise what dsv4_cpu_linear gives for its product: for many
 * small products (the routed experts of a decode step), which one at a
 * time would each be a job too small to split over the threads.  Shared
 * slot 0 holds every product's activations (the sum of what each would
 * take); items with m == 0 are skipped.
 */
#define DSV4_CPU_LIN_MULTI_MAX 64
struct dsv4_cpu_lin {
    const struct dsv4_qweight *w;
    enum dsv4_act act;
    const float *x; /* [m, w->cols], rows ldx floats apart */
    int64_t m;
    float *y; /* [m, w->rows], rows ldy floats apart */
    /* row strides; 0: w->cols and w->rows (dense); at least those */
    int64_t ldx, ldy;
};
void dsv4_cpu_linear_multi(struct dsv4_pool *p, const struct dsv4_cpu_lin *items, int n);
/* Sizes the shared scratch of dsv4_cpu_linear for m <= max_m, cols <= max_cols (and of
 * dsv4_cpu_linear_multi for products of max_m rows in all). */
int dsv4_cpu_linear_reserve(struct dsv4_pool *p, int64_t max_m, int64_t max_cols);

/*
 * Fast activation quantise-dequantise, bit-identical to the reference:
 * dsv4_cpu_act_fp8: out = dsv4_act_sim_fp8 of x (per `group`: E4M3 code *
 * power-of-two scale); dsv4_cpu_act_nvfp4: out[k] = e2m1(q[k]) *
 * e4m3(sf[k/16]) of dsv4_act_quant_nvfp4 (the 1/gs factor left out).
 * x: [n], out: [n], may not alias.
 */
void dsv4_cpu_act_fp8(const float *x, int64_t n, int group, float *out);
void dsv4_cpu_act_nvfp4(const float *x, int64_t n, float input_scale, float *out);

#endif
