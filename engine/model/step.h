/*
 * step.h - the worker-side engine object and its step API (DESIGN.md §3):
 * created once per rank (config, bound weights, backend, communicator, state
 * pool, samplers) and driven by step plans until destroyed.  A worker
 * process drives it for the daemon; `dsv4 generate` and the benchmarks are
 * clients of the same API.
 *
 * A step plan is a batch of entries mixing prefill chunks (any start
 * position) and decodes that carry k draft tokens to verify; one step runs
 * one trunk forward over every entry's tokens, samples (greedy, or sampling
 * with speculative rejection of the drafts), rolls rejected positions back,
 * runs the MTP block over the newly known positions of every entry and
 * drafts the next step's tokens, and returns per entry the emitted tokens,
 * new drafts, logprobs when asked, and a finish reason.
 *
 * Positions and tokens (one sequence): the prompt is p_0..p_{P-1}; output
 * token j sits at position P + j.  A prefill entry brings tokens of
 * positions start..start+n-1 (a chunk of the prompt, or after a preemption
 * or restart, of prompt + output so far: the sequence's own history).  A
 * decode entry brings the last emitted token at `start` (= the state's
 * length) and the drafts the previous result returned for positions
 * start+1..start+k.  `sample` entries emit at least one token; the emitted
 * tokens are the model's next tokens after the entry's last position (a
 * prefill's last token, or the verified prefix of the drafts).
 *
 * Drafts are the MTP block's greedy (argmax) proposals; verification with
 * sampling uses speculative rejection with a one-hot draft distribution,
 * which keeps the output distributed exactly as the target model's (vLLM
 * proposes MTP drafts the same way).  Greedy decoding with MTP on emits
 * exactly the tokens of greedy decoding with MTP off.
 *
 * Randomness is counter based (engine/sample/sample.h): the draws of output
 * token j depend only on (seed, j), so re-prefilling a sequence and
 * continuing reproduces the same tokens.
 *
 * The plan and result structs are plain data (the daemon carries them in
 * protobuf); nothing in them points into engine memory: the entry's token
 * arrays are the caller's.  Multi-rank: every rank runs the same plan; all
 * ranks compute identical results (rank 0 reports them).
 *
 * Capacity: the state pool has a fixed number of blocks and sequence slots
 * (dsv4_step_stats).  A step whose new positions do not fit returns
 * DSV4_ENOSPC before emitting anything (the caller preempts and retries);
 * an entry that is invalid (unknown sequence, wrong start) fails the whole
 * step with DSV4_EINVAL and a message naming it, before any state changes.
 * Running out never aborts.
 *
 * Threads: one driver thread per step object.
 */
#ifndef DSV4_STEP_H
#define DSV4_STEP_H

#include "engine/model/comm.h"
#include "engine/model/forward.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "engine/sample/sample.h"
#include "kernels/backend.h"

#include <stdbool.h>
#include <stdint.h>

#define DSV4_STEP_MAX_DRAFTS 8

enum dsv4_finish {
    DSV4_FINISH_NONE = 0,   /* still running */
    DSV4_FINISH_STOP = 1,   /* emitted a stop token (kept in the output) */
    DSV4_FINISH_LENGTH = 2, /* emitted max_emit tokens, or reached the context end */
};

/* One entry of a step plan. */
struct dsv4_step_entry {
    uint64_t id;           /* sequence id (dsv4_step_seq_add) */
    int64_t start;         /* position of tokens[0]: <= the sequence's length */
    int32_t n;             /* tokens (>= 1) */
    const int32_t *tokens; /* [n] */
    int32_t n_drafts;      /* drafts to verify after tokens[n-1] (decode; 0..mtp) */
    const int32_t *drafts; /* [n_drafts] */
    bool sample;           /* emit the next token(s) after this entry's last position */
    int32_t max_emit;      /* sample: most tokens to emit this step (>= 1) */
    int32_t n_prompt;      /* the request's prompt length (penalties count output after it) */
    struct dsv4_sample_params params;
    int32_t n_stop;          /* stop token ids (e.g. eos) */
    const int32_t *stop_ids; /* [n_stop] */
};

/* The result of one entry. */
struct dsv4_step_result {
    uint64_t id;
    int32_t n_tokens; /* emitted (0 for an entry that does not sample) */
    int32_t tokens[1 + DSV4_STEP_MAX_DRAFTS];
    float logprobs[1 + DSV4_STEP_MAX_DRAFTS]; /* params.logprobs: of each emitted token */
    int32_t n_top;                            /* top logprobs per emitted token */
    int32_t top_ids[1 + DSV4_STEP_MAX_DRAFTS][DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    float top_logprobs[1 + DSV4_STEP_MAX_DRAFTS][DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    int32_t n_drafts; /* drafts for the next step (0 when finished or MTP off) */
    int32_t drafts[DSV4_STEP_MAX_DRAFTS];
    int32_t drafted, accepted; /* drafts verified / accepted this step */
    enum dsv4_finish finish;
};

struct dsv4_step_opts {
    int max_seqs;         /* live sequences (state slots) */
    int max_tokens;       /* tokens of one step (prefill chunks + 1 + drafts per decode) */
    int64_t max_ctx;      /* most positions of one sequence (<= max_position_embeddings) */
    int mtp;              /* draft depth k (0: off; <= DSV4_STEP_MAX_DRAFTS) */
    int block_tokens;     /* state block (0: default) */
    int64_t state_blocks; /* pool blocks (0: from state_bytes, or every slot full) */
    uint64_t state_bytes;
    int threads; /* CPU threads for sampling (1..) */
    /* decode graphs: calls up to max_seqs * (1 + mtp) tokens run padded to a bucket (the
     * token counts b and b * (1 + mtp), b = 1, 2, 4, ... and max_seqs), each bucket one
     * recorded graph where the backend records them (dsv4_fwd_set_graphs); takes one
     * extra state slot for the padding */
    bool graphs;
};

struct dsv4_step_stats {
    int64_t total_blocks, free_blocks;
    int block_tokens;
    int max_seqs, free_seqs;
    uint64_t state_bytes;
    double bytes_per_token;
    uint64_t steps, tokens_in, tokens_out, drafted, accepted;
    uint64_t drafted_at[DSV4_STEP_MAX_DRAFTS], accepted_at[DSV4_STEP_MAX_DRAFTS];
    struct dsv4_fwd_graph_stats graphs; /* padded calls and graphs (opts.graphs) */
};

struct dsv4_step;

/* Creates the step object of one rank (m, be, comm borrowed; comm NULL for one rank). */
int dsv4_step_create(const struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_comm *comm,
                     const struct dsv4_step_opts *o, struct dsv4_step **out);
void dsv4_step_free(struct dsv4_step *s);

/* Sequence lifecycle.  add: DSV4_EEXIST for a live id, DSV4_ENOSPC without a free slot. */
int dsv4_step_seq_add(struct dsv4_step *s, uint64_t id);
/* free: returns the sequence's state (unknown ids are ignored: idempotent). */
void dsv4_step_seq_free(struct dsv4_step *s, uint64_t id);
/* Preemption by dropping the state: the sequence stays known with length 0; the caller
 * re-prefills its history later. */
int dsv4_step_seq_drop(struct dsv4_step *s, uint64_t id);
/* Preemption by swapping to host memory (zstd): frees the slot and blocks; swap_in
 * restores (DSV4_ENOSPC when it does not fit: the blob stays swapped). */
int dsv4_step_seq_swap_out(struct dsv4_step *s, uint64_t id, struct dsv4_swap_stats *stats);
int dsv4_step_seq_swap_in(struct dsv4_step *s, uint64_t id, struct dsv4_swap_stats *stats);
/* Length of a live sequence's state (-1 unknown; swapped sequences report their length). */
int64_t dsv4_step_seq_len(const struct dsv4_step *s, uint64_t id);

/* Runs one step over n entries; out[n] receives the results (same order). */
int dsv4_step_run(struct dsv4_step *s, const struct dsv4_step_entry *e, int n,
                  struct dsv4_step_result *out);

void dsv4_step_get_stats(const struct dsv4_step *s, struct dsv4_step_stats *st);
/* With opts.graphs: runs the padding-only calls that record every decode-shaped graph
 * (dsv4_fwd_warm), so that no request pays for a recording; a no-op without. */
int dsv4_step_warm(struct dsv4_step *s);
/* State blocks a sequence of len positions holds (admission arithmetic). */
int64_t dsv4_step_blocks_for(const struct dsv4_step *s, int64_t len);

/* Diagnostics: the forward pass and state pool (dumps, hooks, tests). */
struct dsv4_fwd *dsv4_step_fwd(struct dsv4_step *s);
struct dsv4_state *dsv4_step_state(struct dsv4_step *s);

/*
 * Diagnostics: with a logits hook set, every step computes the logits of every row and
 * hands them over (host memory, valid during the call): TRUNK rows of entry i's input
 * tokens (positions pos..pos+n-1, drafts included, before the rollback of rejected ones);
 * MTP rows of its MTP segment (position t predicts t + 2); DRAFT rows, one per draft made
 * (the distribution the draft was the argmax of).  Slower; for dumps and tests.
 */
enum dsv4_step_rows { DSV4_STEP_ROWS_TRUNK = 0, DSV4_STEP_ROWS_MTP = 1, DSV4_STEP_ROWS_DRAFT = 2 };
typedef void (*dsv4_step_logits_fn)(void *ctx, enum dsv4_step_rows kind, int entry, int64_t pos,
                                    const float *rows, int n, int V);
void dsv4_step_set_logits_hook(struct dsv4_step *s, dsv4_step_logits_fn fn, void *ctx);

#endif
