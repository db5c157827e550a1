/*
 * http_test_server.c - the HTTP front end (rpc/http.h) over the fake
 * service (tests/rpc/fake_svc.h) on 127.0.0.1, for the Python tests
 * (tests/rpc/test_http_*.py).
 *
 * Usage: http_test_server [--delay-ms N] [--max-body N] [--max-header N]
 *          [--max-buffered N] [--listen ADDR] [--listen-fd FD] [--header-timeout S]
 *          [--body-timeout S] [--idle-timeout S]
 *          [--write-timeout S] [--max-conns N] [--threads N]
 *          [--probes-need-key] [--model NAME] [--thinking] [--keys K1,K2]
 * Prints "PORT <n>" once listening (port 0: the kernel picks), then reads
 * commands on stdin, one per line, answering each with one line:
 *   state NAME [WHY...]   the fake's readiness (starting, loading, ..., degraded) -> "ok"
 *   keys [K1,K2,...]      API keys (none: everything authorized)           -> "ok"
 *   running               requests the fake is running                     -> "running N"
 *   submitted             requests submitted so far                        -> "submitted N"
 *   quit (or EOF)         stops the server and exits 0
 */
#include "rpc/http.h"
#include "tests/rpc/fake_svc.h"

#include "base/dsv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(const char *what)
{
    fprintf(stderr, "http_test_server: %s\n", what);
    return 2;
}

static enum dsv4_svc_state state_of(const char *name, bool *ok)
{
    for (int i = 0; i < DSV4_SVC_STATE_COUNT; i++)
        if (!strcmp(name, dsv4_svc_state_name((enum dsv4_svc_state)i))) {
            *ok = true;
            return (enum dsv4_svc_state)i;
        }
    *ok = false;
    return DSV4_SVC_READY;
}

int main(int argc, char **argv)
{
    struct dsv4_http_opts o = {0};
    int delay_ms = 5;
    const char *keys = NULL;
    o.listen = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool flag = !strcmp(a, "--probes-need-key") || !strcmp(a, "--thinking");
        if (!flag && !v)
            return usage("an option is missing its value");
        if (!strcmp(a, "--delay-ms"))
            delay_ms = atoi(v);
        else if (!strcmp(a, "--max-body"))
            o.max_body_bytes = (size_t)atol(v);
        else if (!strcmp(a, "--max-header"))
            o.max_header_bytes = (size_t)atol(v);
        else if (!strcmp(a, "--max-buffered"))
            o.max_buffered_bytes = (size_t)atol(v);
        else if (!strcmp(a, "--listen"))
            o.listen = v;
        else if (!strcmp(a, "--listen-fd"))
            o.listen_fd = atoi(v);
        else if (!strcmp(a, "--header-timeout"))
            o.header_timeout_s = atof(v);
        else if (!strcmp(a, "--body-timeout"))
            o.body_timeout_s = atof(v);
        else if (!strcmp(a, "--idle-timeout"))
            o.idle_timeout_s = atof(v);
        else if (!strcmp(a, "--write-timeout"))
            o.write_timeout_s = atof(v);
        else if (!strcmp(a, "--max-conns"))
            o.max_connections = atoi(v);
        else if (!strcmp(a, "--threads"))
            o.threads = atoi(v);
        else if (!strcmp(a, "--model"))
            o.model_name = v;
        else if (!strcmp(a, "--keys"))
            keys = v;
        else if (!strcmp(a, "--probes-need-key"))
            o.probes_need_key = true;
        else if (!strcmp(a, "--thinking"))
            o.default_thinking = true;
        else
            return usage("unknown option");
        if (!flag)
            i++;
    }
    struct dsv4_svc *svc = fake_svc_create(delay_ms);
    struct dsv4_metrics *m = NULL;
    struct dsv4_http *h = NULL;
    if (!svc || dsv4_metrics_new(&m)) {
        fprintf(stderr, "http_test_server: setup failed: %s\n", dsv4_errmsg());
        return 1;
    }
    if (keys)
        fake_svc_set_keys(svc, keys);
    if (dsv4_http_start(svc, m, &o, &h)) {
        fprintf(stderr, "http_test_server: %s\n", dsv4_errmsg());
        return 1;
    }
    printf("PORT %d\n", dsv4_http_port(h));
    fflush(stdout);
    char line[1024];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        char *arg = strchr(line, ' ');
        if (arg)
            *arg++ = 0;
        if (!strcmp(line, "quit"))
            break;
        if (!strcmp(line, "state")) {
            char *why = arg ? strchr(arg, ' ') : NULL;
            if (why)
                *why++ = 0;
            bool ok;
            enum dsv4_svc_state st = state_of(arg ? arg : "", &ok);
            if (ok)
                fake_svc_set_state(svc, st, why);
            printf("%s\n", ok ? "ok" : "unknown state");
        } else if (!strcmp(line, "keys")) {
            fake_svc_set_keys(svc, arg);
            printf("ok\n");
        } else if (!strcmp(line, "running")) {
            printf("running %d\n", fake_svc_running(svc));
        } else if (!strcmp(line, "submitted")) {
            printf("submitted %llu\n", (unsigned long long)fake_svc_submitted(svc));
        } else {
            printf("unknown command\n");
        }
        fflush(stdout);
    }
    dsv4_http_stop(h);
    fake_svc_destroy(svc);
    dsv4_metrics_free(m);
    return 0;
}
