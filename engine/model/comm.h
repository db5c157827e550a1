/*
 * comm.h - the communicator between the ranks of one model instance
 * (DESIGN.md §1): one interface, two backends.  The CPU backend
 * (engine/model/comm_shm.c) runs N ranks over one shared-memory arena with futex
 * barriers; the NCCL backend (engine/model/comm_nccl.c) wraps NCCL on GPUs.
 *
 * Semantics (every backend):
 *   - Collectives are blocking and are called by every rank of the group in
 *     the same order with matching arguments (sizes, root).  Each rank owns
 *     its struct dsv4_comm handle; a handle is used by one thread at a time.
 *   - Buffers are where the backend computes: host memory for shm, device
 *     memory for NCCL.  Send and receive buffers must not overlap unless a
 *     function says "in place".
 *   - all_reduce_sum_f32 sums in rank order, ((x_0 + x_1) + x_2) + ..., so
 *     every rank gets bit-identical results that do not depend on timing
 *     (shm; NCCL documents its own order).
 *   - Mismatched arguments between ranks (different sizes or roots, bad
 *     all_to_allv counts) are detected where the backend can (shm does) and
 *     make every rank return DSV4_EMISMATCH for that call rather than hang or
 *     read out of bounds.  A rank whose local arguments are invalid still
 *     takes part and the call fails on all ranks with DSV4_EINVAL.
 *   - After an abort (a rank died; dsv4_comm_shm_abort) every pending and
 *     later call returns DSV4_EIO.
 */
#ifndef DSV4_COMM_H
#define DSV4_COMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dsv4_comm;

int dsv4_comm_rank(const struct dsv4_comm *c);
int dsv4_comm_size(const struct dsv4_comm *c);
const char *dsv4_comm_backend(const struct dsv4_comm *c); /* "shm", "nccl" */

/* Returns when every rank has called it. */
int dsv4_comm_barrier(struct dsv4_comm *c);

/* buf[n] (FP32) in place: buf = sum over ranks r of buf_r, summed in rank order. */
int dsv4_comm_all_reduce_sum_f32(struct dsv4_comm *c, float *buf, size_t n);

/* recv[size * bytes] = concat over ranks r of send_r[bytes] (equal chunks, rank
 * order).  In place allowed: send == recv + rank * bytes. */
int dsv4_comm_all_gather(struct dsv4_comm *c, const void *send, void *recv, size_t bytes);

/* Chunk j of send ([size][bytes]) goes to rank j; recv ([size][bytes]) chunk r
 * comes from rank r: recv_j[r] = send_r[j]. */
int dsv4_comm_all_to_all(struct dsv4_comm *c, const void *send, void *recv, size_t bytes);

/*
 * Variable all-to-all, counts and offsets in bytes, arrays of [size]:
 * rank r sends send[send_offs[j] .. + send_bytes[j]) to rank j, which
 * receives it at recv[recv_offs[r] .. + recv_bytes[r]).  Requires
 * recv_bytes on rank j [r] == send_bytes on rank r [j] (checked by shm).
 */
int dsv4_comm_all_to_allv(struct dsv4_comm *c, const void *send, const size_t *send_bytes,
                          const size_t *send_offs, void *recv, const size_t *recv_bytes,
                          const size_t *recv_offs);

/* buf[bytes] of rank `root` is copied into buf on every rank. */
int dsv4_comm_broadcast(struct dsv4_comm *c, void *buf, size_t bytes, int root);

/*
 * Waits, within the communicator's timeout, until the collectives this rank queued are
 * complete.  The device communicator (nccl) waits for each collective itself except while
 * its stream records a graph; a recorded collective is waited for here after the graph
 * runs, so that a dead peer fails the step instead of hanging it.  Immediate for shm.
 */
int dsv4_comm_drain(struct dsv4_comm *c);

/* Releases this rank's handle (not the group). */
void dsv4_comm_free(struct dsv4_comm *c);

/* ---- shared-memory backend (engine/model/comm_shm.c) ----
 *
 * The group state lives in one arena that holds no pointers: a header
 * (magic, sizes, barrier words, per-rank call descriptors, an abort flag)
 * and one bounded slot per rank through which data moves in chunks, so
 * messages of any size pass through an arena of fixed size.  The arena is
 * a memfd mapping MAP_SHARED and the barriers are process-shared futexes,
 * so the same layout serves ranks that are threads of one process (now) or
 * separate worker processes that map the same memfd (later).
 */
struct dsv4_comm_shm;

/* Default bytes of one rank's data slot. */
#define DSV4_COMM_SHM_DEFAULT_SLOT (1u << 20)
/* Most ranks of one shm group. */
#define DSV4_COMM_SHM_MAX_RANKS 64

/* Creates the arena for n_ranks (1..DSV4_COMM_SHM_MAX_RANKS) with slot_bytes
 * per rank (0: default; rounded up to 64 bytes times n_ranks, at least 4 KiB). */
int dsv4_comm_shm_create(int n_ranks, size_t slot_bytes, struct dsv4_comm_shm **out);

/* The memfd holding the arena (-1 when memfd_create was unavailable and the
 * arena is an anonymous mapping): what a supervisor hands to worker
 * processes.  Owned by the group. */
int dsv4_comm_shm_fd(const struct dsv4_comm_shm *g);

/* Maps an arena made by dsv4_comm_shm_create (in this or another process)
 * from its fd (dup'ed; the caller keeps its own), after checking its header
 * and layout (DSV4_EFORMAT otherwise).  Ranks then attach as usual; a rank
 * may be attached in only one process at a time. */
int dsv4_comm_shm_open_fd(int fd, struct dsv4_comm_shm **out);

/* Unmaps this process's view of the arena; every handle attached through it
 * must be freed first (handles of other processes are not affected). */
void dsv4_comm_shm_destroy(struct dsv4_comm_shm *g);

/* The handle of `rank` on group g (each rank attaches once). */
int dsv4_comm_shm_attach(struct dsv4_comm_shm *g, int rank, struct dsv4_comm **out);

/* Marks the group dead: blocked and later calls on every rank return DSV4_EIO.
 * A group is not revived: after a rank dies, the survivors free their
 * handles and the supervisor creates a fresh arena for the new set of ranks. */
void dsv4_comm_shm_abort(struct dsv4_comm_shm *g);

/* Bytes of one rank's data slot, as rounded by create. */
size_t dsv4_comm_shm_slot_bytes(const struct dsv4_comm_shm *g);

/*
 * Runs fn(comm, arg) on n rank threads over a fresh shm group (slot_bytes as
 * for create) and waits for all of them.  Returns 0 if every fn returned 0,
 * otherwise the status (and message) of the rank that failed first.  When a
 * rank fails the group is aborted, so the other ranks cannot hang in a
 * collective (their pending calls return DSV4_EIO).
 */
typedef int (*dsv4_comm_rank_fn)(struct dsv4_comm *comm, void *arg);
int dsv4_comm_run_threads(int n, size_t slot_bytes, dsv4_comm_rank_fn fn, void *arg);

/* ---- NCCL backend (engine/model/comm_nccl.c; DSV4_ENOTSUP in builds without NCCL) ----
 *
 * One rank per GPU, on one or several hosts; buffers are device memory of the rank's GPU.
 * Collectives are enqueued on `stream` (the cudaStream_t of the rank's CUDA backend,
 * dsv4_cuda_stream in kernels/cuda/cuda.h; NULL: the legacy default stream) and waited for,
 * at most timeout_ms (0: 10 minutes) each, creation included: past it, or on an
 * asynchronous NCCL error, the communicator is aborted and the call and every later one
 * return DSV4_EIO.  all_reduce_sum_f32 sums in NCCL's order (exact for the forward pass's
 * disjoint contributions); all_to_allv cannot detect mismatched counts.
 */
#define DSV4_COMM_NCCL_ID_BYTES 128

/* A fresh group id, made once (by the supervisor or rank 0) and handed to every rank. */
int dsv4_comm_nccl_unique_id(uint8_t id[DSV4_COMM_NCCL_ID_BYTES]);

/* Joins group `id` as rank `rank` of `size` on GPU `device`; returns when every rank has
 * joined (or DSV4_EIO after the timeout). */
int dsv4_comm_nccl_init(const uint8_t id[DSV4_COMM_NCCL_ID_BYTES], int rank, int size, int device,
                        void *stream, int timeout_ms, struct dsv4_comm **out);

#ifdef __cplusplus
}
#endif

#endif
