/*  =========================================================================
    fuzz_frame — the process-app frame reader (worker/frame.c), which
    reads what app code writes on its stdout

    Input: byte 0 sets how many bytes reach the pipe at a time (1-256);
    the rest is the stream. The stream goes through a non-blocking pipe
    in those pieces, as the runner's loop sees it, and the reader is
    drained after each piece, then at the end of the stream.

    The reader must give whole frames (a JSON object header with a string
    type, a body within its limit), say 0 while a frame is incomplete,
    and end with -1: quietly at a frame boundary, with a reason inside a
    frame or on a protocol error. Each frame it gives, written back with
    kiln_frame_write, must read back the same.

    Every frame also goes through kiln_frame_missing, the runner's check
    of a log, file or result frame's fields: it passes exactly the frames
    that have every field the runner reads (strings, an integer status, a
    timestamp it can make an int64_t), and otherwise names one that is
    missing or wrong; frames of other types need nothing.
    =========================================================================
*/
#include "fuzz.h"
#include "frame.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

//  A frame given must be written and read back unchanged.
static void
s_round_trip (json_t *header, const uint8_t *body, size_t body_size)
{
    int fd = memfd_create ("fuzz_frame", MFD_CLOEXEC);
    FUZZ_CHECK (fd >= 0);
    json_incref (header);
    FUZZ_CHECK (kiln_frame_write (fd, header, body, body_size) == 0);
    FUZZ_CHECK (lseek (fd, 0, SEEK_SET) == 0);
    kiln_frame_reader_t reader;
    memset (&reader, 0, sizeof reader);
    reader.fd = fd;
    json_t *again = NULL;
    uint8_t *again_body = NULL;
    size_t again_size = 0;
    char *error = NULL;
    FUZZ_CHECK (kiln_frame_read (&reader, &again, &again_body, &again_size, &error) == 1);
    FUZZ_CHECK (json_equal (header, again));
    FUZZ_CHECK (again_size == body_size && memcmp (again_body, body, body_size) == 0);
    //  Then the end of the stream, at a frame boundary: no error
    json_t *extra = NULL;
    uint8_t *extra_body = NULL;
    size_t extra_size = 0;
    FUZZ_CHECK (kiln_frame_read (&reader, &extra, &extra_body, &extra_size, &error) == -1);
    FUZZ_CHECK (error == NULL);
    kiln_frame_reader_reset (&reader);
    json_decref (again);
    free (again_body);
    close (fd);
}

static bool
s_is_string (json_t *header, const char *field)
{
    return json_is_string (json_object_get (header, field));
}

//  kiln_frame_missing against the fields as docs/PROCESS_APPS.md lists them
static void
s_check_fields (json_t *header)
{
    const char *type = json_string_value (json_object_get (header, "type"));
    const char *missing = kiln_frame_missing (header, type);
    bool is_log = strcmp (type, "log") == 0;
    bool is_file = strcmp (type, "file") == 0;
    bool is_result = strcmp (type, "result") == 0;
    if (!is_log && !is_file && !is_result) {
        FUZZ_CHECK (missing == NULL);
        return;
    }
    json_t *timestamp = json_object_get (header, "timestamp");
    bool timestamp_good = !is_log || !timestamp
        || (json_is_number (timestamp) && json_number_value (timestamp) >= 0
            && json_number_value (timestamp) <= KILN_FRAME_TIMESTAMP_MAX_MS);
    bool complete = s_is_string (header, "request_id") && timestamp_good
        && (!is_log || (s_is_string (header, "level") && s_is_string (header, "message")))
        && (!is_file || (s_is_string (header, "id") && s_is_string (header, "content_type")
                         && s_is_string (header, "file_name")))
        && (!is_result || (s_is_string (header, "content_type")
                           && json_is_integer (json_object_get (header, "status"))));
    if (complete) {
        FUZZ_CHECK (missing == NULL);
        //  What the runner then does with a log's timestamp is defined
        if (is_log && timestamp) {
            int64_t ms = (int64_t) json_number_value (timestamp);
            FUZZ_CHECK (ms >= 0);
        }
        return;
    }
    //  Named: a field that is indeed missing or wrong
    FUZZ_CHECK (missing != NULL);
    if (strncmp (missing, "timestamp", 9) == 0)
        FUZZ_CHECK (!timestamp_good);
    else
    if (strcmp (missing, "status") == 0)
        FUZZ_CHECK (is_result && !json_is_integer (json_object_get (header, "status")));
    else
        FUZZ_CHECK (!s_is_string (header, missing));
}

//  Reads until the reader wants more (0) or the stream is done (-1).
//  Returns the last rc.
static int
s_drain (kiln_frame_reader_t *reader, bool at_end)
{
    while (true) {
        json_t *header = NULL;
        uint8_t *body = NULL;
        size_t body_size = 0;
        char *error = NULL;
        int rc = kiln_frame_read (reader, &header, &body, &body_size, &error);
        if (rc == 1) {
            FUZZ_CHECK (error == NULL);
            FUZZ_CHECK (json_is_object (header));
            FUZZ_CHECK (json_is_string (json_object_get (header, "type")));
            FUZZ_CHECK (body && body_size <= KILN_FRAME_BODY_MAX_BYTES);
            s_check_fields (header);
            s_round_trip (header, body, body_size);
            json_decref (header);
            free (body);
            continue;
        }
        FUZZ_CHECK (!header && !body);
        if (rc == 0) {
            FUZZ_CHECK (!at_end && !error);
            return 0;
        }
        FUZZ_CHECK (rc == -1);
        //  The end of the stream between frames is quiet
        if (!error)
            FUZZ_CHECK (at_end && reader->stage == 0 && reader->have == 0);
        free (error);
        return -1;
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t) data [0] + 1;
    data++;
    size--;
    int fds [2];
    FUZZ_CHECK (pipe2 (fds, O_CLOEXEC) == 0);
    FUZZ_CHECK (fcntl (fds [0], F_SETFL, O_NONBLOCK) == 0);
    kiln_frame_reader_t reader;
    memset (&reader, 0, sizeof reader);
    reader.fd = fds [0];
    int rc = 0;
    //  Pieces are far below the pipe's capacity, and each is drained
    //  before the next, so the writes never block.
    for (size_t offset = 0; offset < size && rc == 0; offset += piece) {
        size_t length = size - offset < piece ? size - offset : piece;
        FUZZ_CHECK (write (fds [1], data + offset, length) == (ssize_t) length);
        rc = s_drain (&reader, false);
    }
    close (fds [1]);
    if (rc == 0)
        s_drain (&reader, true);
    kiln_frame_reader_reset (&reader);
    FUZZ_CHECK (reader.fd == fds [0] && !reader.header && !reader.body && reader.stage == 0);
    close (fds [0]);
    return 0;
}
