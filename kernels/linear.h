/*
 * linear.h - y = x . W^T for the weight formats of a V4 checkpoint, with the
 * activation numerics of ../shared/spec/model.md §3.7.
 *
 * A dsv4_qweight is a view of one stored matrix (it owns nothing).  Weights
 * are used in their stored format; nothing is dequantised whole.  x and y are
 * FP32 arrays holding m rows (x: m x cols, y: m x rows, row-major, dense).
 * The activation path decides the math, the same for every implementation:
 *   DSV4_ACT_F32     x used as is, FP32 products and accumulation (router,
 *                    compressor, head; BF16 weights upcast).
 *   DSV4_ACT_FP8     x quantised to E4M3 per (row, 128 channels) with
 *                    power-of-two scales; per K block (128 for FP8 weights,
 *                    32 for MXFP4) the FP32 partial sum is multiplied by both
 *                    scales and added to the FP32 accumulator.
 *   DSV4_ACT_NVFP4   x quantised to NVFP4 per 16 (W4A4, formats.md §2.1);
 *                    for NVFP4 weights only.
 * Outputs are FP32; callers round to BF16 where the reference does.
 */
#ifndef DSV4_LINEAR_H
#define DSV4_LINEAR_H

#include <stdint.h>

enum dsv4_wfmt {
    DSV4_WFMT_F32 = 0,   /* F32 [rows, cols] */
    DSV4_WFMT_BF16 = 1,  /* BF16 [rows, cols] */
    DSV4_WFMT_FP8 = 2,   /* E4M3 [rows, cols] + E8M0 [ceil(rows/128), ceil(cols/128)] */
    DSV4_WFMT_MXFP4 = 3, /* packed E2M1 [rows, cols/2] + E8M0 [rows, cols/32] */
    DSV4_WFMT_NVFP4 = 4  /* packed E2M1 [rows, cols/2] + E4M3 [rows, cols/16] + scale2 */
};

enum dsv4_act { DSV4_ACT_F32 = 0, DSV4_ACT_FP8 = 1, DSV4_ACT_NVFP4 = 2 };

struct dsv4_qweight {
    enum dsv4_wfmt fmt;
    int64_t rows, cols; /* logical [out, in] */
    const void *w;
    const uint8_t *scale;
    float scale2;      /* NVFP4 weight_scale_2 */
    float input_scale; /* NVFP4 input_scale (activation global scale = 1/input_scale) */
};

/* The activation path the reference uses for a weight format. */
enum dsv4_act dsv4_default_act(enum dsv4_wfmt fmt);

/* Bytes of weight data and scales read by one full product. */
uint64_t dsv4_qweight_bytes(const struct dsv4_qweight *w);

/* Scalar oracle (kernels/ref): y[m, rows] = act(x)[m, cols] . W^T. */
void dsv4_ref_linear(const struct dsv4_qweight *w, enum dsv4_act act, const float *x, int64_t m,
                     float *y);

#endif
