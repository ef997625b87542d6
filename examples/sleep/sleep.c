/*  =========================================================================
    sleep — a slow app, for watching kiln queue, scale and retire runners

        POST /local/sleep   {"ms": 2000}   →  {"slept_ms": 2000, "runner": 4242}

    Each request holds its runner for `ms` milliseconds (0 to 600000), so a
    burst of them makes kiln start up to max_concurrency runners; "runner"
    is the process that served it. Shows setup() and teardown() with a
    state, and a long handler that checks for cancellation as it goes.

    Build:   cc -shared -fPIC -I<kiln>/include sleep.c -ljansson -o sleep.so
    =========================================================================
*/
#include <kiln/app.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SLEEP_MAX_MS 600000
//  How often a sleeping handler looks for a cancel.
#define SLEEP_STEP_MS 100

//  What setup() makes: here only a count, to show state reaching handlers.
typedef struct {
    long served;
} s_state_t;

static void *
s_setup (void)
{
    s_state_t *state = calloc (1, sizeof (s_state_t));
    if (!state)
        kiln_setup_fail ("out of memory");
    else
        fprintf (stderr, "sleep: ready in process %d\n", (int) getpid ());
    return state;
}

static void
s_teardown (void *arg)
{
    s_state_t *state = (s_state_t *) arg;
    if (!state)
        return;
    fprintf (stderr, "sleep: served %ld request(s), goodbye\n", state->served);
    free (state);
}

static void
s_sleep_ms (long ms)
{
    struct timespec span = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep (&span, &span) == -1)
        ;                       //  interrupted by a signal: sleep the rest
}

static int
s_sleep (void *arg, kiln_request_t *req, kiln_response_t *resp)
{
    s_state_t *state = (s_state_t *) arg;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    json_t *json = json_loadb (body, size, 0, NULL);
    json_t *ms_json = json? json_object_get (json, "ms"): NULL;
    if (!json_is_integer (ms_json)
    ||  json_integer_value (ms_json) < 0 || json_integer_value (ms_json) > SLEEP_MAX_MS) {
        json_decref (json);
        return kiln_response_set_error (resp, 422, "bad_request",
                                        "expected {\"ms\": N} with N from 0 to 600000");
    }
    long ms = (long) json_integer_value (ms_json);
    json_decref (json);

    kiln_request_log (req, KILN_LOG_INFO, "sleeping %ld ms", ms);
    long slept = 0;
    while (slept < ms && !kiln_request_cancelled (req)) {
        long step = ms - slept < SLEEP_STEP_MS? ms - slept: SLEEP_STEP_MS;
        s_sleep_ms (step);
        slept += step;
    }
    state->served++;

    char answer [96];
    snprintf (answer, sizeof (answer), "{\"slept_ms\": %ld, \"runner\": %d}", slept, (int) getpid ());
    return kiln_response_set_json (resp, answer);
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_sleep },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "sleep",
    .machine_types   = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency = 4,
    .setup           = s_setup,
    .teardown        = s_teardown,
    .endpoints       = s_endpoints,
};
