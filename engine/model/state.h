/*
 * state.h - the state pool: every sequence's attention state in one arena of
 * fixed capacity, set at creation (DESIGN.md §3, ../shared/spec/model.md
 * §3.3, §3.8; layout: struct dsv4_kv_view in kernels/backend.h).
 *
 * Per sequence slot (fixed size): per layer the window ring (BF16, window +
 * rollback horizon rows) and the compressors' partial-block rings (FP32,
 * kv and ape-biased gate, coff * ratio + horizon rows), and one hidden row
 * [hc, D] FP32 of the trunk streams whose MTP step is pending (the last
 * position of a prefill chunk, whose successor token the next call brings).
 * Per block of block_tokens positions (paged, one block table per slot):
 * the compressed entries and indexer keys (BF16) of every compressed layer
 * for those positions, and, in host memory, the token ids at those positions
 * (the sampler's penalty history; kept with the state so that a swapped or
 * re-attached sequence carries it).
 *
 * Window kv, entries and indexer keys are stored in BF16 as the reference's
 * cache does: their values are BF16-exact (FP8 / FP4 simulation over BF16
 * rounding), so the storage changes nothing numerically.
 *
 * Capacity: the arena holds max_seqs slots and a fixed number of blocks; a
 * sequence of length n holds ceil(n / block_tokens) blocks.  Running out is
 * a status (DSV4_ENOSPC with the counts), never an abort; the pool reports
 * its free blocks and slots so that a scheduler admits, queues or preempts.
 * Nothing allocates after init except swap blobs (host memory, by request).
 *
 * Lengths: the trunk layers of a slot share one length (positions 0..len-1
 * are in the state), the MTP layer has its own.  A forward call writes
 * positions start..end-1 with start <= len; rolling back (start < len) is
 * allowed down to len - max_rollback (the rings hold that horizon) or to 0.
 *
 * Ownership: the pool owns its arena (backend memory), block table and
 * histories; it borrows the model and the backend, which must outlive it.
 * Not thread-safe: one driver thread.
 */
#ifndef DSV4_STATE_H
#define DSV4_STATE_H

#include "engine/io/config.h"
#include "engine/model/model.h"
#include "kernels/backend.h"

#include <stdbool.h>
#include <stdint.h>

#define DSV4_STATE_BLOCK_TOKENS 256

/* Bytes of the layout for a config (what `dsv4 plan` prints and the pool allocates). */
struct dsv4_state_sizes {
    int block_tokens, win_rows;
    uint64_t slot_bytes;    /* one sequence's fixed state */
    uint64_t block_bytes;   /* one block (backend memory; token ids are extra, host) */
    double bytes_per_token; /* block_bytes / block_tokens */
    /* slot bytes by kind: window rings, compressor rings, indexer compressor rings, hidden */
    uint64_t slot_window, slot_cmp, slot_icmp, slot_hidden;
    /* block bytes by kind: entries, indexer keys */
    uint64_t block_entries, block_ikeys;
};

/*
 * Sizes for config c with (mtp) an MTP layer, rollback horizon max_rollback and
 * block_tokens per block (0: DSV4_STATE_BLOCK_TOKENS).  DSV4_EINVAL when block_tokens is
 * not a positive multiple of every compression ratio.
 */
int dsv4_state_sizes(const struct dsv4_config *c, bool mtp, int max_rollback, int block_tokens,
                     struct dsv4_state_sizes *out);

struct dsv4_state_opts {
    int max_seqs;     /* sequence slots (>= 1) */
    int64_t max_ctx;  /* most positions of one sequence */
    int max_rollback; /* positions a call may roll back (>= MTP depth + 1) */
    int block_tokens; /* 0: DSV4_STATE_BLOCK_TOKENS */
    int64_t blocks;   /* entry blocks; 0: from bytes */
    uint64_t bytes;   /* arena bytes (slots + blocks); 0 with blocks 0: every slot full */
};

struct dsv4_state;

int dsv4_state_init(const struct dsv4_model *m, struct dsv4_backend *be,
                    const struct dsv4_state_opts *o, struct dsv4_state **out);
void dsv4_state_free(struct dsv4_state *st);

/* A fresh empty sequence slot; DSV4_ENOSPC when every slot is live. */
int dsv4_state_seq_new(struct dsv4_state *st, int *slot);
/* Returns the slot and its blocks. */
void dsv4_state_seq_free(struct dsv4_state *st, int slot);
bool dsv4_state_seq_valid(const struct dsv4_state *st, int slot);

/* Trunk / MTP length of a live slot. */
int64_t dsv4_state_len(const struct dsv4_state *st, int slot);
int64_t dsv4_state_mtp_len(const struct dsv4_state *st, int slot);

/*
 * Makes positions [0, end) writable: maps the blocks they fall in (all or nothing).
 * DSV4_ENOSPC (with the counts) when the pool lacks blocks, DSV4_ERANGE past max_ctx.
 */
int dsv4_state_reserve(struct dsv4_state *st, int slot, int64_t end);
/*
 * Rolls the trunk (mtp false) or MTP length back to len <= current (a call starting at
 * len), releasing blocks past it; DSV4_ERANGE when len < current - max_rollback (and
 * len > 0).
 */
int dsv4_state_truncate(struct dsv4_state *st, int slot, bool mtp, int64_t len);
/* Records that a forward call wrote positions up to end (reserved before). */
void dsv4_state_commit(struct dsv4_state *st, int slot, bool mtp, int64_t end);

/* The layout the kernels read (valid until the pool is freed; the block table changes). */
const struct dsv4_kv_view *dsv4_state_view(const struct dsv4_state *st);
/* The slot's pending MTP hidden row [hc, D] (backend memory) and its position (-1: none). */
float *dsv4_state_hidden(const struct dsv4_state *st, int slot);
int64_t dsv4_state_hidden_pos(const struct dsv4_state *st, int slot);
void dsv4_state_set_hidden_pos(struct dsv4_state *st, int slot, int64_t pos);

/* Token ids of positions [pos, pos + n) (history; reserved positions only). */
void dsv4_state_put_tokens(struct dsv4_state *st, int slot, int64_t pos, const int32_t *ids,
                           int64_t n);
void dsv4_state_get_tokens(const struct dsv4_state *st, int slot, int64_t pos, int32_t *ids,
                           int64_t n);

/* Capacity. */
int64_t dsv4_state_total_blocks(const struct dsv4_state *st);
int64_t dsv4_state_free_blocks(const struct dsv4_state *st);
int dsv4_state_free_slots(const struct dsv4_state *st);
int dsv4_state_max_seqs(const struct dsv4_state *st);
int dsv4_state_max_rollback(const struct dsv4_state *st);
int64_t dsv4_state_max_ctx(const struct dsv4_state *st);
/* Blocks a sequence of len positions holds. */
int64_t dsv4_state_blocks_for(const struct dsv4_state *st, int64_t len);
int64_t dsv4_state_seq_blocks(const struct dsv4_state *st, int slot);
const struct dsv4_state_sizes *dsv4_state_layout_sizes(const struct dsv4_state *st);
/* Bytes of the arena (backend memory). */
uint64_t dsv4_state_bytes(const struct dsv4_state *st);

/* ---- swap: a sequence's state compressed into host memory and back */

enum dsv4_state_kind {
    DSV4_STATE_KIND_WINDOW = 0,  /* window rings (BF16) */
    DSV4_STATE_KIND_CMP = 1,     /* compressor partial blocks (FP32) */
    DSV4_STATE_KIND_ICMP = 2,    /* indexer compressor partial blocks (FP32) */
    DSV4_STATE_KIND_HIDDEN = 3,  /* pending MTP hidden row (FP32) */
    DSV4_STATE_KIND_ENTRIES = 4, /* compressed entries (BF16) */
    DSV4_STATE_KIND_IKEYS = 5,   /* indexer keys (BF16) */
    DSV4_STATE_KIND_TOKENS = 6,  /* token ids (I32) */
    DSV4_STATE_KIND_COUNT
};

struct dsv4_swap_stats {
    uint64_t raw[DSV4_STATE_KIND_COUNT], packed[DSV4_STATE_KIND_COUNT];
    double seconds;
};

struct dsv4_state_swap;

/*
 * Copies slot's state (lengths, slot rings, its blocks, token ids) into a host blob,
 * each kind compressed with zstd (level 1), and frees the slot.  stats may be NULL.
 */
int dsv4_state_swap_out(struct dsv4_state *st, int slot, struct dsv4_state_swap **out,
                        struct dsv4_swap_stats *stats);
/* Restores a blob into a fresh slot (the blob stays the caller's); DSV4_ENOSPC when no
 * slot or too few blocks are free (nothing changes then). */
int dsv4_state_swap_in(struct dsv4_state *st, const struct dsv4_state_swap *sw, int *slot,
                       struct dsv4_swap_stats *stats);
uint64_t dsv4_state_swap_bytes(const struct dsv4_state_swap *sw);
int64_t dsv4_state_swap_len(const struct dsv4_state_swap *sw);
void dsv4_state_swap_free(struct dsv4_state_swap *sw);

const char *dsv4_state_kind_name(enum dsv4_state_kind k);

#endif
