/*
 * service.c - names of the service's readiness states (rpc/service.h).
 */
#include "rpc/service.h"

const char *dsv4_svc_state_name(enum dsv4_svc_state s)
{
    static const char *names[DSV4_SVC_STATE_COUNT] = {"starting", "loading", "warming", "ready",
                                                      "draining", "stopped", "degraded"};
    return (unsigned)s < DSV4_SVC_STATE_COUNT ? names[s] : "unknown";
}
