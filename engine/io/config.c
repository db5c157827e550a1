/*
 * config.c - parsing, validation and serialisation of the DeepSeek-V4
 * config.json (see config.h and ../shared/spec/model.md §1.1).
 *
 * Rules:
 *  - keys with a size or numeric meaning and no documented default are
 *    required (missing -> DSV4_ENOENT naming the key);
 *  - absent keys with a documented default take it: n_group/topk_group 0
 *    (no group-limited routing), first_k_dense_replace 0, qk_nope_head_dim =
 *    head_dim - qk_rope_head_dim, no rope_scaling -> no YaRN, expert_dtype
 *    -> fp4 (vLLM's default for early downloads), num_key_value_heads 1,
 *    n_shared_experts 1, num_nextn_predict_layers 1, hc_* and eps from the
 *    reference ModelArgs; compress_rope_theta defaults to the reference's
 *    40000 only when absent (the shipped 160000 always wins when present);
 *  - a key of the wrong JSON type is DSV4_EFORMAT, an impossible value
 *    DSV4_EINVAL, a valid value the engine does not implement (another
 *    model_type, mscale, dense layers, an unknown moe_quant_algo)
 *    DSV4_ENOTSUP; every message names the key and the value;
 *  - duplicate keys are rejected (JSON parsers disagree on which one wins);
 *  - the expert format comes from quantization_config.moe_quant_algo
 *    ("NVFP4", any case -> NVFP4, formats.md §1.4) and otherwise from
 *    expert_dtype ("fp4" -> MXFP4, "fp8" -> FP8).
 * Informational keys (architectures, torch_dtype, use_cache, ...) are type
 * checked when present and otherwise ignored; unknown keys are ignored.
 */
#include "dsv4-build.h"
#include "engine/io/config.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "engine/io/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_CONFIG_BYTES (16u << 20)
#define CFG              "config.json"

/* ---------------------------------------------------------------- typed getters */

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects an object holding the same key twice; `where` prefixes the key. */
static int check_dups(const cJSON *obj, const char *where)
{
    const cJSON *c;
    const char **keys;
    size_t n = 0, i = 0;
    int rc = 0;

    cJSON_ArrayForEach(c, obj) n++;
    if (n < 2)
        return 0;
    keys = malloc(n * sizeof(*keys));
    if (!keys)
        return dsv4_error(DSV4_ENOMEM, CFG ": out of memory");
    cJSON_ArrayForEach(c, obj) keys[i++] = c->string;
    qsort(keys, n, sizeof(*keys), cmp_key);
    for (i = 1; i < n; i++)
        if (!strcmp(keys[i - 1], keys[i])) {
            rc = dsv4_error(DSV4_EFORMAT, CFG ": duplicate key \"%s%.200s\"", where, keys[i]);
            break;
        }
    free(keys);
    return rc;
}

static const cJSON *item(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

    /* null counts as absent, as for Python's config.get(key) */
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* The number under `key` into *d; *found false (and 0) when the key is absent
 * or null and not `required`. */
static int get_number(const cJSON *obj, const char *where, const char *key, bool required,
                      bool *found, double *d)
{
    const cJSON *v = item(obj, key);

    *found = false;
    if (!v) {
        if (required)
            return dsv4_error(DSV4_ENOENT, CFG ": missing key \"%s%s\"", where, key);
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"%s%s\" is not a number", where, key);
    *found = true;
    *d = v->valuedouble;
    return 0;
}

static int get_i64(const cJSON *obj, const char *where, const char *key, bool required, int64_t def,
                   int64_t min, int64_t max, int64_t *out)
{
    double d = 0;
    bool found;
    int rc = get_number(obj, where, key, required, &found, &d);

    if (rc || !found) {
        if (!rc)
            *out = def;
        return rc;
    }
    if (!isfinite(d) || d != floor(d))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"%s%s\" = %g is not an integer", where, key, d);
    if (d < (double)min || d > (double)max)
        return dsv4_error(DSV4_EINVAL, CFG ": \"%s%s\" = %.0f is out of range [%lld, %lld]", where,
                          key, d, (long long)min, (long long)max);
    *out = (int64_t)d;
    return 0;
}

static int get_int(const cJSON *obj, const char *where, const char *key, bool required, int def,
                   int min, int max, int *out)
{
    int64_t v;
    int rc = get_i64(obj, where, key, required, def, min, max, &v);

    if (!rc)
        *out = (int)v;
    return rc;
}

/* A finite number; `positive` demands > 0, otherwise >= 0. */
static int get_double(const cJSON *obj, const char *where, const char *key, bool required,
                      double def, bool positive, double *out)
{
    double d = 0;
    bool found;
    int rc = get_number(obj, where, key, required, &found, &d);

    if (rc || !found) {
        if (!rc)
            *out = def;
        return rc;
    }
    if (!isfinite(d) || d < 0 || (positive && d == 0))
        return dsv4_error(DSV4_EINVAL, CFG ": \"%s%s\" = %g must be %s", where, key, d,
                          positive ? "> 0" : ">= 0");
    *out = d;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, bool def, bool *out)
{
    const cJSON *v = item(obj, key);

    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"%s\" is not true/false", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_str(const cJSON *obj, const char *where, const char *key, const char *def, char *buf,
                   size_t size)
{
    const cJSON *v = item(obj, key);
    const char *s = def;

    if (v) {
        if (!cJSON_IsString(v))
            return dsv4_error(DSV4_EFORMAT, CFG ": \"%s%s\" is not a string", where, key);
        s = v->valuestring;
    }
    if (strlen(s) >= size)
        return dsv4_error(DSV4_EINVAL, CFG ": \"%s%s\" = \"%.40s...\" is too long", where, key, s);
    memcpy(buf, s, strlen(s) + 1);
    return 0;
}

/* Type-checks an informational key nobody reads. */
static int check_type(const cJSON *obj, const char *key, int type, const char *what)
{
    const cJSON *v = item(obj, key);

    if (v && (v->type & 0xff) != type && !(type == cJSON_True && cJSON_IsBool(v)))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"%s\" is not %s", key, what);
    return 0;
}

static bool is_pow2(int v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

/* ---------------------------------------------------------------- sections */

static int parse_compress_ratios(const cJSON *root, struct dsv4_config *cfg)
{
    const cJSON *a = item(root, "compress_ratios"), *c;
    int n, i = 0;
    int total = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;

    if (!a)
        return dsv4_error(DSV4_ENOENT, CFG ": missing key \"compress_ratios\"");
    if (!cJSON_IsArray(a))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"compress_ratios\" is not an array");
    n = cJSON_GetArraySize(a);
    if (n != cfg->num_hidden_layers && n != total)
        return dsv4_error(DSV4_EINVAL,
                          CFG ": \"compress_ratios\" has %d entries, expected %d (layers) or %d "
                              "(layers + MTP)",
                          n, cfg->num_hidden_layers, total);
    if (total > DSV4_MAX_LAYERS)
        return dsv4_error(DSV4_EINVAL, CFG ": %d layers + %d MTP blocks exceed the limit %d",
                          cfg->num_hidden_layers, cfg->num_nextn_predict_layers, DSV4_MAX_LAYERS);
    memset(cfg->compress_ratios, 0, sizeof(cfg->compress_ratios));
    cJSON_ArrayForEach(c, a)
    {
        double d;
        if (!cJSON_IsNumber(c))
            return dsv4_error(DSV4_EFORMAT, CFG ": compress_ratios[%d] is not a number", i);
        d = c->valuedouble;
        if (d != floor(d) || d < 0 || d > 65536 || (d != 0 && !is_pow2((int)d)) || d == 1)
            return dsv4_error(DSV4_EINVAL,
                              CFG ": compress_ratios[%d] = %g is not 0 or a power of two >= 2", i,
                              d);
        cfg->compress_ratios[i++] = (int)d;
    }
    /* Short list: MTP blocks are window-only (ratio 0). */
    cfg->n_compress_ratios = total;
    return 0;
}

static int parse_rope_scaling(const cJSON *root, struct dsv4_config *cfg)
{
    const cJSON *rs = item(root, "rope_scaling");
    const char *W = "rope_scaling.";
    char type[16];
    int rc;

    cfg->has_yarn = false;
    if (!rs)
        return 0;
    if (!cJSON_IsObject(rs))
        return dsv4_error(DSV4_EFORMAT, CFG ": \"rope_scaling\" is not an object");
    if ((rc = check_dups(rs, W)))
        return rc;
    if (item(rs, "type"))
        rc = get_str(rs, W, "type", "", type, sizeof(type));
    else
        rc = get_str(rs, W, "rope_type", "", type, sizeof(type));
    if (rc)
        return rc;
    if (strcmp(type, "yarn"))
        return dsv4_error(DSV4_ENOTSUP, CFG ": rope_scaling type \"%s\" is not supported (yarn)",
                          type);
    if (item(rs, "mscale") || item(rs, "mscale_all_dim"))
        return dsv4_error(DSV4_ENOTSUP, CFG ": rope_scaling.mscale is not supported "
                                            "(DeepSeek-V4 has no YaRN magnitude scaling)");
    if ((rc = get_double(rs, W, "factor", true, 0, true, &cfg->yarn_factor)) ||
        (rc = get_double(rs, W, "beta_fast", false, 32, true, &cfg->yarn_beta_fast)) ||
        (rc = get_double(rs, W, "beta_slow", false, 1, true, &cfg->yarn_beta_slow)) ||
        (rc = get_i64(rs, W, "original_max_position_embeddings", true, 0, 1, INT64_C(1) << 40,
                      &cfg->yarn_original_max_position)))
        return rc;
    cfg->has_yarn = true;
    return 0;
}

static int parse_quant(const cJSON *root, struct dsv4_config *cfg)
{
    const cJSON *q = item(root, "quantization_config"), *w, *c;
    const char *W = "quantization_config.";
    char expert_dtype[16];
    int rc, i = 0;

    memset(cfg->quant_method, 0, sizeof(cfg->quant_method));
    cfg->weight_block_size[0] = cfg->weight_block_size[1] = 0;
    if ((rc = get_str(root, "", "expert_dtype", "fp4", expert_dtype, sizeof(expert_dtype))))
        return rc;
    if (q) {
        if (!cJSON_IsObject(q))
            return dsv4_error(DSV4_EFORMAT, CFG ": \"quantization_config\" is not an object");
        if ((rc = check_dups(q, W)))
            return rc;
        if (!item(q, "quant_method"))
            return dsv4_error(DSV4_ENOENT, CFG ": missing key \"%squant_method\"", W);
        if ((rc = get_str(q, W, "quant_method", "", cfg->quant_method, sizeof(cfg->quant_method))))
            return rc;
        if ((rc = get_str(q, W, "fmt", "e4m3", cfg->fmt, sizeof(cfg->fmt))) ||
            (rc = get_str(q, W, "scale_fmt", "", cfg->scale_fmt, sizeof(cfg->scale_fmt))) ||
            (rc = get_str(q, W, "activation_scheme", "dynamic", cfg->activation_scheme,
                          sizeof(cfg->activation_scheme))) ||
            (rc = get_str(q, W, "moe_quant_algo", "", cfg->moe_quant_algo,
                          sizeof(cfg->moe_quant_algo))))
            return rc;
        if (strcmp(cfg->quant_method, "fp8"))
            return dsv4_error(DSV4_ENOTSUP, CFG ": quant_method \"%s\" is not supported (fp8)",
                              cfg->quant_method);
        if (strcmp(cfg->fmt, "e4m3"))
            return dsv4_error(DSV4_ENOTSUP, CFG ": quantization fmt \"%s\" is not supported (e4m3)",
                              cfg->fmt);
        if (cfg->scale_fmt[0] && strcmp(cfg->scale_fmt, "ue8m0"))
            return dsv4_error(DSV4_ENOTSUP, CFG ": scale_fmt \"%s\" is not supported (ue8m0)",
                              cfg->scale_fmt);
        if (strcmp(cfg->activation_scheme, "dynamic"))
            return dsv4_error(DSV4_ENOTSUP,
                              CFG ": activation_scheme \"%s\" is not supported (dynamic)",
                              cfg->activation_scheme);
        w = item(q, "weight_block_size");
        if (!w) {
            cfg->weight_block_size[0] = cfg->weight_block_size[1] = 128;
        } else {
            if (!cJSON_IsArray(w) || cJSON_GetArraySize(w) != 2)
                return dsv4_error(DSV4_EFORMAT,
                                  CFG ": weight_block_size is not an array of 2 integers");
            cJSON_ArrayForEach(c, w)
            {
                double d = cJSON_IsNumber(c) ? c->valuedouble : -1;
                if (d != floor(d) || d < 1 || d > 65536)
                    return dsv4_error(DSV4_EINVAL,
                                      CFG ": weight_block_size[%d] is not an integer in "
                                          "[1, 65536]",
                                      i);
                cfg->weight_block_size[i++] = (int)d;
            }
        }
        if (cfg->moe_quant_algo[0]) {
            if (strcasecmp(cfg->moe_quant_algo, "NVFP4"))
                return dsv4_error(DSV4_ENOTSUP,
                                  CFG ": moe_quant_algo \"%s\" is not supported (NVFP4)",
                                  cfg->moe_quant_algo);
            strcpy(cfg->moe_quant_algo, "NVFP4");
        }
    } else {
        cfg->fmt[0] = cfg->scale_fmt[0] = cfg->activation_scheme[0] = '\0';
        cfg->moe_quant_algo[0] = '\0';
    }
    if (cfg->moe_quant_algo[0]) {
        if (strcmp(expert_dtype, "fp4"))
            return dsv4_error(DSV4_EINVAL,
                              CFG ": moe_quant_algo NVFP4 contradicts expert_dtype \"%s\"",
                              expert_dtype);
        cfg->expert_fmt = DSV4_EXPERT_NVFP4;
    } else if (!strcmp(expert_dtype, "fp4")) {
        cfg->expert_fmt = DSV4_EXPERT_MXFP4;
    } else if (!strcmp(expert_dtype, "fp8")) {
        cfg->expert_fmt = DSV4_EXPERT_FP8;
    } else {
        return dsv4_error(DSV4_ENOTSUP, CFG ": expert_dtype \"%s\" is not supported (fp4, fp8)",
                          expert_dtype);
    }
    return 0;
}

/* ---------------------------------------------------------------- parse */

int dsv4_config_parse(const char *json, size_t len, struct dsv4_config *cfg)
{
    cJSON *root;
    const cJSON *v;
    int rc, nope;
    const int64_t BIG = INT64_C(1) << 24;

    memset(cfg, 0, sizeof(*cfg));
    if (len > MAX_CONFIG_BYTES)
        return dsv4_error(DSV4_ERANGE, CFG ": %zu bytes exceeds the %u-byte limit", len,
                          MAX_CONFIG_BYTES);
    root = cJSON_ParseWithLength(json, len);
    if (!root)
        return dsv4_error(DSV4_EFORMAT, CFG ": not valid JSON");
    if (!cJSON_IsObject(root)) {
        rc = dsv4_error(DSV4_EFORMAT, CFG ": not a JSON object");
        goto done;
    }
    if ((rc = check_dups(root, "")))
        goto done;
    if ((rc = get_str(root, "", "model_type", "deepseek_v4", cfg->model_type,
                      sizeof(cfg->model_type))))
        goto done;
    if (strcmp(cfg->model_type, "deepseek_v4")) {
        rc = dsv4_error(DSV4_ENOTSUP, CFG ": model_type \"%s\" is not deepseek_v4",
                        cfg->model_type);
        goto done;
    }
    if ((rc = get_int(root, "", "vocab_size", true, 0, 1, (int)BIG, &cfg->vocab_size)) ||
        (rc = get_int(root, "", "hidden_size", true, 0, 1, 1 << 20, &cfg->hidden_size)) ||
        (rc = get_int(root, "", "num_hidden_layers", true, 0, 1, DSV4_MAX_LAYERS,
                      &cfg->num_hidden_layers)) ||
        (rc = get_int(root, "", "num_attention_heads", true, 0, 1, 1 << 16,
                      &cfg->num_attention_heads)) ||
        (rc = get_int(root, "", "num_key_value_heads", false, 1, 1, 1 << 16,
                      &cfg->num_key_value_heads)) ||
        (rc = get_int(root, "", "head_dim", true, 0, 1, 1 << 16, &cfg->head_dim)) ||
        (rc = get_int(root, "", "qk_rope_head_dim", true, 0, 0, 1 << 16, &cfg->qk_rope_head_dim)) ||
        (rc = get_int(root, "", "q_lora_rank", true, 0, 1, 1 << 20, &cfg->q_lora_rank)) ||
        (rc = get_int(root, "", "o_groups", true, 0, 1, 1 << 16, &cfg->o_groups)) ||
        (rc = get_int(root, "", "o_lora_rank", true, 0, 1, 1 << 20, &cfg->o_lora_rank)) ||
        (rc = get_int(root, "", "moe_intermediate_size", true, 0, 1, 1 << 20,
                      &cfg->moe_intermediate_size)) ||
        (rc = get_int(root, "", "n_routed_experts", true, 0, 1, 1 << 16, &cfg->n_routed_experts)) ||
        (rc = get_int(root, "", "n_shared_experts", false, 1, 0, 1 << 10,
                      &cfg->n_shared_experts)) ||
        (rc = get_int(root, "", "num_experts_per_tok", true, 0, 1, 1 << 16,
                      &cfg->num_experts_per_tok)) ||
        (rc = get_int(root, "", "num_hash_layers", false, 0, 0, DSV4_MAX_LAYERS,
                      &cfg->num_hash_layers)) ||
        (rc = get_int(root, "", "num_nextn_predict_layers", false, 1, 0, DSV4_MAX_LAYERS,
                      &cfg->num_nextn_predict_layers)) ||
        (rc = get_int(root, "", "first_k_dense_replace", false, 0, 0, DSV4_MAX_LAYERS,
                      &cfg->first_k_dense_replace)) ||
        (rc = get_int(root, "", "n_group", false, 0, 0, 1 << 16, &cfg->n_group)) ||
        (rc = get_int(root, "", "topk_group", false, 0, 0, 1 << 16, &cfg->topk_group)) ||
        (rc = get_int(root, "", "index_n_heads", true, 0, 1, 1 << 16, &cfg->index_n_heads)) ||
        (rc = get_int(root, "", "index_head_dim", true, 0, 1, 1 << 16, &cfg->index_head_dim)) ||
        (rc = get_int(root, "", "index_topk", true, 0, 1, 1 << 24, &cfg->index_topk)) ||
        (rc = get_int(root, "", "sliding_window", true, 0, 1, 1 << 24, &cfg->sliding_window)) ||
        (rc = get_int(root, "", "hc_mult", false, 4, 1, 64, &cfg->hc_mult)) ||
        (rc = get_int(root, "", "hc_sinkhorn_iters", false, 20, 0, 1 << 16,
                      &cfg->hc_sinkhorn_iters)) ||
        (rc = get_i64(root, "", "max_position_embeddings", true, 0, 1, INT64_C(1) << 40,
                      &cfg->max_position_embeddings)) ||
        (rc = get_int(root, "", "bos_token_id", false, 0, 0, (int)BIG, &cfg->bos_token_id)) ||
        (rc = get_int(root, "", "eos_token_id", false, 1, 0, (int)BIG, &cfg->eos_token_id)))
        goto done;
    if ((rc = get_double(root, "", "rms_norm_eps", false, 1e-6, true, &cfg->rms_norm_eps)) ||
        (rc = get_double(root, "", "hc_eps", false, 1e-6, true, &cfg->hc_eps)) ||
        (rc = get_double(root, "", "rope_theta", true, 0, true, &cfg->rope_theta)) ||
        (rc = get_double(root, "", "compress_rope_theta", false, 40000, true,
                         &cfg->compress_rope_theta)) ||
        (rc = get_double(root, "", "routed_scaling_factor", true, 0, true,
                         &cfg->routed_scaling_factor)) ||
        (rc = get_double(root, "", "swiglu_limit", true, 0, true, &cfg->swiglu_limit)))
        goto done;
    if ((rc = get_bool(root, "norm_topk_prob", true, &cfg->norm_topk_prob)) ||
        (rc = get_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings)) ||
        (rc = get_bool(root, "attention_bias", false, &cfg->attention_bias)))
        goto done;
    if ((rc = get_str(root, "", "hidden_act", "silu", cfg->hidden_act, sizeof(cfg->hidden_act))) ||
        (rc = get_str(root, "", "scoring_func", "sqrtsoftplus", cfg->scoring_func,
                      sizeof(cfg->scoring_func))) ||
        (rc = get_str(root, "", "topk_method", "noaux_tc", cfg->topk_method,
                      sizeof(cfg->topk_method))))
        goto done;
    if ((rc = check_type(root, "architectures", cJSON_Array, "an array")) ||
        (rc = check_type(root, "attention_dropout", cJSON_Number, "a number")) ||
        (rc = check_type(root, "initializer_range", cJSON_Number, "a number")) ||
        (rc = check_type(root, "torch_dtype", cJSON_String, "a string")) ||
        (rc = check_type(root, "transformers_version", cJSON_String, "a string")) ||
        (rc = check_type(root, "use_cache", cJSON_True, "true/false")))
        goto done;
    /* Derived sizes: present keys must agree with the derivation. */
    nope = cfg->head_dim - cfg->qk_rope_head_dim;
    cfg->qk_nope_head_dim = nope;
    v = item(root, "qk_nope_head_dim");
    if (v && (!cJSON_IsNumber(v) || v->valuedouble != nope)) {
        rc = dsv4_error(DSV4_EINVAL,
                        CFG ": qk_nope_head_dim must be head_dim - qk_rope_head_dim "
                            "= %d",
                        nope);
        goto done;
    }
    v = item(root, "v_head_dim");
    if (v && (!cJSON_IsNumber(v) || v->valuedouble != cfg->head_dim)) {
        rc = dsv4_error(DSV4_EINVAL, CFG ": v_head_dim must equal head_dim = %d", cfg->head_dim);
        goto done;
    }
    if ((rc = parse_compress_ratios(root, cfg)) || (rc = parse_rope_scaling(root, cfg)) ||
        (rc = parse_quant(root, cfg)))
        goto done;
    rc = dsv4_config_validate(cfg);
done:
    cJSON_Delete(root);
    return rc;
}

int dsv4_config_load(const char *path, struct dsv4_config *cfg)
{
    char *buf;
    size_t n;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    rc = dsv4_file_read(path, MAX_CONFIG_BYTES, &buf, &n);
    if (rc)
        return rc;
    rc = dsv4_config_parse(buf, n, cfg);
    if (rc)
        dsv4_error_ctx(rc, "%s", path); /* the message names the file */
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- validate */

static bool finite_pos(double v)
{
    return isfinite(v) && v > 0;
}

#define TERMINATED(field) (memchr((field), 0, sizeof(field)) != NULL)

int dsv4_config_validate(const struct dsv4_config *c)
{
    const int L = c->num_hidden_layers, M = c->num_nextn_predict_layers;

#define NEED(cond, st, ...)                              \
    do {                                                 \
        if (!(cond))                                     \
            return dsv4_error(st, CFG ": " __VA_ARGS__); \
    } while (0)
    /* Strings first: every later check reads them. */
    NEED(TERMINATED(c->hidden_act) && TERMINATED(c->scoring_func) && TERMINATED(c->topk_method) &&
                 TERMINATED(c->model_type) && TERMINATED(c->quant_method) && TERMINATED(c->fmt) &&
                 TERMINATED(c->scale_fmt) && TERMINATED(c->activation_scheme) &&
                 TERMINATED(c->moe_quant_algo),
         DSV4_EINVAL, "unterminated string field");
    NEED(c->vocab_size > 0 && c->hidden_size > 0 && L > 0 && c->num_attention_heads > 0 &&
                 c->head_dim > 0 && c->q_lora_rank > 0 && c->o_groups > 0 && c->o_lora_rank > 0 &&
                 c->moe_intermediate_size > 0 && c->n_routed_experts > 0 &&
                 c->num_experts_per_tok > 0 && c->index_n_heads > 0 && c->index_head_dim > 0 &&
                 c->index_topk > 0 && c->sliding_window > 0 && c->hc_mult > 0 &&
                 c->max_position_embeddings > 0,
         DSV4_EINVAL, "every size must be positive");
    NEED(M >= 0 && L + M <= DSV4_MAX_LAYERS && c->n_compress_ratios == L + M, DSV4_EINVAL,
         "%d layers + %d MTP blocks do not match %d compress ratios (limit %d)", L, M,
         c->n_compress_ratios, DSV4_MAX_LAYERS);
    NEED(c->num_key_value_heads == 1, DSV4_ENOTSUP,
         "num_key_value_heads = %d, DeepSeek-V4 attention is MQA (1)", c->num_key_value_heads);
    NEED(c->qk_rope_head_dim > 0 && c->qk_rope_head_dim % 2 == 0 &&
                 c->qk_rope_head_dim < c->head_dim,
         DSV4_EINVAL, "qk_rope_head_dim = %d must be even and in (0, head_dim = %d)",
         c->qk_rope_head_dim, c->head_dim);
    NEED(c->qk_nope_head_dim == c->head_dim - c->qk_rope_head_dim, DSV4_EINVAL,
         "qk_nope_head_dim = %d != head_dim - qk_rope_head_dim", c->qk_nope_head_dim);
    NEED(c->index_head_dim > c->qk_rope_head_dim, DSV4_EINVAL,
         "index_head_dim = %d must exceed qk_rope_head_dim = %d", c->index_head_dim,
         c->qk_rope_head_dim);
    NEED(c->num_attention_heads % c->o_groups == 0, DSV4_EINVAL,
         "num_attention_heads = %d is not a multiple of o_groups = %d", c->num_attention_heads,
         c->o_groups);
    NEED(c->num_experts_per_tok <= c->n_routed_experts, DSV4_EINVAL,
         "num_experts_per_tok = %d exceeds n_routed_experts = %d", c->num_experts_per_tok,
         c->n_routed_experts);
    NEED(c->n_shared_experts >= 0, DSV4_EINVAL, "n_shared_experts = %d", c->n_shared_experts);
    NEED(c->num_hash_layers >= 0 && c->num_hash_layers <= L, DSV4_EINVAL,
         "num_hash_layers = %d exceeds num_hidden_layers = %d", c->num_hash_layers, L);
    NEED(c->first_k_dense_replace == 0, DSV4_ENOTSUP,
         "first_k_dense_replace = %d: dense FFN layers are not supported",
         c->first_k_dense_replace);
    if (c->n_group > 0) {
        NEED(c->n_routed_experts % c->n_group == 0, DSV4_EINVAL,
             "n_routed_experts = %d is not a multiple of n_group = %d", c->n_routed_experts,
             c->n_group);
        NEED(c->topk_group >= 1 && c->topk_group <= c->n_group, DSV4_EINVAL,
             "topk_group = %d must be in [1, n_group = %d]", c->topk_group, c->n_group);
    } else {
        NEED(c->n_group == 0 && c->topk_group == 0, DSV4_EINVAL, "topk_group = %d without n_group",
             c->topk_group);
    }
    NEED(c->bos_token_id >= 0 && c->bos_token_id < c->vocab_size && c->eos_token_id >= 0 &&
                 c->eos_token_id < c->vocab_size,
         DSV4_EINVAL, "bos/eos token ids %d/%d outside vocab_size %d", c->bos_token_id,
         c->eos_token_id, c->vocab_size);
    for (int l = 0; l < L + M; l++)
        NEED(c->compress_ratios[l] == 0 ||
                     (c->compress_ratios[l] >= 2 && is_pow2(c->compress_ratios[l])),
             DSV4_EINVAL, "compress_ratios[%d] = %d is not 0 or a power of two >= 2", l,
             c->compress_ratios[l]);
    NEED(finite_pos(c->rms_norm_eps) && finite_pos(c->hc_eps) && finite_pos(c->rope_theta) &&
                 finite_pos(c->compress_rope_theta) && finite_pos(c->routed_scaling_factor) &&
                 finite_pos(c->swiglu_limit),
         DSV4_EINVAL,
         "eps, rope thetas, routed_scaling_factor and swiglu_limit must be finite "
         "and > 0");
    if (c->has_yarn)
        NEED(finite_pos(c->yarn_factor) && finite_pos(c->yarn_beta_fast) &&
                     finite_pos(c->yarn_beta_slow) && c->yarn_original_max_position > 0,
             DSV4_EINVAL,
             "rope_scaling factor, betas and original_max_position_embeddings "
             "must be > 0");
    NEED(!c->attention_bias, DSV4_ENOTSUP, "attention_bias = true is not supported");
    NEED(!strcmp(c->hidden_act, "silu"), DSV4_ENOTSUP, "hidden_act \"%s\" is not supported (silu)",
         c->hidden_act);
    NEED(!strcmp(c->scoring_func, "sqrtsoftplus") || !strcmp(c->scoring_func, "softmax") ||
                 !strcmp(c->scoring_func, "sigmoid"),
         DSV4_ENOTSUP, "scoring_func \"%s\" is not supported (sqrtsoftplus, softmax, sigmoid)",
         c->scoring_func);
    NEED(!strcmp(c->topk_method, "noaux_tc") || !strcmp(c->topk_method, "greedy"), DSV4_ENOTSUP,
         "topk_method \"%s\" is not supported (noaux_tc, greedy)", c->topk_method);
    NEED((int)c->expert_fmt >= DSV4_EXPERT_MXFP4 && (int)c->expert_fmt <= DSV4_EXPERT_FP8,
         DSV4_EINVAL, "expert format %d", (int)c->expert_fmt);
    if (c->expert_fmt != DSV4_EXPERT_FP8) {
        int g = c->expert_fmt == DSV4_EXPERT_MXFP4 ? 32 : 16;
        NEED(c->hidden_size % g == 0 && c->moe_intermediate_size % g == 0, DSV4_EINVAL,
             "hidden_size = %d and moe_intermediate_size = %d must be multiples of the %s "
             "block %d",
             c->hidden_size, c->moe_intermediate_size, dsv4_expert_fmt_name(c->expert_fmt), g);
    }
    /* Only the string values the parser accepts, so that to_json always
     * writes valid JSON that parses back the same. */
    NEED(!c->model_type[0] || !strcmp(c->model_type, "deepseek_v4"), DSV4_ENOTSUP,
         "model_type \"%s\" is not deepseek_v4", c->model_type);
    if (c->quant_method[0]) {
        NEED(!strcmp(c->quant_method, "fp8") && !strcmp(c->fmt, "e4m3") &&
                     (!c->scale_fmt[0] || !strcmp(c->scale_fmt, "ue8m0")) &&
                     !strcmp(c->activation_scheme, "dynamic"),
             DSV4_ENOTSUP, "quantization %s/%s/%s/%s is not fp8/e4m3/ue8m0/dynamic",
             c->quant_method, c->fmt, c->scale_fmt, c->activation_scheme);
        NEED(c->weight_block_size[0] > 0 && c->weight_block_size[1] > 0, DSV4_EINVAL,
             "weight_block_size [%d, %d] must be positive", c->weight_block_size[0],
             c->weight_block_size[1]);
    }
    NEED(!c->moe_quant_algo[0] || !strcmp(c->moe_quant_algo, "NVFP4"), DSV4_ENOTSUP,
         "moe_quant_algo \"%s\" is not supported (NVFP4)", c->moe_quant_algo);
    NEED((c->expert_fmt == DSV4_EXPERT_NVFP4) == !strcmp(c->moe_quant_algo, "NVFP4") &&
                 (!c->moe_quant_algo[0] || c->quant_method[0]),
         DSV4_EINVAL,
         "expert format %s needs quantization_config.moe_quant_algo \"NVFP4\" (and only it "
         "does), got \"%s\"",
         dsv4_expert_fmt_name(c->expert_fmt), c->moe_quant_algo);
#undef NEED
    return 0;
}

int dsv4_config_total_layers(const struct dsv4_config *cfg)
{
    return cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
}

int dsv4_config_ratio(const struct dsv4_config *cfg, int layer)
{
    DSV4_ASSERT(layer >= 0 && layer < cfg->n_compress_ratios);
    return cfg->compress_ratios[layer];
}

bool dsv4_config_is_hash_layer(const struct dsv4_config *cfg, int layer)
{
    return layer >= 0 && layer < cfg->num_hash_layers && layer < cfg->num_hidden_layers;
}

const char *dsv4_expert_fmt_name(enum dsv4_expert_fmt f)
{
    switch (f) {
    case DSV4_EXPERT_MXFP4:
        return "mxfp4";
    case DSV4_EXPERT_NVFP4:
        return "nvfp4";
    case DSV4_EXPERT_FP8:
        return "fp8";
    }
    return "invalid";
}

/* ---------------------------------------------------------------- to_json */

/* Keys upstream writes as integers (rope_theta 10000, factor 16) print
 * without ".0" when integral below this. */
#define INT_BELOW 1e15

/* A top-level member "  \"key\": <number>,\n" (numbers as Python prints them). */
static void put_num(struct dsv4_strbuf *o, const char *key, double v, bool as_int)
{
    dsv4_strbuf_fmt(o, "  \"%s\": ", key);
    dsv4_strbuf_json_num(o, v, as_int ? INT_BELOW : 0);
    dsv4_strbuf_str(o, ",\n");
}

char *dsv4_config_to_json(const struct dsv4_config *c)
{
    struct dsv4_strbuf o;
    char b[48];
    const int n_ratios = c->n_compress_ratios;

    if (dsv4_config_validate(c))
        return NULL;
    dsv4_strbuf_init(&o);
    dsv4_strbuf_fmt(&o, "{\n  \"architectures\": [\n    \"DeepseekV4ForCausalLM\"\n  ],\n");
    dsv4_strbuf_fmt(&o, "  \"attention_bias\": %s,\n", c->attention_bias ? "true" : "false");
    dsv4_strbuf_fmt(&o, "  \"attention_dropout\": 0.0,\n");
    dsv4_strbuf_fmt(&o, "  \"bos_token_id\": %d,\n", c->bos_token_id);
    dsv4_strbuf_fmt(&o, "  \"eos_token_id\": %d,\n", c->eos_token_id);
    dsv4_strbuf_fmt(&o, "  \"expert_dtype\": \"%s\",\n",
                    c->expert_fmt == DSV4_EXPERT_FP8 ? "fp8" : "fp4");
    if (c->first_k_dense_replace)
        dsv4_strbuf_fmt(&o, "  \"first_k_dense_replace\": %d,\n", c->first_k_dense_replace);
    put_num(&o, "hc_eps", c->hc_eps, false);
    dsv4_strbuf_fmt(&o, "  \"hc_mult\": %d,\n", c->hc_mult);
    dsv4_strbuf_fmt(&o, "  \"hc_sinkhorn_iters\": %d,\n", c->hc_sinkhorn_iters);
    dsv4_strbuf_fmt(&o, "  \"head_dim\": %d,\n", c->head_dim);
    dsv4_strbuf_fmt(&o, "  \"hidden_act\": \"%s\",\n", c->hidden_act);
    dsv4_strbuf_fmt(&o, "  \"hidden_size\": %d,\n", c->hidden_size);
    dsv4_strbuf_fmt(&o, "  \"index_head_dim\": %d,\n", c->index_head_dim);
    dsv4_strbuf_fmt(&o, "  \"index_n_heads\": %d,\n", c->index_n_heads);
    dsv4_strbuf_fmt(&o, "  \"index_topk\": %d,\n", c->index_topk);
    dsv4_strbuf_fmt(&o, "  \"initializer_range\": 0.02,\n");
    dsv4_strbuf_fmt(&o, "  \"max_position_embeddings\": %lld,\n",
                    (long long)c->max_position_embeddings);
    dsv4_strbuf_fmt(&o, "  \"model_type\": \"%s\",\n",
                    c->model_type[0] ? c->model_type : "deepseek_v4");
    dsv4_strbuf_fmt(&o, "  \"moe_intermediate_size\": %d,\n", c->moe_intermediate_size);
    if (c->n_group)
        dsv4_strbuf_fmt(&o, "  \"n_group\": %d,\n", c->n_group);
    dsv4_strbuf_fmt(&o, "  \"n_routed_experts\": %d,\n", c->n_routed_experts);
    dsv4_strbuf_fmt(&o, "  \"n_shared_experts\": %d,\n", c->n_shared_experts);
    dsv4_strbuf_fmt(&o, "  \"norm_topk_prob\": %s,\n", c->norm_topk_prob ? "true" : "false");
    dsv4_strbuf_fmt(&o, "  \"num_attention_heads\": %d,\n", c->num_attention_heads);
    dsv4_strbuf_fmt(&o, "  \"num_experts_per_tok\": %d,\n", c->num_experts_per_tok);
    dsv4_strbuf_fmt(&o, "  \"num_hidden_layers\": %d,\n", c->num_hidden_layers);
    dsv4_strbuf_fmt(&o, "  \"num_hash_layers\": %d,\n", c->num_hash_layers);
    dsv4_strbuf_fmt(&o, "  \"num_key_value_heads\": %d,\n", c->num_key_value_heads);
    dsv4_strbuf_fmt(&o, "  \"num_nextn_predict_layers\": %d,\n", c->num_nextn_predict_layers);
    dsv4_strbuf_fmt(&o, "  \"o_groups\": %d,\n", c->o_groups);
    dsv4_strbuf_fmt(&o, "  \"o_lora_rank\": %d,\n", c->o_lora_rank);
    dsv4_strbuf_fmt(&o, "  \"q_lora_rank\": %d,\n", c->q_lora_rank);
    dsv4_strbuf_fmt(&o, "  \"qk_rope_head_dim\": %d,\n", c->qk_rope_head_dim);
    if (c->quant_method[0]) {
        dsv4_strbuf_fmt(&o, "  \"quantization_config\": {\n");
        dsv4_strbuf_fmt(&o, "    \"activation_scheme\": \"%s\",\n", c->activation_scheme);
        dsv4_strbuf_fmt(&o, "    \"fmt\": \"%s\",\n", c->fmt);
        dsv4_strbuf_fmt(&o, "    \"quant_method\": \"%s\",\n", c->quant_method);
        if (c->scale_fmt[0])
            dsv4_strbuf_fmt(&o, "    \"scale_fmt\": \"%s\",\n", c->scale_fmt);
        dsv4_strbuf_fmt(&o, "    \"weight_block_size\": [\n      %d,\n      %d\n    ]%s\n",
                        c->weight_block_size[0], c->weight_block_size[1],
                        c->moe_quant_algo[0] ? "," : "");
        if (c->moe_quant_algo[0])
            dsv4_strbuf_fmt(&o, "    \"moe_quant_algo\": \"%s\"\n", c->moe_quant_algo);
        dsv4_strbuf_fmt(&o, "  },\n");
    }
    put_num(&o, "rms_norm_eps", c->rms_norm_eps, false);
    if (c->has_yarn) {
        dsv4_strbuf_fmt(&o, "  \"rope_scaling\": {\n");
        dsv4_strbuf_format_num(b, sizeof(b), c->yarn_beta_fast, INT_BELOW);
        dsv4_strbuf_fmt(&o, "    \"beta_fast\": %s,\n", b);
        dsv4_strbuf_format_num(b, sizeof(b), c->yarn_beta_slow, INT_BELOW);
        dsv4_strbuf_fmt(&o, "    \"beta_slow\": %s,\n", b);
        dsv4_strbuf_format_num(b, sizeof(b), c->yarn_factor, INT_BELOW);
        dsv4_strbuf_fmt(&o, "    \"factor\": %s,\n", b);
        dsv4_strbuf_fmt(&o, "    \"original_max_position_embeddings\": %lld,\n",
                        (long long)c->yarn_original_max_position);
        dsv4_strbuf_fmt(&o, "    \"type\": \"yarn\"\n  },\n");
    }
    put_num(&o, "rope_theta", c->rope_theta, true);
    put_num(&o, "routed_scaling_factor", c->routed_scaling_factor, false);
    dsv4_strbuf_fmt(&o, "  \"scoring_func\": \"%s\",\n", c->scoring_func);
    dsv4_strbuf_fmt(&o, "  \"sliding_window\": %d,\n", c->sliding_window);
    put_num(&o, "swiglu_limit", c->swiglu_limit, false);
    dsv4_strbuf_fmt(&o, "  \"tie_word_embeddings\": %s,\n",
                    c->tie_word_embeddings ? "true" : "false");
    if (c->topk_group)
        dsv4_strbuf_fmt(&o, "  \"topk_group\": %d,\n", c->topk_group);
    dsv4_strbuf_fmt(&o, "  \"topk_method\": \"%s\",\n", c->topk_method);
    dsv4_strbuf_fmt(&o, "  \"torch_dtype\": \"bfloat16\",\n");
    dsv4_strbuf_fmt(&o, "  \"transformers_version\": \"4.57.1\",\n");
    dsv4_strbuf_fmt(&o, "  \"use_cache\": true,\n");
    dsv4_strbuf_fmt(&o, "  \"vocab_size\": %d,\n", c->vocab_size);
    put_num(&o, "compress_rope_theta", c->compress_rope_theta, true);
    dsv4_strbuf_fmt(&o, "  \"compress_ratios\": [");
    for (int i = 0; i < n_ratios && i < DSV4_MAX_LAYERS; i++)
        dsv4_strbuf_fmt(&o, "%s%d", i ? ", " : "", c->compress_ratios[i]);
    dsv4_strbuf_fmt(&o, "]\n}\n");
    if (o.oom) {
        dsv4_strbuf_free(&o);
        return NULL;
    }
    return o.p;
}
