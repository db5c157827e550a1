/*
 * vmm.cu - shareable device memory for the cuda backend (alloc_shared,
 * import_shared, free_shared of kernels/backend.h): CUDA virtual memory
 * management, the physical allocation exported as a POSIX file descriptor.
 *
 * A worker uploads its weights into such an allocation and hands the
 * descriptor to the supervisor (daemon/worker.c); the next incarnation of
 * the rank imports it and maps the weights instead of uploading them.
 * Whether the allocation outlives the process that made it while only the
 * supervisor's descriptor refers to it is what tests/cuda/test_vmm_survive
 * settles on a GPU; when it does not, the import fails cleanly and the
 * worker uploads again.
 *
 * The driver API is reached through the runtime's entry-point query, so
 * nothing links libcuda: a build without a driver still starts (and its
 * GPU tests skip).  The handle is released right after mapping (the mapping
 * and the exported descriptor hold the memory); free_shared unmaps and
 * returns the address range.
 */
#include "kernels/cuda/cuda_int.cuh"

#include "kernels/cuda/plan.h"

#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct drv {
    CUresult (*create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                       unsigned long long);
    CUresult (*release)(CUmemGenericAllocationHandle);
    CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*addr_free)(CUdeviceptr, size_t);
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    CUresult (*unmap)(CUdeviceptr, size_t);
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*granularity)(size_t *, const CUmemAllocationProp *,
                            CUmemAllocationGranularity_flags);
    CUresult (*export_fd)(void *, CUmemGenericAllocationHandle, CUmemAllocationHandleType,
                          unsigned long long);
    CUresult (*import_fd)(CUmemGenericAllocationHandle *, void *, CUmemAllocationHandleType);
    CUresult (*errstr)(CUresult, const char **);
    int rc; /* 0 when every entry point was found */
    char why[160];
};

static struct drv D;
static pthread_once_t D_once = PTHREAD_ONCE_INIT;

static void load(void **fp, const char *name)
{
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (D.rc)
        return;
    if (cudaGetDriverEntryPointByVersion(name, fp, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !*fp) {
        cudaGetLastError();
        D.rc = DSV4_ENOTSUP;
        snprintf(D.why, sizeof D.why, "the driver has no %s", name);
    }
}

static void load_all(void)
{
    load((void **)&D.create, "cuMemCreate");
    load((void **)&D.release, "cuMemRelease");
    load((void **)&D.reserve, "cuMemAddressReserve");
    load((void **)&D.addr_free, "cuMemAddressFree");
    load((void **)&D.map, "cuMemMap");
    load((void **)&D.unmap, "cuMemUnmap");
    load((void **)&D.set_access, "cuMemSetAccess");
    load((void **)&D.granularity, "cuMemGetAllocationGranularity");
    load((void **)&D.export_fd, "cuMemExportToShareableHandle");
    load((void **)&D.import_fd, "cuMemImportFromShareableHandle");
    load((void **)&D.errstr, "cuGetErrorString");
}

static bool drv_ok(void)
{
    pthread_once(&D_once, load_all);
    if (D.rc)
        dsv4_error(D.rc, "cuda VMM: %s", D.why);
    return D.rc == 0;
}

static bool ok(CUresult r, const char *what)
{
    if (r == CUDA_SUCCESS)
        return true;
    const char *s = NULL;
    if (!D.errstr || D.errstr(r, &s) != CUDA_SUCCESS || !s)
        s = "unknown error";
    dsv4_error(r == CUDA_ERROR_OUT_OF_MEMORY ? DSV4_ENOMEM : DSV4_EIO, "cuda VMM: %s: %s (%d)",
               what, s, (int)r);
    return false;
}

static CUmemAllocationProp prop_for(int dev)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = dev;
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return p;
}

/* The mapped size of `bytes` on device dev (0 with a message on failure). */
static size_t span(int dev, size_t bytes)
{
    CUmemAllocationProp p = prop_for(dev);
    size_t g = 0;
    if (!ok(D.granularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED), "granularity"))
        return 0;
    uint64_t s = dsv4_cu_vmm_round(bytes ? bytes : 1, g);
    if (!s)
        dsv4_error(DSV4_EIO, "cuda VMM: granularity %zu is not a power of two", g);
    return (size_t)s;
}

/* Reserves an address range for handle h, maps it read-write on dev; releases h. */
static void *map_handle(struct cu_be *c, CUmemGenericAllocationHandle h, size_t size)
{
    CUdeviceptr ptr = 0;
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.location.id = c->dev;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    bool reserved = false, mapped = false;
    if (ok(D.reserve(&ptr, size, 0, 0, 0), "address reserve")) {
        reserved = true;
        if (ok(D.map(ptr, size, 0, h, 0), "map")) {
            mapped = true;
            if (ok(D.set_access(ptr, size, &a, 1), "set access")) {
                D.release(h); /* the mapping holds the memory now */
                return (void *)(uintptr_t)ptr;
            }
        }
    }
    if (mapped)
        D.unmap(ptr, size);
    if (reserved)
        D.addr_free(ptr, size);
    D.release(h);
    return NULL;
}

/* The mapped size of `bytes` on c's device, with the device current and the driver loaded
 * (0 with a message otherwise). */
static size_t enter(struct cu_be *c, size_t bytes)
{
    cu_enter(c);
    return drv_ok() ? span(c->dev, bytes) : 0;
}

static void unmap(void *p, size_t size)
{
    D.unmap((CUdeviceptr)(uintptr_t)p, size);
    D.addr_free((CUdeviceptr)(uintptr_t)p, size);
}

static void *cu_alloc_shared(struct dsv4_backend *be, size_t bytes, int *fd)
{
    struct cu_be *c = CB(be);
    *fd = -1;
    size_t size = enter(c, bytes);
    if (!size)
        return NULL;
    CUmemAllocationProp p = prop_for(c->dev);
    CUmemGenericAllocationHandle h;
    if (!ok(D.create(&h, size, &p, 0), "create"))
        return NULL;
    int f = -1;
    if (!ok(D.export_fd(&f, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0), "export")) {
        D.release(h);
        return NULL;
    }
    void *ptr = map_handle(c, h, size);
    if (!ptr) {
        close(f);
        return NULL;
    }
    if (cudaMemsetAsync(ptr, 0, size, c->st) != cudaSuccess ||
        cudaStreamSynchronize(c->st) != cudaSuccess) {
        dsv4_error(DSV4_EIO, "cuda VMM: zeroing %zu bytes: %s", size,
                   cudaGetErrorString(cudaGetLastError()));
        unmap(ptr, size);
        close(f);
        return NULL;
    }
    *fd = f;
    return ptr;
}

static void *cu_import_shared(struct dsv4_backend *be, int fd, size_t bytes)
{
    struct cu_be *c = CB(be);
    size_t size = enter(c, bytes);
    if (!size)
        return NULL;
    CUmemGenericAllocationHandle h;
    if (!ok(D.import_fd(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            "import"))
        return NULL;
    return map_handle(c, h, size); /* a smaller allocation fails to map */
}

static void cu_free_shared(struct dsv4_backend *be, void *p, size_t bytes)
{
    struct cu_be *c = CB(be);
    size_t size = p ? enter(c, bytes) : 0;
    if (!size)
        return;
    cudaStreamSynchronize(c->st);
    unmap(p, size);
}

void cu_ops_vmm(struct dsv4_backend *b)
{
    b->alloc_shared = cu_alloc_shared;
    b->import_shared = cu_import_shared;
    b->free_shared = cu_free_shared;
}
