/*
 * bench_forward.c - `dsv4 bench forward`: prefill and decode throughput of
 * the engine through the step API (engine/model/step.h) on a checkpoint,
 * next to the decode roofline: bytes of weights one decode token reads
 * (dsv4_model_decode_bytes) over the memory read bandwidth measured in the
 * same run.  Single rank; greedy decoding, so the work is a real decode.
 *
 * Prefill: one sequence per prompt length, fed in chunks of --chunk tokens
 * (the last chunk samples the first token); tok/s = prompt tokens / time.
 * Preemption, after each prefill: the sequence's state swapped out to host
 * memory (zstd per state kind) and back in, timed, with its raw and packed
 * bytes per kind, next to what dropping it costs (the prefill again).
 * Decode: B sequences (16-token prompts, different tokens), then --steps
 * steps with all B in one plan; tok/s = tokens emitted / time (with --mtp,
 * accepted drafts count, as a server would count them).  Each batch size
 * is set against its own roofline: a step of B tokens reads the weights
 * once (the routed experts some token picks: dsv4_model_decode_cost) and
 * does B tokens' multiply-adds, so it takes at least max(bytes / read
 * bandwidth, FLOP / FMA peak), both measured in the same run (the peak by
 * dsv4_cpu_fma_peak on the same threads); "bound" says which term wins.
 * The decodes run in --rounds rounds, each starting with its own reading of
 * the bandwidth and the peak and then every batch size once; the report is
 * the median over rounds of the rates, of each round's rate over its own
 * roofline and of its rate over the first batch size's rate in that round
 * (on a shared machine the bandwidth drifts by tens of percent within
 * minutes: one reading at the start set against decodes a minute later
 * moved the ratio as much as the code did).
 */
#include "base/dsv4.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "tools/cmds.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIST   16
#define MAX_ROUNDS 32

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

/* The read-bandwidth probe: a 512 MiB buffer summed by `threads` threads, kept for the whole
 * run so that each round of decodes can be set against a reading taken just before it. */
struct bw_probe {
    struct dsv4_pool *pool;
    double *buf, *sums;
    int64_t n;
    int tasks;
};

static int bw_open(struct bw_probe *p, int threads)
{
    *p = (struct bw_probe){.n = (512ll << 20) / 8, .tasks = threads * 4};
    if (dsv4_pool_init(threads, &p->pool))
        return -1;
    p->buf = malloc(p->n * 8);
    p->sums = calloc(p->tasks, sizeof(double));
    if (!p->buf || !p->sums)
        return -1;
    for (int64_t i = 0; i < p->n; i++)
        p->buf[i] = (double)(i & 7);
    return 0;
}

/* bytes/s, best of 3 passes (0 if the probe could not be set up) */
static double bw_read(struct bw_probe *p)
{
    double best = 0;
    if (!p->buf || !p->sums)
        return 0;
    struct bw_job j = {p->buf, p->n, (p->n + p->tasks - 1) / p->tasks, p->sums};
    for (int rep = 0; rep < 3; rep++) {
        double t = dsv4_now();
        dsv4_pool_run(p->pool, bw_task, &j, p->tasks);
        t = dsv4_now() - t;
        if (t > 0 && p->n * 8 / t > best)
            best = p->n * 8 / t;
    }
    return best;
}

static void bw_close(struct bw_probe *p)
{
    free(p->buf);
    free(p->sums);
    dsv4_pool_free(p->pool);
}

/* median of n values (sorts v) */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The CPU model from /proc/cpuinfo ("unknown" elsewhere). */
static void cpu_model(char *buf, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(buf, len, "unknown");
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            c++;
            while (*c == ' ' || *c == '\t')
                c++;
            c[strcspn(c, "\n")] = 0;
            snprintf(buf, len, "%s", c);
            break;
        }
    }
    if (f)
        fclose(f);
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

/* "1,8,32" -> list (each in [lo, hi], at most MAX_LIST). */
static int opt_list(const char *name, const char *v, long lo, long hi, int *list, int *n)
{
    char buf[256], *save = NULL;
    if (strlen(v) >= sizeof buf) {
        fprintf(stderr, "dsv4 bench forward: %s '%s' is too long\n", name, v);
        return 1;
    }
    strcpy(buf, v);
    *n = 0;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) {
            fprintf(stderr, "dsv4 bench forward: %s: at most %d values\n", name, MAX_LIST);
            return 1;
        }
        if (opt_int(name, t, lo, hi, &list[(*n)++]))
            return 1;
    }
    if (*n == 0) {
        fprintf(stderr, "dsv4 bench forward: %s '%s' lists no value\n", name, v);
        return 1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 bench forward --model DIR [--threads N] [--batch 1,8,32,64]\n"
               "         [--prompt 512,2048,8192] [--steps N] [--chunk N] [--mtp K]\n"
               "         [--rounds N] [--backend cpu|ref] [--json]\n"
               "  prefill of each prompt length (<= 65536 tokens, in chunks of --chunk),\n"
               "  then --rounds rounds (default 3) of: the read bandwidth and FMA peak,\n"
               "  and --steps decode steps (default 16) at each batch size (<= 256);\n"
               "  medians over the rounds\n");
}

struct bench {
    struct dsv4_step *step;
    int V, k;
    int32_t *toks;
    uint64_t next_id;
};

/* Swap-out and swap-in of one prefilled sequence. */
struct swap_res {
    struct dsv4_swap_stats out, in;
};

static int prefill(struct bench *b, int P, int chunk, double *secs, struct swap_res *sw)
{
    struct dsv4_step_entry e = {0};
    struct dsv4_step_result r;
    uint64_t id = b->next_id++;
    int rc = dsv4_step_seq_add(b->step, id);
    if (rc)
        return rc;
    double t0 = dsv4_now();
    for (int s0 = 0; s0 < P && !rc; s0 += chunk) {
        e = (struct dsv4_step_entry){.id = id,
                                     .start = s0,
                                     .n = DSV4_MIN(chunk, P - s0),
                                     .tokens = b->toks + s0,
                                     .max_emit = 1,
                                     .n_prompt = P,
                                     .params = dsv4_sample_params_default()};
        e.params.temperature = 0;
        e.sample = s0 + e.n == P;
        rc = dsv4_step_run(b->step, &e, 1, &r);
    }
    *secs = dsv4_now() - t0;
    if (!rc)
        rc = dsv4_step_seq_swap_out(b->step, id, &sw->out);
    if (!rc)
        rc = dsv4_step_seq_swap_in(b->step, id, &sw->in);
    dsv4_step_seq_free(b->step, id);
    return rc;
}

static uint64_t sum_kinds(const uint64_t *v)
{
    uint64_t s = 0;
    for (int k = 0; k < DSV4_STATE_KIND_COUNT; k++)
        s += v[k];
    return s;
}

static int decode(struct bench *b, int B, int steps, double *tok_s)
{
    struct dsv4_step_entry *e = calloc(B, sizeof *e);
    struct dsv4_step_result *r = calloc(B, sizeof *r);
    int32_t *last = calloc(B, sizeof(int32_t));
    int64_t *pos = calloc(B, sizeof(int64_t));
    uint64_t id0 = b->next_id;
    int rc = e && r && last && pos ? 0 : dsv4_error(DSV4_ENOMEM, "bench: out of memory");
    int sp = 16;
    for (int i = 0; i < B && !rc; i++) {
        if ((rc = dsv4_step_seq_add(b->step, id0 + i)))
            break;
        e[i] = (struct dsv4_step_entry){.id = id0 + i,
                                        .n = sp,
                                        .tokens = b->toks + i * 7,
                                        .sample = true,
                                        .max_emit = 1 << 30,
                                        .n_prompt = sp,
                                        .params = dsv4_sample_params_default()};
        e[i].params.temperature = 0;
    }
    b->next_id += B;
    /* the prompts in one step, then decode */
    if (!rc)
        rc = dsv4_step_run(b->step, e, B, r);
    uint64_t emitted = 0;
    double t0 = dsv4_now();
    for (int s = 0; s < steps && !rc; s++) {
        for (int i = 0; i < B; i++) {
            pos[i] = (s == 0 ? sp : pos[i]) + r[i].n_tokens;
            last[i] = r[i].tokens[r[i].n_tokens - 1];
            e[i].start = pos[i] - 1;
            e[i].n = 1;
            e[i].tokens = &last[i];
            e[i].n_drafts = r[i].n_drafts;
            e[i].drafts = r[i].drafts; /* read before r is rewritten: copied into the batch */
        }
        int32_t dr[256][DSV4_STEP_MAX_DRAFTS];
        for (int i = 0; i < B; i++) {
            memcpy(dr[i], r[i].drafts, sizeof dr[i]);
            e[i].drafts = dr[i];
        }
        rc = dsv4_step_run(b->step, e, B, r);
        for (int i = 0; i < B && !rc; i++)
            emitted += (uint64_t)r[i].n_tokens;
    }
    double t = dsv4_now() - t0;
    *tok_s = t > 0 ? emitted / t : 0;
    for (int i = 0; i < B; i++)
        dsv4_step_seq_free(b->step, id0 + i);
    free(e);
    free(r);
    free(last);
    free(pos);
    return rc;
}

int dsv4_bench_forward(int argc, char **argv)
{
    const char *dir = NULL, *backend = "cpu";
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), steps = 16, chunk = 512, k = 0, rounds = 3;
    int batch[MAX_LIST] = {1, 8, 32, 64}, nb = 4, prompt[MAX_LIST] = {512, 2048, 8192}, np = 3;
    bool json = false;
    threads = DSV4_MAX(1, DSV4_MIN(threads, 1024));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--model") && v)
            dir = argv[++i];
        else if (!strcmp(a, "--threads") && v)
            bad = opt_int(a, argv[++i], 1, 1024, &threads);
        else if (!strcmp(a, "--prompt") && v)
            bad = opt_list(a, argv[++i], 1, 65536, prompt, &np);
        else if (!strcmp(a, "--batch") && v)
            bad = opt_list(a, argv[++i], 1, 256, batch, &nb);
        else if (!strcmp(a, "--steps") && v)
            bad = opt_int(a, argv[++i], 1, 1 << 20, &steps);
        else if (!strcmp(a, "--chunk") && v)
            bad = opt_int(a, argv[++i], 1, 65536, &chunk);
        else if (!strcmp(a, "--rounds") && v)
            bad = opt_int(a, argv[++i], 1, MAX_ROUNDS, &rounds);
        else if (!strcmp(a, "--mtp") && v)
            bad = opt_int(a, argv[++i], 0, DSV4_STEP_MAX_DRAFTS, &k);
        else if (!strcmp(a, "--backend") && v)
            backend = argv[++i];
        else if (!strcmp(a, "--json"))
            json = true;
        else if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dsv4 bench forward: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
    }
    if (!dir) {
        fprintf(stderr, "dsv4 bench forward: --model DIR required\n");
        return 2;
    }
    if (strcmp(backend, "cpu") && strcmp(backend, "ref")) {
        fprintf(stderr, "dsv4 bench forward: --backend '%s' is not cpu or ref\n", backend);
        return 2;
    }
    int maxP = 0, maxB = 0;
    for (int i = 0; i < np; i++)
        maxP = DSV4_MAX(maxP, prompt[i]);
    for (int i = 0; i < nb; i++)
        maxB = DSV4_MAX(maxB, batch[i]);
    struct dsv4_model *m = NULL;
    struct dsv4_backend *be = NULL;
    struct bench b = {.k = k, .next_id = 1};
    double pre[MAX_LIST] = {0}, dec[MAX_LIST] = {0};
    /* per round r and batch index i: decode tok/s, its roofline; per round: bandwidth, peak */
    double dr[MAX_ROUNDS][MAX_LIST] = {{0}}, rr[MAX_ROUNDS][MAX_LIST] = {{0}};
    double bwr[MAX_ROUNDS] = {0}, pkr[MAX_ROUNDS] = {0};
    struct bw_probe probe = {0};
    struct swap_res sw[MAX_LIST];
    memset(sw, 0, sizeof sw);
    int rc = dsv4_model_open(dir, 0, 1, &m);
    if (!rc)
        rc = dsv4_backend_create(backend, threads, &be);
    if (rc)
        goto fail;
    const struct dsv4_config *c = dsv4_model_config(m);
    b.V = c->vocab_size;
    int64_t ctx = DSV4_MAX((int64_t)maxP + 8, 16 + (int64_t)steps * (k + 1) + k + 8);
    ctx = DSV4_MIN(ctx, c->max_position_embeddings);
    struct dsv4_step_opts so = {.max_seqs = maxB,
                                .max_tokens = DSV4_MAX(DSV4_MAX(chunk, 16 * maxB), maxB * (k + 1)),
                                .max_ctx = ctx,
                                .mtp = k,
                                .threads = 1};
    /* blocks: the longest prompt, or every decode sequence */
    so.state_blocks = 0;
    int64_t bt = 256;
    so.state_blocks = DSV4_MAX((ctx + bt - 1) / bt + 1, (int64_t)maxB * ((ctx + bt - 1) / bt));
    so.state_blocks = DSV4_MAX(so.state_blocks, (int64_t)maxB * 2);
    if ((rc = dsv4_step_create(m, be, NULL, &so, &b.step)))
        goto fail;
    int ntok = DSV4_MAX(maxP, 16 + 7 * maxB);
    b.toks = malloc(sizeof(int32_t) * (size_t)ntok);
    if (!b.toks) {
        rc = dsv4_error(DSV4_ENOMEM, "bench: out of memory");
        goto fail;
    }
    for (int i = 0; i < ntok; i++)
        b.toks[i] = (int32_t)((i * 7919 + 17) % b.V);
    uint64_t bytes = dsv4_model_decode_bytes(m);
    for (int i = 0; i < np; i++) {
        double t;
        if (prompt[i] + 2 > ctx) {
            rc = dsv4_error(DSV4_EINVAL, "bench: prompt %d beyond the model's context", prompt[i]);
            goto fail;
        }
        if ((rc = prefill(&b, prompt[i], chunk, &t, &sw[i])))
            goto fail;
        pre[i] = prompt[i] / t;
    }
    /* Rounds: both rooflines read just before each round's decodes, so that a shared
     * machine's drift moves a round's rate and its roofline together; every batch size in
     * every round, so that ratios between batch sizes come from neighbouring runs. */
    bw_open(&probe, threads); /* its pool also measures the peak */
    double macs1 = 0, bytes1 = 0, sb[MAX_LIST], sm[MAX_LIST];
    dsv4_model_decode_cost(m, 1, &bytes1, &macs1);
    for (int i = 0; i < nb; i++) /* bytes and multiply-adds of one step of B tokens */
        dsv4_model_decode_cost(m, batch[i], &sb[i], &sm[i]);
    for (int r = 0; r < rounds; r++) {
        bwr[r] = bw_read(&probe);
        pkr[r] = probe.pool ? dsv4_cpu_fma_peak(probe.pool) : 0;
        for (int i = 0; i < nb; i++) {
            if ((rc = decode(&b, batch[i], steps, &dr[r][i])))
                goto fail;
            /* max(bytes / bw, FLOP / peak) per step of B tokens */
            double tm = bwr[r] > 0 ? sb[i] / bwr[r] : INFINITY;
            double tc = pkr[r] > 0 ? 2 * sm[i] / pkr[r] : 0;
            rr[r][i] = batch[i] / (tm > tc ? tm : tc);
        }
    }
    /* medians over the rounds: rates, rooflines, each round's rate over its own roofline and
     * over the first batch size's rate of the same round */
    double broof[MAX_LIST], xroof[MAX_LIST], xfirst[MAX_LIST], dmin[MAX_LIST], dmax[MAX_LIST];
    const char *bound[MAX_LIST];
    double v[MAX_ROUNDS], bwv[MAX_ROUNDS], pkv[MAX_ROUNDS];
    memcpy(bwv, bwr, sizeof bwv);
    memcpy(pkv, pkr, sizeof pkv);
    double bw = median(bwv, rounds), peak = median(pkv, rounds);
    double roof = bw > 0 ? bw / (double)bytes : 0;
    for (int i = 0; i < nb; i++) {
        dmin[i] = dmax[i] = dr[0][i];
        for (int r = 0; r < rounds; r++) {
            v[r] = dr[r][i];
            dmin[i] = DSV4_MIN(dmin[i], dr[r][i]);
            dmax[i] = DSV4_MAX(dmax[i], dr[r][i]);
        }
        dec[i] = median(v, rounds);
        for (int r = 0; r < rounds; r++)
            v[r] = rr[r][i];
        broof[i] = median(v, rounds);
        for (int r = 0; r < rounds; r++)
            v[r] = rr[r][i] > 0 ? dr[r][i] / rr[r][i] : 0;
        xroof[i] = median(v, rounds);
        for (int r = 0; r < rounds; r++)
            v[r] = dr[r][0] > 0 ? dr[r][i] / dr[r][0] : 0;
        xfirst[i] = median(v, rounds);
        bound[i] = (bw > 0 ? sb[i] / bw : INFINITY) >= (peak > 0 ? 2 * sm[i] / peak : 0)
                           ? "memory"
                           : "compute";
    }
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    const char *isa = !strcmp(backend, "cpu") ? dsv4_cpu_isa() : "scalar";
    if (json) {
        printf("{\"model\": \"%s\", \"cpu\": \"%s\", \"isa\": \"%s\", \"backend\": \"%s\", "
               "\"threads\": %d, \"mtp\": %d, \"rounds\": %d,\n \"decode\": [",
               dir, cpu, isa, backend, threads, k, rounds);
        for (int i = 0; i < nb; i++) {
            printf("%s{\"batch\": %d, \"decode_tok_s\": %.2f, \"roofline_tok_s\": %.2f, "
                   "\"bound\": \"%s\", \"x_roofline\": %.4f, \"x_first_batch\": %.4f, "
                   "\"decode_tok_s_rounds\": [",
                   i ? ", " : "", batch[i], dec[i], broof[i], bound[i], xroof[i], xfirst[i]);
            for (int r = 0; r < rounds; r++)
                printf("%s%.2f", r ? ", " : "", dr[r][i]);
            printf("]}");
        }
        printf("],\n \"prefill\": [");
        for (int i = 0; i < np; i++)
            printf("%s{\"prompt\": %d, \"prefill_tok_s\": %.2f}", i ? ", " : "", prompt[i], pre[i]);
        printf("],\n \"preempt\": [");
        for (int i = 0; i < np; i++) {
            printf("%s{\"prompt\": %d, \"reprefill_s\": %.6f, \"swap_out_s\": %.6f, "
                   "\"swap_in_s\": %.6f, \"raw_bytes\": %llu, \"packed_bytes\": %llu, "
                   "\"kinds\": {",
                   i ? ", " : "", prompt[i], prompt[i] / pre[i], sw[i].out.seconds,
                   sw[i].in.seconds, (unsigned long long)sum_kinds(sw[i].out.raw),
                   (unsigned long long)sum_kinds(sw[i].out.packed));
            for (int q = 0; q < DSV4_STATE_KIND_COUNT; q++)
                printf("%s\"%s\": [%llu, %llu]", q ? ", " : "", dsv4_state_kind_name(q),
                       (unsigned long long)sw[i].out.raw[q],
                       (unsigned long long)sw[i].out.packed[q]);
            printf("}}");
        }
        printf("],\n \"roofline_tok_s\": %.2f, \"read_bandwidth_GBps\": %.3f, "
               "\"decode_bytes_per_token\": %llu, \"fma_peak_GFLOPs\": %.2f, "
               "\"decode_flop_per_token\": %.0f, \"read_bandwidth_GBps_rounds\": [",
               roof, bw / 1e9, (unsigned long long)bytes, peak / 1e9, 2 * macs1);
        for (int r = 0; r < rounds; r++)
            printf("%s%.3f", r ? ", " : "", bwr[r] / 1e9);
        printf("]}\n");
    } else {
        printf("model %s: %d layers, hidden %d, %d experts (top %d), vocab %d\n", dir,
               c->num_hidden_layers, c->hidden_size, c->n_routed_experts, c->num_experts_per_tok,
               b.V);
        printf("cpu: %s; %d threads; backend %s (%s); mtp %d\n", cpu, threads, backend, isa, k);
        printf("roofline: %.1f MB of weights per decode token, read bandwidth %.2f GB/s -> %.1f "
               "tok/s (median of %d rounds; per round:",
               bytes / 1e6, bw / 1e9, roof, rounds);
        for (int r = 0; r < rounds; r++)
            printf(" %.2f", bwr[r] / 1e9);
        printf(" GB/s)\n");
        printf("compute: %.1f MFLOP per decode token (weight products), FMA peak %.1f GFLOP/s "
               "on %d threads -> %.1f tok/s\n",
               2 * macs1 / 1e6, peak / 1e9, threads, peak > 0 ? peak / (2 * macs1) : 0);
        printf("%8s  %14s\n", "prompt", "prefill tok/s");
        for (int i = 0; i < np; i++)
            printf("%8d  %14.1f\n", prompt[i], pre[i]);
        printf("preemption of one prefilled sequence: drop (prefill again) or swap to host "
               "memory (zstd)\n");
        printf("%8s  %12s  %11s  %11s  %11s  %11s\n", "prompt", "re-prefill s", "swap out s",
               "swap in s", "raw MB", "packed MB");
        for (int i = 0; i < np; i++)
            printf("%8d  %12.3f  %11.4f  %11.4f  %11.2f  %11.2f\n", prompt[i], prompt[i] / pre[i],
                   sw[i].out.seconds, sw[i].in.seconds, sum_kinds(sw[i].out.raw) / 1e6,
                   sum_kinds(sw[i].out.packed) / 1e6);
        printf("  per kind at prompt %d (raw MB -> packed MB):", prompt[np - 1]);
        for (int q = 0; q < DSV4_STATE_KIND_COUNT; q++)
            if (sw[np - 1].out.raw[q])
                printf(" %s %.3f -> %.3f;", dsv4_state_kind_name(q), sw[np - 1].out.raw[q] / 1e6,
                       sw[np - 1].out.packed[q] / 1e6);
        printf("\n");
        printf("decode, medians of %d rounds (each round's rate over its own roofline and over "
               "batch %d's rate in the same round)\n",
               rounds, batch[0]);
        char xf[32];
        snprintf(xf, sizeof xf, "x batch %d", batch[0]);
        printf("%8s  %14s  %17s  %14s  %10s  %10s  %8s\n", "batch", "decode tok/s", "range",
               "roofline tok/s", "x roofline", xf, "bound");
        for (int i = 0; i < nb; i++) {
            char rg[48];
            snprintf(rg, sizeof rg, "%.1f-%.1f", dmin[i], dmax[i]);
            printf("%8d  %14.1f  %17s  %14.1f  %10.2f  %10.2f  %8s\n", batch[i], dec[i], rg,
                   broof[i], xroof[i], xfirst[i], bound[i]);
        }
    }
    goto out;
fail:
    fprintf(stderr, "dsv4 bench forward: %s\n", dsv4_errmsg());
out:
    bw_close(&probe);
    free(b.toks);
    dsv4_step_free(b.step);
    dsv4_backend_destroy(be);
    dsv4_model_close(m);
    return rc ? 1 : 0;
}
