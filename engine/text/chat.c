/*
 * chat.c - DeepSeek-V4 prompt rendering and completion parsing (see chat.h
 * and spec/model.md section 6.2).
 *
 * Encoding runs in three steps, as the official encoder does: (1) `tool`
 * messages are merged into user turns made of blocks (text and
 * <tool_result>), consecutive user turns are merged too, and tool results
 * are ordered as the calls of the assistant before them; (2) in thinking
 * mode with dropping on, reasoning of assistant turns before the last user
 * turn is removed (and developer turns before it are left out); (3) each
 * message renders to text, then a suffix (<｜Assistant｜> + <think> or
 * </think>, or a task token) is added when the next message is an
 * assistant or latest_reminder turn, or there is none.
 *
 * JSON rendering mirrors Python's json.dumps(ensure_ascii=False): ", " and
 * ": " separators, key order kept, only '"', '\\' and control characters
 * escaped (\n \r \t \b \f, others as lowercase \u00XX).
 */
#include "engine/text/chat.h"
#include "base/dsv4.h"
#include "engine/io/strbuf.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOS            "<｜begin▁of▁sentence｜>"
#define EOS            "<｜end▁of▁sentence｜>"
#define THINK_START    "<think>"
#define THINK_END      "</think>"
#define DSML           "｜DSML｜"
#define USER_TOK       "<｜User｜>"
#define ASSISTANT_TOK  "<｜Assistant｜>"
#define REMINDER_TOK   "<｜latest_reminder｜>"
#define TOOL_CALLS_BEG "\n\n<" DSML "tool_calls"

static const char effort_max_text[] =
        "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
        "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
        "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
        "edge cases, and adversarial scenarios.\n"
        "Explicitly write out your entire deliberation process, documenting every intermediate "
        "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
        "is left unchecked.\n\n";

static const char tools_head[] =
        "## Tools\n\n"
        "You have access to a set of tools to help answer the user's question. You can invoke "
        "tools by writing a \"<" DSML "tool_calls>\" block like the following:\n\n"
        "<" DSML "tool_calls>\n"
        "<" DSML "invoke name=\"$TOOL_NAME\">\n"
        "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML
        "parameter>\n"
        "...\n"
        "</" DSML "invoke>\n"
        "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
        "...\n"
        "</" DSML "invoke>\n"
        "</" DSML "tool_calls>\n\n"
        "String parameters should be specified as is and set `string=\"true\"`. For all other "
        "types (numbers, booleans, arrays, objects), pass the value in JSON format and set "
        "`string=\"false\"`.\n\n"
        "If thinking_mode is enabled (triggered by " THINK_START "), you MUST output your complete "
        "reasoning inside " THINK_START "..." THINK_END " BEFORE any tool calls or final "
        "response.\n\n"
        "Otherwise, output directly after " THINK_END " with tool calls or final response.\n\n"
        "### Available Tool Schemas\n\n";

static const char tools_tail[] =
        "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
        "tool calls.\n";

static const char response_format_head[] =
        "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

static const char *const task_names[] = {"action", "query", "authority",
                                         "domain", "title", "read_url"};
static const char *const task_tokens[] = {"<｜action｜>", "<｜query｜>", "<｜authority｜>",
                                          "<｜domain｜>", "<｜title｜>", "<｜read_url｜>"};

/* ------------------------------------------------------------ JSON as Python */

/* Integral numbers below 2^53 print as ints (see chat.h on why). */
#define INT_BELOW 9007199254740992.0

/* DSV4_ENOMEM (message set) when an append to b ran out of memory, else 0. */
static int sb_status(const struct dsv4_strbuf *b)
{
    return b->oom ? dsv4_error(DSV4_ENOMEM, "chat: out of memory") : 0;
}

static void to_json(struct dsv4_strbuf *b, const cJSON *v)
{
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        bool obj = cJSON_IsObject(v);
        dsv4_strbuf_put(b, obj ? "{" : "[", 1);
        const cJSON *e;
        bool first = true;
        cJSON_ArrayForEach(e, v)
        {
            if (!first)
                dsv4_strbuf_put(b, ", ", 2);
            first = false;
            if (obj) {
                dsv4_strbuf_json_str(b, e->string ? e->string : "", false);
                dsv4_strbuf_put(b, ": ", 2);
            }
            to_json(b, e);
        }
        dsv4_strbuf_put(b, obj ? "}" : "]", 1);
    } else if (cJSON_IsString(v))
        dsv4_strbuf_json_str(b, v->valuestring, false);
    else if (cJSON_IsNumber(v))
        dsv4_strbuf_json_num(b, v->valuedouble, INT_BELOW);
    else if (cJSON_IsTrue(v))
        dsv4_strbuf_str(b, "true");
    else if (cJSON_IsFalse(v))
        dsv4_strbuf_str(b, "false");
    else
        dsv4_strbuf_str(b, "null");
}

/* ------------------------------------------------------------ messages */

enum role { R_SYSTEM, R_DEVELOPER, R_USER, R_ASSISTANT, R_REMINDER, R_TOOL };

struct block {
    bool tool_result;
    const cJSON *content; /* string, or list of {type: text, text} parts */
    const char *tool_id;  /* tool_result */
};

struct msg {
    int role;
    const cJSON *src; /* the message object */
    const cJSON *content;
    const char *reasoning; /* NULL if none (or dropped) */
    const char *task;      /* NULL if none */
    bool wo_eos;
    bool dropped;
    struct block *blocks; /* user turns */
    size_t n_blocks, cap_blocks;
};

static const char *str_field(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Python truthiness of a JSON value (the official encoder tests `if x:`). */
static bool truthy(const cJSON *v)
{
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v))
        return false;
    if (cJSON_IsObject(v) || cJSON_IsArray(v))
        return v->child != NULL;
    if (cJSON_IsString(v))
        return v->valuestring[0] != 0;
    if (cJSON_IsNumber(v))
        return v->valuedouble != 0;
    return true;
}

static bool truthy_list(const cJSON *v)
{
    return cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0;
}

/* Content text: a string, or the text parts of a list joined by `sep`. */
static int content_text(struct dsv4_strbuf *b, const cJSON *c, const char *sep, const char *path)
{
    if (!c || cJSON_IsNull(c))
        return 0;
    if (cJSON_IsString(c)) {
        dsv4_strbuf_str(b, c->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(c))
        return dsv4_error(DSV4_EINVAL, "chat: %s: content must be a string or a list", path);
    const cJSON *part;
    bool first = true;
    cJSON_ArrayForEach(part, c)
    {
        const char *type = str_field(part, "type");
        if (!first)
            dsv4_strbuf_str(b, sep);
        first = false;
        if (type && !strcmp(type, "text") && str_field(part, "text"))
            dsv4_strbuf_str(b, str_field(part, "text"));
        else {
            dsv4_strbuf_str(b, "[Unsupported ");
            dsv4_strbuf_str(b, type ? type : "None");
            dsv4_strbuf_str(b, "]");
        }
    }
    return 0;
}

static int add_block(struct msg *m, struct block blk)
{
    if (m->n_blocks == m->cap_blocks) {
        size_t cap = m->cap_blocks ? 2 * m->cap_blocks : 4;
        struct block *nb = realloc(m->blocks, cap * sizeof(*nb));
        if (!nb)
            return dsv4_error(DSV4_ENOMEM, "chat: out of memory");
        m->blocks = nb;
        m->cap_blocks = cap;
    }
    m->blocks[m->n_blocks++] = blk;
    return 0;
}

static int parse_role(const cJSON *m, size_t i, int *role)
{
    static const char *const names[] = {"system",    "developer",       "user",
                                        "assistant", "latest_reminder", "tool"};
    const char *r = str_field(m, "role");
    for (int k = 0; r && k < (int)DSV4_ARRAY_LEN(names); k++)
        if (!strcmp(r, names[k])) {
            *role = k;
            return 0;
        }
    return dsv4_error(DSV4_EINVAL, "chat: messages[%zu]: unknown role '%s'", i, r ? r : "(none)");
}

/* Step 1: the merged message list. */
static int merge_messages(const cJSON *messages, struct msg **out, size_t *n_out)
{
    size_t n = (size_t)cJSON_GetArraySize(messages), k = 0;
    struct msg *ms = calloc(n + 1, sizeof(*ms));
    if (!ms)
        return dsv4_error(DSV4_ENOMEM, "chat: out of memory");
    const cJSON *m;
    size_t i = 0;
    int rc = 0;
    cJSON_ArrayForEach(m, messages)
    {
        int role = 0;
        if (!cJSON_IsObject(m)) {
            rc = dsv4_error(DSV4_EINVAL, "chat: messages[%zu] is not an object", i);
            goto fail;
        }
        if ((rc = parse_role(m, i, &role)))
            goto fail;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const char *task = str_field(m, "task");
        if (task) {
            size_t t = 0;
            while (t < DSV4_ARRAY_LEN(task_names) && strcmp(task, task_names[t]))
                t++;
            if (t == DSV4_ARRAY_LEN(task_names)) {
                rc = dsv4_error(DSV4_EINVAL, "chat: messages[%zu]: invalid task '%s'", i, task);
                goto fail;
            }
        }
        struct msg *last = k ? &ms[k - 1] : NULL;
        if (role == R_TOOL) {
            struct block blk = {true, content, str_field(m, "tool_call_id")};
            if (!(last && last->role == R_USER)) {
                last = &ms[k++];
                last->role = R_USER;
                last->src = m;
            }
            if ((rc = add_block(last, blk)))
                goto fail;
        } else if (role == R_USER) {
            struct block blk = {false, content, NULL};
            if (!(last && last->role == R_USER && !last->task)) {
                last = &ms[k++];
                last->role = R_USER;
                last->src = m;
                last->content = content;
                last->task = task;
                last->wo_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "wo_eos"));
            }
            if ((rc = add_block(last, blk)))
                goto fail;
        } else {
            struct msg *x = &ms[k++];
            x->role = role;
            x->src = m;
            x->content = content;
            x->task = task;
            x->wo_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "wo_eos"));
            x->reasoning = str_field(m, "reasoning_content");
            if (!x->reasoning)
                x->reasoning = str_field(m, "reasoning");
        }
        i++;
    }
    /* Tool results in the order of the calls of the assistant before. */
    const cJSON *calls = NULL;
    for (size_t j = 0; j < k; j++) {
        if (ms[j].role == R_ASSISTANT &&
            truthy_list(cJSON_GetObjectItemCaseSensitive(ms[j].src, "tool_calls")))
            calls = cJSON_GetObjectItemCaseSensitive(ms[j].src, "tool_calls");
        if (ms[j].role != R_USER || !calls)
            continue;
        size_t nt = 0;
        for (size_t b = 0; b < ms[j].n_blocks; b++)
            nt += ms[j].blocks[b].tool_result;
        if (nt < 2)
            continue;
        /* order key of a result: index of its id among the calls, else 0 */
        int keys[256];
        struct block tb[256];
        if (nt > 256) {
            rc = dsv4_error(DSV4_EINVAL, "chat: more than 256 tool results in one turn");
            goto fail;
        }
        size_t t = 0;
        for (size_t b = 0; b < ms[j].n_blocks; b++) {
            if (!ms[j].blocks[b].tool_result)
                continue;
            int key = 0, ci = 0;
            const cJSON *c;
            cJSON_ArrayForEach(c, calls)
            {
                const char *id = str_field(c, "id");
                if (!id)
                    id = str_field(cJSON_GetObjectItemCaseSensitive(c, "function"), "id");
                const char *want = ms[j].blocks[b].tool_id;
                if (id && id[0] && want && !strcmp(id, want)) {
                    key = ci; /* the last call with that id wins, as a dict would */
                }
                ci++;
            }
            /* stable insertion */
            size_t p = t;
            while (p > 0 && keys[p - 1] > key) {
                keys[p] = keys[p - 1];
                tb[p] = tb[p - 1];
                p--;
            }
            keys[p] = key;
            tb[p] = ms[j].blocks[b];
            t++;
        }
        t = 0;
        for (size_t b = 0; b < ms[j].n_blocks; b++)
            if (ms[j].blocks[b].tool_result)
                ms[j].blocks[b] = tb[t++];
    }
    *out = ms;
    *n_out = k;
    return 0;
fail:
    for (size_t j = 0; j < k; j++)
        free(ms[j].blocks);
    free(ms);
    return rc;
}

static int render_tools(struct dsv4_strbuf *b, const cJSON *tools, size_t mi)
{
    dsv4_strbuf_str(b, tools_head);
    const cJSON *t;
    bool first = true;
    cJSON_ArrayForEach(t, tools)
    {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(fn))
            return dsv4_error(DSV4_EINVAL, "chat: messages[%zu].tools: a tool without 'function'",
                              mi);
        if (!first)
            dsv4_strbuf_str(b, "\n");
        first = false;
        to_json(b, fn);
    }
    dsv4_strbuf_str(b, tools_tail);
    return 0;
}

static void render_extras(struct dsv4_strbuf *b, const struct msg *m, size_t mi, int *rc)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(m->src, "tools");
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(m->src, "response_format");
    if (truthy_list(tools)) {
        dsv4_strbuf_str(b, "\n\n");
        if ((*rc = render_tools(b, tools, mi)))
            return;
    }
    if (truthy(rf)) {
        dsv4_strbuf_str(b, "\n\n");
        dsv4_strbuf_str(b, response_format_head);
        to_json(b, rf);
    }
}

static int render_tool_calls(struct dsv4_strbuf *b, const cJSON *calls, size_t mi)
{
    dsv4_strbuf_str(b, "\n\n<" DSML "tool_calls>\n");
    const cJSON *c;
    size_t ci = 0;
    cJSON_ArrayForEach(c, calls)
    {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const char *name = str_field(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        if (!name)
            return dsv4_error(DSV4_EINVAL, "chat: messages[%zu].tool_calls[%zu]: no function name",
                              mi, ci);
        cJSON *parsed = NULL;
        if (cJSON_IsString(args)) {
            parsed = cJSON_Parse(args->valuestring);
            args = parsed;
        }
        if (!cJSON_IsObject(args)) {
            cJSON_Delete(parsed);
            return dsv4_error(
                    DSV4_EINVAL,
                    "chat: messages[%zu].tool_calls[%zu]: arguments are not a JSON object", mi, ci);
        }
        if (ci)
            dsv4_strbuf_str(b, "\n");
        dsv4_strbuf_str(b, "<" DSML "invoke name=\"");
        dsv4_strbuf_str(b, name);
        dsv4_strbuf_str(b, "\">\n");
        const cJSON *a;
        bool first = true;
        cJSON_ArrayForEach(a, args)
        {
            if (!first)
                dsv4_strbuf_str(b, "\n");
            first = false;
            dsv4_strbuf_str(b, "<" DSML "parameter name=\"");
            dsv4_strbuf_str(b, a->string);
            dsv4_strbuf_str(b, cJSON_IsString(a) ? "\" string=\"true\">" : "\" string=\"false\">");
            if (cJSON_IsString(a))
                dsv4_strbuf_str(b, a->valuestring);
            else
                to_json(b, a);
            dsv4_strbuf_str(b, "</" DSML "parameter>");
        }
        dsv4_strbuf_str(b, "\n</" DSML "invoke>");
        cJSON_Delete(parsed);
        ci++;
    }
    dsv4_strbuf_str(b, "\n</" DSML "tool_calls>");
    return 0;
}

static int render_message(struct dsv4_strbuf *b, const struct msg *ms, size_t n, size_t idx,
                          const struct dsv4_chat_opts *o, bool drop, long last_user)
{
    const struct msg *m = &ms[idx];
    bool thinking = o->mode == DSV4_CHAT_MODE_THINKING;
    int rc = 0;
    if (idx == 0 && thinking && o->effort == DSV4_CHAT_EFFORT_MAX)
        dsv4_strbuf_str(b, effort_max_text);
    switch (m->role) {
    case R_SYSTEM:
        if ((rc = content_text(b, m->content, "\n", "system content")))
            return rc;
        render_extras(b, m, idx, &rc);
        break;
    case R_DEVELOPER: {
        struct dsv4_strbuf c = {0};
        if ((rc = content_text(&c, m->content, "\n", "developer content")) || c.len == 0) {
            free(c.p);
            return rc ? rc : dsv4_error(DSV4_EINVAL, "chat: a developer message needs content");
        }
        dsv4_strbuf_str(b, USER_TOK);
        dsv4_strbuf_put(b, c.p, c.len);
        free(c.p);
        render_extras(b, m, idx, &rc);
        break;
    }
    case R_USER:
        dsv4_strbuf_str(b, USER_TOK);
        for (size_t k = 0; k < m->n_blocks; k++) {
            if (k)
                dsv4_strbuf_str(b, "\n\n");
            if (m->blocks[k].tool_result)
                dsv4_strbuf_str(b, "<tool_result>");
            if ((rc = content_text(b, m->blocks[k].content,
                                   m->blocks[k].tool_result ? "\n\n" : "\n", "user content")))
                return rc;
            if (m->blocks[k].tool_result)
                dsv4_strbuf_str(b, "</tool_result>");
        }
        break;
    case R_REMINDER:
        dsv4_strbuf_str(b, REMINDER_TOK);
        if ((rc = content_text(b, m->content, "\n", "latest_reminder content")))
            return rc;
        break;
    case R_ASSISTANT: {
        bool prev_task = idx > 0 && ms[idx - 1].task;
        if (thinking && !prev_task && (!drop || (long)idx > last_user)) {
            dsv4_strbuf_str(b, m->reasoning && !m->dropped ? m->reasoning : "");
            dsv4_strbuf_str(b, THINK_END);
        }
        if ((rc = content_text(b, m->content, "\n", "assistant content")))
            return rc;
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m->src, "tool_calls");
        if (truthy_list(calls) && (rc = render_tool_calls(b, calls, idx)))
            return rc;
        if (!m->wo_eos)
            dsv4_strbuf_str(b, EOS);
        break;
    }
    default:
        DSV4_ASSERT(0);
    }
    if (rc)
        return rc;
    if (idx + 1 < n && ms[idx + 1].role != R_ASSISTANT && ms[idx + 1].role != R_REMINDER)
        return 0;
    if (m->task) {
        size_t t = 0;
        while (strcmp(m->task, task_names[t]))
            t++;
        if (t != 0)
            dsv4_strbuf_str(b, task_tokens[t]);
        else {
            dsv4_strbuf_str(b, ASSISTANT_TOK);
            dsv4_strbuf_str(b, thinking ? THINK_START : THINK_END);
            dsv4_strbuf_str(b, task_tokens[t]);
        }
    } else if (m->role == R_USER || m->role == R_DEVELOPER) {
        dsv4_strbuf_str(b, ASSISTANT_TOK);
        dsv4_strbuf_str(b, thinking && (!drop || (long)idx >= last_user) ? THINK_START : THINK_END);
    }
    return 0;
}

static long last_user_index(const struct msg *ms, size_t n)
{
    for (size_t i = n; i-- > 0;)
        if (ms[i].role == R_USER || ms[i].role == R_DEVELOPER)
            return (long)i;
    return -1;
}

int dsv4_chat_encode(const cJSON *messages, const cJSON *tools, const struct dsv4_chat_opts *o,
                     char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    if (!cJSON_IsArray(messages))
        return dsv4_error(DSV4_EINVAL, "chat: messages must be an array");
    if (o->mode != DSV4_CHAT_MODE_CHAT && o->mode != DSV4_CHAT_MODE_THINKING)
        return dsv4_error(DSV4_EINVAL, "chat: invalid thinking mode %d", o->mode);
    if (o->effort < DSV4_CHAT_EFFORT_NONE || o->effort > DSV4_CHAT_EFFORT_MAX)
        return dsv4_error(DSV4_EINVAL, "chat: invalid reasoning effort %d", o->effort);
    cJSON *copy = NULL;
    if (tools && !cJSON_IsNull(tools) && cJSON_GetArraySize(messages) > 0) {
        if (!cJSON_IsArray(tools))
            return dsv4_error(DSV4_EINVAL, "chat: tools must be an array");
        copy = cJSON_Duplicate(messages, 1);
        cJSON *t = copy ? cJSON_Duplicate(tools, 1) : NULL;
        cJSON *first = copy ? cJSON_GetArrayItem(copy, 0) : NULL;
        if (!t || !cJSON_IsObject(first)) {
            cJSON_Delete(t);
            cJSON_Delete(copy);
            return copy ? dsv4_error(DSV4_EINVAL, "chat: messages[0] is not an object")
                        : dsv4_error(DSV4_ENOMEM, "chat: out of memory");
        }
        cJSON_DeleteItemFromObjectCaseSensitive(first, "tools");
        cJSON_AddItemToObject(first, "tools", t);
        messages = copy;
    }
    struct msg *ms = NULL;
    size_t n = 0;
    struct dsv4_strbuf b = {0};
    int rc = merge_messages(messages, &ms, &n);
    if (rc)
        goto done;
    bool drop = !o->keep_thinking;
    for (size_t i = 0; i < n; i++)
        if (truthy_list(cJSON_GetObjectItemCaseSensitive(ms[i].src, "tools")))
            drop = false;
    if (o->mode == DSV4_CHAT_MODE_THINKING && drop) {
        long lu = last_user_index(ms, n);
        size_t w = 0;
        for (size_t i = 0; i < n; i++) {
            int r = ms[i].role;
            if (r == R_USER || r == R_SYSTEM || r == R_REMINDER || (long)i >= lu)
                ms[w++] = ms[i];
            else if (r == R_ASSISTANT) {
                ms[w] = ms[i];
                ms[w++].dropped = true;
            } else
                free(ms[i].blocks);
        }
        n = w;
    }
    if (!o->no_bos)
        dsv4_strbuf_str(&b, BOS);
    long lu = last_user_index(ms, n);
    for (size_t i = 0; i < n && !rc; i++)
        rc = render_message(&b, ms, n, i, o, o->mode == DSV4_CHAT_MODE_THINKING && drop, lu);
    if (!rc)
        rc = sb_status(&b);
    if (!rc && !b.p)
        dsv4_strbuf_put(&b, "", 0);
    rc = rc ? rc : sb_status(&b);
done:
    for (size_t i = 0; i < n; i++)
        free(ms[i].blocks);
    free(ms);
    cJSON_Delete(copy);
    if (rc) {
        free(b.p);
        return rc;
    }
    *text = b.p;
    *len = b.len;
    return 0;
}

int dsv4_chat_encode_json(const char *json, size_t json_len, const struct dsv4_chat_opts *o,
                          char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    if (!root)
        return dsv4_error(DSV4_EINVAL, "chat: input is not valid JSON");
    const cJSON *messages = root, *tools = NULL;
    if (cJSON_IsObject(root)) {
        messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
        tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    }
    int rc = dsv4_chat_encode(messages, tools, o, text, len);
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------ parsing */

enum phase { P_REASONING, P_CONTENT, P_TOOLS, P_AFTER_TOOLS, P_DONE, P_ERROR };

struct call {
    char *name, *args;
};

struct dsv4_chat_parser {
    int mode, phase;
    struct dsv4_strbuf reasoning, content, pend;
    size_t scanned; /* bytes of pend known to hold no invoke end tag */
    struct call *calls;
    size_t n_calls, cap_calls;
};

int dsv4_chat_parser_new(int mode, struct dsv4_chat_parser **out)
{
    *out = NULL;
    if (mode != DSV4_CHAT_MODE_CHAT && mode != DSV4_CHAT_MODE_THINKING)
        return dsv4_error(DSV4_EINVAL, "chat parse: invalid mode %d", mode);
    struct dsv4_chat_parser *p = calloc(1, sizeof(*p));
    if (!p)
        return dsv4_error(DSV4_ENOMEM, "chat parse: out of memory");
    p->mode = mode;
    p->phase = mode == DSV4_CHAT_MODE_THINKING ? P_REASONING : P_CONTENT;
    dsv4_strbuf_put(&p->reasoning, "", 0);
    dsv4_strbuf_put(&p->content, "", 0);
    dsv4_strbuf_put(&p->pend, "", 0);
    if (p->reasoning.oom || p->content.oom || p->pend.oom) {
        dsv4_chat_parser_free(p);
        return dsv4_error(DSV4_ENOMEM, "chat: out of memory");
    }
    *out = p;
    return 0;
}

void dsv4_chat_parser_free(struct dsv4_chat_parser *p)
{
    if (!p)
        return;
    free(p->reasoning.p);
    free(p->content.p);
    free(p->pend.p);
    for (size_t i = 0; i < p->n_calls; i++) {
        free(p->calls[i].name);
        free(p->calls[i].args);
    }
    free(p->calls);
    free(p);
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of one
 * of the markers: text that must wait for more input. */
static size_t held_suffix(const char *s, size_t n, const char *const *markers, size_t nm)
{
    size_t best = 0;
    for (size_t k = 0; k < nm; k++) {
        size_t ml = strlen(markers[k]);
        for (size_t l = DSV4_MIN(n, ml - 1); l > best; l--)
            if (!memcmp(s + n - l, markers[k], l)) {
                best = l;
                break;
            }
    }
    return best;
}

/* Earliest occurrence of any marker: its position and index, or false. */
static bool find_marker(const char *s, size_t n, const char *const *markers, size_t nm, size_t *pos,
                        size_t *which)
{
    bool found = false;
    for (size_t k = 0; k < nm; k++) {
        const char *q = memmem(s, n, markers[k], strlen(markers[k]));
        if (q && (!found || (size_t)(q - s) < *pos)) {
            *pos = (size_t)(q - s);
            *which = k;
            found = true;
        }
    }
    return found;
}

static void pend_consume(struct dsv4_chat_parser *p, size_t n)
{
    memmove(p->pend.p, p->pend.p + n, p->pend.len - n + 1);
    p->pend.len -= n;
}

static int parse_fail(struct dsv4_chat_parser *p, const char *what)
{
    p->phase = P_ERROR;
    return dsv4_error(DSV4_EFORMAT, "chat parse: %s", what);
}

static size_t skip_newlines(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (s[i] == '\n' || s[i] == ' ' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

/* Parses one complete invoke element at the start of s (after optional
 * whitespace).  Returns 1 and the bytes used, 0 if more input is needed,
 * or an error status. */
static int parse_invoke(struct dsv4_chat_parser *p, const char *s, size_t n, size_t *used)
{
    static const char open[] = "<" DSML "invoke name=\"";
    static const char close[] = "</" DSML "invoke>";
    static const char popen[] = "<" DSML "parameter name=\"";
    static const char pclose[] = "</" DSML "parameter>";
    size_t i = skip_newlines(s, n);
    if (n - i < sizeof(open) - 1)
        return memcmp(s + i, open, n - i) ? parse_fail(p, "expected an invoke element") : 0;
    if (memcmp(s + i, open, sizeof(open) - 1))
        return parse_fail(p, "expected an invoke element");
    /* Resume the search where the last feed stopped: a long parameter
     * streamed in small pieces stays linear. */
    size_t from = DSV4_MAX(i, p->scanned > sizeof(close) ? p->scanned - sizeof(close) : 0);
    const char *end = memmem(s + from, n - from, close, sizeof(close) - 1);
    if (!end) {
        p->scanned = n;
        return 0;
    }
    p->scanned = 0;
    size_t stop = (size_t)(end - s);
    i += sizeof(open) - 1;
    const char *q = memchr(s + i, '"', stop - i);
    if (!q || q + 1 >= s + stop || q[1] != '>')
        return parse_fail(p, "malformed invoke name");
    struct dsv4_strbuf name = {0}, args = {0};
    dsv4_strbuf_put(&name, s + i, (size_t)(q - (s + i)));
    i = (size_t)(q - s) + 2;
    dsv4_strbuf_str(&args, "{");
    bool first = true;
    int rc = 0;
    for (;;) {
        i += skip_newlines(s + i, stop - i);
        if (i == stop)
            break;
        if (stop - i < sizeof(popen) - 1 || memcmp(s + i, popen, sizeof(popen) - 1)) {
            rc = parse_fail(p, "expected a parameter element");
            break;
        }
        i += sizeof(popen) - 1;
        const char *kq = memchr(s + i, '"', stop - i);
        static const char str_attr[] = " string=\"";
        if (!kq || (size_t)(s + stop - kq) < sizeof(str_attr) + 6 ||
            memcmp(kq + 1, str_attr, sizeof(str_attr) - 1)) {
            rc = parse_fail(p, "malformed parameter element");
            break;
        }
        const char *attr = kq + sizeof(str_attr);
        bool is_str;
        if (!strncmp(attr, "true\">", 6))
            is_str = true;
        else if (!strncmp(attr, "false\">", 7))
            is_str = false;
        else {
            rc = parse_fail(p, "parameter string attribute is neither true nor false");
            break;
        }
        const char *val = attr + (is_str ? 6 : 7);
        const char *vend = memmem(val, (size_t)(s + stop - val), pclose, sizeof(pclose) - 1);
        if (!vend) {
            rc = parse_fail(p, "unterminated parameter element");
            break;
        }
        if (!first)
            dsv4_strbuf_str(&args, ", ");
        first = false;
        struct dsv4_strbuf tmp = {0};
        dsv4_strbuf_put(&tmp, s + i, (size_t)(kq - (s + i)));
        dsv4_strbuf_json_str(&args, tmp.p ? tmp.p : "", false);
        dsv4_strbuf_str(&args, ": ");
        free(tmp.p);
        if (is_str) {
            struct dsv4_strbuf v = {0};
            dsv4_strbuf_put(&v, val, (size_t)(vend - val));
            dsv4_strbuf_json_str(&args, v.p ? v.p : "", false);
            free(v.p);
        } else
            dsv4_strbuf_put(&args, val, (size_t)(vend - val));
        i = (size_t)(vend - s) + sizeof(pclose) - 1;
    }
    dsv4_strbuf_str(&args, "}");
    if (!rc && (name.oom || args.oom))
        rc = dsv4_error(DSV4_ENOMEM, "chat: out of memory");
    if (!rc && p->n_calls == p->cap_calls) {
        size_t cap = p->cap_calls ? 2 * p->cap_calls : 4;
        struct call *nc = realloc(p->calls, cap * sizeof(*nc));
        if (!nc)
            rc = dsv4_error(DSV4_ENOMEM, "chat parse: out of memory");
        else {
            p->calls = nc;
            p->cap_calls = cap;
        }
    }
    if (rc) {
        free(name.p);
        free(args.p);
        return rc;
    }
    if (!name.p)
        dsv4_strbuf_put(&name, "", 0);
    p->calls[p->n_calls++] = (struct call){name.p, args.p};
    *used = stop + sizeof(close) - 1;
    return 1;
}

/* Runs the state machine over the pending text as far as it can go. */
static int parser_step(struct dsv4_chat_parser *p, bool final)
{
    static const char *const reasoning_stops[] = {THINK_END, EOS};
    static const char *const content_stops[] = {EOS, TOOL_CALLS_BEG ">"};
    static const char tools_end[] = "</" DSML "tool_calls>";
    for (;;) {
        char *s = p->pend.p;
        size_t n = p->pend.len, pos = 0, which = 0;
        switch (p->phase) {
        case P_REASONING:
        case P_CONTENT: {
            bool r = p->phase == P_REASONING;
            const char *const *stops = r ? reasoning_stops : content_stops;
            struct dsv4_strbuf *dst = r ? &p->reasoning : &p->content;
            if (find_marker(s, n, stops, 2, &pos, &which)) {
                dsv4_strbuf_put(dst, s, pos);
                pend_consume(p, pos + strlen(stops[which]));
                if (!strcmp(stops[which], EOS))
                    p->phase = P_DONE;
                else
                    p->phase = r ? P_CONTENT : P_TOOLS;
                continue;
            }
            size_t hold = final ? 0 : held_suffix(s, n, stops, 2);
            dsv4_strbuf_put(dst, s, n - hold);
            pend_consume(p, n - hold);
            return sb_status(dst);
        }
        case P_TOOLS: {
            size_t i = skip_newlines(s, n);
            if (n - i >= sizeof(tools_end) - 1 &&
                !memcmp(s + i, tools_end, sizeof(tools_end) - 1)) {
                pend_consume(p, i + sizeof(tools_end) - 1);
                p->phase = P_AFTER_TOOLS;
                continue;
            }
            if (n - i < sizeof(tools_end) - 1 && !memcmp(s + i, tools_end, n - i) && i < n) {
                if (final)
                    return parse_fail(p, "unterminated tool_calls block");
                return 0;
            }
            size_t used = 0;
            int rc = parse_invoke(p, s, n, &used);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                if (final)
                    return parse_fail(p, "unterminated tool call");
                return 0;
            }
            pend_consume(p, used);
            continue;
        }
        case P_AFTER_TOOLS: {
            size_t i = skip_newlines(s, n);
            size_t el = strlen(EOS);
            if (n - i >= el) {
                if (memcmp(s + i, EOS, el))
                    return parse_fail(p, "unexpected text after the tool calls");
                pend_consume(p, i + el);
                p->phase = P_DONE;
                continue;
            }
            if (memcmp(s + i, EOS, n - i))
                return parse_fail(p, "unexpected text after the tool calls");
            if (final)
                pend_consume(p, n); /* the stream ended without EOS: fine */
            return 0;
        }
        case P_DONE:
            /* Text after EOS is not part of the message. */
            pend_consume(p, n);
            return 0;
        default:
            return dsv4_error(DSV4_EFORMAT, "chat parse: parser is in the error state");
        }
    }
}

int dsv4_chat_parser_feed(struct dsv4_chat_parser *p, const char *text, size_t len)
{
    if (p->phase == P_ERROR)
        return dsv4_error(DSV4_EFORMAT, "chat parse: parser is in the error state");
    dsv4_strbuf_put(&p->pend, text, len);
    if (p->pend.oom)
        return sb_status(&p->pend);
    return parser_step(p, false);
}

int dsv4_chat_parser_finish(struct dsv4_chat_parser *p)
{
    if (p->phase == P_ERROR)
        return dsv4_error(DSV4_EFORMAT, "chat parse: parser is in the error state");
    return parser_step(p, true);
}

const char *dsv4_chat_parser_reasoning(const struct dsv4_chat_parser *p, size_t *len)
{
    if (len)
        *len = p->reasoning.len;
    return p->reasoning.p;
}

const char *dsv4_chat_parser_content(const struct dsv4_chat_parser *p, size_t *len)
{
    if (len)
        *len = p->content.len;
    return p->content.p;
}

size_t dsv4_chat_parser_n_calls(const struct dsv4_chat_parser *p)
{
    return p->n_calls;
}

void dsv4_chat_parser_call(const struct dsv4_chat_parser *p, size_t i, const char **name,
                           const char **arguments)
{
    DSV4_ASSERT(i < p->n_calls);
    *name = p->calls[i].name;
    *arguments = p->calls[i].args;
}

bool dsv4_chat_parser_done(const struct dsv4_chat_parser *p)
{
    return p->phase == P_DONE;
}

int dsv4_chat_parse(const char *text, size_t len, int mode, cJSON **message)
{
    *message = NULL;
    struct dsv4_chat_parser *p;
    int rc = dsv4_chat_parser_new(mode, &p);
    if (rc)
        return rc;
    if ((rc = dsv4_chat_parser_feed(p, text, len)) || (rc = dsv4_chat_parser_finish(p))) {
        dsv4_chat_parser_free(p);
        return rc;
    }
    cJSON *m = cJSON_CreateObject();
    cJSON *calls = m ? cJSON_CreateArray() : NULL;
    bool ok = calls && cJSON_AddStringToObject(m, "role", "assistant") &&
              (mode != DSV4_CHAT_MODE_THINKING ||
               cJSON_AddStringToObject(m, "reasoning_content", p->reasoning.p)) &&
              cJSON_AddStringToObject(m, "content", p->content.p);
    if (ok) {
        cJSON_AddItemToObject(m, "tool_calls", calls);
        calls = NULL;
    }
    for (size_t i = 0; ok && i < p->n_calls; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON *fn = cJSON_CreateObject();
        ok = c && fn && cJSON_AddStringToObject(c, "type", "function") &&
             cJSON_AddStringToObject(fn, "name", p->calls[i].name) &&
             cJSON_AddStringToObject(fn, "arguments", p->calls[i].args);
        if (ok) {
            cJSON_AddItemToObject(c, "function", fn);
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), c);
        } else {
            cJSON_Delete(c);
            cJSON_Delete(fn);
        }
    }
    cJSON_Delete(calls);
    dsv4_chat_parser_free(p);
    if (!ok) {
        cJSON_Delete(m);
        return dsv4_error(DSV4_ENOMEM, "chat parse: out of memory");
    }
    *message = m;
    return 0;
}
