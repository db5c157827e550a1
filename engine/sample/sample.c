/*
 * sample.c - the sampling pipeline of sample.h: penalties, greedy,
 * temperature softmax, min-p / top-k / top-p, the draw, logprobs, and
 * speculative rejection sampling.
 *
 * Why it is built this way:
 *   - No sort of the vocabulary.  top-k up to HEAP_TOP_K keeps a heap
 *     during the softmax pass, larger k a quickselect; top-p is a "mass
 *     select" (quickselect that stops where the cumulative mass of the
 *     better part crosses the target) over the candidates that can still be
 *     in the nucleus; all O(V) expected.  Keys are (p desc, id asc), a strict
 *     total order, so the kept set does not depend on the visiting order.
 *   - The processed distribution is kept dense (p[t] = 0 for filtered
 *     tokens) and the draw walks it in id order, so a draw depends only on
 *     the distribution and the uniform, not on selection internals.
 *   - Penalties touch only the tokens of the history: counts are built in
 *     scratch and cleared again by the same pass that applies them, so the
 *     scratch is all-zero between calls (invariant checked nowhere else).
 *   - Uniforms come from Philox-4x32-10 (a counter-based generator: output =
 *     bijective scramble of the counter under the key) with key = seed and
 *     counter = (pos, stream): no state, reproducible after a restart.
 * Sums are accumulated in double; probabilities are stored as float.
 */
#include "engine/sample/sample.h"
#include "base/dsv4.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A candidate of the selections: its probability next to its id, so the
 * partitions stream through one array instead of gathering from p[V]. */
struct cand {
    float p;
    int32_t id;
};

struct dsv4_sampler {
    int32_t vocab;
    float *x;          /* [V] penalised logits */
    const float *xv;   /* the logits of this call: the caller's row or x */
    float *p;          /* [V] unnormalised processed probabilities */
    struct cand *cand; /* [V] candidates of the selections */
    int32_t *count;    /* [V] output-token counts, all zero between calls */
    uint8_t *seen;     /* [V] prompt/output membership, all zero between calls */
};

/* ---- counter-based generator: Philox-4x32-10 ---- */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint64_t m0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t m1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(m0 >> 32), lo0 = (uint32_t)m0;
        uint32_t hi1 = (uint32_t)(m1 >> 32), lo1 = (uint32_t)m1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void dsv4_sample_philox_kat(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    philox4x32_10(ctr, key, out);
}

double dsv4_sample_uniform(uint64_t seed, uint64_t pos, uint32_t stream)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)pos, (uint32_t)(pos >> 32), stream, 0};
    uint32_t o[4];
    philox4x32_10(ctr, key, o);
    uint64_t bits = (((uint64_t)o[0] << 32) | o[1]) >> 11; /* 53 bits */
    return (double)bits * 0x1p-53;
}

/* ---- parameters and lifetime ---- */

struct dsv4_sample_params dsv4_sample_params_default(void)
{
    struct dsv4_sample_params p;
    memset(&p, 0, sizeof(p));
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.seed = 0;
    p.logprobs = false;
    p.n_top_logprobs = 0;
    p.logprobs_mode = DSV4_SAMPLE_LOGPROBS_RAW;
    return p;
}

int dsv4_sample_params_check(const struct dsv4_sample_params *p)
{
    if (!p)
        return dsv4_error(DSV4_EINVAL, "sample: no parameters");
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return dsv4_error(DSV4_EINVAL, "sample: temperature %g not a finite value >= 0",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return dsv4_error(DSV4_EINVAL, "sample: top_p %g not in (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return dsv4_error(DSV4_EINVAL, "sample: min_p %g not in [0, 1]", (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return dsv4_error(DSV4_EINVAL, "sample: repetition_penalty %g not a finite value > 0",
                          (double)p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return dsv4_error(DSV4_EINVAL, "sample: presence_penalty %g not in [-2, 2]",
                          (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return dsv4_error(DSV4_EINVAL, "sample: frequency_penalty %g not in [-2, 2]",
                          (double)p->frequency_penalty);
    if (p->n_top_logprobs < 0 || p->n_top_logprobs > DSV4_SAMPLE_MAX_TOP_LOGPROBS)
        return dsv4_error(DSV4_EINVAL, "sample: n_top_logprobs %d not in [0, %d]",
                          (int)p->n_top_logprobs, DSV4_SAMPLE_MAX_TOP_LOGPROBS);
    if (p->n_top_logprobs > 0 && !p->logprobs)
        return dsv4_error(DSV4_EINVAL, "sample: n_top_logprobs %d without logprobs",
                          (int)p->n_top_logprobs);
    if (p->logprobs_mode != DSV4_SAMPLE_LOGPROBS_RAW &&
        p->logprobs_mode != DSV4_SAMPLE_LOGPROBS_PROCESSED)
        return dsv4_error(DSV4_EINVAL, "sample: unknown logprobs mode %d", (int)p->logprobs_mode);
    return 0;
}

int dsv4_sampler_init(int32_t vocab, struct dsv4_sampler **out)
{
    struct dsv4_sampler *s = NULL;
    if (!out)
        return dsv4_error(DSV4_EINVAL, "sampler_init: no output pointer");
    *out = NULL;
    if (vocab < 1)
        return dsv4_error(DSV4_EINVAL, "sampler_init: vocab %d < 1", (int)vocab);
    s = calloc(1, sizeof(*s));
    if (!s)
        goto fail;
    s->vocab = vocab;
    s->x = malloc((size_t)vocab * sizeof(float));
    s->p = malloc((size_t)vocab * sizeof(float));
    s->cand = malloc((size_t)vocab * sizeof(*s->cand));
    s->count = calloc((size_t)vocab, sizeof(int32_t));
    s->seen = calloc((size_t)vocab, 1);
    if (!s->x || !s->p || !s->cand || !s->count || !s->seen)
        goto fail;
    *out = s;
    return 0;
fail:
    dsv4_sampler_free(s);
    return dsv4_error(DSV4_ENOMEM, "sampler_init: no memory for vocab %d", (int)vocab);
}

void dsv4_sampler_free(struct dsv4_sampler *s)
{
    if (!s)
        return;
    free(s->x);
    free(s->p);
    free(s->cand);
    free(s->count);
    free(s->seen);
    free(s);
}

int32_t dsv4_sampler_vocab(const struct dsv4_sampler *s)
{
    return s ? s->vocab : 0;
}

/* ---- step 1: checked, penalised copy of the logits ---- */

static int check_ids(const int32_t *ids, size_t n, int32_t vocab, const char *what)
{
    if (n && !ids)
        return dsv4_error(DSV4_EINVAL, "sample: %s has %zu tokens but no array", what, n);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return dsv4_error(DSV4_EINVAL, "sample: %s[%zu] = %d outside the vocab [0, %d)", what,
                              i, (int)ids[i], (int)vocab);
    return 0;
}

/* Applies the penalties of one token t to x[t] once and clears its marks. */
static void penalise(struct dsv4_sampler *s, const struct dsv4_sample_params *pp, int32_t t)
{
    if (!s->seen[t])
        return;
    float v = s->x[t];
    if (pp->repetition_penalty != 1.0f)
        v = v > 0.0f ? v / pp->repetition_penalty : v * pp->repetition_penalty;
    if (s->count[t] > 0)
        v -= (float)s->count[t] * pp->frequency_penalty + pp->presence_penalty;
    s->x[t] = v;
    s->seen[t] = 0;
    s->count[t] = 0;
}

/* max of v[V] in four independent lanes; *bad = 1 if any entry is NaN or +inf. */
static float row_max(const float *v, int32_t V, int *bad)
{
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int flag = 0;
    int32_t t = 0;
    for (; t + 4 <= V; t += 4) {
        for (int l = 0; l < 4; l++) {
            float a = v[t + l];
            flag |= !(a < INFINITY);
            m[l] = a > m[l] ? a : m[l];
        }
    }
    for (; t < V; t++) {
        flag |= !(v[t] < INFINITY);
        m[0] = v[t] > m[0] ? v[t] : m[0];
    }
    *bad = flag;
    float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

/* The first token t with v[t] == max (the argmax with ties -> lowest id). */
static int32_t first_equal(const float *v, int32_t V, float max)
{
    for (int32_t t = 0; t < V; t++)
        if (v[t] == max)
            return t;
    return -1;
}

/*
 * s->xv = the logits, or s->x = a penalised copy when penalties apply;
 * *argmax = argmax_t xv_t (ties -> lowest id).  Rejects NaN / +inf logits,
 * rows with no finite maximum, and penalties that overflow to +inf.
 */
static int prepare(struct dsv4_sampler *s, const struct dsv4_sample_params *pp, const float *logits,
                   const struct dsv4_sample_history *h, int32_t *argmax)
{
    const int32_t V = s->vocab;
    int rc, bad;
    if (!logits)
        return dsv4_error(DSV4_EINVAL, "sample: no logits");
    float mx = row_max(logits, V, &bad);
    if (bad) {
        for (int32_t t = 0; t < V; t++)
            if (!(logits[t] < INFINITY))
                return dsv4_error(DSV4_EINVAL, "sample: logit %d is %s", (int)t,
                                  isnan(logits[t]) ? "NaN" : "+inf");
    }
    if (mx == -INFINITY)
        return dsv4_error(DSV4_EINVAL, "sample: every logit is -inf");
    s->xv = logits;
    bool penalties = pp->repetition_penalty != 1.0f || pp->presence_penalty != 0.0f ||
                     pp->frequency_penalty != 0.0f;
    if (h && penalties && (h->n_prompt || h->n_output || h->n_pending)) {
        if ((rc = check_ids(h->prompt, h->n_prompt, V, "prompt")) ||
            (rc = check_ids(h->output, h->n_output, V, "output")) ||
            (rc = check_ids(h->pending, h->n_pending, V, "pending")))
            return rc;
        memcpy(s->x, logits, (size_t)V * sizeof(float));
        s->xv = s->x;
        for (size_t i = 0; i < h->n_prompt; i++)
            s->seen[h->prompt[i]] = 1;
        for (size_t i = 0; i < h->n_output; i++) {
            s->seen[h->output[i]] = 1;
            s->count[h->output[i]]++;
        }
        for (size_t i = 0; i < h->n_pending; i++) {
            s->seen[h->pending[i]] = 1;
            s->count[h->pending[i]]++;
        }
        for (size_t i = 0; i < h->n_prompt; i++)
            penalise(s, pp, h->prompt[i]);
        for (size_t i = 0; i < h->n_output; i++)
            penalise(s, pp, h->output[i]);
        for (size_t i = 0; i < h->n_pending; i++)
            penalise(s, pp, h->pending[i]);
        mx = row_max(s->x, V, &bad);
        if (bad) {
            for (int32_t t = 0; t < V; t++)
                if (!(s->x[t] < INFINITY))
                    return dsv4_error(DSV4_EINVAL,
                                      "sample: logit %d overflows to +inf after penalties", (int)t);
        }
        if (mx == -INFINITY)
            return dsv4_error(DSV4_EINVAL, "sample: every logit is -inf after penalties");
    }
    *argmax = first_equal(s->xv, V, mx);
    DSV4_ASSERT(*argmax >= 0);
    return 0;
}

/* Sum of w[V] in four double lanes. */
static double row_sum(const float *w, int32_t V)
{
    double a[4] = {0, 0, 0, 0};
    int32_t t = 0;
    for (; t + 4 <= V; t += 4)
        for (int l = 0; l < 4; l++)
            a[l] += w[t + l];
    for (; t < V; t++)
        a[0] += w[t];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static bool is_greedy(const struct dsv4_sample_params *pp)
{
    return pp->temperature < DSV4_SAMPLE_GREEDY_EPS || pp->top_k == 1;
}

/* ---- steps 3-6: softmax and filters ---- */

/* a ranks before b: higher probability, then lower id. */
static inline bool better(struct cand a, struct cand b)
{
    return a.p > b.p || (a.p == b.p && a.id < b.id);
}

static inline void swap_cand(struct cand *a, struct cand *b)
{
    struct cand t = *a;
    *a = *b;
    *b = t;
}

/*
 * Partitions c[lo, hi) (hi - lo >= 1) around a median-of-three pivot: on
 * return c[lo, i) rank before c[i] (the pivot) and c[i+1, hi) after it.
 * *mass = sum of p over c[lo, i).
 */
static int32_t partition(struct cand *c, int32_t lo, int32_t hi, double *mass)
{
    int32_t mid = lo + (hi - lo) / 2, last = hi - 1;
    /* median of c[lo], c[mid], c[last] moved to c[last] */
    if (better(c[mid], c[lo]))
        swap_cand(&c[mid], &c[lo]);
    if (better(c[last], c[lo]))
        swap_cand(&c[last], &c[lo]);
    if (better(c[mid], c[last]))
        swap_cand(&c[mid], &c[last]);
    const struct cand pivot = c[last];
    int32_t i = lo;
    double m = 0.0;
    for (int32_t j = lo; j < last; j++) {
        if (better(c[j], pivot)) {
            m += c[j].p;
            swap_cand(&c[i], &c[j]);
            i++;
        }
    }
    swap_cand(&c[i], &c[last]);
    *mass = m;
    return i;
}

/* Reorders c[0, n) so that c[0, k) are its k best (0 < k < n). */
static void select_top_k(struct cand *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n;
    while (hi - lo > 1) {
        double unused;
        int32_t i = partition(c, lo, hi, &unused);
        if (i == k || i == k - 1)
            return;
        if (i < k)
            lo = i + 1;
        else
            hi = i;
    }
}

/*
 * Reorders c[0, n) and returns m such that c[0, m) are the tokens whose
 * better-ranked tokens hold less than `target` mass (the top-p nucleus;
 * m >= 1 when target > 0).
 */
static int32_t select_mass(struct cand *c, int32_t n, double target)
{
    int32_t lo = 0, hi = n;
    double acc = 0.0; /* mass of c[0, lo), all kept */
    while (lo < hi) {
        double m;
        int32_t i = partition(c, lo, hi, &m);
        if (acc + m >= target) {
            hi = i; /* the pivot and everything after it are dropped */
        } else {
            acc += m + c[i].p;
            lo = i + 1;
            if (acc >= target)
                return lo;
        }
    }
    return lo;
}

/* Largest top_k served by the heap (one pass, O(V + k log k) typical);
 * larger k go through quickselect over every candidate. */
#define HEAP_TOP_K 1024

/* Min-heap on `better` (root = the worst of the kept): restores from i down. */
static void heap_down(struct cand *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(h[w], h[l]))
            w = l;
        if (r < n && better(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        swap_cand(&h[i], &h[w]);
        i = w;
    }
}

static void heap_up(struct cand *h, int32_t i)
{
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!better(h[parent], h[i]))
            return;
        swap_cand(&h[parent], &h[i]);
        i = parent;
    }
}

/*
 * dst[V] = unnormalised processed probabilities (0 where filtered) for a
 * non-greedy draw; returns their sum (> 0).  xmax = max_t x_t, so the
 * argmax has p = exp(0) = 1 and min-p compares p against min_p itself.
 */
static double filter(struct dsv4_sampler *s, const struct dsv4_sample_params *pp, float xmax,
                     float *dst)
{
    const int32_t V = s->vocab;
    const float inv_t = 1.0f / pp->temperature;
    const float cut = pp->min_p;
    const bool top_k = pp->top_k > 0 && pp->top_k < V, top_p = pp->top_p < 1.0f;
    struct cand *c = s->cand;
    int32_t n = 0;
    double mass = 0.0;
    if (top_k && pp->top_k <= HEAP_TOP_K) {
        /* one pass keeping the k best in a heap */
        const int32_t k = pp->top_k;
        for (int32_t t = 0; t < V; t++) {
            float v = expf((s->xv[t] - xmax) * inv_t);
            dst[t] = 0.0f;
            if (!(v > 0.0f && v >= cut))
                continue;
            struct cand e = {v, t};
            if (n < k) {
                c[n] = e;
                heap_up(c, n++);
            } else if (better(e, c[0])) {
                c[0] = e;
                heap_down(c, n, 0);
            }
        }
        for (int32_t i = 0; i < n; i++) {
            dst[c[i].id] = c[i].p;
            mass += c[i].p;
        }
    } else {
        int32_t live = 0;
        for (int32_t t = 0; t < V; t++) {
            float v = expf((s->xv[t] - xmax) * inv_t);
            if (!(v > 0.0f && v >= cut))
                v = 0.0f;
            live += v > 0.0f;
            mass += v;
            dst[t] = v;
        }
        if (top_k || top_p) {
            /*
             * Only top-p: a token whose p is at most (1 - top_p) * mass / live
             * cannot be in the nucleus (it and every worse token together
             * hold at most live * p of the mass), so it is not a candidate.
             */
            float floor_p = 0.0f;
            if (!top_k)
                floor_p = (float)((1.0 - (double)pp->top_p) * mass / live * (1.0 - 1e-6));
            for (int32_t t = 0; t < V; t++)
                if (dst[t] > floor_p)
                    c[n++] = (struct cand){dst[t], t};
                else
                    dst[t] = 0.0f;
            if (top_k && pp->top_k < n) {
                select_top_k(c, n, pp->top_k);
                for (int32_t i = pp->top_k; i < n; i++)
                    dst[c[i].id] = 0.0f;
                n = pp->top_k;
                mass = 0.0;
                for (int32_t i = 0; i < n; i++)
                    mass += c[i].p;
            }
        }
    }
    DSV4_ASSERT(mass > 0.0); /* the argmax has p = 1 >= min_p */
    if (top_p) {
        int32_t m = select_mass(c, n, (double)pp->top_p * mass);
        for (int32_t i = m; i < n; i++)
            dst[c[i].id] = 0.0f;
    }
    return row_sum(dst, V);
}

/* The token at cumulative mass u * total of w[V], walking ids upwards. */
static int32_t draw(const float *w, int32_t V, double total, double u)
{
    double target = u * total, acc = 0.0;
    int32_t last = -1;
    for (int32_t t = 0; t < V; t++) {
        if (w[t] <= 0.0f)
            continue;
        acc += w[t];
        last = t;
        if (acc > target)
            return t;
    }
    return last; /* only when rounding put target at the very end */
}

/* ---- logprobs ---- */

/* log(sum_t exp(v_t)) over v[V] with at least one finite entry. */
static double log_sum_exp(const float *v, int32_t V)
{
    float m = -INFINITY;
    for (int32_t t = 0; t < V; t++)
        if (v[t] > m)
            m = v[t];
    double s = 0.0;
    for (int32_t t = 0; t < V; t++)
        s += expf(v[t] - m);
    return (double)m + log(s);
}

/* ids[0, *n) = the n best tokens of v[V] with v > lim, by (v desc, id asc). */
static void top_n(const float *v, int32_t V, float lim, int n, int32_t *ids, int *n_out)
{
    int have = 0;
    for (int32_t t = 0; t < V && n > 0; t++) {
        float x = v[t];
        if (!(x > lim))
            continue;
        if (have == n && !(x > v[ids[n - 1]]))
            continue; /* ties keep the lower id already present */
        int j = have < n ? have++ : n - 1;
        while (j > 0 && x > v[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = t;
    }
    *n_out = have;
}

static void fill_logprobs(struct dsv4_sampler *s, const struct dsv4_sample_params *pp,
                          const float *logits, bool greedy, double total,
                          struct dsv4_sample_result *out)
{
    const int32_t V = s->vocab;
    int n = 0;
    if (pp->logprobs_mode == DSV4_SAMPLE_LOGPROBS_PROCESSED && !greedy) {
        double lt = log(total);
        out->logprob = (float)(log((double)s->p[out->token]) - lt);
        top_n(s->p, V, 0.0f, pp->n_top_logprobs, out->top_ids, &n);
        for (int i = 0; i < n; i++)
            out->top_logprobs[i] = (float)(log((double)s->p[out->top_ids[i]]) - lt);
    } else {
        const float *v = pp->logprobs_mode == DSV4_SAMPLE_LOGPROBS_RAW ? logits : s->xv;
        double lse = log_sum_exp(v, V);
        out->logprob = (float)((double)v[out->token] - lse);
        top_n(v, V, -INFINITY, pp->n_top_logprobs, out->top_ids, &n);
        for (int i = 0; i < n; i++)
            out->top_logprobs[i] = (float)((double)v[out->top_ids[i]] - lse);
    }
    out->n_top = n;
}

/* ---- public draws ---- */

int dsv4_sample(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                const float *logits, const struct dsv4_sample_history *hist, uint64_t pos,
                enum dsv4_sample_stream stream, struct dsv4_sample_result *out)
{
    int rc;
    int32_t amax;
    if (!s || !out)
        return dsv4_error(DSV4_EINVAL, "sample: no sampler or result");
    if ((unsigned)stream >= DSV4_SAMPLE_STREAM_COUNT)
        return dsv4_error(DSV4_EINVAL, "sample: unknown stream %d", (int)stream);
    if ((rc = dsv4_sample_params_check(params)))
        return rc;
    if ((rc = prepare(s, params, logits, hist, &amax)))
        return rc;
    bool greedy = is_greedy(params);
    double total = 0.0;
    if (greedy) {
        out->token = amax;
    } else {
        total = filter(s, params, s->xv[amax], s->p);
        out->token = draw(s->p, s->vocab, total, dsv4_sample_uniform(params->seed, pos, stream));
    }
    out->logprob = NAN;
    out->n_top = 0;
    if (params->logprobs)
        fill_logprobs(s, params, logits, greedy, total, out);
    return 0;
}

int dsv4_sample_logprobs(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                         const float *logits, const struct dsv4_sample_history *hist, int32_t token,
                         struct dsv4_sample_result *out)
{
    int rc;
    int32_t amax;
    if (!s || !out)
        return dsv4_error(DSV4_EINVAL, "sample_logprobs: no sampler or result");
    if ((rc = dsv4_sample_params_check(params)))
        return rc;
    if (token < 0 || token >= s->vocab)
        return dsv4_error(DSV4_EINVAL, "sample_logprobs: token %d outside vocab %d", token,
                          s->vocab);
    if ((rc = prepare(s, params, logits, hist, &amax)))
        return rc;
    bool greedy = is_greedy(params);
    double total = greedy ? 0.0 : filter(s, params, s->xv[amax], s->p);
    out->token = token;
    out->logprob = NAN;
    out->n_top = 0;
    if (params->logprobs)
        fill_logprobs(s, params, logits, greedy, total, out);
    return 0;
}

int dsv4_sample_probs(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                      const float *logits, const struct dsv4_sample_history *hist, float *probs)
{
    int rc;
    int32_t amax;
    if (!s || !probs)
        return dsv4_error(DSV4_EINVAL, "sample_probs: no sampler or output");
    if ((rc = dsv4_sample_params_check(params)))
        return rc;
    if ((rc = prepare(s, params, logits, hist, &amax)))
        return rc;
    if (is_greedy(params)) {
        memset(probs, 0, (size_t)s->vocab * sizeof(float));
        probs[amax] = 1.0f;
        return 0;
    }
    double total = filter(s, params, s->xv[amax], probs);
    float inv = (float)(1.0 / total);
    for (int32_t t = 0; t < s->vocab; t++)
        probs[t] *= inv;
    return 0;
}

int dsv4_sample_draft(struct dsv4_sampler *s, const struct dsv4_sample_params *params,
                      const float *logits, const struct dsv4_sample_history *hist, uint64_t pos,
                      float *probs, int32_t *token)
{
    int rc;
    if (!token)
        return dsv4_error(DSV4_EINVAL, "sample_draft: no token output");
    if ((rc = dsv4_sample_probs(s, params, logits, hist, probs)))
        return rc;
    double total = row_sum(probs, s->vocab);
    *token = draw(probs, s->vocab, total,
                  dsv4_sample_uniform(params->seed, pos, DSV4_SAMPLE_STREAM_DRAFT));
    return 0;
}

/* Sum of row r[V]; DSV4_EINVAL unless every entry is finite and >= 0 and the sum > 0. */
static int row_mass(const float *r, int32_t V, const char *what, int i, double *sum)
{
    double m = 0.0;
    for (int32_t t = 0; t < V; t++) {
        float v = r[t];
        if (!(v >= 0.0f) || v == INFINITY)
            return dsv4_error(DSV4_EINVAL, "sample_speculative: %s row %d token %d is %g", what, i,
                              (int)t, (double)v);
        m += v;
    }
    if (!(m > 0.0))
        return dsv4_error(DSV4_EINVAL, "sample_speculative: %s row %d has no mass", what, i);
    *sum = m;
    return 0;
}

/* Residual draw from normalize(max(0, p/sp - q/sq)) (q NULL: one-hot on d). */
static int32_t draw_residual(const float *p, double sp, const float *q, double sq, int32_t d,
                             int32_t V, double u)
{
    double total = 0.0;
    for (int32_t t = 0; t < V; t++) {
        double r = (double)p[t] / sp - (q ? (double)q[t] / sq : (t == d ? 1.0 : 0.0));
        if (r > 0.0)
            total += r;
    }
    if (!(total > 0.0))
        return -1;
    double target = u * total, acc = 0.0;
    int32_t last = -1;
    for (int32_t t = 0; t < V; t++) {
        double r = (double)p[t] / sp - (q ? (double)q[t] / sq : (t == d ? 1.0 : 0.0));
        if (r <= 0.0)
            continue;
        acc += r;
        last = t;
        if (acc > target)
            return t;
    }
    return last;
}

int dsv4_sample_speculative(struct dsv4_sampler *s, const struct dsv4_sample_params *params, int k,
                            const float *p, const int32_t *drafts, const float *q, uint64_t pos,
                            int32_t *tokens, float *logprobs, int *n_out)
{
    int rc;
    if (!s || !params || !p || !tokens || !n_out || (k > 0 && !drafts))
        return dsv4_error(DSV4_EINVAL, "sample_speculative: missing argument");
    if (k < 0)
        return dsv4_error(DSV4_EINVAL, "sample_speculative: k = %d < 0", k);
    const int32_t V = s->vocab;
    *n_out = 0;
    if ((rc = check_ids(drafts, (size_t)k, V, "drafts")))
        return rc;
    for (int i = 0; i <= k; i++) {
        const float *pi = p + (size_t)i * V;
        double sp, sq = 1.0;
        if ((rc = row_mass(pi, V, "target", i, &sp)))
            return rc;
        if (i == k) {
            /* every draft accepted: the bonus token comes from the last row */
            int32_t t = draw(pi, V, sp,
                             dsv4_sample_uniform(params->seed, pos + (uint64_t)i,
                                                 DSV4_SAMPLE_STREAM_RESIDUAL));
            tokens[i] = t;
            if (logprobs)
                logprobs[i] = (float)log((double)pi[t] / sp);
            *n_out = i + 1;
            return 0;
        }
        const float *qi = q ? q + (size_t)i * V : NULL;
        int32_t d = drafts[i];
        if (qi && (rc = row_mass(qi, V, "draft", i, &sq)))
            return rc;
        double pd = (double)pi[d] / sp, qd = qi ? (double)qi[d] / sq : 1.0;
        if (!(qd > 0.0))
            return dsv4_error(DSV4_EINVAL,
                              "sample_speculative: draft %d (token %d) has draft probability 0", i,
                              (int)d);
        double u = dsv4_sample_uniform(params->seed, pos + (uint64_t)i, DSV4_SAMPLE_STREAM_ACCEPT);
        if (u * qd < pd) {
            tokens[i] = d;
            if (logprobs)
                logprobs[i] = (float)log(pd);
            continue;
        }
        double ur =
                dsv4_sample_uniform(params->seed, pos + (uint64_t)i, DSV4_SAMPLE_STREAM_RESIDUAL);
        int32_t t = draw_residual(pi, sp, qi, sq, d, V, ur);
        if (t < 0) /* p == q up to rounding: the residual is empty, p itself is exact */
            t = draw(pi, V, sp, ur);
        tokens[i] = t;
        if (logprobs)
            logprobs[i] = (float)log((double)pi[t] / sp);
        *n_out = i + 1;
        return 0;
    }
    return dsv4_error(DSV4_EINTERNAL, "sample_speculative: fell out of the verify loop");
}
