/*  =========================================================================
    gpu — what a worker can offer: its GPUs and its slots

    A worker offers *slots*, each of one machine type ("CPU", "GPU-H100",
    ...). GPU slots come from the CUDA runtime, one per device; CPU slots
    from the number of cores. `--slots GPU-H100=2,CPU=4` declares them
    instead (tests, or a machine whose GPUs are reserved for something
    else).

    The mapping from a device name to a machine type is a pure function so
    that it can be tested without a GPU.
    =========================================================================
*/
#ifndef KILN_GPU_H_INCLUDED
#define KILN_GPU_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

//  Longest machine type we make or accept, NUL included.
#define KILN_MACHINE_TYPE_MAX 64

//  Most slot kinds a worker declares, and most GPUs it drives.
#define KILN_GPU_MAX_SLOT_KINDS 16
#define KILN_GPU_MAX_DEVICES 64

//  Fewest CPU slots a worker offers by default, whatever its core count:
//  a CPU runner mostly waits, and a small host should still keep the
//  example apps of `kiln up` warm side by side.
#define KILN_GPU_MIN_CPU_SLOTS 4

typedef struct {
    char machine_type [KILN_MACHINE_TYPE_MAX];
    unsigned count;
} kiln_slot_kind_t;

typedef struct {
    int index;                      //  CUDA device index (CUDA_VISIBLE_DEVICES)
    char machine_type [KILN_MACHINE_TYPE_MAX];
    char name [256];                //  the runtime's device name
    size_t memory_bytes;
} kiln_gpu_device_t;

//  Maps a CUDA device name ("NVIDIA H100 80GB HBM3") to a machine type
//  ("GPU-H100") into out. Known models by exact token; else "GPU-" and
//  the first model token (one holding a digit) uppercased; else
//  "GPU-UNKNOWN".
void kiln_gpu_machine_type (const char *device_name, char out [KILN_MACHINE_TYPE_MAX]);

//  Parses "GPU-H100=2,CPU=4" into kinds (at most max). Returns how many
//  kinds, or -1 when malformed (then *error, static, says why). A type
//  named twice is refused; a count of 0 is allowed (offers nothing).
int kiln_gpu_parse_slots (const char *spec, kiln_slot_kind_t *kinds, size_t max,
                          const char **error);

//  True when a machine type is well formed: "CPU" or "GPU-" and
//  [A-Z0-9_-], shorter than KILN_MACHINE_TYPE_MAX.
bool kiln_gpu_machine_type_valid (const char *machine_type);

//  Asks the CUDA runtime for the devices (none when built without CUDA),
//  logging each, or why there is none. Returns how many were written to
//  devices (at most max).
size_t kiln_gpu_detect (kiln_gpu_device_t *devices, size_t max);

//  Default CPU slots: max (KILN_GPU_MIN_CPU_SLOTS, online cores).
unsigned kiln_gpu_default_cpu_slots (void);

void kiln_gpu_test (bool verbose);

#endif
