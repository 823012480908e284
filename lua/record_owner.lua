--[[ record_owner: put an entity's current owner on its bucket's event stream, for the ledger.

Reads the owner inside the same atomic step as the XADD, so whatever order two concurrent
assignments of one entity reach this script in, the last event of the entity on its stream
carries the owner Redis holds now. The flusher keeps the latest one per entity in Postgres.

KEYS[1]  entity  STRING  ctr:{bE}:entity:<type>:<id>   the owner's user id
KEYS[2]  events  STREAM  ctr:{bE}:events               the entity's bucket's stream

ARGV[1]  target  string  "<type>:<id>"

Reply: {code, owner}   code 1 recorded   0 the entity has no owner (nothing written)
]]

local owner = redis.call('GET', KEYS[1])
if not owner then
  return {0, ''}
end
redis.call('XADD', KEYS[2], '*', 'kind', 'entity_owner', 'target', ARGV[1], 'owner', owner)
return {1, owner}
