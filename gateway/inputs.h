/*  =========================================================================
    inputs — the gateway's parsers of request headers and query values

    Pure functions (no I/O), so the selftest and the
    fuzz target fuzz_json drive exactly what the gateway runs:

    | function                      | reads                                    |
    |-------------------------------|------------------------------------------|
    | kiln_input_is_json_type       | Content-Type: is the body JSON?          |
    | kiln_input_webhook_invalid    | ?fal_webhook=URL                         |
    | kiln_input_start_deadline     | X-Fal-Request-Timeout                    |
    | kiln_input_no_retry           | X-Fal-No-Retry                           |
    | kiln_input_flag               | ?logs=1 and other boolean query values   |
    | kiln_input_safe_file_name     | a stored file's name, for Content-Disposition |
    | kiln_input_scale_patch        | PATCH /v1/apps/{app} body (live scale)   |
    | kiln_input_deploy             | POST /v1/apps body {name, artifact, manifest} |
    | kiln_input_deploy_owner       | the same body, for the access check: its owner |
    | kiln_input_rollback           | POST /v1/apps/{app}/rollback body {revision} |
    | kiln_input_key_request        | POST /v1/keys body {scope, owner?}       |

    The body parsers answer 0 when the body is good, else the HTTP
    status (400, 422, 500) and, in why, the detail the gateway answers
    with: the gateway only adds the error type (internal_error for 500,
    bad_request otherwise) and does the Redis part.
    =========================================================================
*/
#ifndef KILN_INPUTS_H_INCLUDED
#define KILN_INPUTS_H_INCLUDED

#include "kiln_keys.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Longest webhook URL we store.
#define KILN_INPUT_WEBHOOK_URL_MAX 2048
//  Longest X-Fal-Request-Timeout we take (a year, in seconds): beyond it a
//  deadline means nothing, and the ms must stay exact in a Lua number.
#define KILN_INPUT_REQUEST_TIMEOUT_MAX_S (366 * 24 * 3600)

//  application/json, or any type ending in +json; parameters ignored.
bool kiln_input_is_json_type (const char *content_type);

//  An absolute http(s) URL with a host: what the deliverer can POST to.
//  NULL when it is one, else why not (for the 400's detail).
const char *kiln_input_webhook_invalid (const char *url);

//  X-Fal-Request-Timeout: a positive number of seconds, fractional
//  allowed ("30", "2.5", ".5"); no sign, exponent or other text. The
//  deadline for processing to start, as ms since the epoch. -1 if bad.
int64_t kiln_input_start_deadline (const char *value, int64_t now_ms);

//  X-Fal-No-Retry: 1 or true (any case) sets it, 0, false or absent
//  clears it. -1 for anything else.
int kiln_input_no_retry (const char *value);

//  A boolean query value: "1", "true" or "yes".
bool kiln_input_flag (const char *value);

//  A file name safe inside Content-Disposition's quotes: control
//  characters, non-ASCII, '"', '\\' and '/' become '_'. Truncated to fit.
void kiln_input_safe_file_name (const char *name, char *out, size_t size);

//  The bounds an operator may change live, as the manifest names them,
//  in the order the SCALE script takes them; NULL-terminated.
#define KILN_INPUT_SCALE_FIELD_COUNT 4
extern const char *kiln_input_scale_fields [KILN_INPUT_SCALE_FIELD_COUNT + 1];

//  Room for a body parser's why: the gateway's detail buffer.
#define KILN_INPUT_WHY_MAX 1024

//  A PATCH /v1/apps/{app} body (JSON, duplicate keys refused) into the
//  SCALE script's arguments: per field "" (not given), "-" (null: drop
//  the override) or the number; reset true when asked. 0 or 422.
int kiln_input_scale_patch (const char *body, size_t size,
                            char values [KILN_INPUT_SCALE_FIELD_COUNT][24], bool *reset,
                            char why [KILN_INPUT_WHY_MAX]);

//  What a good deploy body holds: the app's name, the artifact's
//  SHA-256, and the manifest's canonical JSON (heap: the caller frees it).
typedef struct {
    char name [2 * KILN_NAME_MAX + 2];
    char artifact [65];
    char *manifest;
} kiln_input_deploy_t;

//  A POST /v1/apps body: {name, artifact, manifest (object, or a string
//  of JSON)}. 0 (and deploy filled), 400, 422 or 500 (out of memory).
//  deploy->manifest is NULL unless 0.
int kiln_input_deploy (const char *body, size_t size, kiln_input_deploy_t *deploy,
                       char why [KILN_INPUT_WHY_MAX]);

//  The owner part of a POST /v1/apps body's name, when the name is a
//  valid app name, else "": whose app the deploy would make, which the
//  gateway checks the caller's key against before the deploy runs. For
//  a body kiln_input_deploy takes, it is the owner of that deploy's name;
//  "" only for bodies kiln_input_deploy refuses.
void kiln_input_deploy_owner (const char *body, size_t size, char owner [KILN_NAME_MAX + 1]);

//  A POST /v1/apps/{app}/rollback body {"revision": N}, N a whole number
//  from 1. 0 (and *revision set) or 422; *revision 0 unless 0.
int kiln_input_rollback (const char *body, size_t size, int64_t *revision,
                         char why [KILN_INPUT_WHY_MAX]);

//  A POST /v1/keys body {scope, owner?} (empty: {}). default_owner is
//  the owner when none (or null) is given: the calling key's, or NULL.
//  0 (and scope, owner filled: owner "*" is the operator) or 400. Who
//  may make the key is the gateway's call, not this one's.
int kiln_input_key_request (const char *body, size_t size, const char *default_owner,
                            char scope [16], char owner [KILN_NAME_MAX + 1],
                            char why [KILN_INPUT_WHY_MAX]);

void kiln_input_test (bool verbose);

#endif
