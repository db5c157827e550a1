/*
 * sched.c - the supervisor's scheduler (see daemon/sched.h for the policy).
 *
 * Requests live in a table (an array of pointers, oldest first) on the
 * loop thread; other threads hand in new requests and cancellations through
 * an inbox under a mutex.  A request is QUEUED (waiting for a slot, or
 * preempted and waiting to be re-fed) or ACTIVE (holds a worker sequence
 * and is being fed or decoded).  Per request:
 *   hist[0, n_prompt)        the prompt;   hist[n_prompt, n_prompt + n_out) the output
 *   target                   positions to feed before decoding (n_prompt, or after a
 *                            preemption or a worker restart, n_prompt + n_out: the whole
 *                            history; the last chunk samples the next output token)
 *   fed                      positions already in the worker's state
 * The first sampled token ends the prefill: the last chunk carries sample = true.
 *
 * Text: each request has a streaming detokenizer; visible text accumulates,
 * and only the part that cannot still grow into a stop string is sent.  A
 * stop string ends the request (finish STOP) with the text cut before it.
 *
 * Invariant: every request gets exactly one terminal event, after which it
 * leaves the table; the worker is told to free its sequence in the next plan.
 */
#include "daemon/sched.h"

#include "base/dsv4.h"
#include "rpc/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum rq_state { RQ_QUEUED = 0, RQ_ACTIVE = 1 };

struct req {
    uint64_t id;
    dsv4_svc_event_fn fn;
    void *ctx;
    int priority;
    double t_submit, deadline;
    char client_id[128];
    int32_t *hist;
    int64_t n_prompt, n_out, max_tokens;
    struct dsv4_sample_params params;
    int32_t stop_ids[64];
    int n_stop_ids;
    char *stop[DSV4_SVC_MAX_STOP];
    int n_stop, max_stop_len;
    bool skip_special;
    /* scheduling */
    enum rq_state st;
    bool in_worker; /* the workers know the sequence */
    bool swapped;   /* its state (fed positions) is swapped out in the workers */
    bool cancel;
    int64_t fed, target;
    uint64_t admit_seq; /* admission order (preemption picks the largest) */
    int nd;
    int32_t drafts[DSV4_STEP_MAX_DRAFTS];
    int plan_idx;      /* its entry in the plan in flight, -1 */
    int64_t plan_n;    /* tokens it feeds in that plan (its prefill chunk) */
    int64_t plan_end;  /* positions its state may hold after that plan (drafts accepted) */
    int fplan_idx;     /* its entry in the follow plan in flight behind it, -1 */
    int64_t fplan_end; /* the same after the follow plan */
    /* text */
    struct dsv4_detok dt;
    char *text;
    size_t text_len, text_cap, sent_len;
};

struct inbox_item {
    struct req *r; /* a new request, or NULL for a cancellation of id */
    uint64_t cancel_id;
};

struct dsv4d_sched {
    struct dsv4d_sched_opts o;
    /* loop thread */
    struct req **reqs;
    int n, cap;
    uint64_t admit_seq;
    int64_t free_blocks;
    int64_t swapped_tokens; /* positions held swapped out */
    bool plan_in_flight;
    int n_plan_entries;
    /* the plan in flight (A) and a follow plan behind it (B): whether A is a follow plan,
     * whether every entry of A samples, whether a plan's results are to be ignored (it
     * follows a failed one), the blocks each may take beyond the last reported count */
    bool follow_in_flight, a_follow, a_sampling, a_void, b_void;
    int64_t need_a, need_b;
    uint64_t *to_free; /* sequences to free in the next plan */
    int n_to_free, cap_to_free;
    /* inbox and shared counters */
    pthread_mutex_t mu;
    struct inbox_item *inbox;
    int n_inbox, cap_inbox;
    uint64_t next_id;
    int live; /* requests submitted and not ended (for the queue limit) */
    bool accepting;
    char why[256];
    struct dsv4d_sched_counts counts;
    /* client id -> service id (for Abort by client id) */
    struct {
        char cid[128];
        uint64_t id;
    } * cids;
    int n_cids, cap_cids;
};

/* ------------------------------------------------------------ helpers */

static int64_t blocks_for(const struct dsv4d_sched *s, int64_t len)
{
    int B = s->o.block_tokens > 0 ? s->o.block_tokens : 256;
    return len <= 0 ? 0 : (len + B - 1) / B;
}

static void req_free(struct req *r)
{
    if (!r)
        return;
    free(r->hist);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->text);
    free(r);
}

static void cid_remove(struct dsv4d_sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_cids; i++)
        if (s->cids[i].id == id) {
            s->cids[i] = s->cids[--s->n_cids];
            break;
        }
    pthread_mutex_unlock(&s->mu);
}

/* Text appended to r's visible text. */
static void text_add(struct req *r, const char *t, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = DSV4_MAX(r->text_cap * 2, r->text_len + n + 256);
        char *p = realloc(r->text, cap);
        if (!p)
            return; /* out of memory: the text is short, the tokens still flow */
        r->text = p;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, t, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

/* Length of visible text that can be sent: all but a tail that may grow into a stop string. */
static size_t safe_len(const struct req *r)
{
    size_t keep = r->text_len;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        for (size_t k = DSV4_MIN(sl - 1, r->text_len); k > 0; k--)
            if (!memcmp(r->text + r->text_len - k, r->stop[i], k)) {
                keep = DSV4_MIN(keep, r->text_len - k);
                break;
            }
    }
    return keep;
}

/* The first stop string in the visible text past what was sent (its position). */
static const char *find_stop(const struct req *r, size_t *at)
{
    const char *best = NULL;
    size_t from = r->sent_len > (size_t)r->max_stop_len ? r->sent_len - r->max_stop_len : 0;
    for (int i = 0; i < r->n_stop; i++) {
        const char *m = memmem(r->text + from, r->text_len - from, r->stop[i], strlen(r->stop[i]));
        if (m && (!best || (size_t)(m - r->text) < *at)) {
            *at = (size_t)(m - r->text);
            best = r->stop[i];
        }
    }
    return best;
}

static void emit_end(struct dsv4d_sched *s, struct req *r, const struct dsv4_svc_event *ev)
{
    r->fn(r->ctx, r->id, ev);
    cid_remove(s, r->id);
    if (r->in_worker) {
        if (s->n_to_free == s->cap_to_free) {
            int cap = s->cap_to_free ? s->cap_to_free * 2 : 64;
            uint64_t *p = realloc(s->to_free, sizeof *p * cap);
            if (p) {
                s->to_free = p;
                s->cap_to_free = cap;
            }
        }
        if (s->n_to_free < s->cap_to_free)
            s->to_free[s->n_to_free++] = r->id;
    }
}

static void end_error(struct dsv4d_sched *s, struct req *r, int status, const char *msg,
                      bool retryable)
{
    struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_ERROR,
                                .status = status,
                                .message = msg,
                                .retryable = retryable,
                                .prompt_tokens = r->n_prompt,
                                .completion_tokens = r->n_out};
    emit_end(s, r, &ev);
    pthread_mutex_lock(&s->mu);
    s->counts.failed++;
    pthread_mutex_unlock(&s->mu);
}

static void end_finish(struct dsv4d_sched *s, struct req *r, enum dsv4_svc_finish why,
                       const char *stop_string)
{
    struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_FINISH,
                                .finish = why,
                                .stop_string = stop_string,
                                .prompt_tokens = r->n_prompt,
                                .completion_tokens = r->n_out};
    emit_end(s, r, &ev);
    pthread_mutex_lock(&s->mu);
    if (why == DSV4_SVC_FINISH_ABORT)
        s->counts.aborted++;
    else
        s->counts.finished++;
    pthread_mutex_unlock(&s->mu);
}

/* Removes ended requests (NULL slots) from the table, keeping the order. */
static void compact(struct dsv4d_sched *s)
{
    int k = 0;
    for (int i = 0; i < s->n; i++)
        if (s->reqs[i])
            s->reqs[k++] = s->reqs[i];
    pthread_mutex_lock(&s->mu);
    s->live -= s->n - k;
    pthread_mutex_unlock(&s->mu);
    s->n = k;
}

/* r's state is no longer swapped out (swapped in, lost, or the request ended). */
static void unswap(struct dsv4d_sched *s, struct req *r)
{
    if (!r->swapped)
        return;
    r->swapped = false;
    s->swapped_tokens -= r->fed;
}

/* r's state is gone from the workers: re-prefill its whole history. */
static void refeed(struct req *r)
{
    r->fed = 0;
    r->target = r->n_prompt + r->n_out;
    r->nd = 0;
}

static void drop_req(struct dsv4d_sched *s, int i)
{
    unswap(s, s->reqs[i]);
    req_free(s->reqs[i]);
    s->reqs[i] = NULL;
}

/* ------------------------------------------------------------ lifecycle */

int dsv4d_sched_create(const struct dsv4d_sched_opts *o, struct dsv4d_sched **out)
{
    struct dsv4d_sched *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s)
        return dsv4_error(DSV4_ENOMEM, "scheduler: out of memory");
    s->o = *o;
    s->next_id = 1;
    s->accepting = true;
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return 0;
}

void dsv4d_sched_free(struct dsv4d_sched *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        req_free(s->reqs[i]);
    for (int i = 0; i < s->n_inbox; i++)
        req_free(s->inbox[i].r);
    free(s->reqs);
    free(s->inbox);
    free(s->to_free);
    free(s->cids);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void dsv4d_sched_set_pool(struct dsv4d_sched *s, int64_t total_blocks, int block_tokens,
                          int64_t max_ctx, int mtp)
{
    s->o.total_blocks = total_blocks;
    s->o.block_tokens = block_tokens;
    s->o.max_ctx = max_ctx;
    s->o.mtp = mtp;
    s->free_blocks = total_blocks;
    pthread_mutex_lock(&s->mu);
    s->counts.total_blocks = total_blocks;
    s->counts.free_blocks = total_blocks;
    pthread_mutex_unlock(&s->mu);
}

void dsv4d_sched_set_accepting(struct dsv4d_sched *s, bool on, const char *why)
{
    pthread_mutex_lock(&s->mu);
    s->accepting = on;
    snprintf(s->why, sizeof s->why, "%s", why ? why : "");
    pthread_mutex_unlock(&s->mu);
}

int dsv4d_sched_submit(struct dsv4d_sched *s, const struct dsv4_svc_request *q, const int32_t *ids,
                       size_t n_ids, dsv4_svc_event_fn fn, void *ctx, uint64_t *id)
{
    int rc;
    if (n_ids < 1)
        return dsv4_error(DSV4_EINVAL, "empty prompt");
    if (q->max_tokens < 1)
        return dsv4_error(DSV4_EINVAL, "max_tokens %d: at least 1", q->max_tokens);
    if ((rc = dsv4_sample_params_check(&q->sample)))
        return rc;
    if (q->n_stop < 0 || q->n_stop > DSV4_SVC_MAX_STOP || q->n_stop_ids > 63)
        return dsv4_error(DSV4_EINVAL, "too many stop strings or stop ids");
    for (int i = 0; i < q->n_stop; i++)
        if (!q->stop[i] || !q->stop[i][0] || strlen(q->stop[i]) > 1024)
            return dsv4_error(DSV4_EINVAL, "stop string %d is empty or longer than 1024 bytes", i);
    int64_t max_ctx = s->o.max_ctx;
    if (max_ctx > 0 && (int64_t)n_ids + q->max_tokens + s->o.mtp + 2 > max_ctx)
        return dsv4_error(DSV4_ERANGE,
                          "prompt of %zu tokens + max_tokens %d exceed the context of %lld tokens",
                          n_ids, q->max_tokens, (long long)(max_ctx - s->o.mtp - 2));
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    r->hist = malloc(sizeof(int32_t) * (n_ids + (size_t)q->max_tokens + 2));
    if (!r->hist) {
        free(r);
        return dsv4_error(DSV4_ENOMEM, "out of memory for a prompt of %zu tokens", n_ids);
    }
    memcpy(r->hist, ids, sizeof(int32_t) * n_ids);
    r->n_prompt = (int64_t)n_ids;
    r->max_tokens = q->max_tokens;
    r->params = q->sample;
    r->fn = fn;
    r->ctx = ctx;
    r->priority = q->priority > 0 ? 1 : 0;
    r->t_submit = dsv4_now();
    double to = q->timeout_s > 0 ? q->timeout_s : s->o.default_timeout;
    r->deadline = to > 0 ? r->t_submit + to : 0;
    r->skip_special = true;
    (void)q->skip_special;
    r->target = r->n_prompt;
    r->plan_idx = -1;
    r->fplan_idx = -1;
    if (q->client_id)
        snprintf(r->client_id, sizeof r->client_id, "%s", q->client_id);
    for (size_t i = 0; i < q->n_stop_ids; i++)
        r->stop_ids[r->n_stop_ids++] = q->stop_ids[i];
    if (!q->ignore_eos && s->o.eos_id >= 0)
        r->stop_ids[r->n_stop_ids++] = s->o.eos_id;
    for (int i = 0; i < q->n_stop; i++) {
        if (!(r->stop[i] = strdup(q->stop[i]))) {
            req_free(r);
            return dsv4_error(DSV4_ENOMEM, "out of memory");
        }
        r->n_stop = i + 1;
        r->max_stop_len = DSV4_MAX(r->max_stop_len, (int)strlen(q->stop[i]));
    }
    if (s->o.tok)
        dsv4_detok_init(&r->dt, s->o.tok, q->skip_special ? 0 : DSV4_TOKENIZER_RENDER_SPECIAL);
    pthread_mutex_lock(&s->mu);
    if (!s->accepting) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return dsv4_error(DSV4_ENOTSUP, "not accepting requests: %s", s->why);
    }
    if (s->live >= s->o.max_seqs + s->o.max_queue) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return dsv4_error(DSV4_ENOSPC, "queue full: %d requests running or waiting",
                          s->o.max_seqs + s->o.max_queue);
    }
    if (s->n_inbox == s->cap_inbox) {
        int cap = s->cap_inbox ? s->cap_inbox * 2 : 64;
        struct inbox_item *p = realloc(s->inbox, sizeof *p * cap);
        if (!p) {
            pthread_mutex_unlock(&s->mu);
            req_free(r);
            return dsv4_error(DSV4_ENOMEM, "out of memory");
        }
        s->inbox = p;
        s->cap_inbox = cap;
    }
    if (r->client_id[0]) {
        if (s->n_cids == s->cap_cids) {
            int cap = s->cap_cids ? s->cap_cids * 2 : 64;
            void *p = realloc(s->cids, sizeof *s->cids * cap);
            if (p) {
                s->cids = p;
                s->cap_cids = cap;
            }
        }
        if (s->n_cids < s->cap_cids) {
            snprintf(s->cids[s->n_cids].cid, sizeof s->cids[0].cid, "%s", r->client_id);
            s->cids[s->n_cids++].id = s->next_id;
        }
    }
    r->id = s->next_id++;
    s->inbox[s->n_inbox++] = (struct inbox_item){r, 0};
    s->live++;
    *id = r->id;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void dsv4d_sched_cancel(struct dsv4d_sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_inbox == s->cap_inbox) {
        int cap = s->cap_inbox ? s->cap_inbox * 2 : 64;
        struct inbox_item *p = realloc(s->inbox, sizeof *p * cap);
        if (p) {
            s->inbox = p;
            s->cap_inbox = cap;
        }
    }
    if (s->n_inbox < s->cap_inbox)
        s->inbox[s->n_inbox++] = (struct inbox_item){NULL, id};
    pthread_mutex_unlock(&s->mu);
}

int dsv4d_sched_cancel_client(struct dsv4d_sched *s, const char *client_id)
{
    uint64_t id = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_cids && client_id; i++)
        if (!strcmp(s->cids[i].cid, client_id))
            id = s->cids[i].id;
    pthread_mutex_unlock(&s->mu);
    if (!id)
        return dsv4_error(DSV4_ENOENT, "no running request with id '%s'",
                          client_id ? client_id : "");
    dsv4d_sched_cancel(s, id);
    return 0;
}

void dsv4d_sched_counts(struct dsv4d_sched *s, struct dsv4d_sched_counts *c)
{
    pthread_mutex_lock(&s->mu);
    *c = s->counts;
    pthread_mutex_unlock(&s->mu);
}

int dsv4d_sched_live(struct dsv4d_sched *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->live;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ------------------------------------------------------------ the loop thread */

static void publish_counts(struct dsv4d_sched *s)
{
    int running = 0, queued = 0, swapped = 0;
    for (int i = 0; i < s->n; i++)
        if (s->reqs[i]) {
            running += s->reqs[i]->st == RQ_ACTIVE;
            queued += s->reqs[i]->st == RQ_QUEUED;
            swapped += s->reqs[i]->swapped;
        }
    pthread_mutex_lock(&s->mu);
    s->counts.running = running;
    s->counts.swapped = swapped;
    s->counts.queued = queued + s->n_inbox;
    s->counts.free_blocks = s->free_blocks;
    pthread_mutex_unlock(&s->mu);
}

void dsv4d_sched_intake(struct dsv4d_sched *s, double now)
{
    pthread_mutex_lock(&s->mu);
    struct inbox_item *items = s->inbox;
    int n = s->n_inbox;
    s->inbox = NULL;
    s->n_inbox = s->cap_inbox = 0;
    pthread_mutex_unlock(&s->mu);
    for (int k = 0; k < n; k++) {
        if (items[k].r) {
            if (s->n == s->cap) {
                int cap = s->cap ? s->cap * 2 : 64;
                struct req **p = realloc(s->reqs, sizeof *p * cap);
                if (!p) {
                    end_error(s, items[k].r, DSV4_ENOMEM, "out of memory", true);
                    req_free(items[k].r);
                    pthread_mutex_lock(&s->mu);
                    s->live--;
                    pthread_mutex_unlock(&s->mu);
                    continue;
                }
                s->reqs = p;
                s->cap = cap;
            }
            s->reqs[s->n++] = items[k].r;
            continue;
        }
        for (int i = 0; i < s->n; i++)
            if (s->reqs[i] && s->reqs[i]->id == items[k].cancel_id)
                s->reqs[i]->cancel = true;
    }
    free(items);
    /* cancellations and deadlines end here, at the step boundary (not mid-plan) */
    if (!s->plan_in_flight) {
        for (int i = 0; i < s->n; i++) {
            struct req *r = s->reqs[i];
            if (!r)
                continue;
            if (r->cancel) {
                end_finish(s, r, DSV4_SVC_FINISH_ABORT, NULL);
                drop_req(s, i);
            } else if (r->deadline > 0 && now > r->deadline) {
                end_error(s, r, DSV4_ERANGE, "deadline exceeded", true);
                drop_req(s, i);
            }
        }
        compact(s);
    }
    publish_counts(s);
}

void dsv4d_sched_expire(struct dsv4d_sched *s, double now, const char *why)
{
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (r && r->deadline > 0 && now > r->deadline) {
            char msg[300];
            snprintf(msg, sizeof msg, "deadline exceeded (%s); retry", why);
            end_error(s, r, DSV4_ERANGE, msg, true);
            drop_req(s, i);
        }
    }
    compact(s);
    publish_counts(s);
}

/* Requests in scheduling order: high priority first, then the oldest. */
static int order_cmp(const void *a, const void *b)
{
    const struct req *x = *(struct req *const *)a, *y = *(struct req *const *)b;
    if (x->priority != y->priority)
        return y->priority - x->priority;
    if (x->admit_seq != y->admit_seq && x->st == RQ_ACTIVE && y->st == RQ_ACTIVE)
        return x->admit_seq < y->admit_seq ? -1 : 1;
    return x->t_submit < y->t_submit ? -1 : x->t_submit > y->t_submit;
}

static int grow_plan(struct dsv4d_plan_buf *pb, int n)
{
    uint64_t **lists[] = {&pb->add, &pb->free, &pb->drop, &pb->swap_out, &pb->swap_in};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(lists); i++) {
        uint64_t *a = realloc(*lists[i], sizeof(uint64_t) * n);
        if (!a)
            return -1;
        *lists[i] = a;
    }
    void *e = realloc(pb->entries, sizeof(struct dsv4_step_entry) * n);
    if (!e)
        return -1;
    pb->entries = e;
    return 0;
}

void dsv4d_plan_buf_free(struct dsv4d_plan_buf *pb)
{
    free(pb->add);
    free(pb->free);
    free(pb->drop);
    free(pb->swap_out);
    free(pb->swap_in);
    free(pb->entries);
    memset(pb, 0, sizeof *pb);
}

/* What every entry of r carries: the request's id, prompt length, sampling and stop ids. */
static void entry_head(struct req *r, struct dsv4_step_entry *e)
{
    memset(e, 0, sizeof *e);
    e->id = r->id;
    e->n_prompt = (int32_t)r->n_prompt;
    e->params = r->params;
    e->n_stop = r->n_stop_ids;
    e->stop_ids = r->stop_ids;
}

/* The entry of an active request this step: its prefill chunk or its decode. */
static void fill_entry(struct req *r, struct dsv4_step_entry *e, int64_t n_chunk)
{
    entry_head(r, e);
    e->max_emit = (int32_t)(r->max_tokens - r->n_out);
    if (r->fed < r->target) {
        e->start = r->fed;
        e->n = (int32_t)n_chunk;
        e->tokens = r->hist + r->fed;
        e->sample = r->fed + n_chunk == r->target;
    } else {
        e->start = r->n_prompt + r->n_out - 1;
        e->n = 1;
        e->tokens = r->hist + e->start;
        e->n_drafts = r->nd;
        e->drafts = r->drafts;
        e->sample = true;
    }
}

/* Preempts the youngest active request not yet in the plan: swaps its state out when it is
 * long enough and the swap budget has room, else drops it. */
static bool preempt_youngest(struct dsv4d_sched *s, struct dsv4d_plan_buf *pb, int64_t *freed)
{
    struct req *y = NULL;
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (r && r->st == RQ_ACTIVE && r->plan_idx < 0 && (!y || r->admit_seq > y->admit_seq))
            y = r;
    }
    if (!y)
        return false;
    *freed = blocks_for(s, y->fed);
    y->st = RQ_QUEUED;
    y->plan_idx = -2; /* not re-admitted by the plan that preempts it */
    bool swap = s->o.swap_max_tokens > 0 && y->fed >= DSV4_MAX(s->o.swap_min_tokens, 1) &&
                s->swapped_tokens + y->fed <= s->o.swap_max_tokens;
    if (swap) {
        y->swapped = true;
        s->swapped_tokens += y->fed;
        pb->swap_out[pb->plan.n_swap_out++] = y->id;
    } else {
        refeed(y);
        pb->drop[pb->plan.n_drop++] = y->id;
    }
    pthread_mutex_lock(&s->mu);
    s->counts.preempted_total++;
    s->counts.swapped_total += swap;
    pthread_mutex_unlock(&s->mu);
    dsv4_metrics_preemption(s->o.metrics);
    dsv4_log(DSV4_LOG_INFO, "preempted request %llu (state pool full): %s",
             (unsigned long long)y->id,
             swap ? "state swapped out, swapped in later" : "re-prefill later");
    return true;
}

bool dsv4d_sched_build(struct dsv4d_sched *s, double now, struct dsv4d_plan_buf *pb)
{
    (void)now;
    int cap = s->n + s->n_to_free + 8;
    if (grow_plan(pb, cap))
        return false;
    struct dsv4d_plan *p = &pb->plan;
    memset(p, 0, sizeof *p);
    p->add = pb->add;
    p->free = pb->free;
    p->drop = pb->drop;
    p->swap_out = pb->swap_out;
    p->swap_in = pb->swap_in;
    p->entries = pb->entries;
    for (int i = 0; i < s->n_to_free; i++)
        pb->free[p->n_free++] = s->to_free[i];
    s->n_to_free = 0;
    if (s->n > 1)
        qsort(s->reqs, (size_t)s->n, sizeof *s->reqs, order_cmp);
    int budget = s->o.max_batch_tokens, active = 0;
    int64_t free_b = s->free_blocks;
    for (int i = 0; i < s->n; i++) {
        s->reqs[i]->plan_idx = -1;
        active += s->reqs[i]->st == RQ_ACTIVE;
    }
    /* 1. running decodes (and feeds in progress): each needs its new positions' blocks */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->n; i++) {
            struct req *r = s->reqs[i];
            if (r->st != RQ_ACTIVE || r->plan_idx >= 0)
                continue;
            bool decode = r->fed >= r->target;
            if (decode != (pass == 0))
                continue;
            int64_t n = decode ? 1 + r->nd : DSV4_MIN((int64_t)budget, r->target - r->fed);
            if (n <= 0 || (decode && n > budget))
                continue;
            int64_t end = decode ? r->n_prompt + r->n_out + r->nd : r->fed + n;
            int64_t need = blocks_for(s, end) - blocks_for(s, r->fed);
            while (need > free_b) {
                int64_t freed = 0;
                if (!preempt_youngest(s, pb, &freed))
                    break;
                free_b += freed;
                active--;
            }
            if (r->st != RQ_ACTIVE) /* preempted itself: it was the youngest */
                continue;
            if (need > free_b)
                continue; /* nothing left to preempt: wait for blocks */
            free_b -= need;
            fill_entry(r, &pb->entries[p->n_entries], n);
            r->plan_idx = p->n_entries++;
            r->plan_n = n;
            r->plan_end = end;
            budget -= (int)n;
        }
    /* 2. admissions (preempted requests first: they were admitted before) */
    for (int i = 0; i < s->n && budget > 0; i++) {
        struct req *r = s->reqs[i];
        if (r->st != RQ_QUEUED || r->plan_idx == -2 || active >= s->o.max_seqs)
            continue;
        /* its first chunk, or for a swapped-out decode its 1 + drafts tokens */
        bool decode = r->fed >= r->target;
        int64_t n = decode ? 1 + r->nd : DSV4_MIN((int64_t)budget, r->target - r->fed);
        if (n > budget)
            break;
        int64_t end = decode ? r->n_prompt + r->n_out + r->nd : r->fed + n;
        /* admit when the first chunk fits and a watermark of blocks (1%, at least one)
         * stays free for running decodes; when decodes outgrow the pool anyway, the youngest
         * is preempted (above).  A swapped-out state needs all its blocks back. */
        int64_t need = blocks_for(s, end) - (r->swapped ? 0 : blocks_for(s, r->fed));
        int64_t watermark = DSV4_MAX((int64_t)1, s->o.total_blocks / 100);
        if (need + watermark > free_b)
            break;
        free_b -= need;
        if (r->swapped) {
            unswap(s, r);
            pb->swap_in[p->n_swap_in++] = r->id;
        }
        r->st = RQ_ACTIVE;
        r->admit_seq = ++s->admit_seq;
        if (!r->in_worker) {
            pb->add[p->n_add++] = r->id;
            r->in_worker = true;
        }
        fill_entry(r, &pb->entries[p->n_entries], n);
        r->plan_idx = p->n_entries++;
        r->plan_n = n;
        r->plan_end = end;
        budget -= (int)n;
        active++;
    }
    pb->plan.step = ++pb->next_step;
    s->n_plan_entries = p->n_entries;
    s->need_a = s->free_blocks - free_b;
    s->a_follow = s->a_void = false;
    s->a_sampling = p->n_entries > 0;
    for (int i = 0; i < p->n_entries; i++)
        s->a_sampling &= p->entries[i].sample;
    s->plan_in_flight = p->n_entries > 0 || p->n_free > 0 || p->n_drop > 0 || p->n_add > 0 ||
                        p->n_swap_out > 0 || p->n_swap_in > 0;
    pthread_mutex_lock(&s->mu);
    s->counts.plans += s->plan_in_flight;
    pthread_mutex_unlock(&s->mu);
    publish_counts(s);
    return s->plan_in_flight;
}

bool dsv4d_sched_build_follow(struct dsv4d_sched *s, double now, struct dsv4d_plan_buf *pb)
{
    /* only behind a plan of decodes, with nothing else to do: no request waiting to be
     * admitted or fed, nothing to free, no cancellation or deadline due */
    if (!s->plan_in_flight || s->follow_in_flight || s->a_void || !s->a_sampling ||
        s->n_to_free > 0)
        return false;
    pthread_mutex_lock(&s->mu);
    int inbox = s->n_inbox;
    pthread_mutex_unlock(&s->mu);
    if (inbox)
        return false;
    int n = 0, k = s->o.mtp;
    int64_t need = 0;
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r)
            continue;
        if (r->st != RQ_ACTIVE || r->cancel || (r->deadline > 0 && now > r->deadline))
            return false;
        if (r->plan_idx < 0)
            return false; /* running but not in A: the next plan must carry it */
        n++;
        need += blocks_for(s, r->plan_end + 1 + k) - blocks_for(s, r->plan_end);
    }
    if (n == 0 || n * (1 + k) > s->o.max_batch_tokens || need > s->free_blocks - s->need_a)
        return false;
    if (grow_plan(pb, n + 8))
        return false;
    struct dsv4d_plan *p = &pb->plan;
    memset(p, 0, sizeof *p);
    p->entries = pb->entries;
    p->follow = true;
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r)
            continue;
        struct dsv4_step_entry *e = &pb->entries[p->n_entries];
        entry_head(r, e);
        e->sample = true; /* start, tokens, drafts, max_emit: the worker's */
        r->fplan_idx = p->n_entries++;
        r->fplan_end = r->plan_end + 1 + k;
    }
    p->step = ++pb->next_step;
    pthread_mutex_lock(&s->mu);
    s->counts.plans++;
    s->counts.follow_plans++;
    pthread_mutex_unlock(&s->mu);
    s->follow_in_flight = true;
    s->b_void = false;
    s->need_b = need;
    return true;
}

/* A's results are in: the follow plan B, if any, becomes the plan in flight. */
static void next_in_flight(struct dsv4d_sched *s)
{
    s->plan_in_flight = s->follow_in_flight;
    if (!s->follow_in_flight)
        return;
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r)
            continue;
        r->plan_idx = r->fplan_idx;
        r->plan_end = r->fplan_end;
        r->fplan_idx = -1;
    }
    s->follow_in_flight = false;
    s->a_follow = true;
    s->a_sampling = true;
    s->a_void = s->b_void;
    s->need_a = s->need_b;
}

/* A plan behind a failed one ended (results or failure alike): the workers had nothing to
 * continue from, so nothing of it counts. */
static void void_done(struct dsv4d_sched *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->reqs[i])
            s->reqs[i]->plan_idx = -1;
    next_in_flight(s);
    publish_counts(s);
}

/* Appends tokens to r's output and streams their text; true when r ended. */
static bool take_tokens(struct dsv4d_sched *s, struct req *r, const struct dsv4_step_result *x)
{
    char buf[4096];
    /* never past max_tokens, whatever a worker sends (the history holds no more) */
    int nt = (int)DSV4_MIN((int64_t)x->n_tokens, DSV4_MAX(r->max_tokens - r->n_out, 0));
    if (nt < x->n_tokens)
        dsv4_log(DSV4_LOG_WARN, "request %llu: a worker emitted %d tokens with %lld left: %d kept",
                 (unsigned long long)r->id, x->n_tokens, (long long)(r->max_tokens - r->n_out), nt);
    size_t tend[1 + DSV4_STEP_MAX_DRAFTS]; /* text length after each token */
    for (int i = 0; i < nt; i++) {
        r->hist[r->n_prompt + r->n_out++] = x->tokens[i];
        size_t n = 0;
        if (s->o.tok && dsv4_detok_feed(&r->dt, x->tokens[i], buf, sizeof buf, &n) == 0)
            text_add(r, buf, n);
        tend[i] = r->text_len;
    }
    bool done = (x->finish != DSV4_FINISH_NONE && nt == x->n_tokens) || r->n_out >= r->max_tokens;
    if (done && s->o.tok) {
        size_t n = 0;
        if (dsv4_detok_flush(&r->dt, buf, sizeof buf, &n) == 0)
            text_add(r, buf, n);
    }
    size_t at = 0;
    const char *stop = r->n_stop ? find_stop(r, &at) : NULL;
    if (stop) {
        /* the output ends with the token that completed the stop string: the step's tokens
         * after it (accepted drafts) are neither sent nor counted */
        size_t end = at + strlen(stop);
        for (int i = 0; i < nt; i++)
            if (tend[i] >= end) {
                r->n_out -= nt - (i + 1);
                nt = i + 1;
                break;
            }
        r->text_len = at;
        done = true;
    }
    size_t send_to = done ? r->text_len : safe_len(r);
    if (send_to < r->sent_len)
        send_to = r->sent_len;
    struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_TOKENS,
                                .ids = x->tokens,
                                .n_ids = (size_t)nt,
                                .text = r->text ? r->text + r->sent_len : "",
                                .text_len = send_to - r->sent_len,
                                .prompt_tokens = r->n_prompt,
                                .completion_tokens = r->n_out};
    float top_lp[(1 + DSV4_STEP_MAX_DRAFTS) * DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    int32_t top_ids[(1 + DSV4_STEP_MAX_DRAFTS) * DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    if (r->params.logprobs) {
        ev.logprobs = x->logprobs;
        ev.n_top = x->n_top;
        for (int i = 0; i < nt; i++)
            for (int j = 0; j < DSV4_SAMPLE_MAX_TOP_LOGPROBS; j++) {
                top_ids[i * DSV4_SAMPLE_MAX_TOP_LOGPROBS + j] = j < x->n_top ? x->top_ids[i][j] : 0;
                top_lp[i * DSV4_SAMPLE_MAX_TOP_LOGPROBS + j] =
                        j < x->n_top ? x->top_logprobs[i][j] : 0;
            }
        ev.top_ids = top_ids;
        ev.top_logprobs = top_lp;
    }
    r->sent_len = send_to;
    if (ev.n_ids || ev.text_len)
        r->fn(r->ctx, r->id, &ev);
    if (done) {
        bool stopped = stop || (x->finish == DSV4_FINISH_STOP && nt == x->n_tokens);
        enum dsv4_svc_finish why = stopped ? DSV4_SVC_FINISH_STOP : DSV4_SVC_FINISH_LENGTH;
        end_finish(s, r, why, stop);
    }
    return done;
}

void dsv4d_sched_apply(struct dsv4d_sched *s, const struct dsv4d_result *res, double now)
{
    (void)now;
    s->free_blocks = (int64_t)res->free_blocks;
    if (s->a_void) {
        void_done(s);
        return;
    }
    /* swaps the workers could not do: the state is gone, the history is fed again */
    for (int j = 0; j < res->n_lost; j++)
        for (int i = 0; i < s->n; i++) {
            struct req *r = s->reqs[i];
            if (!r || r->id != res->lost[j])
                continue;
            unswap(s, r);
            refeed(r);
            r->st = RQ_QUEUED;
            r->plan_idx = -1; /* its entry, if any, was not run */
            pthread_mutex_lock(&s->mu);
            s->counts.swap_lost_total++;
            pthread_mutex_unlock(&s->mu);
            dsv4_log(DSV4_LOG_WARN, "request %llu: swapped state lost: re-prefill",
                     (unsigned long long)r->id);
        }
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r || r->plan_idx < 0)
            continue;
        int k = r->plan_idx;
        r->plan_idx = -1;
        if (k >= res->n_results || res->results[k].id != r->id) {
            end_error(s, r, DSV4_EINTERNAL, "worker result does not match the plan", true);
            drop_req(s, i);
            continue;
        }
        const struct dsv4_step_result *x = &res->results[k];
        if (x->drafted > 0)
            dsv4_metrics_spec_decode(s->o.metrics, x->drafted, x->accepted);
        if (x->n_tokens == 0 && s->a_follow)
            continue; /* it finished in the plan before (ended there) */
        if (x->n_tokens == 0) {
            /* a prefill chunk that did not sample: its positions are in the state now */
            r->fed += r->plan_n;
            continue;
        }
        /* positions now in the state: everything before the last emitted token */
        r->fed = r->target = r->n_prompt + r->n_out + x->n_tokens - 1;
        r->nd = x->n_drafts;
        memcpy(r->drafts, x->drafts, sizeof r->drafts);
        if (take_tokens(s, r, x))
            drop_req(s, i);
    }
    compact(s);
    next_in_flight(s);
    publish_counts(s);
}

void dsv4d_sched_failed(struct dsv4d_sched *s, int status, const char *msg, double now)
{
    (void)now;
    /* a follow plan behind this one has nothing to continue from */
    s->b_void = true;
    if (s->a_void) {
        void_done(s);
        return;
    }
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r || r->plan_idx < 0)
            continue;
        r->plan_idx = -1;
        if (status == DSV4_ENOSPC)
            continue; /* retried: the next build preempts to make room */
        char m[600];
        snprintf(m, sizeof m, "engine error: %s", msg);
        end_error(s, r, status, m, false);
        drop_req(s, i);
    }
    if (status == DSV4_ENOSPC) {
        /* the mirror was off: trust the pool as full and preempt the youngest */
        s->free_blocks = 0;
    }
    compact(s);
    next_in_flight(s);
    publish_counts(s);
}

void dsv4d_sched_workers_lost(struct dsv4d_sched *s)
{
    s->plan_in_flight = false;
    s->follow_in_flight = false;
    s->n_to_free = 0;
    s->free_blocks = s->o.total_blocks;
    for (int i = 0; i < s->n; i++) {
        struct req *r = s->reqs[i];
        if (!r)
            continue;
        unswap(s, r);
        r->plan_idx = -1;
        r->fplan_idx = -1;
        r->in_worker = false;
        r->st = RQ_QUEUED;
        refeed(r);
    }
    publish_counts(s);
}

void dsv4d_sched_end_all(struct dsv4d_sched *s, int status, const char *msg, bool retryable)
{
    for (int i = 0; i < s->n; i++)
        if (s->reqs[i]) {
            end_error(s, s->reqs[i], status, msg, retryable);
            drop_req(s, i);
        }
    compact(s);
    publish_counts(s);
}
