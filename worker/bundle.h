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

#include "kiln_manifest.h"

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

//  What a bundle's kiln.json tells the runner.
typedef struct {
    char *entry;                    //  the app's file: a plain name in the bundle
    char *class_name;               //  the app's class in it
    kiln_manifest_t *manifest;      //  valid, as kiln_manifest_from_json checks it
} kiln_bundle_meta_t;

//  Reads a kiln.json's text (JSON, duplicate keys refused): kind
//  "python", entry a name the unpacker would take (no '/', not "." or
//  "..", no control character), class a non-empty string, manifest an
//  object that is a valid manifest. 0 and meta filled (free it with
//  kiln_bundle_meta_free), or -1 with *error (caller frees) and meta
//  all NULL.
int kiln_bundle_meta_parse (const char *text, size_t size, kiln_bundle_meta_t *meta,
                            char **error);

//  Frees what meta holds and NULLs it; meta itself is the caller's.
void kiln_bundle_meta_free (kiln_bundle_meta_t *meta);

void kiln_bundle_test (bool verbose);

#endif
