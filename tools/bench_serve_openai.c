/*
 * bench_serve_openai.c - the OpenAI-compatible HTTP client of `dsv4 bench
 * serve` (dsv4_bench_openai in tools/bench_serve.h): POST
 * {base}/v1/chat/completions (or /v1/completions) with one user message,
 * non-streaming or as server-sent events, and GET {base}/v1/models.
 *
 * The request is the published harness's (spec/formats.md §3.1): {model,
 * messages: [{role: user, content}], max_tokens, temperature}, nothing else
 * unless asked (stream + stream_options.include_usage, ignore_eos).  A
 * request counts as good only as the published harness keeps it: HTTP 200,
 * finish_reason "stop" or "length", usage.completion_tokens > 0.  Tokens
 * are always the server's own usage count (streams ask for it with
 * include_usage), never a count of chunks: a chunk may carry several
 * tokens, or none.
 *
 * An output event is a streamed chunk whose first choice carries text:
 * delta.content, delta.reasoning_content / reasoning, delta.tool_calls
 * (chat) or text (completions); the role-only first chunk and the final
 * finish / usage chunks are not.  TTFT and inter-token latency are timed on
 * these events.
 *
 * Invariants: a response body is capped (64 MiB, a stream's events at
 * DSV4_BENCH_SSE_MAX each) and every JSON field is type-checked before use;
 * a stream must end with "data: [DONE]" after a finish_reason.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BODY_CAP  (64u << 20)
#define RAW_KEEP  (64u << 10) /* bytes of a stream kept for an error message */
#define AUTH_SIZE 600

struct conn {
    const struct dsv4_bench_client_cfg *cfg;
    struct dsv4_bench_http *http;
    char gen_path[1100], models_path[1100];
    char headers[AUTH_SIZE + 64];
};

static int oa_open(const struct dsv4_bench_client_cfg *cfg, void **out)
{
    *out = NULL;
    struct dsv4_bench_url u;
    int rc = dsv4_bench_url_parse(cfg->url, &u);
    if (rc)
        return rc;
    /* the base may be given with or without the API's /v1 */
    size_t n = strlen(u.path);
    if (n >= 3 && !strcmp(u.path + n - 3, "/v1"))
        u.path[n - 3] = 0;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    c->cfg = cfg;
    snprintf(c->gen_path, sizeof(c->gen_path), "%s/v1/%s", u.path,
             cfg->chat ? "chat/completions" : "completions");
    snprintf(c->models_path, sizeof(c->models_path), "%s/v1/models", u.path);
    if (cfg->api_key && *cfg->api_key) {
        if (strlen(cfg->api_key) >= AUTH_SIZE - 32 || strpbrk(cfg->api_key, "\r\n")) {
            free(c);
            return dsv4_error(DSV4_EINVAL, "bad API key (too long or with a line break)");
        }
        snprintf(c->headers, sizeof(c->headers), "Authorization: Bearer %s\r\n", cfg->api_key);
    }
    if ((rc = dsv4_bench_http_new(u.host, u.port, &c->http))) {
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

static void oa_close(void *conn)
{
    struct conn *c = conn;
    if (!c)
        return;
    dsv4_bench_http_free(c->http);
    free(c);
}

/* The request body, or NULL when out of memory. */
static char *request_body(const struct dsv4_bench_client_cfg *cfg, const char *prompt)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddStringToObject(root, "model", cfg->model ? cfg->model : "");
    if (cfg->chat) {
        cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
        cJSON *m = cJSON_CreateObject();
        if (msgs && m) {
            cJSON_AddItemToArray(msgs, m);
            cJSON_AddStringToObject(m, "role", "user");
            cJSON_AddStringToObject(m, "content", prompt);
        } else {
            cJSON_Delete(m);
        }
    } else {
        cJSON_AddStringToObject(root, "prompt", prompt);
    }
    cJSON_AddNumberToObject(root, "max_tokens", cfg->max_tokens);
    cJSON_AddNumberToObject(root, "temperature", cfg->temperature);
    if (cfg->stream) {
        cJSON_AddTrueToObject(root, "stream");
        cJSON *so = cJSON_AddObjectToObject(root, "stream_options");
        if (so)
            cJSON_AddTrueToObject(so, "include_usage");
    }
    if (cfg->ignore_eos)
        cJSON_AddTrueToObject(root, "ignore_eos");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

struct gen_ctx {
    const struct dsv4_bench_client_cfg *cfg;
    struct dsv4_bench_outcome *out;
    dsv4_bench_event_fn ev;
    void *ev_ctx;
    struct dsv4_strbuf body; /* whole body (non-stream) or its first RAW_KEEP bytes */
    struct dsv4_bench_sse sse;
    bool done, finished, usage, failed; /* failed: an event already set out->err */
};

static void set_err(struct dsv4_bench_outcome *o, enum dsv4_bench_err e, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void set_err(struct dsv4_bench_outcome *o, enum dsv4_bench_err e, const char *fmt, ...)
{
    if (o->err != DSV4_BENCH_OK)
        return; /* keep the first cause */
    o->err = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->msg, sizeof(o->msg), fmt, ap);
    va_end(ap);
}

/* "message" of an OpenAI error object {"error": {"message": ...}} or {"error": "..."}. */
static const char *error_message(const cJSON *root)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsString(e))
        return e->valuestring;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (cJSON_IsString(m))
        return m->valuestring;
    return e ? "(error without a message)" : NULL;
}

static void take_finish(struct gen_ctx *g, const cJSON *choice)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(choice, "finish_reason");
    if (cJSON_IsString(f)) {
        snprintf(g->out->finish, sizeof(g->out->finish), "%s", f->valuestring);
        g->finished = true;
    }
}

static void take_usage(struct gen_ctx *g, const cJSON *root)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    if (cJSON_IsNumber(ct) && ct->valuedouble >= 0 && ct->valuedouble < 1e15) {
        g->out->completion_tokens = (int64_t)ct->valuedouble;
        g->usage = true;
    }
    if (cJSON_IsNumber(pt) && pt->valuedouble >= 0 && pt->valuedouble < 1e15)
        g->out->prompt_tokens = (int64_t)pt->valuedouble;
}

static bool nonempty_str(const cJSON *j)
{
    return cJSON_IsString(j) && j->valuestring[0];
}

/* Whether a chunk's choice carries output. */
static bool carries_output(const cJSON *choice)
{
    if (nonempty_str(cJSON_GetObjectItemCaseSensitive(choice, "text")))
        return true;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(choice, "delta");
    if (!cJSON_IsObject(d))
        return false;
    if (nonempty_str(cJSON_GetObjectItemCaseSensitive(d, "content")) ||
        nonempty_str(cJSON_GetObjectItemCaseSensitive(d, "reasoning_content")) ||
        nonempty_str(cJSON_GetObjectItemCaseSensitive(d, "reasoning")))
        return true;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(d, "tool_calls");
    return cJSON_IsArray(tc) && cJSON_GetArraySize(tc) > 0;
}

static int on_event(void *ctx, const char *data, size_t n)
{
    struct gen_ctx *g = ctx;
    double t = dsv4_now();
    if (g->failed)
        return 0;
    if (g->done) {
        set_err(g->out, DSV4_BENCH_EPROTOCOL, "event after data: [DONE]");
        g->failed = true;
        return 0;
    }
    if (n == 6 && !memcmp(data, "[DONE]", 6)) {
        g->done = true;
        return 0;
    }
    cJSON *root = cJSON_ParseWithLength(data, n);
    if (!cJSON_IsObject(root)) {
        set_err(g->out, DSV4_BENCH_EAPI, "stream event is not a JSON object: %.60s", data);
        g->failed = true;
        cJSON_Delete(root);
        return 0;
    }
    const char *em = error_message(root);
    if (em) {
        set_err(g->out, DSV4_BENCH_EAPI, "error event: %.150s", em);
        g->failed = true;
        cJSON_Delete(root);
        return 0;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (cJSON_IsObject(c0)) {
        if (carries_output(c0)) {
            g->out->events++;
            if (g->ev)
                g->ev(g->ev_ctx, t);
        }
        take_finish(g, c0);
    }
    take_usage(g, root);
    cJSON_Delete(root);
    return 0;
}

static int on_body(void *ctx, const char *data, size_t n)
{
    struct gen_ctx *g = ctx;
    if (g->cfg->stream) {
        if (g->body.len < RAW_KEEP)
            dsv4_strbuf_put(&g->body, data, DSV4_MIN(n, RAW_KEEP - g->body.len));
        return dsv4_bench_sse_feed(&g->sse, data, n, on_event, g);
    }
    if (g->body.len + n > BODY_CAP)
        return dsv4_error(DSV4_ERANGE, "response body over %u MiB", BODY_CAP >> 20);
    dsv4_strbuf_put(&g->body, data, n);
    return g->body.oom ? dsv4_error(DSV4_ENOMEM, "out of memory") : 0;
}

static void finish_plain(struct gen_ctx *g)
{
    cJSON *root = cJSON_ParseWithLength(g->body.p ? g->body.p : "", g->body.len);
    if (!cJSON_IsObject(root)) {
        set_err(g->out, DSV4_BENCH_EAPI, "response is not a JSON object: %.60s",
                g->body.p ? g->body.p : "");
        cJSON_Delete(root);
        return;
    }
    const char *em = error_message(root);
    if (em)
        set_err(g->out, DSV4_BENCH_EAPI, "error: %.150s", em);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (cJSON_IsObject(c0))
        take_finish(g, c0);
    take_usage(g, root);
    cJSON_Delete(root);
}

/* An HTTP error's message: the error object's, else the body's start. */
static void http_error(struct gen_ctx *g, int status)
{
    cJSON *root = cJSON_ParseWithLength(g->body.p ? g->body.p : "", g->body.len);
    const char *em = root ? error_message(root) : NULL;
    set_err(g->out, DSV4_BENCH_EHTTP, "HTTP %d: %.150s", status,
            em ? em : (g->body.p ? g->body.p : ""));
    cJSON_Delete(root);
}

static int oa_generate(void *conn, const char *prompt, dsv4_bench_event_fn ev, void *ev_ctx,
                       struct dsv4_bench_outcome *out)
{
    struct conn *c = conn;
    memset(out, 0, sizeof(*out));
    out->prompt_tokens = out->completion_tokens = -1;
    char *body = request_body(c->cfg, prompt);
    if (!body)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    struct gen_ctx g = {.cfg = c->cfg, .out = out, .ev = ev, .ev_ctx = ev_ctx};
    dsv4_strbuf_init(&g.body);
    dsv4_bench_sse_init(&g.sse);
    struct dsv4_bench_http_req rq = {.method = "POST",
                                     .path = c->gen_path,
                                     .headers = c->headers,
                                     .body = body,
                                     .body_len = strlen(body),
                                     .deadline = dsv4_now() + c->cfg->timeout_s};
    enum dsv4_bench_err err;
    int status = 0;
    int rc = dsv4_bench_http_do(c->http, &rq, on_body, &g, &status, &err);
    free(body);
    out->http_status = status;
    if (rc == DSV4_ENOMEM && err == DSV4_BENCH_OK) {
        dsv4_strbuf_free(&g.body);
        dsv4_bench_sse_free(&g.sse);
        return rc;
    }
    if (rc) {
        set_err(out, err == DSV4_BENCH_OK ? DSV4_BENCH_EIO : err, "%s", dsv4_errmsg());
    } else if (status != 200) {
        http_error(&g, status);
    } else if (c->cfg->stream) {
        if (!g.failed && !g.done)
            set_err(out, DSV4_BENCH_EPROTOCOL, "stream ended without data: [DONE]");
    } else {
        finish_plain(&g);
    }
    if (out->err == DSV4_BENCH_OK) {
        if (!g.finished)
            set_err(out, DSV4_BENCH_EAPI, "no finish_reason");
        else if (!g.usage)
            set_err(out, DSV4_BENCH_EAPI, "no usage.completion_tokens%s",
                    c->cfg->stream ? " (stream_options.include_usage)" : "");
        else if (strcmp(out->finish, "stop") && strcmp(out->finish, "length"))
            set_err(out, DSV4_BENCH_EFINISH, "finish_reason '%s'", out->finish);
        else if (out->completion_tokens <= 0)
            set_err(out, DSV4_BENCH_EFINISH, "no completion tokens");
    }
    dsv4_strbuf_free(&g.body);
    dsv4_bench_sse_free(&g.sse);
    return 0;
}

static int oa_model(void *conn, char *buf, size_t size)
{
    struct conn *c = conn;
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    struct dsv4_bench_http_req rq = {.method = "GET",
                                     .path = c->models_path,
                                     .headers = c->headers,
                                     .deadline = dsv4_now() + DSV4_MIN(c->cfg->timeout_s, 60.0)};
    struct gen_ctx g = {.cfg = c->cfg};
    struct dsv4_bench_client_cfg plain = *c->cfg;
    plain.stream = false;
    g.cfg = &plain;
    g.body = b;
    enum dsv4_bench_err err;
    int status = 0;
    int rc = dsv4_bench_http_do(c->http, &rq, on_body, &g, &status, &err);
    if (rc) {
        rc = dsv4_error_ctx(rc, "GET %s", c->models_path);
    } else if (status != 200) {
        rc = dsv4_error(DSV4_EIO, "GET %s: HTTP %d", c->models_path, status);
    } else {
        cJSON *root = cJSON_ParseWithLength(g.body.p ? g.body.p : "", g.body.len);
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data, 0), "id");
        if (cJSON_IsArray(data) && cJSON_IsString(id) && id->valuestring[0])
            snprintf(buf, size, "%s", id->valuestring);
        else
            rc = dsv4_error(DSV4_EFORMAT, "GET %s: no data[0].id in the model list",
                            c->models_path);
        cJSON_Delete(root);
    }
    dsv4_strbuf_free(&g.body);
    return rc;
}

const struct dsv4_bench_client dsv4_bench_openai = {
        .name = "openai-http",
        .open = oa_open,
        .generate = oa_generate,
        .model = oa_model,
        .close = oa_close,
};
