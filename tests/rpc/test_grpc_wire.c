/*
 * test_grpc_wire.c - the pure layers of the gRPC server: message framing
 * (rpc/grpc_wire.h) fed in every split, grpc-timeout in every unit,
 * grpc-message percent-encoding, bearer keys, the UTF-8 rules, the service
 * status -> gRPC code map, and request decoding by each method's check
 * (rpc/grpc_engine.h) on hand-encoded protobuf: valid requests, unknown
 * fields, bad UTF-8 and NUL at any depth, malformed wire bytes.
 */
#include "base/dsv4.h"
#include "rpc/grpc_engine.h"
#include "rpc/grpc_wire.h"
#include "tests/rpc/grpc_test_pb.h"
#include "tests/test.h"

#include <stdint.h>

/* ---- framing */

struct got {
    int n;
    size_t lens[8];
    uint8_t first[8];
};

static int collect(void *arg, const uint8_t *msg, size_t len)
{
    struct got *g = arg;
    if (g->n < 8) {
        g->lens[g->n] = len;
        g->first[g->n] = len ? msg[0] : 0;
    }
    g->n++;
    return 0;
}

static int refuse(void *arg, const uint8_t *msg, size_t len)
{
    (void)arg;
    (void)msg;
    (void)len;
    dsv4_error(DSV4_EINVAL, "second message");
    return DSV4_GRPC_INTERNAL;
}

static void test_reader(void)
{
    /* three messages: 3 bytes, empty, 300 bytes */
    uint8_t s[5 + 3 + 5 + 5 + 300];
    size_t n = 0;
    dsv4_grpc_prefix(s, 3);
    memcpy(s + 5, "abc", 3);
    dsv4_grpc_prefix(s + 8, 0);
    dsv4_grpc_prefix(s + 13, 300);
    memset(s + 18, 'z', 300);
    n = sizeof(s);
    CHECK_INT(s[13 + 3], 1);
    CHECK_INT(s[13 + 4], 44);

    /* every split of the stream into two feeds, and byte by byte */
    for (size_t cut = 0; cut <= n; cut++) {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        dsv4_grpc_reader_init(&r, 1000);
        CHECK_INT(dsv4_grpc_reader_feed(&r, s, cut, collect, &g), 0);
        CHECK_INT(dsv4_grpc_reader_feed(&r, s + cut, n - cut, collect, &g), 0);
        CHECK_INT(dsv4_grpc_reader_end(&r), 0);
        CHECK_INT(g.n, 3);
        CHECK_INT(g.lens[0], 3);
        CHECK_INT(g.first[0], 'a');
        CHECK_INT(g.lens[1], 0);
        CHECK_INT(g.lens[2], 300);
        CHECK_INT(g.first[2], 'z');
        dsv4_grpc_reader_free(&r);
    }
    {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        dsv4_grpc_reader_init(&r, 1000);
        for (size_t i = 0; i < n; i++)
            CHECK_INT(dsv4_grpc_reader_feed(&r, s + i, 1, collect, &g), 0);
        CHECK_INT(g.n, 3);
        dsv4_grpc_reader_free(&r);
    }
    /* limit: 300 > 299 -> RESOURCE_EXHAUSTED as soon as the prefix is seen */
    {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        dsv4_grpc_reader_init(&r, 299);
        CHECK_INT(dsv4_grpc_reader_feed(&r, s, 18, collect, &g), DSV4_GRPC_RESOURCE_EXHAUSTED);
        CHECK(strstr(dsv4_errmsg(), "300 bytes") != NULL);
        CHECK_INT(g.n, 2);
        /* failed for good */
        CHECK_INT(dsv4_grpc_reader_feed(&r, s, 5, collect, &g), DSV4_GRPC_INTERNAL);
        CHECK_INT(dsv4_grpc_reader_end(&r), DSV4_GRPC_INTERNAL);
        dsv4_grpc_reader_free(&r);
    }
    /* a huge length allocates nothing up front: 4 GiB - 1 with max 4 GiB - 1, 10 bytes sent */
    {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        uint8_t h[15] = {0, 0xff, 0xff, 0xff, 0xff};
        dsv4_grpc_reader_init(&r, 0xffffffffu);
        CHECK_INT(dsv4_grpc_reader_feed(&r, h, sizeof(h), collect, &g), 0);
        CHECK(r.cap < 4096);
        CHECK_INT(dsv4_grpc_reader_end(&r), DSV4_GRPC_INTERNAL);
        CHECK(strstr(dsv4_errmsg(), "inside a message") != NULL);
        dsv4_grpc_reader_free(&r);
    }
    /* compressed flag -> UNIMPLEMENTED; other flags -> INTERNAL */
    {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        uint8_t h[6] = {1, 0, 0, 0, 1, 'x'};
        dsv4_grpc_reader_init(&r, 100);
        CHECK_INT(dsv4_grpc_reader_feed(&r, h, 6, collect, &g), DSV4_GRPC_UNIMPLEMENTED);
        CHECK_INT(g.n, 0);
        dsv4_grpc_reader_free(&r);
        h[0] = 0x80;
        dsv4_grpc_reader_init(&r, 100);
        CHECK_INT(dsv4_grpc_reader_feed(&r, h, 6, collect, &g), DSV4_GRPC_INTERNAL);
        dsv4_grpc_reader_free(&r);
    }
    /* a truncated prefix at the end, and the callback's code ends the feed */
    {
        struct dsv4_grpc_reader r;
        struct got g = {0};
        dsv4_grpc_reader_init(&r, 1000);
        CHECK_INT(dsv4_grpc_reader_feed(&r, s, 3, collect, &g), 0);
        CHECK_INT(dsv4_grpc_reader_end(&r), DSV4_GRPC_INTERNAL);
        dsv4_grpc_reader_free(&r);
        dsv4_grpc_reader_init(&r, 1000);
        CHECK_INT(dsv4_grpc_reader_feed(&r, s, n, refuse, NULL), DSV4_GRPC_INTERNAL);
        dsv4_grpc_reader_free(&r);
    }
    /* an empty body is no message (the transport answers "no request message") */
    {
        struct dsv4_grpc_reader r;
        dsv4_grpc_reader_init(&r, 10);
        CHECK_INT(dsv4_grpc_reader_end(&r), 0);
        dsv4_grpc_reader_free(&r);
    }
}

/* ---- header values */

static void test_timeout(void)
{
    static const struct {
        const char *s;
        double v;
    } ok[] = {{"1H", 3600},   {"2M", 120},     {"3S", 3},
              {"250m", 0.25}, {"7u", 7e-6},    {"99999999n", 0.099999999},
              {"0S", 0},      {"00000001S", 1}};
    static const char *bad[] = {"",     "S",   "1",          "1s",       "1h",  "-1S",
                                "1.5S", "1 S", "123456789S", "99999999", "1SS", "x1S"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(ok); i++) {
        double v = -1;
        CHECKF(dsv4_grpc_timeout_parse(ok[i].s, strlen(ok[i].s), &v) == 0, "%s", ok[i].s);
        CHECKF(fabs(v - ok[i].v) <= 1e-12 * (1 + ok[i].v), "%s -> %g", ok[i].s, v);
    }
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad); i++) {
        double v;
        CHECKF(dsv4_grpc_timeout_parse(bad[i], strlen(bad[i]), &v) == DSV4_EINVAL, "'%s'", bad[i]);
    }
}

static void test_percent(void)
{
    char out[64], back[64];
    const char *msg = "50% done\n\xc3\xa9 ok~";
    size_t k = dsv4_grpc_percent_encode(msg, strlen(msg), out, sizeof(out));
    CHECK_STR(out, "50%25 done%0A%C3%A9 ok~");
    CHECK_INT(k, strlen(out));
    memcpy(back, out, k + 1);
    k = dsv4_grpc_percent_decode(back, k);
    back[k] = 0;
    CHECK_STR(back, msg);
    /* truncation never cuts an escape */
    for (size_t cap = 1; cap < 30; cap++) {
        char small[32];
        size_t m = dsv4_grpc_percent_encode(msg, strlen(msg), small, cap);
        CHECK(m < cap);
        CHECK(m == 0 || small[m - 1] != '%');
        CHECK(m < 2 || small[m - 2] != '%');
    }
    /* malformed escapes are kept */
    char odd[] = "%zz%4";
    k = dsv4_grpc_percent_decode(odd, strlen(odd));
    odd[k] = 0;
    CHECK_STR(odd, "%zz%4");
}

static void test_bearer(void)
{
    const char *key;
    size_t n;
    CHECK(dsv4_grpc_bearer("Bearer abc", 10, &key, &n) && n == 3 && !memcmp(key, "abc", 3));
    CHECK(dsv4_grpc_bearer("bearer  k1 ", 11, &key, &n) && n == 2 && !memcmp(key, "k1", 2));
    CHECK(dsv4_grpc_bearer("BEARER\tx", 8, &key, &n) && n == 1);
    CHECK(dsv4_grpc_bearer("Bearer ", 7, &key, &n) && n == 0);
    CHECK(!dsv4_grpc_bearer("Basic abc", 9, &key, &n));
    CHECK(!dsv4_grpc_bearer("Bearerabc", 9, &key, &n));
    CHECK(!dsv4_grpc_bearer("Bear", 4, &key, &n));
    CHECK(!dsv4_grpc_bearer("", 0, &key, &n));
}

static void test_utf8(void)
{
    static const char *good[] = {"",
                                 "plain",
                                 "\xc3\xa9",
                                 "\xe2\x82\xac",
                                 "\xf0\x9f\x98\x80",
                                 "\xf4\x8f\xbf\xbf",
                                 "\xed\x9f\xbf"};
    static const char *badv[] = {"\xff",
                                 "\xc0\xaf",
                                 "\xc3",
                                 "\xe2\x82",
                                 "\xed\xa0\x80",
                                 "\xf4\x90\x80\x80",
                                 "\xf8\x88\x80\x80\x80",
                                 "\x80",
                                 "\xe0\x80\xaf",
                                 "\xf0\x80\x80\xaf"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(good); i++)
        CHECKF(dsv4_grpc_utf8_ok(good[i], strlen(good[i])), "good %zu", i);
    for (size_t i = 0; i < DSV4_ARRAY_LEN(badv); i++)
        CHECKF(!dsv4_grpc_utf8_ok(badv[i], strlen(badv[i])), "bad %zu", i);
    CHECK(!dsv4_grpc_utf8_ok("a\0b", 3));
    size_t n;
    char *s = dsv4_grpc_utf8_sanitize("a\xff"
                                      "b\0c\xe2\x82",
                                      7, &n);
    CHECK(s != NULL);
    CHECK_STR(s, "a\xef\xbf\xbd"
                 "b\xef\xbf\xbd"
                 "c\xef\xbf\xbd\xef\xbf\xbd");
    CHECK_INT(n, strlen(s));
    CHECK(dsv4_grpc_utf8_ok(s, n));
    free(s);
}

static void test_codes(void)
{
    CHECK_INT(dsv4_grpc_engine_code(DSV4_EINVAL, false, false), DSV4_GRPC_INVALID_ARGUMENT);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_ERANGE, false, false), DSV4_GRPC_OUT_OF_RANGE);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_ERANGE, true, true), DSV4_GRPC_DEADLINE_EXCEEDED);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_ENOSPC, false, true), DSV4_GRPC_RESOURCE_EXHAUSTED);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_ENOTSUP, false, true), DSV4_GRPC_UNAVAILABLE);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_ENOENT, false, false), DSV4_GRPC_NOT_FOUND);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_EIO, true, true), DSV4_GRPC_UNAVAILABLE);
    CHECK_INT(dsv4_grpc_engine_code(DSV4_EIO, true, false), DSV4_GRPC_INTERNAL);
    CHECK_STR(dsv4_grpc_code_name(DSV4_GRPC_UNAUTHENTICATED), "UNAUTHENTICATED");
    CHECK_STR(dsv4_grpc_code_name(99), "?");
}

/* ---- request decoding */

static int check(const char *path, const struct pb *m)
{
    const struct dsv4_grpc_method *meth = dsv4_grpc_engine_method(path, strlen(path));
    DSV4_ASSERT(meth != NULL);
    dsv4_error_clear();
    return meth->check(m->b, m->n);
}

static void test_methods(void)
{
    size_t n;
    const struct dsv4_grpc_method *all = dsv4_grpc_engine_methods(&n);
    CHECK_INT(n, 10);
    CHECK(dsv4_grpc_engine_method("/dsv4.Engine/Nope", 17) == NULL);
    CHECK(dsv4_grpc_engine_method("/dsv4.Engine/Generat", 20) == NULL);
    CHECK(dsv4_grpc_engine_method("/grpc.health.v1.Health/Watch", 28)->health);
    CHECK(!dsv4_grpc_engine_method("/dsv4.Engine/Generate", 21)->health);
    /* an empty message decodes for every method but Generate (empty prompt) and Abort is
     * checked at serve time */
    struct pb empty = {.n = 0};
    for (size_t i = 0; i < n; i++) {
        int code = all[i].check(empty.b, 0);
        if (!strcmp(all[i].path, "/dsv4.Engine/Generate"))
            CHECK_INT(code, DSV4_GRPC_INVALID_ARGUMENT);
        else
            CHECKF(code == 0, "%s: %d %s", all[i].path, code, dsv4_errmsg());
    }
}

static void test_generate_decode(void)
{
    const char *gen = "/dsv4.Engine/Generate";
    struct pb sp = {.n = 0}, q = {.n = 0}, tok = {.n = 0};

    /* text prompt with every sampling field, plus unknown fields at two depths */
    pb_float(&sp, 1, 0.7f);
    pb_float(&sp, 2, 0.9f);
    pb_uint(&sp, 3, 40);
    pb_uint(&sp, 9, 16);
    pb_str(&sp, 10, "\n\n");
    pb_uint(&sp, 11, 7);
    pb_uint(&sp, 13, 0);
    pb_str(&sp, 99, "ignored");
    pb_str(&q, 1, "req-1");
    pb_str(&q, 2, "hello \xc3\xa9");
    pb_msg(&q, 4, &sp);
    pb_uint(&q, 5, 1);
    pb_uint(&q, 6, 5);
    pb_uint(&q, 1000, 12345);
    pb_key(&q, 1001, 1);
    memset(q.b + q.n, 0, 8);
    q.n += 8;
    CHECKF(check(gen, &q) == 0, "%s", dsv4_errmsg());

    /* token ids (packed) */
    struct pb ids = {.n = 0};
    pb_varint(&ids, 104);
    pb_varint(&ids, 105);
    pb_bytes(&tok, 2, ids.b, ids.n);
    struct pb q2 = {.n = 0};
    pb_msg(&q2, 3, &tok);
    CHECKF(check(gen, &q2) == 0, "%s", dsv4_errmsg());

    /* an id past INT32_MAX */
    struct pb ids3 = {.n = 0}, tok3 = {.n = 0}, q3 = {.n = 0};
    pb_varint(&ids3, 0x80000000u);
    pb_bytes(&tok3, 2, ids3.b, ids3.n);
    pb_msg(&q3, 3, &tok3);
    CHECK_INT(check(gen, &q3), DSV4_GRPC_INVALID_ARGUMENT);

    /* bad UTF-8 in the text, NUL in the text, bad UTF-8 in a nested stop string */
    struct pb b1 = {.n = 0}, b2 = {.n = 0}, b3 = {.n = 0}, sp3 = {.n = 0};
    pb_bytes(&b1, 2, "a\xff", 2);
    CHECK_INT(check(gen, &b1), DSV4_GRPC_INVALID_ARGUMENT);
    CHECK(strstr(dsv4_errmsg(), "text") != NULL);
    pb_bytes(&b2, 2, "a\0b", 3);
    CHECK_INT(check(gen, &b2), DSV4_GRPC_INVALID_ARGUMENT);
    pb_bytes(&sp3, 10, "\xc0\xaf", 2);
    pb_str(&b3, 2, "ok");
    pb_msg(&b3, 4, &sp3);
    CHECK_INT(check(gen, &b3), DSV4_GRPC_INVALID_ARGUMENT);
    CHECK(strstr(dsv4_errmsg(), "stop") != NULL);

    /* invalid values: 17 stop strings, an empty stop string, top_logprobs 21, temperature
     * -1, max_new_tokens 0 */
    struct pb s17 = {.n = 0}, q17 = {.n = 0};
    for (int i = 0; i < 17; i++)
        pb_str(&s17, 10, "x");
    pb_str(&q17, 2, "p");
    pb_msg(&q17, 4, &s17);
    CHECK_INT(check(gen, &q17), DSV4_GRPC_INVALID_ARGUMENT);
    struct pb se = {.n = 0}, qe = {.n = 0};
    pb_str(&se, 10, "");
    pb_str(&qe, 2, "p");
    pb_msg(&qe, 4, &se);
    CHECK_INT(check(gen, &qe), DSV4_GRPC_INVALID_ARGUMENT);
    struct pb qt = {.n = 0};
    pb_str(&qt, 2, "p");
    pb_uint(&qt, 6, 21);
    CHECK_INT(check(gen, &qt), DSV4_GRPC_INVALID_ARGUMENT);
    struct pb st = {.n = 0}, qn = {.n = 0};
    pb_float(&st, 1, -1.0f);
    pb_str(&qn, 2, "p");
    pb_msg(&qn, 4, &st);
    CHECK_INT(check(gen, &qn), DSV4_GRPC_INVALID_ARGUMENT);
    struct pb sm = {.n = 0}, qm = {.n = 0};
    pb_uint(&sm, 9, 0);
    pb_str(&qm, 2, "p");
    pb_msg(&qm, 4, &sm);
    CHECK_INT(check(gen, &qm), DSV4_GRPC_INVALID_ARGUMENT);

    /* malformed wire bytes: a truncated varint, a length past the end, wire type 7, field 0,
     * a group */
    static const uint8_t mal[][4] = {{0x28, 0xff}, {0x12, 0x05, 'a'}, {0x17}, {0x02, 0x00}, {0x0b}};
    static const size_t mal_n[] = {2, 3, 1, 2, 1};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(mal); i++) {
        struct pb m = {.n = mal_n[i]};
        memcpy(m.b, mal[i], mal_n[i]);
        CHECKF(check(gen, &m) == DSV4_GRPC_INVALID_ARGUMENT, "malformed %zu", i);
    }
    /* unknown fields are skipped whatever they hold, deep nesting included */
    static struct pb deep, outer;
    deep.n = 0;
    pb_str(&deep, 2, "p");
    for (int i = 0; i < 40; i++) {
        outer.n = 0;
        pb_msg(&outer, 77, &deep);
        deep = outer;
    }
    pb_str(&deep, 2, "p");
    CHECKF(check(gen, &deep) == 0, "%s", dsv4_errmsg());
}

static void test_other_decode(void)
{
    struct pb h = {.n = 0}, hb = {.n = 0}, d = {.n = 0}, dbad = {.n = 0}, t = {.n = 0};
    pb_str(&h, 1, "dsv4.Engine");
    CHECK_INT(check("/grpc.health.v1.Health/Check", &h), 0);
    pb_bytes(&hb, 1, "\xed\xa0\x80", 3);
    CHECK_INT(check("/grpc.health.v1.Health/Watch", &hb), DSV4_GRPC_INVALID_ARGUMENT);
    struct pb ids = {.n = 0};
    pb_varint(&ids, 1);
    pb_varint(&ids, 258);
    pb_bytes(&d, 1, ids.b, ids.n);
    pb_uint(&d, 2, 1);
    CHECK_INT(check("/dsv4.Engine/Detokenize", &d), 0);
    pb_uint(&dbad, 1, 0xffffffffu);
    CHECK_INT(check("/dsv4.Engine/Detokenize", &dbad), DSV4_GRPC_INVALID_ARGUMENT);
    pb_str(&t, 1, "text");
    CHECK_INT(check("/dsv4.Engine/Tokenize", &t), 0);
    CHECK_INT(check("/dsv4.Engine/Abort", &t), 0);
}

int main(void)
{
    test_reader();
    test_timeout();
    test_percent();
    test_bearer();
    test_utf8();
    test_codes();
    test_methods();
    test_generate_decode();
    test_other_decode();
    TEST_DONE();
}
