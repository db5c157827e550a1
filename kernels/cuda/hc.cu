/*
 * hc.cu - the hyper-connection ops of the CUDA backend (model.md §3.2,
 * §3.6): hc_pre (mix projection, Sinkhorn, collapse, norm), hc_post,
 * hc_head.
 *
 * hc_pre and hc_head run one block per token, all in one kernel: the mix
 * projection m = fn . flatten(X) and the sum of squares are reduced in
 * double over the block (8 mix rows per pass over X), thread 0 forms the
 * coefficients with opmath.cuh's dsv4_cu_hc_pre_coeffs (sigmoids and the
 * Sinkhorn iterations, the oracle's formula), then the block forms y =
 * sum_j pre_j X[j] in double per column (the oracle's order), rounds it to
 * BF16 and normalises it.  hc_post is element-wise with double sums over
 * the streams in the oracle's order.
 */
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/opmath.cuh"

#define HC_MAX     16
#define HC_THREADS 256
#define MIX_PASS   8

struct cu_hc {
    const float *fn, *base;
    float scale[3];
    int hc, iters, nmix;
    float norm_eps, hc_eps;
};

static struct cu_hc cu_hc_of(const struct dsv4_hc_params *p, int nmix)
{
    struct cu_hc h;
    h.fn = p->fn;
    h.base = p->base;
    for (int i = 0; i < 3; i++)
        h.scale[i] = p->scale[i];
    h.hc = p->hc;
    h.iters = p->iters;
    h.nmix = nmix;
    h.norm_eps = p->norm_eps;
    h.hc_eps = p->hc_eps;
    return h;
}

/*
 * Shared body of hc_pre (head false) and hc_head (head true) for token blockIdx.x:
 * X [T, hc, D] -> y [T, D] (bf16(collapse)), xn [T, D] (bf16(rmsnorm_w(y)), may be y),
 * and for hc_pre post [T, hc], comb [T, hc, hc].
 */
__global__ void __launch_bounds__(HC_THREADS)
        k_hc(struct cu_hc p, bool head, const float *X, int64_t D, const float *norm_w, float eps,
             float *y, float *xn, float *post, float *comb)
{
    __shared__ double red[HC_THREADS / 32];
    __shared__ float m[(2 + HC_MAX) * HC_MAX], pre[HC_MAX];
    const int64_t t = blockIdx.x, n = p.hc * D;
    const float *x = X + t * n;
    /* mix projection and sum of squares, in double */
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        ss += (double)x[i] * x[i];
    ss = cu_block_sum(ss, red);
    for (int o0 = 0; o0 < p.nmix; o0 += MIX_PASS) {
        double acc[MIX_PASS];
#pragma unroll
        for (int j = 0; j < MIX_PASS; j++)
            acc[j] = 0.0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double xv = x[i];
#pragma unroll
            for (int j = 0; j < MIX_PASS; j++)
                if (o0 + j < p.nmix)
                    acc[j] += (double)p.fn[(int64_t)(o0 + j) * n + i] * xv;
        }
#pragma unroll
        for (int j = 0; j < MIX_PASS; j++) {
            double s = cu_block_sum(acc[j], red);
            if (threadIdx.x == 0 && o0 + j < p.nmix)
                m[o0 + j] = (float)s;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float rho = dsv4_cu_rms_scale(ss, n, p.norm_eps);
        if (head) {
            for (int j = 0; j < p.hc; j++)
                pre[j] = dsv4_cu_hc_gate(m[j], rho, p.scale[0], p.base[j]) + p.hc_eps;
        } else {
            float po[HC_MAX], cb[HC_MAX * HC_MAX];
            dsv4_cu_hc_pre_coeffs(m, rho, p.scale, p.base, p.hc, p.hc_eps, p.iters, pre, po, cb);
            for (int j = 0; j < p.hc; j++)
                post[t * p.hc + j] = po[j];
            for (int j = 0; j < p.hc * p.hc; j++)
                comb[t * p.hc * p.hc + j] = cb[j];
        }
    }
    __syncthreads();
    /* collapse: y[d] = bf16(sum_j pre_j X[j, d]), and its sum of squares */
    float *yt = y + t * D;
    double ys = 0.0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        double acc = 0.0;
        for (int j = 0; j < p.hc; j++)
            acc += (double)pre[j] * x[j * D + d];
        float v = dsv4_cu_bf16_round((float)acc);
        yt[d] = v;
        ys += (double)v * v;
    }
    ys = cu_block_sum(ys, red);
    float rho = dsv4_cu_rms_scale(ys, D, eps);
    float *xt = xn + t * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float v = dsv4_cu_mul(yt[d], rho);
        if (norm_w)
            v = dsv4_cu_mul(norm_w[d], v);
        xt[d] = dsv4_cu_bf16_round(v);
    }
}

static void cu_hc_pre(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                      const struct dsv4_tensor *X, const float *norm_w, float eps,
                      const struct dsv4_tensor *y, const struct dsv4_tensor *xn,
                      const struct dsv4_tensor *post, const struct dsv4_tensor *comb)
{
    struct cu_be *c = CB(be);
    cu_check_t(X, DSV4_DTYPE_F32);
    DSV4_ASSERT(X->ndim == 3 && dsv4_tensor_contig(X) && X->shape[1] == p->hc && p->hc >= 1 &&
                p->hc <= HC_MAX);
    int64_t T = X->shape[0], D = X->shape[2];
    if (!T)
        return;
    DSV4_ASSERT(T <= 65535 * 8);
    cu_enter(c);
    k_hc<<<(unsigned)T, HC_THREADS, 0, c->st>>>(
            cu_hc_of(p, (2 + p->hc) * p->hc), false, (const float *)X->data, D, norm_w, eps,
            (float *)y->data, (float *)xn->data, (float *)post->data, (float *)comb->data);
    CU_LAUNCHED();
}

static void cu_hc_head(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                       const struct dsv4_tensor *X, const float *norm_w, float eps,
                       const struct dsv4_tensor *z)
{
    struct cu_be *c = CB(be);
    cu_check_t(X, DSV4_DTYPE_F32);
    DSV4_ASSERT(X->ndim == 3 && dsv4_tensor_contig(X) && X->shape[1] == p->hc && p->hc >= 1 &&
                p->hc <= HC_MAX);
    int64_t T = X->shape[0], D = X->shape[2];
    if (!T)
        return;
    DSV4_ASSERT(T <= 65535 * 8);
    cu_enter(c);
    /* z is both the collapse and its normalised form (normalised in place per column) */
    k_hc<<<(unsigned)T, HC_THREADS, 0, c->st>>>(cu_hc_of(p, p->hc), true, (const float *)X->data, D,
                                                norm_w, eps, (float *)z->data, (float *)z->data,
                                                NULL, NULL);
    CU_LAUNCHED();
}

__global__ void k_hc_post(const float *A, const float *X, const float *post, const float *comb,
                          float *Xo, int64_t T, int hc, int64_t D, bool bf16)
{
    int64_t n = T * hc * D;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / (hc * D), k = (i / D) % hc, d = i % D;
        double acc = (double)post[t * hc + k] * A[t * D + d];
        for (int j = 0; j < hc; j++)
            acc += (double)comb[(t * hc + j) * hc + k] * X[(t * hc + j) * D + d];
        float v = (float)acc;
        Xo[i] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_hc_post(struct dsv4_backend *be, const struct dsv4_tensor *A,
                       const struct dsv4_tensor *X, const struct dsv4_tensor *post,
                       const struct dsv4_tensor *comb, const struct dsv4_tensor *Xo, unsigned flags)
{
    struct cu_be *c = CB(be);
    cu_check_t(X, DSV4_DTYPE_F32);
    DSV4_ASSERT(X->ndim == 3 && dsv4_tensor_contig(X) && dsv4_tensor_contig(Xo));
    int64_t T = X->shape[0], hc = X->shape[1], D = X->shape[2];
    if (!T)
        return;
    cu_enter(c);
    k_hc_post<<<cu_grid(T * hc * D, 256), 256, 0, c->st>>>(
            (const float *)A->data, (const float *)X->data, (const float *)post->data,
            (const float *)comb->data, (float *)Xo->data, T, (int)hc, D, flags & DSV4_OP_BF16);
    CU_LAUNCHED();
}

void cu_ops_hc(struct dsv4_backend *b)
{
    b->hc_pre = cu_hc_pre;
    b->hc_post = cu_hc_post;
    b->hc_head = cu_hc_head;
}
