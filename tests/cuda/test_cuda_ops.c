/*
 * test_cuda_ops.c - every op of the CUDA backend against the host backends
 * (kernels/backend.h), op by op, over several shapes with tails and odd
 * sizes.  Needs a GPU: exits 77 when there is none (or no CUDA in the
 * build's runtime), so `make check` skips it on machines without one.
 *
 * Inputs are random (fresh per shape, never all zeros), outputs are
 * poisoned with NaN before each call so an unwritten element fails, and
 * NaN never passes a comparison.  Stated tolerances (the backend's
 * contract, kernels/cuda/cuda.h and plan.h):
 *   exact (bit for bit vs ref): data movement, conversions, act_sim,
 *     hadamard, embed, hc_expand, hc_post, moe_combine, argmax, kv_store,
 *     kv_select, linear and linear_grouped on the FP8 and NVFP4 activation
 *     paths;
 *   <= 4 ulp: rope, swiglu, routing weights (double-evaluated cos/sin/exp vs
 *     glibc's float versions; routed ids exact);
 *   normalised error <= 1e-6 and <= 1 BF16 ulp where rounded to BF16:
 *     rmsnorm, hc_pre, hc_head (sums of squares / mix in another order),
 *     linear on the F32 activation path (another order of FP32 sums);
 *   normalised error <= 2e-3 with >= 99% identical: moe (its SwiGLU exp
 *     can flip a BF16 rounding), kv_compress entries; <= 1e-3: attn.
 * Batch invariance: a row's linear result is the same bits in a batch of
 * 1 and of 100 (GEMV vs tiled kernels).
 */
#include "base/dsv4.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda.h"
#include "kernels/formats.h"
#include "tests/kernels/lintest.h"
#include "tests/test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct dsv4_backend *REF, *CU;

/* ------------------------------------------------------------ helpers */

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float frand(int lo, int hi)
{
    return lt_val(lo, hi);
}

static float *falloc(size_t n)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p)
        abort();
    return p;
}

static void fill(float *x, size_t n, int lo, int hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand(lo, hi);
}

static void fill_bf16(float *x, size_t n, int lo, int hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = dsv4_bf16_round(frand(lo, hi));
}

static void poison(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

/* Device copy of host bytes (and the poisoned device buffer of an output). */
static void *dev(const void *h, size_t bytes)
{
    void *d = CU->alloc(CU, bytes ? bytes : 1);
    if (!d || (bytes && CU->upload(CU, d, h, bytes)))
        abort();
    return d;
}

static void back(void *h, const void *d, size_t bytes)
{
    if (CU->download(CU, h, d, bytes)) {
        fprintf(stderr, "download: %s\n", dsv4_errmsg());
        abort();
    }
}

static void undev(void *d)
{
    CU->free(CU, d);
}

/* Bitwise equal; a NaN matches only a NaN of the oracle (a poisoned output fails). */
static int cmp_exact(const char *what, const float *a, const float *b, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (fbits(a[i]) != fbits(b[i]) && !(a[i] != a[i] && b[i] != b[i]) && bad++ < 3)
            fprintf(stderr, "%s: [%zu] cuda %.9g ref %.9g\n", what, i, (double)a[i], (double)b[i]);
    CHECKF(bad == 0, "%s: %d of %zu values differ", what, bad, n);
    return bad;
}

/* Within `ulp` units in the last place of FP32 (same sign), NaN failing. */
static int cmp_ulp(const char *what, const float *a, const float *b, size_t n, int ulp)
{
    int bad = 0, inexact = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t d = (int64_t)fbits(a[i]) - (int64_t)fbits(b[i]);
        bool ok = a[i] == a[i] && b[i] == b[i] && (a[i] == b[i] || (d <= ulp && d >= -ulp));
        inexact += fbits(a[i]) != fbits(b[i]);
        if (!ok && bad++ < 3)
            fprintf(stderr, "%s: [%zu] cuda %.9g ref %.9g\n", what, i, (double)a[i], (double)b[i]);
    }
    fprintf(stderr, "%s: %d of %zu not bit-identical\n", what, inexact, n);
    CHECKF(bad == 0, "%s: %d of %zu values beyond %d ulp", what, bad, n, ulp);
    return bad;
}

/* ||a - b|| / ||b|| <= tol, all finite; frac_same: the least fraction of identical values. */
static double cmp_nerr(const char *what, const float *a, const float *b, size_t n, double tol,
                       double frac_same)
{
    double num = 0, den = 0;
    size_t same = 0, nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i]))
            nonfinite++;
        same += fbits(a[i]) == fbits(b[i]);
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    fprintf(stderr, "%s: normalised error %.3g, %zu of %zu identical\n", what, e, same, n);
    CHECKF(nonfinite == 0 && e <= tol && (double)same >= frac_same * (double)n,
           "%s: error %.3g (tol %.3g), %zu of %zu identical, %zu non-finite", what, e, tol, same, n,
           nonfinite);
    return e;
}

/* BF16 values within one BF16 ulp. */
static void cmp_bf16_ulp(const char *what, const float *a, const float *b, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t d = (int32_t)(fbits(a[i]) >> 16) - (int32_t)(fbits(b[i]) >> 16);
        if (!(a[i] == a[i]) || d > 1 || d < -1)
            bad++;
    }
    CHECKF(bad == 0, "%s: %d of %zu values beyond one BF16 ulp", what, bad, n);
}

/* ------------------------------------------------------------ data movement, elementwise */

static void test_movement(void)
{
    enum { N = 37, W = 13 };
    float *src = falloc(N * W), *a = falloc(N * W), *b = falloc(N * W);
    int32_t idx[N];
    fill(src, N * W, -3, 3);
    for (int i = 0; i < N; i++)
        idx[i] = (int32_t)(lt_u32() % N);
    float *ds = dev(src, sizeof(float) * N * W), *dd = CU->alloc(CU, sizeof(float) * N * W);
    int32_t *di = dev(idx, sizeof idx);
    REF->gather_rows(REF, DSV4_F2(src, N, W), DSV4_T1(idx, DSV4_DTYPE_I32, N), DSV4_F2(b, N, W));
    CU->gather_rows(CU, DSV4_F2(ds, N, W), DSV4_T1(di, DSV4_DTYPE_I32, N), DSV4_F2(dd, N, W));
    back(a, dd, sizeof(float) * N * W);
    cmp_exact("gather_rows", a, b, N * W);
    /* copy2d of a column band, and a flat copy */
    REF->copy2d(REF, b, W * 4, src + 2, W * 4, 5 * 4, N);
    CU->copy2d(CU, dd, W * 4, ds + 2, W * 4, 5 * 4, N);
    back(a, dd, sizeof(float) * N * W);
    cmp_exact("copy2d", a, b, N * W);
    CU->fill_zero(CU, DSV4_F2(dd, N, W));
    back(a, dd, sizeof(float) * N * W);
    int nz = 0;
    for (int i = 0; i < N * W; i++)
        nz += fbits(a[i]) != 0;
    CHECK(nz == 0);
    /* convert both ways, round_bf16 */
    uint16_t hb[N * W], db[N * W];
    uint16_t *dbd = CU->alloc(CU, sizeof db);
    REF->convert(REF, DSV4_F2(src, N, W), DSV4_T2(hb, DSV4_DTYPE_BF16, N, W));
    CU->convert(CU, DSV4_F2(ds, N, W), DSV4_T2(dbd, DSV4_DTYPE_BF16, N, W));
    back(db, dbd, sizeof db);
    CHECK(!memcmp(hb, db, sizeof hb));
    REF->convert(REF, DSV4_T2(hb, DSV4_DTYPE_BF16, N, W), DSV4_F2(b, N, W));
    CU->convert(CU, DSV4_T2(dbd, DSV4_DTYPE_BF16, N, W), DSV4_F2(dd, N, W));
    back(a, dd, sizeof(float) * N * W);
    cmp_exact("convert bf16->f32", a, b, N * W);
    memcpy(b, src, sizeof(float) * N * W);
    REF->round_bf16(REF, DSV4_F2(b, N, W));
    CU->round_bf16(CU, DSV4_F2(ds, N, W));
    back(a, ds, sizeof(float) * N * W);
    cmp_exact("round_bf16", a, b, N * W);
    undev(ds);
    undev(dd);
    undev(di);
    undev(dbd);
    free(src);
    free(a);
    free(b);
}

static void test_elementwise(void)
{
    /* act_sim FP8 per 64 on a strided view [T, 448] of rows of 512; FP4 per 32 */
    enum { T = 9, LD = 512 };
    float *x = falloc(T * LD), *a = falloc(T * LD), *b = falloc(T * LD);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < LD; i++)
            x[t * LD + i] = frand(-8 + t, -2 + t);
    float *dx = dev(x, sizeof(float) * T * LD);
    memcpy(b, x, sizeof(float) * T * LD);
    REF->act_sim(REF, DSV4_T2S(b, DSV4_DTYPE_F32, T, 448, LD), DSV4_SIM_FP8, 64);
    CU->act_sim(CU, DSV4_T2S(dx, DSV4_DTYPE_F32, T, 448, LD), DSV4_SIM_FP8, 64);
    back(a, dx, sizeof(float) * T * LD);
    cmp_exact("act_sim fp8", a, b, T * LD);
    REF->act_sim(REF, DSV4_F2(b, T * 4, 128), DSV4_SIM_FP4, 32);
    CU->act_sim(CU, DSV4_F2(dx, T * 4, 128), DSV4_SIM_FP4, 32);
    back(a, dx, sizeof(float) * T * LD);
    cmp_exact("act_sim fp4", a, b, T * LD);
    /* hadamard: rows of 128 with BF16 rounding, rows of 64 without */
    fill(x, T * LD, -3, 2);
    memcpy(b, x, sizeof(float) * T * LD);
    CU->upload(CU, dx, x, sizeof(float) * T * LD);
    REF->hadamard(REF, DSV4_F2(b, T * 4, 128), DSV4_OP_BF16);
    CU->hadamard(CU, DSV4_F2(dx, T * 4, 128), DSV4_OP_BF16);
    REF->hadamard(REF, DSV4_F2(b, T * 8, 64), 0);
    CU->hadamard(CU, DSV4_F2(dx, T * 8, 64), 0);
    back(a, dx, sizeof(float) * T * LD);
    cmp_exact("hadamard", a, b, T * LD);
    undev(dx);
    free(x);
    free(a);
    free(b);
    /* rmsnorm: odd and real widths, weighted or not, in place or not */
    static const int64_t widths[] = {7, 300, 1536, 7168};
    for (size_t wi = 0; wi < DSV4_ARRAY_LEN(widths); wi++) {
        int64_t n = widths[wi], R = 5;
        float *xs = falloc(R * n), *w = falloc(n), *ya = falloc(R * n), *yb = falloc(R * n);
        fill_bf16(xs, R * n, -4, 3);
        for (int64_t i = 0; i < n; i++)
            w[i] = 1.0f + frand(-8, -5);
        float *dxs = dev(xs, sizeof(float) * R * n), *dw = dev(w, sizeof(float) * n);
        float *dy = CU->alloc(CU, sizeof(float) * R * n);
        for (int var = 0; var < 2; var++) {
            REF->rmsnorm(REF, DSV4_F2(xs, R, n), var ? w : NULL, 1e-6f, DSV4_F2(yb, R, n),
                         var ? DSV4_OP_BF16 : 0);
            CU->rmsnorm(CU, DSV4_F2(dxs, R, n), var ? dw : NULL, 1e-6f, DSV4_F2(dy, R, n),
                        var ? DSV4_OP_BF16 : 0);
            back(ya, dy, sizeof(float) * R * n);
            if (var)
                cmp_bf16_ulp("rmsnorm bf16", ya, yb, R * n);
            else
                cmp_ulp("rmsnorm", ya, yb, R * n, 2);
        }
        /* in place */
        memcpy(yb, xs, sizeof(float) * R * n);
        REF->rmsnorm(REF, DSV4_F2(yb, R, n), w, 1e-6f, DSV4_F2(yb, R, n), DSV4_OP_BF16);
        CU->rmsnorm(CU, DSV4_F2(dxs, R, n), dw, 1e-6f, DSV4_F2(dxs, R, n), DSV4_OP_BF16);
        back(ya, dxs, sizeof(float) * R * n);
        cmp_bf16_ulp("rmsnorm in place", ya, yb, R * n);
        undev(dxs);
        undev(dw);
        undev(dy);
        free(xs);
        free(w);
        free(ya);
        free(yb);
    }
    /* rope over [T, nh, dh], forward and inverse, rounded or not */
    {
        enum { RT = 7, NH = 3, DH = 128 };
        struct dsv4_rope rp;
        CHECK(dsv4_rope_init(&rp, 64, 160000.0, true, 16, 32, 1, 65536) == 0);
        float *q = falloc(RT * NH * DH), *qa = falloc(RT * NH * DH), *qb = falloc(RT * NH * DH);
        int64_t pos[RT];
        for (int t = 0; t < RT; t++)
            pos[t] = (int64_t)(lt_u32() % 1000000);
        fill_bf16(q, RT * NH * DH, -3, 2);
        int64_t *dpos = dev(pos, sizeof pos);
        for (int var = 0; var < 2; var++) {
            float *dq = dev(q, sizeof(float) * RT * NH * DH);
            memcpy(qb, q, sizeof(float) * RT * NH * DH);
            REF->rope(REF, DSV4_F3(qb, RT, NH, DH), pos, &rp, var, var ? DSV4_OP_BF16 : 0);
            CU->rope(CU, DSV4_F3(dq, RT, NH, DH), dpos, &rp, var, var ? DSV4_OP_BF16 : 0);
            back(qa, dq, sizeof(float) * RT * NH * DH);
            if (var)
                cmp_bf16_ulp("rope inverse bf16", qa, qb, RT * NH * DH);
            else
                cmp_ulp("rope", qa, qb, RT * NH * DH, 4);
            undev(dq);
        }
        undev(dpos);
        free(q);
        free(qa);
        free(qb);
    }
    /* swiglu, embed, hc_expand, moe_combine */
    {
        enum { ST = 11, SN = 301 };
        float *g = falloc(ST * SN), *u = falloc(ST * SN), *w = falloc(ST), *ha = falloc(ST * SN),
              *hb = falloc(ST * SN);
        fill_bf16(g, ST * SN, -3, 4);
        fill_bf16(u, ST * SN, -3, 4);
        fill(w, ST, -2, 1);
        float *dg = dev(g, sizeof(float) * ST * SN), *du = dev(u, sizeof(float) * ST * SN);
        float *dw = dev(w, sizeof(float) * ST), *dh = CU->alloc(CU, sizeof(float) * ST * SN);
        for (int var = 0; var < 2; var++) {
            REF->swiglu(REF, DSV4_F2(g, ST, SN), DSV4_F2(u, ST, SN), var ? 10.0f : 0.0f,
                        var ? w : NULL, DSV4_F2(hb, ST, SN), var ? DSV4_OP_BF16 : 0);
            CU->swiglu(CU, DSV4_F2(dg, ST, SN), DSV4_F2(du, ST, SN), var ? 10.0f : 0.0f,
                       var ? dw : NULL, DSV4_F2(dh, ST, SN), var ? DSV4_OP_BF16 : 0);
            back(ha, dh, sizeof(float) * ST * SN);
            if (var)
                cmp_bf16_ulp("swiglu bf16", ha, hb, ST * SN);
            else
                cmp_ulp("swiglu", ha, hb, ST * SN, 4);
        }
        undev(dg);
        undev(du);
        undev(dw);
        undev(dh);
        free(g);
        free(u);
        free(w);
        free(ha);
        free(hb);
    }
    {
        enum { V = 50, D = 33, TT = 20, HC = 4 };
        uint16_t table[V * D];
        for (int i = 0; i < V * D; i++)
            table[i] = dsv4_f32_to_bf16(frand(-2, 2));
        int32_t tok[TT];
        for (int t = 0; t < TT; t++)
            tok[t] = (int32_t)(lt_u32() % 60); /* some outside [v0, v0 + nv) */
        float *ea = falloc(TT * D), *eb = falloc(TT * D);
        uint16_t *dt = dev(table + 10 * D, sizeof(uint16_t) * 30 * D);
        int32_t *dtok = dev(tok, sizeof tok);
        float *de = CU->alloc(CU, sizeof(float) * TT * D);
        REF->embed(REF, table + 10 * D, 10, 30, DSV4_T1(tok, DSV4_DTYPE_I32, TT),
                   DSV4_F2(eb, TT, D));
        CU->embed(CU, dt, 10, 30, DSV4_T1(dtok, DSV4_DTYPE_I32, TT), DSV4_F2(de, TT, D));
        back(ea, de, sizeof(float) * TT * D);
        cmp_exact("embed", ea, eb, TT * D);
        float *ab = falloc(TT * HC * D), *oa = falloc(TT * HC * D), *ob = falloc(TT * HC * D);
        fill(ab, TT * HC * D, -3, 3);
        float *dab = dev(ab, sizeof(float) * TT * HC * D),
              *dout = CU->alloc(CU, sizeof(float) * TT * HC * D);
        for (int var = 0; var < 2; var++) {
            REF->hc_expand(REF, var ? DSV4_F3(ab, TT, HC, D) : NULL, DSV4_F2(eb, TT, D),
                           DSV4_F3(ob, TT, HC, D), var ? DSV4_OP_BF16 : 0);
            CU->hc_expand(CU, var ? DSV4_F3(dab, TT, HC, D) : NULL, DSV4_F2(de, TT, D),
                          DSV4_F3(dout, TT, HC, D), var ? DSV4_OP_BF16 : 0);
            back(oa, dout, sizeof(float) * TT * HC * D);
            cmp_exact("hc_expand", oa, ob, TT * HC * D);
        }
        /* moe_combine: [TT, HC, D] slots */
        REF->moe_combine(REF, DSV4_F3(ab, TT, HC, D), DSV4_F2(eb, TT, D), DSV4_OP_BF16);
        CU->moe_combine(CU, DSV4_F3(dab, TT, HC, D), DSV4_F2(de, TT, D), DSV4_OP_BF16);
        back(ea, de, sizeof(float) * TT * D);
        cmp_exact("moe_combine", ea, eb, TT * D);
        undev(dt);
        undev(dtok);
        undev(de);
        undev(dab);
        undev(dout);
        free(ea);
        free(eb);
        free(ab);
        free(oa);
        free(ob);
    }
    /* argmax: ties to the lowest id, NaN never wins, an all-NaN row gives 0 */
    {
        enum { AR = 6, AV = 100003 };
        float *l = falloc((size_t)AR * AV);
        for (size_t i = 0; i < (size_t)AR * AV; i++)
            l[i] = (float)(int)(lt_u32() % 1000);
        l[1 * AV + 5] = NAN;
        for (int i = 0; i < AV; i++)
            l[2 * AV + i] = NAN;
        l[3 * AV + 7] = 5000.0f;
        l[3 * AV + 99999] = 5000.0f;
        int32_t ia[AR], ib[AR];
        float *dl = dev(l, sizeof(float) * AR * AV);
        int32_t *dia = CU->alloc(CU, sizeof ia);
        REF->argmax(REF, DSV4_F2(l, AR, AV), ib);
        CU->argmax(CU, DSV4_F2(dl, AR, AV), dia);
        back(ia, dia, sizeof ia);
        for (int r = 0; r < AR; r++)
            CHECKF(ia[r] == ib[r], "argmax row %d: cuda %d ref %d", r, ia[r], ib[r]);
        undev(dl);
        undev(dia);
        free(l);
    }
}

/* ------------------------------------------------------------ linear */

struct dweight {
    struct dsv4_lin l; /* device pointers */
};

static void up_weight(const struct dsv4_qweight *h, struct dsv4_qweight *d)
{
    *d = *h;
    uint64_t all = dsv4_qweight_bytes(h), sb = 0, r = h->rows, c = h->cols;
    if (h->fmt == DSV4_WFMT_FP8)
        sb = ((r + 127) / 128) * ((c + 127) / 128);
    else if (h->fmt == DSV4_WFMT_MXFP4)
        sb = r * ((c + 31) / 32);
    else if (h->fmt == DSV4_WFMT_NVFP4)
        sb = r * ((c + 15) / 16);
    d->w = dev(h->w, all - sb);
    d->scale = sb ? dev(h->scale, sb) : NULL;
}

static void down_weight(struct dsv4_qweight *d)
{
    undev((void *)d->w);
    if (d->scale)
        undev((void *)d->scale);
}

static const struct {
    enum dsv4_wfmt fmt;
    enum dsv4_act act;
} paths[] = {{DSV4_WFMT_FP8, DSV4_ACT_FP8},   {DSV4_WFMT_MXFP4, DSV4_ACT_FP8},
             {DSV4_WFMT_NVFP4, DSV4_ACT_FP8}, {DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4},
             {DSV4_WFMT_BF16, DSV4_ACT_F32},  {DSV4_WFMT_F32, DSV4_ACT_F32},
             {DSV4_WFMT_FP8, DSV4_ACT_F32},   {DSV4_WFMT_MXFP4, DSV4_ACT_F32},
             {DSV4_WFMT_NVFP4, DSV4_ACT_F32}};

static void test_linear(void)
{
    static const int64_t shapes[][2] = {{1, 32}, {7, 96}, {130, 256}, {64, 1000}, {300, 4096}};
    static const int64_t ms[] = {1, 3, 8, 9, 17, 33, 64, 100};
    for (size_t pi = 0; pi < DSV4_ARRAY_LEN(paths); pi++)
        for (size_t si = 0; si < DSV4_ARRAY_LEN(shapes); si++) {
            int64_t R = shapes[si][0], K = shapes[si][1];
            struct lt_weight lw;
            lt_weight_make(&lw, paths[pi].fmt, R, K);
            struct dsv4_lin hl = {lw.q, paths[pi].act}, dl = hl;
            up_weight(&lw.q, &dl.w);
            int64_t M = 100;
            float *x = falloc(M * K), *ya = falloc(M * R), *yb = falloc(M * R), *y1 = falloc(R);
            lt_act_make(x, M, K);
            float *dx = dev(x, sizeof(float) * M * K), *dy = CU->alloc(CU, sizeof(float) * M * R);
            char what[128];
            for (size_t mi = 0; mi < DSV4_ARRAY_LEN(ms); mi++) {
                int64_t m = ms[mi];
                unsigned fl = mi % 2 ? DSV4_OP_BF16 : 0;
                poison(ya, m * R);
                CU->upload(CU, dy, ya, sizeof(float) * m * R);
                REF->linear(REF, &hl, DSV4_F2(x, m, K), DSV4_F2(yb, m, R), fl);
                CU->linear(CU, &dl, DSV4_F2(dx, m, K), DSV4_F2(dy, m, R), fl);
                back(ya, dy, sizeof(float) * m * R);
                snprintf(what, sizeof what, "linear %s/%s [%lld, %lld] m %lld",
                         dsv4_wfmt_name(paths[pi].fmt), dsv4_act_name(paths[pi].act), (long long)R,
                         (long long)K, (long long)m);
                if (paths[pi].act == DSV4_ACT_F32) {
                    cmp_nerr(what, ya, yb, m * R, fl ? 4e-3 : 1e-6, 0.0);
                } else {
                    cmp_exact(what, ya, yb, m * R);
                }
                /* batch invariance: the last row alone gives the same bits */
                CU->linear(CU, &dl, DSV4_F2(dx + (m - 1) * K, 1, K), DSV4_F2(dy, 1, R), fl);
                back(y1, dy, sizeof(float) * R);
                snprintf(what, sizeof what, "linear %s/%s batch invariance m %lld",
                         dsv4_wfmt_name(paths[pi].fmt), dsv4_act_name(paths[pi].act), (long long)m);
                cmp_exact(what, y1, ya + (m - 1) * R, R);
            }
            undev(dx);
            undev(dy);
            down_weight(&dl.w);
            lt_weight_free(&lw);
            free(x);
            free(ya);
            free(yb);
            free(y1);
        }
}

static void test_grouped(void)
{
    static const struct {
        enum dsv4_wfmt fmt;
        enum dsv4_act act;
        int G;
        int64_t R, K;
    } cases[] = {{DSV4_WFMT_FP8, DSV4_ACT_FP8, 4, 128, 256},
                 {DSV4_WFMT_FP8, DSV4_ACT_FP8, 3, 100, 160},
                 {DSV4_WFMT_BF16, DSV4_ACT_F32, 4, 100, 96},
                 {DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4, 2, 64, 128}};
    for (size_t ci = 0; ci < DSV4_ARRAY_LEN(cases); ci++) {
        int G = cases[ci].G;
        int64_t R = cases[ci].R, K = cases[ci].K;
        struct lt_weight lw;
        lt_weight_make(&lw, cases[ci].fmt, G * R, K);
        struct dsv4_lin hl = {lw.q, cases[ci].act}, dl = hl;
        up_weight(&lw.q, &dl.w);
        for (int64_t m = 1; m <= 40; m += 13) {
            float *x = falloc(m * G * K), *ya = falloc(m * G * R), *yb = falloc(m * G * R);
            lt_act_make(x, m, G * K);
            float *dx = dev(x, sizeof(float) * m * G * K);
            float *dy = CU->alloc(CU, sizeof(float) * m * G * R);
            REF->linear_grouped(REF, &hl, G, DSV4_F2(x, m, G * K), DSV4_F2(yb, m, G * R),
                                DSV4_OP_BF16);
            CU->linear_grouped(CU, &dl, G, DSV4_F2(dx, m, G * K), DSV4_F2(dy, m, G * R),
                               DSV4_OP_BF16);
            back(ya, dy, sizeof(float) * m * G * R);
            char what[96];
            snprintf(what, sizeof what, "linear_grouped %s G %d m %lld",
                     dsv4_wfmt_name(cases[ci].fmt), G, (long long)m);
            if (cases[ci].act == DSV4_ACT_F32)
                cmp_nerr(what, ya, yb, m * G * R, 4e-3, 0.9);
            else
                cmp_exact(what, ya, yb, m * G * R);
            undev(dx);
            undev(dy);
            free(x);
            free(ya);
            free(yb);
        }
        down_weight(&dl.w);
        lt_weight_free(&lw);
    }
}

/* ------------------------------------------------------------ routing, MoE */

static void test_route(void)
{
    enum { T = 70, E = 384, K = 6, V = 1000 };
    float *logits = falloc(T * E), bias[E], wa[T * K], wb[T * K];
    int32_t ia[T * K], ib[T * K], tid[T], *hash = malloc(sizeof(int32_t) * V * K);
    for (int i = 0; i < V * K; i++)
        hash[i] = (int32_t)(lt_u32() % E);
    for (int func = 0; func < 3; func++)
        for (int use = 0; use < 3; use++) {
            for (int i = 0; i < T * E; i++)
                logits[i] = (lt_u32() % 8 == 0) ? 0.25f : frand(-3, 2);
            for (int i = 0; i < E; i++)
                bias[i] = frand(-8, -5);
            for (int t = 0; t < T; t++)
                tid[t] = (int32_t)(lt_u32() % V);
            float *dl = dev(logits, sizeof(float) * T * E), *db = dev(bias, sizeof bias);
            int32_t *dh = dev(hash, sizeof(int32_t) * V * K), *dt = dev(tid, sizeof tid);
            int32_t *di = CU->alloc(CU, sizeof ia);
            float *dw = CU->alloc(CU, sizeof wa);
            struct dsv4_route_args a = {.T = T,
                                        .E = E,
                                        .k = K,
                                        .logits = logits,
                                        .func = (enum dsv4_score_func)func,
                                        .bias = use == 1 ? bias : NULL,
                                        .tid2eid = use == 2 ? hash : NULL,
                                        .tokens = tid,
                                        .renorm = true,
                                        .scale = 2.5f,
                                        .ids = ib,
                                        .wts = wb};
            REF->route(REF, &a);
            a.logits = dl;
            a.bias = use == 1 ? db : NULL;
            a.tid2eid = use == 2 ? dh : NULL;
            a.tokens = dt;
            a.ids = di;
            a.wts = dw;
            CU->route(CU, &a);
            back(ia, di, sizeof ia);
            back(wa, dw, sizeof wa);
            int bad = 0;
            for (int i = 0; i < T * K; i++)
                bad += ia[i] != ib[i];
            CHECKF(bad == 0, "route func %d use %d: %d ids differ", func, use, bad);
            cmp_ulp("route weights", wa, wb, T * K, 4);
            undev(dl);
            undev(db);
            undev(dh);
            undev(dt);
            undev(di);
            undev(dw);
        }
    free(logits);
    free(hash);
}

static void test_moe(void)
{
    enum { E = 16, K = 6, D = 256, I = 384 };
    static const enum dsv4_wfmt fmts[] = {DSV4_WFMT_MXFP4, DSV4_WFMT_NVFP4, DSV4_WFMT_FP8};
    static const int Ts[] = {1, 5, 40};
    for (size_t fi = 0; fi < DSV4_ARRAY_LEN(fmts); fi++) {
        int e0 = 4, e1 = 12, ne = e1 - e0;
        struct lt_weight lw[E][3];
        struct dsv4_ffn_w hx[E], dx[E];
        for (int e = e0; e < e1; e++) {
            lt_weight_make(&lw[e][0], fmts[fi], I, D);
            lt_weight_make(&lw[e][1], fmts[fi], D, I);
            lt_weight_make(&lw[e][2], fmts[fi], I, D);
            enum dsv4_act act = dsv4_default_act(fmts[fi]);
            /* one input_scale for w1 and w3 (as the binding folds it) */
            lw[e][2].q.input_scale = lw[e][0].q.input_scale;
            struct dsv4_ffn_w *h = &hx[e - e0], *d = &dx[e - e0];
            h->w1 = (struct dsv4_lin){lw[e][0].q, act};
            h->w2 = (struct dsv4_lin){lw[e][1].q, act};
            h->w3 = (struct dsv4_lin){lw[e][2].q, act};
            *d = *h;
            up_weight(&h->w1.w, &d->w1.w);
            up_weight(&h->w2.w, &d->w2.w);
            up_weight(&h->w3.w, &d->w3.w);
        }
        struct dsv4_ffn_w *dex = dev(dx, sizeof(struct dsv4_ffn_w) * ne);
        for (size_t ti = 0; ti < DSV4_ARRAY_LEN(Ts); ti++) {
            int T = Ts[ti], S = K + 1;
            float *x = falloc(T * D), *wts = falloc(T * K), *oa = falloc(T * S * D),
                  *ob = falloc(T * S * D);
            int32_t *ids = malloc(sizeof(int32_t) * T * K);
            fill_bf16(x, T * D, -3, 1);
            for (int t = 0; t < T; t++) {
                /* K distinct ids, ascending, some outside [e0, e1) */
                int c = 0;
                for (int e = 0; e < E && c < K; e++)
                    if ((int)(lt_u32() % (unsigned)(E - e)) < K - c)
                        ids[t * K + c++] = e;
                for (int i = 0; i < K; i++)
                    wts[t * K + i] = frand(-2, 0);
            }
            for (int i = 0; i < T * S * D; i++)
                oa[i] = ob[i] = 12345.0f; /* slot K must stay */
            float *dxx = dev(x, sizeof(float) * T * D), *dw = dev(wts, sizeof(float) * T * K);
            int32_t *di = dev(ids, sizeof(int32_t) * T * K);
            float *dout = dev(oa, sizeof(float) * T * S * D);
            struct dsv4_moe_args a = {.T = T,
                                      .k = K,
                                      .D = D,
                                      .I = I,
                                      .x = x,
                                      .ids = ids,
                                      .wts = wts,
                                      .e0 = e0,
                                      .e1 = e1,
                                      .ex = hx,
                                      .limit = 10.0f,
                                      .out = ob,
                                      .slots = S};
            REF->moe(REF, &a);
            a.x = dxx;
            a.ids = di;
            a.wts = dw;
            a.ex = dex;
            a.out = dout;
            CU->moe(CU, &a);
            back(oa, dout, sizeof(float) * T * S * D);
            char what[64];
            snprintf(what, sizeof what, "moe %s T %d", dsv4_wfmt_name(fmts[fi]), T);
            cmp_nerr(what, oa, ob, (size_t)T * S * D, 2e-3, 0.99);
            undev(dxx);
            undev(dw);
            undev(di);
            undev(dout);
            free(x);
            free(wts);
            free(oa);
            free(ob);
            free(ids);
        }
        undev(dex);
        for (int e = e0; e < e1; e++) {
            down_weight(&dx[e - e0].w1.w);
            down_weight(&dx[e - e0].w2.w);
            down_weight(&dx[e - e0].w3.w);
            for (int j = 0; j < 3; j++)
                lt_weight_free(&lw[e][j]);
        }
    }
}

/* ------------------------------------------------------------ hyper-connections */

static void test_hc(void)
{
    enum { HC = 4, NMIX = (2 + HC) * HC };
    static const int64_t Ds[] = {64, 1000};
    for (size_t di = 0; di < DSV4_ARRAY_LEN(Ds); di++) {
        int64_t D = Ds[di], T = 9;
        float *X = falloc(T * HC * D), *fn = falloc(NMIX * HC * D), base[NMIX], nw[1000];
        fill_bf16(X, T * HC * D, -3, 2);
        fill(fn, NMIX * HC * D, -8, -4);
        fill(base, NMIX, -5, -2);
        for (int i = 0; i < D; i++)
            nw[i] = 1.0f + frand(-8, -5);
        struct dsv4_hc_params hp = {.fn = fn,
                                    .base = base,
                                    .scale = {0.5f, 0.45f, 0.55f},
                                    .hc = HC,
                                    .iters = 20,
                                    .norm_eps = 1e-6f,
                                    .hc_eps = 1e-6f};
        struct dsv4_hc_params dp = hp;
        dp.fn = dev(fn, sizeof(float) * NMIX * HC * D);
        dp.base = dev(base, sizeof base);
        float *dX = dev(X, sizeof(float) * T * HC * D), *dnw = dev(nw, sizeof(float) * D);
        float *ya = falloc(T * D), *yb = falloc(T * D), *xa = falloc(T * D), *xb = falloc(T * D);
        float pa[T * HC], pb[T * HC], ca[T * HC * HC], cb[T * HC * HC];
        float *dy = CU->alloc(CU, sizeof(float) * T * D),
              *dxn = CU->alloc(CU, sizeof(float) * T * D);
        float *dpo = CU->alloc(CU, sizeof pa), *dco = CU->alloc(CU, sizeof ca);
        REF->hc_pre(REF, &hp, DSV4_F3(X, T, HC, D), nw, 1e-6f, DSV4_F2(yb, T, D), DSV4_F2(xb, T, D),
                    DSV4_F2(pb, T, HC), DSV4_F3(cb, T, HC, HC));
        CU->hc_pre(CU, &dp, DSV4_F3(dX, T, HC, D), dnw, 1e-6f, DSV4_F2(dy, T, D),
                   DSV4_F2(dxn, T, D), DSV4_F2(dpo, T, HC), DSV4_F3(dco, T, HC, HC));
        back(ya, dy, sizeof(float) * T * D);
        back(xa, dxn, sizeof(float) * T * D);
        back(pa, dpo, sizeof pa);
        back(ca, dco, sizeof ca);
        cmp_nerr("hc_pre post", pa, pb, T * HC, 1e-6, 0.0);
        cmp_nerr("hc_pre comb", ca, cb, T * HC * HC, 1e-5, 0.0);
        cmp_bf16_ulp("hc_pre y", ya, yb, T * D);
        cmp_bf16_ulp("hc_pre xn", xa, xb, T * D);
        /* hc_post from the ref's coefficients: exact */
        float *A = falloc(T * D), *oa = falloc(T * HC * D), *ob = falloc(T * HC * D);
        fill_bf16(A, T * D, -2, 2);
        float *dA = dev(A, sizeof(float) * T * D), *dO = CU->alloc(CU, sizeof(float) * T * HC * D);
        CU->upload(CU, dpo, pb, sizeof pb);
        CU->upload(CU, dco, cb, sizeof cb);
        REF->hc_post(REF, DSV4_F2(A, T, D), DSV4_F3(X, T, HC, D), DSV4_F2(pb, T, HC),
                     DSV4_F3(cb, T, HC, HC), DSV4_F3(ob, T, HC, D), DSV4_OP_BF16);
        CU->hc_post(CU, DSV4_F2(dA, T, D), DSV4_F3(dX, T, HC, D), DSV4_F2(dpo, T, HC),
                    DSV4_F3(dco, T, HC, HC), DSV4_F3(dO, T, HC, D), DSV4_OP_BF16);
        back(oa, dO, sizeof(float) * T * HC * D);
        cmp_exact("hc_post", oa, ob, T * HC * D);
        /* hc_head: the first hc rows of fn */
        struct dsv4_hc_params hh = hp, dh = dp;
        REF->hc_head(REF, &hh, DSV4_F3(X, T, HC, D), nw, 1e-6f, DSV4_F2(yb, T, D));
        CU->hc_head(CU, &dh, DSV4_F3(dX, T, HC, D), dnw, 1e-6f, DSV4_F2(dy, T, D));
        back(ya, dy, sizeof(float) * T * D);
        cmp_bf16_ulp("hc_head", ya, yb, T * D);
        undev((void *)dp.fn);
        undev((void *)dp.base);
        undev(dX);
        undev(dnw);
        undev(dy);
        undev(dxn);
        undev(dpo);
        undev(dco);
        undev(dA);
        undev(dO);
        free(X);
        free(fn);
        free(ya);
        free(yb);
        free(xa);
        free(xb);
        free(A);
        free(oa);
        free(ob);
    }
}

/* ------------------------------------------------------------ attention state */

#define KV_DH   128
#define KV_RD   64
#define KV_ID   64
#define KV_WIN  32
#define KV_HOR  4
#define KV_B    256
#define KV_SEQS 2
#define KV_MAXB 8
#define KV_NB   16
#define KV_TOPK 8
#define KV_IH   8
#define KV_NH   3

static int64_t al64(int64_t x)
{
    return (x + 63) & ~(int64_t)63;
}

/* The layout of 3 layers with ratios 4, 128, 0 (as engine/model/state.c lays it out). */
static void kv_layout(struct dsv4_kv_layer *L, int64_t *slot_bytes, int64_t *block_bytes)
{
    static const int ratios[3] = {4, 128, 0};
    int64_t so = 0, bo = 0;
    for (int i = 0; i < 3; i++) {
        int r = ratios[i];
        struct dsv4_kv_layer *l = &L[i];
        l->ratio = r;
        l->coff = r == 4 ? 2 : 1;
        l->cmp_rows = r > 0 ? l->coff * r + KV_HOR : 0;
        l->win_off = so;
        so += al64((int64_t)(KV_WIN + KV_HOR) * KV_DH * 2);
        l->cmp_off = l->icmp_off = l->ent_off = l->ikey_off = -1;
        if (r > 0) {
            l->cmp_off = so;
            so += al64((int64_t)l->cmp_rows * 2 * l->coff * KV_DH * 4);
            l->ent_off = bo;
            bo += al64((int64_t)(KV_B / r) * KV_DH * 2);
        }
        if (r == 4) {
            l->icmp_off = so;
            so += al64((int64_t)l->cmp_rows * 4 * KV_ID * 4);
            l->ikey_off = bo;
            bo += al64((int64_t)(KV_B / 4) * KV_ID * 2);
        }
    }
    *slot_bytes = so;
    *block_bytes = bo;
}

/* Compares the BF16 rows [n] at the same arena offset in two arena images. */
static void cmp_rows_bf16(const char *what, const uint8_t *a, const uint8_t *b, int64_t off, int n,
                          double *num, double *den, int64_t *same, int64_t *total)
{
    const uint16_t *x = (const uint16_t *)(a + off), *y = (const uint16_t *)(b + off);
    for (int i = 0; i < n; i++) {
        float u = dsv4_bf16_to_f32(x[i]), v = dsv4_bf16_to_f32(y[i]);
        *num += ((double)u - v) * ((double)u - v);
        *den += (double)v * v;
        *same += x[i] == y[i];
        (*total)++;
        if (!isfinite(u))
            *num = INFINITY;
    }
    (void)what;
}

static void test_kv(void)
{
    struct dsv4_kv_layer L[3];
    int64_t sb, bb;
    kv_layout(L, &sb, &bb);
    int64_t arena = sb * KV_SEQS + bb * KV_NB;
    uint8_t *ha = malloc((size_t)arena), *hb = malloc((size_t)arena);
    /* the state before the call: random rings and entries (no NaN) */
    for (int64_t i = 0; i < arena / 2; i++)
        ((uint16_t *)ha)[i] = dsv4_f32_to_bf16(frand(-3, 0));
    for (int s = 0; s < KV_SEQS; s++)
        for (int l = 0; l < 2; l++) {
            float *c = (float *)(ha + s * sb + L[l].cmp_off);
            int64_t n = L[l].cmp_rows * 2 * L[l].coff * KV_DH;
            for (int64_t i = 0; i < n; i++)
                c[i] = frand(-3, 1);
            if (L[l].ratio == 4) {
                float *ic = (float *)(ha + s * sb + L[l].icmp_off);
                for (int64_t i = 0; i < (int64_t)L[l].cmp_rows * 4 * KV_ID; i++)
                    ic[i] = frand(-3, 1);
            }
        }
    int32_t table[KV_SEQS * KV_MAXB];
    for (int i = 0; i < KV_SEQS * KV_MAXB; i++)
        table[i] = (int32_t)((i * 7 + 3) % KV_NB); /* a permutation of the 16 blocks */
    uint8_t *da = dev(ha, (size_t)arena);
    int32_t *dtable = dev(table, sizeof table);
    struct dsv4_kv_view hv = {.slots = ha,
                              .blocks = ha + sb * KV_SEQS,
                              .slot_bytes = sb,
                              .block_bytes = bb,
                              .block_tokens = KV_B,
                              .win_rows = KV_WIN + KV_HOR,
                              .window = KV_WIN,
                              .dh = KV_DH,
                              .rd = KV_RD,
                              .idim = KV_ID,
                              .block_table = table,
                              .max_blocks = KV_MAXB,
                              .n_layers = 3,
                              .layers = L};
    struct dsv4_kv_view dv = hv;
    dv.slots = da;
    dv.blocks = da + sb * KV_SEQS;
    dv.block_table = dtable;
    /* the call: seq 0 positions 508..540 (crosses a block, completes entries), seq 1 a
     * decode at 1023 */
    enum { T = 34 };
    int32_t slot[T], row0[T], len[T];
    int64_t pos[T];
    for (int t = 0; t < T; t++) {
        bool first = t < 33;
        slot[t] = first ? 0 : 1;
        row0[t] = first ? 0 : 33;
        len[t] = first ? 33 : 1;
        pos[t] = first ? 508 + t : 1023;
    }
    int32_t *dslot = dev(slot, sizeof slot), *drow0 = dev(row0, sizeof row0),
            *dlen = dev(len, sizeof len);
    int64_t *dpos = dev(pos, sizeof pos);
    struct dsv4_toks ht = {T, slot, row0, len, pos}, dt = {T, dslot, drow0, dlen, dpos};
    struct dsv4_rope rp;
    CHECK(dsv4_rope_init(&rp, KV_RD, 160000.0, true, 16, 32, 1, 65536) == 0);
    uint16_t kvc[T * KV_DH];
    for (int i = 0; i < T * KV_DH; i++)
        kvc[i] = dsv4_f32_to_bf16(frand(-3, 0));
    uint16_t *dkvc = dev(kvc, sizeof kvc);
    for (int l = 0; l < 3; l++) {
        int r = L[l].ratio;
        int64_t cw = (int64_t)L[l].coff * KV_DH;
        float *ckv = falloc(T * cw), *cg = falloc(T * cw), *ickv = falloc(T * 2 * KV_ID),
              *icg = falloc(T * 2 * KV_ID), *ape = falloc((r ? r : 1) * cw),
              *iape = falloc(4 * 2 * KV_ID), norm[KV_DH], inorm[KV_ID], *cga = falloc(T * cw);
        fill(ckv, T * cw, -3, 1);
        fill(cg, T * cw, -2, 2);
        fill(ickv, T * 2 * KV_ID, -3, 1);
        fill(icg, T * 2 * KV_ID, -2, 2);
        fill(ape, (r ? r : 1) * cw, -4, -1);
        fill(iape, 4 * 2 * KV_ID, -4, -1);
        for (int i = 0; i < KV_DH; i++)
            norm[i] = 1.0f + frand(-8, -5);
        for (int i = 0; i < KV_ID; i++)
            inorm[i] = 1.0f + frand(-8, -5);
        float *dckv = dev(ckv, sizeof(float) * T * cw), *dcg = dev(cg, sizeof(float) * T * cw);
        float *dickv = dev(ickv, sizeof(float) * T * 2 * KV_ID),
              *dicg = dev(icg, sizeof(float) * T * 2 * KV_ID);
        float *dape = dev(ape, sizeof(float) * (r ? r : 1) * cw),
              *diape = dev(iape, sizeof(float) * 4 * 2 * KV_ID);
        float *dnorm = dev(norm, sizeof norm), *dinorm = dev(inorm, sizeof inorm);
        struct dsv4_kv_args ka = {.kv = &hv,
                                  .layer = l,
                                  .tok = &ht,
                                  .kv_chunk = kvc,
                                  .ckv = ckv,
                                  .cg = cg,
                                  .ickv = ickv,
                                  .icg = icg,
                                  .ape = ape,
                                  .iape = iape,
                                  .norm = norm,
                                  .inorm = inorm,
                                  .rope = &rp,
                                  .eps = 1e-6f};
        struct dsv4_kv_args kd = {.kv = &dv,
                                  .layer = l,
                                  .tok = &dt,
                                  .kv_chunk = dkvc,
                                  .ckv = dckv,
                                  .cg = dcg,
                                  .ickv = dickv,
                                  .icg = dicg,
                                  .ape = dape,
                                  .iape = diape,
                                  .norm = dnorm,
                                  .inorm = dinorm,
                                  .rope = &rp,
                                  .eps = 1e-6f};
        char what[64];
        if (r > 0) {
            REF->kv_compress(REF, &ka);
            CU->kv_compress(CU, &kd);
            back(hb, da, (size_t)arena);
            back(cga, dcg, sizeof(float) * T * cw);
            snprintf(what, sizeof what, "kv_compress ratio %d gates", r);
            cmp_exact(what, cga, cg, T * cw);
            double num = 0, den = 0;
            int64_t same = 0, total = 0;
            for (int t = 0; t < T; t++) {
                if ((pos[t] + 1) % r)
                    continue;
                int64_t b = (pos[t] + 1) / r - 1;
                cmp_rows_bf16("entry", hb, ha, (uint8_t *)dsv4_kv_entry(&hv, slot[t], l, b) - ha,
                              KV_DH, &num, &den, &same, &total);
                if (r == 4)
                    cmp_rows_bf16("ikey", hb, ha, (uint8_t *)dsv4_kv_ikey(&hv, slot[t], l, b) - ha,
                                  KV_ID, &num, &den, &same, &total);
            }
            double e = den > 0 ? sqrt(num / den) : 0;
            fprintf(stderr, "kv_compress ratio %d: %lld values, %lld identical, error %.3g\n", r,
                    (long long)total, (long long)same, e);
            CHECKF(total > 0 && e <= 2e-3 && same >= total * 99 / 100,
                   "kv_compress ratio %d: error %.3g, %lld of %lld identical", r, e,
                   (long long)same, (long long)total);
            CU->upload(CU, da, ha, (size_t)arena); /* continue from the oracle's state */
            CU->upload(CU, dcg, cg, sizeof(float) * T * cw);
        }
        int32_t sel[T * KV_TOPK], nsel[T], sela[T * KV_TOPK], nsela[T];
        int32_t *dsel = CU->alloc(CU, sizeof sel), *dnsel = CU->alloc(CU, sizeof nsel);
        if (r == 4) {
            float *q = falloc(T * KV_IH * KV_ID), w[T * KV_IH];
            fill(q, T * KV_IH * KV_ID, -3, 1);
            dsv4_act_sim_fp4(q, T * KV_IH * KV_ID, 32);
            fill_bf16(w, T * KV_IH, -2, 1);
            float *dq = dev(q, sizeof(float) * T * KV_IH * KV_ID), *dw = dev(w, sizeof w);
            struct dsv4_select_args sa = {.kv = &hv,
                                          .layer = l,
                                          .tok = &ht,
                                          .q = q,
                                          .w = w,
                                          .IH = KV_IH,
                                          .wscale = 0.0625f,
                                          .topk = KV_TOPK,
                                          .sel = sel,
                                          .nsel = nsel};
            REF->kv_select(REF, &sa);
            sa.kv = &dv;
            sa.tok = &dt;
            sa.q = dq;
            sa.w = dw;
            sa.sel = dsel;
            sa.nsel = dnsel;
            CU->kv_select(CU, &sa);
            back(sela, dsel, sizeof sela);
            back(nsela, dnsel, sizeof nsela);
            int bad = 0;
            for (int t = 0; t < T; t++) {
                bad += nsela[t] != nsel[t];
                for (int i = 0; i < nsel[t] && i < KV_TOPK; i++)
                    bad += sela[t * KV_TOPK + i] != sel[t * KV_TOPK + i];
            }
            CHECKF(bad == 0, "kv_select: %d differences", bad);
            CU->upload(CU, dsel, sel, sizeof sel);
            CU->upload(CU, dnsel, nsel, sizeof nsel);
            undev(dq);
            undev(dw);
            free(q);
        }
        /* attention */
        {
            float *q = falloc(T * KV_NH * KV_DH), sink[KV_NH], *oa = falloc(T * KV_NH * KV_DH),
                  *ob = falloc(T * KV_NH * KV_DH);
            fill_bf16(q, T * KV_NH * KV_DH, -4, -1);
            fill(sink, KV_NH, -3, 0);
            float *dq = dev(q, sizeof(float) * T * KV_NH * KV_DH), *ds = dev(sink, sizeof sink);
            float *dout = CU->alloc(CU, sizeof(float) * T * KV_NH * KV_DH);
            struct dsv4_attn_args aa = {.kv = &hv,
                                        .layer = l,
                                        .tok = &ht,
                                        .q = q,
                                        .nh = KV_NH,
                                        .kv_chunk = kvc,
                                        .sel = r == 4 ? sel : NULL,
                                        .nsel = r == 4 ? nsel : NULL,
                                        .topk = KV_TOPK,
                                        .sink = sink,
                                        .scale = 1.0f / sqrtf((float)KV_DH),
                                        .flags = DSV4_OP_BF16,
                                        .out = ob};
            REF->attn(REF, &aa);
            aa.kv = &dv;
            aa.tok = &dt;
            aa.q = dq;
            aa.kv_chunk = dkvc;
            aa.sel = r == 4 ? dsel : NULL;
            aa.nsel = r == 4 ? dnsel : NULL;
            aa.sink = ds;
            aa.out = dout;
            CU->attn(CU, &aa);
            back(oa, dout, sizeof(float) * T * KV_NH * KV_DH);
            snprintf(what, sizeof what, "attn ratio %d", r);
            cmp_nerr(what, oa, ob, (size_t)T * KV_NH * KV_DH, 1e-3, 0.95);
            undev(dq);
            undev(ds);
            undev(dout);
            free(q);
            free(oa);
            free(ob);
        }
        /* store: the rings end up the same bytes */
        REF->kv_store(REF, &ka);
        CU->kv_store(CU, &kd);
        back(hb, da, (size_t)arena);
        snprintf(what, sizeof what, "kv_store ratio %d", r);
        CHECKF(!memcmp(ha, hb, (size_t)arena), "%s: arenas differ", what);
        undev(dsel);
        undev(dnsel);
        undev(dckv);
        undev(dcg);
        undev(dickv);
        undev(dicg);
        undev(dape);
        undev(diape);
        undev(dnorm);
        undev(dinorm);
        free(ckv);
        free(cg);
        free(ickv);
        free(icg);
        free(ape);
        free(iape);
        free(cga);
    }
    undev(da);
    undev(dtable);
    undev(dslot);
    undev(drow0);
    undev(dlen);
    undev(dpos);
    undev(dkvc);
    free(ha);
    free(hb);
}

/* lintest.h's model and comparison serve other tests */
static void unused(void)
{
    (void)lt_model;
    (void)lt_compare;
}

int main(void)
{
    unused();
    int n = dsv4_cuda_device_count();
    if (n <= 0) {
        printf("no CUDA device (%s)\n", n < 0 ? dsv4_errmsg() : "none");
        return 77;
    }
    int rc = dsv4_backend_create("cuda", 1, &CU);
    if (rc) {
        printf("cuda backend unavailable: %s\n", dsv4_errmsg());
        return 77;
    }
    CHECK(dsv4_backend_create("ref", 1, &REF) == 0);
    struct dsv4_be_limits lim = {.tokens = 128,
                                 .cols = 8192,
                                 .hidden = 4096,
                                 .inter = 1024,
                                 .experts = 384,
                                 .topk = 6,
                                 .keys = KV_WIN + 1024 / 4 + 8,
                                 .entries = KV_MAXB * KV_B / 4 + 1,
                                 .head_dim = KV_DH,
                                 .index_head_dim = KV_ID,
                                 .index_heads = KV_IH,
                                 .vocab = 100003};
    CHECKF(REF->reserve(REF, &lim) == 0 && CU->reserve(CU, &lim) == 0, "reserve: %s",
           dsv4_errmsg());
    test_movement();
    test_elementwise();
    test_linear();
    test_grouped();
    test_route();
    test_moe();
    test_hc();
    test_kv();
    CHECKF(CU->sync(CU) == 0, "device errors: %s", dsv4_errmsg());
    dsv4_backend_destroy(CU);
    dsv4_backend_destroy(REF);
    TEST_DONE();
}
