/*  =========================================================================
    kiln-worker — one per host: offers its GPUs and CPU slots to the broker
    and runs the runners it asks for

        kiln-worker [--broker ENDPOINT] [--redis URL] [--state-dir DIR]
                    [--id ID] [--slots TYPE=N,...]

    Flags override the environment (KILN_BROKER_ENDPOINT, KILN_REDIS_URL,
    KILN_STATE_DIR; see kiln_config.h). Without --slots the worker offers
    one slot per GPU the CUDA runtime finds and max(4, cores) CPU slots.
    SIGTERM or SIGINT drains it (worker.c): no new runner, its runners
    finish their requests, then it exits 0; a second signal hurries it.
    =========================================================================
*/
#include "worker.h"
#include "kiln_config.h"
#include "kiln_log.h"
#include "kiln_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: kiln-worker [--broker ENDPOINT] [--redis URL] [--state-dir DIR]\n"
        "                   [--id ID] [--slots TYPE=N,...]\n"
        "  --broker     the broker's ZeroMQ endpoint (KILN_BROKER_ENDPOINT)\n"
        "  --redis      Redis URL, for artifacts (KILN_REDIS_URL)\n"
        "  --state-dir  where artifacts are cached (KILN_STATE_DIR)\n"
        "  --id         this worker's id (default w-HOST-PID)\n"
        "  --slots      declared slots, e.g. GPU-H100=2,CPU=4 (default: detected)\n"
        "SIGTERM or SIGINT drains the worker: it takes no new runner, lets its\n"
        "runners finish their requests, then exits 0.\n");
}

//  "w-" + the host name, tamed to [a-z0-9-], + "-" + pid: unique per
//  process, and readable in `kiln runners`.
static char *
s_default_id (void)
{
    char host [256];
    if (gethostname (host, sizeof (host)) == -1)
        snprintf (host, sizeof (host), "host");
    host [sizeof (host) - 1] = '\0';
    char tame [64];
    size_t len = 0;
    for (const char *p = host; *p && len < sizeof (tame) - 1; p++)
        tame [len++] = isalnum ((unsigned char) *p)? (char) tolower ((unsigned char) *p): '-';
    tame [len] = '\0';
    char *id = NULL;
    if (asprintf (&id, "w-%s-%d", len? tame: "host", (int) getpid ()) < 0)
        return NULL;
    return id;
}

int
main (int argc, char *argv [])
{
    char *config_error = NULL;
    kiln_config_t *config = kiln_config_new (&config_error);
    if (!config) {
        fprintf (stderr, "kiln-worker: %s\n", config_error? config_error: "bad configuration");
        free (config_error);
        return 1;
    }
    kiln_log_init ("kiln-worker", config->log_level);

    const char *id = NULL;
    const char *slots = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv [i];
        if (strcmp (arg, "--help") == 0 || strcmp (arg, "-h") == 0) {
            s_usage (stdout);
            kiln_config_destroy (&config);
            return 0;
        }
        static const char *flags [] = { "--broker", "--redis", "--state-dir", "--id", "--slots", NULL };
        const char *value = NULL;
        const char *flag = NULL;
        for (const char **f = flags; *f && !flag; f++) {
            size_t len = strlen (*f);
            if (strcmp (arg, *f) == 0) {
                flag = *f;
                value = i + 1 < argc? argv [++i]: NULL;
            }
            else
            if (strncmp (arg, *f, len) == 0 && arg [len] == '=') {
                flag = *f;
                value = arg + len + 1;
            }
        }
        if (!flag || !value || !*value) {
            fprintf (stderr, "kiln-worker: %s '%s'\n", flag? "missing value for": "unknown argument", arg);
            s_usage (stderr);
            kiln_config_destroy (&config);
            return 2;
        }
        if (strcmp (flag, "--broker") == 0)
            kiln_config_set (&config->broker_endpoint, value);
        else
        if (strcmp (flag, "--redis") == 0)
            kiln_config_set (&config->redis_url, value);
        else
        if (strcmp (flag, "--state-dir") == 0)
            kiln_config_set (&config->state_dir, value);
        else
        if (strcmp (flag, "--id") == 0)
            id = value;
        else
            slots = value;
    }
    char *default_id = id? NULL: s_default_id ();
    if (!id && !default_id) {
        fprintf (stderr, "kiln-worker: out of memory\n");
        kiln_config_destroy (&config);
        return 1;
    }
    if (strlen (id? id: default_id) > 200) {
        fprintf (stderr, "kiln-worker: --id is too long (200 bytes at most)\n");
        kiln_config_destroy (&config);
        return 2;
    }

    kiln_worker_options_t options = {
        .id = id? id: default_id,
        .broker_endpoint = config->broker_endpoint,
        .redis_url = config->redis_url,
        .state_dir = config->state_dir,
        .public_url = config->public_url,
        .slots = slots,
        .runner_path = NULL,
    };
    kiln_worker_t *worker = kiln_worker_new (&options);
    int rc = 1;
    if (worker) {
        rc = kiln_worker_run (worker) == 0? 0: 1;
        kiln_worker_destroy (&worker);
    }
    free (default_id);
    kiln_config_destroy (&config);
    return rc;
}
