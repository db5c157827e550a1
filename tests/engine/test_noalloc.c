/*
 * test_noalloc.c - the per-token paths do not allocate (STYLE.md; step.h,
 * forward.h, state.h: the state pool is sized at creation, calls never
 * allocate).
 *
 * The program interposes malloc/calloc/realloc/posix_memalign/aligned_alloc
 * (glibc's __libc_* underneath) and counts calls while a flag is set.  On the
 * tiny synthetic checkpoint (all three expert formats, so every GEMM path:
 * FP8 GEMV, MXFP4 batch-1, NVFP4 W4A4), after a prefill of sequence A's 250
 * positions, it counts the allocations of 24 mixed steps of the step API:
 * A decodes with 3 MTP drafts to verify (greedy), crossing its 256-position
 * state block, while sequence B's prompt arrives in prefill chunks in the
 * same steps and B then decodes too (sampled, with top-p, a penalty and
 * logprobs: every sampler path); more than index_topk ratio-4 entries are
 * visible (the indexer's top-k path).  Expected count: 0.  Once more with decode
 * graphs on (steps padded to buckets: 1, 2, 4, 8 tokens here), the padding included.
 * Skipped (77) under AddressSanitizer, whose allocator cannot be interposed.
 */
#include "base/dsv4.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "kernels/backend.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define NOALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NOALLOC_ASAN 1
#endif
#endif

#define VOCAB 1280

static atomic_int counting, n_alloc;

#if !defined(NOALLOC_ASAN) && defined(__GLIBC__)
#define NOALLOC_ACTIVE 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t s);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t a, size_t n);

static void note(void)
{
    if (atomic_load(&counting))
        atomic_fetch_add(&n_alloc, 1);
}

void *malloc(size_t n)
{
    note();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t s)
{
    note();
    return __libc_calloc(n, s);
}

void *realloc(void *p, size_t n)
{
    note();
    return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t a, size_t n)
{
    note();
    void *p = __libc_memalign(a, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *aligned_alloc(size_t a, size_t n)
{
    note();
    return __libc_memalign(a, n);
}
#endif

/* Runs one step; returns its status (test failures are counted by the caller). */
static int step(struct dsv4_step *st, struct dsv4_step_entry *e, int n, struct dsv4_step_result *r)
{
    int rc = dsv4_step_run(st, e, n, r);
    if (rc)
        fprintf(stderr, "step: %s\n", dsv4_errmsg());
    return rc;
}

static void run_format(enum dsv4_expert_fmt fmt, const char *name, bool graphs)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-%s", test_tmpdir(), name);
    struct dsv4_config cfg;
    CHECK_INT(dsv4_mkmodel_preset("tiny", VOCAB, fmt, &cfg), 0);
    struct dsv4_mkmodel_opts mo = {&cfg, 7, 2, NULL, dir};
    int rc = dsv4_mkmodel_write(&mo);
    CHECK_INT(rc, 0);
    if (rc)
        return;
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    struct dsv4_step *st = NULL;
    enum { PA = 250, PB = 100, K = 3 };
    int32_t toks[PA + PB];
    for (int i = 0; i < PA + PB; i++)
        toks[i] = (int32_t)((i * 977 + 13) % VOCAB);
    rc = dsv4_model_open(dir, 0, 1, &m);
    if (!rc)
        rc = dsv4_backend_create("cpu", 2, &be);
    struct dsv4_step_opts so = {
            .max_seqs = 2, .max_tokens = 64, .max_ctx = 600, .mtp = K, .graphs = graphs};
    if (!rc)
        rc = dsv4_step_create(m, be, NULL, &so, &st);
    if (!rc)
        rc = dsv4_step_seq_add(st, 1);
    if (!rc)
        rc = dsv4_step_seq_add(st, 2);
    CHECKF(rc == 0, "%s: setup: %s", name, dsv4_errmsg());
    if (rc)
        goto out;
    /* A: greedy; B: sampled with filters, penalties and logprobs (every sampler path) */
    struct dsv4_step_entry e[2] = {0};
    struct dsv4_step_result r[2];
    e[0] = (struct dsv4_step_entry){
            .id = 1, .n_prompt = PA, .max_emit = 1 << 20, .params = dsv4_sample_params_default()};
    e[0].params.temperature = 0;
    e[1] = (struct dsv4_step_entry){
            .id = 2, .n_prompt = PB, .max_emit = 1 << 20, .params = dsv4_sample_params_default()};
    e[1].params.temperature = 0.8f;
    e[1].params.top_p = 0.9f;
    e[1].params.presence_penalty = 0.5f;
    e[1].params.logprobs = true;
    e[1].params.n_top_logprobs = 5;
    e[1].params.seed = 7;
    /* warm-up, not counted: A's prompt in chunks of 64, sampling at the end */
    for (int s0 = 0; s0 < PA && !rc; s0 += 64) {
        e[0].start = s0;
        e[0].n = s0 + 64 < PA ? 64 : PA - s0;
        e[0].tokens = toks + s0;
        e[0].sample = s0 + e[0].n == PA;
        rc = step(st, e, 1, r);
    }
    CHECK_INT(rc, 0);
    /* counted: A decodes across its 256-position block boundary with drafts while B's
     * prompt arrives in chunks and B then decodes too: mixed steps */
    atomic_store(&n_alloc, 0);
    atomic_store(&counting, 1);
    int64_t posA = PA + r[0].n_tokens, posB = 0;
    int32_t lastA = r[0].tokens[r[0].n_tokens - 1], lastB = 0, dA[K], dB[K];
    int ndA = r[0].n_drafts, ndB = 0;
    memcpy(dA, r[0].drafts, sizeof dA);
    for (int it = 0; it < 24 && !rc; it++) {
        e[0].start = posA - 1;
        e[0].n = 1;
        e[0].tokens = &lastA;
        e[0].n_drafts = ndA;
        e[0].drafts = dA;
        e[0].sample = true;
        if (posB < PB) {
            e[1].start = posB;
            e[1].n = posB + 32 < PB ? 32 : (int)(PB - posB);
            e[1].tokens = toks + PA + posB;
            e[1].sample = posB + e[1].n == PB;
            e[1].n_drafts = 0;
        } else {
            e[1].start = posB - 1;
            e[1].n = 1;
            e[1].tokens = &lastB;
            e[1].n_drafts = ndB;
            e[1].drafts = dB;
            e[1].sample = true;
        }
        if ((rc = step(st, e, 2, r)))
            break;
        posA += r[0].n_tokens;
        lastA = r[0].tokens[r[0].n_tokens - 1];
        ndA = r[0].n_drafts;
        memcpy(dA, r[0].drafts, sizeof dA);
        posB = posB < PB ? posB + e[1].n : posB;
        if (r[1].n_tokens) {
            posB += r[1].n_tokens;
            lastB = r[1].tokens[r[1].n_tokens - 1];
        }
        ndB = r[1].n_drafts;
        memcpy(dB, r[1].drafts, sizeof dB);
    }
    atomic_store(&counting, 0);
    CHECK_INT(rc, 0);
    CHECKF(posA > 256 + K, "%s: A reached only position %lld", name, (long long)posA);
    CHECK(posB > PB);
#ifdef NOALLOC_ACTIVE
    CHECKF(atomic_load(&n_alloc) == 0, "%s: %d allocations in the mixed steps", name,
           atomic_load(&n_alloc));
#endif
    if (graphs) {
        struct dsv4_step_stats ss;
        dsv4_step_get_stats(st, &ss);
        CHECKF(ss.graphs.padded_calls > 10, "%s: %llu padded calls", name,
               (unsigned long long)ss.graphs.padded_calls);
    }
out:
    dsv4_step_free(st);
    dsv4_backend_destroy(be);
    dsv4_model_close(m);
}

int main(void)
{
#ifndef NOALLOC_ACTIVE
    fprintf(stderr, "allocator not interposable here (sanitizer or not glibc): skipped\n");
    return 77;
#else
    /* the interposer itself must see the allocations it is meant to count */
    atomic_store(&counting, 1);
    void *volatile probe = malloc(16);
    atomic_store(&counting, 0);
    CHECK_INT(atomic_load(&n_alloc), 1);
    free(probe);
    run_format(DSV4_EXPERT_FP8, "fp8", false);
    run_format(DSV4_EXPERT_MXFP4, "mxfp4", false);
    run_format(DSV4_EXPERT_NVFP4, "nvfp4", false);
    run_format(DSV4_EXPERT_NVFP4, "nvfp4-graphs", true);
    TEST_DONE();
#endif
}
