/*  =========================================================================
    kiln/app.h — the SDK for native kiln apps

    A kiln app is a shared library (.so) that exports one descriptor, a
    `kiln_app_t` named `kiln_app`. kiln loads it inside a *runner* process,
    calls `setup()` once, then calls endpoint handlers for the requests it
    is given, and `teardown()` once when the runner retires.

    A minimal app:

        #include <kiln/app.h>

        static int s_hello (void *state, kiln_request_t *req, kiln_response_t *resp)
        {
            kiln_request_log (req, KILN_LOG_INFO, "saying hello");
            return kiln_response_set_json (resp, "{\"hello\":\"world\"}");
        }

        static const kiln_endpoint_t s_endpoints [] = {
            { "/", s_hello },
            { NULL, NULL }
        };

        KILN_APP_EXPORT const kiln_app_t kiln_app = {
            .abi_version     = KILN_APP_ABI_VERSION,
            .name            = "hello",
            .machine_types   = KILN_MACHINE_TYPES ("CPU"),
            .max_concurrency = 2,
            .endpoints       = s_endpoints,
        };

    Build it with `cc -shared -fPIC -I<kiln>/include hello.c -o hello.so`
    and deploy it with `kiln deploy hello.so --name me/hello`. The SDK
    functions below are provided by the runner at load time; an app links
    against nothing of kiln's.

    Threading: a runner calls handlers from up to `max_multiplexing`
    threads at once (default 1: one request at a time). `setup()` and
    `teardown()` are never called concurrently with anything else.
    =========================================================================
*/
#ifndef KILN_APP_H_INCLUDED
#define KILN_APP_H_INCLUDED

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Bumped when kiln_app_t changes incompatibly; a runner refuses an app
//  built against another ABI version.
#define KILN_APP_ABI_VERSION 1

//  Name of the symbol a runner looks up with dlsym().
#define KILN_APP_SYMBOL "kiln_app"

#define KILN_APP_EXPORT __attribute__ ((visibility ("default")))

//  A NULL-terminated list of machine types, in order of preference:
//  KILN_MACHINE_TYPES ("GPU-H100", "GPU-A100", "CPU").
#define KILN_MACHINE_TYPES(...) ((const char *const []) { __VA_ARGS__, NULL })

//  Opaque; valid only during the handler call that received them.
typedef struct _kiln_request_t kiln_request_t;
typedef struct _kiln_response_t kiln_response_t;

//  A handler answers one request. It returns 0 when it filled `resp`
//  (whatever the HTTP status it chose), or -1 on an internal failure, in
//  which case the caller gets 500 `runner_server_error` and the response
//  is discarded. `state` is what setup() returned.
typedef int (kiln_handler_fn) (void *state, kiln_request_t *req, kiln_response_t *resp);

//  Loads the model. Runs once per runner, before the runner takes any
//  request. Returns the app's state, passed to every handler and to
//  teardown (NULL is a valid state). To fail, call kiln_setup_fail() with
//  the reason and return NULL: the runner then exits and the reason shows
//  in the app's logs.
typedef void *(kiln_setup_fn) (void);

//  Frees what setup() made. Runs once when the runner retires.
typedef void (kiln_teardown_fn) (void *state);

typedef struct {
    const char *path;               //  "/" or "/sub/path"; matched exactly
    kiln_handler_fn *handler;
} kiln_endpoint_t;

//  The app descriptor. Zero fields take the defaults shown.
typedef struct {
    uint32_t abi_version;           //  KILN_APP_ABI_VERSION
    const char *name;               //  default app name ("echo"); [a-z0-9-_]
    const char *const *machine_types; //  KILN_MACHINE_TYPES (...); default CPU
    int keep_alive;                 //  s idle before a runner retires; 300
    int min_concurrency;            //  runners kept up without traffic; 0
    int max_concurrency;            //  runners at most; 2
    int concurrency_buffer;         //  spare runners above demand; 0
    int max_multiplexing;           //  requests one runner serves at once; 1
    int request_timeout;            //  s a request may run; 3600
    int startup_timeout;            //  s setup() may take; 600
    kiln_setup_fn *setup;           //  may be NULL
    kiln_teardown_fn *teardown;     //  may be NULL
    const kiln_endpoint_t *endpoints; //  terminated by { NULL, NULL }
} kiln_app_t;

//  ---------------------------------------------------------------------
//  The request

//  The request id (UUID v4), as the caller sees it in x-fal-request-id.
const char *kiln_request_id (const kiln_request_t *req);

//  The endpoint path that matched, e.g. "/" or "/sub/path".
const char *kiln_request_path (const kiln_request_t *req);

//  The request's Content-Type ("" when the caller sent none).
const char *kiln_request_content_type (const kiln_request_t *req);

//  The request body and its size. Not NUL-terminated in general, but
//  kiln adds a NUL after the last byte so that JSON parsers may read it
//  as a string.
const void *kiln_request_body (const kiln_request_t *req, size_t *size);

//  True once the caller has cancelled this request. Long handlers should
//  check it between steps and return early.
bool kiln_request_cancelled (const kiln_request_t *req);

//  Log levels for kiln_request_log.
#define KILN_LOG_DEBUG "DEBUG"
#define KILN_LOG_INFO  "INFO"
#define KILN_LOG_WARN  "WARN"
#define KILN_LOG_ERROR "ERROR"

//  Appends a line to the request's logs (shown by the status API with
//  ?logs=1 and streamed live). printf-style.
void kiln_request_log (kiln_request_t *req, const char *level, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

//  Stores a file (an image, audio, any output) and returns its public URL
//  (GET on it serves the bytes with `content_type`). The data is copied.
//  The URL string belongs to the request: copy it if you need it after the
//  handler returns. Returns NULL on failure (out of memory, bad arguments).
const char *kiln_request_store_file (kiln_request_t *req,
                                     const void *data, size_t size,
                                     const char *content_type,
                                     const char *file_name);

//  ---------------------------------------------------------------------
//  The response (default: 200, application/json, empty body)

void kiln_response_set_status (kiln_response_t *resp, int status);

//  Sets the body and its content type; the data is copied. 0 or -1.
int kiln_response_set_body (kiln_response_t *resp, const char *content_type,
                            const void *data, size_t size);

//  Sets a JSON body (a NUL-terminated string). 0 or -1.
int kiln_response_set_json (kiln_response_t *resp, const char *json);

//  Sets a JSON error body {"detail": ..., "error_type": ...} and the
//  status, the way kiln's own errors look. 0 or -1.
int kiln_response_set_error (kiln_response_t *resp, int status,
                             const char *error_type, const char *detail);

//  ---------------------------------------------------------------------
//  Setup

//  Called from setup() to say why it failed (printf-style). setup() then
//  returns NULL; the runner exits and the reason reaches the app's logs.
void kiln_setup_fail (const char *format, ...)
    __attribute__ ((format (printf, 1, 2)));

#ifdef __cplusplus
}
#endif

#endif
