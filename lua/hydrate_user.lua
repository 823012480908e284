--[[ hydrate_user: put back a user Redis forgot, from the durable store, unless Redis has them.

Atomic: the user hash is written only if it does not exist, so a concurrent hydration or a write
that created the user first wins cleanly and this one changes nothing. Today's counters are
written only if today's hash does not exist either (one that exists is newer than the ledger).

KEYS[1]  user  HASH  ctr:{bN}:user:<uid>              exp, level, seq, xp
KEYS[2]  day   HASH  ctr:{bN}:day:<YYYYMMDD>:<uid>    exp, a:<action> (counts)

ARGV[1]  exp            int      total EXP
ARGV[2]  level          int
ARGV[3]  seq            int      the user's last change counter: new events continue from it
ARGV[4]  xp_state       string   the XP state (JSON) for field xp; "" = none
ARGV[5]  day_ttl        int      seconds KEYS[2] lives from now (as in award_exp.lua)
ARGV[6..] day fields    string, int pairs: "exp", gained today, "a:<action>", count, ...

Reply: {code}   code 1 hydrated   0 Redis already had the user (nothing written)
]]

local exp, level, seq, xp_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local day_ttl = ARGV[5]

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
if xp_state ~= '' then
  redis.call('HSET', KEYS[1], 'exp', exp, 'level', level, 'seq', seq, 'xp', xp_state)
else
  redis.call('HSET', KEYS[1], 'exp', exp, 'level', level, 'seq', seq)
end
if #ARGV > 5 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 6))
  redis.call('EXPIRE', KEYS[2], day_ttl)
end
return {1}
