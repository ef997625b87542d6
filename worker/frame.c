/*  =========================================================================
    frame — the process-app frames, read and written (see frame.h)

    Moved here from worker/runner.c, where it was static. A part's buffer
    starts at FRAME_FIRST_ALLOC_BYTES (or the part's size, if smaller) and
    doubles as its bytes arrive, up to the size the length announced.
    =========================================================================
*/
#include "frame.h"

#include <czmq.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <unistd.h>

//  What a header or body part gets before its bytes come in.
#define FRAME_FIRST_ALLOC_BYTES (64u << 10)

void
kiln_frame_reader_reset (kiln_frame_reader_t *reader)
{
    free (reader->header);
    free (reader->body);
    int fd = reader->fd;
    memset (reader, 0, sizeof (*reader));
    reader->fd = fd;
}

int
kiln_frame_read (kiln_frame_reader_t *reader, json_t **header_p, uint8_t **body_p,
                 size_t *body_size, char **error)
{
    *error = NULL;
    while (true) {
        bool length_part = reader->stage == 0 || reader->stage == 2;
        size_t part_size = length_part? 4: reader->need;
        if (reader->have < part_size) {
            uint8_t *target;
            size_t want;
            if (length_part) {
                target = reader->length + reader->have;
                want = 4 - reader->have;
            }
            else {
                uint8_t **buffer = reader->stage == 1? &reader->header: &reader->body;
                if (reader->have == reader->capacity) {
                    //  Grows as the bytes come: a length alone never
                    //  makes us allocate up to the limit.
                    size_t capacity = reader->capacity * 2;
                    if (capacity > reader->need)
                        capacity = reader->need;
                    uint8_t *bigger = realloc (*buffer, capacity);
                    if (!bigger) {
                        *error = strdup ("out of memory reading a frame");
                        return -1;
                    }
                    *buffer = bigger;
                    reader->capacity = capacity;
                }
                target = *buffer + reader->have;
                want = reader->capacity - reader->have;
            }
            ssize_t got = read (reader->fd, target, want);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            if (got <= 0) {
                if (got < 0)
                    *error = zsys_sprintf ("reading the app's stdout: %s", strerror (errno));
                else
                if (reader->stage != 0 || reader->have != 0)
                    *error = strdup ("the app's stdout ended inside a frame");
                return -1;
            }
            reader->have += (size_t) got;
            continue;
        }
        //  The current part is complete.
        if (length_part) {
            uint32_t size = ((uint32_t) reader->length [0] << 24) | ((uint32_t) reader->length [1] << 16)
                          | ((uint32_t) reader->length [2] << 8) | reader->length [3];
            uint32_t limit = reader->stage == 0? KILN_FRAME_HEADER_MAX_BYTES: KILN_FRAME_BODY_MAX_BYTES;
            if (size > limit) {
                *error = zsys_sprintf ("the app sent a frame %s of %u bytes (at most %u)",
                                       reader->stage == 0? "header": "body", size, limit);
                return -1;
            }
            //  A first piece; never NULL, even for an empty part
            size_t capacity = size < FRAME_FIRST_ALLOC_BYTES? size: FRAME_FIRST_ALLOC_BYTES;
            uint8_t *buffer = malloc (capacity? capacity: 1);
            if (!buffer) {
                *error = strdup ("out of memory reading a frame");
                return -1;
            }
            if (reader->stage == 0)
                reader->header = buffer;
            else
                reader->body = buffer;
            reader->capacity = capacity;
            reader->need = size;
            reader->have = 0;
            reader->stage++;
            continue;
        }
        if (reader->stage == 1) {
            reader->header_size = reader->need;
            reader->have = 0;
            reader->capacity = 0;
            reader->stage = 2;
            continue;
        }
        //  Stage 3 done: a whole frame.
        json_error_t json_error;
        json_t *header = json_loadb ((const char *) reader->header, reader->header_size,
                                     JSON_REJECT_DUPLICATES, &json_error);
        if (!json_is_object (header) || !json_is_string (json_object_get (header, "type"))) {
            *error = header? strdup ("the app sent a frame header without a string \"type\""):
                             zsys_sprintf ("the app sent a frame header that is not JSON: %s",
                                           json_error.text);
            json_decref (header);
            return -1;
        }
        *header_p = header;
        *body_p = reader->body;
        *body_size = reader->need;
        reader->body = NULL;
        kiln_frame_reader_reset (reader);
        return 1;
    }
}

const char *
kiln_frame_missing (json_t *header, const char *type)
{
    static const char *log_fields [] = { "request_id", "level", "message", NULL };
    static const char *file_fields [] = { "request_id", "id", "content_type", "file_name", NULL };
    static const char *result_fields [] = { "request_id", "content_type", NULL };
    bool is_log = type && streq (type, "log");
    bool is_file = type && streq (type, "file");
    bool is_result = type && streq (type, "result");
    if (!is_log && !is_file && !is_result)
        return NULL;
    const char **fields = is_log? log_fields: is_file? file_fields: result_fields;
    for (const char **field = fields; *field; field++)
        if (!json_is_string (json_object_get (header, *field)))
            return *field;
    if (is_result && !json_is_integer (json_object_get (header, "status")))
        return "status";
    //  The runner makes it an int64_t: a value out of its range would be
    //  undefined behaviour, not just a wrong time
    json_t *timestamp = json_object_get (header, "timestamp");
    if (is_log && timestamp
    &&  (!json_is_number (timestamp)
         || !(json_number_value (timestamp) >= 0
              && json_number_value (timestamp) <= KILN_FRAME_TIMESTAMP_MAX_MS)))
        return "timestamp (ms since the epoch)";
    return NULL;
}

static int
s_write_all (int fd, const void *data, size_t size)
{
    const uint8_t *bytes = (const uint8_t *) data;
    while (size > 0) {
        ssize_t written = write (fd, bytes, size);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0)
            return -1;
        bytes += written;
        size -= (size_t) written;
    }
    return 0;
}

int
kiln_frame_write (int fd, json_t *header, const uint8_t *body, size_t body_size)
{
    char *text = json_dumps (header, JSON_COMPACT);
    json_decref (header);
    if (!text)
        return -1;
    size_t text_size = strlen (text);
    uint8_t lengths [8] = {
        (uint8_t) (text_size >> 24), (uint8_t) (text_size >> 16), (uint8_t) (text_size >> 8), (uint8_t) text_size,
        (uint8_t) (body_size >> 24), (uint8_t) (body_size >> 16), (uint8_t) (body_size >> 8), (uint8_t) body_size
    };
    int rc = s_write_all (fd, lengths, 4) == 0
          && s_write_all (fd, text, text_size) == 0
          && s_write_all (fd, lengths + 4, 4) == 0
          && (body_size == 0 || s_write_all (fd, body, body_size) == 0)? 0: -1;
    free (text);
    return rc;
}
