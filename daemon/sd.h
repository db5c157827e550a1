/*
 * sd.h - what dsv4d tells systemd (the only place that knows libsystemd):
 * sd_notify READY / STATUS / EXTEND_TIMEOUT_USEC / WATCHDOG / STOPPING /
 * RELOADING, the watchdog interval, and socket-activated listening fds.
 * Every call is a no-op without NOTIFY_SOCKET (or without libsystemd in the
 * build), so the daemon runs the same in a terminal.
 */
#ifndef DSV4D_SD_H
#define DSV4D_SD_H

#include <stdint.h>

void dsv4d_sd_ready(void);
void dsv4d_sd_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Asks the service manager for usec more of start (or stop) time. */
void dsv4d_sd_extend_timeout(uint64_t usec);
void dsv4d_sd_watchdog(void);
void dsv4d_sd_stopping(void);
/* RELOADING=1 with MONOTONIC_USEC, and READY=1 once the reload is done. */
void dsv4d_sd_reloading(void);
/* WATCHDOG_USEC for this process, 0 when the watchdog is off. */
uint64_t dsv4d_sd_watchdog_usec(void);
/*
 * Listening sockets passed by socket activation, matched by FileDescriptorName
 * ("grpc", "http"); -1 when none was passed for that name.  Call once, early
 * (it reads and unsets LISTEN_FDS).
 */
void dsv4d_sd_listen_fds(int *grpc_fd, int *http_fd);

#endif
