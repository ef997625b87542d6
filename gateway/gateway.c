/*  =========================================================================
    gateway — kiln's public HTTP API (the actor)

    One libevent loop: evhttp for clients, two hiredis async connections
    (commands; our reply channel) and a few timers. This file runs the
    loop, the Redis connections, the life of each call, sync and queue
    submits, files and health; gateway_v1.c, gateway_queue.c and
    gateway_metrics.c answer the management, queue and metrics routes.

    What it takes and what it sends:

    | takes                                       | sends                                    |
    |---------------------------------------------|------------------------------------------|
    | HTTP POST /{owner}/{app}[/{path}]           | EVAL SUBMIT (reply_to = kiln:answer:{id});|
    |                                             | the call waits in `pending`              |
    | HTTP POST /queue/{owner}/{app}[/{path}]     | EVAL SUBMIT (reply_to "", ?fal_webhook); |
    |                                             | 200 with URLs                            |
    | (either) X-Fal-Queue-Priority, X-Fal-       | SUBMIT's priority, start deadline (now + |
    | Request-Timeout, X-Fal-No-Retry headers     | S s) and no_retry; a bad value → 400     |
    | HTTP GET /queue/.../requests/{id}[/status…] | see gateway_queue.c                      |
    | HTTP PUT /queue/.../requests/{id}/cancel    | see gateway_queue.c                      |
    | HTTP GET /files/{id}                        | HMGET kiln:file:{id} → the file          |
    | HTTP /v1/...                                | see gateway_v1.c (secrets:               |
    |                                             | gateway_secrets.c)                       |
    | a path over KILN_ROUTE_RAW_PATH_MAX or a    | 414 uri_too_long (before anything else)  |
    | query over HTTP_MAX_QUERY_BYTES             |                                          |
    | (any route but /health) past the caller's   | 429 rate_limited + Retry-After, before   |
    | KILN_RATE_LIMIT_RPS (key id, else address)  | any Redis work (ratelimit.c)             |
    | (any route but /health) Authorization       | see gateway_auth.c: 401/403/404, or the  |
    |                                             | route's handler below                    |
    | HTTP GET /health                            | answered from memory                     |
    | HTTP GET /metrics                           | see gateway_metrics.c                    |
    | Redis: SUBMIT's answer                      | -1 → 404; {-3, limit} → 429 queue_full;  |
    |                                             | queue submits → 200                      |
    | Redis: "subscribe" on kiln:answer:{id}      | starts answering HTTP (listener on)      |
    | Redis: "message" on kiln:answer:{id}        | the answer it carries (a small result),  |
    |                                             | or HMGET kiln:req:{id} → the stored one  |
    |                                             | (504 request_timeout: + X-Fal-Request-   |
    |                                             | Timeout-Type: user)                      |
    | Redis: a connection lost or refused         | answers 503 until both connections are   |
    |                                             | back (backoff); sync calls already       |
    |                                             | submitted wait up to REDIS_OUTAGE_GRACE_ |
    |                                             | MS, then 503                             |
    | Redis: both connections back                | HMGET each waiting sync call's record:   |
    |                                             | answers those that completed meanwhile   |
    | client closes while its sync call waits     | forgets the call (it completes in Redis) |
    | SIGINT, SIGTERM                             | stops listening, 503 to new requests on  |
    |                                             | open connections, ends status streams,   |
    |                                             | waits for the sync calls in flight up to |
    |                                             | STOP_GRACE_MS (then 503), exit 0         |
    | a second SIGINT or SIGTERM                  | stops at once                            |
    =========================================================================
*/
//  Before libevent's headers, which define TAILQ_* only when missing
#include <sys/queue.h>

#include "gateway_internal.h"
#include "inputs.h"
#include "kiln_auth.h"
#include "kiln_scripts.h"
#include "ratelimit.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <hiredis/adapters/libevent.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

//  Backoff between Redis connection attempts.
#define REDIS_RECONNECT_MIN_MS 100
#define REDIS_RECONNECT_MAX_MS 2000
//  evhttp refuses bodies past this many times KILN_MAX_BODY_BYTES with its
//  own (HTML) 413; below that we check the limit and answer in JSON.
#define HTTP_BODY_CAP_FACTOR 4
#define HTTP_MAX_HEADERS_BYTES (64 * 1024)
//  Longest query string we take (414 uri_too_long beyond; a path over
//  KILN_ROUTE_RAW_PATH_MAX is 414 too). Room for a fal_webhook URL.
#define HTTP_MAX_QUERY_BYTES 4096
//  Most callers the rate limiter remembers at once (KILN_RATE_LIMIT_RPS).
#define RATE_LIMIT_MAX_KEYS 10000
//  A client silent this long while we read its request (or between its
//  keep-alive requests) is dropped. evhttp stops reading once a request is
//  in, so a sync call may wait for its answer far longer than this.
#define HTTP_IDLE_TIMEOUT_S 120
//  Time given to answers in flight to go out after a stop signal.
#define STOP_FLUSH_MS 200
//  How long a stop signal lets the sync calls in flight finish before they
//  get a 503 (KILN_GATEWAY_STOP_GRACE_MS overrides it): under the 5 s that
//  `kiln up` and most supervisors give a process before SIGKILL.
#define STOP_GRACE_MS 4000
//  How long a sync call already submitted keeps waiting for Redis to come
//  back before it gets a 503: a restart of Redis should not fail them.
#define REDIS_OUTAGE_GRACE_MS 5000

static void s_redis_connect (kiln_gateway_t *self);
static void s_redis_lost (kiln_gateway_t *self, const char *reason);
static void s_on_http (struct evhttp_request *req, void *arg);
static void s_on_signal (evutil_socket_t fd, short what, void *arg);
static void s_on_reconnect (evutil_socket_t fd, short what, void *arg);
static void s_on_cmd_flush (evutil_socket_t fd, short what, void *arg);
static void s_fail_pending (kiln_gateway_t *self, const char *detail);
static void s_hold_pending (kiln_gateway_t *self, int grace_ms);
static void s_recheck_pending (kiln_gateway_t *self);
static void s_end_streams (kiln_gateway_t *self);


//  --------------------------------------------------------------------------
//  Construction

//  With epoll, a changelist folds the add/delete pairs of one loop turn
//  (hiredis's adapter adds and removes its write event around every
//  command) into at most one epoll_ctl per fd. Safe here: the gateway
//  never dup()s a descriptor it has registered.
static struct event_base *
s_event_base_new (void)
{
    struct event_config *config = event_config_new ();
    if (!config)
        return NULL;
    event_config_set_flag (config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config (config);
    event_config_free (config);
    return base;
}

kiln_gateway_t *
kiln_gateway_new (kiln_config_t *cfg)
{
    kiln_gateway_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg = cfg;
    self->reconnect_delay_ms = REDIS_RECONNECT_MIN_MS;
    kiln_uuid4 (self->id);
    self->channel = kiln_key_reply_channel (self->id);
    self->pending = zhashx_new ();
    self->streams = zlistx_new ();
    self->redis_url = kiln_redis_url_parse (cfg->redis_url);
    if (!self->redis_url) {
        kiln_log_error ("not a Redis URL: '%s'", cfg->redis_url);
        kiln_gateway_destroy (&self);
        return NULL;
    }
    self->base = s_event_base_new ();
    self->http = self->base ? evhttp_new (self->base) : NULL;
    if (!self->pending || !self->streams || !self->http) {
        kiln_log_error ("cannot set up the event loop");
        kiln_gateway_destroy (&self);
        return NULL;
    }
    evhttp_set_gencb (self->http, s_on_http, self);
    //  Every method reaches the router, which answers 405 in JSON
    evhttp_set_allowed_methods (self->http,
        EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT
      | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE
      | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_default_content_type (self->http, NULL);
    size_t cap = cfg->max_body_bytes;
    if (cap > (size_t) INT64_MAX / HTTP_BODY_CAP_FACTOR)
        cap = (size_t) INT64_MAX / HTTP_BODY_CAP_FACTOR;
    evhttp_set_max_body_size (self->http, (ev_ssize_t) (cap * HTTP_BODY_CAP_FACTOR));
    evhttp_set_max_headers_size (self->http, HTTP_MAX_HEADERS_BYTES);
    evhttp_set_timeout (self->http, HTTP_IDLE_TIMEOUT_S);
    //  A body over evhttp's cap is drained before the close, so the client
    //  reads the 413 instead of a reset
    evhttp_set_flags (self->http, EVHTTP_SERVER_LINGERING_CLOSE);

    char *host = NULL;
    int port = 0;
    if (kiln_config_split_addr (cfg->http_addr, &host, &port) != 0) {
        kiln_log_error ("not a HOST:PORT address: '%s'", cfg->http_addr);
        kiln_gateway_destroy (&self);
        return NULL;
    }
    self->bound = evhttp_bind_socket_with_handle (self->http, host, (ev_uint16_t) port);
    free (host);
    if (!self->bound) {
        kiln_log_error ("cannot listen on %s: %s", cfg->http_addr, strerror (errno));
        kiln_gateway_destroy (&self);
        return NULL;
    }
    //  Bound now (so a busy port fails at once) but silent until the reply
    //  channel is subscribed: connections wait in the backlog meanwhile
    evconnlistener_disable (evhttp_bound_socket_get_listener (self->bound));
    if (kiln_gateway_auth_setup (self) != 0) {
        kiln_gateway_destroy (&self);
        return NULL;
    }
    if (cfg->rate_limit_rps > 0) {
        self->ratelimit = kiln_ratelimit_new (cfg->rate_limit_rps, cfg->rate_limit_burst,
                                              RATE_LIMIT_MAX_KEYS);
        if (!self->ratelimit) {
            kiln_gateway_destroy (&self);
            return NULL;
        }
        kiln_log_info ("rate limit: %d requests/s per key or client, burst %d",
                       cfg->rate_limit_rps,
                       cfg->rate_limit_burst ? cfg->rate_limit_burst : cfg->rate_limit_rps);
    }

    self->sigint = evsignal_new (self->base, SIGINT, s_on_signal, self);
    self->sigterm = evsignal_new (self->base, SIGTERM, s_on_signal, self);
    self->reconnect_timer = evtimer_new (self->base, s_on_reconnect, self);
    self->cmd_flush = event_new (self->base, -1, 0, s_on_cmd_flush, self);
    if (!self->sigint || !self->sigterm || !self->reconnect_timer || !self->cmd_flush
    ||  event_add (self->sigint, NULL) || event_add (self->sigterm, NULL)) {
        kiln_log_error ("cannot set up the event loop");
        kiln_gateway_destroy (&self);
        return NULL;
    }
    s_redis_connect (self);
    return self;
}

int
kiln_gateway_run (kiln_gateway_t *self)
{
    kiln_log_info ("gateway %s starting: HTTP %s, Redis %s:%d, public URL %s",
                   self->id, self->cfg->http_addr, self->redis_url->host,
                   self->redis_url->port, self->cfg->public_url);
    int rc = event_base_dispatch (self->base);
    kiln_log_info ("gateway %s stopped", self->id);
    return rc < 0 ? -1 : 0;
}

void
kiln_gateway_destroy (kiln_gateway_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_gateway_t *self = *self_p;
    self->stopping = true;
    s_fail_pending (self, "The gateway is shutting down");
    s_end_streams (self);
    //  Closing the connections runs their close callbacks, which let go of
    //  the calls; freeing the Redis contexts then runs the last callbacks
    //  (with no reply) of any command still in flight
    if (self->http)
        evhttp_free (self->http);
    redisAsyncContext *ctx;
    if ((ctx = self->cmd)) {
        self->cmd = NULL;
        redisAsyncFree (ctx);
    }
    if ((ctx = self->sub)) {
        self->sub = NULL;
        redisAsyncFree (ctx);
    }
    zhashx_destroy (&self->pending);
    zlistx_destroy (&self->streams);
    if (self->sigint)
        event_free (self->sigint);
    if (self->sigterm)
        event_free (self->sigterm);
    if (self->reconnect_timer)
        event_free (self->reconnect_timer);
    if (self->cmd_flush)
        event_free (self->cmd_flush);
    if (self->base)
        event_base_free (self->base);
    kiln_redis_url_destroy (&self->redis_url);
    kiln_gateway_auth_destroy (self);
    kiln_ratelimit_destroy (&self->ratelimit);
    free (self);
    *self_p = NULL;
}


//  --------------------------------------------------------------------------
//  Redis connections

static void
s_check_up (kiln_gateway_t *self)
{
    if (self->redis_up || !self->cmd_ready || !self->sub_ready)
        return;
    self->redis_up = true;
    self->down_logged = false;
    self->reconnect_delay_ms = REDIS_RECONNECT_MIN_MS;
    kiln_log_info ("connected to Redis at %s:%d; waiting for results on %s",
                   self->redis_url->host, self->redis_url->port, self->channel.s);
    if (!self->listening && !self->stopping) {
        struct evconnlistener *listener = evhttp_bound_socket_get_listener (self->bound);
        evconnlistener_enable (listener);
        self->listening = true;
        //  The port as bound: the address may have asked for port 0
        struct sockaddr_storage addr;
        socklen_t addr_len = sizeof addr;
        char host [INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (getsockname (evconnlistener_get_fd (listener),
                         (struct sockaddr *) &addr, &addr_len) == 0) {
            if (addr.ss_family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &addr;
                inet_ntop (AF_INET6, &in6->sin6_addr, host, sizeof host);
                port = ntohs (in6->sin6_port);
            }
            else {
                struct sockaddr_in *in4 = (struct sockaddr_in *) &addr;
                inet_ntop (AF_INET, &in4->sin_addr, host, sizeof host);
                port = ntohs (in4->sin_port);
            }
        }
        kiln_log_info ("listening on %s port %d", host, port);
    }
    //  Completions published while we were away were not heard
    s_recheck_pending (self);
}

//  A context hiredis is about to free: forget it. True if it was ours.
static bool
s_context_gone (kiln_gateway_t *self, const redisAsyncContext *ctx)
{
    if (ctx && ctx == self->cmd) {
        self->cmd = NULL;
        return true;
    }
    if (ctx && ctx == self->sub) {
        self->sub = NULL;
        return true;
    }
    return false;
}

static void
s_on_redis_connect (const redisAsyncContext *ctx, int status)
{
    kiln_gateway_t *self = ctx->data;
    if (status == REDIS_OK) {
        //  Notices a Redis that vanished without closing the connection
        redisEnableKeepAlive ((redisContext *) &ctx->c);
        return;
    }
    //  hiredis frees the context after this callback
    if (s_context_gone (self, ctx))
        s_redis_lost (self, ctx->errstr);
}

static void
s_on_redis_disconnect (const redisAsyncContext *ctx, int status)
{
    (void) status;
    kiln_gateway_t *self = ctx->data;
    if (s_context_gone (self, ctx))
        s_redis_lost (self, ctx->err ? ctx->errstr : "connection closed");
}

//  Answer to AUTH or SELECT on a fresh connection.
static void
s_on_redis_setup (redisAsyncContext *ctx, void *r, void *privdata)
{
    kiln_gateway_t *self = privdata;
    redisReply *reply = r;
    if (reply && reply->type == REDIS_REPLY_ERROR
    &&  (ctx == self->cmd || ctx == self->sub)) {
        kiln_log_error ("Redis refused the connection setup: %s", reply->str);
        s_redis_lost (self, reply->str);
    }
}

//  Answer to the PING that follows the command connection's setup.
static void
s_on_redis_ping (redisAsyncContext *ctx, void *r, void *privdata)
{
    kiln_gateway_t *self = privdata;
    redisReply *reply = r;
    if (!reply || ctx != self->cmd)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        s_redis_lost (self, reply->str);
        return;
    }
    self->cmd_ready = true;
    s_check_up (self);
}

static void s_on_channel (redisAsyncContext *ctx, void *r, void *privdata);

static redisAsyncContext *
s_redis_open (kiln_gateway_t *self, bool subscriber)
{
    const kiln_redis_url_t *url = self->redis_url;
    redisAsyncContext *ctx = redisAsyncConnect (url->host, url->port);
    if (!ctx)
        return NULL;
    if (ctx->err) {
        if (!self->down_logged)
            kiln_log_warn ("cannot connect to Redis at %s:%d: %s",
                           url->host, url->port, ctx->errstr);
        redisAsyncFree (ctx);
        return NULL;
    }
    ctx->data = self;
    if (redisLibeventAttach (ctx, self->base) != REDIS_OK) {
        redisAsyncFree (ctx);
        return NULL;
    }
    redisAsyncSetConnectCallback (ctx, s_on_redis_connect);
    redisAsyncSetDisconnectCallback (ctx, s_on_redis_disconnect);
    //  Commands queue up until the connection is made, in order
    if (url->password && url->user)
        redisAsyncCommand (ctx, s_on_redis_setup, self, "AUTH %s %s", url->user, url->password);
    else
    if (url->password)
        redisAsyncCommand (ctx, s_on_redis_setup, self, "AUTH %s", url->password);
    if (subscriber)
        redisAsyncCommand (ctx, s_on_channel, self, "SUBSCRIBE %s", self->channel.s);
    else {
        if (url->db)
            redisAsyncCommand (ctx, s_on_redis_setup, self, "SELECT %d", url->db);
        redisAsyncCommand (ctx, s_on_redis_ping, self, "PING");
    }
    return ctx;
}

static void
s_redis_connect (kiln_gateway_t *self)
{
    self->cmd_ready = false;
    self->sub_ready = false;
    self->cmd = s_redis_open (self, false);
    self->sub = self->cmd ? s_redis_open (self, true) : NULL;
    if (!self->cmd || !self->sub)
        s_redis_lost (self, "cannot connect");
}

//  Either connection failed: drop both, fail the sync calls that wait
//  (their answer would come on a channel we no longer hear), try again
//  later. Safe to call again while it runs (freeing a context runs its
//  callbacks).
static void
s_redis_lost (kiln_gateway_t *self, const char *reason)
{
    bool was_up = self->redis_up;
    self->redis_up = false;
    self->cmd_ready = false;
    self->sub_ready = false;
    redisAsyncContext *ctx;
    if ((ctx = self->cmd)) {
        self->cmd = NULL;
        redisAsyncFree (ctx);
    }
    if ((ctx = self->sub)) {
        self->sub = NULL;
        redisAsyncFree (ctx);
    }
    if (was_up)
        kiln_log_warn ("lost Redis (%s): answering 503 until it is back; %zu sync "
                       "call(s) in flight wait up to %d ms for it", reason,
                       zhashx_size (self->pending), REDIS_OUTAGE_GRACE_MS);
    else
    if (!self->down_logged && !self->stopping)
        kiln_log_warn ("Redis at %s:%d is unavailable (%s); retrying",
                       self->redis_url->host, self->redis_url->port, reason);
    self->down_logged = true;
    if (self->stopping)
        s_fail_pending (self, "Redis is unavailable");
    else
        s_hold_pending (self, REDIS_OUTAGE_GRACE_MS);
    if (self->stopping || evtimer_pending (self->reconnect_timer, NULL))
        return;
    if (was_up)
        self->reconnect_delay_ms = REDIS_RECONNECT_MIN_MS;
    struct timeval delay = {
        self->reconnect_delay_ms / 1000, (self->reconnect_delay_ms % 1000) * 1000
    };
    evtimer_add (self->reconnect_timer, &delay);
    self->reconnect_delay_ms *= 2;
    if (self->reconnect_delay_ms > REDIS_RECONNECT_MAX_MS)
        self->reconnect_delay_ms = REDIS_RECONNECT_MAX_MS;
}

static void
s_on_reconnect (evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    kiln_gateway_t *self = arg;
    if (self->stopping || self->cmd || self->sub)
        return;
    self->redis_reconnects++;
    kiln_log_debug ("connecting to Redis at %s:%d", self->redis_url->host, self->redis_url->port);
    s_redis_connect (self);
}

//  What the write event would do, this turn (s_cmd_flush). Not from
//  within a callback of the connection: a write error frees it.
static void
s_on_cmd_flush (evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    kiln_gateway_t *self = arg;
    if (self->cmd && (self->cmd->c.flags & (REDIS_CONNECTED | REDIS_IN_CALLBACK)) == REDIS_CONNECTED)
        redisAsyncHandleWrite (self->cmd);
}

static void
s_fail_pending (kiln_gateway_t *self, const char *detail)
{
    if (!self->pending)
        return;
    kiln_call_t *call;
    while ((call = zhashx_first (self->pending))) {
        zhashx_delete (self->pending, call->request_id);
        call->pending = false;
        kiln_call_error (call, 503, "internal_error", "%s", detail);
    }
}

//  A sync call waited too long for Redis to come back, or for its result
//  while the gateway stops.
static void
s_on_pending_timeout (evutil_socket_t fd, short what, void *arg)
{
    (void) fd;
    (void) what;
    kiln_call_t *call = arg;
    kiln_gateway_t *self = call->gw;
    if (!call->pending)
        return;
    zhashx_delete (self->pending, call->request_id);
    call->pending = false;
    if (self->stopping)
        kiln_call_error (call, 503, "internal_error",
                         "The gateway is shutting down; request %s goes on, "
                         "its result is at the queue API", call->request_id);
    else
        kiln_call_error (call, 503, "internal_error",
                         "Redis is unavailable; request %s was accepted and goes on, "
                         "its result is at the queue API once Redis is back",
                         call->request_id);
}

//  A waiting sync call gets grace_ms more (from now) before a 503; one
//  already on a clock keeps the earlier one unless we are stopping.
static void
s_hold_call (kiln_call_t *call, int grace_ms)
{
    kiln_gateway_t *self = call->gw;
    struct timeval grace = { grace_ms / 1000, (grace_ms % 1000) * 1000 };
    if (!call->timer)
        call->timer = evtimer_new (self->base, s_on_pending_timeout, call);
    //  Out of memory: it waits without a clock (answered on the recheck,
    //  or at the stop)
    if (call->timer
    &&  (self->stopping || !evtimer_pending (call->timer, NULL)))
        evtimer_add (call->timer, &grace);
}

static void
s_hold_pending (kiln_gateway_t *self, int grace_ms)
{
    if (!self->pending)
        return;
    for (kiln_call_t *call = zhashx_first (self->pending); call;
         call = zhashx_next (self->pending))
        s_hold_call (call, grace_ms);
}

//  A sync call whose command got no reply (the connection went): it waits
//  for Redis like the others and is checked again once Redis is back.
static bool
s_hold_if_lost (kiln_call_t *call, redisReply *reply)
{
    kiln_gateway_t *self = call->gw;
    if (reply || !call->req || self->stopping || call->route.kind != KILN_ROUTE_SYNC)
        return false;
    if (!call->pending) {
        zhashx_insert (self->pending, call->request_id, call);
        call->pending = true;
    }
    s_hold_call (call, REDIS_OUTAGE_GRACE_MS);
    return true;
}

//  The record of a sync call that waited through a Redis outage: state,
//  then what kiln_gateway_replay takes.
static void
s_on_recheck (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (s_hold_if_lost (call, reply))
        ;
    else
    if (call->pending && kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else {
            const char *state = kiln_reply_str (reply->element [0]);
            if (strcmp (state, "COMPLETED") == 0) {
                zhashx_delete (call->gw->pending, call->request_id);
                call->pending = false;
                kiln_gateway_replay (call, reply->element + 1);
            }
            else
            if (!*state)
                //  Redis came back without it: its last writes were lost
                kiln_call_error (call, 503, "internal_error",
                                 "Redis restarted without request %s; please retry",
                                 call->request_id);
            //  Otherwise it still runs: its completion will come on the channel
        }
    }
    kiln_call_unref (&call);
}

static void
s_recheck_pending (kiln_gateway_t *self)
{
    if (!self->pending || zhashx_size (self->pending) == 0)
        return;
    //  Copied first: answering a call takes it out of the table
    zlistx_t *calls = zlistx_new ();
    if (!calls)
        return;
    for (kiln_call_t *call = zhashx_first (self->pending); call;
         call = zhashx_next (self->pending))
        zlistx_add_end (calls, call);
    for (kiln_call_t *call = zlistx_first (calls); call; call = zlistx_next (calls)) {
        if (call->timer && !self->stopping)
            evtimer_del (call->timer);
        kiln_key_t key = kiln_key_request (call->request_id);
        kiln_call_redisf (call, s_on_recheck,
                          "HMGET %s state status result_content_type result_body error error_type",
                          key.s);
    }
    zlistx_destroy (&calls);
}

//  Status streams end cleanly (the last chunk) rather than being cut.
static void
s_end_streams (kiln_gateway_t *self)
{
    if (!self->streams)
        return;
    kiln_call_t *call;
    while ((call = zlistx_first (self->streams))) {
        zlistx_delete (self->streams, call->stream_handle);
        call->stream_handle = NULL;
        kiln_call_stream_end (call);
    }
}


//  --------------------------------------------------------------------------
//  Calls

static const char *
s_method_name (enum evhttp_cmd_type type)
{
    switch (type) {
        case EVHTTP_REQ_GET:     return "GET";
        case EVHTTP_REQ_POST:    return "POST";
        case EVHTTP_REQ_HEAD:    return "HEAD";
        case EVHTTP_REQ_PUT:     return "PUT";
        case EVHTTP_REQ_DELETE:  return "DELETE";
        case EVHTTP_REQ_OPTIONS: return "OPTIONS";
        case EVHTTP_REQ_TRACE:   return "TRACE";
        case EVHTTP_REQ_CONNECT: return "CONNECT";
        case EVHTTP_REQ_PATCH:   return "PATCH";
    }
    return "UNKNOWN";
}

static const char *
s_reason (int status)
{
    switch (status) {
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 410: return "Gone";
        case 413: return "Payload Too Large";
        case 414: return "URI Too Long";
        case 415: return "Unsupported Media Type";
        case 418: return "I'm a teapot";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 499: return "Client Closed Request";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
    }
    if (status < 300)
        return "OK";
    if (status < 400)
        return "Redirect";
    if (status < 500)
        return "Client Error";
    return "Server Error";
}

static void s_on_close (struct evhttp_connection *evcon, void *arg);

static kiln_call_t *
s_call_new (kiln_gateway_t *self, struct evhttp_request *req)
{
    kiln_call_t *call = calloc (1, sizeof *call);
    if (!call)
        return NULL;
    call->gw = self;
    call->req = req;
    //  One for the HTTP side, one for the handler that runs now
    call->refs = 2;
    call->started_ms = kiln_mono_ms ();
    call->method = s_method_name (evhttp_request_get_command (req));
    struct evhttp_connection *evcon = evhttp_request_get_connection (req);
    if (evcon)
        evhttp_connection_set_closecb (evcon, s_on_close, call);
    return call;
}

void
kiln_call_ref (kiln_call_t *call)
{
    call->refs++;
}

void
kiln_call_unref (kiln_call_t **call_p)
{
    kiln_call_t *call = *call_p;
    *call_p = NULL;
    if (!call || --call->refs > 0)
        return;
    if (call->watch)
        event_free (call->watch);
    if (call->timer)
        event_free (call->timer);
    free (call->last_event);
    free (call);
}

//  The HTTP side is done (answered, or the client went away): stop
//  everything that could still touch the request.
static struct evhttp_request *
s_call_detach (kiln_call_t *call)
{
    struct evhttp_request *req = call->req;
    call->req = NULL;
    if (call->watch) {
        event_free (call->watch);
        call->watch = NULL;
    }
    if (call->timer) {
        event_free (call->timer);
        call->timer = NULL;
    }
    if (call->pending) {
        zhashx_delete (call->gw->pending, call->request_id);
        call->pending = false;
    }
    if (call->gw->stopping && call->gw->pending && zhashx_size (call->gw->pending) == 0) {
        //  The last sync call in flight is answered: we may go
        struct timeval flush = { 0, STOP_FLUSH_MS * 1000 };
        event_base_loopexit (call->gw->base, &flush);
    }
    if (call->stream_handle) {
        zlistx_delete (call->gw->streams, call->stream_handle);
        call->stream_handle = NULL;
    }
    struct evhttp_connection *evcon = req ? evhttp_request_get_connection (req) : NULL;
    if (evcon)
        evhttp_connection_set_closecb (evcon, NULL, NULL);
    return req;
}

static void
s_count (kiln_call_t *call, struct evhttp_request *req, int status)
{
    kiln_gateway_t *self = call->gw;
    if (status >= 0 && status <= KILN_STATUS_MAX)
        self->answered [status]++;
    kiln_log_debug ("%s %s → %d (%" PRId64 " ms)", call->method,
                    evhttp_request_get_uri (req), status, kiln_mono_ms () - call->started_ms);
}

//  The client's connection closed before its answer.
static void
s_on_close (struct evhttp_connection *evcon, void *arg)
{
    kiln_call_t *call = arg;
    evhttp_connection_set_closecb (evcon, NULL, NULL);
    if (!call->req)
        return;
    kiln_log_debug ("client went away before the answer to %s %s%s%s", call->method,
                    evhttp_request_get_uri (call->req),
                    call->request_id [0] ? ", request " : "", call->request_id);
    struct evhttp_request *req = s_call_detach (call);
    //  On a network error evhttp unhooks a request not yet answered from
    //  its connection and leaves it to us; otherwise it frees it with the
    //  connection
    if (!evhttp_request_get_connection (req))
        evhttp_request_free (req);
    call->gw->clients_gone++;
    kiln_call_unref (&call);
}

static void
s_on_client_readable (evutil_socket_t fd, short what, void *arg)
{
    (void) what;
    kiln_call_t *call = arg;
    char byte;
    ssize_t size = recv (fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (size > 0) {
        //  A pipelined request: evhttp reads it after our answer. We can
        //  no longer tell a close from data, so stop watching.
        event_del (call->watch);
        return;
    }
    if (size < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    //  EOF or reset: the client is gone. Freeing the connection runs
    //  s_on_close, which lets go of the call.
    struct evhttp_connection *evcon = call->req ? evhttp_request_get_connection (call->req) : NULL;
    if (evcon)
        evhttp_connection_free (evcon);
}

void
kiln_call_watch_client (kiln_call_t *call)
{
    if (!call->req || call->watch)
        return;
    struct evhttp_connection *evcon = evhttp_request_get_connection (call->req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent (evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd (bev) : -1;
    if (fd < 0)
        return;
    call->watch = event_new (call->gw->base, fd, EV_READ | EV_PERSIST, s_on_client_readable, call);
    if (call->watch)
        event_add (call->watch, NULL);
}

void
kiln_call_header (kiln_call_t *call, const char *name, const char *value)
{
    if (call->req && value)
        //  evhttp refuses values with line breaks: such a header is dropped
        evhttp_add_header (evhttp_request_get_output_headers (call->req), name, value);
}

void
kiln_call_reply (kiln_call_t *call, int status, const char *content_type,
                 const void *body, size_t size)
{
    if (!call->req)
        return;
    if (call->streaming) {
        kiln_call_stream_end (call);
        return;
    }
    struct evkeyvalq *headers = evhttp_request_get_output_headers (call->req);
    if (content_type && *content_type
    &&  evhttp_add_header (headers, "Content-Type", content_type) != 0)
        evhttp_add_header (headers, "Content-Type", "application/octet-stream");
    if (call->request_id [0])
        evhttp_add_header (headers, "x-fal-request-id", call->request_id);
    struct evbuffer *buffer = evbuffer_new ();
    if (buffer && size > 0)
        evbuffer_add (buffer, body, size);
    struct evhttp_request *req = s_call_detach (call);
    s_count (call, req, status);
    evhttp_send_reply (req, status, s_reason (status), buffer);
    if (buffer)
        evbuffer_free (buffer);
    kiln_call_unref (&call);
}

void
kiln_call_reply_json (kiln_call_t *call, int status, json_t *json)
{
    char *text = json ? json_dumps (json, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION (9)) : NULL;
    json_decref (json);
    if (!text) {
        const char *fallback = "{\"detail\":\"Out of memory\",\"error_type\":\"internal_error\"}";
        kiln_call_reply (call, 500, "application/json", fallback, strlen (fallback));
        return;
    }
    kiln_call_reply (call, status, "application/json", text, strlen (text));
    free (text);
}

void
kiln_call_error (kiln_call_t *call, int status, const char *error_type, const char *format, ...)
{
    if (!call->req)
        return;
    char detail [1024];
    va_list args;
    va_start (args, format);
    vsnprintf (detail, sizeof detail, format, args);
    va_end (args);
    json_t *json = json_object ();
    if (json) {
        json_object_set_new (json, "detail", kiln_json_text (detail, strlen (detail)));
        json_object_set_new (json, "error_type", json_string (error_type));
    }
    kiln_call_reply_json (call, status, json);
}

void
kiln_call_stream_start (kiln_call_t *call, const char *content_type)
{
    if (!call->req || call->streaming)
        return;
    kiln_call_header (call, "Content-Type", content_type);
    kiln_call_header (call, "Cache-Control", "no-cache");
    if (call->request_id [0])
        kiln_call_header (call, "x-fal-request-id", call->request_id);
    call->streaming = true;
    call->stream_handle = zlistx_add_end (call->gw->streams, call);
    s_count (call, call->req, 200);
    evhttp_send_reply_start (call->req, 200, "OK");
}

void
kiln_call_stream_send (kiln_call_t *call, const char *data, size_t size)
{
    if (!call->req || !call->streaming)
        return;
    struct evbuffer *buffer = evbuffer_new ();
    if (!buffer)
        return;
    evbuffer_add (buffer, data, size);
    evhttp_send_reply_chunk (call->req, buffer);
    evbuffer_free (buffer);
}

void
kiln_call_stream_end (kiln_call_t *call)
{
    if (!call->req || !call->streaming)
        return;
    struct evhttp_request *req = s_call_detach (call);
    evhttp_send_reply_end (req);
    kiln_call_unref (&call);
}

const char *
kiln_call_body (kiln_call_t *call, size_t *size)
{
    *size = 0;
    if (!call->req)
        return "";
    struct evbuffer *input = evhttp_request_get_input_buffer (call->req);
    size_t length = input ? evbuffer_get_length (input) : 0;
    if (length == 0)
        return "";
    const char *data = (const char *) evbuffer_pullup (input, -1);
    if (!data)
        return "";
    *size = length;
    return data;
}

const char *
kiln_call_request_header (kiln_call_t *call, const char *name)
{
    if (!call->req)
        return NULL;
    return evhttp_find_header (evhttp_request_get_input_headers (call->req), name);
}

char *
kiln_call_query (kiln_call_t *call, const char *name)
{
    if (!call->req)
        return NULL;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri (call->req);
    const char *query = uri ? evhttp_uri_get_query (uri) : NULL;
    if (!query)
        return NULL;
    struct evkeyvalq params;
    TAILQ_INIT (&params);
    char *value = NULL;
    if (evhttp_parse_query_str (query, &params) == 0) {
        const char *found = evhttp_find_header (&params, name);
        if (found)
            value = strdup (found);
    }
    evhttp_clear_headers (&params);
    return value;
}

bool
kiln_call_body_fits (kiln_call_t *call)
{
    size_t size;
    kiln_call_body (call, &size);
    size_t limit = call->gw->cfg->max_body_bytes;
    if (size <= limit)
        return true;
    kiln_call_error (call, 413, "payload_too_large",
                     "Request body is %zu bytes; the limit is %zu bytes", size, limit);
    return false;
}

//  A script call in flight as EVALSHA: its EVAL form, sent if Redis
//  answers NOSCRIPT (a restart or SCRIPT FLUSH lost its script cache).
typedef struct {
    redisCallbackFn *fn;
    void *privdata;
    char *cmd;
    size_t len;
} s_script_call_t;

static void
s_on_script_reply (redisAsyncContext *ac, void *reply, void *privdata)
{
    s_script_call_t *script = privdata;
    if (kiln_redis_noscript (reply)
    &&  !(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))
    &&  redisAsyncFormattedCommand (ac, script->fn, script->privdata,
                                    script->cmd, script->len) == REDIS_OK)
        ;                           //  its callback gets the EVAL's reply
    else
        script->fn (ac, reply, script->privdata);
    free (script->cmd);
    free (script);
}

//  Sends a formatted command, which it frees; an EVAL goes as EVALSHA so
//  Redis need not receive and hash the script's text each time.
static int
s_send_formatted (redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                  char *cmd, int len)
{
    if (len < 0)
        return REDIS_ERR;
    char *evalsha;
    size_t evalsha_len;
    s_script_call_t *script = NULL;
    if (kiln_redis_evalsha_format (cmd, (size_t) len, &evalsha, &evalsha_len) == 0) {
        script = malloc (sizeof *script);
        if (script) {
            *script = (s_script_call_t) { fn, privdata, cmd, (size_t) len };
            int rc = redisAsyncFormattedCommand (ac, s_on_script_reply, script,
                                                 evalsha, evalsha_len);
            free (evalsha);
            if (rc != REDIS_OK) {
                free (script);
                free (cmd);
            }
            return rc;
        }
        free (evalsha);
    }
    int rc = redisAsyncFormattedCommand (ac, fn, privdata, cmd, (size_t) len);
    free (cmd);
    return rc;
}

//  Commands wait in the hiredis buffer for the connection's write event,
//  which the adapter adds for each: a turn of the loop (epoll_wait, and
//  epoll_ctl to add and delete it) before they leave. The flush event,
//  made active, runs once the callbacks of this turn are done: every
//  command they issued goes in one write, and the write event's add and
//  delete cancel out in the changelist.
static void
s_cmd_flush (kiln_gateway_t *self)
{
    event_active (self->cmd_flush, 0, 0);
}

int
kiln_call_redis (kiln_call_t *call, redisCallbackFn *fn,
                 int argc, const char **argv, const size_t *argvlen)
{
    kiln_gateway_t *self = call->gw;
    int rc = REDIS_ERR;
    if (self->redis_up && self->cmd) {
        if (argc >= 2 && strcasecmp (argv [0], "EVAL") == 0) {
            char *cmd = NULL;
            int len = redisFormatCommandArgv (&cmd, argc, argv, argvlen);
            rc = s_send_formatted (self->cmd, fn, call, cmd, len);
        }
        else
            rc = redisAsyncCommandArgv (self->cmd, fn, call, argc, argv, argvlen);
    }
    if (rc != REDIS_OK) {
        kiln_call_error (call, 503, "internal_error", "Redis is unavailable");
        return -1;
    }
    kiln_call_ref (call);
    s_cmd_flush (self);
    return 0;
}

int
kiln_call_redisf (kiln_call_t *call, redisCallbackFn *fn, const char *format, ...)
{
    kiln_gateway_t *self = call->gw;
    int rc = REDIS_ERR;
    if (self->redis_up && self->cmd) {
        va_list args;
        va_start (args, format);
        if (strncasecmp (format, "EVAL ", 5) == 0) {
            char *cmd = NULL;
            int len = redisvFormatCommand (&cmd, format, args);
            rc = s_send_formatted (self->cmd, fn, call, cmd, len);
        }
        else
            rc = redisvAsyncCommand (self->cmd, fn, call, format, args);
        va_end (args);
    }
    if (rc != REDIS_OK) {
        kiln_call_error (call, 503, "internal_error", "Redis is unavailable");
        return -1;
    }
    kiln_call_ref (call);
    s_cmd_flush (self);
    return 0;
}

int
kiln_call_redisf_quiet (kiln_call_t *call, const char *format, ...)
{
    kiln_gateway_t *self = call->gw;
    int rc = REDIS_ERR;
    if (self->redis_up && self->cmd) {
        va_list args;
        va_start (args, format);
        rc = redisvAsyncCommand (self->cmd, NULL, NULL, format, args);
        va_end (args);
    }
    if (rc != REDIS_OK) {
        kiln_call_error (call, 503, "internal_error", "Redis is unavailable");
        return -1;
    }
    s_cmd_flush (self);
    return 0;
}

bool
kiln_call_usable (kiln_call_t *call, redisReply *reply)
{
    if (!call->req)
        return false;
    if (!reply) {
        kiln_call_error (call, 503, "internal_error", "Redis is unavailable");
        return false;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        kiln_log_error ("Redis answered %s %s with: %s", call->method,
                        evhttp_request_get_uri (call->req), reply->str);
        kiln_call_error (call, 500, "internal_error", "Redis error: %s", reply->str);
        return false;
    }
    return true;
}


//  --------------------------------------------------------------------------
//  Shared helpers

char *
kiln_gateway_url (kiln_gateway_t *self, const char *format, ...)
{
    char *path = NULL;
    va_list args;
    va_start (args, format);
    int rc = vasprintf (&path, format, args);
    va_end (args);
    if (rc < 0)
        return NULL;
    char *url = NULL;
    if (asprintf (&url, "%s%s", self->cfg->public_url, path) < 0)
        url = NULL;
    free (path);
    return url;
}

json_t *
kiln_json_text (const char *text, size_t size)
{
    json_t *json = json_stringn (text, size);
    if (json)
        return json;
    //  Not UTF-8: keep what is readable
    char *copy = malloc (size + 1);
    if (!copy)
        return json_string ("");
    for (size_t i = 0; i < size; i++)
        copy [i] = (unsigned char) text [i] < 0x80 ? text [i] : '?';
    json = json_stringn (copy, size);
    free (copy);
    return json ? json : json_string ("");
}

const char *
kiln_reply_str (const redisReply *reply)
{
    if (reply && reply->str
    &&  (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS))
        return reply->str;
    return "";
}

void
kiln_gateway_replay (kiln_call_t *call, redisReply **fields)
{
    const char *status_text = kiln_reply_str (fields [0]);
    char *end = NULL;
    long status = strtol (status_text, &end, 10);
    if (!*status_text || *end || status < 200 || status > 599) {
        kiln_call_error (call, 500, "internal_error", "The request has no valid result");
        return;
    }
    const char *error = kiln_reply_str (fields [3]);
    const char *error_type = kiln_reply_str (fields [4]);
    //  fal's marker: the start deadline the caller set (X-Fal-Request-Timeout)
    //  expired. A request that ran past its app's request_timeout shares
    //  the error_type but not the marker; the scripts' detail tells them
    //  apart (KILN_DETAIL_NOT_STARTED).
    if (strcmp (error_type, "request_timeout") == 0 && strcmp (error, KILN_DETAIL_NOT_STARTED) == 0)
        kiln_call_header (call, "X-Fal-Request-Timeout-Type", "user");
    const redisReply *body = fields [2];
    size_t body_size = body && body->type == REDIS_REPLY_STRING ? body->len : 0;
    if (body_size == 0 && (*error || *error_type)) {
        //  Built here, not with kiln_call_error: a runner's error text may
        //  be longer than its buffer
        const char *detail = *error ? error : error_type;
        json_t *json = json_object ();
        if (json) {
            json_object_set_new (json, "detail", kiln_json_text (detail, strlen (detail)));
            json_object_set_new (json, "error_type", kiln_json_text (
                *error_type ? error_type : "internal_error",
                strlen (*error_type ? error_type : "internal_error")));
        }
        kiln_call_reply_json (call, (int) status, json);
        return;
    }
    const char *content_type = kiln_reply_str (fields [1]);
    if (!*content_type && body_size > 0)
        content_type = "application/octet-stream";
    kiln_call_reply (call, (int) status, content_type, body_size ? body->str : "", body_size);
}


//  --------------------------------------------------------------------------
//  Submits: POST /{owner}/{app}[/{path}] and POST /queue/...

static void
s_queued (kiln_call_t *call, long long position)
{
    kiln_gateway_t *self = call->gw;
    const char *app = call->route.app;
    const char *id = call->request_id;
    json_t *json = json_object ();
    if (json) {
        json_object_set_new (json, "request_id", json_string (id));
        char *url = kiln_gateway_url (self, "/queue/%s/requests/%s", app, id);
        json_object_set_new (json, "response_url", url ? json_string (url) : json_null ());
        free (url);
        url = kiln_gateway_url (self, "/queue/%s/requests/%s/status", app, id);
        json_object_set_new (json, "status_url", url ? json_string (url) : json_null ());
        free (url);
        url = kiln_gateway_url (self, "/queue/%s/requests/%s/cancel", app, id);
        json_object_set_new (json, "cancel_url", url ? json_string (url) : json_null ());
        free (url);
        json_object_set_new (json, "queue_position", json_integer (position));
    }
    kiln_call_reply_json (call, 200, json);
}

static void
s_on_submitted (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    //  Whether the submit ran is known once Redis is back (s_recheck_pending)
    if (s_hold_if_lost (call, reply))
        ;
    else
    if (kiln_call_usable (call, reply)) {
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
        &&  reply->element [0]->type == REDIS_REPLY_INTEGER && reply->element [0]->integer == -3
        &&  reply->element [1]->type == REDIS_REPLY_INTEGER)
            //  Nothing written: a client may retry later
            kiln_call_error (call, 429, "queue_full",
                             "App %s's queue is full: it holds max_queue_length = %lld "
                             "requests already; retry later", call->route.app,
                             reply->element [1]->integer);
        else
        if (reply->type != REDIS_REPLY_INTEGER)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from the submit script");
        else
        if (reply->integer == -1)
            kiln_call_error (call, 404, "not_found", "App %s is not deployed", call->route.app);
        else
        if (reply->integer < 0)
            kiln_call_error (call, 500, "internal_error", "Request id collision; please retry");
        else
        if (call->route.kind == KILN_ROUTE_QUEUE_SUBMIT)
            s_queued (call, reply->integer);
        //  A sync call now waits for its id on our channel
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_submit (kiln_call_t *call)
{
    kiln_gateway_t *self = call->gw;
    bool sync = call->route.kind == KILN_ROUTE_SYNC;
    if (self->stopping) {
        //  Let through (by auth, say) after the stop signal: too late to wait for
        kiln_call_error (call, 503, "internal_error", "The gateway is shutting down");
        return;
    }
    if (!kiln_call_body_fits (call))
        return;
    size_t body_size;
    const char *body = kiln_call_body (call, &body_size);
    const char *content_type = kiln_call_request_header (call, "Content-Type");
    if (!content_type)
        content_type = "";
    if (kiln_input_is_json_type (content_type)) {
        json_error_t error;
        json_t *json = json_loadb (body, body_size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
        if (!json) {
            kiln_call_error (call, 422, "bad_request",
                             "Request body is not valid JSON: %s (line %d, column %d)",
                             error.text, error.line, error.column);
            return;
        }
        json_decref (json);
    }
    const char *priority = kiln_call_request_header (call, "X-Fal-Queue-Priority");
    if (!priority || !*priority)
        priority = "normal";
    if (strcmp (priority, "normal") != 0 && strcmp (priority, "low") != 0) {
        kiln_call_error (call, 400, "bad_request", "X-Fal-Queue-Priority must be normal or low");
        return;
    }
    int64_t now_ms = kiln_now_ms ();
    int64_t deadline_ms = 0;
    const char *timeout = kiln_call_request_header (call, "X-Fal-Request-Timeout");
    if (timeout && (deadline_ms = kiln_input_start_deadline (timeout, now_ms)) < 0) {
        kiln_call_error (call, 400, "bad_request",
                         "X-Fal-Request-Timeout must be a positive number of seconds "
                         "(at most %d), not '%.64s'", KILN_INPUT_REQUEST_TIMEOUT_MAX_S, timeout);
        return;
    }
    const char *no_retry_text = kiln_call_request_header (call, "X-Fal-No-Retry");
    int no_retry = kiln_input_no_retry (no_retry_text);
    if (no_retry < 0) {
        kiln_call_error (call, 400, "bad_request",
                         "X-Fal-No-Retry must be 1, true, 0 or false, not '%.64s'", no_retry_text);
        return;
    }
    char *webhook = sync ? NULL : kiln_call_query (call, "fal_webhook");
    const char *why = webhook ? kiln_input_webhook_invalid (webhook) : NULL;
    if (why) {
        kiln_call_error (call, 400, "bad_request",
                         "fal_webhook must be an absolute http:// or https:// URL; "
                         "'%.200s%s' %s", webhook, strlen (webhook) > 200 ? "…" : "", why);
        free (webhook);
        return;
    }
    kiln_uuid4 (call->request_id);
    if (sync) {
        //  Waiting before the script runs: the answer may come on the
        //  channel before the script's own reply is read
        zhashx_insert (self->pending, call->request_id, call);
        call->pending = true;
        kiln_call_watch_client (call);
    }
    kiln_key_t app_key = kiln_key_app (call->route.app);
    kiln_key_t req_key = kiln_key_request (call->request_id);
    kiln_key_t queue_key = kiln_key_queue (call->route.app);
    char now [24], deadline [24];
    snprintf (now, sizeof now, "%" PRId64, now_ms);
    snprintf (deadline, sizeof deadline, "%" PRId64, deadline_ms);
    const char *argv [] = {
        "EVAL", KILN_SCRIPT_SUBMIT, "4",
        app_key.s, req_key.s, queue_key.s, KILN_KEY_SEQ,
        call->request_id, call->route.app, call->route.path, content_type, body,
        priority, sync ? self->channel.s : "", webhook ? webhook : "", now,
        deadline, no_retry ? "1" : "0",
        //  Who may read it besides the app's owner (gateway_auth.c)
        call->caller.kind == KILN_CALLER_KEY ? call->caller.owner : ""
    };
    size_t argc = sizeof argv / sizeof argv [0];
    size_t argvlen [sizeof argv / sizeof argv [0]];
    for (size_t i = 0; i < argc; i++)
        argvlen [i] = argv [i] == body ? body_size : strlen (argv [i]);
    kiln_call_redis (call, s_on_submitted, (int) argc, argv, argvlen);
    free (webhook);
}

//  The stored answer of a completed sync call.
static void
s_on_result (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (s_hold_if_lost (call, reply))
        ;
    else
    if (kiln_call_usable (call, reply)) {
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5)
            kiln_gateway_replay (call, reply->element);
        else
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
    }
    kiln_call_unref (&call);
}

//  A completion on our channel: the request id alone (a big result: we
//  read the record), or the answer itself, a RESP array of id, status,
//  content_type, body, error, error_type (kiln_scripts.h).
static void
s_on_completed (kiln_gateway_t *self, const redisReply *message)
{
    redisReply *answer = NULL;
    if (message->len > 0 && message->str [0] == '*') {
        redisReader *reader = redisReaderCreate ();
        if (!reader
        ||  redisReaderFeed (reader, message->str, message->len) != REDIS_OK
        ||  redisReaderGetReply (reader, (void **) &answer) != REDIS_OK
        ||  !answer || answer->type != REDIS_REPLY_ARRAY || answer->elements != 6
        ||  answer->element [0]->type != REDIS_REPLY_STRING) {
            kiln_log_error ("a completion on %s that does not parse; ignored", self->channel.s);
            if (answer)
                freeReplyObject (answer);
            answer = NULL;
        }
        if (reader)
            redisReaderFree (reader);
        if (!answer)
            return;
    }
    const char *request_id = answer? answer->element [0]->str: message->str;
    kiln_call_t *call = zhashx_lookup (self->pending, request_id);
    if (!call)
        //  Its caller went away, or Redis came back after we gave up on it
        kiln_log_debug ("request %s completed; nobody waits for it here", request_id);
    else {
        zhashx_delete (self->pending, request_id);
        call->pending = false;
        if (answer) {
            if (call->req)
                kiln_gateway_replay (call, answer->element + 1);
        }
        else
            kiln_call_redisf (call, s_on_result,
                              "HMGET %s status result_content_type result_body error error_type",
                              kiln_key_request (request_id).s);
    }
    if (answer)
        freeReplyObject (answer);
}

//  Everything that arrives on the subscriber connection.
static void
s_on_channel (redisAsyncContext *ctx, void *r, void *privdata)
{
    kiln_gateway_t *self = privdata;
    redisReply *reply = r;
    if (!reply || ctx != self->sub)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        s_redis_lost (self, reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    const char *kind = kiln_reply_str (reply->element [0]);
    if (strcmp (kind, "subscribe") == 0) {
        self->sub_ready = true;
        s_check_up (self);
    }
    else
    if (strcmp (kind, "message") == 0 && reply->element [2]->type == REDIS_REPLY_STRING)
        s_on_completed (self, reply->element [2]);
}


//  --------------------------------------------------------------------------
//  GET /files/{id}

static void
s_on_file (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (kiln_call_usable (call, reply)) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
            kiln_call_error (call, 500, "internal_error", "Unexpected answer from Redis");
        else
        if (reply->element [2]->type != REDIS_REPLY_STRING)
            kiln_call_error (call, 404, "not_found", "File %s not found", call->route.id);
        else {
            const char *file_name = kiln_reply_str (reply->element [1]);
            if (*file_name) {
                char safe [256];
                char disposition [300];
                kiln_input_safe_file_name (file_name, safe, sizeof safe);
                snprintf (disposition, sizeof disposition, "inline; filename=\"%s\"", safe);
                kiln_call_header (call, "Content-Disposition", disposition);
            }
            const char *content_type = kiln_reply_str (reply->element [0]);
            kiln_call_reply (call, 200, *content_type ? content_type : "application/octet-stream",
                             reply->element [2]->str, reply->element [2]->len);
        }
    }
    kiln_call_unref (&call);
}

static void
s_file (kiln_call_t *call)
{
    kiln_key_t key = kiln_key_file (call->route.id);
    kiln_call_redisf (call, s_on_file, "HMGET %s content_type file_name data", key.s);
}


//  --------------------------------------------------------------------------
//  GET /health (GET /metrics: gateway_metrics.c)

static void
s_health (kiln_call_t *call)
{
    kiln_gateway_t *self = call->gw;
    json_t *json = json_pack ("{s:s, s:b, s:s}",
                              "status", self->redis_up ? "ok" : "unavailable",
                              "redis", self->redis_up, "gateway_id", self->id);
    kiln_call_reply_json (call, self->redis_up ? 200 : 503, json);
}

//  --------------------------------------------------------------------------
//  HTTP entry point and signals

//  Whether the request line is within our bounds; else answers 414.
static bool
s_uri_fits (kiln_call_t *call, struct evhttp_request *req)
{
    const char *uri = evhttp_request_get_uri (req);
    if (!uri)
        return true;
    const char *query = strchr (uri, '?');
    size_t path_len = query ? (size_t) (query - uri) : strlen (uri);
    size_t query_len = query ? strlen (query + 1) : 0;
    if (path_len > KILN_ROUTE_RAW_PATH_MAX) {
        kiln_call_error (call, 414, "uri_too_long",
                         "Request path is %zu bytes; the limit is %d", path_len,
                         KILN_ROUTE_RAW_PATH_MAX);
        return false;
    }
    if (query_len > HTTP_MAX_QUERY_BYTES) {
        kiln_call_error (call, 414, "uri_too_long",
                         "Query string is %zu bytes; the limit is %d", query_len,
                         HTTP_MAX_QUERY_BYTES);
        return false;
    }
    return true;
}

//  Whether the caller is within KILN_RATE_LIMIT_RPS; else answers 429
//  with Retry-After. Keyed by the API key's id (not checked here: a
//  made-up id only spends its own bucket), else by the client's address.
static bool
s_rate_fits (kiln_call_t *call, struct evhttp_request *req)
{
    kiln_gateway_t *self = call->gw;
    if (!self->ratelimit)
        return true;
    char bucket [KILN_AUTH_ID_LEN + 64];     //  "key:" id, or "ip:" an IPv6 address
    char id [KILN_AUTH_ID_LEN + 1];
    char secret [KILN_AUTH_SECRET_LEN + 1];
    const char *authorization = kiln_call_request_header (call, "Authorization");
    if (authorization && kiln_auth_parse (authorization, id, secret) == 0)
        snprintf (bucket, sizeof bucket, "key:%s", id);
    else {
        char *host = NULL;
        ev_uint16_t port = 0;
        struct evhttp_connection *evcon = evhttp_request_get_connection (req);
        if (evcon)
            evhttp_connection_get_peer (evcon, &host, &port);
        snprintf (bucket, sizeof bucket, "ip:%s", host ? host : "");
    }
    explicit_bzero (secret, sizeof secret);
    int64_t wait_ms = kiln_ratelimit_take (self->ratelimit, bucket, kiln_mono_ms ());
    if (wait_ms == 0)
        return true;
    char retry_after [24];
    snprintf (retry_after, sizeof retry_after, "%lld", (long long) ((wait_ms + 999) / 1000));
    kiln_call_header (call, "Retry-After", retry_after);
    int burst = self->cfg->rate_limit_burst ? self->cfg->rate_limit_burst
                                             : self->cfg->rate_limit_rps;
    kiln_call_error (call, 429, "rate_limited",
                     "Rate limit exceeded: at most %d requests per second (burst %d) per %s; "
                     "retry in %lld ms", self->cfg->rate_limit_rps, burst,
                     strncmp (bucket, "key:", 4) == 0 ? "API key" : "client address",
                     (long long) wait_ms);
    return false;
}

static void
s_on_http (struct evhttp_request *req, void *arg)
{
    kiln_gateway_t *self = arg;
    kiln_call_t *call = s_call_new (self, req);
    if (!call) {
        evhttp_send_error (req, 500, NULL);
        return;
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri (req);
    const char *raw_path = uri ? evhttp_uri_get_path (uri) : NULL;
    kiln_route_t *route = &call->route;
    kiln_route_match (route, call->method, raw_path && *raw_path ? raw_path : "/");

    if (!s_uri_fits (call, req))
        ;
    else
    if (route->kind != KILN_ROUTE_HEALTH && !s_rate_fits (call, req))
        ;   //  Before any Redis work: refusing costs the others nothing
    else
    if (route->kind == KILN_ROUTE_ERROR) {
        if (route->status == 405)
            kiln_call_header (call, "Allow", route->allow);
        kiln_call_error (call, route->status, route->error_type, "%s", route->detail);
    }
    else
    if (self->stopping)
        kiln_call_error (call, 503, "internal_error", "The gateway is shutting down");
    else
    if (route->kind == KILN_ROUTE_HEALTH)
        s_health (call);
    else
        //  Who calls, and may they? Then kiln_gateway_dispatch (call)
        kiln_gateway_auth (call);
    kiln_call_unref (&call);
}

//  Runs the route's handler, once gateway_auth.c let the call through
//  (now, or from a Redis callback).
void
kiln_gateway_dispatch (kiln_call_t *call)
{
    kiln_gateway_t *self = call->gw;
    kiln_route_t *route = &call->route;
    if (!call->req)
        return;
    if (route->kind == KILN_ROUTE_METRICS)
        kiln_gateway_metrics (call);
    else
    if (!self->redis_up)
        kiln_call_error (call, 503, "internal_error", "Redis is unavailable");
    else
    switch (route->kind) {
        case KILN_ROUTE_SYNC:
        case KILN_ROUTE_QUEUE_SUBMIT:
            kiln_gateway_submit (call);
            break;
        case KILN_ROUTE_FILE:
            s_file (call);
            break;
        case KILN_ROUTE_ARTIFACT_PUT:
        case KILN_ROUTE_APPS_LIST:
        case KILN_ROUTE_APPS_DEPLOY:
        case KILN_ROUTE_APP_GET:
        case KILN_ROUTE_APP_DELETE:
        case KILN_ROUTE_APP_SCALE:
        case KILN_ROUTE_RUNNERS_LIST:
        case KILN_ROUTE_WORKERS_LIST:
        case KILN_ROUTE_APP_REVISIONS:
        case KILN_ROUTE_APP_ROLLBACK:
        case KILN_ROUTE_APP_LOGS:
        case KILN_ROUTE_REQUEST_GET:
        case KILN_ROUTE_REQUEST_CANCEL:
            kiln_gateway_v1 (call);
            break;
        case KILN_ROUTE_QUEUE_STATUS:
        case KILN_ROUTE_QUEUE_STREAM:
        case KILN_ROUTE_QUEUE_RESULT:
        case KILN_ROUTE_QUEUE_CANCEL:
            kiln_gateway_queue (call);
            break;
        case KILN_ROUTE_JWKS:
            kiln_gateway_jwks (call);
            break;
        case KILN_ROUTE_KEYS_LIST:
        case KILN_ROUTE_KEYS_CREATE:
        case KILN_ROUTE_KEY_REVOKE:
            kiln_gateway_keys (call);
            break;
        case KILN_ROUTE_SECRETS_SET:
        case KILN_ROUTE_SECRETS_LIST:
        case KILN_ROUTE_SECRET_UNSET:
            kiln_gateway_secrets (call);
            break;
        default:
            kiln_call_error (call, 404, "not_found", "Not found");
            break;
    }
}

static void
s_on_signal (evutil_socket_t fd, short what, void *arg)
{
    (void) what;
    kiln_gateway_t *self = arg;
    if (self->stopping) {
        //  A second signal: stop now
        event_base_loopbreak (self->base);
        return;
    }
    kiln_log_info ("%s: stopping", fd == SIGINT ? "SIGINT" : "SIGTERM");
    self->stopping = true;
    //  Closed, not just disabled: new connections are refused at once (a
    //  load balancer moves on) instead of waiting in the backlog
    if (self->bound) {
        evhttp_del_accept_socket (self->http, self->bound);
        self->bound = NULL;
        self->listening = false;
    }
    evtimer_del (self->reconnect_timer);
    s_end_streams (self);
    size_t waiting = zhashx_size (self->pending);
    if (waiting == 0 || !self->redis_up) {
        s_fail_pending (self, "The gateway is shutting down");
        struct timeval flush = { 0, STOP_FLUSH_MS * 1000 };
        event_base_loopexit (self->base, &flush);
        return;
    }
    //  Their answers are on their way: give them the grace, then 503.
    //  The last one answered ends the loop (s_call_detach).
    int grace_ms = STOP_GRACE_MS;
    const char *grace_text = getenv ("KILN_GATEWAY_STOP_GRACE_MS");
    if (grace_text && *grace_text) {
        char *end = NULL;
        long value = strtol (grace_text, &end, 10);
        if (*end == 0 && value >= 0 && value <= 600000)
            grace_ms = (int) value;
        else
            kiln_log_warn ("KILN_GATEWAY_STOP_GRACE_MS='%s' is not a number of ms; "
                           "using %d", grace_text, STOP_GRACE_MS);
    }
    kiln_log_info ("waiting up to %d ms for %zu sync call%s in flight",
                   grace_ms, waiting, waiting == 1 ? "" : "s");
    s_hold_pending (self, grace_ms);
}
