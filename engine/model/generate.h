/*
 * generate.h - offline generation over the CPU forward pass: prefill in
 * chunks, then decode one token per step, or with MTP drafting of k tokens
 * per step and verification of 1+k positions (greedy: accept while the
 * draft equals the target's argmax; temperature > 0: speculative rejection
 * sampling, engine/sample/sample.h), with rollback of every state piece for
 * rejected positions.  Runs N ranks as threads over the shared-memory
 * communicator (engine/model/comm.h); every rank computes identical logits and
 * therefore draws identical tokens; rank 0 reports.
 *
 * The emitted tokens do not depend on k for greedy decoding, nor on N
 * (the forward pass is exact across ranks and chunkings).
 */
#ifndef DSV4_GENERATE_H
#define DSV4_GENERATE_H

#include "engine/model/step.h"
#include "engine/sample/sample.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define DSV4_GEN_MAX_MTP DSV4_STEP_MAX_DRAFTS
/* Option bounds (checked by dsv4_generate; anything outside gets DSV4_EINVAL):
 * ranks are threads over the shared-memory communicator (DSV4_COMM_SHM_MAX_RANKS);
 * a prefill chunk sizes the forward scratch (O(chunk * (k+1) * hidden) floats),
 * so it is bounded to keep a typo from asking for terabytes. */
#define DSV4_GEN_MAX_RANKS   64
#define DSV4_GEN_MAX_THREADS 1024
#define DSV4_GEN_MAX_CHUNK   65536
/* Most positions of one generation (prompt + output + drafts), whatever a config's
 * max_position_embeddings allows: the forward scratch grows with the context. */
#define DSV4_GEN_MAX_CONTEXT (INT64_C(1) << 24)

struct dsv4_gen_opts {
    /* tokens to generate (>= 0); prompt + max_tokens + mtp + 2 <= max_position_embeddings
     * and <= DSV4_GEN_MAX_CONTEXT */
    int max_tokens;
    int mtp;             /* draft depth k in [0, DSV4_GEN_MAX_MTP] (0: no MTP) */
    int threads;         /* total CPU threads (split over ranks), [1, DSV4_GEN_MAX_THREADS] */
    int ranks;           /* N in [1, DSV4_GEN_MAX_RANKS]; any N (uneven or empty head/expert
                  * slices included) gives the same tokens */
    int chunk;           /* prefill chunk (tokens per forward call), [1, DSV4_GEN_MAX_CHUNK] */
    const char *backend; /* "cpu" (default), "ref" (the scalar oracle; slow), "devsim", "cuda" */
    bool stop_at_eos;    /* stop after emitting eos_token_id */
    struct dsv4_sample_params sample;
    FILE *dump_logits;       /* FP32 rows: every prompt position and every generated token */
    const char *dump_layers; /* DIR/layer_%02d.f32 of the prompt, or NULL */
    /* diagnostics: replace each trunk layer's output for the prompt with DIR/layer_%02d.f32
     * (after dumping the computed one), so each layer is compared on the reference's input */
    const char *force_layers;
    FILE *dump_mtp_logits;   /* FP32 [P-1, V]: MTP logits of the prompt positions 0..P-2 */
    FILE *dump_draft_logits; /* FP32 [k, V]: logits of the first k drafts (after the prompt) */
    /* token callback on rank 0 (may be NULL): called as tokens are emitted */
    void (*on_token)(void *ctx, int32_t token);
    void *ctx;
};

struct dsv4_gen_result {
    int32_t *tokens; /* malloc'ed [n] */
    /* malloc'ed [n]: log-probability of each token in params.logprobs_mode (raw log_softmax
     * by default); under speculative sampling, of the target's processed distribution */
    float *logprobs;
    int n;
    int n_prompt;
    double t_load, t_prefill, t_decode; /* seconds */
    int steps;                          /* decode / verify forward calls */
    uint64_t drafted, accepted;
    uint64_t drafted_at[DSV4_GEN_MAX_MTP], accepted_at[DSV4_GEN_MAX_MTP];
};

void dsv4_gen_opts_default(struct dsv4_gen_opts *o);

/* Loads the model in `dir` (once per rank) and generates from prompt[n_prompt]. */
int dsv4_generate(const char *dir, const int32_t *prompt, int n_prompt,
                  const struct dsv4_gen_opts *o, struct dsv4_gen_result *res);
void dsv4_gen_result_free(struct dsv4_gen_result *r);

#endif
