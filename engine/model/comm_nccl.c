/*
 * comm_nccl.c - the NCCL backend of the communicator (engine/model/comm.h):
 * ranks on GPUs, one or several hosts, buffers in device memory.  The only
 * file that includes nccl.h (STYLE.md §8); without NCCL in the build its
 * entry points return DSV4_ENOTSUP.
 *
 * Every collective is enqueued on the stream the rank's CUDA backend runs
 * its kernels on (dsv4_cuda_stream), so it reads the buffers the kernels
 * before it wrote and the kernels after it read its results, and then it is
 * waited for: comm.h's collectives are blocking.  The wait is bounded: the
 * stream is polled together with ncclCommGetAsyncError, and past the
 * timeout, or on an asynchronous NCCL error (a peer died, a network
 * failure), the communicator is aborted (ncclCommAbort) and this and every
 * later call return DSV4_EIO, instead of a rank hanging for ever.  The
 * communicator is created non-blocking for the same reason: a rank whose
 * peers never arrive gives up after the timeout.
 *
 * Sums: ncclAllReduce's order of additions is NCCL's (comm.h); the forward
 * pass only all-reduces disjoint contributions (each element nonzero on one
 * rank), whose sum is exact in any order.  all_to_allv cannot check its
 * peers' counts (shm can): mismatched counts are the caller's bug here.
 */
#include "engine/model/comm_int.h"

#include "base/dsv4.h"
#include "dsv4-build.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_NCCL

#include <cuda_runtime_api.h>
/* nccl.h declares a few functions without prototypes */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop
#include <time.h>

#define DEFAULT_TIMEOUT_MS 600000

struct nccl_comm {
    struct dsv4_comm c; /* first: the handle header */
    ncclComm_t nc;
    cudaStream_t st;
    int device;
    int timeout_ms;
    bool dead;
    float *scratch; /* the barrier's one float */
};

static struct nccl_comm *NC(struct dsv4_comm *c)
{
    return (struct nccl_comm *)c;
}

static void nap(void)
{
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
}

static int dead(struct nccl_comm *n, const char *what, const char *why)
{
    if (!n->dead) {
        if (n->nc)
            ncclCommAbort(n->nc);
        n->nc = NULL; /* aborted: nothing left to destroy */
        n->dead = true;
    }
    return dsv4_error(DSV4_EIO, "nccl: %s: %s (communicator aborted)", what, why);
}

/* Waits until a non-blocking NCCL call has been accepted (ncclInProgress -> success). */
static int settle(struct nccl_comm *n, ncclResult_t r, const char *what)
{
    double t0 = dsv4_now();
    while (r == ncclInProgress) {
        if ((dsv4_now() - t0) * 1000 > n->timeout_ms)
            return dead(n, what, "timed out");
        nap();
        if (ncclCommGetAsyncError(n->nc, &r) != ncclSuccess)
            return dead(n, what, "cannot query the communicator");
    }
    if (r != ncclSuccess)
        return dead(n, what, ncclGetErrorString(r));
    return 0;
}

/* Waits for the stream (the collective and everything before it), bounded.  Not while the
 * stream records a graph (a query would break the recording): then nccl_drain waits after
 * the graph is launched. */
static int finish(struct nccl_comm *n, const char *what)
{
    double t0 = dsv4_now();
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(n->st, &cs) != cudaSuccess)
        return dead(n, what, "cannot query the stream");
    if (cs != cudaStreamCaptureStatusNone)
        return 0;
    for (;;) {
        cudaError_t e = cudaStreamQuery(n->st);
        if (e == cudaSuccess)
            return 0;
        if (e != cudaErrorNotReady)
            return dead(n, what, cudaGetErrorString(e));
        ncclResult_t ae;
        if (ncclCommGetAsyncError(n->nc, &ae) != ncclSuccess ||
            (ae != ncclSuccess && ae != ncclInProgress))
            return dead(n, what, "asynchronous error (a peer failed or the network broke)");
        if ((dsv4_now() - t0) * 1000 > n->timeout_ms)
            return dead(n, what, "timed out");
        nap();
    }
}

static int enter(struct nccl_comm *n, const char *what)
{
    if (n->dead)
        return dsv4_error(DSV4_EIO, "nccl: %s on an aborted communicator", what);
    if (cudaSetDevice(n->device) != cudaSuccess)
        return dsv4_error(DSV4_EIO, "nccl: %s: cannot select GPU %d", what, n->device);
    return 0;
}

static int nccl_all_reduce(struct dsv4_comm *c, float *buf, size_t count)
{
    struct nccl_comm *n = NC(c);
    int rc = enter(n, "all_reduce");
    if (rc || !count)
        return rc;
    rc = settle(n, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, n->nc, n->st),
                "all_reduce");
    return rc ? rc : finish(n, "all_reduce");
}

static int nccl_all_gather(struct dsv4_comm *c, const void *send, void *recv, size_t bytes)
{
    struct nccl_comm *n = NC(c);
    int rc = enter(n, "all_gather");
    if (rc || !bytes)
        return rc;
    rc = settle(n, ncclAllGather(send, recv, bytes, ncclUint8, n->nc, n->st), "all_gather");
    return rc ? rc : finish(n, "all_gather");
}

/* Point-to-point exchange with every rank in one group (all_to_all, all_to_allv). */
static int exchange(struct nccl_comm *n, const uint8_t *send, const size_t *sb, const size_t *so,
                    uint8_t *recv, const size_t *rb, const size_t *ro, const char *what)
{
    int rc = enter(n, what);
    if (rc)
        return rc;
    ncclResult_t r = ncclGroupStart();
    for (int j = 0; j < n->c.size && r == ncclSuccess; j++) {
        if (sb[j])
            r = ncclSend(send + so[j], sb[j], ncclUint8, j, n->nc, n->st);
        if (r == ncclSuccess && rb[j])
            r = ncclRecv(recv + ro[j], rb[j], ncclUint8, j, n->nc, n->st);
    }
    ncclResult_t g = ncclGroupEnd();
    if (r == ncclSuccess)
        r = g;
    rc = settle(n, r, what);
    return rc ? rc : finish(n, what);
}

static int nccl_all_to_all(struct dsv4_comm *c, const void *send, void *recv, size_t bytes)
{
    struct nccl_comm *n = NC(c);
    int N = c->size;
    size_t *v = malloc(sizeof(size_t) * 2 * (size_t)N);
    if (!v)
        return dsv4_error(DSV4_ENOMEM, "nccl: out of memory");
    for (int j = 0; j < N; j++) {
        v[j] = bytes;
        v[N + j] = bytes * (size_t)j;
    }
    int rc = exchange(n, send, v, v + N, recv, v, v + N, "all_to_all");
    free(v);
    return rc;
}

static int nccl_all_to_allv(struct dsv4_comm *c, const void *send, const size_t *send_bytes,
                            const size_t *send_offs, void *recv, const size_t *recv_bytes,
                            const size_t *recv_offs)
{
    return exchange(NC(c), send, send_bytes, send_offs, recv, recv_bytes, recv_offs, "all_to_allv");
}

static int nccl_broadcast(struct dsv4_comm *c, void *buf, size_t bytes, int root)
{
    struct nccl_comm *n = NC(c);
    int rc = enter(n, "broadcast");
    if (rc)
        return rc;
    if (root < 0 || root >= c->size)
        return dsv4_error(DSV4_EINVAL, "nccl: broadcast root %d of %d", root, c->size);
    if (!bytes)
        return 0;
    rc = settle(n, ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->nc, n->st), "broadcast");
    return rc ? rc : finish(n, "broadcast");
}

static int nccl_barrier(struct dsv4_comm *c)
{
    return nccl_all_reduce(c, NC(c)->scratch, 1);
}

static int nccl_drain(struct dsv4_comm *c)
{
    struct nccl_comm *n = NC(c);
    int rc = enter(n, "drain");
    return rc ? rc : finish(n, "drain");
}

static void nccl_free(struct dsv4_comm *c)
{
    struct nccl_comm *n = NC(c);
    cudaSetDevice(n->device);
    if (n->nc)
        ncclCommDestroy(n->nc);
    if (n->scratch)
        cudaFree(n->scratch);
    free(n);
}

static const struct dsv4_comm_ops nccl_ops = {.name = "nccl",
                                              .barrier = nccl_barrier,
                                              .all_reduce_sum_f32 = nccl_all_reduce,
                                              .all_gather = nccl_all_gather,
                                              .all_to_all = nccl_all_to_all,
                                              .all_to_allv = nccl_all_to_allv,
                                              .broadcast = nccl_broadcast,
                                              .drain = nccl_drain,
                                              .free = nccl_free};

int dsv4_comm_nccl_unique_id(uint8_t id[DSV4_COMM_NCCL_ID_BYTES])
{
    ncclUniqueId u;
    _Static_assert(sizeof u == DSV4_COMM_NCCL_ID_BYTES, "NCCL unique id size");
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return dsv4_error(DSV4_EIO, "nccl: unique id: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    return 0;
}

int dsv4_comm_nccl_init(const uint8_t id[DSV4_COMM_NCCL_ID_BYTES], int rank, int size, int device,
                        void *stream, int timeout_ms, struct dsv4_comm **out)
{
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size || device < 0 || timeout_ms < 0)
        return dsv4_error(DSV4_EINVAL, "nccl: rank %d of %d on GPU %d, timeout %d ms", rank, size,
                          device, timeout_ms);
    if (cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        return dsv4_error(DSV4_ENOTSUP, "nccl: no usable GPU %d", device);
    }
    struct nccl_comm *n = calloc(1, sizeof *n);
    if (!n)
        return dsv4_error(DSV4_ENOMEM, "nccl: out of memory");
    n->c.ops = &nccl_ops;
    n->c.rank = rank;
    n->c.size = size;
    n->device = device;
    n->st = (cudaStream_t)stream;
    n->timeout_ms = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS;
    if (cudaMalloc((void **)&n->scratch, sizeof(float)) != cudaSuccess) {
        cudaGetLastError();
        free(n);
        return dsv4_error(DSV4_ENOMEM, "nccl: no device memory");
    }
    cudaMemset(n->scratch, 0, sizeof(float));
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* so that a missing peer times out instead of hanging */
    ncclResult_t r = ncclCommInitRankConfig(&n->nc, size, u, rank, &cfg);
    int rc = 0;
    if (r != ncclSuccess && r != ncclInProgress) {
        rc = dsv4_error(DSV4_EIO, "nccl: init of rank %d of %d: %s", rank, size,
                        ncclGetErrorString(r));
    } else {
        rc = settle(n, r, "init"); /* aborts the communicator when it fails */
    }
    if (rc) {
        nccl_free(&n->c);
        return rc;
    }
    *out = &n->c;
    return 0;
}

#else /* !HAVE_NCCL */

int dsv4_comm_nccl_unique_id(uint8_t id[DSV4_COMM_NCCL_ID_BYTES])
{
    (void)id;
    return dsv4_error(DSV4_ENOTSUP, "nccl: this build has no NCCL (configure --with-nccl)");
}

int dsv4_comm_nccl_init(const uint8_t id[DSV4_COMM_NCCL_ID_BYTES], int rank, int size, int device,
                        void *stream, int timeout_ms, struct dsv4_comm **out)
{
    (void)id;
    (void)rank;
    (void)size;
    (void)device;
    (void)stream;
    (void)timeout_ms;
    *out = NULL;
    return dsv4_error(DSV4_ENOTSUP, "nccl: this build has no NCCL (configure --with-nccl)");
}

#endif
