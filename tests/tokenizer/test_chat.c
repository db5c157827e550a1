/*
 * test_chat.c - DeepSeek-V4 chat format: the four official encoding vectors
 * byte for byte, the official parser expectations on case 1, streaming
 * parsing (byte-by-byte feeding equals whole; reasoning/content only grow),
 * encode -> parse round trip of tool calls with every JSON type, Python
 * json.dumps number/escape rendering, reasoning effort, task tokens,
 * tool-result ordering, precise errors for bad messages and bad DSML, and
 * linear time when a long tool call arrives in small pieces.
 */
#include "engine/text/chat.h"
#include "base/dsv4.h"
#include "tests/test.h"

#include <cjson/cJSON.h>

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b)
        b[n] = 0;
    *len = (size_t)n;
    return b;
}

static char *encode_str(const char *json, int mode, int effort, bool keep)
{
    struct dsv4_chat_opts o = {mode, effort, keep, false};
    char *out;
    size_t n;
    int rc = dsv4_chat_encode_json(json, strlen(json), &o, &out, &n);
    CHECKF(rc == 0, "encode: %s", dsv4_errmsg());
    return rc ? NULL : out;
}

static void test_golden(void)
{
    static const int modes[] = {DSV4_CHAT_MODE_THINKING, DSV4_CHAT_MODE_THINKING,
                                DSV4_CHAT_MODE_THINKING, DSV4_CHAT_MODE_CHAT};
    for (int i = 1; i <= 4; i++) {
        char p[4096];
        size_t il, ol;
        snprintf(p, sizeof(p), "%s/encoding-tests/test_input_%d.json", test_shared_data(), i);
        char *in = read_file(p, &il);
        snprintf(p, sizeof(p), "%s/encoding-tests/test_output_%d.txt", test_shared_data(), i);
        char *want = read_file(p, &ol);
        CHECK(in && want);
        if (!in || !want)
            continue;
        struct dsv4_chat_opts o = {modes[i - 1], DSV4_CHAT_EFFORT_NONE, false, false};
        char *got;
        size_t gl;
        int rc = dsv4_chat_encode_json(in, il, &o, &got, &gl);
        CHECKF(rc == 0, "case %d: %s", i, dsv4_errmsg());
        if (!rc) {
            size_t k = 0;
            while (k < gl && k < ol && got[k] == want[k])
                k++;
            CHECKF(gl == ol && k == ol, "case %d differs at byte %zu: ...%.40s", i, k,
                   got + (k > 20 ? k - 20 : 0));
            free(got);
        }
        /* "high" renders exactly like no effort */
        o.effort = DSV4_CHAT_EFFORT_HIGH;
        if (!dsv4_chat_encode_json(in, il, &o, &got, &gl)) {
            CHECK(gl == ol && !memcmp(got, want, ol));
            free(got);
        }
        free(in);
        free(want);
    }
}

struct parsed {
    char *reasoning, *content;
    size_t n_calls;
    char *name0, *args0;
    bool done;
};

static void parsed_free(struct parsed *r)
{
    free(r->reasoning);
    free(r->content);
    free(r->name0);
    free(r->args0);
}

/* Feeds text in pieces of `step` bytes (0: whole), checking monotonic growth. */
static int parse_steps(const char *text, int mode, size_t step, struct parsed *r)
{
    memset(r, 0, sizeof(*r));
    struct dsv4_chat_parser *p;
    int rc = dsv4_chat_parser_new(mode, &p);
    if (rc)
        return rc;
    size_t n = strlen(text), prev_r = 0, prev_c = 0;
    char *last_r = strdup(""), *last_c = strdup("");
    for (size_t i = 0; i < n && !rc;) {
        size_t k = step ? DSV4_MIN(step, n - i) : n;
        rc = dsv4_chat_parser_feed(p, text + i, k);
        i += k;
        size_t rl, cl;
        const char *rs = dsv4_chat_parser_reasoning(p, &rl);
        const char *cs = dsv4_chat_parser_content(p, &cl);
        CHECK(rl >= prev_r && !memcmp(rs, last_r, prev_r));
        CHECK(cl >= prev_c && !memcmp(cs, last_c, prev_c));
        free(last_r);
        free(last_c);
        last_r = strdup(rs);
        last_c = strdup(cs);
        prev_r = rl;
        prev_c = cl;
    }
    free(last_r);
    free(last_c);
    if (!rc)
        rc = dsv4_chat_parser_finish(p);
    if (!rc) {
        r->reasoning = strdup(dsv4_chat_parser_reasoning(p, NULL));
        r->content = strdup(dsv4_chat_parser_content(p, NULL));
        r->n_calls = dsv4_chat_parser_n_calls(p);
        if (r->n_calls) {
            const char *nm, *args;
            dsv4_chat_parser_call(p, 0, &nm, &args);
            r->name0 = strdup(nm);
            r->args0 = strdup(args);
        }
        r->done = dsv4_chat_parser_done(p);
    }
    dsv4_chat_parser_free(p);
    return rc;
}

static void test_parse_case1(void)
{
    char p[4096];
    size_t ol;
    snprintf(p, sizeof(p), "%s/encoding-tests/test_output_1.txt", test_shared_data());
    char *t = read_file(p, &ol);
    CHECK(t != NULL);
    if (!t)
        return;
    const char *marker = "<｜Assistant｜><think>";
    char *a1 = strstr(t, marker);
    char *a2 = a1 ? strstr(a1 + 1, marker) : NULL;
    CHECK(a1 && a2);
    if (!a1 || !a2) {
        free(t);
        return;
    }
    a1 += strlen(marker);
    a2 += strlen(marker);
    /* first turn ends at its EOS (keep it in the text) */
    const char *eos = "<｜end▁of▁sentence｜>";
    char *e1 = strstr(a1, eos);
    char *turn1 = strndup(a1, (size_t)(e1 - a1) + strlen(eos));
    for (size_t step = 0; step <= 7; step += 1) {
        struct parsed r;
        CHECKF(parse_steps(turn1, DSV4_CHAT_MODE_THINKING, step, &r) == 0, "step %zu: %s", step,
               dsv4_errmsg());
        if (!r.reasoning)
            continue;
        CHECK_STR(r.reasoning, "The user wants to know the weather in Beijing. I should use the "
                               "get_weather tool.");
        CHECK_STR(r.content, "");
        CHECK_INT(r.n_calls, 1);
        if (r.n_calls == 1) {
            CHECK_STR(r.name0, "get_weather");
            CHECK_STR(r.args0, "{\"location\": \"Beijing\", \"unit\": \"celsius\"}");
        }
        CHECK(r.done);
        parsed_free(&r);
    }
    struct parsed r;
    CHECK(parse_steps(a2, DSV4_CHAT_MODE_THINKING, 3, &r) == 0);
    if (r.reasoning) {
        CHECK_STR(r.reasoning, "Got the weather data. Let me format a nice response.");
        CHECK(strstr(r.content, "22°C") != NULL);
        CHECK_INT(r.n_calls, 0);
        CHECK(r.done);
    }
    parsed_free(&r);
    free(turn1);
    free(t);
}

static void test_roundtrip_tool_calls(void)
{
    const char *args =
            "{\"s\": \"a \\\"quoted\\\" \\\\ line\\nnext\", \"n\": -3, \"f\": 0.5, "
            "\"e\": 1e-07, \"big\": 1e+20, \"b\": true, \"z\": null, \"arr\": [1, \"x\", "
            "{\"k\": []}], \"o\": {\"u\": \"\\u00e9\\u4f60\", \"c\": \"\\u0001\"}}";
    cJSON *msgs = cJSON_CreateArray();
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    cJSON_AddStringToObject(u, "content", "go");
    cJSON_AddItemToArray(msgs, u);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "role", "assistant");
    cJSON_AddStringToObject(a, "reasoning_content", "think");
    cJSON *calls = cJSON_AddArrayToObject(a, "tool_calls");
    for (int i = 0; i < 2; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON *fn = cJSON_AddObjectToObject(c, "function");
        cJSON_AddStringToObject(fn, "name", i ? "second" : "first");
        cJSON_AddStringToObject(fn, "arguments", i ? "{}" : args);
        cJSON_AddItemToArray(calls, c);
    }
    cJSON_AddItemToArray(msgs, a);
    struct dsv4_chat_opts o = {DSV4_CHAT_MODE_THINKING, 0, false, false};
    char *text;
    size_t n;
    CHECKF(dsv4_chat_encode(msgs, NULL, &o, &text, &n) == 0, "%s", dsv4_errmsg());
    const char *start = strstr(text, "<｜Assistant｜><think>");
    CHECK(start != NULL);
    if (start) {
        start += strlen("<｜Assistant｜><think>");
        /* the DSML spells non-strings as Python json.dumps would */
        CHECK(strstr(start, "string=\"false\">0.5<") && strstr(start, ">1e-07<") &&
              strstr(start, ">1e+20<") && strstr(start, ">-3<") && strstr(start, ">null<"));
        CHECK(strstr(start, "\"o\" string=\"false\">{\"u\": \"é你\", \"c\": \"\\u0001\"}<") ||
              strstr(start, "name=\"o\" string=\"false\">{\"u\": \"é你\", \"c\": \"\\u0001\"}<"));
        CHECK(strstr(start, "name=\"s\" string=\"true\">a \"quoted\" \\ line\nnext<"));
        cJSON *msg;
        CHECKF(dsv4_chat_parse(start, strlen(start), DSV4_CHAT_MODE_THINKING, &msg) == 0, "%s",
               dsv4_errmsg());
        cJSON *tc = cJSON_GetObjectItem(msg, "tool_calls");
        CHECK_INT(cJSON_GetArraySize(tc), 2);
        cJSON *a0 = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(tc, 0), "function"),
                                        "arguments");
        cJSON *got = cJSON_Parse(a0 ? a0->valuestring : "");
        cJSON *want = cJSON_Parse(args);
        CHECK(got && want && cJSON_Compare(got, want, 1));
        cJSON *a1 = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(tc, 1), "function"),
                                        "arguments");
        CHECK(a1 && !strcmp(a1->valuestring, "{}"));
        CHECK_STR(cJSON_GetObjectItem(msg, "reasoning_content")->valuestring, "think");
        cJSON_Delete(got);
        cJSON_Delete(want);
        cJSON_Delete(msg);
    }
    free(text);
    cJSON_Delete(msgs);
}

static void test_options(void)
{
    const char *m = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    char *t = encode_str(m, DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_MAX, false);
    if (t) {
        CHECK(!strncmp(t, "<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum",
                       strlen("<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum")));
        CHECK(strstr(t, "unchecked.\n\n<｜User｜>hi<｜Assistant｜><think>") != NULL);
        free(t);
    }
    t = encode_str(m, DSV4_CHAT_MODE_CHAT, DSV4_CHAT_EFFORT_MAX, false);
    if (t) {
        CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>");
        free(t);
    }
    /* keep_thinking keeps old reasoning and opens <think> after every user */
    const char *two = "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", "
                      "\"reasoning_content\": \"r1\", \"content\": \"b\"}, {\"role\": \"user\", "
                      "\"content\": \"c\"}]";
    t = encode_str(two, DSV4_CHAT_MODE_THINKING, 0, true);
    if (t) {
        CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜><think>r1</think>b<｜end▁of▁"
                     "sentence｜><｜User｜>c<｜Assistant｜><think>");
        free(t);
    }
    t = encode_str(two, DSV4_CHAT_MODE_THINKING, 0, false);
    if (t) {
        CHECK_STR(t,
                  "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜></think>b<｜end▁of▁sentence｜>"
                  "<｜User｜>c<｜Assistant｜><think>");
        free(t);
    }
    /* task tokens; consecutive user turns merge with a blank line */
    t = encode_str("[{\"role\": \"user\", \"content\": \"q\", \"task\": \"query\"}]",
                   DSV4_CHAT_MODE_CHAT, 0, false);
    if (t) {
        CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>q<｜query｜>");
        free(t);
    }
    t = encode_str("[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"user\", \"content\": "
                   "\"y\"}]",
                   DSV4_CHAT_MODE_CHAT, 0, false);
    if (t) {
        CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>x\n\ny<｜Assistant｜></think>");
        free(t);
    }
    /* tool results follow the order of the assistant's calls */
    const char *tr =
            "[{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": "
            "\"\", "
            "\"tool_calls\": [{\"id\": \"A\", \"function\": {\"name\": \"f\", \"arguments\": "
            "\"{}\"}}, {\"id\": \"B\", \"function\": {\"name\": \"g\", \"arguments\": \"{}\"}}]}, "
            "{\"role\": \"tool\", \"tool_call_id\": \"B\", \"content\": \"rb\"}, {\"role\": "
            "\"tool\", \"tool_call_id\": \"A\", \"content\": \"ra\"}]";
    t = encode_str(tr, DSV4_CHAT_MODE_CHAT, 0, false);
    if (t) {
        CHECK(strstr(t, "<｜User｜><tool_result>ra</tool_result>\n\n<tool_result>rb</tool_result>"
                        "<｜Assistant｜></think>") != NULL);
        free(t);
    }
    /* response_format and wo_eos */
    t = encode_str("[{\"role\": \"system\", \"content\": \"S\", \"response_format\": {\"type\": "
                   "\"json_object\"}}, {\"role\": \"user\", \"content\": \"u\"}, {\"role\": "
                   "\"assistant\", \"content\": \"par\", \"wo_eos\": true}]",
                   DSV4_CHAT_MODE_CHAT, 0, false);
    if (t) {
        CHECK_STR(t, "<｜begin▁of▁sentence｜>S\n\n## Response Format:\n\nYou MUST strictly adhere "
                     "to the following schema to reply:\n{\"type\": \"json_object\"}<｜User｜>u<｜"
                     "Assistant｜></think>par");
        free(t);
    }
}

static void test_errors(void)
{
    struct dsv4_chat_opts o = {DSV4_CHAT_MODE_CHAT, 0, false, false};
    char *t;
    size_t n;
    const char *bad[] = {
            "{",
            "[{\"role\": \"wizard\", \"content\": \"x\"}]",
            "[{\"role\": \"developer\", \"content\": \"\"}]",
            "[{\"role\": \"user\", \"content\": \"x\", \"task\": \"nope\"}]",
            "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\", "
            "\"arguments\": \"not json\"}}]}]",
            "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"arguments\": "
            "\"{}\"}}]}]",
            "[{\"role\": \"user\", \"content\": 5}]",
            "[3]",
            "{\"messages\": 3}",
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad); i++) {
        int rc = dsv4_chat_encode_json(bad[i], strlen(bad[i]), &o, &t, &n);
        CHECKF(rc == DSV4_EINVAL && dsv4_errmsg()[0], "bad input %zu gave %d", i, rc);
    }
    o.mode = 7;
    CHECK_INT(dsv4_chat_encode_json("[]", 2, &o, &t, &n), DSV4_EINVAL);

    const char *bad_dsml[] = {
            "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜oops name=\"f\">",
            "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter "
            "name=\"a\" string=\"maybe\">1</｜DSML｜parameter>\n</｜DSML｜invoke>",
            "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</"
            "｜DSML｜tool_calls>junk",
            "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n", /* unfinished at the end */
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad_dsml); i++) {
        cJSON *m = NULL;
        int rc = dsv4_chat_parse(bad_dsml[i], strlen(bad_dsml[i]), DSV4_CHAT_MODE_CHAT, &m);
        CHECKF(rc == DSV4_EFORMAT, "bad DSML %zu gave %d", i, rc);
        cJSON_Delete(m);
    }
    /* partial markers are held back, then released at the end */
    struct dsv4_chat_parser *p;
    CHECK(dsv4_chat_parser_new(DSV4_CHAT_MODE_THINKING, &p) == 0);
    CHECK(dsv4_chat_parser_feed(p, "abc</thi", 8) == 0);
    CHECK_STR(dsv4_chat_parser_reasoning(p, NULL), "abc");
    CHECK(dsv4_chat_parser_feed(p, "nk>ans\n\n<｜DSML｜tool", strlen("nk>ans\n\n<｜DSML｜tool")) ==
          0);
    CHECK_STR(dsv4_chat_parser_reasoning(p, NULL), "abc");
    CHECK_STR(dsv4_chat_parser_content(p, NULL), "ans");
    CHECK(dsv4_chat_parser_finish(p) == 0);
    CHECK_STR(dsv4_chat_parser_content(p, NULL), "ans\n\n<｜DSML｜tool");
    CHECK(!dsv4_chat_parser_done(p));
    dsv4_chat_parser_free(p);
}

/* A long tool-call parameter streamed in small pieces parses in linear
 * time: 10x the text may take about 10x the time, not 100x. */
static double stream_tool_call(size_t len)
{
    const char *head = "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"w\">\n<｜DSML｜parameter "
                       "name=\"text\" string=\"true\">";
    const char *tail = "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    struct dsv4_chat_parser *p;
    CHECK(dsv4_chat_parser_new(DSV4_CHAT_MODE_CHAT, &p) == 0);
    double t0 = dsv4_now();
    CHECK(dsv4_chat_parser_feed(p, head, strlen(head)) == 0);
    char chunk[16];
    memset(chunk, 'a', sizeof(chunk));
    int bad = 0;
    for (size_t i = 0; i < len; i += sizeof(chunk))
        bad += dsv4_chat_parser_feed(p, chunk, sizeof(chunk)) != 0;
    CHECK_INT(bad, 0);
    CHECK(dsv4_chat_parser_feed(p, tail, strlen(tail)) == 0);
    CHECK(dsv4_chat_parser_finish(p) == 0);
    double dt = dsv4_now() - t0;
    CHECK_INT(dsv4_chat_parser_n_calls(p), 1);
    if (dsv4_chat_parser_n_calls(p) == 1) {
        const char *name, *args;
        dsv4_chat_parser_call(p, 0, &name, &args);
        CHECK_INT(strlen(args), len + strlen("{\"text\": \"\"}"));
    }
    dsv4_chat_parser_free(p);
    return dt;
}

static void test_linear_stream(void)
{
    double small = stream_tool_call(1 << 20), big = stream_tool_call(1 << 23);
    double ratio = big / DSV4_MAX(small, 1e-6);
    fprintf(stderr, "tool call streamed: 1 MB %.4f s, 8 MB %.4f s, ratio %.1f\n", small, big,
            ratio);
    CHECKF(ratio < 30, "8x the text took %.1fx the time", ratio);
}

int main(void)
{
    test_golden();
    test_parse_case1();
    test_roundtrip_tool_calls();
    test_options();
    test_errors();
    test_linear_stream();
    TEST_DONE();
}
