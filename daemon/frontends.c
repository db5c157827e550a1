/*
 * frontends.c - dsv4d's front ends (daemon/frontends.h): the gRPC server
 * (rpc/grpc.h) and the HTTP server with the OpenAI API and /metrics
 * (rpc/http.h), both over the supervisor's service table.
 *
 * Request metrics (outcome, TTFT, inter-token latency, end-to-end time,
 * tokens) are recorded by the front end that serves the request: the HTTP
 * layer records its own; gRPC requests go through a thin wrapper of the
 * service here that wraps each request's event callback and records the
 * same series, so every request is counted exactly once whatever protocol
 * it came by.
 */
#include "daemon/frontends.h"

#include "base/dsv4.h"
#include "rpc/grpc.h"
#include "rpc/http.h"
#include "rpc/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct dsv4d_frontends {
    struct dsv4_svc metered; /* the service as gRPC sees it */
    struct dsv4_svc *inner;
    struct dsv4_metrics *m;
    struct dsv4_grpc *grpc;
    struct dsv4_http *http;
};

/* A gRPC request in flight: its callback and its timing. */
struct meter {
    struct dsv4d_frontends *f;
    dsv4_svc_event_fn fn;
    void *ctx;
    double t0, t_last;
    bool first;
};

static void meter_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct meter *mt = ctx;
    struct dsv4_metrics *m = mt->f->m;
    double now = dsv4_now();
    if (ev->kind == DSV4_SVC_EV_TOKENS && ev->n_ids > 0) {
        if (!mt->first) {
            dsv4_metrics_ttft(m, now - mt->t0);
            mt->first = true;
        } else {
            dsv4_metrics_itl(m, now - mt->t_last);
        }
        mt->t_last = now;
    } else if (ev->kind != DSV4_SVC_EV_TOKENS) {
        enum dsv4_metrics_outcome o = ev->kind == DSV4_SVC_EV_ERROR          ? DSV4_METRICS_ERROR
                                      : ev->finish == DSV4_SVC_FINISH_ABORT  ? DSV4_METRICS_ABORT
                                      : ev->finish == DSV4_SVC_FINISH_LENGTH ? DSV4_METRICS_LENGTH
                                                                             : DSV4_METRICS_STOP;
        dsv4_metrics_request_done(m, o, now - mt->t0, ev->prompt_tokens, ev->completion_tokens);
    }
    dsv4_svc_event_fn fn = mt->fn;
    void *uctx = mt->ctx;
    if (ev->kind != DSV4_SVC_EV_TOKENS)
        free(mt); /* the terminal event: nothing follows */
    fn(uctx, id, ev);
}

static struct dsv4d_frontends *FE(struct dsv4_svc *v)
{
    return v->impl;
}

static int m_submit(struct dsv4_svc *v, const struct dsv4_svc_request *q, dsv4_svc_event_fn fn,
                    void *ctx, uint64_t *id)
{
    struct dsv4d_frontends *f = FE(v);
    struct meter *mt = calloc(1, sizeof *mt);
    if (!mt)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    *mt = (struct meter){.f = f, .fn = fn, .ctx = ctx, .t0 = dsv4_now()};
    int rc = f->inner->ops->submit(f->inner, q, meter_event, mt, id);
    if (rc)
        free(mt);
    return rc;
}

static void m_cancel(struct dsv4_svc *v, uint64_t id)
{
    FE(v)->inner->ops->cancel(FE(v)->inner, id);
}

static int m_abort_client_id(struct dsv4_svc *v, const char *cid)
{
    return FE(v)->inner->ops->abort_client_id(FE(v)->inner, cid);
}

static int m_tokenize(struct dsv4_svc *v, const char *text, size_t len, int32_t **ids, size_t *n)
{
    return FE(v)->inner->ops->tokenize(FE(v)->inner, text, len, ids, n);
}

static int m_detokenize(struct dsv4_svc *v, const int32_t *ids, size_t n, bool skip, char **text,
                        size_t *len)
{
    return FE(v)->inner->ops->detokenize(FE(v)->inner, ids, n, skip, text, len);
}

static void m_model_info(struct dsv4_svc *v, struct dsv4_svc_model_info *o)
{
    FE(v)->inner->ops->model_info(FE(v)->inner, o);
}

static void m_loads(struct dsv4_svc *v, struct dsv4_svc_loads *o)
{
    FE(v)->inner->ops->loads(FE(v)->inner, o);
}

static enum dsv4_svc_state m_state(struct dsv4_svc *v, char *why, size_t len)
{
    return FE(v)->inner->ops->state(FE(v)->inner, why, len);
}

static bool m_authorize(struct dsv4_svc *v, const char *key, size_t len)
{
    return FE(v)->inner->ops->authorize(FE(v)->inner, key, len);
}

static void m_drain(struct dsv4_svc *v)
{
    FE(v)->inner->ops->drain(FE(v)->inner);
}

static const struct dsv4_svc_ops meter_ops = {
        .submit = m_submit,
        .cancel = m_cancel,
        .abort_client_id = m_abort_client_id,
        .tokenize = m_tokenize,
        .detokenize = m_detokenize,
        .model_info = m_model_info,
        .loads = m_loads,
        .state = m_state,
        .authorize = m_authorize,
        .drain = m_drain,
};

int dsv4d_frontends_start(const struct dsv4d_config *c, struct dsv4_svc *svc,
                          struct dsv4_metrics *m, int grpc_fd, int http_fd,
                          struct dsv4d_frontends **out)
{
    struct dsv4d_frontends *f = calloc(1, sizeof *f);
    int rc;
    *out = NULL;
    if (!f)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    f->inner = svc;
    f->m = m;
    f->metered.ops = &meter_ops;
    f->metered.impl = f;
    if (grpc_fd >= 0 || strcmp(c->grpc_listen, "off")) {
        struct dsv4_grpc_opts go = {.listen = c->grpc_listen,
                                    .listen_fd = grpc_fd >= 0 ? grpc_fd : 0,
                                    .drain_timeout_s = 2,
                                    .health_needs_key = !c->open_probes};
        if ((rc = dsv4_grpc_start(&f->metered, &go, &f->grpc))) {
            rc = dsv4_error_ctx(rc, "gRPC on %s",
                                grpc_fd >= 0 ? "the inherited socket" : c->grpc_listen);
            goto fail;
        }
        dsv4_log(DSV4_LOG_INFO, "gRPC on %s (port %d)",
                 grpc_fd >= 0 ? "the socket systemd passed" : c->grpc_listen,
                 dsv4_grpc_port(f->grpc));
    }
    if (http_fd >= 0 || strcmp(c->http_listen, "off")) {
        struct dsv4_http_opts ho = {.listen = c->http_listen,
                                    .listen_fd = http_fd >= 0 ? http_fd : 0,
                                    .probes_need_key = !c->open_probes,
                                    .model_name =
                                            c->served_model_name[0] ? c->served_model_name : NULL,
                                    .request_timeout_s = c->request_timeout};
        if ((rc = dsv4_http_start(svc, m, &ho, &f->http))) {
            rc = dsv4_error_ctx(rc, "HTTP on %s",
                                http_fd >= 0 ? "the inherited socket" : c->http_listen);
            goto fail;
        }
        dsv4_log(DSV4_LOG_INFO, "HTTP on %s (port %d)",
                 http_fd >= 0 ? "the socket systemd passed" : c->http_listen,
                 dsv4_http_port(f->http));
    }
    *out = f;
    return 0;
fail:
    dsv4d_frontends_stop(f);
    return rc;
}

void dsv4d_frontends_stop(struct dsv4d_frontends *f)
{
    if (!f)
        return;
    dsv4_grpc_stop(f->grpc);
    dsv4_http_stop(f->http);
    free(f);
}
