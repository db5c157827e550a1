/*
 * linear_avx2.c - the AVX2/FMA/F16C kernel set of the CPU linear driver
 * (cpu_int.h): the activation quantisers, the vector primitives at 8
 * lanes, and through them the batch-1 and batched kernels of
 * linear_simd.h.  Compiled with a target attribute so the rest of the
 * build stays generic; linear.c only calls these when the CPU has the
 * features.
 *
 * Decoding tricks (all exact):
 *   E4M3 -> FP16 bits: a code in the high byte of a 16-bit word (unpack
 *     with a zero byte), arithmetic-shifted right by 1, puts the sign in
 *     bit 15 and EEEEMMM in bits 13..7; clearing bit 14 (the copy of the
 *     sign) leaves an FP16 equal to the E4M3 value * 2^-8, which F16C
 *     widens to FP32 (subnormals included).  NaN codes decode as 480
 *     (linear.h: weights never hold them).  Unpacking 32 codes in-lane
 *     yields columns 0-7, 16-23 | 8-15, 24-31: each vector still holds 8
 *     consecutive columns, dec_c16q only names them in column order.
 *   E2M1 -> int8 2*value through a 16-entry PSHUFB table; as floats,
 *     widened, converted and multiplied by half the block scale.
 * Activation rounding (reference: dsv4_act_quant_fp8 / _nvfp4) through
 * the vector E4M3 / E2M1 rounding of round_avx2.h, NVFP4 block scales
 * included; tails fall back to the scalar encoders.
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/cpu/round_avx2.h"
#include "kernels/formats.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* ---------------------------------------------------------------- activations */

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
        float sfv = e4m3_sat(gs * (amax * (1.0f / 6.0f)));
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

/* 16 rounded E2M1 values (floats, NaN allowed) -> int8 2*value, even columns to qe, odd to qo */
AVX2 static inline void w4a4_codes(__m256 r0, __m256 r1, int8_t *qe, int8_t *qo)
{
    const __m128i deint = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    /* NaN only with a NaN scale, which poisons the block anyway: code 0 */
    __m256i a = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_add_ps(r0, r0)),
                                 _mm256_castps_si256(_mm256_cmp_ps(r0, r0, _CMP_ORD_Q)));
    __m256i b = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_add_ps(r1, r1)),
                                 _mm256_castps_si256(_mm256_cmp_ps(r1, r1, _CMP_ORD_Q)));
    __m256i h = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8); /* 16 x int16 */
    __m128i c = _mm_shuffle_epi8(
            _mm_packs_epi16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)), deint);
    _mm_storel_epi64((__m128i *)qe, c);
    _mm_storel_epi64((__m128i *)qo, _mm_unpackhi_epi64(c, c));
}

AVX2 static void act_w4a4_avx2(const float *x, int64_t n, float input_scale, int8_t *qe, int8_t *qo,
                               float *sfa2)
{
    static const int8_t two_e2m1[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    float gs = 1.0f / input_scale;
    int64_t g0 = 0;
    for (; g0 + 16 <= n; g0 += 16) {
        float amax = amax8(x + g0, 16);
        float sfv = e4m3_sat(gs * (amax * (1.0f / 6.0f)));
        float osc = sfv != 0.0f ? 1.0f / (sfv * (1.0f / gs)) : 0.0f;
        __m256 o = _mm256_set1_ps(osc);
        w4a4_codes(round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0), o)),
                   round_e2m1(_mm256_mul_ps(_mm256_loadu_ps(x + g0 + 8), o)), qe + g0 / 2,
                   qo + g0 / 2);
        sfa2[g0 / 8] = sfa2[g0 / 8 + 1] = sfv * 64.0f;
    }
    if (g0 < n) { /* partial last block: the reference quantiser, zero codes past n */
        uint8_t q[8] = {0}, sf;
        dsv4_act_quant_nvfp4(x + g0, n - g0, input_scale, q, &sf);
        for (int i = 0; i < 8; i++) {
            qe[g0 / 2 + i] = two_e2m1[q[i] & 15];
            qo[g0 / 2 + i] = g0 + 2 * i + 1 < n ? two_e2m1[q[i] >> 4] : 0;
        }
        sfa2[g0 / 8] = sfa2[g0 / 8 + 1] = dsv4_e4m3_to_f32(sf) * 64.0f;
    }
}

/* ---------------------------------------------------------------- primitives (linear_simd.h) */

#define SIMD AVX2
typedef __m256 V;
typedef __m256i VI;
#define VW   8
#define MR_F 3 /* 3 x LIN_NR accumulators + 3 activation vectors + 1 weight vector = 16 */
#define MR_I 2

AVX2 static inline V v_zero(void)
{
    return _mm256_setzero_ps();
}

AVX2 static inline V v_load(const float *p)
{
    return _mm256_loadu_ps(p);
}

AVX2 static inline void v_store(float *p, V v)
{
    _mm256_storeu_ps(p, v);
}

AVX2 static inline V v_set1(float f)
{
    return _mm256_set1_ps(f);
}

AVX2 static inline V v_fma(V a, V b, V c)
{
    return _mm256_fmadd_ps(a, b, c);
}

AVX2 static inline V v_mul(V a, V b)
{
    return _mm256_mul_ps(a, b);
}

AVX2 static inline V v_cvti(VI v)
{
    return _mm256_cvtepi32_ps(v);
}

AVX2 static inline VI vi_load(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

AVX2 static inline void vi_store(void *p, VI v)
{
    _mm256_storeu_si256((__m256i *)p, v);
}

/* the one horizontal order of this set: (lanes l + l+4), then pairs, then the last two */
AVX2 static inline float v_hsum(V v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* [v_hsum(a), v_hsum(b), v_hsum(c), v_hsum(d)] with the same tree (same bits): the halves
 * added lane by lane, then lanes 0+2 and 1+3, then those two */
AVX2 static inline __m128 v_hsum4(V a, V b, V c, V d)
{
    __m256 ab =
            _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    __m256 cd =
            _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    /* lanes [a0 a1 c0 c1 | b0 b1 d0 d1] + [a2 a3 c2 c3 | b2 b3 d2 d3] */
    __m256 w = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    /* [a c a c | b d b d] */
    __m256 z = _mm256_add_ps(_mm256_shuffle_ps(w, w, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(w, w, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

AVX2 static inline void dec_f32q(const float *s, V q[4])
{
    q[0] = _mm256_loadu_ps(s);
    q[1] = _mm256_loadu_ps(s + 8);
    q[2] = _mm256_loadu_ps(s + 16);
    q[3] = _mm256_loadu_ps(s + 24);
}

AVX2 static inline __m256 bf16x8(const uint16_t *s)
{
    __m256i t = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)s));
    return _mm256_castsi256_ps(_mm256_slli_epi32(t, 16));
}

AVX2 static inline void dec_bf16q(const uint16_t *s, V q[4])
{
    q[0] = bf16x8(s);
    q[1] = bf16x8(s + 8);
    q[2] = bf16x8(s + 16);
    q[3] = bf16x8(s + 24);
}

/* 32 E4M3 codes -> E4M3 * 2^-C8_EXP, exact: each code goes to the top byte of a 32-bit lane
 * (PSHUFB within a 128-bit lane of a broadcast half), an arithmetic shift by 4 puts the
 * exponent and mantissa into FP32's exponent and mantissa (bias 127 instead of 7: 2^-120;
 * E4M3 subnormals become FP32 subnormals of the same value times 2^-120) and the AND clears
 * the sign's copies.  No F16 conversion: the batch-1 FP8 product ran at 23-25 GB/s from the
 * caches instead of 20-21 through VCVTPH2PS, 15-19 from memory instead of 14-17 (AMD EPYC
 * family 25, `dsv4 bench linear`). */
#define C8_EXP   120
#define FP8_XEXP 64
/* the 8 codes that PSHUFB mask sh picks from a (4 per 128-bit lane) */
AVX2 static inline V e4m3x8(__m256i a, __m256i sh)
{
    __m256i t = _mm256_srai_epi32(_mm256_shuffle_epi8(a, sh), 4);
    return _mm256_castsi256_ps(_mm256_and_si256(t, _mm256_set1_epi32((int)0x87ffffff)));
}

AVX2 static inline void dec_c16q(const uint8_t *s, V q[4])
{
    /* code i of a 16-byte half to the top byte of lane i: lanes 0-3 in the low 128 bits,
     * 4-7 in the high ones (each holds the whole half) */
    const __m256i s0 = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3,
                                        -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7);
    const __m256i s1 =
            _mm256_setr_epi8(-1, -1, -1, 8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11, -1, -1,
                             -1, 12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15);
    __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)s));
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(s + 16)));
    q[0] = e4m3x8(a, s0); /* columns 0-7 */
    q[1] = e4m3x8(a, s1); /* 8-15 */
    q[2] = e4m3x8(b, s0); /* 16-23 */
    q[3] = e4m3x8(b, s1); /* 24-31 */
}

/* 32 packed E2M1 (16 bytes) -> two vectors of 16 int8 holding 2 * value, column order */
AVX2 static inline void e2m1x32(const uint8_t *src, __m128i *v0, __m128i *v1)
{
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m128i m4 = _mm_set1_epi8(15);
    __m128i b = _mm_loadu_si128((const __m128i *)src);
    __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    *v0 = _mm_shuffle_epi8(lut, _mm_unpacklo_epi8(lo, hi));
    *v1 = _mm_shuffle_epi8(lut, _mm_unpackhi_epi8(lo, hi));
}

AVX2 static inline void dec_fp4q(const uint8_t *s, const float sc[4], V q[4])
{
    __m128i v0, v1;
    e2m1x32(s, &v0, &v1);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8)));
    q[0] = _mm256_mul_ps(q[0], _mm256_set1_ps(sc[0] * 0.5f));
    q[1] = _mm256_mul_ps(q[1], _mm256_set1_ps(sc[1] * 0.5f));
    q[2] = _mm256_mul_ps(q[2], _mm256_set1_ps(sc[2] * 0.5f));
    q[3] = _mm256_mul_ps(q[3], _mm256_set1_ps(sc[3] * 0.5f));
}

AVX2 static inline void i4_planes(const uint8_t *s, VI *wl, VI *wh)
{
    /* 2 * E2M1 + 12 */
    const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                         12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i b = _mm256_loadu_si256((const __m256i *)s);
    *wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, m4));
    *wh = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4));
}

/* unsigned weight bytes times signed activation bytes per pair, then per 4 bytes */
AVX2 static inline VI i4_dot(VI wl, VI wh, VI ae, VI ao, VI corr)
{
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(wl, ae), _mm256_maddubs_epi16(wh, ao));
    return _mm256_sub_epi32(_mm256_madd_epi16(p, _mm256_set1_epi16(1)), corr);
}

/* 4 E4M3 block scales -> 8 lanes (each twice) of E4M3 * 2^-8 */
AVX2 static inline V i4_wscale(const uint8_t *sc)
{
    const __m128i dup = _mm_setr_epi8(-1, 0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3);
    int32_t s4;
    memcpy(&s4, sc, 4);
    __m128i h = _mm_shuffle_epi8(_mm_cvtsi32_si128(s4), dup);
    h = _mm_and_si128(_mm_srai_epi16(h, 1), _mm_set1_epi16((short)0xbfff));
    return _mm256_cvtph_ps(h);
}

#include "kernels/cpu/linear_simd.h"

const struct dsv4_cpu_kern dsv4_cpu_kern_avx2 = {
        .name = "avx2+fma",
        .w4a4 = 1,
        .act_fp8 = act_fp8_avx2,
        .act_nvfp4 = act_nvfp4_avx2,
        .act_w4a4 = act_w4a4_avx2,
        .fp8_xexp = FP8_XEXP,
        .rows = simd_rows,
};
