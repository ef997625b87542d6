/*  =========================================================================
    broker — kiln's dispatcher and autoscaler

    One zloop over the ROUTER socket that workers and runners connect to,
    a subscription to kiln:wake and a heartbeat timer. Requests live in
    Redis; the broker's own view (workers, runners, cached app records) is
    rebuilt from re-registration, so a broker killed and started again
    loses nothing. The messages it takes and sends are listed in broker.c.
    =========================================================================
*/
#ifndef KILN_BROKER_H_INCLUDED
#define KILN_BROKER_H_INCLUDED

#include "kiln_config.h"

typedef struct _kiln_broker_t kiln_broker_t;

//  Binds cfg->broker_endpoint and connects to cfg->redis_url (a Redis
//  that is down is retried from the timer, not fatal). cfg must outlive
//  the broker. NULL when the endpoint cannot be bound.
kiln_broker_t *kiln_broker_new (const kiln_config_t *cfg);

//  Frees the broker; nulls the pointer.
void kiln_broker_destroy (kiln_broker_t **self_p);

//  Runs until SIGINT or SIGTERM, then drains: no new dispatch, the
//  RESULTs of running requests recorded for a few seconds (or until none
//  runs; a second signal cuts it short), then tells every peer
//  DISCONNECT. What still runs keeps its lease for the next broker.
//  Returns 0.
int kiln_broker_run (kiln_broker_t *self);

#endif
