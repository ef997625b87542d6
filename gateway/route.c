/*  =========================================================================
    route — the gateway's HTTP routes, as a pure function

    The table and the rules are in route.h. This file depends only on
    libkiln (name validation) and libc, so kiln-selftest can run it.
    =========================================================================
*/
#include "route.h"
#include "kiln_keys.h"
#include "kiln_util.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

//  More segments than any route has, with room for deep endpoint paths.
#define SEGMENTS_MAX 64

//  The request path split into decoded segments. Decoding never makes a
//  segment longer, so buf holds them all, NUL-terminated one after another.
typedef struct {
    char buf [KILN_ROUTE_RAW_PATH_MAX + SEGMENTS_MAX + 1];
    const char *seg [SEGMENTS_MAX];
    size_t len [SEGMENTS_MAX];
    size_t count;
} s_path_t;

static const char *s_reserved_owners [] = {
    "queue", "v1", "files", "health", "metrics", ".well-known", NULL
};

static void
s_clear (kiln_route_t *self)
{
    self->kind = KILN_ROUTE_ERROR;
    self->status = 0;
    self->error_type = NULL;
    self->detail [0] = 0;
    self->allow [0] = 0;
    self->app [0] = 0;
    self->path [0] = 0;
    self->id [0] = 0;
}

static kiln_route_kind_t
s_error (kiln_route_t *self, int status, const char *error_type, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

static kiln_route_kind_t
s_error (kiln_route_t *self, int status, const char *error_type, const char *format, ...)
{
    //  An error answers for the whole route: nothing half-filled leaks out
    s_clear (self);
    self->status = status;
    self->error_type = error_type;
    va_list args;
    va_start (args, format);
    vsnprintf (self->detail, sizeof self->detail, format, args);
    va_end (args);
    return KILN_ROUTE_ERROR;
}

static kiln_route_kind_t
s_not_found (kiln_route_t *self)
{
    return s_error (self, 404, "not_found", "Not found");
}

static kiln_route_kind_t
s_bad_method (kiln_route_t *self, const char *method, const char *allow)
{
    s_error (self, 405, "method_not_allowed",
             "Method %s is not allowed here; allowed: %s", method, allow);
    snprintf (self->allow, sizeof self->allow, "%s", allow);
    return KILN_ROUTE_ERROR;
}

static bool
s_is_get (const char *method)
{
    return strcmp (method, "GET") == 0 || strcmp (method, "HEAD") == 0;
}

//  Splits and decodes raw_path into path. Returns NULL, or a reason the
//  path is malformed (a static string).
static const char *
s_split (s_path_t *path, const char *raw_path)
{
    path->count = 0;
    if (!raw_path || raw_path [0] != '/')
        return "Path must start with '/'";
    if (strlen (raw_path) > KILN_ROUTE_RAW_PATH_MAX)
        return "Path is too long";

    const char *cursor = raw_path + 1;
    char *out = path->buf;
    while (true) {
        const char *end = strchr (cursor, '/');
        if (!end)
            end = cursor + strlen (cursor);
        bool last = *end == 0;
        if (end == cursor) {
            //  Only the last segment may be empty: a trailing slash
            if (last)
                break;
            return "Path has an empty segment";
        }
        if (path->count == SEGMENTS_MAX)
            return "Path has too many segments";
        char *start = out;
        for (const char *p = cursor; p < end; p++) {
            unsigned char c = (unsigned char) *p;
            if (c == '%') {
                int high = p + 1 < end ? kiln_hex_value (p [1]) : -1;
                int low = p + 2 < end ? kiln_hex_value (p [2]) : -1;
                if (high < 0 || low < 0)
                    return "Path has a malformed percent-escape";
                c = (unsigned char) (high * 16 + low);
                p += 2;
                if (c == '/')
                    return "Path has an encoded '/' in a segment";
            }
            if (c < 0x20 || c == 0x7f)
                return "Path has a control character";
            *out++ = (char) c;
        }
        *out++ = 0;
        size_t len = (size_t) (out - start - 1);
        if ((len == 1 && start [0] == '.')
        ||  (len == 2 && start [0] == '.' && start [1] == '.'))
            return "Path has a '.' or '..' segment";
        path->seg [path->count] = start;
        path->len [path->count] = len;
        path->count++;
        if (last)
            break;
        cursor = end + 1;
    }
    return NULL;
}

static bool
s_is (const s_path_t *path, size_t index, const char *text)
{
    return index < path->count && strcmp (path->seg [index], text) == 0;
}

//  Sets self->app from segments index, index + 1. False if not valid.
static bool
s_take_app (kiln_route_t *self, const s_path_t *path, size_t index)
{
    const char *owner = path->seg [index];
    const char *app = path->seg [index + 1];
    size_t owner_len = path->len [index];
    size_t app_len = path->len [index + 1];
    if (!kiln_name_part_valid (owner, owner_len)
    ||  !kiln_name_part_valid (app, app_len)
    ||  kiln_route_owner_reserved (owner, owner_len))
        return false;
    snprintf (self->app, sizeof self->app, "%s/%s", owner, app);
    return true;
}

//  Sets self->path to "/" + segments from index on. False if too long.
static bool
s_take_endpoint (kiln_route_t *self, const s_path_t *path, size_t index)
{
    size_t used = 0;
    self->path [0] = 0;
    for (size_t i = index; i < path->count; i++) {
        if (used + 1 + path->len [i] > KILN_ROUTE_PATH_MAX)
            return false;
        self->path [used++] = '/';
        memcpy (self->path + used, path->seg [i], path->len [i]);
        used += path->len [i];
    }
    if (used == 0)
        self->path [used++] = '/';
    self->path [used] = 0;
    return true;
}

static bool
s_take_id (kiln_route_t *self, const s_path_t *path, size_t index)
{
    if (path->len [index] > KILN_ROUTE_ID_MAX || !kiln_id_valid (path->seg [index]))
        return false;
    snprintf (self->id, sizeof self->id, "%s", path->seg [index]);
    return true;
}

//  POST /{owner}/{app}[/...] and POST /queue/{owner}/{app}[/...]: the app
//  starts at segment index.
static kiln_route_kind_t
s_submit (kiln_route_t *self, const s_path_t *path, size_t index, kiln_route_kind_t kind)
{
    if (!s_take_app (self, path, index))
        return s_error (self, 404, "not_found", "No such app: the name is not valid");
    if (!s_take_endpoint (self, path, index + 2))
        return s_error (self, 400, "bad_request", "Endpoint path is too long");
    self->kind = kind;
    return kind;
}

//  /queue/{owner}/{app}/...
static kiln_route_kind_t
s_match_queue (kiln_route_t *self, const char *method, const s_path_t *path)
{
    if (path->count < 3)
        return s_not_found (self);
    bool post = strcmp (method, "POST") == 0;
    //  requests/{id}[/status[/stream] | /cancel]: the queue API; a POST
    //  there is still a submit to that endpoint path, as on fal.
    kiln_route_kind_t kind = KILN_ROUTE_ERROR;
    const char *wants = NULL;
    const char *allow = NULL;
    if (s_is (path, 3, "requests") && path->count >= 5) {
        size_t rest = path->count - 5;
        if (rest == 0) {
            kind = KILN_ROUTE_QUEUE_RESULT;
            wants = "GET";
            allow = "GET, HEAD, POST";
        }
        else
        if (rest == 1 && s_is (path, 5, "status")) {
            kind = KILN_ROUTE_QUEUE_STATUS;
            wants = "GET";
            allow = "GET, HEAD, POST";
        }
        else
        if (rest == 2 && s_is (path, 5, "status") && s_is (path, 6, "stream")) {
            kind = KILN_ROUTE_QUEUE_STREAM;
            wants = "GET";
            allow = "GET, POST";
        }
        else
        if (rest == 1 && s_is (path, 5, "cancel")) {
            kind = KILN_ROUTE_QUEUE_CANCEL;
            wants = "PUT";
            allow = "POST, PUT";
        }
    }
    if (post)
        return s_submit (self, path, 1, KILN_ROUTE_QUEUE_SUBMIT);
    if (kind == KILN_ROUTE_ERROR)
        return s_bad_method (self, method, "POST");

    bool method_ok = strcmp (wants, "GET") == 0
        ? (kind == KILN_ROUTE_QUEUE_STREAM ? strcmp (method, "GET") == 0 : s_is_get (method))
        : strcmp (method, wants) == 0;
    if (!method_ok)
        return s_bad_method (self, method, allow);
    if (!s_take_app (self, path, 1))
        return s_error (self, 404, "not_found", "No such app: the name is not valid");
    if (!s_take_id (self, path, 4))
        return s_error (self, 404, "not_found", "Request not found");
    self->kind = kind;
    return kind;
}

//  /v1/...
static kiln_route_kind_t
s_match_v1 (kiln_route_t *self, const char *method, const s_path_t *path)
{
    if (s_is (path, 1, "apps")) {
        if (path->count == 2) {
            if (s_is_get (method))
                return self->kind = KILN_ROUTE_APPS_LIST;
            if (strcmp (method, "POST") == 0)
                return self->kind = KILN_ROUTE_APPS_DEPLOY;
            return s_bad_method (self, method, "GET, HEAD, POST");
        }
        if (path->count == 4) {
            kiln_route_kind_t kind = KILN_ROUTE_ERROR;
            if (s_is_get (method))
                kind = KILN_ROUTE_APP_GET;
            else
            if (strcmp (method, "PATCH") == 0)
                kind = KILN_ROUTE_APP_SCALE;
            else
            if (strcmp (method, "DELETE") == 0)
                kind = KILN_ROUTE_APP_DELETE;
            else
                return s_bad_method (self, method, "GET, HEAD, PATCH, DELETE");
            if (!s_take_app (self, path, 2))
                return s_error (self, 404, "not_found", "No such app: the name is not valid");
            return self->kind = kind;
        }
        if (path->count == 5 && (s_is (path, 4, "revisions") || s_is (path, 4, "rollback"))) {
            bool revisions = s_is (path, 4, "revisions");
            if (revisions && !s_is_get (method))
                return s_bad_method (self, method, "GET, HEAD");
            if (!revisions && strcmp (method, "POST") != 0)
                return s_bad_method (self, method, "POST");
            if (!s_take_app (self, path, 2))
                return s_error (self, 404, "not_found", "No such app: the name is not valid");
            return self->kind = revisions ? KILN_ROUTE_APP_REVISIONS : KILN_ROUTE_APP_ROLLBACK;
        }
        if ((path->count == 5 || path->count == 6) && s_is (path, 4, "secrets")) {
            bool one = path->count == 6;
            kiln_route_kind_t kind = KILN_ROUTE_ERROR;
            if (one && strcmp (method, "DELETE") == 0)
                kind = KILN_ROUTE_SECRET_UNSET;
            else
            if (!one && strcmp (method, "PUT") == 0)
                kind = KILN_ROUTE_SECRETS_SET;
            else
            if (!one && s_is_get (method))
                kind = KILN_ROUTE_SECRETS_LIST;
            else
                return s_bad_method (self, method, one ? "DELETE" : "GET, HEAD, PUT");
            if (one && !kiln_route_secret_name_valid (path->seg [5], path->len [5]))
                return s_error (self, 400, "bad_request",
                                "A secret's name is [A-Z_][A-Z0-9_]*, at most 64 characters, "
                                "not starting with KILN_");
            if (!s_take_app (self, path, 2))
                return s_error (self, 404, "not_found", "No such app: the name is not valid");
            if (one)
                strcpy (self->id, path->seg [5]);
            return self->kind = kind;
        }
        if (path->count == 5 && s_is (path, 4, "logs")) {
            if (!s_is_get (method))
                return s_bad_method (self, method, "GET, HEAD");
            if (!s_take_app (self, path, 2))
                return s_error (self, 404, "not_found", "No such app: the name is not valid");
            return self->kind = KILN_ROUTE_APP_LOGS;
        }
        return s_not_found (self);
    }
    if (s_is (path, 1, "requests") && (path->count == 3
    ||  (path->count == 4 && s_is (path, 3, "cancel")))) {
        bool cancel = path->count == 4;
        if (cancel && strcmp (method, "PUT") != 0)
            return s_bad_method (self, method, "PUT");
        if (!cancel && !s_is_get (method))
            return s_bad_method (self, method, "GET, HEAD");
        if (!s_take_id (self, path, 2))
            return s_error (self, 404, "not_found", "Request not found");
        return self->kind = cancel ? KILN_ROUTE_REQUEST_CANCEL : KILN_ROUTE_REQUEST_GET;
    }
    if ((s_is (path, 1, "runners") || s_is (path, 1, "workers")) && path->count == 2) {
        if (!s_is_get (method))
            return s_bad_method (self, method, "GET, HEAD");
        return self->kind = s_is (path, 1, "runners")
            ? KILN_ROUTE_RUNNERS_LIST : KILN_ROUTE_WORKERS_LIST;
    }
    if (s_is (path, 1, "keys") && path->count == 2) {
        if (s_is_get (method))
            return self->kind = KILN_ROUTE_KEYS_LIST;
        if (strcmp (method, "POST") == 0)
            return self->kind = KILN_ROUTE_KEYS_CREATE;
        return s_bad_method (self, method, "GET, HEAD, POST");
    }
    if (s_is (path, 1, "keys") && path->count == 3) {
        if (strcmp (method, "DELETE") != 0)
            return s_bad_method (self, method, "DELETE");
        if (!s_take_id (self, path, 2))
            return s_error (self, 404, "not_found", "Key not found");
        return self->kind = KILN_ROUTE_KEY_REVOKE;
    }
    if (s_is (path, 1, "artifacts") && path->count == 3) {
        if (strcmp (method, "PUT") != 0)
            return s_bad_method (self, method, "PUT");
        if (!kiln_route_sha256_valid (path->seg [2]))
            return s_error (self, 400, "bad_request",
                            "Artifact id must be a SHA-256 in lower-case hex");
        snprintf (self->id, sizeof self->id, "%s", path->seg [2]);
        return self->kind = KILN_ROUTE_ARTIFACT_PUT;
    }
    return s_not_found (self);
}

kiln_route_kind_t
kiln_route_match (kiln_route_t *self, const char *method, const char *raw_path)
{
    assert (self);
    s_clear (self);
    if (!method)
        method = "";

    s_path_t path;
    const char *malformed = s_split (&path, raw_path);
    if (malformed)
        return s_error (self, 400, "bad_request", "%s", malformed);
    if (path.count == 0)
        return s_not_found (self);

    //  One-segment routes
    if (path.count == 1) {
        if (s_is (&path, 0, "health") || s_is (&path, 0, "metrics")) {
            if (!s_is_get (method))
                return s_bad_method (self, method, "GET, HEAD");
            return self->kind = s_is (&path, 0, "health")
                ? KILN_ROUTE_HEALTH : KILN_ROUTE_METRICS;
        }
        return s_not_found (self);
    }
    if (s_is (&path, 0, "queue"))
        return s_match_queue (self, method, &path);
    if (s_is (&path, 0, "v1"))
        return s_match_v1 (self, method, &path);
    if (s_is (&path, 0, "files")) {
        if (path.count > 3)
            return s_not_found (self);
        if (!s_is_get (method))
            return s_bad_method (self, method, "GET, HEAD");
        if (!s_take_id (self, &path, 1))
            return s_error (self, 404, "not_found", "File not found");
        return self->kind = KILN_ROUTE_FILE;
    }
    if (s_is (&path, 0, ".well-known")) {
        if (path.count != 2 || !s_is (&path, 1, "jwks.json"))
            return s_not_found (self);
        if (!s_is_get (method))
            return s_bad_method (self, method, "GET, HEAD");
        return self->kind = KILN_ROUTE_JWKS;
    }
    //  /{owner}/{app}[/...]: reserved owners land here only with paths
    //  no route of theirs takes
    if (kiln_route_owner_reserved (path.seg [0], path.len [0]))
        return s_not_found (self);
    if (strcmp (method, "POST") != 0)
        return s_bad_method (self, method, "POST");
    return s_submit (self, &path, 0, KILN_ROUTE_SYNC);
}

bool
kiln_route_owner_reserved (const char *owner, size_t len)
{
    for (const char **name = s_reserved_owners; *name; name++)
        if (strlen (*name) == len && memcmp (*name, owner, len) == 0)
            return true;
    return false;
}

bool
kiln_route_secret_name_valid (const char *name, size_t len)
{
    if (!name || len == 0 || len > KILN_ROUTE_SECRET_NAME_MAX)
        return false;
    if (len >= 5 && memcmp (name, "KILN_", 5) == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name [i];
        bool ok = (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

bool
kiln_route_sha256_valid (const char *text)
{
    if (!text || strlen (text) != 64)
        return false;
    for (const char *p = text; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

const char *
kiln_route_kind_name (kiln_route_kind_t kind)
{
    switch (kind) {
        case KILN_ROUTE_ERROR:        return "ERROR";
        case KILN_ROUTE_SYNC:         return "SYNC";
        case KILN_ROUTE_QUEUE_SUBMIT: return "QUEUE_SUBMIT";
        case KILN_ROUTE_QUEUE_STATUS: return "QUEUE_STATUS";
        case KILN_ROUTE_QUEUE_STREAM: return "QUEUE_STREAM";
        case KILN_ROUTE_QUEUE_RESULT: return "QUEUE_RESULT";
        case KILN_ROUTE_QUEUE_CANCEL: return "QUEUE_CANCEL";
        case KILN_ROUTE_FILE:         return "FILE";
        case KILN_ROUTE_HEALTH:       return "HEALTH";
        case KILN_ROUTE_METRICS:      return "METRICS";
        case KILN_ROUTE_ARTIFACT_PUT: return "ARTIFACT_PUT";
        case KILN_ROUTE_APPS_LIST:    return "APPS_LIST";
        case KILN_ROUTE_APPS_DEPLOY:  return "APPS_DEPLOY";
        case KILN_ROUTE_APP_GET:      return "APP_GET";
        case KILN_ROUTE_APP_DELETE:   return "APP_DELETE";
        case KILN_ROUTE_APP_SCALE:    return "APP_SCALE";
        case KILN_ROUTE_RUNNERS_LIST: return "RUNNERS_LIST";
        case KILN_ROUTE_WORKERS_LIST: return "WORKERS_LIST";
        case KILN_ROUTE_APP_REVISIONS: return "APP_REVISIONS";
        case KILN_ROUTE_APP_ROLLBACK: return "APP_ROLLBACK";
        case KILN_ROUTE_REQUEST_GET:  return "REQUEST_GET";
        case KILN_ROUTE_REQUEST_CANCEL: return "REQUEST_CANCEL";
        case KILN_ROUTE_APP_LOGS:     return "APP_LOGS";
        case KILN_ROUTE_KEYS_LIST:    return "KEYS_LIST";
        case KILN_ROUTE_KEYS_CREATE:  return "KEYS_CREATE";
        case KILN_ROUTE_KEY_REVOKE:   return "KEY_REVOKE";
        case KILN_ROUTE_JWKS:         return "JWKS";
        case KILN_ROUTE_SECRETS_SET:  return "SECRETS_SET";
        case KILN_ROUTE_SECRETS_LIST: return "SECRETS_LIST";
        case KILN_ROUTE_SECRET_UNSET: return "SECRET_UNSET";
    }
    return "?";
}


//  --------------------------------------------------------------------------
//  Selftest

#define UUID "0f8fad5b-d9cb-469f-a165-70867728950e"
#define SHA  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

//  Expects a route kind with app, path and id (NULL: must be empty).
static void
s_expect (const char *method, const char *raw_path, kiln_route_kind_t kind,
          const char *app, const char *path, const char *id)
{
    kiln_route_t route;
    kiln_route_kind_t got = kiln_route_match (&route, method, raw_path);
    if (got != kind || route.kind != kind) {
        fprintf (stderr, "route: %s %s: got %s (%d %s), want %s\n", method, raw_path,
                 kiln_route_kind_name (got), route.status, route.detail,
                 kiln_route_kind_name (kind));
        assert (false);
    }
    assert (strcmp (route.app, app ? app : "") == 0);
    assert (strcmp (route.path, path ? path : "") == 0);
    assert (strcmp (route.id, id ? id : "") == 0);
}

//  Expects an error with this status (and Allow, for a 405).
static void
s_expect_error (const char *method, const char *raw_path, int status, const char *allow)
{
    kiln_route_t route;
    kiln_route_kind_t got = kiln_route_match (&route, method, raw_path);
    if (got != KILN_ROUTE_ERROR || route.status != status) {
        fprintf (stderr, "route: %s %s: got %s (%d), want error %d\n", method, raw_path,
                 kiln_route_kind_name (got), route.status, status);
        assert (false);
    }
    assert (route.error_type);
    assert (route.detail [0]);
    assert (route.app [0] == 0 && route.path [0] == 0 && route.id [0] == 0);
    if (status == 400)
        assert (strcmp (route.error_type, "bad_request") == 0);
    if (status == 404)
        assert (strcmp (route.error_type, "not_found") == 0);
    if (status == 405) {
        assert (strcmp (route.error_type, "method_not_allowed") == 0);
        assert (allow && strcmp (route.allow, allow) == 0);
    }
    else
        assert (route.allow [0] == 0);
}

void
kiln_route_test (bool verbose)
{
    if (verbose)
        printf (" * route: ");

    //  Sync calls
    s_expect ("POST", "/local/echo", KILN_ROUTE_SYNC, "local/echo", "/", NULL);
    s_expect ("POST", "/local/echo/", KILN_ROUTE_SYNC, "local/echo", "/", NULL);
    s_expect ("POST", "/local/echo/sub", KILN_ROUTE_SYNC, "local/echo", "/sub", NULL);
    s_expect ("POST", "/local/echo/sub/", KILN_ROUTE_SYNC, "local/echo", "/sub", NULL);
    s_expect ("POST", "/local/echo/a/b/c", KILN_ROUTE_SYNC, "local/echo", "/a/b/c", NULL);
    s_expect ("POST", "/fal-ai/flux_1/dev", KILN_ROUTE_SYNC, "fal-ai/flux_1", "/dev", NULL);
    s_expect ("POST", "/0wner/9app", KILN_ROUTE_SYNC, "0wner/9app", "/", NULL);
    //  Percent-encoding is decoded per segment
    s_expect ("POST", "/local/echo/a%20b", KILN_ROUTE_SYNC, "local/echo", "/a b", NULL);
    s_expect ("POST", "/loc%61l/echo", KILN_ROUTE_SYNC, "local/echo", "/", NULL);
    s_expect ("POST", "/local/echo/%7Eu%c3%a9", KILN_ROUTE_SYNC, "local/echo", "/~u\xc3\xa9", NULL);
    //  Wrong method on an app
    s_expect_error ("GET", "/local/echo", 405, "POST");
    s_expect_error ("PUT", "/local/echo/sub", 405, "POST");
    s_expect_error ("DELETE", "/local/echo", 405, "POST");
    //  Bad names: not routable apps
    s_expect_error ("POST", "/Local/echo", 404, NULL);
    s_expect_error ("POST", "/local/Echo", 404, NULL);
    s_expect_error ("POST", "/-local/echo", 404, NULL);
    s_expect_error ("POST", "/local/_echo", 404, NULL);
    s_expect_error ("POST", "/lo.cal/echo", 404, NULL);
    s_expect_error ("POST", "/local/ec%20ho", 404, NULL);
    s_expect_error ("POST", "/local", 404, NULL);
    s_expect_error ("GET", "/local", 404, NULL);
    s_expect_error ("POST", "/", 404, NULL);
    s_expect_error ("GET", "/", 404, NULL);
    //  Name lengths: 63 is the limit for each part
    char longest [KILN_NAME_MAX + 1];
    memset (longest, 'a', KILN_NAME_MAX);
    longest [KILN_NAME_MAX] = 0;
    char path [300];
    char app [200];
    snprintf (path, sizeof path, "/%s/%s/x", longest, longest);
    snprintf (app, sizeof app, "%s/%s", longest, longest);
    s_expect ("POST", path, KILN_ROUTE_SYNC, app, "/x", NULL);
    snprintf (path, sizeof path, "/%sa/echo", longest);
    s_expect_error ("POST", path, 404, NULL);
    snprintf (path, sizeof path, "/local/%sa", longest);
    s_expect_error ("POST", path, 404, NULL);
    //  Reserved owners
    s_expect_error ("POST", "/queue/echo", 404, NULL);
    s_expect_error ("POST", "/v1/echo", 404, NULL);
    s_expect_error ("POST", "/files/echo/x/y", 404, NULL);
    s_expect_error ("POST", "/files/echo/x", 405, "GET, HEAD");     //  a file URL
    s_expect_error ("POST", "/health/echo", 404, NULL);
    s_expect_error ("POST", "/metrics/echo", 404, NULL);
    s_expect_error ("POST", "/queue/queue/echo", 404, NULL);
    s_expect_error ("POST", "/queue/v1/echo", 404, NULL);
    s_expect_error ("POST", "/queue/health/echo/x", 404, NULL);
    s_expect_error ("GET", "/v1/apps/files/echo", 404, NULL);
    s_expect_error ("POST", "/%71ueue/echo", 404, NULL);    //  "queue", encoded
    assert (kiln_route_owner_reserved ("metrics", 7));
    assert (kiln_route_owner_reserved ("queue/x", 5));
    assert (!kiln_route_owner_reserved ("queues", 6));
    assert (!kiln_route_owner_reserved ("local", 5));

    //  Malformed paths
    s_expect_error ("POST", "/local/echo/../x", 400, NULL);
    s_expect_error ("POST", "/local/echo/./x", 400, NULL);
    s_expect_error ("POST", "/local/echo/..", 400, NULL);
    s_expect_error ("POST", "/local/echo/%2e%2e", 400, NULL);
    s_expect_error ("POST", "/local/echo/%2E", 400, NULL);
    s_expect_error ("POST", "/../local/echo", 400, NULL);
    s_expect_error ("POST", "//local/echo", 400, NULL);
    s_expect_error ("POST", "/local//echo", 400, NULL);
    s_expect_error ("POST", "/local/echo//x", 400, NULL);
    s_expect_error ("POST", "/local/echo/x//", 400, NULL);
    s_expect_error ("GET", "//", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%2Fb", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%2fb", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%00b", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%0ab", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%7f", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%2", 400, NULL);
    s_expect_error ("POST", "/local/echo/a%zz", 400, NULL);
    s_expect_error ("POST", "/local/echo/%/x", 400, NULL);
    s_expect_error ("POST", "/local/echo/a\tb", 400, NULL);
    s_expect_error ("POST", "local/echo", 400, NULL);
    s_expect_error ("POST", "", 400, NULL);
    s_expect_error ("POST", NULL, 400, NULL);
    s_expect_error (NULL, "/local/echo", 405, "POST");
    //  Too long: the raw path, the endpoint path, too many segments
    char huge [KILN_ROUTE_RAW_PATH_MAX + 100];
    strcpy (huge, "/local/echo/");
    memset (huge + 12, 'x', sizeof huge - 13);
    huge [sizeof huge - 1] = 0;
    s_expect_error ("POST", huge, 400, NULL);
    huge [KILN_ROUTE_PATH_MAX + 12] = 0;           //  endpoint path of 1025
    s_expect_error ("POST", huge, 400, NULL);
    huge [KILN_ROUTE_PATH_MAX + 11] = 0;           //  1024: just fits
    kiln_route_t route;
    assert (kiln_route_match (&route, "POST", huge) == KILN_ROUTE_SYNC);
    assert (strlen (route.path) == KILN_ROUTE_PATH_MAX);
    char deep [SEGMENTS_MAX * 2 + 20];
    strcpy (deep, "/local/echo");
    for (int i = 0; i < SEGMENTS_MAX - 2; i++)
        strcat (deep, "/x");
    assert (kiln_route_match (&route, "POST", deep) == KILN_ROUTE_SYNC);
    strcat (deep, "/x");
    s_expect_error ("POST", deep, 400, NULL);

    //  Queue API
    s_expect ("POST", "/queue/local/echo", KILN_ROUTE_QUEUE_SUBMIT, "local/echo", "/", NULL);
    s_expect ("POST", "/queue/local/echo/", KILN_ROUTE_QUEUE_SUBMIT, "local/echo", "/", NULL);
    s_expect ("POST", "/queue/local/echo/sub/x", KILN_ROUTE_QUEUE_SUBMIT, "local/echo", "/sub/x", NULL);
    s_expect ("GET", "/queue/local/echo/requests/" UUID "/status",
              KILN_ROUTE_QUEUE_STATUS, "local/echo", NULL, UUID);
    s_expect ("HEAD", "/queue/local/echo/requests/" UUID "/status/",
              KILN_ROUTE_QUEUE_STATUS, "local/echo", NULL, UUID);
    s_expect ("GET", "/queue/local/echo/requests/" UUID "/status/stream",
              KILN_ROUTE_QUEUE_STREAM, "local/echo", NULL, UUID);
    s_expect ("GET", "/queue/local/echo/requests/" UUID,
              KILN_ROUTE_QUEUE_RESULT, "local/echo", NULL, UUID);
    s_expect ("PUT", "/queue/local/echo/requests/" UUID "/cancel",
              KILN_ROUTE_QUEUE_CANCEL, "local/echo", NULL, UUID);
    //  POST under requests/ is a submit to that endpoint path
    s_expect ("POST", "/queue/local/echo/requests/" UUID, KILN_ROUTE_QUEUE_SUBMIT,
              "local/echo", "/requests/" UUID, NULL);
    s_expect ("POST", "/queue/local/echo/requests/" UUID "/cancel", KILN_ROUTE_QUEUE_SUBMIT,
              "local/echo", "/requests/" UUID "/cancel", NULL);
    s_expect ("POST", "/queue/local/echo/requests", KILN_ROUTE_QUEUE_SUBMIT,
              "local/echo", "/requests", NULL);
    //  Wrong methods
    s_expect_error ("GET", "/queue/local/echo", 405, "POST");
    s_expect_error ("GET", "/queue/local/echo/sub", 405, "POST");
    s_expect_error ("GET", "/queue/local/echo/requests", 405, "POST");
    s_expect_error ("GET", "/queue/local/echo/requests/" UUID "/other", 405, "POST");
    s_expect_error ("DELETE", "/queue/local/echo/requests/" UUID, 405, "GET, HEAD, POST");
    s_expect_error ("PUT", "/queue/local/echo/requests/" UUID "/status", 405, "GET, HEAD, POST");
    s_expect_error ("HEAD", "/queue/local/echo/requests/" UUID "/status/stream", 405, "GET, POST");
    s_expect_error ("GET", "/queue/local/echo/requests/" UUID "/cancel", 405, "POST, PUT");
    s_expect_error ("DELETE", "/queue/local/echo/requests/" UUID "/cancel", 405, "POST, PUT");
    //  Bad ids and names on the queue
    s_expect_error ("GET", "/queue/local/echo/requests/NOT-AN-ID/status", 404, NULL);
    s_expect_error ("GET", "/queue/local/echo/requests/xyz", 404, NULL);
    s_expect_error ("PUT", "/queue/local/echo/requests/" SHA "0/cancel", 404, NULL);
    s_expect_error ("GET", "/queue/Local/echo/requests/" UUID, 404, NULL);
    s_expect_error ("POST", "/queue/Local/echo", 404, NULL);
    s_expect_error ("POST", "/queue/local", 404, NULL);
    s_expect_error ("POST", "/queue", 404, NULL);
    s_expect_error ("GET", "/queue/local/echo/requests/%2e%2e/status", 400, NULL);

    //  Files
    s_expect ("GET", "/files/" UUID, KILN_ROUTE_FILE, NULL, NULL, UUID);
    s_expect ("HEAD", "/files/" UUID "/", KILN_ROUTE_FILE, NULL, NULL, UUID);
    s_expect ("GET", "/files/" UUID "/out.png", KILN_ROUTE_FILE, NULL, NULL, UUID);
    s_expect_error ("POST", "/files/" UUID, 405, "GET, HEAD");
    s_expect_error ("GET", "/files/BAD", 404, NULL);
    s_expect_error ("GET", "/files", 404, NULL);
    s_expect_error ("GET", "/files/" UUID "/a/b", 404, NULL);

    //  Health and metrics
    s_expect ("GET", "/health", KILN_ROUTE_HEALTH, NULL, NULL, NULL);
    s_expect ("GET", "/health/", KILN_ROUTE_HEALTH, NULL, NULL, NULL);
    s_expect ("HEAD", "/health", KILN_ROUTE_HEALTH, NULL, NULL, NULL);
    s_expect ("GET", "/metrics", KILN_ROUTE_METRICS, NULL, NULL, NULL);
    s_expect_error ("POST", "/health", 405, "GET, HEAD");
    s_expect_error ("DELETE", "/metrics", 405, "GET, HEAD");
    s_expect_error ("GET", "/healthz", 404, NULL);

    //  The webhook signing key set, published for anyone
    s_expect ("GET", "/.well-known/jwks.json", KILN_ROUTE_JWKS, NULL, NULL, NULL);
    s_expect ("HEAD", "/.well-known/jwks.json", KILN_ROUTE_JWKS, NULL, NULL, NULL);
    s_expect ("GET", "/.well-known/jwks%2ejson", KILN_ROUTE_JWKS, NULL, NULL, NULL);
    s_expect_error ("POST", "/.well-known/jwks.json", 405, "GET, HEAD");
    s_expect_error ("GET", "/.well-known", 404, NULL);
    s_expect_error ("GET", "/.well-known/other", 404, NULL);
    s_expect_error ("GET", "/.well-known/jwks.json/x", 404, NULL);
    s_expect_error ("POST", "/.well-known/jwks", 404, NULL);
    s_expect_error ("POST", "/queue/.well-known/jwks", 404, NULL);
    assert (kiln_route_owner_reserved (".well-known", 11));

    //  Management API
    s_expect ("GET", "/v1/apps", KILN_ROUTE_APPS_LIST, NULL, NULL, NULL);
    s_expect ("GET", "/v1/apps/", KILN_ROUTE_APPS_LIST, NULL, NULL, NULL);
    s_expect ("POST", "/v1/apps", KILN_ROUTE_APPS_DEPLOY, NULL, NULL, NULL);
    s_expect ("GET", "/v1/apps/local/echo", KILN_ROUTE_APP_GET, "local/echo", NULL, NULL);
    s_expect ("DELETE", "/v1/apps/local/echo", KILN_ROUTE_APP_DELETE, "local/echo", NULL, NULL);
    s_expect ("PUT", "/v1/artifacts/" SHA, KILN_ROUTE_ARTIFACT_PUT, NULL, NULL, SHA);
    s_expect ("PATCH", "/v1/apps/local/echo", KILN_ROUTE_APP_SCALE, "local/echo", NULL, NULL);
    s_expect ("PATCH", "/v1/apps/local/echo/", KILN_ROUTE_APP_SCALE, "local/echo", NULL, NULL);
    s_expect ("GET", "/v1/runners", KILN_ROUTE_RUNNERS_LIST, NULL, NULL, NULL);
    s_expect ("GET", "/v1/runners/", KILN_ROUTE_RUNNERS_LIST, NULL, NULL, NULL);
    s_expect ("HEAD", "/v1/runners", KILN_ROUTE_RUNNERS_LIST, NULL, NULL, NULL);
    s_expect ("GET", "/v1/workers", KILN_ROUTE_WORKERS_LIST, NULL, NULL, NULL);
    s_expect_error ("DELETE", "/v1/apps", 405, "GET, HEAD, POST");
    s_expect_error ("PATCH", "/v1/apps", 405, "GET, HEAD, POST");
    s_expect_error ("POST", "/v1/apps/local/echo", 405, "GET, HEAD, PATCH, DELETE");
    s_expect_error ("PUT", "/v1/apps/local/echo", 405, "GET, HEAD, PATCH, DELETE");
    s_expect_error ("PATCH", "/v1/apps/Local/echo", 404, NULL);
    s_expect_error ("PATCH", "/v1/apps/v1/echo", 404, NULL);
    s_expect_error ("POST", "/v1/runners", 405, "GET, HEAD");
    s_expect_error ("DELETE", "/v1/workers", 405, "GET, HEAD");
    s_expect_error ("GET", "/v1/runners/r-1", 404, NULL);
    s_expect_error ("GET", "/v1/workers/w-1/x", 404, NULL);
    s_expect_error ("GET", "/v1/artifacts/" SHA, 405, "PUT");
    s_expect_error ("GET", "/v1/apps/local", 404, NULL);
    s_expect_error ("GET", "/v1/apps/local/echo/x", 404, NULL);
    //  Revisions and rollback
    s_expect ("GET", "/v1/apps/local/echo/revisions", KILN_ROUTE_APP_REVISIONS,
              "local/echo", NULL, NULL);
    s_expect ("HEAD", "/v1/apps/local/echo/revisions/", KILN_ROUTE_APP_REVISIONS,
              "local/echo", NULL, NULL);
    s_expect ("POST", "/v1/apps/local/echo/rollback", KILN_ROUTE_APP_ROLLBACK,
              "local/echo", NULL, NULL);
    s_expect_error ("POST", "/v1/apps/local/echo/revisions", 405, "GET, HEAD");
    s_expect_error ("GET", "/v1/apps/local/echo/rollback", 405, "POST");
    s_expect_error ("GET", "/v1/apps/Local/echo/revisions", 404, NULL);
    s_expect_error ("POST", "/v1/apps/v1/echo/rollback", 404, NULL);
    s_expect_error ("GET", "/v1/apps/local/echo/revisions/1", 404, NULL);
    //  An app's log stream
    s_expect ("GET", "/v1/apps/local/echo/logs", KILN_ROUTE_APP_LOGS, "local/echo", NULL, NULL);
    s_expect ("HEAD", "/v1/apps/local/echo/logs/", KILN_ROUTE_APP_LOGS, "local/echo", NULL, NULL);
    s_expect_error ("POST", "/v1/apps/local/echo/logs", 405, "GET, HEAD");
    s_expect_error ("GET", "/v1/apps/Local/echo/logs", 404, NULL);
    s_expect_error ("GET", "/v1/apps/local/echo/logs/x", 404, NULL);
    s_expect ("PUT", "/v1/apps/local/echo/secrets", KILN_ROUTE_SECRETS_SET, "local/echo", NULL, NULL);
    s_expect ("GET", "/v1/apps/local/echo/secrets/", KILN_ROUTE_SECRETS_LIST, "local/echo", NULL, NULL);
    s_expect ("HEAD", "/v1/apps/local/echo/secrets", KILN_ROUTE_SECRETS_LIST, "local/echo", NULL, NULL);
    s_expect ("DELETE", "/v1/apps/local/echo/secrets/HF_TOKEN", KILN_ROUTE_SECRET_UNSET,
              "local/echo", NULL, "HF_TOKEN");
    s_expect ("DELETE", "/v1/apps/local/echo/secrets/_X9", KILN_ROUTE_SECRET_UNSET,
              "local/echo", NULL, "_X9");
    s_expect_error ("POST", "/v1/apps/local/echo/secrets", 405, "GET, HEAD, PUT");
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets", 405, "GET, HEAD, PUT");
    s_expect_error ("GET", "/v1/apps/local/echo/secrets/HF_TOKEN", 405, "DELETE");
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets/hf_token", 400, NULL);
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets/9X", 400, NULL);
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets/KILN_KEY", 400, NULL);
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets/A%3DB", 400, NULL);
    s_expect_error ("DELETE", "/v1/apps/Local/echo/secrets/X", 404, NULL);
    s_expect_error ("DELETE", "/v1/apps/local/echo/secrets/X/Y", 404, NULL);
    assert (kiln_route_secret_name_valid ("A", 1));
    assert (!kiln_route_secret_name_valid ("", 0));
    assert (!kiln_route_secret_name_valid ("KILN_", 5));
    assert (kiln_route_secret_name_valid ("KILNX", 5));
    {
        char long_name [KILN_ROUTE_SECRET_NAME_MAX + 2];
        memset (long_name, 'A', sizeof long_name);
        assert (kiln_route_secret_name_valid (long_name, KILN_ROUTE_SECRET_NAME_MAX));
        assert (!kiln_route_secret_name_valid (long_name, KILN_ROUTE_SECRET_NAME_MAX + 1));
    }
    //  API keys
    s_expect ("GET", "/v1/keys", KILN_ROUTE_KEYS_LIST, NULL, NULL, NULL);
    s_expect ("POST", "/v1/keys/", KILN_ROUTE_KEYS_CREATE, NULL, NULL, NULL);
    s_expect ("DELETE", "/v1/keys/" UUID, KILN_ROUTE_KEY_REVOKE, NULL, NULL, UUID);
    s_expect_error ("PUT", "/v1/keys", 405, "GET, HEAD, POST");
    s_expect_error ("GET", "/v1/keys/" UUID, 405, "DELETE");
    s_expect_error ("DELETE", "/v1/keys/NOT-AN-ID", 404, NULL);
    s_expect_error ("DELETE", "/v1/keys/" UUID "/x", 404, NULL);
    //  Requests by id alone
    s_expect ("GET", "/v1/requests/" UUID, KILN_ROUTE_REQUEST_GET, NULL, NULL, UUID);
    s_expect ("HEAD", "/v1/requests/" UUID "/", KILN_ROUTE_REQUEST_GET, NULL, NULL, UUID);
    s_expect ("PUT", "/v1/requests/" UUID "/cancel", KILN_ROUTE_REQUEST_CANCEL, NULL, NULL, UUID);
    s_expect_error ("POST", "/v1/requests/" UUID, 405, "GET, HEAD");
    s_expect_error ("GET", "/v1/requests/" UUID "/cancel", 405, "PUT");
    s_expect_error ("GET", "/v1/requests/NOT-AN-ID", 404, NULL);
    s_expect_error ("GET", "/v1/requests", 404, NULL);
    s_expect_error ("GET", "/v1/requests/" UUID "/status", 404, NULL);
    s_expect_error ("GET", "/v1/apps/Local/echo", 404, NULL);
    s_expect_error ("DELETE", "/v1/apps/local/ec.ho", 404, NULL);
    s_expect_error ("GET", "/v1", 404, NULL);
    s_expect_error ("GET", "/v1/", 404, NULL);
    s_expect_error ("GET", "/v1/other", 404, NULL);
    s_expect_error ("PUT", "/v1/artifacts/" SHA "/x", 404, NULL);
    s_expect_error ("PUT", "/v1/artifacts/abc", 400, NULL);
    s_expect_error ("PUT", "/v1/artifacts/9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", 400, NULL);
    assert (kiln_route_sha256_valid (SHA));
    assert (!kiln_route_sha256_valid (SHA "0"));
    assert (!kiln_route_sha256_valid (NULL));
    assert (!kiln_route_sha256_valid (""));

    //  Every kind has a name
    for (int kind = KILN_ROUTE_ERROR; kind <= KILN_ROUTE_KIND_LAST; kind++)
        assert (strcmp (kiln_route_kind_name ((kiln_route_kind_t) kind), "?") != 0);

    if (verbose)
        printf ("OK\n");
}
