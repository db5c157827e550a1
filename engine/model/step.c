/*
 * step.c - the step API (see engine/model/step.h).
 *
 * One step:
 *   1. check every entry (before anything changes);
 *   2. one trunk forward over the entries' tokens (each entry's tokens, then
 *      its drafts), logits for the rows that sample: the entry's last token
 *      and every draft;
 *   3. per sampling entry: the emitted tokens (greedy: accept drafts while
 *      they equal the argmax, then the argmax; sampling: speculative
 *      rejection with one-hot drafts), cut at a stop token, max_emit and the
 *      context end; the trunk state rolls back past the last verified input;
 *   4. the MTP block over every entry's newly known positions in one batch
 *      (a prefill chunk's last position waits in the slot's pending hidden
 *      row until its successor token arrives), then the k drafts of every
 *      continuing entry by greedy recursion, k - 1 more batched MTP calls.
 *
 * MTP positions: the MTP block at position t reads the trunk streams at t and
 * token t + 1 and predicts token t + 2.  After a step its state covers every
 * position whose successor is known (plus the speculative positions of the
 * drafts, rolled back by the next step).
 *
 * Device backends: the step uploads a host model's weights into the backend
 * once (dsv4_model_upload, the copy owned here); argmax runs on the device
 * and only the ids come back; the full logits rows are downloaded once per
 * forward call and only when something reads them on the host (sampling,
 * logprobs, penalties, the logits hook).
 */
#include "engine/model/step.h"

#include "base/dsv4.h"
#include "engine/model/forward.h"
#include "engine/model/model_int.h"
#include "engine/model/state.h"

#include <stdlib.h>
#include <string.h>

struct seq_rec {
    uint64_t id;
    bool used;
    int slot;                     /* -1: no state (dropped, or swapped) */
    struct dsv4_state_swap *swap; /* swapped out */
};

/* Per-entry working data of one step. */
struct work {
    int row0;      /* first trunk row */
    int n_in;      /* trunk tokens: n + n_drafts */
    int out0;      /* first logits row (sampling entries) */
    int64_t last;  /* L: position of the entry's last token */
    int used;      /* emitted tokens kept */
    bool cont;     /* drafts wanted for the next step */
    int mrow0, mn; /* MTP segment rows */
    int64_t ma;    /* MTP segment first position */
    int mout;      /* MTP logits row of the segment's last position, -1 none */
    int nd;        /* drafts to produce */
};

struct dsv4_step {
    const struct dsv4_model *m;
    struct dsv4_model *mdev; /* the device copy of a host model (device backends), owned */
    struct dsv4_backend *be;
    struct dsv4_state *st;
    struct dsv4_fwd *f;
    struct dsv4_step_opts o;
    int V, hc, T;
    int64_t D;
    struct seq_rec *seqs;
    int n_rec;
    struct dsv4_sampler *smp;
    /* per-step host scratch */
    struct dsv4_fwd_seq *fs;
    struct work *w;
    int32_t *tokbuf, *rows, *amax, *hist, *mtok;
    float *p, *lhost;
    int32_t *d_amax;      /* device backends: argmax ids [T] in backend memory */
    int nout, lhost_ok;   /* logits rows of the last forward call; lhost holds them */
    float *mhid;          /* backend [T, hc, D]: MTP input streams */
    struct seq_rec **rec; /* [max_seqs]: the entries' sequences */
    struct dsv4_step_stats stats;
    dsv4_step_logits_fn hook;
    void *hook_ctx;
};

/* ------------------------------------------------------------ lifecycle */

void dsv4_step_free(struct dsv4_step *s)
{
    if (!s)
        return;
    if (s->seqs)
        for (int i = 0; i < s->n_rec; i++)
            dsv4_state_swap_free(s->seqs[i].swap);
    dsv4_fwd_free(s->f);
    dsv4_state_free(s->st);
    dsv4_sampler_free(s->smp);
    if (s->mhid)
        s->be->free(s->be, s->mhid);
    if (s->d_amax)
        s->be->free(s->be, s->d_amax);
    dsv4_model_close(s->mdev);
    void *h[] = {s->seqs, s->fs,   s->w, s->tokbuf, s->rows, s->amax,
                 s->hist, s->mtok, s->p, s->lhost,  s->rec};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(h); i++)
        free(h[i]);
    free(s);
}

/* The padding's slot and the buckets of opts.graphs: b and b * (1 + mtp) tokens for
 * b = 1, 2, 4, ... below max_seqs and b = max_seqs, within the forward's tokens. */
static int set_graphs(struct dsv4_step *s)
{
    int buck[DSV4_FWD_MAX_BUCKETS], n = 0, scratch, rc;
    if ((rc = dsv4_state_seq_new(s->st, &scratch)))
        return rc;
    for (int p2 = 1;; p2 *= 2) {
        int b = DSV4_MIN(p2, s->o.max_seqs), c[2] = {b, b * (1 + s->o.mtp)};
        for (int j = 0; j < 2; j++) {
            int i = n;
            if (c[j] > s->T || n == DSV4_FWD_MAX_BUCKETS)
                continue;
            while (i > 0 && buck[i - 1] > c[j])
                i--;
            if (i > 0 && buck[i - 1] == c[j])
                continue;
            memmove(buck + i + 1, buck + i, sizeof(int) * (size_t)(n - i));
            buck[i] = c[j];
            n++;
        }
        if (b == s->o.max_seqs)
            break;
    }
    return dsv4_fwd_set_graphs(s->f, buck, n, scratch);
}

int dsv4_step_create(const struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_comm *comm,
                     const struct dsv4_step_opts *o, struct dsv4_step **out)
{
    const struct dsv4_config *c = &m->cfg;
    *out = NULL;
    if (o->max_seqs < 1 || o->max_seqs > 65536 || o->max_tokens < 1 || o->max_tokens > (1 << 20) ||
        o->mtp < 0 || o->mtp > DSV4_STEP_MAX_DRAFTS || o->max_ctx < 2)
        return dsv4_error(DSV4_EINVAL, "step: max_seqs %d, max_tokens %d, mtp %d, max_ctx %lld",
                          o->max_seqs, o->max_tokens, o->mtp, (long long)o->max_ctx);
    if (o->max_ctx > c->max_position_embeddings)
        return dsv4_error(DSV4_EINVAL, "step: context %lld beyond max_position_embeddings %lld",
                          (long long)o->max_ctx, (long long)c->max_position_embeddings);
    if (o->mtp > 0 && !m->has_mtp)
        return dsv4_error(DSV4_ENOTSUP, "step: MTP depth %d but the checkpoint has no MTP block",
                          o->mtp);
    struct dsv4_step *s = calloc(1, sizeof *s);
    if (!s)
        return dsv4_error(DSV4_ENOMEM, "step: out of memory");
    s->be = be;
    s->o = *o;
    int rc;
    if (dsv4_model_device(m) != be->device) {
        if ((rc = dsv4_model_upload(m, be, &s->mdev)))
            goto fail;
        m = s->mdev;
    }
    s->m = m;
    s->V = c->vocab_size;
    s->hc = c->hc_mult;
    s->D = c->hidden_size;
    struct dsv4_state_opts so = {.max_seqs = o->max_seqs + (o->graphs ? 1 : 0),
                                 .max_ctx = o->max_ctx,
                                 .max_rollback = o->mtp + 1,
                                 .block_tokens = o->block_tokens,
                                 .blocks = o->state_blocks,
                                 .bytes = o->state_bytes};
    if ((rc = dsv4_state_init(m, be, &so, &s->st)))
        goto fail;
    /* the MTP pass may take one pending row per entry beyond the trunk's tokens */
    s->T = o->max_tokens + o->max_seqs;
    if ((rc = dsv4_fwd_init(m, s->st, be, comm, s->T, s->T, &s->f)))
        goto fail;
    if (o->graphs && (rc = set_graphs(s)))
        goto fail;
    if ((rc = dsv4_sampler_init(s->V, &s->smp)))
        goto fail;
    s->n_rec = 4 * o->max_seqs;
    s->seqs = calloc(s->n_rec, sizeof *s->seqs);
    s->fs = calloc(s->T, sizeof *s->fs);
    s->w = calloc(o->max_seqs, sizeof *s->w);
    s->rec = calloc(o->max_seqs, sizeof *s->rec);
    s->tokbuf = calloc(s->T, sizeof(int32_t));
    s->rows = calloc(s->T, sizeof(int32_t));
    s->amax = calloc(s->T, sizeof(int32_t));
    s->mtok = calloc(s->T, sizeof(int32_t));
    s->hist = calloc((size_t)o->max_ctx, sizeof(int32_t));
    s->p = calloc((size_t)(o->mtp + 1) * s->V, sizeof(float));
    s->mhid = be->alloc(be, sizeof(float) * (size_t)s->T * s->hc * s->D);
    if (be->device != DSV4_DEVICE_HOST) {
        s->lhost = calloc((size_t)s->T * s->V, sizeof(float));
        s->d_amax = be->alloc(be, sizeof(int32_t) * (size_t)s->T);
    }
    if (!s->seqs || !s->fs || !s->w || !s->rec || !s->tokbuf || !s->rows || !s->amax || !s->mtok ||
        !s->hist || !s->p || !s->mhid ||
        (be->device != DSV4_DEVICE_HOST && (!s->lhost || !s->d_amax))) {
        rc = dsv4_error(DSV4_ENOMEM, "step: out of memory for scratch");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    dsv4_step_free(s);
    return rc;
}

int dsv4_step_warm(struct dsv4_step *s)
{
    return s->o.graphs ? dsv4_fwd_warm(s->f) : 0;
}

static struct seq_rec *find(const struct dsv4_step *s, uint64_t id)
{
    for (int i = 0; i < s->n_rec; i++)
        if (s->seqs[i].used && s->seqs[i].id == id)
            return &s->seqs[i];
    return NULL;
}

int dsv4_step_seq_add(struct dsv4_step *s, uint64_t id)
{
    if (find(s, id))
        return dsv4_error(DSV4_EEXIST, "step: sequence %llu already exists",
                          (unsigned long long)id);
    struct seq_rec *r = NULL;
    for (int i = 0; i < s->n_rec && !r; i++)
        if (!s->seqs[i].used)
            r = &s->seqs[i];
    if (!r)
        return dsv4_error(DSV4_ENOSPC, "step: %d sequences known (live, dropped or swapped)",
                          s->n_rec);
    int slot, rc = dsv4_state_seq_new(s->st, &slot);
    if (rc)
        return rc;
    *r = (struct seq_rec){.id = id, .used = true, .slot = slot};
    return 0;
}

void dsv4_step_seq_free(struct dsv4_step *s, uint64_t id)
{
    struct seq_rec *r = find(s, id);
    if (!r)
        return;
    if (r->slot >= 0)
        dsv4_state_seq_free(s->st, r->slot);
    dsv4_state_swap_free(r->swap);
    *r = (struct seq_rec){0};
}

int dsv4_step_seq_drop(struct dsv4_step *s, uint64_t id)
{
    struct seq_rec *r = find(s, id);
    if (!r)
        return dsv4_error(DSV4_EINVAL, "step: unknown sequence %llu", (unsigned long long)id);
    if (r->slot >= 0)
        dsv4_state_seq_free(s->st, r->slot);
    dsv4_state_swap_free(r->swap);
    r->swap = NULL;
    r->slot = -1;
    return 0;
}

int dsv4_step_seq_swap_out(struct dsv4_step *s, uint64_t id, struct dsv4_swap_stats *stats)
{
    struct seq_rec *r = find(s, id);
    if (!r || r->slot < 0)
        return dsv4_error(DSV4_EINVAL, "step: sequence %llu has no state to swap out",
                          (unsigned long long)id);
    int rc = dsv4_state_swap_out(s->st, r->slot, &r->swap, stats);
    if (!rc)
        r->slot = -1;
    return rc;
}

int dsv4_step_seq_swap_in(struct dsv4_step *s, uint64_t id, struct dsv4_swap_stats *stats)
{
    struct seq_rec *r = find(s, id);
    if (!r || !r->swap)
        return dsv4_error(DSV4_EINVAL, "step: sequence %llu is not swapped out",
                          (unsigned long long)id);
    int slot, rc = dsv4_state_swap_in(s->st, r->swap, &slot, stats);
    if (rc)
        return rc;
    dsv4_state_swap_free(r->swap);
    r->swap = NULL;
    r->slot = slot;
    return 0;
}

int64_t dsv4_step_seq_len(const struct dsv4_step *s, uint64_t id)
{
    const struct seq_rec *r = find(s, id);
    if (!r)
        return -1;
    if (r->swap)
        return dsv4_state_swap_len(r->swap);
    return r->slot >= 0 ? dsv4_state_len(s->st, r->slot) : 0;
}

/* Gives a dropped sequence a fresh slot when it comes back (re-prefill from 0). */
static int revive(struct dsv4_step *s, struct seq_rec *r)
{
    if (r->slot >= 0)
        return 0;
    if (r->swap)
        return dsv4_error(DSV4_EINVAL, "step: sequence %llu is swapped out (swap it in first)",
                          (unsigned long long)r->id);
    return dsv4_state_seq_new(s->st, &r->slot);
}

void dsv4_step_get_stats(const struct dsv4_step *s, struct dsv4_step_stats *st)
{
    const struct dsv4_state_sizes *z = dsv4_state_layout_sizes(s->st);
    *st = s->stats;
    st->total_blocks = dsv4_state_total_blocks(s->st);
    st->free_blocks = dsv4_state_free_blocks(s->st);
    st->block_tokens = z->block_tokens;
    st->max_seqs = s->o.max_seqs;
    st->free_seqs = dsv4_state_free_slots(s->st);
    st->state_bytes = dsv4_state_bytes(s->st);
    st->bytes_per_token = z->bytes_per_token;
    dsv4_fwd_graph_stats(s->f, &st->graphs);
}

int64_t dsv4_step_blocks_for(const struct dsv4_step *s, int64_t len)
{
    return dsv4_state_blocks_for(s->st, len);
}

struct dsv4_fwd *dsv4_step_fwd(struct dsv4_step *s)
{
    return s->f;
}

struct dsv4_state *dsv4_step_state(struct dsv4_step *s)
{
    return s->st;
}

void dsv4_step_set_logits_hook(struct dsv4_step *s, dsv4_step_logits_fn fn, void *ctx)
{
    s->hook = fn;
    s->hook_ctx = ctx;
}

/* ------------------------------------------------------------ one step */

static bool greedy(const struct dsv4_sample_params *p)
{
    return p->temperature < DSV4_SAMPLE_GREEDY_EPS || p->top_k == 1;
}

static bool penalised(const struct dsv4_sample_params *p)
{
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

static int check_entry(struct dsv4_step *s, const struct dsv4_step_entry *e, int i,
                       struct seq_rec **rec)
{
    struct seq_rec *r = find(s, e->id);
    if (!r)
        return dsv4_error(DSV4_EINVAL, "step: entry %d: unknown sequence %llu", i,
                          (unsigned long long)e->id);
    if (r->swap)
        return dsv4_error(DSV4_EINVAL, "step: entry %d: sequence %llu is swapped out", i,
                          (unsigned long long)e->id);
    int64_t len = r->slot >= 0 ? dsv4_state_len(s->st, r->slot) : 0;
    if (e->n < 1 || !e->tokens)
        return dsv4_error(DSV4_EINVAL, "step: entry %d: no tokens", i);
    if (e->start < 0 || e->start > len)
        return dsv4_error(DSV4_EINVAL, "step: entry %d: starts at %lld, sequence %llu has %lld", i,
                          (long long)e->start, (unsigned long long)e->id, (long long)len);
    if (e->start < len && e->start > 0 && e->start < len - (s->o.mtp + 1))
        return dsv4_error(DSV4_EINVAL,
                          "step: entry %d: starts at %lld, more than %d positions behind %lld "
                          "(drop the sequence and re-prefill instead)",
                          i, (long long)e->start, s->o.mtp + 1, (long long)len);
    if (e->n_drafts < 0 || e->n_drafts > s->o.mtp || (e->n_drafts && (!e->drafts || !e->sample)))
        return dsv4_error(DSV4_EINVAL, "step: entry %d: %d drafts (MTP depth %d)", i, e->n_drafts,
                          s->o.mtp);
    if (e->start + e->n + e->n_drafts > s->o.max_ctx)
        return dsv4_error(DSV4_ERANGE,
                          "step: entry %d: positions up to %lld beyond the context %lld", i,
                          (long long)(e->start + e->n + e->n_drafts - 1), (long long)s->o.max_ctx);
    for (int j = 0; j < e->n + e->n_drafts; j++) {
        int32_t t = j < e->n ? e->tokens[j] : e->drafts[j - e->n];
        if (t < 0 || t >= s->V)
            return dsv4_error(DSV4_EINVAL, "step: entry %d: token %d outside vocab %d", i, t, s->V);
    }
    if (e->sample) {
        if (e->max_emit < 1)
            return dsv4_error(DSV4_EINVAL, "step: entry %d: max_emit %d < 1", i, e->max_emit);
        if (e->n_prompt < 0 || e->n_prompt > e->start + e->n)
            return dsv4_error(DSV4_EINVAL, "step: entry %d: prompt length %d", i, e->n_prompt);
        if (e->n_stop < 0 || (e->n_stop && !e->stop_ids))
            return dsv4_error(DSV4_EINVAL, "step: entry %d: stop ids", i);
        int rc = dsv4_sample_params_check(&e->params);
        if (rc)
            return dsv4_error_ctx(rc, "step: entry %d", i);
    }
    for (int j = 0; j < i; j++)
        if (rec[j] == r)
            return dsv4_error(DSV4_EINVAL, "step: sequence %llu twice in one step",
                              (unsigned long long)e->id);
    rec[i] = r;
    return 0;
}

/* A forward call made nout logits rows (on the device for device backends). */
static void fwd_done(struct dsv4_step *s, int nout)
{
    s->nout = nout;
    s->lhost_ok = 0;
}

/* The logits of the last forward call on the host, downloaded at most once per call. */
static const float *host_logits(struct dsv4_step *s)
{
    const float *lg = dsv4_fwd_logits(s->f);
    if (!s->lhost)
        return lg;
    if (!s->lhost_ok && s->nout) {
        if (s->be->download(s->be, s->lhost, lg, sizeof(float) * (size_t)s->nout * s->V))
            dsv4_log(DSV4_LOG_ERROR, "step: logits download: %s", dsv4_errmsg());
        s->lhost_ok = 1;
    }
    return s->lhost;
}

/* amax[r] = argmax of logits row r of the last forward call (on the backend). */
static int argmax_rows(struct dsv4_step *s)
{
    struct dsv4_backend *be = s->be;
    const float *lg = dsv4_fwd_logits(s->f);
    if (!s->nout)
        return 0;
    if (!s->d_amax) {
        be->argmax(be, DSV4_F2(lg, s->nout, s->V), s->amax);
        return 0;
    }
    be->argmax(be, DSV4_F2(lg, s->nout, s->V), s->d_amax);
    return be->download(be, s->amax, s->d_amax, sizeof(int32_t) * (size_t)s->nout);
}

static const float *lrow(struct dsv4_step *s, int row)
{
    return host_logits(s) + (int64_t)row * s->V;
}

/* Sampling history for verify row i: prompt and output so far (tokens up to the entry's
 * last position L) and the drafts before row i as pending. */
static struct dsv4_sample_history history(struct dsv4_step *s, const struct dsv4_step_entry *e,
                                          int slot, int64_t L, int i)
{
    struct dsv4_sample_history h = {0};
    if (!penalised(&e->params))
        return h;
    /* positions 0..L: the history the state recorded; e's own tokens are committed */
    dsv4_state_get_tokens(s->st, slot, 0, s->hist, L + 1);
    h.prompt = s->hist;
    h.n_prompt = (size_t)e->n_prompt;
    h.output = s->hist + e->n_prompt;
    h.n_output = (size_t)(L + 1 - e->n_prompt);
    h.pending = e->drafts;
    h.n_pending = (size_t)i;
    return h;
}

static bool is_stop(const struct dsv4_step_entry *e, int32_t t)
{
    for (int i = 0; i < e->n_stop; i++)
        if (e->stop_ids[i] == t)
            return true;
    return false;
}

/* Step 3 for one entry: emitted tokens and logprobs into res. */
static int emit(struct dsv4_step *s, const struct dsv4_step_entry *e, int slot, struct work *w,
                struct dsv4_step_result *res)
{
    const struct dsv4_sample_params *pp = &e->params;
    int nd = e->n_drafts, nout = 0, rc;
    int32_t tok[1 + DSV4_STEP_MAX_DRAFTS];
    uint64_t j0 = (uint64_t)(w->last + 1 - e->n_prompt); /* output index of the first */
    if (greedy(pp) && !penalised(pp)) {
        for (int i = 0; i <= nd; i++) {
            tok[nout++] = s->amax[w->out0 + i];
            if (i == nd || tok[i] != e->drafts[i])
                break;
        }
    } else if (greedy(pp) || nd == 0) {
        for (int i = 0; i <= nd; i++) {
            struct dsv4_sample_result sr;
            struct dsv4_sample_history h = history(s, e, slot, w->last, i);
            struct dsv4_sample_params q = *pp;
            q.logprobs = false; /* reported below, for the tokens kept */
            q.n_top_logprobs = 0;
            if ((rc = dsv4_sample(s->smp, &q, lrow(s, w->out0 + i), &h, j0 + i,
                                  DSV4_SAMPLE_STREAM_TOKEN, &sr)))
                return rc;
            tok[nout++] = sr.token;
            if (i == nd || sr.token != e->drafts[i])
                break;
        }
    } else {
        for (int i = 0; i <= nd; i++) {
            struct dsv4_sample_history h = history(s, e, slot, w->last, i);
            if ((rc = dsv4_sample_probs(s->smp, pp, lrow(s, w->out0 + i), &h,
                                        s->p + (int64_t)i * s->V)))
                return rc;
        }
        if ((rc = dsv4_sample_speculative(s->smp, pp, nd, s->p, e->drafts, NULL, j0, tok, NULL,
                                          &nout)))
            return rc;
    }
    res->drafted = nd;
    res->accepted = nout - 1;
    /* cut at a stop token, max_emit and the context end (the next input position) */
    int used = 0;
    res->finish = DSV4_FINISH_NONE;
    while (used < nout) {
        int32_t t = tok[used++];
        res->tokens[used - 1] = t;
        if (is_stop(e, t)) {
            res->finish = DSV4_FINISH_STOP;
            break;
        }
        if (used >= e->max_emit || w->last + used >= s->o.max_ctx - 1) {
            res->finish = DSV4_FINISH_LENGTH;
            break;
        }
    }
    res->n_tokens = used;
    w->used = used;
    if (pp->logprobs) {
        res->n_top = pp->n_top_logprobs;
        for (int i = 0; i < used; i++) {
            struct dsv4_sample_result sr;
            struct dsv4_sample_history h = history(s, e, slot, w->last, i);
            if ((rc = dsv4_sample_logprobs(s->smp, pp, lrow(s, w->out0 + i), &h, res->tokens[i],
                                           &sr)))
                return rc;
            res->logprobs[i] = sr.logprob;
            res->n_top = DSV4_MIN(res->n_top, sr.n_top);
            memcpy(res->top_ids[i], sr.top_ids, sizeof(int32_t) * sr.n_top);
            memcpy(res->top_logprobs[i], sr.top_logprobs, sizeof(float) * sr.n_top);
        }
    }
    s->stats.drafted += nd;
    s->stats.accepted += nout - 1;
    for (int i = 0; i < nd; i++) {
        s->stats.drafted_at[i]++;
        s->stats.accepted_at[i] += i < nout - 1;
    }
    return 0;
}

/* Step 4: MTP over the newly known positions of every entry, then the drafts. */
static int mtp_pass(struct dsv4_step *s, const struct dsv4_step_entry *e, int n,
                    struct seq_rec **rec, struct dsv4_step_result *out)
{
    struct dsv4_backend *be = s->be;
    size_t row = sizeof(float) * s->hc * s->D;
    const float *th = dsv4_fwd_hidden(s->f);
    int nseg = 0, T = 0, nout = 0, rc;
    for (int i = 0; i < n; i++) {
        struct work *w = &s->w[i];
        int slot = rec[i]->slot;
        int64_t mlen = dsv4_state_mtp_len(s->st, slot);
        int64_t a = DSV4_MIN(mlen, e[i].start);
        /* the last position whose successor is now known + 1 */
        int64_t end = e[i].sample ? w->last + w->used : w->last;
        w->mn = 0;
        w->mout = -1;
        if (a < e[i].start - 1 || (a == e[i].start - 1 && dsv4_state_hidden_pos(s->st, slot) != a))
            return dsv4_error(DSV4_EINTERNAL,
                              "step: sequence %llu: MTP state at %lld behind the chunk at %lld",
                              (unsigned long long)e[i].id, (long long)mlen, (long long)e[i].start);
        if (end > a) {
            w->ma = a;
            w->mrow0 = T;
            w->mn = (int)(end - a);
            /* hidden rows: the pending row for start - 1, then the trunk's rows */
            if (a == e[i].start - 1) {
                be->copy2d(be, s->mhid + (int64_t)T * s->hc * s->D, 0,
                           dsv4_state_hidden(s->st, slot), 0, row, 1);
                s->mtok[T++] = e[i].tokens[0];
            }
            int64_t from = DSV4_MAX(a, e[i].start);
            for (int64_t p = from; p < end; p++) {
                int64_t r = w->row0 + (p - e[i].start);
                be->copy2d(be, s->mhid + (int64_t)T * s->hc * s->D, 0, th + r * s->hc * s->D, 0,
                           row, 1);
                int64_t q = p + 1 - e[i].start; /* successor's index in the entry's inputs */
                s->mtok[T++] = q < e[i].n ? e[i].tokens[q] : out[i].tokens[q - e[i].n];
            }
            s->fs[nseg++] = (struct dsv4_fwd_seq){slot, a, w->mn, s->mtok + w->mrow0};
            if (s->hook) {
                for (int j = 0; j < w->mn; j++)
                    s->rows[nout++] = w->mrow0 + j;
                w->mout = nout - 1;
            } else if (w->cont) {
                w->mout = nout;
                s->rows[nout++] = T - 1;
            }
        }
        /* a prefill chunk's last position waits for its successor */
        if (!e[i].sample) {
            be->copy2d(be, dsv4_state_hidden(s->st, slot), 0,
                       th + (int64_t)(w->row0 + e[i].n - 1) * s->hc * s->D, 0, row, 1);
            dsv4_state_set_hidden_pos(s->st, slot, w->last);
        }
    }
    if (nseg == 0)
        return 0;
    if ((rc = dsv4_fwd_mtp(s->f, s->fs, nseg, s->mhid, s->rows, nout)))
        return rc;
    fwd_done(s, nout);
    if (s->hook) {
        const float *lg = host_logits(s);
        for (int i = 0; i < n; i++)
            if (s->w[i].mn)
                s->hook(s->hook_ctx, DSV4_STEP_ROWS_MTP, i, s->w[i].ma,
                        lg + (int64_t)(s->w[i].mout - s->w[i].mn + 1) * s->V, s->w[i].mn, s->V);
    }
    /* drafts: greedy recursion over the continuing entries */
    int ncont = 0;
    for (int i = 0; i < n; i++)
        ncont += s->w[i].cont && s->w[i].mout >= 0;
    if (!ncont)
        return 0;
    for (int d = 0;; d++) {
        if ((rc = argmax_rows(s)))
            return rc;
        /* next MTP call: one token per entry that wants more drafts */
        int nb = 0, nr = 0;
        const float *mh = dsv4_fwd_mtp_hidden(s->f);
        for (int i = 0; i < n; i++) {
            struct work *w = &s->w[i];
            if (!w->cont || w->mout < 0 || d >= w->nd)
                continue;
            int32_t t = s->amax[w->mout];
            out[i].drafts[d] = t;
            out[i].n_drafts = d + 1;
            if (s->hook)
                s->hook(s->hook_ctx, DSV4_STEP_ROWS_DRAFT, i, w->last + w->used + d + 1,
                        host_logits(s) + (int64_t)w->mout * s->V, 1, s->V);
            if (d + 1 >= w->nd) {
                w->mout = -1;
                continue;
            }
            /* MTP at position (last emitted) + d with the draft just made */
            int64_t src = (d == 0 ? w->mrow0 + w->mn - 1 : w->mrow0);
            be->copy2d(be, s->mhid + (int64_t)nb * s->hc * s->D, 0, mh + src * s->hc * s->D, 0, row,
                       1);
            s->mtok[nb] = t;
            int64_t pos = w->last + w->used + d;
            s->fs[nb] = (struct dsv4_fwd_seq){rec[i]->slot, pos, 1, &s->mtok[nb]};
            w->mrow0 = nb; /* this entry's row in the next call's output streams */
            w->mout = nr;
            s->rows[nr++] = nb;
            nb++;
        }
        if (nb == 0)
            break;
        if ((rc = dsv4_fwd_mtp(s->f, s->fs, nb, s->mhid, s->rows, nr)))
            return rc;
        fwd_done(s, nr);
        nout = nr;
    }
    return 0;
}

int dsv4_step_run(struct dsv4_step *s, const struct dsv4_step_entry *e, int n,
                  struct dsv4_step_result *out)
{
    struct seq_rec **rr = s->rec;
    int rc, T = 0, nout = 0;
    if (n < 1 || n > s->o.max_seqs || !e || !out)
        return dsv4_error(DSV4_EINVAL, "step: %d entries (1..%d)", n, s->o.max_seqs);
    for (int i = 0; i < n; i++) {
        if ((rc = check_entry(s, &e[i], i, rr)))
            return rc;
        T += e[i].n + e[i].n_drafts;
    }
    if (T > s->o.max_tokens)
        return dsv4_error(DSV4_EINVAL, "step: %d tokens, at most %d per step", T, s->o.max_tokens);
    for (int i = 0; i < n; i++)
        if ((rc = revive(s, rr[i])))
            return rc;
    /* 2. the trunk forward: each entry's tokens then its drafts */
    T = 0;
    for (int i = 0; i < n; i++) {
        struct work *w = &s->w[i];
        memset(w, 0, sizeof *w);
        w->row0 = T;
        w->n_in = e[i].n + e[i].n_drafts;
        w->last = e[i].start + e[i].n - 1;
        memcpy(s->tokbuf + T, e[i].tokens, sizeof(int32_t) * e[i].n);
        if (e[i].n_drafts)
            memcpy(s->tokbuf + T + e[i].n, e[i].drafts, sizeof(int32_t) * e[i].n_drafts);
        s->fs[i] = (struct dsv4_fwd_seq){rr[i]->slot, e[i].start, w->n_in, s->tokbuf + T};
        if (s->hook) {
            w->out0 = nout + e[i].n - 1;
            for (int j = 0; j < w->n_in; j++)
                s->rows[nout++] = T + j;
        } else if (e[i].sample) {
            w->out0 = nout;
            for (int j = 0; j <= e[i].n_drafts; j++)
                s->rows[nout++] = T + e[i].n - 1 + j;
        }
        T += w->n_in;
    }
    if ((rc = dsv4_fwd_trunk(s->f, s->fs, n, s->rows, nout, s->o.mtp > 0)))
        return rc;
    fwd_done(s, nout);
    s->stats.steps++;
    s->stats.tokens_in += (uint64_t)T;
    if ((rc = argmax_rows(s)))
        return rc;
    if (s->hook)
        for (int i = 0; i < n; i++)
            s->hook(s->hook_ctx, DSV4_STEP_ROWS_TRUNK, i, e[i].start,
                    host_logits(s) + (int64_t)s->w[i].row0 * s->V, s->w[i].n_in, s->V);
    /* 3. emission, rollback of rejected positions */
    for (int i = 0; i < n; i++) {
        struct work *w = &s->w[i];
        struct dsv4_step_result *r = &out[i];
        memset(r, 0, sizeof *r);
        r->id = e[i].id;
        if (!e[i].sample)
            continue;
        if ((rc = emit(s, &e[i], rr[i]->slot, w, r)))
            return rc;
        s->stats.tokens_out += (uint64_t)w->used;
        int64_t keep = w->last + w->used; /* inputs verified: L and the accepted drafts */
        if (keep < e[i].start + w->n_in &&
            (rc = dsv4_state_truncate(s->st, rr[i]->slot, false, keep)))
            return rc;
        int64_t room = s->o.max_ctx - 1 - keep; /* positions after the next input */
        w->nd = (int)DSV4_MIN((int64_t)s->o.mtp, room);
        w->cont = r->finish == DSV4_FINISH_NONE && w->nd > 0;
    }
    /* 4. MTP and drafts */
    if (s->o.mtp > 0)
        return mtp_pass(s, e, n, rr, out);
    return 0;
}
