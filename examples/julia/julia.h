/*  =========================================================================
    julia.h — the Julia-set renderer shared by the CPU path (julia.c) and
    the CUDA kernel (julia_kernel.cu)

    The per-pixel function lives here, compiled by both cc and nvcc, so
    the GPU and the CPU draw the same picture from the same prompt.
    =========================================================================
*/
#ifndef JULIA_H_INCLUDED
#define JULIA_H_INCLUDED

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define JULIA_FN __host__ __device__ static inline
#else
#define JULIA_FN static inline
#endif

#define JULIA_MAX_ITERATIONS 300
//  A large escape radius makes the smooth colouring smooth.
#define JULIA_BAILOUT 256.0f
#define JULIA_TWO_PI 6.28318530718f

//  What one picture depends on: its size, and what the prompt chose.
typedef struct {
    int width;
    int height;
    float c_re;                     //  the Julia constant c
    float c_im;
    float phase;                    //  palette shift, 0..1
} julia_params_t;

//  Colours pixel (x, y) into rgb [0..2].
JULIA_FN void
julia_pixel (julia_params_t p, int x, int y, unsigned char *rgb)
{
    //  The shorter side spans [-1.4, 1.4]: most sets fit any shape.
    float scale = 2.8f / (float) (p.width < p.height? p.width: p.height);
    float zr = ((float) x - 0.5f * (float) p.width) * scale;
    float zi = ((float) y - 0.5f * (float) p.height) * scale;
    int i = 0;
    float r2 = zr * zr + zi * zi;
    while (i < JULIA_MAX_ITERATIONS && r2 < JULIA_BAILOUT * JULIA_BAILOUT) {
        float next = zr * zr - zi * zi + p.c_re;
        zi = 2.0f * zr * zi + p.c_im;
        zr = next;
        r2 = zr * zr + zi * zi;
        i++;
    }
    if (i == JULIA_MAX_ITERATIONS) {
        rgb [0] = rgb [1] = rgb [2] = 0;    //  inside the set
        return;
    }
    //  Smooth iteration count, then a cosine palette; what escapes at
    //  once fades to black so the set's filaments stand out.
    float mu = (float) i + 1.0f - log2f (logf (sqrtf (r2)));
    float u = mu / (float) JULIA_MAX_ITERATIONS;
    u = u > 0.0f? u: 0.0f;
    float t = sqrtf (u);
    float r = 0.5f + 0.5f * cosf (JULIA_TWO_PI * (t + p.phase));
    float g = 0.5f + 0.5f * cosf (JULIA_TWO_PI * (t + p.phase + 0.33f));
    float b = 0.5f + 0.5f * cosf (JULIA_TWO_PI * (t + p.phase + 0.67f));
    float fade = u * 15.0f < 1.0f? u * 15.0f: 1.0f;
    rgb [0] = (unsigned char) (255.0f * r * fade);
    rgb [1] = (unsigned char) (255.0f * g * fade);
    rgb [2] = (unsigned char) (255.0f * b * fade);
}

#ifdef __cplusplus
extern "C" {
#endif

//  In julia_kernel.cu, built only with the CUDA toolkit.

//  How many CUDA devices this process may use; 0 (and a reason in error)
//  when none.
int julia_cuda_device_count (char *error, size_t error_size);

//  The name of device 0, for the logs.
void julia_cuda_device_name (char *name, size_t name_size);

//  Renders width × height RGB pixels (3 bytes each, row-major) into rgb.
//  0, or -1 with a reason in error.
int julia_cuda_render (julia_params_t params, unsigned char *rgb,
                       char *error, size_t error_size);

#ifdef __cplusplus
}
#endif

#endif
