/*
 * convert.c - the MXFP4 -> NVFP4 block math of convert.h: the lossless
 * power-of-two cast (formats.md §1.6), the published amax recipe (§1.2) with
 * its ties-to-lower rules, and the verification metrics.
 *
 * Everything here works on plain buffers, one row range at a time, so the
 * checkpoint converter can split a tensor across threads; no function
 * allocates.  The recipe's roundings are done on the FP32 bits (E4M3: keep
 * 3 mantissa bits, round up only past half a quantum) and by comparisons
 * with the grid midpoints (E2M1), which is exactly the table search with
 * ties to the lower value that the recipe performs; the unit test checks
 * both against a brute-force search.
 */
#include "tools/convert.h"

#include "base/dsv4.h"
#include "kernels/formats.h"

#include <math.h>
#include <string.h>

static const float e2m1_mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

/* Positive E4M3 value of code 0..126 (kernels/formats.h decode table). */
static float e4m3_value(int code)
{
    return dsv4_e4m3_table()[code];
}

/* 2^k as a float for -149 <= k <= 127 (exact; subnormal below -126). */
static float pow2f(int k)
{
    return ldexpf(1.0f, k);
}

const char *dsv4_convert_mode_name(enum dsv4_convert_mode m)
{
    return m == DSV4_CONVERT_AMAX ? "amax" : "lossless";
}

int dsv4_convert_mode_parse(const char *s, enum dsv4_convert_mode *out)
{
    if (!strcmp(s, "lossless")) {
        *out = DSV4_CONVERT_LOSSLESS;
        return 0;
    }
    if (!strcmp(s, "amax")) {
        *out = DSV4_CONVERT_AMAX;
        return 0;
    }
    return dsv4_error(DSV4_EINVAL, "unknown conversion mode '%s' (lossless or amax)", s);
}

const char *dsv4_convert_naming_name(enum dsv4_convert_naming n)
{
    return n == DSV4_CONVERT_NAMING_NVIDIA ? "nvidia" : "canada";
}

int dsv4_convert_naming_parse(const char *s, enum dsv4_convert_naming *out)
{
    if (!strcmp(s, "canada")) {
        *out = DSV4_CONVERT_NAMING_CANADA;
        return 0;
    }
    if (!strcmp(s, "nvidia")) {
        *out = DSV4_CONVERT_NAMING_NVIDIA;
        return 0;
    }
    return dsv4_error(DSV4_EINVAL, "unknown naming '%s' (canada or nvidia)", s);
}

void dsv4_convert_stats_add(struct dsv4_convert_stats *acc, const struct dsv4_convert_stats *s)
{
    acc->blocks += s->blocks;
    acc->exact += s->exact;
    acc->oor += s->oor;
    acc->saturated += s->saturated;
    acc->zero_scale += s->zero_scale;
}

int dsv4_convert_scan(const uint8_t *s, int64_t n, int32_t *kmax)
{
    int best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (s[i] == 0xFF)
            return dsv4_error(DSV4_EFORMAT, "E8M0 scale byte %lld is 0xFF (NaN)", (long long)i);
        if (s[i] > best)
            best = s[i];
    }
    /* byte 0 is the all-zero-block sentinel: it never sets the exponent */
    *kmax = best > 0 ? best - 127 : INT32_MIN;
    return 0;
}

int dsv4_convert_lossless_exp(int32_t kmax_a, int32_t kmax_b)
{
    int32_t k = DSV4_MAX(kmax_a, kmax_b);
    if (k == INT32_MIN)
        return 0;
    return DSV4_MAX(k - 8, -126);
}

float dsv4_convert_pow2(int e)
{
    DSV4_ASSERT(e >= -126 && e <= 127);
    return ldexpf(1.0f, e);
}

/* E4M3 code of 2^d for -9 <= d <= 8: normal (d+7)<<3, subnormal 1<<(d+9). */
static uint8_t e4m3_pow2_code(int d)
{
    return d >= -6 ? (uint8_t)((d + 7) << 3) : (uint8_t)(1 << (d + 9));
}

/* Decodes the 16 values of an MXFP4 half-block (8 packed bytes, exponent k);
 * e2m1 * 2^k is exact in FP32 for every E8M0 exponent. */
static void decode16(const uint8_t *p, int k, float *v)
{
    static const float e2m1_all[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                       -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    float sc = pow2f(k);
    for (int i = 0; i < 8; i++) {
        v[2 * i] = e2m1_all[p[i] & 0x0F] * sc;
        v[2 * i + 1] = e2m1_all[p[i] >> 4] * sc;
    }
}

/* E2M1 with the NVIDIA cast's thresholds: ties round up (away from zero). */
static uint8_t e2m1_ties_up(float x)
{
    static const float thr[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    float ax = fabsf(x);
    if (isnan(x))
        return 0;
    uint8_t idx = 0;
    while (idx < 7 && ax >= thr[idx])
        idx++;
    return (uint8_t)(idx | ((x < 0 && idx) ? 8 : 0));
}

/* Out-of-range block of the lossless cast: requantize from its amax. */
static uint8_t requant_oor(const uint8_t *src, int k, float scale2, uint8_t *dst)
{
    float v[16], amax = 0.0f;
    decode16(src, k, v);
    for (int i = 0; i < 16; i++)
        amax = fmaxf(amax, fabsf(v[i]));
    float raw = fminf(amax / (6.0f * scale2), 448.0f);
    uint8_t code = dsv4_f32_to_e4m3(raw, DSV4_ROUND_NEAREST_EVEN, true) & 0x7F;
    float sv = e4m3_value(code == 127 ? 126 : code);
    uint8_t nib[16];
    for (int i = 0; i < 16; i++)
        nib[i] = code ? e2m1_ties_up(v[i] / (sv * scale2)) : 0;
    for (int i = 0; i < 8; i++)
        dst[i] = (uint8_t)(nib[2 * i] | (nib[2 * i + 1] << 4));
    return code;
}

void dsv4_convert_lossless_rows(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows,
                                int m, uint8_t *ow, uint8_t *os, struct dsv4_convert_stats *st)
{
    DSV4_ASSERT(cols % 32 == 0);
    int64_t nb = cols / 32;
    float scale2 = dsv4_convert_pow2(m);
    struct dsv4_convert_stats loc = {0};
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *wr = w + r * (cols / 2);
        const uint8_t *sr = s + r * nb;
        uint8_t *owr = ow + r * (cols / 2);
        uint8_t *osr = os + r * (cols / 16);
        for (int64_t j = 0; j < nb; j++) {
            int k = (int)sr[j] - 127;
            int d = k - m;
            for (int h = 0; h < 2; h++) {
                const uint8_t *src = wr + j * 16 + h * 8;
                uint8_t *dst = owr + j * 16 + h * 8;
                uint8_t code;
                bool zero = true;
                for (int i = 0; i < 8; i++)
                    zero = zero && !(src[i] & 0x77);
                if (d >= -9 && d <= 8) {
                    memcpy(dst, src, 8);
                    code = e4m3_pow2_code(d);
                    loc.exact++;
                } else if (zero) {
                    /* 0 * anything == 0: exact whatever the exponent */
                    memcpy(dst, src, 8);
                    code = 0;
                    loc.exact++;
                } else {
                    code = requant_oor(src, k, scale2, dst);
                    loc.oor++;
                }
                loc.zero_scale += code == 0;
                osr[2 * j + h] = code;
                loc.blocks++;
            }
        }
    }
    dsv4_convert_stats_add(st, &loc);
}

float dsv4_convert_amax(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows)
{
    DSV4_ASSERT(cols % 32 == 0);
    int64_t nb = cols / 32;
    float amax = 0.0f;
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *p = w + r * (cols / 2) + j * 16;
            int mx = 0;
            for (int i = 0; i < 16; i++)
                mx = DSV4_MAX(mx, DSV4_MAX(p[i] & 7, (p[i] >> 4) & 7));
            float v = e2m1_mag[mx] * pow2f((int)s[r * nb + j] - 127);
            amax = fmaxf(amax, v);
        }
    }
    return amax;
}

float dsv4_convert_amax_scale2(float amax_a, float amax_b)
{
    float a = fmaxf(amax_a, amax_b);
    if (a == 0.0f)
        return 1.0f;
    return a / 2688.0f;
}

uint8_t dsv4_convert_e4m3_ties_lower(float v)
{
    if (!(v > 0.0f))
        return 0;
    if (v >= 448.0f)
        return 126;
    if (v < 0.015625f) {
        /* subnormal range, quantum 2^-9: n = v * 2^9 is exact */
        float n = v * 512.0f, lo = floorf(n);
        return (uint8_t)(lo + (n - lo > 0.5f ? 1 : 0));
    }
    /* normal range: keep 3 mantissa bits; the dropped 20 bits decide, and
     * exactly half of a quantum stays low.  code + 1 is the next value up
     * (a mantissa carry moves to the next exponent). */
    uint32_t bits;
    memcpy(&bits, &v, 4);
    int e = (int)((bits >> 23) & 0xFF) - 127;
    uint32_t m3 = (bits >> 20) & 7, rest = bits & 0xFFFFF;
    int code = ((e + 7) << 3) | (int)m3;
    if (rest > 0x80000)
        code++;
    return (uint8_t)DSV4_MIN(code, 126);
}

/* Recipe E2M1: index = number of midpoints strictly below |x| (a tie stays
 * low, > 6 saturates, NaN gives 0), sign only for a non-zero magnitude. */
static inline uint8_t e2m1_ties_lower(float x)
{
    float ax = fabsf(x);
    uint8_t idx = (uint8_t)((ax > 0.25f) + (ax > 0.75f) + (ax > 1.25f) + (ax > 1.75f) +
                            (ax > 2.5f) + (ax > 3.5f) + (ax > 5.0f));
    return (uint8_t)(idx | ((x < 0 && idx) ? 8 : 0));
}

uint8_t dsv4_convert_e2m1_ties_lower(float x)
{
    return e2m1_ties_lower(x);
}

void dsv4_convert_amax_rows(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows,
                            float scale2, uint8_t *ow, uint8_t *os, struct dsv4_convert_stats *st)
{
    DSV4_ASSERT(cols % 32 == 0);
    int64_t nb = cols / 32;
    struct dsv4_convert_stats loc = {0};
    for (int64_t r = 0; r < nrows; r++) {
        for (int64_t j = 0; j < nb; j++) {
            int k = (int)s[r * nb + j] - 127;
            for (int h = 0; h < 2; h++) {
                const uint8_t *src = w + r * (cols / 2) + j * 16 + h * 8;
                uint8_t *dst = ow + r * (cols / 2) + j * 16 + h * 8;
                float v[16], x[16], amax = 0.0f;
                decode16(src, k, v);
                for (int i = 0; i < 16; i++)
                    amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
                float raw = (amax / 6.0f) / scale2;
                raw = fminf(fmaxf(raw, 0.0f), 448.0f);
                uint8_t code = dsv4_convert_e4m3_ties_lower(raw);
                float denom = scale2 * (code ? e4m3_value(code) : 1.0f);
                if (denom == 0.0f) /* scale2 underflowed: nothing is representable */
                    memset(x, 0, sizeof(x));
                else
                    for (int i = 0; i < 16; i++)
                        x[i] = v[i] / denom;
                uint8_t nib[16];
                int sat = 0;
                for (int i = 0; i < 16; i++) {
                    sat += fabsf(x[i]) > 6.0f;
                    nib[i] = e2m1_ties_lower(x[i]);
                }
                loc.saturated += (uint64_t)sat;
                for (int i = 0; i < 8; i++)
                    dst[i] = (uint8_t)(nib[2 * i] | (nib[2 * i + 1] << 4));
                os[r * (cols / 16) + 2 * j + h] = code;
                loc.zero_scale += code == 0;
                loc.blocks++;
            }
        }
    }
    dsv4_convert_stats_add(st, &loc);
}

/* ---------------------------------------------------------------- verification */

void dsv4_convert_cmp_init(struct dsv4_convert_cmp *c)
{
    memset(c, 0, sizeof(*c));
}

void dsv4_convert_cmp_merge(struct dsv4_convert_cmp *acc, const struct dsv4_convert_cmp *c)
{
    acc->total += c->total;
    acc->bit_equal += c->bit_equal;
    acc->nonfinite += c->nonfinite;
    acc->max_abs = fmax(acc->max_abs, c->max_abs);
    acc->sum_rel += c->sum_rel;
    acc->n_rel += c->n_rel;
    if (c->n == 0)
        return;
    if (acc->n == 0) {
        acc->n = c->n;
        acc->mean_a = c->mean_a;
        acc->mean_b = c->mean_b;
        acc->m2a = c->m2a;
        acc->m2b = c->m2b;
        acc->cab = c->cab;
        return;
    }
    /* Chan et al. pairwise update of means and co-moments */
    double na = (double)acc->n, nb = (double)c->n, n = na + nb;
    double da = c->mean_a - acc->mean_a, db = c->mean_b - acc->mean_b;
    acc->m2a += c->m2a + da * da * na * nb / n;
    acc->m2b += c->m2b + db * db * na * nb / n;
    acc->cab += c->cab + da * db * na * nb / n;
    acc->mean_a += da * nb / n;
    acc->mean_b += db * nb / n;
    acc->n += c->n;
}

void dsv4_convert_cmp_add(struct dsv4_convert_cmp *c, const float *a, const float *b, int64_t n)
{
    struct dsv4_convert_cmp loc;
    if (n <= 0)
        return;
    dsv4_convert_cmp_init(&loc);
    double sa = 0, sb = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t ba, bb;
        memcpy(&ba, &a[i], 4);
        memcpy(&bb, &b[i], 4);
        loc.bit_equal += ba == bb;
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            loc.nonfinite++;
            continue;
        }
        double d = fabs((double)b[i] - (double)a[i]);
        loc.max_abs = fmax(loc.max_abs, d);
        if (fabs((double)a[i]) > 1e-6) {
            loc.sum_rel += d / fabs((double)a[i]);
            loc.n_rel++;
        }
        sa += a[i];
        sb += b[i];
        loc.n++;
    }
    if (loc.n) {
        loc.mean_a = sa / (double)loc.n;
        loc.mean_b = sb / (double)loc.n;
        for (int64_t i = 0; i < n; i++) {
            if (!isfinite(a[i]) || !isfinite(b[i]))
                continue;
            double da = a[i] - loc.mean_a, db = b[i] - loc.mean_b;
            loc.m2a += da * da;
            loc.m2b += db * db;
            loc.cab += da * db;
        }
    }
    loc.total = (uint64_t)n;
    dsv4_convert_cmp_merge(c, &loc);
}

double dsv4_convert_cmp_pearson(const struct dsv4_convert_cmp *c)
{
    if (c->n == 0)
        return 1.0;
    if (c->m2a == 0.0 || c->m2b == 0.0) {
        if (c->m2a == 0.0 && c->m2b == 0.0)
            return c->mean_a == c->mean_b ? 1.0 : 0.0;
        return 0.0;
    }
    return c->cab / sqrt(c->m2a * c->m2b);
}

double dsv4_convert_cmp_mean_rel(const struct dsv4_convert_cmp *c)
{
    return c->n_rel ? c->sum_rel / (double)c->n_rel : 0.0;
}
