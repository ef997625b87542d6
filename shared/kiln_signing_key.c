/*  =========================================================================
    kiln_signing_key — the webhook signing key pair, shared through Redis

    See kiln_signing_key.h. The decode (and every check of the stored
    text) is kiln_auth's; this module only gets and, once, makes the pair.
    =========================================================================
*/
#include "kiln_signing_key.h"

#include "kiln_keys.h"
#include "kiln_log.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

char *
kiln_signing_key_new_text (void)
{
    if (kiln_auth_init ())
        return NULL;
    kiln_sign_keypair_t pair;
    char *text = kiln_sign_keypair_make (&pair) == 0? kiln_sign_keypair_encode (&pair): NULL;
    sodium_memzero (&pair, sizeof pair);
    return text;
}

//  GET of the key: 1 and *pair filled, 0 absent, -1 no answer or not a
//  key pair (logged).
static int
s_get (redisContext *redis, kiln_sign_keypair_t *pair)
{
    redisReply *reply = redisCommand (redis, "GET %s", KILN_KEY_SIGNING_KEY);
    if (!reply)
        return -1;
    int rc = 0;
    if (reply->type == REDIS_REPLY_STRING) {
        rc = kiln_sign_keypair_decode (reply->str, pair) == 0? 1: -1;
        if (rc < 0)
            kiln_log_error ("%s does not hold a signing key pair; "
                            "DEL it to have a new one made", KILN_KEY_SIGNING_KEY);
        sodium_memzero (reply->str, reply->len);
    }
    else
    if (reply->type != REDIS_REPLY_NIL) {
        kiln_log_error ("GET %s failed: %s", KILN_KEY_SIGNING_KEY,
                        reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
        rc = -1;
    }
    freeReplyObject (reply);
    return rc;
}

int
kiln_signing_key_load (redisContext *redis, kiln_sign_keypair_t *pair)
{
    int got = s_get (redis, pair);
    if (got != 0)
        return got > 0? 0: -1;

    //  None yet: offer ours. SET NX keeps whichever came first, so the
    //  GET after it is the pair everyone uses.
    char *text = kiln_signing_key_new_text ();
    if (!text) {
        kiln_log_error ("cannot make a signing key pair");
        return -1;
    }
    redisReply *reply = redisCommand (redis, "SET %s %s NX", KILN_KEY_SIGNING_KEY, text);
    sodium_memzero (text, strlen (text));
    free (text);
    if (!reply)
        return -1;
    bool made = reply->type == REDIS_REPLY_STATUS;
    if (reply->type == REDIS_REPLY_ERROR)
        kiln_log_error ("SET %s failed: %s", KILN_KEY_SIGNING_KEY, reply->str);
    freeReplyObject (reply);
    if (made)
        kiln_log_info ("made a new webhook signing key pair (%s)", KILN_KEY_SIGNING_KEY);
    return s_get (redis, pair) > 0? 0: -1;
}
