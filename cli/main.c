/*  =========================================================================
    kiln — the command line

    Parses the options every command shares, reads the configuration
    (kiln_config: the KILN_* environment; flags override it) and hands the
    rest of the command line to one command group.

        kiln [--url URL] [--key KEY] COMMAND [ARGS]
    =========================================================================
*/
#include "cli.h"

#include "kiln_keys.h"
#include <curl/curl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *s_usage =
    "usage: kiln [--url URL] [--key KEY] COMMAND [ARGS]\n"
    "\n"
    "kiln runs AI model apps on your own machines behind a fal-compatible API.\n"
    "\n"
    "commands:\n"
    "  up                  run a local stack (redis, broker, gateway, worker) in the foreground\n"
    "  run APP             deploy APP under a fresh name, stream its logs, delete it on Ctrl-C\n"
    "  deploy APP          deploy an app (APP.so or FILE.py::Class), print its URLs\n"
    "  apps list           list deployed apps\n"
    "  apps show OWNER/APP show one app\n"
    "  apps scale OWNER/APP [--min N] [--max N] [--buffer N] [--keep-alive S]\n"
    "                      change a running app's scaling bounds\n"
    "  apps delete OWNER/APP\n"
    "                      delete an app\n"
    "  apps revisions OWNER/APP\n"
    "                      list an app's revisions, the current one marked\n"
    "  apps rollback OWNER/APP REV\n"
    "                      make an earlier revision serve, at once\n"
    "  logs OWNER/APP [--follow]\n"
    "                      print (and follow) an app's log lines: handlers and runners\n"
    "  requests show|logs|cancel ID\n"
    "                      show a request, print (--follow) its logs, or cancel it\n"
    "  runners [--app OWNER/APP]\n"
    "                      list every runner: app, worker, machine, GPU, state, load\n"
    "  workers             list every worker: host, slots, slots in use\n"
    "  keys create|list|revoke\n"
    "                      make (--scope API|ADMIN [--owner O]), list or revoke API keys\n"
    "  secrets set|list|unset OWNER/APP ...\n"
    "                      an app's secrets, given to its runners as environment variables\n"
    "  help [COMMAND]      show this help, or a command's\n"
    "\n"
    "options:\n"
    KILN_CLI_COMMON_HELP
    "  --version            print kiln's version\n"
    "\n"
    "Run 'kiln COMMAND --help' for a command's options.\n"
    "\n"
    "exit status: 0 done, 1 failed, 2 bad command line, 3 no such app, request\n"
    "or revision, 4 cannot reach the gateway; a failure prints one line on stderr.\n";

volatile sig_atomic_t kiln_cli_stop = 0;

static void
s_on_stop_signal (int signum)
{
    (void) signum;
    kiln_cli_stop = 1;
}

void
kiln_cli_catch_signals (void)
{
    //  No SA_RESTART: a sleep or a poll returns at once on the signal.
    struct sigaction action;
    memset (&action, 0, sizeof action);
    action.sa_handler = s_on_stop_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);
}

void
kiln_cli_sleep_ms (int ms)
{
    struct timespec delay = { ms / 1000, (long) (ms % 1000) * 1000000L };
    if (!kiln_cli_stop)
        nanosleep (&delay, NULL);
}

//  "kiln: <message>" on stderr, without the end of the line: each caller
//  ends it its own way.
static void
s_say (const char *format, va_list args)
{
    fputs ("kiln: ", stderr);
    vfprintf (stderr, format, args);
}

void
kiln_cli_progress (kiln_cli_t *cli, const char *format, ...)
{
    if (!cli->progress)
        return;
    va_list args;
    va_start (args, format);
    s_say (format, args);
    fputc ('\n', stderr);
    va_end (args);
}

bool
kiln_cli_common_option (kiln_cli_t *self, int opt, const char *arg)
{
    if (opt == KILN_CLI_OPT_URL) {
        kiln_config_set (&self->config->url, arg);
        return true;
    }
    if (opt == KILN_CLI_OPT_KEY) {
        kiln_config_set (&self->config->key, arg);
        return true;
    }
    return false;
}

int
kiln_cli_bad_option (const char *command, int opt, char *const argv [])
{
    //  getopt_long (with ':' leading the short options) returns ':' for a
    //  missing value and '?' for an unknown option; optopt holds the short
    //  option's letter, or 0 for a long option, found at argv [optind - 1].
    const char *word = optind > 0 ? argv [optind - 1] : "?";
    if (opt == ':') {
        if (optopt > 0 && optopt < 0x80 && word [1] != '-')
            return kiln_cli_usage (command, "option -%c needs a value", optopt);
        return kiln_cli_usage (command, "option %s needs a value", word);
    }
    if (optopt > 0 && optopt < 0x80)
        return kiln_cli_usage (command, "unknown option -%c", optopt);
    return kiln_cli_usage (command, "unknown option %s", word);
}

int
kiln_cli_fail (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_say (format, args);
    fputc ('\n', stderr);
    va_end (args);
    return KILN_EXIT_FAILURE;
}

int
kiln_cli_fail_http (char *error)
{
    kiln_cli_fail ("%s", error ? error : "out of memory");
    free (error);
    long status = kiln_http_last_status ();
    return status == 0 ? KILN_EXIT_UNREACHABLE
         : status == 404 ? KILN_EXIT_NOT_FOUND
         : KILN_EXIT_FAILURE;
}

int
kiln_cli_usage (const char *command, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_say (format, args);
    if (command)
        fprintf (stderr, " (see 'kiln %s --help')\n", command);
    else
        fputs (" (see 'kiln --help')\n", stderr);
    va_end (args);
    return KILN_EXIT_USAGE;
}

kiln_http_t *
kiln_cli_http (kiln_cli_t *self)
{
    kiln_http_t *http = kiln_http_new (self->config->url, self->config->key);
    if (!http)
        kiln_cli_fail ("cannot make an HTTP client for '%s'", self->config->url);
    return http;
}

const char *
kiln_cli_app_name_problem (const char *name)
{
    static const char *reserved [] = { "queue", "v1", "files", "health", "metrics", NULL };
    if (!kiln_app_name_valid (name))
        return "expected OWNER/APP, each part 1-63 characters of a-z 0-9 _ -, "
               "starting with a letter or digit";
    for (int i = 0; reserved [i]; i++) {
        size_t len = strlen (reserved [i]);
        if (strncmp (name, reserved [i], len) == 0 && name [len] == '/')
            return "the owners queue, v1, files, health and metrics are reserved";
    }
    return NULL;
}

//  The folder holding this executable: kiln finds its sibling programs
//  (kiln-gateway, kiln-runner, ...) and the example apps from there.
static char *
s_bindir (const char *argv0)
{
    char path [PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", path, sizeof path - 1);
    if (len > 0)
        path [len] = 0;
    else
    if (!realpath (argv0, path))
        snprintf (path, sizeof path, "%s", argv0);
    return strdup (dirname (path));
}

//  `kiln help [COMMAND]` is `kiln COMMAND --help`.
static int s_dispatch (kiln_cli_t *cli, int argc, char *argv []);

static int
s_help (kiln_cli_t *cli, int argc, char *argv [])
{
    if (argc < 2) {
        fputs (s_usage, stdout);
        return KILN_EXIT_OK;
    }
    if (strcmp (argv [1], "help") == 0 || strcmp (argv [1], "--help") == 0
    ||  strcmp (argv [1], "-h") == 0) {
        fputs ("usage: kiln help [COMMAND]\n\nShows kiln's help, or a command's.\n", stdout);
        return KILN_EXIT_OK;
    }
    char *help_argv [] = { argv [1], "--help", NULL };
    return s_dispatch (cli, 2, help_argv);
}

static int
s_dispatch (kiln_cli_t *cli, int argc, char *argv [])
{
    const char *command = argv [0];
    if (strcmp (command, "up") == 0)
        return kiln_up_main (cli, argc, argv);
    if (strcmp (command, "deploy") == 0)
        return kiln_deploy_main (cli, argc, argv);
    if (strcmp (command, "apps") == 0)
        return kiln_apps_main (cli, argc, argv);
    if (strcmp (command, "requests") == 0)
        return kiln_requests_main (cli, argc, argv);
    if (strcmp (command, "logs") == 0)
        return kiln_logs_main (cli, argc, argv);
    if (strcmp (command, "run") == 0)
        return kiln_run_main (cli, argc, argv);
    if (strcmp (command, "runners") == 0)
        return kiln_runners_main (cli, argc, argv);
    if (strcmp (command, "workers") == 0)
        return kiln_workers_main (cli, argc, argv);
    if (strcmp (command, "keys") == 0)
        return kiln_keys_main (cli, argc, argv);
    if (strcmp (command, "secrets") == 0)
        return kiln_secrets_main (cli, argc, argv);
    if (strcmp (command, "help") == 0)
        return s_help (cli, argc, argv);
    if (strcmp (command, "version") == 0) {
        printf ("kiln %s\n", KILN_VERSION);
        return KILN_EXIT_OK;
    }
    return kiln_cli_usage (NULL, "unknown command '%s'", command);
}

int
main (int argc, char *argv [])
{
    //  Global options come before the command; each command parses its
    //  own (and --url, --key again, so they may come anywhere).
    const char *url = NULL, *key = NULL;
    int index = 1;
    while (index < argc && argv [index][0] == '-') {
        const char *arg = argv [index];
        if (strcmp (arg, "--") == 0) {
            index++;
            break;
        }
        if (strcmp (arg, "-h") == 0 || strcmp (arg, "--help") == 0) {
            fputs (s_usage, stdout);
            return KILN_EXIT_OK;
        }
        if (strcmp (arg, "--version") == 0 || strcmp (arg, "-V") == 0) {
            printf ("kiln %s\n", KILN_VERSION);
            return KILN_EXIT_OK;
        }
        const char **target = strncmp (arg, "--url", 5) == 0? &url:
                              strncmp (arg, "--key", 5) == 0? &key: NULL;
        if (target && arg [5] == '=')
            *target = arg + 6;
        else
        if (target && arg [5] == 0 && index + 1 < argc)
            *target = argv [++index];
        else
        if (target && arg [5] == 0)
            return kiln_cli_usage (NULL, "%s needs a value", arg);
        else
            return kiln_cli_usage (NULL, "unknown option '%s'", arg);
        index++;
    }
    if (index >= argc) {
        fputs (s_usage, stderr);
        return KILN_EXIT_USAGE;
    }

    char *error = NULL;
    kiln_config_t *config = kiln_config_new (&error);
    if (!config) {
        kiln_cli_fail ("bad configuration: %s", error ? error : "out of memory");
        free (error);
        return KILN_EXIT_FAILURE;
    }
    if (url)
        kiln_config_set (&config->url, url);
    if (key)
        kiln_config_set (&config->key, key);
    //  Neither --key nor KILN_KEY: the operator key `kiln up` saved
    kiln_cli_load_saved_key (config);
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        kiln_config_destroy (&config);
        return kiln_cli_fail ("cannot initialise libcurl");
    }
    kiln_cli_t cli = { .config = config, .bindir = s_bindir (argv [0]),
                       .progress = isatty (STDERR_FILENO) == 1 };
    int rc = cli.bindir
           ? s_dispatch (&cli, argc - index, argv + index)
           : kiln_cli_fail ("out of memory");
    free (cli.bindir);
    kiln_config_destroy (&config);
    curl_global_cleanup ();
    return rc;
}
