/*  =========================================================================
    kiln_config — configuration from the environment

    Every process and the CLI read the same names; command-line flags
    override them (each program parses its own flags, then overwrites the
    fields it was given).

    | variable               | field                | default                    |
    |------------------------|----------------------|----------------------------|
    | KILN_URL               | url                  | http://127.0.0.1:8080      |
    | KILN_HTTP_ADDR         | http_addr            | 127.0.0.1:8080             |
    | KILN_PUBLIC_URL        | public_url           | http://{KILN_HTTP_ADDR}    |
    | KILN_REDIS_URL         | redis_url            | redis://127.0.0.1:6379     |
    | KILN_BROKER_ENDPOINT   | broker_endpoint      | tcp://127.0.0.1:5555       |
    | KILN_STATE_DIR         | state_dir            | $HOME/.kiln (or /tmp/kiln) |
    | KILN_KEY               | key                  | (none)                     |
    | KILN_MAX_BODY_BYTES    | max_body_bytes       | 33554432 (32 MiB)          |
    | KILN_RESULT_RETENTION  | result_retention_s   | 3600                       |
    | KILN_LOG_LEVEL         | log_level            | info                       |
    | KILN_WEBHOOK_TRIES     | webhook_tries        | 10                         |
    | KILN_WEBHOOK_BACKOFF_MS| webhook_backoff_ms   | 15000 (doubles each retry) |
    | KILN_WEBHOOK_TIMEOUT_MS| webhook_timeout_ms   | 10000                      |
    | KILN_WEBHOOK_ALLOW_PRIVATE | webhook_allow_private | 0 (1: deliver to loopback and private addresses) |
    | KILN_AUTH              | auth                 | auto (auto, required or off: see docs/SECURITY.md) |
    | KILN_RATE_LIMIT_RPS    | rate_limit_rps       | 0 (off; requests per second per key or client IP) |
    | KILN_RATE_LIMIT_BURST  | rate_limit_burst     | 0 (then the RPS: requests over the rate let through at once) |

    public_url is the base of every URL kiln hands out (queue URLs, file
    URLs): set it when the gateway sits behind a proxy.
    =========================================================================
*/
#ifndef KILN_CONFIG_H_INCLUDED
#define KILN_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *url;
    char *http_addr;
    char *public_url;               //  no trailing slash
    char *redis_url;
    char *broker_endpoint;
    char *state_dir;
    char *key;                      //  NULL when unset
    size_t max_body_bytes;
    int result_retention_s;
    char *log_level;
    int webhook_tries;              //  deliveries tried before giving up
    int webhook_backoff_ms;         //  first retry delay; doubles each time
    int webhook_timeout_ms;         //  one delivery's time limit
    bool webhook_allow_private;     //  webhooks may go to loopback/private addresses
    char *auth;                     //  "auto", "required" or "off" (the gateway's API keys)
    int rate_limit_rps;             //  the gateway's per-key rate; 0: no limit
    int rate_limit_burst;           //  bucket size; 0: rate_limit_rps
} kiln_config_t;

//  Reads the environment. NULL on failure (out of memory, or a numeric
//  variable that is not a number: then *error says which; caller frees).
kiln_config_t *kiln_config_new (char **error);

void kiln_config_destroy (kiln_config_t **self_p);

//  Replaces a string field with a copy of value: kiln_config_set (&cfg->url, v).
void kiln_config_set (char **field, const char *value);

//  Splits "host:port" (or "[v6]:port"). 0, or -1 if malformed. Caller
//  frees *host.
int kiln_config_split_addr (const char *addr, char **host, int *port);

void kiln_config_test (bool verbose);

#endif
