/*  =========================================================================
    kiln_scripts — the Lua scripts that change a request's state

    The contracts are in kiln_scripts.h. Keys a script derives itself
    (a file's key, a queue's key from the record) follow kiln_keys.h; this
    is a single-node Redis, so scripts may touch keys they did not declare.
    =========================================================================
*/
#include "kiln_scripts.h"
#include "kiln_keys.h"
#include "kiln_redis.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define S_LUA_STR_(x) #x
#define S_LUA_STR(x) S_LUA_STR_ (x)

//  The one way a request becomes COMPLETED, shared by every script that
//  can end a request (Lua has no includes: the text is pasted in front).
//  complete (req, id, status, content_type, body, error, error_type,
//            now_ms, retention_s, inference_ms) → 1, or 0 when the
//  request is unknown or completed already. A request with a webhook
//  enters the kiln:webhooks outbox and its record is kept until the
//  delivery ends (the deliverer sets the expiry then).
#define S_LUA_COMPLETE \
    "local function complete(req, id, status, ctype, body, err, etype, now, retention, inference)\n" \
    "  local f = redis.call('HMGET', req, 'state', 'app', 'reply_to', 'webhook', 'created_ms')\n" \
    "  if not f[1] or f[1] == 'COMPLETED' then return 0 end\n" \
    "  local stats = 'kiln:stats:' .. f[2]\n" \
    "  local latency = math.max(0, tonumber(now) - (tonumber(f[5] or now) or tonumber(now)))\n" \
    "  redis.call('HINCRBY', stats, 'status:' .. status, 1)\n" \
    "  redis.call('HINCRBY', stats, 'latency_count', 1)\n" \
    "  redis.call('HINCRBY', stats, 'latency_sum_ms', latency)\n" \
    "  for _, le in ipairs({" KILN_STATS_BUCKETS_MS "}) do\n" \
    "    if latency <= le then redis.call('HINCRBY', stats, 'in:' .. le, 1) break end\n" \
    "  end\n" \
    "  redis.call('ZREM', 'kiln:queue:' .. f[2], id)\n" \
    "  redis.call('ZREM', 'kiln:inflight', id)\n" \
    "  redis.call('ZREM', 'kiln:deadlines', id)\n" \
    "  redis.call('HSET', req, 'state', 'COMPLETED',\n" \
    "    'status', status, 'result_content_type', ctype,\n" \
    "    'result_body', body, 'error', err, 'error_type', etype,\n" \
    "    'completed_ms', now, 'inference_ms', inference)\n" \
    "  redis.call('EXPIRE', req .. ':logs', retention)\n" \
    "  if f[4] and f[4] ~= '' then\n" \
    "    redis.call('HSET', req, 'webhook_state', 'pending', 'webhook_attempts', 0)\n" \
    "    redis.call('ZADD', 'kiln:webhooks', now, id)\n" \
    "    redis.call('PERSIST', req)\n" \
    "  else\n" \
    "    redis.call('EXPIRE', req, retention)\n" \
    "  end\n" \
    "  if f[3] and f[3] ~= '' then\n" \
    "    if #body <= " S_LUA_STR (KILN_DONE_RESULT_MAX) "\n" \
    "    and string.sub(f[3], 1, #'" KILN_CHANNEL_ANSWER_PREFIX "') == '" KILN_CHANNEL_ANSWER_PREFIX "' then\n" \
    "      local msg = {id, tostring(status), ctype, body, err, etype}\n" \
    "      local resp = {'*6\\r\\n'}\n" \
    "      for i = 1, 6 do\n" \
    "        resp[#resp + 1] = '$' .. #msg[i] .. '\\r\\n' .. msg[i] .. '\\r\\n'\n" \
    "      end\n" \
    "      redis.call('PUBLISH', f[3], table.concat(resp))\n" \
    "    else\n" \
    "      redis.call('PUBLISH', f[3], id)\n" \
    "    end\n" \
    "  end\n" \
    "  return 1\n" \
    "end\n"

//  stream_lines(stream, maxlen, first) appends to an app's log stream
//  the lines in ARGV from index first on, KILN_APP_LOG_LINE_ARGS each
//  (kiln_scripts.h: an empty field but the message is left out) →
//  the number of lines.
#define S_LUA_STREAM_LINES \
    "local function stream_lines(stream, maxlen, first)\n" \
    "  local names = {'ts', 'level', 'source', 'message', 'runner_id', 'request_id', 'revision'}\n" \
    "  local n = 0\n" \
    "  for i = first, #ARGV - 6, 7 do\n" \
    "    local fields = {}\n" \
    "    for j = 0, 6 do\n" \
    "      if ARGV[i + j] ~= '' or j == 3 then\n" \
    "        fields[#fields + 1] = names[j + 1]\n" \
    "        fields[#fields + 1] = ARGV[i + j]\n" \
    "      end\n" \
    "    end\n" \
    "    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))\n" \
    "    n = n + 1\n" \
    "  end\n" \
    "  return n\n" \
    "end\n"

//  The body of a request that never ran: kiln's own JSON error.
#define S_LUA_ERROR_BODY \
    "local function error_body(detail, etype)\n" \
    "  return cjson.encode({detail = detail, error_type = etype})\n" \
    "end\n"

//  A manifest with max_queue_length (kiln_manifest_to_json writes it only
//  when set, so other apps skip the decode) bounds the queue: a submit
//  that would pass it answers {-3, limit} and writes nothing.
const char *KILN_SCRIPT_SUBMIT =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end\n"
    "local manifest = redis.call('HGET', KEYS[1], 'manifest')\n"
    "if manifest and string.find(manifest, '\"max_queue_length\"', 1, true) then\n"
    "  local ok, m = pcall(cjson.decode, manifest)\n"
    "  local limit = ok and type(m) == 'table' and tonumber(m.max_queue_length) or 0\n"
    "  if limit > 0 and redis.call('ZCARD', KEYS[3]) >= limit then return {-3, limit} end\n"
    "end\n"
    "local band = 0\n"
    "if ARGV[6] == 'low' then band = 1 end\n"
    "local deadline = tonumber(ARGV[10] or '0') or 0\n"
    "redis.call('HSET', KEYS[2],\n"
    "  'id', ARGV[1], 'app', ARGV[2], 'path', ARGV[3],\n"
    "  'content_type', ARGV[4], 'body', ARGV[5], 'priority', ARGV[6],\n"
    "  'reply_to', ARGV[7], 'webhook', ARGV[8], 'created_ms', ARGV[9],\n"
    "  'start_deadline_ms', deadline, 'no_retry', ARGV[11] or '0',\n"
    "  'caller', ARGV[12] or '', 'state', 'IN_QUEUE', 'attempts', 0)\n"
    "if deadline > 0 then redis.call('ZADD', 'kiln:deadlines', deadline, ARGV[1]) end\n"
    "local seq = redis.call('INCR', KEYS[4])\n"
    "local score = band * 4503599627370496 + seq\n"
    "redis.call('ZADD', KEYS[3], score, ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:wake', ARGV[2])\n"
    "return redis.call('ZRANK', KEYS[3], ARGV[1])\n";

const char *KILN_SCRIPT_TAKE =
    S_LUA_COMPLETE
    S_LUA_ERROR_BODY
    "local now = tonumber(ARGV[2])\n"
    "local runners = {ARGV[1]}\n"
    "for i = 5, #ARGV do runners[#runners + 1] = ARGV[i] end\n"
    "local taken = {}\n"
    "local n = 0\n"
    "while n < #runners do\n"
    "  local head = redis.call('ZPOPMIN', KEYS[1])\n"
    "  if #head == 0 then break end\n"
    "  local id = head[1]\n"
    "  local req = 'kiln:req:' .. id\n"
    "  local f = redis.call('HMGET', req, 'state', 'start_deadline_ms')\n"
    "  local deadline = tonumber(f[2] or '0') or 0\n"
    "  if f[1] == 'IN_QUEUE' and deadline > 0 and now > deadline then\n"
    "    complete(req, id, 504, 'application/json',\n"
    "      error_body('" KILN_DETAIL_NOT_STARTED "', 'request_timeout'),\n"
    "      '" KILN_DETAIL_NOT_STARTED "', 'request_timeout',\n"
    "      now, tonumber(ARGV[4] or '3600'), 0)\n"
    "  elseif f[1] == 'IN_QUEUE' then\n"
    "    n = n + 1\n"
    "    redis.call('ZREM', 'kiln:deadlines', id)\n"
    "    redis.call('HSET', req, 'state', 'IN_PROGRESS',\n"
    "      'started_ms', ARGV[2], 'runner', runners[n])\n"
    "    redis.call('HINCRBY', req, 'attempts', 1)\n"
    "    redis.call('ZADD', KEYS[2], ARGV[3], id)\n"
    "    local r = redis.call('HMGET', req, 'path', 'content_type', 'body')\n"
    "    taken[#taken + 1] = id\n"
    "    taken[#taken + 1] = r[1] or '/'\n"
    "    taken[#taken + 1] = r[2] or ''\n"
    "    taken[#taken + 1] = r[3] or ''\n"
    "  end\n"
    "end\n"
    "if n == 0 then return false end\n"
    "return taken\n";

const char *KILN_SCRIPT_COMPLETE =
    S_LUA_COMPLETE
    "local retention = tonumber(ARGV[8])\n"
    "local files = tonumber(ARGV[10])\n"
    "local holder = ARGV[11 + files * 4]\n"
    "if holder and holder ~= '' then\n"
    "  local h = redis.call('HMGET', KEYS[1], 'state', 'runner')\n"
    "  if h[1] ~= 'IN_PROGRESS' or h[2] ~= holder then return 0 end\n"
    "end\n"
    "if complete(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],\n"
    "            ARGV[7], retention, ARGV[9]) == 0 then return 0 end\n"
    "for i = 0, files - 1 do\n"
    "  local at = 11 + i * 4\n"
    "  local key = 'kiln:file:' .. ARGV[at]\n"
    "  redis.call('HSET', key, 'content_type', ARGV[at + 1],\n"
    "    'file_name', ARGV[at + 2], 'data', ARGV[at + 3],\n"
    "    'request_id', ARGV[1])\n"
    "  redis.call('EXPIRE', key, retention)\n"
    "end\n"
    "return 1\n";

const char *KILN_SCRIPT_CANCEL =
    S_LUA_COMPLETE
    S_LUA_ERROR_BODY
    "local f = redis.call('HMGET', KEYS[1], 'state', 'app')\n"
    "if not f[1] or f[2] ~= ARGV[2] then return 'NOT_FOUND' end\n"
    "if f[1] == 'COMPLETED' then return 'ALREADY_COMPLETED' end\n"
    "if f[1] == 'IN_QUEUE' then\n"
    "  complete(KEYS[1], ARGV[1], 499, 'application/json',\n"
    "    error_body('Request cancelled by the client', 'client_cancelled'),\n"
    "    'Request cancelled by the client', 'client_cancelled',\n"
    "    ARGV[3], tonumber(ARGV[4]), 0)\n"
    "  return 'CANCELLED'\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'cancel_requested', 1)\n"
    "redis.call('PUBLISH', 'kiln:cancel', ARGV[1])\n"
    "return 'CANCELLATION_REQUESTED'\n";

const char *KILN_SCRIPT_EXPIRE =
    S_LUA_COMPLETE
    S_LUA_ERROR_BODY
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  local req = 'kiln:req:' .. id\n"
    "  if redis.call('HGET', req, 'state') == 'IN_QUEUE' then\n"
    "    n = n + complete(req, id, 504, 'application/json',\n"
    "      error_body('" KILN_DETAIL_NOT_STARTED "', 'request_timeout'),\n"
    "      '" KILN_DETAIL_NOT_STARTED "', 'request_timeout',\n"
    "      ARGV[1], tonumber(ARGV[2]), 0)\n"
    "  end\n"
    "  redis.call('ZREM', KEYS[1], id)\n"
    "end\n"
    "return n\n";

const char *KILN_SCRIPT_WEBHOOK_CLAIM =
    "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "local out = {}\n"
    "for _, id in ipairs(ids) do\n"
    "  local f = redis.call('HMGET', 'kiln:req:' .. id, 'webhook', 'webhook_attempts',\n"
    "    'status', 'result_content_type', 'result_body', 'error', 'error_type')\n"
    "  if not f[1] or f[1] == '' then\n"
    "    redis.call('ZREM', KEYS[1], id)\n"
    "  else\n"
    "    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)\n"
    "    table.insert(out, id)\n"
    "    for i = 1, 7 do table.insert(out, f[i] or '') end\n"
    "  end\n"
    "end\n"
    "return out\n";

const char *KILN_SCRIPT_WEBHOOK_LEASE =
    "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
    "if s and tonumber(s) == tonumber(ARGV[2]) then\n"
    "  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

const char *KILN_SCRIPT_WEBHOOK_DONE =
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "  return 0\n"
    "end\n"
    "if ARGV[2] == 'retry' then\n"
    "  redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)\n"
    "  redis.call('HSET', KEYS[1], 'webhook_last_error', ARGV[5])\n"
    "  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])\n"
    "  return 1\n"
    "end\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)\n"
    "redis.call('HSET', KEYS[1], 'webhook_state', ARGV[2], 'webhook_last_error', ARGV[5])\n"
    "redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))\n"
    //  The logs go with the record, not before it (a long delivery can
    //  outlast the retention they got at completion).
    "redis.call('EXPIRE', KEYS[1] .. ':logs', tonumber(ARGV[4]))\n"
    "return 1\n";

const char *KILN_SCRIPT_LOG =
    S_LUA_STREAM_LINES
    "local h = redis.call('HMGET', KEYS[1], 'state', 'runner')\n"
    "if not h[1] or h[1] == 'COMPLETED' then return 0 end\n"
    "if ARGV[1] ~= '' and (h[1] ~= 'IN_PROGRESS' or h[2] ~= ARGV[1]) then return 0 end\n"
    "local n = tonumber(ARGV[3]) or 0\n"
    "if n == 0 then return 0 end\n"
    "redis.call('RPUSH', KEYS[2], unpack(ARGV, 4, 3 + n))\n"
    "if redis.call('EXISTS', KEYS[3]) == 1 then stream_lines(KEYS[4], ARGV[2], 4 + n) end\n"
    "return n\n";

const char *KILN_SCRIPT_REQUEUE =
    S_LUA_COMPLETE
    S_LUA_ERROR_BODY
    "local f = redis.call('HMGET', KEYS[1], 'state', 'app', 'priority', 'attempts',\n"
    "  'no_retry', 'cancel_requested')\n"
    "if f[1] ~= 'IN_PROGRESS' then return -1 end\n"
    "local id, now = ARGV[1], tonumber(ARGV[2])\n"
    "local limit = tonumber(ARGV[3]) or 1\n"
    "local counted = ARGV[4] ~= '0'\n"
    "local retention = tonumber(ARGV[5] or '3600') or 3600\n"
    "local attempts = tonumber(f[4] or '0') or 0\n"
    "if not counted and attempts > 0 then\n"
    "  attempts = attempts - 1\n"
    "  redis.call('HSET', KEYS[1], 'attempts', attempts)\n"
    "end\n"
    //  Its client gave up on it while it ran: nobody wants another run.
    "if f[6] == '1' then\n"
    "  complete(KEYS[1], id, 499, 'application/json',\n"
    "    error_body('Request cancelled by the client', 'client_cancelled'),\n"
    "    'Request cancelled by the client', 'client_cancelled', now, retention, 0)\n"
    "  return 0\n"
    "end\n"
    "if counted and (f[5] == '1' or attempts >= limit) then\n"
    "  if ARGV[6] == 'keep' then return -2 end\n"
    "  local detail = 'Runner disconnected while processing the request'\n"
    "  if f[5] == '1' then detail = detail .. ' (X-Fal-No-Retry: not retried)'\n"
    "  else detail = detail .. ' (tried ' .. attempts .. ' times)' end\n"
    "  complete(KEYS[1], id, 503, 'application/json',\n"
    "    error_body(detail, 'runner_disconnected'), detail, 'runner_disconnected',\n"
    "    now, retention, 0)\n"
    "  return 0\n"
    "end\n"
    "local band = 0\n"
    "if f[3] == 'low' then band = 1 end\n"
    "local seq = redis.call('INCR', 'kiln:headseq')\n"
    "redis.call('ZREM', 'kiln:inflight', id)\n"
    //  Its start deadline was met when it first started: a retry does
    //  not time out on it.
    "redis.call('HSET', KEYS[1], 'state', 'IN_QUEUE', 'start_deadline_ms', 0)\n"
    "redis.call('HDEL', KEYS[1], 'runner', 'started_ms')\n"
    "redis.call('ZADD', 'kiln:queue:' .. f[2], band * 4503599627370496 - seq, id)\n"
    "redis.call('PUBLISH', 'kiln:wake', f[2])\n"
    "return 1\n";

const char *KILN_SCRIPT_APP_STATUS =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "if #ARGV >= 2 then redis.call('HSET', KEYS[1], unpack(ARGV)) end\n"
    "return 1\n";

//  KILN_REQUEST_SHOW_FIELDS as a Lua argument list.
#define S_LUA_REQUEST_FIELDS \
    "'id', 'app', 'path', 'state', 'status', 'error', 'error_type', 'priority', " \
    "'created_ms', 'started_ms', 'completed_ms', 'attempts', 'runner'"

//  The revision number comes from latest_revision, not revision: after a
//  rollback the current revision is older than the newest one. Apps
//  deployed before revisions were kept have only `revision`.
const char *KILN_SCRIPT_DEPLOY =
    "if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end\n"
    "local f = redis.call('HMGET', KEYS[1], 'latest_revision', 'revision')\n"
    "local revision = math.max(tonumber(f[1]) or 0, tonumber(f[2]) or 0) + 1\n"
    "redis.call('HSET', KEYS[1], 'name', ARGV[1], 'revision', revision,\n"
    "  'latest_revision', revision, 'artifact', ARGV[2],\n"
    "  'manifest', ARGV[3], 'updated_ms', ARGV[4])\n"
    "redis.call('HSET', KEYS[4], revision, '{\"revision\":' .. revision ..\n"
    "  ',\"artifact\":' .. cjson.encode(ARGV[2]) .. ',\"manifest\":' .. ARGV[3] ..\n"
    "  ',\"created_ms\":' .. ARGV[4] .. '}')\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:changed', ARGV[1])\n"
    "return revision\n";

//  The app's secrets go with it, whatever the caller passes: a later app
//  of the same name must not inherit them.
const char *KILN_SCRIPT_UNDEPLOY =
    "if #KEYS >= 3 then redis.call('DEL', KEYS[3]) end\n"
    "redis.call('DEL', 'kiln:app:' .. ARGV[1] .. ':secrets')\n"
    "if redis.call('DEL', KEYS[1]) == 0 then\n"
    "  redis.call('SREM', KEYS[2], ARGV[1])\n"
    "  return 0\n"
    "end\n"
    "redis.call('SREM', KEYS[2], ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:changed', ARGV[1])\n"
    "return 1\n";

const char *KILN_SCRIPT_ROLLBACK =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "local stored = redis.call('HGET', KEYS[2], ARGV[2])\n"
    "if not stored then return -2 end\n"
    "local ok, rev = pcall(cjson.decode, stored)\n"
    "if not ok or type(rev) ~= 'table' or type(rev.artifact) ~= 'string' then return -2 end\n"
    "local manifest = string.match(stored, '\"manifest\":(.*),\"created_ms\":')\n"
    "if not manifest then return -2 end\n"
    "redis.call('HSET', KEYS[1], 'revision', tonumber(ARGV[2]), 'artifact', rev.artifact,\n"
    "  'manifest', manifest, 'updated_ms', ARGV[3])\n"
    "redis.call('PUBLISH', 'kiln:changed', ARGV[1])\n"
    "return tonumber(ARGV[2])\n";

const char *KILN_SCRIPT_REQUEST_SHOW =
    "local f = redis.call('HMGET', KEYS[1], " S_LUA_REQUEST_FIELDS ")\n"
    "if not f[1] then return {} end\n"
    "local rank = false\n"
    "if f[4] == 'IN_QUEUE' then rank = redis.call('ZRANK', ARGV[1] .. f[2], f[1]) end\n"
    "f[#f + 1] = rank\n"
    "f[#f + 1] = redis.call('LRANGE', KEYS[2], 0, -1)\n"
    "return f\n";

//  KILN_APP_FIELDS as a Lua argument list.
#define S_LUA_APP_FIELDS \
    "'name', 'revision', 'artifact', 'manifest', 'updated_ms', 'scale', " \
    "'failed_starts', 'last_error', 'last_error_ms'"

const char *KILN_SCRIPT_SCALE =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end\n"
    "local f = redis.call('HMGET', KEYS[1], 'manifest', 'scale')\n"
    "local function object(text)\n"
    "  if not text then return {} end\n"
    "  local ok, value = pcall(cjson.decode, text)\n"
    "  if ok and type(value) == 'table' then return value end\n"
    "  return {}\n"
    "end\n"
    "local manifest = object(f[1])\n"
    "local scale = {}\n"
    "if ARGV[2] ~= '1' then scale = object(f[2]) end\n"
    "local names = {'min_concurrency', 'max_concurrency', 'concurrency_buffer', 'keep_alive'}\n"
    "for i, name in ipairs(names) do\n"
    "  local value = ARGV[i + 2]\n"
    "  if value == '-' then scale[name] = nil\n"
    "  elseif value ~= '' then scale[name] = tonumber(value) end\n"
    "end\n"
    //  What the broker will use: the override, else the manifest's own
    "local function effective(name, default)\n"
    "  local value = scale[name]\n"
    "  if type(value) ~= 'number' then value = manifest[name] end\n"
    "  if type(value) ~= 'number' then value = default end\n"
    "  return value\n"
    "end\n"
    "local low = effective('min_concurrency', 0)\n"
    "local high = effective('max_concurrency', 1)\n"
    "if low > high then\n"
    "  return {-2, string.format('%d', low), string.format('%d', high)}\n"
    "end\n"
    "if next(scale) == nil then\n"
    "  redis.call('HDEL', KEYS[1], 'scale')\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], 'scale', cjson.encode(scale))\n"
    "end\n"
    "redis.call('PUBLISH', 'kiln:changed', ARGV[1])\n"
    "local out = redis.call('HMGET', KEYS[1], " S_LUA_APP_FIELDS ")\n"
    "table.insert(out, 1, 1)\n"
    "return out\n";

const char *KILN_SCRIPT_LIST_APPS =
    "local out = {}\n"
    "local names = redis.call('SMEMBERS', KEYS[1])\n"
    "table.sort(names)\n"
    "for _, name in ipairs(names) do\n"
    "  local f = redis.call('HMGET', 'kiln:app:' .. name, " S_LUA_APP_FIELDS ")\n"
    "  if f[2] then\n"
    "    f[1] = f[1] or name\n"
    //  A missing field is false in Lua: it goes back as nil, in its place
    "    for i = 1, #f do table.insert(out, f[i]) end\n"
    "  end\n"
    "end\n"
    "return out\n";

const char *KILN_SCRIPT_METRICS =
    "local apps = {}\n"
    "local names = redis.call('SMEMBERS', KEYS[1])\n"
    "table.sort(names)\n"
    "for _, name in ipairs(names) do\n"
    "  table.insert(apps, name)\n"
    "  table.insert(apps, redis.call('ZCARD', ARGV[1] .. name))\n"
    "  table.insert(apps, redis.call('HGETALL', ARGV[2] .. name))\n"
    "end\n"
    "return {apps, redis.call('HVALS', KEYS[2]), redis.call('HVALS', KEYS[3])}\n";

//  7 arguments per line: ts, level, source, message, runner_id,
//  request_id, revision ("" leaves the field out).
const char *KILN_SCRIPT_APP_LOG =
    S_LUA_STREAM_LINES
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "return stream_lines(KEYS[2], ARGV[1], 2)\n";


//  ---------------------------------------------------------------------
//  Selftest: the scripts against a real redis-server

//  In kiln_redis.c, for selftests only.

static pid_t s_server_pid = 0;
static char s_server_dir [64] = "";

//  A failed check stops the server before the test dies, so no
//  redis-server outlives the selftest.
#define CHECK(cond) do { if (!(cond)) s_fail (__LINE__, #cond); } while (0)

static void
s_fail (int line, const char *what)
{
    fprintf (stderr, "kiln_scripts_test: line %d: check failed: %s\n", line, what);
    kiln_redis_test_server_stop (s_server_pid, s_server_dir);
    s_server_pid = 0;
    abort ();
}

//  EVAL with binary-safe arguments: keys first, then args. lens may be
//  NULL (all NUL-terminated) or give a length per argument.
static redisReply *
s_eval (redisContext *ctx, const char *script, int nkeys, const char *const *keys,
        int nargs, const char *const *args, const size_t *lens)
{
    redisReply *reply = kiln_redis_eval (ctx, script, nkeys, keys, nargs, args, lens);
    CHECK (reply);
    if (reply->type == REDIS_REPLY_ERROR)
        fprintf (stderr, "kiln_scripts_test: script error: %s\n", reply->str);
    CHECK (reply->type != REDIS_REPLY_ERROR);
    return reply;
}

//  A command whose reply is an integer.
static long long
s_int (redisContext *ctx, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    redisReply *reply = redisvCommand (ctx, format, args);
    va_end (args);
    CHECK (reply && reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

//  A command whose reply is a string (or nil: then returns NULL).
//  Caller frees.
static char *
s_str (redisContext *ctx, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    redisReply *reply = redisvCommand (ctx, format, args);
    va_end (args);
    CHECK (reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_NIL));
    char *s = reply->type == REDIS_REPLY_STRING ? strndup (reply->str, reply->len) : NULL;
    freeReplyObject (reply);
    return s;
}

static bool
s_str_is (redisContext *ctx, const char *expect, const char *format, const char *key, const char *field)
{
    char *s = s_str (ctx, format, key, field);
    bool same = (!s && !expect) || (s && expect && strcmp (s, expect) == 0);
    if (!same)
        fprintf (stderr, "kiln_scripts_test: %s %s is '%s', expected '%s'\n",
                 key, field, s ? s : "(nil)", expect ? expect : "(nil)");
    free (s);
    return same;
}

#define HGET_IS(key, field, expect) CHECK (s_str_is (ctx, expect, "HGET %s %s", key, field))

//  SUBMIT as the gateway runs it. deadline NULL: the short form (ARGV
//  up to now_ms), as a gateway from before start deadlines sends it.
static long long
s_submit_full (redisContext *ctx, const char *app, const char *id, const char *priority,
               const char *reply_to, const char *webhook, const char *deadline,
               const char *no_retry, const char *body, size_t body_size)
{
    kiln_key_t app_key = kiln_key_app (app);
    kiln_key_t req_key = kiln_key_request (id);
    kiln_key_t queue_key = kiln_key_queue (app);
    const char *keys [] = { app_key.s, req_key.s, queue_key.s, KILN_KEY_SEQ };
    const char *args [] = { id, app, "/sub", "application/json", body, priority,
                            reply_to, webhook, "1700000000000",
                            deadline? deadline: "0", no_retry? no_retry: "0" };
    int nargs = deadline? 11: 9;
    size_t lens [11];
    for (int i = 0; i < nargs; i++)
        lens [i] = strlen (args [i]);
    lens [4] = body_size;
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_SUBMIT, 4, keys, nargs, args, lens);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

static long long
s_submit (redisContext *ctx, const char *app, const char *id, const char *priority,
          const char *reply_to, const char *body, size_t body_size)
{
    return s_submit_full (ctx, app, id, priority, reply_to, "", NULL, NULL, body, body_size);
}

//  Runs TAKE at now_ms; returns the reply (caller frees), nil or
//  {id, path, ct, body}.
static redisReply *
s_take_at (redisContext *ctx, const char *app, const char *runner, const char *now_ms,
           const char *lease, const char *retention)
{
    kiln_key_t queue_key = kiln_key_queue (app);
    const char *keys [] = { queue_key.s, KILN_KEY_INFLIGHT };
    const char *args [] = { runner, now_ms, lease, retention };
    return s_eval (ctx, KILN_SCRIPT_TAKE, 2, keys, 4, args, NULL);
}

static redisReply *
s_take (redisContext *ctx, const char *app, const char *runner, const char *lease)
{
    return s_take_at (ctx, app, runner, "1700000001000", lease, "600");
}

//  TAKE that must give this id.
static void
s_take_expect (redisContext *ctx, const char *app, const char *now_ms, const char *id)
{
    redisReply *reply = s_take_at (ctx, app, "runner-9", now_ms, "1800000000000", "700");
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);
    CHECK (strcmp (reply->element [0]->str, id) == 0);
    freeReplyObject (reply);
}

//  CANCEL; returns its answer (static strings compared by the caller).
static bool
s_cancel_is (redisContext *ctx, const char *app, const char *id, const char *expect)
{
    kiln_key_t req_key = kiln_key_request (id);
    const char *keys [] = { req_key.s };
    const char *args [] = { id, app, "1700000003000", "600" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_CANCEL, 1, keys, 4, args, NULL);
    CHECK (reply->type == REDIS_REPLY_STRING);
    bool same = strcmp (reply->str, expect) == 0;
    if (!same)
        fprintf (stderr, "kiln_scripts_test: CANCEL %s gave %s, expected %s\n", id, reply->str, expect);
    freeReplyObject (reply);
    return same;
}

static long long
s_expire (redisContext *ctx, const char *now_ms, const char *limit)
{
    const char *keys [] = { KILN_KEY_DEADLINES };
    const char *args [] = { now_ms, "600", limit };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_EXPIRE, 1, keys, 3, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

//  WEBHOOK_CLAIM; returns the flat array (caller frees).
static redisReply *
s_claim (redisContext *ctx, const char *now_ms, const char *lease_ms, const char *limit)
{
    const char *keys [] = { KILN_KEY_WEBHOOKS };
    const char *args [] = { now_ms, lease_ms, limit };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_WEBHOOK_CLAIM, 1, keys, 3, args, NULL);
    CHECK (reply->type == REDIS_REPLY_ARRAY);
    CHECK (reply->elements % KILN_WEBHOOK_CLAIM_FIELDS == 0);
    return reply;
}

static long long
s_webhook_done (redisContext *ctx, const char *id, const char *outcome, const char *next_ms,
                const char *retention, const char *last_error)
{
    kiln_key_t req_key = kiln_key_request (id);
    const char *keys [] = { req_key.s, KILN_KEY_WEBHOOKS };
    const char *args [] = { id, outcome, next_ms, retention, last_error };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_WEBHOOK_DONE, 2, keys, 5, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

static long long
s_complete (redisContext *ctx, const char *app, const char *id, const char *status,
            const char *body, size_t body_size, int file_count, const char *const *files)
{
    kiln_key_t req_key = kiln_key_request (id);
    kiln_key_t logs_key = kiln_key_logs (id);
    kiln_key_t queue_key = kiln_key_queue (app);
    const char *keys [] = { req_key.s, logs_key.s, queue_key.s, KILN_KEY_INFLIGHT };
    char count [8];
    snprintf (count, sizeof count, "%d", file_count);
    const char *args [32] = { id, status, "image/png", body, "", "",
                              "1700000002000", "600", "42", count };
    size_t lens [32];
    int nargs = 10;
    for (int i = 0; i < file_count * 4; i++)
        args [nargs++] = files [i];
    for (int i = 0; i < nargs; i++)
        lens [i] = strlen (args [i]);
    lens [3] = body_size;
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_COMPLETE, 4, keys, nargs, args, lens);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

//  LOG as the runner `holder` ("": whoever holds it) of lines into the
//  request's list only (the app is not deployed: no stream line).
static long long
s_log_as (redisContext *ctx, const char *id, const char *holder, int count,
          const char *const *lines)
{
    kiln_key_t req_key = kiln_key_request (id);
    kiln_key_t logs_key = kiln_key_logs (id);
    kiln_key_t app_key = kiln_key_app ("local/not-deployed");
    kiln_key_t stream_key = kiln_key_app_logs ("local/not-deployed");
    const char *keys [] = { req_key.s, logs_key.s, app_key.s, stream_key.s };
    char count_text [16];
    snprintf (count_text, sizeof count_text, "%d", count);
    const char *args [16] = { holder, "10000", count_text };
    CHECK (count >= 0 && count <= 13);
    for (int i = 0; i < count; i++)
        args [3 + i] = lines [i];
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_LOG, 4, keys, 3 + count, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    CHECK (s_int (ctx, "EXISTS %s", stream_key.s) == 0);
    return n;
}

static long long
s_log (redisContext *ctx, const char *id, int count, const char *const *lines)
{
    return s_log_as (ctx, id, "", count, lines);
}

//  COMPLETE (200, no body, no files) as the runner `holder`.
static long long
s_complete_as (redisContext *ctx, const char *app, const char *id, const char *holder)
{
    kiln_key_t req_key = kiln_key_request (id);
    kiln_key_t logs_key = kiln_key_logs (id);
    kiln_key_t queue_key = kiln_key_queue (app);
    const char *keys [] = { req_key.s, logs_key.s, queue_key.s, KILN_KEY_INFLIGHT };
    const char *args [] = { id, "200", "", "", "", "", "1700000002000", "600", "0", "0", holder };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_COMPLETE, 4, keys, 11, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

//  Reads published messages until one on channel with payload arrives.
//  False on timeout (the connection's read timeout).
static bool
s_expect_message (redisContext *sub, const char *channel, const char *payload)
{
    for (int i = 0; i < 32; i++) {
        redisReply *reply = NULL;
        if (redisGetReply (sub, (void **) &reply) != REDIS_OK || !reply)
            return false;
        bool match = reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
                  && reply->element [0]->type == REDIS_REPLY_STRING
                  && strcmp (reply->element [0]->str, "message") == 0
                  && strcmp (reply->element [1]->str, channel) == 0
                  && strcmp (reply->element [2]->str, payload) == 0;
        freeReplyObject (reply);
        if (match)
            return true;
    }
    return false;
}

//  The next message on kiln:answer:gw1 must carry the request's answer.
static bool
s_expect_answer (redisContext *sub, const char *id, const char *status,
                 const char *content_type, const char *body, size_t body_size)
{
    redisReply *reply = NULL;
    if (redisGetReply (sub, (void **) &reply) != REDIS_OK || !reply)
        return false;
    bool ok = reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
           && strcmp (reply->element [1]->str, "kiln:answer:gw1") == 0;
    redisReader *reader = redisReaderCreate ();
    redisReply *answer = NULL;
    ok = ok && reader
      && redisReaderFeed (reader, reply->element [2]->str, reply->element [2]->len) == REDIS_OK
      && redisReaderGetReply (reader, (void **) &answer) == REDIS_OK && answer
      && answer->type == REDIS_REPLY_ARRAY && answer->elements == 6
      && strcmp (answer->element [0]->str, id) == 0
      && strcmp (answer->element [1]->str, status) == 0
      && strcmp (answer->element [2]->str, content_type) == 0
      && answer->element [3]->len == body_size
      && memcmp (answer->element [3]->str, body, body_size) == 0;
    if (answer)
        freeReplyObject (answer);
    if (reader)
        redisReaderFree (reader);
    freeReplyObject (reply);
    return ok;
}

//  Start deadlines: SUBMIT records them, TAKE ends a request past its
//  deadline instead of running it, EXPIRE ends the queued ones.
static void
s_test_deadlines (redisContext *ctx, redisContext *sub, const char *app)
{
    const char *e = "00000000-0000-4000-8000-0000000000e0";
    const char *f = "00000000-0000-4000-8000-0000000000e1";
    const char *g = "00000000-0000-4000-8000-0000000000e2";
    const char *h = "00000000-0000-4000-8000-0000000000e3";
    const char *i = "00000000-0000-4000-8000-0000000000e4";
    const char *j = "00000000-0000-4000-8000-0000000000e5";
    kiln_key_t queue = kiln_key_queue (app);
    kiln_key_t req_e = kiln_key_request (e);

    //  SUBMIT: a deadline goes into kiln:deadlines; no_retry is kept.
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 0);
    CHECK (s_submit_full (ctx, app, e, "normal", "kiln:done:gw1", "", "1700000005000", "1", "{}", 2) == 0);
    CHECK (s_submit_full (ctx, app, f, "normal", "", "", "0", "0", "{}", 2) == 1);
    HGET_IS (req_e.s, "start_deadline_ms", "1700000005000");
    HGET_IS (req_e.s, "no_retry", "1");
    HGET_IS (kiln_key_request (f).s, "start_deadline_ms", "0");
    CHECK (s_str_is (ctx, "1700000005000", "ZSCORE %s %s", KILN_KEY_DEADLINES, e));
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_DEADLINES, f));

    //  TAKE past e's deadline: e completes 504 request_timeout (its
    //  waiting gateway hears it) and f, next in line, is taken instead.
    s_take_expect (ctx, app, "1700000006000", f);
    HGET_IS (req_e.s, "state", "COMPLETED");
    HGET_IS (req_e.s, "status", "504");
    HGET_IS (req_e.s, "error_type", "request_timeout");
    HGET_IS (req_e.s, "result_content_type", "application/json");
    HGET_IS (req_e.s, "completed_ms", "1700000006000");
    HGET_IS (req_e.s, "attempts", "0");               //  never ran
    char *result = s_str (ctx, "HGET %s %s", req_e.s, "result_body");
    CHECK (result && strstr (result, "\"error_type\":\"request_timeout\"")
                  && strstr (result, "\"detail\":"));
    free (result);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_DEADLINES, e));
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_INFLIGHT, e));
    long long ttl = s_int (ctx, "TTL %s", req_e.s);
    CHECK (ttl > 600 && ttl <= 700);                  //  TAKE's retention_s
    CHECK (s_expect_message (sub, "kiln:done:gw1", e));
    HGET_IS (kiln_key_request (f).s, "state", "IN_PROGRESS");

    //  TAKE before the deadline: it runs, and leaves kiln:deadlines.
    CHECK (s_submit_full (ctx, app, g, "normal", "", "", "1700000009000", "0", "{}", 2) == 0);
    s_take_expect (ctx, app, "1700000006000", g);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_DEADLINES, g));
    HGET_IS (kiln_key_request (g).s, "state", "IN_PROGRESS");

    //  TAKE with only expired requests queued: nil, and they are ended.
    CHECK (s_submit_full (ctx, app, h, "normal", "", "", "1700000007000", "0", "{}", 2) == 0);
    redisReply *reply = s_take_at (ctx, app, "runner-9", "1700000008000", "1", "600");
    CHECK (reply->type == REDIS_REPLY_NIL);
    freeReplyObject (reply);
    HGET_IS (kiln_key_request (h).s, "status", "504");

    //  EXPIRE: ends queued requests past their deadline, in deadline
    //  order and up to its limit; an id no longer queued just leaves.
    CHECK (s_submit_full (ctx, app, i, "normal", "", "", "1700000010000", "0", "{}", 2) == 0);
    CHECK (s_submit_full (ctx, app, j, "low", "", "", "1700000011000", "0", "{}", 2) == 1);
    const char *later = "00000000-0000-4000-8000-0000000000e6";
    CHECK (s_submit_full (ctx, app, later, "normal", "", "", "1700000020000", "0", "{}", 2) == 1);
    CHECK (s_int (ctx, "ZADD %s 1 %s", KILN_KEY_DEADLINES, g) == 1);    //  running: not ended
    CHECK (s_expire (ctx, "1700000000000", "10") == 0);                 //  g only, left alone
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_DEADLINES, g));
    HGET_IS (kiln_key_request (g).s, "state", "IN_PROGRESS");
    CHECK (s_expire (ctx, "1700000012000", "1") == 1);                  //  the limit
    HGET_IS (kiln_key_request (i).s, "state", "COMPLETED");
    HGET_IS (kiln_key_request (j).s, "state", "IN_QUEUE");
    CHECK (s_expire (ctx, "1700000012000", "10") == 1);
    kiln_key_t req_j = kiln_key_request (j);
    HGET_IS (req_j.s, "state", "COMPLETED");
    HGET_IS (req_j.s, "status", "504");
    HGET_IS (req_j.s, "error_type", "request_timeout");
    HGET_IS (req_j.s, "completed_ms", "1700000012000");
    ttl = s_int (ctx, "TTL %s", req_j.s);
    CHECK (ttl > 0 && ttl <= 600);
    CHECK (s_expire (ctx, "1700000012000", "10") == 0);                 //  nothing left due
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_DEADLINES) == 1);          //  later
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 1);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, later) == 0);

    //  Clean up for the next test: later runs, the runners finish.
    s_take_expect (ctx, app, "1700000013000", later);
    CHECK (s_complete (ctx, app, later, "200", "", 0, 0, NULL) == 1);
    CHECK (s_complete (ctx, app, f, "200", "", 0, 0, NULL) == 1);
    CHECK (s_complete (ctx, app, g, "200", "", 0, 0, NULL) == 1);
    CHECK (s_int (ctx, "EXISTS %s %s %s", queue.s, KILN_KEY_INFLIGHT, KILN_KEY_DEADLINES) == 0);
}

//  CANCEL in each state of a request.
static void
s_test_cancel (redisContext *ctx, redisContext *sub, const char *app)
{
    const char *queued = "00000000-0000-4000-8000-0000000000c0";
    const char *running = "00000000-0000-4000-8000-0000000000c1";
    kiln_key_t queue = kiln_key_queue (app);
    kiln_key_t req_q = kiln_key_request (queued);
    kiln_key_t req_r = kiln_key_request (running);

    CHECK (s_submit_full (ctx, app, running, "normal", "", "", "0", "0", "{}", 2) == 0);
    s_take_expect (ctx, app, "1700000001000", running);
    CHECK (s_submit_full (ctx, app, queued, "normal", "kiln:done:gw1", "", "1700000009000", "0", "{}", 2) == 0);

    //  Unknown, or named under another app: not found, nothing written.
    CHECK (s_cancel_is (ctx, app, "00000000-0000-4000-8000-000000000999", "NOT_FOUND"));
    CHECK (s_int (ctx, "EXISTS %s", kiln_key_request ("00000000-0000-4000-8000-000000000999").s) == 0);
    CHECK (s_cancel_is (ctx, "local/other", queued, "NOT_FOUND"));
    HGET_IS (req_q.s, "state", "IN_QUEUE");
    CHECK (s_cancel_is (ctx, "local/other", running, "NOT_FOUND"));
    HGET_IS (req_r.s, "cancel_requested", NULL);

    //  Queued: ended at once with 499 client_cancelled, out of the queue
    //  and kiln:deadlines, its waiting gateway told.
    CHECK (s_cancel_is (ctx, app, queued, "CANCELLED"));
    HGET_IS (req_q.s, "state", "COMPLETED");
    HGET_IS (req_q.s, "status", "499");
    HGET_IS (req_q.s, "error_type", "client_cancelled");
    HGET_IS (req_q.s, "result_content_type", "application/json");
    HGET_IS (req_q.s, "completed_ms", "1700000003000");
    char *result = s_str (ctx, "HGET %s %s", req_q.s, "result_body");
    CHECK (result && strstr (result, "\"error_type\":\"client_cancelled\""));
    free (result);
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 0);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_DEADLINES, queued));
    long long ttl = s_int (ctx, "TTL %s", req_q.s);
    CHECK (ttl > 0 && ttl <= 600);
    CHECK (s_expect_message (sub, "kiln:done:gw1", queued));

    //  Running: flagged and announced on kiln:cancel; it keeps running
    //  (its runner ends it), and asking again is harmless.
    CHECK (s_cancel_is (ctx, app, running, "CANCELLATION_REQUESTED"));
    HGET_IS (req_r.s, "state", "IN_PROGRESS");
    HGET_IS (req_r.s, "cancel_requested", "1");
    CHECK (s_expect_message (sub, KILN_CHANNEL_CANCEL, running));
    CHECK (s_str_is (ctx, "1800000000000", "ZSCORE %s %s", KILN_KEY_INFLIGHT, running));
    CHECK (s_cancel_is (ctx, app, running, "CANCELLATION_REQUESTED"));
    CHECK (s_expect_message (sub, KILN_CHANNEL_CANCEL, running));

    //  Completed, by its runner or by the cancel: already completed.
    CHECK (s_complete (ctx, app, running, "200", "", 0, 0, NULL) == 1);
    CHECK (s_cancel_is (ctx, app, running, "ALREADY_COMPLETED"));
    CHECK (s_cancel_is (ctx, app, queued, "ALREADY_COMPLETED"));
    HGET_IS (req_q.s, "status", "499");
}

//  The webhook outbox: a completion enters it and keeps the record; CLAIM
//  leases due deliveries; DONE retries or ends them.
static void
s_test_webhooks (redisContext *ctx, const char *app)
{
    const char *w = "00000000-0000-4000-8000-0000000000b0";
    const char *w2 = "00000000-0000-4000-8000-0000000000b1";
    const char *plain = "00000000-0000-4000-8000-0000000000b2";
    const char *url = "http://127.0.0.1:9/hook?x=1";
    kiln_key_t req_w = kiln_key_request (w);
    kiln_key_t req_w2 = kiln_key_request (w2);
    kiln_key_t logs_w = kiln_key_logs (w);

    CHECK (s_submit_full (ctx, app, w, "normal", "", url, "0", "0", "{}", 2) == 0);
    CHECK (s_submit_full (ctx, app, w2, "normal", "", url, "0", "0", "{}", 2) == 1);
    CHECK (s_submit_full (ctx, app, plain, "normal", "", "", "0", "0", "{}", 2) == 2);
    HGET_IS (req_w.s, "webhook", url);

    //  A run to completion (COMPLETE at 1700000002000): into the outbox,
    //  due at once; the record stays without a TTL, the logs get one.
    s_take_expect (ctx, app, "1700000001000", w);
    const char *lines [] = { "{\"message\":\"hi\"}" };
    CHECK (s_log (ctx, w, 1, lines) == 1);
    const char result [] = "{\"out\":1}";
    CHECK (s_complete (ctx, app, w, "200", result, strlen (result), 0, NULL) == 1);
    HGET_IS (req_w.s, "state", "COMPLETED");
    HGET_IS (req_w.s, "webhook_state", "pending");
    HGET_IS (req_w.s, "webhook_attempts", "0");
    CHECK (s_str_is (ctx, "1700000002000", "ZSCORE %s %s", KILN_KEY_WEBHOOKS, w));
    CHECK (s_int (ctx, "TTL %s", req_w.s) == -1);
    long long ttl = s_int (ctx, "TTL %s", logs_w.s);
    CHECK (ttl > 0 && ttl <= 600);

    //  A cancel while queued (at 1700000003000) is a completion too.
    CHECK (s_cancel_is (ctx, app, w2, "CANCELLED"));
    CHECK (s_str_is (ctx, "1700000003000", "ZSCORE %s %s", KILN_KEY_WEBHOOKS, w2));
    CHECK (s_int (ctx, "TTL %s", req_w2.s) == -1);
    HGET_IS (req_w2.s, "webhook_state", "pending");

    //  Without a webhook: not in the outbox, expires as usual.
    s_take_expect (ctx, app, "1700000001000", plain);
    CHECK (s_complete (ctx, app, plain, "200", "", 0, 0, NULL) == 1);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_WEBHOOKS, plain));
    CHECK (s_int (ctx, "TTL %s", kiln_key_request (plain).s) > 0);
    HGET_IS (kiln_key_request (plain).s, "webhook_state", NULL);

    //  CLAIM drops ids whose record is gone or has no webhook, and gives
    //  nothing before it is due.
    CHECK (s_int (ctx, "ZADD %s 0 ghost 0 %s", KILN_KEY_WEBHOOKS, plain) == 2);
    redisReply *reply = s_claim (ctx, "1700000001999", "1000", "10");
    CHECK (reply->elements == 0);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_WEBHOOKS) == 2);

    //  Due: the oldest first, up to the limit, with what a delivery
    //  needs; each claimed id is leased (re-scored to now + lease).
    reply = s_claim (ctx, "1700000003000", "1000", "1");
    CHECK (reply->elements == KILN_WEBHOOK_CLAIM_FIELDS);
    const char *expect [KILN_WEBHOOK_CLAIM_FIELDS] = {
        w, url, "0", "200", "image/png", result, "", ""
    };
    for (int k = 0; k < KILN_WEBHOOK_CLAIM_FIELDS; k++) {
        CHECK (reply->element [k]->type == REDIS_REPLY_STRING);
        CHECK (strcmp (reply->element [k]->str, expect [k]) == 0);
    }
    freeReplyObject (reply);
    CHECK (s_str_is (ctx, "1700000004000", "ZSCORE %s %s", KILN_KEY_WEBHOOKS, w));
    //  A second deliverer at the same moment gets only the other one.
    reply = s_claim (ctx, "1700000003000", "1000", "10");
    CHECK (reply->elements == KILN_WEBHOOK_CLAIM_FIELDS);
    CHECK (strcmp (reply->element [0]->str, w2) == 0);
    CHECK (strcmp (reply->element [3]->str, "499") == 0);
    CHECK (strcmp (reply->element [7]->str, "client_cancelled") == 0);
    CHECK (strlen (reply->element [6]->str) > 0);    //  the error text
    freeReplyObject (reply);
    reply = s_claim (ctx, "1700000003999", "1000", "10");
    CHECK (reply->elements == 0);
    freeReplyObject (reply);
    //  A lease that runs out (the deliverer died) hands it on.
    reply = s_claim (ctx, "1700000004000", "1000", "10");
    CHECK (reply->elements == 2 * KILN_WEBHOOK_CLAIM_FIELDS);
    freeReplyObject (reply);

    //  DONE retry: one attempt more, due again at next_ms, still kept.
    CHECK (s_webhook_done (ctx, w, "retry", "1700000010000", "900", "HTTP 500") == 1);
    HGET_IS (req_w.s, "webhook_attempts", "1");
    HGET_IS (req_w.s, "webhook_last_error", "HTTP 500");
    HGET_IS (req_w.s, "webhook_state", "pending");
    CHECK (s_str_is (ctx, "1700000010000", "ZSCORE %s %s", KILN_KEY_WEBHOOKS, w));
    CHECK (s_int (ctx, "TTL %s", req_w.s) == -1);
    reply = s_claim (ctx, "1700000009999", "1000", "10");
    CHECK (reply->elements == KILN_WEBHOOK_CLAIM_FIELDS);  //  w2, its lease out again
    CHECK (strcmp (reply->element [0]->str, w2) == 0);
    freeReplyObject (reply);
    reply = s_claim (ctx, "1700000010000", "1000", "10");
    CHECK (reply->elements == KILN_WEBHOOK_CLAIM_FIELDS);
    CHECK (strcmp (reply->element [0]->str, w) == 0);
    CHECK (strcmp (reply->element [2]->str, "1") == 0);   //  attempts so far
    freeReplyObject (reply);

    //  DONE delivered: out of the outbox; record and logs expire after
    //  the retention from now.
    CHECK (s_webhook_done (ctx, w, "delivered", "0", "900", "") == 1);
    HGET_IS (req_w.s, "webhook_state", "delivered");
    HGET_IS (req_w.s, "webhook_attempts", "2");
    HGET_IS (req_w.s, "webhook_last_error", "");
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_WEBHOOKS, w));
    ttl = s_int (ctx, "TTL %s", req_w.s);
    CHECK (ttl > 600 && ttl <= 900);
    ttl = s_int (ctx, "TTL %s", logs_w.s);
    CHECK (ttl > 600 && ttl <= 900);

    //  DONE failed: the same, marked failed.
    CHECK (s_webhook_done (ctx, w2, "failed", "0", "900", "connection refused") == 1);
    HGET_IS (req_w2.s, "webhook_state", "failed");
    HGET_IS (req_w2.s, "webhook_last_error", "connection refused");
    ttl = s_int (ctx, "TTL %s", req_w2.s);
    CHECK (ttl > 600 && ttl <= 900);
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_WEBHOOKS) == 0);
    reply = s_claim (ctx, "1800000000000", "1000", "10");
    CHECK (reply->elements == 0);
    freeReplyObject (reply);

    //  DONE for a record that is gone: 0, and it leaves the outbox.
    CHECK (s_int (ctx, "ZADD %s 5 ghost", KILN_KEY_WEBHOOKS) == 1);
    CHECK (s_webhook_done (ctx, "ghost", "retry", "1700000020000", "900", "x") == 0);
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_WEBHOOKS) == 0);
    CHECK (s_int (ctx, "EXISTS %s", kiln_key_request ("ghost").s) == 0);
}

//  REQUEUE at now 1700000004000; returns its integer answer.
static long long
s_requeue (redisContext *ctx, const char *id, const char *limit, const char *counted,
           const char *on_limit)
{
    kiln_key_t req_key = kiln_key_request (id);
    const char *keys [] = { req_key.s };
    const char *args [] = { id, "1700000004000", limit, counted, "600", on_limit };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_REQUEUE, 1, keys, on_limit? 6: 5, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long n = reply->integer;
    freeReplyObject (reply);
    return n;
}

//  Takes the queue's head until it gives id (NULL: until it is empty),
//  completing every other request it takes on the way.
static void
s_take_until (redisContext *ctx, const char *app, const char *id)
{
    while (true) {
        redisReply *reply = s_take_at (ctx, app, "runner-9", "1700000003000", "1800000000000", "600");
        if (reply->type == REDIS_REPLY_NIL) {
            freeReplyObject (reply);
            CHECK (id == NULL);
            return;
        }
        CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);
        bool found = id && strcmp (reply->element [0]->str, id) == 0;
        if (!found)
            CHECK (s_complete (ctx, app, reply->element [0]->str, "200", "", 0, 0, NULL) == 1);
        freeReplyObject (reply);
        if (found)
            return;
    }
}

//  A lost runner's requests go back to the head of their queue, within
//  their band, until the retry limit; no_retry and cancels are honoured;
//  a hand-back does not count.
static void
s_test_requeue (redisContext *ctx, redisContext *sub, const char *app)
{
    const char *r1 = "00000000-0000-4000-8000-0000000000d1";
    const char *r2 = "00000000-0000-4000-8000-0000000000d2";
    const char *n1 = "00000000-0000-4000-8000-0000000000d3";
    const char *lo = "00000000-0000-4000-8000-0000000000d4";
    const char *lo2 = "00000000-0000-4000-8000-0000000000d5";
    const char *nr = "00000000-0000-4000-8000-0000000000d6";
    const char *cx = "00000000-0000-4000-8000-0000000000d7";
    kiln_key_t queue = kiln_key_queue (app);
    kiln_key_t req1 = kiln_key_request (r1);
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 0);

    //  r1 (with a start deadline) and r2 run; n1 and lo, lo2 wait.
    CHECK (s_submit_full (ctx, app, r1, "normal", "kiln:done:gw1", "", "1700000005000", "0", "{}", 2) == 0);
    CHECK (s_submit_full (ctx, app, r2, "normal", "", "", "0", "0", "{}", 2) == 1);
    s_take_expect (ctx, app, "1700000001000", r1);
    s_take_expect (ctx, app, "1700000001000", r2);
    CHECK (s_submit_full (ctx, app, lo, "low", "", "", "0", "0", "{}", 2) == 0);
    CHECK (s_submit_full (ctx, app, lo2, "low", "", "", "0", "0", "{}", 2) == 1);
    CHECK (s_submit_full (ctx, app, n1, "normal", "", "", "0", "0", "{}", 2) == 0);
    for (int i = 0; i < 5; i++)
        CHECK (s_expect_message (sub, KILN_CHANNEL_WAKE, app));

    //  Not IN_PROGRESS: -1, nothing written.
    CHECK (s_requeue (ctx, n1, "3", "1", NULL) == -1);
    CHECK (s_requeue (ctx, "00000000-0000-4000-8000-000000000999", "3", "1", NULL) == -1);
    CHECK (s_int (ctx, "EXISTS %s", kiln_key_request ("00000000-0000-4000-8000-000000000999").s) == 0);

    //  r1 back: at the head, before n1; out of kiln:inflight; no runner;
    //  its start deadline (met) no longer ends it; a wake published.
    CHECK (s_requeue (ctx, r1, "3", "1", NULL) == 1);
    CHECK (s_expect_message (sub, KILN_CHANNEL_WAKE, app));
    HGET_IS (req1.s, "state", "IN_QUEUE");
    HGET_IS (req1.s, "attempts", "1");
    HGET_IS (req1.s, "runner", NULL);
    HGET_IS (req1.s, "started_ms", NULL);
    HGET_IS (req1.s, "start_deadline_ms", "0");
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_INFLIGHT, r1));
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, r1) == 0);
    //  r2 after it: the latest re-queued goes first.
    CHECK (s_requeue (ctx, r2, "3", "1", NULL) == 1);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, r2) == 0);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, r1) == 1);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, n1) == 2);
    //  A low one re-queued stays behind the normal band, ahead of its own.
    s_take_expect (ctx, app, "1700000002000", r2);
    s_take_expect (ctx, app, "1700000002000", r1);
    s_take_expect (ctx, app, "1700000002000", n1);
    s_take_expect (ctx, app, "1700000002000", lo);
    CHECK (s_requeue (ctx, lo, "3", "1", NULL) == 1);
    CHECK (s_requeue (ctx, n1, "3", "1", NULL) == 1);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, n1) == 0);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, lo) == 1);
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, lo2) == 2);
    HGET_IS (kiln_key_request (lo).s, "priority", "low");

    //  The retry limit: r1 ran twice; with a limit of 2 it completes 503
    //  runner_disconnected, its waiting gateway told.
    CHECK (s_requeue (ctx, r1, "2", "1", NULL) == 0);
    HGET_IS (req1.s, "state", "COMPLETED");
    HGET_IS (req1.s, "status", "503");
    HGET_IS (req1.s, "error_type", "runner_disconnected");
    char *body = s_str (ctx, "HGET %s %s", req1.s, "result_body");
    CHECK (body && strstr (body, "\"error_type\":\"runner_disconnected\"")
                && strstr (body, "tried 2 times"));
    free (body);
    CHECK (s_expect_message (sub, "kiln:done:gw1", r1));
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_INFLIGHT, r1));
    CHECK (s_requeue (ctx, r1, "3", "1", NULL) == -1);      //  once only

    //  on_limit keep: out of retries, nothing written: the caller records
    //  the runner's own answer. Within the limit, keep changes nothing.
    kiln_key_t req2 = kiln_key_request (r2);
    CHECK (s_requeue (ctx, r2, "2", "1", "keep") == -2);
    HGET_IS (req2.s, "state", "IN_PROGRESS");
    HGET_IS (req2.s, "attempts", "2");
    CHECK (s_requeue (ctx, r2, "3", "1", "keep") == 1);
    HGET_IS (req2.s, "state", "IN_QUEUE");

    //  A hand-back (count_attempt 0) gives the attempt back, and is never
    //  failed: at the limit, or with no_retry.
    s_take_expect (ctx, app, "1700000003000", r2);
    HGET_IS (req2.s, "attempts", "3");
    CHECK (s_requeue (ctx, r2, "3", "0", NULL) == 1);
    HGET_IS (req2.s, "attempts", "2");
    HGET_IS (req2.s, "state", "IN_QUEUE");
    CHECK (s_submit_full (ctx, app, nr, "normal", "", "", "0", "1", "{}", 2) >= 0);
    kiln_key_t req_nr = kiln_key_request (nr);
    s_take_until (ctx, app, nr);
    CHECK (s_requeue (ctx, nr, "3", "0", NULL) == 1);
    HGET_IS (req_nr.s, "attempts", "0");
    //  no_retry: the first loss of a run is final.
    s_take_expect (ctx, app, "1700000003000", nr);
    CHECK (s_requeue (ctx, nr, "3", "1", NULL) == 0);
    HGET_IS (req_nr.s, "status", "503");
    HGET_IS (req_nr.s, "error_type", "runner_disconnected");
    body = s_str (ctx, "HGET %s %s", req_nr.s, "error");
    CHECK (body && strstr (body, "No-Retry"));
    free (body);

    //  Cancelled by its client while it ran: 499, not another run.
    CHECK (s_submit_full (ctx, app, cx, "normal", "", "", "0", "0", "{}", 2) >= 0);
    kiln_key_t req_cx = kiln_key_request (cx);
    s_take_until (ctx, app, cx);
    CHECK (s_cancel_is (ctx, app, cx, "CANCELLATION_REQUESTED"));
    CHECK (s_requeue (ctx, cx, "3", "1", NULL) == 0);
    HGET_IS (req_cx.s, "status", "499");
    HGET_IS (req_cx.s, "error_type", "client_cancelled");

    //  Clean up: what is left runs and completes.
    s_take_until (ctx, app, NULL);
    CHECK (s_int (ctx, "EXISTS %s %s", queue.s, KILN_KEY_INFLIGHT) == 0);
    //  Drain the wakes and cancels this published.
    redisReply *reply = redisCommand (ctx, "PUBLISH kiln:done:gw1 end-of-requeue");
    CHECK (reply);
    freeReplyObject (reply);
    CHECK (s_expect_message (sub, "kiln:done:gw1", "end-of-requeue"));
}

//  APP_STATUS writes notes on a deployed app only.
static void
s_test_app_status (redisContext *ctx, const char *app)
{
    kiln_key_t key = kiln_key_app (app);
    const char *keys [] = { key.s };
    const char *args [] = { "failed_starts", "2", "last_error", "setup failed (exit 3): x",
                            "last_error_ms", "1700000000000" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_APP_STATUS, 1, keys, 6, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    freeReplyObject (reply);
    HGET_IS (key.s, "failed_starts", "2");
    HGET_IS (key.s, "last_error", "setup failed (exit 3): x");
    HGET_IS (key.s, "last_error_ms", "1700000000000");
    kiln_key_t gone = kiln_key_app ("local/gone");
    const char *gone_keys [] = { gone.s };
    reply = s_eval (ctx, KILN_SCRIPT_APP_STATUS, 1, gone_keys, 2, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "EXISTS %s", gone.s) == 0);
}

//  SUBMIT refuses what would pass the manifest's max_queue_length,
//  writing nothing, and counts queued requests only.
static void
s_test_queue_limit (redisContext *ctx)
{
    const char *app = "local/bounded";
    kiln_key_t key = kiln_key_app (app);
    kiln_key_t queue = kiln_key_queue (app);
    const char *a = "00000000-0000-4000-8000-0000000000a1";
    const char *b = "00000000-0000-4000-8000-0000000000a2";
    const char *c = "00000000-0000-4000-8000-0000000000a3";
    CHECK (s_int (ctx, "HSET %s name %s manifest %s", key.s, app,
                  "{\"name\":\"bounded\",\"max_queue_length\":2}") == 2);
    CHECK (s_submit (ctx, app, a, "normal", "", "{}", 2) == 0);
    CHECK (s_submit (ctx, app, b, "low", "", "{}", 2) == 1);
    kiln_key_t req_c = kiln_key_request (c);
    const char *keys [] = { key.s, req_c.s, queue.s, KILN_KEY_SEQ };
    const char *args [] = { c, app, "/", "", "{}", "normal", "", "", "1700000000000", "0", "0", "" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_SUBMIT, 4, keys, 12, args, NULL);
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
        && reply->element [0]->integer == -3 && reply->element [1]->integer == 2);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "EXISTS %s", kiln_key_request (c).s) == 0);
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 2);
    //  Taken requests leave room
    CHECK (s_int (ctx, "ZREM %s %s", queue.s, a) == 1);
    CHECK (s_submit (ctx, app, c, "normal", "", "{}", 2) == 0);
    //  A limit of 0 is none
    CHECK (s_int (ctx, "HSET %s manifest %s", key.s,
                  "{\"name\":\"bounded\",\"max_queue_length\":0}") == 0);
    const char *d = "00000000-0000-4000-8000-0000000000a4";
    CHECK (s_submit (ctx, app, d, "normal", "", "{}", 2) == 1);    //  behind c, ahead of low b
    kiln_key_t req_a = kiln_key_request (a), req_b = kiln_key_request (b);
    kiln_key_t req_d = kiln_key_request (d);
    CHECK (s_int (ctx, "DEL %s %s %s %s %s %s", key.s, queue.s, req_a.s, req_b.s, req_c.s,
                  req_d.s) == 6);
}

//  TAKE with several runners: one request per runner named, in queue
//  order, each recorded as its runner's; fewer when the queue runs out.
static void
s_test_take_many (redisContext *ctx, const char *app)
{
    const char *ids [] = { "00000000-0000-4000-8000-0000000001f1",
                           "00000000-0000-4000-8000-0000000001f2",
                           "00000000-0000-4000-8000-0000000001f3" };
    const char *runners [] = { "runner-1", "runner-2", "runner-1" };
    for (int i = 0; i < 3; i++)
        CHECK (s_submit (ctx, app, ids [i], "normal", "", "{}", 2) == i);
    kiln_key_t queue_key = kiln_key_queue (app);
    const char *keys [] = { queue_key.s, KILN_KEY_INFLIGHT };
    const char *args [] = { "runner-1", "1700000001000", "1800000000000", "600",
                            "runner-2", "runner-1", "runner-2" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_TAKE, 2, keys, 7, args, NULL);
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 12);
    for (int i = 0; i < 3; i++) {
        CHECK (strcmp (reply->element [4 * i]->str, ids [i]) == 0);
        CHECK (strcmp (reply->element [4 * i + 1]->str, "/sub") == 0);
        HGET_IS (kiln_key_request (ids [i]).s, "state", "IN_PROGRESS");
        HGET_IS (kiln_key_request (ids [i]).s, "runner", runners [i]);
    }
    freeReplyObject (reply);
    reply = s_eval (ctx, KILN_SCRIPT_TAKE, 2, keys, 7, args, NULL);
    CHECK (reply->type == REDIS_REPLY_NIL);
    freeReplyObject (reply);
    for (int i = 0; i < 3; i++)
        CHECK (s_complete_as (ctx, app, ids [i], runners [i]) == 1);
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_INFLIGHT) == 0);
}

//  APP_LOG appends to a deployed app's stream only, leaving out empty
//  fields but the message.
static void
s_test_app_log (redisContext *ctx, const char *app)
{
    kiln_key_t key = kiln_key_app (app);
    kiln_key_t stream = kiln_key_app_logs (app);
    const char *keys [] = { key.s, stream.s };
    const char *args [] = { "10000",
        "2026-11-28T18:00:00.123Z", "INFO", "runner", "setting up", "r-1", "", "3",
        "2026-11-28T18:00:00.124Z", "WARN", "app", "", "r-1", "00000000-0000-4000-8000-000000000001", "3" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_APP_LOG, 2, keys, 15, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 2);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "XLEN %s", stream.s) == 2);
    reply = redisCommand (ctx, "XRANGE %s - +", stream.s);
    CHECK (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2);
    //  The first: no request_id; the second: an empty message kept
    CHECK (reply->element [0]->element [1]->elements == 12);
    CHECK (reply->element [1]->element [1]->elements == 14);
    freeReplyObject (reply);
    kiln_key_t gone = kiln_key_app ("local/gone");
    kiln_key_t gone_stream = kiln_key_app_logs ("local/gone");
    const char *gone_keys [] = { gone.s, gone_stream.s };
    reply = s_eval (ctx, KILN_SCRIPT_APP_LOG, 2, gone_keys, 8, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "EXISTS %s", gone_stream.s) == 0);

    //  A request's LOG goes to its list and to its app's stream at once.
    const char *id = "00000000-0000-4000-8000-0000000001c1";
    kiln_key_t req = kiln_key_request (id);
    kiln_key_t logs = kiln_key_logs (id);
    CHECK (s_int (ctx, "HSET %s state IN_PROGRESS runner r-1", req.s) == 2);
    const char *log_keys [] = { req.s, logs.s, key.s, stream.s };
    const char *log_args [] = { "r-1", "10000", "1", "{\"message\":\"hi\"}",
        "2026-11-28T18:00:00.125Z", "INFO", "app", "hi", "r-1", id, "3" };
    reply = s_eval (ctx, KILN_SCRIPT_LOG, 4, log_keys, 11, log_args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "LLEN %s", logs.s) == 1);
    CHECK (s_int (ctx, "XLEN %s", stream.s) == 3);
    CHECK (s_int (ctx, "DEL %s %s %s", stream.s, req.s, logs.s) == 3);
}

//  DEPLOY numbers revisions from latest_revision and keeps each one;
//  ROLLBACK brings one back; UNDEPLOY drops them all.
static long long
s_deploy (redisContext *ctx, const char *app, const char *sha, const char *manifest,
          const char *now)
{
    kiln_key_t key = kiln_key_app (app);
    kiln_key_t artifact = kiln_key_artifact (sha);
    kiln_key_t revisions = kiln_key_revisions (app);
    const char *keys [] = { key.s, KILN_KEY_APPS, artifact.s, revisions.s };
    const char *args [] = { app, sha, manifest, now };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_DEPLOY, 4, keys, 4, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long revision = reply->integer;
    freeReplyObject (reply);
    return revision;
}

static long long
s_rollback (redisContext *ctx, const char *app, const char *revision)
{
    kiln_key_t key = kiln_key_app (app);
    kiln_key_t revisions = kiln_key_revisions (app);
    const char *keys [] = { key.s, revisions.s };
    const char *args [] = { app, revision, "1700000000300" };
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_ROLLBACK, 2, keys, 3, args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER);
    long long answer = reply->integer;
    freeReplyObject (reply);
    return answer;
}

static void
s_test_revisions (redisContext *ctx)
{
    const char *app = "local/revs";
    kiln_key_t key = kiln_key_app (app);
    kiln_key_t revisions = kiln_key_revisions (app);
    const char *one = "1111111111111111111111111111111111111111111111111111111111111111";
    const char *two = "2222222222222222222222222222222222222222222222222222222222222222";
    freeReplyObject (redisCommand (ctx, "SET %s x", kiln_key_artifact (one).s));
    freeReplyObject (redisCommand (ctx, "SET %s y", kiln_key_artifact (two).s));
    CHECK (s_deploy (ctx, app, "3333333333333333333333333333333333333333333333333333333333333333",
                     "{}", "1") == -1);
    CHECK (s_int (ctx, "EXISTS %s %s", key.s, revisions.s) == 0);
    //  The manifest is stored as an object, even with empty arrays in it
    CHECK (s_deploy (ctx, app, one, "{\"endpoints\":[],\"n\":1}", "1700000000100") == 1);
    CHECK (s_deploy (ctx, app, two, "{\"endpoints\":[\"/\"],\"n\":2}", "1700000000200") == 2);
    HGET_IS (revisions.s, "1", "{\"revision\":1,\"artifact\":\"1111111111111111111111111111111111111111"
             "111111111111111111111111\",\"manifest\":{\"endpoints\":[],\"n\":1},"
             "\"created_ms\":1700000000100}");
    HGET_IS (key.s, "revision", "2");
    HGET_IS (key.s, "latest_revision", "2");

    CHECK (s_rollback (ctx, "local/none", "1") == -1);
    CHECK (s_rollback (ctx, app, "9") == -2);
    CHECK (s_rollback (ctx, app, "x") == -2);
    HGET_IS (key.s, "revision", "2");
    CHECK (s_rollback (ctx, app, "1") == 1);
    HGET_IS (key.s, "revision", "1");
    HGET_IS (key.s, "artifact", one);
    HGET_IS (key.s, "manifest", "{\"endpoints\":[],\"n\":1}");
    HGET_IS (key.s, "updated_ms", "1700000000300");
    HGET_IS (key.s, "latest_revision", "2");
    //  A deploy after a rollback never reuses a number
    CHECK (s_deploy (ctx, app, two, "{}", "1700000000400") == 3);
    HGET_IS (key.s, "revision", "3");
    CHECK (s_int (ctx, "HLEN %s", revisions.s) == 3);

    //  An app deployed before revisions were kept goes on from its revision
    freeReplyObject (redisCommand (ctx, "HDEL %s latest_revision", key.s));
    CHECK (s_deploy (ctx, app, one, "{}", "1700000000500") == 4);

    const char *undeploy_keys [] = { key.s, KILN_KEY_APPS, revisions.s };
    const char *undeploy_args [] = { app };
    kiln_key_t secrets = kiln_key_app_secrets (app);
    CHECK (s_int (ctx, "HSET %s TOKEN x", secrets.s) == 1);
    redisReply *reply = s_eval (ctx, KILN_SCRIPT_UNDEPLOY, 3, undeploy_keys, 1, undeploy_args, NULL);
    CHECK (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "EXISTS %s %s %s", key.s, revisions.s, secrets.s) == 0);
    CHECK (s_deploy (ctx, app, one, "{}", "1700000000600") == 1);
    reply = s_eval (ctx, KILN_SCRIPT_UNDEPLOY, 3, undeploy_keys, 1, undeploy_args, NULL);
    freeReplyObject (reply);
}

void
kiln_scripts_test (bool verbose)
{
    if (verbose)
        printf (" * kiln_scripts: ");
    //  Invariants the C side relies on.
    assert (strstr (KILN_SCRIPT_SUBMIT, KILN_CHANNEL_WAKE));
    assert (strstr (KILN_SCRIPT_REQUEUE, KILN_CHANNEL_WAKE));
    //  A changed app record is read again; a queued request is not.
    assert (strstr (KILN_SCRIPT_DEPLOY, KILN_CHANNEL_CHANGED));
    assert (strstr (KILN_SCRIPT_UNDEPLOY, KILN_CHANNEL_CHANGED));
    assert (strstr (KILN_SCRIPT_ROLLBACK, KILN_CHANNEL_CHANGED));
    assert (strstr (KILN_SCRIPT_SCALE, KILN_CHANNEL_CHANGED));
    assert (strstr (KILN_SCRIPT_TAKE, KILN_KEY_REQ_PREFIX));
    assert (strstr (KILN_SCRIPT_COMPLETE, KILN_KEY_FILE_PREFIX));
    //  The band span in Lua matches the C constant.
    char span [32];
    snprintf (span, sizeof span, "%.0f", KILN_QUEUE_BAND_SPAN);
    assert (strstr (KILN_SCRIPT_SUBMIT, span));
    //  The Lua field list says what KILN_APP_FIELDS says, in its order.
    char lua_fields [256] = "";
    size_t at = 0;
    for (const char *c = S_LUA_APP_FIELDS; *c && at + 1 < sizeof lua_fields; c++)
        if (*c != '\'' && *c != ',')
            lua_fields [at++] = *c;
    assert (strcmp (lua_fields, KILN_APP_FIELDS) == 0);

    int port;
    s_server_pid = kiln_redis_test_server_start (&port, s_server_dir, NULL);
    if (s_server_pid <= 0) {
        fprintf (stderr, "kiln_scripts_test: FAILED: cannot start /usr/bin/redis-server\n");
        abort ();
    }
    char url [64];
    snprintf (url, sizeof url, "redis://127.0.0.1:%d/1", port);
    redisContext *ctx = kiln_redis_connect (url, 5000);
    CHECK (ctx);
    redisContext *sub = kiln_redis_connect (url, 5000);
    CHECK (sub);
    //  kiln:done:gw1, a gateway from before answers came with the
    //  message: it hears ids alone; kiln:answer:gw1 hears answers.
    redisReply *reply = redisCommand (sub, "SUBSCRIBE %s kiln:done:gw1 kiln:answer:gw1 %s",
                                      KILN_CHANNEL_WAKE, KILN_CHANNEL_CANCEL);
    CHECK (reply);
    freeReplyObject (reply);
    for (int i = 0; i < 3; i++) {           //  the other confirmations
        reply = NULL;
        CHECK (redisGetReply (sub, (void **) &reply) == REDIS_OK && reply);
        freeReplyObject (reply);
    }

    const char *app = "local/echo";
    const char *a = "00000000-0000-4000-8000-00000000000a";
    const char *b = "00000000-0000-4000-8000-00000000000b";
    const char *c = "00000000-0000-4000-8000-00000000000c";
    const char *d = "00000000-0000-4000-8000-00000000000d";
    const char *low = "00000000-0000-4000-8000-0000000000ff";
    kiln_key_t queue = kiln_key_queue (app);

    //  SUBMIT: unknown app writes nothing.
    CHECK (s_submit (ctx, app, a, "normal", "", "{}", 2) == -1);
    CHECK (s_int (ctx, "EXISTS %s %s %s", kiln_key_request (a).s, queue.s, KILN_KEY_SEQ) == 0);

    //  Deploy the app (SUBMIT only checks that its hash exists).
    CHECK (s_int (ctx, "HSET %s name %s", kiln_key_app (app).s, app) == 1);
    const char body [] = "{\"x\":\0\"bin\"}";
    CHECK (s_submit (ctx, app, a, "normal", "kiln:answer:gw1", body, sizeof body) == 0);
    CHECK (s_submit (ctx, app, b, "normal", "", "{}", 2) == 1);
    CHECK (s_submit (ctx, app, c, "normal", "", "{}", 2) == 2);
    CHECK (s_submit (ctx, app, low, "low", "", "{}", 2) == 3);
    CHECK (s_submit (ctx, app, d, "normal", "", "{}", 2) == 3);    //  ahead of low
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, low) == 4);
    CHECK (s_submit (ctx, app, a, "normal", "", "{}", 2) == -2);    //  duplicate id
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 5);
    for (int i = 0; i < 5; i++)
        CHECK (s_expect_message (sub, KILN_CHANNEL_WAKE, app));

    //  The record, body bytes intact.
    kiln_key_t req_a = kiln_key_request (a);
    HGET_IS (req_a.s, "state", "IN_QUEUE");
    HGET_IS (req_a.s, "id", a);
    HGET_IS (req_a.s, "app", app);
    HGET_IS (req_a.s, "path", "/sub");
    HGET_IS (req_a.s, "priority", "normal");
    HGET_IS (req_a.s, "reply_to", "kiln:answer:gw1");
    HGET_IS (req_a.s, "attempts", "0");
    HGET_IS (req_a.s, "webhook", "");
    HGET_IS (req_a.s, "start_deadline_ms", "0");    //  the short form: none
    HGET_IS (req_a.s, "no_retry", "0");
    CHECK (s_int (ctx, "EXISTS %s", KILN_KEY_DEADLINES) == 0);
    HGET_IS (kiln_key_request (low).s, "priority", "low");
    reply = redisCommand (ctx, "HGET %s body", req_a.s);
    CHECK (reply && reply->type == REDIS_REPLY_STRING && reply->len == sizeof body);
    CHECK (memcmp (reply->str, body, sizeof body) == 0);
    freeReplyObject (reply);

    //  TAKE: head first, marked IN_PROGRESS, leased.
    reply = s_take (ctx, app, "runner-1", "1700000031000");
    CHECK (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);
    CHECK (strcmp (reply->element [0]->str, a) == 0);
    CHECK (strcmp (reply->element [1]->str, "/sub") == 0);
    CHECK (strcmp (reply->element [2]->str, "application/json") == 0);
    CHECK (reply->element [3]->len == sizeof body && memcmp (reply->element [3]->str, body, sizeof body) == 0);
    freeReplyObject (reply);
    HGET_IS (req_a.s, "state", "IN_PROGRESS");
    HGET_IS (req_a.s, "runner", "runner-1");
    HGET_IS (req_a.s, "started_ms", "1700000001000");
    HGET_IS (req_a.s, "attempts", "1");
    CHECK (s_str_is (ctx, "1700000031000", "ZSCORE %s %s", KILN_KEY_INFLIGHT, a));
    CHECK (s_int (ctx, "ZRANK %s %s", queue.s, b) == 0);

    //  A queued id whose record is gone, and one no longer IN_QUEUE, are
    //  skipped (and dropped from the queue).
    CHECK (s_int (ctx, "ZADD %s 0 ghost", queue.s) == 1);
    CHECK (s_int (ctx, "ZADD %s 0 %s", queue.s, a) == 1);
    reply = s_take (ctx, app, "runner-2", "1700000032000");
    CHECK (reply->type == REDIS_REPLY_ARRAY && strcmp (reply->element [0]->str, b) == 0);
    freeReplyObject (reply);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", queue.s, "ghost"));
    HGET_IS (req_a.s, "runner", "runner-1");            //  not taken twice

    //  Order within the band, then the low band.
    reply = s_take (ctx, app, "runner-1", "1");
    CHECK (reply->type == REDIS_REPLY_ARRAY && strcmp (reply->element [0]->str, c) == 0);
    freeReplyObject (reply);
    reply = s_take (ctx, app, "runner-1", "1");
    CHECK (reply->type == REDIS_REPLY_ARRAY && strcmp (reply->element [0]->str, d) == 0);
    freeReplyObject (reply);
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 1);         //  low is left

    //  COMPLETE from IN_QUEUE (a cancel): leaves the queue.
    CHECK (s_complete (ctx, app, low, "499", "", 0, 0, NULL) == 1);
    CHECK (s_int (ctx, "ZCARD %s", queue.s) == 0);
    HGET_IS (kiln_key_request (low).s, "state", "COMPLETED");
    HGET_IS (kiln_key_request (low).s, "status", "499");
    //  Empty queue: TAKE gives nil.
    reply = s_take (ctx, app, "runner-1", "1");
    CHECK (reply->type == REDIS_REPLY_NIL);
    freeReplyObject (reply);

    //  LOG while running: appends, returns the number appended.
    const char *lines [] = { "{\"message\":\"one\"}", "{\"message\":\"two\"}" };
    CHECK (s_log (ctx, a, 2, lines) == 2);
    CHECK (s_log (ctx, a, 1, lines) == 1);
    CHECK (s_log (ctx, a, 0, lines) == 0);
    kiln_key_t logs_a = kiln_key_logs (a);
    CHECK (s_int (ctx, "LLEN %s", logs_a.s) == 3);
    CHECK (s_str_is (ctx, "{\"message\":\"two\"}", "LINDEX %s %s", logs_a.s, "1"));
    CHECK (s_log (ctx, "00000000-0000-4000-8000-000000000999", 1, lines) == 0);
    //  Only its holder's lines count once a holder is named.
    CHECK (s_log_as (ctx, a, "runner-2", 1, lines) == 0);
    CHECK (s_log_as (ctx, a, "runner-1", 1, lines) == 1);
    CHECK (s_int (ctx, "LLEN %s", logs_a.s) == 4);
    //  A COMPLETE from a runner that does not hold it writes nothing.
    CHECK (s_complete_as (ctx, app, a, "runner-2") == 0);
    HGET_IS (req_a.s, "state", "IN_PROGRESS");

    //  COMPLETE while running: recorded once, files written, published,
    //  in-flight lease gone, retention set.
    const char *files [] = {
        "f0000000-0000-4000-8000-000000000001", "image/png", "out.png", "\x89PNG",
        "f0000000-0000-4000-8000-000000000002", "text/plain", "b.txt", "hello",
    };
    const char result [] = "\x89PNG\0\x01";
    CHECK (s_complete (ctx, app, a, "200", result, sizeof result, 2, files) == 1);
    //  Counted in the app's stats: created at ...000, completed at
    //  ...2000, so 2000 ms: in the 2500 bucket only (one HINCRBY; the
    //  cumulative Prometheus buckets are summed by /metrics).
    char stats_key [128];
    snprintf (stats_key, sizeof stats_key, "%s%s", KILN_KEY_STATS_PREFIX, app);
    HGET_IS (stats_key, "status:200", "1");
    long long counted = s_int (ctx, "HINCRBY %s %s 0", stats_key, "latency_count");
    CHECK (counted >= 1);
    CHECK (s_int (ctx, "HINCRBY %s %s 0", stats_key, "in:2500") == counted);
    CHECK (s_int (ctx, "HINCRBY %s %s 0", stats_key, "in:1000") == 0);
    CHECK (s_int (ctx, "HINCRBY %s %s 0", stats_key, "in:5000") == 0);
    CHECK (s_int (ctx, "HEXISTS %s %s", stats_key, "le:2500") == 0);
    CHECK (s_expect_answer (sub, a, "200", "image/png", result, sizeof result));
    HGET_IS (req_a.s, "state", "COMPLETED");
    HGET_IS (req_a.s, "status", "200");
    HGET_IS (req_a.s, "result_content_type", "image/png");
    HGET_IS (req_a.s, "completed_ms", "1700000002000");
    HGET_IS (req_a.s, "inference_ms", "42");
    HGET_IS (req_a.s, "error", "");
    reply = redisCommand (ctx, "HGET %s result_body", req_a.s);
    CHECK (reply && reply->len == sizeof result && memcmp (reply->str, result, sizeof result) == 0);
    freeReplyObject (reply);
    CHECK (s_str_is (ctx, NULL, "ZSCORE %s %s", KILN_KEY_INFLIGHT, a));
    kiln_key_t file1 = kiln_key_file (files [0]);
    HGET_IS (file1.s, "content_type", "image/png");
    HGET_IS (file1.s, "file_name", "out.png");
    HGET_IS (file1.s, "data", "\x89PNG");
    HGET_IS (file1.s, "request_id", a);
    HGET_IS (kiln_key_file (files [4]).s, "data", "hello");
    long long ttl = s_int (ctx, "TTL %s", req_a.s);
    CHECK (ttl > 0 && ttl <= 600);
    ttl = s_int (ctx, "TTL %s", logs_a.s);
    CHECK (ttl > 0 && ttl <= 600);
    ttl = s_int (ctx, "TTL %s", file1.s);
    CHECK (ttl > 0 && ttl <= 600);

    //  Once only: a second COMPLETE changes nothing; unknown ids too.
    CHECK (s_complete (ctx, app, a, "500", "x", 1, 0, NULL) == 0);
    CHECK (s_int (ctx, "HINCRBY %s %s 0", stats_key, "latency_count") == counted);
    HGET_IS (req_a.s, "status", "200");
    CHECK (s_complete (ctx, app, "00000000-0000-4000-8000-000000000999", "200", "", 0, 0, NULL) == 0);
    CHECK (s_int (ctx, "EXISTS %s", kiln_key_request ("00000000-0000-4000-8000-000000000999").s) == 0);

    //  LOG after completion is refused and appends nothing.
    CHECK (s_log (ctx, a, 1, lines) == 0);
    CHECK (s_int (ctx, "LLEN %s", logs_a.s) == 4);

    //  The rest complete; the in-flight set empties.
    CHECK (s_complete_as (ctx, app, b, "runner-2") == 1);
    CHECK (s_complete (ctx, app, c, "200", "", 0, 0, NULL) == 1);
    CHECK (s_complete (ctx, app, d, "200", "", 0, 0, NULL) == 1);
    CHECK (s_int (ctx, "ZCARD %s", KILN_KEY_INFLIGHT) == 0);
    s_test_take_many (ctx, app);

    s_test_deadlines (ctx, sub, app);
    s_test_cancel (ctx, sub, app);
    s_test_webhooks (ctx, app);
    s_test_requeue (ctx, sub, app);
    s_test_app_status (ctx, app);
    s_test_queue_limit (ctx);
    s_test_app_log (ctx, app);
    s_test_revisions (ctx);

    redisFree (sub);
    redisFree (ctx);
    kiln_redis_test_server_stop (s_server_pid, s_server_dir);
    s_server_pid = 0;
    if (verbose)
        printf ("OK\n");
}
