/*  =========================================================================
    gateway_internal — what gateway.c shares with its route handlers

    gateway.c owns the loop, the Redis connections and the life of each
    HTTP call; gateway_v1.c (management API), gateway_queue.c (queue API)
    and gateway_metrics.c (/metrics) answer their routes through the
    kiln_call_* helpers below.

    A call (kiln_call_t) is one HTTP request being answered. It is
    reference-counted: one reference for the HTTP side (dropped when the
    answer is sent or the client goes away) and one per Redis command in
    flight (dropped by that command's callback). call->req is NULL once
    the HTTP side is done: callbacks must then do nothing but release.
    =========================================================================
*/
#ifndef KILN_GATEWAY_INTERNAL_H_INCLUDED
#define KILN_GATEWAY_INTERNAL_H_INCLUDED

#include "gateway.h"
#include "access.h"
#include "route.h"
#include "kiln_config.h"
#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_redis.h"
#include "kiln_util.h"

#include <czmq.h>
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/async.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

//  Highest HTTP status we count in /metrics.
#define KILN_STATUS_MAX 599

struct _kiln_gateway_t {
    kiln_config_t *cfg;                 //  not owned
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct event *sigint;
    struct event *sigterm;
    struct event *reconnect_timer;
    struct event *cmd_flush;            //  writes the commands of this loop turn (s_cmd_flush)
    kiln_redis_url_t *redis_url;
    redisAsyncContext *cmd;             //  commands
    redisAsyncContext *sub;             //  subscribed to our reply channel
    bool cmd_ready;                     //  cmd authenticated, db selected
    bool sub_ready;                     //  subscription confirmed
    bool redis_up;                      //  both: we answer from Redis
    bool listening;                     //  the listener is enabled
    bool stopping;
    bool down_logged;                   //  said once that Redis is down
    int reconnect_delay_ms;
    char id [KILN_UUID_LEN + 1];        //  this gateway's id
    kiln_key_t channel;                 //  kiln:done:{id}
    zhashx_t *pending;                  //  request id → kiln_call_t, sync calls waiting
    zlistx_t *streams;                  //  kiln_call_t with a chunked answer under way
    uint64_t answered [KILN_STATUS_MAX + 1];
    uint64_t clients_gone;
    uint64_t redis_reconnects;
    struct _kiln_auth_state_t *auth;    //  gateway_auth.c: the mode and the key cache
    struct _kiln_ratelimit_t *ratelimit;    //  per-caller buckets; NULL: no limit
};

typedef struct _kiln_call_t kiln_call_t;
struct _kiln_call_t {
    kiln_gateway_t *gw;
    struct evhttp_request *req;         //  NULL once answered or the client went away
    struct event *watch;                //  notices a client that goes away (long waits)
    struct event *timer;                //  status stream polling
    int refs;
    int64_t started_ms;                 //  monotonic
    const char *method;
    kiln_route_t route;
    char request_id [KILN_ROUTE_ID_MAX + 1];    //  sent as x-fal-request-id when set
    bool pending;                       //  in gw->pending
    bool streaming;                     //  a chunked reply has started
    void *stream_handle;                //  in gw->streams
    bool want_logs;                     //  ?logs=1
    int64_t number;                     //  a handler's scratch (a size, a log offset)
    char *last_event;                   //  status stream: the last event's state line
    kiln_caller_t caller;               //  who calls (gateway_auth.c)
};

//  --------------------------------------------------------------------------
//  Calls (gateway.c)

void kiln_call_ref (kiln_call_t *call);
void kiln_call_unref (kiln_call_t **call_p);

//  Answers the call (once; later answers are dropped) and releases the
//  HTTP side. content_type may be NULL. Adds x-fal-request-id when set.
void kiln_call_reply (kiln_call_t *call, int status, const char *content_type,
                      const void *body, size_t size);

//  Answers with a JSON value (steals the reference; NULL → 500).
void kiln_call_reply_json (kiln_call_t *call, int status, json_t *json);

//  Answers {"detail": ..., "error_type": ...}.
void kiln_call_error (kiln_call_t *call, int status, const char *error_type,
                      const char *format, ...) __attribute__ ((format (printf, 4, 5)));

//  Adds a response header (dropped if not a valid header value).
void kiln_call_header (kiln_call_t *call, const char *name, const char *value);

//  The request body (not NUL-terminated; "" when empty).
const char *kiln_call_body (kiln_call_t *call, size_t *size);

//  A request header, or NULL.
const char *kiln_call_request_header (kiln_call_t *call, const char *name);

//  A query parameter, malloc'd (caller frees), or NULL.
char *kiln_call_query (kiln_call_t *call, const char *name);

//  Checks the body against KILN_MAX_BODY_BYTES; answers 413 and returns
//  false when it is over.
bool kiln_call_body_fits (kiln_call_t *call);

//  Sends a command for the call; fn gets the reply with the call as
//  privdata and must end with kiln_call_unref. -1 when Redis is down:
//  then the call has been answered 503 already.
int kiln_call_redis (kiln_call_t *call, redisCallbackFn *fn,
                     int argc, const char **argv, const size_t *argvlen);
int kiln_call_redisf (kiln_call_t *call, redisCallbackFn *fn, const char *format, ...);

//  Sends a command whose reply nobody reads (inside MULTI); -1 when
//  Redis is down (the call is answered 503).
int kiln_call_redisf_quiet (kiln_call_t *call, const char *format, ...);

//  For callbacks: true when the call still wants an answer and the reply
//  is usable. Otherwise answers 503 (no reply: Redis went away) or 500
//  (an error reply) as needed, and returns false.
bool kiln_call_usable (kiln_call_t *call, redisReply *reply);

//  Watches the client's connection while the call waits a long time, so
//  a client that goes away is noticed (evhttp does not read while a
//  request is being answered).
void kiln_call_watch_client (kiln_call_t *call);

//  Starts a chunked 200 answer (server-sent events); then
//  kiln_call_stream_send and kiln_call_stream_end.
void kiln_call_stream_start (kiln_call_t *call, const char *content_type);
void kiln_call_stream_send (kiln_call_t *call, const char *data, size_t size);
void kiln_call_stream_end (kiln_call_t *call);

//  --------------------------------------------------------------------------
//  Shared helpers (gateway.c)

//  public_url + path, malloc'd.
char *kiln_gateway_url (kiln_gateway_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  A JSON string from bytes that may not be UTF-8 (bad bytes become '?').
json_t *kiln_json_text (const char *text, size_t size);

//  A reply element as a NUL-terminated string; "" for nil or non-strings.
const char *kiln_reply_str (const redisReply *reply);

//  Replays a completed request's stored result: status, content type,
//  body, error, error_type (HMGET replies, in that order).
void kiln_gateway_replay (kiln_call_t *call, redisReply **fields);

//  --------------------------------------------------------------------------
//  Route handlers

//  gateway.c: sync and queue submits
void kiln_gateway_submit (kiln_call_t *call);
//  gateway_v1.c: /v1/...
void kiln_gateway_v1 (kiln_call_t *call);
//  gateway_v1.c, for every /v1 handler: answers 404 "App {app} is not
//  deployed" for call->route.app.
void kiln_gateway_app_not_found (kiln_call_t *call);
//  gateway_v1.c: items [0..count) sorted by compare (as qsort calls it)
//  in a new array, which takes over their references (released either
//  way). NULL when out of memory. The caller frees items itself.
json_t *kiln_gateway_sorted_array (json_t **items, size_t count,
                                   int (*compare) (const void *, const void *));
//  gateway_queue.c: status, stream, result, cancel
void kiln_gateway_queue (kiln_call_t *call);
//  gateway_queue.c: one stored log line as {message, level, source,
//  timestamp}; NULL when out of memory
json_t *kiln_gateway_log_json (const redisReply *line);
//  gateway_metrics.c: GET /metrics (answers even while Redis is down)
void kiln_gateway_metrics (kiln_call_t *call);
//  gateway_jwks.c: GET /.well-known/jwks.json (no key needed)
void kiln_gateway_jwks (kiln_call_t *call);

//  --------------------------------------------------------------------------
//  API keys and access (gateway_auth.c, gateway_keys.c; rules in access.h)

//  Reads KILN_AUTH and the listen host: whether keys are required. Logs
//  a warning when keys are off on an address others can reach. 0 or -1.
int kiln_gateway_auth_setup (kiln_gateway_t *self);
void kiln_gateway_auth_destroy (kiln_gateway_t *self);
//  Drops a key from this gateway's cache (it was just revoked here).
void kiln_gateway_auth_forget (kiln_gateway_t *self, const char *key_id);

//  Finds out who calls (call->caller), checks they may use the route,
//  then kiln_gateway_dispatch (); or answers 401, 403 or 404 itself.
void kiln_gateway_auth (kiln_call_t *call);

//  gateway.c: runs the route's handler (after kiln_gateway_auth).
void kiln_gateway_dispatch (kiln_call_t *call);

//  Whether the caller may see and manage app ("owner/app") through /v1:
//  lists leave out the others.
bool kiln_gateway_sees_app (kiln_call_t *call, const char *app);

//  gateway_keys.c: GET/POST /v1/keys, DELETE /v1/keys/{id}
void kiln_gateway_keys (kiln_call_t *call);

//  gateway_secrets.c: PUT/GET /v1/apps/{owner}/{app}/secrets,
//  DELETE /v1/apps/{owner}/{app}/secrets/{name}
void kiln_gateway_secrets (kiln_call_t *call);

#endif
