/*
 * moe.cu - routing and the routed experts of the CUDA backend: route,
 * moe, moe_combine.
 *
 * route: one thread per token runs opmath.cuh's dsv4_cu_route_token (the
 * oracle's selection with its tie rule, renormalisation, scale, and the
 * final sort by expert id) with a row of scratch for the scores.
 *
 * moe, grouped over the local experts entirely on the device (nothing comes
 * back to the host, so the sequence can be captured in a graph):
 *   1. k_moe_prep (one block): counts the (token, slot) pairs per local
 *      expert, offsets, the tile list (expert, first sorted position, rows)
 *      in BM-row tiles, and the sorted order (perm: sorted position ->
 *      pair; dst: -> output slot row; eid: -> expert).  The order inside an
 *      expert's run is that of the atomics, which changes nothing: every
 *      row is computed on its own (batch invariance).
 *   2. k_moe_zero: output rows of pairs routed to other ranks' experts = 0.
 *   3. per projection w1, w3, then w2: k_moe_quant quantises the rows in
 *      sorted order with the expert's own activation path and input_scale,
 *      k_moe_gemm runs one BM x 64 tile per (tile, column block) with the
 *      tile's expert weights (gemm_tile.cuh: the summation order of every
 *      linear), blocks past the device-side tile count return at once;
 *      between them k_moe_swiglu forms h = bf16(swiglu(bf16 g, bf16 u) *
 *      weight).  The w2 tile writes each row to its pair's output slot.
 * The grid is sized by the host's bound on tiles (plan.h), never by counts
 * read back from the device.
 *
 * moe_combine: per (token, column) the slots' sum in double in slot order.
 */
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/gemm_tile.cuh"
#include "kernels/cuda/opmath.cuh"

#define GRID_STRIDE(i, n)                                                     \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)gridDim.x * blockDim.x)

/* ------------------------------------------------------------ route */

__global__ void k_route(struct dsv4_route_args a, float *scratch)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.T)
        return;
    const int32_t *hash = a.tid2eid ? a.tid2eid + (int64_t)a.tokens[t] * a.k : NULL;
    dsv4_cu_route_token(a.logits + (int64_t)t * a.E, a.E, (int)a.func, a.bias, hash, a.k, a.renorm,
                        a.scale, scratch + (int64_t)t * a.E, a.ids + (int64_t)t * a.k,
                        a.wts + (int64_t)t * a.k);
}

static void cu_route(struct dsv4_backend *be, const struct dsv4_route_args *a)
{
    struct cu_be *c = CB(be);
    DSV4_ASSERT(a->k >= 1 && a->k <= 64 && a->k <= a->E);
    DSV4_ASSERT(c->reserved && (int64_t)a->T * a->E <= c->ws.route);
    if (a->T <= 0)
        return;
    cu_enter(c);
    k_route<<<(a->T + 127) / 128, 128, 0, c->st>>>(*a, c->route);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ moe */

/* Projection of an expert: 0 w1 (gate), 1 w3 (up), 2 w2 (down). */
__device__ __forceinline__ const struct dsv4_lin *cu_proj(const struct dsv4_ffn_w *ex, int e,
                                                          int which)
{
    return which == 0 ? &ex[e].w1 : which == 1 ? &ex[e].w3 : &ex[e].w2;
}

struct cu_moe_prep {
    const int32_t *ids;
    int P, k, slots, e0, E, bm, max_tiles;
    int32_t *cnt, *off, *perm, *dst, *eid, *ntiles;
    int4 *tiles;
};

__global__ void k_moe_prep(struct cu_moe_prep a)
{
    for (int e = threadIdx.x; e < a.E; e += blockDim.x)
        a.cnt[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < a.P; p += blockDim.x) {
        int e = a.ids[p] - a.e0;
        if (e >= 0 && e < a.E)
            atomicAdd(&a.cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int nt = 0;
        a.off[0] = 0;
        for (int e = 0; e < a.E; e++) {
            a.off[e + 1] = a.off[e] + a.cnt[e];
            for (int r = 0; r < a.cnt[e]; r += a.bm)
                if (nt < a.max_tiles)
                    a.tiles[nt++] = make_int4(e, a.off[e] + r, min(a.bm, a.cnt[e] - r), 0);
            a.cnt[e] = 0; /* now the fill counter of the scatter */
        }
        *a.ntiles = nt;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < a.P; p += blockDim.x) {
        int e = a.ids[p] - a.e0;
        if (e >= 0 && e < a.E) {
            int pos = a.off[e] + atomicAdd(&a.cnt[e], 1);
            a.perm[pos] = p;
            a.dst[pos] = (p / a.k) * a.slots + p % a.k;
            a.eid[pos] = e;
        }
    }
}

__global__ void k_moe_zero(const int32_t *ids, int P, int k, int slots, int e0, int e1, float *out,
                           int64_t D)
{
    GRID_STRIDE(i, (int64_t)P * D)
    {
        int64_t p = i / D, d = i % D;
        int e = ids[p];
        if (e < e0 || e >= e1)
            out[((p / k) * slots + p % k) * D + d] = 0.0f;
    }
}

/*
 * Quantises sorted rows pos < n (n = off[E]) for projection `which` of each row's expert:
 * source row src + (gather ? gather[pos] / gdiv : pos) * K.  F32-path rows are left alone
 * (the GEMM reads them directly).
 */
__global__ void k_moe_quant(const struct dsv4_ffn_w *ex, int which, const int32_t *eid,
                            const int32_t *nrows, const float *src, const int32_t *gather, int gdiv,
                            int64_t K, uint8_t *q, float *qs, int64_t ldqs, int64_t P)
{
    int64_t n = *nrows, ng = (K + 15) / 16;
    GRID_STRIDE(i, P * ng)
    {
        int64_t pos = i / ng, j = i % ng;
        if (pos >= n)
            continue;
        const struct dsv4_lin *l = cu_proj(ex, eid[pos], which);
        int act = (int)l->act, gw = dsv4_cu_agroup(act);
        if (act == DSV4_ACT_F32 || (j * 16) % gw)
            continue; /* one thread per quantiser group */
        int64_t k0 = j * 16, row = gather ? gather[pos] / gdiv : pos;
        int len = (int)(K - k0 < gw ? K - k0 : gw);
        cu_quant_group(act, src + row * K + k0, len, l->w.input_scale, q + pos * K + k0,
                       qs + pos * ldqs + k0 / gw);
    }
}

struct cu_moe_gemm {
    const struct dsv4_ffn_w *ex;
    int which;
    const int4 *tiles;
    const int32_t *ntiles;
    /* activations: F32 rows (src, gathered) or the quantised sorted rows */
    const float *src;
    const int32_t *gather;
    int gdiv;
    const uint8_t *q;
    const float *qs;
    int64_t ldqs;
    int64_t K;
    /* outputs: row pos -> y + (dst ? dst[pos] : pos) * ldy */
    float *y;
    int64_t ldy;
    const int32_t *dst;
};

template <int BM>
__global__ void __launch_bounds__(DSV4_CU_TILE_THREADS) k_moe_gemm(struct cu_moe_gemm a)
{
    typedef cu_tile_shape<BM> S;
    if ((int)blockIdx.y >= *a.ntiles)
        return;
    int4 td = a.tiles[blockIdx.y];
    const struct dsv4_lin *l = cu_proj(a.ex, td.x, a.which);
    struct dsv4_cu_w w = dsv4_cu_w_of(&l->w);
    int64_t N = w.rows, n0 = (int64_t)blockIdx.x * CU_TN;
    if (n0 >= N)
        return;
    struct cu_aop op = {};
    op.act = (int)l->act;
    op.x = a.src;
    op.ldx = a.K;
    op.gather = a.gather;
    op.gdiv = a.gdiv;
    op.q = a.q;
    op.qs = a.qs;
    op.ldq = a.K;
    op.ldqs = a.ldqs;
    float out[S::TM][S::TN];
    cu_tile<BM>(op, w, td.y, td.z, n0, N, a.K, dsv4_cu_kb(w.fmt, op.act), out);
    const int ty = threadIdx.x / S::TX, tx = threadIdx.x % S::TX;
#pragma unroll
    for (int i = 0; i < S::TM; i++)
#pragma unroll
        for (int j = 0; j < S::TN; j++) {
            int r = ty * S::TM + i;
            int64_t o = n0 + tx * S::TN + j;
            if (r < td.z && o < N) {
                int64_t pos = td.y + r, row = a.dst ? a.dst[pos] : pos;
                a.y[row * a.ldy + o] = dsv4_cu_bf16_round(out[i][j]);
            }
        }
}

/* h[pos] = bf16(swiglu(g, u) * wts[perm[pos]]) for pos < n. */
__global__ void k_moe_swiglu(const float *g, const float *u, const float *wts, const int32_t *perm,
                             const int32_t *nrows, float limit, float *h, int64_t I, int64_t P)
{
    int64_t n = *nrows;
    GRID_STRIDE(i, P * I)
    {
        int64_t pos = i / I;
        if (pos >= n)
            continue;
        h[i] = dsv4_cu_bf16_round(dsv4_cu_swiglu(g[i], u[i], limit, wts[perm[pos]]));
    }
}

static void moe_gemm_launch(struct cu_be *c, int bm, int64_t tiles, int64_t N,
                            const struct cu_moe_gemm *g)
{
    dim3 grid((unsigned)((N + CU_TN - 1) / CU_TN), (unsigned)tiles);
    if (bm == 8)
        k_moe_gemm<8><<<grid, DSV4_CU_TILE_THREADS, 0, c->st>>>(*g);
    else
        k_moe_gemm<64><<<grid, DSV4_CU_TILE_THREADS, 0, c->st>>>(*g);
    CU_LAUNCHED();
}

static void cu_moe(struct dsv4_backend *be, const struct dsv4_moe_args *a)
{
    struct cu_be *c = CB(be);
    int64_t P = (int64_t)a->T * a->k, D = a->D, I = a->I;
    int E = a->e1 - a->e0;
    DSV4_ASSERT(a->slots >= a->k && E >= 0);
    if (P == 0)
        return;
    cu_enter(c);
    k_moe_zero<<<cu_grid(P * D, 256), 256, 0, c->st>>>(a->ids, (int)P, a->k, a->slots, a->e0, a->e1,
                                                       a->out, D);
    CU_LAUNCHED();
    if (E == 0)
        return;
    int bm = dsv4_cu_moe_bm(P, E);
    int64_t tiles = dsv4_cu_moe_tiles(P, E, bm);
    DSV4_ASSERT(c->reserved && P <= c->ws.pairs && E + 1 <= c->ws.moe_experts &&
                tiles <= c->ws.moe_tiles && P * I <= c->ws.moe_act &&
                P * DSV4_MAX(D, I) <= c->ws.moe_quant &&
                P * ((DSV4_MAX(D, I) + 15) / 16) <= c->ws.moe_quant_scales && tiles <= 65535);
    struct cu_moe_prep pr = {a->ids,    (int)P,   a->k,       a->slots,    a->e0,
                             E,         bm,       (int)tiles, c->m_cnt,    c->m_off,
                             c->m_perm, c->m_dst, c->m_eid,   c->m_ntiles, c->m_tiles};
    k_moe_prep<<<1, 1024, 0, c->st>>>(pr);
    CU_LAUNCHED();
    const int32_t *nrows = c->m_off + E;
    /* gate and up: x rows gathered by pair (token = pair / k) */
    float *outs[2] = {c->m_g, c->m_u};
    for (int which = 0; which < 2; which++) {
        int64_t ldqs = (D + 15) / 16;
        k_moe_quant<<<cu_grid(P * ldqs, 128), 128, 0, c->st>>>(
                a->ex, which, c->m_eid, nrows, a->x, c->m_perm, a->k, D, c->m_q, c->m_qs, ldqs, P);
        CU_LAUNCHED();
        struct cu_moe_gemm g = {a->ex,     which,       c->m_tiles, c->m_ntiles, a->x,
                                c->m_perm, a->k,        c->m_q,     c->m_qs,     ldqs,
                                D,         outs[which], I,          NULL};
        moe_gemm_launch(c, bm, tiles, I, &g);
    }
    k_moe_swiglu<<<cu_grid(P * I, 256), 256, 0, c->st>>>(c->m_g, c->m_u, a->wts, c->m_perm, nrows,
                                                         a->limit, c->m_h, I, P);
    CU_LAUNCHED();
    /* down: the sorted hidden rows, written to the pairs' output slots */
    int64_t ldqs = (I + 15) / 16;
    k_moe_quant<<<cu_grid(P * ldqs, 128), 128, 0, c->st>>>(a->ex, 2, c->m_eid, nrows, c->m_h, NULL,
                                                           1, I, c->m_q, c->m_qs, ldqs, P);
    CU_LAUNCHED();
    struct cu_moe_gemm g = {a->ex,  2,       c->m_tiles, c->m_ntiles, c->m_h, NULL, 1,
                            c->m_q, c->m_qs, ldqs,       I,           a->out, D,    c->m_dst};
    moe_gemm_launch(c, bm, tiles, D, &g);
}

/* ------------------------------------------------------------ moe_combine */

__global__ void k_combine(const float *slots, float *out, int64_t T, int64_t S, int64_t D,
                          bool bf16)
{
    GRID_STRIDE(i, T * D)
    {
        int64_t t = i / D, d = i % D;
        double acc = 0.0;
        for (int64_t s = 0; s < S; s++)
            acc += slots[(t * S + s) * D + d];
        float v = (float)acc;
        out[i] = bf16 ? dsv4_cu_bf16_round(v) : v;
    }
}

static void cu_moe_combine(struct dsv4_backend *be, const struct dsv4_tensor *slots,
                           const struct dsv4_tensor *out, unsigned flags)
{
    struct cu_be *c = CB(be);
    cu_check_t(slots, DSV4_DTYPE_F32);
    DSV4_ASSERT(slots->ndim == 3 && dsv4_tensor_contig(slots) && dsv4_tensor_contig(out));
    int64_t T = slots->shape[0], S = slots->shape[1], D = slots->shape[2];
    if (!T)
        return;
    cu_enter(c);
    k_combine<<<cu_grid(T * D, 256), 256, 0, c->st>>>(
            (const float *)slots->data, (float *)out->data, T, S, D, flags & DSV4_OP_BF16);
    CU_LAUNCHED();
}

void cu_ops_moe(struct dsv4_backend *b)
{
    b->route = cu_route;
    b->moe = cu_moe;
    b->moe_combine = cu_moe_combine;
}
