/*  =========================================================================
    noop — the bench's app: answers at once, or after a nap

        POST /        anything  →  {"ok":true}            (the async bench)
        POST /sleep   N         →  {"slept_ms":N}         (the footprint bench:
                                   holds the request N ms, 0 to 600000)

    No logging, no parsing on /: what a request costs beyond this is kiln's.
    The bench builds it itself, once per variant, with cc (not CMake):

        cc -shared -fPIC -O2 -I<kiln>/include -DNOOP_MAX=2 -DNOOP_MULTIPLEXING=8 \
           noop.c -o noop.so

    NOOP_MAX is max_concurrency (runners at most), NOOP_MULTIPLEXING is
    max_multiplexing (requests one runner serves at once): their product is
    how many requests kiln runs at once, which the BullMQ worker's
    concurrency matches.
    =========================================================================
*/
#include <kiln/app.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef NOOP_MAX
#   define NOOP_MAX 2
#endif
#ifndef NOOP_MULTIPLEXING
#   define NOOP_MULTIPLEXING 8
#endif
#define SLEEP_MAX_MS 600000

static int
s_noop (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    (void) req;
    return kiln_response_set_json (resp, "{\"ok\":true}");
}

static int
s_sleep (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    long ms = size? strtol (body, NULL, 10): 0;
    if (ms < 0 || ms > SLEEP_MAX_MS)
        ms = 0;
    //  In slices, so that a cancel is seen within 100 ms
    long left = ms;
    while (left > 0 && !kiln_request_cancelled (req)) {
        long slice = left < 100? left: 100;
        struct timespec nap = { slice / 1000, (slice % 1000) * 1000000L };
        nanosleep (&nap, NULL);
        left -= slice;
    }
    char answer [64];
    snprintf (answer, sizeof answer, "{\"slept_ms\":%ld}", ms);
    return kiln_response_set_json (resp, answer);
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_noop },
    { "/sleep", s_sleep },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version      = KILN_APP_ABI_VERSION,
    .name             = "noop",
    .machine_types    = KILN_MACHINE_TYPES ("CPU"),
    .max_concurrency  = NOOP_MAX,
    .max_multiplexing = NOOP_MULTIPLEXING,
    .endpoints        = s_endpoints,
};
