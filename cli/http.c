/*  =========================================================================
    http — the CLI's client for the gateway (libcurl)

    A thin layer over one curl easy handle, reused across calls so that
    `kiln up` deploying several examples keeps one connection open.
    =========================================================================
*/
#include "http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Connecting to a local or LAN gateway is quick; longer means it is not
//  there, and the user should hear so rather than wait.
#define CONNECT_TIMEOUT_MS 5000

//  See kiln_http_last_status: one blocking request at a time per process.
static long s_last_status = -1;

long
kiln_http_last_status (void)
{
    return s_last_status;
}

struct _kiln_http_t {
    CURL *curl;
    char *base;                     //  no trailing slash
    char *auth_header;              //  "Authorization: Key ..." or NULL
    long timeout_ms;
};

typedef struct {
    char *data;
    size_t size;
    size_t capacity;
} s_buffer_t;

static size_t
s_write (char *ptr, size_t size, size_t nmemb, void *userdata)
{
    s_buffer_t *buffer = (s_buffer_t *) userdata;
    size_t bytes = size * nmemb;
    if (buffer->size + bytes + 1 > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 4096;
        while (capacity < buffer->size + bytes + 1)
            capacity *= 2;
        char *data = (char *) realloc (buffer->data, capacity);
        if (!data)
            return 0;               //  curl then fails with CURLE_WRITE_ERROR
        buffer->data = data;
        buffer->capacity = capacity;
    }
    memcpy (buffer->data + buffer->size, ptr, bytes);
    buffer->size += bytes;
    buffer->data [buffer->size] = 0;
    return bytes;
}

kiln_http_t *
kiln_http_new (const char *base_url, const char *key)
{
    if (!base_url || !*base_url)
        return NULL;
    kiln_http_t *self = (kiln_http_t *) calloc (1, sizeof (kiln_http_t));
    if (!self)
        return NULL;
    self->base = strdup (base_url);
    self->curl = curl_easy_init ();
    if (key && *key && asprintf (&self->auth_header, "Authorization: Key %s", key) < 0)
        self->auth_header = NULL;
    if (!self->base || !self->curl || (key && *key && !self->auth_header)) {
        kiln_http_destroy (&self);
        return NULL;
    }
    size_t len = strlen (self->base);
    while (len > 0 && self->base [len - 1] == '/')
        self->base [--len] = 0;
    return self;
}

void
kiln_http_destroy (kiln_http_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_http_t *self = *self_p;
    if (self->curl)
        curl_easy_cleanup (self->curl);
    free (self->base);
    free (self->auth_header);
    free (self);
    *self_p = NULL;
}

const char *
kiln_http_base (kiln_http_t *self)
{
    return self->base;
}

void
kiln_http_set_timeout_ms (kiln_http_t *self, long timeout_ms)
{
    self->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

//  Why curl got no answer, in the words of the socket error when there
//  is one ("connection refused"), else curl's own.
static char *
s_unreachable (kiln_http_t *self, CURLcode code, const char *curl_message)
{
    long os_errno = 0;
    curl_easy_getinfo (self->curl, CURLINFO_OS_ERRNO, &os_errno);
    char reason [256];
    if (code == CURLE_OPERATION_TIMEDOUT)
        snprintf (reason, sizeof reason, "timed out");
    else
    if (code == CURLE_COULDNT_RESOLVE_HOST)
        snprintf (reason, sizeof reason, "unknown host");
    else
    if (os_errno)
        snprintf (reason, sizeof reason, "%s", strerror ((int) os_errno));
    else
        snprintf (reason, sizeof reason, "%s",
                  curl_message && *curl_message ? curl_message : curl_easy_strerror (code));
    reason [0] = (char) tolower ((unsigned char) reason [0]);
    char *error = NULL;
    if (asprintf (&error, "cannot reach the gateway at %s (%s)", self->base, reason) < 0)
        error = NULL;
    return error;
}

int
kiln_http_request (kiln_http_t *self, const char *method, const char *path,
                   const char *content_type, const void *body, size_t size,
                   kiln_http_response_t *response, char **error)
{
    memset (response, 0, sizeof *response);
    *error = NULL;
    char *url = NULL;
    if (asprintf (&url, "%s%s", self->base, path) < 0) {
        *error = strdup ("out of memory");
        return -1;
    }
    CURL *curl = self->curl;
    curl_easy_reset (curl);
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (curl, CURLOPT_CONNECTTIMEOUT_MS, (long) CONNECT_TIMEOUT_MS);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, self->timeout_ms);
    curl_easy_setopt (curl, CURLOPT_USERAGENT, "kiln-cli");

    struct curl_slist *headers = NULL;
    //  evhttp answers "Expect: 100-continue" late or not at all on some
    //  paths; uploads are small enough to send at once.
    headers = curl_slist_append (headers, "Expect:");
    if (self->auth_header)
        headers = curl_slist_append (headers, self->auth_header);
    char *content_type_header = NULL;
    if (body && content_type
    &&  asprintf (&content_type_header, "Content-Type: %s", content_type) >= 0)
        headers = curl_slist_append (headers, content_type_header);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);

    if (strcmp (method, "GET") == 0)
        curl_easy_setopt (curl, CURLOPT_HTTPGET, 1L);
    else {
        curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
        if (body || strcmp (method, "POST") == 0 || strcmp (method, "PUT") == 0) {
            curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body ? (const char *) body : "");
            curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) (body ? size : 0));
        }
    }
    s_buffer_t buffer = { NULL, 0, 0 };
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &buffer);
    char curl_message [CURL_ERROR_SIZE] = "";
    curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, curl_message);

    CURLcode code = curl_easy_perform (curl);
    int rc = 0;
    s_last_status = 0;
    if (code == CURLE_OK) {
        curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &response->status);
        s_last_status = response->status;
        const char *type = NULL;
        curl_easy_getinfo (curl, CURLINFO_CONTENT_TYPE, &type);
        response->content_type = strdup (type ? type : "");
        response->body = buffer.data ? buffer.data : strdup ("");
        response->size = buffer.size;
        buffer.data = NULL;
        if (!response->content_type || !response->body) {
            kiln_http_response_reset (response);
            *error = strdup ("out of memory");
            rc = -1;
        }
    }
    else {
        *error = s_unreachable (self, code, curl_message);
        rc = -1;
    }
    free (buffer.data);
    curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all (headers);
    free (content_type_header);
    free (url);
    return rc;
}

void
kiln_http_response_reset (kiln_http_response_t *response)
{
    free (response->body);
    free (response->content_type);
    memset (response, 0, sizeof *response);
}

char *
kiln_http_error_detail (const kiln_http_response_t *response)
{
    char *detail = NULL;
    json_t *json = response->body ? json_loadb (response->body, response->size, 0, NULL) : NULL;
    json_t *value = json_is_object (json) ? json_object_get (json, "detail") : NULL;
    if (json_is_string (value))
        detail = strdup (json_string_value (value));
    else
    if (value && !json_is_null (value))
        detail = json_dumps (value, JSON_COMPACT);
    json_decref (json);
    if (detail)
        return detail;

    //  Not one of kiln's errors (a proxy in between?): show the start of
    //  what came back, on one line.
    char first [120] = "";
    if (response->body) {
        size_t i = 0;
        for (; i < sizeof first - 1 && i < response->size; i++) {
            char c = response->body [i];
            if (c == '\n' || c == '\r')
                break;
            first [i] = c;
        }
        first [i] = 0;
    }
    if (asprintf (&detail, "the gateway answered HTTP %ld%s%s",
                  response->status, *first ? ": " : "", first) < 0)
        detail = NULL;
    return detail;
}

int
kiln_http_json (kiln_http_t *self, const char *method, const char *path,
                json_t *body, json_t **answer, char **error)
{
    *answer = NULL;
    *error = NULL;
    char *text = NULL;
    if (body) {
        text = json_dumps (body, JSON_COMPACT);
        if (!text) {
            *error = strdup ("out of memory");
            return -1;
        }
    }
    kiln_http_response_t response;
    int rc = kiln_http_request (self, method, path, "application/json",
                                text, text ? strlen (text) : 0, &response, error);
    free (text);
    if (rc)
        return -1;
    if (response.status < 200 || response.status > 299) {
        *error = kiln_http_error_detail (&response);
        kiln_http_response_reset (&response);
        return -1;
    }
    if (response.size > 0) {
        json_error_t json_error;
        *answer = json_loadb (response.body, response.size, 0, &json_error);
        if (!*answer) {
            if (asprintf (error, "the gateway's answer to %s %s is not JSON (%s)",
                          method, path, json_error.text) < 0)
                *error = NULL;
            kiln_http_response_reset (&response);
            return -1;
        }
    }
    kiln_http_response_reset (&response);
    return 0;
}
