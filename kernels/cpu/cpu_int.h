/*
 * cpu_int.h - internal interface between the instruction-set independent
 * driver of the CPU linear kernels (linear.c) and its per-ISA kernels
 * (linear.c's scalar set, linear_avx2.c).  Not part of the public API.
 */
#ifndef DSV4_CPU_INT_H
#define DSV4_CPU_INT_H

#include "kernels/linear.h"

#include <stdint.h>

/* Weight rows per tile and columns per decoded chunk (a multiple of 128, so
 * chunks start on a block boundary of every format). */
#define LIN_RT      4
#define LIN_KC      1024
#define LIN_SCRATCH (LIN_RT * LIN_KC * sizeof(float)) /* per thread, allocated by dsv4_pool_init */

/* Batch-1 kernels prefetch weights this many bytes ahead of their loads:
 * hardware prefetchers stop at 4 KiB page ends, a software hint does not. */
#define LIN_PF 1024

/* Per-thread scratch reserved for the kernels of this folder (pool.c). */
struct dsv4_pool;
void *dsv4_pool_kscratch(struct dsv4_pool *p, int thread, size_t bytes);

struct dsv4_cpu_kern {
    const char *name;
    /* out[nr][len] = weight value * block scale (NVFP4 without scale2) for
     * rows r0.., columns k0..k0+len-1; k0 % 128 == 0, nr <= LIN_RT, len <= LIN_KC. */
    void (*decode)(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0, int len,
                   float *out);
    /* out[i * LIN_RT + r] = sum_j x[i * xs + j] * wt[r * len + j] for i < nm
     * (nm <= 2 activation rows, stride xs), r < nr (FP32). */
    void (*dot)(const float *x, int64_t xs, int nm, const float *wt, int nr, int len, float *out);
    /* Exact dequantised activations of the reference quantisers. */
    void (*act_fp8)(const float *x, int64_t n, int group, float *out);
    void (*act_nvfp4)(const float *x, int64_t n, float input_scale, float *out);

    /* Batch-1 fused paths (NULL when the ISA has none).  gemv_fp8: FP8
     * weights, cols % 128 == 0, x = exact dequantised activations:
     * y[o] = sum_k x[k] * w(o, k) for o in r0..r0+nr-1. */
    void (*gemv_fp8)(const struct dsv4_qweight *w, const float *x, int64_t r0, int64_t nr,
                     float *y);
    /* W4A4 on NVFP4 weights, cols % 64 == 0.  act_w4a4 quantises x like
     * dsv4_act_quant_nvfp4 into int8 2*e2m1 values split by parity (qe[j] =
     * element 2j, qo[j] = element 2j + 1; [n/2] each) and per-16 scales
     * sfa2[2b] = sfa2[2b + 1] = e4m3(sf[b]) * 64; gemv_w4a4 then computes
     * y[o] = alpha * sum_b (sum_{k in b} qa qw) * sfa * sfw. */
    void (*act_w4a4)(const float *x, int64_t n, float input_scale, int8_t *qe, int8_t *qo,
                     float *sfa2);
    void (*gemv_w4a4)(const struct dsv4_qweight *w, const int8_t *qe, const int8_t *qo,
                      const float *sfa2, float alpha, int64_t r0, int64_t nr, float *y);
    /* MXFP4 weights with FP8 (or F32-exact-in-BF16) activations, cols % 64
     * == 0: xa = exact dequantised activations, xe/xo = their BF16 bits
     * split by parity ([cols/2] each); y[o] = sum_k xa[k] * w(o, k). */
    void (*gemv_mxfp4)(const struct dsv4_qweight *w, const uint16_t *xe, const uint16_t *xo,
                       const float *xa, int64_t r0, int64_t nr, float *y);
};

extern const struct dsv4_cpu_kern dsv4_cpu_kern_scalar;
extern const struct dsv4_cpu_kern dsv4_cpu_kern_avx2;

/* AVX-512F/BW replacements of the AVX2 gemv_fp8 and dot (linear_avx512.c). */
void dsv4_cpu_dot_avx512(const float *x, int64_t xs, int nm, const float *wt, int nr, int len,
                         float *out);
void dsv4_cpu_gemv_fp8_avx512(const struct dsv4_qweight *w, const float *x, int64_t r0, int64_t nr,
                              float *y);

void dsv4_cpu_decode_avx512(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0, int len,
                            float *out);
void dsv4_cpu_gemv_w4a4_avx512(const struct dsv4_qweight *w, const int8_t *qe, const int8_t *qo,
                               const float *sfa2, float alpha, int64_t r0, int64_t nr, float *y);
void dsv4_cpu_gemv_mxfp4_bf16(const struct dsv4_qweight *w, const uint16_t *xe, const uint16_t *xo,
                              const float *xa, int64_t r0, int64_t nr, float *y);

#endif
