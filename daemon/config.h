/*
 * config.h - dsv4d's configuration: /etc/dsv4d/dsv4d.json (cJSON) and the
 * command line, from one table of keys (daemon/config.c) so that every key
 * is also a flag ("max_batch_tokens" <-> --max-batch-tokens), with its
 * type, range, default, whether SIGHUP reloads it, and a one-line help.
 *
 * Precedence: defaults, then the file (--config FILE, else the default path
 * when it exists), then flags.  A key the table does not know, a value of
 * the wrong type or out of range is an error naming the key (dsv4d exits 2).
 */
#ifndef DSV4D_CONFIG_H
#define DSV4D_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define DSV4D_DEFAULT_CONFIG "/etc/dsv4d/dsv4d.json"
#define DSV4D_PATH_MAX       1024

struct dsv4d_config {
    char config_path[DSV4D_PATH_MAX];  /* the file read, "" if none */
    char model[DSV4D_PATH_MAX];        /* checkpoint directory ("" = not configured) */
    char served_model_name[256];       /* "" = the directory's name */
    int workers;                       /* ranks = worker processes */
    char device[8];                    /* "cpu" or "cuda" */
    bool decode_graphs;                /* decode steps as recorded graphs (device backends) */
    int threads_per_worker;            /* CPU threads of each worker (0 = online CPUs / workers) */
    int mtp;                           /* MTP draft depth; -1 = 1 when the checkpoint has MTP */
    int max_batch_tokens;              /* tokens of one step (decodes + drafts + prefill chunks) */
    int max_seqs;                      /* running sequences */
    int64_t max_model_len;             /* context per sequence (0 = the model's, capped) */
    uint64_t state_mem;                /* bytes of each rank's state pool (0 = max_seqs full) */
    int swap_min_tokens;               /* preempted sequences this long are swapped, not dropped */
    int64_t swap_max_tokens;           /* positions held swapped out at most (0 = never swap) */
    int max_queue;                     /* waiting requests beyond max_seqs */
    bool pipeline;                     /* send the next decode plan while one runs */
    double drain_timeout;              /* seconds running requests get after SIGTERM */
    double drain_grace;                /* seconds a draining daemon still admits requests */
    char runtime_dir[DSV4D_PATH_MAX];  /* sockets ("" = $RUNTIME_DIRECTORY or /run/dsv4d) */
    char grpc_listen[256];             /* HOST:PORT, or "off" */
    char http_listen[256];             /* HOST:PORT, or "off" */
    char log_level[16];                /* debug | info | warn | error */
    char api_key_file[DSV4D_PATH_MAX]; /* one key per line ("" = no keys) */
    bool open_probes;                  /* health, ready, metrics without a key */
    double heartbeat_timeout;          /* seconds without a worker heartbeat = hung */
    int max_restarts;                  /* crashes within restart_window before giving up */
    double restart_window;             /* seconds */
    double request_timeout;            /* default per-request limit in seconds (0 = none) */
    /* not a key: the program the workers run ("" = this one); tests set dsv4d's path */
    char worker_exe[DSV4D_PATH_MAX];
};

void dsv4d_config_defaults(struct dsv4d_config *c);

/* Reads a JSON file over c (only the keys it holds).  DSV4_EINVAL naming the key on a bad
 * key or value, DSV4_ENOENT / DSV4_EFORMAT for a missing or malformed file. */
int dsv4d_config_load(struct dsv4d_config *c, const char *path);

/*
 * Applies one command-line option: argv[*i] is "--key" or "--key=value" (value in argv[*i+1]
 * for the first form, *i advanced).  Returns 1 when the option is a config key (applied), 0
 * when it is not (the caller handles it), or a negative status naming the option.
 */
int dsv4d_config_flag(struct dsv4d_config *c, int argc, char **argv, int *i);

/* Cross-key checks (the model directory exists, workers fit the device, ...). */
int dsv4d_config_check(const struct dsv4d_config *c, bool need_model);

/* The keys SIGHUP re-reads: copies them from `fresh` into c; names them in `changed`. */
void dsv4d_config_reload(struct dsv4d_config *c, const struct dsv4d_config *fresh, char *changed,
                         size_t len);

/* The effective configuration as JSON (--check-config prints it). */
void dsv4d_config_print(const struct dsv4d_config *c, FILE *f);
/* One line per key: flag, type, default, reloadable, help (--help). */
void dsv4d_config_usage(FILE *f);

#endif
