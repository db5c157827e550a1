/*
 * openai.h - the OpenAI-compatible JSON of the HTTP front end: requests of
 * POST /v1/completions and POST /v1/chat/completions parsed into a plain
 * struct the service can run, and the service's events turned into
 * response bodies or server-sent-event chunks.  No sockets here (rpc/http.c
 * moves the bytes), so every field and every chunk is testable alone.
 *
 * Requests (unknown fields are ignored, as OpenAI and vLLM do):
 *   both: model, max_tokens (chat also max_completion_tokens), temperature,
 *     top_p, top_k, min_p, presence_penalty, frequency_penalty,
 *     repetition_penalty, seed, stop (a string or up to DSV4_SVC_MAX_STOP),
 *     stop_token_ids, ignore_eos, stream, stream_options.include_usage,
 *     n / best_of (1 only), priority (0 normal, 1 high), logit_bias (empty
 *     only), min_tokens (0 only);
 *   completions: prompt (a string, token ids, or a list of one of those),
 *     logprobs (0..20 top entries), echo (without logprobs),
 *     skip_special_tokens (default true), suffix (empty only);
 *   chat: messages (rendered by engine/text/chat.h), tools, tool_choice
 *     (auto | none), logprobs (bool) + top_logprobs (0..20),
 *     response_format (type text only), and the thinking switches below.
 * Thinking (chat): on when chat_template_kwargs.thinking (or its alias
 *   enable_thinking) is true, or the DeepSeek API's thinking.type is
 *   "enabled" (or thinking is true); otherwise on when reasoning_effort is
 *   given and not "none"; otherwise the server's default.  Effort: "max" or
 *   "xhigh" (top level or in chat_template_kwargs) gives the max-effort
 *   preamble; "minimal", "low", "medium", "high" are the normal effort
 *   (vLLM's mapping for DeepSeek-V4); "none" turns thinking off.
 * Chat completions are parsed with chat.h's streaming parser into
 *   reasoning_content (thinking mode), content and tool_calls
 *   (finish_reason "tool_calls" when the model called tools).  Output the
 *   grammar does not accept is passed on as content from the point where
 *   it broke.
 * Errors are OpenAI's shape {"error": {"message", "type", "param", "code"}}
 *   with the HTTP status of dsv4_openai_status.
 *
 * Threads: a request and a response object belong to one thread at a time.
 */
#ifndef DSV4_RPC_OPENAI_H
#define DSV4_RPC_OPENAI_H

#include "engine/io/strbuf.h"
#include "rpc/service.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dsv4_openai_kind {
    DSV4_OPENAI_COMPLETION = 0, /* POST /v1/completions */
    DSV4_OPENAI_CHAT = 1        /* POST /v1/chat/completions */
};

/* Longest stop string accepted (bytes). */
#define DSV4_OPENAI_MAX_STOP_LEN 256
/* Most stop_token_ids accepted. */
#define DSV4_OPENAI_MAX_STOP_IDS 64

/* What the server decides, not the client. */
struct dsv4_openai_cfg {
    const char *model;     /* the served model name: another `model` in a request is a 404 */
    bool default_thinking; /* chat: thinking mode when the request does not choose */
};

/* A parsed request.  Owned by the caller (dsv4_openai_req_free). */
struct dsv4_openai_req {
    enum dsv4_openai_kind kind;
    char *prompt; /* the prompt text (chat: the rendered conversation), or NULL */
    size_t prompt_len;
    int32_t *ids; /* completions: the prompt as token ids, or NULL */
    size_t n_ids;
    int32_t max_tokens; /* 0: not given (the rest of the context) */
    struct dsv4_sample_params sample;
    bool seed_given;
    char *stop[DSV4_SVC_MAX_STOP];
    int n_stop;
    int32_t *stop_ids;
    size_t n_stop_ids;
    bool ignore_eos, skip_special;
    int priority;
    bool stream, include_usage;
    bool logprobs;    /* logprobs requested (chat: logprobs true; completions: logprobs set) */
    int top_logprobs; /* top entries per token, 0..DSV4_SAMPLE_MAX_TOP_LOGPROBS */
    bool echo;        /* completions: the prompt text is prepended to the output */
    int chat_mode;    /* chat: enum dsv4_chat_mode the completion is parsed with */
    int effort;       /* chat: enum dsv4_chat_effort the prompt was rendered with */
};

/* Why a request was refused. */
struct dsv4_openai_error {
    int status;        /* HTTP status: 400, 404, ... */
    const char *param; /* the offending field (static), or NULL */
    const char *code;  /* OpenAI's error code (static), or NULL */
    char message[512];
};

/*
 * Parses and validates a request body (any bytes: invalid UTF-8, malformed
 * JSON, wrong types, out-of-range numbers and unsupported options are
 * refused, never a crash).  Chat messages are rendered here (engine/text/
 * chat.h).  Returns 0 and *out, or a DSV4_E* status with *err filled.
 */
int dsv4_openai_parse(enum dsv4_openai_kind kind, const char *body, size_t len,
                      const struct dsv4_openai_cfg *cfg, struct dsv4_openai_req **out,
                      struct dsv4_openai_error *err);
void dsv4_openai_req_free(struct dsv4_openai_req *r);

/* HTTP status of a DSV4_E* status from the service (submit, or an ERROR event):
 * EINVAL/ERANGE/EFORMAT 400, ENOENT 404, ENOSPC 429, ENOTSUP 503 (not ready, draining),
 * a retryable failure 503, anything else 500. */
int dsv4_openai_status(int status, bool retryable);

/* Appends the error body {"error": {...}} for an HTTP status (type and a default code
 * follow from the status; `code`/`param` may be NULL). */
void dsv4_openai_error_body(struct dsv4_strbuf *out, int http_status, const char *message,
                            const char *param, const char *code);

/* GET /v1/models: the one served model. */
void dsv4_openai_models_body(struct dsv4_strbuf *out, const char *model, int64_t created,
                             int64_t max_context);

/* ------------------------------------------------------------ responses */

/* The text of one token id for logprobs (malloc'ed into *text); nonzero: unknown. */
typedef int (*dsv4_openai_token_fn)(void *ctx, int32_t id, char **text, size_t *len);

struct dsv4_openai_resp;

/*
 * A response to request `rq` (which must outlive it): `id` its id
 * ("cmpl-..." / "chatcmpl-..."), `model` the served name, `created` Unix
 * seconds, `tok` the token texts of logprobs (may be NULL: "token_id:N").
 */
int dsv4_openai_resp_new(const struct dsv4_openai_req *rq, const char *id, const char *model,
                         int64_t created, dsv4_openai_token_fn tok, void *tok_ctx,
                         struct dsv4_openai_resp **out);
void dsv4_openai_resp_free(struct dsv4_openai_resp *r);

/* Streaming: the first chunk(s) (chat: the assistant role; completions with echo: the
 * prompt).  Appends nothing when not streaming. */
int dsv4_openai_resp_begin(struct dsv4_openai_resp *r, struct dsv4_strbuf *out);

/* A TOKENS event: appends SSE chunks ("data: {...}\n\n") when streaming, else accumulates. */
int dsv4_openai_resp_tokens(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                            struct dsv4_strbuf *out);

/* The FINISH event: appends the last chunks, the usage chunk if asked and "data: [DONE]"
 * when streaming, else the whole response body. */
int dsv4_openai_resp_finish(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                            struct dsv4_strbuf *out);

/* A failure after the stream began: an error event and "data: [DONE]".  (Before the first
 * byte, or without streaming, the caller answers with dsv4_openai_error_body instead.) */
void dsv4_openai_resp_stream_error(struct dsv4_openai_resp *r, int http_status, const char *message,
                                   struct dsv4_strbuf *out);

/* Tokens so far: prompt (from the events) and generated. */
void dsv4_openai_resp_usage(const struct dsv4_openai_resp *r, int64_t *prompt, int64_t *completion);

/* finish_reason of the finished response ("stop", "length", "tool_calls", "abort"), or NULL. */
const char *dsv4_openai_resp_finish_reason(const struct dsv4_openai_resp *r);

#endif
