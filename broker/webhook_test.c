/*  =========================================================================
    kiln-webhook-test — the webhook deliverer against a real Redis and a
    real HTTP receiver

        kiln-webhook-test [-v]

    Starts a redis-server on a free loopback port in a temp dir, and runs
    small HTTP receivers in threads of its own: each answers a scripted
    sequence of statuses (or hangs without answering) and records every
    request it gets. Requests are seeded the way the platform makes them,
    with the real SUBMIT and COMPLETE scripts and a webhook URL, then
    kiln_webhooks_t instances deliver them. Checks the body and headers,
    retries with growing gaps, giving up after the tries, a receiver that
    is down, a timeout, a stop mid-delivery and a restart, a lost Redis
    connection, leases (held by another deliverer; two deliverers at
    once never send one completion twice), the record's expiry, the
    signature headers (verified with the key pair from Redis, re-signed
    on each try), the shared key pair, and targets in private ranges
    (the address check, table-tested; a refused delivery fails at once).
    Exits 0 (also when redis-server is not installed: skipped), or 1
    naming the failed check.
    =========================================================================
*/
#include "webhook.h"

#include "kiln_config.h"
#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_redis.h"
#include "kiln_scripts.h"
#include "kiln_signing_key.h"
#include "kiln_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

//  In kiln_redis.c, for tests only (see there).

#define REDIS_SERVER_BIN "/usr/bin/redis-server"
#define APP "local/echo"
#define WAIT_MS 5000                //  for anything the deliverer does soon
#define HANG 0                      //  in a receiver's script: never answer
#define HANG_MAX_MS 10000
#define HITS_MAX 256
#define SCRIPT_MAX 16

static bool s_verbose;
static pid_t s_redis_pid;
static char s_redis_dir [64];
static char s_redis_url [64];
static redisContext *s_redis;

static void
s_cleanup (void)
{
    if (s_redis) {
        redisFree (s_redis);
        s_redis = NULL;
    }
    if (s_redis_pid > 0) {
        kiln_redis_test_server_stop (s_redis_pid, s_redis_dir);
        s_redis_pid = 0;
    }
}

static void
s_fail (const char *what, int line)
{
    fprintf (stderr, "kiln-webhook-test: FAILED at line %d: %s\n", line, what);
    s_cleanup ();
    exit (1);
}

#define CHECK(cond) do { if (!(cond)) s_fail (#cond, __LINE__); } while (0)

static void
s_step (const char *name)
{
    if (s_verbose)
        printf (" * %s\n", name);
}

//  -------------------------------------------------------------------------
//  The receiver: one thread, one connection at a time, "Connection: close"

typedef struct {
    char *path;
    char *content_type;
    char *user_agent;
    char *head;                     //  the request line and headers
    char *body;
    size_t body_size;
    int64_t at_ms;                  //  monotonic, when the request was in
    int answered;                   //  the status sent, or HANG
} s_hit_t;

typedef struct {
    int fd;
    int port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mutex;
    int script [SCRIPT_MAX];        //  statuses for the first requests
    int script_size;
    int otherwise;                  //  the status after the script
    s_hit_t hits [HITS_MAX];
    int hit_count;
} s_receiver_t;

//  A header's value from a request head ("" when absent). Caller frees.
static char *
s_header (const char *head, const char *name)
{
    char pattern [64];
    snprintf (pattern, sizeof pattern, "\r\n%s:", name);
    const char *at = strcasestr (head, pattern);
    if (!at)
        return strdup ("");
    at += strlen (pattern);
    while (*at == ' ')
        at++;
    return strndup (at, strcspn (at, "\r\n"));
}

//  Reads one request; NULL when the peer went away or sent garbage.
static s_hit_t *
s_read_request (int fd)
{
    size_t size = 0, limit = 1 << 20;
    char *data = malloc (limit + 1);
    char *end = NULL;
    size_t content_length = 0;
    while (data) {
        struct pollfd item = { fd, POLLIN, 0 };
        if (poll (&item, 1, 3000) <= 0)
            break;
        ssize_t got = recv (fd, data + size, limit - size, 0);
        if (got <= 0)
            break;
        size += got;
        data [size] = 0;
        if (!end && (end = strstr (data, "\r\n\r\n"))) {
            *end = 0;               //  the head as one string
            char *length = s_header (data, "Content-Length");
            content_length = strtoul (length, NULL, 10);
            free (length);
        }
        if (end && size >= (size_t) (end + 4 - data) + content_length) {
            s_hit_t *hit = calloc (1, sizeof *hit);
            const char *path = strchr (data, ' ');
            path = path? path + 1: "";
            hit->path = strndup (path, strcspn (path, " \r\n"));
            hit->content_type = s_header (data, "Content-Type");
            hit->user_agent = s_header (data, "User-Agent");
            hit->head = strdup (data);
            hit->body = malloc (content_length + 1);
            memcpy (hit->body, end + 4, content_length);
            hit->body [content_length] = 0;
            hit->body_size = content_length;
            hit->at_ms = kiln_mono_ms ();
            free (data);
            return hit;
        }
        if (size == limit)
            break;
    }
    free (data);
    return NULL;
}

static void
s_hang (s_receiver_t *self, int fd)
{
    int64_t until = kiln_mono_ms () + HANG_MAX_MS;
    while (!atomic_load (&self->stop) && kiln_mono_ms () < until) {
        struct pollfd item = { fd, POLLIN, 0 };
        char byte;
        if (poll (&item, 1, 50) > 0 && recv (fd, &byte, 1, 0) <= 0)
            return;                 //  the client gave up
    }
}

static void *
s_receiver_run (void *arg)
{
    s_receiver_t *self = (s_receiver_t *) arg;
    while (!atomic_load (&self->stop)) {
        struct pollfd item = { self->fd, POLLIN, 0 };
        if (poll (&item, 1, 50) <= 0)
            continue;
        int fd = accept (self->fd, NULL, NULL);
        if (fd < 0)
            continue;
        s_hit_t *hit = s_read_request (fd);
        if (hit) {
            pthread_mutex_lock (&self->mutex);
            int n = self->hit_count;
            hit->answered = n < self->script_size? self->script [n]: self->otherwise;
            bool kept = n < HITS_MAX;
            if (kept)
                self->hits [self->hit_count++] = *hit;
            pthread_mutex_unlock (&self->mutex);
            int status = hit->answered;
            if (!kept) {
                free (hit->path);
                free (hit->content_type);
                free (hit->user_agent);
                free (hit->head);
                free (hit->body);
            }
            free (hit);
            if (status == HANG)
                s_hang (self, fd);
            else {
                char answer [128];
                int size = snprintf (answer, sizeof answer,
                    "HTTP/1.1 %d Scripted\r\nContent-Length: 2\r\n"
                    "Connection: close\r\n\r\nok", status);
                if (send (fd, answer, size, MSG_NOSIGNAL) != size && s_verbose)
                    printf ("   (receiver: the client left before the answer)\n");
            }
        }
        close (fd);
    }
    return NULL;
}

//  A receiver on port (0: any free port) answering script, then otherwise.
static s_receiver_t *
s_receiver_new (int port, const int *script, int script_size, int otherwise)
{
    s_receiver_t *self = calloc (1, sizeof *self);
    CHECK (self && script_size <= SCRIPT_MAX);
    if (script_size > 0)
        memcpy (self->script, script, script_size * sizeof (int));
    self->script_size = script_size;
    self->otherwise = otherwise;
    self->fd = socket (AF_INET, SOCK_STREAM, 0);
    CHECK (self->fd >= 0);
    int on = 1;
    setsockopt (self->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons (port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    CHECK (bind (self->fd, (struct sockaddr *) &addr, sizeof addr) == 0);
    CHECK (listen (self->fd, 64) == 0);
    CHECK (getsockname (self->fd, (struct sockaddr *) &addr, &len) == 0);
    self->port = ntohs (addr.sin_port);
    atomic_init (&self->stop, false);
    pthread_mutex_init (&self->mutex, NULL);
    CHECK (pthread_create (&self->thread, NULL, s_receiver_run, self) == 0);
    return self;
}

static void
s_receiver_destroy (s_receiver_t **self_p)
{
    s_receiver_t *self = *self_p;
    atomic_store (&self->stop, true);
    pthread_join (self->thread, NULL);
    close (self->fd);
    for (int i = 0; i < self->hit_count; i++) {
        free (self->hits [i].path);
        free (self->hits [i].content_type);
        free (self->hits [i].user_agent);
        free (self->hits [i].head);
        free (self->hits [i].body);
    }
    pthread_mutex_destroy (&self->mutex);
    free (self);
    *self_p = NULL;
}

static int
s_hit_count (s_receiver_t *self)
{
    pthread_mutex_lock (&self->mutex);
    int n = self->hit_count;
    pthread_mutex_unlock (&self->mutex);
    return n;
}

//  Waits until the receiver has at least n requests. True when it has.
static bool
s_wait_hits (s_receiver_t *self, int n, int timeout_ms)
{
    int64_t until = kiln_mono_ms () + timeout_ms;
    while (s_hit_count (self) < n && kiln_mono_ms () < until)
        usleep (10000);
    return s_hit_count (self) >= n;
}

//  The hit's body as JSON (caller decrefs); the hit must be complete.
static json_t *
s_hit_json (s_receiver_t *self, int index)
{
    pthread_mutex_lock (&self->mutex);
    json_t *json = index < self->hit_count
                 ? json_loadb (self->hits [index].body, self->hits [index].body_size, 0, NULL)
                 : NULL;
    pthread_mutex_unlock (&self->mutex);
    return json;
}

//  The receivers' index of the hit for request id, or -1.
static int
s_hit_for (s_receiver_t *self, const char *id)
{
    for (int i = 0; i < s_hit_count (self); i++) {
        json_t *json = s_hit_json (self, i);
        const char *hit_id = json_string_value (json_object_get (json, "request_id"));
        bool match = hit_id && strcmp (hit_id, id) == 0;
        json_decref (json);
        if (match)
            return i;
    }
    return -1;
}

//  How many hits carry request id.
static int
s_hits_for (s_receiver_t *self, const char *id)
{
    int n = 0;
    for (int i = 0; i < s_hit_count (self); i++) {
        json_t *json = s_hit_json (self, i);
        const char *hit_id = json_string_value (json_object_get (json, "request_id"));
        n += hit_id && strcmp (hit_id, id) == 0;
        json_decref (json);
    }
    return n;
}

//  -------------------------------------------------------------------------
//  Redis, as the gateway and broker use it

static redisReply *
s_eval (const char *script, int nkeys, const char *const *keys,
        int nargs, const char *const *args, const size_t *lens)
{
    redisReply *reply = kiln_redis_eval (s_redis, script, nkeys, keys, nargs, args, lens);
    CHECK (reply);
    if (reply->type == REDIS_REPLY_ERROR)
        fprintf (stderr, "script error: %s\n", reply->str);
    CHECK (reply->type != REDIS_REPLY_ERROR);
    return reply;
}

//  A completed request with a webhook, made by SUBMIT then COMPLETE; its
//  id goes into id.
static void
s_seed (char id [KILN_UUID_LEN + 1], const char *webhook, const char *status,
        const char *result, size_t result_size, const char *error)
{
    kiln_uuid4 (id);
    char now [24];
    snprintf (now, sizeof now, "%" PRId64, kiln_now_ms ());
    kiln_key_t app_key = kiln_key_app (APP), req = kiln_key_request (id);
    kiln_key_t queue = kiln_key_queue (APP), logs = kiln_key_logs (id);
    const char *submit_keys [] = { app_key.s, req.s, queue.s, KILN_KEY_SEQ };
    const char *submit_args [] = { id, APP, "/", "application/json", "{}", "normal",
                                   "", webhook, now, "0", "0" };
    redisReply *reply = s_eval (KILN_SCRIPT_SUBMIT, 4, submit_keys, 11, submit_args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer >= 0);
    freeReplyObject (reply);

    const char *complete_keys [] = { req.s, logs.s, queue.s, KILN_KEY_INFLIGHT };
    const char *complete_args [] = { id, status, "application/json", result,
                                     error, *error? "runner_server_error": "",
                                     now, "600", "5", "0" };
    size_t lens [10];
    for (int i = 0; i < 10; i++)
        lens [i] = strlen (complete_args [i]);
    lens [3] = result_size;
    reply = s_eval (KILN_SCRIPT_COMPLETE, 4, complete_keys, 10, complete_args, lens);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    freeReplyObject (reply);
}

//  A field of a request's record, or NULL. Caller frees.
static char *
s_field (const char *id, const char *field)
{
    redisReply *reply = redisCommand (s_redis, "HGET %s %s", kiln_key_request (id).s, field);
    CHECK (reply);
    char *value = reply->type == REDIS_REPLY_STRING? strdup (reply->str): NULL;
    freeReplyObject (reply);
    return value;
}

static bool
s_field_is (const char *id, const char *field, const char *expect)
{
    char *value = s_field (id, field);
    bool same = value && strcmp (value, expect) == 0;
    if (!same && s_verbose)
        printf ("   %s %s is '%s', expected '%s'\n", id, field, value? value: "(nil)", expect);
    free (value);
    return same;
}

//  Waits until the record's field reads expect.
static bool
s_wait_field (const char *id, const char *field, const char *expect, int timeout_ms)
{
    int64_t until = kiln_mono_ms () + timeout_ms;
    while (kiln_mono_ms () < until) {
        char *value = s_field (id, field);
        bool same = value && strcmp (value, expect) == 0;
        free (value);
        if (same)
            return true;
        usleep (10000);
    }
    return s_field_is (id, field, expect);
}

static long long
s_int (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    redisReply *reply = redisvCommand (s_redis, format, args);
    va_end (args);
    CHECK (reply && reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

static bool
s_in_outbox (const char *id)
{
    redisReply *reply = redisCommand (s_redis, "ZSCORE %s %s", KILN_KEY_WEBHOOKS, id);
    CHECK (reply);
    bool in = reply->type == REDIS_REPLY_STRING;
    freeReplyObject (reply);
    return in;
}

//  A deliverer with these settings; allow_private lets it reach the
//  receivers here, on loopback.
static kiln_webhooks_t *
s_deliverer_with (int tries, int backoff_ms, int timeout_ms, int retention_s, bool allow_private)
{
    kiln_config_t *cfg = kiln_config_new (NULL);
    CHECK (cfg);
    kiln_config_set (&cfg->redis_url, s_redis_url);
    cfg->webhook_tries = tries;
    cfg->webhook_backoff_ms = backoff_ms;
    cfg->webhook_timeout_ms = timeout_ms;
    cfg->result_retention_s = retention_s;
    cfg->webhook_allow_private = allow_private;
    kiln_webhooks_t *webhooks = kiln_webhooks_new (cfg);
    kiln_config_destroy (&cfg);         //  the deliverer keeps copies
    CHECK (webhooks);
    return webhooks;
}

static kiln_webhooks_t *
s_deliverer (int tries, int backoff_ms, int timeout_ms, int retention_s)
{
    return s_deliverer_with (tries, backoff_ms, timeout_ms, retention_s, true);
}

static void
s_url (char *url, size_t size, int port, const char *path)
{
    snprintf (url, size, "http://127.0.0.1:%d%s", port, path);
}

static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (fd >= 0 && bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0
    &&  getsockname (fd, (struct sockaddr *) &addr, &len) == 0)
        port = ntohs (addr.sin_port);
    if (fd >= 0)
        close (fd);
    return port;
}

//  -------------------------------------------------------------------------
//  Scenarios

static void
s_test_pure (void)
{
    s_step ("backoff doubles from the first delay, capped; defaults span about two hours");
    CHECK (kiln_webhook_delay_ms (15000, 0) == 15000);
    CHECK (kiln_webhook_delay_ms (15000, 1) == 30000);
    CHECK (kiln_webhook_delay_ms (15000, 8) == 3840000);
    int64_t total = 0;
    for (int attempts = 0; attempts < 9; attempts++)    //  10 tries: 9 waits
        total += kiln_webhook_delay_ms (15000, attempts);
    CHECK (total == 7665000);                           //  2 h 7 min 45 s
    CHECK (kiln_webhook_delay_ms (15000, 1000) == 24LL * 3600 * 1000);
    CHECK (kiln_webhook_delay_ms (50, -3) == 50);

    s_step ("the body: JSON payload, text payload, nothing, bytes");
    char *body = kiln_webhook_body ("r1", 200, "{\"a\":[1,2]}", 11, NULL);
    CHECK (body && strcmp (body, "{\"request_id\":\"r1\",\"gateway_request_id\":\"r1\","
                                 "\"status\":\"OK\",\"payload\":{\"a\":[1,2]},\"error\":null}") == 0);
    free (body);
    body = kiln_webhook_body ("r2", 500, "oops", 4, "");
    CHECK (body && strcmp (body, "{\"request_id\":\"r2\",\"gateway_request_id\":\"r2\","
                                 "\"status\":\"ERROR\",\"payload\":\"oops\","
                                 "\"error\":\"Invalid status code: 500\"}") == 0);
    free (body);
    body = kiln_webhook_body ("r3", 204, "", 0, NULL);
    CHECK (body && strstr (body, "\"payload\":null") && strstr (body, "\"status\":\"OK\""));
    free (body);
    body = kiln_webhook_body ("r4", 200, "\x89PNG\0\x01", 6, NULL);
    CHECK (body && strstr (body, "\"payload\":null") && strstr (body, "\"payload_error\":"));
    free (body);
    body = kiln_webhook_body ("r5", 200, "a\0b", 3, NULL);     //  text with a NUL
    CHECK (body && strstr (body, "\"payload\":\"a\\u0000b\""));
    free (body);
}

static void
s_test_body (void)
{
    s_step ("delivery: the body's fields, headers, the record after");
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 200);
    char url [128];
    s_url (url, sizeof url, receiver->port, "/hook?token=secret");
    char ok [KILN_UUID_LEN + 1], failed [KILN_UUID_LEN + 1], text [KILN_UUID_LEN + 1];
    char empty [KILN_UUID_LEN + 1], binary [KILN_UUID_LEN + 1];
    const char *result = "{\"images\":[{\"url\":\"http://x/files/1\"}],\"seed\":42,\"t\":\"\xc3\xa9\"}";
    s_seed (ok, url, "200", result, strlen (result), "");
    s_seed (failed, url, "500", "{\"detail\":\"boom\"}", 17, "boom");
    s_seed (text, url, "422", "not json", 8, "");
    s_seed (empty, url, "200", "", 0, "");
    s_seed (binary, url, "200", "\x89PNG\0\x01", 6, "");
    CHECK (s_in_outbox (ok));
    CHECK (s_field_is (ok, "webhook_state", "pending"));

    kiln_webhooks_t *webhooks = s_deliverer (3, 50, 2000, 600);
    CHECK (s_wait_hits (receiver, 5, WAIT_MS));

    int i = s_hit_for (receiver, ok);
    CHECK (i >= 0);
    CHECK (strcmp (receiver->hits [i].path, "/hook?token=secret") == 0);
    CHECK (strcmp (receiver->hits [i].content_type, "application/json") == 0);
    CHECK (strcmp (receiver->hits [i].user_agent, "kiln-webhook/1") == 0);
    json_t *json = s_hit_json (receiver, i);
    CHECK (json && json_object_size (json) == 5);
    CHECK (strcmp (json_string_value (json_object_get (json, "request_id")), ok) == 0);
    CHECK (strcmp (json_string_value (json_object_get (json, "gateway_request_id")), ok) == 0);
    CHECK (strcmp (json_string_value (json_object_get (json, "status")), "OK") == 0);
    CHECK (json_is_null (json_object_get (json, "error")));
    json_t *payload = json_object_get (json, "payload");
    CHECK (json_integer_value (json_object_get (payload, "seed")) == 42);
    CHECK (strcmp (json_string_value (json_object_get (payload, "t")), "\xc3\xa9") == 0);
    CHECK (json_array_size (json_object_get (payload, "images")) == 1);
    json_decref (json);

    json = s_hit_json (receiver, s_hit_for (receiver, failed));
    CHECK (json);
    CHECK (strcmp (json_string_value (json_object_get (json, "status")), "ERROR") == 0);
    CHECK (strcmp (json_string_value (json_object_get (json, "error")), "boom") == 0);
    CHECK (strcmp (json_string_value (json_object_get (
        json_object_get (json, "payload"), "detail")), "boom") == 0);
    json_decref (json);

    json = s_hit_json (receiver, s_hit_for (receiver, text));
    CHECK (json);
    CHECK (strcmp (json_string_value (json_object_get (json, "status")), "ERROR") == 0);
    CHECK (strcmp (json_string_value (json_object_get (json, "error")), "Invalid status code: 422") == 0);
    CHECK (strcmp (json_string_value (json_object_get (json, "payload")), "not json") == 0);
    json_decref (json);

    json = s_hit_json (receiver, s_hit_for (receiver, empty));
    CHECK (json && json_is_null (json_object_get (json, "payload")));
    json_decref (json);
    json = s_hit_json (receiver, s_hit_for (receiver, binary));
    CHECK (json && json_is_null (json_object_get (json, "payload")));
    CHECK (json_is_string (json_object_get (json, "payload_error")));
    json_decref (json);

    //  Each recorded delivered, out of the outbox, expiring.
    const char *ids [] = { ok, failed, text, empty, binary };
    for (int k = 0; k < 5; k++) {
        CHECK (s_wait_field (ids [k], "webhook_state", "delivered", WAIT_MS));
        CHECK (s_field_is (ids [k], "webhook_attempts", "1"));
        CHECK (!s_in_outbox (ids [k]));
        long long ttl = s_int ("TTL %s", kiln_key_request (ids [k]).s);
        CHECK (ttl > 0 && ttl <= 600);
    }
    s_step ("a receiver that answered 200 hears nothing more");
    usleep (500000);
    CHECK (s_hit_count (receiver) == 5);
    kiln_webhooks_destroy (&webhooks);
    CHECK (webhooks == NULL);
    s_receiver_destroy (&receiver);
}

static void
s_test_retries (void)
{
    s_step ("500, 500, 500, then 200: four tries, gaps growing from the backoff");
    const int script [] = { 500, 500, 500 };
    s_receiver_t *receiver = s_receiver_new (0, script, 3, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/retry");
    kiln_webhooks_t *webhooks = s_deliverer (10, 50, 2000, 600);
    s_seed (id, url, "200", "{}", 2, "");
    CHECK (s_wait_hits (receiver, 1, WAIT_MS));
    //  Between tries: still pending, the error kept.
    CHECK (s_wait_field (id, "webhook_attempts", "1", WAIT_MS));
    CHECK (s_field_is (id, "webhook_state", "pending"));
    CHECK (s_field_is (id, "webhook_last_error", "HTTP 500"));
    CHECK (s_in_outbox (id));
    CHECK (s_wait_hits (receiver, 4, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    CHECK (s_field_is (id, "webhook_attempts", "4"));
    CHECK (!s_in_outbox (id));
    int64_t gaps [3];
    for (int i = 0; i < 3; i++) {
        gaps [i] = receiver->hits [i + 1].at_ms - receiver->hits [i].at_ms;
        if (s_verbose)
            printf ("   gap %d: %" PRId64 " ms\n", i + 1, gaps [i]);
    }
    //  Each wait at least backoff · 2^attempts (wall and monotonic clocks
    //  may differ by a millisecond), and the waits grow.
    CHECK (gaps [0] >= 49 && gaps [1] >= 99 && gaps [2] >= 199);
    CHECK (gaps [2] > gaps [0]);
    usleep (300000);
    CHECK (s_hit_count (receiver) == 4);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static void
s_test_give_up (void)
{
    s_step ("always 500: gives up after the tries; the record is marked and expires");
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 500);
    char url [128], id [KILN_UUID_LEN + 1], bad [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/down");
    kiln_webhooks_t *webhooks = s_deliverer (3, 50, 2000, 600);
    s_seed (id, url, "200", "{}", 2, "");
    s_seed (bad, "ftp://127.0.0.1/x", "200", "{}", 2, "");
    CHECK (s_wait_hits (receiver, 3, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "failed", WAIT_MS));
    CHECK (s_field_is (id, "webhook_attempts", "3"));
    CHECK (s_field_is (id, "webhook_last_error", "HTTP 500"));
    CHECK (!s_in_outbox (id));
    long long ttl = s_int ("TTL %s", kiln_key_request (id).s);
    CHECK (ttl > 0 && ttl <= 600);
    usleep (500000);
    CHECK (s_hit_count (receiver) == 3);

    s_step ("a URL that is not http(s) fails at once");
    CHECK (s_wait_field (bad, "webhook_state", "failed", WAIT_MS));
    CHECK (s_field_is (bad, "webhook_attempts", "1"));
    CHECK (!s_in_outbox (bad));
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static void
s_test_receiver_down (void)
{
    s_step ("a receiver that is down (connection refused) is retried until it is up");
    int port = s_free_port ();
    CHECK (port > 0);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, port, "/later");
    kiln_webhooks_t *webhooks = s_deliverer (10, 50, 2000, 600);
    s_seed (id, url, "200", "{\"late\":true}", 13, "");
    CHECK (s_wait_field (id, "webhook_attempts", "2", WAIT_MS));
    CHECK (s_field_is (id, "webhook_state", "pending"));
    char *error = s_field (id, "webhook_last_error");
    if (s_verbose)
        printf ("   last error: %s\n", error? error: "(nil)");
    CHECK (error && *error && strstr (error, "HTTP") == NULL);
    free (error);
    s_receiver_t *receiver = s_receiver_new (port, NULL, 0, 200);
    CHECK (s_wait_hits (receiver, 1, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    json_t *json = s_hit_json (receiver, 0);
    CHECK (json && json_is_true (json_object_get (json_object_get (json, "payload"), "late")));
    json_decref (json);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static void
s_test_timeout (void)
{
    s_step ("a receiver that never answers times out and is tried again");
    const int script [] = { HANG };
    s_receiver_t *receiver = s_receiver_new (0, script, 1, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/slow");
    kiln_webhooks_t *webhooks = s_deliverer (5, 50, 300, 600);
    s_seed (id, url, "200", "{}", 2, "");
    CHECK (s_wait_hits (receiver, 2, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    CHECK (s_field_is (id, "webhook_attempts", "2"));
    CHECK (receiver->hits [1].at_ms - receiver->hits [0].at_ms >= 300);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static void
s_test_restart (void)
{
    s_step ("stopped mid-delivery: stops at once, hands the delivery back, not counted");
    const int script [] = { HANG };
    s_receiver_t *receiver = s_receiver_new (0, script, 1, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/restart");
    kiln_webhooks_t *webhooks = s_deliverer (5, 50, 8000, 600);
    s_seed (id, url, "200", "{}", 2, "");
    CHECK (s_wait_hits (receiver, 1, WAIT_MS));
    int64_t started = kiln_mono_ms ();
    kiln_webhooks_destroy (&webhooks);
    int64_t took = kiln_mono_ms () - started;
    if (s_verbose)
        printf ("   stopped in %" PRId64 " ms\n", took);
    CHECK (took < 2000);
    CHECK (s_field_is (id, "webhook_state", "pending"));
    CHECK (s_field_is (id, "webhook_attempts", "0"));
    redisReply *reply = redisCommand (s_redis, "ZSCORE %s %s", KILN_KEY_WEBHOOKS, id);
    CHECK (reply && reply->type == REDIS_REPLY_STRING);
    CHECK (strtoll (reply->str, NULL, 10) <= kiln_now_ms ());     //  due now
    freeReplyObject (reply);

    s_step ("a deliverer started again delivers it");
    webhooks = s_deliverer (5, 50, 8000, 600);
    CHECK (s_wait_hits (receiver, 2, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    CHECK (s_field_is (id, "webhook_attempts", "1"));
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static void
s_test_leases (void)
{
    s_step ("an id leased by another deliverer waits for the lease");
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/leased");
    s_seed (id, url, "200", "{}", 2, "");
    int64_t lease_end = kiln_now_ms () + 1000;
    CHECK (s_int ("ZADD %s %" PRId64 " %s", KILN_KEY_WEBHOOKS, lease_end, id) == 0);
    kiln_webhooks_t *webhooks = s_deliverer (5, 50, 2000, 600);
    usleep (600000);
    CHECK (s_hit_count (receiver) == 0);
    CHECK (s_wait_hits (receiver, 1, WAIT_MS));
    CHECK (kiln_now_ms () >= lease_end);
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);

    s_step ("two deliverers at once: every completion sent exactly once");
    receiver = s_receiver_new (0, NULL, 0, 200);
    s_url (url, sizeof url, receiver->port, "/pair");
    const int count = 40;
    char ids [40][KILN_UUID_LEN + 1];
    for (int i = 0; i < count; i++)
        s_seed (ids [i], url, "200", "{}", 2, "");
    kiln_webhooks_t *one = s_deliverer (5, 50, 2000, 600);
    kiln_webhooks_t *two = s_deliverer (5, 50, 2000, 600);
    CHECK (s_wait_hits (receiver, count, WAIT_MS));
    for (int i = 0; i < count; i++)
        CHECK (s_wait_field (ids [i], "webhook_state", "delivered", WAIT_MS));
    usleep (500000);
    CHECK (s_hit_count (receiver) == count);
    for (int i = 0; i < count; i++) {
        CHECK (s_hits_for (receiver, ids [i]) == 1);
        CHECK (s_field_is (ids [i], "webhook_attempts", "1"));
    }
    CHECK (s_int ("ZCARD %s", KILN_KEY_WEBHOOKS) == 0);
    kiln_webhooks_destroy (&one);
    kiln_webhooks_destroy (&two);
    s_receiver_destroy (&receiver);
}

static void
s_test_redis_lost (void)
{
    s_step ("Redis drops the deliverer's connection: it reconnects and delivers");
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/reconnect");
    kiln_webhooks_t *webhooks = s_deliverer (5, 50, 2000, 1);
    usleep (300000);                //  connected, claiming nothing
    //  Every client but this one.
    redisReply *reply = redisCommand (s_redis, "CLIENT KILL TYPE normal SKIPME yes");
    CHECK (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= 1);
    freeReplyObject (reply);
    s_seed (id, url, "200", "{}", 2, "");
    CHECK (s_wait_hits (receiver, 1, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));

    s_step ("the record expires after the retention once delivered");
    CHECK (s_int ("TTL %s", kiln_key_request (id).s) <= 1);
    int64_t until = kiln_mono_ms () + 3000;
    while (s_int ("EXISTS %s", kiln_key_request (id).s) == 1 && kiln_mono_ms () < until)
        usleep (50000);
    CHECK (s_int ("EXISTS %s", kiln_key_request (id).s) == 0);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

//  Whether the deliverer refuses text, an IPv4 or IPv6 address.
static bool
s_refused (const char *text)
{
    struct sockaddr_storage storage;
    memset (&storage, 0, sizeof storage);
    if (strchr (text, ':')) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &storage;
        in6->sin6_family = AF_INET6;
        CHECK (inet_pton (AF_INET6, text, &in6->sin6_addr) == 1);
    }
    else {
        struct sockaddr_in *in = (struct sockaddr_in *) &storage;
        in->sin_family = AF_INET;
        CHECK (inet_pton (AF_INET, text, &in->sin_addr) == 1);
    }
    return kiln_webhook_address_private ((struct sockaddr *) &storage);
}

static void
s_test_addresses (void)
{
    s_step ("webhook targets: loopback, private, link-local, unique-local refused");
    static const struct {
        const char *address;
        bool refused;
    } table [] = {
        { "127.0.0.1", true },          { "127.255.255.254", true },
        { "10.0.0.1", true },           { "10.255.255.255", true },
        { "9.255.255.255", false },     { "11.0.0.0", false },
        { "172.16.0.1", true },         { "172.31.255.255", true },
        { "172.15.255.255", false },    { "172.32.0.0", false },
        { "192.168.0.1", true },        { "192.168.255.255", true },
        { "192.167.255.255", false },   { "192.169.0.0", false },
        { "169.254.169.254", true },    { "169.254.0.0", true },
        { "169.253.255.255", false },   { "169.255.0.0", false },
        { "0.0.0.0", true },            { "0.255.255.255", true },
        { "1.0.0.0", false },           { "8.8.8.8", false },
        { "93.184.216.34", false },     { "100.64.0.1", true },
        { "100.100.100.200", true },    { "100.127.255.255", true },
        { "100.63.255.255", false },    { "100.128.0.0", false },
        { "198.18.0.1", true },         { "198.19.255.255", true },
        { "198.17.255.255", false },    { "198.20.0.0", false },
        { "224.0.0.1", true },          { "239.255.255.255", true },
        { "255.255.255.255", true },    { "223.255.255.255", false },
        { "ff02::1", true },            { "64:ff9b::a00:1", true },
        { "64:ff9b::808:808", false },  { "64:ff9b::7f00:1", true },
        { "::1", true },                { "::", true },
        { "::2", false },               { "::1:0", false },
        { "fc00::1", true },            { "fdff:ffff:ffff::1", true },
        { "fe00::1", false },           { "fbff::1", false },
        { "fe80::1", true },            { "febf:ffff::1", true },
        { "fec0::1", false },           { "fe7f::1", false },
        { "::ffff:127.0.0.1", true },   { "::ffff:10.1.2.3", true },
        { "::ffff:172.20.0.1", true },  { "::ffff:192.168.1.1", true },
        { "::ffff:169.254.169.254", true }, { "::ffff:0.0.0.0", true },
        { "::ffff:8.8.8.8", false },    { "::fffe:127.0.0.1", false },
        { "2001:4860:4860::8888", false }, { "2606:4700::1111", false },
    };
    for (size_t i = 0; i < sizeof table / sizeof table [0]; i++) {
        bool refused = s_refused (table [i].address);
        if (refused != table [i].refused)
            fprintf (stderr, "   %s: %s, expected %s\n", table [i].address,
                     refused? "refused": "allowed", table [i].refused? "refused": "allowed");
        CHECK (refused == table [i].refused);
    }
    //  Neither IPv4 nor IPv6: nothing we can judge, so refused.
    struct sockaddr other = { .sa_family = AF_UNIX };
    CHECK (kiln_webhook_address_private (&other));
    CHECK (kiln_webhook_address_private (NULL));
}

static void
s_test_private (void)
{
    s_step ("a loopback target is refused at once, unless private targets are allowed");
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 200);
    char url [128], id [KILN_UUID_LEN + 1], named [KILN_UUID_LEN + 1], v6 [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/private");
    kiln_webhooks_t *webhooks = s_deliverer_with (5, 50, 2000, 600, false);
    s_seed (id, url, "200", "{}", 2, "");
    CHECK (s_wait_field (id, "webhook_state", "failed", WAIT_MS));
    CHECK (s_field_is (id, "webhook_attempts", "1"));
    CHECK (s_field_is (id, "webhook_last_error", "webhook target 127.0.0.1 is in a private "
                       "range; set KILN_WEBHOOK_ALLOW_PRIVATE=1 to allow it"));
    CHECK (!s_in_outbox (id));

    s_step ("a name that resolves to loopback, and ::1, are refused too");
    snprintf (url, sizeof url, "http://localhost:%d/named", receiver->port);
    s_seed (named, url, "200", "{}", 2, "");
    snprintf (url, sizeof url, "http://[::1]:%d/v6", receiver->port);
    s_seed (v6, url, "200", "{}", 2, "");
    CHECK (s_wait_field (named, "webhook_state", "failed", WAIT_MS));
    CHECK (s_wait_field (v6, "webhook_state", "failed", WAIT_MS));
    char *error = s_field (named, "webhook_last_error");
    if (s_verbose)
        printf ("   localhost: %s\n", error? error: "(nil)");
    CHECK (error && strncmp (error, "webhook target ", 15) == 0
                 && strstr (error, " is in a private range; set KILN_WEBHOOK_ALLOW_PRIVATE=1"));
    free (error);
    CHECK (s_field_is (v6, "webhook_last_error", "webhook target ::1 is in a private "
                       "range; set KILN_WEBHOOK_ALLOW_PRIVATE=1 to allow it"));
    usleep (300000);
    CHECK (s_hit_count (receiver) == 0);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

//  The hit's x-fal-webhook-* headers verify with public_key for the body
//  it got; its timestamp goes into *timestamp.
static bool
s_hit_verifies (s_receiver_t *self, int index, const uint8_t *public_key,
                const char *request_id, const char *user_id, long long *timestamp)
{
    pthread_mutex_lock (&self->mutex);
    s_hit_t *hit = &self->hits [index];
    char *id = s_header (hit->head, "x-fal-webhook-request-id");
    char *user = s_header (hit->head, "x-fal-webhook-user-id");
    char *stamp = s_header (hit->head, "x-fal-webhook-timestamp");
    char *signature = s_header (hit->head, "x-fal-webhook-signature");
    bool valid = strcmp (id, request_id) == 0 && strcmp (user, user_id) == 0
              && kiln_sign_webhook_verify (public_key, id, user, stamp,
                                           hit->body, hit->body_size, signature);
    //  A byte changed in the body, or another user: no longer valid.
    if (valid && hit->body_size > 0) {
        hit->body [0] ^= 1;
        valid = !kiln_sign_webhook_verify (public_key, id, user, stamp,
                                           hit->body, hit->body_size, signature);
        hit->body [0] ^= 1;
    }
    valid = valid && !kiln_sign_webhook_verify (public_key, id, "someone-else", stamp,
                                                hit->body, hit->body_size, signature);
    if (!valid && s_verbose)
        printf ("   hit %d: id '%s' user '%s' timestamp '%s' signature '%s'\n",
                index, id, user, stamp, signature);
    *timestamp = atoll (stamp);
    pthread_mutex_unlock (&self->mutex);
    free (id);
    free (user);
    free (stamp);
    free (signature);
    return valid;
}

static void
s_test_signed (void)
{
    s_step ("every try is signed anew: the headers verify with the shared key");
    const int script [] = { 500 };
    s_receiver_t *receiver = s_receiver_new (0, script, 1, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/signed");
    long long before = kiln_now_ms () / 1000;
    //  Over a second between tries, so the second timestamp is later.
    kiln_webhooks_t *webhooks = s_deliverer (3, 1100, 2000, 600);
    s_seed (id, url, "200", "{\"signed\":true}", 15, "");
    CHECK (s_wait_hits (receiver, 2, WAIT_MS));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    long long after = kiln_now_ms () / 1000;
    kiln_sign_keypair_t pair;
    CHECK (kiln_signing_key_load (s_redis, &pair) == 0);
    long long first, second;
    CHECK (s_hit_verifies (receiver, 0, pair.public_key, id, "local", &first));
    CHECK (s_hit_verifies (receiver, 1, pair.public_key, id, "local", &second));
    if (s_verbose)
        printf ("   timestamps %lld, %lld (between %lld and %lld)\n", first, second, before, after);
    CHECK (first >= before && second <= after && second > first);
    CHECK (strcmp (receiver->hits [0].body, receiver->hits [1].body) == 0);
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
}

static char *
s_stored_key (void)
{
    redisReply *reply = redisCommand (s_redis, "GET %s", KILN_KEY_SIGNING_KEY);
    CHECK (reply);
    char *text = reply->type == REDIS_REPLY_STRING? strdup (reply->str): NULL;
    freeReplyObject (reply);
    return text;
}

static void
s_test_key (void)
{
    s_step ("one key pair in Redis: made once, then read by everyone");
    CHECK (s_int ("DEL %s", KILN_KEY_SIGNING_KEY) >= 0);
    kiln_sign_keypair_t one, two;
    CHECK (kiln_signing_key_load (s_redis, &one) == 0);
    char *stored = s_stored_key ();
    CHECK (stored && strncmp (stored, one.kid, KILN_SIGN_KID_LEN) == 0);
    CHECK (kiln_signing_key_load (s_redis, &two) == 0);
    CHECK (memcmp (&one, &two, sizeof one) == 0);
    char *again = s_stored_key ();
    CHECK (again && strcmp (stored, again) == 0);
    free (again);

    s_step ("a key that is not a pair: nothing is sent until it is fixed");
    CHECK (s_int ("DEL %s", KILN_KEY_SIGNING_KEY) == 1);
    redisReply *reply = redisCommand (s_redis, "SET %s %s", KILN_KEY_SIGNING_KEY, "not-a-key");
    CHECK (reply && reply->type == REDIS_REPLY_STATUS);
    freeReplyObject (reply);
    kiln_sign_keypair_t broken;
    CHECK (kiln_signing_key_load (s_redis, &broken) == -1 && s_redis->err == 0);
    s_receiver_t *receiver = s_receiver_new (0, NULL, 0, 200);
    char url [128], id [KILN_UUID_LEN + 1];
    s_url (url, sizeof url, receiver->port, "/rekeyed");
    kiln_webhooks_t *webhooks = s_deliverer (3, 50, 2000, 600);
    s_seed (id, url, "200", "{}", 2, "");
    usleep (700000);
    CHECK (s_hit_count (receiver) == 0);
    CHECK (s_field_is (id, "webhook_state", "pending"));
    //  Restored (as an operator would): the deliverer picks it up.
    reply = redisCommand (s_redis, "SET %s %s", KILN_KEY_SIGNING_KEY, stored);
    CHECK (reply && reply->type == REDIS_REPLY_STATUS);
    freeReplyObject (reply);
    CHECK (s_wait_hits (receiver, 1, WAIT_MS + 5000));
    CHECK (s_wait_field (id, "webhook_state", "delivered", WAIT_MS));
    long long timestamp;
    CHECK (s_hit_verifies (receiver, 0, one.public_key, id, "local", &timestamp));
    kiln_webhooks_destroy (&webhooks);
    s_receiver_destroy (&receiver);
    free (stored);
}

int
main (int argc, char *argv [])
{
    s_verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    if (access (REDIS_SERVER_BIN, X_OK) != 0) {
        printf ("kiln-webhook-test: %s is missing; skipped\n", REDIS_SERVER_BIN);
        return 0;
    }
    signal (SIGPIPE, SIG_IGN);
    kiln_log_init ("kiln-webhook-test", s_verbose? "info": "error");
    int port;
    s_redis_pid = kiln_redis_test_server_start (&port, s_redis_dir, NULL);
    CHECK (s_redis_pid > 0);
    snprintf (s_redis_url, sizeof s_redis_url, "redis://127.0.0.1:%d", port);
    s_redis = kiln_redis_connect (s_redis_url, 5000);
    CHECK (s_redis);
    CHECK (s_int ("HSET %s name %s", kiln_key_app (APP).s, APP) == 1);

    s_test_pure ();
    s_test_addresses ();
    s_test_body ();
    s_test_retries ();
    s_test_give_up ();
    s_test_receiver_down ();
    s_test_timeout ();
    s_test_restart ();
    s_test_leases ();
    s_test_redis_lost ();
    s_test_private ();
    s_test_signed ();
    s_test_key ();

    s_cleanup ();
    printf ("kiln-webhook-test: OK\n");
    return 0;
}
