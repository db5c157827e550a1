/*
 * grpc_engine.c - the methods of rpc/grpc_engine.h: dsv4.Engine and
 * grpc.health.v1.Health over the service op table.
 *
 * Generate is the only method that outlives its serve call: it submits the
 * request with an async handle of the call as the event context (see
 * rpc/grpc_call.h), and the service's event callback encodes each event
 * into a GenerateResponse on the service's thread and posts it; the
 * terminal event posts the finish, after which the handle is never touched
 * again.  If the call ends first (client cancel, deadline, slow reader,
 * stop) the cancel hook cancels the request in the service; its remaining
 * events are then dropped by the transport.
 *
 * Health Watch polls the service's state every 50 ms from the server's
 * thread and sends each change.  Everything else answers at once on the
 * server's thread (Drain only starts the drain: the service finishes it).
 *
 * Invariant: every serve path either finishes its call, hands it to an
 * async handle or a poll function, or returns a code for the transport to
 * finish it with; nothing is left hanging.
 */
#include "rpc/grpc_engine.h"

#include "base/dsv4.h"
#include "proto/dsv4.pb-c.h"
#include "proto/health.pb-c.h"
#include "rpc/grpc_wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_SERVICE     "dsv4.Engine"
#define MAX_DEPTH          32  /* nesting of messages on the wire */
#define MAX_REQUEST_ID     256 /* bytes of a client's request id */
#define WATCH_INTERVAL_S   0.05
#define SMALL_PACK         4096 /* responses up to this size are packed on the stack */
#define HEALTH_SERVING     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define HEALTH_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define HEALTH_UNKNOWN     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

int dsv4_grpc_engine_code(int status, bool in_event, bool retryable)
{
    switch (status) {
    case DSV4_OK:
        return DSV4_GRPC_OK;
    case DSV4_EINVAL:
    case DSV4_EFORMAT:
        return DSV4_GRPC_INVALID_ARGUMENT;
    case DSV4_ERANGE:
        return in_event ? DSV4_GRPC_DEADLINE_EXCEEDED : DSV4_GRPC_OUT_OF_RANGE;
    case DSV4_ENOSPC:
    case DSV4_ENOMEM:
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    case DSV4_ENOTSUP:
        return DSV4_GRPC_UNAVAILABLE;
    case DSV4_ENOENT:
        return DSV4_GRPC_NOT_FOUND;
    default:
        return retryable ? DSV4_GRPC_UNAVAILABLE : DSV4_GRPC_INTERNAL;
    }
}

/* ---- decoding: the wire walk that checks strings, then protobuf-c */

static int bad(const char *fmt, const char *what)
{
    dsv4_error(DSV4_EINVAL, fmt, what);
    return DSV4_GRPC_INVALID_ARGUMENT;
}

static bool varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *i < n; shift += 7) {
        uint8_t b = p[(*i)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/*
 * Walks the fields of a message of descriptor d: each string field (at any depth) must be
 * well-formed UTF-8 without NUL.  Fields unknown to d are skipped (proto3); malformed wire
 * bytes fail here already.  Returns 0 or INVALID_ARGUMENT.
 */
static int check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, int depth)
{
    size_t i = 0;
    if (depth > MAX_DEPTH)
        return bad("%s: messages nested too deeply", d->name);
    while (i < n) {
        uint64_t key, v;
        if (!varint(p, n, &i, &key) || key >> 3 == 0 || key >> 3 > 0x1fffffff)
            return bad("%s: malformed protobuf (field key)", d->name);
        uint32_t field = (uint32_t)(key >> 3);
        switch (key & 7) {
        case 0:
            if (!varint(p, n, &i, &v))
                return bad("%s: malformed protobuf (varint)", d->name);
            break;
        case 1:
            if (n - i < 8)
                return bad("%s: malformed protobuf (fixed64)", d->name);
            i += 8;
            break;
        case 5:
            if (n - i < 4)
                return bad("%s: malformed protobuf (fixed32)", d->name);
            i += 4;
            break;
        case 2: {
            if (!varint(p, n, &i, &v) || v > n - i)
                return bad("%s: malformed protobuf (length)", d->name);
            const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, field);
            if (f && f->type == PROTOBUF_C_TYPE_STRING &&
                !dsv4_grpc_utf8_ok((const char *)p + i, (size_t)v)) {
                dsv4_error(DSV4_EINVAL, "%s.%s: not valid UTF-8 (or contains NUL)", d->name,
                           f->name);
                return DSV4_GRPC_INVALID_ARGUMENT;
            }
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                int code = check_strings(f->descriptor, p + i, (size_t)v, depth + 1);
                if (code)
                    return code;
            }
            i += (size_t)v;
            break;
        }
        default:
            return bad("%s: malformed protobuf (wire type)", d->name);
        }
    }
    return 0;
}

/* The unpacked message, or NULL with INVALID_ARGUMENT in *code (RESOURCE_EXHAUSTED when out
 * of memory: protobuf-c does not tell the two apart, so the walk decides). */
static ProtobufCMessage *decode(const ProtobufCMessageDescriptor *d, const uint8_t *msg, size_t len,
                                int *code)
{
    *code = check_strings(d, msg, len, 0);
    if (*code)
        return NULL;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, msg);
    if (!m) {
        dsv4_error(DSV4_EINVAL, "%s: malformed protobuf", d->name);
        *code = DSV4_GRPC_INVALID_ARGUMENT;
    }
    return m;
}

/* Packs m and sends it on c (server's thread). */
static void reply(struct dsv4_grpc_call *c, const ProtobufCMessage *m)
{
    uint8_t small[SMALL_PACK];
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = n <= sizeof(small) ? small : malloc(n);
    if (!buf) {
        dsv4_grpc_call_finish(c, DSV4_GRPC_RESOURCE_EXHAUSTED, true, "out of memory");
        return;
    }
    protobuf_c_message_pack(m, buf);
    dsv4_grpc_call_send(c, buf, n);
    if (buf != small)
        free(buf);
    dsv4_grpc_call_finish(c, DSV4_GRPC_OK, false, NULL);
}

/* ---- Generate */

/* A decoded GenerateRequest as a service request (pointers into pb and the arrays). */
struct gen_req {
    Dsv4__GenerateRequest *pb;
    struct dsv4_svc_request req;
    int32_t *ids, *stop_ids;
};

static void gen_req_free(struct gen_req *g)
{
    if (g->pb)
        dsv4__generate_request__free_unpacked(g->pb, NULL);
    free(g->ids);
    free(g->stop_ids);
    memset(g, 0, sizeof(*g));
}

/* uint32 ids from the wire as int32 (ids past INT32_MAX are no token). */
static int32_t *ids_of(const uint32_t *v, size_t n, const char *what, int *code)
{
    int32_t *ids = malloc(sizeof(*ids) * (n ? n : 1));
    *code = 0;
    if (!ids) {
        dsv4_error(DSV4_ENOMEM, "out of memory");
        *code = DSV4_GRPC_RESOURCE_EXHAUSTED;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] > INT32_MAX) {
            dsv4_error(DSV4_EINVAL, "%s[%zu] = %u is no token id", what, i, v[i]);
            *code = DSV4_GRPC_INVALID_ARGUMENT;
            free(ids);
            return NULL;
        }
        ids[i] = (int32_t)v[i];
    }
    return ids;
}

static int sampling(const Dsv4__SamplingParams *s, int32_t default_max, struct gen_req *g)
{
    struct dsv4_svc_request *r = &g->req;
    int code;
    r->sample = dsv4_sample_params_default();
    r->max_tokens = default_max;
    r->skip_special = true;
    if (!s)
        return 0;
    if (s->temperature_opt_case == DSV4__SAMPLING_PARAMS__TEMPERATURE_OPT_TEMPERATURE)
        r->sample.temperature = s->temperature;
    if (s->top_p_opt_case == DSV4__SAMPLING_PARAMS__TOP_P_OPT_TOP_P)
        r->sample.top_p = s->top_p;
    if (s->repetition_penalty_opt_case ==
        DSV4__SAMPLING_PARAMS__REPETITION_PENALTY_OPT_REPETITION_PENALTY)
        r->sample.repetition_penalty = s->repetition_penalty;
    r->sample.top_k = s->top_k;
    r->sample.min_p = s->min_p;
    r->sample.frequency_penalty = s->frequency_penalty;
    r->sample.presence_penalty = s->presence_penalty;
    if (s->seed_opt_case == DSV4__SAMPLING_PARAMS__SEED_OPT_SEED) {
        r->sample.seed = s->seed;
        r->seed_given = true;
    }
    if (s->max_new_tokens_opt_case == DSV4__SAMPLING_PARAMS__MAX_NEW_TOKENS_OPT_MAX_NEW_TOKENS) {
        if (s->max_new_tokens < 1 || s->max_new_tokens > INT32_MAX) {
            dsv4_error(DSV4_EINVAL, "sampling_params.max_new_tokens = %u: 1 or more expected",
                       s->max_new_tokens);
            return DSV4_GRPC_INVALID_ARGUMENT;
        }
        r->max_tokens = (int32_t)s->max_new_tokens;
    }
    if (s->n_stop > DSV4_SVC_MAX_STOP) {
        dsv4_error(DSV4_EINVAL, "%zu stop strings: at most %d", s->n_stop, DSV4_SVC_MAX_STOP);
        return DSV4_GRPC_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < s->n_stop; i++) {
        if (!s->stop[i][0])
            return bad("%s: an empty stop string", "sampling_params.stop");
        r->stop[i] = s->stop[i];
    }
    r->n_stop = (int)s->n_stop;
    if (s->n_stop_token_ids) {
        g->stop_ids = ids_of(s->stop_token_ids, s->n_stop_token_ids,
                             "sampling_params.stop_token_ids", &code);
        if (!g->stop_ids)
            return code;
        r->stop_ids = g->stop_ids;
        r->n_stop_ids = s->n_stop_token_ids;
    }
    r->ignore_eos = s->ignore_eos;
    if (s->skip_special_tokens_opt_case ==
        DSV4__SAMPLING_PARAMS__SKIP_SPECIAL_TOKENS_OPT_SKIP_SPECIAL_TOKENS)
        r->skip_special = s->skip_special_tokens;
    return 0;
}

/* Decodes and checks a GenerateRequest into g (freed by gen_req_free, also on failure). */
static int gen_decode(const uint8_t *msg, size_t len, int32_t default_max, struct gen_req *g)
{
    int code;
    memset(g, 0, sizeof(*g));
    g->pb = (Dsv4__GenerateRequest *)decode(&dsv4__generate_request__descriptor, msg, len, &code);
    if (!g->pb)
        return code;
    const Dsv4__GenerateRequest *q = g->pb;
    struct dsv4_svc_request *r = &g->req;
    if (strlen(q->request_id) > MAX_REQUEST_ID) {
        dsv4_error(DSV4_EINVAL, "request_id of %zu bytes: at most %d", strlen(q->request_id),
                   MAX_REQUEST_ID);
        return DSV4_GRPC_INVALID_ARGUMENT;
    }
    r->client_id = q->request_id[0] ? q->request_id : NULL;
    if (q->prompt_case == DSV4__GENERATE_REQUEST__PROMPT_TEXT && q->text[0]) {
        r->text = q->text;
        r->text_len = strlen(q->text);
    } else if (q->prompt_case == DSV4__GENERATE_REQUEST__PROMPT_TOKENIZED &&
               q->tokenized->n_input_ids) {
        g->ids = ids_of(q->tokenized->input_ids, q->tokenized->n_input_ids, "tokenized.input_ids",
                        &code);
        if (!g->ids)
            return code;
        r->ids = g->ids;
        r->n_ids = q->tokenized->n_input_ids;
    } else {
        return bad("%s: empty prompt (set text or tokenized.input_ids)", "GenerateRequest");
    }
    code = sampling(q->sampling_params, default_max, g);
    if (code)
        return code;
    if (q->top_logprobs_num < 0 || q->top_logprobs_num > DSV4_SAMPLE_MAX_TOP_LOGPROBS) {
        dsv4_error(DSV4_EINVAL, "top_logprobs_num = %d: 0..%d expected", q->top_logprobs_num,
                   DSV4_SAMPLE_MAX_TOP_LOGPROBS);
        return DSV4_GRPC_INVALID_ARGUMENT;
    }
    r->sample.logprobs = q->return_logprob || q->top_logprobs_num > 0;
    r->sample.n_top_logprobs = q->top_logprobs_num;
    r->priority = q->priority > 0;
    if (dsv4_sample_params_check(&r->sample))
        return DSV4_GRPC_INVALID_ARGUMENT;
    return 0;
}

static int gen_check(const uint8_t *msg, size_t len)
{
    struct gen_req g;
    int code = gen_decode(msg, len, 256, &g);
    gen_req_free(&g);
    return code;
}

/* The state of a running Generate: the user memory of its async handle.  Written on the
 * server's thread before submit (and id/submitted right after, read only there); the event
 * callback reads the rest and owns last_id and broken. */
struct gen {
    struct dsv4_grpc_async *a;
    struct dsv4_svc *svc;
    uint64_t id;
    bool submitted;
    char request_id[MAX_REQUEST_ID + 1];
    int32_t last_id;
    bool broken; /* a response could not be encoded (out of memory) */
};

static void gen_cancel(void *user)
{
    struct gen *g = user;
    if (g->submitted)
        g->svc->ops->cancel(g->svc, g->id);
}

/* Packs and posts one response (service's thread); false when out of memory. */
static bool gen_post(struct gen *g, const Dsv4__GenerateResponse *m)
{
    uint8_t small[SMALL_PACK];
    size_t n = dsv4__generate_response__get_packed_size(m);
    uint8_t *buf = n <= sizeof(small) ? small : malloc(n);
    if (!buf)
        return false;
    dsv4__generate_response__pack(m, buf);
    dsv4_grpc_async_send(g->a, buf, n);
    if (buf != small)
        free(buf);
    return true;
}

static uint32_t u32(int64_t v)
{
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* A chunk of TOKENS; returns false when out of memory. */
static bool gen_tokens(struct gen *g, const struct dsv4_svc_event *ev)
{
    Dsv4__GenerateResponse resp = DSV4__GENERATE_RESPONSE__INIT;
    Dsv4__GenerateStreamChunk chunk = DSV4__GENERATE_STREAM_CHUNK__INIT;
    Dsv4__OutputLogProbs lp = DSV4__OUTPUT_LOG_PROBS__INIT;
    size_t n = ev->n_ids;
    uint32_t *ids = malloc(sizeof(*ids) * (n ? n : 1));
    Dsv4__TopLogProbs *tops = NULL, **topp = NULL;
    uint32_t *top_ids = NULL;
    float *top_vals = NULL;
    char *text = NULL;
    bool ok = false;

    if (!ids)
        goto done;
    for (size_t i = 0; i < n; i++)
        ids[i] = (uint32_t)ev->ids[i];
    if (n)
        g->last_id = ev->ids[n - 1];
    resp.request_id = g->request_id;
    resp.response_case = DSV4__GENERATE_RESPONSE__RESPONSE_CHUNK;
    resp.chunk = &chunk;
    chunk.n_token_ids = n;
    chunk.token_ids = ids;
    chunk.prompt_tokens = u32(ev->prompt_tokens);
    chunk.completion_tokens = u32(ev->completion_tokens);
    /* The service never splits a character; a text that is no proto3 string anyway (NUL,
     * a bug upstream) is repaired rather than sent broken. */
    if (ev->text_len && dsv4_grpc_utf8_ok(ev->text, ev->text_len)) {
        text = malloc(ev->text_len + 1);
        if (!text)
            goto done;
        memcpy(text, ev->text, ev->text_len);
        text[ev->text_len] = 0;
    } else if (ev->text_len) {
        size_t k;
        text = dsv4_grpc_utf8_sanitize(ev->text, ev->text_len, &k);
        if (!text)
            goto done;
    }
    chunk.text = text ? text : (char *)"";
    if (ev->logprobs) {
        int nt = ev->n_top > 0 && ev->top_ids && ev->top_logprobs ? ev->n_top : 0;
        if (nt > DSV4_SAMPLE_MAX_TOP_LOGPROBS)
            nt = DSV4_SAMPLE_MAX_TOP_LOGPROBS;
        chunk.output_logprobs = &lp;
        lp.n_token_logprobs = n;
        lp.token_logprobs = (float *)ev->logprobs;
        lp.n_token_ids = n;
        lp.token_ids = ids;
        if (nt > 0 && n > 0) {
            tops = calloc(n, sizeof(*tops));
            topp = calloc(n, sizeof(*topp));
            top_ids = calloc(n * (size_t)nt, sizeof(*top_ids));
            top_vals = calloc(n * (size_t)nt, sizeof(*top_vals));
            if (!tops || !topp || !top_ids || !top_vals)
                goto done;
            for (size_t i = 0; i < n; i++) {
                dsv4__top_log_probs__init(&tops[i]);
                topp[i] = &tops[i];
                for (int k = 0; k < nt; k++) {
                    size_t src = i * DSV4_SAMPLE_MAX_TOP_LOGPROBS + (size_t)k;
                    top_ids[i * nt + k] = (uint32_t)ev->top_ids[src];
                    top_vals[i * nt + k] = ev->top_logprobs[src];
                }
                tops[i].n_values = tops[i].n_token_ids = (size_t)nt;
                tops[i].values = top_vals + i * nt;
                tops[i].token_ids = top_ids + i * nt;
            }
            lp.n_top_logprobs = n;
            lp.top_logprobs = topp;
        }
    }
    ok = gen_post(g, &resp);
done:
    free(ids);
    free(text);
    free(tops);
    free(topp);
    free(top_ids);
    free(top_vals);
    return ok;
}

static void gen_finish(struct gen *g, const struct dsv4_svc_event *ev)
{
    static const char *reasons[] = {"stop", "length", "abort"};
    Dsv4__GenerateResponse resp = DSV4__GENERATE_RESPONSE__INIT;
    Dsv4__GenerateComplete done = DSV4__GENERATE_COMPLETE__INIT;
    Dsv4__Usage usage = DSV4__USAGE__INIT;
    char *stop = NULL;

    resp.request_id = g->request_id;
    resp.response_case = DSV4__GENERATE_RESPONSE__RESPONSE_COMPLETE;
    resp.complete = &done;
    done.finish_reason =
            (char *)((unsigned)ev->finish < DSV4_ARRAY_LEN(reasons) ? reasons[ev->finish] : "stop");
    usage.prompt_tokens = u32(ev->prompt_tokens);
    usage.completion_tokens = u32(ev->completion_tokens);
    done.usage = &usage;
    if (ev->finish == DSV4_SVC_FINISH_STOP && ev->stop_string) {
        size_t k;
        stop = dsv4_grpc_utf8_sanitize(ev->stop_string, strlen(ev->stop_string), &k);
        if (stop) {
            done.matched_stop_case = DSV4__GENERATE_COMPLETE__MATCHED_STOP_MATCHED_STOP_STR;
            done.matched_stop_str = stop;
        }
    } else if (ev->finish == DSV4_SVC_FINISH_STOP && ev->completion_tokens > 0) {
        done.matched_stop_case = DSV4__GENERATE_COMPLETE__MATCHED_STOP_MATCHED_TOKEN_ID;
        done.matched_token_id = (uint32_t)g->last_id;
    }
    bool ok = gen_post(g, &resp);
    free(stop);
    if (ok)
        dsv4_grpc_async_finish(g->a, DSV4_GRPC_OK, false, NULL);
    else
        dsv4_grpc_async_finish(g->a, DSV4_GRPC_RESOURCE_EXHAUSTED, true,
                               "out of memory encoding the response");
}

/* The service's event callback (its thread).  The handle is finished exactly once, at the
 * terminal event: after an encoding failure the stream is already broken, so the rest of
 * the output is skipped and the finish reports the failure. */
static void gen_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct gen *g = ctx;
    (void)id;
    if (g->broken && ev->kind != DSV4_SVC_EV_TOKENS) {
        dsv4_grpc_async_finish(g->a, DSV4_GRPC_RESOURCE_EXHAUSTED, true,
                               "out of memory encoding the response");
        return;
    }
    switch (ev->kind) {
    case DSV4_SVC_EV_TOKENS:
        if (!g->broken && !gen_tokens(g, ev))
            g->broken = true;
        break;
    case DSV4_SVC_EV_FINISH:
        gen_finish(g, ev);
        break;
    case DSV4_SVC_EV_ERROR:
    default:
        dsv4_grpc_async_finish(g->a, dsv4_grpc_engine_code(ev->status, true, ev->retryable),
                               ev->retryable, ev->message ? ev->message : "request failed");
        break;
    }
}

static int gen_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    struct gen_req q;
    int code = gen_decode(msg, len, dsv4_grpc_call_opts(c)->default_max_tokens, &q);
    if (code) {
        gen_req_free(&q);
        return code;
    }
    q.req.timeout_s = dsv4_grpc_call_time_left(c);
    struct dsv4_grpc_async *a = dsv4_grpc_call_async(c, sizeof(struct gen), gen_cancel);
    if (!a) {
        gen_req_free(&q);
        dsv4_error(DSV4_ENOMEM, "out of memory");
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    }
    struct gen *g = dsv4_grpc_async_user(a);
    g->a = a;
    g->svc = svc;
    snprintf(g->request_id, sizeof(g->request_id), "%s", q.pb->request_id);
    int rc = svc->ops->submit(svc, &q.req, gen_event, g, &g->id);
    gen_req_free(&q);
    if (rc) {
        bool retry = rc == DSV4_ENOSPC || rc == DSV4_ENOTSUP;
        dsv4_grpc_async_finish(a, dsv4_grpc_engine_code(rc, false, retry), retry, dsv4_errmsg());
        return 0;
    }
    g->submitted = true;
    return 0;
}

/* ---- Abort */

static int abort_check(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__abort_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

static int abort_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code;
    Dsv4__AbortRequest *q =
            (Dsv4__AbortRequest *)decode(&dsv4__abort_request__descriptor, msg, len, &code);
    if (!q)
        return code;
    if (!q->request_id[0]) {
        protobuf_c_message_free_unpacked(&q->base, NULL);
        return bad("%s: empty request_id", "AbortRequest");
    }
    Dsv4__AbortResponse r = DSV4__ABORT_RESPONSE__INIT;
    char text[512];
    int rc = svc->ops->abort_client_id(svc, q->request_id);
    r.success = rc == 0;
    if (rc)
        snprintf(text, sizeof(text), "%s", dsv4_errmsg());
    else
        snprintf(text, sizeof(text), "aborted");
    size_t k;
    char *clean = dsv4_grpc_utf8_sanitize(text, strlen(text), &k);
    r.message = clean ? clean : (char *)"";
    reply(c, &r.base);
    free(clean);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    return 0;
}

/* ---- information */

static int empty_check_model(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__get_model_info_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

static int empty_check_server(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__get_server_info_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

static int empty_check_loads(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__get_loads_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

/* A copy of a C string that is a valid proto3 string (malloc'ed; "" stays static). */
static char *pstr(const char *s, char **keep)
{
    size_t k;
    *keep = dsv4_grpc_utf8_sanitize(s, strnlen(s, 4096), &k);
    return *keep ? *keep : (char *)"";
}

static int model_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code = empty_check_model(msg, len);
    if (code)
        return code;
    struct dsv4_svc_model_info mi;
    memset(&mi, 0, sizeof(mi));
    svc->ops->model_info(svc, &mi);
    mi.model_id[sizeof(mi.model_id) - 1] = 0;
    mi.model_path[sizeof(mi.model_path) - 1] = 0;
    mi.architecture[sizeof(mi.architecture) - 1] = 0;
    Dsv4__GetModelInfoResponse r = DSV4__GET_MODEL_INFO_RESPONSE__INIT;
    char *k1, *k2, *k3;
    int32_t eos = mi.eos_token_id;
    char *arch;
    r.served_model_name = pstr(mi.model_id, &k1);
    r.model_path = pstr(mi.model_path, &k2);
    arch = pstr(mi.architecture, &k3);
    r.max_context_length = mi.max_context;
    r.vocab_size = mi.vocab_size;
    r.n_eos_token_ids = 1;
    r.eos_token_ids = &eos;
    r.bos_token_id = mi.bos_token_id;
    r.n_architectures = arch[0] ? 1 : 0;
    r.architectures = &arch;
    r.mtp_depth = mi.mtp_depth;
    r.is_generation = true;
    reply(c, &r.base);
    free(k1);
    free(k2);
    free(k3);
    return 0;
}

static int server_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code = empty_check_server(msg, len);
    if (code)
        return code;
    char why[256] = "";
    enum dsv4_svc_state st = svc->ops->state(svc, why, sizeof(why));
    struct dsv4_svc_loads ld;
    memset(&ld, 0, sizeof(ld));
    svc->ops->loads(svc, &ld);
    Dsv4__GetServerInfoResponse r = DSV4__GET_SERVER_INFO_RESPONSE__INIT;
    char *k1, *k2, *k3;
    r.version = pstr(dsv4_version(), &k1);
    r.features = pstr(dsv4_features(), &k2);
    r.server_type = (char *)"grpc";
    r.state = (char *)dsv4_svc_state_name(st);
    why[sizeof(why) - 1] = 0;
    r.state_reason = pstr(why, &k3);
    r.uptime_seconds = dsv4_grpc_call_uptime(c);
    r.active_requests = ld.running;
    r.queued_requests = ld.queued;
    r.max_running_requests = ld.max_seqs;
    r.max_message_bytes = (uint32_t)DSV4_MIN(dsv4_grpc_call_opts(c)->max_message, UINT32_MAX);
    reply(c, &r.base);
    free(k1);
    free(k2);
    free(k3);
    return 0;
}

static int loads_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code = empty_check_loads(msg, len);
    if (code)
        return code;
    struct dsv4_svc_loads ld;
    memset(&ld, 0, sizeof(ld));
    svc->ops->loads(svc, &ld);
    Dsv4__GetLoadsResponse r = DSV4__GET_LOADS_RESPONSE__INIT;
    r.num_running_reqs = ld.running;
    r.num_waiting_reqs = ld.queued;
    r.max_running_requests = ld.max_seqs;
    r.free_blocks = ld.free_blocks;
    r.total_blocks = ld.total_blocks;
    r.token_usage = ld.total_blocks > 0 ? 1.0 - (double)ld.free_blocks / ld.total_blocks : 0;
    r.gen_throughput = isfinite(ld.tokens_per_s) ? ld.tokens_per_s : 0;
    r.workers = ld.workers;
    r.workers_ready = ld.workers_ready;
    reply(c, &r.base);
    return 0;
}

/* ---- tokenizer */

static int tok_check(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__tokenize_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

static int tok_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code;
    Dsv4__TokenizeRequest *q =
            (Dsv4__TokenizeRequest *)decode(&dsv4__tokenize_request__descriptor, msg, len, &code);
    if (!q)
        return code;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = svc->ops->tokenize(svc, q->text, strlen(q->text), &ids, &n);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    if (rc)
        return dsv4_grpc_engine_code(rc, false, false);
    Dsv4__TokenizeResponse r = DSV4__TOKENIZE_RESPONSE__INIT;
    /* int32 and uint32 have one size: the ids are sent as they are (all >= 0) */
    r.n_token_ids = n;
    r.token_ids = (uint32_t *)ids;
    r.count = u32((int64_t)n);
    reply(c, &r.base);
    free(ids);
    return 0;
}

/* Decodes a DetokenizeRequest and its ids (freed by the caller, also on failure). */
static int detok_decode(const uint8_t *msg, size_t len, Dsv4__DetokenizeRequest **q, int32_t **ids)
{
    int code;
    *ids = NULL;
    *q = (Dsv4__DetokenizeRequest *)decode(&dsv4__detokenize_request__descriptor, msg, len, &code);
    if (!*q)
        return code;
    *ids = ids_of((*q)->token_ids, (*q)->n_token_ids, "token_ids", &code);
    return code;
}

static int detok_check(const uint8_t *msg, size_t len)
{
    Dsv4__DetokenizeRequest *q;
    int32_t *ids;
    int code = detok_decode(msg, len, &q, &ids);
    if (q)
        protobuf_c_message_free_unpacked(&q->base, NULL);
    free(ids);
    return code;
}

static int detok_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    Dsv4__DetokenizeRequest *q;
    int32_t *ids;
    char *text = NULL, *clean = NULL;
    size_t tlen = 0, k;
    int code = detok_decode(msg, len, &q, &ids);
    if (!code) {
        int rc = svc->ops->detokenize(svc, ids, q->n_token_ids, q->skip_special_tokens, &text,
                                      &tlen);
        code = rc ? dsv4_grpc_engine_code(rc, false, false) : 0;
    }
    if (!code) {
        clean = dsv4_grpc_utf8_sanitize(text, tlen, &k);
        if (!clean) {
            dsv4_error(DSV4_ENOMEM, "out of memory");
            code = DSV4_GRPC_RESOURCE_EXHAUSTED;
        }
    }
    if (!code) {
        Dsv4__DetokenizeResponse r = DSV4__DETOKENIZE_RESPONSE__INIT;
        r.text = clean;
        reply(c, &r.base);
    }
    if (q)
        protobuf_c_message_free_unpacked(&q->base, NULL);
    free(ids);
    free(text);
    free(clean);
    return code;
}

/* ---- Drain */

static int drain_check(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m = decode(&dsv4__drain_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

/* The drain itself runs in the service; the answer is the state it left, so a client sees
 * "draining" (or "stopped" when nothing was running yet) without a second call. */
static int drain_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    int code = drain_check(msg, len);
    if (code)
        return code;
    if (!svc->ops->drain) {
        dsv4_error(DSV4_ENOTSUP, "this server cannot be drained by a client");
        return DSV4_GRPC_UNIMPLEMENTED;
    }
    svc->ops->drain(svc);
    Dsv4__DrainResponse r = DSV4__DRAIN_RESPONSE__INIT;
    r.state = (char *)dsv4_svc_state_name(svc->ops->state(svc, NULL, 0));
    reply(c, &r.base);
    return 0;
}

/* ---- grpc.health.v1 */

enum { SVC_LIVE = 1, SVC_ENGINE = 2, SVC_UNKNOWN = 3 };

static int health_kind(const char *name)
{
    if (!name[0])
        return SVC_LIVE;
    if (!strcmp(name, ENGINE_SERVICE))
        return SVC_ENGINE;
    return SVC_UNKNOWN;
}

static int health_status(struct dsv4_grpc_call *c, int kind)
{
    struct dsv4_svc *svc = dsv4_grpc_call_svc(c);
    if (kind == SVC_UNKNOWN)
        return HEALTH_UNKNOWN;
    if (dsv4_grpc_call_stopping(c))
        return HEALTH_NOT_SERVING;
    if (kind == SVC_LIVE)
        return HEALTH_SERVING;
    return svc->ops->state(svc, NULL, 0) == DSV4_SVC_READY ? HEALTH_SERVING : HEALTH_NOT_SERVING;
}

static int health_check(const uint8_t *msg, size_t len)
{
    int code;
    ProtobufCMessage *m =
            decode(&grpc__health__v1__health_check_request__descriptor, msg, len, &code);
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return code;
}

static int health_kind_of(const uint8_t *msg, size_t len, int *kind)
{
    int code;
    Grpc__Health__V1__HealthCheckRequest *q = (Grpc__Health__V1__HealthCheckRequest *)decode(
            &grpc__health__v1__health_check_request__descriptor, msg, len, &code);
    if (!q)
        return code;
    *kind = health_kind(q->service);
    if (*kind == SVC_UNKNOWN)
        dsv4_error(DSV4_ENOENT, "unknown service '%.200s'", q->service);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    return 0;
}

static void health_send(struct dsv4_grpc_call *c, int status, bool finish)
{
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    uint8_t buf[16];
    r.status = status;
    size_t n = grpc__health__v1__health_check_response__pack(&r, buf);
    dsv4_grpc_call_send(c, buf, n);
    if (finish)
        dsv4_grpc_call_finish(c, DSV4_GRPC_OK, false, NULL);
}

static int hcheck_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    int kind = 0;
    int code = health_kind_of(msg, len, &kind);
    if (code)
        return code;
    if (kind == SVC_UNKNOWN)
        return DSV4_GRPC_NOT_FOUND;
    health_send(c, health_status(c, kind), true);
    return 0;
}

struct watch {
    int kind;
    int last; /* last status sent, -1 before the first */
};

static void watch_poll(struct dsv4_grpc_call *c, void *state)
{
    struct watch *w = state;
    int st = health_status(c, w->kind);
    if (st != w->last)
        health_send(c, st, false);
    w->last = st;
    if (dsv4_grpc_call_stopping(c))
        dsv4_grpc_call_finish(c, DSV4_GRPC_UNAVAILABLE, true, "server stopping");
}

static int hwatch_serve(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len)
{
    int kind = 0;
    int code = health_kind_of(msg, len, &kind);
    if (code)
        return code;
    struct watch *w = dsv4_grpc_call_poll(c, WATCH_INTERVAL_S, sizeof(*w), watch_poll);
    if (!w) {
        dsv4_error(DSV4_ENOMEM, "out of memory");
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    }
    w->kind = kind;
    w->last = -1;
    return 0;
}

/* ---- the table */

static const struct dsv4_grpc_method methods[] = {
        {"/dsv4.Engine/Generate", false, gen_check, gen_serve},
        {"/dsv4.Engine/Abort", false, abort_check, abort_serve},
        {"/dsv4.Engine/GetModelInfo", false, empty_check_model, model_serve},
        {"/dsv4.Engine/GetServerInfo", false, empty_check_server, server_serve},
        {"/dsv4.Engine/GetLoads", false, empty_check_loads, loads_serve},
        {"/dsv4.Engine/Tokenize", false, tok_check, tok_serve},
        {"/dsv4.Engine/Detokenize", false, detok_check, detok_serve},
        {"/dsv4.Engine/Drain", false, drain_check, drain_serve},
        {"/grpc.health.v1.Health/Check", true, health_check, hcheck_serve},
        {"/grpc.health.v1.Health/Watch", true, health_check, hwatch_serve},
};

const struct dsv4_grpc_method *dsv4_grpc_engine_method(const char *path, size_t len)
{
    for (size_t i = 0; i < DSV4_ARRAY_LEN(methods); i++)
        if (strlen(methods[i].path) == len && !memcmp(methods[i].path, path, len))
            return &methods[i];
    return NULL;
}

const struct dsv4_grpc_method *dsv4_grpc_engine_methods(size_t *n)
{
    *n = DSV4_ARRAY_LEN(methods);
    return methods;
}
