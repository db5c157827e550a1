/*
 * elem.cu - the element-wise and per-row ops of the CUDA backend: convert,
 * round_bf16, act_sim, hadamard, rmsnorm, rope, swiglu, embed, hc_expand,
 * argmax.
 *
 * Each kernel applies the shared scalar code of math.cuh / opmath.cuh to one
 * element, pair, group or row, so its per-element result is the oracle's
 * (kernels/ref/backend.c's row bodies): bit-identical where the oracle's
 * arithmetic is plain IEEE (conversions, quantisers, Hadamard), within the
 * double-evaluated exp/cos/sin of math.cuh elsewhere.  Row reductions
 * (RMSNorm's sum of squares, argmax) run in parallel in double in a fixed
 * tree: deterministic, independent of the other rows.
 */
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/opmath.cuh"

#define GRID_STRIDE(i, n)                                                     \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)gridDim.x * blockDim.x)

/* ------------------------------------------------------------ conversions */

__global__ void k_f32_to_bf16(const float *s, uint16_t *d, int64_t n)
{
    GRID_STRIDE(i, n)
    d[i] = dsv4_cu_f32_to_bf16(s[i]);
}

__global__ void k_bf16_to_f32(const uint16_t *s, float *d, int64_t n)
{
    GRID_STRIDE(i, n)
    d[i] = dsv4_cu_bf16_to_f32(s[i]);
}

__global__ void k_round_bf16(float *x, int64_t n)
{
    GRID_STRIDE(i, n)
    x[i] = dsv4_cu_bf16_round(x[i]);
}

static void cu_convert(struct dsv4_backend *be, const struct dsv4_tensor *src,
                       const struct dsv4_tensor *dst)
{
    struct cu_be *c = CB(be);
    int64_t n = dsv4_tensor_numel(src);
    DSV4_ASSERT(n == dsv4_tensor_numel(dst) && dsv4_tensor_contig(src) && dsv4_tensor_contig(dst));
    if (!n)
        return;
    cu_enter(c);
    if (src->dtype == DSV4_DTYPE_F32 && dst->dtype == DSV4_DTYPE_BF16) {
        k_f32_to_bf16<<<cu_grid(n, 256), 256, 0, c->st>>>((const float *)src->data,
                                                          (uint16_t *)dst->data, n);
    } else {
        DSV4_ASSERT(src->dtype == DSV4_DTYPE_BF16 && dst->dtype == DSV4_DTYPE_F32);
        k_bf16_to_f32<<<cu_grid(n, 256), 256, 0, c->st>>>((const uint16_t *)src->data,
                                                          (float *)dst->data, n);
    }
    CU_LAUNCHED();
}

static void cu_round_bf16(struct dsv4_backend *be, const struct dsv4_tensor *x)
{
    struct cu_be *c = CB(be);
    cu_check_t(x, DSV4_DTYPE_F32);
    DSV4_ASSERT(dsv4_tensor_contig(x));
    int64_t n = dsv4_tensor_numel(x);
    if (!n)
        return;
    cu_enter(c);
    k_round_bf16<<<cu_grid(n, 256), 256, 0, c->st>>>((float *)x->data, n);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ act_sim, hadamard */

/* One thread per (row, group): quantise-dequantise in place. */
__global__ void k_act_sim(float *x, int64_t rows, int64_t n, int64_t ld, int kind, int group)
{
    int64_t ng = (n + group - 1) / group;
    GRID_STRIDE(i, rows * ng)
    {
        int64_t r = i / ng, g0 = (i % ng) * group;
        int len = (int)(n - g0 < group ? n - g0 : group);
        float *p = x + r * ld + g0;
        if (kind == DSV4_SIM_FP8)
            dsv4_cu_sim_fp8_group(p, len);
        else
            dsv4_cu_sim_fp4_group(p, len);
    }
}

static void cu_act_sim(struct dsv4_backend *be, const struct dsv4_tensor *x, enum dsv4_sim kind,
                       int group)
{
    struct cu_be *c = CB(be);
    cu_check_t(x, DSV4_DTYPE_F32);
    DSV4_ASSERT(group > 0);
    int64_t rows = cu_rows(x), n = cu_cols(x), ld = cu_ld(x);
    int64_t work = rows * ((n + group - 1) / group);
    if (!work)
        return;
    cu_enter(c);
    k_act_sim<<<cu_grid(work, 128), 128, 0, c->st>>>((float *)x->data, rows, n, ld, (int)kind,
                                                     group);
    CU_LAUNCHED();
}

/* One block per row: the butterflies of each stage in parallel, in shared memory. */
__global__ void k_hadamard(float *x, int64_t ld, int n, bool bf16)
{
    extern __shared__ float sh[];
    float *row = x + blockIdx.x * ld;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        sh[i] = row[i];
    __syncthreads();
    for (int h = 1; h < n; h *= 2) {
        for (int j = threadIdx.x; j < n / 2; j += blockDim.x) {
            int i = (j / h) * 2 * h + (j % h);
            dsv4_cu_butterfly(&sh[i], &sh[i + h]);
        }
        __syncthreads();
    }
    float s = 1.0f / sqrtf((float)n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = dsv4_cu_mul(sh[i], s);
        row[i] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_hadamard(struct dsv4_backend *be, const struct dsv4_tensor *x, unsigned flags)
{
    struct cu_be *c = CB(be);
    cu_check_t(x, DSV4_DTYPE_F32);
    int64_t rows = cu_rows(x), n = cu_cols(x);
    DSV4_ASSERT(n > 0 && (n & (n - 1)) == 0 && n <= 8192);
    if (!rows)
        return;
    cu_enter(c);
    int th = n / 2 < 32 ? 32 : (int)DSV4_MIN(n / 2, (int64_t)512);
    for (int64_t r0 = 0; r0 < rows; r0 += 65535 * 8) {
        int64_t nr = DSV4_MIN(rows - r0, (int64_t)65535 * 8);
        k_hadamard<<<(unsigned)nr, th, sizeof(float) * n, c->st>>>(
                (float *)x->data + r0 * cu_ld(x), cu_ld(x), (int)n, flags & DSV4_OP_BF16);
        CU_LAUNCHED();
    }
}

/* ------------------------------------------------------------ rmsnorm */

__global__ void k_rmsnorm(const float *x, int64_t ldx, const float *w, float eps, float *y,
                          int64_t ldy, int64_t n, bool bf16)
{
    __shared__ double red[32];
    const float *xr = x + blockIdx.x * ldx;
    float *yr = y + blockIdx.x * ldy;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        ss += (double)xr[i] * xr[i];
    ss = cu_block_sum(ss, red);
    float rho = dsv4_cu_rms_scale(ss, n, eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = dsv4_cu_mul(xr[i], rho);
        if (w)
            v = dsv4_cu_mul(w[i], v);
        yr[i] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_rmsnorm(struct dsv4_backend *be, const struct dsv4_tensor *x, const float *w,
                       float eps, const struct dsv4_tensor *y, unsigned flags)
{
    struct cu_be *c = CB(be);
    cu_check_t(x, DSV4_DTYPE_F32);
    cu_check_t(y, DSV4_DTYPE_F32);
    int64_t rows = cu_rows(x), n = cu_cols(x);
    DSV4_ASSERT(rows == cu_rows(y) && n == cu_cols(y));
    if (!rows)
        return;
    cu_enter(c);
    int th = dsv4_cu_row_threads(n);
    for (int64_t r0 = 0; r0 < rows; r0 += 65535 * 8) {
        int64_t nr = DSV4_MIN(rows - r0, (int64_t)65535 * 8);
        k_rmsnorm<<<(unsigned)nr, th, 0, c->st>>>((const float *)x->data + r0 * cu_ld(x), cu_ld(x),
                                                  w, eps, (float *)y->data + r0 * cu_ld(y),
                                                  cu_ld(y), n, flags & DSV4_OP_BF16);
        CU_LAUNCHED();
    }
}

/* ------------------------------------------------------------ rope, swiglu */

/* One thread per (token, head, pair) of x [T, nh, dh]. */
__global__ void k_rope(float *x, int64_t T, int64_t nh, int64_t dh, const int64_t *pos,
                       struct dsv4_rope r, bool inverse, bool bf16)
{
    int pairs = r.dim / 2;
    GRID_STRIDE(i, T * nh * pairs)
    {
        int p = (int)(i % pairs);
        int64_t th = i / pairs, t = th / nh;
        float *v = x + th * dh + dh - r.dim + 2 * p;
        dsv4_cu_rope_pair(&v[0], &v[1], pos[t], r.freq[p], inverse);
        if (bf16) {
            v[0] = dsv4_cu_bf16_round(v[0]);
            v[1] = dsv4_cu_bf16_round(v[1]);
        }
    }
}

static void cu_rope(struct dsv4_backend *be, const struct dsv4_tensor *x, const int64_t *pos,
                    const struct dsv4_rope *r, bool inverse, unsigned flags)
{
    struct cu_be *c = CB(be);
    cu_check_t(x, DSV4_DTYPE_F32);
    DSV4_ASSERT(x->ndim == 3 && dsv4_tensor_contig(x) && r->dim <= x->shape[2] && r->dim % 2 == 0);
    int64_t work = x->shape[0] * x->shape[1] * (r->dim / 2);
    if (!work)
        return;
    cu_enter(c);
    k_rope<<<cu_grid(work, 256), 256, 0, c->st>>>((float *)x->data, x->shape[0], x->shape[1],
                                                  x->shape[2], pos, *r, inverse,
                                                  flags & DSV4_OP_BF16);
    CU_LAUNCHED();
}

__global__ void k_swiglu(const float *g, int64_t ldg, const float *u, int64_t ldu, float limit,
                         const float *w, float *h, int64_t ldh, int64_t T, int64_t n, bool bf16)
{
    GRID_STRIDE(i, T * n)
    {
        int64_t t = i / n, j = i % n;
        float v = dsv4_cu_swiglu(g[t * ldg + j], u[t * ldu + j], limit, w ? w[t] : 1.0f);
        h[t * ldh + j] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_swiglu(struct dsv4_backend *be, const struct dsv4_tensor *g,
                      const struct dsv4_tensor *u, float limit, const float *w,
                      const struct dsv4_tensor *h, unsigned flags)
{
    struct cu_be *c = CB(be);
    int64_t T = cu_rows(g), n = cu_cols(g);
    DSV4_ASSERT(cu_rows(u) == T && cu_rows(h) == T && cu_cols(u) == n && cu_cols(h) == n);
    if (!T || !n)
        return;
    cu_enter(c);
    k_swiglu<<<cu_grid(T * n, 256), 256, 0, c->st>>>(
            (const float *)g->data, cu_ld(g), (const float *)u->data, cu_ld(u), limit, w,
            (float *)h->data, cu_ld(h), T, n, flags & DSV4_OP_BF16);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ embed, hc_expand */

__global__ void k_embed(const uint16_t *table, int64_t v0, int64_t nv, const int32_t *tok,
                        float *out, int64_t ld, int64_t T, int64_t D)
{
    GRID_STRIDE(i, T * D)
    {
        int64_t t = i / D, d = i % D, v = tok[t];
        out[t * ld + d] =
                v >= v0 && v < v0 + nv ? dsv4_cu_bf16_to_f32(table[(v - v0) * D + d]) : 0.0f;
    }
}

static void cu_embed(struct dsv4_backend *be, const uint16_t *table, int64_t v0, int64_t nv,
                     const struct dsv4_tensor *tokens, const struct dsv4_tensor *out)
{
    struct cu_be *c = CB(be);
    int64_t T = cu_rows(out), D = cu_cols(out);
    DSV4_ASSERT(tokens->dtype == DSV4_DTYPE_I32 && dsv4_tensor_numel(tokens) >= T);
    if (!T)
        return;
    cu_enter(c);
    k_embed<<<cu_grid(T * D, 256), 256, 0, c->st>>>(table, v0, nv, (const int32_t *)tokens->data,
                                                    (float *)out->data, cu_ld(out), T, D);
    CU_LAUNCHED();
}

__global__ void k_hc_expand(const float *a, const float *b, float *out, int64_t T, int64_t hc,
                            int64_t D, bool bf16)
{
    GRID_STRIDE(i, T * hc * D)
    {
        int64_t t = i / (hc * D), d = i % D;
        float v = a ? a[i] + b[t * D + d] : b[t * D + d];
        out[i] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_hc_expand(struct dsv4_backend *be, const struct dsv4_tensor *a,
                         const struct dsv4_tensor *b, const struct dsv4_tensor *out, unsigned flags)
{
    struct cu_be *c = CB(be);
    int64_t T = out->shape[0], hc = out->shape[1], D = out->shape[2];
    DSV4_ASSERT(out->ndim == 3 && dsv4_tensor_contig(out) && dsv4_tensor_contig(b));
    if (!T)
        return;
    cu_enter(c);
    k_hc_expand<<<cu_grid(T * hc * D, 256), 256, 0, c->st>>>(
            a ? (const float *)a->data : NULL, (const float *)b->data, (float *)out->data, T, hc, D,
            flags & DSV4_OP_BF16);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ argmax */

/* (v, i) beats (w, j): larger value, or equal and lower index; NaN never wins. */
__device__ __forceinline__ bool better(float v, int64_t i, float w, int64_t j)
{
    if (i < 0 || v != v)
        return false;
    return j < 0 || v > w || (v == w && i < j);
}

__global__ void k_argmax(const float *x, int64_t V, int32_t *ids)
{
    __shared__ float bv[32];
    __shared__ int64_t bi[32];
    const float *row = x + blockIdx.x * V;
    float v = 0.0f;
    int64_t idx = -1;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
        if (better(row[i], i, v, idx)) {
            v = row[i];
            idx = i;
        }
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_down_sync(0xffffffffu, v, o);
        int64_t j = __shfl_down_sync(0xffffffffu, idx, o);
        if (better(w, j, v, idx)) {
            v = w;
            idx = j;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        bv[threadIdx.x >> 5] = v;
        bi[threadIdx.x >> 5] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (better(bv[w], bi[w], v, idx)) {
                v = bv[w];
                idx = bi[w];
            }
        ids[blockIdx.x] = (int32_t)(idx < 0 ? 0 : idx);
    }
}

static void cu_argmax(struct dsv4_backend *be, const struct dsv4_tensor *logits, int32_t *ids)
{
    struct cu_be *c = CB(be);
    cu_check_t(logits, DSV4_DTYPE_F32);
    DSV4_ASSERT(logits->ndim == 2 && dsv4_tensor_contig(logits));
    int64_t rows = logits->shape[0];
    if (!rows)
        return;
    DSV4_ASSERT(rows <= 65535 * 8);
    cu_enter(c);
    k_argmax<<<(unsigned)rows, 256, 0, c->st>>>((const float *)logits->data, logits->shape[1], ids);
    CU_LAUNCHED();
}

void cu_ops_elem(struct dsv4_backend *b)
{
    b->convert = cu_convert;
    b->round_bf16 = cu_round_bf16;
    b->act_sim = cu_act_sim;
    b->hadamard = cu_hadamard;
    b->rmsnorm = cu_rmsnorm;
    b->rope = cu_rope;
    b->swiglu = cu_swiglu;
    b->embed = cu_embed;
    b->hc_expand = cu_hc_expand;
    b->argmax = cu_argmax;
}
