/*
 * test_cuda_nodev.c - the "cuda" backend name in every build and on every
 * machine: without CUDA support in the build, or without a usable device,
 * dsv4_backend_create("cuda") returns DSV4_ENOTSUP with a message and no
 * backend, never a crash; with a device it creates and destroys one.  Bad
 * device names are DSV4_EINVAL.  (The kernels themselves are checked by
 * test_cuda_ops and test_cuda_forward, which need a GPU.)
 */
#include "base/dsv4.h"
#include "dsv4-build.h"
#include "kernels/backend.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif
#include "tests/test.h"

#include <stdio.h>
#include <string.h>

int main(void)
{
    struct dsv4_backend *be = (struct dsv4_backend *)1;
    int rc = dsv4_backend_create("cuda", 1, &be);
#ifdef HAVE_CUDA
    int n = dsv4_cuda_device_count();
    fprintf(stderr, "built for %s; devices: %d (%s)\n", dsv4_cuda_archs(), n,
            n < 0 ? dsv4_errmsg() : "ok");
    if (n > 0) {
        CHECKF(rc == 0 || rc == DSV4_ENOTSUP, "create: %s", dsv4_errmsg());
        if (rc == 0) {
            CHECK(be && !strcmp(be->name, "cuda") && be->device == DSV4_DEVICE_GPU(0));
            void *p = be->alloc(be, 1000);
            uint8_t host[1000], back[1000];
            for (int i = 0; i < 1000; i++)
                host[i] = (uint8_t)(i * 7);
            CHECK(p && be->upload(be, p, host, 1000) == 0);
            CHECK(be->download(be, back, p, 1000) == 0 && !memcmp(host, back, 1000));
            be->free(be, p);
            dsv4_backend_destroy(be);
        } else {
            fprintf(stderr, "device present but unusable: %s\n", dsv4_errmsg());
        }
    } else {
        CHECK_INT(rc, DSV4_ENOTSUP);
        CHECK(be == NULL && strlen(dsv4_errmsg()) > 0);
        fprintf(stderr, "no device: %s\n", dsv4_errmsg());
    }
    CHECK_INT(dsv4_backend_create("cuda:1023", 1, &be), n > 1023 ? 0
                                                        : n > 0  ? DSV4_EINVAL
                                                                 : DSV4_ENOTSUP);
#else
    CHECK_INT(rc, DSV4_ENOTSUP);
    CHECK(be == NULL && strstr(dsv4_errmsg(), "no CUDA backend"));
#endif
    const char *bad[] = {"cuda:", "cuda:x", "cudax", "cuda:-1", "cuda:1x", "gpu"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECKF(dsv4_backend_create(bad[i], 1, &be) == DSV4_EINVAL, "%s", bad[i]);
        CHECK(be == NULL);
    }
    TEST_DONE();
}
