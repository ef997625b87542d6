/*  =========================================================================
    badsetup — a test app whose setup() always fails

    The runner must exit with code 3 and the reason must reach the
    broker in RUNNER_EXITED ("setup failed (exit 3): model weights not
    found"); requests for the app must end with an error, never hang.
    =========================================================================
*/
#include <kiln/app.h>

#include <stddef.h>

static void *
s_setup (void)
{
    kiln_setup_fail ("model weights not found");
    return NULL;
}

static int
s_never (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) req;
    return kiln_response_set_json (resp, "{\"reached\": true}");
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_never },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "badsetup",
    .machine_types   = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency = 1,
    .setup           = s_setup,
    .endpoints       = s_endpoints,
};
