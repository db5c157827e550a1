/*
 * bench_cuda.c - timings of the CUDA backend on a GPU (not a test: it
 * prints numbers and asserts nothing; exits 77 without a device).
 *
 *   1. the ceiling: device-to-device copy bandwidth (bytes read + written);
 *   2. kernels through the op table at V4-Pro shapes of one rank of 8:
 *      GEMV (m = 1) per weight format in GB/s of weights read, next to the
 *      copy bandwidth; tiled GEMMs (m = 512) in TFLOP/s; attention decode,
 *      MoE decode, hc_pre, the indexer in microseconds (and GB/s where the
 *      bytes are clear);
 *   3. decode throughput of the `small` preset through the step API
 *      (dsv4_step_run, greedy) at batch 1, 8 and 64, with MTP off and on,
 *      eager and with decode graphs (opts.graphs, recorded in a warm-up
 *      before the timing) (tok/s counts emitted tokens, accepted drafts
 *      included).
 * Each kernel timing: 3 warm-up calls, then the median over 5 runs of a
 * batch of calls ended by one sync (so launch gaps count, as in a server
 * without graphs).  Lines "RESULT name value unit" are for scripts; a table
 * comes last.  --json FILE writes the results as one JSON object.
 *
 * usage: bench_cuda [--model DIR] [--json FILE] [--quick]
 *   --model DIR  a `small` checkpoint to decode with (default: written to $DSV4_TMP)
 *   --quick      fewer shapes and steps (the dry run of tests/gpu/device-check.sh)
 */
#include "base/dsv4.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "engine/sample/sample.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda.h"
#include "kernels/formats.h"
#include "tools/mkmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXRES 64

static struct dsv4_backend *BE;
static struct {
    char name[64];
    double value;
    const char *unit;
} res[MAXRES];
static int nres;
static bool quick;

static void result(const char *name, double v, const char *unit)
{
    printf("RESULT %s %.4g %s\n", name, v, unit);
    fflush(stdout);
    if (nres < MAXRES) {
        snprintf(res[nres].name, sizeof res[nres].name, "%s", name);
        res[nres].value = v;
        res[nres].unit = unit;
        nres++;
    }
}

static uint64_t rng = 0x853c49e6748fea9bull;

static uint32_t u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static float frand(void)
{
    return ((float)(u32() % 20001) / 10000.0f - 1.0f);
}

/* Device buffer of random bytes (no E4M3 NaN codes) or random floats. */
static void *dev_bytes(size_t n)
{
    uint8_t *h = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        h[i] = (uint8_t)u32();
        if ((h[i] & 0x7f) == 0x7f)
            h[i] ^= 1;
    }
    void *d = BE->alloc(BE, n);
    if (!d || BE->upload(BE, d, h, n)) {
        fprintf(stderr, "bench: device memory: %s\n", dsv4_errmsg());
        exit(1);
    }
    free(h);
    return d;
}

static float *dev_floats(size_t n, float scale)
{
    float *h = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        h[i] = dsv4_bf16_round(frand() * scale);
    float *d = BE->alloc(BE, sizeof(float) * n);
    if (!d || BE->upload(BE, d, h, sizeof(float) * n)) {
        fprintf(stderr, "bench: device memory: %s\n", dsv4_errmsg());
        exit(1);
    }
    free(h);
    return d;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds per call of fn(arg): median of 5 runs of `iters` calls ended by a sync. */
static double time_op(void (*fn)(void *), void *arg, int iters)
{
    double t[5];
    for (int i = 0; i < 3; i++)
        fn(arg);
    BE->sync(BE);
    for (int r = 0; r < 5; r++) {
        double t0 = dsv4_now();
        for (int i = 0; i < iters; i++)
            fn(arg);
        BE->sync(BE);
        t[r] = (dsv4_now() - t0) / iters;
    }
    qsort(t, 5, sizeof *t, cmp_d);
    return t[2];
}

/* ------------------------------------------------------------ copy bandwidth */

struct copy_job {
    void *a, *b;
    size_t n;
};

static void do_copy(void *arg)
{
    struct copy_job *j = arg;
    BE->copy2d(BE, j->b, 0, j->a, 0, j->n, 1);
}

static double bench_copy(void)
{
    struct copy_job j = {NULL, NULL, (size_t)(quick ? 256 : 2048) << 20};
    j.a = BE->alloc(BE, j.n);
    j.b = BE->alloc(BE, j.n);
    if (!j.a || !j.b) {
        fprintf(stderr, "bench: no memory for the copy\n");
        return 0;
    }
    double t = time_op(do_copy, &j, 5);
    BE->free(BE, j.a);
    BE->free(BE, j.b);
    double bw = 2.0 * (double)j.n / t / 1e9;
    result("copy_d2d", bw, "GB/s");
    return bw;
}

/* ------------------------------------------------------------ GEMMs */

struct lin_job {
    struct dsv4_lin l;
    float *x, *y;
    int64_t m;
};

static void do_lin(void *arg)
{
    struct lin_job *j = arg;
    BE->linear(BE, &j->l, DSV4_F2(j->x, j->m, j->l.w.cols), DSV4_F2(j->y, j->m, j->l.w.rows),
               DSV4_OP_BF16);
}

static void bench_linear(const char *name, enum dsv4_wfmt fmt, enum dsv4_act act, int64_t N,
                         int64_t K, int64_t m)
{
    struct lin_job j = {.m = m};
    struct dsv4_qweight *q = &j.l.w;
    q->fmt = fmt;
    q->rows = N;
    q->cols = K;
    q->scale2 = 0.0173f;
    q->input_scale = 1.0f;
    j.l.act = act;
    uint64_t all = dsv4_qweight_bytes(q), sb = 0;
    if (fmt == DSV4_WFMT_FP8)
        sb = (uint64_t)((N + 127) / 128) * ((K + 127) / 128);
    else if (fmt == DSV4_WFMT_MXFP4)
        sb = (uint64_t)N * ((K + 31) / 32);
    else if (fmt == DSV4_WFMT_NVFP4)
        sb = (uint64_t)N * ((K + 15) / 16);
    q->w = dev_bytes(all - sb);
    if (sb) {
        uint8_t *s = dev_bytes(sb);
        q->scale = s;
    }
    if (fmt == DSV4_WFMT_BF16 || fmt == DSV4_WFMT_F32) {
        /* real values instead of random bit patterns (no NaN/inf) */
        BE->free(BE, (void *)q->w);
        size_t n = (size_t)(N * K);
        if (fmt == DSV4_WFMT_F32) {
            q->w = dev_floats(n, 0.02f);
        } else {
            uint16_t *h = malloc(2 * n);
            for (size_t i = 0; i < n; i++)
                h[i] = dsv4_f32_to_bf16(frand() * 0.02f);
            void *d = BE->alloc(BE, 2 * n);
            BE->upload(BE, d, h, 2 * n);
            free(h);
            q->w = d;
        }
    }
    if (fmt == DSV4_WFMT_FP8 || fmt == DSV4_WFMT_MXFP4) {
        /* E8M0 scales near 2^-8 */
        uint8_t *h = malloc(sb);
        for (uint64_t i = 0; i < sb; i++)
            h[i] = (uint8_t)(118 + u32() % 4);
        BE->upload(BE, (void *)q->scale, h, sb);
        free(h);
    }
    j.x = dev_floats((size_t)(m * K), 1.0f);
    j.y = BE->alloc(BE, sizeof(float) * (size_t)(m * N));
    double t = time_op(do_lin, &j, m == 1 ? 50 : 5);
    char n[64];
    if (m == 1) {
        snprintf(n, sizeof n, "gemv_%s", name);
        result(n, (double)all / t / 1e9, "GB/s");
    } else {
        snprintf(n, sizeof n, "gemm_%s_m%lld", name, (long long)m);
        result(n, 2.0 * (double)m * N * K / t / 1e12, "TFLOP/s");
    }
    BE->free(BE, (void *)q->w);
    if (q->scale)
        BE->free(BE, (void *)q->scale);
    BE->free(BE, j.x);
    BE->free(BE, j.y);
}

/* ------------------------------------------------------------ hc_pre, MoE */

struct hc_job {
    struct dsv4_hc_params p;
    float *X, *nw, *y, *xn, *post, *comb;
    int64_t T, D;
};

static void do_hc(void *arg)
{
    struct hc_job *j = arg;
    BE->hc_pre(BE, &j->p, DSV4_F3(j->X, j->T, 4, j->D), j->nw, 1e-6f, DSV4_F2(j->y, j->T, j->D),
               DSV4_F2(j->xn, j->T, j->D), DSV4_F2(j->post, j->T, 4), DSV4_F3(j->comb, j->T, 4, 4));
}

static void bench_hc(int64_t T)
{
    int64_t D = 7168;
    struct hc_job j = {.T = T, .D = D};
    j.p.fn = dev_floats(24 * 4 * D, 0.01f);
    j.p.base = dev_floats(24, 0.1f);
    j.p.scale[0] = j.p.scale[1] = j.p.scale[2] = 0.5f;
    j.p.hc = 4;
    j.p.iters = 20;
    j.p.norm_eps = j.p.hc_eps = 1e-6f;
    j.X = dev_floats((size_t)(T * 4 * D), 1.0f);
    j.nw = dev_floats((size_t)D, 1.0f);
    j.y = BE->alloc(BE, sizeof(float) * T * D);
    j.xn = BE->alloc(BE, sizeof(float) * T * D);
    j.post = BE->alloc(BE, sizeof(float) * T * 4);
    j.comb = BE->alloc(BE, sizeof(float) * T * 16);
    double t = time_op(do_hc, &j, 20);
    char n[64];
    snprintf(n, sizeof n, "hc_pre_T%lld", (long long)T);
    result(n, t * 1e6, "us");
    void *bufs[] = {(void *)j.p.fn, (void *)j.p.base, j.X, j.nw, j.y, j.xn, j.post, j.comb};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bufs); i++)
        BE->free(BE, bufs[i]);
}

struct moe_job {
    struct dsv4_moe_args a;
};

static void do_moe(void *arg)
{
    struct moe_job *j = arg;
    BE->moe(BE, &j->a);
}

/* MXFP4 experts of V4-Pro (D 7168, I 3072), 48 local of 384, top 6. */
static void bench_moe(int T)
{
    const int E = 384, e0 = 0, e1 = 48, k = 6;
    const int64_t D = 7168, I = 3072;
    int ne = e1 - e0;
    struct dsv4_ffn_w *ex = calloc(ne, sizeof *ex);
    uint64_t per = 0;
    for (int e = 0; e < ne; e++) {
        struct dsv4_lin *ls[3] = {&ex[e].w1, &ex[e].w2, &ex[e].w3};
        for (int p = 0; p < 3; p++) {
            struct dsv4_qweight *q = &ls[p]->w;
            q->fmt = DSV4_WFMT_MXFP4;
            q->rows = p == 1 ? D : I;
            q->cols = p == 1 ? I : D;
            q->scale2 = q->input_scale = 1.0f;
            ls[p]->act = DSV4_ACT_FP8;
            uint64_t wb = (uint64_t)q->rows * (q->cols / 2),
                     sb = (uint64_t)q->rows * (q->cols / 32);
            q->w = dev_bytes(wb);
            uint8_t *h = malloc(sb);
            for (uint64_t i = 0; i < sb; i++)
                h[i] = (uint8_t)(118 + u32() % 4);
            void *s = BE->alloc(BE, sb);
            BE->upload(BE, s, h, sb);
            free(h);
            q->scale = s;
            if (e == 0)
                per += wb + sb;
        }
    }
    struct dsv4_ffn_w *dex = BE->alloc(BE, sizeof *ex * ne);
    BE->upload(BE, dex, ex, sizeof *ex * ne);
    int32_t *ids = malloc(sizeof(int32_t) * T * k);
    float *w = malloc(sizeof(float) * T * k);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < k; i++) {
            ids[t * k + i] = (int32_t)((t * 37 + i * 61) % E); /* some local, most not */
            w[t * k + i] = 0.4f;
        }
    struct moe_job j;
    j.a = (struct dsv4_moe_args){.T = T,
                                 .k = k,
                                 .D = D,
                                 .I = I,
                                 .x = dev_floats((size_t)T * D, 1.0f),
                                 .e0 = e0,
                                 .e1 = e1,
                                 .ex = dex,
                                 .limit = 10.0f,
                                 .slots = k + 1};
    int32_t *dids = BE->alloc(BE, sizeof(int32_t) * T * k);
    float *dw = BE->alloc(BE, sizeof(float) * T * k);
    BE->upload(BE, dids, ids, sizeof(int32_t) * T * k);
    BE->upload(BE, dw, w, sizeof(float) * T * k);
    j.a.ids = dids;
    j.a.wts = dw;
    j.a.out = BE->alloc(BE, sizeof(float) * (size_t)T * (k + 1) * D);
    /* distinct local experts hit: their weights are the bytes one call must read */
    int hit = 0;
    for (int e = e0; e < e1; e++) {
        int used = 0;
        for (int i = 0; i < T * k && !used; i++)
            used = ids[i] == e;
        hit += used;
    }
    double t = time_op(do_moe, &j, 10);
    char n[64];
    snprintf(n, sizeof n, "moe_mxfp4_T%d", T);
    result(n, t * 1e6, "us");
    snprintf(n, sizeof n, "moe_mxfp4_T%d_bw", T);
    result(n, (double)hit * per / t / 1e9, "GB/s");
    for (int e = 0; e < ne; e++) {
        struct dsv4_lin *ls[3] = {&ex[e].w1, &ex[e].w2, &ex[e].w3};
        for (int p = 0; p < 3; p++) {
            BE->free(BE, (void *)ls[p]->w.w);
            BE->free(BE, (void *)ls[p]->w.scale);
        }
    }
    BE->free(BE, dex);
    BE->free(BE, (void *)j.a.x);
    BE->free(BE, dids);
    BE->free(BE, dw);
    BE->free(BE, j.a.out);
    free(ex);
    free(ids);
    free(w);
}

/* ------------------------------------------------------------ decode through the step API */

static int bench_decode(const char *dir, int B, int mtp, int steps, bool graphs)
{
    struct dsv4_model *m = NULL;
    struct dsv4_step *s = NULL;
    int rc = dsv4_model_open(dir, 0, 1, &m);
    struct dsv4_step_opts so = {.max_seqs = B,
                                .max_tokens = B * (1 + mtp) + 16 * B,
                                .max_ctx = 16 + steps * (1 + mtp) + 8,
                                .mtp = mtp,
                                .threads = 1,
                                .graphs = graphs};
    if (!rc)
        rc = dsv4_step_create(m, BE, NULL, &so, &s);
    if (!rc)
        rc = dsv4_step_warm(s);
    if (rc) {
        fprintf(stderr, "bench: decode B %d mtp %d: %s\n", B, mtp, dsv4_errmsg());
        dsv4_model_close(m);
        return rc;
    }
    int V = dsv4_model_config(m)->vocab_size;
    struct dsv4_step_entry *e = calloc(B, sizeof *e);
    struct dsv4_step_result *r = calloc(B, sizeof *r);
    int32_t *prompt = malloc(sizeof(int32_t) * 16 * B), *last = malloc(sizeof(int32_t) * B);
    int32_t(*drafts)[DSV4_STEP_MAX_DRAFTS] = calloc(B, sizeof *drafts);
    int *nd = calloc(B, sizeof(int));
    int64_t *len = calloc(B, sizeof(int64_t));
    for (int b = 0; b < B; b++) {
        dsv4_step_seq_add(s, (uint64_t)b + 1);
        for (int i = 0; i < 16; i++)
            prompt[b * 16 + i] = (int32_t)((b * 131 + i * 17 + 5) % V);
        e[b] = (struct dsv4_step_entry){.id = (uint64_t)b + 1,
                                        .start = 0,
                                        .n = 16,
                                        .tokens = prompt + b * 16,
                                        .sample = true,
                                        .max_emit = 1 + mtp,
                                        .n_prompt = 16,
                                        .params = dsv4_sample_params_default()};
        e[b].params.temperature = 0.0f;
    }
    if ((rc = dsv4_step_run(s, e, B, r)))
        goto out;
    for (int b = 0; b < B; b++) {
        len[b] = 16;
        last[b] = r[b].tokens[r[b].n_tokens - 1];
        nd[b] = r[b].n_drafts;
        memcpy(drafts[b], r[b].drafts, sizeof(int32_t) * r[b].n_drafts);
    }
    BE->sync(BE);
    double t0 = dsv4_now();
    uint64_t emitted = 0;
    for (int st = 0; st < steps; st++) {
        for (int b = 0; b < B; b++) {
            e[b].start = len[b];
            e[b].n = 1;
            e[b].tokens = &last[b];
            e[b].n_drafts = nd[b];
            e[b].drafts = drafts[b];
        }
        if ((rc = dsv4_step_run(s, e, B, r)))
            goto out;
        for (int b = 0; b < B; b++) {
            emitted += (uint64_t)r[b].n_tokens;
            len[b] += r[b].n_tokens;
            last[b] = r[b].tokens[r[b].n_tokens - 1];
            nd[b] = r[b].n_drafts;
            memcpy(drafts[b], r[b].drafts, sizeof(int32_t) * r[b].n_drafts);
        }
    }
    double t = dsv4_now() - t0;
    char n[64];
    snprintf(n, sizeof n, "decode_small_B%d_mtp%d%s", B, mtp, graphs ? "_graphs" : "");
    result(n, (double)emitted / t, "tok/s");
    struct dsv4_step_stats sts;
    dsv4_step_get_stats(s, &sts);
    if (mtp) {
        snprintf(n, sizeof n, "decode_small_B%d_mtp%d%s_accept", B, mtp, graphs ? "_graphs" : "");
        result(n, sts.drafted ? 100.0 * sts.accepted / sts.drafted : 0, "%");
    }
out:
    if (rc)
        fprintf(stderr, "bench: decode: %s\n", dsv4_errmsg());
    free(e);
    free(r);
    free(prompt);
    free(last);
    free(drafts);
    free(nd);
    free(len);
    dsv4_step_free(s);
    dsv4_model_close(m);
    return rc;
}

static int make_small(char *dir, size_t len)
{
    const char *tmp = getenv("DSV4_TMP");
    snprintf(dir, len, "%s/bench-small", tmp ? tmp : "/tmp");
    struct dsv4_config cfg;
    int rc = dsv4_mkmodel_preset("small", 129280, DSV4_EXPERT_MXFP4, &cfg);
    struct dsv4_mkmodel_opts mo = {&cfg, 1, 1, NULL, dir};
    if (!rc)
        rc = dsv4_mkmodel_write(&mo);
    if (rc)
        fprintf(stderr, "bench: mkmodel: %s\n", dsv4_errmsg());
    return rc;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else {
            fprintf(stderr, "usage: bench_cuda [--model DIR] [--json FILE] [--quick]\n");
            return 2;
        }
    }
    int n = dsv4_cuda_device_count();
    if (n <= 0 || dsv4_backend_create("cuda", 1, &BE)) {
        printf("no usable CUDA device: %s\n", dsv4_errmsg());
        return 77;
    }
    struct dsv4_be_limits lim = {.tokens = 512,
                                 .cols = 16384,
                                 .hidden = 7168,
                                 .inter = 3072,
                                 .experts = 384,
                                 .topk = 6,
                                 .keys = 1280,
                                 .entries = 4096,
                                 .head_dim = 512,
                                 .index_head_dim = 128,
                                 .index_heads = 64,
                                 .vocab = 129280};
    if (BE->reserve(BE, &lim)) {
        fprintf(stderr, "bench: reserve: %s\n", dsv4_errmsg());
        return 1;
    }
    double bw = bench_copy();
    /* one rank of 8: wq_a, wo_b (FP8), an expert's w1 (MXFP4, NVFP4 W4A4), the head shard */
    bench_linear("fp8_1536x7168", DSV4_WFMT_FP8, DSV4_ACT_FP8, 1536, 7168, 1);
    bench_linear("fp8_7168x16384", DSV4_WFMT_FP8, DSV4_ACT_FP8, 7168, 16384, 1);
    bench_linear("mxfp4_3072x7168", DSV4_WFMT_MXFP4, DSV4_ACT_FP8, 3072, 7168, 1);
    bench_linear("nvfp4_3072x7168", DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4, 3072, 7168, 1);
    bench_linear("bf16_16160x7168", DSV4_WFMT_BF16, DSV4_ACT_F32, 16160, 7168, 1);
    if (!quick) {
        bench_linear("fp8_7168x7168", DSV4_WFMT_FP8, DSV4_ACT_FP8, 7168, 7168, 512);
        bench_linear("nvfp4_3072x7168", DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4, 3072, 7168, 512);
    }
    bench_hc(1);
    bench_hc(64);
    bench_moe(1);
    if (!quick)
        bench_moe(64);
    char dir[4096];
    if (!model) {
        if (make_small(dir, sizeof dir))
            return 1;
        model = dir;
    }
    static const int Bs[3] = {1, 8, 64};
    for (int bi = 0; bi < 3; bi++)
        for (int mtp = 0; mtp <= 1; mtp++)
            for (int g = 0; g <= 1; g++)
                bench_decode(model, Bs[bi], mtp, quick ? 8 : 48, g);
    printf("\n%-32s %12s\n", "benchmark", "value");
    for (int i = 0; i < nres; i++)
        printf("%-32s %12.4g %s\n", res[i].name, res[i].value, res[i].unit);
    printf("(copy bandwidth %.4g GB/s is the GEMV ceiling)\n", bw);
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{");
            for (int i = 0; i < nres; i++)
                fprintf(f, "%s\"%s\": {\"value\": %.6g, \"unit\": \"%s\"}", i ? ", " : "",
                        res[i].name, res[i].value, res[i].unit);
            fprintf(f, "}\n");
            fclose(f);
        }
    }
    dsv4_backend_destroy(BE);
    return 0;
}
