/*  =========================================================================
    julia — a GPU app in miniature: turns a prompt into a picture

        POST /local/julia   {"prompt": "a red fox", "width": 512, "height": 512}
        →  {"image": {"url": "http://…/files/…", "content_type": "image/png",
                      "file_name": "julia.png", "file_size": 48213,
                      "width": 512, "height": 512},
            "device": "cuda"}

    The prompt's hash picks the Julia set's constant and palette, so the
    same prompt always gives the same image. setup() looks for a CUDA
    device once, as a model would load its weights: with one, a kernel
    (julia_kernel.cu) renders; without, the same algorithm runs on the
    CPU. The PNG goes to kiln_request_store_file and the answer has the
    shape of fal's Image, so fal clients display it as they would any
    fal model's output.

    machine_types lists GPUs first and CPU last: kiln places the runner
    on the first type some worker offers.
    =========================================================================
*/
#include <kiln/app.h>
#include "julia.h"

#include <jansson.h>
#include <png.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_SIDE 512
#define MIN_SIDE 16
#define MAX_SIDE 2048

typedef struct {
    bool cuda;                      //  render with the kernel
} s_state_t;

static void *
s_setup (void)
{
    s_state_t *state = calloc (1, sizeof (s_state_t));
    if (!state) {
        kiln_setup_fail ("out of memory");
        return NULL;
    }
#ifdef KILN_HAVE_CUDA
    char reason [256] = "";
    if (julia_cuda_device_count (reason, sizeof (reason)) > 0) {
        char name [256];
        julia_cuda_device_name (name, sizeof (name));
        fprintf (stderr, "julia: rendering on CUDA device 0 (%s)\n", name);
        state->cuda = true;
    }
    else
        fprintf (stderr, "julia: no CUDA device (%s); rendering on the CPU\n", reason);
#else
    fprintf (stderr, "julia: built without CUDA; rendering on the CPU\n");
#endif
    return state;
}

static void
s_teardown (void *state)
{
    free (state);
}

//  FNV-1a: small, stable across builds, good enough to spread prompts.
static uint64_t
s_hash (const char *text)
{
    uint64_t hash = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *) text; *p; p++) {
        hash ^= *p;
        hash *= 1099511628211ULL;
    }
    return hash;
}

//  c on a circle of radius just under 0.7885 gives connected, detailed sets for
//  most angles; the hash picks the angle, a nudge of the radius and the
//  palette.
static julia_params_t
s_params (const char *prompt, int width, int height)
{
    uint64_t hash = s_hash (prompt);
    float angle = (float) (hash & 0xFFFFFFFFu) / 4294967296.0f * JULIA_TWO_PI;
    float radius = 0.7735f + (float) ((hash >> 32) & 0xFFFF) / 65536.0f * 0.015f;
    julia_params_t params = {
        .width = width,
        .height = height,
        .c_re = radius * cosf (angle),
        .c_im = radius * sinf (angle),
        .phase = (float) ((hash >> 48) & 0xFFFF) / 65536.0f,
    };
    return params;
}

static void
s_render_cpu (julia_params_t params, unsigned char *rgb)
{
    for (int y = 0; y < params.height; y++)
        for (int x = 0; x < params.width; x++)
            julia_pixel (params, x, y, rgb + 3 * ((size_t) y * params.width + x));
}

//  ---------------------------------------------------------------------
//  PNG in memory: libpng writes through our callback into a buffer.

typedef struct {
    unsigned char *data;
    size_t size;
    size_t alloc;
} s_buffer_t;

static void
s_png_write (png_structp png, png_bytep data, png_size_t size)
{
    s_buffer_t *buffer = (s_buffer_t *) png_get_io_ptr (png);
    if (buffer->size + size > buffer->alloc) {
        size_t alloc = buffer->alloc? buffer->alloc * 2: 65536;
        while (alloc < buffer->size + size)
            alloc *= 2;
        unsigned char *grown = realloc (buffer->data, alloc);
        if (!grown)
            png_error (png, "out of memory");
        buffer->data = grown;
        buffer->alloc = alloc;
    }
    memcpy (buffer->data + buffer->size, data, size);
    buffer->size += size;
}

static void
s_png_flush (png_structp png)
{
    (void) png;
}

//  Encodes RGB pixels; returns the PNG (caller frees) or NULL.
static unsigned char *
s_encode_png (const unsigned char *rgb, int width, int height, size_t *size)
{
    //  Everything that outlives a longjmp is set up before setjmp.
    png_bytep *rows = malloc ((size_t) height * sizeof (png_bytep));
    s_buffer_t *buffer = calloc (1, sizeof (s_buffer_t));
    png_structp png = png_create_write_struct (PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png? png_create_info_struct (png): NULL;
    if (!rows || !buffer || !png || !info) {
        png_destroy_write_struct (&png, &info);
        free (rows);
        free (buffer);
        return NULL;
    }
    for (int y = 0; y < height; y++)
        rows [y] = (png_bytep) rgb + (size_t) y * width * 3;

    if (setjmp (png_jmpbuf (png))) {
        png_destroy_write_struct (&png, &info);
        free (rows);
        free (buffer->data);
        free (buffer);
        return NULL;
    }
    png_set_write_fn (png, buffer, s_png_write, s_png_flush);
    png_set_IHDR (png, info, (png_uint_32) width, (png_uint_32) height, 8, PNG_COLOR_TYPE_RGB,
                  PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_rows (png, info, rows);
    png_write_png (png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct (&png, &info);

    unsigned char *data = buffer->data;
    *size = buffer->size;
    free (rows);
    free (buffer);
    return data;
}

//  ---------------------------------------------------------------------

//  Reads an optional side length; false when present and not valid.
static bool
s_side (json_t *input, const char *name, int *side)
{
    json_t *value = json_object_get (input, name);
    *side = DEFAULT_SIDE;
    if (!value)
        return true;
    if (!json_is_integer (value)
    ||  json_integer_value (value) < MIN_SIDE || json_integer_value (value) > MAX_SIDE)
        return false;
    *side = (int) json_integer_value (value);
    return true;
}

static int
s_generate (void *arg, kiln_request_t *req, kiln_response_t *resp)
{
    s_state_t *state = (s_state_t *) arg;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    json_t *input = size? json_loadb (body, size, 0, NULL): json_object ();
    if (!json_is_object (input)) {
        json_decref (input);
        return kiln_response_set_error (resp, 422, "bad_request",
                                        "expected a JSON object: {\"prompt\", \"width\", \"height\"}");
    }
    json_t *prompt_json = json_object_get (input, "prompt");
    if (prompt_json && !json_is_string (prompt_json)) {
        json_decref (input);
        return kiln_response_set_error (resp, 422, "bad_request", "prompt must be a string");
    }
    int width, height;
    if (!s_side (input, "width", &width) || !s_side (input, "height", &height)) {
        json_decref (input);
        return kiln_response_set_error (resp, 422, "bad_request",
                                        "width and height must be integers from 16 to 2048");
    }
    julia_params_t params = s_params (prompt_json? json_string_value (prompt_json): "", width, height);
    json_decref (input);

    unsigned char *rgb = malloc ((size_t) width * height * 3);
    if (!rgb)
        return -1;
    struct timespec started, finished;
    clock_gettime (CLOCK_MONOTONIC, &started);
    const char *device = "cpu";
#ifdef KILN_HAVE_CUDA
    if (state->cuda) {
        char error [256];
        if (julia_cuda_render (params, rgb, error, sizeof (error)) == 0)
            device = "cuda";
        else
            kiln_request_log (req, KILN_LOG_WARN, "CUDA render failed (%s); using the CPU", error);
    }
#else
    (void) state;
#endif
    if (strcmp (device, "cpu") == 0)
        s_render_cpu (params, rgb);
    clock_gettime (CLOCK_MONOTONIC, &finished);
    long render_ms = (finished.tv_sec - started.tv_sec) * 1000
                   + (finished.tv_nsec - started.tv_nsec) / 1000000;
    kiln_request_log (req, KILN_LOG_INFO, "rendered %dx%d on %s in %ld ms",
                      width, height, device, render_ms);

    size_t png_size = 0;
    unsigned char *png = s_encode_png (rgb, width, height, &png_size);
    free (rgb);
    if (!png)
        return -1;
    const char *url = kiln_request_store_file (req, png, png_size, "image/png", "julia.png");
    free (png);
    if (!url)
        return -1;

    json_t *answer = json_pack ("{s:{s:s, s:s, s:s, s:I, s:i, s:i}, s:s}",
                                "image",
                                    "url", url,
                                    "content_type", "image/png",
                                    "file_name", "julia.png",
                                    "file_size", (json_int_t) png_size,
                                    "width", width,
                                    "height", height,
                                "device", device);
    char *text = answer? json_dumps (answer, JSON_COMPACT): NULL;
    json_decref (answer);
    if (!text)
        return -1;
    int rc = kiln_response_set_json (resp, text);
    free (text);
    return rc;
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_generate },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "julia",
    .machine_types   = KILN_MACHINE_TYPES ("GPU-H200", "GPU-H100", "GPU-A100", "CPU"),
    .max_concurrency = 2,
    .setup           = s_setup,
    .teardown        = s_teardown,
    .endpoints       = s_endpoints,
};
