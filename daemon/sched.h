/*
 * sched.h - the supervisor's scheduler (DESIGN.md §4): every request's
 * prompt and output, continuous batching into step plans, admission by the
 * state pool's free blocks, preemption, cancellation, deadlines and the
 * events the front ends stream (rpc/service.h).
 *
 * Continuous batching: each plan carries every running decode (its last
 * token and the MTP drafts the previous step returned: 1 + k tokens), then
 * prefill chunks of admitted prompts under the step's token budget
 * (max_batch_tokens) and the sequence limit (max_seqs).  A long prompt is
 * fed a chunk per step, so it never holds running decodes back by more
 * than one chunk.  High-priority requests are decoded, fed and admitted
 * first; within a class, the oldest first.
 *
 * Capacity: the scheduler mirrors the workers' state pool (blocks of
 * block_tokens positions, ceil(len / block_tokens) per sequence; the free
 * count is what the last result reported).  A plan only includes what
 * fits; when running decodes need more blocks than are free, the youngest
 * running sequence is preempted, by size: a long one's state is swapped to
 * the workers' host memory (zstd; swapped back in when its blocks fit again,
 * far cheaper than re-prefilling it), a short one's is dropped and its
 * history re-prefilled later; either way ahead of new requests.  A swap the
 * workers could not do (Result.lost) falls back to the re-prefill.  Requests beyond max_seqs wait in a queue
 * of max_queue; beyond that submit fails (retryable).
 *
 * Survival: a request's prompt and output stay here, so when the workers
 * are lost (dsv4d_sched_workers_lost) every running request is re-prefilled
 * from its history and continues: the client's stream has no gap and no
 * repeat (the tokens already sent are part of the history, the next one
 * is generated after it).
 *
 * Threads: submit / cancel / cancel_client / counts are thread-safe (an
 * inbox under a mutex); everything else runs on the supervisor's loop
 * thread, which also delivers the events, with no lock held.
 */
#ifndef DSV4D_SCHED_H
#define DSV4D_SCHED_H

#include "daemon/wire.h"
#include "engine/text/tokenizer.h"
#include "rpc/service.h"

#include <stdbool.h>
#include <stdint.h>

struct dsv4d_sched_opts {
    int max_seqs, max_batch_tokens, max_queue;
    int mtp;                       /* draft depth the workers run */
    int block_tokens;              /* 0 until the workers report */
    int64_t total_blocks, max_ctx; /* 0 until the workers report */
    int32_t eos_id;
    const struct dsv4_tokenizer *tok; /* for the text of the output (may be NULL) */
    double default_timeout;           /* seconds, 0: none */
    struct dsv4_metrics *metrics;     /* preemptions, MTP acceptance (may be NULL) */
    /* preemption by size: a sequence with at least swap_min_tokens positions in the state is
     * swapped to the workers' host memory (compressed) while the positions swapped stay
     * within swap_max_tokens; others are dropped and re-prefilled (swap_max_tokens 0:
     * always dropped) */
    int swap_min_tokens;
    int64_t swap_max_tokens;
};

/* What a step plan holds: lifecycle lists and entries (pointing into the requests). */
struct dsv4d_plan_buf {
    struct dsv4d_plan plan;
    uint64_t *add, *free, *drop, *swap_out, *swap_in;
    struct dsv4_step_entry *entries;
    uint64_t next_step;
};

struct dsv4d_sched_counts {
    int running, queued, preempted_total;
    int swapped;                             /* requests whose state is swapped out now */
    uint64_t swapped_total, swap_lost_total; /* swap-outs; swaps whose state was lost */
    uint64_t plans, follow_plans;            /* plans sent; of them follow plans */
    uint64_t finished, failed, aborted;
    int64_t free_blocks, total_blocks;
};

struct dsv4d_sched;

int dsv4d_sched_create(const struct dsv4d_sched_opts *o, struct dsv4d_sched **out);
void dsv4d_sched_free(struct dsv4d_sched *s);
/* The workers' pool (after every (re)load). */
void dsv4d_sched_set_pool(struct dsv4d_sched *s, int64_t total_blocks, int block_tokens,
                          int64_t max_ctx, int mtp);

/* ---- any thread */
/*
 * Takes a request: the prompt as ids (the caller tokenized text), copied.  Returns its id or
 * a status: DSV4_ERANGE (prompt + max_tokens beyond the context), DSV4_EINVAL, DSV4_ENOSPC
 * (queue full).  fn receives the events on the loop thread.
 */
int dsv4d_sched_submit(struct dsv4d_sched *s, const struct dsv4_svc_request *q, const int32_t *ids,
                       size_t n_ids, dsv4_svc_event_fn fn, void *ctx, uint64_t *id);
void dsv4d_sched_cancel(struct dsv4d_sched *s, uint64_t id);
int dsv4d_sched_cancel_client(struct dsv4d_sched *s, const char *client_id);
void dsv4d_sched_counts(struct dsv4d_sched *s, struct dsv4d_sched_counts *c);
/* Refuse (draining: DSV4_ENOTSUP) or accept new requests. */
void dsv4d_sched_set_accepting(struct dsv4d_sched *s, bool on, const char *why);

/* ---- the loop thread */
/* Takes new requests and cancellations in; ends cancelled and expired requests. */
void dsv4d_sched_intake(struct dsv4d_sched *s, double now);
/* Builds the next plan; false when there is nothing to do. */
bool dsv4d_sched_build(struct dsv4d_sched *s, double now, struct dsv4d_plan_buf *pb);
/*
 * Pipelining: while the plan in flight runs, the plan after it when that one is only the
 * same decodes again (every entry of the plan in flight samples, every running request is
 * in it, nothing waits to be admitted, freed or cancelled, and the blocks of one more step
 * at most 1 + mtp positions each fit): a follow plan (Plan.follow), whose entries each
 * worker continues from its own results, so that it arrives while the plan before runs.
 * false when the next plan must wait for the results.  At most one follow plan is in
 * flight; results are applied in plan order (apply / failed for each), and a follow plan
 * behind a failed one is ignored.
 */
bool dsv4d_sched_build_follow(struct dsv4d_sched *s, double now, struct dsv4d_plan_buf *pb);
/* The oldest plan in flight ended with rank 0's result (status 0). */
void dsv4d_sched_apply(struct dsv4d_sched *s, const struct dsv4d_result *r, double now);
/* The oldest plan in flight failed on the workers (status != 0): DSV4_ENOSPC preempts and
 * retries; anything else fails the plan's requests with the message. */
void dsv4d_sched_failed(struct dsv4d_sched *s, int status, const char *msg, double now);
/* Every worker's state is gone (a restart): running requests will be re-prefilled. */
void dsv4d_sched_workers_lost(struct dsv4d_sched *s);
/* Ends every request (shutdown, drain timeout, or recovery given up). */
void dsv4d_sched_end_all(struct dsv4d_sched *s, int status, const char *msg, bool retryable);
/* Requests known (queued or running). */
int dsv4d_sched_live(struct dsv4d_sched *s);
/* Waiting requests whose deadline passed get a retryable error (during recovery). */
void dsv4d_sched_expire(struct dsv4d_sched *s, double now, const char *why);

void dsv4d_plan_buf_free(struct dsv4d_plan_buf *pb);

#endif
