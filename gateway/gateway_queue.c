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
    | GET  .../requests/{id}/status/stream    | the same, every STREAM_POLL_MS  | text/event-stream: the status    |
    |  [?logs=1]                              | (LRANGE from the first line not | now, then one event per log line |
    |                                         | sent yet); none while Redis is  | and per change, to COMPLETED     |
    |                                         | down (the stream waits for it)  |                                  |
    | GET  .../requests/{id}                  | HMGET kiln:req:{id}             | the stored result, or 400 while  |
    |                                         |                                 | not completed                    |
    | PUT  .../requests/{id}/cancel           | EVAL CANCEL: queued → 499       | 202 CANCELLATION_REQUESTED,      |
    |                                         | client_cancelled; running →     | 400 ALREADY_COMPLETED,           |
    |                                         | kiln:cancel (broker → runner)   | 404 NOT_FOUND                    |
    =========================================================================
*/
#include "gateway_internal.h"
#include "inputs.h"
#include "kiln_scripts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  How often a status stream looks at the request.
#define STREAM_POLL_MS 250

static void s_fetch_status (kiln_call_t *call);

//  Fields read for a status, in order
enum { F_APP, F_STATE, F_ERROR, F_ERROR_TYPE, F_INFERENCE_MS, F_STARTED_MS, F_COUNT };

//  EXEC's answer, in order: HMGET, ZRANK, LRANGE (when logs are read)
enum { X_RECORD, X_RANK, X_LOGS };

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

//  One stored log line (JSON text) as {message, level, source,
//  timestamp}, whatever the line held: fal's clients read all four.
json_t *
kiln_gateway_log_json (const redisReply *line)
{
    json_t *stored = line->type == REDIS_REPLY_STRING
                   ? json_loadb (line->str, line->len, 0, NULL) : NULL;
    json_t *entry = json_object ();
    if (!entry) {
        json_decref (stored);
        return NULL;
    }
    json_t *message = json_object_get (stored, "message");
    json_t *level = json_object_get (stored, "level");
    json_t *source = json_object_get (stored, "source");
    json_t *timestamp = json_object_get (stored, "timestamp");
    if (json_is_string (message))
        json_object_set (entry, "message", message);
    else
    if (!stored && line->type == REDIS_REPLY_STRING)
        //  Not JSON: the text is the message
        json_object_set_new (entry, "message", kiln_json_text (line->str, line->len));
    else
        json_object_set_new (entry, "message", json_string (""));
    json_object_set_new (entry, "level", json_is_string (level)
                         ? json_incref (level) : json_string ("INFO"));
    json_object_set_new (entry, "source", json_is_string (source)
                         ? json_incref (source) : json_string ("app"));
    json_object_set_new (entry, "timestamp", json_is_string (timestamp)
                         ? json_incref (timestamp) : json_null ());
    json_decref (stored);
    return entry;
}

//  Lines [from, to) of an LRANGE answer as an array.
static json_t *
s_logs_json (const redisReply *lines, size_t from, size_t to)
{
    json_t *logs = json_array ();
    if (!logs || !lines || lines->type != REDIS_REPLY_ARRAY)
        return logs;
    for (size_t i = from; i < to && i < lines->elements; i++) {
        json_t *entry = kiln_gateway_log_json (lines->element [i]);
        if (entry)
            json_array_append_new (logs, entry);
    }
    return logs;
}

//  The status object of a request in `state` (which may be one it went
//  through, not the record's), without its logs. NULL when out of memory.
static json_t *
s_status_json (kiln_call_t *call, const redisReply *exec, const char *state)
{
    const redisReply *record = exec->element [X_RECORD];
    json_t *json = json_object ();
    if (!json)
        return NULL;
    json_object_set_new (json, "status", json_string (state));
    json_object_set_new (json, "request_id", json_string (call->route.id));
    s_set_url (call, json, "response_url", "");
    s_set_url (call, json, "status_url", "/status");
    s_set_url (call, json, "cancel_url", "/cancel");
    if (strcmp (state, "IN_QUEUE") == 0) {
        //  ZRANK in the app's queue: the requests that start before this
        //  one, priority bands included, in O(log n)
        const redisReply *rank = exec->element [X_RANK];
        json_object_set_new (json, "queue_position",
                             json_integer (rank->type == REDIS_REPLY_INTEGER ? rank->integer : 0));
    }
    if (strcmp (state, "COMPLETED") == 0) {
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

//  The record's state, or NULL when the request is not known under this
//  URL's app (unknown, expired, or another app's).
static const char *
s_record_state (kiln_call_t *call, const redisReply *exec)
{
    const redisReply *record = exec->element [X_RECORD];
    if (record->type != REDIS_REPLY_ARRAY || record->elements != F_COUNT
    ||  !s_same_app (call, record->element [F_APP]))
        return NULL;
    const char *state = kiln_reply_str (record->element [F_STATE]);
    return *state ? state : "IN_QUEUE";
}

static const redisReply *
s_exec_logs (kiln_call_t *call, const redisReply *exec)
{
    return call->want_logs && exec->elements > X_LOGS ? exec->element [X_LOGS] : NULL;
}

static size_t
s_line_count (const redisReply *logs)
{
    return logs && logs->type == REDIS_REPLY_ARRAY ? logs->elements : 0;
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
//
//  A stream polls the record every STREAM_POLL_MS. Its first event is the
//  current status, with every log line so far (what a status poll would
//  say); after that, one event per new log line (with that line only)
//  and one per change of state or queue position, until COMPLETED. Lines
//  are read by their index in the list, which only grows while the
//  request runs, so none is sent twice or skipped however many arrive
//  between two polls.

static void
s_on_stream_tick (evutil_socket_t fd, short what, void *arg);

//  The next poll of a stream, STREAM_POLL_MS from now; ends the stream
//  when it cannot be armed.
static void
s_stream_next_poll (kiln_call_t *call)
{
    if (!call->timer)
        call->timer = evtimer_new (call->gw->base, s_on_stream_tick, call);
    struct timeval poll = { 0, STREAM_POLL_MS * 1000 };
    if (!call->timer || evtimer_add (call->timer, &poll) != 0)
        kiln_call_stream_end (call);
}

static void
s_on_stream_tick (evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    kiln_call_t *call = arg;
    if (call->streaming && !call->gw->redis_up)
        //  Redis is away: the stream goes quiet until it is back rather
        //  than ending before COMPLETED
        s_stream_next_poll (call);
    else
        s_fetch_status (call);
}

//  What an event says beyond its log lines: "STATE POSITION".
static void
s_event_key (json_t *json, char *key, size_t size)
{
    const char *state = json_string_value (json_object_get (json, "status"));
    snprintf (key, size, "%s %lld", state ? state : "",
              (long long) json_integer_value (json_object_get (json, "queue_position")));
}

//  Sends one server-sent event and remembers its state and position, so
//  the next poll can tell what changed. Takes the JSON.
static void
s_stream_event (kiln_call_t *call, json_t *json, json_t *logs)
{
    if (!json) {
        json_decref (logs);
        return;
    }
    json_object_set_new (json, "logs", logs ? logs : json_null ());
    char *text = json_dumps (json, JSON_COMPACT | JSON_REAL_PRECISION (9));
    if (text) {
        char *event = NULL;
        int size = asprintf (&event, "data: %s\n\n", text);
        if (size > 0)
            kiln_call_stream_send (call, event, (size_t) size);
        free (event);
        free (text);
    }
    char key [64];
    s_event_key (json, key, sizeof key);
    free (call->last_event);
    call->last_event = strdup (key);
    json_decref (json);
}

static bool
s_stream_state_was (kiln_call_t *call, const char *state)
{
    size_t size = strlen (state);
    return call->last_event && strncmp (call->last_event, state, size) == 0
        && call->last_event [size] == ' ';
}

static void
s_on_stream_status (kiln_call_t *call, redisReply *exec)
{
    const char *state = s_record_state (call, exec);
    const redisReply *logs = s_exec_logs (call, exec);
    size_t lines = s_line_count (logs);
    bool completed = state && strcmp (state, "COMPLETED") == 0;
    if (!call->streaming) {
        if (!state) {
            kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
            return;
        }
        kiln_call_stream_start (call, "text/event-stream");
        kiln_call_watch_client (call);
        //  A client that comes late gets where the request stands first
        s_stream_event (call, s_status_json (call, exec, state),
                        call->want_logs ? s_logs_json (logs, 0, lines) : NULL);
    }
    else
    if (!state) {
        //  Expired or deleted while we watched: nothing more will come
        kiln_call_stream_end (call);
        return;
    }
    else {
        //  Lines are written while the request runs: a poll that finds it
        //  COMPLETED sends them as IN_PROGRESS, then the end
        const char *running = completed ? "IN_PROGRESS" : state;
        for (size_t i = 0; i < lines; i++)
            s_stream_event (call, s_status_json (call, exec, running), s_logs_json (logs, i, i + 1));
        //  It ran between two polls without a line: it was IN_PROGRESS
        const char *started = kiln_reply_str (exec->element [X_RECORD]->element [F_STARTED_MS]);
        if (completed && lines == 0 && *started && s_stream_state_was (call, "IN_QUEUE"))
            s_stream_event (call, s_status_json (call, exec, "IN_PROGRESS"),
                            call->want_logs ? json_array () : NULL);
        json_t *json = s_status_json (call, exec, state);
        char key [64];
        s_event_key (json, key, sizeof key);
        if (!call->last_event || strcmp (key, call->last_event) != 0)
            s_stream_event (call, json, call->want_logs ? json_array () : NULL);
        else
            json_decref (json);
    }
    call->number += (int64_t) lines;
    if (completed) {
        kiln_call_stream_end (call);
        return;
    }
    s_stream_next_poll (call);
}

static void
s_on_status (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (!reply && call->req && call->streaming && !call->gw->stopping)
        //  Redis went away during a poll: wait for it (see s_on_stream_tick)
        s_stream_next_poll (call);
    else
    if (s_exec_usable (call, reply)) {
        if (call->route.kind == KILN_ROUTE_QUEUE_STREAM)
            s_on_stream_status (call, reply);
        else {
            const char *state = s_record_state (call, reply);
            json_t *json = state ? s_status_json (call, reply, state) : NULL;
            if (json) {
                //  fal's clients read "logs" on every status: null unless asked for
                const redisReply *logs = s_exec_logs (call, reply);
                json_object_set_new (json, "logs", call->want_logs
                                     ? s_logs_json (logs, 0, s_line_count (logs)) : json_null ());
                kiln_call_reply_json (call, strcmp (state, "COMPLETED") == 0 ? 200 : 202, json);
            }
            else
            if (state)
                kiln_call_error (call, 500, "internal_error", "Out of memory");
            else
                kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
        }
    }
    kiln_call_unref (&call);
}

//  One atomic read of everything a status holds; a stream reads only the
//  log lines it has not sent yet.
static void
s_fetch_status (kiln_call_t *call)
{
    kiln_key_t req_key = kiln_key_request (call->route.id);
    kiln_key_t queue_key = kiln_key_queue (call->route.app);
    kiln_key_t logs_key = kiln_key_logs (call->route.id);
    if (kiln_call_redisf_quiet (call, "MULTI")
    ||  kiln_call_redisf_quiet (call, "HMGET %s app state error error_type inference_ms started_ms",
                                req_key.s)
    ||  kiln_call_redisf_quiet (call, "ZRANK %s %s", queue_key.s, call->route.id))
        return;
    if (call->want_logs
    &&  kiln_call_redisf_quiet (call, "LRANGE %s %lld -1", logs_key.s, (long long) call->number))
        return;
    kiln_call_redisf (call, s_on_status, "EXEC");
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
            //  Said at once, never waited for: the client polls the status
            snprintf (call->request_id, sizeof call->request_id, "%s", call->route.id);
            bool queued = strcmp (kiln_reply_str (reply->element [1]), "IN_PROGRESS") != 0;
            kiln_call_error (call, 400, "request_not_completed", "Request is still %s",
                             queued ? "in the queue" : "in progress");
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

//  CANCEL's answer: one atomic look and act, so a request that completes
//  meanwhile is never cancelled after the fact.
static void
s_on_cancelled (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        const char *answer = reply->type == REDIS_REPLY_STRING ? reply->str : "";
        if (strcmp (answer, "CANCELLED") == 0) {
            kiln_log_info ("request %s (%s) cancelled by its client while queued",
                           call->route.id, call->route.app);
            s_cancel_answer (call, 202, "CANCELLATION_REQUESTED", NULL, NULL);
        }
        else
        if (strcmp (answer, "CANCELLATION_REQUESTED") == 0) {
            //  The broker tells its runner; the handler decides when to stop
            kiln_log_info ("request %s (%s) cancelled by its client while running",
                           call->route.id, call->route.app);
            s_cancel_answer (call, 202, "CANCELLATION_REQUESTED", NULL, NULL);
        }
        else
        if (strcmp (answer, "ALREADY_COMPLETED") == 0)
            s_cancel_answer (call, 400, "ALREADY_COMPLETED",
                             "Request is already completed", "already_completed");
        else
        if (strcmp (answer, "NOT_FOUND") == 0)
            s_cancel_answer (call, 404, "NOT_FOUND", "Request not found", "not_found");
        else
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the cancel script");
    }
    kiln_call_unref (&call);
}

static void
s_cancel (kiln_call_t *call)
{
    kiln_key_t req_key = kiln_key_request (call->route.id);
    char now [24];
    char retention [24];
    snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
    snprintf (retention, sizeof retention, "%d", call->gw->cfg->result_retention_s);
    const char *argv [] = {
        "EVAL", KILN_SCRIPT_CANCEL, "1", req_key.s,
        call->route.id, call->route.app, now, retention
    };
    size_t argc = sizeof argv / sizeof argv [0];
    size_t argvlen [sizeof argv / sizeof argv [0]];
    for (size_t i = 0; i < argc; i++)
        argvlen [i] = strlen (argv [i]);
    kiln_call_redis (call, s_on_cancelled, (int) argc, argv, argvlen);
}

void
kiln_gateway_queue (kiln_call_t *call)
{
    kiln_key_t req_key = kiln_key_request (call->route.id);
    switch (call->route.kind) {
        case KILN_ROUTE_QUEUE_STATUS:
        case KILN_ROUTE_QUEUE_STREAM: {
            char *logs = kiln_call_query (call, "logs");
            call->want_logs = kiln_input_flag (logs);
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
            s_cancel (call);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
