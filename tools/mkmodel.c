/*
 * mkmodel.c - synthetic checkpoints with the contract's exact layout (see
 * mkmodel.h for the value distributions, the seeding and the sharding).
 *
 * Structure: the contract lists every tensor; consecutive specs of one
 * quantised module (.weight then .scale and the NVFP4 sidecars) form a
 * group generated once per instance and written member by member.  Plain
 * tensors are generated in row chunks, so memory stays at one module.
 * Invariant: a tensor's bytes depend only on (seed, its name, the config,
 * the format), never on sharding or write order.
 */
#include "dsv4-build.h"
#include "tools/mkmodel.h"
#include "engine/io/contract.h"
#include "tools/convert.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "engine/io/safetensors.h"
#include "kernels/formats.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_ELEMS (1 << 20)

/* ---------------------------------------------------------------- presets */

/* Upstream key order (shared/data/v4-pro-config.json). */
static const char preset_fmt[] =
        "{\"architectures\": [\"DeepseekV4ForCausalLM\"], \"attention_bias\": false,"
        " \"attention_dropout\": 0.0, \"bos_token_id\": 0, \"eos_token_id\": 1,"
        " \"expert_dtype\": \"fp4\", \"hc_eps\": 1e-06, \"hc_mult\": 4,"
        " \"hc_sinkhorn_iters\": 20, \"head_dim\": 512, \"hidden_act\": \"silu\","
        " \"hidden_size\": %d, \"index_head_dim\": 128, \"index_n_heads\": %d,"
        " \"index_topk\": %d, \"initializer_range\": 0.02,"
        " \"max_position_embeddings\": 1048576, \"model_type\": \"deepseek_v4\","
        " \"moe_intermediate_size\": %d, \"n_routed_experts\": %d, \"n_shared_experts\": 1,"
        " \"norm_topk_prob\": true, \"num_attention_heads\": %d, \"num_experts_per_tok\": 6,"
        " \"num_hidden_layers\": %d, \"num_hash_layers\": 3, \"num_key_value_heads\": 1,"
        " \"num_nextn_predict_layers\": 1, \"o_groups\": %d, \"o_lora_rank\": %d,"
        " \"q_lora_rank\": %d, \"qk_rope_head_dim\": 64,"
        " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\","
        " \"quant_method\": \"fp8\", \"scale_fmt\": \"ue8m0\", \"weight_block_size\": [128, 128]},"
        " \"rms_norm_eps\": 1e-06, \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1,"
        " \"factor\": 16, \"original_max_position_embeddings\": 65536, \"type\": \"yarn\"},"
        " \"rope_theta\": 10000, \"routed_scaling_factor\": 2.5,"
        " \"scoring_func\": \"sqrtsoftplus\", \"sliding_window\": 128, \"swiglu_limit\": 10.0,"
        " \"tie_word_embeddings\": false, \"topk_method\": \"noaux_tc\","
        " \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.57.1\","
        " \"use_cache\": true, \"vocab_size\": %d, \"compress_rope_theta\": 160000,"
        " \"compress_ratios\": %s}";

struct preset {
    const char *name;
    int hidden, idx_heads, idx_topk, inter, experts, heads, layers, groups, o_rank, q_rank;
    const char *ratios; /* trunk layers then the MTP block */
};

static const struct preset presets[] = {
        {"tiny", 256, 4, 8, 256, 16, 4, 4, 2, 128, 128, "[4, 128, 4, 0, 0]"},
        {"small", 512, 8, 64, 384, 64, 8, 8, 4, 256, 256, "[128, 128, 4, 128, 4, 128, 4, 0, 0]"},
};

void dsv4_mkmodel_set_format(struct dsv4_config *cfg, enum dsv4_expert_fmt fmt)
{
    cfg->expert_fmt = fmt;
    snprintf(cfg->moe_quant_algo, sizeof(cfg->moe_quant_algo), "%s",
             fmt == DSV4_EXPERT_NVFP4 ? "NVFP4" : "");
}

int dsv4_mkmodel_preset(const char *name, int vocab, enum dsv4_expert_fmt fmt,
                        struct dsv4_config *cfg)
{
    char json[4096];

    if (vocab <= 0)
        return dsv4_error(DSV4_EINVAL, "mkmodel: bad vocabulary size %d", vocab);
    for (size_t i = 0; i < DSV4_ARRAY_LEN(presets); i++) {
        const struct preset *p = &presets[i];
        int rc;

        if (strcmp(name, p->name))
            continue;
        snprintf(json, sizeof(json), preset_fmt, p->hidden, p->idx_heads, p->idx_topk, p->inter,
                 p->experts, p->heads, p->layers, p->groups, p->o_rank, p->q_rank, vocab,
                 p->ratios);
        if ((rc = dsv4_config_parse(json, strlen(json), cfg)))
            return rc;
        dsv4_mkmodel_set_format(cfg, fmt);
        return dsv4_config_validate(cfg);
    }
    return dsv4_error(DSV4_EINVAL, "mkmodel: unknown preset '%s' (tiny, small)", name);
}

/* ---------------------------------------------------------------- files */

/* dir/name, bounded. */
static int join(char *buf, size_t len, const char *dir, const char *name)
{
    if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len)
        return dsv4_error(DSV4_ERANGE, "mkmodel: path too long: %s/%s", dir, name);
    return 0;
}

static int write_in(const char *dir, const char *name, const char *text)
{
    char path[4096];
    int rc = join(path, sizeof(path), dir, name);

    return rc ? rc : dsv4_file_write(path, text, strlen(text));
}

static int copy_in(const char *src, const char *dir, const char *name)
{
    char path[4096];
    int rc = join(path, sizeof(path), dir, name);

    return rc ? rc : dsv4_file_copy(src, path);
}

int dsv4_mkmodel_tokenizer_vocab(const char *tokenizer_json, int *ids, int *vocab)
{
    char *buf;
    size_t len;
    cJSON *root = NULL;
    const cJSON *model, *v, *added, *it;
    double max_id = -1;
    int rc = dsv4_file_read(tokenizer_json, (size_t)1 << 30, &buf, &len);

    if (rc)
        return rc;
    root = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!root || !cJSON_IsObject(root)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: not a JSON object", tokenizer_json);
        goto out;
    }
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    v = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    if (!v || !cJSON_IsObject(v)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: no model.vocab object", tokenizer_json);
        goto out;
    }
    cJSON_ArrayForEach(it, v)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1e8) {
            rc = dsv4_error(DSV4_EFORMAT, "%s: bad id for vocab entry \"%.40s\"", tokenizer_json,
                            it->string ? it->string : "");
            goto out;
        }
        max_id = fmax(max_id, it->valuedouble);
    }
    added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    cJSON_ArrayForEach(it, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8) {
            rc = dsv4_error(DSV4_EFORMAT, "%s: bad added_tokens id", tokenizer_json);
            goto out;
        }
        max_id = fmax(max_id, id->valuedouble);
    }
    if (max_id < 0) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: empty vocabulary", tokenizer_json);
        goto out;
    }
    *ids = (int)max_id + 1;
    *vocab = (*ids + 1279) / 1280 * 1280;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---------------------------------------------------------------- random values */

struct rng {
    uint64_t s;
    uint64_t bits; /* unused 16-bit draws of the last output */
    int nbits;
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float normal_table[65536];
static pthread_once_t normal_once = PTHREAD_ONCE_INIT;

static void init_normal_table(void)
{
    uint64_t s = 0x5eed0f7ab1e5ull;

    for (int i = 0; i < 65536; i += 2) {
        double u1 = ((double)(splitmix(&s) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(splitmix(&s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1));
        normal_table[i] = (float)(r * cos(2.0 * M_PI * u2));
        normal_table[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
    }
}

static void rng_seed(struct rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull;

    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    r->s = seed ^ h;
    splitmix(&r->s);
    r->nbits = 0;
}

static float rng_normal(struct rng *r)
{
    if (r->nbits == 0) {
        r->bits = splitmix(&r->s);
        r->nbits = 4;
    }
    uint32_t i = (uint32_t)(r->bits & 0xffff);
    r->bits >>= 16;
    r->nbits--;
    return normal_table[i];
}

/* ---------------------------------------------------------------- quantisers */

/* FP8 block: x [rows, cols] -> E4M3 w, E8M0 s [ceil(rows/128), ceil(cols/128)]. */
static void quant_fp8_block(const float *x, int64_t rows, int64_t cols, uint8_t *w, uint8_t *s)
{
    int64_t sc = (cols + 127) / 128;

    for (int64_t bi = 0; bi < (rows + 127) / 128; bi++)
        for (int64_t bj = 0; bj < sc; bj++) {
            int64_t r1 = DSV4_MIN(rows, (bi + 1) * 128), c1 = DSV4_MIN(cols, (bj + 1) * 128);
            float amax = 1e-4f;

            for (int64_t i = bi * 128; i < r1; i++)
                for (int64_t j = bj * 128; j < c1; j++)
                    amax = DSV4_MAX(amax, fabsf(x[i * cols + j]));
            float scale = dsv4_pow2_scale(amax, 448.0f);
            s[bi * sc + bj] = dsv4_e8m0_from_pow2(scale);
            for (int64_t i = bi * 128; i < r1; i++)
                for (int64_t j = bj * 128; j < c1; j++)
                    w[i * cols + j] = dsv4_f32_to_e4m3(x[i * cols + j] / scale,
                                                       DSV4_ROUND_NEAREST_EVEN, true);
        }
}

/* MXFP4: x [rows, cols] (cols % 32 == 0) -> packed w [rows, cols/2], E8M0 s [rows, cols/32]. */
static void quant_mxfp4(const float *x, int64_t rows, int64_t cols, uint8_t *w, uint8_t *s)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t b = 0; b < cols / 32; b++) {
            const float *v = x + i * cols + b * 32;
            float amax = 6.0f * 0x1p-126f;

            for (int k = 0; k < 32; k++)
                amax = DSV4_MAX(amax, fabsf(v[k]));
            float scale = dsv4_pow2_scale(amax, 6.0f);
            s[i * (cols / 32) + b] = dsv4_e8m0_from_pow2(scale);
            for (int k = 0; k < 32; k += 2) {
                uint8_t lo = dsv4_f32_to_e2m1(v[k] / scale, DSV4_ROUND_NEAREST_EVEN);
                uint8_t hi = dsv4_f32_to_e2m1(v[k + 1] / scale, DSV4_ROUND_NEAREST_EVEN);
                w[i * (cols / 2) + b * 16 + k / 2] = (uint8_t)(lo | (hi << 4));
            }
        }
}

/*
 * Lossless MXFP4 -> FP8 block cast (model.md §5.4): per 128x128 tile
 * S' = 2^(kmax - 6), element = e2m1 * 2^(k - kmax + 6) (exact in E4M3 while
 * the tile's exponent spread is <= 14), scale stored as F32 S'.
 */
static void mx_to_fp8(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t cols, uint8_t *ow,
                      float *os)
{
    int64_t sc = (cols + 127) / 128;

    for (int64_t bi = 0; bi < (rows + 127) / 128; bi++)
        for (int64_t bj = 0; bj < sc; bj++) {
            int64_t r1 = DSV4_MIN(rows, (bi + 1) * 128), c1 = DSV4_MIN(cols, (bj + 1) * 128);
            int kmax = -127;

            for (int64_t i = bi * 128; i < r1; i++)
                for (int64_t j = bj * 128; j < c1; j += 32)
                    kmax = DSV4_MAX(kmax, (int)s[i * (cols / 32) + j / 32] - 127);
            os[bi * sc + bj] = ldexpf(1.0f, kmax - 6);
            for (int64_t i = bi * 128; i < r1; i++)
                for (int64_t j = bj * 128; j < c1; j++) {
                    uint8_t byte = w[i * (cols / 2) + j / 2];
                    uint8_t nib = (uint8_t)(j & 1 ? byte >> 4 : byte & 15);
                    int k = (int)s[i * (cols / 32) + j / 32] - 127;
                    float v = ldexpf(dsv4_e2m1_to_f32(nib), k - kmax + 6);
                    ow[i * cols + j] = dsv4_f32_to_e4m3(v, DSV4_ROUND_NEAREST_EVEN, true);
                }
        }
}

/* ---------------------------------------------------------------- generation */

enum dist { D_NORMAL, D_NORM_WEIGHT, D_HC_SCALE, D_TID2EID };

struct gen {
    const struct dsv4_config *cfg;
    const struct dsv4_contract *con;
    uint64_t seed;
    struct dsv4_st_writer *w; /* current shard */
    /* module buffers */
    float *x;
    uint8_t *mw, *ms, *pw, *ps, *ow, *os; /* MXFP4, its w1/w3 partner, output */
    size_t cap_x, cap_mw, cap_ms, cap_pw, cap_ps, cap_ow, cap_os;
    int *perm;
    /* NVFP4: per expert, the w1/w3 exponents found when w1 was written */
    struct pair_kmax {
        char prefix[DSV4_CONTRACT_NAME_MAX + 16];
        int32_t k1;
    } * pairs;
};

/* Distribution of a plain tensor, from its name. */
static enum dist plain_dist(const char *name, float *sd, const struct dsv4_config *c)
{
    size_t n = strlen(name);
    int hcd = c->hc_mult * c->hidden_size;

#define ENDS(s) (n >= strlen(s) && !strcmp(name + n - strlen(s), s))
    if (ENDS("tid2eid"))
        return D_TID2EID;
    if (ENDS("norm.weight")) {
        *sd = 0.02f;
        return D_NORM_WEIGHT;
    }
    if (ENDS("_scale")) { /* hc_*_scale */
        *sd = 0.05f;
        return D_HC_SCALE;
    }
    if (ENDS("_fn")) {
        *sd = (float)(0.5 / sqrt((double)hcd));
        return D_NORMAL;
    }
    if (ENDS("_base") || ENDS("attn_sink") || ENDS(".ape")) {
        *sd = 0.1f;
        return D_NORMAL;
    }
    if (ENDS("gate.bias")) {
        *sd = 0.01f;
        return D_NORMAL;
    }
    if (!strcmp(name, "embed.weight")) {
        *sd = 1.0f;
        return D_NORMAL;
    }
#undef ENDS
    *sd = (float)(1.0 / sqrt((double)c->hidden_size));
    return D_NORMAL;
}

static int grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    void *q = realloc(*p, need);
    if (!q)
        return dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory (%zu bytes)", need);
    *p = q;
    *cap = need;
    return 0;
}

static int write_plain(struct gen *g, const struct dsv4_tspec *s)
{
    int64_t numel = s->ndim == 2 ? s->shape[0] * s->shape[1] : s->shape[0];
    size_t esz = dsv4_dtype_size(s->dtype);
    float sd = 0;
    enum dist d = plain_dist(s->name, &sd, g->cfg);
    struct rng r;
    int rc;

    rng_seed(&r, g->seed, s->name);
    if ((rc = grow((void **)&g->ow, &g->cap_ow, (size_t)CHUNK_ELEMS * 8)))
        return rc;
    if (d == D_TID2EID) {
        int e = g->cfg->n_routed_experts, k = (int)s->shape[1];
        int64_t *out = (int64_t *)g->ow;
        int64_t rows_per = CHUNK_ELEMS / k;

        if (!g->perm && !(g->perm = malloc((size_t)e * sizeof(int))))
            return dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory");
        for (int i = 0; i < e; i++)
            g->perm[i] = i;
        for (int64_t r0 = 0; r0 < s->shape[0]; r0 += rows_per) {
            int64_t nr = DSV4_MIN(rows_per, s->shape[0] - r0);
            for (int64_t i = 0; i < nr; i++)
                for (int j = 0; j < k; j++) { /* partial Fisher-Yates: distinct */
                    int t = j + (int)(splitmix(&r.s) % (uint64_t)(e - j));
                    int tmp = g->perm[j];
                    g->perm[j] = g->perm[t];
                    g->perm[t] = tmp;
                    out[i * k + j] = g->perm[j];
                }
            if ((rc = dsv4_st_writer_write(g->w, s->name, out, (size_t)(nr * k) * 8)))
                return rc;
        }
        return 0;
    }
    for (int64_t off = 0; off < numel; off += CHUNK_ELEMS) {
        int64_t n = DSV4_MIN(CHUNK_ELEMS, numel - off);
        for (int64_t i = 0; i < n; i++) {
            float v = rng_normal(&r) * sd;
            if (d == D_NORM_WEIGHT)
                v += 1.0f;
            else if (d == D_HC_SCALE)
                v += 0.5f;
            if (s->dtype == DSV4_DTYPE_BF16)
                ((uint16_t *)g->ow)[i] = dsv4_f32_to_bf16(v);
            else
                ((float *)g->ow)[i] = v;
        }
        if ((rc = dsv4_st_writer_write(g->w, s->name, g->ow, (size_t)n * esz)))
            return rc;
    }
    return 0;
}

/* Draws the float matrix of one linear instance into g->x. */
static int draw_linear(struct gen *g, const char *name, int64_t rows, int64_t cols)
{
    struct rng r;
    float sd = (float)(1.0 / sqrt((double)cols));
    int rc = grow((void **)&g->x, &g->cap_x, (size_t)(rows * cols) * sizeof(float));

    if (rc)
        return rc;
    rng_seed(&r, g->seed, name);
    for (int64_t i = 0; i < rows * cols; i++)
        g->x[i] = rng_normal(&r) * sd;
    return 0;
}

/* MXFP4 of expert module `mod` (name with the index, without .weight) into *w / *s. */
static int draw_mx(struct gen *g, const char *mod, int64_t rows, int64_t cols, uint8_t **w,
                   size_t *wcap, uint8_t **s, size_t *scap)
{
    char name[DSV4_CONTRACT_NAME_MAX + 16];
    int rc;

    snprintf(name, sizeof(name), "%s.weight", mod);
    if ((rc = draw_linear(g, name, rows, cols)) ||
        (rc = grow((void **)w, wcap, (size_t)(rows * cols / 2))) ||
        (rc = grow((void **)s, scap, (size_t)(rows * cols / 32))))
        return rc;
    quant_mxfp4(g->x, rows, cols, *w, *s);
    return 0;
}

static int write_member(struct gen *g, const struct dsv4_tspec *s, int e, const void *data,
                        size_t nbytes)
{
    char name[DSV4_CONTRACT_NAME_MAX + 16];

    DSV4_ASSERT(nbytes == s->nbytes);
    return dsv4_st_writer_write(g->w, dsv4_tspec_name(s, e, name, sizeof(name)), data, nbytes);
}

/* Specs [i, i + n) form one module (weight first); writes instance e of each. */
static int write_module(struct gen *g, size_t i, size_t n, int e)
{
    const struct dsv4_tspec *ws = dsv4_contract_spec(g->con, i);
    int64_t rows = ws->shape[0], cols = ws->logical_cols;
    char wname[DSV4_CONTRACT_NAME_MAX + 16], mod[DSV4_CONTRACT_NAME_MAX + 16];
    int rc;

    dsv4_tspec_name(ws, e, wname, sizeof(wname));
    snprintf(mod, sizeof(mod), "%.*s", (int)(strlen(wname) - strlen(".weight")), wname);

    if (!ws->n_experts) { /* FP8 block linear */
        size_t sb = dsv4_contract_spec(g->con, i + 1)->nbytes;
        if ((rc = draw_linear(g, wname, rows, cols)) ||
            (rc = grow((void **)&g->ow, &g->cap_ow, (size_t)(rows * cols) + sb)))
            return rc;
        quant_fp8_block(g->x, rows, cols, g->ow, g->ow + rows * cols);
        if ((rc = write_member(g, ws, e, g->ow, (size_t)(rows * cols))))
            return rc;
        return write_member(g, dsv4_contract_spec(g->con, i + 1), e, g->ow + rows * cols, sb);
    }

    if ((rc = draw_mx(g, mod, rows, cols, &g->mw, &g->cap_mw, &g->ms, &g->cap_ms)))
        return rc;
    const struct dsv4_tspec *ss = dsv4_contract_spec(g->con, i + 1);
    if (ws->expert_fmt == DSV4_EXPERT_MXFP4) {
        if ((rc = write_member(g, ws, e, g->mw, ws->nbytes)))
            return rc;
        return write_member(g, ss, e, g->ms, ss->nbytes);
    }
    if (ws->expert_fmt == DSV4_EXPERT_FP8) {
        if ((rc = grow((void **)&g->ow, &g->cap_ow, (size_t)(rows * cols))) ||
            (rc = grow((void **)&g->os, &g->cap_os, ss->nbytes)))
            return rc;
        mx_to_fp8(g->mw, g->ms, rows, cols, g->ow, (float *)g->os);
        if ((rc = write_member(g, ws, e, g->ow, ws->nbytes)))
            return rc;
        return write_member(g, ss, e, g->os, ss->nbytes);
    }

    /* NVFP4: lossless cast; w1 and w3 share the global exponent */
    int32_t kmax, kmax_pair = INT32_MIN;
    size_t nscale = (size_t)(rows * (cols / 32));
    if ((rc = dsv4_convert_scan(g->ms, (int64_t)nscale, &kmax)))
        return rc;
    size_t ml = strlen(mod);
    if (ml >= 3 && (!strcmp(mod + ml - 3, ".w1") || !strcmp(mod + ml - 3, ".w3"))) {
        bool is_w1 = mod[ml - 1] == '1';
        struct pair_kmax *pk = &g->pairs[e];
        if (!is_w1 && strlen(pk->prefix) == ml - 3 && !strncmp(pk->prefix, mod, ml - 3)) {
            kmax_pair = pk->k1; /* w1 of this expert was written first */
        } else {
            char other[DSV4_CONTRACT_NAME_MAX + 16];
            snprintf(other, sizeof(other), "%.*s.w%c", (int)(ml - 3), mod, is_w1 ? '3' : '1');
            /* the partner has the same shape as this one */
            if ((rc = draw_mx(g, other, rows, cols, &g->pw, &g->cap_pw, &g->ps, &g->cap_ps)) ||
                (rc = dsv4_convert_scan(g->ps, (int64_t)nscale, &kmax_pair)))
                return rc;
        }
        if (is_w1) {
            snprintf(pk->prefix, sizeof(pk->prefix), "%.*s", (int)(ml - 3), mod);
            pk->k1 = kmax;
        }
    }
    int m = dsv4_convert_lossless_exp(kmax, kmax_pair);
    struct dsv4_convert_stats st = {0};
    float scale2 = dsv4_convert_pow2(m), one = 1.0f;
    if ((rc = grow((void **)&g->ow, &g->cap_ow, (size_t)(rows * cols / 2))) ||
        (rc = grow((void **)&g->os, &g->cap_os, (size_t)(rows * cols / 16))))
        return rc;
    dsv4_convert_lossless_rows(g->mw, g->ms, cols, rows, m, g->ow, g->os, &st);
    if ((rc = write_member(g, ws, e, g->ow, ws->nbytes)) ||
        (rc = write_member(g, ss, e, g->os, ss->nbytes)))
        return rc;
    for (size_t k = 2; k < n; k++) {
        const struct dsv4_tspec *x = dsv4_contract_spec(g->con, i + k);
        if ((rc = write_member(g, x, e, x->role == DSV4_ROLE_SCALE2 ? &scale2 : &one, 4)))
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- sharding */

/* Shard item of a spec: 0 = embed, 1 + l = layer l, L + 1 = head/norm/hc_head, then MTP. */
static int spec_item(const struct dsv4_tspec *s, int L)
{
    if (s->layer >= 0)
        return s->layer < L ? 1 + s->layer : 2 + s->layer;
    return !strcmp(s->name, "embed.weight") ? 0 : L + 1;
}

static int assign_shards(const struct dsv4_contract *con, int nshards, int *item_shard)
{
    const struct dsv4_config *c = dsv4_contract_config(con);
    int L = c->num_hidden_layers, M = c->num_nextn_predict_layers;
    int trunk_items = L + 2, items = L + 2 + M;
    int trunk_shards = (M > 0 && nshards >= 2) ? nshards - 1 : nshards;
    uint64_t *bytes = calloc((size_t)items, sizeof(*bytes));
    uint64_t total = 0, acc = 0;
    int s = 0;

    if (!bytes)
        return dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory");
    if (trunk_shards > trunk_items) {
        free(bytes);
        return dsv4_error(DSV4_EINVAL,
                          "mkmodel: %d shards for %d layers: at most %d (embedding, layers, "
                          "head%s)",
                          nshards, L, trunk_items + (M > 0), M > 0 ? ", MTP" : "");
    }
    for (size_t i = 0; i < dsv4_contract_count(con); i++) {
        const struct dsv4_tspec *sp = dsv4_contract_spec(con, i);
        bytes[spec_item(sp, L)] += sp->nbytes * (uint64_t)(sp->n_experts ? sp->n_experts : 1);
    }
    for (int i = 0; i < trunk_items; i++)
        total += bytes[i];
    /* greedy by bytes; every shard gets at least one item */
    for (int i = 0; i < trunk_items; i++) {
        int left_items = trunk_items - i, left_shards = trunk_shards - s - 1;
        bool have = i > 0 && item_shard[i - 1] == s;
        if (have && left_shards > 0 &&
            (left_items <= left_shards ||
             acc + bytes[i] / 2 > total * (uint64_t)(s + 1) / (uint64_t)trunk_shards))
            s++;
        item_shard[i] = s;
        acc += bytes[i];
    }
    for (int i = trunk_items; i < items; i++)
        item_shard[i] = nshards - 1;
    free(bytes);
    return 0;
}

/* Writes shard `sh`: declares its specs by dtype width, then generates them. */
static int write_shard(struct gen *g, const char *dir, int sh, int nshards, const int *item_shard,
                       char *fname, size_t flen)
{
    const struct dsv4_config *c = g->cfg;
    size_t n = dsv4_contract_count(g->con);
    char path[4200], name[DSV4_CONTRACT_NAME_MAX + 16];
    int rc;

    snprintf(fname, flen, "model-%05d-of-%05d.safetensors", sh + 1, nshards);
    snprintf(path, sizeof(path), "%s/%s", dir, fname);
    if ((rc = dsv4_st_writer_open(path, &g->w)) ||
        (rc = dsv4_st_writer_metadata(g->w, "format", "pt")))
        goto fail;
    for (size_t width = 8; width >= 1; width /= 2)
        for (size_t i = 0; i < n; i++) {
            const struct dsv4_tspec *s = dsv4_contract_spec(g->con, i);
            if (item_shard[spec_item(s, c->num_hidden_layers)] != sh ||
                dsv4_dtype_size(s->dtype) != width)
                continue;
            for (int e = 0; e < (s->n_experts ? s->n_experts : 1); e++)
                if ((rc = dsv4_st_writer_declare(g->w, dsv4_tspec_name(s, e, name, sizeof(name)),
                                                 s->dtype, s->ndim, s->shape)))
                    goto fail;
        }
    if ((rc = dsv4_st_writer_begin(g->w)))
        goto fail;
    for (size_t i = 0; i < n;) {
        const struct dsv4_tspec *s = dsv4_contract_spec(g->con, i);
        size_t k = 1;

        if (s->role == DSV4_ROLE_WEIGHT)
            while (i + k < n && dsv4_contract_spec(g->con, i + k)->role != DSV4_ROLE_WEIGHT &&
                   dsv4_contract_spec(g->con, i + k)->role != DSV4_ROLE_PLAIN)
                k++;
        if (item_shard[spec_item(s, c->num_hidden_layers)] == sh) {
            for (int e = 0; e < (s->n_experts ? s->n_experts : 1); e++) {
                rc = s->role == DSV4_ROLE_PLAIN ? write_plain(g, s) : write_module(g, i, k, e);
                if (rc)
                    goto fail;
            }
        }
        i += k;
    }
    rc = dsv4_st_writer_commit(g->w);
    g->w = NULL;
    return rc;
fail:
    if (g->w)
        dsv4_st_writer_abort(g->w);
    g->w = NULL;
    return rc;
}

/* ---------------------------------------------------------------- directory */

static int copy_tokenizer(const char *tok, const char *dir)
{
    char side[4096], stem_cfg[4096];
    const char *slash = strrchr(tok, '/');
    size_t dlen = slash ? (size_t)(slash - tok) + 1 : 0;
    size_t tl = strlen(tok);
    int rc;

    if ((rc = copy_in(tok, dir, "tokenizer.json")))
        return rc;
    snprintf(side, sizeof(side), "%.*stokenizer_config.json", (int)dlen, tok);
    if (tl > 5 && !strcmp(tok + tl - 5, ".json"))
        snprintf(stem_cfg, sizeof(stem_cfg), "%.*s_config.json", (int)(tl - 5), tok);
    else
        stem_cfg[0] = 0;
    if (access(side, R_OK) == 0)
        return copy_in(side, dir, "tokenizer_config.json");
    if (stem_cfg[0] && access(stem_cfg, R_OK) == 0)
        return copy_in(stem_cfg, dir, "tokenizer_config.json");
    return 0;
}

int dsv4_mkmodel_write(const struct dsv4_mkmodel_opts *o)
{
    struct gen g = {0};
    struct dsv4_contract *con = NULL;
    int *item_shard = NULL;
    char **files = NULL;
    char *json = NULL, gen_cfg[512];
    int rc, nshards = o->shards;

    if (nshards < 1 || nshards > 99999)
        return dsv4_error(DSV4_EINVAL, "mkmodel: bad shard count %d", nshards);
    if ((rc = dsv4_config_validate(o->cfg)))
        return rc;
    /* every expert format is generated through MXFP4 blocks of 32 inputs */
    if (o->cfg->hidden_size % 32 || o->cfg->moe_intermediate_size % 32)
        return dsv4_error(DSV4_EINVAL,
                          "mkmodel: hidden_size (%d) and moe_intermediate_size (%d) must be "
                          "multiples of 32 (the MXFP4 block the experts are drawn in)",
                          o->cfg->hidden_size, o->cfg->moe_intermediate_size);
    if (mkdir(o->out_dir, 0777) && errno != EEXIST)
        return dsv4_error(DSV4_EIO, "mkmodel: cannot create %s: %s", o->out_dir, strerror(errno));
    if ((rc = dsv4_contract_build(o->cfg, -1, &con)))
        return rc;
    pthread_once(&normal_once, init_normal_table);
    g.cfg = o->cfg;
    g.con = con;
    g.pairs = calloc((size_t)DSV4_MAX(1, o->cfg->n_routed_experts), sizeof(*g.pairs));
    if (!g.pairs) {
        rc = dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory");
        goto out;
    }
    g.seed = o->seed;
    item_shard = calloc((size_t)(o->cfg->num_hidden_layers + 2 + o->cfg->num_nextn_predict_layers),
                        sizeof(int));
    files = calloc((size_t)nshards, sizeof(*files));
    if (!item_shard || !files) {
        rc = dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory");
        goto out;
    }
    if ((rc = assign_shards(con, nshards, item_shard)))
        goto out;
    for (int sh = 0; sh < nshards; sh++) {
        if (!(files[sh] = malloc(64))) {
            rc = dsv4_error(DSV4_ENOMEM, "mkmodel: out of memory");
            goto out;
        }
        if ((rc = write_shard(&g, o->out_dir, sh, nshards, item_shard, files[sh], 64)))
            goto out;
    }
    if ((rc = dsv4_ckpt_write_index(o->out_dir, (const char *const *)files, (size_t)nshards)))
        goto out;
    if (!(json = dsv4_config_to_json(o->cfg))) {
        rc = dsv4_error(DSV4_ENOMEM, "mkmodel: cannot serialise the config");
        goto out;
    }
    if ((rc = write_in(o->out_dir, "config.json", json)))
        goto out;
    snprintf(gen_cfg, sizeof(gen_cfg),
             "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": %d,\n  \"eos_token_id\": "
             "%d,\n  \"do_sample\": true,\n  \"temperature\": 1.0,\n  \"top_p\": 1.0,\n  "
             "\"transformers_version\": \"4.46.3\"\n}\n",
             o->cfg->bos_token_id, o->cfg->eos_token_id);
    if ((rc = write_in(o->out_dir, "generation_config.json", gen_cfg)))
        goto out;
    if (o->tokenizer)
        rc = copy_tokenizer(o->tokenizer, o->out_dir);
out:
    if (files)
        for (int i = 0; i < nshards; i++)
            free(files[i]);
    free(files);
    free(item_shard);
    free(json);
    free(g.x);
    free(g.mw);
    free(g.ms);
    free(g.pw);
    free(g.ps);
    free(g.ow);
    free(g.os);
    free(g.perm);
    free(g.pairs);
    dsv4_contract_free(con);
    return rc;
}
