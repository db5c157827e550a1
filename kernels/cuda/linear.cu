/*
 * linear.cu - linear and linear_grouped of the CUDA backend: y = act(x) .
 * W^T for FP8 block, MXFP4, NVFP4 (W4A4 or FP8 activations), BF16 and F32
 * weights (kernels/linear.h numerics).
 *
 * Two steps per call: the activation quantiser (FP8 per 128 / NVFP4 per 16,
 * dsv4_act_quant_* of the oracle) writes codes and scales to scratch, then
 * a GEMM reads them and decodes the weights in the kernel (Hopper has no
 * FP4 MMA; the products run on the FP32 cores, which also keeps them exact
 * and in a fixed order).  Up to DSV4_CU_GEMV_MAX_M rows take the GEMV
 * kernel (threads of a weight row take one chunk each; the chunk values are
 * added in chunk order), more rows the tiled kernel of gemm_tile.cuh.  Both
 * give every output the summation order of plan.h, so a row's result is the
 * same whatever the batch (batch invariance), and on the FP8 and NVFP4
 * activation paths it equals dsv4_ref_linear bit for bit.
 *
 * linear_grouped runs the G groups as the grid's z dimension: group g
 * reads x columns [g K, (g+1) K), weight rows [g R, (g+1) R) and writes y
 * columns [g R, (g+1) R); activation groups start at each group's K offset,
 * as when the oracle runs each group as its own product.
 */
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemm_tile.cuh"

/* ------------------------------------------------------------ activation quantiser */

/* Row r of group g: x + r * ldx + g * K; out rows (g * m + r) of q [., K], qs [., ldqs]. */
__global__ void k_quant(const float *x, int64_t ldx, int64_t m, int64_t K, int G, int act,
                        float input_scale, uint8_t *q, float *qs, int64_t ldqs)
{
    int gw = dsv4_cu_agroup(act);
    int64_t ng = (K + gw - 1) / gw, total = (int64_t)G * m * ng;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i % ng, gr = i / ng, r = gr % m, g = gr / m;
        int64_t k0 = j * gw;
        int n = (int)(K - k0 < gw ? K - k0 : gw);
        cu_quant_group(act, x + r * ldx + g * K + k0, n, input_scale, q + gr * K + k0,
                       qs + gr * ldqs + j);
    }
}

/* ------------------------------------------------------------ GEMV (m <= 8) */

/*
 * Block: rows_per_block weight rows, threads_per_row threads each.  Thread lt of a row
 * forms chunk c = round * tpr + lt for every activation row (p: FMA chain over the chunk,
 * then p * s); after each round the row's first m threads add the round's values in
 * chunk order to their accumulators.
 */
/* Per-group strides of the activation operand (grid z): F32 columns, code rows, scales. */
struct cu_gstride {
    int64_t x, q, qs;
    int g0; /* the first group of this launch (weight rows (g0 + g) N ...) */
};

__device__ __forceinline__ void cu_group(struct cu_aop &a, const struct cu_gstride &gs, int g)
{
    if (a.act == DSV4_ACT_F32) {
        a.x += g * gs.x;
    } else {
        a.q += g * gs.q;
        a.qs += g * gs.qs;
    }
}

__global__ void k_gemv(struct cu_aop a, struct cu_gstride gs, struct dsv4_cu_w w, int64_t N,
                       int64_t K, int m, int kb, int64_t C, int tpr, float *y, int64_t ldy,
                       bool bf16)
{
    extern __shared__ float vbuf[]; /* [rows_per_block][8][tpr] */
    const int grp = threadIdx.x / tpr, lt = threadIdx.x % tpr, g = blockIdx.z;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + grp;
    float *v = vbuf + (int64_t)grp * DSV4_CU_GEMV_MAX_M * tpr;
    cu_group(a, gs, g);
    int64_t o = (gs.g0 + g) * N + row; /* weight row */
    float acc = 0.0f;
    for (int64_t cb = 0; cb < C; cb += tpr) {
        int64_t c = cb + lt;
        if (row < N && c < C) {
            float p[DSV4_CU_GEMV_MAX_M];
#pragma unroll
            for (int i = 0; i < DSV4_CU_GEMV_MAX_M; i++)
                p[i] = 0.0f;
            int64_t k0 = c * kb, k1 = k0 + kb < K ? k0 + kb : K;
            for (int64_t k = k0; k < k1; k++) {
                float b = dsv4_cu_bval(&w, a.act, o, k);
#pragma unroll
                for (int i = 0; i < DSV4_CU_GEMV_MAX_M; i++)
                    if (i < m)
                        p[i] = fmaf(cu_a_at(a, i, k), b, p[i]);
            }
            float sw = dsv4_cu_wchunk_scale(&w, a.act, o, k0);
#pragma unroll
            for (int i = 0; i < DSV4_CU_GEMV_MAX_M; i++)
                if (i < m)
                    v[i * tpr + lt] =
                            dsv4_cu_mul(p[i], dsv4_cu_chunk_scale(a.act, cu_a_scale(a, i, k0), sw));
        }
        __syncthreads();
        if (row < N && lt < m) {
            int64_t n = C - cb < tpr ? C - cb : tpr;
            for (int64_t j = 0; j < n; j++)
                acc = dsv4_cu_add(acc, v[lt * tpr + j]);
        }
        __syncthreads();
    }
    if (row < N && lt < m) {
        float post = dsv4_cu_post(&w, a.act);
        float r = post == 1.0f ? acc : dsv4_cu_mul(acc, post);
        y[(int64_t)lt * ldy + g * N + row] = bf16 ? dsv4_cu_bf16_round(r) : r;
    }
}

/* ------------------------------------------------------------ tiled (m > 8) */

template <int BM>
__global__ void __launch_bounds__(DSV4_CU_TILE_THREADS)
        k_gemm_tiled(struct cu_aop a, struct cu_gstride gs, struct dsv4_cu_w w, int64_t N,
                     int64_t K, int64_t m, int kb, float *y, int64_t ldy, bool bf16)
{
    typedef cu_tile_shape<BM> S;
    const int g = blockIdx.z;
    const int64_t r0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * CU_TN;
    cu_group(a, gs, g);
    int rows = (int)(m - r0 < BM ? m - r0 : BM);
    int64_t wr = (gs.g0 + g) * N; /* the group's first weight row */
    float out[S::TM][S::TN];
    cu_tile<BM>(a, w, r0, rows, wr + n0, wr + N, K, kb, out);
    const int ty = threadIdx.x / S::TX, tx = threadIdx.x % S::TX;
#pragma unroll
    for (int i = 0; i < S::TM; i++)
#pragma unroll
        for (int j = 0; j < S::TN; j++) {
            int64_t r = r0 + ty * S::TM + i, o = n0 + tx * S::TN + j;
            if (r < m && o < N)
                y[r * ldy + g * N + o] = bf16 ? dsv4_cu_bf16_round(out[i][j]) : out[i][j];
        }
}

/* ------------------------------------------------------------ dispatch */

void cu_gemm(struct cu_be *c, const struct dsv4_lin *l, int G, int64_t m, int64_t N, int64_t K,
             const float *x, int64_t ldx, float *y, int64_t ldy, unsigned flags)
{
    const struct dsv4_qweight *qw = &l->w;
    DSV4_ASSERT(dsv4_linear_check(qw, l->act) == 0);
    DSV4_ASSERT(qw->cols == K && qw->rows == (int64_t)G * N && m >= 0);
    if (m == 0)
        return;
    cu_enter(c);
    struct dsv4_cu_w w = dsv4_cu_w_of(qw);
    struct cu_aop a = {};
    a.act = (int)l->act;
    a.x = x;
    a.ldx = ldx;
    int64_t ldqs = (K + 15) / 16;
    /* groups per pass: the quantised rows of a pass must fit the scratch */
    int gb = G;
    if (l->act != DSV4_ACT_F32) {
        DSV4_ASSERT(c->reserved && m * K <= c->ws.quant_rows * c->ws.quant_cols &&
                    m * ldqs <= c->ws.quant_scales);
        int64_t fit = DSV4_MIN((c->ws.quant_rows * c->ws.quant_cols) / (m * K),
                               c->ws.quant_scales / (m * ldqs));
        gb = (int)DSV4_MIN((int64_t)G, fit);
    }
    bool bf16 = flags & DSV4_OP_BF16;
    for (int g0 = 0; g0 < G; g0 += gb) {
        int ng = DSV4_MIN(gb, G - g0);
        struct dsv4_cu_gemm_plan p;
        DSV4_ASSERT(dsv4_cu_plan_gemm(m, N, K, ng, qw->fmt, l->act, &p) == 0);
        /* the pass's groups start at group g0: x columns and y columns offset here, weight
         * rows in the kernel (from the matrix origin, where FP8 scale blocks start) */
        const float *xg = x + g0 * K;
        float *yg = y + g0 * N;
        struct cu_gstride gs = {K, m * K, m * ldqs, g0};
        a.x = xg;
        if (l->act != DSV4_ACT_F32) {
            a.q = c->q;
            a.qs = c->qs;
            a.ldq = K;
            a.ldqs = ldqs;
            int64_t work = (int64_t)ng * m * ((K + 15) / 16);
            k_quant<<<cu_grid(work, 128), 128, 0, c->st>>>(xg, ldx, m, K, ng, a.act,
                                                           qw->input_scale, c->q, c->qs, ldqs);
            CU_LAUNCHED();
        }
        dim3 grid((unsigned)p.grid[0], (unsigned)p.grid[1], (unsigned)p.grid[2]);
        if (p.kind == DSV4_CU_GEMV) {
            k_gemv<<<grid, p.threads, p.smem, c->st>>>(a, gs, w, N, K, (int)m, p.kb, p.chunks,
                                                       p.threads_per_row, yg, ldy, bf16);
        } else if (p.kind == DSV4_CU_TILED_8) {
            k_gemm_tiled<8><<<grid, p.threads, 0, c->st>>>(a, gs, w, N, K, m, p.kb, yg, ldy, bf16);
        } else {
            k_gemm_tiled<64><<<grid, p.threads, 0, c->st>>>(a, gs, w, N, K, m, p.kb, yg, ldy, bf16);
        }
        CU_LAUNCHED();
    }
}

static void cu_linear(struct dsv4_backend *be, const struct dsv4_lin *l,
                      const struct dsv4_tensor *x, const struct dsv4_tensor *y, unsigned flags)
{
    int64_t m = cu_rows(x);
    cu_check_t(x, DSV4_DTYPE_F32);
    cu_check_t(y, DSV4_DTYPE_F32);
    DSV4_ASSERT(cu_cols(x) == l->w.cols && cu_cols(y) == l->w.rows && cu_rows(y) == m &&
                dsv4_tensor_contig(x) && dsv4_tensor_contig(y));
    cu_gemm(CB(be), l, 1, m, l->w.rows, l->w.cols, (const float *)x->data, l->w.cols,
            (float *)y->data, l->w.rows, flags);
}

static void cu_linear_grouped(struct dsv4_backend *be, const struct dsv4_lin *l, int G,
                              const struct dsv4_tensor *x, const struct dsv4_tensor *y,
                              unsigned flags)
{
    int64_t m = cu_rows(x), R = l->w.rows / G, K = l->w.cols;
    cu_check_t(x, DSV4_DTYPE_F32);
    cu_check_t(y, DSV4_DTYPE_F32);
    DSV4_ASSERT(G >= 1 && l->w.rows % G == 0 && cu_cols(x) == G * K && cu_cols(y) == G * R &&
                cu_rows(y) == m && dsv4_tensor_contig(x) && dsv4_tensor_contig(y));
    cu_gemm(CB(be), l, G, m, R, K, (const float *)x->data, G * K, (float *)y->data, G * R, flags);
}

void cu_ops_linear(struct dsv4_backend *b)
{
    b->linear = cu_linear;
    b->linear_grouped = cu_linear_grouped;
}
