/*
 * test_tokenizer.c - tokenizer behaviour that the HF corpus test cannot
 * cover: known ids of the DeepSeek vocabulary (and the spec's V4 example
 * with <think>/</think> added at their V4 ids), invalid UTF-8 (our defined
 * behaviour: the ids carry every input byte, stray bytes are byte tokens,
 * decode is lossy with one U+FFFD per maximal subpart), streaming decode equal to
 * whole decode on random ids and bytes, special tokens as text, linear time
 * on 1 MB inputs without spaces (time ratio 1 MB / 100 KB, not absolute
 * times), concurrent encoding from several threads, and precise errors for bad files and ids.
 */
#include "base/dsv4.h"
#include "engine/text/tokenizer.h"
#include "tests/test.h"

#include <cjson/cJSON.h>

#include <pthread.h>
#include <stdint.h>

static struct dsv4_tokenizer *tok;

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static bool valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80                 ? 1
                   : c >= 0xc2 && c <= 0xdf ? 2
                   : c >= 0xe0 && c <= 0xef ? 3
                   : c >= 0xf0 && c <= 0xf4 ? 4
                                            : 0;
        if (!l || i + l > n)
            return false;
        for (size_t k = 1; k < l; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80)
                return false;
        if (l == 3 && c == 0xe0 && (unsigned char)s[i + 1] < 0xa0)
            return false;
        if (l == 3 && c == 0xed && (unsigned char)s[i + 1] > 0x9f)
            return false;
        if (l == 4 && c == 0xf0 && (unsigned char)s[i + 1] < 0x90)
            return false;
        if (l == 4 && c == 0xf4 && (unsigned char)s[i + 1] > 0x8f)
            return false;
        i += l;
    }
    return true;
}

/* The ids carry the bytes: their raw token bytes concatenate to s. */
static bool raw_equal(const struct dsv4_tokens *t, const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < t->len; i++) {
        size_t l;
        const char *b = dsv4_tokenizer_token_bytes(tok, t->ids[i], &l, NULL);
        if (!b || w + l > n || memcmp(s + w, b, l))
            return false;
        w += l;
    }
    return w == n;
}

static void encode(const char *s, size_t n, unsigned flags, struct dsv4_tokens *t)
{
    t->len = 0;
    int rc = dsv4_tokenizer_encode(tok, s, n, flags, t);
    CHECKF(rc == 0, "encode: %s", dsv4_errmsg());
}

/* decode == streaming decode, and the result is valid UTF-8 */
static void check_stream(const int32_t *ids, size_t n, unsigned flags)
{
    char *whole;
    size_t wl;
    CHECK(dsv4_tokenizer_decode(tok, ids, n, flags, &whole, &wl) == 0);
    size_t cap = 3 * dsv4_tokenizer_max_token_bytes(tok) + 8, w = 0, k;
    char *piece = malloc(cap), *all = malloc(n * cap + 8);
    struct dsv4_detok d;
    dsv4_detok_init(&d, tok, flags);
    bool pieces_valid = true;
    for (size_t i = 0; i < n; i++) {
        CHECK(dsv4_detok_feed(&d, ids[i], piece, cap, &k) == 0);
        pieces_valid &= valid_utf8(piece, k);
        memcpy(all + w, piece, k);
        w += k;
    }
    CHECK(dsv4_detok_flush(&d, piece, cap, &k) == 0);
    memcpy(all + w, piece, k);
    w += k;
    CHECK(pieces_valid);
    CHECK(valid_utf8(whole, wl));
    CHECKF(w == wl && !memcmp(all, whole, wl), "streaming decode differs from whole decode");
    free(piece);
    free(all);
    free(whole);
}

static void test_known_ids(void)
{
    struct dsv4_tokens t = {0};
    const char *s = "<｜User｜>你好<｜Assistant｜>";
    encode(s, strlen(s), 0, &t);
    CHECK_INT(t.len, 3);
    if (t.len == 3) {
        CHECK_INT(t.ids[0], 128803);
        CHECK_INT(t.ids[1], 30594);
        CHECK_INT(t.ids[2], 128804);
    }
    CHECK_INT(dsv4_tokenizer_token_id(tok, "<｜begin▁of▁sentence｜>"), 0);
    CHECK_INT(dsv4_tokenizer_token_id(tok, "<｜end▁of▁sentence｜>"), 1);
    CHECK_INT(dsv4_tokenizer_token_id(tok, "<｜User｜>"), 128803);
    CHECK_INT(dsv4_tokenizer_token_id(tok, "no such token at all"), -1);
    CHECK(dsv4_tokenizer_vocab_size(tok) >= 128815);

    /* special tokens: parsed by default, plain text on request; the
     * non-special <｜User｜> stays a token either way */
    s = "<｜begin▁of▁sentence｜>hi<｜User｜>";
    encode(s, strlen(s), 0, &t);
    CHECK(t.len >= 2 && t.ids[0] == 0);
    encode(s, strlen(s), DSV4_TOKENIZER_SPECIAL_AS_TEXT, &t);
    bool has0 = false;
    for (size_t i = 0; i < t.len; i++)
        has0 |= t.ids[i] == 0;
    CHECK(!has0 && t.len > 3 && t.ids[t.len - 1] == 128803);

    /* decode skips special tokens unless asked */
    int32_t ids[] = {0, 17464, 1};
    char *out;
    size_t n;
    CHECK(dsv4_tokenizer_decode(tok, ids, 3, 0, &out, &n) == 0);
    CHECK_STR(out, "usal");
    free(out);
    CHECK(dsv4_tokenizer_decode(tok, ids, 3, DSV4_TOKENIZER_RENDER_SPECIAL, &out, &n) == 0);
    CHECK_STR(out, "<｜begin▁of▁sentence｜>usal<｜end▁of▁sentence｜>");
    free(out);
    dsv4_tokens_free(&t);
}

/* The V4 tokenizer is the V3 one plus more added tokens (spec section
 * 6.1).  Adding <think>/</think> at their V4 ids to the V3 file must give
 * the spec's example ids exactly. */
static void test_v4_example(const char *path)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    CHECK(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
    static const struct {
        int id;
        const char *content;
    } v4[] = {{128821, "<think>"}, {128822, "</think>"}};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(v4); i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", v4[i].id);
        cJSON_AddStringToObject(a, "content", v4[i].content);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 1);
        cJSON_AddBoolToObject(a, "special", 0);
        cJSON_AddItemToArray(added, a);
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    struct dsv4_tokenizer *v4tok = NULL;
    CHECKF(json && dsv4_tokenizer_load_json(json, strlen(json), &v4tok) == 0, "%s", dsv4_errmsg());
    free(json);
    if (!v4tok)
        return;
    const char *s = "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>";
    static const int32_t want[] = {128803, 30594, 128804, 128821, 36101, 128822, 7624, 1};
    struct dsv4_tokens t = {0};
    CHECK(dsv4_tokenizer_encode(v4tok, s, strlen(s), 0, &t) == 0);
    CHECK_INT(t.len, DSV4_ARRAY_LEN(want));
    for (size_t i = 0; i < t.len && i < DSV4_ARRAY_LEN(want); i++)
        CHECKF(t.ids[i] == want[i], "id %zu: %d, spec says %d", i, t.ids[i], want[i]);
    CHECK_INT(dsv4_tokenizer_token_id(v4tok, "</think>"), 128822);
    dsv4_tokens_free(&t);
    dsv4_tokenizer_free(v4tok);
}

static void test_invalid_utf8(void)
{
    static const struct {
        const char *in;
        const char *lossy; /* decode of the ids without special tokens */
    } cases[] = {
            {"a\xff"
             "b",
             "a\xef\xbf\xbd"
             "b"},
            {"\x80", "\xef\xbf\xbd"},
            {"\xe4\xbd", "\xef\xbf\xbd"}, /* truncated 3-byte: one U+FFFD */
            {"\xe4\xbd"
             "x",
             "\xef\xbf\xbd"
             "x"},
            {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong */
            {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
            {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
            {"\xf0\x9f\x98", "\xef\xbf\xbd"},
            {"hello \xfe world \xf5", "hello \xef\xbf\xbd world \xef\xbf\xbd"},
            {"你\xe5好", "你\xef\xbf\xbd好"},
    };
    struct dsv4_tokens t = {0};
    for (size_t c = 0; c < DSV4_ARRAY_LEN(cases); c++) {
        const char *s = cases[c].in;
        size_t n = strlen(s);
        encode(s, n, 0, &t);
        char *out;
        size_t ol;
        CHECKF(raw_equal(&t, s, n), "case %zu: ids do not carry the bytes", c);
        CHECK(dsv4_tokenizer_decode(tok, t.ids, t.len, 0, &out, &ol) == 0);
        CHECKF(!strcmp(out, cases[c].lossy), "case %zu: lossy decode '%s'", c, out);
        free(out);
        check_stream(t.ids, t.len, 0);
    }
    /* a stray byte is exactly its byte token */
    encode("\xff", 1, 0, &t);
    size_t bl;
    CHECK(t.len == 1);
    const char *b = t.len == 1 ? dsv4_tokenizer_token_bytes(tok, t.ids[0], &bl, NULL) : NULL;
    CHECK(b && bl == 1 && (unsigned char)b[0] == 0xff);

    /* random bytes: always encodes, the ids carry the bytes, decode is
     * valid UTF-8 and equals the input when the input was valid */
    char buf[300];
    int bad = 0;
    for (int it = 0; it < 2000; it++) {
        size_t n = rnd() % sizeof(buf);
        for (size_t i = 0; i < n; i++) {
            uint32_t r = rnd() % 8;
            buf[i] = r < 3   ? (char)(0x80 + rnd() % 0x80)
                     : r < 6 ? "ab <>\n\t"[rnd() % 8]
                             : (char)rnd();
        }
        t.len = 0;
        if (dsv4_tokenizer_encode(tok, buf, n, 0, &t)) {
            bad++;
            continue;
        }
        char *out;
        size_t ol;
        if (!raw_equal(&t, buf, n))
            bad++;
        if (dsv4_tokenizer_decode(tok, t.ids, t.len, DSV4_TOKENIZER_RENDER_SPECIAL, &out, &ol) ||
            !valid_utf8(out, ol) || (valid_utf8(buf, n) && (ol != n || memcmp(out, buf, n))))
            bad++;
        free(out);
        if (it % 10 == 0)
            check_stream(t.ids, t.len, it % 20 ? 0 : DSV4_TOKENIZER_RENDER_SPECIAL);
    }
    CHECK_INT(bad, 0);
    dsv4_tokens_free(&t);
}

static void test_random_ids_stream(void)
{
    int32_t ids[64];
    int32_t V = dsv4_tokenizer_vocab_size(tok);
    for (int it = 0; it < 500; it++) {
        size_t n = rnd() % 64;
        for (size_t i = 0; i < n; i++) {
            size_t l;
            do
                ids[i] = (int32_t)(rnd() % (uint32_t)V);
            while (!dsv4_tokenizer_token_bytes(tok, ids[i], &l, NULL));
            if (rnd() % 4 == 0) /* favour single bytes: broken sequences */
                ids[i] = (int32_t)(rnd() % 256) < V ? (int32_t)(rnd() % 256) : ids[i];
        }
        check_stream(ids, n, it % 2 ? DSV4_TOKENIZER_RENDER_SPECIAL : 0);
    }
}

static double time_encode(const char *s, size_t n, struct dsv4_tokens *t)
{
    double best = 1e30;
    for (int r = 0; r < 2; r++) {
        t->len = 0;
        double t0 = dsv4_now();
        CHECK(dsv4_tokenizer_encode(tok, s, n, 0, t) == 0);
        best = DSV4_MIN(best, dsv4_now() - t0);
    }
    return best;
}

static void test_linear_time(void)
{
    const size_t big = 1 << 20, small = big / 10;
    char *s = malloc(big + 4);
    struct dsv4_tokens t = {0};
    for (int kind = 0; kind < 5; kind++) {
        size_t i = 0;
        while (i < big) {
            switch (kind) {
            case 0:
                s[i++] = 'a';
                break;
            case 1:
                s[i++] = (char)('a' + rnd() % 26);
                break;
            case 2: /* CJK, 3 bytes each */
                memcpy(s + i, "\xe4\xbd\xa0", 3);
                s[i + 2] = (char)(0x80 + rnd() % 64);
                i += 3;
                break;
            case 3:
                s[i++] = " \t"[rnd() % 2];
                break;
            default:
                s[i++] = "a1!-=+*"[rnd() % 7];
            }
        }
        double ts = time_encode(s, small, &t);
        size_t small_tokens = t.len;
        double tb = time_encode(s, big, &t);
        double ratio = tb / DSV4_MAX(ts, 1e-6);
        fprintf(stderr, "kind %d: 100 KB %.4f s (%zu ids), 1 MB %.4f s (%zu ids), ratio %.1f\n",
                kind, ts, small_tokens, tb, t.len, ratio);
        /* linear is 10x; quadratic would be 100x */
        CHECKF(ratio < 30, "kind %d: 10x input took %.1fx time", kind, ratio);
        CHECK(raw_equal(&t, s, big));
    }
    free(s);
    dsv4_tokens_free(&t);
}

/* One tokenizer, several threads at once (the cache is try-locked): every
 * thread gets the single-threaded ids. */
struct job {
    const char *text;
    size_t len;
    const struct dsv4_tokens *want;
    int bad;
};

static void *encode_job(void *arg)
{
    struct job *j = arg;
    struct dsv4_tokens t = {0};
    for (int r = 0; r < 20; r++) {
        t.len = 0;
        if (dsv4_tokenizer_encode(tok, j->text, j->len, 0, &t) || t.len != j->want->len ||
            memcmp(t.ids, j->want->ids, t.len * sizeof(int32_t)))
            j->bad++;
    }
    dsv4_tokens_free(&t);
    return NULL;
}

static void test_threads(void)
{
    char text[20000];
    size_t n = 0;
    static const char *const words[] = {"the ",     "tokenizer ", "你好", " 123456 ",
                                        "emoji 😀 ", "<｜User｜>", "\n\n", "don't ",
                                        "naïve ",   "x"};
    while (n + 32 < sizeof(text)) {
        const char *w = words[rnd() % DSV4_ARRAY_LEN(words)];
        memcpy(text + n, w, strlen(w));
        n += strlen(w);
    }
    struct dsv4_tokens want = {0};
    encode(text, n, 0, &want);
    struct job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){text, n, &want, 0};
        CHECK(pthread_create(&th[i], NULL, encode_job, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(jobs[i].bad, 0);
    }
    dsv4_tokens_free(&want);
}

static void test_errors(void)
{
    struct dsv4_tokenizer *x;
    CHECK_INT(dsv4_tokenizer_load_json("{", 1, &x), DSV4_EFORMAT);
    CHECK(x == NULL);
    const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}";
    CHECK_INT(dsv4_tokenizer_load_json(uni, strlen(uni), &x), DSV4_ENOTSUP);
    CHECK(strstr(dsv4_errmsg(), "Unigram") != NULL);
    const char *nfc = "{\"normalizer\": {\"type\": \"NFKC\"}, \"pre_tokenizer\": {\"type\": "
                      "\"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": "
                      "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    CHECK_INT(dsv4_tokenizer_load_json(nfc, strlen(nfc), &x), DSV4_ENOTSUP);
    CHECK(strstr(dsv4_errmsg(), "NFKC") != NULL);
    const char *bad_merge =
            "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": "
            "\"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
            "\"merges\": [\"a b\"]}}";
    CHECK_INT(dsv4_tokenizer_load_json(bad_merge, strlen(bad_merge), &x), DSV4_EFORMAT);
    CHECK_INT(dsv4_tokenizer_load("/nonexistent/tokenizer.json", &x), DSV4_ENOENT);
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}";
    CHECK_INT(dsv4_tokenizer_load_json(wp, strlen(wp), &x), DSV4_ENOTSUP);
    CHECK(strstr(dsv4_errmsg(), "WordPiece") != NULL);
    /* ids must be integers in [0, 2^24), in vocab and in added_tokens */
    static const char *const bad_ids[] = {"0.5", "-1", "16777216", "1e30", "\"0\"", "null"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad_ids); i++) {
        char j[512];
        snprintf(j, sizeof(j),
                 "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": "
                 "\"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": %s}, "
                 "\"merges\": []}}",
                 bad_ids[i]);
        CHECK_INT(dsv4_tokenizer_load_json(j, strlen(j), &x), DSV4_EFORMAT);
        snprintf(j, sizeof(j),
                 "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": "
                 "\"ByteLevel\"}, \"added_tokens\": [{\"id\": %s, \"content\": \"<s>\"}], "
                 "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                 bad_ids[i]);
        CHECKF(dsv4_tokenizer_load_json(j, strlen(j), &x) == DSV4_EFORMAT, "added id %s",
               bad_ids[i]);
        dsv4_tokenizer_free(x); /* NULL unless the check above failed */
    }

    int32_t ids[] = {17464, 999999999};
    char *out;
    size_t n;
    CHECK_INT(dsv4_tokenizer_decode(tok, ids, 2, 0, &out, &n), DSV4_ERANGE);
    int32_t neg = -5;
    CHECK_INT(dsv4_tokenizer_decode(tok, &neg, 1, 0, &out, &n), DSV4_ERANGE);
    struct dsv4_detok d;
    char small[2];
    dsv4_detok_init(&d, tok, 0);
    CHECK_INT(dsv4_detok_feed(&d, 17464, small, sizeof(small), &n), DSV4_ENOSPC);
    CHECK_INT(dsv4_detok_feed(&d, -1, small, sizeof(small), &n), DSV4_ERANGE);

    /* a minimal byte-level tokenizer with byte_fallback off and a missing
     * byte: encode fails with a message instead of inventing ids */
    const char *tiny = "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": false}, "
                       "\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
                       "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}";
    CHECK(dsv4_tokenizer_load_json(tiny, strlen(tiny), &x) == 0);
    if (x) {
        struct dsv4_tokens t = {0};
        CHECK(dsv4_tokenizer_encode(x, "abab", 4, 0, &t) == 0);
        CHECK(t.len == 2 && t.ids[0] == 2 && t.ids[1] == 2);
        t.len = 0;
        CHECK_INT(dsv4_tokenizer_encode(x, "abc", 3, 0, &t), DSV4_EFORMAT);
        CHECK_INT(t.len, 0);
        dsv4_tokens_free(&t);
        dsv4_tokenizer_free(x);
    }
}

int main(void)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer/deepseek-v3-tokenizer.json", test_shared_data());
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("skip: %s not found\n", path);
        return 77;
    }
    fclose(f);
    double t0 = dsv4_now();
    if (dsv4_tokenizer_load(path, &tok)) {
        fprintf(stderr, "load: %s\n", dsv4_errmsg());
        return 1;
    }
    fprintf(stderr, "loaded in %.3f s\n", dsv4_now() - t0);
    test_known_ids();
    test_v4_example(path);
    test_invalid_utf8();
    test_random_ids_stream();
    test_linear_time();
    test_threads();
    test_errors();
    dsv4_tokenizer_free(tok);
    TEST_DONE();
}
