/*
 * contract.c - the model contract (see contract.h): a static table of every
 * tensor kind of a DeepSeek-V4 checkpoint, with shapes written as symbols of
 * the config, expanded per layer and per expert format; name lookup through
 * an open-addressing hash; binding of a checkpoint's tensors with a complete
 * problem list.
 *
 * Invariants: spec order = inventory order; every canonical and alternative
 * name is in the hash exactly once; a binding slot is set only when name,
 * dtype and shape all match.
 */
#include "dsv4-build.h"
#include "engine/io/contract.h"
#include "base/dsv4.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Shape symbols: dimensions as functions of the config and the layer's ratio. */
enum sym {
    S_NONE = 0, /* no such dimension */
    S_ONE,      /* 1 */
    S_THREE,    /* 3: hc scales (pre, post, comb) */
    S_D,        /* hidden_size */
    S_VOCAB,    /* vocab_size */
    S_HC,       /* hc_mult */
    S_HCD,      /* hc_mult * D */
    S_MIXHC,    /* (2 + hc_mult) * hc_mult */
    S_H,        /* attention heads */
    S_RQ,       /* q_lora_rank */
    S_HD,       /* H * head_dim */
    S_HEAD,     /* head_dim */
    S_GRO,      /* o_groups * o_lora_rank */
    S_GIN,      /* (H / o_groups) * head_dim: one group's input */
    S_G,        /* o_groups */
    S_I,        /* moe_intermediate_size */
    S_ISH,      /* moe_intermediate_size * n_shared_experts */
    S_ISH128,   /* 128-row blocks of the shared expert */
    S_E,        /* n_routed_experts */
    S_TOPK,     /* num_experts_per_tok */
    S_IDXQ,     /* index_n_heads * index_head_dim */
    S_IDXH,     /* index_n_heads */
    S_IDXD,     /* index_head_dim */
    S_R,        /* the layer's compression ratio */
    S_CKV,      /* coff * head_dim (coff = 2 for ratio 4, else 1) */
    S_CIDX      /* coff * index_head_dim */
};

enum kind {
    K_PLAIN = 0, /* one tensor, dtype as given */
    K_FP8,       /* FP8 linear: .weight E4M3 [out, in] + .scale E8M0 [out/128, in/128] */
    K_EXPERT     /* routed-expert linear, per expert, layout by expert format */
};

/* When a layer row is present. */
enum cond {
    C_ALL = 0,
    C_COMP,  /* ratio > 0 */
    C_IDX,   /* ratio == 4 */
    C_HASH,  /* hash-routed layer */
    C_NOHASH /* score-routed layer */
};

struct row {
    const char *name; /* relative to the layer prefix; for K_FP8/K_EXPERT the module */
    enum kind kind;
    enum cond cond;
    enum dsv4_dtype dtype; /* K_PLAIN only */
    enum sym d0, d1;       /* shape ([out, in] for linears); d1 S_NONE for 1-D */
    enum dsv4_cat part;
    enum dsv4_split split;
    enum sym units; /* split units */
};

#define REP DSV4_SPLIT_REPLICATED, S_NONE

static const struct row global_rows[] = {
        {"embed.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_VOCAB, S_D, DSV4_CAT_EMBED,
         DSV4_SPLIT_VOCAB, S_VOCAB},
        {"head.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_VOCAB, S_D, DSV4_CAT_EMBED,
         DSV4_SPLIT_VOCAB, S_VOCAB},
        {"norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_head_fn", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_HC, S_HCD, DSV4_CAT_OTHER, REP},
        {"hc_head_base", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_HC, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_head_scale", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_ONE, S_NONE, DSV4_CAT_OTHER, REP},
};

static const struct row layer_rows[] = {
        {"hc_attn_fn", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_MIXHC, S_HCD, DSV4_CAT_OTHER, REP},
        {"hc_attn_base", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_MIXHC, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_attn_scale", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_THREE, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_ffn_fn", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_MIXHC, S_HCD, DSV4_CAT_OTHER, REP},
        {"hc_ffn_base", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_MIXHC, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_ffn_scale", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_THREE, S_NONE, DSV4_CAT_OTHER, REP},
        {"attn_norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"ffn_norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"attn.attn_sink", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_H, S_NONE, DSV4_CAT_ATTN,
         DSV4_SPLIT_ROWS, S_G},
        {"attn.wq_a", K_FP8, C_ALL, 0, S_RQ, S_D, DSV4_CAT_ATTN, REP},
        {"attn.q_norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_RQ, S_NONE, DSV4_CAT_ATTN, REP},
        {"attn.wq_b", K_FP8, C_ALL, 0, S_HD, S_RQ, DSV4_CAT_ATTN, DSV4_SPLIT_ROWS, S_G},
        {"attn.wkv", K_FP8, C_ALL, 0, S_HEAD, S_D, DSV4_CAT_ATTN, REP},
        {"attn.kv_norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_HEAD, S_NONE, DSV4_CAT_ATTN,
         REP},
        {"attn.wo_a", K_FP8, C_ALL, 0, S_GRO, S_GIN, DSV4_CAT_ATTN, DSV4_SPLIT_ROWS, S_G},
        {"attn.wo_b", K_FP8, C_ALL, 0, S_D, S_GRO, DSV4_CAT_ATTN, DSV4_SPLIT_COLS, S_G},
        {"attn.compressor.ape", K_PLAIN, C_COMP, DSV4_DTYPE_F32, S_R, S_CKV, DSV4_CAT_ATTN, REP},
        {"attn.compressor.wkv.weight", K_PLAIN, C_COMP, DSV4_DTYPE_BF16, S_CKV, S_D, DSV4_CAT_ATTN,
         REP},
        {"attn.compressor.wgate.weight", K_PLAIN, C_COMP, DSV4_DTYPE_BF16, S_CKV, S_D,
         DSV4_CAT_ATTN, REP},
        {"attn.compressor.norm.weight", K_PLAIN, C_COMP, DSV4_DTYPE_BF16, S_HEAD, S_NONE,
         DSV4_CAT_ATTN, REP},
        {"attn.indexer.wq_b", K_FP8, C_IDX, 0, S_IDXQ, S_RQ, DSV4_CAT_ATTN, DSV4_SPLIT_ROWS,
         S_IDXH},
        {"attn.indexer.weights_proj.weight", K_PLAIN, C_IDX, DSV4_DTYPE_BF16, S_IDXH, S_D,
         DSV4_CAT_ATTN, DSV4_SPLIT_ROWS, S_IDXH},
        {"attn.indexer.compressor.ape", K_PLAIN, C_IDX, DSV4_DTYPE_F32, S_R, S_CIDX, DSV4_CAT_ATTN,
         REP},
        {"attn.indexer.compressor.wkv.weight", K_PLAIN, C_IDX, DSV4_DTYPE_BF16, S_CIDX, S_D,
         DSV4_CAT_ATTN, REP},
        {"attn.indexer.compressor.wgate.weight", K_PLAIN, C_IDX, DSV4_DTYPE_BF16, S_CIDX, S_D,
         DSV4_CAT_ATTN, REP},
        {"attn.indexer.compressor.norm.weight", K_PLAIN, C_IDX, DSV4_DTYPE_BF16, S_IDXD, S_NONE,
         DSV4_CAT_ATTN, REP},
        {"ffn.gate.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_E, S_D, DSV4_CAT_OTHER, REP},
        {"ffn.gate.tid2eid", K_PLAIN, C_HASH, DSV4_DTYPE_I64, S_VOCAB, S_TOPK, DSV4_CAT_OTHER, REP},
        {"ffn.gate.bias", K_PLAIN, C_NOHASH, DSV4_DTYPE_F32, S_E, S_NONE, DSV4_CAT_OTHER, REP},
        {"ffn.shared_experts.w1", K_FP8, C_ALL, 0, S_ISH, S_D, DSV4_CAT_SHARED, REP},
        {"ffn.shared_experts.w2", K_FP8, C_ALL, 0, S_D, S_ISH, DSV4_CAT_SHARED, REP},
        {"ffn.shared_experts.w3", K_FP8, C_ALL, 0, S_ISH, S_D, DSV4_CAT_SHARED, REP},
        {"ffn.experts.*.w1", K_EXPERT, C_ALL, 0, S_I, S_D, DSV4_CAT_ROUTED, DSV4_SPLIT_EXPERT, S_E},
        {"ffn.experts.*.w2", K_EXPERT, C_ALL, 0, S_D, S_I, DSV4_CAT_ROUTED, DSV4_SPLIT_EXPERT, S_E},
        {"ffn.experts.*.w3", K_EXPERT, C_ALL, 0, S_I, S_D, DSV4_CAT_ROUTED, DSV4_SPLIT_EXPERT, S_E},
};

/* After the layer rows, in each MTP block only. */
static const struct row mtp_rows[] = {
        {"e_proj", K_FP8, C_ALL, 0, S_D, S_D, DSV4_CAT_OTHER, REP},
        {"h_proj", K_FP8, C_ALL, 0, S_D, S_D, DSV4_CAT_OTHER, REP},
        {"enorm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"hnorm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"norm.weight", K_PLAIN, C_ALL, DSV4_DTYPE_BF16, S_D, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_head_fn", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_HC, S_HCD, DSV4_CAT_OTHER, REP},
        {"hc_head_base", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_HC, S_NONE, DSV4_CAT_OTHER, REP},
        {"hc_head_scale", K_PLAIN, C_ALL, DSV4_DTYPE_F32, S_ONE, S_NONE, DSV4_CAT_OTHER, REP},
};

/* Refused above this total (2^60 = 1 EiB; V4-Pro is 2^39.7): keeps every
 * byte and parameter sum of the contract and the plan far from wrapping. */
#define MAX_TOTAL_BYTES (UINT64_C(1) << 60)

struct hslot {
    const char *key; /* points into a spec's name or alt; NULL = empty */
    uint32_t spec;
};

struct dsv4_contract {
    struct dsv4_config cfg;
    struct dsv4_tspec *specs;
    size_t n, cap;
    struct hslot *hash;
    size_t hcap; /* power of two */
    int n_layers;
    enum dsv4_expert_fmt *layer_fmt; /* per layer (trunk + MTP) */
    uint64_t tensor_count, total_bytes;
};

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static int64_t sym_value(const struct dsv4_config *c, enum sym s, int ratio)
{
    int coff = ratio == 4 ? 2 : 1;

    switch (s) {
    case S_NONE:
        return 0;
    case S_ONE:
        return 1;
    case S_THREE:
        return 3;
    case S_D:
        return c->hidden_size;
    case S_VOCAB:
        return c->vocab_size;
    case S_HC:
        return c->hc_mult;
    case S_HCD:
        return (int64_t)c->hc_mult * c->hidden_size;
    case S_MIXHC:
        return (int64_t)(2 + c->hc_mult) * c->hc_mult;
    case S_H:
        return c->num_attention_heads;
    case S_RQ:
        return c->q_lora_rank;
    case S_HD:
        return (int64_t)c->num_attention_heads * c->head_dim;
    case S_HEAD:
        return c->head_dim;
    case S_GRO:
        return (int64_t)c->o_groups * c->o_lora_rank;
    case S_GIN:
        return (int64_t)(c->num_attention_heads / c->o_groups) * c->head_dim;
    case S_G:
        return c->o_groups;
    case S_I:
        return c->moe_intermediate_size;
    case S_ISH:
        return (int64_t)c->moe_intermediate_size * c->n_shared_experts;
    case S_ISH128:
        return ceil_div((int64_t)c->moe_intermediate_size * c->n_shared_experts, 128);
    case S_E:
        return c->n_routed_experts;
    case S_TOPK:
        return c->num_experts_per_tok;
    case S_IDXQ:
        return (int64_t)c->index_n_heads * c->index_head_dim;
    case S_IDXH:
        return c->index_n_heads;
    case S_IDXD:
        return c->index_head_dim;
    case S_R:
        return ratio;
    case S_CKV:
        return (int64_t)coff * c->head_dim;
    case S_CIDX:
        return (int64_t)coff * c->index_head_dim;
    }
    return 0;
}

static int push(struct dsv4_contract *c, struct dsv4_tspec **out)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        struct dsv4_tspec *p = realloc(c->specs, cap * sizeof(*p));

        if (!p)
            return dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        c->specs = p;
        c->cap = cap;
    }
    *out = &c->specs[c->n++];
    memset(*out, 0, sizeof(**out));
    return 0;
}

/* Sets name = prefix + mid + suffix; fails on overflow (never for sane configs). */
static int set_name(char *dst, const char *prefix, const char *mid, const char *suffix)
{
    int k = snprintf(dst, DSV4_CONTRACT_NAME_MAX, "%s%s%s", prefix, mid, suffix);

    if (k < 0 || k >= DSV4_CONTRACT_NAME_MAX)
        return dsv4_error(DSV4_ERANGE, "contract: tensor name too long: %s%s%s", prefix, mid,
                          suffix);
    return 0;
}

static void finish(struct dsv4_tspec *s, const struct row *r, const struct dsv4_config *cfg,
                   int layer, int ratio, bool mtp)
{
    int64_t numel = 1;

    for (int i = 0; i < s->ndim; i++)
        numel *= s->shape[i];
    s->layer = layer;
    s->cat = mtp ? DSV4_CAT_MTP : r->part;
    s->part = r->part;
    s->split = r->split;
    s->split_units = sym_value(cfg, r->units, ratio);
    if (s->dtypes == 0)
        s->dtypes = 1u << s->dtype;
    s->nbytes = (uint64_t)numel * dsv4_dtype_size(s->dtype);
    if (s->role == DSV4_ROLE_WEIGHT && s->logical_cols > s->shape[1])
        s->params = (uint64_t)numel * 2; /* packed FP4 */
    else if (s->role == DSV4_ROLE_PLAIN || s->role == DSV4_ROLE_WEIGHT)
        s->params = (uint64_t)numel;
    else
        s->params = 0;
}

static void shape2(struct dsv4_tspec *s, int64_t d0, int64_t d1)
{
    s->ndim = d1 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1;
}

static int add_row(struct dsv4_contract *c, const struct row *r, const char *prefix, int layer,
                   int ratio, bool mtp, enum dsv4_expert_fmt efmt)
{
    const struct dsv4_config *cfg = &c->cfg;
    int64_t out = sym_value(cfg, r->d0, ratio), in = sym_value(cfg, r->d1, ratio);
    struct dsv4_tspec *s;
    int rc;

    if (r->kind == K_PLAIN) {
        if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, "")))
            return rc;
        s->dtype = r->dtype;
        shape2(s, out, in);
        s->role = DSV4_ROLE_PLAIN;
        finish(s, r, cfg, layer, ratio, mtp);
        return 0;
    }
    if (r->kind == K_FP8) {
        if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, ".weight")))
            return rc;
        s->dtype = DSV4_DTYPE_F8_E4M3;
        shape2(s, out, in);
        s->role = DSV4_ROLE_WEIGHT;
        s->logical_cols = in;
        finish(s, r, cfg, layer, ratio, mtp);
        if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, ".scale")))
            return rc;
        s->dtype = DSV4_DTYPE_F8_E8M0;
        shape2(s, ceil_div(out, 128), ceil_div(in, 128));
        s->role = DSV4_ROLE_SCALE;
        finish(s, r, cfg, layer, ratio, mtp);
        return 0;
    }

    /* K_EXPERT */
    int n_e = cfg->n_routed_experts;
    uint32_t packed = (1u << DSV4_DTYPE_I8) | (1u << DSV4_DTYPE_U8);

    if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, ".weight")))
        return rc;
    s->n_experts = n_e;
    s->role = DSV4_ROLE_WEIGHT;
    s->logical_cols = in;
    s->expert_fmt = efmt;
    if (efmt == DSV4_EXPERT_FP8) {
        s->dtype = DSV4_DTYPE_F8_E4M3;
        shape2(s, out, in);
    } else {
        s->dtype = efmt == DSV4_EXPERT_NVFP4 ? DSV4_DTYPE_U8 : DSV4_DTYPE_I8;
        s->dtypes = packed;
        shape2(s, out, in / 2);
    }
    finish(s, r, cfg, layer, ratio, mtp);

    if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, ".scale")))
        return rc;
    s->n_experts = n_e;
    s->role = DSV4_ROLE_SCALE;
    s->expert_fmt = efmt;
    if (efmt == DSV4_EXPERT_FP8) {
        s->dtype = DSV4_DTYPE_F32;
        shape2(s, ceil_div(out, 128), ceil_div(in, 128));
    } else if (efmt == DSV4_EXPERT_NVFP4) {
        if ((rc = set_name(s->alt, prefix, r->name, ".weight_scale")))
            return rc;
        s->dtype = DSV4_DTYPE_F8_E4M3;
        shape2(s, out, in / 16);
    } else {
        s->dtype = DSV4_DTYPE_F8_E8M0;
        shape2(s, out, in / 32);
    }
    finish(s, r, cfg, layer, ratio, mtp);
    if (efmt != DSV4_EXPERT_NVFP4)
        return 0;

    static const char *const sidecars[2] = {".weight_scale_2", ".input_scale"};
    for (int k = 0; k < 2; k++) {
        if ((rc = push(c, &s)) || (rc = set_name(s->name, prefix, r->name, sidecars[k])))
            return rc;
        s->n_experts = n_e;
        s->role = k == 0 ? DSV4_ROLE_SCALE2 : DSV4_ROLE_INPUT_SCALE;
        s->expert_fmt = efmt;
        s->dtype = DSV4_DTYPE_F32;
        shape2(s, 1, 0);
        s->scalar_any = true;
        finish(s, r, cfg, layer, ratio, mtp);
    }
    return 0;
}

static bool cond_holds(enum cond cd, int ratio, bool hash)
{
    switch (cd) {
    case C_ALL:
        return true;
    case C_COMP:
        return ratio > 0;
    case C_IDX:
        return ratio == 4;
    case C_HASH:
        return hash;
    case C_NOHASH:
        return !hash;
    }
    return false;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int hash_put(struct dsv4_contract *c, const char *key, uint32_t spec)
{
    size_t i = hash_str(key) & (c->hcap - 1);

    while (c->hash[i].key) {
        if (!strcmp(c->hash[i].key, key))
            return dsv4_error(DSV4_EINTERNAL, "contract: duplicate tensor name %s", key);
        i = (i + 1) & (c->hcap - 1);
    }
    c->hash[i].key = key;
    c->hash[i].spec = spec;
    return 0;
}

static int hash_get(const struct dsv4_contract *c, const char *key, uint32_t *spec)
{
    size_t i = hash_str(key) & (c->hcap - 1);

    while (c->hash[i].key) {
        if (!strcmp(c->hash[i].key, key)) {
            *spec = c->hash[i].spec;
            return 0;
        }
        i = (i + 1) & (c->hcap - 1);
    }
    return DSV4_ENOENT;
}

int dsv4_contract_build(const struct dsv4_config *cfg, int mtp_expert_fmt,
                        struct dsv4_contract **out)
{
    struct dsv4_contract *c = NULL;
    int L = cfg->num_hidden_layers, M = cfg->num_nextn_predict_layers;
    int rc = 0;

    *out = NULL;
    if (L <= 0 || M < 0 || L + M > DSV4_MAX_LAYERS)
        return dsv4_error(DSV4_EINVAL, "contract: bad layer count %d + %d MTP", L, M);
    if (cfg->first_k_dense_replace > 0)
        return dsv4_error(DSV4_ENOTSUP,
                          "contract: first_k_dense_replace = %d (dense layers) is not V4",
                          cfg->first_k_dense_replace);
    if (cfg->o_groups <= 0 || cfg->num_attention_heads % cfg->o_groups)
        return dsv4_error(DSV4_EINVAL, "contract: %d heads not divisible into %d output groups",
                          cfg->num_attention_heads, cfg->o_groups);
    if (mtp_expert_fmt < -1 || mtp_expert_fmt > DSV4_EXPERT_FP8)
        return dsv4_error(DSV4_EINVAL, "contract: bad MTP expert format %d", mtp_expert_fmt);
    for (int l = 0; l < L + M; l++) {
        int r = dsv4_config_ratio(cfg, l);
        if (r != 0 && r != 4 && r != 128)
            return dsv4_error(DSV4_ENOTSUP, "contract: layer %d has compression ratio %d", l, r);
    }

    c = calloc(1, sizeof(*c));
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "contract: out of memory");
    c->cfg = *cfg;
    c->n_layers = L + M;
    c->layer_fmt = calloc((size_t)(L + M), sizeof(*c->layer_fmt));
    if (!c->layer_fmt) {
        rc = dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        goto fail;
    }

    for (size_t i = 0; i < DSV4_ARRAY_LEN(global_rows); i++)
        if ((rc = add_row(c, &global_rows[i], "", -1, 0, false, cfg->expert_fmt)))
            goto fail;
    for (int l = 0; l < L + M; l++) {
        bool mtp = l >= L;
        int ratio = dsv4_config_ratio(cfg, l);
        bool hash = dsv4_config_is_hash_layer(cfg, l);
        enum dsv4_expert_fmt efmt = cfg->expert_fmt;
        char prefix[32];

        if (mtp) {
            if (mtp_expert_fmt >= 0)
                efmt = (enum dsv4_expert_fmt)mtp_expert_fmt;
            else if (efmt == DSV4_EXPERT_NVFP4)
                efmt = DSV4_EXPERT_MXFP4;
            snprintf(prefix, sizeof(prefix), "mtp.%d.", l - L);
        } else {
            snprintf(prefix, sizeof(prefix), "layers.%d.", l);
        }
        c->layer_fmt[l] = efmt;
        /* the packed FP4 shapes ([out, in/2], scales [out, in/g]) need whole
         * blocks; checked per layer since MTP experts may be MXFP4 (g = 32)
         * under an NVFP4 trunk (g = 16) */
        if (efmt != DSV4_EXPERT_FP8) {
            int g = efmt == DSV4_EXPERT_MXFP4 ? 32 : 16;
            if (cfg->hidden_size % g || cfg->moe_intermediate_size % g) {
                rc = dsv4_error(DSV4_EINVAL,
                                "contract: %s experts of %s need hidden_size (%d) and "
                                "moe_intermediate_size (%d) multiples of %d",
                                dsv4_expert_fmt_name(efmt), prefix, cfg->hidden_size,
                                cfg->moe_intermediate_size, g);
                goto fail;
            }
        }
        for (size_t i = 0; i < DSV4_ARRAY_LEN(layer_rows); i++)
            if (cond_holds(layer_rows[i].cond, ratio, hash) &&
                (rc = add_row(c, &layer_rows[i], prefix, l, ratio, mtp, efmt)))
                goto fail;
        if (mtp)
            for (size_t i = 0; i < DSV4_ARRAY_LEN(mtp_rows); i++)
                if ((rc = add_row(c, &mtp_rows[i], prefix, l, ratio, mtp, efmt)))
                    goto fail;
    }

    c->hcap = 1;
    while (c->hcap < 4 * c->n)
        c->hcap <<= 1;
    c->hash = calloc(c->hcap, sizeof(*c->hash));
    if (!c->hash) {
        rc = dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < c->n; i++) {
        struct dsv4_tspec *s = &c->specs[i];
        uint64_t inst = s->n_experts ? (uint64_t)s->n_experts : 1;

        if ((rc = hash_put(c, s->name, (uint32_t)i)))
            goto fail;
        if (s->alt[0] && (rc = hash_put(c, s->alt, (uint32_t)i)))
            goto fail;
        /* a per-instance size fits easily (every dimension is bounded by
         * the config parser), but the sum over 256 layers of 2^16 large
         * experts would wrap: refuse what no machine could hold */
        if (inst * s->nbytes > MAX_TOTAL_BYTES - c->total_bytes) {
            rc = dsv4_error(DSV4_ERANGE,
                            "contract: the model holds more than 2^60 bytes (1 EiB) (at %s)",
                            s->name);
            goto fail;
        }
        c->tensor_count += inst;
        c->total_bytes += inst * s->nbytes;
    }
    *out = c;
    return 0;
fail:
    dsv4_contract_free(c);
    return rc;
}

void dsv4_contract_free(struct dsv4_contract *c)
{
    if (!c)
        return;
    free(c->specs);
    free(c->hash);
    free(c->layer_fmt);
    free(c);
}

const struct dsv4_config *dsv4_contract_config(const struct dsv4_contract *c)
{
    return &c->cfg;
}

size_t dsv4_contract_count(const struct dsv4_contract *c)
{
    return c->n;
}

const struct dsv4_tspec *dsv4_contract_spec(const struct dsv4_contract *c, size_t i)
{
    DSV4_ASSERT(i < c->n);
    return &c->specs[i];
}

uint64_t dsv4_contract_tensor_count(const struct dsv4_contract *c)
{
    return c->tensor_count;
}

uint64_t dsv4_contract_total_bytes(const struct dsv4_contract *c)
{
    return c->total_bytes;
}

enum dsv4_expert_fmt dsv4_contract_expert_fmt(const struct dsv4_contract *c, int layer)
{
    DSV4_ASSERT(layer >= 0 && layer < c->n_layers);
    return c->layer_fmt[layer];
}

/*
 * "a.experts.17.w1.weight" -> template "a.experts.*.w1.weight", expert 17.
 * Returns false when the name has no expert index.
 */
static bool expert_template(const char *name, char *tmpl, size_t len, int *expert)
{
    const char *p = strstr(name, ".experts.");
    const char *d, *q;
    long e = 0;

    if (!p)
        return false;
    d = p + 9;
    for (q = d; *q >= '0' && *q <= '9'; q++) {
        e = e * 10 + (*q - '0');
        if (e > 1000000)
            return false;
    }
    if (q == d || *q != '.' || (q - d > 1 && *d == '0'))
        return false;
    if ((size_t)(d - name) + 1 + strlen(q) + 1 > len)
        return false;
    memcpy(tmpl, name, (size_t)(d - name));
    tmpl[d - name] = '*';
    strcpy(tmpl + (d - name) + 1, q);
    *expert = (int)e;
    return true;
}

int dsv4_contract_lookup(const struct dsv4_contract *c, const char *name, size_t *spec, int *expert)
{
    char tmpl[DSV4_CONTRACT_NAME_MAX + 8];
    uint32_t i;
    int e;

    if (expert_template(name, tmpl, sizeof(tmpl), &e)) {
        if (hash_get(c, tmpl, &i) == 0 && c->specs[i].n_experts > 0 && e < c->specs[i].n_experts) {
            *spec = i;
            *expert = e;
            return 0;
        }
        return DSV4_ENOENT;
    }
    if (hash_get(c, name, &i) == 0 && c->specs[i].n_experts == 0) {
        *spec = i;
        *expert = -1;
        return 0;
    }
    return DSV4_ENOENT;
}

char *dsv4_tspec_name(const struct dsv4_tspec *s, int expert, char *buf, size_t len)
{
    const char *star = s->n_experts ? strchr(s->name, '*') : NULL;

    if (!star) {
        snprintf(buf, len, "%s", s->name);
        return buf;
    }
    snprintf(buf, len, "%.*s%d%s", (int)(star - s->name), s->name, expert, star + 1);
    return buf;
}

int dsv4_contract_write_inventory(const struct dsv4_contract *c, FILE *f)
{
    for (size_t i = 0; i < c->n; i++) {
        const struct dsv4_tspec *s = &c->specs[i];
        char shape[64], name[DSV4_CONTRACT_NAME_MAX + 32];

        dsv4_shape_str(s->shape, s->ndim, shape, sizeof(shape));
        if (s->n_experts) {
            const char *star = strchr(s->name, '*');
            snprintf(name, sizeof(name), "%.*s{0..%d}%s", (int)(star - s->name), s->name,
                     s->n_experts - 1, star + 1);
        } else {
            snprintf(name, sizeof(name), "%s", s->name);
        }
        if (fprintf(f, "%s\t%s\t%s\t%d\n", name, dsv4_dtype_name(s->dtype), shape,
                    s->n_experts ? s->n_experts : 1) < 0)
            return dsv4_error(DSV4_EIO, "contract: cannot write the inventory");
    }
    return 0;
}

void dsv4_contract_split_range(int64_t units, int rank, int nranks, int64_t *begin, int64_t *end)
{
    DSV4_ASSERT(nranks > 0 && rank >= 0 && rank < nranks && units >= 0);
    *begin = units * rank / nranks;
    *end = units * (rank + 1) / nranks;
}

void dsv4_contract_split_range_vocab(int64_t rows, int rank, int nranks, int64_t *begin,
                                     int64_t *end)
{
    DSV4_ASSERT(nranks > 0 && rank >= 0 && rank < nranks && rows >= 0);
    int64_t chunk = (rows + nranks - 1) / nranks;
    *begin = DSV4_MIN(rows, chunk * rank);
    *end = DSV4_MIN(rows, *begin + chunk);
}

/* floor(x * num / den) without overflow for x < 2^63 and num <= den. */
static uint64_t mul_div(uint64_t x, uint64_t num, uint64_t den)
{
    return (uint64_t)((unsigned __int128)x * num / den);
}

uint64_t dsv4_tspec_split_part(const struct dsv4_tspec *s, uint64_t whole, int rank, int nranks)
{
    int64_t b, e;

    if ((s->split != DSV4_SPLIT_ROWS && s->split != DSV4_SPLIT_COLS &&
         s->split != DSV4_SPLIT_VOCAB) ||
        s->split_units <= 0)
        return whole;
    if (s->split == DSV4_SPLIT_VOCAB)
        dsv4_contract_split_range_vocab(s->split_units, rank, nranks, &b, &e);
    else
        dsv4_contract_split_range(s->split_units, rank, nranks, &b, &e);
    return mul_div(whole, (uint64_t)e, (uint64_t)s->split_units) -
           mul_div(whole, (uint64_t)b, (uint64_t)s->split_units);
}

void dsv4_tspec_rank_share(const struct dsv4_tspec *s, int rank, int nranks, uint64_t *bytes,
                           uint64_t *params)
{
    uint64_t inst = s->n_experts ? (uint64_t)s->n_experts : 1;

    if (s->split == DSV4_SPLIT_EXPERT) {
        int64_t b, e;
        dsv4_contract_split_range((int64_t)inst, rank, nranks, &b, &e);
        inst = (uint64_t)(e - b);
    }
    *bytes = inst * dsv4_tspec_split_part(s, s->nbytes, rank, nranks);
    *params = inst * dsv4_tspec_split_part(s, s->params, rank, nranks);
}

const char *dsv4_contract_cat_name(enum dsv4_cat c)
{
    static const char *const names[DSV4_CAT_COUNT] = {
            "attention", "shared_experts", "routed_experts", "embed_head", "mtp", "other"};
    return (int)c >= 0 && c < DSV4_CAT_COUNT ? names[c] : "?";
}

const char *dsv4_contract_split_name(enum dsv4_split s)
{
    switch (s) {
    case DSV4_SPLIT_REPLICATED:
        return "replicated";
    case DSV4_SPLIT_ROWS:
        return "split rows";
    case DSV4_SPLIT_COLS:
        return "split cols";
    case DSV4_SPLIT_EXPERT:
        return "by expert";
    case DSV4_SPLIT_VOCAB:
        return "by vocab";
    }
    return "?";
}

/* ---------------------------------------------------------------- binding */

struct problem {
    enum dsv4_problem kind;
    char *line;
};

struct dsv4_binding {
    struct dsv4_contract *c;
    size_t *slot0;                    /* first slot of each spec */
    const struct dsv4_tensor **slots; /* bound tensors */
    unsigned char *seen;              /* a tensor with this name was offered */
    struct problem *problems;
    size_t n_problems, cap_problems;
    size_t counts[5];
};

static int add_problem(struct dsv4_binding *b, enum dsv4_problem kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int add_problem(struct dsv4_binding *b, enum dsv4_problem kind, const char *fmt, ...)
{
    va_list ap;
    char buf[512];

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (b->n_problems == b->cap_problems) {
        size_t cap = b->cap_problems ? 2 * b->cap_problems : 64;
        struct problem *p = realloc(b->problems, cap * sizeof(*p));
        if (!p)
            return dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        b->problems = p;
        b->cap_problems = cap;
    }
    b->problems[b->n_problems].kind = kind;
    b->problems[b->n_problems].line = strdup(buf);
    if (!b->problems[b->n_problems].line)
        return dsv4_error(DSV4_ENOMEM, "contract: out of memory");
    b->n_problems++;
    b->counts[kind]++;
    return 0;
}

static bool shape_ok(const struct dsv4_tspec *s, const struct dsv4_tensor *t)
{
    if (s->scalar_any && (t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1)))
        return true;
    if (t->ndim != s->ndim)
        return false;
    for (int i = 0; i < s->ndim; i++)
        if (t->shape[i] != s->shape[i])
            return false;
    return true;
}

static void expected_str(const struct dsv4_tspec *s, char *buf, size_t len)
{
    char shape[64];
    size_t k = 0;

    dsv4_shape_str(s->shape, s->ndim, shape, sizeof(shape));
    buf[0] = 0;
    /* k stays below len: a truncated list never moves buf + k past the end */
    for (int d = 1; d < DSV4_DTYPE_COUNT && k + 1 < len; d++)
        if (s->dtypes & (1u << d)) {
            int w = snprintf(buf + k, len - k, "%s%s", k ? "|" : "",
                             dsv4_dtype_name((enum dsv4_dtype)d));
            k = w < 0 ? k : DSV4_MIN(len - 1, k + (size_t)w);
        }
    if (k + 1 < len)
        snprintf(buf + k, len - k, " %s%s", shape, s->scalar_any ? " or []" : "");
}

/* MTP experts of an NVFP4 checkpoint: NVFP4 when the names say so (NVIDIA's exports). */
static int detect_mtp_fmt(const struct dsv4_config *cfg, const struct dsv4_tensor *const *t,
                          size_t n)
{
    if (cfg->expert_fmt != DSV4_EXPERT_NVFP4 || cfg->num_nextn_predict_layers == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *s = t[i]->name;
        if (s && !strncmp(s, "mtp.", 4) && strstr(s, ".experts.") && strstr(s, ".weight_scale_2"))
            return DSV4_EXPERT_NVFP4;
    }
    return -1;
}

int dsv4_bind(const struct dsv4_config *cfg, const struct dsv4_tensor *const *tensors, size_t n,
              struct dsv4_binding **out)
{
    struct dsv4_binding *b;
    size_t total = 0;
    int rc;

    *out = NULL;
    b = calloc(1, sizeof(*b));
    if (!b)
        return dsv4_error(DSV4_ENOMEM, "contract: out of memory");
    if ((rc = dsv4_contract_build(cfg, detect_mtp_fmt(cfg, tensors, n), &b->c)))
        goto fail;
    b->slot0 = calloc(b->c->n + 1, sizeof(*b->slot0));
    if (!b->slot0) {
        rc = dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < b->c->n; i++) {
        b->slot0[i] = total;
        total += b->c->specs[i].n_experts ? (size_t)b->c->specs[i].n_experts : 1;
    }
    b->slot0[b->c->n] = total;
    b->slots = calloc(total ? total : 1, sizeof(*b->slots));
    b->seen = calloc(total ? total : 1, 1);
    if (!b->slots || !b->seen) {
        rc = dsv4_error(DSV4_ENOMEM, "contract: out of memory");
        goto fail;
    }

    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = tensors[i];
        char shape[64], want[128];
        size_t si;
        int e;

        dsv4_shape_str(t->shape, t->ndim, shape, sizeof(shape));
        if (!t->name || dsv4_contract_lookup(b->c, t->name, &si, &e)) {
            if ((rc = add_problem(b, DSV4_PROBLEM_UNEXPECTED, "unexpected tensor %s (%s %s)",
                                  t->name ? t->name : "(unnamed)", dsv4_dtype_name(t->dtype),
                                  shape)))
                goto fail;
            continue;
        }
        const struct dsv4_tspec *s = &b->c->specs[si];
        size_t slot = b->slot0[si] + (e < 0 ? 0 : (size_t)e);

        expected_str(s, want, sizeof(want));
        if (b->seen[slot]) {
            rc = add_problem(b, DSV4_PROBLEM_DUPLICATE,
                             "duplicate tensor %s (another spelling of %s)", t->name, s->name);
        } else if ((unsigned)t->dtype >= DSV4_DTYPE_COUNT || !(s->dtypes & (1u << t->dtype))) {
            rc = add_problem(b, DSV4_PROBLEM_DTYPE, "wrong dtype for %s: %s, expected %s", t->name,
                             dsv4_dtype_name(t->dtype), want);
        } else if (!shape_ok(s, t)) {
            rc = add_problem(b, DSV4_PROBLEM_SHAPE, "wrong shape for %s: %s, expected %s", t->name,
                             shape, want);
        } else {
            b->slots[slot] = t;
        }
        b->seen[slot] = 1;
        if (rc)
            goto fail;
    }
    for (size_t si = 0; si < b->c->n; si++) {
        const struct dsv4_tspec *s = &b->c->specs[si];
        for (size_t k = b->slot0[si]; k < b->slot0[si + 1]; k++) {
            char name[DSV4_CONTRACT_NAME_MAX + 16], want[128];
            if (b->seen[k])
                continue;
            dsv4_tspec_name(s, (int)(k - b->slot0[si]), name, sizeof(name));
            expected_str(s, want, sizeof(want));
            if ((rc = add_problem(b, DSV4_PROBLEM_MISSING, "missing tensor %s (%s)", name, want)))
                goto fail;
        }
    }
    *out = b;
    if (b->n_problems) {
        char msg[1024];
        int k = snprintf(msg, sizeof(msg),
                         "checkpoint does not match the contract (%s experts): %zu missing, "
                         "%zu unexpected, %zu wrong dtype, %zu wrong shape, %zu duplicate",
                         dsv4_expert_fmt_name(cfg->expert_fmt), b->counts[DSV4_PROBLEM_MISSING],
                         b->counts[DSV4_PROBLEM_UNEXPECTED], b->counts[DSV4_PROBLEM_DTYPE],
                         b->counts[DSV4_PROBLEM_SHAPE], b->counts[DSV4_PROBLEM_DUPLICATE]);
        for (size_t i = 0; i < b->n_problems && i < 4 && k > 0 && (size_t)k < sizeof(msg); i++)
            k += snprintf(msg + k, sizeof(msg) - (size_t)k, "; %s", b->problems[i].line);
        return dsv4_error(DSV4_EMISMATCH, "%s", msg);
    }
    return 0;
fail:
    dsv4_binding_free(b);
    return rc;
}

void dsv4_binding_free(struct dsv4_binding *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n_problems; i++)
        free(b->problems[i].line);
    free(b->problems);
    free(b->slots);
    free(b->seen);
    free(b->slot0);
    dsv4_contract_free(b->c);
    free(b);
}

const struct dsv4_contract *dsv4_binding_contract(const struct dsv4_binding *b)
{
    return b->c;
}

size_t dsv4_binding_problem_count(const struct dsv4_binding *b)
{
    return b->n_problems;
}

enum dsv4_problem dsv4_binding_problem(const struct dsv4_binding *b, size_t i, const char **line)
{
    DSV4_ASSERT(i < b->n_problems);
    *line = b->problems[i].line;
    return b->problems[i].kind;
}

const struct dsv4_tensor *dsv4_binding_get(const struct dsv4_binding *b, size_t spec, int expert)
{
    DSV4_ASSERT(spec < b->c->n);
    const struct dsv4_tspec *s = &b->c->specs[spec];
    if (expert < 0 || expert >= (s->n_experts ? s->n_experts : 1))
        return NULL;
    return b->slots[b->slot0[spec] + (size_t)expert];
}

const struct dsv4_tensor *dsv4_binding_find(const struct dsv4_binding *b, const char *name)
{
    size_t si;
    int e;

    if (dsv4_contract_lookup(b->c, name, &si, &e))
        return NULL;
    return dsv4_binding_get(b, si, e < 0 ? 0 : e);
}
