/*
 * plan.c - launch planning of the CUDA backend (see kernels/cuda/plan.h).
 *
 * Plain arithmetic on shapes and limits; no CUDA headers, so it builds and
 * is tested in every configuration.  The GEMV/tiled split only changes
 * which threads form each chunk sum (plan.h), so the thresholds here are
 * speed choices: below DSV4_CU_GEMV_MAX_M rows one pass over the weights
 * serves all rows from registers; up to 32 rows 8-row tiles keep a weight
 * tile's reuse without wasting 64-row tiles on a handful of rows; beyond,
 * 64-row tiles.
 */
#include "kernels/cuda/plan.h"

#include "base/dsv4.h"
#include "kernels/cuda/gemm.cuh"

#define GRID_X_MAX  2147483647LL
#define GRID_YZ_MAX 65535LL

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

int dsv4_cu_chunk(enum dsv4_wfmt fmt, enum dsv4_act act)
{
    return dsv4_cu_kb((int)fmt, (int)act);
}

int dsv4_cu_act_group(enum dsv4_act act)
{
    return dsv4_cu_agroup((int)act);
}

int dsv4_cu_plan_gemm(int64_t m, int64_t N, int64_t K, int G, enum dsv4_wfmt fmt, enum dsv4_act act,
                      struct dsv4_cu_gemm_plan *p)
{
    if (m < 1 || N < 1 || K < 1 || G < 1)
        return dsv4_error(DSV4_EINVAL, "cuda plan: gemm m %lld N %lld K %lld G %d", (long long)m,
                          (long long)N, (long long)K, G);
    *p = (struct dsv4_cu_gemm_plan){0};
    p->kb = dsv4_cu_chunk(fmt, act);
    p->chunks = cdiv(K, p->kb);
    p->grid[2] = G;
    if (m <= DSV4_CU_GEMV_MAX_M) {
        p->kind = DSV4_CU_GEMV;
        p->bm = (int)m;
        /* enough threads per weight row for its chunks, the rest of the block on more rows */
        p->rows_per_block = p->chunks <= 32 ? 4 : p->chunks <= 64 ? 2 : 1;
        p->threads_per_row = DSV4_CU_GEMV_THREADS / p->rows_per_block;
        p->threads = DSV4_CU_GEMV_THREADS;
        p->grid[0] = cdiv(N, p->rows_per_block);
        p->grid[1] = 1;
        /* per row: m chunk values per thread of the row */
        p->smem = sizeof(float) * (size_t)p->rows_per_block * DSV4_CU_GEMV_MAX_M *
                  (size_t)p->threads_per_row;
    } else {
        p->kind = m <= 32 ? DSV4_CU_TILED_8 : DSV4_CU_TILED_64;
        p->bm = p->kind == DSV4_CU_TILED_8 ? 8 : 64;
        p->threads = DSV4_CU_TILE_THREADS;
        p->grid[0] = cdiv(N, DSV4_CU_TILE_N);
        p->grid[1] = cdiv(m, p->bm);
        p->smem = 0; /* static shared memory */
    }
    if (p->grid[0] > GRID_X_MAX || p->grid[1] > GRID_YZ_MAX || p->grid[2] > GRID_YZ_MAX)
        return dsv4_error(DSV4_EINVAL, "cuda plan: gemm grid %lld x %lld x %lld too large",
                          (long long)p->grid[0], (long long)p->grid[1], (long long)p->grid[2]);
    return 0;
}

int dsv4_cu_moe_bm(int64_t pairs, int local_experts)
{
    /* about one row per expert (decode): 8-row tiles; many rows per expert: 64 */
    return pairs <= 8 * (int64_t)DSV4_MAX(local_experts, 1) ? 8 : 64;
}

int64_t dsv4_cu_moe_tiles(int64_t pairs, int local_experts, int bm)
{
    /* sum_e ceil(c_e / bm) <= sum_e (c_e + bm - 1) / bm <= pairs / bm + experts */
    return cdiv(DSV4_MAX(pairs, (int64_t)1), bm) + DSV4_MAX(local_experts, 0);
}

int64_t dsv4_cu_blocks(int64_t n, int threads)
{
    int64_t b = cdiv(DSV4_MAX(n, (int64_t)1), threads);
    return b > 65536 * 8 ? 65536 * 8 : b;
}

int dsv4_cu_row_threads(int64_t n)
{
    if (n >= 1024)
        return 256;
    if (n >= 256)
        return 128;
    if (n >= 64)
        return 64;
    return 32;
}

size_t dsv4_cu_attn_smem(int64_t keys)
{
    /* per key: its address and its score / probability; plus reduction space */
    return (size_t)DSV4_MAX(keys, (int64_t)1) * (sizeof(void *) + sizeof(float)) + 64 * 8;
}

int dsv4_cu_topk_sort_n(int topk)
{
    int n = 32;
    while (n < topk)
        n *= 2;
    return n;
}

size_t dsv4_cu_topk_smem(int topk)
{
    return (size_t)dsv4_cu_topk_sort_n(topk) * 8 + 256 * 4 + 64;
}

void dsv4_cu_workspace(const struct dsv4_be_limits *lim, size_t select_budget,
                       struct dsv4_cu_ws *ws)
{
    int64_t T = DSV4_MAX(lim->tokens, (int64_t)1), k = DSV4_MAX(lim->topk, (int64_t)1);
    int64_t E = DSV4_MAX(lim->experts, (int64_t)1);
    int64_t D = DSV4_MAX(lim->hidden, (int64_t)1), I = DSV4_MAX(lim->inter, (int64_t)1);
    int64_t cols = DSV4_MAX(DSV4_MAX(lim->cols, D), I);
    int64_t ent = DSV4_MAX(lim->entries, (int64_t)1);
    if (!select_budget)
        select_budget = (size_t)256 << 20;
    *ws = (struct dsv4_cu_ws){0};
    /* the widest linear input: hc * T rows of h_proj (hc <= 4 in V4) or T rows of any other */
    ws->quant_rows = 4 * T;
    ws->quant_cols = cols;
    ws->quant_scales = ws->quant_rows * cdiv(cols, 16);
    ws->route = T * E;
    ws->pairs = T * k;
    ws->moe_tiles = dsv4_cu_moe_tiles(ws->pairs, (int)E, 8);
    ws->moe_experts = E + 1;
    ws->moe_wide = DSV4_MAX(D, I);
    ws->moe_act = ws->pairs * I;
    ws->moe_quant = ws->pairs * ws->moe_wide;
    ws->moe_quant_scales = ws->pairs * cdiv(ws->moe_wide, 16);
    int64_t per = ent * (int64_t)sizeof(float);
    ws->select_tokens = DSV4_MAX((int64_t)1, DSV4_MIN(T, (int64_t)select_budget / per));
    ws->select_scores = ws->select_tokens * ent;
}

uint64_t dsv4_cu_workspace_bytes(const struct dsv4_cu_ws *ws)
{
    uint64_t b = (uint64_t)ws->quant_rows * ws->quant_cols + 4ull * ws->quant_scales;
    b += 4ull * ws->route;
    b += 4ull * 3 * ws->pairs + 16ull * ws->moe_tiles + 4ull * 3 * ws->moe_experts + 16;
    b += 4ull * 3 * ws->moe_act + (uint64_t)ws->moe_quant + 4ull * ws->moe_quant_scales;
    b += 4ull * ws->select_scores;
    return b;
}

int dsv4_cu_graph_buckets(int max_seqs, int k, int *out, int cap)
{
    int n = 0, per = 1 + DSV4_MAX(k, 0);
    for (int s = 1; s <= max_seqs; s++) {
        bool take = s <= 4 || s % 8 == 0 || s == max_seqs;
        if (!take)
            continue;
        if (n < cap)
            out[n] = s * per;
        n++;
    }
    return n;
}

int dsv4_cu_graph_bucket_for(const int *buckets, int n, int tokens)
{
    for (int i = 0; i < n; i++)
        if (buckets[i] >= tokens)
            return buckets[i];
    return -1;
}

uint64_t dsv4_cu_vmm_round(uint64_t bytes, uint64_t granularity)
{
    if (!granularity || (granularity & (granularity - 1)))
        return 0;
    return (bytes + granularity - 1) & ~(granularity - 1);
}
