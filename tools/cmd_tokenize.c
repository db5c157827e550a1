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
 */
#include "engine/chat.h"
#include "engine/dsv4.h"
#include "engine/tokenizer.h"
#include "tools/cmds.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return DSV4_ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return DSV4_ENOMEM;
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
        fprintf(stderr, "dsv4 %s: --mode must be thinking or chat\n", cmd);
        return 2;
    }
    return 0;
}

int dsv4_cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    bool decode = false;
    unsigned flags = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--decode"))
            decode = true;
        else if (!strcmp(argv[i], "--special"))
            flags |= DSV4_TOKENIZER_RENDER_SPECIAL;
        else if (!strcmp(argv[i], "--special-as-text"))
            flags |= DSV4_TOKENIZER_SPECIAL_AS_TEXT;
        else {
            fprintf(stderr, "usage: dsv4 tokenize --tokenizer FILE [--decode] [--special] "
                            "[--special-as-text]\n"
                            "  text on stdin -> JSON array of ids; --decode: ids -> text;\n"
                            "  --special renders special tokens when decoding; --special-as-text\n"
                            "  encodes special tokens as plain text\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
    }
    if (!path) {
        fprintf(stderr, "dsv4 tokenize: --tokenizer FILE is required\n");
        return 2;
    }
    struct dsv4_tokenizer *tok = NULL;
    char *in = NULL, *text = NULL;
    size_t len, tlen;
    struct dsv4_tokens ids = {0};
    cJSON *arr = NULL;
    int rc = dsv4_tokenizer_load(path, &tok);
    if (rc || (rc = read_stdin(&in, &len)))
        goto done;
    if (decode) {
        arr = cJSON_ParseWithLength(in, len);
        if (!cJSON_IsArray(arr)) {
            rc = dsv4_error(DSV4_EINVAL, "stdin is not a JSON array of ids");
            goto done;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, arr)
        {
            if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int32_t)e->valuedouble) {
                rc = dsv4_error(DSV4_EINVAL, "ids must be integers");
                goto done;
            }
            if ((rc = dsv4_tokens_push(&ids, (int32_t)e->valuedouble)))
                goto done;
        }
        if ((rc = dsv4_tokenizer_decode(tok, ids.ids, ids.len, flags, &text, &tlen)))
            goto done;
        fwrite(text, 1, tlen, stdout);
    } else {
        if ((rc = dsv4_tokenizer_encode(tok, in, len, flags, &ids)))
            goto done;
        putchar('[');
        for (size_t i = 0; i < ids.len; i++)
            printf(i ? ", %d" : "%d", ids.ids[i]);
        printf("]\n");
    }
done:
    cJSON_Delete(arr);
    free(text);
    free(in);
    dsv4_tokens_free(&ids);
    dsv4_tokenizer_free(tok);
    return rc ? fail("tokenize", rc) : 0;
}

int dsv4_cmd_chat_encode(int argc, char **argv)
{
    struct dsv4_chat_opts o = {DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_NONE, false, false};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
            if (parse_mode("chat-encode", argv[++i], &o.mode))
                return 2;
        } else if (!strcmp(argv[i], "--reasoning-effort") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "high"))
                o.effort = DSV4_CHAT_EFFORT_HIGH;
            else if (!strcmp(v, "max"))
                o.effort = DSV4_CHAT_EFFORT_MAX;
            else {
                fprintf(stderr, "dsv4 chat-encode: --reasoning-effort must be high or max\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--keep-thinking"))
            o.keep_thinking = true;
        else if (!strcmp(argv[i], "--no-bos"))
            o.no_bos = true;
        else {
            fprintf(stderr,
                    "usage: dsv4 chat-encode [--mode thinking|chat] [--reasoning-effort "
                    "high|max] [--keep-thinking] [--no-bos]\n"
                    "  messages (array, or {\"messages\", \"tools\"}) on stdin -> prompt\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
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

int dsv4_cmd_chat_parse(int argc, char **argv)
{
    int mode = DSV4_CHAT_MODE_THINKING;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
            if (parse_mode("chat-parse", argv[++i], &mode))
                return 2;
        } else {
            fprintf(stderr, "usage: dsv4 chat-parse [--mode thinking|chat]\n"
                            "  completion text on stdin -> parsed message as JSON\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
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
