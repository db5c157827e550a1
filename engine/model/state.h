/*
 * state.h - per-sequence, per-layer attention state in paged blocks
 * (DESIGN.md §3, ../shared/spec/model.md §3.3, §3.8).
 *
 * For every sequence and layer the state holds:
 *   - position records, one per processed token position p, in blocks of
 *     DSV4_STATE_REC_BLOCK positions: the cached window kv (head_dim floats,
 *     FP8-simulated, BF16 values), and for compressed layers the token's
 *     compressor inputs (FP32 kv and ape-biased gate, coff*head_dim each)
 *     and for ratio-4 layers the indexer compressor's (2*index_head_dim
 *     each).  These are the window and the compressor partial-block state;
 *     keeping them per position (not in a ring) makes rollback a length
 *     change.  Blocks wholly older than the window + the rollback horizon are
 *     returned to the free list.
 *   - compressed entries (head_dim floats) and, for ratio 4, indexer keys
 *     (index_head_dim floats), one per completed block of `ratio` tokens, in
 *     blocks of DSV4_STATE_ENTRY_BLOCK entries.
 * Lengths are per layer (the MTP block runs at its own positions).  Rolling
 * back to length n (>= the rollback floor) drops every record at p >= n and
 * every entry b >= floor(n / ratio); nothing else has to be undone because
 * entries and records are pure functions of the positions below them.
 *
 * Blocks come from free lists owned by the state (one per block size); they
 * are malloc'ed only when a list is empty, i.e. at most once per block of
 * positions, never per token.  One state per rank; not thread-safe for
 * mutation, concurrent readers are fine.
 */
#ifndef DSV4_STATE_H
#define DSV4_STATE_H

#include "engine/model/model.h"

#include <stdint.h>

#define DSV4_STATE_REC_BLOCK   64
#define DSV4_STATE_ENTRY_BLOCK 256

/* Float offsets inside one position record of a layer. */
struct dsv4_state_layout {
    int ratio, coff;
    int64_t rec;        /* floats per record */
    int64_t kv;         /* window kv [head_dim] */
    int64_t ckv, cgate; /* compressor kv / gate [coff*head_dim], -1 if none */
    int64_t ikv, igate; /* indexer compressor [2*index_head_dim], -1 if none */
};

struct dsv4_state;

/*
 * A state for up to max_seqs sequences of the model's layers (trunk + MTP).
 * max_rollback: most positions a later truncate may drop (>= the MTP depth + 1).
 */
int dsv4_state_init(const struct dsv4_model *m, int max_seqs, int max_rollback,
                    struct dsv4_state **out);
void dsv4_state_free(struct dsv4_state *st);

/* New empty sequence; DSV4_ENOSPC when max_seqs are live. */
int dsv4_state_seq_new(struct dsv4_state *st, int *seq);
/* Returns every block of the sequence; the id becomes free. */
void dsv4_state_seq_free(struct dsv4_state *st, int seq);
int dsv4_state_seq_valid(const struct dsv4_state *st, int seq);

const struct dsv4_state_layout *dsv4_state_layout(const struct dsv4_state *st, int layer);
int64_t dsv4_state_len(const struct dsv4_state *st, int seq, int layer);

/* Ensures records for positions [len, new_len) and entries below floor(new_len/ratio)
 * exist (their content is written by the forward pass). */
int dsv4_state_reserve(struct dsv4_state *st, int seq, int layer, int64_t new_len);
/* Sets the length after the forward pass wrote positions up to new_len and frees
 * record blocks no longer reachable by a query or a rollback. */
void dsv4_state_commit(struct dsv4_state *st, int seq, int layer, int64_t new_len);
/* Rolls back to len (<= current).  DSV4_ERANGE below the rollback floor. */
int dsv4_state_truncate(struct dsv4_state *st, int seq, int layer, int64_t len);

/* Record of position pos (reserved, not freed), NULL otherwise. */
float *dsv4_state_rec(const struct dsv4_state *st, int seq, int layer, int64_t pos);
/* Compressed entry b / indexer key b, NULL if not reserved. */
float *dsv4_state_entry(const struct dsv4_state *st, int seq, int layer, int64_t b);
float *dsv4_state_ikey(const struct dsv4_state *st, int seq, int layer, int64_t b);

/* Bytes currently held in blocks (live + free lists). */
uint64_t dsv4_state_bytes(const struct dsv4_state *st);

#endif
