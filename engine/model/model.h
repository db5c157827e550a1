/*
 * model.h - the weights of one rank of a DeepSeek-V4 model, bound from a
 * checkpoint directory in their stored formats (../shared/spec/model.md §2).
 *
 * Rank r of N holds (DESIGN.md §2): attention heads [r*H/N, (r+1)*H/N) of
 * wq_b, attn_sink and the matching wo_a groups; indexer heads of indexer
 * wq_b / weights_proj; routed experts [r*E/N, (r+1)*E/N); vocabulary rows
 * [r*ceil(V/N), ...) of embed and head; everything else (wq_a, wkv, wo_b,
 * compressors, norms, hc_*, router, shared expert) whole.  Matrices are
 * views (struct dsv4_qweight) into the mmapped checkpoint: FP8 E4M3 with
 * E8M0 128x128 block scales, MXFP4, NVFP4 (.scale or .weight_scale,
 * weight_scale_2 / input_scale as [1] or []), FP8 experts, BF16, F32.
 * Nothing large is dequantised.  Small vectors (norm weights, biases, ape,
 * sinks, hc_* scales/bases, tid2eid) are copied into FP32/int32 arrays so
 * the forward pass reads aligned native values; F32 matrices that happen to
 * be misaligned in the file (hc_*_fn) are copied too.
 *
 * Every tensor is checked on binding (presence, dtype, shape, scale layout,
 * tid2eid values < E); a checkpoint that does not match gets DSV4_EFORMAT
 * or DSV4_ENOENT naming the tensor.
 *
 * Ownership: dsv4_model owns its checkpoint handle (unless borrowed) and the
 * small copies; views stay valid until dsv4_model_close().  A model is
 * read-only after open and may be shared by threads.
 */
#ifndef DSV4_MODEL_H
#define DSV4_MODEL_H

#include "engine/io/config.h"
#include "engine/io/safetensors.h"
#include "kernels/linear.h"

#include <stdbool.h>
#include <stdint.h>

/* One linear layer: stored weight view + the activation path the reference uses. */
struct dsv4_lin {
    struct dsv4_qweight w;
    enum dsv4_act act;
};

struct dsv4_expert_w {
    struct dsv4_lin w1, w2, w3; /* gate [I, D], down [D, I], up [I, D] */
};

struct dsv4_hc_w {
    const float *fn; /* [(2+hc)*hc, hc*D] or [hc, hc*D] for heads */
    float scale[3];
    float base[(2 + 16) * 16];
};

struct dsv4_layer_w {
    int index; /* 0..L-1 trunk, L.. MTP */
    int ratio; /* 0, 4, 128 */
    bool hash; /* routes by tid2eid */
    struct dsv4_hc_w hc_attn, hc_ffn;
    float *attn_norm, *ffn_norm; /* [D] */
    /* attention (local heads h0..h0+nh) */
    struct dsv4_lin wq_a, wq_b, wkv, wo_a, wo_b; /* wq_b / wo_a: local rows */
    float *q_norm, *kv_norm, *sink;              /* [Rq], [512], [nh local] */
    /* compressor (ratio > 0) */
    struct dsv4_lin c_wkv, c_wgate; /* BF16, F32 act: [coff*512, D] */
    float *c_ape;                   /* [ratio, coff*512] */
    float *c_norm;                  /* [512] */
    /* indexer (ratio == 4) */
    struct dsv4_lin i_wq_b, i_wproj; /* local indexer heads */
    struct dsv4_lin ic_wkv, ic_wgate;
    float *ic_ape, *ic_norm;
    /* MoE */
    struct dsv4_lin gate; /* [E, D], F32 act */
    float *gate_bias;     /* [E] or NULL on hash layers */
    int32_t *tid2eid;     /* [V, k] or NULL */
    struct dsv4_expert_w shared;
    struct dsv4_expert_w *experts; /* local experts e0..e1-1, index e - e0 */
};

struct dsv4_model {
    struct dsv4_config cfg;
    struct dsv4_ckpt *ckpt;
    bool own_ckpt;
    int rank, nranks;
    /* local ranges */
    int h0, nh;            /* attention heads */
    int g0, ng;            /* wo_a groups */
    int ih0, inh;          /* indexer heads */
    int e0, e1;            /* routed experts */
    int64_t v0, nv;        /* vocabulary rows [v0, v0+nv); chunk = ceil(V/N) */
    int64_t vchunk;        /* rows per rank chunk (padded all-gather unit) */
    const uint16_t *embed; /* BF16 rows v0.. of embed.weight, [nv, D] */
    struct dsv4_lin head;  /* local rows, F32 act */
    float *norm;           /* [D] */
    struct dsv4_hc_w hc_head;
    int n_layers; /* trunk + MTP blocks */
    struct dsv4_layer_w *layers;
    /* MTP block(s): layers[L + i] plus */
    struct dsv4_lin e_proj, h_proj;
    float *enorm, *hnorm, *mtp_norm;
    struct dsv4_hc_w mtp_hc_head;
    bool has_mtp;
    uint64_t weight_bytes; /* bytes of this rank's views */
    void **owned;          /* small copies to free */
    int n_owned, cap_owned;
};

/*
 * Opens config.json + the checkpoint in `dir` and binds rank `rank` of `nranks`.
 * Fails (DSV4_ENOTSUP) when the split does not divide a dimension the formats need
 * aligned (heads, groups or FP8 row blocks).
 */
int dsv4_model_open(const char *dir, int rank, int nranks, struct dsv4_model **out);
/* The same over an already open checkpoint (borrowed; must outlive the model). */
int dsv4_model_bind(struct dsv4_ckpt *ckpt, const struct dsv4_config *cfg, int rank, int nranks,
                    struct dsv4_model **out);
void dsv4_model_close(struct dsv4_model *m);

/* Bytes of weights one decode token of batch 1 reads on this rank (top-k experts
 * counted at their average size, MTP excluded): the roofline numerator. */
uint64_t dsv4_model_decode_bytes(const struct dsv4_model *m);

#endif
