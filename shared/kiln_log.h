/*  =========================================================================
    kiln_log — process logging

    One line per event on stderr:
        2026-11-28T18:00:00.123Z kiln-broker INFO started runner r-… for local/echo
    The level comes from KILN_LOG_LEVEL (debug, info, warn, error).
    Thread-safe (one write() per line).
    =========================================================================
*/
#ifndef KILN_LOG_H_INCLUDED
#define KILN_LOG_H_INCLUDED

#include <stdbool.h>

typedef enum {
    KILN_LEVEL_DEBUG = 0,
    KILN_LEVEL_INFO  = 1,
    KILN_LEVEL_WARN  = 2,
    KILN_LEVEL_ERROR = 3,
} kiln_level_t;

//  Names the process in every line and sets the level ("info" when NULL
//  or unknown).
void kiln_log_init (const char *process_name, const char *level);

void kiln_log (kiln_level_t level, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

#define kiln_log_debug(...) kiln_log (KILN_LEVEL_DEBUG, __VA_ARGS__)
#define kiln_log_info(...)  kiln_log (KILN_LEVEL_INFO, __VA_ARGS__)
#define kiln_log_warn(...)  kiln_log (KILN_LEVEL_WARN, __VA_ARGS__)
#define kiln_log_error(...) kiln_log (KILN_LEVEL_ERROR, __VA_ARGS__)

void kiln_log_test (bool verbose);

#endif
