/*  =========================================================================
    kiln_msg — the wire protocol codec (msgpack) and its ZeroMQ transport

    The messages and their fields are listed in kiln_msg.h. The codec is
    table-driven: s_fields says how each field of kiln_msg_t travels,
    s_types says which fields each message type carries and which of them
    are required. The encoder emits only a type's own fields; the decoder
    accepts only a type's own fields and skips every other key, so a newer
    peer may add fields without breaking an older one.

    Decoding is defensive. Before msgpack-c sees a frame, s_walk checks
    its structure: declared lengths within the bytes that remain, nesting
    shallow, a bounded number of objects. msgpack-c allocates for a
    declared array length before it reads the elements, so without that
    check a 6-byte frame could ask for gigabytes.
    =========================================================================
*/
#include "kiln_msg.h"
#include "kiln_log.h"

#include <assert.h>
#include <limits.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Limits of the structural check. kiln's own messages nest three deep
//  (map → files → file) and hold at most a few objects per item.
#define WALK_MAX_DEPTH    8
#define WALK_MAX_OBJECTS  (1 << 16)

//  ---------------------------------------------------------------------
//  The field table

typedef enum {
    K_STR,                          //  char *, msgpack str
    K_BIN,                          //  uint8_t * + size_t, msgpack bin (str accepted)
    K_U64,
    K_U32,
    K_I32,
    K_BOOL,                         //  bool, msgpack true/false; sent only when true
    K_SLOTS,                        //  map machine_type → count
    K_LOGS,                         //  array of maps
    K_FILES,                        //  array of maps
    K_STRS,                         //  array of strings
} s_kind_t;

typedef enum {
    F_WORKER_ID, F_RUNNER_ID, F_HOST, F_APP, F_REVISION, F_ARTIFACT,
    F_MACHINE_TYPE, F_GPU, F_MAX_MULTIPLEXING, F_SLOTS, F_REQUEST_ID,
    F_PATH, F_CONTENT_TYPE, F_BODY, F_STATUS, F_ERROR, F_ERROR_TYPE,
    F_INFERENCE_MS, F_LOGS, F_FILES, F_DRAINING, F_REQUESTS,
    F_COUNT
} s_field_id_t;

typedef struct {
    const char *name;
    s_kind_t kind;
    size_t offset;                  //  of the value (or pointer) in kiln_msg_t
    size_t size_offset;             //  K_BIN: of its size
    const char *missing;            //  reasons, static so decode can return them
    const char *invalid;
} s_field_t;

#define FIELD(id, field, kind) \
    [id] = { #field, kind, offsetof (kiln_msg_t, field), 0, \
             "missing required field '" #field "'", \
             "field '" #field "' has the wrong type or size" }
#define FIELD_BIN(id, field, size_field) \
    [id] = { #field, K_BIN, offsetof (kiln_msg_t, field), offsetof (kiln_msg_t, size_field), \
             "missing required field '" #field "'", \
             "field '" #field "' has the wrong type or size" }

static const s_field_t s_fields [F_COUNT] = {
    FIELD (F_WORKER_ID, worker_id, K_STR),
    FIELD (F_RUNNER_ID, runner_id, K_STR),
    FIELD (F_HOST, host, K_STR),
    FIELD (F_APP, app, K_STR),
    FIELD (F_REVISION, revision, K_U64),
    FIELD (F_ARTIFACT, artifact, K_STR),
    FIELD (F_MACHINE_TYPE, machine_type, K_STR),
    FIELD (F_GPU, gpu, K_I32),
    FIELD (F_MAX_MULTIPLEXING, max_multiplexing, K_U32),
    FIELD (F_SLOTS, slots, K_SLOTS),
    FIELD (F_REQUEST_ID, request_id, K_STR),
    FIELD (F_PATH, path, K_STR),
    FIELD (F_CONTENT_TYPE, content_type, K_STR),
    FIELD_BIN (F_BODY, body, body_size),
    FIELD (F_STATUS, status, K_I32),
    FIELD (F_ERROR, error, K_STR),
    FIELD (F_ERROR_TYPE, error_type, K_STR),
    FIELD (F_INFERENCE_MS, inference_ms, K_U64),
    FIELD (F_LOGS, logs, K_LOGS),
    FIELD (F_FILES, files, K_FILES),
    FIELD (F_DRAINING, draining, K_BOOL),
    FIELD (F_REQUESTS, requests, K_STRS),
};

#define BIT(f) (1u << (f))

typedef struct {
    const char *name;
    uint32_t fields;                //  what the type carries
    uint32_t required;
} s_type_t;

static const s_type_t s_types [] = {
    [KILN_MSG_WORKER_HELLO] = { "WORKER_HELLO",
        BIT (F_WORKER_ID) | BIT (F_HOST) | BIT (F_SLOTS) | BIT (F_DRAINING),
        BIT (F_WORKER_ID) | BIT (F_HOST) | BIT (F_SLOTS) },
    [KILN_MSG_RUNNER_HELLO] = { "RUNNER_HELLO",
        BIT (F_RUNNER_ID) | BIT (F_WORKER_ID) | BIT (F_APP) | BIT (F_REVISION) | BIT (F_MAX_MULTIPLEXING)
        | BIT (F_GPU),
        BIT (F_RUNNER_ID) | BIT (F_WORKER_ID) | BIT (F_APP) | BIT (F_MAX_MULTIPLEXING) },
    [KILN_MSG_HEARTBEAT] = { "HEARTBEAT",
        BIT (F_REQUESTS),
        0 },
    [KILN_MSG_RUNNER_START] = { "RUNNER_START",
        BIT (F_RUNNER_ID) | BIT (F_APP) | BIT (F_REVISION) | BIT (F_ARTIFACT) | BIT (F_MACHINE_TYPE) | BIT (F_GPU),
        BIT (F_RUNNER_ID) | BIT (F_APP) | BIT (F_REVISION) | BIT (F_ARTIFACT) | BIT (F_MACHINE_TYPE) },
    [KILN_MSG_RUNNER_STOP] = { "RUNNER_STOP",
        BIT (F_RUNNER_ID) | BIT (F_STATUS),
        BIT (F_RUNNER_ID) },
    [KILN_MSG_RUNNER_EXITED] = { "RUNNER_EXITED",
        BIT (F_RUNNER_ID) | BIT (F_STATUS) | BIT (F_ERROR),
        BIT (F_RUNNER_ID) | BIT (F_STATUS) },
    [KILN_MSG_REQUEST] = { "REQUEST",
        BIT (F_REQUEST_ID) | BIT (F_PATH) | BIT (F_CONTENT_TYPE) | BIT (F_BODY),
        BIT (F_REQUEST_ID) | BIT (F_PATH) },
    [KILN_MSG_RESULT] = { "RESULT",
        BIT (F_REQUEST_ID) | BIT (F_STATUS) | BIT (F_CONTENT_TYPE) | BIT (F_BODY) | BIT (F_ERROR)
        | BIT (F_ERROR_TYPE) | BIT (F_INFERENCE_MS) | BIT (F_FILES),
        BIT (F_REQUEST_ID) | BIT (F_STATUS) },
    [KILN_MSG_LOG] = { "LOG",
        BIT (F_REQUEST_ID) | BIT (F_RUNNER_ID) | BIT (F_LOGS),
        BIT (F_LOGS) },
    [KILN_MSG_DISCONNECT] = { "DISCONNECT", 0, 0 },
    [KILN_MSG_CANCEL] = { "CANCEL",
        BIT (F_REQUEST_ID),
        BIT (F_REQUEST_ID) },
};

static bool
s_type_known (int type)
{
    return type >= KILN_MSG_WORKER_HELLO && type <= KILN_MSG_TYPE_LAST;
}

#define AT(self, offset, type) ((type *) ((char *) (self) + (offset)))
#define AT_CONST(self, offset, type) ((const type *) ((const char *) (self) + (offset)))

//  ---------------------------------------------------------------------
//  Construction

kiln_msg_t *
kiln_msg_new (kiln_msg_type_t type)
{
    kiln_msg_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->type = type;
    self->gpu = -1;
    return self;
}

void
kiln_msg_destroy (kiln_msg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_msg_t *self = *self_p;
    free (self->worker_id);
    free (self->runner_id);
    free (self->host);
    free (self->app);
    free (self->artifact);
    free (self->machine_type);
    for (size_t i = 0; self->slots && i < self->slot_count; i++)
        free (self->slots [i].machine_type);
    free (self->slots);
    free (self->request_id);
    free (self->path);
    free (self->content_type);
    free (self->body);
    free (self->error);
    free (self->error_type);
    for (size_t i = 0; self->logs && i < self->log_count; i++) {
        free (self->logs [i].level);
        free (self->logs [i].message);
        free (self->logs [i].source);
    }
    free (self->logs);
    for (size_t i = 0; self->files && i < self->file_count; i++) {
        free (self->files [i].id);
        free (self->files [i].content_type);
        free (self->files [i].file_name);
        free (self->files [i].data);
    }
    free (self->files);
    for (size_t i = 0; self->requests && i < self->request_count; i++)
        free (self->requests [i]);
    free (self->requests);
    free (self);
    *self_p = NULL;
}

const char *
kiln_msg_type_name (kiln_msg_type_t type)
{
    return s_type_known (type) ? s_types [type].name : "UNKNOWN";
}

//  ---------------------------------------------------------------------
//  Encoding

//  Packs a string key or value; -1 if over the cap (the peer would refuse
//  it, so better to fail here, where the bug is).
static int
s_pack_str (msgpack_packer *pk, const char *s)
{
    size_t len = strlen (s);
    if (len > KILN_MSG_MAX_STRING_BYTES)
        return -1;
    if (msgpack_pack_str (pk, len) || msgpack_pack_str_body (pk, s, len))
        return -1;
    return 0;
}

static int
s_pack_bin (msgpack_packer *pk, const uint8_t *data, size_t size)
{
    if (size > KILN_MSG_MAX_BODY_BYTES || (size && !data))
        return -1;
    if (msgpack_pack_bin (pk, size) || msgpack_pack_bin_body (pk, data, size))
        return -1;
    return 0;
}

//  Whether the encoder emits this field: numbers always (0 is a value),
//  required arrays always (empty is a value), the rest when set.
static bool
s_field_present (const kiln_msg_t *self, s_field_id_t f, bool required)
{
    const s_field_t *field = &s_fields [f];
    switch (field->kind) {
        case K_STR:
        case K_BIN:
            return *AT_CONST (self, field->offset, void *) != NULL;
        case K_U64:
        case K_U32:
        case K_I32:
            return true;
        case K_BOOL:
            return *AT_CONST (self, field->offset, bool);
        case K_SLOTS:
            return required || self->slot_count > 0;
        case K_LOGS:
            return required || self->log_count > 0;
        case K_FILES:
            return required || self->file_count > 0;
        case K_STRS:
            return required || self->request_count > 0;
    }
    return false;
}

static int
s_pack_field (msgpack_packer *pk, const kiln_msg_t *self, s_field_id_t f)
{
    const s_field_t *field = &s_fields [f];
    if (s_pack_str (pk, field->name))
        return -1;
    switch (field->kind) {
        case K_STR:
            return s_pack_str (pk, *AT_CONST (self, field->offset, char *));
        case K_BIN:
            return s_pack_bin (pk, *AT_CONST (self, field->offset, uint8_t *),
                               *AT_CONST (self, field->size_offset, size_t));
        case K_U64:
            return msgpack_pack_uint64 (pk, *AT_CONST (self, field->offset, uint64_t));
        case K_U32:
            return msgpack_pack_uint32 (pk, *AT_CONST (self, field->offset, uint32_t));
        case K_I32:
            return msgpack_pack_int32 (pk, *AT_CONST (self, field->offset, int32_t));
        case K_BOOL:
            return *AT_CONST (self, field->offset, bool)? msgpack_pack_true (pk)
                                                         : msgpack_pack_false (pk);
        case K_SLOTS:
            if (self->slot_count > KILN_MSG_MAX_ITEMS || (self->slot_count && !self->slots))
                return -1;
            if (msgpack_pack_map (pk, self->slot_count))
                return -1;
            for (size_t i = 0; i < self->slot_count; i++) {
                if (!self->slots [i].machine_type
                ||  s_pack_str (pk, self->slots [i].machine_type)
                ||  msgpack_pack_uint32 (pk, self->slots [i].count))
                    return -1;
            }
            return 0;
        case K_LOGS:
            if (self->log_count > KILN_MSG_MAX_ITEMS || (self->log_count && !self->logs))
                return -1;
            if (msgpack_pack_array (pk, self->log_count))
                return -1;
            for (size_t i = 0; i < self->log_count; i++) {
                const kiln_msg_log_t *log = &self->logs [i];
                if (!log->message)
                    return -1;
                if (msgpack_pack_map (pk, 2 + (log->level != NULL) + (log->source != NULL)))
                    return -1;
                if (log->level && (s_pack_str (pk, "level") || s_pack_str (pk, log->level)))
                    return -1;
                if (s_pack_str (pk, "message") || s_pack_str (pk, log->message))
                    return -1;
                if (log->source && (s_pack_str (pk, "source") || s_pack_str (pk, log->source)))
                    return -1;
                if (s_pack_str (pk, "timestamp") || msgpack_pack_int64 (pk, log->timestamp_ms))
                    return -1;
            }
            return 0;
        case K_FILES:
            if (self->file_count > KILN_MSG_MAX_ITEMS || (self->file_count && !self->files))
                return -1;
            if (msgpack_pack_array (pk, self->file_count))
                return -1;
            for (size_t i = 0; i < self->file_count; i++) {
                const kiln_msg_file_t *file = &self->files [i];
                if (!file->id)
                    return -1;
                if (msgpack_pack_map (pk, 2 + (file->content_type != NULL) + (file->file_name != NULL)))
                    return -1;
                if (s_pack_str (pk, "id") || s_pack_str (pk, file->id))
                    return -1;
                if (file->content_type
                && (s_pack_str (pk, "content_type") || s_pack_str (pk, file->content_type)))
                    return -1;
                if (file->file_name
                && (s_pack_str (pk, "file_name") || s_pack_str (pk, file->file_name)))
                    return -1;
                if (s_pack_str (pk, "data") || s_pack_bin (pk, file->data, file->size))
                    return -1;
            }
            return 0;
        case K_STRS:
            if (self->request_count > KILN_MSG_MAX_ITEMS || (self->request_count && !self->requests))
                return -1;
            if (msgpack_pack_array (pk, self->request_count))
                return -1;
            for (size_t i = 0; i < self->request_count; i++)
                if (!self->requests [i] || s_pack_str (pk, self->requests [i]))
                    return -1;
            return 0;
    }
    return -1;
}

uint8_t *
kiln_msg_encode (const kiln_msg_t *self, size_t *size)
{
    if (!self || !s_type_known (self->type))
        return NULL;
    const s_type_t *type = &s_types [self->type];

    //  A required string left NULL would be refused by the peer.
    size_t count = 0;
    for (int f = 0; f < F_COUNT; f++) {
        if (!(type->fields & BIT (f)))
            continue;
        bool required = (type->required & BIT (f)) != 0;
        if (s_field_present (self, f, required))
            count++;
        else
        if (required)
            return NULL;
    }

    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    const char header [2] = { KILN_PROTO_VERSION, (char) self->type };
    int rc = msgpack_sbuffer_write (&sbuf, header, 2);
    if (rc == 0)
        rc = msgpack_pack_map (&pk, count);
    for (int f = 0; rc == 0 && f < F_COUNT; f++) {
        if ((type->fields & BIT (f))
        &&  s_field_present (self, f, (type->required & BIT (f)) != 0))
            rc = s_pack_field (&pk, self, f);
    }
    if (rc) {
        msgpack_sbuffer_destroy (&sbuf);
        return NULL;
    }
    if (size)
        *size = sbuf.size;
    return (uint8_t *) msgpack_sbuffer_release (&sbuf);
}

//  ---------------------------------------------------------------------
//  Structural check

//  Reads a big-endian unsigned of n bytes at *pos, if there are n bytes.
static bool
s_read_be (const uint8_t *data, size_t size, size_t *pos, int n, uint64_t *value)
{
    if (size - *pos < (size_t) n)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | data [*pos + i];
    *pos += n;
    *value = v;
    return true;
}

//  Walks one msgpack object at *pos, checking that every length it
//  declares fits in the bytes that remain. Counts objects in *objects.
static bool
s_walk (const uint8_t *data, size_t size, size_t *pos, int depth, size_t *objects)
{
    if (depth > WALK_MAX_DEPTH || ++*objects > WALK_MAX_OBJECTS || *pos >= size)
        return false;
    uint8_t b = data [(*pos)++];
    uint64_t len = 0;
    uint64_t items = 0;             //  objects that follow, for containers
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return true;                //  fixint, nil, bool
    if ((b & 0xf0) == 0x80)
        items = 2 * (uint64_t) (b & 0x0f);
    else
    if ((b & 0xf0) == 0x90)
        items = b & 0x0f;
    else
    if ((b & 0xe0) == 0xa0)
        len = b & 0x1f;
    else
    switch (b) {
        case 0xc4: case 0xd9:       //  bin8, str8
            if (!s_read_be (data, size, pos, 1, &len)) return false;
            break;
        case 0xc5: case 0xda:       //  bin16, str16
            if (!s_read_be (data, size, pos, 2, &len)) return false;
            break;
        case 0xc6: case 0xdb:       //  bin32, str32
            if (!s_read_be (data, size, pos, 4, &len)) return false;
            break;
        case 0xc7:                  //  ext8, 16, 32: length, then type byte
            if (!s_read_be (data, size, pos, 1, &len)) return false;
            len += 1;
            break;
        case 0xc8:
            if (!s_read_be (data, size, pos, 2, &len)) return false;
            len += 1;
            break;
        case 0xc9:
            if (!s_read_be (data, size, pos, 4, &len)) return false;
            len += 1;
            break;
        case 0xca: len = 4; break;  //  float32
        case 0xcb: len = 8; break;  //  float64
        case 0xcc: case 0xd0: len = 1; break;
        case 0xcd: case 0xd1: len = 2; break;
        case 0xce: case 0xd2: len = 4; break;
        case 0xcf: case 0xd3: len = 8; break;
        case 0xd4: len = 2; break;  //  fixext 1, 2, 4, 8, 16 (plus type byte)
        case 0xd5: len = 3; break;
        case 0xd6: len = 5; break;
        case 0xd7: len = 9; break;
        case 0xd8: len = 17; break;
        case 0xdc:                  //  array16, 32
            if (!s_read_be (data, size, pos, 2, &items)) return false;
            break;
        case 0xdd:
            if (!s_read_be (data, size, pos, 4, &items)) return false;
            break;
        case 0xde:                  //  map16, 32
            if (!s_read_be (data, size, pos, 2, &items)) return false;
            items *= 2;
            break;
        case 0xdf:
            if (!s_read_be (data, size, pos, 4, &items)) return false;
            items *= 2;
            break;
        default:                    //  0xc1, never used
            return false;
    }
    if (len > size - *pos)
        return false;
    *pos += len;
    //  Every object takes at least one byte, so more items than bytes
    //  left is a lie; refuse before anyone allocates for it.
    if (items > size - *pos)
        return false;
    for (uint64_t i = 0; i < items; i++)
        if (!s_walk (data, size, pos, depth + 1, objects))
            return false;
    return true;
}

//  ---------------------------------------------------------------------
//  Decoding

static bool
s_key_is (const msgpack_object *key, const char *name)
{
    size_t len = strlen (name);
    return key->type == MSGPACK_OBJECT_STR && key->via.str.size == len
        && memcmp (key->via.str.ptr, name, len) == 0;
}

//  Copies a msgpack str into a new C string: within the cap, no NUL
//  inside (a C string would silently end there). NULL if not acceptable.
static char *
s_get_str (const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > KILN_MSG_MAX_STRING_BYTES)
        return NULL;
    if (memchr (o->via.str.ptr, 0, o->via.str.size))
        return NULL;
    return strndup (o->via.str.ptr, o->via.str.size);
}

//  Copies bin (or str) data, adding a NUL after the last byte so a
//  receiver may read a JSON body as a string.
static uint8_t *
s_get_bin (const msgpack_object *o, size_t *size)
{
    const char *ptr;
    size_t len;
    if (o->type == MSGPACK_OBJECT_BIN) {
        ptr = o->via.bin.ptr;
        len = o->via.bin.size;
    }
    else
    if (o->type == MSGPACK_OBJECT_STR) {
        ptr = o->via.str.ptr;
        len = o->via.str.size;
    }
    else
        return NULL;
    if (len > KILN_MSG_MAX_BODY_BYTES)
        return NULL;
    uint8_t *data = malloc (len + 1);
    if (!data)
        return NULL;
    if (len)
        memcpy (data, ptr, len);
    data [len] = 0;
    *size = len;
    return data;
}

static bool
s_get_int (const msgpack_object *o, int64_t min, uint64_t max, int64_t *value)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > max)
            return false;
        *value = (int64_t) o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        if (o->via.i64 < min)
            return false;
        *value = o->via.i64;
        return true;
    }
    return false;
}

static const char *
s_decode_slots (kiln_msg_t *self, const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size > KILN_MSG_MAX_ITEMS)
        return s_fields [F_SLOTS].invalid;
    size_t n = o->via.map.size;
    self->slots = calloc (n ? n : 1, sizeof (kiln_msg_slot_t));
    if (!self->slots)
        return "out of memory";
    for (size_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr [i];
        int64_t count;
        char *machine_type = s_get_str (&kv->key);
        if (!machine_type)
            return s_fields [F_SLOTS].invalid;
        self->slots [self->slot_count].machine_type = machine_type;
        self->slot_count++;
        if (!*machine_type || !s_get_int (&kv->val, 0, UINT32_MAX, &count))
            return s_fields [F_SLOTS].invalid;
        self->slots [i].count = (uint32_t) count;
        for (size_t j = 0; j < i; j++)
            if (strcmp (self->slots [j].machine_type, machine_type) == 0)
                return "field 'slots' names a machine type twice";
    }
    return NULL;
}

static const char *
s_decode_logs (kiln_msg_t *self, const msgpack_object *o)
{
    static const char *invalid = "field 'logs' has a malformed item";
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > KILN_MSG_MAX_ITEMS)
        return s_fields [F_LOGS].invalid;
    size_t n = o->via.array.size;
    self->logs = calloc (n ? n : 1, sizeof (kiln_msg_log_t));
    if (!self->logs)
        return "out of memory";
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *item = &o->via.array.ptr [i];
        if (item->type != MSGPACK_OBJECT_MAP)
            return invalid;
        kiln_msg_log_t *log = &self->logs [i];
        self->log_count++;
        for (size_t k = 0; k < item->via.map.size; k++) {
            const msgpack_object *key = &item->via.map.ptr [k].key;
            const msgpack_object *val = &item->via.map.ptr [k].val;
            char **target = NULL;
            if (s_key_is (key, "level"))
                target = &log->level;
            else
            if (s_key_is (key, "message"))
                target = &log->message;
            else
            if (s_key_is (key, "source"))
                target = &log->source;
            else
            if (s_key_is (key, "timestamp")) {
                if (!s_get_int (val, INT64_MIN, INT64_MAX, &log->timestamp_ms))
                    return invalid;
                continue;
            }
            else
                continue;           //  a newer peer's field
            if (*target)
                return invalid;     //  duplicate key
            if (val->type == MSGPACK_OBJECT_NIL)
                continue;
            if (!(*target = s_get_str (val)))
                return invalid;
        }
        if (!log->message)
            return invalid;
    }
    return NULL;
}

static const char *
s_decode_requests (kiln_msg_t *self, const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > KILN_MSG_MAX_ITEMS)
        return s_fields [F_REQUESTS].invalid;
    size_t n = o->via.array.size;
    self->requests = calloc (n ? n : 1, sizeof (char *));
    if (!self->requests)
        return "out of memory";
    for (size_t i = 0; i < n; i++) {
        if (!(self->requests [i] = s_get_str (&o->via.array.ptr [i])))
            return "field 'requests' has a malformed item";
        self->request_count++;
    }
    return NULL;
}

static const char *
s_decode_files (kiln_msg_t *self, const msgpack_object *o)
{
    static const char *invalid = "field 'files' has a malformed item";
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > KILN_MSG_MAX_ITEMS)
        return s_fields [F_FILES].invalid;
    size_t n = o->via.array.size;
    self->files = calloc (n ? n : 1, sizeof (kiln_msg_file_t));
    if (!self->files)
        return "out of memory";
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *item = &o->via.array.ptr [i];
        if (item->type != MSGPACK_OBJECT_MAP)
            return invalid;
        kiln_msg_file_t *file = &self->files [i];
        self->file_count++;
        for (size_t k = 0; k < item->via.map.size; k++) {
            const msgpack_object *key = &item->via.map.ptr [k].key;
            const msgpack_object *val = &item->via.map.ptr [k].val;
            char **target = NULL;
            if (s_key_is (key, "id"))
                target = &file->id;
            else
            if (s_key_is (key, "content_type"))
                target = &file->content_type;
            else
            if (s_key_is (key, "file_name"))
                target = &file->file_name;
            else
            if (s_key_is (key, "data")) {
                if (file->data || !(file->data = s_get_bin (val, &file->size)))
                    return invalid;
                continue;
            }
            else
                continue;
            if (*target)
                return invalid;
            if (val->type == MSGPACK_OBJECT_NIL)
                continue;
            if (!(*target = s_get_str (val)))
                return invalid;
        }
        if (!file->id || !file->data)
            return invalid;
    }
    return NULL;
}

//  Decodes one field's value into self. NULL, or why not.
static const char *
s_decode_field (kiln_msg_t *self, s_field_id_t f, const msgpack_object *val, bool required)
{
    const s_field_t *field = &s_fields [f];
    //  nil stands for "absent" in an optional field.
    if (val->type == MSGPACK_OBJECT_NIL)
        return required ? field->invalid : NULL;
    int64_t n;
    switch (field->kind) {
        case K_STR:
            if (!(*AT (self, field->offset, char *) = s_get_str (val)))
                return field->invalid;
            return NULL;
        case K_BIN:
            if (!(*AT (self, field->offset, uint8_t *)
                    = s_get_bin (val, AT (self, field->size_offset, size_t))))
                return field->invalid;
            return NULL;
        case K_U64:
            if (val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return field->invalid;
            *AT (self, field->offset, uint64_t) = val->via.u64;
            return NULL;
        case K_U32:
            if (!s_get_int (val, 0, UINT32_MAX, &n))
                return field->invalid;
            *AT (self, field->offset, uint32_t) = (uint32_t) n;
            return NULL;
        case K_I32:
            if (!s_get_int (val, INT32_MIN, INT32_MAX, &n))
                return field->invalid;
            *AT (self, field->offset, int32_t) = (int32_t) n;
            return NULL;
        case K_BOOL:
            if (val->type != MSGPACK_OBJECT_BOOLEAN)
                return field->invalid;
            *AT (self, field->offset, bool) = val->via.boolean;
            return NULL;
        case K_SLOTS:
            return s_decode_slots (self, val);
        case K_LOGS:
            return s_decode_logs (self, val);
        case K_FILES:
            return s_decode_files (self, val);
        case K_STRS:
            return s_decode_requests (self, val);
    }
    return field->invalid;
}

kiln_msg_t *
kiln_msg_decode (const uint8_t *data, size_t size, const char **reason)
{
    const char *why = NULL;
    if (!data || size < 2) {
        if (reason)
            *reason = "frame too short";
        return NULL;
    }
    if (data [0] != KILN_PROTO_VERSION) {
        if (reason)
            *reason = "unsupported protocol version";
        return NULL;
    }
    if (!s_type_known (data [1])) {
        if (reason)
            *reason = "unknown message type";
        return NULL;
    }
    const s_type_t *type = &s_types [data [1]];
    size_t pos = 0, objects = 0;
    if (!s_walk (data + 2, size - 2, &pos, 0, &objects)) {
        if (reason)
            *reason = "malformed msgpack";
        return NULL;
    }
    if (pos != size - 2) {
        if (reason)
            *reason = "trailing bytes after the message";
        return NULL;
    }

    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    size_t offset = 0;
    kiln_msg_t *self = NULL;
    msgpack_unpack_return rc = msgpack_unpack_next (&result, (const char *) data + 2, size - 2, &offset);
    if (rc != MSGPACK_UNPACK_SUCCESS || offset != size - 2) {
        why = rc == MSGPACK_UNPACK_NOMEM_ERROR ? "out of memory" : "malformed msgpack";
        goto done;
    }
    const msgpack_object *root = &result.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        why = "message body is not a map";
        goto done;
    }
    self = kiln_msg_new (data [1]);
    if (!self) {
        why = "out of memory";
        goto done;
    }
    uint32_t seen = 0;
    for (size_t i = 0; i < root->via.map.size && !why; i++) {
        const msgpack_object *key = &root->via.map.ptr [i].key;
        const msgpack_object *val = &root->via.map.ptr [i].val;
        if (key->type != MSGPACK_OBJECT_STR) {
            why = "map key is not a string";
            break;
        }
        int f;
        for (f = 0; f < F_COUNT; f++)
            if ((type->fields & BIT (f)) && s_key_is (key, s_fields [f].name))
                break;
        if (f == F_COUNT)
            continue;               //  unknown to this type: skipped
        if (seen & BIT (f)) {
            why = "duplicate field";
            break;
        }
        seen |= BIT (f);
        why = s_decode_field (self, f, val, (type->required & BIT (f)) != 0);
    }
    for (int f = 0; f < F_COUNT && !why; f++)
        if ((type->required & BIT (f)) && !(seen & BIT (f)))
            why = s_fields [f].missing;

done:
    msgpack_unpacked_destroy (&result);
    if (why) {
        kiln_msg_destroy (&self);
        if (reason)
            *reason = why;
        return NULL;
    }
    return self;
}

//  ---------------------------------------------------------------------
//  Transport

int
kiln_msg_send (kiln_msg_t **self_p, zsock_t *sock, const char *identity)
{
    if (!self_p || !*self_p)
        return -1;
    kiln_msg_t *self = *self_p;
    int rc = -1;
    bool router = sock && zsock_type (sock) == ZMQ_ROUTER;
    size_t size = 0;
    uint8_t *data = NULL;
    if (!sock)
        kiln_log_error ("kiln_msg_send: no socket");
    else
    if (router != (identity != NULL))
        kiln_log_error ("kiln_msg_send %s: a ROUTER needs an identity, other sockets none",
                        kiln_msg_type_name (self->type));
    else
    if (!(data = kiln_msg_encode (self, &size)))
        kiln_log_error ("kiln_msg_send %s: cannot encode (missing required field, or over a size cap)",
                        kiln_msg_type_name (self->type));
    else {
        zmsg_t *msg = zmsg_new ();
        if (msg && (!identity || zmsg_addstr (msg, identity) == 0)
        &&  zmsg_addmem (msg, data, size) == 0)
            rc = zmsg_send (&msg, sock);
        zmsg_destroy (&msg);
    }
    free (data);
    kiln_msg_destroy (self_p);
    return rc;
}

kiln_msg_t *
kiln_msg_recv (zsock_t *sock, char **identity_p)
{
    if (identity_p)
        *identity_p = NULL;
    if (!sock || zsys_interrupted)
        return NULL;
    zmsg_t *msg = zmsg_recv (sock);
    if (!msg)
        return NULL;                //  interrupted, or the socket closed

    bool router = zsock_type (sock) == ZMQ_ROUTER;
    size_t frames = zmsg_size (msg);
    char *identity = NULL;
    const char *why = NULL;
    kiln_msg_t *self = NULL;
    if (router) {
        //  Peers name themselves with a printable id; ZeroMQ's own
        //  generated identities start with a NUL and cannot be used to
        //  answer by name.
        zframe_t *id_frame = zmsg_first (msg);
        size_t id_size = zframe_size (id_frame);
        if (id_size == 0 || id_size > KILN_MSG_MAX_STRING_BYTES
        ||  memchr (zframe_data (id_frame), 0, id_size))
            why = "peer has no routing identity of its own";
        else
            identity = zframe_strdup (id_frame);
    }
    if (!why && frames != (router ? 2u : 1u))
        why = "wrong number of frames";
    if (!why) {
        zframe_t *payload = zmsg_last (msg);
        self = kiln_msg_decode (zframe_data (payload), zframe_size (payload), &why);
    }
    if (!self) {
        kiln_log_warn ("dropped a malformed message%s%s: %s",
                       identity ? " from " : "", identity ? identity : "",
                       why ? why : "out of memory");
        free (identity);
        identity = NULL;
    }
    zmsg_destroy (&msg);
    if (identity_p)
        *identity_p = identity;
    else
        free (identity);
    return self;
}

//  ---------------------------------------------------------------------
//  Selftest

//  A message with every field of the struct filled, whatever the type:
//  the codec must carry the type's own fields and drop the others.
static kiln_msg_t *
s_test_full (kiln_msg_type_t type)
{
    kiln_msg_t *m = kiln_msg_new (type);
    assert (m);
    m->worker_id = strdup ("worker-1");
    m->runner_id = strdup ("runner-7");
    m->host = strdup ("gpu-host.local");
    m->app = strdup ("local/echo");
    m->revision = 0x1234567890ULL;
    m->artifact = strdup ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    m->machine_type = strdup ("GPU-H100");
    m->gpu = 3;
    m->draining = true;
    m->max_multiplexing = 4000000000u;
    m->slot_count = 2;
    m->slots = calloc (2, sizeof *m->slots);
    m->slots [0].machine_type = strdup ("CPU");
    m->slots [0].count = 8;
    m->slots [1].machine_type = strdup ("GPU-H100");
    m->slots [1].count = 0;
    m->request_id = strdup ("0f8fad5b-d9cb-469f-a165-70867728950e");
    m->path = strdup ("/sub/path");
    m->content_type = strdup ("application/octet-stream");
    m->body_size = 5;
    m->body = malloc (5);
    memcpy (m->body, "a\0b\0c", 5);
    m->status = -9;
    m->error = strdup ("it broke: \xe2\x9c\x97");
    m->error_type = strdup ("runner_server_error");
    m->inference_ms = UINT64_MAX;
    m->log_count = 2;
    m->logs = calloc (2, sizeof *m->logs);
    m->logs [0].level = strdup ("INFO");
    m->logs [0].message = strdup ("loading");
    m->logs [0].source = strdup ("app");
    m->logs [0].timestamp_ms = 1700000000123LL;
    m->logs [1].message = strdup ("no level, no source");
    m->logs [1].timestamp_ms = -1;
    m->file_count = 2;
    m->files = calloc (2, sizeof *m->files);
    m->files [0].id = strdup ("1b4e28ba-2fa1-41d2-883f-0016d3cca427");
    m->files [0].content_type = strdup ("image/png");
    m->files [0].file_name = strdup ("out.png");
    m->files [0].size = 4;
    m->files [0].data = malloc (4);
    memcpy (m->files [0].data, "\x89PN\0", 4);
    m->files [1].id = strdup ("2b4e28ba-2fa1-41d2-883f-0016d3cca427");
    m->files [1].size = 0;
    m->files [1].data = malloc (1);   //  empty file: present, 0 bytes
    m->request_count = 2;
    m->requests = calloc (2, sizeof (char *));
    m->requests [0] = strdup ("0f8fad5b-d9cb-469f-a165-70867728950e");
    m->requests [1] = strdup ("");
    return m;
}

static bool
s_test_str_eq (const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp (a, b) == 0);
}

//  Checks that b (decoded) holds exactly a's fields for a's type, and
//  nothing of the other types' fields.
static void
s_test_check (const kiln_msg_t *a, const kiln_msg_t *b)
{
    uint32_t has = s_types [a->type].fields;
    assert (b->type == a->type);
#define CHECK_STR(F, field) \
    assert (s_test_str_eq (b->field, (has & BIT (F)) ? a->field : NULL))
#define CHECK_NUM(F, field, absent) \
    assert (b->field == ((has & BIT (F)) ? a->field : (absent)))
    CHECK_STR (F_WORKER_ID, worker_id);
    CHECK_STR (F_RUNNER_ID, runner_id);
    CHECK_STR (F_HOST, host);
    CHECK_STR (F_APP, app);
    CHECK_NUM (F_REVISION, revision, 0);
    CHECK_STR (F_ARTIFACT, artifact);
    CHECK_STR (F_MACHINE_TYPE, machine_type);
    CHECK_NUM (F_GPU, gpu, -1);
    CHECK_NUM (F_MAX_MULTIPLEXING, max_multiplexing, 0);
    CHECK_STR (F_REQUEST_ID, request_id);
    CHECK_STR (F_PATH, path);
    CHECK_STR (F_CONTENT_TYPE, content_type);
    CHECK_NUM (F_STATUS, status, 0);
    CHECK_STR (F_ERROR, error);
    CHECK_STR (F_ERROR_TYPE, error_type);
    CHECK_NUM (F_INFERENCE_MS, inference_ms, 0);
    CHECK_NUM (F_DRAINING, draining, false);
    if (has & BIT (F_BODY)) {
        assert (b->body && b->body_size == a->body_size);
        assert (memcmp (b->body, a->body, a->body_size) == 0);
        assert (b->body [b->body_size] == 0);
    }
    else
        assert (!b->body && b->body_size == 0);
    if (has & BIT (F_SLOTS)) {
        assert (b->slot_count == a->slot_count);
        for (size_t i = 0; i < a->slot_count; i++) {
            assert (strcmp (b->slots [i].machine_type, a->slots [i].machine_type) == 0);
            assert (b->slots [i].count == a->slots [i].count);
        }
    }
    else
        assert (!b->slots && b->slot_count == 0);
    if (has & BIT (F_LOGS)) {
        assert (b->log_count == a->log_count);
        for (size_t i = 0; i < a->log_count; i++) {
            assert (s_test_str_eq (b->logs [i].level, a->logs [i].level));
            assert (s_test_str_eq (b->logs [i].message, a->logs [i].message));
            assert (s_test_str_eq (b->logs [i].source, a->logs [i].source));
            assert (b->logs [i].timestamp_ms == a->logs [i].timestamp_ms);
        }
    }
    else
        assert (!b->logs && b->log_count == 0);
    if (has & BIT (F_FILES)) {
        assert (b->file_count == a->file_count);
        for (size_t i = 0; i < a->file_count; i++) {
            assert (s_test_str_eq (b->files [i].id, a->files [i].id));
            assert (s_test_str_eq (b->files [i].content_type, a->files [i].content_type));
            assert (s_test_str_eq (b->files [i].file_name, a->files [i].file_name));
            assert (b->files [i].size == a->files [i].size);
            assert (b->files [i].data);
            assert (memcmp (b->files [i].data, a->files [i].data, a->files [i].size) == 0);
        }
    }
    else
        assert (!b->files && b->file_count == 0);
    if (has & BIT (F_REQUESTS)) {
        assert (b->request_count == a->request_count);
        for (size_t i = 0; i < a->request_count; i++)
            assert (s_test_str_eq (b->requests [i], a->requests [i]));
    }
    else
        assert (!b->requests && b->request_count == 0);
#undef CHECK_STR
#undef CHECK_NUM
}

//  Hostile-frame builder: header bytes, then whatever the test packs.
typedef struct {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
} s_test_frame_t;

static void
s_test_frame_start (s_test_frame_t *t, uint8_t version, uint8_t type)
{
    msgpack_sbuffer_init (&t->sbuf);
    msgpack_packer_init (&t->pk, &t->sbuf, msgpack_sbuffer_write);
    const char header [2] = { (char) version, (char) type };
    msgpack_sbuffer_write (&t->sbuf, header, 2);
}

static void
s_test_key (s_test_frame_t *t, const char *s)
{
    msgpack_pack_str (&t->pk, strlen (s));
    msgpack_pack_str_body (&t->pk, s, strlen (s));
}

//  Decodes the frame; returns the reason (NULL if it decoded).
static const char *
s_test_frame_decode (s_test_frame_t *t)
{
    const char *reason = NULL;
    kiln_msg_t *m = kiln_msg_decode ((uint8_t *) t->sbuf.data, t->sbuf.size, &reason);
    msgpack_sbuffer_destroy (&t->sbuf);
    if (m) {
        kiln_msg_destroy (&m);
        return NULL;
    }
    assert (reason);
    return reason;
}

static const char *
s_test_raw (const void *data, size_t size)
{
    const char *reason = NULL;
    kiln_msg_t *m = kiln_msg_decode (data, size, &reason);
    if (m) {
        kiln_msg_destroy (&m);
        return NULL;
    }
    assert (reason);
    return reason;
}

static void
s_test_hostile (void)
{
    s_test_frame_t t;
    const char *why;

    //  Empty frame, header only, wrong version, unknown types.
    assert (s_test_raw ("", 0));
    assert (s_test_raw ("\x01", 1));
    assert (s_test_raw ("\x01\x03", 2));                   //  no map
    assert (s_test_raw ("\x01\x03\x80", 3) == NULL);       //  HEARTBEAT, empty map
    assert (strstr (s_test_raw ("\x02\x03\x80", 3), "version"));
    assert (strstr (s_test_raw ("\x00\x03\x80", 3), "version"));
    assert (strstr (s_test_raw ("\x01\x00\x80", 3), "unknown"));
    assert (strstr (s_test_raw ("\x01\x0c\x80", 3), "unknown"));
    //  CANCEL (the last type) needs its request id.
    assert (strstr (s_test_raw ("\x01\x0b\x80", 3), "request_id"));
    assert (strstr (s_test_raw ("\x01\xff\x80", 3), "unknown"));
    assert (kiln_msg_decode (NULL, 0, NULL) == NULL);       //  reason optional

    //  Trailing bytes; two maps; not a map.
    assert (strstr (s_test_raw ("\x01\x03\x80\x00", 4), "trailing"));
    assert (strstr (s_test_raw ("\x01\x03\x80\x80", 4), "trailing"));
    assert (s_test_raw ("\x01\x03\x90", 3));               //  array
    assert (s_test_raw ("\x01\x03\xa0", 3));               //  string
    assert (s_test_raw ("\x01\x03\xc1", 3));               //  never-used byte

    //  Huge declared lengths in a few bytes: refused without allocating.
    assert (s_test_raw ("\x01\x03\xdf\xff\xff\xff\xff", 7));             //  map32
    assert (s_test_raw ("\x01\x03\x81\xa1x\xdd\xff\xff\xff\xff", 10));    //  array32
    assert (s_test_raw ("\x01\x03\x81\xa1x\xdb\xff\xff\xff\xff", 10));    //  str32
    assert (s_test_raw ("\x01\x03\x81\xa1x\xc6\xff\xff\xff\xff", 10));    //  bin32
    assert (s_test_raw ("\x01\x03\x81\xa1x\xc9\xff\xff\xff\xff\x01", 11)); //  ext32
    assert (s_test_raw ("\x01\x03\x81\xa1x\xde\xff\xff", 8));             //  map16
    //  A declared count that fits the bytes but nests too deep.
    {
        uint8_t deep [64] = { 1, 3, 0x81, 0xa1, 'x' };
        size_t n = 5;
        for (int i = 0; i < 40; i++)
            deep [n++] = 0x91;
        deep [n++] = 0xc0;
        assert (s_test_raw (deep, n));
    }

    //  A string field given as an int.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_STOP);
    msgpack_pack_map (&t.pk, 1);
    s_test_key (&t, "runner_id");
    msgpack_pack_int (&t.pk, 42);
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "runner_id"));

    //  Required field missing.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_STOP);
    msgpack_pack_map (&t.pk, 0);
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "missing") && strstr (why, "runner_id"));

    //  Required field given as nil.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_STOP);
    msgpack_pack_map (&t.pk, 1);
    s_test_key (&t, "runner_id");
    msgpack_pack_nil (&t.pk);
    assert (s_test_frame_decode (&t));

    //  Duplicate key.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_STOP);
    msgpack_pack_map (&t.pk, 2);
    s_test_key (&t, "runner_id");
    s_test_key (&t, "r1");
    s_test_key (&t, "runner_id");
    s_test_key (&t, "r2");
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "duplicate"));

    //  Unknown keys, of any shape, are skipped; so are other types' fields.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_STOP);
    msgpack_pack_map (&t.pk, 5);
    s_test_key (&t, "future_field");
    msgpack_pack_array (&t.pk, 2);
    msgpack_pack_double (&t.pk, 1.5);
    msgpack_pack_map (&t.pk, 0);
    s_test_key (&t, "runner_id");
    s_test_key (&t, "r1");
    s_test_key (&t, "body");                    //  not a RUNNER_STOP field
    msgpack_pack_int (&t.pk, 7);
    s_test_key (&t, "future_field");            //  unknown twice: still skipped
    msgpack_pack_true (&t.pk);
    s_test_key (&t, "");
    msgpack_pack_nil (&t.pk);
    assert (s_test_frame_decode (&t) == NULL);

    //  A key that is not a string.
    s_test_frame_start (&t, 1, KILN_MSG_HEARTBEAT);
    msgpack_pack_map (&t.pk, 1);
    msgpack_pack_int (&t.pk, 1);
    msgpack_pack_int (&t.pk, 1);
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "key"));

    //  Integers: wrong sign, out of range, float.
    const char *int_fields [] = { "status", "status", "status", "inference_ms", "status", NULL };
    for (int i = 0; int_fields [i]; i++) {
        s_test_frame_start (&t, 1, KILN_MSG_RESULT);
        msgpack_pack_map (&t.pk, 3);
        s_test_key (&t, "request_id");
        s_test_key (&t, "abc");
        s_test_key (&t, "status");
        if (i == 0) msgpack_pack_int64 (&t.pk, (int64_t) INT32_MAX + 1);
        else if (i == 1) msgpack_pack_int64 (&t.pk, (int64_t) INT32_MIN - 1);
        else if (i == 2) msgpack_pack_double (&t.pk, 200.0);
        else msgpack_pack_int (&t.pk, 200);
        s_test_key (&t, i == 3 ? "inference_ms" : "error");
        if (i == 3) msgpack_pack_int (&t.pk, -1);
        else if (i == 4) s_test_key (&t, "");
        else msgpack_pack_nil (&t.pk);
        why = s_test_frame_decode (&t);
        if (i == 4)
            assert (why == NULL);               //  a valid one, for contrast
        else
            assert (why && strstr (why, int_fields [i]));
    }

    //  Strings: over the cap, with a NUL inside; body as str is fine.
    char *big = malloc (KILN_MSG_MAX_STRING_BYTES + 1);
    memset (big, 'x', KILN_MSG_MAX_STRING_BYTES + 1);
    for (int i = 0; i < 4; i++) {
        s_test_frame_start (&t, 1, KILN_MSG_REQUEST);
        msgpack_pack_map (&t.pk, 3);
        s_test_key (&t, "request_id");
        s_test_key (&t, "abc");
        s_test_key (&t, "path");
        if (i == 0) {
            msgpack_pack_str (&t.pk, KILN_MSG_MAX_STRING_BYTES + 1);
            msgpack_pack_str_body (&t.pk, big, KILN_MSG_MAX_STRING_BYTES + 1);
        }
        else
        if (i == 1) {
            msgpack_pack_str (&t.pk, 3);
            msgpack_pack_str_body (&t.pk, "a\0b", 3);
        }
        else {
            msgpack_pack_str (&t.pk, KILN_MSG_MAX_STRING_BYTES);
            msgpack_pack_str_body (&t.pk, big, KILN_MSG_MAX_STRING_BYTES);
        }
        s_test_key (&t, "body");
        if (i == 3)
            msgpack_pack_int (&t.pk, 5);
        else {
            msgpack_pack_str (&t.pk, 2);
            msgpack_pack_str_body (&t.pk, "{}", 2);
        }
        why = s_test_frame_decode (&t);
        if (i == 2)
            assert (why == NULL);
        else
            assert (why && strstr (why, i == 3 ? "body" : "path"));
    }
    free (big);

    //  Items: over the cap; malformed items; duplicate slot names.
    s_test_frame_start (&t, 1, KILN_MSG_LOG);
    msgpack_pack_map (&t.pk, 2);
    s_test_key (&t, "request_id");
    s_test_key (&t, "abc");
    s_test_key (&t, "logs");
    msgpack_pack_array (&t.pk, KILN_MSG_MAX_ITEMS + 1);
    for (int i = 0; i < KILN_MSG_MAX_ITEMS + 1; i++) {
        msgpack_pack_map (&t.pk, 1);
        s_test_key (&t, "message");
        s_test_key (&t, "m");
    }
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "logs"));

    for (int i = 0; i < 4; i++) {
        s_test_frame_start (&t, 1, KILN_MSG_LOG);
        msgpack_pack_map (&t.pk, 2);
        s_test_key (&t, "request_id");
        s_test_key (&t, "abc");
        s_test_key (&t, "logs");
        msgpack_pack_array (&t.pk, 1);
        if (i == 0)
            msgpack_pack_int (&t.pk, 1);            //  item not a map
        else {
            msgpack_pack_map (&t.pk, i == 3 ? 2 : 1);
            s_test_key (&t, i == 1 ? "level" : "message");
            if (i == 2)
                msgpack_pack_int (&t.pk, 5);        //  message not a string
            else
                s_test_key (&t, "x");
            if (i == 3) {
                s_test_key (&t, "message");         //  duplicate in the item
                s_test_key (&t, "y");
            }
        }
        why = s_test_frame_decode (&t);             //  i == 1: no message
        assert (why && strstr (why, "logs"));
    }

    for (int i = 0; i < 3; i++) {
        s_test_frame_start (&t, 1, KILN_MSG_RESULT);
        msgpack_pack_map (&t.pk, 3);
        s_test_key (&t, "request_id");
        s_test_key (&t, "abc");
        s_test_key (&t, "status");
        msgpack_pack_int (&t.pk, 200);
        s_test_key (&t, "files");
        msgpack_pack_array (&t.pk, 1);
        msgpack_pack_map (&t.pk, 2);
        s_test_key (&t, "id");
        s_test_key (&t, "f1");
        s_test_key (&t, i == 0 ? "name" : "data");  //  0: no data
        if (i == 1)
            msgpack_pack_int (&t.pk, 1);            //  data not bytes
        else {
            msgpack_pack_bin (&t.pk, 1);
            msgpack_pack_bin_body (&t.pk, "z", 1);
        }
        why = s_test_frame_decode (&t);
        if (i == 2)
            assert (why == NULL);
        else
            assert (why && strstr (why, "files"));
    }

    for (int i = 0; i < 3; i++) {
        s_test_frame_start (&t, 1, KILN_MSG_WORKER_HELLO);
        msgpack_pack_map (&t.pk, 3);
        s_test_key (&t, "worker_id");
        s_test_key (&t, "w");
        s_test_key (&t, "host");
        s_test_key (&t, "h");
        s_test_key (&t, "slots");
        if (i == 0) {
            msgpack_pack_map (&t.pk, 2);
            s_test_key (&t, "CPU");
            msgpack_pack_int (&t.pk, 1);
            s_test_key (&t, "CPU");
            msgpack_pack_int (&t.pk, 2);
        }
        else
        if (i == 1) {
            msgpack_pack_map (&t.pk, 1);
            s_test_key (&t, "CPU");
            msgpack_pack_int (&t.pk, -1);
        }
        else {
            msgpack_pack_array (&t.pk, 0);
        }
        why = s_test_frame_decode (&t);
        assert (why && strstr (why, "slots"));
    }

    //  A boolean given as anything else.
    s_test_frame_start (&t, 1, KILN_MSG_WORKER_HELLO);
    msgpack_pack_map (&t.pk, 4);
    s_test_key (&t, "worker_id");
    s_test_key (&t, "w");
    s_test_key (&t, "host");
    s_test_key (&t, "h");
    s_test_key (&t, "slots");
    msgpack_pack_map (&t.pk, 0);
    s_test_key (&t, "draining");
    msgpack_pack_int (&t.pk, 1);
    why = s_test_frame_decode (&t);
    assert (why && strstr (why, "draining"));

    //  Optional fields given as nil count as absent.
    s_test_frame_start (&t, 1, KILN_MSG_RUNNER_EXITED);
    msgpack_pack_map (&t.pk, 3);
    s_test_key (&t, "runner_id");
    s_test_key (&t, "r");
    s_test_key (&t, "status");
    msgpack_pack_int (&t.pk, -11);
    s_test_key (&t, "error");
    msgpack_pack_nil (&t.pk);
    assert (s_test_frame_decode (&t) == NULL);

    //  The encoder refuses what the decoder would: a required field
    //  missing, a string over the cap, too many items.
    kiln_msg_t *m = kiln_msg_new (KILN_MSG_REQUEST);
    size_t size;
    m->request_id = strdup ("abc");
    assert (kiln_msg_encode (m, &size) == NULL);            //  no path
    m->path = calloc (1, KILN_MSG_MAX_STRING_BYTES + 2);
    memset (m->path, '/', KILN_MSG_MAX_STRING_BYTES + 1);
    assert (kiln_msg_encode (m, &size) == NULL);
    m->path [1] = 0;
    uint8_t *data = kiln_msg_encode (m, &size);
    assert (data);
    free (data);
    kiln_msg_destroy (&m);
    m = kiln_msg_new (KILN_MSG_LOG);
    m->request_id = strdup ("abc");
    m->log_count = KILN_MSG_MAX_ITEMS + 1;
    m->logs = calloc (m->log_count, sizeof *m->logs);
    for (size_t i = 0; i < m->log_count; i++)
        m->logs [i].message = strdup ("x");
    assert (kiln_msg_encode (m, &size) == NULL);
    m->log_count = KILN_MSG_MAX_ITEMS;                      //  at the cap: fine
    data = kiln_msg_encode (m, &size);
    assert (data);
    kiln_msg_t *back = kiln_msg_decode (data, size, NULL);
    assert (back && back->log_count == KILN_MSG_MAX_ITEMS);
    kiln_msg_destroy (&back);
    free (data);
    m->log_count = KILN_MSG_MAX_ITEMS + 1;                  //  so destroy frees all
    kiln_msg_destroy (&m);
    m = kiln_msg_new (0);
    assert (kiln_msg_encode (m, &size) == NULL);            //  unknown type
    kiln_msg_destroy (&m);
    assert (kiln_msg_encode (NULL, &size) == NULL);
}

//  The real transport: a ROUTER and named DEALERs over inproc.
static void
s_test_transport (bool verbose)
{
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    assert (router);
    zsock_set_router_mandatory (router, 1);
    zsock_set_rcvtimeo (router, 5000);
    assert (zsock_bind (router, "inproc://kiln-msg-test") == 0);
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    assert (dealer);
    zsock_set_identity (dealer, "worker-1");
    zsock_set_rcvtimeo (dealer, 5000);
    assert (zsock_connect (dealer, "inproc://kiln-msg-test") == 0);

    //  dealer → router, with the identity.
    kiln_msg_t *m = s_test_full (KILN_MSG_WORKER_HELLO);
    kiln_msg_t *copy = s_test_full (KILN_MSG_WORKER_HELLO);
    assert (kiln_msg_send (&m, dealer, NULL) == 0);
    assert (m == NULL);
    char *identity = NULL;
    kiln_msg_t *got = kiln_msg_recv (router, &identity);
    assert (got && identity && strcmp (identity, "worker-1") == 0);
    s_test_check (copy, got);
    kiln_msg_destroy (&got);
    kiln_msg_destroy (&copy);
    free (identity);

    //  router → dealer, by name.
    m = s_test_full (KILN_MSG_REQUEST);
    copy = s_test_full (KILN_MSG_REQUEST);
    assert (kiln_msg_send (&m, router, "worker-1") == 0);
    assert (m == NULL);
    got = kiln_msg_recv (dealer, NULL);
    assert (got);
    s_test_check (copy, got);
    kiln_msg_destroy (&got);
    kiln_msg_destroy (&copy);

    //  A CANCEL carries only its request id.
    m = kiln_msg_new (KILN_MSG_CANCEL);
    m->request_id = strdup ("0f8fad5b-d9cb-469f-a165-70867728950e");
    m->path = strdup ("/not/sent");
    assert (kiln_msg_send (&m, router, "worker-1") == 0);
    got = kiln_msg_recv (dealer, NULL);
    assert (got && got->type == KILN_MSG_CANCEL);
    assert (streq (got->request_id, "0f8fad5b-d9cb-469f-a165-70867728950e"));
    assert (got->path == NULL);
    kiln_msg_destroy (&got);

    //  To a peer that is not there: -1, and the message is still freed.
    m = kiln_msg_new (KILN_MSG_HEARTBEAT);
    assert (kiln_msg_send (&m, router, "nobody") == -1);
    assert (m == NULL);

    //  Misuse is refused, not sent: no identity on a ROUTER, one on a
    //  DEALER, a message that cannot be encoded.
    if (!verbose)
        kiln_log_init ("kiln-selftest", "error");   //  the warnings below are expected
    m = kiln_msg_new (KILN_MSG_HEARTBEAT);
    assert (kiln_msg_send (&m, router, NULL) == -1 && !m);
    m = kiln_msg_new (KILN_MSG_HEARTBEAT);
    assert (kiln_msg_send (&m, dealer, "x") == -1 && !m);
    m = kiln_msg_new (KILN_MSG_RUNNER_STOP);        //  no runner_id
    assert (kiln_msg_send (&m, dealer, NULL) == -1 && !m);
    assert (kiln_msg_send (NULL, dealer, NULL) == -1);

    //  Malformed messages are dropped whole and the next one arrives:
    //  garbage, a multi-frame message, a valid frame with an extra frame.
    zstr_send (dealer, "garbage");
    zstr_sendm (dealer, "one");
    zstr_sendm (dealer, "two");
    zstr_send (dealer, "three");
    zframe_t *frame = zframe_new ("\x01\x03\x80", 3);
    zframe_send (&frame, dealer, ZFRAME_MORE);
    zstr_send (dealer, "extra");
    zsock_send (dealer, "b", "", (size_t) 0);       //  an empty frame
    m = kiln_msg_new (KILN_MSG_DISCONNECT);
    assert (kiln_msg_send (&m, dealer, NULL) == 0);
    identity = NULL;
    for (int i = 0; i < 4; i++) {
        got = kiln_msg_recv (router, &identity);
        assert (got == NULL && identity == NULL);
    }
    got = kiln_msg_recv (router, &identity);
    assert (got && got->type == KILN_MSG_DISCONNECT);
    assert (identity && strcmp (identity, "worker-1") == 0);
    kiln_msg_destroy (&got);
    free (identity);

    //  A peer with no identity of its own cannot be answered: dropped.
    zsock_t *anonymous = zsock_new (ZMQ_DEALER);
    assert (anonymous);
    assert (zsock_connect (anonymous, "inproc://kiln-msg-test") == 0);
    m = kiln_msg_new (KILN_MSG_HEARTBEAT);
    assert (kiln_msg_send (&m, anonymous, NULL) == 0);
    m = kiln_msg_new (KILN_MSG_HEARTBEAT);
    assert (kiln_msg_send (&m, dealer, NULL) == 0);
    //  (two pipes: either may be read first)
    int dropped = 0, heartbeats = 0;
    for (int i = 0; i < 2; i++) {
        got = kiln_msg_recv (router, &identity);
        if (got) {
            assert (got->type == KILN_MSG_HEARTBEAT);
            assert (identity && strcmp (identity, "worker-1") == 0);
            heartbeats++;
        }
        else {
            assert (identity == NULL);
            dropped++;
        }
        kiln_msg_destroy (&got);
        free (identity);
        identity = NULL;
    }
    assert (dropped == 1 && heartbeats == 1);

    //  Toward the dealer: a malformed payload, then a good one.
    zstr_sendm (router, "worker-1");
    zstr_send (router, "\x07junk");
    m = kiln_msg_new (KILN_MSG_RUNNER_STOP);
    m->runner_id = strdup ("r");
    assert (kiln_msg_send (&m, router, "worker-1") == 0);
    assert (kiln_msg_recv (dealer, NULL) == NULL);
    got = kiln_msg_recv (dealer, NULL);
    assert (got && got->type == KILN_MSG_RUNNER_STOP && strcmp (got->runner_id, "r") == 0);
    kiln_msg_destroy (&got);

    //  Nothing to read: NULL after the timeout, quietly.
    zsock_set_rcvtimeo (dealer, 50);
    assert (kiln_msg_recv (dealer, NULL) == NULL);

    kiln_log_init ("kiln-selftest", "info");
    zsock_destroy (&anonymous);
    zsock_destroy (&dealer);
    zsock_destroy (&router);
}

void
kiln_msg_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_msg: ");

    //  Every type round-trips with every field filled; names are right.
    for (int type = KILN_MSG_WORKER_HELLO; type <= KILN_MSG_TYPE_LAST; type++) {
        kiln_msg_t *m = s_test_full (type);
        size_t size = 0;
        uint8_t *data = kiln_msg_encode (m, &size);
        assert (data && size >= 3);
        assert (data [0] == KILN_PROTO_VERSION && data [1] == type);
        const char *reason = NULL;
        kiln_msg_t *back = kiln_msg_decode (data, size, &reason);
        assert (back);
        s_test_check (m, back);
        kiln_msg_destroy (&back);
        assert (back == NULL);

        //  Every truncation is refused, without a crash.
        for (size_t len = 0; len < size; len++) {
            uint8_t *prefix = malloc (len ? len : 1);  //  exact size: ASan sees overreads
            memcpy (prefix, data, len);
            reason = NULL;
            assert (kiln_msg_decode (prefix, len, &reason) == NULL);
            assert (reason);
            free (prefix);
        }
        //  One byte more is trailing garbage.
        uint8_t *longer = malloc (size + 1);
        memcpy (longer, data, size);
        longer [size] = 0xc0;
        assert (kiln_msg_decode (longer, size + 1, &reason) == NULL);
        free (longer);
        free (data);
        kiln_msg_destroy (&m);
        assert (strcmp (kiln_msg_type_name (type), s_types [type].name) == 0);
    }
    assert (strcmp (kiln_msg_type_name (KILN_MSG_REQUEST), "REQUEST") == 0);
    assert (strcmp (kiln_msg_type_name (KILN_MSG_CANCEL), "CANCEL") == 0);
    assert (KILN_MSG_CANCEL == 11);                 //  on the wire: never renumber
    assert (strcmp (kiln_msg_type_name (0), "UNKNOWN") == 0);
    assert (strcmp (kiln_msg_type_name (99), "UNKNOWN") == 0);

    //  The minimal messages: only the required fields set.
    kiln_msg_t *m = kiln_msg_new (KILN_MSG_RESULT);
    m->request_id = strdup ("r");
    size_t size;
    uint8_t *data = kiln_msg_encode (m, &size);
    assert (data);
    kiln_msg_t *back = kiln_msg_decode (data, size, NULL);
    assert (back && back->status == 0 && !back->body && !back->files && !back->error);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    m = kiln_msg_new (KILN_MSG_WORKER_HELLO);
    m->worker_id = strdup ("w");
    m->host = strdup ("h");
    data = kiln_msg_encode (m, &size);              //  slots: an empty map
    assert (data);
    back = kiln_msg_decode (data, size, NULL);
    assert (back && back->slot_count == 0 && !back->draining);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    //  A RUNNER_HELLO carries its GPU, -1 (none) by default.
    m = kiln_msg_new (KILN_MSG_RUNNER_HELLO);
    m->runner_id = strdup ("r");
    m->worker_id = strdup ("w");
    m->app = strdup ("a/b");
    m->max_multiplexing = 1;
    data = kiln_msg_encode (m, &size);
    back = kiln_msg_decode (data, size, NULL);
    assert (back && back->gpu == -1);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    m = kiln_msg_new (KILN_MSG_RUNNER_START);
    assert (m->gpu == -1);
    m->runner_id = strdup ("r");
    m->app = strdup ("a/b");
    m->artifact = strdup ("00");
    m->machine_type = strdup ("CPU");
    data = kiln_msg_encode (m, &size);
    back = kiln_msg_decode (data, size, NULL);
    assert (back && back->gpu == -1 && back->revision == 0);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    //  An empty body is present and empty, not absent.
    m = kiln_msg_new (KILN_MSG_REQUEST);
    m->request_id = strdup ("r");
    m->path = strdup ("/");
    m->body = malloc (1);
    m->body_size = 0;
    data = kiln_msg_encode (m, &size);
    back = kiln_msg_decode (data, size, NULL);
    assert (back && back->body && back->body_size == 0 && back->body [0] == 0);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    //  A large binary body survives (and gets its NUL).
    m = kiln_msg_new (KILN_MSG_REQUEST);
    m->request_id = strdup ("r");
    m->path = strdup ("/");
    m->body_size = 3 << 20;
    m->body = malloc (m->body_size);
    for (size_t i = 0; i < m->body_size; i++)
        m->body [i] = (uint8_t) (i * 131);
    data = kiln_msg_encode (m, &size);
    back = kiln_msg_decode (data, size, NULL);
    assert (back && back->body_size == m->body_size);
    assert (memcmp (back->body, m->body, m->body_size) == 0 && back->body [back->body_size] == 0);
    kiln_msg_destroy (&back);
    free (data);
    kiln_msg_destroy (&m);
    kiln_msg_destroy (&m);                          //  NULL is fine

    s_test_hostile ();
    s_test_transport (verbose);

    if (verbose)
        printf ("OK\n");
}
