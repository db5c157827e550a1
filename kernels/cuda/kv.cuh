/*
 * kv.cuh - addresses inside the attention state (struct dsv4_kv_view of
 * kernels/backend.h) for device code.
 *
 * backend.h's inline helpers (dsv4_kv_win, dsv4_kv_entry, ...) are host C;
 * a kernel gets the same arithmetic here, on a flat copy of the view taken
 * by value: the arena pointers, the strides, the device block table and the
 * one layer's geometry (the view's `layers` array is host memory on every
 * backend: the launch code reads it to plan and copies the layer in).  The
 * functions compile for the host too, and tests/cuda/test_cuda_math.c
 * checks that they return the addresses backend.h's helpers return.
 *
 * Also the token metadata (struct dsv4_toks): first position of a token's
 * chunk and the batch row of a position inside it.
 */
#ifndef DSV4_CUDA_KV_CUH
#define DSV4_CUDA_KV_CUH

#include "kernels/backend.h"
#include "kernels/cuda/math.cuh"

struct dsv4_cu_kv {
    uint8_t *slots, *blocks;
    int64_t slot_bytes, block_bytes;
    int block_tokens, win_rows, window, dh, rd, idim;
    const int32_t *block_table; /* [n_slots, max_blocks] (backend memory) */
    int max_blocks;
    struct dsv4_kv_layer l; /* the layer the kernel works on */
};

/* The flat copy of layer `layer` of a view (host side, before a launch). */
static inline struct dsv4_cu_kv dsv4_cu_kv_of(const struct dsv4_kv_view *v, int layer)
{
    struct dsv4_cu_kv k;
    k.slots = v->slots;
    k.blocks = v->blocks;
    k.slot_bytes = v->slot_bytes;
    k.block_bytes = v->block_bytes;
    k.block_tokens = v->block_tokens;
    k.win_rows = v->win_rows;
    k.window = v->window;
    k.dh = v->dh;
    k.rd = v->rd;
    k.idim = v->idim;
    k.block_table = v->block_table;
    k.max_blocks = v->max_blocks;
    k.l = v->layers[layer];
    return k;
}

DSV4_HD uint8_t *dsv4_cu_kv_slot(const struct dsv4_cu_kv *v, int slot, int64_t off)
{
    return v->slots + (int64_t)slot * v->slot_bytes + off;
}

/* Window ring row of position pos: BF16 [dh]. */
DSV4_HD uint16_t *dsv4_cu_kv_win(const struct dsv4_cu_kv *v, int slot, int64_t pos)
{
    return (uint16_t *)dsv4_cu_kv_slot(v, slot, v->l.win_off) + (pos % v->win_rows) * v->dh;
}

/* Compressor ring row of position pos: F32 [2 * coff * dh] (kv, then gate + ape). */
DSV4_HD float *dsv4_cu_kv_cmp(const struct dsv4_cu_kv *v, int slot, int64_t pos)
{
    return (float *)dsv4_cu_kv_slot(v, slot, v->l.cmp_off) +
           (pos % v->l.cmp_rows) * 2 * v->l.coff * v->dh;
}

/* Indexer compressor ring row of position pos: F32 [4 * idim]. */
DSV4_HD float *dsv4_cu_kv_icmp(const struct dsv4_cu_kv *v, int slot, int64_t pos)
{
    return (float *)dsv4_cu_kv_slot(v, slot, v->l.icmp_off) + (pos % v->l.cmp_rows) * 4 * v->idim;
}

DSV4_HD uint8_t *dsv4_cu_kv_block(const struct dsv4_cu_kv *v, int slot, int64_t lblock)
{
    int32_t pb = v->block_table[(int64_t)slot * v->max_blocks + lblock];
    return v->blocks + (int64_t)pb * v->block_bytes;
}

/* Compressed entry b: BF16 [dh]. */
DSV4_HD uint16_t *dsv4_cu_kv_entry(const struct dsv4_cu_kv *v, int slot, int64_t b)
{
    int64_t per = v->block_tokens / v->l.ratio;
    return (uint16_t *)(dsv4_cu_kv_block(v, slot, b / per) + v->l.ent_off) + (b % per) * v->dh;
}

/* Indexer key b: BF16 [idim]. */
DSV4_HD uint16_t *dsv4_cu_kv_ikey(const struct dsv4_cu_kv *v, int slot, int64_t b)
{
    int64_t per = v->block_tokens / v->l.ratio;
    return (uint16_t *)(dsv4_cu_kv_block(v, slot, b / per) + v->l.ikey_off) + (b % per) * v->idim;
}

/* Token metadata of one forward call (struct dsv4_toks with device arrays), by value. */
struct dsv4_cu_toks {
    int T;
    const int32_t *slot, *row0, *len;
    const int64_t *pos;
};

static inline struct dsv4_cu_toks dsv4_cu_toks_of(const struct dsv4_toks *k)
{
    struct dsv4_cu_toks t;
    t.T = k->T;
    t.slot = k->slot;
    t.row0 = k->row0;
    t.len = k->len;
    t.pos = k->pos;
    return t;
}

/* First position of token t's chunk. */
DSV4_HD int64_t dsv4_cu_toks_first(const struct dsv4_cu_toks *k, int t)
{
    return k->pos[t] - (t - k->row0[t]);
}

/* Batch row of position q >= the chunk's first. */
DSV4_HD int64_t dsv4_cu_toks_row(const struct dsv4_cu_toks *k, int t, int64_t q)
{
    return k->row0[t] + (q - dsv4_cu_toks_first(k, t));
}

#endif
