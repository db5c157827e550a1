/*
 * fuzz_http_request.c - fuzz target of the OpenAI request parsing of the
 * HTTP front end (rpc/openai.h).  Each input is parsed as a completion and
 * as a chat request.  A refusal must carry a 4xx/5xx status and a message;
 * an accepted request must hold only values the service accepts (sampling
 * parameters in range, at most DSV4_SVC_MAX_STOP stop strings, one prompt),
 * and a response to it, fed the input itself as model output in three
 * pieces (arbitrary bytes: the chat parser and the UTF-8 cleaning see
 * them), must be valid JSON, streamed or not.
 */
#include "dsv4-build.h"
#include "rpc/openai.h"

#include "base/dsv4.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int tok_text(void *ctx, int32_t id, char **text, size_t *len)
{
    (void)ctx;
    char *t = malloc(2);
    if (!t)
        return -1;
    t[0] = (char)(id & 0xff); /* any byte: invalid UTF-8 included */
    t[1] = 0;
    *text = t;
    *len = 1;
    return 0;
}

/* Every "data: ..." payload of a stream is JSON or [DONE]; the stream ends with [DONE]. */
static void check_stream(const char *s)
{
    bool done = false;
    while (s && *s) {
        DSV4_ASSERT(!strncmp(s, "data: ", 6));
        const char *e = strstr(s, "\n\n");
        DSV4_ASSERT(e != NULL);
        if (!strncmp(s + 6, "[DONE]", 6)) {
            done = true;
        } else {
            cJSON *j = cJSON_ParseWithLength(s + 6, (size_t)(e - s - 6));
            DSV4_ASSERT(j != NULL);
            cJSON_Delete(j);
        }
        s = e + 2;
    }
    DSV4_ASSERT(done);
}

static void respond(const struct dsv4_openai_req *r, const uint8_t *data, size_t size)
{
    struct dsv4_openai_resp *resp;
    struct dsv4_strbuf out = {0};
    if (dsv4_openai_resp_new(r, "fuzz-1", "m", 1, tok_text, NULL, &resp))
        return;
    int rc = dsv4_openai_resp_begin(resp, &out);
    size_t cut[4] = {0, size / 3, 2 * size / 3, size};
    for (int i = 0; i < 3 && !rc; i++) {
        int32_t ids[2] = {(int32_t)i, (int32_t)(size & 0xff)};
        float lps[2] = {-0.5f, -1.0f};
        int32_t top_ids[2 * DSV4_SAMPLE_MAX_TOP_LOGPROBS] = {0};
        float top_lps[2 * DSV4_SAMPLE_MAX_TOP_LOGPROBS] = {0};
        struct dsv4_svc_event ev = {.kind = DSV4_SVC_EV_TOKENS,
                                    .ids = ids,
                                    .n_ids = 2,
                                    .text = (const char *)data + cut[i],
                                    .text_len = cut[i + 1] - cut[i],
                                    .logprobs = lps,
                                    .n_top = r->top_logprobs,
                                    .top_ids = top_ids,
                                    .top_logprobs = top_lps};
        rc = dsv4_openai_resp_tokens(resp, &ev, &out);
    }
    struct dsv4_svc_event fin = {.kind = DSV4_SVC_EV_FINISH,
                                 .finish = (enum dsv4_svc_finish)(size % 3),
                                 .prompt_tokens = 3,
                                 .completion_tokens = 6};
    if (!rc)
        rc = dsv4_openai_resp_finish(resp, &fin, &out);
    if (!rc && !out.oom) {
        if (r->stream) {
            check_stream(out.p);
        } else {
            cJSON *j = cJSON_ParseWithLength(out.p, out.len);
            DSV4_ASSERT(j != NULL);
            cJSON_Delete(j);
        }
    }
    dsv4_strbuf_free(&out);
    dsv4_openai_resp_free(resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct dsv4_openai_cfg cfg = {.model = "m", .default_thinking = false};
    for (int kind = 0; kind < 2; kind++) {
        struct dsv4_openai_req *r = NULL;
        struct dsv4_openai_error err;
        int rc = dsv4_openai_parse((enum dsv4_openai_kind)kind, (const char *)data, size, &cfg, &r,
                                   &err);
        if (rc) {
            DSV4_ASSERT(r == NULL);
            DSV4_ASSERT(err.status >= 400 && err.status <= 599 && err.message[0]);
            continue;
        }
        DSV4_ASSERT(dsv4_sample_params_check(&r->sample) == 0);
        DSV4_ASSERT(r->n_stop >= 0 && r->n_stop <= DSV4_SVC_MAX_STOP);
        DSV4_ASSERT((r->prompt != NULL) != (r->ids != NULL));
        DSV4_ASSERT(r->prompt ? r->prompt_len > 0 : r->n_ids > 0);
        DSV4_ASSERT(r->max_tokens >= 0 && r->top_logprobs >= 0 &&
                    r->top_logprobs <= DSV4_SAMPLE_MAX_TOP_LOGPROBS);
        respond(r, data, size);
        dsv4_openai_req_free(r);
    }
    return 0;
}
