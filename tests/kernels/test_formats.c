/*
 * test_formats.c - exhaustive checks of the scalar format conversions of
 * kernels/ref/formats.c: every code of every format decodes to the value
 * its bit layout defines, re-encodes to itself, and every midpoint between
 * neighbouring codes rounds as the mode says; plus the block dequantisers
 * and the activation quantisers against formulas written out here.
 */
#include "kernels/formats.h"
#include "tests/test.h"

#include <stdint.h>

static float e4m3_formula(int b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
    if (e == 15 && m == 7)
        return NAN;
    return s ? -v : v;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void test_bf16(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dsv4_bf16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, 4);
        bad += u != h << 16;
        if (f == f)
            bad += dsv4_f32_to_bf16(f) != h;
        else
            bad += !isnan(dsv4_bf16_to_f32(dsv4_f32_to_bf16(f)));
    }
    CHECK_INT(bad, 0);
    /* halfway between 1 and the next BF16 (1 + 2^-7): ties to even -> 1 */
    CHECK_INT(dsv4_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    CHECK_INT(dsv4_f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82);
    CHECK_INT(dsv4_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    CHECK(isinf(dsv4_bf16_round(3.4028235e38f)));
    CHECK(isnan(dsv4_bf16_round(NAN)));
}

static void test_e4m3(void)
{
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        float v = dsv4_e4m3_to_f32((uint8_t)b), ref = e4m3_formula(b);
        if (isnan(ref)) {
            bad += !isnan(v);
            bad += (dsv4_f32_to_e4m3(v, DSV4_ROUND_NEAREST_EVEN, false) & 0x7f) != 0x7f;
            continue;
        }
        bad += v != ref || signbit(v) != signbit(ref);
        bad += dsv4_f32_to_e4m3(v, DSV4_ROUND_NEAREST_EVEN, false) != b;
        bad += dsv4_f32_to_e4m3(v, DSV4_ROUND_NEAREST_EVEN, true) != b;
        if (b != 0x80) /* -0 becomes +0 in ties-lower mode */
            bad += dsv4_f32_to_e4m3(v, DSV4_ROUND_TIES_LOWER, false) != b;
    }
    CHECK_INT(bad, 0);
    /* midpoints of neighbouring positive codes, and just beside them */
    bad = 0;
    for (int b = 0; b < 0x7e; b++) {
        float lo = dsv4_e4m3_to_f32((uint8_t)b), hi = dsv4_e4m3_to_f32((uint8_t)(b + 1));
        float mid = (lo + hi) / 2; /* exact: few mantissa bits */
        int even = (b & 1) ? b + 1 : b;
        bad += dsv4_f32_to_e4m3(mid, DSV4_ROUND_NEAREST_EVEN, false) != even;
        bad += dsv4_f32_to_e4m3(mid, DSV4_ROUND_TIES_LOWER, false) != b;
        bad += dsv4_f32_to_e4m3(nextafterf(mid, 0), DSV4_ROUND_NEAREST_EVEN, false) != b;
        bad += dsv4_f32_to_e4m3(nextafterf(mid, 1e9f), DSV4_ROUND_TIES_LOWER, false) != b + 1;
        bad += dsv4_f32_to_e4m3(-mid, DSV4_ROUND_NEAREST_EVEN, false) != (0x80 | even);
    }
    CHECK_INT(bad, 0);
    /* overflow: 448 < x <= 464 rounds to 448, beyond is NaN or saturates */
    CHECK_INT(dsv4_f32_to_e4m3(464.0f, DSV4_ROUND_NEAREST_EVEN, false), 0x7e);
    CHECK_INT(dsv4_f32_to_e4m3(464.001f, DSV4_ROUND_NEAREST_EVEN, false), 0x7f);
    CHECK_INT(dsv4_f32_to_e4m3(-1e30f, DSV4_ROUND_NEAREST_EVEN, false), 0xff);
    CHECK_INT(dsv4_f32_to_e4m3(INFINITY, DSV4_ROUND_NEAREST_EVEN, true), 0x7e);
    CHECK_INT(dsv4_f32_to_e4m3(-500.0f, DSV4_ROUND_TIES_LOWER, true), 0xfe);
    CHECK_INT(dsv4_f32_to_e4m3(0x1p-10f, DSV4_ROUND_NEAREST_EVEN, false), 0x00);
    CHECK_INT(dsv4_f32_to_e4m3(0x1p-10f * 1.01f, DSV4_ROUND_NEAREST_EVEN, false), 0x01);
    CHECK_INT(dsv4_f32_to_e4m3(1e-45f, DSV4_ROUND_NEAREST_EVEN, false), 0x00);
    CHECK_INT(dsv4_f32_to_e4m3(-1e-45f, DSV4_ROUND_NEAREST_EVEN, false), 0x80);
    CHECK_INT(dsv4_f32_to_e4m3(-1e-45f, DSV4_ROUND_TIES_LOWER, false), 0x00);
    CHECK_INT(dsv4_f32_to_e4m3(NAN, DSV4_ROUND_NEAREST_EVEN, true) & 0x7f, 0x7f);
    /* the table is the decoder */
    CHECK(dsv4_e4m3_table()[0x38] == 1.0f && dsv4_e4m3_table()[0x7e] == 448.0f);
}

static void test_e8m0(void)
{
    int bad = 0;
    for (int b = 0; b < 255; b++) {
        float v = dsv4_e8m0_to_f32((uint8_t)b);
        bad += v != ldexpf(1.0f, b - 127);
        bad += dsv4_e8m0_from_pow2(v) != b;
    }
    CHECK_INT(bad, 0);
    CHECK(isnan(dsv4_e8m0_to_f32(0xff)));
}

static void test_e2m1(void)
{
    static const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    int bad = 0;
    for (int c = 0; c < 16; c++) {
        float v = dsv4_e2m1_to_f32((uint8_t)c);
        bad += v != ((c & 8) ? -grid[c & 7] : grid[c & 7]) || !!signbit(v) != !!(c & 8);
        bad += dsv4_f32_to_e2m1(v, DSV4_ROUND_NEAREST_EVEN) != c;
        if (c != 8)
            bad += dsv4_f32_to_e2m1(v, DSV4_ROUND_TIES_LOWER) != c;
    }
    CHECK_INT(bad, 0);
    bad = 0;
    for (int c = 0; c < 7; c++) {
        float mid = (grid[c] + grid[c + 1]) / 2;
        int even = (c & 1) ? c + 1 : c;
        bad += dsv4_f32_to_e2m1(mid, DSV4_ROUND_NEAREST_EVEN) != even;
        bad += dsv4_f32_to_e2m1(mid, DSV4_ROUND_TIES_LOWER) != c;
        bad += dsv4_f32_to_e2m1(-mid, DSV4_ROUND_NEAREST_EVEN) != (8 | even);
        bad += dsv4_f32_to_e2m1(nextafterf(mid, 0), DSV4_ROUND_NEAREST_EVEN) != c;
        bad += dsv4_f32_to_e2m1(nextafterf(mid, 9), DSV4_ROUND_TIES_LOWER) != c + 1;
    }
    CHECK_INT(bad, 0);
    /* the recipe's examples (formats.md §1.2, ties to lower) */
    CHECK_INT(dsv4_f32_to_e2m1(0.75f, DSV4_ROUND_TIES_LOWER), 1);
    CHECK_INT(dsv4_f32_to_e2m1(5.0f, DSV4_ROUND_TIES_LOWER), 6);
    CHECK_INT(dsv4_f32_to_e2m1(-0.2f, DSV4_ROUND_TIES_LOWER), 0);
    CHECK_INT(dsv4_f32_to_e2m1(-0.2f, DSV4_ROUND_NEAREST_EVEN), 8);
    CHECK_INT(dsv4_f32_to_e2m1(7.0f, DSV4_ROUND_NEAREST_EVEN), 7);
    CHECK_INT(dsv4_f32_to_e2m1(-INFINITY, DSV4_ROUND_NEAREST_EVEN), 15);
}

static void test_pow2_scale(void)
{
    /* exact powers: 448 * 2^k -> 2^k only if amax * (1/448) is exactly 2^k */
    CHECK(dsv4_pow2_scale(448.0f, 448.0f) == 2.0f || dsv4_pow2_scale(448.0f, 448.0f) == 1.0f);
    CHECK(dsv4_pow2_scale(6.0f, 6.0f) == 2.0f || dsv4_pow2_scale(6.0f, 6.0f) == 1.0f);
    CHECK(dsv4_pow2_scale(1e-4f, 448.0f) == 0x1p-22f); /* 2.23e-7 -> 2^-22 */
    CHECK(dsv4_pow2_scale(6.0f * 0x1p-126f, 6.0f) == 0x1p-126f);
    CHECK(isnan(dsv4_pow2_scale(NAN, 448.0f)));
    /* bit-exact rule against a direct ceil(log2) on the FP32 product */
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = 0x38000000u + rnd() % 0x0e000000u; /* ~3e-5 .. 3e4 */
        float a, t, s;
        memcpy(&a, &u, 4);
        t = a * (1.0f / 448.0f);
        s = dsv4_pow2_scale(a, 448.0f);
        bad += !(s >= t && s / 2 < t) || frexpf(s, &(int){0}) != 0.5f;
    }
    CHECK_INT(bad, 0);
}

static void test_dequant(void)
{
    enum { R = 130, C = 200 };
    static uint8_t w8[R * C], s8[2 * 2], w4[R * 100], s32[R * 7], s16[R * 13];
    static float out[R * C];
    for (int i = 0; i < R * C; i++)
        w8[i] = (uint8_t)rnd();
    for (int i = 0; i < R * 100; i++)
        w4[i] = (uint8_t)rnd();
    for (int i = 0; i < 4; i++)
        s8[i] = (uint8_t)(120 + i);
    for (int i = 0; i < R * 7; i++)
        s32[i] = (uint8_t)(110 + rnd() % 20);
    for (int i = 0; i < R * 13; i++)
        s16[i] = (uint8_t)(rnd() % 0x7f);
    int bad = 0;
    dsv4_dequant_fp8_block(w8, s8, R, C, 3, R - 3, out);
    for (int i = 3; i < R; i++)
        for (int j = 0; j < C; j++) {
            float ref = e4m3_formula(w8[i * C + j]) * ldexpf(1, s8[(i / 128) * 2 + j / 128] - 127);
            float v = out[(i - 3) * C + j];
            bad += !(v == ref || (isnan(v) && isnan(ref)));
        }
    CHECK_INT(bad, 0);
    dsv4_dequant_mxfp4(w4, s32, R, C, 0, R, out);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            int nib = (w4[i * 100 + j / 2] >> (j % 2 * 4)) & 15;
            bad += out[i * C + j] !=
                   dsv4_e2m1_to_f32((uint8_t)nib) * ldexpf(1, s32[i * 7 + j / 32] - 127);
        }
    CHECK_INT(bad, 0);
    dsv4_dequant_nvfp4(w4, s16, 0.37f, R, C, 5, 2, out);
    for (int i = 5; i < 7; i++)
        for (int j = 0; j < C; j++) {
            int nib = (w4[i * 100 + j / 2] >> (j % 2 * 4)) & 15;
            double ref = (double)dsv4_e2m1_to_f32((uint8_t)nib) *
                         e4m3_formula(s16[i * 13 + j / 16]) * 0.37f;
            bad += out[(i - 5) * C + j] != (float)ref;
        }
    CHECK_INT(bad, 0);
}

static void test_act(void)
{
    enum { N = 300 };
    float x[N], y[N], s[3];
    uint8_t q[N], q4[N / 2], sf[N / 16 + 1];
    for (int i = 0; i < N; i++)
        x[i] = ldexpf((float)((int)(rnd() % 2001) - 1000), (int)(rnd() % 20) - 16);
    x[5] = 0.0f;
    dsv4_act_quant_fp8(x, N, 128, q, s);
    int bad = 0;
    for (int g = 0; g < 3; g++) {
        float amax = 0;
        for (int i = g * 128; i < N && i < g * 128 + 128; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float sc = dsv4_pow2_scale(fmaxf(amax, 1e-4f), 448.0f);
        bad += s[g] != sc;
        for (int i = g * 128; i < N && i < g * 128 + 128; i++) {
            float v = dsv4_e4m3_to_f32(q[i]) * sc;
            /* nearest representable: error at most half a quantum of the code */
            bad += fabsf(v - x[i]) > fabsf(x[i]) * 0x1p-4f + sc * 0x1p-10f;
            bad += fabsf(dsv4_e4m3_to_f32(q[i])) > 448.0f;
        }
    }
    CHECK_INT(bad, 0);
    memcpy(y, x, sizeof(x));
    dsv4_act_sim_fp8(y, N, 128);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += y[i] != dsv4_e4m3_to_f32(q[i]) * s[i / 128];
    CHECK_INT(bad, 0);
    /* FP4 simulation: idempotent, and values are grid * a power of two */
    memcpy(y, x, sizeof(x));
    dsv4_act_sim_fp4(y, N, 32);
    float z[N];
    memcpy(z, y, sizeof(y));
    dsv4_act_sim_fp4(z, N, 32);
    CHECK(memcmp(y, z, sizeof(y)) == 0);
    /* all-zero group: floor keeps the scale finite and the output zero */
    float zero[32] = {0};
    dsv4_act_sim_fp4(zero, 32, 32);
    CHECK(zero[0] == 0.0f && zero[31] == 0.0f);
    /* NaN poisons its own group only */
    memcpy(y, x, sizeof(x));
    y[130] = NAN;
    dsv4_act_sim_fp8(y, N, 128);
    CHECK(isnan(y[129]) && isnan(y[255]) && !isnan(y[127]) && !isnan(y[256]));
    memcpy(y, x, sizeof(x));
    y[40] = NAN;
    dsv4_act_sim_fp4(y, N, 32);
    CHECK(isnan(y[33]) && !isnan(y[31]) && !isnan(y[64]));
    /* NVFP4: sf = e4m3(amax/6) with input_scale 1; dequant within half a grid
     * step (amax kept under 448 * 6, where the block scale saturates) */
    for (int i = 0; i < N; i++)
        x[i] = ldexpf(x[i], -3);
    dsv4_act_quant_nvfp4(x, N - 1, 1.0f, q4, sf);
    bad = 0;
    for (int g = 0; g * 16 < N - 1; g++) {
        float amax = 0;
        for (int i = g * 16; i < N - 1 && i < g * 16 + 16; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        bad += sf[g] != dsv4_f32_to_e4m3(amax * (1.0f / 6.0f), DSV4_ROUND_NEAREST_EVEN, true);
        float sv = dsv4_e4m3_to_f32(sf[g]);
        for (int i = g * 16; i < N - 1 && i < g * 16 + 16; i++) {
            float v = dsv4_e2m1_to_f32((q4[i / 2] >> (i % 2 * 4)) & 15) * sv;
            bad += fabsf(v - x[i]) > 0.26f * fabsf(x[i]) + sv * 0.26f + 1e-30f;
        }
    }
    CHECK_INT(bad, 0);
    CHECK_INT(q4[(N - 2) / 2] >> 4, 0); /* odd tail: high nibble stays zero */
}

int main(void)
{
    test_bf16();
    test_e4m3();
    test_e8m0();
    test_e2m1();
    test_pow2_scale();
    test_dequant();
    test_act();
    TEST_DONE();
}
