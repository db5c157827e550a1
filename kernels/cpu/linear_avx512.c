/*
 * linear_avx512.c - the AVX-512F/BW kernel set of the CPU linear driver:
 * the vector primitives of linear_simd.h at 16 lanes, so the batch-1 and
 * batched kernels are those of the AVX2 set (linear_avx2.c) with wider
 * vectors and the same reduction order per family; linear.c installs
 * `dsv4_cpu_rows_avx512` over the AVX2 set (whose activation quantisers it
 * keeps) when the CPU has AVX-512F/BW/VL.
 *
 * Decoding (all exact): E4M3 -> FP16 by zero-extension to 16 bits, shift
 * the code into the high byte, arithmetic shift right by 1 and clear bit
 * 14 (linear_avx2.c explains the trick), F16C widening; E2M1 by VPERMPS
 * from a 16-entry table of E2M1 values times the block scale (2
 * significant bits times a power of two or an E4M3: exact); W4A4 integer
 * sums by VPMADDUBSW/VPMADDWD on offset weight bytes (linear_simd.h).
 *
 * Not executed in this project's CI (its machines have AVX2 only); it
 * compiles everywhere and the template is tested at 8 lanes.
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <immintrin.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

#define SIMD AVX512
typedef __m512 V;
typedef __m512i VI;
#define VW   16
#define MR_F 6 /* 6 x LIN_NR accumulators + 6 activation vectors + 1 weight vector = 31 */
#define MR_I 3

AVX512 static inline V v_zero(void)
{
    return _mm512_setzero_ps();
}

AVX512 static inline V v_load(const float *p)
{
    return _mm512_loadu_ps(p);
}

AVX512 static inline void v_store(float *p, V v)
{
    _mm512_storeu_ps(p, v);
}

AVX512 static inline V v_set1(float f)
{
    return _mm512_set1_ps(f);
}

AVX512 static inline V v_fma(V a, V b, V c)
{
    return _mm512_fmadd_ps(a, b, c);
}

AVX512 static inline V v_mul(V a, V b)
{
    return _mm512_mul_ps(a, b);
}

AVX512 static inline V v_cvti(VI v)
{
    return _mm512_cvtepi32_ps(v);
}

AVX512 static inline VI vi_load(const void *p)
{
    return _mm512_loadu_si512(p);
}

AVX512 static inline void vi_store(void *p, VI v)
{
    _mm512_storeu_si512(p, v);
}

/* the one horizontal order of this set: (lanes l + l+8), then as the AVX2 set */
AVX512 static inline float v_hsum(V v)
{
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 h = _mm256_add_ps(lo, hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* [v_hsum(a), v_hsum(b), v_hsum(c), v_hsum(d)] with the same tree (same bits): each folded to
 * 8 lanes as v_hsum does, then the 8-lane tree of linear_avx2.c's v_hsum4 */
AVX512 static inline __m256 fold8(V v)
{
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

AVX512 static inline __m128 v_hsum4(V a, V b, V c, V d)
{
    __m256 a8 = fold8(a), b8 = fold8(b), c8 = fold8(c), d8 = fold8(d);
    __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a8, b8, 0x20),
                              _mm256_permute2f128_ps(a8, b8, 0x31));
    __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c8, d8, 0x20),
                              _mm256_permute2f128_ps(c8, d8, 0x31));
    __m256 w = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 z = _mm256_add_ps(_mm256_shuffle_ps(w, w, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(w, w, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

AVX512 static inline void dec_f32q(const float *s, V q[4])
{
    q[0] = _mm512_loadu_ps(s);
    q[1] = _mm512_loadu_ps(s + 16);
    q[2] = _mm512_loadu_ps(s + 32);
    q[3] = _mm512_loadu_ps(s + 48);
}

AVX512 static inline __m512 bf16x16(const uint16_t *s)
{
    __m512i t = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s));
    return _mm512_castsi512_ps(_mm512_slli_epi32(t, 16));
}

AVX512 static inline void dec_bf16q(const uint16_t *s, V q[4])
{
    q[0] = bf16x16(s);
    q[1] = bf16x16(s + 16);
    q[2] = bf16x16(s + 32);
    q[3] = bf16x16(s + 48);
}

/* The F16 route: decoded values are E4M3 * 2^-8, activations unscaled. */
#define C8_EXP   8
#define FP8_XEXP 0
const int dsv4_cpu_fp8_xexp_avx512 = FP8_XEXP;

/* 32 E4M3 codes -> two vectors of c16 */
AVX512 static inline void c16x32(const uint8_t *s, V *q0, V *q1)
{
    __m512i t = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)s));
    t = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(t, 8), 1),
                         _mm512_set1_epi16((short)0xbfff));
    *q0 = _mm512_cvtph_ps(_mm512_castsi512_si256(t));
    *q1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(t, 1));
}

AVX512 static inline void dec_c16q(const uint8_t *s, V q[4])
{
    c16x32(s, &q[0], &q[1]);
    c16x32(s + 32, &q[2], &q[3]);
}

/* 16 packed E2M1 bytes -> 32 columns, e2m1 * s0 and e2m1 * s1 */
AVX512 static inline void fp4x32(const uint8_t *s, float s0, float s1, V *q0, V *q1)
{
    static const float e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    const __m512 tab = _mm512_loadu_ps(e2m1);
    const __m128i m4 = _mm_set1_epi8(15);
    __m128i b = _mm_loadu_si128((const __m128i *)s);
    __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    __m512i i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
    __m512i i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
    *q0 = _mm512_permutexvar_ps(i0, _mm512_mul_ps(tab, _mm512_set1_ps(s0)));
    *q1 = _mm512_permutexvar_ps(i1, _mm512_mul_ps(tab, _mm512_set1_ps(s1)));
}

AVX512 static inline void dec_fp4q(const uint8_t *s, const float sc[4], V q[4])
{
    fp4x32(s, sc[0], sc[1], &q[0], &q[1]);
    fp4x32(s + 16, sc[2], sc[3], &q[2], &q[3]);
}

AVX512 static inline void i4_planes(const uint8_t *s, VI *wl, VI *wh)
{
    static const int8_t lut16[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lut16));
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512i b = _mm512_loadu_si512((const void *)s);
    *wl = _mm512_shuffle_epi8(lut, _mm512_and_si512(b, m4));
    *wh = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4));
}

/* unsigned weight bytes times signed activation bytes per pair, then per 4 bytes (as AVX2) */
AVX512 static inline VI i4_dot(VI wl, VI wh, VI ae, VI ao, VI corr)
{
    __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(wl, ae), _mm512_maddubs_epi16(wh, ao));
    return _mm512_sub_epi32(_mm512_madd_epi16(p, _mm512_set1_epi16(1)), corr);
}

/* 8 E4M3 block scales -> 16 lanes (each twice) of E4M3 * 2^-8 */
AVX512 static inline V i4_wscale(const uint8_t *sc)
{
    const __m256i dup = _mm256_setr_epi8(-1, 0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                         4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7);
    int64_t s8;
    memcpy(&s8, sc, 8);
    __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi64x(s8), dup);
    h = _mm256_and_si256(_mm256_srai_epi16(h, 1), _mm256_set1_epi16((short)0xbfff));
    return _mm512_cvtph_ps(h);
}

#include "kernels/cpu/linear_simd.h"

void dsv4_cpu_rows_avx512(const struct lin_job *j, int64_t r0, int64_t r1, void *scratch)
{
    simd_rows(j, r0, r1, scratch);
}
