/*
 * cmd_mkmodel.c - `dsv4 mkmodel --preset tiny|small | --config FILE
 * [--format mxfp4|nvfp4|fp8] [--tokenizer TOKENIZER_JSON] [--seed N]
 * [--shards N] --out DIR`: writes a synthetic checkpoint directory with the
 * contract's exact layout (tools/mkmodel.h).
 */
#include "dsv4-build.h"
#include "engine/io/config.h"
#include "base/dsv4.h"
#include "tools/mkmodel.h"
#include "tools/cmds.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

static void mkmodel_usage(FILE *f)
{
    fprintf(f, "usage: dsv4 mkmodel (--preset tiny|small | --config FILE) --out DIR [options]\n"
               "  --format mxfp4|nvfp4|fp8   routed-expert format (default: mxfp4 for presets,\n"
               "                             the config's own for --config)\n"
               "  --tokenizer FILE           tokenizer.json to copy; presets take its vocabulary\n"
               "                             (required with --preset)\n"
               "  --seed N                   random seed (default 1)\n"
               "  --shards N                 number of safetensors shards (default 1)\n");
}

static int parse_long(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 0);

    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Every option of mkmodel takes a value. */
static bool is_value_option(const char *a)
{
    static const char *const opts[] = {"--preset", "--config", "--format", "--tokenizer",
                                       "--out",    "--seed",   "--shards"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(opts); i++)
        if (!strcmp(a, opts[i]))
            return true;
    return false;
}

int dsv4_cmd_mkmodel(int argc, char **argv)
{
    const char *preset = NULL, *config = NULL, *format = NULL, *tok = NULL, *out = NULL;
    long long seed = 1, shards = 1;
    struct dsv4_config cfg;
    enum dsv4_expert_fmt fmt = DSV4_EXPERT_MXFP4;
    double t0 = dsv4_now();

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            mkmodel_usage(stdout);
            return 0;
        }
        if (a[0] == '-' && !is_value_option(a)) {
            fprintf(stderr, "dsv4 mkmodel: unknown option '%s'\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
        if (a[0] == '-' && !v) {
            fprintf(stderr, "dsv4 mkmodel: option '%s' needs a value\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
        if (a[0] != '-') {
            fprintf(stderr, "dsv4 mkmodel: unexpected argument '%s'\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--preset")) {
            preset = v;
        } else if (!strcmp(a, "--config")) {
            config = v;
        } else if (!strcmp(a, "--format")) {
            format = v;
        } else if (!strcmp(a, "--tokenizer")) {
            tok = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--seed")) {
            if (parse_long(v, 0, INT64_MAX, &seed)) {
                fprintf(stderr, "dsv4 mkmodel: bad --seed '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--shards")) {
            if (parse_long(v, 1, 99999, &shards)) {
                fprintf(stderr, "dsv4 mkmodel: bad --shards '%s' (1..99999)\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "dsv4 mkmodel: unknown option '%s'\n", a);
            mkmodel_usage(stderr);
            return 2;
        }
    }
    if (!!preset == !!config || !out) {
        fprintf(stderr, "dsv4 mkmodel: need --out and exactly one of --preset, --config\n");
        mkmodel_usage(stderr);
        return 2;
    }
    if (preset && strcmp(preset, "tiny") && strcmp(preset, "small")) {
        fprintf(stderr, "dsv4 mkmodel: unknown --preset '%s' (tiny, small)\n", preset);
        return 2;
    }
    if (format) {
        if (!strcmp(format, "mxfp4"))
            fmt = DSV4_EXPERT_MXFP4;
        else if (!strcmp(format, "nvfp4"))
            fmt = DSV4_EXPERT_NVFP4;
        else if (!strcmp(format, "fp8"))
            fmt = DSV4_EXPERT_FP8;
        else {
            fprintf(stderr, "dsv4 mkmodel: bad --format '%s' (mxfp4, nvfp4, fp8)\n", format);
            return 2;
        }
    }
    if (preset) {
        int ids, vocab;
        if (!tok) {
            fprintf(stderr, "dsv4 mkmodel: --preset needs --tokenizer (its vocabulary)\n");
            return 2;
        }
        if (dsv4_mkmodel_tokenizer_vocab(tok, &ids, &vocab) ||
            dsv4_mkmodel_preset(preset, vocab, fmt, &cfg))
            goto fail;
    } else {
        int ids, vocab;
        if (dsv4_config_load(config, &cfg))
            goto fail;
        if (format) {
            dsv4_mkmodel_set_format(&cfg, fmt);
            if (dsv4_config_validate(&cfg)) /* the block sizes differ per format */
                goto fail;
        }
        if (tok && dsv4_mkmodel_tokenizer_vocab(tok, &ids, &vocab))
            goto fail;
        if (tok && ids > cfg.vocab_size) {
            fprintf(stderr, "dsv4 mkmodel: %s has %d token ids, %s only vocab_size %d\n", tok, ids,
                    config, cfg.vocab_size);
            return 1;
        }
    }

    struct dsv4_mkmodel_opts o = {.cfg = &cfg,
                                  .seed = (uint64_t)seed,
                                  .shards = (int)shards,
                                  .tokenizer = tok,
                                  .out_dir = out};
    if (dsv4_mkmodel_write(&o))
        goto fail;
    fprintf(stderr, "dsv4 mkmodel: wrote %s (%s experts, vocab %d, %d shard%s) in %.2f s\n", out,
            dsv4_expert_fmt_name(cfg.expert_fmt), cfg.vocab_size, (int)shards,
            shards > 1 ? "s" : "", dsv4_now() - t0);
    return 0;
fail:;
    const char *msg = dsv4_errmsg();
    if (!strncmp(msg, "mkmodel: ", 9)) /* the engine's prefix repeats ours */
        msg += 9;
    fprintf(stderr, "dsv4 mkmodel: %s\n", msg);
    return 1;
}
