/*
 * backend.h - the one interface between the engine and the numeric kernels
 * (DESIGN.md §3): a struct of function pointers covering every op the
 * forward pass, the MTP block and the step's sampling use, implemented by
 * the scalar oracle (kernels/ref/backend.c, "ref"), the fast CPU kernels
 * (kernels/cpu/backend.c, "cpu") and, later, CUDA (kernels/cuda, "cuda").
 *
 * Why one table: the engine (engine/model/) is written once against these
 * ops and never touches activation memory itself, so that a GPU backend
 * slots in without changing the layer code, and so that the ref and cpu
 * backends can be compared op by op and layer by layer.
 *
 * Shape conventions.  Every op takes a whole batch: [T, ...] over the tokens
 * of a forward call, or [T, heads, ...]; the engine never loops over rows or
 * heads calling an op per row, and one op call on a GPU is one launch (or a
 * fixed small number).  Activations are FP32 (values BF16-exact wherever
 * the reference stores BF16) unless a field says BF16 (uint16_t bits) or
 * I32.  Array arguments are struct dsv4_tensor views (base/tensor.h: data,
 * dtype, shape, strides, device); ops assert that shapes and dtypes agree,
 * because the engine builds them from its validated config (a mismatch is a
 * bug, not bad input).  Where a row stride is allowed the op says so; every
 * other tensor must be contiguous.  Outputs never alias inputs unless the
 * op says "in place".
 *
 * Numerics: every backend computes the math of kernels/ref exactly up to
 * the order of FP32 (or FP64) sums (kernels/linear.h says why products are
 * exact); within one backend and one instruction set, an output row never
 * depends on the other rows of the batch (batch invariance: the same
 * sequence gives bitwise the same result alone or in any mixed batch).
 *
 * Memory: pointers inside tensors and argument structs are memory of the
 * backend's device (host memory for ref and cpu).  alloc/upload/download
 * move data between host and device; ops do not allocate: a backend sizes
 * its scratch once in reserve() from struct dsv4_be_limits.
 *
 * Threads: a backend instance is driven by one thread at a time (the
 * engine's); it may use its own worker threads inside an op.
 */
#ifndef DSV4_BACKEND_H
#define DSV4_BACKEND_H

#include "base/tensor.h"
#include "kernels/linear.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ shared types */

/* Rotary table of one layer kind: freq[i] = omega'_i for the dim/2 pairs. */
#define DSV4_ROPE_MAX_PAIRS 64
struct dsv4_rope {
    int dim; /* rotary dims (the last `dim` of a head vector); pairs = dim / 2 */
    float freq[DSV4_ROPE_MAX_PAIRS];
};

/*
 * omega_i = theta^(-2i/dim); with YaRN (model.md §3.4):
 * corr(n) = dim ln(L0 / (2 pi n)) / (2 ln theta), lo = max(floor(corr(beta_fast)), 0),
 * hi = min(ceil(corr(beta_slow)), dim - 1), ramp_i = clamp((i - lo) / (hi - lo), 0, 1),
 * omega'_i = omega_i / factor * ramp_i + omega_i * (1 - ramp_i).  Returns -1 on a bad dim.
 * (A table, not an op: every backend rotates with the same FP32 frequencies.)
 */
int dsv4_rope_init(struct dsv4_rope *r, int dim, double theta, bool yarn, double factor,
                   double beta_fast, double beta_slow, double orig_max_pos);

enum dsv4_score_func {
    DSV4_SCORE_SQRTSOFTPLUS = 0,
    DSV4_SCORE_SIGMOID = 1,
    DSV4_SCORE_SOFTMAX = 2
};

/* A linear layer: stored weight view + the activation path the reference uses. */
struct dsv4_lin {
    struct dsv4_qweight w;
    enum dsv4_act act;
};

/* A SwiGLU FFN (routed or shared expert): gate [I, D], down [D, I], up [I, D]. */
struct dsv4_ffn_w {
    struct dsv4_lin w1, w2, w3;
};

/* mHC parameters of one site (model.md §3.2). */
struct dsv4_hc_params {
    const float *fn;   /* [nmix, hc*D] F32, nmix = (2+hc)*hc (pre) or hc (head) */
    const float *base; /* [nmix] */
    float scale[3];    /* pre: s0, s1, s2; head: s0 */
    int hc, iters;
    float norm_eps, hc_eps;
};

/* Op flags. */
#define DSV4_OP_BF16 1u /* round the op's outputs to BF16 (RNE) */

/* Activation-simulation kinds of act_sim. */
enum dsv4_sim {
    DSV4_SIM_FP8 = 0, /* E4M3 per group, power-of-two scale (dsv4_act_sim_fp8) */
    DSV4_SIM_FP4 = 1  /* E2M1 per group, power-of-two scale (dsv4_act_sim_fp4) */
};

/* ------------------------------------------------------------ attention state */

/*
 * Layout of the attention state in one arena of backend memory, described by
 * plain offsets so that every backend (and the state pool's owner,
 * engine/model/state.c) agrees on it.  Two kinds of storage:
 *   - per sequence, a fixed-size slot: for every layer a window ring of
 *     win_rows BF16 kv rows [head_dim] (position p in row p % win_rows) and,
 *     for compressed layers, the compressor's partial-block ring of cmp_rows
 *     FP32 rows [2 * cw] (kv, then gate + ape; cw = coff * head_dim; position
 *     p in row p % cmp_rows; cmp_rows = coff * ratio + horizon, per layer),
 *     and for ratio-4 layers the indexer compressor's ring of cmp_rows FP32
 *     rows [2 * 2 * index_head_dim];
 *   - paged blocks of block_tokens positions of one sequence: for every
 *     compressed layer the block_tokens / ratio compressed entries (BF16
 *     [head_dim]) whose blocks of `ratio` positions lie in it, and for ratio-4
 *     layers as many indexer keys (BF16 [index_head_dim]).  Entry b of a layer
 *     with ratio r lives in the sequence's logical block (b * r) /
 *     block_tokens, at index b % (block_tokens / r).
 * The ring sizes cover the window (resp. 2 * ratio candidate positions) plus
 * the rollback horizon, so rolling back a few positions needs no copy.
 */
struct dsv4_kv_layer {
    int ratio;        /* 0, 4, 128 */
    int coff;         /* 2 for ratio 4, else 1 */
    int cmp_rows;     /* compressor ring rows (coff * ratio + horizon), 0 without */
    int64_t win_off;  /* bytes from the slot start: window ring [win_rows, dh] BF16 */
    int64_t cmp_off;  /* compressor ring [cmp_rows, 2 * coff * dh] F32, or -1 */
    int64_t icmp_off; /* indexer compressor ring [cmp_rows, 4 * idim] F32, or -1 */
    int64_t ent_off;  /* bytes from the block start: entries [B / r, dh] BF16, or -1 */
    int64_t ikey_off; /* indexer keys [B / 4, idim] BF16, or -1 */
};

struct dsv4_kv_view {
    uint8_t *slots;  /* slot s at slots + s * slot_bytes */
    uint8_t *blocks; /* physical block j at blocks + j * block_bytes */
    int64_t slot_bytes, block_bytes;
    int block_tokens;           /* B, a multiple of every ratio */
    int win_rows;               /* window ring rows (window + horizon) */
    int window;                 /* sliding window (positions a query sees, itself included) */
    int dh, rd, idim;           /* head_dim, rotary dims, index_head_dim */
    const int32_t *block_table; /* [n_slots, max_blocks]: logical -> physical block */
    int max_blocks;
    int n_layers;
    const struct dsv4_kv_layer *layers;
};

/* Addresses inside the layout (host arithmetic; on a GPU the same in device code). */
static inline uint8_t *dsv4_kv_slot(const struct dsv4_kv_view *v, int slot, int64_t off)
{
    return v->slots + (int64_t)slot * v->slot_bytes + off;
}
/* Window ring row of position pos: BF16 [dh]. */
static inline uint16_t *dsv4_kv_win(const struct dsv4_kv_view *v, int slot, int layer, int64_t pos)
{
    return (uint16_t *)dsv4_kv_slot(v, slot, v->layers[layer].win_off) +
           (pos % v->win_rows) * v->dh;
}
/* Compressor ring row of position pos: F32 [2 * coff * dh] (kv, then gate + ape). */
static inline float *dsv4_kv_cmp(const struct dsv4_kv_view *v, int slot, int layer, int64_t pos)
{
    const struct dsv4_kv_layer *l = &v->layers[layer];
    return (float *)dsv4_kv_slot(v, slot, l->cmp_off) + (pos % l->cmp_rows) * 2 * l->coff * v->dh;
}
/* Indexer compressor ring row of position pos: F32 [4 * idim]. */
static inline float *dsv4_kv_icmp(const struct dsv4_kv_view *v, int slot, int layer, int64_t pos)
{
    const struct dsv4_kv_layer *l = &v->layers[layer];
    return (float *)dsv4_kv_slot(v, slot, l->icmp_off) + (pos % l->cmp_rows) * 4 * v->idim;
}
static inline uint8_t *dsv4_kv_block(const struct dsv4_kv_view *v, int slot, int64_t lblock)
{
    int32_t pb = v->block_table[(int64_t)slot * v->max_blocks + lblock];
    return v->blocks + (int64_t)pb * v->block_bytes;
}
/* Compressed entry b: BF16 [dh]. */
static inline uint16_t *dsv4_kv_entry(const struct dsv4_kv_view *v, int slot, int layer, int64_t b)
{
    const struct dsv4_kv_layer *l = &v->layers[layer];
    int64_t per = v->block_tokens / l->ratio;
    return (uint16_t *)(dsv4_kv_block(v, slot, b / per) + l->ent_off) + (b % per) * v->dh;
}
/* Indexer key b: BF16 [idim]. */
static inline uint16_t *dsv4_kv_ikey(const struct dsv4_kv_view *v, int slot, int layer, int64_t b)
{
    const struct dsv4_kv_layer *l = &v->layers[layer];
    int64_t per = v->block_tokens / l->ratio;
    return (uint16_t *)(dsv4_kv_block(v, slot, b / per) + l->ikey_off) + (b % per) * v->idim;
}

/*
 * Tokens of one forward call, in batch order: chunk c's tokens are
 * consecutive; token t belongs to sequence slot slot[t], sits at position
 * pos[t], and its chunk starts at batch row row0[t] and has len[t] tokens
 * (so the chunk's first position is pos[t] - (t - row0[t])).  Positions
 * below the chunk's first come from the state; positions inside the chunk
 * from this call's buffers.
 */
struct dsv4_toks {
    int T;
    const int32_t *slot, *row0, *len;
    const int64_t *pos;
};

/* First position of token t's chunk, and the batch row of position q >= it. */
static inline int64_t dsv4_toks_first(const struct dsv4_toks *k, int t)
{
    return k->pos[t] - (t - k->row0[t]);
}
static inline int64_t dsv4_toks_row(const struct dsv4_toks *k, int t, int64_t q)
{
    return k->row0[t] + (q - dsv4_toks_first(k, t));
}

/* Arguments of kv_compress, kv_store (per layer). */
struct dsv4_kv_args {
    const struct dsv4_kv_view *kv;
    int layer;
    const struct dsv4_toks *tok;
    const uint16_t *kv_chunk;  /* [T, dh] BF16 window kv of the call's tokens (store) */
    float *ckv, *cg;           /* [T, cw]: compressor kv / gate of the tokens (cg: in place) */
    float *ickv, *icg;         /* [T, 2 * idim] (ratio 4) */
    const float *ape, *iape;   /* [ratio, cw], [4, 2 * idim] */
    const float *norm, *inorm; /* [dh], [idim] */
    const struct dsv4_rope *rope;
    float eps;
};

/* Arguments of kv_select (ratio-4 layers). */
struct dsv4_select_args {
    const struct dsv4_kv_view *kv;
    int layer;
    const struct dsv4_toks *tok;
    const float *q; /* [T, IH, idim] indexer queries (after Hadamard + FP4 simulation) */
    const float *w; /* [T, IH] head weights (BF16 values) */
    int IH;
    float wscale; /* w_h is used as (float)(w_h * wscale) */
    int topk;
    int32_t *sel;  /* out [T, topk]: entries, best first (ties: lower index) */
    int32_t *nsel; /* out [T]: min(visible entries, topk) */
};

/* Arguments of attn. */
struct dsv4_attn_args {
    const struct dsv4_kv_view *kv;
    int layer;
    const struct dsv4_toks *tok;
    const float *q; /* [T, nh, dh] */
    int nh;
    const uint16_t *kv_chunk; /* [T, dh] BF16 window kv of the call's tokens */
    const int32_t *sel;       /* ratio 4: [T, topk] from kv_select; else NULL */
    const int32_t *nsel;      /* ratio 4: [T] */
    int topk;
    const float *sink; /* [nh] */
    float scale;
    unsigned flags; /* DSV4_OP_BF16 */
    float *out;     /* [T, nh, dh] */
};

/* ------------------------------------------------------------ MoE and routing */

struct dsv4_route_args {
    int T, E, k;
    const float *logits; /* [T, E] router outputs (F32) */
    enum dsv4_score_func func;
    const float *bias;      /* [E] or NULL */
    const int32_t *tid2eid; /* [V, k] (hash layers) or NULL */
    const int32_t *tokens;  /* [T] (hash layers) */
    bool renorm;
    float scale;
    int32_t *ids; /* out [T, k]: expert ids, ascending per token */
    float *wts;   /* out [T, k]: their weights, same order */
};

struct dsv4_moe_args {
    int T, k;
    int64_t D, I;
    const float *x;              /* [T, D] FFN input (normalised, BF16 values) */
    const int32_t *ids;          /* [T, k] from route */
    const float *wts;            /* [T, k] */
    int e0, e1;                  /* experts held here: [e0, e1) */
    const struct dsv4_ffn_w *ex; /* [e1 - e0] */
    float limit;                 /* SwiGLU clamp (<= 0: none) */
    float *out;                  /* [T, slots, D]: slot i of token t */
    int slots;                   /* >= k */
};

/* Maxima a backend sizes its scratch for (reserve). */
struct dsv4_be_limits {
    int64_t tokens;                       /* tokens of one forward call */
    int64_t cols;                         /* widest GEMM input */
    int64_t hidden, inter, experts, topk; /* D, I, E, k */
    int64_t keys;                         /* most keys one query attends (window + compressed) */
    int64_t entries; /* most visible entries of one ratio-4 query (indexer candidates) */
    int64_t head_dim, index_head_dim, index_heads;
    int64_t vocab;
};

/* ------------------------------------------------------------ the op table */

struct dsv4_backend {
    const char *name; /* "ref", "cpu", "cuda" */
    int device;       /* DSV4_DEVICE_HOST or a GPU (base/tensor.h) */
    void *impl;

    /* ---- lifetime and memory */
    void (*destroy)(struct dsv4_backend *be);
    /* Sizes every scratch the ops need; later ops never allocate. */
    int (*reserve)(struct dsv4_backend *be, const struct dsv4_be_limits *lim);
    /* Zeroed device memory (NULL when out of memory); free(NULL) is a no-op. */
    void *(*alloc)(struct dsv4_backend *be, size_t bytes);
    void (*free)(struct dsv4_backend *be, void *p);
    int (*upload)(struct dsv4_backend *be, void *dst, const void *src, size_t bytes);
    int (*download)(struct dsv4_backend *be, void *dst, const void *src, size_t bytes);
    /* Waits for every op issued so far. */
    int (*sync)(struct dsv4_backend *be);
    /*
     * Optional (NULL where the backend has none): device memory that outlives the process
     * that made it, for weights a restarted worker maps instead of uploading again.
     * alloc_shared: zeroed memory of at least `bytes` and a file descriptor naming it (the
     * caller owns the descriptor and may pass it to another process); import_shared: the
     * same memory mapped from such a descriptor (NULL with a message when the allocation is
     * gone or smaller than `bytes`); free_shared: unmaps either (the memory itself lives on
     * while a descriptor or another mapping refers to it).
     */
    void *(*alloc_shared)(struct dsv4_backend *be, size_t bytes, int *fd);
    void *(*import_shared)(struct dsv4_backend *be, int fd, size_t bytes);
    void (*free_shared)(struct dsv4_backend *be, void *p, size_t bytes);
    /*
     * Optional (NULL where the backend runs every op as it is issued): recorded op
     * sequences, for decode steps whose launches cost more than their work (CUDA graphs).
     * graph_begin starts recording: the ops issued until graph_end are recorded, not run
     * (no upload, download or sync in between); graph_end stops recording and, when
     * `graph` is not NULL, stores a handle to the recorded sequence (with graph NULL, or on
     * an error, the recording is discarded; recording has always stopped when it returns).
     * graph_launch runs a recorded sequence, in order with the ops around it, reading
     * whatever the buffers hold at that time (the same pointers and sizes as recorded);
     * graph_free releases it.  Errors are returned with a message.
     */
    int (*graph_begin)(struct dsv4_backend *be);
    int (*graph_end)(struct dsv4_backend *be, void **graph);
    int (*graph_launch)(struct dsv4_backend *be, void *graph);
    void (*graph_free)(struct dsv4_backend *be, void *graph);

    /* ---- data movement */
    /* dst rows r < rows: dst + r * dpitch <- src + r * spitch, width bytes each (cudaMemcpy2D). */
    void (*copy2d)(struct dsv4_backend *be, void *dst, size_t dpitch, const void *src,
                   size_t spitch, size_t width, size_t rows);
    /* dst[i, :] = src[idx[i], :]: src [N, w], idx I32 [n], dst [n, w] (any dtype, contiguous). */
    void (*gather_rows)(struct dsv4_backend *be, const struct dsv4_tensor *src,
                        const struct dsv4_tensor *idx, const struct dsv4_tensor *dst);
    void (*fill_zero)(struct dsv4_backend *be, const struct dsv4_tensor *x);
    /* F32 <-> BF16 conversion (F32 -> BF16 rounds to nearest even), same shape. */
    void (*convert)(struct dsv4_backend *be, const struct dsv4_tensor *src,
                    const struct dsv4_tensor *dst);
    /* In place: x = bf16(x) (F32, contiguous). */
    void (*round_bf16)(struct dsv4_backend *be, const struct dsv4_tensor *x);

    /* ---- element-wise, norms, rotary */
    /* In place over x [rows, n] (row stride allowed): quantise-dequantise per `group`. */
    void (*act_sim)(struct dsv4_backend *be, const struct dsv4_tensor *x, enum dsv4_sim kind,
                    int group);
    /* In place over x [rows, n], n a power of two: x <- H_n x / sqrt(n) per row (Sylvester
     * order); flags: DSV4_OP_BF16. */
    void (*hadamard)(struct dsv4_backend *be, const struct dsv4_tensor *x, unsigned flags);
    /* y[r] = w * x[r] / sqrt(mean(x[r]^2) + eps) over x, y [rows, n] (y may be x); w [n] or
     * NULL (weightless); flags: DSV4_OP_BF16. */
    void (*rmsnorm)(struct dsv4_backend *be, const struct dsv4_tensor *x, const float *w, float eps,
                    const struct dsv4_tensor *y, unsigned flags);
    /* In place over x [T, nh, dh]: the last r->dim values of every head vector rotate by
     * pos[t] * freq (inverse: by -pos[t] * freq), interleaved pairs; flags: DSV4_OP_BF16
     * rounds the rotated values. */
    void (*rope)(struct dsv4_backend *be, const struct dsv4_tensor *x, const int64_t *pos,
                 const struct dsv4_rope *r, bool inverse, unsigned flags);
    /* h = silu(min(g, limit)) * clamp(u, -limit, limit) * w[t] over g, u, h [T, n] (w NULL:
     * 1); flags: DSV4_OP_BF16. */
    void (*swiglu)(struct dsv4_backend *be, const struct dsv4_tensor *g,
                   const struct dsv4_tensor *u, float limit, const float *w,
                   const struct dsv4_tensor *h, unsigned flags);

    /* ---- GEMMs (kernels/linear.h numerics) */
    /* y [m, rows] = act(x [m, cols]) . W^T; flags: DSV4_OP_BF16. */
    void (*linear)(struct dsv4_backend *be, const struct dsv4_lin *l, const struct dsv4_tensor *x,
                   const struct dsv4_tensor *y, unsigned flags);
    /* n independent products of one input: y[i] [m, l[i]->rows] = act(x [m, cols]) .
     * W[i]^T with flags[i] (DSV4_OP_BF16), each exactly as `linear` computes it, in one
     * go: for the small products of a decode step, which one at a time leave threads idle.
     * Optional: NULL means the caller runs `linear` n times. */
    void (*linear_multi)(struct dsv4_backend *be, int n, const struct dsv4_lin *const *l,
                         const struct dsv4_tensor *x, const struct dsv4_tensor *const *y,
                         const unsigned *flags);
    /* G groups: W [G * R, K] (l->w.rows = G * R), x [m, G * K], y [m, G * R];
     * y[:, g R : (g+1) R] = act(x[:, g K : (g+1) K]) . W[g R : (g+1) R]^T; flags: BF16. */
    void (*linear_grouped)(struct dsv4_backend *be, const struct dsv4_lin *l, int G,
                           const struct dsv4_tensor *x, const struct dsv4_tensor *y,
                           unsigned flags);
    /* Routed experts held here, grouped over the batch: for every (t, i) with
     * e = ids[t, i] in [e0, e1): h = bf16(swiglu(bf16(w1 x_t), bf16(w3 x_t)) * wts[t, i]),
     * out[t, i] = bf16(w2 h); out[t, i] = 0 for the other (t, i); slots >= k untouched. */
    void (*moe)(struct dsv4_backend *be, const struct dsv4_moe_args *a);
    /* out[t] = bf16?(sum_s slots[t, s]) over s = 0..S-1 in that order, accumulated in
     * double and rounded once; slots [T, S, D], out [T, D]. */
    void (*moe_combine)(struct dsv4_backend *be, const struct dsv4_tensor *slots,
                        const struct dsv4_tensor *out, unsigned flags);
    /* MoE routing (model.md §3.5, dsv4_ref_route per token), selection sorted by id. */
    void (*route)(struct dsv4_backend *be, const struct dsv4_route_args *a);

    /* ---- embedding and hyper-connections */
    /* out[t] = BF16 row tokens[t] - v0 of table [nv, D] when v0 <= tokens[t] < v0 + nv,
     * else 0 (vocabulary-parallel: ranks' outputs sum to the full embedding). */
    void (*embed)(struct dsv4_backend *be, const uint16_t *table, int64_t v0, int64_t nv,
                  const struct dsv4_tensor *tokens, const struct dsv4_tensor *out);
    /* mHC pre + norm over X [T, hc, D]: (y, post, comb) = HC_PRE(X) (mix projection
     * included), y = bf16(y), xn = bf16(rmsnorm_w(y)); y, xn [T, D], post [T, hc],
     * comb [T, hc, hc]. */
    void (*hc_pre)(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                   const struct dsv4_tensor *X, const float *norm_w, float eps,
                   const struct dsv4_tensor *y, const struct dsv4_tensor *xn,
                   const struct dsv4_tensor *post, const struct dsv4_tensor *comb);
    /* Xo[t, k] = post[t, k] A[t] + sum_j comb[t, j, k] X[t, j] (double sums), flags BF16. */
    void (*hc_post)(struct dsv4_backend *be, const struct dsv4_tensor *A,
                    const struct dsv4_tensor *X, const struct dsv4_tensor *post,
                    const struct dsv4_tensor *comb, const struct dsv4_tensor *Xo, unsigned flags);
    /* Final collapse + norm: z = bf16(rmsnorm_w(bf16(HC_HEAD(X)))), X [n, hc, D], z [n, D]. */
    void (*hc_head)(struct dsv4_backend *be, const struct dsv4_hc_params *p,
                    const struct dsv4_tensor *X, const float *norm_w, float eps,
                    const struct dsv4_tensor *z);
    /* out[t, j] = a[t, j] + b[t] (a NULL: out[t, j] = b[t] exactly); a, out [T, hc, D],
     * b [T, D]; flags: BF16. */
    void (*hc_expand)(struct dsv4_backend *be, const struct dsv4_tensor *a,
                      const struct dsv4_tensor *b, const struct dsv4_tensor *out, unsigned flags);

    /* ---- attention state and sparse attention (struct dsv4_kv_view) */
    /*
     * Compressor of one layer (ratio > 0): first cg[t] += ape[pos[t] % r] (and icg with
     * iape) in place for every token; then for every token whose position p completes a
     * block ((p + 1) % r == 0) pools entry b = (p + 1) / r - 1 from its candidates (r = 4:
     * positions of block b - 1 with the first halves, then block b's with the second;
     * r = 128: block b's), each from the ring when before the chunk, else from the
     * chunk's rows: softmax-over-gates pooling per channel (dsv4_ref_compress_pool), RMSNorm
     * (norm), BF16, rotary of the tail at position b * r, BF16, FP8 simulation of the
     * non-rotary part (group 64), stored as BF16 entry b; ratio 4 also the indexer key
     * (inorm, rotary, BF16, Hadamard, BF16, FP4 simulation per 32).  Every block the
     * entries fall in must be mapped in the block table.
     */
    void (*kv_compress)(struct dsv4_backend *be, const struct dsv4_kv_args *a);
    /* Lightning indexer of a ratio-4 layer: for token t with n = (pos + 1) / 4 visible
     * entries, score_b = sum_h w'_h max(q_h . k_b, 0) over the indexer keys b < n (double
     * sums), sel = top-k of the scores (ties to the lower index) when n > topk, else
     * 0..n-1; nsel[t] = min(n, topk). */
    void (*kv_select)(struct dsv4_backend *be, const struct dsv4_select_args *a);
    /* Sparse attention with sink (dsv4_ref_sparse_attn, P rounded to BF16) of every
     * token over its keys, in this order: the window positions max(0, p - window + 1)..p
     * (ring before the chunk, kv_chunk inside it), then the compressed entries: sel[t]
     * (ratio 4) or all (p + 1) / r visible ones in order (other ratios). */
    void (*attn)(struct dsv4_backend *be, const struct dsv4_attn_args *a);
    /* Writes the tokens' window kv and compressor inputs (cg with ape, after kv_compress)
     * into the rings, for the positions a later call can still read: p >= end - win_rows
     * (window), p >= end - the layer's cmp_rows (compressors), end = the chunk's last
     * position + 1. */
    void (*kv_store)(struct dsv4_backend *be, const struct dsv4_kv_args *a);

    /* ---- sampling helpers */
    /* ids[r] = argmax of logits [rows, V] row r (ties to the lowest id; NaN never wins). */
    void (*argmax)(struct dsv4_backend *be, const struct dsv4_tensor *logits, int32_t *ids);
};

/* The backends.  threads: worker threads of the CPU backend (>= 1; ignored by ref). */
int dsv4_backend_ref_create(struct dsv4_backend **out);
int dsv4_backend_cpu_create(int threads, struct dsv4_backend **out);
/*
 * "devsim": the CPU backend behind a device backend's contract (its memory counts as GPU 0's,
 * so the engine uploads the weights, stages collectives through host buffers and shares
 * weights through alloc_shared, here memfd), for testing those paths without a GPU.
 */
int dsv4_backend_devsim_create(int threads, struct dsv4_backend **out);
/* By name: "ref", "cpu", "devsim" (or "cuda", "cuda:N" where built).  DSV4_EINVAL for an
 * unknown name. */
int dsv4_backend_create(const char *name, int threads, struct dsv4_backend **out);
void dsv4_backend_destroy(struct dsv4_backend *be);

/* Tensor view builders for op arguments (compound literals: valid in the enclosing block). */
#define DSV4_T1(p, dt, a) \
    (&(struct dsv4_tensor){.data = (void *)(p), .dtype = (dt), .ndim = 1, .shape = {(a)}})
#define DSV4_T2(p, dt, a, b) \
    (&(struct dsv4_tensor){.data = (void *)(p), .dtype = (dt), .ndim = 2, .shape = {(a), (b)}})
#define DSV4_T3(p, dt, a, b, c) \
    (&(struct dsv4_tensor){.data = (void *)(p), .dtype = (dt), .ndim = 3, .shape = {(a), (b), (c)}})
/* [a, b] with row stride ld elements. */
#define DSV4_T2S(p, dt, a, b, ld)               \
    (&(struct dsv4_tensor){.data = (void *)(p), \
                           .dtype = (dt),       \
                           .ndim = 2,           \
                           .shape = {(a), (b)}, \
                           .stride = {(ld), 1}})
#define DSV4_F2(p, a, b)    DSV4_T2(p, DSV4_DTYPE_F32, a, b)
#define DSV4_F3(p, a, b, c) DSV4_T3(p, DSV4_DTYPE_F32, a, b, c)

#ifdef __cplusplus
}
#endif

#endif
