/*
 * ops_attn.c - sparse attention with sink on AVX2+FMA (see kernels/cpu/ops.h
 * for the exactness argument against kernels/ref/ops.c).
 *
 * Per head: z_s = q . k_s in four double lanes (cvtps_pd + fmadd_pd over
 * 8 floats per step), softmax exactly as the oracle, then the P.V sums with
 * one double accumulator per channel (512 doubles = 4 KiB, in L1) updated
 * key by key, vectorised across channels: the same additions in the same
 * order as the oracle.  Compiled with a target attribute so the rest of the
 * build stays generic; DSV4_CPU_ISA=scalar forces the oracle.
 */
#include "kernels/cpu/ops.h"

#include "kernels/ref/ops.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define AVX2   __attribute__((target("avx2,fma")))
#define MAX_DH 1024

AVX2 static double dot_pd(const float *a, const float *b, int n)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
        s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), s0);
        s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)), s1);
    }
    double l[4];
    _mm256_storeu_pd(l, _mm256_add_pd(s0, s1));
    double s = (l[0] + l[1]) + (l[2] + l[3]);
    for (; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

AVX2 static void attn_avx2(const float *q, int nh, int dh, const float *const *keys, int n,
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
            const float *k = keys[s];
            for (int i = 0; i < d8; i += 8) {
                __m256 kv = _mm256_loadu_ps(k + i);
                __m256d a0 = _mm256_load_pd(acc + i), a1 = _mm256_load_pd(acc + i + 4);
                a0 = _mm256_fmadd_pd(p, _mm256_cvtps_pd(_mm256_castps256_ps128(kv)), a0);
                a1 = _mm256_fmadd_pd(p, _mm256_cvtps_pd(_mm256_extractf128_ps(kv, 1)), a1);
                _mm256_store_pd(acc + i, a0);
                _mm256_store_pd(acc + i + 4, a1);
            }
            for (int i = d8; i < dh; i++)
                acc[i] += (double)probs[s] * k[i];
        }
        for (int i = 0; i < dh; i++)
            oh[i] = (float)acc[i] / fden;
    }
}

static int use_avx2;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void pick_once(void)
{
    const char *e = getenv("DSV4_CPU_ISA");
    __builtin_cpu_init();
    use_avx2 = !(e && !strcmp(e, "scalar")) && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
}

static int pick(void)
{
    pthread_once(&once, pick_once);
    return use_avx2;
}

void dsv4_cpu_sparse_attn(const float *q, int nh, int dh, const float *const *keys, int n,
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
