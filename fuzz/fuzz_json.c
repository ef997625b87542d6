/*  =========================================================================
    fuzz_json — the JSON bodies (and the webhook URL) the gateway reads

    Input: byte 0 picks what the rest is (mod 5):

    | 0 | a submit body with a JSON content type: it must be JSON       |
    |   | (json_loadb, JSON_DECODE_ANY | JSON_ALLOW_NUL, as gateway.c) |
    | 1 | POST /v1/apps {name, artifact, manifest}: the checks of       |
    |   | gateway_v1.c's deploy, with the same libkiln functions        |
    | 2 | POST /v1/apps/{app}/rollback {revision}                      |
    | 3 | PATCH /v1/apps/{app} scale body, parsed as gateway_v1.c does  |
    | 4 | ?fal_webhook=URL, parsed as gateway.c does (evhttp, strict)   |

    What the gateway accepts must survive being written out and read
    back (a body the gateway stores, a manifest it canonicalises), and a
    deploy it accepts must name a valid app and artifact.

    The gateway's own validators are static in its files, so they are
    not reached here yet: s_scale_patch (gateway_v1.c), s_webhook_invalid,
    s_start_deadline, s_no_retry, s_is_json_type, s_safe_file_name
    (gateway.c), s_flag (gateway_queue.c). Once they move into a pure
    module (as route.c is), each gets a selector here.
    =========================================================================
*/
#include "fuzz.h"
#include "route.h"
#include "kiln_keys.h"
#include "kiln_manifest.h"

#include <event2/http.h>
#include <jansson.h>
#include <string.h>

//  A value that loaded must dump and load back equal.
static void
s_round_trip (json_t *value, size_t load_flags)
{
    char *text = json_dumps (value, JSON_ENCODE_ANY | JSON_COMPACT);
    FUZZ_CHECK (text);
    json_error_t error;
    json_t *again = json_loads (text, load_flags, &error);
    if (!again)
        fprintf (stderr, "dumped JSON does not load: %s: %s\n", error.text, text);
    FUZZ_CHECK (again && json_equal (value, again));
    json_decref (again);
    free (text);
}

static void
s_submit_body (const char *body, size_t size)
{
    json_t *json = json_loadb (body, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (json)
        s_round_trip (json, JSON_DECODE_ANY | JSON_ALLOW_NUL);
    json_decref (json);
}

static void
s_deploy_body (const char *body, size_t size)
{
    json_t *request = json_loadb (body, size, 0, NULL);
    if (!json_is_object (request)) {
        json_decref (request);
        return;
    }
    const char *name = json_string_value (json_object_get (request, "name"));
    const char *artifact = json_string_value (json_object_get (request, "artifact"));
    json_t *manifest = json_object_get (request, "manifest");
    char *manifest_text = NULL;
    if (json_is_string (manifest))
        manifest_text = strdup (json_string_value (manifest));
    else
    if (json_is_object (manifest))
        manifest_text = json_dumps (manifest, JSON_COMPACT);
    bool name_ok = name && kiln_app_name_valid (name)
                && !kiln_route_owner_reserved (name, strcspn (name, "/"));
    bool artifact_ok = artifact && kiln_route_sha256_valid (artifact);
    if (name_ok) {
        //  What the keys are built from: owner/app, both parts valid
        const char *slash = strchr (name, '/');
        FUZZ_CHECK (slash && kiln_name_part_valid (name, (size_t) (slash - name)));
        FUZZ_CHECK (kiln_name_part_valid (slash + 1, strlen (slash + 1)));
        FUZZ_CHECK (strlen (name) <= 2 * KILN_NAME_MAX + 1);
    }
    if (artifact_ok)
        FUZZ_CHECK (strlen (artifact) == 64);
    if (manifest_text) {
        char *reason = NULL;
        kiln_manifest_t *parsed = kiln_manifest_from_json (manifest_text, strlen (manifest_text),
                                                           &reason);
        FUZZ_CHECK (parsed || (reason && *reason));
        if (parsed) {
            //  The canonical form is what the gateway stores: it must parse
            char *canonical = kiln_manifest_to_json (parsed);
            FUZZ_CHECK (canonical);
            kiln_manifest_t *stored = kiln_manifest_from_json (canonical, strlen (canonical), NULL);
            FUZZ_CHECK (stored);
            kiln_manifest_destroy (&stored);
            free (canonical);
        }
        kiln_manifest_destroy (&parsed);
        free (reason);
    }
    free (manifest_text);
    json_decref (request);
}

static void
s_rollback_body (const char *body, size_t size)
{
    json_t *request = json_loadb (body, size, 0, NULL);
    json_t *revision = json_object_get (request, "revision");
    if (json_is_integer (revision) && json_integer_value (revision) >= 1)
        FUZZ_CHECK (json_is_object (request));
    json_decref (request);
}

static void
s_scale_body (const char *body, size_t size)
{
    json_error_t error;
    json_t *patch = json_loadb (body, size, JSON_REJECT_DUPLICATES, &error);
    if (!patch) {
        //  The 422's detail quotes error.text: it must be a C string
        FUZZ_CHECK (memchr (error.text, 0, sizeof error.text));
        return;
    }
    const char *key;
    json_t *value;
    json_object_foreach (patch, key, value)
        FUZZ_CHECK (key && value);
    s_round_trip (patch, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY);
    json_decref (patch);
}

static void
s_webhook (const char *data, size_t size)
{
    char *url = fuzz_string ((const uint8_t *) data, size);
    if (!url)
        return;
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags (url, 0);
    if (uri) {
        const char *scheme = evhttp_uri_get_scheme (uri);
        const char *host = evhttp_uri_get_host (uri);
        if (scheme)
            FUZZ_CHECK (strlen (scheme) <= size);
        if (host)
            FUZZ_CHECK (strlen (host) <= size);
        //  What the deliverer is given back must parse again
        char joined [8192];
        if (size < sizeof joined / 2 && evhttp_uri_join (uri, joined, sizeof joined)) {
            struct evhttp_uri *again = evhttp_uri_parse_with_flags (joined, 0);
            FUZZ_CHECK (again);
            evhttp_uri_free (again);
        }
        evhttp_uri_free (uri);
    }
    free (url);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int selector = data [0] % 5;
    //  An exact-size copy, so a read past the body's end is caught
    size_t body_size = size - 1;
    char *body = malloc (body_size ? body_size : 1);
    if (!body)
        return 0;
    memcpy (body, data + 1, body_size);
    switch (selector) {
        case 0: s_submit_body (body, body_size); break;
        case 1: s_deploy_body (body, body_size); break;
        case 2: s_rollback_body (body, body_size); break;
        case 3: s_scale_body (body, body_size); break;
        default: s_webhook (body, body_size); break;
    }
    free (body);
    return 0;
}
