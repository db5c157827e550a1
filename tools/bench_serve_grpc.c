/*
 * bench_serve_grpc.c - the gRPC client of `dsv4 bench serve`
 * (dsv4_bench_grpc in tools/bench_serve.h): one Generate stream per request
 * to dsv4d's Engine service (--target HOST:PORT), GetModelInfo for the model
 * name, over the project's gRPC client (tools/grpc_client.h), one connection
 * per client thread.
 *
 * Why: the same sweep, prompts and definitions as over the OpenAI HTTP API,
 * so that one tool compares transports and servers.  The request is what
 * dsv4d's OpenAI endpoint makes of the harness's request: chat renders the
 * one user turn with the DeepSeek-V4 chat encoding here (engine/text/chat.h,
 * chat mode, as dsv4ctl chat and /v1/chat/completions without thinking do)
 * and sends it as text with skip_special_tokens false (as that endpoint
 * does), so the server tokenizes the same prompt; completions sends the raw
 * prompt text.  Then max_new_tokens, temperature (always sent: absent means
 * 1 in the proto) and ignore_eos when asked.  --model is not sent (the
 * Engine serves one model); it only names the run.
 *
 * Generate is a server stream whatever --stream says.  Streamed, an output
 * event is a chunk that carries token ids (TTFT and ITL are timed on them);
 * not streamed, no event is reported and only the end-to-end time counts, as
 * over HTTP.  Tokens are the GenerateComplete's usage, never a count of
 * chunks; a good request is one that completed with finish "stop" or
 * "length" and more than 0 completion tokens, as over HTTP.
 *
 * Errors by kind: no connection -> connect; DEADLINE_EXCEEDED (--timeout,
 * sent as grpc-timeout and enforced by the client) -> timeout; the
 * connection broke -> io; a message that does not decode, a message after
 * the Complete or a stream that ends OK without one -> protocol; any other
 * gRPC status -> api.  The message names the status ("UNAVAILABLE: ...").
 * A broken connection is dropped and the thread's next request connects
 * again; requests are never retried (the server may have run them).
 *
 * Invariants: every message is decoded by protobuf-c (bounded by the
 * client's max_message) before use; no request waits past --timeout from
 * its start, connecting included.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"
#include "engine/text/chat.h"
#include "proto/dsv4.pb-c.h"
#include "rpc/grpc_wire.h"
#include "tools/grpc_client.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GENERATE_PATH   "/dsv4.Engine/Generate"
#define MODEL_INFO_PATH "/dsv4.Engine/GetModelInfo"
#define CONNECT_MAX_S   10.0

struct conn {
    const struct dsv4_bench_client_cfg *cfg;
    struct dsv4_gc *gc; /* NULL before the first request and after a broken connection */
};

static int gr_open(const struct dsv4_bench_client_cfg *cfg, void **out)
{
    *out = NULL;
    int rc = dsv4_gc_target_check(cfg->target ? cfg->target : "");
    if (rc)
        return rc;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    c->cfg = cfg;
    *out = c;
    return 0;
}

static void gr_close(void *conn)
{
    struct conn *c = conn;
    if (!c)
        return;
    dsv4_gc_close(c->gc);
    free(c);
}

/* Connects when not connected, waiting until `deadline` at most (and CONNECT_MAX_S). */
static int connect_by(struct conn *c, double deadline)
{
    if (c->gc)
        return 0;
    double left = deadline - dsv4_now();
    if (left <= 0)
        return dsv4_error(DSV4_EIO, "%s: no time left to connect", c->cfg->target);
    struct dsv4_gc_opts o = {.target = c->cfg->target,
                             .api_key = c->cfg->api_key,
                             .connect_timeout_s = DSV4_MIN(left, CONNECT_MAX_S)};
    return dsv4_gc_connect(&o, &c->gc);
}

/* Drops the connection when it broke (the next request connects again); whether it had. */
static bool drop_if_broken(struct conn *c)
{
    if (!c->gc || dsv4_gc_run(c->gc, 0) != DSV4_EIO)
        return false;
    dsv4_gc_close(c->gc);
    c->gc = NULL;
    return true;
}

/* A message packed into a malloc'ed buffer, or NULL when out of memory. */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        protobuf_c_message_pack(m, buf);
    return buf;
}

/* The request of one prompt, packed; 0, DSV4_ENOMEM, or DSV4_EINVAL when the chat
 * encoding refuses the prompt. */
static int request(const struct dsv4_bench_client_cfg *cfg, const char *prompt, uint8_t **buf,
                   size_t *len)
{
    Dsv4__GenerateRequest q = DSV4__GENERATE_REQUEST__INIT;
    Dsv4__SamplingParams sp = DSV4__SAMPLING_PARAMS__INIT;
    char *text = NULL;
    *buf = NULL;
    if (cfg->chat) {
        cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();
        if (!msgs || !m || !cJSON_AddItemToArray(msgs, m)) {
            cJSON_Delete(msgs);
            cJSON_Delete(m);
            return dsv4_error(DSV4_ENOMEM, "out of memory");
        }
        if (!cJSON_AddStringToObject(m, "role", "user") ||
            !cJSON_AddStringToObject(m, "content", prompt)) {
            cJSON_Delete(msgs);
            return dsv4_error(DSV4_ENOMEM, "out of memory");
        }
        struct dsv4_chat_opts o = {.mode = DSV4_CHAT_MODE_CHAT};
        size_t n;
        int rc = dsv4_chat_encode(msgs, NULL, &o, &text, &n);
        cJSON_Delete(msgs);
        if (rc)
            return rc;
        sp.skip_special_tokens_opt_case =
                DSV4__SAMPLING_PARAMS__SKIP_SPECIAL_TOKENS_OPT_SKIP_SPECIAL_TOKENS;
        sp.skip_special_tokens = false;
    }
    q.prompt_case = DSV4__GENERATE_REQUEST__PROMPT_TEXT;
    q.text = text ? text : (char *)prompt;
    q.sampling_params = &sp;
    sp.max_new_tokens_opt_case = DSV4__SAMPLING_PARAMS__MAX_NEW_TOKENS_OPT_MAX_NEW_TOKENS;
    sp.max_new_tokens = (uint32_t)cfg->max_tokens;
    sp.temperature_opt_case = DSV4__SAMPLING_PARAMS__TEMPERATURE_OPT_TEMPERATURE;
    sp.temperature = (float)cfg->temperature;
    sp.ignore_eos = cfg->ignore_eos;
    *buf = pack(&q.base, len);
    free(text);
    return *buf ? 0 : dsv4_error(DSV4_ENOMEM, "out of memory");
}

struct gen_ctx {
    const struct dsv4_bench_client_cfg *cfg;
    struct dsv4_bench_outcome *out;
    dsv4_bench_event_fn ev;
    void *ev_ctx;
    bool complete, usage;
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

/* Each GenerateResponse; non-zero (after setting the error) cancels the call. */
static int on_message(void *arg, const uint8_t *msg, size_t len)
{
    struct gen_ctx *g = arg;
    double t = dsv4_now();
    Dsv4__GenerateResponse *m = dsv4__generate_response__unpack(NULL, len, msg);
    if (!m) {
        set_err(g->out, DSV4_BENCH_EPROTOCOL, "a GenerateResponse that does not decode (%zu bytes)",
                len);
        return 1;
    }
    int stop = 0;
    if (g->complete) {
        set_err(g->out, DSV4_BENCH_EPROTOCOL, "a GenerateResponse after the Complete");
        stop = 1;
    } else if (m->response_case == DSV4__GENERATE_RESPONSE__RESPONSE_CHUNK && m->chunk) {
        if (m->chunk->n_token_ids && g->cfg->stream) {
            g->out->events++;
            if (g->ev)
                g->ev(g->ev_ctx, t);
        }
    } else if (m->response_case == DSV4__GENERATE_RESPONSE__RESPONSE_COMPLETE && m->complete) {
        const Dsv4__GenerateComplete *d = m->complete;
        g->complete = true;
        snprintf(g->out->finish, sizeof(g->out->finish), "%s", d->finish_reason);
        if (d->usage) {
            g->usage = true;
            g->out->prompt_tokens = d->usage->prompt_tokens;
            g->out->completion_tokens = d->usage->completion_tokens;
        }
    } else {
        set_err(g->out, DSV4_BENCH_EPROTOCOL, "a GenerateResponse with neither chunk nor Complete");
        stop = 1;
    }
    dsv4__generate_response__free_unpacked(m, NULL);
    return stop;
}

static int gr_generate(void *conn, const char *prompt, dsv4_bench_event_fn ev, void *ev_ctx,
                       struct dsv4_bench_outcome *out)
{
    struct conn *c = conn;
    double deadline = dsv4_now() + c->cfg->timeout_s;
    memset(out, 0, sizeof(*out));
    out->prompt_tokens = out->completion_tokens = -1;
    out->grpc_status = -1;
    uint8_t *req;
    size_t len = 0;
    int rc = request(c->cfg, prompt, &req, &len);
    if (rc == DSV4_ENOMEM)
        return rc;
    if (rc) {
        set_err(out, DSV4_BENCH_EAPI, "chat encoding: %s", dsv4_errmsg());
        return 0;
    }
    if ((rc = connect_by(c, deadline))) {
        free(req);
        if (rc == DSV4_ENOMEM)
            return rc;
        set_err(out, DSV4_BENCH_ECONNECT, "%s", dsv4_errmsg());
        return 0;
    }
    struct gen_ctx g = {.cfg = c->cfg, .out = out, .ev = ev, .ev_ctx = ev_ctx};
    struct dsv4_gc_call_opts co = {.timeout_s = DSV4_MAX(deadline - dsv4_now(), 1e-3)};
    struct dsv4_gc_status st;
    rc = dsv4_gc_stream(c->gc, GENERATE_PATH, req, len, &co, on_message, &g, &st);
    free(req);
    if (rc == DSV4_ENOMEM)
        return rc;
    out->grpc_status = st.code;
    const char *code = dsv4_grpc_code_name(st.code);
    if (drop_if_broken(c) && st.code != DSV4_GRPC_OK)
        set_err(out, DSV4_BENCH_EIO, "%s: %s", code, st.message);
    else if (st.code == DSV4_GRPC_DEADLINE_EXCEEDED)
        set_err(out, DSV4_BENCH_ETIMEOUT, "%s: %s", code, st.message);
    else if (st.code != DSV4_GRPC_OK)
        set_err(out, DSV4_BENCH_EAPI, "%s: %s", code, st.message);
    else if (!g.complete)
        set_err(out, DSV4_BENCH_EPROTOCOL, "the stream ended OK without a GenerateComplete");
    else if (!g.usage)
        set_err(out, DSV4_BENCH_EAPI, "no usage in the GenerateComplete");
    else if (strcmp(out->finish, "stop") && strcmp(out->finish, "length"))
        set_err(out, DSV4_BENCH_EFINISH, "finish_reason '%s'", out->finish);
    else if (out->completion_tokens <= 0)
        set_err(out, DSV4_BENCH_EFINISH, "no completion tokens");
    return 0;
}

static int gr_model(void *conn, char *buf, size_t size)
{
    struct conn *c = conn;
    double deadline = dsv4_now() + DSV4_MIN(c->cfg->timeout_s, 60.0);
    int rc = connect_by(c, deadline);
    if (rc)
        return rc;
    Dsv4__GetModelInfoRequest q = DSV4__GET_MODEL_INFO_REQUEST__INIT;
    size_t len, rlen;
    uint8_t *req = pack(&q.base, &len), *resp = NULL;
    if (!req)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    struct dsv4_gc_call_opts co = {.timeout_s = DSV4_MAX(deadline - dsv4_now(), 1e-3)};
    struct dsv4_gc_status st;
    rc = dsv4_gc_unary(c->gc, MODEL_INFO_PATH, req, len, &co, &resp, &rlen, &st);
    free(req);
    drop_if_broken(c);
    if (rc)
        return dsv4_error_ctx(rc, "GetModelInfo");
    Dsv4__GetModelInfoResponse *r = dsv4__get_model_info_response__unpack(NULL, rlen, resp);
    free(resp);
    if (r && r->served_model_name[0])
        snprintf(buf, size, "%s", r->served_model_name);
    else
        rc = dsv4_error(DSV4_EFORMAT, "GetModelInfo: %s",
                        r ? "no served_model_name" : "the response does not decode");
    if (r)
        dsv4__get_model_info_response__free_unpacked(r, NULL);
    return rc;
}

const struct dsv4_bench_client dsv4_bench_grpc = {
        .name = "grpc",
        .open = gr_open,
        .generate = gr_generate,
        .model = gr_model,
        .close = gr_close,
};
