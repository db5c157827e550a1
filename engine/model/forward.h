/*
 * forward.h - the DeepSeek-V4 forward pass of one rank on CPU
 * (../shared/spec/model.md §3-§4, DESIGN.md §2-§3).
 *
 * One call runs a batch of per-sequence chunks through the trunk: each
 * chunk is n tokens of one sequence at positions start..start+n-1, with
 * start <= the sequence's current length (a smaller start first rolls the
 * state back to it).  The same call therefore serves prefill (one chunk,
 * any start: chunked prefill), batched decode (many sequences, n = 1) and
 * verification of 1+k draft positions (rollback afterwards with
 * dsv4_fwd_rollback).  Tokens of a chunk are processed causally: every
 * token's kv record and compressor inputs are written first (in position
 * order, emitting compressed entries as blocks complete), then all queries
 * attend in parallel, each to exactly the window and entries visible at its
 * position; so chunking never changes the math.
 *
 * Ranks: with a communicator of N ranks, every rank calls the same function
 * with the same batch; heads, indexer heads, wo_a groups, experts and vocab
 * rows are split as in engine/model/model.h, and partial results travel by
 * all-gather (attention groups, indexer q, logits) and all-reduce of
 * disjoint slots (embedding rows, per-(token, expert) MoE outputs), so that
 * each output element is computed by one rank exactly as a single rank
 * would: outputs are bitwise identical for any N.
 *
 * Data-parallel attention (DESIGN.md §2, later): nothing here assumes that a
 * rank serves every sequence of the batch.  Attention reads only the state of
 * the chunk's own sequence, and the MoE exchange is per token, so a rank that
 * owns a subset of the sequences needs only a different exchange (all-to-all
 * of tokens to expert owners) in place of the head-split gathers.
 *
 * Ownership: a dsv4_fwd borrows the model, state, pool and communicator,
 * and owns scratch sized at init for max_tokens tokens per call and
 * contexts up to max_ctx positions; calls do not allocate except state
 * blocks (once per block of positions).
 */
#ifndef DSV4_FORWARD_H
#define DSV4_FORWARD_H

#include "engine/model/comm.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "kernels/cpu/cpu.h"

#include <stdbool.h>
#include <stdint.h>

struct dsv4_fwd;

/* One chunk of one sequence. */
struct dsv4_fwd_seq {
    int seq;               /* state sequence id */
    int64_t start;         /* position of tokens[0] */
    int n;                 /* >= 1 */
    const int32_t *tokens; /* [n] */
};

/* comm may be NULL (single rank); its size must equal the model's nranks. */
int dsv4_fwd_init(const struct dsv4_model *m, struct dsv4_state *st, struct dsv4_pool *pool,
                  struct dsv4_comm *comm, int max_tokens, int64_t max_ctx, struct dsv4_fwd **out);
void dsv4_fwd_free(struct dsv4_fwd *f);

/*
 * Trunk + head over a batch (sum of n <= max_tokens).
 *   logits: FP32 [rows, vocab] or NULL; rows = total tokens if all_logits, else one per
 *           chunk (its last token); identical on every rank.
 *   hidden: FP32 [total, hc_mult, hidden] or NULL: the pre-hc_head streams (MTP input).
 */
int dsv4_fwd_trunk(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, float *logits,
                   bool all_logits, float *hidden);

/*
 * The MTP block over a batch: for chunk c, tokens[i] is y_{t+1} for position t = start + i,
 * hidden rows (same order as the tokens, [total, hc, D]) are the streams at t (trunk's or the
 * previous MTP step's).  logits as for the trunk (prediction of t + 2); hidden_out
 * [total, hc, D] or NULL.  The MTP layer's own state is rolled back to start first.
 */
int dsv4_fwd_mtp(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, const float *hidden,
                 float *logits, bool all_logits, float *hidden_out);

/* Rolls the trunk layers of seq back to len positions (MTP layer: dsv4_fwd_mtp_rollback). */
int dsv4_fwd_rollback(struct dsv4_fwd *f, int seq, int64_t len);
int dsv4_fwd_mtp_rollback(struct dsv4_fwd *f, int seq, int64_t len);
int64_t dsv4_fwd_len(const struct dsv4_fwd *f, int seq);
int64_t dsv4_fwd_mtp_len(const struct dsv4_fwd *f, int seq);

/*
 * Diagnostics: called after each trunk layer with its output streams X [T, hc, D] of the
 * batch's tokens.  The hook may overwrite X (forcing a layer's output, e.g. with the Python
 * reference's, so that the next layer is checked on its own); the forward pass continues from
 * whatever X holds when the hook returns.
 */
typedef void (*dsv4_fwd_layer_hook)(void *ctx, int layer, float *X, int T, int hc, int64_t D);
void dsv4_fwd_set_layer_hook(struct dsv4_fwd *f, dsv4_fwd_layer_hook fn, void *ctx);

/* Diagnostics: called after routing in each MoE layer: ids [T, k] (sorted by id per token),
 * tids [T] the tokens. */
typedef void (*dsv4_fwd_route_hook)(void *ctx, int layer, int T, int k, const int *ids,
                                    const int32_t *tids);
void dsv4_fwd_set_route_hook(struct dsv4_fwd *f, dsv4_fwd_route_hook fn, void *ctx);

#endif
