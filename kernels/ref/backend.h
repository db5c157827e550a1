/*
 * backend.h (kernels/ref) - internal: the per-row bodies of the ref
 * backend's ops, which the cpu backend (kernels/cpu/backend.c) runs in
 * parallel over its thread pool with its own inner kernels.  Sharing the
 * bodies keeps the state-layout logic (which ring row, which block, which
 * candidate) in one place: the two backends can then differ only where a
 * fast kernel replaces an oracle call.
 *
 * Every body handles one token (or one token and a head range) of its op
 * and writes only that token's outputs, so bodies of different tokens may
 * run concurrently; those that need scratch take a per-thread buffer of
 * dsv4_ref_task_bytes() bytes.
 */
#ifndef DSV4_REF_BACKEND_H
#define DSV4_REF_BACKEND_H

#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

/* The inner kernels a body calls (ref: the oracle; cpu: the fast versions). */
typedef void (*dsv4_attn_fn)(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                             const float *sink, float scale, bool bf16_p, float *probs, float *out);
typedef void (*dsv4_scores_fn)(const float *q, const float *w, int nh, int d,
                               const uint16_t *const *keys, int n, float *scores);
typedef void (*dsv4_topk_fn)(const float *v, int n, int k, int *idx);

/* Bytes of per-thread scratch the bodies need under `lim`. */
size_t dsv4_ref_task_bytes(const struct dsv4_be_limits *lim);

/* kv_compress, pass 1 for token t: cg[t] += ape[pos % r] (icg too). */
void dsv4_ref_compress_ape(const struct dsv4_kv_args *a, int t);
/* kv_compress, pass 2 for token t: its entry (and indexer key) when t completes a block. */
void dsv4_ref_compress_token(const struct dsv4_kv_args *a, int t);
/* kv_select for token t. */
void dsv4_ref_select_token(const struct dsv4_select_args *a, int t, void *scratch,
                           dsv4_scores_fn scores, dsv4_topk_fn topk);
/* attn for token t, heads [h0, h1). */
void dsv4_ref_attn_token(const struct dsv4_attn_args *a, int t, int h0, int h1, void *scratch,
                         dsv4_attn_fn attn);
/* kv_store for token t. */
void dsv4_ref_store_token(const struct dsv4_kv_args *a, int t);

/* hc_pre for token t given its mix projection m = fn . flatten(X[t]) (NULL: computed
 * here in double). */
void dsv4_ref_hc_pre_token(const struct dsv4_hc_params *p, const struct dsv4_tensor *X,
                           const float *norm_w, float eps, const struct dsv4_tensor *y,
                           const struct dsv4_tensor *xn, const struct dsv4_tensor *post,
                           const struct dsv4_tensor *comb, const float *mix, int64_t t);
void dsv4_ref_hc_post_token(const struct dsv4_tensor *A, const struct dsv4_tensor *X,
                            const struct dsv4_tensor *post, const struct dsv4_tensor *comb,
                            const struct dsv4_tensor *Xo, unsigned flags, int64_t t);
void dsv4_ref_hc_head_token(const struct dsv4_hc_params *p, const struct dsv4_tensor *X,
                            const float *norm_w, float eps, const struct dsv4_tensor *z,
                            const float *mix, int64_t t);
/* route for token t; scratch of E floats. */
void dsv4_ref_route_token(const struct dsv4_route_args *a, int t, float *scratch);
/* moe_combine for token t. */
void dsv4_ref_combine_token(const struct dsv4_tensor *slots, const struct dsv4_tensor *out,
                            unsigned flags, int64_t t);
/* rmsnorm / rope / act_sim / hadamard / swiglu / embed / convert for row r. */
void dsv4_ref_rmsnorm_row(const struct dsv4_tensor *x, const float *w, float eps,
                          const struct dsv4_tensor *y, unsigned flags, int64_t r);
void dsv4_ref_rope_row(const struct dsv4_tensor *x, const int64_t *pos, const struct dsv4_rope *rp,
                       bool inverse, unsigned flags, int64_t t);
void dsv4_ref_act_sim_row(const struct dsv4_tensor *x, enum dsv4_sim kind, int group, int64_t r);
void dsv4_ref_hadamard_row(const struct dsv4_tensor *x, unsigned flags, int64_t r);
void dsv4_ref_swiglu_row(const struct dsv4_tensor *g, const struct dsv4_tensor *u, float limit,
                         const float *w, const struct dsv4_tensor *h, unsigned flags, int64_t t);
void dsv4_ref_embed_row(const uint16_t *table, int64_t v0, int64_t nv,
                        const struct dsv4_tensor *tokens, const struct dsv4_tensor *out, int64_t t);
int32_t dsv4_ref_argmax_row(const float *row, int64_t V);

/* Fills the host-memory ops (alloc/free/upload/download/sync, copy2d, gather_rows,
 * fill_zero, convert, round_bf16, hc_expand) of a host backend. */
void dsv4_ref_host_ops(struct dsv4_backend *b);

/* Shape checks shared by the backends (abort on a mismatch: the engine's bug). */
void dsv4_be_check(const struct dsv4_tensor *t, enum dsv4_dtype dt, int ndim);
/* Rows and row stride of a 2-D (or flattened N-D, contiguous) view. */
int64_t dsv4_be_rows(const struct dsv4_tensor *t);
int64_t dsv4_be_cols(const struct dsv4_tensor *t);
int64_t dsv4_be_ld(const struct dsv4_tensor *t);

#endif
