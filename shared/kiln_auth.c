/*  =========================================================================
    kiln_auth — API keys and webhook signatures (see kiln_auth.h)

    libsodium does the cryptography: random bytes, SHA-256, constant-time
    comparison, Ed25519 and the hex and base64url encodings.
    =========================================================================
*/
#include "kiln_auth.h"
#include "kiln_util.h"

#include <assert.h>
#include <ctype.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int
kiln_auth_init (void)
{
    //  0: initialised now, 1: already; both fine.
    return sodium_init () < 0 ? -1 : 0;
}

//  hex(SHA-256(salt bytes ‖ secret text)) into out.
static int
s_hash_secret (const char *salt_hex, const char *secret, char out [KILN_AUTH_HASH_LEN + 1])
{
    uint8_t salt [KILN_AUTH_SALT_LEN / 2];
    size_t salt_size = 0;
    if (strlen (salt_hex) != KILN_AUTH_SALT_LEN
    ||  sodium_hex2bin (salt, sizeof salt, salt_hex, KILN_AUTH_SALT_LEN, NULL, &salt_size, NULL) != 0
    ||  salt_size != sizeof salt)
        return -1;
    crypto_hash_sha256_state state;
    uint8_t digest [crypto_hash_sha256_BYTES];
    crypto_hash_sha256_init (&state);
    crypto_hash_sha256_update (&state, salt, sizeof salt);
    crypto_hash_sha256_update (&state, (const uint8_t *) secret, strlen (secret));
    crypto_hash_sha256_final (&state, digest);
    sodium_bin2hex (out, KILN_AUTH_HASH_LEN + 1, digest, sizeof digest);
    return 0;
}

int
kiln_auth_key_make (kiln_auth_key_t *key)
{
    uint8_t secret [KILN_AUTH_SECRET_LEN / 2];
    uint8_t salt [KILN_AUTH_SALT_LEN / 2];
    randombytes_buf (secret, sizeof secret);
    randombytes_buf (salt, sizeof salt);
    kiln_uuid4 (key->id);
    sodium_bin2hex (key->secret, sizeof key->secret, secret, sizeof secret);
    sodium_bin2hex (key->salt, sizeof key->salt, salt, sizeof salt);
    sodium_memzero (secret, sizeof secret);
    return s_hash_secret (key->salt, key->secret, key->hash);
}

static bool
s_all_hex (const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isxdigit ((unsigned char) s [i]))
            return false;
    return true;
}

int
kiln_auth_parse (const char *header, char id [KILN_AUTH_ID_LEN + 1],
                 char secret [KILN_AUTH_SECRET_LEN + 1])
{
    if (!header || strncasecmp (header, "Key ", 4) != 0)
        return -1;
    const char *p = header + 4;
    while (*p == ' ')
        p++;
    const char *colon = strchr (p, ':');
    if (!colon || colon - p != KILN_AUTH_ID_LEN)
        return -1;
    const char *s = colon + 1;
    size_t secret_len = strlen (s);
    while (secret_len && s [secret_len - 1] == ' ')
        secret_len--;
    if (secret_len != KILN_AUTH_SECRET_LEN || !s_all_hex (s, secret_len))
        return -1;
    for (int i = 0; i < KILN_AUTH_ID_LEN; i++) {
        char c = p [i];
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash? c != '-': !isxdigit ((unsigned char) c))
            return -1;
    }
    memcpy (id, p, KILN_AUTH_ID_LEN);
    id [KILN_AUTH_ID_LEN] = 0;
    for (int i = 0; i < KILN_AUTH_ID_LEN; i++)
        id [i] = (char) tolower ((unsigned char) id [i]);
    memcpy (secret, s, KILN_AUTH_SECRET_LEN);
    secret [KILN_AUTH_SECRET_LEN] = 0;
    return 0;
}

bool
kiln_auth_check (const char *secret, const char *salt_hex, const char *hash_hex)
{
    char hash [KILN_AUTH_HASH_LEN + 1];
    if (!secret || !salt_hex || !hash_hex || strlen (hash_hex) != KILN_AUTH_HASH_LEN
    ||  s_hash_secret (salt_hex, secret, hash) != 0)
        return false;
    return sodium_memcmp (hash, hash_hex, KILN_AUTH_HASH_LEN) == 0;
}

bool
kiln_auth_scope_valid (const char *scope)
{
    return scope && (strcmp (scope, KILN_SCOPE_API) == 0 || strcmp (scope, KILN_SCOPE_ADMIN) == 0);
}

//  ---------------------------------------------------------------------
//  Webhook signatures

static void
s_kid (kiln_sign_keypair_t *pair)
{
    sodium_bin2hex (pair->kid, sizeof pair->kid, pair->public_key, KILN_SIGN_KID_LEN / 2);
}

int
kiln_sign_keypair_make (kiln_sign_keypair_t *pair)
{
    if (crypto_sign_keypair (pair->public_key, pair->secret_key) != 0)
        return -1;
    s_kid (pair);
    return 0;
}

char *
kiln_sign_keypair_encode (const kiln_sign_keypair_t *pair)
{
    size_t size = KILN_SIGN_KID_LEN + 1 + KILN_SIGN_PUBLIC_BYTES * 2 + 1 + KILN_SIGN_SECRET_BYTES * 2 + 1;
    char *text = malloc (size);
    if (!text)
        return NULL;
    char *p = text;
    memcpy (p, pair->kid, KILN_SIGN_KID_LEN);
    p += KILN_SIGN_KID_LEN;
    *p++ = ':';
    sodium_bin2hex (p, KILN_SIGN_PUBLIC_BYTES * 2 + 1, pair->public_key, KILN_SIGN_PUBLIC_BYTES);
    p += KILN_SIGN_PUBLIC_BYTES * 2;
    *p++ = ':';
    sodium_bin2hex (p, KILN_SIGN_SECRET_BYTES * 2 + 1, pair->secret_key, KILN_SIGN_SECRET_BYTES);
    return text;
}

//  Exactly size bytes of hex at text into out. 0 or -1.
static int
s_hex_exact (const char *text, size_t hex_len, uint8_t *out, size_t size)
{
    size_t got = 0;
    if (hex_len != size * 2 || !s_all_hex (text, hex_len))
        return -1;
    if (sodium_hex2bin (out, size, text, hex_len, NULL, &got, NULL) != 0 || got != size)
        return -1;
    return 0;
}

int
kiln_sign_keypair_decode (const char *text, kiln_sign_keypair_t *pair)
{
    if (!text)
        return -1;
    const char *first = strchr (text, ':');
    const char *second = first? strchr (first + 1, ':'): NULL;
    if (!second || first - text != KILN_SIGN_KID_LEN)
        return -1;
    if (s_hex_exact (first + 1, (size_t) (second - first - 1), pair->public_key, KILN_SIGN_PUBLIC_BYTES)
    ||  s_hex_exact (second + 1, strlen (second + 1), pair->secret_key, KILN_SIGN_SECRET_BYTES))
        return -1;
    //  The secret key holds its public half: a mismatch is a corrupt pair.
    if (memcmp (pair->secret_key + 32, pair->public_key, KILN_SIGN_PUBLIC_BYTES) != 0)
        return -1;
    s_kid (pair);
    if (memcmp (pair->kid, text, KILN_SIGN_KID_LEN) != 0)
        return -1;
    return 0;
}

//  The signed message: request_id \n user_id \n timestamp \n hex(SHA-256(body)).
static char *
s_signed_message (const char *request_id, const char *user_id, const char *timestamp,
                  const void *body, size_t body_size, size_t *size)
{
    char digest [KILN_SHA256_HEX_LEN + 1];
    kiln_sha256_hex (body_size? body: "", body_size, digest);
    size_t len = strlen (request_id) + strlen (user_id) + strlen (timestamp) + KILN_SHA256_HEX_LEN + 3;
    char *message = malloc (len + 1);
    if (!message)
        return NULL;
    snprintf (message, len + 1, "%s\n%s\n%s\n%s", request_id, user_id, timestamp, digest);
    *size = len;
    return message;
}

int
kiln_sign_webhook (const kiln_sign_keypair_t *pair, const char *request_id,
                   const char *user_id, const char *timestamp,
                   const void *body, size_t body_size, char out [KILN_SIGN_HEX_LEN + 1])
{
    size_t size;
    char *message = s_signed_message (request_id, user_id, timestamp, body, body_size, &size);
    if (!message)
        return -1;
    uint8_t signature [crypto_sign_BYTES];
    int rc = crypto_sign_detached (signature, NULL, (const uint8_t *) message, size, pair->secret_key);
    free (message);
    if (rc != 0)
        return -1;
    sodium_bin2hex (out, KILN_SIGN_HEX_LEN + 1, signature, sizeof signature);
    return 0;
}

bool
kiln_sign_webhook_verify (const uint8_t public_key [KILN_SIGN_PUBLIC_BYTES],
                          const char *request_id, const char *user_id,
                          const char *timestamp, const void *body, size_t body_size,
                          const char *signature_hex)
{
    uint8_t signature [crypto_sign_BYTES];
    if (!signature_hex
    ||  s_hex_exact (signature_hex, strlen (signature_hex), signature, sizeof signature))
        return false;
    size_t size;
    char *message = s_signed_message (request_id, user_id, timestamp, body, body_size, &size);
    if (!message)
        return false;
    bool valid = crypto_sign_verify_detached (signature, (const uint8_t *) message, size, public_key) == 0;
    free (message);
    return valid;
}

char *
kiln_sign_jwks (const kiln_sign_keypair_t *pair)
{
    char x [sodium_base64_ENCODED_LEN (KILN_SIGN_PUBLIC_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    sodium_bin2base64 (x, sizeof x, pair->public_key, KILN_SIGN_PUBLIC_BYTES,
                       sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    json_t *jwks = json_pack ("{s:[{s:s, s:s, s:s, s:s, s:s, s:s}]}", "keys",
                              "kty", "OKP", "crv", "Ed25519", "alg", "EdDSA", "use", "sig",
                              "kid", pair->kid, "x", x);
    char *text = jwks? json_dumps (jwks, JSON_COMPACT): NULL;
    json_decref (jwks);
    return text;
}

//  ---------------------------------------------------------------------
//  Selftest

void
kiln_auth_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_auth: ");
    assert (kiln_auth_init () == 0);

    //  A made key checks against its own salt and hash, nothing else does.
    kiln_auth_key_t key;
    assert (kiln_auth_key_make (&key) == 0);
    assert (strlen (key.id) == KILN_AUTH_ID_LEN);
    assert (strlen (key.secret) == KILN_AUTH_SECRET_LEN);
    assert (kiln_auth_check (key.secret, key.salt, key.hash));
    char wrong [KILN_AUTH_SECRET_LEN + 1];
    memcpy (wrong, key.secret, sizeof wrong);
    wrong [0] = wrong [0] == 'a'? 'b': 'a';
    assert (!kiln_auth_check (wrong, key.salt, key.hash));
    assert (!kiln_auth_check ("", key.salt, key.hash));
    assert (!kiln_auth_check (key.secret, "zz", key.hash));
    assert (!kiln_auth_check (key.secret, key.salt, "00"));
    kiln_auth_key_t other;
    assert (kiln_auth_key_make (&other) == 0);
    assert (strcmp (other.id, key.id) != 0 && strcmp (other.salt, key.salt) != 0);
    assert (!kiln_auth_check (key.secret, other.salt, other.hash));

    //  Headers.
    char header [160], id [KILN_AUTH_ID_LEN + 1], secret [KILN_AUTH_SECRET_LEN + 1];
    snprintf (header, sizeof header, "Key %s:%s", key.id, key.secret);
    assert (kiln_auth_parse (header, id, secret) == 0);
    assert (strcmp (id, key.id) == 0 && strcmp (secret, key.secret) == 0);
    snprintf (header, sizeof header, "key  %s:%s ", key.id, key.secret);
    assert (kiln_auth_parse (header, id, secret) == 0);
    snprintf (header, sizeof header, "Bearer %s:%s", key.id, key.secret);
    assert (kiln_auth_parse (header, id, secret) == -1);
    snprintf (header, sizeof header, "Key %s", key.id);
    assert (kiln_auth_parse (header, id, secret) == -1);
    snprintf (header, sizeof header, "Key %s:%.63s", key.id, key.secret);
    assert (kiln_auth_parse (header, id, secret) == -1);
    snprintf (header, sizeof header, "Key %s:%sg", key.id, key.secret);
    assert (kiln_auth_parse (header, id, secret) == -1);
    snprintf (header, sizeof header, "Key x%.35s:%s", key.id + 1, key.secret);
    assert (kiln_auth_parse (header, id, secret) == -1);
    assert (kiln_auth_parse ("Key ", id, secret) == -1);
    assert (kiln_auth_parse ("", id, secret) == -1);
    assert (kiln_auth_parse (NULL, id, secret) == -1);

    assert (kiln_auth_scope_valid ("API") && kiln_auth_scope_valid ("ADMIN"));
    assert (!kiln_auth_scope_valid ("api") && !kiln_auth_scope_valid (NULL));

    //  Signatures: sign, verify, round-trip the stored pair, refuse changes.
    kiln_sign_keypair_t pair, loaded;
    assert (kiln_sign_keypair_make (&pair) == 0);
    char *text = kiln_sign_keypair_encode (&pair);
    assert (text);
    assert (kiln_sign_keypair_decode (text, &loaded) == 0);
    assert (memcmp (&loaded, &pair, sizeof pair) == 0);
    text [0] = text [0] == 'a'? 'b': 'a';
    assert (kiln_sign_keypair_decode (text, &loaded) == -1);
    free (text);
    assert (kiln_sign_keypair_decode ("abc:def:012", &loaded) == -1);
    assert (kiln_sign_keypair_decode ("", &loaded) == -1);

    const char *body = "{\"status\":\"OK\"}";
    char signature [KILN_SIGN_HEX_LEN + 1];
    assert (kiln_sign_webhook (&pair, "req-1", "owner", "1700000000", body, strlen (body), signature) == 0);
    assert (strlen (signature) == KILN_SIGN_HEX_LEN);
    assert (kiln_sign_webhook_verify (pair.public_key, "req-1", "owner", "1700000000",
                                      body, strlen (body), signature));
    assert (!kiln_sign_webhook_verify (pair.public_key, "req-2", "owner", "1700000000",
                                       body, strlen (body), signature));
    assert (!kiln_sign_webhook_verify (pair.public_key, "req-1", "owner", "1700000001",
                                       body, strlen (body), signature));
    assert (!kiln_sign_webhook_verify (pair.public_key, "req-1", "owner", "1700000000",
                                       body, strlen (body) - 1, signature));
    assert (!kiln_sign_webhook_verify (pair.public_key, "req-1", "owner", "1700000000",
                                       body, strlen (body), "00"));
    //  Empty bodies sign too (SHA-256 of nothing).
    assert (kiln_sign_webhook (&pair, "r", "u", "1", NULL, 0, signature) == 0);
    assert (kiln_sign_webhook_verify (pair.public_key, "r", "u", "1", NULL, 0, signature));

    //  The JWKS carries the public key, base64url without padding.
    char *jwks = kiln_sign_jwks (&pair);
    assert (jwks);
    json_t *parsed = json_loads (jwks, 0, NULL);
    assert (parsed);
    json_t *k = json_array_get (json_object_get (parsed, "keys"), 0);
    assert (strcmp (json_string_value (json_object_get (k, "crv")), "Ed25519") == 0);
    assert (strcmp (json_string_value (json_object_get (k, "kid")), pair.kid) == 0);
    const char *x = json_string_value (json_object_get (k, "x"));
    assert (x && strlen (x) == 43 && !strchr (x, '='));
    uint8_t decoded [KILN_SIGN_PUBLIC_BYTES];
    size_t decoded_size = 0;
    assert (sodium_base642bin (decoded, sizeof decoded, x, strlen (x), NULL, &decoded_size, NULL,
                               sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0);
    assert (decoded_size == KILN_SIGN_PUBLIC_BYTES);
    assert (memcmp (decoded, pair.public_key, KILN_SIGN_PUBLIC_BYTES) == 0);
    json_decref (parsed);
    free (jwks);

    if (verbose)
        printf ("OK\n");
}
