/*  =========================================================================
    fuzz_json — the JSON bodies (and the webhook URL) the gateway reads

    Input: byte 0 picks what the rest is (mod 9):

    | 0 | a submit body with a JSON content type: it must be JSON       |
    |   | (json_loadb, JSON_DECODE_ANY | JSON_ALLOW_NUL, as gateway.c) |
    | 1 | POST /v1/apps {name, artifact, manifest}: kiln_input_deploy   |
    |   | and kiln_input_deploy_owner (the owner the access check sees) |
    | 2 | POST /v1/apps/{app}/rollback {revision}: kiln_input_rollback  |
    | 3 | PATCH /v1/apps/{app} scale body: kiln_input_scale_patch       |
    | 4 | ?fal_webhook=URL: kiln_input_webhook_invalid                  |
    | 5 | Content-Type and ?logs=: kiln_input_is_json_type, _flag       |
    | 6 | X-Fal-Request-Timeout and X-Fal-No-Retry values               |
    | 7 | a stored file's name: kiln_input_safe_file_name               |
    | 8 | POST /v1/keys {scope, owner?}: kiln_input_key_request         |

    What the gateway accepts must survive being written out and read
    back (a body the gateway stores, a manifest it canonicalises), a
    deploy it accepts must name a valid app and artifact, whose owner is
    the one the access check was given (and a body whose owner the check
    cannot tell is never deployed), a rollback it accepts names the
    body's revision, a whole number from 1, a scale patch
    it accepts gives the SCALE script only "", "-" or a number in range,
    and a key it makes has a valid scope and owner. A body it refuses
    gets a status it documents and a detail.

    Every parser but the submit body's is gateway/inputs.c's, the very
    function the gateway calls (the submit body is jansson's own).
    =========================================================================
*/
#include "fuzz.h"
#include "access.h"
#include "inputs.h"
#include "route.h"
#include "kiln_auth.h"
#include "kiln_keys.h"
#include "kiln_manifest.h"

#include <event2/http.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
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

//  A refusal: a status the route documents and a detail to answer with
static void
s_refused (int status, const char *why)
{
    FUZZ_CHECK (status == 400 || status == 422 || status == 500);
    FUZZ_CHECK (memchr (why, 0, KILN_INPUT_WHY_MAX) && *why);
}

static void
s_deploy_body (const char *body, size_t size)
{
    kiln_input_deploy_t deploy;
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_deploy (body, size, &deploy, why);
    //  gateway_auth.c checks the caller's key against this owner before
    //  the deploy runs; "" means "nothing to check"
    char owner [KILN_NAME_MAX + 1];
    memset (owner, 'x', sizeof owner);
    kiln_input_deploy_owner (body, size, owner);
    FUZZ_CHECK (memchr (owner, 0, sizeof owner));
    FUZZ_CHECK (!*owner || kiln_name_part_valid (owner, strlen (owner)));
    if (status) {
        s_refused (status, why);
        FUZZ_CHECK (deploy.manifest == NULL);
        return;
    }
    //  Deployed: its owner is the one that was checked, never unchecked
    const char *name = deploy.name;
    const char *slash = strchr (name, '/');
    FUZZ_CHECK (*owner && slash && strlen (owner) == (size_t) (slash - name)
             && memcmp (owner, name, strlen (owner)) == 0);
    //  What the keys are built from: owner/app, both parts valid
    FUZZ_CHECK (kiln_app_name_valid (name)
             && !kiln_route_owner_reserved (name, strcspn (name, "/")));
    FUZZ_CHECK (slash && kiln_name_part_valid (name, (size_t) (slash - name)));
    FUZZ_CHECK (kiln_name_part_valid (slash + 1, strlen (slash + 1)));
    FUZZ_CHECK (strlen (name) <= 2 * KILN_NAME_MAX + 1);
    FUZZ_CHECK (strlen (deploy.artifact) == 64 && kiln_route_sha256_valid (deploy.artifact));
    //  The canonical form is what the gateway stores: it must parse, and
    //  canonicalise to itself
    FUZZ_CHECK (deploy.manifest);
    kiln_manifest_t *stored = kiln_manifest_from_json (deploy.manifest,
                                                       strlen (deploy.manifest), NULL);
    FUZZ_CHECK (stored);
    char *again = kiln_manifest_to_json (stored);
    FUZZ_CHECK (again && strcmp (again, deploy.manifest) == 0);
    free (again);
    kiln_manifest_destroy (&stored);
    free (deploy.manifest);
}

//  Taken exactly when the body is a JSON object whose revision is a
//  whole number from 1; the script gets that number.
static void
s_rollback_body (const char *body, size_t size)
{
    int64_t revision = -1;
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_rollback (body, size, &revision, why);
    json_t *request = json_loadb (body, size, 0, NULL);
    json_t *value = json_object_get (request, "revision");
    bool good = json_is_object (request) && json_is_integer (value)
             && json_integer_value (value) >= 1;
    if (status) {
        FUZZ_CHECK (status == 422 && !good && revision == 0);
        s_refused (status, why);
    }
    else {
        FUZZ_CHECK (good && revision >= 1 && revision == json_integer_value (value));
        FUZZ_CHECK (why [0] == 0);
    }
    json_decref (request);
}

static void
s_scale_body (const char *body, size_t size)
{
    char values [KILN_INPUT_SCALE_FIELD_COUNT][24];
    bool reset;
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_scale_patch (body, size, values, &reset, why);
    if (status) {
        FUZZ_CHECK (status == 422);
        s_refused (status, why);
        return;
    }
    //  The script's arguments: "" (not given), "-" (drop) or 0..INT_MAX,
    //  and something to do
    bool changes = reset;
    for (int i = 0; i < KILN_INPUT_SCALE_FIELD_COUNT; i++) {
        const char *value = values [i];
        if (!*value || strcmp (value, "-") == 0) {
            changes |= *value != 0;
            continue;
        }
        FUZZ_CHECK (strspn (value, "0123456789") == strlen (value));
        char *end = NULL;
        long long number = strtoll (value, &end, 10);
        FUZZ_CHECK (*end == 0 && number >= 0 && number <= INT_MAX);
        if (i == 1)
            FUZZ_CHECK (number >= 1);       //  max_concurrency
        changes = true;
    }
    FUZZ_CHECK (changes);
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

//  Whoever calls: no key (keys off), an owner's key, the operator's
static void
s_keys_body (const char *body, size_t size)
{
    const char *callers [] = { NULL, "alice", KILN_OWNER_ANY };
    for (size_t i = 0; i < sizeof callers / sizeof callers [0]; i++) {
        char scope [16];
        char owner [KILN_NAME_MAX + 1];
        char why [KILN_INPUT_WHY_MAX];
        int status = kiln_input_key_request (body, size, callers [i], scope, owner, why);
        if (status) {
            FUZZ_CHECK (status == 400);
            s_refused (status, why);
            continue;
        }
        FUZZ_CHECK (kiln_auth_scope_valid (scope));
        if (strcmp (owner, KILN_OWNER_ANY) == 0)
            FUZZ_CHECK (strcmp (scope, KILN_SCOPE_ADMIN) == 0);
        else
            FUZZ_CHECK (kiln_name_part_valid (owner, strlen (owner))
                     && !kiln_route_owner_reserved (owner, strlen (owner)));
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int selector = data [0] % 9;
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
        case 7: s_file_name (body, body_size); break;
        default: s_keys_body (body, body_size); break;
    }
    free (body);
    return 0;
}
