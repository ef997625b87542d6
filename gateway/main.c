/*  =========================================================================
    kiln-gateway — kiln's public HTTP API

        kiln-gateway [--addr HOST:PORT] [--redis URL] [--public-url URL]

    Configuration comes from the environment (kiln_config.h); flags
    override it. SIGINT or SIGTERM stop it: the port closes at once, the
    sync calls in flight get up to KILN_GATEWAY_STOP_GRACE_MS (4000) to be
    answered, then it exits 0. A second signal stops it at once.
    =========================================================================
*/
#include "gateway.h"
#include "kiln_config.h"
#include "kiln_log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_usage =
    "usage: kiln-gateway [--addr HOST:PORT] [--redis URL] [--public-url URL]\n"
    "\n"
    "Serves kiln's HTTP API (fal-compatible): sync calls, the queue API,\n"
    "files, the /v1 management API, /health and /metrics.\n"
    "\n"
    "  --addr HOST:PORT   address to listen on (KILN_HTTP_ADDR, default 127.0.0.1:8080)\n"
    "  --redis URL        Redis to use (KILN_REDIS_URL, default redis://127.0.0.1:6379)\n"
    "  --public-url URL   base of the URLs handed out (KILN_PUBLIC_URL,\n"
    "                     default http://{addr})\n"
    "  --help             this text\n"
    "\n"
    "Also read: KILN_MAX_BODY_BYTES, KILN_RESULT_RETENTION, KILN_LOG_LEVEL,\n"
    "KILN_AUTH (API keys: auto, the default, requires them unless the address\n"
    "is loopback only; required; off; see docs/SECURITY.md),\n"
    "KILN_GATEWAY_STOP_GRACE_MS (how long SIGTERM lets the sync calls in\n"
    "flight finish, default 4000).\n";

int
main (int argc, char *argv [])
{
    const char *addr = NULL;
    const char *redis = NULL;
    const char *public_url = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv [i];
        const char **target = NULL;
        if (strcmp (arg, "--help") == 0 || strcmp (arg, "-h") == 0) {
            fputs (s_usage, stdout);
            return 0;
        }
        if (strcmp (arg, "--addr") == 0)
            target = &addr;
        else
        if (strcmp (arg, "--redis") == 0)
            target = &redis;
        else
        if (strcmp (arg, "--public-url") == 0)
            target = &public_url;
        if (!target) {
            fprintf (stderr, "kiln-gateway: unknown argument '%s'\n%s", arg, s_usage);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf (stderr, "kiln-gateway: %s needs a value\n", arg);
            return 2;
        }
        *target = argv [++i];
    }

    char *error = NULL;
    kiln_config_t *cfg = kiln_config_new (&error);
    if (!cfg) {
        fprintf (stderr, "kiln-gateway: %s\n", error ? error : "cannot read the configuration");
        free (error);
        return 1;
    }
    kiln_log_init ("kiln-gateway", cfg->log_level);
    if (addr) {
        kiln_config_set (&cfg->http_addr, addr);
        //  The public URL follows the address unless it was set itself
        if (!public_url && !getenv ("KILN_PUBLIC_URL")) {
            char *url = NULL;
            if (asprintf (&url, "http://%s", addr) >= 0) {
                kiln_config_set (&cfg->public_url, url);
                free (url);
            }
        }
    }
    if (redis)
        kiln_config_set (&cfg->redis_url, redis);
    if (public_url) {
        kiln_config_set (&cfg->public_url, public_url);
        size_t size = strlen (cfg->public_url);
        while (size > 0 && cfg->public_url [size - 1] == '/')
            cfg->public_url [--size] = 0;
    }

    //  A client (or Redis) gone mid-write must not kill us
    signal (SIGPIPE, SIG_IGN);
    int rc = 1;
    kiln_gateway_t *gateway = kiln_gateway_new (cfg);
    if (gateway) {
        rc = kiln_gateway_run (gateway) == 0 ? 0 : 1;
        kiln_gateway_destroy (&gateway);
    }
    kiln_config_destroy (&cfg);
    return rc;
}
