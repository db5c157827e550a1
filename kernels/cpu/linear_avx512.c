/*
 * linear_avx512.c - AVX-512 variants of the batch-1 kernels whose speed is
 * bound by instruction throughput on AVX2 (the FP8 weight decode: one
 * FP16 widening per 8 weights becomes one per 16).  The math is that of
 * linear_avx2.c's gemv_fp8 (same exact products, same block structure);
 * linear.c installs these over the AVX2 set when the CPU has AVX-512F/BW.
 */
#include "engine/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

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
