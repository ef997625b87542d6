/*  =========================================================================
    inputs — the gateway's parsers of request headers and query values
    (see inputs.h)
    =========================================================================
*/
#include "inputs.h"

#include <assert.h>
#include <ctype.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool
kiln_input_is_json_type (const char *content_type)
{
    while (isspace ((unsigned char) *content_type))
        content_type++;
    size_t size = strcspn (content_type, ";");
    while (size > 0 && isspace ((unsigned char) content_type [size - 1]))
        size--;
    if (size == 16 && strncasecmp (content_type, "application/json", 16) == 0)
        return true;
    return size > 5 && strncasecmp (content_type + size - 5, "+json", 5) == 0;
}

const char *
kiln_input_webhook_invalid (const char *url)
{
    if (!*url)
        return "is empty";
    if (strlen (url) > KILN_INPUT_WEBHOOK_URL_MAX)
        return "is too long";
    for (const char *p = url; *p; p++)
        if ((unsigned char) *p <= ' ' || *p == 0x7f)
            return "holds a space or a control character";
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags (url, 0);
    if (!uri)
        return "is not a URL";
    const char *scheme = evhttp_uri_get_scheme (uri);
    const char *host = evhttp_uri_get_host (uri);
    const char *why = NULL;
    if (!scheme || (strcasecmp (scheme, "http") != 0 && strcasecmp (scheme, "https") != 0))
        why = "is not an http:// or https:// URL";
    else
    if (!host || !*host)
        why = "has no host";
    evhttp_uri_free (uri);
    return why;
}

int64_t
kiln_input_start_deadline (const char *value, int64_t now_ms)
{
    while (*value == ' ' || *value == '\t')
        value++;
    const char *p = value;
    size_t digits = 0;
    while (isdigit ((unsigned char) *p)) {
        p++;
        digits++;
    }
    if (*p == '.')
        for (p++; isdigit ((unsigned char) *p); p++)
            digits++;
    while (*p == ' ' || *p == '\t')
        p++;
    if (digits == 0 || *p)
        return -1;
    double seconds = strtod (value, NULL);
    if (!(seconds > 0) || seconds > KILN_INPUT_REQUEST_TIMEOUT_MAX_S)
        return -1;
    //  Rounded up: a timeout is never shorter than asked, and never 0
    double exact = seconds * 1000.0;
    int64_t ms = (int64_t) exact;
    if ((double) ms < exact)
        ms++;
    return now_ms + (ms > 0 ? ms : 1);
}

int
kiln_input_no_retry (const char *value)
{
    if (!value || !*value || strcmp (value, "0") == 0 || strcasecmp (value, "false") == 0)
        return 0;
    if (strcmp (value, "1") == 0 || strcasecmp (value, "true") == 0)
        return 1;
    return -1;
}

bool
kiln_input_flag (const char *value)
{
    return value && (strcmp (value, "1") == 0 || strcmp (value, "true") == 0
                  || strcmp (value, "yes") == 0);
}

void
kiln_input_safe_file_name (const char *name, char *out, size_t size)
{
    if (size == 0)
        return;
    size_t used = 0;
    for (const char *p = name; *p && used + 1 < size; p++) {
        unsigned char c = (unsigned char) *p;
        out [used++] = (c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '/') ? '_' : (char) c;
    }
    out [used] = 0;
}

void
kiln_input_test (bool verbose)
{
    if (verbose)
        printf (" * inputs: ");
    assert (kiln_input_is_json_type ("application/json"));
    assert (kiln_input_is_json_type (" Application/JSON ; charset=utf-8"));
    assert (kiln_input_is_json_type ("application/problem+json"));
    assert (!kiln_input_is_json_type ("application/jsonx"));
    assert (!kiln_input_is_json_type ("+json"));
    assert (!kiln_input_is_json_type ("text/plain"));
    assert (!kiln_input_is_json_type (""));

    assert (kiln_input_webhook_invalid ("https://example.com/hook?x=1") == NULL);
    assert (kiln_input_webhook_invalid ("http://10.0.0.1:8080/") == NULL);
    assert (kiln_input_webhook_invalid (""));
    assert (kiln_input_webhook_invalid ("ftp://example.com/"));
    assert (kiln_input_webhook_invalid ("http:///nohost"));
    assert (kiln_input_webhook_invalid ("http://exa mple.com/"));
    assert (kiln_input_webhook_invalid ("http://example.com/\x7f"));
    assert (kiln_input_webhook_invalid ("example.com/hook"));
    char *long_url = malloc (KILN_INPUT_WEBHOOK_URL_MAX + 2);
    assert (long_url);
    memset (long_url, 'a', KILN_INPUT_WEBHOOK_URL_MAX + 1);
    memcpy (long_url, "http://", 7);
    long_url [KILN_INPUT_WEBHOOK_URL_MAX + 1] = 0;
    assert (strcmp (kiln_input_webhook_invalid (long_url), "is too long") == 0);
    free (long_url);

    assert (kiln_input_start_deadline ("30", 1000) == 31000);
    assert (kiln_input_start_deadline (" 2.5 ", 0) == 2500);
    assert (kiln_input_start_deadline (".5", 0) == 500);
    assert (kiln_input_start_deadline ("0.0001", 0) == 1);     //  rounded up, never 0
    assert (kiln_input_start_deadline ("0", 0) == -1);
    assert (kiln_input_start_deadline ("-1", 0) == -1);
    assert (kiln_input_start_deadline ("1e3", 0) == -1);
    assert (kiln_input_start_deadline ("", 0) == -1);
    assert (kiln_input_start_deadline (".", 0) == -1);
    assert (kiln_input_start_deadline ("5s", 0) == -1);
    assert (kiln_input_start_deadline ("99999999999", 0) == -1);

    assert (kiln_input_no_retry (NULL) == 0 && kiln_input_no_retry ("") == 0);
    assert (kiln_input_no_retry ("0") == 0 && kiln_input_no_retry ("FALSE") == 0);
    assert (kiln_input_no_retry ("1") == 1 && kiln_input_no_retry ("True") == 1);
    assert (kiln_input_no_retry ("yes") == -1 && kiln_input_no_retry ("2") == -1);

    assert (kiln_input_flag ("1") && kiln_input_flag ("true") && kiln_input_flag ("yes"));
    assert (!kiln_input_flag (NULL) && !kiln_input_flag ("0") && !kiln_input_flag ("TRUE"));

    char safe [8];
    kiln_input_safe_file_name ("a\"b/c\\\x01\xc3\xa9z", safe, sizeof safe);
    assert (strcmp (safe, "a_b_c__") == 0);
    kiln_input_safe_file_name ("out.png", safe, sizeof safe);
    assert (strcmp (safe, "out.png") == 0);
    kiln_input_safe_file_name ("", safe, sizeof safe);
    assert (strcmp (safe, "") == 0);
    if (verbose)
        printf ("OK\n");
}
