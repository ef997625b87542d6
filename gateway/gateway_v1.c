/*  =========================================================================
    gateway_v1 — the management API the CLI uses (/v1/...)

    | takes                               | sends to Redis                      | answers                   |
    |-------------------------------------|-------------------------------------|---------------------------|
    | PUT /v1/artifacts/{sha256} (bytes)  | SET kiln:artifact:{sha256}          | 201 {artifact, size}      |
    | POST /v1/apps {name, artifact,      | EVAL DEPLOY (kiln_scripts.h)       | 201 {name, revision,      |
    |   manifest}                         |                                     |   sync_url, queue_url}    |
    | GET /v1/apps                        | EVAL LIST_APPS (kiln_scripts.h)   | 200 {apps: [...]}         |
    | GET /v1/apps/{owner}/{app}          | HMGET kiln:app:{app}                | 200 {app} or 404          |
    | PATCH /v1/apps/{owner}/{app}        | EVAL SCALE (kiln_scripts.h)       | 200 {app}, 404, or 422    |
    |   {min_concurrency?, max_concurrency?, concurrency_buffer?,            |   (bounds that make no    |
    |    keep_alive?, reset?}                                                |   sense)                  |
    | DELETE /v1/apps/{owner}/{app}       | EVAL UNDEPLOY                       | 200 {deleted} or 404      |
    | GET /v1/apps/{owner}/{app}/revisions| HGET revision, HVALS revisions      | 200 {revisions, current}  |
    |                                     |                                     |   or 404                  |
    | POST /v1/apps/{owner}/{app}/rollback| EVAL ROLLBACK                       | 200 {app}, 404, or 422    |
    |   {revision}                        |                                     |   (unknown revision)      |
    | GET /v1/apps/{owner}/{app}/logs     | EXISTS app, then XRANGE (since) or  | 200 {logs, next} or 404   |
    |   [?since=ID][&limit=N]             |   XREVRANGE (the last N) kiln:logs  |                           |
    | GET /v1/requests/{id}               | EVAL REQUEST_SHOW                   | 200 {request} or 404      |
    | PUT /v1/requests/{id}/cancel        | HGET app, then the queue API's      | as the queue API's cancel |
    |                                     |   cancel with the record's app      |                           |
    | GET /v1/runners[?app=OWNER/APP]     | HVALS kiln:runners                  | 200 {runners: [...]}      |
    | GET /v1/workers                     | HVALS kiln:workers                  | 200 {workers: [...]}      |

    An app as it is answered: {name, revision, artifact, manifest (object),
    updated_ms, urls: {sync, queue}, scale (the live overrides, {} when
    none), effective {min_concurrency, max_concurrency, concurrency_buffer,
    keep_alive} (what the broker scales by: an override, else the
    manifest's value), failed_starts (in a row), last_error (null when
    none), last_error_ms (null when none)}.

    Revisions are answered newest first, each {revision, artifact,
    manifest, created_ms}; current is the revision that serves. A request
    is answered as {id, app, path, state, status, error, error_type,
    priority, created_ms, started_ms, completed_ms, attempts, runner,
    queue_position (IN_QUEUE only), logs}: never its body or result.

    An app's log lines (kiln:logs:{app}, a stream the broker appends to:
    its handlers' lines and its runners' own output) are answered oldest
    first, each {id, timestamp, level, source, message, runner_id,
    request_id (a handler's line only), revision}; next is the id to pass
    as since to get the lines after these (since itself when none came).
    Without since: the last `limit` lines (default LOGS_LIMIT_DEFAULT).

    Runners and workers are the broker's view, which it rewrites every
    second (kiln_keys.h); they are answered as the broker wrote them,
    runners sorted by app then id, workers by id.
    =========================================================================
*/
#include "gateway_internal.h"
#include "inputs.h"
#include "kiln_scripts.h"
#include "kiln_manifest.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Lines an app's log read answers by default, and at most.
#define LOGS_LIMIT_DEFAULT 100
#define LOGS_LIMIT_MAX 1000

//  The bounds an operator may change live, as the manifest names them
//  (inputs.c parses the PATCH that sets them).
static const char **s_scale_fields = kiln_input_scale_fields;

//  A number stored as a decimal string, or -1.
static long long
s_number (const redisReply *reply)
{
    const char *text = kiln_reply_str (reply);
    char *end = NULL;
    long long value = strtoll (text, &end, 10);
    return *text && end && !*end ? value : -1;
}

void
kiln_gateway_app_not_found (kiln_call_t *call)
{
    kiln_call_error (call, 404, "not_found", "App %s is not deployed", call->route.app);
}

json_t *
kiln_gateway_sorted_array (json_t **items, size_t count,
                           int (*compare) (const void *, const void *))
{
    qsort (items, count, sizeof *items, compare);
    json_t *array = json_array ();
    for (size_t i = 0; i < count; i++) {
        if (array)
            json_array_append (array, items [i]);
        json_decref (items [i]);
    }
    return array;
}

//  A JSON object stored as text (new reference), or NULL.
static json_t *
s_object (const redisReply *stored)
{
    if (!stored || stored->type != REDIS_REPLY_STRING)
        return NULL;
    json_t *value = json_loadb (stored->str, stored->len, 0, NULL);
    if (json_is_object (value))
        return value;
    json_decref (value);
    return NULL;
}

//  {name, revision, artifact, manifest, updated_ms, urls, scale, effective,
//  failed_starts, last_error, last_error_ms} from the stored fields, in
//  the order of KILN_APP_FIELDS.
static json_t *
s_app_json (kiln_gateway_t *gw, redisReply **fields, const char *fallback_name)
{
    const char *name = kiln_reply_str (fields [0]);
    if (!*name)
        name = fallback_name;
    json_t *app = json_object ();
    if (!app)
        return NULL;
    json_object_set_new (app, "name", kiln_json_text (name, strlen (name)));
    json_object_set_new (app, "revision", json_integer (s_number (fields [1])));
    json_object_set_new (app, "artifact", json_string (kiln_reply_str (fields [2])));
    json_t *manifest = s_object (fields [3]);
    json_object_set_new (app, "manifest", manifest ? manifest : json_null ());
    json_object_set_new (app, "updated_ms", json_integer (s_number (fields [4])));
    json_t *urls = json_object ();
    if (urls) {
        char *url = kiln_gateway_url (gw, "/%s", name);
        json_object_set_new (urls, "sync", url ? json_string (url) : json_null ());
        free (url);
        url = kiln_gateway_url (gw, "/queue/%s", name);
        json_object_set_new (urls, "queue", url ? json_string (url) : json_null ());
        free (url);
        json_object_set_new (app, "urls", urls);
    }
    //  Live control: the overrides, and what the broker scales by
    json_t *scale = s_object (fields [5]);
    if (!scale)
        scale = json_object ();
    json_t *effective = json_object ();
    for (int i = 0; effective && s_scale_fields [i]; i++) {
        json_t *value = json_object_get (scale, s_scale_fields [i]);
        if (!json_is_integer (value))
            value = json_object_get (manifest, s_scale_fields [i]);
        json_object_set_new (effective, s_scale_fields [i],
                             json_is_integer (value) ? json_copy (value) : json_null ());
    }
    json_object_set_new (app, "scale", scale ? scale : json_null ());
    json_object_set_new (app, "effective", effective ? effective : json_null ());
    long long failed_starts = s_number (fields [6]);
    json_object_set_new (app, "failed_starts", json_integer (failed_starts > 0 ? failed_starts : 0));
    const char *last_error = kiln_reply_str (fields [7]);
    json_object_set_new (app, "last_error",
                         *last_error ? kiln_json_text (last_error, strlen (last_error)) : json_null ());
    long long last_error_ms = s_number (fields [8]);
    json_object_set_new (app, "last_error_ms",
                         last_error_ms > 0 ? json_integer (last_error_ms) : json_null ());
    return app;
}


//  --------------------------------------------------------------------------
//  PUT /v1/artifacts/{sha256}

static void
s_on_artifact_stored (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        kiln_log_info ("stored artifact %s (%" PRId64 " bytes)", call->route.id, call->number);
        kiln_call_reply_json (call, 201, json_pack ("{s:s, s:I}", "artifact", call->route.id,
                                                    "size", (json_int_t) call->number));
    }
    kiln_call_unref (&call);
}

static void
s_artifact_put (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    char sha [KILN_SHA256_HEX_LEN + 1];
    kiln_sha256_hex (body, size, sha);
    if (strcmp (sha, call->route.id) != 0) {
        kiln_call_error (call, 400, "bad_request",
                         "Artifact hash mismatch: the body's SHA-256 is %s", sha);
        return;
    }
    call->number = (int64_t) size;
    kiln_key_t key = kiln_key_artifact (sha);
    const char *argv [] = { "SET", key.s, body };
    size_t argvlen [] = { 3, strlen (key.s), size };
    kiln_call_redis (call, s_on_artifact_stored, 3, argv, argvlen);
}


//  --------------------------------------------------------------------------
//  POST /v1/apps

static void
s_on_deployed (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the deploy script");
        else
        if (reply->integer < 0)
            kiln_call_error (call, 400, "bad_request",
                             "Artifact %s is not uploaded: PUT /v1/artifacts/%s first",
                             call->route.id, call->route.id);
        else {
            const char *name = call->route.app;
            kiln_log_info ("deployed %s revision %lld (artifact %s)",
                           name, reply->integer, call->route.id);
            char *sync_url = kiln_gateway_url (call->gw, "/%s", name);
            char *queue_url = kiln_gateway_url (call->gw, "/queue/%s", name);
            json_t *json = sync_url && queue_url
                ? json_pack ("{s:s, s:I, s:s, s:s, s:s, s:{s:s, s:s}}",
                             "name", name, "revision", (json_int_t) reply->integer,
                             "artifact", call->route.id,
                             "sync_url", sync_url, "queue_url", queue_url,
                             "urls", "sync", sync_url, "queue", queue_url)
                : NULL;
            free (sync_url);
            free (queue_url);
            kiln_call_reply_json (call, 201, json);
        }
    }
    kiln_call_unref (&call);
}

static void
s_apps_deploy (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    kiln_input_deploy_t deploy;
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_deploy (body, size, &deploy, why);
    if (status) {
        kiln_call_error (call, status, status == 500 ? "internal_error" : "bad_request",
                         "%s", why);
        return;
    }
    //  Kept for the answer
    snprintf (call->route.app, sizeof call->route.app, "%s", deploy.name);
    snprintf (call->route.id, sizeof call->route.id, "%s", deploy.artifact);
    kiln_key_t app_key = kiln_key_app (deploy.name);
    kiln_key_t artifact_key = kiln_key_artifact (deploy.artifact);
    kiln_key_t revisions_key = kiln_key_revisions (deploy.name);
    char now [24];
    snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
    const char *argv [] = {
        "EVAL", KILN_SCRIPT_DEPLOY, "4", app_key.s, KILN_KEY_APPS, artifact_key.s,
        revisions_key.s,
        deploy.name, deploy.artifact, deploy.manifest, now
    };
    size_t argvlen [sizeof argv / sizeof argv [0]];
    for (size_t i = 0; i < sizeof argv / sizeof argv [0]; i++)
        argvlen [i] = strlen (argv [i]);
    kiln_call_redis (call, s_on_deployed, (int) (sizeof argv / sizeof argv [0]),
                     argv, argvlen);
    free (deploy.manifest);
}


//  --------------------------------------------------------------------------
//  GET /v1/apps, GET /v1/apps/{owner}/{app}

static void
s_on_apps_listed (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements % KILN_APP_FIELD_COUNT)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the list script");
        else {
            json_t *apps = json_array ();
            for (size_t i = 0; apps && i < reply->elements; i += KILN_APP_FIELD_COUNT)
                //  A key sees its own owner's apps only (gateway_auth.c)
                if (kiln_gateway_sees_app (call, kiln_reply_str (reply->element [i])))
                    json_array_append_new (apps, s_app_json (call->gw, reply->element + i, ""));
            kiln_call_reply_json (call, 200, apps ? json_pack ("{s:o}", "apps", apps) : NULL);
        }
    }
    kiln_call_unref (&call);
}

static void
s_on_app (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != KILN_APP_FIELD_COUNT)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->element [1]->type != REDIS_REPLY_STRING)
            kiln_gateway_app_not_found (call);
        else
            kiln_call_reply_json (call, 200, s_app_json (call->gw, reply->element, call->route.app));
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------
//  PATCH /v1/apps/{owner}/{app}: live scale overrides

static void
s_on_scaled (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        long long code = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0
                      && reply->element [0]->type == REDIS_REPLY_INTEGER
                       ? reply->element [0]->integer : 0;
        if (code == -1)
            kiln_gateway_app_not_found (call);
        else
        if (code == -2 && reply->elements == 3)
            kiln_call_error (call, 422, "bad_request",
                             "min_concurrency would be %s and max_concurrency %s: the minimum "
                             "must not exceed the maximum (values not given are the app's own, "
                             "or its earlier overrides)",
                             kiln_reply_str (reply->element [1]),
                             kiln_reply_str (reply->element [2]));
        else
        if (code == 1 && reply->elements == 1 + KILN_APP_FIELD_COUNT) {
            json_t *app = s_app_json (call->gw, reply->element + 1, call->route.app);
            char *text = app ? json_dumps (json_object_get (app, "scale"), JSON_COMPACT) : NULL;
            kiln_log_info ("scaled %s: overrides %s", call->route.app, text ? text : "?");
            free (text);
            kiln_call_reply_json (call, 200, app);
        }
        else
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the scale script");
    }
    kiln_call_unref (&call);
}

static void
s_app_scale (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    char values [KILN_INPUT_SCALE_FIELD_COUNT][24];
    bool reset = false;
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_scale_patch (body, size, values, &reset, why);
    if (status) {
        kiln_call_error (call, status, "bad_request", "%s", why);
        return;
    }
    kiln_key_t key = kiln_key_app (call->route.app);
    kiln_call_redisf (call, s_on_scaled, "EVAL %s 1 %s %s %s %s %s %s %s",
                      KILN_SCRIPT_SCALE, key.s, call->route.app, reset ? "1" : "0",
                      values [0], values [1], values [2], values [3]);
}


//  --------------------------------------------------------------------------
//  GET /v1/apps/{owner}/{app}/revisions

static int
s_compare_revisions (const void *a, const void *b)
{
    json_int_t left = json_integer_value (json_object_get (*(json_t * const *) a, "revision"));
    json_int_t right = json_integer_value (json_object_get (*(json_t * const *) b, "revision"));
    return left < right ? 1 : left > right ? -1 : 0;    //  newest first
}

//  EXEC's answer: HGET revision, HVALS revisions
static void
s_on_revisions (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        ||  reply->element [1]->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->element [0]->type != REDIS_REPLY_STRING)
            kiln_gateway_app_not_found (call);
        else {
            redisReply *stored = reply->element [1];
            json_t **items = calloc (stored->elements + 1, sizeof *items);
            size_t count = 0;
            for (size_t i = 0; items && i < stored->elements; i++) {
                json_t *item = s_object (stored->element [i]);
                if (item && json_is_integer (json_object_get (item, "revision")))
                    items [count++] = item;
                else
                    json_decref (item);
            }
            json_t *list = items
                         ? kiln_gateway_sorted_array (items, count, s_compare_revisions) : NULL;
            free (items);
            kiln_call_reply_json (call, 200, list
                ? json_pack ("{s:o, s:I}", "revisions", list,
                             "current", (json_int_t) s_number (reply->element [0]))
                : NULL);
        }
    }
    kiln_call_unref (&call);
}

static void
s_app_revisions (kiln_call_t *call)
{
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t revisions_key = kiln_key_revisions (call->route.app);
    //  One snapshot, so current is always one of the revisions listed
    if (kiln_call_redisf_quiet (call, "MULTI") == 0
    &&  kiln_call_redisf_quiet (call, "HGET %s revision", app_key.s) == 0
    &&  kiln_call_redisf_quiet (call, "HVALS %s", revisions_key.s) == 0)
        kiln_call_redisf (call, s_on_revisions, "EXEC");
}


//  --------------------------------------------------------------------------
//  GET /v1/apps/{owner}/{app}/logs[?since=ID][&limit=N]

//  A stream id as Redis makes them: MS-SEQ (or MS alone), digits only.
static bool
s_stream_id_valid (const char *id)
{
    size_t digits = strspn (id, "0123456789");
    if (digits == 0 || digits > 20)
        return false;
    if (id [digits] == 0)
        return true;
    const char *seq = id + digits + 1;
    size_t seq_digits = strspn (seq, "0123456789");
    return id [digits] == '-' && seq_digits > 0 && seq_digits <= 20 && seq [seq_digits] == 0;
}

//  One stream entry [id, [field, value, ...]] as a log line, or NULL.
static json_t *
s_stream_line (const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2
    ||  entry->element [0]->type != REDIS_REPLY_STRING
    ||  entry->element [1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    json_t *line = json_pack ("{s:s, s:n, s:s, s:s, s:s, s:n}", "id", entry->element [0]->str,
                              "timestamp", "level", "INFO", "source", "runner", "message", "",
                              "runner_id");
    const redisReply *fields = entry->element [1];
    for (size_t i = 0; line && i + 1 < fields->elements; i += 2) {
        const char *name = kiln_reply_str (fields->element [i]);
        const redisReply *value = fields->element [i + 1];
        const char *key = strcmp (name, "ts") == 0? "timestamp": name;
        if (strcmp (name, "revision") == 0)
            json_object_set_new (line, key, json_integer (s_number (value)));
        else
        if (value->type == REDIS_REPLY_STRING
        &&  (strcmp (name, "ts") == 0 || strcmp (name, "level") == 0
          || strcmp (name, "source") == 0 || strcmp (name, "message") == 0
          || strcmp (name, "runner_id") == 0 || strcmp (name, "request_id") == 0))
            json_object_set_new (line, key, kiln_json_text (value->str, value->len));
    }
    return line;
}

//  EXEC's answer: EXISTS app, then the entries (XRANGE: oldest first;
//  XREVRANGE, call->number 1: newest first)
static void
s_on_logs (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        ||  reply->element [0]->type != REDIS_REPLY_INTEGER
        ||  reply->element [1]->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->element [0]->integer == 0)
            kiln_gateway_app_not_found (call);
        else {
            redisReply *entries = reply->element [1];
            bool newest_first = call->number == 1;
            json_t *logs = json_array ();
            for (size_t i = 0; logs && i < entries->elements; i++) {
                size_t index = newest_first? entries->elements - 1 - i: i;
                json_t *line = s_stream_line (entries->element [index]);
                if (line)
                    json_array_append_new (logs, line);
            }
            //  The next read starts after the last line answered.
            char *since = kiln_call_query (call, "since");
            size_t count = json_array_size (logs);
            const char *next = count
                ? json_string_value (json_object_get (json_array_get (logs, count - 1), "id"))
                : since? since: "0-0";
            kiln_call_reply_json (call, 200, logs
                ? json_pack ("{s:o, s:s}", "logs", logs, "next", next? next: "0-0") : NULL);
            free (since);
        }
    }
    kiln_call_unref (&call);
}

static void
s_app_logs (kiln_call_t *call)
{
    char *since = kiln_call_query (call, "since");
    char *limit_text = kiln_call_query (call, "limit");
    long long limit = LOGS_LIMIT_DEFAULT;
    if (limit_text) {
        char *end = NULL;
        limit = strtoll (limit_text, &end, 10);
        if (!*limit_text || *end || limit < 1 || limit > LOGS_LIMIT_MAX)
            limit = -1;
    }
    free (limit_text);
    if (limit < 0) {
        free (since);
        kiln_call_error (call, 400, "bad_request", "limit must be a whole number from 1 to %d",
                         LOGS_LIMIT_MAX);
        return;
    }
    if (since && !s_stream_id_valid (since)) {
        free (since);
        kiln_call_error (call, 400, "bad_request",
                         "since must be a log line id as 'next' gives it (digits-digits)");
        return;
    }
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t stream = kiln_key_app_logs (call->route.app);
    call->number = since? 0: 1;
    //  One snapshot, so an app deleted meanwhile answers 404, not lines
    if (kiln_call_redisf_quiet (call, "MULTI") == 0
    &&  kiln_call_redisf_quiet (call, "EXISTS %s", app_key.s) == 0
    &&  (since
         ? kiln_call_redisf_quiet (call, "XRANGE %s (%s + COUNT %lld", stream.s, since, limit)
         : kiln_call_redisf_quiet (call, "XREVRANGE %s + - COUNT %lld", stream.s, limit)) == 0)
        kiln_call_redisf (call, s_on_logs, "EXEC");
    free (since);
}


//  --------------------------------------------------------------------------
//  POST /v1/apps/{owner}/{app}/rollback {revision}

//  ROLLBACK's answer; then the app as it now is
static void
s_on_rolled_back (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the rollback script");
        else
        if (reply->integer == -1)
            kiln_gateway_app_not_found (call);
        else
        if (reply->integer == -2)
            kiln_call_error (call, 422, "bad_request", "App %s has no revision %" PRId64,
                             call->route.app, call->number);
        else {
            kiln_log_info ("rolled %s back to revision %lld", call->route.app, reply->integer);
            kiln_key_t key = kiln_key_app (call->route.app);
            kiln_call_redisf (call, s_on_app, "HMGET %s " KILN_APP_FIELDS, key.s);
        }
    }
    kiln_call_unref (&call);
}

static void
s_app_rollback (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_rollback (body, size, &call->number, why);
    if (status) {
        kiln_call_error (call, status, "bad_request", "%s", why);
        return;
    }
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t revisions_key = kiln_key_revisions (call->route.app);
    kiln_call_redisf (call, s_on_rolled_back, "EVAL %s 2 %s %s %s %" PRId64 " %" PRId64,
                      KILN_SCRIPT_ROLLBACK, app_key.s, revisions_key.s, call->route.app,
                      call->number, kiln_now_ms ());
}


//  --------------------------------------------------------------------------
//  GET /v1/requests/{id}, PUT /v1/requests/{id}/cancel

//  A stored number, or null when missing
static json_t *
s_number_json (const redisReply *stored)
{
    long long value = s_number (stored);
    return value >= 0 ? json_integer (value) : json_null ();
}

//  A stored text, or null when missing or empty
static json_t *
s_text_json (const redisReply *stored)
{
    const char *text = kiln_reply_str (stored);
    return *text ? kiln_json_text (text, strlen (text)) : json_null ();
}

static void
s_on_request (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    enum { R_ID, R_APP, R_PATH, R_STATE, R_STATUS, R_ERROR, R_ERROR_TYPE, R_PRIORITY,
           R_CREATED, R_STARTED, R_COMPLETED, R_ATTEMPTS, R_RUNNER };
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->elements == 0)
            kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
        else
        if (reply->elements != KILN_REQUEST_SHOW_FIELD_COUNT + 2)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            redisReply **f = reply->element;
            json_t *json = json_object ();
            if (json) {
                json_object_set_new (json, "id", json_string (call->route.id));
                json_object_set_new (json, "app", s_text_json (f [R_APP]));
                json_object_set_new (json, "path", s_text_json (f [R_PATH]));
                json_object_set_new (json, "state", s_text_json (f [R_STATE]));
                json_object_set_new (json, "status", s_number_json (f [R_STATUS]));
                json_object_set_new (json, "error", s_text_json (f [R_ERROR]));
                json_object_set_new (json, "error_type", s_text_json (f [R_ERROR_TYPE]));
                json_object_set_new (json, "priority", s_text_json (f [R_PRIORITY]));
                json_object_set_new (json, "created_ms", s_number_json (f [R_CREATED]));
                json_object_set_new (json, "started_ms", s_number_json (f [R_STARTED]));
                json_object_set_new (json, "completed_ms", s_number_json (f [R_COMPLETED]));
                long long attempts = s_number (f [R_ATTEMPTS]);
                json_object_set_new (json, "attempts", json_integer (attempts > 0 ? attempts : 0));
                json_object_set_new (json, "runner", s_text_json (f [R_RUNNER]));
                redisReply *rank = f [KILN_REQUEST_SHOW_FIELD_COUNT];
                if (strcmp (kiln_reply_str (f [R_STATE]), "IN_QUEUE") == 0)
                    json_object_set_new (json, "queue_position",
                                         json_integer (rank->type == REDIS_REPLY_INTEGER
                                                       ? rank->integer : 0));
                json_t *logs = json_array ();
                redisReply *lines = f [KILN_REQUEST_SHOW_FIELD_COUNT + 1];
                for (size_t i = 0; logs && lines->type == REDIS_REPLY_ARRAY
                                   && i < lines->elements; i++) {
                    json_t *entry = kiln_gateway_log_json (lines->element [i]);
                    if (entry)
                        json_array_append_new (logs, entry);
                }
                json_object_set_new (json, "logs", logs ? logs : json_null ());
            }
            kiln_call_reply_json (call, 200, json);
        }
    }
    kiln_call_unref (&call);
}

//  The record's app: then it is the queue API's cancel, under that app
static void
s_on_cancel_app (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        const char *app = kiln_reply_str (reply);
        if (!kiln_app_name_valid (app))
            kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
        else {
            snprintf (call->route.app, sizeof call->route.app, "%s", app);
            call->route.kind = KILN_ROUTE_QUEUE_CANCEL;
            kiln_gateway_queue (call);
        }
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------
//  GET /v1/runners, GET /v1/workers

//  Orders runners by app, then id; workers (no app) by id.
static int
s_compare_views (const void *a, const void *b)
{
    json_t *left = *(json_t * const *) a;
    json_t *right = *(json_t * const *) b;
    const char *left_app = json_string_value (json_object_get (left, "app"));
    const char *right_app = json_string_value (json_object_get (right, "app"));
    int order = strcmp (left_app ? left_app : "", right_app ? right_app : "");
    if (order)
        return order;
    const char *left_id = json_string_value (json_object_get (left, "id"));
    const char *right_id = json_string_value (json_object_get (right, "id"));
    return strcmp (left_id ? left_id : "", right_id ? right_id : "");
}

//  The broker's JSON values (HVALS) as a sorted array, of one app when
//  app is not empty. Values that are not JSON objects are skipped.
static json_t *
s_views (redisReply *reply, const char *app)
{
    json_t **items = calloc (reply->elements + 1, sizeof *items);
    if (!items)
        return NULL;
    size_t count = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        json_t *item = s_object (reply->element [i]);
        if (!item)
            continue;
        const char *its_app = json_string_value (json_object_get (item, "app"));
        if (*app && (!its_app || strcmp (its_app, app) != 0)) {
            json_decref (item);
            continue;
        }
        items [count++] = item;
    }
    json_t *array = kiln_gateway_sorted_array (items, count, s_compare_views);
    free (items);
    return array;
}

static void
s_on_views (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            bool runners = call->route.kind == KILN_ROUTE_RUNNERS_LIST;
            json_t *list = s_views (reply, call->route.app);
            //  A key sees its own owner's runners only (gateway_auth.c)
            for (size_t i = json_array_size (list); runners && i > 0; i--) {
                json_t *runner = json_array_get (list, i - 1);
                const char *app = json_string_value (json_object_get (runner, "app"));
                if (!kiln_gateway_sees_app (call, app ? app : ""))
                    json_array_remove (list, i - 1);
            }
            kiln_call_reply_json (call, 200, list
                ? json_pack ("{s:o}", runners ? "runners" : "workers", list) : NULL);
        }
    }
    kiln_call_unref (&call);
}

static void
s_views_list (kiln_call_t *call)
{
    bool runners = call->route.kind == KILN_ROUTE_RUNNERS_LIST;
    char *app = runners ? kiln_call_query (call, "app") : NULL;
    if (app && *app) {
        if (!kiln_app_name_valid (app)) {
            kiln_call_error (call, 400, "bad_request",
                             "app must be OWNER/APP, each part 1-%d of [a-z0-9_-]", KILN_NAME_MAX);
            free (app);
            return;
        }
        //  Kept for the answer: the filter
        snprintf (call->route.app, sizeof call->route.app, "%s", app);
    }
    free (app);
    kiln_call_redisf (call, s_on_views, "HVALS %s", runners ? KILN_KEY_RUNNERS : KILN_KEY_WORKERS);
}


//  --------------------------------------------------------------------------
//  DELETE /v1/apps/{owner}/{app}

static void
s_on_undeployed (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the delete script");
        else
        if (reply->integer == 0)
            kiln_gateway_app_not_found (call);
        else {
            //  Its log lines go with it (a late line is never added back:
            //  kiln_scripts.h, APP_LOG); an answer nobody needs to wait for.
            kiln_call_redisf_quiet (call, "DEL %s", kiln_key_app_logs (call->route.app).s);
            kiln_log_info ("deleted %s", call->route.app);
            kiln_call_reply_json (call, 200, json_pack ("{s:s}", "deleted", call->route.app));
        }
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_v1 (kiln_call_t *call)
{
    kiln_key_t key = kiln_key_app (call->route.app);
    switch (call->route.kind) {
        case KILN_ROUTE_ARTIFACT_PUT:
            s_artifact_put (call);
            break;
        case KILN_ROUTE_APPS_DEPLOY:
            s_apps_deploy (call);
            break;
        case KILN_ROUTE_APPS_LIST:
            kiln_call_redisf (call, s_on_apps_listed, "EVAL %s 1 %s",
                              KILN_SCRIPT_LIST_APPS, KILN_KEY_APPS);
            break;
        case KILN_ROUTE_APP_GET:
            kiln_call_redisf (call, s_on_app, "HMGET %s " KILN_APP_FIELDS, key.s);
            break;
        case KILN_ROUTE_APP_SCALE:
            s_app_scale (call);
            break;
        case KILN_ROUTE_RUNNERS_LIST:
        case KILN_ROUTE_WORKERS_LIST:
            s_views_list (call);
            break;
        case KILN_ROUTE_APP_DELETE:
            kiln_call_redisf (call, s_on_undeployed, "EVAL %s 3 %s %s %s %s",
                              KILN_SCRIPT_UNDEPLOY, key.s, KILN_KEY_APPS,
                              kiln_key_revisions (call->route.app).s, call->route.app);
            break;
        case KILN_ROUTE_APP_REVISIONS:
            s_app_revisions (call);
            break;
        case KILN_ROUTE_APP_ROLLBACK:
            s_app_rollback (call);
            break;
        case KILN_ROUTE_APP_LOGS:
            s_app_logs (call);
            break;
        case KILN_ROUTE_REQUEST_GET:
            kiln_call_redisf (call, s_on_request, "EVAL %s 2 %s %s %s", KILN_SCRIPT_REQUEST_SHOW,
                              kiln_key_request (call->route.id).s,
                              kiln_key_logs (call->route.id).s, "kiln:queue:");
            break;
        case KILN_ROUTE_REQUEST_CANCEL:
            kiln_call_redisf (call, s_on_cancel_app, "HGET %s app",
                              kiln_key_request (call->route.id).s);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
