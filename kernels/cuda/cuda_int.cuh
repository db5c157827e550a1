/*
 * cuda_int.cuh - internal to kernels/cuda/*.cu: the CUDA backend's state,
 * its check macros, small device helpers (block reductions), and the
 * functions each .cu file uses to fill its part of the op table.
 *
 * Conventions of the backend (what kernels/cuda/cuda.h promises callers):
 *   - one device, one non-blocking stream; every op is enqueued on it and
 *     returns without waiting; upload copies the caller's bytes into pinned
 *     staging before it returns, download and sync wait;
 *   - argument structs (struct dsv4_lin, dsv4_kv_args, dsv4_rope,
 *     dsv4_hc_params, the view's `layers`) are host memory read by the
 *     launch code; every data pointer in them is device memory;
 *   - a CUDA error in a void op is a device fault or a bug: it aborts with
 *     the call, file and line (STYLE.md: broken invariants abort); the
 *     status-returning entry points (alloc, upload, download, sync, reserve)
 *     report instead.
 */
#ifndef DSV4_CUDA_INT_CUH
#define DSV4_CUDA_INT_CUH

/* C headers without their own extern "C" (declarations only) */
extern "C" {
#include "base/tensor.h"
#include "kernels/formats.h"
#include "kernels/linear.h"
}
#include "base/dsv4.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda/plan.h"

#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

/* Aborts on a failed CUDA call (void ops: a device fault or a bug). */
#define CU_CHECK(call)                                    \
    do {                                                  \
        cudaError_t e_ = (call);                          \
        if (e_ != cudaSuccess)                            \
            dsv4_cu_fatal(#call, e_, __FILE__, __LINE__); \
    } while (0)
/* After a launch: configuration errors surface here. */
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())

__attribute__((noreturn)) void dsv4_cu_fatal(const char *what, cudaError_t e, const char *file,
                                             int line);

struct cu_be {
    struct dsv4_backend be;
    int dev;
    cudaStream_t st;
    int sms;
    size_t smem_optin; /* per-block shared memory a kernel may opt into */
    /* pinned staging of uploads: bump allocator reset whenever the stream is drained */
    uint8_t *stage;
    size_t stage_cap, stage_off;
    /* scratch (device), sized by reserve() */
    struct dsv4_be_limits lim;
    struct dsv4_cu_ws ws;
    bool reserved;
    void *scratch;
    uint8_t *q;      /* activation codes [quant_rows, quant_cols] */
    float *qs;       /* their scales */
    float *route;    /* [tokens, experts] */
    int32_t *m_cnt;  /* [experts + 1] */
    int32_t *m_off;  /* [experts + 1] */
    int32_t *m_perm; /* [pairs]: sorted position -> pair */
    int32_t *m_dst;  /* [pairs]: sorted position -> output slot row */
    int32_t *m_eid;  /* [pairs]: sorted position -> local expert */
    int4 *m_tiles;   /* [moe_tiles]: (expert, first position, rows) */
    int32_t *m_ntiles;
    float *m_g, *m_u, *m_h; /* [pairs, inter] */
    uint8_t *m_q;           /* [pairs, moe_wide] */
    float *m_qs;            /* [pairs, moe_wide / 16] */
    float *sel;             /* indexer scores [select_tokens, entries] */
};

static inline struct cu_be *CB(struct dsv4_backend *be)
{
    return (struct cu_be *)be->impl;
}

/* Makes the backend's device current on the calling thread. */
void cu_enter(struct cu_be *c);

/* Fills the ops of each file. */
void cu_ops_elem(struct dsv4_backend *b);
void cu_ops_linear(struct dsv4_backend *b);
void cu_ops_moe(struct dsv4_backend *b);
void cu_ops_hc(struct dsv4_backend *b);
void cu_ops_attn(struct dsv4_backend *b);
void cu_ops_vmm(struct dsv4_backend *b);
/* Per-kernel limits that depend on the engine's limits (shared memory opt-ins). */
int cu_attn_reserve(struct cu_be *c, const struct dsv4_be_limits *lim);

/* Rows and row stride of an op tensor (as kernels/ref/backend.h's dsv4_be_*). */
int64_t cu_rows(const struct dsv4_tensor *t);
int64_t cu_cols(const struct dsv4_tensor *t);
int64_t cu_ld(const struct dsv4_tensor *t);
void cu_check_t(const struct dsv4_tensor *t, enum dsv4_dtype dt);

/* Grid of 1-D element-wise launches. */
static inline unsigned cu_grid(int64_t n, int threads)
{
    return (unsigned)dsv4_cu_blocks(n, threads);
}

/*
 * y[t, :] = act(x[t, :]) . W^T for the rows of one call, G groups (linear and
 * linear_grouped share it): group g reads x columns [g K, (g+1) K) of rows of stride ldx,
 * weight rows [g N, (g+1) N) and writes y columns [g N, (g+1) N) of rows of stride ldy.
 */
void cu_gemm(struct cu_be *c, const struct dsv4_lin *l, int G, int64_t m, int64_t N, int64_t K,
             const float *x, int64_t ldx, float *y, int64_t ldy, unsigned flags);

/* ------------------------------------------------------------ device helpers */

#ifdef __CUDACC__
/* Sum of v over the block (every thread gets it); red: blockDim.x / 32 doubles of smem. */
__device__ __forceinline__ double cu_block_sum(double v, double *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        red[w] = v;
    __syncthreads();
    double s = 0.0;
    for (int i = 0; i < nw; i++)
        s += red[i];
    __syncthreads();
    return s;
}

/* Max of v over the block (NaN-free inputs). */
__device__ __forceinline__ float cu_block_max(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        red[w] = v;
    __syncthreads();
    float s = red[0];
    for (int i = 1; i < nw; i++)
        s = fmaxf(s, red[i]);
    __syncthreads();
    return s;
}
#endif

#endif
