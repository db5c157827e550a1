/*
 * error.c - status strings, the thread-local error message, assertions,
 * logging and the clock (see dsv4.h).
 */
#include "dsv4-build.h"
#include "base/dsv4.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static _Thread_local char errbuf[1024];

const char *dsv4_strerror(int status)
{
    switch (status) {
    case DSV4_OK:
        return "success";
    case DSV4_EINVAL:
        return "invalid argument";
    case DSV4_ENOMEM:
        return "out of memory";
    case DSV4_EIO:
        return "input/output error";
    case DSV4_EFORMAT:
        return "malformed data";
    case DSV4_ENOENT:
        return "not found";
    case DSV4_ERANGE:
        return "out of range";
    case DSV4_ENOTSUP:
        return "not supported";
    case DSV4_EMISMATCH:
        return "mismatch";
    case DSV4_EEXIST:
        return "already exists";
    case DSV4_ENOSPC:
        return "no space left on device";
    case DSV4_EINTERNAL:
        return "internal error";
    default:
        return "unknown error";
    }
}

int dsv4_error(int status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    return status;
}

int dsv4_error_ctx(int status, const char *fmt, ...)
{
    char msg[sizeof(errbuf)], ctx[sizeof(errbuf)];
    va_list ap;

    snprintf(msg, sizeof(msg), "%s", errbuf[0] ? errbuf : dsv4_strerror(status));
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof(ctx), fmt, ap);
    va_end(ap);
    return dsv4_error(status, "%s: %s", ctx, msg);
}

const char *dsv4_errmsg(void)
{
    return errbuf;
}

void dsv4_error_clear(void)
{
    errbuf[0] = '\0';
}

void dsv4_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "dsv4: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

/* The threshold: -1 until the first log call reads DSV4_LOG.  Atomic because any thread may
 * log first (the HTTP and gRPC loops, the pool's workers) and the daemon sets it while
 * others run; the reads and the one-time setup race harmlessly (every thread computes the
 * same value from the environment). */
static _Atomic int log_level = -1;

static int log_threshold(void)
{
    int v = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("DSV4_LOG");
        v = DSV4_LOG_INFO;
        if (e && !strcasecmp(e, "debug"))
            v = DSV4_LOG_DEBUG;
        else if (e && !strcasecmp(e, "warn"))
            v = DSV4_LOG_WARN;
        else if (e && !strcasecmp(e, "error"))
            v = DSV4_LOG_ERROR;
        int unset = -1;
        if (!atomic_compare_exchange_strong(&log_level, &unset, v))
            v = unset;
    }
    return v;
}

void dsv4_log_set_level(enum dsv4_log_level level)
{
    atomic_store(&log_level, (int)level);
}

static int log_syslog;
static char log_tag[64] = "dsv4";

void dsv4_log_set_syslog(int on, const char *tag)
{
    log_syslog = on;
    snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "dsv4");
}

int dsv4_log_parse_level(const char *s, enum dsv4_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && !strcasecmp(s, names[i])) {
            *out = (enum dsv4_log_level)i;
            return 0;
        }
    return dsv4_error(DSV4_EINVAL, "log level '%s' is not debug, info, warn or error", s ? s : "");
}

void dsv4_log(enum dsv4_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[2048];
    va_list ap;

    if ((int)level < log_threshold())
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One write per line so that lines of concurrent threads do not interleave.  In
     * syslog mode the line starts with its priority (<7> debug .. <3> err), which journald
     * and systemd's stderr capture understand. */
    static const int prio[] = {7, 6, 4, 3};
    if (log_syslog)
        fprintf(stderr, "<%d>%s: %s\n", prio[level], log_tag, line);
    else
        fprintf(stderr, "%s %s: %s\n", log_tag, names[level], line);
}

double dsv4_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *dsv4_version(void)
{
    return PACKAGE_VERSION;
}

const char *dsv4_features(void)
{
    return DSV4_FEATURES;
}
