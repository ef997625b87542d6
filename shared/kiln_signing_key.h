/*  =========================================================================
    kiln_signing_key — the webhook signing key pair, shared through Redis

    Every broker signs webhooks with one key pair and every gateway
    publishes its public half (GET /.well-known/jwks.json), so the pair
    lives in Redis at KILN_KEY_SIGNING_KEY as kiln_sign_keypair_encode's
    text. Whoever needs it first makes it: GET; when absent, make a pair,
    SET NX, GET again. Two processes racing both end with the one that
    SET NX let in, so they agree without a lock.

    The synchronous side (the broker's deliverer) calls
    kiln_signing_key_load. The gateway talks to Redis asynchronously: it
    runs the same three steps on its loop, taking the text to SET from
    kiln_signing_key_new_text, and decodes with kiln_sign_keypair_decode.

    Rotating the key: DEL kiln:signing_key, then restart the brokers (they
    read the key at start and after a Redis reconnect); the gateways read
    it on every JWKS request.
    =========================================================================
*/
#ifndef KILN_SIGNING_KEY_H_INCLUDED
#define KILN_SIGNING_KEY_H_INCLUDED

#include "kiln_auth.h"

#include <hiredis/hiredis.h>

//  A new key pair as the text to SET NX (caller frees), or NULL when
//  libsodium cannot start or memory runs out. Initialises libsodium.
char *kiln_signing_key_new_text (void);

//  Gets the shared pair into *pair, making and storing it when Redis has
//  none. 0; or -1 when Redis did not answer (redis->err is then set: the
//  connection is lost) or holds something that is not a key pair (logged,
//  with what to do).
int kiln_signing_key_load (redisContext *redis, kiln_sign_keypair_t *pair);

#endif
