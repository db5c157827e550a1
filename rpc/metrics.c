/*
 * metrics.c - the metrics registry of rpc/metrics.h and its Prometheus text
 * exposition.
 *
 * Cells are C11 atomics: counter and gauge values and histogram sums are
 * _Atomic double (adds by compare-exchange), bucket counts _Atomic uint64_t
 * (one fetch-add per observation, in the bucket of the value; cumulated only
 * when formatting).  Relaxed ordering suffices: a scrape is a snapshot of
 * independent numbers.  A histogram's _count is the sum of its buckets as
 * read by the scrape, so _count always equals the +Inf bucket; its _sum may
 * lag or lead by the observations racing the scrape.
 *
 * The family list is appended under `mu` and read under it by the
 * formatter; updates go through family pointers and never take it.
 */
#include "rpc/metrics.h"

#include "base/dsv4.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dsv4_metric {
    enum dsv4_metric_kind kind;
    char *name, *help, *label;
    char **values;
    int n_values, n_bounds;
    double *bounds;
    _Atomic double *val;       /* [n_values]: value, or the histogram's sum */
    _Atomic uint64_t *buckets; /* [n_values][n_bounds + 1], the last is +Inf */
    struct dsv4_metric *next;
};

struct dsv4_metrics {
    pthread_mutex_t mu;
    struct dsv4_metric *head, *tail;
    struct dsv4_metric *std[DSV4_MET_COUNT];
};

/* ------------------------------------------------------------ families */

static bool valid_name(const char *s)
{
    if (!s || !*s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void family_free(struct dsv4_metric *f)
{
    if (!f)
        return;
    for (int i = 0; f->values && i < f->n_values; i++)
        free(f->values[i]);
    free(f->values);
    free(f->name);
    free(f->help);
    free(f->label);
    free(f->bounds);
    free((void *)f->val);
    free((void *)f->buckets);
    free(f);
}

static int check_family(const struct dsv4_metrics *m, enum dsv4_metric_kind kind, const char *name,
                        const char *help, const char *label, const char *const *values,
                        int n_values, const double *bounds, int n_bounds)
{
    if (kind != DSV4_METRIC_COUNTER && kind != DSV4_METRIC_GAUGE && kind != DSV4_METRIC_HISTOGRAM)
        return dsv4_error(DSV4_EINVAL, "metrics: unknown kind %d", (int)kind);
    if (!valid_name(name))
        return dsv4_error(DSV4_EINVAL, "metrics: invalid name '%s'", name ? name : "(null)");
    if (kind == DSV4_METRIC_COUNTER && !ends_with(name, "_total"))
        return dsv4_error(DSV4_EINVAL, "metrics: counter %s does not end in _total", name);
    if (!help || strchr(help, '\n'))
        return dsv4_error(DSV4_EINVAL, "metrics: %s: help must be one line", name);
    if (label) {
        if (!valid_name(label) || !strncmp(label, "__", 2) ||
            (kind == DSV4_METRIC_HISTOGRAM && !strcmp(label, "le")))
            return dsv4_error(DSV4_EINVAL, "metrics: %s: invalid label name '%s'", name, label);
        if (n_values < 1 || n_values > DSV4_METRICS_MAX_VALUES || !values)
            return dsv4_error(DSV4_EINVAL, "metrics: %s: %d label values not in [1, %d]", name,
                              n_values, DSV4_METRICS_MAX_VALUES);
        for (int i = 0; i < n_values; i++)
            if (!values[i])
                return dsv4_error(DSV4_EINVAL, "metrics: %s: label value %d missing", name, i);
    }
    if (kind == DSV4_METRIC_HISTOGRAM) {
        if (n_bounds < 1 || n_bounds > DSV4_METRICS_MAX_BOUNDS || !bounds)
            return dsv4_error(DSV4_EINVAL, "metrics: %s: %d bounds not in [1, %d]", name, n_bounds,
                              DSV4_METRICS_MAX_BOUNDS);
        for (int i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i && !(bounds[i] > bounds[i - 1])))
                return dsv4_error(DSV4_EINVAL, "metrics: %s: bounds not finite and ascending",
                                  name);
    }
    for (const struct dsv4_metric *f = m->head; f; f = f->next)
        if (!strcmp(f->name, name))
            return dsv4_error(DSV4_EEXIST, "metrics: %s registered twice", name);
    return 0;
}

int dsv4_metrics_family(struct dsv4_metrics *m, enum dsv4_metric_kind kind, const char *name,
                        const char *help, const char *label, const char *const *values,
                        int n_values, const double *bounds, int n_bounds, struct dsv4_metric **out)
{
    if (out)
        *out = NULL;
    if (!m)
        return dsv4_error(DSV4_EINVAL, "metrics: no registry");
    pthread_mutex_lock(&m->mu);
    int rc = check_family(m, kind, name, help, label, values, n_values, bounds, n_bounds);
    if (rc) {
        pthread_mutex_unlock(&m->mu);
        return rc;
    }
    int nv = label ? n_values : 1;
    int nb = kind == DSV4_METRIC_HISTOGRAM ? n_bounds : 0;
    struct dsv4_metric *f = calloc(1, sizeof(*f));
    bool ok = f != NULL;
    if (ok) {
        f->kind = kind;
        f->n_values = nv;
        f->n_bounds = nb;
        f->name = strdup(name);
        f->help = strdup(help);
        f->label = label ? strdup(label) : NULL;
        f->val = calloc((size_t)nv, sizeof(*f->val));
        ok = f->name && f->help && (!label || f->label) && f->val;
    }
    if (ok && label) {
        f->values = calloc((size_t)nv, sizeof(char *));
        ok = f->values != NULL;
        for (int i = 0; ok && i < nv; i++)
            ok = (f->values[i] = strdup(values[i])) != NULL;
    }
    if (ok && nb) {
        f->bounds = malloc((size_t)nb * sizeof(double));
        f->buckets = calloc((size_t)nv * (size_t)(nb + 1), sizeof(*f->buckets));
        ok = f->bounds && f->buckets;
        if (ok)
            memcpy(f->bounds, bounds, (size_t)nb * sizeof(double));
    }
    if (!ok) {
        family_free(f);
        pthread_mutex_unlock(&m->mu);
        return dsv4_error(DSV4_ENOMEM, "metrics: out of memory");
    }
    for (int i = 0; i < nv; i++)
        atomic_init(&f->val[i], 0.0);
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->mu);
    if (out)
        *out = f;
    return 0;
}

/* ------------------------------------------------------------ standard set */

static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                     20.0,  40.0,  80.0, 160., 640., 2560.};
/* From 1 ms: MTP decoding on B300-class machines emits tokens every few ms. */
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
                                    0.04,  0.05,   0.075, 0.1,    0.15, 0.2,   0.3,  0.4,   0.5,
                                    0.75,  1.0,    2.5,   5.0,    10.0, 20.0,  40.0, 80.0};
static const double e2e_bounds[] = {0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,
                                    5.0,  10.0, 15.0, 20.0,  30.0,  40.0,  50.0,
                                    60.0, 120., 240., 480.0, 960.0, 1920., 7680.};
static const double queue_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1,  0.25, 0.5,  1.0,  2.5,
                                      5.0,   10.0,  20.0, 40.0, 80.0, 160., 640., 2560.};

static const char *const outcome_values[] = {"stop", "length", "abort", "error"};
static const char *const pos_values[DSV4_METRICS_MAX_POS] = {"0", "1", "2", "3",
                                                             "4", "5", "6", "7"};
static const char *const http_codes[] = {"200", "400", "401", "404", "405", "408",  "413",
                                         "429", "431", "500", "501", "503", "other"};

struct std_family {
    enum dsv4_metrics_id id;
    enum dsv4_metric_kind kind;
    const char *name, *help, *label;
    const char *const *values;
    int n_values;
    const double *bounds;
    int n_bounds;
};

#define C    DSV4_METRIC_COUNTER
#define G    DSV4_METRIC_GAUGE
#define H    DSV4_METRIC_HISTOGRAM
#define N(a) a, (int)DSV4_ARRAY_LEN(a)
static const struct std_family std_families[] = {
        {DSV4_MET_REQUEST_SUCCESS, C, "dsv4_request_success_total",
         "Finished requests by finish reason.", "finished_reason", N(outcome_values), NULL, 0},
        {DSV4_MET_RUNNING, G, "dsv4_num_requests_running", "Requests running (in batches).", NULL,
         NULL, 0, NULL, 0},
        {DSV4_MET_WAITING, G, "dsv4_num_requests_waiting", "Requests waiting in the queue.", NULL,
         NULL, 0, NULL, 0},
        {DSV4_MET_SWAPPED, G, "dsv4_num_requests_swapped",
         "Requests waiting with their state swapped out to host memory (also counted as "
         "waiting).",
         NULL, NULL, 0, NULL, 0},
        {DSV4_MET_TTFT, H, "dsv4_time_to_first_token_seconds",
         "Time from the request's arrival to its first output token.", NULL, NULL, 0,
         N(ttft_bounds)},
        {DSV4_MET_ITL, H, "dsv4_inter_token_latency_seconds",
         "Time between consecutive output deliveries of a request.", NULL, NULL, 0, N(itl_bounds)},
        {DSV4_MET_E2E, H, "dsv4_e2e_request_latency_seconds",
         "Time from a request's arrival to its end.", NULL, NULL, 0, N(e2e_bounds)},
        {DSV4_MET_QUEUE_TIME, H, "dsv4_request_queue_time_seconds",
         "Time requests spent waiting before their first step.", NULL, NULL, 0, N(queue_bounds)},
        {DSV4_MET_PROMPT_TOKENS, C, "dsv4_prompt_tokens_total", "Prompt tokens processed.", NULL,
         NULL, 0, NULL, 0},
        {DSV4_MET_GENERATION_TOKENS, C, "dsv4_generation_tokens_total", "Tokens generated.", NULL,
         NULL, 0, NULL, 0},
        {DSV4_MET_KV_USAGE, G, "dsv4_kv_cache_usage_perc",
         "Fraction of the state pool's blocks in use (0 to 1).", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_KV_FREE_BLOCKS, G, "dsv4_kv_cache_free_blocks", "Free blocks of the state pool.",
         NULL, NULL, 0, NULL, 0},
        {DSV4_MET_KV_TOTAL_BLOCKS, G, "dsv4_kv_cache_total_blocks",
         "Total blocks of the state pool.", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_PREEMPTIONS, C, "dsv4_num_preemptions_total",
         "Requests preempted (state dropped or swapped out) to make room.", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_SPEC_DRAFTS, C, "dsv4_spec_decode_num_drafts_total",
         "MTP draft sequences verified.", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_SPEC_DRAFT_TOKENS, C, "dsv4_spec_decode_num_draft_tokens_total",
         "MTP draft tokens proposed.", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_SPEC_ACCEPTED_TOKENS, C, "dsv4_spec_decode_num_accepted_tokens_total",
         "MTP draft tokens accepted.", NULL, NULL, 0, NULL, 0},
        {DSV4_MET_SPEC_ACCEPTED_PER_POS, C, "dsv4_spec_decode_num_accepted_tokens_per_pos_total",
         "MTP draft tokens accepted, by draft position.", "position", N(pos_values), NULL, 0},
        {DSV4_MET_SPEC_DRAFT_PER_POS, C, "dsv4_spec_decode_num_draft_tokens_per_pos_total",
         "MTP draft tokens proposed, by draft position.", "position", N(pos_values), NULL, 0},
        {DSV4_MET_WORKER_RESTARTS, C, "dsv4_worker_restarts_total", "Worker processes restarted.",
         NULL, NULL, 0, NULL, 0},
        {DSV4_MET_WORKERS, G, "dsv4_workers", "Worker processes (ranks) configured.", NULL, NULL, 0,
         NULL, 0},
        {DSV4_MET_WORKERS_READY, G, "dsv4_workers_ready", "Worker processes ready.", NULL, NULL, 0,
         NULL, 0},
        {DSV4_MET_SERVER_STATE, G, "dsv4_server_state",
         "Readiness state: 1 for the current state, 0 for the others.", "state", NULL,
         DSV4_SVC_STATE_COUNT, NULL, 0},
        {DSV4_MET_BUILD_INFO, G, "dsv4_build_info", "Build information (always 1).", "version",
         NULL, 1, NULL, 0},
        {DSV4_MET_HTTP_REQUESTS, C, "dsv4_http_requests_total",
         "HTTP requests answered, by status code.", "code", N(http_codes), NULL, 0},
        {DSV4_MET_HTTP_CONNECTIONS, G, "dsv4_http_connections", "Open HTTP connections.", NULL,
         NULL, 0, NULL, 0},
        {DSV4_MET_HTTP_REJECTED, C, "dsv4_http_connections_rejected_total",
         "HTTP connections refused at the connection cap.", NULL, NULL, 0, NULL, 0},
};
#undef C
#undef G
#undef H
#undef N

int dsv4_metrics_new(struct dsv4_metrics **out)
{
    *out = NULL;
    struct dsv4_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return dsv4_error(DSV4_ENOMEM, "metrics: out of memory");
    pthread_mutex_init(&m->mu, NULL);
    const char *states[DSV4_SVC_STATE_COUNT];
    for (int i = 0; i < DSV4_SVC_STATE_COUNT; i++)
        states[i] = dsv4_svc_state_name((enum dsv4_svc_state)i);
    const char *version[1] = {dsv4_version()};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(std_families); i++) {
        const struct std_family *s = &std_families[i];
        const char *const *values = s->values;
        if (s->id == DSV4_MET_SERVER_STATE)
            values = states;
        else if (s->id == DSV4_MET_BUILD_INFO)
            values = version;
        int rc = dsv4_metrics_family(m, s->kind, s->name, s->help, s->label, values, s->n_values,
                                     s->bounds, s->n_bounds, &m->std[s->id]);
        if (rc) {
            dsv4_metrics_free(m);
            return rc;
        }
    }
    DSV4_ASSERT(DSV4_ARRAY_LEN(std_families) == DSV4_MET_COUNT);
    dsv4_metric_set(m->std[DSV4_MET_BUILD_INFO], 0, 1.0);
    *out = m;
    return 0;
}

void dsv4_metrics_free(struct dsv4_metrics *m)
{
    if (!m)
        return;
    struct dsv4_metric *f = m->head;
    while (f) {
        struct dsv4_metric *next = f->next;
        family_free(f);
        f = next;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

struct dsv4_metric *dsv4_metrics_get(struct dsv4_metrics *m, enum dsv4_metrics_id id)
{
    return m && (unsigned)id < DSV4_MET_COUNT ? m->std[id] : NULL;
}

/* ------------------------------------------------------------ updates */

static void atomic_add_double(_Atomic double *a, double v)
{
    double old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, old + v, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

void dsv4_metric_add(struct dsv4_metric *f, int idx, double v)
{
    if (!f || idx < 0 || idx >= f->n_values || f->kind == DSV4_METRIC_HISTOGRAM || isnan(v))
        return;
    if (f->kind == DSV4_METRIC_COUNTER && !(v >= 0))
        return;
    atomic_add_double(&f->val[idx], v);
}

void dsv4_metric_set(struct dsv4_metric *f, int idx, double v)
{
    if (!f || idx < 0 || idx >= f->n_values || f->kind != DSV4_METRIC_GAUGE)
        return;
    atomic_store_explicit(&f->val[idx], v, memory_order_relaxed);
}

void dsv4_metric_observe(struct dsv4_metric *f, int idx, double v)
{
    if (!f || idx < 0 || idx >= f->n_values || f->kind != DSV4_METRIC_HISTOGRAM || isnan(v))
        return;
    /* Few bounds: a linear scan is as fast as a binary search here. */
    int b = 0;
    while (b < f->n_bounds && v > f->bounds[b])
        b++;
    atomic_fetch_add_explicit(&f->buckets[(size_t)idx * (size_t)(f->n_bounds + 1) + (size_t)b], 1,
                              memory_order_relaxed);
    atomic_add_double(&f->val[idx], v);
}

static uint64_t hist_count(const struct dsv4_metric *f, int idx)
{
    uint64_t n = 0;
    for (int b = 0; b <= f->n_bounds; b++)
        n += atomic_load_explicit(&f->buckets[(size_t)idx * (size_t)(f->n_bounds + 1) + (size_t)b],
                                  memory_order_relaxed);
    return n;
}

double dsv4_metric_value(const struct dsv4_metric *f, int idx)
{
    if (!f || idx < 0 || idx >= f->n_values)
        return 0.0;
    if (f->kind == DSV4_METRIC_HISTOGRAM)
        return (double)hist_count(f, idx);
    return atomic_load_explicit(&f->val[idx], memory_order_relaxed);
}

double dsv4_metric_sum(const struct dsv4_metric *f, int idx)
{
    if (!f || idx < 0 || idx >= f->n_values || f->kind != DSV4_METRIC_HISTOGRAM)
        return 0.0;
    return atomic_load_explicit(&f->val[idx], memory_order_relaxed);
}

void dsv4_metrics_request_done(struct dsv4_metrics *m, enum dsv4_metrics_outcome o, double e2e_s,
                               int64_t prompt_tokens, int64_t generation_tokens)
{
    if (!m)
        return;
    dsv4_metric_add(m->std[DSV4_MET_REQUEST_SUCCESS], (int)o, 1.0);
    dsv4_metric_observe(m->std[DSV4_MET_E2E], 0, e2e_s);
    if (prompt_tokens > 0)
        dsv4_metric_add(m->std[DSV4_MET_PROMPT_TOKENS], 0, (double)prompt_tokens);
    if (generation_tokens > 0)
        dsv4_metric_add(m->std[DSV4_MET_GENERATION_TOKENS], 0, (double)generation_tokens);
}

void dsv4_metrics_ttft(struct dsv4_metrics *m, double seconds)
{
    if (m)
        dsv4_metric_observe(m->std[DSV4_MET_TTFT], 0, seconds);
}

void dsv4_metrics_itl(struct dsv4_metrics *m, double seconds)
{
    if (m)
        dsv4_metric_observe(m->std[DSV4_MET_ITL], 0, seconds);
}

void dsv4_metrics_queue_time(struct dsv4_metrics *m, double seconds)
{
    if (m)
        dsv4_metric_observe(m->std[DSV4_MET_QUEUE_TIME], 0, seconds);
}

void dsv4_metrics_preemption(struct dsv4_metrics *m)
{
    if (m)
        dsv4_metric_add(m->std[DSV4_MET_PREEMPTIONS], 0, 1.0);
}

void dsv4_metrics_worker_restart(struct dsv4_metrics *m)
{
    if (m)
        dsv4_metric_add(m->std[DSV4_MET_WORKER_RESTARTS], 0, 1.0);
}

void dsv4_metrics_spec_decode(struct dsv4_metrics *m, int n_drafted, int n_accepted)
{
    if (!m || n_drafted < 1 || n_accepted < 0 || n_accepted > n_drafted)
        return;
    dsv4_metric_add(m->std[DSV4_MET_SPEC_DRAFTS], 0, 1.0);
    dsv4_metric_add(m->std[DSV4_MET_SPEC_DRAFT_TOKENS], 0, n_drafted);
    dsv4_metric_add(m->std[DSV4_MET_SPEC_ACCEPTED_TOKENS], 0, n_accepted);
    for (int p = 0; p < n_drafted; p++) {
        int idx = DSV4_MIN(p, DSV4_METRICS_MAX_POS - 1);
        dsv4_metric_add(m->std[DSV4_MET_SPEC_DRAFT_PER_POS], idx, 1.0);
        if (p < n_accepted)
            dsv4_metric_add(m->std[DSV4_MET_SPEC_ACCEPTED_PER_POS], idx, 1.0);
    }
}

void dsv4_metrics_set_loads(struct dsv4_metrics *m, const struct dsv4_svc_loads *l)
{
    if (!m || !l)
        return;
    dsv4_metric_set(m->std[DSV4_MET_RUNNING], 0, l->running);
    dsv4_metric_set(m->std[DSV4_MET_WAITING], 0, l->queued);
    dsv4_metric_set(m->std[DSV4_MET_SWAPPED], 0, l->swapped);
    dsv4_metric_set(m->std[DSV4_MET_KV_FREE_BLOCKS], 0, (double)l->free_blocks);
    dsv4_metric_set(m->std[DSV4_MET_KV_TOTAL_BLOCKS], 0, (double)l->total_blocks);
    double usage = 0.0;
    if (l->total_blocks > 0 && l->free_blocks >= 0 && l->free_blocks <= l->total_blocks)
        usage = 1.0 - (double)l->free_blocks / (double)l->total_blocks;
    dsv4_metric_set(m->std[DSV4_MET_KV_USAGE], 0, usage);
    dsv4_metric_set(m->std[DSV4_MET_WORKERS], 0, l->workers);
    dsv4_metric_set(m->std[DSV4_MET_WORKERS_READY], 0, l->workers_ready);
}

void dsv4_metrics_set_state(struct dsv4_metrics *m, enum dsv4_svc_state s)
{
    if (!m)
        return;
    for (int i = 0; i < DSV4_SVC_STATE_COUNT; i++)
        dsv4_metric_set(m->std[DSV4_MET_SERVER_STATE], i, i == (int)s ? 1.0 : 0.0);
}

/* ------------------------------------------------------------ exposition */

struct out {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = 0;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Prometheus numbers: integers below 1e15 as integers, others in the shortest
 * %g form that reads back exactly, NaN / +Inf / -Inf as the format spells them. */
static void put_num(struct out *o, double v)
{
    char buf[40];
    if (isnan(v))
        snprintf(buf, sizeof(buf), "NaN");
    else if (isinf(v))
        snprintf(buf, sizeof(buf), v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, sizeof(buf), "%.0f", v);
    else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, sizeof(buf), "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
    puts_(o, buf);
}

/* Label values escape backslash, double quote and newline; help text backslash and newline. */
static void put_escaped(struct out *o, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            puts_(o, "\\\\");
        else if (*s == '\n')
            puts_(o, "\\n");
        else if (quote && *s == '"')
            puts_(o, "\\\"");
        else
            put(o, s, 1);
    }
}

static void put_series(struct out *o, const struct dsv4_metric *f, const char *suffix, int idx,
                       const char *le)
{
    puts_(o, f->name);
    puts_(o, suffix);
    if (f->label || le) {
        puts_(o, "{");
        if (f->label) {
            puts_(o, f->label);
            puts_(o, "=\"");
            put_escaped(o, f->values[idx], true);
            puts_(o, "\"");
        }
        if (le) {
            puts_(o, f->label ? ",le=\"" : "le=\"");
            puts_(o, le);
            puts_(o, "\"");
        }
        puts_(o, "}");
    }
    puts_(o, " ");
}

static void format_family(struct out *o, const struct dsv4_metric *f)
{
    static const char *const kinds[] = {"counter", "gauge", "histogram"};
    puts_(o, "# HELP ");
    puts_(o, f->name);
    puts_(o, " ");
    put_escaped(o, f->help, false);
    puts_(o, "\n# TYPE ");
    puts_(o, f->name);
    puts_(o, " ");
    puts_(o, kinds[f->kind]);
    puts_(o, "\n");
    for (int i = 0; i < f->n_values; i++) {
        if (f->kind != DSV4_METRIC_HISTOGRAM) {
            put_series(o, f, "", i, NULL);
            put_num(o, atomic_load_explicit(&f->val[i], memory_order_relaxed));
            puts_(o, "\n");
            continue;
        }
        uint64_t cum = 0;
        char le[40];
        for (int b = 0; b <= f->n_bounds; b++) {
            cum += atomic_load_explicit(
                    &f->buckets[(size_t)i * (size_t)(f->n_bounds + 1) + (size_t)b],
                    memory_order_relaxed);
            if (b < f->n_bounds) {
                struct out t = {0};
                put_num(&t, f->bounds[b]);
                snprintf(le, sizeof(le), "%s", t.p ? t.p : "0");
                free(t.p);
            } else {
                snprintf(le, sizeof(le), "+Inf");
            }
            put_series(o, f, "_bucket", i, le);
            put_num(o, (double)cum);
            puts_(o, "\n");
        }
        put_series(o, f, "_sum", i, NULL);
        put_num(o, atomic_load_explicit(&f->val[i], memory_order_relaxed));
        puts_(o, "\n");
        put_series(o, f, "_count", i, NULL);
        put_num(o, (double)cum);
        puts_(o, "\n");
    }
}

int dsv4_metrics_format(struct dsv4_metrics *m, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    if (!m)
        return dsv4_error(DSV4_EINVAL, "metrics: no registry");
    struct out o = {0};
    pthread_mutex_lock(&m->mu);
    for (const struct dsv4_metric *f = m->head; f; f = f->next)
        format_family(&o, f);
    pthread_mutex_unlock(&m->mu);
    if (!o.p)
        put(&o, "", 0);
    if (o.oom) {
        free(o.p);
        return dsv4_error(DSV4_ENOMEM, "metrics: out of memory");
    }
    *text = o.p;
    *len = o.len;
    return 0;
}
