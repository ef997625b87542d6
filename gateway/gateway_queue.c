/*  =========================================================================
    gateway_queue — fal's queue API: status, status stream, result, cancel

    (Submits, POST /queue/{owner}/{app}[/{path}], are in gateway.c with
    the sync calls: they run the same script.) A request whose record
    names another app than the URL's is not found, as if unknown.

    | takes                                   | sends to Redis                  | answers                          |
    |-----------------------------------------|---------------------------------|----------------------------------|
    | GET  .../requests/{id}/status[?logs=1]  | MULTI HMGET, ZRANK, LRANGE EXEC | 202 IN_QUEUE {queue_position}    |
    |                                         |                                 | 202 IN_PROGRESS, 200 COMPLETED   |
    |                                         |                                 | {metrics, error?, error_type?}   |
    | GET  .../requests/{id}/status/stream    | the same, every STREAM_POLL_MS  | text/event-stream: one event per |
    |                                         |                                 | change or log lines, to COMPLETED|
    | GET  .../requests/{id}                  | HMGET kiln:req:{id}             | the stored result, or 400 while  |
    |                                         |                                 | not completed                    |
    | PUT  .../requests/{id}/cancel           | HMGET; EVAL COMPLETE (499,      | 202 CANCELLATION_REQUESTED,      |
    |                                         | client_cancelled) when queued   | 400 ALREADY_COMPLETED, 404       |
    =========================================================================
*/
#include "gateway_internal.h"
#include "kiln_scripts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  How often a status stream looks at the request.
#define STREAM_POLL_MS 250

static void s_fetch_status (kiln_call_t *call);

//  Fields read for a status, in order
enum { F_APP, F_STATE, F_ERROR, F_ERROR_TYPE, F_INFERENCE_MS, F_COUNT };

static bool
s_same_app (kiln_call_t *call, const redisReply *app)
{
    return strcmp (kiln_reply_str (app), call->route.app) == 0;
}

static void
s_set_url (kiln_call_t *call, json_t *json, const char *key, const char *suffix)
{
    char *url = kiln_gateway_url (call->gw, "/queue/%s/requests/%s%s",
                                  call->route.app, call->route.id, suffix);
    json_object_set_new (json, key, url ? json_string (url) : json_null ());
    free (url);
}

//  Log lines as stored (JSON text each) into an array of objects.
static json_t *
s_logs_json (const redisReply *lines)
{
    json_t *logs = json_array ();
    if (!logs || !lines || lines->type != REDIS_REPLY_ARRAY)
        return logs;
    for (size_t i = 0; i < lines->elements; i++) {
        const redisReply *line = lines->element [i];
        if (line->type != REDIS_REPLY_STRING)
            continue;
        json_t *entry = json_loadb (line->str, line->len, 0, NULL);
        if (!json_is_object (entry)) {
            json_decref (entry);
            entry = json_pack ("{s:o, s:s}", "message", kiln_json_text (line->str, line->len),
                               "level", "INFO");
        }
        if (entry)
            json_array_append_new (logs, entry);
    }
    return logs;
}

//  Builds the status object from EXEC's answer: [HMGET, ZRANK, LRANGE?].
//  NULL when the request is unknown here. *completed says COMPLETED.
static json_t *
s_status_json (kiln_call_t *call, const redisReply *exec, bool *completed, size_t *new_lines)
{
    *completed = false;
    *new_lines = 0;
    const redisReply *record = exec->element [0];
    if (record->type != REDIS_REPLY_ARRAY || record->elements != F_COUNT
    ||  !s_same_app (call, record->element [F_APP]))
        return NULL;
    const char *state = kiln_reply_str (record->element [F_STATE]);
    json_t *json = json_object ();
    if (!json)
        return NULL;
    json_object_set_new (json, "status", json_string (*state ? state : "IN_QUEUE"));
    json_object_set_new (json, "request_id", json_string (call->route.id));
    s_set_url (call, json, "response_url", "");
    s_set_url (call, json, "status_url", "/status");
    s_set_url (call, json, "cancel_url", "/cancel");
    if (strcmp (state, "IN_QUEUE") == 0) {
        const redisReply *rank = exec->element [1];
        json_object_set_new (json, "queue_position",
                             json_integer (rank->type == REDIS_REPLY_INTEGER ? rank->integer : 0));
    }
    //  fal's clients read "logs" on every status: null unless asked for
    if (call->want_logs && exec->elements > 2) {
        json_t *logs = s_logs_json (exec->element [2]);
        *new_lines = logs ? json_array_size (logs) : 0;
        json_object_set_new (json, "logs", logs ? logs : json_null ());
    }
    else
        json_object_set_new (json, "logs", json_null ());
    if (strcmp (state, "COMPLETED") == 0) {
        *completed = true;
        const char *inference_ms = kiln_reply_str (record->element [F_INFERENCE_MS]);
        char *end = NULL;
        double ms = strtod (inference_ms, &end);
        json_object_set_new (json, "metrics", json_pack ("{s:o}", "inference_time",
                             *inference_ms && !*end ? json_real (ms / 1000.0) : json_null ()));
        const char *error = kiln_reply_str (record->element [F_ERROR]);
        const char *error_type = kiln_reply_str (record->element [F_ERROR_TYPE]);
        if (*error)
            json_object_set_new (json, "error", kiln_json_text (error, strlen (error)));
        if (*error_type)
            json_object_set_new (json, "error_type", json_string (error_type));
    }
    return json;
}

static bool
s_exec_usable (kiln_call_t *call, redisReply *reply)
{
    if (!kiln_call_usable (call, reply))
        return false;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2) {
        kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        return false;
    }
    return true;
}


//  --------------------------------------------------------------------------
//  GET .../status and .../status/stream

static void
s_on_stream_tick (evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    s_fetch_status ((kiln_call_t *) arg);
}

//  One server-sent event.
static void
s_stream_event (kiln_call_t *call, json_t *json)
{
    char *text = json_dumps (json, JSON_COMPACT | JSON_REAL_PRECISION (9));
    if (!text)
        return;
    char *event = NULL;
    int size = asprintf (&event, "data: %s\n\n", text);
    if (size > 0)
        kiln_call_stream_send (call, event, (size_t) size);
    free (event);
    free (text);
}

static void
s_on_stream_status (kiln_call_t *call, redisReply *reply)
{
    bool completed;
    size_t new_lines;
    json_t *json = s_status_json (call, reply, &completed, &new_lines);
    if (!call->streaming) {
        if (!json) {
            kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
            return;
        }
        kiln_call_stream_start (call, "text/event-stream");
        kiln_call_watch_client (call);
    }
    if (!json) {
        //  Expired or deleted while we watched: nothing more will come
        kiln_call_stream_end (call);
        return;
    }
    call->number += (int64_t) new_lines;
    //  One event per change of state or position, or new log lines
    const char *state = json_string_value (json_object_get (json, "status"));
    char line [64];
    snprintf (line, sizeof line, "%s %lld", state ? state : "",
              (long long) json_integer_value (json_object_get (json, "queue_position")));
    if (new_lines || !call->last_event || strcmp (line, call->last_event) != 0) {
        s_stream_event (call, json);
        free (call->last_event);
        call->last_event = strdup (line);
    }
    json_decref (json);
    if (completed) {
        kiln_call_stream_end (call);
        return;
    }
    if (!call->timer)
        call->timer = evtimer_new (call->gw->base, s_on_stream_tick, call);
    struct timeval poll = { 0, STREAM_POLL_MS * 1000 };
    if (!call->timer || evtimer_add (call->timer, &poll) != 0)
        kiln_call_stream_end (call);
}

static void
s_on_status (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (s_exec_usable (call, reply)) {
        if (call->route.kind == KILN_ROUTE_QUEUE_STREAM)
            s_on_stream_status (call, reply);
        else {
            bool completed;
            size_t new_lines;
            json_t *json = s_status_json (call, reply, &completed, &new_lines);
            if (json)
                kiln_call_reply_json (call, completed ? 200 : 202, json);
            else
                kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
        }
    }
    kiln_call_unref (&call);
}

//  One atomic read of everything a status holds.
static void
s_fetch_status (kiln_call_t *call)
{
    kiln_key_t req_key = kiln_key_request (call->route.id);
    kiln_key_t queue_key = kiln_key_queue (call->route.app);
    kiln_key_t logs_key = kiln_key_logs (call->route.id);
    if (kiln_call_redisf_quiet (call, "MULTI")
    ||  kiln_call_redisf_quiet (call, "HMGET %s app state error error_type inference_ms", req_key.s)
    ||  kiln_call_redisf_quiet (call, "ZRANK %s %s", queue_key.s, call->route.id))
        return;
    if (call->want_logs
    &&  kiln_call_redisf_quiet (call, "LRANGE %s %lld -1", logs_key.s, (long long) call->number))
        return;
    kiln_call_redisf (call, s_on_status, "EXEC");
}

static bool
s_flag (const char *value)
{
    return value && (strcmp (value, "1") == 0 || strcmp (value, "true") == 0
                  || strcmp (value, "yes") == 0);
}


//  --------------------------------------------------------------------------
//  GET .../requests/{id}

static void
s_on_result (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        //  app state status result_content_type result_body error error_type
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 7)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (!s_same_app (call, reply->element [0]))
            kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
        else
        if (strcmp (kiln_reply_str (reply->element [1]), "COMPLETED") != 0) {
            snprintf (call->request_id, sizeof call->request_id, "%s", call->route.id);
            kiln_call_error (call, 400, "request_not_completed", "Request is still in progress");
        }
        else {
            snprintf (call->request_id, sizeof call->request_id, "%s", call->route.id);
            kiln_gateway_replay (call, reply->element + 2);
        }
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------
//  PUT .../requests/{id}/cancel

static void
s_cancel_answer (kiln_call_t *call, int status, const char *state, const char *detail,
                 const char *error_type)
{
    json_t *json = json_pack ("{s:s}", "status", state);
    if (json && detail) {
        json_object_set_new (json, "detail", json_string (detail));
        json_object_set_new (json, "error_type", json_string (error_type));
    }
    kiln_call_reply_json (call, status, json);
}

static void
s_on_cancelled (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
            kiln_log_info ("request %s (%s) cancelled by its client", call->route.id, call->route.app);
            s_cancel_answer (call, 202, "CANCELLATION_REQUESTED", NULL, NULL);
        }
        else
            //  Completed (or expired) between our read and the script
            s_cancel_answer (call, 400, "ALREADY_COMPLETED",
                             "Request is already completed", "already_completed");
    }
    kiln_call_unref (&call);
}

static void
s_on_cancel_state (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        const char *state = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
            ? kiln_reply_str (reply->element [1]) : "";
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        ||  !s_same_app (call, reply->element [0]) || !*state)
            s_cancel_answer (call, 404, "NOT_FOUND", "Request not found", "not_found");
        else
        if (strcmp (state, "COMPLETED") == 0)
            s_cancel_answer (call, 400, "ALREADY_COMPLETED",
                             "Request is already completed", "already_completed");
        else
        if (strcmp (state, "IN_QUEUE") != 0)
            //  Running: a runner cannot be interrupted yet
            s_cancel_answer (call, 202, "CANCELLATION_REQUESTED", NULL, NULL);
        else {
            kiln_key_t req_key = kiln_key_request (call->route.id);
            kiln_key_t logs_key = kiln_key_logs (call->route.id);
            kiln_key_t queue_key = kiln_key_queue (call->route.app);
            char now [24];
            char retention [24];
            snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
            snprintf (retention, sizeof retention, "%d", call->gw->cfg->result_retention_s);
            const char *argv [] = {
                "EVAL", KILN_SCRIPT_COMPLETE, "4",
                req_key.s, logs_key.s, queue_key.s, KILN_KEY_INFLIGHT,
                call->route.id, "499", "", "", "Request cancelled by the client",
                "client_cancelled", now, retention, "0", "0"
            };
            size_t argc = sizeof argv / sizeof argv [0];
            size_t argvlen [sizeof argv / sizeof argv [0]];
            for (size_t i = 0; i < argc; i++)
                argvlen [i] = strlen (argv [i]);
            kiln_call_redis (call, s_on_cancelled, (int) argc, argv, argvlen);
        }
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_queue (kiln_call_t *call)
{
    kiln_key_t req_key = kiln_key_request (call->route.id);
    switch (call->route.kind) {
        case KILN_ROUTE_QUEUE_STATUS:
        case KILN_ROUTE_QUEUE_STREAM: {
            char *logs = kiln_call_query (call, "logs");
            call->want_logs = s_flag (logs);
            free (logs);
            call->number = 0;
            s_fetch_status (call);
            break;
        }
        case KILN_ROUTE_QUEUE_RESULT:
            kiln_call_redisf (call, s_on_result,
                              "HMGET %s app state status result_content_type result_body error error_type",
                              req_key.s);
            break;
        case KILN_ROUTE_QUEUE_CANCEL:
            kiln_call_redisf (call, s_on_cancel_state, "HMGET %s app state", req_key.s);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
