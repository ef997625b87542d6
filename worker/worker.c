/*  =========================================================================
    worker — the kiln-worker actor: one per host, starts and supervises
    runners when the broker asks

    The worker owns the host's slots (one per GPU, plus CPU slots) and is
    the parent of every runner on it. It fetches an app's artifact from
    Redis into a local cache (content-addressed: checked by SHA-256, so a
    cached file is trusted; a process app's bundle is unpacked once into
    a directory, worker/bundle.h), starts kiln-runner on it with the runner's
    environment, and tells the broker when a runner exits, whatever the
    reason. The runner talks to the broker itself; the worker never sees
    requests.

    Messages, on one DEALER socket (identity = worker id) to the broker:

    | message       | dir | when                                                    |
    |---------------|-----|---------------------------------------------------------|
    | WORKER_HELLO  | →   | at start; again when the broker is silent for           |
    |               |     | HEARTBEAT_LIVENESS intervals or says DISCONNECT; with   |
    |               |     | draining = true once SIGTERM started the drain          |
    | HEARTBEAT     | →   | every HEARTBEAT_INTERVAL_MS, draining or not            |
    | RUNNER_START  | ←   | take a free slot of that machine type, fetch the        |
    |               |     | artifact and the app's secrets (HGETALL kiln:app:{app}: |
    |               |     | secrets, into that runner's environment only) on the    |
    |               |     | fetcher thread, then start kiln-runner; while draining, |
    |               |     | or with no free slot, refused: RUNNER_EXITED 127        |
    |               |     | "no free … slot…"; a failed fetch: RUNNER_EXITED 127    |
    | RUNNER_STOP   | ←   | SIGTERM the runner, SIGKILL after RUNNER_STOP_GRACE_MS; |
    |               |     | status KILN_RUNNER_STOP_KILL: SIGKILL at once. One      |
    |               |     | still being fetched for: RUNNER_EXITED 0 at once        |
    | RUNNER_EXITED | →   | a runner exited (status: exit code or -signal), or      |
    |               |     | could not be started (status 127, error says why)       |
    | LOG           | →   | {runner_id, logs}: lines of a runner's stdout/stderr    |
    |               |     | (no request_id), batched; dropped when the socket is    |
    |               |     | full, and before the runner's RUNNER_EXITED             |
    | HEARTBEAT     | ←   | any message from the broker proves it alive             |
    | DISCONNECT    | ←   | the broker lost us (it restarted): say hello again      |
    | DISCONNECT    | →   | on exit, after every runner is gone                     |

    Redis is used by the fetcher thread alone, on one connection kept
    open (opened again when lost), so a slow Redis delays a runner's start
    but never the loop: heartbeats go on. Exited runners are reaped when
    their SIGCHLD comes (a signalfd in the loop), so their slots are free
    and the broker told at once.

    SIGTERM (or SIGINT) drains the worker without losing a request: it
    says hello with draining = true (the broker places nothing here any
    more), SIGTERMs every runner (each finishes the requests its handlers
    run, hands back those it has not started, tears down and exits 0;
    SIGKILL after DRAIN_GRACE_MS), reports each exit as usual, and when
    none is left says DISCONNECT and exits 0. A second signal cuts the
    grace short.
    =========================================================================
*/
#include "worker.h"
#include "bundle.h"
#include "gpu.h"
#include "runner.h"
#include "venv.h"
#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_msg.h"
#include "kiln_redis.h"
#include "kiln_util.h"

#include <czmq.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define HEARTBEAT_INTERVAL_MS     1000
#define HEARTBEAT_LIVENESS        3
//  How often stop deadlines are checked, and exited runners reaped if
//  their SIGCHLD was missed (it normally reaps them at once).
#define REAP_INTERVAL_MS          100
//  A runner asked to stop gets this long for teardown() before SIGKILL.
#define RUNNER_STOP_GRACE_MS      10000
//  On SIGTERM, runners get this long to finish their requests and tear
//  down before SIGKILL (what they still held is then re-queued by the
//  broker). Under the 5 s `kiln up` gives each process it stops, so the
//  worker itself still leaves cleanly.
#define DRAIN_GRACE_MS            4000
//  Bounds the connect and each command (the GET of an artifact).
#define REDIS_TIMEOUT_MS          30000
//  At exit, how long a fetch still running may keep us.
#define FETCHER_JOIN_S            1
#define LINGER_MS                 1000
//  Longest runner id we accept: it names a file and a socket identity.
#define RUNNER_ID_MAX             128
//  A runner's output line longer than this is cut: a log line is for
//  people, not a transport for data.
#define RUNNER_LINE_MAX_BYTES     4000
//  Lines of a runner's output per LOG message, and bytes read from one
//  pipe per wakeup (so a chatty runner cannot starve the loop).
#define RUNNER_LOG_BATCH_MAX      64
//  Runners' output shares the broker socket with the worker's own
//  messages (hello, RUNNER_EXITED), which the socket drops when full: a
//  runner printing in a loop must not crowd them out. At most this many
//  LOG batches a second go out (64 lines each); the rest is dropped,
//  counted.
#define RUNNER_LOG_SENDS_PER_S    50
#define RUNNER_READ_MAX_BYTES     65536

//  SIGTERMs and SIGINTs received: the first drains, the next hurries.
static volatile sig_atomic_t s_signals = 0;

static void
s_on_signal (int signum)
{
    (void) signum;
    if (s_signals < 100)
        s_signals++;
}

//  One unit of capacity: a GPU, or one of the CPU slots.
typedef struct {
    char machine_type [KILN_MACHINE_TYPE_MAX];
    int gpu;                        //  CUDA device index; -1 for CPU
    char *runner_id;                //  who holds it; NULL when free
} s_slot_t;

//  One of a runner's output pipes (stdout or stderr), read in the loop.
typedef struct _s_child_t s_child_t;
typedef struct {
    kiln_worker_t *worker;
    s_child_t *child;
    int fd;                         //  read end, non-blocking; -1 once closed
    bool is_stderr;
    char line [RUNNER_LINE_MAX_BYTES + 1];  //  the line being read
    size_t length;
    bool cut;                       //  the line was too long: skip to its end
} s_output_t;

struct _s_child_t {
    char *runner_id;
    char *app;
    pid_t pid;                      //  0 while its artifact and secrets are fetched
    kiln_msg_t *start;              //  its RUNNER_START, until it is spawned
    void *fetch;                    //  its fetch in the fetcher's hands: only its
                                    //  identity, and its abandoned flag, are ours
    size_t slot;                    //  index into slots
    char *status_file;              //  where it writes why it could not start
    int64_t kill_at_ms;             //  monotonic; 0 until asked to stop
    bool killed;                    //  SIGKILL sent
    s_output_t output [2];          //  its stdout, its stderr
    kiln_msg_t *log_batch;          //  LOG being filled from its output
};

struct _kiln_worker_t {
    char *id;
    char *host;
    char *broker_endpoint;
    char *redis_url;
    char *public_url;
    char *runner_path;
    char *artifact_dir;
    char *app_dir;                  //  unpacked bundles, by SHA-256
    char *status_dir;
    kiln_slot_kind_t kinds [KILN_GPU_MAX_SLOT_KINDS];
    size_t kind_count;
    s_slot_t *slots;
    size_t slot_count;
    zlistx_t *children;             //  s_child_t *
    zsock_t *broker;
    zloop_t *loop;
    int64_t broker_seen_ms;
    int64_t hello_sent_ms;
    bool hello_due;
    bool draining;                  //  SIGTERM seen: no new runner, then exit
    int signals_seen;               //  of s_signals, acted on
    uint64_t log_lines_dropped;     //  runner output lines dropped (socket full, or over the rate)
    int64_t log_window_ms;          //  monotonic start of the current second of LOG sends
    int log_window_sends;           //  LOG batches sent in it
    zlistx_t *departed;             //  s_child_t * gone, freed on the next reap tick
    redisContext *redis;            //  the fetcher's: NULL until needed, or once lost
    int fetch_requests [2];         //  s_fetch_t * to the fetcher thread
    int fetch_results [2];          //  s_fetch_t * back, done
    pthread_t fetcher;
    bool fetcher_started;
    int sigchld_fd;                 //  signalfd of SIGCHLD: a runner exited; -1 if none
};

//  -------------------------------------------------------------------------
//  Slots

//  Lowest device index no GPU slot uses yet.
static int
s_unused_gpu_index (kiln_worker_t *self, size_t filled)
{
    for (int index = 0; ; index++) {
        bool used = false;
        for (size_t i = 0; i < filled && !used; i++)
            used = self->slots [i].gpu == index;
        if (!used)
            return index;
    }
}

static int
s_add_slot (kiln_worker_t *self, size_t *filled, const char *machine_type, int gpu)
{
    s_slot_t *slot = &self->slots [(*filled)++];
    snprintf (slot->machine_type, sizeof (slot->machine_type), "%s", machine_type);
    slot->gpu = gpu;
    slot->runner_id = NULL;
    return 0;
}

//  Declared slots replace detected ones, but a declared GPU type still gets
//  the real index of a detected device of that type when there is one.
static int
s_count_slots (kiln_worker_t *self, const char *spec)
{
    kiln_gpu_device_t devices [KILN_GPU_MAX_DEVICES];
    size_t device_count = kiln_gpu_detect (devices, KILN_GPU_MAX_DEVICES);

    if (spec) {
        const char *error = NULL;
        int count = kiln_gpu_parse_slots (spec, self->kinds, KILN_GPU_MAX_SLOT_KINDS, &error);
        if (count < 0) {
            kiln_log_error ("--slots '%s': %s", spec, error);
            return -1;
        }
        self->kind_count = (size_t) count;
    }
    else {
        for (size_t i = 0; i < device_count; i++) {
            size_t k = 0;
            while (k < self->kind_count && strcmp (self->kinds [k].machine_type, devices [i].machine_type) != 0)
                k++;
            if (k == self->kind_count) {
                if (k == KILN_GPU_MAX_SLOT_KINDS)
                    continue;
                snprintf (self->kinds [k].machine_type, KILN_MACHINE_TYPE_MAX, "%s", devices [i].machine_type);
                self->kinds [k].count = 0;
                self->kind_count++;
            }
            self->kinds [k].count++;
        }
        if (self->kind_count < KILN_GPU_MAX_SLOT_KINDS) {
            snprintf (self->kinds [self->kind_count].machine_type, KILN_MACHINE_TYPE_MAX, "CPU");
            self->kinds [self->kind_count++].count = kiln_gpu_default_cpu_slots ();
        }
    }
    size_t total = 0;
    for (size_t k = 0; k < self->kind_count; k++)
        total += self->kinds [k].count;
    self->slots = calloc (total? total: 1, sizeof (s_slot_t));
    if (!self->slots)
        return -1;

    //  Detected devices first, so that declared slots take real indices.
    size_t filled = 0;
    bool taken [KILN_GPU_MAX_DEVICES] = { false };
    for (size_t k = 0; k < self->kind_count; k++) {
        const kiln_slot_kind_t *kind = &self->kinds [k];
        if (strcmp (kind->machine_type, "CPU") == 0)
            continue;
        unsigned made = 0;
        for (size_t i = 0; i < device_count && made < kind->count; i++)
            if (!taken [i] && strcmp (devices [i].machine_type, kind->machine_type) == 0) {
                taken [i] = true;
                s_add_slot (self, &filled, kind->machine_type, devices [i].index);
                made++;
            }
    }
    for (size_t k = 0; k < self->kind_count; k++) {
        const kiln_slot_kind_t *kind = &self->kinds [k];
        bool cpu = strcmp (kind->machine_type, "CPU") == 0;
        unsigned have = 0;
        for (size_t i = 0; i < filled; i++)
            if (strcmp (self->slots [i].machine_type, kind->machine_type) == 0)
                have++;
        if (!cpu && have < kind->count)
            kiln_log_warn ("declared %u %s slot(s) but found %u such GPU(s); "
                           "the others get device indices of their own",
                           kind->count, kind->machine_type, have);
        for (; have < kind->count; have++)
            s_add_slot (self, &filled, kind->machine_type,
                        cpu? -1: s_unused_gpu_index (self, filled));
    }
    self->slot_count = filled;
    for (size_t k = 0; k < self->kind_count; k++)
        kiln_log_info ("offering %u %s slot(s)", self->kinds [k].count, self->kinds [k].machine_type);
    return 0;
}

//  A free slot of that type: the GPU asked for when it is free, else the
//  first free one. Returns its index, or -1.
static ssize_t
s_free_slot (kiln_worker_t *self, const char *machine_type, int gpu)
{
    ssize_t found = -1;
    for (size_t i = 0; i < self->slot_count; i++) {
        s_slot_t *slot = &self->slots [i];
        if (slot->runner_id || strcmp (slot->machine_type, machine_type) != 0)
            continue;
        if (gpu >= 0 && slot->gpu == gpu)
            return (ssize_t) i;
        if (found == -1)
            found = (ssize_t) i;
    }
    return found;
}

//  -------------------------------------------------------------------------
//  Talking to the broker

static void
s_send (kiln_worker_t *self, kiln_msg_t **msg_p)
{
    kiln_msg_type_t type = (*msg_p)->type;
    //  SNDTIMEO 0: a worker that cannot reach its broker keeps supervising.
    if (kiln_msg_send (msg_p, self->broker, NULL) == -1)
        kiln_log_warn ("cannot send %s to the broker: %s",
                       kiln_msg_type_name (type), zmq_strerror (zmq_errno ()));
}

static void
s_hello (kiln_worker_t *self)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_WORKER_HELLO);
    if (!msg)
        return;
    msg->worker_id = strdup (self->id);
    msg->host = strdup (self->host);
    msg->draining = self->draining;
    msg->slots = calloc (self->kind_count? self->kind_count: 1, sizeof (kiln_msg_slot_t));
    if (!msg->worker_id || !msg->host || !msg->slots) {
        kiln_msg_destroy (&msg);
        return;
    }
    for (size_t k = 0; k < self->kind_count; k++) {
        msg->slots [k].machine_type = strdup (self->kinds [k].machine_type);
        msg->slots [k].count = self->kinds [k].count;
        msg->slot_count++;
        if (!msg->slots [k].machine_type) {
            kiln_msg_destroy (&msg);
            return;
        }
    }
    s_send (self, &msg);
    self->hello_sent_ms = kiln_mono_ms ();
    self->hello_due = false;
}

static void
s_send_exited (kiln_worker_t *self, const char *runner_id, int status, const char *error)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RUNNER_EXITED);
    if (!msg)
        return;
    msg->runner_id = strdup (runner_id);
    msg->status = status;
    if (error) {
        //  The wire caps strings; a long reason is cut, not refused.
        msg->error = strndup (error, KILN_MSG_MAX_STRING_BYTES - 1);
        if (!msg->error) {
            kiln_msg_destroy (&msg);
            return;
        }
    }
    if (!msg->runner_id) {
        kiln_msg_destroy (&msg);
        return;
    }
    s_send (self, &msg);
}

//  -------------------------------------------------------------------------
//  Redis: one connection for artifacts and secrets, opened when first
//  needed and kept (a runner start costs no connect). A command that
//  finds it lost (Redis restarted, or dropped it as idle) opens another
//  and is sent again, once: the worker only reads. A command that timed
//  out is not: that would double the wait.

//  Sends "COMMAND key". The reply (caller frees; it may be an error
//  reply), or NULL with *error (caller frees).
static redisReply *
s_redis_command (kiln_worker_t *self, const char *command, const char *key, char **error)
{
    for (int attempt = 0; ; attempt++) {
        bool fresh = self->redis == NULL;
        if (fresh)
            self->redis = kiln_redis_connect (self->redis_url, REDIS_TIMEOUT_MS);
        if (!self->redis) {
            *error = zsys_sprintf ("cannot reach Redis at %s", self->redis_url);
            return NULL;
        }
        redisReply *reply = (redisReply *) redisCommand (self->redis, "%s %s", command, key);
        int saved_errno = errno;
        if (reply)
            return reply;
        bool timed_out = self->redis->err == REDIS_ERR_IO
                      && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK);
        bool retry = !fresh && !timed_out && attempt == 0;
        if (!retry)
            *error = zsys_sprintf ("Redis at %s: %s", self->redis_url, self->redis->errstr);
        redisFree (self->redis);
        self->redis = NULL;
        if (!retry)
            return NULL;
        kiln_log_info ("the connection to Redis was lost (%s); connecting again",
                       command);
    }
}

//  -------------------------------------------------------------------------
//  Artifacts

//  Makes sure {artifact_dir}/{sha}.so is there and returns its path
//  (caller frees), or NULL with *error (caller frees). A cached file is
//  trusted without hashing it again because only this function writes
//  it, after the bytes passed their SHA-256 check, and kiln_write_file
//  renames it into place whole: a file there is a checked one. (Whoever
//  can write into the state dir can change it; that dir is the worker's.)
static char *
s_fetch_artifact (kiln_worker_t *self, const char *sha, char **error)
{
    char *path = zsys_sprintf ("%s/%s.so", self->artifact_dir, sha);
    if (!path) {
        *error = strdup ("out of memory");
        return NULL;
    }
    if (access (path, R_OK) == 0)
        return path;

    int64_t started_ms = kiln_mono_ms ();
    kiln_key_t key = kiln_key_artifact (sha);
    char *why = NULL;
    redisReply *reply = s_redis_command (self, "GET", key.s, &why);
    if (!reply)
        *error = zsys_sprintf ("fetching artifact %s: %s", sha, why? why: "out of memory");
    else
    if (reply->type == REDIS_REPLY_NIL)
        *error = zsys_sprintf ("artifact %s is not in Redis (deploy it again)", sha);
    else
    if (reply->type != REDIS_REPLY_STRING)
        *error = zsys_sprintf ("artifact %s: Redis answered %s", sha,
                               reply->type == REDIS_REPLY_ERROR? reply->str: "something not a string");
    else {
        char hex [KILN_SHA256_HEX_LEN + 1];
        kiln_sha256_hex (reply->str, reply->len, hex);
        if (strcmp (hex, sha) != 0)
            *error = zsys_sprintf ("artifact %s failed its SHA-256 check (the bytes hash to %s); refused",
                                   sha, hex);
        else
        if (kiln_write_file (path, reply->str, reply->len) == -1)
            *error = zsys_sprintf ("cannot write %s: %s", path, strerror (errno));
        else
            kiln_log_info ("artifact %s: fetched %zu bytes in %" PRId64 " ms",
                           sha, (size_t) reply->len, kiln_mono_ms () - started_ms);
    }
    if (reply)
        freeReplyObject (reply);
    free (why);
    if (*error) {
        free (path);
        return NULL;
    }
    return path;
}

//  What the runner is given for an artifact: the .so itself, or, for a
//  bundle (a process app, worker/bundle.h), the directory it unpacks to,
//  {state_dir}/worker/apps/{sha}, made once per SHA-256. Takes the path;
//  returns what to give (caller frees), or NULL with *error.
static char *
s_prepare_artifact (kiln_worker_t *self, const char *sha, char *path, char **error)
{
    uint8_t head [512];
    FILE *file = fopen (path, "rb");
    size_t got = file? fread (head, 1, sizeof head, file): 0;
    if (file)
        fclose (file);
    if (!kiln_bundle_is_tar (head, got))
        return path;
    char *dir = zsys_sprintf ("%s/%s", self->app_dir, sha);
    if (!dir) {
        *error = strdup ("out of memory");
        free (path);
        return NULL;
    }
    if (access (dir, F_OK) != 0) {
        size_t size = 0;
        uint8_t *bytes = kiln_read_file (path, &size);
        if (!bytes)
            *error = zsys_sprintf ("cannot read %s: %s", path, strerror (errno));
        else
        if (kiln_bundle_unpack (bytes, size, dir, error) == 0)
            kiln_log_info ("artifact %s: unpacked into %s", sha, dir);
        free (bytes);
    }
    free (path);
    if (*error) {
        char *reason = zsys_sprintf ("artifact %s: %s", sha, *error);
        free (*error);
        *error = reason;
        free (dir);
        return NULL;
    }
    return dir;
}

//  -------------------------------------------------------------------------
//  Secrets: kiln:app:{app}:secrets, NAME → value (gateway_secrets.c), read
//  when a runner starts and given to that runner only, as environment
//  variables. Never logged: errors name the secret, never its value.

//  Fills *secrets with "NAME=value" entries, NULL-terminated (free with
//  s_environment_destroy); an app without secrets gets an empty list. -1
//  with *error when Redis cannot say: the runner must not start without
//  what its setup may need.
static int
s_fetch_secrets (kiln_worker_t *self, const char *app, char ***secrets, char **error)
{
    *secrets = NULL;
    kiln_key_t key = kiln_key_app_secrets (app);
    char *why = NULL;
    redisReply *reply = s_redis_command (self, "HGETALL", key.s, &why);
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        *error = zsys_sprintf ("reading the secrets of %s: %s", app,
                               !reply? (why? why: "out of memory"): reply->type == REDIS_REPLY_ERROR?
                               reply->str: "not a hash");
    else
    if (!(*secrets = calloc (reply->elements / 2 + 1, sizeof (char *))))
        *error = strdup ("out of memory");
    else {
        size_t count = 0;
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const redisReply *name = reply->element [i];
            const redisReply *value = reply->element [i + 1];
            if (name->type != REDIS_REPLY_STRING || value->type != REDIS_REPLY_STRING
            ||  strchr (name->str, ':'))
                continue;           //  NAME:updated_ms, or not ours
            //  The gateway checked both; a name or value an environment
            //  cannot hold is skipped rather than passed on cut
            bool name_ok = name->len > 0 && strncmp (name->str, "KILN_", 5) != 0;
            for (size_t c = 0; c < name->len && name_ok; c++)
                name_ok = isupper ((unsigned char) name->str [c]) || name->str [c] == '_'
                       || (c > 0 && isdigit ((unsigned char) name->str [c]));
            if (!name_ok || strlen (value->str) != value->len) {
                kiln_log_warn ("app %s: secret '%.64s' skipped: not a valid variable", app,
                               name_ok? name->str: "(bad name)");
                continue;
            }
            if (!((*secrets) [count] = zsys_sprintf ("%s=%s", name->str, value->str))) {
                *error = strdup ("out of memory");
                break;
            }
            count++;
        }
    }
    if (reply) {
        //  Values stay no longer in memory than needed
        for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++)
            if (reply->element [i]->type == REDIS_REPLY_STRING)
                explicit_bzero (reply->element [i]->str, reply->element [i]->len);
        freeReplyObject (reply);
    }
    free (why);
    if (*error) {
        for (char **entry = *secrets; entry && *entry; entry++)
            explicit_bzero (*entry, strlen (*entry));
        for (char **entry = *secrets; entry && *entry; entry++)
            free (*entry);
        free (*secrets);
        *secrets = NULL;
        return -1;
    }
    return 0;
}

//  Whether env entry ("NAME=...") sets the variable name_eq ("NAME=").
static bool
s_env_sets (const char *entry, const char *name_eq)
{
    return strncmp (entry, name_eq, strcspn (name_eq, "=") + 1) == 0;
}

//  Puts the secrets into a runner's environment (*env_p, replaced): a
//  secret overrides an inherited variable of its name, never one the
//  worker sets for the runner (KILN_*, CUDA_VISIBLE_DEVICES: a secret
//  must not move a runner onto another GPU). Takes the secrets' strings.
//  -1 when out of memory.
static int
s_environment_add_secrets (char ***env_p, char ***secrets_p, const char *const *ours)
{
    char **env = *env_p;
    char **secrets = *secrets_p;
    size_t env_count = 0, secret_count = 0;
    while (env [env_count])
        env_count++;
    while (secrets [secret_count])
        secret_count++;
    char **merged = calloc (env_count + secret_count + 1, sizeof (char *));
    if (!merged)
        return -1;
    size_t count = 0;
    for (size_t i = 0; i < secret_count; i++) {
        bool reserved = false;
        for (const char *const *name = ours; *name && !reserved; name++) {
            size_t len = strlen (*name);
            reserved = strncmp (secrets [i], *name, len) == 0 && secrets [i][len] == '=';
        }
        if (reserved) {
            kiln_log_warn ("secret %.*s skipped: the worker sets that variable",
                           (int) strcspn (secrets [i], "="), secrets [i]);
            explicit_bzero (secrets [i], strlen (secrets [i]));
            free (secrets [i]);
        }
        else
            merged [count++] = secrets [i];
        secrets [i] = NULL;
    }
    size_t secrets_kept = count;
    for (size_t i = 0; i < env_count; i++) {
        bool shadowed = false;
        for (size_t j = 0; j < secrets_kept && !shadowed; j++)
            shadowed = s_env_sets (env [i], merged [j]);
        if (shadowed)
            free (env [i]);
        else
            merged [count++] = env [i];
    }
    free (env);
    free (secrets);
    *env_p = merged;
    *secrets_p = NULL;
    return 0;
}

//  -------------------------------------------------------------------------
//  Runners

//  -------------------------------------------------------------------------
//  A runner's output: its stdout and stderr come to us on pipes, read in
//  the loop (never blocking), cut into lines of at most
//  RUNNER_LINE_MAX_BYTES, echoed on our stderr as "[runner-id] line" and
//  sent to the broker in LOG messages {runner_id, logs} (no request_id),
//  which the broker appends to the app's log stream. A line that looks
//  like kiln's own log format ("<time> <process> LEVEL message") or the
//  Python SDK's ("LEVEL message") keeps its level; any other line is
//  STDOUT or STDERR, as fal names a process's raw output. When the
//  broker socket is full, lines are dropped and counted, never waited
//  for.

//  Sends the LOG being filled from a runner's output, if any.
static void
s_log_flush (kiln_worker_t *self, s_child_t *child)
{
    kiln_msg_t *msg = child->log_batch;
    child->log_batch = NULL;
    if (!msg)
        return;
    size_t count = msg->log_count;
    int64_t now = kiln_mono_ms ();
    if (now - self->log_window_ms >= 1000) {
        self->log_window_ms = now;
        self->log_window_sends = 0;
    }
    bool over_rate = self->log_window_sends >= RUNNER_LOG_SENDS_PER_S;
    if (over_rate)
        kiln_msg_destroy (&msg);
    else
        self->log_window_sends++;
    if (over_rate || kiln_msg_send (&msg, self->broker, NULL) == -1) {
        uint64_t before = self->log_lines_dropped;
        self->log_lines_dropped += count;
        //  Once at the first loss, then once per thousand lines lost.
        if (before == 0 || before / 1000 != self->log_lines_dropped / 1000)
            kiln_log_warn ("runner output over %d batches a second, or the broker socket full: "
                           "%" PRIu64 " runner log line(s) dropped so far",
                           RUNNER_LOG_SENDS_PER_S, self->log_lines_dropped);
    }
}

//  The level a line names, and where its message starts. kiln_log lines
//  are "2026-11-28T18:00:00.123Z kiln-runner INFO message"; the Python
//  SDK's are "INFO message".
static const char *
s_line_level (const char **text, size_t *length, bool is_stderr)
{
    static const char *levels [] = { "DEBUG", "INFO", "WARNING", "WARN", "ERROR", NULL };
    const char *start = *text;
    const char *end = start + *length;
    //  A kiln_log timestamp, then the process name
    if (*length > 26 && start [4] == '-' && start [10] == 'T' && start [23] == 'Z'
    &&  start [24] == ' ' && isdigit ((unsigned char) start [0])) {
        const char *word = memchr (start + 25, ' ', (size_t) (end - start - 25));
        if (word)
            start = word + 1;
    }
    for (int i = 0; levels [i]; i++) {
        size_t level_length = strlen (levels [i]);
        if ((size_t) (end - start) > level_length && start [level_length] == ' '
        &&  memcmp (start, levels [i], level_length) == 0) {
            *text = start + level_length + 1;
            *length = (size_t) (end - *text);
            return strcmp (levels [i], "WARNING") == 0? "WARN": levels [i];
        }
    }
    return is_stderr? "STDERR": "STDOUT";
}

//  One whole line of a runner's output: echoed, and added to the LOG
//  being filled (sent when full).
static void
s_output_line (kiln_worker_t *self, s_child_t *child, s_output_t *output)
{
    size_t length = output->length;
    while (length > 0 && output->line [length - 1] == '\r')
        length--;
    output->line [length] = 0;
    //  One write, so that lines of several runners never interleave.
    char echo [RUNNER_LINE_MAX_BYTES + RUNNER_ID_MAX + 16];
    int size = snprintf (echo, sizeof echo, "[%s] %s%s\n", child->runner_id, output->line,
                         output->cut? " [cut]": "");
    if (size > 0 && write (STDERR_FILENO, echo, (size_t) size < sizeof echo? (size_t) size: sizeof echo - 1) < 0) {
        //  Nowhere to say so: our own stderr is gone.
    }
    const char *message = output->line;
    const char *level = s_line_level (&message, &length, output->is_stderr);

    if (!child->log_batch) {
        kiln_msg_t *msg = kiln_msg_new (KILN_MSG_LOG);
        if (msg) {
            msg->runner_id = strdup (child->runner_id);
            msg->logs = calloc (RUNNER_LOG_BATCH_MAX, sizeof (kiln_msg_log_t));
        }
        if (!msg || !msg->runner_id || !msg->logs) {
            kiln_msg_destroy (&msg);
            self->log_lines_dropped++;
            return;
        }
        child->log_batch = msg;
    }
    kiln_msg_log_t *entry = &child->log_batch->logs [child->log_batch->log_count];
    entry->level = strdup (level);
    entry->source = strdup ("runner");
    entry->message = output->cut? zsys_sprintf ("%.*s [cut]", (int) length, message)
                                : strndup (message, length);
    entry->timestamp_ms = kiln_now_ms ();
    child->log_batch->log_count++;
    if (!entry->level || !entry->source || !entry->message
    ||  child->log_batch->log_count == RUNNER_LOG_BATCH_MAX)
        s_log_flush (self, child);
}

//  Stops reading a runner's pipe.
static void
s_output_close (kiln_worker_t *self, s_output_t *output)
{
    if (output->fd < 0)
        return;
    zmq_pollitem_t item = { NULL, output->fd, ZMQ_POLLIN, 0 };
    zloop_poller_end (self->loop, &item);
    close (output->fd);
    output->fd = -1;
}

//  Reads what a runner's pipe holds, up to max_bytes, without blocking.
//  At the end of the output the last line, even without its newline, is
//  sent, and the pipe closed.
static void
s_output_read (kiln_worker_t *self, s_child_t *child, s_output_t *output, size_t max_bytes)
{
    size_t budget = max_bytes;
    while (output->fd >= 0 && budget > 0) {
        char chunk [4096];
        ssize_t size = read (output->fd, chunk, sizeof chunk);
        if (size < 0 && errno == EINTR)
            continue;
        if (size < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (size <= 0) {
            if (output->length > 0 || output->cut)
                s_output_line (self, child, output);
            output->length = 0;
            output->cut = false;
            s_output_close (self, output);
            break;
        }
        budget = (size_t) size < budget? budget - (size_t) size: 0;
        for (ssize_t i = 0; i < size; i++) {
            if (chunk [i] == '\n') {
                s_output_line (self, child, output);
                output->length = 0;
                output->cut = false;
            }
            else
            if (output->length < RUNNER_LINE_MAX_BYTES)
                output->line [output->length++] = chunk [i];
            else
                output->cut = true;
        }
    }
    s_log_flush (self, child);
}

static int
s_on_output (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    (void) item;
    s_output_t *output = (s_output_t *) arg;
    //  A runner reaped earlier in this turn of the loop: its pipes are
    //  closed, its poller ends with this turn.
    if (output->fd >= 0)
        s_output_read (output->worker, output->child, output, RUNNER_READ_MAX_BYTES);
    return 0;
}

//  Reads what is left in a runner's pipes, then closes them: the runner
//  is gone, and its last words (a traceback, a crash) belong before
//  its exit is reported.
static void
s_output_finish (kiln_worker_t *self, s_child_t *child)
{
    //  More than a pipe holds (64 KiB), less than a runaway grandchild
    //  that keeps writing could make us read forever.
    for (int i = 0; i < 2; i++)
        s_output_read (self, child, &child->output [i], 16 * RUNNER_READ_MAX_BYTES);
    for (int i = 0; i < 2; i++) {
        if (child->output [i].length > 0 || child->output [i].cut)
            s_output_line (self, child, &child->output [i]);
        child->output [i].length = 0;
        s_output_close (self, &child->output [i]);
    }
    s_log_flush (self, child);
}

static void
s_child_destroy (s_child_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_child_t *self = *self_p;
    for (int i = 0; i < 2; i++)
        if (self->output [i].fd >= 0)
            close (self->output [i].fd);
    kiln_msg_destroy (&self->log_batch);
    kiln_msg_destroy (&self->start);
    free (self->runner_id);
    free (self->app);
    free (self->status_file);
    free (self);
    *self_p = NULL;
}

static s_child_t *
s_child_find (kiln_worker_t *self, const char *runner_id, pid_t pid)
{
    for (s_child_t *child = (s_child_t *) zlistx_first (self->children); child;
         child = (s_child_t *) zlistx_next (self->children))
        if ((runner_id && strcmp (child->runner_id, runner_id) == 0) || (!runner_id && child->pid == pid))
            return child;
    return NULL;
}

//  Runner ids become file names and socket identities: keep them tame.
static bool
s_runner_id_valid (const char *id)
{
    size_t len = id? strlen (id): 0;
    if (len == 0 || len > RUNNER_ID_MAX || id [0] == '.' || id [0] == '-')
        return false;
    for (const char *p = id; *p; p++)
        if (!isalnum ((unsigned char) *p) && *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

static bool
s_sha_valid (const char *sha)
{
    return sha && strlen (sha) == KILN_SHA256_HEX_LEN && strspn (sha, "0123456789abcdef") == KILN_SHA256_HEX_LEN;
}

//  The environment for a runner: ours, less what we set, plus what we set.
static char **
s_runner_environment (kiln_worker_t *self, const kiln_msg_t *start, const s_slot_t *slot,
                      const char *status_file)
{
    static const char *ours [] = {
        KILN_ENV_BROKER_ENDPOINT, KILN_ENV_RUNNER_ID, KILN_ENV_WORKER_ID, KILN_ENV_APP,
        KILN_ENV_REVISION, KILN_ENV_PUBLIC_URL, KILN_ENV_RUNNER_STATUS_FILE,
        "CUDA_VISIBLE_DEVICES", KILN_ENV_VENV_DIR, NULL
    };
    size_t inherited = 0;
    while (environ [inherited])
        inherited++;
    char **env = calloc (inherited + 16, sizeof (char *));
    if (!env)
        return NULL;
    size_t count = 0;
    for (size_t i = 0; i < inherited; i++) {
        bool replaced = false;
        for (const char **name = ours; *name && !replaced; name++) {
            size_t len = strlen (*name);
            replaced = strncmp (environ [i], *name, len) == 0 && environ [i][len] == '=';
        }
        if (!replaced)
            env [count++] = strdup (environ [i]);
    }
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_BROKER_ENDPOINT, self->broker_endpoint);
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_RUNNER_ID, start->runner_id);
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_WORKER_ID, self->id);
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_APP, start->app);
    env [count++] = zsys_sprintf ("%s=%" PRIu64, KILN_ENV_REVISION, start->revision);
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_PUBLIC_URL, self->public_url);
    env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_RUNNER_STATUS_FILE, status_file);
    if (slot->gpu >= 0)
        env [count++] = zsys_sprintf ("CUDA_VISIBLE_DEVICES=%d", slot->gpu);
    else
        env [count++] = strdup ("CUDA_VISIBLE_DEVICES=");
    //  Python apps' virtual environments (worker/venv.h): next to the
    //  unpacked bundles, {state_dir}/worker/venvs, shared by every runner
    //  here, unless the operator put them elsewhere (a bigger disk).
    const char *venv_dir = getenv (KILN_ENV_VENV_DIR);
    if (venv_dir && *venv_dir)
        env [count++] = zsys_sprintf ("%s=%s", KILN_ENV_VENV_DIR, venv_dir);
    else
        env [count++] = zsys_sprintf ("%s=%.*s/venvs", KILN_ENV_VENV_DIR,
                                      (int) (strrchr (self->app_dir, '/') - self->app_dir), self->app_dir);
    return env;
}

static void
s_environment_destroy (char ***env_p)
{
    if (!*env_p)
        return;
    //  Zeroed: an environment may hold the app's secrets
    for (char **entry = *env_p; *entry; entry++) {
        explicit_bzero (*entry, strlen (*entry));
        free (*entry);
    }
    free (*env_p);
    *env_p = NULL;
}

//  -------------------------------------------------------------------------
//  Fetches, on a thread of their own
//
//  A runner's artifact and secrets come from Redis, which may be slow to
//  answer (a big artifact, a loaded server). The loop must not wait for
//  it: the broker would miss our heartbeats and take us for dead. So a
//  RUNNER_START takes its slot at once and hands its fetch to the fetcher
//  thread, which alone uses the Redis connection and writes the artifact
//  cache; the runner is spawned, by the loop, when the fetch comes back.
//  Fetches go to the thread and back as pointers over two pipes: the
//  thread needs no ZeroMQ socket, so the process may leave while it
//  still waits on Redis.

typedef struct {
    char *app;
    char *sha;
    char *artifact;                 //  done: what to give the runner, or NULL
    char **secrets;                 //  done: "NAME=value" entries, or NULL
    char *error;                    //  done: why not, or NULL
    atomic_bool abandoned;          //  its runner was stopped: fetch no more
} s_fetch_t;

static void
s_fetch_destroy (s_fetch_t **self_p)
{
    if (!*self_p)
        return;
    s_fetch_t *self = *self_p;
    free (self->app);
    free (self->sha);
    free (self->artifact);
    s_environment_destroy (&self->secrets);
    free (self->error);
    free (self);
    *self_p = NULL;
}

static void *
s_fetcher (void *arg)
{
    kiln_worker_t *self = (kiln_worker_t *) arg;
    //  Signals are the loop's business
    sigset_t all;
    sigfillset (&all);
    pthread_sigmask (SIG_BLOCK, &all, NULL);
    while (true) {
        s_fetch_t *fetch = NULL;
        ssize_t size = read (self->fetch_requests [0], &fetch, sizeof fetch);
        if (size < 0 && errno == EINTR)
            continue;
        if (size != (ssize_t) sizeof fetch)
            break;                  //  the worker is leaving
        //  A stopped runner's fetch is not worth a slow Redis's time,
        //  which the starts queued behind it would wait out
        char *path = atomic_load (&fetch->abandoned)? NULL
                   : s_fetch_artifact (self, fetch->sha, &fetch->error);
        if (path)
            fetch->artifact = s_prepare_artifact (self, fetch->sha, path, &fetch->error);
        if (fetch->artifact && (atomic_load (&fetch->abandoned)
        ||  s_fetch_secrets (self, fetch->app, &fetch->secrets, &fetch->error) != 0))
            zstr_free (&fetch->artifact);
        //  A pointer is less than PIPE_BUF: written whole, or not at all
        while (write (self->fetch_results [1], &fetch, sizeof fetch) == -1 && errno == EINTR)
            ;
    }
    return NULL;
}

//  Spawns kiln-runner for a child whose fetch is done: artifact is what
//  to give it, *secrets_p its secrets (taken). On failure returns -1 with
//  *error (caller frees).
static int
s_spawn_runner (kiln_worker_t *self, s_child_t *child, const char *artifact, char ***secrets_p,
                char **error)
{
    s_slot_t *slot = &self->slots [child->slot];
    char **env = s_runner_environment (self, child->start, slot, child->status_file);
    //  KILN_* cannot be a secret's name; the worker's other variable
    static const char *const not_secrets [] = { "CUDA_VISIBLE_DEVICES", NULL };
    if (env && s_environment_add_secrets (&env, secrets_p, not_secrets) != 0)
        s_environment_destroy (&env);
    s_environment_destroy (secrets_p);
    if (!env) {
        *error = strdup ("out of memory");
        return -1;
    }
    unlink (child->status_file);    //  left by an earlier runner of that id

    //  posix_spawn rather than fork: we have ZeroMQ threads, and a forked
    //  child of a threaded process may only call async-signal-safe code.
    //  The runner gets its own process group so that a Ctrl-C at our
    //  terminal reaches us alone, and we stop it in order.
    posix_spawnattr_t attr;
    posix_spawnattr_init (&attr);
    sigset_t defaults;
    sigemptyset (&defaults);
    sigaddset (&defaults, SIGPIPE);
    sigaddset (&defaults, SIGINT);
    sigaddset (&defaults, SIGTERM);
    sigaddset (&defaults, SIGCHLD);
    //  Our SIGCHLD is blocked (kiln_worker_run): not the runner's
    sigset_t none;
    sigemptyset (&none);
    posix_spawnattr_setsigdefault (&attr, &defaults);
    posix_spawnattr_setsigmask (&attr, &none);
    posix_spawnattr_setpgroup (&attr, 0);
    posix_spawnattr_setflags (&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
    //  Its stdout and stderr come to us on pipes (see "A runner's
    //  output"); our ends are close-on-exec, so no runner inherits
    //  another's.
    int pipes [2][2] = { { -1, -1 }, { -1, -1 } };
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init (&actions);
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++)
        if (pipe2 (pipes [i], O_CLOEXEC) == -1)
            rc = errno;
    //  Then nothing else of ours: not the Redis connection (authenticated:
    //  every app's secrets), not an artifact the fetcher is writing, not
    //  a descriptor some library opened without close-on-exec.
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2 (&actions, pipes [0][1], STDOUT_FILENO)
          ?: posix_spawn_file_actions_adddup2 (&actions, pipes [1][1], STDERR_FILENO)
          ?: posix_spawn_file_actions_addclosefrom_np (&actions, STDERR_FILENO + 1);
    char *argv [] = { self->runner_path, (char *) artifact, NULL };
    pid_t pid;
    if (rc == 0)
        rc = posix_spawn (&pid, self->runner_path, &actions, &attr, argv, env);
    posix_spawn_file_actions_destroy (&actions);
    posix_spawnattr_destroy (&attr);
    s_environment_destroy (&env);
    for (int i = 0; i < 2; i++) {
        if (pipes [i][1] >= 0)
            close (pipes [i][1]);
        child->output [i].fd = pipes [i][0];
    }
    if (rc != 0) {
        *error = zsys_sprintf ("cannot start %s: %s", self->runner_path, strerror (rc));
        for (int i = 0; i < 2; i++)
            if (child->output [i].fd >= 0) {
                close (child->output [i].fd);
                child->output [i].fd = -1;
            }
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        fcntl (child->output [i].fd, F_SETFL, fcntl (child->output [i].fd, F_GETFL) | O_NONBLOCK);
        zmq_pollitem_t item = { NULL, child->output [i].fd, ZMQ_POLLIN, 0 };
        if (zloop_poller (self->loop, &item, s_on_output, &child->output [i]) == -1) {
            //  Unread, the runner would block on a full pipe: read none.
            close (child->output [i].fd);
            child->output [i].fd = -1;
        }
    }
    child->pid = pid;
    child->fetch = NULL;
    kiln_msg_destroy (&child->start);
    if (slot->gpu >= 0)
        kiln_log_info ("runner %s for %s started on %s (GPU %d), pid %d",
                       child->runner_id, child->app, slot->machine_type, slot->gpu, (int) pid);
    else
        kiln_log_info ("runner %s for %s started on CPU, pid %d",
                       child->runner_id, child->app, (int) pid);
    return 0;
}

//  Takes a slot for a RUNNER_START (taking the message) and hands the
//  fetch of its artifact and secrets to the fetcher; the runner is
//  spawned when it is back (s_on_fetched). On failure returns -1 with
//  *error (caller frees).
static int
s_start_runner (kiln_worker_t *self, kiln_msg_t **start_p, char **error)
{
    const kiln_msg_t *start = *start_p;
    if (!s_runner_id_valid (start->runner_id)) {
        *error = strdup ("invalid runner id");
        return -1;
    }
    if (!kiln_app_name_valid (start->app)) {
        *error = zsys_sprintf ("invalid app name '%s'", start->app);
        return -1;
    }
    if (!s_sha_valid (start->artifact)) {
        *error = strdup ("invalid artifact: not a SHA-256 in lower-case hex");
        return -1;
    }
    ssize_t slot_index = s_free_slot (self, start->machine_type, start->gpu);
    if (slot_index < 0) {
        *error = zsys_sprintf ("no free %s slot on worker %s", start->machine_type, self->id);
        return -1;
    }
    s_slot_t *slot = &self->slots [slot_index];

    s_child_t *child = calloc (1, sizeof (s_child_t));
    s_fetch_t *fetch = calloc (1, sizeof (s_fetch_t));
    if (child) {
        for (int i = 0; i < 2; i++) {
            child->output [i].worker = self;
            child->output [i].child = child;
            child->output [i].fd = -1;
            child->output [i].is_stderr = i == 1;
        }
        child->runner_id = strdup (start->runner_id);
        child->app = strdup (start->app);
        child->status_file = zsys_sprintf ("%s/%s.status", self->status_dir, start->runner_id);
        child->slot = (size_t) slot_index;
    }
    if (fetch) {
        fetch->app = strdup (start->app);
        fetch->sha = strdup (start->artifact);
        atomic_init (&fetch->abandoned, false);
    }
    char *holder = strdup (start->runner_id);
    if (!child || !child->runner_id || !child->app || !child->status_file
    ||  !fetch || !fetch->app || !fetch->sha || !holder) {
        *error = strdup ("out of memory");
        s_child_destroy (&child);
        s_fetch_destroy (&fetch);
        free (holder);
        return -1;
    }
    if (write (self->fetch_requests [1], &fetch, sizeof fetch) != (ssize_t) sizeof fetch) {
        *error = zsys_sprintf ("cannot hand the fetch of artifact %s over: %s",
                               start->artifact, strerror (errno));
        s_child_destroy (&child);
        s_fetch_destroy (&fetch);
        free (holder);
        return -1;
    }
    //  From here the fetch is the fetcher's until it comes back
    child->fetch = fetch;
    child->start = *start_p;
    *start_p = NULL;
    slot->runner_id = holder;
    zlistx_add_end (self->children, child);
    return 0;
}

//  What the runner wrote about why it could not start, or NULL.
static char *
s_read_status_file (const char *path)
{
    size_t size = 0;
    char *text = (char *) kiln_read_file (path, &size);
    unlink (path);
    if (!text)
        return NULL;
    while (size > 0 && (text [size - 1] == '\n' || text [size - 1] == '\r'))
        text [--size] = '\0';
    if (size == 0) {
        free (text);
        return NULL;
    }
    return text;
}

//  Tells the broker a runner is gone, and frees its slot.
//  Frees the child's slot and takes it off the list of children.
static void
s_child_detach (kiln_worker_t *self, s_child_t *child)
{
    s_slot_t *slot = &self->slots [child->slot];
    free (slot->runner_id);
    slot->runner_id = NULL;
    void *handle = zlistx_find (self->children, child);
    if (handle)
        zlistx_detach (self->children, handle);
}

static void
s_runner_gone (kiln_worker_t *self, s_child_t *child, int wait_status)
{
    s_output_finish (self, child);
    char *reason = s_read_status_file (child->status_file);
    char *error = NULL;
    int status = 0;
    if (WIFEXITED (wait_status)) {
        status = WEXITSTATUS (wait_status);
        const char *what = NULL;
        if (status == KILN_RUNNER_EXIT_SETUP_FAILED)
            what = "setup failed";
        else
        if (status == KILN_RUNNER_EXIT_INVALID_APP)
            what = "invalid app";
        else
        if (status == KILN_RUNNER_EXIT_USAGE)
            what = "bad runner environment";
        else
        if (status == KILN_RUNNER_EXIT_NOT_STARTED)
            what = "cannot execute kiln-runner";
        else
        if (status != 0)
            what = "exited";
        if (what && reason)
            error = zsys_sprintf ("%s (exit %d): %s", what, status, reason);
        else
        if (what)
            error = zsys_sprintf ("%s (exit %d)", what, status);
    }
    else
    if (WIFSIGNALED (wait_status)) {
        int signum = WTERMSIG (wait_status);
        status = -signum;
        if (child->killed && signum == SIGKILL)
            error = zsys_sprintf ("killed by signal %d (%s) after %d ms without exiting on SIGTERM",
                                  signum, strsignal (signum), RUNNER_STOP_GRACE_MS);
        else
            error = zsys_sprintf ("killed by signal %d (%s)", signum, strsignal (signum));
    }
    if (error)
        kiln_log_warn ("runner %s for %s: %s", child->runner_id, child->app, error);
    else
        kiln_log_info ("runner %s for %s exited", child->runner_id, child->app);
    s_send_exited (self, child->runner_id, status, error);
    free (error);
    free (reason);

    s_child_detach (self, child);
    //  Freed on the next tick: zloop may still call s_on_output with one
    //  of its pipes in this turn (timers run before pollers).
    if (zlistx_add_end (self->departed, child) == NULL)
        s_child_destroy (&child);
}

//  Frees the slot of a runner that was never spawned, and forgets it.
static void
s_child_release (kiln_worker_t *self, s_child_t *child)
{
    s_child_detach (self, child);
    s_child_destroy (&child);
}

//  The first runner whose artifact and secrets are still being fetched.
static s_child_t *
s_child_fetching (kiln_worker_t *self)
{
    for (s_child_t *child = (s_child_t *) zlistx_first (self->children); child;
         child = (s_child_t *) zlistx_next (self->children))
        if (child->pid == 0)
            return child;
    return NULL;
}

//  A runner asked to stop before its fetch came back never ran: it is
//  reported gone at once, and its fetch, when back, finds nobody.
static void
s_fetching_stop (kiln_worker_t *self, s_child_t *child)
{
    kiln_log_info ("runner %s for %s stopped before it started", child->runner_id, child->app);
    //  The fetcher still owns the fetch; it comes back, and is freed, later
    if (child->fetch)
        atomic_store (&((s_fetch_t *) child->fetch)->abandoned, true);
    s_send_exited (self, child->runner_id, 0, NULL);
    s_child_release (self, child);
}

//  A fetch came back from the fetcher: its runner is spawned, or reported
//  as not started.
static int
s_on_fetched (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    kiln_worker_t *self = (kiln_worker_t *) arg;
    s_fetch_t *fetch;
    while (read (item->fd, &fetch, sizeof fetch) == (ssize_t) sizeof fetch) {
        s_child_t *child = (s_child_t *) zlistx_first (self->children);
        while (child && child->fetch != fetch)
            child = (s_child_t *) zlistx_next (self->children);
        if (child
        && (fetch->error
        ||  s_spawn_runner (self, child, fetch->artifact, &fetch->secrets, &fetch->error) != 0)) {
            kiln_log_warn ("cannot start runner %s for %s: %s", child->runner_id, child->app,
                           fetch->error? fetch->error: "unknown error");
            s_send_exited (self, child->runner_id, KILN_RUNNER_EXIT_NOT_STARTED, fetch->error);
            s_child_release (self, child);
        }
        s_fetch_destroy (&fetch);
    }
    return 0;
}

//  Reaps every runner that exited; never blocks.
static void
s_reap (kiln_worker_t *self)
{
    int wait_status;
    pid_t pid;
    while ((pid = waitpid (-1, &wait_status, WNOHANG)) > 0) {
        s_child_t *child = s_child_find (self, NULL, pid);
        if (child)
            s_runner_gone (self, child, wait_status);
    }
}

//  A spawned runner: SIGTERM now, SIGKILL after grace_ms.
static void
s_stop_runner (s_child_t *child, int grace_ms)
{
    if (child->kill_at_ms)
        return;                     //  already on its way out
    kiln_log_info ("stopping runner %s for %s (pid %d)", child->runner_id, child->app, (int) child->pid);
    kill (child->pid, SIGTERM);
    child->kill_at_ms = kiln_mono_ms () + grace_ms;
}

//  SIGKILLs the runners whose grace has run out.
static void
s_enforce_deadlines (kiln_worker_t *self)
{
    int64_t now = kiln_mono_ms ();
    for (s_child_t *child = (s_child_t *) zlistx_first (self->children); child;
         child = (s_child_t *) zlistx_next (self->children))
        if (child->kill_at_ms && !child->killed && now >= child->kill_at_ms) {
            kiln_log_warn ("runner %s ignored SIGTERM; killing it", child->runner_id);
            kill (child->pid, SIGKILL);
            child->killed = true;
        }
}

//  -------------------------------------------------------------------------
//  The loop

static int
s_on_broker (zloop_t *loop, zsock_t *sock, void *arg)
{
    (void) loop;
    kiln_worker_t *self = (kiln_worker_t *) arg;
    kiln_msg_t *msg = kiln_msg_recv (sock, NULL);
    if (!msg)
        return 0;                   //  malformed (the codec logged it) or interrupted
    self->broker_seen_ms = kiln_mono_ms ();
    switch (msg->type) {
        case KILN_MSG_RUNNER_START: {
            if (s_child_find (self, msg->runner_id, 0)) {
                //  A broker that restarted may ask twice; the first one runs.
                kiln_log_info ("runner %s is running already", msg->runner_id);
                break;
            }
            char *error = NULL;
            if (self->draining)
                //  Worded as a full slot, which the broker takes for "try
                //  elsewhere", not for a failed start of the app.
                error = zsys_sprintf ("no free %s slot on worker %s: it is draining",
                                      msg->machine_type, self->id);
            //  On success the message is the runner's: msg is NULL then
            if (error || s_start_runner (self, &msg, &error) == -1) {
                kiln_log_warn ("cannot start runner %s for %s: %s",
                               msg->runner_id, msg->app, error? error: "unknown error");
                s_send_exited (self, msg->runner_id, KILN_RUNNER_EXIT_NOT_STARTED, error);
                free (error);
            }
            break;
        }
        case KILN_MSG_RUNNER_STOP: {
            s_child_t *child = s_child_find (self, msg->runner_id, 0);
            if (child && child->pid == 0)
                s_fetching_stop (self, child);
            else
            if (child && msg->status == KILN_RUNNER_STOP_KILL) {
                //  The broker will not wait for teardown (a handler past
                //  its request_timeout may never return).
                kiln_log_warn ("RUNNER_STOP (kill) for runner %s: killing it now",
                               child->runner_id);
                kill (child->pid, SIGKILL);
            }
            else
            if (child)
                s_stop_runner (child, RUNNER_STOP_GRACE_MS);
            else {
                //  The broker's view is stale (we restarted, or it exited
                //  already): tell it so it can forget the runner.
                kiln_log_info ("RUNNER_STOP for unknown runner %s", msg->runner_id);
                s_send_exited (self, msg->runner_id, 0, "no such runner on this worker");
            }
            break;
        }
        case KILN_MSG_HEARTBEAT:
            break;
        case KILN_MSG_DISCONNECT:
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
s_on_heartbeat (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    kiln_worker_t *self = (kiln_worker_t *) arg;
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_HEARTBEAT);
    if (msg)
        s_send (self, &msg);
    int64_t now = kiln_mono_ms ();
    if (now - self->broker_seen_ms >= HEARTBEAT_INTERVAL_MS * HEARTBEAT_LIVENESS) {
        kiln_log_warn ("the broker is silent for %" PRId64 " ms; saying hello again",
                       now - self->broker_seen_ms);
        self->broker_seen_ms = now;
        self->hello_due = true;
    }
    if (self->hello_due)
        s_hello (self);
    return 0;
}

//  SIGTERM: take no runner, stop the ones we have, leave when they are
//  gone. The loop keeps running meanwhile: heartbeats tell the broker
//  that the runners are still finishing, and their exits are reported.
static void
s_drain_start (kiln_worker_t *self)
{
    self->draining = true;
    size_t count = zlistx_size (self->children);
    kiln_log_info ("draining: %zu runner(s) finish their requests, then we leave", count);
    s_hello (self);
    s_child_t *fetching;
    while ((fetching = s_child_fetching (self)))
        s_fetching_stop (self, fetching);
    for (s_child_t *child = (s_child_t *) zlistx_first (self->children); child;
         child = (s_child_t *) zlistx_next (self->children)) {
        if (child->kill_at_ms == 0)
            s_stop_runner (child, DRAIN_GRACE_MS);
        else
        if (child->kill_at_ms > kiln_mono_ms () + DRAIN_GRACE_MS)
            child->kill_at_ms = kiln_mono_ms () + DRAIN_GRACE_MS;
    }
}

//  Acts on signals received; true when the drain is over.
static bool
s_check_signals (kiln_worker_t *self)
{
    int signals = s_signals;
    if (signals > self->signals_seen) {
        if (!self->draining)
            s_drain_start (self);
        else {
            //  Asked again: the operator will not wait for the grace.
            kiln_log_warn ("signalled again while draining: killing the runners now");
            s_child_t *fetching;
            while ((fetching = s_child_fetching (self)))
                s_fetching_stop (self, fetching);
            for (s_child_t *child = (s_child_t *) zlistx_first (self->children); child;
                 child = (s_child_t *) zlistx_next (self->children)) {
                if (child->kill_at_ms == 0)
                    s_stop_runner (child, 0);
                child->kill_at_ms = kiln_mono_ms ();
            }
        }
        self->signals_seen = signals;
    }
    return self->draining && zlistx_size (self->children) == 0;
}

static int
s_on_reap (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop;
    (void) timer_id;
    kiln_worker_t *self = (kiln_worker_t *) arg;
    s_child_t *departed;
    while ((departed = (s_child_t *) zlistx_detach (self->departed, NULL)))
        s_child_destroy (&departed);
    s_reap (self);
    s_enforce_deadlines (self);
    return s_check_signals (self)? -1: 0;
}

//  A runner exited: reaped now rather than on the next tick, so that
//  its slot is free (and the broker told) at once.
static int
s_on_sigchld (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    kiln_worker_t *self = (kiln_worker_t *) arg;
    struct signalfd_siginfo info;
    while (read (item->fd, &info, sizeof info) == (ssize_t) sizeof info)
        ;                           //  one reap takes every exit there is
    s_reap (self);
    return s_check_signals (self)? -1: 0;
}

kiln_worker_t *
kiln_worker_new (const kiln_worker_options_t *options)
{
    kiln_worker_t *self = calloc (1, sizeof (kiln_worker_t));
    if (!self)
        return NULL;
    char host [256];
    if (gethostname (host, sizeof (host)) == -1)
        snprintf (host, sizeof (host), "localhost");
    host [sizeof (host) - 1] = '\0';
    self->id = strdup (options->id);
    self->host = strdup (host);
    self->broker_endpoint = strdup (options->broker_endpoint);
    self->redis_url = strdup (options->redis_url);
    self->public_url = strdup (options->public_url);
    self->artifact_dir = zsys_sprintf ("%s/worker/artifacts", options->state_dir);
    self->app_dir = zsys_sprintf ("%s/worker/apps", options->state_dir);
    self->status_dir = zsys_sprintf ("%s/worker/runners", options->state_dir);
    self->children = zlistx_new ();
    self->departed = zlistx_new ();
    self->sigchld_fd = -1;
    for (int i = 0; i < 2; i++)
        self->fetch_requests [i] = self->fetch_results [i] = -1;
    if (options->runner_path)
        self->runner_path = strdup (options->runner_path);
    else {
        //  kiln-runner ships next to kiln-worker, wherever that is installed.
        char exe [PATH_MAX];
        ssize_t len = readlink ("/proc/self/exe", exe, sizeof (exe) - 1);
        if (len > 0) {
            exe [len] = '\0';
            char *slash = strrchr (exe, '/');
            if (slash)
                *slash = '\0';
            self->runner_path = zsys_sprintf ("%s/kiln-runner", exe);
        }
    }
    if (!self->id || !self->host || !self->broker_endpoint || !self->redis_url
    ||  !self->public_url || !self->artifact_dir || !self->app_dir || !self->status_dir
    ||  !self->children || !self->departed || !self->runner_path) {
        kiln_log_error ("out of memory, or cannot find our own executable");
        kiln_worker_destroy (&self);
        return NULL;
    }
    if (access (self->runner_path, X_OK) == -1) {
        kiln_log_error ("cannot run %s: %s", self->runner_path, strerror (errno));
        kiln_worker_destroy (&self);
        return NULL;
    }
    if (kiln_mkdir_p (self->artifact_dir, 0755) == -1 || kiln_mkdir_p (self->status_dir, 0755) == -1
    ||  kiln_mkdir_p (self->app_dir, 0755) == -1) {
        kiln_log_error ("cannot create %s/worker: %s", options->state_dir, strerror (errno));
        kiln_worker_destroy (&self);
        return NULL;
    }
    if (s_count_slots (self, options->slots) == -1) {
        kiln_worker_destroy (&self);
        return NULL;
    }
    //  Only our end of the results is non-blocking: the fetcher's write
    //  of a result must not fail for a full pipe.
    int rc = pipe2 (self->fetch_requests, O_CLOEXEC) == -1
          || pipe2 (self->fetch_results, O_CLOEXEC) == -1
          || fcntl (self->fetch_results [0], F_SETFL, O_NONBLOCK) == -1? errno: 0;
    if (rc == 0)
        rc = pthread_create (&self->fetcher, NULL, s_fetcher, self);
    if (rc != 0) {
        kiln_log_error ("cannot start the fetcher thread: %s", strerror (rc));
        if (self->fetch_requests [1] >= 0)
            close (self->fetch_requests [1]);
        self->fetch_requests [1] = -1;
        kiln_worker_destroy (&self);
        return NULL;
    }
    self->fetcher_started = true;
    self->broker = zsock_new (ZMQ_DEALER);
    self->loop = zloop_new ();
    if (!self->broker || !self->loop) {
        kiln_log_error ("cannot create the broker socket");
        kiln_worker_destroy (&self);
        return NULL;
    }
    zsock_set_identity (self->broker, self->id);
    zsock_set_sndtimeo (self->broker, 0);
    if (zsock_connect (self->broker, "%s", self->broker_endpoint) == -1) {
        kiln_log_error ("cannot connect to the broker at %s: %s",
                        self->broker_endpoint, zmq_strerror (zmq_errno ()));
        kiln_worker_destroy (&self);
        return NULL;
    }
    return self;
}

int
kiln_worker_run (kiln_worker_t *self)
{
    //  Our own signal handling: czmq's would end the loop before the
    //  runners are stopped.
    zsys_handler_set (NULL);
    struct sigaction action;
    memset (&action, 0, sizeof (action));
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);
    signal (SIGPIPE, SIG_IGN);

    zloop_reader (self->loop, self->broker, s_on_broker, self);
    zloop_timer (self->loop, HEARTBEAT_INTERVAL_MS, 0, s_on_heartbeat, self);
    zloop_timer (self->loop, REAP_INTERVAL_MS, 0, s_on_reap, self);
    zmq_pollitem_t fetched = { NULL, self->fetch_results [0], ZMQ_POLLIN, 0 };
    if (zloop_poller (self->loop, &fetched, s_on_fetched, self) == -1) {
        kiln_log_error ("cannot poll the fetcher: %s", zmq_strerror (zmq_errno ()));
        return -1;
    }
    //  SIGCHLD, blocked, is read from a signalfd in the loop. ZeroMQ's
    //  threads block every signal, so none takes it from us; runners
    //  start with an empty mask (s_start_runner). Without the signalfd
    //  the reap timer still finds every exit.
    sigset_t sigchld;
    sigemptyset (&sigchld);
    sigaddset (&sigchld, SIGCHLD);
    if (pthread_sigmask (SIG_BLOCK, &sigchld, NULL) == 0)
        self->sigchld_fd = signalfd (-1, &sigchld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (self->sigchld_fd >= 0) {
        zmq_pollitem_t item = { NULL, self->sigchld_fd, ZMQ_POLLIN, 0 };
        if (zloop_poller (self->loop, &item, s_on_sigchld, self) == -1) {
            close (self->sigchld_fd);
            self->sigchld_fd = -1;
        }
    }
    else
        kiln_log_warn ("no signalfd for SIGCHLD (%s): exits are seen within %d ms",
                       strerror (errno), REAP_INTERVAL_MS);

    self->broker_seen_ms = kiln_mono_ms ();
    s_hello (self);
    kiln_log_info ("worker %s on %s serving broker %s", self->id, self->host, self->broker_endpoint);
    //  zloop_start also returns when a signal interrupts its poll.
    while (!s_check_signals (self))
        zloop_start (self->loop);

    kiln_log_info ("every runner is gone; leaving");
    kiln_msg_t *bye = kiln_msg_new (KILN_MSG_DISCONNECT);
    if (bye)
        s_send (self, &bye);
    zsock_set_linger (self->broker, LINGER_MS);
    kiln_log_info ("stopped");
    return 0;
}

void
kiln_worker_destroy (kiln_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_worker_t *self = *self_p;
    //  A fetcher that still waits on Redis keeps what it uses (self, its
    //  connection, the URL and the dirs, its ends of the pipes): the
    //  process is leaving anyway, and need not wait for it.
    bool fetcher_busy = false;
    if (self->fetcher_started) {
        //  Its end of the requests closed, the fetcher leaves once it is
        //  done with the fetch at hand.
        close (self->fetch_requests [1]);
        self->fetch_requests [1] = -1;
        struct timespec deadline;
        clock_gettime (CLOCK_REALTIME, &deadline);
        deadline.tv_sec += FETCHER_JOIN_S;
        fetcher_busy = pthread_timedjoin_np (self->fetcher, NULL, &deadline) != 0;
        if (fetcher_busy)
            kiln_log_warn ("a fetch from Redis is still running; leaving without it");
        s_fetch_t *fetch;
        while (read (self->fetch_results [0], &fetch, sizeof fetch) == (ssize_t) sizeof fetch)
            s_fetch_destroy (&fetch);
    }
    if (self->children) {
        s_child_t *child;
        while ((child = (s_child_t *) zlistx_detach (self->children, NULL)))
            s_child_destroy (&child);
        zlistx_destroy (&self->children);
    }
    if (self->departed) {
        s_child_t *child;
        while ((child = (s_child_t *) zlistx_detach (self->departed, NULL)))
            s_child_destroy (&child);
        zlistx_destroy (&self->departed);
    }
    for (size_t i = 0; i < self->slot_count; i++)
        free (self->slots [i].runner_id);
    free (self->slots);
    zloop_destroy (&self->loop);
    zsock_destroy (&self->broker);
    if (self->sigchld_fd >= 0)
        close (self->sigchld_fd);
    if (self->fetch_results [0] >= 0)
        close (self->fetch_results [0]);
    free (self->id);
    free (self->host);
    free (self->broker_endpoint);
    free (self->public_url);
    free (self->runner_path);
    free (self->status_dir);
    *self_p = NULL;
    if (fetcher_busy)
        return;
    if (self->fetch_requests [0] >= 0)
        close (self->fetch_requests [0]);
    if (self->fetch_results [1] >= 0)
        close (self->fetch_results [1]);
    if (self->redis)
        redisFree (self->redis);
    free (self->redis_url);
    free (self->artifact_dir);
    free (self->app_dir);
    free (self);
}
