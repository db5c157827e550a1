/*
 * convert_ckpt.c - dsv4_convert_ckpt(): an upstream MXFP4 DeepSeek-V4
 * checkpoint directory -> the NVFP4 artifact layout (formats.md §1.2-1.4).
 *
 * Steps: validate the source (config.json against every routed-expert
 * tensor, nothing already NVFP4, every shard present), then for each shard
 * not already complete in DST write "<shard>.tmp" through the streaming
 * writer and rename it; then config.json, the other files, the index; then,
 * if asked, verify DST against SRC.
 *
 * Why this shape:
 *  - Bounded memory.  Passthrough tensors are written straight from the
 *    source mapping in 64 MiB pieces; one expert matrix at a time is
 *    converted into a buffer sized for the largest one.  The writer accepts
 *    tensors in any order, so the file layout (safetensors' own: dtype rank
 *    descending, then name, which also keeps views aligned) is independent of
 *    the order in which bytes are produced.
 *  - w1/w3 share their global scale (vLLM fuses them into one GEMM and uses
 *    w1's weight_scale_2): the partner is read from the source checkpoint
 *    wherever it lives, so shards stay independent and resumable.
 *  - Crash safety comes from the writer (temporary name + fsync + rename); a
 *    shard under its final name is complete, and its __metadata__ records the
 *    mode (and its key set the naming) so a resumed run never mixes them.
 *  - Verification re-opens DST as a checkpoint and compares it with SRC:
 *    dequantized values of converted tensors (through the reference
 *    dequantizers of kernels/formats.h, not the conversion code), bytes of
 *    every other tensor, the key count, the sidecars, and binds DST to the
 *    model contract (engine/io/contract.h) of its own config.json.
 */
#include "tools/convert.h"

#include "engine/io/config.h"
#include "engine/io/contract.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "engine/io/safetensors.h"
#include "engine/io/strbuf.h"
#include "kernels/cpu/cpu.h"
#include "kernels/formats.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIECE           (64u << 20) /* passthrough write size */
#define ROW_CHUNK       16          /* rows per pool task */
#define META_MODE       "dsv4_convert"
#define META_VERSION    "dsv4_convert_version"
#define CONVERT_VERSION "1"
#define MAX_CONFIG      (16u << 20)

/* ---------------------------------------------------------------- names */

/* out = a + sep + b; DSV4_ERANGE when it does not fit. */
static int path_cat(char *out, size_t n, const char *a, const char *sep, const char *b)
{
    int k = snprintf(out, n, "%s%s%s", a, sep, b);
    if (k < 0 || (size_t)k >= n)
        return dsv4_error(DSV4_ERANGE, "path too long: %s%s%s", a, sep, b);
    return 0;
}

static const char *parse_uint(const char *p, int *out)
{
    long v = 0;
    const char *q = p;
    while (*q >= '0' && *q <= '9' && q - p < 7)
        v = v * 10 + (*q++ - '0');
    if (q == p || (*q >= '0' && *q <= '9'))
        return NULL;
    *out = (int)v;
    return q;
}

/*
 * Recognises "layers.<L>.ffn.experts.<E>.w<Z>.<suffix>" (trunk routed
 * experts; mtp.* never matches) and returns the suffix, or NULL.
 */
static const char *expert_name(const char *name, int *layer, int *expert, int *z)
{
    const char *p = name;
    if (strncmp(p, "layers.", 7))
        return NULL;
    if (!(p = parse_uint(p + 7, layer)) || strncmp(p, ".ffn.experts.", 13))
        return NULL;
    if (!(p = parse_uint(p + 13, expert)) || strncmp(p, ".w", 2))
        return NULL;
    if (p[2] < '1' || p[2] > '3' || p[3] != '.')
        return NULL;
    *z = p[2] - '0';
    return p + 4;
}

/* safetensors' serialization order: dtype rank descending (its Dtype enum). */
static int dtype_rank(enum dsv4_dtype dt)
{
    static const enum dsv4_dtype order[] = {
            DSV4_DTYPE_BOOL,    DSV4_DTYPE_U8,      DSV4_DTYPE_I8,  DSV4_DTYPE_F8_E5M2,
            DSV4_DTYPE_F8_E4M3, DSV4_DTYPE_F8_E8M0, DSV4_DTYPE_I16, DSV4_DTYPE_U16,
            DSV4_DTYPE_F16,     DSV4_DTYPE_BF16,    DSV4_DTYPE_I32, DSV4_DTYPE_U32,
            DSV4_DTYPE_F32,     DSV4_DTYPE_F64,     DSV4_DTYPE_I64, DSV4_DTYPE_U64};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(order); i++)
        if (order[i] == dt)
            return (int)i;
    return -1;
}

/* ---------------------------------------------------------------- plan */

/* One converted expert matrix <p> (layers.L.ffn.experts.E.wZ). */
struct unit {
    char prefix[80];
    char nv_scale[96]; /* <prefix>.weight_scale */
    int layer, expert, z;
    int64_t rows, cols;                /* logical [out, in] */
    const struct dsv4_tensor *w, *s;   /* source */
    const struct dsv4_tensor *pw, *ps; /* w1 <-> w3 partner, NULL for w2 */
    const char *wshard, *sshard;       /* source shard file names */
};

struct ent {
    const char *name; /* points into the source or into names[] */
    enum dsv4_dtype dtype;
    int ndim;
    int64_t shape[DSV4_MAX_DIMS];
    uint64_t nbytes;
};

struct conv {
    const char *src, *dst;
    const struct dsv4_convert_opts *opts;
    struct dsv4_convert_report *rep;
    struct dsv4_ckpt *in;
    struct dsv4_config cfg;
    struct dsv4_pool *pool;
    int nthreads;
    bool nv; /* NVIDIA naming */
    struct unit *units;
    size_t nunits;
    int32_t *unit_of; /* [L][E][3] -> unit index or -1 */
    uint8_t *ow, *os; /* conversion buffers, largest unit */
    uint64_t max_w, max_s;
    struct dsv4_convert_stats *tstats; /* per thread */
    double t0;
    struct dsv4_convert_progress prog;
};

static void progress(struct conv *c, const char *phase)
{
    if (!c->opts->progress)
        return;
    c->prog.phase = phase;
    c->prog.elapsed_s = dsv4_now() - c->t0;
    c->opts->progress(c->opts->progress_arg, &c->prog);
}

static struct unit *unit_at(struct conv *c, int layer, int expert, int z)
{
    int64_t i = ((int64_t)layer * c->cfg.n_routed_experts + expert) * 3 + (z - 1);
    return c->unit_of[i] < 0 ? NULL : &c->units[c->unit_of[i]];
}

static const char *shard_name(const struct dsv4_st_file *f)
{
    const char *p = dsv4_st_path(f), *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int expect_shape(const struct dsv4_tensor *t, int64_t d0, int64_t d1, const char *why)
{
    char got[64];
    if (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1)
        return 0;
    return dsv4_error(DSV4_EMISMATCH,
                      "tensor %s has shape %s but config.json implies [%lld, %lld] (%s)", t->name,
                      dsv4_shape_str(t->shape, t->ndim, got, sizeof(got)), (long long)d0,
                      (long long)d1, why);
}

/* Checks the source against its config and builds the unit table. */
static int scan_source(struct conv *c)
{
    const struct dsv4_config *cfg = &c->cfg;
    int L = cfg->num_hidden_layers, E = cfg->n_routed_experts;
    int64_t D = cfg->hidden_size, I = cfg->moe_intermediate_size;
    size_t n = dsv4_ckpt_count(c->in);

    if (cfg->expert_fmt == DSV4_EXPERT_NVFP4)
        return dsv4_error(DSV4_EINVAL,
                          "%s: source is already NVFP4 (config.json quantization_config."
                          "moe_quant_algo = \"%s\"); nothing to convert",
                          c->src, cfg->moe_quant_algo);
    if (cfg->expert_fmt != DSV4_EXPERT_MXFP4)
        return dsv4_error(DSV4_ENOTSUP, "%s: routed experts are %s, only MXFP4 converts", c->src,
                          dsv4_expert_fmt_name(cfg->expert_fmt));
    if (D % 32 || I % 32)
        return dsv4_error(DSV4_EMISMATCH,
                          "%s: hidden_size %lld and moe_intermediate_size %lld must be multiples "
                          "of 32 for MXFP4",
                          c->src, (long long)D, (long long)I);
    c->unit_of = malloc(sizeof(int32_t) * (size_t)L * (size_t)E * 3);
    c->units = calloc((size_t)L * (size_t)E * 3 + 1, sizeof(struct unit));
    if (!c->unit_of || !c->units)
        return dsv4_error(DSV4_ENOMEM, "unit table for %d layers x %d experts", L, E);
    memset(c->unit_of, 0xFF, sizeof(int32_t) * (size_t)L * (size_t)E * 3);

    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_ckpt_tensor(c->in, i);
        int layer, expert, z;
        const char *suf = expert_name(t->name, &layer, &expert, &z);
        if (!suf)
            continue;
        bool is_w = !strcmp(suf, "weight"), is_s = !strcmp(suf, "scale");
        if (!strcmp(suf, "weight_scale_2") || !strcmp(suf, "weight_scale") ||
            !strcmp(suf, "input_scale") || (is_s && t->dtype == DSV4_DTYPE_F8_E4M3))
            return dsv4_error(DSV4_EINVAL,
                              "%s: source is already NVFP4 (tensor %s, %s); nothing to convert",
                              c->src, t->name, dsv4_dtype_name(t->dtype));
        if (!is_w && !is_s)
            continue; /* unknown expert sidecar: passed through */
        if (layer >= L || expert >= E)
            return dsv4_error(DSV4_EMISMATCH,
                              "%s: tensor %s does not fit config.json (num_hidden_layers %d, "
                              "n_routed_experts %d)",
                              c->src, t->name, L, E);
        int64_t idx = ((int64_t)layer * E + expert) * 3 + (z - 1);
        if (c->unit_of[idx] < 0) {
            struct unit *u = &c->units[c->nunits];
            c->unit_of[idx] = (int32_t)c->nunits++;
            u->layer = layer;
            u->expert = expert;
            u->z = z;
            u->rows = z == 2 ? D : I;
            u->cols = z == 2 ? I : D;
            snprintf(u->prefix, sizeof(u->prefix), "layers.%d.ffn.experts.%d.w%d", layer, expert,
                     z);
            snprintf(u->nv_scale, sizeof(u->nv_scale), "%s.weight_scale", u->prefix);
        }
        struct unit *u = &c->units[c->unit_of[idx]];
        if (is_w) {
            if (t->dtype != DSV4_DTYPE_I8 && t->dtype != DSV4_DTYPE_U8)
                return dsv4_error(DSV4_EMISMATCH, "%s: tensor %s is %s, expected I8 packed E2M1",
                                  c->src, t->name, dsv4_dtype_name(t->dtype));
            int rc = expect_shape(t, u->rows, u->cols / 2, "packed E2M1, 2 per byte");
            if (rc)
                return dsv4_error_ctx(rc, "%s", c->src);
            u->w = t;
            u->wshard = dsv4_ckpt_shard_of(c->in, t->name);
        } else {
            if (t->dtype != DSV4_DTYPE_F8_E8M0)
                return dsv4_error(DSV4_EMISMATCH, "%s: tensor %s is %s, expected F8_E8M0 scales",
                                  c->src, t->name, dsv4_dtype_name(t->dtype));
            int rc = expect_shape(t, u->rows, u->cols / 32, "one E8M0 scale per 32");
            if (rc)
                return dsv4_error_ctx(rc, "%s", c->src);
            u->s = t;
            u->sshard = dsv4_ckpt_shard_of(c->in, t->name);
        }
    }
    /* every MoE layer has all its experts, each with weight and scale */
    for (int l = cfg->first_k_dense_replace; l < L; l++)
        for (int e = 0; e < E; e++)
            for (int z = 1; z <= 3; z++) {
                struct unit *u = unit_at(c, l, e, z);
                if (!u || !u->w || !u->s)
                    return dsv4_error(DSV4_EMISMATCH,
                                      "%s: tensor layers.%d.ffn.experts.%d.w%d.%s is missing "
                                      "(config.json: %d layers x %d routed experts)",
                                      c->src, l, e, z, u && u->w ? "scale" : "weight", L, E);
            }
    for (size_t i = 0; i < c->nunits; i++) {
        struct unit *u = &c->units[i];
        if (!u->w || !u->s)
            return dsv4_error(DSV4_EMISMATCH, "%s: %s has no %s", c->src, u->prefix,
                              u->w ? ".scale" : ".weight");
        if (u->z != 2) {
            struct unit *p = unit_at(c, u->layer, u->expert, 4 - u->z);
            if (!p || !p->w || !p->s)
                return dsv4_error(DSV4_EMISMATCH, "%s: %s has no w%d partner", c->src, u->prefix,
                                  4 - u->z);
            u->pw = p->w;
            u->ps = p->s;
        }
        c->max_w = DSV4_MAX(c->max_w, u->w->nbytes);
        c->max_s = DSV4_MAX(c->max_s, (uint64_t)(u->rows * (u->cols / 16)));
    }
    return 0;
}

/* Is t the .weight or .scale of a unit?  Returns the unit and which. */
static struct unit *unit_of_tensor(struct conv *c, const char *name, bool *is_w)
{
    int layer, expert, z;
    const char *suf = expert_name(name, &layer, &expert, &z);
    if (!suf || layer >= c->cfg.num_hidden_layers || expert >= c->cfg.n_routed_experts)
        return NULL;
    bool w = !strcmp(suf, "weight"), s = !strcmp(suf, "scale");
    if (!w && !s)
        return NULL;
    *is_w = w;
    return unit_at(c, layer, expert, z);
}

static int cmp_ent(const void *a, const void *b)
{
    const struct ent *x = a, *y = b;
    int rx = dtype_rank(x->dtype), ry = dtype_rank(y->dtype);
    if (rx != ry)
        return ry - rx;
    return strcmp(x->name, y->name);
}

/* ndim 0 (a scalar) and 1 use d0 = 1 and d0 only. */
static void set_ent(struct ent *e, const char *name, enum dsv4_dtype dt, int ndim, int64_t d0,
                    int64_t d1)
{
    memset(e, 0, sizeof(*e));
    e->name = name;
    e->dtype = dt;
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->nbytes = (uint64_t)d0 * (ndim > 1 ? (uint64_t)d1 : 1) * dsv4_dtype_size(dt);
}

/*
 * Output tensors of shard f, in file order.  names receives the sidecar
 * names (owned, 2 per converted weight).  Returns the entry count.
 */
static int plan_shard(struct conv *c, const struct dsv4_st_file *f, struct ent **out_ents,
                      char ***out_names, size_t *out_n, size_t *out_nnames)
{
    size_t n = dsv4_st_count(f), k = 0, kn = 0;
    struct ent *ents = calloc(3 * n + 1, sizeof(*ents));
    char **names = calloc(2 * n + 1, sizeof(char *));
    if (!ents || !names) {
        free(ents);
        free(names);
        return dsv4_error(DSV4_ENOMEM, "plan of %zu tensors", n);
    }
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        bool is_w;
        struct unit *u = unit_of_tensor(c, t->name, &is_w);
        if (!u) {
            set_ent(&ents[k], t->name, t->dtype, 0, 1, 1);
            ents[k].ndim = t->ndim;
            memcpy(ents[k].shape, t->shape, sizeof(t->shape));
            ents[k++].nbytes = t->nbytes;
            continue;
        }
        if (!is_w) {
            set_ent(&ents[k++], c->nv ? u->nv_scale : t->name, DSV4_DTYPE_F8_E4M3, 2, u->rows,
                    u->cols / 16);
            continue;
        }
        set_ent(&ents[k++], t->name, DSV4_DTYPE_U8, 2, u->rows, u->cols / 2);
        static const char *const side[2] = {".weight_scale_2", ".input_scale"};
        for (int j = 0; j < 2; j++) {
            size_t len = strlen(u->prefix) + strlen(side[j]) + 1;
            names[kn] = malloc(len);
            if (!names[kn]) {
                for (size_t q = 0; q < kn; q++)
                    free(names[q]);
                free(names);
                free(ents);
                return dsv4_error(DSV4_ENOMEM, "sidecar name");
            }
            snprintf(names[kn], len, "%s%s", u->prefix, side[j]);
            set_ent(&ents[k++], names[kn++], DSV4_DTYPE_F32, c->nv ? 0 : 1, 1, 1);
        }
    }
    qsort(ents, k, sizeof(*ents), cmp_ent);
    *out_ents = ents;
    *out_names = names;
    *out_n = k;
    *out_nnames = kn;
    return 0;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ---------------------------------------------------------------- conversion */

struct amax_job {
    const struct dsv4_tensor *w, *s;
    int64_t cols, rows;
    float *tmax; /* per thread */
};

static void amax_fn(void *arg, int64_t i, int thread)
{
    struct amax_job *j = arg;
    int64_t r0 = i * ROW_CHUNK, nr = DSV4_MIN(ROW_CHUNK, j->rows - r0);
    const uint8_t *w = (const uint8_t *)j->w->data + r0 * (j->cols / 2);
    const uint8_t *s = (const uint8_t *)j->s->data + r0 * (j->cols / 32);
    j->tmax[thread] = fmaxf(j->tmax[thread], dsv4_convert_amax(w, s, j->cols, nr));
}

static float tensor_amax(struct conv *c, const struct dsv4_tensor *w, const struct dsv4_tensor *s,
                         int64_t rows, int64_t cols)
{
    float tmax[256] = {0}, m = 0.0f;
    struct amax_job j = {w, s, cols, rows, tmax};
    DSV4_ASSERT(c->nthreads <= 256);
    dsv4_pool_run(c->pool, amax_fn, &j, (rows + ROW_CHUNK - 1) / ROW_CHUNK);
    for (int t = 0; t < c->nthreads; t++)
        m = fmaxf(m, tmax[t]);
    return m;
}

struct conv_job {
    struct conv *c;
    const struct unit *u;
    int m;
    float scale2;
};

static void conv_fn(void *arg, int64_t i, int thread)
{
    struct conv_job *j = arg;
    const struct unit *u = j->u;
    int64_t r0 = i * ROW_CHUNK, nr = DSV4_MIN(ROW_CHUNK, u->rows - r0);
    const uint8_t *w = (const uint8_t *)u->w->data + r0 * (u->cols / 2);
    const uint8_t *s = (const uint8_t *)u->s->data + r0 * (u->cols / 32);
    uint8_t *ow = j->c->ow + r0 * (u->cols / 2), *os = j->c->os + r0 * (u->cols / 16);
    if (j->c->opts->mode == DSV4_CONVERT_LOSSLESS)
        dsv4_convert_lossless_rows(w, s, u->cols, nr, j->m, ow, os, &j->c->tstats[thread]);
    else
        dsv4_convert_amax_rows(w, s, u->cols, nr, j->scale2, ow, os, &j->c->tstats[thread]);
}

/* Converts unit u into c->ow / c->os; *scale2 receives its global scale. */
static int convert_unit(struct conv *c, const struct unit *u, float *scale2)
{
    int32_t ka = INT32_MIN, kb = INT32_MIN;
    int rc = dsv4_convert_scan(u->s->data, (int64_t)u->s->nbytes, &ka);
    if (rc)
        return dsv4_error_ctx(rc, "%s: %s", c->src, u->s->name);
    if (u->ps && (rc = dsv4_convert_scan(u->ps->data, (int64_t)u->ps->nbytes, &kb)))
        return dsv4_error_ctx(rc, "%s: %s", c->src, u->ps->name);
    struct conv_job j = {c, u, 0, 1.0f};
    if (c->opts->mode == DSV4_CONVERT_LOSSLESS) {
        j.m = dsv4_convert_lossless_exp(ka, kb);
        j.scale2 = dsv4_convert_pow2(j.m);
    } else {
        float a = tensor_amax(c, u->w, u->s, u->rows, u->cols);
        float b = u->pw ? tensor_amax(c, u->pw, u->ps, u->rows, u->cols) : 0.0f;
        j.scale2 = dsv4_convert_amax_scale2(a, b);
    }
    dsv4_pool_run(c->pool, conv_fn, &j, (u->rows + ROW_CHUNK - 1) / ROW_CHUNK);
    *scale2 = j.scale2;
    return 0;
}

static int write_piecewise(struct dsv4_st_writer *w, const char *name, const void *data,
                           uint64_t nbytes)
{
    const uint8_t *p = data;
    do {
        size_t k = (size_t)DSV4_MIN(nbytes, (uint64_t)PIECE);
        int rc = dsv4_st_writer_write(w, name, p, k);
        if (rc)
            return rc;
        p += k;
        nbytes -= k;
    } while (nbytes);
    return 0;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Writes one output shard (the source file f) to dst/<name>. */
static int write_shard(struct conv *c, const struct dsv4_st_file *f, const char *path,
                       const struct ent *ents, size_t nents)
{
    struct dsv4_st_writer *w = NULL;
    const char *name = shard_name(f);
    int rc = dsv4_st_writer_open(path, &w);
    if (rc)
        return dsv4_error_ctx(rc, "creating %s", path);

    /* metadata: the source's, then the format and the conversion mode */
    bool have_format = false;
    for (size_t i = 0; i < dsv4_st_metadata_count(f) && !rc; i++) {
        const char *k, *v;
        dsv4_st_metadata_at(f, i, &k, &v);
        if (!strcmp(k, META_MODE) || !strcmp(k, META_VERSION))
            continue;
        if (!strcmp(k, "format")) {
            have_format = true;
            v = "pt";
        }
        rc = dsv4_st_writer_metadata(w, k, v);
    }
    if (!rc && !have_format)
        rc = dsv4_st_writer_metadata(w, "format", "pt");
    if (!rc)
        rc = dsv4_st_writer_metadata(w, META_MODE, dsv4_convert_mode_name(c->opts->mode));
    if (!rc)
        rc = dsv4_st_writer_metadata(w, META_VERSION, CONVERT_VERSION);
    for (size_t i = 0; i < nents && !rc; i++)
        rc = dsv4_st_writer_declare(w, ents[i].name, ents[i].dtype, ents[i].ndim, ents[i].shape);
    if (!rc)
        rc = dsv4_st_writer_begin(w);
    if (rc)
        goto fail;

    /* passthrough tensors straight from the mapping */
    size_t n = dsv4_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        bool is_w;
        if (unit_of_tensor(c, t->name, &is_w))
            continue;
        if ((rc = write_piecewise(w, t->name, t->data, t->nbytes)))
            goto fail;
        c->rep->passthrough++;
        c->prog.tensors_done++;
        c->prog.bytes_done += t->nbytes;
        progress(c, "convert");
    }
    /* converted experts, one at a time */
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        bool is_w;
        struct unit *u = unit_of_tensor(c, t->name, &is_w);
        if (!u)
            continue;
        /* a unit is converted once per shard: at its weight, or at its scale
         * when the weight lives in another shard */
        if (!is_w && !strcmp(u->wshard, name))
            continue;
        float scale2;
        if ((rc = convert_unit(c, u, &scale2)))
            goto fail;
        uint64_t done = 0;
        if (!strcmp(u->wshard, name)) {
            char nm[128];
            float one = 1.0f;
            rc = dsv4_st_writer_write(w, u->w->name, c->ow, u->w->nbytes);
            snprintf(nm, sizeof(nm), "%s.weight_scale_2", u->prefix);
            if (!rc)
                rc = dsv4_st_writer_write(w, nm, &scale2, 4);
            snprintf(nm, sizeof(nm), "%s.input_scale", u->prefix);
            if (!rc)
                rc = dsv4_st_writer_write(w, nm, &one, 4);
            done += u->w->nbytes + 8;
            c->rep->converted++;
        }
        if (!rc && !strcmp(u->sshard, name)) {
            rc = dsv4_st_writer_write(w, c->nv ? u->nv_scale : u->s->name, c->os,
                                      (size_t)(u->rows * (u->cols / 16)));
            done += (uint64_t)(u->rows * (u->cols / 16));
        }
        if (rc)
            goto fail;
        c->prog.tensors_done++;
        c->prog.bytes_done += done;
        progress(c, "convert");
    }
    rc = dsv4_st_writer_commit(w);
    w = NULL;
    if (rc)
        return dsv4_error_ctx(rc, "finishing %s", path);
    return 0;
fail:
    dsv4_st_writer_abort(w);
    return dsv4_error_ctx(rc, "writing %s", path);
}

/* Output bytes of shard f (for progress). */
static uint64_t shard_out_bytes(struct conv *c, const struct dsv4_st_file *f)
{
    uint64_t b = 0;
    for (size_t i = 0; i < dsv4_st_count(f); i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        bool is_w;
        struct unit *u = unit_of_tensor(c, t->name, &is_w);
        if (!u)
            b += t->nbytes;
        else
            b += is_w ? t->nbytes + 8 : (uint64_t)(u->rows * (u->cols / 16));
    }
    return b;
}

static size_t shard_units(struct conv *c, const struct dsv4_st_file *f)
{
    size_t k = 0;
    for (size_t i = 0; i < dsv4_st_count(f); i++) {
        bool is_w;
        struct unit *u = unit_of_tensor(c, dsv4_st_tensor(f, i)->name, &is_w);
        k += !u || is_w || strcmp(u->wshard, shard_name(f));
    }
    return k;
}

/*
 * Whether DST already holds shard f complete: it exists under its final name,
 * was written by this converter with the same mode and holds the planned
 * tensors.  A shard from another mode or tool is an error, not a skip.
 */
static int shard_done(struct conv *c, const char *path, const struct ent *ents, size_t nents,
                      bool *done)
{
    struct dsv4_st_file *o = NULL;
    struct stat sb;
    *done = false;
    if (stat(path, &sb) < 0)
        return 0;
    int rc = dsv4_st_open(path, &o);
    if (rc)
        return dsv4_error_ctx(rc, "%s exists but is not a valid shard; remove it to convert again",
                              path);
    const char *mode = dsv4_st_metadata(o, META_MODE);
    if (!mode || strcmp(mode, dsv4_convert_mode_name(c->opts->mode))) {
        rc = dsv4_error(DSV4_EEXIST,
                        "%s exists and was %s; remove it (or DST) to convert with --mode %s", path,
                        mode ? (!strcmp(mode, "amax") ? "converted with --mode amax"
                                                      : "converted with --mode lossless")
                             : "not written by dsv4 convert",
                        dsv4_convert_mode_name(c->opts->mode));
        goto out;
    }
    if (dsv4_st_count(o) != nents) {
        rc = dsv4_error(DSV4_EMISMATCH, "%s holds %zu tensors, expected %zu; remove it", path,
                        dsv4_st_count(o), nents);
        goto out;
    }
    for (size_t i = 0; i < nents; i++) {
        const struct dsv4_tensor *t = dsv4_st_find(o, ents[i].name);
        if (!t || t->dtype != ents[i].dtype || t->nbytes != ents[i].nbytes) {
            rc = dsv4_error(DSV4_EMISMATCH, "%s: tensor %s missing or different; remove it", path,
                            ents[i].name);
            goto out;
        }
    }
    *done = true;
out:
    dsv4_st_close(o);
    return rc;
}

/* ---------------------------------------------------------------- other files */

/* Copies every file of src/rel (recursively) but shards, config, index and
 * the directory `skip` (DST itself when it lies inside SRC). */
static int copy_tree(const char *src, const char *dst, const char *rel, int depth,
                     const struct stat *skip)
{
    char sdir[PATH_MAX], ddir[PATH_MAX];
    if (path_cat(sdir, sizeof(sdir), src, "/", rel) || path_cat(ddir, sizeof(ddir), dst, "/", rel))
        return DSV4_ERANGE;
    if (depth > 16)
        return dsv4_error(DSV4_ERANGE, "%s: directories nested too deep", sdir);
    DIR *d = opendir(sdir);
    if (!d)
        return dsv4_error(DSV4_EIO, "%s: %s", sdir, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        const char *n = de->d_name;
        char sp[PATH_MAX], dp[PATH_MAX], r2[PATH_MAX];
        struct stat sb;
        if (!strcmp(n, ".") || !strcmp(n, ".."))
            continue;
        if (depth == 0 && (ends_with(n, ".safetensors") || !strcmp(n, "config.json") ||
                           !strcmp(n, "model.safetensors.index.json")))
            continue;
        if (path_cat(sp, sizeof(sp), sdir, "/", n) || path_cat(dp, sizeof(dp), ddir, "/", n) ||
            path_cat(r2, sizeof(r2), rel, rel[0] ? "/" : "", n)) {
            rc = DSV4_ERANGE;
        } else if (stat(sp, &sb) < 0) {
            rc = dsv4_error(DSV4_EIO, "%s: %s", sp, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            if (sb.st_dev == skip->st_dev && sb.st_ino == skip->st_ino)
                continue;
            if (mkdir(dp, 0755) < 0 && errno != EEXIST)
                rc = dsv4_error(DSV4_EIO, "%s: %s", dp, strerror(errno));
            else
                rc = copy_tree(src, dst, r2, depth + 1, skip);
        } else if (S_ISREG(sb.st_mode)) {
            rc = dsv4_file_copy(sp, dp);
        }
    }
    closedir(d);
    return rc;
}

/* ---------------------------------------------------------------- config.json */

static void set_member(cJSON *obj, const char *key, cJSON *v)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    else
        cJSON_AddItemToObject(obj, key, v);
}

/*
 * The artifact config.json: the source's keys in their order, expert_dtype
 * "fp4", quantization_config replaced by formats.md §1.4's (FP8 block
 * linears + NVFP4 experts; no mtp_*_dequant keys since mtp.* is untouched).
 */
static int write_config(struct conv *c)
{
    char path[PATH_MAX], *text = NULL;
    size_t len = 0;
    int rc = path_cat(path, sizeof(path), c->src, "/", "config.json");
    if (!rc)
        rc = dsv4_file_read(path, MAX_CONFIG, &text, &len);
    if (rc)
        return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsv4_error(DSV4_EFORMAT, "%s: not a JSON object", path);
    }
    cJSON *q = cJSON_CreateObject(), *fmt = cJSON_CreateObject();
    int bs[2] = {c->cfg.weight_block_size[0] > 0 ? c->cfg.weight_block_size[0] : 128,
                 c->cfg.weight_block_size[1] > 0 ? c->cfg.weight_block_size[1] : 128};
    cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
    cJSON_AddStringToObject(q, "fmt", "e4m3");
    cJSON_AddStringToObject(q, "quant_method", "fp8");
    cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
    cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(bs, 2));
    cJSON_AddStringToObject(q, "moe_quant_algo", "NVFP4");
    cJSON_AddStringToObject(fmt, "name", "nvfp4");
    cJSON_AddStringToObject(fmt, "weight_dtype", "fp4_e2m1");
    cJSON_AddStringToObject(fmt, "weight_packing", "uint8_2_per_byte");
    cJSON_AddNumberToObject(fmt, "group_size", 16);
    cJSON_AddStringToObject(fmt, "scale_dtype", "fp8_e4m3");
    cJSON_AddStringToObject(fmt, "weight_scale_2_dtype", "fp32");
    cJSON_AddItemToObject(q, "expert_format", fmt);
    cJSON_AddStringToObject(q, "dsv4_convert_mode", dsv4_convert_mode_name(c->opts->mode));
    set_member(root, "expert_dtype", cJSON_CreateString("fp4"));
    set_member(root, "quantization_config", q);

    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_json_tree(&b, root, 0);
    dsv4_strbuf_str(&b, "\n");
    cJSON_Delete(root);
    if (b.oom) {
        dsv4_strbuf_free(&b);
        return dsv4_error(DSV4_ENOMEM, "config.json text");
    }
    /* what we write must read back as an NVFP4 config of the same model */
    struct dsv4_config back;
    rc = dsv4_config_parse(b.p, b.len, &back);
    if (!rc && (back.expert_fmt != DSV4_EXPERT_NVFP4 ||
                back.num_hidden_layers != c->cfg.num_hidden_layers ||
                back.hidden_size != c->cfg.hidden_size))
        rc = dsv4_error(DSV4_EINTERNAL, "rewritten config.json does not read back as NVFP4");
    if (!rc) {
        rc = path_cat(path, sizeof(path), c->dst, "/", "config.json");
        if (!rc)
            rc = dsv4_file_write(path, b.p, b.len);
    }
    dsv4_strbuf_free(&b);
    return rc;
}

/* ---------------------------------------------------------------- verification */

struct ver_job {
    struct conv *c;
    const struct dsv4_tensor *sw, *ss, *ow, *os;
    float scale2;
    int64_t rows, cols;
    struct dsv4_convert_cmp *tcmp; /* per thread */
};

static void ver_fn(void *arg, int64_t i, int thread)
{
    struct ver_job *j = arg;
    int64_t r0 = i * ROW_CHUNK, nr = DSV4_MIN(ROW_CHUNK, j->rows - r0);
    float *a = dsv4_pool_scratch(j->c->pool, thread, sizeof(float) * 2 * ROW_CHUNK * j->cols);
    float *b = a + ROW_CHUNK * j->cols;
    dsv4_dequant_mxfp4(j->sw->data, j->ss->data, j->rows, j->cols, r0, nr, a);
    dsv4_dequant_nvfp4(j->ow->data, j->os->data, j->scale2, j->rows, j->cols, r0, nr, b);
    dsv4_convert_cmp_add(&j->tcmp[thread], a, b, nr * j->cols);
}

static int need(const struct dsv4_ckpt *o, const char *name, enum dsv4_dtype dt, int ndim,
                int64_t d0, int64_t d1, const struct dsv4_tensor **out)
{
    const struct dsv4_tensor *t = dsv4_ckpt_find(o, name);
    if (!t)
        return dsv4_error(DSV4_ENOENT, "output lacks tensor %s", name);
    if (t->dtype != dt || t->ndim != ndim || (ndim > 0 && t->shape[0] != d0) ||
        (ndim > 1 && t->shape[1] != d1))
        return dsv4_error(DSV4_EMISMATCH, "output tensor %s is %s, expected %s", name,
                          dsv4_dtype_name(t->dtype), dsv4_dtype_name(dt));
    *out = t;
    return 0;
}

static int verify_unit(struct conv *c, const struct dsv4_ckpt *o, const struct unit *u,
                       struct dsv4_convert_cmp *tcmp)
{
    char nm[128];
    const struct dsv4_tensor *ow, *os, *s2, *is;
    int rc;
    snprintf(nm, sizeof(nm), "%s.weight", u->prefix);
    if ((rc = need(o, nm, DSV4_DTYPE_U8, 2, u->rows, u->cols / 2, &ow)))
        return rc;
    snprintf(nm, sizeof(nm), "%s.%s", u->prefix, c->nv ? "weight_scale" : "scale");
    if ((rc = need(o, nm, DSV4_DTYPE_F8_E4M3, 2, u->rows, u->cols / 16, &os)))
        return rc;
    int sd = c->nv ? 0 : 1;
    snprintf(nm, sizeof(nm), "%s.weight_scale_2", u->prefix);
    if ((rc = need(o, nm, DSV4_DTYPE_F32, sd, 1, 1, &s2)))
        return rc;
    snprintf(nm, sizeof(nm), "%s.input_scale", u->prefix);
    if ((rc = need(o, nm, DSV4_DTYPE_F32, sd, 1, 1, &is)))
        return rc;
    float scale2, in_scale;
    memcpy(&scale2, s2->data, 4);
    memcpy(&in_scale, is->data, 4);
    if (in_scale != 1.0f)
        return dsv4_error(DSV4_EMISMATCH, "%s.input_scale is %g, expected 1.0", u->prefix,
                          (double)in_scale);
    if (!isfinite(scale2) || !(scale2 > 0.0f))
        return dsv4_error(DSV4_EMISMATCH, "%s.weight_scale_2 is %g, not a positive number",
                          u->prefix, (double)scale2);
    for (int t = 0; t < c->nthreads; t++)
        dsv4_convert_cmp_init(&tcmp[t]);
    struct ver_job j = {c, u->w, u->s, ow, os, scale2, u->rows, u->cols, tcmp};
    dsv4_pool_run(c->pool, ver_fn, &j, (u->rows + ROW_CHUNK - 1) / ROW_CHUNK);
    struct dsv4_convert_cmp all;
    dsv4_convert_cmp_init(&all);
    for (int t = 0; t < c->nthreads; t++)
        dsv4_convert_cmp_merge(&all, &tcmp[t]);
    struct dsv4_convert_report *r = c->rep;
    r->verified++;
    r->verified_bitexact += all.bit_equal == all.total;
    double p = dsv4_convert_cmp_pearson(&all);
    r->min_pearson = r->verified == 1 ? p : fmin(r->min_pearson, p);
    dsv4_convert_cmp_merge(&r->cmp, &all);
    if (all.nonfinite)
        dsv4_log(DSV4_LOG_WARN, "%s: %llu non-finite values", u->prefix,
                 (unsigned long long)all.nonfinite);
    return 0;
}

/* DST against the model contract of its own config.json. */
static int verify_contract(struct conv *c, const struct dsv4_ckpt *o)
{
    char path[PATH_MAX];
    struct dsv4_config cfg;
    struct dsv4_binding *b = NULL;
    size_t n = dsv4_ckpt_count(o);
    int rc = path_cat(path, sizeof(path), c->dst, "/", "config.json");
    if (rc || (rc = dsv4_config_load(path, &cfg)))
        return dsv4_error_ctx(rc, "verify");
    if (cfg.expert_fmt != DSV4_EXPERT_NVFP4)
        return dsv4_error(DSV4_EMISMATCH, "verify: %s does not declare NVFP4 experts", path);
    const struct dsv4_tensor **v = calloc(n + 1, sizeof(*v));
    if (!v)
        return dsv4_error(DSV4_ENOMEM, "verify: %zu views", n);
    for (size_t i = 0; i < n; i++)
        v[i] = dsv4_ckpt_tensor(o, i);
    rc = dsv4_bind(&cfg, v, n, &b);
    if (rc)
        rc = dsv4_error_ctx(rc, "verify: %s against the model contract", c->dst);
    dsv4_binding_free(b);
    free(v);
    return rc;
}

static int verify(struct conv *c)
{
    struct dsv4_ckpt *o = NULL;
    struct dsv4_convert_cmp *tcmp = NULL;
    int rc = dsv4_ckpt_open(c->dst, &o);
    if (rc)
        return dsv4_error_ctx(rc, "verify: opening %s", c->dst);
    struct dsv4_convert_report *r = c->rep;
    size_t nconv = c->nunits, want = dsv4_ckpt_count(c->in) + 2 * nconv;
    if (dsv4_ckpt_count(o) != want) {
        rc = dsv4_error(DSV4_EMISMATCH, "verify: %s holds %zu tensors, expected %zu", c->dst,
                        dsv4_ckpt_count(o), want);
        goto out;
    }
    if ((rc = verify_contract(c, o)))
        goto out;
    /* scratch for two dequantized row chunks per thread, grown here so that
     * a failed allocation is an error, not a crash in a worker */
    int64_t max_cols = 0;
    for (size_t i = 0; i < nconv; i++)
        max_cols = DSV4_MAX(max_cols, c->units[i].cols);
    for (int t = 0; t < c->nthreads; t++)
        if (!dsv4_pool_scratch(c->pool, t, sizeof(float) * 2 * ROW_CHUNK * (size_t)max_cols)) {
            rc = dsv4_error(DSV4_ENOMEM, "verify: scratch of %lld columns", (long long)max_cols);
            goto out;
        }
    tcmp = calloc((size_t)c->nthreads, sizeof(*tcmp));
    if (!tcmp) {
        rc = dsv4_error(DSV4_ENOMEM, "verify");
        goto out;
    }
    /* sampled converted tensors: evenly spread over the checkpoint */
    int64_t sample = c->opts->sample > 0 && (size_t)c->opts->sample < nconv ? c->opts->sample
                                                                            : (int64_t)nconv;
    c->prog.tensors_done = 0;
    c->prog.tensors_total = (int64_t)(dsv4_ckpt_count(c->in) - nconv) + sample;
    c->prog.bytes_done = c->prog.bytes_total = 0;
    for (int64_t k = 0; k < sample; k++) {
        size_t ui = (size_t)((k * (int64_t)nconv) / sample);
        if ((rc = verify_unit(c, o, &c->units[ui], tcmp)))
            goto out;
        c->prog.tensors_done++;
        progress(c, "verify");
    }
    for (size_t i = 0; i < dsv4_ckpt_count(c->in); i++) {
        const struct dsv4_tensor *t = dsv4_ckpt_tensor(c->in, i), *u;
        bool is_w;
        if (unit_of_tensor(c, t->name, &is_w))
            continue;
        u = dsv4_ckpt_find(o, t->name);
        if (!u) {
            rc = dsv4_error(DSV4_ENOENT, "verify: output lacks tensor %s", t->name);
            goto out;
        }
        r->pass_checked++;
        bool same = u->dtype == t->dtype && u->ndim == t->ndim &&
                    !memcmp(u->shape, t->shape, sizeof(t->shape[0]) * (size_t)t->ndim) &&
                    u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes);
        r->pass_identical += same;
        if (!same)
            dsv4_log(DSV4_LOG_WARN, "verify: %s differs from the source", t->name);
        c->prog.tensors_done++;
        progress(c, "verify");
    }
out:
    free(tcmp);
    dsv4_ckpt_close(o);
    return rc;
}

/* ---------------------------------------------------------------- driver */

static int same_dir(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb))
        return 0;
    return !strcmp(ra, rb);
}

static int convert_shards(struct conv *c)
{
    size_t ns = dsv4_ckpt_shard_count(c->in);
    bool *skip = calloc(ns + 1, sizeof(bool));
    int rc = 0;
    if (!skip)
        return dsv4_error(DSV4_ENOMEM, "shard list");
    c->rep->shards = (int)ns;
    /* pass 1: what is already done (and refuse foreign or mixed-mode shards) */
    for (size_t i = 0; i < ns && !rc; i++) {
        const struct dsv4_st_file *f = dsv4_ckpt_shard(c->in, i);
        char path[PATH_MAX];
        struct ent *ents;
        char **names;
        size_t ne, nn;
        if ((rc = path_cat(path, sizeof(path), c->dst, "/", shard_name(f))) ||
            (rc = plan_shard(c, f, &ents, &names, &ne, &nn)))
            break;
        rc = shard_done(c, path, ents, ne, &skip[i]);
        free(ents);
        free_names(names, nn);
        if (!skip[i]) {
            c->prog.bytes_total += shard_out_bytes(c, f);
            c->prog.tensors_total += (int64_t)shard_units(c, f);
        }
    }
    c->prog.nshards = (int)ns;
    for (size_t i = 0; i < ns && !rc; i++) {
        const struct dsv4_st_file *f = dsv4_ckpt_shard(c->in, i);
        char path[PATH_MAX];
        c->prog.shard = (int)i + 1;
        c->prog.shard_name = shard_name(f);
        if (skip[i]) {
            c->rep->shards_skipped++;
            progress(c, "skip");
            continue;
        }
        struct ent *ents;
        char **names;
        size_t ne, nn;
        if ((rc = path_cat(path, sizeof(path), c->dst, "/", shard_name(f))) ||
            (rc = plan_shard(c, f, &ents, &names, &ne, &nn)))
            break;
        uint64_t before = c->prog.bytes_done;
        rc = write_shard(c, f, path, ents, ne);
        free(ents);
        free_names(names, nn);
        if (!rc) {
            c->rep->shards_written++;
            c->rep->bytes_written += c->prog.bytes_done - before;
        }
    }
    free(skip);
    return rc;
}

static int write_index(struct conv *c)
{
    size_t ns = dsv4_ckpt_shard_count(c->in);
    const char **names = calloc(ns + 1, sizeof(char *));
    if (!names)
        return dsv4_error(DSV4_ENOMEM, "index");
    for (size_t i = 0; i < ns; i++)
        names[i] = shard_name(dsv4_ckpt_shard(c->in, i));
    int rc = dsv4_ckpt_write_index(c->dst, names, ns);
    free(names);
    return rc ? dsv4_error_ctx(rc, "writing %s/model.safetensors.index.json", c->dst) : 0;
}

int dsv4_convert_ckpt(const char *src, const char *dst, const struct dsv4_convert_opts *opts,
                      struct dsv4_convert_report *rep)
{
    struct conv c = {0};
    char path[PATH_MAX];
    int rc;
    memset(rep, 0, sizeof(*rep));
    dsv4_convert_cmp_init(&rep->cmp);
    c.src = src;
    c.dst = dst;
    c.opts = opts;
    c.rep = rep;
    c.t0 = dsv4_now();
    c.nv = opts->naming == DSV4_CONVERT_NAMING_NVIDIA;

    if ((rc = path_cat(path, sizeof(path), src, "/", "config.json")))
        goto out;
    if ((rc = dsv4_config_load(path, &c.cfg))) {
        rc = dsv4_error_ctx(rc, "source config");
        goto out;
    }
    if ((rc = dsv4_ckpt_open(src, &c.in))) {
        rc = dsv4_error_ctx(rc, "source %s", src);
        goto out;
    }
    if ((rc = scan_source(&c)))
        goto out;
    if (mkdir(dst, 0755) < 0 && errno != EEXIST) {
        rc = dsv4_error(DSV4_EIO, "%s: %s", dst, strerror(errno));
        goto out;
    }
    if (same_dir(src, dst)) {
        rc = dsv4_error(DSV4_EINVAL, "DST %s is the source directory", dst);
        goto out;
    }
    c.nthreads = opts->threads > 0 ? opts->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    c.nthreads = DSV4_MAX(1, DSV4_MIN(c.nthreads, 256));
    if ((rc = dsv4_pool_init(c.nthreads, &c.pool)))
        goto out;
    c.nthreads = dsv4_pool_threads(c.pool);
    c.ow = malloc(c.max_w + 1);
    c.os = malloc(c.max_s + 1);
    c.tstats = calloc((size_t)c.nthreads, sizeof(*c.tstats));
    if (!c.ow || !c.os || !c.tstats) {
        rc = dsv4_error(DSV4_ENOMEM, "conversion buffers (%llu bytes)",
                        (unsigned long long)(c.max_w + c.max_s));
        goto out;
    }
    if ((rc = convert_shards(&c)))
        goto out;
    for (int t = 0; t < c.nthreads; t++)
        dsv4_convert_stats_add(&rep->stats, &c.tstats[t]);
    struct stat dst_st;
    if (stat(dst, &dst_st) < 0) {
        rc = dsv4_error(DSV4_EIO, "%s: %s", dst, strerror(errno));
        goto out;
    }
    if ((rc = copy_tree(src, dst, "", 0, &dst_st)) || (rc = write_config(&c)) ||
        (rc = write_index(&c)))
        goto out;
    rep->seconds = dsv4_now() - c.t0;
    if (opts->verify)
        rc = verify(&c);
out:
    rep->seconds = dsv4_now() - c.t0;
    free(c.ow);
    free(c.os);
    free(c.tstats);
    free(c.units);
    free(c.unit_of);
    if (c.pool)
        dsv4_pool_free(c.pool);
    if (c.in)
        dsv4_ckpt_close(c.in);
    return rc;
}
