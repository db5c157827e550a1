/*
 * bench_serve_http.c - the HTTP/1.1 client of `dsv4 bench serve`
 * (tools/bench_serve.h): URLs, an incremental response parser, keep-alive
 * connections over plain sockets with a deadline per request, and the
 * server-sent-events parser that streamed completions arrive in.
 *
 * Why hand-written: the benchmark must time the arrival of each streamed
 * event itself (TTFT, inter-token latency), so bytes go from recv() through
 * the parsers to the caller without buffering a whole response; and the
 * project takes no HTTP client library.
 *
 * Invariants: a connection serves one request at a time (no pipelining);
 * after a response that is not complete and reusable the socket is closed,
 * so the next request never reads a previous answer's bytes.  Every wait
 * (connect, send, recv) is a poll() bounded by the request's deadline.
 * Writes use MSG_NOSIGNAL: a server that hangs up never raises SIGPIPE.
 * The parsers bound every line (DSV4_BENCH_LINE_MAX, DSV4_BENCH_SSE_MAX)
 * and reject what RFC 9112 forbids and this client cannot frame (a
 * transfer coding other than chunked, two different Content-Lengths).
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------ URLs */

int dsv4_bench_url_parse(const char *url, struct dsv4_bench_url *out)
{
    memset(out, 0, sizeof(*out));
    if (!url || !*url)
        return dsv4_error(DSV4_EINVAL, "empty URL");
    const char *s = url;
    const char *scheme_end = strstr(s, "://");
    if (scheme_end) {
        size_t n = (size_t)(scheme_end - s);
        if (n != 4 || strncasecmp(s, "http", 4))
            return dsv4_error(DSV4_ENOTSUP, "URL '%s': only http:// is supported", url);
        s = scheme_end + 3;
    }
    const char *h_end;
    if (*s == '[') {
        h_end = strchr(s, ']');
        if (!h_end)
            return dsv4_error(DSV4_EINVAL, "URL '%s': unterminated [IPv6] host", url);
        if ((size_t)(h_end - s - 1) >= sizeof(out->host) || h_end == s + 1)
            return dsv4_error(DSV4_EINVAL, "URL '%s': bad host", url);
        memcpy(out->host, s + 1, (size_t)(h_end - s - 1));
        h_end++;
    } else {
        h_end = s + strcspn(s, ":/?#");
        if (h_end == s || (size_t)(h_end - s) >= sizeof(out->host))
            return dsv4_error(DSV4_EINVAL, "URL '%s': missing or overlong host", url);
        memcpy(out->host, s, (size_t)(h_end - s));
    }
    for (const char *c = out->host; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == '@')
            return dsv4_error(DSV4_EINVAL, "URL '%s': bad character in the host", url);
    s = h_end;
    strcpy(out->port, "80");
    if (*s == ':') {
        s++;
        size_t n = strspn(s, "0123456789");
        long port = n && n <= 5 ? strtol(s, NULL, 10) : 0;
        if (port < 1 || port > 65535)
            return dsv4_error(DSV4_EINVAL, "URL '%s': bad port", url);
        snprintf(out->port, sizeof(out->port), "%ld", port);
        s += n;
    }
    if (*s && *s != '/')
        return dsv4_error(DSV4_EINVAL, "URL '%s': expected '/' after the host", url);
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        n--;
    if (n >= sizeof(out->path))
        return dsv4_error(DSV4_EINVAL, "URL '%s': path too long", url);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return dsv4_error(DSV4_EINVAL, "URL '%s': bad character in the path", url);
    memcpy(out->path, s, n);
    out->path[n] = 0;
    return 0;
}

const char *dsv4_bench_err_name(enum dsv4_bench_err e)
{
    static const char *const names[DSV4_BENCH_ERR_COUNT] = {
            "ok", "connect", "timeout", "io", "protocol", "http", "api", "finish"};
    return (unsigned)e < DSV4_BENCH_ERR_COUNT ? names[e] : "?";
}

/* ------------------------------------------------------------ response parser */

enum {
    RP_STATUS,
    RP_HEADER,
    RP_BODY_LEN,   /* Content-Length bytes left */
    RP_BODY_CLOSE, /* until the connection closes */
    RP_CHUNK_SIZE,
    RP_CHUNK_DATA,
    RP_CHUNK_END, /* the CRLF after a chunk's data */
    RP_TRAILER,
    RP_DONE
};

#define RP_MAX_HEADERS 100

void dsv4_bench_rp_init(struct dsv4_bench_rp *p, bool head)
{
    memset(p, 0, sizeof(*p));
    p->state = RP_STATUS;
    p->content_length = -1;
    p->head = head;
}

/* A comma-separated header value contains token t (case-insensitive). */
static bool has_token(const char *v, const char *t)
{
    size_t tn = strlen(t);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        size_t n = strcspn(v, ",");
        size_t m = n;
        while (m > 0 && (v[m - 1] == ' ' || v[m - 1] == '\t'))
            m--;
        if (m == tn && !strncasecmp(v, t, tn))
            return true;
        v += n;
    }
    return false;
}

/* The last coding of a Transfer-Encoding list is "chunked". */
static bool last_is_chunked(const char *v)
{
    const char *last = strrchr(v, ',');
    return has_token(last ? last + 1 : v, "chunked");
}

static int rp_status_line(struct dsv4_bench_rp *p)
{
    const char *l = p->line;
    if (strncmp(l, "HTTP/1.", 7) || (l[7] != '0' && l[7] != '1') || l[8] != ' ' || l[9] < '1' ||
        l[9] > '5' || l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9' ||
        (l[12] != ' ' && l[12] != 0))
        return dsv4_error(DSV4_EFORMAT, "bad HTTP status line '%.60s'", l);
    p->minor = l[7] - '0';
    p->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    if (p->status == 101)
        return dsv4_error(DSV4_EFORMAT, "unexpected protocol switch (101)");
    p->close = p->minor == 0; /* HTTP/1.0 closes unless it says keep-alive */
    p->state = RP_HEADER;
    return 0;
}

static int rp_header_line(struct dsv4_bench_rp *p)
{
    char *l = p->line;
    if (++p->n_headers > RP_MAX_HEADERS)
        return dsv4_error(DSV4_EFORMAT, "more than %d response headers", RP_MAX_HEADERS);
    if (*l == ' ' || *l == '\t')
        return dsv4_error(DSV4_EFORMAT, "folded response header (obs-fold)");
    char *colon = strchr(l, ':');
    if (!colon || colon == l)
        return dsv4_error(DSV4_EFORMAT, "bad response header '%.60s'", l);
    for (char *c = l; c < colon; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return dsv4_error(DSV4_EFORMAT, "bad response header name '%.60s'", l);
    *colon = 0;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    size_t vn = strlen(v);
    while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
        v[--vn] = 0;
    if (!strcasecmp(l, "Content-Length")) {
        if (!vn || vn > 15 || strspn(v, "0123456789") != vn)
            return dsv4_error(DSV4_EFORMAT, "bad Content-Length '%.40s'", v);
        int64_t n = strtoll(v, NULL, 10);
        if (p->content_length >= 0 && p->content_length != n)
            return dsv4_error(DSV4_EFORMAT, "two different Content-Length headers");
        p->content_length = n;
    } else if (!strcasecmp(l, "Transfer-Encoding")) {
        if (!last_is_chunked(v))
            return dsv4_error(DSV4_EFORMAT, "unsupported Transfer-Encoding '%.40s'", v);
        p->chunked = true;
    } else if (!strcasecmp(l, "Connection")) {
        if (has_token(v, "close"))
            p->close = true;
        else if (has_token(v, "keep-alive") && p->minor == 0)
            p->close = false;
    } else if (!strcasecmp(l, "Content-Type")) {
        snprintf(p->content_type, sizeof(p->content_type), "%s", v);
    }
    return 0;
}

/* The blank line after the headers: choose how the body is framed. */
static void rp_headers_done(struct dsv4_bench_rp *p)
{
    if (p->status < 200) { /* 1xx interim: a real response follows */
        bool head = p->head;
        dsv4_bench_rp_init(p, head);
        return;
    }
    if (p->head || p->status == 204 || p->status == 304) {
        p->state = RP_DONE;
    } else if (p->chunked) {
        p->content_length = -1; /* chunked wins (RFC 9112 6.3) */
        p->state = RP_CHUNK_SIZE;
    } else if (p->content_length >= 0) {
        p->left = p->content_length;
        p->state = p->left ? RP_BODY_LEN : RP_DONE;
    } else {
        p->close = true;
        p->state = RP_BODY_CLOSE;
    }
}

static int rp_chunk_size(struct dsv4_bench_rp *p)
{
    const char *l = p->line;
    size_t n = strspn(l, "0123456789abcdefABCDEF");
    if (n == 0 || n > 10 || (l[n] && l[n] != ';' && l[n] != ' ' && l[n] != '\t'))
        return dsv4_error(DSV4_EFORMAT, "bad chunk size '%.40s'", l);
    p->left = strtoll(l, NULL, 16);
    p->state = p->left ? RP_CHUNK_DATA : RP_TRAILER;
    return 0;
}

/* One complete line in p->line (CR stripped). */
static int rp_line(struct dsv4_bench_rp *p)
{
    switch (p->state) {
    case RP_STATUS:
        return rp_status_line(p);
    case RP_HEADER:
        if (!p->line_len) {
            rp_headers_done(p);
            return 0;
        }
        return rp_header_line(p);
    case RP_CHUNK_SIZE:
        return rp_chunk_size(p);
    case RP_CHUNK_END:
        if (p->line_len)
            return dsv4_error(DSV4_EFORMAT, "chunk data longer than its size");
        p->state = RP_CHUNK_SIZE;
        return 0;
    case RP_TRAILER:
        if (!p->line_len)
            p->state = RP_DONE;
        return 0;
    default:
        return dsv4_error(DSV4_EINTERNAL, "response parser: line in state %d", p->state);
    }
}

int dsv4_bench_rp_feed(struct dsv4_bench_rp *p, const char *buf, size_t n, size_t *used,
                       dsv4_bench_body_fn fn, void *ctx)
{
    size_t i = 0;
    int rc = 0;
    while (i < n && p->state != RP_DONE && !rc) {
        if (p->state == RP_BODY_LEN || p->state == RP_CHUNK_DATA || p->state == RP_BODY_CLOSE) {
            size_t k = n - i;
            if (p->state != RP_BODY_CLOSE && (int64_t)k > p->left)
                k = (size_t)p->left;
            if (fn)
                rc = fn(ctx, buf + i, k);
            i += k;
            if (p->state != RP_BODY_CLOSE) {
                p->left -= (int64_t)k;
                if (!p->left)
                    p->state = p->state == RP_BODY_LEN ? RP_DONE : RP_CHUNK_END;
            }
            continue;
        }
        char c = buf[i++];
        if (c == '\n') {
            if (p->line_len && p->line[p->line_len - 1] == '\r')
                p->line_len--;
            p->line[p->line_len] = 0;
            rc = rp_line(p);
            p->line_len = 0;
            continue;
        }
        if (c == 0) {
            rc = dsv4_error(DSV4_EFORMAT, "NUL byte in the response head");
            break;
        }
        if (p->line_len + 1 >= sizeof(p->line)) {
            rc = dsv4_error(DSV4_EFORMAT, "response line longer than %d bytes",
                            DSV4_BENCH_LINE_MAX - 1);
            break;
        }
        p->line[p->line_len++] = c;
    }
    *used = i;
    if (!rc && p->state == RP_DONE)
        p->done = true;
    return rc;
}

int dsv4_bench_rp_eof(struct dsv4_bench_rp *p)
{
    if (p->state == RP_BODY_CLOSE) {
        p->state = RP_DONE;
        p->done = true;
        return 0;
    }
    if (p->state == RP_DONE)
        return 0;
    if (p->state == RP_STATUS && !p->line_len)
        return dsv4_error(DSV4_EIO, "connection closed before a response");
    return dsv4_error(DSV4_EIO, "connection closed mid-response");
}

/* ------------------------------------------------------------ connections */

struct dsv4_bench_http {
    char host[256], port[8];
    int fd;
    int uses; /* requests answered on this socket */
};

int dsv4_bench_http_new(const char *host, const char *port, struct dsv4_bench_http **out)
{
    *out = NULL;
    struct dsv4_bench_http *c = calloc(1, sizeof(*c));
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    snprintf(c->host, sizeof(c->host), "%s", host);
    snprintf(c->port, sizeof(c->port), "%s", port);
    c->fd = -1;
    *out = c;
    return 0;
}

static void conn_drop(struct dsv4_bench_http *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->uses = 0;
}

void dsv4_bench_http_free(struct dsv4_bench_http *c)
{
    if (!c)
        return;
    conn_drop(c);
    free(c);
}

/* Milliseconds until the deadline for poll(), 0 when past. */
static int ms_left(double deadline)
{
    double s = deadline - dsv4_now();
    if (s <= 0)
        return 0;
    return s > 86400 ? 86400000 : (int)(s * 1000) + 1;
}

static int wait_fd(int fd, short events, double deadline, enum dsv4_bench_err *err)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events};
        int ms = ms_left(deadline);
        int r = ms ? poll(&pfd, 1, ms) : 0;
        if (r > 0)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *err = DSV4_BENCH_EIO;
            return dsv4_error(DSV4_EIO, "poll: %s", strerror(errno));
        }
        *err = DSV4_BENCH_ETIMEOUT;
        return dsv4_error(DSV4_EIO, "timed out");
    }
}

static int conn_open(struct dsv4_bench_http *c, double deadline, enum dsv4_bench_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(c->host, c->port, &hints, &res);
    if (g) {
        *err = DSV4_BENCH_ECONNECT;
        return dsv4_error(DSV4_EIO, "%s:%s: %s", c->host, c->port, gai_strerror(g));
    }
    int rc = dsv4_error(DSV4_EIO, "%s:%s: no address", c->host, c->port);
    *err = DSV4_BENCH_ECONNECT;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd =
                socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            rc = dsv4_error(DSV4_EIO, "socket: %s", strerror(errno));
            continue;
        }
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            enum dsv4_bench_err werr;
            if (wait_fd(fd, POLLOUT, deadline, &werr)) {
                close(fd);
                *err = werr;
                rc = dsv4_error(DSV4_EIO, "connecting to %s:%s: timed out", c->host, c->port);
                if (werr == DSV4_BENCH_ETIMEOUT)
                    break;
                continue;
            }
            int so = 0;
            socklen_t sl = sizeof(so);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
            r = so ? -1 : 0;
            errno = so;
        }
        if (r < 0) {
            rc = dsv4_error(DSV4_EIO, "connecting to %s:%s: %s", c->host, c->port, strerror(errno));
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->uses = 0;
        rc = 0;
        *err = DSV4_BENCH_OK;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

/* Sends all of buf; DSV4_EIO (err EIO or ETIMEOUT) on failure. */
static int send_all(int fd, const char *buf, size_t n, double deadline, enum dsv4_bench_err *err)
{
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w > 0) {
            buf += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline, err))
                return DSV4_EIO;
            continue;
        }
        *err = DSV4_BENCH_EIO;
        return dsv4_error(DSV4_EIO, "send: %s", w < 0 ? strerror(errno) : "no progress");
    }
    return 0;
}

/* One attempt on the current socket.  *fresh_fail: failed before any byte
 * of the answer on a reused socket (the server had closed it: retry). */
static int attempt(struct dsv4_bench_http *c, const struct dsv4_bench_http_req *rq,
                   const char *head, size_t head_len, dsv4_bench_body_fn fn, void *ctx, int *status,
                   enum dsv4_bench_err *err, bool *fresh_fail)
{
    bool reused = c->uses > 0;
    *fresh_fail = false;
    int rc = send_all(c->fd, head, head_len, rq->deadline, err);
    if (!rc && rq->body_len)
        rc = send_all(c->fd, rq->body, rq->body_len, rq->deadline, err);
    if (rc) {
        *fresh_fail = reused && *err == DSV4_BENCH_EIO;
        return rc;
    }
    struct dsv4_bench_rp *p = malloc(sizeof(*p));
    if (!p) {
        *err = DSV4_BENCH_EIO;
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    }
    dsv4_bench_rp_init(p, !strcmp(rq->method, "HEAD"));
    char buf[16384];
    size_t got = 0;
    bool leftover = false;
    while (!p->done) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if ((rc = wait_fd(c->fd, POLLIN, rq->deadline, err)))
                break;
            continue;
        }
        if (r <= 0) {
            if (r < 0 && errno != ECONNRESET) {
                *err = DSV4_BENCH_EIO;
                rc = dsv4_error(DSV4_EIO, "recv: %s", strerror(errno));
                break;
            }
            *fresh_fail = reused && got == 0;
            rc = r < 0 ? dsv4_error(DSV4_EIO, "connection reset") : dsv4_bench_rp_eof(p);
            if (rc)
                *err = DSV4_BENCH_EIO;
            break;
        }
        got += (size_t)r;
        size_t used = 0;
        rc = dsv4_bench_rp_feed(p, buf, (size_t)r, &used, fn, ctx);
        if (rc) {
            *err = DSV4_BENCH_EPROTOCOL;
            break;
        }
        leftover = used < (size_t)r;
    }
    if (!rc) {
        *status = p->status;
        c->uses++;
    }
    if (rc || p->close || leftover)
        conn_drop(c);
    free(p);
    return rc;
}

int dsv4_bench_http_do(struct dsv4_bench_http *c, const struct dsv4_bench_http_req *rq,
                       dsv4_bench_body_fn fn, void *ctx, int *status, enum dsv4_bench_err *err)
{
    *status = 0;
    *err = DSV4_BENCH_OK;
    char head[4096];
    bool v6 = strchr(c->host, ':') != NULL;
    int hn = snprintf(head, sizeof(head),
                      "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: dsv4-bench/%s\r\n"
                      "Accept: */*\r\n",
                      rq->method, rq->path[0] ? rq->path : "/", v6 ? "[" : "", c->host,
                      v6 ? "]" : "", c->port, dsv4_version());
    if (hn > 0 && (size_t)hn < sizeof(head) && rq->body)
        hn += snprintf(head + hn, sizeof(head) - (size_t)hn,
                       "Content-Type: application/json\r\nContent-Length: %zu\r\n", rq->body_len);
    if (hn > 0 && (size_t)hn < sizeof(head))
        hn += snprintf(head + hn, sizeof(head) - (size_t)hn, "%s\r\n",
                       rq->headers ? rq->headers : "");
    if (hn <= 0 || (size_t)hn >= sizeof(head)) {
        *err = DSV4_BENCH_EPROTOCOL;
        return dsv4_error(DSV4_ERANGE, "request head longer than %zu bytes", sizeof(head));
    }
    for (int tries = 0;; tries++) {
        if (c->fd < 0) {
            int rc = conn_open(c, rq->deadline, err);
            if (rc)
                return rc;
        }
        bool fresh_fail;
        int rc = attempt(c, rq, head, (size_t)hn, fn, ctx, status, err, &fresh_fail);
        if (!rc || !fresh_fail || tries >= 1)
            return rc;
        conn_drop(c); /* the server closed an idle keep-alive socket: once more, fresh */
        *err = DSV4_BENCH_OK;
    }
}

struct get_ctx {
    struct dsv4_strbuf *b;
};

static int get_body(void *ctx, const char *data, size_t n)
{
    struct get_ctx *g = ctx;
    if (g->b->len + n > (64u << 20))
        return dsv4_error(DSV4_ERANGE, "response body over 64 MiB");
    dsv4_strbuf_put(g->b, data, n);
    return g->b->oom ? dsv4_error(DSV4_ENOMEM, "out of memory") : 0;
}

int dsv4_bench_http_get(const char *url, const char *api_key, double timeout_s,
                        struct dsv4_strbuf *body, int *status)
{
    struct dsv4_bench_url u;
    int rc = dsv4_bench_url_parse(url, &u);
    if (rc)
        return rc;
    struct dsv4_bench_http *c;
    if ((rc = dsv4_bench_http_new(u.host, u.port, &c)))
        return rc;
    char hdr[600] = "";
    if (api_key && *api_key)
        snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", api_key);
    struct dsv4_bench_http_req rq = {
            .method = "GET", .path = u.path, .headers = hdr, .deadline = dsv4_now() + timeout_s};
    struct get_ctx g = {body};
    enum dsv4_bench_err err;
    rc = dsv4_bench_http_do(c, &rq, get_body, &g, status, &err);
    dsv4_bench_http_free(c);
    return rc ? dsv4_error_ctx(rc, "GET %s", url) : 0;
}

/* ------------------------------------------------------------ server-sent events */

void dsv4_bench_sse_init(struct dsv4_bench_sse *s)
{
    dsv4_strbuf_init(&s->line);
    dsv4_strbuf_init(&s->data);
    s->has_data = s->cr = false;
}

void dsv4_bench_sse_free(struct dsv4_bench_sse *s)
{
    dsv4_strbuf_free(&s->line);
    dsv4_strbuf_free(&s->data);
    s->has_data = s->cr = false;
}

/* One line of the stream (without its end). */
static int sse_line(struct dsv4_bench_sse *s, dsv4_bench_sse_fn fn, void *ctx)
{
    const char *l = s->line.p ? s->line.p : "";
    size_t n = s->line.len;
    if (n == 0) { /* blank line: dispatch */
        int rc = 0;
        if (s->has_data) {
            size_t dn = s->data.len;
            if (dn && s->data.p[dn - 1] == '\n')
                dn--;
            rc = fn(ctx, s->data.p ? s->data.p : "", dn);
        }
        s->data.len = 0;
        if (s->data.p)
            s->data.p[0] = 0;
        s->has_data = false;
        return rc;
    }
    if (l[0] == ':')
        return 0; /* comment */
    const char *colon = memchr(l, ':', n);
    size_t fn_len = colon ? (size_t)(colon - l) : n;
    if (fn_len != 4 || memcmp(l, "data", 4))
        return 0; /* event, id, retry and unknown fields change nothing we measure */
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ')
        v++;
    size_t vn = (size_t)(l + n - v);
    if (s->data.len + vn + 1 > DSV4_BENCH_SSE_MAX)
        return dsv4_error(DSV4_EFORMAT, "server-sent event over %u bytes", DSV4_BENCH_SSE_MAX);
    dsv4_strbuf_put(&s->data, v, vn);
    dsv4_strbuf_put(&s->data, "\n", 1);
    s->has_data = true;
    return s->data.oom ? dsv4_error(DSV4_ENOMEM, "out of memory") : 0;
}

int dsv4_bench_sse_feed(struct dsv4_bench_sse *s, const char *buf, size_t n, dsv4_bench_sse_fn fn,
                        void *ctx)
{
    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n' && s->cr) {
            s->cr = false;
            continue;
        }
        s->cr = c == '\r';
        if (c == '\n' || c == '\r') {
            int rc = sse_line(s, fn, ctx);
            s->line.len = 0;
            if (s->line.p)
                s->line.p[0] = 0;
            if (rc)
                return rc;
            continue;
        }
        /* copy the run of ordinary bytes at once */
        size_t j = i;
        while (j < n && buf[j] != '\n' && buf[j] != '\r')
            j++;
        if (s->line.len + (j - i) > DSV4_BENCH_SSE_MAX)
            return dsv4_error(DSV4_EFORMAT, "server-sent event line over %u bytes",
                              DSV4_BENCH_SSE_MAX);
        dsv4_strbuf_put(&s->line, buf + i, j - i);
        if (s->line.oom)
            return dsv4_error(DSV4_ENOMEM, "out of memory");
        i = j - 1;
    }
    return 0;
}
