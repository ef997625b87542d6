/*  =========================================================================
    cli — what the `kiln` command's modules share

    main.c parses the global options and hands the rest of the command
    line to one command group: up.c, deploy.c, apps.c, runners.c (kiln
    runners, kiln workers), requests.c. Each command
    prints its result on stdout and, when it fails, ONE line on stderr
    ("kiln: ..."), then exits 1 (a failure) or 2 (a usage error).
    =========================================================================
*/
#ifndef KILN_CLI_H_INCLUDED
#define KILN_CLI_H_INCLUDED

#include "kiln_config.h"
#include "http.h"
#include <getopt.h>
#include <stdbool.h>

#ifndef KILN_VERSION
#   define KILN_VERSION "0.1.0"
#endif

//  Exit codes
#define KILN_EXIT_OK 0
#define KILN_EXIT_FAILURE 1
#define KILN_EXIT_USAGE 2

typedef struct {
    kiln_config_t *config;          //  environment, then flags
    char *bindir;                   //  folder of the kiln executable
} kiln_cli_t;

//  Options every command takes (--url, --key, --help), for getopt_long
//  tables: KILN_CLI_COMMON_OPTIONS, then the command's own, then {0}.
#define KILN_CLI_OPT_URL  0x1001
#define KILN_CLI_OPT_KEY  0x1002
#define KILN_CLI_OPT_HELP 'h'
#define KILN_CLI_COMMON_OPTIONS \
    { "url",  required_argument, NULL, KILN_CLI_OPT_URL }, \
    { "key",  required_argument, NULL, KILN_CLI_OPT_KEY }, \
    { "help", no_argument,       NULL, KILN_CLI_OPT_HELP }

//  Text shown under every command's help for the common options.
#define KILN_CLI_COMMON_HELP \
    "  --url URL            the gateway (default $KILN_URL, http://127.0.0.1:8080)\n" \
    "  --key KEY            API key, sent as 'Authorization: Key KEY' (default $KILN_KEY)\n" \
    "  -h, --help           show this help\n"

//  Handles a common option; true if opt was one. --help is not handled
//  here (the command prints its own).
bool kiln_cli_common_option (kiln_cli_t *self, int opt, const char *arg);

//  Reports a getopt_long error for `command` (opt is what getopt_long
//  returned: ':' for a missing value, '?' for an unknown option; the
//  short options must start with ':') and returns KILN_EXIT_USAGE.
int kiln_cli_bad_option (const char *command, int opt, char *const argv []);

//  Prints "kiln: <message>" on stderr; returns KILN_EXIT_FAILURE.
int kiln_cli_fail (const char *format, ...)
    __attribute__ ((format (printf, 1, 2)));

//  Prints "kiln: <message> (see 'kiln <command> --help')" on stderr;
//  returns KILN_EXIT_USAGE.
int kiln_cli_usage (const char *command, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  An HTTP client for the configured gateway. NULL on failure (reported).
kiln_http_t *kiln_cli_http (kiln_cli_t *self);

//  An app name check with the reason when it fails ("owner/app", owner
//  not reserved). Returns NULL when the name is good, else a static
//  message.
const char *kiln_cli_app_name_problem (const char *name);

//  Command groups: argv [0] is the command's name. Each returns an exit
//  code.
int kiln_up_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_deploy_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_apps_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_runners_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_workers_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_requests_main (kiln_cli_t *cli, int argc, char *argv []);

//  Deploys the app at path as name (NULL: local/<manifest name>) and
//  prints "deployed NAME revision N" and its URLs. Returns 0, or -1 with
//  *error set (one line; caller frees). kiln up deploys the examples with
//  it. *deployed_name, when not NULL, receives the name used (caller
//  frees).
int kiln_deploy_app (kiln_cli_t *cli, kiln_http_t *http, const char *path,
                     const char *name, char **deployed_name, char **error);

#endif
