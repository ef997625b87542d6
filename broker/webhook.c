/*  =========================================================================
    webhook — delivers ?fal_webhook= callbacks from the Redis outbox

    One thread, started beside the broker by kiln-broker's main(). It has
    its own synchronous Redis connection (reconnected with backoff when
    Redis goes away) and one libcurl easy handle; it delivers one request
    at a time, each bounded by webhook_timeout_ms. It takes no messages
    and sends none: its only inputs are Redis and its stop flag.

    | step          | Redis                     | what it does                          |
    |---------------|---------------------------|---------------------------------------|
    | key           | GET / SET NX              | at start and after each reconnect:    |
    |               | kiln:signing_key          | the signing key pair (made if absent) |
    | claim         | KILN_SCRIPT_WEBHOOK_CLAIM | takes up to CLAIM_LIMIT due ids, each |
    |               |                           | leased (re-scored) to now + lease     |
    | renew         | KILN_SCRIPT_WEBHOOK_LEASE          | before a POST, when the lease would   |
    |               |                           | not outlast it: re-leases the id, or  |
    |               |                           | skips it when the lease is lost       |
    | owner         | HGET kiln:req:{id} app    | the user id the signature names       |
    | deliver       | (HTTP POST, libcurl)      | fal's body, JSON, no redirects,       |
    |               |                           | signed; private addresses refused     |
    | record        | KILN_SCRIPT_WEBHOOK_DONE  | delivered (2xx) / retry / failed      |
    | release       | KILN_SCRIPT_WEBHOOK_LEASE          | at stop: unsent claims due at once    |

    The lease is webhook_timeout_ms + LEASE_MARGIN_MS, so one POST always
    ends inside it, and a second deliverer (another broker) never claims an
    id while its holder may still send it. A deliverer that dies leaves its
    claims in the outbox; they come due again when the lease runs out.

    Delivery contract: at least once. The receiver sees a completion more
    than once only when it did not answer 2xx in time (an error status, a
    dropped connection, a timeout, a broker stopped mid-POST) — or when
    the broker dies, or loses Redis for longer than the lease, between
    receiving the 2xx and recording it: then the next claim sends it
    again. Receivers that must not act twice should key on request_id.

    Retries: a failed try with `attempts` tries before it is tried again
    after webhook_backoff_ms · 2^attempts (15 s, 30 s, … : ten tries span
    about two hours by default), until webhook_tries; then the record is
    marked failed. Either way the record then expires after
    result_retention_s.

    Signatures: every try is signed anew (a fresh timestamp), over the
    exact body bytes sent, so a receiver can refuse old or replayed
    deliveries by their timestamp. Without a key pair nothing is sent:
    an unsigned delivery would be refused by a receiver that verifies.

    Private targets: the address libcurl is about to connect to (after
    DNS, so a name that resolves to 127.0.0.1 — or re-resolves to it
    later — is caught) is checked in the open-socket callback; a private
    one is not connected to. When every address of the target was
    refused, the delivery fails at once: retrying cannot help. Behind a
    proxy (http_proxy, https_proxy in the environment) it is the proxy's
    address that is checked.
    =========================================================================
*/
#include "webhook.h"

#include "kiln_keys.h"
#include "kiln_log.h"
#include "kiln_redis.h"
#include "kiln_scripts.h"
#include "kiln_signing_key.h"
#include "kiln_util.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define CLAIM_LIMIT             16      //  deliveries per claim
#define LEASE_MARGIN_MS         30000   //  added to the timeout for a claim's lease
#define RENEW_MARGIN_MS         5000    //  renew a lease this close to running out
#define IDLE_WAIT_MS            100     //  between claims that found little
#define ERROR_WAIT_MS           1000    //  after a script error reply
#define KEY_WAIT_MS             5000    //  before asking again for a key pair Redis could not give
#define REDIS_TIMEOUT_MS        2000
#define REDIS_BACKOFF_MIN_MS    1000
#define REDIS_BACKOFF_MAX_MS    16000
#define WEBHOOK_DELAY_MAX_MS    (24LL * 3600 * 1000)
#define LOG_URL_MAX             256     //  characters of a URL shown in the log
#define USER_AGENT              "kiln-webhook/1"

typedef enum {
    OUTCOME_DELIVERED,
    OUTCOME_RETRY,
    OUTCOME_FAILED,
    OUTCOME_ABORTED             //  stopped mid-POST: not an attempt
} s_outcome_t;

static const char *s_outcome_names [] = { "delivered", "retry", "failed", "aborted" };

//  An outcome that could not be recorded because Redis went away; it is
//  recorded first after the reconnect.
typedef struct {
    char *id;
    s_outcome_t outcome;
    int64_t next_ms;
    char *last_error;
} s_done_t;

struct _kiln_webhooks_t {
    //  Settings, copied from the configuration
    char *redis_url;
    int tries;
    int64_t backoff_ms;
    int64_t timeout_ms;
    int64_t lease_ms;
    int retention_s;
    bool allow_private;         //  KILN_WEBHOOK_ALLOW_PRIVATE

    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t cond;        //  signalled at stop, so a wait ends at once
    atomic_bool stopping;

    //  Owned by the thread
    redisContext *redis;
    int64_t redis_retry_ms;     //  monotonic
    int64_t redis_backoff_ms;
    CURL *curl;
    s_done_t *pending;
    kiln_sign_keypair_t key;    //  valid while key_loaded
    bool key_loaded;

    //  The current POST's connection attempts (the open-socket callback)
    int addresses_refused;
    int addresses_allowed;
    char refused_address [INET6_ADDRSTRLEN];
};

//  -------------------------------------------------------------------------
//  The body and the backoff (pure)

char *
kiln_webhook_body (const char *request_id, int status,
                   const char *result, size_t result_size, const char *error)
{
    bool ok = status >= 200 && status < 300;
    json_t *root = json_object ();
    if (!root)
        return NULL;
    json_object_set_new (root, "request_id", json_string (request_id));
    json_object_set_new (root, "gateway_request_id", json_string (request_id));
    json_object_set_new (root, "status", json_string (ok? "OK": "ERROR"));

    //  The result as the endpoint produced it: JSON when it is JSON (fal's
    //  apps answer JSON), else the text; bytes that are not text cannot go
    //  into JSON, so the receiver is told to fetch them.
    json_t *payload = NULL;
    if (result_size > 0) {
        payload = json_loadb (result, result_size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!payload)
            payload = json_stringn (result, result_size);
        if (!payload)
            json_object_set_new (root, "payload_error", json_string (
                "The result is neither JSON nor UTF-8 text; "
                "fetch it from the request's response_url"));
    }
    json_object_set_new (root, "payload", payload? payload: json_null ());

    //  fal names the status when the endpoint gave no error text.
    json_t *error_value = NULL;
    if (error && *error)
        error_value = json_string (error);
    if (!error_value && !ok) {
        char text [64];
        snprintf (text, sizeof text, "Invalid status code: %d", status);
        error_value = json_string (text);
    }
    json_object_set_new (root, "error", error_value? error_value: json_null ());

    char *body = json_dumps (root, JSON_COMPACT);
    json_decref (root);
    return body;
}

int64_t
kiln_webhook_delay_ms (int64_t backoff_ms, int attempts)
{
    int64_t delay = backoff_ms > 0? backoff_ms: 1;
    for (int i = 0; i < attempts && delay < WEBHOOK_DELAY_MAX_MS; i++)
        delay *= 2;
    return delay > WEBHOOK_DELAY_MAX_MS? WEBHOOK_DELAY_MAX_MS: delay;
}

//  The first bits bits of a and b (both 4 or 16 bytes) are the same.
static bool
s_prefix (const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8;
    if (memcmp (a, b, bytes) != 0)
        return false;
    int rest = bits % 8;
    uint8_t mask = (uint8_t) (0xff << (8 - rest));
    return rest == 0 || (a [bytes] & mask) == (b [bytes] & mask);
}

static bool
s_ipv4_private (const uint8_t ip [4])
{
    static const struct {
        uint8_t net [4];
        int bits;
    } ranges [] = {
        { {   0, 0, 0, 0 },  8 },    //  "this network"
        { {  10, 0, 0, 0 },  8 },    //  private
        { { 127, 0, 0, 0 },  8 },    //  loopback
        { { 169, 254, 0, 0 }, 16 },  //  link-local (cloud metadata lives here)
        { { 172, 16, 0, 0 }, 12 },   //  private
        { { 192, 168, 0, 0 }, 16 },  //  private
        { { 100, 64, 0, 0 }, 10 },   //  shared address space (CGNAT; some clouds' metadata)
        { { 198, 18, 0, 0 }, 15 },   //  benchmarking
        { { 224, 0, 0, 0 },  4 },    //  multicast
        { { 240, 0, 0, 0 },  4 },    //  reserved, and the broadcast address
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges [0]; i++)
        if (s_prefix (ip, ranges [i].net, ranges [i].bits))
            return true;
    return false;
}

bool
kiln_webhook_address_private (const struct sockaddr *addr)
{
    if (!addr)
        return true;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *) addr;
        return s_ipv4_private ((const uint8_t *) &in->sin_addr);
    }
    if (addr->sa_family != AF_INET6)
        return true;
    const uint8_t *ip = ((const struct sockaddr_in6 *) addr)->sin6_addr.s6_addr;
    static const uint8_t zero [16] = { 0 };
    static const uint8_t mapped [12] = { 0,0,0,0, 0,0,0,0, 0,0,0xff,0xff };
    static const uint8_t unique_local [16] = { 0xfc };
    static const uint8_t link_local [16] = { 0xfe, 0x80 };
    if (memcmp (ip, zero, 15) == 0 && (ip [15] == 0 || ip [15] == 1))
        return true;                //  :: and ::1
    //  IPv4-mapped, and NAT64 (64:ff9b::/96), which reaches the IPv4
    //  address in its last four bytes: judged as that address.
    static const uint8_t nat64 [12] = { 0,0x64, 0xff,0x9b, 0,0,0,0, 0,0,0,0 };
    if (memcmp (ip, mapped, 12) == 0 || memcmp (ip, nat64, 12) == 0)
        return s_ipv4_private (ip + 12);
    static const uint8_t multicast [16] = { 0xff };
    return s_prefix (ip, unique_local, 7) || s_prefix (ip, link_local, 10)
        || s_prefix (ip, multicast, 8);
}

//  -------------------------------------------------------------------------
//  Stop flag and waits

static bool
s_stopping (kiln_webhooks_t *self)
{
    return atomic_load (&self->stopping);
}

//  Sleeps up to ms, or until kiln_webhooks_destroy.
static void
s_wait (kiln_webhooks_t *self, int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec until;
    clock_gettime (CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock (&self->mutex);
    while (!s_stopping (self)
       &&  pthread_cond_timedwait (&self->cond, &self->mutex, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock (&self->mutex);
}

//  -------------------------------------------------------------------------
//  Redis

static void
s_redis_lost (kiln_webhooks_t *self, const char *during)
{
    kiln_log_error ("webhooks: redis connection lost during %s (%s); reconnecting",
                    during, self->redis->errstr [0]? self->redis->errstr: "no reply");
    redisFree (self->redis);
    self->redis = NULL;
    self->redis_retry_ms = kiln_mono_ms () + self->redis_backoff_ms;
    //  Read the key pair again on the new connection (it may be another
    //  Redis, or the key may have been rotated).
    self->key_loaded = false;
}

//  Connects when the backoff allows. True when connected.
static bool
s_redis_reconnect (kiln_webhooks_t *self)
{
    if (self->redis)
        return true;
    if (kiln_mono_ms () < self->redis_retry_ms)
        return false;
    self->redis = kiln_redis_connect (self->redis_url, REDIS_TIMEOUT_MS);
    if (self->redis) {
        kiln_log_debug ("webhooks: connected to redis");
        self->redis_backoff_ms = REDIS_BACKOFF_MIN_MS;
        return true;
    }
    self->redis_retry_ms = kiln_mono_ms () + self->redis_backoff_ms;
    self->redis_backoff_ms *= 2;
    if (self->redis_backoff_ms > REDIS_BACKOFF_MAX_MS)
        self->redis_backoff_ms = REDIS_BACKOFF_MAX_MS;
    return false;
}

//  EVAL with string arguments. NULL when the connection is gone (or was
//  lost now: logged). Caller frees the reply, which may be an error.
static redisReply *
s_eval (kiln_webhooks_t *self, const char *what, const char *script,
        int nkeys, const char *const *keys, int nargs, const char *const *args)
{
    if (!self->redis)
        return NULL;
    redisReply *reply = kiln_redis_eval (self->redis, script, nkeys, keys, nargs, args, NULL);
    if (!reply)
        s_redis_lost (self, what);
    return reply;
}

//  Runs KILN_SCRIPT_WEBHOOK_LEASE. 1 moved, 0 not held, -1 no answer (logged).
static int
s_lease_move (kiln_webhooks_t *self, const char *id, int64_t held_ms, int64_t new_ms)
{
    char held [24], moved [24];
    snprintf (held, sizeof held, "%" PRId64, held_ms);
    snprintf (moved, sizeof moved, "%" PRId64, new_ms);
    const char *keys [] = { KILN_KEY_WEBHOOKS };
    const char *args [] = { id, held, moved };
    redisReply *reply = s_eval (self, "lease", KILN_SCRIPT_WEBHOOK_LEASE, 1, keys, 3, args);
    if (!reply)
        return -1;
    int rc = -1;
    if (reply->type == REDIS_REPLY_INTEGER)
        rc = reply->integer == 1? 1: 0;
    else
        kiln_log_error ("webhooks: lease script failed: %s",
                        reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
    freeReplyObject (reply);
    return rc;
}

static void
s_done_destroy (s_done_t **self_p)
{
    s_done_t *self = *self_p;
    if (self) {
        free (self->id);
        free (self->last_error);
        free (self);
        *self_p = NULL;
    }
}

//  Records an outcome with WEBHOOK_DONE. False when Redis is away (the
//  caller keeps it); an error reply is logged and the outcome dropped,
//  as retrying it would fail the same way.
static bool
s_done_record (kiln_webhooks_t *self, const s_done_t *done)
{
    kiln_key_t req = kiln_key_request (done->id);
    char next [24], retention [16];
    snprintf (next, sizeof next, "%" PRId64, done->next_ms);
    snprintf (retention, sizeof retention, "%d", self->retention_s);
    const char *keys [] = { req.s, KILN_KEY_WEBHOOKS };
    const char *args [] = { done->id, s_outcome_names [done->outcome], next, retention,
                            done->last_error? done->last_error: "" };
    redisReply *reply = s_eval (self, "WEBHOOK_DONE", KILN_SCRIPT_WEBHOOK_DONE, 2, keys, 5, args);
    if (!reply)
        return false;
    if (reply->type == REDIS_REPLY_ERROR)
        kiln_log_error ("webhooks: WEBHOOK_DONE for %s failed: %s", done->id, reply->str);
    else
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
        kiln_log_warn ("webhooks: the record of %s is gone; outcome not kept", done->id);
    freeReplyObject (reply);
    return true;
}

//  -------------------------------------------------------------------------
//  HTTP

static size_t
s_discard (char *data, size_t size, size_t count, void *arg)
{
    (void) data;
    (void) arg;
    return size * count;
}

//  Aborts a POST in flight when the deliverer stops.
static int
s_progress (void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void) dltotal;
    (void) dlnow;
    (void) ultotal;
    (void) ulnow;
    return s_stopping ((kiln_webhooks_t *) arg)? 1: 0;
}

//  The URL for the log: scheme, host and path only, since user info and
//  query strings often carry secrets.
static void
s_url_for_log (const char *url, char *out, size_t size)
{
    const char *start = strstr (url, "://");
    const char *host = start? start + 3: url;
    const char *end = host + strcspn (host, "/?#");
    const char *at = memchr (host, '@', end - host);
    size_t scheme = host - url;
    if (at)
        host = at + 1;
    size_t rest = strcspn (host, "?#");
    snprintf (out, size, "%.*s%.*s", (int) scheme, url, (int) rest, host);
}

static bool
s_url_valid (const char *url)
{
    return (strncmp (url, "http://", 7) == 0 && url [7])
        || (strncmp (url, "https://", 8) == 0 && url [8]);
}

//  libcurl's open-socket callback: sees each address it is about to
//  connect to, after name resolution, and refuses private ones.
static curl_socket_t
s_open_socket (void *arg, curlsocktype purpose, struct curl_sockaddr *address)
{
    kiln_webhooks_t *self = (kiln_webhooks_t *) arg;
    if (purpose == CURLSOCKTYPE_IPCXN && !self->allow_private
    &&  kiln_webhook_address_private (&address->addr)) {
        const void *ip = address->addr.sa_family == AF_INET6
            ? (const void *) &((struct sockaddr_in6 *) &address->addr)->sin6_addr
            : (const void *) &((struct sockaddr_in *) &address->addr)->sin_addr;
        if (!inet_ntop (address->addr.sa_family, ip, self->refused_address,
                        sizeof self->refused_address))
            snprintf (self->refused_address, sizeof self->refused_address, "(unknown)");
        self->addresses_refused++;
        return CURL_SOCKET_BAD;
    }
    self->addresses_allowed++;
    return socket (address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

//  Appends "name: value" to headers. False when out of memory (headers
//  are then freed).
static bool
s_header (struct curl_slist **headers, const char *name, const char *value)
{
    //  "Name:" with nothing after it tells libcurl not to send one of its own.
    char line [KILN_SIGN_HEX_LEN + 128];
    snprintf (line, sizeof line, *value? "%s: %s": "%s:", name, value);
    struct curl_slist *more = curl_slist_append (*headers, line);
    if (!more) {
        curl_slist_free_all (*headers);
        *headers = NULL;
    }
    else
        *headers = more;
    return more != NULL;
}

//  POSTs body to url, signed for request_id and user_id. On a 2xx,
//  DELIVERED; else the error text goes into error (RETRY, or FAILED when
//  trying again cannot help).
static s_outcome_t
s_post (kiln_webhooks_t *self, const char *url, const char *request_id, const char *user_id,
        const char *body, long *code, char *error, size_t error_size)
{
    *code = 0;
    *error = 0;
    if (!s_url_valid (url)) {
        snprintf (error, error_size, "not an http:// or https:// URL");
        return OUTCOME_FAILED;
    }
    //  Signed now, so the timestamp is this try's.
    size_t body_size = strlen (body);
    char timestamp [24], signature [KILN_SIGN_HEX_LEN + 1];
    snprintf (timestamp, sizeof timestamp, "%" PRId64, kiln_now_ms () / 1000);
    if (kiln_sign_webhook (&self->key, request_id, user_id, timestamp,
                           body, body_size, signature)) {
        snprintf (error, error_size, "cannot sign the delivery");
        return OUTCOME_RETRY;
    }
    char curl_error [CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    //  No "Expect: 100-continue" wait on large bodies.
    if (!s_header (&headers, "Content-Type", "application/json")
    ||  !s_header (&headers, "Expect", "")
    ||  !s_header (&headers, "x-fal-webhook-request-id", request_id)
    ||  !s_header (&headers, "x-fal-webhook-user-id", user_id)
    ||  !s_header (&headers, "x-fal-webhook-timestamp", timestamp)
    ||  !s_header (&headers, "x-fal-webhook-signature", signature)) {
        snprintf (error, error_size, "out of memory");
        return OUTCOME_RETRY;
    }
    self->addresses_refused = 0;
    self->addresses_allowed = 0;
    self->refused_address [0] = 0;
    CURL *curl = self->curl;
    curl_easy_reset (curl);     //  keeps open connections for the next POST
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt (curl, CURLOPT_POST, 1L);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_size);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_USERAGENT, USER_AGENT);
    curl_easy_setopt (curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long) self->timeout_ms);
    curl_easy_setopt (curl, CURLOPT_CONNECTTIMEOUT_MS, (long) self->timeout_ms);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_discard);
    curl_easy_setopt (curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt (curl, CURLOPT_XFERINFOFUNCTION, s_progress);
    curl_easy_setopt (curl, CURLOPT_XFERINFODATA, self);
    curl_easy_setopt (curl, CURLOPT_OPENSOCKETFUNCTION, s_open_socket);
    curl_easy_setopt (curl, CURLOPT_OPENSOCKETDATA, self);
    curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, curl_error);
    CURLcode rc = curl_easy_perform (curl);
    curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all (headers);

    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf (error, error_size, "stopped while sending");
        return OUTCOME_ABORTED;
    }
    if (rc != CURLE_OK && self->addresses_refused > 0 && self->addresses_allowed == 0) {
        snprintf (error, error_size, "webhook target %s is in a private range; "
                  "set KILN_WEBHOOK_ALLOW_PRIVATE=1 to allow it", self->refused_address);
        return OUTCOME_FAILED;
    }
    if (rc != CURLE_OK) {
        snprintf (error, error_size, "%s", *curl_error? curl_error: curl_easy_strerror (rc));
        return rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL
             ? OUTCOME_FAILED: OUTCOME_RETRY;
    }
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, code);
    if (*code >= 200 && *code < 300)
        return OUTCOME_DELIVERED;
    snprintf (error, error_size, "HTTP %ld", *code);
    return OUTCOME_RETRY;
}

//  -------------------------------------------------------------------------
//  Delivery

//  The user id a delivery names: the owner of the request's app (fal puts
//  the user there), "" when the record has no valid app. -1 when Redis
//  went away (logged).
static int
s_owner (kiln_webhooks_t *self, const char *id, char owner [KILN_NAME_MAX + 1])
{
    owner [0] = 0;
    redisReply *reply = redisCommand (self->redis, "HGET %s app", kiln_key_request (id).s);
    if (!reply) {
        s_redis_lost (self, "HGET");
        return -1;
    }
    if (reply->type == REDIS_REPLY_STRING && kiln_app_name_valid (reply->str)) {
        size_t len = strcspn (reply->str, "/");
        snprintf (owner, KILN_NAME_MAX + 1, "%.*s", (int) len, reply->str);
    }
    freeReplyObject (reply);
    return 0;
}

//  A string field of the claim's answer ("" when it is not a string).
static const char *
s_field (redisReply *field, size_t *size)
{
    bool is_string = field->type == REDIS_REPLY_STRING;
    if (size)
        *size = is_string? field->len: 0;
    return is_string? field->str: "";
}

//  Delivers one claimed id (fields: KILN_WEBHOOK_CLAIM_FIELDS entries
//  of the claim's answer) whose lease ends at lease_ms. False when the
//  round must end: Redis is away or the deliverer stops.
static bool
s_deliver (kiln_webhooks_t *self, redisReply **fields, int64_t lease_ms)
{
    const char *id = s_field (fields [0], NULL);
    if (!kiln_id_valid (id)) {
        //  Not ours to deliver, and it would come back every lease.
        kiln_log_warn ("webhooks: dropping invalid id '%.64s' from the outbox", id);
        redisReply *reply = redisCommand (self->redis, "ZREM %s %b", KILN_KEY_WEBHOOKS,
                                          fields [0]->str, (size_t) fields [0]->len);
        if (!reply) {
            s_redis_lost (self, "ZREM");
            return false;
        }
        freeReplyObject (reply);
        return true;
    }
    const char *url = s_field (fields [1], NULL);
    int attempts = atoi (s_field (fields [2], NULL));
    if (attempts < 0)
        attempts = 0;
    int status = atoi (s_field (fields [3], NULL));
    size_t result_size;
    const char *result = s_field (fields [5], &result_size);
    const char *error = s_field (fields [6], NULL);

    //  Renew a lease that might run out during the POST (a slow batch).
    int64_t now = kiln_now_ms ();
    if (now + self->timeout_ms + RENEW_MARGIN_MS > lease_ms) {
        int64_t renewed = now + self->lease_ms;
        int held = s_lease_move (self, id, lease_ms, renewed);
        if (held < 0)
            return self->redis != NULL;
        if (held == 0) {
            kiln_log_debug ("webhooks: lease on %s lost; another deliverer has it", id);
            return true;
        }
        lease_ms = renewed;
    }

    char owner [KILN_NAME_MAX + 1];
    if (s_owner (self, id, owner))
        return false;
    char log_url [LOG_URL_MAX];
    s_url_for_log (url, log_url, sizeof log_url);
    char *body = kiln_webhook_body (id, status, result, result_size, error);
    long code = 0;
    char why [CURL_ERROR_SIZE + 128] = "";
    s_outcome_t outcome = body? s_post (self, url, id, owner, body, &code, why, sizeof why)
                              : OUTCOME_RETRY;
    if (!body)
        snprintf (why, sizeof why, "out of memory");
    free (body);

    if (outcome == OUTCOME_ABORTED) {
        //  The next deliverer may send it at once: no 2xx came back.
        s_lease_move (self, id, lease_ms, kiln_now_ms ());
        kiln_log_info ("webhooks: delivery of %s to %s stopped; handed back", id, log_url);
        return false;
    }
    if (outcome == OUTCOME_RETRY && attempts + 1 >= self->tries)
        outcome = OUTCOME_FAILED;
    s_done_t done = { .id = (char *) id, .outcome = outcome, .last_error = why };
    if (outcome == OUTCOME_DELIVERED)
        kiln_log_info ("webhooks: %s delivered to %s (HTTP %ld, try %d)",
                       id, log_url, code, attempts + 1);
    else
    if (outcome == OUTCOME_RETRY) {
        int64_t delay = kiln_webhook_delay_ms (self->backoff_ms, attempts);
        done.next_ms = kiln_now_ms () + delay;
        kiln_log_warn ("webhooks: %s to %s failed (%s), try %d of %d; next in %" PRId64 " ms",
                       id, log_url, why, attempts + 1, self->tries, delay);
    }
    else
        kiln_log_error ("webhooks: %s to %s failed (%s) after %d tr%s; giving up",
                        id, log_url, why, attempts + 1, attempts? "ies": "y");

    if (s_done_record (self, &done))
        return true;
    //  Redis went away: keep the outcome, so that a delivered webhook is
    //  not sent again once Redis is back (unless the lease ran out).
    s_done_t *pending = calloc (1, sizeof *pending);
    if (pending) {
        pending->id = strdup (id);
        pending->last_error = strdup (why);
        pending->outcome = outcome;
        pending->next_ms = done.next_ms;
        if (!pending->id || !pending->last_error)
            s_done_destroy (&pending);
    }
    self->pending = pending;
    return false;
}

//  One claim and its deliveries. The number claimed, or -1 on an error
//  (Redis away, or an error reply).
static int
s_claim_and_deliver (kiln_webhooks_t *self)
{
    int64_t now = kiln_now_ms ();
    int64_t lease_ms = now + self->lease_ms;
    char now_text [24], lease_text [24], limit_text [8];
    snprintf (now_text, sizeof now_text, "%" PRId64, now);
    snprintf (lease_text, sizeof lease_text, "%" PRId64, self->lease_ms);
    snprintf (limit_text, sizeof limit_text, "%d", CLAIM_LIMIT);
    const char *keys [] = { KILN_KEY_WEBHOOKS };
    const char *args [] = { now_text, lease_text, limit_text };
    redisReply *reply = s_eval (self, "WEBHOOK_CLAIM", KILN_SCRIPT_WEBHOOK_CLAIM,
                                1, keys, 3, args);
    if (!reply)
        return -1;
    if (reply->type != REDIS_REPLY_ARRAY
    ||  reply->elements % KILN_WEBHOOK_CLAIM_FIELDS != 0) {
        kiln_log_error ("webhooks: WEBHOOK_CLAIM failed: %s",
                        reply->type == REDIS_REPLY_ERROR? reply->str: "unexpected reply");
        freeReplyObject (reply);
        return -1;
    }
    int count = (int) (reply->elements / KILN_WEBHOOK_CLAIM_FIELDS);
    int next = 0;
    while (next < count && !s_stopping (self)) {
        redisReply **fields = reply->element + next++ * KILN_WEBHOOK_CLAIM_FIELDS;
        if (!s_deliver (self, fields, lease_ms))
            break;
    }
    //  Claims not sent (a stop, Redis lost): due again at once rather
    //  than after the lease, when Redis still answers.
    for (; next < count && self->redis; next++) {
        redisReply **fields = reply->element + next * KILN_WEBHOOK_CLAIM_FIELDS;
        const char *id = s_field (fields [0], NULL);
        if (kiln_id_valid (id))
            s_lease_move (self, id, lease_ms, kiln_now_ms ());
    }
    freeReplyObject (reply);
    return count;
}

static void *
s_run (void *arg)
{
    kiln_webhooks_t *self = (kiln_webhooks_t *) arg;
    while (!s_stopping (self)) {
        if (!s_redis_reconnect (self)) {
            int64_t wait = self->redis_retry_ms - kiln_mono_ms ();
            s_wait (self, wait > IDLE_WAIT_MS? wait: IDLE_WAIT_MS);
            continue;
        }
        if (self->pending) {
            if (!s_done_record (self, self->pending))
                continue;
            s_done_destroy (&self->pending);
        }
        if (!self->key_loaded) {
            //  Nothing goes out unsigned: no key, no claims.
            if (kiln_signing_key_load (self->redis, &self->key) == 0) {
                self->key_loaded = true;
                kiln_log_info ("webhooks: signing with key %s", self->key.kid);
            }
            else
            if (self->redis->err)
                s_redis_lost (self, "GET " KILN_KEY_SIGNING_KEY);
            else {
                kiln_log_error ("webhooks: no signing key pair; deliveries wait");
                s_wait (self, KEY_WAIT_MS);
            }
            continue;
        }
        int claimed = s_claim_and_deliver (self);
        if (claimed < 0 && self->redis)
            s_wait (self, ERROR_WAIT_MS);
        else
        if (claimed < CLAIM_LIMIT)
            s_wait (self, IDLE_WAIT_MS);
    }
    if (self->pending)
        kiln_log_error ("webhooks: outcome of %s not recorded: Redis is away", self->pending->id);
    return NULL;
}

//  -------------------------------------------------------------------------
//  Life cycle

kiln_webhooks_t *
kiln_webhooks_new (const kiln_config_t *cfg)
{
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        kiln_log_error ("webhooks: libcurl cannot start");
        return NULL;
    }
    kiln_webhooks_t *self = calloc (1, sizeof *self);
    if (!self) {
        curl_global_cleanup ();
        return NULL;
    }
    self->redis_url = strdup (cfg->redis_url);
    self->tries = cfg->webhook_tries > 0? cfg->webhook_tries: 1;
    self->backoff_ms = cfg->webhook_backoff_ms > 0? cfg->webhook_backoff_ms: 1;
    self->timeout_ms = cfg->webhook_timeout_ms > 0? cfg->webhook_timeout_ms: 1;
    self->lease_ms = self->timeout_ms + LEASE_MARGIN_MS;
    self->retention_s = cfg->result_retention_s > 0? cfg->result_retention_s: 1;
    self->allow_private = cfg->webhook_allow_private;
    self->redis_backoff_ms = REDIS_BACKOFF_MIN_MS;
    atomic_init (&self->stopping, false);
    self->curl = curl_easy_init ();
    pthread_condattr_t attr;
    bool signing = kiln_auth_init () == 0;
    if (!signing)
        kiln_log_error ("webhooks: libsodium cannot start");
    bool ok = self->redis_url && self->curl && signing
           && pthread_condattr_init (&attr) == 0;
    if (ok) {
        //  Waits are timed on the monotonic clock, like everything else.
        pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
        ok = pthread_cond_init (&self->cond, &attr) == 0;
        pthread_condattr_destroy (&attr);
        if (ok && pthread_mutex_init (&self->mutex, NULL) != 0) {
            pthread_cond_destroy (&self->cond);
            ok = false;
        }
    }
    if (ok) {
        //  Signals stay with the main thread, which stops the broker.
        sigset_t all, old;
        sigfillset (&all);
        pthread_sigmask (SIG_SETMASK, &all, &old);
        int rc = pthread_create (&self->thread, NULL, s_run, self);
        pthread_sigmask (SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            kiln_log_error ("webhooks: cannot start the thread: %s", strerror (rc));
            pthread_mutex_destroy (&self->mutex);
            pthread_cond_destroy (&self->cond);
            ok = false;
        }
    }
    if (!ok) {
        if (self->curl)
            curl_easy_cleanup (self->curl);
        free (self->redis_url);
        free (self);
        curl_global_cleanup ();
        return NULL;
    }
    kiln_log_info ("webhooks: delivering (%d tries, backoff %" PRId64 " ms, timeout %" PRId64 " ms%s)",
                   self->tries, self->backoff_ms, self->timeout_ms,
                   self->allow_private? "; private targets allowed": "");
    return self;
}

void
kiln_webhooks_destroy (kiln_webhooks_t **self_p)
{
    kiln_webhooks_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->mutex);
    atomic_store (&self->stopping, true);
    pthread_cond_broadcast (&self->cond);
    pthread_mutex_unlock (&self->mutex);
    pthread_join (self->thread, NULL);

    s_done_destroy (&self->pending);
    if (self->redis)
        redisFree (self->redis);
    curl_easy_cleanup (self->curl);
    curl_global_cleanup ();
    sodium_memzero (&self->key, sizeof self->key);
    pthread_mutex_destroy (&self->mutex);
    pthread_cond_destroy (&self->cond);
    free (self->redis_url);
    free (self);
    *self_p = NULL;
}
