/*  =========================================================================
    logline — a request's log line as it is stored in Redis

    The broker turns each LOG entry a runner sends into one JSON object
    appended to kiln:req:{id}:logs (kiln_keys.h):

        {"message":"loading","level":"INFO","source":"app",
         "timestamp":"2026-11-28T18:00:00.123Z"}

    The gateway hands these out unchanged in status answers, so the format
    is fal's: an ISO-8601 UTC timestamp with milliseconds.
    =========================================================================
*/
#ifndef KILN_LOGLINE_H_INCLUDED
#define KILN_LOGLINE_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#define KILN_ISO8601_LEN 24         //  "2026-11-28T18:00:00.123Z", without the NUL

//  Formats ms since the epoch as ISO-8601 UTC with milliseconds.
void kiln_iso8601_ms (int64_t epoch_ms, char out [KILN_ISO8601_LEN + 1]);

//  The compact JSON line. NULL fields take defaults (level "INFO", source
//  "app", message ""); a timestamp of 0 or less takes now_ms. Bytes that
//  are not valid UTF-8 become '?', so a line always encodes. Caller frees.
//  NULL when out of memory.
char *kiln_logline_json (const char *level, const char *message, const char *source,
                         int64_t timestamp_ms, int64_t now_ms);

void kiln_logline_test (bool verbose);

#endif
