/*
 * test_convert_math.c - the MXFP4 -> NVFP4 block math of tools/convert.h
 * on buffers: the lossless cast is bit-exact for every in-range block (checked
 * through the reference dequantizers of kernels/formats.h), its range edges
 * and fallbacks, the recipe's tie rules on both grids, a hand-computed amax
 * example, and the verification metrics.
 */
#include "tools/convert.h"
#include "base/dsv4.h"
#include "kernels/formats.h"
#include "tests/test.h"

#include <stdint.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* Dequantizes both sides and counts elements whose FP32 bits differ. */
static int64_t count_diff(const uint8_t *w, const uint8_t *s, const uint8_t *ow, const uint8_t *os,
                          float scale2, int64_t rows, int64_t cols)
{
    float *a = malloc(sizeof(float) * rows * cols), *b = malloc(sizeof(float) * rows * cols);
    dsv4_dequant_mxfp4(w, s, rows, cols, 0, rows, a);
    dsv4_dequant_nvfp4(ow, os, scale2, rows, cols, 0, rows, b);
    int64_t diff = 0;
    for (int64_t i = 0; i < rows * cols; i++)
        diff += memcmp(&a[i], &b[i], 4) != 0;
    free(a);
    free(b);
    return diff;
}

static void test_lossless_random(void)
{
    enum { R = 64, C = 256 };
    static uint8_t w[R * C / 2], s[R * C / 32], ow[R * C / 2], os[R * C / 16];
    for (size_t i = 0; i < sizeof(w); i++)
        w[i] = (uint8_t)rnd();
    /* exponents spread over 18 values: -20 .. -3, all in range of kmax - 8 */
    for (size_t i = 0; i < sizeof(s); i++)
        s[i] = (uint8_t)(127 - 20 + rnd() % 18);
    s[5] = 127 - 3; /* make sure kmax is hit */
    int32_t kmax;
    CHECK_INT(dsv4_convert_scan(s, sizeof(s), &kmax), 0);
    CHECK_INT(kmax, -3);
    int m = dsv4_convert_lossless_exp(kmax, INT32_MIN);
    CHECK_INT(m, -11);
    struct dsv4_convert_stats st = {0};
    dsv4_convert_lossless_rows(w, s, C, R, m, ow, os, &st);
    CHECK_INT(st.blocks, R * C / 16);
    CHECK_INT(st.exact, R * C / 16);
    CHECK_INT(st.oor, 0);
    CHECK(memcmp(w, ow, sizeof(w)) == 0);
    CHECK_INT(count_diff(w, s, ow, os, dsv4_convert_pow2(m), R, C), 0);
    /* each output scale is the power of two 2^(k - m) */
    int bad = 0;
    for (int64_t i = 0; i < R * C / 16; i++)
        bad += dsv4_e4m3_to_f32(os[i]) != ldexpf(1.0f, (int)s[i / 2] - 127 - m);
    CHECK_INT(bad, 0);

    /* the same tensor split in row ranges gives the same bytes */
    static uint8_t ow2[R * C / 2], os2[R * C / 16];
    struct dsv4_convert_stats st2 = {0};
    dsv4_convert_lossless_rows(w, s, C, 10, m, ow2, os2, &st2);
    dsv4_convert_lossless_rows(w + 10 * C / 2, s + 10 * C / 32, C, R - 10, m, ow2 + 10 * C / 2,
                               os2 + 10 * C / 16, &st2);
    CHECK(memcmp(ow, ow2, sizeof(ow)) == 0 && memcmp(os, os2, sizeof(os)) == 0);
    CHECK_INT(st2.exact, st.exact);
}

static void test_lossless_edges(void)
{
    enum { C = 32 * 5 };
    uint8_t w[C / 2], s[C / 32], ow[C / 2], os[C / 16];
    for (size_t i = 0; i < sizeof(w); i++)
        w[i] = 0x71; /* 6 and 0.5 */
    /* kmax = 10 -> m = 2: k = 10 (d 8), -7 (d -9), -8 (d -10: OOR), byte 0 (OOR), zero block */
    s[0] = 127 + 10;
    s[1] = 127 - 7;
    s[2] = 127 - 8;
    s[3] = 0;
    s[4] = 0;
    memset(w + 4 * 16, 0x88, 16); /* -0 everywhere: exact whatever the exponent */
    int32_t kmax;
    CHECK_INT(dsv4_convert_scan(s, sizeof(s), &kmax), 0);
    CHECK_INT(kmax, 10);
    int m = dsv4_convert_lossless_exp(kmax, 3);
    CHECK_INT(m, 2);
    struct dsv4_convert_stats st = {0};
    dsv4_convert_lossless_rows(w, s, C, 1, m, ow, os, &st);
    CHECK_INT(st.blocks, 10);
    CHECK_INT(st.exact, 6);
    CHECK_INT(st.oor, 4);
    CHECK_INT(os[0], 15 << 3); /* 2^8 */
    CHECK_INT(os[2], 1);       /* 2^-9, smallest subnormal */
    CHECK_INT(os[8], 0);       /* zero block */
    CHECK(memcmp(ow, w, 32) == 0);
    CHECK(memcmp(ow + 64, w + 64, 16) == 0);
    /* OOR block: values 6 * 2^-8 and 0.5 * 2^-8 with scale2 = 4: amax / (6 * 4)
     * = 2^-10, the tie between E4M3 0 and 2^-9, rounds (RNE) to code 0 */
    CHECK_INT(os[4], dsv4_f32_to_e4m3(ldexpf(1.0f, -10), DSV4_ROUND_NEAREST_EVEN, true));
    CHECK_INT(count_diff(w, s, ow, os, 4.0f, 1, 64), 0);
    CHECK(count_diff(w, s, ow, os, 4.0f, 1, C) > 0);

    /* w1/w3 pairing and the clamp of tiny tensors */
    CHECK_INT(dsv4_convert_lossless_exp(-9, -7), -15);
    CHECK_INT(dsv4_convert_lossless_exp(INT32_MIN, INT32_MIN), 0);
    CHECK_INT(dsv4_convert_lossless_exp(-125, INT32_MIN), -126);
    uint8_t nan_s[3] = {100, 0xFF, 3};
    CHECK_INT(dsv4_convert_scan(nan_s, 3, &kmax), DSV4_EFORMAT);
    uint8_t zero_s[3] = {0, 0, 0};
    CHECK_INT(dsv4_convert_scan(zero_s, 3, &kmax), 0);
    CHECK(kmax == INT32_MIN);
}

static void test_tie_rules(void)
{
    /* E4M3: 1.0 = code 56, 1.125 = 57, midpoint goes down, just above goes up */
    CHECK_INT(dsv4_convert_e4m3_ties_lower(1.0f), 56);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(1.0625f), 56);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(nextafterf(1.0625f, 2.0f)), 57);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(1.1f), 57);
    /* an RNE tie that would go up (odd lower code): 1.125 (57) vs 1.25 (58) */
    CHECK_INT(dsv4_convert_e4m3_ties_lower(1.1875f), 57);
    CHECK_INT(dsv4_f32_to_e4m3(1.1875f, DSV4_ROUND_NEAREST_EVEN, true), 58);
    /* subnormals and zero */
    CHECK_INT(dsv4_convert_e4m3_ties_lower(ldexpf(1.0f, -10)), 0);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(nextafterf(ldexpf(1.0f, -10), 1.0f)), 1);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(ldexpf(3.0f, -10)), 1);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(ldexpf(5.0f, -10)), 2);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(0.0f), 0);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(-3.0f), 0);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(448.0f), 126);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(1e9f), 126);
    CHECK_INT(dsv4_convert_e4m3_ties_lower(432.0f), 125); /* 416 | 448 tie */
    /* every code maps to itself */
    int bad = 0;
    for (int c = 0; c < 127; c++)
        bad += dsv4_convert_e4m3_ties_lower(dsv4_e4m3_to_f32((uint8_t)c)) != c;
    CHECK_INT(bad, 0);

    /* against a brute-force search over every code on many values (ties
     * included: midpoints of neighbours are generated explicitly) */
    int bad2 = 0;
    for (int i = 0; i < 200000; i++) {
        float v;
        if (i % 4 == 0) {
            int c = (int)(rnd() % 126);
            v = (dsv4_e4m3_to_f32((uint8_t)c) + dsv4_e4m3_to_f32((uint8_t)(c + 1))) / 2.0f;
        } else {
            v = ldexpf((float)(rnd() % 1000000) / 1000000.0f, (int)(rnd() % 20) - 11);
        }
        int best = 0;
        for (int c = 1; c < 127; c++)
            if (fabs((double)dsv4_e4m3_to_f32((uint8_t)c) - v) <
                fabs((double)dsv4_e4m3_to_f32((uint8_t)best) - v))
                best = c;
        if (v >= 448.0f)
            best = 126;
        bad2 += dsv4_convert_e4m3_ties_lower(v) != best;
    }
    CHECK_INT(bad2, 0);

    /* E2M1 ties to the lower magnitude, saturation, +0 */
    static const float xs[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f,  3.5f,    5.0f, 5.01f,
                               7.0f,  0.26f, -0.2f, -0.3f, -5.0f, -100.0f, 0.0f, -0.0f};
    static const uint8_t want[] = {0, 1, 2, 3, 4, 5, 6, 7, 7, 1, 0, 9, 14, 15, 0, 0};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(xs); i++)
        CHECKF(dsv4_convert_e2m1_ties_lower(xs[i]) == want[i], "e2m1(%g) = %d, want %d",
               (double)xs[i], dsv4_convert_e2m1_ties_lower(xs[i]), want[i]);
}

static void test_amax_example(void)
{
    /* one row of 32: element 0 = 6 (nibble 7), element 16 = -1 (nibble 0xA), k = 0 */
    uint8_t w[16] = {0}, s[1] = {127}, ow[16], os[2];
    w[0] = 0x07;
    w[8] = 0x0A;
    float amax = dsv4_convert_amax(w, s, 32, 1);
    CHECK(amax == 6.0f);
    float sg = dsv4_convert_amax_scale2(amax, 3.0f);
    CHECK(sg == 6.0f / 2688.0f);
    CHECK(dsv4_convert_amax_scale2(0.0f, 0.0f) == 1.0f);
    struct dsv4_convert_stats st = {0};
    dsv4_convert_amax_rows(w, s, 32, 1, sg, ow, os, &st);
    /* block 0: raw = 1 / sg = 448 -> code 126, x = 6 / (sg * 448) -> 6 */
    CHECK_INT(os[0], 126);
    CHECK_INT(ow[0], 0x07);
    /* block 1: raw = (1/6) / sg = 74.67 -> 72 (code 105); x = -1 / (sg * 72) = -6.22
     * saturates to -6 (nibble 0xF) */
    CHECK_INT(os[1], 105);
    CHECK_INT(ow[8], 0x0F);
    CHECK_INT(st.saturated, 1);
    CHECK_INT(st.blocks, 2);
    for (int i = 1; i < 16; i++)
        if (i != 8)
            CHECK_INT(ow[i], 0);
    /* a zero tensor: scale2 1, codes 0, all-zero output */
    uint8_t zw[16] = {0}, zs[1] = {0};
    dsv4_convert_amax_rows(zw, zs, 32, 1, 1.0f, ow, os, &st);
    CHECK_INT(os[0], 0);
    CHECK_INT(os[1], 0);
    CHECK_INT(st.zero_scale, 2);
}

static void test_cmp(void)
{
    enum { N = 1000 };
    static float a[N], b[N], c[N];
    for (int i = 0; i < N; i++) {
        a[i] = (float)((int)(rnd() % 2001) - 1000) / 100.0f;
        b[i] = a[i] * 2.0f + 1.0f;
        c[i] = -a[i];
    }
    struct dsv4_convert_cmp x;
    dsv4_convert_cmp_init(&x);
    dsv4_convert_cmp_add(&x, a, a, N);
    CHECK_INT(x.total, N);
    CHECK_INT(x.bit_equal, N);
    CHECK(x.max_abs == 0.0);
    CHECK(fabs(dsv4_convert_cmp_pearson(&x) - 1.0) < 1e-12);
    dsv4_convert_cmp_init(&x);
    dsv4_convert_cmp_add(&x, a, c, N);
    CHECK(fabs(dsv4_convert_cmp_pearson(&x) + 1.0) < 1e-12);
    /* merged halves equal the single pass */
    struct dsv4_convert_cmp one, h1, h2;
    dsv4_convert_cmp_init(&one);
    dsv4_convert_cmp_add(&one, a, b, N);
    dsv4_convert_cmp_init(&h1);
    dsv4_convert_cmp_init(&h2);
    dsv4_convert_cmp_add(&h1, a, b, 333);
    dsv4_convert_cmp_add(&h2, a + 333, b + 333, N - 333);
    dsv4_convert_cmp_merge(&h1, &h2);
    CHECK(fabs(dsv4_convert_cmp_pearson(&one) - 1.0) < 1e-12);
    CHECK(fabs(dsv4_convert_cmp_pearson(&h1) - dsv4_convert_cmp_pearson(&one)) < 1e-12);
    CHECK(fabs(dsv4_convert_cmp_mean_rel(&h1) - dsv4_convert_cmp_mean_rel(&one)) < 1e-12);
    CHECK(h1.max_abs == one.max_abs);
    double want = 0;
    for (int i = 0; i < N; i++)
        want = fmax(want, fabs((double)b[i] - a[i]));
    CHECK(one.max_abs == want);
    /* non-finite values are counted and kept out of the moments */
    float bn[4] = {1.0f, NAN, 3.0f, INFINITY}, an[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    dsv4_convert_cmp_init(&x);
    dsv4_convert_cmp_add(&x, an, bn, 4);
    CHECK_INT(x.nonfinite, 2);
    CHECK_INT(x.n, 2);
    CHECK(isfinite(x.max_abs) && isfinite(dsv4_convert_cmp_pearson(&x)));
}

int main(void)
{
    test_lossless_random();
    test_lossless_edges();
    test_tie_rules();
    test_amax_example();
    test_cmp();
    enum dsv4_convert_mode md;
    CHECK_INT(dsv4_convert_mode_parse("amax", &md), 0);
    CHECK_INT(md, DSV4_CONVERT_AMAX);
    CHECK_INT(dsv4_convert_mode_parse("exact", &md), DSV4_EINVAL);
    TEST_DONE();
}
