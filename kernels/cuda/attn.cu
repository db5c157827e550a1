/*
 * attn.cu - the attention state and sparse attention of the CUDA backend:
 * kv_compress, kv_store, kv_select (lightning indexer: scores and top-k on
 * the device), attn (window + compressed entries with sink).
 *
 * Layout and candidates follow kernels/ref/backend.c's row bodies exactly,
 * through kv.cuh's device copies of backend.h's address helpers.
 *   kv_compress: element-wise ape pass, then one block per token that
 *     completes a block: the candidates' pooling per channel (opmath.cuh),
 *     RMSNorm, rotary at b * r, FP8 simulation (and for ratio 4 the indexer
 *     key: norm, rotary, Hadamard, FP4 simulation), BF16 rounding between
 *     steps as the oracle rounds.
 *   kv_select: scores in passes of whole tokens (plan.h's workspace): a
 *     warp per entry, a lane per head, each head's dot product in double in
 *     the oracle's order and the heads summed in order, so scores equal the
 *     oracle's bit for bit; then per token a radix select of the k-th key
 *     (4 passes of 8 bits, opmath.cuh's step), a compaction that keeps the
 *     lowest indices among equal scores, and a bitonic sort into top-k
 *     order (value descending, ties to the lower index).
 *   attn: one block per (token, head): key addresses in shared memory, a
 *     thread per key for the scores (double dot in order), max and the
 *     softmax denominator over the block, P rounded to BF16, then a thread
 *     per column sums P.V over the keys in order in double (the oracle's
 *     order).  Only the denominator's sum order differs from the oracle.
 *   kv_store: one block per token copies the positions later calls read.
 */
#include "kernels/cuda/cuda_int.cuh"
#include "kernels/cuda/kv.cuh"
#include "kernels/cuda/opmath.cuh"

#define CMP_THREADS  256
#define ATTN_THREADS 128
#define SEL_WARPS    8
#define SEL_ENTRIES  64 /* entries per scoring block */
#define TOPK_THREADS 1024

/* ------------------------------------------------------------ kv_compress */

struct cu_cargs {
    float *ckv, *cg, *ickv, *icg;
    const float *ape, *iape, *norm, *inorm;
    struct dsv4_rope rope;
    float eps;
};

__global__ void k_ape(struct dsv4_cu_toks tk, int r, int64_t cw, int64_t id2, struct cu_cargs a)
{
    int64_t W = cw + (r == 4 ? id2 : 0);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < tk.T * W;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / W, j = i % W, s = tk.pos[t] % r;
        if (j < cw)
            a.cg[t * cw + j] += a.ape[s * cw + j];
        else
            a.icg[t * id2 + (j - cw)] += a.iape[s * id2 + (j - cw)];
    }
}

/* Candidate pointers of entry b (kv and gate rows at the candidate's half); returns n. */
__device__ int cu_candidates(const struct dsv4_cu_kv &v, const struct dsv4_cu_toks &tk,
                             const struct cu_cargs &a, int t, int64_t b, bool idx,
                             const float **kvp, const float **gp)
{
    int r = v.l.ratio, slot = tk.slot[t];
    int64_t d = idx ? v.idim : v.dh, w = (idx ? 2 : v.l.coff) * d;
    int64_t half = r == 4 ? d : 0, first = dsv4_cu_toks_first(&tk, t);
    int64_t q0 = (r == 4 && b > 0 ? b - 1 : b) * r, n = (b + 1) * r - q0;
    for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
        int64_t q = q0 + s, off = q < b * r ? 0 : half;
        if (q >= first) {
            int64_t row = dsv4_cu_toks_row(&tk, t, q);
            kvp[s] = (idx ? a.ickv : a.ckv) + row * w + off;
            gp[s] = (idx ? a.icg : a.cg) + row * w + off;
        } else {
            const float *rq = idx ? dsv4_cu_kv_icmp(&v, slot, q) : dsv4_cu_kv_cmp(&v, slot, q);
            kvp[s] = rq + off;
            gp[s] = rq + w + off;
        }
    }
    __syncthreads();
    return (int)n;
}

/* tmp[0..d) <- bf16(norm * tmp * rho), then the rotary tail at position pos, bf16. */
__device__ void cu_norm_rope(float *tmp, int d, const float *norm, float eps,
                             const struct dsv4_rope &rope, int64_t pos, double *red)
{
    double ss = 0.0;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        ss += (double)tmp[c] * tmp[c];
    ss = cu_block_sum(ss, red);
    float rho = dsv4_cu_rms_scale(ss, d, eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = dsv4_cu_mul(tmp[c], rho);
        tmp[c] = dsv4_cu_bf16_round(norm ? dsv4_cu_mul(norm[c], v) : v);
    }
    __syncthreads();
    float *tail = tmp + d - rope.dim;
    for (int i = threadIdx.x; i < rope.dim / 2; i += blockDim.x) {
        dsv4_cu_rope_pair(&tail[2 * i], &tail[2 * i + 1], pos, rope.freq[i], false);
        tail[2 * i] = dsv4_cu_bf16_round(tail[2 * i]);
        tail[2 * i + 1] = dsv4_cu_bf16_round(tail[2 * i + 1]);
    }
    __syncthreads();
}

__global__ void __launch_bounds__(CMP_THREADS)
        k_compress(struct dsv4_cu_kv v, struct dsv4_cu_toks tk, struct cu_cargs a)
{
    __shared__ const float *kvp[256], *gp[256];
    __shared__ float tmp[1024];
    __shared__ double red[CMP_THREADS / 32];
    const int t = blockIdx.x, r = v.l.ratio;
    const int64_t p = tk.pos[t];
    if ((p + 1) % r)
        return;
    const int64_t b = (p + 1) / r - 1;
    const int slot = tk.slot[t], dh = v.dh, id = v.idim, rd = v.rd;
    /* main entry */
    int n = cu_candidates(v, tk, a, t, b, false, kvp, gp);
    for (int c = threadIdx.x; c < dh; c += blockDim.x)
        tmp[c] = dsv4_cu_pool_channel(kvp, gp, n, c);
    __syncthreads();
    cu_norm_rope(tmp, dh, a.norm, a.eps, a.rope, b * r, red);
    for (int g0 = threadIdx.x * 64; g0 < dh - rd; g0 += blockDim.x * 64)
        dsv4_cu_sim_fp8_group(tmp + g0, dh - rd - g0 < 64 ? dh - rd - g0 : 64);
    __syncthreads();
    uint16_t *ent = dsv4_cu_kv_entry(&v, slot, b);
    for (int c = threadIdx.x; c < dh; c += blockDim.x)
        ent[c] = dsv4_cu_f32_to_bf16(tmp[c]);
    if (r != 4)
        return;
    __syncthreads();
    /* indexer key */
    n = cu_candidates(v, tk, a, t, b, true, kvp, gp);
    for (int c = threadIdx.x; c < id; c += blockDim.x)
        tmp[c] = dsv4_cu_pool_channel(kvp, gp, n, c);
    __syncthreads();
    cu_norm_rope(tmp, id, a.inorm, a.eps, a.rope, b * r, red);
    for (int h = 1; h < id; h *= 2) {
        for (int j = threadIdx.x; j < id / 2; j += blockDim.x) {
            int i = (j / h) * 2 * h + (j % h);
            dsv4_cu_butterfly(&tmp[i], &tmp[i + h]);
        }
        __syncthreads();
    }
    float hs = 1.0f / sqrtf((float)id);
    for (int c = threadIdx.x; c < id; c += blockDim.x)
        tmp[c] = dsv4_cu_bf16_round(dsv4_cu_mul(tmp[c], hs));
    __syncthreads();
    for (int g0 = threadIdx.x * 32; g0 < id; g0 += blockDim.x * 32)
        dsv4_cu_sim_fp4_group(tmp + g0, id - g0 < 32 ? id - g0 : 32);
    __syncthreads();
    uint16_t *ik = dsv4_cu_kv_ikey(&v, slot, b);
    for (int c = threadIdx.x; c < id; c += blockDim.x)
        ik[c] = dsv4_cu_f32_to_bf16(tmp[c]);
}

static struct cu_cargs cu_cargs_of(const struct dsv4_kv_args *a)
{
    struct cu_cargs c;
    c.ckv = a->ckv;
    c.cg = a->cg;
    c.ickv = a->ickv;
    c.icg = a->icg;
    c.ape = a->ape;
    c.iape = a->iape;
    c.norm = a->norm;
    c.inorm = a->inorm;
    c.rope = *a->rope;
    c.eps = a->eps;
    return c;
}

static void cu_kv_compress(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    struct cu_be *c = CB(be);
    const struct dsv4_kv_view *v = a->kv;
    const struct dsv4_kv_layer *l = &v->layers[a->layer];
    int T = a->tok->T;
    DSV4_ASSERT(l->ratio > 0 && 2 * l->ratio <= 256 && v->dh <= 1024 && v->idim <= 1024);
    DSV4_ASSERT(a->rope->dim == v->rd);
    if (T <= 0)
        return;
    cu_enter(c);
    struct dsv4_cu_kv kv = dsv4_cu_kv_of(v, a->layer);
    struct dsv4_cu_toks tk = dsv4_cu_toks_of(a->tok);
    struct cu_cargs ca = cu_cargs_of(a);
    int64_t cw = (int64_t)l->coff * v->dh, id2 = 2 * (int64_t)v->idim;
    int64_t work = (int64_t)T * (cw + (l->ratio == 4 ? id2 : 0));
    k_ape<<<cu_grid(work, 256), 256, 0, c->st>>>(tk, l->ratio, cw, id2, ca);
    CU_LAUNCHED();
    k_compress<<<(unsigned)T, CMP_THREADS, 0, c->st>>>(kv, tk, ca);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ kv_store */

__global__ void k_store(struct dsv4_cu_kv v, struct dsv4_cu_toks tk, const uint16_t *kv_chunk,
                        struct cu_cargs a)
{
    const int t = blockIdx.x, slot = tk.slot[t];
    const int64_t p = tk.pos[t], end = dsv4_cu_toks_first(&tk, t) + tk.len[t], dh = v.dh;
    if (p >= end - v.win_rows) {
        uint16_t *w = dsv4_cu_kv_win(&v, slot, p);
        for (int64_t i = threadIdx.x; i < dh; i += blockDim.x)
            w[i] = kv_chunk[t * dh + i];
    }
    if (v.l.ratio == 0 || p < end - v.l.cmp_rows)
        return;
    int64_t cw = v.l.coff * dh, id2 = 2 * (int64_t)v.idim;
    float *cr = dsv4_cu_kv_cmp(&v, slot, p);
    for (int64_t i = threadIdx.x; i < cw; i += blockDim.x) {
        cr[i] = a.ckv[t * cw + i];
        cr[cw + i] = a.cg[t * cw + i];
    }
    if (v.l.ratio != 4)
        return;
    float *ic = dsv4_cu_kv_icmp(&v, slot, p);
    for (int64_t i = threadIdx.x; i < id2; i += blockDim.x) {
        ic[i] = a.ickv[t * id2 + i];
        ic[id2 + i] = a.icg[t * id2 + i];
    }
}

static void cu_kv_store(struct dsv4_backend *be, const struct dsv4_kv_args *a)
{
    struct cu_be *c = CB(be);
    int T = a->tok->T;
    if (T <= 0)
        return;
    cu_enter(c);
    struct cu_cargs ca = {};
    ca.ckv = a->ckv;
    ca.cg = a->cg;
    ca.ickv = a->ickv;
    ca.icg = a->icg;
    k_store<<<(unsigned)T, 128, 0, c->st>>>(dsv4_cu_kv_of(a->kv, a->layer), dsv4_cu_toks_of(a->tok),
                                            a->kv_chunk, ca);
    CU_LAUNCHED();
}

/* ------------------------------------------------------------ kv_select */

static size_t iscores_smem(int IH, int idim)
{
    return sizeof(float) * ((size_t)IH * (idim + 1) + IH + (size_t)SEL_WARPS * idim);
}

/* Scores of entries [blockIdx.x * SEL_ENTRIES, ...) of token t0 + blockIdx.y. */
__global__ void __launch_bounds__(SEL_WARPS * 32)
        k_iscores(struct dsv4_cu_kv v, struct dsv4_cu_toks tk, int t0, const float *q,
                  const float *w, int IH, float wscale, int topk, float *scores, int64_t ld)
{
    extern __shared__ float ssm[];
    const int t = t0 + blockIdx.y, id = v.idim;
    const int64_t nvis = (tk.pos[t] + 1) / 4, b0 = (int64_t)blockIdx.x * SEL_ENTRIES;
    if (nvis <= topk || b0 >= nvis)
        return;
    float *qs = ssm, *ws = qs + IH * (id + 1), *kb = ws + IH;
    const float *qt = q + (int64_t)t * IH * id;
    for (int i = threadIdx.x; i < IH * id; i += blockDim.x)
        qs[(i / id) * (id + 1) + i % id] = qt[i];
    for (int h = threadIdx.x; h < IH; h += blockDim.x)
        ws[h] = dsv4_cu_mul(w[(int64_t)t * IH + h], wscale);
    __syncthreads();
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31, slot = tk.slot[t];
    float *key = kb + wi * id;
    int64_t b1 = b0 + SEL_ENTRIES < nvis ? b0 + SEL_ENTRIES : nvis;
    for (int64_t b = b0 + wi; b < b1; b += SEL_WARPS) {
        const uint16_t *kp = dsv4_cu_kv_ikey(&v, slot, b);
        for (int i = lane; i < id; i += 32)
            key[i] = dsv4_cu_bf16_to_f32(kp[i]);
        __syncwarp();
        double acc = 0.0;
        for (int h0 = 0; h0 < IH; h0 += 32) {
            int h = h0 + lane;
            float rl = 0.0f;
            if (h < IH) {
                const float *qh = qs + h * (id + 1);
                double dot = 0.0;
                for (int i = 0; i < id; i++)
                    dot += (double)qh[i] * key[i];
                rl = fmaxf((float)dot, 0.0f);
            }
            /* the heads in order: acc += w_h * relu_h */
            for (int j = 0; j < 32 && h0 + j < IH; j++) {
                float rj = __shfl_sync(0xffffffffu, rl, j);
                acc += (double)ws[h0 + j] * rj;
            }
        }
        if (lane == 0)
            scores[(int64_t)blockIdx.y * ld + b] = (float)acc;
        __syncwarp();
    }
}

/* Top-k of token t0 + blockIdx.x's scores (value descending, ties to the lower index). */
__global__ void __launch_bounds__(TOPK_THREADS)
        k_topk(struct dsv4_cu_toks tk, int t0, const float *scores, int64_t ld, int topk, int sortn,
               int32_t *sel, int32_t *nsel)
{
    extern __shared__ uint64_t keys[]; /* [sortn], then the histogram */
    uint32_t *hist = (uint32_t *)(keys + sortn);
    __shared__ uint32_t s_prefix, s_mask, s_krem, s_base_gt, s_base_eq;
    __shared__ uint32_t wgt[32], weq[32];
    const int t = t0 + blockIdx.x, tid = threadIdx.x, lane = tid & 31, wi = tid >> 5;
    const int64_t nvis = (tk.pos[t] + 1) / 4;
    int32_t *st = sel + (int64_t)t * topk;
    if (nvis <= topk) {
        for (int64_t b = tid; b < nvis; b += blockDim.x)
            st[b] = (int32_t)b;
        if (tid == 0)
            nsel[t] = (int32_t)nvis;
        return;
    }
    const float *sc = scores + (int64_t)blockIdx.x * ld;
    if (tid == 0) {
        s_prefix = s_mask = 0;
        s_krem = (uint32_t)topk;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += blockDim.x)
            hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        for (int64_t i = tid; i < nvis; i += blockDim.x) {
            uint32_t key = dsv4_cu_order_key(sc[i]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            uint32_t kr = s_krem;
            uint32_t d = (uint32_t)dsv4_cu_radix_pick(hist, &kr);
            s_krem = kr;
            s_prefix |= d << shift;
            s_mask |= 255u << shift;
        }
        __syncthreads();
    }
    const uint32_t kth = s_prefix, need_eq = s_krem, n_gt = (uint32_t)topk - need_eq;
    if (tid == 0)
        s_base_gt = s_base_eq = 0;
    __syncthreads();
    for (int64_t i0 = 0; i0 < nvis; i0 += blockDim.x) {
        int64_t i = i0 + tid;
        uint32_t key = i < nvis ? dsv4_cu_order_key(sc[i]) : 0;
        bool gt = i < nvis && key > kth, eq = i < nvis && key == kth;
        uint32_t bg = __ballot_sync(0xffffffffu, gt), be = __ballot_sync(0xffffffffu, eq);
        uint32_t lt_mask = (1u << lane) - 1u;
        if (lane == 0) {
            wgt[wi] = __popc(bg);
            weq[wi] = __popc(be);
        }
        __syncthreads();
        uint32_t og = s_base_gt, oe = s_base_eq;
        for (int j = 0; j < wi; j++) {
            og += wgt[j];
            oe += weq[j];
        }
        if (gt)
            keys[og + __popc(bg & lt_mask)] = dsv4_cu_topk_key(sc[i], (uint32_t)i);
        if (eq) {
            uint32_t rank = oe + __popc(be & lt_mask);
            if (rank < need_eq)
                keys[n_gt + rank] = dsv4_cu_topk_key(sc[i], (uint32_t)i);
        }
        __syncthreads();
        if (tid == 0) {
            int nw = (int)(blockDim.x >> 5);
            for (int j = 0; j < nw; j++) {
                s_base_gt += wgt[j];
                s_base_eq += weq[j];
            }
        }
        __syncthreads();
    }
    for (int i = topk + tid; i < sortn; i += blockDim.x)
        keys[i] = ~(uint64_t)0;
    __syncthreads();
    for (int k = 2; k <= sortn; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = tid; i < sortn; i += blockDim.x) {
                int ixj = i ^ j;
                if (ixj > i) {
                    bool up = (i & k) == 0;
                    uint64_t x = keys[i], y = keys[ixj];
                    if ((x > y) == up) {
                        keys[i] = y;
                        keys[ixj] = x;
                    }
                }
            }
            __syncthreads();
        }
    for (int i = tid; i < topk; i += blockDim.x)
        st[i] = (int32_t)(keys[i] & 0xffffffffu);
    if (tid == 0)
        nsel[t] = topk;
}

static void cu_kv_select(struct dsv4_backend *be, const struct dsv4_select_args *a)
{
    struct cu_be *c = CB(be);
    const struct dsv4_kv_view *v = a->kv;
    int T = a->tok->T;
    DSV4_ASSERT(v->layers[a->layer].ratio == 4 && a->topk >= 1 && a->IH >= 1);
    if (T <= 0)
        return;
    cu_enter(c);
    struct dsv4_cu_kv kv = dsv4_cu_kv_of(v, a->layer);
    struct dsv4_cu_toks tk = dsv4_cu_toks_of(a->tok);
    int64_t ent = c->lim.entries, per = c->ws.select_tokens;
    size_t ssm = iscores_smem(a->IH, v->idim);
    int sortn = dsv4_cu_topk_sort_n(a->topk);
    size_t tsm = dsv4_cu_topk_smem(a->topk);
    DSV4_ASSERT(c->reserved && ent >= 1 && ssm <= c->smem_optin && tsm <= c->smem_optin);
    if (tsm > 48 * 1024)
        CU_CHECK(cudaFuncSetAttribute(k_topk, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)tsm));
    for (int t0 = 0; t0 < T; t0 += (int)per) {
        int nt = (int)DSV4_MIN((int64_t)T - t0, per);
        dim3 g1((unsigned)((ent + SEL_ENTRIES - 1) / SEL_ENTRIES), (unsigned)nt);
        DSV4_ASSERT(nt <= 65535);
        k_iscores<<<g1, SEL_WARPS * 32, ssm, c->st>>>(kv, tk, t0, a->q, a->w, a->IH, a->wscale,
                                                      a->topk, c->sel, ent);
        CU_LAUNCHED();
        k_topk<<<(unsigned)nt, TOPK_THREADS, tsm, c->st>>>(tk, t0, c->sel, ent, a->topk, sortn,
                                                           a->sel, a->nsel);
        CU_LAUNCHED();
    }
}

/* ------------------------------------------------------------ attn */

struct cu_attn {
    const float *q;
    int nh;
    const uint16_t *kv_chunk;
    const int32_t *sel, *nsel;
    int topk;
    const float *sink;
    float scale;
    bool bf16;
    float *out;
    int64_t kmax;
};

/* dot(q, k) over d BF16 values in double, in index order. */
__device__ __forceinline__ double cu_dot_bf16(const float *q, const uint16_t *k, int d)
{
    double z = 0.0;
    if (d % 8 == 0 && ((uintptr_t)k & 15) == 0) {
        const uint4 *k4 = (const uint4 *)k;
        for (int i = 0; i < d / 8; i++) {
            uint4 u = k4[i];
            uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                z += (double)q[8 * i + 2 * j] * dsv4_cu_bf16_to_f32((uint16_t)(w[j] & 0xffff));
                z += (double)q[8 * i + 2 * j + 1] * dsv4_cu_bf16_to_f32((uint16_t)(w[j] >> 16));
            }
        }
        return z;
    }
    for (int i = 0; i < d; i++)
        z += (double)q[i] * dsv4_cu_bf16_to_f32(k[i]);
    return z;
}

__global__ void __launch_bounds__(ATTN_THREADS)
        k_attn(struct dsv4_cu_kv v, struct dsv4_cu_toks tk, struct cu_attn a)
{
    extern __shared__ uint8_t attn_sm[];
    __shared__ double red[ATTN_THREADS / 32];
    __shared__ float fred[ATTN_THREADS / 32];
    const int t = blockIdx.x, h = blockIdx.y, dh = v.dh, slot = tk.slot[t];
    const int64_t p = tk.pos[t], first = dsv4_cu_toks_first(&tk, t);
    const int64_t wlo = p - v.window + 1 > 0 ? p - v.window + 1 : 0, nw = p - wlo + 1;
    const int r = v.l.ratio;
    int64_t nc = r == 4 ? a.nsel[t] : r > 0 ? (p + 1) / r : 0, n = nw + nc;
    if (n > a.kmax)
        __trap(); /* more keys than reserve() was told: the engine's limits are wrong */
    const uint16_t **keys = (const uint16_t **)attn_sm;
    float *sc = (float *)(keys + a.kmax);
    for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
        if (s < nw) {
            int64_t q = wlo + s;
            keys[s] = q >= first ? a.kv_chunk + dsv4_cu_toks_row(&tk, t, q) * dh
                                 : dsv4_cu_kv_win(&v, slot, q);
        } else {
            int64_t j = s - nw, b = r == 4 ? a.sel[(int64_t)t * a.topk + j] : j;
            keys[s] = dsv4_cu_kv_entry(&v, slot, b);
        }
    }
    __syncthreads();
    const float *qh = a.q + ((int64_t)t * a.nh + h) * dh;
    float mx = -INFINITY;
    for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
        float z = dsv4_cu_mul((float)cu_dot_bf16(qh, keys[s], dh), a.scale);
        sc[s] = z;
        mx = fmaxf(mx, z);
    }
    const float M = cu_block_max(mx, fred);
    double den = 0.0;
    for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
        float e = dsv4_cu_expf(sc[s] - M);
        den += e;
        sc[s] = dsv4_cu_bf16_round(e);
    }
    den = cu_block_sum(den, red); /* also orders the writes of sc before the reads below */
    const float fden = (float)den + dsv4_cu_expf(a.sink[h] - M);
    float *o = a.out + ((int64_t)t * a.nh + h) * dh;
    for (int i = threadIdx.x; i < dh; i += blockDim.x) {
        double acc = 0.0;
        for (int64_t s = 0; s < n; s++)
            acc += (double)sc[s] * dsv4_cu_bf16_to_f32(keys[s][i]);
        float val = (float)acc / fden;
        o[i] = a.bf16 ? dsv4_cu_bf16_round(val) : val;
    }
}

static void cu_attn_op(struct dsv4_backend *be, const struct dsv4_attn_args *a)
{
    struct cu_be *c = CB(be);
    int T = a->tok->T;
    if (T <= 0 || a->nh <= 0)
        return;
    DSV4_ASSERT(c->reserved && a->nh <= 65535);
    cu_enter(c);
    struct cu_attn ca;
    ca.q = a->q;
    ca.nh = a->nh;
    ca.kv_chunk = a->kv_chunk;
    ca.sel = a->sel;
    ca.nsel = a->nsel;
    ca.topk = a->topk;
    ca.sink = a->sink;
    ca.scale = a->scale;
    ca.bf16 = a->flags & DSV4_OP_BF16;
    ca.out = a->out;
    ca.kmax = DSV4_MAX(c->lim.keys, (int64_t)1);
    size_t smem = dsv4_cu_attn_smem(ca.kmax);
    k_attn<<<dim3((unsigned)T, (unsigned)a->nh), ATTN_THREADS, smem, c->st>>>(
            dsv4_cu_kv_of(a->kv, a->layer), dsv4_cu_toks_of(a->tok), ca);
    CU_LAUNCHED();
}

int cu_attn_reserve(struct cu_be *c, const struct dsv4_be_limits *lim)
{
    size_t as = dsv4_cu_attn_smem(DSV4_MAX(lim->keys, (int64_t)1));
    size_t ss = iscores_smem((int)DSV4_MAX(lim->index_heads, (int64_t)1),
                             (int)DSV4_MAX(lim->index_head_dim, (int64_t)1));
    /* the kernels' static shared memory comes on top of the dynamic part */
    if (as + 1024 > c->smem_optin || ss + 1024 > c->smem_optin)
        return dsv4_error(DSV4_ENOTSUP,
                          "cuda backend: attention over %lld keys needs %zu bytes of shared "
                          "memory, the indexer %zu; the device allows %zu per block",
                          (long long)lim->keys, as, ss, c->smem_optin);
    cu_enter(c);
    CU_CHECK(cudaFuncSetAttribute(k_attn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)as));
    CU_CHECK(cudaFuncSetAttribute(k_iscores, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ss));
    return 0;
}

void cu_ops_attn(struct dsv4_backend *b)
{
    b->kv_compress = cu_kv_compress;
    b->kv_select = cu_kv_select;
    b->attn = cu_attn_op;
    b->kv_store = cu_kv_store;
}
