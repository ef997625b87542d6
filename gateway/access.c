/*  =========================================================================
    access — who may do what through the gateway, as pure functions

    The rules are in access.h. Every answer that hides something is 404,
    the answer for a thing that does not exist, so a key learns nothing
    of other owners' apps and requests; 401 only says "bring a key".
    =========================================================================
*/
#include "access.h"
#include "kiln_manifest.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

bool
kiln_access_all (const kiln_caller_t *who)
{
    return who->kind == KILN_CALLER_OPEN
       || (who->kind == KILN_CALLER_KEY && who->admin
           && strcmp (who->owner, KILN_OWNER_ANY) == 0);
}

bool
kiln_access_owns (const kiln_caller_t *who, const char *owner)
{
    if (kiln_access_all (who))
        return true;
    return who->kind == KILN_CALLER_KEY && owner && *owner
        && strcmp (who->owner, owner) == 0;
}

void
kiln_access_owner_of (const char *app, char out [KILN_NAME_MAX + 1])
{
    out [0] = 0;
    if (!app)
        return;
    size_t size = strcspn (app, "/");
    if (app [size] != '/' || size > KILN_NAME_MAX)
        return;
    memcpy (out, app, size);
    out [size] = 0;
}

kiln_access_t
kiln_access_call (const kiln_caller_t *who, const char *app, const char *app_auth)
{
    if (who->kind == KILN_CALLER_OPEN)
        return KILN_ACCESS_ALLOW;
    bool keyed = who->kind == KILN_CALLER_KEY;
    if (!app_auth)
        //  Without a key, an unknown app looks like any app one may not call
        return keyed ? KILN_ACCESS_NOT_FOUND : KILN_ACCESS_UNAUTHORIZED;
    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of (app, owner);
    if (kiln_access_owns (who, owner))
        return KILN_ACCESS_ALLOW;
    if (strcmp (app_auth, KILN_MANIFEST_AUTH_PUBLIC) == 0)
        return KILN_ACCESS_ALLOW;
    if (strcmp (app_auth, KILN_MANIFEST_AUTH_SHARED) == 0)
        return keyed ? KILN_ACCESS_ALLOW : KILN_ACCESS_UNAUTHORIZED;
    //  private, or anything we do not know: the owner's only
    return keyed ? KILN_ACCESS_NOT_FOUND : KILN_ACCESS_UNAUTHORIZED;
}

kiln_access_t
kiln_access_request (const kiln_caller_t *who, const char *app, const char *caller)
{
    if (kiln_access_all (who))
        return KILN_ACCESS_ALLOW;
    if (!app)
        return KILN_ACCESS_NOT_FOUND;
    //  Submitted without a key (to a public app): its id is all it takes,
    //  as for files
    if (!caller || !*caller)
        return KILN_ACCESS_ALLOW;
    if (who->kind != KILN_CALLER_KEY)
        return KILN_ACCESS_UNAUTHORIZED;
    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of (app, owner);
    if (kiln_access_owns (who, owner) || strcmp (who->owner, caller) == 0)
        return KILN_ACCESS_ALLOW;
    return KILN_ACCESS_NOT_FOUND;
}

kiln_access_t
kiln_access_manage (const kiln_caller_t *who, const char *owner, bool operator_only)
{
    if (kiln_access_all (who))
        return KILN_ACCESS_ALLOW;
    if (who->kind != KILN_CALLER_KEY)
        return KILN_ACCESS_UNAUTHORIZED;
    if (!who->admin || operator_only)
        return KILN_ACCESS_FORBIDDEN;
    if (owner && strcmp (owner, who->owner) != 0)
        return KILN_ACCESS_NOT_FOUND;
    return KILN_ACCESS_ALLOW;
}

bool
kiln_access_loopback (const char *host)
{
    if (!host)
        return false;
    if (strcmp (host, "::1") == 0 || strcmp (host, "[::1]") == 0
    ||  strcmp (host, "localhost") == 0)
        return true;
    //  127.0.0.0/8, written as a dotted quad
    unsigned a, b, c, d;
    char tail;
    if (sscanf (host, "%3u.%3u.%3u.%3u%c", &a, &b, &c, &d, &tail) != 4)
        return false;
    return a == 127 && b < 256 && c < 256 && d < 256;
}


//  ---------------------------------------------------------------------
//  Selftest

static kiln_caller_t
s_caller (kiln_caller_kind_t kind, bool admin, const char *owner)
{
    kiln_caller_t who = { .kind = kind, .admin = admin };
    snprintf (who.owner, sizeof who.owner, "%s", owner ? owner : "");
    return who;
}

void
kiln_access_test (bool verbose)
{
    if (verbose)
        printf (" * access: ");

    kiln_caller_t open = s_caller (KILN_CALLER_OPEN, false, "");
    kiln_caller_t none = s_caller (KILN_CALLER_ANONYMOUS, false, "");
    kiln_caller_t root = s_caller (KILN_CALLER_KEY, true, "*");
    kiln_caller_t alice = s_caller (KILN_CALLER_KEY, false, "alice");
    kiln_caller_t alice_admin = s_caller (KILN_CALLER_KEY, true, "alice");
    kiln_caller_t bob = s_caller (KILN_CALLER_KEY, false, "bob");
    kiln_caller_t bob_admin = s_caller (KILN_CALLER_KEY, true, "bob");
    //  "*" is the operator only with ADMIN
    kiln_caller_t star_api = s_caller (KILN_CALLER_KEY, false, "*");

    assert (kiln_access_all (&open) && kiln_access_all (&root));
    assert (!kiln_access_all (&none) && !kiln_access_all (&alice_admin));
    assert (!kiln_access_all (&star_api));
    assert (kiln_access_owns (&alice, "alice") && !kiln_access_owns (&alice, "bob"));
    assert (!kiln_access_owns (&none, "") && !kiln_access_owns (&alice, ""));
    assert (kiln_access_owns (&root, "bob"));

    char owner [KILN_NAME_MAX + 1];
    kiln_access_owner_of ("alice/echo", owner);
    assert (strcmp (owner, "alice") == 0);
    kiln_access_owner_of ("noslash", owner);
    assert (owner [0] == 0);
    kiln_access_owner_of (NULL, owner);
    assert (owner [0] == 0);

    //  Calling an app: caller × app_auth
    const struct {
        const kiln_caller_t *who;
        const char *app_auth;       //  NULL: not deployed
        kiln_access_t expect;
    } calls [] = {
        { &open, NULL, KILN_ACCESS_ALLOW },             //  keys off: the submit says 404
        { &open, "private", KILN_ACCESS_ALLOW },
        { &none, NULL, KILN_ACCESS_UNAUTHORIZED },
        { &none, "private", KILN_ACCESS_UNAUTHORIZED },
        { &none, "shared", KILN_ACCESS_UNAUTHORIZED },
        { &none, "public", KILN_ACCESS_ALLOW },
        { &alice, NULL, KILN_ACCESS_NOT_FOUND },
        { &alice, "private", KILN_ACCESS_ALLOW },       //  her own
        { &alice_admin, "private", KILN_ACCESS_ALLOW },
        { &bob, "private", KILN_ACCESS_NOT_FOUND },
        { &bob, "weird", KILN_ACCESS_NOT_FOUND },
        { &bob, "shared", KILN_ACCESS_ALLOW },
        { &bob, "public", KILN_ACCESS_ALLOW },
        { &bob_admin, "private", KILN_ACCESS_NOT_FOUND },
        { &root, "private", KILN_ACCESS_ALLOW },
        { &root, NULL, KILN_ACCESS_NOT_FOUND },
        { &star_api, "private", KILN_ACCESS_NOT_FOUND },
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls [0]; i++) {
        kiln_access_t got = kiln_access_call (calls [i].who, "alice/echo", calls [i].app_auth);
        if (got != calls [i].expect) {
            fprintf (stderr, "access call case %zu: got %d, expected %d\n", i, got, calls [i].expect);
            assert (false);
        }
    }

    //  Requests: caller × (app, submitter)
    const struct {
        const kiln_caller_t *who;
        const char *app;            //  NULL: no such request
        const char *caller;
        kiln_access_t expect;
    } requests [] = {
        { &open, NULL, NULL, KILN_ACCESS_ALLOW },
        { &root, "alice/echo", "bob", KILN_ACCESS_ALLOW },
        { &alice, "alice/echo", "bob", KILN_ACCESS_ALLOW },     //  the app's owner
        { &bob, "alice/echo", "bob", KILN_ACCESS_ALLOW },       //  the caller
        { &bob, "alice/echo", "carol", KILN_ACCESS_NOT_FOUND }, //  a third owner
        { &bob, "alice/echo", "alice", KILN_ACCESS_NOT_FOUND },
        { &bob, NULL, NULL, KILN_ACCESS_NOT_FOUND },
        { &bob, "alice/echo", "", KILN_ACCESS_ALLOW },          //  submitted without a key
        { &none, "alice/echo", "", KILN_ACCESS_ALLOW },
        { &none, "alice/echo", "alice", KILN_ACCESS_UNAUTHORIZED },
        { &none, NULL, NULL, KILN_ACCESS_NOT_FOUND },
        { &bob_admin, "alice/echo", "alice", KILN_ACCESS_NOT_FOUND },
        { &alice_admin, "alice/echo", "bob", KILN_ACCESS_ALLOW },
    };
    for (size_t i = 0; i < sizeof requests / sizeof requests [0]; i++) {
        kiln_access_t got = kiln_access_request (requests [i].who, requests [i].app,
                                                 requests [i].caller);
        if (got != requests [i].expect) {
            fprintf (stderr, "access request case %zu: got %d, expected %d\n",
                     i, got, requests [i].expect);
            assert (false);
        }
    }

    //  Management: caller × (owner, operator only)
    const struct {
        const kiln_caller_t *who;
        const char *owner;
        bool operator_only;
        kiln_access_t expect;
    } manages [] = {
        { &open, "alice", true, KILN_ACCESS_ALLOW },
        { &none, NULL, false, KILN_ACCESS_UNAUTHORIZED },
        { &alice, "alice", false, KILN_ACCESS_FORBIDDEN },      //  API scope
        { &alice, NULL, false, KILN_ACCESS_FORBIDDEN },
        { &alice_admin, "alice", false, KILN_ACCESS_ALLOW },
        { &alice_admin, NULL, false, KILN_ACCESS_ALLOW },
        { &alice_admin, "bob", false, KILN_ACCESS_NOT_FOUND },
        { &alice_admin, NULL, true, KILN_ACCESS_FORBIDDEN },    //  workers, metrics
        { &root, "bob", true, KILN_ACCESS_ALLOW },
        { &star_api, NULL, false, KILN_ACCESS_FORBIDDEN },
    };
    for (size_t i = 0; i < sizeof manages / sizeof manages [0]; i++) {
        kiln_access_t got = kiln_access_manage (manages [i].who, manages [i].owner,
                                                manages [i].operator_only);
        if (got != manages [i].expect) {
            fprintf (stderr, "access manage case %zu: got %d, expected %d\n",
                     i, got, manages [i].expect);
            assert (false);
        }
    }

    //  Loopback hosts
    assert (kiln_access_loopback ("127.0.0.1"));
    assert (kiln_access_loopback ("127.1.2.3"));
    assert (kiln_access_loopback ("::1"));
    assert (kiln_access_loopback ("[::1]"));
    assert (kiln_access_loopback ("localhost"));
    assert (!kiln_access_loopback ("0.0.0.0"));
    assert (!kiln_access_loopback ("::"));
    assert (!kiln_access_loopback ("10.0.0.1"));
    assert (!kiln_access_loopback ("128.0.0.1"));
    assert (!kiln_access_loopback ("127.0.0.1.evil.com"));
    assert (!kiln_access_loopback ("127.0.0.300"));
    assert (!kiln_access_loopback (""));
    assert (!kiln_access_loopback (NULL));

    if (verbose)
        printf ("OK\n");
}
