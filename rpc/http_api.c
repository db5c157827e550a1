/*
 * http_api.c - the routes of the HTTP front end (rpc/http.h): probes,
 * /metrics and /v1/models answered on the connection loop, and the OpenAI
 * calls, run by a small pool of workers.
 *
 * Why workers: parsing a 16 MiB body, rendering a long conversation and
 * tokenizing it take milliseconds to seconds; on the loop they would delay
 * every probe.  The loop hands a complete request to the job queue; a
 * worker parses it, submits it to the service, and later turns the
 * service's events into response bytes.
 *
 * A call's life: the loop creates it (dispatch) and queues it; a worker
 * runs its start (parse, render, tokenize, submit).  The service's event
 * callback copies each event into the call's list (it must not block) and
 * queues the call unless it is already queued or running; `scheduled`
 * keeps one worker on a call at a time, so events are handled in order.
 * The terminal event ends the call: the connection is detached first (so
 * the loop cannot take the next request of the connection while the call
 * still points at it), then the last bytes are written and the call freed.
 * The terminal event's copy is preallocated with the call: an allocation
 * failure can lose a token event (the call then fails with a 500 and is
 * cancelled) but never the end.
 *
 * The connection going away (the loop closes it) cancels the call in the
 * service; output written after that is dropped by the connection.
 */
#include "rpc/http_int.h"
#include "rpc/openai_int.h"

#include "base/dsv4.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct ev_node {
    struct ev_node *next;
    struct dsv4_svc_event ev; /* its pointers point into this node */
};

struct term_node {
    struct ev_node node;
    char message[512];
    char stop_string[DSV4_OPENAI_MAX_STOP_LEN + 1];
};

struct http_call {
    struct dsv4_http *h;
    struct dsv4_http_conn *c;
    struct http_request rq; /* owns the body */
    enum dsv4_openai_kind kind;
    struct http_call *job_next;
    /* under mu */
    pthread_mutex_t mu;
    struct ev_node *ev_head, *ev_tail;
    bool scheduled, submitted, abandoned, lost;
    uint64_t id;
    struct term_node *term;
    /* the worker's */
    bool started, stream_begun, failed;
    struct dsv4_openai_req *req;
    struct dsv4_openai_resp *resp;
    char resp_id[64];
    double t_first, t_last;
};

/* ------------------------------------------------------------ routes */

bool dsv4_http_api_route(const char *method, const char *path, enum http_route *route, bool *head,
                         int *status, const char **allow)
{
    static const struct {
        const char *path;
        enum http_route route;
        bool post;
    } routes[] = {
            {"/health", HTTP_R_HEALTH, false},
            {"/ready", HTTP_R_READY, false},
            {"/metrics", HTTP_R_METRICS, false},
            {"/v1/models", HTTP_R_MODELS, false},
            {"/v1/completions", HTTP_R_COMPLETIONS, true},
            {"/v1/chat/completions", HTTP_R_CHAT, true},
    };
    *head = !strcmp(method, "HEAD");
    for (size_t i = 0; i < DSV4_ARRAY_LEN(routes); i++) {
        if (strcmp(path, routes[i].path))
            continue;
        bool ok = routes[i].post ? !strcmp(method, "POST") : (!strcmp(method, "GET") || *head);
        if (!ok) {
            *status = 405;
            *allow = routes[i].post ? "POST" : "GET, HEAD";
            return false;
        }
        *route = routes[i].route;
        return true;
    }
    *status = 404;
    *allow = NULL;
    return false;
}

bool dsv4_http_api_needs_key(const struct dsv4_http *h, enum http_route route)
{
    switch (route) {
    case HTTP_R_HEALTH:
    case HTTP_R_READY:
    case HTTP_R_METRICS:
        return h->o.probes_need_key;
    default:
        return true;
    }
}

static void served_model(struct dsv4_http *h, char *buf, size_t size, int64_t *max_context)
{
    struct dsv4_svc_model_info info;
    h->svc->ops->model_info(h->svc, &info);
    info.model_id[sizeof(info.model_id) - 1] = 0;
    snprintf(buf, size, "%s", h->o.model_name ? h->o.model_name : info.model_id);
    if (max_context)
        *max_context = info.max_context;
}

static void json_response(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                          cJSON *root)
{
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) {
        dsv4_http_respond_error(c, rq, 500, "out of memory", NULL, NULL);
        return;
    }
    dsv4_http_respond(c, rq, status, "application/json", s, strlen(s),
                      status == 503 ? "Retry-After: 1\r\n" : NULL);
    free(s);
}

static void route_health(struct dsv4_http *h, struct dsv4_http_conn *c,
                         const struct http_request *rq)
{
    enum dsv4_svc_state st = h->svc->ops->state(h->svc, NULL, 0);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", "ok");
    cJSON_AddStringToObject(root, "state", dsv4_svc_state_name(st));
    json_response(c, rq, 200, root);
}

static void route_ready(struct dsv4_http *h, struct dsv4_http_conn *c,
                        const struct http_request *rq)
{
    char why[256] = "";
    enum dsv4_svc_state st = h->svc->ops->state(h->svc, why, sizeof(why));
    why[sizeof(why) - 1] = 0;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", dsv4_svc_state_name(st));
    if (st != DSV4_SVC_READY) {
        char *clean = dsv4_openai_utf8_clean(why, strlen(why));
        cJSON_AddStringToObject(root, "reason", clean ? clean : "");
        free(clean);
    }
    json_response(c, rq, st == DSV4_SVC_READY ? 200 : 503, root);
}

static void route_metrics(struct dsv4_http *h, struct dsv4_http_conn *c,
                          const struct http_request *rq)
{
    char *text = NULL;
    size_t len = 0;
    if (h->m) {
        struct dsv4_svc_loads l;
        h->svc->ops->loads(h->svc, &l);
        dsv4_metrics_set_loads(h->m, &l);
        dsv4_metrics_set_state(h->m, h->svc->ops->state(h->svc, NULL, 0));
        if (dsv4_metrics_format(h->m, &text, &len)) {
            dsv4_http_respond_error(c, rq, 500, dsv4_errmsg(), NULL, NULL);
            return;
        }
    }
    dsv4_http_respond(c, rq, 200, DSV4_METRICS_CONTENT_TYPE, text ? text : "", len, NULL);
    free(text);
}

static void route_models(struct dsv4_http *h, struct dsv4_http_conn *c,
                         const struct http_request *rq)
{
    char name[256];
    int64_t max_context = 0;
    served_model(h, name, sizeof(name), &max_context);
    struct dsv4_strbuf b = {0};
    dsv4_openai_models_body(&b, name, (int64_t)time(NULL), max_context);
    dsv4_http_respond(c, rq, 200, "application/json", b.p ? b.p : "", b.len, NULL);
    dsv4_strbuf_free(&b);
}

/* ------------------------------------------------------------ the job queue */

static void enqueue(struct dsv4_http *h, struct http_call *call)
{
    pthread_mutex_lock(&h->mu);
    call->job_next = NULL;
    if (h->jobs_tail)
        h->jobs_tail->job_next = call;
    else
        h->jobs_head = call;
    h->jobs_tail = call;
    pthread_cond_signal(&h->job_cv);
    pthread_mutex_unlock(&h->mu);
}

static void call_free(struct http_call *call)
{
    struct dsv4_http *h = call->h;
    while (call->ev_head) {
        struct ev_node *n = call->ev_head;
        call->ev_head = n->next;
        if (n != &call->term->node)
            free(n);
    }
    dsv4_openai_resp_free(call->resp);
    dsv4_openai_req_free(call->req);
    free(call->rq.body);
    free(call->term);
    pthread_mutex_destroy(&call->mu);
    dsv4_http_conn_unref(call->c);
    free(call);
    pthread_mutex_lock(&h->mu);
    if (--h->n_calls == 0)
        pthread_cond_broadcast(&h->idle_cv);
    pthread_mutex_unlock(&h->mu);
}

/* The connection lets go of the call; what the call writes next is its last response. */
static void detach(struct http_call *call)
{
    pthread_mutex_lock(&call->c->mu);
    if (call->c->call == call)
        call->c->call = NULL;
    pthread_mutex_unlock(&call->c->mu);
}

void dsv4_http_api_dispatch(struct dsv4_http *h, struct dsv4_http_conn *c, struct http_request *rq)
{
    switch (rq->route) {
    case HTTP_R_HEALTH:
        route_health(h, c, rq);
        return;
    case HTTP_R_READY:
        route_ready(h, c, rq);
        return;
    case HTTP_R_METRICS:
        route_metrics(h, c, rq);
        return;
    case HTTP_R_MODELS:
        route_models(h, c, rq);
        return;
    case HTTP_R_COMPLETIONS:
    case HTTP_R_CHAT:
        break;
    default:
        dsv4_http_respond_error(c, rq, 404, "no such route", NULL, "not_found");
        return;
    }
    struct http_call *call = calloc(1, sizeof(*call));
    struct term_node *term = call ? calloc(1, sizeof(*term)) : NULL;
    if (!term) {
        free(call);
        dsv4_http_respond_error(c, rq, 500, "out of memory", NULL, NULL);
        return;
    }
    call->h = h;
    call->c = c;
    call->rq = *rq;
    rq->body = NULL; /* the call owns it now */
    call->kind = rq->route == HTTP_R_CHAT ? DSV4_OPENAI_CHAT : DSV4_OPENAI_COMPLETION;
    call->term = term;
    call->scheduled = true;
    pthread_mutex_init(&call->mu, NULL);
    uint64_t n = atomic_fetch_add(&h->id_next, 1);
    snprintf(call->resp_id, sizeof(call->resp_id), "%s-%016" PRIx64 "%08" PRIx64,
             call->kind == DSV4_OPENAI_CHAT ? "chatcmpl" : "cmpl", h->id_base, n & 0xffffffffu);
    dsv4_http_conn_ref(c);
    pthread_mutex_lock(&c->mu);
    c->call = call;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&h->mu);
    h->n_calls++;
    pthread_mutex_unlock(&h->mu);
    enqueue(h, call);
}

bool dsv4_http_api_abandon(struct http_call *call, uint64_t *id)
{
    pthread_mutex_lock(&call->mu);
    call->abandoned = true;
    bool cancel = call->submitted;
    *id = call->id;
    pthread_mutex_unlock(&call->mu);
    return cancel;
}

/* ------------------------------------------------------------ service events */

/* A copy of a TOKENS event in one allocation, or NULL. */
static struct ev_node *copy_tokens(const struct dsv4_svc_event *ev)
{
    size_t n = ev->n_ids;
    bool lp = ev->logprobs != NULL;
    bool top = lp && ev->top_ids && ev->top_logprobs && ev->n_top > 0;
    size_t ntop = top ? n * DSV4_SAMPLE_MAX_TOP_LOGPROBS : 0;
    size_t size = sizeof(struct ev_node) + n * sizeof(int32_t) + (lp ? n * sizeof(float) : 0) +
                  ntop * (sizeof(int32_t) + sizeof(float)) + ev->text_len + 1;
    struct ev_node *node = malloc(size);
    if (!node)
        return NULL;
    char *p = (char *)(node + 1);
    node->next = NULL;
    node->ev = *ev;
    node->ev.stop_string = NULL;
    node->ev.message = NULL;
    /* floats and int32s first (alignment), text last */
    if (lp) {
        memcpy(p, ev->logprobs, n * sizeof(float));
        node->ev.logprobs = (const float *)p;
        p += n * sizeof(float);
    }
    if (top) {
        memcpy(p, ev->top_logprobs, ntop * sizeof(float));
        node->ev.top_logprobs = (const float *)p;
        p += ntop * sizeof(float);
        memcpy(p, ev->top_ids, ntop * sizeof(int32_t));
        node->ev.top_ids = (const int32_t *)p;
        p += ntop * sizeof(int32_t);
    } else {
        node->ev.top_ids = NULL;
        node->ev.top_logprobs = NULL;
        node->ev.n_top = 0;
    }
    memcpy(p, ev->ids, n * sizeof(int32_t));
    node->ev.ids = (const int32_t *)p;
    p += n * sizeof(int32_t);
    if (ev->text_len)
        memcpy(p, ev->text, ev->text_len);
    p[ev->text_len] = 0;
    node->ev.text = p;
    return node;
}

static void on_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct http_call *call = ctx;
    (void)id;
    struct ev_node *node = NULL;
    if (ev->kind == DSV4_SVC_EV_TOKENS) {
        node = copy_tokens(ev);
    } else {
        struct term_node *t = call->term;
        node = &t->node;
        node->next = NULL;
        node->ev = *ev;
        node->ev.ids = NULL;
        node->ev.n_ids = 0;
        node->ev.text = NULL;
        node->ev.text_len = 0;
        node->ev.logprobs = NULL;
        node->ev.top_ids = NULL;
        node->ev.top_logprobs = NULL;
        snprintf(t->message, sizeof(t->message), "%s", ev->message ? ev->message : "");
        node->ev.message = t->message;
        if (ev->stop_string) {
            snprintf(t->stop_string, sizeof(t->stop_string), "%s", ev->stop_string);
            node->ev.stop_string = t->stop_string;
        }
    }
    pthread_mutex_lock(&call->mu);
    if (node) {
        if (call->ev_tail)
            call->ev_tail->next = node;
        else
            call->ev_head = node;
        call->ev_tail = node;
    } else {
        call->lost = true;
    }
    bool queue = !call->scheduled;
    call->scheduled = true;
    pthread_mutex_unlock(&call->mu);
    if (queue)
        enqueue(call->h, call);
}

static int token_text(void *ctx, int32_t id, char **text, size_t *len)
{
    struct dsv4_http *h = ctx;
    return h->svc->ops->detokenize(h->svc, &id, 1, false, text, len);
}

/* ------------------------------------------------------------ the worker side */

/* Fails the call after a successful submit: the error goes out now, the service is told
 * to stop, and the remaining events are only counted. */
static void fail_call(struct http_call *call, int status, const char *message)
{
    struct dsv4_http *h = call->h;
    if (call->failed)
        return;
    call->failed = true;
    dsv4_log(DSV4_LOG_WARN, "http: %s: %s", call->resp_id, message);
    pthread_mutex_lock(&call->mu);
    uint64_t id = call->id;
    pthread_mutex_unlock(&call->mu);
    h->svc->ops->cancel(h->svc, id);
    if (call->stream_begun) {
        struct dsv4_strbuf b = {0};
        dsv4_openai_resp_stream_error(call->resp, status, message, &b);
        dsv4_http_stream_data(call->c, b.p ? b.p : "", b.len);
        dsv4_strbuf_free(&b);
        dsv4_http_stream_end(call->c);
    } else {
        dsv4_http_respond_error(call->c, &call->rq, status, message, NULL, NULL);
    }
}

/* Runs a request up to its submission; false when it ended here (answered). */
static bool start_call(struct http_call *call)
{
    struct dsv4_http *h = call->h;
    struct dsv4_svc *svc = h->svc;
    char model[256];
    int64_t max_context = 0;
    pthread_mutex_lock(&call->mu);
    bool abandoned = call->abandoned;
    pthread_mutex_unlock(&call->mu);
    if (abandoned)
        return false;
    served_model(h, model, sizeof(model), &max_context);
    /* No name yet (the model is still loading): any name passes, the service decides. */
    struct dsv4_openai_cfg cfg = {.model = model[0] ? model : NULL,
                                  .default_thinking = h->o.default_thinking};
    struct dsv4_openai_error err;
    if (dsv4_openai_parse(call->kind, call->rq.body, call->rq.body_len, &cfg, &call->req, &err)) {
        detach(call);
        dsv4_http_respond_error(call->c, &call->rq, err.status, err.message, err.param, err.code);
        return false;
    }
    free(call->rq.body);
    call->rq.body = NULL;
    struct dsv4_openai_req *rq = call->req;
    int32_t *ids = rq->ids, *own = NULL;
    size_t n_ids = rq->n_ids;
    int rc = 0;
    /* A text prompt goes to the service as text (it tokenizes), unless the default
     * max_tokens (the rest of the context) needs its length: then it is tokenized here
     * and the ids are submitted, so that it is tokenized once. */
    if (!ids && rq->max_tokens == 0) {
        rc = svc->ops->tokenize(svc, rq->prompt, rq->prompt_len, &own, &n_ids);
        ids = own;
    }
    int status = 0;
    char msg[512] = "";
    const char *code = NULL;
    if (rc) {
        status = dsv4_openai_status(rc, false);
        snprintf(msg, sizeof(msg), "tokenizing the prompt: %s", dsv4_errmsg());
    }
    int64_t max_tokens = rq->max_tokens;
    if (!status && max_tokens == 0) {
        max_tokens = max_context - (int64_t)n_ids;
        if (max_tokens < 1) {
            status = 400;
            code = "context_length_exceeded";
            snprintf(msg, sizeof(msg),
                     "the prompt of %zu tokens leaves no room in the context of %lld tokens", n_ids,
                     (long long)max_context);
        }
        max_tokens = DSV4_MIN(max_tokens, (int64_t)INT32_MAX);
    }
    if (!status && (rc = dsv4_openai_resp_new(rq, call->resp_id, model, (int64_t)time(NULL),
                                              token_text, h, &call->resp))) {
        status = 500;
        snprintf(msg, sizeof(msg), "%s", dsv4_errmsg());
    }
    uint64_t id = 0;
    if (!status) {
        struct dsv4_svc_request sr = {0};
        if (ids) {
            sr.ids = ids;
            sr.n_ids = n_ids;
        } else {
            sr.text = rq->prompt;
            sr.text_len = rq->prompt_len;
        }
        sr.max_tokens = (int32_t)max_tokens;
        sr.sample = rq->sample;
        sr.seed_given = rq->seed_given;
        for (int i = 0; i < rq->n_stop; i++)
            sr.stop[i] = rq->stop[i];
        sr.n_stop = rq->n_stop;
        sr.stop_ids = rq->stop_ids;
        sr.n_stop_ids = rq->n_stop_ids;
        sr.ignore_eos = rq->ignore_eos;
        sr.skip_special = rq->skip_special;
        sr.priority = rq->priority;
        sr.timeout_s = h->o.request_timeout_s;
        sr.client_id = call->rq.request_id[0] ? call->rq.request_id : call->resp_id;
        rc = svc->ops->submit(svc, &sr, on_event, call, &id);
        if (rc) {
            status = dsv4_openai_status(rc, rc == DSV4_ENOSPC);
            snprintf(msg, sizeof(msg), "%s", dsv4_errmsg());
            if (rc == DSV4_ERANGE)
                code = "context_length_exceeded";
        }
    }
    free(own);
    if (status) {
        detach(call);
        if (!code)
            code = status == 429 ? "queue_full" : status == 503 ? "not_ready" : NULL;
        dsv4_http_respond_error(call->c, &call->rq, status, msg, NULL, code);
        return false;
    }
    pthread_mutex_lock(&call->mu);
    call->submitted = true;
    call->id = id;
    abandoned = call->abandoned;
    pthread_mutex_unlock(&call->mu);
    if (abandoned) {
        svc->ops->cancel(svc, id);
        call->failed = true; /* nobody to answer: the remaining events are only counted */
        return true;
    }
    if (rq->stream) {
        struct dsv4_strbuf b = {0};
        dsv4_http_stream_begin(call->c, &call->rq, 200, "text/event-stream");
        call->stream_begun = true;
        if (dsv4_openai_resp_begin(call->resp, &b))
            fail_call(call, 500, dsv4_errmsg());
        else
            dsv4_http_stream_data(call->c, b.p ? b.p : "", b.len);
        dsv4_strbuf_free(&b);
    }
    return true;
}

static enum dsv4_metrics_outcome outcome_of(enum dsv4_svc_finish f)
{
    switch (f) {
    case DSV4_SVC_FINISH_STOP:
        return DSV4_METRICS_STOP;
    case DSV4_SVC_FINISH_LENGTH:
        return DSV4_METRICS_LENGTH;
    default:
        return DSV4_METRICS_ABORT;
    }
}

/* One event; true when it ended the call. */
static bool handle_event(struct http_call *call, const struct dsv4_svc_event *ev)
{
    struct dsv4_http *h = call->h;
    double now = dsv4_now();
    struct dsv4_strbuf b = {0};
    if (ev->kind == DSV4_SVC_EV_TOKENS) {
        if (ev->n_ids > 0) {
            if (call->t_first == 0)
                dsv4_metrics_ttft(h->m, now - call->rq.t_arrive);
            else
                dsv4_metrics_itl(h->m, now - call->t_last);
            if (call->t_first == 0)
                call->t_first = now;
            call->t_last = now;
        }
        if (call->failed)
            return false;
        if (dsv4_openai_resp_tokens(call->resp, ev, &b))
            fail_call(call, 500, dsv4_errmsg());
        else if (call->stream_begun)
            dsv4_http_stream_data(call->c, b.p ? b.p : "", b.len);
        dsv4_strbuf_free(&b);
        return false;
    }
    enum dsv4_metrics_outcome outcome =
            ev->kind == DSV4_SVC_EV_FINISH ? outcome_of(ev->finish) : DSV4_METRICS_ERROR;
    dsv4_metrics_request_done(h->m, outcome, now - call->rq.t_arrive, ev->prompt_tokens,
                              ev->completion_tokens);
    detach(call);
    if (call->failed)
        return true;
    if (ev->kind == DSV4_SVC_EV_FINISH) {
        if (dsv4_openai_resp_finish(call->resp, ev, &b)) {
            dsv4_strbuf_free(&b);
            fail_call(call, 500, dsv4_errmsg());
            return true;
        }
        if (call->stream_begun) {
            dsv4_http_stream_data(call->c, b.p ? b.p : "", b.len);
            dsv4_http_stream_end(call->c);
        } else {
            dsv4_http_respond(call->c, &call->rq, 200, "application/json", b.p ? b.p : "", b.len,
                              NULL);
        }
        dsv4_strbuf_free(&b);
        return true;
    }
    int status = dsv4_openai_status(ev->status, ev->retryable);
    const char *msg = ev->message && ev->message[0] ? ev->message : dsv4_strerror(ev->status);
    if (call->stream_begun) {
        dsv4_openai_resp_stream_error(call->resp, status, msg, &b);
        dsv4_http_stream_data(call->c, b.p ? b.p : "", b.len);
        dsv4_http_stream_end(call->c);
    } else {
        dsv4_http_respond_error(call->c, &call->rq, status, msg, NULL, NULL);
    }
    dsv4_strbuf_free(&b);
    return true;
}

/* A worker's turn on a call: its start, then its events until none are queued. */
static void run_call(struct http_call *call)
{
    if (!call->started) {
        call->started = true;
        if (!start_call(call)) {
            call_free(call);
            return;
        }
    }
    for (;;) {
        pthread_mutex_lock(&call->mu);
        struct ev_node *list = call->ev_head;
        bool lost = call->lost;
        call->ev_head = call->ev_tail = NULL;
        call->lost = false;
        if (!list && !lost)
            call->scheduled = false;
        pthread_mutex_unlock(&call->mu);
        if (!list && !lost)
            return;
        if (lost)
            fail_call(call, 500, "out of memory while queueing output");
        bool ended = false;
        while (list) {
            struct ev_node *n = list;
            list = n->next;
            if (!ended)
                ended = handle_event(call, &n->ev);
            if (n != &call->term->node)
                free(n);
        }
        if (ended) {
            call_free(call);
            return;
        }
    }
}

static void *worker_main(void *arg)
{
    struct dsv4_http *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        while (!h->jobs_head && !h->workers_quit)
            pthread_cond_wait(&h->job_cv, &h->mu);
        struct http_call *call = h->jobs_head;
        if (!call) {
            pthread_mutex_unlock(&h->mu);
            return NULL;
        }
        h->jobs_head = call->job_next;
        if (!h->jobs_head)
            h->jobs_tail = NULL;
        pthread_mutex_unlock(&h->mu);
        run_call(call);
    }
}

int dsv4_http_api_start(struct dsv4_http *h)
{
    uint64_t base = 0;
    if (getrandom(&base, sizeof(base), GRND_NONBLOCK) != (ssize_t)sizeof(base))
        base = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)h;
    h->id_base = base;
    atomic_init(&h->id_next, 1);
    h->workers = calloc((size_t)h->o.threads, sizeof(pthread_t));
    if (!h->workers)
        return dsv4_error(DSV4_ENOMEM, "http: out of memory");
    for (int i = 0; i < h->o.threads; i++) {
        if (pthread_create(&h->workers[i], NULL, worker_main, h)) {
            dsv4_http_api_stop(h, 0);
            return dsv4_error(DSV4_EIO, "http: cannot start worker %d", i);
        }
        h->n_workers++;
    }
    return 0;
}

bool dsv4_http_api_stop(struct dsv4_http *h, double wait_s)
{
    pthread_mutex_lock(&h->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double end = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + wait_s;
    while (h->n_calls > 0) {
        struct timespec dl = {.tv_sec = (time_t)end,
                              .tv_nsec = (long)((end - (double)(time_t)end) * 1e9)};
        if (pthread_cond_timedwait(&h->idle_cv, &h->mu, &dl))
            break;
    }
    bool idle = h->n_calls == 0;
    if (idle) {
        h->workers_quit = true;
        pthread_cond_broadcast(&h->job_cv);
    }
    pthread_mutex_unlock(&h->mu);
    if (!idle)
        return false;
    for (int i = 0; i < h->n_workers; i++)
        pthread_join(h->workers[i], NULL);
    h->n_workers = 0;
    return true;
}
