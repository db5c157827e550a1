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
#include <unistd.h>

struct up {
    struct dsv4_backend *be;
    uint8_t *arena; /* NULL while sizing */
    uint64_t off;
    uint64_t layout; /* FNV-1a of every piece's offset and size: the layout's fingerprint */
    bool fill;       /* upload the bytes (false: an imported arena already holds them) */
    int rc;
};

/* The arena's first bytes: what a worker importing it checks before trusting it. */
#define HDR_BYTES 256
struct arena_hdr {
    char magic[8]; /* "DSV4WDEV" */
    uint64_t bytes, layout;
    int32_t rank, nranks;
    uint64_t complete; /* 1 once every piece was uploaded (written last) */
};

static void mix(uint64_t *h, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        *h ^= (v >> (8 * i)) & 0xff;
        *h *= 0x100000001b3ull;
    }
}

/* One piece: sized in the first pass, uploaded (unless already there) and repointed in the
 * second; `always` uploads even into an imported arena (arrays of device pointers, whose
 * values depend on where the arena is mapped). */
static void piece_at(struct up *u, const void **p, uint64_t bytes, bool always)
{
    if (!*p || !bytes || u->rc)
        return;
    uint64_t at = u->off;
    u->off += (bytes + 255) & ~(uint64_t)255;
    mix(&u->layout, at);
    mix(&u->layout, bytes);
    if (!u->arena)
        return;
    void *d = u->arena + at;
    if ((u->fill || always) && (u->rc = u->be->upload(u->be, d, *p, bytes)))
        return;
    *p = d;
}

static void piece(struct up *u, const void **p, uint64_t bytes)
{
    piece_at(u, p, bytes, false);
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
    piece_at(u, &arr, sizeof *ex * ne, true);
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

enum up_mode { UP_PLAIN, UP_SHARED, UP_IMPORT };

static void arena_free(struct dsv4_backend *be, void *arena, uint64_t bytes, bool shared)
{
    if (!arena)
        return;
    if (shared)
        be->free_shared(be, arena, bytes);
    else
        be->free(be, arena);
}

/* The device copy of m in one arena: a plain allocation, a shareable one (*fd set), or the
 * shareable one behind fd_in (its bytes checked against the layout, nothing uploaded but
 * the expert pointer arrays). */
static int upload(const struct dsv4_model *m, struct dsv4_backend *be, enum up_mode mode, int fd_in,
                  int *fd_out, struct dsv4_model **out)
{
    *out = NULL;
    if (be->device == DSV4_DEVICE_HOST)
        return dsv4_error(DSV4_EINVAL, "model upload: backend %s computes on the host", be->name);
    if (m->host)
        return dsv4_error(DSV4_EINVAL, "model upload: the model is already a device copy");
    if (mode != UP_PLAIN && (!be->alloc_shared || !be->import_shared || !be->free_shared))
        return dsv4_error(DSV4_ENOTSUP, "model upload: backend %s has no shareable memory",
                          be->name);
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
    struct up u = {.be = be, .off = HDR_BYTES, .layout = 0xcbf29ce484222325ull};
    walk(&u, dm); /* sizes only: pointers unchanged */
    uint64_t bytes = u.off, layout = u.layout;
    struct arena_hdr h = {.magic = "DSV4WDEV",
                          .bytes = bytes,
                          .layout = layout,
                          .rank = m->rank,
                          .nranks = m->nranks};
    int fd = -1;
    void *arena = NULL;
    if (mode == UP_PLAIN)
        arena = be->alloc(be, bytes);
    else if (mode == UP_SHARED)
        arena = be->alloc_shared(be, bytes, &fd);
    else
        arena = be->import_shared(be, fd_in, bytes);
    if (!arena) {
        free(layers);
        free(dm);
        if (mode == UP_IMPORT)
            return dsv4_error_ctx(DSV4_EINVAL, "model import");
        return dsv4_error(DSV4_ENOMEM,
                          "model upload: %llu bytes of weights do not fit the device memory",
                          (unsigned long long)bytes);
    }
    dm->dev_arena = arena;
    dm->dev_bytes = bytes;
    dm->dev_shared = mode != UP_PLAIN;
    if (mode == UP_IMPORT) {
        struct arena_hdr got;
        int rc = be->download(be, &got, arena, sizeof got);
        if (rc || memcmp(got.magic, h.magic, sizeof h.magic) || got.bytes != bytes ||
            got.layout != layout || got.rank != h.rank || got.nranks != h.nranks ||
            got.complete != 1) {
            dsv4_model_close(dm);
            return dsv4_error(rc ? rc : DSV4_EFORMAT,
                              "model import: the shared weights are not this rank's (%llu bytes, "
                              "layout %016llx, rank %d/%d, complete %llu; want %llu, %016llx, "
                              "%d/%d)",
                              (unsigned long long)got.bytes, (unsigned long long)got.layout,
                              got.rank, got.nranks, (unsigned long long)got.complete,
                              (unsigned long long)bytes, (unsigned long long)layout, h.rank,
                              h.nranks);
        }
    }
    u.arena = arena;
    u.off = HDR_BYTES;
    u.fill = mode != UP_IMPORT;
    walk(&u, dm);
    if (!u.rc && mode != UP_IMPORT) {
        h.complete = 1;
        u.rc = be->upload(be, arena, &h, sizeof h);
    }
    if (!u.rc)
        u.rc = be->sync(be);
    if (u.rc) {
        dsv4_model_close(dm);
        if (fd >= 0)
            close(fd);
        return dsv4_error_ctx(u.rc, mode == UP_IMPORT ? "model import" : "model upload");
    }
    if (fd_out)
        *fd_out = fd;
    *out = dm;
    return 0;
}

int dsv4_model_upload(const struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_model **out)
{
    return upload(m, be, UP_PLAIN, -1, NULL, out);
}

int dsv4_model_upload_shared(const struct dsv4_model *m, struct dsv4_backend *be, int *fd,
                             struct dsv4_model **out)
{
    *fd = -1;
    return upload(m, be, UP_SHARED, -1, fd, out);
}

int dsv4_model_import(const struct dsv4_model *m, struct dsv4_backend *be, int fd,
                      struct dsv4_model **out)
{
    return upload(m, be, UP_IMPORT, fd, NULL, out);
}

void dsv4_model_free_device(struct dsv4_model *dm)
{
    arena_free(dm->dev_be, dm->dev_arena, dm->dev_bytes, dm->dev_shared);
    dm->dev_arena = NULL;
}

int dsv4_model_device(const struct dsv4_model *m)
{
    return m->device;
}
