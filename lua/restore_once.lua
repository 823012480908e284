--[[ restore_once: put back an entity's once-per-actor entries a Redis loss took, from the ledger.

Each entry is written only if the actor has none (one written since is newer), as "done": the
ledger holds only awards that were paid. The hash then lives once_ttl more seconds.

KEYS[1]  once  HASH  ctr:{bE}:once:<action>:<type>:<id>   actor -> JSON entry
KEYS[2]  meta  HASH  ctr:{bE}:meta                         the entity's bucket's run

ARGV[1]  entries   json    [[actor, entry json], ...] (entry as reserve_creator_award.lua writes)
ARGV[2]  once_ttl  int     seconds KEYS[1] lives after this write
ARGV[3]  run       string  write only while the bucket's run is this, the run whose flush
                           barriers the entries were read behind ("": always)

Reply: {code, entries written}
  code 1 restored
  code 2 run_changed   the bucket's run is not ARGV[3]: nothing written
]]

if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'run') ~= ARGV[3] then
  return {2, 0}
end
local entries, once_ttl = cjson.decode(ARGV[1]), ARGV[2]
local written = 0
for _, pair in ipairs(entries) do
  written = written + redis.call('HSETNX', KEYS[1], pair[1], pair[2])
end
if written > 0 then redis.call('EXPIRE', KEYS[1], once_ttl) end
return {1, written}
