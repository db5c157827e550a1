/*
 * math.cuh - per-element math shared by the CUDA kernels and the host: the
 * number formats of the checkpoints (BF16, E4M3, E8M0, E2M1), the
 * reference's activation quantisers, the power-of-two scale, and the
 * transcendental helpers every kernel uses.
 *
 * Why a header of its own: the kernels must compute exactly what
 * kernels/ref/formats.c computes, and that can be tested without a GPU only
 * if the very code the kernels run also compiles for the host.  So every
 * function here is `static inline` C that nvcc compiles as __host__
 * __device__ and a plain C compiler compiles as host code;
 * tests/cuda/test_cuda_math.c checks each one against kernels/ref in every
 * build (make check, no GPU needed).
 *
 * Invariants (each checked by that test):
 *   - decoders are exact; encoders return the code kernels/ref returns
 *     under the same rounding mode (RNE or ties-to-lower);
 *   - the quantisers of one group (FP8 per 128 or 64, FP4 per 32, NVFP4 per
 *     16) return the codes and scales of dsv4_act_quant_fp8 /
 *     dsv4_act_sim_fp4 / dsv4_act_quant_nvfp4, NaN handling included;
 *   - no product feeds an addition unrounded: nvcc would contract a * b + c
 *     into one FMA on the device but not on the host (ISO C), so sums of
 *     products go through dsv4_cu_mul / dsv4_cu_add (__fmul_rn / __fadd_rn
 *     on the device), and device and host round alike;
 *   - exp/log1p/cos/sin are evaluated in double and rounded to float once
 *     (dsv4_cu_expf ...): correctly rounded in all but ~2^-29 of inputs on
 *     both sides, so they agree with glibc's correctly rounded expf and
 *     with each other (CUDA's own expf may be 2 ulp off).
 */
#ifndef DSV4_CUDA_MATH_CUH
#define DSV4_CUDA_MATH_CUH

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define DSV4_HD static inline __host__ __device__
#else
#define DSV4_HD static inline
#endif

/* Rounding modes of the encoders (the values of enum dsv4_round, kernels/formats.h). */
#define DSV4_CU_RNE        0
#define DSV4_CU_TIES_LOWER 1

/* ------------------------------------------------------------ bits and rounding-exact ops */

DSV4_HD uint32_t dsv4_cu_f2u(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

DSV4_HD float dsv4_cu_u2f(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* a * b and a + b rounded once each (never fused into an FMA). */
DSV4_HD float dsv4_cu_mul(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

DSV4_HD float dsv4_cu_add(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

DSV4_HD double dsv4_cu_dmul(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

DSV4_HD double dsv4_cu_dadd(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

/* Correctly rounded (but for double rounding) float transcendental functions. */
DSV4_HD float dsv4_cu_expf(float x)
{
    return (float)exp((double)x);
}

DSV4_HD float dsv4_cu_log1pf(float x)
{
    return (float)log1p((double)x);
}

DSV4_HD float dsv4_cu_sigmoid(float v)
{
    return 1.0f / (1.0f + dsv4_cu_expf(-v));
}

/* NaN-keeping clamp to [-lim, lim] (fminf/fmaxf would drop the NaN). */
DSV4_HD float dsv4_cu_clamp(float v, float lim)
{
    return v > lim ? lim : v < -lim ? -lim : v;
}

/* ------------------------------------------------------------ BF16 */

DSV4_HD float dsv4_cu_bf16_to_f32(uint16_t h)
{
    return dsv4_cu_u2f((uint32_t)h << 16);
}

/* RNE; NaN stays a quiet NaN of the same sign; overflow rounds to infinity. */
DSV4_HD uint16_t dsv4_cu_f32_to_bf16(float f)
{
    uint32_t u = dsv4_cu_f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

DSV4_HD float dsv4_cu_bf16_round(float f)
{
    return dsv4_cu_bf16_to_f32(dsv4_cu_f32_to_bf16(f));
}

/* ------------------------------------------------------------ E4M3, E8M0, E2M1 */

/* float8_e4m3fn code -> value (exact): S.EEEE.MMM, bias 7, S.1111.111 = NaN. */
DSV4_HD float dsv4_cu_e4m3_to_f32(uint8_t b)
{
    uint32_t e = (b >> 3) & 15u, m = b & 7u, s = (uint32_t)(b & 0x80) << 24;
    if (e == 15 && m == 7)
        return dsv4_cu_u2f(s | 0x7fc00000u);
    if (e == 0)
        return dsv4_cu_u2f(s | dsv4_cu_f2u((float)m * 0x1p-9f));
    return dsv4_cu_u2f(s | ((e + 120u) << 23) | (m << 20));
}

/* E8M0 exponent byte -> 2^(b - 127); 0 gives 2^-127 (an FP32 subnormal), 0xFF NaN. */
DSV4_HD float dsv4_cu_e8m0_to_f32(uint8_t b)
{
    if (b == 0xff)
        return dsv4_cu_u2f(0x7fc00000u);
    if (b == 0)
        return 0x1p-127f;
    return dsv4_cu_u2f((uint32_t)b << 23);
}

/* E2M1 nibble -> value: bit 3 sign, magnitude {0, .5, 1, 1.5, 2, 3, 4, 6}. */
DSV4_HD float dsv4_cu_e2m1_to_f32(uint8_t nib)
{
    uint32_t i = nib & 7u;
    float v = i < 2 ? 0.5f * (float)i : (float)(2 + (i & 1)) * (float)(1u << (i >> 1)) * 0.25f;
    return (nib & 8) ? -v : v;
}

/*
 * Count of quanta rounded to an integer under `mode` (n >= 0 exact: it comes from |x| by
 * a power-of-two scaling, so floor and the fraction are exact).
 */
DSV4_HD float dsv4_cu_round_count(float n, int mode)
{
    float fl = floorf(n), fr = n - fl;
    if (fr > 0.5f)
        return fl + 1.0f;
    if (fr < 0.5f)
        return fl;
    if (mode == DSV4_CU_TIES_LOWER)
        return fl;
    return fmodf(fl, 2.0f) == 0.0f ? fl : fl + 1.0f;
}

/* Nearest E4M3 code (kernels/formats.h dsv4_f32_to_e4m3, same algorithm). */
DSV4_HD uint8_t dsv4_cu_f32_to_e4m3(float f, int mode, bool saturate)
{
    uint32_t u = dsv4_cu_f2u(f);
    uint32_t sign = (u >> 24) & 0x80u;
    float a = fabsf(f);
    if (a != a)
        return (uint8_t)(sign | 0x7f);
    if (a >= 512.0f)
        return saturate ? (uint8_t)(sign | 0x7e) : (uint8_t)(sign | 0x7f);
    int e = a < 0x1p-6f ? -6 : (int)((dsv4_cu_f2u(a) >> 23) & 0xff) - 127;
    float r = dsv4_cu_round_count(ldexpf(a, 3 - e), mode);
    int code = (a < 0x1p-6f) ? (int)r : ((e + 7) << 3) + (int)r - 8;
    if (code > 0x7e)
        code = saturate ? 0x7e : 0x7f;
    if (code == 0 && mode == DSV4_CU_TIES_LOWER)
        sign = 0;
    return (uint8_t)(sign | (uint32_t)code);
}

/* Nearest E2M1 nibble, saturating at +-6 (NaN encodes +0). */
DSV4_HD uint8_t dsv4_cu_f32_to_e2m1(float f, int mode)
{
    uint8_t sign = (uint8_t)((dsv4_cu_f2u(f) >> 28) & 8u);
    float a = fabsf(f);
    uint8_t c;
    if (a != a)
        return 0;
    if (mode == DSV4_CU_TIES_LOWER)
        c = a <= 0.25f   ? 0
            : a <= 0.75f ? 1
            : a <= 1.25f ? 2
            : a <= 1.75f ? 3
            : a <= 2.5f  ? 4
            : a <= 3.5f  ? 5
            : a <= 5.0f  ? 6
                         : 7;
    else
        c = a <= 0.25f   ? 0
            : a < 0.75f  ? 1
            : a <= 1.25f ? 2
            : a < 1.75f  ? 3
            : a <= 2.5f  ? 4
            : a < 3.5f   ? 5
            : a <= 5.0f  ? 6
                         : 7;
    if (c == 0 && mode == DSV4_CU_TIES_LOWER)
        sign = 0;
    return (uint8_t)(sign | c);
}

/* 2^ceil(log2(amax / qmax)) as the reference kernel forms it (dsv4_pow2_scale). */
DSV4_HD float dsv4_cu_pow2_scale(float amax, float qmax)
{
    float t = dsv4_cu_mul(amax, 1.0f / qmax);
    uint32_t u = dsv4_cu_f2u(t);
    uint32_t e = (u >> 23) & 0xffu, m = u & 0x7fffffu;
    if (t != t)
        return dsv4_cu_u2f(0x7fc00000u);
    if (e == 0xff)
        return dsv4_cu_u2f(0x7f800000u);
    e += m != 0;
    return dsv4_cu_u2f(e << 23);
}

/* ------------------------------------------------------------ activation quantisers (one group) */

/* max |x[i * stride]| over n values; NaN when any is NaN. */
DSV4_HD float dsv4_cu_amax(const float *x, int n)
{
    float m = 0.0f;
    bool nan = false;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        nan |= a != a;
        m = a > m ? a : m;
    }
    return nan ? dsv4_cu_u2f(0x7fc00000u) : m;
}

/* Scale of an FP8 group: pow2_scale(max(amax, 1e-4), 448). */
DSV4_HD float dsv4_cu_fp8_scale(float amax)
{
    return dsv4_cu_pow2_scale(amax < 1e-4f ? 1e-4f : amax, 448.0f);
}

/* E4M3 code of x in a group of scale sc (RNE, saturating after the clamp). */
DSV4_HD uint8_t dsv4_cu_fp8_code(float x, float sc)
{
    return dsv4_cu_f32_to_e4m3(dsv4_cu_clamp(x / sc, 448.0f), DSV4_CU_RNE, true);
}

/* One FP8 group of n <= group values: codes q[n] and the scale (dsv4_act_quant_fp8). */
DSV4_HD float dsv4_cu_quant_fp8_group(const float *x, int n, uint8_t *q)
{
    float sc = dsv4_cu_fp8_scale(dsv4_cu_amax(x, n));
    for (int i = 0; i < n; i++)
        q[i] = dsv4_cu_fp8_code(x[i], sc);
    return sc;
}

/* FP8 quantise-dequantise of one group in place (dsv4_act_sim_fp8). */
DSV4_HD void dsv4_cu_sim_fp8_group(float *x, int n)
{
    float sc = dsv4_cu_fp8_scale(dsv4_cu_amax(x, n));
    for (int i = 0; i < n; i++)
        x[i] = dsv4_cu_mul(dsv4_cu_e4m3_to_f32(dsv4_cu_fp8_code(x[i], sc)), sc);
}

/* FP4 quantise-dequantise of one group in place (dsv4_act_sim_fp4). */
DSV4_HD void dsv4_cu_sim_fp4_group(float *x, int n)
{
    const float floor4 = 6.0f * 0x1p-126f;
    float amax = dsv4_cu_amax(x, n);
    float sc = dsv4_cu_pow2_scale(amax < floor4 ? floor4 : amax, 6.0f);
    for (int i = 0; i < n; i++) {
        uint8_t c = dsv4_cu_f32_to_e2m1(dsv4_cu_clamp(x[i] / sc, 6.0f), DSV4_CU_RNE);
        x[i] = dsv4_cu_mul(dsv4_cu_e2m1_to_f32(c), sc);
    }
}

/*
 * One NVFP4 block of n <= 16 values (dsv4_act_quant_nvfp4): E2M1 codes q[n] (one per
 * byte, unpacked) and the E4M3 block scale code returned.  gs = 1 / input_scale.
 */
DSV4_HD uint8_t dsv4_cu_quant_nvfp4_group(const float *x, int n, float input_scale, uint8_t *q)
{
    float gs = 1.0f / input_scale;
    float amax = dsv4_cu_amax(x, n);
    uint8_t sfc =
            dsv4_cu_f32_to_e4m3(dsv4_cu_mul(gs, dsv4_cu_mul(amax, 1.0f / 6.0f)), DSV4_CU_RNE, true);
    float sfv = dsv4_cu_e4m3_to_f32(sfc);
    float osc = sfv != 0.0f ? 1.0f / dsv4_cu_mul(sfv, 1.0f / gs) : 0.0f;
    for (int i = 0; i < n; i++)
        q[i] = dsv4_cu_f32_to_e2m1(dsv4_cu_mul(x[i], osc), DSV4_CU_RNE);
    return sfc;
}

#endif
