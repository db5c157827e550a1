/*
 * worker.c - a dsv4d worker process: one tensor/expert-parallel rank
 * (DESIGN.md §1).  Started by the supervisor (fork + exec of `dsv4d
 * --worker ...`), never by hand.
 *
 * Life: dial the supervisor's control socket, say Hello; bind the rank's
 * weights, from the supervisor's image of them when it passed one (a
 * restart: no checkpoint file is opened), else from the checkpoint, copying
 * them into a sealed memfd image that goes to the supervisor (SCM_RIGHTS) so
 * that the next incarnation skips the checkpoint; create the backend; on a
 * device backend (cuda, or devsim in tests) map the device weights the
 * supervisor kept from an earlier incarnation when it passed them, else
 * upload the weights into shareable device memory and pass its descriptor
 * to the supervisor; create the step object; say Ready; then run every Plan the supervisor sends (same
 * plan on every rank; the shared-memory communicator joins the ranks) and
 * answer with a Result (rank 0 with the tokens), until Shutdown.
 *
 * Every rank must run the same entries, or the ranks' collectives would
 * pair different work: a swap that fails on one rank (its host memory)
 * drops the sequence on every rank (the ranks agree on the union of their
 * lost sequences over the communicator before the step).
 *
 * Failpoints for tests (environment, read at start, logged): DSV4D_FAILPOINT
 * = "swap@R" makes every swap on rank R fail as if its host memory had run
 * out; "plan@R:N" makes rank R answer its N-th plan with an error after
 * running it (the ranks then disagree; the supervisor restarts the group).
 *
 * A second thread sends a Heartbeat every DSV4D_HEARTBEAT_MS, so the
 * supervisor can tell a stopped or wedged process (no heartbeats) from a
 * slow step.  The worker exits when its parent dies (PR_SET_PDEATHSIG set
 * before exec, and the parent pid re-checked after), when the control
 * socket fails, or on Shutdown.
 */
#include "daemon/worker.h"

#include "base/dsv4.h"
#include "dsv4-build.h"
#include "daemon/config.h"
#include "daemon/fdpass.h"
#include "daemon/wire.h"
#include "engine/io/fileio.h"
#include "engine/model/comm.h"
#include "engine/model/model.h"
#include "engine/model/step.h"
#include "kernels/backend.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

struct worker {
    struct dsv4d_config cfg;
    int rank, nranks, comm_fd, fd_sock, image_fd, dev_fd;
    pid_t ppid;
    uint64_t generation;
    char control[DSV4D_PATH_MAX + 16];
    nng_socket sock;
    pthread_mutex_t send_mu;
    atomic_uint_fast64_t step_in_flight;
    atomic_int quit;
    struct dsv4_comm_shm *group;
    struct dsv4_comm *comm;  /* the shm group's */
    struct dsv4_comm *nccl;  /* NCCL over the ranks' GPUs, when each has its own */
    struct dsv4_model *m;    /* host binding (image or checkpoint) */
    struct dsv4_model *mdev; /* its device copy (device backends), or NULL */
    struct dsv4_backend *be;
    struct dsv4_step *step;
    struct dsv4_step_result *res;
    int max_seqs;
    /* the entries a plan runs (without lost sequences', follow entries resolved), their
     * indexes in the plan and results, the lost ids */
    struct dsv4_step_entry *ents;
    int *eidx;
    struct dsv4_step_result *res2;
    uint64_t *lost; /* [2 * max_seqs]: a plan swaps each sequence out or in at most once */
    float *lostf;   /* [2 * max_seqs]: per swap of a plan, 1 where it failed (agreement) */
    /* failpoints (DSV4D_FAILPOINT; -1: none) */
    int fail_swap_rank, fail_plan_rank;
    long fail_plan_at, plans;
    /* how the last plan's entries continue (follow plans), and the next record */
    struct cont {
        uint64_t id;
        int64_t start;
        int32_t tok, max_left, nd;
        int32_t drafts[DSV4_STEP_MAX_DRAFTS];
        bool alive;
    } * cont, *cont2;
    int n_cont, cont_at; /* records; where the last lookup matched */
};

static int send_buf(struct worker *w, void *buf, size_t len)
{
    pthread_mutex_lock(&w->send_mu);
    int rv = nng_send(w->sock, buf, len, 0);
    pthread_mutex_unlock(&w->send_mu);
    free(buf);
    if (rv)
        return dsv4_error(DSV4_EIO, "worker: send: %s", nng_strerror(rv));
    return 0;
}

static void *heartbeat_main(void *arg)
{
    struct worker *w = arg;
    uint64_t seq = 0;
    while (!atomic_load(&w->quit)) {
        struct dsv4d_heartbeat h = {++seq, atomic_load(&w->step_in_flight), w->rank};
        void *buf;
        size_t len;
        if (dsv4d_wire_heartbeat(&h, &buf, &len) == 0 && send_buf(w, buf, len))
            break;
        if (getppid() != w->ppid)
            _exit(1); /* the supervisor is gone */
        usleep(DSV4D_HEARTBEAT_MS * 1000);
    }
    return NULL;
}

static void progress(void *ctx, uint64_t done, uint64_t total)
{
    struct worker *w = ctx;
    struct dsv4d_progress p = {.bytes_done = done, .bytes_total = total};
    snprintf(p.phase, sizeof p.phase, "loading");
    void *buf;
    size_t len;
    if (dsv4d_wire_progress(&p, &buf, &len) == 0)
        send_buf(w, buf, len);
}

/* Cold load: the checkpoint, then a sealed memfd image for the supervisor. */
static int load_checkpoint(struct worker *w, uint64_t *image_bytes)
{
    char path[DSV4D_PATH_MAX + 32];
    char *cfg_json = NULL;
    size_t cfg_len = 0;
    int rc, fd = -1;
    snprintf(path, sizeof path, "%s/config.json", w->cfg.model);
    if ((rc = dsv4_file_read(path, 16 << 20, &cfg_json, &cfg_len)))
        return rc;
    if ((rc = dsv4_model_open(w->cfg.model, w->rank, w->nranks, &w->m)))
        goto out;
    char name[64];
    snprintf(name, sizeof name, "dsv4d-weights-rank-%d", w->rank);
    fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        rc = dsv4_error(DSV4_EIO, "worker: memfd_create: %s", strerror(errno));
        goto out;
    }
    if ((rc = dsv4_model_export_shard(w->m, cfg_json, fd, progress, w, image_bytes)))
        goto out;
    /* read-only from now on: nobody may change the weights under a running rank */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
        rc = dsv4_error(DSV4_EIO, "worker: sealing the weights image: %s", strerror(errno));
        goto out;
    }
    if ((rc = dsv4d_fd_send(w->fd_sock, fd, dsv4d_fd_tag(w->generation, DSV4D_FD_IMAGE, w->rank))))
        goto out;
out:
    if (fd >= 0)
        close(fd);
    free(cfg_json);
    return rc;
}

/* The rank's backend: cpu, devsim, or GPU rank % devices (CUDA_VISIBLE_DEVICES chooses
 * which GPUs; several ranks on one GPU share it, a test mode). */
static int make_backend(struct worker *w, int threads)
{
    char name[32];
    if (strcmp(w->cfg.device, "cuda"))
        return dsv4_backend_create(w->cfg.device, threads, &w->be);
#ifdef HAVE_CUDA
    int n = dsv4_cuda_device_count();
    if (n < 0)
        return n;
    if (n == 0)
        return dsv4_error(DSV4_ENOTSUP, "worker: device cuda but no GPU is visible");
    snprintf(name, sizeof name, "cuda:%d", w->rank % n);
#else
    snprintf(name, sizeof name, "cuda");
#endif
    return dsv4_backend_create(name, threads, &w->be);
}

/*
 * GPU ranks on distinct GPUs exchange through NCCL: rank 0 makes the group id and broadcasts
 * it over the shm communicator, every rank joins on its GPU and the backend's stream.  Ranks
 * sharing a GPU, and builds without NCCL, keep the shm communicator (the forward pass stages
 * device buffers through host memory: correct, slow, said in the log).
 */
static int join_nccl(struct worker *w)
{
#ifdef HAVE_CUDA
    if (w->nranks < 2 || strcmp(w->cfg.device, "cuda"))
        return 0;
    int n = dsv4_cuda_device_count();
    struct {
        int32_t status;
        uint8_t id[DSV4_COMM_NCCL_ID_BYTES];
    } g;
    memset(&g, 0, sizeof g);
    if (w->rank == 0)
        g.status = n < w->nranks ? DSV4_ENOTSUP : dsv4_comm_nccl_unique_id(g.id);
    int rc = dsv4_comm_broadcast(w->comm, &g, sizeof g, 0);
    if (rc)
        return dsv4_error_ctx(rc, "worker: NCCL group id");
    if (g.status) {
        if (w->rank == 0)
            dsv4_log(DSV4_LOG_WARN,
                     "%d ranks on %d GPUs%s: exchanges staged through host memory "
                     "(slow; a test mode)",
                     w->nranks, n, n < w->nranks ? "" : " and no NCCL in this build");
        return 0;
    }
    rc = dsv4_comm_nccl_init(g.id, w->rank, w->nranks, w->rank % n, dsv4_cuda_stream(w->be), 0,
                             &w->nccl);
    if (rc)
        return dsv4_error_ctx(rc, "worker: joining the NCCL group");
    dsv4_log(DSV4_LOG_DEBUG, "NCCL group of %d ranks joined", w->nranks);
#else
    (void)w;
#endif
    return 0;
}

/*
 * A device backend's weights: mapped from the descriptor the supervisor kept (nothing
 * uploaded), else uploaded into shareable memory whose descriptor goes to the supervisor
 * (plain device memory where the backend has none).  A descriptor that no longer maps
 * (its allocation gone, or not this rank's) costs an upload, never the start.
 */
static int device_weights(struct worker *w, struct dsv4d_ready *ready)
{
    int rc, fd = -1;
    if (w->be->device == DSV4_DEVICE_HOST)
        return 0;
    double t0 = dsv4_now();
    if (w->dev_fd >= 0) {
        rc = dsv4_model_import(w->m, w->be, w->dev_fd, &w->mdev);
        close(w->dev_fd);
        w->dev_fd = -1;
        if (!rc) {
            ready->device_weights = DSV4D_DEVW_MAPPED;
            dsv4_log(DSV4_LOG_INFO,
                     "device weights mapped from the supervisor's descriptor in "
                     "%.3f s",
                     dsv4_now() - t0);
            return 0;
        }
        dsv4_log(DSV4_LOG_WARN, "device weights not reusable (%s): uploading", dsv4_errmsg());
    }
    ready->device_weights = DSV4D_DEVW_UPLOADED;
    if (!w->be->alloc_shared)
        return dsv4_model_upload(w->m, w->be, &w->mdev);
    if ((rc = dsv4_model_upload_shared(w->m, w->be, &fd, &w->mdev)))
        return rc;
    rc = dsv4d_fd_send(w->fd_sock, fd, dsv4d_fd_tag(w->generation, DSV4D_FD_DEVICE, w->rank));
    close(fd);
    dsv4_log(DSV4_LOG_DEBUG, "device weights uploaded in %.3f s", dsv4_now() - t0);
    return rc;
}

static int setup(struct worker *w, struct dsv4d_ready *ready)
{
    double t0 = dsv4_now();
    int rc;
    uint64_t image_bytes = 0;
    if (w->nranks > 1) {
        if ((rc = dsv4_comm_shm_open_fd(w->comm_fd, &w->group)) ||
            (rc = dsv4_comm_shm_attach(w->group, w->rank, &w->comm)))
            return dsv4_error_ctx(rc, "worker: communicator");
    }
    if (w->image_fd >= 0) {
        rc = dsv4_model_open_shard(w->image_fd, w->rank, w->nranks, &w->m);
        ready->from_image = true;
        off_t end = lseek(w->image_fd, 0, SEEK_END);
        image_bytes = end > 0 ? (uint64_t)end : 0;
    } else {
        rc = load_checkpoint(w, &image_bytes);
    }
    if (rc)
        return rc;
    double t1 = dsv4_now();
    const struct dsv4_config *c = dsv4_model_config(w->m);
    int threads = w->cfg.threads_per_worker;
    if (threads <= 0)
        threads = (int)DSV4_MAX(1L, sysconf(_SC_NPROCESSORS_ONLN) / w->nranks);
    if ((rc = make_backend(w, threads)) || (rc = join_nccl(w)) || (rc = device_weights(w, ready)))
        return rc;
    int mtp = w->cfg.mtp < 0 ? (dsv4_model_has_mtp(w->m) ? 1 : 0) : w->cfg.mtp;
    int64_t ctx = w->cfg.max_model_len > 0 ? w->cfg.max_model_len
                                           : DSV4_MIN(c->max_position_embeddings, (int64_t)32768);
    struct dsv4_step_opts so = {.max_seqs = w->cfg.max_seqs,
                                .max_tokens = w->cfg.max_batch_tokens,
                                .max_ctx = ctx,
                                .mtp = mtp,
                                .state_bytes = w->cfg.state_mem,
                                .threads = 1,
                                .graphs = w->cfg.decode_graphs && strcmp(w->cfg.device, "cpu")};
    if ((rc = dsv4_step_create(w->mdev ? w->mdev : w->m, w->be, w->nccl ? w->nccl : w->comm, &so,
                               &w->step)))
        return rc;
    /* every decode-shaped graph recorded before READY: no request pays for a recording */
    double tw = dsv4_now();
    if ((rc = dsv4_step_warm(w->step)))
        return rc;
    if (so.graphs) {
        struct dsv4_step_stats gs;
        dsv4_step_get_stats(w->step, &gs);
        dsv4_log(DSV4_LOG_INFO,
                 "decode steps padded to %d bucket sizes, %d graphs recorded (%.3f s)",
                 gs.graphs.buckets, gs.graphs.graphs, dsv4_now() - tw);
    }
    w->max_seqs = w->cfg.max_seqs;
    w->res = calloc((size_t)w->max_seqs, sizeof *w->res);
    w->res2 = calloc((size_t)w->max_seqs, sizeof *w->res2);
    w->ents = calloc((size_t)w->max_seqs, sizeof *w->ents);
    w->eidx = calloc((size_t)w->max_seqs, sizeof *w->eidx);
    w->lost = calloc(2 * (size_t)w->max_seqs, sizeof *w->lost);
    w->lostf = calloc(2 * (size_t)w->max_seqs, sizeof *w->lostf);
    w->cont = calloc((size_t)w->max_seqs, sizeof *w->cont);
    w->cont2 = calloc((size_t)w->max_seqs, sizeof *w->cont2);
    if (!w->res || !w->res2 || !w->ents || !w->eidx || !w->lost || !w->lostf || !w->cont ||
        !w->cont2)
        return dsv4_error(DSV4_ENOMEM, "worker: out of memory");
    struct dsv4_step_stats st;
    dsv4_step_get_stats(w->step, &st);
    ready->total_blocks = (uint64_t)st.total_blocks;
    ready->block_tokens = st.block_tokens;
    ready->max_seqs = st.max_seqs;
    ready->state_bytes = st.state_bytes;
    ready->load_seconds = dsv4_now() - t0;
    dsv4_log(DSV4_LOG_DEBUG, "weights %.3f s (%s), engine %.3f s", t1 - t0,
             ready->from_image ? "image" : "checkpoint", dsv4_now() - t1);
    ready->image_bytes = image_bytes;
    ready->vocab_size = c->vocab_size;
    ready->max_context = ctx;
    ready->mtp_depth = mtp;
    return 0;
}

static bool has_id(const uint64_t *ids, int n, uint64_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* The sequence of a plan's i-th swap (plan.swap_out, then plan.swap_in). */
static uint64_t swap_id(const struct dsv4d_plan *p, int i)
{
    return i < p->n_swap_out ? p->swap_out[i] : p->swap_in[i - p->n_swap_out];
}

/*
 * Swaps (plan.swap_out, then plan.swap_in).  A swap that fails (host memory for the
 * compressed state, blocks for it coming back) costs the sequence its state, not the plan:
 * it is dropped (known, length 0) and reported lost, so the scheduler re-prefills it.  With
 * several ranks a swap may fail on one rank only: the ranks sum their failure flags and each
 * drops every sequence some rank lost, so all run the same entries.
 */
static int run_swaps(struct worker *w, const struct dsv4d_plan *p, int *n_lost)
{
    int nl = 0, n = p->n_swap_out + p->n_swap_in, rc;
    if (n > 2 * w->max_seqs)
        return dsv4_error(DSV4_EINVAL, "worker: plan of %d swaps, at most %d", n, 2 * w->max_seqs);
    for (int i = 0; i < n; i++) {
        bool out = i < p->n_swap_out;
        uint64_t id = swap_id(p, i);
        struct dsv4_swap_stats ss = {0};
        w->lostf[i] = 0.0f;
        if (w->rank == w->fail_swap_rank)
            rc = dsv4_error(DSV4_ENOMEM, "failpoint swap@%d: no host memory", w->rank);
        else
            rc = out ? dsv4_step_seq_swap_out(w->step, id, &ss)
                     : dsv4_step_seq_swap_in(w->step, id, &ss);
        if (!rc) {
            dsv4_log(DSV4_LOG_DEBUG, "sequence %llu swapped %s", (unsigned long long)id,
                     out ? "out" : "in");
            continue;
        }
        dsv4_log(DSV4_LOG_WARN, "sequence %llu: swap %s failed (%s): state dropped, re-prefilled",
                 (unsigned long long)id, out ? "out" : "in", dsv4_errmsg());
        if ((rc = dsv4_step_seq_drop(w->step, id)))
            return rc;
        w->lostf[i] = 1.0f;
        w->lost[nl++] = id;
    }
    if (w->comm && n > 0) {
        if ((rc = dsv4_comm_all_reduce_sum_f32(w->comm, w->lostf, (size_t)n)))
            return dsv4_error_ctx(rc, "worker: agreeing on lost swaps");
        for (int i = 0; i < n; i++) {
            uint64_t id = swap_id(p, i);
            if (w->lostf[i] == 0.0f || has_id(w->lost, nl, id))
                continue;
            dsv4_log(DSV4_LOG_WARN, "sequence %llu: a swap failed on another rank: state dropped",
                     (unsigned long long)id);
            if ((rc = dsv4_step_seq_drop(w->step, id)))
                return rc;
            w->lost[nl++] = id;
        }
    }
    *n_lost = nl;
    return 0;
}

/* The record of id.  A follow plan mostly lists the sequences in the order the last plan ran
 * them, so the search starts after the last match: one comparison each in that case. */
static const struct cont *cont_of(struct worker *w, uint64_t id)
{
    for (int k = 0; k < w->n_cont; k++) {
        int i = (w->cont_at + k) % w->n_cont;
        if (w->cont[i].id == id) {
            w->cont_at = (i + 1) % w->n_cont;
            return &w->cont[i];
        }
    }
    return NULL;
}

/* The entries of p this worker runs (w->ents, their plan indexes in w->eidx): all but those
 * of lost sequences; a follow plan's continue from the last plan's results (those that
 * finished there are left out). */
static int plan_entries(struct worker *w, const struct dsv4d_plan *p, int n_lost)
{
    int n = 0;
    for (int i = 0; i < p->n_entries; i++) {
        struct dsv4_step_entry e = p->entries[i];
        if (has_id(w->lost, n_lost, e.id))
            continue;
        if (p->follow) {
            const struct cont *c = cont_of(w, e.id);
            if (!c || !c->alive)
                continue;
            e.start = c->start;
            e.n = 1;
            e.tokens = &c->tok;
            e.n_drafts = c->nd;
            e.drafts = c->drafts;
            e.sample = true;
            e.max_emit = c->max_left;
        }
        w->eidx[n] = i;
        w->ents[n++] = e;
    }
    return n;
}

/* Records how each entry run continues: its last emitted token is the next input. */
static void record_cont(struct worker *w, int n)
{
    for (int j = 0; j < n; j++) {
        const struct dsv4_step_entry *e = &w->ents[j];
        const struct dsv4_step_result *x = &w->res2[j];
        struct cont *c = &w->cont2[j];
        c->id = e->id;
        c->alive = e->sample && x->n_tokens > 0 && x->finish == DSV4_FINISH_NONE &&
                   e->max_emit - x->n_tokens > 0;
        if (!c->alive)
            continue;
        c->start = e->start + e->n - 1 + x->n_tokens;
        c->tok = x->tokens[x->n_tokens - 1];
        c->max_left = e->max_emit - x->n_tokens;
        c->nd = x->n_drafts;
        memcpy(c->drafts, x->drafts, sizeof c->drafts);
    }
    struct cont *t = w->cont;
    w->cont = w->cont2;
    w->cont2 = t;
    w->n_cont = n;
    w->cont_at = 0;
}

/* One plan: lifecycle, then the step; the result goes back (rank 0 with the tokens). */
static int run_plan(struct worker *w, const struct dsv4d_plan *p)
{
    struct dsv4d_result r = {.step = p->step, .rank = w->rank};
    int rc = 0, n_lost = 0;
    atomic_store(&w->step_in_flight, p->step);
    if (p->follow && (p->n_free || p->n_drop || p->n_add || p->n_swap_out || p->n_swap_in))
        rc = dsv4_error(DSV4_EINVAL, "worker: a follow plan with lifecycle lists");
    for (int i = 0; i < p->n_free && !rc; i++)
        dsv4_step_seq_free(w->step, p->free[i]);
    for (int i = 0; i < p->n_drop && !rc; i++)
        rc = dsv4_step_seq_drop(w->step, p->drop[i]);
    if (!rc)
        rc = run_swaps(w, p, &n_lost);
    for (int i = 0; i < p->n_add && !rc; i++)
        rc = dsv4_step_seq_add(w->step, p->add[i]);
    if (!rc && p->n_entries > w->max_seqs)
        rc = dsv4_error(DSV4_EINVAL, "worker: plan of %d entries, at most %d", p->n_entries,
                        w->max_seqs);
    int n = rc ? 0 : plan_entries(w, p, n_lost);
    if (!rc && n > 0)
        rc = dsv4_step_run(w->step, w->ents, n, w->res2);
    if (!rc && w->rank == w->fail_plan_rank && ++w->plans == w->fail_plan_at)
        rc = dsv4_error(DSV4_EIO, "failpoint plan@%d:%ld", w->rank, w->fail_plan_at);
    if (!rc) {
        /* results in plan order; entries not run (lost, finished) get empty ones */
        for (int i = 0; i < p->n_entries; i++)
            w->res[i] = (struct dsv4_step_result){.id = p->entries[i].id};
        for (int j = 0; j < n; j++)
            w->res[w->eidx[j]] = w->res2[j];
        record_cont(w, n);
    } else {
        w->n_cont = 0; /* nothing to follow from a failed step */
    }
    r.status = rc;
    if (rc)
        snprintf(r.message, sizeof r.message, "%s", dsv4_errmsg());
    else if (w->rank == 0) {
        r.results = w->res;
        r.n_results = p->n_entries;
        r.lost = w->lost;
        r.n_lost = n_lost;
    }
    struct dsv4_step_stats st;
    dsv4_step_get_stats(w->step, &st);
    r.free_blocks = (uint64_t)st.free_blocks;
    atomic_store(&w->step_in_flight, 0);
    void *buf;
    size_t len;
    int erc = dsv4d_wire_result(&r, &buf, &len);
    return erc ? erc : send_buf(w, buf, len);
}

/* DSV4D_FAILPOINT (see the top of this file); anything else is ignored with a warning */
static void failpoints(struct worker *w, const char *v)
{
    int r = -1, k = 0;
    long at = 0;
    w->fail_swap_rank = w->fail_plan_rank = -1;
    if (!v || !*v)
        return;
    if (sscanf(v, "swap@%d%n", &r, &k) == 1 && v[k] == 0 && r >= 0)
        w->fail_swap_rank = r;
    else if (sscanf(v, "plan@%d:%ld%n", &r, &at, &k) == 2 && v[k] == 0 && r >= 0 && at > 0) {
        w->fail_plan_rank = r;
        w->fail_plan_at = at;
    } else {
        dsv4_log(DSV4_LOG_WARN, "DSV4D_FAILPOINT '%s' not understood: ignored", v);
        return;
    }
    if (r == w->rank)
        dsv4_log(DSV4_LOG_WARN, "failpoint %s active on this rank", v);
}

static int parse(struct worker *w, int argc, char **argv)
{
    dsv4d_config_defaults(&w->cfg);
    w->comm_fd = w->fd_sock = w->image_fd = w->dev_fd = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = dsv4d_config_flag(&w->cfg, argc, argv, &i);
        if (rc < 0)
            return rc;
        if (rc == 1)
            continue;
        if (!strcmp(a, "--worker"))
            continue;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--rank"))
            w->rank = atoi(v);
        else if (ARG("--nranks"))
            w->nranks = atoi(v);
        else if (ARG("--control"))
            snprintf(w->control, sizeof w->control, "%s", v);
        else if (ARG("--comm-fd"))
            w->comm_fd = atoi(v);
        else if (ARG("--fd-sock"))
            w->fd_sock = atoi(v);
        else if (ARG("--image-fd"))
            w->image_fd = atoi(v);
        else if (ARG("--dev-weights-fd"))
            w->dev_fd = atoi(v);
        else if (ARG("--ppid"))
            w->ppid = (pid_t)atoi(v);
        else if (ARG("--generation"))
            w->generation = strtoull(v, NULL, 10);
        else
            return dsv4_error(DSV4_EINVAL, "worker: unknown option %s", a);
#undef ARG
    }
    if (w->nranks < 1 || w->rank < 0 || w->rank >= w->nranks || !w->control[0] || w->ppid <= 1)
        return dsv4_error(DSV4_EINVAL, "worker: started without its rank, control socket or "
                                       "parent (dsv4d --worker is not run by hand)");
    return 0;
}

int dsv4d_worker_main(int argc, char **argv)
{
    struct worker w;
    memset(&w, 0, sizeof w);
    int rc = parse(&w, argc, argv);
    if (rc) {
        fprintf(stderr, "dsv4d: %s\n", dsv4_errmsg());
        return 2;
    }
    char tag[64];
    snprintf(tag, sizeof tag, "dsv4d[rank %d]", w.rank);
    dsv4_log_set_syslog(getenv("DSV4D_SYSLOG") != NULL, tag);
    failpoints(&w, getenv("DSV4D_FAILPOINT"));
    enum dsv4_log_level lv;
    if (!dsv4_log_parse_level(w.cfg.log_level, &lv))
        dsv4_log_set_level(lv);
    /* the parent may have died between fork and exec */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != w.ppid)
        return 1;
    pthread_mutex_init(&w.send_mu, NULL);
    int rv = nng_pair1_open(&w.sock);
    if (!rv)
        rv = nng_dial(w.sock, w.control, NULL, 0);
    if (rv) {
        dsv4_log(DSV4_LOG_ERROR, "cannot reach the supervisor at %s: %s", w.control,
                 nng_strerror(rv));
        return 1;
    }
    struct dsv4d_hello h = {DSV4D_PROTOCOL_VERSION, w.rank, w.nranks, (int)getpid(), w.generation};
    void *buf;
    size_t len;
    if ((rc = dsv4d_wire_hello(&h, &buf, &len)) || (rc = send_buf(&w, buf, len)))
        goto out;
    pthread_t hb;
    bool hb_started = pthread_create(&hb, NULL, heartbeat_main, &w) == 0;
    struct dsv4d_ready ready = {0};
    if ((rc = setup(&w, &ready))) {
        dsv4_log(DSV4_LOG_ERROR, "load failed: %s", dsv4_errmsg());
        goto stop;
    }
    dsv4_log(DSV4_LOG_INFO, "ready in %.3f s (%s%s), %llu state blocks", ready.load_seconds,
             ready.from_image ? "weights image" : "checkpoint",
             ready.device_weights == DSV4D_DEVW_MAPPED     ? ", device weights mapped"
             : ready.device_weights == DSV4D_DEVW_UPLOADED ? ", device weights uploaded"
                                                           : "",
             (unsigned long long)ready.total_blocks);
    if ((rc = dsv4d_wire_ready(&ready, &buf, &len)) || (rc = send_buf(&w, buf, len)))
        goto stop;
    for (;;) {
        void *msg = NULL;
        size_t mlen = 0;
        rv = nng_recv(w.sock, &msg, &mlen, NNG_FLAG_ALLOC);
        if (rv) {
            rc = dsv4_error(DSV4_EIO, "worker: control socket: %s", nng_strerror(rv));
            break;
        }
        struct dsv4d_msg m;
        rc = dsv4d_wire_decode(msg, mlen, &m);
        nng_free(msg, mlen);
        if (rc)
            break;
        if (m.kind == DSV4D_MSG_SHUTDOWN) {
            dsv4d_msg_free(&m);
            rc = 0;
            break;
        }
        if (m.kind == DSV4D_MSG_PLAN)
            rc = run_plan(&w, &m.u.plan);
        dsv4d_msg_free(&m);
        if (rc)
            break;
    }
stop:
    atomic_store(&w.quit, 1);
    if (hb_started)
        pthread_join(hb, NULL);
out:
    if (rc)
        dsv4_log(DSV4_LOG_ERROR, "%s", dsv4_errmsg());
    nng_close(w.sock);
    dsv4_step_free(w.step);
    dsv4_model_close(w.mdev);
    dsv4_backend_destroy(w.be);
    dsv4_model_close(w.m);
    dsv4_comm_free(w.nccl);
    dsv4_comm_free(w.comm);
    dsv4_comm_shm_destroy(w.group);
    free(w.res);
    free(w.res2);
    free(w.ents);
    free(w.eidx);
    free(w.cont);
    free(w.cont2);
    free(w.lost);
    free(w.lostf);
    return rc ? 1 : 0;
}
