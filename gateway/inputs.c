/*  =========================================================================
    inputs — the gateway's parsers of request headers and query values
    (see inputs.h)
    =========================================================================
*/
#include "inputs.h"
#include "access.h"
#include "route.h"
#include "kiln_auth.h"
#include "kiln_manifest.h"

#include <assert.h>
#include <ctype.h>
#include <event2/http.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool
kiln_input_is_json_type (const char *content_type)
{
    while (isspace ((unsigned char) *content_type))
        content_type++;
    size_t size = strcspn (content_type, ";");
    while (size > 0 && isspace ((unsigned char) content_type [size - 1]))
        size--;
    if (size == 16 && strncasecmp (content_type, "application/json", 16) == 0)
        return true;
    return size > 5 && strncasecmp (content_type + size - 5, "+json", 5) == 0;
}

const char *
kiln_input_webhook_invalid (const char *url)
{
    if (!*url)
        return "is empty";
    if (strlen (url) > KILN_INPUT_WEBHOOK_URL_MAX)
        return "is too long";
    for (const char *p = url; *p; p++)
        if ((unsigned char) *p <= ' ' || *p == 0x7f)
            return "holds a space or a control character";
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags (url, 0);
    if (!uri)
        return "is not a URL";
    const char *scheme = evhttp_uri_get_scheme (uri);
    const char *host = evhttp_uri_get_host (uri);
    const char *why = NULL;
    if (!scheme || (strcasecmp (scheme, "http") != 0 && strcasecmp (scheme, "https") != 0))
        why = "is not an http:// or https:// URL";
    else
    if (!host || !*host)
        why = "has no host";
    evhttp_uri_free (uri);
    return why;
}

int64_t
kiln_input_start_deadline (const char *value, int64_t now_ms)
{
    while (*value == ' ' || *value == '\t')
        value++;
    const char *p = value;
    size_t digits = 0;
    while (isdigit ((unsigned char) *p)) {
        p++;
        digits++;
    }
    if (*p == '.')
        for (p++; isdigit ((unsigned char) *p); p++)
            digits++;
    while (*p == ' ' || *p == '\t')
        p++;
    if (digits == 0 || *p)
        return -1;
    double seconds = strtod (value, NULL);
    if (!(seconds > 0) || seconds > KILN_INPUT_REQUEST_TIMEOUT_MAX_S)
        return -1;
    //  Rounded up: a timeout is never shorter than asked, and never 0
    double exact = seconds * 1000.0;
    int64_t ms = (int64_t) exact;
    if ((double) ms < exact)
        ms++;
    return now_ms + (ms > 0 ? ms : 1);
}

int
kiln_input_no_retry (const char *value)
{
    if (!value || !*value || strcmp (value, "0") == 0 || strcasecmp (value, "false") == 0)
        return 0;
    if (strcmp (value, "1") == 0 || strcasecmp (value, "true") == 0)
        return 1;
    return -1;
}

bool
kiln_input_flag (const char *value)
{
    return value && (strcmp (value, "1") == 0 || strcmp (value, "true") == 0
                  || strcmp (value, "yes") == 0);
}

void
kiln_input_safe_file_name (const char *name, char *out, size_t size)
{
    if (size == 0)
        return;
    size_t used = 0;
    for (const char *p = name; *p && used + 1 < size; p++) {
        unsigned char c = (unsigned char) *p;
        out [used++] = (c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '/') ? '_' : (char) c;
    }
    out [used] = 0;
}

const char *kiln_input_scale_fields [KILN_INPUT_SCALE_FIELD_COUNT + 1] = {
    "min_concurrency", "max_concurrency", "concurrency_buffer", "keep_alive", NULL
};

//  The patch, loaded: NULL when it is good, else why not (into why).
static const char *
s_scale_fields_of (json_t *patch, char values [KILN_INPUT_SCALE_FIELD_COUNT][24],
                   bool *reset, char *why, size_t why_size)
{
    if (!json_is_object (patch))
        return "Body must be a JSON object {min_concurrency?, max_concurrency?, "
               "concurrency_buffer?, keep_alive?, reset?}";
    const char *key;
    json_t *value;
    bool changes = false;
    json_object_foreach (patch, key, value) {
        if (strcmp (key, "reset") == 0) {
            if (!json_is_boolean (value))
                return "reset must be true or false";
            *reset = json_is_true (value);
            changes |= *reset;
            continue;
        }
        int index = 0;
        while (kiln_input_scale_fields [index]
           &&  strcmp (kiln_input_scale_fields [index], key) != 0)
            index++;
        if (!kiln_input_scale_fields [index]) {
            snprintf (why, why_size, "Unknown field '%.64s': the fields are min_concurrency, "
                      "max_concurrency, concurrency_buffer, keep_alive and reset", key);
            return why;
        }
        if (json_is_null (value))
            snprintf (values [index], sizeof values [index], "-");
        else
        if (!json_is_integer (value)
        ||  json_integer_value (value) < 0 || json_integer_value (value) > INT_MAX) {
            snprintf (why, why_size, "%s must be a whole number from 0 to %d (or null to "
                      "drop the override)", key, INT_MAX);
            return why;
        }
        else
        if (strcmp (key, "max_concurrency") == 0 && json_integer_value (value) < 1)
            return "max_concurrency must be at least 1";
        else
            snprintf (values [index], sizeof values [index], "%" JSON_INTEGER_FORMAT,
                      json_integer_value (value));
        changes = true;
    }
    if (!changes)
        return "Nothing to change: give min_concurrency, max_concurrency, "
               "concurrency_buffer, keep_alive or reset";
    return NULL;
}

int
kiln_input_scale_patch (const char *body, size_t size,
                        char values [KILN_INPUT_SCALE_FIELD_COUNT][24], bool *reset,
                        char why [KILN_INPUT_WHY_MAX])
{
    *reset = false;
    for (int i = 0; i < KILN_INPUT_SCALE_FIELD_COUNT; i++)
        values [i][0] = 0;
    why [0] = 0;
    json_error_t error;
    json_t *patch = json_loadb (body, size, JSON_REJECT_DUPLICATES, &error);
    const char *reason = why;
    if (!patch)
        snprintf (why, KILN_INPUT_WHY_MAX, "Body is not valid JSON: %s", error.text);
    else
        reason = s_scale_fields_of (patch, values, reset, why, KILN_INPUT_WHY_MAX);
    json_decref (patch);
    if (!reason)
        return 0;
    if (reason != why)
        snprintf (why, KILN_INPUT_WHY_MAX, "%s", reason);
    return 422;
}

int
kiln_input_deploy (const char *body, size_t size, kiln_input_deploy_t *deploy,
                   char why [KILN_INPUT_WHY_MAX])
{
    memset (deploy, 0, sizeof *deploy);
    why [0] = 0;
    json_error_t error;
    json_t *request = json_loadb (body, size, 0, &error);
    if (!json_is_object (request)) {
        json_decref (request);
        snprintf (why, KILN_INPUT_WHY_MAX,
                  "Body must be a JSON object {name, artifact, manifest}");
        return 400;
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

    int status = 0;
    if (!name || !kiln_app_name_valid (name)
    ||  kiln_route_owner_reserved (name, strcspn (name, "/"))) {
        snprintf (why, KILN_INPUT_WHY_MAX,
                  "name must be owner/app: each part 1-%d of [a-z0-9_-], starting "
                  "with a letter or digit; owners queue, v1, files, health and "
                  "metrics are reserved", KILN_NAME_MAX);
        status = 400;
    }
    else
    if (!artifact || !kiln_route_sha256_valid (artifact)) {
        snprintf (why, KILN_INPUT_WHY_MAX,
                  "artifact must be the artifact's SHA-256 in lower-case hex");
        status = 400;
    }
    else
    if (!manifest_text) {
        snprintf (why, KILN_INPUT_WHY_MAX, "manifest must be a JSON object");
        status = 422;
    }
    else {
        char *reason = NULL;
        kiln_manifest_t *parsed = kiln_manifest_from_json (manifest_text, strlen (manifest_text),
                                                           &reason);
        deploy->manifest = parsed ? kiln_manifest_to_json (parsed) : NULL;
        if (!parsed) {
            snprintf (why, KILN_INPUT_WHY_MAX, "Invalid manifest: %s",
                      reason ? reason : "not valid");
            status = 422;
        }
        else
        if (!deploy->manifest) {
            snprintf (why, KILN_INPUT_WHY_MAX, "Out of memory");
            status = 500;
        }
        else {
            //  Both fit: a valid name and a SHA-256 are bounded
            snprintf (deploy->name, sizeof deploy->name, "%s", name);
            snprintf (deploy->artifact, sizeof deploy->artifact, "%s", artifact);
        }
        free (reason);
        kiln_manifest_destroy (&parsed);
    }
    free (manifest_text);
    json_decref (request);
    return status;
}

void
kiln_input_deploy_owner (const char *body, size_t size, char owner [KILN_NAME_MAX + 1])
{
    owner [0] = 0;
    //  Loaded as kiln_input_deploy loads it (same flags: the same "name"
    //  wins among duplicates), so the owner checked is the one deployed
    json_t *request = json_loadb (body, size, 0, NULL);
    const char *name = json_string_value (json_object_get (request, "name"));
    if (name && kiln_app_name_valid (name))
        kiln_access_owner_of (name, owner);
    json_decref (request);
}

int
kiln_input_rollback (const char *body, size_t size, int64_t *revision,
                     char why [KILN_INPUT_WHY_MAX])
{
    *revision = 0;
    why [0] = 0;
    json_t *request = json_loadb (body, size, 0, NULL);
    json_t *value = json_object_get (request, "revision");
    int status = 422;
    if (json_is_integer (value) && json_integer_value (value) >= 1) {
        *revision = json_integer_value (value);
        status = 0;
    }
    else
        snprintf (why, KILN_INPUT_WHY_MAX,
                  "Body must be a JSON object {\"revision\": N}, N a whole number from 1");
    json_decref (request);
    return status;
}

int
kiln_input_key_request (const char *body, size_t size, const char *default_owner,
                        char scope [16], char owner [KILN_NAME_MAX + 1],
                        char why [KILN_INPUT_WHY_MAX])
{
    scope [0] = 0;
    owner [0] = 0;
    why [0] = 0;
    json_t *request = size ? json_loadb (body, size, 0, NULL) : json_object ();
    if (!json_is_object (request)) {
        json_decref (request);
        snprintf (why, KILN_INPUT_WHY_MAX, "Body must be a JSON object {scope, owner?}");
        return 400;
    }
    const char *scope_text = json_string_value (json_object_get (request, "scope"));
    json_t *owner_json = json_object_get (request, "owner");
    const char *owner_text = json_string_value (owner_json);
    if (!owner_json || json_is_null (owner_json))
        owner_text = default_owner;

    int status = 400;
    if (!scope_text || !kiln_auth_scope_valid (scope_text))
        snprintf (why, KILN_INPUT_WHY_MAX, "scope must be API or ADMIN");
    else
    if (!owner_text || !*owner_text)
        snprintf (why, KILN_INPUT_WHY_MAX, "owner is required: the tenant the key belongs to");
    else
    if (strcmp (owner_text, KILN_OWNER_ANY) == 0 && strcmp (scope_text, KILN_SCOPE_ADMIN) != 0)
        snprintf (why, KILN_INPUT_WHY_MAX, "owner * (the operator) is for ADMIN keys only");
    else
    if (strcmp (owner_text, KILN_OWNER_ANY) != 0
    &&  (!kiln_name_part_valid (owner_text, strlen (owner_text))
         || kiln_route_owner_reserved (owner_text, strlen (owner_text))))
        snprintf (why, KILN_INPUT_WHY_MAX,
                  "owner must be 1-%d of [a-z0-9_-], starting with a letter or digit, "
                  "and not queue, v1, files, health or metrics (or * for the operator)",
                  KILN_NAME_MAX);
    else {
        //  Both fit: a valid scope is API or ADMIN, a valid owner a name part
        snprintf (scope, 16, "%s", scope_text);
        snprintf (owner, KILN_NAME_MAX + 1, "%s", owner_text);
        status = 0;
    }
    json_decref (request);
    return status;
}

void
kiln_input_test (bool verbose)
{
    if (verbose)
        printf (" * inputs: ");
    assert (kiln_input_is_json_type ("application/json"));
    assert (kiln_input_is_json_type (" Application/JSON ; charset=utf-8"));
    assert (kiln_input_is_json_type ("application/problem+json"));
    assert (!kiln_input_is_json_type ("application/jsonx"));
    assert (!kiln_input_is_json_type ("+json"));
    assert (!kiln_input_is_json_type ("text/plain"));
    assert (!kiln_input_is_json_type (""));

    assert (kiln_input_webhook_invalid ("https://example.com/hook?x=1") == NULL);
    assert (kiln_input_webhook_invalid ("http://10.0.0.1:8080/") == NULL);
    assert (kiln_input_webhook_invalid (""));
    assert (kiln_input_webhook_invalid ("ftp://example.com/"));
    assert (kiln_input_webhook_invalid ("http:///nohost"));
    assert (kiln_input_webhook_invalid ("http://exa mple.com/"));
    assert (kiln_input_webhook_invalid ("http://example.com/\x7f"));
    assert (kiln_input_webhook_invalid ("example.com/hook"));
    char *long_url = malloc (KILN_INPUT_WEBHOOK_URL_MAX + 2);
    assert (long_url);
    memset (long_url, 'a', KILN_INPUT_WEBHOOK_URL_MAX + 1);
    memcpy (long_url, "http://", 7);
    long_url [KILN_INPUT_WEBHOOK_URL_MAX + 1] = 0;
    assert (strcmp (kiln_input_webhook_invalid (long_url), "is too long") == 0);
    free (long_url);

    assert (kiln_input_start_deadline ("30", 1000) == 31000);
    assert (kiln_input_start_deadline (" 2.5 ", 0) == 2500);
    assert (kiln_input_start_deadline (".5", 0) == 500);
    assert (kiln_input_start_deadline ("0.0001", 0) == 1);     //  rounded up, never 0
    assert (kiln_input_start_deadline ("0", 0) == -1);
    assert (kiln_input_start_deadline ("-1", 0) == -1);
    assert (kiln_input_start_deadline ("1e3", 0) == -1);
    assert (kiln_input_start_deadline ("", 0) == -1);
    assert (kiln_input_start_deadline (".", 0) == -1);
    assert (kiln_input_start_deadline ("5s", 0) == -1);
    assert (kiln_input_start_deadline ("99999999999", 0) == -1);

    assert (kiln_input_no_retry (NULL) == 0 && kiln_input_no_retry ("") == 0);
    assert (kiln_input_no_retry ("0") == 0 && kiln_input_no_retry ("FALSE") == 0);
    assert (kiln_input_no_retry ("1") == 1 && kiln_input_no_retry ("True") == 1);
    assert (kiln_input_no_retry ("yes") == -1 && kiln_input_no_retry ("2") == -1);

    assert (kiln_input_flag ("1") && kiln_input_flag ("true") && kiln_input_flag ("yes"));
    assert (!kiln_input_flag (NULL) && !kiln_input_flag ("0") && !kiln_input_flag ("TRUE"));

    char safe [8];
    kiln_input_safe_file_name ("a\"b/c\\\x01\xc3\xa9z", safe, sizeof safe);
    assert (strcmp (safe, "a_b_c__") == 0);
    kiln_input_safe_file_name ("out.png", safe, sizeof safe);
    assert (strcmp (safe, "out.png") == 0);
    kiln_input_safe_file_name ("", safe, sizeof safe);
    assert (strcmp (safe, "") == 0);
    //  PATCH /v1/apps/{app}: body, status, the four values, reset, why's start
    struct {
        const char *body;
        int status;
        const char *values [KILN_INPUT_SCALE_FIELD_COUNT];
        bool reset;
        const char *why;
    } scales [] = {
        { "{\"min_concurrency\": 2}", 0, { "2", "", "", "" }, false, "" },
        { "{\"max_concurrency\": null, \"keep_alive\": 0}", 0, { "", "-", "", "0" }, false, "" },
        { "{\"reset\": true}", 0, { "", "", "", "" }, true, "" },
        { "{\"reset\": true, \"concurrency_buffer\": 2147483647}", 0,
          { "", "", "2147483647", "" }, true, "" },
        { "", 422, { 0 }, false, "Body is not valid JSON: " },
        { "{\"a\":1,\"a\":2}", 422, { 0 }, false, "Body is not valid JSON: " },
        { "[]", 422, { 0 }, false, "Body must be a JSON object" },
        { "{}", 422, { 0 }, false, "Nothing to change" },
        { "{\"reset\": false}", 422, { 0 }, false, "Nothing to change" },
        { "{\"reset\": 1}", 422, { 0 }, false, "reset must be true or false" },
        { "{\"min\": 1}", 422, { 0 }, false, "Unknown field 'min'" },
        { "{\"keep_alive\": -1}", 422, { 0 }, false, "keep_alive must be a whole number" },
        { "{\"keep_alive\": 1.5}", 422, { 0 }, false, "keep_alive must be a whole number" },
        { "{\"min_concurrency\": 2147483648}", 422, { 0 }, false, "min_concurrency must be" },
        { "{\"max_concurrency\": 0}", 422, { 0 }, false, "max_concurrency must be at least 1" },
    };
    for (size_t i = 0; i < sizeof scales / sizeof scales [0]; i++) {
        char values [KILN_INPUT_SCALE_FIELD_COUNT][24];
        bool reset = true;
        char why [KILN_INPUT_WHY_MAX];
        int status = kiln_input_scale_patch (scales [i].body, strlen (scales [i].body),
                                             values, &reset, why);
        if (status != scales [i].status
        ||  strncmp (why, scales [i].why, strlen (scales [i].why)) != 0)
            fprintf (stderr, "scale case %zu: %d '%s'\n", i, status, why);
        assert (status == scales [i].status);
        assert (strncmp (why, scales [i].why, strlen (scales [i].why)) == 0);
        if (status == 0) {
            assert (reset == scales [i].reset);
            for (int field = 0; field < KILN_INPUT_SCALE_FIELD_COUNT; field++)
                assert (strcmp (values [field], scales [i].values [field]) == 0);
        }
    }

    //  POST /v1/apps: body, status, why's start
    #define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    #define MANIFEST "{\"name\":\"echo\",\"endpoints\":[\"/\"]}"
    struct {
        const char *body;
        int status;
        const char *why;
    } deploys [] = {
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":" MANIFEST "}", 0, "" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":"
          "\"{\\\"name\\\":\\\"echo\\\",\\\"endpoints\\\":[\\\"/\\\"]}\"}", 0, "" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":{}}", 422,
          "Invalid manifest: name: required" },
        { "", 400, "Body must be a JSON object" },
        { "[1]", 400, "Body must be a JSON object" },
        { "{\"artifact\":\"" SHA "\",\"manifest\":{}}", 400, "name must be owner/app" },
        { "{\"name\":\"echo\",\"artifact\":\"" SHA "\",\"manifest\":{}}", 400, "name must be" },
        { "{\"name\":\"queue/echo\",\"artifact\":\"" SHA "\",\"manifest\":{}}", 400, "name must" },
        { "{\"name\":\"Alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":{}}", 400, "name must" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"abc\",\"manifest\":{}}", 400, "artifact must" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\"}", 422, "manifest must be a JSON object" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":[]}", 422, "manifest must" },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":\"{\"}", 422,
          "Invalid manifest: " },
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":{\"max_concurrency\":\"x\"}}",
          422, "Invalid manifest: " },
    };
    for (size_t i = 0; i < sizeof deploys / sizeof deploys [0]; i++) {
        kiln_input_deploy_t deploy;
        char why [KILN_INPUT_WHY_MAX];
        int status = kiln_input_deploy (deploys [i].body, strlen (deploys [i].body), &deploy, why);
        if (status != deploys [i].status
        ||  strncmp (why, deploys [i].why, strlen (deploys [i].why)) != 0)
            fprintf (stderr, "deploy case %zu: %d '%s'\n", i, status, why);
        assert (status == deploys [i].status);
        assert (strncmp (why, deploys [i].why, strlen (deploys [i].why)) == 0);
        assert ((status == 0) == (deploy.manifest != NULL));
        if (status == 0) {
            assert (strcmp (deploy.name, "alice/echo") == 0);
            assert (strcmp (deploy.artifact, SHA) == 0);
        }
        free (deploy.manifest);
    }
    //  The owner the access check sees: the name's, for every body
    //  deployed; "" when the name is missing or not an app name
    struct {
        const char *body;
        const char *owner;
    } owners [] = {
        { "{\"name\":\"alice/echo\",\"artifact\":\"" SHA "\",\"manifest\":" MANIFEST "}", "alice" },
        { "{\"name\":\"bob/x\"}", "bob" },
        { "{\"name\":\"queue/x\"}", "queue" },       //  reserved: the deploy refuses it
        { "{\"name\":\"alice/x\",\"name\":\"bob/y\"}", "bob" },    //  the last, as the deploy reads it
        { "{\"name\":\"echo\"}", "" },
        { "{\"name\":\"Alice/echo\"}", "" },
        { "{\"name\":\"alice/echo/x\"}", "" },
        { "{\"name\":7}", "" },
        { "[\"alice/echo\"]", "" },
        { "{\"name\":\"alice/echo\"", "" },
        { "", "" },
    };
    for (size_t i = 0; i < sizeof owners / sizeof owners [0]; i++) {
        char owner [KILN_NAME_MAX + 1];
        kiln_input_deploy_owner (owners [i].body, strlen (owners [i].body), owner);
        if (strcmp (owner, owners [i].owner) != 0)
            fprintf (stderr, "deploy owner case %zu: '%s'\n", i, owner);
        assert (strcmp (owner, owners [i].owner) == 0);
    }
    #undef SHA
    #undef MANIFEST

    //  POST /v1/apps/{app}/rollback: body, status, revision
    struct {
        const char *body;
        int status;
        int64_t revision;
    } rollbacks [] = {
        { "{\"revision\": 3}", 0, 3 },
        { "{\"revision\": 1, \"other\": true}", 0, 1 },
        { "{\"revision\": 9223372036854775807}", 0, INT64_MAX },
        { "{\"revision\": 0}", 422, 0 },
        { "{\"revision\": -1}", 422, 0 },
        { "{\"revision\": 2.0}", 422, 0 },
        { "{\"revision\": \"2\"}", 422, 0 },
        { "{\"revision\": 99999999999999999999}", 422, 0 },
        { "{}", 422, 0 },
        { "[3]", 422, 0 },
        { "3", 422, 0 },
        { "{\"revision\": 3", 422, 0 },
        { "", 422, 0 },
    };
    for (size_t i = 0; i < sizeof rollbacks / sizeof rollbacks [0]; i++) {
        int64_t revision = -1;
        char why [KILN_INPUT_WHY_MAX];
        int status = kiln_input_rollback (rollbacks [i].body, strlen (rollbacks [i].body),
                                          &revision, why);
        if (status != rollbacks [i].status || revision != rollbacks [i].revision)
            fprintf (stderr, "rollback case %zu: %d %" PRId64 " '%s'\n", i, status, revision, why);
        assert (status == rollbacks [i].status);
        assert (revision == rollbacks [i].revision);
        const char *refused = "Body must be a JSON object {\"revision\": N}";
        assert (status ? strncmp (why, refused, strlen (refused)) == 0 : why [0] == 0);
    }

    //  POST /v1/keys: body, default owner, status, scope, owner, why's start
    struct {
        const char *body;
        const char *default_owner;
        int status;
        const char *scope;
        const char *owner;
        const char *why;
    } keys [] = {
        { "{\"scope\":\"API\",\"owner\":\"alice\"}", NULL, 0, "API", "alice", "" },
        { "{\"scope\":\"ADMIN\"}", "bob", 0, "ADMIN", "bob", "" },
        { "{\"scope\":\"ADMIN\",\"owner\":null}", "*", 0, "ADMIN", "*", "" },
        { "{\"scope\":\"ADMIN\",\"owner\":\"*\"}", NULL, 0, "ADMIN", "*", "" },
        { "", "bob", 400, "", "", "scope must be API or ADMIN" },
        { "[]", NULL, 400, "", "", "Body must be a JSON object {scope, owner?}" },
        { "{", NULL, 400, "", "", "Body must be a JSON object" },
        { "{\"scope\":\"api\",\"owner\":\"alice\"}", NULL, 400, "", "", "scope must be" },
        { "{\"scope\":\"API\"}", NULL, 400, "", "", "owner is required" },
        { "{\"scope\":\"API\",\"owner\":\"\"}", "bob", 400, "", "", "owner is required" },
        { "{\"scope\":\"API\",\"owner\":7}", "bob", 400, "", "", "owner is required" },
        { "{\"scope\":\"API\",\"owner\":\"*\"}", NULL, 400, "", "", "owner * (the operator)" },
        { "{\"scope\":\"API\",\"owner\":\"v1\"}", NULL, 400, "", "", "owner must be 1-63" },
        { "{\"scope\":\"API\",\"owner\":\"a/b\"}", NULL, 400, "", "", "owner must be" },
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++) {
        char scope [16];
        char owner [KILN_NAME_MAX + 1];
        char why [KILN_INPUT_WHY_MAX];
        int status = kiln_input_key_request (keys [i].body, strlen (keys [i].body),
                                             keys [i].default_owner, scope, owner, why);
        if (status != keys [i].status
        ||  strncmp (why, keys [i].why, strlen (keys [i].why)) != 0)
            fprintf (stderr, "keys case %zu: %d '%s'\n", i, status, why);
        assert (status == keys [i].status);
        assert (strncmp (why, keys [i].why, strlen (keys [i].why)) == 0);
        assert (strcmp (scope, keys [i].scope) == 0);
        assert (strcmp (owner, keys [i].owner) == 0);
    }
    if (verbose)
        printf ("OK\n");
}
