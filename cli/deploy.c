/*  =========================================================================
    deploy — kiln deploy APP.so|FILE.py::Class [--name OWNER/APP]

    Deploying is three steps, each of which can fail with a clear line:
      1. ask `kiln-runner --describe APP.so` for the app's manifest (the
         runner is the one program that loads apps, so it is the judge of
         what is a kiln app);
      2. upload the file, content-addressed: PUT /v1/artifacts/{sha256};
      3. register the revision: POST /v1/apps {name, artifact, manifest}.

    A Python app (FILE.py::Class) is described the same way (the runner
    asks `python3 -m kiln.serve` with KILN_DESCRIBE=1), and its artifact
    is a bundle: an uncompressed ustar archive of the file and a kiln.json
    {"class", "entry", "kind": "python", "manifest"} (worker/bundle.h),
    written here, with fixed metadata so that the same app makes the same
    bytes and so the same SHA-256.
    =========================================================================
*/
#include "cli.h"

#include "kiln_manifest.h"
#include "kiln_util.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

//  Describing only loads the library and reads its descriptor; a library
//  whose constructors take longer than this is not going to deploy well.
#define DESCRIBE_TIMEOUT_MS 30000

//  An app's manifest is a few hundred bytes; this bounds what we keep of
//  a runaway library's output.
#define DESCRIBE_OUTPUT_MAX (1024 * 1024)

static const char *s_help_text =
    "usage: kiln deploy APP.so [--name OWNER/APP] [OPTIONS]\n"
    "       kiln deploy FILE.py::ClassName [--name OWNER/APP] [OPTIONS]\n"
    "\n"
    "Uploads a native kiln app (a shared library built against\n"
    "include/kiln/app.h) or a Python app (a kiln.App subclass in FILE.py)\n"
    "and deploys it as a new revision, then prints its sync and queue URLs.\n"
    "--auth and --max-queue-length override what the app itself says.\n"
    "With progress (stderr a terminal, or --progress) it says what it does\n"
    "on stderr and, for an app that keeps runners up (min_concurrency > 0),\n"
    "waits until one of the new revision is ready.\n"
    "\n"
    "options:\n"
    "  -n, --name OWNER/APP the app's name (default local/<the app's own name>)\n"
    "  --auth WHO           who may call it: private (the owner's keys; the\n"
    "                       default), shared (any key) or public (anyone)\n"
    "  --max-queue-length N queued requests at most; past it a submit is\n"
    "                       429 queue_full (0: unbounded, the default)\n"
    "  --progress           show progress on stderr even when it is not a terminal\n"
    "  --json               print the gateway's answer as it is (JSON)\n"
    KILN_CLI_COMMON_HELP;

//  How long `kiln deploy` with progress waits for a runner to be ready.
#define DEPLOY_READY_TIMEOUT_MS 300000

//  The manifest overrides of this command line (kiln deploy or kiln run:
//  one per process), applied by kiln_deploy_app. kiln up, which sets
//  none, deploys the apps as they describe themselves.
static const char *s_auth_override;             //  NULL: the app's own
static int s_max_queue_length_override = -1;    //  -1: the app's own

int
kiln_deploy_override (const char *command, int opt, const char *value)
{
    if (opt == KILN_OPT_AUTH) {
        if (strcmp (value, KILN_MANIFEST_AUTH_PRIVATE) != 0
        &&  strcmp (value, KILN_MANIFEST_AUTH_SHARED) != 0
        &&  strcmp (value, KILN_MANIFEST_AUTH_PUBLIC) != 0)
            return kiln_cli_usage (command, "--auth must be private, shared or public, not '%s'",
                                   value);
        s_auth_override = value;
        return KILN_EXIT_OK;
    }
    //  A whole number, digits only: "1e3", "-1" or "12abc" are mistakes
    char *end = NULL;
    errno = 0;
    long long number = strtoll (value, &end, 10);
    if (value [0] < '0' || value [0] > '9' || *end || errno || number > INT_MAX)
        return kiln_cli_usage (command, "--max-queue-length needs a whole number from 0 to %d, "
                               "not '%s'", INT_MAX, value);
    s_max_queue_length_override = (int) number;
    return KILN_EXIT_OK;
}

//  Puts the overrides into the app's manifest (JSON). 0 or -1 (out of
//  memory).
static int
s_apply_overrides (json_t *manifest)
{
    if (s_auth_override
    &&  json_object_set_new (manifest, "app_auth", json_string (s_auth_override)) != 0)
        return -1;
    if (s_max_queue_length_override >= 0) {
        //  One spelling only: the manifest refuses both at once
        json_object_del (manifest, "fal_max_queue_length");
        if (json_object_set_new (manifest, "max_queue_length",
                                 json_integer (s_max_queue_length_override)) != 0)
            return -1;
    }
    return 0;
}

//  Appends up to size bytes to a growing buffer, keeping at most
//  DESCRIBE_OUTPUT_MAX. 0 or -1 (out of memory).
static int
s_append (char **buffer, size_t *length, const char *data, size_t size)
{
    if (*length + size > DESCRIBE_OUTPUT_MAX)
        size = DESCRIBE_OUTPUT_MAX - *length;
    char *grown = (char *) realloc (*buffer, *length + size + 1);
    if (!grown)
        return -1;
    memcpy (grown + *length, data, size);
    *length += size;
    grown [*length] = 0;
    *buffer = grown;
    return 0;
}

//  The last non-empty line of a program's stderr, without the
//  "<timestamp> <process> <LEVEL> " prefix kiln_log puts on lines or the
//  "kiln-runner: " the runner puts on its own.
static char *
s_last_line (const char *text)
{
    if (!text)
        return NULL;
    const char *end = text + strlen (text);
    while (end > text && (end [-1] == '\n' || end [-1] == '\r' || end [-1] == ' '))
        end--;
    const char *start = end;
    while (start > text && start [-1] != '\n')
        start--;
    if (start == end)
        return NULL;
    //  2026-11-28T18:00:00.123Z kiln-runner ERROR message
    if (end - start > 25 && start [4] == '-' && start [10] == 'T'
    &&  start [0] >= '0' && start [0] <= '9') {
        const char *word = start;
        for (int spaces = 0; spaces < 3 && word < end; word++)
            if (*word == ' ')
                spaces++;
        if (word < end)
            start = word;
    }
    //  The runner names itself; we say who spoke.
    static const char runner_prefix [] = "kiln-runner: ";
    if ((size_t) (end - start) > strlen (runner_prefix)
    &&  strncmp (start, runner_prefix, strlen (runner_prefix)) == 0)
        start += strlen (runner_prefix);
    return strndup (start, (size_t) (end - start));
}

//  Sets *error to "<format ...>" (one line).
static void
s_set_error (char **error, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

static void
s_set_error (char **error, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    if (vasprintf (error, format, args) < 0)
        *error = NULL;
    va_end (args);
}

//  Runs `kiln-runner --describe path`. Returns 0 with *manifest (its
//  stdout, caller frees); -1 when the runner rejected the app, -2 when
//  the runner could not run; then *error says why (caller frees).
static int
s_describe (kiln_cli_t *cli, const char *path, char **manifest, char **error)
{
    *manifest = NULL;
    char *runner = NULL;
    if (asprintf (&runner, "%s/kiln-runner", cli->bindir) < 0) {
        *error = NULL;
        return -2;
    }
    if (access (runner, X_OK) != 0) {
        s_set_error (error, "cannot run %s: %s (kiln deploy needs kiln-runner next to kiln)",
                     runner, strerror (errno));
        free (runner);
        return -2;
    }
    int out_pipe [2], err_pipe [2];
    if (pipe2 (out_pipe, O_CLOEXEC) != 0) {
        s_set_error (error, "cannot make a pipe: %s", strerror (errno));
        free (runner);
        return -2;
    }
    if (pipe2 (err_pipe, O_CLOEXEC) != 0) {
        s_set_error (error, "cannot make a pipe: %s", strerror (errno));
        close (out_pipe [0]);
        close (out_pipe [1]);
        free (runner);
        return -2;
    }
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid == 0) {
        //  kiln up blocks signals to wait for them; an exec'd program
        //  must start with none blocked.
        sigset_t none;
        sigemptyset (&none);
        sigprocmask (SIG_SETMASK, &none, NULL);
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        if (getppid () != parent)
            _exit (127);
        int devnull = open ("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2 (devnull, STDIN_FILENO);
        dup2 (out_pipe [1], STDOUT_FILENO);
        dup2 (err_pipe [1], STDERR_FILENO);
        execl (runner, "kiln-runner", "--describe", path, (char *) NULL);
        fprintf (stderr, "cannot run %s: %s\n", runner, strerror (errno));
        _exit (127);
    }
    close (out_pipe [1]);
    close (err_pipe [1]);
    if (pid < 0) {
        close (out_pipe [0]);
        close (err_pipe [0]);
        s_set_error (error, "cannot start %s: %s", runner, strerror (errno));
        free (runner);
        return -2;
    }

    char *out = NULL, *err = NULL;
    size_t out_length = 0, err_length = 0;
    struct pollfd fds [2] = {
        { out_pipe [0], POLLIN, 0 },
        { err_pipe [0], POLLIN, 0 },
    };
    int open_count = 2;
    bool timed_out = false;
    int64_t deadline = kiln_mono_ms () + DESCRIBE_TIMEOUT_MS;
    while (open_count > 0) {
        int64_t left = deadline - kiln_mono_ms ();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int ready = poll (fds, 2, (int) left);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds [i].fd < 0 || !fds [i].revents)
                continue;
            char chunk [4096];
            ssize_t size = read (fds [i].fd, chunk, sizeof chunk);
            if (size < 0 && errno == EINTR)
                continue;
            if (size <= 0) {
                close (fds [i].fd);
                fds [i].fd = -1;
                open_count--;
            }
            else
            if (i == 0)
                s_append (&out, &out_length, chunk, (size_t) size);
            else
                s_append (&err, &err_length, chunk, (size_t) size);
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds [i].fd >= 0)
            close (fds [i].fd);
    if (timed_out)
        kill (pid, SIGKILL);
    int status = 0;
    while (waitpid (pid, &status, 0) < 0 && errno == EINTR)
        ;

    int rc = -1;
    char *reason = s_last_line (err);
    if (timed_out) {
        s_set_error (error, "kiln-runner --describe took over %d s", DESCRIBE_TIMEOUT_MS / 1000);
    }
    else
    if (WIFEXITED (status) && WEXITSTATUS (status) == 0 && out && out_length > 0) {
        *manifest = out;
        out = NULL;
        rc = 0;
    }
    else
    if (reason) {
        *error = reason;
        reason = NULL;
    }
    else
    if (WIFSIGNALED (status)) {
        s_set_error (error, "kiln-runner --describe was killed by signal %d (%s)",
                     WTERMSIG (status), strsignal (WTERMSIG (status)));
    }
    else
        s_set_error (error, "kiln-runner --describe failed (exit status %d)",
                     WIFEXITED (status) ? WEXITSTATUS (status) : -1);
    free (reason);
    free (out);
    free (err);
    free (runner);
    return rc;
}

//  -------------------------------------------------------------------------
//  Python bundles

#define TAR_BLOCK_BYTES 512

//  Appends one regular file to a ustar archive in *buffer. 0 or -1.
static int
s_tar_add (uint8_t **buffer, size_t *length, const char *name, const uint8_t *data, size_t size)
{
    size_t padded = (size + TAR_BLOCK_BYTES - 1) / TAR_BLOCK_BYTES * TAR_BLOCK_BYTES;
    if (strlen (name) >= 100 || size > 077777777777ULL)
        return -1;
    uint8_t *grown = (uint8_t *) realloc (*buffer, *length + TAR_BLOCK_BYTES + padded);
    if (!grown)
        return -1;
    *buffer = grown;
    uint8_t *header = grown + *length;
    memset (header, 0, TAR_BLOCK_BYTES + padded);
    memcpy (header, name, strlen (name));
    memcpy (header + 100, "0000644", 7);            //  mode
    memcpy (header + 108, "0000000", 7);            //  uid
    memcpy (header + 116, "0000000", 7);            //  gid
    snprintf ((char *) header + 124, 12, "%011llo", (unsigned long long) size);
    memcpy (header + 136, "00000000000", 11);       //  mtime: fixed, for a stable hash
    header [156] = '0';
    memcpy (header + 257, "ustar", 6);
    memcpy (header + 263, "00", 2);
    memset (header + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < TAR_BLOCK_BYTES; i++)
        sum += header [i];
    snprintf ((char *) header + 148, 8, "%06o", sum);
    if (size)
        memcpy (header + TAR_BLOCK_BYTES, data, size);
    *length += TAR_BLOCK_BYTES + padded;
    return 0;
}

//  The bundle of a Python app: its file and kiln.json. NULL with *error.
static uint8_t *
s_python_bundle (const char *file, const char *class_name, json_t *manifest, size_t *size,
                 char **error)
{
    size_t source_size = 0;
    uint8_t *source = kiln_read_file (file, &source_size);
    if (!source) {
        s_set_error (error, "cannot read %s: %s", file, strerror (errno));
        return NULL;
    }
    const char *entry = strrchr (file, '/') ? strrchr (file, '/') + 1 : file;
    json_t *description = json_pack ("{s:s, s:s, s:s, s:O}", "kind", "python", "entry", entry,
                                     "class", class_name, "manifest", manifest);
    char *text = description ? json_dumps (description, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref (description);
    uint8_t *buffer = NULL;
    size_t length = 0;
    if (!text
    ||  s_tar_add (&buffer, &length, entry, source, source_size) != 0
    ||  s_tar_add (&buffer, &length, "kiln.json", (const uint8_t *) text, strlen (text)) != 0) {
        s_set_error (error, "cannot make the bundle of %s (a file name of 100 characters or more?)", file);
        free (buffer);
        buffer = NULL;
    }
    else {
        //  The end of an archive: two zero blocks.
        uint8_t *grown = (uint8_t *) realloc (buffer, length + 2 * TAR_BLOCK_BYTES);
        if (grown) {
            buffer = grown;
            memset (buffer + length, 0, 2 * TAR_BLOCK_BYTES);
            *size = length + 2 * TAR_BLOCK_BYTES;
        }
        else {
            free (buffer);
            buffer = NULL;
            *error = strdup ("out of memory");
        }
    }
    free (text);
    free (source);
    return buffer;
}

//  A URL from the deploy answer: urls.<key>, else <key>_url, else the
//  one kiln's routes imply.
static char *
s_answer_url (json_t *answer, const char *key, const char *base, const char *prefix,
              const char *name)
{
    json_t *urls = json_object_get (answer, "urls");
    json_t *value = json_is_object (urls) ? json_object_get (urls, key) : NULL;
    if (!json_is_string (value)) {
        char field [32];
        snprintf (field, sizeof field, "%s_url", key);
        value = json_object_get (answer, field);
    }
    char *url = NULL;
    if (json_is_string (value))
        url = strdup (json_string_value (value));
    else
    if (asprintf (&url, "%s%s/%s", base, prefix, name) < 0)
        url = NULL;
    return url;
}

static int
kiln_deploy_file (kiln_cli_t *cli, kiln_http_t *http, const char *path, bool python,
                  const char *class_name, const char *name, char **deployed_name, char **error);

int
kiln_deploy_app (kiln_cli_t *cli, kiln_http_t *http, const char *path,
                 const char *name, char **deployed_name, char **error)
{
    *error = NULL;
    if (deployed_name)
        *deployed_name = NULL;
    //  FILE.py::Class (or FILE.py, which gets a clear "name the class")
    char *file_part = strdup (path);
    if (!file_part) {
        *error = strdup ("out of memory");
        return -1;
    }
    char *class_name = strstr (file_part, "::");
    if (class_name) {
        *class_name = 0;
        class_name += 2;
    }
    size_t file_length = strlen (file_part);
    bool python = class_name || (file_length > 3 && strcmp (file_part + file_length - 3, ".py") == 0);
    int rc = kiln_deploy_file (cli, http, python ? file_part : path, python,
                               python ? class_name : NULL, name, deployed_name, error);
    free (file_part);
    return rc;
}

static int
kiln_deploy_file (kiln_cli_t *cli, kiln_http_t *http, const char *path, bool python,
                  const char *class_name, const char *name, char **deployed_name, char **error)
{
    struct stat info;
    if (stat (path, &info) != 0) {
        s_set_error (error, "cannot read %s: %s", path, strerror (errno));
        return -1;
    }
    if (!S_ISREG (info.st_mode)) {
        s_set_error (error, "%s is not a file", path);
        return -1;
    }
    //  dlopen searches the library path for a bare file name: give the
    //  runner the absolute path.
    char absolute [PATH_MAX];
    if (!realpath (path, absolute)) {
        s_set_error (error, "cannot read %s: %s", path, strerror (errno));
        return -1;
    }
    if (python && (!class_name || !*class_name)) {
        s_set_error (error, "name the app's class: kiln deploy %s::ClassName", path);
        return -1;
    }
    char *target = NULL;
    if (python && asprintf (&target, "%s::%s", absolute, class_name) < 0)
        target = NULL;
    char *manifest_text = NULL, *reason = NULL;
    int described = s_describe (cli, python ? target : absolute, &manifest_text, &reason);
    free (target);
    if (described == -2) {
        *error = reason;
        return -1;
    }
    if (described != 0) {
        s_set_error (error, "%s is not a kiln app: %s", path, reason ? reason : "kiln-runner failed");
        free (reason);
        return -1;
    }
    char *manifest_error = NULL;
    kiln_manifest_t *manifest = kiln_manifest_from_json (manifest_text, strlen (manifest_text),
                                                         &manifest_error);
    json_t *manifest_json = manifest ? json_loads (manifest_text, 0, NULL) : NULL;
    free (manifest_text);
    if (!manifest || !json_is_object (manifest_json)) {
        s_set_error (error, "%s: kiln-runner gave a bad manifest (%s)", path,
                     manifest_error ? manifest_error : "not a JSON object");
        free (manifest_error);
        kiln_manifest_destroy (&manifest);
        json_decref (manifest_json);
        return -1;
    }
    //  Before the bundle is made, so that its kiln.json says the same
    if (s_apply_overrides (manifest_json) != 0) {
        kiln_manifest_destroy (&manifest);
        json_decref (manifest_json);
        *error = strdup ("out of memory");
        return -1;
    }

    char *full_name = NULL;
    if (name)
        full_name = strdup (name);
    else
    if (asprintf (&full_name, "local/%s", manifest->name) < 0)
        full_name = NULL;
    kiln_manifest_destroy (&manifest);
    if (!full_name) {
        json_decref (manifest_json);
        *error = strdup ("out of memory");
        return -1;
    }
    const char *problem = kiln_cli_app_name_problem (full_name);
    if (problem) {
        if (asprintf (error, "invalid app name '%s': %s%s", full_name, problem,
                      name ? "" : " (set one with --name OWNER/APP)") < 0)
            *error = NULL;
        json_decref (manifest_json);
        free (full_name);
        return -1;
    }

    size_t size = 0;
    uint8_t *bytes = python ? s_python_bundle (absolute, class_name, manifest_json, &size, error)
                            : kiln_read_file (absolute, &size);
    if (!bytes) {
        if (!*error)
            s_set_error (error, "cannot read %s: %s", path, strerror (errno));
        json_decref (manifest_json);
        free (full_name);
        return -1;
    }
    char sha [KILN_SHA256_HEX_LEN + 1];
    kiln_sha256_hex (bytes, size, sha);

    char *artifact_path = NULL;
    int rc = -1;
    kiln_cli_progress (cli, "uploading %s (%zu bytes, sha256 %.12s)", path, size, sha);
    if (asprintf (&artifact_path, "/v1/artifacts/%s", sha) >= 0) {
        kiln_http_response_t response;
        if (kiln_http_request (http, "PUT", artifact_path, "application/octet-stream",
                               bytes, size, &response, error) == 0) {
            if (response.status >= 200 && response.status <= 299)
                rc = 0;
            else {
                char *detail = kiln_http_error_detail (&response);
                if (asprintf (error, "cannot upload %s: %s", path,
                              detail ? detail : "the gateway refused it") < 0)
                    *error = NULL;
                free (detail);
            }
            kiln_http_response_reset (&response);
        }
        free (artifact_path);
    }
    free (bytes);

    json_t *answer = NULL;
    if (rc == 0) {
        kiln_cli_progress (cli, "deploying %s", full_name);
        json_t *request = json_pack ("{s:s, s:s, s:O}", "name", full_name,
                                     "artifact", sha, "manifest", manifest_json);
        rc = request ? kiln_http_json (http, "POST", "/v1/apps", request, &answer, error) : -1;
        json_decref (request);
    }
    json_decref (manifest_json);
    if (rc == 0 && cli->json) {
        char *text = answer ? json_dumps (answer, JSON_INDENT (2)) : NULL;
        printf ("%s\n", text ? text : "null");
        fflush (stdout);
        free (text);
    }
    else
    if (rc == 0) {
        json_t *revision = json_object_get (answer, "revision");
        char *sync_url = s_answer_url (answer, "sync", kiln_http_base (http), "", full_name);
        char *queue_url = s_answer_url (answer, "queue", kiln_http_base (http), "/queue", full_name);
        if (json_is_integer (revision))
            printf ("deployed %s revision %lld\n", full_name,
                    (long long) json_integer_value (revision));
        else
        if (json_is_string (revision))
            printf ("deployed %s revision %s\n", full_name, json_string_value (revision));
        else
            printf ("deployed %s\n", full_name);
        printf ("sync:  %s\nqueue: %s\n", sync_url ? sync_url : "?", queue_url ? queue_url : "?");
        fflush (stdout);
        free (sync_url);
        free (queue_url);
    }
    json_decref (answer);
    if (rc == 0 && deployed_name) {
        *deployed_name = full_name;
        full_name = NULL;
    }
    free (full_name);
    return rc;
}

//  The app's min_concurrency in force (an override, else its own), or 0.
static long long
s_min_concurrency (kiln_http_t *http, const char *name)
{
    char *path = NULL;
    if (asprintf (&path, "/v1/apps/%s", name) < 0)
        return 0;
    json_t *app = NULL;
    char *error = NULL;
    long long value = 0;
    if (kiln_http_json (http, "GET", path, NULL, &app, &error) == 0) {
        json_t *min = json_object_get (json_object_get (app, "effective"), "min_concurrency");
        value = json_is_integer (min) ? (long long) json_integer_value (min) : 0;
    }
    free (error);
    free (path);
    json_decref (app);
    return value;
}

int
kiln_deploy_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "name", required_argument, NULL, 'n' },
        { "progress", no_argument,   NULL, KILN_OPT_PROGRESS },
        { "json",     no_argument,   NULL, 'j' },
        { "auth",     required_argument, NULL, KILN_OPT_AUTH },
        { "max-queue-length", required_argument, NULL, KILN_OPT_MAX_QUEUE_LENGTH },
        { NULL, 0, NULL, 0 }
    };
    const char *name = NULL;
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hn:", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (s_help_text, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == 'n')
            name = optarg;
        else
        if (opt == KILN_OPT_PROGRESS)
            cli->progress = true;
        else
        if (opt == 'j')
            cli->json = true;
        else
        if (opt == KILN_OPT_AUTH || opt == KILN_OPT_MAX_QUEUE_LENGTH) {
            int rc = kiln_deploy_override ("deploy", opt, optarg);
            if (rc != KILN_EXIT_OK)
                return rc;
        }
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option ("deploy", opt, argv);
    }
    if (optind >= argc)
        return kiln_cli_usage ("deploy", "deploy needs the app: kiln deploy APP.so or FILE.py::ClassName");
    if (optind + 1 < argc)
        return kiln_cli_usage ("deploy", "deploy takes one file, got '%s' too", argv [optind + 1]);
    const char *path = argv [optind];
    if (name) {
        const char *problem = kiln_cli_app_name_problem (name);
        if (problem)
            return kiln_cli_usage ("deploy", "invalid app name '%s': %s", name, problem);
    }
    kiln_http_t *http = kiln_cli_http (cli);
    if (!http)
        return KILN_EXIT_FAILURE;
    char *error = NULL;
    char *deployed = NULL;
    int rc = kiln_deploy_app (cli, http, path, name, &deployed, &error) == 0
           ? KILN_EXIT_OK : kiln_cli_fail_http (error);
    //  An app that keeps runners up: say when the new revision serves.
    if (rc == KILN_EXIT_OK && cli->progress && s_min_concurrency (http, deployed) > 0) {
        int waited = kiln_cli_wait_ready (cli, http, deployed, DEPLOY_READY_TIMEOUT_MS, false, NULL);
        if (waited > 0)
            rc = waited;
    }
    free (deployed);
    kiln_http_destroy (&http);
    return rc;
}
