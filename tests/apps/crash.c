/*  =========================================================================
    crash — a test app whose handlers go wrong

        /        abort(): the runner dies mid-request (SIGABRT); the request
                 must end with runner_disconnected, the worker must report
                 "killed by signal 6"
        /error   the handler returns -1: 500 runner_server_error, and the
                 runner lives on
        /ok      answers {"ok": true}
    =========================================================================
*/
#include <kiln/app.h>

#include <stdlib.h>

static int
s_crash (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) resp;
    kiln_request_log (req, KILN_LOG_ERROR, "about to abort()");
    abort ();
}

static int
s_error (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) resp;
    kiln_request_log (req, KILN_LOG_ERROR, "returning -1");
    return -1;
}

static int
s_ok (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) req;
    return kiln_response_set_json (resp, "{\"ok\": true}");
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_crash },
    { "/error", s_error },
    { "/ok", s_ok },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "crash",
    .machine_types   = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency = 1,
    .endpoints       = s_endpoints,
};
