/*  =========================================================================
    gateway_secrets — an app's secrets (/v1/apps/{owner}/{app}/secrets)

    Secrets are name → value pairs a worker gives to the app's runners as
    environment variables (worker.c), for tokens a model's setup needs.
    They are written here and read by workers only: no answer carries a
    value, and nothing here logs one. Only the app's owner's ADMIN keys
    (and the operator's) get here (gateway_auth.c). A runner sees the
    secrets as they were when it started.

    | takes                                   | sends to Redis         | answers                       |
    |-----------------------------------------|------------------------|-------------------------------|
    | PUT .../secrets {NAME: "value", ...}    | EVAL s_set_script      | 200 {app, set: [names],       |
    |                                         |                        | count}; 400, 404, 413, 422    |
    | GET .../secrets                         | EVAL s_list_script     | 200 {app, secrets: [{name,    |
    |                                         |                        | updated_ms}]}; 404            |
    | DELETE .../secrets/{NAME}               | EVAL s_unset_script    | 200 {app, name, deleted};     |
    |                                         |                        | 404 (app, or secret not set)  |

    In kiln:app:{app}:secrets each secret is two fields: NAME (the value)
    and NAME:updated_ms (names have no ':').
    =========================================================================
*/
#include "gateway_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Longest secret value: a token or a small key file, not a model.
#define SECRET_VALUE_MAX_BYTES (32 * 1024)
//  Most secrets an app holds: they all go into each runner's environment.
#define SECRETS_PER_APP_MAX 100

//  KEYS app, secrets; ARGV now_ms, max, then NAME, value pairs. -1 no
//  such app, -2 over the max (nothing written), else the app's count.
static const char *s_set_script =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "local new = 0\n"
    "for i = 3, #ARGV, 2 do\n"
    "  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then new = new + 1 end\n"
    "end\n"
    "local count = math.floor(redis.call('HLEN', KEYS[2]) / 2)\n"
    "if count + new > tonumber(ARGV[2]) then return -2 end\n"
    "for i = 3, #ARGV, 2 do\n"
    "  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1], ARGV[i] .. ':updated_ms', ARGV[1])\n"
    "end\n"
    "return count + new\n";

//  KEYS app, secrets. -1 no such app, else {name, updated_ms, ...}:
//  the values stay in Redis.
static const char *s_list_script =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "local out = {}\n"
    "local all = redis.call('HGETALL', KEYS[2])\n"
    "for i = 1, #all, 2 do\n"
    "  local name = string.match(all[i], '^(.*):updated_ms$')\n"
    "  if name then\n"
    "    table.insert(out, name)\n"
    "    table.insert(out, all[i + 1])\n"
    "  end\n"
    "end\n"
    "return out\n";

//  KEYS app, secrets; ARGV NAME. -1 no such app, 0 not set, 1 deleted.
static const char *s_unset_script =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "return redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':updated_ms') > 0 and 1 or 0\n";


//  --------------------------------------------------------------------------
//  PUT .../secrets

static void
s_on_set (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->integer == -1)
            kiln_gateway_app_not_found (call);
        else
        if (reply->integer == -2)
            kiln_call_error (call, 422, "bad_request",
                             "An app holds at most %d secrets; unset some first",
                             SECRETS_PER_APP_MAX);
        else {
            //  The names, from the body again (still there: not answered)
            size_t size;
            const char *body = kiln_call_body (call, &size);
            json_t *secrets = json_loadb (body, size, 0, NULL);
            json_t *names = json_array ();
            const char *name;
            json_t *value;
            json_object_foreach (secrets, name, value)
                json_array_append_new (names, json_string (name));
            json_decref (secrets);
            json_t *json = json_pack ("{s:s, s:o, s:I}", "app", call->route.app,
                                      "set", names ? names : json_array (),
                                      "count", (json_int_t) reply->integer);
            kiln_call_reply_json (call, 200, json);
        }
    }
    kiln_call_unref (&call);
}

static void
s_set (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    json_error_t error;
    json_t *secrets = json_loadb (body, size, 0, &error);
    if (!json_is_object (secrets) || json_object_size (secrets) == 0) {
        //  Not error.text: it may quote the body, values included
        kiln_call_error (call, 422, "bad_request",
                         "Body must be a JSON object {\"NAME\": \"value\", ...} with at least "
                         "one secret");
        json_decref (secrets);
        return;
    }
    if (json_object_size (secrets) > SECRETS_PER_APP_MAX) {
        kiln_call_error (call, 422, "bad_request", "An app holds at most %d secrets",
                         SECRETS_PER_APP_MAX);
        json_decref (secrets);
        return;
    }
    size_t argc = 7 + 2 * json_object_size (secrets);
    const char **argv = calloc (argc, sizeof (char *));
    size_t *argvlen = calloc (argc, sizeof (size_t));
    if (!argv || !argvlen) {
        kiln_call_error (call, 500, "internal_error", "Out of memory");
        goto done;
    }
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t secrets_key = kiln_key_app_secrets (call->route.app);
    char now [24], max [16];
    snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
    snprintf (max, sizeof max, "%d", SECRETS_PER_APP_MAX);
    argv [0] = "EVAL";
    argv [1] = s_set_script;
    argv [2] = "2";
    argv [3] = app_key.s;
    argv [4] = secrets_key.s;
    size_t at = 5;
    argv [at++] = now;
    argv [at++] = max;
    argc = at + 2 * json_object_size (secrets);
    const char *name;
    json_t *value;
    json_object_foreach (secrets, name, value) {
        if (!kiln_route_secret_name_valid (name, strlen (name))) {
            kiln_call_error (call, 400, "bad_request",
                             "Secret name '%.64s%s' is not valid: [A-Z_][A-Z0-9_]*, at most %d "
                             "characters, not starting with KILN_", name,
                             strlen (name) > 64 ? "…" : "", KILN_ROUTE_SECRET_NAME_MAX);
            goto done;
        }
        //  Never the value in an error: only its name and what is wrong
        if (!json_is_string (value)) {
            kiln_call_error (call, 422, "bad_request", "Secret %s: the value must be a string",
                             name);
            goto done;
        }
        size_t length = json_string_length (value);
        if (length > SECRET_VALUE_MAX_BYTES) {
            kiln_call_error (call, 413, "payload_too_large",
                             "Secret %s: the value is %zu bytes; the limit is %d", name,
                             length, SECRET_VALUE_MAX_BYTES);
            goto done;
        }
        if (strlen (json_string_value (value)) != length) {
            kiln_call_error (call, 422, "bad_request",
                             "Secret %s: the value holds a NUL character, which an "
                             "environment variable cannot", name);
            goto done;
        }
        argv [at] = name;
        argvlen [at++] = strlen (name);
        argv [at] = json_string_value (value);
        argvlen [at++] = length;
    }
    for (size_t i = 0; i < 7; i++)
        argvlen [i] = strlen (argv [i]);
    kiln_call_redis (call, s_on_set, (int) argc, argv, argvlen);

done:
    free (argv);
    free (argvlen);
    json_decref (secrets);
}


//  --------------------------------------------------------------------------
//  GET .../secrets

static void
s_on_list (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == -1)
            kiln_gateway_app_not_found (call);
        else
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            //  Sorted by name: a stable listing
            json_t *by_name = json_object ();
            for (size_t i = 0; by_name && i < reply->elements; i += 2) {
                const char *ms = kiln_reply_str (reply->element [i + 1]);
                json_object_set_new (by_name, kiln_reply_str (reply->element [i]),
                                     json_integer (strtoll (ms, NULL, 10)));
            }
            json_t *list = json_array ();
            const char **names = calloc (json_object_size (by_name) + 1, sizeof (char *));
            size_t count = 0;
            const char *name;
            json_t *value;
            json_object_foreach (by_name, name, value)
                if (names)
                    names [count++] = name;
            for (size_t i = 1; i < count; i++)
                for (size_t j = i; j > 0 && strcmp (names [j - 1], names [j]) > 0; j--) {
                    const char *swap = names [j];
                    names [j] = names [j - 1];
                    names [j - 1] = swap;
                }
            for (size_t i = 0; list && i < count; i++)
                json_array_append_new (list, json_pack ("{s:s, s:O}", "name", names [i],
                                                        "updated_ms",
                                                        json_object_get (by_name, names [i])));
            free (names);
            kiln_call_reply_json (call, 200, json_pack ("{s:s, s:o}", "app", call->route.app,
                                                        "secrets", list ? list : json_array ()));
            json_decref (by_name);
        }
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------
//  DELETE .../secrets/{NAME}

static void
s_on_unset (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->integer == -1)
            kiln_gateway_app_not_found (call);
        else
        if (reply->integer == 0)
            kiln_call_error (call, 404, "not_found", "Secret %s is not set on %s",
                             call->route.id, call->route.app);
        else
            kiln_call_reply_json (call, 200, json_pack ("{s:s, s:s, s:b}", "app",
                                                        call->route.app, "name",
                                                        call->route.id, "deleted", 1));
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------

void
kiln_gateway_secrets (kiln_call_t *call)
{
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t secrets_key = kiln_key_app_secrets (call->route.app);
    switch (call->route.kind) {
        case KILN_ROUTE_SECRETS_SET:
            s_set (call);
            break;
        case KILN_ROUTE_SECRETS_LIST:
            kiln_call_redisf (call, s_on_list, "EVAL %s 2 %s %s", s_list_script,
                              app_key.s, secrets_key.s);
            break;
        case KILN_ROUTE_SECRET_UNSET:
            kiln_call_redisf (call, s_on_unset, "EVAL %s 2 %s %s %s", s_unset_script,
                              app_key.s, secrets_key.s, call->route.id);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
