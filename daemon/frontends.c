/*
 * frontends.c - starting and stopping dsv4d's front ends (daemon/frontends.h).
 *
 * The gRPC and HTTP servers are built in rpc/ and wired in here as they
 * land; until then the supervisor serves only through its service table
 * (tests drive it in process), and this says so in the log.
 */
#include "daemon/frontends.h"

#include "base/dsv4.h"

#include <stdlib.h>

struct dsv4d_frontends {
    int unused;
};

int dsv4d_frontends_start(const struct dsv4d_config *c, struct dsv4_svc *svc, int grpc_fd,
                          int http_fd, struct dsv4d_frontends **out)
{
    (void)svc;
    (void)grpc_fd;
    (void)http_fd;
    *out = calloc(1, sizeof **out);
    if (!*out)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    dsv4_log(DSV4_LOG_WARN, "front ends not in this build yet: gRPC %s and HTTP %s not served",
             c->grpc_listen, c->http_listen);
    return 0;
}

void dsv4d_frontends_stop(struct dsv4d_frontends *f)
{
    free(f);
}
