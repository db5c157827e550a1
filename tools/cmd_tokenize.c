/*
 * cmd_tokenize.c - the tokenizer and chat-format subcommands of `dsv4`:
 *
 *   dsv4 tokenize --tokenizer FILE [--decode] [--special] [--special-as-text]
 *       text on stdin -> JSON array of ids (or, with --decode, a JSON array
 *       of ids on stdin -> text; --special renders special tokens)
 *   dsv4 chat-encode [--mode thinking|chat] [--reasoning-effort high|max]
 *       [--keep-thinking] [--no-bos]
 *       messages array or {"messages", "tools"} on stdin -> prompt text,
 *       exactly, without an added newline
 *   dsv4 chat-parse [--mode thinking|chat]
 *       completion text on stdin -> the parsed message as JSON
 *
 * Exit status: 0 ok, 1 bad input (message on stderr), 2 bad usage.
 * Invariants: every option error names the option; stdin is read whole but
 * never beyond MAX_STDIN bytes; ids for --decode are range-checked as
 * doubles before any conversion to int32_t (no out-of-range float cast).
 */
#include "engine/text/chat.h"
#include "base/dsv4.h"
#include "engine/text/tokenizer.h"
#include "tools/cmds.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1 GiB: far above any prompt (the tokenizer.json bound too), low enough
 * that a runaway pipe fails with a message instead of exhausting memory */
#define MAX_STDIN ((size_t)1 << 30)

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return dsv4_error(DSV4_ENOMEM, "out of memory reading stdin");
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > MAX_STDIN) {
                free(buf);
                return dsv4_error(DSV4_ERANGE, "stdin is larger than %zu bytes", MAX_STDIN);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return dsv4_error(DSV4_ENOMEM, "out of memory reading stdin (%zu bytes)", n);
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(stdin)) {
        free(buf);
        return dsv4_error(DSV4_EIO, "cannot read stdin");
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* Option-parsing failures: one line naming the option, then exit status 2. */
static int bad_usage(const char *cmd, const char *opt, bool has_value)
{
    if (has_value)
        fprintf(stderr, "dsv4 %s: %s needs a value (see dsv4 %s --help)\n", cmd, opt, cmd);
    else
        fprintf(stderr, "dsv4 %s: unknown option '%s' (see dsv4 %s --help)\n", cmd, opt, cmd);
    return 2;
}

/* The JSON array of ids on stdin for --decode: every element an integer in
 * int32_t range (checked on the double, so no out-of-range cast). */
static int parse_ids(const char *in, size_t len, struct dsv4_tokens *ids)
{
    cJSON *arr = cJSON_ParseWithLength(in, len);
    int rc = 0, pos = 0;
    if (!cJSON_IsArray(arr)) {
        rc = dsv4_error(DSV4_EINVAL, "stdin is not a JSON array of ids");
        goto fail;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        if (!(v >= INT32_MIN && v <= INT32_MAX) || v != floor(v)) {
            rc = dsv4_error(DSV4_EINVAL, "id at position %d is not an integer in int32 range", pos);
            goto fail;
        }
        if ((rc = dsv4_tokens_push(ids, (int32_t)v)))
            goto fail;
        pos++;
    }
fail:
    cJSON_Delete(arr);
    return rc;
}

static int fail(const char *cmd, int rc)
{
    fprintf(stderr, "dsv4 %s: %s (%s)\n", cmd, dsv4_errmsg(), dsv4_strerror(rc));
    return 1;
}

static int parse_mode(const char *cmd, const char *v, int *mode)
{
    if (!strcmp(v, "thinking"))
        *mode = DSV4_CHAT_MODE_THINKING;
    else if (!strcmp(v, "chat"))
        *mode = DSV4_CHAT_MODE_CHAT;
    else {
        fprintf(stderr, "dsv4 %s: --mode must be thinking or chat, not '%s'\n", cmd, v);
        return 2;
    }
    return 0;
}

static void tokenize_help(FILE *f)
{
    fputs("usage: dsv4 tokenize --tokenizer FILE [--decode] [--special] [--special-as-text]\n"
          "  text on stdin -> JSON array of ids on stdout\n"
          "  --tokenizer FILE   a byte-level BPE tokenizer.json (required)\n"
          "  --decode           JSON array of ids on stdin -> text\n"
          "  --special          with --decode: render special tokens (default: drop them)\n"
          "  --special-as-text  encode special-token strings as plain text\n"
          "exit status: 0 ok, 1 bad input or tokenizer file, 2 bad usage\n",
          f);
}

/* ids -> text, or text -> "[id, id, ...]\n" on stdout */
static int tokenize_run(const struct dsv4_tokenizer *tok, const char *in, size_t len, bool decode,
                        unsigned flags)
{
    struct dsv4_tokens ids = {0};
    char *text = NULL;
    size_t tlen;
    int rc;
    if (decode) {
        if ((rc = parse_ids(in, len, &ids)) ||
            (rc = dsv4_tokenizer_decode(tok, ids.ids, ids.len, flags, &text, &tlen)))
            goto fail;
        fwrite(text, 1, tlen, stdout);
    } else {
        if ((rc = dsv4_tokenizer_encode(tok, in, len, flags, &ids)))
            goto fail;
        putchar('[');
        for (size_t i = 0; i < ids.len; i++)
            printf(i ? ", %d" : "%d", ids.ids[i]);
        printf("]\n");
    }
fail:
    free(text);
    dsv4_tokens_free(&ids);
    return rc;
}

int dsv4_cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    bool decode = false;
    unsigned flags = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            tokenize_help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--tokenizer")) {
            if (i + 1 >= argc || !argv[i + 1][0])
                return bad_usage("tokenize", argv[i], true);
            path = argv[++i];
        } else if (!strcmp(argv[i], "--decode"))
            decode = true;
        else if (!strcmp(argv[i], "--special"))
            flags |= DSV4_TOKENIZER_RENDER_SPECIAL;
        else if (!strcmp(argv[i], "--special-as-text"))
            flags |= DSV4_TOKENIZER_SPECIAL_AS_TEXT;
        else
            return bad_usage("tokenize", argv[i], false);
    }
    if (!path) {
        fprintf(stderr, "dsv4 tokenize: --tokenizer FILE is required (see dsv4 tokenize --help)\n");
        return 2;
    }
    struct dsv4_tokenizer *tok = NULL;
    char *in = NULL;
    size_t len;
    int rc = dsv4_tokenizer_load(path, &tok);
    if (!rc && !(rc = read_stdin(&in, &len)))
        rc = tokenize_run(tok, in, len, decode, flags);
    free(in);
    dsv4_tokenizer_free(tok);
    return rc ? fail("tokenize", rc) : 0;
}

static void chat_encode_help(FILE *f)
{
    fputs("usage: dsv4 chat-encode [--mode thinking|chat] [--reasoning-effort high|max]\n"
          "                        [--keep-thinking] [--no-bos]\n"
          "  messages (a JSON array, or {\"messages\", \"tools\"}) on stdin -> the prompt\n"
          "  text on stdout, exactly (no newline added)\n"
          "  --mode thinking|chat         thinking (default) or plain chat template\n"
          "  --reasoning-effort high|max  max: the max-effort preamble (thinking mode);\n"
          "                               high renders as the default\n"
          "  --keep-thinking              never drop earlier turns' reasoning\n"
          "  --no-bos                     omit the begin-of-sentence token\n"
          "exit status: 0 ok, 1 bad input, 2 bad usage\n",
          f);
}

static int parse_effort(const char *v, int *effort)
{
    if (!strcmp(v, "high"))
        *effort = DSV4_CHAT_EFFORT_HIGH;
    else if (!strcmp(v, "max"))
        *effort = DSV4_CHAT_EFFORT_MAX;
    else {
        fprintf(stderr, "dsv4 chat-encode: --reasoning-effort must be high or max, not '%s'\n", v);
        return 2;
    }
    return 0;
}

int dsv4_cmd_chat_encode(int argc, char **argv)
{
    struct dsv4_chat_opts o = {DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_NONE, false, false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool valued = !strcmp(a, "--mode") || !strcmp(a, "--reasoning-effort");
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            chat_encode_help(stdout);
            return 0;
        }
        if (valued && i + 1 >= argc)
            return bad_usage("chat-encode", a, true);
        if (!strcmp(a, "--mode")) {
            if (parse_mode("chat-encode", argv[++i], &o.mode))
                return 2;
        } else if (!strcmp(a, "--reasoning-effort")) {
            if (parse_effort(argv[++i], &o.effort))
                return 2;
        } else if (!strcmp(a, "--keep-thinking"))
            o.keep_thinking = true;
        else if (!strcmp(a, "--no-bos"))
            o.no_bos = true;
        else
            return bad_usage("chat-encode", a, false);
    }
    char *in = NULL, *text = NULL;
    size_t len, tlen;
    int rc = read_stdin(&in, &len);
    if (!rc && !(rc = dsv4_chat_encode_json(in, len, &o, &text, &tlen)))
        fwrite(text, 1, tlen, stdout);
    free(in);
    free(text);
    return rc ? fail("chat-encode", rc) : 0;
}

static void chat_parse_help(FILE *f)
{
    fputs("usage: dsv4 chat-parse [--mode thinking|chat]\n"
          "  completion text on stdin -> the parsed message (reasoning_content, content,\n"
          "  tool_calls) as JSON on stdout\n"
          "  --mode thinking|chat  how the completion was prompted (default thinking)\n"
          "exit status: 0 ok, 1 bad input, 2 bad usage\n",
          f);
}

int dsv4_cmd_chat_parse(int argc, char **argv)
{
    int mode = DSV4_CHAT_MODE_THINKING;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            chat_parse_help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--mode")) {
            if (i + 1 >= argc)
                return bad_usage("chat-parse", argv[i], true);
            if (parse_mode("chat-parse", argv[++i], &mode))
                return 2;
        } else
            return bad_usage("chat-parse", argv[i], false);
    }
    char *in = NULL;
    size_t len;
    cJSON *msg = NULL;
    int rc = read_stdin(&in, &len);
    if (!rc && !(rc = dsv4_chat_parse(in, len, mode, &msg))) {
        char *s = cJSON_Print(msg);
        if (s)
            printf("%s\n", s);
        else
            rc = dsv4_error(DSV4_ENOMEM, "out of memory");
        free(s);
    }
    cJSON_Delete(msg);
    free(in);
    return rc ? fail("chat-parse", rc) : 0;
}
