/*  =========================================================================
    broker — kiln's dispatcher and autoscaler (the actor)

    One zloop over three inputs:
      - the ROUTER socket every worker and runner connects a DEALER to,
        with its own id as routing identity;
      - a Redis connection SUBSCRIBEd to kiln:wake, kiln:changed and
        kiln:cancel, polled by its fd;
      - a timer every HEARTBEAT_INTERVAL_MS: heartbeats, liveness,
        startup timeouts, Redis reconnects, expiry of queued requests
        past their start deadline (EXPIRE), and a sweep of every app so
        that a lost wake costs at most one interval.
    A second Redis connection runs the request scripts (kiln_scripts.h).
    After each event (the messages of one wake-up, the wakes read
    together, a tick) the Redis work goes in a few pipelined round trips
    (s_settle): the RESULTs' COMPLETEs and the LOGs, deferred as they
    came; then the records of apps to read again; then, per app marked
    by s_dispatch, one TAKE for every free runner slot and the queue's
    length, which sizes it. Log lines alone wait up to LOG_DEFER_MS for a
    round trip to go with.

    Messages taken (kiln_msg.h):

    | message       | from             | what the broker does                              |
    |---------------|------------------|---------------------------------------------------|
    | WORKER_HELLO  | worker           | registers it (again: replaces its slots); scales. |
    |               |                  | draining: no new runner goes there, and its       |
    |               |                  | runners are DRAINING (the worker stops them)      |
    | RUNNER_HELLO  | runner           | marks it READY (adopts one it does not know, with |
    |               |                  | its in-flight requests from Redis); dispatches    |
    | HEARTBEAT     | worker, runner   | refreshes last_seen (any message does). From a    |
    |               |                  | runner, `requests` lists every request it holds:  |
    |               |                  | their leases are renewed; one we gave it that it  |
    |               |                  | no longer lists (UNLISTED_GRACE_MS after its      |
    |               |                  | dispatch) is lost: re-queued, counted             |
    | RUNNER_EXITED | worker           | forgets the runner, frees its slot; its requests  |
    |               |                  | are re-queued (REQUEUE). Before hello: a failed   |
    |               |                  | start, except status 127 "no free … slot" (the    |
    |               |                  | worker refused: placement is tried again later)   |
    | RESULT        | runner           | COMPLETE; frees its place; dispatches. 503 from a |
    |               |                  | handler: re-queued like a crash. 503 with         |
    |               |                  | runner_draining: handed back unstarted, re-queued |
    |               |                  | without counting an attempt                       |
    | LOG           | runner           | LOG script: one JSON line per entry to the        |
    |               |                  | request, and to the app's stream kiln:logs:{app}  |
    | LOG           | worker           | a runner's own output (runner_id, no request_id): |
    |               |                  | to its app's stream only                          |
    | DISCONNECT    | worker           | forgets it and its runners (requests re-queued)   |
    | DISCONNECT    | runner           | DRAINING: what it still holds never reached a     |
    |               |                  | handler, re-queued uncounted; its slot stays      |
    |               |                  | taken until RUNNER_EXITED                         |
    | any other     | unknown peer     | answered DISCONNECT, so the peer says hello again |

    Messages sent:

    | message       | to               | when                                              |
    |---------------|------------------|---------------------------------------------------|
    | HEARTBEAT     | workers, READY   | every HEARTBEAT_INTERVAL_MS                       |
    |               | runners          |                                                   |
    | RUNNER_START  | worker           | scale() places a runner                           |
    | RUNNER_STOP   | worker           | idle past keep_alive, old revision, startup       |
    |               |                  | timeout, app deleted, slot needed by another app, |
    |               |                  | a READY runner silent or unreachable. With status |
    |               |                  | KILN_RUNNER_STOP_KILL: kill it now (a request     |
    |               |                  | past request_timeout)                             |
    | REQUEST       | runner           | TAKE gave it the head of its app's queue. A send  |
    |               |                  | that fails is no run: the request goes back to    |
    |               |                  | the head uncounted, the runner is lost            |
    | CANCEL        | runner           | kiln:cancel named a request the runner holds      |
    | DISCONNECT    | peer             | an unknown peer spoke; every peer at shutdown     |
    |               |                  | (after the drain, see below)                      |

    Redis in: kiln:wake (an app name) → dispatch (app); kiln:changed (an
    app name) → read its record again, dispatch (app); kiln:cancel (a
    request id, cancelled by its client while it runs) → CANCEL to the
    runner that holds it (a request nobody here holds is left alone).
    Redis out, every tick: kiln:runners and kiln:workers (the view below,
    for operators); on a failed start: failed_starts, last_error and
    last_error_ms on kiln:app:{app}.

    Runner states (kiln:runners shows them in lower case; "busy" is READY
    with a request in flight): STARTING (RUNNER_START sent, no hello) →
    READY (hello) → DRAINING (RUNNER_STOP sent, its worker draining, or it
    said DISCONNECT; it takes no request and keeps its slot) → gone
    (RUNNER_EXITED, its worker gone, or DRAIN_TIMEOUT_MS). A runner lost
    while it holds requests (exit, silence, its worker gone) has them
    re-queued at the head of their queue, up to RETRY_LIMIT runs.

    Leases (Paranoid Pirate). Every request in progress has a lease in
    kiln:inflight (score: when it runs out, wall ms). TAKE sets it to
    LEASE_MS; every tick renews, in one command, the lease of each request
    whose runner's heartbeats still list it. A request whose runner stops
    listing it (a REQUEST or RESULT lost on the wire) is re-queued; so is
    one whose lease ran out while no runner we know holds it (its runner
    died while no broker listened): after a restart, runners say hello
    again within REGISTRATION_GRACE_MS and are given their requests back
    from Redis first. A request running longer than its app's
    request_timeout completes 504 request_timeout and its runner is
    killed (its other requests are re-queued, counted: they ran too).

    Sends that fail. ROUTER_MANDATORY makes a send to a peer whose
    connection is gone fail with EHOSTUNREACH rather than vanish. A
    REQUEST that could not be sent never reached a handler: re-queued at
    the head without counting a run, and its runner is lost (as if
    silent: stopped, its other requests re-queued, counted). A send to a
    worker that finds its connection gone (RUNNER_START, RUNNER_STOP,
    HEARTBEAT) marks it unreachable: nothing more is sent or placed
    there, and once the event at hand is handled it is forgotten
    (s_reap_workers), with the runners only it could end (starting or
    stopping); its READY runners have connections of their own and live
    or die by their own heartbeats, so a blip on the worker's connection
    re-runs nothing. Alive after all, the worker
    hears DISCONNECT and says hello again, as new.

    SIGTERM drains: no more dispatch or scaling; RESULTs of running
    requests are recorded for up to SHUTDOWN_GRACE_MS, or until none is
    in flight; then DISCONNECT to every peer, exit 0. What still runs
    keeps its lease for the next broker (a second signal cuts it short).
    =========================================================================
*/
#include "broker.h"
#include "logline.h"
#include "scale.h"

#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_manifest.h"
#include "kiln_msg.h"
#include "kiln_redis.h"
#include "kiln_scripts.h"
#include "kiln_util.h"

#include <czmq.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEARTBEAT_INTERVAL_MS   1000
#define HEARTBEAT_LIVENESS      3       //  intervals of silence before a peer is dead
//  Workers re-register within a heartbeat or two of a broker restart;
//  until then "no worker offers X" would be a lie.
#define REGISTRATION_GRACE_MS   3000
//  A lease in kiln:inflight lasts this long unless the heartbeats of the
//  runner that holds the request renew it.
#define LEASE_MS                (HEARTBEAT_LIVENESS * HEARTBEAT_INTERVAL_MS)
//  A request its runner's heartbeat does not list, this long after we
//  sent it, is lost (so a REQUEST still on its way is not mistaken).
#define UNLISTED_GRACE_MS       (2 * HEARTBEAT_INTERVAL_MS)
//  SIGTERM: how long RESULTs of running requests may still come in.
//  Under the 5 s `kiln up` gives each process it stops.
#define SHUTDOWN_GRACE_MS       4000
//  A worker that restarts (an upgrade, a crash) leaves for a few seconds;
//  requests for its machine types wait that long before failing with
//  runner_scheduling_failure. Types never offered fail at once.
#define SCHEDULING_GRACE_MS     10000
#define FAILED_STARTS_MAX       3       //  in a row, before queued requests fail
#define START_BACKOFF_MS        1000    //  per failed start in a row, capped
#define START_BACKOFF_MAX_MS    10000
#define DRAIN_TIMEOUT_MS        60000   //  a stopped runner whose exit never came
#define REDIS_TIMEOUT_MS        2000
#define REDIS_BACKOFF_MIN_MS    1000
#define REDIS_BACKOFF_MAX_MS    16000
#define PENDING_MAX             10000   //  completions kept while Redis is away
#define SEND_TIMEOUT_MS         100     //  a stuck peer must not stall the loop
#define LINGER_MS               500     //  for the DISCONNECTs at shutdown
#define ROUTER_BATCH            256     //  messages per wake-up, so timers run
#define DEFAULT_STARTUP_TIMEOUT_S 600
#define SLOTS_MAX               1024    //  per machine type on one worker
#define EXPIRE_BATCH            1000    //  queued requests ended per tick, at most
//  Runs of a request, the first included, before a lost runner (or a
//  handler's 503) ends it with 503 runner_disconnected. fal uses 10 for
//  queue requests; a handler that kills its runner every time should
//  not take down ten runners before its caller hears.
#define RETRY_LIMIT             3
//  A worker refused a start for want of a free slot: our view of it was
//  behind (a runner it still reaps). Placement waits this long.
#define REFUSED_RETRY_MS        1000
//  The operators' view expires when no broker rewrites it.
#define VIEW_TTL_MS             10000
//  The worker's text for a start it refused for want of a slot.
#define REFUSED_NO_SLOT_PREFIX  "no free "
//  The worker's status for a runner it could not start at all
//  (worker/runner.h: KILN_RUNNER_EXIT_NOT_STARTED).
#define NOT_STARTED_STATUS      127
//  Requests one TAKE hands out at most (one per free runner slot).
#define TAKE_BATCH_MAX          64
//  Rounds of s_settle per event: apps marked again while settling (a
//  TAKE that filled TAKE_BATCH_MAX slots, a worker forgotten) go round
//  again, this many times at most; the next event, or tick, does the rest.
#define SETTLE_ROUNDS_MAX       4
//  How long log lines may wait for a round trip to go with (a RESULT
//  often follows its handler's lines at once).
#define LOG_DEFER_MS            5
//  What s_dispatch marks an app for.
#define DISPATCH_TAKE           ((void *) 1)
#define DISPATCH_RELOAD         ((void *) 2)

typedef enum {
    RUNNER_STARTING = 0,        //  RUNNER_START sent, no hello yet
    RUNNER_READY    = 1,        //  hello received, takes requests
    RUNNER_DRAINING = 2,        //  RUNNER_STOP sent, waiting for its exit
} s_runner_state_t;

static const char *s_state_names [] = { "STARTING", "READY", "DRAINING" };

typedef struct {
    char *id;                   //  also its routing identity
    char *host;
    kiln_msg_slot_t *slots;     //  owned copies
    size_t slot_count;
    int64_t last_seen_ms;       //  monotonic
    bool draining;              //  leaving: takes no runner
    bool unreachable;           //  a send found its connection gone: forgotten
                                //  once the event at hand is handled
} s_worker_t;

//  A request a runner holds, as we know it.
typedef struct {
    int64_t sent_ms;            //  monotonic: when it was dispatched (request_timeout)
    int64_t listed_ms;          //  monotonic: when its runner's heartbeat last listed it
} s_held_t;

typedef struct {
    char *id;                   //  also its routing identity
    char *worker_id;
    char *app;
    uint64_t revision;
    char *machine_type;         //  NULL until known (an adopted runner)
    s_runner_state_t state;
    zhashx_t *requests;         //  in-flight request id → s_held_t (owned)
    int max_multiplexing;
    int64_t startup_timeout_ms;
    int64_t started_ms;         //  monotonic, all of these
    int64_t ready_ms;
    int64_t last_request_ms;
    int64_t last_seen_ms;
    int64_t draining_ms;
    int64_t started_wall_ms;    //  wall clock, for the operators' view
    int gpu;                    //  its CUDA device (from its hello), or -1
    bool start_failed;          //  counted as a failed start already
    bool kill_pending;          //  to be killed once its worker registers again
    uint64_t served;
} s_runner_t;

typedef struct {
    char *name;
    uint64_t revision;
    char *artifact;
    char *manifest_json;
    char *scale_json;           //  the scale override as last read, or NULL
    kiln_manifest_t *manifest;  //  the manifest with the override applied
    uint64_t bad_revision;      //  the last refused record, logged once
    char *bad_manifest_json;
    bool bad_logged;
    char *scale_refused;        //  the last refused override, logged once
    int failed_starts;          //  in a row; reset by a hello and by failing the queue
    int fail_streak;            //  in a row; reset only by a hello (start backoff)
    int shown_failed_starts;    //  what kiln:app:{app} says, as last read or written
    int64_t start_after_ms;     //  monotonic: no new runner before this
    int64_t no_worker_logged_ms;
} s_app_t;

//  A Redis command kept as owned argv, so it can wait out a Redis outage
//  or go with the next round trip (s_call_defer).
typedef struct {
    int argc;
    char **argv;
    size_t *argvlen;
    int capacity;
    bool keep;                  //  deferred: kept through an outage
    const char *what;           //  deferred: what it is, for the log
} s_call_t;

struct _kiln_broker_t {
    const kiln_config_t *cfg;
    zsock_t *router;
    zloop_t *loop;
    redisContext *redis;        //  commands
    redisContext *sub;          //  kiln:wake, kiln:changed, kiln:cancel subscription
    zmq_pollitem_t sub_item;
    int64_t redis_retry_ms, redis_backoff_ms;
    int64_t sub_retry_ms, sub_backoff_ms;
    zhashx_t *workers;          //  id → s_worker_t
    zhashx_t *runners;          //  id → s_runner_t
    zhashx_t *apps;             //  name → s_app_t
    zhashx_t *inflight;         //  request id → s_runner_t (not owned)
    zlistx_t *pending;          //  s_call_t, COMPLETEs waiting for Redis
    zlistx_t *deferred;         //  s_call_t, writes for the next round trip
    bool deferred_results;      //  a result among them: it goes at once
    int deferred_timer;         //  flushes log lines that wait alone, or -1
    zhashx_t *dirty;            //  app name → DISPATCH_*, settled after the event
    zhashx_t *offered;          //  machine type → int64_t *, when last offered (mono ms)
    int64_t started_ms;
    bool stopping;              //  SIGTERM: draining, no dispatch
};

static void s_dispatch (kiln_broker_t *self, const char *name, bool reload);
static void s_settle (kiln_broker_t *self);
static void s_runner_forget (kiln_broker_t *self, s_runner_t *runner, const char *why);
static void s_runner_lost (kiln_broker_t *self, s_runner_t *runner, const char *why);
static void s_reap_workers (kiln_broker_t *self);

//  -------------------------------------------------------------------------
//  Small owned things

static void
s_worker_destroy (s_worker_t **self_p)
{
    s_worker_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->slot_count; i++)
        free (self->slots [i].machine_type);
    free (self->slots);
    free (self->host);
    free (self->id);
    free (self);
    *self_p = NULL;
}

static void
s_worker_free (void **item)
{
    s_worker_destroy ((s_worker_t **) item);
}

static void
s_held_free (void **item)
{
    free (*item);
    *item = NULL;
}

//  Records that the runner holds the request, sent at sent_ms (monotonic).
//  -1 when out of memory (nothing recorded).
static int
s_hold (kiln_broker_t *self, s_runner_t *runner, const char *request_id, int64_t sent_ms)
{
    s_held_t *held = calloc (1, sizeof *held);
    if (!held)
        return -1;
    held->sent_ms = sent_ms;
    held->listed_ms = kiln_mono_ms ();
    zhashx_update (runner->requests, request_id, held);
    zhashx_update (self->inflight, request_id, runner);
    return 0;
}

//  Forgets that the runner holds the request.
static void
s_unhold (kiln_broker_t *self, s_runner_t *runner, const char *request_id)
{
    if (runner)
        zhashx_delete (runner->requests, request_id);
    zhashx_delete (self->inflight, request_id);
}

static s_runner_t *
s_runner_new (const char *id, const char *worker_id, const char *app, uint64_t revision)
{
    s_runner_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->id = strdup (id);
    self->worker_id = strdup (worker_id);
    self->app = strdup (app);
    self->requests = zhashx_new ();
    if (!self->id || !self->worker_id || !self->app || !self->requests) {
        zhashx_destroy (&self->requests);
        free (self->id);
        free (self->worker_id);
        free (self->app);
        free (self);
        return NULL;
    }
    zhashx_set_destructor (self->requests, s_held_free);
    self->revision = revision;
    self->max_multiplexing = 1;
    self->startup_timeout_ms = DEFAULT_STARTUP_TIMEOUT_S * 1000LL;
    int64_t now = kiln_mono_ms ();
    self->started_ms = self->ready_ms = self->last_request_ms = self->last_seen_ms = now;
    self->started_wall_ms = kiln_now_ms ();
    self->gpu = -1;
    return self;
}

static void
s_runner_destroy (s_runner_t **self_p)
{
    s_runner_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy (&self->requests);
    free (self->id);
    free (self->worker_id);
    free (self->app);
    free (self->machine_type);
    free (self);
    *self_p = NULL;
}

static void
s_runner_free (void **item)
{
    s_runner_destroy ((s_runner_t **) item);
}

static void
s_app_destroy (s_app_t **self_p)
{
    s_app_t *self = *self_p;
    if (!self)
        return;
    kiln_manifest_destroy (&self->manifest);
    free (self->name);
    free (self->artifact);
    free (self->manifest_json);
    free (self->scale_json);
    free (self->bad_manifest_json);
    free (self->scale_refused);
    free (self);
    *self_p = NULL;
}

static void
s_app_free (void **item)
{
    s_app_destroy ((s_app_t **) item);
}

static s_call_t *
s_call_new (int capacity)
{
    s_call_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->argv = calloc ((size_t) capacity, sizeof (char *));
    self->argvlen = calloc ((size_t) capacity, sizeof (size_t));
    self->capacity = capacity;
    if (!self->argv || !self->argvlen) {
        free (self->argv);
        free (self->argvlen);
        free (self);
        return NULL;
    }
    return self;
}

static void
s_call_destroy (s_call_t **self_p)
{
    s_call_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->argc; i++)
        free (self->argv [i]);
    free (self->argv);
    free (self->argvlen);
    free (self);
    *self_p = NULL;
}

static void
s_call_free (void **item)
{
    s_call_destroy ((s_call_t **) item);
}

//  Appends a copy of the bytes. -1 when full or out of memory; the call
//  is then unusable and the caller drops it.
static int
s_call_add (s_call_t *self, const void *data, size_t size)
{
    if (self->argc >= self->capacity)
        return -1;
    char *copy = malloc (size + 1);
    if (!copy)
        return -1;
    if (size)
        memcpy (copy, data, size);
    copy [size] = 0;
    self->argv [self->argc] = copy;
    self->argvlen [self->argc] = size;
    self->argc++;
    return 0;
}

static int
s_call_add_str (s_call_t *self, const char *text)
{
    return s_call_add (self, text? text: "", text? strlen (text): 0);
}

static int
s_call_add_int (s_call_t *self, int64_t value)
{
    char text [32];
    snprintf (text, sizeof text, "%" PRId64, value);
    return s_call_add_str (self, text);
}

//  A command on one key, then an argument or none (arg NULL). NULL when
//  out of memory.
static s_call_t *
s_call_key (const char *command, const char *key, const char *arg)
{
    s_call_t *call = s_call_new (3);
    if (call && (s_call_add_str (call, command) || s_call_add_str (call, key)
              || (arg && s_call_add_str (call, arg))))
        s_call_destroy (&call);
    return call;
}

//  -------------------------------------------------------------------------
//  Redis: commands, loss and reconnection

static void
s_redis_lost (kiln_broker_t *self, const char *during)
{
    kiln_log_error ("redis: connection lost during %s (%s); reconnecting",
                    during, self->redis->errstr [0]? self->redis->errstr: "no reply");
    redisFree (self->redis);
    self->redis = NULL;
    self->redis_retry_ms = kiln_mono_ms () + self->redis_backoff_ms;
}

//  A deferred write that Redis did not answer: kept for the replay after
//  the reconnect when it asked to be (a result), else dropped (a log line).
static void
s_deferred_unanswered (kiln_broker_t *self, s_call_t **call_p)
{
    s_call_t *call = *call_p;
    *call_p = NULL;
    if (call->keep && zlistx_size (self->pending) < PENDING_MAX) {
        kiln_log_warn ("redis: %s kept until Redis is back", call->what);
        zlistx_add_end (self->pending, call);
    }
    else {
        kiln_log_error ("redis: %s dropped: no connection", call->what);
        s_call_destroy (&call);
    }
}

//  One round trip: the deferred writes (s_call_defer), then the caller's
//  calls (none, to flush), all appended and sent at once, then every
//  reply read in order. replies [i] gets the reply to calls [i] (caller
//  frees it; it may be an error reply), NULL when Redis did not answer.
//  A script Redis does not know (NOSCRIPT: it restarted, or SCRIPT FLUSH)
//  did not run: it runs again on its own, after the others, loading it.
//  Takes ownership of nothing: the caller destroys its calls.
static void
s_pipeline (kiln_broker_t *self, s_call_t **calls, size_t count, redisReply **replies)
{
    for (size_t i = 0; i < count; i++)
        replies [i] = NULL;
    size_t writes = zlistx_size (self->deferred);
    size_t total = writes + count;
    if (total == 0)
        return;
    s_call_t **all = calloc (total, sizeof *all);
    redisReply **answers = calloc (total, sizeof *answers);
    if (!all || !answers) {
        //  Out of memory: nothing is sent; deferred writes stay deferred
        free (all);
        free (answers);
        return;
    }
    for (size_t i = 0; i < writes; i++)
        all [i] = (s_call_t *) zlistx_detach (self->deferred, NULL);
    self->deferred_results = false;
    for (size_t i = 0; i < count; i++)
        all [writes + i] = calls [i];

    size_t appended = 0;
    while (self->redis && appended < total
       &&  kiln_redis_append_argv (self->redis, all [appended]->argc,
                                   (const char **) all [appended]->argv,
                                   all [appended]->argvlen) == REDIS_OK)
        appended++;
    if (self->redis && appended < total)
        s_redis_lost (self, "a pipelined command");
    for (size_t i = 0; self->redis && i < appended; i++)
        if (redisGetReply (self->redis, (void **) &answers [i]) != REDIS_OK || !answers [i])
            s_redis_lost (self, all [i]->what? all [i]->what: "a pipelined command");
    for (size_t i = 0; i < total; i++) {
        s_call_t *call = all [i];
        if (kiln_redis_noscript (answers [i])) {
            freeReplyObject (answers [i]);
            answers [i] = self->redis?
                kiln_redis_command_argv (self->redis, call->argc, (const char **) call->argv,
                                         call->argvlen): NULL;
            if (!answers [i] && self->redis)
                s_redis_lost (self, call->what? call->what: "a script");
        }
        if (i >= writes) {
            replies [i - writes] = answers [i];
            continue;
        }
        if (!answers [i])
            s_deferred_unanswered (self, &call);
        else {
            if (answers [i]->type == REDIS_REPLY_ERROR)
                kiln_log_error ("redis: %s failed: %s", call->what, answers [i]->str);
            freeReplyObject (answers [i]);
            s_call_destroy (&call);
        }
    }
    free (all);
    free (answers);
}

//  Sends the deferred writes now: before any command whose answer we
//  wait for, so that Redis sees every write in the order we made it.
static void
s_flush (kiln_broker_t *self)
{
    if (zlistx_size (self->deferred) > 0)
        s_pipeline (self, NULL, 0, NULL);
}

//  Defers a write whose answer nobody waits for (a RESULT's COMPLETE, a
//  LOG): it goes with the next round trip, at the latest when the event
//  at hand is handled (s_settle). keep: kept through a Redis outage and
//  replayed, as a result must be; else dropped, as a log line may be.
//  Takes ownership of the call.
static void
s_call_defer (kiln_broker_t *self, s_call_t **call_p, bool keep, const char *what)
{
    s_call_t *call = *call_p;
    *call_p = NULL;
    if (!call)
        return;
    call->keep = keep;
    call->what = what;
    if (!self->redis)
        s_deferred_unanswered (self, &call);
    else
    if (zlistx_add_end (self->deferred, call) == NULL) {
        kiln_log_error ("redis: %s dropped: out of memory", what);
        s_call_destroy (&call);
    }
    else
    if (keep)
        self->deferred_results = true;
}

//  A command on the command connection. NULL when there is no connection
//  or it was lost now (logged). Caller frees the reply, which may be an
//  error reply.
static redisReply *
s_command (kiln_broker_t *self, const char *format, ...)
{
    s_flush (self);
    if (!self->redis)
        return NULL;
    va_list args;
    va_start (args, format);
    //  Scripts go as EVALSHA (kiln_redis.h)
    redisReply *reply = kiln_redis_vcommand (self->redis, format, args);
    va_end (args);
    if (!reply)
        s_redis_lost (self, format);
    return reply;
}

//  Runs a call. An error reply is logged. When Redis is away and `keep`
//  is set, the call is kept and replayed after the reconnect, so that a
//  result is not lost to an outage; otherwise it is dropped. Takes
//  ownership of the call. Returns the reply's integer, or -1; *answered
//  (if given) says whether Redis answered at all.
static long long
s_call_run_answered (kiln_broker_t *self, s_call_t **call_p, bool keep, const char *what,
                     bool *answered)
{
    s_call_t *call = *call_p;
    *call_p = NULL;
    if (answered)
        *answered = false;
    if (!call)
        return -1;
    s_flush (self);
    long long result = -1;
    redisReply *reply = NULL;
    if (self->redis) {
        reply = kiln_redis_command_argv (self->redis, call->argc,
                                         (const char **) call->argv, call->argvlen);
        if (!reply)
            s_redis_lost (self, what);
    }
    if (reply) {
        if (reply->type == REDIS_REPLY_ERROR)
            kiln_log_error ("redis: %s failed: %s", what, reply->str);
        else
        if (reply->type == REDIS_REPLY_INTEGER) {
            result = reply->integer;
            if (answered)
                *answered = true;
        }
        freeReplyObject (reply);
        s_call_destroy (&call);
    }
    else
    if (keep && zlistx_size (self->pending) < PENDING_MAX) {
        kiln_log_warn ("redis: %s kept until Redis is back", what);
        zlistx_add_end (self->pending, call);
    }
    else {
        kiln_log_error ("redis: %s dropped: no connection", what);
        s_call_destroy (&call);
    }
    return result;
}

static long long
s_call_run (kiln_broker_t *self, s_call_t **call_p, bool keep, const char *what)
{
    return s_call_run_answered (self, call_p, keep, what, NULL);
}

//  Replays kept calls in order; stops at the first connection loss.
static void
s_pending_flush (kiln_broker_t *self)
{
    while (self->redis && zlistx_size (self->pending) > 0) {
        s_call_t *call = (s_call_t *) zlistx_first (self->pending);
        redisReply *reply = kiln_redis_command_argv (self->redis, call->argc,
                                                     (const char **) call->argv, call->argvlen);
        if (!reply) {
            s_redis_lost (self, "replay");
            return;
        }
        if (reply->type == REDIS_REPLY_ERROR)
            kiln_log_error ("redis: replay failed: %s", reply->str);
        freeReplyObject (reply);
        call = (s_call_t *) zlistx_detach (self->pending, NULL);
        s_call_destroy (&call);
    }
}

//  Loads the scripts that go in pipelines (Redis may have restarted
//  without them), so that their EVALSHA runs where it stands: a NOSCRIPT
//  answer in a pipeline runs again after the rest (s_pipeline), and a
//  TAKE run after its ZCARD would make the queue look longer than it is.
static void
s_scripts_load (kiln_broker_t *self)
{
    const char *scripts [] = { KILN_SCRIPT_TAKE, KILN_SCRIPT_COMPLETE, KILN_SCRIPT_LOG,
                               KILN_SCRIPT_APP_LOG, KILN_SCRIPT_REQUEUE };
    for (size_t i = 0; self->redis && i < sizeof scripts / sizeof scripts [0]; i++) {
        redisReply *reply = redisCommand (self->redis, "SCRIPT LOAD %s", scripts [i]);
        if (!reply)
            s_redis_lost (self, "SCRIPT LOAD");
        else {
            if (reply->type == REDIS_REPLY_ERROR)
                kiln_log_error ("redis: SCRIPT LOAD failed: %s", reply->str);
            freeReplyObject (reply);
        }
    }
}

static int64_t
s_backoff_next (int64_t backoff_ms)
{
    backoff_ms *= 2;
    return backoff_ms > REDIS_BACKOFF_MAX_MS? REDIS_BACKOFF_MAX_MS: backoff_ms;
}

static void
s_redis_reconnect (kiln_broker_t *self)
{
    if (self->redis || kiln_mono_ms () < self->redis_retry_ms)
        return;
    self->redis = kiln_redis_connect (self->cfg->redis_url, REDIS_TIMEOUT_MS);
    if (self->redis) {
        kiln_log_info ("redis: connected to %s", self->cfg->redis_url);
        s_scripts_load (self);
        self->redis_backoff_ms = REDIS_BACKOFF_MIN_MS;
        s_pending_flush (self);
    }
    else {
        self->redis_retry_ms = kiln_mono_ms () + self->redis_backoff_ms;
        self->redis_backoff_ms = s_backoff_next (self->redis_backoff_ms);
    }
}

static void
s_sub_lost (kiln_broker_t *self, const char *why)
{
    kiln_log_error ("redis: subscription lost (%s); reconnecting", why);
    zloop_poller_end (self->loop, &self->sub_item);
    redisFree (self->sub);
    self->sub = NULL;
    self->sub_retry_ms = kiln_mono_ms () + self->sub_backoff_ms;
}

static void s_on_cancel (kiln_broker_t *self, const char *request_id);

//  One message from the subscription: ["message", channel, payload].
static void
s_sub_handle (kiln_broker_t *self, redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
    ||  reply->element [0]->type != REDIS_REPLY_STRING
    ||  reply->element [1]->type != REDIS_REPLY_STRING
    ||  reply->element [2]->type != REDIS_REPLY_STRING
    ||  strcmp (reply->element [0]->str, "message") != 0)
        return;                 //  a subscribe confirmation, or noise
    if (streq (reply->element [1]->str, KILN_CHANNEL_CANCEL)) {
        s_on_cancel (self, reply->element [2]->str);
        return;
    }
    const char *app = reply->element [2]->str;
    if (!kiln_app_name_valid (app)) {
        kiln_log_warn ("wake for an invalid app name, ignored");
        return;
    }
    //  A queued request needs a take; a changed record, a fresh read.
    bool changed = streq (reply->element [1]->str, KILN_CHANNEL_CHANGED);
    kiln_log_debug ("%s for %s", changed? "change": "wake", app);
    s_dispatch (self, app, changed);
}

//  Handles every whole reply already read; false when the connection
//  broke (and was dropped).
static bool
s_sub_drain (kiln_broker_t *self)
{
    while (self->sub) {
        void *reply = NULL;
        if (redisGetReplyFromReader (self->sub, &reply) != REDIS_OK) {
            s_sub_lost (self, self->sub->errstr);
            return false;
        }
        if (!reply)
            break;
        s_sub_handle (self, (redisReply *) reply);
        freeReplyObject (reply);
    }
    return self->sub != NULL;
}

static int
s_on_sub (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    (void) item;
    kiln_broker_t *self = (kiln_broker_t *) arg;
    if (!self->sub)
        return 0;
    if (redisBufferRead (self->sub) != REDIS_OK) {
        s_sub_lost (self, self->sub->errstr [0]? self->sub->errstr: "closed");
        return 0;
    }
    s_sub_drain (self);
    s_reap_workers (self);
    s_settle (self);
    return 0;
}

static void
s_sub_reconnect (kiln_broker_t *self)
{
    if (self->sub || kiln_mono_ms () < self->sub_retry_ms)
        return;
    self->sub = kiln_redis_connect (self->cfg->redis_url, REDIS_TIMEOUT_MS);
    if (self->sub) {
        //  The first confirmation is read synchronously; the second, and
        //  later messages, by poll.
        redisReply *reply = redisCommand (self->sub, "SUBSCRIBE %s %s %s", KILN_CHANNEL_WAKE,
                                          KILN_CHANNEL_CHANGED, KILN_CHANNEL_CANCEL);
        bool ok = reply && reply->type == REDIS_REPLY_ARRAY;
        if (reply)
            freeReplyObject (reply);
        if (!ok) {
            kiln_log_error ("redis: SUBSCRIBE %s %s %s failed", KILN_CHANNEL_WAKE,
                            KILN_CHANNEL_CHANGED, KILN_CHANNEL_CANCEL);
            redisFree (self->sub);
            self->sub = NULL;
        }
    }
    if (!self->sub) {
        self->sub_retry_ms = kiln_mono_ms () + self->sub_backoff_ms;
        self->sub_backoff_ms = s_backoff_next (self->sub_backoff_ms);
        return;
    }
    self->sub_backoff_ms = REDIS_BACKOFF_MIN_MS;
    self->sub_item = (zmq_pollitem_t) { NULL, self->sub->fd, ZMQ_POLLIN, 0 };
    if (zloop_poller (self->loop, &self->sub_item, s_on_sub, self) != 0) {
        kiln_log_error ("cannot poll the Redis subscription");
        redisFree (self->sub);
        self->sub = NULL;
        return;
    }
    //  An error on the fd is ours to handle (by reading), not zloop's.
    zloop_poller_set_tolerant (self->loop, &self->sub_item);
    kiln_log_info ("redis: subscribed to %s, %s and %s", KILN_CHANNEL_WAKE,
                   KILN_CHANNEL_CHANGED, KILN_CHANNEL_CANCEL);
    //  Wakes that came with the confirmation are in the buffer already,
    //  where poll cannot see them.
    s_sub_drain (self);
}

//  -------------------------------------------------------------------------
//  Request scripts

//  {"detail": ..., "error_type": ...}, the body of an error result, so
//  that a replayed result reads like the gateway's own errors.
static char *
s_error_body (const char *detail, const char *error_type)
{
    json_t *body = json_pack ("{s:s, s:s}", "detail", detail, "error_type", error_type);
    if (!body)
        return NULL;
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    return text;
}

//  The COMPLETE of a request: the runner's result, or an error of ours
//  (result NULL). holder: the runner that must still hold it, or NULL.
//  NULL when out of memory (logged).
static s_call_t *
s_complete_call (kiln_broker_t *self, const char *request_id, const char *app,
                 const kiln_msg_t *result, int status, const char *error,
                 const char *error_type, const char *holder)
{
    size_t file_count = result? result->file_count: 0;
    s_call_t *call = s_call_new (18 + 4 * (int) file_count);
    if (!call) {
        kiln_log_error ("request %s: out of memory completing it", request_id);
        return NULL;
    }
    kiln_key_t req = kiln_key_request (request_id);
    kiln_key_t logs = kiln_key_logs (request_id);
    kiln_key_t queue = kiln_key_queue (app);
    char *error_body = NULL;
    const char *content_type = result && result->content_type? result->content_type: "";
    const void *body = result? result->body: NULL;
    size_t body_size = result? result->body_size: 0;
    if (!result) {
        error_body = s_error_body (error, error_type);
        content_type = "application/json";
        body = error_body;
        body_size = error_body? strlen (error_body): 0;
    }
    //  Files with ids that would not make a valid key are dropped.
    size_t valid_files = 0;
    for (size_t i = 0; i < file_count; i++)
        if (result->files [i].id && kiln_id_valid (result->files [i].id))
            valid_files++;

    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_COMPLETE)
           | s_call_add_str (call, "4")
           | s_call_add_str (call, req.s)
           | s_call_add_str (call, logs.s)
           | s_call_add_str (call, queue.s)
           | s_call_add_str (call, KILN_KEY_INFLIGHT)
           | s_call_add_str (call, request_id)
           | s_call_add_int (call, status)
           | s_call_add_str (call, content_type)
           | s_call_add (call, body? body: "", body_size)
           | s_call_add_str (call, error)
           | s_call_add_str (call, error_type)
           | s_call_add_int (call, kiln_now_ms ())
           | s_call_add_int (call, self->cfg->result_retention_s)
           | s_call_add_int (call, result? (int64_t) result->inference_ms: 0)
           | s_call_add_int (call, (int64_t) valid_files);
    for (size_t i = 0; i < file_count; i++) {
        const kiln_msg_file_t *file = &result->files [i];
        if (!file->id || !kiln_id_valid (file->id)) {
            kiln_log_warn ("request %s: file with an invalid id dropped", request_id);
            continue;
        }
        rc |= s_call_add_str (call, file->id)
            | s_call_add_str (call, file->content_type? file->content_type: "application/octet-stream")
            | s_call_add_str (call, file->file_name)
            | s_call_add (call, file->data? (const void *) file->data: "", file->size);
    }
    if (holder)
        rc |= s_call_add_str (call, holder);
    free (error_body);
    if (rc != 0) {
        kiln_log_error ("request %s: out of memory completing it", request_id);
        s_call_destroy (&call);
    }
    return call;
}

//  Runs COMPLETE now. 1 recorded, 0 already complete or unknown, -1
//  failed (or kept for replay).
static long long
s_complete (kiln_broker_t *self, const char *request_id, const char *app,
            const kiln_msg_t *result, int status, const char *error, const char *error_type)
{
    s_call_t *call = s_complete_call (self, request_id, app, result, status,
                                      error, error_type, NULL);
    return call? s_call_run (self, &call, true, "COMPLETE"): -1;
}

//  Completes a request with an error of ours (no result from a runner).
static void
s_fail_request (kiln_broker_t *self, const char *request_id, const char *app,
                int status, const char *error, const char *error_type)
{
    long long recorded = s_complete (self, request_id, app, NULL, status, error, error_type);
    if (recorded == 1)
        kiln_log_info ("request %s (%s): %d %s: %s",
                       request_id, app, status, error_type, error);
}

//  Completes every request queued for the app with the same error.
static void
s_fail_queue (kiln_broker_t *self, const char *app, int status,
              const char *error, const char *error_type)
{
    kiln_key_t queue = kiln_key_queue (app);
    redisReply *reply = s_command (self, "ZRANGE %s 0 -1", queue.s);
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        kiln_log_warn ("%s: failing %zu queued request(s): %s",
                       app, reply->elements, error);
        for (size_t i = 0; i < reply->elements; i++) {
            redisReply *id = reply->element [i];
            if (id->type == REDIS_REPLY_STRING && kiln_id_valid (id->str))
                s_fail_request (self, id->str, app, status, error, error_type);
        }
    }
    freeReplyObject (reply);
}

//  What REQUEUE answers (kiln_scripts.h), and our own "no answer".
#define REQUEUE_REQUEUED     1
#define REQUEUE_COMPLETED    0
#define REQUEUE_NOT_RUNNING  -1
#define REQUEUE_OUT_OF_TRIES -2
#define REQUEUE_NO_ANSWER    -3

//  Puts a request whose runner lost it back at the head of its queue
//  (counted: it ran, or may have), or one a runner handed back before a
//  handler started it (not counted). keep_result: out of retries, leave
//  it to the caller, who records the runner's own answer; such a call is
//  not kept through an outage either, since the caller completes it.
static s_call_t *
s_requeue_call (const char *request_id, bool counted, bool keep_result, int retention_s)
{
    s_call_t *call = s_call_new (10);
    if (!call)
        return NULL;
    kiln_key_t req = kiln_key_request (request_id);
    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_REQUEUE)
           | s_call_add_str (call, "1")
           | s_call_add_str (call, req.s)
           | s_call_add_str (call, request_id)
           | s_call_add_int (call, kiln_now_ms ())
           | s_call_add_int (call, RETRY_LIMIT)
           | s_call_add_str (call, counted? "1": "0")
           | s_call_add_int (call, retention_s)
           | s_call_add_str (call, keep_result? "keep": "fail");
    if (rc != 0)
        s_call_destroy (&call);
    return call;
}

//  Logs what REQUEUE did with the request.
static void
s_requeue_log (const char *request_id, const char *app, bool counted, const char *why,
               long long result)
{
    if (result == REQUEUE_REQUEUED)
        kiln_log_info ("request %s (%s) back at the head of its queue%s (%s)",
                       request_id, app, counted? "": ", attempt not counted", why);
    else
    if (result == REQUEUE_COMPLETED)
        kiln_log_info ("request %s (%s) not retried (%s): out of tries, "
                       "X-Fal-No-Retry, or cancelled", request_id, app, why);
}

//  Runs REQUEUE now and logs what it did: REQUEUE_* above.
static long long
s_requeue (kiln_broker_t *self, const char *request_id, const char *app,
           bool counted, bool keep_result, const char *why)
{
    s_call_t *call = s_requeue_call (request_id, counted, keep_result,
                                     self->cfg->result_retention_s);
    if (!call)
        return REQUEUE_NO_ANSWER;
    bool answered = false;
    long long result = s_call_run_answered (self, &call, !keep_result, "REQUEUE", &answered);
    if (!answered)
        return REQUEUE_NO_ANSWER;
    s_requeue_log (request_id, app, counted, why, result);
    return result;
}

//  -------------------------------------------------------------------------
//  Sending

//  0, or -1 with errno saying why (EHOSTUNREACH: the peer's connection
//  is gone; EAGAIN: its pipe stayed full for SEND_TIMEOUT_MS).
static int
s_send (kiln_broker_t *self, kiln_msg_t **msg_p, const char *identity)
{
    kiln_msg_type_t type = *msg_p? (*msg_p)->type: 0;
    int rc = kiln_msg_send (msg_p, self->router, identity);
    if (rc != 0) {
        int error = zmq_errno ();
        kiln_log_warn ("cannot send %s to %s: %s",
                       kiln_msg_type_name (type), identity, zmq_strerror (error));
        errno = error;
    }
    return rc;
}

//  Sends to a worker. A worker whose connection is gone (EHOSTUNREACH:
//  ROUTER_MANDATORY found no pipe for it) is dead or cut off: it is
//  marked unreachable, takes no more sends, and s_reap_workers forgets
//  it (its runners keep their own liveness) once the event at hand is handled (not here: the
//  caller may be walking the tables). Should it be alive after all, its
//  next message is a stranger's, answered DISCONNECT, and it says hello
//  again. 0, or -1 when nothing was sent.
static int
s_send_worker (kiln_broker_t *self, kiln_msg_t **msg_p, const char *worker_id)
{
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, worker_id);
    if (worker && worker->unreachable) {
        kiln_msg_destroy (msg_p);
        return -1;
    }
    int rc = s_send (self, msg_p, worker_id);
    if (rc != 0 && errno == EHOSTUNREACH && worker) {
        kiln_log_warn ("worker %s: its connection is gone; forgetting it", worker_id);
        worker->unreachable = true;
    }
    return rc;
}

static void
s_send_simple (kiln_broker_t *self, kiln_msg_type_t type, const char *identity)
{
    kiln_msg_t *msg = kiln_msg_new (type);
    if (msg)
        s_send (self, &msg, identity);
}

//  Tells the runner that holds the request that its client cancelled it.
//  The runner decides what that means (its handler may stop early); the
//  request still ends with the runner's RESULT.
static void
s_send_cancel (kiln_broker_t *self, const s_runner_t *runner, const char *request_id)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_CANCEL);
    if (msg && !(msg->request_id = strdup (request_id)))
        kiln_msg_destroy (&msg);
    if (!msg)
        return;
    kiln_log_info ("request %s: cancelled by its client; telling runner %s",
                   request_id, runner->id);
    s_send (self, &msg, runner->id);
}

//  A request id from kiln:cancel.
static void
s_on_cancel (kiln_broker_t *self, const char *request_id)
{
    if (!kiln_id_valid (request_id)) {
        kiln_log_warn ("cancel for an invalid request id, ignored");
        return;
    }
    s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->inflight, request_id);
    if (runner)
        s_send_cancel (self, runner, request_id);
    else
        kiln_log_debug ("cancel for %s, which no runner of ours holds", request_id);
}

//  Ends queued requests whose start deadline passed, so that they end
//  on time even when no runner of their app ever frees up (TAKE catches
//  the ones it meets first).
static void
s_expire_deadlines (kiln_broker_t *self)
{
    if (!self->redis)
        return;
    redisReply *reply = s_command (self, "EVAL %s 1 %s %" PRId64 " %d %d",
                                   KILN_SCRIPT_EXPIRE, KILN_KEY_DEADLINES, kiln_now_ms (),
                                   self->cfg->result_retention_s, EXPIRE_BATCH);
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        kiln_log_info ("%lld queued request(s) did not start within their timeout: 504",
                       reply->integer);
    else
    if (reply->type == REDIS_REPLY_ERROR)
        kiln_log_error ("redis: EXPIRE failed: %s", reply->str);
    freeReplyObject (reply);
}

//  -------------------------------------------------------------------------
//  Apps

static int
s_parse_u64 (const char *text, uint64_t *value)
{
    char *end = NULL;
    unsigned long long parsed = strtoull (text, &end, 10);
    if (!*text || *end)
        return -1;
    *value = parsed;
    return 0;
}

//  Stops every runner of the app that is not stopping yet.
static bool s_runner_stop (kiln_broker_t *self, s_runner_t *runner, const char *why);

static void
s_app_stop_runners (kiln_broker_t *self, const char *name, const char *why)
{
    zlistx_t *ids = zhashx_keys (self->runners);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, id);
        if (runner && runner->state != RUNNER_DRAINING && streq (runner->app, name))
            s_runner_stop (self, runner, why);
    }
    zlistx_destroy (&ids);
}

static void s_app_status_write (kiln_broker_t *self, s_app_t *app, const char *last_error);

static bool
s_same (const char *a, const char *b)
{
    return (!a && !b) || (a && b && streq (a, b));
}

//  Applies the app record's live scale override over the manifest's
//  bounds. An override that makes no sense is ignored (logged once).
static void
s_app_apply_scale (s_app_t *app, kiln_manifest_t *manifest, const char *scale)
{
    if (!scale)
        return;
    kiln_scale_bounds_t bounds = {
        manifest->min_concurrency, manifest->max_concurrency,
        manifest->concurrency_buffer, manifest->keep_alive
    };
    char *why = NULL;
    if (kiln_scale_override (scale, &bounds, &why) == 0) {
        manifest->min_concurrency = bounds.min_concurrency;
        manifest->max_concurrency = bounds.max_concurrency;
        manifest->concurrency_buffer = bounds.concurrency_buffer;
        manifest->keep_alive = bounds.keep_alive;
        if (!s_same (app->scale_json, scale))
            kiln_log_info ("%s: scale override: min %d, max %d, buffer %d, keep_alive %d s",
                           app->name, bounds.min_concurrency, bounds.max_concurrency,
                           bounds.concurrency_buffer, bounds.keep_alive);
        zstr_free (&app->scale_refused);
    }
    else
    if (!s_same (app->scale_refused, scale)) {
        kiln_log_warn ("%s: scale override %.200s ignored: %s", app->name, scale,
                       why? why: "invalid");
        free (app->scale_refused);
        app->scale_refused = strdup (scale);
    }
    free (why);
}

//  Takes the app's record (the reply to HGETALL kiln:app:{name}) into
//  the cache. Returns the cached app, or NULL when it is not deployed
//  (then its runners are stopped). When Redis did not answer (reply
//  NULL), the cache stands. A changed manifest or scale override takes
//  effect even under the same revision. Frees the reply.
static s_app_t *
s_app_apply_record (kiln_broker_t *self, const char *name, redisReply *reply)
{
    s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, name);
    if (!reply)
        return app;
    if (reply->type != REDIS_REPLY_ARRAY) {
        kiln_log_error ("redis: HGETALL %s: %s", kiln_key_app (name).s,
                        reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
        freeReplyObject (reply);
        return app;
    }
    if (reply->elements == 0) {
        freeReplyObject (reply);
        if (app) {
            kiln_log_info ("%s: deleted; stopping its runners", name);
            zhashx_delete (self->apps, name);
        }
        s_app_stop_runners (self, name, "app deleted");
        return NULL;
    }
    const char *revision_text = NULL, *artifact = NULL, *manifest = NULL, *scale = NULL;
    const char *failed_text = NULL;
    size_t manifest_size = 0;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *field = reply->element [i], *value = reply->element [i + 1];
        if (field->type != REDIS_REPLY_STRING || value->type != REDIS_REPLY_STRING)
            continue;
        if (streq (field->str, "revision"))
            revision_text = value->str;
        else
        if (streq (field->str, "artifact"))
            artifact = value->str;
        else
        if (streq (field->str, "manifest")) {
            manifest = value->str;
            manifest_size = value->len;
        }
        else
        if (streq (field->str, "scale") && value->len > 0)
            scale = value->str;
        else
        if (streq (field->str, "failed_starts"))
            failed_text = value->str;
    }
    uint64_t revision = 0;
    bool complete = revision_text && s_parse_u64 (revision_text, &revision) == 0
                 && artifact && kiln_id_valid (artifact) && manifest;
    if (complete && app && app->manifest && app->revision == revision
    &&  streq (app->artifact, artifact) && streq (app->manifest_json, manifest)
    &&  s_same (app->scale_json, scale))
        goto done;              //  nothing changed: the usual case
    if (!app) {
        //  Cached even when refused, so that the refusal is logged once.
        app = calloc (1, sizeof *app);
        if (app && !(app->name = strdup (name)))
            s_app_destroy (&app);
        if (!app)
            goto done;
        uint64_t shown = 0;
        app->shown_failed_starts = failed_text && s_parse_u64 (failed_text, &shown) == 0
                                 ? (int) (shown > 1000000? 1000000: shown): 0;
        zhashx_insert (self->apps, name, app);
    }
    if (app->bad_logged && app->bad_revision == revision
    &&  s_same (app->bad_manifest_json, manifest))
        goto done;              //  refused before, logged before

    char *error = NULL;
    kiln_manifest_t *parsed = complete?
        kiln_manifest_from_json (manifest, manifest_size, &error): NULL;
    if (!parsed) {
        kiln_log_error ("%s: revision %" PRIu64 " refused: %s", name, revision,
                        !complete? "the app record is incomplete or invalid"
                                 : error? error: "invalid manifest");
        free (error);
        app->bad_revision = revision;
        free (app->bad_manifest_json);
        app->bad_manifest_json = manifest? strdup (manifest): NULL;
        app->bad_logged = true;
        goto done;              //  the last good revision, if any, stands
    }
    s_app_apply_scale (app, parsed, scale);
    char *artifact_copy = strdup (artifact);
    char *manifest_copy = strdup (manifest);
    char *scale_copy = scale? strdup (scale): NULL;
    if (!artifact_copy || !manifest_copy || (scale && !scale_copy)) {
        kiln_log_error ("%s: out of memory loading the app", name);
        kiln_manifest_destroy (&parsed);
        free (artifact_copy);
        free (manifest_copy);
        free (scale_copy);
        goto done;
    }
    bool new_revision = app->revision != revision;
    if (new_revision)
        kiln_log_info ("%s: revision %" PRIu64 " (artifact %.12s…)", name, revision, artifact_copy);
    else
    if (app->manifest && !streq (app->manifest_json, manifest_copy))
        kiln_log_info ("%s: manifest of revision %" PRIu64 " changed", name, revision);
    kiln_manifest_destroy (&app->manifest);
    free (app->artifact);
    free (app->manifest_json);
    free (app->scale_json);
    app->manifest = parsed;
    app->artifact = artifact_copy;
    app->manifest_json = manifest_copy;
    app->scale_json = scale_copy;
    app->revision = revision;
    app->bad_logged = false;
    if (new_revision) {
        //  A new revision deserves a fresh count of start failures.
        app->failed_starts = app->fail_streak = 0;
        app->start_after_ms = 0;
        if (app->shown_failed_starts != 0)
            s_app_status_write (self, app, NULL);
    }
done:
    freeReplyObject (reply);
    return app;
}

//  Reads the app's record from Redis into the cache, now.
static s_app_t *
s_app_reload (kiln_broker_t *self, const char *name)
{
    return s_app_apply_record (self, name, s_command (self, "HGETALL %s", kiln_key_app (name).s));
}

//  Counts the app's runners: in-flight requests, and runners not draining.
static void
s_app_count (kiln_broker_t *self, const char *name, int *inflight, int *active)
{
    *inflight = *active = 0;
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners))
        if (streq (runner->app, name)) {
            *inflight += (int) zhashx_size (runner->requests);
            if (runner->state != RUNNER_DRAINING)
                (*active)++;
        }
}

//  Writes the app's start notes (failed starts in a row, the last
//  failure's reason and time) on its record, for `kiln apps show`. Never
//  creates the record: a deleted app stays deleted. last_error NULL:
//  only failed_starts.
static void
s_app_status_write (kiln_broker_t *self, s_app_t *app, const char *last_error)
{
    s_call_t *call = s_call_new (10);
    if (!call)
        return;
    kiln_key_t key = kiln_key_app (app->name);
    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_APP_STATUS)
           | s_call_add_str (call, "1")
           | s_call_add_str (call, key.s)
           | s_call_add_str (call, "failed_starts")
           | s_call_add_int (call, app->fail_streak);
    if (last_error)
        rc |= s_call_add_str (call, "last_error")
            | s_call_add_str (call, last_error)
            | s_call_add_str (call, "last_error_ms")
            | s_call_add_int (call, kiln_now_ms ());
    if (rc != 0) {
        s_call_destroy (&call);
        return;
    }
    //  A note, not a result: not kept through an outage.
    if (s_call_run (self, &call, false, "APP_STATUS") >= 0)
        app->shown_failed_starts = app->fail_streak;
}

//  A failed start (an exit before hello, or a startup timeout); reason
//  says why, for the app's status. After FAILED_STARTS_MAX in a row the
//  queued requests fail: waiting longer would only let them time out on
//  an app that cannot come up.
static void
s_app_start_failed (kiln_broker_t *self, const char *name, bool timeout, const char *detail,
                    const char *reason)
{
    s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, name);
    if (!app)
        return;
    app->failed_starts++;
    app->fail_streak++;
    int64_t backoff = (int64_t) app->fail_streak * START_BACKOFF_MS;
    app->start_after_ms = kiln_mono_ms () + (backoff > START_BACKOFF_MAX_MS? START_BACKOFF_MAX_MS: backoff);
    s_app_status_write (self, app, reason);
    if (app->failed_starts < FAILED_STARTS_MAX)
        return;
    app->failed_starts = 0;
    char *error = NULL;
    if (timeout)
        error = zsys_sprintf ("Runner did not become ready within its startup_timeout (%d s)",
                              app->manifest? app->manifest->startup_timeout: 0);
    else
        error = zsys_sprintf ("Runner failed to start: %s", detail? detail: "it exited");
    if (error)
        s_fail_queue (self, name, 503, error, timeout? "startup_timeout": "runner_server_error");
    zstr_free (&error);
}

//  -------------------------------------------------------------------------
//  Runners

//  True when the runner's worker was found unreachable and is not yet
//  forgotten: until then the runner takes nothing (afterwards its own
//  heartbeats and sends decide).
static bool
s_worker_unreachable (kiln_broker_t *self, const s_runner_t *runner)
{
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, runner->worker_id);
    return worker && worker->unreachable;
}

//  status: 0, or KILN_RUNNER_STOP_KILL.
static void
s_send_stop (kiln_broker_t *self, s_runner_t *runner, int32_t status)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RUNNER_STOP);
    if (msg && !(msg->runner_id = strdup (runner->id)))
        kiln_msg_destroy (&msg);
    if (msg)
        msg->status = status;
    //  A worker that cannot be told is about to be forgotten
    //  (s_send_worker marks it).
    if (msg)
        s_send_worker (self, &msg, runner->worker_id);
}

//  Asks the runner's worker to stop it; the runner is DRAINING from now
//  on and keeps its slot until the worker reports its exit. False when
//  its worker is not registered (then nothing changed).
static bool
s_runner_stop (kiln_broker_t *self, s_runner_t *runner, const char *why)
{
    //  Only its worker can stop it. A runner adopted after a restart may
    //  speak before its worker has registered again: it stays as it is
    //  until then, and the next sweep tries again. A worker found
    //  unreachable is about to be forgotten.
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, runner->worker_id);
    if (!worker || worker->unreachable) {
        kiln_log_debug ("runner %s: cannot stop it (%s): worker %s is %s",
                        runner->id, why, runner->worker_id,
                        worker? "unreachable": "not registered");
        return false;
    }
    kiln_log_info ("stopping runner %s of %s (%s)", runner->id, runner->app, why);
    if (runner->state != RUNNER_DRAINING)
        runner->draining_ms = kiln_mono_ms ();
    runner->state = RUNNER_DRAINING;
    s_send_stop (self, runner, 0);
    return true;
}

//  Gives back every request the runner holds: re-queued, counted as an
//  attempt or not (see REQUEUE).
static void
s_runner_release (kiln_broker_t *self, s_runner_t *runner, bool counted, const char *why)
{
    if (zhashx_size (runner->requests) == 0)
        return;
    char *reason = zsys_sprintf ("runner %s %s", runner->id, why);
    zlistx_t *ids = zhashx_keys (runner->requests);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        zhashx_delete (self->inflight, id);
        s_requeue (self, id, runner->app, counted, false, reason? reason: why);
    }
    zlistx_destroy (&ids);
    zhashx_purge (runner->requests);
    zstr_free (&reason);
}

//  Forgets a runner whose process is gone (or whose worker is); each
//  request it held is re-queued. The pointer is invalid afterwards.
static void
s_runner_forget (kiln_broker_t *self, s_runner_t *runner, const char *why)
{
    kiln_log_info ("runner %s of %s gone (%s, %s, served %" PRIu64 ")",
                   runner->id, runner->app, why, s_state_names [runner->state], runner->served);
    s_runner_release (self, runner, true, why);
    char *id = strdup (runner->id);
    if (id)
        zhashx_delete (self->runners, id);
    free (id);
}

//  A READY runner we lost touch with (silent, unreachable) may still be
//  alive and on its slot: its requests are re-queued at once, and its
//  worker is asked to stop it, so that its slot is free only once the
//  worker reports it gone. Forgotten at once when its worker is not
//  registered. The pointer may be invalid afterwards.
static void
s_runner_lost (kiln_broker_t *self, s_runner_t *runner, const char *why)
{
    kiln_log_warn ("runner %s of %s lost (%s)", runner->id, runner->app, why);
    s_runner_release (self, runner, true, why);
    if (!s_runner_stop (self, runner, why))
        s_runner_forget (self, runner, why);
}

//  Kills a runner at once: a second RUNNER_STOP right after the first
//  tells its worker not to wait for teardown (SIGKILL now; a handler
//  stuck in a loop would never let it end). What it still holds goes
//  back to its queue, counted. The pointer may be invalid afterwards.
static void
s_runner_kill (kiln_broker_t *self, s_runner_t *runner, const char *why)
{
    kiln_log_warn ("killing runner %s of %s (%s)", runner->id, runner->app, why);
    s_runner_release (self, runner, true, why);
    if (s_runner_stop (self, runner, why))
        s_send_stop (self, runner, KILN_RUNNER_STOP_KILL);
    else {
        //  Its worker has not registered since our start: the runner stays,
        //  DRAINING (its hellos adopt nothing), and is killed when the
        //  worker is back (s_on_worker_hello), or forgotten after
        //  DRAIN_TIMEOUT_MS if it never is.
        runner->state = RUNNER_DRAINING;
        runner->draining_ms = kiln_mono_ms ();
        runner->kill_pending = true;
    }
}

//  The machine type of a runner we adopted: the first of its app's types
//  that its worker offers.
static void
s_runner_resolve_type (kiln_broker_t *self, s_runner_t *runner)
{
    if (runner->machine_type)
        return;
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, runner->worker_id);
    s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, runner->app);
    if (!worker || !app || !app->manifest)
        return;
    for (size_t t = 0; t < app->manifest->machine_type_count; t++)
        for (size_t s = 0; s < worker->slot_count; s++)
            if (streq (worker->slots [s].machine_type, app->manifest->machine_types [t])) {
                runner->machine_type = strdup (app->manifest->machine_types [t]);
                return;
            }
}

//  After a broker restart a runner may be working on requests the new
//  broker never gave it: find them in Redis so they count against its
//  capacity and their results are accepted. Its heartbeats say which it
//  really holds (one whose RESULT died with the old broker is not); the
//  record's started_ms keeps its request_timeout running.
static void
s_runner_adopt_requests (kiln_broker_t *self, s_runner_t *runner)
{
    redisReply *ids = s_command (self, "ZRANGE %s 0 -1", KILN_KEY_INFLIGHT);
    if (!ids)
        return;
    for (size_t i = 0; ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
        redisReply *id = ids->element [i];
        if (id->type != REDIS_REPLY_STRING || !kiln_id_valid (id->str)
        ||  zhashx_lookup (self->inflight, id->str))
            continue;
        kiln_key_t req = kiln_key_request (id->str);
        redisReply *fields = s_command (self, "HMGET %s state runner cancel_requested started_ms",
                                        req.s);
        if (!fields)
            break;
        if (fields->type == REDIS_REPLY_ARRAY && fields->elements == 4
        &&  fields->element [0]->type == REDIS_REPLY_STRING
        &&  fields->element [1]->type == REDIS_REPLY_STRING
        &&  streq (fields->element [0]->str, "IN_PROGRESS")
        &&  streq (fields->element [1]->str, runner->id)) {
            int64_t ran_ms = 0;
            if (fields->element [3]->type == REDIS_REPLY_STRING) {
                int64_t started = strtoll (fields->element [3]->str, NULL, 10);
                int64_t now = kiln_now_ms ();
                ran_ms = started > 0 && started < now? now - started: 0;
            }
            if (s_hold (self, runner, id->str, kiln_mono_ms () - ran_ms) != 0) {
                freeReplyObject (fields);
                break;
            }
            kiln_log_info ("runner %s: adopted in-flight request %s", runner->id, id->str);
            //  A cancel published while no broker listened was lost.
            if (fields->element [2]->type == REDIS_REPLY_STRING
            &&  streq (fields->element [2]->str, "1"))
                s_send_cancel (self, runner, id->str);
        }
        freeReplyObject (fields);
    }
    freeReplyObject (ids);
}

//  -------------------------------------------------------------------------
//  Placement

typedef struct {
    kiln_scale_worker_t *workers;
    kiln_scale_slot_t *slots;
    size_t count;
} s_snapshot_t;

static void
s_snapshot_free (s_snapshot_t *snap)
{
    free (snap->workers);
    free (snap->slots);
    memset (snap, 0, sizeof *snap);
}

//  Workers and their slot use as scale.c sees them. Pointers borrow from
//  the worker table: valid until a worker is added or removed. -1 when
//  out of memory.
static int
s_snapshot_build (kiln_broker_t *self, s_snapshot_t *snap)
{
    memset (snap, 0, sizeof *snap);
    size_t worker_count = zhashx_size (self->workers), slot_count = 0;
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers))
        slot_count += worker->slot_count;
    snap->workers = calloc (worker_count + 1, sizeof *snap->workers);
    snap->slots = calloc (slot_count + 1, sizeof *snap->slots);
    if (!snap->workers || !snap->slots) {
        s_snapshot_free (snap);
        return -1;
    }
    size_t slot_at = 0;
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        kiln_scale_worker_t *entry = &snap->workers [snap->count++];
        entry->id = worker->id;
        entry->slots = &snap->slots [slot_at];
        entry->slot_count = worker->slot_count;
        //  A draining worker is leaving, an unreachable one gone: their
        //  slots are no place for a runner.
        bool closed = worker->draining || worker->unreachable;
        for (size_t s = 0; s < worker->slot_count; s++) {
            snap->slots [slot_at + s].machine_type = worker->slots [s].machine_type;
            snap->slots [slot_at + s].slots = closed? 0: (int) worker->slots [s].count;
        }
        slot_at += worker->slot_count;
    }
    //  One pass over the runners fills in the use of every slot.
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners))
        for (size_t w = 0; w < snap->count; w++) {
            kiln_scale_worker_t *entry = &snap->workers [w];
            if (!streq (entry->id, runner->worker_id))
                continue;
            entry->runners++;
            for (size_t s = 0; s < entry->slot_count; s++)
                if (runner->machine_type
                &&  streq (entry->slots [s].machine_type, runner->machine_type))
                    ((kiln_scale_slot_t *) entry->slots) [s].used++;
            break;
        }
    return 0;
}

//  Asks the worker to start a runner of the app's current revision.
//  0, or -1 when the worker could not be told.
static int
s_runner_start (kiln_broker_t *self, s_app_t *app, const char *worker_id, const char *machine_type)
{
    char uuid [KILN_UUID_LEN + 1];
    kiln_uuid4 (uuid);
    char runner_id [KILN_UUID_LEN + 3];
    snprintf (runner_id, sizeof runner_id, "r-%s", uuid);

    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RUNNER_START);
    s_runner_t *runner = s_runner_new (runner_id, worker_id, app->name, app->revision);
    if (!msg || !runner
    ||  !(msg->runner_id = strdup (runner_id))
    ||  !(msg->app = strdup (app->name))
    ||  !(msg->artifact = strdup (app->artifact))
    ||  !(msg->machine_type = strdup (machine_type))
    ||  !(runner->machine_type = strdup (machine_type))) {
        kiln_log_error ("%s: out of memory starting a runner", app->name);
        kiln_msg_destroy (&msg);
        s_runner_destroy (&runner);
        return -1;
    }
    msg->revision = app->revision;
    runner->startup_timeout_ms = (int64_t) app->manifest->startup_timeout * 1000;
    if (s_send_worker (self, &msg, worker_id) != 0) {
        s_runner_destroy (&runner);
        return -1;
    }
    kiln_log_info ("starting runner %s of %s revision %" PRIu64 " on %s (%s)",
                   runner_id, app->name, app->revision, worker_id, machine_type);
    zhashx_insert (self->runners, runner_id, runner);
    return 0;
}

//  -------------------------------------------------------------------------
//  Dispatch: take, retire, scale

//  The TAKE that fills the free slots of the app's ready runners of its
//  current revision: one runner id per request to take, the least loaded
//  runner first each time, as many as TAKE_BATCH_MAX. NULL when no
//  runner has room (or out of memory).
static s_call_t *
s_take_call (kiln_broker_t *self, s_app_t *app)
{
    s_runner_t *ready [TAKE_BATCH_MAX];
    size_t load [TAKE_BATCH_MAX];
    size_t ready_count = 0;
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner && ready_count < TAKE_BATCH_MAX;
         runner = (s_runner_t *) zhashx_next (self->runners)) {
        if (runner->state != RUNNER_READY || runner->revision != app->revision
        ||  !streq (runner->app, app->name) || s_worker_unreachable (self, runner)
        ||  zhashx_size (runner->requests) >= (size_t) runner->max_multiplexing)
            continue;
        ready [ready_count] = runner;
        load [ready_count] = zhashx_size (runner->requests);
        ready_count++;
    }
    if (ready_count == 0)
        return NULL;
    //  EVAL, script, 2, queue, inflight, the first runner, now, lease,
    //  retention, then the other runners
    s_call_t *call = s_call_new (8 + TAKE_BATCH_MAX);
    if (!call)
        return NULL;
    kiln_key_t queue = kiln_key_queue (app->name);
    int64_t now = kiln_now_ms ();
    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_TAKE)
           | s_call_add_str (call, "2")
           | s_call_add_str (call, queue.s)
           | s_call_add_str (call, KILN_KEY_INFLIGHT);
    //  ARGV: the first runner, now, lease, retention, the other runners
    int taken = 0;
    while (rc == 0 && taken < TAKE_BATCH_MAX) {
        size_t best = ready_count;
        for (size_t i = 0; i < ready_count; i++)
            if (load [i] < (size_t) ready [i]->max_multiplexing
            &&  (best == ready_count || load [i] < load [best]))
                best = i;
        if (best == ready_count)
            break;
        load [best]++;
        rc = s_call_add_str (call, ready [best]->id);
        if (taken++ == 0)
            rc |= s_call_add_int (call, now)
                | s_call_add_int (call, now + LEASE_MS)
                | s_call_add_int (call, self->cfg->result_retention_s);
    }
    if (rc != 0) {
        s_call_destroy (&call);
        return NULL;
    }
    return call;
}

//  Sends each request TAKE gave (reply: {id, path, content_type, body}
//  per request) to the runner it was taken for (take: the TAKE call, whose
//  runner ids say which). One that cannot be sent goes back to the head
//  of its queue, uncounted.
static void
s_take_answer (kiln_broker_t *self, const char *app_name, const s_call_t *take,
               const redisReply *reply)
{
    if (!reply || reply->type == REDIS_REPLY_NIL)
        return;                 //  no answer (logged), or the queue is empty
    //  argv: EVAL, script, 2, queue, inflight, the first runner, now,
    //  lease, retention, the other runners
    size_t slots = (size_t) take->argc - 8;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 4 != 0
    ||  reply->elements / 4 > slots) {
        kiln_log_error ("redis: TAKE for %s: %s", app_name,
                        reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
        return;
    }
    for (size_t i = 0; i < reply->elements / 4; i++) {
        redisReply **fields = reply->element + 4 * i;
        if (fields [0]->type != REDIS_REPLY_STRING || fields [1]->type != REDIS_REPLY_STRING
        ||  fields [2]->type != REDIS_REPLY_STRING || fields [3]->type != REDIS_REPLY_STRING
        ||  !kiln_id_valid (fields [0]->str)) {
            kiln_log_error ("redis: TAKE for %s gave an invalid request; skipped", app_name);
            continue;
        }
        const char *id = fields [0]->str;
        const char *runner_id = take->argv [i == 0? 5: 8 + i];
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, runner_id);
        if (!runner || runner->state != RUNNER_READY) {
            //  Lost while an earlier send of this answer failed
            s_requeue (self, id, app_name, false, false, "its runner was lost before it was sent");
            continue;
        }
        //  Recorded before the send, so that a failed send ends it cleanly.
        bool held = s_hold (self, runner, id, kiln_mono_ms ()) == 0;
        runner->last_request_ms = kiln_mono_ms ();

        kiln_msg_t *msg = kiln_msg_new (KILN_MSG_REQUEST);
        if (msg) {
            msg->request_id = strdup (id);
            msg->path = strdup (fields [1]->str);
            msg->content_type = strdup (fields [2]->str);
            size_t body_size = fields [3]->len;
            if (body_size) {
                msg->body = malloc (body_size);
                if (msg->body) {
                    memcpy (msg->body, fields [3]->str, body_size);
                    msg->body_size = body_size;
                }
            }
            if (!msg->request_id || !msg->path || !msg->content_type
            || (body_size && !msg->body))
                kiln_msg_destroy (&msg);
        }
        if (!msg || !held) {
            kiln_msg_destroy (&msg);
            s_unhold (self, runner, id);
            s_fail_request (self, id, app_name, 500, "Out of memory in the broker", "internal_error");
        }
        else {
            kiln_log_debug ("request %s → runner %s", id, runner->id);
            if (s_send (self, &msg, runner->id) != 0) {
                //  It never reached a handler: back to the head of its
                //  queue without counting a run, as a hand-back is. The
                //  runner is gone, or as good as: lost, like a silent one.
                s_unhold (self, runner, id);
                s_requeue (self, id, app_name, false, false, "its REQUEST could not be sent");
                s_runner_lost (self, runner, "unreachable");
            }
        }
    }
}

//  Retires idle runners; target is the app's target now.
static void
s_app_retire (kiln_broker_t *self, s_app_t *app, int target)
{
    int inflight, active;
    s_app_count (self, app->name, &inflight, &active);
    int64_t now = kiln_mono_ms ();
    zlistx_t *ids = zhashx_keys (self->runners);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, id);
        if (!runner || runner->state != RUNNER_READY || !streq (runner->app, app->name)
        ||  zhashx_size (runner->requests) > 0)
            continue;
        int64_t since = runner->last_request_ms > runner->ready_ms?
                        runner->last_request_ms: runner->ready_ms;
        bool current = runner->revision == app->revision;
        if (kiln_scale_retire (now - since, app->manifest->keep_alive, current, active, target,
                               app->manifest->max_concurrency)) {
            s_runner_stop (self, runner, !current? "old revision"
                                       : active > app->manifest->max_concurrency?
                                         "above max_concurrency": "idle past keep_alive");
            if (runner->state == RUNNER_DRAINING)
                active--;
        }
    }
    zlistx_destroy (&ids);
}

//  Notes which machine types the registered workers offer now.
static void
s_offered_refresh (kiln_broker_t *self)
{
    int64_t now = kiln_mono_ms ();
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers))
        for (size_t i = 0; i < worker->slot_count && !worker->draining
                                                   && !worker->unreachable; i++) {
            int64_t *seen = (int64_t *) zhashx_lookup (self->offered, worker->slots [i].machine_type);
            if (!seen) {
                seen = malloc (sizeof *seen);
                if (!seen)
                    continue;
                zhashx_insert (self->offered, worker->slots [i].machine_type, seen);
            }
            *seen = now;
        }
}

//  True when a worker offered one of these types within SCHEDULING_GRACE_MS.
static bool
s_offered_recently (kiln_broker_t *self, const char *const *types, size_t type_count, int64_t now)
{
    for (size_t i = 0; i < type_count; i++) {
        int64_t *seen = (int64_t *) zhashx_lookup (self->offered, types [i]);
        if (seen && now - *seen <= SCHEDULING_GRACE_MS)
            return true;
    }
    return false;
}

//  The app has queued requests and every slot it could use is taken. An
//  idle runner of another app, above that app's min_concurrency, is
//  stopped to free its slot: the one idle longest. One at a time, so a
//  burst does not empty the others.
static void
s_evict_for (kiln_broker_t *self, s_app_t *app, const char *const *types, size_t type_count)
{
    s_runner_t *victim = NULL;
    int64_t victim_since = 0;
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners)) {
        bool usable = false;
        for (size_t i = 0; i < type_count && !usable; i++)
            usable = runner->machine_type && streq (runner->machine_type, types [i]);
        if (!usable)
            continue;
        if (runner->state == RUNNER_DRAINING)
            return;             //  a slot of ours is on its way back
        if (runner->state != RUNNER_READY || streq (runner->app, app->name)
        ||  zhashx_size (runner->requests) > 0)
            continue;
        s_app_t *owner = (s_app_t *) zhashx_lookup (self->apps, runner->app);
        int inflight, active;
        s_app_count (self, runner->app, &inflight, &active);
        if (owner && owner->manifest && active <= owner->manifest->min_concurrency)
            continue;
        int64_t since = runner->last_request_ms > runner->ready_ms?
                        runner->last_request_ms: runner->ready_ms;
        if (!victim || since < victim_since) {
            victim = runner;
            victim_since = since;
        }
    }
    if (victim) {
        char *why = zsys_sprintf ("its slot is needed by %s", app->name);
        s_runner_stop (self, victim, why? why: "its slot is needed");
        zstr_free (&why);
    }
}

//  Starts runners up to the target, or fails the queue when no worker
//  can ever take it.
static void
s_app_scale (kiln_broker_t *self, s_app_t *app, int target, long long queued)
{
    int inflight, active;
    s_app_count (self, app->name, &inflight, &active);
    //  Enough runners (every wake of a burst lands here): nothing to
    //  place, and queued requests are theirs to take, not to fail.
    if (active >= target)
        return;

    s_snapshot_t snap;
    if (s_snapshot_build (self, &snap) != 0)
        return;
    const char *const *types = (const char *const *) app->manifest->machine_types;
    size_t type_count = app->manifest->machine_type_count;
    if (!kiln_scale_offered (types, type_count, snap.workers, snap.count)) {
        s_snapshot_free (&snap);
        int64_t now = kiln_mono_ms ();
        if (now - self->started_ms <= REGISTRATION_GRACE_MS)
            return;             //  workers may not have re-registered yet
        if (s_offered_recently (self, types, type_count, now))
            return;             //  its worker may be back in a moment
        char *error = kiln_scale_no_worker_error (types, type_count);
        if (queued > 0 && error)
            s_fail_queue (self, app->name, 503, error, "runner_scheduling_failure");
        else
        if (error && active < target
        &&  now - app->no_worker_logged_ms > 60 * HEARTBEAT_INTERVAL_MS) {
            kiln_log_warn ("%s: %s", app->name, error);
            app->no_worker_logged_ms = now;
        }
        free (error);
        return;
    }
    if (kiln_mono_ms () < app->start_after_ms) {
        s_snapshot_free (&snap);
        return;                 //  backing off after failed starts
    }
    while (active < target) {
        size_t type_index = 0;
        int chosen = kiln_scale_place (types, type_count, snap.workers, snap.count, &type_index);
        if (chosen < 0) {
            //  Slots exist but are busy: requests wait, and an idle runner
            //  of another app gives its slot up.
            if (queued > 0)
                s_evict_for (self, app, types, type_count);
            break;
        }
        kiln_scale_worker_t *entry = &snap.workers [chosen];
        if (s_runner_start (self, app, entry->id, types [type_index]) != 0)
            break;
        active++;
        entry->runners++;
        for (size_t s = 0; s < entry->slot_count; s++)
            if (streq (entry->slots [s].machine_type, types [type_index]))
                ((kiln_scale_slot_t *) entry->slots) [s].used++;
    }
    s_snapshot_free (&snap);
}

//  Marks the app for what the broker does for an app: take while its
//  runners have room, retire the idle, start what the demand needs; with
//  reload, read its record again first. It happens once the event at
//  hand is handled (s_settle), for every app marked meanwhile at once, so
//  that the Redis work of many messages goes in a few round trips.
static void
s_dispatch (kiln_broker_t *self, const char *name, bool reload)
{
    if (self->stopping)
        return;                 //  draining: nothing new starts
    void *marked = zhashx_lookup (self->dirty, name);
    if (!marked)
        zhashx_insert (self->dirty, name, reload? DISPATCH_RELOAD: DISPATCH_TAKE);
    else
    if (reload && marked != DISPATCH_RELOAD)
        zhashx_update (self->dirty, name, DISPATCH_RELOAD);
}

//  Settles the marked apps, in two round trips at most: the records of
//  those to read again (and of any not cached yet), then for each app a
//  TAKE for its runners' free slots and the queue's length after it,
//  which sizes the app (retire, scale).
static void
s_settle_apps (kiln_broker_t *self, zhashx_t *marked)
{
    zlistx_t *names = zhashx_keys (marked);
    size_t count = names? zlistx_size (names): 0;
    s_call_t **calls = calloc (2 * count + 1, sizeof *calls);
    redisReply **replies = calloc (2 * count + 1, sizeof *replies);
    //  Per call of the first round, per app of the second: its name, and
    //  which calls it has in calls [], in order
    struct { const char *name; bool take, zcard; } *apps = calloc (count + 1, sizeof *apps);
    if (!names || !calls || !replies || !apps)
        goto done;

    size_t call_count = 0;
    for (const char *name = zlistx_first (names); name; name = zlistx_next (names)) {
        if (zhashx_lookup (marked, name) != DISPATCH_RELOAD && zhashx_lookup (self->apps, name))
            continue;
        s_call_t *call = s_call_key ("HGETALL", kiln_key_app (name).s, NULL);
        if (call) {
            apps [call_count].name = name;
            calls [call_count++] = call;
        }
    }
    //  Only when there is one to read: the writes go with the second
    if (call_count > 0)
        s_pipeline (self, calls, call_count, replies);
    for (size_t i = 0; i < call_count; i++) {
        s_app_apply_record (self, apps [i].name, replies [i]);
        replies [i] = NULL;
        s_call_destroy (&calls [i]);
    }
    if (!self->redis || self->stopping)
        goto done;

    //  Each app's TAKE, then its ZCARD: the queue's length after it
    size_t app_count = 0;
    call_count = 0;
    for (const char *name = zlistx_first (names); name; name = zlistx_next (names)) {
        s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, name);
        if (!app || !app->manifest)
            continue;
        s_call_t *take = s_take_call (self, app);
        s_call_t *zcard = s_call_key ("ZCARD", kiln_key_queue (name).s, NULL);
        if (take)
            calls [call_count++] = take;
        if (zcard)
            calls [call_count++] = zcard;
        apps [app_count].name = name;
        apps [app_count].take = take != NULL;
        apps [app_count++].zcard = zcard != NULL;
    }
    s_pipeline (self, calls, call_count, replies);
    for (size_t i = 0, at = 0; i < app_count; i++) {
        const char *name = apps [i].name;
        if (apps [i].take) {
            const s_call_t *take = calls [at];
            const redisReply *taken = replies [at++];
            s_take_answer (self, name, take, taken);
            //  A whole batch: more runner slots may be free
            if (take->argc == 8 + TAKE_BATCH_MAX
            &&  taken && taken->type == REDIS_REPLY_ARRAY && taken->elements == 4 * TAKE_BATCH_MAX)
                s_dispatch (self, name, false);
        }
        if (!apps [i].zcard)
            continue;           //  out of memory
        const redisReply *queued = replies [at++];
        s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, name);
        if (app && app->manifest && queued && queued->type == REDIS_REPLY_INTEGER) {
            int inflight, active;
            s_app_count (self, name, &inflight, &active);
            const kiln_manifest_t *m = app->manifest;
            long long waiting = queued->integer;
            int demand = (int) (waiting > INT32_MAX / 2? INT32_MAX / 2: waiting) + inflight;
            int target = kiln_scale_target (demand, m->max_multiplexing, m->concurrency_buffer,
                                            m->min_concurrency, m->max_concurrency);
            s_app_retire (self, app, target);
            s_app_scale (self, app, target, waiting);
        }
    }
    for (size_t i = 0; i < call_count; i++) {
        if (replies [i])
            freeReplyObject (replies [i]);
        s_call_destroy (&calls [i]);
    }
done:
    free (apps);
    free (replies);
    free (calls);
    zlistx_destroy (&names);
}

static int
s_on_deferred_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    kiln_broker_t *self = (kiln_broker_t *) arg;
    self->deferred_timer = -1;
    s_flush (self);
    return 0;
}

//  Runs at the end of every event (a message, a wake, the timer): settles
//  the apps s_dispatch marked, again for those that settling marked, then
//  sends what writes are left: results at once, log lines alone within
//  LOG_DEFER_MS (so that they most often go with the RESULT after them).
static void
s_settle (kiln_broker_t *self)
{
    for (int round = 0; round < SETTLE_ROUNDS_MAX && zhashx_size (self->dirty) > 0; round++) {
        zhashx_t *marked = self->dirty;
        self->dirty = zhashx_new ();
        if (!self->dirty) {
            self->dirty = marked;
            break;
        }
        if (self->redis && !self->stopping)
            s_settle_apps (self, marked);
        zhashx_destroy (&marked);
        //  A send while settling may have found a worker gone
        s_reap_workers (self);
    }
    if (self->deferred_results || self->stopping)
        s_flush (self);
    else
    if (zlistx_size (self->deferred) > 0 && self->deferred_timer < 0) {
        self->deferred_timer = zloop_timer (self->loop, LOG_DEFER_MS, 1, s_on_deferred_timer, self);
        if (self->deferred_timer < 0)
            s_flush (self);
    }
}

static void
s_dispatch_cached (kiln_broker_t *self)
{
    zlistx_t *names = zhashx_keys (self->apps);
    for (const char *name = zlistx_first (names); name; name = zlistx_next (names))
        s_dispatch (self, name, false);
    zlistx_destroy (&names);
}

//  -------------------------------------------------------------------------
//  Messages

//  Forgets a worker: nothing is placed there any more. With all its
//  runners (it is silent, or said goodbye): their requests are
//  re-queued. Otherwise (only its connection was found gone) with those
//  that only the worker could end (starting, or stopping): its READY
//  runners have connections of their own and live or die by their own
//  heartbeats, so a blip on the worker's connection re-runs nothing.
static void
s_worker_forget (kiln_broker_t *self, s_worker_t *worker, const char *why, bool runners_too)
{
    kiln_log_warn ("worker %s (%s) gone (%s)", worker->id, worker->host, why);
    char *worker_id = strdup (worker->id);
    if (!worker_id)
        return;
    zlistx_t *ids = zhashx_keys (self->runners);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, id);
        if (runner && streq (runner->worker_id, worker_id)
        && (runners_too || runner->state != RUNNER_READY))
            s_runner_forget (self, runner, "its worker is gone");
    }
    zlistx_destroy (&ids);
    zhashx_delete (self->workers, worker_id);
    free (worker_id);
    s_dispatch_cached (self);
}

//  Forgets every worker a send found unreachable (s_send_worker), but
//  not its runners (see s_worker_forget). Called between events, and
//  between rounds of s_settle, where no table is being walked;
//  forgetting one marks every app for dispatch.
static void
s_reap_workers (kiln_broker_t *self)
{
    bool reaped = true;
    while (reaped) {
        reaped = false;
        for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
             worker; worker = (s_worker_t *) zhashx_next (self->workers))
            if (worker->unreachable) {
                s_worker_forget (self, worker, "unreachable: its connection is gone", false);
                reaped = true;
                break;
            }
    }
}

static void
s_on_worker_hello (kiln_broker_t *self, const char *identity, kiln_msg_t *msg)
{
    if (!streq (identity, msg->worker_id)) {
        kiln_log_warn ("WORKER_HELLO from %s names worker %s: the routing identity "
                       "must be the worker id; dropped", identity, msg->worker_id);
        return;
    }
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, identity);
    bool known = worker != NULL;
    if (!worker) {
        worker = calloc (1, sizeof *worker);
        if (!worker || !(worker->id = strdup (identity))) {
            s_worker_destroy (&worker);
            return;
        }
        zhashx_insert (self->workers, identity, worker);
    }
    //  A hello replaces what we knew: the worker may have restarted with
    //  other GPUs.
    char *host = strdup (msg->host);
    if (host) {
        free (worker->host);
        worker->host = host;
    }
    for (size_t i = 0; i < worker->slot_count; i++)
        free (worker->slots [i].machine_type);
    free (worker->slots);
    worker->slots = msg->slots;
    worker->slot_count = 0;
    //  Keep the slots that make sense; the message's array is ours now.
    for (size_t i = 0; i < msg->slot_count; i++) {
        kiln_msg_slot_t slot = msg->slots [i];
        if (!slot.machine_type || !*slot.machine_type || slot.count == 0) {
            free (slot.machine_type);
            continue;
        }
        if (slot.count > SLOTS_MAX)
            slot.count = SLOTS_MAX;
        worker->slots [worker->slot_count++] = slot;
    }
    msg->slots = NULL;
    msg->slot_count = 0;
    worker->last_seen_ms = kiln_mono_ms ();
    bool was_draining = worker->draining;
    worker->draining = msg->draining;

    char summary [512] = "";
    size_t used = 0;
    for (size_t i = 0; i < worker->slot_count && used < sizeof summary; i++)
        used += (size_t) snprintf (summary + used, sizeof summary - used, "%s%s×%u",
                                   i? ", ": "", worker->slots [i].machine_type,
                                   worker->slots [i].count);
    if (!worker->draining || !was_draining)
        kiln_log_info ("worker %s (%s) %s: %s%s", worker->id, worker->host? worker->host: "?",
                       known? "registered again": "registered",
                       worker->slot_count? summary: "no slots",
                       worker->draining? " (draining: takes no runners)": "");

    //  A draining worker stops its runners itself; they finish what they
    //  run, hand back what they have not started, and are gone when it
    //  reports their exits. Until then they hold their slots.
    size_t draining = 0;
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners)) {
        if (!streq (runner->worker_id, worker->id))
            continue;
        s_runner_resolve_type (self, runner);
        if (runner->kill_pending) {
            kiln_log_warn ("killing runner %s of %s now that %s is back", runner->id,
                           runner->app, worker->id);
            runner->kill_pending = false;
            s_send_stop (self, runner, KILN_RUNNER_STOP_KILL);
        }
        if (worker->draining && runner->state != RUNNER_DRAINING) {
            runner->state = RUNNER_DRAINING;
            runner->draining_ms = kiln_mono_ms ();
            draining++;
        }
    }
    if (draining)
        kiln_log_info ("worker %s is draining: %zu runner(s) finish their requests",
                       worker->id, draining);
    s_offered_refresh (self);
    s_dispatch_cached (self);
}

static void
s_on_runner_hello (kiln_broker_t *self, const char *identity, kiln_msg_t *msg)
{
    if (!streq (identity, msg->runner_id)) {
        kiln_log_warn ("RUNNER_HELLO from %s names runner %s: the routing identity "
                       "must be the runner id; dropped", identity, msg->runner_id);
        return;
    }
    if (!kiln_app_name_valid (msg->app)) {
        kiln_log_warn ("RUNNER_HELLO from %s: invalid app name; dropped", identity);
        return;
    }
    int max_multiplexing = msg->max_multiplexing < 1? 1
                         : msg->max_multiplexing > KILN_MSG_MAX_ITEMS? KILN_MSG_MAX_ITEMS
                         : (int) msg->max_multiplexing;
    s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, identity);
    if (!runner) {
        //  A runner of a broker before us: it keeps its work.
        runner = s_runner_new (msg->runner_id, msg->worker_id, msg->app, msg->revision);
        if (!runner)
            return;
        zhashx_insert (self->runners, identity, runner);
        runner->state = RUNNER_READY;
        runner->max_multiplexing = max_multiplexing;
        kiln_log_info ("runner %s of %s revision %" PRIu64 " on %s registered again",
                       runner->id, runner->app, runner->revision, runner->worker_id);
        if (!zhashx_lookup (self->apps, runner->app))
            s_app_reload (self, runner->app);
        s_runner_resolve_type (self, runner);
        s_runner_adopt_requests (self, runner);
    }
    else {
        if (!streq (runner->app, msg->app) || !streq (runner->worker_id, msg->worker_id)) {
            kiln_log_warn ("RUNNER_HELLO from %s: app %s on %s, expected %s on %s; dropped",
                           identity, msg->app, msg->worker_id, runner->app, runner->worker_id);
            return;
        }
        runner->last_seen_ms = kiln_mono_ms ();
        runner->max_multiplexing = max_multiplexing;
        if (msg->revision && msg->revision != runner->revision)
            runner->revision = msg->revision;
        if (runner->state == RUNNER_DRAINING) {
            kiln_log_debug ("runner %s said hello while stopping", runner->id);
            return;
        }
        if (runner->state == RUNNER_STARTING) {
            runner->ready_ms = runner->last_request_ms = kiln_mono_ms ();
            kiln_log_info ("runner %s of %s ready on %s after %" PRId64 " ms",
                           runner->id, runner->app, runner->worker_id,
                           runner->ready_ms - runner->started_ms);
        }
        runner->state = RUNNER_READY;
    }
    if (msg->gpu >= 0)
        runner->gpu = msg->gpu;
    s_app_t *app = (s_app_t *) zhashx_lookup (self->apps, runner->app);
    if (app) {
        app->failed_starts = app->fail_streak = 0;
        if (app->shown_failed_starts != 0)
            s_app_status_write (self, app, NULL);
    }
    //  The app's record is cached (read when this runner was started, or
    //  above when it was adopted); changes come on kiln:changed.
    s_dispatch (self, runner->app, false);
}

static void
s_on_runner_exited (kiln_broker_t *self, s_worker_t *worker, kiln_msg_t *msg)
{
    s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, msg->runner_id);
    if (!runner) {
        kiln_log_debug ("RUNNER_EXITED for %s, which is gone already", msg->runner_id);
        return;
    }
    if (!streq (runner->worker_id, worker->id)) {
        kiln_log_warn ("RUNNER_EXITED for %s from %s, but it runs on %s; dropped",
                       runner->id, worker->id, runner->worker_id);
        return;
    }
    char *app = strdup (runner->app);
    if (!app)
        return;
    bool failed_start = runner->state == RUNNER_STARTING && !runner->start_failed;
    bool refused = failed_start && msg->status == NOT_STARTED_STATUS
                && msg->error && strncmp (msg->error, REFUSED_NO_SLOT_PREFIX,
                                          strlen (REFUSED_NO_SLOT_PREFIX)) == 0;
    if (refused) {
        //  Its worker still held the slot (a runner it had not reaped, or
        //  one we did not know of): nothing is wrong with the app.
        kiln_log_info ("worker %s refused runner %s of %s (%s); placing it again in %d ms",
                       worker->id, runner->id, app, msg->error, REFUSED_RETRY_MS);
        s_app_t *cached = (s_app_t *) zhashx_lookup (self->apps, app);
        int64_t retry_at = kiln_mono_ms () + REFUSED_RETRY_MS;
        if (cached && cached->start_after_ms < retry_at)
            cached->start_after_ms = retry_at;
        failed_start = false;
    }
    else
    if (msg->status != 0 || runner->state != RUNNER_DRAINING)
        kiln_log_warn ("runner %s of %s exited with status %d%s%s", runner->id, app,
                       msg->status, msg->error? ": ": "", msg->error? msg->error: "");
    s_runner_forget (self, runner, refused? "refused by its worker": "exited");
    if (failed_start) {
        char *detail = msg->error? zsys_sprintf ("%s (exit status %d)", msg->error, msg->status)
                                 : zsys_sprintf ("exit status %d", msg->status);
        char *reason = msg->error? strdup (msg->error)
                                 : zsys_sprintf ("exited with status %d before it was ready",
                                                 msg->status);
        s_app_start_failed (self, app, false, detail, reason);
        zstr_free (&detail);
        zstr_free (&reason);
    }
    s_dispatch (self, app, false);
    s_dispatch_cached (self);   //  its slot may be what another app waits for
    free (app);
}

//  The runner that holds the request, or NULL (logged) when the sender
//  has no business with it. After a restart the holder is only in Redis.
static bool
s_holds (kiln_broker_t *self, const char *runner_id, const char *request_id,
         const char *what, char **app_p)
{
    *app_p = NULL;
    if (!kiln_id_valid (request_id)) {
        kiln_log_warn ("%s from %s with an invalid request id; dropped", what, runner_id);
        return false;
    }
    s_runner_t *holder = (s_runner_t *) zhashx_lookup (self->inflight, request_id);
    if (holder) {
        if (!streq (holder->id, runner_id)) {
            kiln_log_warn ("%s for %s from %s, but %s holds it; dropped",
                           what, request_id, runner_id, holder->id);
            return false;
        }
        *app_p = strdup (holder->app);
        return *app_p != NULL;
    }
    kiln_key_t req = kiln_key_request (request_id);
    redisReply *fields = s_command (self, "HMGET %s state runner app", req.s);
    bool ok = fields && fields->type == REDIS_REPLY_ARRAY && fields->elements == 3
           && fields->element [0]->type == REDIS_REPLY_STRING
           && fields->element [1]->type == REDIS_REPLY_STRING
           && fields->element [2]->type == REDIS_REPLY_STRING
           && streq (fields->element [0]->str, "IN_PROGRESS")
           && streq (fields->element [1]->str, runner_id)
           && kiln_app_name_valid (fields->element [2]->str);
    if (ok)
        *app_p = strdup (fields->element [2]->str);
    else
        kiln_log_warn ("%s for %s from %s, which does not hold it; dropped",
                       what, request_id, runner_id);
    if (fields)
        freeReplyObject (fields);
    return ok && *app_p;
}

static void
s_on_result (kiln_broker_t *self, const char *runner_id, s_runner_t *runner, kiln_msg_t *msg)
{
    char *app = NULL;
    if (!s_holds (self, runner_id, msg->request_id, "RESULT", &app))
        return;
    int status = msg->status;
    const char *error = msg->error, *error_type = msg->error_type;
    if (status < 100 || status > 599) {
        kiln_log_warn ("RESULT for %s from %s with HTTP status %d; recorded as 500",
                       msg->request_id, runner_id, status);
        status = 500;
        error = "The runner returned an invalid HTTP status";
        error_type = "runner_server_error";
    }
    if (runner)
        zhashx_delete (runner->requests, msg->request_id);
    zhashx_delete (self->inflight, msg->request_id);

    if (status == 503 && error_type && streq (error_type, KILN_ERROR_TYPE_RUNNER_DRAINING)) {
        //  A stopping runner hands back what no handler of its started.
        s_requeue (self, msg->request_id, app, false, false, "handed back by a stopping runner");
        if (runner && runner->state == RUNNER_READY) {
            kiln_log_info ("runner %s of %s is stopping: it takes no more requests",
                           runner->id, runner->app);
            runner->state = RUNNER_DRAINING;
            runner->draining_ms = kiln_mono_ms ();
        }
    }
    else {
        //  A handler's 503 is retried like a crash, as fal does; out of
        //  tries (or with X-Fal-No-Retry), its own answer is recorded.
        long long requeued = REQUEUE_OUT_OF_TRIES;
        if (status == 503)
            requeued = s_requeue (self, msg->request_id, app, true, true,
                                  "its handler answered 503");
        if (requeued == REQUEUE_OUT_OF_TRIES || requeued == REQUEUE_NO_ANSWER) {
            //  With the next round trip (the next TAKE, most often).
            //  Named holder: a runner that lost the request meanwhile
            //  (it was re-queued) records nothing.
            s_call_t *call = s_complete_call (self, msg->request_id, app, msg, status,
                                              error? error: "", error_type? error_type: "",
                                              runner_id);
            s_call_defer (self, &call, true, "COMPLETE");
            kiln_log_debug ("request %s ← runner %s: %d", msg->request_id, runner_id, status);
        }
        if (runner) {
            runner->served++;
            runner->last_request_ms = kiln_mono_ms ();
        }
    }
    s_dispatch (self, app, false);
    free (app);
}

//  Adds a LOG's lines as the app's stream takes them
//  (KILN_APP_LOG_LINE_ARGS each; kiln_scripts.h). request_id may be NULL
//  (a runner's own output, forwarded by its worker). 0, or -1 when the
//  call is full or out of memory.
static int
s_call_add_stream_lines (s_call_t *call, const char *runner_id, uint64_t revision,
                         const char *request_id, const kiln_msg_t *msg, int64_t now)
{
    int rc = 0;
    for (size_t i = 0; i < msg->log_count && rc == 0; i++) {
        const kiln_msg_log_t *entry = &msg->logs [i];
        char ts [KILN_ISO8601_LEN + 1];
        kiln_iso8601_ms (entry->timestamp_ms > 0? entry->timestamp_ms: now, ts);
        rc = s_call_add_str (call, ts)
           | s_call_add_str (call, entry->level && *entry->level? entry->level: "INFO")
           | s_call_add_str (call, entry->source && *entry->source? entry->source:
                                   request_id? "app": "runner")
           | s_call_add_str (call, entry->message? entry->message: "")
           | s_call_add_str (call, runner_id)
           | s_call_add_str (call, request_id? request_id: "")
           | s_call_add_int (call, (int64_t) revision);
    }
    return rc;
}

//  A runner's own output (no request): to its app's stream,
//  kiln:logs:{app}, what `kiln logs` and GET /v1/apps/{app}/logs read.
static void
s_app_log (kiln_broker_t *self, const s_runner_t *runner, const kiln_msg_t *msg)
{
    s_call_t *call = s_call_new (6 + KILN_APP_LOG_LINE_ARGS * (int) msg->log_count);
    if (!call)
        return;
    kiln_key_t app_key = kiln_key_app (runner->app);
    kiln_key_t stream = kiln_key_app_logs (runner->app);
    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_APP_LOG)
           | s_call_add_str (call, "2")
           | s_call_add_str (call, app_key.s)
           | s_call_add_str (call, stream.s)
           | s_call_add_int (call, KILN_APP_LOG_MAXLEN)
           | s_call_add_stream_lines (call, runner->id, runner->revision, NULL, msg,
                                      kiln_now_ms ());
    if (rc != 0) {
        s_call_destroy (&call);
        return;
    }
    //  Log lines are not worth keeping through an outage; results are.
    s_call_defer (self, &call, false, "APP_LOG");
}

//  LOG from a runner: its handler's lines for a request it holds, into
//  the request's log list and the app's stream in one script. LOG from a
//  worker: a runner's own output, with runner_id and no request_id (into
//  the app's stream only).
static void
s_on_log (kiln_broker_t *self, const char *identity, s_worker_t *worker, kiln_msg_t *msg)
{
    if (msg->log_count == 0)
        return;
    if (worker) {
        s_runner_t *runner = msg->runner_id?
            (s_runner_t *) zhashx_lookup (self->runners, msg->runner_id): NULL;
        if (!runner || !streq (runner->worker_id, identity) || msg->request_id) {
            kiln_log_debug ("LOG from worker %s for runner %s, which is not its; dropped",
                            identity, msg->runner_id? msg->runner_id: "(none)");
            return;
        }
        s_app_log (self, runner, msg);
        return;
    }
    s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, identity);
    if (!runner)
        return;
    if (!msg->request_id) {
        s_app_log (self, runner, msg);
        return;
    }
    char *app = NULL;
    if (!s_holds (self, identity, msg->request_id, "LOG", &app))
        return;
    s_call_t *call = s_call_new (11 + (1 + KILN_APP_LOG_LINE_ARGS) * (int) msg->log_count);
    if (!call) {
        free (app);
        return;
    }
    kiln_key_t req = kiln_key_request (msg->request_id);
    kiln_key_t logs = kiln_key_logs (msg->request_id);
    kiln_key_t app_key = kiln_key_app (app);
    kiln_key_t stream = kiln_key_app_logs (app);
    int rc = s_call_add_str (call, "EVAL")
           | s_call_add_str (call, KILN_SCRIPT_LOG)
           | s_call_add_str (call, "4")
           | s_call_add_str (call, req.s)
           | s_call_add_str (call, logs.s)
           | s_call_add_str (call, app_key.s)
           | s_call_add_str (call, stream.s)
           | s_call_add_str (call, identity)
           | s_call_add_int (call, KILN_APP_LOG_MAXLEN)
           | s_call_add_int (call, (int64_t) msg->log_count);
    int64_t now = kiln_now_ms ();
    for (size_t i = 0; i < msg->log_count && rc == 0; i++) {
        const kiln_msg_log_t *entry = &msg->logs [i];
        char *line = kiln_logline_json (entry->level, entry->message, entry->source,
                                        entry->timestamp_ms, now);
        rc = line? s_call_add_str (call, line): -1;
        free (line);
    }
    if (rc == 0)
        rc = s_call_add_stream_lines (call, identity, runner->revision, msg->request_id,
                                      msg, now);
    if (rc != 0)
        s_call_destroy (&call);
    else
        s_call_defer (self, &call, false, "LOG");
    free (app);
}

//  A runner's heartbeat lists every request it holds. A listed one keeps
//  its lease (renewed on the next tick). One we sent it more than
//  UNLISTED_GRACE_MS ago that it does not list is not there: its REQUEST
//  or its RESULT was lost on the wire. It goes back to the head of its
//  queue, counted (it may have run); a RESULT that turns up later finds
//  the request re-queued or completed, and is dropped.
static void
s_on_runner_heartbeat (kiln_broker_t *self, s_runner_t *runner, kiln_msg_t *msg)
{
    if (runner->state == RUNNER_STARTING || zhashx_size (runner->requests) == 0)
        return;
    int64_t now = kiln_mono_ms ();
    zlistx_t *lost = NULL;
    for (s_held_t *held = (s_held_t *) zhashx_first (runner->requests);
         held; held = (s_held_t *) zhashx_next (runner->requests)) {
        const char *id = (const char *) zhashx_cursor (runner->requests);
        bool listed = false;
        for (size_t i = 0; i < msg->request_count && !listed; i++)
            listed = msg->requests [i] && streq (msg->requests [i], id);
        if (listed)
            held->listed_ms = now;
        else
        if (now - held->sent_ms > UNLISTED_GRACE_MS) {
            if (!lost) {
                lost = zlistx_new ();
                if (!lost)
                    break;
                zlistx_set_destructor (lost, (czmq_destructor *) zstr_free);
                zlistx_set_duplicator (lost, (czmq_duplicator *) strdup);
            }
            zlistx_add_end (lost, (void *) id);
        }
    }
    for (const char *id = lost? zlistx_first (lost): NULL; id; id = zlistx_next (lost)) {
        kiln_log_warn ("request %s: runner %s no longer holds it (its REQUEST or RESULT "
                       "was lost)", id, runner->id);
        s_unhold (self, runner, id);
        s_requeue (self, id, runner->app, true, false, "its runner no longer holds it");
    }
    if (lost) {
        zlistx_destroy (&lost);
        s_dispatch (self, runner->app, false);
    }
}

//  A runner said DISCONNECT: it retires (or was stopped), and says so
//  only once no handler of its runs. A request it still holds never
//  reached a handler (a REQUEST that crossed its goodbye): re-queued
//  without counting. The runner keeps its slot until its worker reports
//  the process gone, so that no start is sent to a slot not yet free.
static void
s_on_runner_bye (kiln_broker_t *self, s_runner_t *runner)
{
    s_runner_release (self, runner, false, "said DISCONNECT");
    if (!zhashx_lookup (self->workers, runner->worker_id)) {
        s_runner_forget (self, runner, "said DISCONNECT; its worker is not registered");
        return;
    }
    if (runner->state != RUNNER_DRAINING) {
        runner->state = RUNNER_DRAINING;
        runner->draining_ms = kiln_mono_ms ();
    }
    kiln_log_info ("runner %s of %s said DISCONNECT; its slot is free once %s reports its exit",
                   runner->id, runner->app, runner->worker_id);
}

static void
s_on_message (kiln_broker_t *self, const char *identity, kiln_msg_t *msg)
{
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, identity);
    s_runner_t *runner = worker? NULL: (s_runner_t *) zhashx_lookup (self->runners, identity);
    //  A runner we asked a worker to start has no connection of ours until
    //  its hello; anything else from it is a stranger's.
    if (runner && runner->state == RUNNER_STARTING && msg->type != KILN_MSG_RUNNER_HELLO
    &&  msg->type != KILN_MSG_DISCONNECT)
        runner = NULL;
    int64_t now = kiln_mono_ms ();
    if (worker)
        worker->last_seen_ms = now;
    if (runner)
        runner->last_seen_ms = now;

    switch (msg->type) {
        case KILN_MSG_WORKER_HELLO:
            s_on_worker_hello (self, identity, msg);
            return;
        case KILN_MSG_RUNNER_HELLO:
            s_on_runner_hello (self, identity, msg);
            return;
        case KILN_MSG_DISCONNECT:
            if (worker)
                s_worker_forget (self, worker, "said DISCONNECT", true);
            else
            if (runner && runner->state != RUNNER_STARTING) {
                char *app = strdup (runner->app);
                s_on_runner_bye (self, runner);
                if (app)
                    s_dispatch (self, app, false);
                free (app);
            }
            //  A starting runner that gives up is reported by its worker.
            return;
        default:
            break;
    }
    if (!worker && !runner) {
        //  A peer of a broker before us, or one we gave up on: the result
        //  it carries still counts if Redis says it is the holder.
        if (msg->type == KILN_MSG_RESULT)
            s_on_result (self, identity, NULL, msg);
        else
        if (msg->type != KILN_MSG_HEARTBEAT)
            kiln_log_debug ("%s from unknown peer %s", kiln_msg_type_name (msg->type), identity);
        s_send_simple (self, KILN_MSG_DISCONNECT, identity);
        return;
    }
    switch (msg->type) {
        case KILN_MSG_HEARTBEAT:
            if (runner)
                s_on_runner_heartbeat (self, runner, msg);
            break;
        case KILN_MSG_RUNNER_EXITED:
            if (worker)
                s_on_runner_exited (self, worker, msg);
            else
                kiln_log_warn ("RUNNER_EXITED from runner %s; dropped", identity);
            break;
        case KILN_MSG_RESULT:
            if (runner)
                s_on_result (self, identity, runner, msg);
            else
                kiln_log_warn ("RESULT from worker %s; dropped", identity);
            break;
        case KILN_MSG_LOG:
            s_on_log (self, identity, worker, msg);
            break;
        default:
            kiln_log_warn ("unexpected %s from %s; dropped",
                           kiln_msg_type_name (msg->type), identity);
            break;
    }
}

static int
s_on_router (zloop_t *loop, zsock_t *router, void *arg)
{
    (void) loop;
    kiln_broker_t *self = (kiln_broker_t *) arg;
    for (int i = 0; i < ROUTER_BATCH && !zsys_interrupted; i++) {
        if (i > 0 && !(zsock_events (router) & ZMQ_POLLIN))
            break;
        char *identity = NULL;
        kiln_msg_t *msg = kiln_msg_recv (router, &identity);
        if (msg && identity && *identity) {
            s_reap_workers (self);
            s_on_message (self, identity, msg);
            s_reap_workers (self);
        }
        kiln_msg_destroy (&msg);
        zstr_free (&identity);
    }
    s_settle (self);
    return 0;
}

//  -------------------------------------------------------------------------
//  The timer

static void
s_check_liveness (kiln_broker_t *self)
{
    int64_t now = kiln_mono_ms ();
    int64_t silence_ms = (int64_t) HEARTBEAT_LIVENESS * HEARTBEAT_INTERVAL_MS;

    zlistx_t *ids = zhashx_keys (self->workers);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, id);
        if (worker && now - worker->last_seen_ms > silence_ms)
            s_worker_forget (self, worker, "silent", true);
    }
    zlistx_destroy (&ids);

    ids = zhashx_keys (self->runners);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, id);
        if (!runner)
            continue;
        if (runner->state == RUNNER_READY && now - runner->last_seen_ms > silence_ms) {
            char *app = strdup (runner->app);
            s_runner_lost (self, runner, "silent");
            if (app)
                s_dispatch (self, app, false);
            free (app);
        }
        else
        if (runner->state == RUNNER_STARTING
        &&  now - runner->started_ms > runner->startup_timeout_ms) {
            kiln_log_warn ("runner %s of %s not ready after %" PRId64 " s",
                           runner->id, runner->app, runner->startup_timeout_ms / 1000);
            runner->start_failed = true;
            char *app = strdup (runner->app);
            char *reason = zsys_sprintf ("startup_timeout: setup did not finish within %" PRId64 " s",
                                         runner->startup_timeout_ms / 1000);
            s_runner_stop (self, runner, "startup timeout");
            if (app)
                s_app_start_failed (self, app, true, NULL, reason);
            zstr_free (&reason);
            free (app);
        }
        else
        if (runner->state == RUNNER_DRAINING && now - runner->draining_ms > DRAIN_TIMEOUT_MS)
            s_runner_forget (self, runner, "no exit reported after stop");
    }
    zlistx_destroy (&ids);
}

static void
s_send_heartbeats (kiln_broker_t *self)
{
    zlistx_t *ids = zhashx_keys (self->workers);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        kiln_msg_t *msg = kiln_msg_new (KILN_MSG_HEARTBEAT);
        if (msg)
            s_send_worker (self, &msg, id);
    }
    zlistx_destroy (&ids);
    ids = zhashx_keys (self->runners);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, id);
        if (runner && runner->state == RUNNER_READY)
            s_send_simple (self, KILN_MSG_HEARTBEAT, id);
    }
    zlistx_destroy (&ids);
}

//  Every deployed app, and every app we still hold runners or a cache
//  entry for (so that a deleted one is noticed).
static void
s_sweep_apps (kiln_broker_t *self)
{
    redisReply *reply = s_command (self, "SMEMBERS %s", KILN_KEY_APPS);
    if (!reply)
        return;
    zhashx_t *seen = zhashx_new ();
    if (!seen) {
        freeReplyObject (reply);
        return;
    }
    for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++) {
        redisReply *name = reply->element [i];
        if (name->type != REDIS_REPLY_STRING || !kiln_app_name_valid (name->str))
            continue;
        zhashx_insert (seen, name->str, "");
        s_dispatch (self, name->str, true);
    }
    freeReplyObject (reply);

    zlistx_t *others = zlistx_new ();
    zlistx_set_destructor (others, (czmq_destructor *) zstr_free);
    for (s_app_t *app = (s_app_t *) zhashx_first (self->apps);
         app; app = (s_app_t *) zhashx_next (self->apps))
        if (!zhashx_lookup (seen, app->name))
            zlistx_add_end (others, strdup (app->name));
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners))
        if (!zhashx_lookup (seen, runner->app) && runner->state != RUNNER_DRAINING) {
            zhashx_insert (seen, runner->app, "");
            zlistx_add_end (others, strdup (runner->app));
        }
    for (const char *name = zlistx_first (others); name; name = zlistx_next (others))
        if (name)
            s_dispatch (self, name, true);
    zlistx_destroy (&others);
    zhashx_destroy (&seen);
}

//  -------------------------------------------------------------------------
//  The operators' view: kiln:runners and kiln:workers

//  A runner's state as kiln:runners shows it.
static const char *
s_runner_view_state (const s_runner_t *runner)
{
    if (runner->state == RUNNER_STARTING)
        return "starting";
    if (runner->state == RUNNER_READY)
        return zhashx_size (runner->requests) > 0? "busy": "ready";
    return "draining";
}

//  A peer's text is not checked for UTF-8 on the wire; JSON needs it.
static json_t *
s_json_string_or_null (const char *text)
{
    if (!text)
        return json_null ();
    json_t *string = json_string (text);
    return string? string: json_string ("?");
}

//  {"id", "app", "revision", "worker", "host", "machine_type", "gpu",
//   "state", "inflight", "served", "idle_s", "started_ms"}, compact.
static char *
s_runner_view (kiln_broker_t *self, const s_runner_t *runner, int64_t now)
{
    const s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, runner->worker_id);
    size_t inflight = zhashx_size (runner->requests);
    int64_t idle_ms = 0;
    if (runner->state != RUNNER_STARTING && inflight == 0) {
        int64_t since = runner->last_request_ms > runner->ready_ms?
                        runner->last_request_ms: runner->ready_ms;
        idle_ms = now > since? now - since: 0;
    }
    json_t *gpu = runner->gpu >= 0? json_sprintf ("%d", runner->gpu): json_null ();
    json_t *view = json_pack ("{s:s, s:s, s:I, s:o, s:o, s:o, s:o, s:s, s:I, s:I, s:I, s:I}",
                              "id", runner->id,
                              "app", runner->app,
                              "revision", (json_int_t) runner->revision,
                              "worker", s_json_string_or_null (runner->worker_id),
                              "host", s_json_string_or_null (worker? worker->host: NULL),
                              "machine_type", s_json_string_or_null (runner->machine_type),
                              "gpu", gpu? gpu: json_null (),
                              "state", s_runner_view_state (runner),
                              "inflight", (json_int_t) inflight,
                              "served", (json_int_t) runner->served,
                              "idle_s", (json_int_t) (idle_ms / 1000),
                              "started_ms", (json_int_t) runner->started_wall_ms);
    if (!view)
        return NULL;
    char *text = json_dumps (view, JSON_COMPACT);
    json_decref (view);
    return text;
}

//  {"id", "host", "slots": {type: n}, "used": {type: n}, "draining"}.
static char *
s_worker_view (kiln_broker_t *self, const s_worker_t *worker)
{
    json_t *slots = json_object ();
    json_t *used = json_object ();
    for (size_t i = 0; slots && used && i < worker->slot_count; i++) {
        json_object_set_new (slots, worker->slots [i].machine_type,
                             json_integer (worker->slots [i].count));
        json_object_set_new (used, worker->slots [i].machine_type, json_integer (0));
    }
    //  A runner of any state holds its slot until its exit is reported.
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner && used; runner = (s_runner_t *) zhashx_next (self->runners)) {
        if (!runner->machine_type || !streq (runner->worker_id, worker->id))
            continue;
        json_t *count = json_object_get (used, runner->machine_type);
        json_object_set_new (used, runner->machine_type,
                             json_integer ((count? json_integer_value (count): 0) + 1));
    }
    json_t *view = slots && used?
        json_pack ("{s:o, s:o, s:O, s:O, s:b}", "id", s_json_string_or_null (worker->id),
                   "host", s_json_string_or_null (worker->host),
                   "slots", slots, "used", used, "draining", worker->draining): NULL;
    json_decref (slots);
    json_decref (used);
    if (!view)
        return NULL;
    char *text = json_dumps (view, JSON_COMPACT);
    json_decref (view);
    return text;
}

//  HSET key id view ... for every runner (or worker); NULL when there is
//  none, or out of memory.
static s_call_t *
s_view_call (kiln_broker_t *self, bool runners)
{
    zhashx_t *table = runners? self->runners: self->workers;
    size_t count = zhashx_size (table);
    if (count == 0 || count > INT32_MAX / 4)
        return NULL;
    s_call_t *call = s_call_new (2 + 2 * (int) count);
    if (!call)
        return NULL;
    int rc = s_call_add_str (call, "HSET")
           | s_call_add_str (call, runners? KILN_KEY_RUNNERS: KILN_KEY_WORKERS);
    int64_t now = kiln_mono_ms ();
    for (void *item = zhashx_first (table); item && rc == 0; item = zhashx_next (table)) {
        const char *id = runners? ((s_runner_t *) item)->id: ((s_worker_t *) item)->id;
        char *view = runners? s_runner_view (self, (s_runner_t *) item, now)
                            : s_worker_view (self, (s_worker_t *) item);
        if (view)
            rc = s_call_add_str (call, id) | s_call_add_str (call, view);
        free (view);
    }
    if (rc != 0 || call->argc == 2)
        s_call_destroy (&call);
    return call;
}

//  Replaces kiln:runners and kiln:workers with what we know now, in one
//  MULTI (pipelined: one round trip), so that a reader never sees half
//  of it. Both expire when no broker rewrites them.
static void
s_publish_view (kiln_broker_t *self)
{
    s_flush (self);
    if (!self->redis)
        return;
    s_call_t *runners = s_view_call (self, true);
    s_call_t *workers = s_view_call (self, false);
    int replies = 0;
    redisAppendCommand (self->redis, "MULTI");
    redisAppendCommand (self->redis, "DEL %s %s", KILN_KEY_RUNNERS, KILN_KEY_WORKERS);
    replies += 2;
    s_call_t *calls [] = { runners, workers };
    for (int i = 0; i < 2; i++)
        if (calls [i]) {
            redisAppendCommandArgv (self->redis, calls [i]->argc,
                                    (const char **) calls [i]->argv, calls [i]->argvlen);
            replies++;
        }
    redisAppendCommand (self->redis, "PEXPIRE %s %d", KILN_KEY_RUNNERS, VIEW_TTL_MS);
    redisAppendCommand (self->redis, "PEXPIRE %s %d", KILN_KEY_WORKERS, VIEW_TTL_MS);
    redisAppendCommand (self->redis, "EXEC");
    replies += 3;
    s_call_destroy (&runners);
    s_call_destroy (&workers);
    for (int i = 0; i < replies; i++) {
        redisReply *reply = NULL;
        if (redisGetReply (self->redis, (void **) &reply) != REDIS_OK || !reply) {
            s_redis_lost (self, "the runners' view");
            return;
        }
        if (reply->type == REDIS_REPLY_ERROR)
            kiln_log_error ("redis: writing the runners' view: %s", reply->str);
        freeReplyObject (reply);
    }
}

//  Renews, in one command, the lease of every request whose runner's
//  heartbeats list it (or that was sent too recently to be listed yet).
//  XX: a request completed or re-queued meanwhile does not come back.
static void
s_renew_leases (kiln_broker_t *self)
{
    size_t count = zhashx_size (self->inflight);
    if (!self->redis || count == 0 || count > INT32_MAX / 4)
        return;
    s_call_t *call = s_call_new (3 + 2 * (int) count);
    if (!call)
        return;
    int64_t now = kiln_mono_ms ();
    int rc = s_call_add_str (call, "ZADD")
           | s_call_add_str (call, KILN_KEY_INFLIGHT)
           | s_call_add_str (call, "XX");
    int64_t lease = kiln_now_ms () + LEASE_MS;
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner && rc == 0; runner = (s_runner_t *) zhashx_next (self->runners))
        for (s_held_t *held = (s_held_t *) zhashx_first (runner->requests);
             held && rc == 0; held = (s_held_t *) zhashx_next (runner->requests))
            if (now - held->listed_ms <= LEASE_MS || now - held->sent_ms <= UNLISTED_GRACE_MS)
                rc = s_call_add_int (call, lease)
                   | s_call_add_str (call, (const char *) zhashx_cursor (runner->requests));
    if (rc != 0 || call->argc == 3) {
        s_call_destroy (&call);
        return;
    }
    //  Not kept through an outage: the next tick renews again.
    s_call_run (self, &call, false, "lease renewal");
}

//  Re-queues each request whose lease ran out while no runner we know
//  holds it: its runner died, or lost it, while no broker listened (a
//  restart). Live runners say hello again within REGISTRATION_GRACE_MS
//  of our start and are given their requests back first (adoption), so
//  this waits that long. One that REQUEUE finds not in progress is a
//  stale entry: it leaves kiln:inflight.
static void
s_expire_leases (kiln_broker_t *self)
{
    if (!self->redis || kiln_mono_ms () - self->started_ms <= REGISTRATION_GRACE_MS)
        return;
    redisReply *ids = s_command (self, "ZRANGEBYSCORE %s -inf %" PRId64 " LIMIT 0 %d",
                                 KILN_KEY_INFLIGHT, kiln_now_ms (), EXPIRE_BATCH);
    if (!ids)
        return;
    size_t total = ids->type == REDIS_REPLY_ARRAY? ids->elements: 0;
    const char **expired = calloc (total + 1, sizeof *expired);
    s_call_t **calls = calloc (total + 1, sizeof *calls);
    redisReply **apps = calloc (total + 1, sizeof *apps);
    redisReply **answers = calloc (total + 1, sizeof *answers);
    s_call_t *stale = s_call_new (2 + (int) total);
    size_t count = 0;
    if (!expired || !calls || !apps || !answers || !stale
    ||  s_call_add_str (stale, "ZREM") || s_call_add_str (stale, KILN_KEY_INFLIGHT))
        goto done;
    //  Round trip one: the app of each (for the log); two: REQUEUE each
    for (size_t i = 0; i < total; i++) {
        const redisReply *id = ids->element [i];
        if (id->type != REDIS_REPLY_STRING || !kiln_id_valid (id->str)
        ||  zhashx_lookup (self->inflight, id->str))
            continue;
        s_call_t *call = s_call_key ("HGET", kiln_key_request (id->str).s, "app");
        if (!call)
            continue;
        expired [count] = id->str;
        calls [count++] = call;
    }
    s_pipeline (self, calls, count, apps);
    size_t requeues = 0;
    for (size_t i = 0; i < count; i++) {
        s_call_destroy (&calls [i]);
        s_call_t *call = s_requeue_call (expired [i], true, false, self->cfg->result_retention_s);
        if (call) {
            //  Packed: expired [] and apps [] follow the calls that exist
            expired [requeues] = expired [i];
            redisReply *app = apps [i];
            apps [i] = NULL;
            apps [requeues] = app;
            calls [requeues++] = call;
        }
        else
        if (apps [i]) {
            freeReplyObject (apps [i]);
            apps [i] = NULL;
        }
    }
    count = requeues;
    s_pipeline (self, calls, count, answers);
    for (size_t i = 0; i < count; i++) {
        const char *app = apps [i] && apps [i]->type == REDIS_REPLY_STRING? apps [i]->str: "?";
        if (answers [i] && answers [i]->type == REDIS_REPLY_INTEGER) {
            s_requeue_log (expired [i], app, true, "its lease ran out and no runner holds it",
                           answers [i]->integer);
            //  Not in progress: a stale entry, which leaves kiln:inflight
            if (answers [i]->integer == REQUEUE_NOT_RUNNING)
                s_call_add_str (stale, expired [i]);
        }
        else
        if (answers [i] && answers [i]->type == REDIS_REPLY_ERROR)
            kiln_log_error ("redis: REQUEUE failed: %s", answers [i]->str);
    }
    if (stale->argc > 2)
        s_call_run (self, &stale, false, "ZREM of stale leases");
done:
    for (size_t i = 0; i < count; i++) {
        s_call_destroy (&calls [i]);
        if (apps [i])
            freeReplyObject (apps [i]);
        if (answers [i])
            freeReplyObject (answers [i]);
    }
    s_call_destroy (&stale);
    free (expired);
    free (calls);
    free (apps);
    free (answers);
    freeReplyObject (ids);
}

//  Ends each request that has run longer than its app's request_timeout
//  with 504 request_timeout, and kills its runner: a handler that does
//  not return in time may never return. The runner's other requests go
//  back to their queue, counted (they were running too).
static void
s_check_request_timeouts (kiln_broker_t *self)
{
    int64_t now = kiln_mono_ms ();
    zlistx_t *ids = zhashx_keys (self->runners);
    for (const char *runner_id = zlistx_first (ids); runner_id; runner_id = zlistx_next (ids)) {
        s_runner_t *runner = (s_runner_t *) zhashx_lookup (self->runners, runner_id);
        s_app_t *app = runner? (s_app_t *) zhashx_lookup (self->apps, runner->app): NULL;
        if (!app || !app->manifest || zhashx_size (runner->requests) == 0)
            continue;
        int64_t timeout_ms = (int64_t) app->manifest->request_timeout * 1000;
        bool timed_out = false;
        zlistx_t *late = zhashx_keys (runner->requests);
        for (const char *id = late? zlistx_first (late): NULL; id; id = zlistx_next (late)) {
            s_held_t *held = (s_held_t *) zhashx_lookup (runner->requests, id);
            if (!held || now - held->sent_ms <= timeout_ms)
                continue;
            char *detail = zsys_sprintf ("Request did not finish within the app's "
                                         "request_timeout (%d s); its runner was stopped",
                                         app->manifest->request_timeout);
            s_unhold (self, runner, id);
            s_fail_request (self, id, runner->app, 504, detail? detail: "Request timed out",
                            "request_timeout");
            zstr_free (&detail);
            timed_out = true;
        }
        zlistx_destroy (&late);
        if (timed_out) {
            char *app_name = strdup (runner->app);
            s_runner_kill (self, runner, "a request ran past its request_timeout");
            if (app_name)
                s_dispatch (self, app_name, false);
            free (app_name);
        }
    }
    zlistx_destroy (&ids);
}

static int
s_on_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    kiln_broker_t *self = (kiln_broker_t *) arg;
    s_redis_reconnect (self);
    s_sub_reconnect (self);
    s_pending_flush (self);
    s_check_liveness (self);
    s_offered_refresh (self);
    s_send_heartbeats (self);
    s_expire_deadlines (self);
    s_check_request_timeouts (self);
    s_renew_leases (self);
    s_expire_leases (self);
    s_sweep_apps (self);
    s_reap_workers (self);
    s_settle (self);
    s_publish_view (self);
    return 0;
}

//  -------------------------------------------------------------------------
//  Life cycle

kiln_broker_t *
kiln_broker_new (const kiln_config_t *cfg)
{
    kiln_broker_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->workers = zhashx_new ();
    self->runners = zhashx_new ();
    self->apps = zhashx_new ();
    self->inflight = zhashx_new ();
    self->pending = zlistx_new ();
    self->deferred = zlistx_new ();
    self->dirty = zhashx_new ();
    self->loop = zloop_new ();
    self->router = zsock_new (ZMQ_ROUTER);
    if (!self->workers || !self->runners || !self->apps || !self->inflight
    ||  !self->pending || !self->deferred || !self->dirty || !self->loop || !self->router) {
        kiln_broker_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->workers, s_worker_free);
    zhashx_set_destructor (self->runners, s_runner_free);
    zhashx_set_destructor (self->apps, s_app_free);
    zlistx_set_destructor (self->pending, s_call_free);
    zlistx_set_destructor (self->deferred, s_call_free);

    //  Mandatory: a send to a peer that is gone fails, instead of
    //  vanishing with a request in it. Handover: a worker that restarts
    //  with its old id takes its address back at once.
    zsock_set_router_mandatory (self->router, 1);
    zsock_set_router_handover (self->router, 1);
    zsock_set_sndtimeo (self->router, SEND_TIMEOUT_MS);
    zsock_set_linger (self->router, LINGER_MS);
    if (zsock_bind (self->router, "%s", cfg->broker_endpoint) < 0) {
        kiln_log_error ("cannot bind %s: %s", cfg->broker_endpoint, zmq_strerror (zmq_errno ()));
        kiln_broker_destroy (&self);
        return NULL;
    }
    self->offered = zhashx_new ();
    if (!self->offered) {
        kiln_broker_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->offered, (zhashx_destructor_fn *) zstr_free);
    self->started_ms = kiln_mono_ms ();
    self->deferred_timer = -1;
    self->redis_backoff_ms = self->sub_backoff_ms = REDIS_BACKOFF_MIN_MS;
    zloop_reader (self->loop, self->router, s_on_router, self);
    zloop_timer (self->loop, HEARTBEAT_INTERVAL_MS, 0, s_on_timer, self);
    s_redis_reconnect (self);
    s_sub_reconnect (self);
    kiln_log_info ("listening on %s; redis %s", cfg->broker_endpoint, cfg->redis_url);
    return self;
}

void
kiln_broker_destroy (kiln_broker_t **self_p)
{
    kiln_broker_t *self = *self_p;
    if (!self)
        return;
    if (self->sub && self->loop)
        zloop_poller_end (self->loop, &self->sub_item);
    zloop_destroy (&self->loop);
    zsock_destroy (&self->router);
    if (self->redis)
        redisFree (self->redis);
    if (self->sub)
        redisFree (self->sub);
    if (self->pending && zlistx_size (self->pending) > 0)
        kiln_log_error ("%zu result(s) could not be recorded: Redis is away",
                        zlistx_size (self->pending));
    zlistx_destroy (&self->pending);
    if (self->deferred && zlistx_size (self->deferred) > 0)
        kiln_log_warn ("%zu log write(s) or result(s) not sent: Redis is away",
                       zlistx_size (self->deferred));
    zlistx_destroy (&self->deferred);
    zhashx_destroy (&self->dirty);
    zhashx_destroy (&self->inflight);
    zhashx_destroy (&self->runners);
    zhashx_destroy (&self->workers);
    zhashx_destroy (&self->apps);
    zhashx_destroy (&self->offered);
    free (self);
    *self_p = NULL;
}

//  SIGTERM: takes no new work, but records the RESULTs of what runs for
//  up to SHUTDOWN_GRACE_MS, or until nothing is in flight. Heartbeats and
//  lease renewals go on meanwhile. What has not finished by then keeps
//  its lease in Redis: its runner says hello to the next broker, which
//  adopts it. A second signal ends the drain at once.
static void
s_drain (kiln_broker_t *self)
{
    self->stopping = true;
    zsys_interrupted = 0;
    int64_t deadline = kiln_mono_ms () + SHUTDOWN_GRACE_MS;
    int64_t next_tick = 0;
    size_t running = zhashx_size (self->inflight);
    if (running)
        kiln_log_info ("stopping: waiting up to %d ms for %zu running request(s)",
                       SHUTDOWN_GRACE_MS, running);
    while (zhashx_size (self->inflight) > 0 && kiln_mono_ms () < deadline && !zsys_interrupted) {
        if (kiln_mono_ms () >= next_tick) {
            s_redis_reconnect (self);
            s_pending_flush (self);
            s_send_heartbeats (self);
            s_renew_leases (self);
            next_tick = kiln_mono_ms () + HEARTBEAT_INTERVAL_MS;
        }
        zmq_pollitem_t item = { zsock_resolve (self->router), 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, 100) > 0 && (item.revents & ZMQ_POLLIN))
            s_on_router (self->loop, self->router, self);
    }
    s_flush (self);
    s_pending_flush (self);
    running = zhashx_size (self->inflight);
    if (running)
        kiln_log_warn ("stopping with %zu request(s) still running: they keep their "
                       "leases for the next broker", running);
}

int
kiln_broker_run (kiln_broker_t *self)
{
    zloop_start (self->loop);
    s_drain (self);
    //  Peers that hear DISCONNECT say hello again, to whichever broker
    //  comes up next on this endpoint.
    size_t told = 0;
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers), told++)
        s_send_simple (self, KILN_MSG_DISCONNECT, worker->id);
    for (s_runner_t *runner = (s_runner_t *) zhashx_first (self->runners);
         runner; runner = (s_runner_t *) zhashx_next (self->runners))
        if (runner->state != RUNNER_STARTING) {
            s_send_simple (self, KILN_MSG_DISCONNECT, runner->id);
            told++;
        }
    kiln_log_info ("stopping; told %zu peer(s)", told);
    return 0;
}
