/*
 * forward.c - trunk layers, head and MTP block of the CPU forward pass
 * (see engine/model/forward.h for the contract, ../shared/spec/model.md §3-§4 for
 * the math).
 *
 * Precision follows the reference's map (model.md §3.7): activations live in
 * FP32 arrays but are rounded to BF16 wherever the reference stores BF16
 * (residual streams, norm outputs, GEMM outputs, rotated q/kv); router,
 * compressor projections and head run in FP32; attention, softmaxes and
 * norms compute in FP32.  GEMMs go through dsv4_cpu_linear with the weight's
 * own activation path (FP8 per 128, NVFP4 W4A4, F32).
 *
 * Data layout of one call: the batch's tokens are concatenated (chunk order),
 * token i has (seq, pos, id); every per-token buffer is [T, ...] dense.
 */
#include "engine/model/forward.h"

#include "base/dsv4.h"
#include "kernels/cpu/ops.h"
#include "kernels/formats.h"
#include "kernels/ref/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct dsv4_fwd {
    const struct dsv4_model *m;
    struct dsv4_state *st;
    struct dsv4_pool *pool;
    struct dsv4_comm *comm;
    int N, T;
    int64_t ngmax, inhmax; /* largest per-rank share of groups / indexer heads (gather unit) */
    int64_t max_ctx, maxkeys;
    struct dsv4_rope rope_win, rope_comp;
    dsv4_fwd_layer_hook hook;
    void *hook_ctx;
    dsv4_fwd_route_hook rhook;
    void *rhook_ctx;
    /* per-token metadata */
    int *tseq;
    int64_t *tpos;
    int32_t *tid;
    /* activations */
    float *X, *X2, *Y, *xn, *mix, *post, *comb;
    float *cq, *q, *kv, *ckv, *cg, *ickv, *icg, *iq, *iw, *isend, *irecv;
    float *o, *ob, *zo, *z, *zrecv, *zfull, *A;
    const float **keys;
    int *nkeys;
    /* MoE */
    float *rl, *wts, *xb, *gb, *ub, *hb, *yb, *slots, *F;
    int *ids, *ecnt, *elist;
    /* head */
    float *hz, *lg, *lrecv;
    /* MTP */
    float *hn, *hp, *ep, *eb;
    size_t ws_bytes; /* per-thread scratch for attention probabilities / indexer */
};

/* ------------------------------------------------------------------ helpers */

static void lin(struct dsv4_fwd *f, const struct dsv4_lin *l, const float *x, int64_t m, float *y)
{
    dsv4_cpu_linear(f->pool, &l->w, l->act, x, m, y);
}

static void bf16(float *x, int64_t n)
{
    dsv4_ref_round_bf16(x, n);
}

/* The F32 projection fn . x of hc_pre / hc_head for T tokens as one GEMM. */
static void hc_mix(struct dsv4_fwd *f, const float *fn, int rows, const float *X, int T, float *mix)
{
    const struct dsv4_config *c = &f->m->cfg;
    struct dsv4_qweight w = {.fmt = DSV4_WFMT_F32,
                             .rows = rows,
                             .cols = (int64_t)c->hc_mult * c->hidden_size,
                             .w = fn,
                             .scale2 = 1.0f,
                             .input_scale = 1.0f};
    dsv4_cpu_linear(f->pool, &w, DSV4_ACT_F32, X, T, mix);
}

/* Units [*b, *e) of `units` owned by rank r of n (the split of engine/model/model.c). */
static void split_range(int64_t units, int r, int n, int64_t *b, int64_t *e)
{
    *b = units * r / n;
    *e = units * (r + 1) / n;
}

static int comm_gather(struct dsv4_fwd *f, const void *send, void *recv, size_t bytes)
{
    int rc = dsv4_comm_all_gather(f->comm, send, recv, bytes);
    if (rc)
        return dsv4_error_ctx(rc, "forward: all-gather of %zu bytes failed", bytes);
    return 0;
}

static int comm_sum(struct dsv4_fwd *f, float *buf, size_t n)
{
    int rc = dsv4_comm_all_reduce_sum_f32(f->comm, buf, n);
    if (rc)
        return dsv4_error_ctx(rc, "forward: all-reduce of %zu floats failed", n);
    return 0;
}

/* ------------------------------------------------------------------ init */

#define ALLOC(p, n)                                                   \
    do {                                                              \
        (p) = calloc(DSV4_MAX((size_t)(n), (size_t)1), sizeof(*(p))); \
        if (!(p))                                                     \
            goto nomem;                                               \
    } while (0)

int dsv4_fwd_init(const struct dsv4_model *m, struct dsv4_state *st, struct dsv4_pool *pool,
                  struct dsv4_comm *comm, int max_tokens, int64_t max_ctx, struct dsv4_fwd **out)
{
    const struct dsv4_config *c = &m->cfg;
    *out = NULL;
    int N = comm ? dsv4_comm_size(comm) : 1;
    if (N != m->nranks || (comm && dsv4_comm_rank(comm) != m->rank))
        return dsv4_error(DSV4_EINVAL, "forward: communicator rank %d/%d, model rank %d/%d",
                          comm ? dsv4_comm_rank(comm) : 0, N, m->rank, m->nranks);
    if (max_tokens < 1 || max_ctx < 1)
        return dsv4_error(DSV4_EINVAL, "forward: max_tokens %d, max_ctx %lld", max_tokens,
                          (long long)max_ctx);
    struct dsv4_fwd *f = calloc(1, sizeof *f);
    if (!f)
        return dsv4_error(DSV4_ENOMEM, "forward: out of memory");
    f->m = m;
    f->st = st;
    f->pool = pool;
    f->comm = N > 1 ? comm : NULL;
    f->N = N;
    f->T = max_tokens;
    f->max_ctx = max_ctx;
    int rd = c->qk_rope_head_dim;
    if (dsv4_ref_rope_init(&f->rope_win, rd, c->rope_theta, false, 1, 1, 1, 1) ||
        dsv4_ref_rope_init(&f->rope_comp, rd, c->compress_rope_theta, c->has_yarn, c->yarn_factor,
                           c->yarn_beta_fast, c->yarn_beta_slow,
                           (double)c->yarn_original_max_position)) {
        free(f);
        return dsv4_error(DSV4_EFORMAT, "forward: bad rope parameters");
    }
    int64_t T = max_tokens, hc = c->hc_mult, D = c->hidden_size, dh = c->head_dim;
    int64_t Rq = c->q_lora_rank, Ro = c->o_lora_rank, G = c->o_groups;
    int64_t IH = c->index_n_heads, id = c->index_head_dim, E = c->n_routed_experts;
    int64_t I = c->moe_intermediate_size, k = c->num_experts_per_tok;
    int64_t nh = m->nh, hpg = c->num_attention_heads / G;
    int nmix = (int)((2 + hc) * hc);
    /* keys of one query: the window plus, per layer kind, the top-k (ratio 4, indexer over up
     * to max_ctx/4 candidates) or every visible entry (other ratios) */
    int64_t ncomp = 1, nidx = 1;
    for (int l = 0; l < m->n_layers; l++) {
        int r = m->layers[l].ratio;
        if (r == 4) {
            ncomp = DSV4_MAX(ncomp, (int64_t)c->index_topk);
            nidx = DSV4_MAX(nidx, max_ctx / 4 + 1);
        } else if (r > 0) {
            ncomp = DSV4_MAX(ncomp, max_ctx / r + 1);
        }
    }
    /* a window never holds more positions than the context */
    f->maxkeys = DSV4_MIN((int64_t)c->sliding_window, max_ctx) + ncomp;
    f->ws_bytes = sizeof(float) * (f->maxkeys + 16) + (sizeof(float) + sizeof(void *)) * nidx + 64;
    if (E > (k + 1) * D) {
        free(f);
        return dsv4_error(DSV4_ENOTSUP, "forward: %lld experts exceed the router scratch",
                          (long long)E);
    }
    ALLOC(f->tseq, T);
    ALLOC(f->tpos, T);
    ALLOC(f->tid, T);
    ALLOC(f->X, T * hc * D);
    ALLOC(f->X2, T * hc * D);
    ALLOC(f->Y, T * D);
    ALLOC(f->xn, T * D);
    ALLOC(f->mix, T * nmix);
    ALLOC(f->post, T * hc);
    ALLOC(f->comb, T * hc * hc);
    ALLOC(f->cq, T * Rq);
    ALLOC(f->q, T * nh * dh);
    ALLOC(f->kv, T * dh);
    ALLOC(f->ckv, T * 2 * dh);
    ALLOC(f->cg, T * 2 * dh);
    ALLOC(f->ickv, T * 2 * id);
    ALLOC(f->icg, T * 2 * id);
    ALLOC(f->iq, T * IH * id);
    ALLOC(f->iw, T * IH);
    f->ngmax = (G + N - 1) / N;
    f->inhmax = (IH + N - 1) / N;
    /* exchange buffers only for N > 1 (single rank: 1-element placeholders) */
    int64_t X1 = N > 1 ? 1 : 0;
    ALLOC(f->isend, X1 * T * f->inhmax * (id + 1));
    ALLOC(f->irecv, X1 * N * T * f->inhmax * (id + 1));
    ALLOC(f->o, T * nh * dh);
    ALLOC(f->ob, T * hpg * dh);
    ALLOC(f->zo, T * f->ngmax * Ro);
    ALLOC(f->z, T * f->ngmax * Ro);
    ALLOC(f->zrecv, X1 * N * T * f->ngmax * Ro);
    ALLOC(f->zfull, X1 * T * G * Ro);
    ALLOC(f->A, T * D);
    ALLOC(f->keys, T * f->maxkeys);
    ALLOC(f->nkeys, T);
    ALLOC(f->rl, T * E);
    ALLOC(f->wts, T * k);
    ALLOC(f->ids, T * k);
    ALLOC(f->xb, T * k * D);
    ALLOC(f->gb, T * k * I);
    ALLOC(f->ub, T * k * I);
    ALLOC(f->hb, T * k * I);
    ALLOC(f->yb, T * k * D);
    ALLOC(f->slots, T * (k + 1) * D);
    ALLOC(f->F, T * D);
    ALLOC(f->ecnt, E + 1);
    ALLOC(f->elist, T * k);
    ALLOC(f->hz, T * D);
    ALLOC(f->lg, X1 * T * m->vchunk);
    ALLOC(f->lrecv, X1 * N * T * m->vchunk);
    ALLOC(f->hn, T * hc * D);
    ALLOC(f->hp, T * hc * D);
    ALLOC(f->ep, T * D);
    ALLOC(f->eb, T * D);
    /* every scratch a call uses, sized now (forward.h: calls do not allocate): the attention /
     * indexer workspace of each pool thread, and the activation buffers of dsv4_cpu_linear for
     * the widest quantised-activation GEMM (h_proj: T*hc rows of D; wo_b: T rows of G*Ro; ...) */
    for (int i = 0; i < dsv4_pool_threads(pool); i++)
        if (!dsv4_pool_scratch(pool, i, f->ws_bytes))
            goto nomem;
    int64_t wide = DSV4_MAX(DSV4_MAX(hc * D, Rq), DSV4_MAX(hpg * dh, DSV4_MAX(G * Ro, I)));
    if (dsv4_cpu_linear_reserve(pool, T, wide)) {
        dsv4_fwd_free(f);
        return dsv4_error(DSV4_ENOMEM, "forward: out of memory for GEMM scratch (%lld x %lld)",
                          (long long)T, (long long)wide);
    }
    *out = f;
    return 0;
nomem:
    dsv4_fwd_free(f);
    return dsv4_error(DSV4_ENOMEM, "forward: out of memory for scratch of %d tokens", max_tokens);
}

void dsv4_fwd_free(struct dsv4_fwd *f)
{
    if (!f)
        return;
    void *bufs[] = {
            f->tseq, f->tpos,  f->tid,   f->X,     f->X2,           f->Y,     f->xn,    f->mix,
            f->post, f->comb,  f->cq,    f->q,     f->kv,           f->ckv,   f->cg,    f->ickv,
            f->icg,  f->iq,    f->iw,    f->isend, f->irecv,        f->o,     f->ob,    f->zo,
            f->z,    f->zrecv, f->zfull, f->A,     (void *)f->keys, f->nkeys, f->rl,    f->wts,
            f->ids,  f->xb,    f->gb,    f->ub,    f->hb,           f->yb,    f->slots, f->F,
            f->ecnt, f->elist, f->hz,    f->lg,    f->lrecv,        f->hn,    f->hp,    f->ep,
            f->eb};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bufs); i++)
        free(bufs[i]);
    free(f);
}

void dsv4_fwd_set_layer_hook(struct dsv4_fwd *f, dsv4_fwd_layer_hook fn, void *ctx)
{
    f->hook = fn;
    f->hook_ctx = ctx;
}

void dsv4_fwd_set_route_hook(struct dsv4_fwd *f, dsv4_fwd_route_hook fn, void *ctx)
{
    f->rhook = fn;
    f->rhook_ctx = ctx;
}

/* ------------------------------------------------------------------ attention */

struct attn_ctx {
    struct dsv4_fwd *f;
    const struct dsv4_layer_w *w;
    int layer;
    const struct dsv4_rope *rope;
};

/*
 * Pooling candidates of compressed entry b (model.md §3.3): for r = 4 the
 * previous block's tokens with their first halves (offset 0), then block b's
 * tokens at offset `half` (the second halves; 0 when r = 128, no overlap).
 * kv_off / gate_off locate the compressor's kv and gate inside a token's
 * state record.  Returns the candidate count (at most 2r).
 */
static int pool_candidates(struct dsv4_fwd *f, int seq, int layer, int64_t b, int r, int64_t kv_off,
                           int64_t gate_off, int64_t half, const float **kvp, const float **gp)
{
    int n = 0;

    for (int64_t q = (r == 4 && b > 0 ? b - 1 : b) * r; q < (b + 1) * r; q++) {
        const float *rq = dsv4_state_rec(f->st, seq, layer, q);
        int64_t off = q < b * r ? 0 : half;
        DSV4_ASSERT(rq);
        kvp[n] = rq + kv_off + off;
        gp[n++] = rq + gate_off + off;
    }
    return n;
}

/* Writes token t's window kv and compressor inputs, emits completed entries. */
static void write_token(struct dsv4_fwd *f, const struct dsv4_layer_w *w, int layer, int t,
                        const struct dsv4_rope *rope)
{
    const struct dsv4_config *c = &f->m->cfg;
    const struct dsv4_state_layout *y = dsv4_state_layout(f->st, layer);
    int seq = f->tseq[t];
    int64_t p = f->tpos[t], dh = c->head_dim, id = c->index_head_dim;
    int64_t rd = c->qk_rope_head_dim;
    float *rec = dsv4_state_rec(f->st, seq, layer, p);
    DSV4_ASSERT(rec);
    memcpy(rec + y->kv, f->kv + t * dh, sizeof(float) * dh);
    int r = y->ratio;
    if (r == 0)
        return;
    int64_t cw = y->coff * dh, slot = p % r;
    for (int64_t i = 0; i < cw; i++) {
        rec[y->ckv + i] = f->ckv[t * cw + i];
        rec[y->cgate + i] = f->cg[t * cw + i] + w->c_ape[slot * cw + i];
    }
    if (r == 4)
        for (int64_t i = 0; i < 2 * id; i++) {
            rec[y->ikv + i] = f->ickv[t * 2 * id + i];
            rec[y->igate + i] = f->icg[t * 2 * id + i] + w->ic_ape[slot * 2 * id + i];
        }
    if ((p + 1) % r)
        return;
    int64_t b = (p + 1) / r - 1;
    const float *kvp[256], *gp[256];
    float tmp[1024];
    DSV4_ASSERT(2 * r <= 256 && dh <= 1024);
    int n = pool_candidates(f, seq, layer, b, r, y->ckv, y->cgate, r == 4 ? dh : 0, kvp, gp);
    float *ent = dsv4_state_entry(f->st, seq, layer, b);
    DSV4_ASSERT(ent);
    dsv4_ref_compress_pool(kvp, gp, n, dh, tmp);
    dsv4_ref_rmsnorm(tmp, w->c_norm, dh, (float)c->rms_norm_eps, tmp);
    bf16(tmp, dh);
    dsv4_ref_rope(rope, tmp + dh - rd, b * r, false);
    bf16(tmp, dh);
    dsv4_act_sim_fp8(tmp, dh - rd, 64);
    memcpy(ent, tmp, sizeof(float) * dh);
    if (r != 4)
        return;
    /* indexer key of the same block */
    n = pool_candidates(f, seq, layer, b, r, y->ikv, y->igate, id, kvp, gp);
    float *ik = dsv4_state_ikey(f->st, seq, layer, b);
    DSV4_ASSERT(ik);
    dsv4_ref_compress_pool(kvp, gp, n, id, tmp);
    dsv4_ref_rmsnorm(tmp, w->ic_norm, id, (float)c->rms_norm_eps, tmp);
    bf16(tmp, id);
    dsv4_ref_rope(rope, tmp + id - rd, b * r, false);
    bf16(tmp, id);
    dsv4_ref_hadamard(tmp, (int)id);
    bf16(tmp, id);
    dsv4_act_sim_fp4(tmp, id, 32);
    memcpy(ik, tmp, sizeof(float) * id);
}

/* Key list of token t: its window, then the visible (or indexer-selected) entries. */
static void build_keys(void *arg, int64_t t, int thread)
{
    struct attn_ctx *a = arg;
    struct dsv4_fwd *f = a->f;
    const struct dsv4_config *c = &f->m->cfg;
    const struct dsv4_state_layout *y = dsv4_state_layout(f->st, a->layer);
    int seq = f->tseq[t];
    int64_t p = f->tpos[t];
    const float **keys = f->keys + t * f->maxkeys;
    int n = 0;
    int64_t w0 = DSV4_MAX((int64_t)0, p - c->sliding_window + 1);
    for (int64_t q = w0; q <= p; q++) {
        const float *rq = dsv4_state_rec(f->st, seq, a->layer, q);
        DSV4_ASSERT(rq);
        keys[n++] = rq + y->kv;
    }
    int r = y->ratio;
    if (r > 0) {
        int64_t nvis = (p + 1) / r;
        if (r != 4 || nvis <= c->index_topk) {
            DSV4_ASSERT(n + nvis <= f->maxkeys);
            for (int64_t b = 0; b < nvis; b++)
                keys[n++] = dsv4_state_entry(f->st, seq, a->layer, b);
        } else {
            char *ws = dsv4_pool_scratch(f->pool, thread, f->ws_bytes);
            float *scores = (float *)ws;
            const float **ik = (const float **)(ws + ((sizeof(float) * nvis + 15) & ~(size_t)15));
            for (int64_t b = 0; b < nvis; b++)
                ik[b] = dsv4_state_ikey(f->st, seq, a->layer, b);
            int64_t IH = c->index_n_heads, id = c->index_head_dim;
            dsv4_ref_indexer_scores(f->iq + t * IH * id, f->iw + t * IH, (int)IH, (int)id, ik,
                                    (int)nvis, scores);
            int kk = c->index_topk;
            int *sel = (int *)ik; /* reuse: the key pointers are not needed after scoring */
            dsv4_ref_topk(scores, (int)nvis, kk, sel);
            for (int i = 0; i < kk; i++)
                keys[n++] = dsv4_state_entry(f->st, seq, a->layer, sel[i]);
        }
    }
    f->nkeys[t] = n;
}

/* One head of one token: o = attn(q, keys), inverse RoPE, BF16. */
static void attend(void *arg, int64_t i, int thread)
{
    struct attn_ctx *a = arg;
    struct dsv4_fwd *f = a->f;
    const struct dsv4_config *c = &f->m->cfg;
    int nh = f->m->nh;
    int64_t t = i / nh, h = i % nh, dh = c->head_dim, rd = c->qk_rope_head_dim;
    float *probs = dsv4_pool_scratch(f->pool, thread, f->ws_bytes);
    float *o = f->o + (t * nh + h) * dh;
    dsv4_cpu_sparse_attn(f->q + (t * nh + h) * dh, 1, (int)dh, f->keys + t * f->maxkeys,
                         f->nkeys[t], a->w->sink + h, 1.0f / sqrtf((float)dh), true, probs, o);
    bf16(o, dh);
    dsv4_ref_rope(a->rope, o + dh - rd, f->tpos[t], true);
    bf16(o, dh);
}

static void norm_rows(float *x, const float *w, int64_t rows, int64_t n, float eps)
{
    for (int64_t r = 0; r < rows; r++) {
        dsv4_ref_rmsnorm(x + r * n, w, n, eps, x + r * n);
        bf16(x + r * n, n);
    }
}

static int attention(struct dsv4_fwd *f, int layer, int T)
{
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    const struct dsv4_layer_w *w = &m->layers[layer];
    int64_t D = c->hidden_size, dh = c->head_dim, rd = c->qk_rope_head_dim, Rq = c->q_lora_rank;
    int64_t nh = m->nh, Ro = c->o_lora_rank, G = c->o_groups, hpg = c->num_attention_heads / G;
    int64_t IH = c->index_n_heads, id = c->index_head_dim, inh = m->inh;
    float eps = (float)c->rms_norm_eps;
    const struct dsv4_rope *rope = w->ratio > 0 ? &f->rope_comp : &f->rope_win;
    int rc;
    const float *xn = f->xn;
    /* query path */
    lin(f, &w->wq_a, xn, T, f->cq);
    bf16(f->cq, T * Rq);
    norm_rows(f->cq, w->q_norm, T, Rq, eps);
    if (nh > 0)
        lin(f, &w->wq_b, f->cq, T, f->q);
    bf16(f->q, T * nh * dh);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < nh; h++) {
            float *qh = f->q + (t * nh + h) * dh;
            dsv4_ref_rmsnorm(qh, NULL, dh, eps, qh);
            bf16(qh, dh);
            dsv4_ref_rope(rope, qh + dh - rd, f->tpos[t], false);
            bf16(qh + dh - rd, rd);
        }
    /* kv path */
    lin(f, &w->wkv, xn, T, f->kv);
    bf16(f->kv, T * dh);
    norm_rows(f->kv, w->kv_norm, T, dh, eps);
    for (int64_t t = 0; t < T; t++) {
        float *kv = f->kv + t * dh;
        dsv4_ref_rope(rope, kv + dh - rd, f->tpos[t], false);
        bf16(kv + dh - rd, rd);
        dsv4_act_sim_fp8(kv, dh - rd, 64);
    }
    if (w->ratio > 0) {
        lin(f, &w->c_wkv, xn, T, f->ckv);
        lin(f, &w->c_wgate, xn, T, f->cg);
    }
    if (w->ratio == 4) {
        lin(f, &w->ic_wkv, xn, T, f->ickv);
        lin(f, &w->ic_wgate, xn, T, f->icg);
        /* indexer queries of the local heads + their weights, then gathered */
        float *iql = f->iq; /* local [T, inh, id] first, expanded below */
        if (inh > 0) {
            lin(f, &w->i_wq_b, f->cq, T, iql);
            bf16(iql, T * inh * id);
            lin(f, &w->i_wproj, xn, T, f->iw);
            bf16(f->iw, T * inh);
        }
        float wscale = 1.0f / sqrtf((float)id) / sqrtf((float)IH);
        for (int64_t t = 0; t < T; t++) {
            for (int64_t h = 0; h < inh; h++) {
                float *qh = iql + (t * inh + h) * id;
                dsv4_ref_rope(rope, qh + id - rd, f->tpos[t], false);
                bf16(qh, id);
                dsv4_ref_hadamard(qh, (int)id);
                bf16(qh, id);
                dsv4_act_sim_fp4(qh, id, 32);
                f->iw[t * inh + h] *= wscale;
            }
        }
        if (f->N > 1) {
            /* per token: [inhmax * id q values][inhmax weights], padded */
            int64_t per = f->inhmax * (id + 1);
            memset(f->isend, 0, sizeof(float) * T * per);
            for (int64_t t = 0; t < T; t++) {
                memcpy(f->isend + t * per, iql + t * inh * id, sizeof(float) * inh * id);
                memcpy(f->isend + t * per + f->inhmax * id, f->iw + t * inh, sizeof(float) * inh);
            }
            if ((rc = comm_gather(f, f->isend, f->irecv, sizeof(float) * T * per)))
                return rc;
            for (int r = 0; r < f->N; r++) {
                int64_t h0, h1;
                split_range(IH, r, f->N, &h0, &h1);
                for (int64_t t = 0; t < T; t++) {
                    const float *src = f->irecv + ((int64_t)r * T + t) * per;
                    memcpy(f->iq + (t * IH + h0) * id, src, sizeof(float) * (h1 - h0) * id);
                    memcpy(f->iw + t * IH + h0, src + f->inhmax * id, sizeof(float) * (h1 - h0));
                }
            }
        }
    }
    /* state: records in position order, then queries in parallel */
    for (int t = 0; t < T; t++) {
        if ((rc = dsv4_state_reserve(f->st, f->tseq[t], layer, f->tpos[t] + 1)))
            return rc;
        write_token(f, w, layer, t, rope);
    }
    struct attn_ctx a = {f, w, layer, rope};
    dsv4_pool_run(f->pool, build_keys, &a, T);
    dsv4_pool_run(f->pool, attend, &a, T * nh);
    /* grouped wo_a over the local groups */
    int64_t ng = m->ng, zs = f->ngmax * Ro; /* z row stride */
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(f->ob + t * hpg * dh, f->o + (t * nh + g * hpg) * dh, sizeof(float) * hpg * dh);
        struct dsv4_lin sub = w->wo_a;
        bool aligned = w->wo_a.w.fmt != DSV4_WFMT_FP8 || (Ro % 128) == 0;
        if (aligned) {
            sub.w.rows = Ro;
            if (w->wo_a.w.fmt == DSV4_WFMT_FP8) {
                sub.w.w = (const uint8_t *)w->wo_a.w.w + g * Ro * (hpg * dh);
                sub.w.scale = w->wo_a.w.scale + (g * Ro / 128) * ((hpg * dh + 127) / 128);
            } else {
                size_t es = w->wo_a.w.fmt == DSV4_WFMT_BF16 ? 2 : 4;
                sub.w.w = (const uint8_t *)w->wo_a.w.w + g * Ro * (hpg * dh) * es;
            }
            lin(f, &sub, f->ob, T, f->zo);
            for (int64_t t = 0; t < T; t++)
                memcpy(f->z + t * zs + g * Ro, f->zo + t * Ro, sizeof(float) * Ro);
        } else {
            /* scale blocks straddle groups: compute all local rows, keep group g's */
            lin(f, &w->wo_a, f->ob, T, f->zo);
            for (int64_t t = 0; t < T; t++)
                memcpy(f->z + t * zs + g * Ro, f->zo + t * ng * Ro + g * Ro, sizeof(float) * Ro);
        }
    }
    bf16(f->z, T * zs);
    const float *zf = f->z;
    if (f->N > 1) {
        if ((rc = comm_gather(f, f->z, f->zrecv, sizeof(float) * T * zs)))
            return rc;
        for (int r = 0; r < f->N; r++) {
            int64_t g0, g1;
            split_range(G, r, f->N, &g0, &g1);
            for (int64_t t = 0; t < T; t++)
                memcpy(f->zfull + t * G * Ro + g0 * Ro, f->zrecv + ((int64_t)r * T + t) * zs,
                       sizeof(float) * (g1 - g0) * Ro);
        }
        zf = f->zfull;
    }
    lin(f, &w->wo_b, zf, T, f->A);
    bf16(f->A, T * D);
    return 0;
}

/* ------------------------------------------------------------------ MoE */

static int moe(struct dsv4_fwd *f, int layer, int T)
{
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    const struct dsv4_layer_w *w = &m->layers[layer];
    int64_t D = c->hidden_size, I = c->moe_intermediate_size, E = c->n_routed_experts;
    int k = c->num_experts_per_tok;
    int rc;
    enum dsv4_score_func func = DSV4_SCORE_SQRTSOFTPLUS;
    if (!strcmp(c->scoring_func, "sigmoid"))
        func = DSV4_SCORE_SIGMOID;
    else if (!strcmp(c->scoring_func, "softmax"))
        func = DSV4_SCORE_SOFTMAX;
    lin(f, &w->gate, f->xn, T, f->rl);
    for (int64_t t = 0; t < T; t++) {
        int *ids = f->ids + t * k;
        float *wt = f->wts + t * k;
        const int32_t *hash = w->hash ? w->tid2eid + (int64_t)f->tid[t] * k : NULL;
        /* the slot buffer is free until the experts run: router scratch (E <= (k+1) D) */
        dsv4_ref_route(f->rl + t * E, (int)E, func, w->gate_bias, hash, k, c->norm_topk_prob,
                       (float)c->routed_scaling_factor, f->slots, ids, wt);
        /* sum in expert-id order: sort the selection by id */
        for (int i = 1; i < k; i++)
            for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
                int ti = ids[j];
                ids[j] = ids[j - 1];
                ids[j - 1] = ti;
                float tw = wt[j];
                wt[j] = wt[j - 1];
                wt[j - 1] = tw;
            }
    }
    if (f->rhook)
        f->rhook(f->rhook_ctx, layer, T, k, f->ids, f->tid);
    memset(f->slots, 0, sizeof(float) * T * (k + 1) * D);
    /* counting sort of the (token, slot) pairs by local expert: ecnt[e] = start offset */
    memset(f->ecnt, 0, sizeof(int) * (E + 1));
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < k; i++) {
            int e = f->ids[t * k + i];
            if (e >= m->e0 && e < m->e1)
                f->ecnt[e + 1]++;
        }
    for (int64_t e = 0; e < E; e++)
        f->ecnt[e + 1] += f->ecnt[e];
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < k; i++) {
            int e = f->ids[t * k + i];
            if (e >= m->e0 && e < m->e1)
                f->elist[f->ecnt[e]++] = (int)(t * k + i);
        }
    /* ecnt[e] is now the end of e's run; its start is ecnt[e - 1] (0 for e = 0) */
    float limit = (float)c->swiglu_limit;
    for (int e = m->e0; e < m->e1; e++) {
        int beg = e > 0 ? f->ecnt[e - 1] : 0, n = f->ecnt[e] - beg;
        if (n <= 0)
            continue;
        const struct dsv4_expert_w *ew = &w->experts[e - m->e0];
        const int *lst = f->elist + beg;
        for (int j = 0; j < n; j++)
            memcpy(f->xb + j * D, f->xn + (lst[j] / k) * D, sizeof(float) * D);
        lin(f, &ew->w1, f->xb, n, f->gb);
        lin(f, &ew->w3, f->xb, n, f->ub);
        bf16(f->gb, n * I);
        bf16(f->ub, n * I);
        for (int j = 0; j < n; j++)
            dsv4_ref_swiglu(f->gb + j * I, f->ub + j * I, I, limit, f->wts[lst[j]], f->hb + j * I);
        bf16(f->hb, n * I);
        lin(f, &ew->w2, f->hb, n, f->yb);
        bf16(f->yb, n * D);
        for (int j = 0; j < n; j++) {
            int64_t t = lst[j] / k, i = lst[j] % k;
            memcpy(f->slots + (t * (k + 1) + i) * D, f->yb + j * D, sizeof(float) * D);
        }
    }
    /* shared expert on rank 0 (slot k) */
    if (m->rank == 0) {
        lin(f, &w->shared.w1, f->xn, T, f->gb);
        lin(f, &w->shared.w3, f->xn, T, f->ub);
        bf16(f->gb, T * I);
        bf16(f->ub, T * I);
        for (int64_t t = 0; t < T; t++)
            dsv4_ref_swiglu(f->gb + t * I, f->ub + t * I, I, limit, 1.0f, f->hb + t * I);
        bf16(f->hb, T * I);
        lin(f, &w->shared.w2, f->hb, T, f->yb);
        bf16(f->yb, T * D);
        for (int64_t t = 0; t < T; t++)
            memcpy(f->slots + (t * (k + 1) + k) * D, f->yb + t * D, sizeof(float) * D);
    }
    if (f->N > 1 && (rc = comm_sum(f, f->slots, (size_t)T * (k + 1) * D)))
        return rc;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            double acc = 0.0;
            for (int i = 0; i < k; i++)
                acc += f->slots[(t * (k + 1) + i) * D + d];
            acc += f->slots[(t * (k + 1) + k) * D + d];
            f->F[t * D + d] = (float)acc;
        }
    bf16(f->F, T * D);
    return 0;
}

/* ------------------------------------------------------------------ layer / head */

/* (Y, post, comb) = HC_PRE(X); xn = bf16(RMSNorm_w(bf16(Y))). */
struct hc_job {
    struct dsv4_fwd *f;
    const struct dsv4_hc_w *hw;
    const float *nw, *A;
};

static void hc_pre_task(void *arg, int64_t t, int thread)
{
    struct hc_job *j = arg;
    struct dsv4_fwd *f = j->f;
    const struct dsv4_config *c = &f->m->cfg;
    int hc = c->hc_mult, nmix = (2 + hc) * hc;
    int64_t D = c->hidden_size;
    float *y = f->Y + t * D;
    (void)thread;
    dsv4_ref_hc_pre(f->X + t * hc * D, hc, D, j->hw->fn, j->hw->scale, j->hw->base,
                    f->mix + t * nmix, (float)c->rms_norm_eps, (float)c->hc_eps,
                    c->hc_sinkhorn_iters, y, f->post + t * hc, f->comb + t * hc * hc);
    bf16(y, D);
    dsv4_ref_rmsnorm(y, j->nw, D, (float)c->rms_norm_eps, f->xn + t * D);
    bf16(f->xn + t * D, D);
}

/* (Y, post, comb) = HC_PRE(X); xn = bf16(RMSNorm_w(bf16(Y))), tokens in parallel. */
static void hc_pre_norm(struct dsv4_fwd *f, const struct dsv4_hc_w *hw, const float *nw, int T)
{
    const struct dsv4_config *c = &f->m->cfg;
    int hc = c->hc_mult, nmix = (2 + hc) * hc;
    hc_mix(f, hw->fn, nmix, f->X, T, f->mix);
    struct hc_job j = {f, hw, nw, NULL};
    dsv4_pool_run(f->pool, hc_pre_task, &j, T);
}

static void hc_post_task(void *arg, int64_t t, int thread)
{
    struct hc_job *j = arg;
    struct dsv4_fwd *f = j->f;
    const struct dsv4_config *c = &f->m->cfg;
    int hc = c->hc_mult;
    int64_t D = c->hidden_size;
    (void)thread;
    float *xo = f->X2 + t * hc * D;
    dsv4_ref_hc_post(j->A + t * D, f->X + t * hc * D, f->post + t * hc, f->comb + t * hc * hc, hc,
                     D, xo);
    bf16(xo, hc * D);
}

/* X = bf16(HC_POST(A, X, post, comb)), tokens in parallel. */
static void hc_post_all(struct dsv4_fwd *f, const float *A, int T)
{
    struct hc_job j = {f, NULL, NULL, A};
    dsv4_pool_run(f->pool, hc_post_task, &j, T);
    float *tmp = f->X;
    f->X = f->X2;
    f->X2 = tmp;
}

static int layer_forward(struct dsv4_fwd *f, int layer, int T)
{
    const struct dsv4_layer_w *w = &f->m->layers[layer];
    int rc;
    hc_pre_norm(f, &w->hc_attn, w->attn_norm, T);
    if ((rc = attention(f, layer, T)))
        return rc;
    hc_post_all(f, f->A, T);
    hc_pre_norm(f, &w->hc_ffn, w->ffn_norm, T);
    if ((rc = moe(f, layer, T)))
        return rc;
    hc_post_all(f, f->F, T);
    return 0;
}

/* logits rows for tokens rows[0..nr) of X: hc_head -> norm -> head, gathered over ranks. */
static int head(struct dsv4_fwd *f, const struct dsv4_hc_w *hw, const float *nw, const int *rows,
                int nr, float *logits)
{
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    int hc = c->hc_mult, rc;
    int64_t D = c->hidden_size, V = c->vocab_size, vc = m->vchunk;
    for (int i = 0; i < nr; i++)
        memcpy(f->X2 + (int64_t)i * hc * D, f->X + (int64_t)rows[i] * hc * D,
               sizeof(float) * hc * D);
    hc_mix(f, hw->fn, hc, f->X2, nr, f->mix);
    for (int64_t i = 0; i < nr; i++) {
        float *z = f->hz + i * D;
        dsv4_ref_hc_head(f->X2 + i * hc * D, hc, D, hw->fn, hw->scale[0], hw->base, f->mix + i * hc,
                         (float)c->rms_norm_eps, (float)c->hc_eps, z);
        bf16(z, D);
        dsv4_ref_rmsnorm(z, nw, D, (float)c->rms_norm_eps, z);
        bf16(z, D);
    }
    if (f->N == 1) {
        lin(f, &m->head, f->hz, nr, logits);
        return 0;
    }
    memset(f->lg, 0, sizeof(float) * nr * vc);
    if (m->nv > 0) {
        /* rows of this rank: [nr, nv] packed into chunks of vc */
        lin(f, &m->head, f->hz, nr, f->lrecv);
        for (int64_t i = 0; i < nr; i++)
            memcpy(f->lg + i * vc, f->lrecv + i * m->nv, sizeof(float) * m->nv);
    }
    if ((rc = comm_gather(f, f->lg, f->lrecv, sizeof(float) * nr * vc)))
        return rc;
    for (int r = 0; r < f->N; r++) {
        int64_t v0 = r * vc, nv = DSV4_MIN(vc, V - v0);
        if (nv <= 0)
            continue;
        for (int64_t i = 0; i < nr; i++)
            memcpy(logits + i * V + v0, f->lrecv + ((int64_t)r * nr + i) * vc, sizeof(float) * nv);
    }
    return 0;
}

/* Embedding rows of tokens into out [T, D] (vocab-parallel: disjoint rows summed). */
static int embed(struct dsv4_fwd *f, int T, float *out)
{
    const struct dsv4_model *m = f->m;
    int64_t D = m->cfg.hidden_size;
    for (int64_t t = 0; t < T; t++) {
        int64_t v = f->tid[t];
        float *o = out + t * D;
        if (v >= m->v0 && v < m->v0 + m->nv) {
            const uint16_t *e = m->embed + (v - m->v0) * D;
            for (int64_t d = 0; d < D; d++)
                o[d] = dsv4_bf16_to_f32(e[d]);
        } else {
            memset(o, 0, sizeof(float) * D);
        }
    }
    return f->N > 1 ? comm_sum(f, out, (size_t)T * D) : 0;
}

/* Fills per-token metadata; checks the batch. */
static int setup(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, int *Tout)
{
    const struct dsv4_config *c = &f->m->cfg;
    int T = 0;
    if (nseq < 1)
        return dsv4_error(DSV4_EINVAL, "forward: empty batch");
    for (int s = 0; s < nseq; s++) {
        const struct dsv4_fwd_seq *q = &seqs[s];
        if (!dsv4_state_seq_valid(f->st, q->seq))
            return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", q->seq);
        for (int j = 0; j < s; j++)
            if (seqs[j].seq == q->seq)
                return dsv4_error(DSV4_EINVAL, "forward: sequence %d twice in one batch", q->seq);
        if (q->n < 1 || q->n > f->T - T)
            return dsv4_error(DSV4_EINVAL, "forward: batch exceeds %d tokens", f->T);
        if (q->start < 0 || q->start + q->n > f->max_ctx)
            return dsv4_error(DSV4_ERANGE, "forward: positions %lld..%lld beyond max_ctx %lld",
                              (long long)q->start, (long long)(q->start + q->n - 1),
                              (long long)f->max_ctx);
        for (int i = 0; i < q->n; i++) {
            if (q->tokens[i] < 0 || q->tokens[i] >= c->vocab_size)
                return dsv4_error(DSV4_EINVAL, "forward: token id %d outside vocab %d",
                                  q->tokens[i], c->vocab_size);
            f->tseq[T] = q->seq;
            f->tpos[T] = q->start + i;
            f->tid[T] = q->tokens[i];
            T++;
        }
    }
    *Tout = T;
    return 0;
}

static int roll_to(struct dsv4_fwd *f, int seq, int l0, int l1, int64_t start)
{
    for (int l = l0; l < l1; l++) {
        int64_t len = dsv4_state_len(f->st, seq, l);
        if (start > len)
            return dsv4_error(DSV4_EINVAL, "forward: chunk starts at %lld, sequence has %lld",
                              (long long)start, (long long)len);
        if (start < len) {
            int rc = dsv4_state_truncate(f->st, seq, l, start);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static void commit(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, int l0, int l1)
{
    for (int s = 0; s < nseq; s++)
        for (int l = l0; l < l1; l++)
            dsv4_state_commit(f->st, seqs[s].seq, l, seqs[s].start + seqs[s].n);
}

static int logits_rows(const struct dsv4_fwd_seq *seqs, int nseq, int T, bool all, int *rows)
{
    if (all) {
        for (int i = 0; i < T; i++)
            rows[i] = i;
        return T;
    }
    int off = 0;
    for (int s = 0; s < nseq; s++) {
        off += seqs[s].n;
        rows[s] = off - 1;
    }
    return nseq;
}

int dsv4_fwd_trunk(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, float *logits,
                   bool all_logits, float *hidden)
{
    const struct dsv4_config *c = &f->m->cfg;
    int T, rc, L = c->num_hidden_layers, hc = c->hc_mult;
    int64_t D = c->hidden_size;
    if ((rc = setup(f, seqs, nseq, &T)))
        return rc;
    for (int s = 0; s < nseq; s++)
        if ((rc = roll_to(f, seqs[s].seq, 0, L, seqs[s].start)))
            return rc;
    if ((rc = embed(f, T, f->Y)))
        return rc;
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < hc; j++)
            memcpy(f->X + (t * hc + j) * D, f->Y + t * D, sizeof(float) * D);
    for (int l = 0; l < L; l++) {
        if ((rc = layer_forward(f, l, T)))
            return rc;
        if (f->hook)
            f->hook(f->hook_ctx, l, f->X, T, hc, D);
    }
    commit(f, seqs, nseq, 0, L);
    if (hidden)
        memcpy(hidden, f->X, sizeof(float) * T * hc * D);
    if (logits) {
        int *rows = f->nkeys; /* free now */
        int nr = logits_rows(seqs, nseq, T, all_logits, rows);
        if ((rc = head(f, &f->m->hc_head, f->m->norm, rows, nr, logits)))
            return rc;
    }
    return 0;
}

int dsv4_fwd_mtp(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, const float *hidden,
                 float *logits, bool all_logits, float *hidden_out)
{
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    int T, rc, L = c->num_hidden_layers, hc = c->hc_mult;
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    if (!m->has_mtp)
        return dsv4_error(DSV4_ENOTSUP, "forward: the checkpoint has no MTP block");
    if ((rc = setup(f, seqs, nseq, &T)))
        return rc;
    for (int s = 0; s < nseq; s++)
        if ((rc = roll_to(f, seqs[s].seq, L, L + 1, seqs[s].start)))
            return rc;
    if ((rc = embed(f, T, f->eb)))
        return rc;
    norm_rows(f->eb, m->enorm, T, D, eps);
    lin(f, &m->e_proj, f->eb, T, f->ep);
    bf16(f->ep, T * D);
    memcpy(f->hn, hidden, sizeof(float) * T * hc * D);
    norm_rows(f->hn, m->hnorm, (int64_t)T * hc, D, eps);
    lin(f, &m->h_proj, f->hn, (int64_t)T * hc, f->hp);
    bf16(f->hp, (int64_t)T * hc * D);
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < hc; j++)
            for (int64_t d = 0; d < D; d++)
                f->X[(t * hc + j) * D + d] = f->hp[(t * hc + j) * D + d] + f->ep[t * D + d];
    bf16(f->X, (int64_t)T * hc * D);
    if ((rc = layer_forward(f, L, T)))
        return rc;
    commit(f, seqs, nseq, L, L + 1);
    if (hidden_out)
        memcpy(hidden_out, f->X, sizeof(float) * T * hc * D);
    if (logits) {
        int *rows = f->nkeys;
        int nr = logits_rows(seqs, nseq, T, all_logits, rows);
        if ((rc = head(f, &m->mtp_hc_head, m->mtp_norm, rows, nr, logits)))
            return rc;
    }
    return 0;
}

int dsv4_fwd_rollback(struct dsv4_fwd *f, int seq, int64_t len)
{
    if (!dsv4_state_seq_valid(f->st, seq))
        return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", seq);
    return roll_to(f, seq, 0, f->m->cfg.num_hidden_layers, len);
}

int dsv4_fwd_mtp_rollback(struct dsv4_fwd *f, int seq, int64_t len)
{
    int L = f->m->cfg.num_hidden_layers;
    if (!f->m->has_mtp)
        return 0;
    if (!dsv4_state_seq_valid(f->st, seq))
        return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", seq);
    return roll_to(f, seq, L, L + 1, len);
}

int64_t dsv4_fwd_len(const struct dsv4_fwd *f, int seq)
{
    return dsv4_state_len(f->st, seq, 0);
}

int64_t dsv4_fwd_mtp_len(const struct dsv4_fwd *f, int seq)
{
    return f->m->has_mtp ? dsv4_state_len(f->st, seq, f->m->cfg.num_hidden_layers) : 0;
}
