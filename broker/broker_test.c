/*  =========================================================================
    kiln-broker-test — the broker against a real Redis and fake peers

        kiln-broker-test PATH/TO/kiln-broker [-v]

    Starts a redis-server (append-only, so it can be restarted without
    losing requests) and the broker on free loopback ports in a temp dir,
    then plays worker and runners itself over ZeroMQ with libkiln's codec,
    and submits requests with the SUBMIT script, as a gateway would. Checks
    the broker's side of docs/ARCHITECTURE.md: placement, dispatch,
    results, logs, runner loss, scheduling and start failures, retirement,
    app deletion, unknown peers, a broker restart (SIGKILL), a Redis
    restart with a result in between, a client's cancel reaching the
    runner, a queued request ended at its start deadline; re-queueing
    (at the head, the retry limit, X-Fal-No-Retry, a handler's 503, a
    stopping runner's hand-back), a slot held until its runner's exit is
    reported, a worker's refusal, failed starts in the app's status, the
    operators' view (kiln:runners, kiln:workers), live scale overrides,
    a draining worker, and sends that fail (a REQUEST to a runner whose
    connection is gone: not a run; a worker whose connection is gone:
    forgotten at once). Exits 0, or 1 naming the failed check and
    printing the tail of the broker's log. KILN_BROKER_TEST_KEEP set
    keeps the temp dir (logs) for reading.
    =========================================================================
*/
#include "kiln_keys.h"
#include "kiln_msg.h"
#include "kiln_scripts.h"
#include "kiln_util.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define REDIS_SERVER_BIN "/usr/bin/redis-server"
#define PEER_HEARTBEAT_MS 500
#define WAIT_MS 8000                //  for anything the broker does at once
#define ARTIFACT "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static bool s_verbose;
static char s_dir [64];
static char s_broker_bin [4096];
static char s_endpoint [64];
static char s_redis_url [64];
static int s_redis_port;
static pid_t s_redis_pid = -1;
static pid_t s_broker_pid = -1;
static redisContext *s_redis;

//  -------------------------------------------------------------------------
//  Processes

static void
s_cleanup (void)
{
    if (s_broker_pid > 0) {
        kill (s_broker_pid, SIGKILL);
        waitpid (s_broker_pid, NULL, 0);
        s_broker_pid = -1;
    }
    if (s_redis_pid > 0) {
        kill (s_redis_pid, SIGKILL);
        waitpid (s_redis_pid, NULL, 0);
        s_redis_pid = -1;
    }
    if (*s_dir && getenv ("KILN_BROKER_TEST_KEEP")) {
        printf ("kiln-broker-test: kept %s\n", s_dir);
        *s_dir = 0;
    }
    if (*s_dir) {
        char cmd [128];
        snprintf (cmd, sizeof cmd, "rm -rf '%s'", s_dir);
        if (system (cmd) != 0)
            fprintf (stderr, "could not remove %s\n", s_dir);
        *s_dir = 0;
    }
}

static void
s_fail (const char *what, int line)
{
    fprintf (stderr, "kiln-broker-test: FAILED at line %d: %s\n", line, what);
    char cmd [256];
    snprintf (cmd, sizeof cmd, "tail -n 40 '%s/broker.log' >&2", s_dir);
    fprintf (stderr, "--- broker log (last 40 lines) ---\n");
    if (system (cmd) != 0)
        fprintf (stderr, "(no log)\n");
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

static pid_t
s_spawn (const char *const argv [], const char *log_name)
{
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        if (getppid () != parent)
            _exit (1);
        char path [128];
        snprintf (path, sizeof path, "%s/%s", s_dir, log_name);
        FILE *log = fopen (path, "a");
        if (log) {
            dup2 (fileno (log), 1);
            dup2 (fileno (log), 2);
        }
        execv (argv [0], (char *const *) argv);
        _exit (127);
    }
    return pid;
}

static void
s_redis_start (void)
{
    char port [16];
    snprintf (port, sizeof port, "%d", s_redis_port);
    const char *argv [] = {
        REDIS_SERVER_BIN, "--port", port, "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "always", "--dir", s_dir,
        "--daemonize", "no", NULL
    };
    s_redis_pid = s_spawn (argv, "redis.log");
    CHECK (s_redis_pid > 0);
    for (int i = 0; i < 200; i++) {
        redisContext *ctx = redisConnect ("127.0.0.1", s_redis_port);
        if (ctx && !ctx->err) {
            redisReply *reply = redisCommand (ctx, "PING");
            bool up = reply && reply->type == REDIS_REPLY_STATUS;
            if (reply)
                freeReplyObject (reply);
            if (up) {
                if (s_redis)
                    redisFree (s_redis);
                s_redis = ctx;
                return;
            }
        }
        if (ctx)
            redisFree (ctx);
        usleep (50000);
    }
    s_fail ("redis-server did not start", __LINE__);
}

static void
s_redis_stop (void)
{
    kill (s_redis_pid, SIGTERM);        //  writes its append-only file
    waitpid (s_redis_pid, NULL, 0);
    s_redis_pid = -1;
    redisFree (s_redis);
    s_redis = NULL;
}

static void
s_broker_start (void)
{
    const char *argv [] = {
        s_broker_bin, "--redis", s_redis_url, "--endpoint", s_endpoint, NULL
    };
    s_broker_pid = s_spawn (argv, "broker.log");
    CHECK (s_broker_pid > 0);
    usleep (200000);
}

//  -------------------------------------------------------------------------
//  Redis, as a gateway would use it

static redisReply *
s_command (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    redisReply *reply = redisvCommand (s_redis, format, args);
    va_end (args);
    CHECK (reply);
    return reply;
}

static void
s_deploy (const char *app, uint64_t revision, const char *manifest)
{
    kiln_key_t key = kiln_key_app (app);
    redisReply *reply = s_command ("HSET %s name %s revision %llu artifact %s manifest %s updated_ms 0",
                                   key.s, app, (unsigned long long) revision, ARTIFACT, manifest);
    freeReplyObject (reply);
    reply = s_command ("SADD %s %s", KILN_KEY_APPS, app);
    freeReplyObject (reply);
    //  As KILN_SCRIPT_DEPLOY does: the broker reads the record again.
    freeReplyObject (s_command ("PUBLISH %s %s", KILN_CHANNEL_CHANGED, app));
}

static void
s_undeploy (const char *app)
{
    kiln_key_t key = kiln_key_app (app);
    freeReplyObject (s_command ("DEL %s", key.s));
    freeReplyObject (s_command ("SREM %s %s", KILN_KEY_APPS, app));
    freeReplyObject (s_command ("PUBLISH %s %s", KILN_CHANNEL_CHANGED, app));
}

//  Queues a request that must start within timeout_ms (0: no deadline),
//  with X-Fal-No-Retry or not; fills in its new id.
static void
s_submit_opts (const char *app, const char *body, int64_t timeout_ms, bool no_retry,
               char id [KILN_UUID_LEN + 1])
{
    kiln_uuid4 (id);
    kiln_key_t app_key = kiln_key_app (app);
    kiln_key_t req = kiln_key_request (id);
    kiln_key_t queue = kiln_key_queue (app);
    int64_t now_ms = kiln_now_ms ();
    char now [32], deadline [32];
    snprintf (now, sizeof now, "%lld", (long long) now_ms);
    snprintf (deadline, sizeof deadline, "%lld", (long long) (timeout_ms? now_ms + timeout_ms: 0));
    redisReply *reply = s_command ("EVAL %s 4 %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s",
                                   KILN_SCRIPT_SUBMIT, app_key.s, req.s, queue.s, KILN_KEY_SEQ,
                                   id, app, "/", "application/json", body, "normal",
                                   "kiln:done:test", "", now, deadline, no_retry? "1": "0");
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer >= 0);
    freeReplyObject (reply);
}

static void
s_submit_within (const char *app, const char *body, int64_t timeout_ms,
                 char id [KILN_UUID_LEN + 1])
{
    s_submit_opts (app, body, timeout_ms, false, id);
}

//  Queues a request; fills in its new id.
static void
s_submit (const char *app, const char *body, char id [KILN_UUID_LEN + 1])
{
    s_submit_within (app, body, 0, id);
}

//  Cancels a request as the gateway does; returns the script's answer
//  (caller frees).
static char *
s_cancel (const char *app, const char *id)
{
    kiln_key_t req = kiln_key_request (id);
    redisReply *reply = s_command ("EVAL %s 1 %s %s %s %lld %s", KILN_SCRIPT_CANCEL, req.s,
                                   id, app, (long long) kiln_now_ms (), "600");
    CHECK (reply->type == REDIS_REPLY_STRING);
    char *answer = strdup (reply->str);
    freeReplyObject (reply);
    return answer;
}

//  Subscribers to a channel (the broker's, once it has subscribed).
static long long
s_subscribers (const char *channel)
{
    redisReply *reply = s_command ("PUBSUB NUMSUB %s", channel);
    long long count = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
                   && reply->element [1]->type == REDIS_REPLY_INTEGER
                    ? reply->element [1]->integer: -1;
    freeReplyObject (reply);
    return count;
}

//  A field of a request record; "" when absent. Caller frees.
static char *
s_field (const char *id, const char *field)
{
    kiln_key_t req = kiln_key_request (id);
    redisReply *reply = s_command ("HGET %s %s", req.s, field);
    char *value = strdup (reply->type == REDIS_REPLY_STRING? reply->str: "");
    freeReplyObject (reply);
    return value;
}

//  A field of an app's record; "" when absent. Caller frees.
static char *
s_app_field (const char *app, const char *field)
{
    kiln_key_t key = kiln_key_app (app);
    redisReply *reply = s_command ("HGET %s %s", key.s, field);
    char *value = strdup (reply->type == REDIS_REPLY_STRING? reply->str: "");
    freeReplyObject (reply);
    return value;
}

static bool
s_app_field_is (const char *app, const char *field, const char *expected)
{
    char *value = s_app_field (app, field);
    bool same = streq (value, expected);
    if (!same)
        fprintf (stderr, "kiln-broker-test: %s %s is '%s', expected '%s'\n",
                 app, field, value, expected);
    free (value);
    return same;
}

//  Sets (or, with NULL, removes) the app's live scale override and wakes
//  the broker, as the gateway's PATCH does.
static void
s_scale (const char *app, const char *json)
{
    kiln_key_t key = kiln_key_app (app);
    if (json)
        freeReplyObject (s_command ("HSET %s scale %s", key.s, json));
    else
        freeReplyObject (s_command ("HDEL %s scale", key.s));
    freeReplyObject (s_command ("PUBLISH %s %s", KILN_CHANNEL_WAKE, app));
}

static bool
s_field_is (const char *id, const char *field, const char *expected)
{
    char *value = s_field (id, field);
    bool same = streq (value, expected);
    free (value);
    return same;
}

//  -------------------------------------------------------------------------
//  Fake peers

typedef struct {
    char *id;
    zsock_t *sock;
    zlistx_t *inbox;                //  kiln_msg_t, heartbeats left out
    bool heartbeats;                //  sends HEARTBEAT while pumped
    zhashx_t *held;                 //  request ids a runner got and has not answered,
                                    //  listed in its heartbeats as a real runner does
    int64_t last_heartbeat_ms;
    size_t heartbeats_seen;
} s_peer_t;

#define PEERS_MAX 32
static s_peer_t *s_peers [PEERS_MAX];

static void
s_msg_free (void **item)
{
    kiln_msg_destroy ((kiln_msg_t **) item);
}

static s_peer_t *
s_peer_new (const char *id)
{
    s_peer_t *self = calloc (1, sizeof *self);
    CHECK (self);
    self->id = strdup (id);
    self->sock = zsock_new (ZMQ_DEALER);
    CHECK (self->sock);
    zsock_set_identity (self->sock, id);
    zsock_set_linger (self->sock, 0);
    CHECK (zsock_connect (self->sock, "%s", s_endpoint) == 0);
    self->inbox = zlistx_new ();
    zlistx_set_destructor (self->inbox, s_msg_free);
    self->held = zhashx_new ();
    CHECK (self->held);
    self->heartbeats = true;
    self->last_heartbeat_ms = kiln_mono_ms ();
    for (int i = 0; i < PEERS_MAX; i++)
        if (!s_peers [i]) {
            s_peers [i] = self;
            return self;
        }
    s_fail ("too many peers", __LINE__);
    return NULL;
}

static void
s_peer_destroy (s_peer_t **self_p)
{
    s_peer_t *self = *self_p;
    for (int i = 0; i < PEERS_MAX; i++)
        if (s_peers [i] == self)
            s_peers [i] = NULL;
    zsock_destroy (&self->sock);
    zlistx_destroy (&self->inbox);
    zhashx_destroy (&self->held);
    free (self->id);
    free (self);
    *self_p = NULL;
}

static void
s_peer_send (s_peer_t *self, kiln_msg_t *msg)
{
    CHECK (msg);
    CHECK (kiln_msg_send (&msg, self->sock, NULL) == 0);
}

static void
s_peer_send_simple (s_peer_t *self, kiln_msg_type_t type)
{
    s_peer_send (self, kiln_msg_new (type));
}

//  A HEARTBEAT that lists the requests the peer holds.
static void
s_peer_heartbeat (s_peer_t *self)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_HEARTBEAT);
    CHECK (msg);
    size_t count = zhashx_size (self->held);
    if (count) {
        msg->requests = calloc (count, sizeof (char *));
        CHECK (msg->requests);
        for (void *item = zhashx_first (self->held); item; item = zhashx_next (self->held))
            msg->requests [msg->request_count++] = strdup ((const char *) zhashx_cursor (self->held));
    }
    s_peer_send (self, msg);
}

//  Receives for every peer and sends their heartbeats, for ms.
static void
s_pump (int ms)
{
    int64_t deadline = kiln_mono_ms () + ms;
    do {
        for (int i = 0; i < PEERS_MAX; i++) {
            s_peer_t *peer = s_peers [i];
            if (!peer)
                continue;
            while (zsock_events (peer->sock) & ZMQ_POLLIN) {
                kiln_msg_t *msg = kiln_msg_recv (peer->sock, NULL);
                if (!msg)
                    continue;
                if (msg->type == KILN_MSG_HEARTBEAT) {
                    peer->heartbeats_seen++;
                    kiln_msg_destroy (&msg);
                }
                else {
                    if (msg->type == KILN_MSG_REQUEST)
                        zhashx_update (peer->held, msg->request_id, (void *) 1);
                    zlistx_add_end (peer->inbox, msg);
                }
            }
            if (peer->heartbeats
            &&  kiln_mono_ms () - peer->last_heartbeat_ms >= PEER_HEARTBEAT_MS) {
                s_peer_heartbeat (peer);
                peer->last_heartbeat_ms = kiln_mono_ms ();
            }
        }
        zclock_sleep (5);
    } while (kiln_mono_ms () < deadline);
}

//  The first message of that type in the inbox (and for that app, when
//  given), waiting up to ms. Caller destroys. NULL on timeout.
static kiln_msg_t *
s_expect (s_peer_t *peer, kiln_msg_type_t type, const char *app, int ms)
{
    int64_t deadline = kiln_mono_ms () + ms;
    while (true) {
        for (void *handle = zlistx_first (peer->inbox) ? zlistx_cursor (peer->inbox): NULL;
             handle; handle = zlistx_next (peer->inbox) ? zlistx_cursor (peer->inbox): NULL) {
            kiln_msg_t *msg = (kiln_msg_t *) zlistx_handle_item (handle);
            if (msg->type == type && (!app || (msg->app && streq (msg->app, app))))
                return (kiln_msg_t *) zlistx_detach (peer->inbox, handle);
        }
        if (kiln_mono_ms () >= deadline)
            return NULL;
        s_pump (10);
    }
}

//  True when no message of that type came within ms.
static bool
s_quiet (s_peer_t *peer, kiln_msg_type_t type, const char *app, int ms)
{
    kiln_msg_t *msg = s_expect (peer, type, app, ms);
    bool quiet = msg == NULL;
    kiln_msg_destroy (&msg);
    return quiet;
}

static bool
s_wait_field (const char *id, const char *field, const char *expected, int ms)
{
    int64_t deadline = kiln_mono_ms () + ms;
    while (!s_field_is (id, field, expected)) {
        if (kiln_mono_ms () >= deadline)
            return false;
        s_pump (20);
    }
    return true;
}

static s_peer_t *
s_worker (const char *id, const char *machine_type, uint32_t count)
{
    s_peer_t *worker = s_peer_new (id);
    kiln_msg_t *hello = kiln_msg_new (KILN_MSG_WORKER_HELLO);
    hello->worker_id = strdup (id);
    hello->host = strdup ("testhost");
    hello->slots = calloc (1, sizeof (kiln_msg_slot_t));
    hello->slots [0].machine_type = strdup (machine_type);
    hello->slots [0].count = count;
    hello->slot_count = 1;
    s_peer_send (worker, hello);
    return worker;
}

//  Says the worker's hello again: its slots of one type, draining or not.
static void
s_worker_hello (s_peer_t *worker, const char *machine_type, uint32_t count, bool draining)
{
    kiln_msg_t *hello = kiln_msg_new (KILN_MSG_WORKER_HELLO);
    hello->worker_id = strdup (worker->id);
    hello->host = strdup ("testhost");
    hello->slots = calloc (1, sizeof (kiln_msg_slot_t));
    hello->slots [0].machine_type = strdup (machine_type);
    hello->slots [0].count = count;
    hello->slot_count = 1;
    hello->draining = draining;
    s_peer_send (worker, hello);
}

static void
s_runner_hello_gpu (s_peer_t *runner, const char *worker_id, const char *app, uint64_t revision,
                    int gpu)
{
    kiln_msg_t *hello = kiln_msg_new (KILN_MSG_RUNNER_HELLO);
    hello->runner_id = strdup (runner->id);
    hello->worker_id = strdup (worker_id);
    hello->app = strdup (app);
    hello->revision = revision;
    hello->max_multiplexing = 1;
    hello->gpu = gpu;
    s_peer_send (runner, hello);
}

static void
s_runner_hello (s_peer_t *runner, const char *worker_id, const char *app, uint64_t revision)
{
    s_runner_hello_gpu (runner, worker_id, app, revision, -1);
}

//  Waits for RUNNER_START of the app on the worker, connects that runner
//  and says its hello.
static s_peer_t *
s_start_runner (s_peer_t *worker, const char *app)
{
    kiln_msg_t *start = s_expect (worker, KILN_MSG_RUNNER_START, app, WAIT_MS);
    CHECK (start);
    CHECK (start->runner_id && strncmp (start->runner_id, "r-", 2) == 0);
    CHECK (streq (start->artifact, ARTIFACT));
    s_peer_t *runner = s_peer_new (start->runner_id);
    s_runner_hello (runner, worker->id, app, start->revision);
    kiln_msg_destroy (&start);
    return runner;
}

static void
s_result (s_peer_t *runner, const char *request_id, int status, const char *body)
{
    zhashx_delete (runner->held, request_id);
    kiln_msg_t *result = kiln_msg_new (KILN_MSG_RESULT);
    result->request_id = strdup (request_id);
    result->status = status;
    result->content_type = strdup ("application/json");
    result->body = (uint8_t *) strdup (body);
    result->body_size = strlen (body);
    result->inference_ms = 7;
    s_peer_send (runner, result);
}

//  A RESULT that is an error of the given type (kiln's JSON body).
static void
s_result_error (s_peer_t *runner, const char *request_id, int status, const char *error_type)
{
    zhashx_delete (runner->held, request_id);
    kiln_msg_t *result = kiln_msg_new (KILN_MSG_RESULT);
    result->request_id = strdup (request_id);
    result->status = status;
    result->content_type = strdup ("application/json");
    char body [256];
    snprintf (body, sizeof body, "{\"detail\":\"x\",\"error_type\":\"%s\"}", error_type);
    result->body = (uint8_t *) strdup (body);
    result->body_size = strlen (body);
    result->error = strdup ("x");
    result->error_type = strdup (error_type);
    s_peer_send (runner, result);
}

//  Waits until the broker's view (kiln:runners or kiln:workers) of id
//  holds every one of the NULL-ended needles.
static bool
s_wait_view (const char *key, const char *id, int ms, ...)
{
    int64_t deadline = kiln_mono_ms () + ms;
    while (true) {
        redisReply *reply = s_command ("HGET %s %s", key, id);
        bool all = reply->type == REDIS_REPLY_STRING;
        va_list args;
        va_start (args, ms);
        for (const char *needle = va_arg (args, const char *); needle && all;
             needle = va_arg (args, const char *))
            all = strstr (reply->str, needle) != NULL;
        va_end (args);
        if (!all && kiln_mono_ms () >= deadline)
            fprintf (stderr, "kiln-broker-test: %s %s is %s\n", key, id,
                     reply->type == REDIS_REPLY_STRING? reply->str: "(nil)");
        freeReplyObject (reply);
        if (all)
            return true;
        if (kiln_mono_ms () >= deadline)
            return false;
        s_pump (50);
    }
}

//  Waits until the broker's view no longer lists id.
static bool
s_wait_view_gone (const char *key, const char *id, int ms)
{
    int64_t deadline = kiln_mono_ms () + ms;
    while (true) {
        redisReply *reply = s_command ("HEXISTS %s %s", key, id);
        bool gone = reply->type == REDIS_REPLY_INTEGER && reply->integer == 0;
        freeReplyObject (reply);
        if (gone)
            return true;
        if (kiln_mono_ms () >= deadline)
            return false;
        s_pump (50);
    }
}

//  A worker, once the broker's view shows it registered (its hello is
//  handled: a request for its machine type is placed, not failed).
static s_peer_t *
s_worker_registered (const char *id, const char *machine_type, uint32_t count)
{
    s_peer_t *worker = s_worker (id, machine_type, count);
    char shown [128];
    snprintf (shown, sizeof shown, "\"id\":\"%s\"", id);
    CHECK (s_wait_view (KILN_KEY_WORKERS, id, 5000, shown, NULL));
    return worker;
}

static void
s_exited (s_peer_t *worker, const char *runner_id, int status, const char *error)
{
    kiln_msg_t *exited = kiln_msg_new (KILN_MSG_RUNNER_EXITED);
    exited->runner_id = strdup (runner_id);
    exited->status = status;
    if (error)
        exited->error = strdup (error);
    s_peer_send (worker, exited);
}

//  -------------------------------------------------------------------------
//  Scenarios

#define ECHO_MANIFEST \
    "{\"name\":\"echo\",\"machine_types\":[\"CPU\"],\"keep_alive\":300," \
    "\"max_concurrency\":2,\"endpoints\":[\"/\"]}"

//  The scenarios below use a worker of their own, w-one, with one slot of
//  a machine type nobody else offers, so that what it places is theirs.
#define T4_MANIFEST(name, extra) \
    "{\"name\":\"" name "\",\"machine_types\":[\"GPU-T4\"],\"endpoints\":[\"/\"]" extra "}"

static s_peer_t *s_one;

//  Re-queue (issue 6): at the head, the retry limit, a handler's 503,
//  a hand-back by a stopping runner, X-Fal-No-Retry.
static void
s_scenarios_requeue (void)
{
    char a [KILN_UUID_LEN + 1], b [KILN_UUID_LEN + 1], c [KILN_UUID_LEN + 1];
    s_step ("a lost request goes back to the head of its queue, ahead of what waited");
    //  Registered before anything is queued for it: a type nobody offers
    //  fails its requests at once.
    s_one = s_worker_registered ("w-one", "GPU-T4", 1);
    s_deploy ("local/one", 1, T4_MANIFEST ("one", ",\"max_concurrency\":1,\"keep_alive\":300"));
    s_submit ("local/one", "{\"n\":\"a\"}", a);
    s_peer_t *r1 = s_start_runner (s_one, "local/one");
    kiln_msg_t *msg = s_expect (r1, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    s_submit ("local/one", "{\"n\":\"b\"}", b);
    s_pump (100);
    s_exited (s_one, r1->id, -9, "killed by signal 9");
    s_peer_destroy (&r1);
    s_peer_t *r2 = s_start_runner (s_one, "local/one");
    msg = s_expect (r2, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (a, "attempts", "2"));
    CHECK (s_field_is (b, "state", "IN_QUEUE"));

    s_step ("a handler's 503 is retried like a crash; out of tries, its own answer stands");
    s_result (r2, a, 503, "{\"busy\":1}");
    msg = s_expect (r2, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (a, "attempts", "3"));
    s_result (r2, a, 503, "{\"busy\":2}");
    CHECK (s_wait_field (a, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (a, "status", "503"));
    CHECK (s_field_is (a, "result_body", "{\"busy\":2}"));

    s_step ("a stopping runner's hand-back is re-queued uncounted; its slot is "
            "free only when its worker reports its exit");
    msg = s_expect (r2, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, b));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (b, "attempts", "1"));
    s_result_error (r2, b, 503, KILN_ERROR_TYPE_RUNNER_DRAINING);
    CHECK (s_wait_field (b, "state", "IN_QUEUE", WAIT_MS));
    CHECK (s_field_is (b, "attempts", "0"));
    CHECK (s_quiet (r2, KILN_MSG_REQUEST, NULL, 500));
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, NULL, 1000));
    s_peer_send_simple (r2, KILN_MSG_DISCONNECT);
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, NULL, 1500));
    CHECK (s_field_is (b, "state", "IN_QUEUE"));
    s_exited (s_one, r2->id, 0, NULL);
    s_peer_destroy (&r2);
    s_peer_t *r3 = s_start_runner (s_one, "local/one");
    msg = s_expect (r3, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, b));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (b, "attempts", "1"));
    s_result (r3, b, 200, "{}");
    CHECK (s_wait_field (b, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (b, "status", "200"));

    s_step ("X-Fal-No-Retry: a lost run is final");
    s_submit_opts ("local/one", "{}", 0, true, c);
    msg = s_expect (r3, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, c));
    kiln_msg_destroy (&msg);
    s_exited (s_one, r3->id, -9, "killed by signal 9");
    s_peer_destroy (&r3);
    CHECK (s_wait_field (c, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (c, "status", "503"));
    CHECK (s_field_is (c, "error_type", "runner_disconnected"));
    CHECK (s_field_is (c, "attempts", "1"));

    s_step ("the retry limit: a request whose runner dies on each of its 3 runs ends "
            "503 runner_disconnected");
    s_submit ("local/one", "{}", a);
    for (int run = 1; run <= 3; run++) {
        s_peer_t *runner = s_start_runner (s_one, "local/one");
        msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
        CHECK (msg && streq (msg->request_id, a));
        kiln_msg_destroy (&msg);
        s_exited (s_one, runner->id, -11, "killed by signal 11");
        s_peer_destroy (&runner);
    }
    CHECK (s_wait_field (a, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (a, "status", "503"));
    CHECK (s_field_is (a, "error_type", "runner_disconnected"));
    CHECK (s_field_is (a, "attempts", "3"));
    char *error = s_field (a, "error");
    CHECK (strstr (error, "tried 3 times"));
    free (error);
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, NULL, 500));
    s_undeploy ("local/one");
}

//  Failed starts in the app's status; a worker's refusal for want of a
//  slot is no failed start; the operators' view of a busy runner.
static void
s_scenarios_slots (void)
{
    char d [KILN_UUID_LEN + 1];
    s_step ("a failed start is in the app's status; a worker's refusal is not one; "
            "a hello clears the count");
    s_deploy ("local/flaky", 1, T4_MANIFEST ("flaky", ",\"max_concurrency\":1,\"keep_alive\":0"));
    s_submit ("local/flaky", "{}", d);
    kiln_msg_t *msg = s_expect (s_one, KILN_MSG_RUNNER_START, "local/flaky", WAIT_MS);
    CHECK (msg);
    s_exited (s_one, msg->runner_id, 3, "setup failed (exit 3): weights missing");
    kiln_msg_destroy (&msg);
    msg = s_expect (s_one, KILN_MSG_RUNNER_START, "local/flaky", WAIT_MS);
    CHECK (msg);
    CHECK (s_app_field_is ("local/flaky", "failed_starts", "1"));
    CHECK (s_app_field_is ("local/flaky", "last_error", "setup failed (exit 3): weights missing"));
    s_exited (s_one, msg->runner_id, 127, "no free GPU-T4 slot on worker w-one");
    kiln_msg_destroy (&msg);
    msg = s_expect (s_one, KILN_MSG_RUNNER_START, "local/flaky", WAIT_MS);
    CHECK (msg);
    CHECK (s_app_field_is ("local/flaky", "failed_starts", "1"));
    CHECK (s_field_is (d, "state", "IN_QUEUE"));
    s_peer_t *runner = s_peer_new (msg->runner_id);
    s_runner_hello_gpu (runner, s_one->id, "local/flaky", 1, 0);
    kiln_msg_destroy (&msg);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, d));
    kiln_msg_destroy (&msg);
    CHECK (s_app_field_is ("local/flaky", "failed_starts", "0"));
    CHECK (s_app_field_is ("local/flaky", "last_error", "setup failed (exit 3): weights missing"));

    s_step ("kiln:runners and kiln:workers show the broker's view");
    char needle [128];
    snprintf (needle, sizeof needle, "\"id\":\"%s\"", runner->id);
    CHECK (s_wait_view (KILN_KEY_RUNNERS, runner->id, 5000, needle,
                        "\"app\":\"local/flaky\"", "\"revision\":1", "\"worker\":\"w-one\"",
                        "\"host\":\"testhost\"", "\"machine_type\":\"GPU-T4\"", "\"gpu\":\"0\"",
                        "\"state\":\"busy\"", "\"inflight\":1", "\"served\":0",
                        "\"idle_s\":0", "\"started_ms\":1", NULL));
    CHECK (s_wait_view (KILN_KEY_WORKERS, "w-one", 5000, "\"id\":\"w-one\"",
                        "\"host\":\"testhost\"", "\"slots\":{\"GPU-T4\":1}",
                        "\"used\":{\"GPU-T4\":1}", "\"draining\":false", NULL));
    s_result (runner, d, 200, "{}");
    CHECK (s_wait_field (d, "state", "COMPLETED", WAIT_MS));
    //  keep_alive 0: it retires at once
    msg = s_expect (s_one, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    CHECK (s_wait_view (KILN_KEY_RUNNERS, runner->id, 5000, "\"state\":\"draining\"",
                        "\"served\":1", NULL));
    s_exited (s_one, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    s_undeploy ("local/flaky");
}

//  Live scale overrides: applied at once on a wake, an invalid one
//  ignored, the revision untouched.
static void
s_scenarios_scale (void)
{
    s_step ("a live scale override takes effect at once; an invalid one is ignored");
    s_deploy ("local/scaled", 1, T4_MANIFEST ("scaled", ",\"max_concurrency\":1,\"keep_alive\":300"));
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, "local/scaled", 1200));
    s_scale ("local/scaled", "{\"min_concurrency\":1}");
    s_peer_t *runner = s_start_runner (s_one, "local/scaled");
    CHECK (s_app_field_is ("local/scaled", "revision", "1"));
    //  min above max: ignored; the manifest's bounds stand (keep_alive 300)
    s_scale ("local/scaled", "{\"min_concurrency\":2}");
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_STOP, NULL, 1200));
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, NULL, 10));
    //  min 0 and keep_alive 0: the idle runner retires at once
    s_scale ("local/scaled", "{\"min_concurrency\":0,\"keep_alive\":0}");
    kiln_msg_t *msg = s_expect (s_one, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (s_one, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    //  a buffer keeps a spare runner with no traffic at all
    s_scale ("local/scaled", "{\"concurrency_buffer\":1}");
    runner = s_start_runner (s_one, "local/scaled");
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_STOP, NULL, 1200));
    s_undeploy ("local/scaled");
    freeReplyObject (s_command ("PUBLISH %s %s", KILN_CHANNEL_WAKE, "local/scaled"));
    msg = s_expect (s_one, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (s_one, runner->id, 0, NULL);
    s_peer_destroy (&runner);
}

//  The lease of a request in kiln:inflight (wall ms), or -1 when it has none.
static long long
s_lease (const char *id)
{
    redisReply *reply = s_command ("ZSCORE %s %s", KILN_KEY_INFLIGHT, id);
    long long lease = reply->type == REDIS_REPLY_STRING? atoll (reply->str): -1;
    freeReplyObject (reply);
    return lease;
}

//  Leases (issue 6): renewed by the heartbeats that list a request; a
//  request its runner stops listing, or whose lease runs out with no
//  runner holding it, is re-queued; one past its app's request_timeout
//  ends 504 and its runner is killed.
static void
s_scenarios_leases (void)
{
    char a [KILN_UUID_LEN + 1], b [KILN_UUID_LEN + 1], x [KILN_UUID_LEN + 1];
    s_step ("a runner's heartbeats renew the leases of the requests they list");
    s_deploy ("local/lease", 1, T4_MANIFEST ("lease", ",\"max_concurrency\":1,\"keep_alive\":300"));
    s_submit ("local/lease", "{\"n\":\"a\"}", a);
    s_peer_t *runner = s_start_runner (s_one, "local/lease");
    kiln_msg_t *msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    long long first = s_lease (a);
    CHECK (first > 0 && first <= kiln_now_ms () + 3000);
    s_pump (2500);
    long long renewed = s_lease (a);
    CHECK (renewed > first);
    CHECK (s_field_is (a, "state", "IN_PROGRESS"));
    CHECK (s_field_is (a, "attempts", "1"));

    s_step ("a request its runner stops listing (its RESULT lost) runs again; "
            "the late RESULT is dropped: one result");
    //  As if its RESULT had been sent and lost on the wire.
    zhashx_delete (runner->held, a);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (a, "attempts", "2"));
    s_result (runner, a, 200, "{\"run\":2}");
    CHECK (s_wait_field (a, "state", "COMPLETED", WAIT_MS));
    s_result (runner, a, 200, "{\"run\":1}");
    s_pump (300);
    CHECK (s_field_is (a, "result_body", "{\"run\":2}"));
    CHECK (s_lease (a) == -1);

    s_step ("a lease that runs out while no runner holds it: re-queued, counted");
    //  The runner is kept busy with c, so that b waits in the queue; the
    //  test takes b for a runner that is gone, as a broker that died
    //  would have left it.
    char c [KILN_UUID_LEN + 1];
    s_submit ("local/lease", "{\"n\":\"c\"}", c);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, c));
    kiln_msg_destroy (&msg);
    s_submit ("local/lease", "{\"n\":\"b\"}", b);
    kiln_key_t queue = kiln_key_queue ("local/lease");
    redisReply *reply = s_command ("EVAL %s 2 %s %s %s %lld %lld %d", KILN_SCRIPT_TAKE, queue.s,
                                   KILN_KEY_INFLIGHT, "r-ghost", (long long) kiln_now_ms (),
                                   (long long) kiln_now_ms () + 500, 600);
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4
        && streq (reply->element [0]->str, b));
    freeReplyObject (reply);
    CHECK (s_field_is (b, "runner", "r-ghost"));
    CHECK (s_wait_field (b, "state", "IN_QUEUE", 500 + 2000));
    CHECK (s_field_is (b, "attempts", "1"));
    CHECK (s_lease (b) == -1);
    s_result (runner, c, 200, "{}");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, b));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (b, "attempts", "2"));
    CHECK (s_field_is (c, "state", "COMPLETED"));
    s_result (runner, b, 200, "{}");
    CHECK (s_wait_field (b, "state", "COMPLETED", WAIT_MS));
    s_undeploy ("local/lease");
    msg = s_expect (s_one, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (s_one, runner->id, 0, NULL);
    s_peer_destroy (&runner);

    s_step ("a request past its app's request_timeout ends 504 request_timeout; "
            "its runner is killed (a RUNNER_STOP with status KILN_RUNNER_STOP_KILL)");
    s_deploy ("local/stuck", 1, T4_MANIFEST ("stuck", ",\"max_concurrency\":1,"
                                             "\"keep_alive\":300,\"request_timeout\":1"));
    s_submit ("local/stuck", "{}", x);
    runner = s_start_runner (s_one, "local/stuck");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, x));
    kiln_msg_destroy (&msg);
    int64_t sent = kiln_mono_ms ();
    CHECK (s_wait_field (x, "state", "COMPLETED", 1000 + 2000));
    CHECK (kiln_mono_ms () - sent >= 1000);
    CHECK (s_field_is (x, "status", "504"));
    CHECK (s_field_is (x, "error_type", "request_timeout"));
    char *error = s_field (x, "error");
    CHECK (strstr (error, "request_timeout (1 s)"));
    free (error);
    //  Stopped, then killed: only the kill says so.
    for (int stop = 0; stop < 2; stop++) {
        msg = s_expect (s_one, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
        CHECK (msg && streq (msg->runner_id, runner->id));
        CHECK (msg->status == (stop == 0? 0: KILN_RUNNER_STOP_KILL));
        kiln_msg_destroy (&msg);
    }
    //  Its answer, should it come after all, changes nothing.
    s_result (runner, x, 200, "{\"late\":true}");
    s_pump (300);
    CHECK (s_field_is (x, "status", "504"));
    s_exited (s_one, runner->id, -9, "killed by signal 9");
    s_peer_destroy (&runner);
    s_undeploy ("local/stuck");
}

//  A runner to kill (past its request_timeout) while its worker is not
//  registered: forgotten for its silence here, as it is until it comes
//  back after a broker restart. Only its worker can kill it; until then
//  it takes nothing, however often it says hello.
static void
s_scenarios_kill_pending (void)
{
    char x [KILN_UUID_LEN + 1], y [KILN_UUID_LEN + 1];
    s_step ("a runner to kill while its worker is away takes nothing and is killed "
            "once the worker is back");
    s_peer_t *worker = s_worker_registered ("w-kp", "GPU-K", 1);
    s_deploy ("local/kp", 1, "{\"name\":\"kp\",\"machine_types\":[\"GPU-K\"],"
              "\"max_concurrency\":1,\"keep_alive\":300,\"request_timeout\":3,"
              "\"endpoints\":[\"/\"]}");
    s_submit ("local/kp", "{\"n\":\"x\"}", x);
    s_peer_t *runner = s_start_runner (worker, "local/kp");
    kiln_msg_t *msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, x));
    kiln_msg_destroy (&msg);
    //  The worker falls silent and is forgotten with its runners; the
    //  runner, alive, hears DISCONNECT, says hello, is adopted without
    //  its worker and takes x again, which it never answers.
    worker->heartbeats = false;
    CHECK (s_wait_view_gone (KILN_KEY_WORKERS, "w-kp", 8000));
    msg = s_expect (runner, KILN_MSG_DISCONNECT, NULL, WAIT_MS);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    s_runner_hello (runner, "w-kp", "local/kp", 1);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, x));
    kiln_msg_destroy (&msg);
    CHECK (s_wait_field (x, "state", "COMPLETED", 3000 + 3000));
    CHECK (s_field_is (x, "error_type", "request_timeout"));
    //  To be killed: its hellos adopt nothing, it is given nothing
    s_submit ("local/kp", "{\"n\":\"y\"}", y);
    s_runner_hello (runner, "w-kp", "local/kp", 1);
    CHECK (s_quiet (runner, KILN_MSG_REQUEST, NULL, 1500));
    CHECK (s_field_is (y, "state", "IN_QUEUE"));
    //  Its worker is back: the kill goes out
    worker->heartbeats = true;
    s_worker_hello (worker, "GPU-K", 1, false);
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id) && msg->status == KILN_RUNNER_STOP_KILL);
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, -9, "killed by signal 9");
    s_peer_destroy (&runner);
    //  y runs on a new runner
    runner = s_start_runner (worker, "local/kp");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, y));
    kiln_msg_destroy (&msg);
    s_result (runner, y, 200, "{}");
    CHECK (s_wait_field (y, "state", "COMPLETED", WAIT_MS));
    s_undeploy ("local/kp");
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    s_peer_send_simple (worker, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_peer_destroy (&worker);
}

//  A worker that drains (its SIGTERM): no runner placed there, its
//  runners' results still count, and a worker that joins takes over.
static void
s_scenarios_drain (void)
{
    char e [KILN_UUID_LEN + 1], f [KILN_UUID_LEN + 1];
    s_step ("a draining worker takes no runner; its runners finish and their results count");
    s_deploy ("local/t4", 1, T4_MANIFEST ("t4", ",\"max_concurrency\":2,\"keep_alive\":300"));
    s_submit ("local/t4", "{\"n\":\"e\"}", e);
    s_peer_t *runner = s_start_runner (s_one, "local/t4");
    kiln_msg_t *msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, e));
    kiln_msg_destroy (&msg);
    //  The view shows it as operators see it (the runner of an earlier
    //  scenario may have been evicted or retired by now: not this one).
    CHECK (s_wait_view (KILN_KEY_RUNNERS, runner->id, 5000, "\"state\":\"busy\"",
                        "\"worker\":\"w-one\"", "\"gpu\":null",
                        "\"machine_type\":\"GPU-T4\"", "\"inflight\":1", NULL));
    s_worker_hello (s_one, "GPU-T4", 1, true);
    CHECK (s_wait_view (KILN_KEY_WORKERS, "w-one", 5000, "\"draining\":true", NULL));
    CHECK (s_wait_view (KILN_KEY_RUNNERS, runner->id, 5000, "\"state\":\"draining\"", NULL));
    s_submit ("local/t4", "{\"n\":\"f\"}", f);
    CHECK (s_quiet (s_one, KILN_MSG_RUNNER_START, NULL, 1000));
    CHECK (s_quiet (runner, KILN_MSG_REQUEST, NULL, 10));
    s_result (runner, e, 200, "{\"drained\":true}");
    CHECK (s_wait_field (e, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (e, "status", "200"));
    CHECK (s_field_is (f, "state", "IN_QUEUE"));

    s_step ("a worker that joins takes what waits; the draining one leaves");
    s_peer_t *two = s_worker ("w-two", "GPU-T4", 1);
    s_peer_t *taker = s_start_runner (two, "local/t4");
    msg = s_expect (taker, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, f));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (f, "attempts", "1"));
    s_result (taker, f, 200, "{}");
    CHECK (s_wait_field (f, "state", "COMPLETED", WAIT_MS));
    s_peer_send_simple (runner, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_exited (s_one, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    s_peer_send_simple (s_one, KILN_MSG_DISCONNECT);
    s_pump (200);
    s_peer_destroy (&s_one);
    runner = taker;
    CHECK (s_wait_view_gone (KILN_KEY_WORKERS, "w-one", 5000));
    s_undeploy ("local/t4");
    freeReplyObject (s_command ("PUBLISH %s %s", KILN_CHANNEL_WAKE, "local/t4"));
    msg = s_expect (two, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (two, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    s_peer_send_simple (two, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_peer_destroy (&two);
}

//  Sends that fail (issue 6): a REQUEST the broker could not send is no
//  run; a worker whose connection is gone is forgotten at once, and
//  registers again as new when it comes back with its id.
static void
s_scenarios_unreachable (void)
{
    char a [KILN_UUID_LEN + 1], b [KILN_UUID_LEN + 1];
    s_step ("a REQUEST that cannot be sent (its runner's connection is gone) is "
            "re-queued uncounted and run by another runner");
    s_peer_t *worker = s_worker_registered ("w-unr", "GPU-U", 2);
    s_deploy ("local/unr", 1, "{\"name\":\"unr\",\"machine_types\":[\"GPU-U\"],"
              "\"min_concurrency\":1,\"max_concurrency\":1,\"keep_alive\":300,"
              "\"endpoints\":[\"/\"]}");
    s_peer_t *gone = s_start_runner (worker, "local/unr");
    CHECK (s_wait_view (KILN_KEY_RUNNERS, gone->id, 5000, "\"state\":\"ready\"", NULL));
    char gone_id [64];
    snprintf (gone_id, sizeof gone_id, "%s", gone->id);
    //  Its process died: the broker's ROUTER drops its connection, and it
    //  is not silent long enough (3 s) to be taken for lost.
    s_peer_heartbeat (gone);
    s_peer_destroy (&gone);
    s_pump (200);
    s_submit ("local/unr", "{\"n\":\"a\"}", a);
    kiln_msg_t *msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, 2000);
    CHECK (msg && streq (msg->runner_id, gone_id));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (a, "attempts", "0"));
    s_exited (worker, gone_id, -15, "killed by signal 15");
    s_peer_t *runner = s_start_runner (worker, "local/unr");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, a));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (a, "attempts", "1"));
    s_result (runner, a, 200, "{\"n\":\"a\"}");
    CHECK (s_wait_field (a, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (a, "status", "200"));
    CHECK (s_field_is (a, "attempts", "1"));

    s_step ("a worker whose connection is gone is forgotten at the first send that "
            "finds it so, with its runners; back with its id, it registers again");
    //  The worker is killed and its runner dies with it.
    s_peer_heartbeat (worker);
    s_peer_heartbeat (runner);
    s_peer_destroy (&worker);
    s_peer_destroy (&runner);
    int64_t killed = kiln_mono_ms ();
    s_pump (200);
    //  b's REQUEST fails, so does the RUNNER_STOP for its runner.
    s_submit ("local/unr", "{\"n\":\"b\"}", b);
    CHECK (s_wait_view_gone (KILN_KEY_WORKERS, "w-unr", 2000));
    //  Long before 3 s of silence would have told.
    CHECK (kiln_mono_ms () - killed < 2900);
    CHECK (s_field_is (b, "state", "IN_QUEUE"));
    CHECK (s_field_is (b, "attempts", "0"));
    worker = s_worker ("w-unr", "GPU-U", 2);
    runner = s_start_runner (worker, "local/unr");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, b));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (b, "attempts", "1"));
    s_result (runner, b, 200, "{\"n\":\"b\"}");
    CHECK (s_wait_field (b, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (b, "status", "200"));
    CHECK (s_wait_view (KILN_KEY_WORKERS, "w-unr", 5000, "\"used\":{\"GPU-U\":1}", NULL));
    s_undeploy ("local/unr");
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    s_peer_send_simple (worker, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_peer_destroy (&worker);

    s_step ("a worker's connection lost while its runner lives on: the worker is "
            "forgotten, the runner keeps its request and its result is recorded once");
    char c [KILN_UUID_LEN + 1];
    worker = s_worker_registered ("w-blip", "GPU-U", 2);
    s_deploy ("local/unr", 1, "{\"name\":\"unr\",\"machine_types\":[\"GPU-U\"],"
              "\"min_concurrency\":1,\"max_concurrency\":1,\"keep_alive\":300,"
              "\"endpoints\":[\"/\"]}");
    runner = s_start_runner (worker, "local/unr");
    CHECK (s_wait_view (KILN_KEY_RUNNERS, runner->id, 5000, "\"state\":\"ready\"", NULL));
    s_submit ("local/unr", "{\"n\":\"c\"}", c);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, c));
    kiln_msg_destroy (&msg);
    //  Only the worker's connection goes; the broker's next heartbeat to
    //  it finds that out.
    s_peer_heartbeat (worker);
    s_peer_destroy (&worker);
    CHECK (s_wait_view_gone (KILN_KEY_WORKERS, "w-blip", 4000));
    s_peer_heartbeat (runner);
    s_result (runner, c, 200, "{\"n\":\"c\"}");
    CHECK (s_wait_field (c, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (c, "status", "200"));
    CHECK (s_field_is (c, "attempts", "1"));
    s_undeploy ("local/unr");
    s_peer_send_simple (runner, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_peer_destroy (&runner);
}

int
main (int argc, char *argv [])
{
    if (argc < 2) {
        fprintf (stderr, "usage: kiln-broker-test PATH/TO/kiln-broker [-v]\n");
        return 2;
    }
    s_verbose = argc > 2 && streq (argv [2], "-v");
    if (access (REDIS_SERVER_BIN, X_OK) != 0) {
        printf ("kiln-broker-test: %s is missing; skipped\n", REDIS_SERVER_BIN);
        return 0;
    }
    snprintf (s_broker_bin, sizeof s_broker_bin, "%s", argv [1]);
    snprintf (s_dir, sizeof s_dir, "/tmp/kiln-broker-test-XXXXXX");
    if (!mkdtemp (s_dir)) {
        perror ("mkdtemp");
        return 1;
    }
    zsys_init ();
    zsys_handler_set (NULL);
    signal (SIGPIPE, SIG_IGN);
    s_redis_port = s_free_port ();
    int broker_port = s_free_port ();
    snprintf (s_redis_url, sizeof s_redis_url, "redis://127.0.0.1:%d", s_redis_port);
    snprintf (s_endpoint, sizeof s_endpoint, "tcp://127.0.0.1:%d", broker_port);
    s_redis_start ();
    s_broker_start ();
    int64_t broker_started = kiln_mono_ms ();
    char id [KILN_UUID_LEN + 1], id2 [KILN_UUID_LEN + 1];

    s_step ("an unknown peer is told DISCONNECT");
    s_peer_t *stranger = s_peer_new ("stranger");
    s_peer_send_simple (stranger, KILN_MSG_HEARTBEAT);
    kiln_msg_t *msg = s_expect (stranger, KILN_MSG_DISCONNECT, NULL, WAIT_MS);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    //  Garbage does not stop it
    zsock_send (stranger->sock, "s", "not a kiln message");
    s_peer_destroy (&stranger);

    s_step ("a request starts a runner, is dispatched, logged and completed");
    s_deploy ("local/echo", 1, ECHO_MANIFEST);
    s_peer_t *worker = s_worker ("w-test", "CPU", 2);
    s_submit ("local/echo", "{\"n\":1}", id);
    s_peer_t *runner = s_start_runner (worker, "local/echo");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg);
    CHECK (streq (msg->request_id, id));
    CHECK (streq (msg->path, "/"));
    CHECK (msg->body_size == 7 && memcmp (msg->body, "{\"n\":1}", 7) == 0);
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (id, "state", "IN_PROGRESS"));
    CHECK (s_field_is (id, "runner", runner->id));

    kiln_msg_t *log = kiln_msg_new (KILN_MSG_LOG);
    log->request_id = strdup (id);
    log->logs = calloc (2, sizeof (kiln_msg_log_t));
    log->log_count = 2;
    log->logs [0].level = strdup ("INFO");
    log->logs [0].message = strdup ("first");
    log->logs [0].source = strdup ("app");
    log->logs [0].timestamp_ms = 1795888800123LL;
    log->logs [1].level = strdup ("WARN");
    log->logs [1].message = strdup ("second \"quoted\"");
    log->logs [1].source = strdup ("app");
    s_peer_send (runner, log);

    kiln_msg_t *result = kiln_msg_new (KILN_MSG_RESULT);
    result->request_id = strdup (id);
    result->status = 201;
    result->content_type = strdup ("application/json");
    result->body = (uint8_t *) strdup ("{\"ok\":1}");
    result->body_size = 8;
    result->inference_ms = 42;
    char file_id [KILN_UUID_LEN + 1];
    kiln_uuid4 (file_id);
    result->files = calloc (1, sizeof (kiln_msg_file_t));
    result->file_count = 1;
    result->files [0].id = strdup (file_id);
    result->files [0].content_type = strdup ("image/png");
    result->files [0].file_name = strdup ("out.png");
    result->files [0].data = (uint8_t *) strdup ("PNG!");
    result->files [0].size = 4;
    zhashx_delete (runner->held, id);
    s_peer_send (runner, result);
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "status", "201"));
    CHECK (s_field_is (id, "result_body", "{\"ok\":1}"));
    CHECK (s_field_is (id, "result_content_type", "application/json"));
    CHECK (s_field_is (id, "inference_ms", "42"));
    kiln_key_t logs_key = kiln_key_logs (id);
    redisReply *reply = s_command ("LRANGE %s 0 -1", logs_key.s);
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2);
    CHECK (streq (reply->element [0]->str,
                  "{\"message\":\"first\",\"level\":\"INFO\",\"source\":\"app\","
                  "\"timestamp\":\"2026-11-28T18:00:00.123Z\"}"));
    CHECK (strstr (reply->element [1]->str, "\"message\":\"second \\\"quoted\\\"\""));
    CHECK (strstr (reply->element [1]->str, "\"timestamp\":\"20"));
    freeReplyObject (reply);
    kiln_key_t file_key = kiln_key_file (file_id);
    reply = s_command ("HGET %s data", file_key.s);
    CHECK (reply->type == REDIS_REPLY_STRING && streq (reply->str, "PNG!"));
    freeReplyObject (reply);
    reply = s_command ("ZCARD %s", KILN_KEY_INFLIGHT);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0);
    freeReplyObject (reply);

    s_step ("a RESULT from a runner that does not hold the request is dropped");
    s_submit ("local/echo", "{\"n\":2}", id);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    s_peer_t *impostor = s_peer_new ("r-impostor");
    s_result (impostor, id, 200, "{\"fake\":true}");
    msg = s_expect (impostor, KILN_MSG_DISCONNECT, NULL, WAIT_MS);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (id, "state", "IN_PROGRESS"));
    s_peer_destroy (&impostor);

    s_step ("a runner that exits mid-request has it re-queued and run again");
    s_exited (worker, runner->id, -11, "killed by signal 11");
    s_peer_destroy (&runner);
    runner = s_start_runner (worker, "local/echo");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (id, "attempts", "2"));
    CHECK (s_field_is (id, "runner", runner->id));
    s_result (runner, id, 200, "{\"second\":\"try\"}");
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "status", "200"));
    //  It leaves, cleanly: the steps below start runners of their own.
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);

    s_step ("no worker offers the machine type: 503 runner_scheduling_failure");
    s_deploy ("local/gpu", 1,
              "{\"name\":\"gpu\",\"machine_types\":[\"GPU-H100\",\"GPU-A100\"],\"endpoints\":[\"/\"]}");
    int64_t wait = 3500 - (kiln_mono_ms () - broker_started);
    if (wait > 0)
        s_pump ((int) wait);
    s_submit ("local/gpu", "{}", id);
    CHECK (s_wait_field (id, "state", "COMPLETED", 2000));
    CHECK (s_field_is (id, "status", "503"));
    CHECK (s_field_is (id, "error_type", "runner_scheduling_failure"));
    CHECK (s_field_is (id, "error",
                       "No worker offers machine type GPU-H100 (of: GPU-H100, GPU-A100)"));
    char *body = s_field (id, "result_body");
    CHECK (strstr (body, "\"error_type\":\"runner_scheduling_failure\""));
    free (body);

    s_step ("three failed starts in a row: 503 runner_server_error, in the app's status");
    s_deploy ("local/bad", 1,
              "{\"name\":\"bad\",\"machine_types\":[\"CPU\"],\"endpoints\":[\"/\"]}");
    s_submit ("local/bad", "{}", id);
    for (int attempt = 0; attempt < 3; attempt++) {
        msg = s_expect (worker, KILN_MSG_RUNNER_START, "local/bad", WAIT_MS);
        CHECK (msg);
        CHECK (s_field_is (id, "state", "IN_QUEUE"));
        s_exited (worker, msg->runner_id, 3, "setup failed: no model file");
        kiln_msg_destroy (&msg);
    }
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "status", "503"));
    CHECK (s_field_is (id, "error_type", "runner_server_error"));
    char *error = s_field (id, "error");
    CHECK (strstr (error, "setup failed: no model file"));
    free (error);
    CHECK (s_app_field_is ("local/bad", "failed_starts", "3"));
    CHECK (s_app_field_is ("local/bad", "last_error", "setup failed: no model file"));
    CHECK (s_app_field_is ("local/bad", "revision", "1"));
    error = s_app_field ("local/bad", "last_error_ms");
    CHECK (atoll (error) > 1700000000000LL);
    free (error);
    CHECK (s_quiet (worker, KILN_MSG_RUNNER_START, "local/bad", 1500));

    s_step ("an idle runner retires after keep_alive; min_concurrency is kept");
    s_deploy ("local/idle", 1,
              "{\"name\":\"idle\",\"machine_types\":[\"CPU\"],\"keep_alive\":1,\"endpoints\":[\"/\"]}");
    s_submit ("local/idle", "{}", id);
    runner = s_start_runner (worker, "local/idle");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg);
    s_result (runner, msg->request_id, 200, "{}");
    kiln_msg_destroy (&msg);
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, 4000);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);

    s_deploy ("local/warm", 1,
              "{\"name\":\"warm\",\"machine_types\":[\"CPU\"],\"keep_alive\":1,"
              "\"min_concurrency\":1,\"endpoints\":[\"/\"]}");
    runner = s_start_runner (worker, "local/warm");
    CHECK (s_quiet (worker, KILN_MSG_RUNNER_STOP, NULL, 2500));
    CHECK (runner->heartbeats_seen > 0);

    s_step ("a deleted app has its runners stopped");
    s_undeploy ("local/warm");
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);

    s_step ("a new revision replaces an idle runner of the old one");
    s_submit ("local/echo", "{\"n\":3}", id);
    runner = s_start_runner (worker, "local/echo");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg);
    s_result (runner, msg->request_id, 200, "{}");
    kiln_msg_destroy (&msg);
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    s_deploy ("local/echo", 2, ECHO_MANIFEST);
    s_submit ("local/echo", "{\"n\":4}", id);
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, WAIT_MS);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_exited (worker, runner->id, 0, NULL);
    s_peer_destroy (&runner);
    msg = s_expect (worker, KILN_MSG_RUNNER_START, "local/echo", WAIT_MS);
    CHECK (msg && msg->revision == 2);
    runner = s_peer_new (msg->runner_id);
    s_runner_hello (runner, worker->id, "local/echo", 2);
    kiln_msg_destroy (&msg);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);

    s_step ("a broker killed and started again takes back its peers and results");
    kill (s_broker_pid, SIGKILL);
    waitpid (s_broker_pid, NULL, 0);
    s_broker_start ();
    //  The runner still works on id; it and the worker hear DISCONNECT
    //  on their next heartbeat and say hello again.
    msg = s_expect (runner, KILN_MSG_DISCONNECT, NULL, WAIT_MS);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    s_runner_hello (runner, worker->id, "local/echo", 2);
    msg = s_expect (worker, KILN_MSG_DISCONNECT, NULL, WAIT_MS);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    kiln_msg_t *hello = kiln_msg_new (KILN_MSG_WORKER_HELLO);
    hello->worker_id = strdup (worker->id);
    hello->host = strdup ("testhost");
    hello->slots = calloc (1, sizeof (kiln_msg_slot_t));
    hello->slots [0].machine_type = strdup ("CPU");
    hello->slots [0].count = 2;
    hello->slot_count = 1;
    s_peer_send (worker, hello);
    s_pump (300);
    //  The adopted request counts: a second one is not sent to the busy runner.
    s_submit ("local/echo", "{\"n\":5}", id2);
    CHECK (s_quiet (runner, KILN_MSG_REQUEST, NULL, 500));
    s_result (runner, id, 200, "{\"after\":\"restart\"}");
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "result_body", "{\"after\":\"restart\"}"));
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id2));
    kiln_msg_destroy (&msg);

    s_step ("a result that arrives while Redis is down is recorded after it is back");
    s_redis_stop ();
    s_pump (300);
    s_result (runner, id2, 200, "{\"during\":\"outage\"}");
    s_pump (1500);
    s_redis_start ();
    CHECK (s_wait_field (id2, "state", "COMPLETED", 20000));
    CHECK (s_field_is (id2, "result_body", "{\"during\":\"outage\"}"));
    //  And it serves on after the reconnect
    s_submit ("local/echo", "{\"n\":6}", id);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, 20000);
    CHECK (msg && streq (msg->request_id, id));
    s_result (runner, msg->request_id, 200, "{}");
    kiln_msg_destroy (&msg);
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));

    s_step ("a cancel of an in-progress request reaches its runner as CANCEL");
    //  The subscription comes back after the Redis restart with a backoff.
    for (int i = 0; i < 400 && s_subscribers (KILN_CHANNEL_CANCEL) < 1; i++)
        s_pump (50);
    CHECK (s_subscribers (KILN_CHANNEL_CANCEL) == 1);
    s_submit ("local/echo", "{\"n\":\"cancel me\"}", id);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    char *answer = s_cancel ("local/echo", id);
    CHECK (streq (answer, "CANCELLATION_REQUESTED"));
    free (answer);
    msg = s_expect (runner, KILN_MSG_CANCEL, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    //  The request ends with the runner's own answer.
    CHECK (s_field_is (id, "state", "IN_PROGRESS"));
    s_result (runner, id, 499, "{\"cancelled\":true}");
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "status", "499"));
    CHECK (s_field_is (id, "cancel_requested", "1"));
    //  Once it is over, a cancel changes nothing and the runner hears nothing.
    answer = s_cancel ("local/echo", id);
    CHECK (streq (answer, "ALREADY_COMPLETED"));
    free (answer);
    CHECK (s_quiet (runner, KILN_MSG_CANCEL, NULL, 300));

    s_step ("a silent runner is taken for dead: stopped, its request run again");
    s_submit ("local/echo", "{\"n\":7}", id);
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    runner->heartbeats = false;
    //  Its worker is asked to stop it: it may still be alive on its slot.
    msg = s_expect (worker, KILN_MSG_RUNNER_STOP, NULL, 6000);
    CHECK (msg && streq (msg->runner_id, runner->id));
    kiln_msg_destroy (&msg);
    s_peer_t *silent = runner;
    runner = s_start_runner (worker, "local/echo");
    msg = s_expect (runner, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (msg && streq (msg->request_id, id));
    kiln_msg_destroy (&msg);
    s_result (runner, id, 200, "{}");
    CHECK (s_wait_field (id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (id, "status", "200"));
    s_exited (worker, silent->id, -9, "killed by signal 9");
    s_peer_destroy (&silent);

    s_step ("a queued request past its start deadline ends 504 with no runner free");
    s_deploy ("local/late", 1,
              "{\"name\":\"late\",\"machine_types\":[\"CPU\"],\"max_concurrency\":1,"
              "\"endpoints\":[\"/\"]}");
    s_submit_within ("local/late", "{}", 1000, id);
    //  Its runner is asked for but never comes up (no hello).
    msg = s_expect (worker, KILN_MSG_RUNNER_START, "local/late", WAIT_MS);
    CHECK (msg);
    char late_runner [64];
    snprintf (late_runner, sizeof late_runner, "%s", msg->runner_id);
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (id, "state", "IN_QUEUE"));
    CHECK (s_wait_field (id, "state", "COMPLETED", 1000 + 2 * 1000 + 1000));
    CHECK (s_field_is (id, "status", "504"));
    CHECK (s_field_is (id, "error_type", "request_timeout"));
    CHECK (s_field_is (id, "attempts", "0"));
    reply = s_command ("EXISTS %s %s", KILN_KEY_DEADLINES, kiln_key_queue ("local/late").s);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0);
    freeReplyObject (reply);
    s_exited (worker, late_runner, 1, "gave up");

    s_scenarios_requeue ();
    s_scenarios_slots ();
    s_scenarios_scale ();
    s_scenarios_leases ();
    s_scenarios_drain ();
    s_scenarios_unreachable ();
    s_scenarios_kill_pending ();
    s_peer_destroy (&runner);

    int status = 0;
    s_step ("SIGTERM drains: a RESULT within the grace is recorded, what still runs "
            "keeps its lease, exit 0; the next broker finishes it, once");
    //  Registered before the deploy: a request for a type no worker
    //  offers fails at once
    s_peer_t *last = s_worker_registered ("w-last", "GPU-L4", 2);
    s_deploy ("local/last", 1, "{\"name\":\"last\",\"machine_types\":[\"GPU-L4\"],"
              "\"max_concurrency\":2,\"keep_alive\":300,\"endpoints\":[\"/\"]}");
    s_submit ("local/last", "{\"n\":1}", id);
    s_submit ("local/last", "{\"n\":2}", id2);
    s_peer_t *quick = s_start_runner (last, "local/last");
    s_peer_t *slow = s_start_runner (last, "local/last");
    kiln_msg_t *quick_request = s_expect (quick, KILN_MSG_REQUEST, NULL, WAIT_MS);
    kiln_msg_t *slow_request = s_expect (slow, KILN_MSG_REQUEST, NULL, WAIT_MS);
    CHECK (quick_request && slow_request);
    s_pump (200);
    zlistx_purge (last->inbox);
    kill (s_broker_pid, SIGTERM);
    s_pump (300);
    s_result (quick, quick_request->request_id, 200, "{\"drained\":1}");
    CHECK (s_wait_field (quick_request->request_id, "state", "COMPLETED", 3000));
    int64_t stopping = kiln_mono_ms ();
    pid_t gone = 0;
    while ((gone = waitpid (s_broker_pid, &status, WNOHANG)) == 0
    &&     kiln_mono_ms () - stopping < 8000)
        s_pump (50);
    CHECK (gone == s_broker_pid);
    s_broker_pid = -1;
    CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    msg = s_expect (last, KILN_MSG_DISCONNECT, NULL, 2000);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    CHECK (s_field_is (slow_request->request_id, "state", "IN_PROGRESS"));
    CHECK (s_lease (slow_request->request_id) > 0);
    s_broker_start ();
    s_runner_hello (quick, last->id, "local/last", 1);
    s_runner_hello (slow, last->id, "local/last", 1);
    s_worker_hello (last, "GPU-L4", 2, false);
    s_worker_hello (worker, "CPU", 2, false);
    s_pump (1500);
    CHECK (s_field_is (slow_request->request_id, "state", "IN_PROGRESS"));
    s_result (slow, slow_request->request_id, 200, "{\"after\":\"drain\"}");
    CHECK (s_wait_field (slow_request->request_id, "state", "COMPLETED", WAIT_MS));
    CHECK (s_field_is (slow_request->request_id, "attempts", "1"));
    CHECK (s_field_is (slow_request->request_id, "result_body", "{\"after\":\"drain\"}"));
    kiln_msg_destroy (&quick_request);
    kiln_msg_destroy (&slow_request);
    s_exited (last, quick->id, 0, NULL);
    s_exited (last, slow->id, 0, NULL);
    s_peer_send_simple (last, KILN_MSG_DISCONNECT);
    s_pump (100);
    s_peer_destroy (&quick);
    s_peer_destroy (&slow);
    s_peer_destroy (&last);

    s_step ("SIGTERM: DISCONNECT to the peers, exit 0");
    s_pump (200);
    zlistx_purge (worker->inbox);
    kill (s_broker_pid, SIGTERM);
    CHECK (waitpid (s_broker_pid, &status, 0) == s_broker_pid);
    s_broker_pid = -1;
    CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    msg = s_expect (worker, KILN_MSG_DISCONNECT, NULL, 2000);
    CHECK (msg);
    kiln_msg_destroy (&msg);
    s_peer_destroy (&worker);

    redisFree (s_redis);
    s_cleanup ();
    printf ("kiln-broker-test: OK\n");
    return 0;
}
