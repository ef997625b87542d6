/*  =========================================================================
    scale — the broker's placement and scaling decisions, as pure functions

    The broker actor (broker.c) owns the state and the sockets; every
    decision about how many runners an app should have, where a new one
    goes and when an idle one retires is made here, from plain numbers and
    arrays, so that it can be tested without ZeroMQ or Redis.

    The rules (docs/ARCHITECTURE.md, "Scaling rules"):
      - demand = queued + in progress;
      - target = clamp (ceil (demand / max_multiplexing) + concurrency_buffer,
                        min_concurrency, max_concurrency);
      - a new runner goes, for the first of the app's machine types that has
        one, to the worker with a free slot of that type and the fewest
        runners;
      - an idle runner retires after keep_alive s unless that takes the app
        below its target; an idle runner of an older revision, or one above
        max_concurrency, retires at once;
      - an operator's live override of the bounds (kiln apps scale) is
        applied over the manifest's, when it makes sense.
    =========================================================================
*/
#ifndef KILN_SCALE_H_INCLUDED
#define KILN_SCALE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  One machine type on one worker: how many slots it has, how many of
//  them hold a runner (in any state: a draining runner still holds its
//  slot until its process is gone).
typedef struct {
    const char *machine_type;
    int slots;
    int used;
} kiln_scale_slot_t;

//  A worker as placement sees it.
typedef struct {
    const char *id;
    const kiln_scale_slot_t *slots;
    size_t slot_count;
    int runners;                    //  runners on it, all machine types
} kiln_scale_worker_t;

//  How many runners an app should have for this demand. Bounds that make
//  no sense (max below min, max_multiplexing below 1) are read as the
//  nearest sensible value rather than trusted.
int kiln_scale_target (int demand, int max_multiplexing, int concurrency_buffer,
                       int min_concurrency, int max_concurrency);

//  Where to start a runner: returns the index of the chosen worker and
//  sets *type_index to the index (into machine_types) of the type it gets,
//  or returns -1 when no worker has a free slot of any of the types. Ties
//  on runner count go to the smaller worker id, so the choice is stable.
int kiln_scale_place (const char *const *machine_types, size_t type_count,
                      const kiln_scale_worker_t *workers, size_t worker_count,
                      size_t *type_index);

//  True when some worker has at least one slot (free or not) of one of
//  the machine types: requests may then wait for a slot; otherwise they
//  can never run and are failed at once.
bool kiln_scale_offered (const char *const *machine_types, size_t type_count,
                         const kiln_scale_worker_t *workers, size_t worker_count);

//  Whether an idle READY runner should be stopped now. idle_ms: time since
//  it became ready or last finished a request; current: it runs the app's
//  current revision; active: the app's runners not draining (this one
//  included); target: kiln_scale_target for the app now; max_concurrency:
//  the app's bound, which may have been lowered live: an idle runner above
//  it retires at once, keep_alive or not.
bool kiln_scale_retire (int64_t idle_ms, int keep_alive_s, bool current,
                        int active, int target, int max_concurrency);

//  The bounds an operator may change on a running app.
typedef struct {
    int min_concurrency;
    int max_concurrency;
    int concurrency_buffer;
    int keep_alive;                 //  seconds
} kiln_scale_bounds_t;

//  Applies a live override, the JSON object of the app record's `scale`
//  field: any of "min_concurrency", "max_concurrency",
//  "concurrency_buffer", "keep_alive" (other keys are ignored), over
//  *bounds. Each must be an integer, 0 to INT32_MAX; the result must have
//  max_concurrency >= 1 and min_concurrency <= max_concurrency. Returns 0;
//  or -1 with *error (caller frees), leaving *bounds as it was.
int kiln_scale_override (const char *json, kiln_scale_bounds_t *bounds, char **error);

//  The error text for requests that no worker can ever take:
//  "No worker offers machine type X" (plus " (of: A, B)" listing every
//  type the app accepts, when it accepts more than one). Caller frees.
//  NULL when out of memory.
char *kiln_scale_no_worker_error (const char *const *machine_types, size_t type_count);

void kiln_scale_test (bool verbose);

#endif
