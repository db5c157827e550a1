/*
 * backend.c (kernels/ref) - the "ref" backend: every op of kernels/backend.h
 * as plain loops over the scalar oracle (kernels/ref/ops.h, linear.c), one
 * token or row at a time, on host memory.  It is the semantics of the op
 * table written out: slow, obviously right, and what the other backends are
 * compared with (tests/engine/test_backend).
 *
 * The per-row bodies are exported (kernels/ref/backend.h) so that the cpu
 * backend runs exactly this logic in parallel, replacing only the inner
 * kernels (GEMM, attention, indexer scores) by fast ones.
 */
#include "kernels/ref/backend.h"

#include "base/dsv4.h"
#include "kernels/formats.h"
#include "kernels/ref/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ checks */

void dsv4_be_check(const struct dsv4_tensor *t, enum dsv4_dtype dt, int ndim)
{
    DSV4_ASSERT(t && t->data && t->dtype == dt && (ndim < 0 || t->ndim == ndim));
}

int64_t dsv4_be_cols(const struct dsv4_tensor *t)
{
    return t->shape[t->ndim - 1];
}

int64_t dsv4_be_rows(const struct dsv4_tensor *t)
{
    int64_t r = 1;
    for (int d = 0; d < t->ndim - 1; d++)
        r *= t->shape[d];
    return r;
}

/* Row stride: the given stride of dimension ndim-2 for 2-D views, else dense. */
int64_t dsv4_be_ld(const struct dsv4_tensor *t)
{
    if (t->ndim == 2)
        return dsv4_tensor_stride(t, 0);
    DSV4_ASSERT(dsv4_tensor_contig(t));
    return dsv4_be_cols(t);
}

static float *frow(const struct dsv4_tensor *t, int64_t r)
{
    return (float *)t->data + r * dsv4_be_ld(t);
}

/* ------------------------------------------------------------ per-row bodies */

void dsv4_ref_rmsnorm_row(const struct dsv4_tensor *x, const float *w, float eps,
                          const struct dsv4_tensor *y, unsigned flags, int64_t r)
{
    int64_t n = dsv4_be_cols(x);
    float *yr = frow(y, r);
    dsv4_ref_rmsnorm(frow(x, r), w, n, eps, yr);
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(yr, n);
}

void dsv4_ref_rope_row(const struct dsv4_tensor *x, const int64_t *pos, const struct dsv4_rope *rp,
                       bool inverse, unsigned flags, int64_t t)
{
    int64_t nh = x->shape[1], dh = x->shape[2];
    for (int64_t h = 0; h < nh; h++) {
        float *v = (float *)x->data + (t * nh + h) * dh + dh - rp->dim;
        dsv4_ref_rope(rp, v, pos[t], inverse);
        if (flags & DSV4_OP_BF16)
            dsv4_ref_round_bf16(v, rp->dim);
    }
}

void dsv4_ref_act_sim_row(const struct dsv4_tensor *x, enum dsv4_sim kind, int group, int64_t r)
{
    float *v = frow(x, r);
    if (kind == DSV4_SIM_FP8)
        dsv4_act_sim_fp8(v, dsv4_be_cols(x), group);
    else
        dsv4_act_sim_fp4(v, dsv4_be_cols(x), group);
}

void dsv4_ref_hadamard_row(const struct dsv4_tensor *x, unsigned flags, int64_t r)
{
    float *v = frow(x, r);
    dsv4_ref_hadamard(v, (int)dsv4_be_cols(x));
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(v, dsv4_be_cols(x));
}

void dsv4_ref_swiglu_row(const struct dsv4_tensor *g, const struct dsv4_tensor *u, float limit,
                         const float *w, const struct dsv4_tensor *h, unsigned flags, int64_t t)
{
    int64_t n = dsv4_be_cols(g);
    float *hr = frow(h, t);
    dsv4_ref_swiglu(frow(g, t), frow(u, t), n, limit, w ? w[t] : 1.0f, hr);
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(hr, n);
}

void dsv4_ref_embed_row(const uint16_t *table, int64_t v0, int64_t nv,
                        const struct dsv4_tensor *tokens, const struct dsv4_tensor *out, int64_t t)
{
    int64_t D = dsv4_be_cols(out), v = ((const int32_t *)tokens->data)[t];
    float *o = frow(out, t);
    if (v >= v0 && v < v0 + nv) {
        const uint16_t *e = table + (v - v0) * D;
        for (int64_t d = 0; d < D; d++)
            o[d] = dsv4_bf16_to_f32(e[d]);
    } else {
        memset(o, 0, sizeof(float) * D);
    }
}

int32_t dsv4_ref_argmax_row(const float *row, int64_t V)
{
    int64_t best = -1;
    for (int64_t v = 0; v < V; v++)
        if (!isnan(row[v]) && (best < 0 || row[v] > row[best]))
            best = v;
    return (int32_t)(best < 0 ? 0 : best);
}

void dsv4_ref_hc_pre_token(const struct dsv4_hc_params *p, const struct dsv4_tensor *X,
                           const float *norm_w, float eps, const struct dsv4_tensor *y,
                           const struct dsv4_tensor *xn, const struct dsv4_tensor *post,
                           const struct dsv4_tensor *comb, const float *mix, int64_t t)
{
    int hc = p->hc;
    int64_t D = dsv4_be_cols(y);
    float *yt = (float *)y->data + t * D, *xt = (float *)xn->data + t * D;
    dsv4_ref_hc_pre((const float *)X->data + t * hc * D, hc, D, p->fn, p->scale, p->base, mix,
                    p->norm_eps, p->hc_eps, p->iters, yt, (float *)post->data + t * hc,
                    (float *)comb->data + t * hc * hc);
    dsv4_ref_round_bf16(yt, D);
    dsv4_ref_rmsnorm(yt, norm_w, D, eps, xt);
    dsv4_ref_round_bf16(xt, D);
}

void dsv4_ref_hc_post_token(const struct dsv4_tensor *A, const struct dsv4_tensor *X,
                            const struct dsv4_tensor *post, const struct dsv4_tensor *comb,
                            const struct dsv4_tensor *Xo, unsigned flags, int64_t t)
{
    int hc = (int)X->shape[1];
    int64_t D = X->shape[2];
    float *xo = (float *)Xo->data + t * hc * D;
    dsv4_ref_hc_post((const float *)A->data + t * D, (const float *)X->data + t * hc * D,
                     (const float *)post->data + t * hc, (const float *)comb->data + t * hc * hc,
                     hc, D, xo);
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(xo, hc * D);
}

void dsv4_ref_hc_head_token(const struct dsv4_hc_params *p, const struct dsv4_tensor *X,
                            const float *norm_w, float eps, const struct dsv4_tensor *z,
                            const float *mix, int64_t t)
{
    int hc = p->hc;
    int64_t D = dsv4_be_cols(z);
    float *zt = (float *)z->data + t * D;
    dsv4_ref_hc_head((const float *)X->data + t * hc * D, hc, D, p->fn, p->scale[0], p->base, mix,
                     p->norm_eps, p->hc_eps, zt);
    dsv4_ref_round_bf16(zt, D);
    dsv4_ref_rmsnorm(zt, norm_w, D, eps, zt);
    dsv4_ref_round_bf16(zt, D);
}

void dsv4_ref_route_token(const struct dsv4_route_args *a, int t, float *scratch)
{
    int k = a->k;
    int32_t *ids = a->ids + (int64_t)t * k;
    float *wt = a->wts + (int64_t)t * k;
    int sel[64];
    DSV4_ASSERT(k <= 64);
    const int32_t *hash = a->tid2eid ? a->tid2eid + (int64_t)a->tokens[t] * k : NULL;
    dsv4_ref_route(a->logits + (int64_t)t * a->E, a->E, a->func, a->bias, hash, k, a->renorm,
                   a->scale, scratch, sel, wt);
    for (int i = 0; i < k; i++)
        ids[i] = sel[i];
    /* the combine sums in expert-id order: sort the selection by id */
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            int32_t ti = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = ti;
            float tw = wt[j];
            wt[j] = wt[j - 1];
            wt[j - 1] = tw;
        }
}

void dsv4_ref_combine_token(const struct dsv4_tensor *slots, const struct dsv4_tensor *out,
                            unsigned flags, int64_t t)
{
    int64_t S = slots->shape[1], D = slots->shape[2];
    const float *s = (const float *)slots->data + t * S * D;
    float *o = (float *)out->data + t * D;
    for (int64_t d = 0; d < D; d++) {
        double acc = 0.0;
        for (int64_t i = 0; i < S; i++)
            acc += s[i * D + d];
        o[d] = (float)acc;
    }
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(o, D);
}

/* ---- attention state */

size_t dsv4_ref_task_bytes(const struct dsv4_be_limits *lim)
{
    /* attention: key pointers + probabilities; indexer: scores + key pointers + top-k */
    size_t attn = (sizeof(void *) + sizeof(float)) * (size_t)(lim->keys + 16);
    size_t sel = (sizeof(float) + sizeof(void *) + sizeof(int)) * (size_t)(lim->entries + 16);
    return DSV4_MAX(attn, sel) + 128;
}

void dsv4_ref_compress_ape(const struct dsv4_kv_args *a, int t)
{
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    int64_t r = l->ratio, cw = l->coff * v->dh, id2 = 2 * v->idim;
    int64_t s = a->tok->pos[t] % r;
    float *g = a->cg + (int64_t)t * cw;
    for (int64_t i = 0; i < cw; i++)
        g[i] += a->ape[s * cw + i];
    if (r == 4) {
        float *ig = a->icg + (int64_t)t * id2;
        for (int64_t i = 0; i < id2; i++)
            ig[i] += a->iape[s * id2 + i];
    }
}

/*
 * Candidates of entry b (model.md §3.3): r = 4 the previous block's positions with their
 * first halves (offset 0), then block b's at offset `half`; r = 128 block b's at 0.  Rows
 * are [kv (w), gate (w)] of width w = coff * d; from the ring before the chunk, else from
 * the chunk's kv/gate arrays (stride w).
 */
static int candidates(const struct dsv4_kv_args *a, int t, int64_t b, bool idx, const float **kvp,
                      const float **gp)
{
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    int r = l->ratio, n = 0;
    int64_t d = idx ? v->idim : v->dh, w = (idx ? 2 : l->coff) * d;
    int64_t half = r == 4 ? d : 0, first = dsv4_toks_first(a->tok, t);
    int slot = a->tok->slot[t];
    for (int64_t q = (r == 4 && b > 0 ? b - 1 : b) * r; q < (b + 1) * r; q++) {
        int64_t off = q < b * r ? 0 : half;
        if (q >= first) {
            int64_t row = dsv4_toks_row(a->tok, t, q);
            kvp[n] = (idx ? a->ickv : a->ckv) + row * w + off;
            gp[n++] = (idx ? a->icg : a->cg) + row * w + off;
        } else {
            const float *rq =
                    idx ? dsv4_kv_icmp(v, slot, a->layer, q) : dsv4_kv_cmp(v, slot, a->layer, q);
            kvp[n] = rq + off;
            gp[n++] = rq + w + off;
        }
    }
    return n;
}

void dsv4_ref_compress_token(const struct dsv4_kv_args *a, int t)
{
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    int64_t p = a->tok->pos[t], r = l->ratio, dh = v->dh, id = v->idim, rd = v->rd;
    int slot = a->tok->slot[t];
    if ((p + 1) % r)
        return;
    int64_t b = (p + 1) / r - 1;
    const float *kvp[256], *gp[256];
    float tmp[1024];
    DSV4_ASSERT(2 * r <= 256 && dh <= 1024 && id <= 1024);
    int n = candidates(a, t, b, false, kvp, gp);
    dsv4_ref_compress_pool(kvp, gp, n, dh, tmp);
    dsv4_ref_rmsnorm(tmp, a->norm, dh, a->eps, tmp);
    dsv4_ref_round_bf16(tmp, dh);
    dsv4_ref_rope(a->rope, tmp + dh - rd, b * r, false);
    dsv4_ref_round_bf16(tmp, dh);
    dsv4_act_sim_fp8(tmp, dh - rd, 64);
    uint16_t *ent = dsv4_kv_entry(v, slot, a->layer, b);
    for (int64_t i = 0; i < dh; i++)
        ent[i] = dsv4_f32_to_bf16(tmp[i]);
    if (r != 4)
        return;
    n = candidates(a, t, b, true, kvp, gp);
    dsv4_ref_compress_pool(kvp, gp, n, id, tmp);
    dsv4_ref_rmsnorm(tmp, a->inorm, id, a->eps, tmp);
    dsv4_ref_round_bf16(tmp, id);
    dsv4_ref_rope(a->rope, tmp + id - rd, b * r, false);
    dsv4_ref_round_bf16(tmp, id);
    dsv4_ref_hadamard(tmp, (int)id);
    dsv4_ref_round_bf16(tmp, id);
    dsv4_act_sim_fp4(tmp, id, 32);
    uint16_t *ik = dsv4_kv_ikey(v, slot, a->layer, b);
    for (int64_t i = 0; i < id; i++)
        ik[i] = dsv4_f32_to_bf16(tmp[i]);
}

void dsv4_ref_select_token(const struct dsv4_select_args *a, int t, void *scratch,
                           dsv4_scores_fn scores, dsv4_topk_fn topk)
{
    const struct dsv4_kv_view *v = a->kv;
    int64_t nvis = (a->tok->pos[t] + 1) / 4;
    int32_t *sel = a->sel + (int64_t)t * a->topk;
    int slot = a->tok->slot[t];
    if (nvis <= a->topk) {
        for (int64_t b = 0; b < nvis; b++)
            sel[b] = (int32_t)b;
        a->nsel[t] = (int32_t)nvis;
        return;
    }
    char *ws = scratch;
    float *sc = (float *)ws;
    const uint16_t **ik = (const uint16_t **)(ws + ((sizeof(float) * nvis + 15) & ~(size_t)15));
    int *top = (int *)(ik + nvis);
    float w[256];
    DSV4_ASSERT(a->IH <= 256);
    for (int h = 0; h < a->IH; h++)
        w[h] = a->w[(int64_t)t * a->IH + h] * a->wscale;
    for (int64_t b = 0; b < nvis; b++)
        ik[b] = dsv4_kv_ikey(v, slot, a->layer, b);
    scores(a->q + (int64_t)t * a->IH * v->idim, w, a->IH, v->idim, ik, (int)nvis, sc);
    topk(sc, (int)nvis, a->topk, top);
    for (int i = 0; i < a->topk; i++)
        sel[i] = top[i];
    a->nsel[t] = a->topk;
}

void dsv4_ref_attn_token(const struct dsv4_attn_args *a, int t, int h0, int h1, void *scratch,
                         dsv4_attn_fn attn)
{
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    const struct dsv4_toks *k = a->tok;
    int64_t p = k->pos[t], first = dsv4_toks_first(k, t), dh = v->dh;
    int slot = k->slot[t], n = 0;
    const uint16_t **keys = scratch;
    for (int64_t q = DSV4_MAX((int64_t)0, p - v->window + 1); q <= p; q++)
        keys[n++] = q >= first ? a->kv_chunk + dsv4_toks_row(k, t, q) * dh
                               : dsv4_kv_win(v, slot, a->layer, q);
    if (l->ratio == 4) {
        const int32_t *sel = a->sel + (int64_t)t * a->topk;
        for (int i = 0; i < a->nsel[t]; i++)
            keys[n++] = dsv4_kv_entry(v, slot, a->layer, sel[i]);
    } else if (l->ratio > 0) {
        int64_t nvis = (p + 1) / l->ratio;
        for (int64_t b = 0; b < nvis; b++)
            keys[n++] = dsv4_kv_entry(v, slot, a->layer, b);
    }
    float *probs = (float *)(keys + n + 1);
    probs = (float *)(((uintptr_t)probs + 15) & ~(uintptr_t)15);
    /* the heads in one call: a fast kernel shares each key between them */
    float *o = a->out + ((int64_t)t * a->nh + h0) * dh;
    attn(a->q + ((int64_t)t * a->nh + h0) * dh, h1 - h0, (int)dh, keys, n, a->sink + h0, a->scale,
         true, probs, o);
    if (a->flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(o, (h1 - h0) * dh);
}

void dsv4_ref_store_token(const struct dsv4_kv_args *a, int t)
{
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    const struct dsv4_toks *k = a->tok;
    int64_t p = k->pos[t], end = dsv4_toks_first(k, t) + k->len[t], dh = v->dh;
    int slot = k->slot[t];
    if (p >= end - v->win_rows)
        memcpy(dsv4_kv_win(v, slot, a->layer, p), a->kv_chunk + (int64_t)t * dh, 2 * dh);
    if (l->ratio == 0 || p < end - l->cmp_rows)
        return;
    int64_t cw = l->coff * dh, id2 = 2 * v->idim;
    float *c = dsv4_kv_cmp(v, slot, a->layer, p);
    memcpy(c, a->ckv + (int64_t)t * cw, sizeof(float) * cw);
    memcpy(c + cw, a->cg + (int64_t)t * cw, sizeof(float) * cw);
    if (l->ratio == 4) {
        float *ic = dsv4_kv_icmp(v, slot, a->layer, p);
        memcpy(ic, a->ickv + (int64_t)t * id2, sizeof(float) * id2);
        memcpy(ic + id2, a->icg + (int64_t)t * id2, sizeof(float) * id2);
    }
}

/* ------------------------------------------------------------ the ref backend */

struct ref_be {
    struct dsv4_backend be;
    struct dsv4_be_limits lim;
    void *task;               /* dsv4_ref_task_bytes */
    float *route;             /* [E] */
    float *gb, *ub, *hb, *yb; /* one row each: moe */
    float *tmp;               /* [cols] linear_grouped */
};

static struct ref_be *R(struct dsv4_backend *be)
{
    return be->impl;
}

static void ref_destroy(struct dsv4_backend *be)
{
    struct ref_be *r = R(be);
    free(r->task);
    free(r->route);
    free(r->gb);
    free(r->ub);
    free(r->hb);
    free(r->yb);
    free(r->tmp);
    free(r);
}

static int ref_reserve(struct dsv4_backend *be, const struct dsv4_be_limits *lim)
{
    struct ref_be *r = R(be);
    size_t tb = dsv4_ref_task_bytes(lim);
    int64_t wide = DSV4_MAX(DSV4_MAX(lim->hidden, lim->inter), lim->cols);
    void *task = realloc(r->task, tb);
    if (task)
        r->task = task;
    float **bufs[] = {&r->route, &r->gb, &r->ub, &r->hb, &r->yb, &r->tmp};
    int64_t sizes[] = {lim->experts, wide, wide, wide, wide, DSV4_MAX(wide, lim->cols * 4)};
    int ok = task != NULL;
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bufs); i++) {
        float *p = realloc(*bufs[i], sizeof(float) * (size_t)DSV4_MAX(sizes[i], (int64_t)1));
        if (p)
            *bufs[i] = p;
        ok &= p != NULL;
    }
    if (!ok)
        return dsv4_error(DSV4_ENOMEM, "ref backend: out of memory for scratch");
    r->lim = *lim;
    return 0;
}

static void *host_alloc(struct dsv4_backend *be, size_t bytes)
{
    (void)be;
    return calloc(1, bytes ? bytes : 1);
}

static void host_free(struct dsv4_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int host_copy(struct dsv4_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memcpy(dst, src, bytes);
    return 0;
}

static int host_sync(struct dsv4_backend *be)
{
    (void)be;
    return 0;
}

static void host_copy2d(struct dsv4_backend *be, void *dst, size_t dpitch, const void *src,
                        size_t spitch, size_t width, size_t rows)
{
    (void)be;
    for (size_t r = 0; r < rows; r++)
        memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
}

static void host_gather_rows(struct dsv4_backend *be, const struct dsv4_tensor *src,
                             const struct dsv4_tensor *idx, const struct dsv4_tensor *dst)
{
    (void)be;
    size_t w = (size_t)dsv4_be_cols(src) * dsv4_dtype_size(src->dtype);
    int64_t n = dsv4_be_rows(dst), N = dsv4_be_rows(src);
    DSV4_ASSERT(src->dtype == dst->dtype && dsv4_be_cols(src) == dsv4_be_cols(dst));
    DSV4_ASSERT(idx->dtype == DSV4_DTYPE_I32 && dsv4_tensor_numel(idx) == n);
    for (int64_t i = 0; i < n; i++) {
        int32_t j = ((const int32_t *)idx->data)[i];
        DSV4_ASSERT(j >= 0 && j < N);
        memcpy((char *)dst->data + i * w, (const char *)src->data + j * w, w);
    }
}

static void host_fill_zero(struct dsv4_backend *be, const struct dsv4_tensor *x)
{
    (void)be;
    DSV4_ASSERT(dsv4_tensor_contig(x));
    memset(x->data, 0, (size_t)dsv4_tensor_numel(x) * dsv4_dtype_size(x->dtype));
}

static void host_convert(struct dsv4_backend *be, const struct dsv4_tensor *src,
                         const struct dsv4_tensor *dst)
{
    (void)be;
    int64_t n = dsv4_tensor_numel(src);
    DSV4_ASSERT(n == dsv4_tensor_numel(dst) && dsv4_tensor_contig(src) && dsv4_tensor_contig(dst));
    if (src->dtype == DSV4_DTYPE_F32 && dst->dtype == DSV4_DTYPE_BF16) {
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst->data)[i] = dsv4_f32_to_bf16(((const float *)src->data)[i]);
    } else {
        DSV4_ASSERT(src->dtype == DSV4_DTYPE_BF16 && dst->dtype == DSV4_DTYPE_F32);
        for (int64_t i = 0; i < n; i++)
            ((float *)dst->data)[i] = dsv4_bf16_to_f32(((const uint16_t *)src->data)[i]);
    }
}

static void host_round_bf16(struct dsv4_backend *be, const struct dsv4_tensor *x)
{
    (void)be;
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_tensor_contig(x));
    dsv4_ref_round_bf16(x->data, dsv4_tensor_numel(x));
}

static void ref_act_sim(struct dsv4_backend *be, const struct dsv4_tensor *x, enum dsv4_sim kind,
                        int group)
{
    (void)be;
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    for (int64_t r = 0; r < dsv4_be_rows(x); r++)
        dsv4_ref_act_sim_row(x, kind, group, r);
}

static void ref_hadamard(struct dsv4_backend *be, const struct dsv4_tensor *x, unsigned flags)
{
    (void)be;
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    for (int64_t r = 0; r < dsv4_be_rows(x); r++)
        dsv4_ref_hadamard_row(x, flags, r);
}

static void ref_rmsnorm(struct dsv4_backend *be, const struct dsv4_tensor *x, const float *w,
                        float eps, const struct dsv4_tensor *y, unsigned flags)
{
    (void)be;
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_be_rows(x) == dsv4_be_rows(y) && dsv4_be_cols(x) == dsv4_be_cols(y));
    for (int64_t r = 0; r < dsv4_be_rows(x); r++)
        dsv4_ref_rmsnorm_row(x, w, eps, y, flags, r);
}

static void ref_rope(struct dsv4_backend *be, const struct dsv4_tensor *x, const int64_t *pos,
                     const struct dsv4_rope *rp, bool inverse, unsigned flags)
{
    (void)be;
    dsv4_be_check(x, DSV4_DTYPE_F32, 3);
    DSV4_ASSERT(rp->dim <= x->shape[2]);
    for (int64_t t = 0; t < x->shape[0]; t++)
        dsv4_ref_rope_row(x, pos, rp, inverse, flags, t);
}

static void ref_swiglu(struct dsv4_backend *be, const struct dsv4_tensor *g,
                       const struct dsv4_tensor *u, float limit, const float *w,
                       const struct dsv4_tensor *h, unsigned flags)
{
    (void)be;
    for (int64_t t = 0; t < dsv4_be_rows(g); t++)
        dsv4_ref_swiglu_row(g, u, limit, w, h, flags, t);
}

static void ref_linear(struct dsv4_backend *be, const struct dsv4_lin *l,
                       const struct dsv4_tensor *x, const struct dsv4_tensor *y, unsigned flags)
{
    (void)be;
    int64_t m = dsv4_be_rows(x);
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    dsv4_be_check(y, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_be_cols(x) == l->w.cols && dsv4_be_cols(y) == l->w.rows &&
                dsv4_be_rows(y) == m && dsv4_tensor_contig(x) && dsv4_tensor_contig(y));
    dsv4_ref_linear(&l->w, l->act, x->data, m, y->data);
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(y->data, m * l->w.rows);
}

static void ref_linear_grouped(struct dsv4_backend *be, const struct dsv4_lin *l, int G,
                               const struct dsv4_tensor *x, const struct dsv4_tensor *y,
                               unsigned flags)
{
    struct ref_be *r = R(be);
    int64_t m = dsv4_be_rows(x), R_ = l->w.rows / G, K = l->w.cols;
    DSV4_ASSERT(l->w.rows % G == 0 && dsv4_be_cols(x) == G * K && dsv4_be_cols(y) == G * R_);
    for (int g = 0; g < G; g++) {
        struct dsv4_lin sub = *l;
        bool own = dsv4_qweight_slice(&l->w, g * R_, R_, &sub.w);
        for (int64_t t = 0; t < m; t++) {
            const float *xt = (const float *)x->data + t * G * K + g * K;
            float *yt = (float *)y->data + t * G * R_ + g * R_;
            if (own) {
                dsv4_ref_linear(&sub.w, sub.act, xt, 1, yt);
            } else {
                dsv4_ref_linear(&l->w, l->act, xt, 1, r->tmp);
                memcpy(yt, r->tmp + g * R_, sizeof(float) * R_);
            }
        }
    }
    if (flags & DSV4_OP_BF16)
        dsv4_ref_round_bf16(y->data, m * G * R_);
}

static void ref_moe(struct dsv4_backend *be, const struct dsv4_moe_args *a)
{
    struct ref_be *r = R(be);
    int64_t D = a->D, I = a->I;
    for (int t = 0; t < a->T; t++)
        for (int i = 0; i < a->k; i++) {
            float *out = a->out + ((int64_t)t * a->slots + i) * D;
            int e = a->ids[(int64_t)t * a->k + i];
            if (e < a->e0 || e >= a->e1) {
                memset(out, 0, sizeof(float) * D);
                continue;
            }
            const struct dsv4_ffn_w *w = &a->ex[e - a->e0];
            const float *x = a->x + (int64_t)t * D;
            dsv4_ref_linear(&w->w1.w, w->w1.act, x, 1, r->gb);
            dsv4_ref_linear(&w->w3.w, w->w3.act, x, 1, r->ub);
            dsv4_ref_round_bf16(r->gb, I);
            dsv4_ref_round_bf16(r->ub, I);
            dsv4_ref_swiglu(r->gb, r->ub, I, a->limit, a->wts[(int64_t)t * a->k + i], r->hb);
            dsv4_ref_round_bf16(r->hb, I);
            dsv4_ref_linear(&w->w2.w, w->w2.act, r->hb, 1, out);
            dsv4_ref_round_bf16(out, D);
        }
}

static void ref_moe_combine(struct dsv4_backend *be, const struct dsv4_tensor *slots,
                            const struct dsv4_tensor *out, unsigned flags)
{
    (void)be;
    dsv4_be_check(slots, DSV4_DTYPE_F32, 3);
    for (int64_t t = 0; t < slots->shape[0]; t++)
        dsv4_ref_combine_token(slots, out, flags, t);
}

static void ref_route(struct dsv4_backend *be, const struct dsv4_route_args *a)
{
    for (int t = 0; t < a->T; t++)
        dsv4_ref_route_token(a, t, R(be)->route);
}

static void ref_embed(struct dsv4_backend *be, const uint16_t *table, int64_t v0, int64_t nv,
                      const struct dsv4_tensor *tokens, const struct dsv4_tensor *out)
{
    (void)be;
    for (int64_t t = 0; t < dsv4_be_rows(out); t++)
        dsv4_ref_embed_row(table, v0, nv, tokens, out, t);
}

static void ref_hc_pre(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                       const struct dsv4_tensor *X, const float *norm_w, float eps,
                       const struct dsv4_tensor *y, const struct dsv4_tensor *xn,
                       const struct dsv4_tensor *post, const struct dsv4_tensor *comb)
{
    (void)be;
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    for (int64_t t = 0; t < X->shape[0]; t++)
        dsv4_ref_hc_pre_token(p, X, norm_w, eps, y, xn, post, comb, NULL, t);
}

static void ref_hc_post(struct dsv4_backend *be, const struct dsv4_tensor *A,
                        const struct dsv4_tensor *X, const struct dsv4_tensor *post,
                        const struct dsv4_tensor *comb, const struct dsv4_tensor *Xo,
                        unsigned flags)
{
    (void)be;
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    for (int64_t t = 0; t < X->shape[0]; t++)
        dsv4_ref_hc_post_token(A, X, post, comb, Xo, flags, t);
}

static void ref_hc_head(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                        const struct dsv4_tensor *X, const float *norm_w, float eps,
                        const struct dsv4_tensor *z)
{
    (void)be;
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    for (int64_t t = 0; t < X->shape[0]; t++)
        dsv4_ref_hc_head_token(p, X, norm_w, eps, z, NULL, t);
}

static void host_hc_expand(struct dsv4_backend *be, const struct dsv4_tensor *a,
                           const struct dsv4_tensor *b, const struct dsv4_tensor *out,
                           unsigned flags)
{
    (void)be;
    int64_t T = out->shape[0], hc = out->shape[1], D = out->shape[2];
    float *o = out->data;
    const float *bv = b->data, *av = a ? a->data : NULL;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < hc; j++) {
            float *oj = o + (t * hc + j) * D;
            if (av) {
                for (int64_t d = 0; d < D; d++)
                    oj[d] = av[(t * hc + j) * D + d] + bv[t * D + d];
            } else {
                memcpy(oj, bv + t * D, sizeof(float) * D);
            }
            if (flags & DSV4_OP_BF16)
                dsv4_ref_round_bf16(oj, D);
        }
}

static void ref_kv_compress(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    (void)be;
    for (int t = 0; t < a->tok->T; t++)
        dsv4_ref_compress_ape(a, t);
    for (int t = 0; t < a->tok->T; t++)
        dsv4_ref_compress_token(a, t);
}

static void ref_kv_select(struct dsv4_backend *be, const struct dsv4_select_args *a)
{
    for (int t = 0; t < a->tok->T; t++)
        dsv4_ref_select_token(a, t, R(be)->task, dsv4_ref_indexer_scores, dsv4_ref_topk);
}

static void ref_attn(struct dsv4_backend *be, const struct dsv4_attn_args *a)
{
    for (int t = 0; t < a->tok->T; t++)
        dsv4_ref_attn_token(a, t, 0, a->nh, R(be)->task, dsv4_ref_sparse_attn);
}

static void ref_kv_store(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    (void)be;
    for (int t = 0; t < a->tok->T; t++)
        dsv4_ref_store_token(a, t);
}

static void ref_argmax(struct dsv4_backend *be, const struct dsv4_tensor *logits, int32_t *ids)
{
    (void)be;
    dsv4_be_check(logits, DSV4_DTYPE_F32, 2);
    for (int64_t r = 0; r < logits->shape[0]; r++)
        ids[r] = dsv4_ref_argmax_row((const float *)logits->data + r * logits->shape[1],
                                     logits->shape[1]);
}

int dsv4_backend_ref_create(struct dsv4_backend **out)
{
    struct ref_be *r = calloc(1, sizeof *r);
    *out = NULL;
    if (!r)
        return dsv4_error(DSV4_ENOMEM, "ref backend: out of memory");
    struct dsv4_backend *b = &r->be;
    b->name = "ref";
    b->impl = r;
    dsv4_ref_host_ops(b);
    b->destroy = ref_destroy;
    b->reserve = ref_reserve;
    b->act_sim = ref_act_sim;
    b->hadamard = ref_hadamard;
    b->rmsnorm = ref_rmsnorm;
    b->rope = ref_rope;
    b->swiglu = ref_swiglu;
    b->linear = ref_linear;
    b->linear_grouped = ref_linear_grouped;
    b->moe = ref_moe;
    b->moe_combine = ref_moe_combine;
    b->route = ref_route;
    b->embed = ref_embed;
    b->hc_pre = ref_hc_pre;
    b->hc_post = ref_hc_post;
    b->hc_head = ref_hc_head;
    b->kv_compress = ref_kv_compress;
    b->kv_select = ref_kv_select;
    b->attn = ref_attn;
    b->kv_store = ref_kv_store;
    b->argmax = ref_argmax;
    struct dsv4_be_limits lim = {.tokens = 1,
                                 .cols = 1,
                                 .hidden = 1,
                                 .inter = 1,
                                 .experts = 1,
                                 .topk = 1,
                                 .keys = 1,
                                 .entries = 1};
    int rc = ref_reserve(b, &lim);
    if (rc) {
        ref_destroy(b);
        return rc;
    }
    *out = b;
    return 0;
}

void dsv4_ref_host_ops(struct dsv4_backend *b)
{
    b->device = DSV4_DEVICE_HOST;
    b->alloc = host_alloc;
    b->free = host_free;
    b->upload = host_copy;
    b->download = host_copy;
    b->sync = host_sync;
    b->copy2d = host_copy2d;
    b->gather_rows = host_gather_rows;
    b->fill_zero = host_fill_zero;
    b->convert = host_convert;
    b->round_bf16 = host_round_bf16;
    b->hc_expand = host_hc_expand;
}
