/*
 * dsv4.h - status codes, error messages, assertions and logging shared by
 * every module of the project.
 *
 * Fallible functions return 0 or a negative DSV4_E* status and, where a
 * caller needs to know more, record a precise human-readable message with
 * dsv4_error(); the message is thread-local and stays valid until the same
 * thread records another one.  Broken invariants are not errors: they abort
 * through DSV4_ASSERT, also in release builds.
 */
#ifndef DSV4_DSV4_H
#define DSV4_DSV4_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dsv4_status {
    DSV4_OK = 0,
    DSV4_EINVAL = -1,    /* invalid argument or request */
    DSV4_ENOMEM = -2,    /* out of memory */
    DSV4_EIO = -3,       /* read/write/mmap failed */
    DSV4_EFORMAT = -4,   /* malformed file or message */
    DSV4_ENOENT = -5,    /* file, tensor or key missing */
    DSV4_ERANGE = -6,    /* value or offset out of range */
    DSV4_ENOTSUP = -7,   /* valid but not supported */
    DSV4_EMISMATCH = -8, /* data disagrees with its description */
    DSV4_EEXIST = -9,    /* already exists */
    DSV4_ENOSPC = -10,   /* no space left on device */
    DSV4_EINTERNAL = -11 /* bug: should not happen */
};

/* Short name of a status ("invalid argument"); never NULL. */
const char *dsv4_strerror(int status);

/* Records a formatted message for this thread and returns `status`, so that
 * error paths read `return dsv4_error(DSV4_EFORMAT, "...", ...);`. */
int dsv4_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts "<context>: " (printf-formatted) in front of the message a failing
 * callee recorded (its status name when it recorded none) and returns
 * `status`: `return dsv4_error_ctx(rc, "reading %s", path);`. */
int dsv4_error_ctx(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message recorded last on this thread ("" if none). */
const char *dsv4_errmsg(void);

/* Clears the thread's message. */
void dsv4_error_clear(void);

/* Aborts with file:line and the expression when `cond` is false. */
#define DSV4_ASSERT(cond)                                \
    do {                                                 \
        if (!(cond))                                     \
            dsv4_assert_fail(#cond, __FILE__, __LINE__); \
    } while (0)

__attribute__((noreturn)) void dsv4_assert_fail(const char *expr, const char *file, int line);

enum dsv4_log_level {
    DSV4_LOG_DEBUG = 0,
    DSV4_LOG_INFO = 1,
    DSV4_LOG_WARN = 2,
    DSV4_LOG_ERROR = 3
};

/* Logs to stderr with a level prefix; messages under the threshold (default
 * INFO, or DSV4_LOG=debug|info|warn|error from the environment) are dropped. */
void dsv4_log(enum dsv4_log_level level, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
void dsv4_log_set_level(enum dsv4_log_level level);
/* Syslog mode (daemons): lines "<prio>tag: message" that journald understands; tag names
 * the process ("dsv4d", "dsv4d[rank 1]").  Off: "tag level: message". */
void dsv4_log_set_syslog(int on, const char *tag);
/* "debug" | "info" | "warn" | "error" -> level; DSV4_EINVAL otherwise. */
int dsv4_log_parse_level(const char *s, enum dsv4_log_level *out);

/* Monotonic clock in seconds. */
double dsv4_now(void);

/* Version and the configure feature summary, as printed by --version. */
const char *dsv4_version(void);
const char *dsv4_features(void);

#define DSV4_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DSV4_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define DSV4_MAX(a, b)    ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif

#endif
