/*
 * test_cuda_plan.c - the CUDA backend's launch planning (kernels/cuda/plan.h)
 * on the host, in every build: GEMM plans cover every output with legal
 * grids and shared memory, the chunk widths are those of the oracle's
 * blocks, MoE tile bounds hold for any expert load, the workspace holds what
 * the ops need, graph buckets are multiples of 1 + k and cover every batch,
 * VMM rounding.
 */
#include "kernels/cuda/plan.h"

#include "base/dsv4.h"
#include "tests/test.h"

#include <stdint.h>
#include <stdlib.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void test_chunks(void)
{
    CHECK_INT(dsv4_cu_chunk(DSV4_WFMT_FP8, DSV4_ACT_FP8), 128);
    CHECK_INT(dsv4_cu_chunk(DSV4_WFMT_MXFP4, DSV4_ACT_FP8), 32);
    CHECK_INT(dsv4_cu_chunk(DSV4_WFMT_NVFP4, DSV4_ACT_FP8), 16);
    CHECK_INT(dsv4_cu_chunk(DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4), 16);
    for (int f = DSV4_WFMT_F32; f <= DSV4_WFMT_NVFP4; f++)
        CHECK_INT(dsv4_cu_chunk((enum dsv4_wfmt)f, DSV4_ACT_F32), 32);
    CHECK_INT(dsv4_cu_act_group(DSV4_ACT_FP8), 128);
    CHECK_INT(dsv4_cu_act_group(DSV4_ACT_NVFP4), 16);
    /* every chunk lies inside one activation group and one weight block, and a tiled
     * stage of DSV4_CU_TILE_K holds whole 16-wide sub-chunks */
    CHECK(DSV4_CU_TILE_K % 16 == 0);
    CHECK(128 % dsv4_cu_chunk(DSV4_WFMT_MXFP4, DSV4_ACT_FP8) == 0);
}

static void test_gemm(void)
{
    struct dsv4_cu_gemm_plan p;
    int bad = 0;
    for (int it = 0; it < 20000; it++) {
        int64_t m = 1 + u32() % 300, N = 1 + u32() % 70000, K = 1 + u32() % 30000;
        int G = 1 + (int)(u32() % 16);
        enum dsv4_wfmt fmt = (enum dsv4_wfmt)(u32() % 5);
        enum dsv4_act act = fmt >= DSV4_WFMT_FP8 ? (enum dsv4_act)(u32() % 2) : DSV4_ACT_F32;
        if (fmt == DSV4_WFMT_NVFP4 && u32() % 2)
            act = DSV4_ACT_NVFP4;
        if (dsv4_cu_plan_gemm(m, N, K, G, fmt, act, &p)) {
            bad++;
            continue;
        }
        bad += p.kb != dsv4_cu_chunk(fmt, act);
        bad += p.chunks * p.kb < K || (p.chunks - 1) * p.kb >= K;
        bad += p.grid[2] != G;
        if (m <= DSV4_CU_GEMV_MAX_M) {
            bad += p.kind != DSV4_CU_GEMV || p.bm != m;
            bad += p.rows_per_block * p.threads_per_row != p.threads;
            bad += p.threads_per_row % 32 != 0;
            bad += p.grid[0] * p.rows_per_block < N || (p.grid[0] - 1) * p.rows_per_block >= N;
            bad += p.smem > 48 * 1024;
            /* a row's chunks are spread over its threads whenever there are enough */
            bad += p.chunks >= 128 && p.threads_per_row != 128;
        } else {
            bad += p.kind == DSV4_CU_GEMV;
            bad += p.bm != (m <= 32 ? 8 : 64);
            bad += p.grid[0] * DSV4_CU_TILE_N < N || p.grid[1] * p.bm < m;
            bad += p.threads != DSV4_CU_TILE_THREADS;
        }
    }
    CHECKF(bad == 0, "%d bad gemm plans", bad);
    CHECK(dsv4_cu_plan_gemm(0, 1, 1, 1, DSV4_WFMT_BF16, DSV4_ACT_F32, &p) == DSV4_EINVAL);
    CHECK(dsv4_cu_plan_gemm(100000000, 1, 1, 1, DSV4_WFMT_BF16, DSV4_ACT_F32, &p) == DSV4_EINVAL);
}

static void test_moe(void)
{
    int bad = 0;
    for (int it = 0; it < 2000; it++) {
        int E = 1 + (int)(u32() % 400);
        int64_t P = u32() % 5000;
        int bm = dsv4_cu_moe_bm(P, E);
        bad += bm != 8 && bm != 64;
        /* any distribution of P pairs over E experts */
        int64_t *c = calloc((size_t)E, sizeof *c), tiles = 0;
        int skew = (int)(u32() % 3);
        for (int64_t i = 0; i < P; i++)
            c[skew == 0 ? (int)(u32() % (unsigned)E) : skew == 1 ? 0 : (int)(i % E)]++;
        for (int e = 0; e < E; e++)
            tiles += (c[e] + bm - 1) / bm;
        bad += tiles > dsv4_cu_moe_tiles(P, E, bm);
        bad += dsv4_cu_moe_tiles(P, E, 8) < dsv4_cu_moe_tiles(P, E, 64);
        free(c);
    }
    CHECKF(bad == 0, "%d bad moe tile bounds", bad);
}

static void test_workspace(void)
{
    struct dsv4_be_limits lim = {.tokens = 100,
                                 .cols = 4096,
                                 .hidden = 1024,
                                 .inter = 512,
                                 .experts = 64,
                                 .topk = 6,
                                 .keys = 200,
                                 .entries = 1000,
                                 .head_dim = 512,
                                 .index_head_dim = 128,
                                 .index_heads = 8,
                                 .vocab = 1280};
    struct dsv4_cu_ws ws;
    dsv4_cu_workspace(&lim, 0, &ws);
    CHECK(ws.quant_rows >= 4 * lim.tokens && ws.quant_cols >= lim.cols);
    CHECK(ws.quant_scales >= ws.quant_rows * ((ws.quant_cols + 15) / 16));
    CHECK(ws.route == lim.tokens * lim.experts);
    CHECK(ws.pairs == lim.tokens * lim.topk);
    CHECK(ws.moe_tiles >= dsv4_cu_moe_tiles(ws.pairs, (int)lim.experts, 64));
    CHECK(ws.moe_act == ws.pairs * lim.inter && ws.moe_wide == 1024);
    CHECK(ws.select_tokens == lim.tokens && ws.select_scores == lim.tokens * lim.entries);
    CHECK(dsv4_cu_workspace_bytes(&ws) > (uint64_t)ws.quant_rows * ws.quant_cols);
    /* a small budget splits the indexer into passes of whole tokens */
    dsv4_cu_workspace(&lim, 4000 * 7 + 5, &ws);
    CHECK_INT(ws.select_tokens, 7);
    dsv4_cu_workspace(&lim, 1, &ws);
    CHECK_INT(ws.select_tokens, 1);
    CHECK(dsv4_cu_attn_smem(1152) >= 1152 * 12);
    CHECK_INT(dsv4_cu_topk_sort_n(1024), 1024);
    CHECK_INT(dsv4_cu_topk_sort_n(1000), 1024);
    CHECK_INT(dsv4_cu_topk_sort_n(5), 32);
    CHECK(dsv4_cu_topk_smem(1024) <= 48 * 1024);
    CHECK(dsv4_cu_blocks(0, 256) == 1 && dsv4_cu_blocks(257, 256) == 2);
    CHECK(dsv4_cu_row_threads(7168) == 256 && dsv4_cu_row_threads(8) == 32);
}

static void test_graphs(void)
{
    int b[512];
    for (int k = 0; k <= 3; k++)
        for (int S = 1; S <= 300; S++) {
            int n = dsv4_cu_graph_buckets(S, k, b, 512);
            CHECK(n >= 1 && n <= 512);
            int bad = b[n - 1] != S * (1 + k);
            for (int i = 0; i < n; i++) {
                bad += b[i] % (1 + k) != 0;
                bad += i > 0 && b[i] <= b[i - 1];
            }
            /* every batch of s <= S sequences pads to at most 8 sequences more (s > 4) */
            for (int s = 1; s <= S; s++) {
                int t = dsv4_cu_graph_bucket_for(b, n, s * (1 + k));
                bad += t < s * (1 + k) || (s > 4 && t > (s + 8) * (1 + k)) ||
                       (s <= 4 && t != s * (1 + k));
            }
            bad += dsv4_cu_graph_bucket_for(b, n, S * (1 + k) + 1) != -1;
            CHECKF(bad == 0, "graph buckets for %d seqs, k %d", S, k);
        }
    CHECK_INT(dsv4_cu_graph_buckets(64, 1, b, 3), 4 + 8);
    CHECK(b[0] == 2 && b[1] == 4 && b[2] == 6);
}

static void test_vmm(void)
{
    CHECK(dsv4_cu_vmm_round(0, 2 << 20) == 0);
    CHECK(dsv4_cu_vmm_round(1, 2 << 20) == 2 << 20);
    CHECK(dsv4_cu_vmm_round(2 << 20, 2 << 20) == 2 << 20);
    CHECK(dsv4_cu_vmm_round((2 << 20) + 1, 2 << 20) == 4 << 20);
    CHECK(dsv4_cu_vmm_round(123456789012ull, 1ull << 21) % (1ull << 21) == 0);
    CHECK(dsv4_cu_vmm_round(5, 3) == 0 && dsv4_cu_vmm_round(5, 0) == 0);
}

int main(void)
{
    test_chunks();
    test_gemm();
    test_moe();
    test_workspace();
    test_graphs();
    test_vmm();
    TEST_DONE();
}
