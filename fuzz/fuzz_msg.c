/*  =========================================================================
    fuzz_msg — the wire codec (shared/kiln_msg.c)

    Input: one ZeroMQ frame as a peer could send it (version byte, type
    byte, msgpack map). kiln_msg_decode must refuse it with a reason or
    give a message that keeps every limit of kiln_msg.h; a message it
    gave must encode, and decoding that encoding must give the same
    message (the second encoding is byte for byte the first).
    =========================================================================
*/
#include "fuzz.h"
#include "kiln_msg.h"

#include <string.h>

//  A string field: absent, or a C string within the cap.
static void
s_check_str (const char *text)
{
    FUZZ_CHECK (!text || strlen (text) <= KILN_MSG_MAX_STRING_BYTES);
}

static void
s_check_limits (const kiln_msg_t *msg)
{
    FUZZ_CHECK (msg->type >= KILN_MSG_WORKER_HELLO && msg->type <= KILN_MSG_TYPE_LAST);
    FUZZ_CHECK (strcmp (kiln_msg_type_name (msg->type), "UNKNOWN") != 0);
    s_check_str (msg->worker_id);
    s_check_str (msg->runner_id);
    s_check_str (msg->host);
    s_check_str (msg->app);
    s_check_str (msg->artifact);
    s_check_str (msg->machine_type);
    s_check_str (msg->request_id);
    s_check_str (msg->path);
    s_check_str (msg->content_type);
    s_check_str (msg->error);
    s_check_str (msg->error_type);
    FUZZ_CHECK (msg->body_size <= KILN_MSG_MAX_BODY_BYTES);
    FUZZ_CHECK (!msg->body_size || msg->body);
    //  A body is NUL-terminated after its last byte, for JSON readers
    FUZZ_CHECK (!msg->body || msg->body [msg->body_size] == 0);
    FUZZ_CHECK (msg->slot_count <= KILN_MSG_MAX_ITEMS);
    for (size_t i = 0; i < msg->slot_count; i++) {
        FUZZ_CHECK (msg->slots [i].machine_type && *msg->slots [i].machine_type);
        s_check_str (msg->slots [i].machine_type);
    }
    FUZZ_CHECK (msg->log_count <= KILN_MSG_MAX_ITEMS);
    for (size_t i = 0; i < msg->log_count; i++) {
        FUZZ_CHECK (msg->logs [i].message);
        s_check_str (msg->logs [i].message);
        s_check_str (msg->logs [i].level);
        s_check_str (msg->logs [i].source);
    }
    FUZZ_CHECK (msg->file_count <= KILN_MSG_MAX_ITEMS);
    for (size_t i = 0; i < msg->file_count; i++) {
        FUZZ_CHECK (msg->files [i].id && msg->files [i].data);
        s_check_str (msg->files [i].id);
        s_check_str (msg->files [i].content_type);
        s_check_str (msg->files [i].file_name);
        FUZZ_CHECK (msg->files [i].size <= KILN_MSG_MAX_BODY_BYTES);
    }
    FUZZ_CHECK (msg->request_count <= KILN_MSG_MAX_ITEMS);
    for (size_t i = 0; i < msg->request_count; i++) {
        FUZZ_CHECK (msg->requests [i]);
        s_check_str (msg->requests [i]);
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    const char *reason = NULL;
    kiln_msg_t *msg = kiln_msg_decode (data, size, &reason);
    if (!msg) {
        FUZZ_CHECK (reason && *reason);
        return 0;
    }
    FUZZ_CHECK (size >= 2 && msg->type == data [1]);
    s_check_limits (msg);

    //  What was taken can be sent on, and reads back the same
    size_t first_size = 0;
    uint8_t *first = kiln_msg_encode (msg, &first_size);
    FUZZ_CHECK (first);
    kiln_msg_t *again = kiln_msg_decode (first, first_size, &reason);
    FUZZ_CHECK (again);
    FUZZ_CHECK (again->type == msg->type);
    size_t second_size = 0;
    uint8_t *second = kiln_msg_encode (again, &second_size);
    FUZZ_CHECK (second);
    FUZZ_CHECK (second_size == first_size && memcmp (first, second, first_size) == 0);

    free (first);
    free (second);
    kiln_msg_destroy (&again);
    kiln_msg_destroy (&msg);
    FUZZ_CHECK (msg == NULL);
    return 0;
}
