/*  =========================================================================
    slowlog — a test app that works slowly, logs as it goes and can be
    cancelled; the queue API tests (tests/test_queue*.py) drive it

        /        {"lines": M, "interval_ms": N}: logs "line i of M" every
                 N ms (first line at once), M lines, checking
                 kiln_request_cancelled() all the while. Answers 200
                 {"cancelled": false, "lines": M}, or when cancelled logs
                 "cancelled after k lines" and answers 499
                 {"cancelled": true, "lines": k}
        /raw     answers 201 with the request's own body and content type,
                 so a test can check that results are replayed byte for byte
        /fail    answers 418 {"detail": "teapot", "error_type": "app_error"}
        /error   the handler returns -1: 500 runner_server_error

    One runner at most (max_concurrency 1), so that a test can fill its
    only slot and watch requests queue behind it.
    =========================================================================
*/
#include <kiln/app.h>

#include <jansson.h>
#include <stdio.h>
#include <time.h>

#define SLOWLOG_MAX_LINES 10000
#define SLOWLOG_MAX_INTERVAL_MS 60000
//  How often a waiting handler looks for a cancel: small, so that a test
//  sees the handler stop soon after it cancels.
#define CANCEL_POLL_MS 20

static void
s_sleep_ms (long ms)
{
    struct timespec span = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep (&span, &span) == -1)
        ;                       //  interrupted by a signal: sleep the rest
}

//  Waits ms, or less when the request is cancelled meanwhile.
static void
s_wait (kiln_request_t *req, long ms)
{
    while (ms > 0 && !kiln_request_cancelled (req)) {
        long step = ms < CANCEL_POLL_MS? ms: CANCEL_POLL_MS;
        s_sleep_ms (step);
        ms -= step;
    }
}

//  An integer field of the JSON body between 0 and max, or dflt when
//  absent. -1 when present but not such an integer.
static long
s_field (json_t *json, const char *name, long dflt, long max)
{
    json_t *value = json_object_get (json, name);
    if (!value)
        return dflt;
    if (!json_is_integer (value)
    ||  json_integer_value (value) < 0 || json_integer_value (value) > max)
        return -1;
    return (long) json_integer_value (value);
}

static int
s_slowlog (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    json_t *json = size? json_loadb (body, size, 0, NULL): json_object ();
    long lines = json_is_object (json)? s_field (json, "lines", 3, SLOWLOG_MAX_LINES): -1;
    long interval_ms = json_is_object (json)?
        s_field (json, "interval_ms", 100, SLOWLOG_MAX_INTERVAL_MS): -1;
    json_decref (json);
    if (lines < 0 || interval_ms < 0)
        return kiln_response_set_error (resp, 422, "bad_request",
                                        "expected {\"lines\": M, \"interval_ms\": N}");
    long logged = 0;
    while (logged < lines && !kiln_request_cancelled (req)) {
        if (logged > 0)
            s_wait (req, interval_ms);
        if (kiln_request_cancelled (req))
            break;
        logged++;
        kiln_request_log (req, KILN_LOG_INFO, "line %ld of %ld", logged, lines);
    }
    char answer [96];
    if (kiln_request_cancelled (req)) {
        kiln_request_log (req, KILN_LOG_WARN, "cancelled after %ld lines", logged);
        snprintf (answer, sizeof answer, "{\"cancelled\": true, \"lines\": %ld}", logged);
        //  What a client that cancelled sees if it reads the result anyway
        kiln_response_set_status (resp, 499);
    }
    else
        snprintf (answer, sizeof answer, "{\"cancelled\": false, \"lines\": %ld}", logged);
    return kiln_response_set_json (resp, answer);
}

static int
s_raw (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    size_t size;
    const void *body = kiln_request_body (req, &size);
    const char *content_type = kiln_request_content_type (req);
    kiln_response_set_status (resp, 201);
    return kiln_response_set_body (resp, *content_type? content_type: "application/octet-stream",
                                   body, size);
}

static int
s_fail (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    kiln_request_log (req, KILN_LOG_ERROR, "failing with 418 on purpose");
    return kiln_response_set_error (resp, 418, "app_error", "teapot");
}

static int
s_error (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) resp;
    kiln_request_log (req, KILN_LOG_ERROR, "returning -1");
    return -1;
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_slowlog },
    { "/raw", s_raw },
    { "/fail", s_fail },
    { "/error", s_error },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version     = KILN_APP_ABI_VERSION,
    .name            = "slowlog",
    .machine_types   = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency = 1,
    .endpoints       = s_endpoints,
};
