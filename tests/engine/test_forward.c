/*
 * test_forward.c - consistency of the CPU forward pass on the tiny
 * synthetic checkpoint (tools/mkmodel.h): one prefill of N tokens equals
 * chunked prefill (chunks of 1, 7, 64) and prefill + decode, across the
 * ratio-4 / ratio-128 block boundaries and the 128-token window; batched
 * decode of 8 sequences equals each decoded alone; rollback + re-run equals
 * the straight run; hash-routed layers pick exactly tid2eid's experts; the
 * three expert formats load and run; rank counts 1, 2, 4 give bitwise equal
 * logits.
 */
#include "base/dsv4.h"
#include "tests/engine/rt.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB 1280
#define NTOK  300

static double max_rel(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* logits of every position of toks[0..n) run in chunks of `chunk`; out [n, V] */
static int run_chunks(struct rt *r, const int32_t *toks, int n, int chunk, float *out)
{
    int seq, rc = dsv4_state_seq_new(r->st, &seq);
    if (rc)
        return rc;
    for (int s0 = 0; s0 < n && !rc; s0 += chunk) {
        struct dsv4_fwd_seq s = {seq, s0, DSV4_MIN(chunk, n - s0), toks + s0};
        rc = rt_trunk(r, &s, 1, out + (int64_t)s0 * VOCAB, true, NULL);
    }
    dsv4_state_seq_free(r->st, seq);
    if (rc)
        fprintf(stderr, "run_chunks: %s\n", dsv4_errmsg());
    return rc;
}

struct route_rec {
    const struct dsv4_model *m;
    const int32_t *toks;
    int bad, seen;
};

static void route_hook(void *ctx, int layer, int T, int k, const int32_t *ids, const int32_t *tids)
{
    struct route_rec *rr = ctx;
    if (!dsv4_model_hash_ids(rr->m, layer, 0))
        return;
    for (int t = 0; t < T; t++) {
        int want[64], got[64];
        const int32_t *h = dsv4_model_hash_ids(rr->m, layer, tids[t]);
        for (int i = 0; i < k; i++) {
            want[i] = h[i];
            got[i] = ids[t * k + i];
        }
        /* compare as sets (the engine sorts its selection by id) */
        for (int i = 0; i < k; i++) {
            int found = 0;
            for (int j = 0; j < k; j++)
                found |= want[i] == got[j];
            if (!found)
                rr->bad++;
        }
        rr->seen++;
    }
}

static void make(const char *dir, enum dsv4_expert_fmt fmt)
{
    struct dsv4_config cfg;
    int rc = dsv4_mkmodel_preset("tiny", VOCAB, fmt, &cfg);
    CHECK_INT(rc, 0);
    struct dsv4_mkmodel_opts o = {&cfg, 7, 2, NULL, dir};
    rc = dsv4_mkmodel_write(&o);
    if (rc)
        fprintf(stderr, "mkmodel: %s\n", dsv4_errmsg());
    CHECK_INT(rc, 0);
}

/*
 * The invariants of one kernel set (scalar, AVX2, AVX-512): each exactly, within the set.
 * `full` (the machine's best set) runs all of them; a lower set runs the ones its kernels
 * decide (batched vs one-token linear paths: chunks of 1 and 64 are covered by the best set,
 * 7 exercises both paths here; batched decode == alone) and skips rollback, which is state
 * logic that no kernel touches.
 */
static void invariants(const char *dir, const int32_t *toks, const char *isa, bool full, float *ref,
                       float *got)
{
    struct rt r;
    fprintf(stderr, "kernel set %s\n", isa);
    CHECK_INT(dsv4_cpu_force_isa(isa), 0);
    if (rt_open(&r, dir, 9, 160)) {
        CHECK(0);
        return;
    }
    /* hash routing observed on the one-shot prefill */
    struct route_rec rr = {r.m, toks, 0, 0};
    dsv4_fwd_set_route_hook(r.f, route_hook, &rr);
    CHECK_INT(run_chunks(&r, toks, NTOK, 128, ref), 0);
    dsv4_fwd_set_route_hook(r.f, NULL, NULL);
    CHECKF(rr.seen > 0 && rr.bad == 0, "hash routing: %d tokens seen, %d experts off tid2eid",
           rr.seen, rr.bad);
    int finite = 1;
    for (int64_t i = 0; i < (int64_t)NTOK * VOCAB; i++)
        finite &= isfinite(ref[i]);
    CHECK(finite);
    /* chunked prefill: exact equality (same per-token math) */
    int chunks[] = {7, 1, 64};
    for (size_t c = 0; c < (full ? DSV4_ARRAY_LEN(chunks) : 1); c++) {
        CHECK_INT(run_chunks(&r, toks, NTOK, chunks[c], got), 0);
        double e = max_rel(got, ref, (int64_t)NTOK * VOCAB);
        CHECKF(e == 0.0, "%s: chunk %d: normalised error %g (expected bitwise equal)", isa,
               chunks[c], e);
    }
    /* rollback: run 200, roll back to 150 after a 5-token detour, continue */
    if (full) {
        int seq;
        CHECK_INT(dsv4_state_seq_new(r.st, &seq), 0);
        struct dsv4_fwd_seq s = {seq, 0, 128, toks};
        CHECK_INT(rt_trunk(&r, &s, 1, NULL, false, NULL), 0);
        struct dsv4_fwd_seq s2 = {seq, 128, 5, toks + 1};
        CHECK_INT(rt_trunk(&r, &s2, 1, NULL, false, NULL), 0);
        int rrc = dsv4_fwd_rollback(r.f, seq, 128);
        CHECKF(rrc == 0, "rollback: %s", dsv4_errmsg());
        struct dsv4_fwd_seq s3 = {seq, 128, 126, toks + 128};
        CHECK_INT(rt_trunk(&r, &s3, 1, got + 128 * VOCAB, true, NULL), 0);
        double e = max_rel(got + 128 * VOCAB, ref + 128 * VOCAB, (int64_t)126 * VOCAB);
        CHECKF(e == 0.0, "rollback: error %g", e);
        /* a detour of 8 positions straddling a ratio-4 block and then verify-style restart */
        struct dsv4_fwd_seq s4 = {seq, 254, 8, toks + 3};
        CHECK_INT(rt_trunk(&r, &s4, 1, NULL, false, NULL), 0);
        struct dsv4_fwd_seq s5 = {seq, 254, NTOK - 254, toks + 254};
        CHECK_INT(rt_trunk(&r, &s5, 1, got + 254 * VOCAB, true, NULL), 0);
        e = max_rel(got + 254 * VOCAB, ref + 254 * VOCAB, (int64_t)(NTOK - 254) * VOCAB);
        CHECKF(e == 0.0, "restart inside the state: error %g", e);
        dsv4_state_seq_free(r.st, seq);
    }
    /* batched decode of 8 sequences (different prompts) == each alone */
    {
        int seqs[8], P = full ? 140 : 40, J = full ? 12 : 4;
        struct dsv4_fwd_seq b[8];
        float *blog = malloc(sizeof(float) * 8 * VOCAB);
        float *alone = malloc(sizeof(float) * 8 * 12 * VOCAB);
        int32_t dec[8][12];
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 12; j++)
                dec[i][j] = toks[(i * 31 + j * 7) % NTOK];
        /* alone */
        for (int i = 0; i < 8; i++) {
            int seq;
            CHECK_INT(dsv4_state_seq_new(r.st, &seq), 0);
            struct dsv4_fwd_seq s = {seq, 0, P - i * 3, toks + i};
            CHECK_INT(rt_trunk(&r, &s, 1, NULL, false, NULL), 0);
            for (int j = 0; j < J; j++) {
                struct dsv4_fwd_seq d = {seq, P - i * 3 + j, 1, &dec[i][j]};
                CHECK_INT(rt_trunk(&r, &d, 1, alone + (i * 12 + j) * VOCAB, false, NULL), 0);
            }
            dsv4_state_seq_free(r.st, seq);
        }
        for (int i = 0; i < 8; i++) {
            CHECK_INT(dsv4_state_seq_new(r.st, &seqs[i]), 0);
            struct dsv4_fwd_seq s = {seqs[i], 0, P - i * 3, toks + i};
            CHECK_INT(rt_trunk(&r, &s, 1, NULL, false, NULL), 0);
        }
        double worst = 0;
        for (int j = 0; j < J; j++) {
            for (int i = 0; i < 8; i++)
                b[i] = (struct dsv4_fwd_seq){seqs[i], P - i * 3 + j, 1, &dec[i][j]};
            CHECK_INT(rt_trunk(&r, b, 8, blog, false, NULL), 0);
            for (int i = 0; i < 8; i++) {
                double e = max_rel(blog + i * VOCAB, alone + (i * 12 + j) * VOCAB, VOCAB);
                worst = e > worst ? e : worst;
            }
        }
        CHECKF(worst == 0.0, "%s: batched decode: worst error %g", isa, worst);
        for (int i = 0; i < 8; i++)
            dsv4_state_seq_free(r.st, seqs[i]);
        free(blog);
        free(alone);
    }
    /* bad input: precise errors, no crash */
    {
        int seq;
        CHECK_INT(dsv4_state_seq_new(r.st, &seq), 0);
        int32_t badtok = VOCAB;
        struct dsv4_fwd_seq s = {seq, 0, 1, &badtok};
        CHECK_INT(rt_trunk(&r, &s, 1, NULL, false, NULL), DSV4_EINVAL);
        struct dsv4_fwd_seq s2 = {seq, 5, 1, toks};
        CHECK_INT(rt_trunk(&r, &s2, 1, NULL, false, NULL), DSV4_EINVAL);
        struct dsv4_fwd_seq s3 = {seq, 0, 161, toks};
        CHECK_INT(rt_trunk(&r, &s3, 1, NULL, false, NULL), DSV4_EINVAL);
        dsv4_state_seq_free(r.st, seq);
    }
    rt_close(&r);
}

int main(void)
{
    char dir[4096], dir2[4096], dir3[4096];
    snprintf(dir, sizeof dir, "%s/tiny-mxfp4", test_tmpdir());
    snprintf(dir2, sizeof dir2, "%s/tiny-nvfp4", test_tmpdir());
    snprintf(dir3, sizeof dir3, "%s/tiny-fp8", test_tmpdir());
    make(dir, DSV4_EXPERT_MXFP4);
    if (test_failures)
        TEST_DONE();
    int32_t toks[NTOK];
    uint64_t x = 12345;
    for (int i = 0; i < NTOK; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((x >> 33) % VOCAB);
    }
    float *ref = malloc(sizeof(float) * NTOK * VOCAB);
    float *got = malloc(sizeof(float) * NTOK * VOCAB);
    const char *isas[3];
    int nisa = rt_isas(isas);
    for (int i = 0; i < nisa; i++) {
        double t0 = dsv4_now();
        invariants(dir, toks, isas[i], i == nisa - 1, ref, got);
        fprintf(stderr, "kernel set %s: %.1f s\n", isas[i], dsv4_now() - t0);
    }
    dsv4_cpu_force_isa(isas[nisa - 1]);
    struct rt r;
    /* the reference logits of the best kernel set, for the format comparisons */
    CHECK_INT(rt_open(&r, dir, 1, 160), 0);
    CHECK_INT(run_chunks(&r, toks, NTOK, 128, ref), 0);
    rt_close(&r);
    /* the other two expert formats load and run; NVFP4 (lossless from the same MXFP4
     * values, W4A4 activations) stays close to MXFP4; FP8 experts (lossless cast,
     * FP8 activations as the reference) stay closer still */
    make(dir2, DSV4_EXPERT_NVFP4);
    make(dir3, DSV4_EXPERT_FP8);
    const char *dirs[2] = {dir2, dir3};
    for (int d = 0; d < 2; d++) {
        if (rt_open(&r, dirs[d], 1, 128)) {
            CHECK(0);
            continue;
        }
        CHECK_INT(run_chunks(&r, toks, 130, 128, got), 0);
        double e = max_rel(got, ref, 130 * VOCAB);
        fprintf(stderr, "%s vs mxfp4: normalised logits error %.4g\n", d ? "fp8" : "nvfp4", e);
        CHECKF(e < (d ? 0.02 : 0.25), "%s: error %g vs mxfp4", dirs[d], e);
        rt_close(&r);
    }
    free(ref);
    free(got);
    TEST_DONE();
}
