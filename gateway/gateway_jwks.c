/*  =========================================================================
    gateway_jwks — GET /.well-known/jwks.json: the webhook signing key set

    Publishes the public half of the key pair the brokers sign webhooks
    with, as a JSON Web Key Set (kiln_sign_jwks), so receivers can verify
    x-fal-webhook-signature. Anyone may read it: no key is needed.

    | in                                   | out                                     |
    |--------------------------------------|-----------------------------------------|
    | GET /.well-known/jwks.json           | GET kiln:signing_key                    |
    | Redis: the stored pair               | 200 {"keys": [{kty, crv, alg, use, kid, |
    |                                      | x}]}, Content-Type: application/json    |
    | Redis: nil (no broker has made one)  | SET kiln:signing_key <new pair> NX,     |
    |                                      | then GET again: whichever pair won      |
    | Redis: not a key pair                | 500 internal_error (and logged)         |
    | Redis: down or an error              | 503 / 500 (kiln_call_usable)            |

    The get-or-create steps are kiln_signing_key.h's, run on the loop.
    The key is read on every request (one GET), so a rotated key shows at
    once.
    =========================================================================
*/
#include "gateway_internal.h"

#include "kiln_auth.h"
#include "kiln_signing_key.h"

#include <sodium.h>
#include <string.h>

//  Receivers fetch the set when they meet an unknown kid; a short cache
//  spares the gateway without hiding a rotation for long.
#define JWKS_CACHE_CONTROL "public, max-age=300"

static void
s_answer (kiln_call_t *call, const char *text)
{
    kiln_sign_keypair_t pair;
    if (kiln_sign_keypair_decode (text, &pair)) {
        kiln_log_error ("%s does not hold a signing key pair; DEL it to have a new one made",
                        KILN_KEY_SIGNING_KEY);
        kiln_call_error (call, 500, "internal_error", "The webhook signing key is not valid");
        return;
    }
    char *jwks = kiln_sign_jwks (&pair);
    sodium_memzero (&pair, sizeof pair);
    if (!jwks) {
        kiln_call_error (call, 500, "internal_error", "Out of memory");
        return;
    }
    kiln_call_header (call, "Cache-Control", JWKS_CACHE_CONTROL);
    kiln_call_reply (call, 200, "application/json", jwks, strlen (jwks));
    free (jwks);
}

static void
s_on_key (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type == REDIS_REPLY_STRING) {
            s_answer (call, reply->str);
            sodium_memzero (reply->str, reply->len);
        }
        else
        if (reply->type == REDIS_REPLY_NIL && call->number == 0) {
            //  None yet: offer one; the GET after SET NX reads the winner.
            call->number = 1;
            char *text = kiln_signing_key_new_text ();
            if (!text)
                kiln_call_error (call, 500, "internal_error", "Cannot make a signing key");
            else
            if (kiln_call_redisf_quiet (call, "SET %s %s NX", KILN_KEY_SIGNING_KEY, text) == 0)
                kiln_call_redisf (call, s_on_key, "GET %s", KILN_KEY_SIGNING_KEY);
            if (text) {
                sodium_memzero (text, strlen (text));
                free (text);
            }
        }
        else
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_jwks (kiln_call_t *call)
{
    kiln_call_redisf (call, s_on_key, "GET %s", KILN_KEY_SIGNING_KEY);
}
