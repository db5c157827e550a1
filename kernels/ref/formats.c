/*
 * formats.c - scalar, exact conversions between FP32 and BF16, E4M3
 * (float8_e4m3fn), E8M0 and E2M1, the block dequantisers of the weight
 * formats and the activation quantisers of the reference (model.md §5,
 * formats.md §1-2).
 *
 * This file is the oracle every fast path is compared with, so it favours
 * obviously-correct arithmetic over speed: encoders find the two grid
 * neighbours of |x| by exact power-of-two scaling and pick one by the
 * rounding mode; decoders are 256/16-entry tables built once from the bit
 * layout.  Invariants: decoding is exact; encoding returns the nearest code
 * under the named rounding mode; NaN inputs never turn into finite numbers
 * in the activation quantisers (a NaN in a group makes its scale NaN, so the
 * whole group dequantises to NaN).
 */
#include "kernels/formats.h"

#include "base/dsv4.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

static float e4m3_table[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static const float e2m1_table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---------------------------------------------------------------- BF16 */

float dsv4_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t dsv4_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    /* RNE: add 0x7fff plus the lowest kept bit; carries propagate into the
     * exponent, which also rounds the largest finite values to infinity. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dsv4_bf16_round(float f)
{
    return dsv4_bf16_to_f32(dsv4_f32_to_bf16(f));
}

/* ---------------------------------------------------------------- E4M3 */

static void e4m3_init(void)
{
    for (int b = 0; b < 256; b++) {
        int e = (b >> 3) & 15, m = b & 7;
        float v;
        if (e == 15 && m == 7)
            v = NAN;
        else if (e == 0)
            v = ldexpf((float)m, -9); /* subnormal: m/8 * 2^-6 */
        else
            v = ldexpf((float)(8 + m), e - 10); /* (1 + m/8) * 2^(e-7) */
        e4m3_table[b] = (b & 0x80) ? -v : v;
    }
}

float dsv4_e4m3_to_f32(uint8_t b)
{
    pthread_once(&e4m3_once, e4m3_init);
    return e4m3_table[b];
}

const float *dsv4_e4m3_table(void)
{
    pthread_once(&e4m3_once, e4m3_init);
    return e4m3_table;
}

/*
 * Rounds the non-negative n (an exact multiple-of-quantum count) to an
 * integer under `mode`.  n is exact in FP32 because it came from |x| by a
 * power-of-two scaling, so floor/frac are exact too.
 */
static float round_count(float n, enum dsv4_round mode)
{
    float fl = floorf(n), fr = n - fl;
    if (fr > 0.5f)
        return fl + 1.0f;
    if (fr < 0.5f)
        return fl;
    if (mode == DSV4_ROUND_TIES_LOWER)
        return fl;
    return fmodf(fl, 2.0f) == 0.0f ? fl : fl + 1.0f;
}

uint8_t dsv4_f32_to_e4m3(float f, enum dsv4_round mode, bool saturate)
{
    uint32_t u = f32_bits(f);
    uint8_t sign = (u >> 24) & 0x80;
    float a = fabsf(f);
    if (a != a)
        return sign | 0x7f;
    if (a >= 512.0f) /* beyond every rounding boundary of 448 (incl. inf) */
        return saturate ? (uint8_t)(sign | 0x7e) : (uint8_t)(sign | 0x7f);
    /* quantum: 2^-9 for the subnormal range, else 2^(floor(log2 a) - 3) */
    int e = a < 0x1p-6f ? -6 : (int)((f32_bits(a) >> 23) & 0xff) - 127;
    float r = round_count(ldexpf(a, 3 - e), mode); /* integer count of quanta */
    /* r in [0, 16]: code = subnormal count, or (exp field << 3) + mantissa;
     * r == 16 carries into the next exponent, which the formula handles. */
    int code = (a < 0x1p-6f) ? (int)r : ((e + 7) << 3) + (int)r - 8;
    if (code > 0x7e)
        code = saturate ? 0x7e : 0x7f; /* 448 < |x| rounded past 448 */
    if (code == 0 && mode == DSV4_ROUND_TIES_LOWER)
        sign = 0; /* the recipe's table search writes sign = (q < 0) */
    return (uint8_t)(sign | code);
}

/* ---------------------------------------------------------------- E8M0 */

float dsv4_e8m0_to_f32(uint8_t b)
{
    if (b == 0xff)
        return NAN;
    if (b == 0)
        return 0x1p-127f; /* FP32 subnormal, exact */
    return bits_f32((uint32_t)b << 23);
}

uint8_t dsv4_e8m0_from_pow2(float x)
{
    uint32_t u = f32_bits(x);
    if (u == 0x00400000u)
        return 0;
    DSV4_ASSERT((u & 0x807fffffu) == 0 && u != 0 && (u >> 23) != 0xff);
    return (uint8_t)(u >> 23);
}

/* ---------------------------------------------------------------- E2M1 */

float dsv4_e2m1_to_f32(uint8_t nibble)
{
    return e2m1_table[nibble & 15];
}

uint8_t dsv4_f32_to_e2m1(float f, enum dsv4_round mode)
{
    uint8_t sign = (f32_bits(f) >> 28) & 8;
    float a = fabsf(f);
    uint8_t c;
    if (a != a)
        return 0;
    /* Decision points are the midpoints between grid values; at a midpoint
     * RNE picks the code with an even mantissa bit (even code), ties-lower
     * the smaller magnitude. */
    if (mode == DSV4_ROUND_TIES_LOWER)
        c = a <= 0.25f   ? 0
            : a <= 0.75f ? 1
            : a <= 1.25f ? 2
            : a <= 1.75f ? 3
            : a <= 2.5f  ? 4
            : a <= 3.5f  ? 5
            : a <= 5.0f  ? 6
                         : 7;
    else
        c = a <= 0.25f   ? 0
            : a < 0.75f  ? 1
            : a <= 1.25f ? 2
            : a < 1.75f  ? 3
            : a <= 2.5f  ? 4
            : a < 3.5f   ? 5
            : a <= 5.0f  ? 6
                         : 7;
    if (c == 0 && mode == DSV4_ROUND_TIES_LOWER)
        sign = 0;
    return sign | c;
}

/* ---------------------------------------------------------------- scales */

float dsv4_pow2_scale(float amax, float qmax)
{
    float t = amax * (1.0f / qmax);
    uint32_t u = f32_bits(t);
    uint32_t e = (u >> 23) & 0xff, m = u & 0x7fffff;
    if (t != t)
        return NAN;
    if (e == 0xff)
        return INFINITY;
    e += m != 0;
    return bits_f32(e << 23); /* e == 0 only for t == 0: returns 0 */
}

/* ---------------------------------------------------------------- dequant */

void dsv4_dequant_fp8_block(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t cols,
                            int64_t r0, int64_t nr, float *out)
{
    int64_t sc = (cols + 127) / 128;
    DSV4_ASSERT(r0 >= 0 && nr >= 0 && r0 + nr <= rows);
    for (int64_t i = 0; i < nr; i++) {
        const uint8_t *wr = w + (r0 + i) * cols;
        const uint8_t *sr = s + ((r0 + i) / 128) * sc;
        for (int64_t j = 0; j < cols; j++)
            out[i * cols + j] = dsv4_e4m3_to_f32(wr[j]) * dsv4_e8m0_to_f32(sr[j / 128]);
    }
}

void dsv4_dequant_mxfp4(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t cols, int64_t r0,
                        int64_t nr, float *out)
{
    int64_t wb = (cols + 1) / 2, sc = (cols + 31) / 32;
    DSV4_ASSERT(r0 >= 0 && nr >= 0 && r0 + nr <= rows);
    for (int64_t i = 0; i < nr; i++) {
        const uint8_t *wr = w + (r0 + i) * wb;
        const uint8_t *sr = s + (r0 + i) * sc;
        for (int64_t j = 0; j < cols; j++) {
            uint8_t nib = (wr[j / 2] >> (4 * (j & 1))) & 15;
            out[i * cols + j] = dsv4_e2m1_to_f32(nib) * dsv4_e8m0_to_f32(sr[j / 32]);
        }
    }
}

void dsv4_dequant_nvfp4(const uint8_t *w, const uint8_t *s, float scale2, int64_t rows,
                        int64_t cols, int64_t r0, int64_t nr, float *out)
{
    int64_t wb = (cols + 1) / 2, sc = (cols + 15) / 16;
    DSV4_ASSERT(r0 >= 0 && nr >= 0 && r0 + nr <= rows);
    for (int64_t i = 0; i < nr; i++) {
        const uint8_t *wr = w + (r0 + i) * wb;
        const uint8_t *sr = s + (r0 + i) * sc;
        for (int64_t j = 0; j < cols; j++) {
            uint8_t nib = (wr[j / 2] >> (4 * (j & 1))) & 15;
            /* e2m1 * e4m3 is exact in FP32; the global scale rounds once */
            out[i * cols + j] = dsv4_e2m1_to_f32(nib) * dsv4_e4m3_to_f32(sr[j / 16]) * scale2;
        }
    }
}

/* ---------------------------------------------------------------- activations */

/* max |x| over n values; NaN if any value is NaN (fmaxf would hide it). */
static float amax_nan(const float *x, int64_t n)
{
    float m = 0.0f;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        nan |= a != a;
        m = a > m ? a : m;
    }
    return nan ? NAN : m;
}

/* clamp that keeps NaN (fminf/fmaxf would replace it) */
static float clampf(float v, float lim)
{
    return v > lim ? lim : v < -lim ? -lim : v;
}

void dsv4_act_quant_fp8(const float *x, int64_t n, int group, uint8_t *q, float *s)
{
    DSV4_ASSERT(group > 0 && n >= 0);
    for (int64_t g0 = 0, gi = 0; g0 < n; g0 += group, gi++) {
        int64_t len = DSV4_MIN((int64_t)group, n - g0);
        float amax = amax_nan(x + g0, len);
        float sc = dsv4_pow2_scale(amax < 1e-4f ? 1e-4f : amax, 448.0f);
        s[gi] = sc;
        for (int64_t i = 0; i < len; i++)
            q[g0 + i] =
                    dsv4_f32_to_e4m3(clampf(x[g0 + i] / sc, 448.0f), DSV4_ROUND_NEAREST_EVEN, true);
    }
}

void dsv4_act_sim_fp8(float *x, int64_t n, int group)
{
    DSV4_ASSERT(group > 0 && n >= 0);
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = DSV4_MIN((int64_t)group, n - g0);
        float amax = amax_nan(x + g0, len);
        float sc = dsv4_pow2_scale(amax < 1e-4f ? 1e-4f : amax, 448.0f);
        for (int64_t i = 0; i < len; i++) {
            uint8_t c =
                    dsv4_f32_to_e4m3(clampf(x[g0 + i] / sc, 448.0f), DSV4_ROUND_NEAREST_EVEN, true);
            x[g0 + i] = dsv4_e4m3_to_f32(c) * sc;
        }
    }
}

void dsv4_act_sim_fp4(float *x, int64_t n, int group)
{
    const float floor4 = 6.0f * 0x1p-126f;
    DSV4_ASSERT(group > 0 && n >= 0);
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = DSV4_MIN((int64_t)group, n - g0);
        float amax = amax_nan(x + g0, len);
        float sc = dsv4_pow2_scale(amax < floor4 ? floor4 : amax, 6.0f);
        for (int64_t i = 0; i < len; i++) {
            uint8_t c = dsv4_f32_to_e2m1(clampf(x[g0 + i] / sc, 6.0f), DSV4_ROUND_NEAREST_EVEN);
            x[g0 + i] = dsv4_e2m1_to_f32(c) * sc;
        }
    }
}

void dsv4_act_quant_nvfp4(const float *x, int64_t n, float input_scale, uint8_t *q, uint8_t *sf)
{
    float gs = 1.0f / input_scale;
    DSV4_ASSERT(n >= 0);
    for (int64_t g0 = 0, gi = 0; g0 < n; g0 += 16, gi++) {
        int64_t len = DSV4_MIN((int64_t)16, n - g0);
        float amax = amax_nan(x + g0, len);
        uint8_t sfc = dsv4_f32_to_e4m3(gs * (amax * (1.0f / 6.0f)), DSV4_ROUND_NEAREST_EVEN, true);
        float sfv = dsv4_e4m3_to_f32(sfc);
        float osc = sfv != 0.0f ? 1.0f / (sfv * (1.0f / gs)) : 0.0f;
        sf[gi] = sfc;
        for (int64_t i = 0; i < len; i++) {
            uint8_t c = dsv4_f32_to_e2m1(x[g0 + i] * osc, DSV4_ROUND_NEAREST_EVEN);
            int64_t j = g0 + i;
            if (j & 1)
                q[j / 2] = (uint8_t)((q[j / 2] & 0x0f) | (c << 4));
            else
                q[j / 2] = c; /* clears the high nibble; an odd tail leaves it 0 */
        }
    }
}
