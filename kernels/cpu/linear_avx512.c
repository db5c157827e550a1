/*
 * linear_avx512.c - AVX-512 variants of the kernels whose speed is bound by
 * instruction throughput on AVX2: the batch-1 FP8 weight decode (one FP16
 * widening per 8 weights becomes one per 16), the weight decoder and the
 * FP32 dot products of the batched tile path.  The math is that of the
 * AVX2 versions in linear_avx2.c (same exact products, same block
 * structure); linear.c
 * installs these over the AVX2 set when the CPU has AVX-512F/BW/VL, plus
 * the batch-1 NVFP4 W4A4 kernel (AVX512-VNNI) and the batch-1 MXFP4 kernel
 * (AVX512-BF16) below when it has those extensions.
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <immintrin.h>
#include <string.h>

#define AVX512     __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))
#define AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

AVX512 void dsv4_cpu_gemv_fp8_avx512(const struct dsv4_qweight *w, const float *x, int64_t r0,
                                     int64_t nr, float *y)
{
    const int64_t K = w->cols, nsb = K / 128;
    const __m512i keep = _mm512_set1_epi16((short)0xbfff);
    for (int64_t o = r0; o < r0 + nr; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * K;
        const uint8_t *sc = w->scale + (o / 128) * nsb;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t b = 0; b < nsb; b++) {
            const uint8_t *wb = row + b * 128;
            const float *xb = x + b * 128;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int j = 0; j < 128; j += 64) {
                _mm_prefetch((const char *)(wb + j) + LIN_PF, _MM_HINT_T0);
                /* E4M3 -> FP16 bits: (code << 8) >> 1 arithmetic, clear bit 14 */
                __m512i t0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(wb + j)));
                __m512i t1 =
                        _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(wb + j + 32)));
                t0 = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(t0, 8), 1), keep);
                t1 = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(t1, 8), 1), keep);
                a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(t0)),
                                     _mm512_loadu_ps(xb + j), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(t0, 1)),
                                     _mm512_loadu_ps(xb + j + 16), a1);
                a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(t1)),
                                     _mm512_loadu_ps(xb + j + 32), a2);
                a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(t1, 1)),
                                     _mm512_loadu_ps(xb + j + 48), a3);
            }
            uint8_t sb = sc[b];
            /* scales past 2^119 would overflow the folded factor: two steps */
            float f = sb <= 246 ? dsv4_e8m0_to_f32(sb) * 256.0f : dsv4_e8m0_to_f32(sb);
            __m512 blk = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            if (sb > 246)
                blk = _mm512_mul_ps(blk, _mm512_set1_ps(256.0f));
            acc = _mm512_fmadd_ps(blk, _mm512_set1_ps(f), acc);
        }
        y[o - r0] = _mm512_reduce_add_ps(acc);
    }
}

/* dot of linear_avx2.c with 16-wide vectors: 2 activation rows x 4 weight rows */
AVX512 void dsv4_cpu_dot_avx512(const float *x, int64_t xs, int nm, const float *wt, int nr,
                                int len, float *out)
{
    for (int i0 = 0; i0 < nm; i0 += 2) {
        int two = nm - i0 >= 2;
        const float *x0 = x + i0 * xs, *x1 = two ? x0 + xs : x0;
        for (int r0 = 0; r0 < nr; r0 += 4) {
            int n4 = nr - r0 < 4 ? nr - r0 : 4;
            const float *w[4];
            for (int r = 0; r < 4; r++)
                w[r] = wt + (int64_t)(r0 + (r < n4 ? r : 0)) * len;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            int j = 0;
            for (; j + 16 <= len; j += 16) {
                __m512 u = _mm512_loadu_ps(x0 + j), v = _mm512_loadu_ps(x1 + j);
                __m512 q0 = _mm512_loadu_ps(w[0] + j), q1 = _mm512_loadu_ps(w[1] + j);
                __m512 q2 = _mm512_loadu_ps(w[2] + j), q3 = _mm512_loadu_ps(w[3] + j);
                a0 = _mm512_fmadd_ps(u, q0, a0);
                a1 = _mm512_fmadd_ps(u, q1, a1);
                a2 = _mm512_fmadd_ps(u, q2, a2);
                a3 = _mm512_fmadd_ps(u, q3, a3);
                b0 = _mm512_fmadd_ps(v, q0, b0);
                b1 = _mm512_fmadd_ps(v, q1, b1);
                b2 = _mm512_fmadd_ps(v, q2, b2);
                b3 = _mm512_fmadd_ps(v, q3, b3);
            }
            float s[2][4] = {{_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1),
                              _mm512_reduce_add_ps(a2), _mm512_reduce_add_ps(a3)},
                             {_mm512_reduce_add_ps(b0), _mm512_reduce_add_ps(b1),
                              _mm512_reduce_add_ps(b2), _mm512_reduce_add_ps(b3)}};
            for (; j < len; j++)
                for (int r = 0; r < 4; r++) {
                    s[0][r] += x0[j] * w[r][j];
                    s[1][r] += x1[j] * w[r][j];
                }
            for (int r = 0; r < n4; r++) {
                out[i0 * LIN_RT + r0 + r] = s[0][r];
                if (two)
                    out[(i0 + 1) * LIN_RT + r0 + r] = s[1][r];
            }
        }
    }
}

/*
 * Batch-1 MXFP4 weights with FP8 activations through VDPBF16PS: every
 * operand is exact in BF16 (E2M1 * 2^(e-127) has 2 significant bits; the
 * activation E4M3 * 2^k has 4), products of two BF16 are exact in FP32
 * and the instruction accumulates them in FP32 (round to nearest, with
 * denormal results flushed, which needs values below 2^-126 that block
 * and activation scales never produce).  The weight scale goes into the
 * BF16 exponent field with a masked integer add (zeros stay zero).
 * Blocks whose E8M0 byte is outside [8, 246] (the add could leave the
 * exponent range) are computed in FP32 from the float activations xa.
 */
AVX512BF16 void dsv4_cpu_gemv_mxfp4_bf16(const struct dsv4_qweight *w, const uint16_t *xe,
                                         const uint16_t *xo, const float *xa, int64_t r0,
                                         int64_t nr, float *y)
{
    static const uint16_t e2m1_bf16[32] = {0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040,
                                           0x4080, 0x40c0, 0x8000, 0xbf00, 0xbf80, 0xbfc0,
                                           0xc000, 0xc040, 0xc080, 0xc0c0};
    const int64_t K = w->cols, nbytes = K / 2, nsc = K / 32;
    const __m512i lut = _mm512_loadu_si512(e2m1_bf16);
    const __m512i m4 = _mm512_set1_epi16(15), m3 = _mm512_set1_epi16(7);
    for (int64_t o = r0; o < r0 + nr; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * nbytes;
        const uint8_t *sc = w->scale + o * nsc;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
        float tail = 0.0f;
        for (int64_t c = 0; c < nbytes; c += 32) {
            int s0 = sc[c / 16], s1 = sc[c / 16 + 1];
            if (s0 < 8 || s0 > 246 || s1 < 8 || s1 > 246) {
                for (int64_t k = 2 * c; k < 2 * c + 64; k += 32) {
                    float p = 0.0f;
                    for (int64_t i = k; i < k + 32; i++)
                        p += xa[i] * dsv4_e2m1_to_f32((row[i / 2] >> (4 * (i & 1))) & 15);
                    tail += p * dsv4_e8m0_to_f32(sc[k / 32]);
                }
                continue;
            }
            if (!(c & 32))
                _mm_prefetch((const char *)(row + c) + LIN_PF, _MM_HINT_T0);
            __m512i wz = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(row + c)));
            __m512i il = _mm512_and_si512(wz, m4), ih = _mm512_srli_epi16(wz, 4);
            __m512i wl = _mm512_permutexvar_epi16(il, lut);
            __m512i wh = _mm512_permutexvar_epi16(ih, lut);
            /* words 0..15 hold block c/16, words 16..31 block c/16 + 1 */
            __m512i add = _mm512_mask_blend_epi16(0xffff0000u,
                                                  _mm512_set1_epi16((short)((s0 - 127) * 128)),
                                                  _mm512_set1_epi16((short)((s1 - 127) * 128)));
            wl = _mm512_mask_add_epi16(wl, _mm512_test_epi16_mask(il, m3), wl, add);
            wh = _mm512_mask_add_epi16(wh, _mm512_test_epi16_mask(ih, m3), wh, add);
            acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)wl,
                                    (__m512bh)_mm512_loadu_si512((const void *)(xe + c)));
            acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)wh,
                                    (__m512bh)_mm512_loadu_si512((const void *)(xo + c)));
        }
        y[o - r0] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
    }
}

/*
 * Batch-1 NVFP4 W4A4 (linear_avx2.c's gemv_w4a4 on 64-byte vectors): per
 * 128 elements, VPDPBUSD sums |w| * sign(a, w) over groups of 4 bytes of
 * the low-nibble (even element) and high-nibble (odd element) planes, so
 * int32 lane i holds the exact sum over elements 8i..8i+7 (half of block
 * i/2); converted, it meets the product of the two E4M3 block scales.
 */
AVX512VNNI void dsv4_cpu_gemv_w4a4_avx512(const struct dsv4_qweight *w, const int8_t *qe,
                                          const int8_t *qo, const float *sfa2, float alpha,
                                          int64_t r0, int64_t nr, float *y)
{
    static const int8_t lut16[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    const int64_t K = w->cols, nbytes = K / 2, nsc = K / 16;
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lut16));
    const __m512i m4 = _mm512_set1_epi8(15);
    /* 8 scale bytes (broadcast to both lanes) -> 16 words (byte << 8), each twice */
    const __m256i dup = _mm256_setr_epi8(-1, 0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                         4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7);
    const __m256i keep = _mm256_set1_epi16((short)0xbfff);
    if (K % 128) { /* 64-byte steps need cols % 128 == 0 */
        dsv4_cpu_kern_avx2.gemv_w4a4(w, qe, qo, sfa2, alpha, r0, nr, y);
        return;
    }
    for (int64_t o = r0; o < r0 + nr; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * nbytes;
        const uint8_t *sc = w->scale + o * nsc;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < nbytes; c += 64) {
            _mm_prefetch((const char *)(row + c) + LIN_PF, _MM_HINT_T0);
            __m512i b = _mm512_loadu_si512((const void *)(row + c));
            __m512i wl = _mm512_shuffle_epi8(lut, _mm512_and_si512(b, m4));
            __m512i wh = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4));
            __m512i ae = _mm512_loadu_si512((const void *)(qe + c));
            __m512i ao = _mm512_loadu_si512((const void *)(qo + c));
            /* a * sign(w) (no EVEX VPSIGNB; where w == 0, |w| == 0 anyway) */
            ae = _mm512_mask_sub_epi8(ae, _mm512_movepi8_mask(wl), _mm512_setzero_si512(), ae);
            ao = _mm512_mask_sub_epi8(ao, _mm512_movepi8_mask(wh), _mm512_setzero_si512(), ao);
            __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wl), ae);
            s = _mm512_dpbusd_epi32(s, _mm512_abs_epi8(wh), ao);
            int64_t s8;
            memcpy(&s8, sc + c / 8, 8);
            __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi64x(s8), dup);
            h = _mm256_and_si256(_mm256_srai_epi16(h, 1), keep);
            __m512 scv = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(sfa2 + c / 4));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scv, acc);
        }
        y[o - r0] = _mm512_reduce_add_ps(acc) * alpha;
    }
}

/*
 * Weight decoder of the batched tile path (cpu_int.h contract): FP8 by the
 * FP16 widening of linear_avx2.c on 32 codes at a time; MXFP4/NVFP4 by
 * VPERMPS from a 16-entry table of E2M1 values already multiplied by the
 * block scale (exact: 2 significant bits times a power of two or an E4M3).
 * Rows whose chunk length is not a multiple of 32, unusual scale bytes and
 * the other formats go to the AVX2 decoder.
 */
AVX512 void dsv4_cpu_decode_avx512(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0,
                                   int len, float *out)
{
    static const float e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    const __m512 tab = _mm512_loadu_ps(e2m1);
    const __m512i keep = _mm512_set1_epi16((short)0xbfff);
    const __m128i m4 = _mm_set1_epi8(15);
    const float *t8 = dsv4_e4m3_table();
    for (int r = 0; r < nr; r++) {
        int64_t o = r0 + r;
        float *d = out + (int64_t)r * len;
        if (len % 32 ||
            (w->fmt != DSV4_WFMT_FP8 && w->fmt != DSV4_WFMT_MXFP4 && w->fmt != DSV4_WFMT_NVFP4)) {
            dsv4_cpu_kern_avx2.decode(w, o, 1, k0, len, d);
            continue;
        }
        if (w->fmt == DSV4_WFMT_FP8) {
            const uint8_t *src = (const uint8_t *)w->w + o * w->cols + k0;
            const uint8_t *sc = w->scale + (o / 128) * ((w->cols + 127) / 128) + k0 / 128;
            int j = 0;
            for (; j < len; j += 32) {
                uint8_t sb = sc[j / 128];
                if (sb > 246)
                    break;
                __m512 fac = _mm512_set1_ps(dsv4_e8m0_to_f32(sb) * 256.0f);
                __m512i t = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(src + j)));
                t = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(t, 8), 1), keep);
                _mm512_storeu_ps(d + j,
                                 _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(t)), fac));
                _mm512_storeu_ps(
                        d + j + 16,
                        _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(t, 1)), fac));
            }
            if (j < len) /* a scale past 2^119: the exact two-step AVX2 decoder */
                dsv4_cpu_kern_avx2.decode(w, o, 1, k0, len, d);
            continue;
        }
        int mx = w->fmt == DSV4_WFMT_MXFP4, bs = mx ? 32 : 16;
        const uint8_t *row = (const uint8_t *)w->w + o * ((w->cols + 1) / 2);
        const uint8_t *sc = w->scale + o * ((w->cols + bs - 1) / bs);
        for (int j = 0; j < len; j += 32) {
            int64_t k = k0 + j;
            __m128i b = _mm_loadu_si128((const __m128i *)(row + k / 2));
            __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
            __m512i i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
            __m512i i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
            float s0 = mx ? dsv4_e8m0_to_f32(sc[k / 32]) : t8[sc[k / 16]];
            float s1 = mx ? s0 : t8[sc[k / 16 + 1]];
            _mm512_storeu_ps(d + j,
                             _mm512_permutexvar_ps(i0, _mm512_mul_ps(tab, _mm512_set1_ps(s0))));
            _mm512_storeu_ps(d + j + 16,
                             _mm512_permutexvar_ps(i1, _mm512_mul_ps(tab, _mm512_set1_ps(s1))));
        }
    }
}
