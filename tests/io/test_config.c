/*
 * test_config.c - config.json: every field of the real V4-Pro and V4-Flash
 * configs, byte-exact re-serialisation, defaults of absent keys, expert
 * formats (MXFP4, FP8, the NVFP4 artifact and NVIDIA's export), and one
 * mutation per rejection rule (status and a key phrase of the message).
 */
#include "dsv4-build.h"
#include "engine/io/config.h"
#include "base/dsv4.h"
#include "tests/test.h"

#include <cjson/cJSON.h>

static char *read_text(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;

    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, fp) != (size_t)n)
        n = 0;
    buf[n] = '\0';
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static char pro_text_path[1024], flash_text_path[1024];

static void test_real(void)
{
    struct dsv4_config c, f, back;
    char *text, *json;
    size_t len;

    CHECKF(dsv4_config_load(pro_text_path, &c) == 0, "%s", dsv4_errmsg());
    CHECK_INT(c.vocab_size, 129280);
    CHECK_INT(c.hidden_size, 7168);
    CHECK_INT(c.num_hidden_layers, 61);
    CHECK_INT(c.num_attention_heads, 128);
    CHECK_INT(c.num_key_value_heads, 1);
    CHECK_INT(c.head_dim, 512);
    CHECK_INT(c.qk_rope_head_dim, 64);
    CHECK_INT(c.qk_nope_head_dim, 448);
    CHECK_INT(c.q_lora_rank, 1536);
    CHECK_INT(c.o_groups, 16);
    CHECK_INT(c.o_lora_rank, 1024);
    CHECK_INT(c.moe_intermediate_size, 3072);
    CHECK_INT(c.n_routed_experts, 384);
    CHECK_INT(c.n_shared_experts, 1);
    CHECK_INT(c.num_experts_per_tok, 6);
    CHECK_INT(c.num_hash_layers, 3);
    CHECK_INT(c.num_nextn_predict_layers, 1);
    CHECK_INT(c.first_k_dense_replace, 0);
    CHECK_INT(c.n_group, 0);
    CHECK_INT(c.topk_group, 0);
    CHECK_INT(c.index_n_heads, 64);
    CHECK_INT(c.index_head_dim, 128);
    CHECK_INT(c.index_topk, 1024);
    CHECK_INT(c.sliding_window, 128);
    CHECK_INT(c.hc_mult, 4);
    CHECK_INT(c.hc_sinkhorn_iters, 20);
    CHECK_INT(c.max_position_embeddings, 1048576);
    CHECK_INT(c.bos_token_id, 0);
    CHECK_INT(c.eos_token_id, 1);
    CHECK_INT(c.n_compress_ratios, 62);
    {
        int n128 = 0, n4 = 0, n0 = 0;
        for (int l = 0; l < 62; l++) {
            n128 += c.compress_ratios[l] == 128;
            n4 += c.compress_ratios[l] == 4;
            n0 += c.compress_ratios[l] == 0;
        }
        CHECK(n128 == 31 && n4 == 30 && n0 == 1);
        CHECK(c.compress_ratios[0] == 128 && c.compress_ratios[1] == 128 &&
              c.compress_ratios[2] == 4 && c.compress_ratios[59] == 128 &&
              c.compress_ratios[60] == 4 && c.compress_ratios[61] == 0);
    }
    CHECK(c.rms_norm_eps == 1e-6);
    CHECK(c.hc_eps == 1e-6);
    CHECK(c.rope_theta == 10000);
    CHECK(c.compress_rope_theta == 160000);
    CHECK(c.routed_scaling_factor == 2.5);
    CHECK(c.swiglu_limit == 10.0);
    CHECK(c.norm_topk_prob && !c.tie_word_embeddings && !c.attention_bias);
    CHECK_STR(c.hidden_act, "silu");
    CHECK_STR(c.scoring_func, "sqrtsoftplus");
    CHECK_STR(c.topk_method, "noaux_tc");
    CHECK_STR(c.model_type, "deepseek_v4");
    CHECK(c.has_yarn);
    CHECK(c.yarn_factor == 16 && c.yarn_beta_fast == 32 && c.yarn_beta_slow == 1);
    CHECK_INT(c.yarn_original_max_position, 65536);
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_MXFP4);
    CHECK_STR(c.quant_method, "fp8");
    CHECK_STR(c.fmt, "e4m3");
    CHECK_STR(c.scale_fmt, "ue8m0");
    CHECK_STR(c.activation_scheme, "dynamic");
    CHECK(c.weight_block_size[0] == 128 && c.weight_block_size[1] == 128);
    CHECK_STR(c.moe_quant_algo, "");
    CHECK_INT(dsv4_config_total_layers(&c), 62);
    CHECK_INT(dsv4_config_ratio(&c, 0), 128);
    CHECK_INT(dsv4_config_ratio(&c, 2), 4);
    CHECK_INT(dsv4_config_ratio(&c, 61), 0);
    CHECK(dsv4_config_is_hash_layer(&c, 0) && dsv4_config_is_hash_layer(&c, 2));
    CHECK(!dsv4_config_is_hash_layer(&c, 3) && !dsv4_config_is_hash_layer(&c, 61));
    CHECK(!dsv4_config_is_hash_layer(&c, -1));
    CHECK_STR(dsv4_expert_fmt_name(c.expert_fmt), "mxfp4");
    CHECK_STR(dsv4_expert_fmt_name(DSV4_EXPERT_NVFP4), "nvfp4");
    CHECK_STR(dsv4_expert_fmt_name(DSV4_EXPERT_FP8), "fp8");

    /* byte-exact re-serialisation of the upstream file, and a round trip */
    text = read_text(pro_text_path, &len);
    json = dsv4_config_to_json(&c);
    CHECK(text && json);
    if (text && json) {
        CHECKF(!strcmp(json, text), "to_json(pro) differs from the upstream file:\n%s", json);
        CHECK_INT(dsv4_config_parse(json, strlen(json), &back), 0);
        CHECK(!memcmp(&back, &c, sizeof(c)));
    }
    free(text);
    free(json);

    CHECKF(dsv4_config_load(flash_text_path, &f) == 0, "%s", dsv4_errmsg());
    CHECK_INT(f.hidden_size, 4096);
    CHECK_INT(f.num_hidden_layers, 43);
    CHECK_INT(f.num_attention_heads, 64);
    CHECK_INT(f.q_lora_rank, 1024);
    CHECK_INT(f.o_groups, 8);
    CHECK_INT(f.moe_intermediate_size, 2048);
    CHECK_INT(f.n_routed_experts, 256);
    CHECK_INT(f.index_topk, 512);
    CHECK(f.routed_scaling_factor == 1.5);
    CHECK_INT(f.n_compress_ratios, 44);
    CHECK(f.compress_ratios[0] == 0 && f.compress_ratios[1] == 0 && f.compress_ratios[2] == 4 &&
          f.compress_ratios[3] == 128 && f.compress_ratios[42] == 4 && f.compress_ratios[43] == 0);
    CHECK(f.compress_rope_theta == 160000);
    text = read_text(flash_text_path, &len);
    json = dsv4_config_to_json(&f);
    if (text && json)
        CHECKF(!strcmp(json, text), "to_json(flash) differs:\n%s", json);
    free(text);
    free(json);

    CHECK_INT(dsv4_config_load("/nonexistent/config.json", &c), DSV4_ENOENT);
    CHECK(strstr(dsv4_errmsg(), "/nonexistent/config.json") != NULL);
}

/* ---------------------------------------------------------------- mutations */

static cJSON *base;

/* Prints `root` and parses it; returns the status. */
static int parse_json(cJSON *root, struct dsv4_config *c)
{
    char *s = cJSON_Print(root);
    int rc = dsv4_config_parse(s, strlen(s), c);

    free(s);
    return rc;
}

static void set(cJSON *obj, const char *key, cJSON *v)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    else
        cJSON_AddItemToObject(obj, key, v);
}

/* Applies one edit to a copy of the Pro config and expects status + phrase. */
#define MUT(status, phrase, ...)                                                                 \
    do {                                                                                         \
        cJSON *r = cJSON_Duplicate(base, 1);                                                     \
        cJSON *q = cJSON_GetObjectItemCaseSensitive(r, "quantization_config");                   \
        cJSON *rs = cJSON_GetObjectItemCaseSensitive(r, "rope_scaling");                         \
        struct dsv4_config c_;                                                                   \
        int rc_;                                                                                 \
        (void)q;                                                                                 \
        (void)rs;                                                                                \
        __VA_ARGS__;                                                                             \
        rc_ = parse_json(r, &c_);                                                                \
        CHECKF(rc_ == (status), "line %d: status %d, expected %d (%s)", __LINE__, rc_, (status), \
               dsv4_errmsg());                                                                   \
        CHECKF(strstr(dsv4_errmsg(), phrase) != NULL, "line %d: \"%s\" lacks \"%s\"", __LINE__,  \
               dsv4_errmsg(), phrase);                                                           \
        cJSON_Delete(r);                                                                         \
    } while (0)

/* Applies edits and expects success; leaves the result in `out`. */
#define OK(out, ...)                                                               \
    do {                                                                           \
        cJSON *r = cJSON_Duplicate(base, 1);                                       \
        cJSON *q = cJSON_GetObjectItemCaseSensitive(r, "quantization_config");     \
        cJSON *rs = cJSON_GetObjectItemCaseSensitive(r, "rope_scaling");           \
        int rc_;                                                                   \
        (void)q;                                                                   \
        (void)rs;                                                                  \
        __VA_ARGS__;                                                               \
        rc_ = parse_json(r, &(out));                                               \
        CHECKF(rc_ == 0, "line %d: status %d (%s)", __LINE__, rc_, dsv4_errmsg()); \
        cJSON_Delete(r);                                                           \
    } while (0)

static void test_variants(void)
{
    struct dsv4_config c;

    /* defaults of absent keys */
    OK(c, cJSON_DeleteItemFromObject(r, "expert_dtype"));
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_MXFP4);
    OK(c, cJSON_DeleteItemFromObject(r, "compress_rope_theta"));
    CHECK(c.compress_rope_theta == 40000);
    OK(c, set(r, "compress_rope_theta", cJSON_CreateNumber(123456)));
    CHECK(c.compress_rope_theta == 123456);
    OK(c, cJSON_DeleteItemFromObject(r, "rope_scaling"));
    CHECK(!c.has_yarn);
    OK(c, cJSON_DeleteItemFromObject(r, "quantization_config"));
    CHECK_STR(c.quant_method, "");
    OK(c, cJSON_DeleteItemFromObject(r, "num_key_value_heads");
       cJSON_DeleteItemFromObject(r, "n_shared_experts"); cJSON_DeleteItemFromObject(r, "hc_mult");
       cJSON_DeleteItemFromObject(r, "hc_eps"));
    CHECK(c.num_key_value_heads == 1 && c.n_shared_experts == 1 && c.hc_mult == 4 &&
          c.hc_eps == 1e-6);
    OK(c, set(r, "qk_nope_head_dim", cJSON_CreateNumber(448));
       set(r, "v_head_dim", cJSON_CreateNumber(512)));
    OK(c, set(r, "n_group", cJSON_CreateNumber(8)); set(r, "topk_group", cJSON_CreateNumber(4)));
    CHECK(c.n_group == 8 && c.topk_group == 4);
    /* compress_ratios without the MTP entry: MTP is window-only */
    OK(c, cJSON_DeleteItemFromArray(cJSON_GetObjectItem(r, "compress_ratios"), 61));
    CHECK(c.n_compress_ratios == 62 && c.compress_ratios[61] == 0 && c.compress_ratios[60] == 4);
    /* expert formats */
    OK(c, set(r, "expert_dtype", cJSON_CreateString("fp8")));
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_FP8);
    /* the NVFP4 artifact (formats.md §1.4) */
    OK(c, {
        cJSON *ef = cJSON_CreateObject();
        cJSON_AddStringToObject(ef, "name", "nvfp4");
        cJSON_AddStringToObject(ef, "weight_dtype", "fp4_e2m1");
        cJSON_AddStringToObject(ef, "weight_packing", "uint8_2_per_byte");
        cJSON_AddNumberToObject(ef, "group_size", 16);
        cJSON_AddStringToObject(ef, "scale_dtype", "fp8_e4m3");
        cJSON_AddStringToObject(ef, "weight_scale_2_dtype", "fp32");
        cJSON_AddStringToObject(q, "moe_quant_algo", "NVFP4");
        cJSON_AddItemToObject(q, "expert_format", ef);
        cJSON_AddStringToObject(q, "mtp_e_proj_h_proj_dequant", "bf16");
    });
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_NVFP4);
    CHECK_STR(c.moe_quant_algo, "NVFP4");
    {
        char *json = dsv4_config_to_json(&c);
        struct dsv4_config back;
        CHECK(json && strstr(json, "\"moe_quant_algo\": \"NVFP4\""));
        CHECK_INT(dsv4_config_parse(json, strlen(json), &back), 0);
        CHECK(!memcmp(&back, &c, sizeof(c)));
        free(json);
    }
    /* NVIDIA's export: extra keys, lower-case algo, no expert_dtype */
    OK(c, cJSON_AddStringToObject(q, "moe_quant_algo", "nvfp4");
       cJSON_AddStringToObject(q, "quant_algo", "MIXED_PRECISION");
       cJSON_AddNumberToObject(q, "group_size", 16);
       cJSON_AddNullToObject(q, "kv_cache_quant_algo");
       cJSON_DeleteItemFromObject(r, "expert_dtype"));
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_NVFP4);
    OK(c, set(r, "expert_dtype", cJSON_CreateNull()));
    CHECK_INT(c.expert_fmt, DSV4_EXPERT_MXFP4);

    /* rejections */
    MUT(DSV4_EFORMAT, "\"hidden_size\" is not a number",
        set(r, "hidden_size", cJSON_CreateString("7168")));
    MUT(DSV4_EFORMAT, "\"hidden_size\" = 7168.5 is not an integer",
        set(r, "hidden_size", cJSON_CreateNumber(7168.5)));
    MUT(DSV4_EINVAL, "\"hidden_size\" = -1 is out of range",
        set(r, "hidden_size", cJSON_CreateNumber(-1)));
    MUT(DSV4_EINVAL, "\"vocab_size\" = 0 is out of range",
        set(r, "vocab_size", cJSON_CreateNumber(0)));
    MUT(DSV4_ENOENT, "missing key \"vocab_size\"", cJSON_DeleteItemFromObject(r, "vocab_size"));
    MUT(DSV4_ENOENT, "missing key \"rope_theta\"", cJSON_DeleteItemFromObject(r, "rope_theta"));
    MUT(DSV4_ENOENT, "missing key \"compress_ratios\"",
        cJSON_DeleteItemFromObject(r, "compress_ratios"));
    MUT(DSV4_EINVAL, "not a multiple of o_groups = 16",
        set(r, "num_attention_heads", cJSON_CreateNumber(100)));
    MUT(DSV4_EINVAL, "num_experts_per_tok = 500 exceeds n_routed_experts = 384",
        set(r, "num_experts_per_tok", cJSON_CreateNumber(500)));
    MUT(DSV4_EINVAL, "num_hash_layers = 100 exceeds num_hidden_layers = 61",
        set(r, "num_hash_layers", cJSON_CreateNumber(100)));
    MUT(DSV4_EINVAL, "\"compress_ratios\" has 10 entries, expected 61",
        set(r, "compress_ratios", cJSON_CreateIntArray((int[]){4, 4, 4, 4, 4, 4, 4, 4, 4, 4}, 10)));
    MUT(DSV4_EINVAL, "compress_ratios[3] = 3 is not 0 or a power of two",
        cJSON_ReplaceItemInArray(cJSON_GetObjectItem(r, "compress_ratios"), 3,
                                 cJSON_CreateNumber(3)));
    MUT(DSV4_EFORMAT, "compress_ratios[0] is not a number",
        cJSON_ReplaceItemInArray(cJSON_GetObjectItem(r, "compress_ratios"), 0,
                                 cJSON_CreateString("4")));
    MUT(DSV4_EFORMAT, "\"compress_ratios\" is not an array",
        set(r, "compress_ratios", cJSON_CreateNumber(4)));
    MUT(DSV4_ENOTSUP, "rope_scaling type \"linear\"",
        set(rs, "type", cJSON_CreateString("linear")));
    MUT(DSV4_ENOTSUP, "rope_scaling.mscale is not supported",
        cJSON_AddNumberToObject(rs, "mscale", 1));
    MUT(DSV4_ENOENT, "missing key \"rope_scaling.factor\"",
        cJSON_DeleteItemFromObject(rs, "factor"));
    MUT(DSV4_EINVAL, "\"rope_scaling.factor\" = 0 must be > 0",
        set(rs, "factor", cJSON_CreateNumber(0)));
    MUT(DSV4_EFORMAT, "\"rope_scaling\" is not an object",
        set(r, "rope_scaling", cJSON_CreateString("yarn")));
    MUT(DSV4_ENOTSUP, "expert_dtype \"int4\"", set(r, "expert_dtype", cJSON_CreateString("int4")));
    MUT(DSV4_EFORMAT, "\"expert_dtype\" is not a string",
        set(r, "expert_dtype", cJSON_CreateNumber(4)));
    MUT(DSV4_ENOTSUP, "moe_quant_algo \"MXFP8\"",
        cJSON_AddStringToObject(q, "moe_quant_algo", "MXFP8"));
    MUT(DSV4_EINVAL, "moe_quant_algo NVFP4 contradicts expert_dtype \"fp8\"",
        cJSON_AddStringToObject(q, "moe_quant_algo", "NVFP4");
        set(r, "expert_dtype", cJSON_CreateString("fp8")));
    MUT(DSV4_ENOTSUP, "quant_method \"awq\"", set(q, "quant_method", cJSON_CreateString("awq")));
    MUT(DSV4_ENOENT, "missing key \"quantization_config.quant_method\"",
        cJSON_DeleteItemFromObject(q, "quant_method"));
    MUT(DSV4_ENOTSUP, "scale_fmt \"e5m2\"", set(q, "scale_fmt", cJSON_CreateString("e5m2")));
    MUT(DSV4_EFORMAT, "weight_block_size is not an array of 2 integers",
        set(q, "weight_block_size", cJSON_CreateIntArray((int[]){128}, 1)));
    MUT(DSV4_EINVAL, "weight_block_size[1] is not an integer",
        set(q, "weight_block_size", cJSON_CreateIntArray((int[]){128, 0}, 2)));
    MUT(DSV4_EFORMAT, "\"quantization_config\" is not an object",
        set(r, "quantization_config", cJSON_CreateString("fp8")));
    MUT(DSV4_ENOTSUP, "model_type \"llama\"", set(r, "model_type", cJSON_CreateString("llama")));
    MUT(DSV4_ENOTSUP, "num_key_value_heads = 8",
        set(r, "num_key_value_heads", cJSON_CreateNumber(8)));
    MUT(DSV4_EFORMAT, "\"norm_topk_prob\" is not true/false",
        set(r, "norm_topk_prob", cJSON_CreateString("yes")));
    MUT(DSV4_EINVAL, "\"rms_norm_eps\" = 0 must be > 0",
        set(r, "rms_norm_eps", cJSON_CreateNumber(0)));
    MUT(DSV4_EINVAL, "\"swiglu_limit\" = -1 must be > 0",
        set(r, "swiglu_limit", cJSON_CreateNumber(-1)));
    MUT(DSV4_EINVAL, "qk_nope_head_dim must be head_dim - qk_rope_head_dim = 448",
        set(r, "qk_nope_head_dim", cJSON_CreateNumber(128)));
    MUT(DSV4_EINVAL, "v_head_dim must equal head_dim = 512",
        set(r, "v_head_dim", cJSON_CreateNumber(128)));
    MUT(DSV4_EINVAL, "topk_group = 0 must be in [1, n_group = 8]",
        set(r, "n_group", cJSON_CreateNumber(8)));
    MUT(DSV4_EINVAL, "n_routed_experts = 384 is not a multiple of n_group = 7",
        set(r, "n_group", cJSON_CreateNumber(7));
        set(r, "topk_group", cJSON_CreateNumber(2)));
    MUT(DSV4_EINVAL, "topk_group = 3 without n_group", set(r, "topk_group", cJSON_CreateNumber(3)));
    MUT(DSV4_EINVAL, "bos/eos token ids 0/200000 outside vocab_size 129280",
        set(r, "eos_token_id", cJSON_CreateNumber(200000)));
    MUT(DSV4_ENOTSUP, "first_k_dense_replace = 1",
        set(r, "first_k_dense_replace", cJSON_CreateNumber(1)));
    MUT(DSV4_EINVAL, "multiples of the mxfp4 block 32",
        set(r, "hidden_size", cJSON_CreateNumber(7160)));
    MUT(DSV4_EINVAL, "qk_rope_head_dim = 63 must be even",
        set(r, "qk_rope_head_dim", cJSON_CreateNumber(63)));
    MUT(DSV4_EFORMAT, "\"architectures\" is not an array",
        set(r, "architectures", cJSON_CreateNumber(5)));
    MUT(DSV4_ENOTSUP, "hidden_act \"gelu\"", set(r, "hidden_act", cJSON_CreateString("gelu")));
    MUT(DSV4_ENOTSUP, "scoring_func \"relu\"", set(r, "scoring_func", cJSON_CreateString("relu")));
    MUT(DSV4_ENOTSUP, "attention_bias = true", set(r, "attention_bias", cJSON_CreateTrue()));
    MUT(DSV4_EINVAL, "\"hidden_act\" = \"silusilusilusilusilusilu...\" is too long",
        set(r, "hidden_act", cJSON_CreateString("silusilusilusilusilusilu")));
    MUT(DSV4_EINVAL, "\"num_hidden_layers\" = 300 is out of range",
        set(r, "num_hidden_layers", cJSON_CreateNumber(300)));
    MUT(
            DSV4_EINVAL, "255 layers + 2 MTP blocks exceed the limit 256",
            set(r, "num_hidden_layers", cJSON_CreateNumber(255));
            set(r, "num_nextn_predict_layers", cJSON_CreateNumber(2));
            set(r, "num_hash_layers", cJSON_CreateNumber(0)); {
                int ratios[257] = {0};
                set(r, "compress_ratios", cJSON_CreateIntArray(ratios, 257));
            });

    /* validate on hand-built structs; to_json refuses what does not validate */
    OK(c, (void)0);
    {
        struct dsv4_config x = c;
        x.expert_fmt = DSV4_EXPERT_NVFP4;
        CHECK_INT(dsv4_config_validate(&x), DSV4_EINVAL);
        CHECK(strstr(dsv4_errmsg(), "needs quantization_config.moe_quant_algo") != NULL);
        CHECK(dsv4_config_to_json(&x) == NULL);
        strcpy(x.moe_quant_algo, "NVFP4");
        CHECK_INT(dsv4_config_validate(&x), 0);
        x = c;
        x.rope_theta = INFINITY;
        CHECK_INT(dsv4_config_validate(&x), DSV4_EINVAL);
        CHECK(strstr(dsv4_errmsg(), "must be finite and > 0") != NULL);
        x = c;
        x.yarn_beta_fast = NAN;
        CHECK_INT(dsv4_config_validate(&x), DSV4_EINVAL);
        x = c;
        memset(x.hidden_act, 'a', sizeof(x.hidden_act));
        CHECK_INT(dsv4_config_validate(&x), DSV4_EINVAL);
        CHECK(strstr(dsv4_errmsg(), "unterminated") != NULL);
        x = c;
        strcpy(x.fmt, "e5m2");
        CHECK_INT(dsv4_config_validate(&x), DSV4_ENOTSUP);
        CHECK(dsv4_config_to_json(&x) == NULL);
        x = c;
        x.compress_ratios[5] = 6;
        CHECK_INT(dsv4_config_validate(&x), DSV4_EINVAL);
        CHECK(strstr(dsv4_errmsg(), "compress_ratios[5] = 6") != NULL);
    }

    /* text-level rejections */
    {
        struct dsv4_config x;
        const char *dup = "{\"vocab_size\": 1, \"vocab_size\": 2}";
        CHECK_INT(dsv4_config_parse(dup, strlen(dup), &x), DSV4_EFORMAT);
        CHECK(strstr(dsv4_errmsg(), "duplicate key \"vocab_size\"") != NULL);
        CHECK_INT(dsv4_config_parse("{\"a\":", 5, &x), DSV4_EFORMAT);
        CHECK(strstr(dsv4_errmsg(), "not valid JSON") != NULL);
        CHECK_INT(dsv4_config_parse("[1]", 3, &x), DSV4_EFORMAT);
        CHECK(strstr(dsv4_errmsg(), "not a JSON object") != NULL);
        CHECK_INT(dsv4_config_parse("", 0, &x), DSV4_EFORMAT);
    }
}

int main(void)
{
    size_t len;
    char *text;

    snprintf(pro_text_path, sizeof(pro_text_path), "%s/v4-pro-config.json", test_shared_data());
    snprintf(flash_text_path, sizeof(flash_text_path), "%s/v4-flash-config.json",
             test_shared_data());
    text = read_text(pro_text_path, &len);
    if (!text) {
        printf("shared data not found: %s\n", pro_text_path);
        return 77;
    }
    base = cJSON_Parse(text);
    free(text);
    test_real();
    test_variants();
    cJSON_Delete(base);
    TEST_DONE();
}
