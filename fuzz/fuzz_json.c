/*  =========================================================================
    fuzz_json — the JSON bodies (and the webhook URL) the gateway reads

    Input: byte 0 picks what the rest is (mod 8):

    | 0 | a submit body with a JSON content type: it must be JSON       |
    |   | (json_loadb, JSON_DECODE_ANY | JSON_ALLOW_NUL, as gateway.c) |
    | 1 | POST /v1/apps {name, artifact, manifest}: the checks of       |
    |   | gateway_v1.c's deploy, with the same libkiln functions        |
    | 2 | POST /v1/apps/{app}/rollback {revision}                      |
    | 3 | PATCH /v1/apps/{app} scale body, parsed as gateway_v1.c does  |
    | 4 | ?fal_webhook=URL: kiln_input_webhook_invalid (inputs.c)       |
    | 5 | Content-Type and ?logs=: kiln_input_is_json_type, _flag       |
    | 6 | X-Fal-Request-Timeout and X-Fal-No-Retry values               |
    | 7 | a stored file's name: kiln_input_safe_file_name               |

    What the gateway accepts must survive being written out and read
    back (a body the gateway stores, a manifest it canonicalises), and a
    deploy it accepts must name a valid app and artifact.

    The header and query parsers are gateway/inputs.c's, the very
    functions the gateway calls. Not reached yet: s_scale_patch
    (gateway_v1.c), static there.
    =========================================================================
*/
#include "fuzz.h"
#include "inputs.h"
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

//  What kiln_input_webhook_invalid accepts, the deliverer gets: an
//  http(s) URL with a host, within the cap, without spaces.
static void
s_webhook_check (const char *data, size_t size)
{
    char *url = fuzz_string ((const uint8_t *) data, size);
    if (!url)
        return;
    if (!kiln_input_webhook_invalid (url)) {
        FUZZ_CHECK (strlen (url) <= KILN_INPUT_WEBHOOK_URL_MAX);
        FUZZ_CHECK (!strpbrk (url, " \t\r\n"));
        struct evhttp_uri *uri = evhttp_uri_parse_with_flags (url, 0);
        FUZZ_CHECK (uri && evhttp_uri_get_host (uri) && *evhttp_uri_get_host (uri));
        evhttp_uri_free (uri);
    }
    free (url);
}

static void
s_flags (const char *data, size_t size)
{
    char *value = fuzz_string ((const uint8_t *) data, size);
    if (!value)
        return;
    //  Same answer twice (no state), and +json types end in "json"
    FUZZ_CHECK (kiln_input_is_json_type (value) == kiln_input_is_json_type (value));
    if (kiln_input_flag (value))
        FUZZ_CHECK (strcmp (value, "1") == 0 || strcmp (value, "true") == 0
                 || strcmp (value, "yes") == 0);
    free (value);
}

static void
s_headers (const char *data, size_t size)
{
    char *value = fuzz_string ((const uint8_t *) data, size);
    if (!value)
        return;
    int64_t now_ms = 1700000000000;
    int64_t deadline = kiln_input_start_deadline (value, now_ms);
    //  A deadline is after now, and within the year the gateway allows
    FUZZ_CHECK (deadline == -1
             || (deadline > now_ms
                 && deadline <= now_ms + (int64_t) KILN_INPUT_REQUEST_TIMEOUT_MAX_S * 1000));
    int no_retry = kiln_input_no_retry (value);
    FUZZ_CHECK (no_retry >= -1 && no_retry <= 1);
    free (value);
}

static void
s_file_name (const char *data, size_t size)
{
    char *name = fuzz_string ((const uint8_t *) data, size);
    if (!name)
        return;
    char safe [256];
    kiln_input_safe_file_name (name, safe, sizeof safe);
    //  Nothing that could end the quoted header value or the header
    for (const char *p = safe; *p; p++)
        FUZZ_CHECK ((unsigned char) *p >= 0x20 && (unsigned char) *p < 0x7f
                 && *p != '"' && *p != '\\' && *p != '/');
    FUZZ_CHECK (strlen (safe) < sizeof safe);
    free (name);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int selector = data [0] % 8;
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
        case 4: s_webhook (body, body_size); s_webhook_check (body, body_size); break;
        case 5: s_flags (body, body_size); break;
        case 6: s_headers (body, body_size); break;
        default: s_file_name (body, body_size); break;
    }
    free (body);
    return 0;
}
