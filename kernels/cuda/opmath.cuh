/*
 * opmath.cuh - the scalar parts of the non-GEMM ops, shared by the CUDA
 * kernels and the host: RMS scale, rotary pair, SwiGLU element, the mHC
 * coefficients with their Sinkhorn iterations, MoE routing of one token, the
 * top-k order (value descending, ties to the lower index) as sortable keys
 * and the radix-select step that finds the k-th key, the Walsh-Hadamard
 * butterfly, and the compressor's per-channel pooling.
 *
 * Each function is the formula of its oracle in kernels/ref/ops.c written
 * once for both sides (see math.cuh for why and how: no fused
 * multiply-adds, double-evaluated exp/log1p/cos/sin); a kernel calls it per
 * token, per channel or per pair, and tests/cuda/test_cuda_math.c compares
 * it with the oracle on the host.  Long reductions (the mix projection, the
 * sums of squares, the attention and pooling sums) stay in the kernels,
 * where they run in parallel in double; these functions take their results.
 */
#ifndef DSV4_CUDA_OPMATH_CUH
#define DSV4_CUDA_OPMATH_CUH

#include "kernels/cuda/math.cuh"

/* Score functions of the router (the values of enum dsv4_score_func, kernels/backend.h). */
#define DSV4_CU_SQRTSOFTPLUS 0
#define DSV4_CU_SIGMOID      1
#define DSV4_CU_SOFTMAX      2

/* 1 / sqrt(ss / n + eps) from the double sum of squares ss of n values (RMSNorm, mHC). */
DSV4_HD float dsv4_cu_rms_scale(double ss, int64_t n, float eps)
{
    return 1.0f / sqrtf((float)(ss / (double)n) + eps);
}

/* Rotates the pair (a, b) by pos * freq (or its inverse), FP32 (dsv4_ref_rope). */
DSV4_HD void dsv4_cu_rope_pair(float *a, float *b, int64_t pos, float freq, bool inverse)
{
    float phi = dsv4_cu_mul((float)pos, freq);
    float c = (float)cos((double)phi), s = (float)sin((double)phi);
    if (inverse)
        s = -s;
    float x = *a, y = *b;
    *a = dsv4_cu_add(dsv4_cu_mul(x, c), -dsv4_cu_mul(y, s));
    *b = dsv4_cu_add(dsv4_cu_mul(x, s), dsv4_cu_mul(y, c));
}

/* h = silu(min(g, limit)) * clamp(u, -limit, limit) * w (limit <= 0: no clamp). */
DSV4_HD float dsv4_cu_swiglu(float g, float u, float limit, float w)
{
    if (limit > 0) {
        g = fminf(g, limit);
        u = fminf(fmaxf(u, -limit), limit);
    }
    return dsv4_cu_mul(dsv4_cu_mul(g / (1.0f + dsv4_cu_expf(-g)), u), w);
}

/* ------------------------------------------------------------ mHC */

/*
 * Sinkhorn normalisation of comb[hc * hc] in place from its logits (dsv4_ref_sinkhorn):
 * softmax per row + eps, then per column, then (iters - 1) x (rows, columns), each
 * divided by (sum + eps); sums sequential in FP32.
 */
DSV4_HD void dsv4_cu_sinkhorn(float *c, int hc, float eps, int iters)
{
    for (int j = 0; j < hc; j++) {
        float *row = c + j * hc, mx = row[0], sum = 0.0f;
        for (int k = 1; k < hc; k++)
            mx = fmaxf(mx, row[k]);
        for (int k = 0; k < hc; k++) {
            row[k] = dsv4_cu_expf(row[k] - mx);
            sum += row[k];
        }
        for (int k = 0; k < hc; k++)
            row[k] = row[k] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int j = 0; j < hc; j++) {
                float s = 0.0f;
                for (int k = 0; k < hc; k++)
                    s += c[j * hc + k];
                for (int k = 0; k < hc; k++)
                    c[j * hc + k] /= s + eps;
            }
        }
        for (int k = 0; k < hc; k++) {
            float s = 0.0f;
            for (int j = 0; j < hc; j++)
                s += c[j * hc + k];
            for (int j = 0; j < hc; j++)
                c[j * hc + k] /= s + eps;
        }
    }
}

/* sigmoid(m * rho * s + b) as the reference rounds it. */
DSV4_HD float dsv4_cu_hc_gate(float m, float rho, float s, float b)
{
    return dsv4_cu_sigmoid(dsv4_cu_add(dsv4_cu_mul(dsv4_cu_mul(m, rho), s), b));
}

/*
 * Coefficients of HC_PRE (model.md §3.2) from the mix m[(2 + hc) hc] = fn . flatten(X)
 * and rho: pre[hc], post[hc], comb[hc * hc] (Sinkhorn applied).  hc <= 16.
 */
DSV4_HD void dsv4_cu_hc_pre_coeffs(const float *m, float rho, const float *scale, const float *base,
                                   int hc, float hc_eps, int iters, float *pre, float *post,
                                   float *comb)
{
    for (int j = 0; j < hc; j++) {
        pre[j] = dsv4_cu_hc_gate(m[j], rho, scale[0], base[j]) + hc_eps;
        post[j] = 2.0f * dsv4_cu_hc_gate(m[hc + j], rho, scale[1], base[hc + j]);
    }
    for (int i = 0; i < hc * hc; i++)
        comb[i] = dsv4_cu_add(dsv4_cu_mul(dsv4_cu_mul(m[2 * hc + i], rho), scale[2]),
                              base[2 * hc + i]);
    dsv4_cu_sinkhorn(comb, hc, hc_eps, iters);
}

/* ------------------------------------------------------------ routing */

/* Router score of one logit (the score function of dsv4_ref_route, softmax excluded). */
DSV4_HD float dsv4_cu_score(float l, int func)
{
    if (func == DSV4_CU_SIGMOID)
        return dsv4_cu_sigmoid(l);
    /* softplus without overflow: max(l, 0) + log1p(exp(-|l|)) */
    return sqrtf(fmaxf(l, 0.0f) + dsv4_cu_log1pf(dsv4_cu_expf(-fabsf(l))));
}

/*
 * MoE routing of one token (the route op: dsv4_ref_route, then the selection sorted by
 * expert id with its weights): logits[E]; hash: k fixed ids or NULL; bias[E] or NULL;
 * scratch[E]; ids[k] ascending, wts[k].  k <= 64.
 */
DSV4_HD void dsv4_cu_route_token(const float *logits, int E, int func, const float *bias,
                                 const int32_t *hash, int k, bool renorm, float scale, float *s,
                                 int32_t *ids, float *wts)
{
    if (func == DSV4_CU_SOFTMAX) {
        float mx = logits[0], sum = 0.0f;
        for (int e = 1; e < E; e++)
            mx = fmaxf(mx, logits[e]);
        for (int e = 0; e < E; e++) {
            s[e] = dsv4_cu_expf(logits[e] - mx);
            sum += s[e];
        }
        for (int e = 0; e < E; e++)
            s[e] /= sum;
    } else {
        for (int e = 0; e < E; e++)
            s[e] = dsv4_cu_score(logits[e], func);
    }
    if (hash) {
        for (int i = 0; i < k; i++)
            ids[i] = hash[i];
    } else {
        /* insertion into the sorted k best of s + bias: ties keep the lower id first */
        int cnt = 0;
        for (int e = 0; e < E; e++) {
            float v = s[e] + (bias ? bias[e] : 0.0f);
            int pos = cnt;
            while (pos > 0 && (s[ids[pos - 1]] + (bias ? bias[ids[pos - 1]] : 0.0f)) < v)
                pos--;
            if (pos >= k)
                continue;
            int last = cnt < k ? cnt : k - 1;
            for (int j = last; j > pos; j--)
                ids[j] = ids[j - 1];
            ids[pos] = e;
            if (cnt < k)
                cnt++;
        }
    }
    float sum = 0.0f;
    for (int i = 0; i < k; i++) {
        wts[i] = s[ids[i]];
        sum += wts[i];
    }
    for (int i = 0; i < k; i++)
        wts[i] = dsv4_cu_mul(renorm ? wts[i] / sum : wts[i], scale);
    /* the combine sums in expert-id order: sort by id (stable) */
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            int32_t ti = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = ti;
            float tw = wts[j];
            wts[j] = wts[j - 1];
            wts[j - 1] = tw;
        }
}

/* ------------------------------------------------------------ top-k order */

/*
 * Order-preserving key of a score: v < w  <=>  key(v) < key(w), equal values (+0 and -0
 * too) equal keys.  NaN scores are outside the contract.
 */
DSV4_HD uint32_t dsv4_cu_order_key(float v)
{
    uint32_t u = dsv4_cu_f2u(v == 0.0f ? 0.0f : v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/*
 * Ascending-sortable key of (score, index) in top-k order: value descending, ties to the
 * lower index (dsv4_ref_topk's order).
 */
DSV4_HD uint64_t dsv4_cu_topk_key(float v, uint32_t index)
{
    return ((uint64_t)(~dsv4_cu_order_key(v)) << 32) | index;
}

/*
 * One pass of the radix select of the k-th largest key, most significant digit first: given
 * the histogram of the current 8-bit digit over the candidates that match the digits
 * chosen so far, and *krem (1-based rank still wanted among them), returns the digit the
 * k-th key has and leaves in *krem its rank among the candidates with that digit.
 * Requires 1 <= *krem <= sum(hist).
 */
DSV4_HD int dsv4_cu_radix_pick(const uint32_t *hist, uint32_t *krem)
{
    uint32_t above = 0;
    for (int d = 255; d > 0; d--) {
        if (above + hist[d] >= *krem) {
            *krem -= above;
            return d;
        }
        above += hist[d];
    }
    *krem -= above;
    return 0;
}

/* ------------------------------------------------------------ Hadamard, pooling */

/* One butterfly of the Walsh-Hadamard transform (Sylvester order): (a, b) -> (a+b, a-b). */
DSV4_HD void dsv4_cu_butterfly(float *a, float *b)
{
    float x = *a, y = *b;
    *a = x + y;
    *b = x - y;
}

/* Normalised Walsh-Hadamard of x[n] in place, n a power of two (dsv4_ref_hadamard). */
DSV4_HD void dsv4_cu_hadamard(float *x, int n)
{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++)
                dsv4_cu_butterfly(&x[j], &x[j + h]);
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++)
        x[i] = dsv4_cu_mul(x[i], s);
}

/*
 * Compressor pooling of one channel (dsv4_ref_compress_pool): n candidates at kv[s *
 * stride] and gate[s * stride]; softmax of the gates over the candidates, in double.
 */
DSV4_HD float dsv4_cu_pool_channel(const float *const *kv, const float *const *gate, int n,
                                   int64_t c)
{
    if (n == 0)
        return 0.0f;
    float mx = gate[0][c];
    for (int s = 1; s < n; s++)
        mx = fmaxf(mx, gate[s][c]);
    double den = 0.0, acc = 0.0;
    for (int s = 0; s < n; s++) {
        float e = dsv4_cu_expf(gate[s][c] - mx);
        den = dsv4_cu_dadd(den, (double)e);
        acc = dsv4_cu_dadd(acc, dsv4_cu_dmul((double)e, (double)kv[s][c]));
    }
    return (float)(acc / den);
}

#endif
