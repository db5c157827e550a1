/*
 * bench_forward.c - `dsv4 bench forward`: prefill and decode throughput of
 * the CPU forward pass (engine/model/forward.h) on a checkpoint, next to the
 * decode roofline: bytes of weights one decode token reads
 * (dsv4_model_decode_bytes) over the measured memory read bandwidth.
 * Single rank; greedy tokens are fed back so the work is a real decode.
 */
#include "base/dsv4.h"
#include "engine/model/forward.h"
#include "engine/model/model.h"
#include "engine/model/state.h"
#include "kernels/cpu/cpu.h"
#include "tools/cmds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct bw_job {
    const double *buf;
    int64_t n, per;
    double *sums;
};

static void bw_task(void *arg, int64_t i, int thread)
{
    struct bw_job *j = arg;
    (void)thread;
    int64_t a = i * j->per, b = DSV4_MIN(j->n, a + j->per);
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t k = a; k + 3 < b; k += 4) {
        s0 += j->buf[k];
        s1 += j->buf[k + 1];
        s2 += j->buf[k + 2];
        s3 += j->buf[k + 3];
    }
    j->sums[i] = s0 + s1 + s2 + s3;
}

/* Read bandwidth in bytes/s over a 512 MiB buffer with the pool's threads (best of 3). */
static double read_bandwidth(struct dsv4_pool *pool)
{
    int64_t n = (512ll << 20) / 8;
    double *buf = malloc(n * 8), best = 0;
    int tasks = dsv4_pool_threads(pool) * 4;
    double *sums = calloc(tasks, sizeof(double));
    if (!buf || !sums) {
        free(buf);
        free(sums);
        return 0;
    }
    for (int64_t i = 0; i < n; i++)
        buf[i] = (double)(i & 7);
    struct bw_job j = {buf, n, (n + tasks - 1) / tasks, sums};
    for (int rep = 0; rep < 3; rep++) {
        double t = dsv4_now();
        dsv4_pool_run(pool, bw_task, &j, tasks);
        t = dsv4_now() - t;
        if (t > 0 && n * 8 / t > best)
            best = n * 8 / t;
    }
    free(buf);
    free(sums);
    return best;
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* Strict option value: the whole string an integer in [lo, hi], else a message and 1. */
static int opt_int(const char *name, const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "dsv4 bench forward: %s '%s' is not an integer in [%ld, %ld]\n", name, v,
                lo, hi);
        return 1;
    }
    *out = (int)x;
    return 0;
}

int dsv4_bench_forward(int argc, char **argv)
{
    const char *dir = NULL;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), prompt = 256, steps = 16, batch = 8;
    threads = DSV4_MAX(1, DSV4_MIN(threads, 1024));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--model") && v)
            dir = argv[++i];
        else if (!strcmp(a, "--threads") && v)
            bad = opt_int(a, argv[++i], 1, 1024, &threads);
        else if (!strcmp(a, "--prompt") && v)
            bad = opt_int(a, argv[++i], 1, 65536, &prompt);
        else if (!strcmp(a, "--steps") && v)
            bad = opt_int(a, argv[++i], 1, 1 << 20, &steps);
        else if (!strcmp(a, "--batch") && v)
            bad = opt_int(a, argv[++i], 1, 64, &batch);
        else {
            fprintf(stderr, "usage: dsv4 bench forward --model DIR [--threads N] [--prompt N]"
                            " [--steps N] [--batch B]\n"
                            "  prefill of N tokens (<= 65536), then decode at batch 1 and B"
                            " (default 8, <= 64)\n");
            return strcmp(a, "--help") ? 2 : 0;
        }
        if (bad)
            return 2;
    }
    if (!dir) {
        fprintf(stderr, "dsv4 bench forward: --model DIR required\n");
        return 2;
    }
    struct dsv4_model *m = NULL;
    struct dsv4_pool *pool = NULL;
    struct dsv4_state *st = NULL;
    struct dsv4_fwd *f = NULL;
    float *logits = NULL;
    int32_t *toks = NULL;
    int rc = dsv4_model_open(dir, 0, 1, &m);
    if (!rc)
        rc = dsv4_pool_init(threads, &pool);
    if (!rc)
        rc = dsv4_state_init(m, batch + 1, 4, &st);
    int T = DSV4_MAX(prompt, batch);
    if (!rc)
        rc = dsv4_fwd_init(m, st, pool, NULL, T, prompt + steps + 8, &f);
    if (rc) {
        fprintf(stderr, "dsv4 bench forward: %s\n", dsv4_errmsg());
        goto out;
    }
    int V = m->cfg.vocab_size;
    logits = malloc(sizeof(float) * V * (size_t)batch);
    toks = malloc(sizeof(int32_t) * (size_t)prompt);
    if (!logits || !toks) {
        rc = 1;
        goto out;
    }
    for (int i = 0; i < prompt; i++)
        toks[i] = (int32_t)((i * 7919 + 17) % V);
    double bw = read_bandwidth(pool);
    uint64_t bytes = dsv4_model_decode_bytes(m);
    /* prefill */
    int seqs[64];
    struct dsv4_fwd_seq b[64];
    if ((rc = dsv4_state_seq_new(st, &seqs[0])))
        goto fail;
    struct dsv4_fwd_seq s = {seqs[0], 0, prompt, toks};
    double t0 = dsv4_now();
    if ((rc = dsv4_fwd_trunk(f, &s, 1, logits, false, NULL)))
        goto fail;
    double t_pre = dsv4_now() - t0;
    /* decode batch 1 */
    int32_t tok = argmax(logits, V);
    t0 = dsv4_now();
    for (int i = 0; i < steps; i++) {
        struct dsv4_fwd_seq d = {seqs[0], prompt + i, 1, &tok};
        if ((rc = dsv4_fwd_trunk(f, &d, 1, logits, false, NULL)))
            goto fail;
        tok = argmax(logits, V);
    }
    double t_dec1 = (dsv4_now() - t0) / steps;
    dsv4_state_seq_free(st, seqs[0]);
    /* decode batch B: B sequences with a short prompt each */
    int32_t bt[64];
    int sp = DSV4_MIN(prompt, 16);
    for (int i = 0; i < batch; i++) {
        if ((rc = dsv4_state_seq_new(st, &seqs[i])))
            goto fail;
        struct dsv4_fwd_seq p = {seqs[i], 0, sp, toks + i % DSV4_MAX(1, prompt - sp)};
        if ((rc = dsv4_fwd_trunk(f, &p, 1, logits, false, NULL)))
            goto fail;
        bt[i] = argmax(logits, V);
    }
    t0 = dsv4_now();
    for (int k = 0; k < steps; k++) {
        for (int i = 0; i < batch; i++)
            b[i] = (struct dsv4_fwd_seq){seqs[i], sp + k, 1, &bt[i]};
        if ((rc = dsv4_fwd_trunk(f, b, batch, logits, false, NULL)))
            goto fail;
        for (int i = 0; i < batch; i++)
            bt[i] = argmax(logits + (int64_t)i * V, V);
    }
    double t_decb = (dsv4_now() - t0) / steps;
    double roof = bw > 0 ? bw / (double)bytes : 0;
    printf("model %s: %d layers, hidden %d, %d experts (top %d), vocab %d; %d threads (%s)\n", dir,
           m->cfg.num_hidden_layers, m->cfg.hidden_size, m->cfg.n_routed_experts,
           m->cfg.num_experts_per_tok, V, threads, dsv4_cpu_isa());
    printf("prefill %d tokens: %.3f s, %.1f tok/s\n", prompt, t_pre, prompt / t_pre);
    printf("decode batch 1: %.2f ms/token, %.1f tok/s\n", 1e3 * t_dec1, 1 / t_dec1);
    printf("decode batch %d: %.2f ms/step, %.1f tok/s\n", batch, 1e3 * t_decb, batch / t_decb);
    printf("roofline: %.1f MB of weights per decode token, read bandwidth %.2f GB/s -> %.1f tok/s;"
           " batch-1 decode at %.2fx of it\n",
           bytes / 1e6, bw / 1e9, roof, roof > 0 ? (1 / t_dec1) / roof : 0);
    goto out;
fail:
    fprintf(stderr, "dsv4 bench forward: %s\n", dsv4_errmsg());
out:
    free(logits);
    free(toks);
    dsv4_fwd_free(f);
    dsv4_state_free(st);
    dsv4_pool_free(pool);
    dsv4_model_close(m);
    return rc ? 1 : 0;
}
