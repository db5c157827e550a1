/*
 * ops.c - scalar reference of the non-GEMM ops (see kernels/ref/ops.h).
 *
 * Written for clarity over speed: plain loops in the order the formulas
 * read, expf/sqrtf from libm.  Reductions over long axes (mean of squares,
 * dot products, pooled and attention sums) accumulate in double and round
 * to FP32 once, like the Python reference (tests/reference/dsv4_ref.py
 * choice 15): results then do not depend on summation order at FP32 ulp
 * level, which keeps BF16 roundings downstream identical far more often.  The forward
 * pass uses these directly where they are cheap; kernels/cpu has faster
 * versions of the hot ones, tested against these.
 */
#include "kernels/ref/ops.h"

#include <math.h>
#include <string.h>

void dsv4_ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float rho = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = w ? w[i] * (x[i] * rho) : x[i] * rho;
}

int dsv4_rope_init(struct dsv4_rope *r, int dim, double theta, bool yarn, double factor,
                   double beta_fast, double beta_slow, double orig_max_pos)
{
    if (dim <= 0 || dim % 2 || dim / 2 > DSV4_ROPE_MAX_PAIRS || theta <= 1.0)
        return -1;
    r->dim = dim;
    int pairs = dim / 2;
    double lo = 0, hi = 0;
    if (yarn) {
        double c_fast = dim * log(orig_max_pos / (2 * M_PI * beta_fast)) / (2 * log(theta));
        double c_slow = dim * log(orig_max_pos / (2 * M_PI * beta_slow)) / (2 * log(theta));
        lo = floor(c_fast);
        if (lo < 0)
            lo = 0;
        hi = ceil(c_slow);
        if (hi > dim - 1)
            hi = dim - 1;
        if (hi == lo)
            hi += 0.001;
    }
    for (int i = 0; i < pairs; i++) {
        /* FP32 like the reference's torch.arange(0, dim, 2) / dim power */
        float w = (float)(1.0 / pow(theta, (double)(2 * i) / dim));
        if (yarn) {
            float ramp = (float)((i - lo) / (hi - lo));
            if (ramp < 0)
                ramp = 0;
            if (ramp > 1)
                ramp = 1;
            float smooth = 1.0f - ramp;
            w = w / (float)factor * (1.0f - smooth) + w * smooth;
        }
        r->freq[i] = w;
    }
    return 0;
}

void dsv4_ref_rope(const struct dsv4_rope *r, float *x, int64_t pos, bool inverse)
{
    int pairs = r->dim / 2;
    for (int i = 0; i < pairs; i++) {
        float phi = (float)pos * r->freq[i];
        float c = (float)cos((double)phi), s = (float)sin((double)phi);
        if (inverse)
            s = -s;
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

static float sigmoidf(float v)
{
    return 1.0f / (1.0f + expf(-v));
}

/* m[o] = fn[o] . x over n = hc * D, accumulated in double. */
static void mix_proj(const float *fn, int rows, const float *x, int64_t n, float *m)
{
    for (int o = 0; o < rows; o++) {
        const float *f = fn + (int64_t)o * n;
        double acc = 0.0;
        for (int64_t i = 0; i < n; i++)
            acc += (double)f[i] * x[i];
        m[o] = (float)acc;
    }
}

static float stream_rho(const float *X, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)X[i] * X[i];
    return 1.0f / sqrtf((float)(ss / (double)n) + eps);
}

void dsv4_ref_sinkhorn(float *c, int hc, float eps, int iters)
{
    for (int j = 0; j < hc; j++) {
        float *row = c + j * hc, mx = row[0], sum = 0.0f;
        for (int k = 1; k < hc; k++)
            mx = fmaxf(mx, row[k]);
        for (int k = 0; k < hc; k++) {
            row[k] = expf(row[k] - mx);
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

void dsv4_ref_hc_weights(const float *m, float rho, int hc, const float *scale, const float *base,
                         float hc_eps, int iters, float *pre, float *post, float *comb)
{
    for (int j = 0; j < hc; j++) {
        pre[j] = sigmoidf(m[j] * rho * scale[0] + base[j]) + hc_eps;
        post[j] = 2.0f * sigmoidf(m[hc + j] * rho * scale[1] + base[hc + j]);
    }
    for (int i = 0; i < hc * hc; i++)
        comb[i] = m[2 * hc + i] * rho * scale[2] + base[2 * hc + i];
    dsv4_ref_sinkhorn(comb, hc, hc_eps, iters);
}

void dsv4_ref_hc_pre(const float *X, int hc, int64_t D, const float *fn, const float *scale,
                     const float *base, const float *mix, float norm_eps, float hc_eps, int iters,
                     float *y, float *post, float *comb)
{
    int nmix = (2 + hc) * hc;
    float m[(2 + 16) * 16];
    if (mix)
        memcpy(m, mix, sizeof(float) * nmix);
    else
        mix_proj(fn, nmix, X, hc * D, m);
    float pre[16];
    dsv4_ref_hc_weights(m, stream_rho(X, hc * D, norm_eps), hc, scale, base, hc_eps, iters, pre,
                        post, comb);
    for (int64_t d = 0; d < D; d++) {
        double acc = 0.0;
        for (int j = 0; j < hc; j++)
            acc += (double)pre[j] * X[j * D + d];
        y[d] = (float)acc;
    }
}

void dsv4_ref_hc_post(const float *A, const float *X, const float *post, const float *comb, int hc,
                      int64_t D, float *Xo)
{
    for (int k = 0; k < hc; k++)
        for (int64_t d = 0; d < D; d++) {
            double acc = (double)post[k] * A[d];
            for (int j = 0; j < hc; j++)
                acc += (double)comb[j * hc + k] * X[j * D + d];
            Xo[k * D + d] = (float)acc;
        }
}

void dsv4_ref_hc_head(const float *X, int hc, int64_t D, const float *fn, float scale,
                      const float *base, const float *mix, float norm_eps, float hc_eps, float *y)
{
    float m[16], pre[16];
    if (mix)
        memcpy(m, mix, sizeof(float) * hc);
    else
        mix_proj(fn, hc, X, hc * D, m);
    float rho = stream_rho(X, hc * D, norm_eps);
    for (int j = 0; j < hc; j++)
        pre[j] = sigmoidf(m[j] * rho * scale + base[j]) + hc_eps;
    for (int64_t d = 0; d < D; d++) {
        double acc = 0.0;
        for (int j = 0; j < hc; j++)
            acc += (double)pre[j] * X[j * D + d];
        y[d] = (float)acc;
    }
}

static float bf(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void dsv4_ref_sparse_attn(const float *q, int nh, int dh, const uint16_t *const *keys, int n,
                          const float *sink, float scale, bool bf16_p, float *probs, float *out)
{
    for (int h = 0; h < nh; h++) {
        const float *qh = q + (int64_t)h * dh;
        float *oh = out + (int64_t)h * dh;
        for (int i = 0; i < dh; i++)
            oh[i] = 0.0f;
        if (n == 0)
            continue;
        float mx = -INFINITY;
        for (int s = 0; s < n; s++) {
            double z = 0.0;
            for (int i = 0; i < dh; i++)
                z += (double)qh[i] * bf(keys[s][i]);
            probs[s] = (float)z * scale;
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
        /* the P.V sums of the dh channels in double, one rounding each */
        for (int i0 = 0; i0 < dh; i0 += 64) {
            double acc[64] = {0};
            int w = dh - i0 < 64 ? dh - i0 : 64;
            for (int s = 0; s < n; s++) {
                double pr = probs[s];
                const uint16_t *k = keys[s] + i0;
                for (int i = 0; i < w; i++)
                    acc[i] += pr * bf(k[i]);
            }
            for (int i = 0; i < w; i++)
                oh[i0 + i] = (float)acc[i] / fden;
        }
    }
}

void dsv4_ref_compress_pool(const float *const *kv, const float *const *gate, int n, int64_t d,
                            float *out)
{
    for (int64_t c = 0; c < d; c++) {
        if (n == 0) {
            out[c] = 0.0f;
            continue;
        }
        float mx = gate[0][c];
        for (int s = 1; s < n; s++)
            mx = fmaxf(mx, gate[s][c]);
        double den = 0.0, acc = 0.0;
        for (int s = 0; s < n; s++) {
            float e = expf(gate[s][c] - mx);
            den += e;
            acc += (double)e * kv[s][c];
        }
        out[c] = (float)(acc / den);
    }
}

void dsv4_ref_hadamard(float *x, int n)
{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++)
        x[i] *= s;
}

void dsv4_ref_indexer_scores(const float *q, const float *w, int nh, int d,
                             const uint16_t *const *keys, int n, float *scores)
{
    for (int b = 0; b < n; b++) {
        double acc = 0.0;
        for (int h = 0; h < nh; h++) {
            const float *qh = q + (int64_t)h * d;
            double dot = 0.0;
            for (int i = 0; i < d; i++)
                dot += (double)qh[i] * bf(keys[b][i]);
            acc += (double)w[h] * fmaxf((float)dot, 0.0f);
        }
        scores[b] = (float)acc;
    }
}

void dsv4_ref_topk(const float *v, int n, int k, int *idx)
{
    /* insertion into a sorted list of the k best so far */
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        int pos = cnt;
        while (pos > 0 && v[idx[pos - 1]] < v[i])
            pos--;
        if (pos >= k)
            continue;
        int last = cnt < k ? cnt : k - 1;
        for (int j = last; j > pos; j--)
            idx[j] = idx[j - 1];
        idx[pos] = i;
        if (cnt < k)
            cnt++;
    }
}

void dsv4_ref_route(const float *logits, int E, enum dsv4_score_func func, const float *bias,
                    const int32_t *hash, int k, bool renorm, float scale, float *scratch, int *ids,
                    float *weights)
{
    float *s = scratch;
    if (func == DSV4_SCORE_SOFTMAX) {
        float mx = logits[0], sum = 0.0f;
        for (int e = 1; e < E; e++)
            mx = fmaxf(mx, logits[e]);
        for (int e = 0; e < E; e++) {
            s[e] = expf(logits[e] - mx);
            sum += s[e];
        }
        for (int e = 0; e < E; e++)
            s[e] /= sum;
    } else if (func == DSV4_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++)
            s[e] = sigmoidf(logits[e]);
    } else {
        for (int e = 0; e < E; e++) {
            float l = logits[e];
            /* softplus without overflow: log1p(exp(l)) = max(l,0) + log1p(exp(-|l|)) */
            float sp = fmaxf(l, 0.0f) + log1pf(expf(-fabsf(l)));
            s[e] = sqrtf(sp);
        }
    }
    if (hash) {
        for (int i = 0; i < k; i++)
            ids[i] = hash[i];
    } else {
        /* top-k of s + bias: reuse topk on a biased copy kept in weights? E may exceed k, so
         * select by scanning with the bias added on the fly. */
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
        weights[i] = s[ids[i]];
        sum += weights[i];
    }
    for (int i = 0; i < k; i++)
        weights[i] = (renorm ? weights[i] / sum : weights[i]) * scale;
}

void dsv4_ref_swiglu(const float *g, const float *u, int64_t n, float limit, float w, float *h)
{
    for (int64_t i = 0; i < n; i++) {
        float gv = g[i], uv = u[i];
        if (limit > 0) {
            gv = fminf(gv, limit);
            uv = fminf(fmaxf(uv, -limit), limit);
        }
        h[i] = gv / (1.0f + expf(-gv)) * uv * w;
    }
}

void dsv4_ref_round_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        if ((b & 0x7f800000u) == 0x7f800000u) {
            if (b & 0x7fffffu)
                b |= 0x00400000u; /* quiet NaN stays NaN */
        } else {
            b += 0x7fffu + ((b >> 16) & 1u);
        }
        b &= 0xffff0000u;
        memcpy(&x[i], &b, 4);
    }
}
