/*
 * state.c - paged per-sequence layer state (see engine/model/state.h).
 *
 * A table per (sequence, layer) maps a block number to its block; record
 * blocks below the "floor" are released as the sequence advances.  Free
 * blocks of one size are chained through their first word.
 */
#include "engine/model/state.h"

#include "base/dsv4.h"

#include <stdlib.h>
#include <string.h>

#define MAX_POOLS 8

struct pool {
    size_t bytes;
    void *free;
    uint64_t held; /* blocks allocated from malloc */
};

struct table {
    float **blk;
    int64_t cap;
};

struct seq_layer {
    int64_t len;
    int64_t floor_blk; /* record blocks below are released */
    struct table rec, ent, ikey;
};

struct dsv4_state {
    int n_layers, max_seqs, max_rollback, window;
    struct dsv4_state_layout *lay;
    int64_t ent_floats, ikey_floats;
    struct pool pools[MAX_POOLS];
    int n_pools;
    int *live;
    struct seq_layer *sl; /* [max_seqs][n_layers] */
};

static struct pool *pool_for(struct dsv4_state *st, size_t bytes)
{
    for (int i = 0; i < st->n_pools; i++)
        if (st->pools[i].bytes == bytes)
            return &st->pools[i];
    DSV4_ASSERT(st->n_pools < MAX_POOLS);
    struct pool *p = &st->pools[st->n_pools++];
    p->bytes = bytes;
    return p;
}

static float *pool_get(struct pool *p)
{
    if (p->free) {
        void *b = p->free;
        memcpy(&p->free, b, sizeof(void *));
        return b;
    }
    float *b = malloc(p->bytes);
    if (b)
        p->held++;
    return b;
}

static void pool_put(struct pool *p, float *b)
{
    memcpy(b, &p->free, sizeof(void *));
    p->free = b;
}

int dsv4_state_init(const struct dsv4_model *m, int max_seqs, int max_rollback,
                    struct dsv4_state **out)
{
    const struct dsv4_config *c = &m->cfg;
    *out = NULL;
    if (max_seqs < 1 || max_rollback < 0)
        return dsv4_error(DSV4_EINVAL, "state: max_seqs %d, max_rollback %d", max_seqs,
                          max_rollback);
    struct dsv4_state *st = calloc(1, sizeof *st);
    if (!st)
        return dsv4_error(DSV4_ENOMEM, "state: out of memory");
    st->n_layers = m->n_layers;
    st->max_seqs = max_seqs;
    st->max_rollback = max_rollback;
    st->window = c->sliding_window;
    st->ent_floats = c->head_dim;
    st->ikey_floats = c->index_head_dim;
    st->lay = calloc(m->n_layers, sizeof(*st->lay));
    st->live = calloc(max_seqs, sizeof(int));
    st->sl = calloc((size_t)max_seqs * m->n_layers, sizeof(*st->sl));
    if (!st->lay || !st->live || !st->sl) {
        dsv4_state_free(st);
        return dsv4_error(DSV4_ENOMEM, "state: out of memory");
    }
    for (int l = 0; l < m->n_layers; l++) {
        struct dsv4_state_layout *y = &st->lay[l];
        y->ratio = m->layers[l].ratio;
        y->coff = y->ratio == 4 ? 2 : 1;
        int64_t o = 0;
        y->kv = o;
        o += c->head_dim;
        y->ckv = y->cgate = y->ikv = y->igate = -1;
        if (y->ratio > 0) {
            y->ckv = o;
            o += y->coff * c->head_dim;
            y->cgate = o;
            o += y->coff * c->head_dim;
        }
        if (y->ratio == 4) {
            y->ikv = o;
            o += 2 * c->index_head_dim;
            y->igate = o;
            o += 2 * c->index_head_dim;
        }
        y->rec = o;
        pool_for(st, sizeof(float) * o * DSV4_STATE_REC_BLOCK);
    }
    pool_for(st, sizeof(float) * st->ent_floats * DSV4_STATE_ENTRY_BLOCK);
    pool_for(st, sizeof(float) * st->ikey_floats * DSV4_STATE_ENTRY_BLOCK);
    *out = st;
    return 0;
}

static struct seq_layer *SL(const struct dsv4_state *st, int seq, int layer)
{
    return &st->sl[(size_t)seq * st->n_layers + layer];
}

static void table_release(struct dsv4_state *st, struct table *t, size_t bytes, int64_t from)
{
    struct pool *p = pool_for(st, bytes);
    for (int64_t i = from; i < t->cap; i++)
        if (t->blk[i]) {
            pool_put(p, t->blk[i]);
            t->blk[i] = NULL;
        }
}

static size_t rec_bytes(const struct dsv4_state *st, int layer)
{
    return sizeof(float) * st->lay[layer].rec * DSV4_STATE_REC_BLOCK;
}

void dsv4_state_seq_free(struct dsv4_state *st, int seq)
{
    if (!dsv4_state_seq_valid(st, seq))
        return;
    for (int l = 0; l < st->n_layers; l++) {
        struct seq_layer *s = SL(st, seq, l);
        table_release(st, &s->rec, rec_bytes(st, l), 0);
        table_release(st, &s->ent, sizeof(float) * st->ent_floats * DSV4_STATE_ENTRY_BLOCK, 0);
        table_release(st, &s->ikey, sizeof(float) * st->ikey_floats * DSV4_STATE_ENTRY_BLOCK, 0);
        free(s->rec.blk);
        free(s->ent.blk);
        free(s->ikey.blk);
        memset(s, 0, sizeof *s);
    }
    st->live[seq] = 0;
}

void dsv4_state_free(struct dsv4_state *st)
{
    if (!st)
        return;
    if (st->live)
        for (int s = 0; s < st->max_seqs; s++)
            dsv4_state_seq_free(st, s);
    for (int i = 0; i < st->n_pools; i++)
        while (st->pools[i].free)
            free(pool_get(&st->pools[i]));
    free(st->lay);
    free(st->live);
    free(st->sl);
    free(st);
}

int dsv4_state_seq_new(struct dsv4_state *st, int *seq)
{
    for (int s = 0; s < st->max_seqs; s++)
        if (!st->live[s]) {
            st->live[s] = 1;
            for (int l = 0; l < st->n_layers; l++)
                memset(SL(st, s, l), 0, sizeof(struct seq_layer));
            *seq = s;
            return 0;
        }
    return dsv4_error(DSV4_ENOSPC, "state: all %d sequence slots in use", st->max_seqs);
}

int dsv4_state_seq_valid(const struct dsv4_state *st, int seq)
{
    return seq >= 0 && seq < st->max_seqs && st->live[seq];
}

const struct dsv4_state_layout *dsv4_state_layout(const struct dsv4_state *st, int layer)
{
    return &st->lay[layer];
}

int64_t dsv4_state_len(const struct dsv4_state *st, int seq, int layer)
{
    return SL(st, seq, layer)->len;
}

static int table_grow(struct table *t, int64_t need)
{
    if (need <= t->cap)
        return 0;
    int64_t cap = t->cap ? t->cap : 8;
    while (cap < need)
        cap *= 2;
    float **b = realloc(t->blk, sizeof(float *) * cap);
    if (!b)
        return dsv4_error(DSV4_ENOMEM, "state: out of memory");
    memset(b + t->cap, 0, sizeof(float *) * (cap - t->cap));
    t->blk = b;
    t->cap = cap;
    return 0;
}

static int table_fill(struct dsv4_state *st, struct table *t, int64_t from, int64_t nblk,
                      size_t bytes)
{
    int rc = table_grow(t, nblk);
    if (rc)
        return rc;
    struct pool *p = pool_for(st, bytes);
    for (int64_t i = from; i < nblk; i++)
        if (!t->blk[i] && !(t->blk[i] = pool_get(p)))
            return dsv4_error(DSV4_ENOMEM, "state: out of memory for a block of %zu bytes", bytes);
    return 0;
}

int dsv4_state_reserve(struct dsv4_state *st, int seq, int layer, int64_t new_len)
{
    DSV4_ASSERT(dsv4_state_seq_valid(st, seq));
    struct seq_layer *s = SL(st, seq, layer);
    const struct dsv4_state_layout *y = &st->lay[layer];
    int rc;
    if (new_len <= s->len)
        return 0;
    int64_t nb = (new_len + DSV4_STATE_REC_BLOCK - 1) / DSV4_STATE_REC_BLOCK;
    if ((rc = table_fill(st, &s->rec, s->floor_blk, nb, rec_bytes(st, layer))))
        return rc;
    if (y->ratio > 0) {
        int64_t ne = new_len / y->ratio;
        int64_t eb = (ne + DSV4_STATE_ENTRY_BLOCK - 1) / DSV4_STATE_ENTRY_BLOCK;
        if ((rc = table_fill(st, &s->ent, 0, eb,
                             sizeof(float) * st->ent_floats * DSV4_STATE_ENTRY_BLOCK)))
            return rc;
        if (y->ratio == 4 &&
            (rc = table_fill(st, &s->ikey, 0, eb,
                             sizeof(float) * st->ikey_floats * DSV4_STATE_ENTRY_BLOCK)))
            return rc;
    }
    return 0;
}

void dsv4_state_commit(struct dsv4_state *st, int seq, int layer, int64_t new_len)
{
    struct seq_layer *s = SL(st, seq, layer);
    const struct dsv4_state_layout *y = &st->lay[layer];
    s->len = new_len;
    /* oldest position still needed after a rollback of max_rollback positions: the
     * window of the first query, and the partial compressor blocks (r=4 needs the
     * previous block too) */
    int64_t back = st->window + (int64_t)y->coff * (y->ratio > 0 ? y->ratio : 0) + st->max_rollback;
    int64_t keep_from = new_len - back;
    if (keep_from <= 0)
        return;
    int64_t fb = keep_from / DSV4_STATE_REC_BLOCK;
    struct pool *p = pool_for(st, rec_bytes(st, layer));
    for (int64_t i = s->floor_blk; i < fb && i < s->rec.cap; i++)
        if (s->rec.blk[i]) {
            pool_put(p, s->rec.blk[i]);
            s->rec.blk[i] = NULL;
        }
    if (fb > s->floor_blk)
        s->floor_blk = fb;
}

int dsv4_state_truncate(struct dsv4_state *st, int seq, int layer, int64_t len)
{
    DSV4_ASSERT(dsv4_state_seq_valid(st, seq));
    struct seq_layer *s = SL(st, seq, layer);
    const struct dsv4_state_layout *y = &st->lay[layer];
    if (len < 0 || len > s->len)
        return dsv4_error(DSV4_ERANGE, "state: truncate to %lld, length is %lld", (long long)len,
                          (long long)s->len);
    int64_t need = len - st->window - (int64_t)y->coff * (y->ratio > 0 ? y->ratio : 0);
    if (need < 0)
        need = 0;
    if (len > 0 && need < s->floor_blk * DSV4_STATE_REC_BLOCK)
        return dsv4_error(DSV4_ERANGE,
                          "state: cannot roll back to %lld (positions before %lld released)",
                          (long long)len, (long long)(s->floor_blk * DSV4_STATE_REC_BLOCK));
    if (len == 0) {
        table_release(st, &s->rec, rec_bytes(st, layer), 0);
        s->floor_blk = 0;
    }
    s->len = len;
    return 0;
}

float *dsv4_state_rec(const struct dsv4_state *st, int seq, int layer, int64_t pos)
{
    const struct seq_layer *s = SL(st, seq, layer);
    int64_t b = pos / DSV4_STATE_REC_BLOCK;
    if (pos < 0 || b >= s->rec.cap || !s->rec.blk[b])
        return NULL;
    return s->rec.blk[b] + (pos % DSV4_STATE_REC_BLOCK) * st->lay[layer].rec;
}

float *dsv4_state_entry(const struct dsv4_state *st, int seq, int layer, int64_t e)
{
    const struct seq_layer *s = SL(st, seq, layer);
    int64_t b = e / DSV4_STATE_ENTRY_BLOCK;
    if (e < 0 || b >= s->ent.cap || !s->ent.blk[b])
        return NULL;
    return s->ent.blk[b] + (e % DSV4_STATE_ENTRY_BLOCK) * st->ent_floats;
}

float *dsv4_state_ikey(const struct dsv4_state *st, int seq, int layer, int64_t e)
{
    const struct seq_layer *s = SL(st, seq, layer);
    int64_t b = e / DSV4_STATE_ENTRY_BLOCK;
    if (e < 0 || b >= s->ikey.cap || !s->ikey.blk[b])
        return NULL;
    return s->ikey.blk[b] + (e % DSV4_STATE_ENTRY_BLOCK) * st->ikey_floats;
}

uint64_t dsv4_state_bytes(const struct dsv4_state *st)
{
    uint64_t b = 0;
    for (int i = 0; i < st->n_pools; i++)
        b += st->pools[i].held * st->pools[i].bytes;
    return b;
}
