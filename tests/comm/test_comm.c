/*
 * test_comm.c - engine/comm over the shared-memory backend: every
 * collective for N = 1, 2, 3, 4, 8 ranks with random sizes (also larger
 * than the arena, which forces chunking), results checked against the
 * expected data on every rank (all-reduce bit for bit against the rank-order
 * sum), argument mismatches and bad arguments failing on all ranks without a
 * hang, abort of a group whose rank failed, and a randomised stress run of
 * many iterations under a watchdog (SIGALRM kills a deadlocked test).
 *
 * Every rank can compute every other rank's data (a hash of (call, rank,
 * index)), so each checks its result without extra communication.  Rank
 * functions count their own failures (the CHECK counters are not
 * thread-safe) and return a status that main CHECKs.
 */
#include "engine/model/comm.h"
#include "base/dsv4.h"
#include "tests/test.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t mix(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
                 (c + 0x85EBCA77C2B2AE63ull) * 0x94D049BB133111EBull;
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 29)) * 0x94D049BB133111EBull;
    return z ^ (z >> 32);
}

/* A float of varied magnitude, so that summation order changes roundings. */
static float fval(uint64_t call, int rank, size_t i)
{
    uint64_t h = mix(call, (uint64_t)rank, i);
    double u = (double)(h >> 11) * 0x1p-53 * 2.0 - 1.0;
    return (float)ldexp(u, (int)(h % 24) - 12);
}

static uint8_t bval(uint64_t call, int rank, size_t i)
{
    return (uint8_t)(mix(call, (uint64_t)rank + 1000, i) >> 24);
}

struct job {
    size_t sizes[16];
    int n_sizes;
    int iterations; /* stress */
    _Atomic long counter;
};

#define FAILF(...)                                           \
    do {                                                     \
        if (fails++ < 5) {                                   \
            fprintf(stderr, "rank %d: ", dsv4_comm_rank(c)); \
            fprintf(stderr, __VA_ARGS__);                    \
            fputc('\n', stderr);                             \
        }                                                    \
    } while (0)

/* ---- one of each collective ---- */

static int do_all_reduce(struct dsv4_comm *c, uint64_t call, size_t n, long *order_sensitive)
{
    int fails = 0, R = dsv4_comm_size(c);
    float *buf = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        buf[i] = fval(call, dsv4_comm_rank(c), i);
    int rc = dsv4_comm_all_reduce_sum_f32(c, buf, n);
    if (rc)
        FAILF("all_reduce(%zu): %s", n, dsv4_errmsg());
    for (size_t i = 0; i < n && !rc; i++) {
        float e = fval(call, 0, i), rev = fval(call, R - 1, i);
        for (int r = 1; r < R; r++)
            e += fval(call, r, i);
        for (int r = R - 2; r >= 0; r--)
            rev += fval(call, r, i);
        if (memcmp(&e, &buf[i], sizeof(float)) != 0)
            FAILF("all_reduce(%zu)[%zu] = %.9g, rank-order sum %.9g", n, i, buf[i], e);
        if (order_sensitive && e != rev)
            (*order_sensitive)++;
    }
    free(buf);
    return fails;
}

static int do_all_gather(struct dsv4_comm *c, uint64_t call, size_t bytes, int in_place)
{
    int fails = 0, R = dsv4_comm_size(c);
    uint8_t *send = malloc(bytes ? bytes : 1), *recv = malloc(bytes * R + 1);
    uint8_t *src = in_place ? recv + (size_t)dsv4_comm_rank(c) * bytes : send;
    memset(recv, 0xEE, bytes * R + 1);
    for (size_t i = 0; i < bytes; i++)
        src[i] = bval(call, dsv4_comm_rank(c), i);
    int rc = dsv4_comm_all_gather(c, src, recv, bytes);
    if (rc)
        FAILF("all_gather(%zu): %s", bytes, dsv4_errmsg());
    for (int r = 0; r < R && !rc; r++)
        for (size_t i = 0; i < bytes; i++)
            if (recv[(size_t)r * bytes + i] != bval(call, r, i)) {
                FAILF("all_gather(%zu) from rank %d byte %zu", bytes, r, i);
                break;
            }
    if (recv[bytes * R] != 0xEE)
        FAILF("all_gather(%zu) wrote past the end", bytes);
    free(send);
    free(recv);
    return fails;
}

static int do_broadcast(struct dsv4_comm *c, uint64_t call, size_t bytes, int root)
{
    int fails = 0;
    uint8_t *buf = malloc(bytes + 1);
    for (size_t i = 0; i < bytes; i++)
        buf[i] = dsv4_comm_rank(c) == root ? bval(call, root, i) : 0;
    buf[bytes] = 0x5A;
    int rc = dsv4_comm_broadcast(c, buf, bytes, root);
    if (rc)
        FAILF("broadcast(%zu, %d): %s", bytes, root, dsv4_errmsg());
    for (size_t i = 0; i < bytes && !rc; i++)
        if (buf[i] != bval(call, root, i)) {
            FAILF("broadcast(%zu, root %d) byte %zu", bytes, root, i);
            break;
        }
    if (buf[bytes] != 0x5A)
        FAILF("broadcast wrote past the end");
    free(buf);
    return fails;
}

/* Byte i of the message from rank `from` to rank `to`. */
static uint8_t msg_byte(uint64_t call, int from, int to, size_t i)
{
    return (uint8_t)(mix(call, (uint64_t)from * 131 + (uint64_t)to, i) >> 40);
}

static int do_all_to_all(struct dsv4_comm *c, uint64_t call, size_t bytes)
{
    int fails = 0, R = dsv4_comm_size(c);
    uint8_t *send = calloc(bytes * R + 1, 1), *recv = malloc(bytes * R + 1);
    for (int j = 0; j < R; j++)
        for (size_t i = 0; i < bytes; i++)
            send[(size_t)j * bytes + i] = msg_byte(call, dsv4_comm_rank(c), j, i);
    int rc = dsv4_comm_all_to_all(c, send, recv, bytes);
    if (rc)
        FAILF("all_to_all(%zu): %s", bytes, dsv4_errmsg());
    for (int r = 0; r < R && !rc; r++)
        for (size_t i = 0; i < bytes; i++)
            if (recv[(size_t)r * bytes + i] != msg_byte(call, r, dsv4_comm_rank(c), i)) {
                FAILF("all_to_all(%zu) from %d byte %zu", bytes, r, i);
                break;
            }
    free(send);
    free(recv);
    return fails;
}

/* Count of the message from->to in call `call` (every rank computes the same matrix). */
static size_t a2av_count(uint64_t call, int from, int to, size_t max)
{
    uint64_t h = mix(call, (uint64_t)from, (uint64_t)to + 77);
    if (h % 5 == 0)
        return 0;
    return (size_t)((h >> 8) % (max + 1));
}

static int do_all_to_allv(struct dsv4_comm *c, uint64_t call, size_t max)
{
    int fails = 0, R = dsv4_comm_size(c);
    size_t scnt[64], soff[64], rcnt[64], roff[64], stot = 0, rtot = 0;
    /* messages laid out in reverse peer order with gaps, to test offsets */
    for (int j = R - 1; j >= 0; j--) {
        scnt[j] = a2av_count(call, dsv4_comm_rank(c), j, max);
        soff[j] = stot + 3;
        stot += scnt[j] + 3;
        rcnt[j] = a2av_count(call, j, dsv4_comm_rank(c), max);
        roff[j] = rtot + 5;
        rtot += rcnt[j] + 5;
    }
    uint8_t *send = malloc(stot + 1), *recv = malloc(rtot + 1);
    memset(send, 0, stot + 1);
    memset(recv, 0xC3, rtot + 1);
    for (int j = 0; j < R; j++)
        for (size_t i = 0; i < scnt[j]; i++)
            send[soff[j] + i] = msg_byte(call, dsv4_comm_rank(c), j, i);
    int rc = dsv4_comm_all_to_allv(c, send, scnt, soff, recv, rcnt, roff);
    if (rc)
        FAILF("all_to_allv(max %zu): %s", max, dsv4_errmsg());
    size_t gap_bad = 0;
    for (int r = 0; r < R && !rc; r++) {
        for (size_t i = 0; i < rcnt[r]; i++)
            if (recv[roff[r] + i] != msg_byte(call, r, dsv4_comm_rank(c), i)) {
                FAILF("all_to_allv from %d byte %zu of %zu", r, i, rcnt[r]);
                break;
            }
        for (size_t i = 1; i <= 5; i++)
            gap_bad += recv[roff[r] - i] != 0xC3;
    }
    if (gap_bad)
        FAILF("all_to_allv wrote into %zu gap bytes", gap_bad);
    free(send);
    free(recv);
    return fails;
}

static int do_barrier(struct dsv4_comm *c, struct job *j, long round)
{
    int fails = 0;
    atomic_fetch_add(&j->counter, 1);
    if (dsv4_comm_barrier(c))
        FAILF("barrier: %s", dsv4_errmsg());
    long v = atomic_load(&j->counter);
    if (v < (round + 1) * dsv4_comm_size(c))
        FAILF("barrier %ld passed with counter %ld", round, v);
    if (dsv4_comm_barrier(c)) /* nobody increments for the next round before all have read */
        FAILF("barrier: %s", dsv4_errmsg());
    return fails;
}

static int finish(struct dsv4_comm *c, int fails, const char *what)
{
    if (fails)
        return dsv4_error(DSV4_EMISMATCH, "%d failures in %s", fails, what);
    return 0;
}

/* ---- rank programs ---- */

static int rank_all_ops(struct dsv4_comm *c, void *arg)
{
    struct job *j = arg;
    int fails = 0;
    long order_sensitive = 0;
    if (dsv4_comm_rank(c) != dsv4_comm_rank(c) || dsv4_comm_size(c) < 1 ||
        strcmp(dsv4_comm_backend(c), "shm") != 0)
        FAILF("handle accessors");
    uint64_t call = 1;
    for (int s = 0; s < j->n_sizes; s++) {
        size_t n = j->sizes[s];
        fails += do_all_reduce(c, call++, n, &order_sensitive);
        fails += do_all_gather(c, call++, n, 0);
        fails += do_all_gather(c, call++, n, 1);
        fails += do_all_to_all(c, call++, n);
        fails += do_all_to_allv(c, call++, n);
        for (int root = 0; root < dsv4_comm_size(c); root++)
            fails += do_broadcast(c, call++, n, root);
        fails += do_barrier(c, j, s);
    }
    if (dsv4_comm_size(c) > 2 && order_sensitive == 0)
        FAILF("no all-reduce element depended on the summation order: the check is weak");
    return finish(c, fails, "all ops");
}

static int rank_errors(struct dsv4_comm *c, void *arg)
{
    int fails = 0, rc;
    float buf[64] = {0};
    if (dsv4_comm_size(c) > 1) {
        /* mismatched sizes: every rank gets EMISMATCH, nobody hangs */
        rc = dsv4_comm_all_reduce_sum_f32(c, buf, 10 + (size_t)dsv4_comm_rank(c));
        if (rc != DSV4_EMISMATCH)
            FAILF("mismatched all_reduce gave %d", rc);
        /* different collectives at the same point */
        if (dsv4_comm_rank(c) == 0)
            rc = dsv4_comm_barrier(c);
        else
            rc = dsv4_comm_broadcast(c, buf, 8, 0);
        if (rc != DSV4_EMISMATCH)
            FAILF("barrier vs broadcast gave %d", rc);
        /* sizes that take different paths: one round (small) on rank 0,
         * chunked through the 4 KiB arena elsewhere */
        float *big = calloc(4096, sizeof(float));
        rc = big ? dsv4_comm_all_reduce_sum_f32(c, big, dsv4_comm_rank(c) == 0 ? 10 : 4096)
                 : DSV4_ENOMEM;
        if (rc != DSV4_EMISMATCH)
            FAILF("small vs chunked all_reduce gave %d", rc);
        /* multi-chunk all_gather sizes that differ */
        float *all = calloc((size_t)dsv4_comm_size(c) * 4096, sizeof(float));
        rc = big && all ? dsv4_comm_all_gather(c, big, all,
                                               4096 * sizeof(float) - (size_t)dsv4_comm_rank(c))
                        : DSV4_ENOMEM;
        if (rc != DSV4_EMISMATCH)
            FAILF("mismatched multi-chunk all_gather gave %d", rc);
        free(all);
        free(big);
    }
    /* one rank without a receive buffer: EINVAL everywhere */
    rc = dsv4_comm_all_to_all(c, buf, dsv4_comm_rank(c) == 0 ? NULL : buf, 4);
    if (rc != DSV4_EINVAL)
        FAILF("all_to_all with a NULL recv on rank 0 gave %d", rc);
    /* one rank with a NULL buffer: EINVAL everywhere */
    rc = dsv4_comm_all_gather(c, dsv4_comm_rank(c) == dsv4_comm_size(c) - 1 ? NULL : buf, buf, 4);
    if (rc != DSV4_EINVAL)
        FAILF("all_gather with a NULL send on the last rank gave %d", rc);
    rc = dsv4_comm_broadcast(c, buf, 4, dsv4_comm_size(c)); /* bad root on every rank */
    if (rc != DSV4_EINVAL)
        FAILF("broadcast with a bad root gave %d", rc);
    /* all_to_allv where a receiver expects a different count */
    size_t sc[64], so[64], rcn[64], ro[64];
    for (int j = 0; j < dsv4_comm_size(c); j++) {
        sc[j] = 4;
        rcn[j] = 4;
        so[j] = 0;
        ro[j] = 0;
    }
    if (dsv4_comm_rank(c) == 0)
        rcn[dsv4_comm_size(c) - 1] = 3;
    uint8_t s8[8] = {0}, r8[8];
    rc = dsv4_comm_all_to_allv(c, s8, sc, so, r8, rcn, ro);
    if (rc != DSV4_EMISMATCH)
        FAILF("inconsistent all_to_allv counts gave %d", rc);
    rc = dsv4_comm_all_to_allv(c, s8, NULL, so, r8, rcn, ro);
    if (rc != DSV4_EINVAL)
        FAILF("all_to_allv without counts gave %d", rc);
    /* an offset + count that wraps around on the last rank only */
    rcn[dsv4_comm_size(c) - 1] = 4;
    if (dsv4_comm_rank(c) == dsv4_comm_size(c) - 1)
        so[0] = SIZE_MAX - 1;
    rc = dsv4_comm_all_to_allv(c, s8, sc, so, r8, rcn, ro);
    if (rc != DSV4_EINVAL)
        FAILF("all_to_allv with a wrapping offset gave %d", rc);
    so[0] = 0;
    /* and the group still works afterwards */
    for (int i = 0; i < 64; i++)
        buf[i] = (float)(dsv4_comm_rank(c) + i);
    if ((rc = dsv4_comm_all_reduce_sum_f32(c, buf, 64)))
        FAILF("all_reduce after errors: %d", rc);
    float e0 = 0;
    for (int r = 0; r < dsv4_comm_size(c); r++)
        e0 += (float)r;
    if (buf[0] != e0 || buf[63] != e0 + 63.0f * dsv4_comm_size(c))
        FAILF("all_reduce after errors: %g %g", buf[0], buf[63]);
    return finish(c, fails, "error paths");
}

static int rank_fails_early(struct dsv4_comm *c, void *arg)
{
    if (dsv4_comm_rank(c) == 1)
        return dsv4_error(DSV4_ENOENT, "deliberate failure");
    /* the others wait in collectives until the abort releases them */
    for (int i = 0; i < 1000; i++) {
        int rc = dsv4_comm_barrier(c);
        if (rc)
            return rc;
    }
    return 0;
}

/* Random sequence of ops, the same on every rank (drawn from the iteration). */
static int rank_stress(struct dsv4_comm *c, void *arg)
{
    struct job *j = arg;
    int fails = 0;
    for (int it = 0; it < j->iterations && !fails; it++) {
        uint64_t h = mix(0xABCD, (uint64_t)it, 0);
        size_t n = (h >> 8) % 3 == 0 ? (size_t)((h >> 16) % 9000) : (size_t)((h >> 16) % 40);
        uint64_t call = 100000 + (uint64_t)it;
        switch (h % 6) {
        case 0:
            fails += do_all_reduce(c, call, n, NULL);
            break;
        case 1:
            fails += do_all_gather(c, call, n, (int)(h >> 40) & 1);
            break;
        case 2:
            fails += do_all_to_all(c, call, n / 4);
            break;
        case 3:
            fails += do_all_to_allv(c, call, n);
            break;
        case 4:
            fails += do_broadcast(c, call, n, (int)((h >> 32) % (uint64_t)dsv4_comm_size(c)));
            break;
        default:
            if (dsv4_comm_barrier(c))
                FAILF("barrier: %s", dsv4_errmsg());
            break;
        }
    }
    return finish(c, fails, "stress");
}

/* Rank `rank` of a group shared with forked processes through the memfd. */
static int process_rank(int fd, int rank, struct job *j)
{
    struct dsv4_comm_shm *g = NULL;
    struct dsv4_comm *c = NULL;
    int rc = dsv4_comm_shm_open_fd(fd, &g);
    if (rc == 0)
        rc = dsv4_comm_shm_attach(g, rank, &c);
    if (rc == 0)
        rc = rank_stress(c, j);
    if (rc)
        fprintf(stderr, "process rank %d: %s\n", rank, dsv4_errmsg());
    dsv4_comm_free(c);
    dsv4_comm_shm_destroy(g);
    return rc;
}

/* The same arena used by ranks in separate processes (the worker layout). */
static void test_processes(void)
{
    enum { N = 4 };
    struct dsv4_comm_shm *g = NULL;
    CHECK_INT(dsv4_comm_shm_create(N, 8192, &g), 0);
    int fd = dsv4_comm_shm_fd(g);
    if (fd < 0) {
        fprintf(stderr, "no memfd: multi-process test skipped\n");
        dsv4_comm_shm_destroy(g);
        return;
    }
    /* a file that is not an arena is refused */
    struct dsv4_comm_shm *bad = NULL;
    CHECK_INT(dsv4_comm_shm_open_fd(-1, &bad), DSV4_EINVAL);
    CHECK_INT(dsv4_comm_shm_open_fd(2, &bad), DSV4_EFORMAT);
    struct job j = {.iterations = 600};
    atomic_init(&j.counter, 0);
    pid_t pid[N];
    fflush(NULL);
    for (int r = 1; r < N; r++) {
        pid[r] = fork();
        if (pid[r] == 0)
            _exit(process_rank(fd, r, &j) ? 1 : 0);
        CHECK(pid[r] > 0);
    }
    double t0 = dsv4_now();
    CHECK_INT(process_rank(fd, 0, &j), 0);
    for (int r = 1; r < N; r++) {
        int st = 0;
        CHECK(waitpid(pid[r], &st, 0) == pid[r]);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "process rank %d status %d", r, st);
    }
    fprintf(stderr, "%d processes, %d iterations: %.2f s\n", N, j.iterations, dsv4_now() - t0);
    dsv4_comm_shm_destroy(g);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "test_comm: watchdog fired (deadlock?)\n";
    ssize_t w = write(2, m, sizeof(m) - 1);
    (void)w;
    _exit(1);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(240);

    /* lifetime errors */
    struct dsv4_comm_shm *g = NULL;
    struct dsv4_comm *a = NULL, *b = NULL;
    CHECK_INT(dsv4_comm_shm_create(0, 0, &g), DSV4_EINVAL);
    CHECK_INT(dsv4_comm_shm_create(DSV4_COMM_SHM_MAX_RANKS + 1, 0, &g), DSV4_EINVAL);
    CHECK_INT(dsv4_comm_shm_create(3, 100, &g), 0);
    CHECK(dsv4_comm_shm_slot_bytes(g) >= 4096);
    CHECK_INT(dsv4_comm_shm_slot_bytes(g) % (2 * 64 * 3), 0);
    CHECK_INT(dsv4_comm_shm_attach(g, 3, &a), DSV4_EINVAL);
    CHECK_INT(dsv4_comm_shm_attach(g, 1, &a), 0);
    CHECK_INT(dsv4_comm_shm_attach(g, 1, &b), DSV4_EEXIST);
    CHECK_INT(dsv4_comm_rank(a), 1);
    CHECK_INT(dsv4_comm_size(a), 3);
    dsv4_comm_free(a);
    dsv4_comm_shm_destroy(g);
    CHECK_INT(dsv4_comm_barrier(NULL), DSV4_EINVAL);

    static const int ranks[] = {1, 2, 3, 4, 8};
    for (size_t ri = 0; ri < DSV4_ARRAY_LEN(ranks); ri++) {
        int n = ranks[ri];
        for (int small = 0; small < 2; small++) {
            /* small arena: 4 KiB slots, so most sizes take many chunks */
            struct job j = {.sizes = {0, 1, 7, 64, 1000, 4099, 20000, 70001}, .n_sizes = 8};
            atomic_init(&j.counter, 0);
            double t0 = dsv4_now();
            int rc = dsv4_comm_run_threads(n, small ? 4096 : 0, rank_all_ops, &j);
            CHECKF(rc == 0, "%d ranks, %s arena: %s", n, small ? "small" : "default",
                   dsv4_errmsg());
            fprintf(stderr, "all ops, %d ranks, %s arena: %.2f s\n", n, small ? "4 KiB" : "1 MiB",
                    dsv4_now() - t0);
        }
        int rc = dsv4_comm_run_threads(n, 4096, rank_errors, NULL);
        CHECKF(rc == 0, "%d ranks, error paths: %s", n, dsv4_errmsg());
    }

    /* a failing rank aborts the group instead of hanging it */
    for (int n = 2; n <= 8; n *= 2) {
        double t0 = dsv4_now();
        int rc = dsv4_comm_run_threads(n, 0, rank_fails_early, NULL);
        CHECK_INT(rc, DSV4_ENOENT);
        CHECKF(strstr(dsv4_errmsg(), "rank 1") && strstr(dsv4_errmsg(), "deliberate"), "msg %s",
               dsv4_errmsg());
        CHECKF(dsv4_now() - t0 < 60, "abort took %.1f s", dsv4_now() - t0);
    }

    test_processes();

    /* stress: many random collectives, 8 ranks (oversubscribed) and 3 ranks */
    static const int stress_ranks[] = {8, 3};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(stress_ranks); i++) {
        struct job j = {.iterations = 3000};
        atomic_init(&j.counter, 0);
        double t0 = dsv4_now();
        int rc = dsv4_comm_run_threads(stress_ranks[i], 8192, rank_stress, &j);
        CHECKF(rc == 0, "stress %d ranks: %s", stress_ranks[i], dsv4_errmsg());
        fprintf(stderr, "stress %d ranks, %d iterations: %.2f s\n", stress_ranks[i], j.iterations,
                dsv4_now() - t0);
    }
    TEST_DONE();
}
