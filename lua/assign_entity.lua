--[[ assign_entity: record or change the owner of an entity, in the entity's own bucket.

KEYS[1]  entity  STRING  ctr:{bE}:entity:<type>:<id>   the owner's user id

ARGV[1]  owner_id  string
ARGV[2]  mode      string  "claim": set only if the entity has no owner; "assign": always set

Reply: {code, previous_owner}
  code 1 recorded (previous_owner "" if none, else the owner it replaced)
       2 claim refused: owned by previous_owner
]]

local previous = redis.call('GET', KEYS[1]) or ''
if ARGV[2] == 'claim' and previous ~= '' and previous ~= ARGV[1] then
  return {2, previous}
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, previous}
