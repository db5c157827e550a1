/*
 * grpc_call.h - what a gRPC method (rpc/grpc_engine.c) sees of the call it
 * serves; implemented by the transport (rpc/grpc.c).  Keeps HTTP/2 out of
 * the methods and protobuf out of the transport.
 *
 * A call is owned by the transport and lives on the server's thread.  A
 * method's serve function gets the one request message and either answers
 * at once (dsv4_grpc_call_send, then dsv4_grpc_call_finish) or keeps the
 * call going:
 *   - polled: dsv4_grpc_call_poll runs a function on the server's thread
 *     every interval until the call ends (health Watch);
 *   - async: dsv4_grpc_call_async gives a handle that other threads (the
 *     service's event callbacks) post messages and one finish through.
 * The call may end before the method finishes it (the client cancels, the
 * deadline passes, the client reads too slowly, the server stops): then the
 * poll function is not called again, and an async handle's cancel hook runs
 * once on the server's thread; posts after that are dropped.  An async
 * handle, and the user memory inside it, stays valid until its finish has
 * been posted (and processed by the server's thread), whatever happens to
 * the call: that is what makes it safe as a service callback context.
 */
#ifndef DSV4_RPC_GRPC_CALL_H
#define DSV4_RPC_GRPC_CALL_H

#include "rpc/grpc.h"
#include "rpc/service.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsv4_grpc_call;
struct dsv4_grpc_async;

/* ---- server's thread only */

struct dsv4_svc *dsv4_grpc_call_svc(const struct dsv4_grpc_call *c);
/* The server's options, defaults filled in. */
const struct dsv4_grpc_opts *dsv4_grpc_call_opts(const struct dsv4_grpc_call *c);
/* Seconds left before the call's deadline (grpc-timeout), or 0 when it has none. */
double dsv4_grpc_call_time_left(const struct dsv4_grpc_call *c);
/* true once dsv4_grpc_stop began: health reports NOT_SERVING. */
bool dsv4_grpc_call_stopping(const struct dsv4_grpc_call *c);
/* Seconds since the server started. */
double dsv4_grpc_call_uptime(const struct dsv4_grpc_call *c);

/* Queues one response message (protobuf bytes, copied).  Ignored once the call ended. */
void dsv4_grpc_call_send(struct dsv4_grpc_call *c, const uint8_t *msg, size_t len);

/* Ends the call with a status and a message (NULL: none); `retryable` adds the trailer
 * "dsv4-retryable: 1".  Ignored once the call ended. */
void dsv4_grpc_call_finish(struct dsv4_grpc_call *c, int code, bool retryable, const char *message);

typedef void (*dsv4_grpc_poll_fn)(struct dsv4_grpc_call *c, void *state);

/* Calls fn(c, state) from the next pass of the loop on, then every interval_s, until the
 * call ends (and once more, at once, when the server begins to stop).  Returns `state`:
 * state_size zeroed bytes owned by the call, for the caller to fill before it returns; NULL
 * when out of memory. */
void *dsv4_grpc_call_poll(struct dsv4_grpc_call *c, double interval_s, size_t state_size,
                          dsv4_grpc_poll_fn fn);

/* Cancel hook of an async handle: runs on the server's thread when the call ends before the
 * handle's finish was posted. */
typedef void (*dsv4_grpc_cancel_fn)(void *user);

/* An async handle with user_size zeroed bytes of user memory (dsv4_grpc_async_user);
 * NULL when out of memory.  At most one per call. */
struct dsv4_grpc_async *dsv4_grpc_call_async(struct dsv4_grpc_call *c, size_t user_size,
                                             dsv4_grpc_cancel_fn cancel);

/* ---- any thread */

void *dsv4_grpc_async_user(struct dsv4_grpc_async *a);

/* Queues one response message (copied); dropped once the call ended. */
void dsv4_grpc_async_send(struct dsv4_grpc_async *a, const uint8_t *msg, size_t len);

/* Queues the end of the call (as dsv4_grpc_call_finish).  Called exactly once per handle, as
 * the last use of `a` (and of its user memory): the server's thread frees it after processing.
 * Never allocates, so the end always gets through. */
void dsv4_grpc_async_finish(struct dsv4_grpc_async *a, int code, bool retryable,
                            const char *message);

#endif
