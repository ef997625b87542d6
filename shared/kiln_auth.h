/*  =========================================================================
    kiln_auth — API keys and webhook signatures

    API keys. A caller sends `Authorization: Key <id>:<secret>`, as fal
    clients do. The id is a UUID v4 and names the key; the secret is 32
    random bytes in hex, shown once when the key is made. Redis keeps only
    a random salt and SHA-256(salt ‖ secret) (kiln:apikey:{id}, see
    kiln_keys.h), so a copy of Redis cannot call anything; checking a
    secret compares the hashes in constant time. Secrets carry 256 bits
    of entropy, so a slow password hash would add nothing but latency.

    Scopes: "API" calls apps and reads its owner's requests; "ADMIN" also
    manages (the /v1 API). Every key belongs to an owner (a tenant).

    Webhook signatures, the way fal signs them: Ed25519 over
        request_id \n user_id \n timestamp \n hex(SHA-256(body))
    sent hex-encoded in x-fal-webhook-signature, next to
    x-fal-webhook-request-id, x-fal-webhook-user-id and
    x-fal-webhook-timestamp (seconds since the epoch). The public key is
    published as a JSON Web Key Set at /.well-known/jwks.json.

    The signing key pair lives in Redis (KILN_KEY_SIGNING_KEY) as text,
    "kid:public-hex:secret-hex", written once with SET NX by whichever
    process needs it first, so every broker signs with the same key and
    every gateway publishes it.
    =========================================================================
*/
#ifndef KILN_AUTH_H_INCLUDED
#define KILN_AUTH_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_AUTH_ID_LEN        36      //  a UUID v4, without the NUL
#define KILN_AUTH_SECRET_LEN    64      //  hex of 32 bytes
#define KILN_AUTH_SALT_LEN      32      //  hex of 16 bytes
#define KILN_AUTH_HASH_LEN      64      //  hex of SHA-256

#define KILN_SCOPE_API          "API"
#define KILN_SCOPE_ADMIN        "ADMIN"

//  A freshly made key: what Redis keeps, plus the secret, shown once.
typedef struct {
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    char salt [KILN_AUTH_SALT_LEN + 1];
    char hash [KILN_AUTH_HASH_LEN + 1];
} kiln_auth_key_t;

//  Initialises libsodium; call once before anything below. 0 or -1.
int kiln_auth_init (void);

//  Makes a new key (id, secret, salt and hash). 0 or -1.
int kiln_auth_key_make (kiln_auth_key_t *key);

//  Parses an Authorization header value, "Key <id>:<secret>" (the word
//  Key in any case). 0, or -1 when it is not a well-formed key.
int kiln_auth_parse (const char *header, char id [KILN_AUTH_ID_LEN + 1],
                     char secret [KILN_AUTH_SECRET_LEN + 1]);

//  Whether secret matches the stored salt and hash; constant time in the
//  secret.
bool kiln_auth_check (const char *secret, const char *salt_hex, const char *hash_hex);

//  Whether scope is one kiln knows.
bool kiln_auth_scope_valid (const char *scope);

//  ---------------------------------------------------------------------
//  Webhook signatures

#define KILN_SIGN_PUBLIC_BYTES  32
#define KILN_SIGN_SECRET_BYTES  64
#define KILN_SIGN_KID_LEN       16      //  hex of the public key's first 8 bytes
#define KILN_SIGN_HEX_LEN       128     //  a signature in hex

typedef struct {
    char kid [KILN_SIGN_KID_LEN + 1];
    uint8_t public_key [KILN_SIGN_PUBLIC_BYTES];
    uint8_t secret_key [KILN_SIGN_SECRET_BYTES];
} kiln_sign_keypair_t;

//  Makes a new key pair. 0 or -1.
int kiln_sign_keypair_make (kiln_sign_keypair_t *pair);

//  The pair as stored in Redis: "kid:public-hex:secret-hex" (a new
//  string, caller frees), and back (0, or -1 if the text is not one).
char *kiln_sign_keypair_encode (const kiln_sign_keypair_t *pair);
int kiln_sign_keypair_decode (const char *text, kiln_sign_keypair_t *pair);

//  Signs a webhook delivery. out gets the signature in hex. 0 or -1.
int kiln_sign_webhook (const kiln_sign_keypair_t *pair, const char *request_id,
                       const char *user_id, const char *timestamp,
                       const void *body, size_t body_size, char out [KILN_SIGN_HEX_LEN + 1]);

//  Checks a signature the way a receiver does (for tests and tools).
bool kiln_sign_webhook_verify (const uint8_t public_key [KILN_SIGN_PUBLIC_BYTES],
                               const char *request_id, const char *user_id,
                               const char *timestamp, const void *body, size_t body_size,
                               const char *signature_hex);

//  The JSON Web Key Set that publishes the public key (a new string).
char *kiln_sign_jwks (const kiln_sign_keypair_t *pair);

void kiln_auth_test (bool verbose);

#endif
