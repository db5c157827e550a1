/*
 * test_daemon.c - the dsv4d supervisor in process (daemon/sup.h) with real
 * worker processes (the built dsv4d, --worker), driven through its service
 * table as the front ends drive it, on the tiny synthetic checkpoint:
 *   - 1, 2 and 4 workers give the tokens of single-process dsv4_generate
 *     (greedy), with MTP on;
 *   - 64 concurrent requests on 2 workers, each equal to the same request
 *     alone, with a state pool small enough to force preemptions (swap on,
 *     off, and on with every swap failing on rank 1 only);
 *   - ranks that disagree (one answers a plan with an error, the other with
 *     results): the group is restarted, outputs stay exact;
 *   - crash and hang injection: 2 and 4 workers, a worker SIGKILLed or
 *     SIGSTOPped at random points (load, warm-up, prefill, decode), 24
 *     rounds: every request completes with the uninterrupted output (or a
 *     retryable error), and afterwards no process, fd or shared memory is
 *     left;
 *   - stop token ids (EOS's path) end requests right after their first
 *     occurrence;
 *   - a request whose deadline passes while a hung rank is being replaced,
 *     or while it decodes, ends with a retryable error;
 *   - restart from the weights images: the checkpoint directory is moved
 *     away before a rank is killed, and the group still comes back;
 *   - too many crashes: degraded for good, with the reason, new work refused;
 *   - bad requests: clear statuses, nothing breaks.
 * Everything is bounded in time; the sockets live in the test's directory.
 */
#include "base/dsv4.h"
#include "daemon/config.h"
#include "daemon/sched.h"
#include "daemon/sup.h"
#include "daemon/wire.h"
#include "engine/model/generate.h"
#include "engine/model/state.h"
#include "rpc/metrics.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define VOCAB  1280
#define MAXOUT 64
#define NREQ   64
#define NLONG  16 /* long-prompt requests of the load test */

struct rec {
    pthread_mutex_t mu;
    int32_t toks[MAXOUT];
    int n;
    bool done, error, retryable;
    int status;
    size_t completion; /* completion tokens of the end event */
    enum dsv4_svc_finish finish;
    char msg[256];
};

static void on_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct rec *r = ctx;
    (void)id;
    pthread_mutex_lock(&r->mu);
    if (ev->kind == DSV4_SVC_EV_TOKENS) {
        for (size_t i = 0; i < ev->n_ids && r->n < MAXOUT; i++)
            r->toks[r->n++] = ev->ids[i];
    } else {
        r->done = true;
        r->error = ev->kind == DSV4_SVC_EV_ERROR;
        r->finish = ev->finish;
        r->status = ev->status;
        r->retryable = ev->retryable;
        r->completion = ev->completion_tokens;
        snprintf(r->msg, sizeof r->msg, "%s", ev->message ? ev->message : "");
    }
    pthread_mutex_unlock(&r->mu);
}

static char model_dir[900], worker_exe[900];

static void base_config(struct dsv4d_config *c, int workers)
{
    dsv4d_config_defaults(c);
    snprintf(c->model, sizeof c->model, "%s", model_dir);
    snprintf(c->runtime_dir, sizeof c->runtime_dir, "%s/run", test_tmpdir());
    snprintf(c->worker_exe, sizeof c->worker_exe, "%s", worker_exe);
    c->workers = workers;
    c->threads_per_worker = 1;
    c->max_seqs = 16;
    c->max_batch_tokens = 256;
    c->max_model_len = 512;
    c->heartbeat_timeout = 1.0;
    c->max_restarts = 1000;
    snprintf(c->log_level, sizeof c->log_level, "warn");
}

static bool wait_state(struct dsv4d_sup *s, enum dsv4_svc_state want, double secs)
{
    double end = dsv4_now() + secs;
    while (dsv4_now() < end) {
        if (dsv4d_sup_state(s, NULL, 0) == want)
            return true;
        usleep(10000);
    }
    return false;
}

/* A supervisor on configuration c (metrics m or NULL), ready; failpoint: the workers'
 * DSV4D_FAILPOINT (their first group only: restarted workers run without it), or NULL. */
static struct dsv4d_sup *start_cfg(const struct dsv4d_config *c, struct dsv4_metrics *m,
                                   const char *failpoint)
{
    struct dsv4d_sup *s = NULL;
    if (failpoint)
        setenv("DSV4D_FAILPOINT", failpoint, 1);
    CHECKF(dsv4d_sup_start(c, m, &s) == 0, "start %d workers: %s", c->workers, dsv4_errmsg());
    if (s)
        CHECK(wait_state(s, DSV4_SVC_READY, 60));
    unsetenv("DSV4D_FAILPOINT");
    return s;
}

/* The same on the base configuration of `workers` workers. */
static struct dsv4d_sup *start_ready(int workers, const char *failpoint)
{
    struct dsv4d_config c;
    base_config(&c, workers);
    return start_cfg(&c, NULL, failpoint);
}

/* Prompt i: 3..62 tokens; i >= LONG: 230..249 tokens, so that 24 generated tokens cross the
 * state pool's 256-position block. */
#define LONG 1000
static void prompt_of(int i, int32_t *p, int *n)
{
    *n = i >= LONG ? 230 + i % 20 : 3 + (i * 29) % 60;
    for (int j = 0; j < *n; j++)
        p[j] = (int32_t)((j * (i + 5) * 13 + i * 71 + 7) % VOCAB);
}

/* Reference continuation of prompt i (single process, greedy, no MTP). */
static int reference(int i, int max_tokens, int32_t *out)
{
    int32_t p[256];
    int n;
    prompt_of(i, p, &n);
    struct dsv4_gen_opts o;
    dsv4_gen_opts_default(&o);
    o.max_tokens = max_tokens;
    o.stop_at_eos = false;
    o.threads = 1;
    struct dsv4_gen_result r;
    int rc = dsv4_generate(model_dir, p, n, &o, &r);
    if (rc) {
        fprintf(stderr, "reference: %s\n", dsv4_errmsg());
        return rc;
    }
    memcpy(out, r.tokens, sizeof(int32_t) * r.n);
    dsv4_gen_result_free(&r);
    return 0;
}

/* Prompt i, greedy, EOS ignored; stop_id >= 0: a stop token id */
static int submit_stop(struct dsv4_svc *svc, int i, int max_tokens, double timeout, int32_t stop_id,
                       struct rec *r, uint64_t *id)
{
    int32_t p[256];
    int n;
    prompt_of(i, p, &n);
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    struct dsv4_svc_request q = {.ids = p,
                                 .n_ids = (size_t)n,
                                 .max_tokens = max_tokens,
                                 .sample = dsv4_sample_params_default(),
                                 .ignore_eos = true,
                                 .timeout_s = timeout};
    q.sample.temperature = 0;
    if (stop_id >= 0) {
        q.stop_ids = &stop_id;
        q.n_stop_ids = 1;
    }
    return svc->ops->submit(svc, &q, on_event, r, id);
}

static int submit(struct dsv4_svc *svc, int i, int max_tokens, double timeout, struct rec *r,
                  uint64_t *id)
{
    return submit_stop(svc, i, max_tokens, timeout, -1, r, id);
}

static bool wait_done(struct rec *r, int n, double secs)
{
    double end = dsv4_now() + secs;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++) {
            pthread_mutex_lock(&r[i].mu);
            done += r[i].done;
            pthread_mutex_unlock(&r[i].mu);
        }
        if (done == n)
            return true;
        if (dsv4_now() > end)
            return false;
        usleep(5000);
    }
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* Children of this process still alive (zombies included). */
static int count_children(void)
{
    int n = 0;
    DIR *d = opendir("/proc");
    pid_t me = getpid();
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(buf, sizeof buf, f)) {
            char *rp = strrchr(buf, ')');
            int ppid = 0;
            if (rp && sscanf(rp + 2, "%*c %d", &ppid) == 1 && ppid == me)
                n++;
        }
        fclose(f);
    }
    if (d)
        closedir(d);
    return n;
}

static int count_dir(const char *path)
{
    int n = 0;
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static int32_t ref_toks[NREQ][MAXOUT], ref_long[NLONG][MAXOUT];

/* N workers: every output equals the reference. */
static void equal_outputs(int workers, int nreq, int max_tokens)
{
    struct dsv4d_config c;
    base_config(&c, workers);
    struct dsv4d_sup *s = NULL;
    CHECKF(dsv4d_sup_start(&c, NULL, &s) == 0, "start %d workers: %s", workers, dsv4_errmsg());
    if (!s)
        return;
    CHECKF(wait_state(s, DSV4_SVC_READY, 60), "%d workers: not ready", workers);
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    static struct rec r[NREQ];
    uint64_t id;
    for (int i = 0; i < nreq; i++)
        CHECK_INT(submit(svc, i, max_tokens, 0, &r[i], &id), 0);
    CHECKF(wait_done(r, nreq, 120), "%d workers: requests did not finish", workers);
    int bad = 0;
    for (int i = 0; i < nreq; i++)
        bad += r[i].error || r[i].n != max_tokens ||
               memcmp(r[i].toks, ref_toks[i], sizeof(int32_t) * max_tokens);
    CHECKF(bad == 0, "%d workers: %d of %d outputs differ from dsv4_generate", workers, bad, nreq);
    /* pipelining (on by default): steady decoding sends follow plans */
    struct dsv4d_sched_counts cnt;
    dsv4d_sup_counts(s, &cnt);
    fprintf(stderr, "%d workers: %llu plans, %llu follow plans\n", workers,
            (unsigned long long)cnt.plans, (unsigned long long)cnt.follow_plans);
    CHECK(cnt.follow_plans > 0 && cnt.follow_plans < cnt.plans);
    dsv4d_sup_free(s);
}

/* 64 concurrent requests, small pool: preemptions happen, outputs stay exact; with swap on,
 * the long sequences' state is swapped out and back in (the short ones' dropped), with swap
 * off every preempted sequence is re-prefilled.  lost_rank1: every swap fails on rank 1 only
 * (DSV4D_FAILPOINT, for the first group): the ranks must agree to drop those sequences (a rank
 * running entries the other skipped would pair different collectives), the scheduler
 * re-prefills them, and nothing is restarted. */
static void load_with_preemption(const struct dsv4_config *mc, bool swap, bool lost_rank1)
{
    struct dsv4d_config c;
    base_config(&c, 2);
    c.swap_min_tokens = 128;
    c.swap_max_tokens = swap ? 1 << 20 : 0;
    c.max_seqs = 16;
    c.max_batch_tokens = 160;
    c.max_queue = 64;
    /* the pool: the 16 slots and 12 blocks (engine/model/state.h's layout, MTP depth 1), so
     * 16 running sequences cannot all hold their blocks */
    struct dsv4_state_sizes z;
    CHECK_INT(dsv4_state_sizes(mc, true, 2, 0, &z), 0);
    c.state_mem = 16 * z.slot_bytes + 12 * z.block_bytes + z.block_bytes / 2;
    struct dsv4_metrics *met = NULL;
    CHECK_INT(dsv4_metrics_new(&met), 0);
    struct dsv4d_sup *s = start_cfg(&c, met, lost_rank1 ? "swap@1" : NULL);
    if (!s) {
        dsv4_metrics_free(met);
        return;
    }
    struct dsv4d_sched_counts cnt;
    dsv4d_sup_counts(s, &cnt);
    CHECK_INT(cnt.total_blocks, 12);
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    /* 64 requests at once: the NLONG long prompts, whose growth preempts, interleaved with
     * short ones */
    static struct rec r[NREQ];
    uint64_t id;
    for (int i = 0; i < NREQ; i++) {
        bool lng = i % 2 == 0 && i / 2 < NLONG;
        int k = lng ? i / 2 : i;
        CHECK_INT(submit(svc, lng ? LONG + k : k, lng ? 24 : 32, 0, &r[i], &id), 0);
    }
    CHECKF(wait_done(r, NREQ, 300), "load: requests did not finish");
    dsv4d_sup_counts(s, &cnt);
    int bad = 0;
    for (int i = 0; i < NREQ; i++) {
        bool lng = i % 2 == 0 && i / 2 < NLONG;
        int n = lng ? 24 : 32;
        const int32_t *want = lng ? ref_long[i / 2] : ref_toks[i];
        bad += r[i].error || r[i].n != n || memcmp(r[i].toks, want, sizeof(int32_t) * n);
    }
    CHECKF(bad == 0, "load: %d of %d outputs differ from the request alone", bad, NREQ);
    CHECKF(cnt.preempted_total > 0, "load: no preemption happened (pool of %lld blocks)",
           (long long)cnt.total_blocks);
    fprintf(stderr,
            "load (swap %s%s): %d requests (%d long) on a pool of %lld blocks, %d preemptions, "
            "%llu by swapping, %llu swaps lost\n",
            swap ? "on" : "off", lost_rank1 ? ", failing on rank 1" : "", NREQ, NLONG,
            (long long)cnt.total_blocks, cnt.preempted_total, (unsigned long long)cnt.swapped_total,
            (unsigned long long)cnt.swap_lost_total);
    if (swap)
        CHECKF(cnt.swapped_total > 0, "load: no preempted sequence was swapped");
    else
        CHECK_INT(cnt.swapped_total, 0);
    if (lost_rank1)
        CHECKF(cnt.swap_lost_total > 0, "load: rank 1's failed swaps were not reported lost");
    else
        CHECK_INT(cnt.swap_lost_total, 0);
    CHECK_INT(dsv4d_sup_restarts(s), 0);
    CHECK_INT(cnt.swapped, 0);
    /* what /metrics reports */
    CHECK_INT(dsv4_metric_value(dsv4_metrics_get(met, DSV4_MET_PREEMPTIONS), 0),
              cnt.preempted_total);
    CHECK_INT(dsv4_metric_value(dsv4_metrics_get(met, DSV4_MET_WORKER_RESTARTS), 0), 0);
    dsv4d_sup_free(s);
    dsv4_metrics_free(met);
}

/* Rank 1 answers one plan with an error after running it (DSV4D_FAILPOINT, first group
 * only), rank 0 with its results: the ranks disagree, the group is restarted, and every
 * request still ends with its uninterrupted output. */
static void ranks_disagree(void)
{
    /* its 12th plan: 3 warm-up plans, then a few steps into the requests below */
    struct dsv4d_sup *s = start_ready(2, "plan@1:12");
    if (!s)
        return;
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    static struct rec r[6];
    uint64_t id;
    for (int i = 0; i < 6; i++)
        CHECK_INT(submit(svc, i, 32, 0, &r[i], &id), 0);
    CHECKF(wait_done(r, 6, 120), "disagree: requests did not finish");
    int bad = 0;
    for (int i = 0; i < 6; i++)
        bad += r[i].error || r[i].n != 32 || memcmp(r[i].toks, ref_toks[i], sizeof(int32_t) * 32);
    CHECKF(bad == 0, "disagree: %d of 6 outputs differ from dsv4_generate", bad);
    CHECK_INT(dsv4d_sup_restarts(s), 1);
    fprintf(stderr, "ranks disagree: %llu restart, 6 outputs exact\n",
            (unsigned long long)dsv4d_sup_restarts(s));
    dsv4d_sup_free(s);
}

/* Kill or stop a worker at random points; every request ends right. */
static void faults(int workers, int rounds, uint64_t seed)
{
    struct dsv4d_config c;
    base_config(&c, workers);
    struct dsv4d_sup *s = NULL;
    CHECKF(dsv4d_sup_start(&c, NULL, &s) == 0, "faults: start: %s", dsv4_errmsg());
    if (!s)
        return;
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    uint64_t x = seed;
    int bad = 0, retry = 0, kills = 0, stops = 0, not_ready_kills = 0;
    for (int round = 0; round < rounds; round++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int victim = (int)((x >> 33) % (uint64_t)workers);
        bool hang = ((x >> 40) & 3) == 0;
        int delay_ms = (int)((x >> 20) % 400);
        bool before_ready = ((x >> 50) & 7) == 0; /* during load / warm-up */
        if (!before_ready && !wait_state(s, DSV4_SVC_READY, 60)) {
            CHECKF(0, "faults: round %d: not ready", round);
            break;
        }
        struct rec r[4];
        uint64_t id;
        int nr = 0;
        if (!before_ready)
            for (int i = 0; i < 4; i++)
                if (submit(svc, (round * 4 + i) % NREQ, 20, 0, &r[nr], &id) == 0)
                    nr++;
        usleep((useconds_t)delay_ms * 1000);
        pid_t pids[8] = {0};
        dsv4d_sup_worker_pids(s, pids, workers);
        if (pids[victim] > 0) {
            kill(pids[victim], hang ? SIGSTOP : SIGKILL);
            hang ? stops++ : kills++;
            not_ready_kills += before_ready;
        }
        if (nr && !wait_done(r, nr, 120)) {
            CHECKF(0, "faults: round %d: requests did not finish", round);
            break;
        }
        for (int i = 0; i < nr; i++) {
            int k = (round * 4 + i) % NREQ;
            if (r[i].error) {
                retry += r[i].retryable;
                bad += !r[i].retryable;
                if (!r[i].retryable)
                    fprintf(stderr, "faults: round %d: error %s\n", round, r[i].msg);
            } else if (r[i].n != 20 || memcmp(r[i].toks, ref_toks[k], sizeof(int32_t) * 20)) {
                bad++;
                fprintf(stderr, "faults: round %d request %d: output differs\n", round, i);
            }
        }
        /* when the victim was killed before ready, the next round waits for recovery */
    }
    CHECKF(wait_state(s, DSV4_SVC_READY, 60), "faults: not ready after the last round");
    uint64_t restarts = dsv4d_sup_restarts(s);
    fprintf(stderr,
            "faults (%d workers): %d rounds, %d kills, %d stops (%d before ready), %llu "
            "restarts, %d retryable errors, %d wrong\n",
            workers, rounds, kills, stops, not_ready_kills, (unsigned long long)restarts, retry,
            bad);
    CHECKF(bad == 0, "faults: %d requests ended wrong", bad);
    CHECK(restarts >= (uint64_t)(kills + stops) / 2);
    dsv4d_sup_free(s);
}

/* Drain with a grace: not ready at once, new requests still served until the grace ends,
 * refused after it; everything admitted finishes; the supervisor stops. */
static void drain_with_grace(void)
{
    struct dsv4d_config c;
    base_config(&c, 2);
    c.drain_grace = 1.0;
    struct dsv4d_sup *s = NULL;
    CHECK(dsv4d_sup_start(&c, NULL, &s) == 0);
    if (!s)
        return;
    CHECK(wait_state(s, DSV4_SVC_READY, 60));
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    struct rec r[3];
    uint64_t id;
    CHECK_INT(submit(svc, 1, 20, 0, &r[0], &id), 0);
    double t0 = dsv4_now();
    dsv4d_sup_drain(s);
    CHECK_INT(dsv4d_sup_state(s, NULL, 0), DSV4_SVC_DRAINING);
    /* inside the grace: admitted (a balancer may not have noticed yet) */
    CHECK_INT(submit(svc, 2, 20, 0, &r[1], &id), 0);
    while (dsv4_now() - t0 < 1.3)
        usleep(20000);
    /* after it: refused, retryable elsewhere */
    CHECK_INT(submit(svc, 3, 20, 0, &r[2], &id), DSV4_ENOTSUP);
    CHECK(wait_done(r, 2, 60));
    for (int i = 0; i < 2; i++)
        CHECK(!r[i].error && r[i].n == 20 &&
              !memcmp(r[i].toks, ref_toks[i + 1], sizeof(int32_t) * 20));
    CHECKF(wait_state(s, DSV4_SVC_STOPPED, 30), "drain with a grace: did not stop");
    dsv4d_sup_free(s);
}

/* A hung rank is replaced; a request whose deadline passes meanwhile gets a retryable error. */
static void deadline_during_recovery(void)
{
    struct dsv4d_config c;
    base_config(&c, 2);
    c.heartbeat_timeout = 1.0;
    struct dsv4d_sup *s = NULL;
    CHECK(dsv4d_sup_start(&c, NULL, &s) == 0);
    if (!s)
        return;
    CHECK(wait_state(s, DSV4_SVC_READY, 60));
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    pid_t pids[2];
    dsv4d_sup_worker_pids(s, pids, 2);
    kill(pids[1], SIGSTOP);
    struct rec r;
    uint64_t id;
    CHECK_INT(submit(svc, 5, 20, 0.5, &r, &id), 0);
    CHECK(wait_done(&r, 1, 30));
    CHECKF(r.error && r.retryable && strstr(r.msg, "deadline"), "deadline: error %d '%s'", r.error,
           r.msg);
    CHECK(wait_state(s, DSV4_SVC_READY, 60));
    CHECK(dsv4d_sup_restarts(s) >= 1);
    dsv4d_sup_free(s);
}

/* Stop token ids (the path EOS takes): requests whose stop id is the 6th to 11th token of
 * their reference end right after its first occurrence, with that token and finish "stop",
 * with MTP drafts that run past it (2 and 1 workers, so decodes verify drafts). */
static void stop_tokens(int workers)
{
    struct dsv4d_sup *s = start_ready(workers, NULL);
    if (!s)
        return;
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    static struct rec r[6];
    int want[6];
    uint64_t id;
    for (int i = 0; i < 6; i++) {
        int32_t stop = ref_toks[i][5 + i];
        want[i] = 0;
        while (ref_toks[i][want[i]] != stop)
            want[i]++;
        want[i]++;
        CHECK_INT(submit_stop(svc, i, 32, 0, stop, &r[i], &id), 0);
    }
    CHECK(wait_done(r, 6, 60));
    int bad = 0;
    for (int i = 0; i < 6; i++) {
        bool ok = !r[i].error && r[i].finish == DSV4_SVC_FINISH_STOP && r[i].n == want[i] &&
                  r[i].completion == (size_t)want[i] &&
                  !memcmp(r[i].toks, ref_toks[i], sizeof(int32_t) * (size_t)want[i]);
        if (!ok)
            fprintf(stderr, "stop id %d of request %d: %d tokens (want %d), finish %d, error %d\n",
                    ref_toks[i][5 + i], i, r[i].n, want[i], (int)r[i].finish, r[i].error);
        bad += !ok;
    }
    CHECKF(bad == 0, "stop ids, %d workers: %d of 6 requests did not end at their stop id", workers,
           bad);
    dsv4d_sup_free(s);
}

/* A request whose deadline passes while it decodes ends at the next step boundary with a
 * retryable error, beside a request without one that completes exactly. */
static void deadline_while_running(void)
{
    struct dsv4d_sup *s = start_ready(2, NULL);
    if (!s)
        return;
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    static struct rec r[2];
    uint64_t id;
    /* 480 tokens take hundreds of steps; 50 ms is a few of them */
    CHECK_INT(submit(svc, 0, 480, 0.05, &r[0], &id), 0);
    CHECK_INT(submit(svc, 1, 32, 0, &r[1], &id), 0);
    CHECK(wait_done(r, 2, 60));
    CHECKF(r[0].error && r[0].retryable && strstr(r[0].msg, "deadline") && r[0].completion < 480,
           "deadline while decoding: error %d '%s' after %zu tokens", r[0].error, r[0].msg,
           r[0].completion);
    CHECKF(!r[1].error && r[1].n == 32 && !memcmp(r[1].toks, ref_toks[1], sizeof(int32_t) * 32),
           "the request beside it: error %d '%s', %d tokens", r[1].error, r[1].msg, r[1].n);
    fprintf(stderr, "deadline while decoding: ended after %zu of 480 tokens: %s\n", r[0].completion,
            r[0].msg);
    dsv4d_sup_free(s);
}

/* Drops the checkpoint's files from the page cache (written back first), so the first load
 * reads them as on a freshly booted host; the number of files evicted. */
static int evict_page_cache(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d))) {
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        if (!fstat(fd, &st) && S_ISREG(st.st_mode) && !fdatasync(fd) &&
            !posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED))
            n++;
        close(fd);
    }
    closedir(d);
    return n;
}

/* A killed rank comes back from the weights image the supervisor keeps, with the checkpoint
 * moved away (so no checkpoint file can be opened), min_ratio times faster than the cold load,
 * and the same request gives the same tokens before and after. */
static void restart_from_image(const char *dir, int workers, double min_ratio)
{
    struct dsv4d_config c;
    base_config(&c, workers);
    snprintf(c.model, sizeof c.model, "%s", dir);
    struct dsv4d_sup *s = NULL;
    char moved[4200];
    snprintf(moved, sizeof moved, "%s.moved", dir);
    /* a cold load: the checkpoint is not in the page cache */
    int evicted = evict_page_cache(dir);
    CHECKF(dsv4d_sup_start(&c, NULL, &s) == 0, "restart: start: %s", dsv4_errmsg());
    if (!s)
        return;
    CHECK(wait_state(s, DSV4_SVC_READY, 120));
    struct rec before, after;
    uint64_t id;
    CHECK_INT(submit(dsv4d_sup_svc(s), 3, 20, 0, &before, &id), 0);
    CHECK(wait_done(&before, 1, 60));
    double cold = 0, warm = 0;
    bool img = true;
    dsv4d_sup_rank_info(s, 0, &cold, &img);
    CHECK(!img);
    CHECK_INT(rename(dir, moved), 0);
    /* two restarts, the faster one counted (one timing on a busy machine is noise) */
    for (int k = 0; k < 2; k++) {
        pid_t pids[4];
        double t = 0;
        dsv4d_sup_worker_pids(s, pids, workers);
        kill(pids[0], SIGKILL);
        CHECK(wait_state(s, DSV4_SVC_DEGRADED, 10));
        CHECKF(wait_state(s, DSV4_SVC_READY, 60), "no recovery without the checkpoint");
        dsv4d_sup_rank_info(s, 0, &t, &img);
        CHECKF(img, "the restarted rank did not load from the image");
        warm = k == 0 || t < warm ? t : warm;
    }
    double ratio = warm > 0 ? cold / warm : 0;
    fprintf(stderr,
            "restart (%s, %d workers): cold load %.3f s (%d files out of the page cache), "
            "from the image %.3f s (%.1fx)\n",
            dir, workers, cold, evicted, warm, ratio);
    CHECKF(ratio >= min_ratio, "restart from the image only %.1fx faster than the cold load",
           ratio);
    CHECK_INT(submit(dsv4d_sup_svc(s), 3, 20, 0, &after, &id), 0);
    CHECK(wait_done(&after, 1, 60));
    CHECK(!before.error && before.n == 20 && !after.error && after.n == 20 &&
          !memcmp(before.toks, after.toks, sizeof(int32_t) * 20));
    if (!strcmp(dir, model_dir))
        CHECK(!memcmp(after.toks, ref_toks[3], sizeof(int32_t) * 20));
    CHECK_INT(rename(moved, dir), 0);
    dsv4d_sup_free(s);
}

/* A device backend (devsim: the CPU behind the GPU paths): every rank uploads its weights into
 * shareable memory whose descriptor the supervisor keeps; after a rank is killed the group
 * comes back with every rank mapping its weights from those descriptors (nothing uploaded),
 * and outputs equal the cpu backend's before and after. */
static void device_weights_kept(int workers)
{
    struct dsv4d_config c;
    base_config(&c, workers);
    snprintf(c.device, sizeof c.device, "devsim");
    struct dsv4d_sup *s = NULL;
    CHECKF(dsv4d_sup_start(&c, NULL, &s) == 0, "devsim: start: %s", dsv4_errmsg());
    if (!s)
        return;
    CHECK(wait_state(s, DSV4_SVC_READY, 120));
    for (int r = 0; r < workers; r++)
        CHECK_INT(dsv4d_sup_rank_device_weights(s, r), DSV4D_DEVW_UPLOADED);
    struct rec before, after;
    uint64_t id;
    CHECK_INT(submit(dsv4d_sup_svc(s), 3, 20, 0, &before, &id), 0);
    CHECK(wait_done(&before, 1, 60));
    CHECK(!before.error && before.n == 20 && !memcmp(before.toks, ref_toks[3], 20 * 4));
    for (int k = 0; k < 2; k++) {
        pid_t pids[8];
        dsv4d_sup_worker_pids(s, pids, workers);
        kill(pids[k % workers], SIGKILL);
        CHECK(wait_state(s, DSV4_SVC_DEGRADED, 10));
        CHECK(wait_state(s, DSV4_SVC_READY, 60));
        for (int r = 0; r < workers; r++)
            CHECKF(dsv4d_sup_rank_device_weights(s, r) == DSV4D_DEVW_MAPPED,
                   "restart %d: rank %d did not map its device weights", k, r);
    }
    CHECK_INT(submit(dsv4d_sup_svc(s), 3, 20, 0, &after, &id), 0);
    CHECK(wait_done(&after, 1, 60));
    CHECK(!after.error && after.n == 20 && !memcmp(after.toks, ref_toks[3], 20 * 4));
    dsv4d_sup_free(s);
}

/* Crashes beyond max_restarts: degraded for good, new work refused, the reason given. */
static void give_up(void)
{
    struct dsv4d_config c;
    base_config(&c, 1);
    c.max_restarts = 2;
    c.restart_window = 600;
    struct dsv4d_sup *s = NULL;
    CHECK(dsv4d_sup_start(&c, NULL, &s) == 0);
    if (!s)
        return;
    for (int i = 0; i < 3; i++) {
        CHECK(wait_state(s, DSV4_SVC_READY, 60));
        pid_t pid;
        dsv4d_sup_worker_pids(s, &pid, 1);
        kill(pid, SIGKILL);
        CHECK(wait_state(s, DSV4_SVC_DEGRADED, 10));
    }
    char why[256] = "";
    usleep(300000);
    CHECK_INT(dsv4d_sup_state(s, why, sizeof why), DSV4_SVC_DEGRADED);
    CHECKF(strstr(why, "gave up") != NULL, "degraded reason: '%s'", why);
    struct rec r;
    uint64_t id;
    CHECK_INT(submit(dsv4d_sup_svc(s), 1, 4, 0, &r, &id), DSV4_ENOTSUP);
    dsv4d_sup_free(s);
}

static void bad_requests(void)
{
    struct dsv4d_config c;
    base_config(&c, 1);
    c.max_seqs = 2;
    c.max_queue = 1;
    struct dsv4d_sup *s = NULL;
    CHECK(dsv4d_sup_start(&c, NULL, &s) == 0);
    if (!s)
        return;
    CHECK(wait_state(s, DSV4_SVC_READY, 60));
    struct dsv4_svc *svc = dsv4d_sup_svc(s);
    struct rec r[8];
    uint64_t id;
    int32_t p[4] = {1, 2, 3, 4};
    struct dsv4_svc_request q = {
            .ids = p, .n_ids = 4, .max_tokens = 600, .sample = dsv4_sample_params_default()};
    memset(r, 0, sizeof r);
    CHECK_INT(svc->ops->submit(svc, &q, on_event, &r[0], &id), DSV4_ERANGE);
    q.max_tokens = 0;
    CHECK_INT(svc->ops->submit(svc, &q, on_event, &r[0], &id), DSV4_EINVAL);
    q.max_tokens = 4;
    q.sample.top_p = 2;
    CHECK_INT(svc->ops->submit(svc, &q, on_event, &r[0], &id), DSV4_EINVAL);
    q.sample.top_p = 1;
    int32_t big[1] = {VOCAB + 5};
    q.ids = big;
    q.n_ids = 1;
    CHECK_INT(svc->ops->submit(svc, &q, on_event, &r[0], &id), DSV4_EINVAL);
    /* queue full: 2 running + 1 waiting, the 4th is refused (retryable) */
    int ok = 0, full = 0;
    for (int i = 0; i < 6; i++) {
        int rc = submit(svc, i, 40, 0, &r[i], &id);
        ok += rc == 0;
        full += rc == DSV4_ENOSPC;
    }
    CHECKF(ok == 3 && full == 3, "queue: %d accepted, %d refused as full", ok, full);
    /* cancellation frees its place */
    svc->ops->cancel(svc, id);
    dsv4d_sup_free(s);
}

int main(void)
{
    const char *b = getenv("DSV4_BUILDDIR");
    snprintf(worker_exe, sizeof worker_exe, "%s/dsv4d", b ? b : ".");
    if (access(worker_exe, X_OK)) {
        fprintf(stderr, "%s not built: skipped\n", worker_exe);
        return 77;
    }
    snprintf(model_dir, sizeof model_dir, "%s/tiny", test_tmpdir());
    struct dsv4_config cfg;
    CHECK_INT(dsv4_mkmodel_preset("tiny", VOCAB, DSV4_EXPERT_NVFP4, &cfg), 0);
    struct dsv4_mkmodel_opts mo = {&cfg, 9, 1, NULL, model_dir};
    int rc = dsv4_mkmodel_write(&mo);
    CHECKF(rc == 0, "mkmodel: %s", dsv4_errmsg());
    if (rc)
        TEST_DONE();
    for (int i = 0; i < NREQ && !test_failures; i++) {
        CHECK_INT(reference(i, 32, ref_toks[i]), 0);
        if (i < NLONG)
            CHECK_INT(reference(LONG + i, 24, ref_long[i]), 0);
    }
    int shm0 = count_dir("/dev/shm");
    equal_outputs(1, 6, 32);
    /* the baseline after a first supervisor: nng keeps its process-wide poller fds */
    int fds0 = count_fds();
    double t0 = dsv4_now();
#define PHASE(call)                                                    \
    do {                                                               \
        call;                                                          \
        fprintf(stderr, "phase %s: %.1f s\n", #call, dsv4_now() - t0); \
        t0 = dsv4_now();                                               \
    } while (0)
    PHASE(equal_outputs(2, 6, 32));
    PHASE(equal_outputs(4, 6, 32));
    PHASE(load_with_preemption(&cfg, true, false));
    PHASE(load_with_preemption(&cfg, false, false));
    PHASE(load_with_preemption(&cfg, true, true));
    PHASE(ranks_disagree());
    PHASE(faults(2, 16, 12345));
    PHASE(faults(4, 8, 777));
    PHASE(deadline_during_recovery());
    PHASE(deadline_while_running());
    PHASE(stop_tokens(2));
    PHASE(stop_tokens(1));
    PHASE(drain_with_grace());
    PHASE(restart_from_image(model_dir, 2, 1.0));
    PHASE(device_weights_kept(2));
    /* the proof: on the small preset a restart is >= 10x faster than a cold load */
    char small_dir[4200];
    snprintf(small_dir, sizeof small_dir, "%s/small", test_tmpdir());
    /* a cold load reads a disk: on a tmpfs the checkpoint cannot leave the page cache, so the
     * checkpoint goes beside the build then */
    struct statfs sf;
    const char *bd = getenv("DSV4_BUILDDIR");
    if (!statfs(test_tmpdir(), &sf) && sf.f_type == 0x01021994 /* TMPFS_MAGIC */ && bd) {
        snprintf(small_dir, sizeof small_dir, "%s/tests/daemon/small-checkpoint", bd);
        fprintf(stderr, "%s is a tmpfs: the small checkpoint goes to %s\n", test_tmpdir(),
                small_dir);
    }
    /* the preset as `dsv4 mkmodel --preset small` writes it: the tokenizer's 129,280 rows */
    CHECK_INT(dsv4_mkmodel_preset("small", 129280, DSV4_EXPERT_NVFP4, &cfg), 0);
    struct dsv4_mkmodel_opts so = {&cfg, 5, 1, NULL, small_dir};
    CHECKF(dsv4_mkmodel_write(&so) == 0, "mkmodel small: %s", dsv4_errmsg());
    PHASE(restart_from_image(small_dir, 1, 10.0));
    if (strncmp(small_dir, test_tmpdir(), strlen(test_tmpdir()))) {
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", small_dir);
        CHECK_INT(system(cmd), 0);
    }
    PHASE(give_up());
    PHASE(bad_requests());
    /* nothing left behind: processes, descriptors, shared memory, sockets.  Fewer
     * descriptors than the baseline is fine (nng may still have been closing a pipe of the
     * first supervisor when it was taken); more is a leak.  nng closes a pipe on its own
     * threads, after the socket's close returned, so a count above the baseline is taken
     * again for up to 2 s: a leaked descriptor stays, a closing pipe goes. */
    CHECK_INT(count_children(), 0);
    int fds1 = count_fds();
    for (int i = 0; i < 40 && fds1 > fds0; i++) {
        usleep(50 * 1000);
        fds1 = count_fds();
    }
    CHECKF(fds1 <= fds0, "descriptors: %d open after the run, %d before", fds1, fds0);
    if (fds1 > fds0)
        system("ls -l /proc/$PPID/fd >&2");
    CHECK_INT(count_dir("/dev/shm"), shm0);
    char run[4200];
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    CHECK_INT(count_dir(run), 0);
    TEST_DONE();
}
