/*  =========================================================================
    secrets — kiln secrets set|list|unset: an app's secrets

    Through the gateway: PUT /v1/apps/{owner}/{app}/secrets {NAME: value},
    GET .../secrets (names and when each was set, never a value), DELETE
    .../secrets/{NAME}. The worker gives an app's secrets to its runners
    as environment variables when it starts them; a runner already up
    keeps what it had. This command never prints a value.
    =========================================================================
*/
#include "cli.h"
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Bounds each call to the gateway.
#define SECRETS_TIMEOUT_MS 10000
//  What the gateway takes (gateway_secrets.c, route.h); checked here too
//  so that a mistake is named before anything is sent.
#define SECRET_NAME_MAX 64

static const char *s_usage =
    "usage: kiln secrets set OWNER/APP NAME=VALUE [NAME=VALUE...]\n"
    "       kiln secrets list OWNER/APP [--json]\n"
    "       kiln secrets unset OWNER/APP NAME\n"
    "\n"
    "An app's secrets (tokens, keys), given to its runners as environment\n"
    "variables, never shown again: list prints names only. A change reaches\n"
    "runners started after it; scale the app down and up (or deploy again)\n"
    "to restart running ones. NAME is [A-Z_][A-Z0-9_]*, at most 64 characters,\n"
    "not starting with KILN_; a VALUE is at most 32 KiB. Mind that a VALUE on\n"
    "the command line lands in your shell's history.\n"
    "\n"
    "  --json               list: print the gateway's JSON\n"
    KILN_CLI_COMMON_HELP;

enum { OPT_JSON = 0x2001 };

//  The name rule of the gateway (kiln_route_secret_name_valid).
static bool
s_name_valid (const char *name, size_t len)
{
    if (len == 0 || len > SECRET_NAME_MAX || (len >= 5 && memcmp (name, "KILN_", 5) == 0))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name [i];
        if (!((c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

static int
s_set (kiln_cli_t *cli, const char *app, int count, char *pairs [])
{
    json_t *body = json_object ();
    if (!body)
        return kiln_cli_fail ("out of memory");
    for (int i = 0; i < count; i++) {
        const char *equals = strchr (pairs [i], '=');
        size_t name_len = equals ? (size_t) (equals - pairs [i]) : strlen (pairs [i]);
        //  Only the name in messages: the argument holds the value
        if (!equals) {
            json_decref (body);
            return kiln_cli_usage ("secrets", "'%.*s' has no '=': give NAME=VALUE",
                                   (int) (name_len > 64 ? 64 : name_len), pairs [i]);
        }
        if (!s_name_valid (pairs [i], name_len)) {
            json_decref (body);
            return kiln_cli_usage ("secrets", "'%.*s' is not a secret name: [A-Z_][A-Z0-9_]*, "
                                   "at most 64 characters, not starting with KILN_",
                                   (int) (name_len > 64 ? 64 : name_len), pairs [i]);
        }
        char name [SECRET_NAME_MAX + 1];
        memcpy (name, pairs [i], name_len);
        name [name_len] = 0;
        json_t *value = json_string (equals + 1);
        if (!value) {
            json_decref (body);
            return kiln_cli_fail ("secret %s: the value is not UTF-8 text", name);
        }
        json_object_set_new (body, name, value);
    }
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s/secrets", app);
    int rc = kiln_cli_call (cli, SECRETS_TIMEOUT_MS, "PUT", path, body, &answer);
    //  Values out of memory as soon as they are sent
    const char *name;
    json_t *value;
    json_object_foreach (body, name, value)
        if (json_string_length (value))
            explicit_bzero ((char *) json_string_value (value), json_string_length (value));
    json_decref (body);
    free (path);
    if (rc)
        return rc;
    json_t *set = json_object_get (answer, "set");
    size_t index;
    json_array_foreach (set, index, value)
        printf ("set %s on %s\n", json_string_value (value), app);
    json_decref (answer);
    fprintf (stderr, "kiln: runners started from now on get the new secrets; "
                     "running ones keep what they had\n");
    return KILN_EXIT_OK;
}

static int
s_list (kiln_cli_t *cli, const char *app, bool raw)
{
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s/secrets", app);
    int rc = kiln_cli_call (cli, SECRETS_TIMEOUT_MS, "GET", path, NULL, &answer);
    free (path);
    if (rc)
        return rc;
    if (raw)
        return kiln_cli_print_answer (answer, "{}");
    kiln_table_t *table = kiln_table_new (2);
    if (!table) {
        json_decref (answer);
        return kiln_cli_fail ("out of memory");
    }
    kiln_table_add (table, "NAME");
    kiln_table_add (table, "UPDATED");
    size_t index;
    json_t *item;
    json_array_foreach (json_object_get (answer, "secrets"), index, item) {
        char updated [32];
        kiln_cli_format_time (json_integer_value (json_object_get (item, "updated_ms")),
                              updated, sizeof updated);
        const char *name = json_string_value (json_object_get (item, "name"));
        kiln_table_add (table, name ? name : "?");
        kiln_table_add (table, updated);
    }
    kiln_table_print (table, stdout);
    kiln_table_destroy (&table);
    json_decref (answer);
    return KILN_EXIT_OK;
}

static int
s_unset (kiln_cli_t *cli, const char *app, const char *name)
{
    if (!s_name_valid (name, strlen (name)))
        return kiln_cli_usage ("secrets", "'%.64s' is not a secret name", name);
    json_t *answer = NULL;
    char *path = kiln_cli_path ("/v1/apps/%s/secrets/%s", app, name);
    int rc = kiln_cli_call (cli, SECRETS_TIMEOUT_MS, "DELETE", path, NULL, &answer);
    free (path);
    json_decref (answer);
    if (rc)
        return rc;
    printf ("unset %s on %s\n", name, app);
    return KILN_EXIT_OK;
}

int
kiln_secrets_main (kiln_cli_t *cli, int argc, char *argv [])
{
    static const struct option options [] = {
        KILN_CLI_COMMON_OPTIONS,
        { "json", no_argument, NULL, OPT_JSON },
        { 0, 0, 0, 0 }
    };
    bool raw = false;
    optind = 0;
    int opt;
    //  "+": stop at the first operand, so a VALUE that starts with '-'
    //  is not taken for an option
    while ((opt = getopt_long (argc, argv, "+:h", options, NULL)) != -1) {
        if (kiln_cli_common_option (cli, opt, optarg))
            continue;
        switch (opt) {
            case KILN_CLI_OPT_HELP:
                fputs (s_usage, stdout);
                return KILN_EXIT_OK;
            case OPT_JSON:
                raw = true;
                break;
            default:
                return kiln_cli_bad_option ("secrets", opt, argv);
        }
    }
    int left = argc - optind;
    char **args = argv + optind;
    if (left < 1)
        return kiln_cli_usage ("secrets", "set, list or unset?");
    const char *action = args [0];
    bool set = strcmp (action, "set") == 0;
    bool list = strcmp (action, "list") == 0;
    bool unset = strcmp (action, "unset") == 0;
    if (!set && !list && !unset)
        return kiln_cli_usage ("secrets", "unknown action '%s': set, list or unset", action);
    //  Options may follow the action too (kiln secrets list OWNER/APP --json)
    int kept = 1;
    for (int i = 1; i < left; i++) {
        if (strcmp (args [i], "--json") == 0 && list)
            raw = true;
        else
            args [kept++] = args [i];
    }
    left = kept;
    if (left < 2)
        return kiln_cli_usage ("secrets", "which app? give OWNER/APP");
    const char *app = args [1];
    const char *problem = kiln_cli_app_name_problem (app);
    if (problem)
        return kiln_cli_usage ("secrets", "'%s': %s", app, problem);
    if (set) {
        if (left < 3)
            return kiln_cli_usage ("secrets", "give at least one NAME=VALUE");
        return s_set (cli, app, left - 2, args + 2);
    }
    if (list) {
        if (left != 2)
            return kiln_cli_usage ("secrets", "list takes OWNER/APP only");
        return s_list (cli, app, raw);
    }
    if (left != 3)
        return kiln_cli_usage ("secrets", "unset takes OWNER/APP NAME");
    return s_unset (cli, app, args [2]);
}
