/*  =========================================================================
    gateway_keys — the API key management routes (/v1/keys)

    Only ADMIN keys get here (gateway_auth.c). The operator's key (owner
    "*") manages every owner's keys; an owner's ADMIN key only its own
    owner's (another owner's key is not found). A new key's secret is in
    the answer to its creation and nowhere else: Redis keeps a salt and
    the salted hash (kiln_auth.h), lists never show either.

    | takes                              | sends to Redis                    | answers                         |
    |------------------------------------|-----------------------------------|---------------------------------|
    | POST /v1/keys {scope, owner?}      | MULTI HSET kiln:apikey:{id},      | 201 {id, secret, key, scope,    |
    |                                    | SADD kiln:apikeys EXEC            | owner, created_ms}; 400, 403    |
    | GET /v1/keys                       | EVAL (every key's public fields)  | [{id, scope, owner, created_ms, |
    |                                    |                                   | revoked, revoked_ms?}]          |
    | DELETE /v1/keys/{id}               | EVAL: sets revoked_ms if the      | 200 {id, revoked: true};        |
    |                                    | owner matches                     | 404 like an unknown key         |
    =========================================================================
*/
#include "gateway_internal.h"
#include "inputs.h"
#include "kiln_auth.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Every key's id, scope, owner, created_ms and revoked_ms, never the
//  salt or hash. KEYS[1] = kiln:apikeys.
static const char *s_list_script =
    "local out = {}\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  local f = redis.call('HMGET', 'kiln:apikey:' .. id,\n"
    "    'id', 'scope', 'owner', 'created_ms', 'revoked_ms')\n"
    "  if f[1] then table.insert(out, f) end\n"
    "end\n"
    "return out\n";

//  Revokes a key of owner ARGV[1] ("*": any) at ARGV[2] ms. KEYS[1] =
//  kiln:apikey:{id}. -1 not found (or another owner's), 0 revoked
//  already, 1 revoked now.
static const char *s_revoke_script =
    "local f = redis.call('HMGET', KEYS[1], 'owner', 'revoked_ms')\n"
    "if not f[1] then return -1 end\n"
    "if ARGV[1] ~= '*' and f[1] ~= ARGV[1] then return -1 end\n"
    "if f[2] then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'revoked_ms', ARGV[2])\n"
    "return 1\n";

//  The owner whose keys the caller manages: "*" for all of them.
static const char *
s_manages (kiln_call_t *call)
{
    return kiln_access_all (&call->caller) ? KILN_OWNER_ANY : call->caller.owner;
}


//  --------------------------------------------------------------------------
//  POST /v1/keys

static void
s_on_created (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    //  The answer, secret and all, waited in call->last_event (unused by
    //  this route) for the write to succeed
    char *answer = call->last_event;
    call->last_event = NULL;
    if (kiln_call_usable (call, reply) && answer) {
        if (reply->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
            kiln_call_reply (call, 201, "application/json", answer, strlen (answer));
    }
    if (answer) {
        explicit_bzero (answer, strlen (answer));
        free (answer);
    }
    kiln_call_unref (&call);
}

static void
s_create (kiln_call_t *call)
{
    if (!kiln_call_body_fits (call))
        return;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    char scope [16];
    char owner [KILN_NAME_MAX + 1];
    char why [KILN_INPUT_WHY_MAX];
    int status = kiln_input_key_request (body, size,
                                         call->caller.kind == KILN_CALLER_KEY
                                         ? call->caller.owner : NULL,
                                         scope, owner, why);
    if (status)
        kiln_call_error (call, status, "bad_request", "%s", why);
    else
    if (!kiln_access_owns (&call->caller, owner)
    ||  (strcmp (owner, KILN_OWNER_ANY) == 0 && !kiln_access_all (&call->caller)))
        kiln_call_error (call, 403, "forbidden",
                         "A key of owner %s may make keys for owner %s only",
                         call->caller.owner, call->caller.owner);
    else {
        kiln_auth_key_t key;
        if (kiln_auth_key_make (&key) != 0) {
            kiln_call_error (call, 500, "internal_error", "Cannot make a key");
            return;
        }
        char created [24];
        int64_t created_ms = kiln_now_ms ();
        snprintf (created, sizeof created, "%" PRId64, created_ms);
        char full [KILN_AUTH_ID_LEN + KILN_AUTH_SECRET_LEN + 2];
        snprintf (full, sizeof full, "%s:%s", key.id, key.secret);
        json_t *answer = json_pack ("{s:s, s:s, s:s, s:s, s:s, s:I}",
                                    "id", key.id, "secret", key.secret, "key", full,
                                    "scope", scope, "owner", owner,
                                    "created_ms", (json_int_t) created_ms);
        call->last_event = answer ? json_dumps (answer, JSON_COMPACT) : NULL;
        json_decref (answer);
        explicit_bzero (full, sizeof full);
        explicit_bzero (key.secret, sizeof key.secret);
        if (!call->last_event)
            kiln_call_error (call, 500, "internal_error", "Out of memory");
        else {
            kiln_key_t hash_key = kiln_key_apikey (key.id);
            if (kiln_call_redisf_quiet (call, "MULTI") == 0
            &&  kiln_call_redisf_quiet (call, "HSET %s id %s scope %s owner %s salt %s hash %s "
                                        "created_ms %s", hash_key.s, key.id, scope, owner,
                                        key.salt, key.hash, created) == 0
            &&  kiln_call_redisf_quiet (call, "SADD %s %s", KILN_KEY_APIKEYS, key.id) == 0
            &&  kiln_call_redisf (call, s_on_created, "EXEC") == 0)
                kiln_log_info ("API key %s made: scope %s, owner %s", key.id, scope, owner);
            else {
                //  Redis is away (answered 503): the secret goes now
                explicit_bzero (call->last_event, strlen (call->last_event));
                free (call->last_event);
                call->last_event = NULL;
            }
        }
    }
}


//  --------------------------------------------------------------------------
//  GET /v1/keys

static json_t *
s_number (const redisReply *reply)
{
    const char *text = kiln_reply_str (reply);
    char *end = NULL;
    long long value = strtoll (text, &end, 10);
    return *text && !*end ? json_integer (value) : json_null ();
}

static int
s_compare_keys (const void *a, const void *b)
{
    json_t *left = *(json_t * const *) a;
    json_t *right = *(json_t * const *) b;
    json_int_t l = json_integer_value (json_object_get (left, "created_ms"));
    json_int_t r = json_integer_value (json_object_get (right, "created_ms"));
    if (l != r)
        return l < r ? -1 : 1;
    return strcmp (json_string_value (json_object_get (left, "id")),
                   json_string_value (json_object_get (right, "id")));
}

static void
s_on_listed (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            const char *manages = s_manages (call);
            json_t **items = calloc (reply->elements + 1, sizeof *items);
            size_t count = 0;
            for (size_t i = 0; items && i < reply->elements; i++) {
                redisReply *f = reply->element [i];
                if (f->type != REDIS_REPLY_ARRAY || f->elements != 5)
                    continue;
                const char *owner = kiln_reply_str (f->element [2]);
                if (strcmp (manages, KILN_OWNER_ANY) != 0 && strcmp (owner, manages) != 0)
                    continue;
                bool revoked = f->element [4]->type == REDIS_REPLY_STRING;
                json_t *item = json_pack ("{s:s, s:s, s:s, s:o, s:b}",
                                          "id", kiln_reply_str (f->element [0]),
                                          "scope", kiln_reply_str (f->element [1]),
                                          "owner", owner,
                                          "created_ms", s_number (f->element [3]),
                                          "revoked", revoked);
                if (item && revoked)
                    json_object_set_new (item, "revoked_ms", s_number (f->element [4]));
                if (item)
                    items [count++] = item;
            }
            json_t *list = items
                         ? kiln_gateway_sorted_array (items, count, s_compare_keys) : NULL;
            free (items);
            kiln_call_reply_json (call, 200, list);
        }
    }
    kiln_call_unref (&call);
}


//  --------------------------------------------------------------------------
//  DELETE /v1/keys/{id}

static void
s_on_revoked (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->integer < 0)
            kiln_call_error (call, 404, "not_found", "Key %s not found", call->route.id);
        else {
            if (reply->integer == 1)
                kiln_log_info ("API key %s revoked", call->route.id);
            kiln_gateway_auth_forget (call->gw, call->route.id);
            kiln_call_reply_json (call, 200, json_pack ("{s:s, s:b}", "id", call->route.id,
                                                        "revoked", 1));
        }
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_keys (kiln_call_t *call)
{
    switch (call->route.kind) {
        case KILN_ROUTE_KEYS_CREATE:
            s_create (call);
            break;
        case KILN_ROUTE_KEYS_LIST:
            kiln_call_redisf (call, s_on_listed, "EVAL %s 1 %s", s_list_script, KILN_KEY_APIKEYS);
            break;
        case KILN_ROUTE_KEY_REVOKE: {
            char now [24];
            snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
            kiln_call_redisf (call, s_on_revoked, "EVAL %s 1 %s %s %s", s_revoke_script,
                              kiln_key_apikey (call->route.id).s, s_manages (call), now);
            break;
        }
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}
