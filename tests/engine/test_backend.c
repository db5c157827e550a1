/*
 * test_backend.c - the two backends of kernels/backend.h run the whole
 * forward pass alike: the same checkpoint and token stream through the
 * "ref" backend (the scalar oracle) and the "cpu" backend (threads, fast
 * kernels), compared layer by layer (the streams after every trunk layer,
 * via the forward pass's layer hook) and on the logits, for a chunked
 * prefill, batched decode, a 1 + k verification with rollback, and the MTP
 * block.  The two differ only in the order of FP32/FP64 sums (kernels/
 * linear.h), which the BF16 roundings of the residual stream can amplify
 * into one-ulp BF16 flips.  So each layer is compared on the ref run's input
 * (teacher forcing, below) and the logits on the ref's final streams; the
 * test allows a normalised error of 2e-2 (measured values: see the log) and
 * requires every value to be finite.
 */
#include "base/dsv4.h"
#include "tests/engine/rt.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB 1280
#define P     90
#define MAXL  8
#define TOL   2e-2

/*
 * Teacher forcing: the ref run records every trunk layer's output of every call; the cpu
 * run compares its own output of the same call and layer with it and then continues
 * from the ref's (the hook overwrites X), so each comparison measures one layer's own
 * difference, not the drift accumulated before it.
 */
#define MAXCALLS 8
struct capture {
    bool force;
    int call;
    float *x[MAXCALLS][MAXL];
    size_t n[MAXCALLS][MAXL];
    double err[MAXCALLS][MAXL];
    int finite;
};

static double nerr(const float *a, const float *b, size_t n, int *finite);

static void layer_hook(void *ctx, int layer, float *X, int T, int hc, int64_t D)
{
    struct capture *c = ctx;
    size_t n = (size_t)T * hc * D;
    if (layer >= MAXL || c->call >= MAXCALLS)
        return;
    if (!c->force) {
        c->x[c->call][layer] = malloc(sizeof(float) * n);
        if (c->x[c->call][layer])
            memcpy(c->x[c->call][layer], X, sizeof(float) * n);
        c->n[c->call][layer] = n;
        return;
    }
    const float *ref = c->x[c->call][layer];
    if (!ref || c->n[c->call][layer] != n) {
        c->err[c->call][layer] = INFINITY;
        return;
    }
    c->err[c->call][layer] = nerr(X, ref, n, &c->finite);
    memcpy(X, ref, sizeof(float) * n);
}

static double nerr(const float *a, const float *b, size_t n, int *finite)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            *finite = 0;
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Logits of the calls both backends run (host). */
struct out {
    float *prefill, *verify, *decode, *mtp;
};

/* The call sequence: prefill in two chunks, a 1 + 3 verification with rollback, a
 * decode of two sequences, and the MTP block over the second chunk's positions. */
static int run(struct rt *r, const int32_t *toks, struct capture *cap, struct out *o)
{
    int seq, seq2, rc;
    float *hid = malloc(sizeof(float) * (size_t)P * r->hc * r->D);
    float *h0 = malloc(sizeof(float) * (size_t)60 * r->hc * r->D);
    if (!hid || !h0) {
        rc = DSV4_ENOMEM;
        goto out;
    }
    dsv4_fwd_set_layer_hook(r->f, layer_hook, cap);
    if ((rc = dsv4_state_seq_new(r->st, &seq)) || (rc = dsv4_state_seq_new(r->st, &seq2)))
        goto out;
    struct dsv4_fwd_seq s0 = {seq, 0, 60, toks};
    cap->call = 0;
    if ((rc = rt_trunk(r, &s0, 1, o->prefill, true, NULL)))
        goto out;
    struct dsv4_fwd_seq s1 = {seq, 60, P - 60, toks + 60};
    cap->call = 1;
    if ((rc = rt_trunk(r, &s1, 1, o->prefill + (int64_t)60 * VOCAB, true, hid)))
        goto out;
    struct dsv4_fwd_seq v = {seq, P, 4, toks + P};
    cap->call = 2;
    if ((rc = rt_trunk(r, &v, 1, o->verify, true, NULL)) ||
        (rc = dsv4_fwd_rollback(r->f, seq, P + 2)))
        goto out;
    struct dsv4_fwd_seq p2 = {seq2, 0, 20, toks + 5};
    cap->call = 3;
    if ((rc = rt_trunk(r, &p2, 1, NULL, false, NULL)))
        goto out;
    struct dsv4_fwd_seq d[2] = {{seq, P + 2, 1, toks + P + 2}, {seq2, 20, 1, toks + 25}};
    cap->call = 4;
    if ((rc = rt_trunk(r, d, 2, o->decode, false, NULL)))
        goto out;
    /* the MTP block over positions 0..59, then 60..P-2 with the streams of call 1 */
    struct dsv4_fwd_seq s3 = {seq2, 0, 60, toks};
    if ((rc = dsv4_fwd_rollback(r->f, seq2, 0)))
        goto out;
    cap->call = 5;
    if ((rc = rt_trunk(r, &s3, 1, NULL, false, h0)))
        goto out;
    struct dsv4_fwd_seq ma = {seq2, 0, 60, toks + 1};
    struct dsv4_fwd_seq mb = {seq2, 60, P - 61, toks + 61};
    if ((rc = rt_mtp(r, &ma, 1, h0, NULL, false, NULL)) ||
        (rc = rt_mtp(r, &mb, 1, hid, o->mtp, true, NULL)))
        goto out;
out:
    dsv4_fwd_set_layer_hook(r->f, NULL, NULL);
    free(hid);
    free(h0);
    return rc;
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny", test_tmpdir());
    struct dsv4_config cfg;
    CHECK_INT(dsv4_mkmodel_preset("tiny", VOCAB, DSV4_EXPERT_NVFP4, &cfg), 0);
    struct dsv4_mkmodel_opts mo = {&cfg, 3, 1, NULL, dir};
    int rc = dsv4_mkmodel_write(&mo);
    CHECKF(rc == 0, "mkmodel: %s", dsv4_errmsg());
    if (rc)
        TEST_DONE();
    int L = cfg.num_hidden_layers;
    CHECK(L <= MAXL);
    int32_t toks[P + 40];
    for (int i = 0; i < P + 40; i++)
        toks[i] = (int32_t)((i * 733 + 29) % VOCAB);
    const char *names[2] = {"ref", "cpu"};
    struct out o[2];
    struct capture cap = {.finite = 1};
    for (int b = 0; b < 2; b++) {
        o[b].prefill = calloc((size_t)P * VOCAB, sizeof(float));
        o[b].verify = calloc((size_t)4 * VOCAB, sizeof(float));
        o[b].decode = calloc((size_t)2 * VOCAB, sizeof(float));
        o[b].mtp = calloc((size_t)P * VOCAB, sizeof(float));
    }
    for (int b = 0; b < 2; b++) {
        struct rt r;
        cap.force = b == 1;
        rc = rt_open_be(&r, dir, names[b], 2, 64, 8, 512);
        CHECKF(rc == 0, "%s: open: %s", names[b], dsv4_errmsg());
        if (rc)
            continue;
        rc = run(&r, toks, &cap, &o[b]);
        CHECKF(rc == 0, "%s: run: %s", names[b], dsv4_errmsg());
        rt_close(&r);
    }
    const char *calls[6] = {"prefill 0..59", "prefill 60..89", "verify 1+3",
                            "prefill seq 2", "decode batch 2", "prefill for mtp"};
    for (int c = 0; c < 6; c++)
        for (int l = 0; l < L; l++) {
            fprintf(stderr, "%-16s layer %d: normalised error cpu vs ref %.3g\n", calls[c], l,
                    cap.err[c][l]);
            CHECKF(cap.err[c][l] < TOL, "%s: layer %d error %g", calls[c], l, cap.err[c][l]);
        }
    CHECKF(cap.finite, "non-finite layer outputs");
    struct {
        const char *name;
        const float *a, *b;
        size_t n;
    } lg[4] = {{"prefill logits", o[1].prefill, o[0].prefill, (size_t)P * VOCAB},
               {"verify logits", o[1].verify, o[0].verify, (size_t)4 * VOCAB},
               {"decode logits", o[1].decode, o[0].decode, (size_t)2 * VOCAB},
               {"mtp logits", o[1].mtp, o[0].mtp, (size_t)(P - 61) * VOCAB}};
    for (int i = 0; i < 4; i++) {
        int finite = 1;
        double e = nerr(lg[i].a, lg[i].b, lg[i].n, &finite);
        fprintf(stderr, "%-16s normalised error cpu vs ref %.3g\n", lg[i].name, e);
        CHECKF(e < TOL && finite, "%s: error %g", lg[i].name, e);
    }
    for (int b = 0; b < 2; b++) {
        free(o[b].prefill);
        free(o[b].verify);
        free(o[b].decode);
        free(o[b].mtp);
    }
    for (int c = 0; c < MAXCALLS; c++)
        for (int l = 0; l < MAXL; l++)
            free(cap.x[c][l]);
    TEST_DONE();
}
