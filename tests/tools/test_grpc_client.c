/*
 * test_grpc_client.c - the gRPC client of tools/grpc_client.h against the
 * project's gRPC server (rpc/grpc.h) over the fake engine
 * (tests/rpc/fake_svc.h), in process on 127.0.0.1 and a free port:
 * grpc-timeout values, bad targets and a refused connection, unary and
 * streaming calls with their exact output, many concurrent streams on one
 * connection, one connection per thread, deadlines, cancellation (from the
 * message callback and from outside; the fake's running count returns to
 * 0), API keys and metadata, unknown methods, the client's message limit,
 * a unary call answered by a stream, and a server that stops under running
 * calls (UNAVAILABLE, then the connection stays failed).  Every wait is
 * bounded.
 */
#include "base/dsv4.h"
#include "proto/dsv4.pb-c.h"
#include "rpc/grpc.h"
#include "rpc/grpc_wire.h"
#include "tests/rpc/fake_svc.h"
#include "tests/test.h"
#include "tools/grpc_client.h"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define NSTREAMS 24
#define NTHREADS 4

static const char pattern[] = "abcdefghij ";

static char target[64];

static void expected(int n, char *out)
{
    for (int j = 0; j < n; j++)
        out[j] = pattern[j % 11];
    out[n] = 0;
}

/* A packed GenerateRequest for text "p" and max_new_tokens n. */
static uint8_t *gen_request(uint32_t n, const char *request_id, size_t *len)
{
    Dsv4__GenerateRequest q = DSV4__GENERATE_REQUEST__INIT;
    Dsv4__SamplingParams sp = DSV4__SAMPLING_PARAMS__INIT;
    q.prompt_case = DSV4__GENERATE_REQUEST__PROMPT_TEXT;
    q.text = (char *)"p";
    q.request_id = (char *)(request_id ? request_id : "");
    q.sampling_params = &sp;
    sp.max_new_tokens_opt_case = DSV4__SAMPLING_PARAMS__MAX_NEW_TOKENS_OPT_MAX_NEW_TOKENS;
    sp.max_new_tokens = n;
    *len = dsv4__generate_request__get_packed_size(&q);
    uint8_t *b = malloc(*len);
    dsv4__generate_request__pack(&q, b);
    return b;
}

/* What a Generate stream delivered. */
struct gen {
    char text[8192];
    size_t len;
    int chunks, cancel_after;
    bool complete, bad, done;
    char finish[16];
    struct dsv4_gc_status st;
};

static int gen_msg(void *arg, const uint8_t *msg, size_t len)
{
    struct gen *g = arg;
    Dsv4__GenerateResponse *m = dsv4__generate_response__unpack(NULL, len, msg);
    if (!m) {
        g->bad = true;
        return 1;
    }
    if (m->response_case == DSV4__GENERATE_RESPONSE__RESPONSE_CHUNK) {
        size_t n = strlen(m->chunk->text);
        if (g->len + n < sizeof(g->text)) {
            memcpy(g->text + g->len, m->chunk->text, n);
            g->len += n;
            g->text[g->len] = 0;
        }
        g->chunks++;
    } else {
        g->complete = true;
        snprintf(g->finish, sizeof(g->finish), "%s", m->complete->finish_reason);
    }
    dsv4__generate_response__free_unpacked(m, NULL);
    return g->cancel_after > 0 && g->chunks >= g->cancel_after;
}

static void gen_done(void *arg, const struct dsv4_gc_status *st)
{
    struct gen *g = arg;
    g->st = *st;
    g->done = true;
}

static struct dsv4_gc *connect_to(const char *key)
{
    struct dsv4_gc_opts o = {.target = target, .api_key = key, .connect_timeout_s = 5};
    struct dsv4_gc *c = NULL;
    int rc = dsv4_gc_connect(&o, &c);
    CHECKF(rc == 0, "connect: %s", dsv4_errmsg());
    return c;
}

static bool wait_idle(struct dsv4_svc *svc)
{
    for (int i = 0; i < 300; i++) {
        if (fake_svc_running(svc) == 0)
            return true;
        usleep(10000);
    }
    return false;
}

/* ---- cases */

static void test_timeout_values(void)
{
    char b[16];
    dsv4_gc_timeout_value(0.25, b, sizeof(b));
    CHECK_STR(b, "250m");
    dsv4_gc_timeout_value(0.0000001, b, sizeof(b));
    CHECK_STR(b, "1m");
    dsv4_gc_timeout_value(30, b, sizeof(b));
    CHECK_STR(b, "30000m");
    dsv4_gc_timeout_value(1e6, b, sizeof(b));
    CHECK_STR(b, "1000000S");
    dsv4_gc_timeout_value(1e9, b, sizeof(b));
    CHECK_STR(b, "16666667M");
    dsv4_gc_timeout_value(1e20, b, sizeof(b));
    CHECK_STR(b, "99999999H");
    double s;
    dsv4_gc_timeout_value(12.3456, b, sizeof(b));
    CHECK(dsv4_grpc_timeout_parse(b, strlen(b), &s) == 0 && s >= 12.3456 && s < 12.347);
}

static void test_connect_errors(void)
{
    struct dsv4_gc *c = NULL;
    const char *bad[] = {"nocolon", "host:",  "host:0", "host:70000",
                         "[::1]",   "[::1:5", "a:b:c",  ":50051"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(bad); i++) {
        struct dsv4_gc_opts o = {.target = bad[i]};
        CHECKF(dsv4_gc_connect(&o, &c) == DSV4_EINVAL && !c, "target '%s'", bad[i]);
        CHECKF(dsv4_gc_target_check(bad[i]) == DSV4_EINVAL, "checked target '%s'", bad[i]);
    }
    CHECK_INT(dsv4_gc_target_check("localhost:50051"), 0);
    CHECK_INT(dsv4_gc_target_check("[::1]:1"), 0);
    struct dsv4_gc_opts o = {.target = "127.0.0.1:1", .connect_timeout_s = 2};
    CHECK_INT(dsv4_gc_connect(&o, &c), DSV4_EIO);
    CHECKF(strstr(dsv4_errmsg(), "cannot connect to 127.0.0.1:1") != NULL, "%s", dsv4_errmsg());
    struct dsv4_gc_opts k = {.target = "127.0.0.1:1", .api_key = "bad\nkey"};
    CHECK_INT(dsv4_gc_connect(&k, &c), DSV4_EINVAL);
    dsv4_gc_close(NULL);
}

static void test_unary(struct dsv4_svc *svc)
{
    struct dsv4_gc *c = connect_to(NULL);
    if (!c)
        return;
    CHECK_STR(dsv4_gc_target(c), target);
    Dsv4__TokenizeRequest q = DSV4__TOKENIZE_REQUEST__INIT;
    q.text = (char *)"ab";
    uint8_t req[64], *resp = NULL;
    size_t n = dsv4__tokenize_request__pack(&q, req), rlen = 0;
    struct dsv4_gc_status st;
    struct dsv4_gc_call_opts co = {.timeout_s = 5};
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/Tokenize", req, n, &co, &resp, &rlen, &st), 0);
    CHECK_INT(st.code, DSV4_GRPC_OK);
    Dsv4__TokenizeResponse *r = dsv4__tokenize_response__unpack(NULL, rlen, resp);
    CHECK(r && r->n_token_ids == 2 && r->token_ids[0] == 'a' + 3 && r->token_ids[1] == 'b' + 3);
    if (r)
        dsv4__tokenize_response__free_unpacked(r, NULL);
    free(resp);
    /* an empty request message and an empty response field set */
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/GetLoads", NULL, 0, NULL, &resp, &rlen, &st), 0);
    free(resp);
    /* errors carry the server's code and message */
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/Nope", NULL, 0, &co, &resp, &rlen, &st), DSV4_EIO);
    CHECK_INT(st.code, DSV4_GRPC_UNIMPLEMENTED);
    CHECK(resp == NULL);
    CHECKF(strncmp(dsv4_errmsg(), "UNIMPLEMENTED: ", 15) == 0, "%s", dsv4_errmsg());
    uint8_t junk[] = {0xff, 0xff, 0xff};
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/Tokenize", junk, 3, &co, &resp, &rlen, &st), DSV4_EIO);
    CHECK_INT(st.code, DSV4_GRPC_INVALID_ARGUMENT);
    CHECK(st.message[0] != 0);
    /* the fake refuses work while draining: UNAVAILABLE with the retry trailer */
    size_t gl;
    uint8_t *g = gen_request(3, NULL, &gl);
    fake_svc_set_state(svc, DSV4_SVC_DRAINING, "test");
    struct gen out = {.len = 0};
    CHECK_INT(dsv4_gc_stream(c, "/dsv4.Engine/Generate", g, gl, &co, gen_msg, &out, &st), DSV4_EIO);
    CHECK_INT(st.code, DSV4_GRPC_UNAVAILABLE);
    CHECK(st.retryable);
    fake_svc_set_state(svc, DSV4_SVC_READY, NULL);
    /* a unary call answered by a stream of several messages */
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/Generate", g, gl, &co, &resp, &rlen, &st), DSV4_EIO);
    CHECK_INT(st.code, DSV4_GRPC_INTERNAL);
    free(g);
    /* bad paths and metadata start nothing */
    CHECK_INT(dsv4_gc_start(c, "nope", NULL, 0, NULL, NULL, NULL, NULL, NULL), DSV4_EINVAL);
    const char *md_bad[] = {"Upper", "x", NULL};
    const char *md_grpc[] = {"grpc-timeout", "1S", NULL};
    const char *md_val[] = {"x-a", "line\nbreak", NULL};
    struct dsv4_gc_call_opts m1 = {.metadata = md_bad}, m2 = {.metadata = md_grpc},
                             m3 = {.metadata = md_val};
    CHECK_INT(dsv4_gc_start(c, "/a/b", NULL, 0, &m1, NULL, NULL, NULL, NULL), DSV4_EINVAL);
    CHECK_INT(dsv4_gc_start(c, "/a/b", NULL, 0, &m2, NULL, NULL, NULL, NULL), DSV4_EINVAL);
    CHECK_INT(dsv4_gc_start(c, "/a/b", NULL, 0, &m3, NULL, NULL, NULL, NULL), DSV4_EINVAL);
    CHECK_INT(dsv4_gc_open_calls(c), 0);
    dsv4_gc_close(c);
}

static void test_streams(struct dsv4_svc *svc)
{
    struct dsv4_gc *c = connect_to(NULL);
    if (!c)
        return;
    static struct gen g[NSTREAMS];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < NSTREAMS; i++) {
        size_t len;
        uint8_t *q = gen_request((uint32_t)(10 + i * 7), NULL, &len);
        struct dsv4_gc_call_opts co = {.timeout_s = 20};
        CHECK_INT(dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, &co, gen_msg, gen_done, &g[i],
                                NULL),
                  0);
        free(q);
    }
    CHECK_INT(dsv4_gc_open_calls(c), NSTREAMS);
    double t0 = dsv4_now();
    while (dsv4_gc_open_calls(c) > 0 && dsv4_now() - t0 < 20)
        dsv4_gc_run(c, 1.0);
    for (int i = 0; i < NSTREAMS; i++) {
        char want[512];
        expected(10 + i * 7, want);
        CHECKF(g[i].done && g[i].st.code == DSV4_GRPC_OK && g[i].complete &&
                       !strcmp(g[i].text, want) && !strcmp(g[i].finish, "length"),
               "stream %d: code %d '%s' (%s)", i, g[i].st.code, g[i].text, g[i].st.message);
    }
    /* run with nothing open returns at once */
    CHECK_INT(dsv4_gc_run(c, 5), 0);
    CHECK(wait_idle(svc));
    dsv4_gc_close(c);
}

struct thread_arg {
    int ok;
};

static void *thread_main(void *p)
{
    struct thread_arg *a = p;
    struct dsv4_gc_opts o = {.target = target};
    struct dsv4_gc *c;
    if (dsv4_gc_connect(&o, &c))
        return NULL;
    for (int i = 0; i < 20; i++) {
        size_t len;
        uint8_t *q = gen_request(5, NULL, &len);
        struct gen g = {.len = 0};
        struct dsv4_gc_status st;
        struct dsv4_gc_call_opts co = {.timeout_s = 10};
        if (dsv4_gc_stream(c, "/dsv4.Engine/Generate", q, len, &co, gen_msg, &g, &st) == 0 &&
            !strcmp(g.text, "abcde"))
            a->ok++;
        free(q);
    }
    dsv4_gc_close(c);
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[NTHREADS];
    struct thread_arg a[NTHREADS];
    memset(a, 0, sizeof(a));
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, thread_main, &a[i]);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        CHECKF(a[i].ok == 20, "thread %d: %d of 20 calls", i, a[i].ok);
    }
}

static void test_deadline_cancel(struct dsv4_svc *svc)
{
    struct dsv4_gc *c = connect_to(NULL);
    if (!c)
        return;
    size_t len;
    uint8_t *q = gen_request(4000, "long", &len);
    /* the deadline: the server or the client ends it DEADLINE_EXCEEDED */
    struct gen g1 = {.len = 0};
    struct dsv4_gc_status st;
    struct dsv4_gc_call_opts co = {.timeout_s = 0.2};
    double t0 = dsv4_now();
    CHECK_INT(dsv4_gc_stream(c, "/dsv4.Engine/Generate", q, len, &co, gen_msg, &g1, &st), DSV4_EIO);
    CHECKF(st.code == DSV4_GRPC_DEADLINE_EXCEEDED, "%d %s", st.code, st.message);
    CHECKF(dsv4_now() - t0 < 2, "the deadline took %.2f s", dsv4_now() - t0);
    CHECK(g1.chunks > 0);
    /* cancelled by the message callback */
    struct gen g2 = {.cancel_after = 3};
    CHECK_INT(dsv4_gc_stream(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, &g2, &st),
              DSV4_EIO);
    CHECK_INT(st.code, DSV4_GRPC_CANCELLED);
    CHECK_INT(g2.chunks, 3);
    /* cancelled from outside, twice (the second is a no-op) */
    struct gen g3 = {.len = 0};
    struct dsv4_gc_call *call;
    CHECK_INT(
            dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, gen_done, &g3, &call),
            0);
    dsv4_gc_run(c, 0.1);
    CHECK(!g3.done);
    dsv4_gc_cancel(call);
    dsv4_gc_cancel(call);
    int chunks = g3.chunks;
    CHECK_INT(dsv4_gc_run(c, 5), 0);
    CHECK(g3.done && g3.st.code == DSV4_GRPC_CANCELLED && g3.chunks == chunks);
    /* cancelled before its request went out */
    struct gen g4 = {.len = 0};
    CHECK_INT(
            dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, gen_done, &g4, &call),
            0);
    dsv4_gc_cancel(call);
    CHECK_INT(dsv4_gc_run(c, 5), 0);
    CHECK(g4.done && g4.st.code == DSV4_GRPC_CANCELLED && g4.chunks == 0);
    free(q);
    CHECK(wait_idle(svc));
    /* the connection still serves */
    q = gen_request(4, NULL, &len);
    struct gen g5 = {.len = 0};
    CHECK_INT(dsv4_gc_stream(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, &g5, &st), 0);
    CHECK_STR(g5.text, "abcd");
    free(q);
    dsv4_gc_close(c);
}

static void test_keys_limits(struct dsv4_svc *svc)
{
    fake_svc_set_keys(svc, "k1,k2");
    struct dsv4_gc *none = connect_to(NULL), *good = connect_to("k2");
    uint8_t *resp;
    size_t rlen;
    struct dsv4_gc_status st;
    if (none) {
        CHECK_INT(dsv4_gc_unary(none, "/dsv4.Engine/GetLoads", NULL, 0, NULL, &resp, &rlen, &st),
                  DSV4_EIO);
        CHECK_INT(st.code, DSV4_GRPC_UNAUTHENTICATED);
        /* a bearer key in the call's metadata instead */
        const char *md[] = {"authorization", "Bearer k1", "x-trace-id", "abc", NULL};
        struct dsv4_gc_call_opts co = {.metadata = md};
        CHECK_INT(dsv4_gc_unary(none, "/dsv4.Engine/GetLoads", NULL, 0, &co, &resp, &rlen, &st), 0);
        free(resp);
        dsv4_gc_close(none);
    }
    if (good) {
        CHECK_INT(dsv4_gc_unary(good, "/dsv4.Engine/GetLoads", NULL, 0, NULL, &resp, &rlen, &st),
                  0);
        free(resp);
        dsv4_gc_close(good);
    }
    fake_svc_set_keys(svc, NULL);
    /* the client's own message limit */
    struct dsv4_gc_opts o = {.target = target, .max_message = 16};
    struct dsv4_gc *c;
    CHECK_INT(dsv4_gc_connect(&o, &c), 0);
    Dsv4__TokenizeRequest q = DSV4__TOKENIZE_REQUEST__INIT;
    q.text = (char *)"a long enough text to make more than sixteen bytes of ids";
    uint8_t req[256];
    size_t n = dsv4__tokenize_request__pack(&q, req);
    CHECK_INT(dsv4_gc_unary(c, "/dsv4.Engine/Tokenize", req, n, NULL, &resp, &rlen, &st), DSV4_EIO);
    CHECKF(st.code == DSV4_GRPC_RESOURCE_EXHAUSTED, "%d %s", st.code, st.message);
    dsv4_gc_close(c);
}

/* The server stops under running calls: they end UNAVAILABLE, the connection stays failed. */
static void test_server_stop(void)
{
    struct dsv4_svc *svc = fake_svc_create(2);
    struct dsv4_grpc_opts so = {.listen = "127.0.0.1:0", .drain_timeout_s = -1};
    struct dsv4_grpc *g;
    if (!svc || dsv4_grpc_start(svc, &so, &g)) {
        CHECK(false);
        return;
    }
    char t[64];
    snprintf(t, sizeof(t), "127.0.0.1:%d", dsv4_grpc_port(g));
    struct dsv4_gc_opts o = {.target = t};
    struct dsv4_gc *c;
    CHECK_INT(dsv4_gc_connect(&o, &c), 0);
    size_t len;
    uint8_t *q = gen_request(4000, NULL, &len);
    struct gen a = {.len = 0}, b = {.len = 0};
    CHECK_INT(dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, gen_done, &a, NULL),
              0);
    CHECK_INT(dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, gen_done, &b, NULL),
              0);
    for (int i = 0; i < 50 && (a.chunks == 0 || b.chunks == 0); i++)
        dsv4_gc_run(c, 0.02);
    CHECK(a.chunks > 0 && b.chunks > 0);
    dsv4_grpc_stop(g);
    int rc = 0;
    for (int i = 0; i < 100 && dsv4_gc_open_calls(c) > 0; i++)
        rc = dsv4_gc_run(c, 0.05);
    CHECK_INT(dsv4_gc_open_calls(c), 0);
    CHECKF(a.done && a.st.code == DSV4_GRPC_UNAVAILABLE, "%d %s", a.st.code, a.st.message);
    CHECKF(b.done && b.st.code == DSV4_GRPC_UNAVAILABLE, "%d %s", b.st.code, b.st.message);
    (void)rc;
    /* later calls end UNAVAILABLE at once; run reports the failed connection */
    struct gen d = {.len = 0};
    CHECK_INT(dsv4_gc_start(c, "/dsv4.Engine/Generate", q, len, NULL, gen_msg, gen_done, &d, NULL),
              0);
    int r2 = dsv4_gc_run(c, 1);
    CHECKF(r2 == DSV4_EIO || r2 == 0, "run after the stop: %d", r2);
    CHECK(d.done && d.st.code == DSV4_GRPC_UNAVAILABLE && d.st.retryable);
    CHECK_INT(dsv4_gc_run(c, 1), DSV4_EIO);
    free(q);
    dsv4_gc_close(c);
    fake_svc_destroy(svc);
}

int main(void)
{
    test_timeout_values();
    test_connect_errors();
    struct dsv4_svc *svc = fake_svc_create(1);
    struct dsv4_grpc_opts so = {.listen = "127.0.0.1:0"};
    struct dsv4_grpc *g = NULL;
    CHECK(svc != NULL);
    if (svc && dsv4_grpc_start(svc, &so, &g) == 0) {
        snprintf(target, sizeof(target), "127.0.0.1:%d", dsv4_grpc_port(g));
        test_unary(svc);
        test_streams(svc);
        test_threads();
        test_deadline_cancel(svc);
        test_keys_limits(svc);
        dsv4_grpc_stop(g);
    } else {
        CHECKF(false, "server: %s", dsv4_errmsg());
    }
    fake_svc_destroy(svc);
    test_server_stop();
    TEST_DONE();
}
