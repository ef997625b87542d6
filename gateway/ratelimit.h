/*  =========================================================================
    ratelimit — requests per second per caller, a token bucket each

    The gateway keeps one bucket per caller (an API key's id, else the
    client's address) in its own memory: each gateway limits on its own,
    so N gateways behind a balancer let N times the rate through. A bucket
    holds up to `burst` tokens and refills at `rate_per_s`; a request takes
    one. Pure (the time is an argument) and table-tested in kiln-selftest.

    Memory is bounded: at most max_keys buckets. A bucket that has refilled
    is the same as no bucket, so those go first; when every bucket is busy
    (a flood of distinct callers), the one idle the longest goes.
    =========================================================================
*/
#ifndef KILN_RATELIMIT_H_INCLUDED
#define KILN_RATELIMIT_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _kiln_ratelimit_t kiln_ratelimit_t;

//  rate_per_s ≥ 1; burst 0 means rate_per_s; max_keys ≥ 1. NULL on a bad
//  argument or out of memory.
kiln_ratelimit_t *kiln_ratelimit_new (int rate_per_s, int burst, size_t max_keys);

void kiln_ratelimit_destroy (kiln_ratelimit_t **self_p);

//  Takes a token from key's bucket at now_ms (a monotonic clock). 0 when
//  the request may go; else how many ms until a token is there (≥ 1).
int64_t kiln_ratelimit_take (kiln_ratelimit_t *self, const char *key, int64_t now_ms);

//  Buckets held now.
size_t kiln_ratelimit_size (const kiln_ratelimit_t *self);

void kiln_ratelimit_test (bool verbose);

#endif
