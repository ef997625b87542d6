/*  =========================================================================
    kiln_msg — the wire protocol between broker, workers and runners

    Transport: the broker binds one ZeroMQ ROUTER socket at
    KILN_BROKER_ENDPOINT. Every worker and every runner connects one DEALER
    socket to it, with its own id (worker_id / runner_id) as the socket's
    routing identity, so the broker can address it by name and a peer that
    reconnects keeps its address.

    A message is one ZeroMQ frame (after the ROUTER's identity frame):

        byte 0   KILN_PROTO_VERSION
        byte 1   message type (kiln_msg_type_t)
        byte 2-  a msgpack map, string keys → values, holding the fields
                 listed for that type below. Unknown keys are skipped, so
                 a newer peer may add fields.

    Messages (→ direction; fields; * = required):

    | type           | from → to        | fields                                              |
    |----------------|------------------|-----------------------------------------------------|
    | WORKER_HELLO   | worker → broker  | worker_id*, host*, slots* {machine_type: count},    |
    |                |                  | draining (true: leaving; place no runner there)     |
    | RUNNER_HELLO   | runner → broker  | runner_id*, worker_id*, app*, revision,             |
    |                |                  | max_multiplexing*, gpu (its CUDA device, if one)    |
    | HEARTBEAT      | any ↔ broker     | requests (from a runner: the ids of every request   |
    |                |                  | it holds; its leases are renewed, see broker.c)     |
    | RUNNER_START   | broker → worker  | runner_id*, app*, revision*, artifact*, machine_type*, gpu |
    | RUNNER_STOP    | broker → worker  | runner_id*, status (KILN_RUNNER_STOP_KILL: SIGKILL  |
    |                |                  | now, no teardown; else SIGTERM and a grace)         |
    | RUNNER_EXITED  | worker → broker  | runner_id*, status* (exit code, or -signal), error  |
    | REQUEST        | broker → runner  | request_id*, path*, content_type, body              |
    | RESULT         | runner → broker  | request_id*, status*, content_type, body, error,    |
    |                |                  | error_type, inference_ms, files [{id, content_type, |
    |                |                  | file_name, data}]                                   |
    | LOG            | runner → broker  | request_id, logs* [{level, message, source,         |
    |                |                  | timestamp}]: a request's lines (its handler's)      |
    | LOG            | worker → broker  | runner_id, logs*: a runner's own output, not tied   |
    |                |                  | to a request (setup, pip, crashes)                  |
    | DISCONNECT     | any ↔ broker     | (none): the sender is going away                    |
    | CANCEL         | broker → runner  | request_id*: its client cancelled it while it runs  |

    A decoded message is checked: version, known type, every field of the
    right msgpack type, every required field present, sizes within
    KILN_MSG_MAX_*. Anything else is refused with a reason, never asserted.

    A runner that is stopping answers each request it will not start
    (queued behind its busy handlers, or arriving after SIGTERM) with a
    RESULT of status 503 and error_type KILN_ERROR_TYPE_RUNNER_DRAINING:
    the broker puts it back at the head of its queue without counting an
    attempt. A handler's own answer never carries that error_type (the
    runner rewrites it), so an app cannot make a request loop forever.
    =========================================================================
*/
#ifndef KILN_MSG_H_INCLUDED
#define KILN_MSG_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_PROTO_VERSION 1

//  Caps on what a decoder accepts, so a hostile peer cannot make us
//  allocate without bound.
#define KILN_MSG_MAX_STRING_BYTES   4096        //  any string field
#define KILN_MSG_MAX_BODY_BYTES     (512u << 20) //  body and file data
#define KILN_MSG_MAX_ITEMS          1024        //  slots, logs, files

typedef enum {
    KILN_MSG_WORKER_HELLO  = 1,
    KILN_MSG_RUNNER_HELLO  = 2,
    KILN_MSG_HEARTBEAT     = 3,
    KILN_MSG_RUNNER_START  = 4,
    KILN_MSG_RUNNER_STOP   = 5,
    KILN_MSG_RUNNER_EXITED = 6,
    KILN_MSG_REQUEST       = 7,
    KILN_MSG_RESULT        = 8,
    KILN_MSG_LOG           = 9,
    KILN_MSG_DISCONNECT    = 10,
    KILN_MSG_CANCEL        = 11,
} kiln_msg_type_t;

//  error_type of a RESULT that hands back a request no handler started.
#define KILN_ERROR_TYPE_RUNNER_DRAINING "runner_draining"

//  status of a RUNNER_STOP that wants the runner killed at once (a
//  handler past its request_timeout may never return).
#define KILN_RUNNER_STOP_KILL -9

//  The highest type this codec knows.
#define KILN_MSG_TYPE_LAST KILN_MSG_CANCEL

typedef struct {
    char *machine_type;             //  "CPU", "GPU-H100", ...
    uint32_t count;
} kiln_msg_slot_t;

typedef struct {
    char *level;                    //  "INFO", ...
    char *message;
    char *source;                   //  "app" for handler lines, "runner" for kiln's
    int64_t timestamp_ms;           //  wall clock, ms since the epoch
} kiln_msg_log_t;

typedef struct {
    char *id;                       //  file id (UUID v4); GET /files/{id}
    char *content_type;
    char *file_name;
    uint8_t *data;
    size_t size;
} kiln_msg_file_t;

//  A message. All pointers are owned by the message and freed by
//  kiln_msg_destroy; NULL / 0 means "absent". Fill fields with strdup'd
//  strings and malloc'd arrays.
typedef struct {
    kiln_msg_type_t type;
    char *worker_id;
    char *runner_id;
    char *host;
    char *app;                      //  "owner/app"
    uint64_t revision;
    char *artifact;                 //  SHA-256, 64 hex digits
    char *machine_type;
    int32_t gpu;                    //  device index, -1 for none (default)
    bool draining;                  //  WORKER_HELLO: stopping, takes no runners
    uint32_t max_multiplexing;
    kiln_msg_slot_t *slots;  size_t slot_count;
    char *request_id;
    char *path;
    char *content_type;
    uint8_t *body;           size_t body_size;
    int32_t status;                 //  HTTP status (RESULT), exit status (RUNNER_EXITED)
    char *error;
    char *error_type;
    uint64_t inference_ms;
    kiln_msg_log_t *logs;    size_t log_count;
    kiln_msg_file_t *files;  size_t file_count;
    char **requests;         size_t request_count;  //  HEARTBEAT of a runner: the ids it holds
} kiln_msg_t;

//  Makes an empty message of that type (gpu = -1). NULL on failure.
kiln_msg_t *kiln_msg_new (kiln_msg_type_t type);

//  Frees the message and everything it owns; nulls the pointer.
void kiln_msg_destroy (kiln_msg_t **self_p);

//  The type's name ("REQUEST"), or "UNKNOWN".
const char *kiln_msg_type_name (kiln_msg_type_t type);

//  Encodes into a new buffer (caller frees). NULL on failure.
uint8_t *kiln_msg_encode (const kiln_msg_t *self, size_t *size);

//  Decodes and validates one frame. On failure returns NULL and, if
//  `reason` is given, sets it to a static string saying why.
kiln_msg_t *kiln_msg_decode (const uint8_t *data, size_t size, const char **reason);

//  Sends on a DEALER socket (identity NULL) or to the peer `identity` on a
//  ROUTER socket. Destroys the message whatever happens. 0 or -1.
int kiln_msg_send (kiln_msg_t **self_p, zsock_t *sock, const char *identity);

//  Receives one message. On a ROUTER socket, *identity_p (if given) gets
//  the sender's identity (caller frees). Returns NULL for a malformed
//  message, after logging it and consuming all of its frames, so the
//  caller just goes on; also NULL when interrupted.
kiln_msg_t *kiln_msg_recv (zsock_t *sock, char **identity_p);

void kiln_msg_test (bool verbose);

#endif
