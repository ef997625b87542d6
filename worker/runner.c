/*  =========================================================================
    kiln-runner — serves one app: loads its .so, runs setup() once, then
    answers the broker's REQUESTs with the app's handlers

        kiln-runner --describe APP.so   print the app's manifest (JSON), exit
        kiln-runner --describe FILE.py::Class   the same for a Python app
        kiln-runner APP.so              serve it (started by kiln-worker)
        kiln-runner BUNDLE-DIR          serve a process app (an unpacked
                                        bundle; docs/PROCESS_APPS.md)

    A process app runs as our child, python3 -m kiln.serve (the python3
    of its requirements' virtual environment, worker/venv.h, when it has
    some), spoken to in frames over its stdin and stdout; then there are
    no executors: a REQUEST becomes a `request` frame, `log` frames
    become LOGs, `file` frames join the request's RESULT, a `result`
    frame is the RESULT, CANCEL becomes `cancel`, SIGTERM becomes `stop`.
    Its death is ours.

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
    | HEARTBEAT    | →   | every HEARTBEAT_INTERVAL_MS, listing every request we     |
    |              |     | hold (running, or waiting for an executor): the broker    |
    |              |     | renews their leases and runs one we do not list elsewhere |
    | REQUEST      | ←   | queued, then given to a free executor                     |
    | LOG          | →   | kiln_request_log() lines: those of a handler's first      |
    |              |     | LOG_HOLD_MS just before its RESULT, later ones at once;   |
    |              |     | a request's lines waiting together go as one LOG          |
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

    Between the main thread and each executor: fields of the executor
    under one mutex (s_shared_t.lock), ownership passing with the message.
    Main wakes an executor with its semaphore; an executor wakes main
    with one eventfd that main polls (one write per wake-up, however much
    is waiting), so a request costs no zmq_poll of executor sockets.

    | field    | dir           | carries                                 |
    |----------|---------------|-----------------------------------------|
    | request  | main → exec   | the REQUEST to run                      |
    | logs     | exec → main   | LOGs to forward: held until the handler |
    |          |               | returns (then they go with its RESULT,  |
    |          |               | one wake-up), or for LOG_HOLD_MS at     |
    |          |               | most: after that `streaming` is set and |
    |          |               | each line wakes main at once            |
    | result   | exec → main   | the RESULT (`finished`); the executor   |
    |          |               | is free again                           |
    =========================================================================
*/
#include "runner.h"
#include "sdk.h"
#include "bundle.h"
#include "frame.h"
#include "venv.h"
#include "kiln_config.h"
#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_manifest.h"
#include "kiln_msg.h"
#include "kiln_util.h"

#include <czmq.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HEARTBEAT_INTERVAL_MS    1000
#define HEARTBEAT_LIVENESS       3
//  How soon a SIGTERM is noticed when it lands on another thread.
#define SIGNAL_CHECK_INTERVAL_MS 100
//  How long the last messages (RESULTs, DISCONNECT) may take to leave.
#define LINGER_MS                1000
//  Executors at most, whatever max_multiplexing asks for.
#define MAX_EXECUTORS            64
//  How long a handler's LOG lines may wait to leave with its RESULT: a
//  handler still running then streams them, each as it comes.
#define LOG_HOLD_MS              2
//  LOG lines an executor holds at most for main: a handler that logs
//  faster than main forwards waits, as it did on a full pipe.
#define LOG_HOLD_MAX             1000
//  Lines of one request sent as one LOG at most (as the worker batches).
#define LOG_BATCH_MAX            64

static volatile sig_atomic_t s_terminate = 0;

static void
s_on_signal (int signum)
{
    (void) signum;
    s_terminate = 1;
}

//  -------------------------------------------------------------------------
//  Process apps (docs/PROCESS_APPS.md): a child speaks frames on its stdin
//  and stdout. Its stdout is read without blocking by the main loop, with
//  a frame parser (frame.c) that keeps what a partial read left; frames
//  to its stdin are written whole (blocking: kiln.serve reads stdin on a
//  thread of its own, so it drains even while its handlers are busy).

//  Where kiln's Python package lives (python/kiln); the build sets it.
#ifndef KILN_PYTHON_DIR
#   define KILN_PYTHON_DIR "/usr/local/share/kiln/python"
#endif
#define PROCESS_PROTOCOL_VERSION 1
//  After `stop` and the last result: how long teardown() may take.
#define CHILD_STOP_WAIT_MS       30000


//  The kiln Python package's directory: $KILN_PYTHON_DIR, else the build's.
static const char *
s_python_dir (void)
{
    const char *dir = getenv ("KILN_PYTHON_DIR");
    return dir && *dir? dir: KILN_PYTHON_DIR;
}

//  Starts `python3 -m kiln.serve entry [class]` with pipes on its stdin and
//  stdout (non-blocking on our side); its stderr is ours. python is the
//  interpreter: the app's virtual environment's, or NULL for python3 on
//  the PATH. Returns the pid, or -1 with *error.
static pid_t
s_spawn_python (const char *python, const char *entry, const char *class_name, bool describe,
                int *to_child, int *from_child, char **error)
{
    python = python? python: "python3";
    int in_pipe [2], out_pipe [2];
    if (pipe2 (in_pipe, O_CLOEXEC) != 0) {
        *error = zsys_sprintf ("cannot make a pipe: %s", strerror (errno));
        return -1;
    }
    if (pipe2 (out_pipe, O_CLOEXEC) != 0) {
        *error = zsys_sprintf ("cannot make a pipe: %s", strerror (errno));
        close (in_pipe [0]);
        close (in_pipe [1]);
        return -1;
    }
    //  Made before the fork: a forked child only execs.
    const char *old_path = getenv ("PYTHONPATH");
    char *python_path = old_path && *old_path? zsys_sprintf ("PYTHONPATH=%s:%s", s_python_dir (), old_path):
                                              zsys_sprintf ("PYTHONPATH=%s", s_python_dir ());
    pid_t parent = getpid ();
    pid_t pid = python_path? fork (): -1;
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        if (getppid () != parent)
            _exit (127);
        dup2 (in_pipe [0], STDIN_FILENO);
        dup2 (out_pipe [1], STDOUT_FILENO);
        putenv (python_path);
        if (describe)
            putenv ((char *) "KILN_DESCRIBE=1");
        else
            unsetenv ("KILN_DESCRIBE");
        signal (SIGPIPE, SIG_DFL);
        signal (SIGTERM, SIG_DFL);
        signal (SIGINT, SIG_DFL);
        if (class_name)
            execlp (python, python, "-m", "kiln.serve", entry, class_name, (char *) NULL);
        else
            execlp (python, python, "-m", "kiln.serve", entry, (char *) NULL);
        fprintf (stderr, "kiln-runner: cannot run %s: %s\n", python, strerror (errno));
        _exit (127);
    }
    int saved = errno;
    free (python_path);
    close (in_pipe [0]);
    close (out_pipe [1]);
    if (pid < 0) {
        *error = zsys_sprintf ("cannot start %s: %s", python, strerror (saved));
        close (in_pipe [1]);
        close (out_pipe [0]);
        return -1;
    }
    fcntl (out_pipe [0], F_SETFL, fcntl (out_pipe [0], F_GETFL) | O_NONBLOCK);
    *to_child = in_pipe [1];
    *from_child = out_pipe [0];
    return pid;
}

//  Waits for the child up to timeout_ms, then kills it. Its wait status.
static int
s_reap (pid_t pid, int timeout_ms)
{
    int status = 0;
    int64_t deadline = kiln_mono_ms () + timeout_ms;
    while (true) {
        pid_t done = waitpid (pid, &status, WNOHANG);
        if (done == pid)
            return status;
        if (done < 0 && errno != EINTR)
            return 0;
        if (kiln_mono_ms () >= deadline) {
            kill (pid, SIGKILL);
            while (waitpid (pid, &status, 0) < 0 && errno == EINTR)
                ;
            return status;
        }
        zclock_sleep (20);
    }
}

//  "exit status 3" / "killed by signal 9 (Killed)", for reports.
static char *
s_wait_status_text (int status)
{
    if (WIFSIGNALED (status))
        return zsys_sprintf ("killed by signal %d (%s)", WTERMSIG (status), strsignal (WTERMSIG (status)));
    return zsys_sprintf ("exit status %d", WIFEXITED (status)? WEXITSTATUS (status): -1);
}

//  Reads frames until one of `type` (ready or describe) or the timeout.
//  Returns its header (caller decrefs), or NULL with *error: the app's
//  setup_failed error, or why the process could not get there. When the
//  process ended, it is reaped and *pid_p set to 0.
static json_t *
s_wait_for (kiln_frame_reader_t *reader, pid_t *pid_p, const char *type, int64_t timeout_ms, char **error)
{
    int64_t deadline = kiln_mono_ms () + timeout_ms;
    while (true) {
        json_t *header = NULL;
        uint8_t *body = NULL;
        size_t body_size = 0;
        char *why = NULL;
        int rc = kiln_frame_read (reader, &header, &body, &body_size, &why);
        free (body);
        if (rc == 1) {
            const char *got = json_string_value (json_object_get (header, "type"));
            if (streq (got, type)) {
                json_t *protocol = json_object_get (header, "protocol");
                if (!json_is_integer (protocol) || json_integer_value (protocol) != PROCESS_PROTOCOL_VERSION) {
                    *error = zsys_sprintf ("the app speaks process protocol %s; this runner speaks %d",
                                           json_is_integer (protocol)? "another version": "no version",
                                           PROCESS_PROTOCOL_VERSION);
                    json_decref (header);
                    return NULL;
                }
                if (!json_is_object (json_object_get (header, "manifest"))) {
                    *error = zsys_sprintf ("the app's %s frame has no manifest", type);
                    json_decref (header);
                    return NULL;
                }
                return header;
            }
            if (streq (got, "setup_failed")) {
                json_t *reason = json_object_get (header, "error");
                *error = strdup (json_is_string (reason)? json_string_value (reason):
                                                          "the app's setup failed");
                json_decref (header);
                return NULL;
            }
            kiln_log_warn ("the app sent '%s' before '%s'; ignored", got, type);
            json_decref (header);
            continue;
        }
        if (rc == -1) {
            int status = s_reap (*pid_p, 1000);
            *pid_p = 0;
            char *how = s_wait_status_text (status);
            *error = zsys_sprintf ("the app's process ended before it was ready (%s)%s%s",
                                   how? how: "?", why? ": ": "", why? why: "");
            free (how);
            free (why);
            return NULL;
        }
        int64_t left = deadline - kiln_mono_ms ();
        if (left <= 0) {
            *error = zsys_sprintf ("the app was not ready within %" PRId64 " s", timeout_ms / 1000);
            return NULL;
        }
        struct pollfd item = { reader->fd, POLLIN, 0 };
        poll (&item, 1, (int) (left < 1000? left: 1000));
    }
}

//  kiln-runner --describe FILE.py[::Class]: the app's manifest, with its
//  kind, for kiln deploy.
static int
s_describe_python (const char *target)
{
    char *entry = strdup (target);
    if (!entry)
        return KILN_RUNNER_EXIT_FAILED;
    char *class_name = strstr (entry, "::");
    if (class_name) {
        *class_name = 0;
        class_name += 2;
    }
    char *error = NULL;
    kiln_frame_reader_t reader;
    memset (&reader, 0, sizeof (reader));
    int to_child = -1;
    pid_t pid = s_spawn_python (NULL, entry, class_name && *class_name? class_name: NULL, true,
                                &to_child, &reader.fd, &error);
    free (entry);
    if (pid < 0) {
        fprintf (stderr, "kiln-runner: %s\n", error? error: "cannot start python3");
        free (error);
        return KILN_RUNNER_EXIT_FAILED;
    }
    close (to_child);
    json_t *header = s_wait_for (&reader, &pid, "describe", 30000, &error);
    if (pid > 0) {
        kill (pid, SIGKILL);
        s_reap (pid, 5000);
    }
    kiln_frame_reader_reset (&reader);
    close (reader.fd);
    if (!header) {
        fprintf (stderr, "kiln-runner: %s\n", error? error: "the app did not describe itself");
        free (error);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    json_t *manifest = json_object_get (header, "manifest");
    json_object_set_new (manifest, "kind", json_string (KILN_MANIFEST_KIND_PYTHON));
    char *text = json_dumps (manifest, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (header);
    if (!text)
        return KILN_RUNNER_EXIT_FAILED;
    //  The same rules the gateway applies, with the field named.
    char *reason = NULL;
    kiln_manifest_t *checked = kiln_manifest_from_json (text, strlen (text), &reason);
    if (!checked) {
        fprintf (stderr, "kiln-runner: invalid app: %s\n", reason? reason: "bad manifest");
        free (reason);
        free (text);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    kiln_manifest_destroy (&checked);
    printf ("%s\n", text);
    free (text);
    return fflush (stdout) == 0? KILN_RUNNER_EXIT_OK: KILN_RUNNER_EXIT_FAILED;
}

//  What every executor reads: the first three fixed while they run, the
//  rest the hand-over between them and main.
typedef struct {
    const kiln_app_t *app;
    void *state;
    const char *public_url;
    bool ready;                     //  lock and wakeup made
    pthread_mutex_t lock;           //  guards signalled and each executor's hand-over
    int wakeup;                     //  eventfd: an executor writes, main polls
    bool signalled;                 //  written since main last took what waits
} s_shared_t;

typedef struct {
    s_shared_t *shared;
    pthread_t thread;
    bool started;                   //  thread and conditions made
    sem_t wake;                     //  main → executor: posted per request, and to stop
    pthread_cond_t room;            //  main → a handler's logger: logs taken
    //  The hand-over, under shared->lock
    kiln_msg_t *request;            //  to run
    bool stop;                      //  end the thread once idle
    zlist_t *logs;                  //  LOGs (kiln_msg_t *) for main to send
    bool streaming;                 //  each LOG wakes main at once
    bool finished;                  //  its handler returned: result is main's
    kiln_msg_t *result;             //  NULL when it could not be made
    //  The main thread's own
    zlist_t *spare_logs;            //  swapped with logs, so taking them allocates nothing
    bool busy;
    char *request_id;               //  what it runs, while busy
    //  zloop ticket ending the LOG hold, or NULL: tickets, not timers, as
    //  there is one per request and a timer's id would wrap in time
    void *hold_ticket;
    void *runner;                   //  the s_runner_t it works for
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
    zmq_pollitem_t wakeup_item;     //  shared.wakeup, in the loop
    size_t busy_count;
    zlist_t *pending;               //  REQUESTs (kiln_msg_t *) waiting for an executor
    int64_t broker_seen_ms;         //  monotonic: last message from the broker
    bool broker_drained;            //  the heartbeat read the broker this loop pass
    int64_t hello_sent_ms;
    bool hello_due;
    bool stopping;                  //  SIGTERM seen: finish, take no more
    bool done;                      //  nothing left to wait for
    //  A process app (docs/PROCESS_APPS.md) instead of a .so
    bool process;
    pid_t child;                    //  its pid, or 0
    int child_in;                   //  its stdin (we write frames), or -1
    kiln_frame_reader_t reader;        //  its stdout (reader.fd), or -1
    zmq_pollitem_t child_item;
    size_t slots;                   //  max_multiplexing: frames in flight at most
    zhashx_t *inflight;             //  request_id → s_inflight_t, sent and unanswered
    zhashx_t *cancel_early;         //  request_ids cancelled while still pending
    bool stop_sent;                 //  `stop` written: draining answers are genuine
    bool child_gone;                //  it exited after `stop`, as it should
    bool crashed;                   //  it died or broke the protocol
    char *child_error;              //  why it counts as crashed
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

//  With shared->lock held: true when the caller is the one to wake main
//  (s_wake_main), once until main takes what waits.
static bool
s_wake_due (s_shared_t *shared)
{
    if (shared->signalled)
        return false;
    shared->signalled = true;
    return true;
}

//  Best after releasing shared->lock: main, woken, takes it at once.
static void
s_wake_main (s_shared_t *shared)
{
    uint64_t one = 1;
    //  It cannot fail short of a counter near 2^64 that main never read.
    if (write (shared->wakeup, &one, sizeof (one)) == -1)
        kiln_log_error ("cannot wake the main thread: %s", strerror (errno));
}

//  A handler's LOG line (kiln_request_log, on any thread of the app's):
//  held for main, which sends it with the RESULT; once the handler has
//  run LOG_HOLD_MS (streaming), main is woken for it at once.
static void
s_emit (kiln_msg_t **msg_p, void *arg)
{
    s_executor_t *self = (s_executor_t *) arg;
    s_shared_t *shared = self->shared;
    bool wake = false;
    pthread_mutex_lock (&shared->lock);
    //  A logger faster than main waits for room, as on a full pipe.
    while (zlist_size (self->logs) >= LOG_HOLD_MAX && !self->stop) {
        if (s_wake_due (shared))
            s_wake_main (shared);
        pthread_cond_wait (&self->room, &shared->lock);
    }
    if (!self->stop && zlist_append (self->logs, *msg_p) == 0) {
        *msg_p = NULL;              //  the caller destroys what we did not take
        wake = self->streaming && s_wake_due (shared);
    }
    pthread_mutex_unlock (&shared->lock);
    if (wake)
        s_wake_main (shared);
}

static kiln_msg_t *
s_serve (s_executor_t *self, const kiln_msg_t *request)
{
    s_shared_t *shared = self->shared;
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
    kiln_request_t *req = kiln_sdk_request_new (request, shared->public_url, s_emit, self);
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

//  An executor's thread: runs the requests main gives it, one at a time,
//  until main says stop.
static void *
s_executor (void *args)
{
    s_executor_t *self = (s_executor_t *) args;
    s_shared_t *shared = self->shared;
    while (true) {
        //  A semaphore, not a condition: woken, we find the lock free
        //  (glibc's condition wait takes it back marked contended, which
        //  costs its unlock a system call).
        while (sem_wait (&self->wake) == -1 && errno == EINTR)
            ;
        pthread_mutex_lock (&shared->lock);
        kiln_msg_t *request = self->request;
        self->request = NULL;
        bool stop = self->stop;
        pthread_mutex_unlock (&shared->lock);
        if (!request && stop)
            break;                  //  stopped, and idle
        if (!request)
            continue;

        kiln_msg_t *result = s_serve (self, request);
        if (!result)
            kiln_log_error ("request %s: out of memory making its RESULT", request->request_id);
        kiln_msg_destroy (&request);

        pthread_mutex_lock (&shared->lock);
        //  Finished even with no RESULT: it is also how main knows we are free.
        self->result = result;
        self->finished = true;
        bool wake = s_wake_due (shared);
        pthread_mutex_unlock (&shared->lock);
        if (wake)
            s_wake_main (shared);
    }
    return NULL;
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

static void s_process_dispatch (s_runner_t *self);
static bool s_check_stop (s_runner_t *self);
static void s_process_cancel (s_runner_t *self, const char *request_id);
static void s_process_crashed (s_runner_t *self, char *why);
static int s_on_log_hold_end (zloop_t *loop, int timer_id, void *arg);

static void
s_dispatch (s_runner_t *self)
{
    if (self->process) {
        s_process_dispatch (self);
        return;
    }
    for (size_t i = 0; i < self->executor_count && zlist_size (self->pending) > 0; i++) {
        s_executor_t *executor = &self->executors [i];
        if (executor->busy)
            continue;
        kiln_msg_t *request = (kiln_msg_t *) zlist_pop (self->pending);
        //  Copied first: the request is the executor's once handed over
        char *request_id = strdup (request->request_id);
        if (!request_id) {
            kiln_log_error ("request %s: out of memory handing it to an executor", request->request_id);
            kiln_sdk_cancel_set (request->request_id, false);
            kiln_msg_destroy (&request);
            continue;
        }
        //  Its LOG lines wait for its RESULT until this fires; with no
        //  timer they stream from the start.
        executor->hold_ticket = zloop_ticket (self->loop, s_on_log_hold_end, executor);
        pthread_mutex_lock (&self->shared.lock);
        executor->request = request;
        executor->streaming = executor->hold_ticket == NULL;
        pthread_mutex_unlock (&self->shared.lock);
        //  After the unlock: woken, it takes the lock without a wait
        sem_post (&executor->wake);
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
        //  The process finishes its running requests, runs teardown()
        //  and exits; we wait for its last results.
        if (self->process && !self->crashed) {
            json_t *stop = json_pack ("{s:s}", "type", "stop");
            if (stop && kiln_frame_write (self->child_in, stop, NULL, 0) == -1)
                s_process_crashed (self, zsys_sprintf ("cannot write to the app's stdin: %s", strerror (errno)));
            self->stop_sent = true;
        }
    }
    if (self->crashed)
        self->done = true;
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
    if (self->process) {
        s_process_cancel (self, request_id);
        return;
    }
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

//  -------------------------------------------------------------------------
//  Serving a process app: requests become frames, frames become LOGs and
//  RESULTs

typedef struct {
    int64_t sent_ms;                //  monotonic: when its request frame went
    kiln_msg_file_t *files;
    size_t file_count;
} s_inflight_t;

static void
s_inflight_destroy (void **item_p)
{
    s_inflight_t *self = (s_inflight_t *) *item_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->file_count; i++) {
        free (self->files [i].id);
        free (self->files [i].content_type);
        free (self->files [i].file_name);
        free (self->files [i].data);
    }
    free (self->files);
    free (self);
    *item_p = NULL;
}

//  A copy cut to the wire's string limit, at a UTF-8 character boundary.
static char *
s_wire_string (const char *text)
{
    size_t len = strlen (text);
    if (len >= KILN_MSG_MAX_STRING_BYTES) {
        len = KILN_MSG_MAX_STRING_BYTES - 1;
        while (len > 0 && ((unsigned char) text [len] & 0xC0) == 0x80)
            len--;
    }
    return strndup (text, len);
}

static const char *
s_header_string (json_t *header, const char *key)
{
    return json_string_value (json_object_get (header, key));
}

//  The child's death, or a frame we cannot trust: the runner crashes.
static void
s_process_crashed (s_runner_t *self, char *why)
{
    if (!self->child_error)
        self->child_error = why;
    else
        free (why);
    self->crashed = true;
}

static void
s_process_log (s_runner_t *self, const char *request_id, const char *level, const char *message,
               const char *source, int64_t timestamp_ms)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_LOG);
    kiln_msg_log_t *entry = msg? calloc (1, sizeof (kiln_msg_log_t)): NULL;
    if (!entry) {
        kiln_msg_destroy (&msg);
        return;
    }
    msg->logs = entry;
    msg->log_count = 1;
    msg->request_id = strdup (request_id);
    entry->level = strdup (level);
    entry->message = s_wire_string (message);
    entry->source = strdup (source);
    entry->timestamp_ms = timestamp_ms;
    if (!msg->request_id || !entry->level || !entry->message || !entry->source) {
        kiln_msg_destroy (&msg);
        return;
    }
    s_send (self, &msg);
}

static void
s_process_send_request (s_runner_t *self, kiln_msg_t **request_p)
{
    kiln_msg_t *request = *request_p;
    *request_p = NULL;
    json_t *header = json_pack ("{s:s, s:s, s:s, s:s}", "type", "request",
                                "request_id", request->request_id, "path", request->path,
                                "content_type", request->content_type? request->content_type: "");
    s_inflight_t *inflight = calloc (1, sizeof (s_inflight_t));
    if (!header || !inflight) {
        json_decref (header);
        free (inflight);
        s_process_crashed (self, strdup ("out of memory sending a request"));
        kiln_msg_destroy (&request);
        return;
    }
    inflight->sent_ms = kiln_mono_ms ();
    zhashx_update (self->inflight, request->request_id, inflight);
    self->busy_count++;
    if (kiln_frame_write (self->child_in, header, request->body, request->body_size) == -1) {
        s_process_crashed (self, zsys_sprintf ("cannot write to the app's stdin: %s", strerror (errno)));
        kiln_msg_destroy (&request);
        return;
    }
    //  Cancelled while it waited for a free slot: the handler sees it
    //  from its start.
    if (zhashx_lookup (self->cancel_early, request->request_id)) {
        zhashx_delete (self->cancel_early, request->request_id);
        json_t *cancel = json_pack ("{s:s, s:s}", "type", "cancel", "request_id", request->request_id);
        if (cancel && kiln_frame_write (self->child_in, cancel, NULL, 0) == -1)
            s_process_crashed (self, zsys_sprintf ("cannot write to the app's stdin: %s", strerror (errno)));
    }
    kiln_msg_destroy (&request);
}

static void
s_process_dispatch (s_runner_t *self)
{
    while (!self->crashed && self->busy_count < self->slots && zlist_size (self->pending) > 0) {
        kiln_msg_t *request = (kiln_msg_t *) zlist_pop (self->pending);
        s_process_send_request (self, &request);
    }
}

static void
s_process_cancel (s_runner_t *self, const char *request_id)
{
    if (zhashx_lookup (self->inflight, request_id)) {
        kiln_log_info ("request %s: cancelled by its client", request_id);
        json_t *cancel = json_pack ("{s:s, s:s}", "type", "cancel", "request_id", request_id);
        if (cancel && kiln_frame_write (self->child_in, cancel, NULL, 0) == -1)
            s_process_crashed (self, zsys_sprintf ("cannot write to the app's stdin: %s", strerror (errno)));
        return;
    }
    for (kiln_msg_t *request = (kiln_msg_t *) zlist_first (self->pending); request;
         request = (kiln_msg_t *) zlist_next (self->pending))
        if (streq (request->request_id, request_id)) {
            kiln_log_info ("request %s: cancelled by its client before it started", request_id);
            zhashx_update (self->cancel_early, request_id, (void *) 1);
            return;
        }
    kiln_log_debug ("CANCEL for request %s, which we do not hold; ignored", request_id);
}

//  A result frame: the request's RESULT. Takes the body.
static void
s_process_result (s_runner_t *self, json_t *header, const char *request_id, uint8_t **body_p,
                  size_t body_size)
{
    s_inflight_t *inflight = (s_inflight_t *) zhashx_lookup (self->inflight, request_id);
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RESULT);
    if (!msg)
        return;
    json_t *status = json_object_get (header, "status");
    const char *error = s_header_string (header, "error");
    const char *error_type = s_header_string (header, "error_type");
    msg->request_id = strdup (request_id);
    msg->content_type = s_wire_string (s_header_string (header, "content_type"));
    msg->inference_ms = (uint64_t) (kiln_mono_ms () - inflight->sent_ms);
    if (json_integer_value (status) < 100 || json_integer_value (status) > 599) {
        kiln_log_warn ("request %s: the app answered status %" JSON_INTEGER_FORMAT "; made a 500",
                       request_id, json_integer_value (status));
        msg->status = 500;
        msg->error = strdup ("The app answered an invalid HTTP status");
        msg->error_type = strdup ("runner_server_error");
        free (msg->content_type);
        msg->content_type = strdup ("application/json");
        const char *body = "{\"detail\":\"The app answered an invalid HTTP status\","
                           "\"error_type\":\"runner_server_error\"}";
        msg->body = (uint8_t *) strdup (body);
        msg->body_size = strlen (body);
    }
    else {
        msg->status = (int32_t) json_integer_value (status);
        msg->body = *body_p;
        msg->body_size = body_size;
        *body_p = NULL;
        if (error)
            msg->error = s_wire_string (error);
        //  runner_draining tells the broker "never started, run it again
        //  uncounted": only true once we asked the process to stop.
        if (error_type && streq (error_type, KILN_ERROR_TYPE_RUNNER_DRAINING) && !self->stop_sent)
            error_type = "app_error";
        if (error_type)
            msg->error_type = s_wire_string (error_type);
    }
    msg->files = inflight->files;
    msg->file_count = inflight->file_count;
    inflight->files = NULL;
    inflight->file_count = 0;
    zhashx_delete (self->inflight, request_id);
    zhashx_delete (self->cancel_early, request_id);
    self->busy_count--;
    if (!msg->request_id || !msg->content_type) {
        kiln_log_error ("request %s: out of memory making its RESULT", request_id);
        kiln_msg_destroy (&msg);
    }
    else
        s_send (self, &msg);
    if (!self->stopping)
        s_process_dispatch (self);
}

//  A file frame: kept for the request's RESULT. Takes the body.
static void
s_process_file (s_runner_t *self, json_t *header, const char *request_id, uint8_t **body_p,
                size_t body_size)
{
    s_inflight_t *inflight = (s_inflight_t *) zhashx_lookup (self->inflight, request_id);
    const char *id = s_header_string (header, "id");
    const char *problem = NULL;
    if (!kiln_id_valid (id))
        problem = "its id is not a valid UUID";
    else
    if (inflight->file_count >= KILN_MSG_MAX_ITEMS)
        problem = "the request has too many files already";
    kiln_msg_file_t *files = problem? NULL:
        realloc (inflight->files, (inflight->file_count + 1) * sizeof (kiln_msg_file_t));
    if (!problem && !files)
        problem = "out of memory";
    if (problem) {
        char *line = zsys_sprintf ("a file from the app was dropped: %s", problem);
        kiln_log_warn ("request %s: %s", request_id, line? line: problem);
        s_process_log (self, request_id, "WARN", line? line: problem, "runner", kiln_now_ms ());
        free (line);
        return;
    }
    inflight->files = files;
    kiln_msg_file_t *file = &files [inflight->file_count++];
    file->id = strdup (id);
    file->content_type = s_wire_string (s_header_string (header, "content_type"));
    file->file_name = s_wire_string (s_header_string (header, "file_name"));
    file->data = *body_p;
    file->size = body_size;
    *body_p = NULL;
}

static void
s_process_frame (s_runner_t *self, json_t *header, uint8_t **body_p, size_t body_size)
{
    const char *type = s_header_string (header, "type");
    if (!streq (type, "log") && !streq (type, "file") && !streq (type, "result")) {
        kiln_log_warn ("the app sent a '%.100s' frame while serving; ignored", type);
        return;
    }
    const char *missing = kiln_frame_missing (header, type);
    if (missing) {
        s_process_crashed (self, zsys_sprintf ("protocol error: a '%s' frame without %s", type, missing));
        return;
    }
    const char *request_id = s_header_string (header, "request_id");
    if (!zhashx_lookup (self->inflight, request_id)) {
        kiln_log_warn ("the app sent a '%s' frame for request %.100s, which it is not serving; dropped",
                       type, request_id);
        return;
    }
    if (streq (type, "log")) {
        const char *level = s_header_string (header, "level");
        if (!streq (level, "DEBUG") && !streq (level, "INFO") && !streq (level, "WARN") && !streq (level, "ERROR"))
            level = "INFO";
        json_t *timestamp = json_object_get (header, "timestamp");
        s_process_log (self, request_id, level, s_header_string (header, "message"), "app",
                       timestamp? (int64_t) json_number_value (timestamp): kiln_now_ms ());
    }
    else
    if (streq (type, "file"))
        s_process_file (self, header, request_id, body_p, body_size);
    else
        s_process_result (self, header, request_id, body_p, body_size);
}

static int
s_on_child (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    (void) item;
    s_runner_t *self = (s_runner_t *) arg;
    while (!self->crashed) {
        json_t *header = NULL;
        uint8_t *body = NULL;
        size_t body_size = 0;
        char *error = NULL;
        int rc = kiln_frame_read (&self->reader, &header, &body, &body_size, &error);
        if (rc == 0)
            break;
        if (rc == -1) {
            if (!error && self->stop_sent && self->busy_count == 0)
                self->child_gone = true;        //  it stopped, as asked
            else
                s_process_crashed (self, error? error: strdup ("the app's process closed its stdout"));
            break;
        }
        s_process_frame (self, header, &body, body_size);
        json_decref (header);
        free (body);
    }
    return s_check_stop (self)? -1: 0;
}

static int
s_on_broker (zloop_t *loop, zsock_t *sock, void *arg)
{
    (void) loop;
    s_runner_t *self = (s_runner_t *) arg;
    //  The heartbeat timer may have read what zloop saw waiting (it runs
    //  timers before readers): then a recv would block. Asked only then,
    //  as asking costs two system calls.
    if (self->broker_drained) {
        self->broker_drained = false;
        if (!(zsock_events (sock) & ZMQ_POLLIN))
            return 0;
    }
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
    return self->crashed && s_check_stop (self)? -1: 0;
}

//  Moves msg's lines to the end of batch's when both are one request's
//  and the batch has room; true when moved (msg is left with none).
static bool
s_log_join (kiln_msg_t *batch, kiln_msg_t *msg)
{
    if (!batch->request_id || !msg->request_id || !streq (batch->request_id, msg->request_id)
    ||  batch->log_count + msg->log_count > LOG_BATCH_MAX)
        return false;
    size_t count = batch->log_count + msg->log_count;
    kiln_msg_log_t *logs = realloc (batch->logs, count * sizeof (kiln_msg_log_t));
    if (!logs)
        return false;
    memcpy (logs + batch->log_count, msg->logs, msg->log_count * sizeof (kiln_msg_log_t));
    batch->logs = logs;
    batch->log_count = count;
    free (msg->logs);
    msg->logs = NULL;
    msg->log_count = 0;
    return true;
}

//  Sends an executor's LOGs, emptying the list: a request's lines in a
//  row go as one LOG, one broker message and one script there.
static void
s_send_logs (s_runner_t *self, zlist_t *logs)
{
    kiln_msg_t *batch = NULL;
    kiln_msg_t *msg;
    while ((msg = (kiln_msg_t *) zlist_pop (logs))) {
        if (batch && s_log_join (batch, msg)) {
            kiln_msg_destroy (&msg);
            continue;
        }
        if (batch)
            s_send (self, &batch);
        batch = msg;
    }
    if (batch)
        s_send (self, &batch);
}

//  An executor's LOGs, with shared.lock held: the list, swapped for the
//  spare one (main empties it with s_send_logs and gives it back as the
//  spare), or NULL when there are none.
static zlist_t *
s_take_logs (s_executor_t *executor)
{
    if (zlist_size (executor->logs) == 0)
        return NULL;
    zlist_t *logs = executor->logs;
    executor->logs = executor->spare_logs;
    executor->spare_logs = NULL;
    pthread_cond_broadcast (&executor->room);
    return logs;
}

//  Takes what an executor has for main, with shared.lock held: its LOGs
//  (s_take_logs) and, once its handler returned, its RESULT. True when
//  it finished.
static bool
s_take (s_executor_t *executor, zlist_t **logs_p, kiln_msg_t **result_p)
{
    *logs_p = s_take_logs (executor);
    bool finished = executor->finished;
    *result_p = executor->result;
    executor->finished = false;
    executor->result = NULL;
    return finished;
}

//  An executor's handler returned: its RESULT goes, and it takes the
//  next request.
static void
s_finished (s_runner_t *self, s_executor_t *executor, kiln_msg_t **result_p)
{
    kiln_msg_t *result = *result_p;
    *result_p = NULL;
    //  That error_type tells the broker "never started, run it again
    //  uncounted": a handler saying so could loop a request forever.
    if (result && result->error_type && streq (result->error_type, KILN_ERROR_TYPE_RUNNER_DRAINING)) {
        free (result->error_type);
        result->error_type = strdup ("app_error");
    }
    if (result)
        s_send (self, &result);
    if (executor->hold_ticket)
        zloop_ticket_delete (self->loop, executor->hold_ticket);
    executor->hold_ticket = NULL;
    if (executor->busy) {
        executor->busy = false;
        self->busy_count--;
        //  Its handler is done: a late CANCEL finds nothing to mark
        kiln_sdk_cancel_set (executor->request_id, false);
        zstr_free (&executor->request_id);
    }
}

//  An executor woke us (shared.wakeup): everything every executor has
//  for us goes, each one's LOGs before its RESULT.
static int
s_on_executors (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    (void) item;
    s_runner_t *self = (s_runner_t *) arg;
    //  Read before we take: a wake-up written after this read is for
    //  something we may not have taken, so it must stay readable.
    uint64_t count;
    if (read (self->shared.wakeup, &count, sizeof (count)) == -1 && errno != EAGAIN && errno != EINTR)
        kiln_log_warn ("cannot read the executors' eventfd: %s", strerror (errno));
    zlist_t *logs [MAX_EXECUTORS];
    kiln_msg_t *results [MAX_EXECUTORS];
    bool finished [MAX_EXECUTORS];
    pthread_mutex_lock (&self->shared.lock);
    self->shared.signalled = false;
    for (size_t i = 0; i < self->executor_count; i++)
        finished [i] = s_take (&self->executors [i], &logs [i], &results [i]);
    pthread_mutex_unlock (&self->shared.lock);
    bool freed = false;
    for (size_t i = 0; i < self->executor_count; i++) {
        s_executor_t *executor = &self->executors [i];
        if (logs [i]) {
            s_send_logs (self, logs [i]);
            executor->spare_logs = logs [i];
        }
        if (finished [i]) {
            s_finished (self, executor, &results [i]);
            freed = true;
        }
    }
    if (!freed)
        return 0;
    if (!self->stopping)
        s_dispatch (self);
    return s_check_stop (self)? -1: 0;
}

//  A handler ran LOG_HOLD_MS: what it logged goes now, and each line it
//  logs from now on goes at once.
static int
s_on_log_hold_end (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    s_executor_t *executor = (s_executor_t *) arg;
    s_runner_t *self = (s_runner_t *) executor->runner;
    //  zloop deletes the ticket after this call; one whose request
    //  finished was deleted then (s_finished) and never comes here
    executor->hold_ticket = NULL;
    if (!executor->busy)
        return 0;
    pthread_mutex_lock (&self->shared.lock);
    executor->streaming = true;
    zlist_t *logs = s_take_logs (executor);
    pthread_mutex_unlock (&self->shared.lock);
    if (logs) {
        s_send_logs (self, logs);
        executor->spare_logs = logs;
    }
    return 0;
}

//  Starts count executors, and the eventfd by which they wake us, in the
//  loop. -1 when out of threads or memory (s_executors_stop frees what
//  was made).
static int
s_executors_start (s_runner_t *self, size_t count)
{
    s_shared_t *shared = &self->shared;
    shared->wakeup = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (shared->wakeup == -1)
        return -1;
    pthread_mutex_init (&shared->lock, NULL);
    shared->ready = true;
    self->wakeup_item.fd = shared->wakeup;
    self->wakeup_item.events = ZMQ_POLLIN;
    if (zloop_poller (self->loop, &self->wakeup_item, s_on_executors, self) == -1)
        return -1;
    zloop_set_ticket_delay (self->loop, LOG_HOLD_MS);
    for (size_t i = 0; i < count; i++) {
        s_executor_t *executor = &self->executors [i];
        executor->shared = shared;
        executor->hold_ticket = NULL;
        executor->runner = self;
        executor->logs = zlist_new ();
        executor->spare_logs = zlist_new ();
        if (!executor->logs || !executor->spare_logs)
            return -1;
        sem_init (&executor->wake, 0, 0);
        pthread_cond_init (&executor->room, NULL);
        if (pthread_create (&executor->thread, NULL, s_executor, executor) != 0) {
            sem_destroy (&executor->wake);
            pthread_cond_destroy (&executor->room);
            return -1;
        }
        executor->started = true;
        self->executor_count++;
    }
    return 0;
}

//  Ends the executors, once each has finished what it runs, and frees
//  what they held. Safe to call again.
static void
s_executors_stop (s_runner_t *self)
{
    s_shared_t *shared = &self->shared;
    for (size_t i = 0; i < MAX_EXECUTORS; i++) {
        s_executor_t *executor = &self->executors [i];
        if (executor->started) {
            pthread_mutex_lock (&shared->lock);
            executor->stop = true;
            pthread_cond_broadcast (&executor->room);
            pthread_mutex_unlock (&shared->lock);
            sem_post (&executor->wake);
            pthread_join (executor->thread, NULL);
            sem_destroy (&executor->wake);
            pthread_cond_destroy (&executor->room);
            executor->started = false;
        }
        for (int list = 0; list < 2; list++) {
            zlist_t **logs_p = list? &executor->spare_logs: &executor->logs;
            kiln_msg_t *msg;
            while (*logs_p && (msg = (kiln_msg_t *) zlist_pop (*logs_p)))
                kiln_msg_destroy (&msg);
            zlist_destroy (logs_p);
        }
        kiln_msg_destroy (&executor->request);
        kiln_msg_destroy (&executor->result);
        kiln_sdk_cancel_set (executor->request_id, false);
        zstr_free (&executor->request_id);
    }
    self->executor_count = 0;
    if (shared->ready) {
        pthread_mutex_destroy (&shared->lock);
        close (shared->wakeup);
        shared->ready = false;
    }
}

//  Adds a copy of the id to the heartbeat's list; false when out of room
//  or memory (the list is then cut short).
static bool
s_heartbeat_add (kiln_msg_t *msg, const char *request_id)
{
    if (!request_id || msg->request_count >= KILN_MSG_MAX_ITEMS)
        return false;
    char *copy = strdup (request_id);
    if (!copy)
        return false;
    msg->requests [msg->request_count++] = copy;
    return true;
}

//  A HEARTBEAT listing every request we hold: running (an executor's, or
//  sent to the app's process) or waiting for a free executor. The broker
//  renews their leases, and takes one we do not list for lost (its
//  REQUEST or our RESULT went missing) and runs it again elsewhere.
static kiln_msg_t *
s_heartbeat_new (s_runner_t *self)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_HEARTBEAT);
    size_t held = zlist_size (self->pending) + self->executor_count
                + (self->inflight? zhashx_size (self->inflight): 0);
    if (!msg || held == 0)
        return msg;
    msg->requests = calloc (held < KILN_MSG_MAX_ITEMS? held: KILN_MSG_MAX_ITEMS, sizeof (char *));
    if (!msg->requests)
        return msg;
    for (size_t i = 0; i < self->executor_count; i++)
        if (self->executors [i].busy)
            s_heartbeat_add (msg, self->executors [i].request_id);
    if (self->inflight) {
        zlistx_t *ids = zhashx_keys (self->inflight);
        for (const char *id = ids? (const char *) zlistx_first (ids): NULL; id;
             id = (const char *) zlistx_next (ids))
            s_heartbeat_add (msg, id);
        zlistx_destroy (&ids);
    }
    for (kiln_msg_t *request = (kiln_msg_t *) zlist_first (self->pending); request;
         request = (kiln_msg_t *) zlist_next (self->pending))
        s_heartbeat_add (msg, request->request_id);
    return msg;
}

static int
s_on_heartbeat (zloop_t *loop, int timer_id, void *arg)
{
    (void) timer_id;
    s_runner_t *self = (s_runner_t *) arg;
    //  After a busy spell zloop runs its timers before its readers: a
    //  REQUEST waiting unread is ours too, and must be listed, or the
    //  broker takes it for lost. (A crash seen here ends the loop on
    //  the next tick.)
    for (int i = 0; i < KILN_MSG_MAX_ITEMS && (zsock_events (self->broker) & ZMQ_POLLIN); i++)
        s_on_broker (loop, self->broker, self);
    self->broker_drained = true;
    kiln_msg_t *msg = s_heartbeat_new (self);
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

//  Reads a bundle's kiln.json (worker/bundle.h): its manifest, the app's
//  file and class. 0, or an exit code with the reason written.
static int
s_process_load (s_runner_t *self, const char *dir, char **entry_path, char **class_name)
{
    char *path = zsys_sprintf ("%s/" KILN_BUNDLE_DESCRIPTION, dir);
    size_t size = 0;
    char *text = path? (char *) kiln_read_file (path, &size): NULL;
    free (path);
    kiln_bundle_meta_t meta;
    char *reason = NULL;
    if (!text)
        reason = zsys_sprintf ("%s is not an app bundle: its " KILN_BUNDLE_DESCRIPTION
                               " cannot be read: %s", dir, strerror (errno));
    else
    if (kiln_bundle_meta_parse (text, size, &meta, &reason) == 0) {
        self->manifest = meta.manifest;
        meta.manifest = NULL;
        *entry_path = zsys_sprintf ("%s/%s", dir, meta.entry);
        *class_name = meta.class_name;
        meta.class_name = NULL;
        kiln_bundle_meta_free (&meta);
    }
    free (text);
    if (reason || !self->manifest) {
        fprintf (stderr, "kiln-runner: %s\n", reason? reason: "out of memory");
        s_write_status (reason? reason: "out of memory");
        free (reason);
        return KILN_RUNNER_EXIT_INVALID_APP;
    }
    return 0;
}

//  Starts the process and waits for its `ready`. 0, or an exit code with
//  the reason written.
static int
s_process_setup (s_runner_t *self, const char *entry_path, const char *class_name)
{
    char *reason = NULL;
    //  One startup_timeout for all of it, as the broker counts it: the
    //  requirements (installing them, or waiting for the runner that
    //  does) and the app's setup.
    int64_t deadline_ms = kiln_mono_ms () + (int64_t) self->manifest->startup_timeout * 1000;
    //  With requirements, the interpreter of their virtual environment
    //  (worker/venv.h), built by the first runner that needs it.
    char *python = NULL;
    if (self->manifest->requirement_count > 0)
        python = kiln_venv_ensure (self->manifest->requirements, self->manifest->requirement_count,
                                   deadline_ms, &reason);
    if (!reason) {
        self->child = s_spawn_python (python, entry_path, class_name, false, &self->child_in,
                                      &self->reader.fd, &reason);
        if (self->child < 0)
            self->child = 0;
    }
    free (python);
    if (!reason) {
        int64_t left_ms = deadline_ms - kiln_mono_ms ();
        json_t *ready = s_wait_for (&self->reader, &self->child, "ready",
                                    left_ms > 0? left_ms: 1, &reason);
        json_decref (ready);
    }
    if (reason) {
        fprintf (stderr, "kiln-runner: setup failed: %s\n", reason);
        s_write_status (reason);
        free (reason);
        return KILN_RUNNER_EXIT_SETUP_FAILED;
    }
    self->slots = (size_t) self->manifest->max_multiplexing;
    self->inflight = zhashx_new ();
    self->cancel_early = zhashx_new ();
    if (!self->inflight || !self->cancel_early) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        return KILN_RUNNER_EXIT_FAILED;
    }
    zhashx_set_destructor (self->inflight, s_inflight_destroy);
    return 0;
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
    s_executors_stop (self);
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
    zhashx_destroy (&self->inflight);
    zhashx_destroy (&self->cancel_early);
    if (self->child_in >= 0)
        close (self->child_in);
    if (self->reader.fd >= 0)
        close (self->reader.fd);
    kiln_frame_reader_reset (&self->reader);
    if (self->child > 0) {
        kill (self->child, SIGKILL);
        s_reap (self->child, 5000);
    }
    free (self->child_error);
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

    //  A directory is an unpacked bundle: a process app.
    struct stat info;
    self->process = stat (path, &info) == 0 && S_ISDIR (info.st_mode);
    char *entry_path = NULL, *class_name = NULL;
    if (self->process) {
        int rc = s_process_load (self, path, &entry_path, &class_name);
        if (rc != 0)
            return rc;
    }
    //  The app's .so stays loaded until we exit: its threads or atexit
    //  handlers may still point into it.
    void *handle = NULL;
    char *error = NULL;
    self->app = self->process? NULL: s_load (path, &handle, &error);
    const char *manifest_error = NULL;
    if (self->app)
        self->manifest = kiln_manifest_from_app (self->app, &manifest_error);
    if (!self->process && (!self->app || !self->manifest)) {
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
        free (entry_path);
        free (class_name);
        return KILN_RUNNER_EXIT_FAILED;
    }
    //  The broker socket is made and connected before setup() runs: the
    //  TCP connect and the ZMTP handshake, on ZeroMQ's I/O thread, then
    //  take place while setup runs, and the hello leaves as soon as it
    //  returns. The broker hears nothing from us until the hello.
    self->broker = zsock_new (ZMQ_DEALER);
    self->pending = zlist_new ();
    self->loop = zloop_new ();
    if (!self->broker || !self->pending || !self->loop) {
        fprintf (stderr, "kiln-runner: out of memory\n");
        free (entry_path);
        free (class_name);
        return KILN_RUNNER_EXIT_FAILED;
    }
    zsock_set_identity (self->broker, self->runner_id);
    zsock_set_sndtimeo (self->broker, 0);
    if (zsock_connect (self->broker, "%s", endpoint) == -1) {
        fprintf (stderr, "kiln-runner: cannot connect to %s: %s\n", endpoint, zmq_strerror (zmq_errno ()));
        s_write_status ("cannot connect to the broker");
        free (entry_path);
        free (class_name);
        return KILN_RUNNER_EXIT_USAGE;
    }

    if (self->process) {
        kiln_log_info ("starting %s (%s::%s) for %s", self->manifest->name, entry_path,
                       class_name, self->app_name);
        int64_t started_ms = kiln_mono_ms ();
        int rc = s_process_setup (self, entry_path, class_name);
        free (entry_path);
        free (class_name);
        if (rc != 0)
            return rc;
        kiln_log_info ("the app's process %d is ready after %" PRId64 " ms",
                       (int) self->child, kiln_mono_ms () - started_ms);
    }
    else {

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
    }

    //  From now on SIGTERM is ours, not czmq's (which would end the loop
    //  at once): the running handlers finish, then teardown() runs. Until
    //  here it ended the process at once, a hung setup() included.
    struct sigaction action;
    memset (&action, 0, sizeof (action));
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);

    //  max_multiplexing executors: the app promised its handlers are safe
    //  to call that many at once (kiln/app.h).
    size_t executors = (size_t) (self->manifest->max_multiplexing > 0? self->manifest->max_multiplexing: 1);
    if (executors > MAX_EXECUTORS || self->process)
        executors = self->process? 0: MAX_EXECUTORS;
    if (executors > 0 && s_executors_start (self, executors) == -1) {
        fprintf (stderr, "kiln-runner: cannot start executor threads\n");
        return KILN_RUNNER_EXIT_FAILED;
    }
    if (self->process) {
        self->child_item.fd = self->reader.fd;
        self->child_item.events = ZMQ_POLLIN;
        zloop_poller (self->loop, &self->child_item, s_on_child, self);
        //  A closed pipe polls as an error: that is how we see the end.
        zloop_poller_set_tolerant (self->loop, &self->child_item);
    }
    zloop_reader (self->loop, self->broker, s_on_broker, self);
    zloop_timer (self->loop, HEARTBEAT_INTERVAL_MS, 0, s_on_heartbeat, self);
    zloop_timer (self->loop, SIGNAL_CHECK_INTERVAL_MS, 0, s_on_tick, self);

    self->broker_seen_ms = kiln_mono_ms ();
    s_hello (self);
    kiln_log_info ("serving %s at %s with %zu executor(s)", self->app_name, endpoint, executors);

    //  zloop_start also returns when a signal interrupts its poll.
    while (!s_check_stop (self))
        if (zloop_start (self->loop) == -1 && self->crashed)
            break;

    if (self->process) {
        if (self->crashed) {
            //  The app's death is ours: the broker finishes its requests
            //  as for any crashed runner.
            kill (self->child, SIGKILL);
            int status = s_reap (self->child, 5000);
            self->child = 0;
            char *how = s_wait_status_text (status);
            char *reason = zsys_sprintf ("the app's process crashed (%s): %s", how? how: "?",
                                         self->child_error? self->child_error: "unknown");
            kiln_log_error ("%s", reason? reason: "the app's process crashed");
            s_write_status (reason? reason: "the app's process crashed");
            free (reason);
            free (how);
            return KILN_RUNNER_EXIT_FAILED;
        }
        //  It got `stop` and answered everything: teardown() runs there.
        close (self->child_in);
        self->child_in = -1;
        int status = s_reap (self->child, CHILD_STOP_WAIT_MS);
        self->child = 0;
        char *how = s_wait_status_text (status);
        kiln_log_info ("the app's process ended (%s)", how? how: "?");
        free (how);
    }
    //  Every executor is idle: they end, then teardown() runs alone.
    s_executors_stop (self);
    if (self->app && self->app->teardown) {
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
    runner.child_in = -1;
    runner.reader.fd = -1;
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
        "       kiln-runner --describe FILE.py::Class   the same, for a Python app\n"
        "       kiln-runner APP.so|BUNDLE-DIR   serve the app (started by kiln-worker)\n");
}

int
main (int argc, char *argv [])
{
    if (argc == 3 && streq (argv [1], "--describe")) {
        kiln_log_init ("kiln-runner", getenv ("KILN_LOG_LEVEL"));
        //  FILE.py or FILE.py::Class: a Python app
        const char *target = argv [2];
        const char *classes = strstr (target, "::");
        size_t len = classes? (size_t) (classes - target): strlen (target);
        if (len >= 3 && strncmp (target + len - 3, ".py", 3) == 0) {
            signal (SIGPIPE, SIG_IGN);
            return s_describe_python (target);
        }
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
