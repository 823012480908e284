--[[ settle_creator_award: step D of a creator-targeted award, in the ENTITY's slot.

After the owner slot answered (award_exp.lua under the request id), the actor's pending entry
(see reserve_creator_award.lua) becomes "done" when EXP was awarded, or is removed when the
award was refused (daily limit or cap): a refused like may be sent again. Only the entry of the
same request id is touched, so a late or repeated settle changes nothing else.

KEYS[1]  once  HASH  ctr:{bE}:once:<action>:<type>:<id>   actor -> JSON entry

ARGV[1]  actor     string
ARGV[2]  rid       string   the request id the entry must carry
ARGV[3]  outcome   string   "done" | "release"
ARGV[4]  once_ttl  int      seconds KEYS[1] lives after its last write

Reply: {code}
  code 0 not_settled   no entry of that request id (settled by another, or expired)
  code 1 settled
]]

local actor, rid, outcome, once_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local stored = redis.call('HGET', KEYS[1], actor)
if not stored then return {0} end
local entry = cjson.decode(stored)
if entry.rid ~= rid then return {0} end
if outcome == 'release' then
  redis.call('HDEL', KEYS[1], actor)
  return {1}
end
entry.state = 'done'
redis.call('HSET', KEYS[1], actor, cjson.encode(entry))
redis.call('EXPIRE', KEYS[1], once_ttl)
return {1}
