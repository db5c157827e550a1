/*
 * backend.c - choosing a backend by name (kernels/backend.h): "ref", "cpu",
 * "devsim", and "cuda" / "cuda:N" (GPU N) when built with CUDA.
 *
 * devsim is the cpu backend's op table with the device set to GPU 0 and
 * shareable memory from memfd: the engine then treats it as it treats a
 * GPU (weights uploaded into its memory, collectives staged through host
 * buffers, weights shared with the next worker through a descriptor), and
 * those paths run in `make check` on machines without one.
 */
#include "kernels/backend.h"

#include "base/dsv4.h"
#include "dsv4-build.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* "cuda" -> 0, "cuda:N" -> N; -1 when the name is not a cuda backend name. */
static int cuda_device(const char *name)
{
    if (strncmp(name, "cuda", 4))
        return -1;
    if (!name[4])
        return 0;
    if (name[4] != ':' || !name[5])
        return -1;
    char *end;
    errno = 0;
    long d = strtol(name + 5, &end, 10);
    if (*end || errno || d < 0 || d > 1023)
        return -1;
    return (int)d;
}

/* ------------------------------------------------------------ devsim */

static size_t page_round(size_t bytes)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (DSV4_MAX(bytes, (size_t)1) + pg - 1) / pg * pg;
}

static void *devsim_alloc_shared(struct dsv4_backend *be, size_t bytes, int *fd)
{
    (void)be;
    *fd = memfd_create("dsv4-devsim", MFD_CLOEXEC);
    if (*fd < 0) {
        dsv4_error(DSV4_ENOMEM, "devsim: memfd_create: %s", strerror(errno));
        return NULL;
    }
    size_t len = page_round(bytes);
    void *p = MAP_FAILED;
    if (ftruncate(*fd, (off_t)len) == 0)
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (p == MAP_FAILED) {
        dsv4_error(DSV4_ENOMEM, "devsim: %zu shared bytes: %s", len, strerror(errno));
        close(*fd);
        *fd = -1;
        return NULL;
    }
    return p;
}

static void *devsim_import_shared(struct dsv4_backend *be, int fd, size_t bytes)
{
    (void)be;
    struct stat sb;
    size_t len = page_round(bytes);
    if (fstat(fd, &sb) || (uint64_t)sb.st_size < (uint64_t)len) {
        dsv4_error(DSV4_EINVAL, "devsim: descriptor %d holds no allocation of %zu bytes", fd,
                   bytes);
        return NULL;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        dsv4_error(DSV4_EIO, "devsim: mapping descriptor %d: %s", fd, strerror(errno));
        return NULL;
    }
    return p;
}

static void devsim_free_shared(struct dsv4_backend *be, void *p, size_t bytes)
{
    (void)be;
    if (p)
        munmap(p, page_round(bytes));
}

int dsv4_backend_devsim_create(int threads, struct dsv4_backend **out)
{
    int rc = dsv4_backend_cpu_create(threads, out);
    if (rc)
        return rc;
    struct dsv4_backend *b = *out;
    b->name = "devsim";
    b->device = DSV4_DEVICE_GPU(0);
    b->alloc_shared = devsim_alloc_shared;
    b->import_shared = devsim_import_shared;
    b->free_shared = devsim_free_shared;
    return 0;
}

/* ------------------------------------------------------------ by name */

int dsv4_backend_create(const char *name, int threads, struct dsv4_backend **out)
{
    *out = NULL;
    if (!strcmp(name, "ref"))
        return dsv4_backend_ref_create(out);
    if (!strcmp(name, "cpu"))
        return dsv4_backend_cpu_create(threads, out);
    if (!strcmp(name, "devsim"))
        return dsv4_backend_devsim_create(threads, out);
    int dev = cuda_device(name);
    if (dev >= 0) {
#ifdef HAVE_CUDA
        return dsv4_backend_cuda_create(dev, out);
#else
        return dsv4_error(DSV4_ENOTSUP,
                          "backend '%s': this build has no CUDA backend (configure --with-cuda)",
                          name);
#endif
    }
#ifdef HAVE_CUDA
    return dsv4_error(DSV4_EINVAL, "unknown backend '%s' (ref, cpu, devsim, cuda, cuda:N)", name);
#else
    return dsv4_error(DSV4_EINVAL, "unknown backend '%s' (ref, cpu, devsim)", name);
#endif
}

void dsv4_backend_destroy(struct dsv4_backend *be)
{
    if (be)
        be->destroy(be);
}
