/*  =========================================================================
    http — the CLI's client for the gateway (libcurl)

    One blocking request at a time against a base URL. Every failure comes
    back as one line a person can act on: "cannot reach the gateway at
    http://127.0.0.1:8080 (connection refused)" when nothing answered, the
    gateway's own `detail` when it answered with an error.
    =========================================================================
*/
#ifndef KILN_CLI_HTTP_H_INCLUDED
#define KILN_CLI_HTTP_H_INCLUDED

#include <jansson.h>
#include <stddef.h>

typedef struct _kiln_http_t kiln_http_t;

typedef struct {
    long status;                    //  HTTP status
    char *body;                     //  NUL-terminated; owned
    size_t size;
    char *content_type;             //  "" when none; owned
} kiln_http_response_t;

//  A client for base_url (no trailing slash needed). key, when not NULL,
//  is sent as "Authorization: Key <key>". NULL on failure.
kiln_http_t *kiln_http_new (const char *base_url, const char *key);

void kiln_http_destroy (kiln_http_t **self_p);

//  The base URL without a trailing slash.
const char *kiln_http_base (kiln_http_t *self);

//  Bounds each whole request (0: no bound; connecting is always bounded).
void kiln_http_set_timeout_ms (kiln_http_t *self, long timeout_ms);

//  Sends one request. path starts with '/'. body may be NULL. Returns 0
//  when the gateway answered (any status: see response->status), -1 when
//  it could not be reached; then *error (caller frees) says why.
int kiln_http_request (kiln_http_t *self, const char *method, const char *path,
                       const char *content_type, const void *body, size_t size,
                       kiln_http_response_t *response, char **error);

//  How the last request of this process ended: its HTTP status, 0 when
//  the gateway could not be reached, -1 before any request. The CLI
//  makes one request at a time, so this is what a failure was about
//  (kiln_cli_fail_http picks the exit code from it).
long kiln_http_last_status (void);

//  Frees what a response holds and zeroes it.
void kiln_http_response_reset (kiln_http_response_t *response);

//  The one-line reason of an error answer: its JSON `detail`, else the
//  status line. Caller frees.
char *kiln_http_error_detail (const kiln_http_response_t *response);

//  Sends a request with an optional JSON body (not taken) and expects a
//  2xx JSON answer. Returns 0 with *answer (caller decrefs; NULL when the
//  body was empty), or -1 with *error (caller frees): unreachable, an
//  error status (its detail), or an answer that is not JSON.
int kiln_http_json (kiln_http_t *self, const char *method, const char *path,
                    json_t *body, json_t **answer, char **error);

#endif
