/*  =========================================================================
    gateway_scripts — the Lua scripts only the gateway runs

    Contracts in gateway_scripts.h. Redis's Lua has cjson, so the scale
    script merges and checks the JSON it keeps without a round trip.
    =========================================================================
*/
#include "gateway_scripts.h"

//  KILN_GATEWAY_APP_FIELDS as Lua arguments.
#define S_LUA_APP_FIELDS \
    "'name', 'revision', 'artifact', 'manifest', 'updated_ms', 'scale', " \
    "'failed_starts', 'last_error', 'last_error_ms'"

const char *KILN_GATEWAY_SCRIPT_SCALE =
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
    "redis.call('PUBLISH', 'kiln:wake', ARGV[1])\n"
    "local out = redis.call('HMGET', KEYS[1], " S_LUA_APP_FIELDS ")\n"
    "table.insert(out, 1, 1)\n"
    "return out\n";

const char *KILN_GATEWAY_SCRIPT_LIST_APPS =
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

const char *KILN_GATEWAY_SCRIPT_METRICS =
    "local apps = {}\n"
    "local names = redis.call('SMEMBERS', KEYS[1])\n"
    "table.sort(names)\n"
    "for _, name in ipairs(names) do\n"
    "  table.insert(apps, name)\n"
    "  table.insert(apps, redis.call('ZCARD', ARGV[1] .. name))\n"
    "  table.insert(apps, redis.call('HGETALL', ARGV[2] .. name))\n"
    "end\n"
    "return {apps, redis.call('HVALS', KEYS[2]), redis.call('HVALS', KEYS[3])}\n";
