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
 * BF16 in registers, once for a group of four heads, over blocks of keys
 * that stay in L1 while the head groups pass over them (the sum over heads
 * keeps its order).  A score over n entries costs n * nh * d FMAs; the
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

#define AVX2   __attribute__((target("avx2,fma")))
#define ALWAYS __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")
/* heads per group, keys per block, the widest head the vector path takes */
#define HG    4
#define KB    64
#define MAX_D 1024

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

/* 8 BF16 values -> two vectors of 4 doubles (columns 0-3, 4-7) */
AVX2 static inline void load_bf16_pd(const uint16_t *p, __m256d *lo, __m256d *hi)
{
    __m256 f = load_bf16(p);
    *lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
    *hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
}

/*
 * acc[b] += sum_g w_g max((float)(q_g . k_b), 0) over the G heads of a group, in head
 * order, for the keys of one block; qd [G, d] the group's queries in double.  Each dot:
 * lanes of columns c % 8 < 4 and >= 4 apart, their sum, (l0 + l1) + (l2 + l3), then the
 * columns past the last multiple of 8 in order.
 */
AVX2 static inline ALWAYS void group_dots(int G, const double *qd, const float *w, int d,
                                          const uint16_t *const *keys, int nb, double *acc)
{
    int d8 = d & ~7;
    for (int b = 0; b < nb; b++) {
        const uint16_t *k = keys[b];
        __m256d a0[HG], a1[HG];
        UNROLL
        for (int g = 0; g < G; g++)
            a0[g] = a1[g] = _mm256_setzero_pd();
        for (int i = 0; i < d8; i += 8) {
            __m256d lo, hi;
            load_bf16_pd(k + i, &lo, &hi);
            UNROLL
            for (int g = 0; g < G; g++) {
                a0[g] = _mm256_fmadd_pd(_mm256_loadu_pd(qd + g * d + i), lo, a0[g]);
                a1[g] = _mm256_fmadd_pd(_mm256_loadu_pd(qd + g * d + i + 4), hi, a1[g]);
            }
        }
        for (int g = 0; g < G; g++) {
            double l[4];
            _mm256_storeu_pd(l, _mm256_add_pd(a0[g], a1[g]));
            double dot = (l[0] + l[1]) + (l[2] + l[3]);
            for (int i = d8; i < d; i++)
                dot += qd[g * d + i] * bf16f(k[i]);
            acc[b] += (double)w[g] * fmaxf((float)dot, 0.0f);
        }
    }
}

/* Per block of KB keys (they stay in L1 while every head group passes over them), per
 * group of HG heads (each widened key serves all of them): the score sums in head order. */
AVX2 static void scores_avx2(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores)
{
    double qd[HG * MAX_D], acc[KB];
    for (int b0 = 0; b0 < n; b0 += KB) {
        int nb = n - b0 < KB ? n - b0 : KB;
        for (int b = 0; b < nb; b++)
            acc[b] = 0.0;
        for (int h = 0; h < nh;) {
            int G = nh - h >= HG ? HG : 1; /* the last nh % HG heads one at a time */
            for (int i = 0; i < G * d; i++)
                qd[i] = q[(int64_t)h * d + i];
            if (G == HG)
                group_dots(HG, qd, w + h, d, keys + b0, nb, acc);
            else
                group_dots(1, qd, w + h, d, keys + b0, nb, acc);
            h += G;
        }
        for (int b = 0; b < nb; b++)
            scores[b0 + b] = (float)acc[b];
    }
}

void dsv4_cpu_indexer_scores(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores)
{
    if (strcmp(dsv4_cpu_isa(), "scalar") && d <= MAX_D)
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
