/*
 * fuzz_bench_client.c - fuzz target of the parsers of `dsv4 bench serve`
 * (tools/bench_serve.h), which read whatever a server sends: the HTTP/1.1
 * response parser, the server-sent-events parser, the Prometheus text
 * reader and the URL parser.
 *
 * The first byte picks the parser; the rest is the input.  The response and
 * event parsers run twice, on the whole input at once and byte by byte, and
 * must agree (same status, same body or events): a parser whose result
 * depends on how recv() split the stream is a bug even when it does not
 * crash.  Built as a libFuzzer binary with --enable-fuzzing; replayed in
 * `make check` by tests/tools/test_bench_parsers.c.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int collect(void *ctx, const char *d, size_t n)
{
    struct dsv4_strbuf *b = ctx;
    if (b->len + n > (1u << 20))
        return DSV4_ERANGE;
    dsv4_strbuf_put(b, d, n);
    return b->oom ? DSV4_ENOMEM : 0;
}

/* Each event as "<len>:" + data, so that event boundaries are compared too. */
static int collect_event(void *ctx, const char *d, size_t n)
{
    struct dsv4_strbuf *b = ctx;
    if (b->len + n > (1u << 20))
        return DSV4_ERANGE;
    dsv4_strbuf_fmt(b, "%zu:", n);
    dsv4_strbuf_put(b, d, n);
    return b->oom ? DSV4_ENOMEM : 0;
}

/* Feeds like a connection: pieces of `step` bytes (0: all at once), each
 * continuing after what the parser consumed; EOF when the input ends early. */
static int run_rp(const char *s, size_t n, size_t step, struct dsv4_strbuf *body, int *status)
{
    struct dsv4_bench_rp *p = malloc(sizeof(*p));
    if (!p)
        return DSV4_ENOMEM;
    dsv4_bench_rp_init(p, false);
    size_t off = 0;
    int rc = 0;
    while (off < n && !p->done && !rc) {
        size_t k = step ? DSV4_MIN(step, n - off) : n - off, used = 0;
        rc = dsv4_bench_rp_feed(p, s + off, k, &used, collect, body);
        DSV4_ASSERT(used <= k);
        off += used;
        if (!rc && !p->done)
            DSV4_ASSERT(used == k); /* it only stops early at the end of a message */
    }
    if (!rc && !p->done)
        rc = dsv4_bench_rp_eof(p);
    *status = p->status;
    free(p);
    return rc;
}

static int run_sse(const char *s, size_t n, size_t step, struct dsv4_strbuf *out)
{
    struct dsv4_bench_sse sse;
    dsv4_bench_sse_init(&sse);
    int rc = 0;
    for (size_t off = 0; off < n && !rc;) {
        size_t k = step ? DSV4_MIN(step, n - off) : n - off;
        rc = dsv4_bench_sse_feed(&sse, s + off, k, collect_event, out);
        off += k;
    }
    dsv4_bench_sse_free(&sse);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > (1u << 20))
        return 0;
    int mode = data[0] % 4;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    struct dsv4_strbuf a, b;
    dsv4_strbuf_init(&a);
    dsv4_strbuf_init(&b);
    if (mode == 0) {
        int sa = 0, sb = 0;
        int ra = run_rp(s, n, 0, &a, &sa);
        int rb = run_rp(s, n, 1, &b, &sb);
        DSV4_ASSERT((ra == 0) == (rb == 0));
        if (!ra) {
            DSV4_ASSERT(sa == sb && a.len == b.len);
            DSV4_ASSERT(!a.len || !memcmp(a.p, b.p, a.len));
        }
    } else if (mode == 1) {
        int ra = run_sse(s, n, 0, &a);
        int rb = run_sse(s, n, 1, &b);
        DSV4_ASSERT((ra == 0) == (rb == 0));
        if (!ra)
            DSV4_ASSERT(a.len == b.len && (!a.len || !memcmp(a.p, b.p, a.len)));
    } else {
        char *z = malloc(n + 1);
        if (!z)
            return 0;
        memcpy(z, s, n);
        z[n] = 0;
        if (mode == 2) {
            struct dsv4_bench_spec sp;
            dsv4_bench_spec_read(z, &sp);
            DSV4_ASSERT(sp.n_pos >= 0 && sp.n_pos <= DSV4_BENCH_SPEC_POS);
            bool found;
            dsv4_bench_prom_sum(z, "x_total", "position", "0", &found);
        } else {
            struct dsv4_bench_url u;
            if (!dsv4_bench_url_parse(z, &u))
                DSV4_ASSERT(u.host[0] && u.port[0]);
        }
        free(z);
    }
    dsv4_strbuf_free(&a);
    dsv4_strbuf_free(&b);
    return 0;
}
