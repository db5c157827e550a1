/*
 * ops.h - fast CPU versions of the forward pass's non-GEMM ops where the
 * time goes (attention, the indexer, the element-wise ops), with the exact
 * semantics of their oracle in kernels/ref/ops.h.
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

#include "kernels/backend.h"

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

/*
 * Element-wise and per-row ops (kernels/cpu/ops_elem.c), AVX2 when the CPU has it, else
 * the oracle.  Same results as their oracles bit for bit, except where noted:
 *   dsv4_cpu_round_bf16   dsv4_ref_round_bf16 (x in place, RNE, NaN quieted)
 *   dsv4_cpu_argmax       dsv4_ref_argmax_row (first maximal non-NaN element, 0 if none)
 *   dsv4_cpu_exp          y[i] = expf(x[i]), glibc's expf (bit-identical to the libm of
 *                         glibc >= 2.27 on AVX2 machines; may alias)
 *   dsv4_cpu_swiglu       dsv4_ref_swiglu (through dsv4_cpu_exp)
 *   dsv4_cpu_rmsnorm      dsv4_ref_rmsnorm: the mean of squares in four double lanes, so
 *   dsv4_cpu_rms_inv      rho = 1 / sqrt(mean(x^2) + eps) may differ from the oracle's in
 *                         rare last-bit cases (another order of FP64 additions)
 *   dsv4_cpu_hc_post      dsv4_ref_hc_post
 *   dsv4_cpu_hc_sum       y[d] = sum_j pre[j] X[j, d] (double, j in order; hc_pre's y)
 *   dsv4_cpu_sum_rows     out[d] = sum_i s[i, d] over s [S, D] (double, i in order; the
 *                         MoE combine)
 *   dsv4_cpu_rope         dsv4_ref_rope of r->dim values at x + h * stride for nh heads
 *                         (x: the first head's rotated part), then their BF16
 *                         rounding if bf16; the angles once for all heads
 *   dsv4_cpu_act_sim      dsv4_act_sim_fp8 / _fp4 of x [n] in place, per `group`
 * NaN inputs give NaN outputs where the oracle's do (not necessarily the same NaN bits).
 */
void dsv4_cpu_round_bf16(float *x, int64_t n);
int32_t dsv4_cpu_argmax(const float *x, int64_t n);
void dsv4_cpu_exp(const float *x, int64_t n, float *y);
void dsv4_cpu_swiglu(const float *g, const float *u, int64_t n, float limit, float w, float *h);
void dsv4_cpu_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y);
float dsv4_cpu_rms_inv(const float *x, int64_t n, float eps);
void dsv4_cpu_hc_post(const float *A, const float *X, const float *post, const float *comb, int hc,
                      int64_t D, float *Xo);
void dsv4_cpu_hc_sum(const float *X, const float *pre, int hc, int64_t D, float *y);
void dsv4_cpu_sum_rows(const float *s, int64_t S, int64_t D, float *out);
void dsv4_cpu_rope(const struct dsv4_rope *r, float *x, int64_t nh, int64_t stride, int64_t pos,
                   bool inverse, bool bf16);
void dsv4_cpu_act_sim(float *x, int64_t n, enum dsv4_sim kind, int group);

/* Whether the vector path is in use ("avx2+fma" or "scalar"). */
const char *dsv4_cpu_ops_isa(void);

#endif
