/*
 * ops_attn.c - sparse attention with sink on AVX2+FMA (see kernels/cpu/ops.h
 * for the exactness argument against kernels/ref/ops.c).
 *
 * Keys are BF16 (the state's storage), widened to FP32 and then FP64 in
 * registers (both exact).  The heads of one query share their keys (one kv
 * head), so up to HG heads run together: each key vector is loaded and
 * widened once and used by every head of the group.  Per head: z_s = q . k_s
 * in four double lanes (two accumulators over 8 values per step, q widened
 * to double once per call), softmax exactly as the oracle, then the P.V
 * sums: per 8-channel block, one double accumulator per channel kept in
 * registers over all keys in the oracle's key order (products p * k are
 * exact in double, so the FMA rounds like the oracle's multiply-then-add):
 * bitwise the oracle's values.  A head's arithmetic does not depend on the
 * group it runs in.  Compiled with a target attribute so the rest of the
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
#define ALWAYS __attribute__((always_inline))
#define MAX_DH 1024
/* Heads per group (2 x HG accumulators + the widened key fit the 16 registers), and the
 * most keys whose probabilities a group keeps on the stack (as doubles); more keys run one
 * head at a time with the caller's buffer. */
#define HG    4
#define MAX_N 1024
/* the loops over a group's heads must unroll for the accumulators to stay in registers */
#define UNROLL _Pragma("GCC unroll 4")

AVX2 static inline __m256 load_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 BF16 values -> two vectors of 4 doubles (columns 0-3, 4-7) */
AVX2 static inline void load_bf16_pd(const uint16_t *p, __m256d *lo, __m256d *hi)
{
    __m256 f = load_bf16(p);
    *lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
    *hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
}

static inline float bf16f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/*
 * Scores of G heads: z[g][s] = (float)(q_g . k_s) * scale, qd [G, dh] the queries in double.
 * Per head and key: lanes of columns c % 8 < 4 and >= 4 apart, then their sum, (l0 + l1) +
 * (l2 + l3), then the columns past the last multiple of 8 in order.
 */
AVX2 static inline ALWAYS void scores_g(int G, const double *qd, int dh,
                                        const uint16_t *const *keys, int n, float scale,
                                        float *const *z)
{
    int d8 = dh & ~7;
    for (int s = 0; s < n; s++) {
        const uint16_t *k = keys[s];
        if (s + 1 < n)
            _mm_prefetch((const char *)keys[s + 1], _MM_HINT_T0);
        __m256d a0[HG], a1[HG];
        UNROLL
        for (int g = 0; g < G; g++)
            a0[g] = a1[g] = _mm256_setzero_pd();
        for (int i = 0; i < d8; i += 8) {
            __m256d lo, hi;
            load_bf16_pd(k + i, &lo, &hi);
            UNROLL
            for (int g = 0; g < G; g++) {
                a0[g] = _mm256_fmadd_pd(_mm256_loadu_pd(qd + g * dh + i), lo, a0[g]);
                a1[g] = _mm256_fmadd_pd(_mm256_loadu_pd(qd + g * dh + i + 4), hi, a1[g]);
            }
        }
        UNROLL
        for (int g = 0; g < G; g++) {
            double l[4];
            _mm256_storeu_pd(l, _mm256_add_pd(a0[g], a1[g]));
            double acc = (l[0] + l[1]) + (l[2] + l[3]);
            for (int i = d8; i < dh; i++)
                acc += qd[g * dh + i] * bf16f(k[i]);
            z[g][s] = (float)acc * scale;
        }
    }
}

/* probability s of head g: from pd [G, n] doubles, or (pd NULL, one head) from pf */
AVX2 static inline ALWAYS __m256d prob(const double *pd, const float *pf, int n, int g, int s)
{
    return pd ? _mm256_broadcast_sd(pd + g * n + s) : _mm256_cvtps_pd(_mm_broadcast_ss(pf + s));
}

/*
 * out[g][c] = (float)(sum_s p[g][s] k_s[c]) / den[g] for G heads, the sums in double in
 * key order; probabilities from pd [G, n] (doubles) or, for one head, pf [n].
 */
AVX2 static inline ALWAYS void pv_g(int G, const double *pd, const float *pf, int n, int dh,
                                    const uint16_t *const *keys, const float *den,
                                    float *const *out)
{
    int d8 = dh & ~7;
    for (int c = 0; c < d8; c += 8) {
        __m256d a0[HG], a1[HG];
        UNROLL
        for (int g = 0; g < G; g++)
            a0[g] = a1[g] = _mm256_setzero_pd();
        for (int s = 0; s < n; s++) {
            __m256d lo, hi;
            load_bf16_pd(keys[s] + c, &lo, &hi);
            UNROLL
            for (int g = 0; g < G; g++) {
                __m256d p = prob(pd, pf, n, g, s);
                a0[g] = _mm256_fmadd_pd(p, lo, a0[g]);
                a1[g] = _mm256_fmadd_pd(p, hi, a1[g]);
            }
        }
        UNROLL
        for (int g = 0; g < G; g++) {
            __m128 d = _mm_set1_ps(den[g]);
            _mm_storeu_ps(out[g] + c, _mm_div_ps(_mm256_cvtpd_ps(a0[g]), d));
            _mm_storeu_ps(out[g] + c + 4, _mm_div_ps(_mm256_cvtpd_ps(a1[g]), d));
        }
    }
    for (int c = d8; c < dh; c++)
        for (int g = 0; g < G; g++) {
            double acc = 0.0;
            for (int s = 0; s < n; s++)
                acc += (pd ? pd[g * n + s] : pf[s]) * bf16f(keys[s][c]);
            out[g][c] = (float)acc / den[g];
        }
}

/* the largest non-NaN of z[0..n) (-inf if none), as a chain of fmaxf: MAXPS returns its
 * second operand when the first is NaN, and the maximum of numbers does not depend on the
 * order (a +0 / -0 tie may pick either zero, which the subtraction below maps to the same
 * exponentials) */
AVX2 static float max_of(const float *z, int n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int s = 0;
    for (; s + 8 <= n; s += 8)
        m = _mm256_max_ps(_mm256_loadu_ps(z + s), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float mx = _mm_cvtss_f32(h);
    for (; s < n; s++)
        mx = fmaxf(mx, z[s]);
    return mx;
}

/* the oracle's softmax of one head's n scores in place (its expf and BF16 rounding through
 * the vector ones); returns the denominator */
static float softmax(float *z, int n, float sink, bool bf16_p)
{
    float mx = max_of(z, n);
    for (int s = 0; s < n; s++)
        z[s] -= mx;
    dsv4_cpu_exp(z, n, z);
    double den = 0.0;
    for (int s = 0; s < n; s++)
        den += z[s];
    float fden = (float)den + expf(sink - mx);
    if (bf16_p)
        dsv4_cpu_round_bf16(z, n);
    return fden;
}

/* G heads (q, sink, out of the first), n >= 1 keys; z: G rows of n floats of scratch,
 * pd: G * n doubles, or NULL (one head: the P.V sums read z) */
AVX2 static inline ALWAYS void attn_group(int G, const float *q, int dh,
                                          const uint16_t *const *keys, int n, const float *sink,
                                          float scale, bool bf16_p, float *const *z, double *pd,
                                          float *out)
{
    double qd[HG * MAX_DH];
    float den[HG], *o[HG];
    for (int i = 0; i < G * dh; i++)
        qd[i] = q[i];
    scores_g(G, qd, dh, keys, n, scale, z);
    for (int g = 0; g < G; g++) {
        den[g] = softmax(z[g], n, sink[g], bf16_p);
        for (int s = 0; pd && s < n; s++)
            pd[g * n + s] = z[g][s];
        o[g] = out + (int64_t)g * dh;
    }
    pv_g(G, pd, z[0], n, dh, keys, den, o);
}

AVX2 static void attn_avx2(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                           const float *sink, float scale, bool bf16_p, float *probs, float *out)
{
    if (n == 0) {
        memset(out, 0, sizeof(float) * nh * dh);
        return;
    }
    if (n > MAX_N) { /* one head at a time in the caller's buffer */
        float *z1[1] = {probs};
        for (int h = 0; h < nh; h++)
            attn_group(1, q + (int64_t)h * dh, dh, keys, n, sink + h, scale, bf16_p, z1, NULL,
                       out + (int64_t)h * dh);
        return;
    }
    float zb[HG][MAX_N];
    double pd[HG * MAX_N];
    float *z[HG] = {zb[0], zb[1], zb[2], zb[3]};
    for (int h = 0; h < nh; h += HG) {
        int G = nh - h < HG ? nh - h : HG;
        const float *qh = q + (int64_t)h * dh;
        float *oh = out + (int64_t)h * dh;
        switch (G) {
        case 4:
            attn_group(4, qh, dh, keys, n, sink + h, scale, bf16_p, z, pd, oh);
            break;
        case 3:
            attn_group(3, qh, dh, keys, n, sink + h, scale, bf16_p, z, pd, oh);
            break;
        case 2:
            attn_group(2, qh, dh, keys, n, sink + h, scale, bf16_p, z, pd, oh);
            break;
        default:
            attn_group(1, qh, dh, keys, n, sink + h, scale, bf16_p, z, pd, oh);
            break;
        }
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
