/*
 * upload.c - a bound model's weights in a device backend's memory
 * (dsv4_model_upload, engine/model/model.h).
 *
 * The binding (model.c) leaves matrices as views into the mmapped
 * checkpoint and small vectors as host copies: right for the host
 * backends, whose "device" memory is the host's.  A GPU backend's kernels
 * can only read device memory, so the forward pass needs a model whose every
 * pointer is device memory.  The copy made here is the host model's struct
 * with each weight pointer replaced by its device twin: the same walk over
 * every tensor runs twice, once to size one allocation (256-byte aligned
 * pieces), once to upload and repoint; the per-layer expert arrays are
 * uploaded last, as arrays of struct dsv4_ffn_w holding device pointers,
 * because the moe op reads them on the device.
 *
 * Invariants: the copy borrows the host model (its config, contract,
 * checkpoint and host-only tables: tid2eid for dsv4_model_hash_ids, the
 * expert views for dsv4_model_decode_bytes), which must outlive it; the
 * copy owns its layer array and the device allocation.  Views are uploaded
 * exactly as bound (rank slices included), so the kernels see the same
 * bytes the host backends read.
 */
#include "engine/model/model_int.h"

#include "base/dsv4.h"

#include <stdlib.h>
#include <string.h>

struct up {
    struct dsv4_backend *be;
    uint8_t *arena; /* NULL while sizing */
    uint64_t off;
    int rc;
};

/* One piece: sized in the first pass, uploaded and repointed in the second. */
static void piece(struct up *u, const void **p, uint64_t bytes)
{
    if (!*p || !bytes || u->rc)
        return;
    uint64_t at = u->off;
    u->off += (bytes + 255) & ~(uint64_t)255;
    if (!u->arena)
        return;
    void *d = u->arena + at;
    if ((u->rc = u->be->upload(u->be, d, *p, bytes)))
        return;
    *p = d;
}

static void vec(struct up *u, float **p, int64_t n)
{
    piece(u, (const void **)p, (uint64_t)(n > 0 ? n : 0) * sizeof(float));
}

/* Weight bytes and scale bytes of a view (dsv4_qweight_bytes split in two). */
static void lin(struct up *u, struct dsv4_lin *l)
{
    struct dsv4_qweight *q = &l->w;
    uint64_t r = (uint64_t)q->rows, c = (uint64_t)q->cols, wb = 0, sb = 0;
    if (!q->w)
        return;
    switch (q->fmt) {
    case DSV4_WFMT_F32:
        wb = r * c * 4;
        break;
    case DSV4_WFMT_BF16:
        wb = r * c * 2;
        break;
    case DSV4_WFMT_FP8:
        wb = r * c;
        sb = ((r + 127) / 128) * ((c + 127) / 128);
        break;
    case DSV4_WFMT_MXFP4:
        wb = r * ((c + 1) / 2);
        sb = r * ((c + 31) / 32);
        break;
    case DSV4_WFMT_NVFP4:
        wb = r * ((c + 1) / 2);
        sb = r * ((c + 15) / 16);
        break;
    }
    piece(u, &q->w, wb);
    piece(u, (const void **)&q->scale, sb);
}

static void hc(struct up *u, struct dsv4_hc_params *p, int rows, int64_t D)
{
    piece(u, (const void **)&p->fn, (uint64_t)rows * p->hc * D * sizeof(float));
    piece(u, (const void **)&p->base, (uint64_t)rows * sizeof(float));
}

static void ffn(struct up *u, struct dsv4_ffn_w *f)
{
    lin(u, &f->w1);
    lin(u, &f->w2);
    lin(u, &f->w3);
}

static void layer(struct up *u, const struct dsv4_model *m, struct dsv4_layer_w *w)
{
    const struct dsv4_config *c = &m->cfg;
    int64_t D = c->hidden_size, dh = c->head_dim, id = c->index_head_dim;
    int nmix = (2 + c->hc_mult) * c->hc_mult, ne = m->e1 - m->e0;
    hc(u, &w->hc_attn, nmix, D);
    hc(u, &w->hc_ffn, nmix, D);
    vec(u, &w->attn_norm, D);
    vec(u, &w->ffn_norm, D);
    lin(u, &w->wq_a);
    lin(u, &w->wq_b);
    lin(u, &w->wkv);
    lin(u, &w->wo_a);
    lin(u, &w->wo_b);
    vec(u, &w->q_norm, c->q_lora_rank);
    vec(u, &w->kv_norm, dh);
    vec(u, &w->sink, m->nh);
    if (w->ratio > 0) {
        int coff = w->ratio == 4 ? 2 : 1;
        lin(u, &w->c_wkv);
        lin(u, &w->c_wgate);
        vec(u, &w->c_ape, (int64_t)w->ratio * coff * dh);
        vec(u, &w->c_norm, dh);
    }
    if (w->ratio == 4) {
        lin(u, &w->i_wq_b);
        lin(u, &w->i_wproj);
        lin(u, &w->ic_wkv);
        lin(u, &w->ic_wgate);
        vec(u, &w->ic_ape, 4 * 2 * id);
        vec(u, &w->ic_norm, id);
    }
    lin(u, &w->gate);
    vec(u, &w->gate_bias, c->n_routed_experts);
    piece(u, (const void **)&w->tid2eid,
          (uint64_t)c->vocab_size * c->num_experts_per_tok * sizeof(int32_t));
    ffn(u, &w->shared);
    if (ne <= 0 || !w->experts)
        return;
    /* the experts' views first (in a host copy of the array), then the array itself */
    struct dsv4_ffn_w *ex = w->experts;
    if (u->arena) {
        ex = malloc(sizeof *ex * ne);
        if (!ex) {
            u->rc = dsv4_error(DSV4_ENOMEM, "model upload: out of memory");
            return;
        }
        memcpy(ex, w->experts, sizeof *ex * ne);
    }
    for (int e = 0; e < ne; e++)
        ffn(u, &ex[e]);
    const void *arr = ex;
    piece(u, &arr, sizeof *ex * ne);
    if (u->arena) {
        w->experts = u->rc ? NULL : (struct dsv4_ffn_w *)arr;
        free(ex);
    }
}

/* Every weight of the copy dm, in a fixed order. */
static void walk(struct up *u, struct dsv4_model *dm)
{
    const struct dsv4_config *c = &dm->cfg;
    int64_t D = c->hidden_size;
    piece(u, (const void **)&dm->embed, (uint64_t)(dm->nv > 0 ? dm->nv : 0) * D * 2);
    lin(u, &dm->head);
    vec(u, &dm->norm, D);
    hc(u, &dm->hc_head, c->hc_mult, D);
    for (int l = 0; l < dm->n_layers; l++)
        layer(u, dm, &dm->layers[l]);
    if (dm->has_mtp) {
        lin(u, &dm->e_proj);
        lin(u, &dm->h_proj);
        vec(u, &dm->enorm, D);
        vec(u, &dm->hnorm, D);
        vec(u, &dm->mtp_norm, D);
        hc(u, &dm->mtp_hc_head, c->hc_mult, D);
    }
}

int dsv4_model_upload(const struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_model **out)
{
    *out = NULL;
    if (be->device == DSV4_DEVICE_HOST)
        return dsv4_error(DSV4_EINVAL, "model upload: backend %s computes on the host", be->name);
    if (m->host)
        return dsv4_error(DSV4_EINVAL, "model upload: the model is already a device copy");
    struct dsv4_model *dm = calloc(1, sizeof *dm);
    struct dsv4_layer_w *layers = calloc(m->n_layers ? m->n_layers : 1, sizeof *layers);
    if (!dm || !layers) {
        free(dm);
        free(layers);
        return dsv4_error(DSV4_ENOMEM, "model upload: out of memory");
    }
    *dm = *m;
    memcpy(layers, m->layers, sizeof *layers * m->n_layers);
    dm->layers = layers;
    dm->con = NULL;
    dm->own_ckpt = false;
    dm->owned = NULL;
    dm->n_owned = dm->cap_owned = 0;
    dm->host = m;
    dm->dev_be = be;
    dm->device = be->device;
    struct up u = {.be = be};
    walk(&u, dm); /* sizes only: pointers unchanged */
    dm->dev_arena = be->alloc(be, u.off ? u.off : 1);
    if (!dm->dev_arena) {
        free(layers);
        free(dm);
        return dsv4_error(DSV4_ENOMEM,
                          "model upload: %llu bytes of weights do not fit the device memory",
                          (unsigned long long)u.off);
    }
    u.arena = dm->dev_arena;
    u.off = 0;
    walk(&u, dm);
    if (!u.rc)
        u.rc = be->sync(be);
    if (u.rc) {
        dsv4_model_close(dm);
        return dsv4_error_ctx(u.rc, "model upload");
    }
    *out = dm;
    return 0;
}

int dsv4_model_device(const struct dsv4_model *m)
{
    return m->device;
}
