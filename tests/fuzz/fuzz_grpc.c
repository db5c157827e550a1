/*
 * fuzz_grpc.c - fuzz target of what the gRPC server does with a request
 * body's bytes (rpc/grpc_wire.h, rpc/grpc_engine.h): the length-prefixed
 * framing, fed in pieces of a size the input chooses, and the protobuf
 * decoding and checking of each complete message by the method the input
 * chooses; plus the header-value parsers on the same bytes.
 *
 * Input: byte 0 picks the method, byte 1 the piece size (1..64), byte 2 the
 * message size limit (64 << 0..7 bytes); the rest is the body.  Any input
 * must give gRPC codes in range, never crash, leak or read out of bounds;
 * percent-encoding must round-trip and sanitized text must be valid UTF-8.
 */
#include "base/dsv4.h"
#include "rpc/grpc_engine.h"
#include "rpc/grpc_wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_msg(void *arg, const uint8_t *msg, size_t len)
{
    const struct dsv4_grpc_method *m = arg;
    int code = m->check(msg, len);
    DSV4_ASSERT(code >= 0 && code < DSV4_GRPC_CODE_COUNT);
    return 0;
}

static void header_values(const uint8_t *p, size_t n)
{
    double s;
    const char *key;
    size_t klen, k;
    char enc[3 * 64 + 1], back[3 * 64 + 1];

    n = DSV4_MIN(n, 64);
    if (dsv4_grpc_timeout_parse((const char *)p, n, &s) == 0)
        DSV4_ASSERT(s >= 0 && s <= 99999999.0 * 3600);
    if (dsv4_grpc_bearer((const char *)p, n, &key, &klen))
        DSV4_ASSERT(key >= (const char *)p && key + klen <= (const char *)p + n);
    k = dsv4_grpc_percent_encode((const char *)p, n, enc, sizeof(enc));
    DSV4_ASSERT(k < sizeof(enc));
    memcpy(back, enc, k + 1);
    k = dsv4_grpc_percent_decode(back, k);
    DSV4_ASSERT(k == n && !memcmp(back, p, n));
    char *clean = dsv4_grpc_utf8_sanitize((const char *)p, n, &k);
    if (clean) {
        DSV4_ASSERT(dsv4_grpc_utf8_ok(clean, k));
        if (dsv4_grpc_utf8_ok((const char *)p, n))
            DSV4_ASSERT(k == n && !memcmp(clean, p, n));
        free(clean);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t nm;
    const struct dsv4_grpc_method *all = dsv4_grpc_engine_methods(&nm);
    struct dsv4_grpc_reader r;

    if (size < 3)
        return 0;
    const struct dsv4_grpc_method *m = &all[data[0] % nm];
    size_t piece = 1 + data[1] % 64;
    size_t max = (size_t)64 << (data[2] % 8);
    const uint8_t *body = data + 3;
    size_t n = size - 3;

    header_values(body, n);
    dsv4_grpc_reader_init(&r, max);
    int code = 0;
    for (size_t off = 0; off < n && !code; off += piece) {
        code = dsv4_grpc_reader_feed(&r, body + off, DSV4_MIN(piece, n - off), on_msg, (void *)m);
        DSV4_ASSERT(code >= 0 && code < DSV4_GRPC_CODE_COUNT);
        DSV4_ASSERT(r.cap <= max);
    }
    code = dsv4_grpc_reader_end(&r);
    DSV4_ASSERT(code >= 0 && code < DSV4_GRPC_CODE_COUNT);
    dsv4_grpc_reader_free(&r);
    /* the whole body as one message, whatever its framing */
    code = m->check(body, n);
    DSV4_ASSERT(code >= 0 && code < DSV4_GRPC_CODE_COUNT);
    return 0;
}
