/*  =========================================================================
    gpuonly — a test app that runs on GPU-H100 and nowhere else

    On a host without such a GPU kiln must refuse it with 503
    runner_scheduling_failure; with a worker that declares GPU-H100 slots
    it answers {"path": ..., "cuda_visible_devices": ...}, so a test can
    see which GPU the worker gave the runner.
    =========================================================================
*/
#include <kiln/app.h>

#include <stdio.h>
#include <stdlib.h>

static int
s_answer (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    const char *devices = getenv ("CUDA_VISIBLE_DEVICES");
    char answer [256];
    //  Paths are the endpoints below and devices a list of digits: no
    //  JSON escaping needed.
    snprintf (answer, sizeof (answer), "{\"path\": \"%s\", \"cuda_visible_devices\": \"%s\"}",
              kiln_request_path (req), devices? devices: "");
    kiln_request_log (req, KILN_LOG_INFO, "answering on GPU '%s'", devices? devices: "");
    return kiln_response_set_json (resp, answer);
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_answer },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "gpuonly",
    .machine_types   = KILN_MACHINE_TYPES ("GPU-H100"),
    .max_concurrency = 1,
    .endpoints       = s_endpoints,
};
