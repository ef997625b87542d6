/*  =========================================================================
    sdk — the SDK functions of include/kiln/app.h, as kiln-runner provides
    them to the app it loads

    Apps are built against kiln/app.h alone and link nothing of kiln's:
    the dynamic linker resolves their kiln_* calls to the definitions
    below, which kiln-runner exports (ENABLE_EXPORTS). Every function
    validates what the app gives it, since an app bug must become a clear
    error for its caller, not a malformed message on the wire.
    =========================================================================
*/
#include "sdk.h"
#include "kiln_log.h"
#include "kiln_util.h"

#include <assert.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  What kiln_response_set_body copies when the app gives no type.
#define DEFAULT_BODY_TYPE "application/octet-stream"
#define DEFAULT_FILE_TYPE "application/octet-stream"
#define DEFAULT_FILE_NAME "file"

//  Every string on the wire must fit KILN_MSG_MAX_STRING_BYTES.
#define STRING_MAX_BYTES (KILN_MSG_MAX_STRING_BYTES - 1)

//  The reason setup() gave; only setup() calls kiln_setup_fail, and
//  nothing runs beside setup(), so no lock.
static char s_setup_failure [STRING_MAX_BYTES + 1];
static bool s_setup_failed = false;

//  Ids of the requests whose client cancelled them while this runner
//  holds them. The runner's main thread marks and clears them (CANCEL
//  from the broker, then the RESULT); handlers on executor threads ask,
//  any number at once. Few entries: at most what the runner holds.
static pthread_mutex_t s_cancel_lock = PTHREAD_MUTEX_INITIALIZER;
static zhashx_t *s_cancelled = NULL;

//  A copy of s cut to at most max bytes, never inside a UTF-8 sequence,
//  so the line stays valid text for the JSON it ends up in.
static char *
s_strdup_cut (const char *s, size_t max)
{
    size_t len = strlen (s);
    if (len > max) {
        len = max;
        while (len > 0 && ((unsigned char) s [len] & 0xC0) == 0x80)
            len--;
    }
    return strndup (s, len);
}

//  -------------------------------------------------------------------------
//  The runner's side

kiln_request_t *
kiln_sdk_request_new (const kiln_msg_t *msg, const char *public_url,
                      kiln_sdk_emit_fn *emit, void *emit_arg)
{
    kiln_request_t *self = calloc (1, sizeof (kiln_request_t));
    if (!self)
        return NULL;
    pthread_mutex_init (&self->lock, NULL);
    self->id = strdup (msg->request_id? msg->request_id: "");
    self->path = strdup (msg->path? msg->path: "/");
    self->content_type = strdup (msg->content_type? msg->content_type: "");
    //  The NUL lets apps hand the body to a JSON parser as a string.
    self->body = malloc (msg->body_size + 1);
    self->public_url = public_url? public_url: "";
    self->emit = emit;
    self->emit_arg = emit_arg;
    if (!self->id || !self->path || !self->content_type || !self->body) {
        kiln_sdk_request_destroy (&self);
        return NULL;
    }
    if (msg->body_size)
        memcpy (self->body, msg->body, msg->body_size);
    self->body [msg->body_size] = '\0';
    self->body_size = msg->body_size;
    return self;
}

void
kiln_sdk_request_destroy (kiln_request_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_request_t *self = *self_p;
    for (size_t i = 0; i < self->file_count; i++) {
        free (self->files [i].id);
        free (self->files [i].content_type);
        free (self->files [i].file_name);
        free (self->files [i].data);
    }
    for (size_t i = 0; i < self->url_count; i++)
        free (self->urls [i]);
    free (self->files);
    free (self->urls);
    free (self->id);
    free (self->path);
    free (self->content_type);
    free (self->body);
    pthread_mutex_destroy (&self->lock);
    free (self);
    *self_p = NULL;
}

kiln_response_t *
kiln_sdk_response_new (void)
{
    kiln_response_t *self = calloc (1, sizeof (kiln_response_t));
    if (!self)
        return NULL;
    self->status = 200;
    self->content_type = strdup ("application/json");
    if (!self->content_type) {
        free (self);
        return NULL;
    }
    return self;
}

void
kiln_sdk_response_destroy (kiln_response_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_response_t *self = *self_p;
    free (self->content_type);
    free (self->body);
    free (self->error);
    free (self->error_type);
    free (self);
    *self_p = NULL;
}

char *
kiln_sdk_error_json (const char *error_type, const char *detail)
{
    json_t *json = json_object ();
    if (!json)
        return NULL;
    //  json_string refuses invalid UTF-8; an app's detail may be anything.
    json_t *detail_json = json_string (detail? detail: "");
    if (!detail_json)
        detail_json = json_string ("(detail was not valid UTF-8)");
    json_object_set_new (json, "detail", detail_json);
    json_t *type_json = json_string (error_type? error_type: "internal_error");
    json_object_set_new (json, "error_type", type_json? type_json: json_string ("internal_error"));
    char *text = json_dumps (json, JSON_COMPACT);
    json_decref (json);
    return text;
}

kiln_msg_t *
kiln_sdk_error_result (const char *request_id, int status,
                       const char *error_type, const char *detail,
                       uint64_t inference_ms)
{
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RESULT);
    if (!msg)
        return NULL;
    msg->request_id = strdup (request_id? request_id: "");
    msg->status = status;
    msg->content_type = strdup ("application/json");
    msg->error = s_strdup_cut (detail? detail: "", STRING_MAX_BYTES);
    msg->error_type = s_strdup_cut (error_type? error_type: "internal_error", STRING_MAX_BYTES);
    msg->inference_ms = inference_ms;
    char *body = kiln_sdk_error_json (error_type, detail);
    if (!msg->request_id || !msg->content_type || !msg->error || !msg->error_type || !body) {
        free (body);
        kiln_msg_destroy (&msg);
        return NULL;
    }
    msg->body = (uint8_t *) body;
    msg->body_size = strlen (body);
    return msg;
}

kiln_msg_t *
kiln_sdk_result (kiln_request_t *req, kiln_response_t *resp, uint64_t inference_ms)
{
    if (resp->status < 100 || resp->status > 599) {
        char detail [128];
        snprintf (detail, sizeof (detail),
                  "the app answered with HTTP status %d, outside 100..599", resp->status);
        return kiln_sdk_error_result (req->id, 500, "runner_server_error", detail, inference_ms);
    }
    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_RESULT);
    if (!msg)
        return NULL;
    msg->request_id = strdup (req->id);
    msg->status = resp->status;
    msg->content_type = strdup (resp->content_type);
    msg->inference_ms = inference_ms;
    if (!msg->request_id || !msg->content_type) {
        kiln_msg_destroy (&msg);
        return NULL;
    }
    if (resp->error) {
        msg->error = resp->error;
        msg->error_type = resp->error_type;
        resp->error = resp->error_type = NULL;
    }
    msg->body = resp->body;
    msg->body_size = resp->body_size;
    resp->body = NULL;
    resp->body_size = 0;

    pthread_mutex_lock (&req->lock);
    msg->files = req->files;
    msg->file_count = req->file_count;
    req->files = NULL;
    req->file_count = req->file_alloc = 0;
    //  The URLs stay with the request: the app may still hold them.
    pthread_mutex_unlock (&req->lock);
    return msg;
}

const char *
kiln_sdk_setup_failure (void)
{
    return s_setup_failed? s_setup_failure: NULL;
}

void
kiln_sdk_setup_reset (void)
{
    s_setup_failed = false;
    s_setup_failure [0] = '\0';
}

//  -------------------------------------------------------------------------
//  The app's side: include/kiln/app.h

const char *
kiln_request_id (const kiln_request_t *req)
{
    return req? req->id: "";
}

const char *
kiln_request_path (const kiln_request_t *req)
{
    return req? req->path: "";
}

const char *
kiln_request_content_type (const kiln_request_t *req)
{
    return req? req->content_type: "";
}

const void *
kiln_request_body (const kiln_request_t *req, size_t *size)
{
    if (!req) {
        if (size)
            *size = 0;
        return "";
    }
    if (size)
        *size = req->body_size;
    return req->body;
}

void
kiln_sdk_cancel_set (const char *request_id, bool cancelled)
{
    if (!request_id)
        return;
    pthread_mutex_lock (&s_cancel_lock);
    if (cancelled) {
        if (!s_cancelled)
            s_cancelled = zhashx_new ();
        //  Out of memory: the handler just runs to its end
        if (s_cancelled)
            zhashx_insert (s_cancelled, request_id, (void *) "");
    }
    else
    if (s_cancelled) {
        zhashx_delete (s_cancelled, request_id);
        if (zhashx_size (s_cancelled) == 0)
            zhashx_destroy (&s_cancelled);
    }
    pthread_mutex_unlock (&s_cancel_lock);
}

bool
kiln_request_cancelled (const kiln_request_t *req)
{
    if (!req || !req->id)
        return false;
    pthread_mutex_lock (&s_cancel_lock);
    bool cancelled = s_cancelled && zhashx_lookup (s_cancelled, req->id) != NULL;
    pthread_mutex_unlock (&s_cancel_lock);
    return cancelled;
}

static const char *
s_log_level (const char *level)
{
    static const char *levels [] = {
        KILN_LOG_DEBUG, KILN_LOG_INFO, KILN_LOG_WARN, KILN_LOG_ERROR, NULL
    };
    if (level)
        for (const char **known = levels; *known; known++)
            if (strcmp (level, *known) == 0)
                return *known;
    if (level && strcmp (level, "WARNING") == 0)
        return KILN_LOG_WARN;
    return KILN_LOG_INFO;
}

void
kiln_request_log (kiln_request_t *req, const char *level, const char *format, ...)
{
    if (!req || !format)
        return;
    char *line = NULL;
    va_list args;
    va_start (args, format);
    int rc = vasprintf (&line, format, args);
    va_end (args);
    if (rc < 0)
        return;

    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_LOG);
    kiln_msg_log_t *entry = calloc (1, sizeof (kiln_msg_log_t));
    if (!msg || !entry) {
        free (line);
        free (entry);
        kiln_msg_destroy (&msg);
        return;
    }
    msg->logs = entry;
    msg->log_count = 1;
    entry->level = strdup (s_log_level (level));
    entry->message = s_strdup_cut (line, STRING_MAX_BYTES);
    entry->source = strdup ("app");
    entry->timestamp_ms = kiln_now_ms ();
    msg->request_id = strdup (req->id);
    kiln_log_debug ("request %s: %s %.200s", req->id, s_log_level (level), line);
    free (line);
    if (!entry->level || !entry->message || !entry->source || !msg->request_id) {
        kiln_msg_destroy (&msg);
        return;
    }
    pthread_mutex_lock (&req->lock);
    if (req->emit)
        req->emit (&msg, req->emit_arg);
    pthread_mutex_unlock (&req->lock);
    kiln_msg_destroy (&msg);
}

const char *
kiln_request_store_file (kiln_request_t *req, const void *data, size_t size,
                         const char *content_type, const char *file_name)
{
    if (!req || (!data && size > 0) || size > KILN_MSG_MAX_BODY_BYTES)
        return NULL;
    if (!content_type || !*content_type)
        content_type = DEFAULT_FILE_TYPE;
    if (!file_name || !*file_name)
        file_name = DEFAULT_FILE_NAME;
    if (strlen (content_type) > STRING_MAX_BYTES || strlen (file_name) > STRING_MAX_BYTES)
        return NULL;

    char id [KILN_UUID_LEN + 1];
    kiln_uuid4 (id);
    char *url = NULL;
    if (asprintf (&url, "%s/files/%s", req->public_url, id) < 0)
        return NULL;
    kiln_msg_file_t file = {
        .id = strdup (id),
        .content_type = strdup (content_type),
        .file_name = strdup (file_name),
        .data = malloc (size? size: 1),
        .size = size
    };
    if (!file.id || !file.content_type || !file.file_name || !file.data) {
        free (file.id);
        free (file.content_type);
        free (file.file_name);
        free (file.data);
        free (url);
        return NULL;
    }
    if (size)
        memcpy (file.data, data, size);

    pthread_mutex_lock (&req->lock);
    bool stored = false;
    //  The URLs outlive the files (those move to the RESULT), so each list
    //  grows on its own; both are capped by what one RESULT may carry.
    if (req->file_count == req->file_alloc && req->file_alloc < KILN_MSG_MAX_ITEMS) {
        size_t alloc = req->file_alloc? req->file_alloc * 2: 4;
        if (alloc > KILN_MSG_MAX_ITEMS)
            alloc = KILN_MSG_MAX_ITEMS;
        kiln_msg_file_t *files = realloc (req->files, alloc * sizeof (kiln_msg_file_t));
        if (files) {
            req->files = files;
            req->file_alloc = alloc;
        }
    }
    if (req->url_count == req->url_alloc && req->url_alloc < KILN_MSG_MAX_ITEMS) {
        size_t alloc = req->url_alloc? req->url_alloc * 2: 4;
        if (alloc > KILN_MSG_MAX_ITEMS)
            alloc = KILN_MSG_MAX_ITEMS;
        char **urls = realloc (req->urls, alloc * sizeof (char *));
        if (urls) {
            req->urls = urls;
            req->url_alloc = alloc;
        }
    }
    if (req->file_count < req->file_alloc && req->url_count < req->url_alloc) {
        req->files [req->file_count++] = file;
        req->urls [req->url_count++] = url;
        stored = true;
    }
    pthread_mutex_unlock (&req->lock);
    if (!stored) {
        free (file.id);
        free (file.content_type);
        free (file.file_name);
        free (file.data);
        free (url);
        return NULL;
    }
    return url;
}

void
kiln_response_set_status (kiln_response_t *resp, int status)
{
    //  Checked when the RESULT is made, so the app's mistake is reported
    //  rather than silently fixed.
    if (resp)
        resp->status = status;
}

int
kiln_response_set_body (kiln_response_t *resp, const char *content_type,
                        const void *data, size_t size)
{
    if (!resp || (!data && size > 0) || size > KILN_MSG_MAX_BODY_BYTES)
        return -1;
    if (!content_type || !*content_type)
        content_type = DEFAULT_BODY_TYPE;
    if (strlen (content_type) > STRING_MAX_BYTES)
        return -1;
    char *type_copy = strdup (content_type);
    uint8_t *copy = malloc (size? size: 1);
    if (!type_copy || !copy) {
        free (type_copy);
        free (copy);
        return -1;
    }
    if (size)
        memcpy (copy, data, size);
    free (resp->content_type);
    free (resp->body);
    resp->content_type = type_copy;
    resp->body = copy;
    resp->body_size = size;
    //  A new body replaces an error set before it.
    free (resp->error);
    free (resp->error_type);
    resp->error = resp->error_type = NULL;
    return 0;
}

int
kiln_response_set_json (kiln_response_t *resp, const char *json)
{
    if (!json)
        return -1;
    return kiln_response_set_body (resp, "application/json", json, strlen (json));
}

int
kiln_response_set_error (kiln_response_t *resp, int status,
                         const char *error_type, const char *detail)
{
    if (!resp)
        return -1;
    if (!error_type || !*error_type)
        error_type = "app_error";
    if (!detail)
        detail = "";
    char *body = kiln_sdk_error_json (error_type, detail);
    char *error = s_strdup_cut (detail, STRING_MAX_BYTES);
    char *type_copy = s_strdup_cut (error_type, STRING_MAX_BYTES);
    int rc = body && error && type_copy? kiln_response_set_json (resp, body): -1;
    free (body);
    if (rc == -1) {
        free (error);
        free (type_copy);
        return -1;
    }
    resp->status = status;
    resp->error = error;
    resp->error_type = type_copy;
    return 0;
}

void
kiln_setup_fail (const char *format, ...)
{
    s_setup_failed = true;
    if (!format) {
        snprintf (s_setup_failure, sizeof (s_setup_failure), "setup failed");
        return;
    }
    va_list args;
    va_start (args, format);
    vsnprintf (s_setup_failure, sizeof (s_setup_failure), format, args);
    va_end (args);
}

//  -------------------------------------------------------------------------
//  Selftest

typedef struct {
    kiln_msg_t *logs [4];
    size_t count;
} s_emitted_t;

static void
s_test_emit (kiln_msg_t **msg_p, void *arg)
{
    s_emitted_t *emitted = (s_emitted_t *) arg;
    if (emitted->count < 4) {
        emitted->logs [emitted->count++] = *msg_p;
        *msg_p = NULL;
    }
}

void
kiln_sdk_test (bool verbose)
{
    printf (" * sdk: ");
    if (verbose)
        printf ("\n");

    kiln_msg_t *msg = kiln_msg_new (KILN_MSG_REQUEST);
    assert (msg);
    msg->request_id = strdup ("0b9d6c1e-0000-4000-8000-000000000001");
    msg->path = strdup ("/sub");
    msg->body = (uint8_t *) strdup ("{\"a\":1}");
    msg->body_size = 7;

    s_emitted_t emitted = { .count = 0 };
    kiln_request_t *req = kiln_sdk_request_new (msg, "http://kiln.test", s_test_emit, &emitted);
    assert (req);
    assert (strcmp (kiln_request_id (req), msg->request_id) == 0);
    assert (strcmp (kiln_request_path (req), "/sub") == 0);
    assert (strcmp (kiln_request_content_type (req), "") == 0);
    size_t size = 0;
    const char *body = kiln_request_body (req, &size);
    assert (size == 7 && strcmp (body, "{\"a\":1}") == 0);

    //  Cancelled once the runner marks it, until it clears the mark;
    //  another request's mark is not ours.
    assert (!kiln_request_cancelled (req));
    assert (!kiln_request_cancelled (NULL));
    kiln_sdk_cancel_set ("0b9d6c1e-0000-4000-8000-000000000002", true);
    assert (!kiln_request_cancelled (req));
    kiln_sdk_cancel_set (msg->request_id, true);
    kiln_sdk_cancel_set (msg->request_id, true);        //  twice: harmless
    assert (kiln_request_cancelled (req));
    kiln_sdk_cancel_set (msg->request_id, false);
    assert (!kiln_request_cancelled (req));
    kiln_sdk_cancel_set ("0b9d6c1e-0000-4000-8000-000000000002", false);
    kiln_sdk_cancel_set ("never-marked", false);
    kiln_sdk_cancel_set (NULL, true);
    assert (!s_cancelled);                              //  freed when empty

    kiln_request_log (req, KILN_LOG_WARN, "step %d of %d", 1, 2);
    kiln_request_log (req, "bogus", "x");
    assert (emitted.count == 2);
    assert (emitted.logs [0]->type == KILN_MSG_LOG);
    assert (strcmp (emitted.logs [0]->request_id, msg->request_id) == 0);
    assert (emitted.logs [0]->log_count == 1);
    assert (strcmp (emitted.logs [0]->logs [0].message, "step 1 of 2") == 0);
    assert (strcmp (emitted.logs [0]->logs [0].level, "WARN") == 0);
    assert (strcmp (emitted.logs [0]->logs [0].source, "app") == 0);
    assert (strcmp (emitted.logs [1]->logs [0].level, "INFO") == 0);

    //  A line longer than the wire allows is cut, not refused.
    char *long_line = malloc (10000);
    memset (long_line, 'x', 9999);
    long_line [9999] = '\0';
    kiln_request_log (req, KILN_LOG_INFO, "%s", long_line);
    free (long_line);
    assert (emitted.count == 3);
    assert (strlen (emitted.logs [2]->logs [0].message) == STRING_MAX_BYTES);
    for (size_t i = 0; i < emitted.count; i++)
        kiln_msg_destroy (&emitted.logs [i]);

    const char *url = kiln_request_store_file (req, "PNG", 3, "image/png", "a.png");
    assert (url);
    assert (strncmp (url, "http://kiln.test/files/", 23) == 0);
    assert (strlen (url) == 23 + KILN_UUID_LEN);
    assert (kiln_request_store_file (req, NULL, 3, NULL, NULL) == NULL);
    assert (kiln_request_store_file (req, "", 0, NULL, NULL));

    kiln_response_t *resp = kiln_sdk_response_new ();
    assert (resp);
    assert (resp->status == 200);
    assert (kiln_response_set_json (resp, "{\"ok\":true}") == 0);
    kiln_msg_t *result = kiln_sdk_result (req, resp, 12);
    assert (result);
    assert (result->type == KILN_MSG_RESULT);
    assert (result->status == 200);
    assert (strcmp (result->content_type, "application/json") == 0);
    assert (result->body_size == 11 && memcmp (result->body, "{\"ok\":true}", 11) == 0);
    assert (result->inference_ms == 12);
    assert (!result->error && !result->error_type);
    assert (result->file_count == 2);
    assert (strcmp (result->files [0].content_type, "image/png") == 0);
    assert (strcmp (result->files [0].file_name, "a.png") == 0);
    assert (result->files [0].size == 3 && memcmp (result->files [0].data, "PNG", 3) == 0);
    assert (strstr (url, result->files [0].id));
    assert (strcmp (result->files [1].content_type, DEFAULT_FILE_TYPE) == 0);
    //  The result must survive the wire.
    size_t frame_size;
    uint8_t *frame = kiln_msg_encode (result, &frame_size);
    assert (frame);
    kiln_msg_t *decoded = kiln_msg_decode (frame, frame_size, NULL);
    assert (decoded);
    assert (decoded->file_count == 2);
    kiln_msg_destroy (&decoded);
    free (frame);
    kiln_msg_destroy (&result);
    kiln_sdk_response_destroy (&resp);

    //  An error the app chose: passed through with error and error_type.
    resp = kiln_sdk_response_new ();
    assert (kiln_response_set_error (resp, 418, "app_error", "short and \"stout\"") == 0);
    result = kiln_sdk_result (req, resp, 0);
    assert (result->status == 418);
    assert (strcmp (result->error, "short and \"stout\"") == 0);
    assert (strcmp (result->error_type, "app_error") == 0);
    json_t *json = json_loadb ((const char *) result->body, result->body_size, 0, NULL);
    assert (json);
    assert (strcmp (json_string_value (json_object_get (json, "detail")), "short and \"stout\"") == 0);
    assert (strcmp (json_string_value (json_object_get (json, "error_type")), "app_error") == 0);
    json_decref (json);
    assert (result->file_count == 0);
    kiln_msg_destroy (&result);
    kiln_sdk_response_destroy (&resp);

    //  A status no HTTP client understands is the app's bug: 500.
    resp = kiln_sdk_response_new ();
    kiln_response_set_status (resp, 42);
    result = kiln_sdk_result (req, resp, 0);
    assert (result->status == 500);
    assert (strcmp (result->error_type, "runner_server_error") == 0);
    kiln_msg_destroy (&result);

    //  A body replaces an earlier error.
    assert (kiln_response_set_error (resp, 400, NULL, NULL) == 0);
    assert (kiln_response_set_body (resp, NULL, "raw", 3) == 0);
    assert (!resp->error);
    assert (strcmp (resp->content_type, DEFAULT_BODY_TYPE) == 0);
    assert (kiln_response_set_body (resp, "text/plain", NULL, 1) == -1);
    assert (kiln_response_set_json (resp, NULL) == -1);
    kiln_sdk_response_destroy (&resp);

    kiln_sdk_request_destroy (&req);
    assert (!req);
    kiln_msg_destroy (&msg);

    result = kiln_sdk_error_result ("id", 404, "not_found", "No endpoint /x in app", 0);
    assert (result->status == 404);
    assert (strcmp (result->error_type, "not_found") == 0);
    assert (strstr ((const char *) result->body, "\"error_type\":\"not_found\""));
    kiln_msg_destroy (&result);

    kiln_sdk_setup_reset ();
    assert (!kiln_sdk_setup_failure ());
    kiln_setup_fail ("weights %s not found", "w.bin");
    assert (strcmp (kiln_sdk_setup_failure (), "weights w.bin not found") == 0);
    kiln_sdk_setup_reset ();
    assert (!kiln_sdk_setup_failure ());

    printf ("OK\n");
}
