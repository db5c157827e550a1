/*
 * cuda.h - what the CUDA backend exposes to C code.  Built only when
 * configure found nvcc (HAVE_CUDA); callers check HAVE_CUDA first.
 *
 * The backend (kernels/cuda/backend.cu and the kernel files beside it)
 * implements every op of kernels/backend.h on one GPU with the math of
 * kernels/ref, batch-invariant (plan.h: every output's summation order is
 * fixed by its shape, never by the batch).  Memory contract, in addition to
 * backend.h's:
 *   - data pointers inside op arguments are device memory (alloc/upload);
 *   - the argument structs themselves are host memory read at launch:
 *     struct dsv4_lin / dsv4_qweight (the weight pointers in them are
 *     device memory), dsv4_hc_params, dsv4_rope, dsv4_kv_args,
 *     dsv4_select_args, dsv4_attn_args, dsv4_toks, dsv4_route_args,
 *     dsv4_moe_args, and the kv view with its `layers` geometry; the view's
 *     block_table and the MoE args' expert array `ex` (with the device
 *     weight pointers inside) are device memory;
 *   - ops are queued on the backend's stream and return at once; upload
 *     copies the caller's bytes before returning; download and sync wait.
 */
#ifndef DSV4_CUDA_H
#define DSV4_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

struct dsv4_backend;

/* Number of usable devices, or a negative DSV4_E* status (with a message)
 * when the driver or runtime is not usable on this machine. */
int dsv4_cuda_device_count(void);

/* Comma-separated list of the architectures the kernels were built for. */
const char *dsv4_cuda_archs(void);

/*
 * The "cuda" backend on GPU `device`.  DSV4_ENOTSUP (with a message) when there is no
 * driver, no device, or the device cannot run this build's architectures; DSV4_EINVAL for
 * a device index out of range.  Never aborts on a machine without a GPU.
 */
int dsv4_backend_cuda_create(int device, struct dsv4_backend **out);

/* The backend's stream (a cudaStream_t), for collectives that must be ordered with its
 * ops (engine/model/comm_nccl.c); NULL for other backends. */
void *dsv4_cuda_stream(struct dsv4_backend *be);

#ifdef __cplusplus
}
#endif

#endif
