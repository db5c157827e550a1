/*
 * bench_linear.c - `dsv4 bench linear`: throughput of dsv4_cpu_linear for
 * every weight format on the two expert shapes of V4-Pro (7168x3072 and
 * 3072x7168) at batch 1, 8 and 64, reported as GB/s of weight bytes read
 * (data + scales, dsv4_qweight_bytes) next to the bandwidth of a plain
 * multi-threaded memcpy measured in the same run.
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
 * %copy); the whole-pool copy at the start and the end shows how steady
 * the machine was.
 */
#include "engine/dsv4.h"
#include "kernels/cpu/cpu.h"
#include "kernels/linear.h"
#include "tools/cmds.h"

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
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 bench linear [--threads N] [--mem MB] [--time SEC] [--formats LIST]\n"
               "                         [--batches LIST]\n"
               "  --threads N     pool threads (default: online CPUs)\n"
               "  --mem MB        weight pool and copy size, above the last-level cache "
               "(default 1024)\n"
               "  --time SEC      minimum time per case (default 0.3)\n"
               "  --formats LIST  comma list of f32,bf16,fp8,mxfp4,nvfp4 (default all)\n"
               "  --batches LIST  comma list of batch sizes (default 1,8,64)\n");
}

int dsv4_bench_linear(int argc, char **argv)
{
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), batches[16] = {1, 8, 64}, nb = 3;
    int mem_mb = 1024;
    double min_time = 0.3;
    const char *formats = "f32,bf16,fp8,mxfp4,nvfp4";
    struct dsv4_pool *pool = NULL;
    uint8_t *buf = NULL, *dst = NULL;
    float *x = NULL, *y = NULL;
    int rc = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--threads") && strcmp(a, "--mem") && strcmp(a, "--time") &&
            strcmp(a, "--formats") && strcmp(a, "--batches")) {
            fprintf(stderr, "dsv4 bench linear: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "dsv4 bench linear: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--mem"))
            mem_mb = atoi(v);
        else if (!strcmp(a, "--time"))
            min_time = atof(v);
        else if (!strcmp(a, "--formats"))
            formats = v;
        else if (!strcmp(a, "--batches")) {
            nb = parse_list(v, batches, 16);
            if (nb <= 0) {
                fprintf(stderr, "dsv4 bench linear: bad --batches '%s'\n", v);
                return 2;
            }
        }
    }
    if (threads < 1 || threads > 1024 || mem_mb < 16 || mem_mb > 65536 ||
        !(min_time >= 0 && min_time <= 60)) {
        fprintf(stderr, "dsv4 bench linear: need 1..1024 threads, 16..65536 MB, 0..60 s\n");
        return 2;
    }
    size_t mem = (size_t)mem_mb << 20;
    if (dsv4_pool_init(threads, &pool) != 0) {
        fprintf(stderr, "dsv4 bench linear: %s\n", dsv4_errmsg());
        return 1;
    }
    int maxb = 1;
    for (int i = 0; i < nb; i++)
        maxb = DSV4_MAX(maxb, batches[i]);
    buf = malloc(mem + 64);
    dst = malloc(mem + 64);
    x = malloc((size_t)maxb * 7168 * sizeof(float));
    y = malloc((size_t)maxb * 7168 * sizeof(float));
    if (!buf || !dst || !x || !y) {
        fprintf(stderr, "dsv4 bench linear: out of memory (--mem %d)\n", mem_mb);
        goto out;
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < mem + 64; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t v = (s & 0xbfbfbfbfbfbfbfbfull) | 0x2020202020202020ull;
        memcpy(buf + i, &v, DSV4_MIN((size_t)8, mem + 64 - i));
    }
    memset(dst, 0, mem);
    for (int i = 0; i < maxb * 7168; i++)
        x[i] = (float)((int)(i * 2654435761u % 2001) - 1000) / 700.0f;

    double copy0 = copy_gbs(pool, buf, dst, mem, 3);
    printf("dsv4 bench linear: %d threads, isa %s, pool %d MiB\n", threads, dsv4_cpu_isa(), mem_mb);
    printf("memcpy: %.2f GB/s (bytes copied per second; each byte is read and written)\n\n", copy0);
    printf("%%copy compares with a copy run just before the case (the machine may be shared)\n");
    printf("%-6s %-5s %-11s %5s %9s %9s %8s %9s %7s\n", "format", "act", "shape", "batch",
           "ms/call", "GB/s", "GFLOP/s", "copyGB/s", "%copy");

    static const enum dsv4_wfmt fmts[] = {DSV4_WFMT_F32, DSV4_WFMT_BF16, DSV4_WFMT_FP8,
                                          DSV4_WFMT_MXFP4, DSV4_WFMT_NVFP4};
    static const int64_t shapes[2][2] = {{7168, 3072}, {3072, 7168}};
    for (size_t f = 0; f < DSV4_ARRAY_LEN(fmts); f++) {
        const char *name = dsv4_wfmt_name(fmts[f]);
        const char *hit = strstr(formats, name);
        size_t nl = strlen(name);
        /* whole-word match in the comma list ("fp8" must not match "nvfp4"'s tail) */
        while (hit && ((hit != formats && hit[-1] != ',') || (hit[nl] && hit[nl] != ',')))
            hit = strstr(hit + 1, name);
        if (!hit)
            continue;
        for (int sh = 0; sh < 2; sh++) {
            struct dsv4_qweight w = {.fmt = fmts[f], .rows = shapes[sh][0], .cols = shapes[sh][1]};
            enum dsv4_act act = dsv4_default_act(w.fmt);
            uint64_t wbytes = dsv4_qweight_bytes(&w);
            uint64_t data = wbytes;
            w.scale2 = 0.0173f;
            w.input_scale = 1.0f;
            if (w.fmt == DSV4_WFMT_FP8)
                data = (uint64_t)(w.rows * w.cols);
            else if (w.fmt == DSV4_WFMT_MXFP4 || w.fmt == DSV4_WFMT_NVFP4)
                data = (uint64_t)(w.rows * ((w.cols + 1) / 2));
            uint64_t stride = (wbytes + 63) & ~(uint64_t)63;
            int64_t copies = (int64_t)(mem / stride);
            if (copies < 1) {
                fprintf(stderr, "dsv4 bench linear: --mem too small for %s\n", name);
                goto out;
            }
            for (int bi = 0; bi < nb; bi++) {
                int m = batches[bi];
                int64_t calls = 0, ci = 0;
                double t0, t, cp = copy_gbs(pool, buf, dst, mem / 4, 2);
                /* warm-up: grows scratch, faults in the pages */
                w.w = buf;
                w.scale = buf + data;
                dsv4_cpu_linear(pool, &w, act, x, m, y);
                t0 = dsv4_now();
                do {
                    w.w = buf + (uint64_t)ci * stride;
                    w.scale = (const uint8_t *)w.w + data;
                    dsv4_cpu_linear(pool, &w, act, x, m, y);
                    ci = (ci + 1) % copies;
                    calls++;
                    t = dsv4_now() - t0;
                } while (t < min_time || calls < DSV4_MIN(copies, (int64_t)(m >= 32 ? 4 : 64)));
                double per = t / (double)calls;
                double gbs = (double)wbytes / per / 1e9;
                printf("%-6s %-5s %5lldx%-5lld %5d %9.3f %9.2f %8.1f %9.2f %6.0f%%\n", name,
                       dsv4_act_name(act), (long long)w.rows, (long long)w.cols, m, per * 1e3, gbs,
                       2.0 * (double)(w.rows * w.cols) * m / per / 1e9, cp, 100.0 * gbs / cp);
                fflush(stdout);
            }
        }
    }
    double copy1 = copy_gbs(pool, buf, dst, mem, 3);
    printf("\nmemcpy again at the end: %.2f GB/s (start %.2f; a difference means the machine "
           "was busy)\n",
           copy1, copy0);
    rc = 0;
out:
    free(buf);
    free(dst);
    free(x);
    free(y);
    dsv4_pool_free(pool);
    return rc;
}
