/*  =========================================================================
    julia_kernel.cu — the julia example's GPU path: one thread per pixel

    Built by nvcc only when kiln finds the CUDA toolkit, and linked into
    julia.so with the static CUDA runtime, so the app needs nothing but
    the driver on the GPU host. The pixel function is julia.h's, the same
    the CPU path runs.
    =========================================================================
*/
#include "julia.h"

#include <cuda_runtime_api.h>
#include <stdio.h>

#define BLOCK_SIDE 16

__global__ static void
s_julia_kernel (julia_params_t params, unsigned char *rgb)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x < params.width && y < params.height)
        julia_pixel (params, x, y, rgb + 3 * ((size_t) y * params.width + x));
}

extern "C" int
julia_cuda_device_count (char *error, size_t error_size)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount (&count);
    if (rc != cudaSuccess) {
        snprintf (error, error_size, "%s", cudaGetErrorString (rc));
        return 0;
    }
    if (count == 0)
        snprintf (error, error_size, "the CUDA runtime sees no device");
    return count;
}

extern "C" void
julia_cuda_device_name (char *name, size_t name_size)
{
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties (&prop, 0) == cudaSuccess)
        snprintf (name, name_size, "%s", prop.name);
    else
        snprintf (name, name_size, "unknown device");
}

extern "C" int
julia_cuda_render (julia_params_t params, unsigned char *rgb, char *error, size_t error_size)
{
    size_t size = (size_t) params.width * params.height * 3;
    unsigned char *device_rgb = NULL;
    cudaError_t rc = cudaMalloc ((void **) &device_rgb, size);
    if (rc == cudaSuccess) {
        dim3 block (BLOCK_SIDE, BLOCK_SIDE);
        dim3 grid ((params.width + BLOCK_SIDE - 1) / BLOCK_SIDE,
                   (params.height + BLOCK_SIDE - 1) / BLOCK_SIDE);
        s_julia_kernel <<<grid, block>>> (params, device_rgb);
        rc = cudaGetLastError ();
        if (rc == cudaSuccess)
            rc = cudaMemcpy (rgb, device_rgb, size, cudaMemcpyDeviceToHost);
        cudaFree (device_rgb);
    }
    if (rc != cudaSuccess) {
        snprintf (error, error_size, "%s", cudaGetErrorString (rc));
        return -1;
    }
    return 0;
}
