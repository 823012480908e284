-- requires: award
--[[ creator_award: a whole creator-targeted award (a like, a fork) in ONE script, for an
unkeyed request when the entity's and the owner's keys are on one Redis node (no Cluster, or
the same slot). It does what the chain B, C, D does (reserve_creator_award.lua, award_exp.lua,
settle_creator_award.lua) with no window between the steps, so nothing is ever pending.

The caller names the owner it expects (ARGV[1], from an earlier answer): the entity's owner is
read here, in the same atomic step as the award, so this stays the award's linearization point.
Anything but the plain case is left to the chain, with nothing written (code 12 chain): the
owner is not ARGV[1] (a transfer, a lost or unknown entity), the actor owns the entity, the
actor's entry in the once-per-actor record is pending under the chain or names another owner,
or the owner must first be hydrated (code 6, from Award.apply before any write). One repeat is
answered here, as the chain's B answers it (reserve_creator_award.lua, code 4): the actor's
entry is done and paid this same owner (code 4 already_triggered, nothing written). Row 2's
repeated likes took the shortcut's call and then B's: two round trips for a refusal.

KEYS[1..8] and ARGV[1..15] are award_exp.lua's (lua/lib/award.lua reads them by position);
The record (KEYS[4]) is unused: ARGV[9] fingerprint is "", an unkeyed request replays nothing.

KEYS[1]  user       HASH   ctr:{bN}:user:<uid>
KEYS[2]  today      HASH   ctr:{bN}:day:<YYYYMMDD>:<uid>
KEYS[3]  events     STREAM ctr:{bN}:events
KEYS[4]  record     STRING unused
KEYS[5]  day_board  ZSET   ctr:{bN}:board:day:<YYYYMMDD>
KEYS[6]  week_board ZSET   ctr:{bN}:board:week:<YYYY>W<ww>
KEYS[7]  all_board  ZSET   ctr:{bN}:board:all
KEYS[8]  meta       HASH   ctr:{bN}:meta
KEYS[9]  entity     HASH   ctr:{bE}:entity:<type>:<id>           owner, version
KEYS[10] once       HASH   ctr:{bE}:once:<action>:<type>:<id>    actor -> JSON entry ("once"
                           mode), or an unused key ("plain" mode)

ARGV[1..15]  user_id, action, reward, daily_limit, rules, day, day_ttl, now_ms, fingerprint, idem_ttl, actor, may_create, target, idem_key, week_ttl
ARGV[16] mode      string  "once": record the actor as done in KEYS[10] when awarded; "plain"
ARGV[17] rid       string  the request id kept on the entry (as the chain keeps it)
ARGV[18] once_ttl  int     seconds KEYS[10] lives after its last write

Reply: award_exp's {code, exp_added, total_exp, level, previous_level, daily_exp_gained,
action_count, seq, replayed}
  code 1 awarded           possibly partial
  code 2 limit_reached     the action's daily limit (nothing written: the chain releases too)
  code 3 cap_reached       the level's daily EXP cap (likewise)
  code 4 already_triggered the actor's done entry paid this owner (nothing written; the
                           reply's other fields as the chain's: 0, 0, 1, 1, 0, 0, 0, 0)
  code 5 total_limit       the owner's total would pass the maximum (likewise)
  code 6 needs_hydration   nothing written: the chain hydrates the owner
  code 7 key_reused        never here (no fingerprint); Award.apply can answer it
  code 12 chain            nothing written: run the chain (B, C, D) for this request
]]

local owner = redis.call('HGET', KEYS[9], 'owner')
local actor, mode = ARGV[11], ARGV[16]
if owner ~= ARGV[1] or owner == actor then return {12, 0, 0, 0, 0, 0, 0, 0, 0} end
if mode == 'once' then
  local stored = redis.call('HGET', KEYS[10], actor)
  if stored then
    local entry = cjson.decode(stored)
    if entry.state == 'done' and entry.owner == owner then return {4, 0, 0, 1, 1, 0, 0, 0, 0} end
    return {12, 0, 0, 0, 0, 0, 0, 0, 0}
  end
end
local reply = Award.apply()
if mode == 'once' and reply[1] == 1 then  -- a refused award leaves no entry (the chain releases)
  local entry = {state = 'done', rid = ARGV[17], owner = owner, fp = '-', ts = tonumber(ARGV[8])}
  redis.call('HSET', KEYS[10], actor, cjson.encode(entry))
  redis.call('EXPIRE', KEYS[10], ARGV[18])
end
return reply
