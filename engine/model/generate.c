/*
 * generate.c - the generation loop (see engine/model/generate.h).
 *
 * Positions: the prompt occupies 0..P-1; the n-th emitted token (0-based)
 * sits at P + n.  The trunk state always covers the positions before the
 * last emitted token, which is fed at the next step (alone, or followed by
 * k drafts for verification).  The MTP block consumes (trunk streams at t,
 * token at t+1) for every t whose successor is known, and its state is
 * rolled back and redone from the trunk's streams after each verification,
 * so drafts never depend on earlier (possibly rejected) drafts' state.
 */
#include "engine/model/generate.h"

#include "engine/model/comm.h"
#include "base/dsv4.h"
#include "engine/model/forward.h"
#include "engine/model/model.h"
#include "engine/model/state.h"

#include <stdlib.h>
#include <string.h>

struct gen_job {
    struct dsv4_ckpt *ck;
    struct dsv4_config cfg;
    const int32_t *prompt;
    int np;
    const struct dsv4_gen_opts *o;
    struct dsv4_gen_result *res;
    double t0;
};

struct rank_ctx {
    struct gen_job *job;
    int rank, N;
    struct dsv4_model *m;
    struct dsv4_pool *pool;
    struct dsv4_state *st;
    struct dsv4_fwd *f;
    struct dsv4_sampler *smp;
    int seq, V, hc, k;
    int64_t D;
    float *logits, *hidden, *mhid, *mlog, *p, *q, *mtplog;
    int32_t *out;
    float *lp; /* logprob of each emitted token */
    int n;
    const char *layers_dir;
    int64_t chunk_start; /* first position of the prefill chunk in flight (layer hook) */
    bool drafted;        /* the first drafting step is done (--dump-draft-logits) */
    int hook_rc;
};

void dsv4_gen_opts_default(struct dsv4_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_tokens = 32;
    o->threads = 1;
    o->ranks = 1;
    o->chunk = 256;
    o->stop_at_eos = true;
    o->sample = dsv4_sample_params_default();
    o->sample.temperature = 0.0f;
}

void dsv4_gen_result_free(struct dsv4_gen_result *r)
{
    free(r->tokens);
    free(r->logprobs);
    r->tokens = NULL;
    r->logprobs = NULL;
}

static void layer_hook(void *ctx, int layer, float *X, int T, int hc, int64_t D)
{
    struct rank_ctx *r = ctx;
    const struct dsv4_gen_opts *o = r->job->o;
    char path[4096];
    size_t n = (size_t)T * hc * D;
    if (r->layers_dir && r->rank == 0) {
        snprintf(path, sizeof path, "%s/layer_%02d.f32", r->layers_dir, layer);
        FILE *fp = fopen(path, "ab");
        if (!fp || fwrite(X, sizeof(float), n, fp) != n)
            r->hook_rc = dsv4_error(DSV4_EIO, "generate: cannot write %s", path);
        if (fp)
            fclose(fp);
    }
    if (o->force_layers) {
        snprintf(path, sizeof path, "%s/layer_%02d.f32", o->force_layers, layer);
        FILE *fp = fopen(path, "rb");
        if (!fp || fseek(fp, (long)(r->chunk_start * hc * D * sizeof(float)), SEEK_SET) ||
            fread(X, sizeof(float), n, fp) != n)
            r->hook_rc = dsv4_error(DSV4_EIO, "generate: cannot read %zu floats of %s", n, path);
        if (fp)
            fclose(fp);
    }
}

static int dump_rows(struct rank_ctx *r, const float *rows, int n)
{
    FILE *fp = r->job->o->dump_logits;
    if (!fp || r->rank != 0 || n <= 0)
        return 0;
    if (fwrite(rows, sizeof(float) * r->V, n, fp) != (size_t)n)
        return dsv4_error(DSV4_EIO, "generate: writing logits failed");
    return 0;
}

static struct dsv4_sample_history hist(struct rank_ctx *r, const int32_t *pending, int np)
{
    struct dsv4_sample_history h = {r->job->prompt, (size_t)r->job->np, r->out, (size_t)r->n,
                                    pending,        (size_t)np};
    return h;
}

static bool greedy(const struct dsv4_sample_params *s)
{
    return s->temperature < DSV4_SAMPLE_GREEDY_EPS || s->top_k == 1;
}

/* Emits a token on rank 0's record; returns true when generation must stop. */
static bool emit(struct rank_ctx *r, int32_t tok, float logprob)
{
    const struct dsv4_gen_opts *o = r->job->o;
    r->lp[r->n] = logprob;
    r->out[r->n++] = tok;
    if (r->rank == 0 && o->on_token)
        o->on_token(o->ctx, tok);
    return r->n >= o->max_tokens || (o->stop_at_eos && tok == r->job->cfg.eos_token_id);
}

/*
 * MTP: consume positions start..start+n-1 (tokens[i] is the token at start+i+1, hidden rows
 * from `hid`), then draft k tokens recursively; drafts[k], q rows when sampling.
 */
static int draft(struct rank_ctx *r, int64_t start, int n, const int32_t *tokens, const float *hid,
                 int32_t *drafts)
{
    const struct dsv4_gen_opts *o = r->job->o;
    int rc;
    struct dsv4_fwd_seq s = {r->seq, start, n, tokens};
    if ((rc = dsv4_fwd_mtp(r->f, &s, 1, hid, r->mlog, false, r->mhid)))
        return rc;
    const float *last = r->mhid + (int64_t)(n - 1) * r->hc * r->D;
    FILE *dl = !r->drafted && r->rank == 0 ? o->dump_draft_logits : NULL;
    r->drafted = true;
    for (int i = 0; i < r->k; i++) {
        if (dl && fwrite(r->mlog, sizeof(float), (size_t)r->V, dl) != (size_t)r->V)
            return dsv4_error(DSV4_EIO, "generate: writing draft logits failed");
        struct dsv4_sample_result sr;
        struct dsv4_sample_history h = hist(r, drafts, i);
        if ((rc = dsv4_sample(r->smp, &o->sample, r->mlog, &h, (uint64_t)(r->n + i),
                              DSV4_SAMPLE_STREAM_DRAFT, &sr)))
            return rc;
        drafts[i] = sr.token;
        if (!greedy(&o->sample) &&
            (rc = dsv4_sample_probs(r->smp, &o->sample, r->mlog, &h, r->q + (int64_t)i * r->V)))
            return rc;
        if (i + 1 == r->k)
            break;
        /* next step: the MTP block on its own output streams and the draft just made */
        memmove(r->hidden, last, sizeof(float) * r->hc * r->D);
        struct dsv4_fwd_seq s2 = {r->seq, start + n + i, 1, &drafts[i]};
        if ((rc = dsv4_fwd_mtp(r->f, &s2, 1, r->hidden, r->mlog, false, r->mhid)))
            return rc;
        last = r->mhid;
    }
    return 0;
}

static int run_rank(struct rank_ctx *r)
{
    struct gen_job *job = r->job;
    const struct dsv4_gen_opts *o = job->o;
    struct dsv4_gen_result stats = {0}, *res = &stats;
    const int32_t *prompt = job->prompt;
    int P = job->np, rc, chunk = o->chunk, k = r->k;
    bool dump = o->dump_logits != NULL;
    int32_t drafts[DSV4_GEN_MAX_MTP + 1], vt[DSV4_GEN_MAX_MTP + 1], emitted[DSV4_GEN_MAX_MTP + 1];
    float elp[DSV4_GEN_MAX_MTP + 1];
    double t1 = dsv4_now(), t2 = 0;
    /* prefill in chunks; the MTP block follows each chunk over the positions whose
     * successor token is known */
    if ((r->rank == 0 && r->layers_dir) || o->force_layers)
        dsv4_fwd_set_layer_hook(r->f, layer_hook, r);
    for (int s0 = 0; s0 < P; s0 += chunk) {
        int n = DSV4_MIN(chunk, P - s0);
        struct dsv4_fwd_seq s = {r->seq, s0, n, prompt + s0};
        r->chunk_start = s0;
        if ((rc = dsv4_fwd_trunk(r->f, &s, 1, r->logits, dump, k ? r->hidden : NULL)))
            return rc;
        if (r->hook_rc)
            return r->hook_rc;
        if ((rc = dump_rows(r, r->logits, dump ? n : 0)))
            return rc;
        if (k) {
            int nm = DSV4_MIN(n, P - 1 - s0);
            if (nm > 0) {
                struct dsv4_fwd_seq sm = {r->seq, s0, nm, prompt + s0 + 1};
                bool dm = o->dump_mtp_logits && r->rank == 0;
                if ((rc = dsv4_fwd_mtp(r->f, &sm, 1, r->hidden, dm ? r->mtplog : NULL, true, NULL)))
                    return rc;
                if (dm &&
                    fwrite(r->mtplog, sizeof(float) * r->V, nm, o->dump_mtp_logits) != (size_t)nm)
                    return dsv4_error(DSV4_EIO, "generate: writing MTP logits failed");
            }
            /* keep the streams of the last prompt position for the first draft */
            memmove(r->hidden, r->hidden + (int64_t)(n - 1) * r->hc * r->D,
                    sizeof(float) * r->hc * r->D);
        }
    }
    dsv4_fwd_set_layer_hook(r->f, NULL, NULL);
    const float *lrow = dump ? r->logits + (int64_t)((P - 1) % chunk) * r->V : r->logits;
    if (o->max_tokens <= 0)
        goto done;
    struct dsv4_sample_result sr;
    struct dsv4_sample_history h = hist(r, NULL, 0);
    if ((rc = dsv4_sample(r->smp, &o->sample, lrow, &h, 0, DSV4_SAMPLE_STREAM_TOKEN, &sr)))
        return rc;
    t2 = dsv4_now();
    bool stop = emit(r, sr.token, sr.logprob);
    if (k && !stop) {
        if ((rc = draft(r, P - 1, 1, &r->out[0], r->hidden, drafts)))
            return rc;
    }
    while (!stop) {
        int64_t pos = P + r->n - 1; /* position of the last emitted token */
        res->steps++;
        if (!k) {
            struct dsv4_fwd_seq s = {r->seq, pos, 1, &r->out[r->n - 1]};
            if ((rc = dsv4_fwd_trunk(r->f, &s, 1, r->logits, false, NULL)))
                return rc;
            if ((rc = dump_rows(r, r->logits, 1)))
                return rc;
            h = hist(r, NULL, 0);
            if ((rc = dsv4_sample(r->smp, &o->sample, r->logits, &h, (uint64_t)r->n,
                                  DSV4_SAMPLE_STREAM_TOKEN, &sr)))
                return rc;
            stop = emit(r, sr.token, sr.logprob);
            continue;
        }
        /* verify [last, d_0..d_{k-1}] at pos..pos+k */
        vt[0] = r->out[r->n - 1];
        memcpy(vt + 1, drafts, sizeof(int32_t) * k);
        struct dsv4_fwd_seq s = {r->seq, pos, k + 1, vt};
        if ((rc = dsv4_fwd_trunk(r->f, &s, 1, r->logits, true, r->hidden)))
            return rc;
        int nout = 0;
        if (greedy(&o->sample)) {
            for (int i = 0; i <= k; i++) {
                h = hist(r, drafts, i);
                if ((rc = dsv4_sample(r->smp, &o->sample, r->logits + (int64_t)i * r->V, &h,
                                      (uint64_t)(r->n + i), DSV4_SAMPLE_STREAM_TOKEN, &sr)))
                    return rc;
                elp[nout] = sr.logprob;
                emitted[nout++] = sr.token;
                if (i == k || sr.token != drafts[i])
                    break;
            }
        } else {
            for (int i = 0; i <= k; i++) {
                h = hist(r, drafts, i);
                if ((rc = dsv4_sample_probs(r->smp, &o->sample, r->logits + (int64_t)i * r->V, &h,
                                            r->p + (int64_t)i * r->V)))
                    return rc;
            }
            if ((rc = dsv4_sample_speculative(r->smp, &o->sample, k, r->p, drafts, r->q,
                                              (uint64_t)r->n, emitted, elp, &nout)))
                return rc;
        }
        int acc = nout - 1;
        res->drafted += k;
        res->accepted += acc;
        for (int i = 0; i < k && i < DSV4_GEN_MAX_MTP; i++) {
            res->drafted_at[i]++;
            res->accepted_at[i] += i < acc;
        }
        /* emit (possibly fewer when max_tokens / EOS cut the step short) */
        int used = 0;
        while (used < nout && !stop) {
            stop = emit(r, emitted[used], elp[used]);
            used++;
        }
        if ((rc = dump_rows(r, r->logits, used)))
            return rc;
        /* positions pos..pos+used-1 hold accepted tokens; the rest rolls back */
        if ((rc = dsv4_fwd_rollback(r->f, r->seq, pos + used)))
            return rc;
        if (stop)
            break;
        if ((rc = draft(r, pos, used, emitted, r->hidden, drafts)))
            return rc;
    }
    res->t_decode = dsv4_now() - t2;
    if (dump && r->n > 0) {
        /* the row of the last generated token (its own prediction), for the P + G rows */
        int64_t pos = P + r->n - 1;
        if ((rc = dsv4_fwd_rollback(r->f, r->seq, pos)))
            return rc;
        struct dsv4_fwd_seq s = {r->seq, pos, 1, &r->out[r->n - 1]};
        if ((rc = dsv4_fwd_trunk(r->f, &s, 1, r->logits, false, NULL)))
            return rc;
        if ((rc = dump_rows(r, r->logits, 1)))
            return rc;
    }
done:
    res->t_prefill = (t2 > 0 ? t2 : dsv4_now()) - t1;
    if (r->rank == 0) {
        struct dsv4_gen_result *out = job->res;
        out->t_prefill = res->t_prefill;
        out->t_decode = res->t_decode;
        out->steps = res->steps;
        out->drafted = res->drafted;
        out->accepted = res->accepted;
        memcpy(out->drafted_at, res->drafted_at, sizeof res->drafted_at);
        memcpy(out->accepted_at, res->accepted_at, sizeof res->accepted_at);
        res = out;
        res->tokens = malloc(sizeof(int32_t) * (r->n ? r->n : 1));
        res->logprobs = malloc(sizeof(float) * (r->n ? r->n : 1));
        if (!res->tokens || !res->logprobs)
            return dsv4_error(DSV4_ENOMEM, "generate: out of memory");
        memcpy(res->tokens, r->out, sizeof(int32_t) * r->n);
        memcpy(res->logprobs, r->lp, sizeof(float) * r->n);
        res->n = r->n;
    }
    return 0;
}

static int rank_fn(struct dsv4_comm *comm, void *arg)
{
    struct gen_job *job = arg;
    const struct dsv4_gen_opts *o = job->o;
    struct rank_ctx r = {0};
    int rc;
    r.job = job;
    r.rank = comm ? dsv4_comm_rank(comm) : 0;
    r.N = comm ? dsv4_comm_size(comm) : 1;
    r.k = o->mtp;
    r.layers_dir = o->dump_layers;
    if ((rc = dsv4_model_bind(job->ck, &job->cfg, r.rank, r.N, &r.m)))
        goto out;
    if (r.k && !r.m->has_mtp) {
        rc = dsv4_error(DSV4_ENOTSUP, "generate: --mtp %d but the checkpoint has no MTP block",
                        r.k);
        goto out;
    }
    if ((rc = dsv4_pool_init(DSV4_MAX(1, o->threads / r.N), &r.pool)))
        goto out;
    if ((rc = dsv4_state_init(r.m, 1, r.k + 2, &r.st)))
        goto out;
    /* tokens per forward call: a prefill chunk (never more than the prompt) or 1 + k */
    int T = DSV4_MAX(DSV4_MIN(o->chunk, job->np), r.k + 1);
    int64_t ctx = (int64_t)job->np + o->max_tokens + r.k + 2;
    if ((rc = dsv4_fwd_init(r.m, r.st, r.pool, comm, T, ctx, &r.f)))
        goto out;
    r.V = job->cfg.vocab_size;
    r.hc = job->cfg.hc_mult;
    r.D = job->cfg.hidden_size;
    if ((rc = dsv4_sampler_init(r.V, &r.smp)))
        goto out;
    if ((rc = dsv4_state_seq_new(r.st, &r.seq)))
        goto out;
    /* logits rows: every prompt position only when dumping them, else one per chunk and
     * k + 1 per verification */
    r.logits = malloc(sizeof(float) * (o->dump_logits ? T : r.k + 1) * r.V);
    r.hidden = malloc(sizeof(float) * T * r.hc * r.D);
    r.mhid = malloc(sizeof(float) * T * r.hc * r.D);
    r.mlog = malloc(sizeof(float) * r.V);
    r.p = malloc(sizeof(float) * (r.k + 1) * r.V);
    r.q = malloc(sizeof(float) * (r.k + 1) * r.V);
    r.out = malloc(sizeof(int32_t) * (o->max_tokens + 1));
    r.lp = malloc(sizeof(float) * (o->max_tokens + 1));
    if (o->dump_mtp_logits && r.k == 0) {
        rc = dsv4_error(DSV4_EINVAL, "generate: MTP logits need --mtp >= 1");
        goto out;
    }
    if (o->dump_mtp_logits && !(r.mtplog = malloc(sizeof(float) * T * r.V))) {
        rc = dsv4_error(DSV4_ENOMEM, "generate: out of memory");
        goto out;
    }
    if (!r.logits || !r.hidden || !r.mhid || !r.mlog || !r.p || !r.q || !r.out || !r.lp) {
        rc = dsv4_error(DSV4_ENOMEM, "generate: out of memory");
        goto out;
    }
    if (r.rank == 0)
        job->res->t_load = dsv4_now() - job->t0;
    rc = run_rank(&r);
out:
    free(r.logits);
    free(r.hidden);
    free(r.mhid);
    free(r.mlog);
    free(r.p);
    free(r.q);
    free(r.out);
    free(r.lp);
    free(r.mtplog);
    dsv4_sampler_free(r.smp);
    dsv4_fwd_free(r.f);
    dsv4_state_free(r.st);
    dsv4_pool_free(r.pool);
    dsv4_model_close(r.m);
    if (rc)
        dsv4_log(DSV4_LOG_ERROR, "generate: rank %d: %s", r.rank, dsv4_errmsg());
    return rc;
}

int dsv4_generate(const char *dir, const int32_t *prompt, int n_prompt,
                  const struct dsv4_gen_opts *o, struct dsv4_gen_result *res)
{
    struct gen_job job = {0};
    char path[4096];
    int rc;
    memset(res, 0, sizeof *res);
    if (n_prompt < 1)
        return dsv4_error(DSV4_EINVAL, "generate: empty prompt");
    if (o->mtp < 0 || o->mtp > DSV4_GEN_MAX_MTP)
        return dsv4_error(DSV4_EINVAL, "generate: mtp %d not in [0, %d]", o->mtp, DSV4_GEN_MAX_MTP);
    if (o->ranks < 1 || o->ranks > DSV4_GEN_MAX_RANKS)
        return dsv4_error(DSV4_EINVAL, "generate: ranks %d not in [1, %d]", o->ranks,
                          DSV4_GEN_MAX_RANKS);
    if (o->threads < 1 || o->threads > DSV4_GEN_MAX_THREADS)
        return dsv4_error(DSV4_EINVAL, "generate: threads %d not in [1, %d]", o->threads,
                          DSV4_GEN_MAX_THREADS);
    if (o->chunk < 1 || o->chunk > DSV4_GEN_MAX_CHUNK)
        return dsv4_error(DSV4_EINVAL, "generate: chunk %d not in [1, %d]", o->chunk,
                          DSV4_GEN_MAX_CHUNK);
    if (o->max_tokens < 0)
        return dsv4_error(DSV4_EINVAL, "generate: max_tokens %d < 0", o->max_tokens);
    if ((rc = dsv4_sample_params_check(&o->sample)))
        return rc;
    job.t0 = dsv4_now();
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = dsv4_config_load(path, &job.cfg)))
        return rc;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= job.cfg.vocab_size)
            return dsv4_error(DSV4_EINVAL, "generate: prompt token %d outside vocab %d", prompt[i],
                              job.cfg.vocab_size);
    /* the context the forward pass is sized for: every position a query can reach */
    int64_t need = (int64_t)n_prompt + o->max_tokens + o->mtp + 2;
    int64_t limit = DSV4_MIN(job.cfg.max_position_embeddings, DSV4_GEN_MAX_CONTEXT);
    if (need > limit)
        return dsv4_error(DSV4_EINVAL,
                          "generate: prompt %d + max_tokens %d + mtp %d + 2 positions exceed the "
                          "context limit %lld (max_position_embeddings %lld)",
                          n_prompt, o->max_tokens, o->mtp, (long long)limit,
                          (long long)job.cfg.max_position_embeddings);
    if (o->dump_layers)
        for (int l = 0; l < job.cfg.num_hidden_layers; l++) {
            snprintf(path, sizeof path, "%s/layer_%02d.f32", o->dump_layers, l);
            FILE *fp = fopen(path, "wb");
            if (!fp)
                return dsv4_error(DSV4_EIO, "generate: cannot create %s", path);
            fclose(fp);
        }
    if ((rc = dsv4_ckpt_open(dir, &job.ck)))
        return rc;
    job.prompt = prompt;
    job.np = n_prompt;
    job.o = o;
    job.res = res;
    res->n_prompt = n_prompt;
    if (o->ranks == 1)
        rc = rank_fn(NULL, &job);
    else
        rc = dsv4_comm_run_threads(o->ranks, 0, rank_fn, &job);
    dsv4_ckpt_close(job.ck);
    if (rc && !res->tokens)
        dsv4_gen_result_free(res);
    return rc;
}
