/*
 * linear.h - y = x . W^T for the weight formats of a V4 checkpoint, with the
 * activation numerics of ../shared/spec/model.md §3.7.
 *
 * A dsv4_qweight is a view of one stored matrix (it owns nothing).  Weights
 * are used in their stored format; nothing is dequantised whole.  x and y are
 * FP32 arrays holding m rows (x: m x cols, y: m x rows, row-major, dense).
 * The activation path decides the math, the same for every implementation:
 *   DSV4_ACT_F32     x used as is, FP32 products and accumulation (router,
 *                    compressor, head; BF16 weights upcast); any format:
 *                    y = sum_k x[k] * (w(o,k) * ws(o,k)) (for NVFP4 ws is
 *                    the E4M3 block scale and y is then * scale2).
 *   DSV4_ACT_FP8     x quantised to E4M3 per (row, 128 channels) with
 *                    power-of-two scales (dsv4_act_quant_fp8); per K block
 *                    (128 for FP8 weights, 32 for MXFP4, 16 for NVFP4) the
 *                    FP32 partial sum of qa * w is multiplied by (sa * ws)
 *                    and added to the FP32 accumulator; NVFP4: * scale2.
 *                    FP8, MXFP4 and NVFP4 weights.
 *   DSV4_ACT_NVFP4   x quantised to NVFP4 per 16 (W4A4, formats.md §2.1,
 *                    dsv4_act_quant_nvfp4 with the weight's input_scale);
 *                    per 16 block acc += (sum qa * w) * (sfa * ws); y = acc *
 *                    (scale2 * input_scale).  NVFP4 weights only.
 * Every product qa * w * scales is exact in FP32 (few mantissa bits, power
 * of two or E4M3 scales), so implementations differ only in the order of
 * the FP32 sums.  Outputs are FP32; callers round to BF16 where the
 * reference does.  Weights holding E4M3 NaN codes are outside the contract
 * (checkpoints never contain them; fast paths may decode them as 480).
 */
#ifndef DSV4_LINEAR_H
#define DSV4_LINEAR_H

#include <stdbool.h>
#include <stdint.h>

enum dsv4_wfmt {
    DSV4_WFMT_F32 = 0,   /* F32 [rows, cols] */
    DSV4_WFMT_BF16 = 1,  /* BF16 [rows, cols] */
    DSV4_WFMT_FP8 = 2,   /* E4M3 [rows, cols] + E8M0 [ceil(rows/128), ceil(cols/128)] */
    DSV4_WFMT_MXFP4 = 3, /* packed E2M1 [rows, ceil(cols/2)] + E8M0 [rows, ceil(cols/32)] */
    DSV4_WFMT_NVFP4 = 4 /* packed E2M1 [rows, ceil(cols/2)] + E4M3 [rows, ceil(cols/16)] + scale2 */
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

/* "fp8", "nvfp4", ... (never NULL). */
const char *dsv4_wfmt_name(enum dsv4_wfmt fmt);
const char *dsv4_act_name(enum dsv4_act act);

/*
 * Validates a weight view and an activation path for the products below
 * (format known, 0 < rows, cols <= 2^31, data and scales present, NVFP4
 * scalars finite with input_scale > 0, activation path valid for the
 * format).  Returns 0 or DSV4_EINVAL with a message; call it where the view
 * is built, the products assert it.
 */
int dsv4_linear_check(const struct dsv4_qweight *w, enum dsv4_act act);

/*
 * Rows [r0, r0 + nr) of w as a view of their own (pointer offsets).  False when the
 * format cannot express it: FP8 scale blocks cover 128 rows, so an FP8 slice must start
 * on a block boundary (any row for the other formats).
 */
bool dsv4_qweight_slice(const struct dsv4_qweight *w, int64_t r0, int64_t nr,
                        struct dsv4_qweight *out);

/* Bytes of weight data and scales read by one full product. */
uint64_t dsv4_qweight_bytes(const struct dsv4_qweight *w);

/* Scalar oracle (kernels/ref): y[m, rows] = act(x)[m, cols] . W^T.  No allocation. */
void dsv4_ref_linear(const struct dsv4_qweight *w, enum dsv4_act act, const float *x, int64_t m,
                     float *y);

#endif
