/*
 * test_http_metrics.c - the metrics registry (rpc/metrics.h) and its
 * Prometheus text: every standard family with HELP and TYPE, counter,
 * gauge and cumulative histogram values, the per-position MTP series, label
 * escaping and number spelling, refused registrations, and exact totals
 * under concurrent updates.  (The served /metrics is linted by promtool in
 * test_http_server.py.)
 */
#include "rpc/metrics.h"
#include "tests/test.h"

#include "base/dsv4.h"

#include <math.h>
#include <pthread.h>

static char *text;

static void refresh(struct dsv4_metrics *m)
{
    size_t len = 0;
    free(text);
    text = NULL;
    CHECK(dsv4_metrics_format(m, &text, &len) == 0);
    CHECK(text && strlen(text) == len);
}

/* The line "series value" is in the text. */
static bool has_line(const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !memcmp(p, line, n))
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

#define CHECK_LINE(l) CHECKF(has_line(l), "missing line: %s", l)

static void test_standard(void)
{
    struct dsv4_metrics *m;
    CHECK(dsv4_metrics_new(&m) == 0);
    refresh(m);
    static const char *const families[] = {
            "dsv4_request_success_total counter",
            "dsv4_num_requests_running gauge",
            "dsv4_num_requests_waiting gauge",
            "dsv4_num_requests_swapped gauge",
            "dsv4_time_to_first_token_seconds histogram",
            "dsv4_inter_token_latency_seconds histogram",
            "dsv4_e2e_request_latency_seconds histogram",
            "dsv4_request_queue_time_seconds histogram",
            "dsv4_prompt_tokens_total counter",
            "dsv4_generation_tokens_total counter",
            "dsv4_kv_cache_usage_perc gauge",
            "dsv4_kv_cache_free_blocks gauge",
            "dsv4_kv_cache_total_blocks gauge",
            "dsv4_num_preemptions_total counter",
            "dsv4_spec_decode_num_drafts_total counter",
            "dsv4_spec_decode_num_draft_tokens_total counter",
            "dsv4_spec_decode_num_accepted_tokens_total counter",
            "dsv4_spec_decode_num_accepted_tokens_per_pos_total counter",
            "dsv4_spec_decode_num_draft_tokens_per_pos_total counter",
            "dsv4_worker_restarts_total counter",
            "dsv4_server_state gauge",
            "dsv4_build_info gauge",
            "dsv4_http_requests_total counter",
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(families); i++) {
        char line[256];
        snprintf(line, sizeof(line), "# TYPE %s", families[i]);
        CHECK_LINE(line);
    }
    CHECK_LINE("dsv4_request_success_total{finished_reason=\"error\"} 0");
    CHECK_LINE("dsv4_time_to_first_token_seconds_bucket{le=\"+Inf\"} 0");
    char build[128];
    snprintf(build, sizeof(build), "dsv4_build_info{version=\"%s\"} 1", dsv4_version());
    CHECK_LINE(build);

    dsv4_metrics_request_done(m, DSV4_METRICS_STOP, 0.5, 10, 20);
    dsv4_metrics_request_done(m, DSV4_METRICS_LENGTH, 2.0, 5, 7);
    dsv4_metrics_request_done(m, DSV4_METRICS_ERROR, 0.1, 3, 0);
    dsv4_metrics_ttft(m, 0.03);
    dsv4_metrics_itl(m, 0.004);
    dsv4_metrics_itl(m, 0.004);
    dsv4_metrics_queue_time(m, 1e9);
    dsv4_metrics_preemption(m);
    dsv4_metrics_worker_restart(m);
    dsv4_metrics_spec_decode(m, 3, 2);
    dsv4_metrics_spec_decode(m, 10, 10); /* deeper than the per-position series */
    dsv4_metrics_spec_decode(m, 2, 3);   /* accepted > drafted: ignored */
    struct dsv4_svc_loads l = {.running = 3,
                               .queued = 9,
                               .swapped = 2,
                               .free_blocks = 250,
                               .total_blocks = 1000,
                               .workers = 8,
                               .workers_ready = 7};
    dsv4_metrics_set_loads(m, &l);
    dsv4_metrics_set_state(m, DSV4_SVC_DEGRADED);
    refresh(m);
    CHECK_LINE("dsv4_request_success_total{finished_reason=\"stop\"} 1");
    CHECK_LINE("dsv4_request_success_total{finished_reason=\"length\"} 1");
    CHECK_LINE("dsv4_request_success_total{finished_reason=\"abort\"} 0");
    CHECK_LINE("dsv4_request_success_total{finished_reason=\"error\"} 1");
    CHECK_LINE("dsv4_prompt_tokens_total 18");
    CHECK_LINE("dsv4_generation_tokens_total 27");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_bucket{le=\"0.3\"} 1");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_bucket{le=\"0.5\"} 2");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_bucket{le=\"1.5\"} 2");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_bucket{le=\"2\"} 3");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_bucket{le=\"+Inf\"} 3");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_sum 2.6");
    CHECK_LINE("dsv4_e2e_request_latency_seconds_count 3");
    CHECK_LINE("dsv4_time_to_first_token_seconds_bucket{le=\"0.02\"} 0");
    CHECK_LINE("dsv4_time_to_first_token_seconds_bucket{le=\"0.04\"} 1");
    CHECK_LINE("dsv4_inter_token_latency_seconds_bucket{le=\"0.0025\"} 0");
    CHECK_LINE("dsv4_inter_token_latency_seconds_bucket{le=\"0.005\"} 2");
    CHECK_LINE("dsv4_inter_token_latency_seconds_sum 0.008");
    CHECK_LINE("dsv4_request_queue_time_seconds_bucket{le=\"2560\"} 0");
    CHECK_LINE("dsv4_request_queue_time_seconds_bucket{le=\"+Inf\"} 1");
    CHECK_LINE("dsv4_request_queue_time_seconds_sum 1000000000");
    CHECK_LINE("dsv4_num_preemptions_total 1");
    CHECK_LINE("dsv4_worker_restarts_total 1");
    CHECK_LINE("dsv4_spec_decode_num_drafts_total 2");
    CHECK_LINE("dsv4_spec_decode_num_draft_tokens_total 13");
    CHECK_LINE("dsv4_spec_decode_num_accepted_tokens_total 12");
    CHECK_LINE("dsv4_spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"} 2");
    CHECK_LINE("dsv4_spec_decode_num_accepted_tokens_per_pos_total{position=\"2\"} 1");
    CHECK_LINE("dsv4_spec_decode_num_accepted_tokens_per_pos_total{position=\"7\"} 3");
    CHECK_LINE("dsv4_spec_decode_num_draft_tokens_per_pos_total{position=\"2\"} 2");
    CHECK_LINE("dsv4_spec_decode_num_draft_tokens_per_pos_total{position=\"7\"} 3");
    CHECK_LINE("dsv4_num_requests_running 3");
    CHECK_LINE("dsv4_num_requests_waiting 9");
    CHECK_LINE("dsv4_num_requests_swapped 2");
    CHECK_LINE("dsv4_kv_cache_usage_perc 0.75");
    CHECK_LINE("dsv4_kv_cache_free_blocks 250");
    CHECK_LINE("dsv4_kv_cache_total_blocks 1000");
    CHECK_LINE("dsv4_workers_ready 7");
    CHECK_LINE("dsv4_server_state{state=\"degraded\"} 1");
    CHECK_LINE("dsv4_server_state{state=\"ready\"} 0");
    /* every histogram ends its buckets at +Inf, and _count equals it */
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_E2E), 0) == 3);
    CHECK(fabs(dsv4_metric_sum(dsv4_metrics_get(m, DSV4_MET_E2E), 0) - 2.6) < 1e-12);
    CHECK(text[strlen(text) - 1] == '\n');
    dsv4_metrics_free(m);
}

static void test_custom(void)
{
    struct dsv4_metrics *m;
    struct dsv4_metric *f = NULL, *g = NULL, *h = NULL;
    CHECK(dsv4_metrics_new(&m) == 0);
    const char *values[] = {"plain", "quote\"back\\slash\nline"};
    CHECK(dsv4_metrics_family(m, DSV4_METRIC_GAUGE, "test_gauge", "A help \\ with\tescapes.",
                              "kind", values, 2, NULL, 0, &f) == 0);
    dsv4_metric_set(f, 0, 0.1);
    dsv4_metric_set(f, 1, NAN);
    dsv4_metric_set(f, 5, 3.0); /* out of range: ignored */
    CHECK(dsv4_metrics_family(m, DSV4_METRIC_GAUGE, "test_inf", "Infinities.", NULL, NULL, 0, NULL,
                              0, &g) == 0);
    dsv4_metric_set(g, 0, -INFINITY);
    const double bounds[] = {1e-7, 1.0};
    const char *routes[] = {"a", "b"};
    CHECK(dsv4_metrics_family(m, DSV4_METRIC_HISTOGRAM, "test_hist_seconds", "Labelled.", "route",
                              routes, 2, bounds, 2, &h) == 0);
    dsv4_metric_observe(h, 1, 1e-8);
    dsv4_metric_observe(h, 1, 5.0);
    dsv4_metric_observe(h, 0, NAN); /* ignored */
    refresh(m);
    CHECK_LINE("# HELP test_gauge A help \\\\ with\tescapes.");
    CHECK_LINE("test_gauge{kind=\"plain\"} 0.1");
    CHECK_LINE("test_gauge{kind=\"quote\\\"back\\\\slash\\nline\"} NaN");
    CHECK_LINE("test_inf -Inf");
    CHECK_LINE("test_hist_seconds_bucket{route=\"b\",le=\"1e-07\"} 1");
    CHECK_LINE("test_hist_seconds_bucket{route=\"b\",le=\"+Inf\"} 2");
    CHECK_LINE("test_hist_seconds_count{route=\"b\"} 2");
    CHECK_LINE("test_hist_seconds_count{route=\"a\"} 0");

    /* refusals */
    const double bad_bounds[] = {1.0, 1.0};
    const char *le[] = {"x"};
    struct {
        enum dsv4_metric_kind kind;
        const char *name, *help, *label;
        const double *bounds;
        int n_bounds;
        int want;
    } bad[] = {
            {DSV4_METRIC_COUNTER, "no_suffix", "h", NULL, NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_GAUGE, "9starts_with_digit", "h", NULL, NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_GAUGE, "has:colon", "h", NULL, NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_GAUGE, "test_gauge", "h", NULL, NULL, 0, DSV4_EEXIST},
            {DSV4_METRIC_GAUGE, "multi_line", "a\nb", NULL, NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_GAUGE, "bad_label", "h", "__reserved", NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_HISTOGRAM, "flat_bounds", "h", NULL, bad_bounds, 2, DSV4_EINVAL},
            {DSV4_METRIC_HISTOGRAM, "no_bounds", "h", NULL, NULL, 0, DSV4_EINVAL},
            {DSV4_METRIC_HISTOGRAM, "le_label", "h", "le", bounds, 2, DSV4_EINVAL},
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad); i++) {
        struct dsv4_metric *x = (struct dsv4_metric *)1;
        int rc = dsv4_metrics_family(m, bad[i].kind, bad[i].name, bad[i].help, bad[i].label, le, 1,
                                     bad[i].bounds, bad[i].n_bounds, &x);
        CHECKF(rc == bad[i].want, "%s: rc %d (%s)", bad[i].name, rc, dsv4_errmsg());
        CHECK(x == NULL);
    }
    /* wrong-kind and NULL updates are no-ops */
    dsv4_metric_observe(f, 0, 1.0);
    dsv4_metric_add(NULL, 0, 1.0);
    dsv4_metric_add(dsv4_metrics_get(m, DSV4_MET_PREEMPTIONS), 0, -5.0);
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_PREEMPTIONS), 0) == 0);
    CHECK(dsv4_metrics_get(m, DSV4_MET_COUNT) == NULL);
    dsv4_metrics_free(m);
}

#define THREADS 4
#define PER     100000

static void *hammer(void *arg)
{
    struct dsv4_metrics *m = arg;
    for (int i = 0; i < PER; i++) {
        dsv4_metrics_itl(m, 0.001 * (i % 7));
        dsv4_metric_add(dsv4_metrics_get(m, DSV4_MET_GENERATION_TOKENS), 0, 1.0);
        dsv4_metrics_spec_decode(m, 2, i & 1);
    }
    return NULL;
}

static void test_threads(void)
{
    struct dsv4_metrics *m;
    pthread_t th[THREADS];
    CHECK(dsv4_metrics_new(&m) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer, m);
    for (int i = 0; i < 3; i++)
        refresh(m); /* scrapes racing the updates */
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_ITL), 0) == THREADS * PER);
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_GENERATION_TOKENS), 0) == THREADS * PER);
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_SPEC_ACCEPTED_TOKENS), 0) ==
          THREADS * PER / 2);
    CHECK(dsv4_metric_value(dsv4_metrics_get(m, DSV4_MET_SPEC_DRAFT_PER_POS), 1) == THREADS * PER);
    dsv4_metrics_free(m);
}

int main(void)
{
    test_standard();
    test_custom();
    test_threads();
    free(text);
    TEST_DONE();
}
