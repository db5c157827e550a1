/*
 * grpc.h - the gRPC front end of dsv4d (DESIGN.md §5): serves the engine
 * service `dsv4.Engine` (proto/dsv4.proto) and `grpc.health.v1.Health`
 * (proto/health.proto) over the service op table of rpc/service.h, to any
 * standard gRPC client, over HTTP/2 cleartext with prior knowledge.
 *
 * A server runs one thread of its own: an event loop over the listening
 * socket, its connections and an eventfd through which the service's event
 * threads hand over the output of running requests.  Every call of this
 * header is made from the thread that owns the server (the daemon's main
 * thread); the service's ops are called from the server's thread.
 *
 * Limits hold whatever clients send: a request message beyond max_message
 * bytes gets RESOURCE_EXHAUSTED; a connection beyond max_connections is
 * closed at once; streams beyond max_streams on a connection are refused
 * (RST_STREAM REFUSED_STREAM, which clients retry); a client that does not
 * send its preface within handshake_timeout_s, or that stays without calls
 * or traffic for idle_timeout_s, is disconnected; a stream whose reader
 * falls max_stream_buffer bytes behind is ended with RESOURCE_EXHAUSTED and
 * its request cancelled.  The engine is never blocked by a slow client.
 */
#ifndef DSV4_RPC_GRPC_H
#define DSV4_RPC_GRPC_H

#include "rpc/service.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Options; zero (or a NULL pointer to the whole struct) means the default. */
struct dsv4_grpc_opts {
    const char *listen;         /* "HOST:PORT", "[V6]:PORT"; NULL: "127.0.0.1:50051";
                                   port 0 binds a free port (see dsv4_grpc_port) */
    int listen_fd;              /* > 0: an already listening stream socket (systemd
                                   socket activation: fds from 3); borrowed, not closed;
                                   `listen` is then ignored */
    size_t max_message;         /* request message bytes; 0: 4 MiB */
    int max_streams;            /* concurrent streams per connection; 0: 256 */
    int max_connections;        /* 0: 1024 */
    double handshake_timeout_s; /* the client's preface and SETTINGS within; 0: 10 */
    double idle_timeout_s;      /* a connection without calls (or whose socket does not
                                   drain) for this long is closed; 0: 300 */
    double drain_timeout_s;     /* dsv4_grpc_stop lets running calls finish this long;
                                   0: 30; < 0: cancels them at once */
    size_t max_stream_buffer;   /* output bytes a stream may hold for a slow reader;
                                   0: 1 MiB */
    int32_t default_max_tokens; /* Generate without max_new_tokens; 0: 256 */
    bool health_needs_key;      /* grpc.health.v1 also needs an API key (default: open,
                                   as probes carry none) */
};

struct dsv4_grpc;

/*
 * Binds (or adopts listen_fd), starts the server's thread and returns the
 * server in *out.  `svc` is borrowed and must outlive dsv4_grpc_stop.
 * Errors: DSV4_EINVAL (bad options or address), DSV4_EIO (bind/listen or
 * thread creation failed; the message names the address), DSV4_ENOMEM.
 */
int dsv4_grpc_start(struct dsv4_svc *svc, const struct dsv4_grpc_opts *o, struct dsv4_grpc **out);

/* The TCP port the server listens on (useful after port 0). */
int dsv4_grpc_port(const struct dsv4_grpc *g);

/*
 * Graceful stop, then frees the server (NULL is a no-op): stops accepting,
 * sends GOAWAY on every connection, turns health to NOT_SERVING and ends
 * Watch streams, lets running calls finish for drain_timeout_s, then ends
 * the rest with UNAVAILABLE (cancelling their requests in the service), and
 * waits (at most a few seconds) for the service's last events.  If the
 * service never ends a cancelled request, the small state its callback
 * needs is left allocated rather than freed under it (logged).
 */
void dsv4_grpc_stop(struct dsv4_grpc *g);

#endif
