/*
 * http.h - the HTTP/1.1 front end of dsv4d (DESIGN.md section 5): probes,
 * metrics and the OpenAI-compatible API over the service op table of
 * rpc/service.h.
 *
 *   GET  /health               200 while the server runs (liveness)
 *   GET  /ready                200 when the service is READY, else 503 with
 *                              {"status": "<state>", "reason": "..."}
 *   GET  /metrics              Prometheus text (rpc/metrics.h)
 *   GET  /v1/models            the served model
 *   POST /v1/completions       } rpc/openai.h; "stream": true answers with
 *   POST /v1/chat/completions  } server-sent events (chunked encoding)
 * (HEAD works wherever GET does.)
 *
 * API keys: `Authorization: Bearer KEY` is checked with the service's
 * authorize op before any body is read; a missing or wrong key is a 401
 * and no work.  The probes and /metrics are open unless probes_need_key.
 * A client may name its request with `X-Request-Id` (the service's
 * client_id, so that it can be aborted by that name).
 *
 * Robustness: bodies over max_body_bytes (413), headers over
 * max_header_bytes (431), request lines and headers that do not arrive
 * within header_timeout_s or bodies within body_timeout_s (408, then the
 * connection closes: slowloris), idle keep-alive connections past
 * idle_timeout_s (closed), connections beyond max_connections (503 and
 * closed at once), uploads beyond max_buffered_bytes in all (503),
 * clients that stop reading a response for write_timeout_s (closed, the
 * request cancelled).  A client that goes away (or half-closes) cancels
 * its request.  The probes and /metrics are answered by the
 * connection loop itself, never queued behind request parsing, chat
 * rendering, tokenization or inference (see http.c).
 *
 * Calls into the service: state, loads, authorize and model_info run on
 * the connection loop, so they must be quick and never wait on inference;
 * tokenize, detokenize (logprob texts) and submit run on the workers;
 * cancel runs on either.
 *
 * Ownership: the server borrows `svc` and `m` (m may be NULL: no metrics
 * route data beyond an empty body); both must outlive dsv4_http_stop.
 */
#ifndef DSV4_RPC_HTTP_H
#define DSV4_RPC_HTTP_H

#include "rpc/metrics.h"
#include "rpc/service.h"

#include <stdbool.h>
#include <stddef.h>

/* A zeroed struct gives every default. */
struct dsv4_http_opts {
    const char *listen;        /* "HOST:PORT", "[V6]:PORT" or ":PORT" (all addresses); NULL:
                                "127.0.0.1:8080"; port 0 picks a free one (dsv4_http_port) */
    int listen_fd;             /* > 0: an inherited listening socket (socket activation), used
                                instead of `listen` and not closed by dsv4_http_stop */
    size_t max_body_bytes;     /* 0: 16 MiB */
    size_t max_header_bytes;   /* request line + headers; 0: 16 KiB */
    size_t max_buffered_bytes; /* request bytes buffered over all connections (beyond 128 KiB
                                  each), more is refused with 503; 0: 256 MiB, or twice
                                  max_body_bytes + max_header_bytes if that is more */
    double header_timeout_s;   /* a request's line and headers must arrive within; 0: 10 s */
    double body_timeout_s;     /* its body within this after the headers; 0: 60 s */
    double idle_timeout_s;     /* an idle keep-alive connection is closed after; 0: 60 s */
    double write_timeout_s;    /* a client must take output at least this often; 0: 60 s */
    int max_connections;       /* open connections at most; 0: 1024 */
    int threads;               /* request workers (parse, render, tokenize, format); 0: 2 */
    bool probes_need_key;      /* /health, /ready, /metrics also need the API key */
    const char *model_name;    /* the served model name; NULL: the service's model_id */
    bool default_thinking;     /* chat: thinking mode when a request does not choose */
    double request_timeout_s;  /* per-request deadline given to the service; 0: none */
};

struct dsv4_http;

/* Binds (or adopts listen_fd), starts the connection loop and the workers.
 * Returns 0 and *out, or a status with a message (the address in use, a bad
 * listen string, ...). */
int dsv4_http_start(struct dsv4_svc *svc, struct dsv4_metrics *m, const struct dsv4_http_opts *o,
                    struct dsv4_http **out);

/* The bound TCP port. */
int dsv4_http_port(const struct dsv4_http *h);

/* Stops listening, closes every connection, cancels the requests in flight
 * and waits for their last events, then frees the server.  NULL is a no-op. */
void dsv4_http_stop(struct dsv4_http *h);

#endif
