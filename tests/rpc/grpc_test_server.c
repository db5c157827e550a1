/*
 * grpc_test_server.c - the gRPC server over the fake service
 * (tests/rpc/fake_svc.h), on 127.0.0.1 and a free port, for tests that
 * drive it with real gRPC clients (tests/rpc/test_grpc.py).
 *
 * Prints "port N" once it listens, then reads one command per line on
 * stdin and answers each with one line:
 *   state NAME [WHY]  set the fake's readiness (starting ... degraded)  -> "ok"
 *   keys [K1,K2]      set the API keys (none: every call authorized)     -> "ok"
 *   running           requests running in the fake                        -> "running N"
 *   submitted         requests submitted so far                           -> "submitted N"
 *   stop              graceful stop (dsv4_grpc_stop), then exit 0          -> "stopped"
 * End of input stops the same way.  A watchdog ends the process after
 * --lifetime seconds (default 300), so a lost test never leaves it behind.
 *
 * Options: --delay-ms N (fake token interval, default 1), --max-message N,
 * --max-streams N, --max-connections N, --handshake S, --idle S, --drain S,
 * --stream-buffer N, --default-max-tokens N, --health-key, --lifetime S.
 */
#include "base/dsv4.h"
#include "rpc/grpc.h"
#include "tests/rpc/fake_svc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *states[] = {"starting", "loading", "warming", "ready",
                               "draining", "stopped", "degraded"};

static int usage(const char *why)
{
    fprintf(stderr, "grpc_test_server: %s\n", why);
    return 2;
}

static bool num(const char *s, double lo, double hi, double *v)
{
    char *end;
    *v = strtod(s, &end);
    return *s && !*end && *v >= lo && *v <= hi;
}

int main(int argc, char **argv)
{
    struct dsv4_grpc_opts o;
    int delay_ms = 1;
    double lifetime = 300, v;
    memset(&o, 0, sizeof(o));
    o.listen = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--health-key")) {
            o.health_needs_key = true;
            continue;
        }
        if (i + 1 >= argc)
            return usage("option without a value");
        const char *val = argv[++i];
        if (!num(val, 0, 1e12, &v))
            return usage("bad number");
        if (!strcmp(a, "--delay-ms"))
            delay_ms = (int)v;
        else if (!strcmp(a, "--max-message"))
            o.max_message = (size_t)v;
        else if (!strcmp(a, "--max-streams"))
            o.max_streams = (int)v;
        else if (!strcmp(a, "--max-connections"))
            o.max_connections = (int)v;
        else if (!strcmp(a, "--handshake"))
            o.handshake_timeout_s = v;
        else if (!strcmp(a, "--idle"))
            o.idle_timeout_s = v;
        else if (!strcmp(a, "--drain"))
            o.drain_timeout_s = v > 0 ? v : -1;
        else if (!strcmp(a, "--stream-buffer"))
            o.max_stream_buffer = (size_t)v;
        else if (!strcmp(a, "--default-max-tokens"))
            o.default_max_tokens = (int32_t)v;
        else if (!strcmp(a, "--lifetime"))
            lifetime = v;
        else
            return usage("unknown option");
    }
    alarm((unsigned)lifetime);

    struct dsv4_svc *svc = fake_svc_create(delay_ms);
    struct dsv4_grpc *g;
    if (!svc)
        return usage("cannot create the fake service");
    if (dsv4_grpc_start(svc, &o, &g)) {
        fprintf(stderr, "grpc_test_server: %s\n", dsv4_errmsg());
        fake_svc_destroy(svc);
        return 1;
    }
    printf("port %d\n", dsv4_grpc_port(g));
    fflush(stdout);

    char line[1024];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        char *arg = strchr(line, ' ');
        if (arg)
            *arg++ = 0;
        if (!strcmp(line, "state") && arg) {
            char *why = strchr(arg, ' ');
            int st = -1;
            if (why)
                *why++ = 0;
            for (int k = 0; k < (int)DSV4_ARRAY_LEN(states); k++)
                if (!strcmp(arg, states[k]))
                    st = k;
            if (st < 0) {
                printf("error unknown state\n");
            } else {
                fake_svc_set_state(svc, (enum dsv4_svc_state)st, why);
                printf("ok\n");
            }
        } else if (!strcmp(line, "keys")) {
            fake_svc_set_keys(svc, arg ? arg : "");
            printf("ok\n");
        } else if (!strcmp(line, "running")) {
            printf("running %d\n", fake_svc_running(svc));
        } else if (!strcmp(line, "submitted")) {
            printf("submitted %llu\n", (unsigned long long)fake_svc_submitted(svc));
        } else if (!strcmp(line, "stop")) {
            break;
        } else {
            printf("error unknown command\n");
        }
        fflush(stdout);
    }
    dsv4_grpc_stop(g);
    printf("stopped\n");
    fflush(stdout);
    fake_svc_destroy(svc);
    return 0;
}
