/*
 * ops.h - fast CPU versions of the forward pass's non-GEMM ops where the
 * time goes (attention), with the exact semantics of their oracle in
 * kernels/ref/ops.h.
 *
 * dsv4_cpu_sparse_attn computes what dsv4_ref_sparse_attn computes: the
 * same FP32 inputs, products formed exactly in double (a float times a
 * float is exact in double, so an FMA in double rounds like the oracle's
 * multiply-then-add), the P.V sums per channel in the oracle's key order
 * (bitwise equal), the q.k dot products in four double lanes (a different
 * order of double additions: equal to the oracle after rounding to FP32
 * except in ~1e-9 of cases).  AVX2+FMA when the CPU has it (chosen once at
 * run time), else the oracle itself.
 */
#ifndef DSV4_CPU_OPS_H
#define DSV4_CPU_OPS_H

#include <stdbool.h>
#include <stdint.h>

/* Same contract as dsv4_ref_sparse_attn (kernels/ref/ops.h). */
void dsv4_cpu_sparse_attn(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                          const float *sink, float scale, bool bf16_p, float *probs, float *out);

/* Same contracts as dsv4_ref_indexer_scores and dsv4_ref_topk (kernels/cpu/ops_index.c:
 * FP64 lanes for the scores, a heap for the top-k; same results for inputs without NaN). */
void dsv4_cpu_indexer_scores(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores);
void dsv4_cpu_topk(const float *v, int n, int k, int *idx);

/* Whether the vector path is in use ("avx2+fma" or "scalar"). */
const char *dsv4_cpu_ops_isa(void);

#endif
