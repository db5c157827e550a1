/*
 * sample.h - next-token sampling for generation: penalties, temperature,
 * min-p / top-k / top-p filtering, greedy, logprobs, and speculative
 * (MTP draft) rejection sampling whose output distribution is exactly the
 * target model's.
 *
 * Pipeline of one draw (vLLM / OpenAI semantics), over a logits row l[V]
 * (FP32, V = vocab, e.g. 129280):
 *   1. penalties on a copy x = l:   for every token seen in prompt+output,
 *        x_t = x_t / rep if x_t > 0 else x_t * rep          (repetition, rep > 0)
 *      and for output tokens with count c_t > 0,
 *        x_t -= c_t * frequency + presence                   (frequency, presence)
 *   2. greedy when temperature < DSV4_SAMPLE_GREEDY_EPS or top_k == 1:
 *        token = argmax_t x_t, ties -> lowest id.  (No random draw.)
 *   3. p_t = softmax(x / T)_t
 *   4. min-p:  drop t with p_t < min_p * max_s p_s
 *   5. top-k:  keep the k most probable survivors (ties -> lower id first)
 *   6. top-p:  order survivors by (p desc, id asc); keep t when the mass of
 *      the survivors before it is < top_p * (mass of all survivors); the
 *      most probable survivor is always kept
 *   7. draw from the survivors renormalised: token t with probability
 *        P_t = p_t / sum(kept p).
 * The distribution P of step 7 (a one-hot on the argmax for greedy) is "the
 * processed distribution"; dsv4_sample_probs() writes it densely, and it is
 * what speculative rejection sampling needs for target and draft.
 *
 * Randomness is counter based: the uniform of a draw is a pure function of
 * (params.seed, pos, stream), where pos is the index of the token in the
 * request's output (0 for the first generated token) and stream separates
 * the independent uses (plain draw, draft proposal, accept test, residual
 * draw).  A request re-prefilled after a worker restart therefore redraws
 * exactly the same tokens; no generator state lives in the sampler.
 *
 * Ownership / threads: a dsv4_sampler owns only scratch sized by the vocab
 * at init; calls do not allocate.  One sampler per thread (calls on the same
 * sampler must not overlap); samplers are independent.  Bad input (NaN or
 * +inf logits, all tokens -inf, out-of-range parameters or token ids) gives
 * DSV4_EINVAL with a message, never a crash.
 */
#ifndef DSV4_SAMPLE_H
#define DSV4_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Temperatures below this are greedy (vLLM's _SAMPLING_EPS). */
#define DSV4_SAMPLE_GREEDY_EPS 1e-5f
/* Most top logprobs one result carries (the OpenAI API's maximum). */
#define DSV4_SAMPLE_MAX_TOP_LOGPROBS 20

/* Which distribution logprobs describe. */
enum dsv4_sample_logprobs_mode {
    /* log_softmax(l) of the raw logits, before penalties, temperature and
     * filtering (what OpenAI and vLLM return by default). */
    DSV4_SAMPLE_LOGPROBS_RAW = 0,
    /* log P of the processed distribution (step 7): filtered tokens are
     * -inf; greedy uses log_softmax(x) of the penalised logits at T = 1. */
    DSV4_SAMPLE_LOGPROBS_PROCESSED = 1
};

/* Per-request sampling parameters.  dsv4_sample_params_default() gives the
 * neutral values (temperature 1, every filter and penalty off). */
struct dsv4_sample_params {
    float temperature;        /* >= 0; < DSV4_SAMPLE_GREEDY_EPS means greedy */
    int32_t top_k;            /* <= 0 or >= V: off; 1: greedy */
    float top_p;              /* (0, 1]; 1: off */
    float min_p;              /* [0, 1]; 0: off */
    float repetition_penalty; /* > 0; 1: off; applied over prompt + output */
    float presence_penalty;   /* [-2, 2] like OpenAI; 0: off; output tokens */
    float frequency_penalty;  /* [-2, 2]; 0: off; output tokens */
    uint64_t seed;            /* the request's seed (the server picks one if the client did not) */
    bool logprobs;            /* fill result.logprob / top logprobs (one more O(V) pass) */
    int32_t n_top_logprobs;   /* 0..DSV4_SAMPLE_MAX_TOP_LOGPROBS; needs logprobs */
    enum dsv4_sample_logprobs_mode logprobs_mode;
};

/* Tokens seen so far by a request, for the penalties.  The output of the
 * request is output[0..n_output) followed by pending[0..n_pending) (pending:
 * draft tokens that precede a verify position, so that no array has to be
 * concatenated).  Any pointer may be NULL when its count is 0.  Ids must be
 * in [0, V). */
struct dsv4_sample_history {
    const int32_t *prompt;
    size_t n_prompt;
    const int32_t *output;
    size_t n_output;
    const int32_t *pending;
    size_t n_pending;
};

struct dsv4_sample_result {
    int32_t token;
    float logprob; /* of `token`, in params.logprobs_mode; NAN unless params.logprobs */
    int32_t n_top; /* = params.n_top_logprobs (fewer only if fewer tokens are finite); 0
                      unless params.logprobs */
    int32_t top_ids[DSV4_SAMPLE_MAX_TOP_LOGPROBS]; /* most probable first, ties lower id */
    float top_logprobs[DSV4_SAMPLE_MAX_TOP_LOGPROBS];
};

/* Streams of the counter-based generator (see above). */
enum dsv4_sample_stream {
    DSV4_SAMPLE_STREAM_TOKEN = 0,    /* dsv4_sample() */
    DSV4_SAMPLE_STREAM_DRAFT = 1,    /* dsv4_sample() for an MTP draft proposal */
    DSV4_SAMPLE_STREAM_ACCEPT = 2,   /* speculative accept tests */
    DSV4_SAMPLE_STREAM_RESIDUAL = 3, /* speculative residual / bonus draws */
    DSV4_SAMPLE_STREAM_COUNT
};

struct dsv4_sampler;

/* Neutral parameters: T = 1, top_k 0, top_p 1, min_p 0, penalties off,
 * seed 0, logprobs off, no top logprobs, RAW mode. */
struct dsv4_sample_params dsv4_sample_params_default(void);

/* Checks every field's range; DSV4_EINVAL with the field's name otherwise. */
int dsv4_sample_params_check(const struct dsv4_sample_params *p);

/* A sampler for vocab size `vocab` (>= 1); scratch ~ 21 bytes per token. */
int dsv4_sampler_init(int32_t vocab, struct dsv4_sampler **out);
void dsv4_sampler_free(struct dsv4_sampler *s);
int32_t dsv4_sampler_vocab(const struct dsv4_sampler *s);

/*
 * Draws one token from logits[V] (FP32, one row) with the pipeline above.
 *   hist: may be NULL (no penalties apply then)
 *   pos, stream: the counter of the draw (pos = output index of the token)
 *   out: token, its logprob, and params->n_top_logprobs top logprobs
 * Returns 0, or DSV4_EINVAL for bad parameters, ids or logits.
 */
int dsv4_sample(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                const float *logits, const struct dsv4_sample_history *hist, uint64_t pos,
                enum dsv4_sample_stream stream, struct dsv4_sample_result *out);

/*
 * The logprob and top logprobs (params->logprobs, params->n_top_logprobs) of a given token
 * under logits[V], exactly as dsv4_sample() reports them had it drawn `token` (for a token
 * chosen elsewhere, e.g. by speculative verification).  out->token = token.
 */
int dsv4_sample_logprobs(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                         const float *logits, const struct dsv4_sample_history *hist, int32_t token,
                         struct dsv4_sample_result *out);

/*
 * The processed distribution P[V] (FP32, sums to 1 up to rounding, 0 for
 * filtered tokens; one-hot on the argmax for greedy) of logits[V] under
 * params and hist: the p_i / q_i input of dsv4_sample_speculative().
 */
int dsv4_sample_probs(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                      const float *logits, const struct dsv4_sample_history *hist, float *probs);

/*
 * An MTP draft proposal: probs[V] = the processed distribution of the draft
 * logits (as dsv4_sample_probs) and *token a draw from it (stream DRAFT at
 * pos), in one call: the d_i and q_i rows of dsv4_sample_speculative().
 * (Greedy params: the argmax and a one-hot row.)
 */
int dsv4_sample_draft(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                      const float *logits, const struct dsv4_sample_history *hist, uint64_t pos,
                      float *probs, int32_t *token);

/*
 * Speculative rejection sampling over one verify step of k draft tokens.
 *   p:      [k+1][V] FP32 row-major: the target's processed distribution at
 *           each verify position (row i predicts the token after draft i-1;
 *           row k is the bonus position)
 *   drafts: [k] draft token ids d_0..d_{k-1}
 *   q:      [k][V] FP32 row-major: the draft model's processed distribution
 *           d_i was drawn from, or NULL for greedy drafts (q_i one-hot on d_i)
 *   pos:    output index of the first token this step emits
 *   tokens: [k+1] out: the emitted tokens; *n_out in 1..k+1 (= accepted + 1)
 *   logprobs: [k+1] out or NULL: log p_i(tokens[i]) under the target rows
 * For i = 0..k-1: accept d_i when u_i < p_i(d_i) / q_i(d_i) (u_i uniform in
 * [0,1), stream ACCEPT at pos + i); on the first rejection emit a draw from
 * normalize(max(0, p_i - q_i)) (stream RESIDUAL at pos + i) and stop; if all
 * k are accepted emit a draw from p_k (stream RESIDUAL at pos + k).  The
 * emitted tokens are distributed exactly as k+1 sequential draws from the
 * target.  With greedy target rows (one-hot) this is "accept while the draft
 * equals the argmax, then emit the argmax".  k may be 0 (plain draw from p_0).
 * Returns 0, or DSV4_EINVAL for bad ids, a draft with q_i(d_i) = 0, or rows
 * that are not distributions (negative, NaN, zero mass).
 */
int dsv4_sample_speculative(struct dsv4_sampler *s, const struct dsv4_sample_params *params, int k,
                            const float *p, const int32_t *drafts, const float *q, uint64_t pos,
                            int32_t *tokens, float *logprobs, int *n_out);

/* The uniform in [0, 1) (a multiple of 2^-53, never 1) of draw (seed, pos, stream). */
double dsv4_sample_uniform(uint64_t seed, uint64_t pos, uint32_t stream);

/* One Philox-4x32-10 block: out = the 10-round bijection of counter ctr under
 * key (the generator behind dsv4_sample_uniform; exposed for its
 * known-answer test against the published Random123 vectors). */
void dsv4_sample_philox_kat(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

#ifdef __cplusplus
}
#endif

#endif
