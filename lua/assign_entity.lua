--[[ assign_entity: record or change the owner of an entity, in the entity's own bucket.

When the owner changes and the ledger is on, the same atomic step appends an `entity_owner`
event to the entity's bucket stream, so Postgres learns every owner exactly in the order Redis
applied them.

KEYS[1]  entity  STRING  ctr:{bE}:entity:<type>:<id>   the owner's user id
KEYS[2]  events  STREAM  ctr:{bE}:events               the entity's bucket's stream

ARGV[1]  owner_id  string
ARGV[2]  mode      string  "claim": set only if the entity has no owner; "assign": always set
ARGV[3]  ledger    "0"|"1" "1": append the owner event (a durable store is configured)
ARGV[4]  target    string  "<type>:<id>", recorded on the event

Reply: {code, previous_owner}
  code 1 recorded        previous_owner "" if none, else the owner it replaced
  code 2 claim_refused   owned by previous_owner
]]

local owner, mode, ledger, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local previous = redis.call('GET', KEYS[1]) or ''
if mode == 'claim' and previous ~= '' and previous ~= owner then
  return {2, previous}
end
redis.call('SET', KEYS[1], owner)
if ledger == '1' and previous ~= owner then
  redis.call('XADD', KEYS[2], '*', 'kind', 'entity_owner', 'target', target, 'owner', owner)
end
return {1, previous}
