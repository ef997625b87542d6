/*  =========================================================================
    gateway_scripts — the Lua scripts only the gateway runs

    The management API and /metrics read and change several keys at once;
    each does it in one script so it is atomic and one round trip. They
    belong with the others in shared/kiln_scripts once that header can
    change; until then they live here.

    KILN_GATEWAY_SCRIPT_SCALE — change an app's live scale overrides
      KEYS  app                                (kiln_key_app)
      ARGV  name, reset (0|1), then min_concurrency, max_concurrency,
            concurrency_buffer, keep_alive: each "" (leave as it is),
            "-" (drop the override) or a non-negative integer
      →     {-1} when the app is not deployed (nothing written);
            {-2, min, max} when the resulting effective min_concurrency
            would exceed max_concurrency (nothing written);
            else {1, then the app's KILN_GATEWAY_APP_FIELDS}. The overrides
            live in the app hash's `scale` field as JSON (with reset, the
            old ones are dropped first; with none left the field goes).
            Publishes the name on kiln:wake so the broker applies them.

    KILN_GATEWAY_SCRIPT_LIST_APPS — every deployed app, read in one step
      KEYS  apps                               (KILN_KEY_APPS)
      →     a flat array, KILN_GATEWAY_APP_FIELD_COUNT entries per app (in
            the order of KILN_GATEWAY_APP_FIELDS, nil for a missing field),
            sorted by name. Names whose hash is gone are skipped.

    KILN_GATEWAY_SCRIPT_METRICS — what /metrics shows, read in one step
      KEYS  apps, runners, workers             (KILN_KEY_APPS, _RUNNERS, _WORKERS)
      ARGV  queue key prefix, stats key prefix
      →     {apps, runners, workers}: apps is a flat array, three entries
            per deployed app (sorted by name): name, queue depth (ZCARD),
            the stats hash (HGETALL: a flat field, value array); runners
            and workers are the JSON values of their hashes (HVALS).
    =========================================================================
*/
#ifndef KILN_GATEWAY_SCRIPTS_H_INCLUDED
#define KILN_GATEWAY_SCRIPTS_H_INCLUDED

//  What an app answer is built from, in this order: HMGET arguments.
#define KILN_GATEWAY_APP_FIELDS \
    "name revision artifact manifest updated_ms scale failed_starts last_error last_error_ms"
#define KILN_GATEWAY_APP_FIELD_COUNT 9

//  Entries per app in KILN_GATEWAY_SCRIPT_METRICS's first array.
#define KILN_GATEWAY_METRICS_APP_FIELDS 3

extern const char *KILN_GATEWAY_SCRIPT_SCALE;
extern const char *KILN_GATEWAY_SCRIPT_LIST_APPS;
extern const char *KILN_GATEWAY_SCRIPT_METRICS;

#endif
