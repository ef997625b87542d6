/*  =========================================================================
    kiln_scripts — the Lua scripts that change a request's state

    Every state change of a request is one of these scripts, so it is
    atomic: a request is queued and recorded together, taken and leased
    together, completed once. Run them through kiln_redis_eval /
    kiln_redis_command_argv, or the gateway's kiln_call_redis*, which send
    EVALSHA and fall back to EVAL on NOSCRIPT. The contracts:

    Every script that ends a request does it through one Lua function,
    complete(), pasted in front of it: the record becomes COMPLETED once,
    leaves its queue, kiln:inflight and kiln:deadlines, its logs get the
    retention, its reply_to channel hears of it (see below); a request with a
    webhook enters the kiln:webhooks outbox (score: when to deliver) and
    its record is kept until the delivery ends; otherwise the record
    expires after the retention. complete() also counts the request in
    kiln:stats:{app}: status:{code}, latency_count, latency_sum_ms and
    in:{b}, b the first bucket of KILN_STATS_BUCKETS_MS whose limit the
    latency (creation to completion) is at most: one HINCRBY, and
    /metrics sums these into Prometheus's cumulative buckets.
    What reply_to hears: on a kiln:answer:{gateway} channel, with a
    result body of at most KILN_DONE_RESULT_MAX bytes, the answer itself,
    as a RESP array of six bulk strings: id, status, content_type, body,
    error, error_type (what a sync call replies, without another round
    trip); with a bigger one, or on any other channel (a gateway from
    before: kiln:done:{gateway}), the id alone (the caller reads the
    record).

    KILN_SCRIPT_SUBMIT — record and queue a request
      KEYS  app, req, queue, seq               (kiln_key_app, _request, _queue, KILN_KEY_SEQ)
      ARGV  id, app, path, content_type, body, priority (normal|low),
            reply_to, webhook, now_ms, start_deadline_ms (0: none),
            no_retry (0|1), caller (the calling key's owner, "" without
            a key; who may read the request besides the app's owner)
      →     -1 if the app is not deployed (nothing written), -2 if the id
            exists already, {-3, max_queue_length} when the app's queue
            is at its manifest's max_queue_length (nothing written), else
            the queue position (requests ahead of it).
            A deadline puts the id in kiln:deadlines. Publishes the app
            name on kiln:wake.

    KILN_SCRIPT_TAKE — give the head of an app's queue to runners
      KEYS  queue, inflight
      ARGV  runner_id, now_ms, lease_deadline_ms, retention_s,
            then more runner ids (one per request to take)
      →     nil when the queue is empty, else {id, path, content_type, body}
            for each request taken, flat and in queue order: the first
            goes to the first runner named, the next to the next, and so
            on (a runner named twice takes two); fewer when the queue runs
            out. Each becomes IN_PROGRESS with a lease in kiln:inflight.
            Ids whose record is gone or no longer IN_QUEUE are skipped;
            one past its start deadline completes with 504
            request_timeout instead.

    KILN_SCRIPT_COMPLETE — record a result, once
      KEYS  req, logs, queue, inflight         (queue: the request's app queue)
      ARGV  id, status, content_type, body, error, error_type,
            now_ms, retention_s, inference_ms, file_count,
            then per file: file_id, content_type, file_name, data,
            then (optional) the runner that must hold it
      →     1 when recorded; 0 when the request was already COMPLETED or
            is unknown, or a runner was named and it is not IN_PROGRESS
            on that runner (a late RESULT: nothing written). Works from IN_QUEUE too (a
            scheduling failure): complete() above. Files expire after
            retention_s.

    KILN_SCRIPT_CANCEL — a client cancels a request
      KEYS  req
      ARGV  id, app (as the URL names it), now_ms, retention_s
      →     "NOT_FOUND" (unknown, or another app's), "ALREADY_COMPLETED",
            "CANCELLED" (it was queued: completed 499 client_cancelled),
            or "CANCELLATION_REQUESTED" (it runs: cancel_requested = 1 in
            the record, the id published on kiln:cancel for the broker to
            tell the runner).

    KILN_SCRIPT_EXPIRE — end queued requests past their start deadline
      KEYS  deadlines                          (KILN_KEY_DEADLINES)
      ARGV  now_ms, retention_s, limit
      →     how many were completed with 504 request_timeout. Ids no
            longer queued just leave kiln:deadlines.

    KILN_SCRIPT_WEBHOOK_CLAIM — take due webhook deliveries
      KEYS  webhooks                           (KILN_KEY_WEBHOOKS)
      ARGV  now_ms, lease_ms, limit
      →     a flat array, 8 entries per delivery: id, webhook url,
            attempts so far, status, result_content_type, result_body,
            error, error_type. Each claimed id is re-scored to now + lease,
            so a deliverer that dies mid-delivery hands it on after the
            lease, and two deliverers never hold the same one.

    KILN_SCRIPT_WEBHOOK_LEASE — move a claimed delivery's lease
      KEYS  webhooks
      ARGV  id, held score (the lease we hold), new score
      →     1 when moved; 0 when we no longer hold it (it ran out and
            another deliverer may have claimed it): a compare-and-set,
            so a lost lease is never taken back.

    KILN_SCRIPT_WEBHOOK_DONE — the outcome of one delivery
      KEYS  req, webhooks
      ARGV  id, outcome (delivered|failed|retry), next_ms, retention_s,
            last_error
      →     1, or 0 when the record is gone. retry: attempts + 1, due
            again at next_ms. delivered / failed: leaves the outbox,
            webhook_state set, the record and its logs expire after
            retention_s.

    KILN_SCRIPT_REQUEUE — a request whose runner is lost goes back to the
      head of its app's queue, up to a retry limit
      KEYS  req
      ARGV  id, now_ms, retry_limit, count_attempt (0|1), retention_s
            (default 3600), on_limit ("fail", the default, or "keep")
      →     1: back IN_QUEUE at the head of its queue (before every request
            of its priority band that was not re-queued; the latest
            re-queued first), out of kiln:inflight, runner and started_ms
            cleared, start_deadline_ms 0 (it was met), a wake published.
            0: completed here instead: 499 client_cancelled when its
            client cancelled it while it ran; else, when count_attempt is
            1 and no_retry is 1 or attempts (runs so far) >= retry_limit,
            503 runner_disconnected with kiln's JSON error body.
            -1: not IN_PROGRESS (unknown, queued or completed already):
            nothing written. -2: on_limit "keep" and out of retries:
            nothing written, so the caller records the runner's own answer.
            count_attempt 0 (the runner handed the request back before a
            handler started it) gives the attempt back (attempts - 1),
            and the request is never failed for retries or no_retry: it
            has not run. Queue score: band·2^52 - INCR kiln:headseq.

    KILN_SCRIPT_APP_STATUS — the broker's notes on an app
      KEYS  app                             (kiln_key_app)
      ARGV  field, value, ...               (failed_starts, last_error,
                                             last_error_ms)
      →     1 written, or 0 when the app is not deployed (nothing written:
            a deleted app's hash is never brought back). The revision is
            not bumped.

    KILN_SCRIPT_LOG — append a request's log lines to it and its app's stream
      KEYS  req, logs, app, app_logs
      ARGV  runner_id (the runner that must hold it; "" for any state but
            COMPLETED), maxlen, n, then n lines (JSON) for the request's
            list, then KILN_APP_LOG_LINE_ARGS per line for the app's
            stream as KILN_SCRIPT_APP_LOG takes them (none: list only)
      →     n, the lines appended; 0 when the request is unknown,
            COMPLETED, or not IN_PROGRESS on the runner named (a late line
            never resurrects an expired record, nor lands in another
            run's log). The stream lines are written only while the app
            is deployed.

    The app registry changes the same way:

    KILN_SCRIPT_DEPLOY — a new revision of an app
      KEYS  app, apps, artifact, revisions  (kiln_key_app, KILN_KEY_APPS, kiln_key_artifact,
                                             kiln_key_revisions)
      ARGV  name, artifact sha256, manifest (compact JSON), now_ms
      →     -1 if the artifact is not stored (nothing written), else the
            new revision: latest_revision + 1 (1 for a first deploy), so
            a deploy after a rollback never reuses a number. Stores it in
            the revisions hash as {revision, artifact, manifest, created_ms}
            and publishes the name on kiln:changed so the broker reads it again.

    KILN_SCRIPT_UNDEPLOY — delete an app
      KEYS  app, apps[, revisions]
      ARGV  name
      →     0 if the app was not deployed, else 1. Deletes the revisions
            too when given, and the app's secrets (kiln:app:{app}:secrets). Publishes the name on kiln:changed (the broker
            retires its runners).

    KILN_SCRIPT_ROLLBACK — make a stored revision the current one
      KEYS  app, revisions                  (kiln_key_app, kiln_key_revisions)
      ARGV  name, revision, now_ms
      →     -1 unknown app, -2 unknown revision (nothing written), else the
            revision. Sets the app's revision, artifact, manifest and
            updated_ms (latest_revision stays) and publishes the name on
            kiln:changed: the broker sends new requests to runners of that
            revision only and retires the others when idle.

    KILN_SCRIPT_REQUEST_SHOW — a request record for people, in one step
      KEYS  req, logs                       (kiln_key_request, kiln_key_logs)
      ARGV  queue key prefix ("kiln:queue:")
      →     {} when unknown, else the fields of KILN_REQUEST_SHOW_FIELDS
            (nil when missing), then the queue rank (nil unless IN_QUEUE),
            then every log line.

    KILN_SCRIPT_SCALE — change an app's live scale overrides
      KEYS  app                                (kiln_key_app)
      ARGV  name, reset (0|1), then min_concurrency, max_concurrency,
            concurrency_buffer, keep_alive: each "" (leave as it is),
            "-" (drop the override) or a non-negative integer
      →     {-1} when the app is not deployed (nothing written);
            {-2, min, max} when the resulting effective min_concurrency
            would exceed max_concurrency (nothing written);
            else {1, then the app's KILN_APP_FIELDS}. The overrides
            live in the app hash's `scale` field as JSON (with reset, the
            old ones are dropped first; with none left the field goes).
            Publishes the name on kiln:changed so the broker applies them.

    KILN_SCRIPT_LIST_APPS — every deployed app, read in one step
      KEYS  apps                               (KILN_KEY_APPS)
      →     a flat array, KILN_APP_FIELD_COUNT entries per app (in
            the order of KILN_APP_FIELDS, nil for a missing field),
            sorted by name. Names whose hash is gone are skipped.

    KILN_SCRIPT_METRICS — what /metrics shows, read in one step
      KEYS  apps, runners, workers             (KILN_KEY_APPS, _RUNNERS, _WORKERS)
      ARGV  queue key prefix, stats key prefix
      →     {apps, runners, workers}: apps is a flat array, three entries
            per deployed app (sorted by name): name, queue depth (ZCARD),
            the stats hash (HGETALL: a flat field, value array); runners
            and workers are the JSON values of their hashes (HVALS).

    KILN_SCRIPT_APP_LOG — append lines to an app's log stream
      KEYS  app, app_logs                      (kiln_key_app, kiln_key_app_logs)
      ARGV  maxlen, then KILN_APP_LOG_LINE_ARGS per line: ts (ISO-8601),
            level, source, message, runner_id, request_id, revision
      →     lines appended (XADD MAXLEN ~ maxlen, fields named as the
            arguments; an empty one but message is left out); 0 when the
            app is not deployed (a deleted app's stream is never brought
            back by a late line).
    =========================================================================
*/
#ifndef KILN_SCRIPTS_H_INCLUDED
#define KILN_SCRIPTS_H_INCLUDED

#include <stdbool.h>

extern const char *KILN_SCRIPT_SUBMIT;
extern const char *KILN_SCRIPT_TAKE;
extern const char *KILN_SCRIPT_COMPLETE;
extern const char *KILN_SCRIPT_LOG;
extern const char *KILN_SCRIPT_CANCEL;
extern const char *KILN_SCRIPT_EXPIRE;
extern const char *KILN_SCRIPT_WEBHOOK_CLAIM;
extern const char *KILN_SCRIPT_WEBHOOK_DONE;
extern const char *KILN_SCRIPT_WEBHOOK_LEASE;
extern const char *KILN_SCRIPT_REQUEUE;
extern const char *KILN_SCRIPT_APP_STATUS;

//  The detail of a 504 request_timeout for a request whose start deadline
//  (X-Fal-Request-Timeout) passed before it ran; what tells it apart from
//  one that ran past its app's request_timeout (same error_type), for the
//  gateway's X-Fal-Request-Timeout-Type: user.
#define KILN_DETAIL_NOT_STARTED "Request did not start within its timeout"

//  The largest result body that complete() publishes on reply_to with
//  the rest of the answer (above).
#define KILN_DONE_RESULT_MAX 16384

//  Latency histogram buckets (ms) of kiln:stats:{app}, as Lua list text.
#define KILN_STATS_BUCKETS_MS "5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000"

//  Entries per delivery in KILN_SCRIPT_WEBHOOK_CLAIM's answer.
#define KILN_WEBHOOK_CLAIM_FIELDS 8
extern const char *KILN_SCRIPT_DEPLOY;
extern const char *KILN_SCRIPT_UNDEPLOY;
extern const char *KILN_SCRIPT_LIST_APPS;
extern const char *KILN_SCRIPT_SCALE;
extern const char *KILN_SCRIPT_METRICS;
extern const char *KILN_SCRIPT_ROLLBACK;
extern const char *KILN_SCRIPT_REQUEST_SHOW;
extern const char *KILN_SCRIPT_APP_LOG;

//  Arguments per line of KILN_SCRIPT_APP_LOG, and the most lines an
//  app's log stream keeps (XADD MAXLEN ~).
#define KILN_APP_LOG_LINE_ARGS 7
#define KILN_APP_LOG_MAXLEN 10000

//  What KILN_SCRIPT_REQUEST_SHOW answers first, in this order.
#define KILN_REQUEST_SHOW_FIELDS \
    "id app path state status error error_type priority created_ms started_ms " \
    "completed_ms attempts runner"
#define KILN_REQUEST_SHOW_FIELD_COUNT 13

//  What an app answer is built from, in this order: HMGET arguments
//  (KILN_SCRIPT_LIST_APPS, KILN_SCRIPT_SCALE).
#define KILN_APP_FIELDS \
    "name revision artifact manifest updated_ms scale failed_starts last_error last_error_ms"
#define KILN_APP_FIELD_COUNT 9

//  Entries per app in KILN_SCRIPT_METRICS's first array.
#define KILN_METRICS_APP_FIELDS 3

//  Queue score of a request: bands keep low priority behind normal; seq
//  keeps order within a band. 2^52 leaves seq exact in a double.
#define KILN_QUEUE_BAND_SPAN 4503599627370496.0  //  2^52

void kiln_scripts_test (bool verbose);

#endif
