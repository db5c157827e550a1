/*
 * grpc_engine.h - the methods the gRPC server serves: dsv4.Engine
 * (proto/dsv4.proto) and grpc.health.v1.Health (proto/health.proto), over
 * the service op table (rpc/service.h).  The only users of protobuf-c in
 * rpc/grpc*: requests are decoded and checked here, the service is called
 * here, its results and events are encoded here.
 *
 * Decoding is strict where proto3 is strict and lenient where it is
 * lenient: unknown fields are ignored; string fields (at any depth) must be
 * well-formed UTF-8 and, since protobuf-c hands strings over as C strings,
 * must not contain NUL (both checked on the wire bytes, before unpacking);
 * anything malformed is INVALID_ARGUMENT with a message naming the field.
 */
#ifndef DSV4_RPC_GRPC_ENGINE_H
#define DSV4_RPC_GRPC_ENGINE_H

#include "rpc/grpc_call.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsv4_grpc_method {
    const char *path; /* "/dsv4.Engine/Generate" */
    bool health;      /* grpc.health.v1: open without an API key unless opts.health_needs_key */
    /* Decodes and checks one request message without serving it: 0 or the gRPC code the
     * call would end with (message in dsv4_errmsg()). */
    int (*check)(const uint8_t *msg, size_t len);
    /* Serves the call: 0 when it took charge of the call (finished it or keeps it going),
     * else a gRPC code (message in dsv4_errmsg()) the caller finishes the call with.  Runs
     * on the server's thread. */
    int (*serve)(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len);
};

/* The method of an HTTP/2 :path, or NULL (UNIMPLEMENTED). */
const struct dsv4_grpc_method *dsv4_grpc_engine_method(const char *path, size_t len);

/* Every method, for tests and the fuzz target: *n gets the count. */
const struct dsv4_grpc_method *dsv4_grpc_engine_methods(size_t *n);

/*
 * The gRPC code of a service status (DSV4_E*): EINVAL, EFORMAT -> INVALID_ARGUMENT;
 * ERANGE -> OUT_OF_RANGE at submit (the context), DEADLINE_EXCEEDED in an ERROR event (the
 * only range a running request can leave); ENOSPC, ENOMEM -> RESOURCE_EXHAUSTED; ENOTSUP
 * (draining, not ready) -> UNAVAILABLE; ENOENT -> NOT_FOUND; others -> UNAVAILABLE when
 * retryable, else INTERNAL.
 */
int dsv4_grpc_engine_code(int status, bool in_event, bool retryable);

#endif
