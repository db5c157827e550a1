/*
 * cmd_generate.c - `dsv4 generate`: offline generation on CPU with the
 * engine's forward pass (engine/model/generate.h): prompt ids or text (tokenizer
 * of the model directory, optional chat encoding), greedy or sampled, MTP
 * drafting, N ranks as threads; prints tokens, text, tok/s and MTP
 * acceptance, or one JSON object with --json.  --dump-logits / --dump-layers
 * follow the conventions of tests/reference/dsv4_ref.py.
 */
#include "engine/text/chat.h"
#include "base/dsv4.h"
#include "engine/model/generate.h"
#include "engine/io/strbuf.h"
#include "engine/text/tokenizer.h"
#include "tools/cmds.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 generate --model DIR (--prompt-ids 0,15,27 | --prompt TEXT [--chat])\n"
               "         [--max-tokens N] [--mtp K] [--temperature T] [--top-p P] [--top-k K]\n"
               "         [--min-p P] [--repetition-penalty R] [--presence-penalty P]\n"
               "         [--frequency-penalty F] [--seed S] [--threads N] [--ranks N] [--chunk N]\n"
               "         [--no-stop] [--logprobs] [--backend cpu|ref|devsim|cuda[:N]]\n"
               "         [--json] [--dump-logits FILE] [--dump-layers DIR]\n"
               "diagnostics: --force-layers DIR (replace each layer's prompt output by\n"
               "  DIR/layer_%%02d.f32 after dumping it), --dump-mtp-logits FILE (MTP logits of\n"
               "  prompt positions 0..P-2; needs --mtp >= 1), --dump-draft-logits FILE (logits of\n"
               "  the k drafts made right after the prompt)\n");
}

/* Strict option values: the whole string is a number in range, else a message and 1. */
static int opt_int(const char *name, const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "dsv4 generate: %s '%s' is not an integer in [%ld, %ld]\n", name, v, lo,
                hi);
        return 1;
    }
    *out = (int)x;
    return 0;
}

static int opt_float(const char *name, const char *v, float *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x)) {
        fprintf(stderr, "dsv4 generate: %s '%s' is not a finite number\n", name, v);
        return 1;
    }
    *out = (float)x;
    return 0;
}

static int opt_u64(const char *name, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || *v == '-') {
        fprintf(stderr, "dsv4 generate: %s '%s' is not an unsigned 64-bit integer\n", name, v);
        return 1;
    }
    *out = (uint64_t)x;
    return 0;
}

static int parse_ids(const char *s, int32_t **ids, int *n)
{
    int cap = 16, cnt = 0;
    int32_t *v = malloc(sizeof(int32_t) * cap);
    if (!v)
        return -1;
    while (*s) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (cnt == cap) {
            int32_t *w = realloc(v, sizeof(int32_t) * (cap *= 2));
            if (!w) {
                free(v);
                return -1;
            }
            v = w;
        }
        v[cnt++] = (int32_t)x;
        s = *end ? end + 1 : end;
    }
    *ids = v;
    *n = cnt;
    return cnt > 0 ? 0 : -1;
}

/* JSON string literal of s (malloc'ed; NULL when out of memory). */
static char *json_str(const char *s)
{
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_json_str(&b, s, false);
    if (b.oom) {
        dsv4_strbuf_free(&b);
        return NULL;
    }
    return b.p;
}

struct printer {
    struct dsv4_detok dt;
    bool on;
};

static void on_token(void *ctx, int32_t tok)
{
    struct printer *pr = ctx;
    if (!pr->on)
        return;
    char buf[4096];
    size_t n = 0;
    if (dsv4_detok_feed(&pr->dt, tok, buf, sizeof buf, &n) == 0 && n)
        fwrite(buf, 1, n, stdout);
    fflush(stdout);
}

int dsv4_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *ids_s = NULL, *text = NULL, *dump_l = NULL, *dump_f = NULL;
    const char *dump_m = NULL, *dump_d = NULL;
    bool chat = false, json = false, logprobs = false;
    struct dsv4_gen_opts o;
    dsv4_gen_opts_default(&o);
    o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = DSV4_MAX(1, DSV4_MIN(o.threads, DSV4_GEN_MAX_THREADS));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--model"))
            model = v;
        else if (ARG("--prompt-ids"))
            ids_s = v;
        else if (ARG("--prompt"))
            text = v;
        else if (!strcmp(a, "--chat"))
            chat = true;
        else if (!strcmp(a, "--json"))
            json = true;
        else if (!strcmp(a, "--no-stop"))
            o.stop_at_eos = false;
        else if (ARG("--max-tokens"))
            bad = opt_int(a, v, 0, INT32_MAX - 1, &o.max_tokens);
        else if (ARG("--mtp"))
            bad = opt_int(a, v, 0, DSV4_GEN_MAX_MTP, &o.mtp);
        else if (ARG("--temperature"))
            bad = opt_float(a, v, &o.sample.temperature);
        else if (ARG("--top-p"))
            bad = opt_float(a, v, &o.sample.top_p);
        else if (ARG("--top-k"))
            bad = opt_int(a, v, 0, INT32_MAX, &o.sample.top_k);
        else if (ARG("--min-p"))
            bad = opt_float(a, v, &o.sample.min_p);
        else if (ARG("--repetition-penalty"))
            bad = opt_float(a, v, &o.sample.repetition_penalty);
        else if (ARG("--presence-penalty"))
            bad = opt_float(a, v, &o.sample.presence_penalty);
        else if (ARG("--frequency-penalty"))
            bad = opt_float(a, v, &o.sample.frequency_penalty);
        else if (!strcmp(a, "--logprobs"))
            logprobs = o.sample.logprobs = true;
        else if (ARG("--seed"))
            bad = opt_u64(a, v, &o.sample.seed);
        else if (ARG("--threads"))
            bad = opt_int(a, v, 1, DSV4_GEN_MAX_THREADS, &o.threads);
        else if (ARG("--ranks"))
            bad = opt_int(a, v, 1, DSV4_GEN_MAX_RANKS, &o.ranks);
        else if (ARG("--chunk"))
            bad = opt_int(a, v, 1, DSV4_GEN_MAX_CHUNK, &o.chunk);
        else if (ARG("--backend")) {
            o.backend = v;
            if (strcmp(v, "cpu") && strcmp(v, "ref") && strcmp(v, "devsim") && strcmp(v, "cuda") &&
                strncmp(v, "cuda:", 5)) {
                fprintf(stderr,
                        "dsv4 generate: --backend '%s' is not cpu, ref, devsim, cuda or cuda:N\n",
                        v);
                bad = 1;
            }
        } else if (ARG("--dump-logits"))
            dump_f = v;
        else if (ARG("--dump-layers"))
            dump_l = v;
        else if (ARG("--force-layers"))
            o.force_layers = v;
        else if (ARG("--dump-mtp-logits"))
            dump_m = v;
        else if (ARG("--dump-draft-logits"))
            dump_d = v;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dsv4 generate: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
#undef ARG
    }
    if (!model || (!ids_s == !text)) {
        fprintf(stderr, "dsv4 generate: %s\n",
                !model ? "--model DIR is required"
                       : "give exactly one of --prompt-ids and --prompt");
        usage(stderr);
        return 2;
    }
    if (chat && ids_s) {
        fprintf(stderr, "dsv4 generate: --chat encodes --prompt TEXT; it cannot apply to "
                        "--prompt-ids\n");
        return 2;
    }
    /* sampling values out of range are bad usage, like a malformed number */
    if (dsv4_sample_params_check(&o.sample)) {
        fprintf(stderr, "dsv4 generate: %s\n", dsv4_msg_body(dsv4_errmsg(), "sample"));
        return 2;
    }
    int rc = 1, n_prompt = 0;
    int32_t *prompt = NULL;
    struct dsv4_tokenizer *tok = NULL;
    struct dsv4_tokens toks = {0};
    struct dsv4_gen_result res = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    if (access(path, R_OK) == 0 && dsv4_tokenizer_load(path, &tok) != 0) {
        fprintf(stderr, "dsv4 generate: %s\n", dsv4_errmsg());
        goto out;
    }
    if (ids_s) {
        if (parse_ids(ids_s, &prompt, &n_prompt)) {
            fprintf(stderr,
                    "dsv4 generate: bad --prompt-ids '%s' (want comma-separated token ids >= 0)\n",
                    ids_s);
            goto out;
        }
    } else {
        if (!tok) {
            fprintf(stderr, "dsv4 generate: --prompt needs %s\n", path);
            goto out;
        }
        char *enc = NULL;
        size_t enc_len = 0;
        const char *src = text;
        if (chat) {
            char *js = json_str(text), *msg = NULL;
            struct dsv4_chat_opts co = {0};
            co.mode = DSV4_CHAT_MODE_CHAT;
            if (js && (msg = malloc(strlen(js) + 64)))
                sprintf(msg, "[{\"role\": \"user\", \"content\": %s}]", js);
            int crc = msg ? dsv4_chat_encode_json(msg, strlen(msg), &co, &enc, &enc_len)
                          : DSV4_ENOMEM;
            free(js);
            free(msg);
            if (crc) {
                fprintf(stderr, "dsv4 generate: chat encoding: %s\n", dsv4_errmsg());
                goto out;
            }
            src = enc;
        }
        int erc = dsv4_tokenizer_encode(tok, src, strlen(src), 0, &toks);
        free(enc);
        if (erc) {
            fprintf(stderr, "dsv4 generate: tokenizer: %s\n", dsv4_errmsg());
            goto out;
        }
        prompt = toks.ids;
        n_prompt = (int)toks.len;
        toks.ids = NULL;
    }
    FILE *lf = NULL;
    if (dump_f && !(lf = fopen(dump_f, "wb"))) {
        fprintf(stderr, "dsv4 generate: cannot create %s\n", dump_f);
        goto out;
    }
    FILE *mf = NULL;
    if (dump_m && !(mf = fopen(dump_m, "wb"))) {
        fprintf(stderr, "dsv4 generate: cannot create %s\n", dump_m);
        if (lf)
            fclose(lf);
        goto out;
    }
    FILE *df = NULL;
    if (dump_d && !(df = fopen(dump_d, "wb"))) {
        fprintf(stderr, "dsv4 generate: cannot create %s\n", dump_d);
        if (lf)
            fclose(lf);
        if (mf)
            fclose(mf);
        goto out;
    }
    o.dump_logits = lf;
    o.dump_mtp_logits = mf;
    o.dump_draft_logits = df;
    o.dump_layers = dump_l;
    struct printer pr = {.on = tok && !json};
    if (tok)
        dsv4_detok_init(&pr.dt, tok, 0);
    o.on_token = on_token;
    o.ctx = &pr;
    int grc = dsv4_generate(model, prompt, n_prompt, &o, &res);
    if (lf && fclose(lf) != 0 && !grc)
        grc = dsv4_error(DSV4_EIO, "closing %s failed", dump_f);
    if (mf && fclose(mf) != 0 && !grc)
        grc = dsv4_error(DSV4_EIO, "closing %s failed", dump_m);
    if (df && fclose(df) != 0 && !grc)
        grc = dsv4_error(DSV4_EIO, "closing %s failed", dump_d);
    if (grc) {
        fprintf(stderr, "dsv4 generate: %s\n", dsv4_msg_body(dsv4_errmsg(), "generate"));
        goto out;
    }
    if (pr.on) {
        char buf[16];
        size_t n = 0;
        if (dsv4_detok_flush(&pr.dt, buf, sizeof buf, &n) == 0 && n)
            fwrite(buf, 1, n, stdout);
        printf("\n");
    }
    double dec_tps = res.t_decode > 0 && res.n > 1 ? (res.n - 1) / res.t_decode : 0;
    double pre_tps = res.t_prefill > 0 ? res.n_prompt / res.t_prefill : 0;
    double rate = res.drafted ? (double)res.accepted / res.drafted : 0;
    if (json) {
        printf("{\"tokens\": [");
        for (int i = 0; i < res.n; i++)
            printf("%s%d", i ? ", " : "", res.tokens[i]);
        printf("]");
        if (tok) {
            /* the generated text (the tokenizer of the model directory) */
            char *txt = NULL;
            size_t tl = 0;
            if (dsv4_tokenizer_decode(tok, res.tokens, (size_t)res.n, 0, &txt, &tl) == 0) {
                char *js = json_str(txt);
                if (js)
                    printf(", \"text\": %s", js);
                free(js);
            }
            free(txt);
        }
        if (logprobs) {
            printf(", \"logprobs\": [");
            for (int i = 0; i < res.n; i++)
                printf("%s%.6g", i ? ", " : "", res.logprobs[i]);
            printf("]");
        }
        printf(", \"n_prompt\": %d, \"acceptance\": {\"drafted\": %llu, \"accepted\": %llu, "
               "\"rate\": %.4f, \"per_position\": [",
               res.n_prompt, (unsigned long long)res.drafted, (unsigned long long)res.accepted,
               rate);
        for (int i = 0; i < o.mtp && i < DSV4_GEN_MAX_MTP; i++)
            printf("%s{\"drafted\": %llu, \"accepted\": %llu}", i ? ", " : "",
                   (unsigned long long)res.drafted_at[i], (unsigned long long)res.accepted_at[i]);
        printf("]}, \"timings\": {\"load_s\": %.4f, \"prefill_s\": %.4f, \"decode_s\": %.4f, "
               "\"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, \"steps\": %d}}\n",
               res.t_load, res.t_prefill, res.t_decode, pre_tps, dec_tps, res.steps);
    } else {
        printf("tokens:");
        for (int i = 0; i < res.n; i++)
            printf(" %d", res.tokens[i]);
        if (logprobs) {
            printf("\nlogprobs:");
            for (int i = 0; i < res.n; i++)
                printf(" %.6g", res.logprobs[i]);
        }
        printf("\nprompt %d tokens, prefill %.3f s (%.1f tok/s); generated %d tokens, decode "
               "%.3f s (%.2f tok/s), %d steps\n",
               res.n_prompt, res.t_prefill, pre_tps, res.n, res.t_decode, dec_tps, res.steps);
        if (o.mtp) {
            printf("mtp acceptance: %llu/%llu (%.1f%%); per position:",
                   (unsigned long long)res.accepted, (unsigned long long)res.drafted, 100.0 * rate);
            for (int i = 0; i < o.mtp && i < DSV4_GEN_MAX_MTP; i++)
                printf(" %llu/%llu", (unsigned long long)res.accepted_at[i],
                       (unsigned long long)res.drafted_at[i]);
            printf("\n");
        }
    }
    rc = 0;
out:
    dsv4_gen_result_free(&res);
    free(prompt);
    dsv4_tokens_free(&toks);
    dsv4_tokenizer_free(tok);
    return rc;
}
