/*
 * state.c - the state pool (see engine/model/state.h).
 *
 * Arena layout (backend memory): [slot 0][slot 1]...[slot S-1][block 0]...;
 * inside a slot, per layer: window ring, compressor ring, indexer compressor
 * ring, then the pending hidden row; inside a block, per compressed layer:
 * entries, then indexer keys.  Offsets are 64-byte aligned.  Free blocks
 * are a stack of ids; a slot's block table maps logical block i (positions
 * [i B, (i + 1) B)) to a physical block, -1 when unmapped.
 *
 * Invariants: a live slot maps exactly its first ceil(max(len, reserved) /
 * B) logical blocks; every physical block is on the free stack or mapped by
 * exactly one slot.
 *
 * Device backends: the kernels read the block table, so the view points at
 * a device copy of it (dtable); the host table stays the master, and every
 * entry that becomes mapped is uploaded in dsv4_state_reserve, in stream
 * order before the forward call that uses it.  Unmapping needs no upload:
 * kernels read only the blocks of positions below a sequence's length,
 * which stay mapped.
 */
#include "engine/model/state.h"

#include "base/dsv4.h"
#include "engine/model/model_int.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

struct slot_info {
    bool live;
    int64_t len, mtp_len;
    int64_t mapped;     /* logical blocks mapped */
    int64_t hidden_pos; /* position of the pending MTP hidden row, -1 none */
};

struct dsv4_state {
    const struct dsv4_model *m;
    struct dsv4_backend *be;
    struct dsv4_state_sizes sz;
    struct dsv4_kv_view view;
    struct dsv4_kv_layer *layers;
    int max_seqs, max_rollback, n_layers, hc;
    int64_t max_ctx, n_blocks, n_free;
    int64_t hid_off; /* bytes from the slot start */
    uint64_t arena_bytes;
    uint8_t *arena;
    int32_t *table;  /* [max_seqs, max_blocks] */
    int32_t *dtable; /* its device copy (device backends), else NULL */
    int32_t *free_ids;
    int32_t *tokens; /* host [n_blocks, B] */
    struct slot_info *slots;
};

static int64_t align64(int64_t x)
{
    return (x + 63) & ~(int64_t)63;
}

/* Layer geometry shared by the size computation and the pool. */
static void layer_offsets(const struct dsv4_config *c, int ratio, int max_rollback, int B,
                          int64_t *slot_off, int64_t *blk_off, struct dsv4_kv_layer *l,
                          struct dsv4_state_sizes *sz)
{
    int64_t dh = c->head_dim, id = c->index_head_dim;
    int win_rows = c->sliding_window + max_rollback;
    l->ratio = ratio;
    l->coff = ratio == 4 ? 2 : 1;
    l->cmp_rows = ratio > 0 ? l->coff * ratio + max_rollback : 0;
    l->win_off = *slot_off;
    int64_t w = align64((int64_t)win_rows * dh * 2);
    *slot_off += w;
    sz->slot_window += w;
    l->cmp_off = l->icmp_off = l->ent_off = l->ikey_off = -1;
    if (ratio > 0) {
        l->cmp_off = *slot_off;
        w = align64((int64_t)l->cmp_rows * 2 * l->coff * dh * 4);
        *slot_off += w;
        sz->slot_cmp += w;
        l->ent_off = *blk_off;
        w = align64((int64_t)(B / ratio) * dh * 2);
        *blk_off += w;
        sz->block_entries += w;
    }
    if (ratio == 4) {
        l->icmp_off = *slot_off;
        w = align64((int64_t)l->cmp_rows * 4 * id * 4);
        *slot_off += w;
        sz->slot_icmp += w;
        l->ikey_off = *blk_off;
        w = align64((int64_t)(B / 4) * id * 2);
        *blk_off += w;
        sz->block_ikeys += w;
    }
}

static int layout(const struct dsv4_config *c, bool mtp, int max_rollback, int block_tokens,
                  struct dsv4_kv_layer *layers, int64_t *hid_off, struct dsv4_state_sizes *out)
{
    int B = block_tokens ? block_tokens : DSV4_STATE_BLOCK_TOKENS;
    int L = c->num_hidden_layers, n = L + (mtp ? 1 : 0);
    memset(out, 0, sizeof *out);
    if (max_rollback < 0 || B < 1 || B > (1 << 20))
        return dsv4_error(DSV4_EINVAL, "state: block_tokens %d, max_rollback %d", B, max_rollback);
    int64_t so = 0, bo = 0;
    for (int i = 0; i < n; i++) {
        int r = i < L ? dsv4_config_ratio(c, i) : 0;
        if (r > 0 && B % r)
            return dsv4_error(DSV4_EINVAL,
                              "state: block of %d positions is not a multiple of layer %d's "
                              "compression ratio %d",
                              B, i, r);
        struct dsv4_kv_layer tmp, *l = layers ? &layers[i] : &tmp;
        layer_offsets(c, r, max_rollback, B, &so, &bo, l, out);
    }
    if (hid_off)
        *hid_off = so;
    int64_t hb = align64((int64_t)c->hc_mult * c->hidden_size * 4);
    so += hb;
    out->slot_hidden = (uint64_t)hb;
    out->block_tokens = B;
    out->win_rows = c->sliding_window + max_rollback;
    out->slot_bytes = (uint64_t)so;
    out->block_bytes = (uint64_t)DSV4_MAX(bo, (int64_t)64);
    out->bytes_per_token = (double)out->block_bytes / B;
    return 0;
}

int dsv4_state_sizes(const struct dsv4_config *c, bool mtp, int max_rollback, int block_tokens,
                     struct dsv4_state_sizes *out)
{
    return layout(c, mtp, max_rollback, block_tokens, NULL, NULL, out);
}

int dsv4_state_init(const struct dsv4_model *m, struct dsv4_backend *be,
                    const struct dsv4_state_opts *o, struct dsv4_state **out)
{
    const struct dsv4_config *c = &m->cfg;
    *out = NULL;
    if (o->max_seqs < 1 || o->max_seqs > (1 << 20) || o->max_ctx < 1 ||
        o->max_ctx > (INT64_C(1) << 40) || o->max_rollback < 0 || o->max_rollback > 1024)
        return dsv4_error(DSV4_EINVAL, "state: max_seqs %d, max_ctx %lld, max_rollback %d",
                          o->max_seqs, (long long)o->max_ctx, o->max_rollback);
    struct dsv4_state *st = calloc(1, sizeof *st);
    if (!st)
        return dsv4_error(DSV4_ENOMEM, "state: out of memory");
    st->m = m;
    st->be = be;
    st->n_layers = m->n_layers;
    st->max_seqs = o->max_seqs;
    st->max_rollback = o->max_rollback;
    st->max_ctx = o->max_ctx;
    st->hc = c->hc_mult;
    int rc;
    st->layers = calloc(m->n_layers, sizeof *st->layers);
    if (!st->layers) {
        rc = dsv4_error(DSV4_ENOMEM, "state: out of memory");
        goto fail;
    }
    if ((rc = layout(c, m->has_mtp, o->max_rollback, o->block_tokens, st->layers, &st->hid_off,
                     &st->sz)))
        goto fail;
    int B = st->sz.block_tokens;
    int64_t max_blocks = (o->max_ctx + B - 1) / B;
    uint64_t slots_bytes = st->sz.slot_bytes * (uint64_t)o->max_seqs;
    int64_t nb = o->blocks;
    if (nb <= 0 && o->bytes > 0) {
        if (o->bytes <= slots_bytes) {
            rc = dsv4_error(DSV4_ENOSPC,
                            "state: %llu bytes do not hold %d sequence slots of %llu bytes",
                            (unsigned long long)o->bytes, o->max_seqs,
                            (unsigned long long)st->sz.slot_bytes);
            goto fail;
        }
        nb = (int64_t)((o->bytes - slots_bytes) / st->sz.block_bytes);
    } else if (nb <= 0) {
        nb = max_blocks * o->max_seqs;
    }
    if (nb < 1 || nb > INT32_MAX) {
        rc = dsv4_error(DSV4_ENOSPC, "state: %lld blocks of %llu bytes", (long long)nb,
                        (unsigned long long)st->sz.block_bytes);
        goto fail;
    }
    st->n_blocks = nb;
    st->arena_bytes = slots_bytes + (uint64_t)nb * st->sz.block_bytes;
    st->arena = be->alloc(be, st->arena_bytes);
    st->table = malloc(sizeof(int32_t) * (size_t)(max_blocks * o->max_seqs));
    st->free_ids = malloc(sizeof(int32_t) * (size_t)nb);
    st->tokens = calloc((size_t)nb * B, sizeof(int32_t));
    st->slots = calloc(o->max_seqs, sizeof *st->slots);
    if (!st->arena || !st->table || !st->free_ids || !st->tokens || !st->slots) {
        rc = dsv4_error(DSV4_ENOMEM, "state: out of memory for a pool of %llu bytes",
                        (unsigned long long)st->arena_bytes);
        goto fail;
    }
    for (int64_t i = 0; i < max_blocks * o->max_seqs; i++)
        st->table[i] = -1;
    for (int64_t i = 0; i < nb; i++)
        st->free_ids[i] = (int32_t)(nb - 1 - i);
    st->n_free = nb;
    struct dsv4_kv_view *v = &st->view;
    v->slots = st->arena;
    v->blocks = st->arena + slots_bytes;
    v->slot_bytes = (int64_t)st->sz.slot_bytes;
    v->block_bytes = (int64_t)st->sz.block_bytes;
    v->block_tokens = B;
    v->win_rows = st->sz.win_rows;
    v->window = c->sliding_window;
    v->dh = c->head_dim;
    v->rd = c->qk_rope_head_dim;
    v->idim = c->index_head_dim;
    v->block_table = st->table;
    if (be->device != DSV4_DEVICE_HOST) {
        size_t tb = sizeof(int32_t) * (size_t)(max_blocks * o->max_seqs);
        st->dtable = be->alloc(be, tb);
        if (!st->dtable) {
            rc = dsv4_error(DSV4_ENOMEM, "state: no device memory for the block table");
            goto fail;
        }
        if ((rc = be->upload(be, st->dtable, st->table, tb)))
            goto fail;
        v->block_table = st->dtable;
    }
    v->max_blocks = (int)max_blocks;
    v->n_layers = m->n_layers;
    v->layers = st->layers;
    *out = st;
    return 0;
fail:
    dsv4_state_free(st);
    return rc;
}

void dsv4_state_free(struct dsv4_state *st)
{
    if (!st)
        return;
    if (st->arena)
        st->be->free(st->be, st->arena);
    if (st->dtable)
        st->be->free(st->be, st->dtable);
    free(st->layers);
    free(st->table);
    free(st->free_ids);
    free(st->tokens);
    free(st->slots);
    free(st);
}

static int32_t *table_row(const struct dsv4_state *st, int slot)
{
    return st->table + (int64_t)slot * st->view.max_blocks;
}

/* Unmaps logical blocks [keep, mapped) of a slot. */
static void unmap_from(struct dsv4_state *st, int slot, int64_t keep)
{
    struct slot_info *s = &st->slots[slot];
    int32_t *row = table_row(st, slot);
    for (int64_t i = keep; i < s->mapped; i++) {
        DSV4_ASSERT(row[i] >= 0);
        st->free_ids[st->n_free++] = row[i];
        row[i] = -1;
    }
    if (keep < s->mapped)
        s->mapped = keep;
}

int dsv4_state_seq_new(struct dsv4_state *st, int *slot)
{
    for (int i = 0; i < st->max_seqs; i++)
        if (!st->slots[i].live) {
            st->slots[i] = (struct slot_info){.live = true, .hidden_pos = -1};
            *slot = i;
            return 0;
        }
    return dsv4_error(DSV4_ENOSPC, "state: all %d sequence slots in use", st->max_seqs);
}

void dsv4_state_seq_free(struct dsv4_state *st, int slot)
{
    if (!dsv4_state_seq_valid(st, slot))
        return;
    unmap_from(st, slot, 0);
    st->slots[slot] = (struct slot_info){0};
}

bool dsv4_state_seq_valid(const struct dsv4_state *st, int slot)
{
    return slot >= 0 && slot < st->max_seqs && st->slots[slot].live;
}

int64_t dsv4_state_len(const struct dsv4_state *st, int slot)
{
    return st->slots[slot].len;
}

int64_t dsv4_state_mtp_len(const struct dsv4_state *st, int slot)
{
    return st->slots[slot].mtp_len;
}

int64_t dsv4_state_blocks_for(const struct dsv4_state *st, int64_t len)
{
    int B = st->sz.block_tokens;
    return len <= 0 ? 0 : (len + B - 1) / B;
}

int dsv4_state_reserve(struct dsv4_state *st, int slot, int64_t end)
{
    DSV4_ASSERT(dsv4_state_seq_valid(st, slot));
    struct slot_info *s = &st->slots[slot];
    if (end > st->max_ctx)
        return dsv4_error(DSV4_ERANGE, "state: position %lld beyond the context of %lld",
                          (long long)(end - 1), (long long)st->max_ctx);
    int64_t need = dsv4_state_blocks_for(st, end);
    if (need <= s->mapped)
        return 0;
    if (need - s->mapped > st->n_free)
        return dsv4_error(
                DSV4_ENOSPC, "state pool full: %lld more blocks needed, %lld of %lld free",
                (long long)(need - s->mapped), (long long)st->n_free, (long long)st->n_blocks);
    int32_t *row = table_row(st, slot);
    for (int64_t i = s->mapped; i < need; i++)
        row[i] = st->free_ids[--st->n_free];
    if (st->dtable) {
        int rc = st->be->upload(st->be, st->dtable + (row - st->table) + s->mapped, row + s->mapped,
                                sizeof(int32_t) * (size_t)(need - s->mapped));
        if (rc) {
            for (int64_t i = need - 1; i >= s->mapped; i--) {
                st->free_ids[st->n_free++] = row[i];
                row[i] = -1;
            }
            return dsv4_error_ctx(rc, "state: block table upload");
        }
    }
    s->mapped = need;
    return 0;
}

int dsv4_state_truncate(struct dsv4_state *st, int slot, bool mtp, int64_t len)
{
    DSV4_ASSERT(dsv4_state_seq_valid(st, slot));
    struct slot_info *s = &st->slots[slot];
    int64_t cur = mtp ? s->mtp_len : s->len;
    if (len < 0 || len > cur)
        return dsv4_error(DSV4_ERANGE, "state: roll back to %lld, length is %lld", (long long)len,
                          (long long)cur);
    if (len > 0 && len < cur - st->max_rollback)
        return dsv4_error(DSV4_ERANGE,
                          "state: cannot roll back from %lld to %lld (horizon %d positions)",
                          (long long)cur, (long long)len, st->max_rollback);
    if (mtp) {
        s->mtp_len = len;
        return 0;
    }
    s->len = len;
    unmap_from(st, slot, dsv4_state_blocks_for(st, len));
    if (s->hidden_pos >= len)
        s->hidden_pos = -1;
    return 0;
}

void dsv4_state_commit(struct dsv4_state *st, int slot, bool mtp, int64_t end)
{
    struct slot_info *s = &st->slots[slot];
    DSV4_ASSERT(s->live && (mtp || dsv4_state_blocks_for(st, end) <= s->mapped));
    if (mtp)
        s->mtp_len = end;
    else
        s->len = end;
}

const struct dsv4_kv_view *dsv4_state_view(const struct dsv4_state *st)
{
    return &st->view;
}

float *dsv4_state_hidden(const struct dsv4_state *st, int slot)
{
    return (float *)dsv4_kv_slot(&st->view, slot, st->hid_off);
}

int64_t dsv4_state_hidden_pos(const struct dsv4_state *st, int slot)
{
    return st->slots[slot].hidden_pos;
}

void dsv4_state_set_hidden_pos(struct dsv4_state *st, int slot, int64_t pos)
{
    st->slots[slot].hidden_pos = pos;
}

static int32_t *token_at(const struct dsv4_state *st, int slot, int64_t pos)
{
    int B = st->sz.block_tokens;
    int64_t lb = pos / B;
    DSV4_ASSERT(pos >= 0 && lb < st->slots[slot].mapped);
    return st->tokens + (int64_t)table_row(st, slot)[lb] * B + pos % B;
}

void dsv4_state_put_tokens(struct dsv4_state *st, int slot, int64_t pos, const int32_t *ids,
                           int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        *token_at(st, slot, pos + i) = ids[i];
}

void dsv4_state_get_tokens(const struct dsv4_state *st, int slot, int64_t pos, int32_t *ids,
                           int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        ids[i] = *token_at(st, slot, pos + i);
}

int64_t dsv4_state_total_blocks(const struct dsv4_state *st)
{
    return st->n_blocks;
}

int64_t dsv4_state_free_blocks(const struct dsv4_state *st)
{
    return st->n_free;
}

int dsv4_state_free_slots(const struct dsv4_state *st)
{
    int n = 0;
    for (int i = 0; i < st->max_seqs; i++)
        n += !st->slots[i].live;
    return n;
}

int dsv4_state_max_seqs(const struct dsv4_state *st)
{
    return st->max_seqs;
}

int dsv4_state_max_rollback(const struct dsv4_state *st)
{
    return st->max_rollback;
}

int64_t dsv4_state_max_ctx(const struct dsv4_state *st)
{
    return st->max_ctx;
}

int64_t dsv4_state_seq_blocks(const struct dsv4_state *st, int slot)
{
    return st->slots[slot].mapped;
}

const struct dsv4_state_sizes *dsv4_state_layout_sizes(const struct dsv4_state *st)
{
    return &st->sz;
}

uint64_t dsv4_state_bytes(const struct dsv4_state *st)
{
    return st->arena_bytes;
}

/* ------------------------------------------------------------ swap */

const char *dsv4_state_kind_name(enum dsv4_state_kind k)
{
    static const char *names[] = {"window", "compressor", "indexer-compressor",
                                  "hidden", "entries",    "indexer-keys",
                                  "tokens"};
    return (unsigned)k < DSV4_ARRAY_LEN(names) ? names[k] : "invalid";
}

struct dsv4_state_swap {
    int64_t len, mtp_len, hidden_pos, blocks;
    uint64_t raw[DSV4_STATE_KIND_COUNT];
    void *frame[DSV4_STATE_KIND_COUNT];
    size_t frame_bytes[DSV4_STATE_KIND_COUNT];
};

/*
 * Visits every piece of a slot's state of kind k as (offset in the arena, bytes)
 * ranges, in a fixed order, calling fn(ctx, ptr, bytes).  Token ids (host) go through
 * the same walk with the host history as the base.
 */
typedef void (*piece_fn)(void *ctx, void *p, size_t bytes);

static void walk(const struct dsv4_state *st, int slot, int64_t blocks, enum dsv4_state_kind k,
                 piece_fn fn, void *ctx)
{
    const struct dsv4_kv_view *v = &st->view;
    int B = st->sz.block_tokens;
    const int32_t *row = table_row(st, slot);
    for (int l = 0; l < st->n_layers; l++) {
        const struct dsv4_kv_layer *y = &st->layers[l];
        if (k == DSV4_STATE_KIND_WINDOW)
            fn(ctx, dsv4_kv_slot(v, slot, y->win_off), (size_t)v->win_rows * v->dh * 2);
        if (k == DSV4_STATE_KIND_CMP && y->ratio > 0)
            fn(ctx, dsv4_kv_slot(v, slot, y->cmp_off),
               (size_t)y->cmp_rows * 2 * y->coff * v->dh * 4);
        if (k == DSV4_STATE_KIND_ICMP && y->ratio == 4)
            fn(ctx, dsv4_kv_slot(v, slot, y->icmp_off), (size_t)y->cmp_rows * 4 * v->idim * 4);
        for (int64_t b = 0; b < blocks; b++) {
            uint8_t *blk = v->blocks + (int64_t)row[b] * v->block_bytes;
            if (k == DSV4_STATE_KIND_ENTRIES && y->ratio > 0)
                fn(ctx, blk + y->ent_off, (size_t)(B / y->ratio) * v->dh * 2);
            if (k == DSV4_STATE_KIND_IKEYS && y->ratio == 4)
                fn(ctx, blk + y->ikey_off, (size_t)(B / 4) * v->idim * 2);
        }
    }
    if (k == DSV4_STATE_KIND_HIDDEN)
        fn(ctx, dsv4_kv_slot(v, slot, st->hid_off), (size_t)st->hc * st->m->cfg.hidden_size * 4);
    if (k == DSV4_STATE_KIND_TOKENS)
        for (int64_t b = 0; b < blocks; b++)
            fn(ctx, st->tokens + (int64_t)row[b] * B, (size_t)B * 4);
}

struct pack {
    struct dsv4_backend *be;
    uint8_t *buf;
    size_t off;
    bool host, in;
};

static void count_piece(void *ctx, void *p, size_t bytes)
{
    (void)p;
    ((struct pack *)ctx)->off += bytes;
}

static void copy_piece(void *ctx, void *p, size_t bytes)
{
    struct pack *k = ctx;
    if (k->host)
        memcpy(k->in ? p : k->buf + k->off, k->in ? k->buf + k->off : p, bytes);
    else if (k->in)
        k->be->upload(k->be, p, k->buf + k->off, bytes);
    else
        k->be->download(k->be, k->buf + k->off, p, bytes);
    k->off += bytes;
}

void dsv4_state_swap_free(struct dsv4_state_swap *sw)
{
    if (!sw)
        return;
    for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++)
        free(sw->frame[k]);
    free(sw);
}

int dsv4_state_swap_out(struct dsv4_state *st, int slot, struct dsv4_state_swap **out,
                        struct dsv4_swap_stats *stats)
{
    DSV4_ASSERT(dsv4_state_seq_valid(st, slot));
    double t0 = dsv4_now();
    struct slot_info *s = &st->slots[slot];
    struct dsv4_state_swap *sw = calloc(1, sizeof *sw);
    uint8_t *tmp = NULL;
    int rc = 0;
    *out = NULL;
    if (!sw)
        return dsv4_error(DSV4_ENOMEM, "state: out of memory for a swap blob");
    sw->len = s->len;
    sw->mtp_len = s->mtp_len;
    sw->hidden_pos = s->hidden_pos;
    sw->blocks = s->mapped;
    for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++) {
        struct pack c = {.be = st->be};
        walk(st, slot, s->mapped, k, count_piece, &c);
        sw->raw[k] = c.off;
        if (!c.off)
            continue;
        tmp = malloc(c.off);
        size_t cap = ZSTD_compressBound(c.off);
        sw->frame[k] = malloc(cap);
        if (!tmp || !sw->frame[k]) {
            rc = dsv4_error(DSV4_ENOMEM, "state: out of memory for a swap blob");
            goto fail;
        }
        struct pack p = {.be = st->be, .buf = tmp, .host = k == DSV4_STATE_KIND_TOKENS};
        walk(st, slot, s->mapped, k, copy_piece, &p);
        size_t n = ZSTD_compress(sw->frame[k], cap, tmp, c.off, 1);
        if (ZSTD_isError(n)) {
            rc = dsv4_error(DSV4_EIO, "state: zstd: %s", ZSTD_getErrorName(n));
            goto fail;
        }
        sw->frame_bytes[k] = n;
        free(tmp);
        tmp = NULL;
    }
    if (stats) {
        for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++) {
            stats->raw[k] = sw->raw[k];
            stats->packed[k] = sw->frame_bytes[k];
        }
        stats->seconds = dsv4_now() - t0;
    }
    dsv4_state_seq_free(st, slot);
    *out = sw;
    return 0;
fail:
    free(tmp);
    dsv4_state_swap_free(sw);
    return rc;
}

int dsv4_state_swap_in(struct dsv4_state *st, const struct dsv4_state_swap *sw, int *slot,
                       struct dsv4_swap_stats *stats)
{
    double t0 = dsv4_now();
    int rc, sl;
    if (sw->blocks > st->n_free)
        return dsv4_error(DSV4_ENOSPC, "state pool full: swap-in needs %lld blocks, %lld free",
                          (long long)sw->blocks, (long long)st->n_free);
    if ((rc = dsv4_state_seq_new(st, &sl)))
        return rc;
    if ((rc = dsv4_state_reserve(st, sl,
                                 sw->blocks * st->sz.block_tokens < st->max_ctx
                                         ? sw->blocks * st->sz.block_tokens
                                         : st->max_ctx))) {
        dsv4_state_seq_free(st, sl);
        return rc;
    }
    for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++) {
        if (!sw->raw[k])
            continue;
        uint8_t *tmp = malloc(sw->raw[k]);
        if (!tmp) {
            dsv4_state_seq_free(st, sl);
            return dsv4_error(DSV4_ENOMEM, "state: out of memory for a swap-in");
        }
        size_t n = ZSTD_decompress(tmp, sw->raw[k], sw->frame[k], sw->frame_bytes[k]);
        if (ZSTD_isError(n) || n != sw->raw[k]) {
            free(tmp);
            dsv4_state_seq_free(st, sl);
            return dsv4_error(DSV4_EFORMAT, "state: corrupt swap blob (%s)",
                              dsv4_state_kind_name(k));
        }
        struct pack p = {.be = st->be, .buf = tmp, .host = k == DSV4_STATE_KIND_TOKENS, .in = true};
        walk(st, sl, sw->blocks, k, copy_piece, &p);
        free(tmp);
    }
    struct slot_info *s = &st->slots[sl];
    s->len = sw->len;
    s->mtp_len = sw->mtp_len;
    s->hidden_pos = sw->hidden_pos;
    if (stats) {
        for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++) {
            stats->raw[k] = sw->raw[k];
            stats->packed[k] = sw->frame_bytes[k];
        }
        stats->seconds = dsv4_now() - t0;
    }
    *slot = sl;
    return 0;
}

uint64_t dsv4_state_swap_bytes(const struct dsv4_state_swap *sw)
{
    uint64_t b = sizeof *sw;
    for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++)
        b += sw->frame_bytes[k];
    return b;
}

int64_t dsv4_state_swap_len(const struct dsv4_state_swap *sw)
{
    return sw->len;
}
