/*
 * linear.c - fast CPU y = act(x) . W^T (kernels/cpu/cpu.h): activation
 * quantisation once per call, then output rows split over the thread pool;
 * each task walks tiles of LIN_RT weight rows, decodes a LIN_KC-column chunk
 * of the tile into per-thread L1 scratch and takes its dot products with
 * every activation row, so weights are read from memory exactly once per
 * call whatever the batch.  Batch 1 is memory-bound, so two formats have
 * fused paths that never write decoded weights: FP8 (decode to FP16 bits,
 * widen, FMA; cols % 128 == 0) and NVFP4 W4A4 (integer dot products of the
 * int8 2*E2M1 codes of weights and activations per 16 block, exact, then
 * one FMA with the product of the two block scales; cols % 64 == 0).
 *
 * Exactness argument (why this matches kernels/ref/linear.c up to the order
 * of FP32 sums): activations are replaced by their exact dequantised values
 * (E4M3 code * power-of-two scale, or E2M1 * E4M3 block scale), weights by
 * code * block scale (E8M0: a power of two; NVFP4: E4M3, whose product with
 * an E2M1 value is exact), so every product x * w equals the reference's
 * q_a * q_w * s_a * s_w bit for bit; only the grouping of the sums differs.
 * NVFP4's global scale (and input_scale for W4A4) multiplies the final sum
 * as in the reference.  This holds while block scales stay within about
 * 2^-100..2^100, far beyond what checkpoints use.
 *
 * The instruction set is chosen once: "avx512" (the AVX2 set with the
 * AVX-512 kernels of linear_avx512.c over it) when the CPU has AVX-512F/BW/VL,
 * else "avx2+fma" (AVX2+FMA+F16C, linear_avx2.c), else "scalar";
 * DSV4_CPU_ISA=scalar|avx2+fma or dsv4_cpu_force_isa() picks a lower one
 * for diagnostics.
 */
#include "kernels/cpu/cpu.h"

#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- dispatch */

static const struct dsv4_cpu_kern *kern;
static struct dsv4_cpu_kern kern_avx512; /* the AVX2 set with AVX-512 overrides */
static pthread_once_t kern_once = PTHREAD_ONCE_INIT;

/* F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know "f16c". */
static bool have_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

static bool have_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
}

static bool have_avx512(void)
{
    return have_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

static void kern_init(void)
{
    const char *env = getenv("DSV4_CPU_ISA");
    kern_avx512 = dsv4_cpu_kern_avx2;
    kern_avx512.name = "avx512";
    kern_avx512.gemv_fp8 = dsv4_cpu_gemv_fp8_avx512;
    kern_avx512.dot = dsv4_cpu_dot_avx512;
    kern_avx512.decode = dsv4_cpu_decode_avx512;
    if (__builtin_cpu_supports("avx512vnni"))
        kern_avx512.gemv_w4a4 = dsv4_cpu_gemv_w4a4_avx512;
    if (__builtin_cpu_supports("avx512bf16"))
        kern_avx512.gemv_mxfp4 = dsv4_cpu_gemv_mxfp4_bf16;
    kern = &dsv4_cpu_kern_scalar;
    if (env && !strcmp(env, "scalar"))
        return;
    if (have_avx2())
        kern = &dsv4_cpu_kern_avx2;
    if (have_avx512() && !(env && !strcmp(env, "avx2+fma")))
        kern = &kern_avx512;
}

static const struct dsv4_cpu_kern *get_kern(void)
{
    pthread_once(&kern_once, kern_init);
    return kern;
}

const char *dsv4_cpu_isa(void)
{
    return get_kern()->name;
}

int dsv4_cpu_force_isa(const char *name)
{
    const struct dsv4_cpu_kern *k = get_kern();
    if (!strcmp(name, "scalar"))
        k = &dsv4_cpu_kern_scalar;
    else if (!strcmp(name, "avx2+fma") && have_avx2())
        k = &dsv4_cpu_kern_avx2;
    else if (!strcmp(name, "avx512") && have_avx512())
        k = &kern_avx512;
    else
        return dsv4_error(DSV4_ENOTSUP, "cpu: instruction set '%s' not available", name);
    kern = k;
    return 0;
}

/* ---------------------------------------------------------------- scalar kernels */

/*
 * Decodes weight rows r0..r0+nr-1, columns k0..k0+len-1 into out[nr][len]
 * (value * block scale; NVFP4 without scale2).  k0 is a multiple of 128.
 */
static void decode_scalar(const struct dsv4_qweight *w, int64_t r0, int nr, int64_t k0, int len,
                          float *out)
{
    const uint8_t *b = w->w;
    for (int r = 0; r < nr; r++) {
        int64_t o = r0 + r;
        float *d = out + (int64_t)r * len;
        switch (w->fmt) {
        case DSV4_WFMT_F32:
            memcpy(d, (const float *)w->w + o * w->cols + k0, (size_t)len * sizeof(float));
            break;
        case DSV4_WFMT_BF16:
            for (int j = 0; j < len; j++)
                d[j] = dsv4_bf16_to_f32(((const uint16_t *)w->w)[o * w->cols + k0 + j]);
            break;
        case DSV4_WFMT_FP8: {
            const uint8_t *s = w->scale + (o / 128) * ((w->cols + 127) / 128);
            for (int j = 0; j < len; j++)
                d[j] = dsv4_e4m3_to_f32(b[o * w->cols + k0 + j]) *
                       dsv4_e8m0_to_f32(s[(k0 + j) / 128]);
            break;
        }
        case DSV4_WFMT_MXFP4:
        case DSV4_WFMT_NVFP4: {
            int bs = w->fmt == DSV4_WFMT_MXFP4 ? 32 : 16;
            const uint8_t *wr = b + o * ((w->cols + 1) / 2);
            const uint8_t *s = w->scale + o * ((w->cols + bs - 1) / bs);
            for (int j = 0; j < len; j++) {
                int64_t k = k0 + j;
                float v = dsv4_e2m1_to_f32((wr[k / 2] >> (4 * (k & 1))) & 15);
                float sc = bs == 32 ? dsv4_e8m0_to_f32(s[k / bs]) : dsv4_e4m3_to_f32(s[k / bs]);
                d[j] = v * sc;
            }
            break;
        }
        }
    }
}

static void dot_scalar(const float *x, int64_t xs, int nm, const float *wt, int nr, int len,
                       float *out)
{
    for (int i = 0; i < nm; i++)
        for (int r = 0; r < nr; r++) {
            float acc = 0.0f;
            for (int j = 0; j < len; j++)
                acc += x[i * xs + j] * wt[(int64_t)r * len + j];
            out[i * LIN_RT + r] = acc;
        }
}

static void act_fp8_scalar(const float *x, int64_t n, int group, float *out)
{
    memcpy(out, x, (size_t)n * sizeof(float));
    dsv4_act_sim_fp8(out, n, group);
}

static void act_nvfp4_scalar(const float *x, int64_t n, float input_scale, float *out)
{
    uint8_t q[8], sf;
    for (int64_t g0 = 0; g0 < n; g0 += 16) {
        int64_t len = DSV4_MIN((int64_t)16, n - g0);
        dsv4_act_quant_nvfp4(x + g0, len, input_scale, q, &sf);
        float s = dsv4_e4m3_to_f32(sf);
        for (int64_t i = 0; i < len; i++)
            out[g0 + i] = dsv4_e2m1_to_f32((q[i / 2] >> (4 * (i & 1))) & 15) * s;
    }
}

const struct dsv4_cpu_kern dsv4_cpu_kern_scalar = {
        .name = "scalar",
        .decode = decode_scalar,
        .dot = dot_scalar,
        .act_fp8 = act_fp8_scalar,
        .act_nvfp4 = act_nvfp4_scalar,
};

/* ---------------------------------------------------------------- activations */

void dsv4_cpu_act_fp8(const float *x, int64_t n, int group, float *out)
{
    DSV4_ASSERT(group > 0 && n >= 0);
    get_kern()->act_fp8(x, n, group, out);
}

void dsv4_cpu_act_nvfp4(const float *x, int64_t n, float input_scale, float *out)
{
    DSV4_ASSERT(n >= 0);
    get_kern()->act_nvfp4(x, n, input_scale, out);
}

/* ---------------------------------------------------------------- product */

struct job {
    const struct dsv4_cpu_kern *k;
    const struct dsv4_qweight *w;
    struct dsv4_pool *pool;
    const float *xa; /* [m, cols] exact dequantised activations */
    int64_t m;
    float *y;
    float alpha; /* final factor (NVFP4 scale2 [* input_scale]) or 1 */
    int64_t rows_per_task;
    int path;              /* PATH_* */
    const int8_t *qe, *qo; /* PATH_W4A4 activations */
    const float *sfa2;
    const uint16_t *xe, *xo; /* PATH_MXFP4 activations */
};

enum { PATH_TILES = 0, PATH_GEMV_FP8 = 1, PATH_W4A4 = 2, PATH_MXFP4 = 3 };

static void task(void *arg, int64_t t, int thread)
{
    const struct job *j = arg;
    const struct dsv4_qweight *w = j->w;
    int64_t r_end = DSV4_MIN(w->rows, (t + 1) * j->rows_per_task);
    int64_t r_beg = t * j->rows_per_task;
    if (j->path == PATH_GEMV_FP8) {
        j->k->gemv_fp8(w, j->xa, r_beg, r_end - r_beg, j->y + r_beg);
        return;
    }
    if (j->path == PATH_MXFP4) {
        j->k->gemv_mxfp4(w, j->xe, j->xo, j->xa, r_beg, r_end - r_beg, j->y + r_beg);
        return;
    }
    if (j->path == PATH_W4A4) {
        j->k->gemv_w4a4(w, j->qe, j->qo, j->sfa2, j->alpha, r_beg, r_end - r_beg, j->y + r_beg);
        return;
    }
    float *buf = dsv4_pool_kscratch(j->pool, thread, LIN_SCRATCH);
    float part[2 * LIN_RT];
    DSV4_ASSERT(buf);
    for (int64_t r0 = t * j->rows_per_task; r0 < r_end; r0 += LIN_RT) {
        int nr = (int)DSV4_MIN((int64_t)LIN_RT, r_end - r0);
        for (int64_t k0 = 0; k0 < w->cols; k0 += LIN_KC) {
            int len = (int)DSV4_MIN((int64_t)LIN_KC, w->cols - k0);
            j->k->decode(w, r0, nr, k0, len, buf);
            for (int64_t i = 0; i < j->m; i += 2) {
                int nm = (int)DSV4_MIN((int64_t)2, j->m - i);
                j->k->dot(j->xa + i * w->cols + k0, w->cols, nm, buf, nr, len, part);
                for (int ii = 0; ii < nm; ii++) {
                    float *yi = j->y + (i + ii) * w->rows + r0;
                    for (int r = 0; r < nr; r++)
                        yi[r] = k0 ? yi[r] + part[ii * LIN_RT + r] : part[ii * LIN_RT + r];
                }
            }
        }
        if (j->alpha != 1.0f)
            for (int64_t i = 0; i < j->m; i++)
                for (int r = 0; r < nr; r++)
                    j->y[i * w->rows + r0 + r] *= j->alpha;
    }
}

void dsv4_cpu_linear(struct dsv4_pool *p, const struct dsv4_qweight *w, enum dsv4_act act,
                     const float *x, int64_t m, float *y)
{
    const struct dsv4_cpu_kern *k = get_kern();
    struct job j = {.k = k, .w = w, .pool = p, .xa = x, .m = m, .y = y, .alpha = 1.0f};
    DSV4_ASSERT(dsv4_linear_check(w, act) == 0 && m >= 0);
    if (m == 0)
        return;
    if (m == 1 && act == DSV4_ACT_NVFP4 && k->gemv_w4a4 && w->cols % 64 == 0) {
        /* batch 1, W4A4: integer dot products on the E2M1 codes */
        size_t half = (size_t)w->cols / 2;
        uint8_t *s = dsv4_pool_shared(p, 0, 2 * half + (size_t)w->cols / 8 * sizeof(float));
        DSV4_ASSERT(s);
        j.path = PATH_W4A4;
        j.qe = (const int8_t *)s;
        j.qo = (const int8_t *)s + half;
        j.sfa2 = (const float *)(s + 2 * half);
        k->act_w4a4(x, w->cols, w->input_scale, (int8_t *)s, (int8_t *)s + half,
                    (float *)(s + 2 * half));
    } else if (act != DSV4_ACT_F32) {
        float *xa = dsv4_pool_shared(p, 0, (size_t)(m * w->cols) * sizeof(float));
        DSV4_ASSERT(xa);
        for (int64_t i = 0; i < m; i++) {
            if (act == DSV4_ACT_FP8)
                k->act_fp8(x + i * w->cols, w->cols, 128, xa + i * w->cols);
            else
                k->act_nvfp4(x + i * w->cols, w->cols, w->input_scale, xa + i * w->cols);
        }
        j.xa = xa;
    }
    if (w->fmt == DSV4_WFMT_NVFP4)
        j.alpha = act == DSV4_ACT_NVFP4 ? w->scale2 * w->input_scale : w->scale2;
    if (m == 1 && w->fmt == DSV4_WFMT_FP8 && k->gemv_fp8 && w->cols % 128 == 0)
        j.path = PATH_GEMV_FP8;
    if (m == 1 && w->fmt == DSV4_WFMT_MXFP4 && act == DSV4_ACT_FP8 && k->gemv_mxfp4 &&
        w->cols % 64 == 0) {
        /* BF16 copies of the (BF16-exact) FP8 activations, split by parity */
        size_t half = (size_t)w->cols / 2;
        uint16_t *b = dsv4_pool_shared(p, 1, 2 * half * sizeof(uint16_t));
        DSV4_ASSERT(b);
        for (size_t i = 0; i < half; i++) {
            uint32_t u0, u1;
            memcpy(&u0, &j.xa[2 * i], 4);
            memcpy(&u1, &j.xa[2 * i + 1], 4);
            b[i] = (uint16_t)(u0 >> 16);
            b[half + i] = (uint16_t)(u1 >> 16);
        }
        j.xe = b;
        j.xo = b + half;
        j.path = PATH_MXFP4;
    }
    /* contiguous row ranges, several per thread so that a slowed thread claims fewer */
    int64_t tiles = (w->rows + LIN_RT - 1) / LIN_RT;
    int64_t ntasks = DSV4_MIN(tiles, (int64_t)dsv4_pool_threads(p) * 8);
    j.rows_per_task = ((tiles + ntasks - 1) / ntasks) * LIN_RT;
    ntasks = (w->rows + j.rows_per_task - 1) / j.rows_per_task;
    dsv4_pool_run(p, task, &j, ntasks);
}

int dsv4_cpu_linear_reserve(struct dsv4_pool *p, int64_t max_m, int64_t max_cols)
{
    if (max_m < 1 || max_cols < 1 || max_cols > (INT64_C(1) << 31) || max_m > (INT64_C(1) << 20))
        return dsv4_error(DSV4_EINVAL, "cpu linear: cannot reserve for m %lld, cols %lld",
                          (long long)max_m, (long long)max_cols);
    /* slot 0: dequantised activations (or the W4A4 int8 planes, smaller);
     * slot 1: BF16 planes of the MXFP4 batch-1 path */
    if (!dsv4_pool_shared(p, 0, (size_t)(max_m * max_cols) * sizeof(float)) ||
        !dsv4_pool_shared(p, 1, (size_t)max_cols * sizeof(uint16_t)))
        return dsv4_error(DSV4_ENOMEM, "cpu linear: out of memory reserving %lld x %lld",
                          (long long)max_m, (long long)max_cols);
    return 0;
}
