/*  =========================================================================
    inputs — the gateway's parsers of request headers and query values

    Pure functions (no I/O, no allocation kept), so the selftest and the
    fuzz target fuzz_json drive exactly what the gateway runs:

    | function                      | reads                                    |
    |-------------------------------|------------------------------------------|
    | kiln_input_is_json_type       | Content-Type: is the body JSON?          |
    | kiln_input_webhook_invalid    | ?fal_webhook=URL                         |
    | kiln_input_start_deadline     | X-Fal-Request-Timeout                    |
    | kiln_input_no_retry           | X-Fal-No-Retry                           |
    | kiln_input_flag               | ?logs=1 and other boolean query values   |
    | kiln_input_safe_file_name     | a stored file's name, for Content-Disposition |
    =========================================================================
*/
#ifndef KILN_INPUTS_H_INCLUDED
#define KILN_INPUTS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Longest webhook URL we store.
#define KILN_INPUT_WEBHOOK_URL_MAX 2048
//  Longest X-Fal-Request-Timeout we take (a year, in seconds): beyond it a
//  deadline means nothing, and the ms must stay exact in a Lua number.
#define KILN_INPUT_REQUEST_TIMEOUT_MAX_S (366 * 24 * 3600)

//  application/json, or any type ending in +json; parameters ignored.
bool kiln_input_is_json_type (const char *content_type);

//  An absolute http(s) URL with a host: what the deliverer can POST to.
//  NULL when it is one, else why not (for the 400's detail).
const char *kiln_input_webhook_invalid (const char *url);

//  X-Fal-Request-Timeout: a positive number of seconds, fractional
//  allowed ("30", "2.5", ".5"); no sign, exponent or other text. The
//  deadline for processing to start, as ms since the epoch. -1 if bad.
int64_t kiln_input_start_deadline (const char *value, int64_t now_ms);

//  X-Fal-No-Retry: 1 or true (any case) sets it, 0, false or absent
//  clears it. -1 for anything else.
int kiln_input_no_retry (const char *value);

//  A boolean query value: "1", "true" or "yes".
bool kiln_input_flag (const char *value);

//  A file name safe inside Content-Disposition's quotes: control
//  characters, non-ASCII, '"', '\\' and '/' become '_'. Truncated to fit.
void kiln_input_safe_file_name (const char *name, char *out, size_t size);

void kiln_input_test (bool verbose);

#endif
