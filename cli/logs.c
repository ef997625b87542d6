/*  =========================================================================
    logs — kiln logs OWNER/APP [--follow] [--json] [--limit N]

    An app's log stream: its handlers' lines and its runners' own output
    (setup, pip, tracebacks), which the broker appends to kiln:logs:{app}.

    | command                 | sends                                  | prints                   |
    |-------------------------|----------------------------------------|--------------------------|
    | logs OWNER/APP          | GET /v1/apps/OWNER/APP/logs?limit=N    | the last N lines         |
    |   [--follow]            |   then ?since=<next> every FOLLOW_POLL_MS | new lines, to Ctrl-C  |

    A line prints as "2026-11-28 18:00:05.123 INFO    [r-1a2b3c4d] message"
    (local time, the runner's id cut short, " (request ID)" after a
    handler's line); --json prints each line as the gateway gave it, one
    JSON object a line. kiln run follows the same way (kiln_logs_print).
    =========================================================================
*/
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  How often --follow asks for new lines.
#define FOLLOW_POLL_MS 300
//  Lines printed without --follow, and at the start of --follow.
#define LOGS_LIMIT_DEFAULT 100
#define LOGS_LIMIT_MAX 1000
//  Runner ids are "r-" and a UUID: its first group tells them apart.
#define SHORT_ID_LEN 10
//  A read is small: a gateway that takes longer is stuck.
#define LOGS_TIMEOUT_MS 30000

static const char *s_help_text =
    "usage: kiln logs OWNER/APP [--follow] [--json] [--limit N]\n"
    "\n"
    "Prints an app's recent log lines: what its handlers log for requests\n"
    "and what its runners print themselves (setup output, pip, tracebacks),\n"
    "as 'time level [runner] message'. Handler lines end with the request's id.\n"
    "\n"
    "options:\n"
    "  -f, --follow         keep printing new lines until Ctrl-C\n"
    "  -n, --limit N        how many recent lines to print first (default 100, at most 1000)\n"
    "  --json               print each line as the gateway gives it, one JSON object a line\n"
    KILN_CLI_COMMON_HELP;

//  "2026-11-28T18:00:05.123Z" as "2026-11-28 18:00:05.123" in local time;
//  anything else as it is.
static void
s_local_time (const char *iso, char *out, size_t size)
{
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    const char *rest = iso? strptime (iso, "%Y-%m-%dT%H:%M:%S", &tm): NULL;
    if (!rest) {
        snprintf (out, size, "%s", iso? iso: "-");
        return;
    }
    int ms = 0;
    if (*rest == '.')
        ms = atoi (rest + 1);
    time_t seconds = timegm (&tm);
    struct tm local;
    char text [32];
    if (!localtime_r (&seconds, &local) || !strftime (text, sizeof text, "%Y-%m-%d %H:%M:%S", &local))
        snprintf (out, size, "%s", iso);
    else
        snprintf (out, size, "%s.%03d", text, ms % 1000);
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
    const char *runner = json_string_value (json_object_get (line, "runner_id"));
    const char *request = json_string_value (json_object_get (line, "request_id"));
    char when [48];
    s_local_time (json_string_value (json_object_get (line, "timestamp")), when, sizeof when);
    printf ("%s %-7s [%.*s] %s", when, level? level: "INFO", SHORT_ID_LEN,
            runner? runner: "-", message? message: "");
    if (request)
        printf (" (request %s)", request);
    printf ("\n");
}

int
kiln_logs_print (kiln_http_t *http, const char *app, char **since, int limit, bool raw)
{
    char *path = *since
               ? kiln_cli_path ("/v1/apps/%s/logs?since=%s&limit=%d", app, *since, LOGS_LIMIT_MAX)
               : kiln_cli_path ("/v1/apps/%s/logs?limit=%d", app, limit);
    json_t *answer = NULL;
    int rc = kiln_cli_json (http, "GET", path, NULL, &answer);
    free (path);
    if (rc)
        return rc;
    json_t *logs = json_object_get (answer, "logs");
    const char *next = json_string_value (json_object_get (answer, "next"));
    if (!json_is_array (logs) || !next) {
        json_decref (answer);
        return kiln_cli_fail ("the gateway's answer to GET /v1/apps/%s/logs holds no log lines",
                              app);
    }
    size_t index;
    json_t *line;
    json_array_foreach (logs, index, line)
        s_print_line (line, raw);
    fflush (stdout);
    char *moved = strdup (next);
    if (moved) {
        free (*since);
        *since = moved;
    }
    json_decref (answer);
    return KILN_EXIT_OK;
}

int
kiln_logs_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "json",   no_argument,       NULL, 'j' },
        { "follow", no_argument,       NULL, 'f' },
        { "limit",  required_argument, NULL, 'n' },
        { NULL, 0, NULL, 0 }
    };
    bool raw = false;
    bool follow = false;
    int limit = LOGS_LIMIT_DEFAULT;
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hfn:", options, NULL)) != -1) {
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
        if (opt == 'n') {
            char *end = NULL;
            long value = strtol (optarg, &end, 10);
            if (!*optarg || *end || value < 1 || value > LOGS_LIMIT_MAX)
                return kiln_cli_usage ("logs", "--limit needs a whole number from 1 to %d, not '%s'",
                                       LOGS_LIMIT_MAX, optarg);
            limit = (int) value;
        }
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option ("logs", opt, argv);
    }
    if (optind >= argc)
        return kiln_cli_usage ("logs", "logs needs an app: kiln logs OWNER/APP");
    if (optind + 1 < argc)
        return kiln_cli_usage ("logs", "logs takes one app, got '%s' too", argv [optind + 1]);
    const char *name = argv [optind];
    const char *problem = kiln_cli_app_name_problem (name);
    if (problem)
        return kiln_cli_usage ("logs", "invalid app name '%s': %s", name, problem);

    kiln_http_t *http = kiln_cli_http (cli);
    if (!http)
        return KILN_EXIT_FAILURE;
    kiln_http_set_timeout_ms (http, LOGS_TIMEOUT_MS);
    if (follow)
        kiln_cli_catch_signals ();
    char *since = NULL;
    int rc = kiln_logs_print (http, name, &since, limit, raw);
    while (rc == KILN_EXIT_OK && follow && !kiln_cli_stop) {
        kiln_cli_sleep_ms (FOLLOW_POLL_MS);
        if (!kiln_cli_stop)
            rc = kiln_logs_print (http, name, &since, limit, raw);
    }
    free (since);
    kiln_http_destroy (&http);
    return rc;
}
