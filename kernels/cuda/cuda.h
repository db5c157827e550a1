/*
 * cuda.h - what the CUDA backend exposes to C code.  Built only when
 * configure found nvcc (HAVE_CUDA); callers check HAVE_CUDA first.
 */
#ifndef DSV4_CUDA_H
#define DSV4_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable devices, or a negative DSV4_E* status (with a message)
 * when the driver or runtime is not usable on this machine. */
int dsv4_cuda_device_count(void);

/* Comma-separated list of the architectures the kernels were built for. */
const char *dsv4_cuda_archs(void);

#ifdef __cplusplus
}
#endif

#endif
