/*  =========================================================================
    logline — a request's log line as it is stored in Redis

    See logline.h. Uses jansson so that quoting is never hand-rolled.
    =========================================================================
*/
#include "logline.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LAST_MS_OF_9999 253402300799999LL   //  9999-12-31T23:59:59.999Z

void
kiln_iso8601_ms (int64_t epoch_ms, char out [KILN_ISO8601_LEN + 1])
{
    //  Clamp to years 1970..9999, so the text always has its fixed width.
    if (epoch_ms < 0)
        epoch_ms = 0;
    if (epoch_ms > LAST_MS_OF_9999)
        epoch_ms = LAST_MS_OF_9999;
    time_t seconds = (time_t) (epoch_ms / 1000);
    struct tm tm;
    gmtime_r (&seconds, &tm);
    strftime (out, KILN_ISO8601_LEN + 1, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf (out + 19, KILN_ISO8601_LEN + 1 - 19, ".%03uZ", (unsigned) (epoch_ms % 1000));
}

//  A JSON string from text that may not be UTF-8: an app may log any
//  bytes, and one bad line must not lose the others.
static json_t *
s_string (const char *text)
{
    json_t *string = json_string (text);
    if (string)
        return string;
    char *copy = strdup (text);
    if (!copy)
        return NULL;
    for (char *c = copy; *c; c++)
        if ((unsigned char) *c >= 0x80)
            *c = '?';
    string = json_string (copy);
    free (copy);
    return string;
}

char *
kiln_logline_json (const char *level, const char *message, const char *source,
                   int64_t timestamp_ms, int64_t now_ms)
{
    char stamp [KILN_ISO8601_LEN + 1];
    kiln_iso8601_ms (timestamp_ms > 0? timestamp_ms: now_ms, stamp);

    json_t *line = json_object ();
    if (!line)
        return NULL;
    char *text = NULL;
    if (json_object_set_new (line, "message", s_string (message? message: "")) == 0
    &&  json_object_set_new (line, "level", s_string (level && *level? level: "INFO")) == 0
    &&  json_object_set_new (line, "source", s_string (source && *source? source: "app")) == 0
    &&  json_object_set_new (line, "timestamp", json_string (stamp)) == 0)
        text = json_dumps (line, JSON_COMPACT);
    json_decref (line);
    return text;
}

void
kiln_logline_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_logline: ");

    char stamp [KILN_ISO8601_LEN + 1];
    kiln_iso8601_ms (0, stamp);
    assert (strcmp (stamp, "1970-01-01T00:00:00.000Z") == 0);
    kiln_iso8601_ms (1795888800123LL, stamp);
    assert (strcmp (stamp, "2026-11-28T18:00:00.123Z") == 0);
    assert (strlen (stamp) == KILN_ISO8601_LEN);
    kiln_iso8601_ms (-5, stamp);
    assert (strcmp (stamp, "1970-01-01T00:00:00.000Z") == 0);
    kiln_iso8601_ms (INT64_MAX, stamp);
    assert (strcmp (stamp, "9999-12-31T23:59:59.999Z") == 0);

    char *line = kiln_logline_json ("WARN", "say \"hi\"\n", "runner", 1795888800123LL, 5);
    assert (line);
    assert (strcmp (line, "{\"message\":\"say \\\"hi\\\"\\n\",\"level\":\"WARN\","
                          "\"source\":\"runner\",\"timestamp\":\"2026-11-28T18:00:00.123Z\"}") == 0);
    free (line);

    //  Defaults, and the broker's clock when the runner sent none
    line = kiln_logline_json (NULL, NULL, "", 0, 1795888800999LL);
    assert (line);
    assert (strcmp (line, "{\"message\":\"\",\"level\":\"INFO\",\"source\":\"app\","
                          "\"timestamp\":\"2026-11-28T18:00:00.999Z\"}") == 0);
    free (line);

    //  Bytes that are not UTF-8 do not lose the line
    line = kiln_logline_json ("INFO", "bad \xff\xfe byte", "app", 1000, 0);
    assert (line);
    assert (strstr (line, "\"bad ?? byte\""));
    free (line);
    //  Valid UTF-8 passes unchanged
    line = kiln_logline_json ("INFO", "caf\xc3\xa9", "app", 1000, 0);
    assert (line && strstr (line, "caf\xc3\xa9"));
    free (line);

    if (verbose)
        printf ("OK\n");
}
