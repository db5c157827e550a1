/*
 * forward.c - trunk layers, head and MTP block of the forward pass over the
 * backend op table (see engine/model/forward.h for the contract,
 * ../shared/spec/model.md §3-§4 for the math).
 *
 * Precision follows the reference's map (model.md §3.7): activations live in
 * FP32 buffers but are rounded to BF16 wherever the reference stores BF16
 * (residual streams, norm outputs, GEMM outputs, rotated q/kv); router,
 * compressor projections and head run in FP32; attention, softmaxes and
 * norms compute in FP32.  GEMMs use the weight's own activation path (FP8
 * per 128, NVFP4 W4A4, F32).
 *
 * This file never touches activation memory itself: every step is an op of
 * the backend (kernels/backend.h), the communicator moves data between
 * ranks, and the host only fills the per-token metadata and uploads it.
 * Data layout of one call: the batch's tokens are concatenated (chunk
 * order), token i has (slot, pos, id); every per-token buffer is [T, ...].
 */
#include "engine/model/forward.h"

#include "base/dsv4.h"
#include "engine/io/contract.h"
#include "engine/model/model_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { FWD_MAX_GRAPHS = 96, GRAPH_TRUNK = 0, GRAPH_MTP = 1 };

struct dsv4_fwd {
    const struct dsv4_model *m;
    struct dsv4_state *st;
    struct dsv4_backend *be;
    struct dsv4_comm *comm;
    int N, T, max_out;
    int64_t ngmax, inhmax, Ish; /* per-rank share of groups / indexer heads; shared width */
    struct dsv4_rope rope_win, rope_comp;
    dsv4_fwd_layer_hook hook;
    void *hook_ctx;
    dsv4_fwd_route_hook rhook;
    void *rhook_ctx;
    /* per-token metadata: host copies and backend copies */
    int32_t *h_slot, *h_row0, *h_len, *h_tid, *h_rows;
    int64_t *h_pos;
    int32_t *d_slot, *d_row0, *d_len, *d_tid, *d_rows;
    int64_t *d_pos;
    struct dsv4_toks toks;
    /* activations (backend memory) */
    float *X, *X2, *Y, *xn, *post, *comb;
    float *cq, *q, *kv, *ckv, *cg, *ickv, *icg, *iq, *iw, *isend, *irecv;
    uint16_t *kvb;
    int32_t *sel, *nsel;
    float *o, *z, *zrecv, *zfull, *A;
    float *rl, *wts, *slots, *F, *sg, *su, *sh, *sy;
    int32_t *ids;
    float *hx, *hz, *lg, *lrecv, *logits, *hidden, *mhid;
    float *hn, *hp, *ep, *eb;
    uint8_t *stage; /* host staging of collectives (device backend, shm communicator), or NULL */
    size_t stage_bytes;
    /* padded calls (dsv4_fwd_set_graphs): token buckets, ascending; the scratch slot */
    int nbuck, buck[DSV4_FWD_MAX_BUCKETS], scratch;
    int ngraph;
    struct fwd_graph {
        int kind, bt, br; /* trunk / MTP, tokens, logits rows */
        void *g;
    } graph[FWD_MAX_GRAPHS];
    struct dsv4_fwd_graph_stats gst;
};

/* ------------------------------------------------------------------ helpers */

static void lin(struct dsv4_fwd *f, const struct dsv4_lin *l, const float *x, int64_t m, float *y,
                unsigned flags)
{
    f->be->linear(f->be, l, DSV4_F2(x, m, l->w.cols), DSV4_F2(y, m, l->w.rows), flags);
}

/* n (<= 6) products of one input x [m, cols] at once: y[i] = lin(l[i], x) with flags[i];
 * through the backend's linear_multi where it has one (the same values as one at a time) */
enum { LIN_N_MAX = 6 };
static void lin_n(struct dsv4_fwd *f, int n, const struct dsv4_lin *const *l, const float *x,
                  int64_t m, float *const *y, const unsigned *flags)
{
    struct dsv4_tensor yt[LIN_N_MAX];
    const struct dsv4_tensor *yp[LIN_N_MAX], *xt = DSV4_F2(x, m, l[0]->w.cols);
    DSV4_ASSERT(n >= 1 && n <= LIN_N_MAX);
    for (int i = 0; i < n; i++) {
        yt[i] = *DSV4_F2(y[i], m, l[i]->w.rows);
        yp[i] = &yt[i];
    }
    if (f->be->linear_multi) {
        f->be->linear_multi(f->be, n, l, xt, yp, flags);
        return;
    }
    for (int i = 0; i < n; i++)
        f->be->linear(f->be, l[i], xt, yp[i], flags[i]);
}

/* Collectives.  A device backend with a communicator that moves host memory (shm: several
 * ranks sharing one GPU, a test mode) goes through the host buffer `stage`. */
static int comm_gather(struct dsv4_fwd *f, const void *send, void *recv, size_t bytes)
{
    int rc;
    if (f->stage) {
        uint8_t *hs = f->stage, *hr = hs + bytes;
        DSV4_ASSERT(bytes * (size_t)(f->N + 1) <= f->stage_bytes);
        if (!(rc = f->be->download(f->be, hs, send, bytes)) &&
            !(rc = dsv4_comm_all_gather(f->comm, hs, hr, bytes)))
            rc = f->be->upload(f->be, recv, hr, bytes * (size_t)f->N);
    } else {
        rc = dsv4_comm_all_gather(f->comm, send, recv, bytes);
    }
    if (rc)
        return dsv4_error_ctx(rc, "forward: all-gather of %zu bytes failed", bytes);
    return 0;
}

static int comm_sum(struct dsv4_fwd *f, float *buf, size_t n)
{
    int rc;
    if (f->stage) {
        DSV4_ASSERT(n * sizeof(float) <= f->stage_bytes);
        if (!(rc = f->be->download(f->be, f->stage, buf, n * sizeof(float))) &&
            !(rc = dsv4_comm_all_reduce_sum_f32(f->comm, (float *)(void *)f->stage, n)))
            rc = f->be->upload(f->be, buf, f->stage, n * sizeof(float));
    } else {
        rc = dsv4_comm_all_reduce_sum_f32(f->comm, buf, n);
    }
    if (rc)
        return dsv4_error_ctx(rc, "forward: all-reduce of %zu floats failed", n);
    return 0;
}

/* ------------------------------------------------------------------ init */

void dsv4_fwd_free(struct dsv4_fwd *f)
{
    if (!f)
        return;
    struct dsv4_backend *be = f->be;
    for (int i = 0; i < f->ngraph; i++)
        be->graph_free(be, f->graph[i].g);
    void *dev[] = {f->d_slot, f->d_row0, f->d_len, f->d_tid, f->d_rows, f->d_pos,  f->X,     f->X2,
                   f->Y,      f->xn,     f->post,  f->comb,  f->cq,     f->q,      f->kv,    f->ckv,
                   f->cg,     f->ickv,   f->icg,   f->iq,    f->iw,     f->isend,  f->irecv, f->kvb,
                   f->sel,    f->nsel,   f->o,     f->z,     f->zrecv,  f->zfull,  f->A,     f->rl,
                   f->wts,    f->slots,  f->F,     f->sg,    f->su,     f->sh,     f->sy,    f->ids,
                   f->hx,     f->hz,     f->lg,    f->lrecv, f->logits, f->hidden, f->mhid,  f->hn,
                   f->hp,     f->ep,     f->eb};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(dev); i++)
        be->free(be, dev[i]);
    void *host[] = {f->h_slot, f->h_row0, f->h_len, f->h_tid, f->h_rows, f->h_pos};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(host); i++)
        free(host[i]);
    free(f->stage);
    free(f);
}

#define DEV(p, n)                                                             \
    do {                                                                      \
        (p) = be->alloc(be, sizeof(*(p)) * DSV4_MAX((size_t)(n), (size_t)1)); \
        if (!(p))                                                             \
            goto nomem;                                                       \
    } while (0)
#define HOST(p, n)                                                    \
    do {                                                              \
        (p) = calloc(DSV4_MAX((size_t)(n), (size_t)1), sizeof(*(p))); \
        if (!(p))                                                     \
            goto nomem;                                               \
    } while (0)

int dsv4_fwd_init(const struct dsv4_model *m, struct dsv4_state *st, struct dsv4_backend *be,
                  struct dsv4_comm *comm, int max_tokens, int max_out, struct dsv4_fwd **out)
{
    const struct dsv4_config *c = &m->cfg;
    *out = NULL;
    int N = comm ? dsv4_comm_size(comm) : 1;
    if (N != m->nranks || (comm && dsv4_comm_rank(comm) != m->rank))
        return dsv4_error(DSV4_EINVAL, "forward: communicator rank %d/%d, model rank %d/%d",
                          comm ? dsv4_comm_rank(comm) : 0, N, m->rank, m->nranks);
    if (max_tokens < 1 || max_out < 0 || max_out > max_tokens)
        return dsv4_error(DSV4_EINVAL, "forward: max_tokens %d, max_out %d", max_tokens, max_out);
    /* a device backend reads weights and exchanges activations in its own memory */
    if (dsv4_model_device(m) != be->device)
        return dsv4_error(DSV4_EINVAL,
                          "forward: the model's weights are not in the %s backend's memory "
                          "(dsv4_model_upload)",
                          be->name);
    /* the shm communicator moves host memory: a device backend's buffers go through `stage` */
    bool staged =
            N > 1 && be->device != DSV4_DEVICE_HOST && !strcmp(dsv4_comm_backend(comm), "shm");
    struct dsv4_fwd *f = calloc(1, sizeof *f);
    if (!f)
        return dsv4_error(DSV4_ENOMEM, "forward: out of memory");
    f->m = m;
    f->st = st;
    f->be = be;
    f->comm = N > 1 ? comm : NULL;
    f->N = N;
    f->T = max_tokens;
    f->max_out = max_out;
    int rd = c->qk_rope_head_dim;
    if (dsv4_rope_init(&f->rope_win, rd, c->rope_theta, false, 1, 1, 1, 1) ||
        dsv4_rope_init(&f->rope_comp, rd, c->compress_rope_theta, c->has_yarn, c->yarn_factor,
                       c->yarn_beta_fast, c->yarn_beta_slow,
                       (double)c->yarn_original_max_position)) {
        free(f);
        return dsv4_error(DSV4_EFORMAT, "forward: bad rope parameters");
    }
    int64_t T = max_tokens, O = DSV4_MAX(max_out, 1), hc = c->hc_mult, D = c->hidden_size;
    int64_t dh = c->head_dim, Rq = c->q_lora_rank, Ro = c->o_lora_rank, G = c->o_groups;
    int64_t IH = c->index_n_heads, id = c->index_head_dim, E = c->n_routed_experts;
    int64_t I = c->moe_intermediate_size, k = c->num_experts_per_tok, nh = m->nh;
    int64_t max_ctx = dsv4_state_max_ctx(st);
    f->Ish = I * DSV4_MAX(c->n_shared_experts, 1);
    f->ngmax = (G + N - 1) / N;
    f->inhmax = (IH + N - 1) / N;
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
    int64_t X1 = N > 1 ? 1 : 0; /* exchange buffers only with several ranks */
    HOST(f->h_slot, T);
    HOST(f->h_row0, T);
    HOST(f->h_len, T);
    HOST(f->h_tid, T);
    HOST(f->h_rows, O);
    HOST(f->h_pos, T);
    DEV(f->d_slot, T);
    DEV(f->d_row0, T);
    DEV(f->d_len, T);
    DEV(f->d_tid, T);
    DEV(f->d_rows, O);
    DEV(f->d_pos, T);
    DEV(f->X, T * hc * D);
    DEV(f->X2, T * hc * D);
    DEV(f->Y, T * D);
    DEV(f->xn, T * D);
    DEV(f->post, T * hc);
    DEV(f->comb, T * hc * hc);
    DEV(f->cq, T * Rq);
    DEV(f->q, T * nh * dh);
    DEV(f->kv, T * dh);
    DEV(f->kvb, T * dh);
    DEV(f->ckv, T * 2 * dh);
    DEV(f->cg, T * 2 * dh);
    DEV(f->ickv, T * 2 * id);
    DEV(f->icg, T * 2 * id);
    DEV(f->iq, T * IH * id);
    DEV(f->iw, T * IH);
    DEV(f->isend, X1 * T * f->inhmax * (id + 1));
    DEV(f->irecv, X1 * N * T * f->inhmax * (id + 1));
    DEV(f->sel, T * DSV4_MAX(c->index_topk, 1));
    DEV(f->nsel, T);
    DEV(f->o, T * nh * dh);
    DEV(f->z, T * f->ngmax * Ro);
    DEV(f->zrecv, X1 * N * T * f->ngmax * Ro);
    DEV(f->zfull, X1 * T * G * Ro);
    DEV(f->A, T * D);
    DEV(f->rl, T * E);
    DEV(f->wts, T * k);
    DEV(f->ids, T * k);
    DEV(f->slots, T * (k + 1) * D);
    DEV(f->F, T * D);
    DEV(f->sg, T * f->Ish);
    DEV(f->su, T * f->Ish);
    DEV(f->sh, T * f->Ish);
    DEV(f->sy, T * D);
    DEV(f->hx, O * hc * D);
    DEV(f->hz, O * D);
    DEV(f->lg, X1 * O * m->vchunk);
    DEV(f->lrecv, X1 * N * O * m->vchunk);
    DEV(f->logits, O * c->vocab_size);
    DEV(f->hidden, T * hc * D);
    DEV(f->mhid, T * hc * D);
    DEV(f->hn, T * hc * D);
    DEV(f->hp, T * hc * D);
    DEV(f->ep, T * D);
    DEV(f->eb, T * D);
    if (staged) {
        /* the largest collective: an all-gather's send + N received, or an all-reduce */
        size_t fl = sizeof(float), sb = 0;
        size_t g[] = {(size_t)(T * f->inhmax * (id + 1)) * fl, (size_t)(T * f->ngmax * Ro) * fl,
                      (size_t)(O * m->vchunk) * fl};
        for (size_t i = 0; i < DSV4_ARRAY_LEN(g); i++)
            sb = DSV4_MAX(sb, g[i] * (size_t)(N + 1));
        sb = DSV4_MAX(sb, (size_t)(T * (k + 1) * D) * fl);
        f->stage_bytes = sb;
        HOST(f->stage, sb);
    }
    /* every scratch an op uses, sized now (forward.h: calls do not allocate) */
    int64_t hpg = c->num_attention_heads / G;
    struct dsv4_be_limits lim = {
            .tokens = T,
            .cols = DSV4_MAX(DSV4_MAX(hc * D, Rq), DSV4_MAX(hpg * dh, DSV4_MAX(G * Ro, f->Ish))),
            .hidden = D,
            .inter = DSV4_MAX(I, f->Ish),
            .experts = E,
            .topk = k,
            .keys = DSV4_MIN((int64_t)c->sliding_window, max_ctx) + ncomp,
            .entries = nidx,
            .head_dim = dh,
            .index_head_dim = id,
            .index_heads = IH,
            .vocab = c->vocab_size};
    int rc = be->reserve(be, &lim);
    if (rc) {
        dsv4_fwd_free(f);
        return rc;
    }
    f->toks = (struct dsv4_toks){
            .slot = f->d_slot, .row0 = f->d_row0, .len = f->d_len, .pos = f->d_pos};
    *out = f;
    return 0;
nomem:
    dsv4_fwd_free(f);
    return dsv4_error(DSV4_ENOMEM, "forward: out of memory for buffers of %d tokens", max_tokens);
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

const float *dsv4_fwd_logits(const struct dsv4_fwd *f)
{
    return f->logits;
}

const float *dsv4_fwd_hidden(const struct dsv4_fwd *f)
{
    return f->hidden;
}

const float *dsv4_fwd_mtp_hidden(const struct dsv4_fwd *f)
{
    return f->mhid;
}

/* ------------------------------------------------------------------ attention */

/* Indexer queries and weights of the local heads -> all heads (gathered over ranks). */
static int indexer_q(struct dsv4_fwd *f, const struct dsv4_layer_w *w, int T,
                     const struct dsv4_rope *rope)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_config *c = &f->m->cfg;
    int64_t IH = c->index_n_heads, id = c->index_head_dim, inh = f->m->inh;
    int rc;
    float *iql = f->iq; /* local [T, inh, id] first, expanded below */
    if (inh > 0) {
        lin(f, &w->i_wq_b, f->cq, T, iql, DSV4_OP_BF16);
        lin(f, &w->i_wproj, f->xn, T, f->iw, DSV4_OP_BF16);
        be->rope(be, DSV4_F3(iql, T, inh, id), f->d_pos, rope, false, DSV4_OP_BF16);
        be->hadamard(be, DSV4_F2(iql, T * inh, id), DSV4_OP_BF16);
        be->act_sim(be, DSV4_F2(iql, T * inh, id), DSV4_SIM_FP4, 32);
    }
    if (f->N == 1)
        return 0;
    /* per token: [inhmax * id q values][inhmax weights], padded */
    int64_t per = f->inhmax * (id + 1);
    size_t fs = sizeof(float);
    be->fill_zero(be, DSV4_F2(f->isend, T, per));
    be->copy2d(be, f->isend, per * fs, iql, inh * id * fs, inh * id * fs, T);
    be->copy2d(be, f->isend + f->inhmax * id, per * fs, f->iw, inh * fs, inh * fs, T);
    if ((rc = comm_gather(f, f->isend, f->irecv, fs * T * per)))
        return rc;
    for (int r = 0; r < f->N; r++) {
        int64_t h0, h1;
        dsv4_contract_split_range(IH, r, f->N, &h0, &h1);
        const float *src = f->irecv + (int64_t)r * T * per;
        be->copy2d(be, f->iq + h0 * id, IH * id * fs, src, per * fs, (h1 - h0) * id * fs, T);
        be->copy2d(be, f->iw + h0, IH * fs, src + f->inhmax * id, per * fs, (h1 - h0) * fs, T);
    }
    return 0;
}

static int attention(struct dsv4_fwd *f, int layer, int T)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    const struct dsv4_layer_w *w = &m->layers[layer];
    int64_t dh = c->head_dim, rd = c->qk_rope_head_dim, Rq = c->q_lora_rank;
    int64_t nh = m->nh, Ro = c->o_lora_rank, G = c->o_groups;
    int64_t IH = c->index_n_heads, id = c->index_head_dim;
    float eps = (float)c->rms_norm_eps;
    const struct dsv4_rope *rope = w->ratio > 0 ? &f->rope_comp : &f->rope_win;
    const struct dsv4_kv_view *kv = dsv4_state_view(f->st);
    int rc;
    /* the products of xn at once: query and kv projections, the compressors' */
    {
        const struct dsv4_lin *l[LIN_N_MAX] = {&w->wq_a, &w->wkv};
        float *y[LIN_N_MAX] = {f->cq, f->kv};
        unsigned fl[LIN_N_MAX] = {DSV4_OP_BF16, DSV4_OP_BF16};
        int n = 2;
        if (w->ratio > 0) {
            l[n] = &w->c_wkv, y[n] = f->ckv, fl[n++] = 0;
            l[n] = &w->c_wgate, y[n] = f->cg, fl[n++] = 0;
        }
        if (w->ratio == 4) {
            l[n] = &w->ic_wkv, y[n] = f->ickv, fl[n++] = 0;
            l[n] = &w->ic_wgate, y[n] = f->icg, fl[n++] = 0;
        }
        lin_n(f, n, l, f->xn, T, y, fl);
    }
    /* query path */
    be->rmsnorm(be, DSV4_F2(f->cq, T, Rq), w->q_norm, eps, DSV4_F2(f->cq, T, Rq), DSV4_OP_BF16);
    if (nh > 0) {
        lin(f, &w->wq_b, f->cq, T, f->q, DSV4_OP_BF16);
        be->rmsnorm(be, DSV4_F2(f->q, T * nh, dh), NULL, eps, DSV4_F2(f->q, T * nh, dh),
                    DSV4_OP_BF16);
        be->rope(be, DSV4_F3(f->q, T, nh, dh), f->d_pos, rope, false, DSV4_OP_BF16);
    }
    /* kv path: BF16-exact values, kept as BF16 for the state */
    be->rmsnorm(be, DSV4_F2(f->kv, T, dh), w->kv_norm, eps, DSV4_F2(f->kv, T, dh), DSV4_OP_BF16);
    be->rope(be, DSV4_F3(f->kv, T, 1, dh), f->d_pos, rope, false, DSV4_OP_BF16);
    be->act_sim(be, DSV4_T2S(f->kv, DSV4_DTYPE_F32, T, dh - rd, dh), DSV4_SIM_FP8, 64);
    be->convert(be, DSV4_F2(f->kv, T, dh), DSV4_T2(f->kvb, DSV4_DTYPE_BF16, T, dh));
    struct dsv4_kv_args ka = {.kv = kv,
                              .layer = layer,
                              .tok = &f->toks,
                              .kv_chunk = f->kvb,
                              .ckv = f->ckv,
                              .cg = f->cg,
                              .ickv = f->ickv,
                              .icg = f->icg,
                              .ape = w->c_ape,
                              .iape = w->ic_ape,
                              .norm = w->c_norm,
                              .inorm = w->ic_norm,
                              .rope = rope,
                              .eps = eps};
    if (w->ratio == 4) {
        if ((rc = indexer_q(f, w, T, rope)))
            return rc;
    }
    /* completed entries first (queries of the same chunk see them), then the queries */
    if (w->ratio > 0)
        be->kv_compress(be, &ka);
    if (w->ratio == 4) {
        struct dsv4_select_args sa = {.kv = kv,
                                      .layer = layer,
                                      .tok = &f->toks,
                                      .q = f->iq,
                                      .w = f->iw,
                                      .IH = (int)IH,
                                      .wscale = 1.0f / sqrtf((float)id) / sqrtf((float)IH),
                                      .topk = c->index_topk,
                                      .sel = f->sel,
                                      .nsel = f->nsel};
        be->kv_select(be, &sa);
    }
    if (nh > 0) {
        struct dsv4_attn_args aa = {.kv = kv,
                                    .layer = layer,
                                    .tok = &f->toks,
                                    .q = f->q,
                                    .nh = (int)nh,
                                    .kv_chunk = f->kvb,
                                    .sel = w->ratio == 4 ? f->sel : NULL,
                                    .nsel = w->ratio == 4 ? f->nsel : NULL,
                                    .topk = c->index_topk,
                                    .sink = w->sink,
                                    .scale = 1.0f / sqrtf((float)dh),
                                    .flags = DSV4_OP_BF16,
                                    .out = f->o};
        be->attn(be, &aa);
        be->rope(be, DSV4_F3(f->o, T, nh, dh), f->d_pos, rope, true, DSV4_OP_BF16);
    }
    be->kv_store(be, &ka);
    /* grouped wo_a over the local groups, then wo_b over all groups */
    int64_t ng = m->ng, zs = f->ngmax * Ro; /* z row stride */
    if (ng > 0) {
        int64_t hpg = c->num_attention_heads / G;
        if (ng == f->ngmax) {
            be->linear_grouped(be, &w->wo_a, (int)ng, DSV4_F2(f->o, T, ng * hpg * dh),
                               DSV4_F2(f->z, T, zs), DSV4_OP_BF16);
        } else {
            /* fewer groups than the gather unit: compute into A's space, pad with zeros */
            be->linear_grouped(be, &w->wo_a, (int)ng, DSV4_F2(f->o, T, ng * hpg * dh),
                               DSV4_F2(f->zfull, T, ng * Ro), DSV4_OP_BF16);
            be->fill_zero(be, DSV4_F2(f->z, T, zs));
            be->copy2d(be, f->z, zs * sizeof(float), f->zfull, ng * Ro * sizeof(float),
                       ng * Ro * sizeof(float), T);
        }
    } else {
        be->fill_zero(be, DSV4_F2(f->z, T, zs));
    }
    const float *zf = f->z;
    if (f->N > 1) {
        if ((rc = comm_gather(f, f->z, f->zrecv, sizeof(float) * T * zs)))
            return rc;
        for (int r = 0; r < f->N; r++) {
            int64_t g0, g1;
            dsv4_contract_split_range(G, r, f->N, &g0, &g1);
            be->copy2d(be, f->zfull + g0 * Ro, G * Ro * sizeof(float),
                       f->zrecv + (int64_t)r * T * zs, zs * sizeof(float),
                       (g1 - g0) * Ro * sizeof(float), T);
        }
        zf = f->zfull;
    }
    lin(f, &w->wo_b, zf, T, f->A, DSV4_OP_BF16);
    return 0;
}

/* ------------------------------------------------------------------ MoE */

static enum dsv4_score_func score_func(const struct dsv4_config *c)
{
    if (!strcmp(c->scoring_func, "sigmoid"))
        return DSV4_SCORE_SIGMOID;
    if (!strcmp(c->scoring_func, "softmax"))
        return DSV4_SCORE_SOFTMAX;
    return DSV4_SCORE_SQRTSOFTPLUS;
}

static int moe(struct dsv4_fwd *f, int layer, int T)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    const struct dsv4_layer_w *w = &m->layers[layer];
    int64_t D = c->hidden_size, E = c->n_routed_experts, Ish = f->Ish;
    int k = c->num_experts_per_tok, rc;
    float limit = (float)c->swiglu_limit;
    /* the router's and the shared expert's (rank 0) products of xn at once */
    {
        const struct dsv4_lin *l[3] = {&w->gate, &w->shared.w1, &w->shared.w3};
        float *y[3] = {f->rl, f->sg, f->su};
        unsigned fl[3] = {0, DSV4_OP_BF16, DSV4_OP_BF16};
        lin_n(f, m->rank == 0 ? 3 : 1, l, f->xn, T, y, fl);
    }
    struct dsv4_route_args ra = {.T = T,
                                 .E = (int)E,
                                 .k = k,
                                 .logits = f->rl,
                                 .func = score_func(c),
                                 .bias = w->gate_bias,
                                 .tid2eid = w->hash ? w->tid2eid : NULL,
                                 .tokens = f->d_tid,
                                 .renorm = c->norm_topk_prob,
                                 .scale = (float)c->routed_scaling_factor,
                                 .ids = f->ids,
                                 .wts = f->wts};
    be->route(be, &ra);
    if (f->rhook)
        f->rhook(f->rhook_ctx, layer, T, k, f->ids, f->d_tid);
    struct dsv4_moe_args ma = {.T = T,
                               .k = k,
                               .D = D,
                               .I = c->moe_intermediate_size,
                               .x = f->xn,
                               .ids = f->ids,
                               .wts = f->wts,
                               .e0 = m->e0,
                               .e1 = m->e1,
                               .ex = w->experts,
                               .limit = limit,
                               .out = f->slots,
                               .slots = k + 1};
    be->moe(be, &ma);
    /* shared expert on rank 0 (slot k); zeros elsewhere */
    size_t fs = sizeof(float);
    if (m->rank == 0) {
        be->swiglu(be, DSV4_F2(f->sg, T, Ish), DSV4_F2(f->su, T, Ish), limit, NULL,
                   DSV4_F2(f->sh, T, Ish), DSV4_OP_BF16);
        lin(f, &w->shared.w2, f->sh, T, f->sy, DSV4_OP_BF16);
    } else {
        be->fill_zero(be, DSV4_F2(f->sy, T, D));
    }
    be->copy2d(be, f->slots + k * D, (k + 1) * D * fs, f->sy, D * fs, D * fs, T);
    if (f->N > 1 && (rc = comm_sum(f, f->slots, (size_t)T * (k + 1) * D)))
        return rc;
    be->moe_combine(be, DSV4_F3(f->slots, T, k + 1, D), DSV4_F2(f->F, T, D), DSV4_OP_BF16);
    return 0;
}

/* ------------------------------------------------------------------ layer / head */

static void swap_streams(struct dsv4_fwd *f)
{
    float *tmp = f->X;
    f->X = f->X2;
    f->X2 = tmp;
}

static int layer_forward(struct dsv4_fwd *f, int layer, int T)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_config *c = &f->m->cfg;
    const struct dsv4_layer_w *w = &f->m->layers[layer];
    int64_t hc = c->hc_mult, D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    int rc;
    be->hc_pre(be, &w->hc_attn, DSV4_F3(f->X, T, hc, D), w->attn_norm, eps, DSV4_F2(f->Y, T, D),
               DSV4_F2(f->xn, T, D), DSV4_F2(f->post, T, hc), DSV4_F3(f->comb, T, hc, hc));
    if ((rc = attention(f, layer, T)))
        return rc;
    be->hc_post(be, DSV4_F2(f->A, T, D), DSV4_F3(f->X, T, hc, D), DSV4_F2(f->post, T, hc),
                DSV4_F3(f->comb, T, hc, hc), DSV4_F3(f->X2, T, hc, D), DSV4_OP_BF16);
    swap_streams(f);
    be->hc_pre(be, &w->hc_ffn, DSV4_F3(f->X, T, hc, D), w->ffn_norm, eps, DSV4_F2(f->Y, T, D),
               DSV4_F2(f->xn, T, D), DSV4_F2(f->post, T, hc), DSV4_F3(f->comb, T, hc, hc));
    if ((rc = moe(f, layer, T)))
        return rc;
    be->hc_post(be, DSV4_F2(f->F, T, D), DSV4_F3(f->X, T, hc, D), DSV4_F2(f->post, T, hc),
                DSV4_F3(f->comb, T, hc, hc), DSV4_F3(f->X2, T, hc, D), DSV4_OP_BF16);
    swap_streams(f);
    return 0;
}

/* Logits of the n_out rows (uploaded in d_rows) of X: hc_head -> norm -> head, gathered. */
static int head(struct dsv4_fwd *f, const struct dsv4_hc_params *hp, const float *nw, int T, int nr)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    int64_t hc = c->hc_mult, D = c->hidden_size, V = c->vocab_size, vc = m->vchunk;
    int rc;
    if (nr == 0)
        return 0;
    be->gather_rows(be, DSV4_F2(f->X, T, hc * D), DSV4_T1(f->d_rows, DSV4_DTYPE_I32, nr),
                    DSV4_F2(f->hx, nr, hc * D));
    be->hc_head(be, hp, DSV4_F3(f->hx, nr, hc, D), nw, (float)c->rms_norm_eps,
                DSV4_F2(f->hz, nr, D));
    if (f->N == 1) {
        lin(f, &m->head, f->hz, nr, f->logits, 0);
        return 0;
    }
    size_t fs = sizeof(float);
    be->fill_zero(be, DSV4_F2(f->lg, nr, vc));
    if (m->nv > 0) {
        /* rows of this rank: [nr, nv] packed into chunks of vc */
        lin(f, &m->head, f->hz, nr, f->lrecv, 0);
        be->copy2d(be, f->lg, vc * fs, f->lrecv, m->nv * fs, m->nv * fs, nr);
    }
    if ((rc = comm_gather(f, f->lg, f->lrecv, fs * nr * vc)))
        return rc;
    for (int r = 0; r < f->N; r++) {
        int64_t v0, v1;
        dsv4_contract_split_range_vocab(V, r, f->N, &v0, &v1);
        if (v1 > v0)
            be->copy2d(be, f->logits + v0, V * fs, f->lrecv + (int64_t)r * nr * vc, vc * fs,
                       (v1 - v0) * fs, nr);
    }
    return 0;
}

/* Embedding rows of the batch's tokens into out [T, D] (vocab-parallel: disjoint rows summed). */
static int embed(struct dsv4_fwd *f, int T, float *out)
{
    const struct dsv4_model *m = f->m;
    int64_t D = m->cfg.hidden_size;
    f->be->embed(f->be, m->embed, m->v0, m->nv, DSV4_T1(f->d_tid, DSV4_DTYPE_I32, T),
                 DSV4_F2(out, T, D));
    return f->N > 1 ? comm_sum(f, out, (size_t)T * D) : 0;
}

/* Checks the batch, reserves its positions, fills the host copy of the per-token metadata. */
static int setup(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq,
                 const int32_t *out_rows, int n_out, bool mtp, int *Tout)
{
    const struct dsv4_config *c = &f->m->cfg;
    int T = 0, rc;
    if (nseq < 1)
        return dsv4_error(DSV4_EINVAL, "forward: empty batch");
    for (int s = 0; s < nseq; s++) {
        const struct dsv4_fwd_seq *q = &seqs[s];
        if (!dsv4_state_seq_valid(f->st, q->seq))
            return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", q->seq);
        if (f->nbuck && q->seq == f->scratch)
            return dsv4_error(DSV4_EINVAL, "forward: slot %d holds the padding", q->seq);
        for (int j = 0; j < s; j++)
            if (seqs[j].seq == q->seq)
                return dsv4_error(DSV4_EINVAL, "forward: sequence %d twice in one batch", q->seq);
        if (q->n < 1 || q->n > f->T - T)
            return dsv4_error(DSV4_EINVAL, "forward: batch exceeds %d tokens", f->T);
        int64_t len = mtp ? dsv4_state_mtp_len(f->st, q->seq) : dsv4_state_len(f->st, q->seq);
        if (q->start < 0 || q->start > len)
            return dsv4_error(DSV4_EINVAL, "forward: chunk starts at %lld, sequence has %lld",
                              (long long)q->start, (long long)len);
        if (q->start < len && q->start > 0 && q->start < len - dsv4_state_max_rollback(f->st))
            return dsv4_error(DSV4_ERANGE,
                              "forward: cannot roll back from %lld to %lld (horizon %d)",
                              (long long)len, (long long)q->start, dsv4_state_max_rollback(f->st));
        if (q->start + q->n > dsv4_state_max_ctx(f->st))
            return dsv4_error(DSV4_ERANGE, "forward: positions %lld..%lld beyond max_ctx %lld",
                              (long long)q->start, (long long)(q->start + q->n - 1),
                              (long long)dsv4_state_max_ctx(f->st));
        for (int i = 0; i < q->n; i++) {
            if (q->tokens[i] < 0 || q->tokens[i] >= c->vocab_size)
                return dsv4_error(DSV4_EINVAL, "forward: token id %d outside vocab %d",
                                  q->tokens[i], c->vocab_size);
            f->h_slot[T + i] = q->seq;
            f->h_pos[T + i] = q->start + i;
            f->h_tid[T + i] = q->tokens[i];
            f->h_row0[T + i] = T;
            f->h_len[T + i] = q->n;
        }
        T += q->n;
    }
    if (n_out < 0 || n_out > f->max_out)
        return dsv4_error(DSV4_EINVAL, "forward: %d logits rows, at most %d", n_out, f->max_out);
    for (int i = 0; i < n_out; i++) {
        if (out_rows[i] < 0 || out_rows[i] >= T)
            return dsv4_error(DSV4_EINVAL, "forward: logits row %d outside the batch of %d",
                              out_rows[i], T);
        f->h_rows[i] = out_rows[i];
    }
    /* rollbacks first (a chunk starting inside the state), then the blocks of the new
     * positions; on DSV4_ENOSPC the rollbacks stay done and the batch can be retried */
    for (int s = 0; s < nseq; s++) {
        int64_t len =
                mtp ? dsv4_state_mtp_len(f->st, seqs[s].seq) : dsv4_state_len(f->st, seqs[s].seq);
        if (seqs[s].start < len &&
            (rc = dsv4_state_truncate(f->st, seqs[s].seq, mtp, seqs[s].start)))
            return rc;
    }
    if (!mtp)
        for (int s = 0; s < nseq; s++)
            if ((rc = dsv4_state_reserve(f->st, seqs[s].seq, seqs[s].start + seqs[s].n)))
                return rc;
    *Tout = T;
    return 0;
}

/* The smallest bucket of at least n tokens, 0 when none. */
static int bucket(const struct dsv4_fwd *f, int n)
{
    for (int i = 0; i < f->nbuck; i++)
        if (f->buck[i] >= n)
            return f->buck[i];
    return 0;
}

/* Tokens T..b-1: one chunk of the scratch slot from position 0 (token 0); rows n_out..r-1
 * read row 0. */
static void pad_fill(struct dsv4_fwd *f, int T, int n_out, int b, int r)
{
    for (int i = T; i < b; i++) {
        f->h_slot[i] = f->scratch;
        f->h_pos[i] = i - T;
        f->h_tid[i] = 0;
        f->h_row0[i] = T;
        f->h_len[i] = b - T;
    }
    for (int i = n_out; i < r; i++)
        f->h_rows[i] = 0;
}

/*
 * Pads a call of T tokens and n_out logits rows (host metadata filled by setup) to its
 * bucket when padded calls are on (pad_fill).  The padding's outputs are computed and
 * ignored; every op's rows are independent, so the real rows are what they are unpadded.
 * Returns false (bt = T, br = n_out) when the call runs as it is.
 */
static bool pad(struct dsv4_fwd *f, int T, int n_out, int *bt, int *br)
{
    *bt = T;
    *br = n_out;
    int b = f->nbuck && !f->hook && !f->rhook ? bucket(f, T) : 0;
    int r = n_out == T ? b : n_out == 0 ? 0 : bucket(f, n_out);
    if (!b || (n_out && !r) || r > f->max_out)
        return false;
    pad_fill(f, T, n_out, b, r);
    *bt = b;
    *br = r;
    f->gst.padded_calls++;
    f->gst.padded_tokens += (uint64_t)(b - T);
    return true;
}

/* Uploads the per-token metadata of T tokens and n_out logits rows. */
static int upload_meta(struct dsv4_fwd *f, int T, int n_out)
{
    struct dsv4_backend *be = f->be;
    int rc;
    if ((rc = be->upload(be, f->d_slot, f->h_slot, sizeof(int32_t) * T)) ||
        (rc = be->upload(be, f->d_pos, f->h_pos, sizeof(int64_t) * T)) ||
        (rc = be->upload(be, f->d_tid, f->h_tid, sizeof(int32_t) * T)) ||
        (rc = be->upload(be, f->d_row0, f->h_row0, sizeof(int32_t) * T)) ||
        (rc = be->upload(be, f->d_len, f->h_len, sizeof(int32_t) * T)) ||
        (rc = be->upload(be, f->d_rows, f->h_rows, sizeof(int32_t) * (n_out ? n_out : 1))))
        return dsv4_error_ctx(rc, "forward: token metadata upload");
    f->toks.T = T;
    return 0;
}

static void commit(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, bool mtp)
{
    for (int s = 0; s < nseq; s++) {
        dsv4_state_commit(f->st, seqs[s].seq, mtp, seqs[s].start + seqs[s].n);
        if (!mtp)
            dsv4_state_put_tokens(f->st, seqs[s].seq, seqs[s].start, seqs[s].tokens, seqs[s].n);
    }
}

/* Trunk layers and head over the T tokens whose metadata is uploaded. */
static int trunk_body(struct dsv4_fwd *f, int T, int nr, bool keep_hidden)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_config *c = &f->m->cfg;
    int rc, L = c->num_hidden_layers;
    int64_t hc = c->hc_mult, D = c->hidden_size;
    if ((rc = embed(f, T, f->Y)))
        return rc;
    be->hc_expand(be, NULL, DSV4_F2(f->Y, T, D), DSV4_F3(f->X, T, hc, D), 0);
    for (int l = 0; l < L; l++) {
        if ((rc = layer_forward(f, l, T)))
            return rc;
        if (f->hook)
            f->hook(f->hook_ctx, l, f->X, T, (int)hc, D);
    }
    if (keep_hidden)
        be->copy2d(be, f->hidden, 0, f->X, 0, sizeof(float) * T * hc * D, 1);
    return head(f, &f->m->hc_head, f->m->norm, T, nr);
}

/* The MTP block and its head over the T tokens whose metadata is uploaded, inputs in hn. */
static int mtp_body(struct dsv4_fwd *f, int T, int nr)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_model *m = f->m;
    const struct dsv4_config *c = &m->cfg;
    int rc, L = c->num_hidden_layers;
    int64_t hc = c->hc_mult, D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    if ((rc = embed(f, T, f->eb)))
        return rc;
    be->rmsnorm(be, DSV4_F2(f->eb, T, D), m->enorm, eps, DSV4_F2(f->eb, T, D), DSV4_OP_BF16);
    lin(f, &m->e_proj, f->eb, T, f->ep, DSV4_OP_BF16);
    be->rmsnorm(be, DSV4_F2(f->hn, T * hc, D), m->hnorm, eps, DSV4_F2(f->hn, T * hc, D),
                DSV4_OP_BF16);
    lin(f, &m->h_proj, f->hn, T * hc, f->hp, DSV4_OP_BF16);
    be->hc_expand(be, DSV4_F3(f->hp, T, hc, D), DSV4_F2(f->ep, T, D), DSV4_F3(f->X, T, hc, D),
                  DSV4_OP_BF16);
    if ((rc = layer_forward(f, L, T)))
        return rc;
    be->copy2d(be, f->mhid, 0, f->X, 0, sizeof(float) * T * hc * D, 1);
    return head(f, &m->mtp_hc_head, m->mtp_norm, T, nr);
}

static int body(struct dsv4_fwd *f, int kind, int T, int nr, bool keep_hidden)
{
    return kind == GRAPH_TRUNK ? trunk_body(f, T, nr, keep_hidden) : mtp_body(f, T, nr);
}

/*
 * Runs a body.  A padded call on a backend that records graphs (and a communicator that
 * needs no host staging) replays the graph of its (kind, tokens, rows), recorded on first
 * use: the body's host side (which buffers, which sizes) depends on nothing else, and
 * every per-token value is read from the metadata uploaded before the launch.  Recording
 * does not run the ops, so a recorded graph is launched at once.  A graphed trunk always
 * keeps its hidden streams (one graph serves calls with and without MTP).
 */
static int run(struct dsv4_fwd *f, int kind, int T, int nr, bool keep_hidden, bool padded)
{
    struct dsv4_backend *be = f->be;
    if (!padded || !be->graph_begin || f->stage)
        return body(f, kind, T, nr, keep_hidden);
    struct fwd_graph *g = NULL;
    for (int i = 0; i < f->ngraph && !g; i++)
        if (f->graph[i].kind == kind && f->graph[i].bt == T && f->graph[i].br == nr)
            g = &f->graph[i];
    int rc;
    if (!g) {
        if (f->ngraph == FWD_MAX_GRAPHS) {
            f->gst.eager++;
            return body(f, kind, T, nr, keep_hidden);
        }
        float *x = f->X, *x2 = f->X2;
        void *h = NULL;
        double t0 = dsv4_now();
        if ((rc = be->graph_begin(be)))
            return dsv4_error_ctx(rc, "forward: recording a graph");
        rc = body(f, kind, T, nr, true);
        int rc2 = be->graph_end(be, rc ? NULL : &h);
        f->X = x; /* the host side of the next call starts where this one did */
        f->X2 = x2;
        if (rc || rc2)
            return dsv4_error_ctx(rc ? rc : rc2, "forward: recording the %s graph of %d tokens",
                                  kind == GRAPH_TRUNK ? "trunk" : "MTP", T);
        g = &f->graph[f->ngraph++];
        *g = (struct fwd_graph){.kind = kind, .bt = T, .br = nr, .g = h};
        f->gst.graphs = f->ngraph;
        f->gst.record_seconds += dsv4_now() - t0;
    }
    if ((rc = be->graph_launch(be, g->g)))
        return dsv4_error_ctx(rc, "forward: launching a graph");
    f->gst.launches++;
    if (f->N > 1 && (rc = dsv4_comm_drain(f->comm)))
        return dsv4_error_ctx(rc, "forward: collectives of a graph");
    return 0;
}

int dsv4_fwd_trunk(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq,
                   const int32_t *out_rows, int n_out, bool keep_hidden)
{
    int T, bt, br, rc;
    if ((rc = setup(f, seqs, nseq, out_rows, n_out, false, &T)))
        return rc;
    bool padded = pad(f, T, n_out, &bt, &br);
    if ((rc = upload_meta(f, bt, br)) || (rc = run(f, GRAPH_TRUNK, bt, br, keep_hidden, padded)))
        return rc;
    commit(f, seqs, nseq, false);
    return 0;
}

int dsv4_fwd_mtp(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, const float *hidden,
                 const int32_t *out_rows, int n_out)
{
    struct dsv4_backend *be = f->be;
    const struct dsv4_config *c = &f->m->cfg;
    int T, bt, br, rc;
    int64_t hc = c->hc_mult, D = c->hidden_size;
    if (!f->m->has_mtp)
        return dsv4_error(DSV4_ENOTSUP, "forward: the checkpoint has no MTP block");
    if ((rc = setup(f, seqs, nseq, out_rows, n_out, true, &T)))
        return rc;
    /* hidden may be this fwd's MTP output: copy it before anything writes */
    be->copy2d(be, f->hn, 0, hidden, 0, sizeof(float) * T * hc * D, 1);
    bool padded = pad(f, T, n_out, &bt, &br);
    if ((rc = upload_meta(f, bt, br)) || (rc = run(f, GRAPH_MTP, bt, br, false, padded)))
        return rc;
    commit(f, seqs, nseq, true);
    return 0;
}

int dsv4_fwd_set_graphs(struct dsv4_fwd *f, const int *buckets, int n, int scratch)
{
    if (n < 0 || n > DSV4_FWD_MAX_BUCKETS)
        return dsv4_error(DSV4_EINVAL, "forward: %d buckets (at most %d)", n, DSV4_FWD_MAX_BUCKETS);
    for (int i = 0; i < n; i++)
        if (buckets[i] < 1 || buckets[i] > f->T || buckets[i] > f->max_out ||
            (i && buckets[i] <= buckets[i - 1]))
            return dsv4_error(DSV4_EINVAL, "forward: bucket %d of %d tokens (ascending, 1..%d)", i,
                              buckets[i], DSV4_MIN(f->T, f->max_out));
    int rc;
    if (n && !dsv4_state_seq_valid(f->st, scratch))
        return dsv4_error(DSV4_EINVAL, "forward: scratch slot %d is not live", scratch);
    /* the padding chunk's positions: 0 .. largest bucket - 1 */
    if (n && (rc = dsv4_state_reserve(f->st, scratch, buckets[n - 1])))
        return dsv4_error_ctx(rc, "forward: state for the padding of %d tokens", buckets[n - 1]);
    for (int i = 0; i < f->ngraph; i++)
        f->be->graph_free(f->be, f->graph[i].g);
    f->ngraph = 0;
    f->gst.graphs = 0;
    f->nbuck = n;
    memcpy(f->buck, buckets, sizeof(int) * (size_t)n);
    f->scratch = scratch;
    return 0;
}

int dsv4_fwd_warm(struct dsv4_fwd *f)
{
    struct dsv4_backend *be = f->be;
    int rc;
    if (f->hook || f->rhook)
        return dsv4_error(DSV4_EINVAL, "forward: warm-up with a diagnostics hook set");
    for (int i = 0; i < f->nbuck; i++) {
        int b = f->buck[i];
        for (int kind = GRAPH_TRUNK; kind <= (f->m->has_mtp ? GRAPH_MTP : GRAPH_TRUNK); kind++) {
            /* a call of padding only, every token a logits row: a decode step's shape */
            pad_fill(f, 0, 0, b, b);
            for (int r = 0; r < b; r++)
                f->h_rows[r] = r;
            /* once as it is (every kernel loaded, first-use setup done outside a
             * recording), then recorded where the backend records */
            if ((rc = upload_meta(f, b, b)) || (rc = body(f, kind, b, b, true)) ||
                (be->graph_begin && (rc = run(f, kind, b, b, true, true))))
                return dsv4_error_ctx(rc, "forward: warm-up of %d tokens", b);
        }
    }
    return be->sync(be);
}

void dsv4_fwd_graph_stats(const struct dsv4_fwd *f, struct dsv4_fwd_graph_stats *st)
{
    *st = f->gst;
    st->buckets = f->nbuck;
}

int dsv4_fwd_rollback(struct dsv4_fwd *f, int seq, int64_t len)
{
    if (!dsv4_state_seq_valid(f->st, seq))
        return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", seq);
    return dsv4_state_truncate(f->st, seq, false, len);
}

int dsv4_fwd_mtp_rollback(struct dsv4_fwd *f, int seq, int64_t len)
{
    if (!f->m->has_mtp)
        return 0;
    if (!dsv4_state_seq_valid(f->st, seq))
        return dsv4_error(DSV4_EINVAL, "forward: sequence %d is not live", seq);
    return dsv4_state_truncate(f->st, seq, true, len);
}

int64_t dsv4_fwd_len(const struct dsv4_fwd *f, int seq)
{
    return dsv4_state_len(f->st, seq);
}

int64_t dsv4_fwd_mtp_len(const struct dsv4_fwd *f, int seq)
{
    return f->m->has_mtp ? dsv4_state_mtp_len(f->st, seq) : 0;
}
