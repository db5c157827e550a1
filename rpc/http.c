/*
 * http.c - the HTTP/1.1 server of rpc/http.h: listening socket, one epoll
 * connection loop, request framing, timeouts and output.  The routes are
 * in http_api.c.
 *
 * Why not nng's HTTP server (DESIGN.md names it): nng 1.5 (Debian 12)
 * answers a request only after its handler returns and streams only by
 * hijacking the connection, has no header, body, idle or write timeouts
 * (a slowloris client holds a connection forever), no cap on connections,
 * no way to adopt an inherited listening socket (systemd socket
 * activation), and runs handlers on its shared task pool, where a probe
 * can queue behind request work.  Each of these is a requirement here, and
 * a small HTTP/1.1 server on sockets meets them in one file that we
 * control.  nng remains the control plane between supervisor and workers.
 *
 * Model: one loop thread owns every socket (level-triggered epoll, 100 ms
 * ticks for the timeouts).  It reads and frames requests, answers the
 * probes, /metrics and /v1/models itself (each a few microseconds, never
 * waiting on inference or on the workers), and hands the API requests to
 * the workers of http_api.c.  Output produced elsewhere (workers, the
 * service's event callbacks) is appended to the connection's buffer under
 * its lock and the loop is woken by an eventfd; only the loop writes to
 * sockets.
 *
 * One request per connection is served at a time: while a request is
 * being served the loop stops reading the socket (pipelined requests wait
 * in the kernel and in the input buffer) but keeps watching for the peer
 * hanging up, which cancels the request.  A response that must close the
 * connection (an error before the body was read) shuts down the write
 * side and drains the input for up to two seconds before closing, so the
 * client reads the response instead of a reset.
 *
 * Request framing: the request line and headers (max_header_bytes, at most
 * 100 headers, no obs-fold), a Content-Length or a chunked body (not both,
 * bodies up to max_body_bytes; chunks are decoded as they arrive),
 * "Expect: 100-continue" answered when the body is still to come.
 *
 * Invariants: a loop connection (http_loop_conn) is freed only at the end
 * of a loop iteration (events of the same batch may still name it); the
 * shared part (dsv4_http_conn) when its last reference goes.
 */
#include "rpc/http.h"
#include "rpc/http_int.h"

#include "base/dsv4.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 100
#define OUT_LIMIT \
    (32u << 20) /* unsent output a client may let pile up (one response
                                        may be larger) before it is dropped */
#define LINGER_S        2.0
#define TICK_MS         100
#define READ_CHUNK      (64u << 10)
#define READ_PER_EVENT  (1u << 20)
#define CHUNK_LINE_MAX  1024
#define STOP_WAIT_S     30.0
#define ACCEPT_PAUSE_S  0.1
#define RESPONSE_HEAD_N 512

enum lstate {
    L_WAIT,    /* between requests: nothing of the next one read yet */
    L_HEADERS, /* reading the request line and headers */
    L_BODY,    /* reading the body */
    L_BUSY,    /* the request is being served; input not read */
    L_LINGER,  /* response written, write side shut: draining input before close */
    L_CLOSED
};

struct http_loop_conn {
    struct dsv4_http_conn *c;
    int fd;
    struct http_loop_conn *prev, *next;
    enum lstate st;
    bool fresh; /* no request completed yet: the header deadline runs from accept */
    char *in;
    size_t in_len, in_cap;
    size_t hdr_len; /* request line + headers, once parsed */
    struct http_request rq;
    bool chunked, chunks_done, expect_continue;
    size_t content_length;
    size_t chunk_pos; /* raw offset of the next chunk */
    struct dsv4_strbuf body;
    double deadline;
    double last_write;
    uint32_t events;
};

static int lfd_tag, evfd_tag;
/* The server whose loop runs on this thread (output from the loop needs no wake-up). */
static _Thread_local struct dsv4_http *loop_of_thread;

/* ------------------------------------------------------------ connections */

void dsv4_http_conn_ref(struct dsv4_http_conn *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void dsv4_http_conn_unref(struct dsv4_http_conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->mu);
    dsv4_strbuf_free(&c->out);
    free(c);
}

bool dsv4_http_conn_gone(struct dsv4_http_conn *c)
{
    pthread_mutex_lock(&c->mu);
    bool g = c->gone;
    pthread_mutex_unlock(&c->mu);
    return g;
}

void dsv4_http_count_status(struct dsv4_http *h, int status)
{
    static const int codes[] = {200, 400, 401, 404, 405, 408, 413, 429, 431, 500, 501, 503};
    int idx = (int)DSV4_ARRAY_LEN(codes);
    for (int i = 0; i < (int)DSV4_ARRAY_LEN(codes); i++)
        if (codes[i] == status)
            idx = i;
    dsv4_metric_add(dsv4_metrics_get(h->m, DSV4_MET_HTTP_REQUESTS), idx, 1.0);
}

/* Puts c on the dirty list and wakes the loop (from any thread but the loop's). */
static void mark_dirty(struct dsv4_http_conn *c)
{
    struct dsv4_http *h = c->h;
    if (loop_of_thread == h)
        return; /* the loop flushes after every step */
    bool wake = false;
    pthread_mutex_lock(&h->mu);
    if (!c->dirty) {
        c->dirty = true;
        dsv4_http_conn_ref(c);
        c->dirty_next = h->dirty;
        h->dirty = c;
        wake = true;
    }
    pthread_mutex_unlock(&h->mu);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(h->evfd, &one, sizeof(one));
        (void)n; /* a full counter still wakes the loop */
    }
}

/* Appends output (c->mu held); a client that lets OUT_LIMIT pile up is dropped. */
static void out_put(struct dsv4_http_conn *c, const char *s, size_t n)
{
    if (c->gone)
        return;
    size_t pending = c->out.len - c->out_off;
    if (pending > 0 && pending + n > OUT_LIMIT) {
        dsv4_log(DSV4_LOG_WARN, "http: a client does not read its response; dropping it");
        c->gone = true;
        return;
    }
    dsv4_strbuf_put(&c->out, s, n);
    if (c->out.oom)
        c->gone = true;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

static void put_head(struct dsv4_http_conn *c, int status, const char *ctype, const char *framing,
                     bool close, const char *extra)
{
    char date[64], head[RESPONSE_HEAD_N];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: dsv4d\r\nDate: %s\r\nContent-Type: %s\r\n%s%s",
                     status, reason_phrase(status), date, ctype, framing,
                     close ? "Connection: close\r\n" : "");
    out_put(c, head, (size_t)DSV4_MIN(n, (int)sizeof(head) - 1));
    if (extra)
        out_put(c, extra, strlen(extra));
    out_put(c, "\r\n", 2);
}

void dsv4_http_respond(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                       const char *ctype, const char *body, size_t len, const char *extra)
{
    char framing[64];
    snprintf(framing, sizeof(framing), "Content-Length: %zu\r\n", len);
    pthread_mutex_lock(&c->mu);
    if (!rq->keep_alive)
        c->close_after = true;
    bool keep_10 = !c->close_after && rq->minor == 0;
    char ex[1024];
    snprintf(ex, sizeof(ex), "%s%s", keep_10 ? "Connection: keep-alive\r\n" : "",
             extra ? extra : "");
    put_head(c, status, ctype, framing, c->close_after, ex);
    if (!rq->head && len)
        out_put(c, body, len);
    c->resp_done = true;
    pthread_mutex_unlock(&c->mu);
    dsv4_http_count_status(c->h, status);
    mark_dirty(c);
}

void dsv4_http_respond_error(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                             const char *message, const char *param, const char *code)
{
    struct dsv4_strbuf b = {0};
    dsv4_openai_error_body(&b, status, message, param, code);
    const char *extra = status == 429 || status == 503 ? "Retry-After: 1\r\n" : NULL;
    dsv4_http_respond(c, rq, status, "application/json", b.p ? b.p : "", b.len, extra);
    dsv4_strbuf_free(&b);
}

void dsv4_http_stream_begin(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                            const char *ctype)
{
    pthread_mutex_lock(&c->mu);
    /* HTTP/1.0 has no chunked encoding: the end of the stream is the end of the connection. */
    c->chunked = rq->minor >= 1;
    if (!c->chunked || !rq->keep_alive)
        c->close_after = true;
    put_head(c, status, ctype, c->chunked ? "Transfer-Encoding: chunked\r\n" : "", c->close_after,
             "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    pthread_mutex_unlock(&c->mu);
    dsv4_http_count_status(c->h, status);
    mark_dirty(c);
}

void dsv4_http_stream_data(struct dsv4_http_conn *c, const char *data, size_t len)
{
    if (len == 0)
        return; /* an empty chunk would end the stream */
    pthread_mutex_lock(&c->mu);
    if (c->chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        out_put(c, size, (size_t)n);
        out_put(c, data, len);
        out_put(c, "\r\n", 2);
    } else {
        out_put(c, data, len);
    }
    pthread_mutex_unlock(&c->mu);
    mark_dirty(c);
}

void dsv4_http_stream_end(struct dsv4_http_conn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->chunked)
        out_put(c, "0\r\n\r\n", 5);
    c->resp_done = true;
    pthread_mutex_unlock(&c->mu);
    mark_dirty(c);
}

/* ------------------------------------------------------------ loop connections */

static void set_interest(struct dsv4_http *h, struct http_loop_conn *lc)
{
    if (lc->fd < 0)
        return;
    uint32_t ev = EPOLLRDHUP;
    if (lc->st != L_BUSY)
        ev |= EPOLLIN;
    pthread_mutex_lock(&lc->c->mu);
    if (lc->c->out_off < lc->c->out.len)
        ev |= EPOLLOUT;
    pthread_mutex_unlock(&lc->c->mu);
    if (ev == lc->events)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = lc};
    if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, lc->fd, &e) == 0)
        lc->events = ev;
}

/* Input buffer bytes beyond the first BASE_IN of each connection count against
 * max_buffered_bytes, so that many large uploads at once cannot exhaust memory while a
 * request head always fits. */
#define BASE_IN (2 * READ_CHUNK)

static size_t over_base(size_t cap)
{
    return cap > BASE_IN ? cap - BASE_IN : 0;
}

static bool resize_in(struct dsv4_http *h, struct http_loop_conn *lc, size_t cap)
{
    char *p = realloc(lc->in, cap);
    if (!p)
        return false;
    h->in_bytes = h->in_bytes - over_base(lc->in_cap) + over_base(cap);
    lc->in = p;
    lc->in_cap = cap;
    return true;
}

/* Gives back a large input buffer once its request is done with it. */
static void shrink_in(struct dsv4_http *h, struct http_loop_conn *lc)
{
    if (lc->in_cap > BASE_IN && lc->in_len <= BASE_IN / 2)
        resize_in(h, lc, BASE_IN);
}

static void reset_request(struct http_loop_conn *lc)
{
    free(lc->rq.body);
    memset(&lc->rq, 0, sizeof(lc->rq));
    dsv4_strbuf_free(&lc->body);
    lc->hdr_len = 0;
    lc->chunked = lc->chunks_done = lc->expect_continue = false;
    lc->content_length = 0;
    lc->chunk_pos = 0;
}

static void close_conn(struct dsv4_http *h, struct http_loop_conn *lc)
{
    if (lc->st == L_CLOSED)
        return;
    epoll_ctl(h->epfd, EPOLL_CTL_DEL, lc->fd, NULL);
    close(lc->fd);
    lc->fd = -1;
    lc->st = L_CLOSED;
    struct dsv4_http_conn *c = lc->c;
    uint64_t id = 0;
    pthread_mutex_lock(&c->mu);
    c->gone = true;
    c->lc = NULL;
    bool cancel = c->call && dsv4_http_api_abandon(c->call, &id);
    pthread_mutex_unlock(&c->mu);
    if (cancel)
        h->svc->ops->cancel(h->svc, id);
    if (lc->prev)
        lc->prev->next = lc->next;
    else
        h->conns = lc->next;
    if (lc->next)
        lc->next->prev = lc->prev;
    h->n_conns--;
    h->in_bytes -= over_base(lc->in_cap);
    dsv4_metric_set(dsv4_metrics_get(h->m, DSV4_MET_HTTP_CONNECTIONS), 0, h->n_conns);
    lc->next = h->graveyard;
    h->graveyard = lc;
    dsv4_http_conn_unref(c);
}

static void free_graveyard(struct dsv4_http *h)
{
    while (h->graveyard) {
        struct http_loop_conn *lc = h->graveyard;
        h->graveyard = lc->next;
        reset_request(lc);
        free(lc->in);
        free(lc);
    }
}

/* After the response: shut the write side and drain input for a while. */
static void start_linger(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    shutdown(lc->fd, SHUT_WR);
    lc->st = L_LINGER;
    lc->deadline = now + LINGER_S;
    lc->in_len = 0;
    reset_request(lc);
    shrink_in(h, lc);
    set_interest(h, lc);
}

/* Writes what can be written; finishes the response when all of it is out. */
static void flush(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    struct dsv4_http_conn *c = lc->c;
    bool broken = false;
    pthread_mutex_lock(&c->mu);
    while (!c->gone && c->out_off < c->out.len) {
        ssize_t n = send(lc->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            lc->last_write = now;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            broken = !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            break;
        }
    }
    broken |= c->gone;
    bool all = c->out_off >= c->out.len;
    if (all) {
        c->out.len = c->out_off = 0;
        lc->last_write = now;
    } else if (c->out_off > (1u << 20) && c->out_off > c->out.len / 2) {
        memmove(c->out.p, c->out.p + c->out_off, c->out.len - c->out_off);
        c->out.len -= c->out_off;
        c->out_off = 0;
    }
    bool finished = all && c->resp_done && !c->call;
    bool close_after = c->close_after;
    if (finished) {
        c->resp_done = false;
        c->close_after = false;
        c->chunked = false;
    }
    pthread_mutex_unlock(&c->mu);
    if (broken) {
        close_conn(h, lc);
        return;
    }
    if (finished && lc->st == L_BUSY) {
        if (close_after) {
            start_linger(h, lc, now);
            return;
        }
        reset_request(lc);
        shrink_in(h, lc);
        lc->st = L_WAIT;
        lc->fresh = false;
        lc->deadline = now + h->o.idle_timeout_s;
    }
}

/* An answer from the loop itself (framing errors, 401/404/405/413 before the body). */
static void early_response(struct dsv4_http *h, struct http_loop_conn *lc, int status,
                           const char *message, const char *code, bool close, const char *allow)
{
    struct http_request rq = lc->rq;
    rq.keep_alive = rq.keep_alive && !close;
    rq.body = NULL;
    if (allow) {
        char extra[128];
        snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
        struct dsv4_strbuf b = {0};
        dsv4_openai_error_body(&b, status, message, NULL, code);
        dsv4_http_respond(lc->c, &rq, status, "application/json", b.p ? b.p : "", b.len, extra);
        dsv4_strbuf_free(&b);
    } else {
        dsv4_http_respond_error(lc->c, &rq, status, message, NULL, code);
    }
    lc->st = L_BUSY;
}

/* ------------------------------------------------------------ request parsing */

static bool is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* End of the head (after the blank line), or 0 when not complete.  Lines end in CRLF
 * or a bare LF. */
static size_t head_end(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\n')
            continue;
        if (s[i + 1] == '\n')
            return i + 2;
        if (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static bool lower_eq(const char *a, size_t n, const char *b)
{
    return strlen(b) == n && !strncasecmp(a, b, n);
}

/* Comma-separated tokens of a header value include `tok` (case-insensitive). */
static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t e = j;
        while (e > i && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (lower_eq(v + i, e - i, tok))
            return true;
        i = j;
    }
    return false;
}

struct head_info {
    char method[16];
    char path[2048];
    bool has_cl;
    int status; /* 0 or the error to answer */
    const char *message;
};

static int head_fail(struct head_info *hi, int status, const char *message)
{
    hi->status = status;
    hi->message = message;
    return status;
}

static int parse_header(struct http_loop_conn *lc, struct head_info *hi, const char *name,
                        size_t nlen, const char *v, size_t vlen)
{
    if (lower_eq(name, nlen, "content-length")) {
        if (vlen == 0 || vlen > 18)
            return head_fail(hi, 400, "bad Content-Length");
        size_t cl = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9')
                return head_fail(hi, 400, "bad Content-Length");
            cl = cl * 10 + (size_t)(v[i] - '0');
        }
        if (hi->has_cl && cl != lc->content_length)
            return head_fail(hi, 400, "conflicting Content-Length headers");
        hi->has_cl = true;
        lc->content_length = cl;
    } else if (lower_eq(name, nlen, "transfer-encoding")) {
        if (!lower_eq(v, vlen, "chunked"))
            return head_fail(hi, 501, "only the chunked transfer coding is supported");
        lc->chunked = true;
    } else if (lower_eq(name, nlen, "connection")) {
        if (has_token(v, vlen, "close"))
            lc->rq.keep_alive = false;
        else if (has_token(v, vlen, "keep-alive"))
            lc->rq.keep_alive = true;
    } else if (lower_eq(name, nlen, "expect")) {
        if (!lower_eq(v, vlen, "100-continue"))
            return head_fail(hi, 417, "only Expect: 100-continue is supported");
        lc->expect_continue = true;
    } else if (lower_eq(name, nlen, "authorization")) {
        lc->rq.has_key = true;
        lc->rq.key[0] = 0;
        if (vlen > 7 && !strncasecmp(v, "bearer ", 7)) {
            size_t i = 7;
            while (i < vlen && v[i] == ' ')
                i++;
            size_t k = DSV4_MIN(vlen - i, sizeof(lc->rq.key) - 1);
            memcpy(lc->rq.key, v + i, k);
            lc->rq.key[k] = 0;
        }
    } else if (lower_eq(name, nlen, "x-request-id")) {
        if (vlen < sizeof(lc->rq.request_id)) {
            bool ok = true;
            for (size_t i = 0; i < vlen; i++)
                ok &= v[i] > ' ' && v[i] < 0x7f;
            if (ok) {
                memcpy(lc->rq.request_id, v, vlen);
                lc->rq.request_id[vlen] = 0;
            }
        }
    }
    return 0;
}

/* Parses the head in->[0..hdr_len): 0, or an HTTP status (hi->message says why). */
static int parse_head(struct http_loop_conn *lc, struct head_info *hi)
{
    const char *s = lc->in, *end = lc->in + lc->hdr_len;
    const char *eol = memchr(s, '\n', (size_t)(end - s));
    size_t llen = (size_t)(eol - s);
    if (llen && s[llen - 1] == '\r')
        llen--;
    /* METHOD SP TARGET SP HTTP/1.x */
    const char *sp1 = memchr(s, ' ', llen);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', llen - (size_t)(sp1 + 1 - s)) : NULL;
    if (!sp1 || !sp2 || sp1 == s || sp2 == sp1 + 1)
        return head_fail(hi, 400, "malformed request line");
    size_t mlen = (size_t)(sp1 - s), tlen = (size_t)(sp2 - sp1 - 1);
    size_t vlen = llen - (size_t)(sp2 + 1 - s);
    if (mlen >= sizeof(hi->method))
        return head_fail(hi, 501, "unknown method");
    for (size_t i = 0; i < mlen; i++)
        if (!is_tchar(s[i]))
            return head_fail(hi, 400, "malformed request line");
    memcpy(hi->method, s, mlen);
    hi->method[mlen] = 0;
    if (tlen >= sizeof(hi->path) || sp1[1] != '/')
        return head_fail(hi, tlen >= sizeof(hi->path) ? 431 : 400, "bad request target");
    for (size_t i = 0; i < tlen; i++)
        if ((unsigned char)sp1[1 + i] <= ' ' || sp1[1 + i] == 0x7f)
            return head_fail(hi, 400, "bad request target");
    memcpy(hi->path, sp1 + 1, tlen);
    hi->path[tlen] = 0;
    char *q = strchr(hi->path, '?');
    if (q)
        *q = 0;
    if (vlen == 8 && !memcmp(sp2 + 1, "HTTP/1.", 7) && (sp2[8] == '0' || sp2[8] == '1'))
        lc->rq.minor = sp2[8] - '0';
    else
        return head_fail(hi, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
    lc->rq.keep_alive = lc->rq.minor >= 1;
    /* headers */
    int count = 0;
    for (const char *p = eol + 1; p < end;) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)(e - p);
        const char *next = e + 1;
        if (n && p[n - 1] == '\r')
            n--;
        if (n == 0)
            break;
        if (++count > MAX_HEADERS)
            return head_fail(hi, 431, "too many header fields");
        if (p[0] == ' ' || p[0] == '\t')
            return head_fail(hi, 400, "folded header lines are not accepted");
        const char *colon = memchr(p, ':', n);
        if (!colon || colon == p)
            return head_fail(hi, 400, "malformed header field");
        for (const char *k = p; k < colon; k++)
            if (!is_tchar(*k))
                return head_fail(hi, 400, "malformed header field name");
        const char *v = colon + 1, *ve = p + n;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *k = v; k < ve; k++)
            if (((unsigned char)*k < ' ' && *k != '\t') || *k == 0x7f)
                return head_fail(hi, 400, "control character in a header field");
        int rc = parse_header(lc, hi, p, (size_t)(colon - p), v, (size_t)(ve - v));
        if (rc)
            return rc;
        p = next;
    }
    if (lc->chunked && (hi->has_cl || lc->rq.minor == 0))
        return head_fail(hi, 400, "chunked with Content-Length, or chunked in HTTP/1.0");
    return 0;
}

/* Decodes the chunks that have arrived: 1 when the body is complete, 0 when more input
 * is needed, or an HTTP status on malformed framing (400) or an oversized body (413). */
static int dechunk(struct dsv4_http *h, struct http_loop_conn *lc)
{
    for (;;) {
        const char *p = lc->in + lc->chunk_pos;
        size_t n = lc->in_len - lc->chunk_pos;
        const char *nl = memchr(p, '\n', n);
        if (!nl)
            return n > CHUNK_LINE_MAX ? 400 : 0;
        size_t size = 0, i = 0, digits = 0;
        for (; i < (size_t)(nl - p); i++) {
            char ch = p[i];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0)
                break;
            if (++digits > 15)
                return 413;
            size = size * 16 + (size_t)d;
        }
        if (digits == 0 || (i < (size_t)(nl - p) && p[i] != ';' && p[i] != '\r' && p[i] != ' '))
            return 400;
        size_t line = (size_t)(nl - p) + 1;
        if (size == 0) {
            /* trailers: skip header lines up to the blank line */
            size_t t = line;
            for (;;) {
                const char *tl = memchr(p + t, '\n', n - t);
                if (!tl)
                    return n - t > (size_t)h->o.max_header_bytes ? 400 : 0;
                size_t ll = (size_t)(tl - (p + t));
                t += ll + 1;
                if (ll == 0 || (ll == 1 && p[t - 2] == '\r')) {
                    lc->chunk_pos += t;
                    lc->chunks_done = true;
                    return 1;
                }
            }
        }
        if (lc->body.len + size > h->o.max_body_bytes)
            return 413;
        if (n < line + size + 1)
            return 0;
        const char *d = p + line;
        size_t tail = d[size] == '\n' ? 1 : (n >= line + size + 2 && d[size] == '\r' ? 2 : 0);
        if (tail == 0)
            return n >= line + size + 2 ? 400 : 0;
        if (tail == 2 && d[size + 1] != '\n')
            return 400;
        dsv4_strbuf_put(&lc->body, d, size);
        if (lc->body.oom)
            return 413;
        lc->chunk_pos += line + size + tail;
    }
}

static void consume(struct http_loop_conn *lc, size_t n)
{
    memmove(lc->in, lc->in + n, lc->in_len - n);
    lc->in_len -= n;
}

/* The head is complete: route, check the key and the size, then read the body. */
static bool on_head(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    struct head_info hi = {0};
    bool has_body;
    if (parse_head(lc, &hi)) {
        early_response(h, lc, hi.status, hi.message, NULL, true, NULL);
        return true;
    }
    has_body = lc->chunked || lc->content_length > 0;
    int status = 0;
    const char *allow = NULL;
    if (!dsv4_http_api_route(hi.method, hi.path, &lc->rq.route, &lc->rq.head, &status, &allow)) {
        early_response(h, lc, status,
                       status == 405 ? "method not allowed on this path" : "no such route",
                       status == 405 ? "method_not_allowed" : "not_found", has_body, allow);
        if (!has_body)
            consume(lc, lc->hdr_len);
        return true;
    }
    if (dsv4_http_api_needs_key(h, lc->rq.route) &&
        !h->svc->ops->authorize(h->svc, lc->rq.has_key ? lc->rq.key : NULL,
                                lc->rq.has_key ? strlen(lc->rq.key) : 0)) {
        early_response(h, lc, 401,
                       lc->rq.has_key ? "invalid API key"
                                      : "an API key is required (Authorization: Bearer KEY)",
                       "invalid_api_key", has_body, NULL);
        if (!has_body)
            consume(lc, lc->hdr_len);
        return true;
    }
    if (lc->content_length > h->o.max_body_bytes) {
        char msg[128];
        snprintf(msg, sizeof(msg), "the request body of %zu bytes exceeds the limit of %zu",
                 lc->content_length, h->o.max_body_bytes);
        early_response(h, lc, 413, msg, "request_too_large", true, NULL);
        return true;
    }
    lc->st = L_BODY;
    lc->chunk_pos = lc->hdr_len;
    lc->deadline = now + h->o.body_timeout_s;
    bool complete = !lc->chunked && lc->in_len - lc->hdr_len >= lc->content_length;
    if (lc->expect_continue && has_body && !complete && lc->in_len == lc->hdr_len) {
        pthread_mutex_lock(&lc->c->mu);
        out_put(lc->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        pthread_mutex_unlock(&lc->c->mu);
    }
    return true;
}

/* The body is complete: hand the request over. */
static void on_body(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    size_t used;
    if (lc->chunked) {
        lc->rq.body_len = lc->body.len;
        lc->rq.body = lc->body.p;
        lc->body.p = NULL;
        lc->body.len = lc->body.cap = 0;
        used = lc->chunk_pos;
    } else {
        lc->rq.body_len = lc->content_length;
        lc->rq.body = lc->content_length ? malloc(lc->content_length + 1) : NULL;
        if (lc->content_length && !lc->rq.body) {
            early_response(h, lc, 500, "out of memory", NULL, true, NULL);
            return;
        }
        if (lc->rq.body) {
            memcpy(lc->rq.body, lc->in + lc->hdr_len, lc->content_length);
            lc->rq.body[lc->content_length] = 0;
        }
        used = lc->hdr_len + lc->content_length;
    }
    consume(lc, used);
    shrink_in(h, lc);
    lc->rq.t_arrive = now;
    lc->st = L_BUSY;
    dsv4_http_api_dispatch(h, lc->c, &lc->rq);
}

/* One step of framing; false when more input is needed. */
static bool parse_step(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    if (lc->st == L_HEADERS) {
        /* blank lines before a request line are ignored (RFC 9112 section 2.2) */
        size_t skip = 0;
        while (skip < lc->in_len && (lc->in[skip] == '\r' || lc->in[skip] == '\n'))
            skip++;
        if (skip)
            consume(lc, skip);
        size_t e = head_end(lc->in, lc->in_len);
        if (!e || e > h->o.max_header_bytes) {
            if (lc->in_len > h->o.max_header_bytes) {
                early_response(h, lc, 431, "the request head is too large", NULL, true, NULL);
                return true;
            }
            return false;
        }
        lc->hdr_len = e;
        return on_head(h, lc, now);
    }
    if (lc->st == L_BODY) {
        if (lc->chunked) {
            int rc = dechunk(h, lc);
            if (rc == 0) {
                /* drop the decoded chunks' bytes: the raw body may be larger than the limit */
                memmove(lc->in + lc->hdr_len, lc->in + lc->chunk_pos, lc->in_len - lc->chunk_pos);
                lc->in_len -= lc->chunk_pos - lc->hdr_len;
                lc->chunk_pos = lc->hdr_len;
                return false;
            }
            if (rc != 1) {
                early_response(h, lc, rc,
                               rc == 413 ? "the request body exceeds the limit"
                                         : "malformed chunked body",
                               rc == 413 ? "request_too_large" : NULL, true, NULL);
                return true;
            }
        } else if (lc->in_len - lc->hdr_len < lc->content_length) {
            return false;
        }
        on_body(h, lc, now);
        return true;
    }
    return false;
}

/* Flush, frame and dispatch as far as the buffered bytes allow. */
static void drive(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    for (;;) {
        flush(h, lc, now);
        if (lc->st == L_CLOSED || lc->st == L_LINGER)
            return;
        if (lc->st == L_WAIT && lc->in_len > 0) {
            lc->st = L_HEADERS;
            if (!lc->fresh)
                lc->deadline = now + h->o.header_timeout_s;
        }
        if ((lc->st != L_HEADERS && lc->st != L_BODY) || !parse_step(h, lc, now))
            break;
    }
    set_interest(h, lc);
}

static void on_readable(struct dsv4_http *h, struct http_loop_conn *lc, double now)
{
    size_t limit = h->o.max_header_bytes + h->o.max_body_bytes + 2 * READ_CHUNK;
    size_t got = 0;
    while (got < READ_PER_EVENT) {
        if (lc->st == L_LINGER)
            lc->in_len = 0;
        if (lc->in_cap - lc->in_len < READ_CHUNK) {
            if (lc->in_len >= limit)
                break; /* framing answers before this can be reached */
            size_t cap = lc->in_cap ? 2 * lc->in_cap : BASE_IN;
            cap = DSV4_MIN(DSV4_MAX(cap, lc->in_len + READ_CHUNK), limit);
            if (h->in_bytes - over_base(lc->in_cap) + over_base(cap) > h->o.max_buffered_bytes) {
                dsv4_log(DSV4_LOG_WARN, "http: %zu bytes of requests buffered: refusing more",
                         h->in_bytes);
                early_response(h, lc, 503, "the server is receiving too many large requests",
                               "buffers_full", true, NULL);
                drive(h, lc, now);
                return;
            }
            if (!resize_in(h, lc, cap)) {
                close_conn(h, lc);
                return;
            }
        }
        ssize_t n = recv(lc->fd, lc->in + lc->in_len, lc->in_cap - lc->in_len, 0);
        if (n > 0) {
            lc->in_len += (size_t)n;
            got += (size_t)n;
            if (lc->st == L_WAIT) {
                lc->st = L_HEADERS;
                if (!lc->fresh)
                    lc->deadline = now + h->o.header_timeout_s;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        close_conn(h, lc); /* EOF or error */
        return;
    }
    if (lc->st != L_LINGER)
        drive(h, lc, now);
}

/* ------------------------------------------------------------ accept, timeouts */

static void reject_over_cap(struct dsv4_http *h, int fd)
{
    static const char body[] = "{\"error\": {\"message\": \"too many connections\", \"type\": "
                               "\"service_unavailable_error\", \"param\": null, \"code\": 503}}";
    char resp[512];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 503 Service Unavailable\r\nServer: dsv4d\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n"
                     "Retry-After: 1\r\n\r\n%s",
                     sizeof(body) - 1, body);
    ssize_t w = send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    close(fd);
    dsv4_metric_add(dsv4_metrics_get(h->m, DSV4_MET_HTTP_REJECTED), 0, 1.0);
    dsv4_http_count_status(h, 503);
}

static void on_accept(struct dsv4_http *h, double now)
{
    for (;;) {
        int fd = accept4(h->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: stop polling the listener for a moment */
                struct epoll_event e = {.events = 0, .data.ptr = &lfd_tag};
                epoll_ctl(h->epfd, EPOLL_CTL_MOD, h->lfd, &e);
                h->accept_resume = now + ACCEPT_PAUSE_S;
                dsv4_log(DSV4_LOG_WARN, "http: accept: %s", strerror(errno));
            }
            return;
        }
        if (h->n_conns >= h->o.max_connections) {
            reject_over_cap(h, fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct http_loop_conn *lc = calloc(1, sizeof(*lc));
        struct dsv4_http_conn *c = lc ? calloc(1, sizeof(*c)) : NULL;
        if (!c) {
            free(lc);
            close(fd);
            continue;
        }
        c->h = h;
        atomic_init(&c->refs, 1);
        pthread_mutex_init(&c->mu, NULL);
        c->lc = lc;
        lc->c = c;
        lc->fd = fd;
        lc->st = L_WAIT;
        lc->fresh = true;
        lc->deadline = now + h->o.header_timeout_s;
        lc->last_write = now;
        lc->events = EPOLLIN | EPOLLRDHUP;
        struct epoll_event e = {.events = lc->events, .data.ptr = lc};
        if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &e)) {
            close(fd);
            pthread_mutex_destroy(&c->mu);
            free(c);
            free(lc);
            continue;
        }
        lc->next = h->conns;
        if (h->conns)
            h->conns->prev = lc;
        h->conns = lc;
        h->n_conns++;
        dsv4_metric_set(dsv4_metrics_get(h->m, DSV4_MET_HTTP_CONNECTIONS), 0, h->n_conns);
    }
}

static void sweep(struct dsv4_http *h, double now)
{
    if (h->accept_resume > 0 && now >= h->accept_resume) {
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &lfd_tag};
        epoll_ctl(h->epfd, EPOLL_CTL_MOD, h->lfd, &e);
        h->accept_resume = 0;
    }
    struct http_loop_conn *next;
    for (struct http_loop_conn *lc = h->conns; lc; lc = next) {
        next = lc->next;
        switch (lc->st) {
        case L_WAIT:
        case L_LINGER:
            if (now > lc->deadline)
                close_conn(h, lc);
            break;
        case L_HEADERS:
        case L_BODY:
            if (now > lc->deadline) {
                early_response(h, lc, 408,
                               lc->st == L_HEADERS ? "the request head took too long"
                                                   : "the request body took too long",
                               "timeout", true, NULL);
                drive(h, lc, now);
            }
            break;
        case L_BUSY: {
            pthread_mutex_lock(&lc->c->mu);
            bool pending = lc->c->out_off < lc->c->out.len;
            pthread_mutex_unlock(&lc->c->mu);
            if (pending && now - lc->last_write > h->o.write_timeout_s) {
                dsv4_log(DSV4_LOG_WARN, "http: a client stopped reading for %.0f s; closing",
                         h->o.write_timeout_s);
                close_conn(h, lc);
            }
            break;
        }
        default:
            break;
        }
    }
}

static void on_dirty(struct dsv4_http *h, double now)
{
    uint64_t v;
    ssize_t r = read(h->evfd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&h->mu);
    struct dsv4_http_conn *list = h->dirty;
    h->dirty = NULL;
    pthread_mutex_unlock(&h->mu);
    while (list) {
        struct dsv4_http_conn *c = list;
        /* c->dirty stays set until its link is read: a producer re-marking c meanwhile
         * would otherwise relink it into the new list under our feet */
        pthread_mutex_lock(&h->mu);
        list = c->dirty_next;
        c->dirty = false;
        pthread_mutex_unlock(&h->mu);
        struct http_loop_conn *lc = c->lc; /* NULL once closed (set by the loop only) */
        if (lc && lc->st != L_CLOSED)
            drive(h, lc, now);
        dsv4_http_conn_unref(c);
    }
}

static bool stopping(struct dsv4_http *h)
{
    pthread_mutex_lock(&h->mu);
    bool s = h->stopping;
    pthread_mutex_unlock(&h->mu);
    return s;
}

static void *loop_main(void *arg)
{
    struct dsv4_http *h = arg;
    struct epoll_event evs[64];
    double next_sweep = 0;
    loop_of_thread = h;
    while (!stopping(h)) {
        int n = epoll_wait(h->epfd, evs, (int)DSV4_ARRAY_LEN(evs), TICK_MS);
        double now = dsv4_now();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            uint32_t ev = evs[i].events;
            if (p == &lfd_tag) {
                on_accept(h, now);
                continue;
            }
            if (p == &evfd_tag) {
                on_dirty(h, now);
                continue;
            }
            struct http_loop_conn *lc = p;
            if (lc->st == L_CLOSED)
                continue;
            if (ev & EPOLLERR) {
                close_conn(h, lc);
                continue;
            }
            if (lc->st != L_BUSY && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
                on_readable(h, lc, now);
                continue;
            }
            if (lc->st == L_BUSY && (ev & (EPOLLRDHUP | EPOLLHUP))) {
                close_conn(h, lc); /* the client went away: its request is cancelled */
                continue;
            }
            if (ev & EPOLLOUT)
                drive(h, lc, now);
        }
        if (now >= next_sweep) {
            sweep(h, now);
            next_sweep = now + TICK_MS / 1000.0;
        }
        free_graveyard(h);
    }
    while (h->conns)
        close_conn(h, h->conns);
    free_graveyard(h);
    return NULL;
}

/* ------------------------------------------------------------ start, stop */

static int parse_listen(const char *s, char *host, size_t hsize, char *port, size_t psize)
{
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= psize)
        return dsv4_error(DSV4_EINVAL, "http: listen address '%s' is not HOST:PORT", s);
    size_t hl = (size_t)(colon - s);
    const char *hs = s;
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        hs++;
        hl -= 2;
    }
    if (hl >= hsize)
        return dsv4_error(DSV4_EINVAL, "http: listen host too long in '%s'", s);
    memcpy(host, hs, hl);
    host[hl] = 0;
    snprintf(port, psize, "%s", colon + 1);
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9')
            return dsv4_error(DSV4_EINVAL, "http: bad port in listen address '%s'", s);
    if (atol(port) > 65535)
        return dsv4_error(DSV4_EINVAL, "http: port out of range in listen address '%s'", s);
    return 0;
}

static int open_listener(struct dsv4_http *h)
{
    if (h->o.listen_fd > 0) {
        int acc = 0;
        socklen_t l = sizeof(acc);
        if (getsockopt(h->o.listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) || !acc)
            return dsv4_error(DSV4_EINVAL, "http: descriptor %d is not a listening socket",
                              h->o.listen_fd);
        int fl = fcntl(h->o.listen_fd, F_GETFL);
        if (fl < 0 || fcntl(h->o.listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return dsv4_error(DSV4_EIO, "http: descriptor %d: %s", h->o.listen_fd, strerror(errno));
        h->lfd = h->o.listen_fd;
        h->own_lfd = false;
    } else {
        char host[256], port[16];
        int rc = parse_listen(h->listen, host, sizeof(host), port, sizeof(port));
        if (rc)
            return rc;
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *res = NULL;
        int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
        if (gai)
            return dsv4_error(DSV4_EINVAL, "http: cannot resolve '%s': %s", h->listen,
                              gai_strerror(gai));
        int err = 0;
        h->lfd = -1;
        for (struct addrinfo *a = res; a && h->lfd < 0; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            a->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 1024)) {
                err = errno;
                close(fd);
                continue;
            }
            h->lfd = fd;
        }
        freeaddrinfo(res);
        if (h->lfd < 0)
            return dsv4_error(DSV4_EIO, "http: cannot listen on %s: %s", h->listen, strerror(err));
        h->own_lfd = true;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(h->lfd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return 0;
}

static void defaults(struct dsv4_http_opts *o)
{
    if (!o->max_body_bytes)
        o->max_body_bytes = 16u << 20;
    if (!o->max_header_bytes)
        o->max_header_bytes = 16u << 10;
    if (!(o->header_timeout_s > 0))
        o->header_timeout_s = 10;
    if (!(o->body_timeout_s > 0))
        o->body_timeout_s = 60;
    if (!(o->idle_timeout_s > 0))
        o->idle_timeout_s = 60;
    if (!(o->write_timeout_s > 0))
        o->write_timeout_s = 60;
    if (o->max_connections <= 0)
        o->max_connections = 1024;
    if (!o->max_buffered_bytes)
        o->max_buffered_bytes =
                DSV4_MAX((size_t)256 << 20, 2 * (o->max_body_bytes + o->max_header_bytes));
    if (o->threads <= 0)
        o->threads = 2;
    o->threads = DSV4_MIN(o->threads, 64);
    if (!(o->request_timeout_s > 0))
        o->request_timeout_s = 0;
}

static void server_free(struct dsv4_http *h)
{
    if (h->epfd >= 0)
        close(h->epfd);
    if (h->evfd >= 0)
        close(h->evfd);
    if (h->own_lfd && h->lfd >= 0)
        close(h->lfd);
    pthread_cond_destroy(&h->job_cv);
    pthread_cond_destroy(&h->idle_cv);
    pthread_mutex_destroy(&h->mu);
    free(h->workers);
    free(h);
}

int dsv4_http_start(struct dsv4_svc *svc, struct dsv4_metrics *m, const struct dsv4_http_opts *o,
                    struct dsv4_http **out)
{
    *out = NULL;
    if (!svc || !svc->ops)
        return dsv4_error(DSV4_EINVAL, "http: no service");
    struct dsv4_http *h = calloc(1, sizeof(*h));
    if (!h)
        return dsv4_error(DSV4_ENOMEM, "http: out of memory");
    h->svc = svc;
    h->m = m;
    if (o)
        h->o = *o;
    defaults(&h->o);
    snprintf(h->listen, sizeof(h->listen), "%s", h->o.listen ? h->o.listen : "127.0.0.1:8080");
    h->o.listen = h->listen;
    if (h->o.model_name)
        snprintf(h->model_name, sizeof(h->model_name), "%s", h->o.model_name);
    h->o.model_name = h->o.model_name ? h->model_name : NULL;
    h->lfd = h->epfd = h->evfd = -1;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->job_cv, NULL);
    pthread_cond_init(&h->idle_cv, NULL);
    int rc = open_listener(h);
    if (rc) {
        server_free(h);
        return rc;
    }
    /* logged before any thread of ours runs: the log's lazy setup is not thread-safe */
    dsv4_log(DSV4_LOG_INFO, "http: listening on port %d", h->port);
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    h->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = &lfd_tag};
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &evfd_tag};
    if (h->epfd < 0 || h->evfd < 0 || epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->lfd, &el) ||
        epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->evfd, &ee)) {
        rc = dsv4_error(DSV4_EIO, "http: epoll: %s", strerror(errno));
        server_free(h);
        return rc;
    }
    if ((rc = dsv4_http_api_start(h))) {
        server_free(h);
        return rc;
    }
    if (pthread_create(&h->loop, NULL, loop_main, h)) {
        dsv4_http_api_stop(h, 0);
        server_free(h);
        return dsv4_error(DSV4_EIO, "http: cannot start the connection thread");
    }
    h->loop_started = true;
    *out = h;
    return 0;
}

int dsv4_http_port(const struct dsv4_http *h)
{
    return h ? h->port : 0;
}

void dsv4_http_stop(struct dsv4_http *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stopping = true;
    pthread_mutex_unlock(&h->mu);
    uint64_t one = 1;
    ssize_t w = write(h->evfd, &one, sizeof(one));
    (void)w;
    pthread_join(h->loop, NULL);
    h->loop_started = false;
    if (h->own_lfd && h->lfd >= 0) {
        close(h->lfd);
        h->lfd = -1;
    }
    if (!dsv4_http_api_stop(h, STOP_WAIT_S)) {
        dsv4_log(DSV4_LOG_ERROR,
                 "http: requests did not end within %.0f s of their "
                 "cancellation; the server's memory is left allocated",
                 STOP_WAIT_S);
        return;
    }
    pthread_mutex_lock(&h->mu);
    struct dsv4_http_conn *list = h->dirty;
    h->dirty = NULL;
    pthread_mutex_unlock(&h->mu);
    while (list) {
        struct dsv4_http_conn *c = list;
        list = c->dirty_next;
        dsv4_http_conn_unref(c);
    }
    server_free(h);
}
