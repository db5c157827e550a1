/*
 * rt.h - the engine tests' runtime: a model, a backend, a state pool and a
 * forward pass opened together, with the forward calls wrapped so that a
 * test asks for "the last row of every chunk" or "every row" of logits and
 * gets them in its own host array.  Header-only (static functions), for
 * tests/engine/ only.
 */
#ifndef DSV4_TESTS_RT_H
#define DSV4_TESTS_RT_H

#include "base/dsv4.h"
#include "engine/model/forward.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RT_MAX_ROWS 4096

struct rt {
    struct dsv4_model *m;
    struct dsv4_backend *be;
    struct dsv4_state *st;
    struct dsv4_fwd *f;
    int V, hc;
    int64_t D;
    int32_t rows[RT_MAX_ROWS];
};

/* backend "cpu" (2 threads) or "ref"; maxseq slots, T tokens per call, rollback horizon,
 * context max_ctx. */
static int rt_open_be(struct rt *r, const char *dir, const char *backend, int maxseq, int T,
                      int rollback, int64_t max_ctx)
{
    memset(r, 0, sizeof *r);
    int rc = dsv4_model_open(dir, 0, 1, &r->m);
    if (!rc)
        rc = dsv4_backend_create(backend, 2, &r->be);
    struct dsv4_state_opts so = {.max_seqs = maxseq, .max_ctx = max_ctx, .max_rollback = rollback};
    if (!rc)
        rc = dsv4_state_init(r->m, r->be, &so, &r->st);
    if (!rc)
        rc = dsv4_fwd_init(r->m, r->st, r->be, NULL, T, T, &r->f);
    if (rc) {
        fprintf(stderr, "rt_open: %s\n", dsv4_errmsg());
        return rc;
    }
    const struct dsv4_config *c = dsv4_model_config(r->m);
    r->V = c->vocab_size;
    r->hc = c->hc_mult;
    r->D = c->hidden_size;
    return 0;
}

static int rt_open(struct rt *r, const char *dir, int maxseq, int T)
{
    return rt_open_be(r, dir, "cpu", maxseq, T, 8, 4096);
}

static void rt_close(struct rt *r)
{
    dsv4_fwd_free(r->f);
    dsv4_state_free(r->st);
    dsv4_backend_destroy(r->be);
    dsv4_model_close(r->m);
    memset(r, 0, sizeof *r);
}

/* Logits rows: every token (all) or the last of each chunk. */
static int rt_rows(struct rt *r, const struct dsv4_fwd_seq *s, int n, bool all)
{
    int T = 0, nr = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < s[i].n; j++)
            if (all || j == s[i].n - 1) {
                if (nr == RT_MAX_ROWS)
                    return -1;
                r->rows[nr++] = T + j;
            }
        T += s[i].n;
    }
    return nr;
}

static int rt_tokens(const struct dsv4_fwd_seq *s, int n)
{
    int T = 0;
    for (int i = 0; i < n; i++)
        T += s[i].n;
    return T;
}

/* Trunk over the batch; logits (host, may be NULL) and hidden ([T, hc, D], may be NULL). */
static int rt_trunk(struct rt *r, const struct dsv4_fwd_seq *s, int n, float *logits, bool all,
                    float *hidden)
{
    int nr = logits ? rt_rows(r, s, n, all) : 0;
    if (nr < 0)
        return DSV4_EINVAL;
    int rc = dsv4_fwd_trunk(r->f, s, n, r->rows, nr, hidden != NULL);
    if (rc)
        return rc;
    if (nr)
        r->be->download(r->be, logits, dsv4_fwd_logits(r->f), sizeof(float) * (size_t)nr * r->V);
    if (hidden)
        r->be->download(r->be, hidden, dsv4_fwd_hidden(r->f),
                        sizeof(float) * (size_t)rt_tokens(s, n) * r->hc * r->D);
    return 0;
}

/* MTP block over the batch; hidden (host) in; logits and hidden_out as for rt_trunk. */
static inline int rt_mtp(struct rt *r, const struct dsv4_fwd_seq *s, int n, const float *hidden,
                         float *logits, bool all, float *hidden_out)
{
    int nr = logits ? rt_rows(r, s, n, all) : 0;
    if (nr < 0)
        return DSV4_EINVAL;
    size_t hb = sizeof(float) * (size_t)rt_tokens(s, n) * r->hc * r->D;
    float *dev = r->be->alloc(r->be, hb);
    if (!dev)
        return DSV4_ENOMEM;
    r->be->upload(r->be, dev, hidden, hb);
    int rc = dsv4_fwd_mtp(r->f, s, n, dev, r->rows, nr);
    r->be->free(r->be, dev);
    if (rc)
        return rc;
    if (nr)
        r->be->download(r->be, logits, dsv4_fwd_logits(r->f), sizeof(float) * (size_t)nr * r->V);
    if (hidden_out)
        r->be->download(r->be, hidden_out, dsv4_fwd_mtp_hidden(r->f), hb);
    return 0;
}

/* The kernel sets this machine has, in the order the tests run them. */
static int rt_isas(const char **names)
{
    static const char *all[] = {"scalar", "avx2+fma", "avx512"};
    const char *best = dsv4_cpu_isa();
    int n = 0;
    for (int i = 0; i < 3; i++) {
        if (dsv4_cpu_force_isa(all[i]) == 0)
            names[n++] = all[i];
    }
    dsv4_cpu_force_isa(best);
    return n;
}

#endif
