/*
 * gemm.cuh - the per-element pieces of y = act(x) . W^T shared by the CUDA
 * GEMM kernels and the host: a flat weight view, the decode of one weight
 * element and of its block scale, the activation codes' values, the chunk
 * scale and the end-of-chunk rule that fix the summation order
 * (kernels/cuda/plan.h), and the final per-output factor.
 *
 * The kernels build every output from these: chunk sums p (FMA chain in k
 * order) over the chunks dsv4_cu_chunk_ends() delimits, acc = acc +
 * p * dsv4_cu_chunk_scale(), y = acc * dsv4_cu_post().  Products of
 * activation codes and weight values are exact in FP32 on the FP8 and
 * NVFP4 activation paths, so these results equal kernels/ref's bit for bit
 * (its per-block partial sums run in the same k order); the F32 path
 * differs from the oracle only in the order of its FP32 sums (chunks of 32)
 * and the FMA.  tests/cuda/test_cuda_math.c replays both kernel schedules on
 * the host with these functions and compares them with dsv4_ref_linear.
 */
#ifndef DSV4_CUDA_GEMM_CUH
#define DSV4_CUDA_GEMM_CUH

#include "kernels/cuda/math.cuh"
#include "kernels/linear.h"

/* A weight matrix as kernels read it (struct dsv4_qweight without enums). */
struct dsv4_cu_w {
    int fmt;            /* enum dsv4_wfmt */
    int64_t rows, cols; /* logical [out, in] */
    const uint8_t *w;
    const uint8_t *scale;
    float scale2, input_scale;
};

DSV4_HD struct dsv4_cu_w dsv4_cu_w_of(const struct dsv4_qweight *q)
{
    struct dsv4_cu_w w;
    w.fmt = (int)q->fmt;
    w.rows = q->rows;
    w.cols = q->cols;
    w.w = (const uint8_t *)q->w;
    w.scale = q->scale;
    w.scale2 = q->scale2;
    w.input_scale = q->input_scale;
    return w;
}

/*
 * K width of one chunk of the summation order (plan.h): F32 activations 32 for any
 * format; FP8 activations the weight's scale block (FP8 128, MXFP4 32, NVFP4 16); NVFP4
 * activations 16.
 */
DSV4_HD int dsv4_cu_kb(int fmt, int act)
{
    if (act == DSV4_ACT_F32)
        return 32;
    if (act == DSV4_ACT_NVFP4)
        return 16;
    return fmt == DSV4_WFMT_FP8 ? 128 : fmt == DSV4_WFMT_MXFP4 ? 32 : 16;
}

/* Width of the activation quantiser's groups: FP8 128, NVFP4 16. */
DSV4_HD int dsv4_cu_agroup(int act)
{
    return act == DSV4_ACT_NVFP4 ? 16 : 128;
}

/* Weight element (o, k) without its block scale (exact). */
DSV4_HD float dsv4_cu_wval(const struct dsv4_cu_w *w, int64_t o, int64_t k)
{
    switch (w->fmt) {
    case DSV4_WFMT_F32:
        return ((const float *)w->w)[o * w->cols + k];
    case DSV4_WFMT_BF16:
        return dsv4_cu_bf16_to_f32(((const uint16_t *)w->w)[o * w->cols + k]);
    case DSV4_WFMT_FP8:
        return dsv4_cu_e4m3_to_f32(w->w[o * w->cols + k]);
    default:
        return dsv4_cu_e2m1_to_f32(
                (uint8_t)((w->w[o * ((w->cols + 1) / 2) + k / 2] >> (4 * (k & 1))) & 15));
    }
}

/* Block scale covering (o, k): E8M0 (FP8 128x128, MXFP4 1x32), E4M3 (NVFP4 1x16), else 1. */
DSV4_HD float dsv4_cu_wscale(const struct dsv4_cu_w *w, int64_t o, int64_t k)
{
    switch (w->fmt) {
    case DSV4_WFMT_FP8:
        return dsv4_cu_e8m0_to_f32(w->scale[(o / 128) * ((w->cols + 127) / 128) + k / 128]);
    case DSV4_WFMT_MXFP4:
        return dsv4_cu_e8m0_to_f32(w->scale[o * ((w->cols + 31) / 32) + k / 32]);
    case DSV4_WFMT_NVFP4:
        return dsv4_cu_e4m3_to_f32(w->scale[o * ((w->cols + 15) / 16) + k / 16]);
    default:
        return 1.0f;
    }
}

/* The B operand of the FMA chain: F32 activations take the dequantised weight (scale
 * folded in, an exact product), the quantised paths the raw value. */
DSV4_HD float dsv4_cu_bval(const struct dsv4_cu_w *w, int act, int64_t o, int64_t k)
{
    float v = dsv4_cu_wval(w, o, k);
    return act == DSV4_ACT_F32 ? dsv4_cu_mul(v, dsv4_cu_wscale(w, o, k)) : v;
}

/* The weight's factor of the chunk starting at k (1 on the F32 path). */
DSV4_HD float dsv4_cu_wchunk_scale(const struct dsv4_cu_w *w, int act, int64_t o, int64_t k)
{
    return act == DSV4_ACT_F32 ? 1.0f : dsv4_cu_wscale(w, o, k);
}

/* Value of an activation code: E4M3 (FP8 path) or E2M1 (NVFP4 path, one code per byte). */
DSV4_HD float dsv4_cu_aval(int act, uint8_t code)
{
    return act == DSV4_ACT_FP8 ? dsv4_cu_e4m3_to_f32(code) : dsv4_cu_e2m1_to_f32(code);
}

/* Scale of a chunk: activation scale times weight scale (1 on the F32 path). */
DSV4_HD float dsv4_cu_chunk_scale(int act, float sa, float sw)
{
    return act == DSV4_ACT_F32 ? 1.0f : dsv4_cu_mul(sa, sw);
}

/* acc + p * s, rounded as the reference does (two roundings, never fused). */
DSV4_HD float dsv4_cu_flush(float acc, float p, float s)
{
    return dsv4_cu_add(acc, dsv4_cu_mul(p, s));
}

/* Whether a chunk of width kb ends after element e - 1 (e = k + 1) of a K-long sum. */
DSV4_HD bool dsv4_cu_chunk_ends(int64_t e, int64_t K, int kb)
{
    return e % kb == 0 || e >= K;
}

/* The per-output factor after the chunks: NVFP4 global scale(s), else 1. */
DSV4_HD float dsv4_cu_post(const struct dsv4_cu_w *w, int act)
{
    if (w->fmt != DSV4_WFMT_NVFP4)
        return 1.0f;
    return act == DSV4_ACT_NVFP4 ? dsv4_cu_mul(w->scale2, w->input_scale) : w->scale2;
}

#endif
