/*
 * backend.cu - the "cuda" backend of kernels/backend.h: creation on one
 * device, memory (cudaMalloc; shareable VMM memory in vmm.cu), the host <-> device copies, the
 * scratch sized by reserve(), and the data-movement ops; the numeric ops
 * live in elem.cu, linear.cu, moe.cu, hc.cu and attn.cu.
 *
 * Ordering: everything runs on one non-blocking stream, so ops, copies and
 * the state pool's block-table uploads happen in the order the engine
 * issues them.  upload() returns once the bytes are in pinned staging (the
 * caller may reuse its buffer at once; the device copy is queued);
 * download() and sync() drain the stream, which also recycles the staging.
 *
 * Without a usable device creation fails with DSV4_ENOTSUP and a message
 * (no driver, no device, an architecture the kernels were not built for);
 * nothing here aborts before the backend exists.
 */
#include "kernels/cuda/cuda_int.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGE_BYTES ((size_t)32 << 20)

void dsv4_cu_fatal(const char *what, cudaError_t e, const char *file, int line)
{
    fprintf(stderr, "%s:%d: CUDA error %s (%s) in %s\n", file, line, cudaGetErrorName(e),
            cudaGetErrorString(e), what);
    abort();
}

void cu_enter(struct cu_be *c)
{
    CU_CHECK(cudaSetDevice(c->dev));
}

int64_t cu_cols(const struct dsv4_tensor *t)
{
    return t->shape[t->ndim - 1];
}

int64_t cu_rows(const struct dsv4_tensor *t)
{
    int64_t r = 1;
    for (int d = 0; d < t->ndim - 1; d++)
        r *= t->shape[d];
    return r;
}

int64_t cu_ld(const struct dsv4_tensor *t)
{
    if (t->ndim == 2)
        return dsv4_tensor_stride(t, 0);
    DSV4_ASSERT(dsv4_tensor_contig(t));
    return cu_cols(t);
}

void cu_check_t(const struct dsv4_tensor *t, enum dsv4_dtype dt)
{
    DSV4_ASSERT(t && t->data && t->dtype == dt);
}

static int cu_status(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    return dsv4_error(DSV4_EIO, "cuda: %s: %s", what, cudaGetErrorString(e));
}

/* ------------------------------------------------------------ lifetime */

static void cu_free_scratch(struct cu_be *c)
{
    if (c->scratch)
        cudaFree(c->scratch);
    c->scratch = NULL;
    c->reserved = false;
}

static void cu_destroy(struct dsv4_backend *be)
{
    struct cu_be *c = CB(be);
    cudaSetDevice(c->dev);
    if (c->st)
        cudaStreamSynchronize(c->st);
    cu_free_scratch(c);
    if (c->stage)
        cudaFreeHost(c->stage);
    if (c->st)
        cudaStreamDestroy(c->st);
    free(c);
}

/* Carves the workspace out of one allocation, 256-byte aligned pieces. */
static int cu_reserve(struct dsv4_backend *be, const struct dsv4_be_limits *lim)
{
    struct cu_be *c = CB(be);
    struct dsv4_cu_ws ws;
    cu_enter(c);
    dsv4_cu_workspace(lim, 0, &ws);
    size_t sizes[] = {
            (size_t)(ws.quant_rows * ws.quant_cols), /* q */
            4 * (size_t)ws.quant_scales,             /* qs */
            4 * (size_t)ws.route,                    /* route */
            4 * (size_t)ws.moe_experts,              /* m_cnt */
            4 * (size_t)ws.moe_experts,              /* m_off */
            4 * (size_t)ws.pairs,                    /* m_perm */
            4 * (size_t)ws.pairs,                    /* m_dst */
            4 * (size_t)ws.pairs,                    /* m_eid */
            16 * (size_t)ws.moe_tiles,               /* m_tiles */
            16,                                      /* m_ntiles */
            4 * (size_t)ws.moe_act,                  /* m_g */
            4 * (size_t)ws.moe_act,                  /* m_u */
            4 * (size_t)ws.moe_act,                  /* m_h */
            (size_t)ws.moe_quant,                    /* m_q */
            4 * (size_t)ws.moe_quant_scales,         /* m_qs */
            4 * (size_t)ws.select_scores,            /* sel */
    };
    size_t off[DSV4_ARRAY_LEN(sizes)], total = 0;
    for (size_t i = 0; i < DSV4_ARRAY_LEN(sizes); i++) {
        off[i] = total;
        total += (sizes[i] + 255) & ~(size_t)255;
    }
    int rc = cu_attn_reserve(c, lim);
    if (rc)
        return rc;
    CU_CHECK(cudaStreamSynchronize(c->st));
    cu_free_scratch(c);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, total);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dsv4_error(DSV4_ENOMEM,
                          "cuda backend: no device memory for %zu bytes of scratch (%s)", total,
                          cudaGetErrorString(e));
    }
    uint8_t *b = (uint8_t *)p;
    c->scratch = p;
    c->q = b + off[0];
    c->qs = (float *)(b + off[1]);
    c->route = (float *)(b + off[2]);
    c->m_cnt = (int32_t *)(b + off[3]);
    c->m_off = (int32_t *)(b + off[4]);
    c->m_perm = (int32_t *)(b + off[5]);
    c->m_dst = (int32_t *)(b + off[6]);
    c->m_eid = (int32_t *)(b + off[7]);
    c->m_tiles = (int4 *)(b + off[8]);
    c->m_ntiles = (int32_t *)(b + off[9]);
    c->m_g = (float *)(b + off[10]);
    c->m_u = (float *)(b + off[11]);
    c->m_h = (float *)(b + off[12]);
    c->m_q = b + off[13];
    c->m_qs = (float *)(b + off[14]);
    c->sel = (float *)(b + off[15]);
    c->lim = *lim;
    c->ws = ws;
    c->reserved = true;
    return 0;
}

/* ------------------------------------------------------------ memory */

static void *cu_alloc(struct dsv4_backend *be, size_t bytes)
{
    struct cu_be *c = CB(be);
    void *p = NULL;
    cu_enter(c);
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes ? bytes : 1, c->st) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free(struct dsv4_backend *be, void *p)
{
    if (!p)
        return;
    cu_enter(CB(be));
    CU_CHECK(cudaFree(p)); /* implies a device synchronisation */
}

static int cu_sync(struct dsv4_backend *be)
{
    struct cu_be *c = CB(be);
    cu_enter(c);
    int rc = cu_status(cudaStreamSynchronize(c->st), "stream synchronize");
    c->stage_off = 0;
    return rc;
}

static int cu_upload(struct dsv4_backend *be, void *dst, const void *src, size_t bytes)
{
    struct cu_be *c = CB(be);
    cu_enter(c);
    while (bytes > 0) {
        size_t n = bytes < c->stage_cap ? bytes : c->stage_cap;
        if (c->stage_off + n > c->stage_cap) {
            /* every queued copy out of the staging is done once the stream drains */
            int rc = cu_sync(be);
            if (rc)
                return rc;
        }
        uint8_t *s = c->stage + c->stage_off;
        memcpy(s, src, n);
        cudaError_t e = cudaMemcpyAsync(dst, s, n, cudaMemcpyHostToDevice, c->st);
        if (e != cudaSuccess)
            return cu_status(e, "upload");
        c->stage_off += (n + 255) & ~(size_t)255;
        dst = (uint8_t *)dst + n;
        src = (const uint8_t *)src + n;
        bytes -= n;
    }
    return 0;
}

static int cu_download(struct dsv4_backend *be, void *dst, const void *src, size_t bytes)
{
    struct cu_be *c = CB(be);
    cu_enter(c);
    if (bytes) {
        cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st);
        if (e != cudaSuccess)
            return cu_status(e, "download");
    }
    return cu_sync(be);
}

/* ------------------------------------------------------------ data movement */

static void cu_copy2d(struct dsv4_backend *be, void *dst, size_t dpitch, const void *src,
                      size_t spitch, size_t width, size_t rows)
{
    struct cu_be *c = CB(be);
    if (!rows || !width)
        return;
    cu_enter(c);
    if (rows == 1) {
        CU_CHECK(cudaMemcpyAsync(dst, src, width, cudaMemcpyDeviceToDevice, c->st));
        return;
    }
    DSV4_ASSERT(dpitch >= width && spitch >= width);
    CU_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice,
                               c->st));
}

/* dst row i = src row idx[i], rows of `width` bytes copied as 4-byte words when aligned. */
__global__ void k_gather(const uint8_t *src, const int32_t *idx, uint8_t *dst, int64_t n,
                         int64_t width, bool words)
{
    int64_t total = n * (words ? width / 4 : width);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (words) {
            int64_t w = width / 4, r = i / w, j = i % w;
            ((uint32_t *)dst)[r * w + j] = ((const uint32_t *)src)[(int64_t)idx[r] * w + j];
        } else {
            int64_t r = i / width, j = i % width;
            dst[r * width + j] = src[(int64_t)idx[r] * width + j];
        }
    }
}

static void cu_gather_rows(struct dsv4_backend *be, const struct dsv4_tensor *src,
                           const struct dsv4_tensor *idx, const struct dsv4_tensor *dst)
{
    struct cu_be *c = CB(be);
    int64_t n = cu_rows(dst), width = cu_cols(src) * (int64_t)dsv4_dtype_size(src->dtype);
    DSV4_ASSERT(src->dtype == dst->dtype && cu_cols(src) == cu_cols(dst));
    DSV4_ASSERT(idx->dtype == DSV4_DTYPE_I32 && dsv4_tensor_numel(idx) == n);
    DSV4_ASSERT(dsv4_tensor_contig(src) && dsv4_tensor_contig(dst));
    if (n == 0 || width == 0)
        return;
    cu_enter(c);
    bool words = width % 4 == 0 && ((uintptr_t)src->data | (uintptr_t)dst->data) % 4 == 0;
    int64_t total = n * (words ? width / 4 : width);
    k_gather<<<cu_grid(total, 256), 256, 0, c->st>>>((const uint8_t *)src->data,
                                                     (const int32_t *)idx->data,
                                                     (uint8_t *)dst->data, n, width, words);
    CU_LAUNCHED();
}

static void cu_fill_zero(struct dsv4_backend *be, const struct dsv4_tensor *x)
{
    struct cu_be *c = CB(be);
    DSV4_ASSERT(dsv4_tensor_contig(x));
    size_t bytes = (size_t)dsv4_tensor_numel(x) * dsv4_dtype_size(x->dtype);
    if (!bytes)
        return;
    cu_enter(c);
    CU_CHECK(cudaMemsetAsync(x->data, 0, bytes, c->st));
}

/* ------------------------------------------------------------ creation */

/* ------------------------------------------------------------ graphs
 * The ops between graph_begin and graph_end are captured from the backend's stream
 * (thread-local mode: another thread's CUDA calls neither join nor break the capture) and
 * instantiated once; a launch replays them on the same stream, so uploads queued before it
 * and downloads after it stay ordered with it. */

static int cu_graph_begin(struct dsv4_backend *be)
{
    struct cu_be *c = CB(be);
    cu_enter(c);
    return cu_status(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal),
                     "graph capture begin");
}

static int cu_graph_end(struct dsv4_backend *be, void **graph)
{
    struct cu_be *c = CB(be);
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    cu_enter(c);
    int rc = cu_status(cudaStreamEndCapture(c->st, &g), "graph capture end");
    if (!rc && graph)
        rc = cu_status(cudaGraphInstantiate(&x, g, 0), "graph instantiate");
    if (g)
        cudaGraphDestroy(g);
    if (rc)
        cudaGetLastError(); /* a failed capture's error is not the next call's */
    if (graph)
        *graph = rc ? NULL : (void *)x;
    return rc;
}

static int cu_graph_launch(struct dsv4_backend *be, void *graph)
{
    struct cu_be *c = CB(be);
    cu_enter(c);
    return cu_status(cudaGraphLaunch((cudaGraphExec_t)graph, c->st), "graph launch");
}

static void cu_graph_free(struct dsv4_backend *be, void *graph)
{
    if (!graph)
        return;
    cu_enter(CB(be));
    cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

/* A kernel of this build, to ask whether the device can run the build's code. */
__global__ void k_probe(int *p)
{
    if (p)
        *p = 1;
}

extern "C" int dsv4_backend_cuda_create(int device, struct dsv4_backend **out)
{
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dsv4_error(DSV4_ENOTSUP, "cuda backend: no usable CUDA driver or device (%s)",
                          cudaGetErrorString(e));
    }
    if (n == 0)
        return dsv4_error(DSV4_ENOTSUP, "cuda backend: no CUDA device");
    if (device < 0 || device >= n)
        return dsv4_error(DSV4_EINVAL, "cuda backend: device %d of %d", device, n);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess ||
        (e = cudaSetDevice(device)) != cudaSuccess)
        return dsv4_error(DSV4_ENOTSUP, "cuda backend: device %d: %s", device,
                          cudaGetErrorString(e));
    cudaFuncAttributes fa;
    if ((e = cudaFuncGetAttributes(&fa, k_probe)) != cudaSuccess) {
        cudaGetLastError();
        return dsv4_error(
                DSV4_ENOTSUP, "cuda backend: %s (sm_%d%d) cannot run this build's kernels (%s): %s",
                prop.name, prop.major, prop.minor, dsv4_cuda_archs(), cudaGetErrorString(e));
    }
    struct cu_be *c = (struct cu_be *)calloc(1, sizeof *c);
    if (!c)
        return dsv4_error(DSV4_ENOMEM, "cuda backend: out of memory");
    c->dev = device;
    c->sms = prop.multiProcessorCount;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    int rc = 0;
    if ((e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaHostAlloc((void **)&c->stage, STAGE_BYTES, cudaHostAllocDefault)) != cudaSuccess) {
        cudaGetLastError();
        rc = dsv4_error(DSV4_ENOMEM, "cuda backend: stream or pinned staging: %s",
                        cudaGetErrorString(e));
        c->stage = NULL;
        cu_destroy(&c->be);
        return rc;
    }
    c->stage_cap = STAGE_BYTES;
    struct dsv4_backend *b = &c->be;
    b->name = "cuda";
    b->device = DSV4_DEVICE_GPU(device);
    b->impl = c;
    b->destroy = cu_destroy;
    b->reserve = cu_reserve;
    b->alloc = cu_alloc;
    b->free = cu_free;
    b->upload = cu_upload;
    b->download = cu_download;
    b->sync = cu_sync;
    b->copy2d = cu_copy2d;
    b->gather_rows = cu_gather_rows;
    b->fill_zero = cu_fill_zero;
    b->graph_begin = cu_graph_begin;
    b->graph_end = cu_graph_end;
    b->graph_launch = cu_graph_launch;
    b->graph_free = cu_graph_free;
    cu_ops_elem(b);
    cu_ops_linear(b);
    cu_ops_moe(b);
    cu_ops_hc(b);
    cu_ops_attn(b);
    cu_ops_vmm(b);
    struct dsv4_be_limits lim = {.tokens = 1,
                                 .cols = 1,
                                 .hidden = 1,
                                 .inter = 1,
                                 .experts = 1,
                                 .topk = 1,
                                 .keys = 1,
                                 .entries = 1};
    if ((rc = cu_reserve(b, &lim))) {
        cu_destroy(b);
        return rc;
    }
    *out = b;
    return 0;
}

extern "C" void *dsv4_cuda_stream(struct dsv4_backend *be)
{
    return be && be->name && !strcmp(be->name, "cuda") ? (void *)CB(be)->st : NULL;
}
