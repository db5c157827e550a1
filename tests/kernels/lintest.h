/*
 * lintest.h - shared helpers of the linear-product tests: random weights in
 * every format, an independent double-precision model of the products
 * (dequantise whole, quantise activations with the reference quantisers,
 * plain matmul) that also yields each output's absolute sum sum|x*w| for
 * error bounds, and a comparison where NaN never passes.
 */
#ifndef DSV4_TESTS_LINTEST_H
#define DSV4_TESTS_LINTEST_H

#include "kernels/formats.h"
#include "kernels/linear.h"
#include "tests/test.h"

#include <stdint.h>

static uint64_t lt_rng = 0x2545f4914f6cdd1dull;

static uint32_t lt_u32(void)
{
    lt_rng ^= lt_rng << 13;
    lt_rng ^= lt_rng >> 7;
    lt_rng ^= lt_rng << 17;
    return (uint32_t)(lt_rng >> 16);
}

/* roughly normal, times a random power of two in [2^lo, 2^hi] */
static float lt_val(int lo, int hi)
{
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += (float)(lt_u32() % 20001) / 10000.0f - 1.0f;
    return ldexpf(s, lo + (int)(lt_u32() % (unsigned)(hi - lo + 1)));
}

struct lt_weight {
    struct dsv4_qweight q;
    void *w;
    uint8_t *s;
};

static void lt_weight_make(struct lt_weight *t, enum dsv4_wfmt fmt, int64_t rows, int64_t cols)
{
    int64_t nw = 0, ns = 0;
    memset(t, 0, sizeof(*t));
    t->q.fmt = fmt;
    t->q.rows = rows;
    t->q.cols = cols;
    switch (fmt) {
    case DSV4_WFMT_F32:
        nw = rows * cols * 4;
        break;
    case DSV4_WFMT_BF16:
        nw = rows * cols * 2;
        break;
    case DSV4_WFMT_FP8:
        nw = rows * cols;
        ns = ((rows + 127) / 128) * ((cols + 127) / 128);
        break;
    case DSV4_WFMT_MXFP4:
        nw = rows * ((cols + 1) / 2);
        ns = rows * ((cols + 31) / 32);
        break;
    case DSV4_WFMT_NVFP4:
        nw = rows * ((cols + 1) / 2);
        ns = rows * ((cols + 15) / 16);
        break;
    }
    t->w = malloc((size_t)nw + 64);
    t->s = malloc((size_t)ns + 64);
    uint8_t *b = t->w;
    for (int64_t i = 0; i < nw; i++)
        b[i] = (uint8_t)lt_u32();
    if (fmt == DSV4_WFMT_F32)
        for (int64_t i = 0; i < rows * cols; i++)
            ((float *)t->w)[i] = lt_val(-4, 1);
    if (fmt == DSV4_WFMT_BF16)
        for (int64_t i = 0; i < rows * cols; i++)
            ((uint16_t *)t->w)[i] = dsv4_f32_to_bf16(lt_val(-4, 1));
    if (fmt == DSV4_WFMT_FP8)
        for (int64_t i = 0; i < nw; i++)
            if ((b[i] & 0x7f) == 0x7f)
                b[i] ^= 1; /* no NaN codes in weights */
    for (int64_t i = 0; i < ns; i++) {
        if (fmt == DSV4_WFMT_NVFP4)
            t->s[i] = (uint8_t)(lt_u32() % 0x7f); /* any non-NaN positive E4M3, 0 included */
        else
            t->s[i] = (uint8_t)(116 + lt_u32() % 16);
    }
    t->q.w = t->w;
    t->q.scale = ns ? t->s : NULL;
    t->q.scale2 = fmt == DSV4_WFMT_NVFP4 ? 0.0173f : 0.0f;
    t->q.input_scale = fmt == DSV4_WFMT_NVFP4 ? ((lt_u32() & 1) ? 1.0f : 0.37f) : 0.0f;
    if (fmt < DSV4_WFMT_FP8)
        t->q.scale = NULL;
}

static void lt_weight_free(struct lt_weight *t)
{
    free(t->w);
    free(t->s);
}

/* Activation rows: per-row and per-group magnitudes vary over 2^-12 .. 2^6. */
static void lt_act_make(float *x, int64_t m, int64_t cols)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t g = 0; g < cols; g += 64) {
            int e = (int)(lt_u32() % 16) - 12;
            for (int64_t k = g; k < cols && k < g + 64; k++)
                x[i * cols + k] = lt_val(e - 2, e + 2);
        }
}

/*
 * Independent model: yd[m, rows] in double and the absolute sums as[m, rows]
 * (both including the final scale), from the whole dequantised weight and
 * dequantised activations.
 */
static void lt_model(const struct dsv4_qweight *w, enum dsv4_act act, const float *x, int64_t m,
                     double *yd, double *as)
{
    int64_t R = w->rows, K = w->cols;
    float *wd = malloc((size_t)(R * K) * sizeof(float));
    float *xa = malloc((size_t)K * sizeof(float));
    uint8_t *q = malloc((size_t)K + 16);
    float *s = malloc((size_t)(K / 16 + 2) * sizeof(float));
    uint8_t *sf = malloc((size_t)(K / 16 + 2));
    double alpha = 1.0;
    switch (w->fmt) {
    case DSV4_WFMT_F32:
        memcpy(wd, w->w, (size_t)(R * K) * sizeof(float));
        break;
    case DSV4_WFMT_BF16:
        for (int64_t i = 0; i < R * K; i++)
            wd[i] = dsv4_bf16_to_f32(((const uint16_t *)w->w)[i]);
        break;
    case DSV4_WFMT_FP8:
        dsv4_dequant_fp8_block(w->w, w->scale, R, K, 0, R, wd);
        break;
    case DSV4_WFMT_MXFP4:
        dsv4_dequant_mxfp4(w->w, w->scale, R, K, 0, R, wd);
        break;
    case DSV4_WFMT_NVFP4:
        dsv4_dequant_nvfp4(w->w, w->scale, 1.0f, R, K, 0, R, wd);
        alpha = w->scale2;
        if (act == DSV4_ACT_NVFP4)
            alpha = (double)(w->scale2 * w->input_scale);
        break;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * K;
        if (act == DSV4_ACT_F32) {
            memcpy(xa, xi, (size_t)K * sizeof(float));
        } else if (act == DSV4_ACT_FP8) {
            dsv4_act_quant_fp8(xi, K, 128, q, s);
            for (int64_t k = 0; k < K; k++)
                xa[k] = dsv4_e4m3_to_f32(q[k]) * s[k / 128];
        } else {
            dsv4_act_quant_nvfp4(xi, K, w->input_scale, q, sf);
            for (int64_t k = 0; k < K; k++)
                xa[k] = dsv4_e2m1_to_f32((q[k / 2] >> (4 * (k & 1))) & 15) *
                        dsv4_e4m3_to_f32(sf[k / 16]);
        }
        for (int64_t o = 0; o < R; o++) {
            double acc = 0, ab = 0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)xa[k] * wd[o * K + k];
                acc += p;
                ab += fabs(p);
            }
            yd[i * R + o] = acc * alpha;
            as[i * R + o] = ab * fabs(alpha);
        }
    }
    free(wd);
    free(xa);
    free(q);
    free(s);
    free(sf);
}

/*
 * Compares y against yd: every element within rel * as + 1e-30 (NaN fails),
 * and the whole-tensor error ||y - yd|| / ||yd|| <= nrm.  Returns the number
 * of failing elements (+1 if the normalised error is too large) and prints
 * the first few.
 */
static int lt_compare(const char *what, const float *y, const double *yd, const double *as,
                      int64_t n, double rel, double nrm)
{
    int bad = 0;
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)y[i] - yd[i]);
        if (!(d <= rel * as[i] + 1e-30)) {
            if (bad < 5)
                fprintf(stderr, "%s: [%lld] got %.9g want %.9g (abs sum %.3g)\n", what,
                        (long long)i, (double)y[i], yd[i], as[i]);
            bad++;
        }
        e2 += d * d;
        r2 += yd[i] * yd[i];
    }
    if (!(sqrt(e2) <= nrm * sqrt(r2) + 1e-30)) {
        fprintf(stderr, "%s: normalised error %.3g > %.3g\n", what, sqrt(e2 / (r2 + 1e-300)), nrm);
        bad++;
    }
    return bad;
}

#endif
