/*
 * test_grpc_h2.c - the gRPC server (rpc/grpc.h) over the fake service
 * (tests/rpc/fake_svc.h), in process, against a raw HTTP/2 client (an
 * nghttp2 client session) that sends what standard gRPC clients never do:
 * compressed and oversized messages, huge length prefixes, truncated
 * bodies, two messages for a unary call, no message, GET and other content
 * types, bad grpc-timeout values, headers past the limit, garbage instead of
 * the HTTP/2 preface, frames that break the protocol, no preface at all, a
 * reader that opens no flow-control window, more streams than allowed, more
 * connections than allowed, streams reset as fast as they open, an idle
 * connection; and graceful stop with a call running.  Each case checks the status the client gets and that the
 * server still serves a normal call afterwards and frees what it started
 * (the fake's running count returns to 0).  Every wait is bounded; only
 * 127.0.0.1 is used.
 */
#include "base/dsv4.h"
#include "rpc/grpc.h"
#include "rpc/grpc_wire.h"
#include "tests/rpc/fake_svc.h"
#include "tests/rpc/grpc_test_pb.h"
#include "tests/test.h"

#include <nghttp2/nghttp2.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXS 16

/* ---- a raw client */

struct rstream {
    int32_t id;
    int http_status, grpc_status; /* -1 until seen */
    char grpc_message[512];
    bool retryable, closed;
    uint32_t rst; /* the stream's close code */
    uint8_t data[1 << 16];
    size_t n;
    /* request body */
    const uint8_t *body;
    size_t body_len, body_off;
    bool end;
};

struct client {
    int fd;
    nghttp2_session *s;
    struct rstream st[MAXS];
    int n;
    bool goaway, eof;
};

static struct rstream *stream_of(struct client *c, int32_t id)
{
    for (int i = 0; i < c->n; i++)
        if (c->st[i].id == id)
            return &c->st[i];
    return NULL;
}

static ssize_t c_send(nghttp2_session *s, const uint8_t *d, size_t n, int fl, void *u)
{
    struct client *c = u;
    (void)s;
    (void)fl;
    ssize_t k = send(c->fd, d, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return NGHTTP2_ERR_WOULDBLOCK;
    return k < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : k;
}

static int c_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                    const uint8_t *value, size_t vl, uint8_t fl, void *u)
{
    struct rstream *st = stream_of(u, f->hd.stream_id);
    char v[512];
    (void)s;
    (void)fl;
    if (!st)
        return 0;
    snprintf(v, sizeof(v), "%.*s", (int)vl, (const char *)value);
    if (nl == 7 && !memcmp(name, ":status", 7))
        st->http_status = atoi(v);
    else if (nl == 11 && !memcmp(name, "grpc-status", 11))
        st->grpc_status = atoi(v);
    else if (nl == 12 && !memcmp(name, "grpc-message", 12)) {
        size_t k = dsv4_grpc_percent_decode(v, strlen(v));
        v[k] = 0;
        snprintf(st->grpc_message, sizeof(st->grpc_message), "%s", v);
    } else if (nl == 14 && !memcmp(name, "dsv4-retryable", 14))
        st->retryable = true;
    return 0;
}

static int c_data(nghttp2_session *s, uint8_t fl, int32_t id, const uint8_t *d, size_t n, void *u)
{
    struct rstream *st = stream_of(u, id);
    (void)s;
    (void)fl;
    if (st) {
        size_t k = DSV4_MIN(n, sizeof(st->data) - st->n);
        memcpy(st->data + st->n, d, k);
        st->n += k;
    }
    return 0;
}

static int c_close(nghttp2_session *s, int32_t id, uint32_t code, void *u)
{
    struct rstream *st = stream_of(u, id);
    (void)s;
    if (st) {
        st->closed = true;
        st->rst = code;
    }
    return 0;
}

static int c_frame(nghttp2_session *s, const nghttp2_frame *f, void *u)
{
    struct client *c = u;
    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY)
        c->goaway = true;
    return 0;
}

static ssize_t c_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *fl,
                      nghttp2_data_source *src, void *u)
{
    struct rstream *st = stream_of(u, id);
    (void)s;
    (void)src;
    size_t k = DSV4_MIN(len, st->body_len - st->body_off);
    memcpy(buf, st->body + st->body_off, k);
    st->body_off += k;
    if (st->body_off == st->body_len) {
        if (st->end)
            *fl |= NGHTTP2_DATA_FLAG_EOF;
        else if (k == 0)
            return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)k;
}

static int tcp_connect(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    DSV4_ASSERT(fd >= 0);
    DSV4_ASSERT(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    return fd;
}

/* A client session; window < 0: the default initial stream window. */
static struct client *cli_open(int port, int window)
{
    struct client *c = calloc(1, sizeof(*c));
    nghttp2_session_callbacks *cb;
    nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)window}};
    c->fd = tcp_connect(port);
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, c_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame);
    nghttp2_session_client_new(&c->s, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, window >= 0 ? 1 : 0);
    return c;
}

static void cli_close(struct client *c)
{
    nghttp2_session_del(c->s);
    close(c->fd);
    free(c);
}

#define HNV(n, v)                                               \
    {                                                           \
        (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), 0 \
    }

/* Starts a call; extra: NULL-terminated name, value pairs.  body NULL: HEADERS with
 * END_STREAM. */
static struct rstream *cli_call(struct client *c, const char *method, const char *path,
                                const char *ctype, const char **extra, const void *body, size_t len,
                                bool end)
{
    nghttp2_nv nv[16] = {HNV(":method", method),         HNV(":scheme", "http"),
                         HNV(":authority", "127.0.0.1"), HNV(":path", path),
                         HNV("content-type", ctype),     HNV("te", "trailers")};
    size_t n = 6;
    for (int i = 0; extra && extra[i]; i += 2) {
        nghttp2_nv x = HNV(extra[i], extra[i + 1]);
        nv[n++] = x;
    }
    DSV4_ASSERT(c->n < MAXS);
    struct rstream *st = &c->st[c->n++];
    memset(st, 0, sizeof(*st));
    st->http_status = st->grpc_status = -1;
    st->body = body;
    st->body_len = len;
    st->end = end;
    nghttp2_data_provider dp = {.read_callback = c_body};
    st->id = nghttp2_submit_request(c->s, NULL, nv, n, body ? &dp : NULL, c);
    DSV4_ASSERT(st->id > 0);
    return st;
}

/* Pumps the session until done(c, arg) or the timeout; returns done's last value. */
static bool cli_pump(struct client *c, double timeout, bool (*done)(struct client *, void *),
                     void *arg)
{
    double end = dsv4_now() + timeout;
    for (;;) {
        if (nghttp2_session_send(c->s))
            c->eof = true;
        if (done(c, arg))
            return true;
        if (c->eof || dsv4_now() >= end)
            return false;
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, 10) > 0) {
            uint8_t buf[16384];
            ssize_t k = recv(c->fd, buf, sizeof(buf), 0);
            if (k <= 0)
                c->eof = true;
            else if (nghttp2_session_mem_recv(c->s, buf, (size_t)k) < 0)
                c->eof = true;
        }
    }
}

static bool is_closed(struct client *c, void *arg)
{
    (void)c;
    return ((struct rstream *)arg)->closed;
}

static bool has_data(struct client *c, void *arg)
{
    (void)c;
    return ((struct rstream *)arg)->n > 0;
}

static bool is_eof(struct client *c, void *arg)
{
    (void)arg;
    return c->eof;
}

/* Messages in a stream's data; -1 when the framing is broken. */
static int count_messages(const struct rstream *st)
{
    size_t i = 0;
    int n = 0;
    while (i + DSV4_GRPC_PREFIX <= st->n) {
        uint32_t len = (uint32_t)st->data[i + 1] << 24 | (uint32_t)st->data[i + 2] << 16 |
                       (uint32_t)st->data[i + 3] << 8 | st->data[i + 4];
        if (st->data[i] != 0 || i + DSV4_GRPC_PREFIX + len > st->n)
            return -1;
        i += DSV4_GRPC_PREFIX + len;
        n++;
    }
    return i == st->n ? n : -1;
}

/* ---- fixtures */

static struct dsv4_svc *svc;

static struct dsv4_grpc *start(struct dsv4_grpc_opts *o)
{
    struct dsv4_grpc *g;
    o->listen = "127.0.0.1:0";
    if (dsv4_grpc_start(svc, o, &g)) {
        fprintf(stderr, "start: %s\n", dsv4_errmsg());
        exit(1);
    }
    return g;
}

static bool wait_idle(double timeout)
{
    double end = dsv4_now() + timeout;
    while (dsv4_now() < end) {
        if (fake_svc_running(svc) == 0)
            return true;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

static uint8_t framed[1 << 16];

/* A framed GenerateRequest: text prompt, max_new_tokens. */
static size_t gen_body(const char *text, unsigned max)
{
    struct pb sp = {.n = 0}, q = {.n = 0};
    pb_uint(&sp, 9, max);
    pb_str(&q, 2, text);
    pb_msg(&q, 4, &sp);
    dsv4_grpc_prefix(framed, (uint32_t)q.n);
    memcpy(framed + DSV4_GRPC_PREFIX, q.b, q.n);
    return DSV4_GRPC_PREFIX + q.n;
}

#define GRPC "application/grpc"
#define GEN  "/dsv4.Engine/Generate"
#define TOK  "/dsv4.Engine/Tokenize"

/* One normal call on a fresh connection works: the server still serves. */
static bool still_serves(int port)
{
    struct client *c = cli_open(port, -1);
    size_t n = gen_body("hi", 3);
    struct rstream *st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    bool ok = cli_pump(c, 5, is_closed, st) && st->grpc_status == 0 && count_messages(st) == 4;
    cli_close(c);
    return ok;
}

/* A call with a raw body on a fresh connection; returns its grpc-status (or -1). */
static int one_call(int port, const char *method, const char *path, const char *ctype,
                    const char **extra, const void *body, size_t len, bool end, int *http,
                    char *msg, size_t msglen)
{
    struct client *c = cli_open(port, -1);
    struct rstream *st = cli_call(c, method, path, ctype, extra, body, len, end);
    cli_pump(c, 5, is_closed, st);
    int code = st->grpc_status;
    if (http)
        *http = st->http_status;
    if (msg)
        snprintf(msg, msglen, "%s", st->grpc_message);
    cli_close(c);
    return code;
}

/* ---- cases */

static void test_protocol_errors(void)
{
    struct dsv4_grpc_opts o = {.max_message = 1024};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    int http;
    char msg[512];
    uint8_t b[64] = {0};

    CHECK(still_serves(port));
    /* compressed */
    memcpy(b, "\x01\x00\x00\x00\x01x", 6);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 6, true, NULL, msg, sizeof(msg)),
              DSV4_GRPC_UNIMPLEMENTED);
    CHECK(strstr(msg, "compress") != NULL);
    /* a bad flag */
    b[0] = 7;
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 6, true, NULL, NULL, 0),
              DSV4_GRPC_INTERNAL);
    /* a huge length prefix, body never ending: answered early, the rest refused */
    memcpy(b, "\x00\xff\xff\xff\xff", 5);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 64, false, NULL, msg, sizeof(msg)),
              DSV4_GRPC_RESOURCE_EXHAUSTED);
    CHECK(strstr(msg, "4294967295 bytes") != NULL);
    /* just over the limit */
    dsv4_grpc_prefix(b, 1025);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 5, true, NULL, NULL, 0),
              DSV4_GRPC_RESOURCE_EXHAUSTED);
    /* truncated message, two messages, no message */
    dsv4_grpc_prefix(b, 10);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 8, true, NULL, NULL, 0),
              DSV4_GRPC_INTERNAL);
    dsv4_grpc_prefix(b, 0);
    dsv4_grpc_prefix(b + 5, 0);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 10, true, NULL, msg, sizeof(msg)),
              DSV4_GRPC_INTERNAL);
    CHECK(strstr(msg, "more than one") != NULL);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, NULL, 0, true, NULL, NULL, 0),
              DSV4_GRPC_INTERNAL);
    /* an empty message is a valid (empty) TokenizeRequest */
    dsv4_grpc_prefix(b, 0);
    CHECK_INT(one_call(port, "POST", TOK, GRPC, NULL, b, 5, true, NULL, NULL, 0), 0);
    /* GET, other content types */
    CHECK_INT(one_call(port, "GET", TOK, GRPC, NULL, NULL, 0, true, &http, NULL, 0), -1);
    CHECK_INT(http, 405);
    CHECK_INT(one_call(port, "POST", TOK, "text/plain", NULL, b, 5, true, &http, NULL, 0), -1);
    CHECK_INT(http, 415);
    CHECK_INT(
            one_call(port, "POST", TOK, "application/grpc+proto", NULL, b, 5, true, &http, NULL, 0),
            0);
    CHECK_INT(one_call(port, "POST", TOK, "application/grpcx", NULL, b, 5, true, &http, NULL, 0),
              -1);
    /* unknown method: the message comes back percent-decoded */
    CHECK_INT(one_call(port, "POST", "/x/y%z\xc3\xa9", GRPC, NULL, b, 5, true, NULL, msg,
                       sizeof(msg)),
              DSV4_GRPC_UNIMPLEMENTED);
    CHECK_STR(msg, "unknown method /x/y%z\xc3\xa9");
    /* grpc-timeout: malformed values; a long path is just unknown */
    static const char *bad_to[] = {"1x", "", "123456789S", "-1S", "1.5S"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad_to); i++) {
        const char *ex[] = {"grpc-timeout", bad_to[i], NULL};
        CHECKF(one_call(port, "POST", TOK, GRPC, ex, b, 5, true, NULL, NULL, 0) ==
                       DSV4_GRPC_INVALID_ARGUMENT,
               "timeout '%s'", bad_to[i]);
    }
    char longpath[400];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = 0;
    CHECK_INT(one_call(port, "POST", longpath, GRPC, NULL, b, 5, true, NULL, NULL, 0),
              DSV4_GRPC_UNIMPLEMENTED);
    /* headers beyond 16 KiB */
    static char big[20000];
    memset(big, 'v', sizeof(big) - 1);
    const char *ex[] = {"x-big", big, NULL};
    int code = one_call(port, "POST", TOK, GRPC, ex, b, 5, true, NULL, NULL, 0);
    CHECKF(code == DSV4_GRPC_RESOURCE_EXHAUSTED || code == -1, "big headers: %d", code);
    /* bad protobuf, and invalid UTF-8, in a Generate */
    memcpy(b, "\x00\x00\x00\x00\x03\xff\xff\xff", 8);
    CHECK_INT(one_call(port, "POST", GEN, GRPC, NULL, b, 8, true, NULL, NULL, 0),
              DSV4_GRPC_INVALID_ARGUMENT);
    memcpy(b, "\x00\x00\x00\x00\x04\x12\x02\xc0\xaf", 9);
    CHECK_INT(one_call(port, "POST", GEN, GRPC, NULL, b, 9, true, NULL, msg, sizeof(msg)),
              DSV4_GRPC_INVALID_ARGUMENT);
    CHECK(strstr(msg, "UTF-8") != NULL);
    CHECK(still_serves(port));
    CHECK(wait_idle(2));
    dsv4_grpc_stop(g);
}

static void test_deadline_and_cancel(void)
{
    struct dsv4_grpc_opts o = {0};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);

    /* the server enforces grpc-timeout itself (this client does not) */
    const char *ex[] = {"grpc-timeout", "200000u", NULL};
    size_t n = gen_body("p", 3000);
    double t0 = dsv4_now();
    struct client *c = cli_open(port, -1);
    struct rstream *st = cli_call(c, "POST", GEN, GRPC, ex, framed, n, true);
    CHECK(cli_pump(c, 5, is_closed, st));
    CHECK_INT(st->grpc_status, DSV4_GRPC_DEADLINE_EXCEEDED);
    CHECK(count_messages(st) > 0);
    CHECK(dsv4_now() - t0 < 2);
    CHECK(wait_idle(2));
    /* an expired deadline ends the call before any work */
    uint64_t before = fake_svc_submitted(svc);
    const char *zero[] = {"grpc-timeout", "0n", NULL};
    st = cli_call(c, "POST", GEN, GRPC, zero, framed, n, true);
    CHECK(cli_pump(c, 5, is_closed, st));
    CHECK_INT(st->grpc_status, DSV4_GRPC_DEADLINE_EXCEEDED);
    CHECK_INT(fake_svc_submitted(svc), before);
    /* RST_STREAM from the client cancels the request */
    st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    CHECK(cli_pump(c, 5, has_data, st));
    CHECK_INT(fake_svc_running(svc), 1);
    nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    CHECK(cli_pump(c, 5, is_closed, st));
    CHECK(wait_idle(2));
    /* closing the connection cancels too */
    st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    CHECK(cli_pump(c, 5, has_data, st));
    cli_close(c);
    CHECK(wait_idle(2));
    CHECK(still_serves(port));
    dsv4_grpc_stop(g);
}

static void test_concurrent_streams(void)
{
    struct dsv4_grpc_opts o = {.max_streams = 12};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    struct client *c = cli_open(port, -1);

    /* 12 streams at once, each with its own length */
    static size_t lens[MAXS];
    static uint8_t bodies[MAXS][256];
    for (int i = 0; i < 12; i++) {
        lens[i] = gen_body("p", (unsigned)(5 + i));
        memcpy(bodies[i], framed, lens[i]);
        cli_call(c, "POST", GEN, GRPC, NULL, bodies[i], lens[i], true);
    }
    for (int i = 0; i < 12; i++) {
        CHECK(cli_pump(c, 5, is_closed, &c->st[i]));
        CHECK_INT(c->st[i].grpc_status, 0);
        CHECK_INT(count_messages(&c->st[i]), 5 + i + 1);
    }
    cli_close(c);

    /* past the limit: refused (REFUSED_STREAM, which clients retry) */
    c = cli_open(port, -1);
    size_t n = gen_body("p", 3000);
    for (int i = 0; i < 14; i++)
        cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    CHECK(cli_pump(c, 2, has_data, &c->st[11]));
    int refused = 0;
    for (int i = 0; i < 14; i++) {
        cli_pump(c, 0.05, is_closed, &c->st[i]);
        refused += c->st[i].closed && c->st[i].rst == NGHTTP2_REFUSED_STREAM;
    }
    CHECK_INT(refused, 2);
    cli_close(c);
    CHECK(wait_idle(2));
    CHECK(still_serves(port));
    dsv4_grpc_stop(g);
}

static void test_slow_reader(void)
{
    struct dsv4_grpc_opts o = {.max_stream_buffer = 4096};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);

    /* a window of 0: the server cannot send; its buffer fills, the request is cancelled */
    struct client *c = cli_open(port, 0);
    size_t n = gen_body("p", 3000);
    uint64_t before = fake_svc_submitted(svc);
    struct rstream *st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    double t0 = dsv4_now();
    while (dsv4_now() - t0 < 5 && fake_svc_submitted(svc) == before)
        cli_pump(c, 0.01, is_closed, st);
    while (dsv4_now() - t0 < 5 && fake_svc_running(svc) > 0)
        cli_pump(c, 0.01, is_closed, st);
    CHECK_INT(fake_svc_running(svc), 0);
    CHECK(st->n == 0 && !st->closed);
    /* open the window: the buffered output, then RESOURCE_EXHAUSTED */
    nghttp2_submit_window_update(c->s, NGHTTP2_FLAG_NONE, st->id, 1 << 20);
    CHECK(cli_pump(c, 5, is_closed, st));
    CHECK_INT(st->grpc_status, DSV4_GRPC_RESOURCE_EXHAUSTED);
    CHECK(strstr(st->grpc_message, "too slowly") != NULL);
    CHECK(count_messages(st) > 10);
    CHECK(st->n <= 4096 + 64);
    cli_close(c);
    CHECK(still_serves(port));
    dsv4_grpc_stop(g);
}

static bool peer_closed(int fd, double timeout)
{
    double end = dsv4_now() + timeout;
    while (dsv4_now() < end) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 10) > 0) {
            uint8_t buf[4096];
            ssize_t k = recv(fd, buf, sizeof(buf), 0);
            if (k <= 0)
                return true;
        }
    }
    return false;
}

static void test_connections(void)
{
    struct dsv4_grpc_opts o = {
            .max_connections = 3, .handshake_timeout_s = 1.0, .idle_timeout_s = 0.6};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    int fds[5];

    /* no preface: closed after the handshake timeout */
    fds[0] = tcp_connect(port);
    double t0 = dsv4_now();
    CHECK(peer_closed(fds[0], 5));
    CHECK(dsv4_now() - t0 >= 0.9);
    close(fds[0]);
    /* HTTP/1.1 instead of the preface: closed at once */
    fds[0] = tcp_connect(port);
    const char *h1 = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(fds[0], h1, strlen(h1), MSG_NOSIGNAL) > 0);
    t0 = dsv4_now();
    CHECK(peer_closed(fds[0], 3));
    CHECK(dsv4_now() - t0 < 0.8);
    close(fds[0]);
    /* a protocol error after a good preface (DATA on stream 0): GOAWAY and close */
    fds[0] = tcp_connect(port);
    static const uint8_t bad[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                 "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                 "\x00\x00\x03\x00\x01\x00\x00\x00\x00xyz";
    CHECK(send(fds[0], bad, sizeof(bad) - 1, MSG_NOSIGNAL) > 0);
    CHECK(peer_closed(fds[0], 3));
    close(fds[0]);
    /* a frame length past the maximum frame size */
    fds[0] = tcp_connect(port);
    static const uint8_t huge[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                  "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                  "\xff\xff\xff\x00\x00\x00\x00\x00\x01";
    CHECK(send(fds[0], huge, sizeof(huge) - 1, MSG_NOSIGNAL) > 0);
    CHECK(peer_closed(fds[0], 3));
    close(fds[0]);

    /* more connections than allowed: the extras are closed at once */
    for (int i = 0; i < 5; i++)
        fds[i] = tcp_connect(port);
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
    int closed = 0;
    for (int i = 0; i < 5; i++)
        closed += peer_closed(fds[i], 0.02);
    CHECK_INT(closed, 2);
    for (int i = 0; i < 5; i++)
        close(fds[i]);
    /* the three are gone after their handshake timeout; then a call works again */
    struct timespec ts = {0, 900 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CHECK(still_serves(port));

    /* idle: GOAWAY and close after idle_timeout_s without calls */
    struct client *c = cli_open(port, -1);
    size_t n = gen_body("p", 2);
    struct rstream *st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    CHECK(cli_pump(c, 5, is_closed, st));
    t0 = dsv4_now();
    CHECK(cli_pump(c, 3, is_eof, NULL));
    CHECK(c->goaway);
    CHECK(dsv4_now() - t0 >= 0.4);
    cli_close(c);
    dsv4_grpc_stop(g);
}

static void test_rapid_reset(void)
{
    struct dsv4_grpc_opts o = {.max_streams = 8};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    struct client *c = cli_open(port, -1);
    nghttp2_nv nv[] = {HNV(":method", "POST"), HNV(":scheme", "http"),
                       HNV(":authority", "127.0.0.1"), HNV(":path", TOK),
                       HNV("content-type", GRPC)};

    /* streams opened and reset at once, far past the limit of 100 resets a second */
    for (int i = 0; i < 300 && !c->eof; i++) {
        int32_t id = nghttp2_submit_headers(c->s, NGHTTP2_FLAG_NONE, -1, NULL, nv, 5, NULL);
        if (id < 0 || nghttp2_session_send(c->s))
            break;
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
        if (nghttp2_session_send(c->s))
            break;
    }
    CHECK(cli_pump(c, 3, is_eof, NULL));
    CHECK(c->goaway);
    cli_close(c);
    CHECK(still_serves(port));
    dsv4_grpc_stop(g);
}

static void test_keys(void)
{
    struct dsv4_grpc_opts o = {0};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    size_t n = gen_body("p", 2);
    uint64_t before = fake_svc_submitted(svc);
    const char *wrong[] = {"authorization", "Bearer nope", NULL};
    const char *right[] = {"authorization", "Bearer s3cret", NULL};
    uint8_t empty[5] = {0};

    fake_svc_set_keys(svc, "s3cret");
    CHECK_INT(one_call(port, "POST", GEN, GRPC, NULL, framed, n, true, NULL, NULL, 0),
              DSV4_GRPC_UNAUTHENTICATED);
    CHECK_INT(one_call(port, "POST", GEN, GRPC, wrong, framed, n, true, NULL, NULL, 0),
              DSV4_GRPC_UNAUTHENTICATED);
    CHECK_INT(fake_svc_submitted(svc), before);
    CHECK_INT(one_call(port, "POST", GEN, GRPC, right, framed, n, true, NULL, NULL, 0), 0);
    CHECK_INT(one_call(port, "POST", "/grpc.health.v1.Health/Check", GRPC, NULL, empty, 5, true,
                       NULL, NULL, 0),
              0);
    dsv4_grpc_stop(g);

    /* health behind the key too */
    o.health_needs_key = true;
    g = start(&o);
    port = dsv4_grpc_port(g);
    CHECK_INT(one_call(port, "POST", "/grpc.health.v1.Health/Check", GRPC, NULL, empty, 5, true,
                       NULL, NULL, 0),
              DSV4_GRPC_UNAUTHENTICATED);
    CHECK_INT(one_call(port, "POST", "/grpc.health.v1.Health/Check", GRPC, right, empty, 5, true,
                       NULL, NULL, 0),
              0);
    fake_svc_set_keys(svc, NULL);
    dsv4_grpc_stop(g);
}

/* An already listening socket (systemd socket activation) is adopted and left open. */
static void test_listen_fd(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    DSV4_ASSERT(lfd > 0 && bind(lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
    DSV4_ASSERT(getsockname(lfd, (struct sockaddr *)&a, &len) == 0);
    struct dsv4_grpc_opts o = {.listen_fd = lfd};
    struct dsv4_grpc *g;
    /* not listening yet: refused */
    CHECK_INT(dsv4_grpc_start(svc, &o, &g), DSV4_EINVAL);
    DSV4_ASSERT(listen(lfd, 16) == 0);
    CHECK_INT(dsv4_grpc_start(svc, &o, &g), 0);
    CHECK_INT(dsv4_grpc_port(g), ntohs(a.sin_port));
    CHECK(still_serves(dsv4_grpc_port(g)));
    dsv4_grpc_stop(g);
    int acc = 0;
    len = sizeof(acc);
    CHECK(getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc);
    close(lfd);
}

static void *stop_thread(void *g)
{
    dsv4_grpc_stop(g);
    return NULL;
}

static void test_stop(void)
{
    struct dsv4_grpc_opts o = {.drain_timeout_s = 0.3};
    struct dsv4_grpc *g = start(&o);
    int port = dsv4_grpc_port(g);
    struct client *c = cli_open(port, -1);
    size_t n = gen_body("p", 3000);
    struct rstream *st = cli_call(c, "POST", GEN, GRPC, NULL, framed, n, true);
    CHECK(cli_pump(c, 5, has_data, st));

    /* the client must keep reading while the server stops: stop runs on another thread */
    pthread_t th;
    double t0 = dsv4_now();
    CHECK(pthread_create(&th, NULL, stop_thread, g) == 0);
    CHECK(cli_pump(c, 5, is_closed, st));
    CHECK(c->goaway);
    CHECK_INT(st->grpc_status, DSV4_GRPC_UNAVAILABLE);
    CHECK(st->retryable);
    pthread_join(th, NULL);
    CHECK(dsv4_now() - t0 < 3);
    CHECK(wait_idle(2));
    cli_close(c);
    /* the port no longer accepts */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0);
    close(fd);
    /* a stop without calls, and with a bad option */
    struct dsv4_grpc_opts bad = {.listen = "nohost:99999"};
    struct dsv4_grpc *none;
    CHECK_INT(dsv4_grpc_start(svc, &bad, &none), DSV4_EINVAL);
    bad.listen = "127.0.0.1";
    CHECK_INT(dsv4_grpc_start(svc, &bad, &none), DSV4_EINVAL);
    dsv4_grpc_stop(NULL);
}

int main(int argc, char **argv)
{
    alarm(120);
    svc = fake_svc_create(1);
    DSV4_ASSERT(svc != NULL);
    if (argc > 1 && !strcmp(argv[1], "slow")) {
        test_slow_reader();
        TEST_DONE();
    }
    test_protocol_errors();
    test_deadline_and_cancel();
    test_concurrent_streams();
    test_slow_reader();
    test_connections();
    test_rapid_reset();
    test_keys();
    test_listen_fd();
    test_stop();
    CHECK(wait_idle(2));
    fake_svc_destroy(svc);
    TEST_DONE();
}
