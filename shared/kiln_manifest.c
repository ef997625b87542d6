/*  =========================================================================
    kiln_manifest — an app's manifest, in C and in JSON

    Both constructors fill a manifest and then run the same check, so an
    app's descriptor and a manifest that arrives over HTTP are held to the
    same rules. Error strings name the field, because the person reading
    them is deploying an app and needs to know what to fix.
    =========================================================================
*/
#include "kiln_manifest.h"
#include "kiln_keys.h"

#include <assert.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_KEEP_ALIVE_S        300
#define DEFAULT_MIN_CONCURRENCY     0
#define DEFAULT_MAX_CONCURRENCY     2
#define DEFAULT_CONCURRENCY_BUFFER  0
#define DEFAULT_MAX_MULTIPLEXING    1
#define DEFAULT_REQUEST_TIMEOUT_S   3600
#define DEFAULT_STARTUP_TIMEOUT_S   600
#define DEFAULT_MACHINE_TYPE        "CPU"

//  A machine type or endpoint path longer than this is a mistake.
#define MACHINE_TYPE_MAX_CHARS      64
#define ENDPOINT_MAX_CHARS          1024
//  A pip spec ("torch==2.3.1", "git+https://...") longer than this is a mistake.
#define REQUIREMENT_MAX_CHARS       1024

static kiln_manifest_t *
s_new (void)
{
    kiln_manifest_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->keep_alive = DEFAULT_KEEP_ALIVE_S;
    self->min_concurrency = DEFAULT_MIN_CONCURRENCY;
    self->max_concurrency = DEFAULT_MAX_CONCURRENCY;
    self->concurrency_buffer = DEFAULT_CONCURRENCY_BUFFER;
    self->max_multiplexing = DEFAULT_MAX_MULTIPLEXING;
    self->request_timeout = DEFAULT_REQUEST_TIMEOUT_S;
    self->startup_timeout = DEFAULT_STARTUP_TIMEOUT_S;
    //  Secure by default: only the owner's keys may call a new app
    self->app_auth = strdup (KILN_MANIFEST_AUTH_PRIVATE);
    if (!self->app_auth) {
        free (self);
        return NULL;
    }
    return self;
}

void
kiln_manifest_destroy (kiln_manifest_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_manifest_t *self = *self_p;
    free (self->name);
    for (size_t i = 0; self->machine_types && i < self->machine_type_count; i++)
        free (self->machine_types [i]);
    free (self->machine_types);
    for (size_t i = 0; self->endpoints && i < self->endpoint_count; i++)
        free (self->endpoints [i]);
    free (self->endpoints);
    free (self->kind);
    for (size_t i = 0; self->requirements && i < self->requirement_count; i++)
        free (self->requirements [i]);
    free (self->requirements);
    free (self->app_auth);
    free (self);
    *self_p = NULL;
}

static bool
s_machine_type_valid (const char *type)
{
    size_t len = strlen (type);
    if (len == 0 || len > MACHINE_TYPE_MAX_CHARS)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = type [i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

//  The manifest travels as JSON, whose strings are UTF-8: jansson would
//  drop a string that is not from the JSON we emit, without a word.
static bool
s_utf8 (const char *text)
{
    json_t *probe = json_string (text);
    json_decref (probe);
    return probe != NULL;
}

static bool
s_endpoint_valid (const char *path)
{
    size_t len = strlen (path);
    if (len == 0 || len > ENDPOINT_MAX_CHARS || path [0] != '/')
        return false;
    //  Paths are matched against URL paths: no query, fragment or spaces.
    for (size_t i = 0; i < len; i++) {
        unsigned char c = path [i];
        if (c <= ' ' || c == 0x7f || c == '?' || c == '#')
            return false;
    }
    return s_utf8 (path);
}

//  The rules both constructors share. NULL, or what is wrong (static).
static const char *
s_check (const kiln_manifest_t *self)
{
    if (!self->name || !kiln_name_part_valid (self->name, strlen (self->name)))
        return "name: must be 1-63 characters of [a-z0-9_-], starting with a letter or digit";
    if (self->machine_type_count == 0)
        return "machine_types: must name at least one machine type";
    if (self->machine_type_count > KILN_MANIFEST_MAX_MACHINE_TYPES)
        return "machine_types: too many (at most 16)";
    for (size_t i = 0; i < self->machine_type_count; i++)
        if (!s_machine_type_valid (self->machine_types [i]))
            return "machine_types: each must be 1-64 characters of [A-Za-z0-9-]";
    if (self->keep_alive < 0)
        return "keep_alive: must not be negative";
    if (self->min_concurrency < 0)
        return "min_concurrency: must not be negative";
    if (self->max_concurrency < 1)
        return "max_concurrency: must be at least 1";
    if (self->min_concurrency > self->max_concurrency)
        return "min_concurrency: must not exceed max_concurrency";
    if (self->concurrency_buffer < 0)
        return "concurrency_buffer: must not be negative";
    if (self->max_multiplexing < 1)
        return "max_multiplexing: must be at least 1";
    if (self->request_timeout < 1)
        return "request_timeout: must be at least 1 second";
    if (self->startup_timeout < 1)
        return "startup_timeout: must be at least 1 second";
    if (!self->kind || (strcmp (self->kind, KILN_MANIFEST_KIND_NATIVE) != 0
                    &&  strcmp (self->kind, KILN_MANIFEST_KIND_PYTHON) != 0))
        return "kind: must be \"native\" or \"python\"";
    if (!self->app_auth || (strcmp (self->app_auth, KILN_MANIFEST_AUTH_PRIVATE) != 0
                        &&  strcmp (self->app_auth, KILN_MANIFEST_AUTH_SHARED) != 0
                        &&  strcmp (self->app_auth, KILN_MANIFEST_AUTH_PUBLIC) != 0))
        return "app_auth: must be \"private\", \"shared\" or \"public\"";
    if (self->requirement_count > 0 && strcmp (self->kind, KILN_MANIFEST_KIND_PYTHON) != 0)
        return "requirements: only a python app has requirements";
    for (size_t i = 0; i < self->requirement_count; i++) {
        size_t len = strlen (self->requirements [i]);
        if (len == 0 || len > REQUIREMENT_MAX_CHARS)
            return "requirements: each must be 1-1024 characters";
        for (size_t j = 0; j < len; j++)
            if ((unsigned char) self->requirements [i][j] < ' ')
                return "requirements: control characters are not allowed";
        if (!s_utf8 (self->requirements [i]))
            return "requirements: each must be UTF-8";
    }
    if (self->endpoint_count == 0)
        return "endpoints: must list at least one endpoint";
    if (self->endpoint_count > KILN_MANIFEST_MAX_ENDPOINTS)
        return "endpoints: too many (at most 256)";
    for (size_t i = 0; i < self->endpoint_count; i++) {
        if (!s_endpoint_valid (self->endpoints [i]))
            return "endpoints: each must be a path starting with '/', without spaces, '?' or '#', in UTF-8";
        for (size_t j = 0; j < i; j++)
            if (strcmp (self->endpoints [i], self->endpoints [j]) == 0)
                return "endpoints: a path is listed twice";
    }
    return NULL;
}

kiln_manifest_t *
kiln_manifest_from_app (const kiln_app_t *app, const char **error)
{
    const char *why = NULL;
    kiln_manifest_t *self = NULL;
    if (!app) {
        why = "no app descriptor";
        goto done;
    }
    if (app->abi_version != KILN_APP_ABI_VERSION) {
        why = "abi_version: the app was built against another version of kiln/app.h";
        goto done;
    }
    if (!(self = s_new ())) {
        why = "out of memory";
        goto done;
    }
    if (app->name && !(self->name = strdup (app->name))) {
        why = "out of memory";
        goto done;
    }
    if (!(self->kind = strdup (KILN_MANIFEST_KIND_NATIVE))) {
        why = "out of memory";
        goto done;
    }
    //  Zero takes the default, as kiln/app.h promises; negative values
    //  are kept so that the check refuses them.
    if (app->keep_alive)
        self->keep_alive = app->keep_alive;
    if (app->min_concurrency)
        self->min_concurrency = app->min_concurrency;
    if (app->max_concurrency)
        self->max_concurrency = app->max_concurrency;
    if (app->concurrency_buffer)
        self->concurrency_buffer = app->concurrency_buffer;
    if (app->max_multiplexing)
        self->max_multiplexing = app->max_multiplexing;
    if (app->request_timeout)
        self->request_timeout = app->request_timeout;
    if (app->startup_timeout)
        self->startup_timeout = app->startup_timeout;

    static const char *const default_types [] = { DEFAULT_MACHINE_TYPE, NULL };
    const char *const *types = app->machine_types ? app->machine_types : default_types;
    size_t count = 0;
    while (types [count] && count <= KILN_MANIFEST_MAX_MACHINE_TYPES)
        count++;
    self->machine_types = calloc (count ? count : 1, sizeof (char *));
    if (!self->machine_types) {
        why = "out of memory";
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        if (!(self->machine_types [i] = strdup (types [i]))) {
            why = "out of memory";
            goto done;
        }
        self->machine_type_count++;
    }

    count = 0;
    while (app->endpoints && app->endpoints [count].path && count <= KILN_MANIFEST_MAX_ENDPOINTS) {
        if (!app->endpoints [count].handler) {
            why = "endpoints: an endpoint has no handler";
            goto done;
        }
        count++;
    }
    self->endpoints = calloc (count ? count : 1, sizeof (char *));
    if (!self->endpoints) {
        why = "out of memory";
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        if (!(self->endpoints [i] = strdup (app->endpoints [i].path))) {
            why = "out of memory";
            goto done;
        }
        self->endpoint_count++;
    }
    why = s_check (self);

done:
    if (why)
        kiln_manifest_destroy (&self);
    if (error)
        *error = why;
    return self;
}

//  Reads an optional integer member into *value, within [min, INT_MAX].
//  NULL, or the error (malloc'd).
static char *
s_json_int (json_t *root, const char *key, int min, int *value)
{
    json_t *member = json_object_get (root, key);
    if (!member)
        return NULL;
    if (!json_is_integer (member)
    ||  json_integer_value (member) < min || json_integer_value (member) > INT_MAX) {
        char *error;
        if (asprintf (&error, "%s: must be an integer, at least %d", key, min) < 0)
            error = NULL;
        return error ? error : strdup ("out of memory");
    }
    *value = (int) json_integer_value (member);
    return NULL;
}

//  Reads an array of strings. NULL, or the error (malloc'd).
static char *
s_json_strings (json_t *root, const char *key, size_t max, char ***items, size_t *count)
{
    json_t *array = json_object_get (root, key);
    char *error = NULL;
    if (!json_is_array (array)) {
        if (asprintf (&error, "%s: must be an array of strings", key) < 0)
            error = NULL;
        return error ? error : strdup ("out of memory");
    }
    size_t n = json_array_size (array);
    if (n > max) {
        if (asprintf (&error, "%s: too many (at most %zu)", key, max) < 0)
            error = NULL;
        return error ? error : strdup ("out of memory");
    }
    *items = calloc (n ? n : 1, sizeof (char *));
    if (!*items)
        return strdup ("out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get (array, i);
        if (!json_is_string (item)) {
            if (asprintf (&error, "%s: item %zu is not a string", key, i) < 0)
                error = NULL;
            return error ? error : strdup ("out of memory");
        }
        //  A string with a NUL inside would be cut short silently.
        if (strlen (json_string_value (item)) != json_string_length (item)) {
            if (asprintf (&error, "%s: item %zu holds a NUL character", key, i) < 0)
                error = NULL;
            return error ? error : strdup ("out of memory");
        }
        if (!((*items) [i] = strdup (json_string_value (item))))
            return strdup ("out of memory");
        (*count)++;
    }
    return NULL;
}

kiln_manifest_t *
kiln_manifest_from_json (const char *json, size_t size, char **error)
{
    char *why = NULL;
    kiln_manifest_t *self = NULL;
    json_error_t json_error;
    json_t *root = json ? json_loadb (json, size, JSON_REJECT_DUPLICATES, &json_error) : NULL;
    if (!root) {
        if (asprintf (&why, "manifest is not valid JSON: %s",
                      json ? json_error.text : "empty") < 0)
            why = NULL;
        goto done;
    }
    if (!json_is_object (root)) {
        why = strdup ("manifest must be a JSON object");
        goto done;
    }
    if (!(self = s_new ())) {
        why = strdup ("out of memory");
        goto done;
    }
    json_t *name = json_object_get (root, "name");
    if (!json_is_string (name)) {
        why = strdup ("name: required, a string");
        goto done;
    }
    if (!(self->name = strdup (json_string_value (name)))) {
        why = strdup ("out of memory");
        goto done;
    }
    if ((why = s_json_int (root, "keep_alive", 0, &self->keep_alive))
    ||  (why = s_json_int (root, "min_concurrency", 0, &self->min_concurrency))
    ||  (why = s_json_int (root, "max_concurrency", 1, &self->max_concurrency))
    ||  (why = s_json_int (root, "concurrency_buffer", 0, &self->concurrency_buffer))
    ||  (why = s_json_int (root, "max_multiplexing", 1, &self->max_multiplexing))
    ||  (why = s_json_int (root, "request_timeout", 1, &self->request_timeout))
    ||  (why = s_json_int (root, "startup_timeout", 1, &self->startup_timeout)))
        goto done;

    if (json_object_get (root, "machine_types")) {
        if ((why = s_json_strings (root, "machine_types", KILN_MANIFEST_MAX_MACHINE_TYPES,
                                   &self->machine_types, &self->machine_type_count)))
            goto done;
    }
    else {
        self->machine_types = calloc (1, sizeof (char *));
        if (!self->machine_types || !(self->machine_types [0] = strdup (DEFAULT_MACHINE_TYPE))) {
            why = strdup ("out of memory");
            goto done;
        }
        self->machine_type_count = 1;
    }
    if (!json_object_get (root, "endpoints")) {
        why = strdup ("endpoints: required, an array of paths");
        goto done;
    }
    if ((why = s_json_strings (root, "endpoints", KILN_MANIFEST_MAX_ENDPOINTS,
                               &self->endpoints, &self->endpoint_count)))
        goto done;
    //  Both are newer than the rest: a manifest without them is native.
    json_t *kind = json_object_get (root, "kind");
    if (kind && !json_is_string (kind)) {
        why = strdup ("kind: must be \"native\" or \"python\"");
        goto done;
    }
    if (!(self->kind = strdup (kind ? json_string_value (kind) : KILN_MANIFEST_KIND_NATIVE))) {
        why = strdup ("out of memory");
        goto done;
    }
    if (json_object_get (root, "requirements")
    &&  (why = s_json_strings (root, "requirements", KILN_MANIFEST_MAX_REQUIREMENTS,
                               &self->requirements, &self->requirement_count)))
        goto done;
    //  Absent: private, as a manifest from before app_auth meant nothing else
    json_t *app_auth = json_object_get (root, "app_auth");
    if (app_auth && !json_is_string (app_auth)) {
        why = strdup ("app_auth: must be \"private\", \"shared\" or \"public\"");
        goto done;
    }
    if (app_auth) {
        char *copy = strdup (json_string_value (app_auth));
        if (!copy) {
            why = strdup ("out of memory");
            goto done;
        }
        free (self->app_auth);
        self->app_auth = copy;
    }
    //  fal spells it fal_max_queue_length; one of the two, not both
    if (json_object_get (root, "max_queue_length") && json_object_get (root, "fal_max_queue_length")) {
        why = strdup ("max_queue_length: give max_queue_length or fal_max_queue_length, not both");
        goto done;
    }
    if ((why = s_json_int (root, "max_queue_length", 0, &self->max_queue_length))
    ||  (why = s_json_int (root, "fal_max_queue_length", 0, &self->max_queue_length)))
        goto done;
    const char *check = s_check (self);
    if (check)
        why = strdup (check);

done:
    json_decref (root);
    if (why || !self) {
        kiln_manifest_destroy (&self);
        if (!why)
            why = strdup ("out of memory");
        if (error)
            *error = why;
        else
            free (why);
        return NULL;
    }
    if (error)
        *error = NULL;
    return self;
}

char *
kiln_manifest_to_json (const kiln_manifest_t *self)
{
    if (!self)
        return NULL;
    json_t *types = json_array ();
    json_t *endpoints = json_array ();
    json_t *requirements = json_array ();
    for (size_t i = 0; requirements && i < self->requirement_count; i++)
        json_array_append_new (requirements, json_string (self->requirements [i]));
    for (size_t i = 0; types && i < self->machine_type_count; i++)
        json_array_append_new (types, json_string (self->machine_types [i]));
    for (size_t i = 0; endpoints && i < self->endpoint_count; i++)
        json_array_append_new (endpoints, json_string (self->endpoints [i]));
    //  "o" steals the arrays, even when the pack fails.
    json_t *root = json_pack ("{s:s, s:o, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:s, s:o, s:s}",
                              "name", self->name ? self->name : "",
                              "machine_types", types,
                              "keep_alive", self->keep_alive,
                              "min_concurrency", self->min_concurrency,
                              "max_concurrency", self->max_concurrency,
                              "concurrency_buffer", self->concurrency_buffer,
                              "max_multiplexing", self->max_multiplexing,
                              "request_timeout", self->request_timeout,
                              "startup_timeout", self->startup_timeout,
                              "endpoints", endpoints,
                              "kind", self->kind ? self->kind : KILN_MANIFEST_KIND_NATIVE,
                              "requirements", requirements,
                              "app_auth", self->app_auth ? self->app_auth
                                                         : KILN_MANIFEST_AUTH_PRIVATE);
    //  Only when set: SUBMIT decodes the manifest only when it names a limit
    if (root && self->max_queue_length > 0
    &&  json_object_set_new (root, "max_queue_length", json_integer (self->max_queue_length))) {
        json_decref (root);
        return NULL;
    }
    if (!root)
        return NULL;
    char *text = json_dumps (root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (root);
    return text;
}

bool
kiln_manifest_has_machine_type (const kiln_manifest_t *self, const char *machine_type)
{
    if (!self || !machine_type)
        return false;
    for (size_t i = 0; i < self->machine_type_count; i++)
        if (strcmp (self->machine_types [i], machine_type) == 0)
            return true;
    return false;
}

//  ---------------------------------------------------------------------
//  Selftest

static int
s_test_handler (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) req;
    (void) resp;
    return 0;
}

//  from_json must refuse json, with an error that contains expect.
static void
s_test_bad_json (const char *json, const char *expect)
{
    char *error = NULL;
    kiln_manifest_t *m = kiln_manifest_from_json (json, strlen (json), &error);
    if (m || !error || !strstr (error, expect)) {
        fprintf (stderr, "manifest '%s': expected error with '%s', got '%s'\n",
                 json, expect, error ? error : "(accepted)");
        assert (false);
    }
    free (error);
}

void
kiln_manifest_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_manifest: ");

    static const kiln_endpoint_t endpoints [] = {
        { "/", s_test_handler },
        { "/echo", s_test_handler },
        { NULL, NULL }
    };
    //  Defaults for the zero fields.
    kiln_app_t app = {
        .abi_version = KILN_APP_ABI_VERSION,
        .name = "echo",
        .endpoints = endpoints,
    };
    const char *error = "unset";
    kiln_manifest_t *m = kiln_manifest_from_app (&app, &error);
    assert (m && error == NULL);
    assert (strcmp (m->name, "echo") == 0);
    assert (m->machine_type_count == 1 && strcmp (m->machine_types [0], "CPU") == 0);
    assert (m->keep_alive == 300 && m->min_concurrency == 0 && m->max_concurrency == 2);
    assert (m->concurrency_buffer == 0 && m->max_multiplexing == 1);
    assert (m->request_timeout == 3600 && m->startup_timeout == 600);
    assert (m->endpoint_count == 2);
    assert (strcmp (m->endpoints [0], "/") == 0 && strcmp (m->endpoints [1], "/echo") == 0);
    assert (kiln_manifest_has_machine_type (m, "CPU"));
    assert (!kiln_manifest_has_machine_type (m, "GPU-H100"));
    assert (!kiln_manifest_has_machine_type (m, NULL));
    char *json = kiln_manifest_to_json (m);
    assert (json);
    assert (strcmp (json, "{\"name\":\"echo\",\"machine_types\":[\"CPU\"],\"keep_alive\":300,"
                          "\"min_concurrency\":0,\"max_concurrency\":2,\"concurrency_buffer\":0,"
                          "\"max_multiplexing\":1,\"request_timeout\":3600,\"startup_timeout\":600,"
                          "\"endpoints\":[\"/\",\"/echo\"],\"kind\":\"native\",\"requirements\":[],"
                          "\"app_auth\":\"private\"}") == 0);
    free (json);
    kiln_manifest_destroy (&m);
    assert (m == NULL);

    //  Every field set; JSON round trip keeps it all.
    app.name = "sd-xl_2";
    app.machine_types = KILN_MACHINE_TYPES ("GPU-H100", "GPU-A100", "CPU");
    app.keep_alive = 60;
    app.min_concurrency = 1;
    app.max_concurrency = 8;
    app.concurrency_buffer = 2;
    app.max_multiplexing = 4;
    app.request_timeout = 120;
    app.startup_timeout = 900;
    m = kiln_manifest_from_app (&app, &error);
    assert (m && !error);
    json = kiln_manifest_to_json (m);
    assert (json);
    char *json_error = NULL;
    kiln_manifest_t *back = kiln_manifest_from_json (json, strlen (json), &json_error);
    assert (back && !json_error);
    assert (strcmp (back->name, "sd-xl_2") == 0);
    assert (back->machine_type_count == 3);
    assert (strcmp (back->machine_types [0], "GPU-H100") == 0);
    assert (strcmp (back->machine_types [2], "CPU") == 0);
    assert (back->keep_alive == 60 && back->min_concurrency == 1 && back->max_concurrency == 8);
    assert (back->concurrency_buffer == 2 && back->max_multiplexing == 4);
    assert (back->request_timeout == 120 && back->startup_timeout == 900);
    assert (back->endpoint_count == 2 && strcmp (back->endpoints [1], "/echo") == 0);
    assert (kiln_manifest_has_machine_type (back, "GPU-A100"));
    char *again = kiln_manifest_to_json (back);
    assert (again && strcmp (again, json) == 0);
    free (again);
    free (json);
    kiln_manifest_destroy (&back);
    kiln_manifest_destroy (&m);

    //  Minimal JSON takes the defaults; unknown keys are ignored; an
    //  explicit keep_alive 0 is kept (only the descriptor maps 0 to a default).
    const char *minimal = "{\"name\":\"echo\",\"endpoints\":[\"/\"],\"future\":{\"x\":1},\"keep_alive\":0}";
    back = kiln_manifest_from_json (minimal, strlen (minimal), NULL);
    assert (back);
    assert (back->keep_alive == 0 && back->max_concurrency == 2 && back->startup_timeout == 600);
    assert (back->machine_type_count == 1 && strcmp (back->machine_types [0], "CPU") == 0);
    kiln_manifest_destroy (&back);
    //  The size bounds the parse: trailing bytes past it are not read.
    char padded [128];
    snprintf (padded, sizeof padded, "%sGARBAGE", minimal);
    back = kiln_manifest_from_json (padded, strlen (minimal), NULL);
    assert (back);
    kiln_manifest_destroy (&back);

    //  Descriptor errors, each named.
    kiln_app_t bad;
#define BAD_APP(change, expect) do { \
        bad = app; change; \
        error = NULL; \
        m = kiln_manifest_from_app (&bad, &error); \
        assert (m == NULL && error && strstr (error, expect)); \
    } while (0)
    BAD_APP (bad.abi_version = KILN_APP_ABI_VERSION + 1, "abi_version");
    BAD_APP (bad.abi_version = 0, "abi_version");
    BAD_APP (bad.name = NULL, "name");
    BAD_APP (bad.name = "", "name");
    BAD_APP (bad.name = "Echo", "name");
    BAD_APP (bad.name = "my/app", "name");
    BAD_APP (bad.name = "my app", "name");
    BAD_APP (bad.name = "-app", "name");
    BAD_APP (bad.name = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "name");
    BAD_APP (bad.min_concurrency = 9, "min_concurrency");
    BAD_APP (bad.min_concurrency = -1, "min_concurrency");
    BAD_APP (bad.max_concurrency = -1, "max_concurrency");
    BAD_APP (bad.max_multiplexing = -2, "max_multiplexing");
    BAD_APP (bad.keep_alive = -1, "keep_alive");
    BAD_APP (bad.concurrency_buffer = -1, "concurrency_buffer");
    BAD_APP (bad.request_timeout = -1, "request_timeout");
    BAD_APP (bad.startup_timeout = -5, "startup_timeout");
    BAD_APP (bad.machine_types = KILN_MACHINE_TYPES ("GPU H100"), "machine_types");
    BAD_APP (bad.machine_types = KILN_MACHINE_TYPES ("GPU_H100"), "machine_types");
    BAD_APP (bad.machine_types = KILN_MACHINE_TYPES (""), "machine_types");
    BAD_APP (bad.machine_types = ((const char *const []) { NULL }), "machine_types");
    BAD_APP (bad.machine_types = KILN_MACHINE_TYPES ("A", "B", "C", "D", "E", "F", "G", "H", "I",
                                                     "J", "K", "L", "M", "N", "O", "P", "Q"),
             "machine_types");
    BAD_APP (bad.endpoints = NULL, "endpoints");
    static const kiln_endpoint_t no_endpoints [] = { { NULL, NULL } };
    BAD_APP (bad.endpoints = no_endpoints, "endpoints");
    static const kiln_endpoint_t relative [] = { { "echo", s_test_handler }, { NULL, NULL } };
    BAD_APP (bad.endpoints = relative, "endpoints");
    static const kiln_endpoint_t twice [] = {
        { "/a", s_test_handler }, { "/a", s_test_handler }, { NULL, NULL }
    };
    BAD_APP (bad.endpoints = twice, "twice");
    static const kiln_endpoint_t no_handler [] = { { "/a", NULL }, { NULL, NULL } };
    BAD_APP (bad.endpoints = no_handler, "handler");
    static const kiln_endpoint_t query [] = { { "/a?b", s_test_handler }, { NULL, NULL } };
    BAD_APP (bad.endpoints = query, "endpoints");
    static const kiln_endpoint_t latin1 [] = { { "/caf\xe9", s_test_handler }, { NULL, NULL } };
    BAD_APP (bad.endpoints = latin1, "UTF-8");
#undef BAD_APP
    error = NULL;
    assert (kiln_manifest_from_app (NULL, &error) == NULL && error);
    assert (kiln_manifest_from_app (NULL, NULL) == NULL);

    //  JSON errors, each named.
    s_test_bad_json ("", "JSON");
    s_test_bad_json ("{", "JSON");
    s_test_bad_json ("[1]", "object");
    s_test_bad_json ("{\"endpoints\":[\"/\"]}", "name");
    s_test_bad_json ("{\"name\":5,\"endpoints\":[\"/\"]}", "name");
    s_test_bad_json ("{\"name\":\"Bad\",\"endpoints\":[\"/\"]}", "name");
    s_test_bad_json ("{\"name\":\"a\"}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[]}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":\"/\"}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[5]}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"x\"]}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\",\"/\"]}", "endpoints");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/a\\u0000b\"]}", "JSON");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"machine_types\":[]}", "machine_types");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"machine_types\":\"CPU\"}", "machine_types");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"machine_types\":[\"C:PU\"]}", "machine_types");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"keep_alive\":-1}", "keep_alive");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"keep_alive\":\"5\"}", "keep_alive");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"keep_alive\":1.5}", "keep_alive");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"keep_alive\":99999999999}", "keep_alive");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"min_concurrency\":-1}", "min_concurrency");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"min_concurrency\":3}", "min_concurrency");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"max_concurrency\":0}", "max_concurrency");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"concurrency_buffer\":-1}", "concurrency_buffer");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"max_multiplexing\":0}", "max_multiplexing");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"request_timeout\":0}", "request_timeout");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"startup_timeout\":null}", "startup_timeout");
    s_test_bad_json ("{\"name\":\"a\",\"name\":\"b\",\"endpoints\":[\"/\"]}", "JSON");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"kind\":\"java\"}", "kind");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"kind\":1}", "kind");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"requirements\":[\"x\"]}", "requirements");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"kind\":\"python\",\"requirements\":\"x\"}",
                     "requirements");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"kind\":\"python\",\"requirements\":[\"\"]}",
                     "requirements");

    //  app_auth: private when absent, one of three words, round-tripped.
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"app_auth\":\"open\"}", "app_auth");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"app_auth\":true}", "app_auth");
    {
        const char *shared = "{\"name\":\"a\",\"endpoints\":[\"/\"],\"app_auth\":\"shared\"}";
        kiln_manifest_t *parsed = kiln_manifest_from_json (shared, strlen (shared), NULL);
        assert (parsed && strcmp (parsed->app_auth, "shared") == 0);
        char *text = kiln_manifest_to_json (parsed);
        assert (text && strstr (text, "\"app_auth\":\"shared\""));
        free (text);
        kiln_manifest_destroy (&parsed);
        const char *bare = "{\"name\":\"a\",\"endpoints\":[\"/\"]}";
        parsed = kiln_manifest_from_json (bare, strlen (bare), NULL);
        assert (parsed && strcmp (parsed->app_auth, "private") == 0);
        kiln_manifest_destroy (&parsed);
    }

    //  max_queue_length: either spelling, 0 (absent from the JSON) when
    //  unset, never negative, never both spellings.
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"max_queue_length\":-1}", "max_queue_length");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"fal_max_queue_length\":\"5\"}",
                     "fal_max_queue_length");
    s_test_bad_json ("{\"name\":\"a\",\"endpoints\":[\"/\"],\"max_queue_length\":1,"
                     "\"fal_max_queue_length\":2}", "not both");
    {
        const char *fal = "{\"name\":\"a\",\"endpoints\":[\"/\"],\"fal_max_queue_length\":7}";
        kiln_manifest_t *parsed = kiln_manifest_from_json (fal, strlen (fal), NULL);
        assert (parsed && parsed->max_queue_length == 7);
        char *text = kiln_manifest_to_json (parsed);
        assert (text && strstr (text, "\"max_queue_length\":7"));
        kiln_manifest_destroy (&parsed);
        parsed = kiln_manifest_from_json (text, strlen (text), NULL);
        assert (parsed && parsed->max_queue_length == 7);
        free (text);
        kiln_manifest_destroy (&parsed);
        const char *bare = "{\"name\":\"a\",\"endpoints\":[\"/\"]}";
        parsed = kiln_manifest_from_json (bare, strlen (bare), NULL);
        assert (parsed && parsed->max_queue_length == 0);
        text = kiln_manifest_to_json (parsed);
        assert (text && !strstr (text, "max_queue_length"));
        free (text);
        kiln_manifest_destroy (&parsed);
    }

    //  A python app with requirements round-trips them.
    const char *python = "{\"name\":\"hello\",\"endpoints\":[\"/\"],\"kind\":\"python\","
                         "\"requirements\":[\"numpy==2.0\",\"pillow\"]}";
    back = kiln_manifest_from_json (python, strlen (python), NULL);
    assert (back && strcmp (back->kind, "python") == 0 && back->requirement_count == 2);
    assert (strcmp (back->requirements [1], "pillow") == 0);
    json = kiln_manifest_to_json (back);
    assert (json && strstr (json, "\"kind\":\"python\",\"requirements\":[\"numpy==2.0\",\"pillow\"]"));
    free (json);
    kiln_manifest_destroy (&back);
    back = kiln_manifest_from_json (minimal, strlen (minimal), NULL);
    assert (back && strcmp (back->kind, "native") == 0 && back->requirement_count == 0);
    kiln_manifest_destroy (&back);

    assert (kiln_manifest_from_json (NULL, 0, NULL) == NULL);
    assert (kiln_manifest_to_json (NULL) == NULL);
    kiln_manifest_destroy (&m);                 //  NULL is fine

    if (verbose)
        printf ("OK\n");
}
