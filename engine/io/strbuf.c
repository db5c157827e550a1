/*
 * strbuf.c - growable string builder and JSON writers (see strbuf.h).
 * Growth doubles the capacity from 4096 bytes; the text stays NUL-terminated.
 */
#include "dsv4-build.h"
#include "engine/io/strbuf.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dsv4_strbuf_init(struct dsv4_strbuf *b)
{
    memset(b, 0, sizeof(*b));
}

void dsv4_strbuf_free(struct dsv4_strbuf *b)
{
    free(b->p);
    dsv4_strbuf_init(b);
}

/* Makes room for n more bytes plus the NUL; false (and oom) on failure. */
static bool reserve(struct dsv4_strbuf *b, size_t n)
{
    size_t nc;
    char *p;

    if (b->oom)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    if (n > SIZE_MAX / 4 - b->len) {
        b->oom = true;
        return false;
    }
    nc = b->cap ? b->cap : 4096;
    while (nc < b->len + n + 1)
        nc *= 2;
    p = realloc(b->p, nc);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = nc;
    return true;
}

void dsv4_strbuf_put(struct dsv4_strbuf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void dsv4_strbuf_str(struct dsv4_strbuf *b, const char *s)
{
    dsv4_strbuf_put(b, s, strlen(s));
}

void dsv4_strbuf_fmt(struct dsv4_strbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if (!reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void dsv4_strbuf_json_str(struct dsv4_strbuf *b, const char *s, bool ascii)
{
    const uint8_t *u = (const uint8_t *)s;

    dsv4_strbuf_put(b, "\"", 1);
    while (*u) {
        uint8_t c = *u;
        const char *named = c == '"'    ? "\\\""
                            : c == '\\' ? "\\\\"
                            : c == '\b' ? "\\b"
                            : c == '\f' ? "\\f"
                            : c == '\n' ? "\\n"
                            : c == '\r' ? "\\r"
                            : c == '\t' ? "\\t"
                                        : NULL;
        if (named) {
            dsv4_strbuf_str(b, named);
            u++;
        } else if (c < 0x20 || (ascii && c == 0x7f)) {
            dsv4_strbuf_fmt(b, "\\u%04x", c);
            u++;
        } else if (c < 0x80 || !ascii) {
            dsv4_strbuf_put(b, (const char *)u, 1);
            u++;
        } else {
            int k = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
            uint32_t cp = c & (k == 1 ? 0x1f : k == 2 ? 0x0f : 0x07);
            int j;
            for (j = 1; j <= k && (u[j] & 0xc0) == 0x80; j++)
                cp = (cp << 6) | (u[j] & 0x3f);
            if (k == 0 || j <= k) { /* malformed: escape the lead byte alone */
                dsv4_strbuf_fmt(b, "\\u%04x", c);
                u++;
                continue;
            }
            u += k + 1;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                dsv4_strbuf_fmt(b, "\\u%04x\\u%04x", (unsigned)(0xd800 + (cp >> 10)),
                                (unsigned)(0xdc00 + (cp & 0x3ff)));
            } else {
                dsv4_strbuf_fmt(b, "\\u%04x", (unsigned)cp);
            }
        }
    }
    dsv4_strbuf_put(b, "\"", 1);
}

void dsv4_strbuf_format_num(char *buf, size_t size, double v, double int_below)
{
    char tmp[40];
    int p, e;

    if (!isfinite(v)) {
        snprintf(buf, size, "%s", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (v == floor(v) && fabs(v) < int_below) {
        snprintf(buf, size, "%.0f", v);
        return;
    }
    for (p = 1; p < 17; p++) {
        snprintf(tmp, sizeof(tmp), "%.*e", p - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    snprintf(tmp, sizeof(tmp), "%.*e", p - 1, v);
    e = atoi(strchr(tmp, 'e') + 1);
    if (e < -4 || e >= 16) {
        snprintf(buf, size, "%s", tmp);
        return;
    }
    snprintf(buf, size, "%.*f", p - 1 - e > 0 ? p - 1 - e : 0, v);
    if (!strchr(buf, '.'))
        strncat(buf, ".0", size - strlen(buf) - 1);
}

void dsv4_strbuf_json_num(struct dsv4_strbuf *b, double v, double int_below)
{
    char buf[48];

    dsv4_strbuf_format_num(buf, sizeof(buf), v, int_below);
    dsv4_strbuf_str(b, buf);
}

static void indent(struct dsv4_strbuf *b, int n)
{
    for (int i = 0; i < n; i++)
        dsv4_strbuf_put(b, "  ", 2);
}

void dsv4_strbuf_json_tree(struct dsv4_strbuf *b, const cJSON *j, int depth)
{
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        bool obj = cJSON_IsObject(j);
        const cJSON *e = j->child;
        if (!e) {
            dsv4_strbuf_str(b, obj ? "{}" : "[]");
            return;
        }
        dsv4_strbuf_str(b, obj ? "{\n" : "[\n");
        for (; e; e = e->next) {
            indent(b, depth + 1);
            if (obj) {
                dsv4_strbuf_json_str(b, e->string, false);
                dsv4_strbuf_str(b, ": ");
            }
            dsv4_strbuf_json_tree(b, e, depth + 1);
            dsv4_strbuf_str(b, e->next ? ",\n" : "\n");
        }
        indent(b, depth);
        dsv4_strbuf_str(b, obj ? "}" : "]");
    } else if (cJSON_IsString(j)) {
        dsv4_strbuf_json_str(b, j->valuestring, false);
    } else if (cJSON_IsNumber(j)) {
        dsv4_strbuf_json_num(b, j->valuedouble, 1e15);
    } else if (cJSON_IsTrue(j)) {
        dsv4_strbuf_str(b, "true");
    } else if (cJSON_IsFalse(j)) {
        dsv4_strbuf_str(b, "false");
    } else {
        dsv4_strbuf_str(b, "null");
    }
}
