/*
 * test_step.c - the step API's invariants (engine/model/step.h) on the tiny
 * synthetic checkpoint (vocabulary 1280), driven like a scheduler would:
 * 16 requests with different prompt lengths and arrival steps, prompts fed
 * in chunks that share steps with other requests' decodes.
 *   - mixed batch == each request alone: every emitted token and every
 *     logits row that produced one, bitwise (greedy and sampled requests);
 *   - MTP on (k = 2) == MTP off for greedy requests in the mixed batch;
 *   - preemption by dropping the state and re-prefilling the history, and
 *     by swapping the state to host memory and back, give exactly the
 *     uninterrupted continuation;
 *   - 2 ranks == 1 rank;
 *   - drafts that are mostly right (taken from the known greedy
 *     continuation) are accepted, the output stays the greedy one, and the
 *     MTP block's state after accepted drafts equals a from-scratch
 *     recomputation (its next drafts' logits are bitwise those of a fresh
 *     sequence prefilled with the same history);
 *   - a full pool is a status (DSV4_ENOSPC), and freeing makes room again;
 *   - decode graphs on (opts.graphs: calls padded to buckets with a scratch
 *     slot's chunk, graphs on backends that record them), with a warm-up
 *     between steps: tokens and logits bitwise those of graphs off, on 1
 *     and 2 ranks, preemptions included.
 */
#include "base/dsv4.h"
#include "engine/model/comm.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tests/engine/rt.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB   1280
#define NREQ    16
#define MAXNEW  20
#define MAXP    160
#define K       2
#define HISTMAX (MAXP + MAXNEW + 8)

struct req {
    uint64_t id;
    int P, arrive, max_new;
    struct dsv4_sample_params params;
    int32_t hist[HISTMAX]; /* prompt, then the output */
    int nout, target, nd;
    int64_t fed;
    int32_t drafts[DSV4_STEP_MAX_DRAFTS];
    bool added, done;
    float *lg; /* [HISTMAX, V]: the logits row of each position */
};

/* What the driver does to a request at a given step (preemption tests). */
enum action { ACT_NONE = 0, ACT_DROP, ACT_SWAP_OUT, ACT_SWAP_IN, ACT_WARM };

struct drv {
    struct dsv4_step *st;
    struct req *r;
    int n, chunk, mtp;
    int ereq[NREQ];
    /* scripted preemptions: at step when[i], action act[i] on request who[i] */
    int nact, when[8], who[8];
    enum action act[8];
    bool swapped[NREQ];
    int rank; /* rows are recorded on rank 0 */
};

static void hook(void *ctx, enum dsv4_step_rows kind, int entry, int64_t pos, const float *rows,
                 int n, int V)
{
    struct drv *d = ctx;
    if (kind != DSV4_STEP_ROWS_TRUNK || d->rank != 0)
        return;
    struct req *q = &d->r[d->ereq[entry]];
    for (int i = 0; i < n; i++)
        if (pos + i < HISTMAX)
            memcpy(q->lg + (pos + i) * V, rows + (int64_t)i * V, sizeof(float) * V);
}

static void reqs_init(struct req *r, int n, bool sampled)
{
    for (int i = 0; i < n; i++) {
        struct req *q = &r[i];
        float *lg = q->lg;
        memset(q, 0, sizeof *q);
        q->lg = lg;
        q->id = 100 + i;
        q->P = 5 + (i * 37) % (MAXP - 5);
        q->arrive = (i * 3) % 11;
        q->max_new = MAXNEW;
        q->target = q->P;
        for (int j = 0; j < q->P; j++)
            q->hist[j] = (int32_t)((j * (i + 3) * 17 + i * 101) % VOCAB);
        q->params = dsv4_sample_params_default();
        q->params.temperature = sampled && i % 4 == 3 ? 0.7f : 0.0f;
        q->params.seed = 1000 + i;
    }
}

static int act_on(struct drv *d, int t)
{
    int rc = 0;
    for (int i = 0; i < d->nact && !rc; i++) {
        if (d->when[i] != t || d->who[i] >= d->n)
            continue;
        struct req *q = &d->r[d->who[i]];
        if (d->act[i] == ACT_WARM) {
            rc = dsv4_step_warm(d->st);
            continue;
        }
        if (q->done || !q->added)
            continue;
        if (d->act[i] == ACT_DROP) {
            /* drop the state, re-prefill the whole history (prompt + output so far) */
            if ((rc = dsv4_step_seq_drop(d->st, q->id)))
                break;
            q->fed = 0;
            q->target = q->P + q->nout;
            q->nd = 0;
        } else if (d->act[i] == ACT_SWAP_OUT) {
            rc = dsv4_step_seq_swap_out(d->st, q->id, NULL);
            d->swapped[d->who[i]] = true;
        } else if (d->act[i] == ACT_SWAP_IN) {
            rc = dsv4_step_seq_swap_in(d->st, q->id, NULL);
            d->swapped[d->who[i]] = false;
        }
    }
    return rc;
}

/* Runs every request to completion; 0 or the first error. */
static int drive(struct drv *d)
{
    struct dsv4_step_entry e[NREQ];
    struct dsv4_step_result res[NREQ];
    int rc;
    for (int t = 0; t < 10000; t++) {
        if ((rc = act_on(d, t)))
            return rc;
        int ne = 0, live = 0;
        for (int i = 0; i < d->n; i++) {
            struct req *q = &d->r[i];
            if (t < q->arrive || q->done) {
                live += !q->done;
                continue;
            }
            live++;
            if (!q->added) {
                if ((rc = dsv4_step_seq_add(d->st, q->id)))
                    return rc;
                q->added = true;
            }
            if (d->swapped[i])
                continue;
            struct dsv4_step_entry *x = &e[ne];
            memset(x, 0, sizeof *x);
            x->id = q->id;
            x->n_prompt = q->P;
            x->params = q->params;
            x->max_emit = q->max_new - q->nout;
            if (q->fed < q->target) {
                x->start = q->fed;
                x->n = (int)DSV4_MIN((int64_t)d->chunk, q->target - q->fed);
                x->tokens = q->hist + q->fed;
                x->sample = q->fed + x->n == q->target;
            } else {
                x->start = q->P + q->nout - 1;
                x->n = 1;
                x->tokens = q->hist + x->start;
                x->n_drafts = q->nd;
                x->drafts = q->drafts;
                x->sample = true;
            }
            d->ereq[ne++] = i;
        }
        if (!live)
            return 0;
        if (!ne)
            continue;
        if ((rc = dsv4_step_run(d->st, e, ne, res)))
            return rc;
        for (int j = 0; j < ne; j++) {
            struct req *q = &d->r[d->ereq[j]];
            if (q->fed < q->target)
                q->fed += e[j].n;
            for (int i = 0; i < res[j].n_tokens; i++)
                q->hist[q->P + q->nout++] = res[j].tokens[i];
            q->nd = res[j].n_drafts;
            memcpy(q->drafts, res[j].drafts, sizeof q->drafts);
            if (res[j].finish != DSV4_FINISH_NONE) {
                q->done = true;
                dsv4_step_seq_free(d->st, q->id);
            }
        }
    }
    return dsv4_error(DSV4_EINTERNAL, "driver: no progress");
}

static int open_step(const char *dir, struct dsv4_comm *comm, int rank, int N, int mtp, bool graphs,
                     int64_t blocks, int64_t ctx, struct dsv4_model **m, struct dsv4_backend **be,
                     struct dsv4_step **st)
{
    int rc = dsv4_model_open(dir, rank, N, m);
    if (!rc)
        rc = dsv4_backend_create("cpu", 2, be);
    struct dsv4_step_opts so = {.max_seqs = NREQ,
                                .max_tokens = NREQ * 24,
                                .max_ctx = ctx,
                                .mtp = mtp,
                                .state_blocks = blocks,
                                .graphs = graphs};
    if (!rc)
        rc = dsv4_step_create(*m, *be, comm, &so, st);
    return rc;
}

static void close_step(struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_step *st)
{
    dsv4_step_free(st);
    dsv4_backend_destroy(be);
    dsv4_model_close(m);
}

/* One schedule on one rank of N (comm NULL: single rank). */
struct run {
    const char *dir;
    struct req *r;
    int n, chunk, mtp;
    bool graphs;
    struct drv d;                    /* actions preset by the caller */
    struct dsv4_fwd_graph_stats gst; /* rank 0's, after the run */
    int rc;
};

static int run_rank(struct dsv4_comm *comm, void *arg)
{
    struct run *x = arg;
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    struct dsv4_step *st = NULL;
    int rank = comm ? dsv4_comm_rank(comm) : 0, N = comm ? dsv4_comm_size(comm) : 1;
    int rc = open_step(x->dir, comm, rank, N, x->mtp, x->graphs, 0, HISTMAX + 8, &m, &be, &st);
    struct drv d = x->d;
    if (!rc) {
        d.st = st;
        d.r = x->r;
        d.n = x->n;
        d.chunk = x->chunk;
        d.mtp = x->mtp;
        d.rank = rank;
        /* ranks other than 0 drive their own copy of the requests */
        struct req *own = NULL;
        if (rank != 0) {
            /* a fresh copy of the same requests (rank 0 mutates x->r concurrently) */
            own = calloc((size_t)x->n, sizeof(struct req));
            if (own)
                reqs_init(own, x->n, true);
            d.r = own;
        }
        dsv4_step_set_logits_hook(st, hook, &d);
        rc = drive(&d);
        if (rank == 0) {
            struct dsv4_step_stats ss;
            dsv4_step_get_stats(st, &ss);
            x->gst = ss.graphs;
        }
        free(own);
    }
    if (rc)
        fprintf(stderr, "rank %d: %s\n", rank, dsv4_errmsg());
    close_step(m, be, st);
    return rc;
}

static int run_schedule(struct run *x, int ranks)
{
    reqs_init(x->r, x->n, true);
    if (ranks == 1)
        return run_rank(NULL, x);
    return dsv4_comm_run_threads(ranks, 0, run_rank, x);
}

/* Tokens and the logits rows that produced them (positions P-1 .. P+max_new-2). */
static int compare(const char *what, const struct req *a, const struct req *b, int n, bool logits)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const struct req *x = &a[i], *y = &b[i];
        if (x->nout != y->nout ||
            memcmp(x->hist + x->P, y->hist + y->P, sizeof(int32_t) * x->nout)) {
            fprintf(stderr, "%s: request %d: tokens differ\n", what, i);
            bad++;
            continue;
        }
        if (logits &&
            memcmp(x->lg + (int64_t)(x->P - 1) * VOCAB, y->lg + (int64_t)(y->P - 1) * VOCAB,
                   sizeof(float) * VOCAB * x->nout)) {
            fprintf(stderr, "%s: request %d: logits rows differ\n", what, i);
            bad++;
        }
    }
    return bad;
}

static struct req *alloc_reqs(void)
{
    struct req *r = calloc(NREQ, sizeof *r);
    for (int i = 0; i < NREQ && r; i++)
        if (!(r[i].lg = calloc((size_t)HISTMAX * VOCAB, sizeof(float))))
            return NULL;
    return r;
}

static void free_reqs(struct req *r)
{
    for (int i = 0; r && i < NREQ; i++)
        free(r[i].lg);
    free(r);
}

/* Oracle drafts: decode with drafts taken from the known greedy continuation (the k-th
 * step's second draft corrupted every third step), compare with a fresh prefill. */
static void oracle_drafts(const char *dir, const struct req *ref)
{
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    struct dsv4_step *st = NULL;
    int rc = open_step(dir, NULL, 0, 1, K, false, 0, HISTMAX + 8, &m, &be, &st);
    CHECKF(rc == 0, "oracle: open: %s", dsv4_errmsg());
    if (rc)
        return;
    const struct req *q = &ref[1]; /* a greedy request with its plain continuation */
    struct drv d = {.st = st, .n = 1, .rank = 0};
    struct req *r = alloc_reqs();
    d.r = r;
    reqs_init(r, 1, false);
    memcpy(r[0].hist, q->hist, sizeof q->hist);
    r[0].P = q->P;
    r[0].target = q->P;
    r[0].max_new = q->nout;
    dsv4_step_set_logits_hook(st, hook, &d);
    struct dsv4_step_entry e = {0};
    struct dsv4_step_result res;
    int accepted = 0, drafted = 0, mism = 0, steps = 0;
    CHECK_INT(dsv4_step_seq_add(st, 1), 0);
    e = (struct dsv4_step_entry){.id = 1,
                                 .start = 0,
                                 .n = q->P,
                                 .tokens = q->hist,
                                 .sample = true,
                                 .max_emit = q->nout,
                                 .n_prompt = q->P,
                                 .params = r[0].params};
    CHECK_INT(dsv4_step_run(st, &e, 1, &res), 0);
    int nout = res.n_tokens;
    int failed0 = test_failures;
    while (nout < q->nout - K - 1 && test_failures == failed0) {
        int32_t dr[K];
        for (int i = 0; i < K; i++)
            dr[i] = q->hist[q->P + nout + i];
        if (steps % 3 == 2)
            dr[1] = (dr[1] + 1) % VOCAB;
        e.start = q->P + nout - 1;
        e.n = 1;
        e.tokens = q->hist + e.start;
        e.n_drafts = K;
        e.drafts = dr;
        e.max_emit = q->nout - nout;
        CHECK_INT(dsv4_step_run(st, &e, 1, &res), 0);
        for (int i = 0; i < res.n_tokens; i++)
            mism += res.tokens[i] != q->hist[q->P + nout + i];
        accepted += res.accepted;
        drafted += res.drafted;
        nout += res.n_tokens;
        steps++;
        /* the MTP state now: its drafts' logits, against a fresh sequence given the same
         * history (prompt + output) in one prefill */
        if (steps % 2 == 0) {
            struct dsv4_step_result fresh;
            struct dsv4_step_entry f = e;
            f.id = 2;
            f.start = 0;
            f.n = q->P + nout - 1; /* positions 0..P+nout-2: the last emitted is sampled */
            f.tokens = q->hist;
            f.n_drafts = 0;
            CHECK_INT(dsv4_step_seq_add(st, 2), 0);
            CHECK_INT(dsv4_step_run(st, &f, 1, &fresh), 0);
            CHECK_INT(fresh.tokens[0], q->hist[q->P + nout - 1]);
            CHECKF(fresh.n_drafts == res.n_drafts &&
                           !memcmp(fresh.drafts, res.drafts, sizeof(int32_t) * res.n_drafts),
                   "oracle: drafts after accepted drafts differ from a fresh prefill's");
            dsv4_step_seq_free(st, 2);
        }
    }
    CHECKF(mism == 0, "oracle: %d emitted tokens differ from greedy", mism);
    CHECKF(accepted * 2 > drafted, "oracle: accepted %d of %d drafts", accepted, drafted);
    fprintf(stderr, "oracle drafts: accepted %d of %d over %d steps\n", accepted, drafted, steps);
    free_reqs(r);
    close_step(m, be, st);
}

/* A pool of few blocks: admission runs out with a status, freeing makes room. */
static void capacity(const char *dir)
{
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    struct dsv4_step *st = NULL;
    int rc = open_step(dir, NULL, 0, 1, 0, false, 3, 1024, &m, &be, &st);
    CHECKF(rc == 0, "capacity: open: %s", dsv4_errmsg());
    if (rc)
        return;
    struct dsv4_step_stats s;
    dsv4_step_get_stats(st, &s);
    CHECK_INT(s.total_blocks, 3);
    CHECK_INT(s.free_blocks, 3);
    CHECK_INT(dsv4_step_blocks_for(st, 257), 2);
    int32_t toks[600];
    for (int i = 0; i < 600; i++)
        toks[i] = i % VOCAB;
    struct dsv4_step_entry e = {.id = 1, .start = 0, .n = 200, .tokens = toks};
    struct dsv4_step_result r[2];
    CHECK_INT(dsv4_step_seq_add(st, 1), 0);
    CHECK_INT(dsv4_step_seq_add(st, 2), 0);
    CHECK_INT(dsv4_step_run(st, &e, 1, r), 0);
    dsv4_step_get_stats(st, &s);
    CHECK_INT(s.free_blocks, 2);
    e.start = 200;
    e.n = 100; /* crosses into the second block */
    CHECK_INT(dsv4_step_run(st, &e, 1, r), 0);
    struct dsv4_step_entry e2 = {.id = 2, .start = 0, .n = 150, .tokens = toks};
    CHECK_INT(dsv4_step_run(st, &e2, 1, r), 0);
    e2.start = 150;
    e2.n = 150;
    rc = dsv4_step_run(st, &e2, 1, r);
    CHECKF(rc == DSV4_ENOSPC && strstr(dsv4_errmsg(), "pool full"), "capacity: rc %d (%s)", rc,
           dsv4_errmsg());
    CHECK_INT(dsv4_step_seq_len(st, 2), 150);
    dsv4_step_seq_free(st, 1);
    CHECK_INT(dsv4_step_run(st, &e2, 1, r), 0);
    CHECK_INT(dsv4_step_seq_len(st, 2), 300);
    /* a bad entry fails the step before anything changes */
    struct dsv4_step_entry bad = {.id = 2, .start = 301, .n = 1, .tokens = toks};
    CHECK_INT(dsv4_step_run(st, &bad, 1, r), DSV4_EINVAL);
    bad.id = 77;
    bad.start = 0;
    CHECK_INT(dsv4_step_run(st, &bad, 1, r), DSV4_EINVAL);
    CHECK_INT(dsv4_step_seq_len(st, 2), 300);
    close_step(m, be, st);
}

/* The invariants on the first n requests; `full` adds ranks, oracle drafts and capacity. */
static void suite(const char *dir, const char *isa, int n, bool full)
{
    int rc;
    fprintf(stderr, "kernel set %s: %d requests%s\n", isa, n, full ? ", full suite" : "");
    CHECK_INT(dsv4_cpu_force_isa(isa), 0);
    struct req *alone = alloc_reqs(), *mixed = alloc_reqs(), *mtp = alloc_reqs();
    CHECK(alone && mixed && mtp);
    if (!alone || !mixed || !mtp)
        return;
    /* each request alone: arrival 0, its own step object */
    struct run x;
    for (int i = 0; i < n; i++) {
        struct req all[NREQ];
        memset(all, 0, sizeof all);
        reqs_init(all, NREQ, true);
        struct req one = all[i];
        one.lg = alone[i].lg;
        one.arrive = 0;
        struct dsv4_model *m = NULL;
        struct dsv4_backend *be = NULL;
        struct dsv4_step *st = NULL;
        rc = open_step(dir, NULL, 0, 1, 0, false, 0, HISTMAX + 8, &m, &be, &st);
        struct drv d = {.st = st, .r = &one, .n = 1, .chunk = 16};
        if (!rc) {
            dsv4_step_set_logits_hook(st, hook, &d);
            rc = drive(&d);
        }
        CHECKF(rc == 0, "alone %d: %s", i, dsv4_errmsg());
        close_step(m, be, st);
        alone[i] = one;
    }
    /* mixed, MTP off */
    x = (struct run){.dir = dir, .r = mixed, .n = n, .chunk = 16, .mtp = 0};
    CHECKF(run_schedule(&x, 1) == 0, "mixed: %s", dsv4_errmsg());
    CHECKF(compare("mixed vs alone", alone, mixed, n, true) == 0, "mixed batch != alone");
    /* mixed, MTP k=2, with a drop + re-prefill and a swap out / in */
    x = (struct run){.dir = dir, .r = mtp, .n = n, .chunk = 16, .mtp = K};
    x.d.nact = 4;
    x.d.when[0] = 14, x.d.who[0] = 2, x.d.act[0] = ACT_DROP;
    x.d.when[1] = 16, x.d.who[1] = 5, x.d.act[1] = ACT_SWAP_OUT;
    x.d.when[2] = 19, x.d.who[2] = 5, x.d.act[2] = ACT_SWAP_IN;
    x.d.when[3] = 22, x.d.who[3] = 0, x.d.act[3] = ACT_DROP;
    CHECKF(run_schedule(&x, 1) == 0, "mtp: %s", dsv4_errmsg());
    /* greedy requests: MTP on == off, and preempted ones continue exactly; sampled
     * requests (every 4th) draw through speculative verification: compared as such below */
    struct req g_alone[NREQ], g_mtp[NREQ];
    int ng = 0;
    for (int i = 0; i < n; i++)
        if (alone[i].params.temperature == 0) {
            g_alone[ng] = alone[i];
            g_mtp[ng++] = mtp[i];
        }
    CHECKF(compare("mtp vs plain (greedy)", g_alone, g_mtp, ng, true) == 0,
           "MTP on differs from MTP off for greedy requests");
    /* 2 ranks == 1 rank (the mixed schedule, MTP on, preemptions included) */
    if (full) {
        struct req *r2 = alloc_reqs();
        struct run y = x;
        y.r = r2;
        CHECKF(r2 && run_schedule(&y, 2) == 0, "2 ranks: %s", dsv4_errmsg());
        if (r2)
            CHECKF(compare("2 ranks vs 1", mtp, r2, n, true) == 0, "2 ranks differ from 1");
        free_reqs(r2);
    }
    /* decode graphs (padded calls) == plain, with a warm-up between steps, 1 and 2 ranks */
    if (full) {
        for (int ranks = 1; ranks <= 2; ranks++) {
            struct req *rg = alloc_reqs();
            struct run y = x;
            y.r = rg;
            y.graphs = true;
            y.d.when[y.d.nact] = 9, y.d.who[y.d.nact] = 0, y.d.act[y.d.nact++] = ACT_WARM;
            CHECKF(rg && run_schedule(&y, ranks) == 0, "graphs, %d ranks: %s", ranks,
                   dsv4_errmsg());
            if (rg)
                CHECKF(compare("graphs vs plain", mtp, rg, n, true) == 0,
                       "padded calls differ from plain ones (%d ranks)", ranks);
            fprintf(stderr, "graphs, %d ranks: %llu padded calls, %llu padding tokens\n", ranks,
                    (unsigned long long)y.gst.padded_calls,
                    (unsigned long long)y.gst.padded_tokens);
            CHECK(y.gst.padded_calls > 20 && y.gst.padded_tokens > 0);
            /* b and b * (1 + K) for b = 1, 2, 4, 8, 16: 1 2 3 4 6 8 12 16 24 48 */
            CHECK_INT(y.gst.buckets, 10);
            CHECK(y.gst.graphs == 0 && y.gst.launches == 0); /* cpu records none */
            free_reqs(rg);
        }
    }
    if (full) {
        oracle_drafts(dir, alone);
        capacity(dir);
    }
    free_reqs(alone);
    free_reqs(mixed);
    free_reqs(mtp);
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny", test_tmpdir());
    struct dsv4_config cfg;
    CHECK_INT(dsv4_mkmodel_preset("tiny", VOCAB, DSV4_EXPERT_MXFP4, &cfg), 0);
    struct dsv4_mkmodel_opts mo = {&cfg, 5, 1, NULL, dir};
    int rc = dsv4_mkmodel_write(&mo);
    CHECKF(rc == 0, "mkmodel: %s", dsv4_errmsg());
    if (rc)
        TEST_DONE();
    /* every kernel set the machine has: the lower ones on 6 requests (the scalar set is
     * slow), the best one on all 16 with ranks, oracle drafts and capacity */
    const char *isas[3];
    int nisa = rt_isas(isas);
    for (int i = 0; i + 1 < nisa; i++)
        suite(dir, isas[i], 6, false);
    suite(dir, isas[nisa - 1], NREQ, true);
    TEST_DONE();
}
