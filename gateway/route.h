/*  =========================================================================
    route — the gateway's HTTP routes, as a pure function

    kiln_route_match () turns a method and a request path (as it came on
    the wire, still percent-encoded, without the query string) into what
    the gateway should do: a route kind plus the app, endpoint path and id
    it names, or an error (status, error_type, detail, Allow) the gateway
    sends back as it is. No I/O and no allocation, so every rule of the
    public URL space is tested here, in the selftest.

    | method     | path                                            | kind            |
    |------------|-------------------------------------------------|-----------------|
    | POST       | /{owner}/{app}[/{path...}]                      | SYNC            |
    | POST       | /queue/{owner}/{app}[/{path...}]                | QUEUE_SUBMIT    |
    | GET        | /queue/{owner}/{app}/requests/{id}/status       | QUEUE_STATUS    |
    | GET        | /queue/{owner}/{app}/requests/{id}/status/stream| QUEUE_STREAM    |
    | GET        | /queue/{owner}/{app}/requests/{id}              | QUEUE_RESULT    |
    | PUT        | /queue/{owner}/{app}/requests/{id}/cancel       | QUEUE_CANCEL    |
    | GET        | /files/{id}[/{file_name}]                       | FILE            |
    | GET        | /health                                         | HEALTH          |
    | GET        | /metrics                                        | METRICS         |
    | PUT        | /v1/artifacts/{sha256}                          | ARTIFACT_PUT    |
    | GET        | /v1/apps                                        | APPS_LIST       |
    | POST       | /v1/apps                                        | APPS_DEPLOY     |
    | GET        | /v1/apps/{owner}/{app}                          | APP_GET         |
    | PATCH      | /v1/apps/{owner}/{app}                          | APP_SCALE       |
    | DELETE     | /v1/apps/{owner}/{app}                          | APP_DELETE      |
    | GET        | /v1/apps/{owner}/{app}/revisions                | APP_REVISIONS   |
    | POST       | /v1/apps/{owner}/{app}/rollback                 | APP_ROLLBACK    |
    | GET        | /v1/apps/{owner}/{app}/logs                     | APP_LOGS        |
    | GET        | /v1/requests/{id}                               | REQUEST_GET     |
    | PUT        | /v1/requests/{id}/cancel                        | REQUEST_CANCEL  |
    | GET        | /v1/runners                                     | RUNNERS_LIST    |
    | GET        | /v1/workers                                     | WORKERS_LIST    |
    | GET        | /v1/keys                                        | KEYS_LIST       |
    | POST       | /v1/keys                                        | KEYS_CREATE     |
    | DELETE     | /v1/keys/{id}                                   | KEY_REVOKE      |
    | GET        | /.well-known/jwks.json                          | JWKS            |
    | PUT        | /v1/apps/{owner}/{app}/secrets                  | SECRETS_SET     |
    | GET        | /v1/apps/{owner}/{app}/secrets                  | SECRETS_LIST    |
    | DELETE     | /v1/apps/{owner}/{app}/secrets/{name}           | SECRET_UNSET    |

    HEAD is taken wherever GET is. Rules:
    - Each segment is percent-decoded on its own, so "%2F" can never
      make a new segment: a decoded '/', NUL or control character, a bad
      escape, a "." or ".." segment, or an empty segment ("//") → 400.
    - One trailing slash is ignored ("/health/" is "/health").
    - owner names a tenant: queue, v1, files, health, metrics and
      .well-known are reserved. Owner and app names follow
      kiln_name_part_valid; a name that is not valid cannot be deployed,
      so it is 404.
    - A secret's name is [A-Z_][A-Z0-9_]*, at most KILN_ROUTE_SECRET_NAME_MAX
      characters, not starting with KILN_ (kiln_route_secret_name_valid);
      another in the URL is 400. It lands in id.
    - A known path with the wrong method → 405 with the allowed methods.
    - Anything else → 404.
    =========================================================================
*/
#ifndef KILN_ROUTE_H_INCLUDED
#define KILN_ROUTE_H_INCLUDED

#include "kiln_keys.h"

#include <stdbool.h>
#include <stddef.h>

//  Longest endpoint path (decoded) and longest raw request path we take.
#define KILN_ROUTE_PATH_MAX 1024
#define KILN_ROUTE_RAW_PATH_MAX 4096
//  Longest id in a URL: a UUID or a SHA-256 in hex.
#define KILN_ROUTE_ID_MAX 64
//  Longest secret name (it travels in id).
#define KILN_ROUTE_SECRET_NAME_MAX 64

typedef enum {
    KILN_ROUTE_ERROR = 0,       //  not routable: status, error_type, detail (and allow) say why
    KILN_ROUTE_SYNC,
    KILN_ROUTE_QUEUE_SUBMIT,
    KILN_ROUTE_QUEUE_STATUS,
    KILN_ROUTE_QUEUE_STREAM,
    KILN_ROUTE_QUEUE_RESULT,
    KILN_ROUTE_QUEUE_CANCEL,
    KILN_ROUTE_FILE,
    KILN_ROUTE_HEALTH,
    KILN_ROUTE_METRICS,
    KILN_ROUTE_ARTIFACT_PUT,
    KILN_ROUTE_APPS_LIST,
    KILN_ROUTE_APPS_DEPLOY,
    KILN_ROUTE_APP_GET,
    KILN_ROUTE_APP_DELETE,
    KILN_ROUTE_APP_SCALE,
    KILN_ROUTE_RUNNERS_LIST,
    KILN_ROUTE_WORKERS_LIST,
    KILN_ROUTE_APP_REVISIONS,
    KILN_ROUTE_APP_ROLLBACK,
    KILN_ROUTE_REQUEST_GET,
    KILN_ROUTE_REQUEST_CANCEL,
    KILN_ROUTE_APP_LOGS,
    KILN_ROUTE_KEYS_LIST,
    KILN_ROUTE_KEYS_CREATE,
    KILN_ROUTE_KEY_REVOKE,
    KILN_ROUTE_JWKS,
    KILN_ROUTE_SECRETS_SET,
    KILN_ROUTE_SECRETS_LIST,
    KILN_ROUTE_SECRET_UNSET,
} kiln_route_kind_t;

//  The last kind, for loops over every kind.
#define KILN_ROUTE_KIND_LAST KILN_ROUTE_SECRET_UNSET

typedef struct {
    kiln_route_kind_t kind;
    //  KILN_ROUTE_ERROR only
    int status;                             //  400, 404 or 405
    const char *error_type;                 //  bad_request, not_found, method_not_allowed
    char detail [256];                      //  for people: what was wrong
    char allow [32];                        //  405: "GET, POST"
    //  Set by the routes that name them, else empty
    char app [2 * KILN_NAME_MAX + 2];       //  "owner/app"
    char path [KILN_ROUTE_PATH_MAX + 1];    //  endpoint path, decoded: "/" or "/a/b"
    char id [KILN_ROUTE_ID_MAX + 1];        //  request id, file id or artifact sha256
} kiln_route_t;

//  Routes method (upper case, as HTTP has it) and raw_path. Always fills
//  self: check self->kind. Returns self->kind.
kiln_route_kind_t kiln_route_match (kiln_route_t *self, const char *method, const char *raw_path);

//  True when owner (len bytes) is a reserved first segment.
bool kiln_route_owner_reserved (const char *owner, size_t len);

//  A SHA-256 in lower-case hex (the artifact id).
bool kiln_route_sha256_valid (const char *text);

//  A secret's name (len bytes): [A-Z_][A-Z0-9_]*, 1 to
//  KILN_ROUTE_SECRET_NAME_MAX characters, not starting with KILN_ (kiln's
//  own variables in a runner's environment).
bool kiln_route_secret_name_valid (const char *name, size_t len);

//  Name of a kind, for logs and tests: "SYNC", "QUEUE_STATUS", ...
const char *kiln_route_kind_name (kiln_route_kind_t kind);

void kiln_route_test (bool verbose);

#endif
