/*
 * dsv4ctl_info.c - the dsv4ctl commands that are not generation: health and
 * watch (grpc.health.v1), stats (GetServerInfo + GetModelInfo + GetLoads),
 * tokenize / detokenize, drain and abort (tools/dsv4ctl.h for the shared
 * parts).
 *
 * health checks "" (the process serves) and "dsv4.Engine" (the engine is
 * ready), and exits 0 only when both are SERVING; when not, it asks
 * GetServerInfo for the state and its reason to say why.  watch prints one
 * line per status the server sends (the current one first) until
 * interrupted (SIGINT / SIGTERM: exit 0), --count messages, or the server
 * ends the stream (an error: exit 1).  drain --wait returns once the server
 * no longer accepts connections.
 */
#include "base/dsv4.h"
#include "proto/dsv4.pb-c.h"
#include "proto/health.pb-c.h"
#include "rpc/grpc_wire.h"
#include "tools/dsv4ctl.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ENGINE_SERVICE "dsv4.Engine"
#define DRAIN_WAIT_S   120.0 /* drain --wait without --timeout */
#define DRAIN_POLL_S   0.2
#define WATCH_SLICE_S  0.25 /* how often watch looks at its signal flag */
#define HEALTH_CHECK   "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH   "/grpc.health.v1.Health/Watch"

/* The arguments of a simple command: global options, the command's options (a table of
 * names; `valued` ones take the next argument), and at most max_pos positional arguments.
 * Returns 0 or the exit status of a usage error. */
struct opt {
    const char *name;
    bool valued;
    const char **value; /* valued: where the value goes */
    bool *flag;         /* not valued: set to true */
};

static int parse_args(struct ctl *x, int argc, char **argv, const struct opt *opts, size_t n_opts,
                      const char **pos, int max_pos, int *n_pos)
{
    bool opts_done = false;
    *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && !strcmp(a, "--")) {
            opts_done = true;
            continue;
        }
        if (opts_done || a[0] != '-' || !a[1]) {
            if (*n_pos >= max_pos)
                return max_pos ? ctl_usage_error(x,
                                                 "unexpected argument '%s' (quote a text "
                                                 "with blanks)",
                                                 a)
                               : ctl_usage_error(x, "unexpected argument '%s'", a);
            pos[(*n_pos)++] = a;
            continue;
        }
        int t = ctl_global_opt(x, argc, argv, &i);
        if (t < 0)
            return CTL_EXIT_USAGE;
        if (t > 0)
            continue;
        const struct opt *o = NULL;
        for (size_t k = 0; k < n_opts; k++)
            if (!strcmp(a, opts[k].name))
                o = &opts[k];
        if (!o)
            return ctl_usage_error(x, "unknown option '%s'", a);
        if (o->valued) {
            if (i + 1 >= argc)
                return ctl_usage_error(x, "%s needs a value", a);
            *o->value = argv[++i];
        } else {
            *o->flag = true;
        }
    }
    return 0;
}

static const char *health_name(int status)
{
    switch (status) {
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
        return "SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING:
        return "NOT_SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
        return "SERVICE_UNKNOWN";
    default:
        return "UNKNOWN";
    }
}

/* ---- health */

/* Check of one service: 0 and its status, or the exit status after the message. */
static int check_one(struct ctl *x, const char *service, int *status)
{
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *m;
    q.service = (char *)service;
    int rc = ctl_unary(x, HEALTH_CHECK, &q.base,
                       &grpc__health__v1__health_check_response__descriptor, &m);
    if (rc)
        return rc;
    *status = ((Grpc__Health__V1__HealthCheckResponse *)m)->status;
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

int ctl_cmd_health(struct ctl *x, int argc, char **argv)
{
    const char *service = NULL, *pos[1];
    int n_pos, rc;
    const struct opt opts[] = {{"--service", true, &service, NULL}};
    if ((rc = parse_args(x, argc, argv, opts, DSV4_ARRAY_LEN(opts), pos, 0, &n_pos)))
        return rc;
    const char *names[2] = {"", ENGINE_SERVICE};
    const char *labels[2] = {"alive", "ready"};
    int n = 2, status[2];
    if (service) {
        names[0] = service;
        n = 1;
    }
    bool serving = true;
    for (int i = 0; i < n; i++) {
        if ((rc = check_one(x, names[i], &status[i])))
            return rc;
        serving &= status[i] == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    }
    /* why not: the state and its reason (best effort: the call may need a key) */
    char state[64] = "", reason[256] = "";
    if (!serving) {
        Dsv4__GetServerInfoRequest q = DSV4__GET_SERVER_INFO_REQUEST__INIT;
        ProtobufCMessage *m;
        struct dsv4_gc_status st;
        if (!ctl_call(x, "/dsv4.Engine/GetServerInfo", &q.base,
                      &dsv4__get_server_info_response__descriptor, &m, &st)) {
            Dsv4__GetServerInfoResponse *r = (Dsv4__GetServerInfoResponse *)m;
            snprintf(state, sizeof(state), "%s", r->state);
            snprintf(reason, sizeof(reason), "%s", r->state_reason);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "target", x->target);
        if (service) {
            cJSON_AddStringToObject(o, "service", service);
            cJSON_AddStringToObject(o, "status", health_name(status[0]));
        } else {
            cJSON_AddStringToObject(o, "alive", health_name(status[0]));
            cJSON_AddStringToObject(o, "ready", health_name(status[1]));
        }
        cJSON_AddBoolToObject(o, "serving", serving);
        if (state[0]) {
            cJSON_AddStringToObject(o, "state", state);
            cJSON_AddStringToObject(o, "state_reason", reason);
        }
        if ((rc = ctl_print_json(o)))
            return rc;
    } else {
        for (int i = 0; i < n; i++)
            if (service)
                printf("%s: %s\n", service[0] ? service : "\"\"", health_name(status[i]));
            else
                printf("%s: %s\n", labels[i], health_name(status[i]));
        fflush(stdout);
    }
    if (serving)
        return 0;
    if (state[0])
        fprintf(stderr, "dsv4ctl: not serving: %s%s%s\n", state, reason[0] ? ": " : "", reason);
    else
        fprintf(stderr, "dsv4ctl: not serving\n");
    return CTL_EXIT_FAIL;
}

/* ---- watch */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct watch {
    struct ctl *x;
    const char *service;
    int count, seen;
    bool done, bad;
    struct dsv4_gc_status st;
};

static int watch_msg(void *arg, const uint8_t *msg, size_t len)
{
    struct watch *w = arg;
    Grpc__Health__V1__HealthCheckResponse *m =
            grpc__health__v1__health_check_response__unpack(NULL, len, msg);
    if (!m) {
        w->bad = true;
        return 1;
    }
    const char *name = health_name(m->status);
    grpc__health__v1__health_check_response__free_unpacked(m, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (w->x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "service", w->service);
        cJSON_AddStringToObject(o, "status", name);
        cJSON_AddNumberToObject(o, "time", (double)ts.tv_sec + ts.tv_nsec * 1e-9);
        ctl_print_json(o);
    } else {
        struct tm tm;
        char when[32];
        localtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof(when), "%H:%M:%S", &tm);
        printf("%s.%03ld %s %s\n", when, ts.tv_nsec / 1000000, w->service[0] ? w->service : "\"\"",
               name);
        fflush(stdout);
    }
    w->seen++;
    return w->count > 0 && w->seen >= w->count; /* enough: cancel */
}

static void watch_done(void *arg, const struct dsv4_gc_status *st)
{
    struct watch *w = arg;
    w->st = *st;
    w->done = true;
}

int ctl_cmd_watch(struct ctl *x, int argc, char **argv)
{
    const char *service = ENGINE_SERVICE, *count_s = NULL, *pos[1];
    int n_pos, rc, count = 0;
    const struct opt opts[] = {{"--service", true, &service, NULL},
                               {"--count", true, &count_s, NULL}};
    if ((rc = parse_args(x, argc, argv, opts, DSV4_ARRAY_LEN(opts), pos, 0, &n_pos)))
        return rc;
    if (count_s && (rc = ctl_opt_int(x, "--count", count_s, 1, 1000000000, &count)))
        return rc;
    if ((rc = ctl_connect(x)))
        return rc;
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)service;
    size_t len;
    uint8_t *buf = ctl_pack(&q.base, &len);
    if (!buf)
        return ctl_error(x, "out of memory");
    struct watch w = {.x = x, .service = service, .count = count};
    struct dsv4_gc_call *call;
    struct dsv4_gc_call_opts co = ctl_call_opts(x, 0);
    /* no SA_RESTART: the signal ends dsv4_gc_run's wait at once */
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = dsv4_gc_start(x->gc, HEALTH_WATCH, buf, len, &co, watch_msg, watch_done, &w, &call);
    free(buf);
    if (rc)
        return ctl_error(x, "%s", dsv4_errmsg());
    bool cancelled = false;
    while (!w.done) {
        dsv4_gc_run(x->gc, WATCH_SLICE_S);
        if (interrupted && !w.done && !cancelled) {
            dsv4_gc_cancel(call);
            cancelled = true;
        }
    }
    if (w.bad)
        return ctl_error(x, "watch: the server sent a malformed HealthCheckResponse");
    if (interrupted || (count > 0 && w.seen >= count) || w.st.code == DSV4_GRPC_OK)
        return 0;
    return ctl_status_error(x, &w.st);
}

/* ---- stats */

int ctl_cmd_stats(struct ctl *x, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc;
    if ((rc = parse_args(x, argc, argv, NULL, 0, pos, 0, &n_pos)))
        return rc;
    Dsv4__GetServerInfoRequest qs = DSV4__GET_SERVER_INFO_REQUEST__INIT;
    Dsv4__GetModelInfoRequest qm = DSV4__GET_MODEL_INFO_REQUEST__INIT;
    Dsv4__GetLoadsRequest ql = DSV4__GET_LOADS_REQUEST__INIT;
    ProtobufCMessage *ms = NULL, *mm = NULL, *ml = NULL;
    if ((rc = ctl_unary(x, "/dsv4.Engine/GetServerInfo", &qs.base,
                        &dsv4__get_server_info_response__descriptor, &ms)) ||
        (rc = ctl_unary(x, "/dsv4.Engine/GetModelInfo", &qm.base,
                        &dsv4__get_model_info_response__descriptor, &mm)) ||
        (rc = ctl_unary(x, "/dsv4.Engine/GetLoads", &ql.base, &dsv4__get_loads_response__descriptor,
                        &ml)))
        goto done;
    const Dsv4__GetServerInfoResponse *s = (const void *)ms;
    const Dsv4__GetModelInfoResponse *m = (const void *)mm;
    const Dsv4__GetLoadsResponse *l = (const void *)ml;
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON *js = cJSON_AddObjectToObject(o, "server");
        cJSON *jm = cJSON_AddObjectToObject(o, "model");
        cJSON *jl = cJSON_AddObjectToObject(o, "loads");
        if (!js || !jm || !jl) {
            cJSON_Delete(o);
            rc = ctl_error(x, "out of memory");
            goto done;
        }
        cJSON_AddStringToObject(js, "version", s->version);
        cJSON_AddStringToObject(js, "features", s->features);
        cJSON_AddStringToObject(js, "server_type", s->server_type);
        cJSON_AddStringToObject(js, "state", s->state);
        cJSON_AddStringToObject(js, "state_reason", s->state_reason);
        cJSON_AddNumberToObject(js, "uptime_seconds", s->uptime_seconds);
        cJSON_AddNumberToObject(js, "active_requests", s->active_requests);
        cJSON_AddNumberToObject(js, "queued_requests", s->queued_requests);
        cJSON_AddNumberToObject(js, "max_running_requests", s->max_running_requests);
        cJSON_AddNumberToObject(js, "max_message_bytes", s->max_message_bytes);
        cJSON_AddStringToObject(jm, "served_model_name", m->served_model_name);
        cJSON_AddStringToObject(jm, "model_path", m->model_path);
        cJSON_AddNumberToObject(jm, "max_context_length", (double)m->max_context_length);
        cJSON_AddNumberToObject(jm, "vocab_size", (double)m->vocab_size);
        cJSON *eos = cJSON_AddArrayToObject(jm, "eos_token_ids");
        for (size_t i = 0; eos && i < m->n_eos_token_ids; i++)
            cJSON_AddItemToArray(eos, cJSON_CreateNumber(m->eos_token_ids[i]));
        cJSON_AddNumberToObject(jm, "bos_token_id", m->bos_token_id);
        cJSON *arch = cJSON_AddArrayToObject(jm, "architectures");
        for (size_t i = 0; arch && i < m->n_architectures; i++)
            cJSON_AddItemToArray(arch, cJSON_CreateString(m->architectures[i]));
        cJSON_AddNumberToObject(jm, "mtp_depth", m->mtp_depth);
        cJSON_AddBoolToObject(jm, "is_generation", m->is_generation);
        cJSON_AddNumberToObject(jl, "num_running_reqs", l->num_running_reqs);
        cJSON_AddNumberToObject(jl, "num_waiting_reqs", l->num_waiting_reqs);
        cJSON_AddNumberToObject(jl, "max_running_requests", l->max_running_requests);
        cJSON_AddNumberToObject(jl, "free_blocks", (double)l->free_blocks);
        cJSON_AddNumberToObject(jl, "total_blocks", (double)l->total_blocks);
        cJSON_AddNumberToObject(jl, "token_usage", l->token_usage);
        cJSON_AddNumberToObject(jl, "gen_throughput", l->gen_throughput);
        cJSON_AddNumberToObject(jl, "workers", l->workers);
        cJSON_AddNumberToObject(jl, "workers_ready", l->workers_ready);
        rc = ctl_print_json(o);
        goto done;
    }
    printf("server:   dsv4d %s (%s) at %s, %s%s%s, up %.1f s\n", s->version, s->server_type,
           x->target, s->state, s->state_reason[0] ? ": " : "", s->state_reason, s->uptime_seconds);
    printf("          requests: %d active, %d queued, at most %d running; messages up to %u "
           "bytes\n",
           s->active_requests, s->queued_requests, s->max_running_requests, s->max_message_bytes);
    printf("          features: %s\n", s->features);
    printf("model:    %s (%s)\n", m->served_model_name, m->model_path);
    printf("          %s, vocabulary %lld, context %lld, bos %d, eos",
           m->n_architectures ? m->architectures[0] : "?", (long long)m->vocab_size,
           (long long)m->max_context_length, m->bos_token_id);
    for (size_t i = 0; i < m->n_eos_token_ids; i++)
        printf("%s%d", i ? "," : " ", m->eos_token_ids[i]);
    printf(", MTP depth %d\n", m->mtp_depth);
    printf("loads:    %d running, %d waiting (at most %d running)\n", l->num_running_reqs,
           l->num_waiting_reqs, l->max_running_requests);
    printf("          KV blocks %lld free of %lld (%.1f%% used), %.1f tokens/s, workers %d/%d "
           "ready\n",
           (long long)l->free_blocks, (long long)l->total_blocks, 100 * l->token_usage,
           l->gen_throughput, l->workers_ready, l->workers);
done:
    if (ms)
        protobuf_c_message_free_unpacked(ms, NULL);
    if (mm)
        protobuf_c_message_free_unpacked(mm, NULL);
    if (ml)
        protobuf_c_message_free_unpacked(ml, NULL);
    return rc;
}

/* ---- tokenizer */

int ctl_cmd_tokenize(struct ctl *x, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc;
    if ((rc = parse_args(x, argc, argv, NULL, 0, pos, 1, &n_pos)))
        return rc;
    if (n_pos != 1)
        return ctl_usage_error(x, "a TEXT is required");
    Dsv4__TokenizeRequest q = DSV4__TOKENIZE_REQUEST__INIT;
    ProtobufCMessage *m;
    q.text = (char *)pos[0];
    if ((rc = ctl_unary(x, "/dsv4.Engine/Tokenize", &q.base, &dsv4__tokenize_response__descriptor,
                        &m)))
        return rc;
    const Dsv4__TokenizeResponse *r = (const void *)m;
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON *ids = cJSON_AddArrayToObject(o, "token_ids");
        for (size_t i = 0; ids && i < r->n_token_ids; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->token_ids[i]));
        cJSON_AddNumberToObject(o, "count", r->count);
        rc = ctl_print_json(o);
    } else {
        for (size_t i = 0; i < r->n_token_ids; i++)
            printf("%s%u", i ? "," : "", r->token_ids[i]);
        printf("\n");
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int ctl_cmd_detokenize(struct ctl *x, int argc, char **argv)
{
    const char *pos[1];
    bool skip = false;
    int n_pos, rc;
    const struct opt opts[] = {{"--skip-special", false, NULL, &skip}};
    if ((rc = parse_args(x, argc, argv, opts, DSV4_ARRAY_LEN(opts), pos, 1, &n_pos)))
        return rc;
    if (n_pos != 1)
        return ctl_usage_error(x, "token ids like 1,2,3 are required");
    Dsv4__DetokenizeRequest q = DSV4__DETOKENIZE_REQUEST__INIT;
    ProtobufCMessage *m;
    uint32_t *ids;
    size_t n;
    if ((rc = ctl_opt_ids(x, "token ids", pos[0], &ids, &n)))
        return rc;
    q.token_ids = ids;
    q.n_token_ids = n;
    q.skip_special_tokens = skip;
    rc = ctl_unary(x, "/dsv4.Engine/Detokenize", &q.base, &dsv4__detokenize_response__descriptor,
                   &m);
    free(ids);
    if (rc)
        return rc;
    const Dsv4__DetokenizeResponse *r = (const void *)m;
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", r->text);
        rc = ctl_print_json(o);
    } else {
        printf("%s\n", r->text);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* ---- drain, abort */

int ctl_cmd_drain(struct ctl *x, int argc, char **argv)
{
    const char *pos[1];
    bool wait = false;
    int n_pos, rc;
    const struct opt opts[] = {{"--wait", false, NULL, &wait}};
    if ((rc = parse_args(x, argc, argv, opts, DSV4_ARRAY_LEN(opts), pos, 0, &n_pos)))
        return rc;
    Dsv4__DrainRequest q = DSV4__DRAIN_REQUEST__INIT;
    ProtobufCMessage *m;
    if ((rc = ctl_unary(x, "/dsv4.Engine/Drain", &q.base, &dsv4__drain_response__descriptor, &m)))
        return rc;
    char state[64];
    snprintf(state, sizeof(state), "%s", ((Dsv4__DrainResponse *)m)->state);
    protobuf_c_message_free_unpacked(m, NULL);
    double t0 = dsv4_now(), waited = -1;
    if (wait) {
        /* the server is gone once it refuses connections (it stops listening at the end) */
        double limit = x->timeout_s > 0 ? x->timeout_s : DRAIN_WAIT_S;
        dsv4_gc_close(x->gc);
        x->gc = NULL;
        for (;;) {
            struct dsv4_gc *c;
            struct dsv4_gc_opts o = {.target = x->target, .connect_timeout_s = 1};
            if (dsv4_gc_connect(&o, &c)) {
                waited = dsv4_now() - t0;
                break;
            }
            dsv4_gc_close(c);
            if (dsv4_now() - t0 > limit)
                return ctl_error(x, "drain: %s still accepts connections after %.0f s", x->target,
                                 limit);
            usleep((useconds_t)(DRAIN_POLL_S * 1e6));
        }
    }
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "state", state);
        if (wait) {
            cJSON_AddBoolToObject(o, "stopped", true);
            cJSON_AddNumberToObject(o, "wait_s", waited);
        }
        return ctl_print_json(o);
    }
    printf("%s\n", state);
    if (wait)
        printf("stopped (after %.1f s)\n", waited);
    return 0;
}

int ctl_cmd_abort(struct ctl *x, int argc, char **argv)
{
    const char *pos[1];
    int n_pos, rc;
    if ((rc = parse_args(x, argc, argv, NULL, 0, pos, 1, &n_pos)))
        return rc;
    if (n_pos != 1 || !pos[0][0])
        return ctl_usage_error(x, "a REQUEST_ID is required");
    Dsv4__AbortRequest q = DSV4__ABORT_REQUEST__INIT;
    ProtobufCMessage *m;
    q.request_id = (char *)pos[0];
    q.reason = (char *)"dsv4ctl abort";
    if ((rc = ctl_unary(x, "/dsv4.Engine/Abort", &q.base, &dsv4__abort_response__descriptor, &m)))
        return rc;
    const Dsv4__AbortResponse *r = (const void *)m;
    if (x->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "success", r->success);
        cJSON_AddStringToObject(o, "message", r->message);
        rc = ctl_print_json(o);
    } else if (r->success) {
        printf("%s\n", r->message);
    }
    if (!rc && !r->success) {
        fprintf(stderr, "dsv4ctl: abort: %s\n", r->message);
        rc = CTL_EXIT_FAIL;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}
