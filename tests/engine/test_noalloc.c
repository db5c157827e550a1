/*
 * test_noalloc.c - the per-token paths do not allocate (STYLE.md, forward.h:
 * "calls do not allocate except state blocks, once per block of positions").
 *
 * The program interposes malloc/calloc/realloc/posix_memalign/aligned_alloc
 * (glibc's __libc_* underneath) and counts calls while a flag is set.  On the
 * tiny synthetic checkpoint (all three expert formats, so every GEMM path:
 * FP8 GEMV, MXFP4 batch-1, NVFP4 W4A4), after a prefill of positions 0..39, it
 * counts the allocations of: trunk decode steps (n = 1, the first one included),
 * MTP steps, verification of 1 + 3 positions with rollback, all inside one
 * record block (positions < 64) and with more than index_topk visible
 * ratio-4 entries (the indexer's top-k path).  Expected count: 0.
 * Skipped (77) under AddressSanitizer, whose allocator cannot be interposed.
 */
#include "base/dsv4.h"
#include "engine/model/forward.h"
#include "tools/mkmodel.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "kernels/cpu/cpu.h"
#include "tests/test.h"

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

static void run_format(enum dsv4_expert_fmt fmt, const char *name)
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
    struct dsv4_pool *pool = NULL;
    struct dsv4_state *st = NULL;
    struct dsv4_fwd *f = NULL;
    int seq = -1, T = 40, k = 3;
    float *logits = malloc(sizeof(float) * T * VOCAB);
    float *hid = malloc(sizeof(float) * T * 4 * 256 * 2);
    float *hout = malloc(sizeof(float) * T * 4 * 256 * 2);
    int32_t toks[64];
    for (int i = 0; i < 64; i++)
        toks[i] = (int32_t)((i * 977 + 13) % VOCAB);
    CHECK(logits && hid && hout);
    rc = dsv4_model_open(dir, 0, 1, &m);
    if (!rc)
        rc = dsv4_pool_init(2, &pool);
    if (!rc)
        rc = dsv4_state_init(m, 1, k + 2, &st);
    if (!rc)
        rc = dsv4_fwd_init(m, st, pool, NULL, T, 256, &f);
    if (!rc)
        rc = dsv4_state_seq_new(st, &seq);
    CHECKF(rc == 0, "%s: setup: %s", name, dsv4_errmsg());
    CHECK(cfg.hc_mult * cfg.hidden_size <= 4 * 256 * 2);
    if (rc || !logits || !hid || !hout)
        goto out;
    /* prefill 0..39 (trunk + MTP); then everything is counted */
    struct dsv4_fwd_seq s = {seq, 0, T, toks};
    CHECK_INT(dsv4_fwd_trunk(f, &s, 1, logits, false, hid), 0);
    struct dsv4_fwd_seq sm = {seq, 0, T - 1, toks + 1};
    CHECK_INT(dsv4_fwd_mtp(f, &sm, 1, hid, logits, false, hout), 0);
    atomic_store(&n_alloc, 0);
    atomic_store(&counting, 1);
    struct dsv4_fwd_seq s1 = {seq, 40, 1, toks + 40};
    CHECK_INT(dsv4_fwd_trunk(f, &s1, 1, logits, false, hid), 0);
    int64_t pos = 41;
    for (int step = 0; step < 4 && !test_failures; step++) {
        /* MTP over its next position, then one recursive draft step */
        int64_t mp = dsv4_fwd_mtp_len(f, seq);
        struct dsv4_fwd_seq a = {seq, mp, 1, toks + mp + 1};
        CHECK_INT(dsv4_fwd_mtp(f, &a, 1, hid, logits, false, hout), 0);
        struct dsv4_fwd_seq b = {seq, mp + 1, 1, toks + mp + 2};
        CHECK_INT(dsv4_fwd_mtp(f, &b, 1, hout, logits, false, NULL), 0);
        /* verify 1 + k positions with every row's logits, keep 2, roll back */
        struct dsv4_fwd_seq v = {seq, pos, k + 1, toks + pos};
        CHECK_INT(dsv4_fwd_trunk(f, &v, 1, logits, true, hid), 0);
        CHECK_INT(dsv4_fwd_rollback(f, seq, pos + 2), 0);
        /* a plain decode step */
        struct dsv4_fwd_seq d = {seq, pos + 2, 1, toks + pos + 2};
        CHECK_INT(dsv4_fwd_trunk(f, &d, 1, logits, false, hid), 0);
        pos += 3;
    }
    atomic_store(&counting, 0);
    CHECK(pos + k < 64);
#ifdef NOALLOC_ACTIVE
    CHECKF(atomic_load(&n_alloc) == 0, "%s: %d allocations in the decode steps", name,
           atomic_load(&n_alloc));
#endif
out:
    dsv4_fwd_free(f);
    dsv4_state_free(st);
    dsv4_pool_free(pool);
    dsv4_model_close(m);
    free(logits);
    free(hid);
    free(hout);
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
    run_format(DSV4_EXPERT_FP8, "fp8");
    run_format(DSV4_EXPERT_MXFP4, "mxfp4");
    run_format(DSV4_EXPERT_NVFP4, "nvfp4");
    TEST_DONE();
#endif
}
