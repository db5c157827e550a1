/*
 * test_linear_cpu.c - the fast CPU kernels against the scalar oracle: the
 * activation quantisers bit for bit (ties, subnormals, saturation, NaN,
 * tails), and dsv4_cpu_linear for every weight format and activation path
 * on random shapes with partial blocks and odd row counts, batch 1..64, on
 * 1-3 threads and on every instruction set the machine has, with a
 * per-element bound (relative to sum|x*w|) plus a whole-tensor normalised
 * error; NaN inputs must reach the output and fail the comparison.  Batch
 * invariance: within one instruction set, every output row is bitwise the
 * m = 1 result of its activation row, whatever m, the other rows and the
 * thread count (cpu.h).
 */
#include "base/dsv4.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tests/kernels/lintest.h"

#include <string.h>

static const struct {
    enum dsv4_wfmt fmt;
    enum dsv4_act act;
} combos[] = {
        {DSV4_WFMT_F32, DSV4_ACT_F32},     {DSV4_WFMT_BF16, DSV4_ACT_F32},
        {DSV4_WFMT_FP8, DSV4_ACT_FP8},     {DSV4_WFMT_FP8, DSV4_ACT_F32},
        {DSV4_WFMT_MXFP4, DSV4_ACT_FP8},   {DSV4_WFMT_MXFP4, DSV4_ACT_F32},
        {DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4}, {DSV4_WFMT_NVFP4, DSV4_ACT_FP8},
        {DSV4_WFMT_NVFP4, DSV4_ACT_F32},
};

static const char *isas[3] = {"scalar", "avx2+fma", "avx512"};

/* pools of 1, 2 and 3 threads, shared by the tests (main creates them) */
static struct dsv4_pool *pool[3];

static int same_bits(const float *a, const float *b, int64_t n, const char *what)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0 && !(isnan(a[i]) && isnan(b[i]))) {
            if (bad++ < 5)
                fprintf(stderr, "%s: [%lld] got %.9g want %.9g\n", what, (long long)i, (double)a[i],
                        (double)b[i]);
        }
    return bad;
}

static void test_act(void)
{
    enum { N = 4000 };
    static float x[N], r[N], f[N];
    static uint8_t q[N / 2 + 1], sf[N / 16 + 1];
    lt_act_make(x, 1, N);
    /* exact ties and near-ties of the grids relative to power-of-two scales */
    for (int i = 0; i < 600; i++) {
        float base =
                ldexpf(1.0f + (float)(lt_u32() % 8) / 8 + 1.0f / 16, (int)(lt_u32() % 24) - 20);
        x[i] = (i % 3 == 0) ? base : nextafterf(base, (i % 3 == 1) ? 0 : 1e9f);
        if (i % 5 == 0)
            x[i] = -x[i];
    }
    x[700] = 1e30f;      /* saturation / huge scale */
    x[1000] = 0x1p-140f; /* FP32 subnormal */
    for (int i = 1280; i < 1408; i++)
        x[i] = 0.0f; /* all-zero group */
    x[2001] = NAN;
    x[3000] = INFINITY;
    for (int isa = 0; isa < 3; isa++) {
        if (dsv4_cpu_force_isa(isas[isa]) != 0)
            continue;
        for (int n = N; n > N - 40; n -= 13) {
            memcpy(r, x, sizeof(float) * (size_t)n);
            dsv4_act_sim_fp8(r, n, 128);
            dsv4_cpu_act_fp8(x, n, 128, f);
            CHECKF(same_bits(f, r, n, "act fp8") == 0, "%s n=%d", dsv4_cpu_isa(), n);
            memcpy(r, x, sizeof(float) * (size_t)n);
            dsv4_act_sim_fp8(r, n, 64);
            dsv4_cpu_act_fp8(x, n, 64, f);
            CHECKF(same_bits(f, r, n, "act fp8/64") == 0, "%s n=%d", dsv4_cpu_isa(), n);
            CHECK(isnan(f[2001]) && isnan(f[1999]) && !isnan(f[1900]));
            for (int s = 0; s < 2; s++) {
                float is = s ? 0.37f : 1.0f;
                dsv4_act_quant_nvfp4(x, n, is, q, sf);
                for (int i = 0; i < n; i++)
                    r[i] = dsv4_e2m1_to_f32((q[i / 2] >> (4 * (i & 1))) & 15) *
                           dsv4_e4m3_to_f32(sf[i / 16]);
                dsv4_cpu_act_nvfp4(x, n, is, f);
                CHECKF(same_bits(f, r, n, "act nvfp4") == 0, "%s n=%d", dsv4_cpu_isa(), n);
            }
        }
    }
}

/* FP8 block scales far from 2^0 in the first and last blocks: 2^72..2^87 (past the folded
 * factor's range of a set whose decoder scales the weights by 2^-120: the two-step path) and
 * 2^-127..2^-120 (E8M0's subnormal code 0 included); the outputs stay finite. */
static void fp8_extreme_scales(struct lt_weight *t, enum dsv4_wfmt fmt, int64_t R, int64_t K)
{
    if (fmt != DSV4_WFMT_FP8)
        return;
    t->s[0] = (uint8_t)(199 + lt_u32() % 16);
    t->s[((R + 127) / 128) * ((K + 127) / 128) - 1] = (uint8_t)(lt_u32() % 8);
}

static void test_linear(void)
{
    static const int64_t shapes[][3] = {
            /* rows, cols, m */
            {1, 16, 1},    {3, 100, 1},   {130, 300, 3},   {257, 130, 1},
            {64, 1100, 8}, {17, 2048, 2}, {33, 520, 64},   {5, 1040, 33},
            {300, 256, 1}, {7, 48, 17},   {130, 1024, 1},  {257, 640, 1},
            {9, 64, 1},    {2, 7168, 1},  {11, 1100, 100}, /* past LIN_MB activation rows */
    };
    CHECK_INT(dsv4_cpu_linear_reserve(pool[0], 64, 2048), 0);
    CHECK_INT(dsv4_cpu_linear_reserve(pool[0], 0, 2048), DSV4_EINVAL);
    for (size_t c = 0; c < DSV4_ARRAY_LEN(combos); c++)
        for (size_t s = 0; s < DSV4_ARRAY_LEN(shapes); s++) {
            int64_t R = shapes[s][0], K = shapes[s][1], m = shapes[s][2];
            enum dsv4_act act = combos[c].act;
            struct lt_weight t;
            lt_weight_make(&t, combos[c].fmt, R, K);
            if (combos[c].fmt == DSV4_WFMT_MXFP4) /* tiny scales take the fallback blocks */
                t.s[0] = 5, t.s[R * ((K + 31) / 32) - 1] = 7;
            fp8_extreme_scales(&t, combos[c].fmt, R, K);
            float *x = malloc((size_t)(m * K) * sizeof(float));
            float *y = malloc((size_t)(m * R) * sizeof(float));
            float *yr = malloc((size_t)(m * R) * sizeof(float));
            double *yd = malloc((size_t)(m * R) * sizeof(double));
            double *yrd = malloc((size_t)(m * R) * sizeof(double));
            double *as = malloc((size_t)(m * R) * sizeof(double));
            lt_act_make(x, m, K);
            lt_model(&t.q, act, x, m, yd, as);
            dsv4_ref_linear(&t.q, act, x, m, yr);
            for (int64_t i = 0; i < m * R; i++)
                yrd[i] = yr[i];
            double rel = (double)(K + 2) * 0x1p-24;
            for (int isa = 0; isa < 3; isa++) {
                if (dsv4_cpu_force_isa(isas[isa]) != 0)
                    continue;
                struct dsv4_pool *p = pool[(c + s + (size_t)isa) % 3];
                char what[128];
                snprintf(what, sizeof(what), "%s %s/%s [%lld,%lld] m=%lld threads=%d",
                         dsv4_cpu_isa(), dsv4_wfmt_name(combos[c].fmt), dsv4_act_name(act),
                         (long long)R, (long long)K, (long long)m, dsv4_pool_threads(p));
                for (int64_t i = 0; i < m * R; i++)
                    y[i] = -12345.0f; /* every output must be written */
                dsv4_cpu_linear(p, &t.q, act, x, m, y);
                CHECKF(lt_compare(what, y, yd, as, m * R, rel, 1e-5) == 0, "%s vs model", what);
                CHECKF(lt_compare(what, y, yrd, as, m * R, 2 * rel, 2e-5) == 0, "%s vs ref", what);
            }
            /* NaN in one activation reaches every output of its row and fails */
            x[(m - 1) * K + K / 3] = NAN;
            dsv4_cpu_linear(pool[2], &t.q, act, x, m, y);
            CHECK(isnan(y[(m - 1) * R]) && isnan(y[m * R - 1]));
            CHECK(lt_compare("(expected to fail)", y, yd, as, m * R, rel, 1e-5) > 0);
            free(x);
            free(y);
            free(yr);
            free(yd);
            free(yrd);
            free(as);
            lt_weight_free(&t);
        }
}

/*
 * Batch invariance: rows drawn at random from a set of NX activation rows,
 * with random other rows around them, must give bitwise the output of the
 * same row alone (m = 1, one thread), for every batch size (past LIN_MB
 * and the micro-kernel heights), thread count, format and tail shape.
 */
static void test_invariance(void)
{
    enum { NX = 100 };
    static const int64_t shapes[][2] = {
            /* rows, cols: tails of every vector / block / chunk width, partial tiles, a
             * second FP8 row group */
            {3, 5},    {7, 48},   {13, 100},   {130, 300}, {9, 1100},
            {33, 256}, {5, 2111}, {262, 1100}, /* large enough for several pool tasks at m = 1 */
    };
    static const int64_t ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 17, 33, 64, 100};
    for (int isa = 0; isa < 3; isa++) {
        if (dsv4_cpu_force_isa(isas[isa]) != 0)
            continue;
        for (size_t c = 0; c < DSV4_ARRAY_LEN(combos); c++)
            for (size_t s = 0; s < DSV4_ARRAY_LEN(shapes); s++) {
                int64_t R = shapes[s][0], K = shapes[s][1];
                enum dsv4_act act = combos[c].act;
                struct lt_weight t;
                lt_weight_make(&t, combos[c].fmt, R, K);
                if (combos[c].fmt == DSV4_WFMT_MXFP4)
                    t.s[0] = 5, t.s[R * ((K + 31) / 32) - 1] = 7;
                fp8_extreme_scales(&t, combos[c].fmt, R, K);
                float *xs = malloc((size_t)(NX * K) * sizeof(float));
                float *y1 = malloc((size_t)(NX * R) * sizeof(float));
                float *x = malloc((size_t)(NX * K) * sizeof(float));
                float *y = malloc((size_t)(NX * R) * sizeof(float));
                int src[NX];
                lt_act_make(xs, NX, K);
                for (int i = 0; i < NX; i++)
                    dsv4_cpu_linear(pool[0], &t.q, act, xs + i * K, 1, y1 + i * R);
                int bad = 0;
                for (size_t mi = 0; mi < DSV4_ARRAY_LEN(ms); mi++)
                    for (int th = 0; th < 3; th++) {
                        int64_t m = ms[mi];
                        for (int64_t i = 0; i < m; i++) {
                            src[i] = (int)(lt_u32() % NX);
                            memcpy(x + i * K, xs + src[i] * K, (size_t)K * sizeof(float));
                        }
                        dsv4_cpu_linear(pool[th], &t.q, act, x, m, y);
                        for (int64_t i = 0; i < m; i++)
                            if (memcmp(y + i * R, y1 + src[i] * R, (size_t)R * sizeof(float))) {
                                if (bad++ < 3)
                                    same_bits(y + i * R, y1 + src[i] * R, R, "invariance");
                                fprintf(stderr,
                                        "%s %s/%s [%lld,%lld] m=%lld threads=%d: row %lld "
                                        "differs from m=1\n",
                                        dsv4_cpu_isa(), dsv4_wfmt_name(combos[c].fmt),
                                        dsv4_act_name(act), (long long)R, (long long)K,
                                        (long long)m, th + 1, (long long)i);
                            }
                    }
                CHECKF(bad == 0, "%s %s/%s [%lld,%lld]: %d rows not batch-invariant",
                       dsv4_cpu_isa(), dsv4_wfmt_name(combos[c].fmt), dsv4_act_name(act),
                       (long long)R, (long long)K, bad);
                free(xs);
                free(y1);
                free(x);
                free(y);
                lt_weight_free(&t);
            }
    }
}

/*
 * dsv4_cpu_linear_multi: every product of a call (formats and activation paths mixed, tails,
 * m = 0 items skipped) bitwise what dsv4_cpu_linear gives for it alone, on 1-3 threads; the
 * same with x and y rows apart by more than a row (ldx, ldy: a grouped product's columns of
 * a wider matrix), the gaps of y untouched.
 */
static void test_multi(void)
{
    enum { N = 2 * DSV4_ARRAY_LEN(combos) };
    static const int64_t shapes[][2] = {{384, 512}, {13, 100}, {130, 300}, {5, 2111}};
    static const int64_t ms[] = {1, 0, 3, 1, 17, 2};
    for (int isa = 0; isa < 3; isa++) {
        if (dsv4_cpu_force_isa(isas[isa]) != 0)
            continue;
        struct lt_weight w[N];
        struct dsv4_cpu_lin it[N];
        float *want[N];
        for (int i = 0; i < N; i++) {
            size_t c = (size_t)i % DSV4_ARRAY_LEN(combos);
            int64_t R = shapes[i % 4][0], K = shapes[i % 4][1], m = ms[i % 6];
            lt_weight_make(&w[i], combos[c].fmt, R, K);
            float *x = malloc((size_t)(DSV4_MAX(m, 1) * K) * sizeof(float));
            lt_act_make(x, DSV4_MAX(m, 1), K);
            it[i] = (struct dsv4_cpu_lin){
                    .w = &w[i].q,
                    .act = combos[c].act,
                    .x = x,
                    .m = m,
                    .y = malloc((size_t)(DSV4_MAX(m, 1) * R) * sizeof(float))};
            want[i] = malloc((size_t)(DSV4_MAX(m, 1) * R) * sizeof(float));
            dsv4_cpu_linear(pool[0], &w[i].q, combos[c].act, x, m, want[i]);
        }
        for (int th = 0; th < 3; th++) {
            int bad = 0;
            dsv4_cpu_linear_multi(pool[th], it, 0);
            dsv4_cpu_linear_multi(pool[th], it, N);
            for (int i = 0; i < N; i++)
                if (it[i].m > 0)
                    bad += same_bits(it[i].y, want[i], it[i].m * it[i].w->rows, "multi") != 0;
            CHECKF(bad == 0,
                   "%s, %d threads: %d of %d products of linear_multi differ from "
                   "dsv4_cpu_linear",
                   dsv4_cpu_isa(), th + 1, bad, N);
        }
        /* strided: x rows K + 37 floats apart, y rows R + 11 apart, gaps of y a sentinel */
        struct dsv4_cpu_lin st[N];
        for (int i = 0; i < N; i++) {
            int64_t R = it[i].w->rows, K = it[i].w->cols, m = DSV4_MAX(it[i].m, 1);
            float *x = malloc((size_t)(m * (K + 37)) * sizeof(float));
            float *y = malloc((size_t)(m * (R + 11)) * sizeof(float));
            for (int64_t t = 0; t < m; t++)
                memcpy(x + t * (K + 37), it[i].x + t * K, (size_t)K * sizeof(float));
            for (int64_t e = 0; e < m * (R + 11); e++)
                y[e] = -12345.0f;
            st[i] = it[i];
            st[i].x = x;
            st[i].y = y;
            st[i].ldx = K + 37;
            st[i].ldy = R + 11;
        }
        for (int th = 0; th < 3; th++) {
            int bad = 0, gap = 0;
            dsv4_cpu_linear_multi(pool[th], st, N);
            for (int i = 0; i < N; i++) {
                int64_t R = st[i].w->rows;
                for (int64_t t = 0; t < st[i].m; t++) {
                    bad += memcmp(st[i].y + t * (R + 11), want[i] + t * R,
                                  (size_t)R * sizeof(float)) != 0;
                    for (int64_t e = R; e < R + 11; e++)
                        gap += st[i].y[t * (R + 11) + e] != -12345.0f;
                }
            }
            CHECKF(bad == 0 && gap == 0,
                   "%s, %d threads: strided linear_multi: %d rows differ from dsv4_cpu_linear, "
                   "%d gap values written",
                   dsv4_cpu_isa(), th + 1, bad, gap);
        }
        for (int i = 0; i < N; i++) {
            free((void *)st[i].x);
            free(st[i].y);
        }
        for (int i = 0; i < N; i++) {
            free((void *)it[i].x);
            free(it[i].y);
            free(want[i]);
            lt_weight_free(&w[i]);
        }
    }
}

/*
 * The cpu backend's linear_multi: products of one input, BF16 rounding per product, bitwise
 * what `linear` gives one at a time, at a decode's m (one job) and past its row limit (one
 * product at a time).
 */
static void test_backend_multi(void)
{
    enum { K = 300 };
    static const int64_t rows[3] = {130, 33, 262};
    static const unsigned flags[3] = {DSV4_OP_BF16, 0, DSV4_OP_BF16};
    static const int64_t ms[] = {1, 3, 40};
    struct dsv4_backend *be;
    CHECK_INT(dsv4_backend_cpu_create(2, &be), 0);
    struct lt_weight w[3];
    struct dsv4_lin l[3];
    const struct dsv4_lin *lp[3];
    for (int i = 0; i < 3; i++) {
        size_t c = (size_t)(i * 3 + 2) % DSV4_ARRAY_LEN(combos); /* FP8/F32, NVFP4/NVFP4, F32 */
        lt_weight_make(&w[i], combos[c].fmt, rows[i], K);
        l[i] = (struct dsv4_lin){w[i].q, combos[c].act};
        lp[i] = &l[i];
    }
    for (size_t mi = 0; mi < DSV4_ARRAY_LEN(ms); mi++) {
        int64_t m = ms[mi];
        float *x = malloc((size_t)(m * K) * sizeof(float)), *y[3], *want[3];
        struct dsv4_tensor yt[3];
        const struct dsv4_tensor *yp[3];
        lt_act_make(x, m, K);
        int bad = 0;
        for (int i = 0; i < 3; i++) {
            y[i] = malloc((size_t)(m * rows[i]) * sizeof(float));
            want[i] = malloc((size_t)(m * rows[i]) * sizeof(float));
            be->linear(be, &l[i], DSV4_F2(x, m, K), DSV4_F2(want[i], m, rows[i]), flags[i]);
            yt[i] = *DSV4_F2(y[i], m, rows[i]);
            yp[i] = &yt[i];
        }
        be->linear_multi(be, 3, lp, DSV4_F2(x, m, K), yp, flags);
        for (int i = 0; i < 3; i++) {
            bad += same_bits(y[i], want[i], m * rows[i], "linear_multi") != 0;
            free(y[i]);
            free(want[i]);
        }
        CHECKF(bad == 0, "cpu backend linear_multi, m = %lld: %d of 3 products differ",
               (long long)m, bad);
        free(x);
    }
    for (int i = 0; i < 3; i++)
        lt_weight_free(&w[i]);
    be->destroy(be);
}

struct count_arg {
    int hits[1000];
};

static void count_fn(void *arg, int64_t i, int thread)
{
    struct count_arg *a = arg;
    a->hits[i]++;
    (void)thread;
}

static void test_pool(void)
{
    struct dsv4_pool *p;
    CHECK_INT(dsv4_pool_init(0, &p), DSV4_EINVAL);
    CHECK_INT(dsv4_pool_init(3, &p), 0);
    CHECK_INT(dsv4_pool_threads(p), 3);
    for (int rep = 0; rep < 200; rep++) {
        struct count_arg a = {{0}};
        int n = 1 + rep * 5 % 1000, bad = 0;
        dsv4_pool_run(p, count_fn, &a, n);
        for (int i = 0; i < 1000; i++)
            bad += a.hits[i] != (i < n);
        CHECK_INT(bad, 0);
    }
    void *s1 = dsv4_pool_scratch(p, 2, 1000), *s2 = dsv4_pool_scratch(p, 2, 900);
    CHECK(s1 && s1 == s2 && ((uintptr_t)s1 & 63) == 0);
    CHECK(dsv4_pool_shared(p, 0, 10) != NULL && dsv4_pool_shared(p, 3, 10) != NULL);
    dsv4_pool_free(p);
}

int main(void)
{
    for (int t = 0; t < 3; t++)
        CHECK_INT(dsv4_pool_init(t + 1, &pool[t]), 0);
    test_pool();
    test_act();
    test_linear();
    test_invariance();
    test_multi();
    test_backend_multi();
    for (int t = 0; t < 3; t++)
        dsv4_pool_free(pool[t]);
    TEST_DONE();
}
