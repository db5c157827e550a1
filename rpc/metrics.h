/*
 * metrics.h - the daemon's metrics registry and its Prometheus text
 * exposition (format 0.0.4, served at GET /metrics by rpc/http.c).
 *
 * Why a registry of our own: the daemon is C, the series are few and fixed,
 * and updates happen on hot paths of several threads (the scheduler, the
 * front ends' connection loops), so every update is one or two relaxed
 * atomic operations on preallocated cells, never a lock or an allocation.
 *
 * Model: a family (counter, gauge or histogram) has a name, a help text and
 * at most one label whose values are fixed when the family is registered;
 * cell `idx` of a family is its series for values[idx] (idx 0 when it has
 * no label).  Histograms have fixed upper bounds (ascending, +Inf implied).
 * Registration happens before the registry is shared (or under its lock:
 * dsv4_metrics_family may be called at any time); families live until
 * dsv4_metrics_free.  Updates may come from any thread at any time.
 *
 * The standard series (dsv4_metrics_new registers them all).  Where vLLM
 * has the series, the name is vLLM's with dsv4_ for vllm: (promtool
 * rejects ':' in exported names); "ours" marks the others.  Who updates:
 * "fe", the front end serving the request (rpc/http.c does; so must the
 * gRPC one, and the daemon must not count those again); "d", the daemon;
 * "scrape", refreshed from the service's loads() / state() by the HTTP
 * front end at each scrape (the daemon may also set them at any time).
 *
 *   dsv4_...                                     type       vLLM  by
 *   request_success_total{finished_reason}       counter    same  fe
 *       finished_reason: stop | length | abort | error
 *   num_requests_running                         gauge      same  scrape
 *   num_requests_waiting (the queue depth)       gauge      same  scrape
 *   time_to_first_token_seconds                  histogram  same  fe
 *   inter_token_latency_seconds                  histogram  same  fe
 *   e2e_request_latency_seconds                  histogram  same  fe
 *   request_queue_time_seconds                   histogram  same  d
 *   prompt_tokens_total                          counter    same  fe
 *   generation_tokens_total                      counter    same  fe
 *   kv_cache_usage_perc (a ratio in [0, 1])      gauge      same  scrape
 *   kv_cache_free_blocks, kv_cache_total_blocks  gauge      ours  scrape
 *   num_preemptions_total                        counter    same  d
 *   spec_decode_num_drafts_total                 counter    same  d
 *   spec_decode_num_draft_tokens_total           counter    same  d
 *   spec_decode_num_accepted_tokens_total        counter    same  d
 *   spec_decode_num_accepted_tokens_per_pos_total{position}
 *                                                counter    same  d
 *   spec_decode_num_draft_tokens_per_pos_total{position}
 *                                                counter    ours  d
 *   worker_restarts_total                        counter    ours  d
 *   workers, workers_ready                       gauge      ours  scrape
 *   server_state{state}                          gauge      ours  scrape
 *       1 for the current state, 0 for the others (the states of rpc/service.h)
 *   build_info{version} (always 1)               gauge      ours  itself
 *   http_requests_total{code}                    counter    ours  rpc/http.c
 *   http_connections                             gauge      ours  rpc/http.c
 *   http_connections_rejected_total              counter    ours  rpc/http.c
 */
#ifndef DSV4_RPC_METRICS_H
#define DSV4_RPC_METRICS_H

#include "rpc/service.h"

#include <stddef.h>
#include <stdint.h>

enum dsv4_metric_kind { DSV4_METRIC_COUNTER = 0, DSV4_METRIC_GAUGE = 1, DSV4_METRIC_HISTOGRAM = 2 };

/* Draft positions with their own per-position series (deeper drafts count in the last). */
#define DSV4_METRICS_MAX_POS 8
/* Most values of a family's label, most bounds of a histogram. */
#define DSV4_METRICS_MAX_VALUES 64
#define DSV4_METRICS_MAX_BOUNDS 40

/* The standard families, for dsv4_metrics_get. */
enum dsv4_metrics_id {
    DSV4_MET_REQUEST_SUCCESS = 0,
    DSV4_MET_RUNNING,
    DSV4_MET_WAITING,
    DSV4_MET_SWAPPED,
    DSV4_MET_TTFT,
    DSV4_MET_ITL,
    DSV4_MET_E2E,
    DSV4_MET_QUEUE_TIME,
    DSV4_MET_PROMPT_TOKENS,
    DSV4_MET_GENERATION_TOKENS,
    DSV4_MET_KV_USAGE,
    DSV4_MET_KV_FREE_BLOCKS,
    DSV4_MET_KV_TOTAL_BLOCKS,
    DSV4_MET_PREEMPTIONS,
    DSV4_MET_SPEC_DRAFTS,
    DSV4_MET_SPEC_DRAFT_TOKENS,
    DSV4_MET_SPEC_ACCEPTED_TOKENS,
    DSV4_MET_SPEC_ACCEPTED_PER_POS,
    DSV4_MET_SPEC_DRAFT_PER_POS,
    DSV4_MET_WORKER_RESTARTS,
    DSV4_MET_WORKERS,
    DSV4_MET_WORKERS_READY,
    DSV4_MET_SERVER_STATE,
    DSV4_MET_BUILD_INFO,
    DSV4_MET_HTTP_REQUESTS,
    DSV4_MET_HTTP_CONNECTIONS,
    DSV4_MET_HTTP_REJECTED,
    DSV4_MET_COUNT
};

/* Label index of request_success_total. */
enum dsv4_metrics_outcome {
    DSV4_METRICS_STOP = 0,
    DSV4_METRICS_LENGTH = 1,
    DSV4_METRICS_ABORT = 2,
    DSV4_METRICS_ERROR = 3
};

struct dsv4_metrics;
struct dsv4_metric;

/* A registry with every standard family registered.  Owned by the caller
 * (dsv4_metrics_free, after every thread that updates it has stopped). */
int dsv4_metrics_new(struct dsv4_metrics **out);
void dsv4_metrics_free(struct dsv4_metrics *m);

/* A standard family (never NULL for a valid id). */
struct dsv4_metric *dsv4_metrics_get(struct dsv4_metrics *m, enum dsv4_metrics_id id);

/*
 * Registers a family: `name` ([a-zA-Z_][a-zA-Z0-9_]*, counters ending in
 * _total), `help` (one line), an optional `label` with n_values values
 * (label NULL: n_values ignored, one series), and for histograms n_bounds
 * ascending finite upper bounds.  Strings are copied.  DSV4_EINVAL for a
 * bad name, label or bounds, DSV4_EEXIST for a name already registered.
 * The family belongs to the registry.
 */
int dsv4_metrics_family(struct dsv4_metrics *m, enum dsv4_metric_kind kind, const char *name,
                        const char *help, const char *label, const char *const *values,
                        int n_values, const double *bounds, int n_bounds, struct dsv4_metric **out);

/* Updates of series idx (0 without a label; out-of-range idx and NULL families are
 * ignored, negative counter increments too).  Lock-free, any thread. */
void dsv4_metric_add(struct dsv4_metric *f, int idx, double v);     /* counter, gauge */
void dsv4_metric_set(struct dsv4_metric *f, int idx, double v);     /* gauge */
void dsv4_metric_observe(struct dsv4_metric *f, int idx, double v); /* histogram */
/* Current value of a counter/gauge series, or the count of a histogram series (tests). */
double dsv4_metric_value(const struct dsv4_metric *f, int idx);
/* Sum of a histogram series. */
double dsv4_metric_sum(const struct dsv4_metric *f, int idx);

/* ---- helpers for the standard series */

/* A finished request: its outcome, end-to-end seconds, prompt and generated tokens. */
void dsv4_metrics_request_done(struct dsv4_metrics *m, enum dsv4_metrics_outcome o, double e2e_s,
                               int64_t prompt_tokens, int64_t generation_tokens);
void dsv4_metrics_ttft(struct dsv4_metrics *m, double seconds);
void dsv4_metrics_itl(struct dsv4_metrics *m, double seconds);
void dsv4_metrics_queue_time(struct dsv4_metrics *m, double seconds);
void dsv4_metrics_preemption(struct dsv4_metrics *m);
void dsv4_metrics_worker_restart(struct dsv4_metrics *m);
/* One MTP verification: n_drafted draft tokens proposed at positions 0..n_drafted-1,
 * of which the first n_accepted were accepted (0 <= n_accepted <= n_drafted). */
void dsv4_metrics_spec_decode(struct dsv4_metrics *m, int n_drafted, int n_accepted);
/* running, waiting, KV blocks and usage, workers. */
void dsv4_metrics_set_loads(struct dsv4_metrics *m, const struct dsv4_svc_loads *l);
void dsv4_metrics_set_state(struct dsv4_metrics *m, enum dsv4_svc_state s);

/*
 * The exposition text of every family in registration order, with # HELP
 * and # TYPE lines, cumulative histogram buckets ending at +Inf, _sum and
 * _count.  *text is malloc'ed (caller frees), NUL-terminated, *len bytes.
 */
int dsv4_metrics_format(struct dsv4_metrics *m, char **text, size_t *len);

/* Content-Type of the exposition. */
#define DSV4_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
