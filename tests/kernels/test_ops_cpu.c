/*
 * test_ops_cpu.c - the element-wise CPU ops of kernels/cpu/ops.h against
 * their scalar oracles, on every instruction set the machine has: BF16
 * rounding over every sign/exponent/top-mantissa pattern with the critical
 * low halves (ties, carries, NaN payloads, infinities), expf against libm
 * over a sweep of all bit patterns (every one with DSV4_TEST_EXHAUSTIVE=1),
 * SwiGLU, the mHC and MoE sums, RoPE (several heads, tails, inverse) and
 * the FP8/FP4 activation simulation bit for bit (NaN outputs only need to
 * be NaN), argmax on ties, signed zeros, NaN and infinities, and RMSNorm
 * within the documented last-bit difference of its FP64 sum.  Also the NVFP4 block scales of the activation quantiser over
 * every scale exponent (round_avx2.h's E4M3 rounding with saturation).
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/ops.h"
#include "kernels/formats.h"
#include "kernels/ref/backend.h"
#include "kernels/ref/ops.h"
#include "tests/test.h"

#include <stdint.h>

static const char *isas[3] = {"scalar", "avx2+fma", "avx512"};

static uint32_t st = 12345;

static uint32_t rnd(void)
{
    st = st * 1664525u + 1013904223u;
    return st ^ (st >> 15);
}

static float bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* a float of random sign and mantissa, exponent 2^lo..2^hi */
static float rndf(int lo, int hi)
{
    float m = 1.0f + (float)(rnd() % 65536) / 65536.0f;
    return ldexpf(rnd() & 1 ? -m : m, lo + (int)(rnd() % (unsigned)(hi - lo + 1)));
}

/* bitwise equal, or both NaN where nan_any */
static int64_t differ_nan(const float *a, const float *b, int64_t n, const char *what, int nan_any)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0 && !(nan_any && isnan(a[i]) && isnan(b[i])))
            if (bad++ < 5)
                fprintf(stderr, "%s (%s): [%lld] got %a want %a\n", what, dsv4_cpu_isa(),
                        (long long)i, (double)a[i], (double)b[i]);
    return bad;
}

static int64_t differ(const float *a, const float *b, int64_t n, const char *what)
{
    return differ_nan(a, b, n, what, 1);
}

static void test_round(void)
{
    static const uint32_t lows[] = {0,      1,      0x7fff, 0x8000, 0x8001, 0xffff,
                                    0x4000, 0xbfff, 0x7ffe, 0x1234, 0xc000, 0x0001};
    enum { NL = sizeof lows / sizeof lows[0], N = 65536 * NL };
    static float x[N], r[N], f[N];
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (int l = 0; l < NL; l++)
            x[hi * NL + l] = bits(hi << 16 | lows[l]);
    memcpy(r, x, sizeof x);
    dsv4_ref_round_bf16(r, N);
    for (int64_t n = N; n > N - 20; n -= 7) { /* tails past the vector width */
        memcpy(f, x, sizeof x);
        dsv4_cpu_round_bf16(f, n);
        CHECKF(differ_nan(f, r, n, "round_bf16", 0) == 0, "n %lld", (long long)n);
        CHECK(memcmp(f + n, x + n, sizeof(float) * (size_t)(N - n)) == 0);
    }
    for (int i = 0; i < N; i++)
        x[i] = bits(rnd());
    memcpy(r, x, sizeof x);
    memcpy(f, x, sizeof x);
    dsv4_ref_round_bf16(r, N);
    dsv4_cpu_round_bf16(f, N);
    CHECK(differ_nan(f, r, N, "round_bf16 random", 0) == 0);
}

static void test_exp(void)
{
    enum { N = 1 << 16 };
    static float x[N], y[N], r[N];
    const char *ex = getenv("DSV4_TEST_EXHAUSTIVE");
    uint64_t step = ex && *ex == '1' ? 1 : 251, bad = 0;
    for (uint64_t b0 = 0; b0 < (UINT64_C(1) << 32); b0 += N * step) {
        int n = 0;
        for (uint64_t b = b0; b < b0 + N * step && b < (UINT64_C(1) << 32); b += step)
            x[n++] = bits((uint32_t)b);
        dsv4_cpu_exp(x, n, y);
        for (int i = 0; i < n; i++)
            r[i] = expf(x[i]);
        bad += (uint64_t)differ(y, r, n, "exp");
    }
    CHECKF(bad == 0, "exp: %llu bit patterns differ from libm", (unsigned long long)bad);
    /* in place, and the special range around the overflow / underflow thresholds */
    for (int i = 0; i < N; i++)
        x[i] = i % 3 ? rndf(-8, 7) : (float)((int)(rnd() % 4001) - 2000) * 0.1f;
    for (int i = 0; i < N; i++)
        r[i] = expf(x[i]);
    dsv4_cpu_exp(x, N - 3, x);
    CHECK(differ(x, r, N - 3, "exp in place") == 0);
}

static void test_swiglu(void)
{
    enum { N = 4099 };
    static float g[N], u[N], h[N], r[N];
    for (int i = 0; i < N; i++) {
        g[i] = i % 7 ? rndf(-30, 7) : (float)((int)(rnd() % 401) - 200) * 0.5f;
        u[i] = rndf(-20, 6);
    }
    g[5] = NAN, g[9] = INFINITY, g[13] = -INFINITY, u[17] = NAN, u[21] = -INFINITY;
    g[25] = -0.0f, g[29] = 10.0f, u[33] = -10.0f, g[37] = -87.5f, g[41] = -89.0f;
    const float limits[3] = {0.0f, 10.0f, 7.0f}, ws[3] = {1.0f, 0.3f, -2.5f};
    for (int c = 0; c < 3; c++) {
        dsv4_ref_swiglu(g, u, N, limits[c], ws[c], r);
        dsv4_cpu_swiglu(g, u, N, limits[c], ws[c], h);
        CHECKF(differ(h, r, N, "swiglu") == 0, "limit %g w %g", limits[c], ws[c]);
    }
}

static void test_argmax(void)
{
    enum { N = 1000 };
    static float x[N];
    int bad = 0;
    for (int rep = 0; rep < 400; rep++) {
        int n = 1 + (int)(rnd() % N), kind = rep % 8;
        for (int i = 0; i < n; i++)
            x[i] = (float)(rnd() % (kind < 4 ? 7 : 100000)) - 3.0f; /* few values: ties */
        if (kind == 1)
            for (int i = 0; i < n; i++)
                x[i] = rnd() % 2 ? 0.0f : -0.0f;
        if (kind == 2)
            for (int i = 0; i < n; i += 3)
                x[i] = NAN;
        if (kind == 3)
            for (int i = 0; i < n; i++)
                x[i] = rnd() % 4 ? -INFINITY : NAN;
        if (kind == 5)
            for (int i = 0; i < n; i++)
                x[i] = NAN;
        if (kind == 6)
            x[rnd() % n] = INFINITY;
        if (kind == 7)
            for (int i = 0; i < n; i++)
                x[i] = rnd() % 3 ? -INFINITY : x[i];
        int32_t a = dsv4_cpu_argmax(x, n), b = dsv4_ref_argmax_row(x, n);
        if (a != b && bad++ < 5)
            fprintf(stderr, "argmax (%s) kind %d n %d: %d, oracle %d\n", dsv4_cpu_isa(), kind, n, a,
                    b);
    }
    CHECKF(bad == 0, "argmax differs in %d rows", bad);
}

static void test_rmsnorm(void)
{
    enum { N = 3000 };
    static float x[N], w[N], y[N], r[N];
    int rows = 0, exact = 0;
    double md = 0;
    for (int rep = 0; rep < 300; rep++) {
        int n = 1 + (int)(rnd() % N);
        for (int i = 0; i < n; i++) {
            x[i] = rndf(-12, 4);
            w[i] = rndf(-3, 1);
        }
        const float *wp = rep % 2 ? w : NULL;
        dsv4_ref_rmsnorm(x, wp, n, 1e-6f, r);
        dsv4_cpu_rmsnorm(x, wp, n, 1e-6f, y);
        rows++;
        exact += memcmp(y, r, sizeof(float) * (size_t)n) == 0;
        for (int i = 0; i < n; i++)
            md = fmax(md, fabs((double)y[i] - r[i]) / fmax(1e-30, fabs(r[i])));
        dsv4_cpu_rmsnorm(x, wp, n, 1e-6f, x); /* in place */
        CHECK(memcmp(x, y, sizeof(float) * (size_t)n) == 0);
    }
    CHECKF(exact >= rows * 95 / 100 && md < 1e-6, "rmsnorm (%s): %d of %d rows exact, max %g",
           dsv4_cpu_isa(), exact, rows, md);
}

static void test_hc(void)
{
    enum { HC = 4, D = 259 };
    static float A[D], X[HC * D], Xo[HC * D], R[HC * D], y[D], ry[D];
    float post[HC], comb[HC * HC], pre[HC];
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < D; i++)
            A[i] = rndf(-6, 3);
        for (int i = 0; i < HC * D; i++)
            X[i] = rep == 0 && i % 5 == 0 ? -0.0f : rndf(-6, 3);
        for (int j = 0; j < HC; j++) {
            post[j] = rndf(-3, 1);
            pre[j] = rep == 0 ? 0.0f : rndf(-3, 1);
        }
        for (int i = 0; i < HC * HC; i++)
            comb[i] = rndf(-4, 0);
        dsv4_ref_hc_post(A, X, post, comb, HC, D, R);
        dsv4_cpu_hc_post(A, X, post, comb, HC, D, Xo);
        CHECK(differ(Xo, R, HC * D, "hc_post") == 0);
        for (int d = 0; d < D; d++) { /* hc_pre's y as the oracle writes it */
            double acc = 0.0;
            for (int j = 0; j < HC; j++)
                acc += (double)pre[j] * X[j * D + d];
            ry[d] = (float)acc;
        }
        dsv4_cpu_hc_sum(X, pre, HC, D, y);
        CHECK(differ(y, ry, D, "hc_sum") == 0);
    }
}

static void test_rope(void)
{
    enum { NH = 5, DH = 80 };
    static float x[NH * DH], f[NH * DH], r[NH * DH];
    struct dsv4_rope rp;
    const int dims[3] = {64, 6, 14};
    for (int c = 0; c < 6; c++) {
        int dim = dims[c % 3];
        bool inverse = c >= 3, bf16 = c % 2;
        CHECK_INT(dsv4_rope_init(&rp, dim, 160000.0, c % 2, 16, 32, 1, 65536), 0);
        for (int i = 0; i < NH * DH; i++)
            x[i] = rndf(-6, 3);
        int64_t pos = (int64_t)(rnd() % 100000);
        memcpy(r, x, sizeof x);
        memcpy(f, x, sizeof x);
        for (int h = 0; h < NH; h++) {
            dsv4_ref_rope(&rp, r + h * DH + DH - dim, pos, inverse);
            if (bf16)
                dsv4_ref_round_bf16(r + h * DH + DH - dim, dim);
        }
        dsv4_cpu_rope(&rp, f + DH - dim, NH, DH, pos, inverse, bf16);
        CHECKF(differ_nan(f, r, NH * DH, "rope", 0) == 0, "dim %d inverse %d bf16 %d", dim, inverse,
               bf16);
    }
}

static void test_sum_rows(void)
{
    enum { S = 7, D = 131 };
    static float s[S * D], o[D], r[D];
    for (int i = 0; i < S * D; i++)
        s[i] = i % 9 == 0 ? -0.0f : rndf(-10, 10);
    for (int d = 0; d < D; d++) {
        double acc = 0.0;
        for (int i = 0; i < S; i++)
            acc += s[i * D + d];
        r[d] = (float)acc;
    }
    dsv4_cpu_sum_rows(s, S, D, o);
    CHECK(differ_nan(o, r, D, "sum_rows", 0) == 0);
}

static void test_act_sim(void)
{
    enum { N = 2100 };
    static float x[N], f[N], r[N];
    for (int rep = 0; rep < 60; rep++) {
        int lo = -140 + (int)(rnd() % 150), n = N - (int)(rnd() % 40);
        for (int i = 0; i < N; i++)
            x[i] = rndf(lo, lo + (int)(rnd() % 30));
        /* ties and near-ties of the E4M3 and E2M1 grids (relative to any power-of-two
         * scale), zeros, subnormals, saturation, specials */
        for (int i = 0; i < 400; i++) {
            float m = i % 2 ? 1.0f + (float)(rnd() % 8) / 8 + 1.0f / 16
                            : 1.0f + (float)(rnd() % 4) / 4;
            float b = ldexpf(m, (int)(rnd() % 24) - 20);
            x[rnd() % N] = i % 3 == 0 ? b : nextafterf(b, i % 3 == 1 ? 0.0f : 1e9f);
        }
        for (int i = 0; i < 64; i++)
            x[256 + i] = 0.0f;
        x[500] = 0x1p-140f, x[600] = 3e38f, x[700] = -INFINITY;
        if (rep % 3 == 0)
            x[900] = NAN;
        for (int k = 0; k < 3; k++) {
            enum dsv4_sim kind = k == 2 ? DSV4_SIM_FP4 : DSV4_SIM_FP8;
            int group = k == 0 ? 64 : k == 1 ? 128 : 32;
            memcpy(r, x, sizeof x);
            memcpy(f, x, sizeof x);
            if (kind == DSV4_SIM_FP8)
                dsv4_act_sim_fp8(r, n, group);
            else
                dsv4_act_sim_fp4(r, n, group);
            dsv4_cpu_act_sim(f, n, kind, group);
            CHECKF(differ(f, r, n, "act_sim") == 0, "kind %d group %d n %d", kind, group, n);
        }
    }
}

/* the NVFP4 block scale: one block per scale exponent, amax at E4M3 ties and beyond 448 */
static void test_nvfp4_scales(void)
{
    enum { NB = 300, N = NB * 16 };
    static float x[N], f[N], r[N];
    static uint8_t q[N / 2], sf[NB];
    for (int b = 0; b < NB; b++) {
        float amax = ldexpf(1.0f + (float)(b % 16) / 16 + (b % 3 ? 1.0f / 32 : 0), b - 150);
        for (int i = 0; i < 16; i++)
            x[b * 16 + i] = amax * (float)(i + 1) / 16 * (i % 2 ? -1 : 1);
    }
    const float scales[3] = {1.0f, 0x1p-20f, 1e-30f};
    for (int s = 0; s < 3; s++) {
        dsv4_act_quant_nvfp4(x, N, scales[s], q, sf);
        for (int i = 0; i < N; i++)
            r[i] = dsv4_e2m1_to_f32((q[i / 2] >> (4 * (i & 1))) & 15) *
                   dsv4_e4m3_to_f32(sf[i / 16]);
        dsv4_cpu_act_nvfp4(x, N, scales[s], f);
        CHECKF(differ(f, r, N, "nvfp4 block scales") == 0, "input_scale %g", scales[s]);
    }
}

int main(void)
{
    for (int isa = 0; isa < 3; isa++) {
        if (dsv4_cpu_force_isa(isas[isa]) != 0)
            continue;
        fprintf(stderr, "instruction set %s\n", dsv4_cpu_isa());
        test_round();
        test_exp();
        test_swiglu();
        test_argmax();
        test_rmsnorm();
        test_hc();
        test_rope();
        test_sum_rows();
        test_act_sim();
        test_nvfp4_scales();
    }
    TEST_DONE();
}
