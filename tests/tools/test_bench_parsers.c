/*
 * test_bench_parsers.c - the parsers of `dsv4 bench serve` on known input
 * (tools/bench_serve.h): HTTP/1.1 responses framed by Content-Length,
 * chunked coding or the close, interim 1xx answers, bodiless statuses and
 * what must be refused; server-sent events with every line ending and
 * multi-line data; Prometheus samples summed across labels and matched by
 * suffix; URLs.  Every stream case is also fed in every two-piece split.
 * Then the fuzz target (fuzz_bench_client.c) replays seeds and a fixed
 * number of seeded random mutations of them, so that `make check` runs the
 * fuzz target without libFuzzer.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"
#include "tests/test.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int collect(void *ctx, const char *d, size_t n)
{
    dsv4_strbuf_put(ctx, d, n);
    return 0;
}

struct rp_result {
    int rc, status;
    bool close, done;
    char body[256];
};

/* Parses r fed in two pieces split at `split` (0: whole), then EOF if `eof`. */
static struct rp_result parse(const char *r, size_t split, bool eof, bool head)
{
    struct rp_result out = {0};
    struct dsv4_bench_rp p;
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_bench_rp_init(&p, head);
    size_t n = strlen(r), off = 0;
    size_t pieces[2] = {split ? split : n, n - (split ? split : n)};
    for (int i = 0; i < 2 && !out.rc && !p.done; i++) {
        size_t used = 0;
        out.rc = dsv4_bench_rp_feed(&p, r + off, pieces[i], &used, collect, &b);
        off += used;
    }
    if (!out.rc && !p.done && eof)
        out.rc = dsv4_bench_rp_eof(&p);
    out.status = p.status;
    out.close = p.close;
    out.done = p.done;
    snprintf(out.body, sizeof(out.body), "%s", b.p ? b.p : "");
    dsv4_strbuf_free(&b);
    return out;
}

/* A good response parses to status/body/close in every two-piece split. */
static void good(const char *r, int status, const char *body, bool close, bool eof)
{
    for (size_t split = 0; split < strlen(r); split++) {
        struct rp_result x = parse(r, split, eof, false);
        CHECKF(x.rc == 0 && x.done, "split %zu of '%.40s': rc %d done %d (%s)", split, r, x.rc,
               x.done, dsv4_errmsg());
        CHECKF(x.status == status, "status %d", x.status);
        CHECKF(!strcmp(x.body, body), "split %zu body '%s' want '%s'", split, x.body, body);
        CHECKF(x.close == close, "'%.40s': close %d", r, x.close);
    }
}

static void refused(const char *r, const char *msg)
{
    struct rp_result x = parse(r, 0, true, false);
    CHECKF(x.rc != 0 && strstr(dsv4_errmsg(), msg), "'%.40s': rc %d, message '%s' lacks '%s'", r,
           x.rc, dsv4_errmsg(), msg);
}

static void test_responses(void)
{
    good("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello", 200,
         "hello", false, false);
    good("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: x\r\n\r\n",
         200, "hello", false, false);
    good("HTTP/1.1 500 Internal\nContent-Length: 2\nConnection: close\n\nno", 500, "no", true,
         false);
    good("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, "x",
         false, false);
    good("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, "x", true, false);
    good("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", 200, "x", false,
         false);
    good("HTTP/1.1 200 OK\r\n\r\nuntil the close", 200, "until the close", true, true);
    good("HTTP/1.1 204 No Content\r\n\r\n", 204, "", false, false);
    good("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", false, false);
    /* chunked wins over Content-Length; both the same CL twice is fine */
    good("HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
         "1\r\na\r\n0\r\n\r\n",
         200, "a", false, false);
    good("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz", 200, "z", false,
         false);
    struct rp_result h = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", 0, false, true);
    CHECK(h.rc == 0 && h.done && !h.body[0]);
    /* stops at the end of the message: a second response is not consumed */
    struct dsv4_bench_rp p;
    dsv4_bench_rp_init(&p, false);
    const char *two = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n";
    size_t used = 0;
    CHECK(dsv4_bench_rp_feed(&p, two, strlen(two), &used, NULL, NULL) == 0 && p.done);
    CHECK_INT(used, strlen("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"));

    refused("HTTP/2 200 OK\r\n\r\n", "status line");
    refused("HTTP/1.1 20 OK\r\n\r\n", "status line");
    refused("HTTP/1.1 101 Switching\r\n\r\n", "101");
    refused("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "two different");
    refused("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length");
    refused("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "Content-Length");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding");
    refused("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "bad response header");
    refused("HTTP/1.1 200 OK\r\n folded\r\n\r\n", "obs-fold");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "longer than");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n", "mid-response");
    refused("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "mid-response");
    refused("", "before a response");
    char nul[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n";
    struct dsv4_bench_rp q;
    dsv4_bench_rp_init(&q, false);
    CHECK(dsv4_bench_rp_feed(&q, nul, sizeof(nul) - 1, &used, NULL, NULL) == DSV4_EFORMAT);
    char *long_line = malloc(DSV4_BENCH_LINE_MAX + 64);
    strcpy(long_line, "HTTP/1.1 200 OK\r\nX: ");
    memset(long_line + strlen(long_line), 'a', DSV4_BENCH_LINE_MAX);
    long_line[DSV4_BENCH_LINE_MAX + 20] = 0;
    refused(long_line, "longer than");
    free(long_line);
    struct dsv4_strbuf many;
    dsv4_strbuf_init(&many);
    dsv4_strbuf_str(&many, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 101; i++)
        dsv4_strbuf_fmt(&many, "X-%d: y\r\n", i);
    refused(many.p, "more than 100");
    dsv4_strbuf_free(&many);
}

static void sse_case(const char *in, const char *want)
{
    for (size_t split = 0; split <= strlen(in); split++) {
        struct dsv4_bench_sse s;
        struct dsv4_strbuf out;
        dsv4_strbuf_init(&out);
        dsv4_bench_sse_init(&s);
        int rc = dsv4_bench_sse_feed(&s, in, split, collect, &out);
        if (!rc)
            rc = dsv4_bench_sse_feed(&s, in + split, strlen(in) - split, collect, &out);
        CHECKF(rc == 0, "sse '%s' rc %d", in, rc);
        CHECKF(!strcmp(out.p ? out.p : "", want), "sse split %zu: got '%s' want '%s'", split,
               out.p ? out.p : "", want);
        dsv4_strbuf_free(&out);
        dsv4_bench_sse_free(&s);
    }
}

static int collect_sep(void *ctx, const char *d, size_t n)
{
    dsv4_strbuf_put(ctx, d, n);
    dsv4_strbuf_put(ctx, "|", 1);
    return 0;
}

static void test_sse(void)
{
    sse_case("data: a\n\ndata: b\n\n", "ab");
    /* every line ending, multi-line data, comments, other fields, no space after ':' */
    const char *in = "data: {\"x\":1}\r\n\r\n: keep-alive\n\nevent: m\ndata:two\ndata: lines\r\r"
                     "id: 3\ndata\n\ndata: [DONE]\n\n";
    struct dsv4_bench_sse s;
    struct dsv4_strbuf out;
    for (size_t split = 0; split <= strlen(in); split++) {
        dsv4_strbuf_init(&out);
        dsv4_bench_sse_init(&s);
        int rc = dsv4_bench_sse_feed(&s, in, split, collect_sep, &out);
        rc |= dsv4_bench_sse_feed(&s, in + split, strlen(in) - split, collect_sep, &out);
        CHECK(rc == 0);
        CHECKF(!strcmp(out.p, "{\"x\":1}|two\nlines||[DONE]|"), "split %zu: '%s'", split, out.p);
        dsv4_strbuf_free(&out);
        dsv4_bench_sse_free(&s);
    }
    /* an event without its blank line is not dispatched */
    dsv4_strbuf_init(&out);
    dsv4_bench_sse_init(&s);
    CHECK(dsv4_bench_sse_feed(&s, "data: x\n", 8, collect_sep, &out) == 0 && out.len == 0);
    dsv4_strbuf_free(&out);
    dsv4_bench_sse_free(&s);
}

static void test_prom(void)
{
    const char *t = "# HELP vllm:spec_decode_num_drafts_total x\n"
                    "# TYPE vllm:spec_decode_num_drafts_total counter\n"
                    "vllm:spec_decode_num_drafts_total{engine=\"0\"} 10\n"
                    "vllm:spec_decode_num_drafts_total{engine=\"1\"} 5 1700000000000\n"
                    "vllm:spec_decode_num_draft_tokens_total 30\r\n"
                    "vllm:spec_decode_num_accepted_tokens_total 20\n"
                    "vllm:spec_decode_num_accepted_tokens_per_pos_total{position=\"0\",a=\"}\\\"\"}"
                    " 12\n"
                    "vllm:spec_decode_num_accepted_tokens_per_pos_total{position=\"1\"} 8\n"
                    "vllm:spec_decode_num_accepted_tokens_per_pos_total{position=\"1\"} NaN\n"
                    "xspec_decode_num_drafts_total 1000\n"
                    "broken{ 5\n"
                    "dsv4_other 1e3\n";
    bool f;
    CHECK(dsv4_bench_prom_sum(t, "spec_decode_num_drafts_total", NULL, NULL, &f) == 15 && f);
    CHECK(dsv4_bench_prom_sum(t, "vllm:spec_decode_num_drafts_total", NULL, NULL, &f) == 15);
    /* a suffix matches at any '_' boundary: the x-prefixed family counts here */
    CHECK(dsv4_bench_prom_sum(t, "drafts_total", NULL, NULL, &f) == 1015);
    CHECK(dsv4_bench_prom_sum(t, "other", NULL, NULL, &f) == 1000 && f);
    CHECK(dsv4_bench_prom_sum(t, "nothing_total", NULL, NULL, &f) == 0 && !f);
    CHECK(dsv4_bench_prom_sum(t, "spec_decode_num_accepted_tokens_per_pos_total", "position", "1",
                              &f) == 8);
    CHECK(dsv4_bench_prom_sum(t, "spec_decode_num_accepted_tokens_per_pos_total", "a", "}\"", &f) ==
                  12 &&
          f);
    CHECK_INT(dsv4_bench_prom_max_label(t, "spec_decode_num_accepted_tokens_per_pos_total",
                                        "position"),
              1);
    struct dsv4_bench_spec sp;
    dsv4_bench_spec_read(t, &sp);
    CHECK(sp.found && sp.has_drafts && !sp.has_pos_drafted);
    CHECK(sp.drafts == 15 && sp.draft_tokens == 30 && sp.accepted == 20 && sp.n_pos == 2);
    CHECK(sp.pos_accepted[0] == 12 && sp.pos_accepted[1] == 8);
    dsv4_bench_spec_read("dsv4_spec_decode_num_draft_tokens_total 4\n", &sp);
    CHECK(!sp.found);
    dsv4_bench_spec_read(NULL, &sp);
    CHECK(!sp.found && sp.n_pos == 0);
}

static void test_urls(void)
{
    struct dsv4_bench_url u;
    CHECK(dsv4_bench_url_parse("http://127.0.0.1:8000/v1/", &u) == 0);
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_STR(u.port, "8000");
    CHECK_STR(u.path, "/v1");
    CHECK(dsv4_bench_url_parse("localhost", &u) == 0);
    CHECK_STR(u.port, "80");
    CHECK_STR(u.path, "");
    CHECK(dsv4_bench_url_parse("http://[::1]:9/metrics", &u) == 0);
    CHECK_STR(u.host, "::1");
    CHECK_STR(u.path, "/metrics");
    CHECK(dsv4_bench_url_parse("https://x", &u) == DSV4_ENOTSUP);
    static const char *const bad[] = {
            "",           "http://",     "http://:80",   "http://h:0",  "http://h:99999",
            "http://h:x", "http://[::1", "http://h/a b", "http://u@h/", "ftp://h"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad); i++)
        CHECKF(dsv4_bench_url_parse(bad[i], &u) != 0, "'%s' accepted", bad[i]);
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The fuzz target on its seeds and 3000 seeded mutations of each. */
static void test_fuzz(void)
{
    static const char *const seeds[] = {
            "\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "\x00HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 No\r\n\r\nbody",
            "\x01"
            "data: {\"choices\":[]}\r\n\r\n: c\ndata:a\ndata: b\r\rdata: [DONE]\n\n",
            "\x02vllm:spec_decode_num_drafts_total{engine=\"0\"} 3\n"
            "x_total{position=\"0\",b=\"\\\\\"} 2 17\n",
            "\x03http://[::1]:8000/v1/",
    };
    uint64_t s = 0x9e3779b97f4a7c15ull;
    uint8_t buf[512];
    for (size_t i = 0; i < DSV4_ARRAY_LEN(seeds); i++) {
        size_t n = 1 + strlen(seeds[i] + 1);
        memcpy(buf, seeds[i], n);
        LLVMFuzzerTestOneInput(buf, n);
        for (int m = 0; m < 3000; m++) {
            uint8_t mut[512];
            size_t k = n;
            memcpy(mut, buf, n);
            int edits = 1 + (int)(rng(&s) % 4);
            for (int e = 0; e < edits && k > 1; e++) {
                size_t at = 1 + (size_t)(rng(&s) % (k - 1));
                switch (rng(&s) % 4) {
                case 0:
                    mut[at] = (uint8_t)rng(&s);
                    break;
                case 1: /* structural bytes */
                    mut[at] = (uint8_t) "\r\n:;{}\"=0 \\"[rng(&s) % 12];
                    break;
                case 2:
                    memmove(mut + at, mut + at + 1, k - at - 1);
                    k--;
                    break;
                default:
                    if (k < sizeof(mut)) {
                        memmove(mut + at + 1, mut + at, k - at);
                        mut[at] = (uint8_t)rng(&s);
                        k++;
                    }
                }
            }
            LLVMFuzzerTestOneInput(mut, k);
        }
    }
    CHECK(1); /* reaching this line is the test: no crash, no assertion */
}

int main(void)
{
    test_responses();
    test_sse();
    test_prom();
    test_urls();
    test_fuzz();
    TEST_DONE();
}
