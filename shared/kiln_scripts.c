/*  =========================================================================
    kiln_scripts — the Lua scripts that change a request's state

    The contracts are in kiln_scripts.h. Keys a script derives itself
    (a file's key, a queue's key from the record) follow kiln_keys.h; this
    is a single-node Redis, so scripts may touch keys they did not declare.
    =========================================================================
*/
#include "kiln_scripts.h"
#include "kiln_keys.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

const char *KILN_SCRIPT_SUBMIT =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end\n"
    "local band = 0\n"
    "if ARGV[6] == 'low' then band = 1 end\n"
    "redis.call('HSET', KEYS[2],\n"
    "  'id', ARGV[1], 'app', ARGV[2], 'path', ARGV[3],\n"
    "  'content_type', ARGV[4], 'body', ARGV[5], 'priority', ARGV[6],\n"
    "  'reply_to', ARGV[7], 'webhook', ARGV[8], 'created_ms', ARGV[9],\n"
    "  'state', 'IN_QUEUE', 'attempts', 0)\n"
    "local seq = redis.call('INCR', KEYS[4])\n"
    "local score = band * 4503599627370496 + seq\n"
    "redis.call('ZADD', KEYS[3], score, ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:wake', ARGV[2])\n"
    "return redis.call('ZRANK', KEYS[3], ARGV[1])\n";

const char *KILN_SCRIPT_TAKE =
    "while true do\n"
    "  local head = redis.call('ZPOPMIN', KEYS[1])\n"
    "  if #head == 0 then return false end\n"
    "  local id = head[1]\n"
    "  local req = 'kiln:req:' .. id\n"
    "  if redis.call('HGET', req, 'state') == 'IN_QUEUE' then\n"
    "    redis.call('HSET', req, 'state', 'IN_PROGRESS',\n"
    "      'started_ms', ARGV[2], 'runner', ARGV[1])\n"
    "    redis.call('HINCRBY', req, 'attempts', 1)\n"
    "    redis.call('ZADD', KEYS[2], ARGV[3], id)\n"
    "    local f = redis.call('HMGET', req, 'path', 'content_type', 'body')\n"
    "    return {id, f[1] or '/', f[2] or '', f[3] or ''}\n"
    "  end\n"
    "end\n";

const char *KILN_SCRIPT_COMPLETE =
    "local state = redis.call('HGET', KEYS[1], 'state')\n"
    "if not state or state == 'COMPLETED' then return 0 end\n"
    "redis.call('ZREM', KEYS[3], ARGV[1])\n"
    "redis.call('ZREM', KEYS[4], ARGV[1])\n"
    "redis.call('HSET', KEYS[1], 'state', 'COMPLETED',\n"
    "  'status', ARGV[2], 'result_content_type', ARGV[3],\n"
    "  'result_body', ARGV[4], 'error', ARGV[5], 'error_type', ARGV[6],\n"
    "  'completed_ms', ARGV[7], 'inference_ms', ARGV[9])\n"
    "local retention = tonumber(ARGV[8])\n"
    "redis.call('EXPIRE', KEYS[1], retention)\n"
    "redis.call('EXPIRE', KEYS[2], retention)\n"
    "local files = tonumber(ARGV[10])\n"
    "for i = 0, files - 1 do\n"
    "  local at = 11 + i * 4\n"
    "  local key = 'kiln:file:' .. ARGV[at]\n"
    "  redis.call('HSET', key, 'content_type', ARGV[at + 1],\n"
    "    'file_name', ARGV[at + 2], 'data', ARGV[at + 3],\n"
    "    'request_id', ARGV[1])\n"
    "  redis.call('EXPIRE', key, retention)\n"
    "end\n"
    "local reply_to = redis.call('HGET', KEYS[1], 'reply_to')\n"
    "if reply_to and reply_to ~= '' then\n"
    "  redis.call('PUBLISH', reply_to, ARGV[1])\n"
    "end\n"
    "return 1\n";

const char *KILN_SCRIPT_LOG =
    "local state = redis.call('HGET', KEYS[1], 'state')\n"
    "if not state or state == 'COMPLETED' then return 0 end\n"
    "return redis.call('RPUSH', KEYS[2], unpack(ARGV))\n";

void
kiln_scripts_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_scripts: ");
    //  The scripts run against a real Redis in the integration suite; here
    //  we check the invariants the C side relies on.
    assert (strstr (KILN_SCRIPT_SUBMIT, KILN_CHANNEL_WAKE));
    assert (strstr (KILN_SCRIPT_TAKE, KILN_KEY_REQ_PREFIX));
    assert (strstr (KILN_SCRIPT_COMPLETE, KILN_KEY_FILE_PREFIX));
    //  The band span in Lua matches the C constant.
    char span [32];
    snprintf (span, sizeof span, "%.0f", KILN_QUEUE_BAND_SPAN);
    assert (strstr (KILN_SCRIPT_SUBMIT, span));
    if (verbose)
        printf ("OK\n");
}
