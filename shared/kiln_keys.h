/*  =========================================================================
    kiln_keys — the Redis key schema

    Every key kiln writes starts with "kiln:". Names that go into keys (app
    names, ids, hashes) are validated by kiln_name_valid / kiln_id_valid
    before use, so a key never holds a ':' or a space it did not put there.

    | key                       | type   | holds                                    |
    |---------------------------|--------|------------------------------------------|
    | kiln:apps                 | set    | every deployed app name ("owner/app")    |
    | kiln:app:{app}            | hash   | name, revision, artifact, manifest (JSON), updated_ms; |
    |                           |        | scale (JSON overrides), failed_starts, last_error, last_error_ms, |
    |                           |        | latest_revision (the newest deployed; revision is the current) |
    | kiln:app:{app}:revisions  | hash   | revision → JSON {revision, artifact, manifest, created_ms} |
    | kiln:artifact:{sha256}    | string | the artifact's bytes                     |
    | kiln:seq                  | string | counter: queue order                     |
    | kiln:headseq              | string | counter: order of re-queued requests, ahead of their band |
    | kiln:queue:{app}          | zset   | queued request ids, score = band·2^52 + seq (band 0 normal, 1 low) |
    | kiln:inflight             | zset   | running request ids, score = lease deadline (ms) |
    | kiln:deadlines            | zset   | queued ids with a start deadline, score = deadline (ms) |
    | kiln:webhooks             | zset   | completed ids whose webhook is due, score = when (ms) |
    | kiln:req:{id}             | hash   | the request record (fields below)        |
    | kiln:req:{id}:logs        | list   | log lines, JSON {message, level, source, timestamp} |
    | kiln:file:{id}            | hash   | content_type, file_name, data, request_id |
    | kiln:stats:{app}          | hash   | completions by status, latency histogram (kiln_scripts.h) |
    | kiln:runners              | hash   | runner id → JSON, the broker's view, rewritten every second, |
    |                           |        | expires 10 s after the last rewrite (no broker, no view) |
    | kiln:workers              | hash   | worker id → JSON, likewise               |
    | kiln:logs:{app}           | stream | the app's log lines: ts, level, source, message, |
    |                           |        | runner_id, request_id?, revision (MAXLEN ~ 10000) |
    | kiln:apikeys              | set    | every API key id (revoked ones too)      |
    | kiln:apikey:{id}          | hash   | id, scope (API|ADMIN), owner ("*": the operator), salt, |
    |                           |        | hash (SHA-256 of salt+secret), created_ms, revoked_ms |
    |                           |        | (absent while valid); never the secret   |
    | kiln:signing_key          | string | the webhook signing key pair, "kid:public-hex:secret-hex" |
    |                           |        | (kiln_signing_key.h), written once with SET NX |
    | kiln:app:{app}:secrets    | hash   | NAME → value, the app's secrets; NAME:updated_ms → ms. |
    |                           |        | Given to its runners only, as environment variables; |
    |                           |        | never answered, never logged; deleted with the app |

    Request record fields: id, app, path, content_type, body, priority
    (normal|low), reply_to (the waiting gateway's channel, or ""), webhook,
    state (IN_QUEUE|IN_PROGRESS|COMPLETED), created_ms, started_ms,
    completed_ms, runner, attempts, status (HTTP), result_content_type,
    result_body, error, error_type, inference_ms, start_deadline_ms,
    no_retry, cancel_requested, webhook_state (pending|delivered|failed),
    webhook_attempts, webhook_last_error, caller (the owner of the key
    that submitted it, "" for a call without key to a public app).

    Channels: kiln:wake (message: app name; a request was queued),
    kiln:changed (message: app name; its record changed: deploy, scale,
    rollback, delete; the broker reads it again),
    kiln:answer:{gateway_id} (message: a sync request completed: its
    answer, or its id for a big result; kiln_scripts.h),
    kiln:cancel (message: request id; its client cancelled it while it ran).
    =========================================================================
*/
#ifndef KILN_KEYS_H_INCLUDED
#define KILN_KEYS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#define KILN_KEY_APPS       "kiln:apps"
#define KILN_KEY_SEQ        "kiln:seq"
#define KILN_KEY_HEADSEQ    "kiln:headseq"
#define KILN_KEY_INFLIGHT   "kiln:inflight"
#define KILN_KEY_RUNNERS    "kiln:runners"
#define KILN_KEY_WORKERS    "kiln:workers"
#define KILN_KEY_STATS_PREFIX "kiln:stats:"
#define KILN_KEY_DEADLINES  "kiln:deadlines"
#define KILN_KEY_WEBHOOKS   "kiln:webhooks"
#define KILN_CHANNEL_CANCEL "kiln:cancel"
#define KILN_CHANNEL_WAKE   "kiln:wake"
#define KILN_CHANNEL_CHANGED "kiln:changed"
//  A gateway's reply channel: kiln:answer:{gateway_id}. complete() sends
//  the answer itself only on channels so named (a gateway from before,
//  on kiln:done:{id}, hears the id alone).
#define KILN_CHANNEL_ANSWER_PREFIX "kiln:answer:"
#define KILN_KEY_REQ_PREFIX "kiln:req:"
#define KILN_KEY_FILE_PREFIX "kiln:file:"
#define KILN_KEY_APIKEYS    "kiln:apikeys"
#define KILN_KEY_SIGNING_KEY "kiln:signing_key"

//  Longest owner or app name part; a full name is owner/app.
#define KILN_NAME_MAX 63

//  A key, built into a fixed buffer: `kiln_key_t k = kiln_key_queue (app);
//  redisCommand (c, "ZCARD %s", k.s);`. Inputs are validated names and
//  ids, so a key always fits; an over-long input yields an empty key.
typedef struct {
    char s [192];
} kiln_key_t;

kiln_key_t kiln_key_app (const char *app);
kiln_key_t kiln_key_revisions (const char *app);
kiln_key_t kiln_key_artifact (const char *sha256_hex);
kiln_key_t kiln_key_queue (const char *app);
kiln_key_t kiln_key_request (const char *request_id);
kiln_key_t kiln_key_logs (const char *request_id);
kiln_key_t kiln_key_file (const char *file_id);
kiln_key_t kiln_key_reply_channel (const char *gateway_id);
//  kiln:logs:{app}, a stream: every log line of the app's runners
//  (a request's handler lines and the runners' own output).
kiln_key_t kiln_key_app_logs (const char *app);
//  kiln:apikey:{id}, an API key's hash (kiln_auth.h): never its secret.
kiln_key_t kiln_key_apikey (const char *key_id);
//  kiln:app:{app}:secrets, a hash: the app's secrets (never answered).
kiln_key_t kiln_key_app_secrets (const char *app);

//  An owner or app name part: 1..KILN_NAME_MAX of [a-z0-9_-], starting
//  with a letter or digit.
bool kiln_name_part_valid (const char *part, size_t len);

//  "owner/app", both parts valid.
bool kiln_app_name_valid (const char *name);

//  An id as kiln makes them (UUID v4, lower-case hex with dashes) or a
//  SHA-256 in hex: only [0-9a-f-], 1..64 characters.
bool kiln_id_valid (const char *id);

void kiln_keys_test (bool verbose);

#endif
