/*  =========================================================================
    fuzz_manifest — the app manifest (shared/kiln_manifest.c)

    Input: manifest JSON as `POST /v1/apps` or a process app's describe
    frame brings it. kiln_manifest_from_json must refuse it with a
    message or give a manifest within every rule of kiln_manifest.h; that
    manifest's JSON must parse back to the same JSON, and its name and
    kind (and app_auth) must be exactly the strings the JSON held (not cut at a NUL).
    =========================================================================
*/
#include "fuzz.h"
#include "kiln_keys.h"
#include "kiln_manifest.h"

#include <jansson.h>
#include <string.h>

//  The manifest kept the JSON string member `key` whole (or took its
//  default when the member is absent).
static void
s_check_member (const char *input, size_t size, const char *key, const char *value)
{
    json_t *root = json_loadb (input, size, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK (json_is_object (root));
    json_t *member = json_object_get (root, key);
    if (member) {
        FUZZ_CHECK (json_is_string (member));
        FUZZ_CHECK (json_string_length (member) == strlen (value));
        FUZZ_CHECK (memcmp (json_string_value (member), value, strlen (value)) == 0);
    }
    json_decref (root);
}

static void
s_check_rules (const kiln_manifest_t *m)
{
    FUZZ_CHECK (m->name && kiln_name_part_valid (m->name, strlen (m->name)));
    FUZZ_CHECK (m->machine_type_count >= 1
             && m->machine_type_count <= KILN_MANIFEST_MAX_MACHINE_TYPES);
    FUZZ_CHECK (m->endpoint_count >= 1 && m->endpoint_count <= KILN_MANIFEST_MAX_ENDPOINTS);
    FUZZ_CHECK (m->requirement_count <= KILN_MANIFEST_MAX_REQUIREMENTS);
    for (size_t i = 0; i < m->machine_type_count; i++)
        FUZZ_CHECK (kiln_manifest_has_machine_type (m, m->machine_types [i]));
    for (size_t i = 0; i < m->endpoint_count; i++)
        FUZZ_CHECK (m->endpoints [i][0] == '/');
    FUZZ_CHECK (m->keep_alive >= 0 && m->min_concurrency >= 0 && m->concurrency_buffer >= 0);
    FUZZ_CHECK (m->max_concurrency >= 1 && m->min_concurrency <= m->max_concurrency);
    FUZZ_CHECK (m->max_multiplexing >= 1 && m->request_timeout >= 1 && m->startup_timeout >= 1);
    FUZZ_CHECK (m->kind && (strcmp (m->kind, KILN_MANIFEST_KIND_NATIVE) == 0
                         || strcmp (m->kind, KILN_MANIFEST_KIND_PYTHON) == 0));
    FUZZ_CHECK (m->requirement_count == 0 || strcmp (m->kind, KILN_MANIFEST_KIND_PYTHON) == 0);
    FUZZ_CHECK (m->app_auth && (strcmp (m->app_auth, KILN_MANIFEST_AUTH_PRIVATE) == 0
                             || strcmp (m->app_auth, KILN_MANIFEST_AUTH_SHARED) == 0
                             || strcmp (m->app_auth, KILN_MANIFEST_AUTH_PUBLIC) == 0));
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    const char *input = (const char *) data;
    char *error = NULL;
    kiln_manifest_t *manifest = kiln_manifest_from_json (input, size, &error);
    if (!manifest) {
        FUZZ_CHECK (error && *error);
        free (error);
        return 0;
    }
    FUZZ_CHECK (error == NULL);
    s_check_rules (manifest);
    s_check_member (input, size, "name", manifest->name);
    s_check_member (input, size, "kind", manifest->kind);
    s_check_member (input, size, "app_auth", manifest->app_auth);

    //  Emit, parse, emit: the same text
    char *first = kiln_manifest_to_json (manifest);
    FUZZ_CHECK (first);
    kiln_manifest_t *again = kiln_manifest_from_json (first, strlen (first), &error);
    if (!again)
        fprintf (stderr, "emitted manifest refused: %s\n%s\n", error, first);
    FUZZ_CHECK (again);
    char *second = kiln_manifest_to_json (again);
    FUZZ_CHECK (second && strcmp (first, second) == 0);

    free (first);
    free (second);
    kiln_manifest_destroy (&again);
    kiln_manifest_destroy (&manifest);
    return 0;
}
