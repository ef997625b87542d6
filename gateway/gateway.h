/*  =========================================================================
    gateway — kiln's public HTTP API (the actor)

    One event loop (libevent) carries the HTTP server (evhttp) and two
    hiredis async connections: one for commands, one subscribed to this
    gateway's reply channel. The gateway holds nothing durable; any number
    of them can serve behind a load balancer. See gateway.c for the
    messages it takes and sends.
    =========================================================================
*/
#ifndef KILN_GATEWAY_H_INCLUDED
#define KILN_GATEWAY_H_INCLUDED

#include "kiln_config.h"

typedef struct _kiln_gateway_t kiln_gateway_t;

//  Binds cfg->http_addr (not answering yet: it starts answering once its
//  Redis subscription is confirmed) and starts connecting to Redis. cfg
//  must outlive the gateway. NULL on failure, logged.
kiln_gateway_t *kiln_gateway_new (kiln_config_t *cfg);

//  Runs until SIGINT or SIGTERM. 0 on a clean stop, -1 on failure.
int kiln_gateway_run (kiln_gateway_t *self);

void kiln_gateway_destroy (kiln_gateway_t **self_p);

#endif
