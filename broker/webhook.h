/*  =========================================================================
    webhook — delivers ?fal_webhook= callbacks from the Redis outbox

    A thread of its own beside the broker, with its own Redis connection
    and libcurl handle. It claims due deliveries from kiln:webhooks
    (KILN_SCRIPT_WEBHOOK_CLAIM), POSTs fal's webhook body to each URL and
    records the outcome (KILN_SCRIPT_WEBHOOK_DONE): delivered on a 2xx,
    else retried with exponential backoff until webhook_tries, then
    failed. Delivery is at least once; webhook.c says when a receiver can
    see one twice.

    Each delivery is signed the way fal signs (kiln_auth.h): headers
    x-fal-webhook-request-id, -user-id (the app's owner), -timestamp and
    -signature, signed afresh on every try with the key pair shared in
    Redis (kiln_signing_key.h). Targets whose address is loopback,
    private, link-local or unique-local are refused (the delivery fails
    at once) unless cfg->webhook_allow_private.
    =========================================================================
*/
#ifndef KILN_WEBHOOK_H_INCLUDED
#define KILN_WEBHOOK_H_INCLUDED

#include "kiln_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

typedef struct _kiln_webhooks_t kiln_webhooks_t;

//  Starts the delivery thread. Copies what it needs from cfg. A Redis
//  that is down is retried with backoff, not fatal. NULL when the thread
//  or libcurl cannot be started.
kiln_webhooks_t *kiln_webhooks_new (const kiln_config_t *cfg);

//  Stops the thread (a delivery in flight is aborted and handed back to
//  the outbox, due at once) and frees it; nulls the pointer.
void kiln_webhooks_destroy (kiln_webhooks_t **self_p);

//  The body POSTed for a completed request: compact JSON
//  {request_id, gateway_request_id, status: "OK"|"ERROR", payload, error}
//  (plus payload_error when the result is neither JSON nor UTF-8 text).
//  error may be NULL. NULL when out of memory. Caller frees.
char *kiln_webhook_body (const char *request_id, int status,
                         const char *result, size_t result_size, const char *error);

//  Delay before the next try when a try has failed with `attempts` tries
//  before it: backoff_ms · 2^attempts, capped at a day.
int64_t kiln_webhook_delay_ms (int64_t backoff_ms, int attempts);

//  Whether a webhook may not connect to addr (unless the operator allows
//  it): IPv4 0/8, 10/8, 127/8, 169.254/16, 172.16/12, 192.168/16; IPv6
//  :: and ::1, fc00::/7, fe80::/10, and the IPv4-mapped forms
//  (::ffff:a.b.c.d) of the IPv4 ones. Any other family is refused too.
bool kiln_webhook_address_private (const struct sockaddr *addr);

#endif
