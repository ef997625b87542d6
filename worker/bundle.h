/*  =========================================================================
    bundle — a process app's artifact: an uncompressed POSIX ustar archive

    `kiln deploy file.py::Class` uploads a tar of the app's file plus a
    kiln.json ({"kind": "python", "entry": "hello.py", "class": "Hello",
    "manifest": {...}}). The worker unpacks it once per SHA-256 into a
    directory and hands the runner that directory. Only regular files with
    plain names (no '/', not "." or "..") are taken: v1 bundles are flat.
    =========================================================================
*/
#ifndef KILN_BUNDLE_H_INCLUDED
#define KILN_BUNDLE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  What a bundle's description file is called.
#define KILN_BUNDLE_DESCRIPTION "kiln.json"

//  True if the bytes start like a ustar archive (magic at offset 257).
bool kiln_bundle_is_tar (const uint8_t *data, size_t size);

//  Unpacks the archive into dest, atomically: into a temporary directory
//  next to it first, renamed to dest at the end. A dest that exists is
//  taken as done (another runner unpacked it). 0, or -1 with *error
//  (caller frees).
int kiln_bundle_unpack (const uint8_t *data, size_t size, const char *dest, char **error);

void kiln_bundle_test (bool verbose);

#endif
