/*
 * backend.c - choosing a backend by name (kernels/backend.h).
 */
#include "kernels/backend.h"

#include "base/dsv4.h"
#include "dsv4-build.h"

#include <string.h>

int dsv4_backend_create(const char *name, int threads, struct dsv4_backend **out)
{
    *out = NULL;
    if (!strcmp(name, "ref"))
        return dsv4_backend_ref_create(out);
    if (!strcmp(name, "cpu"))
        return dsv4_backend_cpu_create(threads, out);
    return dsv4_error(DSV4_EINVAL, "unknown backend '%s' (ref, cpu)", name);
}

void dsv4_backend_destroy(struct dsv4_backend *be)
{
    if (be)
        be->destroy(be);
}
