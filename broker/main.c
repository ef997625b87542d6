/*  =========================================================================
    kiln-broker — the program: flags, configuration, signals

        kiln-broker [--redis URL] [--endpoint ENDPOINT]

    Configuration comes from the environment (kiln_config.h); flags
    override it. Beside the broker runs the webhook deliverer (webhook.h),
    a thread of its own: every broker delivers, and the outbox's leases
    keep two brokers from sending the same delivery. SIGINT or SIGTERM
    stops both cleanly (exit 0).
    =========================================================================
*/
#include "broker.h"
#include "webhook.h"

#include "kiln_config.h"
#include "kiln_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: kiln-broker [--redis URL] [--endpoint ENDPOINT]\n"
        "\n"
        "kiln's dispatcher and autoscaler: takes queued requests from Redis,\n"
        "hands them to runners, starts and retires runners on the workers.\n"
        "\n"
        "  --redis URL          Redis to use (KILN_REDIS_URL, redis://127.0.0.1:6379)\n"
        "  --endpoint ENDPOINT  ZeroMQ endpoint to bind (KILN_BROKER_ENDPOINT,\n"
        "                       tcp://127.0.0.1:5555)\n"
        "  --help               this text\n"
        "\n"
        "Also read: KILN_RESULT_RETENTION (s a result is kept), KILN_LOG_LEVEL,\n"
        "KILN_WEBHOOK_TRIES, KILN_WEBHOOK_BACKOFF_MS, KILN_WEBHOOK_TIMEOUT_MS\n"
        "(webhook deliveries: tries, first retry delay doubling each time, and\n"
        "the time limit of one delivery).\n");
}

int
main (int argc, char *argv [])
{
    const char *redis_url = NULL, *endpoint = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv [i];
        if (strcmp (arg, "--help") == 0 || strcmp (arg, "-h") == 0) {
            s_usage (stdout);
            return 0;
        }
        const char **target = strcmp (arg, "--redis") == 0? &redis_url
                            : strcmp (arg, "--endpoint") == 0? &endpoint: NULL;
        if (target && i + 1 < argc && *argv [i + 1])
            *target = argv [++i];
        else {
            fprintf (stderr, "kiln-broker: %s '%s'\n",
                     target? "missing value for": "unknown argument", arg);
            s_usage (stderr);
            return 2;
        }
    }

    char *error = NULL;
    kiln_config_t *cfg = kiln_config_new (&error);
    if (!cfg) {
        fprintf (stderr, "kiln-broker: %s\n", error? error: "cannot read the configuration");
        free (error);
        return 1;
    }
    if (redis_url)
        kiln_config_set (&cfg->redis_url, redis_url);
    if (endpoint)
        kiln_config_set (&cfg->broker_endpoint, endpoint);
    kiln_log_init ("kiln-broker", cfg->log_level);

    kiln_broker_t *broker = kiln_broker_new (cfg);
    if (!broker) {
        kiln_config_destroy (&cfg);
        return 1;
    }
    kiln_webhooks_t *webhooks = kiln_webhooks_new (cfg);
    if (!webhooks) {
        kiln_broker_destroy (&broker);
        kiln_config_destroy (&cfg);
        return 1;
    }
    int rc = kiln_broker_run (broker);
    kiln_webhooks_destroy (&webhooks);
    kiln_broker_destroy (&broker);
    kiln_config_destroy (&cfg);
    return rc;
}
