/*  =========================================================================
    kiln_manifest — an app's manifest, in C and in JSON

    The manifest is what kiln knows of an app without loading it: the
    descriptor's fields (include/kiln/app.h) with defaults applied. The
    CLI makes it (kiln-runner --describe prints it), the gateway validates
    and stores it with the app, the broker scales by it.

        {"name": "echo", "machine_types": ["CPU"], "keep_alive": 300,
         "min_concurrency": 0, "max_concurrency": 2,
         "concurrency_buffer": 0, "max_multiplexing": 1,
         "request_timeout": 3600, "startup_timeout": 600,
         "endpoints": ["/", "/echo"], "kind": "native", "requirements": []}

    kind says what the artifact is: "native" (a .so, the default when the
    JSON has none) or "python" (a bundle, see docs/PROCESS_APPS.md).
    requirements are pip specs of a Python app (none for a native one).
    app_auth says who may call the app (docs/SECURITY.md): "private" (the
    default: keys of the app's owner, and the operator's), "shared" (any
    valid key) or "public" (anyone, even without a key).
    max_queue_length (fal's fal_max_queue_length, accepted too) bounds the
    app's queue: a submit past it is 429 queue_full (0, the default and
    absent from the JSON: unbounded).
    =========================================================================
*/
#ifndef KILN_MANIFEST_H_INCLUDED
#define KILN_MANIFEST_H_INCLUDED

#include <kiln/app.h>
#include <stdbool.h>
#include <stddef.h>

#define KILN_MANIFEST_MAX_MACHINE_TYPES 16
#define KILN_MANIFEST_MAX_ENDPOINTS 256
#define KILN_MANIFEST_MAX_REQUIREMENTS 256

#define KILN_MANIFEST_KIND_NATIVE "native"
#define KILN_MANIFEST_KIND_PYTHON "python"
#define KILN_MANIFEST_AUTH_PRIVATE "private"
#define KILN_MANIFEST_AUTH_SHARED "shared"
#define KILN_MANIFEST_AUTH_PUBLIC "public"

typedef struct {
    char *name;
    char **machine_types;   size_t machine_type_count;  //  at least one
    int keep_alive;
    int min_concurrency;
    int max_concurrency;
    int concurrency_buffer;
    int max_multiplexing;
    int request_timeout;
    int startup_timeout;
    char **endpoints;       size_t endpoint_count;      //  at least one
    char *kind;                                         //  "native" or "python"
    char **requirements;    size_t requirement_count;   //  may be none
    char *app_auth;                                     //  "private", "shared" or "public"
    int max_queue_length;                               //  0: unbounded
} kiln_manifest_t;

//  From an app's descriptor, with defaults for zero fields. NULL and
//  *error (static string) when the descriptor is invalid.
kiln_manifest_t *kiln_manifest_from_app (const kiln_app_t *app, const char **error);

//  Parses and validates JSON (defaults for missing fields). NULL and
//  *error (malloc'd, caller frees) when invalid: names the bad field.
kiln_manifest_t *kiln_manifest_from_json (const char *json, size_t size, char **error);

//  Compact JSON, malloc'd (caller frees).
char *kiln_manifest_to_json (const kiln_manifest_t *self);

//  True if the manifest offers this machine type.
bool kiln_manifest_has_machine_type (const kiln_manifest_t *self, const char *machine_type);

void kiln_manifest_destroy (kiln_manifest_t **self_p);

void kiln_manifest_test (bool verbose);

#endif
