/*
 * fuzz_tokenizer.c - fuzz target of the tokenizer (encode of untrusted
 * bytes, decode, streaming decode).  For any input: encode never fails on
 * a loaded byte-level tokenizer; the ids carry every input byte; decode is
 * valid UTF-8, equals the input when the input is valid UTF-8 (special
 * tokens rendered), and the streaming decoder gives exactly the same text.
 * Runs against a small built-in tokenizer (Split behaviours, lstrip/rstrip/
 * single_word added tokens: there stripped whitespace is not carried, so
 * only validity and stream == whole are checked) and, when
 * $DSV4_SHARED_DATA has it, the real DeepSeek tokenizer.json too.
 */
#include "base/dsv4.h"
#include "engine/text/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char small_json[] =
        "{\"added_tokens\": ["
        "{\"id\": 300, \"content\": \"<s>\", \"special\": true, \"lstrip\": false, \"rstrip\": "
        "false, "
        "\"single_word\": false, \"normalized\": false},"
        "{\"id\": 301, \"content\": \"<mask>\", \"special\": true, \"lstrip\": true, \"rstrip\": "
        "true, "
        "\"single_word\": false, \"normalized\": false},"
        "{\"id\": 302, \"content\": \"word\", \"special\": false, \"lstrip\": false, \"rstrip\": "
        "false, "
        "\"single_word\": true, \"normalized\": true}],"
        "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{N}{1,3}\"}, \"behavior\": "
        "\"Isolated\", \"invert\": false},"
        "{\"type\": \"Split\", \"pattern\": {\"String\": \",\"}, \"behavior\": \"MergedWithNext\", "
        "\"invert\": false},"
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"[.!?]\"}, \"behavior\": "
        "\"MergedWithPrevious\", \"invert\": false},"
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-+\"}, \"behavior\": \"Contiguous\", "
        "\"invert\": true},"
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}]},"
        "\"decoder\": {\"type\": \"ByteLevel\"},"
        "\"model\": {\"type\": \"BPE\", \"vocab\": {VOCAB}, \"merges\": [MERGES]}}";

static struct dsv4_tokenizer *toks[2];
static int n_toks;

static char *utf8(uint32_t c, char *o)
{
    if (c < 0x80)
        *o++ = (char)c;
    else {
        *o++ = (char)(0xc0 | (c >> 6));
        *o++ = (char)(0x80 | (c & 0x3f));
    }
    return o;
}

/* The small tokenizer: the 256 byte tokens plus a few merges. */
static struct dsv4_tokenizer *small_tokenizer(void)
{
    static const char *const merges[][2] = {{"a", "b"}, {"ab", "c"},  {"Ġ", "a"}, {"Ġa", "b"},
                                            {"e", "e"}, {"ee", "ee"}, {"1", "2"}};
    size_t cap = 1 << 16;
    char *vocab = malloc(cap), *json = malloc(2 * cap), *p = vocab;
    char mbuf[1024], *m = mbuf;
    int next = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t c = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? (uint32_t)b : 0;
        if (!c) {
            int k = 0;
            for (int x = 0; x < b; x++)
                k += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174);
            c = 256 + (uint32_t)k;
        }
        char s[8], *e = utf8(c, s);
        *e = 0;
        if (!strcmp(s, "\"") || !strcmp(s, "\\"))
            p += sprintf(p, "%s\"\\%s\": %d", b ? ", " : "", s, next++);
        else
            p += sprintf(p, "%s\"%s\": %d", b ? ", " : "", s, next++);
    }
    for (size_t i = 0; i < DSV4_ARRAY_LEN(merges); i++) {
        p += sprintf(p, ", \"%s%s\": %d", merges[i][0], merges[i][1], next++);
        m += sprintf(m, "%s\"%s %s\"", i ? ", " : "", merges[i][0], merges[i][1]);
    }
    const char *v = strstr(small_json, "VOCAB"), *mm = strstr(small_json, "MERGES");
    sprintf(json, "%.*s%s%.*s%s%s", (int)(v - small_json), small_json, vocab, (int)(mm - (v + 5)),
            v + 5, mbuf, mm + 6);
    struct dsv4_tokenizer *t = NULL;
    if (dsv4_tokenizer_load_json(json, strlen(json), &t)) {
        fprintf(stderr, "fuzz_tokenizer: small tokenizer: %s\n", dsv4_errmsg());
        abort();
    }
    free(vocab);
    free(json);
    return t;
}

static void init(void)
{
    toks[n_toks++] = small_tokenizer();
    const char *d = getenv("DSV4_SHARED_DATA");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer/deepseek-v3-tokenizer.json",
             d ? d : "../shared/data");
    if (dsv4_tokenizer_load(path, &toks[n_toks]) == 0)
        n_toks++;
}

static bool valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t l = c < 0x80                 ? 1
                   : c >= 0xc2 && c <= 0xdf ? 2
                   : c >= 0xe0 && c <= 0xef ? 3
                   : c >= 0xf0 && c <= 0xf4 ? 4
                                            : 0;
        if (!l || i + l > n)
            return false;
        for (size_t k = 1; k < l; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f))
            return false;
        i += l;
    }
    return true;
}

/* exact: the tokenizer keeps every byte (no lstrip/rstrip tokens) */
static void check(const struct dsv4_tokenizer *tok, const uint8_t *data, size_t size,
                  unsigned flags, bool exact)
{
    struct dsv4_tokens t = {0};
    DSV4_ASSERT(dsv4_tokenizer_encode(tok, (const char *)data, size, flags, &t) == 0);
    size_t w = 0;
    for (size_t i = 0; i < t.len; i++) {
        size_t l;
        const char *b = dsv4_tokenizer_token_bytes(tok, t.ids[i], &l, NULL);
        DSV4_ASSERT(b);
        DSV4_ASSERT(!exact || (w + l <= size && !memcmp(data + w, b, l)));
        w += l;
    }
    DSV4_ASSERT(!exact || w == size);
    for (unsigned df = 0; df <= DSV4_TOKENIZER_RENDER_SPECIAL;
         df += DSV4_TOKENIZER_RENDER_SPECIAL) {
        char *text;
        size_t tl;
        DSV4_ASSERT(dsv4_tokenizer_decode(tok, t.ids, t.len, df, &text, &tl) == 0);
        DSV4_ASSERT(valid_utf8((const uint8_t *)text, tl));
        if (exact && df && valid_utf8(data, size))
            DSV4_ASSERT(tl == size && !memcmp(text, data, size));
        size_t cap = 3 * dsv4_tokenizer_max_token_bytes(tok) + 8, k, sw = 0;
        char *piece = malloc(cap);
        struct dsv4_detok d;
        dsv4_detok_init(&d, tok, df);
        for (size_t i = 0; i < t.len; i++) {
            DSV4_ASSERT(dsv4_detok_feed(&d, t.ids[i], piece, cap, &k) == 0);
            DSV4_ASSERT(sw + k <= tl && !memcmp(text + sw, piece, k));
            sw += k;
        }
        DSV4_ASSERT(dsv4_detok_flush(&d, piece, cap, &k) == 0);
        DSV4_ASSERT(sw + k == tl && !memcmp(text + sw, piece, k));
        free(piece);
        free(text);
    }
    dsv4_tokens_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!n_toks)
        init();
    for (int i = 0; i < n_toks; i++) {
        check(toks[i], data, size, 0, i > 0);
        check(toks[i], data, size, DSV4_TOKENIZER_SPECIAL_AS_TEXT, i > 0);
    }
    return 0;
}
