/*  =========================================================================
    access — who may do what through the gateway, as pure functions

    The gateway (gateway_auth.c) finds out who calls — no key, a valid key
    of some owner and scope, or everyone when keys are off — and asks the
    functions below what to answer. They do no I/O, so the whole policy is
    table-tested in the selftest (kiln-selftest access). docs/SECURITY.md
    says the same in words.

    - The operator's key (scope ADMIN, owner "*") may do everything.
    - Calling an app (sync or queue submit): "public" → anyone, even
      without a key; "shared" → any valid key; "private" (the default) →
      keys of the app's owner. A key that may not call a private app, or
      any call to an app that does not exist, is 404 like an unknown app.
      No key where one is needed is 401 (so a call without a key cannot
      tell a private app from no app).
    - Reading or cancelling a request: the app's owner, the key that
      submitted it (its owner), and, for a request submitted without a
      key (to a public app), anyone who knows its id. Anyone else: 404,
      like a request that does not exist.
    - Managing (/v1): ADMIN scope (an API key → 403); an owner's ADMIN key
      sees only its owner's apps, requests, runners and keys (another
      owner's → 404); workers and /metrics are the operator's only (403).
    =========================================================================
*/
#ifndef KILN_ACCESS_H_INCLUDED
#define KILN_ACCESS_H_INCLUDED

#include "kiln_auth.h"
#include "kiln_keys.h"

#include <stdbool.h>

//  The operator's owner: it acts for every owner.
#define KILN_OWNER_ANY "*"

typedef enum {
    KILN_CALLER_ANONYMOUS = 0,      //  keys are required, none came
    KILN_CALLER_KEY,                //  a valid key
    KILN_CALLER_OPEN,               //  keys are off: everyone may do everything
} kiln_caller_kind_t;

//  Who calls. Filled by gateway_auth.c.
typedef struct {
    kiln_caller_kind_t kind;
    bool admin;                                 //  scope ADMIN
    char owner [KILN_NAME_MAX + 1];             //  the key's owner; "*": the operator
    char key_id [KILN_AUTH_ID_LEN + 1];
} kiln_caller_t;

typedef enum {
    KILN_ACCESS_ALLOW = 0,
    KILN_ACCESS_UNAUTHORIZED,       //  401: no key, where one is needed
    KILN_ACCESS_FORBIDDEN,          //  403: a valid key without the right (scope, operator)
    KILN_ACCESS_NOT_FOUND,          //  404: as if it did not exist
} kiln_access_t;

//  True for the operator's key, or when keys are off.
bool kiln_access_all (const kiln_caller_t *who);

//  True when who may act for owner: the operator, keys off, or a key of
//  that owner.
bool kiln_access_owns (const kiln_caller_t *who, const char *owner);

//  The owner part of "owner/app" into out (empty when there is none).
void kiln_access_owner_of (const char *app, char out [KILN_NAME_MAX + 1]);

//  Calling app (sync or queue submit). app_auth: the app's manifest's
//  app_auth, or NULL when the app is not deployed.
kiln_access_t kiln_access_call (const kiln_caller_t *who, const char *app, const char *app_auth);

//  Reading or cancelling a request of app submitted by caller (the
//  record's fields); app NULL when the request does not exist.
kiln_access_t kiln_access_request (const kiln_caller_t *who, const char *app, const char *caller);

//  The management API (/v1, /metrics). owner: whose thing it is (NULL
//  when the route names no owner's thing); operator_only: workers,
//  metrics.
kiln_access_t kiln_access_manage (const kiln_caller_t *who, const char *owner, bool operator_only);

//  Whether the gateway's listen host is loopback only (127.0.0.0/8, ::1,
//  localhost): then KILN_AUTH=auto means off.
bool kiln_access_loopback (const char *host);

void kiln_access_test (bool verbose);

#endif
