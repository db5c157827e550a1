/*
 * test_contract.c - the model contract against the real inventories, the
 * NVFP4/FP8 layouts, binding with every kind of mismatch and every NVFP4
 * naming variant, TP splits that partition each tensor (and which rows each
 * rank holds), FP4 block divisibility per layer format, and the plan's
 * V4-Pro/Flash numbers (../shared/spec/model.md §2, §7; formats.md §1.4).
 */
#include "engine/io/config.h"
#include "engine/io/contract.h"
#include "base/dsv4.h"
#include "tools/mkmodel.h"
#include "tools/plan.h"
#include "tests/test.h"

#include <stdlib.h>
#include <string.h>

static int load_cfg(const char *file, struct dsv4_config *cfg)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", test_shared_data(), file);
    if (dsv4_config_load(path, cfg)) {
        fprintf(stderr, "%s: %s\n", path, dsv4_errmsg());
        return -1;
    }
    return 0;
}

/* The contract's inventory equals the TSV (comment lines skipped), line by line. */
static void check_inventory(const char *cfg_file, const char *tsv_file, uint64_t count,
                            uint64_t bytes)
{
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;
    char path[4096], *got = NULL, line[512];
    size_t got_len = 0;
    FILE *mem, *tsv;
    size_t lines = 0, mismatches = 0;

    if (load_cfg(cfg_file, &cfg)) {
        CHECK(0);
        return;
    }
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), 0);
    if (!c)
        return;
    CHECK_INT(dsv4_contract_tensor_count(c), count);
    CHECK_INT(dsv4_contract_total_bytes(c), bytes);
    mem = open_memstream(&got, &got_len);
    CHECK_INT(dsv4_contract_write_inventory(c, mem), 0);
    fclose(mem);
    snprintf(path, sizeof(path), "%s/%s", test_shared_data(), tsv_file);
    tsv = fopen(path, "r");
    CHECK(tsv != NULL);
    if (tsv) {
        char *p = got;
        while (fgets(line, sizeof(line), tsv)) {
            if (line[0] == '#')
                continue;
            char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) + 1 : strlen(p);
            if (n != strlen(line) || memcmp(p, line, n)) {
                if (mismatches++ < 5)
                    fprintf(stderr, "%s line %zu: expected %s     got %.*s\n", tsv_file, lines,
                            line, (int)n, p);
            }
            p += n;
            lines++;
        }
        CHECKF(*p == 0, "contract has extra lines after %zu: %.80s", lines, p);
        fclose(tsv);
    }
    CHECKF(mismatches == 0, "%s: %zu of %zu lines differ", tsv_file, mismatches, lines);
    free(got);
    dsv4_contract_free(c);
}

static const struct dsv4_tspec *spec_named(const struct dsv4_contract *c, const char *name)
{
    size_t i;
    int e;

    if (dsv4_contract_lookup(c, name, &i, &e))
        return NULL;
    return dsv4_contract_spec(c, i);
}

static void check_formats(void)
{
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;
    const struct dsv4_tspec *s;

    if (load_cfg("v4-pro-config.json", &cfg))
        return;
    /* NVFP4 artifact: trunk experts converted, MTP experts untouched (formats.md §1.4) */
    cfg.expert_fmt = DSV4_EXPERT_NVFP4;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), 0);
    if (!c)
        return;
    CHECK_INT(dsv4_contract_tensor_count(c), 285660);
    CHECK_INT(dsv4_contract_total_bytes(c), 913061485688ull);
    s = spec_named(c, "layers.7.ffn.experts.5.w1.scale");
    CHECK(s && s->dtype == DSV4_DTYPE_F8_E4M3 && s->shape[0] == 3072 && s->shape[1] == 448);
    CHECK(spec_named(c, "layers.7.ffn.experts.5.w1.weight_scale") == s);
    s = spec_named(c, "layers.60.ffn.experts.383.w2.weight_scale_2");
    CHECK(s && s->dtype == DSV4_DTYPE_F32 && s->scalar_any && s->params == 0);
    s = spec_named(c, "layers.0.ffn.experts.0.w2.weight");
    CHECK(s && s->dtype == DSV4_DTYPE_U8 && s->shape[1] == 1536 && s->logical_cols == 3072 &&
          s->params == 2ull * 7168 * 1536);
    s = spec_named(c, "mtp.0.ffn.experts.9.w3.scale");
    CHECK(s && s->dtype == DSV4_DTYPE_F8_E8M0 && s->shape[1] == 224 && s->cat == DSV4_CAT_MTP &&
          s->part == DSV4_CAT_ROUTED);
    CHECK(spec_named(c, "mtp.0.ffn.experts.9.w3.weight_scale_2") == NULL);
    CHECK(spec_named(c, "layers.0.ffn.experts.384.w1.weight") == NULL);
    CHECK(spec_named(c, "layers.0.ffn.experts.01.w1.weight") == NULL);
    CHECK(dsv4_contract_expert_fmt(c, 61) == DSV4_EXPERT_MXFP4);
    dsv4_contract_free(c);
    c = NULL;

    /* FP8 experts (base models): E4M3 payload, F32 per-128x128 scales, MTP too */
    cfg.expert_fmt = DSV4_EXPERT_FP8;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), 0);
    if (!c)
        return;
    s = spec_named(c, "layers.3.ffn.experts.2.w1.weight");
    CHECK(s && s->dtype == DSV4_DTYPE_F8_E4M3 && s->shape[0] == 3072 && s->shape[1] == 7168);
    s = spec_named(c, "mtp.0.ffn.experts.2.w2.scale");
    CHECK(s && s->dtype == DSV4_DTYPE_F32 && s->shape[0] == 56 && s->shape[1] == 24);
    CHECK_INT(dsv4_contract_tensor_count(c), 145116);
    /* categories and splits of a few tensors (DESIGN.md §2) */
    s = spec_named(c, "layers.2.attn.wq_b.weight");
    CHECK(s && s->split == DSV4_SPLIT_ROWS && s->split_units == 16 && s->cat == DSV4_CAT_ATTN);
    s = spec_named(c, "layers.2.attn.wo_b.scale");
    CHECK(s && s->split == DSV4_SPLIT_COLS && s->split_units == 16);
    s = spec_named(c, "layers.2.attn.indexer.weights_proj.weight");
    CHECK(s && s->split == DSV4_SPLIT_ROWS && s->split_units == 64);
    s = spec_named(c, "layers.2.attn.wkv.weight");
    CHECK(s && s->split == DSV4_SPLIT_REPLICATED);
    s = spec_named(c, "head.weight");
    CHECK(s && s->split == DSV4_SPLIT_VOCAB && s->cat == DSV4_CAT_EMBED);
    s = spec_named(c, "layers.9.ffn.shared_experts.w2.weight");
    CHECK(s && s->split == DSV4_SPLIT_REPLICATED && s->cat == DSV4_CAT_SHARED);
    s = spec_named(c, "mtp.0.e_proj.weight");
    CHECK(s && s->cat == DSV4_CAT_MTP && s->split == DSV4_SPLIT_REPLICATED);
    dsv4_contract_free(c);
}

/* Splits partition every tensor: per-rank shares sum to the whole. */
static void check_splits(const char *cfg_file)
{
    static const int ns[] = {1, 2, 3, 7, 8, 16};
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;

    if (load_cfg(cfg_file, &cfg) || dsv4_contract_build(&cfg, -1, &c)) {
        CHECK(0);
        return;
    }
    for (size_t k = 0; k < DSV4_ARRAY_LEN(ns); k++) {
        uint64_t sum = 0, psum = 0, want_p = 0;
        for (size_t i = 0; i < dsv4_contract_count(c); i++) {
            const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
            uint64_t inst = s->n_experts ? (uint64_t)s->n_experts : 1, b, p;
            want_p += inst * s->params;
            /* a replicated tensor is whole on every rank: count it once */
            int nr = s->split == DSV4_SPLIT_REPLICATED ? 1 : ns[k];
            for (int r = 0; r < nr; r++) {
                dsv4_tspec_rank_share(s, r, ns[k], &b, &p);
                sum += b;
                psum += p;
            }
        }
        CHECK_INT(sum, dsv4_contract_total_bytes(c));
        CHECK_INT(psum, want_p);
    }
    dsv4_contract_free(c);
}

/* ---------------------------------------------------------------- binding */

struct views {
    struct dsv4_tensor *t;
    const struct dsv4_tensor **p;
    char (*names)[DSV4_CONTRACT_NAME_MAX + 16];
    size_t n, cap;
};

static struct dsv4_tensor *add_view(struct views *v, const char *name, enum dsv4_dtype dt, int ndim,
                                    const int64_t *shape)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 1024;
        v->t = realloc(v->t, v->cap * sizeof(*v->t));
        v->p = realloc(v->p, v->cap * sizeof(*v->p));
        v->names = realloc(v->names, v->cap * sizeof(*v->names));
    }
    struct dsv4_tensor *t = &v->t[v->n];
    memset(t, 0, sizeof(*t));
    snprintf(v->names[v->n], sizeof(v->names[0]), "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    v->n++;
    return t;
}

static void fix_pointers(struct views *v)
{
    for (size_t i = 0; i < v->n; i++) {
        v->t[i].name = v->names[i];
        v->p[i] = &v->t[i];
    }
}

/* Views of every tensor of a contract (no data), as a checkpoint would list them. */
static void views_of(const struct dsv4_contract *c, struct views *v)
{
    for (size_t i = 0; i < dsv4_contract_count(c); i++) {
        const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
        for (int e = 0; e < (s->n_experts ? s->n_experts : 1); e++) {
            char name[DSV4_CONTRACT_NAME_MAX + 16];
            add_view(v, dsv4_tspec_name(s, e, name, sizeof(name)), s->dtype, s->ndim, s->shape);
        }
    }
    fix_pointers(v);
}

static struct dsv4_tensor *find_view(struct views *v, const char *name)
{
    for (size_t i = 0; i < v->n; i++)
        if (!strcmp(v->names[i], name))
            return &v->t[i];
    return NULL;
}

static size_t count_kind(const struct dsv4_binding *b, enum dsv4_problem k, const char *needle)
{
    size_t n = 0;

    for (size_t i = 0; i < dsv4_binding_problem_count(b); i++) {
        const char *line;
        if (dsv4_binding_problem(b, i, &line) == k && (!needle || strstr(line, needle)))
            n++;
    }
    return n;
}

static void check_binding(void)
{
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;
    struct dsv4_binding *b = NULL;
    struct views v = {0};
    int64_t shape[2];

    CHECK_INT(dsv4_mkmodel_preset("tiny", 1280, DSV4_EXPERT_NVFP4, &cfg), 0);
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), 0);
    if (!c)
        return;
    views_of(c, &v);
    CHECK_INT(v.n, dsv4_contract_tensor_count(c));
    CHECK_INT(dsv4_bind(&cfg, v.p, v.n, &b), 0);
    CHECK(b && dsv4_binding_problem_count(b) == 0);
    if (b) {
        const struct dsv4_tensor *t =
                dsv4_binding_find(b, "layers.1.ffn.experts.3.w2.weight_scale");
        CHECK(t && !strcmp(t->name, "layers.1.ffn.experts.3.w2.scale"));
        CHECK(dsv4_binding_find(b, "layers.1.attn.wq_a.weight") != NULL);
        CHECK(dsv4_binding_find(b, "layers.1.attn.nothing") == NULL);
    }
    dsv4_binding_free(b);
    b = NULL;

    /* every NVFP4 naming variant: .weight_scale, [] scalars, I8 payload */
    for (size_t i = 0; i < v.n; i++) {
        char *n = v.names[i];
        size_t len = strlen(n);
        if (!strstr(n, "layers.") || !strstr(n, ".experts."))
            continue;
        if (len > 6 && !strcmp(n + len - 6, ".scale") && (i % 2))
            snprintf(n + len - 6, 16, ".weight_scale");
        if (strstr(n, "_scale_2") || strstr(n, "input_scale"))
            v.t[i].ndim = (i % 3) ? 0 : 1;
        if (v.t[i].dtype == DSV4_DTYPE_U8 && (i % 5) == 0)
            v.t[i].dtype = DSV4_DTYPE_I8;
    }
    fix_pointers(&v);
    CHECK_INT(dsv4_bind(&cfg, v.p, v.n, &b), 0);
    CHECK(b && dsv4_binding_problem_count(b) == 0);
    dsv4_binding_free(b);
    b = NULL;

    /* every mismatch at once */
    struct dsv4_tensor *t;
    CHECK((t = find_view(&v, "layers.2.attn.wkv.weight")) != NULL);
    if (t)
        snprintf(v.names[t - v.t], sizeof(v.names[0]), "layers.2.attn.wkv.weigth"); /* rename */
    CHECK((t = find_view(&v, "layers.0.attn.kv_norm.weight")) != NULL);
    if (t)
        t->dtype = DSV4_DTYPE_F32; /* retype */
    CHECK((t = find_view(&v, "layers.3.ffn.gate.bias")) != NULL);
    if (t)
        t->shape[0] = 15; /* reshape */
    CHECK((t = find_view(&v, "mtp.0.ffn.experts.4.w1.scale")) != NULL);
    if (t)
        t->dtype = DSV4_DTYPE_F8_E4M3; /* MTP experts must stay MXFP4 */
    shape[0] = 7;
    add_view(&v, "layers.1.attn.extra", DSV4_DTYPE_F32, 1, shape); /* unexpected */
    CHECK((t = find_view(&v, "norm.weight")) != NULL);
    if (t) { /* delete */
        size_t k = (size_t)(t - v.t);
        memmove(&v.t[k], &v.t[k + 1], (v.n - k - 1) * sizeof(*v.t));
        memmove(&v.names[k], &v.names[k + 1], (v.n - k - 1) * sizeof(*v.names));
        v.n--;
    }
    fix_pointers(&v);
    CHECK_INT(dsv4_bind(&cfg, v.p, v.n, &b), DSV4_EMISMATCH);
    CHECK(b != NULL);
    if (b) {
        CHECK_INT(dsv4_binding_problem_count(b), 7);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_MISSING, "missing tensor norm.weight "), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_MISSING, "layers.2.attn.wkv.weight"), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_UNEXPECTED, "layers.2.attn.wkv.weigth"), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_UNEXPECTED, "layers.1.attn.extra"), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_DTYPE, "layers.0.attn.kv_norm.weight: F32"), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_DTYPE, "mtp.0.ffn.experts.4.w1.scale"), 1);
        CHECK_INT(count_kind(b, DSV4_PROBLEM_SHAPE, "layers.3.ffn.gate.bias: [15]"), 1);
        CHECK(strstr(dsv4_errmsg(), "2 missing, 2 unexpected, 2 wrong dtype, 1 wrong shape"));
        CHECK(dsv4_binding_find(b, "layers.0.attn.kv_norm.weight") == NULL);
    }
    dsv4_binding_free(b);
    b = NULL;

    /* both spellings of one scale: a duplicate */
    struct views v2 = {0};
    views_of(c, &v2);
    const struct dsv4_tensor *sc = find_view(&v2, "layers.0.ffn.experts.0.w1.scale");
    CHECK(sc != NULL);
    if (sc) {
        add_view(&v2, "layers.0.ffn.experts.0.w1.weight_scale", sc->dtype, sc->ndim, sc->shape);
        fix_pointers(&v2);
        CHECK_INT(dsv4_bind(&cfg, v2.p, v2.n, &b), DSV4_EMISMATCH);
        CHECK(b && dsv4_binding_problem_count(b) == 1 &&
              count_kind(b, DSV4_PROBLEM_DUPLICATE, NULL) == 1);
        dsv4_binding_free(b);
        b = NULL;
    }
    dsv4_contract_free(c);
    c = NULL;

    /* NVIDIA-style export: MTP experts NVFP4 too, detected from the names */
    struct views v3 = {0};
    CHECK_INT(dsv4_contract_build(&cfg, DSV4_EXPERT_NVFP4, &c), 0);
    if (c) {
        views_of(c, &v3);
        CHECK_INT(dsv4_bind(&cfg, v3.p, v3.n, &b), 0);
        CHECK(b && dsv4_contract_expert_fmt(dsv4_binding_contract(b), 4) == DSV4_EXPERT_NVFP4);
        dsv4_binding_free(b);
        dsv4_contract_free(c);
    }
    free(v.t), free(v.p), free(v.names);
    free(v2.t), free(v2.p), free(v2.names);
    free(v3.t), free(v3.p), free(v3.names);
}

/* ---------------------------------------------------------------- plan */

static void check_plan(void)
{
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;
    struct dsv4_plan *p = NULL;

    if (load_cfg("v4-pro-config.json", &cfg) || dsv4_contract_build(&cfg, -1, &c) ||
        dsv4_plan_from_contract(c, 8, &p)) {
        CHECK(0);
        dsv4_contract_free(c);
        return;
    }
    /* model.md §7: 1,598.8 B params (1,573.0 B without MTP), 49.8 B active */
    CHECKF(p->total_params > 1.55e12 && p->total_params < 1.65e12, "%llu",
           (unsigned long long)p->total_params);
    CHECKF(fabs(p->total_params / 1e9 - 1598.84) < 0.01, "%.3f", p->total_params / 1e9);
    CHECKF(fabs(p->total_params_no_mtp / 1e9 - 1573.00) < 0.01, "%.3f",
           p->total_params_no_mtp / 1e9);
    CHECKF(p->active_params > 49.0e9 && p->active_params < 50.0e9, "%.3f B",
           p->active_params / 1e9);
    CHECK_INT(p->total_bytes, 864704792696ull);
    /* §7.1: 5,511 B/token (FP8 main + FP8 index), fixed 4.42 MiB + 17.8 MiB */
    CHECKF(fabs(p->kv_bytes_per_token - (30 * (584 + 132) / 4.0 + 31 * 584 / 128.0)) < 1e-9, "%f",
           p->kv_bytes_per_token);
    CHECK_INT(p->window_bytes, 62ull * 128 * 584);
    CHECK_INT(p->compressor_bytes, 30ull * 80 * 1024 + 31ull * 512 * 1024);
    CHECK_INT(p->n_csa, 30);
    CHECK_INT(p->n_hca, 31);
    /* per-rank sums == totals, per category (replicated bytes counted once);
     * §7.3: ~95.7 GiB of routed experts per GPU */
    for (int k = 0; k < DSV4_CAT_COUNT; k++) {
        uint64_t sum = p->ranks[0].replicated[k];
        for (int r = 0; r < 8; r++) {
            sum += p->ranks[r].bytes[k] - p->ranks[r].replicated[k];
            CHECK_INT(p->ranks[r].replicated[k], p->ranks[0].replicated[k]);
        }
        CHECK_INT(sum, p->bytes[k]);
    }
    for (int r = 0; r < 8; r++) {
        uint64_t sum = 0;
        for (int k = 0; k < DSV4_CAT_COUNT; k++)
            sum += p->ranks[r].bytes[k];
        CHECK_INT(sum, p->ranks[r].total);
    }
    CHECKF(fabs(p->ranks[3].bytes[DSV4_CAT_ROUTED] / 1073741824.0 - 95.70) < 0.01, "%f",
           p->ranks[3].bytes[DSV4_CAT_ROUTED] / 1073741824.0);
    dsv4_plan_fit(p, 141000000000ull, 4ull << 30);
    CHECK(p->kv_tokens > 1000000 && p->kv_tokens < 10000000);
    dsv4_plan_fit(p, 100ull << 30, 4ull << 30); /* weights alone do not fit */
    CHECK_INT(p->kv_tokens, 0);
    dsv4_plan_free(p);
    dsv4_contract_free(c);

    /* Flash: 13.8 B active, 290.9 B total */
    c = NULL;
    p = NULL;
    if (load_cfg("v4-flash-config.json", &cfg) || dsv4_contract_build(&cfg, -1, &c) ||
        dsv4_plan_from_contract(c, 3, &p)) {
        CHECK(0);
        dsv4_contract_free(c);
        return;
    }
    CHECKF(fabs(p->active_params / 1e9 - 13.80) < 0.01, "%.3f", p->active_params / 1e9);
    CHECKF(fabs(p->total_params / 1e9 - 290.94) < 0.01, "%.3f", p->total_params / 1e9);
    CHECK_INT(p->n_swa, 3);
    dsv4_plan_free(p);
    dsv4_contract_free(c);

    uint64_t sz = 0;
    CHECK_INT(dsv4_plan_parse_size("288GiB", &sz), 0);
    CHECK_INT(sz, 288ull << 30);
    CHECK_INT(dsv4_plan_parse_size("141GB", &sz), 0);
    CHECK_INT(sz, 141000000000ull);
    CHECK(dsv4_plan_parse_size("12 parsecs", &sz) != 0);
    CHECK(dsv4_plan_parse_size("-3G", &sz) != 0);
}

/*
 * Which rows each rank holds, not only that the parts add up: V4-Pro on 8
 * ranks (model.md §7.3: 48 experts and 16,160 vocab rows per GPU, 2 of 16
 * output groups), an uneven vocab on 3 ranks, and the per-GPU GiB of §7.3.
 */
static void check_rank_layout(void)
{
    struct dsv4_config cfg;
    struct dsv4_contract *c = NULL;
    struct dsv4_plan *p = NULL;
    const struct dsv4_tspec *s;
    int64_t b, e;
    uint64_t bytes, params;

    if (load_cfg("v4-pro-config.json", &cfg) || dsv4_contract_build(&cfg, -1, &c)) {
        CHECK(0);
        return;
    }
    for (int r = 0; r < 8; r++) {
        dsv4_contract_split_range(384, r, 8, &b, &e);
        CHECK(b == 48 * r && e == 48 * (r + 1));
        dsv4_contract_split_range_vocab(129280, r, 8, &b, &e);
        CHECK(b == 16160 * r && e == 16160 * (r + 1));
    }
    /* 3 ranks: chunks of ceil(129280/3) = 43094, the last one 43092 rows */
    dsv4_contract_split_range_vocab(129280, 2, 3, &b, &e);
    CHECK(b == 86188 && e == 129280);
    s = spec_named(c, "embed.weight");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 2, 3, &bytes, &params);
        CHECK_INT(bytes, 43092ull * 7168 * 2);
        CHECK_INT(params, 43092ull * 7168);
        dsv4_tspec_rank_share(s, 0, 3, &bytes, &params);
        CHECK_INT(bytes, 43094ull * 7168 * 2);
    }
    /* wq_b [65536, 1536]: 2 of 16 groups = 8192 rows; its scale 64 of 512 rows */
    s = spec_named(c, "layers.5.attn.wq_b.weight");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 7, 8, &bytes, &params);
        CHECK_INT(bytes, 8192ull * 1536);
    }
    s = spec_named(c, "layers.5.attn.wq_b.scale");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 7, 8, &bytes, &params);
        CHECK_INT(bytes, 64ull * 12);
        CHECK_INT(params, 0);
    }
    /* wo_b [7168, 16384] split by columns: 2048 of them */
    s = spec_named(c, "layers.5.attn.wo_b.weight");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 1, 8, &bytes, &params);
        CHECK_INT(bytes, 7168ull * 2048);
    }
    /* one routed expert tensor kind: 48 whole experts of [3072, 3584] I8 */
    s = spec_named(c, "layers.5.ffn.experts.0.w1.weight");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 4, 8, &bytes, &params);
        CHECK_INT(bytes, 48ull * 3072 * 3584);
        CHECK_INT(params, 48ull * 3072 * 7168);
    }
    s = spec_named(c, "layers.5.attn.wkv.weight");
    CHECK(s != NULL);
    if (s) {
        dsv4_tspec_rank_share(s, 4, 8, &bytes, &params);
        CHECK_INT(bytes, 512ull * 7168);
    }

    /* §7.3 per GPU: routed 95.70, attention split 2.07 + replicated 2.29,
     * embed+head 0.43, shared 3.75, total ~106.7 GiB; experts 48r..48r+47 */
    CHECK_INT(dsv4_plan_from_contract(c, 8, &p), 0);
    if (p) {
        const double G = 1073741824.0;
        for (int r = 0; r < 8; r++) {
            const struct dsv4_plan_rank *k = &p->ranks[r];
            CHECK(k->experts_begin == 48 * r && k->experts_end == 48 * (r + 1));
            CHECKF(fabs((k->bytes[DSV4_CAT_ATTN] - k->replicated[DSV4_CAT_ATTN]) / G - 2.07) <
                           0.005,
                   "rank %d attention split %.3f GiB", r,
                   (k->bytes[DSV4_CAT_ATTN] - k->replicated[DSV4_CAT_ATTN]) / G);
            CHECKF(fabs(k->replicated[DSV4_CAT_ATTN] / G - 2.29) < 0.005, "%.3f",
                   k->replicated[DSV4_CAT_ATTN] / G);
            CHECKF(fabs(k->bytes[DSV4_CAT_EMBED] / G - 0.43) < 0.005, "%.3f",
                   k->bytes[DSV4_CAT_EMBED] / G);
            CHECK_INT(k->replicated[DSV4_CAT_EMBED], 0);
            CHECKF(fabs(k->bytes[DSV4_CAT_SHARED] / G - 3.75) < 0.005, "%.3f",
                   k->bytes[DSV4_CAT_SHARED] / G);
            CHECKF(fabs(k->total / G - 106.7) < 0.05, "%.3f", k->total / G);
        }
        /* KV fit: sums saturate instead of wrapping around */
        dsv4_plan_fit(p, UINT64_MAX, UINT64_MAX);
        CHECK_INT(p->kv_tokens, 0);
        dsv4_plan_fit(p, 17000000000000000000ull, 17000000000000000000ull);
        CHECK_INT(p->kv_tokens, 0);
        dsv4_plan_fit(p, UINT64_MAX, 0);
        CHECK(p->kv_tokens > 1000000000000000ll);
        dsv4_plan_free(p);
    }
    dsv4_contract_free(c);

    /* NVFP4 trunk (blocks of 16) with MXFP4 MTP experts (blocks of 32): a
     * hidden size of 48 fits the trunk only, and is refused with a message */
    cfg.hidden_size = 48;
    cfg.expert_fmt = DSV4_EXPERT_NVFP4;
    c = NULL;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), DSV4_EINVAL);
    CHECK(c == NULL && strstr(dsv4_errmsg(), "multiples of 32"));
    CHECK_INT(dsv4_contract_build(&cfg, DSV4_EXPERT_NVFP4, &c), 0);
    dsv4_contract_free(c);
    cfg.expert_fmt = DSV4_EXPERT_MXFP4;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), DSV4_EINVAL);
    cfg.expert_fmt = DSV4_EXPERT_FP8;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), 0);
    dsv4_contract_free(c);

    /* the parser's largest dimensions over 256 layers: more than 2^64 bytes,
     * refused instead of wrapping the sums */
    cfg.hidden_size = 1 << 20;
    cfg.moe_intermediate_size = 1 << 20;
    cfg.n_routed_experts = 1 << 16;
    cfg.num_hidden_layers = DSV4_MAX_LAYERS - 1;
    cfg.num_nextn_predict_layers = 1;
    cfg.n_compress_ratios = DSV4_MAX_LAYERS;
    for (int l = 0; l < DSV4_MAX_LAYERS; l++)
        cfg.compress_ratios[l] = 0;
    c = NULL;
    CHECK_INT(dsv4_contract_build(&cfg, -1, &c), DSV4_ERANGE);
    CHECK(c == NULL && strstr(dsv4_errmsg(), "2^60 bytes"));
}

int main(void)
{
    check_inventory("v4-pro-config.json", "v4-pro-tensor-inventory.tsv", 145116, 864704792696ull);
    check_inventory("v4-flash-config.json", "v4-flash-tensor-inventory.tsv", 69187,
                    159609485896ull);
    check_formats();
    check_splits("v4-pro-config.json");
    check_splits("v4-flash-config.json");
    check_binding();
    check_plan();
    check_rank_layout();
    TEST_DONE();
}
