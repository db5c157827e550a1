/*
 * ops.h - scalar reference (the oracle) of every non-GEMM op of the
 * DeepSeek-V4 forward pass (../shared/spec/model.md §3-§4): RMSNorm,
 * interleaved RoPE with YaRN, the mHC hyper-connection ops (Sinkhorn pre,
 * post, head collapse), sparse attention with sinks, compressor pooling,
 * lightning-indexer scores, top-k, Walsh-Hadamard, MoE routing, SwiGLU.
 *
 * Every function works on dense row-major FP32 arrays and computes in FP32
 * (long reductions accumulate in double, rounded once); it never rounds to
 * BF16 itself (except the attention P operand when asked): the forward pass
 * rounds where the reference stores BF16 (model.md §3.7).  No function
 * allocates; outputs never alias inputs unless stated.
 */
#ifndef DSV4_REF_OPS_H
#define DSV4_REF_OPS_H

#include "kernels/backend.h"

#include <stdbool.h>
#include <stdint.h>

/* y[i] = w[i] * x[i] / sqrt(mean(x^2) + eps); w == NULL means weightless.  y may alias x. */
void dsv4_ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y);

/*
 * Rotates x[0..dim) in place, interleaved pairs (x[2i], x[2i+1]) by phi = pos * freq[i]
 * (FP32 product): (a, b) -> (a cos phi - b sin phi, a sin phi + b cos phi); inverse uses -phi.
 */
void dsv4_ref_rope(const struct dsv4_rope *r, float *x, int64_t pos, bool inverse);

/*
 * mHC pre ("collapse") of one token (model.md §3.2).  X: [hc, D] streams;
 * fn: [(2 + hc) * hc, hc * D]; scale[3]; base[(2 + hc) * hc].
 * m = rho * fn . flatten(X), rho = 1/sqrt(mean(X^2) + norm_eps);
 * pre_j = sigmoid(m_j s0 + b_j) + hc_eps; post_j = 2 sigmoid(m_{hc+j} s1 + b_{hc+j});
 * comb = Sinkhorn(softmax rows + hc_eps, then column, then (iters-1) x (row, column));
 * y = sum_j pre_j X[j].  Outputs y[D], post[hc], comb[hc * hc] (comb[j * hc + k]).
 * `mix` (optional, may be NULL) supplies m precomputed as fn . flatten(X) (unscaled by rho)
 * so that a fast GEMM can do the projection.
 */
void dsv4_ref_hc_pre(const float *X, int hc, int64_t D, const float *fn, const float *scale,
                     const float *base, const float *mix, float norm_eps, float hc_eps, int iters,
                     float *y, float *post, float *comb);

/* The mixing weights of hc_pre alone, from m = fn . flatten(X) [(2 + hc) * hc] and rho:
 * pre[hc], post[hc], comb[hc * hc] as above (a fast backend computes m, rho and y itself). */
void dsv4_ref_hc_weights(const float *m, float rho, int hc, const float *scale, const float *base,
                         float hc_eps, int iters, float *pre, float *post, float *comb);

/* Sinkhorn part alone: comb[hc*hc] from its logits c[hc*hc] (already scaled and biased). */
void dsv4_ref_sinkhorn(float *c, int hc, float eps, int iters);

/* mHC post: Xo[k] = post_k A + sum_j comb[j * hc + k] X[j], k < hc.  A: [D], X, Xo: [hc, D]. */
void dsv4_ref_hc_post(const float *A, const float *X, const float *post, const float *comb, int hc,
                      int64_t D, float *Xo);

/*
 * Final collapse: m = rho * fn . flatten(X) (fn [hc, hc*D]), pre_j = sigmoid(m_j s + b_j) + hc_eps,
 * y = sum_j pre_j X[j].  `mix` as for hc_pre (NULL = compute here).
 */
void dsv4_ref_hc_head(const float *X, int hc, int64_t D, const float *fn, float scale,
                      const float *base, const float *mix, float norm_eps, float hc_eps, float *y);

/*
 * Sparse attention with sink for one query over n keys (K = V), keys in BF16
 * (the state's storage; every value converts to FP32 exactly):
 * q: [nh, dh]; keys[s] points at dh BF16 values; z_s = (q_h . k_s) * scale; M = max_s z_s
 * (sink excluded); P_s = exp(z_s - M), rounded to BF16 when bf16_p (the reference's P.V
 * operand); out_h = sum_s P_s k_s / (sum_s exp(z_s - M) + exp(sink_h - M)).  out: [nh, dh].
 * n == 0 gives zeros.  `probs` is scratch of n floats.
 */
void dsv4_ref_sparse_attn(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                          const float *sink, float scale, bool bf16_p, float *probs, float *out);

/*
 * Compressor pooling of one entry: n candidates, kv[s] and gate[s] point at d floats
 * (already offset to the half a candidate contributes; gate already ape-biased);
 * out[c] = sum_s softmax_s(gate[s][c]) kv[s][c], per channel.  n == 0 gives zeros.
 */
void dsv4_ref_compress_pool(const float *const *kv, const float *const *gate, int n, int64_t d,
                            float *out);

/* Normalised Walsh-Hadamard (Sylvester order) in place: x <- H_n x / sqrt(n), n a power of 2. */
void dsv4_ref_hadamard(float *x, int n);

/*
 * Lightning-indexer scores: q: [nh, d], w: [nh], keys[b] -> d BF16 values;
 * score_b = sum_h w_h * max(q_h . k_b, 0).
 */
void dsv4_ref_indexer_scores(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores);

/*
 * Indices of the k largest of v[0..n) (k <= n), by value descending, ties to the lower
 * index; idx[k].  O(n k), fine for the oracle.
 */
void dsv4_ref_topk(const float *v, int n, int k, int *idx);

/*
 * MoE routing of one token (model.md §3.5): logits[E] (FP32 router output);
 * s_e = func(logit_e) (sqrt(softplus), sigmoid or softmax over E).  Selection: hash != NULL
 * -> ids = hash[0..k) (must be < E, checked by the caller); else top-k of s_e + bias_e
 * (bias may be NULL).  weights_i = s_{id_i} / sum_j s_{id_j} if renorm, times `scale`.
 * scratch: E floats.
 */
void dsv4_ref_route(const float *logits, int E, enum dsv4_score_func func, const float *bias,
                    const int32_t *hash, int k, bool renorm, float scale, float *scratch, int *ids,
                    float *weights);

/* SwiGLU with clamp: h = silu(min(g, limit)) * clamp(u, -limit, limit) * w; limit <= 0: none. */
void dsv4_ref_swiglu(const float *g, const float *u, int64_t n, float limit, float w, float *h);

/* Rounds n floats in place to the nearest BF16 (RNE). */
void dsv4_ref_round_bf16(float *x, int64_t n);

#endif
