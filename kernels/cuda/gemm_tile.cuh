/*
 * gemm_tile.cuh - the device side of y = act(x) . W^T shared by the linear
 * kernels (linear.cu) and the grouped MoE GEMMs (moe.cu): the activation
 * operand, the activation quantiser of a row group, and the tiled block
 * that computes a BM x 64 tile of outputs.
 *
 * Summation order (plan.h, gemm.cuh): every output is the chunk sums p
 * (FMA chains in k order, from +0) flushed in chunk order as acc = acc +
 * p * s.  The tile streams K through shared memory 32 at a time in two
 * 16-wide sub-chunks (every chunk width, 16/32/128, is a multiple of 16),
 * keeps p in registers across sub-chunks and stages, and flushes where
 * dsv4_cu_chunk_ends() says; positions past K are zeros, which leave p
 * unchanged.  The GEMV kernel (linear.cu) forms the same chunk sums one
 * chunk per thread, so both give the same bits for every row.
 */
#ifndef DSV4_CUDA_GEMM_TILE_CUH
#define DSV4_CUDA_GEMM_TILE_CUH

#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/math.cuh"

/*
 * Activation rows: F32 values (x + row * ldx, or row gather[r] / gdiv when gather is
 * set) or quantiser output (codes q + row * ldq, scales qs + row * ldqs, one per
 * dsv4_cu_agroup(act) columns).
 */
struct cu_aop {
    int act;
    const float *x;
    int64_t ldx;
    const int32_t *gather;
    int gdiv;
    const uint8_t *q;
    const float *qs;
    int64_t ldq, ldqs;
};

__device__ __forceinline__ float cu_a_at(const struct cu_aop &a, int64_t r, int64_t k)
{
    if (a.act == DSV4_ACT_F32) {
        int64_t row = a.gather ? a.gather[r] / a.gdiv : r;
        return a.x[row * a.ldx + k];
    }
    return dsv4_cu_aval(a.act, a.q[r * a.ldq + k]);
}

/* Scale of the activation chunk starting at column k0 of row r (1 on the F32 path). */
__device__ __forceinline__ float cu_a_scale(const struct cu_aop &a, int64_t r, int64_t k0)
{
    if (a.act == DSV4_ACT_F32)
        return 1.0f;
    return a.qs[r * a.ldqs + k0 / dsv4_cu_agroup(a.act)];
}

/*
 * Quantises one group of one row (dsv4_act_quant_fp8 per 128 / dsv4_act_quant_nvfp4 per
 * 16): codes into q (one per byte) and the group's scale (NVFP4: the E4M3 value) into *qs.
 */
__device__ __forceinline__ void cu_quant_group(int act, const float *x, int n, float input_scale,
                                               uint8_t *q, float *qs)
{
    if (act == DSV4_ACT_FP8)
        *qs = dsv4_cu_quant_fp8_group(x, n, q);
    else
        *qs = dsv4_cu_e4m3_to_f32(dsv4_cu_quant_nvfp4_group(x, n, input_scale, q));
}

/* Thread layout of a BM x 64 tile of 256 threads. */
template <int BM> struct cu_tile_shape;
template <> struct cu_tile_shape<64> {
    static const int TY = 16, TX = 16, TM = 4, TN = 4;
};
template <> struct cu_tile_shape<8> {
    static const int TY = 8, TX = 32, TM = 1, TN = 2;
};

#define CU_TK   DSV4_CU_TILE_K
#define CU_TN   DSV4_CU_TILE_N
#define CU_TPAD (CU_TK + 1)

/*
 * One output tile: rows [r0, r0 + rows) of A (rows <= BM) against weight rows [n0, n0 +
 * 64) of W (limited to N), reduction length K, chunk width kb.  On return out[i][j] holds
 * acc * post for this thread's outputs (row ty * TM + i, column tx * TN + j of the tile);
 * the caller stores what lies inside the tile's bounds.
 */
template <int BM>
__device__ void cu_tile(const struct cu_aop &a, const struct dsv4_cu_w &w, int64_t r0, int rows,
                        int64_t n0, int64_t N, int64_t K, int kb,
                        float (&out)[cu_tile_shape<BM>::TM][cu_tile_shape<BM>::TN])
{
    typedef cu_tile_shape<BM> S;
    __shared__ float As[BM][CU_TPAD], Bs[CU_TN][CU_TPAD];
    __shared__ float Asc[BM][2], Bsc[CU_TN][2];
    const int tid = threadIdx.x, ty = tid / S::TX, tx = tid % S::TX;
    float acc[S::TM][S::TN], p[S::TM][S::TN];
#pragma unroll
    for (int i = 0; i < S::TM; i++)
#pragma unroll
        for (int j = 0; j < S::TN; j++)
            acc[i][j] = p[i][j] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += CU_TK) {
        for (int e = tid; e < BM * CU_TK; e += blockDim.x) {
            int i = e / CU_TK, kk = e % CU_TK;
            int64_t k = k0 + kk;
            As[i][kk] = i < rows && k < K ? cu_a_at(a, r0 + i, k) : 0.0f;
        }
        for (int e = tid; e < CU_TN * CU_TK; e += blockDim.x) {
            int j = e / CU_TK, kk = e % CU_TK;
            int64_t k = k0 + kk, o = n0 + j;
            Bs[j][kk] = o < N && k < K ? dsv4_cu_bval(&w, a.act, o, k) : 0.0f;
        }
        for (int e = tid; e < (BM + CU_TN) * 2; e += blockDim.x) {
            int i = e / 2, h = e % 2;
            int64_t ks = k0 + 16 * h, c0 = (ks / kb) * kb;
            if (i < BM) {
                Asc[i][h] = i < rows && ks < K ? cu_a_scale(a, r0 + i, c0) : 1.0f;
            } else {
                int64_t o = n0 + (i - BM);
                Bsc[i - BM][h] = o < N && ks < K ? dsv4_cu_wchunk_scale(&w, a.act, o, c0) : 1.0f;
            }
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int64_t ks = k0 + 16 * h;
            if (ks >= K)
                break;
#pragma unroll 4
            for (int kk = 16 * h; kk < 16 * h + 16; kk++) {
                float av[S::TM], bv[S::TN];
#pragma unroll
                for (int i = 0; i < S::TM; i++)
                    av[i] = As[ty * S::TM + i][kk];
#pragma unroll
                for (int j = 0; j < S::TN; j++)
                    bv[j] = Bs[tx * S::TN + j][kk];
#pragma unroll
                for (int i = 0; i < S::TM; i++)
#pragma unroll
                    for (int j = 0; j < S::TN; j++)
                        p[i][j] = fmaf(av[i], bv[j], p[i][j]);
            }
            if (dsv4_cu_chunk_ends(ks + 16, K, kb)) {
#pragma unroll
                for (int i = 0; i < S::TM; i++)
#pragma unroll
                    for (int j = 0; j < S::TN; j++) {
                        float s = dsv4_cu_chunk_scale(a.act, Asc[ty * S::TM + i][h],
                                                      Bsc[tx * S::TN + j][h]);
                        acc[i][j] = dsv4_cu_flush(acc[i][j], p[i][j], s);
                        p[i][j] = 0.0f;
                    }
            }
        }
        __syncthreads();
    }
    float post = dsv4_cu_post(&w, a.act);
#pragma unroll
    for (int i = 0; i < S::TM; i++)
#pragma unroll
        for (int j = 0; j < S::TN; j++)
            out[i][j] = post == 1.0f ? acc[i][j] : dsv4_cu_mul(acc[i][j], post);
}

#endif
