/*
 * backend.c - choosing a backend by name (kernels/backend.h): "ref", "cpu",
 * and "cuda" / "cuda:N" (GPU N) when built with CUDA.
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

int dsv4_backend_create(const char *name, int threads, struct dsv4_backend **out)
{
    *out = NULL;
    if (!strcmp(name, "ref"))
        return dsv4_backend_ref_create(out);
    if (!strcmp(name, "cpu"))
        return dsv4_backend_cpu_create(threads, out);
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
    return dsv4_error(DSV4_EINVAL, "unknown backend '%s' (ref, cpu, cuda, cuda:N)", name);
#else
    return dsv4_error(DSV4_EINVAL, "unknown backend '%s' (ref, cpu)", name);
#endif
}

void dsv4_backend_destroy(struct dsv4_backend *be)
{
    if (be)
        be->destroy(be);
}
