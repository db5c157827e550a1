/*
 * test_devsim.c - the engine's device-backend paths without a GPU, through the
 * devsim backend (the CPU kernels behind a device's memory contract):
 *   - generation on devsim equals the cpu backend's, with 1 rank and with 2
 *     and 3 ranks whose collectives are staged through host memory;
 *   - weights uploaded into shareable memory (dsv4_model_upload_shared) and
 *     mapped by a second backend from the descriptor alone
 *     (dsv4_model_import) give the same tokens, also after the model and
 *     backend that made them are gone (only the descriptor kept);
 *   - an import refuses, with a message, a descriptor of another rank's
 *     weights, one too small, and one whose upload never completed.
 */
#include "base/dsv4.h"
#include "engine/model/generate.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "kernels/backend.h"
#include "tests/test.h"
#include "tools/mkmodel.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define VOCAB 512
#define NTOK  12

static const int32_t prompt[] = {3, 17, 101, 250, 7, 64, 33};
#define NP ((int)DSV4_ARRAY_LEN(prompt))

static int gen(const char *dir, const char *backend, int ranks, int mtp, int32_t *out)
{
    struct dsv4_gen_opts o;
    struct dsv4_gen_result r;
    dsv4_gen_opts_default(&o);
    o.max_tokens = NTOK;
    o.mtp = mtp;
    o.ranks = ranks;
    o.threads = 2;
    o.backend = backend;
    int rc = dsv4_generate(dir, prompt, NP, &o, &r);
    if (rc) {
        fprintf(stderr, "generate %s x%d: %s\n", backend, ranks, dsv4_errmsg());
        return rc;
    }
    if (r.n != NTOK)
        rc = -1;
    else
        memcpy(out, r.tokens, sizeof(int32_t) * NTOK);
    dsv4_gen_result_free(&r);
    return rc;
}

/* Greedy tokens of model m (a device copy for be) through the step API, MTP depth 1. */
static int greedy(const struct dsv4_model *m, struct dsv4_backend *be, int32_t *out)
{
    struct dsv4_step_opts so = {
            .max_seqs = 1, .max_tokens = NP, .max_ctx = 64, .mtp = 1, .threads = 1};
    struct dsv4_step *s = NULL;
    struct dsv4_step_result res;
    int rc = dsv4_step_create(m, be, NULL, &so, &s);
    if (!rc)
        rc = dsv4_step_seq_add(s, 1);
    struct dsv4_step_entry e = {.id = 1,
                                .start = 0,
                                .n = NP,
                                .tokens = prompt,
                                .sample = true,
                                .max_emit = 2,
                                .n_prompt = NP};
    e.params = dsv4_sample_params_default();
    e.params.temperature = 0.0f;
    int n = 0;
    int64_t pos = NP;
    int32_t last, drafts[DSV4_STEP_MAX_DRAFTS];
    while (!rc && n < NTOK) {
        if ((rc = dsv4_step_run(s, &e, 1, &res)))
            break;
        for (int i = 0; i < res.n_tokens && n < NTOK; i++)
            out[n++] = res.tokens[i];
        last = res.tokens[res.n_tokens - 1];
        pos += res.n_tokens;
        memcpy(drafts, res.drafts, sizeof drafts);
        e.start = pos - 1;
        e.n = 1;
        e.tokens = &last;
        e.n_drafts = res.n_drafts;
        e.drafts = drafts;
    }
    if (rc)
        fprintf(stderr, "greedy: %s\n", dsv4_errmsg());
    dsv4_step_free(s);
    return rc;
}

static void shared_weights(const char *dir, const int32_t *want)
{
    struct dsv4_model *m = NULL, *dm = NULL, *im = NULL;
    struct dsv4_backend *a = NULL, *b = NULL;
    int32_t got[NTOK];
    int fd = -1;
    CHECK_INT(dsv4_model_open(dir, 0, 1, &m), 0);
    CHECK_INT(dsv4_backend_create("devsim", 2, &a), 0);
    CHECK_INT(dsv4_backend_create("devsim", 2, &b), 0);
    if (!m || !a || !b)
        goto out;
    CHECKF(dsv4_model_upload_shared(m, a, &fd, &dm) == 0, "upload_shared: %s", dsv4_errmsg());
    CHECK(fd >= 0 && dm != NULL);
    if (!dm)
        goto out;
    CHECK_INT(greedy(dm, a, got), 0);
    CHECK(!memcmp(got, want, sizeof got));
    /* the maker gone: only the descriptor refers to the weights */
    dsv4_model_close(dm);
    dm = NULL;
    dsv4_backend_destroy(a);
    a = NULL;
    CHECKF(dsv4_model_import(m, b, fd, &im) == 0, "import: %s", dsv4_errmsg());
    if (im) {
        memset(got, 0, sizeof got);
        CHECK_INT(greedy(im, b, got), 0);
        CHECK(!memcmp(got, want, sizeof got));
        dsv4_model_close(im);
        im = NULL;
    }
    /* another rank's layout */
    struct dsv4_model *m1 = NULL;
    CHECK_INT(dsv4_model_open(dir, 1, 2, &m1), 0);
    if (m1) {
        CHECK(dsv4_model_import(m1, b, fd, &im) != 0 && !im);
        CHECKF(strstr(dsv4_errmsg(), "not this rank's") != NULL, "message: %s", dsv4_errmsg());
        dsv4_model_close(m1);
    }
    /* too small: a descriptor of one page */
    int small = memfd_create("dsv4-test-small", MFD_CLOEXEC);
    CHECK(small >= 0 && ftruncate(small, 4096) == 0);
    CHECK(dsv4_model_import(m, b, small, &im) != 0 && !im);
    CHECKF(strstr(dsv4_errmsg(), "import") != NULL, "message: %s", dsv4_errmsg());
    /* the right size but never completed (zeros: no header) */
    CHECK(ftruncate(small, 1 << 30) == 0);
    CHECK(dsv4_model_import(m, b, small, &im) != 0 && !im);
    CHECKF(strstr(dsv4_errmsg(), "complete 0") != NULL, "message: %s", dsv4_errmsg());
    close(small);
out:
    if (fd >= 0)
        close(fd);
    dsv4_model_close(dm);
    dsv4_backend_destroy(a);
    dsv4_backend_destroy(b);
    dsv4_model_close(m);
}

int main(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny", test_tmpdir());
    struct dsv4_config cfg;
    CHECK_INT(dsv4_mkmodel_preset("tiny", VOCAB, DSV4_EXPERT_NVFP4, &cfg), 0);
    struct dsv4_mkmodel_opts mo = {&cfg, 5, 1, NULL, dir};
    int rc = dsv4_mkmodel_write(&mo);
    CHECKF(rc == 0, "mkmodel: %s", dsv4_errmsg());
    if (rc)
        TEST_DONE();
    int32_t want[NTOK], got[NTOK];
    CHECK_INT(gen(dir, "cpu", 1, 1, want), 0);
    for (int ranks = 1; ranks <= 3; ranks++) {
        memset(got, 0, sizeof got);
        CHECK_INT(gen(dir, "devsim", ranks, 1, got), 0);
        CHECKF(!memcmp(got, want, sizeof got), "devsim with %d ranks differs from cpu", ranks);
    }
    memset(got, 0, sizeof got);
    CHECK_INT(gen(dir, "devsim", 2, 0, got), 0);
    CHECKF(!memcmp(got, want, sizeof got), "devsim, 2 ranks, MTP off differs");
    shared_weights(dir, want);
    TEST_DONE();
}
