/*
 * backend.c (kernels/cpu) - the "cpu" backend: the op table of
 * kernels/backend.h on host memory, run over the persistent thread pool
 * (kernels/cpu/pool.c) with the fast kernels of this folder.
 *
 * Every op is the ref backend's per-row body (kernels/ref/backend.h) run in
 * parallel over rows, tokens or (token, head range) pairs, with the oracle's
 * inner kernels replaced where time goes: GEMMs by dsv4_cpu_linear, attention
 * by dsv4_cpu_sparse_attn, the element-wise ops (RMSNorm, RoPE, SwiGLU, BF16
 * rounding, activation simulation, the mHC and MoE sums, argmax) by the vector
 * versions of kernels/cpu/ops.h, whose bodies are written out here.  Rows
 * are independent and each is computed by one thread in a fixed order, so
 * results do not depend on the thread count or on the other rows of the
 * batch (batch invariance, kernels/backend.h).
 *
 * Scratch: per-thread task buffers in the pool (sized by reserve) and this
 * backend's staging buffers for the grouped GEMMs; nothing is allocated per
 * call once reserve() ran with the engine's limits.
 */
#include "kernels/cpu/cpu.h"

#include "base/dsv4.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/backend.h"
#include "kernels/ref/ops.h"

#include <stdlib.h>
#include <string.h>

/* A growable scratch array (grown only by reserve). */
struct fbuf {
    float *p;
    int64_t cap;
};

struct cpu_be {
    struct dsv4_backend be;
    struct dsv4_pool *pool;
    struct dsv4_be_limits lim;
    size_t task_bytes;
    /* staging: grouped GEMM input/output, hc mixes, MoE rows (x, gate, up, hidden, out) */
    struct fbuf xg, yg, mix, xb, gb, ub, hb, yb;
    int *ecnt, *elist;
    int64_t cap_e;
};

static struct cpu_be *C(struct dsv4_backend *be)
{
    return be->impl;
}

static struct dsv4_pool *P(struct dsv4_backend *be)
{
    return C(be)->pool;
}

/* ------------------------------------------------------------ lifetime */

static void cpu_destroy(struct dsv4_backend *be)
{
    struct cpu_be *c = C(be);
    dsv4_pool_free(c->pool);
    void *bufs[] = {c->xg.p, c->yg.p, c->mix.p, c->xb.p, c->gb.p,
                    c->ub.p, c->hb.p, c->yb.p,  c->ecnt, c->elist};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bufs); i++)
        free(bufs[i]);
    free(c);
}

static int grow(struct fbuf *b, int64_t n)
{
    if (n <= b->cap)
        return 0;
    float *q = realloc(b->p, sizeof(float) * (size_t)n);
    if (!q)
        return -1;
    b->p = q;
    b->cap = n;
    return 0;
}

/* cpu_moe takes the moe_few path up to this many (token, slot) pairs (a decode step of up to
 * 85 tokens at top-6; the shared activation buffer holds 2 rows per pair), and
 * cpu_linear_multi runs its products as one job up to this many activation rows in all
 * (larger products fill the threads on their own) */
#define MOE_FEW_PAIRS  512
#define LIN_MULTI_ROWS 64

static int cpu_reserve(struct dsv4_backend *be, const struct dsv4_be_limits *lim)
{
    struct cpu_be *c = C(be);
    int64_t T = DSV4_MAX(lim->tokens, (int64_t)1), D = lim->hidden, I = lim->inter;
    int64_t k = DSV4_MAX(lim->topk, (int64_t)1), wide = DSV4_MAX(DSV4_MAX(D, I), lim->cols);
    int rc = 0;
    c->task_bytes = dsv4_ref_task_bytes(lim);
    for (int i = 0; i < dsv4_pool_threads(c->pool); i++)
        if (!dsv4_pool_scratch(c->pool, i, c->task_bytes))
            rc = -1;
    /* grouped GEMM: x of one group [T, cols], y of all rows [T, 4 * wide] at most */
    rc |= grow(&c->xg, T * wide);
    rc |= grow(&c->yg, T * wide * 4);
    rc |= grow(&c->mix, T * (2 + 16) * 16);
    struct fbuf *moe[] = {&c->xb, &c->gb, &c->ub, &c->hb, &c->yb};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(moe); i++)
        rc |= grow(moe[i], T * k * DSV4_MAX(D, I));
    if (lim->experts + 1 > c->cap_e || T * k > c->cap_e) {
        int64_t n = DSV4_MAX(lim->experts + 1, T * k);
        int *a = realloc(c->ecnt, sizeof(int) * n),
            *b = a ? realloc(c->elist, sizeof(int) * n) : NULL;
        if (a)
            c->ecnt = a;
        if (b) {
            c->elist = b;
            c->cap_e = n;
        } else {
            rc = -1;
        }
    }
    /* dsv4_cpu_linear at up to 4T rows; moe_few's products: 2 x its pairs in all */
    int64_t lin_m = DSV4_MAX(T * 4, 2 * DSV4_MIN(T * k, (int64_t)MOE_FEW_PAIRS));
    lin_m = DSV4_MAX(lin_m, (int64_t)LIN_MULTI_ROWS); /* and cpu_linear_multi's */
    if (!rc && dsv4_cpu_linear_reserve(c->pool, lin_m, DSV4_MAX(wide, lim->cols)))
        rc = -1;
    if (rc)
        return dsv4_error(DSV4_ENOMEM, "cpu backend: out of memory for scratch (%lld tokens)",
                          (long long)T);
    c->lim = *lim;
    return 0;
}

/* ------------------------------------------------------------ row-parallel ops */

struct rows_job {
    const struct dsv4_tensor *x, *y, *u, *h;
    const float *w;
    const int64_t *pos;
    const struct dsv4_rope *rope;
    float eps, limit;
    unsigned flags;
    bool inverse;
    enum dsv4_sim sim;
    int group;
};

/* row r of a 2-D view with a row stride (or of a contiguous N-D one) */
static float *frow(const struct dsv4_tensor *t, int64_t r)
{
    return (float *)t->data + r * dsv4_be_ld(t);
}

static void t_rmsnorm(void *arg, int64_t r, int th)
{
    const struct rows_job *j = arg;
    int64_t n = dsv4_be_cols(j->x);
    float *y = frow(j->y, r);
    (void)th;
    dsv4_cpu_rmsnorm(frow(j->x, r), j->w, n, j->eps, y);
    if (j->flags & DSV4_OP_BF16)
        dsv4_cpu_round_bf16(y, n);
}

static void cpu_rmsnorm(struct dsv4_backend *be, const struct dsv4_tensor *x, const float *w,
                        float eps, const struct dsv4_tensor *y, unsigned flags)
{
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_be_rows(x) == dsv4_be_rows(y) && dsv4_be_cols(x) == dsv4_be_cols(y));
    struct rows_job j = {.x = x, .y = y, .w = w, .eps = eps, .flags = flags};
    dsv4_pool_run(P(be), t_rmsnorm, &j, dsv4_be_rows(x));
}

static void t_rope(void *arg, int64_t t, int th)
{
    const struct rows_job *j = arg;
    int64_t nh = j->x->shape[1], dh = j->x->shape[2];
    (void)th;
    dsv4_cpu_rope(j->rope, (float *)j->x->data + t * nh * dh + dh - j->rope->dim, nh, dh, j->pos[t],
                  j->inverse, j->flags & DSV4_OP_BF16);
}

static void cpu_rope(struct dsv4_backend *be, const struct dsv4_tensor *x, const int64_t *pos,
                     const struct dsv4_rope *rp, bool inverse, unsigned flags)
{
    dsv4_be_check(x, DSV4_DTYPE_F32, 3);
    DSV4_ASSERT(rp->dim <= x->shape[2]);
    struct rows_job j = {.x = x, .pos = pos, .rope = rp, .inverse = inverse, .flags = flags};
    dsv4_pool_run(P(be), t_rope, &j, x->shape[0]);
}

static void t_act_sim(void *arg, int64_t r, int th)
{
    const struct rows_job *j = arg;
    (void)th;
    dsv4_cpu_act_sim(frow(j->x, r), dsv4_be_cols(j->x), j->sim, j->group);
}

static void cpu_act_sim(struct dsv4_backend *be, const struct dsv4_tensor *x, enum dsv4_sim kind,
                        int group)
{
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    struct rows_job j = {.x = x, .sim = kind, .group = group};
    dsv4_pool_run(P(be), t_act_sim, &j, dsv4_be_rows(x));
}

static void t_hadamard(void *arg, int64_t r, int th)
{
    const struct rows_job *j = arg;
    (void)th;
    dsv4_ref_hadamard_row(j->x, j->flags, r);
}

static void cpu_hadamard(struct dsv4_backend *be, const struct dsv4_tensor *x, unsigned flags)
{
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    struct rows_job j = {.x = x, .flags = flags};
    dsv4_pool_run(P(be), t_hadamard, &j, dsv4_be_rows(x));
}

static void t_swiglu(void *arg, int64_t t, int th)
{
    const struct rows_job *j = arg;
    int64_t n = dsv4_be_cols(j->x);
    float *h = frow(j->h, t);
    (void)th;
    dsv4_cpu_swiglu(frow(j->x, t), frow(j->u, t), n, j->limit, j->w ? j->w[t] : 1.0f, h);
    if (j->flags & DSV4_OP_BF16)
        dsv4_cpu_round_bf16(h, n);
}

static void cpu_swiglu(struct dsv4_backend *be, const struct dsv4_tensor *g,
                       const struct dsv4_tensor *u, float limit, const float *w,
                       const struct dsv4_tensor *h, unsigned flags)
{
    struct rows_job j = {.x = g, .u = u, .limit = limit, .w = w, .h = h, .flags = flags};
    dsv4_pool_run(P(be), t_swiglu, &j, dsv4_be_rows(g));
}

struct round_job {
    float *x;
    int64_t n, per;
};

static void t_round(void *arg, int64_t i, int th)
{
    const struct round_job *j = arg;
    (void)th;
    int64_t b = i * j->per, e = DSV4_MIN(j->n, b + j->per);
    dsv4_cpu_round_bf16(j->x + b, e - b);
}

static void round_n(struct dsv4_backend *be, float *x, int64_t n)
{
    if (n < 65536) {
        dsv4_cpu_round_bf16(x, n);
        return;
    }
    struct round_job j = {x, n, 16384};
    dsv4_pool_run(P(be), t_round, &j, (n + j.per - 1) / j.per);
}

static void cpu_round_bf16(struct dsv4_backend *be, const struct dsv4_tensor *x)
{
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_tensor_contig(x));
    round_n(be, x->data, dsv4_tensor_numel(x));
}

/* ------------------------------------------------------------ GEMMs */

/* the shapes of y = lin(l, x) (asserted); returns m */
static int64_t lin_shapes(const struct dsv4_lin *l, const struct dsv4_tensor *x,
                          const struct dsv4_tensor *y)
{
    int64_t m = dsv4_be_rows(x);
    dsv4_be_check(x, DSV4_DTYPE_F32, -1);
    dsv4_be_check(y, DSV4_DTYPE_F32, -1);
    DSV4_ASSERT(dsv4_be_cols(x) == l->w.cols && dsv4_be_cols(y) == l->w.rows &&
                dsv4_be_rows(y) == m && dsv4_tensor_contig(x) && dsv4_tensor_contig(y));
    return m;
}

static void cpu_linear(struct dsv4_backend *be, const struct dsv4_lin *l,
                       const struct dsv4_tensor *x, const struct dsv4_tensor *y, unsigned flags)
{
    int64_t m = lin_shapes(l, x, y);
    dsv4_cpu_linear(P(be), &l->w, l->act, x->data, m, y->data);
    if (flags & DSV4_OP_BF16)
        round_n(be, y->data, m * l->w.rows);
}

static void cpu_linear_multi(struct dsv4_backend *be, int n, const struct dsv4_lin *const *l,
                             const struct dsv4_tensor *x, const struct dsv4_tensor *const *y,
                             const unsigned *flags)
{
    int64_t m = dsv4_be_rows(x);
    if (n > DSV4_CPU_LIN_MULTI_MAX || n * m > LIN_MULTI_ROWS) {
        for (int i = 0; i < n; i++)
            cpu_linear(be, l[i], x, y[i], flags[i]);
        return;
    }
    struct dsv4_cpu_lin it[DSV4_CPU_LIN_MULTI_MAX];
    for (int i = 0; i < n; i++) {
        lin_shapes(l[i], x, y[i]);
        it[i] = (struct dsv4_cpu_lin){
                .w = &l[i]->w, .act = l[i]->act, .x = x->data, .m = m, .y = y[i]->data};
    }
    dsv4_cpu_linear_multi(P(be), it, n);
    for (int i = 0; i < n; i++)
        if (flags[i] & DSV4_OP_BF16)
            round_n(be, y[i]->data, m * l[i]->w.rows);
}

static void cpu_linear_grouped(struct dsv4_backend *be, const struct dsv4_lin *l, int G,
                               const struct dsv4_tensor *x, const struct dsv4_tensor *y,
                               unsigned flags)
{
    struct cpu_be *c = C(be);
    int64_t m = dsv4_be_rows(x), R = l->w.rows / G, K = l->w.cols;
    DSV4_ASSERT(l->w.rows % G == 0 && dsv4_be_cols(x) == G * K && dsv4_be_cols(y) == G * R);
    DSV4_ASSERT(m * K <= c->xg.cap && m * l->w.rows <= c->yg.cap);
    /* every group a row slice of its own: one dsv4_cpu_linear_multi job reading each group's
     * columns of x and writing its columns of y in place (row strides), no copies */
    struct dsv4_cpu_lin it[DSV4_CPU_LIN_MULTI_MAX];
    struct dsv4_qweight sw[DSV4_CPU_LIN_MULTI_MAX];
    bool views = G <= DSV4_CPU_LIN_MULTI_MAX && m > 0;
    for (int g = 0; g < G && views; g++) {
        views = dsv4_qweight_slice(&l->w, g * R, R, &sw[g]);
        it[g] = (struct dsv4_cpu_lin){.w = &sw[g],
                                      .act = l->act,
                                      .x = (const float *)x->data + g * K,
                                      .m = m,
                                      .y = (float *)y->data + g * R,
                                      .ldx = G * K,
                                      .ldy = G * R};
    }
    if (views) {
        dsv4_cpu_linear_multi(c->pool, it, G);
        if (flags & DSV4_OP_BF16)
            round_n(be, y->data, m * G * R);
        return;
    }
    for (int g = 0; g < G; g++) {
        struct dsv4_lin sub = *l;
        bool own = dsv4_qweight_slice(&l->w, g * R, R, &sub.w);
        for (int64_t t = 0; t < m; t++)
            memcpy(c->xg.p + t * K, (const float *)x->data + t * G * K + g * K, sizeof(float) * K);
        if (own)
            dsv4_cpu_linear(c->pool, &sub.w, sub.act, c->xg.p, m, c->yg.p);
        else
            dsv4_cpu_linear(c->pool, &l->w, l->act, c->xg.p, m, c->yg.p);
        int64_t ys = own ? R : l->w.rows, y0 = own ? 0 : g * R;
        for (int64_t t = 0; t < m; t++)
            memcpy((float *)y->data + t * G * R + g * R, c->yg.p + t * ys + y0, sizeof(float) * R);
    }
    if (flags & DSV4_OP_BF16)
        round_n(be, y->data, m * G * R);
}

struct moe_job {
    const struct dsv4_moe_args *a;
    struct cpu_be *c;
    const int *lst;
    int n;
};

static void t_swiglu_rows(void *arg, int64_t j, int th)
{
    const struct moe_job *mj = arg;
    const struct dsv4_moe_args *a = mj->a;
    struct cpu_be *c = mj->c;
    int64_t I = a->I;
    (void)th;
    float *h = c->hb.p + j * I;
    dsv4_cpu_swiglu(c->gb.p + j * I, c->ub.p + j * I, I, a->limit, a->wts[mj->lst[j]], h);
    dsv4_cpu_round_bf16(h, I);
}

/* The products of one stage of moe_few for the experts with pairs from *e on, as many as one
 * dsv4_cpu_linear_multi call takes: w1 and w3 (xb -> gb, ub) or w2 (hb -> yb); returns their
 * count and leaves *e at the first expert not taken. */
static int moe_stage(struct cpu_be *c, const struct dsv4_moe_args *a, bool down,
                     struct dsv4_cpu_lin *it, int *e0)
{
    int64_t D = a->D, I = a->I;
    int n = 0, e = *e0;
    for (; e < a->e1; e++) {
        int beg = e > 0 ? c->ecnt[e - 1] : 0, m = c->ecnt[e] - beg;
        if (m <= 0)
            continue;
        if (n + (down ? 1 : 2) > DSV4_CPU_LIN_MULTI_MAX)
            break;
        const struct dsv4_ffn_w *w = &a->ex[e - a->e0];
        if (down) {
            it[n++] = (struct dsv4_cpu_lin){.w = &w->w2.w,
                                            .act = w->w2.act,
                                            .x = c->hb.p + beg * I,
                                            .m = m,
                                            .y = c->yb.p + beg * D};
        } else {
            const float *x = c->xb.p + beg * D;
            it[n++] = (struct dsv4_cpu_lin){
                    .w = &w->w1.w, .act = w->w1.act, .x = x, .m = m, .y = c->gb.p + beg * I};
            it[n++] = (struct dsv4_cpu_lin){
                    .w = &w->w3.w, .act = w->w3.act, .x = x, .m = m, .y = c->ub.p + beg * I};
        }
    }
    *e0 = e;
    return n;
}

/* A few (token, slot) pairs (a decode step): the experts' products of a stage in pairs of pool
 * jobs (dsv4_cpu_linear_multi, up to DSV4_CPU_LIN_MULTI_MAX products each), so that the
 * threads share the experts instead of taking one small product at a time; the same outputs,
 * bit for bit, as one expert at a time.  The pairs are gathered in elist order: expert e's
 * rows are [ecnt[e - 1], ecnt[e]). */
static void moe_few(struct dsv4_backend *be, const struct dsv4_moe_args *a, int total)
{
    struct cpu_be *c = C(be);
    int64_t D = a->D, I = a->I;
    int k = a->k;
    struct dsv4_cpu_lin it[DSV4_CPU_LIN_MULTI_MAX];
    for (int j = 0; j < total; j++)
        memcpy(c->xb.p + j * D, a->x + (c->elist[j] / k) * D, sizeof(float) * D);
    for (int e = a->e0; e < a->e1;)
        dsv4_cpu_linear_multi(c->pool, it, moe_stage(c, a, false, it, &e));
    round_n(be, c->gb.p, total * I);
    round_n(be, c->ub.p, total * I);
    struct moe_job mj = {a, c, c->elist, total};
    dsv4_pool_run(c->pool, t_swiglu_rows, &mj, total);
    for (int e = a->e0; e < a->e1;)
        dsv4_cpu_linear_multi(c->pool, it, moe_stage(c, a, true, it, &e));
    round_n(be, c->yb.p, total * D);
    for (int j = 0; j < total; j++) {
        int64_t t = c->elist[j] / k, i = c->elist[j] % k;
        memcpy(a->out + (t * a->slots + i) * D, c->yb.p + j * D, sizeof(float) * D);
    }
}

static void cpu_moe(struct dsv4_backend *be, const struct dsv4_moe_args *a)
{
    struct cpu_be *c = C(be);
    int64_t D = a->D, I = a->I, E = a->e1;
    int k = a->k, T = a->T;
    DSV4_ASSERT((int64_t)T * k * DSV4_MAX(D, I) <= c->xb.cap && E + 1 <= c->cap_e);
    /* counting sort of the (token, slot) pairs by local expert */
    memset(c->ecnt, 0, sizeof(int) * (E + 1));
    for (int64_t t = 0; t < T; t++) {
        for (int i = 0; i < k; i++) {
            int e = a->ids[t * k + i];
            if (e >= a->e0 && e < a->e1)
                c->ecnt[e + 1]++;
            else
                memset(a->out + (t * a->slots + i) * D, 0, sizeof(float) * D);
        }
    }
    for (int64_t e = 0; e < E; e++)
        c->ecnt[e + 1] += c->ecnt[e];
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < k; i++) {
            int e = a->ids[t * k + i];
            if (e >= a->e0 && e < a->e1)
                c->elist[c->ecnt[e]++] = (int)(t * k + i);
        }
    /* ecnt[e] is now the end of e's run; its start is ecnt[e - 1] (0 for e = 0) */
    int total = E > 0 ? c->ecnt[E - 1] : 0;
    if (total <= MOE_FEW_PAIRS) {
        moe_few(be, a, total);
        return;
    }
    for (int e = a->e0; e < a->e1; e++) {
        int beg = e > 0 ? c->ecnt[e - 1] : 0, n = c->ecnt[e] - beg;
        if (n <= 0)
            continue;
        const struct dsv4_ffn_w *w = &a->ex[e - a->e0];
        const int *lst = c->elist + beg;
        for (int j = 0; j < n; j++)
            memcpy(c->xb.p + j * D, a->x + (lst[j] / k) * D, sizeof(float) * D);
        dsv4_cpu_linear(c->pool, &w->w1.w, w->w1.act, c->xb.p, n, c->gb.p);
        dsv4_cpu_linear(c->pool, &w->w3.w, w->w3.act, c->xb.p, n, c->ub.p);
        round_n(be, c->gb.p, n * I);
        round_n(be, c->ub.p, n * I);
        struct moe_job mj = {a, c, lst, n};
        dsv4_pool_run(c->pool, t_swiglu_rows, &mj, n);
        dsv4_cpu_linear(c->pool, &w->w2.w, w->w2.act, c->hb.p, n, c->yb.p);
        round_n(be, c->yb.p, n * D);
        for (int j = 0; j < n; j++) {
            int64_t t = lst[j] / k, i = lst[j] % k;
            memcpy(a->out + (t * a->slots + i) * D, c->yb.p + j * D, sizeof(float) * D);
        }
    }
}

struct combine_job {
    const struct dsv4_tensor *slots, *out;
    unsigned flags;
};

static void t_combine(void *arg, int64_t t, int th)
{
    const struct combine_job *j = arg;
    int64_t S = j->slots->shape[1], D = j->slots->shape[2];
    float *o = (float *)j->out->data + t * D;
    (void)th;
    dsv4_cpu_sum_rows((const float *)j->slots->data + t * S * D, S, D, o);
    if (j->flags & DSV4_OP_BF16)
        dsv4_cpu_round_bf16(o, D);
}

static void cpu_moe_combine(struct dsv4_backend *be, const struct dsv4_tensor *slots,
                            const struct dsv4_tensor *out, unsigned flags)
{
    dsv4_be_check(slots, DSV4_DTYPE_F32, 3);
    struct combine_job j = {slots, out, flags};
    dsv4_pool_run(P(be), t_combine, &j, slots->shape[0]);
}

struct route_job {
    const struct dsv4_route_args *a;
    struct cpu_be *c;
};

static void t_route(void *arg, int64_t t, int th)
{
    const struct route_job *j = arg;
    dsv4_ref_route_token(j->a, (int)t, dsv4_pool_scratch(j->c->pool, th, j->c->task_bytes));
}

static void cpu_route(struct dsv4_backend *be, const struct dsv4_route_args *a)
{
    DSV4_ASSERT((size_t)a->E * sizeof(float) <= C(be)->task_bytes);
    struct route_job j = {a, C(be)};
    dsv4_pool_run(P(be), t_route, &j, a->T);
}

/* ------------------------------------------------------------ embedding, mHC */

struct embed_job {
    const uint16_t *table;
    int64_t v0, nv;
    const struct dsv4_tensor *tokens, *out;
};

static void t_embed(void *arg, int64_t t, int th)
{
    const struct embed_job *j = arg;
    (void)th;
    dsv4_ref_embed_row(j->table, j->v0, j->nv, j->tokens, j->out, t);
}

static void cpu_embed(struct dsv4_backend *be, const uint16_t *table, int64_t v0, int64_t nv,
                      const struct dsv4_tensor *tokens, const struct dsv4_tensor *out)
{
    struct embed_job j = {table, v0, nv, tokens, out};
    dsv4_pool_run(P(be), t_embed, &j, dsv4_be_rows(out));
}

struct hc_job {
    const struct dsv4_hc_params *p;
    const struct dsv4_tensor *X, *y, *xn, *post, *comb, *A, *Xo;
    const float *norm_w, *mix;
    float eps;
    unsigned flags;
    int nmix;
};

/* The F32 projection fn . flatten(X) of an mHC site for T tokens as one GEMM. */
static const float *hc_mix(struct cpu_be *c, const struct dsv4_hc_params *p,
                           const struct dsv4_tensor *X, int nmix)
{
    int64_t T = X->shape[0], n = X->shape[1] * X->shape[2];
    struct dsv4_qweight w = {.fmt = DSV4_WFMT_F32,
                             .rows = nmix,
                             .cols = n,
                             .w = p->fn,
                             .scale2 = 1.0f,
                             .input_scale = 1.0f};
    DSV4_ASSERT(T * nmix <= c->mix.cap);
    dsv4_cpu_linear(c->pool, &w, DSV4_ACT_F32, X->data, T, c->mix.p);
    return c->mix.p;
}

/* dsv4_ref_hc_pre_token with the vector rho, stream sum, norm and roundings */
static void t_hc_pre(void *arg, int64_t t, int th)
{
    const struct hc_job *j = arg;
    const struct dsv4_hc_params *p = j->p;
    int hc = p->hc;
    int64_t D = dsv4_be_cols(j->y);
    const float *X = (const float *)j->X->data + t * hc * D;
    float *y = (float *)j->y->data + t * D, *xn = (float *)j->xn->data + t * D, pre[16];
    (void)th;
    dsv4_ref_hc_weights(j->mix + t * j->nmix, dsv4_cpu_rms_inv(X, hc * D, p->norm_eps), hc,
                        p->scale, p->base, p->hc_eps, p->iters, pre,
                        (float *)j->post->data + t * hc, (float *)j->comb->data + t * hc * hc);
    dsv4_cpu_hc_sum(X, pre, hc, D, y);
    dsv4_cpu_round_bf16(y, D);
    dsv4_cpu_rmsnorm(y, j->norm_w, D, j->eps, xn);
    dsv4_cpu_round_bf16(xn, D);
}

static void cpu_hc_pre(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                       const struct dsv4_tensor *X, const float *norm_w, float eps,
                       const struct dsv4_tensor *y, const struct dsv4_tensor *xn,
                       const struct dsv4_tensor *post, const struct dsv4_tensor *comb)
{
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    int nmix = (2 + p->hc) * p->hc;
    struct hc_job j = {.p = p,
                       .X = X,
                       .y = y,
                       .xn = xn,
                       .post = post,
                       .comb = comb,
                       .norm_w = norm_w,
                       .eps = eps,
                       .nmix = nmix};
    j.mix = hc_mix(C(be), p, X, nmix);
    dsv4_pool_run(P(be), t_hc_pre, &j, X->shape[0]);
}

static void t_hc_post(void *arg, int64_t t, int th)
{
    const struct hc_job *j = arg;
    int hc = (int)j->X->shape[1];
    int64_t D = j->X->shape[2];
    float *xo = (float *)j->Xo->data + t * hc * D;
    (void)th;
    dsv4_cpu_hc_post((const float *)j->A->data + t * D, (const float *)j->X->data + t * hc * D,
                     (const float *)j->post->data + t * hc,
                     (const float *)j->comb->data + t * hc * hc, hc, D, xo);
    if (j->flags & DSV4_OP_BF16)
        dsv4_cpu_round_bf16(xo, hc * D);
}

static void cpu_hc_post(struct dsv4_backend *be, const struct dsv4_tensor *A,
                        const struct dsv4_tensor *X, const struct dsv4_tensor *post,
                        const struct dsv4_tensor *comb, const struct dsv4_tensor *Xo,
                        unsigned flags)
{
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    struct hc_job j = {.A = A, .X = X, .post = post, .comb = comb, .Xo = Xo, .flags = flags};
    dsv4_pool_run(P(be), t_hc_post, &j, X->shape[0]);
}

static void t_hc_head(void *arg, int64_t t, int th)
{
    const struct hc_job *j = arg;
    (void)th;
    dsv4_ref_hc_head_token(j->p, j->X, j->norm_w, j->eps, j->y, j->mix + t * j->nmix, t);
}

static void cpu_hc_head(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                        const struct dsv4_tensor *X, const float *norm_w, float eps,
                        const struct dsv4_tensor *z)
{
    dsv4_be_check(X, DSV4_DTYPE_F32, 3);
    struct hc_job j = {.p = p, .X = X, .y = z, .norm_w = norm_w, .eps = eps, .nmix = p->hc};
    j.mix = hc_mix(C(be), p, X, p->hc);
    dsv4_pool_run(P(be), t_hc_head, &j, X->shape[0]);
}

/* ------------------------------------------------------------ attention state */

struct kv_job {
    const struct dsv4_kv_args *kv;
    const struct dsv4_select_args *sel;
    const struct dsv4_attn_args *attn;
    struct cpu_be *c;
    int hchunks, hper;
};

static void t_ape(void *arg, int64_t t, int th)
{
    const struct kv_job *j = arg;
    (void)th;
    dsv4_ref_compress_ape(j->kv, (int)t);
}

static void t_compress(void *arg, int64_t t, int th)
{
    const struct kv_job *j = arg;
    (void)th;
    dsv4_ref_compress_token(j->kv, (int)t);
}

static void cpu_kv_compress(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    struct kv_job j = {.kv = a};
    dsv4_pool_run(P(be), t_ape, &j, a->tok->T);
    dsv4_pool_run(P(be), t_compress, &j, a->tok->T);
}

static void t_store(void *arg, int64_t t, int th)
{
    const struct kv_job *j = arg;
    (void)th;
    dsv4_ref_store_token(j->kv, (int)t);
}

static void cpu_kv_store(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    struct kv_job j = {.kv = a};
    dsv4_pool_run(P(be), t_store, &j, a->tok->T);
}

static void t_select(void *arg, int64_t t, int th)
{
    const struct kv_job *j = arg;
    dsv4_ref_select_token(j->sel, (int)t, dsv4_pool_scratch(j->c->pool, th, j->c->task_bytes),
                          dsv4_cpu_indexer_scores, dsv4_cpu_topk);
}

static void cpu_kv_select(struct dsv4_backend *be, const struct dsv4_select_args *a)
{
    struct kv_job j = {.sel = a, .c = C(be)};
    dsv4_pool_run(P(be), t_select, &j, a->tok->T);
}

static void t_attn(void *arg, int64_t i, int th)
{
    const struct kv_job *j = arg;
    int t = (int)(i / j->hchunks), h0 = (int)(i % j->hchunks) * j->hper;
    int h1 = DSV4_MIN(j->attn->nh, h0 + j->hper);
    dsv4_ref_attn_token(j->attn, t, h0, h1, dsv4_pool_scratch(j->c->pool, th, j->c->task_bytes),
                        dsv4_cpu_sparse_attn);
}

static void cpu_attn(struct dsv4_backend *be, const struct dsv4_attn_args *a)
{
    struct cpu_be *c = C(be);
    if (a->nh <= 0)
        return;
    /* enough tasks for every thread: split heads when the batch is small */
    int threads = dsv4_pool_threads(c->pool);
    int hchunks = a->tok->T >= 2 * threads ? 1 : DSV4_MIN(a->nh, 2 * threads);
    struct kv_job j = {.attn = a, .c = c, .hchunks = hchunks};
    j.hper = (a->nh + hchunks - 1) / hchunks;
    j.hchunks = (a->nh + j.hper - 1) / j.hper;
    dsv4_pool_run(c->pool, t_attn, &j, (int64_t)a->tok->T * j.hchunks);
}

/* ------------------------------------------------------------ sampling helpers */

struct argmax_job {
    const struct dsv4_tensor *l;
    int32_t *ids;
};

static void t_argmax(void *arg, int64_t r, int th)
{
    const struct argmax_job *j = arg;
    (void)th;
    int64_t V = j->l->shape[1];
    j->ids[r] = dsv4_cpu_argmax((const float *)j->l->data + r * V, V);
}

static void cpu_argmax(struct dsv4_backend *be, const struct dsv4_tensor *logits, int32_t *ids)
{
    dsv4_be_check(logits, DSV4_DTYPE_F32, 2);
    struct argmax_job j = {logits, ids};
    dsv4_pool_run(P(be), t_argmax, &j, logits->shape[0]);
}

/* ------------------------------------------------------------ creation */

int dsv4_backend_cpu_create(int threads, struct dsv4_backend **out)
{
    *out = NULL;
    if (threads < 1 || threads > 1024)
        return dsv4_error(DSV4_EINVAL, "cpu backend: threads %d not in [1, 1024]", threads);
    struct cpu_be *c = calloc(1, sizeof *c);
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "cpu backend: out of memory");
    int rc = dsv4_pool_init(threads, &c->pool);
    if (rc) {
        free(c);
        return rc;
    }
    struct dsv4_backend *b = &c->be;
    b->name = "cpu";
    b->impl = c;
    dsv4_ref_host_ops(b);
    b->destroy = cpu_destroy;
    b->reserve = cpu_reserve;
    b->round_bf16 = cpu_round_bf16;
    b->act_sim = cpu_act_sim;
    b->hadamard = cpu_hadamard;
    b->rmsnorm = cpu_rmsnorm;
    b->rope = cpu_rope;
    b->swiglu = cpu_swiglu;
    b->linear = cpu_linear;
    b->linear_multi = cpu_linear_multi;
    b->linear_grouped = cpu_linear_grouped;
    b->moe = cpu_moe;
    b->moe_combine = cpu_moe_combine;
    b->route = cpu_route;
    b->embed = cpu_embed;
    b->hc_pre = cpu_hc_pre;
    b->hc_post = cpu_hc_post;
    b->hc_head = cpu_hc_head;
    b->kv_compress = cpu_kv_compress;
    b->kv_select = cpu_kv_select;
    b->attn = cpu_attn;
    b->kv_store = cpu_kv_store;
    b->argmax = cpu_argmax;
    struct dsv4_be_limits lim = {.tokens = 1,
                                 .cols = 1,
                                 .hidden = 1,
                                 .inter = 1,
                                 .experts = 1,
                                 .topk = 1,
                                 .keys = 1,
                                 .entries = 1};
    if ((rc = cpu_reserve(b, &lim))) {
        cpu_destroy(b);
        return rc;
    }
    *out = b;
    return 0;
}
