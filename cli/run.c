/*  =========================================================================
    run — kiln run APP.so|FILE.py::Class: an app for as long as you watch it

    Like `fal run`: deploys the app under a fresh name, keeps one runner
    up, prints its URLs, streams its log lines until Ctrl-C (or SIGTERM),
    then deletes it.

    | step                       | sends                                      |
    |----------------------------|--------------------------------------------|
    | deploy as OWNER/STEM-run-X | as kiln deploy (kiln_deploy_app)           |
    | keep one runner up         | PATCH /v1/apps/NAME {min_concurrency: 1}   |
    | wait for it, logs shown    | GET /v1/apps/NAME, /v1/runners?app=NAME,   |
    |                            |   /v1/apps/NAME/logs, every POLL_MS        |
    | follow the logs            | GET /v1/apps/NAME/logs?since=..., POLL_MS  |
    | on SIGINT / SIGTERM        | DELETE /v1/apps/NAME                       |

    NAME is local/{the file's stem}-run-{6 hex digits}, as kiln deploy
    would pick the owner, so runs never collide with each other or with
    a deployed app. Waiting for a runner (kiln_cli_wait_ready) is shared
    with kiln deploy's progress.
    =========================================================================
*/
#include "cli.h"
#include "kiln_keys.h"
#include "kiln_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  How often the logs and the runners are read.
#define POLL_MS 300
//  How long kiln run waits for its runner before it says so (and goes
//  on following the logs).
#define RUN_READY_TIMEOUT_MS 120000
//  The calls are small: a gateway that takes longer is stuck.
#define RUN_TIMEOUT_MS 60000
//  The owner kiln deploy picks when no name is given.
#define RUN_OWNER "local"
//  "-run-" and six hex digits.
#define RUN_SUFFIX_LEN 11

static const char *s_help_text =
    "usage: kiln run APP.so [OPTIONS]\n"
    "       kiln run FILE.py::ClassName [OPTIONS]\n"
    "\n"
    "Deploys the app under a fresh name (local/<file>-run-<6 hex>), keeps\n"
    "one runner of it up, prints its sync and queue URLs and streams its log\n"
    "lines (its runners' output and its handlers' lines) until Ctrl-C or\n"
    "SIGTERM; then deletes the app and exits 0.\n"
    "\n"
    "options:\n"
    "  --auth WHO           who may call it: private (the owner's keys; the\n"
    "                       default), shared (any key) or public (anyone);\n"
    "                       overrides what the app itself says\n"
    "  --max-queue-length N queued requests at most; past it a submit is\n"
    "                       429 queue_full (0: unbounded); overrides the app's\n"
    "  --progress           show progress on stderr even when it is not a terminal\n"
    KILN_CLI_COMMON_HELP;

//  The app name for a run of path: local/{stem}-run-{6 hex}, the stem
//  made of the file's name without its directory, ::Class or extension,
//  in the characters app names take.
static void
s_run_name (const char *path, char *out, size_t size)
{
    const char *base = strrchr (path, '/') ? strrchr (path, '/') + 1 : path;
    const char *end = strstr (base, "::") ? strstr (base, "::") : base + strlen (base);
    const char *dot = NULL;
    for (const char *p = base; p < end; p++)
        if (*p == '.')
            dot = p;
    if (dot && dot > base)
        end = dot;
    char stem [KILN_NAME_MAX + 1];
    size_t length = 0;
    for (const char *p = base; p < end && length < KILN_NAME_MAX - RUN_SUFFIX_LEN; p++) {
        char c = (char) tolower ((unsigned char) *p);
        bool fits = isalnum ((unsigned char) c) || c == '_' || c == '-';
        if (length == 0 && !isalnum ((unsigned char) c))
            continue;               //  a name starts with a letter or digit
        stem [length++] = fits ? c : '-';
    }
    stem [length] = 0;
    char uuid [KILN_UUID_LEN + 1];
    kiln_uuid4 (uuid);
    snprintf (out, size, "%s/%s-run-%.6s", RUN_OWNER, length ? stem : "app", uuid);
}

//  A runner of revision (or of any, revision < 0) in state ready or busy
//  in GET /v1/runners?app=NAME. -1 when the call failed (error set).
static int
s_runner_ready (kiln_http_t *http, const char *app, long long revision, char **error)
{
    char *path = NULL;
    if (asprintf (&path, "/v1/runners?app=%s", app) < 0)
        return -1;
    json_t *answer = NULL;
    int rc = kiln_http_json (http, "GET", path, NULL, &answer, error);
    free (path);
    if (rc)
        return -1;
    int ready = 0;
    size_t index;
    json_t *runner;
    json_array_foreach (json_object_get (answer, "runners"), index, runner) {
        const char *state = json_string_value (json_object_get (runner, "state"));
        const char *owner = json_string_value (json_object_get (runner, "app"));
        json_t *its_revision = json_object_get (runner, "revision");
        if (state && (strcmp (state, "ready") == 0 || strcmp (state, "busy") == 0)
        &&  (!owner || strcmp (owner, app) == 0)
        &&  (revision < 0 || !json_is_integer (its_revision)
          || json_integer_value (its_revision) == revision))
            ready = 1;
    }
    json_decref (answer);
    return ready;
}

int
kiln_cli_wait_ready (kiln_cli_t *cli, kiln_http_t *http, const char *app,
                     int timeout_ms, bool logs, char **since)
{
    int64_t started = kiln_mono_ms ();
    char *app_path = NULL;
    if (asprintf (&app_path, "/v1/apps/%s", app) < 0)
        return kiln_cli_fail ("out of memory");
    kiln_cli_progress (cli, "waiting for a runner of %s...", app);
    char *last_error = NULL;
    int rc = -1;
    while (!kiln_cli_stop) {
        if (logs) {
            int printed = kiln_logs_print (http, app, since, 100, false);
            if (printed) {
                rc = printed;
                break;
            }
        }
        //  The revision that serves, and why starts fail, if they do
        json_t *answer = NULL;
        char *error = NULL;
        if (kiln_http_json (http, "GET", app_path, NULL, &answer, &error) != 0) {
            rc = kiln_cli_fail_http (error);
            break;
        }
        json_t *revision = json_object_get (answer, "revision");
        const char *start_error = json_string_value (json_object_get (answer, "last_error"));
        if (start_error && *start_error && (!last_error || strcmp (last_error, start_error) != 0)) {
            free (last_error);
            last_error = strdup (start_error);
            kiln_cli_progress (cli, "a runner of %s failed to start: %s", app, start_error);
        }
        int ready = s_runner_ready (http, app, json_is_integer (revision)
                                    ? (long long) json_integer_value (revision) : -1, &error);
        json_decref (answer);
        if (ready < 0) {
            rc = kiln_cli_fail_http (error);
            break;
        }
        int64_t waited = kiln_mono_ms () - started;
        if (ready) {
            kiln_cli_progress (cli, "%s is ready in %.1f s", app, (double) waited / 1000.0);
            rc = 0;
            break;
        }
        if (waited >= timeout_ms) {
            kiln_cli_progress (cli, "no runner of %s is ready after %d s", app, timeout_ms / 1000);
            break;
        }
        kiln_cli_sleep_ms (POLL_MS);
    }
    free (last_error);
    free (app_path);
    return rc;
}

//  Keeps one runner of the app up while it runs, as fal run does: the
//  first call does not wait for a cold start, and the logs show setup.
static int
s_keep_one_up (kiln_http_t *http, const char *app)
{
    json_t *patch = json_pack ("{s:i}", "min_concurrency", 1);
    char *path = patch ? kiln_cli_path ("/v1/apps/%s", app) : NULL;
    json_t *answer = NULL;
    int rc = kiln_cli_json (http, "PATCH", path, patch, &answer);
    json_decref (patch);
    json_decref (answer);
    free (path);
    return rc;
}

static int
s_delete (kiln_http_t *http, const char *app)
{
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s", app);
    int rc = kiln_cli_json (http, "DELETE", path, NULL, &answer);
    json_decref (answer);
    free (path);
    if (rc)
        return rc;
    printf ("deleted %s\n", app);
    fflush (stdout);
    return KILN_EXIT_OK;
}

int
kiln_run_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "progress", no_argument, NULL, KILN_OPT_PROGRESS },
        { "auth", required_argument, NULL, KILN_OPT_AUTH },
        { "max-queue-length", required_argument, NULL, KILN_OPT_MAX_QUEUE_LENGTH },
        { NULL, 0, NULL, 0 }
    };
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (s_help_text, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == KILN_OPT_PROGRESS)
            cli->progress = true;
        else
        if (opt == KILN_OPT_AUTH || opt == KILN_OPT_MAX_QUEUE_LENGTH) {
            int rc = kiln_deploy_override ("run", opt, optarg);
            if (rc != KILN_EXIT_OK)
                return rc;
        }
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option ("run", opt, argv);
    }
    if (optind >= argc)
        return kiln_cli_usage ("run", "run needs the app: kiln run APP.so or FILE.py::ClassName");
    if (optind + 1 < argc)
        return kiln_cli_usage ("run", "run takes one file, got '%s' too", argv [optind + 1]);
    const char *path = argv [optind];
    char name [2 * KILN_NAME_MAX + 2];
    s_run_name (path, name, sizeof name);

    kiln_http_t *http = kiln_cli_http (cli);
    if (!http)
        return KILN_EXIT_FAILURE;
    kiln_http_set_timeout_ms (http, RUN_TIMEOUT_MS);
    //  From here a Ctrl-C ends the run in order: whatever was deployed
    //  is deleted.
    kiln_cli_catch_signals ();
    char *error = NULL;
    char *deployed = NULL;
    if (kiln_deploy_app (cli, http, path, name, &deployed, &error) != 0) {
        int rc = kiln_cli_fail_http (error);
        kiln_http_destroy (&http);
        return rc;
    }
    int rc = s_keep_one_up (http, deployed);
    char *since = NULL;
    if (rc == KILN_EXIT_OK && !kiln_cli_stop) {
        printf ("streaming the logs of %s; Ctrl-C stops it and deletes the app\n", deployed);
        fflush (stdout);
        int waited = kiln_cli_wait_ready (cli, http, deployed, RUN_READY_TIMEOUT_MS, true, &since);
        if (waited > 0)
            rc = waited;
    }
    while (rc == KILN_EXIT_OK && !kiln_cli_stop) {
        rc = kiln_logs_print (http, deployed, &since, 100, false);
        kiln_cli_sleep_ms (POLL_MS);
    }
    //  Deleted whatever happened above, once.
    int deleted = s_delete (http, deployed);
    free (since);
    free (deployed);
    kiln_http_destroy (&http);
    return rc != KILN_EXIT_OK ? rc : deleted;
}
