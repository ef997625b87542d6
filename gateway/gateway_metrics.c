/*  =========================================================================
    gateway_metrics — GET /metrics, in Prometheus text format 0.0.4

    | takes             | sends to Redis                          | answers                    |
    |-------------------|-----------------------------------------|----------------------------|
    | GET /metrics      | EVAL METRICS (kiln_scripts.h) : apps, | 200 text/plain; version=   |
    |                   | queue depths, stats, runners, workers   | 0.0.4: the families below  |
    | (Redis down, or   | nothing                                 | 200 with this gateway's    |
    |  its answer bad)  |                                         | own counters only          |

    Families: this gateway's own counters (kiln_gateway_*, from memory),
    then the platform's, read in one script so a scrape costs one round
    trip whatever the number of apps:

    | family                                  | type      | from                         |
    |-----------------------------------------|-----------|------------------------------|
    | kiln_runners{app,state}                 | gauge     | kiln:runners (every state of |
    |                                         |           | every app, 0 when none)      |
    | kiln_queue_depth{app}                   | gauge     | ZCARD kiln:queue:{app}       |
    | kiln_requests_total{app,status}         | counter   | kiln:stats:{app} status:{n}  |
    | kiln_request_duration_seconds{app}      | histogram | kiln:stats:{app} in:{ms}     |
    |                                         |           | (summed into le buckets),    |
    |                                         |           | latency_sum_ms, _count       |
    | kiln_worker_slots{worker,machine_type}  | gauge     | kiln:workers slots           |
    | kiln_worker_slots_used{worker,...}      | gauge     | kiln:workers used (0 for a   |
    |                                         |           | type offered, none in use)   |
    | kiln_worker_draining{worker}            | gauge     | kiln:workers draining        |

    The request counts and latencies cover every gateway and broker: the
    scripts that end a request count it in Redis. A request's duration is
    from its submission to its completion.
    =========================================================================
*/
#include "gateway_internal.h"
#include "kiln_scripts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

//  More buckets than KILN_STATS_BUCKETS_MS will ever list.
#define BUCKETS_MAX 64

//  A runner's states as kiln:runners has them (the broker's view).
static const char *s_runner_states [] = { "starting", "ready", "busy", "draining", NULL };

//  A label value, escaped as the text format wants: \, " and newline.
static void
s_label (FILE *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            fputs ("\\\\", out);
        else
        if (*p == '"')
            fputs ("\\\"", out);
        else
        if (*p == '\n')
            fputs ("\\n", out);
        else
            fputc (*p, out);
    }
}

static void
s_family (FILE *out, const char *name, const char *type, const char *help)
{
    fprintf (out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

//  A field of a HGETALL answer (field, value, ...) as a number; 0 when
//  missing or not a number.
static long long
s_stat (const redisReply *hash, const char *field)
{
    for (size_t i = 0; i + 1 < hash->elements; i += 2)
        if (strcmp (kiln_reply_str (hash->element [i]), field) == 0)
            return strtoll (kiln_reply_str (hash->element [i + 1]), NULL, 10);
    return 0;
}

//  The latency buckets of kiln:stats:{app}, in ms, from their Lua list.
static size_t
s_buckets (long buckets [BUCKETS_MAX])
{
    size_t count = 0;
    const char *p = KILN_STATS_BUCKETS_MS;
    while (*p && count < BUCKETS_MAX) {
        char *end = NULL;
        long value = strtol (p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        buckets [count++] = value;
        p = end;
    }
    return count;
}

//  The broker's JSON values (HVALS) parsed; entries that are not JSON
//  objects are NULL. Caller frees with s_views_destroy.
static json_t **
s_views (const redisReply *values)
{
    json_t **views = calloc (values->elements + 1, sizeof *views);
    for (size_t i = 0; views && i < values->elements; i++) {
        const redisReply *value = values->element [i];
        if (value->type != REDIS_REPLY_STRING)
            continue;
        views [i] = json_loadb (value->str, value->len, 0, NULL);
        if (!json_is_object (views [i])) {
            json_decref (views [i]);
            views [i] = NULL;
        }
    }
    return views;
}

static void
s_views_destroy (json_t ***views_p, size_t count)
{
    json_t **views = *views_p;
    for (size_t i = 0; views && i < count; i++)
        json_decref (views [i]);
    free (views);
    *views_p = NULL;
}

static const char *
s_view_str (json_t *view, const char *key)
{
    const char *value = json_string_value (json_object_get (view, key));
    return value ? value : "";
}

static int
s_compare_names (const void *a, const void *b)
{
    return strcmp (*(const char * const *) a, *(const char * const *) b);
}

//  kiln_runners{app,state}: every state of every app that is deployed
//  or still has runners (a deleted app's draining ones), 0 when none.
static void
s_runner_gauges (FILE *out, const redisReply *apps, json_t **runners, size_t runner_count)
{
    size_t app_count = apps->elements / KILN_METRICS_APP_FIELDS;
    const char **names = calloc (app_count + runner_count + 1, sizeof *names);
    if (!names)
        return;
    size_t count = 0;
    for (size_t i = 0; i < apps->elements; i += KILN_METRICS_APP_FIELDS)
        names [count++] = kiln_reply_str (apps->element [i]);
    for (size_t i = 0; i < runner_count; i++)
        if (runners [i] && *s_view_str (runners [i], "app"))
            names [count++] = s_view_str (runners [i], "app");
    qsort (names, count, sizeof *names, s_compare_names);

    s_family (out, "kiln_runners", "gauge", "Runners of each app, by state (the broker's view).");
    for (size_t i = 0; i < count; i++) {
        if (i > 0 && strcmp (names [i], names [i - 1]) == 0)
            continue;
        for (int state = 0; s_runner_states [state]; state++) {
            long long found = 0;
            for (size_t r = 0; r < runner_count; r++)
                if (runners [r]
                &&  strcmp (s_view_str (runners [r], "app"), names [i]) == 0
                &&  strcmp (s_view_str (runners [r], "state"), s_runner_states [state]) == 0)
                    found++;
            fputs ("kiln_runners{app=\"", out);
            s_label (out, names [i]);
            fprintf (out, "\",state=\"%s\"} %lld\n", s_runner_states [state], found);
        }
    }
    free (names);
}

static void
s_app_families (FILE *out, const redisReply *apps)
{
    s_family (out, "kiln_queue_depth", "gauge", "Requests waiting in each app's queue.");
    for (size_t i = 0; i < apps->elements; i += KILN_METRICS_APP_FIELDS) {
        fputs ("kiln_queue_depth{app=\"", out);
        s_label (out, kiln_reply_str (apps->element [i]));
        fprintf (out, "\"} %lld\n", apps->element [i + 1]->integer);
    }

    s_family (out, "kiln_requests_total", "counter",
              "Completed requests of each app, by HTTP status.");
    for (size_t i = 0; i < apps->elements; i += KILN_METRICS_APP_FIELDS) {
        const redisReply *stats = apps->element [i + 2];
        for (size_t f = 0; f + 1 < stats->elements; f += 2) {
            const char *field = kiln_reply_str (stats->element [f]);
            if (strncmp (field, "status:", 7) != 0 || !field [7])
                continue;
            fputs ("kiln_requests_total{app=\"", out);
            s_label (out, kiln_reply_str (apps->element [i]));
            fputs ("\",status=\"", out);
            s_label (out, field + 7);
            fprintf (out, "\"} %lld\n", strtoll (kiln_reply_str (stats->element [f + 1]), NULL, 10));
        }
    }

    long buckets [BUCKETS_MAX];
    size_t bucket_count = s_buckets (buckets);
    s_family (out, "kiln_request_duration_seconds", "histogram",
              "Time from submission to completion of each app's requests.");
    for (size_t i = 0; i < apps->elements; i += KILN_METRICS_APP_FIELDS) {
        const char *app = kiln_reply_str (apps->element [i]);
        const redisReply *stats = apps->element [i + 2];
        long long total = s_stat (stats, "latency_count");
        //  complete() counts each request once, in:{b} of the first
        //  bucket it fits (one HINCRBY); Prometheus wants le:{b}, every
        //  request at most b, so the counts add up.
        long long cumulative = 0;
        for (size_t b = 0; b < bucket_count; b++) {
            char field [32];
            snprintf (field, sizeof field, "in:%ld", buckets [b]);
            cumulative += s_stat (stats, field);
            fputs ("kiln_request_duration_seconds_bucket{app=\"", out);
            s_label (out, app);
            fprintf (out, "\",le=\"%g\"} %lld\n", buckets [b] / 1000.0, cumulative);
        }
        fputs ("kiln_request_duration_seconds_bucket{app=\"", out);
        s_label (out, app);
        fprintf (out, "\",le=\"+Inf\"} %lld\n", total);
        fputs ("kiln_request_duration_seconds_sum{app=\"", out);
        s_label (out, app);
        fprintf (out, "\"} %.3f\n", s_stat (stats, "latency_sum_ms") / 1000.0);
        fputs ("kiln_request_duration_seconds_count{app=\"", out);
        s_label (out, app);
        fprintf (out, "\"} %lld\n", total);
    }
}

//  One sample per machine type the worker offers: from its "slots", or
//  (used) from its "used", 0 for a type none of whose slots is in use.
static void
s_worker_slots (FILE *out, const char *name, json_t *worker, bool used)
{
    json_t *counts = json_object_get (worker, used ? "used" : "slots");
    const char *type;
    json_t *offered;
    json_object_foreach (json_object_get (worker, "slots"), type, offered) {
        json_t *count = used ? json_object_get (counts, type) : offered;
        fprintf (out, "%s{worker=\"", name);
        s_label (out, s_view_str (worker, "id"));
        fputs ("\",machine_type=\"", out);
        s_label (out, type);
        fprintf (out, "\"} %" JSON_INTEGER_FORMAT "\n",
                 json_is_integer (count) ? json_integer_value (count) : 0);
    }
}

static void
s_worker_families (FILE *out, json_t **workers, size_t count)
{
    //  A worker is known by its id: one without is no worker to show
    for (size_t i = 0; i < count; i++)
        if (workers [i] && !*s_view_str (workers [i], "id")) {
            json_decref (workers [i]);
            workers [i] = NULL;
        }
    s_family (out, "kiln_worker_slots", "gauge", "Runner slots each worker offers, by machine type.");
    for (size_t i = 0; i < count; i++)
        if (workers [i])
            s_worker_slots (out, "kiln_worker_slots", workers [i], false);
    s_family (out, "kiln_worker_slots_used", "gauge",
              "Runner slots in use on each worker, by machine type.");
    for (size_t i = 0; i < count; i++)
        if (workers [i])
            s_worker_slots (out, "kiln_worker_slots_used", workers [i], true);
    s_family (out, "kiln_worker_draining", "gauge",
              "Whether each worker is draining (1: it takes no new runners).");
    for (size_t i = 0; i < count; i++) {
        if (!workers [i])
            continue;
        fputs ("kiln_worker_draining{worker=\"", out);
        s_label (out, s_view_str (workers [i], "id"));
        fprintf (out, "\"} %d\n", json_is_true (json_object_get (workers [i], "draining")) ? 1 : 0);
    }
}

//  True when the script's answer has the shape its contract promises, so
//  the writers above need not check each element.
static bool
s_answer_valid (const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return false;
    const redisReply *apps = reply->element [0];
    if (apps->type != REDIS_REPLY_ARRAY || apps->elements % KILN_METRICS_APP_FIELDS
    ||  reply->element [1]->type != REDIS_REPLY_ARRAY
    ||  reply->element [2]->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t i = 0; i < apps->elements; i += KILN_METRICS_APP_FIELDS)
        if (apps->element [i]->type != REDIS_REPLY_STRING
        ||  apps->element [i + 1]->type != REDIS_REPLY_INTEGER
        ||  apps->element [i + 2]->type != REDIS_REPLY_ARRAY)
            return false;
    return true;
}

//  Answers with the gateway's own counters, then (reply not NULL) the
//  platform's.
static void
s_reply (kiln_call_t *call, const redisReply *reply)
{
    kiln_gateway_t *self = call->gw;
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream (&text, &size);
    if (!out) {
        kiln_call_error (call, 500, "internal_error", "Out of memory");
        return;
    }
    s_family (out, "kiln_gateway_requests_total", "counter",
              "HTTP answers sent by this gateway, by status code.");
    for (int code = 0; code <= KILN_STATUS_MAX; code++)
        if (self->answered [code])
            fprintf (out, "kiln_gateway_requests_total{code=\"%d\"} %" PRIu64 "\n",
                     code, self->answered [code]);
    s_family (out, "kiln_gateway_pending_sync_calls", "gauge",
              "Sync calls waiting for their result.");
    fprintf (out, "kiln_gateway_pending_sync_calls %zu\n", zhashx_size (self->pending));
    s_family (out, "kiln_gateway_clients_gone_total", "counter",
              "Callers that went away before their answer.");
    fprintf (out, "kiln_gateway_clients_gone_total %" PRIu64 "\n", self->clients_gone);
    s_family (out, "kiln_gateway_redis_up", "gauge",
              "Whether the gateway has its Redis connections.");
    fprintf (out, "kiln_gateway_redis_up %d\n", self->redis_up ? 1 : 0);
    s_family (out, "kiln_gateway_redis_reconnects_total", "counter",
              "Attempts to connect to Redis again.");
    fprintf (out, "kiln_gateway_redis_reconnects_total %" PRIu64 "\n", self->redis_reconnects);

    if (reply) {
        const redisReply *apps = reply->element [0];
        size_t runner_count = reply->element [1]->elements;
        size_t worker_count = reply->element [2]->elements;
        json_t **runners = s_views (reply->element [1]);
        json_t **workers = s_views (reply->element [2]);
        if (runners)
            s_runner_gauges (out, apps, runners, runner_count);
        s_app_families (out, apps);
        if (workers)
            s_worker_families (out, workers, worker_count);
        s_views_destroy (&runners, runner_count);
        s_views_destroy (&workers, worker_count);
    }
    if (fclose (out) != 0 || !text) {
        free (text);
        kiln_call_error (call, 500, "internal_error", "Out of memory");
        return;
    }
    kiln_call_reply (call, 200, METRICS_CONTENT_TYPE, text, size);
    free (text);
}

static void
s_on_metrics (redisAsyncContext *ctx, void *r, void *privdata)
{
    (void) ctx;
    kiln_call_t *call = privdata;
    redisReply *reply = r;
    if (call->req) {
        //  A scrape still gets this gateway's own counters when Redis
        //  fails it: they say why the rest is missing
        bool valid = s_answer_valid (reply);
        if (!valid && reply)
            kiln_log_warn ("metrics: unexpected answer from Redis%s%s",
                           reply->type == REDIS_REPLY_ERROR ? ": " : "",
                           reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        s_reply (call, valid ? reply : NULL);
    }
    kiln_call_unref (&call);
}

void
kiln_gateway_metrics (kiln_call_t *call)
{
    kiln_gateway_t *self = call->gw;
    if (!self->redis_up || !self->cmd) {
        s_reply (call, NULL);
        return;
    }
    //  The queue key prefix, from the one place that names it
    kiln_key_t queue_prefix = kiln_key_queue ("a/a");
    queue_prefix.s [strlen (queue_prefix.s) - 3] = 0;
    kiln_call_redisf (call, s_on_metrics, "EVAL %s 3 %s %s %s %s %s",
                      KILN_SCRIPT_METRICS, KILN_KEY_APPS, KILN_KEY_RUNNERS,
                      KILN_KEY_WORKERS, queue_prefix.s, KILN_KEY_STATS_PREFIX);
}
