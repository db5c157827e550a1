/*
 * bench_serve_prom.c - reads counters out of a server's Prometheus text
 * exposition for `dsv4 bench serve --mtp-probe` (tools/bench_serve.h).
 *
 * Why sums: the published probe (spec/formats.md §3.2) took the first
 * sample line of each counter, which is wrong once a server exports one
 * series per engine (DP > 1); summing every series of the family is right
 * for one engine and for many.  Names match by suffix after a '_' or ':'
 * so that the same probe reads dsv4d (dsv4_spec_decode_...) and vLLM
 * (vllm:spec_decode_...).
 *
 * Invariants: the text is untrusted; a line that does not parse as
 * `name[{label="value",...}] value [timestamp]` is skipped, never read past
 * its end.  Label values are compared after unescaping (\\ \" \n).
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}

static bool name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9');
}

static bool name_matches(const char *s, size_t n, const char *want)
{
    size_t w = strlen(want);
    if (n == w)
        return !memcmp(s, want, n);
    return n > w && !memcmp(s + n - w, want, w) && (s[n - w - 1] == '_' || s[n - w - 1] == ':');
}

struct sample {
    const char *name;
    size_t name_len;
    const char *labels; /* after '{', or NULL */
    size_t labels_len;  /* up to the closing '}' */
    double value;
};

/* Parses one line [s, e); false when it is no sample. */
static bool parse_sample(const char *s, const char *e, struct sample *out)
{
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    if (s >= e || !name_start(*s))
        return false;
    out->name = s;
    while (s < e && name_char(*s))
        s++;
    out->name_len = (size_t)(s - out->name);
    out->labels = NULL;
    out->labels_len = 0;
    if (s < e && *s == '{') {
        out->labels = ++s;
        bool in_str = false;
        while (s < e && (in_str || *s != '}')) {
            if (in_str && *s == '\\' && s + 1 < e)
                s++;
            else if (*s == '"')
                in_str = !in_str;
            s++;
        }
        if (s >= e)
            return false;
        out->labels_len = (size_t)(s - out->labels);
        s++;
    }
    if (s >= e || (*s != ' ' && *s != '\t'))
        return false;
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    char num[64];
    size_t k = 0;
    while (s < e && *s != ' ' && *s != '\t' && k + 1 < sizeof(num))
        num[k++] = *s++;
    num[k] = 0;
    if (!k)
        return false;
    char *end;
    double v = strtod(num, &end);
    if (*end)
        return false;
    out->value = v;
    return true;
}

/* The value of label `label` in a sample's label text, unescaped into buf. */
static bool label_value(const struct sample *sm, const char *label, char *buf, size_t size)
{
    const char *s = sm->labels, *e = sm->labels + sm->labels_len;
    size_t ln = strlen(label);
    while (s && s < e) {
        while (s < e && (*s == ' ' || *s == ','))
            s++;
        const char *n0 = s;
        while (s < e && name_char(*s))
            s++;
        size_t nn = (size_t)(s - n0);
        while (s < e && *s == ' ')
            s++;
        if (s >= e || *s != '=')
            return false;
        s++;
        while (s < e && *s == ' ')
            s++;
        if (s >= e || *s != '"')
            return false;
        s++;
        size_t k = 0;
        bool want = nn == ln && !memcmp(n0, label, ln);
        while (s < e && *s != '"') {
            char c = *s++;
            if (c == '\\' && s < e) {
                c = *s++;
                if (c == 'n')
                    c = '\n';
            }
            if (want && k + 1 < size)
                buf[k++] = c;
        }
        if (s >= e)
            return false;
        s++;
        if (want) {
            buf[k] = 0;
            return true;
        }
    }
    return false;
}

/* Calls fn for every sample of `name`. */
static void each_sample(const char *text, const char *name,
                        void (*fn)(void *ctx, const struct sample *sm), void *ctx)
{
    const char *s = text ? text : "";
    while (*s) {
        const char *e = strchr(s, '\n');
        if (!e)
            e = s + strlen(s);
        const char *le = e;
        if (le > s && le[-1] == '\r')
            le--;
        struct sample sm;
        if (*s != '#' && parse_sample(s, le, &sm) && name_matches(sm.name, sm.name_len, name))
            fn(ctx, &sm);
        s = *e ? e + 1 : e;
    }
}

struct sum_ctx {
    const char *label, *value;
    double sum;
    bool found;
};

static void sum_fn(void *ctx, const struct sample *sm)
{
    struct sum_ctx *c = ctx;
    if (c->label) {
        char v[256];
        if (!label_value(sm, c->label, v, sizeof(v)) || strcmp(v, c->value))
            return;
    }
    if (!isfinite(sm->value))
        return;
    c->sum += sm->value;
    c->found = true;
}

double dsv4_bench_prom_sum(const char *text, const char *name, const char *label, const char *value,
                           bool *found)
{
    struct sum_ctx c = {label, value, 0, false};
    each_sample(text, name, sum_fn, &c);
    if (found)
        *found = c.found;
    return c.sum;
}

struct max_ctx {
    const char *label;
    int max;
};

static void max_fn(void *ctx, const struct sample *sm)
{
    struct max_ctx *c = ctx;
    char v[32];
    if (!label_value(sm, c->label, v, sizeof(v)) || !v[0] || strspn(v, "0123456789") != strlen(v) ||
        strlen(v) > 6)
        return;
    int x = atoi(v);
    if (x > c->max)
        c->max = x;
}

int dsv4_bench_prom_max_label(const char *text, const char *name, const char *label)
{
    struct max_ctx c = {label, -1};
    each_sample(text, name, max_fn, &c);
    return c.max;
}

#define PREFIX "spec_decode_num_"

void dsv4_bench_spec_read(const char *text, struct dsv4_bench_spec *out)
{
    memset(out, 0, sizeof(*out));
    bool f_acc, f_tok;
    out->accepted = dsv4_bench_prom_sum(text, PREFIX "accepted_tokens_total", NULL, NULL, &f_acc);
    out->draft_tokens = dsv4_bench_prom_sum(text, PREFIX "draft_tokens_total", NULL, NULL, &f_tok);
    out->drafts = dsv4_bench_prom_sum(text, PREFIX "drafts_total", NULL, NULL, &out->has_drafts);
    out->found = f_acc && f_tok;
    int np = DSV4_MAX(
            dsv4_bench_prom_max_label(text, PREFIX "accepted_tokens_per_pos_total", "position"),
            dsv4_bench_prom_max_label(text, PREFIX "draft_tokens_per_pos_total", "position"));
    out->n_pos = DSV4_MIN(np + 1, DSV4_BENCH_SPEC_POS);
    for (int k = 0; k < out->n_pos; k++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", k);
        bool f;
        out->pos_accepted[k] = dsv4_bench_prom_sum(text, PREFIX "accepted_tokens_per_pos_total",
                                                   "position", v, &f);
        out->pos_drafted[k] =
                dsv4_bench_prom_sum(text, PREFIX "draft_tokens_per_pos_total", "position", v, &f);
        out->has_pos_drafted |= f;
    }
}
