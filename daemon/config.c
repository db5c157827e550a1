/*
 * config.c - dsv4d's configuration keys, one table for the JSON file and the
 * flags (see daemon/config.h).
 *
 * Each row names the key (JSON spelling; the flag is "--" plus the key with
 * '_' -> '-'), its type, where it lives in struct dsv4d_config, its range,
 * whether SIGHUP reloads it, and a help line.  Parsing is strict: integers
 * and numbers must be whole strings in range, sizes take units (512MiB),
 * booleans true/false; anything else is an error that names the key.
 */
#include "daemon/config.h"

#include "base/dsv4.h"
#include "dsv4-build.h"
#include "engine/io/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum ktype { K_STR, K_INT, K_I64, K_SIZE, K_NUM, K_BOOL };

struct key {
    const char *name;
    enum ktype type;
    size_t off, len; /* offset in the struct; len: string capacity */
    double lo, hi;   /* numeric range */
    bool reload;
    const char *help;
};

#define S(f) K_STR, offsetof(struct dsv4d_config, f), sizeof(((struct dsv4d_config *)0)->f)
#define I(f) K_INT, offsetof(struct dsv4d_config, f), 0
#define L(f) K_I64, offsetof(struct dsv4d_config, f), 0
#define Z(f) K_SIZE, offsetof(struct dsv4d_config, f), 0
#define N(f) K_NUM, offsetof(struct dsv4d_config, f), 0
#define B(f) K_BOOL, offsetof(struct dsv4d_config, f), 0

static const struct key keys[] = {
        {"model", S(model), 0, 0, false, "checkpoint directory (config.json + safetensors)"},
        {"served_model_name", S(served_model_name), 0, 0, false,
         "model name in the APIs (default: the directory's name)"},
        {"workers", I(workers), 1, 64, false, "worker processes = tensor/expert-parallel ranks"},
        {"device", S(device), 0, 0, false,
         "cpu, cuda (GPU rank % visible GPUs), or devsim (tests: the CPU behind the GPU paths)"},
        {"decode_graphs", B(decode_graphs), 0, 0, false,
         "decode steps padded to bucket sizes and run as CUDA graphs recorded before the "
         "workers report ready (cuda; devsim pads without recording; cpu never)"},
        {"threads_per_worker", I(threads_per_worker), 0, 1024, false,
         "CPU threads per worker (0: online CPUs / workers)"},
        {"mtp", I(mtp), -1, 8, false,
         "MTP draft depth (-1: 1 when the checkpoint has MTP, 0: off)"},
        {"max_batch_tokens", I(max_batch_tokens), 16, 1 << 20, false,
         "tokens of one step: decodes, drafts and prefill chunks"},
        {"max_seqs", I(max_seqs), 1, 4096, false, "sequences running at once"},
        {"max_model_len", L(max_model_len), 0, 1 << 24, false,
         "context per sequence (0: the model's, at most 32768 on CPU)"},
        {"state_mem", Z(state_mem), 0, 1e15, false,
         "bytes of each rank's state pool (0: room for max_seqs full contexts)"},
        {"swap_min_tokens", I(swap_min_tokens), 1, 1 << 24, false,
         "a preempted sequence with at least this many positions has its state swapped to host "
         "memory (compressed) instead of dropped and re-prefilled"},
        {"swap_max_tokens", L(swap_max_tokens), 0, (double)(1ll << 40), false,
         "positions held swapped out at once, over all sequences (0: never swap)"},
        {"pipeline", B(pipeline), 0, 0, false,
         "send the next decode step's plan while the previous one runs (the workers continue "
         "each sequence from their own results), so that no step waits for the supervisor"},
        {"max_queue", I(max_queue), 0, 1 << 20, true, "requests waiting beyond max_seqs"},
        {"drain_timeout", N(drain_timeout), 0, 86400, true,
         "seconds running requests may finish after SIGTERM"},
        {"drain_grace", N(drain_grace), 0, 3600, true,
         "seconds a draining dsv4d still admits new requests while it reports not ready, so a "
         "balancer polling /ready takes it out first (0: refuse at once)"},
        {"runtime_dir", S(runtime_dir), 0, 0, false,
         "sockets of the workers (default $RUNTIME_DIRECTORY or /run/dsv4d)"},
        {"grpc_listen", S(grpc_listen), 0, 0, false, "gRPC HOST:PORT, or off"},
        {"http_listen", S(http_listen), 0, 0, false, "HTTP HOST:PORT, or off"},
        {"log_level", S(log_level), 0, 0, true, "debug, info, warn or error"},
        {"api_key_file", S(api_key_file), 0, 0, true,
         "file of API keys, one per line (empty: no keys)"},
        {"open_probes", B(open_probes), 0, 0, true, "health, ready and metrics without a key"},
        {"heartbeat_timeout", N(heartbeat_timeout), 0.1, 3600, false,
         "seconds without a worker heartbeat before it counts as hung"},
        {"max_restarts", I(max_restarts), 0, 1000, false,
         "worker crashes within restart_window before dsv4d stays degraded"},
        {"restart_window", N(restart_window), 1, 86400, false, "seconds (see max_restarts)"},
        {"request_timeout", N(request_timeout), 0, 86400, true,
         "default limit of a request in seconds (0: none)"},
};

void dsv4d_config_defaults(struct dsv4d_config *c)
{
    memset(c, 0, sizeof *c);
    c->workers = 1;
    snprintf(c->device, sizeof c->device, "cpu");
    c->decode_graphs = true;
    c->mtp = -1;
    c->max_batch_tokens = 2048;
    c->max_seqs = 64;
    c->max_queue = 1024;
    c->swap_min_tokens = 128;
    c->pipeline = true;
    c->swap_max_tokens = 1 << 22;
    c->drain_timeout = 30;
    snprintf(c->grpc_listen, sizeof c->grpc_listen, "127.0.0.1:50051");
    snprintf(c->http_listen, sizeof c->http_listen, "127.0.0.1:8080");
    snprintf(c->log_level, sizeof c->log_level, "info");
    c->open_probes = true;
    c->heartbeat_timeout = 5;
    c->max_restarts = 5;
    c->restart_window = 300;
}

static const struct key *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < DSV4_ARRAY_LEN(keys); i++)
        if (strlen(keys[i].name) == len && !strncmp(keys[i].name, name, len))
            return &keys[i];
    return NULL;
}

/* Sizes: a number with an optional unit (B, K/KiB/KB, M/MiB/MB, G/GiB/GB, T/TiB/TB). */
static int parse_size(const char *v, double *out)
{
    static const struct {
        const char *s;
        double m;
    } u[] = {{"", 1},
             {"B", 1},
             {"K", 1024.0},
             {"KiB", 1024.0},
             {"KB", 1e3},
             {"M", 1048576.0},
             {"MiB", 1048576.0},
             {"MB", 1e6},
             {"G", 1073741824.0},
             {"GiB", 1073741824.0},
             {"GB", 1e9},
             {"T", 1099511627776.0},
             {"TiB", 1099511627776.0},
             {"TB", 1e12}};
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || errno || !isfinite(x) || *v == '-' || *v == ' ')
        return -1;
    for (size_t i = 0; i < DSV4_ARRAY_LEN(u); i++)
        if (!strcmp(end, u[i].s)) {
            *out = x * u[i].m;
            return 0;
        }
    return -1;
}

/* Sets key k from a string value (flags, and JSON strings for sizes). */
static int set_str(struct dsv4d_config *c, const struct key *k, const char *v)
{
    char *p = (char *)c + k->off;
    char *end;
    double x = 0;
    errno = 0;
    switch (k->type) {
    case K_STR:
        if (strlen(v) >= k->len)
            return dsv4_error(DSV4_EINVAL, "%s: value longer than %zu bytes", k->name, k->len - 1);
        snprintf(p, k->len, "%s", v);
        return 0;
    case K_INT:
    case K_I64: {
        long long y = strtoll(v, &end, 10);
        if (end == v || *end || errno)
            return dsv4_error(DSV4_EINVAL, "%s: '%s' is not an integer", k->name, v);
        x = (double)y;
        break;
    }
    case K_NUM:
        x = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(x))
            return dsv4_error(DSV4_EINVAL, "%s: '%s' is not a number", k->name, v);
        break;
    case K_SIZE:
        if (parse_size(v, &x))
            return dsv4_error(DSV4_EINVAL, "%s: '%s' is not a size (e.g. 512MiB, 4GiB)", k->name,
                              v);
        break;
    case K_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1"))
            *(bool *)p = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0"))
            *(bool *)p = false;
        else
            return dsv4_error(DSV4_EINVAL, "%s: '%s' is not true or false", k->name, v);
        return 0;
    }
    if (x < k->lo || x > k->hi)
        return dsv4_error(DSV4_EINVAL, "%s: %s is outside [%.15g, %.15g]", k->name, v, k->lo,
                          k->hi);
    if (k->type == K_INT)
        *(int *)p = (int)x;
    else if (k->type == K_I64)
        *(int64_t *)p = (int64_t)x;
    else if (k->type == K_SIZE)
        *(uint64_t *)p = (uint64_t)x;
    else
        *(double *)p = x;
    return 0;
}

static int set_json(struct dsv4d_config *c, const struct key *k, const cJSON *v)
{
    char buf[64];
    if (k->type == K_STR || (k->type == K_SIZE && cJSON_IsString(v))) {
        if (!cJSON_IsString(v))
            return dsv4_error(DSV4_EINVAL, "%s: expected a string", k->name);
        return set_str(c, k, v->valuestring);
    }
    if (k->type == K_BOOL) {
        if (!cJSON_IsBool(v))
            return dsv4_error(DSV4_EINVAL, "%s: expected true or false", k->name);
        *(bool *)((char *)c + k->off) = cJSON_IsTrue(v);
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return dsv4_error(DSV4_EINVAL, "%s: expected a number", k->name);
    double x = v->valuedouble;
    if ((k->type == K_INT || k->type == K_I64) && x != floor(x))
        return dsv4_error(DSV4_EINVAL, "%s: %g is not an integer", k->name, x);
    snprintf(buf, sizeof buf, k->type == K_NUM ? "%.17g" : "%.0f", x);
    return set_str(c, k, buf);
}

int dsv4d_config_load(struct dsv4d_config *c, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    int rc = dsv4_file_read(path, 1 << 20, &text, &len);
    if (rc)
        return rc;
    const char *endp = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &endp, 0);
    if (!j || !cJSON_IsObject(j)) {
        size_t at = endp && endp >= text && endp <= text + len ? (size_t)(endp - text) : 0;
        cJSON_Delete(j);
        free(text);
        return dsv4_error(DSV4_EFORMAT, "%s: not a JSON object (error near byte %zu)", path, at);
    }
    free(text);
    for (cJSON *v = j->child; v; v = v->next) {
        const struct key *k = v->string ? find_key(v->string, strlen(v->string)) : NULL;
        if (!k) {
            rc = dsv4_error(DSV4_EINVAL, "%s: unknown key \"%s\" (dsv4d --help lists the keys)",
                            path, v->string ? v->string : "");
            break;
        }
        if ((rc = set_json(c, k, v))) {
            rc = dsv4_error_ctx(rc, "%s", path);
            break;
        }
    }
    cJSON_Delete(j);
    if (!rc)
        snprintf(c->config_path, sizeof c->config_path, "%s", path);
    return rc;
}

int dsv4d_config_flag(struct dsv4d_config *c, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    char name[128];
    if (strncmp(a, "--", 2))
        return 0;
    const char *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    if (n >= sizeof name)
        return 0;
    for (size_t j = 0; j < n; j++)
        name[j] = a[2 + j] == '-' ? '_' : a[2 + j];
    name[n] = 0;
    const struct key *k = find_key(name, n);
    if (!k)
        return 0;
    const char *v = eq ? eq + 1 : NULL;
    if (!v) {
        if (k->type == K_BOOL && (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0)) {
            *(bool *)((char *)c + k->off) = true; /* a bare boolean flag */
            return 1;
        }
        if (*i + 1 >= argc)
            return dsv4_error(DSV4_EINVAL, "%s needs a value", a);
        v = argv[++*i];
    }
    int rc = set_str(c, k, v);
    return rc ? rc : 1;
}

int dsv4d_config_check(const struct dsv4d_config *c, bool need_model)
{
    enum dsv4_log_level lv;
    struct stat sb;
    char path[DSV4D_PATH_MAX + 32];
    if (strcmp(c->device, "cpu") && strcmp(c->device, "cuda") && strcmp(c->device, "devsim"))
        return dsv4_error(DSV4_EINVAL, "device: '%s' is not cpu, cuda or devsim", c->device);
#ifndef HAVE_CUDA
    if (!strcmp(c->device, "cuda"))
        return dsv4_error(DSV4_ENOTSUP, "device: cuda is not available in this build "
                                        "(configure --with-cuda); use cpu");
#endif
    if (dsv4_log_parse_level(c->log_level, &lv))
        return dsv4_error(DSV4_EINVAL, "log_level: '%s' is not debug, info, warn or error",
                          c->log_level);
    if (c->max_batch_tokens < c->max_seqs)
        return dsv4_error(DSV4_EINVAL,
                          "max_batch_tokens (%d) must be at least max_seqs (%d): every running "
                          "sequence needs a token per step",
                          c->max_batch_tokens, c->max_seqs);
    const char *listens[2] = {c->grpc_listen, c->http_listen};
    const char *lname[2] = {"grpc_listen", "http_listen"};
    for (int i = 0; i < 2; i++) {
        const char *l = listens[i], *colon = strrchr(l, ':');
        if (!strcmp(l, "off"))
            continue;
        char *end;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || colon == l || !colon[1] || *end || port < 0 || port > 65535)
            return dsv4_error(DSV4_EINVAL, "%s: '%s' is not HOST:PORT or off", lname[i], l);
    }
    if (c->api_key_file[0] && access(c->api_key_file, R_OK))
        return dsv4_error(DSV4_ENOENT, "api_key_file: %s cannot be read", c->api_key_file);
    if (!c->model[0])
        return need_model ? dsv4_error(DSV4_EINVAL,
                                       "model: no checkpoint directory configured (set \"model\" "
                                       "in %s or pass --model DIR)",
                                       c->config_path[0] ? c->config_path : DSV4D_DEFAULT_CONFIG)
                          : 0;
    snprintf(path, sizeof path, "%s/config.json", c->model);
    if (stat(c->model, &sb) || !S_ISDIR(sb.st_mode))
        return dsv4_error(DSV4_ENOENT, "model: %s is not a directory", c->model);
    if (access(path, R_OK))
        return dsv4_error(DSV4_ENOENT, "model: %s has no readable config.json", c->model);
    return 0;
}

void dsv4d_config_reload(struct dsv4d_config *c, const struct dsv4d_config *fresh, char *changed,
                         size_t len)
{
    size_t used = 0;
    if (len)
        changed[0] = 0;
    for (size_t i = 0; i < DSV4_ARRAY_LEN(keys); i++) {
        const struct key *k = &keys[i];
        size_t sz = k->type == K_STR    ? k->len
                    : k->type == K_INT  ? sizeof(int)
                    : k->type == K_BOOL ? sizeof(bool)
                    : k->type == K_NUM  ? sizeof(double)
                                        : sizeof(int64_t);
        if (!k->reload || !memcmp((char *)c + k->off, (const char *)fresh + k->off, sz))
            continue;
        memcpy((char *)c + k->off, (const char *)fresh + k->off, sz);
        if (used < len)
            used += (size_t)snprintf(changed + used, len - used, "%s%s", used ? ", " : "", k->name);
    }
}

void dsv4d_config_print(const struct dsv4d_config *c, FILE *f)
{
    cJSON *j = cJSON_CreateObject();
    for (size_t i = 0; j && i < DSV4_ARRAY_LEN(keys); i++) {
        const struct key *k = &keys[i];
        const char *p = (const char *)c + k->off;
        switch (k->type) {
        case K_STR:
            cJSON_AddStringToObject(j, k->name, p);
            break;
        case K_INT:
            cJSON_AddNumberToObject(j, k->name, *(const int *)p);
            break;
        case K_I64:
        case K_SIZE:
            cJSON_AddNumberToObject(j, k->name, (double)*(const int64_t *)p);
            break;
        case K_NUM:
            cJSON_AddNumberToObject(j, k->name, *(const double *)p);
            break;
        case K_BOOL:
            cJSON_AddBoolToObject(j, k->name, *(const bool *)p);
            break;
        }
    }
    char *s = j ? cJSON_Print(j) : NULL;
    if (s)
        fprintf(f, "%s\n", s);
    free(s);
    cJSON_Delete(j);
}

void dsv4d_config_usage(FILE *f)
{
    struct dsv4d_config d;
    dsv4d_config_defaults(&d);
    fprintf(f, "configuration keys (JSON key / flag; * = re-read on SIGHUP):\n");
    for (size_t i = 0; i < DSV4_ARRAY_LEN(keys); i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", keys[i].name);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        fprintf(f, "  %-22s %c %s\n", flag, keys[i].reload ? '*' : ' ', keys[i].help);
    }
}
