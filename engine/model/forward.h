/*
 * forward.h - the DeepSeek-V4 forward pass of one rank
 * (../shared/spec/model.md §3-§4, DESIGN.md §2-§3), written once against the
 * backend op table (kernels/backend.h): the same code runs on the ref, cpu
 * and (later) cuda backends.
 *
 * One call runs a batch of per-sequence chunks through the trunk: each
 * chunk is n tokens of one sequence at positions start..start+n-1, with
 * start <= the sequence's current length (a smaller start first rolls the
 * state back to it, within the pool's rollback horizon).  The same call
 * therefore serves prefill (one chunk, any start: chunked prefill), batched
 * decode (many sequences, n = 1), verification of 1+k draft positions, and
 * any mix of them.  Per layer, the chunks' window kv and compressor inputs
 * are computed for all tokens, completed compressed entries are written to
 * the state first (in the blocks), then every query attends to exactly the
 * window and entries visible at its position (earlier positions from the
 * state's rings and blocks, the chunk's own from this call's buffers), and
 * finally the rings keep the positions a later call can read.  Chunking and
 * batching never change the math.
 *
 * Ranks: with a communicator of N ranks, every rank calls the same function
 * with the same batch; heads, indexer heads, wo_a groups, experts and vocab
 * rows are split as in engine/model/model_int.h, and partial results travel
 * by all-gather (attention groups, indexer q, logits) and all-reduce of
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
 * Ownership: a dsv4_fwd borrows the model, state pool, backend and
 * communicator, and owns activation buffers (backend memory) sized at init
 * for max_tokens tokens and max_out logits rows per call; calls never
 * allocate.  Outputs (logits, final streams) stay in the fwd's buffers until
 * the next call.
 */
#ifndef DSV4_FORWARD_H
#define DSV4_FORWARD_H

#include "engine/model/comm.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "kernels/backend.h"

#include <stdbool.h>
#include <stdint.h>

struct dsv4_fwd;

/* One chunk of one sequence. */
struct dsv4_fwd_seq {
    int seq;               /* state slot */
    int64_t start;         /* position of tokens[0] */
    int n;                 /* >= 1 */
    const int32_t *tokens; /* [n] (host memory) */
};

/* comm may be NULL (single rank); its size must equal the model's nranks. */
int dsv4_fwd_init(const struct dsv4_model *m, struct dsv4_state *st, struct dsv4_backend *be,
                  struct dsv4_comm *comm, int max_tokens, int max_out, struct dsv4_fwd **out);
void dsv4_fwd_free(struct dsv4_fwd *f);

/*
 * Trunk + head over a batch (sum of n <= max_tokens).
 *   out_rows [n_out] (host): batch rows (token indices, ascending not required) whose
 *   logits are wanted, n_out <= max_out; the logits land in dsv4_fwd_logits() [n_out, V],
 *   identical on every rank.  n_out may be 0.
 *   keep_hidden: the final (pre-hc_head) streams of every token go to dsv4_fwd_hidden()
 *   [T, hc, D] (the MTP block's input).
 * A bad batch (DSV4_EINVAL, DSV4_ERANGE) returns before anything changes; when the pool
 * lacks blocks for the new positions (DSV4_ENOSPC) the chunks' rollbacks (start < len)
 * have been applied and nothing else: the same batch can be retried once blocks are free.
 */
int dsv4_fwd_trunk(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq,
                   const int32_t *out_rows, int n_out, bool keep_hidden);

/*
 * The MTP block over a batch: for chunk c, tokens[i] is y_{t+1} for position t = start + i;
 * hidden [T, hc, D] (backend memory, rows in token order) are the streams at t (trunk's or
 * the previous MTP step's; may be dsv4_fwd_mtp_hidden()).  Logits as for the trunk
 * (prediction of t + 2); the output streams go to dsv4_fwd_mtp_hidden() [T, hc, D].  The
 * MTP layer's own state is rolled back to start first.
 */
int dsv4_fwd_mtp(struct dsv4_fwd *f, const struct dsv4_fwd_seq *seqs, int nseq, const float *hidden,
                 const int32_t *out_rows, int n_out);

/*
 * Padded calls and graphs.  With buckets set (ascending token counts, each <= max_tokens
 * and <= max_out), a trunk or MTP call of T tokens with T <= the largest bucket runs padded
 * to the smallest bucket b >= T: tokens T..b-1 are a chunk of the scratch slot `scratch`
 * (a live slot the caller made for this and never uses otherwise; its state for positions
 * 0..largest bucket - 1 is reserved here) and their outputs are ignored; the logits rows
 * are padded the same way (all b when n_out == T).  Results of the real tokens are
 * bitwise those of the unpadded call (rows are independent in every op).  On a backend
 * that records graphs (graph_begin) each (kind, b, rows) runs as one graph, recorded on
 * first use; not with a diagnostics hook set, nor with a communicator staged through host
 * memory.  n = 0 turns padding off.  Errors: DSV4_EINVAL (bad buckets or slot),
 * DSV4_ENOSPC (no blocks for the padding).
 */
#define DSV4_FWD_MAX_BUCKETS 32
int dsv4_fwd_set_graphs(struct dsv4_fwd *f, const int *buckets, int n, int scratch);

/* Runs a padding-only trunk call (and MTP call) of every bucket's size, recording every
 * decode-shaped graph before the first request; touches no state but the scratch slot. */
int dsv4_fwd_warm(struct dsv4_fwd *f);

struct dsv4_fwd_graph_stats {
    uint64_t padded_calls, padded_tokens; /* calls padded to a bucket; tokens added */
    uint64_t launches, eager;             /* graph launches; padded calls past the graph cap */
    int buckets, graphs;                  /* bucket sizes; graphs recorded */
    double record_seconds;
};
void dsv4_fwd_graph_stats(const struct dsv4_fwd *f, struct dsv4_fwd_graph_stats *st);

/* Output buffers (backend memory). */
const float *dsv4_fwd_logits(const struct dsv4_fwd *f);
const float *dsv4_fwd_hidden(const struct dsv4_fwd *f);
const float *dsv4_fwd_mtp_hidden(const struct dsv4_fwd *f);

/* Rolls the trunk layers of seq back to len positions (MTP layer: dsv4_fwd_mtp_rollback). */
int dsv4_fwd_rollback(struct dsv4_fwd *f, int seq, int64_t len);
int dsv4_fwd_mtp_rollback(struct dsv4_fwd *f, int seq, int64_t len);
int64_t dsv4_fwd_len(const struct dsv4_fwd *f, int seq);
int64_t dsv4_fwd_mtp_len(const struct dsv4_fwd *f, int seq);

/*
 * Diagnostics: called after each trunk layer with its output streams X [T, hc, D] of the
 * batch's tokens (backend memory).  The hook may overwrite X (forcing a layer's output,
 * e.g. with the Python reference's, so that the next layer is checked on its own); the
 * forward pass continues from whatever X holds when the hook returns.
 */
typedef void (*dsv4_fwd_layer_hook)(void *ctx, int layer, float *X, int T, int hc, int64_t D);
void dsv4_fwd_set_layer_hook(struct dsv4_fwd *f, dsv4_fwd_layer_hook fn, void *ctx);

/* Diagnostics: called after routing in each MoE layer: ids [T, k] (sorted by id per token),
 * tids [T] the tokens (backend memory). */
typedef void (*dsv4_fwd_route_hook)(void *ctx, int layer, int T, int k, const int32_t *ids,
                                    const int32_t *tids);
void dsv4_fwd_set_route_hook(struct dsv4_fwd *f, dsv4_fwd_route_hook fn, void *ctx);

#endif
