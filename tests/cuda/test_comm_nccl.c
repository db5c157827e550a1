/*
 * test_comm_nccl.c - the NCCL communicator (engine/model/comm_nccl.c).
 * Without NCCL in the build its entry points return DSV4_ENOTSUP (checked
 * everywhere); without a GPU the rest is skipped (77).  With GPUs: one rank
 * per GPU (up to 4, as threads): all_reduce_sum_f32, all_gather (in place
 * too), all_to_all, all_to_allv, broadcast and barrier on device buffers,
 * against the values every rank can compute; and a group whose second rank
 * never joins fails its creation with DSV4_EIO after the timeout instead of
 * hanging.
 */
#include "base/dsv4.h"
#include "dsv4-build.h"
#include "engine/model/comm.h"
#include "kernels/backend.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif
#include "tests/test.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#if defined(HAVE_CUDA) && defined(HAVE_NCCL)

#define MAXR 4
#define NF   1000

struct rank_arg {
    const uint8_t *id;
    int rank, size;
    int rc, bad;
    char msg[256];
};

static void *rank_main(void *p)
{
    struct rank_arg *a = p;
    struct dsv4_backend *be = NULL;
    struct dsv4_comm *c = NULL;
    char name[16];
    snprintf(name, sizeof name, "cuda:%d", a->rank);
    if ((a->rc = dsv4_backend_create(name, 1, &be)) ||
        (a->rc = dsv4_comm_nccl_init(a->id, a->rank, a->size, a->rank, dsv4_cuda_stream(be), 60000,
                                     &c))) {
        snprintf(a->msg, sizeof a->msg, "%s", dsv4_errmsg());
        dsv4_backend_destroy(be);
        return NULL;
    }
    int N = a->size, r = a->rank;
    float h[NF * MAXR], g[NF * MAXR];
    float *d = be->alloc(be, sizeof h), *e = be->alloc(be, sizeof h);
    /* all-reduce: rank r contributes r + i */
    for (int i = 0; i < NF; i++)
        h[i] = (float)(r + i);
    be->upload(be, d, h, sizeof(float) * NF);
    a->rc |= dsv4_comm_all_reduce_sum_f32(c, d, NF);
    be->download(be, g, d, sizeof(float) * NF);
    for (int i = 0; i < NF; i++)
        a->bad += g[i] != (float)(N * i + N * (N - 1) / 2);
    /* all-gather in place: chunk r holds r * 1000 + i */
    for (int i = 0; i < NF; i++)
        h[r * NF + i] = (float)(r * 1000 + i);
    be->upload(be, d + r * NF, h + r * NF, sizeof(float) * NF);
    a->rc |= dsv4_comm_all_gather(c, d + r * NF, d, sizeof(float) * NF);
    be->download(be, g, d, sizeof(float) * NF * N);
    for (int j = 0; j < N; j++)
        for (int i = 0; i < NF; i++)
            a->bad += g[j * NF + i] != (float)(j * 1000 + i);
    /* all-to-all: chunk j of rank r is r * 100 + j */
    for (int j = 0; j < N; j++)
        for (int i = 0; i < 10; i++)
            h[j * 10 + i] = (float)(r * 100 + j);
    be->upload(be, d, h, sizeof(float) * 10 * N);
    a->rc |= dsv4_comm_all_to_all(c, d, e, sizeof(float) * 10);
    be->download(be, g, e, sizeof(float) * 10 * N);
    for (int j = 0; j < N; j++)
        for (int i = 0; i < 10; i++)
            a->bad += g[j * 10 + i] != (float)(j * 100 + r);
    /* all-to-allv: rank r sends j + 1 floats to rank j */
    size_t sb[MAXR], so[MAXR], rb[MAXR], ro[MAXR], off = 0, roff = 0;
    for (int j = 0; j < N; j++) {
        sb[j] = sizeof(float) * (size_t)(j + 1);
        so[j] = off;
        off += sb[j];
        rb[j] = sizeof(float) * (size_t)(r + 1);
        ro[j] = roff;
        roff += rb[j];
    }
    for (size_t i = 0; i < off / 4; i++)
        h[i] = (float)(r * 10);
    be->upload(be, d, h, off);
    a->rc |= dsv4_comm_all_to_allv(c, d, sb, so, e, rb, ro);
    be->download(be, g, e, roff);
    for (int j = 0; j < N; j++)
        for (int i = 0; i <= r; i++)
            a->bad += g[ro[j] / 4 + i] != (float)(j * 10);
    /* broadcast from the last rank, then a barrier */
    for (int i = 0; i < NF; i++)
        h[i] = r == N - 1 ? (float)(7 * i) : -1.0f;
    be->upload(be, d, h, sizeof(float) * NF);
    a->rc |= dsv4_comm_broadcast(c, d, sizeof(float) * NF, N - 1);
    be->download(be, g, d, sizeof(float) * NF);
    for (int i = 0; i < NF; i++)
        a->bad += g[i] != (float)(7 * i);
    a->rc |= dsv4_comm_barrier(c);
    if (a->rc)
        snprintf(a->msg, sizeof a->msg, "%s", dsv4_errmsg());
    be->free(be, d);
    be->free(be, e);
    dsv4_comm_free(c);
    dsv4_backend_destroy(be);
    return NULL;
}

static void test_group(int N)
{
    uint8_t id[DSV4_COMM_NCCL_ID_BYTES];
    CHECK(dsv4_comm_nccl_unique_id(id) == 0);
    pthread_t th[MAXR];
    struct rank_arg a[MAXR];
    for (int r = 0; r < N; r++) {
        a[r] = (struct rank_arg){.id = id, .rank = r, .size = N};
        pthread_create(&th[r], NULL, rank_main, &a[r]);
    }
    for (int r = 0; r < N; r++) {
        pthread_join(th[r], NULL);
        CHECKF(a[r].rc == 0, "%d ranks: rank %d: %s", N, r, a[r].msg);
        CHECKF(a[r].bad == 0, "%d ranks: rank %d: %d wrong values", N, r, a[r].bad);
    }
}

/* A group of 2 whose rank 1 never comes: rank 0's creation times out. */
static void test_timeout(void)
{
    uint8_t id[DSV4_COMM_NCCL_ID_BYTES];
    struct dsv4_comm *c = NULL;
    CHECK(dsv4_comm_nccl_unique_id(id) == 0);
    double t0 = dsv4_now();
    int rc = dsv4_comm_nccl_init(id, 0, 2, 0, NULL, 3000, &c);
    double dt = dsv4_now() - t0;
    fprintf(stderr, "lonely rank: %s after %.1f s\n", dsv4_errmsg(), dt);
    CHECK(rc == DSV4_EIO && c == NULL && dt < 30);
}

int main(void)
{
    int n = dsv4_cuda_device_count();
    if (n <= 0) {
        printf("no CUDA device (%s)\n", n < 0 ? dsv4_errmsg() : "none");
        return 77;
    }
    test_group(1);
    if (n >= 2)
        test_group(n < MAXR ? n : MAXR);
    test_timeout();
    TEST_DONE();
}

#else

int main(void)
{
    uint8_t id[DSV4_COMM_NCCL_ID_BYTES];
    struct dsv4_comm *c = (struct dsv4_comm *)1;
    CHECK(dsv4_comm_nccl_unique_id(id) == DSV4_ENOTSUP);
    CHECK(dsv4_comm_nccl_init(id, 0, 1, 0, NULL, 0, &c) == DSV4_ENOTSUP && c == NULL);
    CHECK(strstr(dsv4_errmsg(), "NCCL") != NULL);
    TEST_DONE();
}

#endif
