/*  =========================================================================
    cli — what the `kiln` command's modules share

    main.c parses the global options and hands the rest of the command
    line to one command group: up.c, run.c, deploy.c, apps.c, logs.c,
    runners.c (kiln runners, kiln workers), requests.c. Each command
    prints its result on stdout (a table or lines for people, the
    gateway's JSON with --json) and, when it fails, ONE line on stderr
    ("kiln: ..."), then exits with one of the KILN_EXIT_* codes below.
    Progress of a long wait goes to stderr, only when it is a terminal or
    with --progress (kiln_cli_progress).
    =========================================================================
*/
#ifndef KILN_CLI_H_INCLUDED
#define KILN_CLI_H_INCLUDED

#include "kiln_config.h"
#include "http.h"
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>

#ifndef KILN_VERSION
#   define KILN_VERSION "0.1.0"
#endif

//  Exit codes
#define KILN_EXIT_OK 0
#define KILN_EXIT_FAILURE 1         //  failed: a bad app file, a refusal, ...
#define KILN_EXIT_USAGE 2           //  the command line was wrong
#define KILN_EXIT_NOT_FOUND 3       //  no such app, request or revision (404)
#define KILN_EXIT_UNREACHABLE 4     //  the gateway could not be reached

typedef struct {
    kiln_config_t *config;          //  environment, then flags
    char *bindir;                   //  folder of the kiln executable
    bool progress;                  //  say on stderr what a long wait is doing
    bool json;                      //  kiln deploy: print the gateway's answer (JSON)
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

//  Prints "kiln: <error>" (error from kiln_http_*; NULL: out of memory)
//  and frees it; returns the exit code for what the last request met:
//  KILN_EXIT_UNREACHABLE, KILN_EXIT_NOT_FOUND (a 404), else
//  KILN_EXIT_FAILURE.
int kiln_cli_fail_http (char *error);

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

//  cmd.c: one /v1 call and its failure, the same for every command.
//  A path made like printf ("/v1/apps/%s", name); NULL when out of memory.
char *kiln_cli_path (const char *format, ...)
    __attribute__ ((format (printf, 1, 2)));
//  Sends one JSON call on http (kiln_http_json). path NULL means it could
//  not be made: "out of memory". Returns 0 with *answer (caller decrefs;
//  NULL when the body was empty), else the exit code, reported
//  (kiln_cli_fail_http).
int kiln_cli_json (kiln_http_t *http, const char *method, const char *path, json_t *body,
                   json_t **answer);
//  The same on a client of its own for the configured gateway, each
//  request bounded by timeout_ms.
int kiln_cli_call (kiln_cli_t *cli, long timeout_ms, const char *method, const char *path,
                   json_t *body, json_t **answer);
//  Prints answer as the gateway gave it (--json), indented, or empty
//  (such as "null" or "[]") when there is none; decrefs it. Returns
//  KILN_EXIT_OK.
int kiln_cli_print_answer (json_t *answer, const char *empty);
//  "2026-11-28 18:00:05" in local time, or "-" (ms <= 0).
void kiln_cli_format_time (long long ms, char *out, size_t size);

//  Command groups: argv [0] is the command's name. Each returns an exit
//  code.
int kiln_up_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_deploy_main (kiln_cli_t *cli, int argc, char *argv []);

//  getopt_long values kiln deploy and kiln run share: --progress and the
//  manifest overrides --auth and --max-queue-length.
#define KILN_OPT_PROGRESS           0x3001
#define KILN_OPT_AUTH               0x3002
#define KILN_OPT_MAX_QUEUE_LENGTH   0x3003

//  Takes --auth or --max-queue-length for command ("deploy" or "run"),
//  applied by kiln_deploy_app. KILN_EXIT_OK, or KILN_EXIT_USAGE after a
//  one-line error for a bad value.
int kiln_deploy_override (const char *command, int opt, const char *value);
int kiln_apps_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_runners_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_workers_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_requests_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_logs_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_run_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_keys_main (kiln_cli_t *cli, int argc, char *argv []);
int kiln_secrets_main (kiln_cli_t *cli, int argc, char *argv []);

//  keys.c: the key `kiln up` saves, {state_dir}/key (caller frees the
//  path); loading it sets config->key unless a key was given already.
char *kiln_cli_key_path (const kiln_config_t *config);
void kiln_cli_load_saved_key (kiln_config_t *config);
//  Writes key to path, mode 0600. 0 or -1.
int kiln_cli_save_key (const char *path, const char *key);
//  Makes a key (scope, owner) straight in Redis: *key_out "id:secret"
//  and *id_out (either may be kept; caller frees). 0, or -1 with *error.
int kiln_cli_key_create_in_redis (const char *redis_url, const char *scope, const char *owner,
                                  char **key_out, char **id_out, char **error);
//  Whether key ("id:secret") is a valid operator key (ADMIN, owner *) in
//  that Redis: 1 yes, 0 no, -1 Redis could not be asked.
int kiln_cli_operator_key_valid (const char *redis_url, const char *key);

//  Set by SIGINT or SIGTERM once kiln_cli_catch_signals ran: commands
//  that wait (--follow, kiln run) stop and clean up instead of dying.
extern volatile sig_atomic_t kiln_cli_stop;
void kiln_cli_catch_signals (void);

//  Sleeps ms, or less when a signal arrives.
void kiln_cli_sleep_ms (int ms);

//  Progress for people: "kiln: <message>" on stderr when cli->progress.
void kiln_cli_progress (kiln_cli_t *cli, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  One read of an app's log lines (GET /v1/apps/APP/logs): those after
//  *since (NULL: the last `limit`), printed as "time level [runner]
//  message" (raw: one JSON object a line); *since moves past them
//  (caller frees). Returns 0, or an exit code (reported).
int kiln_logs_print (kiln_http_t *http, const char *app, char **since, int limit, bool raw);

//  Waits until a runner of the app's current revision is ready (GET
//  /v1/runners?app=APP), at most timeout_ms; with logs, prints the app's
//  log lines meanwhile (from *since, as kiln_logs_print). Returns 0 when
//  one is, -1 on timeout or a signal (not reported), or an exit code
//  (reported).
int kiln_cli_wait_ready (kiln_cli_t *cli, kiln_http_t *http, const char *app,
                         int timeout_ms, bool logs, char **since);

//  Deploys the app at path as name (NULL: local/<manifest name>) and
//  prints "deployed NAME revision N" and its URLs. Returns 0, or -1 with
//  *error set (one line; caller frees). kiln up deploys the examples with
//  it. *deployed_name, when not NULL, receives the name used (caller
//  frees).
int kiln_deploy_app (kiln_cli_t *cli, kiln_http_t *http, const char *path,
                     const char *name, char **deployed_name, char **error);

#endif
