-- requires: bucket
-- flags: no-writes
--[[ read_exp: a user's total and today's counters, in one round trip. Writes nothing.

KEYS[1]  user  HASH  ctr:{bN}:user:<uid>
KEYS[2]  today HASH  ctr:{bN}:day:<YYYYMMDD>:<uid>
KEYS[3]  meta  HASH  ctr:{bN}:meta                    run, complete (lua/lib/bucket.lua)

ARGV[1]  may_create  "0"|"1"|"2"  "0": a missing user is new only in a complete bucket, else it
                              must be hydrated first (reply code 6); "2": always hydrated first

Reply: {code, total_exp, seq, {field, value, ...} of the day hash}
  code 1 read
  code 6 needs_hydration
]]

if redis.call('EXISTS', KEYS[1]) == 0 and not Bucket.may_create(KEYS[3], ARGV[1]) then
  return {6, 0, 0, {}}
end
local user = redis.call('HMGET', KEYS[1], 'exp', 'seq')
return {1, tonumber(user[1]) or 0, tonumber(user[2]) or 0, redis.call('HGETALL', KEYS[2])}
