/*  =========================================================================
    fuzz_redis_url — Redis URLs (shared/kiln_redis.c, kiln_redis_url_parse)

    Input: a URL as KILN_REDIS_URL or --redis could give it. A parsed URL
    must have a host that could not confuse a later URL or command (no
    space, control character, '@', brackets, '%', '?' or '#'), a port in
    1-65535 and a db from 0; and the URL rebuilt from its parts (user and
    password percent-encoded) must parse to the same parts.
    =========================================================================
*/
#include "fuzz.h"
#include "kiln_redis.h"

#include <stdbool.h>
#include <string.h>

static bool
s_same (const kiln_redis_url_t *a, const kiln_redis_url_t *b)
{
    return strcmp (a->host, b->host) == 0 && a->port == b->port && a->db == b->db
        && (a->password == NULL) == (b->password == NULL)
        && (!a->password || strcmp (a->password, b->password) == 0)
        && (a->user == NULL) == (b->user == NULL)
        && (!a->user || strcmp (a->user, b->user) == 0);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  A C string: the parser never sees past a NUL, so cut there
    char *text = fuzz_string (data, size);
    if (!text)
        return 0;
    kiln_redis_url_t *url = kiln_redis_url_parse (text);
    free (text);
    if (!url)
        return 0;
    FUZZ_CHECK (url->host && *url->host);
    for (const char *c = url->host; *c; c++)
        FUZZ_CHECK ((unsigned char) *c > ' ' && !strchr ("@[]%?#/", *c));
    FUZZ_CHECK (url->port >= 1 && url->port <= 65535);
    FUZZ_CHECK (url->db >= 0);

    //  Rebuild: redis://[user][:pw]@host-or-[v6]:port/db
    size_t pw_len = url->password ? strlen (url->password) : 0;
    size_t user_len = url->user ? strlen (url->user) : 0;
    size_t room = 64 + strlen (url->host) + 3 * pw_len + 3 * user_len;
    char *rebuilt = malloc (room);
    FUZZ_CHECK (rebuilt);
    size_t used = (size_t) snprintf (rebuilt, room, "redis://");
    for (size_t i = 0; i < user_len; i++)
        used += (size_t) snprintf (rebuilt + used, room - used, "%%%02X",
                                   (unsigned char) url->user [i]);
    if (url->password) {
        used += (size_t) snprintf (rebuilt + used, room - used, ":");
        for (size_t i = 0; i < pw_len; i++)
            used += (size_t) snprintf (rebuilt + used, room - used, "%%%02X",
                                       (unsigned char) url->password [i]);
    }
    if (url->user || url->password)
        used += (size_t) snprintf (rebuilt + used, room - used, "@");
    bool v6 = strchr (url->host, ':') != NULL;
    snprintf (rebuilt + used, room - used, "%s%s%s:%d/%d",
              v6 ? "[" : "", url->host, v6 ? "]" : "", url->port, url->db);
    kiln_redis_url_t *again = kiln_redis_url_parse (rebuilt);
    if (!again)
        fprintf (stderr, "rebuilt URL refused: %s\n", rebuilt);
    FUZZ_CHECK (again);
    FUZZ_CHECK (s_same (url, again));
    free (rebuilt);
    kiln_redis_url_destroy (&again);
    kiln_redis_url_destroy (&url);
    return 0;
}
