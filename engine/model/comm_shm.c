/*
 * comm_shm.c - the CPU backend of comm.h: N ranks exchange data through one
 * shared-memory arena synchronised by a futex barrier.
 *
 * Arena layout (offsets only, no pointers, so that worker processes mapping
 * the same memfd at different addresses can share it):
 *   header   magic, version, sizes, offsets, abort flag, barrier words
 *   desc     [2][n] call descriptors (op, sizes, root, "my arguments are valid")
 *   counts   [2][n][2][n] uint64: all_to_allv send / recv byte counts
 *   slots    [n][2][half]: per rank, two halves of slot_bytes / 2
 *
 * Rounds.  Every collective is a sequence of rounds, numbered s = 0, 1, ...
 * per handle (all ranks run the same sequence).  In round s a rank writes
 * only its own half s&1 (and its descriptor / count rows of parity s&1),
 * passes the barrier, then reads other ranks' halves s&1.  A rank writes
 * parity s&1 again only in round s+2, after the barrier of round s+1, which
 * nobody passes before every rank has finished reading round s; so one
 * barrier per round suffices and nothing is overwritten while being read.
 * The first round of each call carries the call's descriptor: after its
 * barrier every rank compares all descriptors and, if any differ or any rank
 * flagged bad arguments, every rank returns the same error.
 *
 * All-reduce determinism: in each chunk rank r sums segment r over the slots
 * in rank order (x_0 + x_1) + x_2 ... and publishes it; everyone copies the
 * published segments, so all ranks hold bit-identical sums that do not
 * depend on timing or on which rank reduced which segment.  Small messages
 * take one round in which every rank sums all of it in the same order,
 * which gives the same bits.
 *
 * Barrier: a central counter plus a generation word; the last arriver
 * resets the counter and bumps the generation; the others spin briefly
 * (only when there are at least as many CPUs as ranks) and then futex-wait
 * on the generation (shared, not FUTEX_PRIVATE, so it also works across
 * processes).  Waits time out every 100 ms to notice an abort.
 */
#include "engine/model/comm_int.h"
#include "base/dsv4.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SHM_MAGIC   0x4d4d4f4334565344ull /* "DSV4COMM" */
#define SHM_VERSION 1u
#define SHM_ALIGN   64u

enum shm_op {
    OP_BARRIER = 1,
    OP_ALL_REDUCE = 2,
    OP_ALL_GATHER = 3,
    OP_ALL_TO_ALL = 4,
    OP_ALL_TO_ALLV = 5,
    OP_BROADCAST = 6
};

struct shm_desc {
    uint32_t op;
    uint32_t valid; /* 0: this rank's arguments are bad */
    uint64_t a;     /* element / byte count */
    uint64_t b;     /* root */
    uint64_t pad;
};

struct shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t n_ranks;
    uint64_t slot_bytes; /* per rank, both halves */
    uint64_t arena_bytes;
    uint64_t desc_off;
    uint64_t counts_off;
    uint64_t slots_off;
    _Atomic uint32_t aborted;
    _Atomic uint64_t attached; /* bit r: rank r has a handle */
    alignas(64) _Atomic uint32_t bar_count;
    alignas(64) _Atomic uint32_t bar_gen;
    alignas(64) char end[1];
};

/* The process-local side of a group. */
struct dsv4_comm_shm {
    void *base;
    size_t bytes;
    int fd; /* memfd, -1 for an anonymous mapping */
    int n;
    int spin;
    _Atomic int local_handles; /* handles attached through this mapping */
};

struct shm_comm {
    struct dsv4_comm pub; /* first: the handle users see */
    struct dsv4_comm_shm *g;
    struct shm_header *h;
    char *base;
    uint64_t round;
    size_t half;
    int spin;
};

static inline struct shm_comm *sc(struct dsv4_comm *c)
{
    return (struct shm_comm *)c;
}

static inline struct shm_desc *desc_at(struct shm_comm *c, uint64_t round, int rank)
{
    struct shm_desc *d = (struct shm_desc *)(c->base + c->h->desc_off);
    return &d[(round & 1) * (uint64_t)c->pub.size + (uint64_t)rank];
}

/* counts[parity][rank][0 send / 1 recv][peer] */
static inline uint64_t *counts_at(struct shm_comm *c, uint64_t round, int rank, int dir)
{
    uint64_t n = (uint64_t)c->pub.size;
    uint64_t *m = (uint64_t *)(c->base + c->h->counts_off);
    return m + (((round & 1) * n + (uint64_t)rank) * 2 + (uint64_t)dir) * n;
}

static inline char *half_at(struct shm_comm *c, uint64_t round, int rank)
{
    return c->base + c->h->slots_off + (uint64_t)rank * c->h->slot_bytes +
           (round & 1) * (uint64_t)c->half;
}

/* ---- barrier ---- */

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int aborted(const struct shm_comm *c)
{
    return atomic_load_explicit(&c->h->aborted, memory_order_acquire) != 0;
}

static int bar_wait(struct shm_comm *c)
{
    struct shm_header *h = c->h;
    if (aborted(c))
        return dsv4_error(DSV4_EIO, "comm shm: group aborted");
    uint32_t gen = atomic_load_explicit(&h->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&h->bar_count, 1, memory_order_acq_rel) ==
        (uint32_t)c->pub.size - 1) {
        atomic_store_explicit(&h->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->bar_gen, 1, memory_order_release);
        futex_wake_all(&h->bar_gen);
        return 0;
    }
    for (int i = 0; i < c->spin; i++) {
        if (atomic_load_explicit(&h->bar_gen, memory_order_acquire) != gen)
            return 0;
        cpu_relax();
    }
    while (atomic_load_explicit(&h->bar_gen, memory_order_acquire) == gen) {
        if (aborted(c))
            return dsv4_error(DSV4_EIO, "comm shm: group aborted while rank %d waited",
                              c->pub.rank);
        futex_wait(&h->bar_gen, gen, 100000000L);
    }
    return 0;
}

/*
 * The handshake half of a call's first round: publishes this rank's
 * descriptor (already written by the caller's data step), waits, and checks
 * that all ranks called the same thing with valid arguments.  Advances the
 * round.  Returns the same status on every rank.
 */
static int handshake(struct shm_comm *c, const struct shm_desc *mine, const char *what)
{
    struct shm_desc *d = desc_at(c, c->round, c->pub.rank);
    *d = *mine;
    int rc = bar_wait(c);
    if (rc)
        return rc;
    uint64_t r = c->round++;
    int invalid = -1;
    for (int j = 0; j < c->pub.size; j++) {
        const struct shm_desc *o = desc_at(c, r, j);
        if (o->op != mine->op || o->a != mine->a || o->b != mine->b) {
            return dsv4_error(DSV4_EMISMATCH,
                              "comm shm: %s: rank %d called op %u (%llu, %llu), rank %d op %u "
                              "(%llu, %llu)",
                              what, c->pub.rank, mine->op, (unsigned long long)mine->a,
                              (unsigned long long)mine->b, j, o->op, (unsigned long long)o->a,
                              (unsigned long long)o->b);
        }
        if (!o->valid && invalid < 0)
            invalid = j;
    }
    if (invalid >= 0)
        return dsv4_error(DSV4_EINVAL, "comm shm: %s: rank %d passed invalid arguments", what,
                          invalid);
    return 0;
}

/* ---- collectives ---- */

static int shm_barrier(struct dsv4_comm *pc)
{
    struct shm_comm *c = sc(pc);
    struct shm_desc me = {.op = OP_BARRIER, .valid = 1};
    return handshake(c, &me, "barrier");
}

/* Floats per all-reduce segment: a 16-float multiple with n segments per half. */
static size_t reduce_seg(const struct shm_comm *c)
{
    size_t per = c->half / sizeof(float) / (size_t)c->pub.size;
    return per / 16 * 16;
}

/* Up to this many floats over all ranks (n * size), an all-reduce takes one
 * round in which every rank sums all of it (one barrier instead of two:
 * latency wins over the redundant adds for decode-sized messages). */
#define SMALL_REDUCE 65536

static int shm_all_reduce(struct dsv4_comm *pc, float *buf, size_t n)
{
    struct shm_comm *c = sc(pc);
    const int R = c->pub.size, me = c->pub.rank;
    const size_t seg = reduce_seg(c), chunk = seg * (size_t)R;
    struct shm_desc d = {.op = OP_ALL_REDUCE, .valid = buf != NULL || n == 0, .a = n};
    int rc;
    if (n > 0 && n <= chunk && n * (size_t)R <= SMALL_REDUCE) {
        /* one round: every rank sums everything itself, in the same rank order */
        if (d.valid)
            memcpy(half_at(c, c->round, me), buf, n * sizeof(float));
        if ((rc = handshake(c, &d, "all_reduce_sum_f32")))
            return rc;
        uint64_t r = c->round - 1;
        const float *s0 = (const float *)half_at(c, r, 0);
        for (size_t e = 0; e < n; e++)
            buf[e] = s0[e];
        for (int j = 1; j < R; j++) {
            const float *sj = (const float *)half_at(c, r, j);
            for (size_t e = 0; e < n; e++)
                buf[e] += sj[e];
        }
        return 0;
    }
    for (size_t off = 0; off == 0 || off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        /* round A: my chunk into my half */
        float *mine = (float *)half_at(c, c->round, me);
        if (d.valid && m)
            memcpy(mine, buf + off, m * sizeof(float));
        if (off == 0) {
            if ((rc = handshake(c, &d, "all_reduce_sum_f32")))
                return rc;
        } else {
            if ((rc = bar_wait(c)))
                return rc;
            c->round++;
        }
        if (m == 0)
            return 0;
        uint64_t ra = c->round - 1;
        /* my segment, summed in rank order, into my half of round B */
        size_t lo = (size_t)me * seg, hi = lo + seg < m ? lo + seg : m;
        float *out = (float *)half_at(c, c->round, me);
        if (lo < hi) {
            const float *s0 = (const float *)half_at(c, ra, 0);
            for (size_t e = lo; e < hi; e++)
                out[e] = s0[e];
            for (int j = 1; j < R; j++) {
                const float *sj = (const float *)half_at(c, ra, j);
                for (size_t e = lo; e < hi; e++)
                    out[e] += sj[e];
            }
        }
        /* round B: everybody's segments back into buf */
        if ((rc = bar_wait(c)))
            return rc;
        uint64_t rb = c->round++;
        for (int j = 0; j < R; j++) {
            size_t jlo = (size_t)j * seg, jhi = jlo + seg < m ? jlo + seg : m;
            if (jlo < jhi)
                memcpy(buf + off + jlo, (const float *)half_at(c, rb, j) + jlo,
                       (jhi - jlo) * sizeof(float));
        }
    }
    return 0;
}

static int shm_all_gather(struct dsv4_comm *pc, const void *send, void *recv, size_t bytes)
{
    struct shm_comm *c = sc(pc);
    const int R = c->pub.size, me = c->pub.rank;
    const size_t chunk = c->half;
    struct shm_desc d = {
            .op = OP_ALL_GATHER, .valid = (send != NULL && recv != NULL) || bytes == 0, .a = bytes};
    int rc;
    for (size_t off = 0; off == 0 || off < bytes; off += chunk) {
        size_t m = bytes - off < chunk ? bytes - off : chunk;
        if (d.valid && m)
            memcpy(half_at(c, c->round, me), (const char *)send + off, m);
        if (off == 0) {
            if ((rc = handshake(c, &d, "all_gather")))
                return rc;
        } else {
            if ((rc = bar_wait(c)))
                return rc;
            c->round++;
        }
        uint64_t r = c->round - 1;
        for (int j = 0; j < R && m; j++)
            memcpy((char *)recv + (size_t)j * bytes + off, half_at(c, r, j), m);
    }
    return 0;
}

static int shm_broadcast(struct dsv4_comm *pc, void *buf, size_t bytes, int root)
{
    struct shm_comm *c = sc(pc);
    const int me = c->pub.rank;
    const size_t chunk = c->half;
    struct shm_desc d = {.op = OP_BROADCAST,
                         .valid = (buf != NULL || bytes == 0) && root >= 0 && root < c->pub.size,
                         .a = bytes,
                         .b = (uint64_t)(int64_t)root};
    int rc;
    for (size_t off = 0; off == 0 || off < bytes; off += chunk) {
        size_t m = bytes - off < chunk ? bytes - off : chunk;
        if (d.valid && me == root && m)
            memcpy(half_at(c, c->round, me), (const char *)buf + off, m);
        if (off == 0) {
            if ((rc = handshake(c, &d, "broadcast")))
                return rc;
        } else {
            if ((rc = bar_wait(c)))
                return rc;
            c->round++;
        }
        if (me != root && m)
            memcpy((char *)buf + off, half_at(c, c->round - 1, root), m);
    }
    return 0;
}

/* Bytes per peer of one all-to-all round (a 64-byte multiple). */
static size_t a2a_sub(const struct shm_comm *c)
{
    return c->half / (size_t)c->pub.size / SHM_ALIGN * SHM_ALIGN;
}

/*
 * The engine of all_to_all and all_to_allv: message j of this rank is
 * send[soff[j] .. + scnt[j]), message from r lands at recv[roff[r] ..).
 * Round t moves bytes [t*sub, (t+1)*sub) of every message.  For
 * all_to_allv the first round also publishes the count rows, and every rank
 * checks the full matrices, so all agree on the round count or all fail.
 */
static int a2a(struct shm_comm *c, struct shm_desc *d, const char *what, const char *send,
               const size_t *scnt, const size_t *soff, char *recv, const size_t *rcnt,
               const size_t *roff)
{
    const int R = c->pub.size, me = c->pub.rank;
    const size_t sub = a2a_sub(c);
    int rc;
    uint64_t rounds = 0;
    for (uint64_t t = 0; t == 0 || t < rounds; t++) {
        size_t base = (size_t)t * sub;
        char *mine = half_at(c, c->round, me);
        if (d->valid) {
            for (int j = 0; j < R; j++) {
                if (scnt[j] > base) {
                    size_t m = scnt[j] - base < sub ? scnt[j] - base : sub;
                    memcpy(mine + (size_t)j * sub, send + soff[j] + base, m);
                }
            }
        }
        if (t == 0) {
            if (d->op == OP_ALL_TO_ALLV) {
                uint64_t *srow = counts_at(c, c->round, me, 0);
                uint64_t *rrow = counts_at(c, c->round, me, 1);
                for (int j = 0; j < R; j++) {
                    srow[j] = d->valid ? scnt[j] : 0;
                    rrow[j] = d->valid ? rcnt[j] : 0;
                }
            }
            if ((rc = handshake(c, d, what)))
                return rc;
            uint64_t r0 = c->round - 1, mx = 0;
            for (int i = 0; i < R; i++) {
                for (int j = 0; j < R; j++) {
                    uint64_t sij = d->op == OP_ALL_TO_ALLV ? counts_at(c, r0, i, 0)[j] : d->a;
                    uint64_t rji = d->op == OP_ALL_TO_ALLV ? counts_at(c, r0, j, 1)[i] : d->a;
                    if (sij != rji)
                        return dsv4_error(DSV4_EMISMATCH,
                                          "comm shm: %s: rank %d sends %llu bytes to rank %d, "
                                          "which expects %llu",
                                          what, i, (unsigned long long)sij, j,
                                          (unsigned long long)rji);
                    if (sij > mx)
                        mx = sij;
                }
            }
            rounds = (mx + sub - 1) / sub;
        } else {
            if ((rc = bar_wait(c)))
                return rc;
            c->round++;
        }
        uint64_t r = c->round - 1;
        for (int j = 0; j < R; j++) {
            if (rcnt[j] > base) {
                size_t m = rcnt[j] - base < sub ? rcnt[j] - base : sub;
                memcpy(recv + roff[j] + base, half_at(c, r, j) + (size_t)me * sub, m);
            }
        }
    }
    return 0;
}

static int shm_all_to_all(struct dsv4_comm *pc, const void *send, void *recv, size_t bytes)
{
    struct shm_comm *c = sc(pc);
    const int R = c->pub.size;
    size_t cnt[DSV4_COMM_SHM_MAX_RANKS], off[DSV4_COMM_SHM_MAX_RANKS];
    for (int j = 0; j < R; j++) {
        cnt[j] = bytes;
        off[j] = (size_t)j * bytes;
    }
    struct shm_desc d = {
            .op = OP_ALL_TO_ALL, .valid = (send != NULL && recv != NULL) || bytes == 0, .a = bytes};
    return a2a(c, &d, "all_to_all", send, cnt, off, recv, cnt, off);
}

static int shm_all_to_allv(struct dsv4_comm *pc, const void *send, const size_t *send_bytes,
                           const size_t *send_offs, void *recv, const size_t *recv_bytes,
                           const size_t *recv_offs)
{
    struct shm_comm *c = sc(pc);
    const int R = c->pub.size;
    struct shm_desc d = {.op = OP_ALL_TO_ALLV, .valid = 1};
    static const size_t zeros[DSV4_COMM_SHM_MAX_RANKS];
    if (!send_bytes || !send_offs || !recv_bytes || !recv_offs) {
        d.valid = 0;
    } else {
        for (int j = 0; j < R; j++) {
            if ((send_bytes[j] && !send) || (recv_bytes[j] && !recv))
                d.valid = 0;
            if (send_offs[j] + send_bytes[j] < send_offs[j] ||
                recv_offs[j] + recv_bytes[j] < recv_offs[j])
                d.valid = 0; /* wraps around */
        }
    }
    if (!d.valid)
        return a2a(c, &d, "all_to_allv", NULL, zeros, zeros, NULL, zeros, zeros);
    return a2a(c, &d, "all_to_allv", send, send_bytes, send_offs, recv, recv_bytes, recv_offs);
}

static void shm_free(struct dsv4_comm *pc)
{
    struct shm_comm *c = sc(pc);
    atomic_fetch_and_explicit(&c->h->attached, ~(1ull << c->pub.rank), memory_order_acq_rel);
    atomic_fetch_sub(&c->g->local_handles, 1);
    free(c);
}

static const struct dsv4_comm_ops shm_ops = {
        .name = "shm",
        .barrier = shm_barrier,
        .all_reduce_sum_f32 = shm_all_reduce,
        .all_gather = shm_all_gather,
        .all_to_all = shm_all_to_all,
        .all_to_allv = shm_all_to_allv,
        .broadcast = shm_broadcast,
        .free = shm_free,
};

/* ---- group lifetime ---- */

static size_t round_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* The arena layout of n ranks with a requested slot size (0: default). */
struct layout {
    size_t slot_bytes, desc_off, counts_off, slots_off, total;
};

static struct layout layout_of(int n_ranks, size_t slot_bytes)
{
    struct layout L;
    size_t n = (size_t)n_ranks;
    if (slot_bytes == 0)
        slot_bytes = DSV4_COMM_SHM_DEFAULT_SLOT;
    /* two halves, each holding n 64-byte-aligned sub-blocks of >= 64 bytes */
    size_t unit = 2 * SHM_ALIGN * n;
    slot_bytes = round_up(slot_bytes < 4096 ? 4096 : slot_bytes, unit);
    while (slot_bytes / 2 / sizeof(float) / n < 16)
        slot_bytes += unit; /* an all-reduce segment holds >= 16 floats */
    L.slot_bytes = slot_bytes;
    L.desc_off = round_up(sizeof(struct shm_header), SHM_ALIGN);
    L.counts_off = round_up(L.desc_off + 2 * n * sizeof(struct shm_desc), SHM_ALIGN);
    L.slots_off = round_up(L.counts_off + 2 * n * 2 * n * sizeof(uint64_t), 4096);
    L.total = L.slots_off + n * slot_bytes;
    return L;
}

static struct dsv4_comm_shm *group_new(int n_ranks, size_t bytes)
{
    struct dsv4_comm_shm *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->fd = -1;
    g->n = n_ranks;
    g->bytes = bytes;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    g->spin = cpus >= n_ranks ? 4000 : 0; /* spinning only helps when every rank has a CPU */
    atomic_init(&g->local_handles, 0);
    return g;
}

int dsv4_comm_shm_create(int n_ranks, size_t slot_bytes, struct dsv4_comm_shm **out)
{
    struct dsv4_comm_shm *g = NULL;
    int rc;
    if (!out)
        return dsv4_error(DSV4_EINVAL, "comm shm: no output pointer");
    *out = NULL;
    if (n_ranks < 1 || n_ranks > DSV4_COMM_SHM_MAX_RANKS)
        return dsv4_error(DSV4_EINVAL, "comm shm: %d ranks not in [1, %d]", n_ranks,
                          DSV4_COMM_SHM_MAX_RANKS);
    if (slot_bytes > ((size_t)1 << 36))
        return dsv4_error(DSV4_EINVAL, "comm shm: slot of %zu bytes is too large", slot_bytes);
    struct layout L = layout_of(n_ranks, slot_bytes);
    if (!(g = group_new(n_ranks, L.total)))
        return dsv4_error(DSV4_ENOMEM, "comm shm: no memory");
#ifdef MFD_CLOEXEC
    g->fd = memfd_create("dsv4-comm", MFD_CLOEXEC);
#endif
    if (g->fd >= 0) {
        if (ftruncate(g->fd, (off_t)L.total) != 0) {
            rc = dsv4_error(DSV4_EIO, "comm shm: ftruncate of the arena to %zu bytes: %s", L.total,
                            strerror(errno));
            goto fail;
        }
        g->base = mmap(NULL, L.total, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
    } else {
        g->base = mmap(NULL, L.total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    }
    if (g->base == MAP_FAILED) {
        g->base = NULL;
        rc = dsv4_error(DSV4_ENOMEM, "comm shm: mapping %zu bytes: %s", L.total, strerror(errno));
        goto fail;
    }
    struct shm_header *h = g->base;
    memset(h, 0, L.slots_off);
    h->magic = SHM_MAGIC;
    h->version = SHM_VERSION;
    h->n_ranks = (uint32_t)n_ranks;
    h->slot_bytes = L.slot_bytes;
    h->arena_bytes = L.total;
    h->desc_off = L.desc_off;
    h->counts_off = L.counts_off;
    h->slots_off = L.slots_off;
    atomic_init(&h->aborted, 0);
    atomic_init(&h->attached, 0);
    atomic_init(&h->bar_count, 0);
    atomic_init(&h->bar_gen, 0);
    *out = g;
    return 0;
fail:
    dsv4_comm_shm_destroy(g);
    return rc;
}

int dsv4_comm_shm_fd(const struct dsv4_comm_shm *g)
{
    return g ? g->fd : -1;
}

int dsv4_comm_shm_open_fd(int fd, struct dsv4_comm_shm **out)
{
    struct dsv4_comm_shm *g = NULL;
    struct shm_header hd;
    struct stat st;
    int rc;
    if (!out)
        return dsv4_error(DSV4_EINVAL, "comm shm: no output pointer");
    *out = NULL;
    if (fd < 0 || fstat(fd, &st) != 0)
        return dsv4_error(DSV4_EINVAL, "comm shm: fd %d is not an open file", fd);
    if ((size_t)st.st_size < sizeof(hd) || pread(fd, &hd, sizeof(hd), 0) != (ssize_t)sizeof(hd))
        return dsv4_error(DSV4_EFORMAT, "comm shm: fd %d is too small for an arena header", fd);
    if (hd.magic != SHM_MAGIC || hd.version != SHM_VERSION)
        return dsv4_error(DSV4_EFORMAT, "comm shm: fd %d holds no version %u arena", fd,
                          SHM_VERSION);
    if (hd.n_ranks < 1 || hd.n_ranks > DSV4_COMM_SHM_MAX_RANKS || hd.slot_bytes > ((size_t)1 << 36))
        return dsv4_error(DSV4_EFORMAT, "comm shm: arena header with %u ranks, %llu-byte slots",
                          hd.n_ranks, (unsigned long long)hd.slot_bytes);
    /* the layout must be exactly the one create() makes for these sizes */
    struct layout L = layout_of((int)hd.n_ranks, (size_t)hd.slot_bytes);
    if (L.slot_bytes != hd.slot_bytes || L.desc_off != hd.desc_off ||
        L.counts_off != hd.counts_off || L.slots_off != hd.slots_off || L.total != hd.arena_bytes ||
        (uint64_t)st.st_size != hd.arena_bytes)
        return dsv4_error(DSV4_EFORMAT,
                          "comm shm: arena layout (%llu bytes, file %lld) does not match its "
                          "header",
                          (unsigned long long)hd.arena_bytes, (long long)st.st_size);
    if (!(g = group_new((int)hd.n_ranks, L.total)))
        return dsv4_error(DSV4_ENOMEM, "comm shm: no memory");
    g->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (g->fd < 0) {
        rc = dsv4_error(DSV4_EIO, "comm shm: dup of fd %d: %s", fd, strerror(errno));
        goto fail;
    }
    g->base = mmap(NULL, L.total, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
    if (g->base == MAP_FAILED) {
        g->base = NULL;
        rc = dsv4_error(DSV4_ENOMEM, "comm shm: mapping %zu bytes: %s", L.total, strerror(errno));
        goto fail;
    }
    *out = g;
    return 0;
fail:
    dsv4_comm_shm_destroy(g);
    return rc;
}

void dsv4_comm_shm_destroy(struct dsv4_comm_shm *g)
{
    if (!g)
        return;
    DSV4_ASSERT(atomic_load(&g->local_handles) == 0);
    if (g->base)
        munmap(g->base, g->bytes);
    if (g->fd >= 0)
        close(g->fd);
    free(g);
}

size_t dsv4_comm_shm_slot_bytes(const struct dsv4_comm_shm *g)
{
    return g ? ((const struct shm_header *)g->base)->slot_bytes : 0;
}

int dsv4_comm_shm_attach(struct dsv4_comm_shm *g, int rank, struct dsv4_comm **out)
{
    if (!g || !out)
        return dsv4_error(DSV4_EINVAL, "comm shm: attach without group or output");
    *out = NULL;
    struct shm_header *h = g->base;
    if (rank < 0 || rank >= g->n)
        return dsv4_error(DSV4_EINVAL, "comm shm: rank %d not in [0, %d)", rank, g->n);
    if (h->magic != SHM_MAGIC || h->version != SHM_VERSION || h->n_ranks != (uint32_t)g->n)
        return dsv4_error(DSV4_EFORMAT, "comm shm: arena header is not a version %u arena",
                          SHM_VERSION);
    uint64_t bit = 1ull << rank;
    if (atomic_fetch_or_explicit(&h->attached, bit, memory_order_acq_rel) & bit)
        return dsv4_error(DSV4_EEXIST, "comm shm: rank %d is already attached", rank);
    struct shm_comm *c = calloc(1, sizeof(*c));
    if (!c) {
        atomic_fetch_and_explicit(&h->attached, ~bit, memory_order_acq_rel);
        return dsv4_error(DSV4_ENOMEM, "comm shm: no memory for a handle");
    }
    c->pub.ops = &shm_ops;
    c->pub.rank = rank;
    c->pub.size = g->n;
    c->g = g;
    c->h = h;
    c->base = g->base;
    c->half = (size_t)h->slot_bytes / 2;
    c->spin = g->spin;
    c->round = 0;
    atomic_fetch_add(&g->local_handles, 1);
    *out = &c->pub;
    return 0;
}

void dsv4_comm_shm_abort(struct dsv4_comm_shm *g)
{
    if (!g)
        return;
    struct shm_header *h = g->base;
    atomic_store_explicit(&h->aborted, 1, memory_order_release);
    futex_wake_all(&h->bar_gen);
}

/* ---- rank threads ---- */

struct rank_thread {
    pthread_t tid;
    struct dsv4_comm_shm *g;
    _Atomic int *first_failure; /* the rank that failed first, or -1 */
    int rank;
    dsv4_comm_rank_fn fn;
    void *arg;
    int rc;
    char msg[256];
};

static void *rank_main(void *p)
{
    struct rank_thread *t = p;
    struct dsv4_comm *c = NULL;
    t->rc = dsv4_comm_shm_attach(t->g, t->rank, &c);
    if (t->rc == 0) {
        t->rc = t->fn(c, t->arg);
        dsv4_comm_free(c);
    }
    if (t->rc) {
        int none = -1;
        snprintf(t->msg, sizeof(t->msg), "%s", dsv4_errmsg());
        atomic_compare_exchange_strong(t->first_failure, &none, t->rank);
        dsv4_comm_shm_abort(t->g);
    }
    return NULL;
}

int dsv4_comm_run_threads(int n, size_t slot_bytes, dsv4_comm_rank_fn fn, void *arg)
{
    struct dsv4_comm_shm *g = NULL;
    struct rank_thread *t = NULL;
    int started = 0, rc;
    _Atomic int first = -1;
    if (!fn)
        return dsv4_error(DSV4_EINVAL, "comm run_threads: no function");
    if ((rc = dsv4_comm_shm_create(n, slot_bytes, &g)))
        return rc;
    t = calloc((size_t)n, sizeof(*t));
    if (!t) {
        rc = dsv4_error(DSV4_ENOMEM, "comm run_threads: no memory");
        goto out;
    }
    for (; started < n; started++) {
        t[started] = (struct rank_thread){
                .g = g, .first_failure = &first, .rank = started, .fn = fn, .arg = arg};
        int e = pthread_create(&t[started].tid, NULL, rank_main, &t[started]);
        if (e) {
            rc = dsv4_error(DSV4_ENOMEM, "comm run_threads: starting rank %d: %s", started,
                            strerror(e));
            dsv4_comm_shm_abort(g);
            break;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(t[i].tid, NULL);
    int f = atomic_load(&first);
    if (rc == 0 && f >= 0)
        rc = dsv4_error(t[f].rc, "rank %d: %s", f, t[f].msg);
out:
    free(t);
    dsv4_comm_shm_destroy(g);
    return rc;
}
