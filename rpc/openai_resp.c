/*
 * openai_resp.c - the responses of rpc/openai.h: the service's events of
 * one request turned into an OpenAI completion / chat completion body, or
 * into server-sent-event chunks when the client streams.
 *
 * Chat output goes through chat.h's incremental parser: each TOKENS event
 * feeds its text, and the new tails of reasoning and content and any newly
 * closed tool calls become one chunk's delta.  The raw completion text is
 * kept as well, so that when the model breaks the tool-call grammar the
 * text from the tool-calls marker on can still be returned as content
 * (tool calls already sent stay sent).
 *
 * Logprobs: chat entries {token, logprob, bytes, top_logprobs} ride on the
 * next chunk that is sent (the parser may hold text back); completions get
 * OpenAI's legacy {tokens, token_logprobs, top_logprobs, text_offset} per
 * chunk.  A logprob that is not finite is reported as -9999.0 (JSON has no
 * infinity).  Every string put into JSON is valid UTF-8 (invalid bytes from
 * a token become U+FFFD; `bytes` keeps the exact ones).
 */
#include "rpc/openai.h"
#include "rpc/openai_int.h"

#include "base/dsv4.h"
#include "engine/text/chat.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EOS_TEXT       "<｜end▁of▁sentence｜>"
#define THINK_END      "</think>"
#define TOOL_CALLS_BEG "\n\n<｜DSML｜tool_calls>"

struct dsv4_openai_resp {
    const struct dsv4_openai_req *rq;
    char *id, *model;
    int64_t created;
    dsv4_openai_token_fn tok;
    void *tok_ctx;
    bool chat, stream;
    struct dsv4_strbuf text; /* completions: the text; chat: the raw completion */
    /* chat */
    struct dsv4_chat_parser *parser;
    bool raw;                 /* the parser gave up: text passes through as content */
    struct dsv4_strbuf extra; /* raw mode: content after the parser's */
    bool extra_done;          /* raw mode: the end-of-sentence token was seen */
    bool finishing;           /* the FINISH event is being handled: nothing more comes */
    size_t sent_reasoning, sent_content, sent_calls;
    /* logprobs: chat: array of entries not yet sent (stream) or all; completions: object */
    cJSON *lp;
    size_t text_offset;
    int64_t prompt_tokens, completion_tokens;
    const char *finish_reason;
};

int dsv4_openai_resp_new(const struct dsv4_openai_req *rq, const char *id, const char *model,
                         int64_t created, dsv4_openai_token_fn tok, void *tok_ctx,
                         struct dsv4_openai_resp **out)
{
    *out = NULL;
    struct dsv4_openai_resp *r = calloc(1, sizeof(*r));
    if (!r)
        return dsv4_error(DSV4_ENOMEM, "openai: out of memory");
    r->rq = rq;
    r->id = dsv4_openai_utf8_clean(id, strlen(id));
    r->model = dsv4_openai_utf8_clean(model, strlen(model));
    r->created = created;
    r->tok = tok;
    r->tok_ctx = tok_ctx;
    r->chat = rq->kind == DSV4_OPENAI_CHAT;
    r->stream = rq->stream;
    int rc = r->id && r->model ? 0 : dsv4_error(DSV4_ENOMEM, "openai: out of memory");
    if (!rc && r->chat)
        rc = dsv4_chat_parser_new(rq->chat_mode, &r->parser);
    if (rc) {
        dsv4_openai_resp_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void dsv4_openai_resp_free(struct dsv4_openai_resp *r)
{
    if (!r)
        return;
    free(r->id);
    free(r->model);
    dsv4_strbuf_free(&r->text);
    dsv4_strbuf_free(&r->extra);
    dsv4_chat_parser_free(r->parser);
    cJSON_Delete(r->lp);
    free(r);
}

void dsv4_openai_resp_usage(const struct dsv4_openai_resp *r, int64_t *prompt, int64_t *completion)
{
    *prompt = r->prompt_tokens;
    *completion = r->completion_tokens;
}

const char *dsv4_openai_resp_finish_reason(const struct dsv4_openai_resp *r)
{
    return r->finish_reason;
}

/* ------------------------------------------------------------ JSON pieces */

static void add_text(cJSON *o, const char *key, const char *s, size_t n)
{
    char *c = dsv4_openai_utf8_clean(s ? s : "", s ? n : 0);
    cJSON_AddStringToObject(o, key, c ? c : "");
    free(c);
}

static double finite_lp(float lp)
{
    return isfinite(lp) ? (double)lp : -9999.0;
}

/* Appends "data: <json>\n\n" and frees the tree; DSV4_ENOMEM if it could not print. */
static int emit(cJSON *root, struct dsv4_strbuf *out)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s)
        return dsv4_error(DSV4_ENOMEM, "openai: out of memory");
    dsv4_strbuf_str(out, "data: ");
    dsv4_strbuf_str(out, s);
    dsv4_strbuf_str(out, "\n\n");
    free(s);
    return out->oom ? dsv4_error(DSV4_ENOMEM, "openai: out of memory") : 0;
}

static void add_usage(const struct dsv4_openai_resp *r, cJSON *root)
{
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)r->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(r->prompt_tokens + r->completion_tokens));
}

/* {"id", "object", "created", "model", "choices": [{"index": 0}]}; *choice is the choice. */
static cJSON *envelope(const struct dsv4_openai_resp *r, bool chunk, cJSON **choice)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", r->id);
    const char *object =
            r->chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", r->model);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    if (choice) {
        *choice = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, *choice);
        cJSON_AddNumberToObject(*choice, "index", 0);
    }
    if (chunk && r->rq->include_usage)
        cJSON_AddNullToObject(root, "usage");
    return root;
}

/* Text of token `id` for logprobs: the exact bytes (malloc'ed) or "token_id:N". */
static char *token_text(const struct dsv4_openai_resp *r, int32_t id, size_t *len)
{
    char *t = NULL;
    if (r->tok && r->tok(r->tok_ctx, id, &t, len) == 0 && t)
        return t;
    free(t);
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "token_id:%" PRId32, id);
    *len = (size_t)n;
    return strdup(buf);
}

static cJSON *bytes_array(const char *s, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
    return a;
}

/* {"token", "logprob", "bytes"} of one id (chat). */
static cJSON *chat_lp_item(const struct dsv4_openai_resp *r, int32_t id, float lp)
{
    size_t n = 0;
    char *t = token_text(r, id, &n);
    cJSON *o = cJSON_CreateObject();
    add_text(o, "token", t, n);
    cJSON_AddNumberToObject(o, "logprob", finite_lp(lp));
    cJSON_AddItemToObject(o, "bytes", bytes_array(t ? t : "", t ? n : 0));
    free(t);
    return o;
}

/* Logprobs of the tokens of one event: chat entries appended to r->lp (an array);
 * completions appended to the object *obj (created when NULL). */
static void add_logprobs(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev, cJSON **obj)
{
    if (!r->rq->logprobs || !ev->logprobs)
        return;
    int n_top = DSV4_MIN(DSV4_MAX(ev->n_top, 0), r->rq->top_logprobs);
    n_top = DSV4_MIN(n_top, DSV4_SAMPLE_MAX_TOP_LOGPROBS);
    for (size_t i = 0; i < ev->n_ids; i++) {
        const int32_t *tids = ev->top_ids ? ev->top_ids + i * DSV4_SAMPLE_MAX_TOP_LOGPROBS : NULL;
        const float *tlps =
                ev->top_logprobs ? ev->top_logprobs + i * DSV4_SAMPLE_MAX_TOP_LOGPROBS : NULL;
        int k_top = tids && tlps ? n_top : 0;
        if (r->chat) {
            if (!r->lp)
                r->lp = cJSON_CreateArray();
            cJSON *e = chat_lp_item(r, ev->ids[i], ev->logprobs[i]);
            cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
            for (int k = 0; k < k_top; k++)
                cJSON_AddItemToArray(tops, chat_lp_item(r, tids[k], tlps[k]));
            cJSON_AddItemToArray(r->lp, e);
            continue;
        }
        if (!*obj) {
            *obj = cJSON_CreateObject();
            cJSON_AddArrayToObject(*obj, "tokens");
            cJSON_AddArrayToObject(*obj, "token_logprobs");
            cJSON_AddArrayToObject(*obj, "top_logprobs");
            cJSON_AddArrayToObject(*obj, "text_offset");
        }
        size_t n = 0;
        char *t = token_text(r, ev->ids[i], &n);
        char *c = dsv4_openai_utf8_clean(t ? t : "", t ? n : 0);
        cJSON_AddItemToArray(cJSON_GetObjectItem(*obj, "tokens"), cJSON_CreateString(c ? c : ""));
        cJSON_AddItemToArray(cJSON_GetObjectItem(*obj, "token_logprobs"),
                             cJSON_CreateNumber(finite_lp(ev->logprobs[i])));
        cJSON *top = cJSON_CreateObject();
        if (k_top == 0)
            cJSON_AddNumberToObject(top, c ? c : "", finite_lp(ev->logprobs[i]));
        for (int k = 0; k < k_top; k++) {
            size_t tn = 0;
            char *tt = token_text(r, tids[k], &tn);
            char *tc = dsv4_openai_utf8_clean(tt ? tt : "", tt ? tn : 0);
            if (tc && !cJSON_GetObjectItemCaseSensitive(top, tc))
                cJSON_AddNumberToObject(top, tc, finite_lp(tlps[k]));
            free(tc);
            free(tt);
        }
        cJSON_AddItemToArray(cJSON_GetObjectItem(*obj, "top_logprobs"), top);
        cJSON_AddItemToArray(cJSON_GetObjectItem(*obj, "text_offset"),
                             cJSON_CreateNumber((double)r->text_offset));
        r->text_offset += c ? strlen(c) : 0;
        free(c);
        free(t);
    }
}

/* ------------------------------------------------------------ completions */

/* The prompt as text, for echo (token ids through the token texts). */
static char *echo_text(const struct dsv4_openai_resp *r, size_t *len)
{
    struct dsv4_strbuf b = {0};
    if (r->rq->prompt)
        dsv4_strbuf_put(&b, r->rq->prompt, r->rq->prompt_len);
    for (size_t i = 0; !r->rq->prompt && i < r->rq->n_ids; i++) {
        size_t n = 0;
        char *t = token_text(r, r->rq->ids[i], &n);
        dsv4_strbuf_put(&b, t ? t : "", t ? n : 0);
        free(t);
    }
    if (!b.p)
        dsv4_strbuf_put(&b, "", 0);
    *len = b.len;
    return b.p;
}

static int completion_tokens(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                             struct dsv4_strbuf *out)
{
    if (!r->stream) {
        dsv4_strbuf_put(&r->text, ev->text ? ev->text : "", ev->text ? ev->text_len : 0);
        add_logprobs(r, ev, &r->lp);
        return r->text.oom ? dsv4_error(DSV4_ENOMEM, "openai: out of memory") : 0;
    }
    cJSON *lp = NULL;
    add_logprobs(r, ev, &lp);
    if (ev->text_len == 0 && !lp)
        return 0;
    cJSON *choice;
    cJSON *root = envelope(r, true, &choice);
    add_text(choice, "text", ev->text, ev->text_len);
    if (lp)
        cJSON_AddItemToObject(choice, "logprobs", lp);
    else
        cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddNullToObject(choice, "finish_reason");
    return emit(root, out);
}

/* ------------------------------------------------------------ chat */

/* Raw mode from here on: the content continues with the raw text from the
 * tool-calls marker the parser stopped at. */
static void enter_raw(struct dsv4_openai_resp *r)
{
    const char *t = r->text.p ? r->text.p : "";
    size_t n = r->text.len, from = 0;
    r->raw = true;
    if (r->rq->chat_mode == DSV4_CHAT_MODE_THINKING) {
        const char *e = memmem(t, n, THINK_END, strlen(THINK_END));
        from = e ? (size_t)(e - t) + strlen(THINK_END) : n;
    }
    const char *m = memmem(t + from, n - from, TOOL_CALLS_BEG, strlen(TOOL_CALLS_BEG));
    from = m ? (size_t)(m - t) : n;
    dsv4_strbuf_put(&r->extra, t + from, n - from);
    const char *eos =
            r->extra.p ? memmem(r->extra.p, r->extra.len, EOS_TEXT, strlen(EOS_TEXT)) : NULL;
    if (eos) {
        r->extra.len = (size_t)(eos - r->extra.p);
        r->extra.p[r->extra.len] = 0;
        r->extra_done = true;
    }
    dsv4_log(DSV4_LOG_WARN, "openai: %s: %s; the rest of the output is returned as content", r->id,
             dsv4_errmsg());
}

static int chat_feed(struct dsv4_openai_resp *r, const char *s, size_t n)
{
    dsv4_strbuf_put(&r->text, s, n);
    if (r->text.oom)
        return dsv4_error(DSV4_ENOMEM, "openai: out of memory");
    if (!r->raw) {
        int rc = dsv4_chat_parser_feed(r->parser, s, n);
        if (rc == DSV4_EFORMAT)
            enter_raw(r);
        else if (rc)
            return rc;
        return 0;
    }
    if (r->extra_done)
        return 0;
    /* the end-of-sentence text may straddle two pieces */
    size_t start = r->extra.len > strlen(EOS_TEXT) ? r->extra.len - strlen(EOS_TEXT) : 0;
    dsv4_strbuf_put(&r->extra, s, n);
    const char *eos = r->extra.p ? memmem(r->extra.p + start, r->extra.len - start, EOS_TEXT,
                                          strlen(EOS_TEXT))
                                 : NULL;
    if (eos) {
        r->extra.len = (size_t)(eos - r->extra.p);
        r->extra.p[r->extra.len] = 0;
        r->extra_done = true;
    }
    return r->extra.oom ? dsv4_error(DSV4_ENOMEM, "openai: out of memory") : 0;
}

static int chat_finish_parse(struct dsv4_openai_resp *r)
{
    if (r->raw)
        return 0;
    int rc = dsv4_chat_parser_finish(r->parser);
    if (rc == DSV4_EFORMAT)
        enter_raw(r);
    else if (rc)
        return rc;
    return 0;
}

/* The content so far: the parser's, then (raw mode) the extra text, less a tail that
 * may be the start of the end-of-sentence text while more may come. */
static void content_parts(const struct dsv4_openai_resp *r, const char **a, size_t *na,
                          const char **b, size_t *nb)
{
    *a = dsv4_chat_parser_content(r->parser, na);
    *b = r->extra.p ? r->extra.p : "";
    *nb = r->extra.len;
    if (r->extra_done || r->finishing)
        return;
    size_t el = strlen(EOS_TEXT);
    for (size_t k = DSV4_MIN(*nb, el - 1); k > 0; k--)
        if (!memcmp(*b + *nb - k, EOS_TEXT, k)) {
            *nb -= k;
            break;
        }
}

static void call_id(const struct dsv4_openai_resp *r, size_t i, char *buf, size_t size)
{
    size_t n = strlen(r->id);
    const char *tail = n > 16 ? r->id + n - 16 : r->id;
    snprintf(buf, size, "call_%s%02zx", tail, i);
}

static cJSON *tool_call(const struct dsv4_openai_resp *r, size_t i, bool with_index)
{
    const char *name, *args;
    char id[64];
    dsv4_chat_parser_call(r->parser, i, &name, &args);
    call_id(r, i, id, sizeof(id));
    cJSON *c = cJSON_CreateObject();
    if (with_index)
        cJSON_AddNumberToObject(c, "index", (double)i);
    cJSON_AddStringToObject(c, "id", id);
    cJSON_AddStringToObject(c, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(c, "function");
    add_text(fn, "name", name, strlen(name));
    add_text(fn, "arguments", args, strlen(args));
    return c;
}

/* The delta since the last chunk (may be empty: {}). */
static cJSON *chat_delta(struct dsv4_openai_resp *r)
{
    cJSON *d = cJSON_CreateObject();
    size_t rl = 0, na, nb;
    const char *reasoning = dsv4_chat_parser_reasoning(r->parser, &rl);
    if (rl > r->sent_reasoning) {
        add_text(d, "reasoning_content", reasoning + r->sent_reasoning, rl - r->sent_reasoning);
        r->sent_reasoning = rl;
    }
    const char *a, *b;
    content_parts(r, &a, &na, &b, &nb);
    if (na + nb > r->sent_content) {
        struct dsv4_strbuf t = {0};
        if (r->sent_content < na)
            dsv4_strbuf_put(&t, a + r->sent_content, na - r->sent_content);
        size_t from_b = r->sent_content > na ? r->sent_content - na : 0;
        dsv4_strbuf_put(&t, b + from_b, nb - from_b);
        add_text(d, "content", t.p, t.len);
        dsv4_strbuf_free(&t);
        r->sent_content = na + nb;
    }
    size_t nc = dsv4_chat_parser_n_calls(r->parser);
    if (nc > r->sent_calls) {
        cJSON *calls = cJSON_AddArrayToObject(d, "tool_calls");
        for (size_t i = r->sent_calls; i < nc; i++)
            cJSON_AddItemToArray(calls, tool_call(r, i, true));
        r->sent_calls = nc;
    }
    return d;
}

static void attach_chat_logprobs(struct dsv4_openai_resp *r, cJSON *choice)
{
    if (r->lp) {
        cJSON *o = cJSON_AddObjectToObject(choice, "logprobs");
        cJSON_AddItemToObject(o, "content", r->lp);
        r->lp = NULL;
    } else {
        cJSON_AddNullToObject(choice, "logprobs");
    }
}

static int chat_tokens(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                       struct dsv4_strbuf *out)
{
    int rc = chat_feed(r, ev->text ? ev->text : "", ev->text ? ev->text_len : 0);
    if (rc)
        return rc;
    add_logprobs(r, ev, NULL);
    if (!r->stream)
        return 0;
    cJSON *d = chat_delta(r);
    if (!d->child && !r->lp) {
        cJSON_Delete(d);
        return 0;
    }
    cJSON *choice;
    cJSON *root = envelope(r, true, &choice);
    cJSON_AddItemToObject(choice, "delta", d);
    attach_chat_logprobs(r, choice);
    cJSON_AddNullToObject(choice, "finish_reason");
    return emit(root, out);
}

/* ------------------------------------------------------------ entry points */

int dsv4_openai_resp_begin(struct dsv4_openai_resp *r, struct dsv4_strbuf *out)
{
    if (!r->stream)
        return 0;
    cJSON *choice;
    cJSON *root = envelope(r, true, &choice);
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(choice, "delta");
        cJSON_AddStringToObject(d, "role", "assistant");
        cJSON_AddStringToObject(d, "content", "");
    } else {
        if (!r->rq->echo) {
            cJSON_Delete(root);
            return 0;
        }
        size_t n = 0;
        char *t = echo_text(r, &n);
        add_text(choice, "text", t, n);
        r->text_offset = n;
        free(t);
    }
    cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddNullToObject(choice, "finish_reason");
    return emit(root, out);
}

int dsv4_openai_resp_tokens(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                            struct dsv4_strbuf *out)
{
    r->completion_tokens += (int64_t)ev->n_ids;
    if (ev->prompt_tokens > 0)
        r->prompt_tokens = ev->prompt_tokens;
    return r->chat ? chat_tokens(r, ev, out) : completion_tokens(r, ev, out);
}

static const char *finish_name(const struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev)
{
    switch (ev->finish) {
    case DSV4_SVC_FINISH_STOP:
        return r->chat && dsv4_chat_parser_n_calls(r->parser) > 0 ? "tool_calls" : "stop";
    case DSV4_SVC_FINISH_LENGTH:
        return "length";
    default:
        return "abort";
    }
}

static void add_finish(cJSON *choice, const char *reason, const struct dsv4_svc_event *ev)
{
    cJSON_AddStringToObject(choice, "finish_reason", reason);
    if (ev->stop_string)
        add_text(choice, "stop_reason", ev->stop_string, strlen(ev->stop_string));
    else
        cJSON_AddNullToObject(choice, "stop_reason");
}

static int finish_body(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                       struct dsv4_strbuf *out)
{
    cJSON *choice;
    cJSON *root = envelope(r, false, &choice);
    if (r->chat) {
        cJSON *m = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        const char *a, *b;
        size_t na, nb, nr;
        content_parts(r, &a, &na, &b, &nb);
        size_t nc = dsv4_chat_parser_n_calls(r->parser);
        struct dsv4_strbuf t = {0};
        dsv4_strbuf_put(&t, a, na);
        dsv4_strbuf_put(&t, b, nb);
        if (nc && t.len == 0)
            cJSON_AddNullToObject(m, "content");
        else
            add_text(m, "content", t.p, t.len);
        dsv4_strbuf_free(&t);
        if (r->rq->chat_mode == DSV4_CHAT_MODE_THINKING) {
            const char *rs = dsv4_chat_parser_reasoning(r->parser, &nr);
            add_text(m, "reasoning_content", rs, nr);
        }
        if (nc) {
            cJSON *calls = cJSON_AddArrayToObject(m, "tool_calls");
            for (size_t i = 0; i < nc; i++)
                cJSON_AddItemToArray(calls, tool_call(r, i, false));
        }
        attach_chat_logprobs(r, choice);
    } else {
        size_t n = 0;
        char *echo = r->rq->echo ? echo_text(r, &n) : NULL;
        struct dsv4_strbuf t = {0};
        dsv4_strbuf_put(&t, echo ? echo : "", n);
        dsv4_strbuf_put(&t, r->text.p ? r->text.p : "", r->text.len);
        add_text(choice, "text", t.p, t.len);
        dsv4_strbuf_free(&t);
        free(echo);
        if (r->lp) {
            cJSON_AddItemToObject(choice, "logprobs", r->lp);
            r->lp = NULL;
        } else {
            cJSON_AddNullToObject(choice, "logprobs");
        }
    }
    add_finish(choice, r->finish_reason, ev);
    add_usage(r, root);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s)
        return dsv4_error(DSV4_ENOMEM, "openai: out of memory");
    dsv4_strbuf_str(out, s);
    free(s);
    return out->oom ? dsv4_error(DSV4_ENOMEM, "openai: out of memory") : 0;
}

int dsv4_openai_resp_finish(struct dsv4_openai_resp *r, const struct dsv4_svc_event *ev,
                            struct dsv4_strbuf *out)
{
    if (ev->prompt_tokens > 0)
        r->prompt_tokens = ev->prompt_tokens;
    if (ev->completion_tokens > r->completion_tokens)
        r->completion_tokens = ev->completion_tokens;
    r->finishing = true;
    int rc = r->chat ? chat_finish_parse(r) : 0;
    if (rc)
        return rc;
    r->finish_reason = finish_name(r, ev);
    if (!r->stream)
        return finish_body(r, ev, out);
    cJSON *choice;
    cJSON *root = envelope(r, true, &choice);
    if (r->chat) {
        cJSON_AddItemToObject(choice, "delta", chat_delta(r));
        attach_chat_logprobs(r, choice);
    } else {
        cJSON_AddStringToObject(choice, "text", "");
        cJSON_AddNullToObject(choice, "logprobs");
    }
    add_finish(choice, r->finish_reason, ev);
    if ((rc = emit(root, out)))
        return rc;
    if (r->rq->include_usage) {
        root = envelope(r, false, NULL);
        cJSON_ReplaceItemInObject(
                root, "object",
                cJSON_CreateString(r->chat ? "chat.completion.chunk" : "text_completion"));
        add_usage(r, root);
        if ((rc = emit(root, out)))
            return rc;
    }
    dsv4_strbuf_str(out, "data: [DONE]\n\n");
    return out->oom ? dsv4_error(DSV4_ENOMEM, "openai: out of memory") : 0;
}

void dsv4_openai_resp_stream_error(struct dsv4_openai_resp *r, int http_status, const char *message,
                                   struct dsv4_strbuf *out)
{
    (void)r;
    dsv4_strbuf_str(out, "data: ");
    dsv4_openai_error_body(out, http_status, message, NULL, NULL);
    dsv4_strbuf_str(out, "\n\ndata: [DONE]\n\n");
}
