/*
 * test_strbuf.c - engine/strbuf against what Python's json module writes
 * (expected strings produced with Python 3's json.dumps / repr): string
 * escapes with and without ensure_ascii, float repr (shortest round trip,
 * exponent thresholds, non-finite), the int range, json.dump(indent=2) of a
 * tree, printf appends, growth past the first block, and malformed UTF-8
 * staying inside the string.
 */
#include "dsv4-build.h"
#include "engine/io/strbuf.h"
#include "tests/test.h"

#include <math.h>
#include <string.h>

static void expect_num(double v, double int_below, const char *want)
{
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_json_num(&b, v, int_below);
    CHECKF(!b.oom && b.p && !strcmp(b.p, want), "%.17g: got %s, want %s", v, b.p ? b.p : "(null)",
           want);
    dsv4_strbuf_free(&b);
}

static void expect_str(const char *s, bool ascii, const char *want)
{
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_json_str(&b, s, ascii);
    CHECKF(!b.oom && b.p && !strcmp(b.p, want), "got %s, want %s", b.p ? b.p : "(null)", want);
    CHECK_INT((int)b.len, (int)strlen(want));
    dsv4_strbuf_free(&b);
}

int main(void)
{
    /* floats: json.dumps(float) */
    expect_num(0.1, 0, "0.1");
    expect_num(1e-06, 0, "1e-06");
    expect_num(0.0001, 0, "0.0001");
    expect_num(1.5e-05, 0, "1.5e-05");
    expect_num(10.0, 0, "10.0");
    expect_num(123456.789, 0, "123456.789");
    expect_num(1e16, 0, "1e+16");
    expect_num(1.234e15, 0, "1234000000000000.0");
    expect_num(2.5e-300, 0, "2.5e-300");
    expect_num(1.0 / 3.0, 0, "0.3333333333333333");
    expect_num(100.5, 0, "100.5");
    expect_num(-0.25, 0, "-0.25");
    expect_num(1e22, 0, "1e+22");
    expect_num(5e-324, 0, "5e-324");
    expect_num(NAN, 0, "NaN");
    expect_num(INFINITY, 0, "Infinity");
    expect_num(-INFINITY, 0, "-Infinity");
    /* the int range: integral values below int_below print as Python ints */
    expect_num(10000.0, 1e15, "10000");
    expect_num(1.234e15, 1e15, "1234000000000000.0");
    expect_num(1.234e15, 9007199254740992.0, "1234000000000000");
    expect_num(2.5, 1e15, "2.5");

    /* strings: json.dumps(s) and json.dumps(s, ensure_ascii=False) */
    expect_str("a\"b\\c", true, "\"a\\\"b\\\\c\"");
    expect_str("x\b\f\n\r\ty\x01\x1f", false, "\"x\\b\\f\\n\\r\\ty\\u0001\\u001f\"");
    expect_str("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \x7f", true,
               "\"caf\\u00e9 \\u4e2d \\ud83d\\ude00 \\u007f\"");
    expect_str("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \x7f", false,
               "\"caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \x7f\"");
    expect_str("", true, "\"\"");
    /* malformed UTF-8 (truncated sequence at the end, stray continuation):
     * each bad lead byte escaped alone, nothing read past the NUL */
    expect_str("a\xe4\xb8", true, "\"a\\u00e4\\u00b8\"");
    expect_str("\x80z", true, "\"\\u0080z\"");

    /* json.dumps(obj, indent=2) of a cJSON tree */
    {
        const char *in = "{\"a\":[1,2.5,{\"b\":null,\"c\":true}],\"e\":{},\"f\":[],\"g\":\"x\"}";
        const char *want = "{\n  \"a\": [\n    1,\n    2.5,\n    {\n      \"b\": null,\n"
                           "      \"c\": true\n    }\n  ],\n  \"e\": {},\n  \"f\": [],\n"
                           "  \"g\": \"x\"\n}";
        cJSON *j = cJSON_Parse(in);
        struct dsv4_strbuf b;
        CHECK(j != NULL);
        dsv4_strbuf_init(&b);
        dsv4_strbuf_json_tree(&b, j, 0);
        CHECKF(!b.oom && b.p && !strcmp(b.p, want), "tree: got\n%s", b.p ? b.p : "(null)");
        cJSON_Delete(j);
        dsv4_strbuf_free(&b);
        CHECK(b.p == NULL && b.len == 0 && !b.oom);
    }

    /* put/str/fmt, growth past the first 4096-byte block, always NUL-terminated */
    {
        struct dsv4_strbuf b;
        dsv4_strbuf_init(&b);
        for (int i = 0; i < 2000; i++)
            dsv4_strbuf_fmt(&b, "%d,", i % 10);
        dsv4_strbuf_put(&b, "xyz", 2);
        dsv4_strbuf_str(&b, "!");
        CHECK(!b.oom);
        CHECK_INT((int)b.len, 4003);
        CHECK_INT((int)strlen(b.p), 4003);
        CHECK(!strncmp(b.p, "0,1,2,", 6) && !strcmp(b.p + 3996, "8,9,xy!"));
        dsv4_strbuf_free(&b);
    }
    TEST_DONE();
}
