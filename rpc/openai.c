/*
 * openai.c - parsing and validation of the OpenAI-compatible requests
 * (rpc/openai.h), error bodies and the model list.  The responses are in
 * openai_resp.c.
 *
 * Every field is checked for its type and range before use: the body
 * comes from the network.  The body must be UTF-8 (RFC 8259) and one JSON
 * object; cJSON bounds the nesting depth, so deep input cannot exhaust the
 * stack.  A refusal names the field (`param`) and says what was expected.
 * Options this server cannot honour (n > 1, logit_bias, a forced tool
 * choice, structured output) are refused rather than silently ignored;
 * fields it does not know are ignored.
 */
#include "rpc/openai.h"
#include "rpc/openai_int.h"

#include "base/dsv4.h"
#include "engine/text/chat.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ errors */

static int fail(struct dsv4_openai_error *e, int http_status, const char *param, const char *code,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int fail(struct dsv4_openai_error *e, int http_status, const char *param, const char *code,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    e->status = http_status;
    e->param = param;
    e->code = code;
    return dsv4_error(http_status == 404 ? DSV4_ENOENT : DSV4_EINVAL, "%s", e->message);
}

int dsv4_openai_status(int status, bool retryable)
{
    switch (status) {
    case DSV4_EINVAL:
    case DSV4_ERANGE:
    case DSV4_EFORMAT:
        return 400;
    case DSV4_ENOENT:
        return 404;
    case DSV4_ENOSPC:
        return 429;
    case DSV4_ENOTSUP:
        return 503;
    default:
        return retryable ? 503 : 500;
    }
}

static const char *error_type(int http_status)
{
    switch (http_status) {
    case 400:
    case 405:
    case 411:
    case 413:
    case 431:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 408:
        return "timeout_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable_error";
    default:
        return http_status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *dsv4_openai_utf8_clean(const char *s, size_t n)
{
    char *o = malloc(3 * n + 1);
    size_t k = 0;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = 0;
        unsigned cp = 0;
        if (c < 0x80)
            len = 1, cp = c;
        else if (c >= 0xc2 && c <= 0xdf)
            len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07;
        bool ok = len > 0 && i + len <= n;
        for (size_t j = 1; ok && j < len; j++) {
            unsigned char d = (unsigned char)s[i + j];
            ok = (d & 0xc0) == 0x80;
            cp = (cp << 6) | (d & 0x3f);
        }
        if (ok && ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                   (len == 4 && (cp < 0x10000 || cp > 0x10ffff))))
            ok = false;
        if (!ok) {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
            continue;
        }
        if (c != 0) {
            memcpy(o + k, s + i, len);
            k += len;
        }
        i += len;
    }
    o[k] = 0;
    return o;
}

static bool utf8_valid(const char *s, size_t n)
{
    char *c = dsv4_openai_utf8_clean(s, n);
    bool ok = c && strlen(c) == n && !memcmp(c, s, n);
    free(c);
    return ok;
}

void dsv4_openai_error_body(struct dsv4_strbuf *out, int http_status, const char *message,
                            const char *param, const char *code)
{
    char *msg = dsv4_openai_utf8_clean(message ? message : "", message ? strlen(message) : 0);
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg ? msg : "error");
    cJSON_AddStringToObject(e, "type", error_type(http_status));
    if (param)
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNumberToObject(e, "code", http_status);
    char *text = cJSON_PrintUnformatted(root);
    if (text)
        dsv4_strbuf_str(out, text);
    else
        dsv4_strbuf_str(out, "{\"error\": {\"message\": \"out of memory\", \"type\": "
                             "\"server_error\", \"param\": null, \"code\": 500}}");
    free(text);
    free(msg);
    cJSON_Delete(root);
}

void dsv4_openai_models_body(struct dsv4_strbuf *out, const char *model, int64_t created,
                             int64_t max_context)
{
    char *name = dsv4_openai_utf8_clean(model, strlen(model));
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", name ? name : "");
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "dsv4d");
    cJSON_AddStringToObject(m, "root", name ? name : "");
    cJSON_AddNullToObject(m, "parent");
    cJSON_AddNumberToObject(m, "max_model_len", (double)max_context);
    char *text = cJSON_PrintUnformatted(root);
    dsv4_strbuf_str(out, text ? text : "{\"object\": \"list\", \"data\": []}");
    free(text);
    free(name);
    cJSON_Delete(root);
}

/* ------------------------------------------------------------ typed fields */

static const cJSON *field(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A number in [lo, hi]; 0 and *given false when absent or null. */
static int get_num(const cJSON *o, const char *key, double lo, double hi, double *v, bool *given,
                   struct dsv4_openai_error *e)
{
    const cJSON *f = field(o, key);
    if (given)
        *given = f != NULL;
    if (!f)
        return 0;
    if (!cJSON_IsNumber(f))
        return fail(e, 400, key, "invalid_type", "'%s' must be a number", key);
    if (!isfinite(f->valuedouble) || f->valuedouble < lo || f->valuedouble > hi)
        return fail(e, 400, key, "invalid_value", "'%s' = %g is outside [%g, %g]", key,
                    f->valuedouble, lo, hi);
    *v = f->valuedouble;
    return 0;
}

static int get_int(const cJSON *o, const char *key, double lo, double hi, int64_t *v, bool *given,
                   struct dsv4_openai_error *e)
{
    double d = 0;
    bool g = false;
    int rc = get_num(o, key, lo, hi, &d, &g, e);
    if (given)
        *given = g;
    if (rc || !g)
        return rc;
    if (d != floor(d))
        return fail(e, 400, key, "invalid_type", "'%s' must be an integer", key);
    *v = (int64_t)d;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, bool *v, struct dsv4_openai_error *e)
{
    const cJSON *f = field(o, key);
    if (!f)
        return 0;
    if (!cJSON_IsBool(f))
        return fail(e, 400, key, "invalid_type", "'%s' must be true or false", key);
    *v = cJSON_IsTrue(f);
    return 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* ------------------------------------------------------------ common fields */

static int parse_stop_ids(const cJSON *root, struct dsv4_openai_req *r,
                          struct dsv4_openai_error *e);

static int parse_stop(const cJSON *root, struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    const cJSON *s = field(root, "stop");
    if (!s)
        return parse_stop_ids(root, r, e);
    const cJSON *one[1] = {s};
    size_t n = 1;
    if (cJSON_IsArray(s))
        n = (size_t)cJSON_GetArraySize(s);
    else if (!cJSON_IsString(s))
        return fail(e, 400, "stop", "invalid_type", "'stop' must be a string or a list of strings");
    if (n > DSV4_SVC_MAX_STOP)
        return fail(e, 400, "stop", "invalid_value", "'stop' has %zu strings; at most %d", n,
                    DSV4_SVC_MAX_STOP);
    const cJSON *item = cJSON_IsArray(s) ? s->child : one[0];
    for (size_t i = 0; i < n && item; i++, item = item->next) {
        if (!cJSON_IsString(item))
            return fail(e, 400, "stop", "invalid_type",
                        "'stop' must be a string or a list of strings");
        size_t len = strlen(item->valuestring);
        if (len == 0)
            continue;
        if (len > DSV4_OPENAI_MAX_STOP_LEN)
            return fail(e, 400, "stop", "invalid_value", "a stop string has %zu bytes; at most %d",
                        len, DSV4_OPENAI_MAX_STOP_LEN);
        if (!(r->stop[r->n_stop] = dup_n(item->valuestring, len)))
            return fail(e, 500, NULL, NULL, "out of memory");
        r->n_stop++;
    }
    return parse_stop_ids(root, r, e);
}

static int parse_stop_ids(const cJSON *root, struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    const cJSON *ids = field(root, "stop_token_ids");
    if (!ids)
        return 0;
    if (!cJSON_IsArray(ids))
        return fail(e, 400, "stop_token_ids", "invalid_type", "'stop_token_ids' must be a list");
    int k = cJSON_GetArraySize(ids);
    if (k > DSV4_OPENAI_MAX_STOP_IDS)
        return fail(e, 400, "stop_token_ids", "invalid_value", "at most %d stop_token_ids",
                    DSV4_OPENAI_MAX_STOP_IDS);
    if (k == 0)
        return 0;
    if (!(r->stop_ids = malloc((size_t)k * sizeof(int32_t))))
        return fail(e, 500, NULL, NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, ids)
    {
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0 && it->valuedouble <= INT32_MAX) ||
            it->valuedouble != floor(it->valuedouble))
            return fail(e, 400, "stop_token_ids", "invalid_value",
                        "stop_token_ids must be token ids (integers >= 0)");
        r->stop_ids[r->n_stop_ids++] = (int32_t)it->valuedouble;
    }
    return 0;
}

/* Refuses what cannot be honoured: n/best_of > 1, logit_bias, min_tokens. */
static int parse_unsupported(const cJSON *root, struct dsv4_openai_error *e)
{
    int64_t v = 1;
    bool g;
    int rc;
    if ((rc = get_int(root, "n", 1, 1e9, &v, &g, e)))
        return rc;
    if (g && v != 1)
        return fail(e, 400, "n", "unsupported_value",
                    "n = %lld: only one choice per request is supported (send several requests)",
                    (long long)v);
    if ((rc = get_int(root, "best_of", 1, 1e9, &v, &g, e)))
        return rc;
    if (g && v != 1)
        return fail(e, 400, "best_of", "unsupported_value", "best_of > 1 is not supported");
    const cJSON *lb = field(root, "logit_bias");
    if (lb && !(cJSON_IsObject(lb) && !lb->child))
        return fail(e, 400, "logit_bias", "unsupported_value", "logit_bias is not supported");
    if ((rc = get_int(root, "min_tokens", 0, 1e9, &v, &g, e)))
        return rc;
    if (g && v != 0)
        return fail(e, 400, "min_tokens", "unsupported_value", "min_tokens is not supported");
    bool incl = false;
    if ((rc = get_bool(root, "include_stop_str_in_output", &incl, e)))
        return rc;
    if (incl)
        return fail(e, 400, "include_stop_str_in_output", "unsupported_value",
                    "include_stop_str_in_output is not supported");
    return 0;
}

static int parse_sampling(const cJSON *root, struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    struct dsv4_sample_params *s = &r->sample;
    double d;
    int64_t i;
    bool g;
    int rc;
    if ((rc = get_num(root, "temperature", 0, 1e6, &d, &g, e)))
        return rc;
    if (g)
        s->temperature = (float)d;
    if ((rc = get_num(root, "top_p", 0, 1, &d, &g, e)))
        return rc;
    if (g) {
        if (!(d > 0))
            return fail(e, 400, "top_p", "invalid_value", "'top_p' must be in (0, 1]");
        s->top_p = (float)d;
    }
    if ((rc = get_int(root, "top_k", -1, INT32_MAX, &i, &g, e)))
        return rc;
    if (g)
        s->top_k = i < 0 ? 0 : (int32_t)i;
    if ((rc = get_num(root, "min_p", 0, 1, &d, &g, e)))
        return rc;
    if (g)
        s->min_p = (float)d;
    if ((rc = get_num(root, "presence_penalty", -2, 2, &d, &g, e)))
        return rc;
    if (g)
        s->presence_penalty = (float)d;
    if ((rc = get_num(root, "frequency_penalty", -2, 2, &d, &g, e)))
        return rc;
    if (g)
        s->frequency_penalty = (float)d;
    if ((rc = get_num(root, "repetition_penalty", 0, 1e6, &d, &g, e)))
        return rc;
    if (g) {
        if (!(d > 0))
            return fail(e, 400, "repetition_penalty", "invalid_value",
                        "'repetition_penalty' must be > 0");
        s->repetition_penalty = (float)d;
    }
    /* Any 64-bit integer, signed or not; the service reads it as unsigned. */
    if ((rc = get_num(root, "seed", -9223372036854775808.0, 18446744073709549568.0, &d, &g, e)))
        return rc;
    if (g) {
        if (d != floor(d))
            return fail(e, 400, "seed", "invalid_type", "'seed' must be an integer");
        s->seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
        r->seed_given = true;
    }
    if ((rc = get_bool(root, "ignore_eos", &r->ignore_eos, e)))
        return rc;
    if ((rc = get_int(root, "priority", 0, 1, &i, &g, e)))
        return rc;
    if (g)
        r->priority = (int)i;
    if ((rc = get_bool(root, "stream", &r->stream, e)))
        return rc;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so))
            return fail(e, 400, "stream_options", "invalid_type",
                        "'stream_options' must be an object");
        if ((rc = get_bool(so, "include_usage", &r->include_usage, e)))
            return rc;
    }
    return 0;
}

static int parse_max_tokens(const cJSON *root, const char *key, struct dsv4_openai_req *r,
                            struct dsv4_openai_error *e)
{
    int64_t v = 0;
    bool g = false;
    const cJSON *f = field(root, key);
    if (f && cJSON_IsNumber(f) && isfinite(f->valuedouble) && f->valuedouble < 1)
        return fail(e, 400, key, "invalid_value", "'%s' must be at least 1", key);
    int rc = get_int(root, key, 1, INT32_MAX, &v, &g, e);
    if (!rc && g)
        r->max_tokens = (int32_t)v;
    return rc;
}

/* ------------------------------------------------------------ completions */

static int ids_of(const cJSON *a, struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    int n = cJSON_GetArraySize(a);
    if (n == 0)
        return fail(e, 400, "prompt", "invalid_value", "the prompt is empty");
    if (!(r->ids = malloc((size_t)n * sizeof(int32_t))))
        return fail(e, 500, NULL, NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0 && it->valuedouble <= INT32_MAX) ||
            it->valuedouble != floor(it->valuedouble))
            return fail(e, 400, "prompt", "invalid_value",
                        "prompt token ids must be integers >= 0");
        r->ids[r->n_ids++] = (int32_t)it->valuedouble;
    }
    return 0;
}

static int parse_prompt(const cJSON *root, struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    const cJSON *p = field(root, "prompt");
    if (!p)
        return fail(e, 400, "prompt", "missing_required_parameter", "'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 &&
        (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child;
    if (cJSON_IsString(p)) {
        size_t n = strlen(p->valuestring);
        if (n == 0)
            return fail(e, 400, "prompt", "invalid_value", "the prompt is empty");
        if (!(r->prompt = dup_n(p->valuestring, n)))
            return fail(e, 500, NULL, NULL, "out of memory");
        r->prompt_len = n;
        return 0;
    }
    if (cJSON_IsArray(p)) {
        if (p->child && !cJSON_IsNumber(p->child))
            return fail(e, 400, "prompt", "unsupported_value",
                        "one prompt per request is supported (a string or a list of token ids)");
        return ids_of(p, r, e);
    }
    return fail(e, 400, "prompt", "invalid_type",
                "'prompt' must be a string or a list of token ids");
}

static int parse_completion(const cJSON *root, struct dsv4_openai_req *r,
                            struct dsv4_openai_error *e)
{
    int rc;
    if ((rc = parse_prompt(root, r, e)) || (rc = parse_max_tokens(root, "max_tokens", r, e)))
        return rc;
    int64_t lp = 0;
    bool g = false;
    if ((rc = get_int(root, "logprobs", 0, DSV4_SAMPLE_MAX_TOP_LOGPROBS, &lp, &g, e)))
        return rc;
    if (g) {
        r->logprobs = true;
        r->top_logprobs = (int)lp;
    }
    if ((rc = get_bool(root, "echo", &r->echo, e)))
        return rc;
    if (r->echo && r->logprobs)
        return fail(e, 400, "echo", "unsupported_value",
                    "echo with logprobs is not supported (prompt logprobs are not computed)");
    r->skip_special = true;
    if ((rc = get_bool(root, "skip_special_tokens", &r->skip_special, e)))
        return rc;
    const cJSON *suffix = field(root, "suffix");
    if (suffix && !(cJSON_IsString(suffix) && !suffix->valuestring[0]))
        return fail(e, 400, "suffix", "unsupported_value", "'suffix' is not supported");
    return 0;
}

/* ------------------------------------------------------------ chat */

static int parse_effort(const char *s, int *effort, bool *off, struct dsv4_openai_error *e)
{
    static const char *const high[] = {"minimal", "low", "medium", "high"};
    *off = false;
    if (!strcmp(s, "none")) {
        *off = true;
        *effort = DSV4_CHAT_EFFORT_NONE;
        return 0;
    }
    if (!strcmp(s, "max") || !strcmp(s, "xhigh")) {
        *effort = DSV4_CHAT_EFFORT_MAX;
        return 0;
    }
    for (size_t i = 0; i < DSV4_ARRAY_LEN(high); i++)
        if (!strcmp(s, high[i])) {
            *effort = DSV4_CHAT_EFFORT_HIGH;
            return 0;
        }
    return fail(e, 400, "reasoning_effort", "invalid_value",
                "'reasoning_effort' must be one of none, minimal, low, medium, high, xhigh, max");
}

/* Thinking mode and effort from chat_template_kwargs, thinking, reasoning_effort. */
static int parse_thinking(const cJSON *root, const struct dsv4_openai_cfg *cfg,
                          struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    bool thinking = cfg && cfg->default_thinking, chosen = false;
    const cJSON *kw = field(root, "chat_template_kwargs");
    int rc;
    if (kw && !cJSON_IsObject(kw))
        return fail(e, 400, "chat_template_kwargs", "invalid_type",
                    "'chat_template_kwargs' must be an object");
    const char *keys[2] = {"thinking", "enable_thinking"};
    for (int k = 0; kw && k < 2 && !chosen; k++) {
        if (field(kw, keys[k])) {
            if ((rc = get_bool(kw, keys[k], &thinking, e)))
                return rc;
            chosen = true;
        }
    }
    const cJSON *t = field(root, "thinking");
    if (t && !chosen) {
        const cJSON *type = cJSON_IsObject(t) ? field(t, "type") : NULL;
        if (cJSON_IsBool(t))
            thinking = cJSON_IsTrue(t);
        else if (cJSON_IsString(type) &&
                 (!strcmp(type->valuestring, "enabled") || !strcmp(type->valuestring, "disabled")))
            thinking = !strcmp(type->valuestring, "enabled");
        else
            return fail(e, 400, "thinking", "invalid_value",
                        "'thinking' must be {\"type\": \"enabled\"|\"disabled\"} or a boolean");
        chosen = true;
    }
    const cJSON *eff = field(root, "reasoning_effort");
    if (!eff && kw)
        eff = field(kw, "reasoning_effort");
    r->effort = DSV4_CHAT_EFFORT_NONE;
    if (eff) {
        if (!cJSON_IsString(eff))
            return fail(e, 400, "reasoning_effort", "invalid_type",
                        "'reasoning_effort' must be a string");
        bool off;
        if ((rc = parse_effort(eff->valuestring, &r->effort, &off, e)))
            return rc;
        if (!chosen)
            thinking = !off;
    }
    r->chat_mode = thinking ? DSV4_CHAT_MODE_THINKING : DSV4_CHAT_MODE_CHAT;
    return 0;
}

/* The tools to render, or NULL (none given, or tool_choice "none"). */
static int parse_tools(const cJSON *root, const cJSON **tools, struct dsv4_openai_error *e)
{
    *tools = NULL;
    const cJSON *t = field(root, "tools");
    const cJSON *choice = field(root, "tool_choice");
    bool none = false;
    if (choice) {
        if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none"))
            none = true;
        else if (!(cJSON_IsString(choice) && !strcmp(choice->valuestring, "auto")))
            return fail(e, 400, "tool_choice", "unsupported_value",
                        "tool_choice must be \"auto\" or \"none\" (forcing a tool call is not "
                        "supported)");
    }
    if (!t)
        return 0;
    if (!cJSON_IsArray(t))
        return fail(e, 400, "tools", "invalid_type", "'tools' must be a list");
    const cJSON *it;
    cJSON_ArrayForEach(it, t)
    {
        const cJSON *type = cJSON_IsObject(it) ? field(it, "type") : NULL;
        const cJSON *fn = cJSON_IsObject(it) ? field(it, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? field(fn, "name") : NULL;
        if (!cJSON_IsObject(it) ||
            (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "function"))) ||
            !cJSON_IsObject(fn) || !cJSON_IsString(name) || !name->valuestring[0])
            return fail(
                    e, 400, "tools", "invalid_value",
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    if (!none && t->child)
        *tools = t;
    return 0;
}

static int parse_chat(const cJSON *root, const struct dsv4_openai_cfg *cfg,
                      struct dsv4_openai_req *r, struct dsv4_openai_error *e)
{
    int rc;
    const cJSON *msgs = field(root, "messages");
    if (!msgs)
        return fail(e, 400, "messages", "missing_required_parameter", "'messages' is required");
    if (!cJSON_IsArray(msgs) || !msgs->child)
        return fail(e, 400, "messages", "invalid_value", "'messages' must be a non-empty list");
    if (field(root, "max_completion_tokens"))
        rc = parse_max_tokens(root, "max_completion_tokens", r, e);
    else
        rc = parse_max_tokens(root, "max_tokens", r, e);
    if (rc)
        return rc;
    if ((rc = get_bool(root, "logprobs", &r->logprobs, e)))
        return rc;
    int64_t top = 0;
    bool g = false;
    if ((rc = get_int(root, "top_logprobs", 0, DSV4_SAMPLE_MAX_TOP_LOGPROBS, &top, &g, e)))
        return rc;
    if (g && top > 0 && !r->logprobs)
        return fail(e, 400, "top_logprobs", "invalid_value",
                    "'top_logprobs' needs 'logprobs': true");
    r->top_logprobs = (int)top;
    const cJSON *rf = field(root, "response_format");
    if (rf) {
        const cJSON *type = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text"))
            return fail(e, 400, "response_format", "unsupported_value",
                        "only response_format {\"type\": \"text\"} is supported");
    }
    if ((rc = parse_thinking(root, cfg, r, e)))
        return rc;
    const cJSON *tools;
    if ((rc = parse_tools(root, &tools, e)))
        return rc;
    /* The encoding renders tools in a system turn: give them one when the
     * conversation does not start with it. */
    cJSON *copy = NULL;
    if (tools) {
        const cJSON *role = cJSON_IsObject(msgs->child) ? field(msgs->child, "role") : NULL;
        if (!(cJSON_IsString(role) && !strcmp(role->valuestring, "system"))) {
            copy = cJSON_Duplicate(msgs, 1);
            cJSON *sys = cJSON_CreateObject();
            if (!copy || !sys || !cJSON_AddStringToObject(sys, "role", "system") ||
                !cJSON_AddStringToObject(sys, "content", "")) {
                cJSON_Delete(copy);
                cJSON_Delete(sys);
                return fail(e, 500, NULL, NULL, "out of memory");
            }
            cJSON_InsertItemInArray(copy, 0, sys);
            msgs = copy;
        }
    }
    struct dsv4_chat_opts o = {.mode = r->chat_mode, .effort = r->effort};
    rc = dsv4_chat_encode(msgs, tools, &o, &r->prompt, &r->prompt_len);
    cJSON_Delete(copy);
    if (rc == DSV4_ENOMEM)
        return fail(e, 500, NULL, NULL, "out of memory");
    if (rc)
        return fail(e, 400, "messages", "invalid_value", "%s", dsv4_errmsg());
    /* The parser needs </think> and the end-of-sentence token in the text. */
    r->skip_special = false;
    return 0;
}

/* ------------------------------------------------------------ entry */

int dsv4_openai_parse(enum dsv4_openai_kind kind, const char *body, size_t len,
                      const struct dsv4_openai_cfg *cfg, struct dsv4_openai_req **out,
                      struct dsv4_openai_error *err)
{
    struct dsv4_openai_error scratch;
    struct dsv4_openai_error *e = err ? err : &scratch;
    memset(e, 0, sizeof(*e));
    *out = NULL;
    if (kind != DSV4_OPENAI_COMPLETION && kind != DSV4_OPENAI_CHAT)
        return fail(e, 500, NULL, NULL, "unknown request kind %d", (int)kind);
    if (!body || len == 0)
        return fail(e, 400, NULL, "invalid_json", "the request body is empty");
    if (!utf8_valid(body, len))
        return fail(e, 400, NULL, "invalid_encoding", "the request body is not valid UTF-8");
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root)
        return fail(e, 400, NULL, "invalid_json", "the request body is not valid JSON");
    struct dsv4_openai_req *r = calloc(1, sizeof(*r));
    int rc = 0;
    if (!r) {
        cJSON_Delete(root);
        return fail(e, 500, NULL, NULL, "out of memory");
    }
    r->kind = kind;
    r->sample = dsv4_sample_params_default();
    if (!cJSON_IsObject(root)) {
        rc = fail(e, 400, NULL, "invalid_type", "the request body must be a JSON object");
        goto done;
    }
    const cJSON *model = field(root, "model");
    if (model && !cJSON_IsString(model)) {
        rc = fail(e, 400, "model", "invalid_type", "'model' must be a string");
        goto done;
    }
    if (model && cfg && cfg->model && strcmp(model->valuestring, cfg->model)) {
        char *name = dsv4_openai_utf8_clean(model->valuestring, strlen(model->valuestring));
        rc = fail(e, 404, "model", "model_not_found", "the model '%.200s' does not exist",
                  name ? name : "");
        free(name);
        goto done;
    }
    if ((rc = parse_unsupported(root, e)) || (rc = parse_sampling(root, r, e)) ||
        (rc = parse_stop(root, r, e)))
        goto done;
    rc = kind == DSV4_OPENAI_CHAT ? parse_chat(root, cfg, r, e) : parse_completion(root, r, e);
    if (rc)
        goto done;
    r->sample.logprobs = r->logprobs;
    r->sample.n_top_logprobs = r->logprobs ? r->top_logprobs : 0;
    if (dsv4_sample_params_check(&r->sample))
        rc = fail(e, 400, NULL, "invalid_value", "%s", dsv4_errmsg());
done:
    cJSON_Delete(root);
    if (rc) {
        dsv4_openai_req_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void dsv4_openai_req_free(struct dsv4_openai_req *r)
{
    if (!r)
        return;
    free(r->prompt);
    free(r->ids);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop_ids);
    free(r);
}
