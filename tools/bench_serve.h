/*
 * bench_serve.h - the pieces of `dsv4 bench serve` and `dsv4 bench plot`
 * (serving benchmarks against a running server): a small HTTP/1.1 client
 * over plain sockets with an incremental response parser and a
 * server-sent-events parser, the client interface through which the
 * benchmark drives a server (OpenAI-compatible HTTP,
 * tools/bench_serve_openai.c; dsv4d's gRPC Engine service,
 * tools/bench_serve_grpc.c), and a Prometheus text reader.
 *
 * Why a client interface: the benchmark only needs "send one generation
 * request, see each output event as it arrives, learn how it ended"; each
 * transport is one dsv4_bench_client, and the sweep, the prompts and the
 * definitions stay the same whichever runs.
 *
 * Invariants: the parsers take untrusted bytes (a server may be broken or
 * hostile) and answer any input with a status, never a crash or an
 * unbounded allocation (header lines, chunk-size lines, SSE events and
 * bodies have caps).  All timestamps are dsv4_now() seconds.
 */
#ifndef DSV4_TOOLS_BENCH_SERVE_H
#define DSV4_TOOLS_BENCH_SERVE_H

#include "engine/io/strbuf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* `dsv4 bench` subjects (tools/cmd_bench.c table) */
int dsv4_bench_serve(int argc, char **argv);
int dsv4_bench_plot(int argc, char **argv);

/* ------------------------------------------------------------ URLs */

struct dsv4_bench_url {
    char host[256];  /* name or address; IPv6 without brackets */
    char port[8];    /* decimal; "80" when absent */
    char path[1024]; /* "" or "/prefix" (no trailing '/'), or the whole path when kept */
};

/* Parses "http://HOST[:PORT][/PATH]" (or "HOST:PORT[/PATH]").  The path keeps its
 * text minus trailing slashes.  https and other schemes -> DSV4_ENOTSUP. */
int dsv4_bench_url_parse(const char *url, struct dsv4_bench_url *out);

/* ------------------------------------------------------------ HTTP/1.1 */

/* Called with each piece of a response body as it is decoded (chunk framing
 * removed); a nonzero return stops the transfer with that status. */
typedef int (*dsv4_bench_body_fn)(void *ctx, const char *data, size_t n);

#define DSV4_BENCH_LINE_MAX 8192 /* longest status / header / chunk-size line */

/* The incremental parser of one response (status line, headers, a body
 * framed by Content-Length, chunked coding or the end of the connection).
 * Plain struct so that tests and fuzzers drive it without a socket. */
struct dsv4_bench_rp {
    int state;  /* private */
    int status; /* HTTP status code once the status line is read */
    int minor;  /* HTTP/1.minor */
    bool close; /* the server will close the connection after this response */
    bool chunked, done, head;
    int64_t content_length; /* -1: none */
    int64_t left;           /* body or chunk bytes still to come */
    int n_headers;
    char content_type[64];
    char line[DSV4_BENCH_LINE_MAX];
    size_t line_len;
};

/* Ready for a new response; `head`: the request was HEAD (no body). */
void dsv4_bench_rp_init(struct dsv4_bench_rp *p, bool head);
/* Consumes up to n bytes (*used tells how many: it stops after the end of the
 * message); body bytes go to fn.  0, DSV4_EFORMAT with a message on malformed
 * input, or fn's nonzero status. */
int dsv4_bench_rp_feed(struct dsv4_bench_rp *p, const char *buf, size_t n, size_t *used,
                       dsv4_bench_body_fn fn, void *ctx);
/* The peer closed the connection: 0 when that ends the message (a body
 * delimited by the close), DSV4_EIO with a message when it came too early. */
int dsv4_bench_rp_eof(struct dsv4_bench_rp *p);

/* Why a request failed, for the error counts (also the client interface's). */
enum dsv4_bench_err {
    DSV4_BENCH_OK = 0,
    DSV4_BENCH_ECONNECT,  /* name resolution or connection refused */
    DSV4_BENCH_ETIMEOUT,  /* no answer within the request timeout */
    DSV4_BENCH_EIO,       /* connection reset or closed mid-response */
    DSV4_BENCH_EPROTOCOL, /* malformed HTTP, event stream or protobuf message */
    DSV4_BENCH_EHTTP,     /* HTTP status other than 200 */
    DSV4_BENCH_EAPI,      /* malformed or error JSON, a gRPC error status, no usage */
    DSV4_BENCH_EFINISH,   /* finish_reason not stop/length, or no tokens */
    DSV4_BENCH_ERR_COUNT
};
/* "connect", "timeout", ... (JSON keys of error_kinds). */
const char *dsv4_bench_err_name(enum dsv4_bench_err e);

/* One keep-alive connection to HOST:PORT, one request at a time; owned by
 * one thread.  Connects lazily and again after the server closed it. */
struct dsv4_bench_http;

int dsv4_bench_http_new(const char *host, const char *port, struct dsv4_bench_http **out);
void dsv4_bench_http_free(struct dsv4_bench_http *c);

struct dsv4_bench_http_req {
    const char *method, *path;
    const char *headers; /* extra header lines, each ending in "\r\n", or NULL */
    const char *body;
    size_t body_len;
    double deadline; /* dsv4_now() value after which the request fails */
};

/* Sends the request and reads the whole response, body to fn.  Returns 0
 * (whatever the HTTP status, in *status), or a negative status with
 * *err saying which kind of failure (and a message in dsv4_errmsg()).  A
 * connection that the server had closed while idle is retried once. */
int dsv4_bench_http_do(struct dsv4_bench_http *c, const struct dsv4_bench_http_req *rq,
                       dsv4_bench_body_fn fn, void *ctx, int *status, enum dsv4_bench_err *err);

/* GET of a whole URL into *body (caps at 64 MiB); *status the HTTP status. */
int dsv4_bench_http_get(const char *url, const char *api_key, double timeout_s,
                        struct dsv4_strbuf *body, int *status);

/* ------------------------------------------------------------ server-sent events */

#define DSV4_BENCH_SSE_MAX (16u << 20) /* largest event */

/* Called with the data of each event (its data lines joined by '\n'). */
typedef int (*dsv4_bench_sse_fn)(void *ctx, const char *data, size_t n);

struct dsv4_bench_sse {
    struct dsv4_strbuf line, data;
    bool has_data, cr; /* cr: the last byte was '\r' (a following '\n' is part of it) */
};

void dsv4_bench_sse_init(struct dsv4_bench_sse *s);
void dsv4_bench_sse_free(struct dsv4_bench_sse *s);
/* Feeds stream bytes (any split); each completed event goes to fn.  0,
 * DSV4_EFORMAT on an oversized line/event, DSV4_ENOMEM, or fn's status. */
int dsv4_bench_sse_feed(struct dsv4_bench_sse *s, const char *buf, size_t n, dsv4_bench_sse_fn fn,
                        void *ctx);

/* ------------------------------------------------------------ Prometheus text */

/*
 * Sums the samples of metric `name` in a Prometheus text exposition,
 * across all label sets, or only those whose label `label` equals `value`
 * when label is not NULL.  A family name matches when it equals `name` or
 * ends in `name` right after a '_' or ':' (so "spec_decode_num_drafts_total"
 * finds dsv4_ and vllm: counters alike).  *found: whether any sample
 * matched.  Malformed lines are skipped.
 */
double dsv4_bench_prom_sum(const char *text, const char *name, const char *label, const char *value,
                           bool *found);
/* Largest integer value of label `label` among the samples of `name` (-1: none). */
int dsv4_bench_prom_max_label(const char *text, const char *name, const char *label);

#define DSV4_BENCH_SPEC_POS 32 /* draft positions read */

/* The speculative-decoding counters of one /metrics scrape (vLLM names, any
 * prefix: spec_decode_num_drafts_total, ..._num_draft_tokens_total,
 * ..._num_accepted_tokens_total, ..._num_accepted_tokens_per_pos_total and
 * ..._num_draft_tokens_per_pos_total by label "position"), each summed over
 * every other label (several engines). */
struct dsv4_bench_spec {
    bool found; /* the accepted and draft-token counters are both there */
    bool has_drafts, has_pos_drafted;
    double drafts, draft_tokens, accepted;
    int n_pos; /* positions seen (largest label + 1, at most DSV4_BENCH_SPEC_POS) */
    double pos_accepted[DSV4_BENCH_SPEC_POS], pos_drafted[DSV4_BENCH_SPEC_POS];
};

void dsv4_bench_spec_read(const char *text, struct dsv4_bench_spec *out);

/* ------------------------------------------------------------ the client interface */

struct dsv4_bench_client_cfg {
    const char *url;     /* --openai base URL (OpenAI client) */
    const char *target;  /* --target HOST:PORT (gRPC client) */
    const char *api_key; /* or NULL */
    const char *model;   /* model name to request (after discovery) */
    bool chat;           /* chat/completions (published) or completions */
    bool stream;
    bool ignore_eos;
    int max_tokens;
    double temperature;
    double timeout_s; /* per request */
};

/* The outcome of one request, filled by generate(). */
struct dsv4_bench_outcome {
    enum dsv4_bench_err err;
    int http_status; /* OpenAI client */
    int grpc_status; /* gRPC client: the call's status code (-1: no call was made) */
    char msg[200];   /* the error, when err != OK */
    char finish[24];
    int64_t prompt_tokens, completion_tokens; /* -1 when the server did not say */
    int events;                               /* streamed events that carried output */
};

/* Called when a streamed event carrying output arrives (t: dsv4_now()). */
typedef void (*dsv4_bench_event_fn)(void *ctx, double t);

struct dsv4_bench_client {
    const char *name; /* "openai-http", "grpc": the JSON's transport */
    /* One connection for one thread. */
    int (*open)(const struct dsv4_bench_client_cfg *cfg, void **conn);
    /* Sends prompt, reports output events while they stream, fills *out when
     * the request is over.  Returns 0 when a result is in *out (failures of
     * the request included); a negative status only for local trouble (out
     * of memory).  Never blocks past cfg->timeout_s. */
    int (*generate)(void *conn, const char *prompt, dsv4_bench_event_fn ev, void *ev_ctx,
                    struct dsv4_bench_outcome *out);
    /* The name of the first model the server serves, into buf. */
    int (*model)(void *conn, char *buf, size_t size);
    void (*close)(void *conn);
};

extern const struct dsv4_bench_client dsv4_bench_openai;
extern const struct dsv4_bench_client dsv4_bench_grpc;

#endif
