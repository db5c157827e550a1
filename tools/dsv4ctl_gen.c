/*
 * dsv4ctl_gen.c - `dsv4ctl generate` and `dsv4ctl chat`: one Generate
 * stream each (tools/dsv4ctl.h for the shared parts).
 *
 * generate sends a text prompt (the server tokenizes it, special tokens
 * recognised) or token ids, and writes the text to stdout as chunks arrive.
 * chat renders a one-turn conversation with the DeepSeek-V4 chat encoding
 * (engine/text/chat.h) here, on the client, sends the prompt text, and
 * parses the completion with the incremental chat parser: content (and,
 * with --thinking, the reasoning before it, under "[reasoning]" and
 * "[answer]" marks) is written as it grows.  The parser needs </think> and
 * the end-of-sentence token in the text, so chat asks the server not to
 * skip special tokens.  A completion that breaks the DSML tool-call grammar
 * (random weights make anything possible) is written raw from there on.
 *
 * With --json nothing streams: one object at the end with the text, token
 * ids, finish reason and usage (and logprobs, reasoning, content, tool
 * calls where they apply).  A summary line (finish, token counts, time)
 * goes to stderr otherwise.
 */
#include "base/dsv4.h"
#include "engine/io/strbuf.h"
#include "engine/text/chat.h"
#include "proto/dsv4.pb-c.h"
#include "tools/dsv4ctl.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GENERATE_PATH "/dsv4.Engine/Generate"
#define MAX_STOP      16
#define MAX_STOP_IDS  64
#define MAX_TOP       20
#define EOS_TEXT    \
    "<\xef\xbd\x9c" \
    "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

/* ---- the request: options shared by generate and chat */

struct gen_req {
    Dsv4__GenerateRequest q;
    Dsv4__SamplingParams sp;
    Dsv4__TokenizedInput tok;
    char *stop[MAX_STOP];
    uint32_t stop_ids[MAX_STOP_IDS];
};

static void gen_req_init(struct gen_req *g)
{
    memset(g, 0, sizeof(*g));
    dsv4__generate_request__init(&g->q);
    dsv4__sampling_params__init(&g->sp);
    dsv4__tokenized_input__init(&g->tok);
    g->q.sampling_params = &g->sp;
    g->sp.stop = g->stop;
    g->sp.stop_token_ids = g->stop_ids;
}

/* Sampling and request options at argv[*i]: 1 taken, 0 not one of them, 2 usage error. */
static int sampling_opt(struct ctl *x, struct gen_req *g, int argc, char **argv, int *i)
{
    static const char *valued[] = {"--max-tokens",
                                   "--temperature",
                                   "--top-p",
                                   "--top-k",
                                   "--min-p",
                                   "--repetition-penalty",
                                   "--frequency-penalty",
                                   "--presence-penalty",
                                   "--seed",
                                   "--stop",
                                   "--stop-id",
                                   "--logprobs",
                                   "--request-id",
                                   "--priority"};
    const char *a = argv[*i];
    Dsv4__SamplingParams *s = &g->sp;
    int n, rc = 0;
    float f;
    if (!strcmp(a, "--ignore-eos")) {
        s->ignore_eos = true;
        return 1;
    }
    bool known = false;
    for (size_t k = 0; k < DSV4_ARRAY_LEN(valued) && !known; k++)
        known = !strcmp(a, valued[k]);
    if (!known)
        return 0;
    if (*i + 1 >= argc)
        return ctl_usage_error(x, "%s needs a value", a);
    const char *v = argv[*i + 1];
    if (!strcmp(a, "--max-tokens")) {
        if ((rc = ctl_opt_int(x, a, v, 1, INT32_MAX, &n)))
            return rc;
        s->max_new_tokens_opt_case = DSV4__SAMPLING_PARAMS__MAX_NEW_TOKENS_OPT_MAX_NEW_TOKENS;
        s->max_new_tokens = (uint32_t)n;
    } else if (!strcmp(a, "--temperature")) {
        if ((rc = ctl_opt_float(x, a, v, 0, 100, &f)))
            return rc;
        s->temperature_opt_case = DSV4__SAMPLING_PARAMS__TEMPERATURE_OPT_TEMPERATURE;
        s->temperature = f;
    } else if (!strcmp(a, "--top-p")) {
        if ((rc = ctl_opt_float(x, a, v, 0, 1, &f)))
            return rc;
        s->top_p_opt_case = DSV4__SAMPLING_PARAMS__TOP_P_OPT_TOP_P;
        s->top_p = f;
    } else if (!strcmp(a, "--top-k")) {
        if ((rc = ctl_opt_int(x, a, v, 0, INT32_MAX, &n)))
            return rc;
        s->top_k = n;
    } else if (!strcmp(a, "--min-p")) {
        if ((rc = ctl_opt_float(x, a, v, 0, 1, &f)))
            return rc;
        s->min_p = f;
    } else if (!strcmp(a, "--repetition-penalty")) {
        if ((rc = ctl_opt_float(x, a, v, 1e-6, 100, &f)))
            return rc;
        s->repetition_penalty_opt_case =
                DSV4__SAMPLING_PARAMS__REPETITION_PENALTY_OPT_REPETITION_PENALTY;
        s->repetition_penalty = f;
    } else if (!strcmp(a, "--frequency-penalty")) {
        if ((rc = ctl_opt_float(x, a, v, -2, 2, &f)))
            return rc;
        s->frequency_penalty = f;
    } else if (!strcmp(a, "--presence-penalty")) {
        if ((rc = ctl_opt_float(x, a, v, -2, 2, &f)))
            return rc;
        s->presence_penalty = f;
    } else if (!strcmp(a, "--seed")) {
        uint64_t seed;
        if ((rc = ctl_opt_u64(x, a, v, &seed)))
            return rc;
        s->seed_opt_case = DSV4__SAMPLING_PARAMS__SEED_OPT_SEED;
        s->seed = seed;
    } else if (!strcmp(a, "--stop")) {
        if (s->n_stop >= MAX_STOP)
            return ctl_usage_error(x, "at most %d --stop strings", MAX_STOP);
        if (!v[0])
            return ctl_usage_error(x, "--stop needs a non-empty string");
        g->stop[s->n_stop++] = (char *)v;
    } else if (!strcmp(a, "--stop-id")) {
        if (s->n_stop_token_ids >= MAX_STOP_IDS)
            return ctl_usage_error(x, "at most %d --stop-id values", MAX_STOP_IDS);
        if ((rc = ctl_opt_int(x, a, v, 0, INT32_MAX, &n)))
            return rc;
        g->stop_ids[s->n_stop_token_ids++] = (uint32_t)n;
    } else if (!strcmp(a, "--logprobs")) {
        if ((rc = ctl_opt_int(x, a, v, 0, MAX_TOP, &n)))
            return rc;
        g->q.return_logprob = true;
        g->q.top_logprobs_num = n;
    } else if (!strcmp(a, "--request-id")) {
        g->q.request_id = (char *)v;
    } else if (!strcmp(a, "--priority")) {
        if ((rc = ctl_opt_int(x, a, v, 0, 1, &n)))
            return rc;
        g->q.priority = n;
    } else {
        return 0;
    }
    ++*i;
    return 1;
}

/* ---- the stream */

struct gen_run {
    struct ctl *x;
    struct dsv4_strbuf text; /* the whole completion text */
    uint32_t *ids;
    size_t n_ids, cap_ids;
    cJSON *logprobs, *tops; /* arrays, when logprobs were asked for */
    bool complete, bad, oom;
    char finish[16];
    int matched; /* 0 none, 1 token id, 2 stop string */
    uint32_t matched_id;
    char *matched_str;
    uint32_t prompt_tokens, completion_tokens;
    double t0, t_first;
    /* called with each new piece of text (human output) */
    void (*on_text)(struct gen_run *r, const char *s, size_t n);
    void *user;
};

static bool add_ids(struct gen_run *r, const uint32_t *ids, size_t n)
{
    if (r->n_ids + n > r->cap_ids) {
        size_t cap = DSV4_MAX(r->cap_ids * 2, r->n_ids + n + 64);
        uint32_t *p = realloc(r->ids, cap * sizeof(*p));
        if (!p)
            return false;
        r->ids = p;
        r->cap_ids = cap;
    }
    memcpy(r->ids + r->n_ids, ids, n * sizeof(*ids));
    r->n_ids += n;
    return true;
}

static bool add_logprobs(struct gen_run *r, const Dsv4__OutputLogProbs *lp)
{
    if (!r->logprobs && !(r->logprobs = cJSON_CreateArray()))
        return false;
    if (!r->tops && !(r->tops = cJSON_CreateArray()))
        return false;
    for (size_t i = 0; i < lp->n_token_logprobs; i++)
        if (!cJSON_AddItemToArray(r->logprobs, cJSON_CreateNumber(lp->token_logprobs[i])))
            return false;
    for (size_t i = 0; i < lp->n_top_logprobs; i++) {
        const Dsv4__TopLogProbs *t = lp->top_logprobs[i];
        cJSON *arr = cJSON_CreateArray();
        if (!arr || !cJSON_AddItemToArray(r->tops, arr))
            return false;
        for (size_t k = 0; k < t->n_values && k < t->n_token_ids; k++) {
            cJSON *e = cJSON_CreateObject();
            if (!e || !cJSON_AddItemToArray(arr, e) ||
                !cJSON_AddNumberToObject(e, "token_id", t->token_ids[k]) ||
                !cJSON_AddNumberToObject(e, "logprob", t->values[k]))
                return false;
        }
    }
    return true;
}

static int on_response(void *arg, const uint8_t *msg, size_t len)
{
    struct gen_run *r = arg;
    Dsv4__GenerateResponse *m = dsv4__generate_response__unpack(NULL, len, msg);
    if (!m) {
        r->bad = true;
        return 1;
    }
    if (m->response_case == DSV4__GENERATE_RESPONSE__RESPONSE_CHUNK && m->chunk) {
        const Dsv4__GenerateStreamChunk *c = m->chunk;
        if (!r->t_first && c->n_token_ids)
            r->t_first = dsv4_now();
        if (!add_ids(r, c->token_ids, c->n_token_ids) ||
            (c->output_logprobs && !add_logprobs(r, c->output_logprobs)))
            r->oom = true;
        size_t n = strlen(c->text);
        dsv4_strbuf_put(&r->text, c->text, n);
        if (n && r->on_text)
            r->on_text(r, c->text, n);
        r->prompt_tokens = c->prompt_tokens;
        r->completion_tokens = c->completion_tokens;
    } else if (m->response_case == DSV4__GENERATE_RESPONSE__RESPONSE_COMPLETE && m->complete) {
        const Dsv4__GenerateComplete *d = m->complete;
        r->complete = true;
        snprintf(r->finish, sizeof(r->finish), "%s", d->finish_reason);
        if (d->usage) {
            r->prompt_tokens = d->usage->prompt_tokens;
            r->completion_tokens = d->usage->completion_tokens;
        }
        if (d->matched_stop_case == DSV4__GENERATE_COMPLETE__MATCHED_STOP_MATCHED_TOKEN_ID) {
            r->matched = 1;
            r->matched_id = d->matched_token_id;
        } else if (d->matched_stop_case == DSV4__GENERATE_COMPLETE__MATCHED_STOP_MATCHED_STOP_STR) {
            r->matched = 2;
            r->matched_str = strdup(d->matched_stop_str);
        }
    }
    dsv4__generate_response__free_unpacked(m, NULL);
    return r->oom ? 1 : 0;
}

static void gen_run_free(struct gen_run *r)
{
    dsv4_strbuf_free(&r->text);
    free(r->ids);
    free(r->matched_str);
    cJSON_Delete(r->logprobs);
    cJSON_Delete(r->tops);
}

/* Runs the Generate call of g; 0 when it completed, else the exit status after the
 * message. */
static int gen_call(struct ctl *x, struct gen_req *g, struct gen_run *r)
{
    int rc = ctl_connect(x);
    if (rc)
        return rc;
    size_t len;
    uint8_t *buf = ctl_pack(&g->q.base, &len);
    if (!buf)
        return ctl_error(x, "out of memory");
    struct dsv4_gc_status st;
    struct dsv4_gc_call_opts co = ctl_call_opts(x, 0);
    r->x = x;
    r->t0 = dsv4_now();
    rc = dsv4_gc_stream(x->gc, GENERATE_PATH, buf, len, &co, on_response, r, &st);
    free(buf);
    if (r->bad)
        return ctl_error(x, "Generate: the server sent a malformed GenerateResponse");
    if (r->oom || r->text.oom)
        return ctl_error(x, "out of memory");
    if (rc)
        return ctl_status_error(x, &st);
    if (!r->complete)
        return ctl_error(x, "Generate: the stream ended without a Complete message");
    return 0;
}

/* The fields generate and chat share in their JSON result. */
static cJSON *result_json(const struct gen_run *r, const char *request_id)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *ids = cJSON_CreateArray();
    if (!o || !ids) {
        cJSON_Delete(o);
        cJSON_Delete(ids);
        return NULL;
    }
    if (request_id && request_id[0])
        cJSON_AddStringToObject(o, "request_id", request_id);
    cJSON_AddStringToObject(o, "text", r->text.p ? r->text.p : "");
    for (size_t i = 0; i < r->n_ids; i++)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->ids[i]));
    cJSON_AddItemToObject(o, "token_ids", ids);
    cJSON_AddStringToObject(o, "finish_reason", r->finish);
    if (r->matched == 1)
        cJSON_AddNumberToObject(o, "matched_token_id", r->matched_id);
    else if (r->matched == 2)
        cJSON_AddStringToObject(o, "matched_stop_str", r->matched_str ? r->matched_str : "");
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    if (u) {
        cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", r->completion_tokens);
    }
    double now = dsv4_now();
    cJSON_AddNumberToObject(o, "time_s", now - r->t0);
    if (r->t_first)
        cJSON_AddNumberToObject(o, "ttft_s", r->t_first - r->t0);
    return o;
}

static void summary(const struct gen_run *r)
{
    double dt = dsv4_now() - r->t0;
    char why[64] = "";
    if (r->matched == 1)
        snprintf(why, sizeof(why), " (token %u)", r->matched_id);
    else if (r->matched == 2)
        snprintf(why, sizeof(why), " (stop string)");
    fprintf(stderr, "[finish %s%s; %u prompt + %u completion tokens; %.2f s", r->finish, why,
            r->prompt_tokens, r->completion_tokens, dt);
    if (r->t_first && r->completion_tokens > 1 && dt > r->t_first - r->t0)
        fprintf(stderr, ", first token %.3f s, %.1f tok/s", r->t_first - r->t0,
                (r->completion_tokens - 1) / (dt - (r->t_first - r->t0)));
    fprintf(stderr, "]\n");
}

static void print_text(struct gen_run *r, const char *s, size_t n)
{
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

/* ---- generate */

int ctl_cmd_generate(struct ctl *x, int argc, char **argv)
{
    struct gen_req g;
    struct gen_run r = {.x = x};
    const char *text = NULL;
    uint32_t *ids = NULL;
    size_t n_ids = 0;
    bool skip_special = true, opts_done = false;
    int rc = 0;
    gen_req_init(&g);
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int t;
        if (!opts_done && !strcmp(a, "--")) {
            opts_done = true;
        } else if (!opts_done && a[0] == '-' && a[1]) {
            if ((t = ctl_global_opt(x, argc, argv, &i)) != 0) {
                rc = t < 0 ? CTL_EXIT_USAGE : 0;
            } else if ((t = sampling_opt(x, &g, argc, argv, &i)) != 0) {
                rc = t == 1 ? 0 : t;
            } else if (!strcmp(a, "--ids")) {
                if (i + 1 >= argc)
                    rc = ctl_usage_error(x, "--ids needs a list like 1,2,3");
                else if (ids)
                    rc = ctl_usage_error(x, "--ids given twice");
                else
                    rc = ctl_opt_ids(x, a, argv[++i], &ids, &n_ids);
            } else if (!strcmp(a, "--no-skip-special")) {
                skip_special = false;
            } else {
                rc = ctl_usage_error(x, "unknown option '%s'", a);
            }
        } else if (text) {
            rc = ctl_usage_error(x, "one prompt TEXT expected; quote it ('%s' is a second one)", a);
        } else {
            text = a;
        }
    }
    if (!rc && !text == !ids)
        rc = ctl_usage_error(x, "give a prompt TEXT or --ids, not %s", text ? "both" : "neither");
    if (!rc && text && !text[0])
        rc = ctl_usage_error(x, "the prompt is empty");
    if (rc)
        goto done;
    if (text) {
        g.q.prompt_case = DSV4__GENERATE_REQUEST__PROMPT_TEXT;
        g.q.text = (char *)text;
    } else {
        g.q.prompt_case = DSV4__GENERATE_REQUEST__PROMPT_TOKENIZED;
        g.q.tokenized = &g.tok;
        g.tok.input_ids = ids;
        g.tok.n_input_ids = n_ids;
    }
    if (!skip_special) {
        g.sp.skip_special_tokens_opt_case =
                DSV4__SAMPLING_PARAMS__SKIP_SPECIAL_TOKENS_OPT_SKIP_SPECIAL_TOKENS;
        g.sp.skip_special_tokens = false;
    }
    if (!x->json)
        r.on_text = print_text;
    rc = gen_call(x, &g, &r);
    if (!x->json && r.text.len && r.text.p[r.text.len - 1] != '\n')
        putchar('\n');
    fflush(stdout);
    if (rc)
        goto done;
    if (x->json) {
        cJSON *o = result_json(&r, g.q.request_id);
        if (o && r.logprobs) {
            cJSON_AddItemToObject(o, "logprobs", r.logprobs);
            r.logprobs = NULL;
            if (g.q.top_logprobs_num > 0) {
                cJSON_AddItemToObject(o, "top_logprobs", r.tops);
                r.tops = NULL;
            }
        }
        rc = ctl_print_json(o);
    } else {
        if (r.logprobs) {
            /* one line per token: id, logprob, then the top alternatives */
            printf("logprobs:\n");
            for (size_t i = 0; i < r.n_ids; i++) {
                cJSON *lp = cJSON_GetArrayItem(r.logprobs, (int)i);
                printf("  %u %.4f", r.ids[i], lp ? lp->valuedouble : 0.0);
                cJSON *tops = g.q.top_logprobs_num > 0 ? cJSON_GetArrayItem(r.tops, (int)i) : NULL;
                cJSON *e;
                cJSON_ArrayForEach(e, tops)
                {
                    printf(" %d:%.4f", cJSON_GetObjectItem(e, "token_id")->valueint,
                           cJSON_GetObjectItem(e, "logprob")->valuedouble);
                }
                printf("\n");
            }
        }
        summary(&r);
    }
done:
    gen_run_free(&r);
    free(ids);
    return rc;
}

/* ---- chat */

struct chat_view {
    struct dsv4_chat_parser *p;
    bool thinking, raw, json;
    size_t sent_reasoning, sent_content;
    bool reasoning_mark, answer_mark, at_line_start;
    struct dsv4_strbuf raw_text; /* completion text after the grammar broke */
};

static void out(struct chat_view *v, const char *s, size_t n)
{
    if (!n)
        return;
    fwrite(s, 1, n, stdout);
    v->at_line_start = s[n - 1] == '\n';
}

static void mark(struct chat_view *v, const char *m)
{
    if (!v->at_line_start)
        out(v, "\n", 1);
    out(v, m, strlen(m));
}

/* Writes what the parser added since the last call (human output). */
static void chat_show(struct chat_view *v)
{
    size_t n;
    const char *s = dsv4_chat_parser_reasoning(v->p, &n);
    if (v->thinking && n > v->sent_reasoning) {
        if (!v->reasoning_mark) {
            mark(v, "[reasoning]\n");
            v->reasoning_mark = true;
        }
        out(v, s + v->sent_reasoning, n - v->sent_reasoning);
    }
    v->sent_reasoning = n;
    s = dsv4_chat_parser_content(v->p, &n);
    if (n > v->sent_content) {
        if (v->thinking && !v->answer_mark) {
            mark(v, "[answer]\n");
            v->answer_mark = true;
        }
        out(v, s + v->sent_content, n - v->sent_content);
    }
    v->sent_content = n;
    fflush(stdout);
}

/* Text after the grammar broke, less the end-of-sentence token and what follows it. */
static void raw_piece(struct chat_view *v, const char *s, size_t n)
{
    size_t before = v->raw_text.len;
    dsv4_strbuf_put(&v->raw_text, s, n);
    if (!v->raw_text.p)
        return;
    char *eos = strstr(v->raw_text.p, EOS_TEXT);
    if (eos) {
        v->raw_text.len = (size_t)(eos - v->raw_text.p);
        v->raw_text.p[v->raw_text.len] = 0;
    }
    if (!v->json && v->raw_text.len > before) {
        if (v->thinking && !v->answer_mark) {
            mark(v, "[answer]\n");
            v->answer_mark = true;
        }
        out(v, v->raw_text.p + before, v->raw_text.len - before);
        fflush(stdout);
    }
}

static void chat_text(struct gen_run *r, const char *s, size_t n)
{
    struct chat_view *v = r->user;
    if (!v->raw) {
        int rc = dsv4_chat_parser_feed(v->p, s, n);
        if (rc == DSV4_EFORMAT) {
            v->raw = true;
            fprintf(stderr,
                    "dsv4ctl: the completion breaks the DSML grammar (%s); the rest "
                    "is written as it is\n",
                    dsv4_errmsg());
        } else if (rc) {
            r->oom = true;
            return;
        }
        if (!v->json)
            chat_show(v);
        return;
    }
    raw_piece(v, s, n);
}

static int chat_encode(struct ctl *x, const char *system, const char *message,
                       const struct dsv4_chat_opts *o, char **prompt)
{
    cJSON *msgs = cJSON_CreateArray();
    size_t len;
    if (system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
    }
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(msgs, m);
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", message);
    int rc = dsv4_chat_encode(msgs, NULL, o, prompt, &len);
    cJSON_Delete(msgs);
    if (rc)
        return ctl_error(x, "chat encoding: %s", dsv4_errmsg());
    return 0;
}

int ctl_cmd_chat(struct ctl *x, int argc, char **argv)
{
    struct gen_req g;
    struct gen_run r = {.x = x};
    struct chat_view v = {.at_line_start = true};
    const char *message = NULL, *system = NULL;
    struct dsv4_chat_opts o = {.mode = DSV4_CHAT_MODE_CHAT};
    bool show_prompt = false, opts_done = false;
    char *prompt = NULL;
    int rc = 0;
    gen_req_init(&g);
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int t;
        if (!opts_done && !strcmp(a, "--")) {
            opts_done = true;
        } else if (!opts_done && a[0] == '-' && a[1]) {
            if ((t = ctl_global_opt(x, argc, argv, &i)) != 0) {
                rc = t < 0 ? CTL_EXIT_USAGE : 0;
            } else if ((t = sampling_opt(x, &g, argc, argv, &i)) != 0) {
                rc = t == 1 ? 0 : t;
            } else if (!strcmp(a, "--system")) {
                if (i + 1 >= argc)
                    rc = ctl_usage_error(x, "--system needs a text");
                else
                    system = argv[++i];
            } else if (!strcmp(a, "--thinking")) {
                o.mode = DSV4_CHAT_MODE_THINKING;
            } else if (!strcmp(a, "--effort")) {
                const char *e = i + 1 < argc ? argv[++i] : "";
                if (!strcmp(e, "max"))
                    o.effort = DSV4_CHAT_EFFORT_MAX;
                else if (!strcmp(e, "high"))
                    o.effort = DSV4_CHAT_EFFORT_HIGH;
                else if (!strcmp(e, "none"))
                    o.effort = DSV4_CHAT_EFFORT_NONE;
                else
                    rc = ctl_usage_error(x, "--effort '%s' is not none, high or max", e);
            } else if (!strcmp(a, "--show-prompt")) {
                show_prompt = true;
            } else {
                rc = ctl_usage_error(x, "unknown option '%s'", a);
            }
        } else if (message) {
            rc = ctl_usage_error(x, "one MESSAGE expected; quote it ('%s' is a second one)", a);
        } else {
            message = a;
        }
    }
    if (!rc && !message)
        rc = ctl_usage_error(x, "a MESSAGE is required");
    if (!rc && o.effort == DSV4_CHAT_EFFORT_MAX && o.mode != DSV4_CHAT_MODE_THINKING)
        rc = ctl_usage_error(x, "--effort max needs --thinking");
    if (rc)
        goto done;
    if ((rc = chat_encode(x, system, message, &o, &prompt)))
        goto done;
    if (show_prompt)
        fprintf(stderr, "[prompt]\n%s\n", prompt);
    if (dsv4_chat_parser_new(o.mode, &v.p)) {
        rc = ctl_error(x, "chat parser: %s", dsv4_errmsg());
        goto done;
    }
    v.thinking = o.mode == DSV4_CHAT_MODE_THINKING;
    v.json = x->json;
    g.q.prompt_case = DSV4__GENERATE_REQUEST__PROMPT_TEXT;
    g.q.text = prompt;
    g.sp.skip_special_tokens_opt_case =
            DSV4__SAMPLING_PARAMS__SKIP_SPECIAL_TOKENS_OPT_SKIP_SPECIAL_TOKENS;
    g.sp.skip_special_tokens = false;
    r.on_text = chat_text;
    r.user = &v;
    rc = gen_call(x, &g, &r);
    if (rc && !v.at_line_start)
        putchar('\n');
    if (rc)
        goto done;
    if (!v.raw) {
        if (dsv4_chat_parser_finish(v.p) == DSV4_EFORMAT) {
            v.raw = true;
            fprintf(stderr, "dsv4ctl: the completion ends inside a tool call (%s)\n",
                    dsv4_errmsg());
        }
        if (!x->json)
            chat_show(&v);
    }
    size_t nc = dsv4_chat_parser_n_calls(v.p);
    if (x->json) {
        cJSON *res = result_json(&r, g.q.request_id);
        size_t n;
        const char *content = dsv4_chat_parser_content(v.p, &n);
        struct dsv4_strbuf all;
        dsv4_strbuf_init(&all);
        dsv4_strbuf_put(&all, content, n);
        if (v.raw_text.len)
            dsv4_strbuf_put(&all, v.raw_text.p, v.raw_text.len);
        if (res && v.thinking)
            cJSON_AddStringToObject(res, "reasoning", dsv4_chat_parser_reasoning(v.p, &n));
        if (res)
            cJSON_AddStringToObject(res, "content", all.p ? all.p : "");
        dsv4_strbuf_free(&all);
        cJSON *calls = res ? cJSON_AddArrayToObject(res, "tool_calls") : NULL;
        for (size_t i = 0; calls && i < nc; i++) {
            const char *name, *args;
            dsv4_chat_parser_call(v.p, i, &name, &args);
            cJSON *c = cJSON_CreateObject();
            cJSON_AddItemToArray(calls, c);
            cJSON_AddStringToObject(c, "name", name);
            cJSON_AddStringToObject(c, "arguments", args);
        }
        if (res && show_prompt)
            cJSON_AddStringToObject(res, "prompt", prompt);
        rc = ctl_print_json(res);
    } else {
        for (size_t i = 0; i < nc; i++) {
            const char *name, *args;
            dsv4_chat_parser_call(v.p, i, &name, &args);
            mark(&v, "[tool call] ");
            printf("%s %s\n", name, args);
            v.at_line_start = true;
        }
        if (!v.at_line_start)
            putchar('\n');
        fflush(stdout);
        summary(&r);
    }
done:
    dsv4_chat_parser_free(v.p);
    dsv4_strbuf_free(&v.raw_text);
    gen_run_free(&r);
    free(prompt);
    return rc;
}
