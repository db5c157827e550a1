/*
 * sup.c - the dsv4d supervisor (see daemon/sup.h).
 *
 * The loop thread polls (50 ms ticks) an eventfd that other threads ring
 * (new requests, cancellations, drain), every worker's control socket
 * (nng pair1, its receive fd) and every worker's fd-passing socket.  Per
 * tick it: reads worker messages, reaps exited workers, checks heartbeats,
 * recovers from failures, advances the load / warm-up / serve / drain state
 * machine, and when no plan is in flight takes requests in and sends the
 * next plan to every rank.  A plan is done when every rank answered; rank
 * 0's result carries the tokens.  Pipelining (`pipeline`): while a plan of
 * decodes runs, the next one (a follow plan, dsv4d_sched_build_follow) is
 * sent at once, so each worker finds it waiting when its step ends; at most
 * two plans are in flight, answered and applied in order.
 *
 * Worker processes: fork + exec of this binary with --worker; the child
 * gets PR_SET_PDEATHSIG (it dies with the supervisor's loop thread, which
 * lives as long as the supervisor), the communicator's memfd as fd 3, its
 * end of a socketpair for fd passing as fd 4, its rank's weights image as
 * fd 5 and its device weights (a device backend's shareable allocation) as
 * fd 6 when the supervisor holds them; every other fd is closed before exec.  The control socket's path in the runtime directory is unlinked as
 * soon as every rank has dialed, so a killed supervisor leaves no socket
 * files behind (nor shared memory: memfds vanish with their last user).
 */
#include "daemon/sup.h"

#include "base/dsv4.h"
#include "daemon/fdpass.h"
#include "daemon/sched.h"
#include "daemon/wire.h"
#include "daemon/worker.h"
#include "rpc/metrics.h"
#include "engine/io/config.h"
#include "engine/io/fileio.h"
#include "engine/model/comm.h"
#include "engine/text/tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define TICK_MS     50
#define WARM_ID     UINT64_MAX

struct wslot {
    pid_t pid;
    nng_socket sock;
    bool sock_open;
    int recv_fd, fd_sock;
    int image_fd; /* the rank's weights image (kept across restarts), -1 */
    int dev_fd;   /* the rank's device weights (device backends; kept likewise), -1 */
    bool hello, ready;
    bool answered[2]; /* the plans in flight, oldest first */
    int st[2];
    char msg[2][512];
    double last_seen;
    struct dsv4d_ready info;
    struct dsv4d_progress progress;
    int status; /* of the plan done (plan_done) */
    char message[512];
};

enum phase { PH_LOADING, PH_WARM1, PH_WARM2, PH_WARM3, PH_SERVING, PH_DOWN, PH_STOPPED };

struct dsv4d_sup {
    struct dsv4d_config cfg;
    struct dsv4_svc svc;
    struct dsv4_config mcfg;
    struct dsv4_tokenizer *tok;
    char model_name[256];
    struct dsv4d_sched *sched;
    struct dsv4_metrics *metrics;
    pthread_t loop;
    bool loop_started;
    atomic_int quit, drain_requested;
    atomic_bool in_grace; /* draining, not ready, still admitting (drain_grace) */
    atomic_uint_fast64_t ticks, restarts;
    int wake_fd;
    char exe[DSV4D_PATH_MAX];
    char runtime[DSV4D_PATH_MAX];
    /* readiness */
    pthread_mutex_t mu;
    enum dsv4_svc_state state;
    char why[256];
    char progress_line[256];
    char keys[64][128]; /* API keys */
    int n_keys;
    /* workers (loop thread) */
    int N;
    struct wslot w[MAX_WORKERS];
    struct dsv4_comm_shm *group;
    uint64_t generation;
    char url[DSV4D_PATH_MAX + 160], sock_path[DSV4D_PATH_MAX + 64];
    bool sock_unlinked;
    enum phase phase;
    double phase_since, drain_deadline, next_spawn, grace_end;
    double crashes[1024];
    int n_crashes, consecutive;
    bool given_up;
    /* the plans in flight (oldest first; the second a follow plan) and the one done */
    struct dsv4d_plan_buf pb;
    int n_flight;
    uint64_t flight_step[2];
    struct dsv4d_msg fl_rank0[2];
    bool fl_have0[2];
    struct dsv4d_msg rank0;
    bool have_rank0;
    int32_t warm_tokens[2], warm_last, warm_drafts[DSV4_STEP_MAX_DRAFTS];
    int warm_nd;
    struct dsv4_step_entry warm_entry;
};

static void set_state(struct dsv4d_sup *s, enum dsv4_svc_state st, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void set_state(struct dsv4d_sup *s, enum dsv4_svc_state st, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s->mu);
    bool changed = s->state != st || strcmp(s->why, why);
    s->state = st;
    snprintf(s->why, sizeof s->why, "%s", why);
    pthread_mutex_unlock(&s->mu);
    if (changed)
        dsv4_log(st == DSV4_SVC_DEGRADED ? DSV4_LOG_WARN : DSV4_LOG_INFO, "state %s%s%s",
                 dsv4_svc_state_name(st), why[0] ? ": " : "", why);
}

static void wake(struct dsv4d_sup *s)
{
    uint64_t one = 1;
    ssize_t n = write(s->wake_fd, &one, sizeof one);
    (void)n;
}

/* ------------------------------------------------------------ the service ops */

static struct dsv4d_sup *SUP(struct dsv4_svc *v)
{
    return v->impl;
}

static int op_submit(struct dsv4_svc *v, const struct dsv4_svc_request *q, dsv4_svc_event_fn fn,
                     void *ctx, uint64_t *id)
{
    struct dsv4d_sup *s = SUP(v);
    pthread_mutex_lock(&s->mu);
    enum dsv4_svc_state st = s->state;
    bool given_up = s->given_up;
    char why[256];
    snprintf(why, sizeof why, "%s", s->why);
    pthread_mutex_unlock(&s->mu);
    if (st != DSV4_SVC_READY && !(st == DSV4_SVC_DEGRADED && !given_up) &&
        !(st == DSV4_SVC_DRAINING && atomic_load(&s->in_grace)))
        return dsv4_error(DSV4_ENOTSUP, "not serving: %s%s%s", dsv4_svc_state_name(st),
                          why[0] ? ": " : "", why);
    int32_t *ids = NULL;
    size_t n = 0;
    struct dsv4_tokens toks = {0};
    int rc = 0;
    if (q->text) {
        if (!s->tok)
            return dsv4_error(DSV4_EINVAL, "the model has no tokenizer: send token ids");
        if ((rc = dsv4_tokenizer_encode(s->tok, q->text, q->text_len, 0, &toks)))
            return rc;
        ids = toks.ids;
        n = toks.len;
    } else {
        ids = (int32_t *)q->ids;
        n = q->n_ids;
    }
    for (size_t i = 0; i < n && !rc; i++)
        if (ids[i] < 0 || ids[i] >= s->mcfg.vocab_size)
            rc = dsv4_error(DSV4_EINVAL, "token id %d outside the vocabulary of %d", ids[i],
                            s->mcfg.vocab_size);
    if (!rc)
        rc = dsv4d_sched_submit(s->sched, q, ids, n, fn, ctx, id);
    dsv4_tokens_free(&toks);
    if (!rc)
        wake(s);
    return rc;
}

static void op_cancel(struct dsv4_svc *v, uint64_t id)
{
    dsv4d_sched_cancel(SUP(v)->sched, id);
    wake(SUP(v));
}

static int op_abort_client_id(struct dsv4_svc *v, const char *cid)
{
    int rc = dsv4d_sched_cancel_client(SUP(v)->sched, cid);
    wake(SUP(v));
    return rc;
}

static int op_tokenize(struct dsv4_svc *v, const char *text, size_t len, int32_t **ids, size_t *n)
{
    struct dsv4d_sup *s = SUP(v);
    struct dsv4_tokens t = {0};
    if (!s->tok)
        return dsv4_error(DSV4_ENOTSUP, "the model has no tokenizer");
    int rc = dsv4_tokenizer_encode(s->tok, text, len, 0, &t);
    if (rc)
        return rc;
    *ids = t.ids;
    *n = t.len;
    return 0;
}

static int op_detokenize(struct dsv4_svc *v, const int32_t *ids, size_t n, bool skip_special,
                         char **text, size_t *len)
{
    struct dsv4d_sup *s = SUP(v);
    if (!s->tok)
        return dsv4_error(DSV4_ENOTSUP, "the model has no tokenizer");
    return dsv4_tokenizer_decode(s->tok, ids, n, skip_special ? 0 : DSV4_TOKENIZER_RENDER_SPECIAL,
                                 text, len);
}

static void op_model_info(struct dsv4_svc *v, struct dsv4_svc_model_info *o)
{
    struct dsv4d_sup *s = SUP(v);
    memset(o, 0, sizeof *o);
    snprintf(o->model_id, sizeof o->model_id, "%s", s->model_name);
    snprintf(o->model_path, sizeof o->model_path, "%s", s->cfg.model);
    snprintf(o->architecture, sizeof o->architecture, "DeepseekV4ForCausalLM");
    o->vocab_size = s->mcfg.vocab_size;
    o->eos_token_id = s->mcfg.eos_token_id;
    o->bos_token_id = s->mcfg.bos_token_id;
    pthread_mutex_lock(&s->mu);
    o->max_context = s->w[0].info.max_context;
    o->mtp_depth = s->w[0].info.mtp_depth;
    pthread_mutex_unlock(&s->mu);
}

static void op_loads(struct dsv4_svc *v, struct dsv4_svc_loads *o)
{
    struct dsv4d_sup *s = SUP(v);
    struct dsv4d_sched_counts c;
    dsv4d_sched_counts(s->sched, &c);
    memset(o, 0, sizeof *o);
    o->running = c.running;
    o->queued = c.queued;
    o->swapped = c.swapped;
    o->max_seqs = s->cfg.max_seqs;
    o->free_blocks = c.free_blocks;
    o->total_blocks = c.total_blocks;
    pthread_mutex_lock(&s->mu);
    o->workers = s->N;
    for (int r = 0; r < s->N; r++)
        o->workers_ready += s->w[r].ready;
    pthread_mutex_unlock(&s->mu);
}

static enum dsv4_svc_state op_state(struct dsv4_svc *v, char *why, size_t len)
{
    return dsv4d_sup_state(SUP(v), why, len);
}

static bool op_authorize(struct dsv4_svc *v, const char *key, size_t len)
{
    struct dsv4d_sup *s = SUP(v);
    bool ok = false;
    pthread_mutex_lock(&s->mu);
    if (s->n_keys == 0)
        ok = true;
    for (int i = 0; i < s->n_keys; i++) {
        size_t kl = strlen(s->keys[i]);
        /* constant time in the key's bytes: no early exit on the first difference */
        unsigned diff = (unsigned)(kl != len);
        for (size_t j = 0; j < kl; j++)
            diff |= (unsigned)(unsigned char)s->keys[i][j] ^
                    (unsigned)(unsigned char)(j < len ? key[j] : 0);
        ok |= key && diff == 0;
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* A client's drain (gRPC Drain): the same as SIGTERM's; dsv4d's main thread notices it
 * (dsv4d_sup_drain_requested) and exits 0 once stopped. */
static void op_drain(struct dsv4_svc *v)
{
    dsv4d_sup_drain(SUP(v));
}

static const struct dsv4_svc_ops sup_ops = {
        .submit = op_submit,
        .cancel = op_cancel,
        .abort_client_id = op_abort_client_id,
        .tokenize = op_tokenize,
        .detokenize = op_detokenize,
        .model_info = op_model_info,
        .loads = op_loads,
        .state = op_state,
        .authorize = op_authorize,
        .drain = op_drain,
};

/* API keys: one per line, blank lines and # comments ignored. */
static int load_keys(struct dsv4d_sup *s, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    int n = 0, rc;
    if (!path[0]) {
        pthread_mutex_lock(&s->mu);
        s->n_keys = 0;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    if ((rc = dsv4_file_read(path, 1 << 20, &text, &len)))
        return dsv4_error_ctx(rc, "api_key_file");
    char keys[64][128];
    for (char *line = strtok(text, "\n"); line && n < 64; line = strtok(NULL, "\n")) {
        while (*line == ' ' || *line == '\t')
            line++;
        size_t l = strcspn(line, " \t\r#");
        if (!l || *line == '#')
            continue;
        if (l >= sizeof keys[0]) {
            free(text);
            return dsv4_error(DSV4_EINVAL, "api_key_file: a key longer than %zu bytes",
                              sizeof keys[0] - 1);
        }
        memcpy(keys[n], line, l);
        keys[n++][l] = 0;
    }
    free(text);
    pthread_mutex_lock(&s->mu);
    memcpy(s->keys, keys, sizeof keys);
    s->n_keys = n;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* ------------------------------------------------------------ workers */

static void close_worker(struct wslot *w)
{
    if (w->sock_open)
        nng_close(w->sock);
    w->sock_open = false;
    if (w->fd_sock >= 0)
        close(w->fd_sock);
    w->fd_sock = -1;
    w->recv_fd = -1;
    w->pid = 0;
    w->hello = w->ready = false;
    w->answered[0] = w->answered[1] = false;
}

static void unlink_sockets(struct dsv4d_sup *s);

/* Kills and reaps every worker; their sockets close; images are kept. */
static void stop_all(struct dsv4d_sup *s, int sig, double wait_s)
{
    for (int r = 0; r < s->N; r++)
        if (s->w[r].pid > 0)
            kill(s->w[r].pid, sig);
    double until = dsv4_now() + wait_s;
    for (int r = 0; r < s->N; r++) {
        while (s->w[r].pid > 0) {
            pid_t p = waitpid(s->w[r].pid, NULL, WNOHANG);
            if (p == s->w[r].pid || (p < 0 && errno == ECHILD))
                break;
            if (dsv4_now() > until) {
                kill(s->w[r].pid, SIGKILL);
                waitpid(s->w[r].pid, NULL, 0);
                break;
            }
            usleep(2000);
        }
        pthread_mutex_lock(&s->mu);
        close_worker(&s->w[r]);
        pthread_mutex_unlock(&s->mu);
    }
    if (s->group) {
        dsv4_comm_shm_abort(s->group);
        dsv4_comm_shm_destroy(s->group);
        s->group = NULL;
    }
    if (s->sock_path[0] && !s->sock_unlinked)
        unlink_sockets(s);
}

static int spawn_one(struct dsv4d_sup *s, int r)
{
    struct wslot *w = &s->w[r];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return dsv4_error(DSV4_EIO, "socketpair: %s", strerror(errno));
    char a_rank[16], a_n[16], a_ppid[16], a_gen[24], a_thr[16], a_mtp[16], a_seqs[16], a_tok[16],
            a_len[24], a_mem[32];
    snprintf(a_rank, sizeof a_rank, "%d", r);
    snprintf(a_n, sizeof a_n, "%d", s->N);
    snprintf(a_ppid, sizeof a_ppid, "%d", (int)getpid());
    snprintf(a_gen, sizeof a_gen, "%llu", (unsigned long long)s->generation);
    snprintf(a_thr, sizeof a_thr, "%d", s->cfg.threads_per_worker);
    snprintf(a_mtp, sizeof a_mtp, "%d", s->cfg.mtp);
    snprintf(a_seqs, sizeof a_seqs, "%d", s->cfg.max_seqs);
    snprintf(a_tok, sizeof a_tok, "%d", s->cfg.max_batch_tokens);
    snprintf(a_len, sizeof a_len, "%lld", (long long)s->cfg.max_model_len);
    snprintf(a_mem, sizeof a_mem, "%llu", (unsigned long long)s->cfg.state_mem);
    char *argv[64];
    int k = 0;
    argv[k++] = s->exe;
    argv[k++] = "--worker";
    argv[k++] = "--rank", argv[k++] = a_rank;
    argv[k++] = "--nranks", argv[k++] = a_n;
    argv[k++] = "--control", argv[k++] = s->url;
    argv[k++] = "--ppid", argv[k++] = a_ppid;
    argv[k++] = "--generation", argv[k++] = a_gen;
    argv[k++] = "--comm-fd", argv[k++] = "3";
    argv[k++] = "--fd-sock", argv[k++] = "4";
    if (w->image_fd >= 0)
        argv[k++] = "--image-fd", argv[k++] = "5";
    if (w->dev_fd >= 0)
        argv[k++] = "--dev-weights-fd", argv[k++] = "6";
    argv[k++] = "--model", argv[k++] = s->cfg.model;
    argv[k++] = "--device", argv[k++] = s->cfg.device;
    argv[k++] = "--threads-per-worker", argv[k++] = a_thr;
    argv[k++] = "--mtp", argv[k++] = a_mtp;
    argv[k++] = "--max-seqs", argv[k++] = a_seqs;
    argv[k++] = "--max-batch-tokens", argv[k++] = a_tok;
    argv[k++] = "--max-model-len", argv[k++] = a_len;
    argv[k++] = "--state-mem", argv[k++] = a_mem;
    argv[k++] = "--log-level", argv[k++] = s->cfg.log_level;
    argv[k] = NULL;
    int comm_fd = s->group ? dsv4_comm_shm_fd(s->group) : -1;
    /* the child's fds 3-6: communicator, fd socket, weights image, device weights */
    int src[4] = {comm_fd, sv[1], w->image_fd, w->dev_fd};
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return dsv4_error(DSV4_EIO, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* child: only async-signal-safe calls until exec.  Every source is first copied
         * above the targets, so that no dup2 overwrites a source not yet placed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int tmp[4];
        if (src[0] < 0)
            src[0] = open("/dev/null", O_RDONLY);
        for (int i = 0; i < 4; i++)
            tmp[i] = src[i] >= 0 ? fcntl(src[i], F_DUPFD, 64) : -1;
        for (int i = 0; i < 4; i++) {
            if (tmp[i] >= 0)
                dup2(tmp[i], 3 + i); /* the new fd has no FD_CLOEXEC */
            else
                close(3 + i);
        }
        close_range(7, ~0u, 0);
        execv(s->exe, argv);
        _exit(127);
    }
    close(sv[1]);
    w->pid = pid;
    w->fd_sock = sv[0];
    w->last_seen = dsv4_now();
    return 0;
}

/* A fresh group: communicator arena, control socket, one process per rank. */
static int spawn_all(struct dsv4d_sup *s)
{
    int rc, rv;
    s->generation++;
    s->have_rank0 = false;
    for (int j = 0; j < 2; j++)
        if (s->fl_have0[j]) {
            dsv4d_msg_free(&s->fl_rank0[j]);
            s->fl_have0[j] = false;
        }
    s->n_flight = 0;
    if (s->N > 1 && (rc = dsv4_comm_shm_create(s->N, 0, &s->group)))
        return rc;
    snprintf(s->sock_path, sizeof s->sock_path, "%.900s/dsv4d-%d-%llu.sock", s->runtime,
             (int)getpid(), (unsigned long long)s->generation);
    snprintf(s->url, sizeof s->url, "ipc://%s", s->sock_path);
    unlink(s->sock_path);
    s->sock_unlinked = false;
    for (int r = 0; r < s->N; r++) {
        struct wslot *w = &s->w[r];
        /* one socket (and path) per rank: pair1 is one peer per socket */
        char path[DSV4D_PATH_MAX + 80], url[DSV4D_PATH_MAX + 96];
        snprintf(path, sizeof path, "%s.%d", s->sock_path, r);
        snprintf(url, sizeof url, "ipc://%s", path);
        unlink(path);
        if ((rv = nng_pair1_open(&w->sock)) || (rv = nng_listen(w->sock, url, NULL, 0))) {
            if (!rv)
                nng_close(w->sock);
            return dsv4_error(DSV4_EIO, "control socket %s: %s", url, nng_strerror(rv));
        }
        w->sock_open = true;
        /* a send to a rank that died or hangs would block the loop for good (pair1 holds
         * the message until a peer takes it), and with it reaping and the heartbeat checks:
         * bounded by the hang-detection time, after which send_plan fails and the group is
         * restarted */
        nng_socket_set_ms(w->sock, NNG_OPT_SENDTIMEO,
                          (nng_duration)DSV4_MAX(100.0, s->cfg.heartbeat_timeout * 1000.0));
        nng_socket_get_int(w->sock, NNG_OPT_RECVFD, &w->recv_fd);
        snprintf(s->url, sizeof s->url, "%s", url);
        if ((rc = spawn_one(s, r)))
            return rc;
    }
    snprintf(s->url, sizeof s->url, "ipc://%s", s->sock_path);
    s->phase = PH_LOADING;
    s->phase_since = dsv4_now();
    return 0;
}

static void unlink_sockets(struct dsv4d_sup *s)
{
    for (int r = 0; r < s->N; r++) {
        char path[DSV4D_PATH_MAX + 80];
        snprintf(path, sizeof path, "%s.%d", s->sock_path, r);
        unlink(path);
    }
    s->sock_unlinked = true;
}

static int send_all(struct dsv4d_sup *s, void *buf, size_t len)
{
    int rc = 0;
    for (int r = 0; r < s->N; r++) {
        int rv = nng_send(s->w[r].sock, buf, len, 0);
        if (rv && !rc)
            rc = dsv4_error(DSV4_EIO, "rank %d: send: %s", r, nng_strerror(rv));
    }
    free(buf);
    return rc;
}

static int send_plan(struct dsv4d_sup *s, const struct dsv4d_plan *p)
{
    void *buf;
    size_t len;
    int rc = dsv4d_wire_plan(p, &buf, &len);
    if (rc)
        return rc;
    DSV4_ASSERT(s->n_flight < 2);
    int j = s->n_flight++;
    for (int r = 0; r < s->N; r++)
        s->w[r].answered[j] = false;
    if (s->fl_have0[j]) {
        dsv4d_msg_free(&s->fl_rank0[j]);
        s->fl_have0[j] = false;
    }
    s->flight_step[j] = p->step;
    return send_all(s, buf, len);
}

/* ------------------------------------------------------------ failures */

static void recover(struct dsv4d_sup *s, const char *what)
{
    double now = dsv4_now();
    dsv4_log(DSV4_LOG_ERROR, "%s: restarting the worker group", what);
    stop_all(s, SIGKILL, 2.0);
    dsv4d_sched_workers_lost(s->sched);
    atomic_fetch_add(&s->restarts, 1);
    dsv4_metrics_worker_restart(s->metrics);
    /* crash accounting: give up after max_restarts within restart_window */
    int k = 0;
    for (int i = 0; i < s->n_crashes; i++)
        if (now - s->crashes[i] <= s->cfg.restart_window)
            s->crashes[k++] = s->crashes[i];
    s->n_crashes = k;
    if (s->n_crashes < (int)DSV4_ARRAY_LEN(s->crashes))
        s->crashes[s->n_crashes++] = now;
    if (s->n_crashes > s->cfg.max_restarts) {
        pthread_mutex_lock(&s->mu);
        s->given_up = true;
        pthread_mutex_unlock(&s->mu);
        set_state(s, DSV4_SVC_DEGRADED,
                  "gave up: %d worker crashes within %.0f s (last: %s); fix the cause and restart "
                  "dsv4d",
                  s->n_crashes, s->cfg.restart_window, what);
        dsv4d_sched_set_accepting(s->sched, false, "degraded: too many worker crashes");
        dsv4d_sched_end_all(s->sched, DSV4_EIO, "the engine failed repeatedly; retry elsewhere",
                            true);
        s->phase = PH_DOWN;
        return;
    }
    s->consecutive++;
    double backoff = 0.1 * (double)(1u << DSV4_MIN(s->consecutive - 1, 6));
    s->next_spawn = now + DSV4_MIN(backoff, 5.0);
    set_state(s, DSV4_SVC_DEGRADED, "%s; restarting in %.1f s", what, DSV4_MIN(backoff, 5.0));
    s->phase = PH_DOWN;
}

/* Reaps exited workers; a death is a failure (outside a shutdown). */
static void reap(struct dsv4d_sup *s)
{
    for (int r = 0; r < s->N; r++) {
        int st;
        if (s->w[r].pid <= 0)
            continue;
        pid_t p = waitpid(s->w[r].pid, &st, WNOHANG);
        if (p != s->w[r].pid)
            continue;
        char what[160];
        if (WIFSIGNALED(st))
            snprintf(what, sizeof what, "rank %d died (signal %d)", r, WTERMSIG(st));
        else
            snprintf(what, sizeof what, "rank %d exited with status %d", r, WEXITSTATUS(st));
        s->w[r].pid = 0;
        if (s->phase != PH_STOPPED)
            recover(s, what);
        return;
    }
}

static void check_heartbeats(struct dsv4d_sup *s, double now)
{
    if (s->phase == PH_DOWN || s->phase == PH_STOPPED)
        return;
    for (int r = 0; r < s->N; r++)
        if (s->w[r].pid > 0 && now - s->w[r].last_seen > s->cfg.heartbeat_timeout) {
            char what[160];
            snprintf(what, sizeof what, "rank %d hung (no heartbeat for %.1f s)", r,
                     now - s->w[r].last_seen);
            recover(s, what);
            return;
        }
}

/* ------------------------------------------------------------ messages */

static void pop_flight(struct dsv4d_sup *s);
static void plan_done(struct dsv4d_sup *s);

static void on_msg(struct dsv4d_sup *s, int r, struct dsv4d_msg *m)
{
    struct wslot *w = &s->w[r];
    w->last_seen = dsv4_now();
    switch (m->kind) {
    case DSV4D_MSG_HELLO: {
        if (m->u.hello.version != DSV4D_PROTOCOL_VERSION || m->u.hello.rank != r ||
            m->u.hello.generation != s->generation) {
            char what[160];
            snprintf(what, sizeof what, "rank %d: protocol version %u, rank %d (expected %u, %d)",
                     r, m->u.hello.version, m->u.hello.rank, DSV4D_PROTOCOL_VERSION, r);
            recover(s, what);
            break;
        }
        w->hello = true;
        bool all = true;
        for (int i = 0; i < s->N; i++)
            all &= s->w[i].hello;
        if (all && !s->sock_unlinked)
            unlink_sockets(s);
        break;
    }
    case DSV4D_MSG_PROGRESS:
        w->progress = m->u.progress;
        break;
    case DSV4D_MSG_READY:
        pthread_mutex_lock(&s->mu);
        w->info = m->u.ready;
        w->ready = true;
        pthread_mutex_unlock(&s->mu);
        dsv4_log(DSV4_LOG_INFO, "rank %d loaded in %.3f s from %s%s", r, m->u.ready.load_seconds,
                 m->u.ready.from_image ? "its weights image" : "the checkpoint",
                 m->u.ready.device_weights == DSV4D_DEVW_MAPPED     ? ", device weights mapped"
                 : m->u.ready.device_weights == DSV4D_DEVW_UPLOADED ? ", device weights uploaded"
                                                                    : "");
        break;
    case DSV4D_MSG_HEARTBEAT:
        break;
    case DSV4D_MSG_RESULT: {
        int j = -1;
        for (int k = 0; k < s->n_flight; k++)
            if (s->flight_step[k] == m->u.result.step)
                j = k;
        if (j < 0 || w->answered[j])
            break;
        w->answered[j] = true;
        w->st[j] = m->u.result.status;
        snprintf(w->msg[j], sizeof w->msg[j], "%s", m->u.result.message);
        if (r == 0) {
            s->fl_rank0[j] = *m;
            s->fl_have0[j] = true;
            memset(m, 0, sizeof *m); /* kept: freed when the plan is done */
        }
        /* plans end in order: the oldest once every rank answered it */
        for (;;) {
            bool all = s->n_flight > 0;
            for (int i = 0; i < s->N && all; i++)
                all &= s->w[i].answered[0];
            if (!all)
                break;
            pop_flight(s);
            plan_done(s);
            if (s->phase == PH_DOWN || s->phase == PH_STOPPED)
                break; /* plan_done restarted the group: what is in flight is gone */
        }
        break;
    }
    default:
        break;
    }
}

static void read_worker(struct dsv4d_sup *s, int r)
{
    for (int guard = 0; guard < 1024 && s->w[r].sock_open; guard++) {
        void *buf = NULL;
        size_t len = 0;
        int rv = nng_recv(s->w[r].sock, &buf, &len, NNG_FLAG_ALLOC | NNG_FLAG_NONBLOCK);
        if (rv)
            return;
        struct dsv4d_msg m;
        int rc = dsv4d_wire_decode(buf, len, &m);
        nng_free(buf, len);
        if (rc) {
            char what[600];
            snprintf(what, sizeof what, "rank %d sent a malformed message: %s", r, dsv4_errmsg());
            recover(s, what);
            return;
        }
        on_msg(s, r, &m);
        dsv4d_msg_free(&m);
    }
}

static void read_image(struct dsv4d_sup *s, int r)
{
    int fd;
    uint64_t tag;
    if (dsv4d_fd_recv(s->w[r].fd_sock, &fd, &tag))
        return; /* closed: the death is seen by reap() */
    bool dev = ((tag >> 16) & 0xff) == DSV4D_FD_DEVICE;
    int *keep = dev ? &s->w[r].dev_fd : &s->w[r].image_fd;
    if (*keep >= 0)
        close(*keep);
    *keep = fd;
    dsv4_log(DSV4_LOG_INFO, "rank %d: %s kept (restarts %s)", r,
             dev ? "device weights" : "weights image",
             dev ? "map them instead of uploading" : "skip the checkpoint");
}

/* ------------------------------------------------------------ plans */

/* The warm-up: a two-token prompt that samples, then a decode with its drafts, then free. */
static int send_warm(struct dsv4d_sup *s, int stage)
{
    struct dsv4d_plan p = {.step = ++s->pb.next_step};
    static const uint64_t wid = WARM_ID;
    struct dsv4_step_entry *e = &s->warm_entry;
    memset(e, 0, sizeof *e);
    e->id = WARM_ID;
    e->params = dsv4_sample_params_default();
    e->params.temperature = 0;
    e->max_emit = 1 << 20;
    e->n_prompt = 2;
    e->sample = true;
    s->warm_tokens[0] = s->mcfg.bos_token_id >= 0 ? s->mcfg.bos_token_id : 0;
    s->warm_tokens[1] = 1 % s->mcfg.vocab_size;
    if (stage == 1) {
        p.add = &wid;
        p.n_add = 1;
        e->start = 0;
        e->n = 2;
        e->tokens = s->warm_tokens;
    } else if (stage == 2) {
        e->start = 2;
        e->n = 1;
        e->tokens = &s->warm_last;
        e->n_drafts = s->warm_nd;
        e->drafts = s->warm_drafts;
    } else {
        p.free = &wid;
        p.n_free = 1;
    }
    if (stage < 3) {
        p.entries = e;
        p.n_entries = 1;
    }
    s->pb.plan = p;
    return send_plan(s, &p);
}

/* The oldest plan in flight, answered by every rank, becomes the plan done: its statuses and
 * rank 0's result move to status / message / rank0; the follow plan moves up. */
static void pop_flight(struct dsv4d_sup *s)
{
    if (s->have_rank0) {
        dsv4d_msg_free(&s->rank0);
        s->have_rank0 = false;
    }
    for (int r = 0; r < s->N; r++) {
        struct wslot *w = &s->w[r];
        w->status = w->st[0];
        snprintf(w->message, sizeof w->message, "%s", w->msg[0]);
        w->answered[0] = w->answered[1];
        w->st[0] = w->st[1];
        memcpy(w->msg[0], w->msg[1], sizeof w->msg[0]);
        w->answered[1] = false;
    }
    s->rank0 = s->fl_rank0[0];
    s->have_rank0 = s->fl_have0[0];
    s->fl_rank0[0] = s->fl_rank0[1];
    s->fl_have0[0] = s->fl_have0[1];
    memset(&s->fl_rank0[1], 0, sizeof s->fl_rank0[1]);
    s->fl_have0[1] = false;
    s->flight_step[0] = s->flight_step[1];
    s->n_flight--;
}

static void plan_done(struct dsv4d_sup *s)
{
    double now = dsv4_now();
    int status = 0, failed = 0, rf = 0;
    const char *msg = "";
    for (int r = 0; r < s->N; r++)
        if (s->w[r].status) {
            failed++;
            if (!status) {
                status = s->w[r].status;
                msg = s->w[r].message;
                rf = r;
            }
        }
    if (failed > 0 && failed < s->N) {
        /* some ranks ran the plan and some did not: their states may differ, and the next
         * collectives would pair different work; only a fresh group is known to agree (the
         * scheduler re-feeds every request's history, as after a crash) */
        char what[700];
        snprintf(what, sizeof what, "rank %d failed a plan that %d other rank%s ran (%s)", rf,
                 s->N - failed, s->N - failed == 1 ? "" : "s", msg);
        recover(s, what);
        goto out;
    }
    if (s->phase >= PH_WARM1 && s->phase <= PH_WARM3) {
        if (status) {
            char what[700];
            snprintf(what, sizeof what, "warm-up failed: %s", msg);
            recover(s, what);
            goto out;
        }
        if (s->phase == PH_WARM1 && s->have_rank0 && s->rank0.u.result.n_results == 1) {
            const struct dsv4_step_result *x = &s->rank0.u.result.results[0];
            s->warm_last = x->tokens[0];
            s->warm_nd = x->n_drafts;
            memcpy(s->warm_drafts, x->drafts, sizeof s->warm_drafts);
            /* the decode feeds position 2 + n_tokens - 1 */
        }
        s->phase++;
        if (s->phase == PH_SERVING) {
            s->consecutive = 0;
            set_state(s, DSV4_SVC_READY, "%s", "");
            dsv4d_sched_set_accepting(s->sched, true, "");
        } else if (send_warm(s, s->phase - PH_WARM1 + 1)) {
            recover(s, "warm-up: cannot send the plan");
        }
        goto out;
    }
    if (status)
        dsv4d_sched_failed(s->sched, status, msg, now);
    else if (s->have_rank0)
        dsv4d_sched_apply(s->sched, &s->rank0.u.result, now);
out:
    if (s->have_rank0) {
        dsv4d_msg_free(&s->rank0);
        s->have_rank0 = false;
    }
}

/* Pipelining: with one plan in flight, the follow plan behind it when there is one. */
static void send_follow(struct dsv4d_sup *s, double now)
{
    if (s->phase == PH_SERVING && s->n_flight == 1 && s->cfg.pipeline &&
        !atomic_load(&s->drain_requested) && dsv4d_sched_build_follow(s->sched, now, &s->pb) &&
        send_plan(s, &s->pb.plan))
        recover(s, "cannot send a plan to the workers");
}

/* Advances loading -> warming -> serving; drains; sends the next plan. */
static void advance(struct dsv4d_sup *s, double now)
{
    if (atomic_load(&s->drain_requested) && s->phase != PH_SERVING && s->phase != PH_STOPPED) {
        /* nothing runs before the workers are ready: stop at once */
        dsv4d_sched_end_all(s->sched, DSV4_ENOTSUP, "the server is shutting down; retry", true);
        stop_all(s, SIGTERM, 5.0);
        s->phase = PH_STOPPED;
        set_state(s, DSV4_SVC_STOPPED, "%s", "");
        atomic_store(&s->quit, 1);
        return;
    }
    if (s->phase == PH_DOWN) {
        if (s->given_up || now < s->next_spawn)
            return;
        int rc = spawn_all(s);
        if (rc) {
            char what[600];
            snprintf(what, sizeof what, "cannot start the workers: %s", dsv4_errmsg());
            recover(s, what);
        }
        return;
    }
    if (s->phase == PH_LOADING) {
        bool all = true;
        for (int r = 0; r < s->N; r++)
            all &= s->w[r].ready;
        if (!all)
            return;
        const struct dsv4d_ready *i = &s->w[0].info;
        dsv4d_sched_set_pool(s->sched, (int64_t)i->total_blocks, i->block_tokens, i->max_context,
                             i->mtp_depth);
        pthread_mutex_lock(&s->mu);
        bool restarted = s->generation > 1;
        pthread_mutex_unlock(&s->mu);
        if (!restarted || s->state != DSV4_SVC_DEGRADED)
            set_state(s, DSV4_SVC_WARMING, "warm-up step on %d rank%s", s->N, s->N > 1 ? "s" : "");
        s->phase = PH_WARM1;
        if (send_warm(s, 1))
            recover(s, "warm-up: cannot send the plan");
        return;
    }
    send_follow(s, now);
    if (s->phase != PH_SERVING || s->n_flight > 0)
        return;
    if (atomic_load(&s->drain_requested) && s->drain_deadline == 0) {
        pthread_mutex_lock(&s->mu);
        double grace = s->cfg.drain_grace, timeout = s->cfg.drain_timeout;
        pthread_mutex_unlock(&s->mu);
        /* the grace: not ready, still admitting, so that requests a balancer sends before it
         * notices are served rather than refused; the drain timeout counts after it */
        s->grace_end = now + grace;
        s->drain_deadline = s->grace_end + timeout;
        if (grace <= 0) {
            atomic_store(&s->in_grace, false);
            dsv4d_sched_set_accepting(s->sched, false, "draining");
        }
        set_state(s, DSV4_SVC_DRAINING, "finishing running requests (up to %.0f s)", timeout);
    }
    if (s->drain_deadline > 0 && s->grace_end > 0 && now >= s->grace_end) {
        atomic_store(&s->in_grace, false);
        dsv4d_sched_set_accepting(s->sched, false, "draining");
        s->grace_end = 0;
    }
    dsv4d_sched_intake(s->sched, now);
    if (s->drain_deadline > 0 && s->grace_end == 0 &&
        (dsv4d_sched_live(s->sched) == 0 || now >= s->drain_deadline)) {
        dsv4d_sched_end_all(s->sched, DSV4_ENOTSUP, "the server is shutting down; retry", true);
        struct dsv4d_plan_buf *pb = &s->pb;
        /* the last plan frees what the ended requests held (best effort) */
        if (dsv4d_sched_build(s->sched, now, pb) && pb->plan.n_entries == 0)
            send_plan(s, &pb->plan);
        void *buf;
        size_t len;
        if (dsv4d_wire_shutdown(&buf, &len) == 0)
            send_all(s, buf, len);
        s->phase = PH_STOPPED;
        stop_all(s, SIGTERM, 5.0);
        set_state(s, DSV4_SVC_STOPPED, "%s", "");
        atomic_store(&s->quit, 1);
        return;
    }
    if (dsv4d_sched_build(s->sched, now, &s->pb) && send_plan(s, &s->pb.plan)) {
        recover(s, "cannot send a plan to the workers");
        return;
    }
    send_follow(s, now); /* at once: the workers find it waiting when this step ends */
}

static void *loop_main(void *arg)
{
    struct dsv4d_sup *s = arg;
    struct pollfd pfd[1 + 2 * MAX_WORKERS];
    int rc = spawn_all(s);
    if (rc) {
        char what[600];
        snprintf(what, sizeof what, "cannot start the workers: %s", dsv4_errmsg());
        recover(s, what);
    }
    while (!atomic_load(&s->quit)) {
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        for (int r = 0; r < s->N; r++) {
            if (s->w[r].recv_fd >= 0 && s->w[r].sock_open)
                pfd[n++] = (struct pollfd){.fd = s->w[r].recv_fd, .events = POLLIN};
            if (s->w[r].fd_sock >= 0)
                pfd[n++] = (struct pollfd){.fd = s->w[r].fd_sock, .events = POLLIN};
        }
        poll(pfd, (nfds_t)n, TICK_MS);
        atomic_fetch_add(&s->ticks, 1);
        uint64_t v;
        if (pfd[0].revents & POLLIN) {
            ssize_t rd = read(s->wake_fd, &v, sizeof v);
            (void)rd;
        }
        for (int r = 0; r < s->N; r++) {
            if (s->w[r].sock_open)
                read_worker(s, r);
            if (s->w[r].fd_sock >= 0) {
                struct pollfd one = {.fd = s->w[r].fd_sock, .events = POLLIN};
                if (poll(&one, 1, 0) > 0 && (one.revents & POLLIN))
                    read_image(s, r);
            }
        }
        double now = dsv4_now();
        reap(s);
        check_heartbeats(s, now);
        if (s->phase == PH_DOWN || s->phase == PH_LOADING)
            dsv4d_sched_expire(s->sched, now, "the engine was restarting");
        advance(s, now);
        /* load progress for STATUS= */
        if (s->phase == PH_LOADING) {
            uint64_t done = 0, total = 0;
            int ready = 0;
            for (int r = 0; r < s->N; r++) {
                done += s->w[r].progress.bytes_done;
                total += s->w[r].progress.bytes_total;
                ready += s->w[r].ready;
            }
            double el = now - s->phase_since;
            pthread_mutex_lock(&s->mu);
            if (total > 0 && done > 0 && done < total)
                snprintf(s->progress_line, sizeof s->progress_line,
                         "loading: %.1f of %.1f MB, %d of %d ranks ready, ETA %.0f s", done / 1e6,
                         total / 1e6, ready, s->N, el * (double)(total - done) / (double)done);
            else
                snprintf(s->progress_line, sizeof s->progress_line,
                         "loading: %d of %d ranks ready (%.0f s)", ready, s->N, el);
            pthread_mutex_unlock(&s->mu);
        } else {
            pthread_mutex_lock(&s->mu);
            s->progress_line[0] = 0;
            pthread_mutex_unlock(&s->mu);
        }
    }
    if (s->phase != PH_STOPPED) {
        dsv4d_sched_end_all(s->sched, DSV4_ENOTSUP, "the server is shutting down; retry", true);
        stop_all(s, SIGKILL, 1.0);
        set_state(s, DSV4_SVC_STOPPED, "%s", "");
    }
    return NULL;
}

/* ------------------------------------------------------------ public */

int dsv4d_sup_start(const struct dsv4d_config *c, struct dsv4_metrics *m, struct dsv4d_sup **out)
{
    char path[DSV4D_PATH_MAX + 32];
    int rc;
    *out = NULL;
    if (c->workers < 1 || c->workers > MAX_WORKERS)
        return dsv4_error(DSV4_EINVAL, "workers: %d not in [1, %d]", c->workers, MAX_WORKERS);
    struct dsv4d_sup *s = calloc(1, sizeof *s);
    if (!s)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    s->cfg = *c;
    s->metrics = m;
    s->N = c->workers;
    s->wake_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    for (int r = 0; r < MAX_WORKERS; r++) {
        s->w[r].image_fd = s->w[r].dev_fd = s->w[r].fd_sock = s->w[r].recv_fd = -1;
    }
    s->state = DSV4_SVC_STARTING;
    s->svc.ops = &sup_ops;
    s->svc.impl = s;
    if (c->worker_exe[0]) {
        snprintf(s->exe, sizeof s->exe, "%s", c->worker_exe);
    } else {
        ssize_t n = readlink("/proc/self/exe", s->exe, sizeof s->exe - 1);
        if (n <= 0) {
            rc = dsv4_error(DSV4_EIO, "cannot find this program (/proc/self/exe)");
            goto fail;
        }
        s->exe[n] = 0;
    }
    const char *rt = c->runtime_dir[0] ? c->runtime_dir : getenv("RUNTIME_DIRECTORY");
    snprintf(s->runtime, sizeof s->runtime, "%s", rt && rt[0] ? rt : "/run/dsv4d");
    if (mkdir(s->runtime, 0750) < 0 && errno != EEXIST) {
        rc = dsv4_error(DSV4_EIO, "runtime_dir %s: %s", s->runtime, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/config.json", c->model);
    if ((rc = dsv4_config_load(path, &s->mcfg)))
        goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", c->model);
    if (access(path, R_OK) == 0 && (rc = dsv4_tokenizer_load(path, &s->tok)))
        goto fail;
    if (c->served_model_name[0]) {
        snprintf(s->model_name, sizeof s->model_name, "%s", c->served_model_name);
    } else {
        char tmp[DSV4D_PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", c->model);
        size_t l = strlen(tmp);
        while (l > 1 && tmp[l - 1] == '/')
            tmp[--l] = 0;
        snprintf(s->model_name, sizeof s->model_name, "%s", basename(tmp));
    }
    if ((rc = load_keys(s, c->api_key_file)))
        goto fail;
    struct dsv4d_sched_opts so = {.max_seqs = c->max_seqs,
                                  .max_batch_tokens = c->max_batch_tokens,
                                  .max_queue = c->max_queue,
                                  .mtp = c->mtp < 0 ? 1 : c->mtp,
                                  .eos_id = s->mcfg.eos_token_id,
                                  .tok = s->tok,
                                  .default_timeout = c->request_timeout,
                                  .metrics = m,
                                  .swap_min_tokens = c->swap_min_tokens,
                                  .swap_max_tokens = c->swap_max_tokens};
    if ((rc = dsv4d_sched_create(&so, &s->sched)))
        goto fail;
    dsv4d_sched_set_accepting(s->sched, false, "loading");
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        rc = dsv4_error(DSV4_EIO, "eventfd: %s", strerror(errno));
        goto fail;
    }
    set_state(s, DSV4_SVC_LOADING, "starting %d worker%s", s->N, s->N > 1 ? "s" : "");
    if (pthread_create(&s->loop, NULL, loop_main, s)) {
        rc = dsv4_error(DSV4_EIO, "cannot start the supervisor thread");
        goto fail;
    }
    s->loop_started = true;
    *out = s;
    return 0;
fail:
    dsv4d_sup_free(s);
    return rc;
}

struct dsv4_svc *dsv4d_sup_svc(struct dsv4d_sup *s)
{
    return &s->svc;
}

void dsv4d_sup_drain(struct dsv4d_sup *s)
{
    atomic_store(&s->drain_requested, 1);
    pthread_mutex_lock(&s->mu);
    enum dsv4_svc_state st = s->state;
    double grace = s->cfg.drain_grace, timeout = s->cfg.drain_timeout;
    pthread_mutex_unlock(&s->mu);
    /* readiness flips at once (the loop may be inside a step); admission stops at once too
     * unless a grace is configured, which the loop then times */
    if (st != DSV4_SVC_STOPPED)
        set_state(s, DSV4_SVC_DRAINING, "finishing running requests (up to %.0f s)", timeout);
    if (grace > 0 && st == DSV4_SVC_READY)
        atomic_store(&s->in_grace, true);
    else if (!atomic_load(&s->in_grace))
        dsv4d_sched_set_accepting(s->sched, false, "draining");
    wake(s);
}

bool dsv4d_sup_drain_requested(struct dsv4d_sup *s)
{
    return atomic_load(&s->drain_requested) != 0;
}

void dsv4d_sup_reload(struct dsv4d_sup *s, const struct dsv4d_config *c, char *changed, size_t len)
{
    struct dsv4d_config fresh = s->cfg;
    dsv4d_config_reload(&fresh, c, changed, len);
    if (load_keys(s, fresh.api_key_file))
        dsv4_log(DSV4_LOG_ERROR, "reload: %s (keeping the old keys)", dsv4_errmsg());
    enum dsv4_log_level lv;
    if (!dsv4_log_parse_level(fresh.log_level, &lv))
        dsv4_log_set_level(lv);
    pthread_mutex_lock(&s->mu);
    s->cfg.max_queue = fresh.max_queue;
    s->cfg.drain_timeout = fresh.drain_timeout;
    s->cfg.drain_grace = fresh.drain_grace;
    s->cfg.request_timeout = fresh.request_timeout;
    snprintf(s->cfg.api_key_file, sizeof s->cfg.api_key_file, "%s", fresh.api_key_file);
    snprintf(s->cfg.log_level, sizeof s->cfg.log_level, "%s", fresh.log_level);
    s->cfg.open_probes = fresh.open_probes;
    pthread_mutex_unlock(&s->mu);
}

enum dsv4_svc_state dsv4d_sup_state(struct dsv4d_sup *s, char *why, size_t len)
{
    pthread_mutex_lock(&s->mu);
    enum dsv4_svc_state st = s->state;
    if (why && len)
        snprintf(why, len, "%s", s->why);
    pthread_mutex_unlock(&s->mu);
    return st;
}

uint64_t dsv4d_sup_ticks(struct dsv4d_sup *s)
{
    return atomic_load(&s->ticks);
}

void dsv4d_sup_progress(struct dsv4d_sup *s, char *line, size_t len)
{
    pthread_mutex_lock(&s->mu);
    snprintf(line, len, "%s", s->progress_line);
    pthread_mutex_unlock(&s->mu);
}

int dsv4d_sup_worker_pids(struct dsv4d_sup *s, pid_t *pids, int n)
{
    pthread_mutex_lock(&s->mu);
    int k = DSV4_MIN(n, s->N);
    for (int r = 0; r < k; r++)
        pids[r] = s->w[r].pid;
    pthread_mutex_unlock(&s->mu);
    return k;
}

uint64_t dsv4d_sup_restarts(struct dsv4d_sup *s)
{
    return atomic_load(&s->restarts);
}

void dsv4d_sup_counts(struct dsv4d_sup *s, struct dsv4d_sched_counts *c)
{
    dsv4d_sched_counts(s->sched, c);
}

int dsv4d_sup_rank_info(struct dsv4d_sup *s, int rank, double *load_seconds, bool *from_image)
{
    if (rank < 0 || rank >= s->N)
        return dsv4_error(DSV4_EINVAL, "rank %d of %d", rank, s->N);
    pthread_mutex_lock(&s->mu);
    *load_seconds = s->w[rank].info.load_seconds;
    *from_image = s->w[rank].info.from_image;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int dsv4d_sup_rank_device_weights(struct dsv4d_sup *s, int rank)
{
    if (rank < 0 || rank >= s->N)
        return dsv4_error(DSV4_EINVAL, "rank %d of %d", rank, s->N);
    pthread_mutex_lock(&s->mu);
    int v = s->w[rank].info.device_weights;
    pthread_mutex_unlock(&s->mu);
    return v;
}

void dsv4d_sup_free(struct dsv4d_sup *s)
{
    if (!s)
        return;
    atomic_store(&s->quit, 1);
    if (s->wake_fd >= 0)
        wake(s);
    if (s->loop_started)
        pthread_join(s->loop, NULL);
    for (int r = 0; r < MAX_WORKERS; r++) {
        if (s->w[r].image_fd >= 0)
            close(s->w[r].image_fd);
        if (s->w[r].dev_fd >= 0)
            close(s->w[r].dev_fd);
    }
    if (s->have_rank0)
        dsv4d_msg_free(&s->rank0);
    for (int j = 0; j < 2; j++)
        if (s->fl_have0[j])
            dsv4d_msg_free(&s->fl_rank0[j]);
    dsv4d_plan_buf_free(&s->pb);
    dsv4d_sched_free(s->sched);
    dsv4_tokenizer_free(s->tok);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
