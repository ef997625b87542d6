/*  =========================================================================
    kiln_util — ids, clocks and hashing

    Small things every process needs: request and runner ids (UUID v4 from
    /dev/urandom), wall and monotonic clocks in milliseconds, SHA-256 (for
    content-addressed artifacts).
    =========================================================================
*/
#ifndef KILN_UTIL_H_INCLUDED
#define KILN_UTIL_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_UUID_LEN 36            //  without the NUL
#define KILN_SHA256_HEX_LEN 64      //  without the NUL

//  Writes a random UUID v4, lower-case, into out (37 bytes with the NUL).
void kiln_uuid4 (char out [KILN_UUID_LEN + 1]);

//  Wall clock, ms since the epoch: for records people read.
int64_t kiln_now_ms (void);

//  Monotonic clock, ms: for timeouts and intervals.
int64_t kiln_mono_ms (void);

//  SHA-256 of data, as 64 lower-case hex digits plus NUL.
void kiln_sha256_hex (const void *data, size_t size, char out [KILN_SHA256_HEX_LEN + 1]);

//  The value of a hex digit (either case), or -1 for any other char.
int kiln_hex_value (char c);

//  Reads a whole file into a malloc'd buffer (NUL added after the last
//  byte, not counted in *size). NULL on failure, with errno set.
uint8_t *kiln_read_file (const char *path, size_t *size);

//  Writes a whole file atomically (temp file + rename). 0 or -1.
int kiln_write_file (const char *path, const void *data, size_t size);

//  mkdir -p. 0 or -1.
int kiln_mkdir_p (const char *path, int mode);

void kiln_util_test (bool verbose);

#endif
