/*
 * grpc_client.c - the gRPC client of tools/grpc_client.h: one nonblocking TCP
 * socket per connection, nghttp2's client session driven through its memory
 * API (mem_send / mem_recv) from dsv4_gc_run's poll loop, and the framing,
 * grpc-timeout and percent-decoding of rpc/grpc_wire.h (shared with the
 * server, so both sides read the wire the same way).
 *
 * Why a poll loop of our own rather than nghttp2's send/recv callbacks: the
 * caller decides how long to wait (deadlines, Ctrl-C), and bytes nghttp2
 * produced but the socket did not take are kept here (nghttp2's buffer is
 * valid only until its next mem_send).
 *
 * A call's life: dsv4_gc_start submits the request (HEADERS + one DATA
 * message with END_STREAM) with the call as the stream's user data; the
 * response headers, messages and trailers arrive through the callbacks;
 * nghttp2's stream-close callback (after the trailers, an RST_STREAM either
 * way, or a refused stream) fixes the status and moves the call to the done
 * list; dsv4_gc_run delivers the done list (done callback, then free) only
 * outside nghttp2's callbacks.  A status the client decides (cancel,
 * deadline, an oversized or broken message) is fixed first and an
 * RST_STREAM CANCEL sent; the server's trailers then no longer count.
 *
 * Invariants: a call is on exactly one list (open or done); a call on the
 * open list has a live stream in the session (or the session is gone, and
 * fail() moves every open call to done); n_open counts both lists, since a
 * call is open for the user until its done callback.
 */
#include "tools/grpc_client.h"

#include "base/dsv4.h"
#include "rpc/grpc_wire.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_TARGET    "127.0.0.1:50051"
#define DEFAULT_CONNECT_S 10.0
#define DEFAULT_MAX_MSG   ((size_t)64 << 20)
#define STREAM_WINDOW     (1 << 20)  /* per-stream receive window */
#define CONN_WINDOW       (16 << 20) /* connection receive window */
#define READ_CHUNK        65536
#define READS_PER_PASS    16 /* a fast stream cannot starve deadlines and writes */
#define MAX_METADATA      32 /* extra headers per call */
#define USER_AGENT_PREFIX "dsv4-grpc-client/"

struct dsv4_gc_call {
    struct dsv4_gc *c;
    struct dsv4_gc_call *prev, *next; /* on c->open or c->done */
    int32_t stream_id;
    uint8_t *body; /* prefix + request message */
    size_t body_len, body_off;
    double t0, deadline; /* absolute (dsv4_now), 0: none */
    dsv4_gc_msg_fn on_msg;
    dsv4_gc_done_fn on_done;
    void *arg;
    struct dsv4_grpc_reader rd;
    int http_status;
    bool have_grpc_status; /* the server's grpc-status (headers or trailers) */
    int grpc_status;
    bool retry_trailer;
    char grpc_message[512];
    bool local; /* st fixed by the client: the server's status no longer counts */
    bool on_done_list;
    struct dsv4_gc_status st;
};

struct dsv4_gc {
    int fd;
    nghttp2_session *h2;
    char target[300];
    char bearer[600]; /* "Bearer KEY", or "" */
    size_t max_message;
    struct dsv4_gc_call *open, *done;
    int n_open;
    bool failed;
    char why[400]; /* why the connection failed */
    bool goaway;
    uint8_t *out; /* bytes nghttp2 produced that the socket did not take yet */
    size_t out_len, out_off, out_cap;
};

/* ---- small helpers */

static void set_status(struct dsv4_gc_status *st, int code, bool retryable, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void set_status(struct dsv4_gc_status *st, int code, bool retryable, const char *fmt, ...)
{
    va_list ap;
    st->code = code;
    st->retryable = retryable;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof(st->message), fmt, ap);
    va_end(ap);
}

/* Copies s[0..n) into out (size cap), cut at a UTF-8 character boundary. */
static void copy_text(char *out, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = 0;
}

void dsv4_gc_timeout_value(double seconds, char *out, size_t outlen)
{
    static const struct {
        char unit;
        double per_s;
    } units[] = {{'m', 1e3}, {'S', 1}, {'M', 1.0 / 60}, {'H', 1.0 / 3600}};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(units); i++) {
        double v = ceil(seconds * units[i].per_s);
        if (v < 1)
            v = 1;
        if (v <= 99999999.0) {
            snprintf(out, outlen, "%.0f%c", v, units[i].unit);
            return;
        }
    }
    snprintf(out, outlen, "99999999H");
}

/* The gRPC code of an HTTP status when a response carries no grpc-status
 * (grpc/doc/http-grpc-status-mapping.md). */
static int code_of_http(int status)
{
    switch (status) {
    case 400:
        return DSV4_GRPC_INTERNAL;
    case 401:
        return DSV4_GRPC_UNAUTHENTICATED;
    case 403:
        return DSV4_GRPC_PERMISSION_DENIED;
    case 404:
        return DSV4_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return DSV4_GRPC_UNAVAILABLE;
    default:
        return DSV4_GRPC_UNKNOWN;
    }
}

/* The gRPC code of an RST_STREAM error code (the same document). */
static int code_of_rst(uint32_t err)
{
    switch (err) {
    case NGHTTP2_REFUSED_STREAM:
        return DSV4_GRPC_UNAVAILABLE;
    case NGHTTP2_CANCEL:
        return DSV4_GRPC_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return DSV4_GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return DSV4_GRPC_PERMISSION_DENIED;
    default:
        return DSV4_GRPC_INTERNAL;
    }
}

/* ---- the lists */

static void unlink_call(struct dsv4_gc_call **head, struct dsv4_gc_call *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        *head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
}

static void push(struct dsv4_gc_call **head, struct dsv4_gc_call *k)
{
    k->prev = NULL;
    k->next = *head;
    if (*head)
        (*head)->prev = k;
    *head = k;
}

/* Moves an open call to the done list with its final status (the client's, the
 * server's, or what the stream's end says). */
static void finish_call(struct dsv4_gc_call *k, uint32_t rst_error)
{
    struct dsv4_gc *c = k->c;
    if (k->on_done_list)
        return;
    if (!k->local) {
        if (k->have_grpc_status) {
            k->st.code = k->grpc_status;
            k->st.retryable = k->retry_trailer;
            snprintf(k->st.message, sizeof(k->st.message), "%s", k->grpc_message);
            if (k->st.code == DSV4_GRPC_OK && dsv4_grpc_reader_end(&k->rd))
                set_status(&k->st, DSV4_GRPC_INTERNAL, false,
                           "the response ended inside a message");
        } else if (rst_error != NGHTTP2_NO_ERROR) {
            set_status(&k->st, code_of_rst(rst_error), rst_error == NGHTTP2_REFUSED_STREAM,
                       "stream reset by the server (HTTP/2 %s)", nghttp2_http2_strerror(rst_error));
        } else if (k->http_status && k->http_status != 200) {
            set_status(&k->st, code_of_http(k->http_status), k->http_status >= 502,
                       "HTTP status %d without a gRPC status", k->http_status);
        } else {
            set_status(&k->st, DSV4_GRPC_INTERNAL, false,
                       "the server ended the stream without a grpc-status");
        }
    }
    if (k->stream_id > 0 && c->h2)
        nghttp2_session_set_stream_user_data(c->h2, k->stream_id, NULL);
    unlink_call(&c->open, k);
    push(&c->done, k);
    k->on_done_list = true;
}

/* Fixes the status of a call the client ends, and resets its stream. */
static void end_locally(struct dsv4_gc_call *k, int code, bool retryable, const char *msg)
{
    if (k->local || k->on_done_list)
        return;
    k->local = true;
    set_status(&k->st, code, retryable, "%s", msg);
    if (k->c->h2 && k->stream_id > 0 &&
        nghttp2_submit_rst_stream(k->c->h2, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL) == 0)
        return; /* the stream-close callback moves it to the done list */
    finish_call(k, NGHTTP2_NO_ERROR);
}

/* The connection is gone: every open call ends UNAVAILABLE (unless already decided). */
static void fail(struct dsv4_gc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct dsv4_gc *c, const char *fmt, ...)
{
    if (!c->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof(c->why), fmt, ap);
        va_end(ap);
        c->failed = true;
    }
    while (c->open) {
        struct dsv4_gc_call *k = c->open;
        if (!k->local) {
            k->local = true;
            set_status(&k->st, DSV4_GRPC_UNAVAILABLE, true, "%s", c->why);
        }
        finish_call(k, NGHTTP2_NO_ERROR);
    }
    if (c->h2) {
        nghttp2_session_del(c->h2);
        c->h2 = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static void free_call(struct dsv4_gc_call *k)
{
    dsv4_grpc_reader_free(&k->rd);
    free(k->body);
    free(k);
}

/* Done callbacks, outside nghttp2's callbacks; a callback may start or end calls. */
static void deliver(struct dsv4_gc *c)
{
    while (c->done) {
        struct dsv4_gc_call *k = c->done;
        unlink_call(&c->done, k);
        c->n_open--;
        if (k->on_done)
            k->on_done(k->arg, &k->st);
        free_call(k);
    }
}

/* ---- nghttp2 callbacks */

static struct dsv4_gc_call *call_of(nghttp2_session *s, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(s, sid);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    struct dsv4_gc_call *k = call_of(s, f->hd.stream_id);
    if (!k || f->hd.type != NGHTTP2_HEADERS)
        return 0;
#define IS(lit) (namelen == sizeof(lit) - 1 && !memcmp(name, lit, namelen))
    if (IS(":status")) {
        int v = 0;
        for (size_t i = 0; i < valuelen && i < 4; i++)
            v = v * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
        k->http_status = v;
    } else if (IS("grpc-status")) {
        int v = 0;
        bool ok = valuelen > 0 && valuelen <= 3;
        for (size_t i = 0; ok && i < valuelen; i++) {
            ok = value[i] >= '0' && value[i] <= '9';
            v = v * 10 + (value[i] - '0');
        }
        k->have_grpc_status = true;
        k->grpc_status = ok && v < DSV4_GRPC_CODE_COUNT ? v : DSV4_GRPC_UNKNOWN;
    } else if (IS("grpc-message")) {
        char buf[1024];
        size_t n = DSV4_MIN(valuelen, sizeof(buf) - 1);
        memcpy(buf, value, n);
        n = dsv4_grpc_percent_decode(buf, n);
        copy_text(k->grpc_message, sizeof(k->grpc_message), buf, n);
    } else if (IS("dsv4-retryable")) {
        k->retry_trailer = valuelen == 1 && value[0] == '1';
    }
#undef IS
    return 0;
}

struct feed_ctx {
    struct dsv4_gc_call *k;
    bool cancelled;
};

static int on_message(void *arg, const uint8_t *msg, size_t len)
{
    struct feed_ctx *fc = arg;
    struct dsv4_gc_call *k = fc->k;
    if (k->local || !k->on_msg)
        return 0;
    if (k->on_msg(k->arg, msg, len)) {
        fc->cancelled = true;
        return DSV4_GRPC_CANCELLED;
    }
    return k->local ? DSV4_GRPC_CANCELLED : 0; /* the callback cancelled this call */
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *user)
{
    struct dsv4_gc_call *k = call_of(s, sid);
    if (!k || k->local)
        return 0;
    struct feed_ctx fc = {.k = k};
    int code = dsv4_grpc_reader_feed(&k->rd, data, len, on_message, &fc);
    if (!code || k->local)
        return 0;
    if (fc.cancelled)
        end_locally(k, DSV4_GRPC_CANCELLED, false, "cancelled by the client");
    else
        end_locally(k, code, false, dsv4_errmsg());
    return 0;
}

static int on_close(nghttp2_session *s, int32_t sid, uint32_t err, void *user)
{
    struct dsv4_gc_call *k = call_of(s, sid);
    if (k)
        finish_call(k, err);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct dsv4_gc *c = user;
    if (f->hd.type == NGHTTP2_GOAWAY)
        c->goaway = true;
    return 0;
}

/* A request that could not be sent (GOAWAY came first, or the stream limit): the stream
 * never opened, so no close callback follows. */
static int on_not_send(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *user)
{
    struct dsv4_gc *c = user;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    /* by id: a stream that never opened has no stream object to carry the user data */
    struct dsv4_gc_call *k = c->open;
    while (k && k->stream_id != f->hd.stream_id)
        k = k->next;
    if (!k)
        return 0;
    if (!k->local) {
        k->local = true;
        set_status(&k->st, DSV4_GRPC_UNAVAILABLE, true, "the request was not sent: %s",
                   nghttp2_strerror(lib_error));
    }
    finish_call(k, NGHTTP2_NO_ERROR);
    return 0;
}

static ssize_t body_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user)
{
    struct dsv4_gc_call *k = src->ptr;
    size_t n = DSV4_MIN(length, k->body_len - k->body_off);
    memcpy(buf, k->body + k->body_off, n);
    k->body_off += n;
    if (k->body_off == k->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* ---- connecting */

/* host and port of "HOST:PORT" / "[V6]:PORT". */
static int split_target(const char *t, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    size_t hl;
    const char *h = t;
    if (t[0] == '[') {
        const char *end = strchr(t, ']');
        if (!end || end[1] != ':')
            return dsv4_error(DSV4_EINVAL, "target '%s': expected [ADDRESS]:PORT", t);
        h = t + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(t, ':');
        if (!colon || strchr(t, ':') != colon)
            return dsv4_error(DSV4_EINVAL, "target '%s': expected HOST:PORT", t);
        hl = (size_t)(colon - t);
    }
    const char *p = colon + 1;
    char *end;
    long v = strtol(p, &end, 10);
    if (hl == 0 || hl >= hcap || !*p || *end || v < 1 || v > 65535 || strlen(p) >= pcap)
        return dsv4_error(DSV4_EINVAL, "target '%s': expected HOST:PORT with a port 1..65535", t);
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pcap, "%ld", v);
    return 0;
}

/* One nonblocking connect within `until`; the socket, or -1 with errno. */
static int connect_one(const struct addrinfo *ai, double until)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS)
        goto bad;
    for (;;) {
        double left = until - dsv4_now();
        if (left <= 0) {
            errno = ETIMEDOUT;
            goto bad;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, (int)ceil(left * 1000));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto bad;
        if (r == 0)
            continue;
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            goto bad;
        if (err) {
            errno = err;
            goto bad;
        }
        return fd;
    }
bad:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

static bool header_value_ok(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || (unsigned char)*v > 0x7e)
            return false;
    return true;
}

#define HOST_MAX 256 /* a target's host, with the NUL */
#define PORT_MAX 8

/* Checks a target's form; its host and port into host[HOST_MAX] and port[PORT_MAX]. */
static int parse_target(const char *target, char *host, char *port)
{
    if (strlen(target) >= sizeof(((struct dsv4_gc *)0)->target))
        return dsv4_error(DSV4_EINVAL, "target '%.40s...': too long", target);
    return split_target(target, host, HOST_MAX, port, PORT_MAX);
}

int dsv4_gc_target_check(const char *target)
{
    char host[HOST_MAX], port[PORT_MAX];
    return parse_target(target, host, port);
}

int dsv4_gc_connect(const struct dsv4_gc_opts *o, struct dsv4_gc **out)
{
    static const struct dsv4_gc_opts none;
    char host[HOST_MAX], port[PORT_MAX];
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res = NULL;
    nghttp2_session_callbacks *cb = NULL;
    struct dsv4_gc *c = NULL;
    int rc;

    *out = NULL;
    if (!o)
        o = &none;
    const char *target = o->target && o->target[0] ? o->target : DEFAULT_TARGET;
    if ((rc = parse_target(target, host, port)))
        return rc;
    if (o->api_key && (strlen(o->api_key) > 500 || !header_value_ok(o->api_key)))
        return dsv4_error(DSV4_EINVAL, "the API key must be printable ASCII, at most 500 bytes");
    c = calloc(1, sizeof(*c));
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    c->fd = -1;
    snprintf(c->target, sizeof(c->target), "%s", target);
    if (o->api_key && o->api_key[0])
        snprintf(c->bearer, sizeof(c->bearer), "Bearer %s", o->api_key);
    c->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MSG;

    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) {
        rc = dsv4_error(DSV4_EIO, "cannot resolve '%s': %s", host, gai_strerror(gai));
        goto fail;
    }
    double until =
            dsv4_now() + (o->connect_timeout_s > 0 ? o->connect_timeout_s : DEFAULT_CONNECT_S);
    int err = 0;
    for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
        c->fd = connect_one(ai, until);
        if (c->fd < 0)
            err = errno;
    }
    if (c->fd < 0) {
        rc = dsv4_error(DSV4_EIO, "cannot connect to %s: %s", target,
                        err == ETIMEDOUT ? "timed out" : strerror(err));
        goto fail;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    if (nghttp2_session_callbacks_new(&cb)) {
        rc = dsv4_error(DSV4_ENOMEM, "out of memory");
        goto fail;
    }
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_not_send);
    if (nghttp2_session_client_new(&c->h2, cb, c)) {
        rc = dsv4_error(DSV4_ENOMEM, "out of memory");
        goto fail;
    }
    nghttp2_settings_entry set[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW}};
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, set, DSV4_ARRAY_LEN(set)) ||
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW)) {
        rc = dsv4_error(DSV4_ENOMEM, "HTTP/2 session setup failed");
        goto fail;
    }
    nghttp2_session_callbacks_del(cb);
    freeaddrinfo(res);
    *out = c;
    return 0;
fail:
    if (cb)
        nghttp2_session_callbacks_del(cb);
    if (res)
        freeaddrinfo(res);
    if (c->h2)
        nghttp2_session_del(c->h2);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
    return rc;
}

const char *dsv4_gc_target(const struct dsv4_gc *c)
{
    return c->target;
}

int dsv4_gc_open_calls(const struct dsv4_gc *c)
{
    return c->n_open;
}

/* ---- I/O */

/* Keeps bytes the socket did not take. */
static int keep(struct dsv4_gc *c, const uint8_t *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = DSV4_MAX(c->out_cap * 2, c->out_len + n);
        uint8_t *q = realloc(c->out, cap);
        if (!q)
            return -1;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Writes what nghttp2 has to send until the socket is full.  false when the connection
 * failed (fail() done). */
static bool flush(struct dsv4_gc *c)
{
    while (c->h2) {
        if (c->out_off < c->out_len) {
            ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return true;
            if (w < 0) {
                fail(c, "connection to %s lost: %s", c->target, strerror(errno));
                return false;
            }
            c->out_off += (size_t)w;
            continue;
        }
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0) {
            fail(c, "HTTP/2 with %s: %s", c->target, nghttp2_strerror((int)n));
            return false;
        }
        if (n == 0)
            return true;
        ssize_t w = send(c->fd, data, (size_t)n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            w = 0;
        if (w < 0) {
            fail(c, "connection to %s lost: %s", c->target, strerror(errno));
            return false;
        }
        if (w < n && keep(c, data + w, (size_t)(n - w))) {
            fail(c, "out of memory");
            return false;
        }
    }
    return false;
}

/* Reads what the socket has (a bounded amount) into nghttp2.  false when the connection
 * failed. */
static bool receive(struct dsv4_gc *c)
{
    uint8_t buf[READ_CHUNK];
    for (int i = 0; i < READS_PER_PASS && c->h2; i++) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n < 0) {
            fail(c, "connection to %s lost: %s", c->target, strerror(errno));
            return false;
        }
        if (n == 0) {
            fail(c, "connection closed by the server%s", c->goaway ? " (it is going away)" : "");
            return false;
        }
        ssize_t used = nghttp2_session_mem_recv(c->h2, buf, (size_t)n);
        if (used < 0) {
            fail(c, "HTTP/2 with %s: %s (is it a gRPC server?)", c->target,
                 nghttp2_strerror((int)used));
            return false;
        }
    }
    return c->h2 != NULL;
}

/* Ends the calls whose deadline passed; returns the nearest deadline still ahead (or
 * `until`). */
static double expire(struct dsv4_gc *c, double now, double until)
{
    for (struct dsv4_gc_call *k = c->open, *next; k; k = next) {
        next = k->next;
        if (k->deadline <= 0 || k->local)
            continue;
        if (now >= k->deadline) {
            char msg[128];
            snprintf(msg, sizeof(msg), "deadline exceeded (%.3g s)", k->deadline - k->t0);
            end_locally(k, DSV4_GRPC_DEADLINE_EXCEEDED, false, msg);
        } else if (k->deadline < until) {
            until = k->deadline;
        }
    }
    return until;
}

int dsv4_gc_run(struct dsv4_gc *c, double max_wait_s)
{
    double end = max_wait_s < 0 ? INFINITY : dsv4_now() + max_wait_s;
    bool polled = false;
    for (;;) {
        deliver(c);
        if (c->failed)
            return DSV4_EIO;
        if (!c->n_open)
            return 0;
        double now = dsv4_now();
        double wake = expire(c, now, end);
        if (!flush(c))
            continue;
        if (c->done)
            continue;
        if (polled && now >= end)
            return c->n_open;
        if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2) &&
            c->out_off == c->out_len) {
            fail(c, "connection closed (HTTP/2 session over%s)", c->goaway ? ", GOAWAY" : "");
            continue;
        }
        double left = wake - now;
        int ms = isinf(left)             ? -1
                 : left <= 0             ? 0
                 : left > INT_MAX / 1000 ? INT_MAX
                                         : (int)ceil(left * 1000);
        bool want_out = c->out_off < c->out_len || nghttp2_session_want_write(c->h2);
        struct pollfd p = {.fd = c->fd, .events = (short)(POLLIN | (want_out ? POLLOUT : 0))};
        int r = poll(&p, 1, ms);
        polled = true;
        if (r < 0 && errno == EINTR) {
            deliver(c);
            return c->failed ? DSV4_EIO : c->n_open;
        }
        if (r < 0) {
            fail(c, "poll: %s", strerror(errno));
            continue;
        }
        if (r > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)))
            receive(c);
    }
}

/* ---- calls */

static bool metadata_name_ok(const char *n)
{
    if (!n[0] || !strncmp(n, "grpc-", 5))
        return false;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
              *p == '.'))
            return false;
    return true;
}

#define NV(n, v) \
    ((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE})

int dsv4_gc_start(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                  const struct dsv4_gc_call_opts *co, dsv4_gc_msg_fn on_msg,
                  dsv4_gc_done_fn on_done, void *arg, struct dsv4_gc_call **out)
{
    static const struct dsv4_gc_call_opts none;
    if (out)
        *out = NULL;
    if (!co)
        co = &none;
    if (!path || path[0] != '/' || !header_value_ok(path))
        return dsv4_error(DSV4_EINVAL, "method path '%s': expected /package.Service/Method",
                          path ? path : "(null)");
    if (len > UINT32_MAX)
        return dsv4_error(DSV4_EINVAL, "request message of %zu bytes: too large", len);
    size_t n_md = 0;
    if (co->metadata) {
        for (; co->metadata[n_md]; n_md += 2) {
            const char *name = co->metadata[n_md], *value = co->metadata[n_md + 1];
            if (!value || !metadata_name_ok(name) || !header_value_ok(value))
                return dsv4_error(DSV4_EINVAL, "metadata '%s': bad name or value", name);
            if (n_md / 2 >= MAX_METADATA)
                return dsv4_error(DSV4_EINVAL, "more than %d metadata entries", MAX_METADATA);
        }
    }
    struct dsv4_gc_call *k = calloc(1, sizeof(*k));
    if (!k)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    k->body = malloc(DSV4_GRPC_PREFIX + len);
    if (!k->body) {
        free(k);
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    }
    dsv4_grpc_prefix(k->body, (uint32_t)len);
    if (len)
        memcpy(k->body + DSV4_GRPC_PREFIX, req, len);
    k->body_len = DSV4_GRPC_PREFIX + len;
    k->c = c;
    k->on_msg = on_msg;
    k->on_done = on_done;
    k->arg = arg;
    k->t0 = dsv4_now();
    k->deadline = co->timeout_s > 0 ? k->t0 + co->timeout_s : 0;
    dsv4_grpc_reader_init(&k->rd, c->max_message);
    push(&c->open, k);
    c->n_open++;
    if (out)
        *out = k;

    if (c->failed || !c->h2 || !nghttp2_session_check_request_allowed(c->h2)) {
        k->local = true;
        if (c->failed)
            set_status(&k->st, DSV4_GRPC_UNAVAILABLE, true, "%s", c->why);
        else
            set_status(&k->st, DSV4_GRPC_UNAVAILABLE, true,
                       "%s is going away (GOAWAY): no new calls", c->target);
        finish_call(k, NGHTTP2_NO_ERROR);
        return 0;
    }
    char timeout[32], ua[64];
    snprintf(ua, sizeof(ua), USER_AGENT_PREFIX "%s", dsv4_version());
    nghttp2_nv nv[8 + 2 * MAX_METADATA];
    size_t n = 0;
    nv[n++] = NV(":method", "POST");
    nv[n++] = NV(":scheme", "http");
    nv[n++] = NV(":path", path);
    nv[n++] = NV(":authority", c->target);
    nv[n++] = NV("content-type", "application/grpc");
    nv[n++] = NV("te", "trailers");
    nv[n++] = NV("user-agent", ua);
    if (co->timeout_s > 0) {
        dsv4_gc_timeout_value(co->timeout_s, timeout, sizeof(timeout));
        nv[n++] = NV("grpc-timeout", timeout);
    }
    if (c->bearer[0])
        nv[n++] = NV("authorization", c->bearer);
    for (size_t i = 0; i < n_md; i += 2)
        nv[n++] = NV(co->metadata[i], co->metadata[i + 1]);
    nghttp2_data_provider dp = {.source.ptr = k, .read_callback = body_read};
    int32_t sid = nghttp2_submit_request(c->h2, NULL, nv, n, &dp, k);
    if (sid < 0) {
        k->local = true;
        set_status(&k->st, DSV4_GRPC_UNAVAILABLE, true, "cannot start a stream: %s",
                   nghttp2_strerror(sid));
        finish_call(k, NGHTTP2_NO_ERROR);
        return 0;
    }
    k->stream_id = sid;
    return 0;
}

void dsv4_gc_cancel(struct dsv4_gc_call *call)
{
    if (call)
        end_locally(call, DSV4_GRPC_CANCELLED, false, "cancelled by the client");
}

void dsv4_gc_close(struct dsv4_gc *c)
{
    if (!c)
        return;
    for (struct dsv4_gc_call *k = c->open; k; k = k->next)
        if (!k->local) {
            k->local = true;
            set_status(&k->st, DSV4_GRPC_CANCELLED, false, "connection closed by the client");
        }
    if (c->h2 && !c->failed) {
        /* a polite end: GOAWAY (and the RST_STREAMs) if the socket takes them now */
        for (struct dsv4_gc_call *k = c->open; k; k = k->next)
            if (k->stream_id > 0)
                nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL);
        nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
        flush(c);
    }
    fail(c, "connection closed by the client");
    deliver(c);
    free(c->out);
    free(c);
}

/* ---- blocking helpers */

struct unary_ctx {
    uint8_t *msg;
    size_t len;
    int n;
    bool done;
    struct dsv4_gc_status st;
    dsv4_gc_msg_fn fn;
    void *arg;
};

static int unary_msg(void *arg, const uint8_t *msg, size_t len)
{
    struct unary_ctx *u = arg;
    if (u->n++ == 0) {
        u->msg = malloc(len ? len : 1);
        if (!u->msg)
            return 1;
        memcpy(u->msg, msg, len);
        u->len = len;
    }
    return 0;
}

static int stream_msg(void *arg, const uint8_t *msg, size_t len)
{
    struct unary_ctx *u = arg;
    u->n++;
    return u->fn(u->arg, msg, len);
}

static void helper_done(void *arg, const struct dsv4_gc_status *st)
{
    struct unary_ctx *u = arg;
    u->st = *st;
    u->done = true;
}

/* Runs c until the helper's call is done; 0 or DSV4_EIO with "CODE: message" recorded. */
static int wait_helper(struct dsv4_gc *c, struct unary_ctx *u, struct dsv4_gc_status *st)
{
    while (!u->done)
        dsv4_gc_run(c, -1);
    *st = u->st;
    if (st->code == DSV4_GRPC_OK)
        return 0;
    return dsv4_error(DSV4_EIO, "%s: %s", dsv4_grpc_code_name(st->code), st->message);
}

int dsv4_gc_unary(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                  const struct dsv4_gc_call_opts *co, uint8_t **resp, size_t *resp_len,
                  struct dsv4_gc_status *st)
{
    struct unary_ctx u = {.n = 0};
    *resp = NULL;
    *resp_len = 0;
    int rc = dsv4_gc_start(c, path, req, len, co, unary_msg, helper_done, &u, NULL);
    if (rc) {
        set_status(st, rc == DSV4_ENOMEM ? DSV4_GRPC_RESOURCE_EXHAUSTED : DSV4_GRPC_INTERNAL, false,
                   "%s", dsv4_errmsg());
        return rc;
    }
    while (!u.done)
        dsv4_gc_run(c, -1);
    if (u.st.code == DSV4_GRPC_OK && u.n != 1)
        set_status(&u.st, DSV4_GRPC_INTERNAL, false, "a unary call got %d response messages", u.n);
    if (u.st.code == DSV4_GRPC_CANCELLED && u.n > 0 && !u.msg)
        set_status(&u.st, DSV4_GRPC_RESOURCE_EXHAUSTED, false, "out of memory");
    rc = wait_helper(c, &u, st);
    if (rc) {
        free(u.msg);
        return rc;
    }
    *resp = u.msg;
    *resp_len = u.len;
    return 0;
}

int dsv4_gc_stream(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                   const struct dsv4_gc_call_opts *co, dsv4_gc_msg_fn fn, void *arg,
                   struct dsv4_gc_status *st)
{
    struct unary_ctx u = {.fn = fn, .arg = arg};
    int rc = dsv4_gc_start(c, path, req, len, co, stream_msg, helper_done, &u, NULL);
    if (rc) {
        set_status(st, rc == DSV4_ENOMEM ? DSV4_GRPC_RESOURCE_EXHAUSTED : DSV4_GRPC_INTERNAL, false,
                   "%s", dsv4_errmsg());
        return rc;
    }
    return wait_helper(c, &u, st);
}
