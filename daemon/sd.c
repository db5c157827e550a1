/*
 * sd.c - systemd notifications and socket activation (see daemon/sd.h).
 *
 * With libsystemd: sd_notifyf / sd_watchdog_enabled / sd_listen_fds_with_names.
 * Without it (a build for another init), everything is a no-op and no fd is
 * inherited, which is what dsv4d needs outside systemd anyway.
 */
#include "dsv4-build.h"
#include "daemon/sd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_SYSTEMD
#include <stdlib.h>
#include <systemd/sd-daemon.h>

void dsv4d_sd_ready(void)
{
    sd_notify(0, "READY=1");
}

void dsv4d_sd_status(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sd_notifyf(0, "STATUS=%s", msg);
}

void dsv4d_sd_extend_timeout(uint64_t usec)
{
    sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
}

void dsv4d_sd_watchdog(void)
{
    sd_notify(0, "WATCHDOG=1");
}

void dsv4d_sd_stopping(void)
{
    sd_notify(0, "STOPPING=1");
}

void dsv4d_sd_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
}

uint64_t dsv4d_sd_watchdog_usec(void)
{
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

void dsv4d_sd_listen_fds(int *grpc_fd, int *http_fd)
{
    char **names = NULL;
    *grpc_fd = *http_fd = -1;
    int n = sd_listen_fds_with_names(1, &names);
    for (int i = 0; i < n; i++) {
        const char *nm = names && names[i] ? names[i] : "";
        if (!strcmp(nm, "grpc") && *grpc_fd < 0)
            *grpc_fd = SD_LISTEN_FDS_START + i;
        else if (!strcmp(nm, "http") && *http_fd < 0)
            *http_fd = SD_LISTEN_FDS_START + i;
        else if (n == 2 && i < 2 && !nm[0]) /* unnamed: gRPC first, then HTTP */
            *(i == 0 ? grpc_fd : http_fd) = SD_LISTEN_FDS_START + i;
    }
    if (names)
        for (int i = 0; i < n; i++)
            free(names[i]);
    free(names);
}
#else
void dsv4d_sd_ready(void)
{
}

void dsv4d_sd_status(const char *fmt, ...)
{
    (void)fmt;
}

void dsv4d_sd_extend_timeout(uint64_t usec)
{
    (void)usec;
}

void dsv4d_sd_watchdog(void)
{
}

void dsv4d_sd_stopping(void)
{
}

void dsv4d_sd_reloading(void)
{
}

uint64_t dsv4d_sd_watchdog_usec(void)
{
    return 0;
}

void dsv4d_sd_listen_fds(int *grpc_fd, int *http_fd)
{
    *grpc_fd = *http_fd = -1;
}
#endif
