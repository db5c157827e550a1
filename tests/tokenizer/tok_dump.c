/*
 * tok_dump.c - helper of tests/tokenizer/test_hf_corpus.py: encodes every
 * string of a JSON-lines corpus with the C tokenizer and prints, per line,
 * the ids (space separated) and then the decode without special tokens as
 * a JSON string, so that Python can compare both with HF `tokenizers`.
 * It checks on its own, for every line, that decode(encode(x)) == x with
 * special tokens rendered and that the streaming decoder gives exactly the
 * whole-sequence decode in both modes; it exits 1 if any line fails.
 *
 * usage: tok_dump TOKENIZER.json CORPUS.jsonl [lossy] > out
 * (lossy: the tokenizer may drop or add text, e.g. a normalizer or lstrip
 * tokens, so the round trip is not checked)
 */
#include "base/dsv4.h"
#include "engine/text/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int stream_decode(const struct dsv4_tokenizer *tok, const struct dsv4_tokens *t,
                         unsigned flags, char **out, size_t *out_len)
{
    size_t cap = 3 * dsv4_tokenizer_max_token_bytes(tok) + 8;
    char *piece = malloc(cap);
    size_t total_cap = 16 + t->len * cap, w = 0, n;
    char *all = malloc(total_cap);
    struct dsv4_detok d;
    int rc = 0;
    if (!piece || !all) {
        rc = DSV4_ENOMEM;
        goto done;
    }
    dsv4_detok_init(&d, tok, flags);
    for (size_t i = 0; i < t->len; i++) {
        if ((rc = dsv4_detok_feed(&d, t->ids[i], piece, cap, &n)))
            goto done;
        memcpy(all + w, piece, n);
        w += n;
    }
    if ((rc = dsv4_detok_flush(&d, piece, cap, &n)))
        goto done;
    memcpy(all + w, piece, n);
    w += n;
done:
    free(piece);
    if (rc) {
        free(all);
        return rc;
    }
    *out = all;
    *out_len = w;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: tok_dump TOKENIZER.json CORPUS.jsonl [lossy]\n");
        return 2;
    }
    struct dsv4_tokenizer *tok;
    if (dsv4_tokenizer_load(argv[1], &tok)) {
        fprintf(stderr, "tok_dump: %s\n", dsv4_errmsg());
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int fails = 0, lineno = 0;
    struct dsv4_tokens t = {0};
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        if (!cJSON_IsString(j)) {
            fprintf(stderr, "line %d: not a JSON string\n", lineno);
            return 2;
        }
        const char *s = j->valuestring;
        size_t n = strlen(s);
        t.len = 0;
        if (dsv4_tokenizer_encode(tok, s, n, 0, &t)) {
            fprintf(stderr, "line %d: encode: %s\n", lineno, dsv4_errmsg());
            return 2;
        }
        for (size_t i = 0; i < t.len; i++)
            printf(i ? " %d" : "%d", t.ids[i]);
        putchar('\n');
        for (int mode = 0; mode < 2; mode++) {
            unsigned flags = mode ? DSV4_TOKENIZER_RENDER_SPECIAL : 0;
            char *whole, *streamed;
            size_t wl, sl;
            if (dsv4_tokenizer_decode(tok, t.ids, t.len, flags, &whole, &wl) ||
                stream_decode(tok, &t, flags, &streamed, &sl)) {
                fprintf(stderr, "line %d: decode: %s\n", lineno, dsv4_errmsg());
                return 2;
            }
            if (wl != sl || memcmp(whole, streamed, wl)) {
                fprintf(stderr, "line %d: streaming decode differs (mode %d)\n", lineno, mode);
                fails++;
            }
            if (mode == 1 && argc == 3 && (wl != n || memcmp(whole, s, n))) {
                fprintf(stderr, "line %d: round trip differs\n", lineno);
                fails++;
            }
            if (mode == 0) {
                cJSON *js = cJSON_CreateString(whole);
                char *p = cJSON_PrintUnformatted(js);
                puts(p);
                free(p);
                cJSON_Delete(js);
            }
            free(whole);
            free(streamed);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    dsv4_tokens_free(&t);
    dsv4_tokenizer_free(tok);
    fprintf(stderr, "tok_dump: %d lines, %d failures\n", lineno, fails);
    return fails ? 1 : 0;
}
