/*
 * model_int.h - the weights of one rank as the forward pass reads them
 * (private to engine/model/; see model.h for the public handle).
 *
 * Matrices are struct dsv4_lin views (kernels/backend.h) into the mmapped
 * checkpoint in their stored formats; small vectors are FP32 / int32 copies
 * owned by the model.  A device copy (upload.c) has the same struct with
 * every weight pointer in device memory.  Rank ranges follow the contract's splits
 * (engine/io/contract.h, DESIGN.md §2).
 */
#ifndef DSV4_MODEL_INT_H
#define DSV4_MODEL_INT_H

#include "engine/io/contract.h"
#include "engine/model/model.h"
#include "kernels/backend.h"

struct dsv4_layer_w {
    int index; /* 0..L-1 trunk, L.. MTP */
    int ratio; /* 0, 4, 128 */
    bool hash; /* routes by tid2eid */
    struct dsv4_hc_params hc_attn, hc_ffn;
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
    struct dsv4_ffn_w shared;
    struct dsv4_ffn_w *experts; /* local experts e0..e1-1, index e - e0 */
};

struct dsv4_model {
    struct dsv4_config cfg;
    struct dsv4_contract *con; /* the tensor table the binding reads shapes and splits from */
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
    struct dsv4_hc_params hc_head;
    int n_layers; /* trunk + MTP blocks */
    struct dsv4_layer_w *layers;
    /* MTP block(s): layers[L + i] plus */
    struct dsv4_lin e_proj, h_proj;
    float *enorm, *hnorm, *mtp_norm;
    struct dsv4_hc_params mtp_hc_head;
    bool has_mtp;
    uint64_t weight_bytes; /* bytes of this rank's views */
    void **owned;          /* small copies to free */
    int n_owned, cap_owned;
    /* where the weights live (upload.c): DSV4_DEVICE_HOST for a bound model; a device copy
     * made by dsv4_model_upload borrows `host` and owns dev_arena (freed through dev_be) */
    int device;
    const struct dsv4_model *host;
    struct dsv4_backend *dev_be;
    void *dev_arena;
    uint64_t dev_bytes; /* the arena's size */
    bool dev_shared;    /* from alloc_shared / import_shared (freed with free_shared) */
};

/* Frees a device copy's arena (upload.c; dsv4_model_close calls it). */
void dsv4_model_free_device(struct dsv4_model *dm);

#endif
