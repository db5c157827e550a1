/*
 * plan.h - host-side launch planning of the CUDA backend, in plain C: which
 * kernel variant a GEMM of a given shape takes and its grid, block and
 * shared memory; the chunk width that fixes the summation order of every
 * output; the scratch the backend sizes once in reserve(); the token
 * buckets of captured decode graphs; VMM size rounding.
 *
 * Why separate and plain C: these are decisions, not arithmetic on device
 * data, and they decide correctness (a plan that covers too few outputs or
 * a scratch buffer one row short is a silent bug on a GPU).  Kept here they
 * build and are tested in every configuration (tests/cuda/test_cuda_plan.c),
 * without nvcc or a device; the .cu files call these same functions for
 * every launch.
 *
 * Summation order (what makes the backend batch-invariant): an output
 * y[r, o] of a linear is, for every kernel variant, the chunk sums
 * p_c = sum_{k in chunk c} a[r, k] * b[o, k] (FMA chain in k order from +0)
 * accumulated in chunk order as acc = acc + p_c * s_c, the chunk width being
 * dsv4_cu_chunk(); GEMV and tiled kernels differ only in which threads form
 * the chunk sums, never in the order, so a row's result does not depend on
 * how many rows the call has (kernels/backend.h, batch invariance).
 */
#ifndef DSV4_CUDA_PLAN_H
#define DSV4_CUDA_PLAN_H

#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ GEMM */

#define DSV4_CU_GEMV_MAX_M   8   /* m up to this: one weight pass serves every row */
#define DSV4_CU_GEMV_THREADS 128 /* threads of a GEMV block */
#define DSV4_CU_TILE_N       64  /* outputs (weight rows) per tiled block */
#define DSV4_CU_TILE_K       32  /* K per shared-memory stage (a multiple of 16) */
#define DSV4_CU_TILE_THREADS 256

enum dsv4_cu_gemm_kind { DSV4_CU_GEMV = 0, DSV4_CU_TILED_8 = 1, DSV4_CU_TILED_64 = 2 };

/*
 * K width of one chunk of the summation order for a weight format and activation path:
 * F32 activations 32 (any format); FP8 activations the weight's scale block (FP8 128,
 * MXFP4 32, NVFP4 16); NVFP4 activations 16.  The chunk scale s_c is the product of the
 * activation and weight block scales of the chunk (1 for F32 activations, whose weights
 * are decoded with their scales folded in).
 */
int dsv4_cu_chunk(enum dsv4_wfmt fmt, enum dsv4_act act);

/* Width of the activation quantiser's groups (scales per row = ceil(K / width)). */
int dsv4_cu_act_group(enum dsv4_act act);

struct dsv4_cu_gemm_plan {
    enum dsv4_cu_gemm_kind kind;
    int kb;              /* chunk width */
    int64_t chunks;      /* ceil(K / kb) */
    int bm;              /* tiled: rows per block (8 or 64); GEMV: rows of x (m) */
    int rows_per_block;  /* GEMV: weight rows per block (1, 2, 4) */
    int threads_per_row; /* GEMV: threads summing one weight row's chunks */
    int64_t grid[3];     /* x: weight-row tiles, y: x-row tiles, z: groups */
    int threads;         /* per block */
    size_t smem;         /* dynamic shared memory bytes */
};

/*
 * Plan of y[m, N] = act(x[m, K]) . W[N, K]^T repeated over G groups (grid z).  m, N, K,
 * G >= 1.  Returns 0, or DSV4_EINVAL for a shape the kernels cannot launch (a grid
 * dimension over its limit).
 */
int dsv4_cu_plan_gemm(int64_t m, int64_t N, int64_t K, int G, enum dsv4_wfmt fmt, enum dsv4_act act,
                      struct dsv4_cu_gemm_plan *p);

/* Tiled variant for the MoE GEMMs: rows per tile from the pairs and local experts. */
int dsv4_cu_moe_bm(int64_t pairs, int local_experts);
/* Upper bound of the (expert, row tile) tiles of `pairs` rows over `experts` experts. */
int64_t dsv4_cu_moe_tiles(int64_t pairs, int local_experts, int bm);

/* ------------------------------------------------------------ element-wise and rows */

/* Blocks of `threads` covering n items (grid-stride loops cover the rest), >= 1. */
int64_t dsv4_cu_blocks(int64_t n, int threads);

/* Threads of a block that reduces one row of n values (a multiple of 32, 32..1024). */
int dsv4_cu_row_threads(int64_t n);

/* ------------------------------------------------------------ attention, indexer */

/* Dynamic shared memory of the attention kernel for queries of up to `keys` keys
 * (scores, key addresses).  The kernel cannot run past the device's opt-in limit. */
size_t dsv4_cu_attn_smem(int64_t keys);
/* Top-k of the indexer: the padded sort size (a power of two >= topk, >= 32) and its
 * shared memory (keys of the sort + the radix histogram). */
int dsv4_cu_topk_sort_n(int topk);
size_t dsv4_cu_topk_smem(int topk);

/* ------------------------------------------------------------ scratch */

/*
 * Device scratch of the backend for the engine's limits (all in elements of the named
 * type; every count >= 1).  Sized once in reserve(); ops assert they fit.
 */
struct dsv4_cu_ws {
    int64_t quant_rows, quant_cols; /* activation codes: bytes [rows, cols] */
    int64_t quant_scales;           /* floats: rows * ceil(cols / 16) */
    int64_t route;                  /* floats: [tokens, experts] */
    int64_t pairs;                  /* MoE (token, slot) pairs: tokens * topk */
    int64_t moe_tiles;              /* int4 tile descriptors (bound for bm 8) */
    int64_t moe_experts;            /* counters: experts + 1 */
    int64_t moe_wide;               /* max(hidden, inter) */
    int64_t moe_act;                /* floats: pairs * inter (each of gate, up, hidden) */
    int64_t moe_quant;              /* bytes: pairs * moe_wide */
    int64_t moe_quant_scales;       /* floats: pairs * ceil(moe_wide / 16) */
    int64_t select_tokens;          /* tokens per kv_select pass */
    int64_t select_scores;          /* floats: select_tokens * entries */
};

/* select_budget: bytes allowed for the indexer's score buffer (0: 256 MiB). */
void dsv4_cu_workspace(const struct dsv4_be_limits *lim, size_t select_budget,
                       struct dsv4_cu_ws *ws);
/* Bytes of the whole workspace. */
uint64_t dsv4_cu_workspace_bytes(const struct dsv4_cu_ws *ws);

/* ------------------------------------------------------------ graphs, VMM */

/*
 * Token counts of the captured decode graphs for up to max_seqs sequences with k MTP
 * drafts each: n * (1 + k) for n = 1, 2, 3, 4, then every multiple of 8 below max_seqs,
 * then max_seqs; ascending.  Writes at most cap values and returns how many there are.
 */
int dsv4_cu_graph_buckets(int max_seqs, int k, int *out, int cap);
/* The smallest bucket >= tokens, or -1 when tokens exceeds the largest. */
int dsv4_cu_graph_bucket_for(const int *buckets, int n, int tokens);

/* bytes rounded up to a multiple of the VMM granularity (a power of two, else 0 returned). */
uint64_t dsv4_cu_vmm_round(uint64_t bytes, uint64_t granularity);

#ifdef __cplusplus
}
#endif

#endif
