/*
 * fake_svc.c - the deterministic fake engine of tests/rpc/fake_svc.h.
 *
 * One thread runs every request: each tick (delay_ms) it emits the next
 * token of every running request, in submission order, and ends those that
 * are done, cancelled or past their deadline.  Requests live in a fixed
 * table guarded by one mutex; callbacks run on the thread without the lock
 * held for other requests' data (each request's event is built from a copy).
 */
#include "tests/rpc/fake_svc.h"

#include "base/dsv4.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXREQ 64
#define CTX    4096

struct freq {
    bool used, cancel;
    uint64_t id;
    dsv4_svc_event_fn fn;
    void *ctx;
    int32_t max_tokens, emitted, eos_at;
    int64_t prompt_tokens;
    double deadline;
    bool logprobs, ignore_eos;
    int n_top;
    char stop[DSV4_SVC_MAX_STOP][64];
    int n_stop;
    int32_t stop_ids[16];
    int n_stop_ids;
    char client_id[128];
    char text[CTX]; /* emitted text so far (for stop strings) */
    int text_len, sent_len;
};

struct fake {
    struct dsv4_svc svc;
    pthread_mutex_t mu;
    pthread_t th;
    bool quit;
    int delay_ms;
    uint64_t next_id, submitted;
    enum dsv4_svc_state state;
    char why[256];
    char keys[1024];
    struct freq r[MAXREQ];
};

static struct fake *F(struct dsv4_svc *s)
{
    return s->impl;
}

static const char pattern[] = "abcdefghij ";

static int f_submit(struct dsv4_svc *s, const struct dsv4_svc_request *q, dsv4_svc_event_fn fn,
                    void *ctx, uint64_t *id)
{
    struct fake *f = F(s);
    int64_t np = q->text ? (int64_t)q->text_len : (int64_t)q->n_ids;
    if ((!q->text && !q->ids) || np < 1)
        return dsv4_error(DSV4_EINVAL, "empty prompt");
    if (q->max_tokens < 1)
        return dsv4_error(DSV4_EINVAL, "max_tokens %d < 1", q->max_tokens);
    int rc = dsv4_sample_params_check(&q->sample);
    if (rc)
        return rc;
    if (np + q->max_tokens > CTX)
        return dsv4_error(DSV4_ERANGE,
                          "prompt of %lld tokens + max_tokens %d exceed the context of %d",
                          (long long)np, q->max_tokens, CTX);
    for (size_t i = 0; i < q->n_ids; i++)
        if (q->ids[i] < 0 || q->ids[i] >= 259)
            return dsv4_error(DSV4_EINVAL, "token id %d outside the vocabulary", q->ids[i]);
    pthread_mutex_lock(&f->mu);
    if (f->state != DSV4_SVC_READY) {
        enum dsv4_svc_state st = f->state;
        pthread_mutex_unlock(&f->mu);
        return dsv4_error(DSV4_ENOTSUP, "not accepting requests: %s", dsv4_svc_state_name(st));
    }
    struct freq *r = NULL;
    for (int i = 0; i < MAXREQ && !r; i++)
        if (!f->r[i].used)
            r = &f->r[i];
    if (!r) {
        pthread_mutex_unlock(&f->mu);
        return dsv4_error(DSV4_ENOSPC, "queue full (%d requests)", MAXREQ);
    }
    memset(r, 0, sizeof *r);
    r->used = true;
    r->id = ++f->next_id;
    r->fn = fn;
    r->ctx = ctx;
    r->max_tokens = q->max_tokens;
    r->prompt_tokens = np;
    r->logprobs = q->sample.logprobs;
    r->n_top = q->sample.n_top_logprobs;
    r->ignore_eos = q->ignore_eos;
    r->eos_at = q->text && memmem(q->text, q->text_len, "EOS", 3) ? 5 : -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r->deadline = q->timeout_s > 0 ? ts.tv_sec + ts.tv_nsec * 1e-9 + q->timeout_s : 0;
    for (int i = 0; i < q->n_stop && i < DSV4_SVC_MAX_STOP; i++)
        snprintf(r->stop[r->n_stop++], sizeof r->stop[0], "%s", q->stop[i]);
    for (size_t i = 0; i < q->n_stop_ids && i < 16; i++)
        r->stop_ids[r->n_stop_ids++] = q->stop_ids[i];
    if (q->client_id)
        snprintf(r->client_id, sizeof r->client_id, "%s", q->client_id);
    f->submitted++;
    *id = r->id;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static void f_cancel(struct dsv4_svc *s, uint64_t id)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < MAXREQ; i++)
        if (f->r[i].used && f->r[i].id == id)
            f->r[i].cancel = true;
    pthread_mutex_unlock(&f->mu);
}

static int f_abort_client_id(struct dsv4_svc *s, const char *cid)
{
    struct fake *f = F(s);
    int found = 0;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < MAXREQ; i++)
        if (f->r[i].used && cid && *cid && !strcmp(f->r[i].client_id, cid)) {
            f->r[i].cancel = true;
            found = 1;
        }
    pthread_mutex_unlock(&f->mu);
    return found ? 0 : dsv4_error(DSV4_ENOENT, "no running request '%s'", cid ? cid : "");
}

static int f_tokenize(struct dsv4_svc *s, const char *text, size_t len, int32_t **ids, size_t *n)
{
    (void)s;
    *ids = malloc(sizeof(int32_t) * (len ? len : 1));
    if (!*ids)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    for (size_t i = 0; i < len; i++)
        (*ids)[i] = (unsigned char)text[i] + 3;
    *n = len;
    return 0;
}

static int f_detokenize(struct dsv4_svc *s, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len)
{
    static const char *names[3] = {"<s>", "</s>", "<pad>"};
    (void)s;
    char *t = malloc(n * 6 + 1);
    size_t k = 0;
    if (!t)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= 259) {
            free(t);
            return dsv4_error(DSV4_ERANGE, "token id %d outside the vocabulary", ids[i]);
        }
        if (ids[i] < 3) {
            if (!skip_special) {
                memcpy(t + k, names[ids[i]], strlen(names[ids[i]]));
                k += strlen(names[ids[i]]);
            }
        } else {
            t[k++] = (char)(ids[i] - 3);
        }
    }
    t[k] = 0;
    *text = t;
    *len = k;
    return 0;
}

static void f_model_info(struct dsv4_svc *s, struct dsv4_svc_model_info *o)
{
    (void)s;
    memset(o, 0, sizeof *o);
    snprintf(o->model_id, sizeof o->model_id, "fake-model");
    snprintf(o->model_path, sizeof o->model_path, "/nonexistent/fake-model");
    snprintf(o->architecture, sizeof o->architecture, "FakeForTests");
    o->vocab_size = 259;
    o->max_context = CTX;
    o->eos_token_id = 1;
    o->bos_token_id = 0;
    o->mtp_depth = 1;
}

static void f_loads(struct dsv4_svc *s, struct dsv4_svc_loads *o)
{
    struct fake *f = F(s);
    memset(o, 0, sizeof *o);
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < MAXREQ; i++)
        o->running += f->r[i].used;
    pthread_mutex_unlock(&f->mu);
    o->max_seqs = MAXREQ;
    o->total_blocks = 1024;
    o->free_blocks = 1024 - 4 * o->running;
    o->workers = o->workers_ready = 1;
}

static enum dsv4_svc_state f_state(struct dsv4_svc *s, char *why, size_t len)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    enum dsv4_svc_state st = f->state;
    if (why && len)
        snprintf(why, len, "%s", f->why);
    pthread_mutex_unlock(&f->mu);
    return st;
}

static bool f_authorize(struct dsv4_svc *s, const char *key, size_t len)
{
    struct fake *f = F(s);
    bool ok = false;
    pthread_mutex_lock(&f->mu);
    if (!f->keys[0]) {
        ok = true;
    } else {
        const char *p = f->keys;
        while (*p && !ok) {
            const char *e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            ok = key && n == len && !memcmp(p, key, n);
            p = e ? e + 1 : p + n;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return ok;
}

/* A client's drain: readiness goes DRAINING (new requests refused); running requests go on,
 * as the real service lets them finish. */
static void f_drain(struct dsv4_svc *s)
{
    fake_svc_set_state(s, DSV4_SVC_DRAINING, "drain requested");
}

static const struct dsv4_svc_ops fake_ops = {
        .submit = f_submit,
        .cancel = f_cancel,
        .abort_client_id = f_abort_client_id,
        .tokenize = f_tokenize,
        .detokenize = f_detokenize,
        .model_info = f_model_info,
        .loads = f_loads,
        .state = f_state,
        .authorize = f_authorize,
        .drain = f_drain,
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Length of text[0..n) that can be sent: everything but a suffix that may still grow into
 * a stop string. */
static int safe_len(const struct freq *r)
{
    int keep = r->text_len;
    for (int i = 0; i < r->n_stop; i++) {
        int sl = (int)strlen(r->stop[i]);
        for (int k = sl - 1; k > 0; k--)
            if (k <= r->text_len && !memcmp(r->text + r->text_len - k, r->stop[i], k)) {
                keep = keep < r->text_len - k ? keep : r->text_len - k;
                break;
            }
    }
    return keep;
}

/* One tick of one request: its event, built under the lock, delivered without it. */
static void tick(struct fake *f, int i)
{
    struct dsv4_svc_event ev = {0};
    int32_t id = 0;
    float lp = -0.5f;
    int32_t top_ids[DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    float top_lp[DSV4_SAMPLE_MAX_TOP_LOGPROBS];
    char text[CTX];
    const char *matched = NULL;
    char matched_buf[64];
    dsv4_svc_event_fn fn;
    void *ctx;
    uint64_t rid;
    bool end = false, stop_hit = false;

    pthread_mutex_lock(&f->mu);
    struct freq *r = &f->r[i];
    fn = r->fn;
    ctx = r->ctx;
    rid = r->id;
    ev.prompt_tokens = r->prompt_tokens;
    if (r->cancel) {
        ev.kind = DSV4_SVC_EV_FINISH;
        ev.finish = DSV4_SVC_FINISH_ABORT;
        end = true;
    } else if (r->deadline > 0 && now_s() > r->deadline) {
        ev.kind = DSV4_SVC_EV_ERROR;
        ev.status = DSV4_ERANGE;
        ev.message = "deadline exceeded";
        ev.retryable = true;
        end = true;
    } else {
        bool eos = r->eos_at >= 0 && r->emitted == r->eos_at && !r->ignore_eos;
        id = eos ? 1 : (unsigned char)pattern[r->emitted % 11] + 3;
        r->emitted++;
        ev.kind = DSV4_SVC_EV_TOKENS;
        ev.ids = &id;
        ev.n_ids = 1;
        bool stop_id = eos;
        for (int k = 0; k < r->n_stop_ids; k++)
            stop_id |= r->stop_ids[k] == id;
        stop_hit = stop_id;
        if (!eos && r->text_len < CTX - 1)
            r->text[r->text_len++] = (char)(id - 3);
        /* stop strings: cut the text at the first match */
        for (int k = 0; k < r->n_stop && !matched; k++) {
            char *m = memmem(r->text, r->text_len, r->stop[k], strlen(r->stop[k]));
            if (m) {
                r->text_len = (int)(m - r->text);
                snprintf(matched_buf, sizeof matched_buf, "%s", r->stop[k]);
                matched = matched_buf;
            }
        }
        int send_to = matched ? r->text_len : safe_len(r);
        if (send_to < r->sent_len)
            send_to = r->sent_len;
        memcpy(text, r->text + r->sent_len, send_to - r->sent_len);
        ev.text = text;
        ev.text_len = send_to - r->sent_len;
        r->sent_len = send_to;
        if (r->logprobs) {
            ev.logprobs = &lp;
            ev.n_top = r->n_top;
            for (int k = 0; k < r->n_top; k++) {
                top_ids[k] = k == 0 ? id : 3 + k;
                top_lp[k] = -0.5f - k;
            }
            ev.top_ids = top_ids;
            ev.top_logprobs = top_lp;
        }
        ev.completion_tokens = r->emitted;
        if (matched || stop_id || r->emitted >= r->max_tokens)
            end = true;
        stop_hit |= matched != NULL;
    }
    int64_t completion = r->emitted;
    pthread_mutex_unlock(&f->mu);

    if (ev.kind == DSV4_SVC_EV_TOKENS) {
        if (!matched || ev.n_ids)
            fn(ctx, rid, &ev);
        if (end) {
            struct dsv4_svc_event fin = {.kind = DSV4_SVC_EV_FINISH,
                                         .prompt_tokens = ev.prompt_tokens,
                                         .completion_tokens = completion};
            fin.finish = stop_hit ? DSV4_SVC_FINISH_STOP : DSV4_SVC_FINISH_LENGTH;
            fin.stop_string = matched;
            fn(ctx, rid, &fin);
        }
    } else {
        ev.completion_tokens = completion;
        fn(ctx, rid, &ev);
    }
    if (end) {
        pthread_mutex_lock(&f->mu);
        f->r[i].used = false;
        pthread_mutex_unlock(&f->mu);
    }
}

static void *loop(void *arg)
{
    struct fake *f = arg;
    for (;;) {
        struct timespec ts = {0, (long)f->delay_ms * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&f->mu);
        bool quit = f->quit;
        bool used[MAXREQ];
        for (int i = 0; i < MAXREQ; i++)
            used[i] = f->r[i].used;
        pthread_mutex_unlock(&f->mu);
        if (quit)
            break;
        for (int i = 0; i < MAXREQ; i++)
            if (used[i])
                tick(f, i);
    }
    return NULL;
}

struct dsv4_svc *fake_svc_create(int delay_ms)
{
    struct fake *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->svc.ops = &fake_ops;
    f->svc.impl = f;
    f->delay_ms = delay_ms > 0 ? delay_ms : 1;
    f->state = DSV4_SVC_READY;
    pthread_mutex_init(&f->mu, NULL);
    if (pthread_create(&f->th, NULL, loop, f)) {
        free(f);
        return NULL;
    }
    return &f->svc;
}

void fake_svc_destroy(struct dsv4_svc *s)
{
    if (!s)
        return;
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    f->quit = true;
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void fake_svc_set_state(struct dsv4_svc *s, enum dsv4_svc_state st, const char *why)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    f->state = st;
    snprintf(f->why, sizeof f->why, "%s", why ? why : "");
    pthread_mutex_unlock(&f->mu);
}

void fake_svc_set_keys(struct dsv4_svc *s, const char *keys)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    snprintf(f->keys, sizeof f->keys, "%s", keys ? keys : "");
    pthread_mutex_unlock(&f->mu);
}

int fake_svc_running(struct dsv4_svc *s)
{
    struct fake *f = F(s);
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < MAXREQ; i++)
        n += f->r[i].used;
    pthread_mutex_unlock(&f->mu);
    return n;
}

uint64_t fake_svc_submitted(struct dsv4_svc *s)
{
    struct fake *f = F(s);
    pthread_mutex_lock(&f->mu);
    uint64_t n = f->submitted;
    pthread_mutex_unlock(&f->mu);
    return n;
}
