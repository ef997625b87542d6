/*  =========================================================================
    worker — the kiln-worker actor: one per host, starts and supervises
    runners when the broker asks

    See worker.c for the messages it takes and sends.
    =========================================================================
*/
#ifndef KILN_WORKER_H_INCLUDED
#define KILN_WORKER_H_INCLUDED

#include <stdbool.h>

typedef struct _kiln_worker_t kiln_worker_t;

//  What a worker needs to know; strings are copied by kiln_worker_new.
typedef struct {
    const char *id;                 //  routing identity and worker_id
    const char *broker_endpoint;
    const char *redis_url;          //  where artifacts are fetched from
    const char *state_dir;          //  artifact cache: {state_dir}/worker/artifacts
    const char *public_url;         //  base of file URLs, passed to runners
    const char *slots;              //  "GPU-H100=2,CPU=4", or NULL to detect
    const char *runner_path;        //  NULL: kiln-runner next to this executable
} kiln_worker_options_t;

//  Counts the slots, prepares the cache and connects to the broker. NULL
//  on failure, after logging why.
kiln_worker_t *kiln_worker_new (const kiln_worker_options_t *options);

//  Serves the broker until SIGINT or SIGTERM, then stops every runner
//  and says goodbye. Returns 0, or -1 when it could not run at all.
int kiln_worker_run (kiln_worker_t *self);

void kiln_worker_destroy (kiln_worker_t **self_p);

#endif
