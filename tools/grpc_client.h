/*
 * grpc_client.h - a small gRPC client (HTTP/2 cleartext with prior knowledge,
 * nghttp2's client API) for the project's tools: dsv4ctl, and later the
 * load generator of `dsv4 bench`.  It speaks bytes: requests and responses
 * are serialized protobuf messages that the caller encodes and decodes (the
 * codecs stay with the callers; nghttp2 stays in grpc_client.c).
 *
 * A connection (struct dsv4_gc) carries any number of concurrent calls, each
 * an HTTP/2 stream: unary and server-streaming calls are the same here (one
 * request message; every response message goes to the call's message
 * callback), and each ends with one status: the server's grpc-status and
 * grpc-message trailers, or a status the client made up for what went wrong
 * on its side (the deadline passed: DEADLINE_EXCEEDED; the connection broke:
 * UNAVAILABLE; a response beyond max_message: RESOURCE_EXHAUSTED; a broken
 * response: INTERNAL), as other gRPC clients do.
 *
 * Threads: a connection belongs to one thread at a time; nothing here
 * blocks except dsv4_gc_run (and the helpers built on it), which processes
 * the connection's I/O and calls the callbacks from inside.  For load from
 * several threads, open a connection per thread (or several streams on one).
 *
 * Invariants: every started call gets exactly one done callback, from
 * inside dsv4_gc_run (or dsv4_gc_close, for calls still open then), after
 * its last message callback; its handle is freed right after that callback.
 * A connection that failed stays failed: every later call ends UNAVAILABLE.
 */
#ifndef DSV4_TOOLS_GRPC_CLIENT_H
#define DSV4_TOOLS_GRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsv4_gc;
struct dsv4_gc_call;

struct dsv4_gc_opts {
    const char *target;       /* "HOST:PORT" or "[V6]:PORT"; NULL: "127.0.0.1:50051" */
    const char *api_key;      /* sent as "authorization: Bearer KEY"; NULL or "": none */
    double connect_timeout_s; /* TCP connect; 0: 10 */
    size_t max_message;       /* largest response message accepted; 0: 64 MiB */
};

/* How a call ended. */
struct dsv4_gc_status {
    int code;          /* a gRPC status code (rpc/grpc_wire.h: DSV4_GRPC_OK = 0, ...) */
    bool retryable;    /* the server's "dsv4-retryable: 1" trailer, or a transport failure
                          another server (or a reconnect) may cure */
    char message[512]; /* grpc-message (percent-decoded), or the client's cause */
};

/* Options of one call; zero (or a NULL pointer) for the defaults. */
struct dsv4_gc_call_opts {
    double timeout_s;            /* > 0: the deadline (sent as grpc-timeout, and enforced
                                    here: the call ends DEADLINE_EXCEEDED); 0: none */
    const char *const *metadata; /* NULL, or name, value, name, value, ..., NULL: extra
                                    request headers (names lowercase [a-z0-9_.-], not
                                    "grpc-*"; values printable ASCII) */
};

/* Each response message of a call (valid during the callback).  Return 0 to go on, or
 * non-zero to cancel the call (it then ends CANCELLED).  May start or cancel calls. */
typedef int (*dsv4_gc_msg_fn)(void *arg, const uint8_t *msg, size_t len);
/* The end of a call (once per call, its last callback).  May start or cancel calls. */
typedef void (*dsv4_gc_done_fn)(void *arg, const struct dsv4_gc_status *st);

/*
 * Resolves the target and connects (waiting at most connect_timeout_s); the HTTP/2
 * preface goes out with the first call.  Errors: DSV4_EINVAL (a malformed target),
 * DSV4_EIO (no address, refused, unreachable, timed out: the message names the target
 * and the cause), DSV4_ENOMEM.
 */
int dsv4_gc_connect(const struct dsv4_gc_opts *o, struct dsv4_gc **out);

/* Checks the form of a target as dsv4_gc_connect does, without resolving it (for option
 * parsers): 0, or DSV4_EINVAL with the message dsv4_gc_connect would give. */
int dsv4_gc_target_check(const char *target);

/* Ends the calls still open (done callbacks with CANCELLED), closes and frees; NULL is a
 * no-op.  Not from inside a callback. */
void dsv4_gc_close(struct dsv4_gc *c);

/* The target as given (or the default). */
const char *dsv4_gc_target(const struct dsv4_gc *c);

/*
 * Starts a call of `path` ("/dsv4.Engine/Generate") with one request message (copied).
 * The request goes out during the next dsv4_gc_run.  *out (may be NULL) gets the call's
 * handle, valid until its done callback returns.  Returns 0, DSV4_EINVAL (a bad path or
 * metadata: nothing started) or DSV4_ENOMEM; on a failed connection the call starts and
 * ends UNAVAILABLE at the next dsv4_gc_run.
 */
int dsv4_gc_start(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                  const struct dsv4_gc_call_opts *co, dsv4_gc_msg_fn on_msg,
                  dsv4_gc_done_fn on_done, void *arg, struct dsv4_gc_call **out);

/* Cancels a call (RST_STREAM CANCEL): no message callback follows; its done callback
 * (CANCELLED, "cancelled by the client") comes from the next dsv4_gc_run.  Calling it
 * again before then is a no-op. */
void dsv4_gc_cancel(struct dsv4_gc_call *call);

/*
 * Processes I/O and calls the callbacks until no call is open, max_wait_s seconds passed
 * (< 0: no limit; 0: what is ready now, without waiting), or a signal interrupted the wait
 * (so that a caller can look at its flags).  Returns the number of calls still open (0:
 * all done), or DSV4_EIO once the connection failed (every open call then ended
 * UNAVAILABLE, callbacks made).  Not from inside a callback.
 */
int dsv4_gc_run(struct dsv4_gc *c, double max_wait_s);

/* Calls still open on c. */
int dsv4_gc_open_calls(const struct dsv4_gc *c);

/* ---- blocking helpers (dsv4_gc_start + dsv4_gc_run); both fill *st however they end */

/*
 * A unary call: *resp (malloc'ed, caller frees; NULL when len 0) and *resp_len get the
 * one response message.  Returns 0 when the call ended OK with exactly one message;
 * otherwise DSV4_EIO (or DSV4_EINVAL / DSV4_ENOMEM as dsv4_gc_start) with the status in
 * *st and "CODE: message" recorded (dsv4_errmsg).  A signal does not end the wait.
 */
int dsv4_gc_unary(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                  const struct dsv4_gc_call_opts *co, uint8_t **resp, size_t *resp_len,
                  struct dsv4_gc_status *st);

/* A server-streaming call: fn gets each message (non-zero return cancels).  Returns as
 * dsv4_gc_unary does. */
int dsv4_gc_stream(struct dsv4_gc *c, const char *path, const uint8_t *req, size_t len,
                   const struct dsv4_gc_call_opts *co, dsv4_gc_msg_fn fn, void *arg,
                   struct dsv4_gc_status *st);

/* Writes a grpc-timeout value for `seconds` (> 0): the finest unit whose count fits in 8
 * digits ("250m", "30S", "12000000M"); out has at least 16 bytes.  For tests. */
void dsv4_gc_timeout_value(double seconds, char *out, size_t outlen);

#endif
