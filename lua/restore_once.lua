--[[ restore_once: put back an entity's once-per-actor entries a Redis loss took, from the ledger.

Each entry is written only if the actor has none (one written since is newer), as "done": the
ledger holds only awards that were paid. The hash then lives once_ttl more seconds.

KEYS[1]  once  HASH  ctr:{bE}:once:<action>:<type>:<id>   actor -> JSON entry

ARGV[1]  entries   json  [[actor, entry json], ...] (entry as reserve_creator_award.lua writes it)
ARGV[2]  once_ttl  int   seconds KEYS[1] lives after this write

Reply: {code, entries written}
  code 1 restored
]]

local entries, once_ttl = cjson.decode(ARGV[1]), ARGV[2]
local written = 0
for _, pair in ipairs(entries) do
  written = written + redis.call('HSETNX', KEYS[1], pair[1], pair[2])
end
if written > 0 then redis.call('EXPIRE', KEYS[1], once_ttl) end
return {1, written}
