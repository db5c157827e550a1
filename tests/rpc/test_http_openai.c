/*
 * test_http_openai.c - the OpenAI JSON layer (rpc/openai.h) without
 * sockets: request validation (each refusal's status and param), the
 * mapping of fields to the service request, chat rendering with thinking,
 * effort and tools, and responses built from synthetic service events:
 * completions and chat, streamed and not, reasoning / content / DSML tool
 * calls split at every byte, grammar breaks falling back to content,
 * logprobs, usage, invalid UTF-8 from the model, error bodies.
 */
#include "rpc/openai.h"
#include "tests/test.h"

#include "base/dsv4.h"
#include "engine/text/chat.h"

#include <cjson/cJSON.h>

static const struct dsv4_openai_cfg cfg = {.model = "m1", .default_thinking = false};

static struct dsv4_openai_req *parse(enum dsv4_openai_kind kind, const char *body,
                                     struct dsv4_openai_error *err)
{
    struct dsv4_openai_req *r = NULL;
    struct dsv4_openai_error e;
    int rc = dsv4_openai_parse(kind, body, strlen(body), &cfg, &r, err ? err : &e);
    CHECK((rc == 0) == (r != NULL));
    return r;
}

static void test_refusals(void)
{
    static const struct {
        int kind;
        const char *body;
        int status;
        const char *param;
    } cases[] = {
            {0, "", 400, NULL},
            {0, "{", 400, NULL},
            {0, "[]", 400, NULL},
            {0, "\"x\"", 400, NULL},
            {0, "{\"prompt\": \"\\ud800\"}", 400, NULL},
            {0, "{}", 400, "prompt"},
            {0, "{\"prompt\": 5}", 400, "prompt"},
            {0, "{\"prompt\": \"\"}", 400, "prompt"},
            {0, "{\"prompt\": []}", 400, "prompt"},
            {0, "{\"prompt\": [1, \"a\"]}", 400, "prompt"},
            {0, "{\"prompt\": [1, -2]}", 400, "prompt"},
            {0, "{\"prompt\": [1.5]}", 400, "prompt"},
            {0, "{\"prompt\": [\"a\", \"b\"]}", 400, "prompt"},
            {0, "{\"prompt\": [[1], [2]]}", 400, "prompt"},
            {0, "{\"prompt\": \"x\", \"model\": \"other\"}", 404, "model"},
            {0, "{\"prompt\": \"x\", \"model\": 3}", 400, "model"},
            {0, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens"},
            {0, "{\"prompt\": \"x\", \"max_tokens\": -5}", 400, "max_tokens"},
            {0, "{\"prompt\": \"x\", \"max_tokens\": 2.5}", 400, "max_tokens"},
            {0, "{\"prompt\": \"x\", \"max_tokens\": 1e300}", 400, "max_tokens"},
            {0, "{\"prompt\": \"x\", \"max_tokens\": \"9\"}", 400, "max_tokens"},
            {0, "{\"prompt\": \"x\", \"temperature\": -0.1}", 400, "temperature"},
            {0, "{\"prompt\": \"x\", \"temperature\": 1e999}", 400, "temperature"},
            {0, "{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p"},
            {0, "{\"prompt\": \"x\", \"top_p\": 1.5}", 400, "top_p"},
            {0, "{\"prompt\": \"x\", \"top_k\": -2}", 400, "top_k"},
            {0, "{\"prompt\": \"x\", \"min_p\": 2}", 400, "min_p"},
            {0, "{\"prompt\": \"x\", \"presence_penalty\": 3}", 400, "presence_penalty"},
            {0, "{\"prompt\": \"x\", \"frequency_penalty\": -3}", 400, "frequency_penalty"},
            {0, "{\"prompt\": \"x\", \"repetition_penalty\": 0}", 400, "repetition_penalty"},
            {0, "{\"prompt\": \"x\", \"seed\": 1.5}", 400, "seed"},
            {0, "{\"prompt\": \"x\", \"seed\": 1e30}", 400, "seed"},
            {0, "{\"prompt\": \"x\", \"n\": 2}", 400, "n"},
            {0, "{\"prompt\": \"x\", \"best_of\": 3}", 400, "best_of"},
            {0, "{\"prompt\": \"x\", \"logit_bias\": {\"1\": 2}}", 400, "logit_bias"},
            {0, "{\"prompt\": \"x\", \"min_tokens\": 4}", 400, "min_tokens"},
            {0, "{\"prompt\": \"x\", \"stop\": 4}", 400, "stop"},
            {0, "{\"prompt\": \"x\", \"stop\": [\"a\", 4]}", 400, "stop"},
            {0,
             "{\"prompt\": \"x\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\","
             "\"9\",\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
             400, "stop"},
            {0, "{\"prompt\": \"x\", \"stop_token_ids\": [-1]}", 400, "stop_token_ids"},
            {0, "{\"prompt\": \"x\", \"stream\": \"yes\"}", 400, "stream"},
            {0, "{\"prompt\": \"x\", \"stream_options\": 1}", 400, "stream_options"},
            {0, "{\"prompt\": \"x\", \"logprobs\": 21}", 400, "logprobs"},
            {0, "{\"prompt\": \"x\", \"logprobs\": 1, \"echo\": true}", 400, "echo"},
            {0, "{\"prompt\": \"x\", \"suffix\": \"tail\"}", 400, "suffix"},
            {0, "{\"prompt\": \"x\", \"priority\": 5}", 400, "priority"},
            {1, "{}", 400, "messages"},
            {1, "{\"messages\": {}}", 400, "messages"},
            {1, "{\"messages\": []}", 400, "messages"},
            {1, "{\"messages\": [{\"role\": \"alien\", \"content\": \"x\"}]}", 400, "messages"},
            {1, "{\"messages\": [5]}", 400, "messages"},
            {1, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
             400, "top_logprobs"},
            {1, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": {}}", 400,
             "tools"},
            {1, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", 400,
             "tools"},
            {1,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": "
             "\"required\"}",
             400, "tool_choice"},
            {1,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"reasoning_effort\": "
             "\"extreme\"}",
             400, "reasoning_effort"},
            {1,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"thinking\": "
             "\"maybe\"}",
             400, "thinking"},
            {1,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
             "\"chat_template_kwargs\": {\"thinking\": 1}}",
             400, "thinking"},
            {1,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": "
             "{\"type\": \"json_object\"}}",
             400, "response_format"},
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(cases); i++) {
        struct dsv4_openai_error e;
        struct dsv4_openai_req *r = parse(cases[i].kind, cases[i].body, &e);
        CHECKF(!r, "accepted: %s", cases[i].body);
        dsv4_openai_req_free(r);
        CHECKF(e.status == cases[i].status, "%s: status %d (%s)", cases[i].body, e.status,
               e.message);
        CHECKF((cases[i].param == NULL) == (e.param == NULL) &&
                       (!e.param || !strcmp(e.param, cases[i].param)),
               "%s: param %s", cases[i].body, e.param ? e.param : "(null)");
        CHECK(e.message[0] != 0);
    }
    /* invalid UTF-8 and a NUL inside the body */
    struct dsv4_openai_error e;
    struct dsv4_openai_req *r = NULL;
    const char bad[] = "{\"prompt\": \"\xc3\x28\"}";
    CHECK(dsv4_openai_parse(DSV4_OPENAI_COMPLETION, bad, sizeof(bad) - 1, &cfg, &r, &e) != 0);
    CHECK(e.status == 400 && strstr(e.message, "UTF-8"));
    const char nul[] = "{\"prompt\": \"a\"}\0";
    CHECK(dsv4_openai_parse(DSV4_OPENAI_COMPLETION, nul, sizeof(nul), &cfg, &r, &e) != 0);
    /* deep nesting is refused by cJSON's depth limit, not by a stack overflow */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 32);
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"prompt\": \"x\", \"z\": ");
    for (size_t i = 0; i < depth; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    CHECK(dsv4_openai_parse(DSV4_OPENAI_COMPLETION, deep, k, &cfg, &r, &e) != 0);
    free(deep);
    CHECK(dsv4_openai_status(DSV4_EINVAL, false) == 400);
    CHECK(dsv4_openai_status(DSV4_ERANGE, false) == 400);
    CHECK(dsv4_openai_status(DSV4_ENOSPC, true) == 429);
    CHECK(dsv4_openai_status(DSV4_ENOTSUP, false) == 503);
    CHECK(dsv4_openai_status(DSV4_EIO, true) == 503);
    CHECK(dsv4_openai_status(DSV4_EIO, false) == 500);
}

static void test_fields(void)
{
    struct dsv4_openai_req *r = parse(
            0,
            "{\"model\": \"m1\", \"prompt\": \"Hello\", \"max_tokens\": 12, \"temperature\": 0.5,"
            " \"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.1, \"presence_penalty\": 0.5,"
            " \"frequency_penalty\": -1, \"repetition_penalty\": 1.2, \"seed\": -1,"
            " \"stop\": [\"\", \"END\"], \"stop_token_ids\": [7, 8], \"ignore_eos\": true,"
            " \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"logprobs\": 3,"
            " \"priority\": 1, \"skip_special_tokens\": false, \"unknown\": [1, {\"a\": null}],"
            " \"n\": 1, \"best_of\": null, \"logit_bias\": {}, \"user\": \"me\"}",
            NULL);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->kind == DSV4_OPENAI_COMPLETION && !strcmp(r->prompt, "Hello"));
        CHECK(r->max_tokens == 12);
        CHECK(r->sample.temperature == 0.5f && r->sample.top_p == 0.9f);
        CHECK(r->sample.top_k == 40 && r->sample.min_p == 0.1f);
        CHECK(r->sample.presence_penalty == 0.5f && r->sample.frequency_penalty == -1.0f);
        CHECK(r->sample.repetition_penalty == 1.2f);
        CHECK(r->seed_given && r->sample.seed == UINT64_MAX);
        CHECK(r->n_stop == 1 && !strcmp(r->stop[0], "END"));
        CHECK(r->n_stop_ids == 2 && r->stop_ids[1] == 8);
        CHECK(r->ignore_eos && r->stream && r->include_usage && r->priority == 1);
        CHECK(r->logprobs && r->top_logprobs == 3 && r->sample.logprobs &&
              r->sample.n_top_logprobs == 3);
        CHECK(!r->skip_special);
    }
    dsv4_openai_req_free(r);
    r = parse(0, "{\"prompt\": [[5, 6, 7]], \"top_k\": -1}", NULL);
    CHECK(r && r->n_ids == 3 && r->ids[2] == 7 && !r->prompt && r->max_tokens == 0);
    CHECK(r && r->skip_special && r->sample.top_k == 0 && !r->seed_given && !r->logprobs);
    dsv4_openai_req_free(r);
    r = parse(0, "{\"prompt\": [\"only\"], \"stop\": \"S\"}", NULL);
    CHECK(r && !strcmp(r->prompt, "only") && r->n_stop == 1 && !strcmp(r->stop[0], "S"));
    dsv4_openai_req_free(r);

    /* chat: modes, effort, tools, max_completion_tokens over max_tokens */
    const char *user = "\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]";
    char body[1024];
    snprintf(body, sizeof(body), "{%s, \"max_tokens\": 5, \"max_completion_tokens\": 6}", user);
    r = parse(1, body, NULL);
    CHECK(r && r->chat_mode == DSV4_CHAT_MODE_CHAT && r->max_tokens == 6 && !r->skip_special);
    CHECK(r && strstr(r->prompt, "<｜User｜>Hello<｜Assistant｜></think>"));
    dsv4_openai_req_free(r);
    static const struct {
        const char *extra;
        int mode, effort;
    } think[] = {
            {"", DSV4_CHAT_MODE_CHAT, DSV4_CHAT_EFFORT_NONE},
            {", \"chat_template_kwargs\": {\"thinking\": true}", DSV4_CHAT_MODE_THINKING,
             DSV4_CHAT_EFFORT_NONE},
            {", \"chat_template_kwargs\": {\"enable_thinking\": true}", DSV4_CHAT_MODE_THINKING,
             DSV4_CHAT_EFFORT_NONE},
            {", \"thinking\": {\"type\": \"enabled\"}", DSV4_CHAT_MODE_THINKING,
             DSV4_CHAT_EFFORT_NONE},
            {", \"reasoning_effort\": \"high\"", DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_HIGH},
            {", \"reasoning_effort\": \"low\"", DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_HIGH},
            {", \"reasoning_effort\": \"xhigh\"", DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_MAX},
            {", \"reasoning_effort\": \"none\"", DSV4_CHAT_MODE_CHAT, DSV4_CHAT_EFFORT_NONE},
            {", \"chat_template_kwargs\": {\"thinking\": true, \"reasoning_effort\": \"max\"}",
             DSV4_CHAT_MODE_THINKING, DSV4_CHAT_EFFORT_MAX},
            {", \"chat_template_kwargs\": {\"thinking\": false}, \"reasoning_effort\": \"max\"",
             DSV4_CHAT_MODE_CHAT, DSV4_CHAT_EFFORT_MAX},
    };
    for (size_t i = 0; i < DSV4_ARRAY_LEN(think); i++) {
        snprintf(body, sizeof(body), "{%s%s}", user, think[i].extra);
        r = parse(1, body, NULL);
        CHECKF(r && r->chat_mode == think[i].mode && r->effort == think[i].effort, "%s",
               think[i].extra);
        if (r && think[i].mode == DSV4_CHAT_MODE_THINKING)
            CHECK(strstr(r->prompt, "<｜Assistant｜><think>") != NULL);
        if (r)
            CHECK((strstr(r->prompt, "Reasoning Effort: Absolute maximum") != NULL) ==
                  (think[i].effort == DSV4_CHAT_EFFORT_MAX &&
                   think[i].mode == DSV4_CHAT_MODE_THINKING));
        dsv4_openai_req_free(r);
    }
    struct dsv4_openai_cfg on = cfg;
    on.default_thinking = true;
    struct dsv4_openai_error e;
    snprintf(body, sizeof(body), "{%s}", user);
    CHECK(dsv4_openai_parse(DSV4_OPENAI_CHAT, body, strlen(body), &on, &r, &e) == 0 &&
          r->chat_mode == DSV4_CHAT_MODE_THINKING);
    dsv4_openai_req_free(r);
    /* tools: rendered into a system turn made for them; tool_choice none leaves them out */
    const char *tools = "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get\", "
                        "\"parameters\": {\"type\": \"object\"}}}]";
    snprintf(body, sizeof(body), "{%s, %s}", user, tools);
    r = parse(1, body, NULL);
    CHECK(r && strstr(r->prompt, "## Tools") && strstr(r->prompt, "\"name\": \"get\""));
    dsv4_openai_req_free(r);
    snprintf(body, sizeof(body), "{%s, %s, \"tool_choice\": \"none\"}", user, tools);
    r = parse(1, body, NULL);
    CHECK(r && !strstr(r->prompt, "## Tools"));
    dsv4_openai_req_free(r);
    snprintf(body, sizeof(body),
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Sys.\"}, {\"role\": \"user\", "
             "\"content\": \"Hi\"}], %s, \"tool_choice\": \"auto\"}",
             tools);
    r = parse(1, body, NULL);
    CHECK(r && strstr(r->prompt, "Sys.\n\n## Tools"));
    dsv4_openai_req_free(r);
}

/* ------------------------------------------------------------ responses */

static int tok_text(void *ctx, int32_t id, char **text, size_t *len)
{
    (void)ctx;
    if (id == 999)
        return -1;
    char buf[16];
    if (id == 300)
        snprintf(buf, sizeof(buf), "\xff");
    else
        snprintf(buf, sizeof(buf), "%c", (char)('a' + id % 26));
    *text = strdup(buf);
    *len = strlen(buf);
    return 0;
}

struct run {
    struct dsv4_openai_req *rq;
    struct dsv4_openai_resp *resp;
    struct dsv4_strbuf out;
    int32_t next_id;
};

static void run_start(struct run *r, int kind, const char *body)
{
    memset(r, 0, sizeof(*r));
    r->rq = parse(kind, body, NULL);
    CHECK(r->rq != NULL);
    CHECK(dsv4_openai_resp_new(r->rq, kind ? "chatcmpl-test" : "cmpl-test", "m1", 1700000000,
                               tok_text, NULL, &r->resp) == 0);
    CHECK(dsv4_openai_resp_begin(r->resp, &r->out) == 0);
}

/* One TOKENS event per piece (one id each, logprob -0.25, two top entries). */
static void run_text(struct run *r, const char *const *pieces, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t id = r->next_id++;
        float lp = -0.25f;
        int32_t top_ids[DSV4_SAMPLE_MAX_TOP_LOGPROBS] = {id, 999};
        float top_lp[DSV4_SAMPLE_MAX_TOP_LOGPROBS] = {-0.25f, -3.0f};
        struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_TOKENS,
                                    .ids = &id,
                                    .n_ids = 1,
                                    .text = pieces[i],
                                    .text_len = strlen(pieces[i]),
                                    .logprobs = &lp,
                                    .n_top = 2,
                                    .top_ids = top_ids,
                                    .top_logprobs = top_lp};
        CHECK(dsv4_openai_resp_tokens(r->resp, &ev, &r->out) == 0);
    }
}

static void run_finish(struct run *r, enum dsv4_svc_finish f, const char *stop)
{
    struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_FINISH,
                                .finish = f,
                                .stop_string = stop,
                                .prompt_tokens = 11,
                                .completion_tokens = r->next_id};
    CHECK(dsv4_openai_resp_finish(r->resp, &ev, &r->out) == 0);
}

static void run_free(struct run *r)
{
    dsv4_openai_resp_free(r->resp);
    dsv4_openai_req_free(r->rq);
    dsv4_strbuf_free(&r->out);
}

/* The SSE payloads of a stream, as cJSON (the array ends before "[DONE]"). */
static cJSON *sse(const char *s, bool *done)
{
    cJSON *a = cJSON_CreateArray();
    *done = false;
    while (s && *s) {
        CHECK(!strncmp(s, "data: ", 6));
        const char *e = strstr(s, "\n\n");
        CHECK(e != NULL);
        if (!e)
            break;
        if (!strncmp(s + 6, "[DONE]", 6)) {
            *done = e[2] == 0;
        } else {
            cJSON *j = cJSON_ParseWithLength(s + 6, (size_t)(e - s - 6));
            CHECKF(j != NULL, "chunk is not JSON: %.*s", (int)(e - s), s);
            if (j)
                cJSON_AddItemToArray(a, j);
        }
        s = e + 2;
    }
    return a;
}

static const char *jstr(const cJSON *o, const char *path)
{
    /* path: keys separated by '.', array indexes as numbers */
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = o;
    for (char *k = strtok(buf, "."); k && cur; k = strtok(NULL, "."))
        cur = (*k >= '0' && *k <= '9') ? cJSON_GetArrayItem(cur, atoi(k))
                                       : cJSON_GetObjectItemCaseSensitive(cur, k);
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static const cJSON *jget(const cJSON *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = o;
    for (char *k = strtok(buf, "."); k && cur; k = strtok(NULL, "."))
        cur = (*k >= '0' && *k <= '9') ? cJSON_GetArrayItem(cur, atoi(k))
                                       : cJSON_GetObjectItemCaseSensitive(cur, k);
    return cur;
}

#define CHECK_JSTR(o, path, want)                                             \
    do {                                                                      \
        const char *got_ = jstr((o), (path));                                 \
        CHECKF(got_ && !strcmp(got_, (want)), "%s = %s, expected %s", (path), \
               got_ ? got_ : "(missing)", (want));                            \
    } while (0)

static void test_completion_responses(void)
{
    static const char *const pieces[] = {"ab", "c", "", "d"};
    struct run r;
    run_start(&r, 0, "{\"prompt\": \"P\", \"max_tokens\": 4, \"logprobs\": 1}");
    run_text(&r, pieces, 4);
    run_finish(&r, DSV4_SVC_FINISH_LENGTH, NULL);
    cJSON *j = cJSON_Parse(r.out.p);
    CHECK(j != NULL);
    CHECK_JSTR(j, "object", "text_completion");
    CHECK_JSTR(j, "id", "cmpl-test");
    CHECK_JSTR(j, "choices.0.text", "abcd");
    CHECK_JSTR(j, "choices.0.finish_reason", "length");
    CHECK(cJSON_IsNull(jget(j, "choices.0.stop_reason")));
    CHECK(jget(j, "usage.prompt_tokens")->valueint == 11);
    CHECK(jget(j, "usage.completion_tokens")->valueint == 4);
    CHECK(jget(j, "usage.total_tokens")->valueint == 15);
    CHECK_JSTR(j, "choices.0.logprobs.tokens.1", "b");
    CHECK(jget(j, "choices.0.logprobs.token_logprobs.3")->valuedouble == -0.25);
    CHECK(jget(j, "choices.0.logprobs.text_offset.3")->valueint == 3);
    CHECK(cJSON_GetArraySize(jget(j, "choices.0.logprobs.top_logprobs.0")) == 1);
    cJSON_Delete(j);
    run_free(&r);

    /* streamed, with echo and usage */
    run_start(&r, 0,
              "{\"prompt\": \"P:\", \"max_tokens\": 4, \"stream\": true, \"echo\": true, "
              "\"stream_options\": {\"include_usage\": true}}");
    run_text(&r, pieces, 4);
    run_finish(&r, DSV4_SVC_FINISH_STOP, "zz");
    bool done;
    cJSON *a = sse(r.out.p, &done);
    CHECK(done);
    int n = cJSON_GetArraySize(a);
    CHECK(n == 6); /* echo, 3 non-empty pieces, the finish, the usage */
    CHECK_JSTR(a, "0.choices.0.text", "P:");
    CHECK_JSTR(a, "1.choices.0.text", "ab");
    CHECK_JSTR(a, "4.choices.0.finish_reason", "stop");
    CHECK_JSTR(a, "4.choices.0.stop_reason", "zz");
    CHECK(cJSON_GetArraySize(jget(a, "5.choices")) == 0);
    CHECK(jget(a, "5.usage.completion_tokens")->valueint == 4);
    CHECK(cJSON_IsNull(jget(a, "1.usage")));
    cJSON_Delete(a);
    run_free(&r);

    /* echo of a token-id prompt, non-streamed */
    run_start(&r, 0, "{\"prompt\": [0, 1, 2], \"max_tokens\": 1, \"echo\": true}");
    run_text(&r, pieces, 1);
    run_finish(&r, DSV4_SVC_FINISH_LENGTH, NULL);
    j = cJSON_Parse(r.out.p);
    CHECK_JSTR(j, "choices.0.text", "abcab");
    cJSON_Delete(j);
    run_free(&r);
}

/* Feeds `text` in pieces of `step` bytes (whole UTF-8 characters) to a chat response. */
static void feed_split(struct run *r, const char *text, size_t step)
{
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        size_t k = DSV4_MIN(step, n - i);
        while (i + k < n && (text[i + k] & 0xc0) == 0x80)
            k++;
        char *piece = malloc(k + 1);
        memcpy(piece, text + i, k);
        piece[k] = 0;
        const char *p = piece;
        run_text(r, &p, 1);
        free(piece);
        i += k;
    }
}

#define DSML_CALL                                                                                    \
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter "     \
    "name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" " \
    "string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"

static void test_chat_responses(void)
{
    const char *think = "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}], "
                        "\"chat_template_kwargs\": {\"thinking\": true}";
    char body[512];
    const char *completion = "Let me think</think>The answer is 4.<｜end▁of▁sentence｜>";
    for (size_t step = 1; step <= 64; step *= 4) {
        struct run r;
        snprintf(body, sizeof(body), "%s, \"stream\": true}", think);
        run_start(&r, 1, body);
        feed_split(&r, completion, step);
        run_finish(&r, DSV4_SVC_FINISH_STOP, NULL);
        bool done;
        cJSON *a = sse(r.out.p, &done);
        CHECK(done);
        struct dsv4_strbuf reasoning = {0}, content = {0};
        const cJSON *c;
        cJSON_ArrayForEach(c, a)
        {
            const char *rs = jstr(c, "choices.0.delta.reasoning_content");
            const char *cs = jstr(c, "choices.0.delta.content");
            if (rs)
                dsv4_strbuf_str(&reasoning, rs);
            if (cs)
                dsv4_strbuf_str(&content, cs);
            CHECK(!rs || !strstr(rs, "<"));
            CHECK(!cs || !strstr(cs, "<"));
        }
        CHECKF(reasoning.p && !strcmp(reasoning.p, "Let me think"), "step %zu: reasoning %s", step,
               reasoning.p);
        CHECKF(content.p && !strcmp(content.p, "The answer is 4."), "step %zu: content %s", step,
               content.p);
        CHECK_JSTR(a, "0.choices.0.delta.role", "assistant");
        int n = cJSON_GetArraySize(a);
        CHECK_JSTR(cJSON_GetArrayItem(a, n - 1), "choices.0.finish_reason", "stop");
        dsv4_strbuf_free(&reasoning);
        dsv4_strbuf_free(&content);
        cJSON_Delete(a);
        run_free(&r);
    }
    /* non-streamed, with logprobs (one unknown token text, one invalid UTF-8) */
    struct run r;
    snprintf(body, sizeof(body), "%s, \"logprobs\": true, \"top_logprobs\": 2}", think);
    run_start(&r, 1, body);
    feed_split(&r, completion, 7);
    run_finish(&r, DSV4_SVC_FINISH_STOP, NULL);
    cJSON *j = cJSON_Parse(r.out.p);
    CHECK(j != NULL);
    CHECK_JSTR(j, "object", "chat.completion");
    CHECK_JSTR(j, "choices.0.message.role", "assistant");
    CHECK_JSTR(j, "choices.0.message.reasoning_content", "Let me think");
    CHECK_JSTR(j, "choices.0.message.content", "The answer is 4.");
    CHECK(!jget(j, "choices.0.message.tool_calls"));
    CHECK_JSTR(j, "choices.0.logprobs.content.1.token", "b");
    CHECK(jget(j, "choices.0.logprobs.content.1.bytes.0")->valueint == 'b');
    CHECK_JSTR(j, "choices.0.logprobs.content.1.top_logprobs.1.token", "token_id:999");
    CHECK(jget(j, "choices.0.logprobs.content.1.top_logprobs.1.logprob")->valuedouble == -3.0);
    cJSON_Delete(j);
    run_free(&r);

    /* tool calls, streamed a byte at a time and whole */
    const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather?\"}]";
    for (int stream = 0; stream < 2; stream++) {
        snprintf(body, sizeof(body), "%s, \"stream\": %s}", chat, stream ? "true" : "false");
        run_start(&r, 1, body);
        feed_split(&r, "Checking." DSML_CALL "<｜end▁of▁sentence｜>", stream ? 1 : 1000);
        run_finish(&r, DSV4_SVC_FINISH_STOP, NULL);
        const cJSON *call;
        cJSON *root;
        if (stream) {
            bool done;
            root = sse(r.out.p, &done);
            call = NULL;
            const cJSON *c;
            int calls = 0;
            cJSON_ArrayForEach(c, root)
            {
                const cJSON *tc = jget(c, "choices.0.delta.tool_calls.0");
                if (tc) {
                    call = tc;
                    calls++;
                }
            }
            CHECK(calls == 1);
            CHECK(call && jget(call, "index")->valueint == 0);
            int n = cJSON_GetArraySize(root);
            CHECK_JSTR(cJSON_GetArrayItem(root, n - 1), "choices.0.finish_reason", "tool_calls");
        } else {
            root = cJSON_Parse(r.out.p);
            call = jget(root, "choices.0.message.tool_calls.0");
            CHECK_JSTR(root, "choices.0.message.content", "Checking.");
            CHECK_JSTR(root, "choices.0.finish_reason", "tool_calls");
        }
        CHECK(call != NULL);
        if (call) {
            CHECK_JSTR(call, "type", "function");
            CHECK_JSTR(call, "function.name", "get_weather");
            CHECK_JSTR(call, "function.arguments", "{\"city\": \"Paris\", \"days\": 3}");
            CHECK(jstr(call, "id") && !strncmp(jstr(call, "id"), "call_", 5));
        }
        cJSON_Delete(root);
        run_free(&r);
    }
    /* a broken tool-call block: the text from the marker on becomes content */
    run_start(&r, 1, "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}]}");
    feed_split(&r, "Hi\n\n<｜DSML｜tool_calls>\n<｜DSML｜garbage here<｜end▁of▁sentence｜>", 5);
    run_finish(&r, DSV4_SVC_FINISH_STOP, NULL);
    j = cJSON_Parse(r.out.p);
    CHECK_JSTR(j, "choices.0.message.content", "Hi\n\n<｜DSML｜tool_calls>\n<｜DSML｜garbage here");
    CHECK_JSTR(j, "choices.0.finish_reason", "stop");
    cJSON_Delete(j);
    run_free(&r);
    for (size_t step = 1; step <= 16; step *= 2) {
        run_start(&r, 1,
                  "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}], \"stream\": true}");
        feed_split(&r, "Hi\n\n<｜DSML｜tool_calls>\n<｜DSML｜oops<｜end▁of▁sentence｜>", step);
        run_finish(&r, DSV4_SVC_FINISH_STOP, NULL);
        bool done;
        cJSON *a = sse(r.out.p, &done);
        struct dsv4_strbuf content = {0};
        const cJSON *c;
        cJSON_ArrayForEach(c, a)
        {
            const char *cs = jstr(c, "choices.0.delta.content");
            dsv4_strbuf_str(&content, cs ? cs : "");
        }
        CHECKF(done && content.p && !strcmp(content.p, "Hi\n\n<｜DSML｜tool_calls>\n<｜DSML｜oops"),
               "step %zu: streamed raw content %s", step, content.p);
        dsv4_strbuf_free(&content);
        cJSON_Delete(a);
        run_free(&r);
    }
    /* invalid UTF-8 from the model still gives valid JSON */
    run_start(&r, 1,
              "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}], \"stream\": true}");
    const char *bad[] = {"ok \xff\xfe", "\xc3"};
    run_text(&r, bad, 2);
    run_finish(&r, DSV4_SVC_FINISH_ABORT, NULL);
    bool done;
    cJSON *a = sse(r.out.p, &done);
    CHECK(done && cJSON_GetArraySize(a) == 4);
    CHECK_JSTR(a, "1.choices.0.delta.content", "ok \xef\xbf\xbd\xef\xbf\xbd");
    CHECK_JSTR(a, "3.choices.0.finish_reason", "abort");
    cJSON_Delete(a);
    run_free(&r);
}

static void test_error_bodies(void)
{
    struct dsv4_strbuf b = {0};
    dsv4_openai_error_body(&b, 429, "queue \"full\" \xff", NULL, "queue_full");
    cJSON *j = cJSON_Parse(b.p);
    CHECK(j != NULL);
    CHECK_JSTR(j, "error.message", "queue \"full\" \xef\xbf\xbd");
    CHECK_JSTR(j, "error.type", "rate_limit_error");
    CHECK_JSTR(j, "error.code", "queue_full");
    CHECK(cJSON_IsNull(jget(j, "error.param")));
    cJSON_Delete(j);
    dsv4_strbuf_free(&b);
    dsv4_openai_error_body(&b, 400, "bad", "temperature", NULL);
    j = cJSON_Parse(b.p);
    CHECK_JSTR(j, "error.param", "temperature");
    CHECK(jget(j, "error.code")->valueint == 400);
    cJSON_Delete(j);
    dsv4_strbuf_free(&b);
    struct run r;
    run_start(&r, 0, "{\"prompt\": \"x\", \"stream\": true}");
    dsv4_openai_resp_stream_error(r.resp, 503, "worker restarted", &r.out);
    bool done;
    cJSON *a = sse(r.out.p, &done);
    CHECK(done && cJSON_GetArraySize(a) == 1);
    CHECK_JSTR(a, "0.error.message", "worker restarted");
    cJSON_Delete(a);
    run_free(&r);
    dsv4_openai_models_body(&b, "m1", 5, 4096);
    j = cJSON_Parse(b.p);
    CHECK_JSTR(j, "data.0.id", "m1");
    CHECK(jget(j, "data.0.max_model_len")->valueint == 4096);
    cJSON_Delete(j);
    dsv4_strbuf_free(&b);
}

int main(void)
{
    test_refusals();
    test_fields();
    test_completion_responses();
    test_chat_responses();
    test_error_bodies();
    TEST_DONE();
}
