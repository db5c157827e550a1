/*
 * dsv4ctl.c - `dsv4ctl`, the command-line client of dsv4d over gRPC
 * (proto/dsv4.proto, proto/health.proto; DESIGN.md §5):
 *
 *   dsv4ctl [--target HOST:PORT] [--api-key KEY] [--timeout SEC] [--json] COMMAND ...
 *
 * This file: the dispatcher, the global options, the error reporting and
 * the protobuf codec shared by the commands (tools/dsv4ctl.h).  The
 * commands live in dsv4ctl_gen.c (generate, chat) and dsv4ctl_info.c
 * (health, watch, stats, tokenize, detokenize, drain, abort).
 *
 * The API key comes from --api-key or $DSV4_API_KEY (the environment keeps
 * it out of `ps`); it is sent as "authorization: Bearer KEY" on every call.
 */
#include "base/dsv4.h"
#include "rpc/grpc_wire.h"
#include "tools/dsv4ctl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct command {
    const char *name;
    int (*run)(struct ctl *x, int argc, char **argv);
    const char *args;
    const char *summary;
    const char *help; /* the command's options, for dsv4ctl COMMAND --help */
};

#define SAMPLING_HELP                                                                       \
    "  --max-tokens N         new tokens at most (default: the server's)\n"                 \
    "  --temperature T        0: greedy (default 1)\n"                                      \
    "  --top-p P, --top-k K, --min-p P, --repetition-penalty R,\n"                          \
    "  --frequency-penalty F, --presence-penalty P   sampling filters and penalties\n"      \
    "  --seed S               reproducible sampling\n"                                      \
    "  --stop STR             stop before this text (repeatable, at most 16)\n"             \
    "  --stop-id ID           stop after this token (repeatable)\n"                         \
    "  --ignore-eos           do not stop at the end-of-sentence token\n"                   \
    "  --logprobs N           log probabilities of the tokens and N (0..20) alternatives\n" \
    "  --request-id ID        the request's id (for dsv4ctl abort ID)\n"                    \
    "  --priority 0|1         1: scheduled before normal requests\n"

static const struct command commands[] = {
        {"generate", ctl_cmd_generate, "TEXT | --ids 1,2,3 [options]",
         "generate a completion, streamed as it arrives",
         "  TEXT                   the prompt (tokenized by the server, special tokens\n"
         "                         recognised); or\n"
         "  --ids 1,2,3            the prompt as token ids\n"
         "  --no-skip-special      keep special tokens in the text\n" SAMPLING_HELP
         "The text goes to stdout as it arrives, a summary line to stderr; --json prints one\n"
         "object at the end: text, token_ids, finish_reason, usage (and logprobs).\n"},
        {"chat", ctl_cmd_chat, "MESSAGE [--system S] [--thinking] [options]",
         "one chat turn (DeepSeek-V4 chat encoding, client-side)",
         "  MESSAGE                the user's message\n"
         "  --system S             a system prompt\n"
         "  --thinking             thinking mode: the reasoning is printed under [reasoning],\n"
         "                         the answer under [answer]\n"
         "  --effort none|high|max reasoning effort (max: thinking mode only)\n"
         "  --show-prompt          print the encoded prompt to stderr (--json: a \"prompt\" "
         "field)\n" SAMPLING_HELP
         "--json prints one object: text (raw, with special tokens), reasoning, content,\n"
         "tool_calls, token_ids, finish_reason, usage.\n"},
        {"health", ctl_cmd_health, "[--service NAME]",
         "grpc.health.v1 Check; exit 0 only when serving",
         "  checks \"\" (alive) and \"dsv4.Engine\" (ready); --service NAME checks that one\n"
         "  only.  Exit 0 when SERVING, else 1 with the server's state and reason.\n"},
        {"watch", ctl_cmd_watch, "[--service NAME] [--count N]",
         "grpc.health.v1 Watch: one line per change",
         "  --service NAME         the service to watch (default dsv4.Engine; \"\" = alive)\n"
         "  --count N              stop after N statuses (the current one counts)\n"
         "  Runs until interrupted (exit 0) or the server ends the stream (exit 1).\n"},
        {"stats", ctl_cmd_stats, "", "server, model and load information",
         "  GetServerInfo, GetModelInfo and GetLoads in one report.\n"},
        {"tokenize", ctl_cmd_tokenize, "TEXT", "token ids of a text (special tokens recognised)",
         "  prints the ids as 1,2,3 (what detokenize takes)\n"},
        {"detokenize", ctl_cmd_detokenize, "1,2,3 [--skip-special]", "the text of token ids",
         "  --skip-special         leave special tokens out of the text\n"},
        {"drain", ctl_cmd_drain, "[--wait]",
         "drain the server (as SIGTERM): finish running requests, then stop",
         "  readiness turns NOT_SERVING at once, new requests are refused, running ones\n"
         "  finish (within the server's drain timeout), then dsv4d exits 0.  Needs the API\n"
         "  key when keys are configured.\n"
         "  --wait                 return once the server stopped accepting connections\n"
         "                         (at most --timeout, default 120 s)\n"},
        {"abort", ctl_cmd_abort, "REQUEST_ID", "cancel a running request by its client id",
         "  the id a client gave with generate --request-id; exit 1 when none runs\n"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4ctl [--target HOST:PORT] [--api-key KEY] [--timeout SEC] [--json]\n"
               "               COMMAND [ARGS]   (dsv4ctl COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < DSV4_ARRAY_LEN(commands); i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\nglobal options (also after the command):\n"
            "  --target HOST:PORT  the server's gRPC address (default %s)\n"
            "  --api-key KEY       sent as 'authorization: Bearer KEY' (default $DSV4_API_KEY)\n"
            "  --timeout SEC       deadline of each call (default: %g s for single answers,\n"
            "                      none for generate, chat and watch)\n"
            "  --json              one JSON object per result on stdout\n"
            "exit status: 0 ok, 1 server or transport error, 2 usage error\n",
            CTL_DEFAULT_TARGET, CTL_UNARY_TIMEOUT);
}

/* ---- options */

static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *bad)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    *bad = false;
    if (strncmp(a, name, n))
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n])
        return NULL;
    if (*i + 1 >= argc) {
        *bad = true;
        return NULL;
    }
    return argv[++*i];
}

int ctl_global_opt(struct ctl *x, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *v;
    bool bad;
    if (!strcmp(a, "--json")) {
        x->json = true;
        return 1;
    }
    static const char *names[] = {"--target", "--api-key", "--timeout"};
    for (size_t k = 0; k < DSV4_ARRAY_LEN(names); k++) {
        v = opt_value(argc, argv, i, names[k], &bad);
        if (bad) {
            ctl_usage_error(x, "%s needs a value", names[k]);
            return -1;
        }
        if (!v)
            continue;
        if (k == 0) {
            x->target = v;
        } else if (k == 1) {
            x->api_key = v;
        } else {
            float t;
            if (ctl_opt_float(x, "--timeout", v, 0.001, 1e7, &t))
                return -1;
            x->timeout_s = t;
        }
        return 1;
    }
    return 0;
}

/* ---- messages */

static const char *who(const struct ctl *x)
{
    return x->cmd ? x->cmd : "";
}

int ctl_usage_error(struct ctl *x, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "dsv4ctl%s%s: ", x->cmd ? " " : "", who(x));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see dsv4ctl %s%s--help)\n", who(x), x->cmd ? " " : "");
    return CTL_EXIT_USAGE;
}

static void json_error(const char *code, int number, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    if (e) {
        cJSON_AddStringToObject(e, "code", code);
        if (number >= 0)
            cJSON_AddNumberToObject(e, "code_number", number);
        cJSON_AddStringToObject(e, "message", message);
    }
    ctl_print_json(o);
}

int ctl_status_error(struct ctl *x, const struct dsv4_gc_status *st)
{
    const char *name = dsv4_grpc_code_name(st->code);
    const char *hint = "";
    if (st->code == DSV4_GRPC_UNAUTHENTICATED)
        hint = " (give the key with --api-key or $DSV4_API_KEY)";
    fprintf(stderr, "dsv4ctl: %s: %s%s\n", name, st->message[0] ? st->message : "(no message)",
            hint);
    if (x->json)
        json_error(name, st->code, st->message);
    return CTL_EXIT_FAIL;
}

int ctl_error(struct ctl *x, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "dsv4ctl: %s\n", msg);
    if (x->json)
        json_error("CLIENT", -1, msg);
    return CTL_EXIT_FAIL;
}

int ctl_print_json(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) {
        fprintf(stderr, "dsv4ctl: out of memory\n");
        return CTL_EXIT_FAIL;
    }
    printf("%s\n", s);
    fflush(stdout);
    cJSON_free(s);
    return 0;
}

/* ---- option values */

int ctl_opt_int(struct ctl *x, const char *name, const char *v, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno || n < lo || n > hi)
        return ctl_usage_error(x, "%s '%s' is not an integer in [%ld, %ld]", name, v, lo, hi);
    *out = (int)n;
    return 0;
}

int ctl_opt_float(struct ctl *x, const char *name, const char *v, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d) || d < lo || d > hi)
        return ctl_usage_error(x, "%s '%s' is not a number in [%g, %g]", name, v, lo, hi);
    *out = (float)d;
    return 0;
}

int ctl_opt_u64(struct ctl *x, const char *name, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-')
        return ctl_usage_error(x, "%s '%s' is not an unsigned 64-bit integer", name, v);
    *out = n;
    return 0;
}

int ctl_opt_ids(struct ctl *x, const char *name, const char *v, uint32_t **ids, size_t *n)
{
    size_t cap = 1;
    for (const char *p = v; *p; p++)
        cap += *p == ',';
    uint32_t *a = malloc(sizeof(*a) * cap);
    size_t k = 0;
    const char *p = v;
    *ids = NULL;
    *n = 0;
    if (!a)
        return ctl_error(x, "out of memory");
    for (;;) {
        while (*p == ' ')
            p++;
        char *end;
        errno = 0;
        long long id = strtoll(p, &end, 10);
        if (end == p || errno || id < 0 || id > INT32_MAX || (*end && *end != ',')) {
            free(a);
            return ctl_usage_error(x, "%s '%s' is not a list of token ids like 1,2,3", name, v);
        }
        a[k++] = (uint32_t)id;
        if (!*end)
            break;
        p = end + 1;
    }
    *ids = a;
    *n = k;
    return 0;
}

/* ---- calls */

int ctl_connect(struct ctl *x)
{
    if (x->gc)
        return 0;
    struct dsv4_gc_opts o = {
            .target = x->target,
            .api_key = x->api_key,
            /* a short --timeout still leaves a loopback connect its chance */
            .connect_timeout_s =
                    x->timeout_s > 0 ? DSV4_MAX(1.0, DSV4_MIN(x->timeout_s, 10.0)) : 10.0,
    };
    int rc = dsv4_gc_connect(&o, &x->gc);
    if (rc == DSV4_EINVAL) {
        fprintf(stderr, "dsv4ctl: %s\n", dsv4_errmsg());
        return CTL_EXIT_USAGE;
    }
    if (rc) {
        struct dsv4_gc_status st = {.code = DSV4_GRPC_UNAVAILABLE};
        snprintf(st.message, sizeof(st.message), "%s (is dsv4d running with gRPC there?)",
                 dsv4_errmsg());
        return ctl_status_error(x, &st);
    }
    return 0;
}

struct dsv4_gc_call_opts ctl_call_opts(const struct ctl *x, double dflt)
{
    struct dsv4_gc_call_opts o = {.timeout_s = x->timeout_s > 0 ? x->timeout_s : dflt};
    return o;
}

uint8_t *ctl_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        protobuf_c_message_pack(m, buf);
    return buf;
}

int ctl_call(struct ctl *x, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp,
             struct dsv4_gc_status *st)
{
    size_t len, rlen;
    uint8_t *buf = ctl_pack(req, &len), *out = NULL;
    *resp = NULL;
    if (!buf) {
        *st = (struct dsv4_gc_status){.code = DSV4_GRPC_RESOURCE_EXHAUSTED};
        snprintf(st->message, sizeof(st->message), "out of memory");
        return -1;
    }
    struct dsv4_gc_call_opts co = ctl_call_opts(x, CTL_UNARY_TIMEOUT);
    int rc = dsv4_gc_unary(x->gc, method, buf, len, &co, &out, &rlen, st);
    free(buf);
    if (rc)
        return -1;
    *resp = protobuf_c_message_unpack(rd, NULL, rlen, out);
    free(out);
    if (!*resp) {
        *st = (struct dsv4_gc_status){.code = DSV4_GRPC_INTERNAL};
        snprintf(st->message, sizeof(st->message), "%s: the response is not a valid %s", method,
                 rd->name);
        return -1;
    }
    return 0;
}

int ctl_unary(struct ctl *x, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp)
{
    struct dsv4_gc_status st;
    int rc = ctl_connect(x);
    *resp = NULL;
    if (rc)
        return rc;
    if (ctl_call(x, method, req, rd, resp, &st))
        return ctl_status_error(x, &st);
    return 0;
}

/* ---- main */

int main(int argc, char **argv)
{
    struct ctl x = {.target = CTL_DEFAULT_TARGET};
    const char *env = getenv("DSV4_API_KEY");
    if (env && env[0])
        x.api_key = env;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
            printf("dsv4ctl %s\n", dsv4_version());
            return 0;
        }
        int r = ctl_global_opt(&x, argc, argv, &i);
        if (r < 0)
            return CTL_EXIT_USAGE;
        if (r == 0) {
            fprintf(stderr, "dsv4ctl: unknown option '%s' (see dsv4ctl --help)\n", argv[i]);
            return CTL_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return CTL_EXIT_USAGE;
    }
    const struct command *cmd = NULL;
    for (size_t k = 0; k < DSV4_ARRAY_LEN(commands); k++)
        if (!strcmp(argv[i], commands[k].name))
            cmd = &commands[k];
    if (!cmd) {
        fprintf(stderr, "dsv4ctl: unknown command '%s' (see dsv4ctl --help)\n", argv[i]);
        return CTL_EXIT_USAGE;
    }
    x.cmd = cmd->name;
    for (int k = i + 1; k < argc; k++) {
        if (!strcmp(argv[k], "--"))
            break;
        if (!strcmp(argv[k], "--help") || !strcmp(argv[k], "-h")) {
            printf("usage: dsv4ctl [global options] %s %s\n", cmd->name, cmd->args);
            printf("%s.\n%s", cmd->summary, cmd->help);
            return 0;
        }
    }
    int rc = cmd->run(&x, argc - i, argv + i);
    dsv4_gc_close(x.gc);
    return rc;
}
