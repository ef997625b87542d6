/*  =========================================================================
    frame — the process-app frames (docs/PROCESS_APPS.md), read and written

    A frame is a 4-byte big-endian header length, a JSON object header
    with a string "type", a 4-byte big-endian body length and the body.
    The runner reads its child's stdout without blocking from its one
    loop, so the reader is a small state machine that keeps a partial
    frame between reads; every length is checked against its limit before
    anything is allocated for it, and a part's buffer grows as its bytes
    arrive, so a length alone (4 bytes) costs no memory. What the child sends is app code's
    output: nothing here trusts it.

    Out of worker/runner.c so that fuzz/fuzz_frame.c can drive the very
    parser the runner uses.
    =========================================================================
*/
#ifndef KILN_FRAME_H_INCLUDED
#define KILN_FRAME_H_INCLUDED

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

//  Longest header and body a reader takes.
#define KILN_FRAME_HEADER_MAX_BYTES (1u << 20)
#define KILN_FRAME_BODY_MAX_BYTES   (512u << 20)

//  A reader is held by value: zero it, set fd, and reset it when done
//  (reset frees a partial frame and keeps fd; closing fd is the owner's).
typedef struct {
    int fd;
    int stage;                      //  0 header length, 1 header, 2 body length, 3 body
    uint8_t length [4];
    size_t have;                    //  bytes of the current part so far
    uint32_t need;                  //  size of the current part (stages 1, 3)
    size_t capacity;                //  of the current part's buffer so far
    uint8_t *header;
    uint8_t *body;
    uint32_t header_size;
} kiln_frame_reader_t;

//  Frees any partial frame; keeps fd.
void kiln_frame_reader_reset (kiln_frame_reader_t *reader);

//  Reads what fd has. 1: a frame (*header_p, *body_p, *body_size are the
//  caller's; the body is never NULL, even when empty); 0: not yet
//  (EAGAIN: nothing more to read now); -1: the end of the stream (*error
//  NULL) or a protocol error (*error, caller frees). After -1 the stream
//  cannot be trusted: reset the reader before dropping it.
int kiln_frame_read (kiln_frame_reader_t *reader, json_t **header_p, uint8_t **body_p,
                     size_t *body_size, char **error);

//  Latest log timestamp taken (ms since the epoch): 2^53, exact as a
//  double, so the runner's conversion to int64_t is always defined.
#define KILN_FRAME_TIMESTAMP_MAX_MS 9007199254740992.0

//  Checks the fields the runner reads from a frame of the types it serves
//  by (docs/PROCESS_APPS.md): "log" needs request_id, level and message
//  strings, and a timestamp, if given, a number from 0 to
//  KILN_FRAME_TIMESTAMP_MAX_MS; "file" request_id, id, content_type and
//  file_name strings; "result" request_id and content_type strings and an
//  integer status. Any other type needs nothing. NULL when all are there,
//  else the first that is missing or wrong (for the protocol error).
const char *kiln_frame_missing (json_t *header, const char *type);

//  Writes one frame whole (blocking); takes the header. 0, or -1 (the
//  peer is gone, or the header cannot be encoded).
int kiln_frame_write (int fd, json_t *header, const uint8_t *body, size_t body_size);

#endif
