/*
 * ops_attn.c - sparse attention with sink on AVX2+FMA (see kernels/cpu/ops.h
 * for the exactness argument against kernels/ref/ops.c).
 *
 * Keys are BF16 (the state's storage), widened to FP32 in registers (a
 * 16-bit shift: exact).  Per head: z_s = q . k_s in four double lanes
 * (cvtps_pd + fmadd_pd over 8 values per step), softmax exactly as the
 * oracle, then the P.V sums with one double accumulator per channel (512
 * doubles = 4 KiB, in L1) updated key by key, vectorised across channels:
 * the same additions in the same order as the oracle.  Compiled with a target attribute so the rest of the
 * build stays generic; DSV4_CPU_ISA=scalar forces the oracle.
 */
#include "kernels/cpu/ops.h"

#include "kernels/cpu/cpu.h"

#include "kernels/ref/ops.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX2   __attribute__((target("avx2,fma")))
#define MAX_DH 1024

AVX2 static inline __m256 load_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float bf16f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

AVX2 static double dot_pd(const float *a, const uint16_t *b, int n)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 va = _mm256_loadu_ps(a + i), vb = load_bf16(b + i);
        s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), s0);
        s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)), s1);
    }
    double l[4];
    _mm256_storeu_pd(l, _mm256_add_pd(s0, s1));
    double s = (l[0] + l[1]) + (l[2] + l[3]);
    for (; i < n; i++)
        s += (double)a[i] * bf16f(b[i]);
    return s;
}

AVX2 static void attn_avx2(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                           const float *sink, float scale, bool bf16_p, float *probs, float *out)
{
    double acc[MAX_DH] __attribute__((aligned(32)));
    for (int h = 0; h < nh; h++) {
        const float *qh = q + (int64_t)h * dh;
        float *oh = out + (int64_t)h * dh;
        if (n == 0) {
            memset(oh, 0, sizeof(float) * dh);
            continue;
        }
        float mx = -INFINITY;
        for (int s = 0; s < n; s++) {
            probs[s] = (float)dot_pd(qh, keys[s], dh) * scale;
            mx = fmaxf(mx, probs[s]);
        }
        double den = 0.0;
        for (int s = 0; s < n; s++) {
            float e = expf(probs[s] - mx);
            den += e;
            probs[s] = e;
        }
        float fden = (float)den + expf(sink[h] - mx);
        if (bf16_p)
            dsv4_ref_round_bf16(probs, n);
        int d8 = dh & ~7;
        memset(acc, 0, sizeof(double) * dh);
        for (int s = 0; s < n; s++) {
            __m256d p = _mm256_set1_pd((double)probs[s]);
            const uint16_t *k = keys[s];
            for (int i = 0; i < d8; i += 8) {
                __m256 kv = load_bf16(k + i);
                __m256d a0 = _mm256_load_pd(acc + i), a1 = _mm256_load_pd(acc + i + 4);
                a0 = _mm256_fmadd_pd(p, _mm256_cvtps_pd(_mm256_castps256_ps128(kv)), a0);
                a1 = _mm256_fmadd_pd(p, _mm256_cvtps_pd(_mm256_extractf128_ps(kv, 1)), a1);
                _mm256_store_pd(acc + i, a0);
                _mm256_store_pd(acc + i + 4, a1);
            }
            for (int i = d8; i < dh; i++)
                acc[i] += (double)probs[s] * bf16f(k[i]);
        }
        for (int i = 0; i < dh; i++)
            oh[i] = (float)acc[i] / fden;
    }
}

/* The vector path follows the linear kernels' dispatch (kernels/cpu/linear.c): any set
 * but "scalar" has AVX2+FMA, and DSV4_CPU_ISA / dsv4_cpu_force_isa switch both. */
static int pick(void)
{
    return strcmp(dsv4_cpu_isa(), "scalar") != 0;
}

void dsv4_cpu_sparse_attn(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                          const float *sink, float scale, bool bf16_p, float *probs, float *out)
{
    if (pick() && dh <= MAX_DH)
        attn_avx2(q, nh, dh, keys, n, sink, scale, bf16_p, probs, out);
    else
        dsv4_ref_sparse_attn(q, nh, dh, keys, n, sink, scale, bf16_p, probs, out);
}

const char *dsv4_cpu_ops_isa(void)
{
    return pick() ? "avx2+fma" : "scalar";
}
