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
#define LIN_RT 4
#define LIN_KC 1024

struct dsv4_cpu_kern {
    const char *name;
    /* out[nr][len] = weight value * block scale (NVFP4 without scale2) for
     * rows r0.., columns k0..k0+len-1; k0 % 128 == 0, nr <= LIN_RT, len <= LIN_KC. */
    void (*decode)(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0, int len,
                   float *out);
    /* out[r] = sum_j x[j] * wt[r * len + j] for r < nr (FP32). */
    void (*dot)(const float *x, const float *wt, int nr, int len, float *out);
    /* Exact dequantised activations of the reference quantisers. */
    void (*act_fp8)(const float *x, int64_t n, int group, float *out);
    void (*act_nvfp4)(const float *x, int64_t n, float input_scale, float *out);
};

extern const struct dsv4_cpu_kern dsv4_cpu_kern_scalar;
extern const struct dsv4_cpu_kern dsv4_cpu_kern_avx2;

#endif
