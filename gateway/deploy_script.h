/*  =========================================================================
    deploy_script — the Lua scripts that change the app registry

    Deploying and deleting an app touch the app's hash, the set of apps
    and the broker's wake channel together, so each is one script. They
    live with the gateway because only it runs them; they follow
    kiln_keys.h and could move to libkiln (kiln_scripts) as they are.

    KILN_SCRIPT_DEPLOY — a new revision of an app
      KEYS  app, apps, artifact             (kiln_key_app, KILN_KEY_APPS, kiln_key_artifact)
      ARGV  name, artifact sha256, manifest (compact JSON), now_ms
      →     -1 if the artifact is not stored (nothing written), else the
            new revision (1 for a first deploy). Publishes the name on
            kiln:wake so the broker sees the new revision.

    KILN_SCRIPT_UNDEPLOY — delete an app
      KEYS  app, apps
      ARGV  name
      →     0 if the app was not deployed, else 1. Publishes the name on
            kiln:wake (the broker retires its runners).

    KILN_SCRIPT_LIST_APPS — every deployed app, read in one step
      KEYS  apps
      ARGV  (none)
      →     a flat array, five entries per app: name, revision, artifact,
            manifest, updated_ms ("" for a missing field). Names in the set
            whose hash is gone are skipped.
    =========================================================================
*/
#ifndef KILN_DEPLOY_SCRIPT_H_INCLUDED
#define KILN_DEPLOY_SCRIPT_H_INCLUDED

#include <stdbool.h>

extern const char *KILN_SCRIPT_DEPLOY;
extern const char *KILN_SCRIPT_UNDEPLOY;
extern const char *KILN_SCRIPT_LIST_APPS;

//  Fields per app in KILN_SCRIPT_LIST_APPS's answer.
#define KILN_LIST_APPS_FIELDS 5

#endif
