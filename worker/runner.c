/*  =========================================================================
    kiln-runner — serves one app: loads its .so, runs setup() once, then
    answers the broker's REQUESTs with the app's handlers

        kiln-runner --describe APP.so   print the app's manifest (JSON), exit
        kiln-runner APP.so              serve it (started by kiln-worker)

    The worker starts one runner per (app, slot) with the environment of
    worker/runner.h. A crash in app code kills only this process; the
    worker reports it. Handlers run on executor threads (one per
    max_multiplexing, at most MAX_EXECUTORS) so that this main thread
    keeps talking to the broker, heartbeats included, however long a
    handler takes.

    Messages, on one DEALER socket (identity = runner id) to the broker:

    | message      | dir | when                                                      |
    |--------------|-----|-----------------------------------------------------------|
    | RUNNER_HELLO | →   | after setup(), with its GPU (CUDA_VISIBLE_DEVICES); again |
    |              |     | when the broker is silent for HEARTBEAT_LIVENESS          |
    |              |     | intervals or says DISCONNECT                              |
    | HEARTBEAT    | →   | every HEARTBEAT_INTERVAL_MS                               |
    | REQUEST      | ←   | queued, then given to a free executor                     |
    | LOG          | →   | at once, for each kiln_request_log() line                 |
    | RESULT       | →   | when a handler returns (404 for an unknown path, 500 for  |
    |              |     | a handler that returned -1); once stopping, at once for   |
    |              |     | each request no handler started: 503 runner_draining,     |
    |              |     | which the broker re-queues without counting an attempt    |
    | CANCEL       | ←   | its client cancelled a request we hold: marked, so that   |
    |              |     | kiln_request_cancelled() says so to its handler (now, or  |
    |              |     | when it starts); one we do not hold is ignored            |
    | HEARTBEAT    | ←   | any message from the broker proves it alive               |
    | DISCONNECT   | ←   | the broker lost us (it restarted): say hello again        |
    | DISCONNECT   | →   | on SIGTERM, after the busy handlers finished and          |
    |              |     | teardown() ran                                            |

    SIGTERM is ours to handle only once setup() has returned: during
    setup it ends the process at once, so a setup that hangs is killed
    as soon as the broker gives up on it.

    Between the main thread and each executor (inproc pipe, pointers to
    kiln_msg_t, ownership passing with the message):

    | command  | dir           | carries                        |
    |----------|---------------|--------------------------------|
    | REQUEST  | main → exec   | the REQUEST                    |
    | LOG      | exec → main   | a LOG to forward               |
    | RESULT   | exec → main   | the RESULT; the executor is free again |
    =========================================================================
*/
#include "runner.h"
#include "sdk.h"
#include "kiln_config.h"
#include "kiln_log.h"
#include "kiln_manifest.h"
#include "kiln_msg.h"
#include "kiln_util.h"

#include <czmq.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define HEARTBEAT_INTERVAL_MS    1000
#define HEARTBEAT_LIVENESS       3
//  How soon a SIGTERM is noticed when it lands on another thread.
#define SIGNAL_CHECK_INTERVAL_MS 100
//  How long the last messages (RESULTs, DISCONNECT) may take to leave.
#define LINGER_MS                1000
//  Executors at most, whatever max_multiplexing asks for.
#define MAX_EXECUTORS            64

static volatile sig_atomic_t s_terminate = 0;

static void
s_on_signal (int signum)
{
    (void) signum;
    s_terminate = 1;
}

//  What every executor reads; fixed while they run.
typedef struct {
    const kiln_app_t *app;
    void *state;
    const char *public_url;
} s_shared_t;

typedef struct {
    zactor_t *actor;
    bool busy;
    char *request_id;               //  what it runs, while busy
} s_executor_t;

typedef struct {
    const kiln_app_t *app;
    kiln_manifest_t *manifest;
    s_shared_t shared;
    char *runner_id;
    char *worker_id;
    char *app_name;
    uint64_t revision;
    int gpu;                        //  from CUDA_VISIBLE_DEVICES, or -1
    zsock_t *broker;
    zloop_t *loop;
    s_executor_t executors [MAX_EXECUTORS];
    size_t executor_count;
    size_t busy_count;
    zlist_t *pending;               //  REQUESTs (kiln_msg_t *) waiting for an executor
    int64_t broker_seen_ms;         //  monotonic: last message from the broker
    int64_t hello_sent_ms;
    bool hello_due;
    bool stopping;                  //  SIGTERM seen: finish, take no more
    bool done;                      //  nothing left to wait for
} s_runner_t;

//  -------------------------------------------------------------------------
//  Loading an app

//  Writes why we could not start where the worker looks for it.
static void
s_write_status (const char *reason)
{
    const char *path = getenv (KILN_ENV_RUNNER_STATUS_FILE);
    if (path && *path && kiln_write_file (path, reason, strlen (reason)) == -1)
        fprintf (stderr, "kiln-runner: cannot write %s: %s\n", path, strerror (errno));
}

//  Loads the .so and finds its descriptor. On failure returns NULL with
//  *error set (malloc'd).
static const kiln_app_t *
s_load (const char *path, void **handle_p, char **error)
{
    //  dlopen searches the library path for a bare name; an artifact is
    //  always a file we were given.
    char *file = strchr (path, '/')? strdup (path): zsys_sprintf ("./%s", path);
    if (!file) {
        *error = strdup ("out of memory");
        return NULL;
    }
    void *handle = dlopen (file, RTLD_NOW | RTLD_LOCAL);
    free (file);
    if (!handle) {
        const char *reason = dlerror ();
        *error = zsys_sprintf ("cannot load %s: %s", path, reason? reason: "unknown error");
        return NULL;
    }
    const kiln_app_t *app = (const kiln_app_t *) dlsym (handle, KILN_APP_SYMBOL);
    if (!app) {
        *error = zsys_sprintf ("%s has no '%s' symbol: not a kiln app "
                               "(build it against kiln/app.h)", path, KILN_APP_SYMBOL);
        dlclose (handle);
        return NULL;
    }
    if (app->abi_version != KILN_APP_ABI_VERSION) {
        *error = zsys_sprintf ("%s was built for app ABI %u; this runner speaks %u",
                               path, (unsigned) app->abi_version, KILN_APP_ABI_VERSION);
        dlclose (handle);
        return NULL;
    }
    *handle_p = handle;
    return app;
}

static int
s_describe (const char *path)
{
    void *handle = NULL;
    char *error = NULL;
    const kiln_app_t *app = s_load (path, &handle, &error);
    if (!app) {
        fprintf (stderr, "kiln-runner: %s\n", error? error: "cannot load the app");
        free (error);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    const char *reason = NULL;
    kiln_manifest_t *manifest = kiln_manifest_from_app (app, &reason);
    if (!manifest) {
        fprintf (stderr, "kiln-runner: %s: invalid app: %s\n", path, reason? reason: "unknown reason");
        dlclose (handle);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    char *json = kiln_manifest_to_json (manifest);
    kiln_manifest_destroy (&manifest);
    dlclose (handle);
    if (!json) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        return KILN_RUNNER_EXIT_FAILED;
    }
    printf ("%s\n", json);
    free (json);
    return fflush (stdout) == 0? KILN_RUNNER_EXIT_OK: KILN_RUNNER_EXIT_FAILED;
}

//  -------------------------------------------------------------------------
//  Executors: each calls handlers, one request at a time

static void
s_emit (kiln_msg_t **msg_p, void *arg)
{
    zsock_t *pipe = (zsock_t *) arg;
    kiln_msg_t *msg = *msg_p;
    *msg_p = NULL;
    if (zsock_send (pipe, "sp", "LOG", msg) == -1)
        kiln_msg_destroy (&msg);
}

static kiln_msg_t *
s_serve (s_shared_t *shared, zsock_t *pipe, const kiln_msg_t *request)
{
    const kiln_endpoint_t *endpoint = shared->app->endpoints;
    while (endpoint && endpoint->path && strcmp (endpoint->path, request->path) != 0)
        endpoint++;
    if (!endpoint || !endpoint->path || !endpoint->handler) {
        char *detail = zsys_sprintf ("No endpoint %s in app", request->path);
        kiln_msg_t *result = kiln_sdk_error_result (request->request_id, 404, "not_found",
                                                    detail? detail: "No such endpoint in app", 0);
        free (detail);
        return result;
    }
    kiln_request_t *req = kiln_sdk_request_new (request, shared->public_url, s_emit, pipe);
    kiln_response_t *resp = kiln_sdk_response_new ();
    if (!req || !resp) {
        kiln_sdk_request_destroy (&req);
        kiln_sdk_response_destroy (&resp);
        return kiln_sdk_error_result (request->request_id, 500, "runner_server_error",
                                      "the runner ran out of memory", 0);
    }
    int64_t started_ms = kiln_mono_ms ();
    int rc = endpoint->handler (shared->state, req, resp);
    uint64_t inference_ms = (uint64_t) (kiln_mono_ms () - started_ms);

    kiln_msg_t *result;
    if (rc == 0)
        result = kiln_sdk_result (req, resp, inference_ms);
    else {
        kiln_log_warn ("request %s: handler for %s failed (returned %d)",
                       request->request_id, request->path, rc);
        result = kiln_sdk_error_result (request->request_id, 500, "runner_server_error",
                                        "The app's handler failed", inference_ms);
    }
    kiln_sdk_request_destroy (&req);
    kiln_sdk_response_destroy (&resp);
    return result;
}

static void
s_executor (zsock_t *pipe, void *args)
{
    s_shared_t *shared = (s_shared_t *) args;
    zsock_signal (pipe, 0);
    while (true) {
        char *command = NULL;
        void *pointer = NULL;
        if (zsock_recv (pipe, "sp", &command, &pointer) == -1)
            break;                  //  interrupted: the context is going away
        bool terminate = !command || streq (command, "$TERM");
        if (command && streq (command, "REQUEST") && pointer) {
            kiln_msg_t *request = (kiln_msg_t *) pointer;
            kiln_msg_t *result = s_serve (shared, pipe, request);
            if (!result)
                kiln_log_error ("request %s: out of memory making its RESULT", request->request_id);
            kiln_msg_destroy (&request);
            //  Sent even when NULL: it is also how main knows we are free.
            if (zsock_send (pipe, "sp", "RESULT", result) == -1)
                kiln_msg_destroy (&result);
        }
        free (command);
        if (terminate)
            break;
    }
}

//  -------------------------------------------------------------------------
//  Main thread: the broker, the executors, the clock

static void
s_send (s_runner_t *self, kiln_msg_t **msg_p)
{
    kiln_msg_type_t type = (*msg_p)->type;
    //  The socket never blocks (SNDTIMEO 0): a message the broker cannot
    //  take now is dropped, and the broker's leases recover from that.
    if (kiln_msg_send (msg_p, self->broker, NULL) == -1)
        kiln_log_warn ("cannot send %s to the broker: %s",
                       kiln_msg_type_name (type), zmq_strerror (zmq_errno ()));
}

static void
s_hello (s_runner_t *self)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RUNNER_HELLO);
    if (!msg)
        return;
    msg->runner_id = strdup (self->runner_id);
    msg->worker_id = strdup (self->worker_id);
    msg->app = strdup (self->app_name);
    msg->revision = self->revision;
    msg->max_multiplexing = (uint32_t) self->manifest->max_multiplexing;
    msg->gpu = self->gpu;
    if (!msg->runner_id || !msg->worker_id || !msg->app) {
        kiln_msg_destroy (&msg);
        return;
    }
    s_send (self, &msg);
    self->hello_sent_ms = kiln_mono_ms ();
    self->hello_due = false;
}

static void
s_dispatch (s_runner_t *self)
{
    for (size_t i = 0; i < self->executor_count && zlist_size (self->pending) > 0; i++) {
        s_executor_t *executor = &self->executors [i];
        if (executor->busy)
            continue;
        kiln_msg_t *request = (kiln_msg_t *) zlist_pop (self->pending);
        //  Copied first: the request is the executor's once sent
        char *request_id = strdup (request->request_id);
        if (!request_id
        ||  zsock_send (zactor_sock (executor->actor), "sp", "REQUEST", request) == -1) {
            kiln_log_error ("request %s: cannot reach an executor", request->request_id);
            kiln_sdk_cancel_set (request->request_id, false);
            kiln_msg_destroy (&request);
            free (request_id);
            continue;
        }
        executor->busy = true;
        executor->request_id = request_id;
        self->busy_count++;
    }
}

//  A request no handler will start: back to the broker, which puts it
//  at the head of its queue for another runner, without counting it as
//  an attempt. Takes the request.
static void
s_hand_back (s_runner_t *self, kiln_msg_t **request_p)
{
    kiln_msg_t *request = *request_p;
    *request_p = NULL;
    kiln_sdk_cancel_set (request->request_id, false);
    kiln_msg_t *result = kiln_sdk_error_result (request->request_id, 503,
                                                KILN_ERROR_TYPE_RUNNER_DRAINING,
                                                "The runner is stopping; the request "
                                                "goes back to its queue", 0);
    if (result)
        s_send (self, &result);
    else
        kiln_log_error ("request %s: out of memory handing it back", request->request_id);
    kiln_msg_destroy (&request);
}

//  Looks at the signal flag; true when the loop should end.
static bool
s_check_stop (s_runner_t *self)
{
    if (s_terminate && !self->stopping) {
        self->stopping = true;
        size_t handed_back = zlist_size (self->pending);
        kiln_msg_t *request;
        while ((request = (kiln_msg_t *) zlist_pop (self->pending)))
            s_hand_back (self, &request);
        kiln_log_info ("stopping: %zu request(s) running, %zu not started handed back",
                       self->busy_count, handed_back);
    }
    if (self->stopping && self->busy_count == 0)
        self->done = true;
    return self->done;
}

//  The broker says the client of a request cancelled it. Handlers see it
//  through kiln_request_cancelled(); a request still waiting for an
//  executor is marked too, so its handler sees it from the start.
static void
s_on_cancel (s_runner_t *self, const char *request_id)
{
    bool held = false;
    for (size_t i = 0; i < self->executor_count && !held; i++)
        held = self->executors [i].busy && self->executors [i].request_id
            && streq (self->executors [i].request_id, request_id);
    for (kiln_msg_t *request = (kiln_msg_t *) zlist_first (self->pending);
         request && !held; request = (kiln_msg_t *) zlist_next (self->pending))
        held = streq (request->request_id, request_id);
    if (held) {
        kiln_log_info ("request %s: cancelled by its client", request_id);
        kiln_sdk_cancel_set (request_id, true);
    }
    else
        //  Finished already (its RESULT crossed the CANCEL), or never ours
        kiln_log_debug ("CANCEL for request %s, which we do not hold; ignored", request_id);
}

static int
s_on_broker (zloop_t *loop, zsock_t *sock, void *arg)
{
    (void) loop;
    s_runner_t *self = (s_runner_t *) arg;
    kiln_msg_t *msg = kiln_msg_recv (sock, NULL);
    if (!msg)
        return 0;                   //  malformed (the codec logged it) or interrupted
    self->broker_seen_ms = kiln_mono_ms ();
    switch (msg->type) {
        case KILN_MSG_REQUEST:
            if (self->stopping) {
                kiln_log_info ("request %s: handed back, stopping", msg->request_id);
                s_hand_back (self, &msg);
            }
            else {
                kiln_log_debug ("request %s: %s (%zu bytes)",
                                msg->request_id, msg->path, msg->body_size);
                if (zlist_append (self->pending, msg) == 0)
                    msg = NULL;
                s_dispatch (self);
            }
            break;
        case KILN_MSG_CANCEL:
            s_on_cancel (self, msg->request_id);
            break;
        case KILN_MSG_HEARTBEAT:
            break;
        case KILN_MSG_DISCONNECT:
            //  The broker does not know us (it restarted): register again,
            //  at most once per interval so a confused broker cannot make
            //  us spin.
            if (self->stopping)
                break;
            kiln_log_info ("the broker asked us to reconnect");
            self->hello_due = true;
            if (kiln_mono_ms () - self->hello_sent_ms >= HEARTBEAT_INTERVAL_MS)
                s_hello (self);
            break;
        default:
            kiln_log_warn ("unexpected %s from the broker; ignored", kiln_msg_type_name (msg->type));
            break;
    }
    kiln_msg_destroy (&msg);
    return 0;
}

static int
s_on_executor (zloop_t *loop, zsock_t *sock, void *arg)
{
    (void) loop;
    s_runner_t *self = (s_runner_t *) arg;
    char *command = NULL;
    void *pointer = NULL;
    if (zsock_recv (sock, "sp", &command, &pointer) == -1)
        return 0;
    kiln_msg_t *msg = (kiln_msg_t *) pointer;
    bool result = command && streq (command, "RESULT");
    free (command);
    //  That error_type tells the broker "never started, run it again
    //  uncounted": a handler saying so could loop a request forever.
    if (msg && msg->type == KILN_MSG_RESULT && msg->error_type
    &&  streq (msg->error_type, KILN_ERROR_TYPE_RUNNER_DRAINING)) {
        free (msg->error_type);
        msg->error_type = strdup ("app_error");
    }
    if (msg)
        s_send (self, &msg);
    if (result) {
        for (size_t i = 0; i < self->executor_count; i++) {
            s_executor_t *executor = &self->executors [i];
            if (zactor_sock (executor->actor) == sock && executor->busy) {
                executor->busy = false;
                self->busy_count--;
                //  Its handler is done: a late CANCEL finds nothing to mark
                kiln_sdk_cancel_set (executor->request_id, false);
                zstr_free (&executor->request_id);
            }
        }
        if (!self->stopping)
            s_dispatch (self);
        return s_check_stop (self)? -1: 0;
    }
    return 0;
}

static int
s_on_heartbeat (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    s_runner_t *self = (s_runner_t *) arg;
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_HEARTBEAT);
    if (msg)
        s_send (self, &msg);
    int64_t now = kiln_mono_ms ();
    //  A stopping runner does not register again: it must not look ready.
    if (!self->stopping
    &&  now - self->broker_seen_ms >= HEARTBEAT_INTERVAL_MS * HEARTBEAT_LIVENESS) {
        kiln_log_warn ("the broker is silent for %" PRId64 " ms; saying hello again",
                       now - self->broker_seen_ms);
        //  Counting from now: the next hello waits another full liveness.
        self->broker_seen_ms = now;
        self->hello_due = true;
    }
    if (self->hello_due && !self->stopping)
        s_hello (self);
    return 0;
}

static int
s_on_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    return s_check_stop ((s_runner_t *) arg)? -1: 0;
}

//  Reads an environment variable, or a default.
static const char *
s_env (const char *name, const char *fallback)
{
    const char *value = getenv (name);
    return value && *value? value: fallback;
}

//  Everything a runner made, whichever way it ends.
static void
s_runner_free (s_runner_t *self)
{
    for (size_t i = 0; i < self->executor_count; i++) {
        zactor_destroy (&self->executors [i].actor);
        kiln_sdk_cancel_set (self->executors [i].request_id, false);
        zstr_free (&self->executors [i].request_id);
    }
    zloop_destroy (&self->loop);
    zsock_destroy (&self->broker);
    if (self->pending) {
        kiln_msg_t *request;
        while ((request = (kiln_msg_t *) zlist_pop (self->pending))) {
            kiln_sdk_cancel_set (request->request_id, false);
            kiln_msg_destroy (&request);
        }
        zlist_destroy (&self->pending);
    }
    kiln_manifest_destroy (&self->manifest);
    free (self->runner_id);
    free (self->worker_id);
    free (self->app_name);
}

//  Loads the app, runs setup(), serves until SIGTERM, runs teardown().
//  Returns the exit code.
static int
s_run (s_runner_t *self, kiln_config_t *config, const char *path)
{
    char generated_id [KILN_UUID_LEN + 3];
    generated_id [0] = 'r';
    generated_id [1] = '-';
    kiln_uuid4 (generated_id + 2);
    self->runner_id = strdup (s_env (KILN_ENV_RUNNER_ID, generated_id));
    self->worker_id = strdup (s_env (KILN_ENV_WORKER_ID, "standalone"));
    if (!self->runner_id || !self->worker_id) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        return KILN_RUNNER_EXIT_FAILED;
    }
    const char *endpoint = s_env (KILN_ENV_BROKER_ENDPOINT, config->broker_endpoint);
    //  KILN_PUBLIC_URL is read by kiln_config already.
    self->shared.public_url = config->public_url;
    const char *revision = s_env (KILN_ENV_REVISION, "0");
    char *end = NULL;
    self->revision = strtoull (revision, &end, 10);
    if (!end || *end)
        self->revision = 0;
    //  One device index is what a worker sets; anything else is not ours
    //  to report.
    const char *gpu = s_env ("CUDA_VISIBLE_DEVICES", "");
    end = NULL;
    long device = strtol (gpu, &end, 10);
    self->gpu = *gpu && end && !*end && device >= 0 && device <= INT32_MAX? (int) device: -1;

    static char log_name [128];
    snprintf (log_name, sizeof (log_name), "kiln-runner[%s]", self->runner_id);
    kiln_log_init (log_name, config->log_level);

    //  The app's .so stays loaded until we exit: its threads or atexit
    //  handlers may still point into it.
    void *handle = NULL;
    char *error = NULL;
    self->app = s_load (path, &handle, &error);
    const char *manifest_error = NULL;
    if (self->app)
        self->manifest = kiln_manifest_from_app (self->app, &manifest_error);
    if (!self->app || !self->manifest) {
        char *reason = error? error: zsys_sprintf ("invalid app: %s", manifest_error? manifest_error: "unknown reason");
        fprintf (stderr, "kiln-runner: %s\n", reason? reason: "invalid app");
        s_write_status (reason? reason: "invalid app");
        free (reason);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    char *default_app = zsys_sprintf ("local/%s", self->manifest->name);
    self->app_name = strdup (s_env (KILN_ENV_APP, default_app? default_app: "local/app"));
    free (default_app);
    if (!self->app_name) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        return KILN_RUNNER_EXIT_FAILED;
    }

    //  setup(), once, before anything can reach us.
    kiln_log_info ("setting up %s (%s) for %s", self->manifest->name, path, self->app_name);
    int64_t setup_started_ms = kiln_mono_ms ();
    kiln_sdk_setup_reset ();
    self->shared.app = self->app;
    self->shared.state = self->app->setup? self->app->setup (): NULL;
    const char *failure = kiln_sdk_setup_failure ();
    if (failure) {
        fprintf (stderr, "kiln-runner: setup failed: %s\n", failure);
        s_write_status (failure);
        return KILN_RUNNER_EXIT_SETUP_FAILED;
    }
    kiln_log_info ("setup done in %" PRId64 " ms", kiln_mono_ms () - setup_started_ms);

    //  From now on SIGTERM is ours, not czmq's (which would end the loop
    //  at once): the running handlers finish, then teardown() runs. Until
    //  here it ended the process at once, a hung setup() included.
    struct sigaction action;
    memset (&action, 0, sizeof (action));
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);

    self->broker = zsock_new (ZMQ_DEALER);
    self->pending = zlist_new ();
    self->loop = zloop_new ();
    if (!self->broker || !self->pending || !self->loop) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        return KILN_RUNNER_EXIT_FAILED;
    }
    zsock_set_identity (self->broker, self->runner_id);
    zsock_set_sndtimeo (self->broker, 0);
    if (zsock_connect (self->broker, "%s", endpoint) == -1) {
        fprintf (stderr, "kiln-runner: cannot connect to %s: %s\n", endpoint, zmq_strerror (zmq_errno ()));
        s_write_status ("cannot connect to the broker");
        return KILN_RUNNER_EXIT_USAGE;
    }

    //  max_multiplexing executors: the app promised its handlers are safe
    //  to call that many at once (kiln/app.h).
    size_t executors = (size_t) (self->manifest->max_multiplexing > 0? self->manifest->max_multiplexing: 1);
    if (executors > MAX_EXECUTORS)
        executors = MAX_EXECUTORS;
    for (size_t i = 0; i < executors; i++) {
        self->executors [i].actor = zactor_new (s_executor, &self->shared);
        if (!self->executors [i].actor) {
            fprintf (stderr, "kiln-runner: cannot start executor threads\n");
            return KILN_RUNNER_EXIT_FAILED;
        }
        self->executor_count++;
        zloop_reader (self->loop, zactor_sock (self->executors [i].actor), s_on_executor, self);
    }
    zloop_reader (self->loop, self->broker, s_on_broker, self);
    zloop_timer (self->loop, HEARTBEAT_INTERVAL_MS, 0, s_on_heartbeat, self);
    zloop_timer (self->loop, SIGNAL_CHECK_INTERVAL_MS, 0, s_on_tick, self);

    self->broker_seen_ms = kiln_mono_ms ();
    s_hello (self);
    kiln_log_info ("serving %s at %s with %zu executor(s)", self->app_name, endpoint, executors);

    //  zloop_start also returns when a signal interrupts its poll.
    while (!s_check_stop (self))
        zloop_start (self->loop);

    //  Every executor is idle: they end, then teardown() runs alone.
    for (size_t i = 0; i < self->executor_count; i++)
        zactor_destroy (&self->executors [i].actor);
    if (self->app->teardown) {
        kiln_log_info ("tearing down");
        self->app->teardown (self->shared.state);
    }
    kiln_msg_t *bye = kiln_msg_new (KILN_MSG_DISCONNECT);
    if (bye)
        s_send (self, &bye);
    zsock_set_linger (self->broker, LINGER_MS);
    kiln_log_info ("stopped");
    return KILN_RUNNER_EXIT_OK;
}

static int
s_serve_app (const char *path)
{
    //  Never outlive the worker: it is the one that reports our exit.
    if (prctl (PR_SET_PDEATHSIG, SIGTERM) == -1)
        fprintf (stderr, "kiln-runner: prctl: %s\n", strerror (errno));
    if (getppid () == 1)
        return KILN_RUNNER_EXIT_FAILED;     //  the worker died before we got here

    //  SIGTERM and SIGINT keep their default (an immediate end) until
    //  setup() returns; s_run installs ours then. czmq must not install
    //  its own when it starts.
    zsys_handler_set (NULL);
    signal (SIGTERM, SIG_DFL);
    signal (SIGINT, SIG_DFL);
    signal (SIGPIPE, SIG_IGN);

    char *config_error = NULL;
    kiln_config_t *config = kiln_config_new (&config_error);
    if (!config) {
        fprintf (stderr, "kiln-runner: %s\n", config_error? config_error: "bad configuration");
        free (config_error);
        return KILN_RUNNER_EXIT_USAGE;
    }
    s_runner_t runner;
    memset (&runner, 0, sizeof (runner));
    int rc = s_run (&runner, config, path);
    s_runner_free (&runner);
    kiln_config_destroy (&config);
    return rc;
}

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: kiln-runner --describe APP.so   print the app's manifest\n"
        "       kiln-runner APP.so              serve the app (started by kiln-worker)\n");
}

int
main (int argc, char *argv [])
{
    if (argc == 3 && streq (argv [1], "--describe")) {
        kiln_log_init ("kiln-runner", getenv ("KILN_LOG_LEVEL"));
        return s_describe (argv [2]);
    }
    if (argc == 2 && (streq (argv [1], "--help") || streq (argv [1], "-h"))) {
        s_usage (stdout);
        return KILN_RUNNER_EXIT_OK;
    }
    if (argc != 2 || argv [1][0] == '-') {
        s_usage (stderr);
        return KILN_RUNNER_EXIT_USAGE;
    }
    return s_serve_app (argv [1]);
}
