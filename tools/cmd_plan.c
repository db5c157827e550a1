/*
 * cmd_plan.c - `dsv4 plan DIR | --config FILE [--ranks N] [--device-mem SIZE]
 * [--reserve SIZE] [--json] [--tensors] [--verbose]`: the parallel layout and memory plan
 * of a checkpoint (tools/plan.h).  With DIR the checkpoint is bound to the
 * contract first (every mismatch listed, exit 1) and bytes come from its
 * tensors; with --config from the contract alone.
 */
#include "dsv4-build.h"
#include "engine/io/config.h"
#include "engine/io/contract.h"
#include "base/dsv4.h"
#include "tools/plan.h"
#include "engine/io/safetensors.h"
#include "tools/cmds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_RESERVE "4GiB"
#define MAX_LISTED      50 /* mismatches listed without --verbose */

static void plan_usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4 plan DIR | --config FILE [options]\n"
            "  --ranks N            tensor/expert-parallel ranks (default 8)\n"
            "  --device-mem SIZE    memory per rank, e.g. 288GiB: prints the KV tokens that fit\n"
            "  --reserve SIZE       workspace kept free per rank (default " DEFAULT_RESERVE ")\n"
            "  --json               one JSON object instead of the report\n"
            "  --tensors            also list every tensor kind with its split\n"
            "  --verbose, -v        list every contract mismatch (default: the first 50)\n");
}

/* One line per tensor kind (layer index and expert index folded), first occurrence. */
static void print_tensor_kinds(const struct dsv4_contract *c, int nranks, FILE *f)
{
    size_t n = dsv4_contract_count(c);
    char(*seen)[DSV4_CONTRACT_NAME_MAX] = calloc(n, sizeof(*seen));
    size_t n_seen = 0;

    if (!seen)
        return;
    fprintf(f, "\ntensor kinds (L = trunk layer, M = MTP block):\n");
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tspec *s = dsv4_contract_spec(c, i);
        char kind[DSV4_CONTRACT_NAME_MAX];
        const char *rest = s->name;
        bool dup = false;

        if (!strncmp(rest, "layers.", 7) || !strncmp(rest, "mtp.", 4)) {
            const char *dot = strchr(strchr(rest, '.') + 1, '.');
            snprintf(kind, sizeof(kind), "%s.%s", rest[0] == 'l' ? "L" : "M", dot + 1);
        } else {
            snprintf(kind, sizeof(kind), "%s", rest);
        }
        for (size_t k = 0; k < n_seen && !dup; k++)
            dup = !strcmp(seen[k], kind);
        if (dup)
            continue;
        memcpy(seen[n_seen++], kind, sizeof(kind));
        char shape[64], units[48] = "";
        dsv4_shape_str(s->shape, s->ndim, shape, sizeof(shape));
        if (s->split == DSV4_SPLIT_EXPERT || (s->split != DSV4_SPLIT_REPLICATED && s->split_units))
            snprintf(units, sizeof(units), "%lld units / %d",
                     (long long)(s->n_experts ? s->n_experts : s->split_units), nranks);
        fprintf(f, "  %-44s %-8s %-16s %-14s %s%s%s\n", kind, dsv4_dtype_name(s->dtype), shape,
                dsv4_contract_cat_name(s->part), dsv4_contract_split_name(s->split),
                units[0] ? ", " : "", units);
    }
    free(seen);
}

int dsv4_cmd_plan(int argc, char **argv)
{
    const char *dir = NULL, *config = NULL, *mem = NULL, *reserve = DEFAULT_RESERVE;
    int nranks = 8, json = 0, tensors = 0, verbose = 0, rc = 1;
    struct dsv4_config cfg;
    struct dsv4_ckpt *ck = NULL;
    struct dsv4_contract *con = NULL;
    struct dsv4_binding *bnd = NULL;
    struct dsv4_plan *p = NULL;
    const struct dsv4_tensor **views = NULL;
    uint64_t mem_b = 0, res_b = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            plan_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--tensors")) {
            tensors = 1;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            verbose = 1;
        } else if (i + 1 < argc && !strcmp(a, "--ranks")) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 4096) {
                fprintf(stderr, "dsv4 plan: bad --ranks '%s' (1..4096)\n", argv[i]);
                return 2;
            }
            nranks = (int)v;
        } else if (i + 1 < argc && !strcmp(a, "--config")) {
            config = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--device-mem")) {
            mem = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--reserve")) {
            reserve = argv[++i];
        } else if (a[0] != '-' && !dir) {
            dir = a;
        } else if (i + 1 == argc && (!strcmp(a, "--ranks") || !strcmp(a, "--config") ||
                                     !strcmp(a, "--device-mem") || !strcmp(a, "--reserve"))) {
            fprintf(stderr, "dsv4 plan: option '%s' needs a value\n", a);
            plan_usage(stderr);
            return 2;
        } else {
            fprintf(stderr, "dsv4 plan: unexpected argument '%s'\n", a);
            plan_usage(stderr);
            return 2;
        }
    }
    if (!!dir == !!config) {
        fprintf(stderr, "dsv4 plan: give a checkpoint DIR or --config FILE (one of them)\n");
        plan_usage(stderr);
        return 2;
    }
    if ((mem && dsv4_plan_parse_size(mem, &mem_b)) || dsv4_plan_parse_size(reserve, &res_b)) {
        fprintf(stderr, "dsv4 plan: %s\n", dsv4_errmsg());
        return 2;
    }

    if (config) {
        if (dsv4_config_load(config, &cfg) || dsv4_contract_build(&cfg, -1, &con) ||
            dsv4_plan_from_contract(con, nranks, &p))
            goto fail;
    } else {
        char path[4096];
        if ((size_t)snprintf(path, sizeof(path), "%s/config.json", dir) >= sizeof(path)) {
            dsv4_error(DSV4_ERANGE, "%.64s...: path too long", dir);
            goto fail;
        }
        if (dsv4_config_load(path, &cfg) || dsv4_ckpt_open(dir, &ck))
            goto fail;
        size_t n = dsv4_ckpt_count(ck);
        views = calloc(n ? n : 1, sizeof(*views));
        if (!views) {
            dsv4_error(DSV4_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < n; i++)
            views[i] = dsv4_ckpt_tensor(ck, i);
        int st = dsv4_bind(&cfg, views, n, &bnd);
        if (st == DSV4_EMISMATCH) {
            size_t np = dsv4_binding_problem_count(bnd);
            fprintf(stderr, "dsv4 plan: %s: %zu problem(s) against the contract:\n", dir, np);
            for (size_t i = 0; i < np && (i < MAX_LISTED || verbose); i++) {
                const char *line;
                dsv4_binding_problem(bnd, i, &line);
                fprintf(stderr, "  %s\n", line);
            }
            if (np > MAX_LISTED && !verbose)
                fprintf(stderr, "  ... %zu more (--verbose lists all)\n", np - MAX_LISTED);
            fprintf(stderr, "dsv4 plan: %s\n", dsv4_errmsg());
            goto out;
        }
        if (st || dsv4_plan_from_binding(bnd, nranks, &p))
            goto fail;
    }
    if (mem)
        dsv4_plan_fit(p, mem_b, res_b);
    if (json) {
        dsv4_plan_print_json(p, stdout);
    } else {
        dsv4_plan_print(p, stdout);
        if (tensors)
            print_tensor_kinds(con ? con : dsv4_binding_contract(bnd), nranks, stdout);
    }
    rc = fflush(stdout) ? 1 : 0;
    if (mem && p->kv_tokens == 0) {
        /* the weights (with the reserve and one sequence's fixed state) do not fit */
        int worst = 0;
        for (int r = 1; r < p->nranks; r++)
            if (p->ranks[r].total > p->ranks[worst].total)
                worst = r;
        fprintf(stderr,
                "dsv4 plan: does not fit: rank %d holds %.2f GiB of weights; with the reserve "
                "and one sequence's fixed state nothing is left of %.2f GiB per rank\n",
                worst, p->ranks[worst].total / 1073741824.0, mem_b / 1073741824.0);
        rc = 1;
    }
    goto out;
fail:
    fprintf(stderr, "dsv4 plan: %s\n", dsv4_errmsg());
out:
    dsv4_plan_free(p);
    dsv4_binding_free(bnd);
    dsv4_contract_free(con);
    free(views);
    dsv4_ckpt_close(ck);
    return rc;
}
