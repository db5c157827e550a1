/*
 * grpc.c - the gRPC server of rpc/grpc.h: sockets, the event loop, HTTP/2
 * (nghttp2, confined to this file), gRPC calls over HTTP/2 streams, and the
 * call interface of rpc/grpc_call.h that the methods (rpc/grpc_engine.c)
 * are written against.
 *
 * One thread runs everything that touches a connection: poll() over the
 * listening socket, an eventfd and every connection; nghttp2 sessions in
 * callback mode (bytes in through nghttp2_session_mem_recv, out through a
 * send callback writing the non-blocking socket, which answers WOULDBLOCK
 * when the kernel buffer is full).  Other threads (the service's event
 * callbacks) reach a call only through its async handle: they append to a
 * mutex-guarded queue and write the eventfd; the loop moves the queued
 * messages into the calls' output buffers.
 *
 * A call is one HTTP/2 stream: request headers (checked when they end:
 * POST, content-type application/grpc, a known :path, the API key,
 * grpc-timeout), then DATA read through a dsv4_grpc_reader, then, at the
 * client's END_STREAM, the method's serve.  Responses are HEADERS (:status
 * 200), DATA from the call's output buffer through a deferred data
 * provider, and trailers (grpc-status, percent-encoded grpc-message); a call
 * that fails before sending anything answers trailers-only.  HTTP/2 flow
 * control is nghttp2's: a stream's data is pulled from its buffer only as
 * the client's window allows, and a buffer that grows past
 * max_stream_buffer ends the call (RESOURCE_EXHAUSTED) and cancels its
 * request, so a slow reader costs bounded memory and never blocks the
 * engine.
 *
 * Hostile clients: besides the limits of rpc/grpc.h, a request header list
 * is capped (16 KiB: RESOURCE_EXHAUSTED; four times that in one block drops
 * the connection), request bytes buffered by all calls together are capped,
 * and a client that resets streams faster than twice max_streams a second
 * gets GOAWAY ENHANCE_YOUR_CALM (nghttp2 1.52 has no such guard itself).
 *
 * Lifetimes.  A call lives from the first HEADERS of its stream to
 * nghttp2's stream close (or its connection's close).  An async handle
 * lives from dsv4_grpc_call_async until the loop has processed its finish:
 * it outlives its call when the call ends first (then handle->call is NULL
 * and its posts are dropped), which is what lets a service callback keep
 * posting after a client went away.  Both links (call->async,
 * handle->call) are touched by the loop only.
 *
 * Invariants: every call ends with exactly one status; a call's async handle
 * is detached (and its cancel hook run) before the call is freed; the server
 * is freed only when no handle is live.
 */
#include "rpc/grpc.h"

#include "base/dsv4.h"
#include "rpc/grpc_call.h"
#include "rpc/grpc_engine.h"
#include "rpc/grpc_wire.h"

#include <nghttp2/nghttp2.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_LISTEN    "127.0.0.1:50051"
#define MAX_HEADER_BYTES  16384     /* request header list (names + values + 32 each) */
#define READ_CHUNK        16384     /* bytes per recv */
#define READS_PER_PASS    8         /* recv calls per connection per pass (fairness) */
#define STREAM_WINDOW     (1 << 20) /* our initial stream window */
#define CONN_WINDOW       (16 << 20)
#define STOP_FLUSH_S      2.0 /* after the drain: time to send the last trailers */
#define STOP_EVENTS_S     5.0 /* then: time for the service's last events */
#define MAX_TICK_S        1.0
#define MIN_REQ_BUFFER    (256u << 20) /* request bytes buffered by all calls together */
#define MAX_MESSAGE_CHARS 512

enum phase { RUN, DRAIN, CLOSE, WAIT, DONE };

/* A message (or the finish) posted by another thread for an async handle. */
struct qitem {
    struct qitem *next;
    struct dsv4_grpc_async *a;
    bool fin;
    size_t len;
    uint8_t *data; /* allocated with the item */
};

struct dsv4_grpc_async {
    struct dsv4_grpc *srv;
    struct call *call; /* loop only: NULL once the call ended */
    dsv4_grpc_cancel_fn cancel;
    struct dsv4_grpc_async *prev, *next; /* loop only: the live handles */
    atomic_bool lost;                    /* a send failed for memory */
    struct qitem fin;                    /* preallocated: the finish never fails */
    int fin_code;
    bool fin_retryable;
    char fin_msg[MAX_MESSAGE_CHARS];
    union {
        max_align_t align;
        unsigned char bytes[1];
    } user[];
};

struct call {
    struct call *prev, *next;
    struct conn *conn;
    int32_t sid;
    /* request headers */
    char method[8];
    char path[128];
    size_t path_len;
    char ctype[64];
    char timeout[16];
    size_t timeout_len;
    char auth[1024];
    size_t auth_len;
    bool has_timeout, has_auth, hdr_overflow;
    size_t hdr_bytes;
    /* progress */
    bool headers_done, served, ended, responded, deferred, trailers_queued;
    const struct dsv4_grpc_method *m;
    double deadline, t_end;
    struct dsv4_grpc_reader rd;
    size_t rd_counted; /* bytes of rd counted in srv->req_bytes */
    uint8_t *msg;
    size_t msg_len;
    int n_msg;
    /* response */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    int code;
    bool retryable;
    char message[MAX_MESSAGE_CHARS];
    int http_status; /* non-gRPC answer (405, 415), 0 otherwise */
    struct dsv4_grpc_async *async;
    dsv4_grpc_poll_fn poll_fn;
    void *poll_state;
    double poll_every, poll_next;
};

struct conn {
    struct conn *prev, *next;
    struct dsv4_grpc *srv;
    int fd;
    nghttp2_session *h2;
    struct call *calls;
    int n_calls;
    double t_open, t_active, t_write;
    double rst_t0; /* the current second of the RST_STREAM count */
    int rst_n;
    bool got_settings, blocked, dead, goaway;
};

struct dsv4_grpc {
    struct dsv4_svc *svc;
    struct dsv4_grpc_opts o;
    char listen[256];
    int lfd, port, efd;
    bool own_lfd;
    pthread_t th;
    bool th_started;
    double t_start;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *h2opt;
    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    struct qitem *qhead, *qtail;
    bool wake_pending, stop_req;
    /* loop only */
    struct conn *conns;
    int n_conns;
    struct dsv4_grpc_async *asyncs;
    int n_asyncs;
    enum phase phase;
    double phase_end, accept_pause_until, last_refusal_log;
    size_t req_bytes, req_cap;
    long refused;
    struct pollfd *pfd;
    struct conn **pconn;
    size_t pcap;
};

/* ---- the cross-thread queue */

static void wake(struct dsv4_grpc *g)
{
    uint64_t one = 1;
    ssize_t rc;
    do {
        rc = write(g->efd, &one, sizeof(one));
    } while (rc < 0 && errno == EINTR);
}

/* Appends a post and wakes the loop.  The wake happens under the lock: once the loop has
 * taken the item (under the same lock) the poster no longer touches the server, which may
 * then be freed. */
static void push(struct dsv4_grpc *g, struct qitem *it)
{
    it->next = NULL;
    pthread_mutex_lock(&g->mu);
    if (g->qtail)
        g->qtail->next = it;
    else
        g->qhead = it;
    g->qtail = it;
    if (!g->wake_pending) {
        g->wake_pending = true;
        wake(g);
    }
    pthread_mutex_unlock(&g->mu);
}

void *dsv4_grpc_async_user(struct dsv4_grpc_async *a)
{
    return a->user;
}

void dsv4_grpc_async_send(struct dsv4_grpc_async *a, const uint8_t *msg, size_t len)
{
    struct qitem *it = malloc(sizeof(*it) + (len ? len : 1));
    if (!it) {
        atomic_store(&a->lost, true);
        return;
    }
    it->a = a;
    it->fin = false;
    it->len = len;
    it->data = (uint8_t *)(it + 1);
    if (len)
        memcpy(it->data, msg, len);
    push(a->srv, it);
}

void dsv4_grpc_async_finish(struct dsv4_grpc_async *a, int code, bool retryable,
                            const char *message)
{
    a->fin.a = a;
    a->fin.fin = true;
    a->fin_code = code;
    a->fin_retryable = retryable;
    snprintf(a->fin_msg, sizeof(a->fin_msg), "%s", message ? message : "");
    push(a->srv, &a->fin);
}

/* ---- calls */

struct dsv4_svc *dsv4_grpc_call_svc(const struct dsv4_grpc_call *cc)
{
    const struct call *c = (const struct call *)cc;
    return c->conn->srv->svc;
}

const struct dsv4_grpc_opts *dsv4_grpc_call_opts(const struct dsv4_grpc_call *cc)
{
    const struct call *c = (const struct call *)cc;
    return &c->conn->srv->o;
}

double dsv4_grpc_call_time_left(const struct dsv4_grpc_call *cc)
{
    const struct call *c = (const struct call *)cc;
    if (c->deadline <= 0)
        return 0;
    double left = c->deadline - dsv4_now();
    return left > 1e-6 ? left : 1e-6;
}

bool dsv4_grpc_call_stopping(const struct dsv4_grpc_call *cc)
{
    const struct call *c = (const struct call *)cc;
    return c->conn->srv->phase != RUN;
}

double dsv4_grpc_call_uptime(const struct dsv4_grpc_call *cc)
{
    const struct call *c = (const struct call *)cc;
    return dsv4_now() - c->conn->srv->t_start;
}

#define NV(n, v, vl)                                                                      \
    {                                                                                     \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl), NGHTTP2_NV_FLAG_NO_COPY_NAME \
    }

/* The status fields of a call's end: grpc-status, grpc-message, dsv4-retryable. */
static size_t status_nv(const struct call *c, nghttp2_nv *nv, char *code, char *msg, size_t msglen)
{
    size_t n = 0;
    snprintf(code, 4, "%d", c->code);
    nghttp2_nv a = NV("grpc-status", code, strlen(code));
    nv[n++] = a;
    if (c->message[0]) {
        size_t k = dsv4_grpc_percent_encode(c->message, strlen(c->message), msg, msglen);
        nghttp2_nv b = NV("grpc-message", msg, k);
        nv[n++] = b;
    }
    if (c->retryable) {
        nghttp2_nv r = NV("dsv4-retryable", "1", 1);
        nv[n++] = r;
    }
    return n;
}

static ssize_t data_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user)
{
    struct call *c = src->ptr;
    size_t n = DSV4_MIN(length, c->out_len - c->out_off);
    (void)user;
    memcpy(buf, c->out + c->out_off, n);
    c->out_off += n;
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len == 0 && c->ended) {
        nghttp2_nv nv[3];
        char code[4], msg[3 * MAX_MESSAGE_CHARS + 1];
        size_t k = status_nv(c, nv, code, msg, sizeof(msg));
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(s, sid, nv, k))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        c->trailers_queued = true;
        return (ssize_t)n;
    }
    if (n == 0) {
        c->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* Submits what the call has for its client: the response HEADERS (trailers-only when the call
 * ended without output), or a resumption of its deferred data. */
static void call_flush(struct call *c)
{
    nghttp2_session *s = c->conn->h2;
    if (c->trailers_queued)
        return;
    if (!c->responded) {
        if (c->ended && c->out_len == c->out_off) {
            nghttp2_nv nv[6] = {NV(":status", "200", 3),
                                NV("content-type", "application/grpc", 16)};
            char code[4], msg[3 * MAX_MESSAGE_CHARS + 1];
            size_t k = 2 + status_nv(c, nv + 2, code, msg, sizeof(msg));
            if (c->http_status) {
                static const char *st[] = {"405", "415"};
                nv[0].value = (uint8_t *)(c->http_status == 405 ? st[0] : st[1]);
                k = 1;
            }
            c->responded = c->trailers_queued = true;
            if (nghttp2_submit_response(s, c->sid, nv, k, NULL))
                nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
        } else if (c->out_len > c->out_off) {
            nghttp2_nv nv[3] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16),
                                NV("grpc-accept-encoding", "identity", 8)};
            nghttp2_data_provider dp;
            dp.source.ptr = c;
            dp.read_callback = data_read;
            c->responded = true;
            if (nghttp2_submit_response(s, c->sid, nv, 3, &dp))
                nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
        }
        return;
    }
    if (c->deferred) {
        c->deferred = false;
        nghttp2_session_resume_data(s, c->sid);
    }
}

/* Records the end of the call (the first one wins) and submits what follows from it. */
static void call_end(struct call *c, int code, bool retryable, const char *message)
{
    if (c->ended)
        return;
    c->ended = true;
    c->t_end = dsv4_now();
    c->code = code;
    c->retryable = retryable;
    snprintf(c->message, sizeof(c->message), "%s", message ? message : "");
    c->poll_fn = NULL;
    if (code != DSV4_GRPC_OK)
        dsv4_log(DSV4_LOG_DEBUG, "grpc: %.*s: %s: %s", (int)c->path_len, c->path,
                 dsv4_grpc_code_name(code), c->message);
    call_flush(c);
}

/* Cuts the link to the call's async handle; the cancel hook stops the work behind it. */
static void call_detach(struct call *c)
{
    struct dsv4_grpc_async *a = c->async;
    if (!a)
        return;
    c->async = NULL;
    a->call = NULL;
    if (a->cancel)
        a->cancel(a->user);
}

/* The transport ends a call its method has not finished: deadline, slow reader, stop. */
static void call_abort(struct call *c, int code, bool retryable, const char *message)
{
    if (c->ended)
        return;
    call_detach(c);
    call_end(c, code, retryable, message);
}

void dsv4_grpc_call_finish(struct dsv4_grpc_call *cc, int code, bool retryable, const char *message)
{
    call_end((struct call *)cc, code, retryable, message);
}

void dsv4_grpc_call_send(struct dsv4_grpc_call *cc, const uint8_t *msg, size_t len)
{
    struct call *c = (struct call *)cc;
    size_t pending = c->out_len - c->out_off;
    size_t need = DSV4_GRPC_PREFIX + len;
    if (c->ended)
        return;
    if (len > UINT32_MAX) {
        call_abort(c, DSV4_GRPC_INTERNAL, false, "response message too large");
        return;
    }
    if (pending > 0 && pending + need > c->conn->srv->o.max_stream_buffer) {
        char why[160];
        snprintf(why, sizeof(why), "the client reads too slowly: %zu bytes waiting", pending);
        call_abort(c, DSV4_GRPC_RESOURCE_EXHAUSTED, false, why);
        return;
    }
    if (c->out_off > 0 && c->out_len + need > c->out_cap) {
        memmove(c->out, c->out + c->out_off, pending);
        c->out_len = pending;
        c->out_off = 0;
    }
    if (c->out_len + need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 1024;
        while (cap < c->out_len + need)
            cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p) {
            call_abort(c, DSV4_GRPC_RESOURCE_EXHAUSTED, true, "out of memory");
            return;
        }
        c->out = p;
        c->out_cap = cap;
    }
    dsv4_grpc_prefix(c->out + c->out_len, (uint32_t)len);
    if (len)
        memcpy(c->out + c->out_len + DSV4_GRPC_PREFIX, msg, len);
    c->out_len += need;
    call_flush(c);
}

void *dsv4_grpc_call_poll(struct dsv4_grpc_call *cc, double interval_s, size_t state_size,
                          dsv4_grpc_poll_fn fn)
{
    struct call *c = (struct call *)cc;
    if (c->ended)
        return NULL;
    free(c->poll_state);
    c->poll_state = calloc(1, state_size ? state_size : 1);
    if (!c->poll_state)
        return NULL;
    c->poll_fn = fn;
    c->poll_every = interval_s > 0 ? interval_s : 0.05;
    c->poll_next = 0;
    return c->poll_state;
}

struct dsv4_grpc_async *dsv4_grpc_call_async(struct dsv4_grpc_call *cc, size_t user_size,
                                             dsv4_grpc_cancel_fn cancel)
{
    struct call *c = (struct call *)cc;
    struct dsv4_grpc *g = c->conn->srv;
    DSV4_ASSERT(!c->async && !c->ended);
    struct dsv4_grpc_async *a = calloc(1, sizeof(*a) + user_size);
    if (!a)
        return NULL;
    a->srv = g;
    a->call = c;
    a->cancel = cancel;
    atomic_init(&a->lost, false);
    a->next = g->asyncs;
    if (g->asyncs)
        g->asyncs->prev = a;
    g->asyncs = a;
    g->n_asyncs++;
    c->async = a;
    return a;
}

static void async_free(struct dsv4_grpc *g, struct dsv4_grpc_async *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        g->asyncs = a->next;
    if (a->next)
        a->next->prev = a->prev;
    g->n_asyncs--;
    free(a);
}

/* Moves the queued posts into their calls. */
static void process_queue(struct dsv4_grpc *g)
{
    uint64_t v;
    struct qitem *it;
    while (read(g->efd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&g->mu);
    it = g->qhead;
    g->qhead = g->qtail = NULL;
    g->wake_pending = false;
    pthread_mutex_unlock(&g->mu);
    while (it) {
        struct qitem *next = it->next;
        struct dsv4_grpc_async *a = it->a;
        struct call *c = a->call;
        if (it->fin) {
            if (c) {
                a->call = NULL;
                c->async = NULL;
                if (atomic_load(&a->lost))
                    call_end(c, DSV4_GRPC_RESOURCE_EXHAUSTED, true,
                             "out of memory queueing output");
                else
                    call_end(c, a->fin_code, a->fin_retryable, a->fin_msg);
            }
            async_free(g, a);
        } else {
            if (c && !atomic_load(&a->lost))
                dsv4_grpc_call_send((struct dsv4_grpc_call *)c, it->data, it->len);
            free(it);
        }
        it = next;
    }
}

static struct call *call_of(nghttp2_session *s, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(s, sid);
}

/* Frees a call whose stream is gone; a method still working on it is cancelled. */
static void call_free(struct call *c)
{
    struct conn *cn = c->conn;
    struct dsv4_grpc *g = cn->srv;
    call_detach(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        cn->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    cn->n_calls--;
    g->req_bytes -= c->rd_counted + c->msg_len;
    dsv4_grpc_reader_free(&c->rd);
    free(c->msg);
    free(c->out);
    free(c->poll_state);
    free(c);
}

/* ---- request handling */

static bool ctype_ok(const char *v)
{
    static const char p[] = "application/grpc";
    size_t n = sizeof(p) - 1;
    return !strncmp(v, p, n) && (v[n] == 0 || v[n] == '+' || v[n] == ';');
}

/* The request headers are complete: check them; a failure answers at once. */
static void call_headers(struct call *c)
{
    struct dsv4_grpc *g = c->conn->srv;
    char why[256];
    c->headers_done = true;
    if (c->hdr_overflow) {
        call_end(c, DSV4_GRPC_RESOURCE_EXHAUSTED, false, "request headers too large");
        return;
    }
    if (strcmp(c->method, "POST")) {
        c->http_status = 405;
        call_end(c, DSV4_GRPC_UNIMPLEMENTED, false, "method not allowed");
        return;
    }
    if (!ctype_ok(c->ctype)) {
        c->http_status = 415;
        call_end(c, DSV4_GRPC_UNIMPLEMENTED, false, "content-type is not application/grpc");
        return;
    }
    c->m = dsv4_grpc_engine_method(c->path, c->path_len);
    if (!c->m) {
        snprintf(why, sizeof(why), "unknown method %.*s", (int)c->path_len, c->path);
        call_end(c, DSV4_GRPC_UNIMPLEMENTED, false, why);
        return;
    }
    if (c->has_timeout) {
        double s;
        if (dsv4_grpc_timeout_parse(c->timeout, c->timeout_len, &s)) {
            call_end(c, DSV4_GRPC_INVALID_ARGUMENT, false, dsv4_errmsg());
            return;
        }
        c->deadline = dsv4_now() + s;
    }
    if (!(c->m->health && !g->o.health_needs_key)) {
        const char *key = NULL;
        size_t klen = 0;
        if (c->has_auth && !dsv4_grpc_bearer(c->auth, c->auth_len, &key, &klen)) {
            key = NULL;
            klen = 0;
        }
        if (!g->svc->ops->authorize(g->svc, key, klen)) {
            call_end(c, DSV4_GRPC_UNAUTHENTICATED, false, "missing or invalid API key");
            return;
        }
    }
    dsv4_grpc_reader_init(&c->rd, g->o.max_message);
}

static int on_message(void *arg, const uint8_t *msg, size_t len)
{
    struct call *c = arg;
    struct dsv4_grpc *g = c->conn->srv;
    if (c->n_msg++ > 0) {
        dsv4_error(DSV4_EINVAL, "more than one request message for a unary request");
        return DSV4_GRPC_INTERNAL;
    }
    if (g->req_bytes + len > g->req_cap) {
        dsv4_error(DSV4_ENOSPC, "server busy: too many request bytes buffered");
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    }
    c->msg = malloc(len ? len : 1);
    if (!c->msg) {
        dsv4_error(DSV4_ENOMEM, "out of memory");
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    }
    memcpy(c->msg, msg, len);
    c->msg_len = len;
    g->req_bytes += len;
    return 0;
}

static void call_data(struct call *c, const uint8_t *data, size_t len)
{
    struct dsv4_grpc *g = c->conn->srv;
    if (!c->headers_done || c->ended || c->served)
        return;
    if (g->req_bytes + len > g->req_cap) {
        call_end(c, DSV4_GRPC_RESOURCE_EXHAUSTED, true,
                 "server busy: too many request bytes buffered");
        return;
    }
    dsv4_error_clear();
    int code = dsv4_grpc_reader_feed(&c->rd, data, len, on_message, c);
    /* account for what the reader holds now */
    g->req_bytes = g->req_bytes - c->rd_counted + c->rd.cap;
    c->rd_counted = c->rd.cap;
    if (code)
        call_end(c, code, false, dsv4_errmsg());
}

/* The client's END_STREAM: serve the one request message. */
static void call_request_end(struct call *c)
{
    if (!c->headers_done || c->ended || c->served)
        return;
    dsv4_error_clear();
    int code = dsv4_grpc_reader_end(&c->rd);
    if (code) {
        call_end(c, code, false, dsv4_errmsg());
        return;
    }
    if (c->n_msg != 1) {
        call_end(c, DSV4_GRPC_INTERNAL, false, "no request message");
        return;
    }
    if (c->deadline > 0 && dsv4_now() >= c->deadline) {
        call_end(c, DSV4_GRPC_DEADLINE_EXCEEDED, false, "deadline exceeded");
        return;
    }
    c->served = true;
    dsv4_error_clear();
    code = c->m->serve((struct dsv4_grpc_call *)c, c->msg, c->msg_len);
    if (code)
        call_end(c, code, false, dsv4_errmsg()[0] ? dsv4_errmsg() : dsv4_grpc_code_name(code));
    c->conn->srv->req_bytes -= c->msg_len + c->rd_counted;
    free(c->msg);
    c->msg = NULL;
    c->msg_len = 0;
    dsv4_grpc_reader_free(&c->rd);
    c->rd_counted = 0;
}

/* ---- nghttp2 callbacks */

static ssize_t h2_send(nghttp2_session *s, const uint8_t *data, size_t length, int flags,
                       void *user)
{
    struct conn *cn = user;
    (void)s;
    (void)flags;
    for (;;) {
        ssize_t n = send(cn->fd, data, length, MSG_NOSIGNAL);
        if (n >= 0) {
            cn->t_write = cn->t_active = dsv4_now();
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            cn->blocked = true;
            return NGHTTP2_ERR_WOULDBLOCK;
        }
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
}

static int h2_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct conn *cn = user;
    struct dsv4_grpc *g = cn->srv;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (cn->n_calls >= g->o.max_streams || g->phase != RUN) {
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    struct call *c = calloc(1, sizeof(*c));
    if (!c) {
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    c->conn = cn;
    c->sid = f->hd.stream_id;
    c->next = cn->calls;
    if (cn->calls)
        cn->calls->prev = c;
    cn->calls = c;
    cn->n_calls++;
    nghttp2_session_set_stream_user_data(s, c->sid, c);
    return 0;
}

/* Copies a header value into a fixed field, cut to fit (a cut :path or grpc-timeout is no
 * longer valid, which is the right answer for one that long); returns the length kept. */
static size_t take(char *dst, size_t cap, const uint8_t *v, size_t n)
{
    n = DSV4_MIN(n, cap - 1);
    memcpy(dst, v, n);
    dst[n] = 0;
    return n;
}

static int h2_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    struct call *c = call_of(s, f->hd.stream_id);
    (void)flags;
    (void)user;
    if (!c || c->headers_done || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    c->hdr_bytes += namelen + valuelen + 32;
    if (c->hdr_bytes > MAX_HEADER_BYTES) {
        c->hdr_overflow = true;
        /* a header block without end (CONTINUATION after CONTINUATION): drop the client */
        return c->hdr_bytes > 4 * MAX_HEADER_BYTES ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    }
#define IS(lit) (namelen == sizeof(lit) - 1 && !memcmp(name, lit, namelen))
    if (IS(":method")) {
        take(c->method, sizeof(c->method), value, valuelen);
    } else if (IS(":path")) {
        c->path_len = take(c->path, sizeof(c->path), value, valuelen);
    } else if (IS("content-type")) {
        take(c->ctype, sizeof(c->ctype), value, valuelen);
    } else if (IS("grpc-timeout")) {
        c->timeout_len = take(c->timeout, sizeof(c->timeout), value, valuelen);
        c->has_timeout = true;
    } else if (IS("authorization")) {
        /* a value too long for any key is no key */
        c->auth_len =
                valuelen < sizeof(c->auth) ? take(c->auth, sizeof(c->auth), value, valuelen) : 0;
        c->has_auth = true;
    }
#undef IS
    return 0;
}

static int h2_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct conn *cn = user;
    struct call *c;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            cn->got_settings = true;
        break;
    case NGHTTP2_HEADERS:
        c = call_of(s, f->hd.stream_id);
        if (!c)
            break;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
            call_headers(c);
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
            call_request_end(c);
        break;
    case NGHTTP2_DATA:
        c = call_of(s, f->hd.stream_id);
        if (c && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            call_request_end(c);
        break;
    case NGHTTP2_RST_STREAM:
        /* "rapid reset": streams opened and reset at once cost the service a submit and a
         * cancel each while never counting against max_streams; a client resetting more
         * than twice its stream limit per second is told to calm down and dropped */
        if (cn->t_active - cn->rst_t0 >= 1) {
            cn->rst_t0 = cn->t_active;
            cn->rst_n = 0;
        }
        if (++cn->rst_n > DSV4_MAX(100, 2 * cn->srv->o.max_streams) && !cn->goaway) {
            dsv4_log(DSV4_LOG_WARN, "grpc: a client resets streams too fast: dropping it");
            cn->goaway = true;
            nghttp2_session_terminate_session(s, NGHTTP2_ENHANCE_YOUR_CALM);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int h2_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *user)
{
    struct call *c = call_of(s, sid);
    (void)flags;
    (void)user;
    if (c)
        call_data(c, data, len);
    return 0;
}

/* After our END_STREAM: if the client still sends, tell it to stop (RST_STREAM NO_ERROR, as
 * HTTP/2 §8.1 allows once the response is complete). */
static int h2_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    (void)user;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        nghttp2_session_get_stream_remote_close(s, f->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static int h2_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *user)
{
    struct call *c = call_of(s, sid);
    (void)user;
    if (!c)
        return 0;
    if (!c->ended)
        dsv4_log(DSV4_LOG_DEBUG, "grpc: stream %d closed by the client (%s)", sid,
                 nghttp2_http2_strerror(error_code));
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    call_free(c);
    return 0;
}

/* ---- connections */

static void conn_close(struct dsv4_grpc *g, struct conn *cn)
{
    while (cn->calls) {
        struct call *c = cn->calls;
        nghttp2_session_set_stream_user_data(cn->h2, c->sid, NULL);
        call_free(c);
    }
    nghttp2_session_del(cn->h2);
    close(cn->fd);
    if (cn->prev)
        cn->prev->next = cn->next;
    else
        g->conns = cn->next;
    if (cn->next)
        cn->next->prev = cn->prev;
    g->n_conns--;
    free(cn);
}

static void conn_open(struct dsv4_grpc *g, int fd)
{
    struct conn *cn = calloc(1, sizeof(*cn));
    int one = 1;
    nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)g->o.max_streams},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES},
    };
    if (!cn) {
        close(fd);
        return;
    }
    cn->srv = g;
    cn->fd = fd;
    cn->t_open = cn->t_active = cn->t_write = dsv4_now();
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nghttp2_session_server_new2(&cn->h2, g->cbs, cn, g->h2opt)) {
        close(fd);
        free(cn);
        return;
    }
    if (nghttp2_submit_settings(cn->h2, NGHTTP2_FLAG_NONE, iv, DSV4_ARRAY_LEN(iv)) ||
        nghttp2_session_set_local_window_size(cn->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW)) {
        nghttp2_session_del(cn->h2);
        close(fd);
        free(cn);
        return;
    }
    cn->next = g->conns;
    if (g->conns)
        g->conns->prev = cn;
    g->conns = cn;
    g->n_conns++;
}

static void do_accept(struct dsv4_grpc *g, double now)
{
    for (;;) {
        int fd = accept4(g->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: stop accepting for a moment instead of spinning */
                g->accept_pause_until = now + 0.1;
                if (now - g->last_refusal_log > 1) {
                    dsv4_log(DSV4_LOG_WARN, "grpc: accept: %s", strerror(errno));
                    g->last_refusal_log = now;
                }
            }
            return;
        }
        if (g->n_conns >= g->o.max_connections) {
            close(fd);
            g->refused++;
            if (now - g->last_refusal_log > 1) {
                dsv4_log(DSV4_LOG_WARN,
                         "grpc: %d connections (the limit): refused %ld connections so far",
                         g->n_conns, g->refused);
                g->last_refusal_log = now;
            }
            continue;
        }
        conn_open(g, fd);
    }
}

static void conn_read(struct conn *cn)
{
    uint8_t buf[READ_CHUNK];
    for (int i = 0; i < READS_PER_PASS && !cn->dead; i++) {
        ssize_t n = recv(cn->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            cn->t_active = dsv4_now();
            ssize_t rv = nghttp2_session_mem_recv(cn->h2, buf, (size_t)n);
            if (rv < 0) {
                dsv4_log(DSV4_LOG_DEBUG, "grpc: closing a connection: %s",
                         nghttp2_strerror((int)rv));
                cn->dead = true;
            }
            if ((size_t)n < sizeof(buf))
                return;
        } else if (n == 0) {
            cn->dead = true;
        } else if (errno == EINTR) {
            continue;
        } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                cn->dead = true;
            return;
        }
    }
}

/* Sends what nghttp2 has; marks the connection dead when it is finished or broken. */
static void conn_flush(struct conn *cn)
{
    if (cn->dead)
        return;
    cn->blocked = false;
    if (nghttp2_session_send(cn->h2)) {
        cn->dead = true;
        return;
    }
    if (!nghttp2_session_want_read(cn->h2) && !nghttp2_session_want_write(cn->h2))
        cn->dead = true;
}

/* ---- timers */

static void at(double *next, double t)
{
    if (t < *next)
        *next = t;
}

/* Deadlines, polls and connection timeouts due at `now`; *next gets the earliest time a timer
 * is due later. */
static void timers(struct dsv4_grpc *g, double now, double *next)
{
    for (struct conn *cn = g->conns; cn; cn = cn->next) {
        if (cn->dead)
            continue;
        if (!cn->got_settings) {
            if (now - cn->t_open >= g->o.handshake_timeout_s) {
                dsv4_log(DSV4_LOG_DEBUG, "grpc: no HTTP/2 preface within %.1f s: closing",
                         g->o.handshake_timeout_s);
                cn->dead = true;
                continue;
            }
            at(next, cn->t_open + g->o.handshake_timeout_s);
        }
        if (cn->blocked) {
            if (now - cn->t_write >= g->o.idle_timeout_s) {
                dsv4_log(DSV4_LOG_DEBUG, "grpc: a client reads nothing for %.0f s: closing",
                         g->o.idle_timeout_s);
                cn->dead = true;
                continue;
            }
            at(next, cn->t_write + g->o.idle_timeout_s);
        }
        if (cn->got_settings && cn->n_calls == 0 && !cn->goaway) {
            if (now - cn->t_active >= g->o.idle_timeout_s) {
                cn->goaway = true;
                nghttp2_session_terminate_session(cn->h2, NGHTTP2_NO_ERROR);
            } else {
                at(next, cn->t_active + g->o.idle_timeout_s);
            }
        }
        for (struct call *c = cn->calls; c; c = c->next) {
            if (!c->ended && c->deadline > 0) {
                if (now >= c->deadline)
                    call_abort(c, DSV4_GRPC_DEADLINE_EXCEEDED, false, "deadline exceeded");
                else
                    at(next, c->deadline);
            }
            if (c->poll_fn) {
                if (now >= c->poll_next) {
                    c->poll_next = now + c->poll_every;
                    c->poll_fn((struct dsv4_grpc_call *)c, c->poll_state);
                }
                if (c->poll_fn)
                    at(next, c->poll_next);
            }
            /* an ended call whose reader never takes the rest: reset the stream */
            if (c->ended && c->t_end > 0) {
                if (now - c->t_end >= g->o.idle_timeout_s) {
                    c->t_end = 0;
                    nghttp2_submit_rst_stream(cn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_CANCEL);
                } else {
                    at(next, c->t_end + g->o.idle_timeout_s);
                }
            }
        }
    }
}

/* ---- stopping */

static int unended_calls(struct dsv4_grpc *g)
{
    int n = 0;
    for (struct conn *cn = g->conns; cn; cn = cn->next)
        for (struct call *c = cn->calls; c; c = c->next)
            n += !c->ended;
    return n;
}

static void stop_step(struct dsv4_grpc *g, double now)
{
    if (g->phase == RUN) {
        pthread_mutex_lock(&g->mu);
        bool req = g->stop_req;
        pthread_mutex_unlock(&g->mu);
        if (!req)
            return;
        g->phase = DRAIN;
        g->phase_end = now + DSV4_MAX(g->o.drain_timeout_s, 0);
        if (g->own_lfd)
            close(g->lfd);
        g->lfd = -1;
        for (struct conn *cn = g->conns; cn; cn = cn->next) {
            nghttp2_submit_goaway(cn->h2, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(cn->h2), NGHTTP2_NO_ERROR,
                                  NULL, 0);
            cn->goaway = true;
            for (struct call *c = cn->calls; c; c = c->next)
                if (c->poll_fn)
                    c->poll_fn((struct dsv4_grpc_call *)c, c->poll_state);
        }
        dsv4_log(DSV4_LOG_INFO, "grpc: stopping: %d calls running", unended_calls(g));
    }
    if (g->phase == DRAIN) {
        for (struct conn *cn = g->conns; cn; cn = cn->next)
            if (cn->n_calls == 0 && !nghttp2_session_want_write(cn->h2))
                cn->dead = true;
        if (unended_calls(g) > 0 && now < g->phase_end)
            return;
        for (struct conn *cn = g->conns; cn; cn = cn->next)
            for (struct call *c = cn->calls; c; c = c->next)
                call_abort(c, DSV4_GRPC_UNAVAILABLE, true, "server stopping");
        g->phase = CLOSE;
        g->phase_end = now + STOP_FLUSH_S;
    }
    if (g->phase == CLOSE) {
        bool all = now >= g->phase_end;
        for (struct conn *cn = g->conns; cn; cn = cn->next)
            if (all || (cn->n_calls == 0 && !nghttp2_session_want_write(cn->h2)))
                cn->dead = true;
        if (g->conns && !all)
            return;
        g->phase = WAIT;
        g->phase_end = now + STOP_EVENTS_S;
    }
    if (g->phase == WAIT && !g->conns && (g->n_asyncs == 0 || now >= g->phase_end))
        g->phase = DONE;
}

/* ---- the loop */

static bool grow_pollfds(struct dsv4_grpc *g, size_t n)
{
    if (n <= g->pcap)
        return true;
    size_t cap = g->pcap ? g->pcap : 64;
    while (cap < n)
        cap *= 2;
    struct pollfd *p = realloc(g->pfd, cap * sizeof(*p));
    if (!p)
        return false;
    g->pfd = p;
    struct conn **q = realloc(g->pconn, cap * sizeof(*q));
    if (!q)
        return false;
    g->pconn = q;
    g->pcap = cap;
    return true;
}

static void *loop(void *arg)
{
    struct dsv4_grpc *g = arg;
    for (;;) {
        double now = dsv4_now();
        double next = now + MAX_TICK_S;
        stop_step(g, now);
        timers(g, now, &next);
        for (struct conn *cn = g->conns; cn; cn = cn->next)
            conn_flush(cn);
        for (struct conn *cn = g->conns, *nx; cn; cn = nx) {
            nx = cn->next;
            if (cn->dead)
                conn_close(g, cn);
        }
        if (g->phase == DONE)
            break;
        if (g->phase != RUN)
            at(&next, DSV4_MIN(g->phase_end, now + 0.05));

        size_t n = 0;
        if (!grow_pollfds(g, (size_t)g->n_conns + 2)) {
            /* out of memory for the poll set: wait and try again */
            poll(NULL, 0, 10);
            continue;
        }
        g->pfd[n].fd = g->efd;
        g->pfd[n].events = POLLIN;
        g->pconn[n++] = NULL;
        size_t lidx = (size_t)-1;
        if (g->lfd >= 0 && now >= g->accept_pause_until) {
            lidx = n;
            g->pfd[n].fd = g->lfd;
            g->pfd[n].events = POLLIN;
            g->pconn[n++] = NULL;
        } else if (g->lfd >= 0) {
            at(&next, g->accept_pause_until);
        }
        for (struct conn *cn = g->conns; cn; cn = cn->next) {
            g->pfd[n].fd = cn->fd;
            g->pfd[n].events = POLLIN | (cn->blocked ? POLLOUT : 0);
            g->pconn[n++] = cn;
        }
        double wait = next - dsv4_now();
        int ms = wait <= 0 ? 0 : (int)(wait * 1000) + 1;
        int rc = poll(g->pfd, n, ms);
        if (rc < 0 && errno != EINTR) {
            dsv4_log(DSV4_LOG_ERROR, "grpc: poll: %s", strerror(errno));
            poll(NULL, 0, 10);
        }
        if (rc <= 0)
            continue;
        if (g->pfd[0].revents)
            process_queue(g);
        if (lidx != (size_t)-1 && g->pfd[lidx].revents)
            do_accept(g, dsv4_now());
        for (size_t i = 0; i < n; i++)
            if (g->pconn[i] && (g->pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                conn_read(g->pconn[i]);
    }
    return NULL;
}

/* ---- start / stop */

static int bind_listen(struct dsv4_grpc *g)
{
    char host[256];
    const char *colon = strrchr(g->listen, ':');
    const char *h = g->listen;
    size_t hl;
    if (!colon || !colon[1])
        return dsv4_error(DSV4_EINVAL, "listen address '%s': HOST:PORT expected", g->listen);
    hl = (size_t)(colon - h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= sizeof(host))
        return dsv4_error(DSV4_EINVAL, "listen address '%s': host too long", g->listen);
    memcpy(host, h, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return dsv4_error(DSV4_EINVAL, "listen address '%s': bad port", g->listen);

    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(hl ? host : NULL, colon + 1, &hints, &res);
    if (gai)
        return dsv4_error(DSV4_EINVAL, "listen address '%s': %s", g->listen, gai_strerror(gai));
    int err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        int one = 1;
        if (fd < 0) {
            err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            g->lfd = fd;
            g->own_lfd = true;
            break;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (g->lfd < 0)
        return dsv4_error(DSV4_EIO, "cannot listen on %s: %s", g->listen, strerror(err));
    return 0;
}

static int adopt_fd(struct dsv4_grpc *g, int fd)
{
    int acc = 0;
    socklen_t len = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) || !acc)
        return dsv4_error(DSV4_EINVAL, "listen_fd %d is not a listening socket", fd);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return dsv4_error(DSV4_EIO, "listen_fd %d: %s", fd, strerror(errno));
    g->lfd = fd;
    g->own_lfd = false;
    snprintf(g->listen, sizeof(g->listen), "fd %d", fd);
    return 0;
}

static int local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

static int check_opts(struct dsv4_grpc_opts *o)
{
    if (!o->max_message)
        o->max_message = 4u << 20;
    if (!o->max_streams)
        o->max_streams = 256;
    if (!o->max_connections)
        o->max_connections = 1024;
    if (o->handshake_timeout_s == 0)
        o->handshake_timeout_s = 10;
    if (o->idle_timeout_s == 0)
        o->idle_timeout_s = 300;
    if (o->drain_timeout_s == 0)
        o->drain_timeout_s = 30;
    if (!o->max_stream_buffer)
        o->max_stream_buffer = 1u << 20;
    if (!o->default_max_tokens)
        o->default_max_tokens = 256;
    if (o->max_message > UINT32_MAX - DSV4_GRPC_PREFIX)
        return dsv4_error(DSV4_EINVAL, "max_message %zu: at most 4 GiB", o->max_message);
    if (o->max_streams < 1 || o->max_connections < 1 || o->default_max_tokens < 1)
        return dsv4_error(DSV4_EINVAL, "max_streams, max_connections and default_max_tokens "
                                       "must be positive");
    if (!(o->handshake_timeout_s > 0) || !(o->idle_timeout_s > 0) || isnan(o->drain_timeout_s))
        return dsv4_error(DSV4_EINVAL, "timeouts must be positive numbers");
    return 0;
}

static void server_free(struct dsv4_grpc *g)
{
    if (g->own_lfd && g->lfd >= 0)
        close(g->lfd);
    if (g->efd >= 0)
        close(g->efd);
    nghttp2_session_callbacks_del(g->cbs);
    nghttp2_option_del(g->h2opt);
    pthread_mutex_destroy(&g->mu);
    free(g->pfd);
    free(g->pconn);
    free(g);
}

int dsv4_grpc_start(struct dsv4_svc *svc, const struct dsv4_grpc_opts *o, struct dsv4_grpc **out)
{
    struct dsv4_grpc *g;
    sigset_t all, old;
    int rc;

    *out = NULL;
    if (!svc || !svc->ops)
        return dsv4_error(DSV4_EINVAL, "grpc: no service");
    g = calloc(1, sizeof(*g));
    if (!g)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    g->svc = svc;
    if (o)
        g->o = *o;
    g->lfd = g->efd = -1;
    pthread_mutex_init(&g->mu, NULL);
    snprintf(g->listen, sizeof(g->listen), "%s", g->o.listen ? g->o.listen : DEFAULT_LISTEN);
    g->o.listen = g->listen;
    rc = check_opts(&g->o);
    if (rc)
        goto fail;
    g->req_cap = DSV4_MAX((size_t)MIN_REQ_BUFFER, 4 * g->o.max_message);
    rc = g->o.listen_fd > 0 ? adopt_fd(g, g->o.listen_fd) : bind_listen(g);
    if (rc)
        goto fail;
    g->port = local_port(g->lfd);
    g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g->efd < 0) {
        rc = dsv4_error(DSV4_EIO, "grpc: eventfd: %s", strerror(errno));
        goto fail;
    }
    if (nghttp2_session_callbacks_new(&g->cbs) || nghttp2_option_new(&g->h2opt)) {
        rc = dsv4_error(DSV4_ENOMEM, "out of memory");
        goto fail;
    }
    nghttp2_session_callbacks_set_send_callback(g->cbs, h2_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g->cbs, h2_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g->cbs, h2_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g->cbs, h2_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g->cbs, h2_data);
    nghttp2_session_callbacks_set_on_frame_send_callback(g->cbs, h2_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(g->cbs, h2_stream_close);
    g->t_start = dsv4_now();
    /* logged before the thread exists: dsv4_log's first call is not thread-safe */
    dsv4_log(DSV4_LOG_INFO, "grpc: listening on %s (port %d)", g->listen, g->port);
    /* the loop's thread takes no signals: they stay with the daemon's main thread */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&g->th, NULL, loop, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        rc = dsv4_error(DSV4_EIO, "grpc: cannot start the server thread: %s", strerror(rc));
        goto fail;
    }
    g->th_started = true;
    *out = g;
    return 0;
fail:
    server_free(g);
    return rc;
}

int dsv4_grpc_port(const struct dsv4_grpc *g)
{
    return g ? g->port : -1;
}

void dsv4_grpc_stop(struct dsv4_grpc *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    g->stop_req = true;
    pthread_mutex_unlock(&g->mu);
    wake(g);
    pthread_join(g->th, NULL);
    if (g->n_asyncs > 0) {
        /* the service still holds callback contexts into this server: keep it */
        dsv4_log(DSV4_LOG_WARN, "grpc: %d requests never ended in the service; their state is kept",
                 g->n_asyncs);
        return;
    }
    /* posts that raced the last pass: their handles are gone with their finishes */
    pthread_mutex_lock(&g->mu);
    struct qitem *it = g->qhead;
    g->qhead = g->qtail = NULL;
    pthread_mutex_unlock(&g->mu);
    while (it) {
        struct qitem *next = it->next;
        if (!it->fin)
            free(it);
        it = next;
    }
    server_free(g);
}
