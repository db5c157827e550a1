/*
 * dsv4ctl.h - what the files of `dsv4ctl` (the command-line client of dsv4d,
 * DESIGN.md §5) share: the global options, the connection, the protobuf
 * codec around tools/grpc_client.h, option-value parsing and the one way
 * errors are reported.  Internal to dsv4ctl; prefix ctl_.
 *
 * Exit status, the same for every command: 0 success, 1 a server or
 * transport error (one line on stderr naming the cause, "UNAVAILABLE: ..."),
 * 2 bad usage.  With --json each result is one JSON object on one line of
 * stdout, and an error is also one object {"error": {"code", "message"}}.
 */
#ifndef DSV4_TOOLS_DSV4CTL_H
#define DSV4_TOOLS_DSV4CTL_H

#include "tools/grpc_client.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CTL_DEFAULT_TARGET "127.0.0.1:50051"
#define CTL_UNARY_TIMEOUT  10.0 /* seconds, unary calls without --timeout */
#define CTL_EXIT_FAIL      1
#define CTL_EXIT_USAGE     2

struct cJSON;

struct ctl {
    const char *target;  /* --target HOST:PORT */
    const char *api_key; /* --api-key, else $DSV4_API_KEY; NULL: none */
    double timeout_s;    /* --timeout SEC; 0: the command's default */
    bool json;           /* --json */
    const char *cmd;     /* the command's name, for messages */
    struct dsv4_gc *gc;  /* connected by ctl_connect */
};

/* A global option at argv[*i] (--target, --api-key, --timeout, --json, also as
 * --opt=value): 1 taken (*i advanced past its value), 0 not a global option, -1 a usage
 * error (message printed). */
int ctl_global_opt(struct ctl *x, int argc, char **argv, int *i);

/* ---- messages and exit codes */

/* A usage error of the current command: prints "dsv4ctl CMD: ..." and returns 2. */
int ctl_usage_error(struct ctl *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A failed call: prints "dsv4ctl: CODE: message" (and the JSON error) and returns 1. */
int ctl_status_error(struct ctl *x, const struct dsv4_gc_status *st);
/* Any other failure (message printed as given, JSON error code "CLIENT") and returns 1. */
int ctl_error(struct ctl *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints a cJSON object as one line on stdout and deletes it; 1 when out of memory. */
int ctl_print_json(struct cJSON *o);

/* ---- option values (a usage error, returned as 2, when malformed or out of range) */

int ctl_opt_int(struct ctl *x, const char *name, const char *v, long lo, long hi, int *out);
int ctl_opt_float(struct ctl *x, const char *name, const char *v, double lo, double hi, float *out);
int ctl_opt_u64(struct ctl *x, const char *name, const char *v, uint64_t *out);
/* "1,2,3" (blanks allowed after commas) as token ids 0..INT32_MAX (malloc'ed). */
int ctl_opt_ids(struct ctl *x, const char *name, const char *v, uint32_t **ids, size_t *n);

/* ---- calls */

/* Connects x->gc (once); 1 after a message when the server is unreachable. */
int ctl_connect(struct ctl *x);
/* The call options of x: --timeout, else `dflt` seconds (0: no deadline). */
struct dsv4_gc_call_opts ctl_call_opts(const struct ctl *x, double dflt);
/*
 * A unary call of method ("/dsv4.Engine/GetLoads") with req packed, its response
 * unpacked as `rd` into *resp (free with protobuf_c_message_free_unpacked).  0, or 1
 * after the error was reported.
 */
int ctl_unary(struct ctl *x, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp);
/* The same without a message: 0, or -1 with the status in *st.  x->gc must be connected. */
int ctl_call(struct ctl *x, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp,
             struct dsv4_gc_status *st);
/* Packs a message (malloc'ed; NULL when out of memory). */
uint8_t *ctl_pack(const ProtobufCMessage *m, size_t *len);

/* ---- commands (argv[0] is the command's name); each returns the exit status */

int ctl_cmd_generate(struct ctl *x, int argc, char **argv);
int ctl_cmd_chat(struct ctl *x, int argc, char **argv);
int ctl_cmd_health(struct ctl *x, int argc, char **argv);
int ctl_cmd_watch(struct ctl *x, int argc, char **argv);
int ctl_cmd_stats(struct ctl *x, int argc, char **argv);
int ctl_cmd_tokenize(struct ctl *x, int argc, char **argv);
int ctl_cmd_detokenize(struct ctl *x, int argc, char **argv);
int ctl_cmd_drain(struct ctl *x, int argc, char **argv);
int ctl_cmd_abort(struct ctl *x, int argc, char **argv);

#endif
