/*
 * linear.c - scalar oracle of y = act(x) . W^T for every weight format
 * (kernels/linear.h), written to follow the reference GEMMs step by step:
 * activations are quantised per row with the reference quantisers of
 * formats.c, each K block's partial sum is formed in FP32 in column order,
 * multiplied by the activation and weight scales and added to an FP32
 * accumulator (model.md §3.7, §5.3; formats.md §2.1-2.2).
 *
 * Invariants: no allocation (activation groups are quantised into stack
 * buffers, the accumulators are y itself), no reads outside the sizes
 * implied by rows/cols (see formats.h for the ceilings of partial blocks),
 * and the per-element order of the FP32 sums is fixed, so the oracle is
 * deterministic.  This is slow on purpose; kernels/cpu is the fast path.
 */
#include "kernels/linear.h"

#include "base/dsv4.h"
#include "kernels/formats.h"

#include <math.h>
#include <string.h>

enum dsv4_act dsv4_default_act(enum dsv4_wfmt fmt)
{
    switch (fmt) {
    case DSV4_WFMT_FP8:
    case DSV4_WFMT_MXFP4:
        return DSV4_ACT_FP8;
    case DSV4_WFMT_NVFP4:
        return DSV4_ACT_NVFP4;
    default:
        return DSV4_ACT_F32;
    }
}

uint64_t dsv4_qweight_bytes(const struct dsv4_qweight *w)
{
    uint64_t r = (uint64_t)w->rows, c = (uint64_t)w->cols;
    switch (w->fmt) {
    case DSV4_WFMT_F32:
        return r * c * 4;
    case DSV4_WFMT_BF16:
        return r * c * 2;
    case DSV4_WFMT_FP8:
        return r * c + ((r + 127) / 128) * ((c + 127) / 128);
    case DSV4_WFMT_MXFP4:
        return r * ((c + 1) / 2) + r * ((c + 31) / 32);
    case DSV4_WFMT_NVFP4:
        return r * ((c + 1) / 2) + r * ((c + 15) / 16);
    }
    return 0;
}

bool dsv4_qweight_slice(const struct dsv4_qweight *w, int64_t r0, int64_t nr,
                        struct dsv4_qweight *out)
{
    int64_t K = w->cols;
    DSV4_ASSERT(r0 >= 0 && nr >= 0 && r0 + nr <= w->rows);
    *out = *w;
    out->rows = nr;
    switch (w->fmt) {
    case DSV4_WFMT_FP8:
        /* a slice must start on a 128-row scale block */
        if (r0 % 128)
            return false;
        out->w = (const uint8_t *)w->w + r0 * K;
        out->scale = w->scale + (r0 / 128) * ((K + 127) / 128);
        return true;
    case DSV4_WFMT_BF16:
        out->w = (const uint8_t *)w->w + r0 * K * 2;
        return true;
    case DSV4_WFMT_F32:
        out->w = (const uint8_t *)w->w + r0 * K * 4;
        return true;
    case DSV4_WFMT_MXFP4:
    case DSV4_WFMT_NVFP4: {
        int bs = w->fmt == DSV4_WFMT_MXFP4 ? 32 : 16;
        out->w = (const uint8_t *)w->w + r0 * ((K + 1) / 2);
        out->scale = w->scale + r0 * ((K + bs - 1) / bs);
        return true;
    }
    }
    return false;
}

const char *dsv4_wfmt_name(enum dsv4_wfmt fmt)
{
    static const char *names[] = {"f32", "bf16", "fp8", "mxfp4", "nvfp4"};
    return (unsigned)fmt < DSV4_ARRAY_LEN(names) ? names[fmt] : "invalid";
}

const char *dsv4_act_name(enum dsv4_act act)
{
    static const char *names[] = {"f32", "fp8", "nvfp4"};
    return (unsigned)act < DSV4_ARRAY_LEN(names) ? names[act] : "invalid";
}

int dsv4_linear_check(const struct dsv4_qweight *w, enum dsv4_act act)
{
    if (!w || (unsigned)w->fmt > DSV4_WFMT_NVFP4)
        return dsv4_error(DSV4_EINVAL, "linear: unknown weight format");
    if (w->rows <= 0 || w->cols <= 0 || w->rows > (INT64_C(1) << 31) ||
        w->cols > (INT64_C(1) << 31))
        return dsv4_error(DSV4_EINVAL, "linear: bad %s weight shape [%lld, %lld]",
                          dsv4_wfmt_name(w->fmt), (long long)w->rows, (long long)w->cols);
    if (!w->w)
        return dsv4_error(DSV4_EINVAL, "linear: %s weight without data", dsv4_wfmt_name(w->fmt));
    if (w->fmt >= DSV4_WFMT_FP8 && !w->scale)
        return dsv4_error(DSV4_EINVAL, "linear: %s weight without block scales",
                          dsv4_wfmt_name(w->fmt));
    if (w->fmt == DSV4_WFMT_NVFP4 &&
        !(isfinite(w->scale2) && isfinite(w->input_scale) && w->input_scale > 0.0f))
        return dsv4_error(DSV4_EINVAL, "linear: nvfp4 weight_scale_2 %g / input_scale %g invalid",
                          (double)w->scale2, (double)w->input_scale);
    switch (act) {
    case DSV4_ACT_F32:
        return 0;
    case DSV4_ACT_FP8:
        if (w->fmt >= DSV4_WFMT_FP8)
            return 0;
        break;
    case DSV4_ACT_NVFP4:
        if (w->fmt == DSV4_WFMT_NVFP4)
            return 0;
        break;
    default:
        return dsv4_error(DSV4_EINVAL, "linear: unknown activation path %d", (int)act);
    }
    return dsv4_error(DSV4_EINVAL, "linear: activation path %s does not apply to %s weights",
                      dsv4_act_name(act), dsv4_wfmt_name(w->fmt));
}

/* Weight element (o, k) without its block scales: E4M3/E2M1 value, BF16/F32 value. */
static float wval(const struct dsv4_qweight *w, int64_t o, int64_t k)
{
    const uint8_t *b = w->w;
    switch (w->fmt) {
    case DSV4_WFMT_F32:
        return ((const float *)w->w)[o * w->cols + k];
    case DSV4_WFMT_BF16:
        return dsv4_bf16_to_f32(((const uint16_t *)w->w)[o * w->cols + k]);
    case DSV4_WFMT_FP8:
        return dsv4_e4m3_to_f32(b[o * w->cols + k]);
    default:
        return dsv4_e2m1_to_f32((b[o * ((w->cols + 1) / 2) + k / 2] >> (4 * (k & 1))) & 15);
    }
}

/* Weight block scale covering (o, k) and the K width of that block. */
static float wscale(const struct dsv4_qweight *w, int64_t o, int64_t k, int *kb)
{
    switch (w->fmt) {
    case DSV4_WFMT_FP8:
        *kb = 128;
        return dsv4_e8m0_to_f32(w->scale[(o / 128) * ((w->cols + 127) / 128) + k / 128]);
    case DSV4_WFMT_MXFP4:
        *kb = 32;
        return dsv4_e8m0_to_f32(w->scale[o * ((w->cols + 31) / 32) + k / 32]);
    case DSV4_WFMT_NVFP4:
        *kb = 16;
        return dsv4_e4m3_to_f32(w->scale[o * ((w->cols + 15) / 16) + k / 16]);
    default:
        *kb = 128;
        return 1.0f;
    }
}

/* ACT_F32: y[o] = sum_k x[k] * w(o, k) * ws(o, k), sequential in k; NVFP4 x scale2 at the end. */
static void row_f32(const struct dsv4_qweight *w, const float *x, float *y)
{
    for (int64_t o = 0; o < w->rows; o++) {
        float acc = 0.0f;
        int kb;
        for (int64_t k = 0; k < w->cols; k++)
            acc += x[k] * (wval(w, o, k) * wscale(w, o, k, &kb));
        y[o] = w->fmt == DSV4_WFMT_NVFP4 ? acc * w->scale2 : acc;
    }
}

/*
 * ACT_FP8: per 128-channel group g, qa = E4M3 values, sa = power-of-two
 * scale; per weight K block b (128, 32 or 16 wide, inside g):
 * acc += (sum_{k in b} qa[k] * w(o, k)) * (sa * ws(o, b)).  NVFP4: y = acc * scale2.
 */
static void row_fp8(const struct dsv4_qweight *w, const float *x, float *y)
{
    uint8_t q[128];
    float qa[128], sa;
    memset(y, 0, (size_t)w->rows * sizeof(float));
    for (int64_t g0 = 0; g0 < w->cols; g0 += 128) {
        int64_t len = DSV4_MIN((int64_t)128, w->cols - g0);
        dsv4_act_quant_fp8(x + g0, len, 128, q, &sa);
        for (int64_t i = 0; i < len; i++)
            qa[i] = dsv4_e4m3_to_f32(q[i]);
        for (int64_t o = 0; o < w->rows; o++) {
            int kb;
            for (int64_t b0 = 0; b0 < len; b0 += kb) {
                float ws = wscale(w, o, g0 + b0, &kb), p = 0.0f;
                for (int64_t k = b0; k < len && k < b0 + kb; k++)
                    p += qa[k] * wval(w, o, g0 + k);
                y[o] += p * (sa * ws);
            }
        }
    }
    if (w->fmt == DSV4_WFMT_NVFP4)
        for (int64_t o = 0; o < w->rows; o++)
            y[o] *= w->scale2;
}

/*
 * ACT_NVFP4 (NVFP4 weights): per 16-channel block b, qa = E2M1 values and
 * sfa = E4M3 block scale from dsv4_act_quant_nvfp4; acc += (sum_{k in b}
 * qa[k] * w(o, k)) * (sfa * ws(o, b)) (every term exact); y = acc *
 * (scale2 * input_scale), the GEMM alpha of formats.md §2.1.
 */
static void row_nvfp4(const struct dsv4_qweight *w, const float *x, float *y)
{
    uint8_t q[8], sf;
    float qa[16];
    memset(y, 0, (size_t)w->rows * sizeof(float));
    for (int64_t b0 = 0; b0 < w->cols; b0 += 16) {
        int64_t len = DSV4_MIN((int64_t)16, w->cols - b0);
        dsv4_act_quant_nvfp4(x + b0, len, w->input_scale, q, &sf);
        for (int64_t i = 0; i < len; i++)
            qa[i] = dsv4_e2m1_to_f32((q[i / 2] >> (4 * (i & 1))) & 15);
        float sfa = dsv4_e4m3_to_f32(sf);
        for (int64_t o = 0; o < w->rows; o++) {
            int kb;
            float ws = wscale(w, o, b0, &kb), p = 0.0f;
            for (int64_t k = 0; k < len; k++)
                p += qa[k] * wval(w, o, b0 + k);
            y[o] += p * (sfa * ws);
        }
    }
    for (int64_t o = 0; o < w->rows; o++)
        y[o] *= w->scale2 * w->input_scale;
}

void dsv4_ref_linear(const struct dsv4_qweight *w, enum dsv4_act act, const float *x, int64_t m,
                     float *y)
{
    DSV4_ASSERT(dsv4_linear_check(w, act) == 0 && m >= 0);
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * w->cols;
        float *yi = y + i * w->rows;
        if (act == DSV4_ACT_F32)
            row_f32(w, xi, yi);
        else if (act == DSV4_ACT_FP8)
            row_fp8(w, xi, yi);
        else
            row_nvfp4(w, xi, yi);
    }
}
