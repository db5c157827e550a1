/*
 * test_cuda_math.c - the per-element math the CUDA kernels run
 * (kernels/cuda/math.cuh, opmath.cuh, gemm.cuh, kv.cuh), compiled here for
 * the host and compared with the oracle in kernels/ref: format decoders and
 * encoders (exhaustive where the domain is small), the activation
 * quantisers per group, RMS scale, rotary pair, SwiGLU, Sinkhorn and the
 * mHC coefficients, routing, the top-k order and the radix-select step,
 * Hadamard, compressor pooling, the GEMM's two summation schedules (GEMV
 * chunks and tiled sub-chunks), and the state addresses.
 *
 * Runs in every build, no GPU needed: this is what can be verified of the
 * CUDA backend's numerics on a machine without one.  Exact equality is
 * required wherever both sides do the same IEEE operations; functions with
 * exp/log1p/cos/sin are evaluated in double on the CUDA side (math.cuh) and
 * allowed 2 ulp against glibc's float versions (almost all agree exactly;
 * the counts are printed).
 */
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/kv.cuh"
#include "kernels/cuda/opmath.cuh"

#include "base/dsv4.h"
#include "kernels/formats.h"
#include "kernels/linear.h"
#include "kernels/ref/backend.h"
#include "kernels/ref/ops.h"
#include "tests/kernels/lintest.h"
#include "tests/test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Same bits, or both NaN. */
static int same(float a, float b)
{
    return bits(a) == bits(b) || (a != a && b != b);
}

/* Within n ulp (same sign), or both NaN. */
static int near_ulp(float a, float b, int n)
{
    if (same(a, b))
        return 1;
    if (a != a || b != b || (a < 0) != (b < 0))
        return a == b;
    int64_t d = (int64_t)bits(a) - (int64_t)bits(b);
    return d <= n && d >= -n;
}

/* A float of every kind: normal over a wide range, subnormal, zero, inf, NaN, grid points. */
static float any_float(void)
{
    uint32_t r = lt_u32() % 16;
    if (r == 0)
        return ldexpf((float)(lt_u32() % 64), -(int)(lt_u32() % 140)); /* tiny / subnormal */
    if (r == 1)
        return (lt_u32() & 1) ? 0.0f : -0.0f;
    if (r == 2)
        return (lt_u32() & 1) ? INFINITY : NAN;
    if (r == 3) /* exact E4M3 / E2M1 grid points and midpoints */
        return ldexpf((float)(lt_u32() % 64) * 0.5f, (int)(lt_u32() % 24) - 12) *
               ((lt_u32() & 1) ? 1 : -1);
    return lt_val(-20, 12);
}

static void test_enums(void)
{
    CHECK(DSV4_CU_RNE == DSV4_ROUND_NEAREST_EVEN);
    CHECK(DSV4_CU_TIES_LOWER == DSV4_ROUND_TIES_LOWER);
    CHECK(DSV4_CU_SQRTSOFTPLUS == DSV4_SCORE_SQRTSOFTPLUS);
    CHECK(DSV4_CU_SIGMOID == DSV4_SCORE_SIGMOID);
    CHECK(DSV4_CU_SOFTMAX == DSV4_SCORE_SOFTMAX);
}

static void test_formats(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++)
        bad += !same(dsv4_cu_bf16_to_f32((uint16_t)h), dsv4_bf16_to_f32((uint16_t)h));
    for (int b = 0; b < 256; b++) {
        bad += !same(dsv4_cu_e4m3_to_f32((uint8_t)b), dsv4_e4m3_to_f32((uint8_t)b));
        bad += !same(dsv4_cu_e8m0_to_f32((uint8_t)b), dsv4_e8m0_to_f32((uint8_t)b));
    }
    for (int b = 0; b < 16; b++)
        bad += !same(dsv4_cu_e2m1_to_f32((uint8_t)b), dsv4_e2m1_to_f32((uint8_t)b));
    CHECKF(bad == 0, "%d decode mismatches", bad);
    bad = 0;
    for (int i = 0; i < 400000; i++) {
        float f = any_float();
        bad += dsv4_cu_f32_to_bf16(f) != dsv4_f32_to_bf16(f);
        for (int mode = 0; mode < 2; mode++) {
            bad += dsv4_cu_f32_to_e4m3(f, mode, true) != dsv4_f32_to_e4m3(f, mode, true);
            bad += dsv4_cu_f32_to_e4m3(f, mode, false) != dsv4_f32_to_e4m3(f, mode, false);
            bad += dsv4_cu_f32_to_e2m1(f, mode) != dsv4_f32_to_e2m1(f, mode);
        }
        float a = fabsf(f);
        if (a > 0 && a < 1e30f)
            bad += !same(dsv4_cu_pow2_scale(a, 448.0f), dsv4_pow2_scale(a, 448.0f)) +
                   !same(dsv4_cu_pow2_scale(a, 6.0f), dsv4_pow2_scale(a, 6.0f));
    }
    CHECKF(bad == 0, "%d encode mismatches", bad);
}

/* Random activation groups, sometimes with a NaN or all zeros. */
static void make_group(float *x, int n)
{
    int e = (int)(lt_u32() % 30) - 20, kind = (int)(lt_u32() % 20);
    for (int i = 0; i < n; i++)
        x[i] = kind == 0 ? 0.0f : lt_val(e - 3, e + 3);
    if (kind == 1)
        x[lt_u32() % (unsigned)n] = NAN;
    if (kind == 2)
        x[lt_u32() % (unsigned)n] = INFINITY;
}

static void test_quant(void)
{
    float x[128], a[128], b[128], sr;
    uint8_t q[128], qr[128], pk[64], sf;
    int bad = 0;
    for (int it = 0; it < 20000; it++) {
        int n = 1 + (int)(lt_u32() % 128);
        make_group(x, n);
        float s = dsv4_cu_quant_fp8_group(x, n, q);
        dsv4_act_quant_fp8(x, n, 128, qr, &sr);
        bad += !same(s, sr) || memcmp(q, qr, (size_t)n) != 0;
        memcpy(a, x, sizeof(float) * n);
        memcpy(b, x, sizeof(float) * n);
        dsv4_cu_sim_fp8_group(a, n);
        dsv4_act_sim_fp8(b, n, 128);
        for (int i = 0; i < n; i++)
            bad += !same(a[i], b[i]);
        int n4 = 1 + n % 32;
        memcpy(a, x, sizeof(float) * n4);
        memcpy(b, x, sizeof(float) * n4);
        dsv4_cu_sim_fp4_group(a, n4);
        dsv4_act_sim_fp4(b, n4, 32);
        for (int i = 0; i < n4; i++)
            bad += !same(a[i], b[i]);
        int n16 = 1 + n % 16;
        float is = (lt_u32() & 1) ? 1.0f : 0.37f;
        uint8_t c = dsv4_cu_quant_nvfp4_group(x, n16, is, q);
        memset(pk, 0, sizeof pk);
        dsv4_act_quant_nvfp4(x, n16, is, pk, &sf);
        bad += c != sf;
        for (int i = 0; i < n16; i++)
            bad += q[i] != ((pk[i / 2] >> (4 * (i & 1))) & 15);
    }
    CHECKF(bad == 0, "%d quantiser mismatches", bad);
}

/* Small elementwise pieces: RMS scale, rope pair, SwiGLU, Hadamard, pooling. */
static void test_elementwise(void)
{
    enum { N = 512 };
    static float x[N], y[N], z[N];
    int bad = 0, inexact = 0, total = 0;
    for (int it = 0; it < 200; it++) {
        int n = 1 + (int)(lt_u32() % N);
        for (int i = 0; i < n; i++)
            x[i] = lt_val(-6, 3);
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        float rho = dsv4_cu_rms_scale(ss, n, 1e-6f);
        dsv4_ref_rmsnorm(x, NULL, n, 1e-6f, y);
        for (int i = 0; i < n; i++)
            bad += !same(dsv4_cu_mul(x[i], rho), y[i]);
    }
    CHECKF(bad == 0, "%d rmsnorm mismatches", bad);
    struct dsv4_rope r;
    CHECK(dsv4_rope_init(&r, 64, 160000.0, true, 16, 32, 1, 65536) == 0);
    bad = 0;
    for (int it = 0; it < 2000; it++) {
        for (int i = 0; i < 64; i++)
            x[i] = y[i] = lt_val(-4, 2);
        int64_t pos = (int64_t)(lt_u32() % 1000000);
        bool inv = lt_u32() & 1;
        dsv4_ref_rope(&r, y, pos, inv);
        for (int i = 0; i < 32; i++)
            dsv4_cu_rope_pair(&x[2 * i], &x[2 * i + 1], pos, r.freq[i], inv);
        for (int i = 0; i < 64; i++, total++) {
            bad += !near_ulp(x[i], y[i], 4);
            inexact += !same(x[i], y[i]);
        }
    }
    CHECKF(bad == 0, "%d rope mismatches", bad);
    fprintf(stderr, "rope: %d of %d values not bit-identical (double cos/sin vs libm)\n", inexact,
            total);
    bad = inexact = 0;
    for (int i = 0; i < 100000; i++) {
        float g = lt_val(-3, 5), u = lt_val(-3, 5), w = lt_val(-2, 1), h;
        float lim = (i & 1) ? 10.0f : 0.0f;
        dsv4_ref_swiglu(&g, &u, 1, lim, w, &h);
        float c = dsv4_cu_swiglu(g, u, lim, w);
        bad += !near_ulp(c, h, 4); /* glibc expf misrounds near-halfway cases */
        inexact += !same(c, h);
    }
    CHECKF(bad == 0, "%d swiglu mismatches", bad);
    fprintf(stderr, "swiglu: %d of 100000 not bit-identical\n", inexact);
    bad = 0;
    for (int n = 1; n <= 512; n *= 2) {
        for (int i = 0; i < n; i++)
            x[i] = y[i] = lt_val(-4, 2);
        dsv4_cu_hadamard(x, n);
        dsv4_ref_hadamard(y, n);
        for (int i = 0; i < n; i++)
            bad += !same(x[i], y[i]);
    }
    CHECKF(bad == 0, "%d hadamard mismatches", bad);
    /* pooling: up to 256 candidates of 8 channels */
    static float kv[256][8], gt[256][8];
    const float *kp[256], *gp[256];
    bad = inexact = 0;
    for (int it = 0; it < 2000; it++) {
        int n = (int)(lt_u32() % 257);
        for (int s = 0; s < n; s++) {
            for (int c = 0; c < 8; c++) {
                kv[s][c] = lt_val(-3, 3);
                gt[s][c] = (lt_u32() % 50 == 0) ? -INFINITY : lt_val(-2, 4);
            }
            kp[s] = kv[s];
            gp[s] = gt[s];
        }
        if (n > 0)
            for (int c = 0; c < 8; c++)
                gt[0][c] = lt_val(-2, 4); /* at least one finite gate per channel */
        dsv4_ref_compress_pool(kp, gp, n, 8, z);
        for (int c = 0; c < 8; c++) {
            float v = dsv4_cu_pool_channel(kp, gp, n, c);
            bad += !near_ulp(v, z[c], 2);
            inexact += !same(v, z[c]);
        }
    }
    CHECKF(bad == 0, "%d pooling mismatches", bad);
    fprintf(stderr, "pooling: %d of 16000 not bit-identical\n", inexact);
}

static void test_hc(void)
{
    enum { HC = 4, D = 96 };
    float X[HC * D], fn[(2 + HC) * HC * HC * D], base[(2 + HC) * HC], scale[3];
    float y[D], post[HC], comb[HC * HC], m[(2 + HC) * HC];
    float pre2[HC], post2[HC], comb2[HC * HC];
    int bad = 0, inexact = 0, total = 0;
    for (int it = 0; it < 500; it++) {
        int nmix = (2 + HC) * HC;
        for (int i = 0; i < HC * D; i++)
            X[i] = dsv4_bf16_round(lt_val(-3, 2));
        for (int i = 0; i < nmix * HC * D; i++)
            fn[i] = lt_val(-8, -4);
        for (int i = 0; i < nmix; i++)
            base[i] = lt_val(-5, -2);
        for (int i = 0; i < 3; i++)
            scale[i] = 0.5f + lt_val(-6, -5);
        for (int o = 0; o < nmix; o++) {
            double acc = 0;
            for (int i = 0; i < HC * D; i++)
                acc += (double)fn[o * HC * D + i] * X[i];
            m[o] = (float)acc;
        }
        double ss = 0;
        for (int i = 0; i < HC * D; i++)
            ss += (double)X[i] * X[i];
        float rho = dsv4_cu_rms_scale(ss, HC * D, 1e-6f);
        dsv4_ref_hc_pre(X, HC, D, fn, scale, base, m, 1e-6f, 1e-6f, 20, y, post, comb);
        dsv4_cu_hc_pre_coeffs(m, rho, scale, base, HC, 1e-6f, 20, pre2, post2, comb2);
        for (int j = 0; j < HC; j++, total++) {
            bad += !near_ulp(post2[j], post[j], 2);
            inexact += !same(post2[j], post[j]);
        }
        for (int i = 0; i < HC * HC; i++, total++) {
            bad += !(fabsf(comb2[i] - comb[i]) <= 2e-6f * fabsf(comb[i]) + 1e-9f);
            inexact += !same(comb2[i], comb[i]);
        }
        for (int d = 0; d < D; d++) {
            double acc = 0;
            for (int j = 0; j < HC; j++)
                acc += (double)pre2[j] * X[j * D + d];
            bad += !near_ulp((float)acc, y[d], 4);
        }
    }
    CHECKF(bad == 0, "%d hc_pre mismatches", bad);
    fprintf(stderr, "hc_pre: %d of %d coefficients not bit-identical\n", inexact, total);
}

static void test_route(void)
{
    enum { E = 64, K = 6, T = 200 };
    static float logits[T * E], bias[E], wts[T * K], wts2[K], scratch[E], s2[E];
    static int32_t ids[T * K], ids2[K], tid[T], hash[1000 * K];
    for (int i = 0; i < 1000 * K; i++)
        hash[i] = (int32_t)(lt_u32() % E);
    int bad = 0, inexact = 0;
    for (int func = 0; func < 3; func++) {
        for (int use = 0; use < 3; use++) {
            for (int i = 0; i < T * E; i++)
                logits[i] = (lt_u32() % 8 == 0) ? 0.5f : lt_val(-3, 2); /* some ties */
            for (int i = 0; i < E; i++)
                bias[i] = lt_val(-8, -5);
            for (int t = 0; t < T; t++)
                tid[t] = (int32_t)(lt_u32() % 1000);
            struct dsv4_route_args a = {.T = T,
                                        .E = E,
                                        .k = K,
                                        .logits = logits,
                                        .func = (enum dsv4_score_func)func,
                                        .bias = use == 1 ? bias : NULL,
                                        .tid2eid = use == 2 ? hash : NULL,
                                        .tokens = tid,
                                        .renorm = func != 2,
                                        .scale = 2.5f,
                                        .ids = ids,
                                        .wts = wts};
            for (int t = 0; t < T; t++)
                dsv4_ref_route_token(&a, t, scratch);
            for (int t = 0; t < T; t++) {
                dsv4_cu_route_token(logits + t * E, E, func, a.bias,
                                    use == 2 ? hash + (int64_t)tid[t] * K : NULL, K, a.renorm,
                                    a.scale, s2, ids2, wts2);
                for (int i = 0; i < K; i++) {
                    bad += ids2[i] != ids[t * K + i] || !near_ulp(wts2[i], wts[t * K + i], 2);
                    inexact += !same(wts2[i], wts[t * K + i]);
                }
            }
        }
    }
    CHECKF(bad == 0, "%d routing mismatches", bad);
    fprintf(stderr, "route: %d weights not bit-identical\n", inexact);
}

/* Top-k order by sorting keys, and the radix select of the k-th key, vs dsv4_ref_topk. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_topk(void)
{
    enum { N = 3000 };
    static float v[N];
    static int idx[N];
    static uint64_t keys[N];
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        int n = 1 + (int)(lt_u32() % N), k = 1 + (int)(lt_u32() % (unsigned)n);
        int coarse = it % 3; /* coarse values: many ties; zeros of both signs */
        for (int i = 0; i < n; i++)
            v[i] = coarse == 0   ? (float)(int)(lt_u32() % 7) - 3.0f
                   : coarse == 1 ? ((lt_u32() & 1) ? 0.0f : -0.0f)
                                 : lt_val(-10, 10) * ((lt_u32() & 1) ? 1 : -1);
        dsv4_ref_topk(v, n, k, idx);
        for (int i = 0; i < n; i++)
            keys[i] = dsv4_cu_topk_key(v[i], (uint32_t)i);
        qsort(keys, (size_t)n, sizeof *keys, cmp_u64);
        for (int i = 0; i < k; i++)
            bad += (int)(keys[i] & 0xffffffffu) != idx[i];
        /* radix select: 4 passes of 8 bits from the top, as the kernel runs them */
        uint32_t krem = (uint32_t)k, prefix = 0, mask = 0;
        for (int shift = 24; shift >= 0; shift -= 8) {
            uint32_t hist[256] = {0};
            for (int i = 0; i < n; i++) {
                uint32_t key = dsv4_cu_order_key(v[i]);
                if ((key & mask) == prefix)
                    hist[(key >> shift) & 255]++;
            }
            uint32_t d = (uint32_t)dsv4_cu_radix_pick(hist, &krem);
            prefix |= d << shift;
            mask |= 255u << shift;
        }
        /* prefix is the k-th key; krem the number of equal keys to take (lowest indices) */
        uint32_t kth = dsv4_cu_order_key(v[idx[k - 1]]);
        int greater = 0, equal_taken = 0;
        for (int i = 0; i < k; i++) {
            uint32_t key = dsv4_cu_order_key(v[idx[i]]);
            greater += key > kth;
            equal_taken += key == kth;
        }
        bad += prefix != kth || (int)krem != equal_taken || greater + (int)krem != k;
    }
    CHECKF(bad == 0, "%d top-k mismatches", bad);
}

/*
 * The two GEMM schedules on the host with the shared pieces: GEMV (one chunk sum per
 * chunk, flushed in order) and tiled (16-wide sub-chunks of 32-wide stages, zero-padded
 * past K, flushed where dsv4_cu_chunk_ends says) must give the same bits, and those of
 * dsv4_ref_linear on the quantised activation paths.
 */
struct aop {
    int act;
    const float *x;   /* F32 path */
    const uint8_t *q; /* codes [K] */
    const float *qs;  /* scales [ceil(K/16)] */
};

static float a_at(const struct aop *a, int64_t k)
{
    return a->act == DSV4_ACT_F32 ? a->x[k] : dsv4_cu_aval(a->act, a->q[k]);
}

static float a_scale(const struct aop *a, int64_t k)
{
    if (a->act == DSV4_ACT_F32)
        return 1.0f;
    return a->qs[k / dsv4_cu_agroup(a->act)];
}

static float gemv_out(const struct aop *a, const struct dsv4_cu_w *w, int64_t o, int kb)
{
    int64_t K = w->cols;
    float acc = 0.0f;
    for (int64_t c0 = 0; c0 < K; c0 += kb) {
        float p = 0.0f;
        for (int64_t k = c0; k < K && k < c0 + kb; k++)
            p = fmaf(a_at(a, k), dsv4_cu_bval(w, a->act, o, k), p);
        float s =
                dsv4_cu_chunk_scale(a->act, a_scale(a, c0), dsv4_cu_wchunk_scale(w, a->act, o, c0));
        acc = dsv4_cu_flush(acc, p, s);
    }
    float post = dsv4_cu_post(w, a->act);
    return post == 1.0f ? acc : dsv4_cu_mul(acc, post);
}

static float tiled_out(const struct aop *a, const struct dsv4_cu_w *w, int64_t o, int kb)
{
    int64_t K = w->cols;
    float acc = 0.0f, p = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += 32) {
        for (int64_t j0 = k0; j0 < k0 + 32; j0 += 16) {
            if (j0 >= K)
                break;
            for (int64_t k = j0; k < j0 + 16; k++) {
                float av = k < K ? a_at(a, k) : 0.0f,
                      bv = k < K ? dsv4_cu_bval(w, a->act, o, k) : 0.0f;
                p = fmaf(av, bv, p);
            }
            if (dsv4_cu_chunk_ends(j0 + 16, K, kb)) {
                int64_t c0 = (j0 / kb) * kb;
                float s = dsv4_cu_chunk_scale(a->act, a_scale(a, c0),
                                              dsv4_cu_wchunk_scale(w, a->act, o, c0));
                acc = dsv4_cu_flush(acc, p, s);
                p = 0.0f;
            }
        }
    }
    float post = dsv4_cu_post(w, a->act);
    return post == 1.0f ? acc : dsv4_cu_mul(acc, post);
}

static void test_gemm_order(void)
{
    static const int64_t shapes[][2] = {{3, 128}, {5, 256}, {7, 384}, {4, 96}, {3, 1000}, {2, 33}};
    static const struct {
        enum dsv4_wfmt fmt;
        enum dsv4_act act;
    } paths[] = {{DSV4_WFMT_FP8, DSV4_ACT_FP8},   {DSV4_WFMT_MXFP4, DSV4_ACT_FP8},
                 {DSV4_WFMT_NVFP4, DSV4_ACT_FP8}, {DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4},
                 {DSV4_WFMT_BF16, DSV4_ACT_F32},  {DSV4_WFMT_F32, DSV4_ACT_F32},
                 {DSV4_WFMT_FP8, DSV4_ACT_F32},   {DSV4_WFMT_MXFP4, DSV4_ACT_F32},
                 {DSV4_WFMT_NVFP4, DSV4_ACT_F32}};
    int bad_sched = 0, bad_ref = 0, near_ref = 0;
    for (size_t pi = 0; pi < DSV4_ARRAY_LEN(paths); pi++)
        for (size_t si = 0; si < DSV4_ARRAY_LEN(shapes); si++) {
            int64_t R = shapes[si][0], K = shapes[si][1];
            if (paths[pi].fmt >= DSV4_WFMT_MXFP4 && K % 2)
                continue;
            struct lt_weight lw;
            lt_weight_make(&lw, paths[pi].fmt, R, K);
            float *x = malloc(sizeof(float) * (size_t)K), *yr = malloc(sizeof(float) * (size_t)R);
            uint8_t *q = malloc((size_t)K + 16);
            float *qs = malloc(sizeof(float) * (size_t)(K / 16 + 2));
            lt_act_make(x, 1, K);
            struct aop a = {.act = paths[pi].act, .x = x, .q = q, .qs = qs};
            int g = dsv4_cu_agroup(a.act);
            for (int64_t g0 = 0, j = 0; g0 < K && a.act != DSV4_ACT_F32; g0 += g, j++) {
                int n = (int)DSV4_MIN((int64_t)g, K - g0);
                if (a.act == DSV4_ACT_FP8)
                    qs[j] = dsv4_cu_quant_fp8_group(x + g0, n, q + g0);
                else
                    qs[j] = dsv4_cu_e4m3_to_f32(
                            dsv4_cu_quant_nvfp4_group(x + g0, n, lw.q.input_scale, q + g0));
            }
            struct dsv4_cu_w w = dsv4_cu_w_of(&lw.q);
            int kb = dsv4_cu_kb(paths[pi].fmt, paths[pi].act);
            dsv4_ref_linear(&lw.q, paths[pi].act, x, 1, yr);
            for (int64_t o = 0; o < R; o++) {
                float y1 = gemv_out(&a, &w, o, kb), y2 = tiled_out(&a, &w, o, kb);
                bad_sched += !same(y1, y2);
                if (paths[pi].act == DSV4_ACT_F32) {
                    /* other order of the FP32 sums: compare loosely */
                    bad_ref += !(fabsf(y1 - yr[o]) <= 1e-4f * (fabsf(yr[o]) + 1e-3f));
                    near_ref += !same(y1, yr[o]);
                } else {
                    bad_ref += !same(y1, yr[o]);
                }
            }
            free(x);
            free(yr);
            free(q);
            free(qs);
            lt_weight_free(&lw);
        }
    CHECKF(bad_sched == 0, "%d outputs differ between the GEMV and tiled schedules", bad_sched);
    CHECKF(bad_ref == 0, "%d outputs differ from dsv4_ref_linear", bad_ref);
    fprintf(stderr, "gemm: F32 path %d outputs not bit-identical to the oracle (sum order)\n",
            near_ref);
}

/* State addresses: kv.cuh vs backend.h's helpers on a random layout. */
static void test_kv(void)
{
    struct dsv4_kv_layer layers[3] = {{.ratio = 4,
                                       .coff = 2,
                                       .cmp_rows = 10,
                                       .win_off = 0,
                                       .cmp_off = 4096,
                                       .icmp_off = 12288,
                                       .ent_off = 0,
                                       .ikey_off = 2048},
                                      {.ratio = 128,
                                       .coff = 1,
                                       .cmp_rows = 130,
                                       .win_off = 20480,
                                       .cmp_off = 24576,
                                       .icmp_off = -1,
                                       .ent_off = 4096,
                                       .ikey_off = -1},
                                      {.ratio = 0,
                                       .coff = 1,
                                       .cmp_rows = 0,
                                       .win_off = 28672,
                                       .cmp_off = -1,
                                       .icmp_off = -1,
                                       .ent_off = -1,
                                       .ikey_off = -1}};
    enum { SLOTS = 3, MAXB = 5, NB = 16 };
    int32_t table[SLOTS * MAXB];
    for (int i = 0; i < SLOTS * MAXB; i++)
        table[i] = (int32_t)(lt_u32() % NB);
    struct dsv4_kv_view v = {.slot_bytes = 40960,
                             .block_bytes = 8192,
                             .block_tokens = 256,
                             .win_rows = 130,
                             .window = 128,
                             .dh = 16,
                             .rd = 8,
                             .idim = 8,
                             .block_table = table,
                             .max_blocks = MAXB,
                             .n_layers = 3,
                             .layers = layers};
    uint8_t *arena = malloc((size_t)(SLOTS * v.slot_bytes + NB * v.block_bytes));
    v.slots = arena;
    v.blocks = arena + SLOTS * v.slot_bytes;
    int bad = 0;
    for (int l = 0; l < 3; l++) {
        struct dsv4_cu_kv k = dsv4_cu_kv_of(&v, l);
        for (int it = 0; it < 2000; it++) {
            int s = (int)(lt_u32() % SLOTS);
            int64_t pos = (int64_t)(lt_u32() % (MAXB * 256));
            bad += dsv4_cu_kv_win(&k, s, pos) != dsv4_kv_win(&v, s, l, pos);
            if (layers[l].ratio > 0) {
                int64_t b = pos / layers[l].ratio;
                bad += dsv4_cu_kv_cmp(&k, s, pos) != dsv4_kv_cmp(&v, s, l, pos);
                bad += dsv4_cu_kv_entry(&k, s, b) != dsv4_kv_entry(&v, s, l, b);
            }
            if (layers[l].ratio == 4) {
                bad += dsv4_cu_kv_icmp(&k, s, pos) != dsv4_kv_icmp(&v, s, l, pos);
                bad += dsv4_cu_kv_ikey(&k, s, pos / 4) != dsv4_kv_ikey(&v, s, l, pos / 4);
            }
        }
    }
    free(arena);
    /* token metadata: two chunks of 3 and 2 tokens */
    int32_t slot[5] = {0, 0, 0, 1, 1}, row0[5] = {0, 0, 0, 3, 3}, len[5] = {3, 3, 3, 2, 2};
    int64_t pos[5] = {10, 11, 12, 0, 1};
    struct dsv4_toks t = {.T = 5, .slot = slot, .row0 = row0, .len = len, .pos = pos};
    struct dsv4_cu_toks ct = dsv4_cu_toks_of(&t);
    for (int i = 0; i < 5; i++) {
        bad += dsv4_cu_toks_first(&ct, i) != dsv4_toks_first(&t, i);
        bad += dsv4_cu_toks_row(&ct, i, pos[i]) != dsv4_toks_row(&t, i, pos[i]);
    }
    CHECKF(bad == 0, "%d address mismatches", bad);
}

/* lintest.h's model and comparison serve other tests */
static void unused(void)
{
    (void)lt_model;
    (void)lt_compare;
}

int main(void)
{
    unused();
    test_enums();
    test_formats();
    test_quant();
    test_elementwise();
    test_hc();
    test_route();
    test_topk();
    test_gemm_order();
    test_kv();
    TEST_DONE();
}
