/*
 * test_sample.c - engine/sample: the generator's known answers, parameter
 * checks, greedy and its edge cases, bad logits, penalty arithmetic,
 * logprobs, reproducibility, the filters against a sort-based reference,
 * MTP draft proposals, and chi-square tests that the draws follow the
 * processed distribution and that speculative rejection sampling
 * reproduces the target distribution.
 *
 * Statistical checks use fixed seeds (deterministic) and a critical value at
 * about p = 1e-6 (Wilson-Hilferty), and each one is shown to reject a wrong
 * distribution, so they can fail.
 */
#include "engine/sample/sample.h"
#include "base/dsv4.h"
#include "tests/test.h"

#include <stdint.h>

/* ---- helpers ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rng_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void)
{
    return (double)(rng_u64() >> 11) * 0x1p-53;
}

/* Chi-square critical value for df degrees of freedom at ~1e-6 (z = 4.75). */
static double chi2_crit(int df)
{
    double z = 4.75, a = 2.0 / (9.0 * df);
    double c = 1.0 - a + z * sqrt(a);
    return df * c * c * c;
}

/* chi2 of counts[n] against probabilities e[n] (sum 1) over `draws`; *df =
 * categories with e > 0 minus 1; counts where e == 0 make it infinite. */
static double chi2(const long *counts, const double *e, int n, long draws, int *df)
{
    double x = 0.0;
    int cats = 0;
    *df = 0;
    for (int i = 0; i < n; i++) {
        double ex = e[i] * (double)draws;
        if (e[i] <= 0.0) {
            if (counts[i])
                return INFINITY;
            continue;
        }
        cats++;
        x += ((double)counts[i] - ex) * ((double)counts[i] - ex) / ex;
    }
    *df = cats - 1;
    return x;
}

/* Sort-based reference of the processed distribution (penalties off). */
static const double *cmp_p;
static int cmp_key(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (cmp_p[x] > cmp_p[y])
        return -1;
    if (cmp_p[x] < cmp_p[y])
        return 1;
    return x < y ? -1 : 1;
}

static void ref_probs(const float *l, int V, const struct dsv4_sample_params *pp, double *out)
{
    double *p = malloc(sizeof(double) * V);
    int *idx = malloc(sizeof(int) * V);
    float m = -INFINITY;
    int am = 0;
    for (int t = 0; t < V; t++)
        if (l[t] > m) {
            m = l[t];
            am = t;
        }
    if (pp->temperature < DSV4_SAMPLE_GREEDY_EPS || pp->top_k == 1) {
        for (int t = 0; t < V; t++)
            out[t] = t == am;
        goto done;
    }
    for (int t = 0; t < V; t++) {
        p[t] = expf((l[t] - m) * (1.0f / pp->temperature));
        if (p[t] < pp->min_p)
            p[t] = 0.0;
        idx[t] = t;
    }
    cmp_p = p;
    qsort(idx, V, sizeof(int), cmp_key);
    int n = 0;
    while (n < V && p[idx[n]] > 0.0)
        n++;
    if (pp->top_k > 0 && pp->top_k < n) {
        for (int i = pp->top_k; i < n; i++)
            p[idx[i]] = 0.0;
        n = pp->top_k;
    }
    double mass = 0.0;
    for (int i = 0; i < n; i++)
        mass += p[idx[i]];
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        if (acc >= pp->top_p * mass && pp->top_p < 1.0f)
            p[idx[i]] = 0.0;
        acc += p[idx[i]] == 0.0 ? 0.0 : p[idx[i]];
    }
    double tot = 0.0;
    for (int t = 0; t < V; t++)
        tot += p[t];
    for (int t = 0; t < V; t++)
        out[t] = p[t] / tot;
done:
    free(p);
    free(idx);
}

/* ---- tests ---- */

static void test_philox(void)
{
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
            {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
            {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
             {0xffffffff, 0xffffffff},
             {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
            {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
             {0xa4093822, 0x299f31d0},
             {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(kat); i++) {
        uint32_t o[4];
        dsv4_sample_philox_kat(kat[i].ctr, kat[i].key, o);
        for (int j = 0; j < 4; j++)
            CHECKF(o[j] == kat[i].out[j], "philox kat %zu word %d: %08x != %08x", i, j, o[j],
                   kat[i].out[j]);
    }
    /* uniforms: in [0, 1), pure functions of (seed, pos, stream), mean ~ 1/2 */
    double sum = 0.0;
    int bad = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = dsv4_sample_uniform(7, i, 0);
        if (!(u >= 0.0 && u < 1.0))
            bad++;
        sum += u;
    }
    CHECK_INT(bad, 0);
    CHECKF(fabs(sum / 100000 - 0.5) < 0.005, "mean %g", sum / 100000);
    CHECK(dsv4_sample_uniform(7, 3, 1) == dsv4_sample_uniform(7, 3, 1));
    CHECK(dsv4_sample_uniform(7, 3, 1) != dsv4_sample_uniform(7, 3, 2));
    CHECK(dsv4_sample_uniform(7, 3, 1) != dsv4_sample_uniform(8, 3, 1));
    CHECK(dsv4_sample_uniform(7, 3, 1) != dsv4_sample_uniform(7, 4, 1));
    CHECK(dsv4_sample_uniform(7, 1ull << 32, 1) != dsv4_sample_uniform(7, 0, 1));
}

static void test_params(void)
{
    struct dsv4_sample_params d = dsv4_sample_params_default(), p;
    CHECK_INT(dsv4_sample_params_check(&d), 0);
    CHECK_INT(dsv4_sample_params_check(NULL), DSV4_EINVAL);
#define BAD(field, value)                                     \
    do {                                                      \
        p = d;                                                \
        p.field = value;                                      \
        CHECK_INT(dsv4_sample_params_check(&p), DSV4_EINVAL); \
        CHECK(strstr(dsv4_errmsg(), #field) != NULL);         \
    } while (0)
    BAD(temperature, -1.0f);
    BAD(temperature, NAN);
    BAD(temperature, INFINITY);
    BAD(top_p, 0.0f);
    BAD(top_p, 1.5f);
    BAD(top_p, NAN);
    BAD(min_p, -0.1f);
    BAD(min_p, 1.1f);
    BAD(repetition_penalty, 0.0f);
    BAD(repetition_penalty, NAN);
    BAD(presence_penalty, 2.5f);
    BAD(frequency_penalty, -3.0f);
    p = d;
    p.n_top_logprobs = 3;
    CHECK_INT(dsv4_sample_params_check(&p), DSV4_EINVAL); /* without logprobs */
    d.logprobs = true;
    BAD(n_top_logprobs, 21);
    BAD(n_top_logprobs, -1);
#undef BAD
    p = d;
    p.logprobs_mode = (enum dsv4_sample_logprobs_mode)7;
    CHECK_INT(dsv4_sample_params_check(&p), DSV4_EINVAL);
    struct dsv4_sampler *s = NULL;
    CHECK_INT(dsv4_sampler_init(0, &s), DSV4_EINVAL);
    CHECK(s == NULL);
    CHECK_INT(dsv4_sampler_init(5, NULL), DSV4_EINVAL);
}

static void test_greedy(void)
{
    enum { V = 1000 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    CHECK_INT(dsv4_sampler_vocab(s), V);
    float l[V];
    struct dsv4_sample_params p = dsv4_sample_params_default();
    struct dsv4_sample_result r;
    /* ties -> lowest id */
    for (int t = 0; t < V; t++)
        l[t] = (float)(t % 7);
    p.temperature = 0.0f;
    CHECK_INT(dsv4_sample(s, &p, l, NULL, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 6);
    CHECK(isnan(r.logprob)); /* logprobs off */
    CHECK_INT(r.n_top, 0);
    /* greedy ignores seed and pos; top_k = 1 is greedy at any temperature */
    int mismatches = 0;
    for (int it = 0; it < 200; it++) {
        for (int t = 0; t < V; t++)
            l[t] = (float)(rng_unit() * 10.0 - 5.0);
        int am = 0;
        for (int t = 1; t < V; t++)
            if (l[t] > l[am])
                am = t;
        p = dsv4_sample_params_default();
        p.seed = rng_u64();
        p.temperature = 0.0f;
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)it, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        mismatches += r.token != am;
        p.temperature = 1.5f;
        p.top_k = 1;
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)it, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        mismatches += r.token != am;
        /* temperature just above the greedy cut still concentrates on a clear max */
        p.top_k = 0;
        p.temperature = 1e-3f;
        l[am] += 0.1f;
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)it, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        mismatches += r.token != am;
        /* and below the cut it is exactly greedy */
        p.temperature = DSV4_SAMPLE_GREEDY_EPS * 0.5f;
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)it, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        mismatches += r.token != am;
    }
    CHECK_INT(mismatches, 0);
    /* probs of greedy: one-hot */
    float pr[V];
    p.temperature = 0.0f;
    CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), 0);
    double sum = 0.0;
    for (int t = 0; t < V; t++)
        sum += pr[t];
    CHECK(sum == 1.0);
    dsv4_sampler_free(s);
}

static void test_bad_logits(void)
{
    enum { V = 64 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float l[V];
    struct dsv4_sample_params p = dsv4_sample_params_default();
    struct dsv4_sample_result r;
    float pr[V];
    for (int mode = 0; mode < 4; mode++) {
        for (int t = 0; t < V; t++)
            l[t] = mode == 0 ? NAN : mode == 1 ? -INFINITY : mode == 2 ? INFINITY : 0.0f;
        if (mode == 3)
            l[17] = NAN;
        for (int greedy = 0; greedy < 2; greedy++) {
            p.temperature = greedy ? 0.0f : 0.8f;
            dsv4_error_clear();
            CHECK_INT(dsv4_sample(s, &p, l, NULL, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), DSV4_EINVAL);
            CHECK(dsv4_errmsg()[0] != 0);
            CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), DSV4_EINVAL);
        }
    }
    /* -inf entries are fine and never drawn */
    for (int t = 0; t < V; t++)
        l[t] = t % 2 ? -INFINITY : 0.0f;
    p.temperature = 1.0f;
    int odd = 0;
    for (int i = 0; i < 2000; i++) {
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        odd += r.token % 2;
    }
    CHECK_INT(odd, 0);
    /* bad arguments */
    CHECK_INT(dsv4_sample(s, &p, NULL, NULL, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), DSV4_EINVAL);
    CHECK_INT(dsv4_sample(s, &p, l, NULL, 0, (enum dsv4_sample_stream)9, &r), DSV4_EINVAL);
    CHECK_INT(dsv4_sample(NULL, &p, l, NULL, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), DSV4_EINVAL);
    int32_t bad_ids[2] = {3, V};
    struct dsv4_sample_history h = {.output = bad_ids, .n_output = 2};
    p.repetition_penalty = 1.2f;
    CHECK_INT(dsv4_sample(s, &p, l, &h, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), DSV4_EINVAL);
    CHECK(strstr(dsv4_errmsg(), "output[1]") != NULL);
    struct dsv4_sample_history h2 = {.prompt = NULL, .n_prompt = 3};
    CHECK_INT(dsv4_sample(s, &p, l, &h2, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), DSV4_EINVAL);
    /* penalties that push a logit to +inf are an error, not a crash */
    for (int t = 0; t < V; t++)
        l[t] = 0.0f;
    l[5] = 3.3e38f;
    int32_t five[4] = {5, 5, 5, 5};
    struct dsv4_sample_history h3 = {.output = five, .n_output = 4};
    p = dsv4_sample_params_default();
    p.frequency_penalty = -2.0f;
    p.presence_penalty = -2.0f;
    CHECK_INT(dsv4_sample(s, &p, l, &h3, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 5);
    dsv4_sampler_free(s);
}

static void test_penalties(void)
{
    enum { V = 8 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    const float l[V] = {2, -1, 0.5f, 3, -2, 0, 1, 4};
    const int32_t prompt[] = {0, 1}, output[] = {1, 3, 3, 5}, pending[] = {5};
    struct dsv4_sample_history h = {prompt, 2, output, 4, pending, 1};
    struct dsv4_sample_params p = dsv4_sample_params_default();
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.temperature = 0.0f; /* greedy: PROCESSED logprobs = log_softmax(penalised) */
    p.logprobs_mode = DSV4_SAMPLE_LOGPROBS_PROCESSED;
    p.logprobs = true;
    p.n_top_logprobs = V;
    /* t0 prompt: 2/2; t1 prompt+out x1: -1*2 - 0.25 - 0.5; t3 out x2: 3/2 - 0.5 - 0.5;
     * t5 out+pending x2: 0*2 - 0.5 - 0.5; others unchanged */
    const double x[V] = {1.0, -2.75, 0.5, 0.5, -2, -1.0, 1, 4};
    double m = 4, se = 0;
    for (int t = 0; t < V; t++)
        se += exp(x[t] - m);
    double lse = m + log(se);
    struct dsv4_sample_result r;
    CHECK_INT(dsv4_sample(s, &p, l, &h, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 7);
    CHECK_INT(r.n_top, V);
    for (int i = 0; i < r.n_top; i++) {
        int t = r.top_ids[i];
        CHECKF(fabs(r.top_logprobs[i] - (x[t] - lse)) < 1e-5, "token %d: %g vs %g", t,
               r.top_logprobs[i], x[t] - lse);
    }
    /* top order: 7 (4), 0 (1), 6 (1), 2 (0.5), 3 (0.5), 5, 4, 1 -- ties by id */
    const int order[V] = {7, 0, 6, 2, 3, 5, 4, 1};
    for (int i = 0; i < V; i++)
        CHECK_INT(r.top_ids[i], order[i]);
    /* the same through the probabilities at T = 1 */
    float pr[V];
    p.temperature = 1.0f;
    CHECK_INT(dsv4_sample_probs(s, &p, l, &h, pr), 0);
    for (int t = 0; t < V; t++)
        CHECKF(fabs(log(pr[t]) - (x[t] - lse)) < 1e-5, "probs token %d", t);
    /* scratch is clean afterwards: no history -> raw softmax */
    CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), 0);
    double lse_raw = 0;
    for (int t = 0; t < V; t++)
        lse_raw += exp(l[t] - 4.0);
    lse_raw = 4.0 + log(lse_raw);
    for (int t = 0; t < V; t++)
        CHECKF(fabs(log(pr[t]) - (l[t] - lse_raw)) < 1e-5, "raw token %d", t);
    /* RAW logprobs ignore the penalties */
    p.logprobs_mode = DSV4_SAMPLE_LOGPROBS_RAW;
    CHECK_INT(dsv4_sample(s, &p, l, &h, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECKF(fabs(r.logprob - (l[r.token] - lse_raw)) < 1e-5, "raw logprob");
    /* a negative presence penalty raises output tokens only once per token */
    p = dsv4_sample_params_default();
    p.presence_penalty = -1.0f;
    p.temperature = 0.0f;
    const float flat[V] = {0, 0, 0, 0, 0, 0, 0, 0.5f};
    const int32_t out2[] = {4, 4, 4};
    struct dsv4_sample_history h5 = {NULL, 0, out2, 3, NULL, 0};
    CHECK_INT(dsv4_sample(s, &p, flat, &h5, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 4); /* 0 + 1 > 0.5 */
    p.presence_penalty = 0.0f;
    p.frequency_penalty = -0.2f; /* 3 * 0.2 = 0.6 > 0.5 */
    CHECK_INT(dsv4_sample(s, &p, flat, &h5, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 4);
    p.frequency_penalty = -0.1f; /* 0.3 < 0.5 */
    CHECK_INT(dsv4_sample(s, &p, flat, &h5, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 7);
    /* repetition: positive logits divided, negative multiplied, prompt counts */
    const float rl[V] = {1.0f, -1.0f, 0.9f, -1.5f, -3, -3, -3, -3};
    const int32_t pr0[] = {0, 1};
    struct dsv4_sample_history h6 = {pr0, 2, NULL, 0, NULL, 0};
    p = dsv4_sample_params_default();
    p.repetition_penalty = 1.2f;
    p.temperature = 0.0f;
    CHECK_INT(dsv4_sample(s, &p, rl, &h6, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.token, 2); /* 1/1.2 < 0.9 */
    p.repetition_penalty = 1.0f / 1.2f;
    p.temperature = 1.0f;
    p.logprobs_mode = DSV4_SAMPLE_LOGPROBS_PROCESSED;
    CHECK_INT(dsv4_sample_probs(s, &p, rl, &h6, pr), 0);
    /* -1 * (1/1.2) = -0.8333 vs untouched -1.5: ratio exp(0.6667) */
    CHECKF(fabs(log(pr[1] / pr[3]) - (-1.0 / 1.2 + 1.5)) < 1e-5, "repetition < 1 on negative");
    CHECKF(fabs(log(pr[0] / pr[2]) - (1.2 - 0.9)) < 1e-5, "repetition < 1 on positive");
    dsv4_sampler_free(s);
}

static void test_logprobs(void)
{
    enum { V = 300 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float l[V];
    for (int t = 0; t < V; t++)
        l[t] = (float)(rng_unit() * 6.0 - 3.0);
    struct dsv4_sample_params p = dsv4_sample_params_default();
    struct dsv4_sample_result r;
    p.logprobs = true;
    p.n_top_logprobs = 20;
    p.temperature = 0.7f;
    /* RAW: log_softmax(l); all V sum to 1; top-20 descending and the true top-20 */
    CHECK_INT(dsv4_sample(s, &p, l, NULL, 1, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.n_top, 20);
    double m = -INFINITY, se = 0;
    for (int t = 0; t < V; t++)
        m = fmax(m, l[t]);
    for (int t = 0; t < V; t++)
        se += exp(l[t] - m);
    double lse = m + log(se);
    CHECKF(fabs(r.logprob - (l[r.token] - lse)) < 1e-5, "raw chosen");
    int greater = 0;
    for (int t = 0; t < V; t++)
        greater += l[t] > l[r.top_ids[19]];
    CHECK_INT(greater, 19);
    for (int i = 1; i < 20; i++)
        CHECK(r.top_logprobs[i] <= r.top_logprobs[i - 1]);
    /* PROCESSED with top_k = 5: exactly 5 finite, they sum to 1, the chosen one is among them */
    p.top_k = 5;
    p.logprobs_mode = DSV4_SAMPLE_LOGPROBS_PROCESSED;
    double chosen_sum = 0;
    for (int it = 0; it < 50; it++) {
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)it, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        CHECK_INT(r.n_top, 5);
        double sum = 0;
        int found = 0;
        for (int i = 0; i < r.n_top; i++) {
            sum += exp(r.top_logprobs[i]);
            if (r.top_ids[i] == r.token) {
                found = 1;
                CHECK(r.top_logprobs[i] == r.logprob);
            }
        }
        CHECKF(fabs(sum - 1.0) < 1e-5, "processed top-5 sum %g", sum);
        CHECK(found);
        chosen_sum += r.logprob;
    }
    CHECK(chosen_sum < 0);
    /* probs sum to 1 */
    float pr[V];
    p.top_k = 0;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), 0);
    double sum = 0;
    for (int t = 0; t < V; t++)
        sum += pr[t];
    CHECKF(fabs(sum - 1.0) < 1e-5, "probs sum %g", sum);
    /* n_top larger than the finite tokens */
    for (int t = 0; t < V; t++)
        l[t] = t < 3 ? (float)t : -INFINITY;
    p = dsv4_sample_params_default();
    p.logprobs = true;
    p.n_top_logprobs = 10;
    CHECK_INT(dsv4_sample(s, &p, l, NULL, 0, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
    CHECK_INT(r.n_top, 3);
    CHECK_INT(r.top_ids[0], 2);
    CHECKF(fabs(exp(r.top_logprobs[0]) + exp(r.top_logprobs[1]) + exp(r.top_logprobs[2]) - 1) <
                   1e-6,
           "3-token raw sum");
    dsv4_sampler_free(s);
}

static void test_reproducible(void)
{
    enum { V = 5000 };
    struct dsv4_sampler *s, *s2;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    CHECK_INT(dsv4_sampler_init(V, &s2), 0);
    float *l = malloc(sizeof(float) * V);
    for (int t = 0; t < V; t++)
        l[t] = (float)(rng_unit() * 4.0);
    struct dsv4_sample_params p = dsv4_sample_params_default();
    p.seed = 1234;
    p.top_p = 0.95f;
    int32_t a[100], b[100];
    struct dsv4_sample_result r;
    for (int i = 0; i < 100; i++) {
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        a[i] = r.token;
    }
    /* a "restarted worker" (other sampler, positions replayed from 50) */
    for (int i = 50; i < 100; i++) {
        CHECK_INT(dsv4_sample(s2, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        b[i] = r.token;
    }
    int same = 0;
    for (int i = 50; i < 100; i++)
        same += a[i] == b[i];
    CHECK_INT(same, 50);
    /* another seed gives another sequence; a different stream too */
    p.seed = 1235;
    int diff = 0, diff_stream = 0;
    for (int i = 0; i < 100; i++) {
        CHECK_INT(dsv4_sample(s2, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        diff += r.token != a[i];
        p.seed = 1234;
        CHECK_INT(dsv4_sample(s2, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_DRAFT, &r), 0);
        diff_stream += r.token != a[i];
        p.seed = 1235;
    }
    CHECK(diff > 90);
    CHECK(diff_stream > 90);
    free(l);
    dsv4_sampler_free(s);
    dsv4_sampler_free(s2);
}

/* dsv4_sample_probs equals the sort-based reference over random configurations. */
static void test_filters_vs_reference(void)
{
    enum { VMAX = 2000 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(VMAX, &s), 0);
    float *l = malloc(sizeof(float) * VMAX), *pr = malloc(sizeof(float) * VMAX);
    double *ref = malloc(sizeof(double) * VMAX);
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        struct dsv4_sample_params p = dsv4_sample_params_default();
        int quant = it % 3 == 0; /* many exact ties */
        for (int t = 0; t < VMAX; t++) {
            double v = rng_unit() * 8.0 - 4.0;
            l[t] = quant ? (float)floor(v) : (float)v;
        }
        p.temperature = (float)(0.2 + rng_unit() * 1.5);
        p.top_k = it % 4 == 0   ? 0
                  : it % 4 == 1 ? 1100 + (int)(rng_u64() % 800)
                                : (int)(rng_u64() % 60) + 1;
        p.top_p = it % 5 == 0 ? 1.0f : (float)(0.05 + rng_unit() * 0.95);
        p.min_p = it % 2 ? 0.0f : (float)(rng_unit() * 0.3);
        CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), 0);
        ref_probs(l, VMAX, &p, ref);
        for (int t = 0; t < VMAX; t++) {
            if ((pr[t] == 0.0f) != (ref[t] == 0.0) || fabs(pr[t] - ref[t]) > 1e-5) {
                if (bad++ < 5)
                    fprintf(stderr, "it %d token %d: %g vs ref %g (k %d p %g minp %g T %g)\n", it,
                            t, pr[t], ref[t], p.top_k, p.top_p, p.min_p, p.temperature);
            }
        }
    }
    CHECK_INT(bad, 0);
    free(l);
    free(pr);
    free(ref);
    dsv4_sampler_free(s);
}

/* Draws follow the processed distribution (chi-square over 200k draws). */
static void test_distribution(void)
{
    enum { V = 24, DRAWS = 200000 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float l[V];
    for (int t = 0; t < V; t++)
        l[t] = (float)(rng_unit() * 5.0);
    static const struct {
        float T, top_p, min_p;
        int top_k;
    } cfg[] = {
            {1.0f, 1.0f, 0.0f, 0},   {0.7f, 1.0f, 0.0f, 10}, {1.3f, 0.8f, 0.0f, 0},
            {0.9f, 0.9f, 0.05f, 12}, {2.0f, 1.0f, 0.2f, 0},
    };
    for (size_t c = 0; c < DSV4_ARRAY_LEN(cfg); c++) {
        struct dsv4_sample_params p = dsv4_sample_params_default();
        p.temperature = cfg[c].T;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.top_k = cfg[c].top_k;
        p.seed = 1000 + c;
        long counts[V] = {0};
        struct dsv4_sample_result r;
        for (long i = 0; i < DRAWS; i++) {
            if (dsv4_sample(s, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r))
                break;
            counts[r.token]++;
        }
        double e[V], wrong[V];
        ref_probs(l, V, &p, e);
        int df, df2;
        double x = chi2(counts, e, V, DRAWS, &df);
        CHECKF(df > 0 && x < chi2_crit(df), "config %zu: chi2 %g df %d crit %g", c, x, df,
               chi2_crit(df));
        /* power: the unfiltered softmax(l / T) must be rejected when a filter cuts */
        struct dsv4_sample_params q = p;
        q.top_k = 0;
        q.top_p = 1.0f;
        q.min_p = 0.0f;
        ref_probs(l, V, &q, wrong);
        double y = chi2(counts, wrong, V, DRAWS, &df2);
        if (p.top_k || p.top_p < 1.0f || p.min_p > 0.0f)
            CHECKF(y > chi2_crit(df2), "config %zu: wrong distribution accepted (%g)", c, y);
        fprintf(stderr, "distribution config %zu: chi2 %.1f (df %d, crit %.1f); unfiltered %.3g\n",
                c, x, df, chi2_crit(df), y);
    }
    dsv4_sampler_free(s);
}

/*
 * dsv4_sample_draft: its row is dsv4_sample_probs' bit for bit, its token is
 * the DRAFT-stream draw at pos (the plain draw on the same uniform, up to
 * float rounding at a boundary), reproducible, distributed as its row, and
 * greedy params give the argmax with a one-hot row.
 */
static void test_draft(void)
{
    enum { V = 24, DRAWS = 100000 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float l[V], probs[V], ref[V];
    for (int t = 0; t < V; t++)
        l[t] = (float)(rng_unit() * 5.0);
    struct dsv4_sample_params p = dsv4_sample_params_default();
    p.temperature = 0.9f;
    p.top_k = 12;
    p.top_p = 0.95f;
    p.seed = 77;
    CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, ref), 0);
    long counts[V] = {0}, differ = 0, outside = 0;
    int32_t tok = -1, again = -1;
    struct dsv4_sample_result r;
    for (long i = 0; i < DRAWS; i++) {
        if (dsv4_sample_draft(s, &p, l, NULL, (uint64_t)i, probs, &tok) ||
            dsv4_sample(s, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_DRAFT, &r))
            break;
        if (i == 0) {
            CHECK(!memcmp(probs, ref, sizeof(probs)));
            CHECK_INT(dsv4_sample_draft(s, &p, l, NULL, 0, probs, &again), 0);
            CHECK_INT(again, tok);
        }
        outside += !(tok >= 0 && tok < V && probs[tok] > 0.0f);
        differ += tok != r.token;
        counts[tok]++;
    }
    CHECK_INT(outside, 0);
    CHECKF(differ <= DRAWS / 1000, "draft and plain draws on one uniform differ %ld times", differ);
    double e[V];
    for (int t = 0; t < V; t++)
        e[t] = ref[t];
    int df;
    double x = chi2(counts, e, V, DRAWS, &df);
    CHECKF(df > 0 && x < chi2_crit(df), "draft chi2 %g df %d crit %g", x, df, chi2_crit(df));
    /* power: the unfiltered softmax is rejected (top_k 12 of 24 cuts) */
    struct dsv4_sample_params q = p;
    q.top_k = 0;
    q.top_p = 1.0f;
    float wrong[V];
    CHECK_INT(dsv4_sample_probs(s, &q, l, NULL, wrong), 0);
    for (int t = 0; t < V; t++)
        e[t] = wrong[t];
    int df2;
    double y = chi2(counts, e, V, DRAWS, &df2);
    CHECKF(y > chi2_crit(df2), "draft: unfiltered distribution accepted (%g)", y);
    /* the stream matters: TOKEN-stream draws at the same positions are other tokens */
    long same = 0;
    for (long i = 0; i < 1000; i++) {
        CHECK_INT(dsv4_sample_draft(s, &p, l, NULL, (uint64_t)i, probs, &tok), 0);
        CHECK_INT(dsv4_sample(s, &p, l, NULL, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r), 0);
        same += tok == r.token;
    }
    CHECKF(same < 900, "draft stream equals the token stream %ld of 1000 times", same);
    /* greedy: the argmax (ties to the lower id) and a one-hot row */
    l[3] = l[17] = 100.0f;
    p.temperature = 0.0f;
    CHECK_INT(dsv4_sample_draft(s, &p, l, NULL, 5, probs, &tok), 0);
    CHECK_INT(tok, 3);
    for (int t = 0; t < V; t++)
        CHECK(probs[t] == (t == 3 ? 1.0f : 0.0f));
    CHECK_INT(dsv4_sample_draft(s, &p, l, NULL, 5, probs, NULL), DSV4_EINVAL);
    dsv4_sampler_free(s);
}

/* Draws a token from w[V] (sum 1) with the test's own generator. */
static int32_t test_draw(const float *w, int V)
{
    double u = rng_unit(), acc = 0;
    for (int t = 0; t < V; t++) {
        acc += w[t];
        if (u < acc)
            return t;
    }
    return V - 1;
}

static void random_dist(float *w, int V, int sparse)
{
    double s = 0;
    for (int t = 0; t < V; t++) {
        double v = 0.1 + rng_unit();
        w[t] = (float)(v * v);
        if (sparse && rng_unit() < 0.3)
            w[t] = 0.0f;
        s += w[t];
    }
    if (s == 0) {
        w[0] = 1;
        s = 1;
    }
    for (int t = 0; t < V; t++)
        w[t] = (float)(w[t] / s);
}

/* Speculative rejection sampling emits the target distribution. */
static void test_speculative(void)
{
    enum { V = 10, K = 3, TRIALS = 200000 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float p[(K + 1) * V], q[K * V];
    struct dsv4_sample_params prm = dsv4_sample_params_default();
    for (int greedy_drafts = 0; greedy_drafts < 2; greedy_drafts++) {
        for (int i = 0; i <= K; i++)
            random_dist(p + i * V, V, i == 1); /* row 1 has zeros */
        for (int i = 0; i < K; i++)
            random_dist(q + i * V, V, i == 2); /* row 2 has zeros */
        prm.seed = 77 + greedy_drafts;
        long counts[K + 1][V];
        long n_at[K + 1] = {0}, accepted[K] = {0};
        memset(counts, 0, sizeof(counts));
        for (long trial = 0; trial < TRIALS; trial++) {
            int32_t d[K], tok[K + 1];
            float lp[K + 1];
            int n = 0;
            for (int i = 0; i < K; i++)
                d[i] = greedy_drafts ? (int32_t)((trial / 3 + i) % V) : test_draw(q + i * V, V);
            int rc = dsv4_sample_speculative(s, &prm, K, p, d, greedy_drafts ? NULL : q,
                                             (uint64_t)trial * (K + 1), tok, lp, &n);
            if (rc) {
                CHECKF(rc == 0, "speculative rc %d: %s", rc, dsv4_errmsg());
                break;
            }
            for (int i = 0; i < n; i++) {
                counts[i][tok[i]]++;
                n_at[i]++;
                if (i < n - 1) {
                    accepted[i]++;
                    CHECK(tok[i] == d[i]);
                }
                if (fabs(lp[i] - log(p[i * V + tok[i]])) > 1e-5)
                    CHECKF(0, "logprob %d", i);
            }
        }
        for (int i = 0; i <= K; i++) {
            double e[V];
            for (int t = 0; t < V; t++)
                e[t] = p[i * V + t];
            int df;
            double x = chi2(counts[i], e, V, n_at[i], &df);
            CHECKF(x < chi2_crit(df), "%s drafts, position %d: chi2 %g (df %d, crit %g, n %ld)",
                   greedy_drafts ? "greedy" : "sampled", i, x, df, chi2_crit(df), n_at[i]);
            fprintf(stderr, "speculative %s drafts pos %d: n %ld chi2 %.1f (df %d, crit %.1f)\n",
                    greedy_drafts ? "greedy" : "sampled", i, n_at[i], x, df, chi2_crit(df));
        }
        /* acceptance of sampled drafts is sum_t min(p, q) */
        if (!greedy_drafts) {
            double a0 = 0;
            for (int t = 0; t < V; t++)
                a0 += fmin(p[t], q[t]);
            double rate = (double)accepted[0] / TRIALS;
            CHECKF(fabs(rate - a0) < 0.005, "acceptance %g vs %g", rate, a0);
        }
        /* power: the draft distribution is rejected as the output at position 0 */
        if (!greedy_drafts) {
            double e[V];
            for (int t = 0; t < V; t++)
                e[t] = q[t];
            int df;
            double x = chi2(counts[0], e, V, n_at[0], &df);
            CHECKF(!(x < chi2_crit(df)), "draft distribution accepted as output (%g)", x);
        }
    }
    /* greedy target (one-hot rows): accept while the draft is the argmax */
    float g[(K + 1) * V];
    memset(g, 0, sizeof(g));
    g[0 * V + 4] = g[1 * V + 2] = g[2 * V + 9] = g[3 * V + 1] = 1.0f;
    int32_t d1[K] = {4, 2, 9}, d2[K] = {4, 3, 9}, d3[K] = {5, 2, 9}, tok[K + 1];
    int n = 0;
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d1, NULL, 0, tok, NULL, &n), 0);
    CHECK_INT(n, 4);
    CHECK_INT(tok[3], 1);
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d2, NULL, 0, tok, NULL, &n), 0);
    CHECK_INT(n, 2);
    CHECK_INT(tok[0], 4);
    CHECK_INT(tok[1], 2);
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d3, q, 0, tok, NULL, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(tok[0], 4);
    /* k = 0: a plain draw from p_0 */
    CHECK_INT(dsv4_sample_speculative(s, &prm, 0, g, NULL, NULL, 0, tok, NULL, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(tok[0], 4);
    /* bad inputs */
    int32_t dbad[K] = {4, V, 9};
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, dbad, NULL, 0, tok, NULL, &n), DSV4_EINVAL);
    float qz[K * V];
    memset(qz, 0, sizeof(qz));
    qz[0] = 1.0f;
    qz[V + 2] = qz[2 * V + 9] = 1.0f;
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d1, qz, 0, tok, NULL, &n), DSV4_EINVAL);
    g[V + 5] = -0.5f;
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d1, NULL, 0, tok, NULL, &n), DSV4_EINVAL);
    g[V + 5] = NAN;
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d1, NULL, 0, tok, NULL, &n), DSV4_EINVAL);
    g[V + 5] = 0.0f;
    g[3 * V + 1] = 0.0f; /* an empty bonus row */
    CHECK_INT(dsv4_sample_speculative(s, &prm, K, g, d1, NULL, 0, tok, NULL, &n), DSV4_EINVAL);
    CHECK_INT(dsv4_sample_speculative(s, &prm, -1, g, d1, NULL, 0, tok, NULL, &n), DSV4_EINVAL);
    dsv4_sampler_free(s);
}

/* Best-of-n milliseconds of one dsv4_sample call (printed, never asserted). */
static double time_draw(struct dsv4_sampler *s, const struct dsv4_sample_params *p, const float *l,
                        const struct dsv4_sample_history *h)
{
    struct dsv4_sample_result r;
    double best = 1e30;
    for (int i = 0; i < 15; i++) {
        double t0 = dsv4_now();
        int rc = dsv4_sample(s, p, l, h, (uint64_t)i, DSV4_SAMPLE_STREAM_TOKEN, &r);
        double dt = dsv4_now() - t0;
        CHECK_INT(rc, 0);
        best = dt < best ? dt : best;
    }
    return best * 1e3;
}

/* The real vocabulary: filters against the reference, and the cost of a draw. */
static void test_full_vocab(void)
{
    enum { V = 129280 };
    struct dsv4_sampler *s;
    CHECK_INT(dsv4_sampler_init(V, &s), 0);
    float *l = malloc(sizeof(float) * V), *pr = malloc(sizeof(float) * V);
    double *ref = malloc(sizeof(double) * V);
    for (int t = 0; t < V; t++) { /* Gaussian logits, sd 3: a peaked, LM-like row */
        double u = rng_unit() + 1e-300, w = rng_unit();
        l[t] = (float)(3.0 * sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w));
    }
    static const struct {
        float T, top_p, min_p;
        int top_k;
    } cfg[] = {{0.8f, 0.95f, 0.0f, 0},
               {1.0f, 0.5f, 0.0f, 0},
               {0.6f, 1.0f, 0.0f, 50},
               {1.0f, 0.9f, 0.0f, 2000},
               {1.2f, 0.99f, 0.01f, 0}};
    int bad = 0;
    for (size_t c = 0; c < DSV4_ARRAY_LEN(cfg); c++) {
        struct dsv4_sample_params p = dsv4_sample_params_default();
        p.temperature = cfg[c].T;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.top_k = cfg[c].top_k;
        CHECK_INT(dsv4_sample_probs(s, &p, l, NULL, pr), 0);
        ref_probs(l, V, &p, ref);
        int kept = 0;
        for (int t = 0; t < V; t++) {
            kept += pr[t] > 0.0f;
            if ((pr[t] == 0.0f) != (ref[t] == 0.0) || fabs(pr[t] - ref[t]) > 1e-6)
                bad++;
        }
        fprintf(stderr, "vocab %d config %zu: %d tokens kept\n", V, c, kept);
    }
    CHECK_INT(bad, 0);

    int32_t hist[256];
    for (int i = 0; i < 256; i++)
        hist[i] = (int32_t)(rng_u64() % V);
    struct dsv4_sample_history h = {hist, 200, hist + 200, 56, NULL, 0};
    struct dsv4_sample_params p = dsv4_sample_params_default();
    p.temperature = 0.0f;
    double greedy = time_draw(s, &p, l, NULL);
    p.temperature = 0.8f;
    double plain = time_draw(s, &p, l, NULL);
    p.top_k = 50;
    double topk = time_draw(s, &p, l, NULL);
    p.top_k = 0;
    p.top_p = 0.95f;
    double topp = time_draw(s, &p, l, NULL);
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.3f;
    p.logprobs = true;
    p.n_top_logprobs = 5;
    double all = time_draw(s, &p, l, &h);
    fprintf(stderr,
            "vocab %d, ms per draw (best of 15): greedy %.3f, T=0.8 %.3f, top_k 50 %.3f, "
            "top_p 0.95 %.3f, top_p + penalties + 5 logprobs %.3f\n",
            V, greedy, plain, topk, topp, all);
    free(l);
    free(pr);
    free(ref);
    dsv4_sampler_free(s);
}

int main(void)
{
    test_philox();
    test_params();
    test_greedy();
    test_bad_logits();
    test_penalties();
    test_logprobs();
    test_reproducible();
    test_filters_vs_reference();
    test_distribution();
    test_draft();
    test_speculative();
    test_full_vocab();
    TEST_DONE();
}
