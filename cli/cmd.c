/*  =========================================================================
    cmd — what the commands share when they call the gateway

    Most commands are "validate the operands, make one /v1 call, print the
    answer as a table or, with --json, as it came". The call and its
    failure (one line on stderr, the exit code the status calls for) and
    the --json printing live here once, so every command fails and prints
    alike.
    =========================================================================
*/
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

char *
kiln_cli_path (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    char *path = NULL;
    if (vasprintf (&path, format, args) < 0)
        path = NULL;
    va_end (args);
    return path;
}

int
kiln_cli_json (kiln_http_t *http, const char *method, const char *path, json_t *body,
               json_t **answer)
{
    *answer = NULL;
    if (!path)
        return kiln_cli_fail ("out of memory");
    char *error = NULL;
    if (kiln_http_json (http, method, path, body, answer, &error) != 0)
        return kiln_cli_fail_http (error);
    return KILN_EXIT_OK;
}

int
kiln_cli_call (kiln_cli_t *cli, long timeout_ms, const char *method, const char *path,
               json_t *body, json_t **answer)
{
    *answer = NULL;
    if (!path)
        return kiln_cli_fail ("out of memory");
    kiln_http_t *http = kiln_cli_http (cli);
    if (!http)
        return KILN_EXIT_FAILURE;
    kiln_http_set_timeout_ms (http, timeout_ms);
    int rc = kiln_cli_json (http, method, path, body, answer);
    kiln_http_destroy (&http);
    return rc;
}

int
kiln_cli_print_answer (json_t *answer, const char *empty)
{
    char *text = answer ? json_dumps (answer, JSON_INDENT (2)) : NULL;
    printf ("%s\n", text ? text : empty);
    free (text);
    json_decref (answer);
    return KILN_EXIT_OK;
}

void
kiln_cli_format_time (long long ms, char *out, size_t size)
{
    time_t seconds = (time_t) (ms / 1000);
    struct tm tm;
    if (ms <= 0 || !localtime_r (&seconds, &tm) || !strftime (out, size, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf (out, size, "-");
}
