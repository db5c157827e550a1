/*
 * ops_index.c - the lightning indexer's scoring and top-k on the CPU, with
 * the semantics of their oracles in kernels/ref/ops.c (see kernels/cpu/ops.h).
 *
 * Scores: score_b = sum_h w_h max(q_h . k_b, 0).  The indexer's queries are
 * FP4-simulated (an E2M1 value times a power of two) and its keys BF16, so
 * every product q * k is exact in FP32 and in FP64; the oracle sums them in
 * FP64 in index order.  Here the dot products run in four FP64 lanes over 8
 * values per step (cvtps_pd + fmadd_pd), then the lanes are added: the same
 * terms in another order of FP64 additions, equal to the oracle after the
 * rounding to FP32 except in rare last-bit cases.  Keys are widened from
 * BF16 in registers.  A score over n entries costs n * nh * d FMAs; the
 * chunk of a long prefill spends most of its indexer time here.
 *
 * Top-k: a min-heap of the k best by (value, then lower index), O(n log k),
 * instead of the oracle's O(n k) insertion; it returns the same indices in
 * the same order (value descending, ties to the lower index) for any input
 * without NaN.
 */
#include "kernels/cpu/ops.h"

#include "kernels/cpu/cpu.h"
#include "kernels/ref/ops.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma")))

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

AVX2 static void scores_avx2(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores)
{
    for (int b = 0; b < n; b++) {
        if (b + 2 < n)
            _mm_prefetch((const char *)keys[b + 2], _MM_HINT_T0);
        double acc = 0.0;
        for (int h = 0; h < nh; h++) {
            double dot = dot_pd(q + (int64_t)h * d, keys[b], d);
            acc += (double)w[h] * fmaxf((float)dot, 0.0f);
        }
        scores[b] = (float)acc;
    }
}

void dsv4_cpu_indexer_scores(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores)
{
    if (strcmp(dsv4_cpu_isa(), "scalar"))
        scores_avx2(q, w, nh, d, keys, n, scores);
    else
        dsv4_ref_indexer_scores(q, w, nh, d, keys, n, scores);
}

/* a is worse than b: smaller value, or equal value and larger index */
static inline int worse(const float *v, int a, int b)
{
    return v[a] < v[b] || (v[a] == v[b] && a > b);
}

static void sift_down(const float *v, int *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(v, h[l], h[m]))
            m = l;
        if (r < n && worse(v, h[r], h[m]))
            m = r;
        if (m == i)
            return;
        int t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

void dsv4_cpu_topk(const float *v, int n, int k, int *idx)
{
    if (k <= 0)
        return;
    /* idx[0..k) as a min-heap (root = worst kept); scanned in index order, so an equal
     * value never displaces the lower index already kept */
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m < k) {
            int j = m++;
            idx[j] = i;
            while (j > 0 && worse(v, idx[j], idx[(j - 1) / 2])) {
                int p = (j - 1) / 2, t = idx[p];
                idx[p] = idx[j];
                idx[j] = t;
                j = p;
            }
        } else if (v[i] > v[idx[0]]) {
            idx[0] = i;
            sift_down(v, idx, m, 0);
        }
    }
    /* heap sort: repeatedly move the worst to the end -> best first */
    for (int end = m - 1; end > 0; end--) {
        int t = idx[0];
        idx[0] = idx[end];
        idx[end] = t;
        sift_down(v, idx, end, 0);
    }
}
