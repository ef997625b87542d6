/*  =========================================================================
    requests — kiln requests show ID | logs ID [--follow] | cancel ID

    One request, found by its id alone (whatever app it went to), through
    the gateway's /v1/requests routes:

    | command                 | sends                              | prints                     |
    |-------------------------|------------------------------------|----------------------------|
    | requests show ID        | GET /v1/requests/ID                | its fields (or --json)     |
    | requests logs ID        | GET /v1/requests/ID                | its log lines              |
    |   [--follow]            |   every FOLLOW_POLL_MS             |   new lines to COMPLETED   |
    | requests cancel ID      | PUT /v1/requests/ID/cancel         | what the gateway answered  |

    A request is {id, app, path, state, status, error, error_type,
    priority, created_ms, started_ms, completed_ms, attempts, runner,
    queue_position (queued only), logs}; its body and result are never
    shown here (the queue API gives the result).
    =========================================================================
*/
#include "cli.h"
#include "kiln_keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

//  How often `requests logs --follow` looks for new lines.
#define FOLLOW_POLL_MS 250
//  The calls are small: a gateway that takes longer is stuck.
#define REQUESTS_TIMEOUT_MS 60000

static const char *s_help_text =
    "usage: kiln requests show ID [--json]\n"
    "       kiln requests logs ID [--follow] [--json]\n"
    "       kiln requests cancel ID [--json]\n"
    "\n"
    "Shows a request (its app, state, status, timings, runner and, while it\n"
    "waits, its place in the queue), prints its log lines, or cancels it: a\n"
    "queued request is cancelled at once, a running one is asked to stop.\n"
    "\n"
    "options:\n"
    "  --json               print the gateway's answer as it is (JSON; logs: one line\n"
    "                       a JSON object)\n"
    "  -f, --follow         keep printing new log lines until the request completes\n"
    "                       (or Ctrl-C)\n"
    KILN_CLI_COMMON_HELP;

//  GET or PUT on /v1/requests/ID[suffix]. 0 with *answer (caller decrefs),
//  else the exit code, reported.
static int
s_call (kiln_cli_t *cli, const char *method, const char *id, const char *suffix,
        json_t **answer)
{
    char *path = kiln_cli_path ("/v1/requests/%s%s", id, suffix);
    int rc = kiln_cli_call (cli, REQUESTS_TIMEOUT_MS, method, path, NULL, answer);
    free (path);
    return rc;
}

//  "2026-11-28 18:00:05.123" in local time, or "-".
static void
s_format_time (json_t *value, char *out, size_t size)
{
    if (!json_is_integer (value) || json_integer_value (value) <= 0) {
        snprintf (out, size, "-");
        return;
    }
    long long ms = (long long) json_integer_value (value);
    time_t seconds = (time_t) (ms / 1000);
    struct tm tm;
    char text [32];
    if (!localtime_r (&seconds, &tm) || !strftime (text, sizeof text, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf (out, size, "-");
    else
        snprintf (out, size, "%s.%03lld", text, ms % 1000);
}

//  A field as text: strings as they are, numbers in decimal, else "-".
static void
s_field (json_t *request, const char *key, char *out, size_t size)
{
    json_t *value = json_object_get (request, key);
    if (json_is_string (value) && *json_string_value (value))
        snprintf (out, size, "%s", json_string_value (value));
    else
    if (json_is_integer (value))
        snprintf (out, size, "%" JSON_INTEGER_FORMAT, json_integer_value (value));
    else
        snprintf (out, size, "-");
}

static void
s_print_line (json_t *line, bool raw)
{
    if (raw) {
        char *text = json_dumps (line, JSON_COMPACT);
        if (text)
            printf ("%s\n", text);
        free (text);
        return;
    }
    const char *level = json_string_value (json_object_get (line, "level"));
    const char *message = json_string_value (json_object_get (line, "message"));
    printf ("%-7s %s\n", level ? level : "INFO", message ? message : "");
}

static int
s_show (kiln_cli_t *cli, const char *id, bool raw)
{
    json_t *request = NULL;
    int rc = s_call (cli, "GET", id, "", &request);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (request, "null");
    static const char *fields [] = {
        "id", "app", "path", "state", "queue_position", "status", "error", "error_type",
        "priority", "attempts", "runner", NULL
    };
    char text [1024];
    for (int i = 0; fields [i]; i++) {
        if (strcmp (fields [i], "queue_position") == 0
        &&  !json_object_get (request, "queue_position"))
            continue;
        s_field (request, fields [i], text, sizeof text);
        printf ("%-16s%s\n", fields [i], text);
    }
    static const char *times [] = { "created_ms", "started_ms", "completed_ms", NULL };
    static const char *labels [] = { "created", "started", "completed" };
    for (int i = 0; times [i]; i++) {
        s_format_time (json_object_get (request, times [i]), text, sizeof text);
        printf ("%-16s%s\n", labels [i], text);
    }
    printf ("%-16s%zu\n", "log_lines", json_array_size (json_object_get (request, "logs")));
    json_decref (request);
    return KILN_EXIT_OK;
}

static int
s_logs (kiln_cli_t *cli, const char *id, bool follow, bool raw)
{
    size_t printed = 0;
    //  Ctrl-C ends a --follow with exit 0: stopping is what it is for.
    if (follow)
        kiln_cli_catch_signals ();
    while (true) {
        json_t *request = NULL;
        int rc = s_call (cli, "GET", id, "", &request);
        if (rc)
            return rc;
        json_t *logs = json_object_get (request, "logs");
        for (size_t i = printed; i < json_array_size (logs); i++)
            s_print_line (json_array_get (logs, i), raw);
        printed = json_array_size (logs) > printed ? json_array_size (logs) : printed;
        fflush (stdout);
        const char *state = json_string_value (json_object_get (request, "state"));
        bool done = !state || strcmp (state, "COMPLETED") == 0;
        json_decref (request);
        if (!follow || done || kiln_cli_stop)
            return KILN_EXIT_OK;
        kiln_cli_sleep_ms (FOLLOW_POLL_MS);
        if (kiln_cli_stop)
            return KILN_EXIT_OK;
    }
}

static int
s_cancel (kiln_cli_t *cli, const char *id, bool raw)
{
    json_t *answer = NULL;
    int rc = s_call (cli, "PUT", id, "/cancel", &answer);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    const char *status = json_string_value (json_object_get (answer, "status"));
    printf ("request %s: %s\n", id, status ? status : "CANCELLATION_REQUESTED");
    json_decref (answer);
    return KILN_EXIT_OK;
}

int
kiln_requests_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "json",   no_argument, NULL, 'j' },
        { "follow", no_argument, NULL, 'f' },
        { NULL, 0, NULL, 0 }
    };
    bool raw = false;
    bool follow = false;
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hf", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (s_help_text, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == 'j')
            raw = true;
        else
        if (opt == 'f')
            follow = true;
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option ("requests", opt, argv);
    }
    if (optind >= argc)
        return kiln_cli_usage ("requests", "requests needs a subcommand: show, logs or cancel");
    const char *verb = argv [optind];
    bool show = strcmp (verb, "show") == 0;
    bool logs = strcmp (verb, "logs") == 0;
    bool cancel = strcmp (verb, "cancel") == 0;
    if (!show && !logs && !cancel)
        return kiln_cli_usage ("requests", "unknown requests subcommand '%s' (show, logs, cancel)",
                               verb);
    if (argc - optind != 2)
        return kiln_cli_usage ("requests", "requests %s needs one request id: "
                               "kiln requests %s ID", verb, verb);
    const char *id = argv [optind + 1];
    if (!kiln_id_valid (id))
        return kiln_cli_usage ("requests", "invalid request id '%s': ids are UUIDs "
                               "(0-9, a-f and -)", id);
    if (follow && !logs)
        return kiln_cli_usage ("requests", "--follow is for requests logs only");
    if (show)
        return s_show (cli, id, raw);
    if (logs)
        return s_logs (cli, id, follow, raw);
    return s_cancel (cli, id, raw);
}
