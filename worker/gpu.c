/*  =========================================================================
    gpu — what a worker can offer: its GPUs and its slots

    Device discovery goes through the CUDA runtime when kiln was built
    with the toolkit (KILN_HAVE_CUDA; cudart is linked statically so the
    worker runs on hosts with only the driver installed). Everything else
    here is pure and tested by kiln_gpu_test.
    =========================================================================
*/
#include "gpu.h"
#include "kiln_log.h"

#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef KILN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

//  Models we name ourselves; the brief's machine types. Anything else
//  gets its model token, so a new card still gets a stable type.
static const char *s_known_models [] = {
    "H200", "H100", "A100", "A10G", "L40S", "L4", "B200", NULL
};

//  Words in device names that never name the model.
static const char *s_vendor_words [] = {
    "NVIDIA", "TESLA", "GEFORCE", "QUADRO", NULL
};

#define TOKEN_MAX 32
#define TOKENS_MAX 16

static bool
s_in_list (const char *token, const char **list)
{
    for (; *list; list++)
        if (strcmp (token, *list) == 0)
            return true;
    return false;
}

static bool
s_has_digit (const char *s)
{
    for (; *s; s++)
        if (isdigit ((unsigned char) *s))
            return true;
    return false;
}

static bool
s_all_digits (const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit ((unsigned char) *s))
            return false;
    return true;
}

static bool
s_all_alpha (const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalpha ((unsigned char) *s))
            return false;
    return true;
}

//  Splits an uppercased name on anything that is not a letter or digit,
//  dropping vendor words. Over-long tokens are cut, which only matters
//  for names no GPU has.
static size_t
s_tokenize (const char *name, char tokens [TOKENS_MAX][TOKEN_MAX])
{
    size_t count = 0;
    const char *p = name;
    while (*p && count < TOKENS_MAX) {
        while (*p && !isalnum ((unsigned char) *p))
            p++;
        if (!*p)
            break;
        size_t len = 0;
        char token [TOKEN_MAX];
        while (*p && isalnum ((unsigned char) *p)) {
            if (len < TOKEN_MAX - 1)
                token [len++] = (char) toupper ((unsigned char) *p);
            p++;
        }
        token [len] = '\0';
        if (!s_in_list (token, s_vendor_words))
            memcpy (tokens [count++], token, len + 1);
    }
    return count;
}

void
kiln_gpu_machine_type (const char *device_name, char out [KILN_MACHINE_TYPE_MAX])
{
    char tokens [TOKENS_MAX][TOKEN_MAX];
    size_t count = s_tokenize (device_name? device_name: "", tokens);

    for (size_t i = 0; i < count; i++)
        if (s_in_list (tokens [i], s_known_models)) {
            snprintf (out, KILN_MACHINE_TYPE_MAX, "GPU-%.24s", tokens [i]);
            return;
        }
    //  "GeForce RTX 4090": a bare number reads better with its series.
    for (size_t i = 0; i < count; i++)
        if (s_has_digit (tokens [i])) {
            if (s_all_digits (tokens [i]) && i > 0 && s_all_alpha (tokens [i - 1]))
                snprintf (out, KILN_MACHINE_TYPE_MAX, "GPU-%.24s%.24s", tokens [i - 1], tokens [i]);
            else
                snprintf (out, KILN_MACHINE_TYPE_MAX, "GPU-%.24s", tokens [i]);
            return;
        }
    if (count > 0)
        snprintf (out, KILN_MACHINE_TYPE_MAX, "GPU-%.24s", tokens [0]);
    else
        snprintf (out, KILN_MACHINE_TYPE_MAX, "GPU-UNKNOWN");
}

bool
kiln_gpu_machine_type_valid (const char *machine_type)
{
    if (!machine_type)
        return false;
    size_t len = strlen (machine_type);
    if (len >= KILN_MACHINE_TYPE_MAX)
        return false;
    if (strcmp (machine_type, "CPU") == 0)
        return true;
    if (len < 5 || strncmp (machine_type, "GPU-", 4) != 0)
        return false;
    for (const char *p = machine_type + 4; *p; p++)
        if (!isupper ((unsigned char) *p) && !isdigit ((unsigned char) *p)
        &&  *p != '-' && *p != '_')
            return false;
    return true;
}

int
kiln_gpu_parse_slots (const char *spec, kiln_slot_kind_t *kinds, size_t max,
                      const char **error)
{
    const char *dummy;
    if (!error)
        error = &dummy;
    if (!spec || !*spec) {
        *error = "empty slot list";
        return -1;
    }
    size_t count = 0;
    const char *p = spec;
    while (true) {
        const char *end = strchr (p, ',');
        if (!end)
            end = p + strlen (p);
        const char *eq = memchr (p, '=', (size_t) (end - p));
        if (!eq) {
            *error = "a slot is not TYPE=COUNT";
            return -1;
        }
        size_t type_len = (size_t) (eq - p);
        if (type_len == 0 || type_len >= KILN_MACHINE_TYPE_MAX) {
            *error = "a machine type is empty or too long";
            return -1;
        }
        if (count == max) {
            *error = "too many slot kinds";
            return -1;
        }
        kiln_slot_kind_t *kind = &kinds [count];
        memcpy (kind->machine_type, p, type_len);
        kind->machine_type [type_len] = '\0';
        if (!kiln_gpu_machine_type_valid (kind->machine_type)) {
            *error = "a machine type is not CPU or GPU-<MODEL> (upper case)";
            return -1;
        }
        for (size_t i = 0; i < count; i++)
            if (strcmp (kinds [i].machine_type, kind->machine_type) == 0) {
                *error = "a machine type is named twice";
                return -1;
            }
        const char *digits = eq + 1;
        if (digits == end || end - digits > 4) {
            *error = "a slot count is not a number from 0 to 9999";
            return -1;
        }
        unsigned value = 0;
        for (const char *d = digits; d < end; d++) {
            if (!isdigit ((unsigned char) *d)) {
                *error = "a slot count is not a number from 0 to 9999";
                return -1;
            }
            value = value * 10 + (unsigned) (*d - '0');
        }
        kind->count = value;
        count++;
        if (!*end)
            break;
        p = end + 1;
    }
    return (int) count;
}

unsigned
kiln_gpu_default_cpu_slots (void)
{
    long cores = sysconf (_SC_NPROCESSORS_ONLN);
    if (cores < KILN_GPU_MIN_CPU_SLOTS)
        return KILN_GPU_MIN_CPU_SLOTS;
    return (unsigned) cores;
}

size_t
kiln_gpu_detect (kiln_gpu_device_t *devices, size_t max)
{
#ifdef KILN_HAVE_CUDA
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount (&count);
    if (rc != cudaSuccess || count <= 0) {
        kiln_log_info ("no GPU: %s; offering CPU slots only",
                       rc != cudaSuccess? cudaGetErrorString (rc): "the CUDA runtime sees no device");
        return 0;
    }
    size_t found = 0;
    for (int index = 0; index < count && found < max; index++) {
        struct cudaDeviceProp prop;
        rc = cudaGetDeviceProperties (&prop, index);
        if (rc != cudaSuccess) {
            kiln_log_warn ("GPU %d: cannot read its properties (%s); skipped",
                           index, cudaGetErrorString (rc));
            continue;
        }
        kiln_gpu_device_t *device = &devices [found++];
        device->index = index;
        snprintf (device->name, sizeof (device->name), "%s", prop.name);
        device->memory_bytes = prop.totalGlobalMem;
        kiln_gpu_machine_type (device->name, device->machine_type);
        kiln_log_info ("GPU %d: %s, %zu MiB, compute %d.%d → %s",
                       index, device->name, device->memory_bytes >> 20,
                       prop.major, prop.minor, device->machine_type);
    }
    return found;
#else
    (void) devices;
    (void) max;
    kiln_log_info ("no GPU: kiln was built without the CUDA toolkit; offering CPU slots only");
    return 0;
#endif
}

//  -------------------------------------------------------------------------
//  Selftest

static void
s_check_type (const char *name, const char *expected, bool verbose)
{
    char out [KILN_MACHINE_TYPE_MAX];
    kiln_gpu_machine_type (name, out);
    if (verbose)
        printf ("  '%s' → %s\n", name, out);
    if (strcmp (out, expected) != 0) {
        fprintf (stderr, "gpu: '%s' mapped to '%s', expected '%s'\n", name, out, expected);
        assert (false);
    }
    assert (kiln_gpu_machine_type_valid (out));
}

void
kiln_gpu_test (bool verbose)
{
    printf (" * gpu: ");
    if (verbose)
        printf ("\n");

    s_check_type ("NVIDIA H200", "GPU-H200", verbose);
    s_check_type ("NVIDIA H100 80GB HBM3", "GPU-H100", verbose);
    s_check_type ("NVIDIA H100 PCIe", "GPU-H100", verbose);
    s_check_type ("NVIDIA A100-SXM4-80GB", "GPU-A100", verbose);
    s_check_type ("NVIDIA A100 80GB PCIe", "GPU-A100", verbose);
    s_check_type ("NVIDIA A10G", "GPU-A10G", verbose);
    s_check_type ("NVIDIA L40S", "GPU-L40S", verbose);
    s_check_type ("NVIDIA L4", "GPU-L4", verbose);
    s_check_type ("NVIDIA B200", "GPU-B200", verbose);
    s_check_type ("Tesla T4", "GPU-T4", verbose);
    s_check_type ("NVIDIA GeForce RTX 4090", "GPU-RTX4090", verbose);
    s_check_type ("NVIDIA RTX A6000", "GPU-A6000", verbose);
    s_check_type ("NVIDIA GH200 480GB", "GPU-GH200", verbose);
    s_check_type ("nvidia l40", "GPU-L40", verbose);
    s_check_type ("Mystery", "GPU-MYSTERY", verbose);
    s_check_type ("NVIDIA", "GPU-UNKNOWN", verbose);
    s_check_type ("", "GPU-UNKNOWN", verbose);
    s_check_type (NULL, "GPU-UNKNOWN", verbose);

    assert (kiln_gpu_machine_type_valid ("CPU"));
    assert (kiln_gpu_machine_type_valid ("GPU-H100"));
    assert (!kiln_gpu_machine_type_valid ("GPU-"));
    assert (!kiln_gpu_machine_type_valid ("gpu-h100"));
    assert (!kiln_gpu_machine_type_valid ("TPU"));
    assert (!kiln_gpu_machine_type_valid ("GPU-H 100"));
    assert (!kiln_gpu_machine_type_valid (NULL));

    kiln_slot_kind_t kinds [4];
    const char *error = NULL;
    assert (kiln_gpu_parse_slots ("GPU-H100=2,CPU=4", kinds, 4, &error) == 2);
    assert (strcmp (kinds [0].machine_type, "GPU-H100") == 0 && kinds [0].count == 2);
    assert (strcmp (kinds [1].machine_type, "CPU") == 0 && kinds [1].count == 4);
    assert (kiln_gpu_parse_slots ("CPU=0", kinds, 4, &error) == 1);
    assert (kinds [0].count == 0);
    assert (kiln_gpu_parse_slots ("CPU=9999", kinds, 4, NULL) == 1);

    const char *bad [] = {
        "", "CPU", "CPU=", "=2", "CPU=x", "CPU=-1", "CPU=10000", "CPU=2,",
        ",CPU=2", "CPU=2,CPU=3", "cpu=2", "GPU-H100=2;CPU=1", "CPU==2",
        "A=1,B=1", "CPU=1,GPU-A=1,GPU-B=1,GPU-C=1,GPU-D=1", NULL
    };
    for (const char **spec = bad; *spec; spec++) {
        error = NULL;
        int rc = kiln_gpu_parse_slots (*spec, kinds, 4, &error);
        if (verbose)
            printf ("  '%s' → %d (%s)\n", *spec, rc, error? error: "");
        assert (rc == -1);
        assert (error);
    }
    assert (kiln_gpu_parse_slots (NULL, kinds, 4, &error) == -1);

    assert (kiln_gpu_default_cpu_slots () >= KILN_GPU_MIN_CPU_SLOTS);

    //  Runs the real discovery too: on a host without GPU it must say so
    //  and find none, never fail.
    kiln_gpu_device_t devices [KILN_GPU_MAX_DEVICES];
    size_t found = kiln_gpu_detect (devices, KILN_GPU_MAX_DEVICES);
    for (size_t i = 0; i < found; i++)
        assert (kiln_gpu_machine_type_valid (devices [i].machine_type));

    printf ("OK\n");
}
