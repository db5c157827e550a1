/*
 * config.h - the DeepSeek-V4 model configuration (HF config.json) and the
 * checkpoint's quantization description.
 *
 * Every key of ../shared/spec/model.md §1.1 is parsed; absent keys take the
 * defaults stated there (no group-limited routing, every layer MoE, nope =
 * head_dim - qk_rope_head_dim, ...).  compress_ratios has one entry per trunk
 * layer plus one per MTP block (last entries); when it is shorter, the MTP
 * entries default to 0 (window-only).  The parsed config is validated
 * (positive sizes, divisibility the network needs) before it is returned.
 */
#ifndef DSV4_CONFIG_H
#define DSV4_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSV4_MAX_LAYERS 256

/* How routed experts are stored. */
enum dsv4_expert_fmt {
    DSV4_EXPERT_MXFP4 = 0, /* upstream: I8 packed E2M1 + E8M0 .scale per 32 */
    DSV4_EXPERT_NVFP4 = 1, /* artifact: U8/I8 packed E2M1 + E4M3 per 16 + F32 global */
    DSV4_EXPERT_FP8 = 2    /* base models: E4M3 + scales per 128x128 block */
};

struct dsv4_config {
    /* sizes */
    int vocab_size;
    int hidden_size;           /* D */
    int num_hidden_layers;     /* L, MTP not included */
    int num_attention_heads;   /* H */
    int num_key_value_heads;   /* 1 */
    int head_dim;              /* 512 */
    int qk_rope_head_dim;      /* 64 */
    int qk_nope_head_dim;      /* derived: head_dim - qk_rope_head_dim */
    int q_lora_rank;           /* R_q */
    int o_groups;              /* G */
    int o_lora_rank;           /* R_o */
    int moe_intermediate_size; /* I */
    int n_routed_experts;      /* E */
    int n_shared_experts;
    int num_experts_per_tok; /* top-k */
    int num_hash_layers;
    int num_nextn_predict_layers; /* MTP blocks */
    int first_k_dense_replace;    /* default 0 */
    int n_group, topk_group;      /* default 0: no group-limited routing */
    int index_n_heads;
    int index_head_dim;
    int index_topk;
    int sliding_window;
    int hc_mult;
    int hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    int bos_token_id, eos_token_id;
    /* per layer: trunk layers then MTP blocks */
    int n_compress_ratios; /* num_hidden_layers + num_nextn_predict_layers */
    int compress_ratios[DSV4_MAX_LAYERS];
    /* numerics */
    double rms_norm_eps;
    double hc_eps;
    double rope_theta;
    double compress_rope_theta;
    double routed_scaling_factor;
    double swiglu_limit;
    bool norm_topk_prob;
    bool tie_word_embeddings;
    bool attention_bias;
    char hidden_act[16];   /* "silu" */
    char scoring_func[32]; /* "sqrtsoftplus" (also "softmax", "sigmoid") */
    char topk_method[32];  /* "noaux_tc" */
    char model_type[32];   /* "deepseek_v4" */
    /* rope_scaling (YaRN); has_yarn false when absent */
    bool has_yarn;
    double yarn_factor;
    double yarn_beta_fast;
    double yarn_beta_slow;
    int64_t yarn_original_max_position;
    /* quantization_config */
    enum dsv4_expert_fmt expert_fmt; /* from expert_dtype + moe_quant_algo */
    char quant_method[16];           /* "fp8" */
    char fmt[16];                    /* "e4m3" */
    char scale_fmt[16];              /* "ue8m0" */
    char activation_scheme[16];      /* "dynamic" */
    int weight_block_size[2];        /* 128, 128 */
    char moe_quant_algo[16];         /* "" or "NVFP4" */
};

/* Parses config.json text (`len` bytes) into *cfg and validates it. */
int dsv4_config_parse(const char *json, size_t len, struct dsv4_config *cfg);
/* Reads and parses a file. */
int dsv4_config_load(const char *path, struct dsv4_config *cfg);
/* Checks sizes and divisibility; called by parse. */
int dsv4_config_validate(const struct dsv4_config *cfg);
/* Number of layers with weights: trunk + MTP blocks. */
int dsv4_config_total_layers(const struct dsv4_config *cfg);
/* Compression ratio of layer l (trunk 0..L-1, MTP L..L+M-1). */
int dsv4_config_ratio(const struct dsv4_config *cfg, int layer);
/* Whether layer l routes by token-id hash (l < num_hash_layers, never MTP). */
bool dsv4_config_is_hash_layer(const struct dsv4_config *cfg, int layer);
const char *dsv4_expert_fmt_name(enum dsv4_expert_fmt f);

/*
 * Serialises a config as config.json text (malloc'ed, caller frees), with the
 * key order and number spelling of the upstream file (the real V4 configs
 * come out byte for byte); used by mkmodel and convert.  parse(to_json(c))
 * gives c back.  Returns NULL (message recorded) when c does not validate
 * or memory runs out.  The expert format is written as expert_dtype plus,
 * for NVFP4, quantization_config.moe_quant_algo, so an NVFP4 config must
 * carry moe_quant_algo "NVFP4" (validate checks both agree).
 */
char *dsv4_config_to_json(const struct dsv4_config *cfg);

#endif
