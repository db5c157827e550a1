/*
 * test_sched.c - dsv4d's scheduler (daemon/sched.h) against a model of the
 * workers that checks every plan: the state pool's blocks (block_tokens
 * positions each, ceil(len / block_tokens) per sequence held in the pool),
 * each sequence's length, and the tokens every entry feeds.  The model
 * "generates" token f(id, pos) at each sampled position, so a request's
 * whole history is known and every re-fed token is checked.
 *   - preemption under a pool too small for the running sequences, with
 *     swap off (every preempted sequence dropped and re-fed) and on (long
 *     ones swapped out and back in): no plan overcommits the pool, feeds a
 *     wrong token or starts an entry anywhere but at its state's length,
 *     and every request ends with exactly its max_tokens tokens f(id, pos);
 *   - swaps the workers cannot do (Result.lost, injected on every third
 *     swap-in and the second swap-out): the entry is not run, the request
 *     is re-fed from its history and still ends right;
 *   - the workers lost mid-run (a restart): swapped and resident states
 *     alike are gone, every request is re-fed and ends right;
 *   - two priority classes: later high-priority requests are admitted first;
 *   - a stop string completed inside the third of four tokens of one step, or
 *     exactly at the end of the second (the real tokenizer): the text before
 *     it, and only the ids up to the completing token sent and counted;
 *   - workers that emit more tokens than an entry's max_emit: each request
 *     still ends with exactly max_tokens tokens;
 *   - pipelining: a follow plan built while the plan before it is in flight
 *     (its results not yet applied), run by the model as a worker runs it
 *     (each entry continued from the model's own last results): the same
 *     checks hold, follow plans were sent, and a plan failing with
 *     DSV4_ENOSPC voids the follow plan behind it without losing anything.
 */
#include "base/dsv4.h"
#include "daemon/sched.h"
#include "engine/text/tokenizer.h"
#include "tests/test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NREQ   6
#define PROMPT 40
#define MAXTOK 30
#define BLOCK  16
#define BLOCKS 10

/* The prompt's token at pos, and the token the model "generates" for position pos. */
static int32_t prompt_at(uint64_t id, int64_t pos)
{
    return (int32_t)((id * 3 + (uint64_t)pos) % 1000 + 5);
}

static int32_t tok_at(uint64_t id, int64_t pos)
{
    return (int32_t)((id * 7919 + (uint64_t)pos * 31) % 1000 + 10);
}

/* ------------------------------------------------------------ the workers' model */

struct wseq {
    uint64_t id;
    int64_t len;
    bool used, swapped;
};

struct workers {
    struct wseq seq[64];
    int64_t used_blocks;
    int swap_ins, swap_outs;
    bool inject;    /* report some swaps as lost */
    int violations; /* plans the real workers would refuse or run wrong */
    uint64_t lost[64];
    int n_lost;
    struct dsv4_step_result res[64];
    /* follow plans: how each entry of the last plan continues (worker.c's record) */
    struct {
        uint64_t id;
        int64_t start;
        int32_t tok, max_left;
        bool alive;
    } cont[64];
    int n_cont;
    int plans, fail_at;               /* plans run; the one that fails with DSV4_ENOSPC (0: none) */
    bool failed;                      /* the last plan failed */
    bool overemit;                    /* a misbehaving worker: one token past max_emit at the end */
    int64_t swap_budget, swapped_max; /* swap_max_tokens; most positions held swapped */
};

static int64_t nblocks(int64_t len)
{
    return (len + BLOCK - 1) / BLOCK;
}

static struct wseq *wfind(struct workers *w, uint64_t id)
{
    for (int i = 0; i < 64; i++)
        if (w->seq[i].used && w->seq[i].id == id)
            return &w->seq[i];
    return NULL;
}

static void violation(struct workers *w, const char *what, uint64_t id)
{
    fprintf(stderr, "plan violation: %s (sequence %llu)\n", what, (unsigned long long)id);
    w->violations++;
}

static int follow_after_fail; /* follow plans run behind a failed one (all runs) */

/* The state of q is dropped (kept known, length 0). */
static void wdrop(struct workers *w, struct wseq *q)
{
    if (!q->swapped)
        w->used_blocks -= nblocks(q->len);
    q->len = 0;
    q->swapped = false;
}

/* Runs a plan as the workers would (worker.c: free, drop, swaps, add, entries). */
static int wrun(struct workers *w, const struct dsv4d_plan *p, struct dsv4d_result *r)
{
    memset(r, 0, sizeof *r);
    r->step = p->step;
    w->n_lost = 0;
    w->plans++;
    if (p->follow && w->failed)
        follow_after_fail++;
    w->failed = false;
    if (p->follow && (p->n_free || p->n_drop || p->n_swap_out || p->n_swap_in || p->n_add))
        violation(w, "a follow plan with lifecycle lists", 0);
    for (int i = 0; i < p->n_free; i++) {
        struct wseq *q = wfind(w, p->free[i]);
        if (q) {
            wdrop(w, q);
            q->used = false;
        }
    }
    for (int i = 0; i < p->n_drop; i++) {
        struct wseq *q = wfind(w, p->drop[i]);
        if (!q)
            violation(w, "drop of an unknown sequence", p->drop[i]);
        else
            wdrop(w, q);
    }
    for (int i = 0; i < p->n_swap_out; i++) {
        struct wseq *q = wfind(w, p->swap_out[i]);
        if (!q || q->swapped || q->len == 0) {
            violation(w, "swap-out of a sequence without resident state", p->swap_out[i]);
            continue;
        }
        if (w->inject && ++w->swap_outs == 2) {
            wdrop(w, q);
            w->lost[w->n_lost++] = q->id;
            continue;
        }
        w->used_blocks -= nblocks(q->len);
        q->swapped = true;
    }
    int64_t held = 0;
    for (int i = 0; i < 64; i++)
        if (w->seq[i].used && w->seq[i].swapped)
            held += w->seq[i].len;
    w->swapped_max = DSV4_MAX(w->swapped_max, held);
    if (held > w->swap_budget)
        violation(w, "more positions swapped out than swap_max_tokens", 0);
    for (int i = 0; i < p->n_swap_in; i++) {
        struct wseq *q = wfind(w, p->swap_in[i]);
        if (!q || !q->swapped) {
            violation(w, "swap-in of a sequence that is not swapped out", p->swap_in[i]);
            continue;
        }
        if (w->used_blocks + nblocks(q->len) > BLOCKS) {
            violation(w, "swap-in beyond the state pool", q->id);
            continue;
        }
        if (w->inject && ++w->swap_ins % 3 == 0) {
            q->swapped = false; /* the worker drops it: the blob is freed, length 0 */
            q->len = 0;
            w->lost[w->n_lost++] = q->id;
            continue;
        }
        w->used_blocks += nblocks(q->len);
        q->swapped = false;
    }
    for (int i = 0; i < p->n_add; i++) {
        if (wfind(w, p->add[i])) {
            violation(w, "add of a known sequence", p->add[i]);
            continue;
        }
        for (int j = 0; j < 64; j++)
            if (!w->seq[j].used) {
                w->seq[j] = (struct wseq){.id = p->add[i], .used = true};
                break;
            }
    }
    if (w->fail_at && w->plans == w->fail_at) {
        /* the step finds no room: nothing of it runs, nothing to follow from */
        r->status = DSV4_ENOSPC;
        w->failed = true;
        snprintf(r->message, sizeof r->message, "injected: state pool full");
        w->n_cont = 0;
        r->free_blocks = (uint64_t)(BLOCKS - w->used_blocks);
        return 0;
    }
    int n_cont = 0;
    static __typeof__(w->cont[0]) cont2[64];
    for (int i = 0; i < p->n_entries; i++) {
        struct dsv4_step_entry fe = p->entries[i], *e = &fe;
        struct dsv4_step_result *x = &w->res[i];
        memset(x, 0, sizeof *x);
        x->id = e->id;
        if (p->follow) {
            int c = -1;
            for (int j = 0; j < w->n_cont; j++)
                if (w->cont[j].id == e->id)
                    c = j;
            if (c < 0 || !w->cont[c].alive)
                continue; /* finished in the plan before: an empty result */
            fe.start = w->cont[c].start;
            fe.n = 1;
            fe.tokens = &w->cont[c].tok;
            fe.max_emit = w->cont[c].max_left;
        }
        bool lost = false;
        for (int j = 0; j < w->n_lost; j++)
            lost |= w->lost[j] == e->id;
        if (lost)
            continue;
        struct wseq *q = wfind(w, e->id);
        if (!q || q->swapped) {
            violation(w, "entry of a sequence without resident state", e->id);
            continue;
        }
        if (e->start != q->len || e->n < 1 || e->n_drafts != 0) {
            violation(w, "entry not at its state's length", e->id);
            continue;
        }
        for (int k = 0; k < e->n; k++) {
            int64_t pos = e->start + k;
            int32_t want = pos < PROMPT ? prompt_at(e->id, pos) : tok_at(e->id, pos);
            if (e->tokens[k] != want) {
                violation(w, "a fed token is not the request's history", e->id);
                break;
            }
        }
        int64_t grow = nblocks(q->len + e->n) - nblocks(q->len);
        if (w->used_blocks + grow > BLOCKS) {
            violation(w, "the plan overcommits the state pool", e->id);
            continue;
        }
        w->used_blocks += grow;
        q->len += e->n;
        if (e->sample && e->max_emit > 0) {
            x->n_tokens = 1;
            x->tokens[0] = tok_at(e->id, q->len);
            if (w->overemit && e->max_emit == 1) {
                x->n_tokens = 2;
                x->tokens[1] = tok_at(e->id, q->len + 1);
            }
        }
        bool alive = x->n_tokens > 0 && e->max_emit - 1 > 0;
        cont2[n_cont].id = e->id;
        cont2[n_cont].alive = alive;
        cont2[n_cont].start = q->len;
        cont2[n_cont].tok = x->tokens[0];
        cont2[n_cont++].max_left = e->max_emit - 1;
    }
    memcpy(w->cont, cont2, sizeof cont2[0] * (size_t)n_cont);
    w->n_cont = n_cont;
    r->results = w->res;
    r->n_results = p->n_entries;
    r->lost = w->lost;
    r->n_lost = w->n_lost;
    r->free_blocks = (uint64_t)(BLOCKS - w->used_blocks);
    return 0;
}

/* ------------------------------------------------------------ requests */

struct out {
    uint64_t id;
    int32_t toks[MAXTOK + 8];
    int n;
    bool finished, failed;
};

static void on_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct out *o = ctx;
    (void)id;
    if (ev->kind == DSV4_SVC_EV_TOKENS) {
        for (size_t i = 0; i < ev->n_ids && o->n < MAXTOK + 8; i++)
            o->toks[o->n++] = ev->ids[i];
    } else if (ev->kind == DSV4_SVC_EV_FINISH) {
        o->finished = true;
    } else {
        fprintf(stderr, "request %llu failed: %s\n", (unsigned long long)o->id, ev->message);
        o->failed = true;
    }
}

/* A scheduler with options so on the model's pool of BLOCKS blocks of BLOCK positions. */
static struct dsv4d_sched *new_sched(const struct dsv4d_sched_opts *so)
{
    struct dsv4d_sched *s = NULL;
    CHECK_INT(dsv4d_sched_create(so, &s), 0);
    if (s)
        dsv4d_sched_set_pool(s, BLOCKS, BLOCK, 1024, 0);
    return s;
}

/* NREQ greedy requests of MAXTOK tokens, EOS ignored, outputs to o; those from hi_from on
 * with priority 1.  Ids are assigned in order from 1: the prompt is a function of the id. */
static void submit_all(struct dsv4d_sched *s, struct out *o, int hi_from)
{
    memset(o, 0, sizeof *o * NREQ);
    for (int i = 0; i < NREQ; i++) {
        int32_t p[PROMPT];
        uint64_t id = 0;
        struct dsv4_svc_request q = {.max_tokens = MAXTOK,
                                     .sample = dsv4_sample_params_default(),
                                     .ignore_eos = true,
                                     .priority = i >= hi_from};
        q.sample.temperature = 0;
        for (int k = 0; k < PROMPT; k++)
            p[k] = prompt_at((uint64_t)i + 1, k);
        q.ids = p;
        q.n_ids = PROMPT;
        CHECK_INT(dsv4d_sched_submit(s, &q, p, PROMPT, on_event, &o[i], &id), 0);
        o[i].id = id;
        CHECK_INT(id, i + 1);
    }
}

/* One plan's result kept until it is applied (the model answers at once). */
struct kept {
    struct dsv4d_result r;
    struct dsv4_step_result res[64];
    uint64_t lost[64];
};

static void keep(struct kept *k, const struct dsv4d_result *r)
{
    k->r = *r;
    if (r->n_results)
        memcpy(k->res, r->results, sizeof k->res[0] * (size_t)r->n_results);
    if (r->n_lost)
        memcpy(k->lost, r->lost, sizeof k->lost[0] * (size_t)r->n_lost);
    k->r.results = k->res;
    k->r.lost = k->lost;
}

/* One run: NREQ requests through a pool of BLOCKS blocks; restart_at > 0 loses the workers
 * at that step; pipeline sends follow plans; fail_at > 0 fails that plan with ENOSPC. */
static bool overemit; /* the next run's workers emit past max_emit */

static void run(const char *what, int64_t swap_max, bool inject, int restart_at, bool pipeline,
                int fail_at)
{
    struct dsv4d_sched_opts so = {.max_seqs = 4,
                                  .max_batch_tokens = 64,
                                  .max_queue = 64,
                                  .mtp = 0,
                                  .eos_id = -1,
                                  .swap_min_tokens = 30,
                                  .swap_max_tokens = swap_max};
    struct dsv4d_sched *s = new_sched(&so);
    if (!s)
        return;
    static struct workers w;
    memset(&w, 0, sizeof w);
    w.inject = inject;
    w.fail_at = fail_at;
    w.overemit = overemit;
    w.swap_budget = swap_max;
    struct out o[NREQ];
    submit_all(s, o, NREQ);
    struct dsv4d_plan_buf pb;
    memset(&pb, 0, sizeof pb);
    static struct kept fl[2];
    int steps = 0, n_fl = 0;
    for (; steps < 2000; steps++) {
        struct dsv4d_result r;
        if (n_fl == 0) {
            /* as the supervisor: intake and a plan only when none is in flight */
            dsv4d_sched_intake(s, (double)steps);
            if (restart_at > 0 && steps == restart_at) {
                memset(&w.seq, 0, sizeof w.seq);
                w.used_blocks = 0;
                w.n_cont = 0;
                dsv4d_sched_workers_lost(s);
            }
            if (!dsv4d_sched_build(s, (double)steps, &pb)) {
                if (!dsv4d_sched_live(s))
                    break;
                continue;
            }
            wrun(&w, &pb.plan, &r);
            keep(&fl[n_fl++], &r);
        }
        /* the next plan while this one is in flight */
        if (pipeline && n_fl == 1 && dsv4d_sched_build_follow(s, (double)steps, &pb)) {
            wrun(&w, &pb.plan, &r);
            keep(&fl[n_fl++], &r);
        }
        /* the oldest answer is applied */
        if (fl[0].r.status)
            dsv4d_sched_failed(s, fl[0].r.status, fl[0].r.message, (double)steps);
        else
            dsv4d_sched_apply(s, &fl[0].r, (double)steps);
        if (--n_fl)
            keep(&fl[0], &fl[1].r);
    }
    struct dsv4d_sched_counts c;
    dsv4d_sched_counts(s, &c);
    fprintf(stderr,
            "%s: %d steps, %d preemptions, %llu by swapping (at most %lld positions at once), "
            "%llu swaps lost, %llu plans, %llu follow plans, %d violations\n",
            what, steps, c.preempted_total, (unsigned long long)c.swapped_total,
            (long long)w.swapped_max, (unsigned long long)c.swap_lost_total,
            (unsigned long long)c.plans, (unsigned long long)c.follow_plans, w.violations);
    if (pipeline)
        CHECKF(c.follow_plans > 5, "%s: no follow plans", what);
    else
        CHECK_INT(c.follow_plans, 0);
    CHECKF(w.violations == 0, "%s: the scheduler sent plans the workers would refuse", what);
    CHECKF(dsv4d_sched_live(s) == 0, "%s: requests left after %d steps", what, steps);
    for (int i = 0; i < NREQ; i++) {
        int bad = !o[i].finished || o[i].failed || o[i].n != MAXTOK;
        for (int k = 0; k < o[i].n && !bad; k++)
            bad = o[i].toks[k] != tok_at(o[i].id, PROMPT + k);
        CHECKF(!bad, "%s: request %d: %d tokens, finished %d: not its continuation", what, i,
               o[i].n, o[i].finished);
    }
    CHECKF(c.preempted_total > 0, "%s: no preemption (the pool should be too small)", what);
    if (swap_max < PROMPT)
        CHECK_INT(c.swapped_total, 0);
    else
        CHECKF(c.swapped_total > 0, "%s: nothing was swapped", what);
    if (inject)
        CHECKF(c.swap_lost_total > 0, "%s: no injected loss reached the scheduler", what);
    else
        CHECK_INT(c.swap_lost_total, 0);
    CHECK_INT(c.swapped, 0);
    dsv4d_plan_buf_free(&pb);
    dsv4d_sched_free(s);
}

/* Two priority classes: 4 requests of priority 0, then 2 of priority 1, two slots: the later
 * high-priority requests are admitted first, then the others in submission order. */
static void priorities(void)
{
    struct dsv4d_sched_opts so = {
            .max_seqs = 2, .max_batch_tokens = 64, .max_queue = 64, .mtp = 0, .eos_id = -1};
    struct dsv4d_sched *s = new_sched(&so);
    if (!s)
        return;
    static struct workers w;
    memset(&w, 0, sizeof w);
    struct out o[NREQ];
    submit_all(s, o, 4);
    struct dsv4d_plan_buf pb;
    memset(&pb, 0, sizeof pb);
    uint64_t order[NREQ];
    int n_order = 0, steps = 0;
    for (; steps < 2000; steps++) {
        struct dsv4d_result r;
        dsv4d_sched_intake(s, (double)steps);
        if (!dsv4d_sched_build(s, (double)steps, &pb)) {
            if (!dsv4d_sched_live(s))
                break;
            continue;
        }
        for (int a = 0; a < pb.plan.n_add && n_order < NREQ; a++)
            order[n_order++] = pb.plan.add[a];
        wrun(&w, &pb.plan, &r);
        if (r.status)
            dsv4d_sched_failed(s, r.status, r.message, (double)steps);
        else
            dsv4d_sched_apply(s, &r, (double)steps);
    }
    static const uint64_t want[NREQ] = {5, 6, 1, 2, 3, 4};
    CHECKF(n_order == NREQ && !memcmp(order, want, sizeof want),
           "priorities: admitted %llu %llu %llu %llu %llu %llu, want 5 6 1 2 3 4",
           (unsigned long long)order[0], (unsigned long long)order[1], (unsigned long long)order[2],
           (unsigned long long)order[3], (unsigned long long)order[4],
           (unsigned long long)order[5]);
    CHECKF(w.violations == 0, "priorities: plans the workers would refuse");
    for (int i = 0; i < NREQ; i++)
        CHECKF(o[i].finished && !o[i].failed && o[i].n == MAXTOK, "priorities: request %d", i);
    dsv4d_plan_buf_free(&pb);
    dsv4d_sched_free(s);
}

/* The model's EOS id goes into a request's stop ids unless it asks to ignore EOS. */
static void eos_stop_ids(void)
{
    struct dsv4d_sched_opts so = {
            .max_seqs = 4, .max_batch_tokens = 256, .max_queue = 8, .mtp = 0, .eos_id = 77};
    struct dsv4d_sched *s = new_sched(&so);
    if (!s)
        return;
    struct out o[2];
    memset(o, 0, sizeof o);
    int32_t p[8] = {1, 2, 3, 4, 5, 6, 7, 8}, stop = 99;
    for (int i = 0; i < 2; i++) {
        uint64_t id;
        struct dsv4_svc_request q = {.ids = p,
                                     .n_ids = 8,
                                     .max_tokens = 4,
                                     .sample = dsv4_sample_params_default(),
                                     .stop_ids = &stop,
                                     .n_stop_ids = 1,
                                     .ignore_eos = i == 1};
        CHECK_INT(dsv4d_sched_submit(s, &q, p, 8, on_event, &o[i], &id), 0);
    }
    struct dsv4d_plan_buf pb;
    memset(&pb, 0, sizeof pb);
    dsv4d_sched_intake(s, 0);
    CHECK(dsv4d_sched_build(s, 0, &pb));
    CHECK_INT(pb.plan.n_entries, 2);
    for (int i = 0; i < pb.plan.n_entries && i < 2; i++) {
        const struct dsv4_step_entry *e = &pb.plan.entries[i];
        bool eos = false, own = false;
        for (int k = 0; k < e->n_stop; k++) {
            eos |= e->stop_ids[k] == 77;
            own |= e->stop_ids[k] == 99;
        }
        CHECKF(own && eos == (e->id == 1), "request %llu: stop ids %s EOS",
               (unsigned long long)e->id, eos ? "with" : "without");
    }
    dsv4d_sched_end_all(s, DSV4_ENOTSUP, "test over", true);
    dsv4d_plan_buf_free(&pb);
    dsv4d_sched_free(s);
}

/* Events of one request in the stop-string test: ids, text, the finish's token count. */
struct stop_out {
    int32_t ids[16];
    int n_ids, completion, finished;
    char text[256];
    size_t text_len;
};

static void on_stop_event(void *ctx, uint64_t id, const struct dsv4_svc_event *ev)
{
    struct stop_out *o = ctx;
    (void)id;
    if (ev->kind == DSV4_SVC_EV_TOKENS) {
        for (size_t i = 0; i < ev->n_ids && o->n_ids < 16; i++)
            o->ids[o->n_ids++] = ev->ids[i];
        if (o->text_len + ev->text_len < sizeof o->text) {
            memcpy(o->text + o->text_len, ev->text, ev->text_len);
            o->text_len += ev->text_len;
        }
    } else {
        o->finished = ev->kind == DSV4_SVC_EV_FINISH && ev->finish == DSV4_SVC_FINISH_STOP;
        o->completion = ev->completion_tokens;
    }
}

/* One request with stop string `stop`, one step emitting the four tokens t (a decode whose
 * drafts were accepted): the client gets `want` as text and the first `keep` ids, and
 * completion_tokens counts `keep`. */
static void stop_case(const struct dsv4_tokenizer *tok, const int32_t *t, const char *stop,
                      const char *want, int keep)
{
    struct dsv4d_sched_opts so = {.max_seqs = 2,
                                  .max_batch_tokens = 64,
                                  .max_queue = 4,
                                  .mtp = 3,
                                  .eos_id = -1,
                                  .tok = tok};
    struct dsv4d_sched *s = new_sched(&so);
    if (!s)
        return;
    int32_t p[3] = {5, 6, 7};
    struct dsv4_svc_request q = {.max_tokens = 12,
                                 .sample = dsv4_sample_params_default(),
                                 .stop = {stop},
                                 .n_stop = 1,
                                 .ids = p,
                                 .n_ids = 3};
    q.sample.temperature = 0;
    struct stop_out o = {0};
    uint64_t id = 0;
    CHECK_INT(dsv4d_sched_submit(s, &q, p, 3, on_stop_event, &o, &id), 0);
    dsv4d_sched_intake(s, 0);
    struct dsv4d_plan_buf pb;
    memset(&pb, 0, sizeof pb);
    CHECK(dsv4d_sched_build(s, 0, &pb));
    CHECK_INT(pb.plan.n_entries, 1);
    struct dsv4_step_result x = {.id = id, .n_tokens = 4};
    memcpy(x.tokens, t, sizeof(int32_t) * 4);
    struct dsv4d_result r = {
            .step = pb.plan.step, .free_blocks = BLOCKS - 1, .results = &x, .n_results = 1};
    dsv4d_sched_apply(s, &r, 1);
    CHECKF(o.finished, "stop '%s': no finish (stop)", stop);
    CHECKF(o.n_ids == keep && o.completion == keep, "stop '%s': %d ids sent, %d counted, want %d",
           stop, o.n_ids, o.completion, keep);
    for (int i = 0; i < o.n_ids && i < 4; i++)
        CHECK_INT(o.ids[i], t[i]);
    o.text[o.text_len] = 0;
    CHECKF(!strcmp(o.text, want), "stop '%s': text '%s', want '%s'", stop, o.text, want);
    CHECK_INT(dsv4d_sched_live(s), 0);
    dsv4d_plan_buf_free(&pb);
    dsv4d_sched_free(s);
}

/* A stop string completed inside the third of four tokens of one step, and one ending exactly
 * at the end of the second: the output ends with the token that completed it. */
static void stop_mid_step(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/deepseek-v3-tokenizer.json", test_shared_data());
    struct dsv4_tokenizer *tok = NULL;
    struct dsv4_tokens t = {0};
    CHECK_INT(dsv4_tokenizer_load(path, &tok), 0);
    if (!tok)
        return;
    const char *text = " alpha beta gamma delta";
    CHECK_INT(dsv4_tokenizer_encode(tok, text, strlen(text), 0, &t), 0);
    CHECK_INT(t.len, 4); /* one token per word */
    if (t.len == 4) {
        stop_case(tok, t.ids, "gam", " alpha beta ", 3);
        stop_case(tok, t.ids, " beta", " alpha", 2);
    }
    dsv4_tokens_free(&t);
    dsv4_tokenizer_free(tok);
}

int main(void)
{
    eos_stop_ids();
    stop_mid_step();
    priorities();
    run("swap off", 0, false, 0, false, 0);
    run("swap on", 1 << 20, false, 0, false, 0);
    run("swap on, losses", 1 << 20, true, 0, false, 0);
    /* swap_max_tokens below every preemptible sequence (PROMPT positions or more): all are
     * dropped, none swapped */
    run("swap on, a budget below any sequence", PROMPT - 1, false, 0, false, 0);
    run("swap on, workers lost", 1 << 20, false, 40, false, 0);
    run("pipelined, swap on", 1 << 20, false, 0, true, 0);
    run("pipelined, swap on, losses", 1 << 20, true, 0, true, 0);
    run("pipelined, workers lost", 1 << 20, false, 40, true, 0);
    for (int f = 60; f <= 90; f += 6)
        run("pipelined, a plan fails", 1 << 20, false, 0, true, f);
    /* a worker sending more tokens than max_tokens allows: the client still gets exactly
     * max_tokens (and the scheduler's history, sized for them, is not overrun) */
    overemit = true;
    run("workers emit past max_emit", 1 << 20, false, 0, true, 0);
    overemit = false;
    fprintf(stderr, "follow plans behind a failed plan: %d\n", follow_after_fail);
    CHECK(follow_after_fail > 0);
    TEST_DONE();
}
