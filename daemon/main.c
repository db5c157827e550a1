/*
 * main.c - `dsv4d`: the inference daemon (DESIGN.md §1, §5).
 *
 *   dsv4d [--config FILE] [--KEY VALUE ...]   run (supervisor + workers + front ends)
 *   dsv4d --check-config [...]                validate the configuration, print it, exit
 *   dsv4d --version | --help
 *   dsv4d --worker ...                        a worker process (started by the supervisor)
 *
 * The main thread only handles signals and systemd: SIGTERM / SIGINT drain
 * (readiness goes draining at once, running requests get drain_timeout
 * seconds, then dsv4d exits 0), SIGHUP re-reads the reloadable keys
 * (RELOADING=1 ... READY=1 around it); it sends STATUS= on every state
 * change and load progress, EXTEND_TIMEOUT_USEC while loading progresses,
 * READY=1 once the supervisor is ready (after a warm-up step on every
 * rank), WATCHDOG=1 while the supervisor's loop keeps ticking (never when
 * that loop is stuck), and STOPPING=1 on drain.  A drain a client asks for
 * (the gRPC Drain method) is handled as SIGTERM's.  Logs go to stderr with
 * syslog priority prefixes for journald.
 *
 * Exit status: 0 after a drain, 1 when the supervisor could not start or
 * stopped for another reason, 2 for a bad configuration.
 */
#include "dsv4-build.h"

#include "base/dsv4.h"
#include "daemon/config.h"
#include "daemon/frontends.h"
#include "daemon/sd.h"
#include "daemon/sup.h"
#include "daemon/worker.h"
#include "rpc/metrics.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4d [--config FILE] [--KEY VALUE ...]\n"
            "       dsv4d --check-config [--config FILE] [--KEY VALUE ...]\n"
            "       dsv4d --version | --help\n"
            "The configuration file (default %s when it exists) is a JSON object of the keys\n"
            "below; every key is also a flag.\n",
            DSV4D_DEFAULT_CONFIG);
    dsv4d_config_usage(f);
}

/* Parses the command line over the defaults and the file; 0, or 2 after a message. */
static int parse(int argc, char **argv, struct dsv4d_config *c, bool *check)
{
    const char *file = NULL;
    dsv4d_config_defaults(c);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dsv4d: --config needs a file\n");
                return 2;
            }
            file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        }
    }
    if (file || access(DSV4D_DEFAULT_CONFIG, F_OK) == 0) {
        if (dsv4d_config_load(c, file ? file : DSV4D_DEFAULT_CONFIG)) {
            fprintf(stderr, "dsv4d: %s\n", dsv4_errmsg());
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9))
            continue;
        if (!strcmp(a, "--check-config")) {
            *check = true;
            continue;
        }
        int rc = dsv4d_config_flag(c, argc, argv, &i);
        if (rc < 0) {
            fprintf(stderr, "dsv4d: %s\n", dsv4_errmsg());
            return 2;
        }
        if (rc == 0) {
            fprintf(stderr, "dsv4d: unknown option '%s' (dsv4d --help lists them)\n", a);
            return 2;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--worker"))
            return dsv4d_worker_main(argc, argv);
        if (!strcmp(argv[i], "--version")) {
            printf("dsv4d %s\n%s\n", dsv4_version(), dsv4_features());
            return 0;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
    }
    struct dsv4d_config c;
    bool check = false;
    int rc = parse(argc, argv, &c, &check);
    if (rc)
        return rc;
    if (check) {
        /* a configuration without a model is valid (the service waits for one) */
        if (dsv4d_config_check(&c, false)) {
            fprintf(stderr, "dsv4d: %s\n", dsv4_errmsg());
            return 2;
        }
        dsv4d_config_print(&c, stdout);
        if (!c.model[0])
            fprintf(stderr, "dsv4d: configuration valid; no model is set, so dsv4d will not "
                            "start until \"model\" names a checkpoint directory\n");
        return 0;
    }
    if (dsv4d_config_check(&c, true)) {
        fprintf(stderr, "dsv4d: %s\n", dsv4_errmsg());
        return 2;
    }
    dsv4_log_set_syslog(1, "dsv4d");
    setenv("DSV4D_SYSLOG", "1", 1); /* the workers log the same way */
    enum dsv4_log_level lv;
    if (!dsv4_log_parse_level(c.log_level, &lv))
        dsv4_log_set_level(lv);
    /* signals go to this thread only: block them before any thread starts */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int grpc_fd, http_fd;
    dsv4d_sd_listen_fds(&grpc_fd, &http_fd);
    dsv4_log(DSV4_LOG_INFO, "dsv4d %s starting: model %s, %d worker%s on %s", dsv4_version(),
             c.model, c.workers, c.workers > 1 ? "s" : "", c.device);
    dsv4d_sd_status("starting");
    struct dsv4_metrics *metrics = NULL;
    if (dsv4_metrics_new(&metrics)) {
        dsv4_log(DSV4_LOG_ERROR, "%s", dsv4_errmsg());
        return 1;
    }
    struct dsv4d_sup *sup = NULL;
    if (dsv4d_sup_start(&c, metrics, &sup)) {
        dsv4_log(DSV4_LOG_ERROR, "%s", dsv4_errmsg());
        dsv4d_sd_status("failed: %s", dsv4_errmsg());
        return 1;
    }
    /* the loading phase begins here; say so before the loop samples the state (a tiny model
     * can be loaded before its first pass) */
    dsv4d_sd_status("loading: starting %d worker%s", c.workers, c.workers > 1 ? "s" : "");
    dsv4d_sd_extend_timeout(30 * 1000000ull);
    struct dsv4d_frontends *fe = NULL;
    if (dsv4d_frontends_start(&c, dsv4d_sup_svc(sup), metrics, grpc_fd, http_fd, &fe)) {
        dsv4_log(DSV4_LOG_ERROR, "%s", dsv4_errmsg());
        dsv4d_sd_status("failed: %s", dsv4_errmsg());
        dsv4d_sup_free(sup);
        dsv4_metrics_free(metrics);
        return 1;
    }
    uint64_t wd_usec = dsv4d_sd_watchdog_usec();
    double wd_every = wd_usec ? (double)wd_usec / 2e6 : 0, last_wd = 0, last_status = 0;
    uint64_t last_ticks = 0;
    enum dsv4_svc_state last = DSV4_SVC_STARTING;
    bool ready_sent = false, draining = false;
    int exit_code = 1;
    for (;;) {
        struct timespec ts = {0, 100 * 1000000L};
        int sig = sigtimedwait(&set, NULL, &ts);
        double now = dsv4_now();
        if (sig == SIGTERM || sig == SIGINT) {
            if (!draining) {
                dsv4_log(DSV4_LOG_INFO, "%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                dsv4d_sd_stopping();
                dsv4d_sup_drain(sup);
                draining = true;
            }
        } else if (sig == SIGHUP) {
            struct dsv4d_config fresh;
            bool ck = false;
            dsv4d_sd_reloading();
            if (parse(argc, argv, &fresh, &ck) == 0 && dsv4d_config_check(&fresh, true) == 0) {
                char changed[512];
                dsv4d_sup_reload(sup, &fresh, changed, sizeof changed);
                dsv4_log(DSV4_LOG_INFO, "SIGHUP: reloaded %s", changed[0] ? changed : "nothing");
            } else {
                dsv4_log(DSV4_LOG_ERROR, "SIGHUP: configuration not reloaded: %s", dsv4_errmsg());
            }
            if (ready_sent)
                dsv4d_sd_ready();
        }
        /* a drain a client asked for (gRPC Drain) ends the process as SIGTERM does; the
         * flag, not the state, tells: DRAINING may last less than one pass of this loop */
        if (!draining && dsv4d_sup_drain_requested(sup)) {
            dsv4_log(DSV4_LOG_INFO, "drain requested by a client: draining");
            dsv4d_sd_stopping();
            draining = true;
        }
        char why[256], prog[256];
        enum dsv4_svc_state st = dsv4d_sup_state(sup, why, sizeof why);
        dsv4d_sup_progress(sup, prog, sizeof prog);
        if (st != last || (prog[0] && now - last_status > 1.0)) {
            if (prog[0]) {
                dsv4d_sd_status("%s", prog);
                dsv4d_sd_extend_timeout(30 * 1000000ull); /* still progressing */
            } else {
                dsv4d_sd_status("%s%s%s", dsv4_svc_state_name(st), why[0] ? ": " : "", why);
            }
            last = st;
            last_status = now;
        }
        if (st == DSV4_SVC_WARMING)
            dsv4d_sd_extend_timeout(30 * 1000000ull);
        if (st == DSV4_SVC_READY && !ready_sent) {
            dsv4d_sd_ready();
            ready_sent = true;
            dsv4_log(DSV4_LOG_INFO, "ready");
        }
        /* the watchdog: only while the supervisor's loop advances */
        uint64_t ticks = dsv4d_sup_ticks(sup);
        if (wd_every > 0 && now - last_wd >= wd_every && ticks != last_ticks) {
            dsv4d_sd_watchdog();
            last_wd = now;
            last_ticks = ticks;
        }
        if (st == DSV4_SVC_STOPPED) {
            exit_code = draining ? 0 : 1;
            break;
        }
    }
    dsv4d_frontends_stop(fe);
    dsv4d_sup_free(sup);
    dsv4_metrics_free(metrics);
    dsv4_log(DSV4_LOG_INFO, "stopped");
    return exit_code;
}
