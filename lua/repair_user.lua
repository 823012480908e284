--[[ repair_user: reconcile's fix of one user's totals in Redis, only if the user did not change.

Compare-and-set on seq: if the user was written since reconcile read them (their seq moved), or
Redis no longer has them, nothing is written and reconcile leaves the user for its next run.

KEYS[1]  user  HASH  ctr:{bN}:user:<uid>   exp, level, seq, xp

ARGV[1]  expected_seq  int      the seq reconcile read
ARGV[2]  exp           int      total EXP to set
ARGV[3]  level         int
ARGV[4]  seq           int      seq to set (never lower than expected_seq)
ARGV[5]  xp_state      string   XP state (JSON) to set; "" = leave field xp as it is

Reply: {code}
  code 0 skipped   the user changed or is missing (nothing written)
  code 1 written   repaired
]]

local expected_seq, exp, level, seq, xp_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end
if (tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0) ~= tonumber(expected_seq) then
  return {0}
end
redis.call('HSET', KEYS[1], 'exp', exp, 'level', level, 'seq', seq)
if xp_state ~= '' then
  redis.call('HSET', KEYS[1], 'xp', xp_state)
end
return {1}
