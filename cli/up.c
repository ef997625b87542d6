/*  =========================================================================
    up — kiln up: a whole local stack in the foreground

    Starts, in order, and supervises:

    | child          | when                         | ready when              |
    |----------------|------------------------------|-------------------------|
    | redis-server   | KILN_REDIS_URL unset, or     | PING answers PONG       |
    |                | --redis-port given           |                         |
    | kiln-broker    | always                       | (the gateway's health)  |
    | kiln-gateway   | always                       | GET /health is 200      |
    | kiln-worker    | always                       | (registers by itself)   |

    Before the broker, it sets up API keys: the gateway runs with
    KILN_AUTH=required and kiln up's operator key (ADMIN, owner *) is
    saved in {state dir}/key, made once (again when Redis does not know
    it); --no-auth runs the gateway with KILN_AUTH=off, loudly. Then it
    deploys the example apps (kiln deploy's code) and waits.

    | takes            | does                                              |
    |------------------|---------------------------------------------------|
    | SIGINT, SIGTERM  | stops everything, exits 0 (a second one while     |
    |                  | stopping skips the grace period)                  |
    | SIGCHLD          | a child died on its own: says which, stops the    |
    |                  | rest, exits 1                                     |

    | sends            | to                                                |
    |------------------|---------------------------------------------------|
    | SIGTERM          | each child, last started first, one at a time     |
    | SIGKILL          | a child's whole process group, after STOP_GRACE_MS|
    |                  | (the worker's runners are in the worker's group)  |

    Signals are blocked and taken with sigtimedwait, so there is no async
    handler to race with. Each child runs in its own process group (Ctrl-C
    reaches kiln alone, which then stops the children in order) and asks
    the kernel for SIGTERM if kiln itself dies (PR_SET_PDEATHSIG).
    =========================================================================
*/
#include "cli.h"

#include "kiln_auth.h"
#include "kiln_redis.h"
#include "kiln_util.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HEALTH_TIMEOUT_MS 15000     //  gateway start to GET /health = 200
#define HEALTH_PROBE_TIMEOUT_MS 1000
#define REDIS_START_TIMEOUT_MS 15000 //  redis start to PONG (not counting LOADING)
#define REDIS_LOADING_TIMEOUT_MS 600000 //  a big append-only file takes a while
#define REDIS_PROBE_TIMEOUT_MS 500
#define POLL_INTERVAL_MS 100
#define STOP_GRACE_MS 5000          //  per child, SIGTERM to SIGKILL
#define REAP_INTERVAL_MS 20

#define MAX_CHILDREN 4

static const char *s_help_text =
    "usage: kiln up [--dir DIR] [--no-examples] [--redis-port N] [--no-auth]\n"
    "\n"
    "Runs a whole local kiln stack in the foreground: a redis-server (unless\n"
    "KILN_REDIS_URL names one), kiln-broker, kiln-gateway and kiln-worker,\n"
    "then deploys the example apps. Ctrl-C stops everything it started.\n"
    "\n"
    "options:\n"
    "  --dir DIR            state folder: redis data and logs\n"
    "                       (default $KILN_STATE_DIR, else ~/.kiln)\n"
    "  --no-examples        do not deploy the example apps\n"
    "  --redis-port N       start kiln's own redis-server on port N (even when\n"
    "                       KILN_REDIS_URL is set) and point every process at it\n"
    "  --no-auth            run the gateway without API keys (anyone who can reach\n"
    "                       it can call, deploy and read everything)\n"
    KILN_CLI_COMMON_HELP
    "\n"
    "The gateway listens on KILN_HTTP_ADDR (default 127.0.0.1:8080); set KILN_URL\n"
    "to match when you change it (kiln up derives one from the other when only\n"
    "one is set). The broker listens on KILN_BROKER_ENDPOINT.\n"
    "\n"
    "The gateway requires API keys: kiln up makes an operator key (ADMIN, owner\n"
    "*) once, saves it in DIR/key (mode 0600) and the kiln CLI uses it from there\n"
    "when KILN_KEY is not set (with KILN_STATE_DIR=DIR for another --dir).\n";

typedef struct {
    const char *name;               //  for messages: "kiln-gateway"
    pid_t pid;                      //  0 once reaped
} s_child_t;

typedef struct {
    kiln_cli_t *cli;
    sigset_t signals;               //  those we wait for
    s_child_t children [MAX_CHILDREN];
    int child_count;
    char *state_dir;                //  absolute
    char *log_dir;
    bool interrupted;               //  SIGINT or SIGTERM came: stop, exit 0
    bool no_auth;                   //  --no-auth: the gateway checks no keys
    char *key_path;                 //  {state_dir}/key: the operator key, saved
} s_up_t;

//  What happened while we waited.
typedef enum {
    EVENT_NONE = 0,                 //  the timeout passed
    EVENT_STOP = 1,                 //  SIGINT or SIGTERM
    EVENT_CHILD_DIED = 2,           //  reported on stderr already
} s_event_t;

//  Describes a wait status: "exit status 1", "killed by signal 9".
static void
s_describe_status (int status, char *out, size_t size)
{
    if (WIFEXITED (status))
        snprintf (out, size, "exit status %d", WEXITSTATUS (status));
    else
    if (WIFSIGNALED (status))
        snprintf (out, size, "killed by signal %d, %s", WTERMSIG (status),
                  strsignal (WTERMSIG (status)));
    else
        snprintf (out, size, "status %d", status);
}

//  Reaps any child that has exited. Returns the index of the first one
//  found, or -1.
static int
s_reap (s_up_t *self, int *status_p)
{
    int found = -1;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        if (child->pid <= 0)
            continue;
        int status;
        pid_t pid = waitpid (child->pid, &status, WNOHANG);
        if (pid == child->pid || (pid < 0 && errno == ECHILD)) {
            //  Its group may still hold its own children (runners).
            kill (-child->pid, SIGKILL);
            child->pid = 0;
            if (found < 0) {
                found = i;
                *status_p = pid == child->pid ? status : 0;
            }
        }
    }
    return found;
}

//  Waits up to timeout_ms (-1: forever) for a signal we care about.
static s_event_t
s_wait_event (s_up_t *self, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : kiln_mono_ms () + timeout_ms;
    while (true) {
        int status = 0;
        int died = s_reap (self, &status);
        if (died >= 0) {
            char how [96];
            s_describe_status (status, how, sizeof how);
            kiln_cli_fail ("%s exited unexpectedly (%s); stopping the rest",
                           self->children [died].name, how);
            return EVENT_CHILD_DIED;
        }
        siginfo_t info;
        int signal_number;
        if (deadline < 0)
            signal_number = sigwaitinfo (&self->signals, &info);
        else {
            int64_t left = deadline - kiln_mono_ms ();
            if (left < 0)
                left = 0;
            struct timespec timeout = { (time_t) (left / 1000), (long) (left % 1000) * 1000000L };
            signal_number = sigtimedwait (&self->signals, &info, &timeout);
        }
        if (signal_number == SIGINT || signal_number == SIGTERM) {
            self->interrupted = true;
            return EVENT_STOP;
        }
        if (signal_number == SIGCHLD)
            continue;               //  s_reap looks at it
        if (signal_number < 0 && errno == EAGAIN)
            return EVENT_NONE;
        //  EINTR: try again
    }
}

//  Sleeps the poll interval, watching for signals; a non-zero event
//  means stop waiting.
static s_event_t
s_pause (s_up_t *self)
{
    return s_wait_event (self, POLL_INTERVAL_MS);
}

//  Starts a child. argv [0] is the program to run. 0, or non-zero when
//  it failed (reported).
static int
s_start (s_up_t *self, const char *name, char *const argv [], const char *stdout_path)
{
    if (self->child_count >= MAX_CHILDREN)
        return kiln_cli_fail ("internal error: too many children");
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid < 0) {
        kiln_cli_fail ("cannot start %s: %s", name, strerror (errno));
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset (&none);
        sigprocmask (SIG_SETMASK, &none, NULL);
        setpgid (0, 0);
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        if (getppid () != parent)
            _exit (1);          //  kiln died before we asked
        int devnull = open ("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2 (devnull, STDIN_FILENO);
            close (devnull);
        }
        if (stdout_path) {
            int out = open (stdout_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (out >= 0) {
                dup2 (out, STDOUT_FILENO);
                close (out);
            }
        }
        execvp (argv [0], argv);
        fprintf (stderr, "kiln: cannot run %s: %s\n", argv [0], strerror (errno));
        _exit (127);
    }
    setpgid (pid, pid);             //  also here: no window where it is not
    self->children [self->child_count].name = name;
    self->children [self->child_count].pid = pid;
    self->child_count++;
    return 0;
}

//  Stops every child still running, last started first. A second
//  Ctrl-C (or SIGTERM) while stopping skips the grace period.
static void
s_stop_all (s_up_t *self)
{
    bool hurry = false;
    for (int i = self->child_count - 1; i >= 0; i--) {
        s_child_t *child = &self->children [i];
        if (child->pid <= 0)
            continue;
        kill (child->pid, SIGTERM);
        int64_t deadline = kiln_mono_ms () + STOP_GRACE_MS;
        int status;
        pid_t pid = 0;
        while (!hurry && (pid = waitpid (child->pid, &status, WNOHANG)) == 0
        &&     kiln_mono_ms () < deadline) {
            struct timespec pause = { 0, REAP_INTERVAL_MS * 1000000L };
            int signal_number = sigtimedwait (&self->signals, NULL, &pause);
            if (signal_number == SIGINT || signal_number == SIGTERM) {
                fprintf (stderr, "kiln: stopping now\n");
                hurry = true;
            }
        }
        if (pid == 0) {
            if (!hurry)
                fprintf (stderr, "kiln: %s did not stop within %d s; killing it\n",
                         child->name, STOP_GRACE_MS / 1000);
            kill (-child->pid, SIGKILL);
            kill (child->pid, SIGKILL);
            while (waitpid (child->pid, &status, 0) < 0 && errno == EINTR)
                ;
        }
        kill (-child->pid, SIGKILL);    //  anything left in its group
        child->pid = 0;
    }
}

//  True when something already listens on host:port (our bind fails with
//  EADDRINUSE). Other failures say nothing: the program will report them.
static bool
s_port_taken (const char *host, int port)
{
    if (!host || !*host || strcmp (host, "*") == 0)
        host = "0.0.0.0";
    struct addrinfo hints = { 0 }, *found = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char service [16];
    snprintf (service, sizeof service, "%d", port);
    if (getaddrinfo (host, service, &hints, &found) != 0)
        return false;
    bool taken = false;
    for (struct addrinfo *address = found; address && !taken; address = address->ai_next) {
        int fd = socket (address->ai_family, address->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind (fd, address->ai_addr, address->ai_addrlen) != 0 && errno == EADDRINUSE)
            taken = true;
        close (fd);
    }
    freeaddrinfo (found);
    return taken;
}

//  Program path in PATH, or NULL.
static char *
s_which (const char *program)
{
    const char *path = getenv ("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    char *copy = strdup (path), *save = NULL;
    char *found = NULL;
    for (char *dir = strtok_r (copy, ":", &save); dir && !found; dir = strtok_r (NULL, ":", &save)) {
        char *candidate = NULL;
        if (asprintf (&candidate, "%s/%s", *dir ? dir : ".", program) < 0)
            break;
        if (access (candidate, X_OK) == 0)
            found = candidate;
        else
            free (candidate);
    }
    free (copy);
    return found;
}

//  One PING. 1: PONG, 0: no answer yet, 2: answered but loading its data.
static int
s_redis_ping (const char *host, int port, const kiln_redis_url_t *url, char *why, size_t why_size)
{
    struct timeval timeout = { 0, REDIS_PROBE_TIMEOUT_MS * 1000 };
    redisContext *redis = redisConnectWithTimeout (host, port, timeout);
    if (!redis || redis->err) {
        snprintf (why, why_size, "%s", redis ? redis->errstr : "out of memory");
        why [0] = (char) (why [0] >= 'A' && why [0] <= 'Z' ? why [0] + 32 : why [0]);
        redisFree (redis);
        return 0;
    }
    redisSetTimeout (redis, timeout);
    int rc = 0;
    if (url && kiln_redis_prepare (redis, url) != 0) {
        snprintf (why, why_size, "authentication or SELECT failed");
        redisFree (redis);
        return 0;
    }
    redisReply *reply = (redisReply *) redisCommand (redis, "PING");
    if (reply && reply->type == REDIS_REPLY_STATUS && strcmp (reply->str, "PONG") == 0)
        rc = 1;
    else
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp (reply->str, "LOADING", 7) == 0)
        rc = 2;
    else
        snprintf (why, why_size, "%s", reply && reply->type == REDIS_REPLY_ERROR
                  ? reply->str : redis->err ? redis->errstr : "no answer to PING");
    freeReplyObject (reply);
    redisFree (redis);
    return rc;
}

//  Starts kiln's own redis-server on port and waits for its PONG. 0,
//  or non-zero when startup must stop (reported).
static int
s_start_redis (s_up_t *self, int port)
{
    char *redis_dir = NULL, *log_path = NULL, *port_text = NULL;
    if (asprintf (&redis_dir, "%s/redis", self->state_dir) < 0
    ||  asprintf (&log_path, "%s/redis.log", self->log_dir) < 0
    ||  asprintf (&port_text, "%d", port) < 0)
        return kiln_cli_fail ("out of memory");
    int rc = -1;
    if (kiln_mkdir_p (redis_dir, 0755) != 0)
        kiln_cli_fail ("cannot create %s: %s", redis_dir, strerror (errno));
    else {
        char *argv [] = {
            "redis-server", "--port", port_text, "--bind", "127.0.0.1",
            "--dir", redis_dir, "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--logfile", log_path, NULL
        };
        rc = s_start (self, "redis-server", argv, NULL);
    }
    if (rc == 0) {
        int64_t deadline = kiln_mono_ms () + REDIS_START_TIMEOUT_MS;
        bool said_loading = false;
        char why [256] = "no answer";
        rc = -1;
        while (true) {
            int ping = s_redis_ping ("127.0.0.1", port, NULL, why, sizeof why);
            if (ping == 1) {
                rc = 0;
                break;
            }
            if (ping == 2 && !said_loading) {
                fprintf (stderr, "kiln: redis-server is loading its data from %s\n", redis_dir);
                said_loading = true;
                deadline = kiln_mono_ms () + REDIS_LOADING_TIMEOUT_MS;
            }
            if (kiln_mono_ms () > deadline) {
                kiln_cli_fail ("redis-server did not answer PING on port %d within %d s (%s); "
                               "see %s", port, REDIS_START_TIMEOUT_MS / 1000, why, log_path);
                break;
            }
            if (s_pause (self) != EVENT_NONE) {
                if (self->children [self->child_count - 1].pid == 0)
                    fprintf (stderr, "kiln: see %s\n", log_path);
                break;
            }
        }
    }
    free (redis_dir);
    free (log_path);
    free (port_text);
    return rc;
}

//  Checks that the redis named by KILN_REDIS_URL answers. 0, or non-zero (reported).
static int
s_check_redis (s_up_t *self, const char *url_text)
{
    kiln_redis_url_t *url = kiln_redis_url_parse (url_text);
    if (!url)
        return kiln_cli_fail ("KILN_REDIS_URL '%s' is not a redis:// URL", url_text);
    char why [256] = "no answer";
    int64_t deadline = kiln_mono_ms () + 5000;
    int rc = -1;
    while (true) {
        int ping = s_redis_ping (url->host, url->port, url, why, sizeof why);
        if (ping == 1) {
            rc = 0;
            break;
        }
        if (kiln_mono_ms () > deadline) {
            kiln_cli_fail ("cannot reach redis at %s:%d (KILN_REDIS_URL): %s; "
                           "unset KILN_REDIS_URL to let kiln up start its own",
                           url->host, url->port, why);
            break;
        }
        if (s_pause (self) != EVENT_NONE)
            break;
    }
    kiln_redis_url_destroy (&url);
    return rc;
}

//  "host:port" of an http:// URL, or NULL.
static char *
s_addr_from_url (const char *url)
{
    if (strncmp (url, "http://", 7) != 0)
        return NULL;
    const char *start = url + 7;
    size_t length = strcspn (start, "/?#");
    char *addr = strndup (start, length);
    if (!addr)
        return NULL;
    const char *close_bracket = strrchr (addr, ']');
    const char *colon = strrchr (addr, ':');
    if (!colon || (close_bracket && colon < close_bracket)) {
        char *with_port = NULL;
        if (asprintf (&with_port, "%s:80", addr) < 0)
            with_port = NULL;
        free (addr);
        addr = with_port;
    }
    return addr;
}

//  Makes KILN_URL (what we call) and KILN_HTTP_ADDR (what the gateway
//  binds) agree when only one of them was given, and exports both.
static int
s_settle_http (kiln_config_t *config, bool url_given)
{
    bool addr_given = getenv ("KILN_HTTP_ADDR") != NULL;
    if (url_given && !addr_given) {
        char *addr = s_addr_from_url (config->url);
        if (addr) {
            kiln_config_set (&config->http_addr, addr);
            free (addr);
        }
    }
    else
    if (addr_given && !url_given) {
        char *host = NULL;
        int port = 0;
        if (kiln_config_split_addr (config->http_addr, &host, &port) == 0) {
            //  A wildcard bind is reached through loopback.
            bool wildcard = !*host || strcmp (host, "0.0.0.0") == 0 || strcmp (host, "::") == 0
                         || strcmp (host, "*") == 0;
            bool v6 = strchr (host, ':') != NULL;
            char *url = NULL;
            if (asprintf (&url, "http://%s%s%s:%d", v6 && !wildcard ? "[" : "",
                          wildcard ? "127.0.0.1" : host, v6 && !wildcard ? "]" : "", port) >= 0) {
                kiln_config_set (&config->url, url);
                free (url);
            }
        }
        free (host);
    }
    char *host = NULL;
    int port = 0;
    if (kiln_config_split_addr (config->http_addr, &host, &port) != 0) {
        free (host);
        return kiln_cli_fail ("KILN_HTTP_ADDR '%s' is not host:port", config->http_addr);
    }
    if (s_port_taken (host, port)) {
        kiln_cli_fail ("the gateway's address %s is taken (is another kiln up running?); "
                       "set KILN_HTTP_ADDR and KILN_URL to use another port", config->http_addr);
        free (host);
        return -1;
    }
    free (host);
    setenv ("KILN_URL", config->url, 1);
    setenv ("KILN_HTTP_ADDR", config->http_addr, 1);
    return 0;
}

//  Fails early when the broker's tcp:// endpoint is taken.
static int
s_check_broker_endpoint (const char *endpoint)
{
    if (strncmp (endpoint, "tcp://", 6) != 0)
        return 0;
    char *host = NULL;
    int port = 0;
    if (kiln_config_split_addr (endpoint + 6, &host, &port) == 0 && s_port_taken (host, port)) {
        free (host);
        return kiln_cli_fail ("the broker's endpoint %s is taken (is another kiln up running?); "
                              "set KILN_BROKER_ENDPOINT to use another port", endpoint);
    }
    free (host);
    return 0;
}

//  Waits until the gateway answers GET /health with 200. 0, or non-zero (reported).
static int
s_wait_health (s_up_t *self)
{
    kiln_http_t *http = kiln_http_new (self->cli->config->url, self->cli->config->key);
    if (!http)
        return kiln_cli_fail ("cannot make an HTTP client for '%s'", self->cli->config->url);
    kiln_http_set_timeout_ms (http, HEALTH_PROBE_TIMEOUT_MS);
    int64_t deadline = kiln_mono_ms () + HEALTH_TIMEOUT_MS;
    char *last = NULL;
    int rc = -1;
    while (true) {
        kiln_http_response_t response;
        char *error = NULL;
        if (kiln_http_request (http, "GET", "/health", NULL, NULL, 0, &response, &error) == 0) {
            if (response.status == 200) {
                kiln_http_response_reset (&response);
                rc = 0;
                break;
            }
            free (error);
            error = kiln_http_error_detail (&response);
            kiln_http_response_reset (&response);
        }
        free (last);
        last = error;
        if (kiln_mono_ms () > deadline) {
            kiln_cli_fail ("the gateway did not answer GET %s/health within %d s (%s)",
                           kiln_http_base (http), HEALTH_TIMEOUT_MS / 1000,
                           last ? last : "no answer");
            break;
        }
        if (s_pause (self) != EVENT_NONE)
            break;
    }
    free (last);
    kiln_http_destroy (&http);
    return rc;
}

//  Deploys every examples/*.so next to our bin folder. Failures are
//  reported and skipped: the stack is useful without them. Returns the
//  names deployed (a glob-free list: caller frees each and the array),
//  and their count in *count.
static char **
s_deploy_examples (s_up_t *self, size_t *count)
{
    *count = 0;
    char *pattern = NULL;
    if (asprintf (&pattern, "%s/../examples/*.so", self->cli->bindir) < 0)
        return NULL;
    glob_t found;
    int rc = glob (pattern, 0, NULL, &found);
    free (pattern);
    if (rc != 0) {
        if (rc == GLOB_NOMATCH)
            fprintf (stderr, "kiln: no example apps in %s/../examples (build them with make)\n",
                     self->cli->bindir);
        return NULL;
    }
    char **names = (char **) calloc (found.gl_pathc, sizeof (char *));
    kiln_http_t *http = kiln_cli_http (self->cli);
    for (size_t i = 0; names && http && i < found.gl_pathc; i++) {
        char *error = NULL, *name = NULL;
        if (kiln_deploy_app (self->cli, http, found.gl_pathv [i], NULL, &name, &error) == 0)
            names [(*count)++] = name;
        else
            kiln_cli_fail ("cannot deploy example %s", error ? error : "(out of memory)");
        free (error);
        //  Ctrl-C while deploying: leave the signal pending for the
        //  caller's next wait, which stops.
        sigset_t pending;
        if (sigpending (&pending) == 0
        && (sigismember (&pending, SIGINT) || sigismember (&pending, SIGTERM)))
            break;
    }
    kiln_http_destroy (&http);
    globfree (&found);
    return names;
}

//  The gateway requires API keys (unless --no-auth). kiln up's own calls,
//  and the CLI's afterwards, use the operator key saved in
//  {state_dir}/key: made here the first time, or again when this Redis
//  does not know the saved one. 0, or -1 (reported).
static int
s_setup_auth (s_up_t *self)
{
    kiln_config_t *config = self->cli->config;
    //  Our children (and the apps' runners) inherit our environment: no
    //  key of the user's reaches them
    unsetenv ("KILN_KEY");
    //  A local stack is for developing apps, whose webhook receivers run
    //  on this machine too: deliveries to loopback and private addresses
    //  are allowed here (a deployment's broker refuses them by default).
    //  An explicit KILN_WEBHOOK_ALLOW_PRIVATE=0 still wins.
    setenv ("KILN_WEBHOOK_ALLOW_PRIVATE", "1", 0);
    if (self->no_auth) {
        setenv ("KILN_AUTH", "off", 1);
        fprintf (stderr, "kiln: WARNING: --no-auth: the gateway checks NO API keys; anyone who "
                         "can reach %s can call, deploy and read everything\n", config->http_addr);
        return 0;
    }
    setenv ("KILN_AUTH", "required", 1);
    if (asprintf (&self->key_path, "%s/key", self->state_dir) < 0) {
        self->key_path = NULL;
        kiln_cli_fail ("out of memory");
        return -1;
    }
    char *key = NULL;
    FILE *file = fopen (self->key_path, "r");
    if (file) {
        char line [256] = "";
        if (fgets (line, sizeof line, file)) {
            line [strcspn (line, "\r\n")] = 0;
            key = *line ? strdup (line) : NULL;
        }
        explicit_bzero (line, sizeof line);
        fclose (file);
    }
    if (key && kiln_cli_operator_key_valid (config->redis_url, key) != 1) {
        fprintf (stderr, "kiln: the key saved in %s is not known to this Redis: making a new one\n",
                 self->key_path);
        explicit_bzero (key, strlen (key));
        free (key);
        key = NULL;
    }
    if (!key) {
        char *error = NULL;
        if (kiln_cli_key_create_in_redis (config->redis_url, KILN_SCOPE_ADMIN, "*",
                                          &key, NULL, &error) != 0) {
            kiln_cli_fail ("cannot make the operator key: %s", error ? error : "out of memory");
            free (error);
            return -1;
        }
        if (kiln_cli_save_key (self->key_path, key) != 0) {
            kiln_cli_fail ("cannot save the operator key in %s: %s", self->key_path,
                           strerror (errno));
            explicit_bzero (key, strlen (key));
            free (key);
            return -1;
        }
        fprintf (stderr, "kiln: made an operator key (ADMIN, owner *), saved in %s\n",
                 self->key_path);
    }
    kiln_config_set (&config->key, key);
    explicit_bzero (key, strlen (key));
    free (key);
    return 0;
}

static void
s_print_ready (s_up_t *self, char **names, size_t count, bool own_redis)
{
    kiln_config_t *config = self->cli->config;
    const char *base = config->url;
    size_t base_length = strlen (base);
    while (base_length > 0 && base [base_length - 1] == '/')
        base_length--;
    printf ("\nkiln is up.\n");
    printf ("  gateway  %.*s\n", (int) base_length, base);
    printf ("  broker   %s\n", config->broker_endpoint);
    if (own_redis)
        printf ("  redis    %s (log: %s/redis.log)\n", config->redis_url, self->log_dir);
    else {
        //  The URL may hold a password: show where, not how.
        kiln_redis_url_t *url = kiln_redis_url_parse (config->redis_url);
        printf ("  redis    %s:%d (KILN_REDIS_URL)\n", url ? url->host : "?", url ? url->port : 0);
        kiln_redis_url_destroy (&url);
    }
    printf ("  state    %s\n", self->state_dir);
    const char *sample = NULL;
    for (size_t i = 0; i < count; i++) {
        printf ("  app      %.*s/%s\n", (int) base_length, base, names [i]);
        if (!sample || strcmp (names [i], "local/echo") == 0)
            sample = names [i];
    }
    if (self->no_auth)
        printf ("\nWARNING: --no-auth: API keys are OFF; anyone who can reach the gateway can "
                "call, deploy and read everything.\n");
    else
        printf ("  key      %s (the operator's; the kiln CLI reads it from there)\n",
                self->key_path);
    if (sample && self->no_auth) {
        printf ("\nCall %s:\n", sample);
        printf ("  curl -X POST %.*s/%s -H 'Content-Type: application/json' -d '{\"prompt\":\"rhino\"}'\n",
                (int) base_length, base, sample);
    }
    else
    if (sample) {
        printf ("\nCall %s (API keys are required):\n", sample);
        printf ("  export KILN_KEY=$(cat %s)\n", self->key_path);
        printf ("  curl -X POST %.*s/%s -H \"Authorization: Key $KILN_KEY\" "
                "-H 'Content-Type: application/json' -d '{\"prompt\":\"rhino\"}'\n",
                (int) base_length, base, sample);
    }
    else
        printf ("\nDeploy an app with: kiln deploy APP.so\n");
    printf ("\nPress Ctrl-C to stop.\n");
    fflush (stdout);
}

int
kiln_up_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "dir",         required_argument, NULL, 'd' },
        { "no-examples", no_argument,       NULL, 'E' },
        { "redis-port",  required_argument, NULL, 'p' },
        { "no-auth",     no_argument,       NULL, 'A' },
        { NULL, 0, NULL, 0 }
    };
    const char *dir = NULL;
    bool examples = true;
    bool no_auth = false;
    int redis_port = 0;
    bool url_given = getenv ("KILN_URL") != NULL
                  || strcmp (cli->config->url, "http://127.0.0.1:8080") != 0;
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hd:", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (s_help_text, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == 'd')
            dir = optarg;
        else
        if (opt == 'E')
            examples = false;
        else
        if (opt == 'A')
            no_auth = true;
        else
        if (opt == 'p') {
            char *end = NULL;
            long port = strtol (optarg, &end, 10);
            if (!*optarg || *end || port < 1 || port > 65535)
                return kiln_cli_usage ("up", "--redis-port wants a port number, got '%s'", optarg);
            redis_port = (int) port;
        }
        else
        if (kiln_cli_common_option (cli, opt, optarg)) {
            if (opt == KILN_CLI_OPT_URL)
                url_given = true;
        }
        else
            return kiln_cli_bad_option ("up", opt, argv);
    }
    if (optind < argc)
        return kiln_cli_usage ("up", "up takes no argument, got '%s'", argv [optind]);

    //  From here on signals wait for us in sigtimedwait. Blocked signals
    //  are kept even when their disposition is "ignore" (as a shell's
    //  `kiln up &` sets it for SIGINT), so a Ctrl-C is never lost. The
    //  mask stays until the process ends: a late signal must not kill
    //  kiln between stopping its children and exiting.
    s_up_t self = { .cli = cli, .no_auth = no_auth };
    sigemptyset (&self.signals);
    sigaddset (&self.signals, SIGINT);
    sigaddset (&self.signals, SIGTERM);
    sigaddset (&self.signals, SIGCHLD);
    sigprocmask (SIG_BLOCK, &self.signals, NULL);

    kiln_config_t *config = cli->config;
    if (!dir)
        dir = config->state_dir;
    if (!dir || !*dir)
        return kiln_cli_usage ("up", "no state folder: set KILN_STATE_DIR or pass --dir");

    //  Everything we need, checked before anything starts.
    const char *programs [] = { "kiln-broker", "kiln-gateway", "kiln-worker" };
    char *paths [3] = { NULL, NULL, NULL };
    int rc = KILN_EXIT_FAILURE;
    for (int i = 0; i < 3; i++) {
        if (asprintf (&paths [i], "%s/%s", cli->bindir, programs [i]) < 0) {
            paths [i] = NULL;
            kiln_cli_fail ("out of memory");
            goto done;
        }
        if (access (paths [i], X_OK) != 0) {
            kiln_cli_fail ("%s not found next to kiln in %s (build it with make)",
                           programs [i], cli->bindir);
            goto done;
        }
    }
    bool own_redis = redis_port > 0 || !getenv ("KILN_REDIS_URL");
    if (own_redis && redis_port == 0) {
        kiln_redis_url_t *url = kiln_redis_url_parse (config->redis_url);
        redis_port = url ? url->port : 6379;
        kiln_redis_url_destroy (&url);
    }
    if (own_redis) {
        char *redis_server = s_which ("redis-server");
        if (!redis_server) {
            kiln_cli_fail ("redis-server not found in PATH (install it with scripts/install-deps.sh, "
                           "or set KILN_REDIS_URL to use a running one)");
            goto done;
        }
        free (redis_server);
        if (s_port_taken ("127.0.0.1", redis_port)) {
            kiln_cli_fail ("port %d is taken (another redis-server?): stop it, use it with "
                           "KILN_REDIS_URL=redis://127.0.0.1:%d, or pick a free port with "
                           "--redis-port N", redis_port, redis_port);
            goto done;
        }
        char *url = NULL;
        if (asprintf (&url, "redis://127.0.0.1:%d", redis_port) < 0) {
            kiln_cli_fail ("out of memory");
            goto done;
        }
        kiln_config_set (&config->redis_url, url);
        setenv ("KILN_REDIS_URL", url, 1);
        free (url);
    }
    if (s_settle_http (config, url_given) != 0
    ||  s_check_broker_endpoint (config->broker_endpoint) != 0)
        goto done;

    if (kiln_mkdir_p (dir, 0755) != 0) {
        kiln_cli_fail ("cannot create %s: %s", dir, strerror (errno));
        goto done;
    }
    self.state_dir = realpath (dir, NULL);
    if (!self.state_dir || asprintf (&self.log_dir, "%s/logs", self.state_dir) < 0) {
        self.log_dir = NULL;
        kiln_cli_fail ("cannot resolve %s: %s", dir, strerror (errno));
        goto done;
    }
    if (kiln_mkdir_p (self.log_dir, 0755) != 0) {
        kiln_cli_fail ("cannot create %s: %s", self.log_dir, strerror (errno));
        goto done;
    }
    setenv ("KILN_STATE_DIR", self.state_dir, 1);

    if (own_redis) {
        if (s_start_redis (&self, redis_port) != 0)
            goto stop;
    }
    else
    if (s_check_redis (&self, getenv ("KILN_REDIS_URL")) != 0)
        goto stop;
    if (s_setup_auth (&self) != 0)
        goto stop;
    for (int i = 0; i < 3; i++) {
        char *child_argv [] = { paths [i], NULL };
        if (s_start (&self, programs [i], child_argv, NULL) != 0)
            goto stop;
    }
    if (s_wait_health (&self) != 0)
        goto stop;

    char **names = NULL;
    size_t count = 0;
    if (examples)
        names = s_deploy_examples (&self, &count);
    //  A Ctrl-C or a death while deploying: stop before saying we are up.
    bool ready = s_wait_event (&self, 0) == EVENT_NONE;
    if (ready)
        s_print_ready (&self, names, count, own_redis);
    for (size_t i = 0; i < count; i++)
        free (names [i]);
    free (names);
    if (ready)
        s_wait_event (&self, -1);
stop:
    //  Interrupted, even while starting: a stop the user asked for.
    if (self.interrupted) {
        fprintf (stderr, "kiln: stopping\n");
        rc = KILN_EXIT_OK;
    }
    s_stop_all (&self);
    if (rc == KILN_EXIT_OK)
        fprintf (stderr, "kiln: stopped\n");
done:
    for (int i = 0; i < 3; i++)
        free (paths [i]);
    free (self.state_dir);
    free (self.log_dir);
    free (self.key_path);
    return rc;
}
