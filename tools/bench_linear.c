/*
 * bench_linear.c - `dsv4 bench linear`: throughput of dsv4_cpu_linear for
 * every weight format on the two expert shapes of V4-Pro (7168x3072 and
 * 3072x7168) at batch 1, 8, 64 and 256, reported as GB/s of weight bytes
 * read (data + scales, dsv4_qweight_bytes) and GFLOP/s (2 * rows * cols *
 * batch per call) next to the bandwidth of a plain multi-threaded memcpy
 * measured in the same run.  The header names the CPU (model name, family
 * and model numbers from /proc/cpuinfo) and the instruction set in use, so
 * that numbers are never read without the machine they came from.
 *
 * Why the setup looks like this: the products are memory-bound at batch 1,
 * and a server CPU's last-level cache can hold a whole matrix, so each call
 * uses the next of many copies of the weights laid out in one pool larger
 * than any cache (--mem, default 1 GiB); the copy runs over buffers of the
 * same total size.  Pool bytes are random with bit 6 cleared and bit 5 set,
 * which keeps FP8/BF16/F32 values finite and normal (denormals would slow
 * the arithmetic, not the memory).  Each case runs for about --time seconds
 * and at least min(copies, 64) calls (4 from batch 32 on, compute-bound).
 * Because the machine may be shared, every case is also compared with a
 * copy of a quarter of the pool timed just before it (columns copyGB/s and
 * %copy), and GFLOP/s next to the FMA peak of the same threads (%peak: what
 * the batched, compute-bound cases are measured against); the whole-pool
 * copy at the start and the end shows how steady the machine was.  At
 * batch 1 a last column, cacheGB/s, runs the same product over about 2 MiB
 * of the weight's rows, the same bytes every call (so from the caches): the
 * rate at which the kernel decodes and multiplies, which bounds its rate
 * from memory whatever the bandwidth.
 *
 * Invariants: every option is parsed strictly (whole string, in range) and
 * every --formats name must be known, so a typo exits 2 instead of timing
 * nothing; the pool is checked up front to hold one copy of the largest
 * selected weight and to fit (twice, source + copy) in physical memory.
 */
#include "base/dsv4.h"
#include "kernels/cpu/cpu.h"
#include "kernels/linear.h"
#include "tools/cmds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct copy_job {
    const uint8_t *src;
    uint8_t *dst;
    size_t bytes, chunk;
};

static void copy_task(void *arg, int64_t i, int thread)
{
    const struct copy_job *c = arg;
    size_t off = (size_t)i * c->chunk, n = DSV4_MIN(c->chunk, c->bytes - off);
    memcpy(c->dst + off, c->src + off, n);
}

/* bytes copied per second by a pool-wide memcpy of `bytes`, best of `reps` */
static double copy_gbs(struct dsv4_pool *p, const uint8_t *src, uint8_t *dst, size_t bytes,
                       int reps)
{
    struct copy_job c = {src, dst, bytes, 4u << 20};
    int64_t n = (int64_t)((bytes + c.chunk - 1) / c.chunk);
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t = dsv4_now();
        dsv4_pool_run(p, copy_task, &c, n);
        t = dsv4_now() - t;
        best = DSV4_MAX(best, (double)bytes / t / 1e9);
    }
    return best;
}

struct bench_opts {
    int threads, mem_mb, batches[16], nb;
    double min_time;
    bool fmt_on[5]; /* indexed like FMTS */
};

static const enum dsv4_wfmt FMTS[5] = {DSV4_WFMT_F32, DSV4_WFMT_BF16, DSV4_WFMT_FP8,
                                       DSV4_WFMT_MXFP4, DSV4_WFMT_NVFP4};
static const int64_t SHAPES[2][2] = {{7168, 3072}, {3072, 7168}};

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *s ? -1 : n; /* more than `max` entries is an error, not a silent cut */
}

/* "f32,nvfp4" -> fmt_on[]; every name must be one of FMTS */
static int parse_formats(const char *s, bool *on)
{
    int n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        size_t f = 0;
        while (f < DSV4_ARRAY_LEN(FMTS) &&
               (strlen(dsv4_wfmt_name(FMTS[f])) != len || strncmp(s, dsv4_wfmt_name(FMTS[f]), len)))
            f++;
        if (f == DSV4_ARRAY_LEN(FMTS))
            return -1;
        on[f] = true;
        n++;
        s += len + (s[len] == ',');
    }
    return n;
}

static bool parse_int(const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi)
        return false;
    *out = (int)x;
    return true;
}

static bool parse_seconds(const char *v, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= 0 && x <= 60))
        return false;
    *out = x;
    return true;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4 bench linear [--threads N] [--mem MB] [--time SEC] [--formats LIST]\n"
            "                         [--batches LIST]\n"
            "  --threads N     pool threads, 1..1024 (default: online CPUs)\n"
            "  --mem MB        weight pool and copy size, above the last-level cache,\n"
            "                  16..65536 and at least one copy of the largest selected\n"
            "                  weight (f32: 84 MiB) (default 1024)\n"
            "  --time SEC      minimum time per case, 0..60 (default 0.3)\n"
            "  --formats LIST  comma list of f32,bf16,fp8,mxfp4,nvfp4 (default all)\n"
            "  --batches LIST  comma list of up to 16 batch sizes, 1..4096 (default 1,8,64,256)\n"
            "exit status: 0 ok, 1 out of memory or thread start failure, 2 bad usage\n");
}

/* 0 ok, 1 --help printed, 2 bad usage (message printed) */
static int parse_args(int argc, char **argv, struct bench_opts *o)
{
    bool fmt_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (strcmp(a, "--threads") && strcmp(a, "--mem") && strcmp(a, "--time") &&
            strcmp(a, "--formats") && strcmp(a, "--batches")) {
            fprintf(stderr, "dsv4 bench linear: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "dsv4 bench linear: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--threads"))
            ok = parse_int(v, 1, 1024, &o->threads);
        else if (!strcmp(a, "--mem"))
            ok = parse_int(v, 16, 65536, &o->mem_mb);
        else if (!strcmp(a, "--time"))
            ok = parse_seconds(v, &o->min_time);
        else if (!strcmp(a, "--formats")) {
            if (!fmt_given)
                memset(o->fmt_on, 0, sizeof(o->fmt_on));
            fmt_given = true;
            ok = parse_formats(v, o->fmt_on) > 0;
        } else
            ok = (o->nb = parse_list(v, o->batches, 16)) > 0;
        if (!ok) {
            fprintf(stderr, "dsv4 bench linear: bad %s '%s' (see --help)\n", a, v);
            return 2;
        }
    }
    return 0;
}

/* bytes of one copy of the weights of FMTS[f] at SHAPES[sh], scales included */
static uint64_t weight_bytes(size_t f, int sh)
{
    struct dsv4_qweight w = {.fmt = FMTS[f], .rows = SHAPES[sh][0], .cols = SHAPES[sh][1]};
    return dsv4_qweight_bytes(&w);
}

/* the pool must hold one copy of every selected weight and, with the copy
 * target, fit in physical memory (else the kernel would kill us mid-run) */
static int check_mem(const struct bench_opts *o)
{
    size_t mem = (size_t)o->mem_mb << 20;
    for (size_t f = 0; f < DSV4_ARRAY_LEN(FMTS); f++)
        for (int sh = 0; sh < 2; sh++)
            if (o->fmt_on[f] && ((weight_bytes(f, sh) + 63) & ~(uint64_t)63) > mem) {
                fprintf(stderr,
                        "dsv4 bench linear: --mem %d MB cannot hold one %s weight (%.0f MiB)\n",
                        o->mem_mb, dsv4_wfmt_name(FMTS[f]),
                        (double)((weight_bytes(f, sh) + (1u << 20) - 1) >> 20));
                return 2;
            }
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0 && 2.0 * (double)mem > 0.8 * (double)pages * (double)psz) {
        fprintf(stderr,
                "dsv4 bench linear: --mem %d MB needs twice that, above 80%% of the "
                "%.0f MiB of physical memory\n",
                o->mem_mb, (double)pages * (double)psz / (1 << 20));
        return 2;
    }
    return 0;
}

struct bench_bufs {
    struct dsv4_pool *pool;
    uint8_t *buf, *dst; /* pool of weight copies, copy target: mem + 64 bytes each */
    float *x, *y;       /* [maxb, 7168] */
    size_t mem;
    double peak; /* FMA peak FLOP/s of the pool (dsv4_cpu_fma_peak) */
};

/* bytes of w's data before its scales (a weight is laid out data, then scales) */
static uint64_t data_bytes(const struct dsv4_qweight *w)
{
    if (w->fmt == DSV4_WFMT_FP8)
        return (uint64_t)(w->rows * w->cols);
    if (w->fmt == DSV4_WFMT_MXFP4 || w->fmt == DSV4_WFMT_NVFP4)
        return (uint64_t)(w->rows * ((w->cols + 1) / 2));
    return dsv4_qweight_bytes(w);
}

/* Weight bytes per second of the batch-1 product over about CACHED_BYTES of w's first rows
 * (a multiple of 128 rows: whole FP8 scale groups) in the pool's first copy, the same bytes
 * every call, so that after the first call they come from the caches: the rate of decoding
 * and multiplying alone, what the batch-1 kernel could reach with any memory. */
#define CACHED_BYTES (2 << 20)
static double cached_gbs(struct bench_bufs *b, const struct bench_opts *o,
                         const struct dsv4_qweight *w, enum dsv4_act act)
{
    struct dsv4_qweight h = *w;
    int64_t row = (int64_t)(dsv4_qweight_bytes(w) / (uint64_t)w->rows);
    h.rows = DSV4_MIN(w->rows, DSV4_MAX((int64_t)128, CACHED_BYTES / row / 128 * 128));
    h.w = b->buf;
    h.scale = b->buf + data_bytes(&h);
    double hb = (double)dsv4_qweight_bytes(&h), t0, t;
    int64_t calls = 0;
    dsv4_cpu_linear(b->pool, &h, act, b->x, 1, b->y); /* into the caches */
    t0 = dsv4_now();
    do {
        dsv4_cpu_linear(b->pool, &h, act, b->x, 1, b->y);
        calls++;
        t = dsv4_now() - t0;
    } while (t < o->min_time || calls < 64);
    return hb * (double)calls / t / 1e9;
}

/* one format x shape x batch case: prints one row */
static void run_case(struct bench_bufs *b, const struct bench_opts *o, size_t f, int sh, int m)
{
    struct dsv4_qweight w = {.fmt = FMTS[f], .rows = SHAPES[sh][0], .cols = SHAPES[sh][1]};
    enum dsv4_act act = dsv4_default_act(w.fmt);
    uint64_t wbytes = dsv4_qweight_bytes(&w), data = data_bytes(&w);
    w.scale2 = 0.0173f;
    w.input_scale = 1.0f;
    uint64_t stride = (wbytes + 63) & ~(uint64_t)63;
    int64_t copies = (int64_t)(b->mem / stride), calls = 0, ci = 0; /* >= 1: check_mem */
    double t0, t, cp = copy_gbs(b->pool, b->buf, b->dst, b->mem / 4, 2);
    /* warm-up: grows scratch, faults in the pages */
    w.w = b->buf;
    w.scale = b->buf + data;
    dsv4_cpu_linear(b->pool, &w, act, b->x, m, b->y);
    t0 = dsv4_now();
    do {
        w.w = b->buf + (uint64_t)ci * stride;
        w.scale = (const uint8_t *)w.w + data;
        dsv4_cpu_linear(b->pool, &w, act, b->x, m, b->y);
        ci = (ci + 1) % copies;
        calls++;
        t = dsv4_now() - t0;
    } while (t < o->min_time || calls < DSV4_MIN(copies, (int64_t)(m >= 32 ? 4 : 64)));
    double per = t / (double)calls;
    double gbs = (double)wbytes / per / 1e9;
    double fl = 2.0 * (double)(w.rows * w.cols) * m / per;
    char cache[32] = "-";
    if (m == 1)
        snprintf(cache, sizeof(cache), "%.2f", cached_gbs(b, o, &w, act));
    printf("%-6s %-5s %5lldx%-5lld %5d %9.3f %9.2f %8.1f %6.0f%% %9.2f %6.0f%% %9s\n",
           dsv4_wfmt_name(w.fmt), dsv4_act_name(act), (long long)w.rows, (long long)w.cols, m,
           per * 1e3, gbs, fl / 1e9, b->peak > 0 ? 100.0 * fl / b->peak : 0, cp, 100.0 * gbs / cp,
           cache);
    fflush(stdout);
}

/* "model name (family F, model M)" of the first CPU in /proc/cpuinfo, or "unknown CPU" */
static void cpu_model(char *out, size_t n)
{
    char line[512], name[256] = "unknown CPU";
    int family = -1, model = -1;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof(line), f)) {
        char *v = strchr(line, ':');
        if (!v)
            continue;
        v += 1 + (v[1] == ' ');
        v[strcspn(v, "\n")] = 0;
        if (!strncmp(line, "model name", 10) && !strcmp(name, "unknown CPU"))
            snprintf(name, sizeof(name), "%s", v);
        else if (!strncmp(line, "cpu family", 10) && family < 0)
            family = atoi(v);
        else if (!strncmp(line, "model\t", 6) && model < 0)
            model = atoi(v);
        else if (line[0] == '\n' || !strncmp(line, "processor", 9)) {
            if (family >= 0 && model >= 0)
                break;
        }
    }
    if (f)
        fclose(f);
    if (family >= 0 && model >= 0)
        snprintf(out, n, "%s (family %d, model %d)", name, family, model);
    else
        snprintf(out, n, "%s", name);
}

/* random pool bytes (bit 6 clear, bit 5 set: finite normal values), x in [-1.43, 1.43] */
static void fill(struct bench_bufs *b, int maxb)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    DSV4_ASSERT(b->mem <= (size_t)65536 << 20); /* parse_args bounds --mem */
    for (size_t i = 0; i < b->mem + 64; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t v = (s & 0xbfbfbfbfbfbfbfbfull) | 0x2020202020202020ull;
        memcpy(b->buf + i, &v, DSV4_MIN((size_t)8, b->mem + 64 - i));
    }
    memset(b->dst, 0, b->mem);
    for (int i = 0; i < maxb * 7168; i++)
        b->x[i] = (float)((int)(i * 2654435761u % 2001) - 1000) / 700.0f;
}

int dsv4_bench_linear(int argc, char **argv)
{
    struct bench_opts o = {.threads = (int)sysconf(_SC_NPROCESSORS_ONLN),
                           .mem_mb = 1024,
                           .batches = {1, 8, 64, 256},
                           .nb = 4,
                           .min_time = 0.3,
                           .fmt_on = {true, true, true, true, true}};
    struct bench_bufs b = {0};
    int rc = parse_args(argc, argv, &o), maxb = 1;
    if (rc)
        return rc == 1 ? 0 : 2;
    if (o.threads < 1 || o.threads > 1024)
        o.threads = DSV4_MAX(1, DSV4_MIN(o.threads, 1024)); /* sysconf failure or huge box */
    if (check_mem(&o))
        return 2;
    for (int i = 0; i < o.nb; i++)
        maxb = DSV4_MAX(maxb, o.batches[i]);
    b.mem = (size_t)o.mem_mb << 20;
    rc = 1;
    if (dsv4_pool_init(o.threads, &b.pool) != 0) {
        fprintf(stderr, "dsv4 bench linear: %s\n", dsv4_errmsg());
        goto fail;
    }
    b.buf = malloc(b.mem + 64);
    b.dst = malloc(b.mem + 64);
    b.x = malloc((size_t)maxb * 7168 * sizeof(float));
    b.y = malloc((size_t)maxb * 7168 * sizeof(float));
    if (!b.buf || !b.dst || !b.x || !b.y) {
        fprintf(stderr, "dsv4 bench linear: out of memory (--mem %d)\n", o.mem_mb);
        goto fail;
    }
    fill(&b, maxb);

    double copy0 = copy_gbs(b.pool, b.buf, b.dst, b.mem, 3);
    b.peak = dsv4_cpu_fma_peak(b.pool);
    char cpu[400];
    cpu_model(cpu, sizeof(cpu));
    printf("dsv4 bench linear: %s\n", cpu);
    printf("%d threads, isa %s, pool %d MiB\n", o.threads, dsv4_cpu_isa(), o.mem_mb);
    printf("memcpy: %.2f GB/s (bytes copied per second; each byte is read and written)\n\n", copy0);
    printf("FMA peak: %.1f GFLOP/s (2 FLOP per multiply-add lane, all threads)\n\n", b.peak / 1e9);
    printf("%%copy compares with a copy run just before the case (the machine may be shared); "
           "%%peak with the FMA peak\n");
    printf("cacheGB/s (batch 1): the same product over ~2 MiB of the weight's rows read again "
           "every call,\nso from the caches: the kernel's decode-and-multiply rate, its ceiling "
           "with any memory\n");
    printf("%-6s %-5s %-11s %5s %9s %9s %8s %7s %9s %7s %9s\n", "format", "act", "shape", "batch",
           "ms/call", "GB/s", "GFLOP/s", "%peak", "copyGB/s", "%copy", "cacheGB/s");
    for (size_t f = 0; f < DSV4_ARRAY_LEN(FMTS); f++)
        for (int sh = 0; sh < 2 && o.fmt_on[f]; sh++)
            for (int bi = 0; bi < o.nb; bi++)
                run_case(&b, &o, f, sh, o.batches[bi]);
    double copy1 = copy_gbs(b.pool, b.buf, b.dst, b.mem, 3);
    printf("\nmemcpy again at the end: %.2f GB/s (start %.2f; a difference means the machine "
           "was busy)\n",
           copy1, copy0);
    rc = 0;
fail:
    free(b.buf);
    free(b.dst);
    free(b.x);
    free(b.y);
    dsv4_pool_free(b.pool);
    return rc;
}
