--[[ restore_record: put back a record a Redis loss took (lua/lib/records.lua), from the ledger.

Written only if Redis does not hold the key (a record written since is newer) and the bucket's
run is still the one whose flush barrier the values were read behind (persistence/runs.py).

KEYS[1]  record  STRING  ctr:{bN}:idem:<digest> | ctr:{bN}:award:<rid> | ctr:{bN}:xptx:<uid>:<id>
KEYS[2]  meta    HASH    ctr:{bN}:meta   run, complete

ARGV[1]  value   string  the record as Redis held it
ARGV[2]  ttl_ms  int     milliseconds it had left (> 0)
ARGV[3]  run     string  the bucket's run the value was read for

Reply: {code}
  code 0 skipped       Redis holds the key (nothing written)
  code 1 written
  code 2 run_changed   the bucket's run is not ARGV[3] (nothing written)
]]

local value, ttl_ms, run = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[2], 'run') ~= run then
  return {2}
end
if redis.call('SET', KEYS[1], value, 'PX', ttl_ms, 'NX') then
  return {1}
end
return {0}
