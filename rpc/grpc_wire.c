/*
 * grpc_wire.c - status codes, message framing, grpc-timeout, percent-encoding,
 * bearer keys and UTF-8 checks of rpc/grpc_wire.h.
 *
 * Every function here takes bytes from the network, so each is written to
 * be total: any input gives a result or a status, reads stay inside the
 * given length, and nothing allocated is larger than what the limits allow
 * (the reader grows its buffer with the bytes that actually arrive).
 */
#include "rpc/grpc_wire.h"

#include "base/dsv4.h"

#include <stdlib.h>
#include <string.h>

const char *dsv4_grpc_code_name(int code)
{
    static const char *names[DSV4_GRPC_CODE_COUNT] = {
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
    };
    return code >= 0 && code < DSV4_GRPC_CODE_COUNT ? names[code] : "?";
}

void dsv4_grpc_prefix(uint8_t out[DSV4_GRPC_PREFIX], uint32_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

void dsv4_grpc_reader_init(struct dsv4_grpc_reader *r, size_t max)
{
    memset(r, 0, sizeof(*r));
    r->max = max;
}

void dsv4_grpc_reader_free(struct dsv4_grpc_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->cap = 0;
}

/* Makes room for `need` bytes of the current message, doubling (capped at its length). */
static int reserve(struct dsv4_grpc_reader *r, size_t need)
{
    if (need <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > r->len)
        cap = r->len;
    uint8_t *p = realloc(r->buf, cap);
    if (!p)
        return dsv4_error(DSV4_ENOMEM, "out of memory buffering a message of %zu bytes", r->len);
    r->buf = p;
    r->cap = cap;
    return 0;
}

static int fail(struct dsv4_grpc_reader *r, int code)
{
    r->failed = true;
    return code;
}

int dsv4_grpc_reader_feed(struct dsv4_grpc_reader *r, const uint8_t *p, size_t n,
                          dsv4_grpc_msg_fn fn, void *arg)
{
    if (r->failed) {
        dsv4_error(DSV4_EINVAL, "request body after an error");
        return DSV4_GRPC_INTERNAL;
    }
    while (n > 0) {
        if (!r->in_body) {
            size_t k = DSV4_MIN(n, DSV4_GRPC_PREFIX - r->hdr_n);
            memcpy(r->hdr + r->hdr_n, p, k);
            r->hdr_n += k;
            p += k;
            n -= k;
            if (r->hdr_n < DSV4_GRPC_PREFIX)
                break;
            uint32_t len = (uint32_t)r->hdr[1] << 24 | (uint32_t)r->hdr[2] << 16 |
                           (uint32_t)r->hdr[3] << 8 | r->hdr[4];
            if (r->hdr[0] == 1) {
                dsv4_error(DSV4_ENOTSUP, "compressed messages are not supported (grpc-encoding "
                                         "identity only)");
                return fail(r, DSV4_GRPC_UNIMPLEMENTED);
            }
            if (r->hdr[0] != 0) {
                dsv4_error(DSV4_EFORMAT, "bad message flag byte 0x%02x", r->hdr[0]);
                return fail(r, DSV4_GRPC_INTERNAL);
            }
            if (len > r->max) {
                dsv4_error(DSV4_ERANGE, "message of %u bytes exceeds the limit of %zu bytes", len,
                           r->max);
                return fail(r, DSV4_GRPC_RESOURCE_EXHAUSTED);
            }
            r->len = len;
            r->got = 0;
            r->in_body = true;
        }
        size_t k = DSV4_MIN(n, r->len - r->got);
        if (k > 0) {
            if (reserve(r, r->got + k))
                return fail(r, DSV4_GRPC_RESOURCE_EXHAUSTED);
            memcpy(r->buf + r->got, p, k);
            r->got += k;
            p += k;
            n -= k;
        }
        if (r->got == r->len) {
            static const uint8_t empty[1];
            int code = fn(arg, r->len ? r->buf : empty, r->len);
            r->in_body = false;
            r->hdr_n = 0;
            if (code)
                return fail(r, code);
        }
    }
    return 0;
}

int dsv4_grpc_reader_end(const struct dsv4_grpc_reader *r)
{
    if (r->failed) {
        dsv4_error(DSV4_EINVAL, "request body after an error");
        return DSV4_GRPC_INTERNAL;
    }
    if (r->hdr_n == 0 && !r->in_body)
        return 0;
    dsv4_error(DSV4_EFORMAT, "request ends inside a message (%zu of %zu bytes)",
               r->in_body ? r->got : r->hdr_n, r->in_body ? r->len : (size_t)DSV4_GRPC_PREFIX);
    return DSV4_GRPC_INTERNAL;
}

int dsv4_grpc_timeout_parse(const char *s, size_t n, double *seconds)
{
    if (n < 2 || n > 9)
        return dsv4_error(DSV4_EINVAL, "grpc-timeout '%.*s': 1-8 digits and a unit expected",
                          (int)DSV4_MIN(n, 32), s);
    double v = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return dsv4_error(DSV4_EINVAL, "grpc-timeout '%.*s': not a number", (int)n, s);
        v = v * 10 + (s[i] - '0');
    }
    double unit;
    switch (s[n - 1]) {
    case 'H':
        unit = 3600;
        break;
    case 'M':
        unit = 60;
        break;
    case 'S':
        unit = 1;
        break;
    case 'm':
        unit = 1e-3;
        break;
    case 'u':
        unit = 1e-6;
        break;
    case 'n':
        unit = 1e-9;
        break;
    default:
        return dsv4_error(DSV4_EINVAL, "grpc-timeout '%.*s': unknown unit", (int)n, s);
    }
    *seconds = v * unit;
    return 0;
}

size_t dsv4_grpc_percent_encode(const char *in, size_t n, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
            if (k + 1 >= outlen)
                break;
            out[k++] = (char)ch;
        } else {
            if (k + 3 >= outlen)
                break;
            out[k++] = '%';
            out[k++] = hex[ch >> 4];
            out[k++] = hex[ch & 15];
        }
    }
    out[k] = 0;
    return k;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t dsv4_grpc_percent_decode(char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            s[k++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            s[k++] = s[i];
        }
    }
    return k;
}

bool dsv4_grpc_bearer(const char *v, size_t n, const char **key, size_t *klen)
{
    static const char scheme[] = "bearer";
    size_t i = 0;
    if (n < sizeof(scheme))
        return false;
    for (i = 0; i < sizeof(scheme) - 1; i++)
        if ((v[i] | 0x20) != scheme[i])
            return false;
    if (v[i] != ' ' && v[i] != '\t')
        return false;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    *key = v + i;
    *klen = n - i;
    return true;
}

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 when it is ill-formed
 * (Unicode table 3-7); NUL counts as ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

bool dsv4_grpc_utf8_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

char *dsv4_grpc_utf8_sanitize(const char *s, size_t n, size_t *outlen)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = malloc(3 * n + 1); /* a replacement (3 bytes) per input byte at worst */
    size_t i = 0, k = 0;
    if (!out)
        return NULL;
    while (i < n) {
        size_t len = utf8_seq(p + i, n - i);
        if (len) {
            memcpy(out + k, p + i, len);
            k += len;
            i += len;
        } else {
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    out[k] = 0;
    *outlen = k;
    return out;
}
