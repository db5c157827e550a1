/*
 * model.c - binding a checkpoint's tensors to the per-rank weight views of
 * engine/model/model.h.
 *
 * The storage format of each matrix is read from the tensors themselves
 * (dtype of .weight, presence and dtype of .scale / .weight_scale), not
 * guessed from config.json, so upstream MXFP4, NVFP4 artifacts (trunk NVFP4,
 * MTP MXFP4), FP8 experts and mixes bind through one path.  Row slices for
 * tensor parallelism are plain pointer offsets, valid only at scale-block
 * boundaries (128 rows for FP8; any row for FP4 and BF16); that is checked.
 */
#include "engine/model/model_int.h"

#include "base/dsv4.h"
#include "kernels/formats.h"
#include "engine/io/contract.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 256

static int own(struct dsv4_model *m, void *p)
{
    if (!p)
        return dsv4_error(DSV4_ENOMEM, "model: out of memory");
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 256;
        void **o = realloc(m->owned, sizeof(*o) * cap);
        if (!o) {
            free(p);
            return dsv4_error(DSV4_ENOMEM, "model: out of memory");
        }
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

static const struct dsv4_tensor *find(struct dsv4_model *m, const char *name)
{
    return dsv4_ckpt_find(m->ckpt, name);
}

static int need(struct dsv4_model *m, const char *name, const struct dsv4_tensor **t)
{
    *t = find(m, name);
    if (!*t)
        return dsv4_error(DSV4_ENOENT, "checkpoint: tensor %s missing", name);
    return 0;
}

/*
 * The contract's description of tensor `name` (engine/io/contract.h: the one table of every
 * tensor): its logical [rows, cols] (cols unpacked for FP4; 1 for vectors) and the rows
 * [*r0, *r0 + *nr) this rank holds under the tensor's split (everything when replicated).
 */
static int geom(struct dsv4_model *m, const char *name, int64_t *rows, int64_t *cols, int64_t *r0,
                int64_t *nr)
{
    size_t si;
    int e;
    if (dsv4_contract_lookup(m->con, name, &si, &e))
        return dsv4_error(DSV4_EFORMAT, "model: %s is not a tensor of this config's contract",
                          name);
    const struct dsv4_tspec *t = dsv4_contract_spec(m->con, si);
    int64_t b, en;
    *rows = t->ndim > 0 ? t->shape[0] : 1;
    *cols = t->ndim > 1 ? (t->logical_cols ? t->logical_cols : t->shape[1]) : 1;
    *r0 = 0;
    *nr = *rows;
    if (t->split == DSV4_SPLIT_ROWS) {
        int64_t per = *rows / t->split_units;
        dsv4_contract_split_range(t->split_units, m->rank, m->nranks, &b, &en);
        *r0 = b * per;
        *nr = (en - b) * per;
    } else if (t->split == DSV4_SPLIT_VOCAB) {
        dsv4_contract_split_range_vocab(*rows, m->rank, m->nranks, &b, &en);
        *r0 = b;
        *nr = en - b;
    }
    return 0;
}

static int check_shape(const struct dsv4_tensor *t, int64_t r, int64_t c)
{
    if (t->ndim != 2 || t->shape[0] != r || t->shape[1] != c) {
        char b[64];
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has shape %s, expected [%lld, %lld]",
                          t->name, dsv4_shape_str(t->shape, t->ndim, b, sizeof b), (long long)r,
                          (long long)c);
    }
    return 0;
}

/* A scalar stored as [] or [1] (or [n] with n == 1). */
static int read_scalar(struct dsv4_model *m, const char *name, float *v)
{
    const struct dsv4_tensor *t;
    int rc = need(m, name, &t);
    if (rc)
        return rc;
    if (dsv4_tensor_numel(t) != 1 || t->dtype != DSV4_DTYPE_F32)
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s must be one F32 value", name);
    memcpy(v, t->data, 4);
    return 0;
}

/* Copies a BF16/F32 tensor of exactly n elements (any shape) into a new FP32 array. */
static int read_vec_n(struct dsv4_model *m, const char *name, int64_t off, int64_t n, int64_t total,
                      float **out)
{
    const struct dsv4_tensor *t;
    int rc = need(m, name, &t);
    if (rc)
        return rc;
    if (dsv4_tensor_numel(t) != total)
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has %lld elements, expected %lld", name,
                          (long long)dsv4_tensor_numel(t), (long long)total);
    float *v = malloc(sizeof(float) * (n ? n : 1));
    if ((rc = own(m, v)))
        return rc;
    if (t->dtype == DSV4_DTYPE_F32) {
        memcpy(v, (const char *)t->data + off * 4, n * 4);
    } else if (t->dtype == DSV4_DTYPE_BF16) {
        const uint8_t *p = (const uint8_t *)t->data + off * 2;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            v[i] = dsv4_bf16_to_f32(h);
        }
    } else {
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has dtype %s, expected BF16 or F32", name,
                          dsv4_dtype_name(t->dtype));
    }
    *out = v;
    return 0;
}

/* A vector (or small matrix) of the contract: this rank's part as FP32. */
static int read_vec(struct dsv4_model *m, const char *name, float **out)
{
    int64_t rows, cols, r0, nr;
    int rc = geom(m, name, &rows, &cols, &r0, &nr);
    if (rc)
        return rc;
    return read_vec_n(m, name, r0 * cols, nr * cols, rows * cols, out);
}

/* F32 matrix [rows, cols] used in place when aligned, else copied. */
static int read_f32_mat(struct dsv4_model *m, const char *name, int64_t rows, int64_t cols,
                        const float **out)
{
    const struct dsv4_tensor *t;
    int rc = need(m, name, &t);
    if (rc)
        return rc;
    if (t->dtype != DSV4_DTYPE_F32)
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s must be F32", name);
    if ((rc = check_shape(t, rows, cols)))
        return rc;
    if (((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        return 0;
    }
    float *v = malloc(rows * cols * 4);
    if ((rc = own(m, v)))
        return rc;
    memcpy(v, t->data, rows * cols * 4);
    *out = v;
    return 0;
}

/*
 * Binds this rank's rows of the matrix `prefix`.weight (its shape and split from the
 * contract).  act_f32: force the FP32 activation path (router, compressor, head, wo_a).
 */
static int bind_lin(struct dsv4_model *m, const char *prefix, bool act_f32, struct dsv4_lin *out)
{
    char n[NAME_MAX_LEN], ns[NAME_MAX_LEN];
    const struct dsv4_tensor *w, *s;
    int64_t rows, cols, r0, nr;
    int rc;
    snprintf(n, sizeof n, "%s.weight", prefix);
    if ((rc = geom(m, n, &rows, &cols, &r0, &nr)) || (rc = need(m, n, &w)))
        return rc;
    memset(out, 0, sizeof *out);
    struct dsv4_qweight *q = &out->w;
    q->rows = nr;
    q->cols = cols;
    q->scale2 = 1.0f;
    q->input_scale = 1.0f;
    switch (w->dtype) {
    case DSV4_DTYPE_BF16:
    case DSV4_DTYPE_F32: {
        if ((rc = check_shape(w, rows, cols)))
            return rc;
        size_t es = dsv4_dtype_size(w->dtype);
        q->fmt = w->dtype == DSV4_DTYPE_BF16 ? DSV4_WFMT_BF16 : DSV4_WFMT_F32;
        q->w = (const uint8_t *)w->data + r0 * cols * es;
        break;
    }
    case DSV4_DTYPE_F8_E4M3: {
        if ((rc = check_shape(w, rows, cols)))
            return rc;
        int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        snprintf(ns, sizeof ns, "%s.scale", prefix);
        if (!(s = find(m, ns))) {
            snprintf(ns, sizeof ns, "%s.weight_scale_inv", prefix);
            if ((rc = need(m, ns, &s)))
                return dsv4_error(DSV4_ENOENT, "checkpoint: %s.scale missing", prefix);
        }
        if ((rc = check_shape(s, sr, sc)))
            return rc;
        if (r0 % 128 && nr != rows)
            return dsv4_error(DSV4_ENOTSUP,
                              "model: %s: rank slice at row %lld is not on a 128-row scale block",
                              prefix, (long long)r0);
        q->fmt = DSV4_WFMT_FP8;
        q->w = (const uint8_t *)w->data + r0 * cols;
        if (s->dtype == DSV4_DTYPE_F8_E8M0 || s->dtype == DSV4_DTYPE_U8) {
            q->scale = (const uint8_t *)s->data + (r0 / 128) * sc;
        } else if (s->dtype == DSV4_DTYPE_F32) {
            /* FP8 experts of base models: power-of-two F32 scales -> E8M0 bytes */
            int64_t nsr = (nr + 127) / 128;
            uint8_t *c = malloc(nsr * sc);
            if ((rc = own(m, c)))
                return rc;
            for (int64_t i = 0; i < nsr * sc; i++) {
                float v;
                memcpy(&v, (const uint8_t *)s->data + ((r0 / 128) * sc + i) * 4, 4);
                int e;
                float fr = frexpf(v, &e);
                if (!(v > 0) || fr != 0.5f || e - 1 < -127 || e - 1 > 127)
                    return dsv4_error(DSV4_EFORMAT,
                                      "checkpoint: %s holds %g, not a power-of-two scale", ns,
                                      (double)v);
                c[i] = (uint8_t)(e - 1 + 127);
            }
            q->scale = c;
        } else {
            return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has dtype %s", ns,
                              dsv4_dtype_name(s->dtype));
        }
        break;
    }
    case DSV4_DTYPE_I8:
    case DSV4_DTYPE_U8: {
        if (cols % 32)
            return dsv4_error(DSV4_EFORMAT, "checkpoint: %s: K=%lld not a multiple of 32", n,
                              (long long)cols);
        if ((rc = check_shape(w, rows, cols / 2)))
            return rc;
        q->w = (const uint8_t *)w->data + r0 * (cols / 2);
        snprintf(ns, sizeof ns, "%s.weight_scale", prefix);
        s = find(m, ns);
        if (!s) {
            snprintf(ns, sizeof ns, "%s.scale", prefix);
            if ((rc = need(m, ns, &s)))
                return rc;
        }
        if (s->dtype == DSV4_DTYPE_F8_E8M0) {
            if ((rc = check_shape(s, rows, cols / 32)))
                return rc;
            q->fmt = DSV4_WFMT_MXFP4;
            q->scale = (const uint8_t *)s->data + r0 * (cols / 32);
        } else if (s->dtype == DSV4_DTYPE_F8_E4M3) {
            if ((rc = check_shape(s, rows, cols / 16)))
                return rc;
            q->fmt = DSV4_WFMT_NVFP4;
            q->scale = (const uint8_t *)s->data + r0 * (cols / 16);
            snprintf(ns, sizeof ns, "%s.weight_scale_2", prefix);
            if ((rc = read_scalar(m, ns, &q->scale2)))
                return rc;
            snprintf(ns, sizeof ns, "%s.input_scale", prefix);
            if (find(m, ns) && (rc = read_scalar(m, ns, &q->input_scale)))
                return rc;
            if (!(q->input_scale > 0) || !(q->scale2 > 0))
                return dsv4_error(DSV4_EFORMAT, "checkpoint: %s: non-positive NVFP4 global scale",
                                  prefix);
        } else {
            return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has dtype %s (E8M0 or E4M3 expected)",
                              ns, dsv4_dtype_name(s->dtype));
        }
        break;
    }
    default:
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s has unsupported dtype %s", n,
                          dsv4_dtype_name(w->dtype));
    }
    out->act = act_f32 ? DSV4_ACT_F32 : dsv4_default_act(q->fmt);
    m->weight_bytes += dsv4_qweight_bytes(q);
    return 0;
}

static int bind_hc(struct dsv4_model *m, const char *prefix, int rows, struct dsv4_hc_params *hc)
{
    const struct dsv4_config *c = &m->cfg;
    char n[NAME_MAX_LEN];
    float *v;
    int rc, ns = rows == c->hc_mult ? 1 : 3;
    snprintf(n, sizeof n, "%s_fn", prefix);
    if ((rc = read_f32_mat(m, n, rows, (int64_t)c->hc_mult * c->hidden_size, &hc->fn)))
        return rc;
    snprintf(n, sizeof n, "%s_base", prefix);
    if ((rc = read_vec(m, n, &v)))
        return rc;
    hc->base = v;
    snprintf(n, sizeof n, "%s_scale", prefix);
    if ((rc = read_vec(m, n, &v)))
        return rc;
    memcpy(hc->scale, v, sizeof(float) * ns);
    hc->hc = c->hc_mult;
    hc->iters = c->hc_sinkhorn_iters;
    hc->norm_eps = (float)c->rms_norm_eps;
    hc->hc_eps = (float)c->hc_eps;
    return 0;
}

/* A SwiGLU FFN (routed or shared expert; widths from the contract). */
static int bind_expert(struct dsv4_model *m, const char *prefix, struct dsv4_ffn_w *e)
{
    char n[NAME_MAX_LEN];
    int rc;
    snprintf(n, sizeof n, "%s.w1", prefix);
    if ((rc = bind_lin(m, n, false, &e->w1)))
        return rc;
    snprintf(n, sizeof n, "%s.w3", prefix);
    if ((rc = bind_lin(m, n, false, &e->w3)))
        return rc;
    snprintf(n, sizeof n, "%s.w2", prefix);
    return bind_lin(m, n, false, &e->w2);
}

static int bind_tid2eid(struct dsv4_model *m, const char *name, struct dsv4_layer_w *lw)
{
    const struct dsv4_config *c = &m->cfg;
    const struct dsv4_tensor *t;
    int rc = need(m, name, &t);
    if (rc)
        return rc;
    int64_t V = c->vocab_size, k = c->num_experts_per_tok;
    if ((rc = check_shape(t, V, k)))
        return rc;
    if (t->dtype != DSV4_DTYPE_I64 && t->dtype != DSV4_DTYPE_I32)
        return dsv4_error(DSV4_EFORMAT, "checkpoint: %s must be I64 or I32", name);
    int32_t *v = malloc(sizeof(int32_t) * V * k);
    if ((rc = own(m, v)))
        return rc;
    /* one pass without branches (a restart binds this on its critical path), then the first
     * bad entry looked up only when there is one */
    const uint64_t E = (uint64_t)c->n_routed_experts;
    uint64_t bad = 0;
    if (t->dtype == DSV4_DTYPE_I64) {
        for (int64_t i = 0; i < V * k; i++) {
            int64_t x;
            memcpy(&x, (const uint8_t *)t->data + 8 * i, 8);
            bad |= (uint64_t)x >= E;
            v[i] = (int32_t)x;
        }
    } else {
        for (int64_t i = 0; i < V * k; i++) {
            int32_t y;
            memcpy(&y, (const uint8_t *)t->data + 4 * i, 4);
            bad |= (uint64_t)(int64_t)y >= E;
            v[i] = y;
        }
    }
    for (int64_t i = 0; bad && i < V * k; i++) {
        int64_t x;
        if (t->dtype == DSV4_DTYPE_I64) {
            memcpy(&x, (const uint8_t *)t->data + 8 * i, 8);
        } else {
            int32_t y;
            memcpy(&y, (const uint8_t *)t->data + 4 * i, 4);
            x = y;
        }
        if ((uint64_t)x >= E)
            return dsv4_error(DSV4_EFORMAT, "checkpoint: %s[%lld] = %lld is not an expert id", name,
                              (long long)i, (long long)x);
    }
    lw->tid2eid = v;
    return 0;
}

static int bind_layer(struct dsv4_model *m, int l, struct dsv4_layer_w *lw)
{
    const struct dsv4_config *c = &m->cfg;
    int L = c->num_hidden_layers;
    char p[64], n[NAME_MAX_LEN];
    int rc;
    if (l < L)
        snprintf(p, sizeof p, "layers.%d", l);
    else
        snprintf(p, sizeof p, "mtp.%d", l - L);
    lw->index = l;
    /* the MTP block is window-only whatever compress_ratios says (model.md §10) */
    lw->ratio = l < L ? dsv4_config_ratio(c, l) : 0;
    lw->hash = dsv4_config_is_hash_layer(c, l);
    snprintf(n, sizeof n, "%s.hc_attn", p);
    if ((rc = bind_hc(m, n, (2 + c->hc_mult) * c->hc_mult, &lw->hc_attn)))
        return rc;
    snprintf(n, sizeof n, "%s.hc_ffn", p);
    if ((rc = bind_hc(m, n, (2 + c->hc_mult) * c->hc_mult, &lw->hc_ffn)))
        return rc;
    snprintf(n, sizeof n, "%s.attn_norm.weight", p);
    if ((rc = read_vec(m, n, &lw->attn_norm)))
        return rc;
    snprintf(n, sizeof n, "%s.ffn_norm.weight", p);
    if ((rc = read_vec(m, n, &lw->ffn_norm)))
        return rc;
    /* attention */
    snprintf(n, sizeof n, "%s.attn.wq_a", p);
    if ((rc = bind_lin(m, n, false, &lw->wq_a)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.wq_b", p);
    if ((rc = bind_lin(m, n, false, &lw->wq_b)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.wkv", p);
    if ((rc = bind_lin(m, n, false, &lw->wkv)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.wo_a", p);
    if ((rc = bind_lin(m, n, true, &lw->wo_a)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.wo_b", p);
    if ((rc = bind_lin(m, n, false, &lw->wo_b)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.q_norm.weight", p);
    if ((rc = read_vec(m, n, &lw->q_norm)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.kv_norm.weight", p);
    if ((rc = read_vec(m, n, &lw->kv_norm)))
        return rc;
    snprintf(n, sizeof n, "%s.attn.attn_sink", p);
    if ((rc = read_vec(m, n, &lw->sink)))
        return rc;
    if (lw->ratio > 0) {
        snprintf(n, sizeof n, "%s.attn.compressor.wkv", p);
        if ((rc = bind_lin(m, n, true, &lw->c_wkv)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.compressor.wgate", p);
        if ((rc = bind_lin(m, n, true, &lw->c_wgate)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.compressor.ape", p);
        if ((rc = read_vec(m, n, &lw->c_ape)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.compressor.norm.weight", p);
        if ((rc = read_vec(m, n, &lw->c_norm)))
            return rc;
    }
    if (lw->ratio == 4) {
        snprintf(n, sizeof n, "%s.attn.indexer.wq_b", p);
        if ((rc = bind_lin(m, n, false, &lw->i_wq_b)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.indexer.weights_proj", p);
        if ((rc = bind_lin(m, n, true, &lw->i_wproj)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.indexer.compressor.wkv", p);
        if ((rc = bind_lin(m, n, true, &lw->ic_wkv)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.indexer.compressor.wgate", p);
        if ((rc = bind_lin(m, n, true, &lw->ic_wgate)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.indexer.compressor.ape", p);
        if ((rc = read_vec(m, n, &lw->ic_ape)))
            return rc;
        snprintf(n, sizeof n, "%s.attn.indexer.compressor.norm.weight", p);
        if ((rc = read_vec(m, n, &lw->ic_norm)))
            return rc;
    }
    /* MoE */
    int64_t E = c->n_routed_experts;
    snprintf(n, sizeof n, "%s.ffn.gate", p);
    if ((rc = bind_lin(m, n, true, &lw->gate)))
        return rc;
    if (lw->hash) {
        snprintf(n, sizeof n, "%s.ffn.gate.tid2eid", p);
        if ((rc = bind_tid2eid(m, n, lw)))
            return rc;
    } else {
        /* selection bias of every score-routed layer (model.md §2.2, §3.5): required, since
         * routing without it silently picks other experts */
        snprintf(n, sizeof n, "%s.ffn.gate.bias", p);
        if ((rc = read_vec(m, n, &lw->gate_bias)))
            return rc;
    }
    snprintf(n, sizeof n, "%s.ffn.shared_experts", p);
    if ((rc = bind_expert(m, n, &lw->shared)))
        return rc;
    int ne = m->e1 - m->e0;
    lw->experts = calloc(ne ? ne : 1, sizeof(*lw->experts));
    if ((rc = own(m, lw->experts)))
        return rc;
    for (int e = m->e0; e < m->e1; e++) {
        snprintf(n, sizeof n, "%s.ffn.experts.%d", p, e);
        if ((rc = bind_expert(m, n, &lw->experts[e - m->e0])))
            return rc;
    }
    /* NVFP4 W4A4: one activation global scale per layer and projection kind, the max of
     * input_scale over all experts (vLLM folds it so), for w1/w3 and for w2 */
    if (ne > 0 && lw->experts[0].w1.w.fmt == DSV4_WFMT_NVFP4) {
        float a13 = 0.0f, a2 = 0.0f, v;
        for (int e = 0; e < E; e++) {
            const char *kinds[3] = {"w1", "w3", "w2"};
            for (int j = 0; j < 3; j++) {
                snprintf(n, sizeof n, "%s.ffn.experts.%d.%s.input_scale", p, e, kinds[j]);
                if (!find(m, n))
                    continue;
                if ((rc = read_scalar(m, n, &v)))
                    return rc;
                if (j < 2)
                    a13 = fmaxf(a13, v);
                else
                    a2 = fmaxf(a2, v);
            }
        }
        for (int e = 0; e < ne; e++) {
            lw->experts[e].w1.w.input_scale = a13 > 0 ? a13 : 1.0f;
            lw->experts[e].w3.w.input_scale = a13 > 0 ? a13 : 1.0f;
            lw->experts[e].w2.w.input_scale = a2 > 0 ? a2 : 1.0f;
        }
    }
    return 0;
}

int dsv4_model_bind(struct dsv4_ckpt *ckpt, const struct dsv4_config *cfg, int rank, int nranks,
                    struct dsv4_model **out)
{
    *out = NULL;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return dsv4_error(DSV4_EINVAL, "model: rank %d of %d", rank, nranks);
    const struct dsv4_config *c = cfg;
    if (c->hc_mult < 1 || c->hc_mult > 16 || c->num_key_value_heads != 1 ||
        c->head_dim - c->qk_rope_head_dim <= 0 || c->qk_rope_head_dim / 2 > DSV4_ROPE_MAX_PAIRS)
        return dsv4_error(DSV4_ENOTSUP, "model: unsupported hc_mult/kv heads/head dims");
    if (c->num_attention_heads % c->o_groups)
        return dsv4_error(DSV4_EFORMAT, "model: heads %d not divisible by o_groups %d",
                          c->num_attention_heads, c->o_groups);
    if (c->index_head_dim & (c->index_head_dim - 1))
        return dsv4_error(DSV4_ENOTSUP, "model: index_head_dim %d not a power of two",
                          c->index_head_dim);
    /* the forward pass pools one compressed entry from at most 2 * 128 candidates of at most
     * 1024 channels on the stack (engine/model/forward.c write_token) */
    if (c->head_dim > 1024 || c->index_head_dim > 1024)
        return dsv4_error(DSV4_ENOTSUP, "model: head_dim %d / index_head_dim %d above 1024",
                          c->head_dim, c->index_head_dim);
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (dsv4_config_ratio(c, l) > 128)
            return dsv4_error(DSV4_ENOTSUP, "model: compress ratio %d of layer %d above 128",
                              dsv4_config_ratio(c, l), l);
    struct dsv4_model *m = calloc(1, sizeof *m);
    if (!m)
        return dsv4_error(DSV4_ENOMEM, "model: out of memory");
    m->cfg = *cfg;
    m->ckpt = ckpt;
    int rc;
    if ((rc = dsv4_contract_build(&m->cfg, -1, &m->con))) {
        free(m);
        return rc;
    }
    m->rank = rank;
    m->nranks = nranks;
    int64_t b, e;
    int hpg = c->num_attention_heads / c->o_groups;
    dsv4_contract_split_range(c->o_groups, rank, nranks, &b, &e);
    m->g0 = (int)b;
    m->ng = (int)(e - b);
    m->h0 = m->g0 * hpg;
    m->nh = m->ng * hpg;
    dsv4_contract_split_range(c->index_n_heads, rank, nranks, &b, &e);
    m->ih0 = (int)b;
    m->inh = (int)(e - b);
    dsv4_contract_split_range(c->n_routed_experts, rank, nranks, &b, &e);
    m->e0 = (int)b;
    m->e1 = (int)e;
    m->vchunk = (c->vocab_size + nranks - 1) / nranks;
    dsv4_contract_split_range_vocab(c->vocab_size, rank, nranks, &b, &e);
    m->v0 = b;
    m->nv = e - b;
    int64_t D = c->hidden_size, V = c->vocab_size;
    const struct dsv4_tensor *t;
    if ((rc = need(m, "embed.weight", &t)))
        goto fail;
    if ((rc = check_shape(t, V, D)))
        goto fail;
    if (t->dtype != DSV4_DTYPE_BF16) {
        rc = dsv4_error(DSV4_EFORMAT, "checkpoint: embed.weight must be BF16");
        goto fail;
    }
    m->embed = (const uint16_t *)t->data + m->v0 * D;
    m->weight_bytes += m->nv * D * 2;
    if ((rc = bind_lin(m, "head", true, &m->head)))
        goto fail;
    if ((rc = read_vec(m, "norm.weight", &m->norm)))
        goto fail;
    if ((rc = bind_hc(m, "hc_head", c->hc_mult, &m->hc_head)))
        goto fail;
    m->n_layers = c->num_hidden_layers + c->num_nextn_predict_layers;
    m->layers = calloc(m->n_layers, sizeof(*m->layers));
    if ((rc = own(m, m->layers)))
        goto fail;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if ((rc = bind_layer(m, l, &m->layers[l])))
            goto fail;
    if (c->num_nextn_predict_layers > 0 && find(m, "mtp.0.e_proj.weight")) {
        int l = c->num_hidden_layers;
        if ((rc = bind_layer(m, l, &m->layers[l])))
            goto fail;
        if ((rc = bind_lin(m, "mtp.0.e_proj", false, &m->e_proj)) ||
            (rc = bind_lin(m, "mtp.0.h_proj", false, &m->h_proj)) ||
            (rc = read_vec(m, "mtp.0.enorm.weight", &m->enorm)) ||
            (rc = read_vec(m, "mtp.0.hnorm.weight", &m->hnorm)) ||
            (rc = read_vec(m, "mtp.0.norm.weight", &m->mtp_norm)) ||
            (rc = bind_hc(m, "mtp.0.hc_head", c->hc_mult, &m->mtp_hc_head)))
            goto fail;
        m->has_mtp = true;
    }
    /* MTP blocks beyond the first are not bound (V4 ships one) */
    if (!m->has_mtp)
        m->n_layers = c->num_hidden_layers;
    *out = m;
    return 0;
fail:
    dsv4_model_close(m);
    return rc;
}

int dsv4_model_open(const char *dir, int rank, int nranks, struct dsv4_model **out)
{
    char path[4096];
    struct dsv4_config cfg;
    struct dsv4_ckpt *ck = NULL;
    int rc;
    *out = NULL;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = dsv4_config_load(path, &cfg)))
        return rc;
    if ((rc = dsv4_ckpt_open(dir, &ck)))
        return rc;
    if ((rc = dsv4_model_bind(ck, &cfg, rank, nranks, out))) {
        dsv4_ckpt_close(ck);
        return rc;
    }
    (*out)->own_ckpt = true;
    return 0;
}

void dsv4_model_close(struct dsv4_model *m)
{
    if (!m)
        return;
    if (m->host) {
        /* a device copy (upload.c): its allocation and layer array; the rest is borrowed */
        dsv4_model_free_device(m);
        free(m->layers);
        free(m);
        return;
    }
    dsv4_contract_free(m->con);
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    if (m->own_ckpt)
        dsv4_ckpt_close(m->ckpt);
    free(m);
}

static uint64_t lin_bytes(const struct dsv4_lin *l)
{
    return l->w.w ? dsv4_qweight_bytes(&l->w) : 0;
}

static uint64_t expert_bytes(const struct dsv4_ffn_w *e)
{
    return lin_bytes(&e->w1) + lin_bytes(&e->w2) + lin_bytes(&e->w3);
}

uint64_t dsv4_model_decode_bytes(const struct dsv4_model *m)
{
    if (m->host) /* a device copy: the expert views to size are the host model's */
        return dsv4_model_decode_bytes(m->host);
    const struct dsv4_config *c = &m->cfg;
    uint64_t b = lin_bytes(&m->head) + (uint64_t)c->hidden_size * 2;
    int k = c->num_experts_per_tok, ne = m->e1 - m->e0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const struct dsv4_layer_w *w = &m->layers[l];
        b += lin_bytes(&w->wq_a) + lin_bytes(&w->wq_b) + lin_bytes(&w->wkv) + lin_bytes(&w->wo_a) +
             lin_bytes(&w->wo_b) + lin_bytes(&w->c_wkv) + lin_bytes(&w->c_wgate) +
             lin_bytes(&w->i_wq_b) + lin_bytes(&w->i_wproj) + lin_bytes(&w->ic_wkv) +
             lin_bytes(&w->ic_wgate) + lin_bytes(&w->gate) + expert_bytes(&w->shared);
        b += 2ull * (2 + c->hc_mult) * c->hc_mult * c->hc_mult * c->hidden_size * 4;
        if (ne > 0) {
            /* the k routed experts of a token, spread over the N ranks */
            uint64_t eb = expert_bytes(&w->experts[0]);
            b += eb * k / m->nranks;
        }
    }
    return b;
}

static double lin_macs(const struct dsv4_lin *l)
{
    return l->w.w ? (double)l->w.rows * (double)l->w.cols : 0;
}

static double expert_macs(const struct dsv4_ffn_w *e)
{
    return lin_macs(&e->w1) + lin_macs(&e->w2) + lin_macs(&e->w3);
}

void dsv4_model_decode_cost(const struct dsv4_model *m, int batch, double *bytes, double *macs)
{
    if (m->host) {
        dsv4_model_decode_cost(m->host, batch, bytes, macs);
        return;
    }
    const struct dsv4_config *c = &m->cfg;
    int k = c->num_experts_per_tok, ne = m->e1 - m->e0, E = c->n_routed_experts;
    double B = batch > 1 ? batch : 1, D = (double)c->hidden_size, hc = c->hc_mult;
    double per_tok = lin_macs(&m->head), once = (double)lin_bytes(&m->head);
    once += B * D * 2; /* the embedding rows */
    /* each routed expert of this rank is read at most once per step: of E experts with k
     * picks per token, a given one is picked by some token of the batch with probability
     * 1 - (1 - k/E)^B */
    double touched = E > 0 ? ne * (1.0 - pow(1.0 - (double)k / E, B)) : 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const struct dsv4_layer_w *w = &m->layers[l];
        const struct dsv4_lin *ls[] = {&w->wq_a,    &w->wq_b,   &w->wkv,      &w->wo_a,
                                       &w->wo_b,    &w->c_wkv,  &w->c_wgate,  &w->i_wq_b,
                                       &w->i_wproj, &w->ic_wkv, &w->ic_wgate, &w->gate};
        for (size_t i = 0; i < DSV4_ARRAY_LEN(ls); i++) {
            once += (double)lin_bytes(ls[i]);
            per_tok += lin_macs(ls[i]);
        }
        once += (double)expert_bytes(&w->shared);
        per_tok += expert_macs(&w->shared);
        /* the two mHC sites' F32 projections [(2 + hc) * hc, hc * D] */
        double nmix = (2 + hc) * hc;
        once += 2 * nmix * hc * D * 4;
        per_tok += 2 * nmix * hc * D;
        if (ne > 0) {
            once += touched * (double)expert_bytes(&w->experts[0]);
            per_tok += (double)k * expert_macs(&w->experts[0]) / m->nranks;
        }
    }
    *bytes = once;
    *macs = per_tok * B;
}

const struct dsv4_config *dsv4_model_config(const struct dsv4_model *m)
{
    return &m->cfg;
}

int dsv4_model_rank(const struct dsv4_model *m)
{
    return m->rank;
}

int dsv4_model_nranks(const struct dsv4_model *m)
{
    return m->nranks;
}

bool dsv4_model_has_mtp(const struct dsv4_model *m)
{
    return m->has_mtp;
}

uint64_t dsv4_model_weight_bytes(const struct dsv4_model *m)
{
    return m->weight_bytes;
}

void dsv4_model_expert_range(const struct dsv4_model *m, int *e0, int *e1)
{
    *e0 = m->e0;
    *e1 = m->e1;
}

const int32_t *dsv4_model_hash_ids(const struct dsv4_model *m, int layer, int32_t token)
{
    if (m->host) /* a device copy: the table in host memory is the host model's */
        return dsv4_model_hash_ids(m->host, layer, token);
    if (layer < 0 || layer >= m->n_layers || !m->layers[layer].tid2eid || token < 0 ||
        token >= m->cfg.vocab_size)
        return NULL;
    return m->layers[layer].tid2eid + (int64_t)token * m->cfg.num_experts_per_tok;
}
