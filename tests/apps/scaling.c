/*  =========================================================================
    scaling — one test app, built into several variants, for the runner
    lifecycle and autoscaling tests (tests/test_scaling.py,
    tests/test_placement.py) and the scale bench (bench/scale.py)

        /        {"ms": N} (default 0): holds the request N ms (0 to
                 600000), then answers
                 {"pid": P, "worker": "...", "cuda_visible_devices": "...",
                  "running": R, "peak": K, "start_ms": S, "end_ms": E,
                  "setup_ms": M}
                 running: handlers of this runner running as it began
                 (itself included); peak: the most it saw, at its start
                 or its end; start_ms, end_ms: wall clock (ms since the
                 epoch), so a test can see requests overlap; setup_ms:
                 how long this runner's setup() took

    setup() and teardown() each print one line with the process id to
    stderr (which the worker keeps in its log), so a test can tell that a
    runner finished its setup and that a retired one ran its teardown:
        scaling: setup done in process P after M ms
        scaling: teardown in process P after serving N request(s)

    Each variant's name and descriptor come from compile definitions
    (tests/apps/CMakeLists.txt): SCALING_NAME; the machine types, CPU
    unless SCALING_TYPES_H100, SCALING_TYPES_H100_CPU ("GPU-H100" then
    "CPU") or SCALING_TYPES_A100; SCALING_KEEP_ALIVE, SCALING_MIN,
    SCALING_MAX, SCALING_BUFFER, SCALING_MULTIPLEXING,
    SCALING_STARTUP_TIMEOUT (zero or absent: the SDK's defaults); and what
    setup() does: SCALING_SETUP_MS (sleeps that long, a model that takes
    time to load), SCALING_SETUP_HANG (sleeps far past any
    startup_timeout), SCALING_SETUP_CRASH (abort(): a setup that crashes).
    =========================================================================
*/
#include <kiln/app.h>

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifndef SCALING_NAME
#   define SCALING_NAME "scaling"
#endif
#if defined (SCALING_TYPES_H100)
#   define SCALING_MACHINE_TYPES KILN_MACHINE_TYPES ("GPU-H100")
#elif defined (SCALING_TYPES_H100_CPU)
#   define SCALING_MACHINE_TYPES KILN_MACHINE_TYPES ("GPU-H100", "CPU")
#elif defined (SCALING_TYPES_A100)
#   define SCALING_MACHINE_TYPES KILN_MACHINE_TYPES ("GPU-A100")
#else
#   define SCALING_MACHINE_TYPES KILN_MACHINE_TYPES ("CPU")
#endif
//  Zero fields take the SDK's defaults.
#ifndef SCALING_KEEP_ALIVE
#   define SCALING_KEEP_ALIVE 0
#endif
#ifndef SCALING_MIN
#   define SCALING_MIN 0
#endif
#ifndef SCALING_MAX
#   define SCALING_MAX 0
#endif
#ifndef SCALING_BUFFER
#   define SCALING_BUFFER 0
#endif
#ifndef SCALING_MULTIPLEXING
#   define SCALING_MULTIPLEXING 0
#endif
#ifndef SCALING_STARTUP_TIMEOUT
#   define SCALING_STARTUP_TIMEOUT 0
#endif
#ifndef SCALING_SETUP_MS
#   define SCALING_SETUP_MS 0
#endif

#define SCALING_MAX_MS 600000
//  Far past any startup_timeout a test sets: only a kill ends it.
#define SCALING_HANG_MS 3600000

static atomic_int s_running;
static atomic_int s_served;
static long long s_setup_ms;

static long long
s_wall_ms (void)
{
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    return (long long) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static long long
s_mono_ms (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (long long) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static void
s_sleep_ms (long ms)
{
    struct timespec span = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep (&span, &span) == -1)
        ;                       //  interrupted by a signal: sleep the rest
}

static void *
s_setup (void)
{
    long long started = s_mono_ms ();
#if defined (SCALING_SETUP_CRASH)
    fprintf (stderr, "scaling: setup crashing in process %d\n", (int) getpid ());
    abort ();
#elif defined (SCALING_SETUP_HANG)
    fprintf (stderr, "scaling: setup hanging in process %d\n", (int) getpid ());
    s_sleep_ms (SCALING_HANG_MS);
#else
    if (SCALING_SETUP_MS > 0)
        s_sleep_ms (SCALING_SETUP_MS);
#endif
    s_setup_ms = s_mono_ms () - started;
    fprintf (stderr, "scaling: setup done in process %d after %lld ms\n",
             (int) getpid (), s_setup_ms);
    //  The state is not used: the handlers keep their counts in atomics.
    return NULL;
}

static void
s_teardown (void *state)
{
    (void) state;
    fprintf (stderr, "scaling: teardown in process %d after serving %d request(s)\n",
             (int) getpid (), atomic_load (&s_served));
}

static int
s_answer (void *state, kiln_request_t *req, kiln_response_t *resp)
{
    (void) state;
    size_t size;
    const char *body = kiln_request_body (req, &size);
    long ms = 0;
    if (size > 0) {
        json_t *json = json_loadb (body, size, 0, NULL);
        json_t *ms_json = json_is_object (json)? json_object_get (json, "ms"): NULL;
        bool valid = json_is_object (json)
                  && (!ms_json || (json_is_integer (ms_json)
                                   && json_integer_value (ms_json) >= 0
                                   && json_integer_value (ms_json) <= SCALING_MAX_MS));
        if (valid && ms_json)
            ms = (long) json_integer_value (ms_json);
        json_decref (json);
        if (!valid)
            return kiln_response_set_error (resp, 422, "bad_request",
                                            "expected {\"ms\": N} with N from 0 to 600000");
    }
    long long start_ms = s_wall_ms ();
    int running = atomic_fetch_add (&s_running, 1) + 1;
    if (ms > 0)
        s_sleep_ms (ms);
    int at_end = atomic_load (&s_running);
    atomic_fetch_sub (&s_running, 1);
    atomic_fetch_add (&s_served, 1);
    long long end_ms = s_wall_ms ();

    //  The worker id and the device list are the test's own (ids of
    //  [a-z0-9-], digits and commas): json_pack escapes them anyway.
    const char *worker = getenv ("KILN_WORKER_ID");
    const char *devices = getenv ("CUDA_VISIBLE_DEVICES");
    json_t *answer = json_pack ("{s:i, s:s, s:s, s:i, s:i, s:I, s:I, s:I}",
                                "pid", (int) getpid (),
                                "worker", worker? worker: "",
                                "cuda_visible_devices", devices? devices: "",
                                "running", running,
                                "peak", at_end > running? at_end: running,
                                "start_ms", (json_int_t) start_ms,
                                "end_ms", (json_int_t) end_ms,
                                "setup_ms", (json_int_t) s_setup_ms);
    char *text = answer? json_dumps (answer, JSON_COMPACT): NULL;
    json_decref (answer);
    if (!text)
        return -1;
    int rc = kiln_response_set_json (resp, text);
    free (text);
    return rc;
}

static const kiln_endpoint_t s_endpoints [] = {
    { "/", s_answer },
    { NULL, NULL }
};

KILN_APP_EXPORT const kiln_app_t kiln_app = {
    .abi_version        = KILN_APP_ABI_VERSION,
    .name               = SCALING_NAME,
    .machine_types      = SCALING_MACHINE_TYPES,
    .keep_alive         = SCALING_KEEP_ALIVE,
    .min_concurrency    = SCALING_MIN,
    .max_concurrency    = SCALING_MAX,
    .concurrency_buffer = SCALING_BUFFER,
    .max_multiplexing   = SCALING_MULTIPLEXING,
    .startup_timeout    = SCALING_STARTUP_TIMEOUT,
    .setup              = s_setup,
    .teardown           = s_teardown,
    .endpoints          = s_endpoints,
};
