/*  =========================================================================
    fuzz_auth — the Authorization header (shared/kiln_auth.c,
    kiln_auth_parse), which every call to the gateway may carry

    Input: the header's value. A value the parser takes must give a
    lower-case UUID-shaped id of 36 characters and a secret of 64 hex
    digits, both cut exactly; the secret must then match a stored key's
    hash exactly when it is that key's secret.
    =========================================================================
*/
#include "fuzz.h"
#include "kiln_auth.h"

#include <ctype.h>
#include <string.h>

static kiln_auth_key_t s_key;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    (void) argc;
    (void) argv;
    if (kiln_auth_init () != 0 || kiln_auth_key_make (&s_key) != 0) {
        fprintf (stderr, "fuzz_auth: cannot initialise libsodium\n");
        exit (1);
    }
    return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char *header = fuzz_string (data, size);
    if (!header)
        return 0;
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    if (kiln_auth_parse (header, id, secret) == 0) {
        FUZZ_CHECK (strncasecmp (header, "key ", 4) == 0);
        FUZZ_CHECK (strlen (id) == KILN_AUTH_ID_LEN);
        for (int i = 0; i < KILN_AUTH_ID_LEN; i++) {
            bool dash = i == 8 || i == 13 || i == 18 || i == 23;
            FUZZ_CHECK (dash ? id [i] == '-' : isxdigit ((unsigned char) id [i]) && !isupper ((unsigned char) id [i]));
        }
        FUZZ_CHECK (strlen (secret) == KILN_AUTH_SECRET_LEN);
        for (int i = 0; i < KILN_AUTH_SECRET_LEN; i++)
            FUZZ_CHECK (isxdigit ((unsigned char) secret [i]));
        FUZZ_CHECK (kiln_auth_check (secret, s_key.salt, s_key.hash)
                    == (strcmp (secret, s_key.secret) == 0));
    }
    free (header);
    return 0;
}
