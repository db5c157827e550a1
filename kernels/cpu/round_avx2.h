/*
 * round_avx2.h - AVX2 helpers of the activation quantisers shared by the
 * linear kernels (linear_avx2.c) and the element-wise ops (ops_elem.c):
 * max |x| with NaN propagation, a clamp that keeps NaN, and rounding to the
 * E4M3 and E2M1 grids, each bit-identical to the scalar encoders of
 * kernels/ref/formats.c followed by their decoders (tests/kernels compare
 * them over edge and random values).
 *
 * Rounding: to E4M3 RNE in the normal range by integer rounding of the FP32
 * mantissa to 3 bits (ties to even; a carry moves into the exponent), in
 * the subnormal range |v| < 2^-6 by rint(v * 2^9) / 2^9; to E2M1 RNE: 1
 * mantissa bit for |v| >= 1, rint(2v)/2 below, then saturation at 6.
 * Static inline with their own target attribute, so that any includer whose
 * target is a superset (AVX2 + FMA at least) inlines them.
 */
#ifndef DSV4_ROUND_AVX2_H
#define DSV4_ROUND_AVX2_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define RND_AVX2 __attribute__((target("avx2,fma")))

/* max |x| of n values (n % 8 == 0) with NaN propagation */
RND_AVX2 static inline float amax8(const float *x, int64_t n)
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
RND_AVX2 static inline __m256 clamp_keep_nan(__m256 v, float lim)
{
    return _mm256_min_ps(_mm256_set1_ps(lim), _mm256_max_ps(_mm256_set1_ps(-lim), v));
}

/* round to E4M3 (RNE) a vector already clamped to [-448, 448] */
RND_AVX2 static inline __m256 round_e4m3(__m256 v)
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
RND_AVX2 static inline __m256 round_e2m1(__m256 v)
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

/* E4M3 value of one float (RNE, saturating at +-448, NaN kept): the NVFP4 block scale of
 * dsv4_act_quant_nvfp4 without the scalar encoder's libm calls */
RND_AVX2 static inline float e4m3_sat(float v)
{
    return _mm256_cvtss_f32(round_e4m3(clamp_keep_nan(_mm256_set1_ps(v), 448.0f)));
}

#endif
