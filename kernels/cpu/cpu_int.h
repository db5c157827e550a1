/*
 * cpu_int.h - internal interface between the instruction-set independent
 * driver of the CPU linear kernels (linear.c) and its per-ISA kernel sets
 * (linear.c's scalar set, linear_avx2.c, linear_avx512.c; the last two are
 * one template, linear_simd.h, instantiated at two vector widths).  Not
 * part of the public API.
 *
 * The driver quantises the activations once per call into padded rows
 * (struct lin_job), splits the output rows over the pool and calls the
 * set's `rows`; the set computes every output of those rows for all m
 * activation rows.  Batch invariance (cpu.h) is the sets' contract: an
 * output's value depends only on its weight row and its activation row.
 */
#ifndef DSV4_CPU_INT_H
#define DSV4_CPU_INT_H

#include "kernels/linear.h"

#include <stddef.h>
#include <stdint.h>

/* Weight rows per tile (and per batch-1 row group: a multiple of it never
 * straddles an FP8 128-row scale group), columns per decoded chunk (a
 * multiple of 128, so chunks start on a block boundary of every format),
 * activation rows per cache block of the batched path. */
#define LIN_NR 4
#define LIN_KC 1024
#define LIN_MB 64
/* Activation rows are padded with zeros to a multiple of this (every
 * set's widest step: the 128-column FP8 block, the AVX-512 W4A4 chunk). */
#define LIN_KPAD 128
/* Per-thread scratch of the kernels, allocated by dsv4_pool_init: a decoded
 * tile (LIN_NR x LIN_KC floats) and the accumulators of an activation block
 * (LIN_MB x LIN_NR vectors of up to 16 floats). */
#define LIN_TROW       (LIN_KC + 16) /* floats per tile row: rows 4 KiB apart share L1 sets */
#define LIN_TILE_BYTES (LIN_NR * LIN_TROW * sizeof(float))
#define LIN_SCRATCH    (LIN_TILE_BYTES + LIN_MB * LIN_NR * 16 * sizeof(float))

/* Batch-1 kernels prefetch weights this many bytes ahead of their loads:
 * hardware prefetchers stop at 4 KiB page ends, a software hint does not. */
#define LIN_PF 1024

/* Per-thread scratch reserved for the kernels of this folder (pool.c). */
struct dsv4_pool;
void *dsv4_pool_kscratch(struct dsv4_pool *p, int thread, size_t bytes);

/*
 * Reduction families (how a set sums one output; each set documents its
 * fixed order per family):
 *   LIN_FAM_F  sum of x[k] * w(o, k) with w decoded to FP32 including its
 *              block scale (F32, BF16; MXFP4 and NVFP4 with F32 or FP8
 *              activations; every format in the scalar set)
 *   LIN_FAM_B  FP8 weights: per 128-column block a partial sum of x[k] *
 *              e4m3(o, k), then acc += partial * block scale
 *   LIN_FAM_I  NVFP4 W4A4: exact integer sums of the int8 2*E2M1 codes per
 *              half block (8 columns), acc += sum * (activation scale *
 *              weight scale)
 */
enum { LIN_FAM_F = 0, LIN_FAM_B = 1, LIN_FAM_I = 2 };

struct lin_job {
    const struct dsv4_qweight *w;
    int fam;
    int64_t m;
    int64_t kx; /* padded row length of the activations (multiple of LIN_KPAD) */
    /* LIN_FAM_F/B: [m, kx] activations (exact dequantised values or the
     * F32 input), zero beyond cols */
    const float *x;
    /* LIN_FAM_I: act_w4a4 planes: [m, kx/2] int8 codes of the even and odd
     * elements, [m, kx/8] lane scales; zero beyond cols; [m, kx/8] lane
     * corrections 12 * (sum of the lane's 8 codes), see linear_simd.h */
    const int8_t *qe, *qo;
    const float *sfa2;
    const int32_t *acorr;
    float alpha; /* final factor (NVFP4 scale2 [* input_scale]) or 1 */
    float *y;    /* [m, rows], rows ldy floats apart */
    int64_t ldy;
};

struct dsv4_cpu_kern {
    const char *name;
    /* NVFP4 activations through act_w4a4 and LIN_FAM_I (else dequantised
     * by act_nvfp4 and LIN_FAM_F) */
    int w4a4;
    /* Exact dequantised activations of the reference quantisers. */
    void (*act_fp8)(const float *x, int64_t n, int group, float *out);
    void (*act_nvfp4)(const float *x, int64_t n, float input_scale, float *out);
    /* Quantises x like dsv4_act_quant_nvfp4 into int8 2*e2m1 values split
     * by parity (qe[j] = element 2j, qo[j] = element 2j + 1) and one scale
     * per 8 elements, sfa2[j] = e4m3(sf[j / 2]) * 64; entries past n up to
     * the next multiple of 16 elements are zero.  NULL when w4a4 is 0. */
    void (*act_w4a4)(const float *x, int64_t n, float input_scale, int8_t *qe, int8_t *qo,
                     float *sfa2);
    /* LIN_FAM_B: the job's activations are x * 2^fp8_xexp (exact), to match the set's FP8
     * decoder (linear_simd.h, blk_factor) */
    int fp8_xexp;
    /* y[i, o] for every activation row i and o in [r0, r1); r0 % LIN_NR == 0.
     * scratch: LIN_SCRATCH bytes, 64-byte aligned. */
    void (*rows)(const struct lin_job *j, int64_t r0, int64_t r1, void *scratch);
};

extern const struct dsv4_cpu_kern dsv4_cpu_kern_scalar;
extern const struct dsv4_cpu_kern dsv4_cpu_kern_avx2;
/* rows of the AVX-512F/BW set (the activation functions are AVX2's) */
void dsv4_cpu_rows_avx512(const struct lin_job *j, int64_t r0, int64_t r1, void *scratch);
extern const int dsv4_cpu_fp8_xexp_avx512;

#endif
