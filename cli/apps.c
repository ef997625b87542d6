/*  =========================================================================
    apps — kiln apps list | show | scale | delete | revisions | rollback

    The gateway's /v1/apps routes, printed for people (or raw with --json).
    An app as the gateway gives it: {name, revision, artifact, manifest,
    updated_ms, urls, scale, effective, failed_starts, last_error,
    last_error_ms}; the manifest may come as an object or as the JSON
    text the registry stores. `scale` holds the live overrides that
    `kiln apps scale` sets (PATCH /v1/apps/OWNER/APP) and `effective` the
    bounds the broker scales by; an older gateway sends neither, and then
    the manifest's own values are shown.

    Every deploy is a revision: `apps revisions` lists them (GET
    /v1/apps/OWNER/APP/revisions, newest first) and `apps rollback`
    makes an older one current (POST .../rollback {revision}); requests
    already running finish on the revision they started on.
    =========================================================================
*/
#include "cli.h"
#include "table.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  kiln apps list: NAME REVISION MACHINE_TYPES ARTIFACT UPDATED
#define LIST_COLUMNS 5
#define LIST_CELL_MAX 160

static const char *s_help_text =
    "usage: kiln apps list [--json]\n"
    "       kiln apps show OWNER/APP [--json]\n"
    "       kiln apps scale OWNER/APP [--min N] [--max N] [--buffer N] [--keep-alive S]\n"
    "                       [--reset] [--json]\n"
    "       kiln apps delete OWNER/APP [--json]\n"
    "       kiln apps revisions OWNER/APP [--json]\n"
    "       kiln apps rollback OWNER/APP REVISION [--json]\n"
    "\n"
    "Lists, shows, scales and deletes deployed apps.\n"
    "\n"
    "Every deploy makes a new revision. 'apps revisions' lists them, newest\n"
    "first, with * on the one that serves; 'apps rollback' makes an older\n"
    "revision serve at once: new requests go to its runners, and requests\n"
    "already running finish on the revision they started on.\n"
    "\n"
    "'apps scale' changes a running app's bounds at once, without a redeploy:\n"
    "the broker starts or retires runners to meet them. Options not given keep\n"
    "their value (an earlier override, else the app's own); --reset drops every\n"
    "override first, back to the app's own values. Overrides outlive redeploys.\n"
    "It prints the bounds now in force.\n"
    "\n"
    "options:\n"
    "  --min N              min_concurrency: runners kept up even with no traffic\n"
    "  --max N              max_concurrency: never more runners than this (at least 1)\n"
    "  --buffer N           concurrency_buffer: spare runners kept above demand\n"
    "  --keep-alive S       keep_alive: seconds an idle runner lives before it retires\n"
    "  --reset              drop every override (before the options above, if any)\n"
    "  --json               print the gateway's answer as it is (JSON)\n"
    KILN_CLI_COMMON_HELP;

//  The bounds `kiln apps scale` changes: option, the manifest's field.
static const struct {
    const char *option;
    const char *field;
} s_bounds [] = {
    { "--min",        "min_concurrency" },
    { "--max",        "max_concurrency" },
    { "--buffer",     "concurrency_buffer" },
    { "--keep-alive", "keep_alive" },
};
#define BOUND_COUNT 4
//  getopt_long values of the bound options: OPT_BOUND + their index above.
#define OPT_BOUND 0x2000

//  The /v1/apps calls are small: a gateway that takes longer than this
//  is stuck, and the user should hear so.
#define APPS_TIMEOUT_MS 60000

//  The manifest of an app, as an object (new reference) or NULL.
static json_t *
s_manifest (json_t *app)
{
    json_t *manifest = json_object_get (app, "manifest");
    if (json_is_object (manifest))
        return json_incref (manifest);
    if (json_is_string (manifest))
        return json_loads (json_string_value (manifest), 0, NULL);
    return NULL;
}

//  A field that may come as a number or as a string of digits (Redis
//  hashes hold strings).
static long long
s_integer (json_t *object, const char *key)
{
    json_t *value = json_object_get (object, key);
    if (json_is_integer (value))
        return (long long) json_integer_value (value);
    if (json_is_real (value))
        return (long long) json_real_value (value);
    if (json_is_string (value))
        return strtoll (json_string_value (value), NULL, 10);
    return -1;
}

static const char *
s_string (json_t *object, const char *key, const char *fallback)
{
    const char *value = json_string_value (json_object_get (object, key));
    return value ? value : fallback;
}

//  "GPU-H100,CPU" from the manifest's machine_types.
static void
s_machine_types (json_t *manifest, char *out, size_t size)
{
    out [0] = 0;
    json_t *types = json_object_get (manifest, "machine_types");
    size_t index;
    json_t *type;
    size_t used = 0;
    json_array_foreach (types, index, type) {
        if (!json_is_string (type))
            continue;
        int n = snprintf (out + used, size - used, "%s%s", used ? "," : "", json_string_value (type));
        if (n < 0 || (size_t) n >= size - used)
            break;
        used += (size_t) n;
    }
    if (!out [0])
        snprintf (out, size, "-");
}

//  One bound or setting of an app: the value in force (a live override,
//  else the manifest's), marked when it is an override.
static void
s_print_field (json_t *app, json_t *manifest, const char *field)
{
    json_t *scale = json_object_get (app, "scale");
    json_t *effective = json_object_get (app, "effective");
    long long own = s_integer (manifest, field);
    long long value = json_object_get (effective, field) ? s_integer (effective, field) : own;
    if (value < 0)
        return;
    const char *unit = strstr (field, "timeout") || strcmp (field, "keep_alive") == 0 ? " s" : "";
    printf ("%s:%*s%lld%s", field, (int) (19 - strlen (field)), "", value, unit);
    if (json_object_get (scale, field) && own >= 0)
        printf ("  (scaled; the app's own: %lld%s)", own, unit);
    else
    if (json_object_get (scale, field))
        printf ("  (scaled)");
    printf ("\n");
}

static int
s_list (kiln_cli_t *cli, bool raw)
{
    json_t *answer = NULL;
    int rc = kiln_cli_call (cli, APPS_TIMEOUT_MS, "GET", "/v1/apps", NULL, &answer);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    json_t *apps = json_is_array (answer) ? answer : json_object_get (answer, "apps");
    if (!json_is_array (apps)) {
        json_decref (answer);
        return kiln_cli_fail ("the gateway's answer to GET /v1/apps holds no list of apps");
    }
    //  Cells first, then print with each column as wide as its widest.
    size_t rows = json_array_size (apps) + 1;
    char (*cells) [LIST_COLUMNS][LIST_CELL_MAX] = calloc (rows, sizeof *cells);
    if (!cells) {
        json_decref (answer);
        return kiln_cli_fail ("out of memory");
    }
    static const char *headings [LIST_COLUMNS] = {
        "NAME", "REVISION", "MACHINE_TYPES", "ARTIFACT", "UPDATED"
    };
    for (int column = 0; column < LIST_COLUMNS; column++)
        snprintf (cells [0][column], LIST_CELL_MAX, "%s", headings [column]);
    size_t index;
    json_t *app;
    json_array_foreach (apps, index, app) {
        char (*row) [LIST_CELL_MAX] = cells [index + 1];
        for (int column = 1; column < LIST_COLUMNS; column++)
            snprintf (row [column], LIST_CELL_MAX, "-");
        //  A plain list of names is an answer too.
        if (json_is_string (app)) {
            snprintf (row [0], LIST_CELL_MAX, "%s", json_string_value (app));
            continue;
        }
        json_t *manifest = s_manifest (app);
        snprintf (row [0], LIST_CELL_MAX, "%s", s_string (app, "name", "?"));
        long long revision = s_integer (app, "revision");
        if (revision >= 0)
            snprintf (row [1], LIST_CELL_MAX, "%lld", revision);
        s_machine_types (manifest, row [2], LIST_CELL_MAX);
        snprintf (row [3], LIST_CELL_MAX, "%.12s", s_string (app, "artifact", "-"));
        kiln_cli_format_time (s_integer (app, "updated_ms"), row [4], LIST_CELL_MAX);
        json_decref (manifest);
    }
    int widths [LIST_COLUMNS] = { 0 };
    for (size_t row = 0; row < rows; row++)
        for (int column = 0; column < LIST_COLUMNS; column++) {
            int width = (int) strlen (cells [row][column]);
            if (width > widths [column])
                widths [column] = width;
        }
    for (size_t row = 0; row < rows; row++) {
        for (int column = 0; column < LIST_COLUMNS - 1; column++)
            printf ("%-*s  ", widths [column], cells [row][column]);
        printf ("%s\n", cells [row][LIST_COLUMNS - 1]);
    }
    free (cells);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_show (kiln_cli_t *cli, const char *name, bool raw)
{
    //  Its own client: the answer's URLs fall back to its base URL
    kiln_http_t *http = kiln_cli_http (cli);
    if (!http)
        return KILN_EXIT_FAILURE;
    kiln_http_set_timeout_ms (http, APPS_TIMEOUT_MS);
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s", name);
    int rc = kiln_cli_json (http, "GET", path, NULL, &answer);
    free (path);
    if (rc) {
        kiln_http_destroy (&http);
        return rc;
    }
    if (raw) {
        kiln_http_destroy (&http);
        return kiln_cli_print_answer (answer, "null");
    }
    //  Some gateways wrap the app: {"app": {...}}.
    json_t *app = json_is_object (json_object_get (answer, "app"))
                ? json_object_get (answer, "app") : answer;
    json_t *manifest = s_manifest (app);
    char updated [32], types [128];
    kiln_cli_format_time (s_integer (app, "updated_ms"), updated, sizeof updated);
    s_machine_types (manifest, types, sizeof types);
    printf ("%-20s%s\n", "name:", s_string (app, "name", name));
    long long revision = s_integer (app, "revision");
    if (revision >= 0)
        printf ("%-20s%lld\n", "revision:", revision);
    printf ("%-20s%s\n", "artifact:", s_string (app, "artifact", "-"));
    printf ("%-20s%s\n", "updated:", updated);

    json_t *urls = json_object_get (app, "urls");
    const char *sync_url = s_string (urls, "sync", NULL);
    const char *queue_url = s_string (urls, "queue", NULL);
    char *fallback_sync = NULL, *fallback_queue = NULL;
    if (!sync_url && asprintf (&fallback_sync, "%s/%s", kiln_http_base (http), name) >= 0)
        sync_url = fallback_sync;
    if (!queue_url && asprintf (&fallback_queue, "%s/queue/%s", kiln_http_base (http), name) >= 0)
        queue_url = fallback_queue;
    printf ("%-20s%s\n", "sync:", sync_url ? sync_url : "-");
    printf ("%-20s%s\n", "queue:", queue_url ? queue_url : "-");
    free (fallback_sync);
    free (fallback_queue);

    if (manifest) {
        printf ("%-20s%s\n", "machine_types:", types);
        static const char *fields [] = {
            "keep_alive", "min_concurrency", "max_concurrency", "concurrency_buffer",
            "max_multiplexing", "request_timeout", "startup_timeout", NULL
        };
        for (int i = 0; fields [i]; i++)
            s_print_field (app, manifest, fields [i]);
        json_t *endpoints = json_object_get (manifest, "endpoints");
        size_t index;
        json_t *endpoint;
        printf ("%-19s", "endpoints:");
        json_array_foreach (endpoints, index, endpoint)
            if (json_is_string (endpoint))
                printf (" %s", json_string_value (endpoint));
        printf ("\n");
    }
    //  Starts that failed in a row, and why the last one did
    if (json_object_get (app, "failed_starts")) {
        long long failed = s_integer (app, "failed_starts");
        printf ("%-20s%lld\n", "failed_starts:", failed > 0 ? failed : 0);
    }
    const char *last_error = s_string (app, "last_error", NULL);
    if (last_error && *last_error) {
        char when [32];
        kiln_cli_format_time (s_integer (app, "last_error_ms"), when, sizeof when);
        if (strcmp (when, "-") != 0)
            printf ("%-20s%s (at %s)\n", "last_error:", last_error, when);
        else
            printf ("%-20s%s\n", "last_error:", last_error);
    }
    else
    if (json_object_get (app, "last_error"))
        printf ("%-20s-\n", "last_error:");
    json_decref (manifest);
    json_decref (answer);
    kiln_http_destroy (&http);
    return KILN_EXIT_OK;
}

//  A bound's value: a whole number from 0 to INT_MAX, digits only. -1
//  when it is not one.
static long long
s_bound_value (const char *text)
{
    if (!*text || strlen (text) > 10)
        return -1;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    long long value = strtoll (text, NULL, 10);
    return value <= INT_MAX ? value : -1;
}

static int
s_scale (kiln_cli_t *cli, const char *name, json_t *patch, bool raw)
{
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s", name);
    int rc = kiln_cli_call (cli, APPS_TIMEOUT_MS, "PATCH", path, patch, &answer);
    free (path);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    json_t *manifest = s_manifest (answer);
    printf ("scaled %s\n", s_string (answer, "name", name));
    for (int i = 0; i < BOUND_COUNT; i++)
        s_print_field (answer, manifest, s_bounds [i].field);
    json_decref (manifest);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_delete (kiln_cli_t *cli, const char *name, bool raw)
{
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s", name);
    int rc = kiln_cli_call (cli, APPS_TIMEOUT_MS, "DELETE", path, NULL, &answer);
    free (path);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    printf ("deleted %s\n", name);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_revisions (kiln_cli_t *cli, const char *name, bool raw)
{
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s/revisions", name);
    int rc = kiln_cli_call (cli, APPS_TIMEOUT_MS, "GET", path, NULL, &answer);
    free (path);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    json_t *revisions = json_object_get (answer, "revisions");
    if (!json_is_array (revisions)) {
        json_decref (answer);
        return kiln_cli_fail ("the gateway's answer holds no list of revisions");
    }
    long long current = s_integer (answer, "current");
    kiln_table_t *table = kiln_table_new (4);
    if (!table) {
        json_decref (answer);
        return kiln_cli_fail ("out of memory");
    }
    kiln_table_add (table, "REVISION");
    kiln_table_add (table, "ARTIFACT");
    kiln_table_add (table, "CREATED");
    kiln_table_add (table, "CURRENT");
    size_t index;
    json_t *revision;
    json_array_foreach (revisions, index, revision) {
        char created [32];
        long long number = s_integer (revision, "revision");
        kiln_cli_format_time (s_integer (revision, "created_ms"), created, sizeof created);
        kiln_table_addf (table, "%lld", number);
        kiln_table_addf (table, "%.12s", s_string (revision, "artifact", "-"));
        kiln_table_add (table, created);
        kiln_table_add (table, number == current ? "*" : "");
    }
    kiln_table_print (table, stdout);
    kiln_table_destroy (&table);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_rollback (kiln_cli_t *cli, const char *name, long long revision, bool raw)
{
    json_t *body = json_pack ("{s:I}", "revision", (json_int_t) revision);
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s/rollback", name);
    int rc = body ? kiln_cli_call (cli, APPS_TIMEOUT_MS, "POST", path, body, &answer)
                  : kiln_cli_fail ("out of memory");
    free (path);
    json_decref (body);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "null");
    printf ("rolled %s back to revision %lld (artifact %.12s)\n",
            s_string (answer, "name", name), s_integer (answer, "revision"),
            s_string (answer, "artifact", "-"));
    json_decref (answer);
    return KILN_EXIT_OK;
}

int
kiln_apps_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "json",       no_argument,       NULL, 'j' },
        { "min",        required_argument, NULL, OPT_BOUND + 0 },
        { "max",        required_argument, NULL, OPT_BOUND + 1 },
        { "buffer",     required_argument, NULL, OPT_BOUND + 2 },
        { "keep-alive", required_argument, NULL, OPT_BOUND + 3 },
        { "reset",      no_argument,       NULL, 'r' },
        { NULL, 0, NULL, 0 }
    };
    bool raw = false;
    bool reset = false;
    const char *bounds [BOUND_COUNT] = { NULL };
    const char *scale_option = NULL;        //  one that was given, for errors
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == KILN_CLI_OPT_HELP) {
            fputs (s_help_text, stdout);
            return KILN_EXIT_OK;
        }
        if (opt == 'j')
            raw = true;
        else
        if (opt == 'r') {
            reset = true;
            scale_option = "--reset";
        }
        else
        if (opt >= OPT_BOUND && opt < OPT_BOUND + BOUND_COUNT) {
            int bound = opt - OPT_BOUND;
            if (s_bound_value (optarg) < 0)
                return kiln_cli_usage ("apps", "%s needs a whole number from 0 to %d, not '%s'",
                                       s_bounds [bound].option, INT_MAX, optarg);
            bounds [bound] = optarg;
            scale_option = s_bounds [bound].option;
        }
        else
        if (!kiln_cli_common_option (cli, opt, optarg))
            return kiln_cli_bad_option ("apps", opt, argv);
    }
    if (optind >= argc)
        return kiln_cli_usage ("apps", "apps needs a subcommand: list, show, scale, delete, "
                               "revisions or rollback");
    const char *verb = argv [optind];
    int operands = argc - optind - 1;
    const char *name = operands > 0 ? argv [optind + 1] : NULL;
    bool scale = strcmp (verb, "scale") == 0;
    if (scale_option && !scale)
        return kiln_cli_usage ("apps", "%s is for apps scale only", scale_option);

    if (strcmp (verb, "list") == 0 || strcmp (verb, "ls") == 0) {
        if (operands > 0)
            return kiln_cli_usage ("apps", "apps list takes no argument, got '%s'", name);
        return s_list (cli, raw);
    }
    bool show = strcmp (verb, "show") == 0;
    bool delete = strcmp (verb, "delete") == 0 || strcmp (verb, "rm") == 0;
    bool revisions = strcmp (verb, "revisions") == 0;
    bool rollback = strcmp (verb, "rollback") == 0;
    if (rollback) {
        if (operands != 2)
            return kiln_cli_usage ("apps", "apps rollback needs an app and a revision: "
                                   "kiln apps rollback OWNER/APP REVISION");
        const char *problem = kiln_cli_app_name_problem (name);
        if (problem)
            return kiln_cli_usage ("apps", "invalid app name '%s': %s", name, problem);
        const char *text = argv [optind + 2];
        long long revision = s_bound_value (text);
        if (revision < 1)
            return kiln_cli_usage ("apps", "revision must be a whole number from 1, not '%s'",
                                   text);
        return s_rollback (cli, name, revision, raw);
    }
    if (!show && !delete && !scale && !revisions)
        return kiln_cli_usage ("apps", "unknown apps subcommand '%s' (list, show, scale, delete, "
                               "revisions, rollback)", verb);
    if (operands != 1)
        return kiln_cli_usage ("apps", "apps %s needs one app name: kiln apps %s OWNER/APP",
                               verb, verb);
    const char *problem = kiln_cli_app_name_problem (name);
    if (problem)
        return kiln_cli_usage ("apps", "invalid app name '%s': %s", name, problem);
    if (show)
        return s_show (cli, name, raw);
    if (revisions)
        return s_revisions (cli, name, raw);
    if (delete)
        return s_delete (cli, name, raw);

    if (!scale_option)
        return kiln_cli_usage ("apps", "apps scale needs at least one of --min, --max, "
                               "--buffer, --keep-alive or --reset");
    if (bounds [0] && bounds [1] && s_bound_value (bounds [0]) > s_bound_value (bounds [1]))
        return kiln_cli_usage ("apps", "--min %s is above --max %s", bounds [0], bounds [1]);
    if (bounds [1] && s_bound_value (bounds [1]) < 1)
        return kiln_cli_usage ("apps", "--max must be at least 1");
    json_t *patch = json_object ();
    if (!patch)
        return kiln_cli_fail ("out of memory");
    if (reset)
        json_object_set_new (patch, "reset", json_true ());
    for (int i = 0; i < BOUND_COUNT; i++)
        if (bounds [i])
            json_object_set_new (patch, s_bounds [i].field,
                                 json_integer ((json_int_t) s_bound_value (bounds [i])));
    int rc = s_scale (cli, name, patch, raw);
    json_decref (patch);
    return rc;
}
