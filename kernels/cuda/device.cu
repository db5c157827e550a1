/*
 * device.cu - device discovery for the CUDA backend.  Runs without a GPU:
 * a missing driver is reported as an error status, never a crash.
 */
#include "dsv4-build.h"
#include "kernels/cuda/cuda.h"
#include "base/dsv4.h"

#include <cuda_runtime.h>

extern "C" int dsv4_cuda_device_count(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess)
        return dsv4_error(DSV4_ENOTSUP, "CUDA unavailable: %s", cudaGetErrorString(e));
    return n;
}

extern "C" const char *dsv4_cuda_archs(void)
{
    return DSV4_CUDA_ARCHS;
}
