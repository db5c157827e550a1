/*
 * plan.c - parallel layout, per-rank weight bytes, parameter counts and
 * KV/state sizes of a checkpoint (see plan.h for the formulas).
 *
 * Invariants: per category, the split bytes of all ranks plus the
 * replicated bytes (counted once) equal the total exactly (the contract's
 * splits partition each tensor); parameter counts
 * are the contract's, whatever the bytes' source.
 */
#include "dsv4-build.h"
#include "tools/plan.h"
#include "base/dsv4.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void kv_sizes(struct dsv4_plan *p)
{
    const struct dsv4_config *c = &p->cfg;
    int nope = c->head_dim - c->qk_rope_head_dim;
    uint64_t main =
            (uint64_t)nope + 2u * (uint64_t)c->qk_rope_head_dim + (uint64_t)(nope + 63) / 64;
    int layers = dsv4_config_total_layers(c);

    main = (main + 7) & ~(uint64_t)7;
    p->main_entry_bytes = main;
    p->index_entry_bytes = (uint64_t)c->index_head_dim + 4;
    p->kv_bytes_per_token = 0;
    p->window_bytes = (uint64_t)layers * (uint64_t)c->sliding_window * main;
    p->compressor_bytes = 0;
    for (int l = 0; l < layers; l++) {
        int r = dsv4_config_ratio(c, l);
        uint64_t coff = r == 4 ? 2 : 1;

        if (r == 4) {
            p->n_csa++;
            p->kv_bytes_per_token += (double)(main + p->index_entry_bytes) / 4.0;
            p->compressor_bytes += coff * 4 * coff * (uint64_t)c->index_head_dim * 2 * 4;
        } else if (r > 0) {
            p->n_hca++;
            p->kv_bytes_per_token += (double)main / r;
        } else {
            p->n_swa++;
        }
        if (r > 0)
            p->compressor_bytes += coff * (uint64_t)r * coff * (uint64_t)c->head_dim * 2 * 4;
    }
    /* the engine's pool layout; a config whose ratios do not divide a block leaves it 0 */
    if (dsv4_state_sizes(c, c->num_nextn_predict_layers > 0, 2, 0, &p->pool))
        memset(&p->pool, 0, sizeof p->pool);
}

static int plan_init(const struct dsv4_contract *c, int nranks, struct dsv4_plan **out)
{
    struct dsv4_plan *p;
    const struct dsv4_config *cfg = dsv4_contract_config(c);

    *out = NULL;
    if (nranks < 1 || nranks > 4096)
        return dsv4_error(DSV4_EINVAL, "plan: bad rank count %d (1..4096)", nranks);
    p = calloc(1, sizeof(*p));
    if (!p || !(p->ranks = calloc((size_t)nranks, sizeof(*p->ranks)))) {
        free(p);
        return dsv4_error(DSV4_ENOMEM, "plan: out of memory");
    }
    p->cfg = *cfg;
    p->nranks = nranks;
    p->kv_tokens = -1;
    for (int r = 0; r < nranks; r++) {
        dsv4_contract_split_range(cfg->n_routed_experts, r, nranks, &p->ranks[r].experts_begin,
                                  &p->ranks[r].experts_end);
        p->ranks[r].kv_tokens = -1;
    }
    /* parameters: the contract's, whatever the byte source */
    for (size_t i = 0; i < dsv4_contract_count(c); i++) {
        const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
        uint64_t inst = s->n_experts ? (uint64_t)s->n_experts : 1;
        uint64_t prm = inst * s->params;

        p->params[s->cat] += prm;
        p->total_params += prm;
        if (s->cat == DSV4_CAT_MTP)
            continue;
        p->total_params_no_mtp += prm;
        if (s->part == DSV4_CAT_ROUTED) {
            double a = (double)prm * cfg->num_experts_per_tok / cfg->n_routed_experts;
            p->active_params += a;
            p->active_routed += a;
        } else {
            p->active_params += (double)prm;
            if (s->part == DSV4_CAT_EMBED)
                p->active_embed += (double)prm;
        }
    }
    kv_sizes(p);
    *out = p;
    return 0;
}

static void account(struct dsv4_plan *p, const struct dsv4_tspec *s, int expert, uint64_t nbytes)
{
    p->bytes[s->cat] += nbytes;
    p->total_bytes += nbytes;
    p->tensor_count++;
    for (int r = 0; r < p->nranks; r++) {
        uint64_t b;

        if (s->split == DSV4_SPLIT_EXPERT) {
            int64_t e0, e1;
            dsv4_contract_split_range(s->n_experts, r, p->nranks, &e0, &e1);
            b = expert >= e0 && expert < e1 ? nbytes : 0;
        } else {
            b = dsv4_tspec_split_part(s, nbytes, r, p->nranks);
        }
        p->ranks[r].bytes[s->cat] += b;
        p->ranks[r].total += b;
        if (s->split == DSV4_SPLIT_REPLICATED ||
            (s->split != DSV4_SPLIT_EXPERT && s->split_units <= 0))
            p->ranks[r].replicated[s->cat] += b;
    }
}

int dsv4_plan_from_contract(const struct dsv4_contract *c, int nranks, struct dsv4_plan **out)
{
    int rc = plan_init(c, nranks, out);

    if (rc)
        return rc;
    for (size_t i = 0; i < dsv4_contract_count(c); i++) {
        const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
        for (int e = 0; e < (s->n_experts ? s->n_experts : 1); e++)
            account(*out, s, e, s->nbytes);
    }
    return 0;
}

int dsv4_plan_from_binding(const struct dsv4_binding *bnd, int nranks, struct dsv4_plan **out)
{
    const struct dsv4_contract *c = dsv4_binding_contract(bnd);
    int rc = plan_init(c, nranks, out);

    if (rc)
        return rc;
    (*out)->from_checkpoint = 1;
    for (size_t i = 0; i < dsv4_contract_count(c); i++) {
        const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
        for (int e = 0; e < (s->n_experts ? s->n_experts : 1); e++) {
            const struct dsv4_tensor *t = dsv4_binding_get(bnd, i, e);
            if (t)
                account(*out, s, e, t->nbytes);
        }
    }
    return 0;
}

void dsv4_plan_free(struct dsv4_plan *p)
{
    if (!p)
        return;
    free(p->ranks);
    free(p);
}

void dsv4_plan_fit(struct dsv4_plan *p, uint64_t device_mem, uint64_t reserve)
{
    uint64_t fixed = p->window_bytes + p->compressor_bytes;

    p->device_mem = device_mem;
    p->reserve = reserve;
    p->kv_tokens = -1;
    for (int r = 0; r < p->nranks; r++) {
        struct dsv4_plan_rank *k = &p->ranks[r];
        uint64_t used = k->total, add[2] = {reserve, fixed};

        for (int i = 0; i < 2; i++) /* saturating: a huge --reserve must not wrap */
            used = used > UINT64_MAX - add[i] ? UINT64_MAX : used + add[i];
        double t = used >= device_mem ? 0.0
                   : p->kv_bytes_per_token <= 0
                           ? INFINITY /* window-only model: nothing grows per token */
                           : floor((double)(device_mem - used) / p->kv_bytes_per_token);
        k->kv_tokens = t >= 0x1p63 ? INT64_MAX : (int64_t)t; /* the cast of a larger t is UB */
        if (p->kv_tokens < 0 || k->kv_tokens < p->kv_tokens)
            p->kv_tokens = k->kv_tokens;
    }
}

static double gib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0 * 1024.0);
}

static void print_range(FILE *f, const char *what, int64_t units, int n)
{
    int64_t b0, e0, b1, e1;

    dsv4_contract_split_range(units, 0, n, &b0, &e0);
    dsv4_contract_split_range(units, n - 1, n, &b1, &e1);
    if (e0 - b0 == e1 - b1 && units % n == 0)
        fprintf(f, "%" PRId64 " %s -> %" PRId64 " per rank", units, what, e0 - b0);
    else
        fprintf(f, "%" PRId64 " %s -> %" PRId64 "..%" PRId64 " per rank (uneven)", units, what,
                DSV4_MIN(e0 - b0, e1 - b1), DSV4_MAX(e0 - b0, e1 - b1));
}

void dsv4_plan_print(const struct dsv4_plan *p, FILE *f)
{
    const struct dsv4_config *c = &p->cfg;
    int n = p->nranks;

    fprintf(f,
            "model: %d layers + %d MTP, hidden %d, %d heads, %d routed experts (top %d), %s "
            "experts\n",
            c->num_hidden_layers, c->num_nextn_predict_layers, c->hidden_size,
            c->num_attention_heads, c->n_routed_experts, c->num_experts_per_tok,
            dsv4_expert_fmt_name(c->expert_fmt));
    fprintf(f, "weights: %" PRIu64 " tensors, %" PRIu64 " bytes (%.2f GiB), from the %s\n",
            p->tensor_count, p->total_bytes, gib(p->total_bytes),
            p->from_checkpoint ? "checkpoint's tensors" : "contract (config only)");
    double u = p->total_params >= 1e10 ? 1e9 : 1e6;
    const char *un = u == 1e9 ? "B" : "M";
    fprintf(f, "parameters: %.2f %s total (%.2f %s without MTP); active per token %.2f %s\n",
            p->total_params / u, un, p->total_params_no_mtp / u, un, p->active_params / u, un);
    fprintf(f,
            "  active = %.2f %s non-routed (of which embed+head %.2f %s) + %.2f %s routed "
            "(%d of %d experts)\n",
            (p->active_params - p->active_routed) / u, un, p->active_embed / u, un,
            p->active_routed / u, un, c->num_experts_per_tok, c->n_routed_experts);

    fprintf(f, "\nparallel layout, %d rank%s:\n", n, n > 1 ? "s" : "");
    fprintf(f, "  attention: ");
    print_range(f, "output groups", c->o_groups, n);
    fprintf(f, " of %d heads (wq_b, attn_sink, wo_a rows; wo_b cols), output all-reduced\n",
            c->num_attention_heads / c->o_groups);
    fprintf(f, "    wq_a, wkv, q/kv norms, compressors replicated\n");
    fprintf(f, "  indexer: ");
    print_range(f, "heads", c->index_n_heads, n);
    fprintf(f, " (wq_b, weights_proj rows); score all-reduced before top-k\n");
    fprintf(f, "  routed experts: ");
    print_range(f, "experts", c->n_routed_experts, n);
    fprintf(f, ", contiguous ranges; routing on every rank\n");
    int64_t vb, ve;
    dsv4_contract_split_range_vocab(c->vocab_size, 0, n, &vb, &ve);
    fprintf(f,
            "  embedding, head: %d vocab rows in chunks of %" PRId64
            " per rank; logits gathered on rank 0\n",
            c->vocab_size, ve - vb);
    fprintf(f, "  shared expert, hc_*, router, norms, MTP e_proj/h_proj: replicated; "
               "MTP block: as a trunk layer\n");
    fprintf(f, "\nweights per rank (GiB; replicated tensors count on every rank):\n");
    fprintf(f, "  %-5s %10s %10s %10s %10s %10s %10s %10s  %s\n", "rank", "attention", "shared",
            "routed", "embed+head", "mtp", "other", "total", "experts");
    for (int r = 0; r < n; r++) {
        const struct dsv4_plan_rank *k = &p->ranks[r];
        fprintf(f, "  %-5d", r);
        for (int i = 0; i < DSV4_CAT_COUNT; i++)
            fprintf(f, " %10.3f", gib(k->bytes[i]));
        if (k->experts_end > k->experts_begin)
            fprintf(f, " %10.3f  %" PRId64 "..%" PRId64 "\n", gib(k->total), k->experts_begin,
                    k->experts_end - 1);
        else /* more ranks than experts */
            fprintf(f, " %10.3f  none\n", gib(k->total));
    }
    fprintf(f, "  %-5s", "model");
    for (int i = 0; i < DSV4_CAT_COUNT; i++)
        fprintf(f, " %10.3f", gib(p->bytes[i]));
    fprintf(f, " %10.3f\n", gib(p->total_bytes));

    fprintf(f,
            "\nKV/state per sequence (replicated on every rank; FP8 main %" PRIu64
            " B, FP8 index %" PRIu64 " B entries):\n",
            p->main_entry_bytes, p->index_entry_bytes);
    fprintf(f, "  layers: %d ratio-4 (CSA), %d ratio-128 (HCA), %d window-only\n", p->n_csa,
            p->n_hca, p->n_swa);
    fprintf(f, "  per token: %.2f B (%.2f GiB per 2^20 tokens)\n", p->kv_bytes_per_token,
            p->kv_bytes_per_token / 1024.0);
    fprintf(f, "  fixed: window %.2f MiB + compressor state %.2f MiB\n",
            p->window_bytes / 1048576.0, p->compressor_bytes / 1048576.0);
    fprintf(f,
            "  engine pool (BF16 window, entries and indexer keys; FP32 compressor blocks): "
            "%.2f B per token in blocks of %d positions (%" PRIu64 " B), %.2f MiB fixed per "
            "sequence\n",
            p->pool.bytes_per_token, p->pool.block_tokens, p->pool.block_bytes,
            p->pool.slot_bytes / 1048576.0);
    if (p->kv_tokens >= 0) {
        fprintf(f,
                "\ndevice memory %.2f GiB, workspace reserve %.2f GiB: %" PRId64
                " tokens of KV fit per rank (smallest rank; after weights, reserve and one "
                "sequence's "
                "fixed state)\n",
                gib(p->device_mem), gib(p->reserve), p->kv_tokens);
        for (int r = 0; r < n; r++)
            fprintf(f, "  rank %d: %" PRId64 " tokens\n", r, p->ranks[r].kv_tokens);
    }
}

void dsv4_plan_print_json(const struct dsv4_plan *p, FILE *f)
{
    fprintf(f, "{\"ranks_count\": %d, \"source\": \"%s\", \"expert_format\": \"%s\",\n", p->nranks,
            p->from_checkpoint ? "checkpoint" : "contract",
            dsv4_expert_fmt_name(p->cfg.expert_fmt));
    fprintf(f, " \"tensor_count\": %" PRIu64 ", \"total_bytes\": %" PRIu64 ",\n", p->tensor_count,
            p->total_bytes);
    fprintf(f, " \"total_params\": %" PRIu64 ", \"total_params_no_mtp\": %" PRIu64 ",\n",
            p->total_params, p->total_params_no_mtp);
    fprintf(f,
            " \"active_params_per_token\": %.0f, \"active_routed_params\": %.0f, "
            "\"active_embed_head_params\": %.0f,\n",
            p->active_params, p->active_routed, p->active_embed);
    fprintf(f, " \"bytes\": {");
    for (int i = 0; i < DSV4_CAT_COUNT; i++)
        fprintf(f, "%s\"%s\": %" PRIu64, i ? ", " : "", dsv4_contract_cat_name((enum dsv4_cat)i),
                p->bytes[i]);
    fprintf(f, "},\n \"params\": {");
    for (int i = 0; i < DSV4_CAT_COUNT; i++)
        fprintf(f, "%s\"%s\": %" PRIu64, i ? ", " : "", dsv4_contract_cat_name((enum dsv4_cat)i),
                p->params[i]);
    fprintf(f, "},\n \"ranks\": [\n");
    for (int r = 0; r < p->nranks; r++) {
        const struct dsv4_plan_rank *k = &p->ranks[r];
        fprintf(f, "  {\"rank\": %d", r);
        for (int i = 0; i < DSV4_CAT_COUNT; i++)
            fprintf(f, ", \"%s\": %" PRIu64, dsv4_contract_cat_name((enum dsv4_cat)i), k->bytes[i]);
        fprintf(f, ", \"replicated\": {");
        for (int i = 0; i < DSV4_CAT_COUNT; i++)
            fprintf(f, "%s\"%s\": %" PRIu64, i ? ", " : "",
                    dsv4_contract_cat_name((enum dsv4_cat)i), k->replicated[i]);
        fprintf(f, "}, \"total\": %" PRIu64 ", \"experts\": [%" PRId64 ", %" PRId64 "]", k->total,
                k->experts_begin, k->experts_end);
        if (k->kv_tokens >= 0)
            fprintf(f, ", \"kv_tokens\": %" PRId64, k->kv_tokens);
        fprintf(f, "}%s\n", r + 1 < p->nranks ? "," : "");
    }
    fprintf(f,
            " ],\n \"kv_bytes_per_token\": %.4f, \"kv_main_entry_bytes\": %" PRIu64
            ", \"kv_index_entry_bytes\": %" PRIu64 ",\n",
            p->kv_bytes_per_token, p->main_entry_bytes, p->index_entry_bytes);
    fprintf(f, " \"layers_csa\": %d, \"layers_hca\": %d, \"layers_window_only\": %d,\n", p->n_csa,
            p->n_hca, p->n_swa);
    fprintf(f,
            " \"fixed_state_bytes_per_sequence\": %" PRIu64 ", \"window_bytes\": %" PRIu64
            ", \"compressor_state_bytes\": %" PRIu64 ",\n",
            p->window_bytes + p->compressor_bytes, p->window_bytes, p->compressor_bytes);
    fprintf(f,
            " \"pool_bytes_per_token\": %.4f, \"pool_block_tokens\": %d, "
            "\"pool_block_bytes\": %" PRIu64 ", \"pool_slot_bytes\": %" PRIu64,
            p->pool.bytes_per_token, p->pool.block_tokens, p->pool.block_bytes, p->pool.slot_bytes);
    if (p->kv_tokens >= 0)
        fprintf(f,
                ",\n \"device_mem\": %" PRIu64 ", \"reserve\": %" PRIu64
                ", \"kv_tokens_fit\": %" PRId64,
                p->device_mem, p->reserve, p->kv_tokens);
    fprintf(f, "}\n");
}

int dsv4_plan_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1},
                 {"B", 1},
                 {"K", 1024.0},
                 {"KiB", 1024.0},
                 {"KB", 1e3},
                 {"M", 1048576.0},
                 {"MiB", 1048576.0},
                 {"MB", 1e6},
                 {"G", 1073741824.0},
                 {"GiB", 1073741824.0},
                 {"GB", 1e9},
                 {"T", 1099511627776.0},
                 {"TiB", 1099511627776.0},
                 {"TB", 1e12}};
    char *end;
    double v;

    if (!s || !*s || isspace((unsigned char)*s) || *s == '-')
        return dsv4_error(DSV4_EINVAL, "bad size '%s'", s ? s : "");
    v = strtod(s, &end);
    if (end == s || !(v >= 0) || v > 1e18)
        return dsv4_error(DSV4_EINVAL, "bad size '%s'", s);
    for (size_t i = 0; i < DSV4_ARRAY_LEN(units); i++)
        if (!strcmp(end, units[i].suffix)) {
            double b = v * units[i].mult;
            if (b > 1.8e19)
                return dsv4_error(DSV4_ERANGE, "size '%s' too large", s);
            *out = (uint64_t)b;
            return 0;
        }
    return dsv4_error(DSV4_EINVAL, "bad size '%s' (use e.g. 288GiB, 141GB, 512MiB)", s);
}
