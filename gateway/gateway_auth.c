/*  =========================================================================
    gateway_auth — who calls the gateway, and whether they may

    Every call but /health passes here before its handler. With keys off
    (KILN_AUTH=off, or auto on a loopback address) everyone may do
    everything, as before keys existed. Otherwise the Authorization header
    names a key (`Key id:secret`), read from Redis (kiln:apikey:{id}) and
    checked in constant time; then access.c decides, from the route and
    what it names (the app's app_auth, a request's app and caller), to
    run the handler (kiln_gateway_dispatch) or to answer 401, 403 or 404.
    What is hidden answers 404 with the very body of a thing that does not
    exist. docs/SECURITY.md has the rules in words.

    Lookups are cached per key id (valid and invalid alike) for
    KEY_CACHE_TTL_MS, so a revoked key stops working within that time;
    the cache holds at most KEY_CACHE_MAX ids.

    | takes                                  | sends to Redis                   | answers                       |
    |----------------------------------------|----------------------------------|-------------------------------|
    | any route but /health, /files          | HGETALL kiln:apikey:{id} (not    | 401 unauthorized + WWW-       |
    |                                        | cached)                          | Authenticate: Key             |
    | POST /{owner}/{app}..., /queue/...     | HGET kiln:app:{app} manifest     | 404 like an unknown app, 401  |
    |   (not the app's owner)                |   (app_auth)                     |                               |
    | GET/PUT /queue/.../requests/{id}...,   | HMGET kiln:req:{id} app caller   | 404 like an unknown request,  |
    | /v1/requests/{id}... (not the owner)   |                                  | 401                           |
    | /v1/..., /metrics                      | —                                | 401, 403 forbidden (scope,    |
    |                                        |                                  | operator only), 404 (another  |
    |                                        |                                  | owner's app)                  |
    =========================================================================
*/
#include "gateway_internal.h"
#include "inputs.h"
#include "kiln_auth.h"
#include "kiln_manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  How long a key lookup is trusted: a revocation takes effect within it.
#define KEY_CACHE_TTL_MS 2000
//  Most key ids cached; past it the cache starts afresh.
#define KEY_CACHE_MAX 10000

typedef struct _kiln_auth_state_t {
    bool required;              //  keys are checked
    zhashx_t *cache;            //  key id → s_entry_t
} kiln_auth_state_t;

//  One key, as Redis had it at `expires_ms - KEY_CACHE_TTL_MS`.
typedef struct {
    bool valid;                 //  exists, not revoked, well formed
    bool admin;
    char owner [KILN_NAME_MAX + 1];
    char salt [KILN_AUTH_SALT_LEN + 1];
    char hash [KILN_AUTH_HASH_LEN + 1];
    int64_t expires_ms;         //  monotonic
} s_entry_t;

static void
s_entry_destroy (void **entry_p)
{
    free (*entry_p);
    *entry_p = NULL;
}

//  What a route needs from its caller
typedef enum {
    NEEDS_NOTHING,              //  open to all (files: ids are unguessable)
    NEEDS_CALL,                 //  calling an app
    NEEDS_REQUEST,              //  reading or cancelling a request
    NEEDS_MANAGE,               //  the management API
} s_needs_t;

static s_needs_t
s_needs (kiln_route_kind_t kind)
{
    switch (kind) {
        case KILN_ROUTE_HEALTH:
        case KILN_ROUTE_JWKS:
        case KILN_ROUTE_FILE:
            return NEEDS_NOTHING;
        case KILN_ROUTE_SYNC:
        case KILN_ROUTE_QUEUE_SUBMIT:
            return NEEDS_CALL;
        case KILN_ROUTE_QUEUE_STATUS:
        case KILN_ROUTE_QUEUE_STREAM:
        case KILN_ROUTE_QUEUE_RESULT:
        case KILN_ROUTE_QUEUE_CANCEL:
        case KILN_ROUTE_REQUEST_GET:
        case KILN_ROUTE_REQUEST_CANCEL:
            return NEEDS_REQUEST;
        default:
            //  /v1, /metrics, and any route added later until it says
            //  otherwise: closed is the safe default
            return NEEDS_MANAGE;
    }
}


//  --------------------------------------------------------------------------
//  Setup

int
kiln_gateway_auth_setup (kiln_gateway_t *self)
{
    if (kiln_auth_init () != 0) {
        kiln_log_error ("cannot initialise libsodium");
        return -1;
    }
    kiln_auth_state_t *state = calloc (1, sizeof *state);
    if (!state || !(state->cache = zhashx_new ())) {
        free (state);
        return -1;
    }
    zhashx_set_destructor (state->cache, s_entry_destroy);
    self->auth = state;

    char *host = NULL;
    int port = 0;
    bool loopback = kiln_config_split_addr (self->cfg->http_addr, &host, &port) == 0
                 && kiln_access_loopback (host);
    free (host);
    const char *mode = self->cfg->auth ? self->cfg->auth : "auto";
    if (strcmp (mode, "required") == 0)
        state->required = true;
    else
    if (strcmp (mode, "off") == 0)
        state->required = false;
    else
        state->required = !loopback;

    if (state->required)
        kiln_log_info ("API keys required (KILN_AUTH=%s)", mode);
    else
    if (loopback)
        kiln_log_info ("API keys not checked (KILN_AUTH=%s): %s is loopback only",
                       mode, self->cfg->http_addr);
    else
        kiln_log_warn ("WARNING: API keys are OFF (KILN_AUTH=off) on %s, which is not "
                       "loopback: anyone who can reach this port can call, deploy and "
                       "read everything", self->cfg->http_addr);
    return 0;
}

void
kiln_gateway_auth_destroy (kiln_gateway_t *self)
{
    kiln_auth_state_t *state = self->auth;
    if (!state)
        return;
    zhashx_destroy (&state->cache);
    free (state);
    self->auth = NULL;
}

void
kiln_gateway_auth_forget (kiln_gateway_t *self, const char *key_id)
{
    kiln_auth_state_t *state = self->auth;
    if (state && key_id)
        zhashx_delete (state->cache, key_id);
}


//  --------------------------------------------------------------------------
//  Answers

static void
s_unauthorized (kiln_call_t *call, const char *detail)
{
    kiln_call_header (call, "WWW-Authenticate", "Key");
    kiln_call_error (call, 401, "unauthorized", "%s", detail);
}

//  The answer of a request that does not exist, exactly as its handler
//  (gateway_queue.c, gateway_v1.c) gives it.
static void
s_request_not_found (kiln_call_t *call)
{
    if (call->route.kind == KILN_ROUTE_QUEUE_CANCEL) {
        json_t *json = json_pack ("{s:s}", "status", "NOT_FOUND");
        if (json) {
            json_object_set_new (json, "detail", json_string ("Request not found"));
            json_object_set_new (json, "error_type", json_string ("not_found"));
        }
        kiln_call_reply_json (call, 404, json);
    }
    else
        kiln_call_error (call, 404, "not_found", "Request %s not found", call->route.id);
}

//  The answer of an app that is not deployed, exactly as the submit and
//  /v1 handlers give it (headers included).
static void
s_app_not_found (kiln_call_t *call)
{
    if (call->route.kind == KILN_ROUTE_SYNC || call->route.kind == KILN_ROUTE_QUEUE_SUBMIT)
        //  A submit to an unknown app got an id before the script said no
        kiln_uuid4 (call->request_id);
    kiln_call_error (call, 404, "not_found", "App %s is not deployed", call->route.app);
}

static void
s_forbidden (kiln_call_t *call, bool operator_only)
{
    if (!call->caller.admin)
        kiln_call_error (call, 403, "forbidden",
                         "This key has scope API; the management API needs an ADMIN key");
    else
    if (operator_only)
        kiln_call_error (call, 403, "forbidden", "Only the operator's key (owner *) may do this");
    else
        kiln_call_error (call, 403, "forbidden", "A key of owner %s may not do this",
                         call->caller.owner);
}


//  --------------------------------------------------------------------------
//  Calling an app

static void
s_on_app_auth (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        const char *app_auth = NULL;
        json_t *manifest = reply->type == REDIS_REPLY_STRING
                         ? json_loadb (reply->str, reply->len, 0, NULL) : NULL;
        if (reply->type == REDIS_REPLY_STRING) {
            app_auth = json_string_value (json_object_get (manifest, "app_auth"));
            if (!app_auth)
                app_auth = KILN_MANIFEST_AUTH_PRIVATE;
        }
        switch (kiln_access_call (&call->caller, call->route.app, app_auth)) {
            case KILN_ACCESS_ALLOW:
                kiln_gateway_dispatch (call);
                break;
            case KILN_ACCESS_UNAUTHORIZED:
                s_unauthorized (call, "This app needs an API key: Authorization: Key <id>:<secret>");
                break;
            default:
                s_app_not_found (call);
                break;
        }
        json_decref (manifest);
    }
    kiln_call_unref (&call);
}

static void
s_authorize_call (kiln_call_t *call)
{
    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of (call->route.app, owner);
    if (kiln_access_owns (&call->caller, owner)) {
        //  The owner's own app: its app_auth does not matter
        kiln_gateway_dispatch (call);
        return;
    }
    kiln_call_redisf (call, s_on_app_auth, "HGET %s manifest", kiln_key_app (call->route.app).s);
}


//  --------------------------------------------------------------------------
//  Reading a request

static void
s_on_request_owner (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        const char *app = NULL;
        const char *caller = NULL;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
        &&  reply->element [0]->type == REDIS_REPLY_STRING) {
            app = reply->element [0]->str;
            caller = kiln_reply_str (reply->element [1]);
            //  Under another app's URL it is not found, whoever asks
            if (call->route.app [0] && strcmp (app, call->route.app) != 0)
                app = NULL;
        }
        switch (kiln_access_request (&call->caller, app, caller)) {
            case KILN_ACCESS_ALLOW:
                kiln_gateway_dispatch (call);
                break;
            case KILN_ACCESS_UNAUTHORIZED:
                s_unauthorized (call, "This request needs an API key: Authorization: Key <id>:<secret>");
                break;
            default:
                s_request_not_found (call);
                break;
        }
    }
    kiln_call_unref (&call);
}

static void
s_authorize_request (kiln_call_t *call)
{
    bool v1 = call->route.kind == KILN_ROUTE_REQUEST_GET
           || call->route.kind == KILN_ROUTE_REQUEST_CANCEL;
    if (v1) {
        kiln_access_t access = kiln_access_manage (&call->caller, NULL, false);
        if (access == KILN_ACCESS_UNAUTHORIZED) {
            s_unauthorized (call, "The management API needs an API key: "
                                  "Authorization: Key <id>:<secret>");
            return;
        }
        if (access != KILN_ACCESS_ALLOW) {
            s_forbidden (call, false);
            return;
        }
    }
    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of (call->route.app, owner);
    if (kiln_access_all (&call->caller)
    ||  (!v1 && kiln_access_owns (&call->caller, owner))) {
        kiln_gateway_dispatch (call);
        return;
    }
    kiln_call_redisf (call, s_on_request_owner, "HMGET %s app caller",
                      kiln_key_request (call->route.id).s);
}


//  --------------------------------------------------------------------------
//  The management API

//  The owner part of a deploy's "name", or "" when the body has none
//  (the handler then says what is wrong).
static void
s_deploy_owner (kiln_call_t *call, char owner [KILN_NAME_MAX + 1])
{
    owner [0] = 0;
    size_t size;
    const char *body = kiln_call_body (call, &size);
    //  Too big: the handler refuses it before reading it
    if (size > call->gw->cfg->max_body_bytes)
        return;
    kiln_input_deploy_owner (body, size, owner);
}

static void
s_authorize_manage (kiln_call_t *call)
{
    kiln_route_kind_t kind = call->route.kind;
    bool operator_only = kind == KILN_ROUTE_WORKERS_LIST || kind == KILN_ROUTE_METRICS;
    char owner [KILN_NAME_MAX + 1] = "";
    if (call->route.app [0])
        kiln_access_owner_of (call->route.app, owner);
    kiln_access_t access = kiln_access_manage (&call->caller, NULL, operator_only);
    if (access == KILN_ACCESS_ALLOW && owner [0])
        access = kiln_access_manage (&call->caller, owner, operator_only);
    else
    if (access == KILN_ACCESS_ALLOW && kind == KILN_ROUTE_APPS_DEPLOY) {
        s_deploy_owner (call, owner);
        if (owner [0] && !kiln_access_owns (&call->caller, owner)) {
            //  Nothing of the other owner's apps is told: only that this
            //  key cannot deploy there
            kiln_call_error (call, 403, "forbidden",
                             "A key of owner %s may deploy only apps named %s/...",
                             call->caller.owner, call->caller.owner);
            return;
        }
    }
    switch (access) {
        case KILN_ACCESS_ALLOW:
            kiln_gateway_dispatch (call);
            break;
        case KILN_ACCESS_UNAUTHORIZED:
            s_unauthorized (call, "The management API needs an API key: "
                                  "Authorization: Key <id>:<secret>");
            break;
        case KILN_ACCESS_FORBIDDEN:
            s_forbidden (call, operator_only);
            break;
        case KILN_ACCESS_NOT_FOUND:
            s_app_not_found (call);
            break;
    }
}

static void
s_authorize (kiln_call_t *call)
{
    switch (s_needs (call->route.kind)) {
        case NEEDS_NOTHING:
            kiln_gateway_dispatch (call);
            break;
        case NEEDS_CALL:
            s_authorize_call (call);
            break;
        case NEEDS_REQUEST:
            s_authorize_request (call);
            break;
        case NEEDS_MANAGE:
            s_authorize_manage (call);
            break;
    }
}

bool
kiln_gateway_sees_app (kiln_call_t *call, const char *app)
{
    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of (app, owner);
    return kiln_access_owns (&call->caller, owner);
}


//  --------------------------------------------------------------------------
//  Checking the key

//  Checks the secret against a looked-up key; then authorizes the call.
static void
s_check (kiln_call_t *call, const s_entry_t *entry, const char *id, const char *secret)
{
    if (!entry->valid || !kiln_auth_check (secret, entry->salt, entry->hash)) {
        kiln_log_debug ("refused key %s for %s", id, call->method);
        s_unauthorized (call, "Invalid or revoked API key");
        return;
    }
    call->caller.kind = KILN_CALLER_KEY;
    call->caller.admin = entry->admin;
    snprintf (call->caller.owner, sizeof call->caller.owner, "%s", entry->owner);
    snprintf (call->caller.key_id, sizeof call->caller.key_id, "%s", id);
    s_authorize (call);
}

//  A key's hash as HGETALL gave it, as a cache entry.
static void
s_entry_from_reply (s_entry_t *entry, const redisReply *reply)
{
    memset (entry, 0, sizeof *entry);
    const char *scope = "", *owner = "", *salt = "", *hash = "";
    bool revoked = false;
    for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i + 1 < reply->elements; i += 2) {
        const char *field = kiln_reply_str (reply->element [i]);
        const char *value = kiln_reply_str (reply->element [i + 1]);
        if (strcmp (field, "scope") == 0)
            scope = value;
        else
        if (strcmp (field, "owner") == 0)
            owner = value;
        else
        if (strcmp (field, "salt") == 0)
            salt = value;
        else
        if (strcmp (field, "hash") == 0)
            hash = value;
        else
        if (strcmp (field, "revoked_ms") == 0 && *value)
            revoked = true;
    }
    bool owner_ok = strcmp (owner, KILN_OWNER_ANY) == 0
                  ? strcmp (scope, KILN_SCOPE_ADMIN) == 0
                  : kiln_name_part_valid (owner, strlen (owner));
    entry->valid = !revoked && kiln_auth_scope_valid (scope) && owner_ok
                && strlen (salt) == KILN_AUTH_SALT_LEN && strlen (hash) == KILN_AUTH_HASH_LEN;
    if (!entry->valid)
        return;
    entry->admin = strcmp (scope, KILN_SCOPE_ADMIN) == 0;
    snprintf (entry->owner, sizeof entry->owner, "%s", owner);
    snprintf (entry->salt, sizeof entry->salt, "%s", salt);
    snprintf (entry->hash, sizeof entry->hash, "%s", hash);
}

static void
s_cache_put (kiln_auth_state_t *state, const char *id, const s_entry_t *entry)
{
    if (zhashx_size (state->cache) >= KEY_CACHE_MAX) {
        //  Forget what has expired; if that is not enough, everything
        int64_t now = kiln_mono_ms ();
        zlistx_t *keys = zhashx_keys (state->cache);
        for (const char *key = keys ? zlistx_first (keys) : NULL; key; key = zlistx_next (keys)) {
            s_entry_t *old = zhashx_lookup (state->cache, key);
            if (old && old->expires_ms <= now)
                zhashx_delete (state->cache, key);
        }
        zlistx_destroy (&keys);
        if (zhashx_size (state->cache) >= KEY_CACHE_MAX)
            zhashx_purge (state->cache);
    }
    s_entry_t *copy = malloc (sizeof *copy);
    if (!copy)
        return;
    *copy = *entry;
    copy->expires_ms = kiln_mono_ms () + KEY_CACHE_TTL_MS;
    //  The destructor (free) drops any older entry of this id
    zhashx_update (state->cache, id, copy);
}

static void
s_on_key (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    const char *header = call->req ? kiln_call_request_header (call, "Authorization") : NULL;
    if (kiln_call_usable (call, reply) && header
    &&  kiln_auth_parse (header, id, secret) == 0) {
        if (reply->type != REDIS_REPLY_ARRAY)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            s_entry_t entry;
            s_entry_from_reply (&entry, reply);
            s_cache_put (call->gw->auth, id, &entry);
            s_check (call, &entry, id, secret);
        }
    }
    //  The secret does not outlive the check
    explicit_bzero (secret, sizeof secret);
    kiln_call_unref (&call);
}

void
kiln_gateway_auth (kiln_call_t *call)
{
    kiln_auth_state_t *state = call->gw->auth;
    memset (&call->caller, 0, sizeof call->caller);
    if (!state || !state->required) {
        call->caller.kind = KILN_CALLER_OPEN;
        kiln_gateway_dispatch (call);
        return;
    }
    call->caller.kind = KILN_CALLER_ANONYMOUS;
    if (s_needs (call->route.kind) == NEEDS_NOTHING) {
        kiln_gateway_dispatch (call);
        return;
    }
    const char *header = kiln_call_request_header (call, "Authorization");
    if (!header) {
        s_authorize (call);
        return;
    }
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    if (kiln_auth_parse (header, id, secret) != 0) {
        s_unauthorized (call, "Authorization must be 'Key <id>:<secret>'");
        return;
    }
    s_entry_t *entry = zhashx_lookup (state->cache, id);
    if (entry && entry->expires_ms > kiln_mono_ms ())
        s_check (call, entry, id, secret);
    else
        kiln_call_redisf (call, s_on_key, "HGETALL %s", kiln_key_apikey (id).s);
    explicit_bzero (secret, sizeof secret);
}
