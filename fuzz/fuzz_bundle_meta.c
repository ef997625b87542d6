/*  =========================================================================
    fuzz_bundle_meta — a bundle's kiln.json (worker/bundle.c,
    kiln_bundle_meta_parse), which the runner reads to start a process app

    Input: the file's text, as a client uploaded it in its bundle.

    Either it is refused with a reason and nothing is kept, or it gives
    exactly what the JSON says: kind "python"; the entry, a name the
    unpacker would make (no '/', not "." or "..", no control character),
    so dir/entry stays in the bundle; a non-empty class; and a valid
    manifest, whose JSON parses back to a manifest with the same JSON.
    The same text gives the same answer twice.
    =========================================================================
*/
#include "fuzz.h"
#include "bundle.h"

#include <jansson.h>
#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  An exact-size copy, so a read past the text's end is caught
    char *text = malloc (size ? size : 1);
    if (!text)
        return 0;
    memcpy (text, data, size);
    kiln_bundle_meta_t meta;
    memset (&meta, 0xA5, sizeof meta);
    char *error = (char *) "not set";
    int rc = kiln_bundle_meta_parse (text, size, &meta, &error);
    FUZZ_CHECK (rc == 0 || rc == -1);
    if (rc == -1) {
        FUZZ_CHECK (error && *error);
        FUZZ_CHECK (!meta.entry && !meta.class_name && !meta.manifest);
        free (error);
        free (text);
        return 0;
    }
    FUZZ_CHECK (error == NULL);
    FUZZ_CHECK (meta.entry && fuzz_plain_name (meta.entry));
    FUZZ_CHECK (meta.class_name && *meta.class_name);
    FUZZ_CHECK (meta.manifest);

    //  Exactly what the JSON says
    json_t *root = json_loadb (text, size, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK (json_is_object (root));
    const char *kind = json_string_value (json_object_get (root, "kind"));
    const char *entry = json_string_value (json_object_get (root, "entry"));
    const char *class_name = json_string_value (json_object_get (root, "class"));
    FUZZ_CHECK (kind && strcmp (kind, "python") == 0);
    FUZZ_CHECK (entry && strcmp (entry, meta.entry) == 0);
    FUZZ_CHECK (class_name && strcmp (class_name, meta.class_name) == 0);
    FUZZ_CHECK (json_is_object (json_object_get (root, "manifest")));
    json_decref (root);

    //  The manifest the runner serves by is one the gateway would store
    char *manifest = kiln_manifest_to_json (meta.manifest);
    FUZZ_CHECK (manifest);
    kiln_manifest_t *again = kiln_manifest_from_json (manifest, strlen (manifest), NULL);
    FUZZ_CHECK (again);
    char *again_text = kiln_manifest_to_json (again);
    FUZZ_CHECK (again_text && strcmp (again_text, manifest) == 0);
    free (again_text);
    kiln_manifest_destroy (&again);

    //  No state: the same answer twice
    kiln_bundle_meta_t twice;
    char *twice_error = NULL;
    FUZZ_CHECK (kiln_bundle_meta_parse (text, size, &twice, &twice_error) == 0);
    FUZZ_CHECK (!twice_error && strcmp (twice.entry, meta.entry) == 0
             && strcmp (twice.class_name, meta.class_name) == 0);
    char *twice_manifest = kiln_manifest_to_json (twice.manifest);
    FUZZ_CHECK (twice_manifest && strcmp (twice_manifest, manifest) == 0);
    free (twice_manifest);
    kiln_bundle_meta_free (&twice);

    free (manifest);
    kiln_bundle_meta_free (&meta);
    FUZZ_CHECK (!meta.entry && !meta.class_name && !meta.manifest);
    free (text);
    return 0;
}
