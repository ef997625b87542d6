/*  =========================================================================
    deploy_script — the Lua scripts that change the app registry

    Contracts in deploy_script.h. Key names follow kiln_keys.h; the app
    hash key of a listed name is derived inside the script (single-node
    Redis, as kiln_scripts does).
    =========================================================================
*/
#include "deploy_script.h"

const char *KILN_SCRIPT_DEPLOY =
    "if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end\n"
    "local revision = redis.call('HINCRBY', KEYS[1], 'revision', 1)\n"
    "redis.call('HSET', KEYS[1], 'name', ARGV[1], 'artifact', ARGV[2],\n"
    "  'manifest', ARGV[3], 'updated_ms', ARGV[4])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:wake', ARGV[1])\n"
    "return revision\n";

const char *KILN_SCRIPT_UNDEPLOY =
    "if redis.call('DEL', KEYS[1]) == 0 then\n"
    "  redis.call('SREM', KEYS[2], ARGV[1])\n"
    "  return 0\n"
    "end\n"
    "redis.call('SREM', KEYS[2], ARGV[1])\n"
    "redis.call('PUBLISH', 'kiln:wake', ARGV[1])\n"
    "return 1\n";

const char *KILN_SCRIPT_LIST_APPS =
    "local out = {}\n"
    "local names = redis.call('SMEMBERS', KEYS[1])\n"
    "table.sort(names)\n"
    "for _, name in ipairs(names) do\n"
    "  local f = redis.call('HMGET', 'kiln:app:' .. name,\n"
    "    'name', 'revision', 'artifact', 'manifest', 'updated_ms')\n"
    "  if f[2] then\n"
    "    table.insert(out, f[1] or name)\n"
    "    table.insert(out, f[2])\n"
    "    table.insert(out, f[3] or '')\n"
    "    table.insert(out, f[4] or '')\n"
    "    table.insert(out, f[5] or '')\n"
    "  end\n"
    "end\n"
    "return out\n";
