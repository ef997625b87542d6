/*  =========================================================================
    fuzz_route — HTTP routing and query parsing (gateway/route.c, plus
    libevent's URI and query parsers as the gateway calls them)

    Input: "METHOD\nREQUEST-TARGET" (no newline: GET and the whole input
    as the target). The target is routed twice: as a raw path, and the
    way the gateway does it (evhttp's URI parser, its path, then the
    query parameters the gateway reads: fal_webhook, logs, app).

    kiln_route_match must always fill the route consistently: an error
    has a status of 400, 404 or 405, a type and a detail, and nothing
    else set (Allow only on a 405); a route names a valid, unreserved app,
    a valid id, and a decoded endpoint path that starts with '/', fits
    KILN_ROUTE_PATH_MAX and holds no empty, "." or ".." segment and no
    control character; and the same input routes the same way twice.
    =========================================================================
*/
#include "fuzz.h"
#include "route.h"
#include "kiln_keys.h"

#include <sys/queue.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <string.h>

static void
s_check_path (const char *path)
{
    size_t len = strlen (path);
    FUZZ_CHECK (len >= 1 && len <= KILN_ROUTE_PATH_MAX && path [0] == '/');
    for (const char *p = path; *p; p++)
        FUZZ_CHECK ((unsigned char) *p >= 0x20 && *p != 0x7f);
    if (len == 1)
        return;
    //  Segments: none empty, none "." or ".."
    const char *segment = path + 1;
    while (true) {
        const char *end = strchr (segment, '/');
        size_t seg_len = end ? (size_t) (end - segment) : strlen (segment);
        FUZZ_CHECK (seg_len > 0);
        FUZZ_CHECK (!(seg_len == 1 && segment [0] == '.'));
        FUZZ_CHECK (!(seg_len == 2 && segment [0] == '.' && segment [1] == '.'));
        if (!end)
            break;
        segment = end + 1;
    }
}

static void
s_check_route (const kiln_route_t *route, kiln_route_kind_t kind)
{
    FUZZ_CHECK (kind == route->kind);
    FUZZ_CHECK (kind >= KILN_ROUTE_ERROR && kind <= KILN_ROUTE_KIND_LAST);
    FUZZ_CHECK (strcmp (kiln_route_kind_name (kind), "?") != 0);
    if (kind == KILN_ROUTE_ERROR) {
        FUZZ_CHECK (route->status == 400 || route->status == 404 || route->status == 405);
        FUZZ_CHECK (route->error_type && route->detail [0]);
        FUZZ_CHECK (memchr (route->detail, 0, sizeof route->detail));
        FUZZ_CHECK ((route->status == 405) == (route->allow [0] != 0));
        FUZZ_CHECK (!route->app [0] && !route->path [0] && !route->id [0]);
        return;
    }
    FUZZ_CHECK (route->status == 0 && !route->allow [0]);
    if (route->app [0]) {
        FUZZ_CHECK (kiln_app_name_valid (route->app));
        FUZZ_CHECK (!kiln_route_owner_reserved (route->app, strcspn (route->app, "/")));
    }
    if (route->path [0])
        s_check_path (route->path);
    if (route->id [0])
        FUZZ_CHECK (kind == KILN_ROUTE_ARTIFACT_PUT
                    ? kiln_route_sha256_valid (route->id) : kiln_id_valid (route->id));
    switch (kind) {
        case KILN_ROUTE_SYNC:
        case KILN_ROUTE_QUEUE_SUBMIT:
            FUZZ_CHECK (route->app [0] && route->path [0] && !route->id [0]);
            break;
        case KILN_ROUTE_QUEUE_STATUS:
        case KILN_ROUTE_QUEUE_STREAM:
        case KILN_ROUTE_QUEUE_RESULT:
        case KILN_ROUTE_QUEUE_CANCEL:
            FUZZ_CHECK (route->app [0] && route->id [0] && !route->path [0]);
            break;
        case KILN_ROUTE_FILE:
        case KILN_ROUTE_ARTIFACT_PUT:
        case KILN_ROUTE_REQUEST_GET:
        case KILN_ROUTE_REQUEST_CANCEL:
            FUZZ_CHECK (route->id [0] && !route->app [0] && !route->path [0]);
            break;
        case KILN_ROUTE_APP_GET:
        case KILN_ROUTE_APP_DELETE:
        case KILN_ROUTE_APP_SCALE:
        case KILN_ROUTE_APP_REVISIONS:
        case KILN_ROUTE_APP_ROLLBACK:
            FUZZ_CHECK (route->app [0] && !route->id [0] && !route->path [0]);
            break;
        case KILN_ROUTE_HEALTH:
        case KILN_ROUTE_METRICS:
        case KILN_ROUTE_APPS_LIST:
        case KILN_ROUTE_APPS_DEPLOY:
        case KILN_ROUTE_RUNNERS_LIST:
        case KILN_ROUTE_WORKERS_LIST:
            FUZZ_CHECK (!route->app [0] && !route->id [0] && !route->path [0]);
            break;
        default:
            break;              //  a newer kind: the checks above hold for it
    }
}

//  Routes twice: the same answer both times.
static void
s_route (const char *method, const char *raw_path)
{
    kiln_route_t first, second;
    kiln_route_kind_t kind = kiln_route_match (&first, method, raw_path);
    s_check_route (&first, kind);
    FUZZ_CHECK (kiln_route_match (&second, method, raw_path) == kind);
    FUZZ_CHECK (first.status == second.status);
    FUZZ_CHECK (strcmp (first.detail, second.detail) == 0);
    FUZZ_CHECK (strcmp (first.allow, second.allow) == 0);
    FUZZ_CHECK (strcmp (first.app, second.app) == 0);
    FUZZ_CHECK (strcmp (first.path, second.path) == 0);
    FUZZ_CHECK (strcmp (first.id, second.id) == 0);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char *text = fuzz_string (data, size);
    if (!text)
        return 0;
    const char *method = "GET";
    char *target = text;
    char *newline = strchr (text, '\n');
    if (newline) {
        *newline = 0;
        method = text;
        target = newline + 1;
    }
    s_route (method, target);
    s_route (NULL, target);

    //  As the gateway sees it: evhttp parses the request target first
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags (target, EVHTTP_URI_NONCONFORMANT);
    if (uri) {
        const char *raw_path = evhttp_uri_get_path (uri);
        s_route (method, raw_path && *raw_path ? raw_path : "/");
        const char *query = evhttp_uri_get_query (uri);
        if (query) {
            struct evkeyvalq params;
            TAILQ_INIT (&params);
            if (evhttp_parse_query_str (query, &params) == 0) {
                const char *names [] = { "fal_webhook", "logs", "app" };
                for (size_t i = 0; i < sizeof names / sizeof names [0]; i++) {
                    const char *value = evhttp_find_header (&params, names [i]);
                    if (value)
                        FUZZ_CHECK (strlen (value) <= strlen (query));
                }
            }
            evhttp_clear_headers (&params);
        }
        evhttp_uri_free (uri);
    }
    free (text);
    return 0;
}
