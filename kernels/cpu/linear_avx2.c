/*
 * linear_avx2.c - AVX2/FMA/F16C kernels of the CPU linear driver
 * (cpu_int.h): weight decoders, 4-row dot products and the activation
 * quantisers, compiled with a target attribute so the rest of the build
 * stays generic; linear.c only calls them when the CPU has the features.
 *
 * Decoding tricks (all exact):
 *   E4M3 -> FP16 bits: (code << 8) arithmetic-shifted right by 1 puts the
 *     sign in bit 15 and EEEEMMM in bits 13..7; clearing bit 14 (the copy
 *     of the sign) leaves an FP16 equal to the E4M3 value * 2^-8, which
 *     F16C widens to FP32 (subnormals included); the block scale * 256 is
 *     applied in one multiply.  NaN codes decode as 480 (linear.h: weights
 *     never hold them).
 *   E2M1 -> int8 2*value through a 16-entry PSHUFB table, widened and
 *     converted, times half the block scale.
 * Activation rounding (reference: dsv4_act_quant_fp8 / _nvfp4):
 *   to E4M3 RNE: normal range by integer rounding of the FP32 mantissa to
 *     3 bits (ties to even), subnormal range |v| < 2^-6 by rint(v * 2^9) /
 *     2^9; to E2M1 RNE: 1 mantissa bit for |v| >= 1, rint(2v)/2 below,
 *     then saturation at 6.  Tails fall back to the scalar encoders.
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* ---------------------------------------------------------------- decoders */

AVX2 static void dec_bf16(const uint16_t *src, int len, float *d)
{
    int j = 0;
    for (; j + 8 <= len; j += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + j)));
        _mm256_storeu_ps(d + j, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; j < len; j++)
        d[j] = dsv4_bf16_to_f32(src[j]);
}

/* 16 E4M3 codes -> 16 floats * fac */
AVX2 static inline void e4m3x16(const uint8_t *src, __m256 fac, float *d)
{
    __m256i t = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)src));
    t = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(t, 8), 1),
                         _mm256_set1_epi16((short)0xbfff));
    _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(t)), fac));
    _mm256_storeu_ps(d + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(t, 1)), fac));
}

AVX2 static void dec_fp8(const uint8_t *src, const uint8_t *scale, int len, float *d)
{
    for (int b0 = 0; b0 < len; b0 += 128) {
        int bl = DSV4_MIN(128, len - b0), j = 0;
        uint8_t sb = scale[b0 / 128];
        if (sb <= 246) {
            __m256 fac = _mm256_set1_ps(dsv4_e8m0_to_f32(sb) * 256.0f);
            for (; j + 16 <= bl; j += 16)
                e4m3x16(src + b0 + j, fac, d + b0 + j);
        }
        float s = dsv4_e8m0_to_f32(sb);
        for (; j < bl; j++)
            d[b0 + j] = dsv4_e4m3_to_f32(src[b0 + j]) * s;
    }
}

/* 32 packed E2M1 (16 bytes) -> two vectors of 16 int8 holding 2 * value */
AVX2 static inline void e2m1x32(const uint8_t *src, __m128i *v0, __m128i *v1)
{
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m128i m4 = _mm_set1_epi8(15);
    __m128i b = _mm_loadu_si128((const __m128i *)src);
    __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    *v0 = _mm_shuffle_epi8(lut, _mm_unpacklo_epi8(lo, hi));
    *v1 = _mm_shuffle_epi8(lut, _mm_unpackhi_epi8(lo, hi));
}

/* 16 int8 -> 16 floats * fac */
AVX2 static inline void i8x16(__m128i v, __m256 fac, float *d)
{
    __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_ps(d, _mm256_mul_ps(a, fac));
    _mm256_storeu_ps(d + 8, _mm256_mul_ps(b, fac));
}

/* MXFP4 (bs 32, E8M0) or NVFP4 (bs 16, E4M3) row segment starting at element k0 (even) */
AVX2 static void dec_fp4(const uint8_t *row, const uint8_t *scale, int64_t k0, int len, int bs,
                         float *d)
{
    const float *t8 = dsv4_e4m3_table();
    int j = 0;
    for (; j + 32 <= len; j += 32) {
        int64_t k = k0 + j;
        __m128i v0, v1;
        e2m1x32(row + k / 2, &v0, &v1);
        if (bs == 32) {
            __m256 fac = _mm256_set1_ps(dsv4_e8m0_to_f32(scale[k / 32]) * 0.5f);
            i8x16(v0, fac, d + j);
            i8x16(v1, fac, d + j + 16);
        } else {
            i8x16(v0, _mm256_set1_ps(t8[scale[k / 16]] * 0.5f), d + j);
            i8x16(v1, _mm256_set1_ps(t8[scale[k / 16 + 1]] * 0.5f), d + j + 16);
        }
    }
    for (; j < len; j++) {
        int64_t k = k0 + j;
        float v = dsv4_e2m1_to_f32((row[k / 2] >> (4 * (k & 1))) & 15);
        d[j] = v * (bs == 32 ? dsv4_e8m0_to_f32(scale[k / 32]) : t8[scale[k / 16]]);
    }
}

AVX2 static void decode_avx2(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0, int len,
                             float *out)
{
    for (int r = 0; r < nr; r++) {
        int64_t o = r0 + r;
        float *d = out + (int64_t)r * len;
        switch (w->fmt) {
        case DSV4_WFMT_F32:
            memcpy(d, (const float *)w->w + o * w->cols + k0, (size_t)len * sizeof(float));
            break;
        case DSV4_WFMT_BF16:
            dec_bf16((const uint16_t *)w->w + o * w->cols + k0, len, d);
            break;
        case DSV4_WFMT_FP8:
            dec_fp8((const uint8_t *)w->w + o * w->cols + k0,
                    w->scale + (o / 128) * ((w->cols + 127) / 128) + k0 / 128, len, d);
            break;
        case DSV4_WFMT_MXFP4:
            dec_fp4((const uint8_t *)w->w + o * ((w->cols + 1) / 2),
                    w->scale + o * ((w->cols + 31) / 32), k0, len, 32, d);
            break;
        case DSV4_WFMT_NVFP4:
            dec_fp4((const uint8_t *)w->w + o * ((w->cols + 1) / 2),
                    w->scale + o * ((w->cols + 15) / 16), k0, len, 16, d);
            break;
        }
    }
}

/* ---------------------------------------------------------------- dot products */

AVX2 static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 2 activation rows x 4 weight rows: 8 independent FMA chains, 6 loads per 8 FMAs */
AVX2 static void dot_avx2(const float *x, int64_t xs, int nm, const float *wt, int nr, int len,
                          float *out)
{
    if (nm == 2 && nr == 4) {
        const float *x0 = x, *x1 = x + xs;
        const float *w0 = wt, *w1 = wt + len, *w2 = wt + 2 * len, *w3 = wt + 3 * len;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int j = 0;
        for (; j + 8 <= len; j += 8) {
            __m256 u = _mm256_loadu_ps(x0 + j), v = _mm256_loadu_ps(x1 + j);
            __m256 q0 = _mm256_loadu_ps(w0 + j), q1 = _mm256_loadu_ps(w1 + j);
            __m256 q2 = _mm256_loadu_ps(w2 + j), q3 = _mm256_loadu_ps(w3 + j);
            a0 = _mm256_fmadd_ps(u, q0, a0);
            a1 = _mm256_fmadd_ps(u, q1, a1);
            a2 = _mm256_fmadd_ps(u, q2, a2);
            a3 = _mm256_fmadd_ps(u, q3, a3);
            b0 = _mm256_fmadd_ps(v, q0, b0);
            b1 = _mm256_fmadd_ps(v, q1, b1);
            b2 = _mm256_fmadd_ps(v, q2, b2);
            b3 = _mm256_fmadd_ps(v, q3, b3);
        }
        float *o0 = out, *o1 = out + LIN_RT;
        o0[0] = hsum(a0), o0[1] = hsum(a1), o0[2] = hsum(a2), o0[3] = hsum(a3);
        o1[0] = hsum(b0), o1[1] = hsum(b1), o1[2] = hsum(b2), o1[3] = hsum(b3);
        for (; j < len; j++)
            for (int r = 0; r < 4; r++) {
                o0[r] += x0[j] * wt[r * len + j];
                o1[r] += x1[j] * wt[r * len + j];
            }
        return;
    }
    for (int i = 0; i < nm; i++)
        for (int r = 0; r < nr; r++) {
            const float *xi = x + i * xs, *wr = wt + (int64_t)r * len;
            __m256 a = _mm256_setzero_ps(), b = a;
            int j = 0;
            for (; j + 16 <= len; j += 16) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(xi + j), _mm256_loadu_ps(wr + j), a);
                b = _mm256_fmadd_ps(_mm256_loadu_ps(xi + j + 8), _mm256_loadu_ps(wr + j + 8), b);
            }
            for (; j + 8 <= len; j += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(xi + j), _mm256_loadu_ps(wr + j), a);
            float acc = hsum(_mm256_add_ps(a, b));
            for (; j < len; j++)
                acc += xi[j] * wr[j];
            out[i * LIN_RT + r] = acc;
        }
}

/* ---------------------------------------------------------------- activations */

/* max |x| of n values (n % 8 == 0) with NaN propagation */
AVX2 static float amax8(const float *x, int64_t n)
{
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        m = _mm256_max_ps(m, _mm256_and_ps(v, abs));
    }
    if (_mm256_movemask_ps(nan))
        return NAN;
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* clamp to [-lim, lim] keeping NaN: MAXPS/MINPS return the second operand on NaN */
AVX2 static inline __m256 clamp_keep_nan(__m256 v, float lim)
{
    return _mm256_min_ps(_mm256_set1_ps(lim), _mm256_max_ps(_mm256_set1_ps(-lim), v));
}

/* round to E4M3 (RNE) a vector already clamped to [-448, 448] */
AVX2 static inline __m256 round_e4m3(__m256 v)
{
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7ffff), odd));
    __m256 rn = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xfff00000u)));
    __m256 rs = _mm256_mul_ps(_mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(512.0f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                              _mm256_set1_ps(1.0f / 512.0f));
    __m256 sub = _mm256_cmp_ps(_mm256_and_ps(v, abs), _mm256_set1_ps(0x1p-6f), _CMP_LT_OQ);
    return _mm256_blendv_ps(rn, rs, sub);
}

/* round to E2M1 (RNE, saturating at 6) */
AVX2 static inline __m256 round_e2m1(__m256 v)
{
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 22), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x1fffff), odd));
    __m256 rn = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffc00000u)));
    __m256 rs = _mm256_mul_ps(
            _mm256_round_ps(_mm256_add_ps(v, v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
            _mm256_set1_ps(0.5f));
    __m256 sub = _mm256_cmp_ps(_mm256_and_ps(v, abs), _mm256_set1_ps(1.0f), _CMP_LT_OQ);
    return clamp_keep_nan(_mm256_blendv_ps(rn, rs, sub), 6.0f);
}

AVX2 static void act_fp8_avx2(const float *x, int64_t n, int group, float *out)
{
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = DSV4_MIN((int64_t)group, n - g0), v8 = len & ~(int64_t)7;
        const float *xg = x + g0;
        float *og = out + g0;
        float amax = amax8(xg, v8);
        for (int64_t i = v8; i < len; i++) {
            float a = fabsf(xg[i]);
            amax = (a != a || amax != amax) ? NAN : (a > amax ? a : amax);
        }
        float s = dsv4_pow2_scale(amax < 1e-4f ? 1e-4f : amax, 448.0f);
        __m256 inv = _mm256_set1_ps(1.0f / s), sv = _mm256_set1_ps(s);
        for (int64_t i = 0; i < v8; i += 8) {
            __m256 v = clamp_keep_nan(_mm256_mul_ps(_mm256_loadu_ps(xg + i), inv), 448.0f);
            _mm256_storeu_ps(og + i, _mm256_mul_ps(round_e4m3(v), sv));
        }
        for (int64_t i = v8; i < len; i++) {
            float v = xg[i] / s;
            v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
            og[i] = dsv4_e4m3_to_f32(dsv4_f32_to_e4m3(v, DSV4_ROUND_NEAREST_EVEN, true)) * s;
        }
    }
}

AVX2 static void act_nvfp4_avx2(const float *x, int64_t n, float input_scale, float *out)
{
    float gs = 1.0f / input_scale;
    int64_t g0 = 0;
    for (; g0 + 16 <= n; g0 += 16) {
        float amax = amax8(x + g0, 16);
        uint8_t sfc = dsv4_f32_to_e4m3(gs * (amax * (1.0f / 6.0f)), DSV4_ROUND_NEAREST_EVEN, true);
        float sfv = dsv4_e4m3_to_f32(sfc);
        float osc = sfv != 0.0f ? 1.0f / (sfv * (1.0f / gs)) : 0.0f;
        __m256 o = _mm256_set1_ps(osc), sv = _mm256_set1_ps(sfv);
        __m256 r0 = round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0), o));
        __m256 r1 = round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0 + 8), o));
        _mm256_storeu_ps(out + g0, _mm256_mul_ps(r0, sv));
        _mm256_storeu_ps(out + g0 + 8, _mm256_mul_ps(r1, sv));
    }
    if (g0 < n) {
        uint8_t q[8], sf;
        int64_t len = n - g0;
        dsv4_act_quant_nvfp4(x + g0, len, input_scale, q, &sf);
        for (int64_t i = 0; i < len; i++)
            out[g0 + i] = dsv4_e2m1_to_f32((q[i / 2] >> (4 * (i & 1))) & 15) * dsv4_e4m3_to_f32(sf);
    }
}

/* ---------------------------------------------------------------- batch-1 fused paths */

AVX2 static void gemv_fp8_avx2(const struct dsv4_qweight *w, const float *x, int64_t r0, int64_t nr,
                               float *y)
{
    const int64_t K = w->cols, nsb = K / 128;
    const __m256i keep = _mm256_set1_epi16((short)0xbfff);
    for (int64_t o = r0; o < r0 + nr; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * K;
        const uint8_t *sc = w->scale + (o / 128) * nsb;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *wb = row + b * 128;
            const float *xb = x + b * 128;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int j = 0; j < 128; j += 32) {
                if (!(j & 32))
                    _mm_prefetch((const char *)(wb + j) + LIN_PF, _MM_HINT_T0);
                __m256i t0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(wb + j)));
                __m256i t1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(wb + j + 16)));
                t0 = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(t0, 8), 1), keep);
                t1 = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(t1, 8), 1), keep);
                a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(t0)),
                                     _mm256_loadu_ps(xb + j), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(t0, 1)),
                                     _mm256_loadu_ps(xb + j + 8), a1);
                a2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(t1)),
                                     _mm256_loadu_ps(xb + j + 16), a2);
                a3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(t1, 1)),
                                     _mm256_loadu_ps(xb + j + 24), a3);
            }
            uint8_t sb = sc[b];
            /* scales past 2^119 would overflow the folded factor: two steps */
            float f = sb <= 246 ? dsv4_e8m0_to_f32(sb) * 256.0f : dsv4_e8m0_to_f32(sb);
            __m256 blk = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            if (sb > 246)
                blk = _mm256_mul_ps(blk, _mm256_set1_ps(256.0f));
            acc = _mm256_fmadd_ps(blk, _mm256_set1_ps(f), acc);
        }
        y[o - r0] = hsum(acc);
    }
}

AVX2 static void act_w4a4_avx2(const float *x, int64_t n, float input_scale, int8_t *qe, int8_t *qo,
                               float *sfa2)
{
    float gs = 1.0f / input_scale, r[16];
    for (int64_t g0 = 0; g0 < n; g0 += 16) {
        float amax = amax8(x + g0, 16);
        uint8_t sfc = dsv4_f32_to_e4m3(gs * (amax * (1.0f / 6.0f)), DSV4_ROUND_NEAREST_EVEN, true);
        float sfv = dsv4_e4m3_to_f32(sfc);
        float osc = sfv != 0.0f ? 1.0f / (sfv * (1.0f / gs)) : 0.0f;
        __m256 o = _mm256_set1_ps(osc);
        _mm256_storeu_ps(r, round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0), o)));
        _mm256_storeu_ps(r + 8, round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0 + 8), o)));
        for (int i = 0; i < 16; i += 2) {
            /* NaN only with a NaN scale, which poisons the block anyway */
            qe[(g0 + i) / 2] = (int8_t)(r[i] == r[i] ? (int)(r[i] * 2.0f) : 0);
            qo[(g0 + i) / 2] = (int8_t)(r[i + 1] == r[i + 1] ? (int)(r[i + 1] * 2.0f) : 0);
        }
        sfa2[g0 / 8] = sfa2[g0 / 8 + 1] = sfv * 64.0f;
    }
}

AVX2 static void gemv_w4a4_avx2(const struct dsv4_qweight *w, const int8_t *qe, const int8_t *qo,
                                const float *sfa2, float alpha, int64_t r0, int64_t nr, float *y)
{
    const int64_t K = w->cols, nbytes = K / 2, nsc = K / 16;
    const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0,
                                         1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    /* scale bytes 0..3 -> words (byte << 8), each twice */
    const __m128i dup = _mm_setr_epi8(-1, 0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3);
    const __m128i keep = _mm_set1_epi16((short)0xbfff);
    for (int64_t o = r0; o < r0 + nr; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * nbytes;
        const uint8_t *sc = w->scale + o * nsc;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
        for (int64_t c = 0; c < nbytes; c += 32) {
            if (!(c & 32))
                _mm_prefetch((const char *)(row + c) + LIN_PF, _MM_HINT_T0);
            __m256i b = _mm256_loadu_si256((const __m256i *)(row + c));
            __m256i wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, m4));
            __m256i wh = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4));
            __m256i ae = _mm256_loadu_si256((const __m256i *)(qe + c));
            __m256i ao = _mm256_loadu_si256((const __m256i *)(qo + c));
            __m256i p = _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_abs_epi8(wl), _mm256_sign_epi8(ae, wl)),
                    _mm256_maddubs_epi16(_mm256_abs_epi8(wh), _mm256_sign_epi8(ao, wh)));
            __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            int32_t s4;
            memcpy(&s4, sc + c / 8, 4);
            __m128i h = _mm_shuffle_epi8(_mm_cvtsi32_si128(s4), dup);
            h = _mm_and_si128(_mm_srai_epi16(h, 1), keep);
            __m256 scv = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(sfa2 + c / 4));
            if (c & 32)
                acc1 = _mm256_fmadd_ps(s, scv, acc1);
            else
                acc0 = _mm256_fmadd_ps(s, scv, acc0);
        }
        y[o - r0] = hsum(_mm256_add_ps(acc0, acc1)) * alpha;
    }
}

const struct dsv4_cpu_kern dsv4_cpu_kern_avx2 = {
        .name = "avx2+fma",
        .decode = decode_avx2,
        .dot = dot_avx2,
        .act_fp8 = act_fp8_avx2,
        .act_nvfp4 = act_nvfp4_avx2,
        .gemv_fp8 = gemv_fp8_avx2,
        .act_w4a4 = act_w4a4_avx2,
        .gemv_w4a4 = gemv_w4a4_avx2,
};
