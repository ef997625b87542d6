/*  =========================================================================
    kiln_redis — Redis URLs and connections

    redis://[:password@]host[:port][/db] (also redis://user:password@...).
    The broker and worker use the synchronous hiredis API through
    kiln_redis_connect; the gateway takes the parsed URL to open its async
    contexts on its event loop.
    =========================================================================
*/
#ifndef KILN_REDIS_H_INCLUDED
#define KILN_REDIS_H_INCLUDED

#include <hiredis/hiredis.h>
#include <stdbool.h>

typedef struct {
    char *host;
    int port;                       //  6379 when absent
    int db;                         //  0 when absent
    char *password;                 //  NULL when absent
} kiln_redis_url_t;

//  Parses a URL. NULL when malformed.
kiln_redis_url_t *kiln_redis_url_parse (const char *url);
void kiln_redis_url_destroy (kiln_redis_url_t **self_p);

//  Connects, authenticates, selects the db. NULL on failure, with a
//  logged reason. timeout_ms bounds the connect and every command.
redisContext *kiln_redis_connect (const char *url, int timeout_ms);

//  Sends AUTH / SELECT on a fresh connection when the URL asks for them.
//  0 or -1 (logged).
int kiln_redis_prepare (redisContext *ctx, const kiln_redis_url_t *url);

void kiln_redis_test (bool verbose);

#endif
