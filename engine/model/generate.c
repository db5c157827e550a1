/*
 * generate.c - offline generation as a client of the step API (see
 * engine/model/generate.h).
 *
 * Each rank (a thread over the shared-memory communicator) creates its
 * backend, binds its weights and drives one step object through the same
 * plans: the prompt in chunks (the last one samples the first token), then
 * one decode entry per step carrying the drafts the previous step returned.
 * Diagnostics (logits dumps) come from the step's logits hook; layer dumps
 * and forcing from the forward pass's layer hook during the prefill.
 */
#include "engine/model/generate.h"

#include "base/dsv4.h"
#include "engine/model/comm.h"
#include "engine/model/forward.h"
#include "engine/model/model.h"
#include "engine/model/step.h"

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
    int rank, N, V, k;
    struct dsv4_step *step;
    int32_t *out;
    float *lp;
    int n;
    int64_t chunk_start; /* first position of the prefill chunk in flight (layer hook) */
    int hook_rc;
    /* logits dumps: the rows of the step in flight, written once `used` is known */
    float *rows;
    int nrows;
    bool prefill, drafted;
};

void dsv4_gen_opts_default(struct dsv4_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_tokens = 32;
    o->threads = 1;
    o->ranks = 1;
    o->chunk = 256;
    o->backend = "cpu";
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
    if (o->dump_layers && r->rank == 0) {
        snprintf(path, sizeof path, "%s/layer_%02d.f32", o->dump_layers, layer);
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

static int write_rows(struct rank_ctx *r, FILE *fp, const float *rows, int n)
{
    if (!fp || r->rank != 0 || n <= 0)
        return 0;
    if (fwrite(rows, sizeof(float) * r->V, n, fp) != (size_t)n)
        return dsv4_error(DSV4_EIO, "generate: writing logits failed");
    return 0;
}

/* The step's logits hook (rank 0 writes): prompt rows at once, decode rows kept until the
 * step tells how many positions were accepted. */
static void logits_hook(void *ctx, enum dsv4_step_rows kind, int entry, int64_t pos,
                        const float *rows, int n, int V)
{
    struct rank_ctx *r = ctx;
    const struct dsv4_gen_opts *o = r->job->o;
    int rc = 0;
    (void)entry;
    if (r->hook_rc)
        return;
    if (kind == DSV4_STEP_ROWS_TRUNK) {
        if (r->prefill) {
            rc = write_rows(r, o->dump_logits, rows, n);
        } else {
            memcpy(r->rows, rows, sizeof(float) * (size_t)n * V);
            r->nrows = n;
        }
    } else if (kind == DSV4_STEP_ROWS_MTP && r->prefill) {
        /* MTP rows of prompt positions 0..P-2 (the last one's successor is generated) */
        int64_t keep = DSV4_MIN((int64_t)n, (int64_t)r->job->np - 1 - pos);
        if (keep > 0)
            rc = write_rows(r, o->dump_mtp_logits, rows, (int)keep);
    } else if (kind == DSV4_STEP_ROWS_DRAFT && !r->drafted) {
        rc = write_rows(r, o->dump_draft_logits, rows, n);
    }
    if (rc)
        r->hook_rc = rc;
}

static bool emit_tokens(struct rank_ctx *r, const struct dsv4_step_result *res)
{
    const struct dsv4_gen_opts *o = r->job->o;
    for (int i = 0; i < res->n_tokens; i++) {
        r->lp[r->n] = res->logprobs[i];
        r->out[r->n++] = res->tokens[i];
        if (r->rank == 0 && o->on_token)
            o->on_token(o->ctx, res->tokens[i]);
    }
    return res->finish != DSV4_FINISH_NONE;
}

static void entry_base(struct rank_ctx *r, struct dsv4_step_entry *e, const int32_t *stop)
{
    const struct dsv4_gen_opts *o = r->job->o;
    memset(e, 0, sizeof *e);
    e->id = 1;
    e->n_prompt = r->job->np;
    e->params = o->sample;
    e->n_stop = o->stop_at_eos ? 1 : 0;
    e->stop_ids = stop;
    e->max_emit = o->max_tokens - r->n;
}

static int run_rank(struct rank_ctx *r)
{
    struct gen_job *job = r->job;
    const struct dsv4_gen_opts *o = job->o;
    struct dsv4_gen_result st = {0};
    const int32_t *prompt = job->prompt;
    int P = job->np, rc, chunk = o->chunk;
    int32_t stop[1] = {job->cfg.eos_token_id};
    struct dsv4_step_entry e;
    struct dsv4_step_result res;
    bool dump = o->dump_logits || o->dump_mtp_logits || o->dump_draft_logits;
    double t1 = dsv4_now(), t2 = 0;
    if (o->dump_layers || o->force_layers)
        dsv4_fwd_set_layer_hook(dsv4_step_fwd(r->step), layer_hook, r);
    if (dump)
        dsv4_step_set_logits_hook(r->step, logits_hook, r);
    bool stop_now = false;
    r->prefill = true;
    for (int s0 = 0; s0 < P; s0 += chunk) {
        entry_base(r, &e, stop);
        e.start = s0;
        e.n = DSV4_MIN(chunk, P - s0);
        e.tokens = prompt + s0;
        e.sample = s0 + e.n == P && o->max_tokens > 0;
        r->chunk_start = s0;
        if ((rc = dsv4_step_run(r->step, &e, 1, &res)))
            return rc;
        if (r->hook_rc)
            return r->hook_rc;
        if (e.sample) {
            t2 = dsv4_now();
            stop_now = emit_tokens(r, &res);
        }
    }
    r->prefill = false;
    r->drafted = true;
    dsv4_fwd_set_layer_hook(dsv4_step_fwd(r->step), NULL, NULL);
    if (o->max_tokens <= 0)
        goto done;
    while (!stop_now) {
        int32_t last = r->out[r->n - 1];
        entry_base(r, &e, stop);
        e.start = P + r->n - 1;
        e.n = 1;
        e.tokens = &last;
        e.n_drafts = res.n_drafts;
        e.drafts = res.drafts;
        e.sample = true;
        int32_t drafts[DSV4_STEP_MAX_DRAFTS];
        memcpy(drafts, res.drafts, sizeof drafts);
        e.drafts = drafts;
        st.steps++;
        if ((rc = dsv4_step_run(r->step, &e, 1, &res)))
            return rc;
        if (r->hook_rc)
            return r->hook_rc;
        st.drafted += (uint64_t)res.drafted;
        st.accepted += (uint64_t)res.accepted;
        for (int i = 0; i < res.drafted && i < DSV4_GEN_MAX_MTP; i++) {
            st.drafted_at[i]++;
            st.accepted_at[i] += i < res.accepted;
        }
        /* rows of the positions that hold the verified inputs */
        if ((rc = write_rows(r, o->dump_logits, r->rows, DSV4_MIN(res.n_tokens, r->nrows))))
            return rc;
        stop_now = emit_tokens(r, &res);
    }
    st.t_decode = dsv4_now() - t2;
    if (o->dump_logits && r->n > 0) {
        /* the row of the last generated token (its own prediction), for the P + G rows */
        int32_t last = r->out[r->n - 1];
        entry_base(r, &e, stop);
        e.start = P + r->n - 1;
        e.n = 1;
        e.tokens = &last;
        if ((rc = dsv4_step_run(r->step, &e, 1, &res)))
            return rc;
        if ((rc = write_rows(r, o->dump_logits, r->rows, r->nrows)))
            return rc;
    }
done:
    st.t_prefill = (t2 > 0 ? t2 : dsv4_now()) - t1;
    if (r->rank == 0) {
        struct dsv4_gen_result *out = job->res;
        out->t_prefill = st.t_prefill;
        out->t_decode = st.t_decode;
        out->steps = st.steps;
        out->drafted = st.drafted;
        out->accepted = st.accepted;
        memcpy(out->drafted_at, st.drafted_at, sizeof st.drafted_at);
        memcpy(out->accepted_at, st.accepted_at, sizeof st.accepted_at);
        out->tokens = malloc(sizeof(int32_t) * (r->n ? r->n : 1));
        out->logprobs = malloc(sizeof(float) * (r->n ? r->n : 1));
        if (!out->tokens || !out->logprobs)
            return dsv4_error(DSV4_ENOMEM, "generate: out of memory");
        memcpy(out->tokens, r->out, sizeof(int32_t) * r->n);
        memcpy(out->logprobs, r->lp, sizeof(float) * r->n);
        out->n = r->n;
    }
    return 0;
}

static int rank_fn(struct dsv4_comm *comm, void *arg)
{
    struct gen_job *job = arg;
    const struct dsv4_gen_opts *o = job->o;
    struct rank_ctx r = {0};
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    int rc;
    r.job = job;
    r.rank = comm ? dsv4_comm_rank(comm) : 0;
    r.N = comm ? dsv4_comm_size(comm) : 1;
    r.k = o->mtp;
    r.V = job->cfg.vocab_size;
    if ((rc = dsv4_model_bind(job->ck, &job->cfg, r.rank, r.N, &m)))
        goto out;
    if (r.k && !dsv4_model_has_mtp(m)) {
        rc = dsv4_error(DSV4_ENOTSUP, "generate: --mtp %d but the checkpoint has no MTP block",
                        r.k);
        goto out;
    }
    if ((rc = dsv4_backend_create(o->backend ? o->backend : "cpu", DSV4_MAX(1, o->threads / r.N),
                                  &be)))
        goto out;
    /* tokens per step: a prefill chunk (never more than the prompt) or 1 + k */
    struct dsv4_step_opts so = {.max_seqs = 1,
                                .max_tokens = DSV4_MAX(DSV4_MIN(o->chunk, job->np), r.k + 1),
                                .max_ctx = (int64_t)job->np + o->max_tokens + r.k + 2,
                                .mtp = r.k,
                                .threads = 1};
    if ((rc = dsv4_step_create(m, be, comm, &so, &r.step)))
        goto out;
    if ((rc = dsv4_step_seq_add(r.step, 1)))
        goto out;
    r.out = malloc(sizeof(int32_t) * (o->max_tokens + 1));
    r.lp = malloc(sizeof(float) * (o->max_tokens + 1));
    r.rows = malloc(sizeof(float) * (size_t)(r.k + 1) * r.V);
    if (!r.out || !r.lp || !r.rows) {
        rc = dsv4_error(DSV4_ENOMEM, "generate: out of memory");
        goto out;
    }
    if (o->dump_mtp_logits && r.k == 0) {
        rc = dsv4_error(DSV4_EINVAL, "generate: MTP logits need --mtp >= 1");
        goto out;
    }
    if (r.rank == 0)
        job->res->t_load = dsv4_now() - job->t0;
    rc = run_rank(&r);
out:
    free(r.out);
    free(r.lp);
    free(r.rows);
    dsv4_step_free(r.step);
    dsv4_backend_destroy(be);
    dsv4_model_close(m);
    /* with several ranks each says its own error (the caller gets one of them) */
    if (rc && r.N > 1)
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
    if (o->backend && strcmp(o->backend, "cpu") && strcmp(o->backend, "ref") &&
        strcmp(o->backend, "devsim") && strncmp(o->backend, "cuda", 4))
        return dsv4_error(DSV4_EINVAL, "generate: unknown backend '%s' (cpu, ref, devsim, cuda)",
                          o->backend);
    /* several ranks of a device backend share its device, their collectives staged through
     * host memory by the shm communicator (a test mode: multi-GPU speed needs NCCL) */
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
