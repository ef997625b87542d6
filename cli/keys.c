/*  =========================================================================
    keys — kiln keys create|list|revoke: API keys

    Through the gateway (POST/GET /v1/keys, DELETE /v1/keys/{id}, with an
    ADMIN key), or, for the first key of an installation that requires
    keys, straight into Redis (`kiln keys create --redis URL`). Either way
    the secret is printed once, here, and kept nowhere: Redis holds only a
    salt and the salted hash (kiln_auth.h).

    Also the saved key: `kiln up` writes its operator key to
    {state dir}/key (mode 0600); the CLI uses it when KILN_KEY and --key
    are not given.
    =========================================================================
*/
#include "cli.h"
#include "kiln_auth.h"
#include "kiln_keys.h"
#include "kiln_redis.h"
#include "kiln_util.h"
#include "table.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

//  Bounds each key call to the gateway or to Redis.
#define KEYS_TIMEOUT_MS 10000

static const char *s_usage =
    "usage: kiln keys create --scope API|ADMIN [--owner OWNER] [--json] [--redis URL]\n"
    "       kiln keys list [--json]\n"
    "       kiln keys revoke ID\n"
    "\n"
    "API keys. A key belongs to an owner (a tenant) and has a scope: API calls\n"
    "apps and reads their requests; ADMIN also manages (deploys, scales, keys).\n"
    "The operator's key (ADMIN, owner *) acts for every owner. Requests carry\n"
    "a key as 'Authorization: Key ID:SECRET'; kiln reads it from --key, else\n"
    "$KILN_KEY, else the key `kiln up` saved in {state dir}/key.\n"
    "\n"
    "  create               make a key; prints ID:SECRET once (it is not stored)\n"
    "  list                 the keys you manage: id, scope, owner, made, revoked\n"
    "  revoke ID            revoke a key (takes effect within 2 seconds)\n"
    "\n"
    "  --scope API|ADMIN    the new key's scope\n"
    "  --owner OWNER        its owner (default: your key's owner; * = operator)\n"
    "  --redis URL          write the key straight into Redis instead of asking\n"
    "                       the gateway: for an installation's first key\n"
    "  --json               print JSON\n"
    KILN_CLI_COMMON_HELP;

enum { OPT_SCOPE = 0x2001, OPT_OWNER, OPT_JSON, OPT_REDIS };


//  --------------------------------------------------------------------------
//  The saved key

char *
kiln_cli_key_path (const kiln_config_t *config)
{
    char *path = NULL;
    if (!config->state_dir || asprintf (&path, "%s/key", config->state_dir) < 0)
        return NULL;
    return path;
}

void
kiln_cli_load_saved_key (kiln_config_t *config)
{
    if (config->key)
        return;
    char *path = kiln_cli_key_path (config);
    FILE *file = path ? fopen (path, "r") : NULL;
    free (path);
    if (!file)
        return;
    char line [256] = "";
    if (fgets (line, sizeof line, file)) {
        line [strcspn (line, "\r\n")] = 0;
        if (*line)
            kiln_config_set (&config->key, line);
    }
    explicit_bzero (line, sizeof line);
    fclose (file);
}

int
kiln_cli_save_key (const char *path, const char *key)
{
    //  Written aside then renamed, so a reader never sees half a key; 0600
    //  from the start, never readable by others even for a moment
    char *temp = NULL;
    if (asprintf (&temp, "%s.tmp.%d", path, (int) getpid ()) < 0)
        return -1;
    int fd = open (temp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int rc = -1;
    if (fd >= 0) {
        size_t size = strlen (key);
        bool ok = write (fd, key, size) == (ssize_t) size && write (fd, "\n", 1) == 1;
        ok = fsync (fd) == 0 && ok;
        close (fd);
        if (ok && rename (temp, path) == 0)
            rc = 0;
        else
            unlink (temp);
    }
    free (temp);
    return rc;
}


//  --------------------------------------------------------------------------
//  Straight into Redis

//  Connects to Redis (AUTH, SELECT as the URL says). NULL with *error
//  (one line, without the URL's password; caller frees) on failure.
static redisContext *
s_redis_connect (const char *redis_url, char **error)
{
    *error = NULL;
    kiln_redis_url_t *url = kiln_redis_url_parse (redis_url);
    if (!url) {
        *error = strdup ("--redis: not a redis:// URL");
        return NULL;
    }
    struct timeval timeout = { KEYS_TIMEOUT_MS / 1000, (KEYS_TIMEOUT_MS % 1000) * 1000 };
    redisContext *redis = redisConnectWithTimeout (url->host, url->port, timeout);
    if (!redis || redis->err) {
        if (asprintf (error, "cannot reach Redis at %s:%d (%s)", url->host, url->port,
                      redis ? redis->errstr : "out of memory") < 0)
            *error = NULL;
        if (redis)
            redisFree (redis);
        kiln_redis_url_destroy (&url);
        return NULL;
    }
    redisSetTimeout (redis, timeout);
    if (kiln_redis_prepare (redis, url) != 0) {
        if (asprintf (error, "Redis at %s:%d refused AUTH or SELECT", url->host, url->port) < 0)
            *error = NULL;
        redisFree (redis);
        redis = NULL;
    }
    kiln_redis_url_destroy (&url);
    return redis;
}

//  Checks scope and owner as the gateway does; NULL when good, else why.
static const char *
s_key_problem (const char *scope, const char *owner)
{
    static const char *reserved [] = { "queue", "v1", "files", "health", "metrics", NULL };
    if (!scope || !kiln_auth_scope_valid (scope))
        return "--scope must be API or ADMIN";
    if (!owner || !*owner)
        return "--owner is required with --redis (* for the operator)";
    if (strcmp (owner, "*") == 0)
        return strcmp (scope, KILN_SCOPE_ADMIN) == 0 ? NULL
             : "owner * (the operator) is for ADMIN keys only";
    if (!kiln_name_part_valid (owner, strlen (owner)))
        return "--owner must be 1-63 of a-z 0-9 _ -, starting with a letter or digit";
    for (int i = 0; reserved [i]; i++)
        if (strcmp (owner, reserved [i]) == 0)
            return "the owners queue, v1, files, health and metrics are reserved";
    return NULL;
}

int
kiln_cli_key_create_in_redis (const char *redis_url, const char *scope, const char *owner,
                              char **key_out, char **id_out, char **error)
{
    *key_out = NULL;
    *error = NULL;
    if (id_out)
        *id_out = NULL;
    const char *problem = s_key_problem (scope, owner);
    if (problem) {
        *error = strdup (problem);
        return -1;
    }
    kiln_auth_key_t key;
    if (kiln_auth_init () != 0 || kiln_auth_key_make (&key) != 0) {
        *error = strdup ("cannot make a key (libsodium)");
        return -1;
    }
    redisContext *redis = s_redis_connect (redis_url, error);
    if (!redis) {
        explicit_bzero (&key, sizeof key);
        return -1;
    }
    char created [24];
    snprintf (created, sizeof created, "%" PRId64, kiln_now_ms ());
    kiln_key_t hash_key = kiln_key_apikey (key.id);
    redisAppendCommand (redis, "MULTI");
    redisAppendCommand (redis, "HSET %s id %s scope %s owner %s salt %s hash %s created_ms %s",
                        hash_key.s, key.id, scope, owner, key.salt, key.hash, created);
    redisAppendCommand (redis, "SADD %s %s", KILN_KEY_APIKEYS, key.id);
    redisAppendCommand (redis, "EXEC");
    bool ok = true;
    for (int i = 0; i < 4; i++) {
        redisReply *reply = NULL;
        if (redisGetReply (redis, (void **) &reply) != REDIS_OK || !reply
        ||  reply->type == REDIS_REPLY_ERROR)
            ok = false;
        if (i == 3 && reply && reply->type != REDIS_REPLY_ARRAY)
            ok = false;
        if (reply)
            freeReplyObject (reply);
        if (!ok)
            break;
    }
    redisFree (redis);
    if (ok && asprintf (key_out, "%s:%s", key.id, key.secret) < 0)
        *key_out = NULL;
    if (ok && id_out)
        *id_out = strdup (key.id);
    explicit_bzero (&key, sizeof key);
    if (!ok || !*key_out) {
        *error = strdup (ok ? "out of memory" : "Redis refused the key");
        return -1;
    }
    return 0;
}

int
kiln_cli_operator_key_valid (const char *redis_url, const char *key)
{
    char header [256];
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    snprintf (header, sizeof header, "Key %s", key);
    int parsed = kiln_auth_parse (header, id, secret);
    explicit_bzero (header, sizeof header);
    if (parsed != 0 || kiln_auth_init () != 0)
        return 0;
    char *error = NULL;
    redisContext *redis = s_redis_connect (redis_url, &error);
    free (error);
    if (!redis) {
        explicit_bzero (secret, sizeof secret);
        return -1;
    }
    redisReply *reply = redisCommand (redis, "HMGET %s salt hash revoked_ms scope owner",
                                      kiln_key_apikey (id).s);
    int valid = -1;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
        redisReply **f = reply->element;
        valid = f [0]->type == REDIS_REPLY_STRING && f [1]->type == REDIS_REPLY_STRING
             && f [2]->type != REDIS_REPLY_STRING
             && f [3]->type == REDIS_REPLY_STRING && strcmp (f [3]->str, KILN_SCOPE_ADMIN) == 0
             && f [4]->type == REDIS_REPLY_STRING && strcmp (f [4]->str, "*") == 0
             && kiln_auth_check (secret, f [0]->str, f [1]->str);
    }
    if (reply)
        freeReplyObject (reply);
    redisFree (redis);
    explicit_bzero (secret, sizeof secret);
    return valid;
}


//  --------------------------------------------------------------------------
//  The commands

//  Prints a new key: KEY on stdout (or the JSON), the warning on stderr.
static void
s_print_created (const char *id, const char *key, const char *scope, const char *owner, bool raw)
{
    if (raw) {
        json_t *json = json_pack ("{s:s, s:s, s:s, s:s}", "id", id, "key", key,
                                  "scope", scope, "owner", owner);
        char *text = json ? json_dumps (json, JSON_INDENT (2)) : NULL;
        printf ("%s\n", text ? text : "null");
        if (text) {
            explicit_bzero (text, strlen (text));
            free (text);
        }
        json_decref (json);
    }
    else
        printf ("%s\n", key);
    fflush (stdout);
    fprintf (stderr, "kiln: this is the only time the key is shown: keep it now "
                     "(scope %s, owner %s)\n", scope, owner);
}

static int
s_create (kiln_cli_t *cli, const char *scope, const char *owner, const char *redis, bool raw)
{
    if (!scope || !kiln_auth_scope_valid (scope))
        return kiln_cli_usage ("keys", "--scope must be API or ADMIN");
    if (redis) {
        char *key = NULL, *id = NULL, *error = NULL;
        if (kiln_cli_key_create_in_redis (redis, scope, owner, &key, &id, &error) != 0) {
            int rc = kiln_cli_fail ("%s", error ? error : "out of memory");
            free (error);
            return rc;
        }
        s_print_created (id, key, scope, owner, raw);
        explicit_bzero (key, strlen (key));
        free (key);
        free (id);
        return KILN_EXIT_OK;
    }
    json_t *body = json_pack ("{s:s}", "scope", scope);
    if (body && owner)
        json_object_set_new (body, "owner", json_string (owner));
    json_t *answer = NULL;
    int rc = kiln_cli_call (cli, KEYS_TIMEOUT_MS, "POST", "/v1/keys", body, &answer);
    json_decref (body);
    if (rc)
        return rc;
    const char *id = json_string_value (json_object_get (answer, "id"));
    const char *key = json_string_value (json_object_get (answer, "key"));
    const char *its_owner = json_string_value (json_object_get (answer, "owner"));
    if (!id || !key) {
        json_decref (answer);
        return kiln_cli_fail ("the gateway's answer holds no key");
    }
    s_print_created (id, key, scope, its_owner ? its_owner : "?", raw);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_list (kiln_cli_t *cli, bool raw)
{
    json_t *answer = NULL;
    int rc = kiln_cli_call (cli, KEYS_TIMEOUT_MS, "GET", "/v1/keys", NULL, &answer);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "[]");
    kiln_table_t *table = kiln_table_new (5);
    if (!table) {
        json_decref (answer);
        return kiln_cli_fail ("out of memory");
    }
    kiln_table_add (table, "ID");
    kiln_table_add (table, "SCOPE");
    kiln_table_add (table, "OWNER");
    kiln_table_add (table, "CREATED");
    kiln_table_add (table, "REVOKED");
    size_t index;
    json_t *item;
    json_array_foreach (answer, index, item) {
        char created [32], revoked [32];
        kiln_cli_format_time (json_integer_value (json_object_get (item, "created_ms")),
                              created, sizeof created);
        kiln_cli_format_time (json_integer_value (json_object_get (item, "revoked_ms")),
                              revoked, sizeof revoked);
        const char *id = json_string_value (json_object_get (item, "id"));
        const char *scope = json_string_value (json_object_get (item, "scope"));
        const char *owner = json_string_value (json_object_get (item, "owner"));
        kiln_table_add (table, id ? id : "?");
        kiln_table_add (table, scope ? scope : "?");
        kiln_table_add (table, owner ? owner : "?");
        kiln_table_add (table, created);
        kiln_table_add (table, json_is_true (json_object_get (item, "revoked")) ? revoked : "-");
    }
    kiln_table_print (table, stdout);
    kiln_table_destroy (&table);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_revoke (kiln_cli_t *cli, const char *id)
{
    if (!kiln_id_valid (id))
        return kiln_cli_usage ("keys", "'%s' is not a key id", id);
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/keys/%s", id);
    int rc = kiln_cli_call (cli, KEYS_TIMEOUT_MS, "DELETE", path, NULL, &answer);
    free (path);
    json_decref (answer);
    if (rc)
        return rc;
    printf ("revoked %s\n", id);
    return KILN_EXIT_OK;
}

int
kiln_keys_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "scope", required_argument, NULL, OPT_SCOPE },
        { "owner", required_argument, NULL, OPT_OWNER },
        { "redis", required_argument, NULL, OPT_REDIS },
        { "json",  no_argument,       NULL, OPT_JSON },
        { 0, 0, 0, 0 }
    };
    const char *scope = NULL, *owner = NULL, *redis = NULL;
    bool raw = false;
    optind = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (kiln_cli_common_option (cli, opt, optarg))
            continue;
        switch (opt) {
            case KILN_CLI_OPT_HELP:
                fputs (s_usage, stdout);
                return KILN_EXIT_OK;
            case OPT_SCOPE: scope = optarg; break;
            case OPT_OWNER: owner = optarg; break;
            case OPT_REDIS: redis = optarg; break;
            case OPT_JSON:  raw = true; break;
            default:
                return kiln_cli_bad_option ("keys", opt, argv);
        }
    }
    int rest = argc - optind;
    const char *action = rest > 0 ? argv [optind] : NULL;
    if (!action)
        return kiln_cli_usage ("keys", "say create, list or revoke");
    if (strcmp (action, "create") == 0) {
        if (rest != 1)
            return kiln_cli_usage ("keys", "create takes no arguments, only options");
        return s_create (cli, scope, owner, redis, raw);
    }
    if (redis || scope || owner)
        return kiln_cli_usage ("keys", "--scope, --owner and --redis go with create");
    if (strcmp (action, "list") == 0) {
        if (rest != 1)
            return kiln_cli_usage ("keys", "list takes no arguments");
        return s_list (cli, raw);
    }
    if (strcmp (action, "revoke") == 0) {
        if (rest != 2)
            return kiln_cli_usage ("keys", "revoke takes one key id");
        return s_revoke (cli, argv [optind + 1]);
    }
    return kiln_cli_usage ("keys", "unknown action '%s': create, list or revoke", action);
}
