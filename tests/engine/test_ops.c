/*
 * test_ops.c - properties of the scalar op oracle (kernels/ref/ops.h) that
 * follow from the spec's formulas: RMSNorm scale, RoPE inverse and
 * relative-position invariance, YaRN ramp for theta = 160000 (lo 15, hi 25),
 * Sinkhorn near doubly stochastic, hc_post identity, sink-free attention =
 * softmax, compressor pooling with equal gates = mean, Hadamard
 * orthonormality, top-k order and ties, routing (bias only selects, hash
 * ids, renormalised weights), SwiGLU clamps, BF16 rounding.
 */
#include "kernels/cpu/ops.h"
#include "kernels/formats.h"
#include "kernels/ref/ops.h"
#include "tests/test.h"

#include <math.h>

int main(void)
{
    /* RMSNorm: rms of the output is 1 for unit weights */
    float x[512], y[512], w[512];
    for (int i = 0; i < 512; i++) {
        x[i] = sinf(i * 0.37f) * 3.0f;
        w[i] = 2.0f;
    }
    dsv4_ref_rmsnorm(x, NULL, 512, 1e-6f, y);
    double ss = 0;
    for (int i = 0; i < 512; i++)
        ss += (double)y[i] * y[i];
    CHECKF(fabs(ss / 512 - 1.0) < 1e-4, "rms %g", ss / 512);
    dsv4_ref_rmsnorm(x, w, 512, 1e-6f, w);
    CHECKF(fabsf(w[5] - 2 * y[5]) < 1e-6f, "weighted %g vs %g", w[5], 2 * y[5]);

    /* RoPE: inverse undoes, dot products depend only on the position difference */
    struct dsv4_rope r, ry;
    CHECK_INT(dsv4_rope_init(&r, 64, 10000.0, false, 1, 1, 1, 1), 0);
    CHECK_INT(dsv4_rope_init(&ry, 64, 160000.0, true, 16, 32, 1, 65536), 0);
    CHECK_INT(dsv4_rope_init(&r, 63, 10000.0, false, 1, 1, 1, 1), -1);
    CHECK_INT(dsv4_rope_init(&r, 64, 10000.0, false, 1, 1, 1, 1), 0);
    float a[64], b[64], a2[64];
    for (int i = 0; i < 64; i++) {
        a[i] = cosf(i * 1.1f);
        b[i] = sinf(i * 0.7f + 0.3f);
    }
    memcpy(a2, a, sizeof a);
    dsv4_ref_rope(&ry, a2, 777, false);
    dsv4_ref_rope(&ry, a2, 777, true);
    double err = 0;
    for (int i = 0; i < 64; i++)
        err = fmax(err, fabs(a2[i] - a[i]));
    CHECKF(err < 1e-4, "rope inverse error %g", err);
    float qa[64], kb[64], qa2[64], kb2[64];
    memcpy(qa, a, sizeof a);
    memcpy(kb, b, sizeof b);
    memcpy(qa2, a, sizeof a);
    memcpy(kb2, b, sizeof b);
    dsv4_ref_rope(&r, qa, 10, false);
    dsv4_ref_rope(&r, kb, 3, false);
    dsv4_ref_rope(&r, qa2, 110, false);
    dsv4_ref_rope(&r, kb2, 103, false);
    double d1 = 0, d2 = 0;
    for (int i = 0; i < 64; i++) {
        d1 += qa[i] * kb[i];
        d2 += qa2[i] * kb2[i];
    }
    CHECKF(fabs(d1 - d2) < 1e-3, "relative position: %g vs %g", d1, d2);
    /* YaRN for theta 160000: pairs up to lo = 15 keep omega, from hi = 25 on omega/16 */
    for (int i = 0; i < 32; i++) {
        double om = pow(160000.0, -2.0 * i / 64);
        double want = i <= 15 ? om : i >= 25 ? om / 16 : -1;
        if (want > 0)
            CHECKF(fabs(ry.freq[i] / want - 1) < 1e-5, "yarn pair %d: %g vs %g", i, ry.freq[i],
                   want);
        else
            CHECKF(ry.freq[i] > om / 16 && ry.freq[i] < om, "yarn pair %d in the ramp", i);
    }

    /* Sinkhorn: columns sum to ~1 after the last step, rows close to 1 */
    float c[16];
    for (int i = 0; i < 16; i++)
        c[i] = sinf(i * 1.3f) * 2;
    dsv4_ref_sinkhorn(c, 4, 1e-6f, 20);
    for (int k = 0; k < 4; k++) {
        double cs = 0, rs = 0;
        for (int j = 0; j < 4; j++) {
            cs += c[j * 4 + k];
            rs += c[k * 4 + j];
        }
        CHECKF(fabs(cs - 1) < 1e-4 && fabs(rs - 1) < 1e-2, "sinkhorn col %g row %g", cs, rs);
    }
    /* hc_post with post = 0 and comb = I copies the streams */
    float X[4 * 8], Xo[4 * 8], A[8], post[4] = {0}, comb[16] = {0};
    for (int i = 0; i < 32; i++)
        X[i] = (float)i;
    for (int i = 0; i < 8; i++)
        A[i] = 100;
    for (int j = 0; j < 4; j++)
        comb[j * 4 + j] = 1;
    dsv4_ref_hc_post(A, X, post, comb, 4, 8, Xo);
    CHECK(memcmp(X, Xo, sizeof X) == 0);
    /* comb[j][k] mixes stream j into output k (sum over the first index) */
    memset(comb, 0, sizeof comb);
    comb[0 * 4 + 1] = 1; /* stream 0 -> output 1 */
    dsv4_ref_hc_post(A, X, post, comb, 4, 8, Xo);
    CHECK(Xo[8 + 3] == X[3] && Xo[3] == 0);

    /* attention: sink = -inf gives plain softmax; a huge sink gives ~0 output */
    /* keys are BF16 (the state's storage): 0x3f80 = 1.0 */
    uint16_t keys[3][4] = {{0x3f80, 0, 0, 0}, {0, 0x3f80, 0, 0}, {0, 0, 0x3f80, 0}};
    const uint16_t *kp[3] = {keys[0], keys[1], keys[2]};
    float q[4] = {1, 2, 3, 0}, o[4], probs[3], sink = -INFINITY;
    dsv4_ref_sparse_attn(q, 1, 4, kp, 3, &sink, 1.0f, false, probs, o);
    double e1 = exp(1), e2 = exp(2), e3 = exp(3), den = e1 + e2 + e3;
    CHECKF(fabs(o[0] - e1 / den) < 1e-6 && fabs(o[2] - e3 / den) < 1e-6, "softmax %g %g", o[0],
           o[2]);
    sink = 50;
    dsv4_ref_sparse_attn(q, 1, 4, kp, 3, &sink, 1.0f, false, probs, o);
    CHECKF(o[2] < 1e-15, "sink mass %g", o[2]);
    sink = 0.5f;
    dsv4_ref_sparse_attn(q, 1, 4, kp, 0, &sink, 1.0f, false, probs, o);
    CHECK(o[0] == 0 && o[3] == 0);

    /* compressor pooling: equal gates average, a dominant gate selects */
    float kv1[2] = {1, 10}, kv2[2] = {3, 20}, g1[2] = {0, 100}, g2[2] = {0, 0}, out[2];
    const float *kvs[2] = {kv1, kv2}, *gs[2] = {g1, g2};
    dsv4_ref_compress_pool(kvs, gs, 2, 2, out);
    CHECKF(fabsf(out[0] - 2) < 1e-6f && fabsf(out[1] - 10) < 1e-4f, "pool %g %g", out[0], out[1]);

    /* Hadamard: orthonormal (norm kept) and an involution */
    float h[128], h0[128];
    for (int i = 0; i < 128; i++)
        h[i] = h0[i] = cosf(i * 0.77f);
    dsv4_ref_hadamard(h, 128);
    double n0 = 0, n1 = 0;
    for (int i = 0; i < 128; i++) {
        n0 += (double)h0[i] * h0[i];
        n1 += (double)h[i] * h[i];
    }
    CHECKF(fabs(n0 - n1) < 1e-3, "hadamard norm %g vs %g", n1, n0);
    dsv4_ref_hadamard(h, 128);
    err = 0;
    for (int i = 0; i < 128; i++)
        err = fmax(err, fabs(h[i] - h0[i]));
    CHECKF(err < 1e-5, "hadamard involution %g", err);
    float e[4] = {1, 1, 1, 1};
    dsv4_ref_hadamard(e, 4);
    CHECK(fabsf(e[0] - 2) < 1e-6f && fabsf(e[1]) < 1e-6f);

    /* top-k: descending, ties to the lower index */
    float v[6] = {1, 5, 3, 5, -1, 4};
    int idx[3];
    dsv4_ref_topk(v, 6, 3, idx);
    CHECK(idx[0] == 1 && idx[1] == 3 && idx[2] == 5);

    /* routing */
    float lg[8] = {0.1f, 2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f, -2.0f}, bias[8] = {0};
    float scratch[8], wt[2];
    int ids[2];
    bias[7] = 100; /* selects expert 7 despite its low score */
    dsv4_ref_route(lg, 8, DSV4_SCORE_SQRTSOFTPLUS, bias, NULL, 2, true, 2.5f, scratch, ids, wt);
    CHECK(ids[0] == 7 && ids[1] == 4);
    double s7 = sqrt(log1p(exp(-2.0))), s4 = sqrt(log1p(exp(3.0)));
    CHECKF(fabs(wt[0] - 2.5 * s7 / (s7 + s4)) < 1e-5, "weight %g", wt[0]);
    CHECKF(fabs(wt[0] + wt[1] - 2.5) < 1e-5, "weights sum %g", wt[0] + wt[1]);
    int32_t hash[2] = {2, 6};
    dsv4_ref_route(lg, 8, DSV4_SCORE_SQRTSOFTPLUS, NULL, hash, 2, true, 1.0f, scratch, ids, wt);
    CHECK(ids[0] == 2 && ids[1] == 6);

    /* SwiGLU clamp: gate upper only, up both sides */
    float g[3] = {20, -20, 1}, u[3] = {30, -30, 2}, hh[3];
    dsv4_ref_swiglu(g, u, 3, 10, 0.5f, hh);
    CHECKF(fabsf(hh[0] - 10 / (1 + expf(-10)) * 10 * 0.5f) < 1e-4f, "clamp %g", hh[0]);
    CHECKF(fabsf(hh[1] - (-20 / (1 + expf(20))) * -10 * 0.5f) < 1e-9f, "neg gate %g", hh[1]);

    /* fast CPU attention == oracle: 2 heads of 512 over 300 keys */
    {
        static uint16_t kbuf[300][512];
        static float qv[2 * 512], o1[2 * 512], o2[2 * 512], pr[300];
        const uint16_t *kk[300];
        float sk[2] = {0.3f, -1.0f};
        uint32_t st = 1;
        for (int s = 0; s < 300; s++) {
            for (int i = 0; i < 512; i++) {
                st = st * 1664525u + 1013904223u;
                kbuf[s][i] = dsv4_f32_to_bf16(((int)(st >> 9) - (1 << 22)) / (float)(1 << 22));
            }
            kk[s] = kbuf[s];
        }
        for (int i = 0; i < 1024; i++)
            qv[i] = dsv4_bf16_to_f32(kbuf[i % 300][(i * 7) % 512]) * 3;
        dsv4_ref_sparse_attn(qv, 2, 512, kk, 300, sk, 1.0f / sqrtf(512), true, pr, o1);
        dsv4_cpu_sparse_attn(qv, 2, 512, kk, 300, sk, 1.0f / sqrtf(512), true, pr, o2);
        int same = 0;
        double md = 0;
        for (int i = 0; i < 1024; i++) {
            same += o1[i] == o2[i];
            md = fmax(md, fabs(o1[i] - o2[i]));
        }
        CHECKF(same >= 1014 && md < 1e-6, "cpu attention (%s): %d of 1024 equal, max diff %g",
               dsv4_cpu_ops_isa(), same, md);
    }

    /*
     * fast CPU attention: a head's output does not depend on the heads it runs with (the
     * kernel groups heads to share keys), over few keys, more keys than a group keeps on
     * its stack (one head at a time), and a head size with a tail past the last multiple
     * of 8; the P.V sums are the oracle's, so outputs stay within an ulp or two of it
     */
    {
        enum { NH = 7, DH = 200, NK = 1100 };
        static uint16_t kbuf[NK][DH];
        static float qv[NH * DH], og[NH * DH], o1[DH], orf[NH * DH], pr[NK], sk[NH];
        const uint16_t *kk[NK];
        uint32_t st = 11;
        for (int s = 0; s < NK; s++) {
            for (int i = 0; i < DH; i++) {
                st = st * 1664525u + 1013904223u;
                kbuf[s][i] = dsv4_f32_to_bf16(((int)(st >> 9) - (1 << 22)) / (float)(1 << 22));
            }
            kk[s] = kbuf[(s * 7) % NK];
        }
        for (int i = 0; i < NH * DH; i++) {
            st = st * 1664525u + 1013904223u;
            qv[i] = ((int)(st >> 9) - (1 << 22)) / (float)(1 << 21);
        }
        for (int h = 0; h < NH; h++)
            sk[h] = 0.5f * h - 1.0f;
        const int ns[3] = {1, 37, NK};
        for (int c = 0; c < 3; c++) {
            int n = ns[c], split = 0, same = 0;
            double md = 0;
            dsv4_cpu_sparse_attn(qv, NH, DH, kk, n, sk, 0.07f, true, pr, og);
            dsv4_ref_sparse_attn(qv, NH, DH, kk, n, sk, 0.07f, true, pr, orf);
            for (int h = 0; h < NH; h++) {
                dsv4_cpu_sparse_attn(qv + h * DH, 1, DH, kk, n, sk + h, 0.07f, true, pr, o1);
                split += memcmp(o1, og + h * DH, sizeof o1) != 0;
            }
            for (int i = 0; i < NH * DH; i++) {
                same += og[i] == orf[i];
                md = fmax(md, fabs(og[i] - orf[i]) / fmax(1e-30, fabs(orf[i])));
            }
            CHECKF(split == 0, "cpu attention over %d keys: %d of %d heads differ alone", n, split,
                   NH);
            CHECKF(same >= NH * DH * 99 / 100 && md < 1e-6,
                   "cpu attention over %d keys: %d of %d equal to the oracle, max rel diff %g", n,
                   same, NH * DH, md);
        }
    }

    /* fast top-k == the oracle's insertion: random values with many ties, k = 1..n */
    {
        static float v[700];
        static int i1[700], i2[700];
        uint32_t st = 7;
        int bad = 0;
        for (int rep = 0; rep < 40; rep++) {
            int n = 1 + rep * 17 % 700, k = 1 + (rep * 131) % n;
            for (int i = 0; i < n; i++) {
                st = st * 1664525u + 1013904223u;
                v[i] = (float)((st >> 20) % (rep % 3 ? 50 : 5)); /* few distinct values: ties */
            }
            dsv4_ref_topk(v, n, k, i1);
            dsv4_cpu_topk(v, n, k, i2);
            bad += memcmp(i1, i2, sizeof(int) * k) != 0;
        }
        CHECKF(bad == 0, "cpu top-k differs from the oracle in %d of 40 cases", bad);
    }

    /* fast indexer scores == oracle: 8 and 7 heads of 128 over 257 BF16 keys (key blocks of
     * 64, head groups of 4), FP4-like queries */
    {
        static uint16_t kb[257][128];
        static float qv[8 * 128], w[8], s1[257], s2[257];
        const uint16_t *kk[257];
        uint32_t st = 3;
        for (int b = 0; b < 257; b++) {
            for (int i = 0; i < 128; i++) {
                st = st * 1664525u + 1013904223u;
                kb[b][i] = dsv4_f32_to_bf16(((int)(st >> 9) - (1 << 22)) / (float)(1 << 20));
            }
            kk[b] = kb[b];
        }
        static const float e2m1[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
        for (int i = 0; i < 8 * 128; i++) {
            st = st * 1664525u + 1013904223u;
            qv[i] = e2m1[(st >> 13) & 7] * ((st >> 17) & 1 ? -0.25f : 0.125f);
        }
        for (int h = 0; h < 8; h++)
            w[h] = 0.1f * (h + 1) - 0.3f;
        for (int nh = 8; nh >= 5; nh -= 3) { /* 7: four heads together, then three alone */
            dsv4_ref_indexer_scores(qv, w, nh, 128, kk, 257, s1);
            dsv4_cpu_indexer_scores(qv, w, nh, 128, kk, 257, s2);
            int same = 0;
            double md = 0;
            for (int b = 0; b < 257; b++) {
                same += s1[b] == s2[b];
                md = fmax(md, fabs(s1[b] - s2[b]) / fmax(1e-30, fabs(s1[b])));
            }
            CHECKF(same >= 250 && md < 1e-6,
                   "cpu indexer scores (%d heads): %d of 257 equal, max rel diff %g", nh, same, md);
        }
    }

    /* BF16 rounding: RNE */
    float bf[3] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -0.0f};
    dsv4_ref_round_bf16(bf, 3);
    CHECK(bf[0] == 1.0f && bf[1] == 1.0f + 4.0f / 256 && bf[2] == 0.0f);
    TEST_DONE();
}
