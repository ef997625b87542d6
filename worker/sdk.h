/*  =========================================================================
    sdk — the runner's side of include/kiln/app.h

    kiln-runner exports the SDK functions of kiln/app.h to the app it
    loads; this header is how the runner itself makes the request and
    response objects those functions work on, and turns them into the
    RESULT it sends back. Internal to kiln-runner.
    =========================================================================
*/
#ifndef KILN_SDK_H_INCLUDED
#define KILN_SDK_H_INCLUDED

#include <kiln/app.h>
#include "kiln_msg.h"

#include <pthread.h>

//  Where a request's LOG messages go: the runner forwards them to the
//  broker (with the RESULT, or at once once the handler runs long: see
//  worker/runner.c). Takes the message, or leaves it to the caller (who
//  destroys it) when it cannot. Called with the request's lock held, so
//  never concurrently for one request.
typedef void (kiln_sdk_emit_fn) (kiln_msg_t **msg_p, void *arg);

struct _kiln_request_t {
    char *id;
    char *path;
    char *content_type;             //  "" when the caller sent none
    uint8_t *body;                  //  NUL after the last byte
    size_t body_size;
    const char *public_url;         //  not owned; base of file URLs
    kiln_sdk_emit_fn *emit;
    void *emit_arg;
    //  Handlers may log and store files from threads of their own.
    pthread_mutex_t lock;
    kiln_msg_file_t *files;
    size_t file_count;
    size_t file_alloc;
    char **urls;                    //  what store_file returned, freed with us
    size_t url_count;               //  stays when the files move to the RESULT
    size_t url_alloc;
};

struct _kiln_response_t {
    int status;
    char *content_type;
    uint8_t *body;
    size_t body_size;
    char *error;                    //  set by kiln_response_set_error
    char *error_type;
};

//  A request from a REQUEST message (copied: the message stays the
//  caller's). NULL on failure (out of memory).
kiln_request_t *kiln_sdk_request_new (const kiln_msg_t *msg, const char *public_url,
                                      kiln_sdk_emit_fn *emit, void *emit_arg);
void kiln_sdk_request_destroy (kiln_request_t **self_p);

//  A response with the defaults: 200, application/json, empty body.
kiln_response_t *kiln_sdk_response_new (void);
void kiln_sdk_response_destroy (kiln_response_t **self_p);

//  The RESULT for a handler that returned 0: the response, and the files
//  the request stored (moved out of the request). A response with a
//  status outside 100..599 becomes a 500 runner_server_error. NULL only
//  when out of memory.
kiln_msg_t *kiln_sdk_result (kiln_request_t *req, kiln_response_t *resp,
                             uint64_t inference_ms);

//  A RESULT that is one of kiln's own errors: JSON {detail, error_type}
//  with that status, error and error_type set. NULL when out of memory.
kiln_msg_t *kiln_sdk_error_result (const char *request_id, int status,
                                   const char *error_type, const char *detail,
                                   uint64_t inference_ms);

//  JSON {"detail": ..., "error_type": ...}, malloc'd. NULL when out of
//  memory.
char *kiln_sdk_error_json (const char *error_type, const char *detail);

//  What kiln_setup_fail said, or NULL when it was not called since the
//  last reset.
const char *kiln_sdk_setup_failure (void);
void kiln_sdk_setup_reset (void);

//  Marks a request cancelled for kiln_request_cancelled(), or clears the
//  mark. Thread-safe: the runner's main thread sets it while a handler
//  thread reads it.
void kiln_sdk_cancel_set (const char *request_id, bool cancelled);

void kiln_sdk_test (bool verbose);

#endif
