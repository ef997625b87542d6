/*  =========================================================================
    kiln_keys — the Redis key schema

    The schema is documented in kiln_keys.h. Builders never truncate: a
    key that does not fit comes back empty, so a bug shows up as a failed
    command rather than as a write to some other request's key.
    =========================================================================
*/
#include "kiln_keys.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

static kiln_key_t
s_key (const char *prefix, const char *name, const char *suffix)
{
    kiln_key_t key = { "" };
    if (!name)
        return key;
    int len = snprintf (key.s, sizeof key.s, "%s%s%s", prefix, name, suffix);
    if (len < 0 || (size_t) len >= sizeof key.s)
        key.s [0] = 0;
    return key;
}

kiln_key_t
kiln_key_app (const char *app)
{
    return s_key ("kiln:app:", app, "");
}

kiln_key_t
kiln_key_revisions (const char *app)
{
    return s_key ("kiln:app:", app, ":revisions");
}

kiln_key_t
kiln_key_artifact (const char *sha256_hex)
{
    return s_key ("kiln:artifact:", sha256_hex, "");
}

kiln_key_t
kiln_key_queue (const char *app)
{
    return s_key ("kiln:queue:", app, "");
}

kiln_key_t
kiln_key_request (const char *request_id)
{
    return s_key (KILN_KEY_REQ_PREFIX, request_id, "");
}

kiln_key_t
kiln_key_logs (const char *request_id)
{
    return s_key (KILN_KEY_REQ_PREFIX, request_id, ":logs");
}

kiln_key_t
kiln_key_file (const char *file_id)
{
    return s_key (KILN_KEY_FILE_PREFIX, file_id, "");
}

kiln_key_t
kiln_key_reply_channel (const char *gateway_id)
{
    return s_key (KILN_CHANNEL_ANSWER_PREFIX, gateway_id, "");
}

kiln_key_t
kiln_key_app_logs (const char *app)
{
    return s_key ("kiln:logs:", app, "");
}

kiln_key_t
kiln_key_apikey (const char *key_id)
{
    return s_key ("kiln:apikey:", key_id, "");
}

kiln_key_t
kiln_key_app_secrets (const char *app)
{
    return s_key ("kiln:app:", app, ":secrets");
}

bool
kiln_name_part_valid (const char *part, size_t len)
{
    if (!part || len == 0 || len > KILN_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = part [i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '-' && c != '_')))
            return false;
    }
    return true;
}

bool
kiln_app_name_valid (const char *name)
{
    if (!name)
        return false;
    const char *slash = strchr (name, '/');
    if (!slash)
        return false;
    return kiln_name_part_valid (name, slash - name)
        && kiln_name_part_valid (slash + 1, strlen (slash + 1));
}

bool
kiln_id_valid (const char *id)
{
    if (!id)
        return false;
    size_t len = strlen (id);
    if (len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id [i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-'))
            return false;
    }
    return true;
}

//  ---------------------------------------------------------------------
//  Selftest

void
kiln_keys_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_keys: ");

    const char *id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    assert (strcmp (kiln_key_app ("local/echo").s, "kiln:app:local/echo") == 0);
    assert (strcmp (kiln_key_revisions ("local/echo").s, "kiln:app:local/echo:revisions") == 0);
    assert (strcmp (kiln_key_queue ("local/echo").s, "kiln:queue:local/echo") == 0);
    assert (strcmp (kiln_key_request (id).s,
                    "kiln:req:0f8fad5b-d9cb-469f-a165-70867728950e") == 0);
    assert (strcmp (kiln_key_logs (id).s,
                    "kiln:req:0f8fad5b-d9cb-469f-a165-70867728950e:logs") == 0);
    assert (strcmp (kiln_key_file (id).s,
                    "kiln:file:0f8fad5b-d9cb-469f-a165-70867728950e") == 0);
    assert (strcmp (kiln_key_reply_channel ("gw1").s, "kiln:answer:gw1") == 0);
    assert (strcmp (kiln_key_app_logs ("local/echo").s, "kiln:logs:local/echo") == 0);
    assert (strcmp (kiln_key_app_secrets ("local/echo").s, "kiln:app:local/echo:secrets") == 0);
    assert (strcmp (kiln_key_apikey (id).s,
                    "kiln:apikey:0f8fad5b-d9cb-469f-a165-70867728950e") == 0);
    const char *sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert (strcmp (kiln_key_artifact (sha).s,
                    "kiln:artifact:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    //  The constants match what the builders make.
    assert (strncmp (kiln_key_request (id).s, KILN_KEY_REQ_PREFIX, strlen (KILN_KEY_REQ_PREFIX)) == 0);
    assert (strncmp (kiln_key_file (id).s, KILN_KEY_FILE_PREFIX, strlen (KILN_KEY_FILE_PREFIX)) == 0);

    //  The longest valid name fits; an over-long input gives an empty key.
    char longest [2 * KILN_NAME_MAX + 2];
    memset (longest, 'a', sizeof longest - 1);
    longest [KILN_NAME_MAX] = '/';
    longest [sizeof longest - 1] = 0;
    assert (kiln_app_name_valid (longest));
    assert (strlen (kiln_key_queue (longest).s) == strlen ("kiln:queue:") + strlen (longest));
    assert (strlen (kiln_key_app (longest).s) > 0);
    char huge [400];
    memset (huge, 'a', sizeof huge - 1);
    huge [sizeof huge - 1] = 0;
    assert (kiln_key_request (huge).s [0] == 0);
    assert (kiln_key_logs (huge).s [0] == 0);
    assert (kiln_key_app (NULL).s [0] == 0);

    //  Name parts.
    assert (kiln_name_part_valid ("echo", 4));
    assert (kiln_name_part_valid ("a", 1));
    assert (kiln_name_part_valid ("0day", 4));
    assert (kiln_name_part_valid ("my-app_2", 8));
    assert (kiln_name_part_valid ("echo/x", 4));   //  only len bytes count
    assert (!kiln_name_part_valid ("", 0));
    assert (!kiln_name_part_valid (NULL, 3));
    assert (!kiln_name_part_valid ("-app", 4));
    assert (!kiln_name_part_valid ("_app", 4));
    assert (!kiln_name_part_valid ("Echo", 4));
    assert (!kiln_name_part_valid ("my app", 6));
    assert (!kiln_name_part_valid ("a:b", 3));
    assert (!kiln_name_part_valid ("a/b", 3));
    assert (!kiln_name_part_valid ("a.b", 3));
    assert (!kiln_name_part_valid ("caf\xc3\xa9", 5));
    assert (kiln_name_part_valid (longest, KILN_NAME_MAX));
    assert (!kiln_name_part_valid (huge, KILN_NAME_MAX + 1));

    //  Full names.
    assert (kiln_app_name_valid ("local/echo"));
    assert (kiln_app_name_valid ("team-1/sd_xl"));
    assert (!kiln_app_name_valid ("echo"));
    assert (!kiln_app_name_valid ("/echo"));
    assert (!kiln_app_name_valid ("local/"));
    assert (!kiln_app_name_valid ("local/echo/sub"));
    assert (!kiln_app_name_valid ("local//echo"));
    assert (!kiln_app_name_valid ("Local/echo"));
    assert (!kiln_app_name_valid ("local/ec ho"));
    assert (!kiln_app_name_valid ("local:x/echo"));
    assert (!kiln_app_name_valid ("local/echo:x"));
    assert (!kiln_app_name_valid (""));
    assert (!kiln_app_name_valid (NULL));
    assert (!kiln_app_name_valid (huge));
    longest [KILN_NAME_MAX] = 'a';
    longest [KILN_NAME_MAX + 1] = '/';     //  owner one too long
    assert (!kiln_app_name_valid (longest));

    //  Ids.
    assert (kiln_id_valid (id));
    assert (kiln_id_valid (sha));
    assert (kiln_id_valid ("a"));
    assert (!kiln_id_valid (""));
    assert (!kiln_id_valid (NULL));
    assert (!kiln_id_valid ("0F8FAD5B-D9CB-469F-A165-70867728950E"));
    assert (!kiln_id_valid ("abc/def"));
    assert (!kiln_id_valid ("abc:def"));
    assert (!kiln_id_valid ("abc def"));
    assert (!kiln_id_valid ("xyz"));
    assert (!kiln_id_valid ("../etc"));
    char id65 [66];
    memset (id65, 'a', 65);
    id65 [65] = 0;
    assert (!kiln_id_valid (id65));
    id65 [64] = 0;
    assert (kiln_id_valid (id65));

    if (verbose)
        printf ("OK\n");
}
