/*
 * http_int.h - what the two halves of the HTTP front end share: http.c (the
 * connection loop: sockets, HTTP/1.1 framing, timeouts, output) and
 * http_api.c (the routes: probes, metrics, the OpenAI calls and the
 * workers that run them).  Nobody else includes it.
 *
 * Threads and locks (the order is h->mu never held while taking another;
 * c->mu before call->mu):
 *   - the loop thread owns sockets and the input side of connections;
 *   - workers and the service's event callbacks produce output: they append
 *     to c->out under c->mu, then put c on h's dirty list (under h->mu) and
 *     wake the loop through the eventfd; only the loop writes to sockets;
 *   - a connection is freed when its last reference goes (the loop's, a
 *     call's, the dirty list's).
 */
#ifndef DSV4_RPC_HTTP_INT_H
#define DSV4_RPC_HTTP_INT_H

#include "engine/io/strbuf.h"
#include "rpc/http.h"
#include "rpc/openai.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum http_route {
    HTTP_R_NOT_FOUND = 0,
    HTTP_R_HEALTH,
    HTTP_R_READY,
    HTTP_R_METRICS,
    HTTP_R_MODELS,
    HTTP_R_COMPLETIONS,
    HTTP_R_CHAT
};

/* One parsed request, owned by its connection until dispatched. */
struct http_request {
    enum http_route route;
    bool head;       /* HEAD: headers only */
    bool keep_alive; /* the client keeps the connection (HTTP/1.1 default) */
    int minor;       /* HTTP/1.<minor> */
    char *body;      /* malloc'ed, NUL-terminated (NULL: none); the route may take it */
    size_t body_len;
    bool has_key;
    char key[512];        /* the Bearer token */
    char request_id[128]; /* X-Request-Id, or "" */
    double t_arrive;      /* when the request was complete (monotonic seconds) */
};

struct http_call;

struct dsv4_http_conn {
    struct dsv4_http *h;
    atomic_int refs;
    /* output side, under mu */
    pthread_mutex_t mu;
    struct dsv4_strbuf out;
    size_t out_off;
    bool resp_done;   /* the current response is complete in `out` */
    bool close_after; /* close once `out` is written */
    bool chunked;     /* the current streamed response uses chunked encoding */
    bool gone;        /* the peer went away or the connection broke: output is dropped */
    struct http_call *call;
    bool dirty; /* on h->dirty (under h->mu) */
    struct dsv4_http_conn *dirty_next;
    /* loop side (see http.c) */
    struct http_loop_conn *lc;
};

struct dsv4_http {
    struct dsv4_svc *svc;
    struct dsv4_metrics *m;
    struct dsv4_http_opts o;
    char listen[256];
    char model_name[256];
    int lfd, epfd, evfd, port;
    bool own_lfd;
    pthread_t loop;
    bool loop_started;
    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t job_cv, idle_cv;
    bool stopping, workers_quit;
    struct http_call *jobs_head, *jobs_tail;
    struct dsv4_http_conn *dirty;
    int n_calls; /* calls alive (submitted or being handled) */
    pthread_t *workers;
    int n_workers;
    uint64_t id_base;
    atomic_uint_fast64_t id_next;
    /* loop-only */
    struct http_loop_conn *conns, *graveyard;
    int n_conns;
    size_t in_bytes;      /* input buffered beyond each connection's first BASE_IN bytes */
    double accept_resume; /* accept paused (out of descriptors) until then; 0: not paused */
};

/* ---- provided by http.c (any thread) */

/* A whole response.  extra: more header lines ("Name: value\r\n"...) or NULL.  With
 * HEAD the body is left out. */
void dsv4_http_respond(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                       const char *ctype, const char *body, size_t len, const char *extra);
/* An OpenAI error body with `status`. */
void dsv4_http_respond_error(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                             const char *message, const char *param, const char *code);
/* A streamed response: the head, then chunks, then the end. */
void dsv4_http_stream_begin(struct dsv4_http_conn *c, const struct http_request *rq, int status,
                            const char *ctype);
void dsv4_http_stream_data(struct dsv4_http_conn *c, const char *data, size_t len);
void dsv4_http_stream_end(struct dsv4_http_conn *c);
/* True once the peer is gone (output would be dropped). */
bool dsv4_http_conn_gone(struct dsv4_http_conn *c);
void dsv4_http_conn_ref(struct dsv4_http_conn *c);
void dsv4_http_conn_unref(struct dsv4_http_conn *c);
/* Counts an answered request in dsv4_http_requests_total{code}. */
void dsv4_http_count_status(struct dsv4_http *h, int status);

/* ---- provided by http_api.c */

/* The route of a method + path: sets *route, or answers 404/405 and returns false. */
bool dsv4_http_api_route(const char *method, const char *path, enum http_route *route, bool *head,
                         int *status, const char **allow);
/* Whether the route needs the API key (before the body is read). */
bool dsv4_http_api_needs_key(const struct dsv4_http *h, enum http_route route);
/* A complete request: answered here (probes, metrics, models) or handed to a worker
 * (takes rq->body).  Runs on the loop thread; never blocks on inference. */
void dsv4_http_api_dispatch(struct dsv4_http *h, struct dsv4_http_conn *c, struct http_request *rq);
/* The connection of `call` is gone.  Called with c->mu held; returns true and the id
 * to cancel (svc->cancel, after c->mu is released) when the service has the request. */
bool dsv4_http_api_abandon(struct http_call *call, uint64_t *id);
int dsv4_http_api_start(struct dsv4_http *h);
/* Waits (bounded) for the calls in flight to end, then stops the workers.  Returns false
 * when calls are still alive (the server must then not be freed). */
bool dsv4_http_api_stop(struct dsv4_http *h, double wait_s);

#endif
