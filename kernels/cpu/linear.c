/*
 * linear.c - fast CPU y = act(x) . W^T (kernels/cpu/cpu.h): the driver and
 * the scalar kernel set.  Per call the activations are quantised once into
 * zero-padded rows (exact dequantised values, or for NVFP4 W4A4 the int8
 * code planes), then the output rows are split over the thread pool and
 * the instruction set's `rows` computes them (cpu_int.h).  Weights are
 * read from memory once per block of LIN_MB activation rows.
 *
 * Exactness argument (why this matches kernels/ref/linear.c up to the order
 * of FP32 sums): activations are replaced by their exact dequantised values
 * (E4M3 code * power-of-two scale, or E2M1 * E4M3 block scale), weights by
 * code * block scale (E8M0: a power of two; NVFP4: E4M3, whose product with
 * an E2M1 value is exact), so every product x * w equals the reference's
 * q_a * q_w * s_a * s_w bit for bit; only the grouping of the sums differs.
 * The W4A4 path sums int8 codes exactly per half block before one product
 * with the two block scales.  NVFP4's global scale (and input_scale for
 * W4A4) multiplies the final sum as in the reference.  This holds while
 * block scales stay within about 2^-100..2^100, far beyond what
 * checkpoints use.
 *
 * Batch invariance: each set fixes one summation order per output (the
 * scalar set: rows_scalar below; the SIMD sets: linear_simd.h), followed by
 * the batch-1 and the batched kernels alike, so an output never depends on
 * m, on the other rows or on the split.
 *
 * The instruction set is chosen once: "avx512" (the AVX2 set with the
 * 16-lane kernels of linear_avx512.c) when the CPU has AVX-512F/BW/VL,
 * else "avx2+fma" (AVX2+FMA+F16C, linear_avx2.c), else "scalar";
 * DSV4_CPU_ISA=scalar|avx2+fma or dsv4_cpu_force_isa() picks a lower one
 * for diagnostics.
 */
#include "kernels/cpu/cpu.h"

#include "base/dsv4.h"
#include "kernels/cpu/cpu_int.h"
#include "kernels/formats.h"

#include <cpuid.h>
#include <immintrin.h>
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
    kern_avx512.rows = dsv4_cpu_rows_avx512;
    kern_avx512.fp8_xexp = dsv4_cpu_fp8_xexp_avx512;
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
 * Weight row o, columns k0..k0+len-1, into out[len] (exact value * block
 * scale; NVFP4 without scale2).
 */
static void decode_row_scalar(const struct dsv4_qweight *w, int64_t o, int64_t k0, int len,
                              float *d)
{
    const uint8_t *b = w->w;
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
            d[j] = dsv4_e4m3_to_f32(b[o * w->cols + k0 + j]) * dsv4_e8m0_to_f32(s[(k0 + j) / 128]);
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

/*
 * Scalar set, every format (LIN_FAM_F): per LIN_KC-column chunk, eight
 * partial sums (column k into partial k % 8) combined by one fixed tree,
 * then the chunk sums added in column order; y = that sum * alpha.  The
 * interleaving keeps long rows accurate (the error of one running FP32 sum
 * grows with the row length); the running sum waits in y between chunks.
 */
static void rows_scalar(const struct lin_job *j, int64_t r0, int64_t r1, void *scratch)
{
    const struct dsv4_qweight *w = j->w;
    float *wd = scratch;
    for (int64_t o = r0; o < r1; o++) {
        for (int64_t k0 = 0; k0 < w->cols; k0 += LIN_KC) {
            int len = (int)DSV4_MIN((int64_t)LIN_KC, w->cols - k0);
            decode_row_scalar(w, o, k0, len, wd);
            for (int64_t i = 0; i < j->m; i++) {
                const float *xi = j->x + i * j->kx + k0;
                float *yi = j->y + i * j->ldy + o;
                float a[8] = {0};
                for (int k = 0; k < len; k++)
                    a[k & 7] += xi[k] * wd[k];
                float p = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
                *yi = k0 ? *yi + p : p;
            }
        }
        for (int64_t i = 0; i < j->m; i++)
            j->y[i * j->ldy + o] *= j->alpha;
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
        .act_fp8 = act_fp8_scalar,
        .act_nvfp4 = act_nvfp4_scalar,
        .rows = rows_scalar,
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

struct call {
    const struct dsv4_cpu_kern *k;
    struct lin_job j;
    struct dsv4_pool *pool;
    enum dsv4_act act;
    const float *x; /* caller's activations [m, cols], rows ldx floats apart */
    int64_t ldx;
    int64_t rows_per_task, acts_per_task;
    uint8_t *buf; /* shared slot 0 */
};

/* activation rows [t * acts_per_task, ...) into the padded buffers of the job */
static void prep_task(void *arg, int64_t t, int thread)
{
    struct call *c = arg;
    const struct dsv4_qweight *w = c->j.w;
    const int64_t K = w->cols, kx = c->j.kx;
    int64_t i1 = DSV4_MIN(c->j.m, (t + 1) * c->acts_per_task);
    (void)thread;
    for (int64_t i = t * c->acts_per_task; i < i1; i++) {
        const float *xi = c->x + i * c->ldx;
        if (c->j.fam == LIN_FAM_I) {
            int64_t kb = (K + 15) / 16 * 16; /* act_w4a4 writes up to here */
            int8_t *qe = (int8_t *)c->j.qe + i * (kx / 2), *qo = (int8_t *)c->j.qo + i * (kx / 2);
            float *sa = (float *)c->j.sfa2 + i * (kx / 8);
            int32_t *ac = (int32_t *)c->j.acorr + i * (kx / 8);
            c->k->act_w4a4(xi, K, w->input_scale, qe, qo, sa);
            memset(qe + kb / 2, 0, (size_t)(kx - kb) / 2);
            memset(qo + kb / 2, 0, (size_t)(kx - kb) / 2);
            memset(sa + kb / 8, 0, (size_t)(kx - kb) / 8 * sizeof(float));
            for (int64_t l = 0; l < kx / 8; l++) { /* see linear_simd.h: offset weights */
                int32_t s = 0;
                for (int b = 0; b < 4; b++)
                    s += qe[4 * l + b] + qo[4 * l + b];
                ac[l] = 12 * s;
            }
            continue;
        }
        float *xa = (float *)c->j.x + i * kx;
        if (c->act == DSV4_ACT_F32)
            memcpy(xa, xi, (size_t)K * sizeof(float));
        else if (c->act == DSV4_ACT_FP8)
            c->k->act_fp8(xi, K, 128, xa);
        else
            c->k->act_nvfp4(xi, K, w->input_scale, xa);
        if (c->j.fam == LIN_FAM_B && c->k->fp8_xexp) {
            float f = ldexpf(1.0f, c->k->fp8_xexp);
            for (int64_t k = 0; k < K; k++)
                xa[k] *= f;
        }
        memset(xa + K, 0, (size_t)(kx - K) * sizeof(float));
    }
}

static void rows_task(void *arg, int64_t t, int thread)
{
    struct call *c = arg;
    int64_t r0 = t * c->rows_per_task, r1 = DSV4_MIN(c->j.w->rows, r0 + c->rows_per_task);
    void *scratch = dsv4_pool_kscratch(c->pool, thread, LIN_SCRATCH);
    DSV4_ASSERT(scratch);
    c->k->rows(&c->j, r0, r1, scratch);
}

/* bytes of shared slot 0 for m activation rows of cols columns */
static size_t act_bytes(int64_t m, int64_t cols)
{
    int64_t kx = (cols + LIN_KPAD - 1) / LIN_KPAD * LIN_KPAD;
    return (size_t)(m * kx) * sizeof(float); /* W4A4 planes need 2 bytes per column */
}

/* Pool tasks for `work` multiply-adds over `units` indivisible pieces: at least
 * LIN_TASK_WORK multiply-adds per task, at most `per` per thread (a slowed thread claims
 * fewer).  Waking the pool costs several microseconds at best: on the AVX2 EPYC a 256 x 512
 * W4A4 product at batch 1 (131K, ~14 us) broke even on two threads, 512 x 512 won.  Batch 1
 * takes up to LIN_TPT_1 tasks per thread: each task starts a new weight stream that the
 * hardware prefetchers must pick up again.  The batched path takes up to LIN_TPT_M: it is
 * compute-bound, a task start costs it nothing, and the wait for the last task of a product
 * is shorter with smaller ones (AMD EPYC family 25, batch-32 decode of `small`, perf samples
 * in the pool's waits, 5 runs each: 4.2-5.8% of the time, mean 4.6, with 4 per thread;
 * 2.8-4.4%, mean 3.6, with 16: the head's 129,280 rows had been 8 tasks of ~4 ms). */
#define LIN_TASK_WORK 131072.0
#define LIN_TPT_1     4
#define LIN_TPT_M     16
static int64_t task_count(struct dsv4_pool *p, double work, int64_t units, int per)
{
    int64_t n = (int64_t)DSV4_MIN(work / LIN_TASK_WORK, (double)dsv4_pool_threads(p) * per);
    return DSV4_MAX((int64_t)1, DSV4_MIN(n, units));
}

/* One product's job (m >= 1) over the activation buffer buf (act_bytes(m, w->cols) bytes);
 * x and y rows ldx and ldy floats apart (0: dense); the task sizes follow the pool's thread
 * count. */
static void call_setup(struct call *c, struct dsv4_pool *p, const struct dsv4_qweight *w,
                       enum dsv4_act act, const float *x, int64_t ldx, int64_t m, float *y,
                       int64_t ldy, uint8_t *buf)
{
    const struct dsv4_cpu_kern *k = get_kern();
    DSV4_ASSERT(dsv4_linear_check(w, act) == 0 && m >= 1);
    ldx = ldx ? ldx : w->cols;
    ldy = ldy ? ldy : w->rows;
    DSV4_ASSERT(ldx >= w->cols && ldy >= w->rows);
    *c = (struct call){.k = k, .pool = p, .act = act, .x = x, .ldx = ldx, .buf = buf};
    struct lin_job *j = &c->j;
    j->w = w;
    j->m = m;
    j->y = y;
    j->ldy = ldy;
    j->kx = (w->cols + LIN_KPAD - 1) / LIN_KPAD * LIN_KPAD;
    j->fam = LIN_FAM_F;
    if (w->fmt == DSV4_WFMT_FP8 && k != &dsv4_cpu_kern_scalar)
        j->fam = LIN_FAM_B;
    if (act == DSV4_ACT_NVFP4 && k->w4a4)
        j->fam = LIN_FAM_I;
    j->alpha = 1.0f;
    if (w->fmt == DSV4_WFMT_NVFP4)
        j->alpha = act == DSV4_ACT_NVFP4 ? w->scale2 * w->input_scale : w->scale2;
    if (j->fam == LIN_FAM_I) {
        j->qe = (const int8_t *)buf;
        j->qo = j->qe + m * (j->kx / 2);
        j->sfa2 = (const float *)(buf + m * j->kx);
        j->acorr = (const int32_t *)(buf + m * j->kx * 3 / 2);
    } else {
        j->x = (const float *)buf;
    }
    int64_t nprep = task_count(p, (double)(m * w->cols) * 16, m, LIN_TPT_1);
    c->acts_per_task = (m + nprep - 1) / nprep;
    /* contiguous ranges of whole tiles */
    int64_t tiles = (w->rows + LIN_NR - 1) / LIN_NR;
    int64_t ntasks = task_count(p, (double)w->rows * (double)w->cols * (double)m, tiles,
                                m > 1 ? LIN_TPT_M : LIN_TPT_1);
    c->rows_per_task = (tiles + ntasks - 1) / ntasks * LIN_NR;
}

void dsv4_cpu_linear(struct dsv4_pool *p, const struct dsv4_qweight *w, enum dsv4_act act,
                     const float *x, int64_t m, float *y)
{
    DSV4_ASSERT(m >= 0);
    if (m == 0) {
        DSV4_ASSERT(dsv4_linear_check(w, act) == 0);
        return;
    }
    uint8_t *buf = dsv4_pool_shared(p, 0, act_bytes(m, w->cols));
    DSV4_ASSERT(buf);
    struct call c;
    call_setup(&c, p, w, act, x, 0, m, y, 0, buf);
    dsv4_pool_run(p, prep_task, &c, (m + c.acts_per_task - 1) / c.acts_per_task);
    dsv4_pool_run(p, rows_task, &c, (w->rows + c.rows_per_task - 1) / c.rows_per_task);
}

/* ---------------------------------------------------------------- several products */

struct multi {
    struct call c[DSV4_CPU_LIN_MULTI_MAX];
    int64_t prep0[DSV4_CPU_LIN_MULTI_MAX + 1], rows0[DSV4_CPU_LIN_MULTI_MAX + 1];
    int n;
};

/* the product of flat task t and its own task index: the last start <= t */
static int multi_find(const int64_t *start, int n, int64_t t)
{
    int i = 0;
    while (i + 1 < n && start[i + 1] <= t)
        i++;
    return i;
}

static void multi_prep(void *arg, int64_t t, int thread)
{
    struct multi *mu = arg;
    int i = multi_find(mu->prep0, mu->n, t);
    prep_task(&mu->c[i], t - mu->prep0[i], thread);
}

static void multi_rows(void *arg, int64_t t, int thread)
{
    struct multi *mu = arg;
    int i = multi_find(mu->rows0, mu->n, t);
    rows_task(&mu->c[i], t - mu->rows0[i], thread);
}

void dsv4_cpu_linear_multi(struct dsv4_pool *p, const struct dsv4_cpu_lin *items, int n)
{
    DSV4_ASSERT(n >= 0 && n <= DSV4_CPU_LIN_MULTI_MAX);
    struct multi mu;
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += act_bytes(items[i].m, items[i].w->cols); /* multiples of 512 bytes */
    uint8_t *buf = dsv4_pool_shared(p, 0, DSV4_MAX(bytes, (size_t)1));
    DSV4_ASSERT(buf);
    mu.n = 0;
    mu.prep0[0] = mu.rows0[0] = 0;
    for (int i = 0; i < n; i++) {
        const struct dsv4_cpu_lin *it = &items[i];
        if (it->m <= 0) {
            DSV4_ASSERT(it->m == 0);
            continue;
        }
        struct call *c = &mu.c[mu.n];
        call_setup(c, p, it->w, it->act, it->x, it->ldx, it->m, it->y, it->ldy, buf);
        buf += act_bytes(it->m, it->w->cols);
        mu.prep0[mu.n + 1] = mu.prep0[mu.n] + (it->m + c->acts_per_task - 1) / c->acts_per_task;
        mu.rows0[mu.n + 1] =
                mu.rows0[mu.n] + (it->w->rows + c->rows_per_task - 1) / c->rows_per_task;
        mu.n++;
    }
    if (mu.n == 0)
        return;
    dsv4_pool_run(p, multi_prep, &mu, mu.prep0[mu.n]);
    dsv4_pool_run(p, multi_rows, &mu, mu.rows0[mu.n]);
}

int dsv4_cpu_linear_reserve(struct dsv4_pool *p, int64_t max_m, int64_t max_cols)
{
    if (max_m < 1 || max_cols < 1 || max_cols > (INT64_C(1) << 31) || max_m > (INT64_C(1) << 20))
        return dsv4_error(DSV4_EINVAL, "cpu linear: cannot reserve for m %lld, cols %lld",
                          (long long)max_m, (long long)max_cols);
    if (!dsv4_pool_shared(p, 0, act_bytes(max_m, max_cols)))
        return dsv4_error(DSV4_ENOMEM, "cpu linear: out of memory reserving %lld x %lld",
                          (long long)max_m, (long long)max_cols);
    return 0;
}

/* ------------------------------------------------------------ FMA peak */

#define PEAK_ITERS 1000000 /* x 12 vector FMAs per task (about 5 ms); 4 tasks per thread */

__attribute__((target("avx512f"))) static float peak_avx512(void)
{
    __m512 a[12], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (int it = 0; it < PEAK_ITERS; it++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    }
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_ps(a[i]);
    return s;
}

__attribute__((target("avx2,fma"))) static float peak_avx2(void)
{
    __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (int it = 0; it < PEAK_ITERS; it++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    }
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += a[i][0] + a[i][7];
    return s;
}

static float peak_sse(void)
{
    __m128 a[12], x = _mm_set1_ps(1.0000001f), y = _mm_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm_set1_ps((float)i);
    for (int it = 0; it < PEAK_ITERS; it++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] =
                _mm_add_ps(_mm_mul_ps(a[i], x), y);
    }
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += a[i][0];
    return s;
}

struct peak_job {
    int lanes;
    float sink[1024];
};

static void peak_task(void *arg, int64_t i, int th)
{
    struct peak_job *j = arg;
    (void)th;
    j->sink[i & 1023] = j->lanes == 16 ? peak_avx512() : j->lanes == 8 ? peak_avx2() : peak_sse();
}

double dsv4_cpu_fma_peak(struct dsv4_pool *p)
{
    const char *isa = dsv4_cpu_isa();
    struct peak_job j = {.lanes = !strcmp(isa, "avx512") ? 16 : !strcmp(isa, "avx2+fma") ? 8 : 4};
    int n = dsv4_pool_threads(p);
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t = dsv4_now();
        dsv4_pool_run(p, peak_task, &j, 4 * n);
        t = dsv4_now() - t;
        /* FMA: 2 FLOP per lane; SSE multiply + add: the same 2 per lane */
        double f = 4.0 * n * PEAK_ITERS * 12 * j.lanes * 2 / t;
        best = f > best ? f : best;
    }
    return best;
}
