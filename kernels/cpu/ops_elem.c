/*
 * ops_elem.c - AVX2 versions of the element-wise and per-row ops that the
 * cpu backend used to run as the oracle's scalar loops (kernels/ref/ops.c,
 * formats.c, backend.c): BF16 rounding, argmax, expf, SwiGLU, RMSNorm, the
 * mHC stream sums, the MoE slot sum, RoPE and the FP8/FP4 activation
 * simulation.  Semantics and exactness in kernels/cpu/ops.h.
 *
 * expf: the oracle calls libm's expf, so a vector exp is only a drop-in if
 * it rounds identically.  exp8 is glibc's expf (the FMA variant it selects
 * on AVX2 machines, sysdeps/ieee754/flt-32/e_expf.c since 2.27): x in
 * double, k = round(x * 32 / ln 2) by the 1.5 * 2^52 shift, 2^(k/32) from a
 * 32-entry table, a degree-3 polynomial in r with the same FMAs, one
 * rounding to float at the end; lanes outside its fast range (|x| >= ~88,
 * NaN) call expf itself.  Every step is an IEEE double operation, so the
 * results are the same bits (tests/kernels/test_ops_cpu checks them against
 * the libm in use, also exhaustively with DSV4_TEST_EXHAUSTIVE=1).
 *
 * Sums the oracle forms in double stay in double: products of two floats
 * are exact there, so an FMA rounds like the oracle's multiply-then-add;
 * sums over a channel's own terms (mHC) keep the oracle's order and are
 * bitwise equal, sums over a row (RMSNorm's mean of squares) run in four
 * double lanes and differ from it only in the order of FP64 additions.
 * Compiled with a target attribute; DSV4_CPU_ISA=scalar runs the oracle.
 */
#include "kernels/cpu/ops.h"

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/round_avx2.h"
#include "kernels/formats.h"
#include "kernels/ref/backend.h"
#include "kernels/ref/ops.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2   __attribute__((target("avx2,fma")))
#define ALWAYS __attribute__((always_inline))

static int pick(void)
{
    return strcmp(dsv4_cpu_isa(), "scalar") != 0;
}

/* ---------------------------------------------------------------- BF16 rounding */

/* the oracle's rule on 8 lanes: RNE by adding 0x7fff plus the kept lowest bit, NaN
 * quieted, infinities kept */
AVX2 static inline __m256 round_bf16_8(__m256 v)
{
    const __m256i absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    __m256i b = _mm256_castps_si256(v), a = _mm256_and_si256(b, absm);
    __m256i rn = _mm256_add_epi32(
            b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1))));
    __m256i nan = _mm256_cmpgt_epi32(a, inf);
    __m256i sp = _mm256_or_si256(b, _mm256_and_si256(nan, _mm256_set1_epi32(0x00400000)));
    __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(b, inf), inf);
    __m256i r = _mm256_blendv_epi8(rn, sp, special);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)));
}

AVX2 static void round_bf16_avx2(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, round_bf16_8(_mm256_loadu_ps(x + i)));
    dsv4_ref_round_bf16(x + i, n - i);
}

void dsv4_cpu_round_bf16(float *x, int64_t n)
{
    if (pick())
        round_bf16_avx2(x, n);
    else
        dsv4_ref_round_bf16(x, n);
}

/* ---------------------------------------------------------------- argmax */

/*
 * Four vectors of lane maxima over 32-element steps, each lane keeping the first index
 * of its maximum (a strict compare, false for NaN); then the largest candidate, ties to
 * the lowest index, and the tail in order: the oracle's first maximal non-NaN element.
 * A row whose maximum is -inf (or that holds only NaN) goes to the oracle.
 */
AVX2 static int32_t argmax_avx2(const float *x, int64_t n)
{
    int64_t n32 = n & ~(int64_t)31, best = -1;
    float bv = -INFINITY;
    if (n32 > 0 && n < INT32_MAX) {
        __m256 m[4];
        __m256i mi[4], idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int a = 0; a < 4; a++) {
            m[a] = _mm256_set1_ps(-INFINITY);
            mi[a] = _mm256_set1_epi32(-1);
        }
        for (int64_t i = 0; i < n32; i += 32) {
            for (int a = 0; a < 4; a++) {
                __m256 v = _mm256_loadu_ps(x + i + 8 * a);
                __m256 gt = _mm256_cmp_ps(v, m[a], _CMP_GT_OQ);
                m[a] = _mm256_blendv_ps(m[a], v, gt);
                mi[a] = _mm256_blendv_epi8(mi[a], idx, _mm256_castps_si256(gt));
                idx = _mm256_add_epi32(idx, _mm256_set1_epi32(8));
            }
        }
        float cv[32];
        int32_t ci[32];
        for (int a = 0; a < 4; a++) {
            _mm256_storeu_ps(cv + 8 * a, m[a]);
            _mm256_storeu_si256((__m256i *)(ci + 8 * a), mi[a]);
        }
        for (int c = 0; c < 32; c++)
            if (ci[c] >= 0 && (best < 0 || cv[c] > bv || (cv[c] == bv && ci[c] < best))) {
                best = ci[c];
                bv = cv[c];
            }
    } else {
        n32 = 0;
    }
    for (int64_t i = n32; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > bv)) {
            best = i;
            bv = x[i];
        }
    if (best < 0 || bv == -INFINITY)
        return dsv4_ref_argmax_row(x, n);
    return (int32_t)best;
}

int32_t dsv4_cpu_argmax(const float *x, int64_t n)
{
    return pick() ? argmax_avx2(x, n) : dsv4_ref_argmax_row(x, n);
}

/* ---------------------------------------------------------------- expf */

/* 2^(i/32) as bits, minus i << 47 (the exponent the shifted k adds back) */
static const uint64_t exp_tab[32] = {
        0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
        0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
        0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
        0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
        0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
        0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
        0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

/* glibc's expf core on 4 lanes of double (|x| < ~88) */
AVX2 static inline __m128 exp4(__m128 x)
{
    const __m256d inv = _mm256_set1_pd(0x1.71547652b82fep+5), shift = _mm256_set1_pd(0x1.8p52);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d z = _mm256_fmadd_pd(inv, xd, shift);
    __m256i ki = _mm256_castpd_si256(z);
    __m256d r = _mm256_fmsub_pd(inv, xd, _mm256_sub_pd(z, shift));
    __m256i t = _mm256_i64gather_epi64((const long long *)exp_tab,
                                       _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));
    __m256d p = _mm256_fmadd_pd(r, _mm256_set1_pd(0x1.c6af84b912394p-20),
                                _mm256_set1_pd(0x1.ebfce50fac4f3p-13));
    __m256d y = _mm256_fmadd_pd(r, _mm256_set1_pd(0x1.62e42ff0c52d6p-6), _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, _mm256_castsi256_pd(t)));
}

AVX2 static inline __m256 exp8(__m256 x)
{
    __m256 y = _mm256_set_m128(exp4(_mm256_extractf128_ps(x, 1)), exp4(_mm256_castps256_ps128(x)));
    __m256i a = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff));
    int slow = _mm256_movemask_ps(
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x42afffff))));
    if (slow) { /* |x| >= 88 (glibc: top12 >= top12(88.0f)): overflow, underflow, inf, NaN */
        float xs[8], ys[8];
        _mm256_storeu_ps(xs, x);
        _mm256_storeu_ps(ys, y);
        for (int l = 0; l < 8; l++)
            if (slow >> l & 1)
                ys[l] = expf(xs[l]);
        y = _mm256_loadu_ps(ys);
    }
    return y;
}

AVX2 static void exp_avx2(const float *x, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] = expf(x[i]);
}

void dsv4_cpu_exp(const float *x, int64_t n, float *y)
{
    if (pick()) {
        exp_avx2(x, n, y);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        y[i] = expf(x[i]);
}

/* ---------------------------------------------------------------- SwiGLU */

/* MINPS/MAXPS return the second operand on NaN, as fminf/fmaxf return the number */
AVX2 static void swiglu_avx2(const float *g, const float *u, int64_t n, float limit, float w,
                             float *h)
{
    const __m256 one = _mm256_set1_ps(1.0f), wv = _mm256_set1_ps(w);
    const __m256 lim = _mm256_set1_ps(limit), nlim = _mm256_set1_ps(-limit);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
        if (limit > 0) {
            gv = _mm256_min_ps(gv, lim);
            uv = _mm256_min_ps(_mm256_max_ps(uv, nlim), lim);
        }
        __m256 e = exp8(_mm256_xor_ps(gv, sign));
        __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(s, uv), wv));
    }
    dsv4_ref_swiglu(g + i, u + i, n - i, limit, w, h + i);
}

void dsv4_cpu_swiglu(const float *g, const float *u, int64_t n, float limit, float w, float *h)
{
    if (pick())
        swiglu_avx2(g, u, n, limit, w, h);
    else
        dsv4_ref_swiglu(g, u, n, limit, w, h);
}

/* ---------------------------------------------------------------- RMSNorm */

/* 1 / sqrt(mean(x^2) + eps), the squares summed in four double lanes */
AVX2 static float rms_inv_avx2(const float *x, int64_t n, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    double l[4];
    _mm256_storeu_pd(l, _mm256_add_pd(s0, s1));
    double ss = (l[0] + l[1]) + (l[2] + l[3]);
    for (; i < n; i++)
        ss += (double)x[i] * x[i];
    return 1.0f / sqrtf((float)(ss / (double)n) + eps);
}

float dsv4_cpu_rms_inv(const float *x, int64_t n, float eps)
{
    if (pick())
        return rms_inv_avx2(x, n, eps);
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return 1.0f / sqrtf((float)(ss / (double)n) + eps);
}

AVX2 static void scale_avx2(const float *x, const float *w, int64_t n, float rho, float *y)
{
    __m256 r = _mm256_set1_ps(rho);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), r);
        _mm256_storeu_ps(y + i, w ? _mm256_mul_ps(_mm256_loadu_ps(w + i), v) : v);
    }
    for (; i < n; i++)
        y[i] = w ? w[i] * (x[i] * rho) : x[i] * rho;
}

void dsv4_cpu_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    if (!pick()) {
        dsv4_ref_rmsnorm(x, w, n, eps, y);
        return;
    }
    scale_avx2(x, w, n, rms_inv_avx2(x, n, eps), y);
}

/* ---------------------------------------------------------------- mHC stream sums */

/* Xo[k, d] = (float)(post_k A[d] + sum_j comb[j, k] X[j, d]) in double, j in order */
AVX2 static void hc_post_avx2(const float *A, const float *X, const float *post, const float *comb,
                              int hc, int64_t D, float *Xo)
{
    int64_t d4 = D & ~(int64_t)3;
    for (int k = 0; k < hc; k++) {
        __m256d pk = _mm256_set1_pd(post[k]);
        for (int64_t d = 0; d < d4; d += 4) {
            __m256d acc = _mm256_mul_pd(pk, _mm256_cvtps_pd(_mm_loadu_ps(A + d)));
            for (int j = 0; j < hc; j++)
                acc = _mm256_fmadd_pd(_mm256_set1_pd(comb[j * hc + k]),
                                      _mm256_cvtps_pd(_mm_loadu_ps(X + j * D + d)), acc);
            _mm_storeu_ps(Xo + k * D + d, _mm256_cvtpd_ps(acc));
        }
        for (int64_t d = d4; d < D; d++) {
            double acc = (double)post[k] * A[d];
            for (int j = 0; j < hc; j++)
                acc += (double)comb[j * hc + k] * X[j * D + d];
            Xo[k * D + d] = (float)acc;
        }
    }
}

void dsv4_cpu_hc_post(const float *A, const float *X, const float *post, const float *comb, int hc,
                      int64_t D, float *Xo)
{
    if (pick())
        hc_post_avx2(A, X, post, comb, hc, D, Xo);
    else
        dsv4_ref_hc_post(A, X, post, comb, hc, D, Xo);
}

/* y[d] = (float)(sum_j pre_j X[j, d]) in double from zero, j in order */
AVX2 static void hc_sum_avx2(const float *X, const float *pre, int hc, int64_t D, float *y)
{
    int64_t d4 = D & ~(int64_t)3;
    for (int64_t d = 0; d < d4; d += 4) {
        __m256d acc = _mm256_setzero_pd();
        for (int j = 0; j < hc; j++)
            acc = _mm256_fmadd_pd(_mm256_set1_pd(pre[j]),
                                  _mm256_cvtps_pd(_mm_loadu_ps(X + j * D + d)), acc);
        _mm_storeu_ps(y + d, _mm256_cvtpd_ps(acc));
    }
    for (int64_t d = d4; d < D; d++) {
        double acc = 0.0;
        for (int j = 0; j < hc; j++)
            acc += (double)pre[j] * X[j * D + d];
        y[d] = (float)acc;
    }
}

void dsv4_cpu_hc_sum(const float *X, const float *pre, int hc, int64_t D, float *y)
{
    if (pick()) {
        hc_sum_avx2(X, pre, hc, D, y);
        return;
    }
    for (int64_t d = 0; d < D; d++) {
        double acc = 0.0;
        for (int j = 0; j < hc; j++)
            acc += (double)pre[j] * X[j * D + d];
        y[d] = (float)acc;
    }
}

/* ---------------------------------------------------------------- MoE slot sum */

/* out[d] = (float)(sum_i s[i, d]) in double from zero, i in order */
AVX2 static void sum_rows_avx2(const float *s, int64_t S, int64_t D, float *out)
{
    int64_t d4 = D & ~(int64_t)3;
    for (int64_t d = 0; d < d4; d += 4) {
        __m256d acc = _mm256_setzero_pd();
        for (int64_t i = 0; i < S; i++)
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm_loadu_ps(s + i * D + d)));
        _mm_storeu_ps(out + d, _mm256_cvtpd_ps(acc));
    }
    for (int64_t d = d4; d < D; d++) {
        double acc = 0.0;
        for (int64_t i = 0; i < S; i++)
            acc += s[i * D + d];
        out[d] = (float)acc;
    }
}

void dsv4_cpu_sum_rows(const float *s, int64_t S, int64_t D, float *out)
{
    if (pick()) {
        sum_rows_avx2(s, S, D, out);
        return;
    }
    for (int64_t d = 0; d < D; d++) {
        double acc = 0.0;
        for (int64_t i = 0; i < S; i++)
            acc += s[i * D + d];
        out[d] = (float)acc;
    }
}

/* ---------------------------------------------------------------- RoPE */

/* 4 pairs rotated by per-pair cos and sin, each duplicated to both lanes of its pair:
 * (a c - b s, b c + a s), the oracle's products and one rounding each (no FMA) */
AVX2 static inline __m256 rotate8(__m256 v, const float *cd, const float *sd)
{
    __m256 t1 = _mm256_mul_ps(v, _mm256_loadu_ps(cd));
    __m256 t2 = _mm256_mul_ps(_mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)), _mm256_loadu_ps(sd));
    return _mm256_addsub_ps(t1, t2);
}

/* x [n] (n even); cd, sd hold at least n rounded up to 8 values.  The tail goes through a
 * padded copy: a scalar a * c - b * s could be contracted into an FMA in this target. */
AVX2 static void rotate_avx2(float *x, const float *cd, const float *sd, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, rotate8(_mm256_loadu_ps(x + i), cd + i, sd + i));
    if (i < n) {
        float t[8] = {0};
        memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(t, rotate8(_mm256_loadu_ps(t), cd + i, sd + i));
        memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
    }
}

void dsv4_cpu_rope(const struct dsv4_rope *r, float *x, int64_t nh, int64_t stride, int64_t pos,
                   bool inverse, bool bf16)
{
    float cd[2 * DSV4_ROPE_MAX_PAIRS + 8] = {0}, sd[2 * DSV4_ROPE_MAX_PAIRS + 8] = {0};
    int pairs = r->dim / 2;
    if (!pick()) {
        for (int64_t h = 0; h < nh; h++) {
            dsv4_ref_rope(r, x + h * stride, pos, inverse);
            if (bf16)
                dsv4_ref_round_bf16(x + h * stride, r->dim);
        }
        return;
    }
    for (int i = 0; i < pairs; i++) { /* dsv4_ref_rope's angles, once for all heads */
        float phi = (float)pos * r->freq[i];
        float c = (float)cos((double)phi), s = (float)sin((double)phi);
        cd[2 * i] = cd[2 * i + 1] = c;
        sd[2 * i] = sd[2 * i + 1] = inverse ? -s : s;
    }
    for (int64_t h = 0; h < nh; h++) {
        rotate_avx2(x + h * stride, cd, sd, r->dim);
        if (bf16)
            round_bf16_avx2(x + h * stride, r->dim);
    }
}

/* ---------------------------------------------------------------- activation simulation */

/* One group of len values (len % 8 == 0) in place: FP8 as dsv4_act_sim_fp8 (E4M3, scale
 * 2^ceil(log2(max(amax, 1e-4) / 448))), FP4 as dsv4_act_sim_fp4 (E2M1, over 6).  x / s
 * is x * (1 / s): s is a power of two with a normal reciprocal (or inf / NaN, which
 * give the same zeros and NaN). */
AVX2 static inline ALWAYS void sim_group(float *x, int64_t len, int fp4)
{
    float amax = amax8(x, len);
    float s = fp4 ? dsv4_pow2_scale(amax < 6.0f * 0x1p-126f ? 6.0f * 0x1p-126f : amax, 6.0f)
                  : dsv4_pow2_scale(amax < 1e-4f ? 1e-4f : amax, 448.0f);
    __m256 inv = _mm256_set1_ps(1.0f / s), sv = _mm256_set1_ps(s);
    for (int64_t i = 0; i < len; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
        v = fp4 ? round_e2m1(v) : round_e4m3(clamp_keep_nan(v, 448.0f));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(v, sv));
    }
}

AVX2 static void act_sim_avx2(float *x, int64_t n, enum dsv4_sim kind, int group)
{
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = n - g0 < group ? n - g0 : group;
        if (len % 8)
            (kind == DSV4_SIM_FP8 ? dsv4_act_sim_fp8 : dsv4_act_sim_fp4)(x + g0, len, group);
        else if (kind == DSV4_SIM_FP8)
            sim_group(x + g0, len, 0);
        else
            sim_group(x + g0, len, 1);
    }
}

void dsv4_cpu_act_sim(float *x, int64_t n, enum dsv4_sim kind, int group)
{
    if (pick())
        act_sim_avx2(x, n, kind, group);
    else if (kind == DSV4_SIM_FP8)
        dsv4_act_sim_fp8(x, n, group);
    else
        dsv4_act_sim_fp4(x, n, group);
}
