/*  =========================================================================
    gateway_v1 — the management API the CLI uses (/v1/...)

    | takes                               | sends to Redis                      | answers                   |
    |-------------------------------------|-------------------------------------|---------------------------|
    | PUT /v1/artifacts/{sha256} (bytes)  | SET kiln:artifact:{sha256}          | 201 {artifact, size}      |
    | POST /v1/apps {name, artifact,      | EVAL DEPLOY (kiln_scripts.h)       | 201 {name, revision,      |
    |   manifest}                         |                                     |   sync_url, queue_url}    |
    | GET /v1/apps                        | EVAL LIST_APPS                      | 200 {apps: [...]}         |
    | GET /v1/apps/{owner}/{app}          | HMGET kiln:app:{app}                | 200 {app fields} or 404   |
    | DELETE /v1/apps/{owner}/{app}       | EVAL UNDEPLOY                       | 200 {deleted} or 404      |

    An app as it is answered: {name, revision, artifact, manifest (object),
    updated_ms, urls: {sync, queue}}.
    =========================================================================
*/
#include "gateway_internal.h"
#include "kiln_scripts.h"
#include "kiln_manifest.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  A number stored as a decimal string, or -1.
static long long
s_number (const redisReply *reply)
{
    const char *text = kiln_reply_str (reply);
    char *end = NULL;
    long long value = strtoll (text, &end, 10);
    return *text && end && !*end ? value : -1;
}

//  {name, revision, artifact, manifest, updated_ms, urls} from the five
//  stored fields, in that order.
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
    const redisReply *stored = fields [3];
    json_t *manifest = stored && stored->type == REDIS_REPLY_STRING
        ? json_loadb (stored->str, stored->len, 0, NULL) : NULL;
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
    json_error_t error;
    json_t *request = json_loadb (body, size, 0, &error);
    if (!json_is_object (request)) {
        json_decref (request);
        kiln_call_error (call, 400, "bad_request",
                         "Body must be a JSON object {name, artifact, manifest}");
        return;
    }
    const char *name = json_string_value (json_object_get (request, "name"));
    const char *artifact = json_string_value (json_object_get (request, "artifact"));
    json_t *manifest = json_object_get (request, "manifest");
    char *manifest_text = NULL;
    if (json_is_string (manifest))
        manifest_text = strdup (json_string_value (manifest));
    else
    if (json_is_object (manifest))
        manifest_text = json_dumps (manifest, JSON_COMPACT);

    if (!name || !kiln_app_name_valid (name)
    ||  kiln_route_owner_reserved (name, strcspn (name, "/")))
        kiln_call_error (call, 400, "bad_request",
                         "name must be owner/app: each part 1-%d of [a-z0-9_-], starting "
                         "with a letter or digit; owners queue, v1, files, health and "
                         "metrics are reserved", KILN_NAME_MAX);
    else
    if (!artifact || !kiln_route_sha256_valid (artifact))
        kiln_call_error (call, 400, "bad_request",
                         "artifact must be the artifact's SHA-256 in lower-case hex");
    else
    if (!manifest_text)
        kiln_call_error (call, 422, "bad_request", "manifest must be a JSON object");
    else {
        char *reason = NULL;
        kiln_manifest_t *parsed = kiln_manifest_from_json (manifest_text, strlen (manifest_text), &reason);
        char *canonical = parsed ? kiln_manifest_to_json (parsed) : NULL;
        if (!parsed)
            kiln_call_error (call, 422, "bad_request", "Invalid manifest: %s",
                             reason ? reason : "not valid");
        else
        if (!canonical)
            kiln_call_error (call, 500, "internal_error", "Out of memory");
        else {
            //  Kept for the answer
            snprintf (call->route.app, sizeof call->route.app, "%s", name);
            snprintf (call->route.id, sizeof call->route.id, "%s", artifact);
            kiln_key_t app_key = kiln_key_app (name);
            kiln_key_t artifact_key = kiln_key_artifact (artifact);
            char now [24];
            snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
            const char *argv [] = {
                "EVAL", KILN_SCRIPT_DEPLOY, "3", app_key.s, KILN_KEY_APPS, artifact_key.s,
                name, artifact, canonical, now
            };
            size_t argvlen [sizeof argv / sizeof argv [0]];
            for (size_t i = 0; i < sizeof argv / sizeof argv [0]; i++)
                argvlen [i] = strlen (argv [i]);
            kiln_call_redis (call, s_on_deployed, (int) (sizeof argv / sizeof argv [0]),
                             argv, argvlen);
        }
        free (canonical);
        free (reason);
        kiln_manifest_destroy (&parsed);
    }
    free (manifest_text);
    json_decref (request);
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
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements % KILN_LIST_APPS_FIELDS)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the list script");
        else {
            json_t *apps = json_array ();
            for (size_t i = 0; apps && i < reply->elements; i += KILN_LIST_APPS_FIELDS)
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
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != KILN_LIST_APPS_FIELDS)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->element [1]->type != REDIS_REPLY_STRING)
            kiln_call_error (call, 404, "not_found", "App %s is not deployed", call->route.app);
        else
            kiln_call_reply_json (call, 200, s_app_json (call->gw, reply->element, call->route.app));
    }
    kiln_call_unref (&call);
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
            kiln_call_error (call, 404, "not_found", "App %s is not deployed", call->route.app);
        else {
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
            kiln_call_redisf (call, s_on_app, "HMGET %s name revision artifact manifest updated_ms",
                              key.s);
            break;
        case KILN_ROUTE_APP_DELETE:
            kiln_call_redisf (call, s_on_undeployed, "EVAL %s 2 %s %s %s",
                              KILN_SCRIPT_UNDEPLOY, key.s, KILN_KEY_APPS, call->route.app);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
