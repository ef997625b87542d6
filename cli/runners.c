/*  =========================================================================
    runners — kiln runners [--app OWNER/APP] | kiln workers

    What the platform runs right now, as the broker last published it
    (it rewrites its view every second): the gateway's GET /v1/runners
    and GET /v1/workers, printed as tables for people, or as they came
    with --json.
    =========================================================================
*/
#include "cli.h"
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  The listings are small: a gateway that takes longer is stuck.
#define LIST_TIMEOUT_MS 60000
//  Runner ids are "r-" and a UUID: its first group tells them apart.
#define SHORT_ID_LEN 10

static const char *s_runners_help =
    "usage: kiln runners [--app OWNER/APP] [--json]\n"
    "\n"
    "Lists every runner, as the broker last saw it: its id (short), app,\n"
    "worker, machine type, GPU, state (starting, ready, busy, draining),\n"
    "requests in flight, requests served and seconds idle.\n"
    "\n"
    "options:\n"
    "  --app OWNER/APP      only this app's runners\n"
    "  --json               print the gateway's answer as it is (JSON; full ids)\n"
    KILN_CLI_COMMON_HELP;

static const char *s_workers_help =
    "usage: kiln workers [--json]\n"
    "\n"
    "Lists every worker, as the broker last saw it: its id, host, slots per\n"
    "machine type, slots in use, and whether it is draining (taking no new\n"
    "runners before it leaves).\n"
    "\n"
    "options:\n"
    "  --json               print the gateway's answer as it is (JSON)\n"
    KILN_CLI_COMMON_HELP;

//  GETs path and hands back the list under key (new reference). Returns
//  an exit code; with raw, prints the answer itself and *list stays NULL.
static int
s_fetch (kiln_cli_t *cli, const char *path, const char *key, bool raw, json_t **list)
{
    *list = NULL;
    json_t *answer = NULL;
    int rc = kiln_cli_call (cli, LIST_TIMEOUT_MS, "GET", path, NULL, &answer);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    json_t *found = json_object_get (answer, key);
    if (!json_is_array (found)) {
        json_decref (answer);
        return kiln_cli_fail ("the gateway's answer to GET %s holds no list of %s", path, key);
    }
    *list = json_incref (found);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static const char *
s_string (json_t *object, const char *key)
{
    const char *value = json_string_value (json_object_get (object, key));
    return value ? value : "";
}

//  A count as the broker gives it, or -1.
static long long
s_count (json_t *object, const char *key)
{
    json_t *value = json_object_get (object, key);
    if (json_is_integer (value))
        return (long long) json_integer_value (value);
    if (json_is_real (value))
        return (long long) json_real_value (value);
    return -1;
}

//  "45s", "12m05s", "3h20m", "2d04h".
static void
s_format_idle (long long seconds, char *out, size_t size)
{
    if (seconds < 0)
        snprintf (out, size, "-");
    else
    if (seconds < 60)
        snprintf (out, size, "%llds", seconds);
    else
    if (seconds < 3600)
        snprintf (out, size, "%lldm%02llds", seconds / 60, seconds % 60);
    else
    if (seconds < 86400)
        snprintf (out, size, "%lldh%02lldm", seconds / 3600, seconds % 3600 / 60);
    else
        snprintf (out, size, "%lldd%02lldh", seconds / 86400, seconds % 86400 / 3600);
}

static void
s_add_count (kiln_table_t *table, long long count)
{
    if (count < 0)
        kiln_table_add (table, NULL);
    else
        kiln_table_addf (table, "%lld", count);
}

static int
s_print_runners (json_t *runners)
{
    static const char *headings [] = {
        "ID", "APP", "WORKER", "MACHINE", "GPU", "STATE", "INFLIGHT", "SERVED", "IDLE", NULL
    };
    kiln_table_t *table = kiln_table_new (9);
    if (!table)
        return kiln_cli_fail ("out of memory");
    for (int i = 0; headings [i]; i++)
        kiln_table_add (table, headings [i]);
    size_t index;
    json_t *runner;
    json_array_foreach (runners, index, runner) {
        kiln_table_addf (table, "%.*s", SHORT_ID_LEN, s_string (runner, "id"));
        kiln_table_add (table, s_string (runner, "app"));
        kiln_table_add (table, s_string (runner, "worker"));
        kiln_table_add (table, s_string (runner, "machine_type"));
        //  The GPU may come as an index too
        json_t *gpu = json_object_get (runner, "gpu");
        if (json_is_integer (gpu))
            kiln_table_addf (table, "%" JSON_INTEGER_FORMAT, json_integer_value (gpu));
        else
            kiln_table_add (table, json_string_value (gpu));
        kiln_table_add (table, s_string (runner, "state"));
        long long inflight = s_count (runner, "inflight");
        s_add_count (table, inflight);
        s_add_count (table, s_count (runner, "served"));
        //  Idle time means nothing while it serves or starts
        char idle [32];
        const char *state = s_string (runner, "state");
        bool working = inflight > 0 || strcmp (state, "starting") == 0;
        s_format_idle (working ? -1 : s_count (runner, "idle_s"), idle, sizeof idle);
        kiln_table_add (table, idle);
    }
    kiln_table_print (table, stdout);
    kiln_table_destroy (&table);
    return KILN_EXIT_OK;
}

//  "CPU=16,GPU-H100=2" from {"CPU": 16, "GPU-H100": 2}; with offered,
//  every type offered is listed (0 when absent from counts).
static void
s_add_slots (kiln_table_t *table, json_t *counts, json_t *offered)
{
    char text [256] = "";
    size_t used = 0;
    const char *type;
    json_t *value;
    json_object_foreach (offered ? offered : counts, type, value) {
        json_t *count = offered ? json_object_get (counts, type) : value;
        int n = snprintf (text + used, sizeof text - used, "%s%s=%" JSON_INTEGER_FORMAT,
                          used ? "," : "", type,
                          json_is_integer (count) ? json_integer_value (count) : 0);
        if (n < 0 || (size_t) n >= sizeof text - used)
            break;
        used += (size_t) n;
    }
    kiln_table_add (table, text);
}

static int
s_print_workers (json_t *workers)
{
    static const char *headings [] = { "ID", "HOST", "SLOTS", "USED", "DRAINING", NULL };
    kiln_table_t *table = kiln_table_new (5);
    if (!table)
        return kiln_cli_fail ("out of memory");
    for (int i = 0; headings [i]; i++)
        kiln_table_add (table, headings [i]);
    size_t index;
    json_t *worker;
    json_array_foreach (workers, index, worker) {
        kiln_table_add (table, s_string (worker, "id"));
        kiln_table_add (table, s_string (worker, "host"));
        json_t *slots = json_object_get (worker, "slots");
        s_add_slots (table, slots, NULL);
        s_add_slots (table, json_object_get (worker, "used"), slots);
        kiln_table_add (table, json_is_true (json_object_get (worker, "draining")) ? "yes" : "no");
    }
    kiln_table_print (table, stdout);
    kiln_table_destroy (&table);
    return KILN_EXIT_OK;
}

//  Both commands: [--app OWNER/APP] (runners only) [--json], no operand.
static int
s_main (kiln_cli_t *cli, int argc, char *argv [], bool runners)
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "json", no_argument,       NULL, 'j' },
        { "app",  required_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 }
    };
    const char *command = runners ? "runners" : "workers";
    bool raw = false;
    const char *app = NULL;
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (runners ? s_runners_help : s_workers_help, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == 'j')
            raw = true;
        else
        if (opt == 'a' && runners)
            app = optarg;
        else
        if (opt == 'a')
            return kiln_cli_usage (command, "unknown option --app");
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option (command, opt, argv);
    }
    if (optind < argc)
        return kiln_cli_usage (command, "%s takes no argument, got '%s'", command, argv [optind]);
    const char *problem = app ? kiln_cli_app_name_problem (app) : NULL;
    if (problem)
        return kiln_cli_usage (command, "invalid app name '%s': %s", app, problem);

    char *path = kiln_cli_path ("/v1/%s%s%s", command, app ? "?app=" : "", app ? app : "");
    if (!path)
        return kiln_cli_fail ("out of memory");
    json_t *list = NULL;
    int rc = s_fetch (cli, path, command, raw, &list);
    free (path);
    if (rc != KILN_EXIT_OK || raw)
        return rc;
    rc = runners ? s_print_runners (list) : s_print_workers (list);
    json_decref (list);
    return rc;
}

int
kiln_runners_main (kiln_cli_t *cli, int argc, char *argv [])
{
    return s_main (cli, argc, argv, true);
}

int
kiln_workers_main (kiln_cli_t *cli, int argc, char *argv [])
{
    return s_main (cli, argc, argv, false);
}
