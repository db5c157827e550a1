/*
 * service.h - what the front ends (rpc/: gRPC, HTTP + OpenAI JSON, metrics)
 * need from the engine they serve, as one op table: the daemon's supervisor
 * implements it over its scheduler and workers (daemon/), and the front
 * ends' own tests implement it with a deterministic fake (tests/rpc/), so
 * the protocol code is tested without a model.
 *
 * Requests and events speak tokens and text: the service tokenizes a text
 * prompt, detokenizes what it generates (text deltas never split a UTF-8
 * character, and never contain the start of a stop string that might still
 * match), applies stop strings and stop ids, and reports usage.  Chat
 * encoding and the parsing of reasoning / tool calls out of a completion
 * belong to the OpenAI layer (rpc/openai.c with engine/text/chat.h), which
 * hands the service an encoded prompt.
 *
 * Threads: every op may be called from any thread.  Events of a request are
 * delivered by the service's own thread(s), in order, one call at a time per
 * request, and end with exactly one terminal event (FINISH or ERROR), after
 * which the callback is never called again for that request.  An event
 * callback must not block (queue the data to the connection's own loop).
 * Pointers inside an event are valid only during the callback.
 */
#ifndef DSV4_RPC_SERVICE_H
#define DSV4_RPC_SERVICE_H

#include "engine/sample/sample.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Readiness, the same everywhere (gRPC health, /ready, systemd STATUS=, a gauge). */
enum dsv4_svc_state {
    DSV4_SVC_STARTING = 0,
    DSV4_SVC_LOADING = 1,
    DSV4_SVC_WARMING = 2,
    DSV4_SVC_READY = 3,
    DSV4_SVC_DRAINING = 4,
    DSV4_SVC_STOPPED = 5,
    DSV4_SVC_DEGRADED = 6, /* a rank restarts, or too many crashes: see the reason */
    DSV4_SVC_STATE_COUNT
};

/* "starting", "loading", ... (never NULL). */
const char *dsv4_svc_state_name(enum dsv4_svc_state s);

#define DSV4_SVC_MAX_STOP 16

struct dsv4_svc_request {
    /* the prompt: text (tokenized by the service, special tokens recognised) or ids */
    const char *text;
    size_t text_len;
    const int32_t *ids;
    size_t n_ids;
    int32_t max_tokens;               /* >= 1; the service refuses what the context cannot hold */
    struct dsv4_sample_params sample; /* seed 0 = the service picks one */
    bool seed_given;                  /* the client chose sample.seed */
    const char *stop[DSV4_SVC_MAX_STOP]; /* stop strings (NUL-terminated), not included */
    int n_stop;
    const int32_t *stop_ids; /* stop token ids, included in the output */
    size_t n_stop_ids;
    bool ignore_eos;       /* do not stop at the model's eos token */
    bool skip_special;     /* detokenize without special tokens */
    int priority;          /* 0 normal, 1 high (scheduled first) */
    double timeout_s;      /* > 0: the request must finish within this many seconds */
    const char *client_id; /* optional client request id (Abort by it), copied */
};

enum dsv4_svc_event_kind {
    DSV4_SVC_EV_TOKENS = 0, /* new output tokens and their text */
    DSV4_SVC_EV_FINISH = 1, /* terminal: the request ended normally (or was aborted) */
    DSV4_SVC_EV_ERROR = 2   /* terminal: the request failed */
};

enum dsv4_svc_finish {
    DSV4_SVC_FINISH_STOP = 0,   /* eos, a stop id or a stop string */
    DSV4_SVC_FINISH_LENGTH = 1, /* max_tokens or the context end */
    DSV4_SVC_FINISH_ABORT = 2   /* cancelled by the client or by Abort */
};

struct dsv4_svc_event {
    enum dsv4_svc_event_kind kind;
    /* TOKENS */
    const int32_t *ids;
    size_t n_ids;
    const char *text; /* UTF-8 delta of the visible text */
    size_t text_len;
    const float *logprobs;  /* [n_ids] when sample.logprobs, else NULL */
    int32_t n_top;          /* top logprobs per token */
    const int32_t *top_ids; /* [n_ids][DSV4_SAMPLE_MAX_TOP_LOGPROBS] */
    const float *top_logprobs;
    /* FINISH */
    enum dsv4_svc_finish finish;
    const char *stop_string; /* the stop string that matched, or NULL */
    /* ERROR: a DSV4_E* status, a message, and whether retrying elsewhere may work
     * (queue full, deadline passed during a worker restart, draining) */
    int status;
    const char *message;
    bool retryable;
    /* FINISH and ERROR: usage so far */
    int64_t prompt_tokens, completion_tokens;
};

typedef void (*dsv4_svc_event_fn)(void *ctx, uint64_t id, const struct dsv4_svc_event *ev);

struct dsv4_svc_model_info {
    char model_id[256]; /* the served model name (config or directory name) */
    char model_path[1024];
    int64_t vocab_size, max_context;
    int32_t eos_token_id, bos_token_id;
    int mtp_depth;
    char architecture[64]; /* "DeepseekV4ForCausalLM" */
};

struct dsv4_svc_loads {
    int running, queued, max_seqs;
    int swapped; /* queued with their state swapped out (counted in queued too) */
    int64_t free_blocks, total_blocks;
    int workers, workers_ready;
    double tokens_per_s; /* recent generation rate */
};

struct dsv4_svc;

struct dsv4_svc_ops {
    /*
     * Starts a request (copied: the caller's buffers may go after the call).  Returns 0
     * and the request's id, or a status with a message and no event will follow:
     * DSV4_EINVAL (bad parameters), DSV4_ERANGE (prompt + max_tokens beyond the context),
     * DSV4_ENOSPC (queue full: retryable), DSV4_ENOTSUP (draining / not ready).
     */
    int (*submit)(struct dsv4_svc *s, const struct dsv4_svc_request *req, dsv4_svc_event_fn fn,
                  void *ctx, uint64_t *id);
    /* Ends a request at the next step boundary with FINISH(ABORT); unknown or finished
     * ids are ignored.  Frees its state. */
    void (*cancel)(struct dsv4_svc *s, uint64_t id);
    /* Cancels the request a client named client_id; DSV4_ENOENT if none is running. */
    int (*abort_client_id)(struct dsv4_svc *s, const char *client_id);
    /* Tokenizer: ids of text (special tokens recognised) / text of ids (malloc'ed). */
    int (*tokenize)(struct dsv4_svc *s, const char *text, size_t len, int32_t **ids, size_t *n);
    int (*detokenize)(struct dsv4_svc *s, const int32_t *ids, size_t n, bool skip_special,
                      char **text, size_t *len);
    void (*model_info)(struct dsv4_svc *s, struct dsv4_svc_model_info *out);
    void (*loads)(struct dsv4_svc *s, struct dsv4_svc_loads *out);
    /* Readiness and, when not ready, why (a short sentence). */
    enum dsv4_svc_state (*state)(struct dsv4_svc *s, char *why, size_t len);
    /* An API key check: true when no keys are configured or `key` is one of them. */
    bool (*authorize)(struct dsv4_svc *s, const char *key, size_t len);
    /* Begins a drain, as SIGTERM does (readiness DRAINING at once, new requests refused,
     * running ones finish within the drain timeout, then STOPPED); returns at once, and a
     * second call changes nothing.  NULL: the service cannot be drained by a client (the
     * gRPC Drain method answers UNIMPLEMENTED). */
    void (*drain)(struct dsv4_svc *s);
};

struct dsv4_svc {
    const struct dsv4_svc_ops *ops;
    void *impl;
};

#endif
