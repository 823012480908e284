-- requires: idempotency, rules, bucket, bounds
--[[ adjust_exp: a support correction of a user's total EXP; no daily limit or cap applies.

The total never goes below zero: a larger negative delta is clamped and the applied delta returned.

KEYS[1]  user    HASH   ctr:{bN}:user:<uid>            exp, level, seq
KEYS[2]  events  STREAM ctr:{bN}:events
KEYS[3]  idem    STRING ctr:{bN}:idem:<caller>:<key>   (or an unused key)
KEYS[4]  meta    HASH   ctr:{bN}:meta                  run, complete (lua/lib/bucket.lua)

ARGV[1]  user_id      string
ARGV[2]  delta        int      signed EXP change requested
ARGV[3]  reason       string   recorded on the event
ARGV[4]  rules        string   the rules version the call was built with (levels compiled in)
ARGV[5]  now_ms       int      unix milliseconds
ARGV[6]  fingerprint  string   "" = not idempotent
ARGV[7]  idem_ttl     int      seconds
ARGV[8]  actor        string   who made the correction
ARGV[9]  may_create   "0"|"1"|"2"  see award_exp.lua (KEYS[4] complete)
ARGV[10] idem_key     string

Reply: {code, applied_delta, total_exp, level, previous_level, seq, replayed}
  code 1 adjusted
  code 5 total_limit       the total would pass the maximum (lib/bounds.lua): nothing written
  code 6 needs_hydration
  code 7 key_reused        idempotency key reused with a different request
]]

local user_id, delta, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now_ms, fingerprint, idem_ttl = ARGV[5], ARGV[6], ARGV[7]
local actor, may_create, idem_key = ARGV[8], ARGV[9], ARGV[10]

local wrong_rules = Rules.check(ARGV[4])
if wrong_rules then return wrong_rules end
local replayed = Idempotency.replay(KEYS[3], fingerprint, 7, {7, 0, 0, 0, 0, 0, 0})
if replayed then return replayed end
if redis.call('EXISTS', KEYS[1]) == 0 and not Bucket.may_create(KEYS[4], may_create) then
  return {6, 0, 0, 0, 0, 0, 0}
end

local user = redis.call('HMGET', KEYS[1], 'exp', 'seq')
local total = tonumber(user[1]) or 0
local seq = (tonumber(user[2]) or 0) + 1
local previous_level = Rules.level(total)
local applied = math.max(delta, -total)
local ledger = may_create ~= '1' and {events = KEYS[2], meta = KEYS[4], scope = user_id, now_ms = now_ms} or nil
if applied > 0 and total + applied > Bounds.MAX then
  return Idempotency.remember(KEYS[3], fingerprint, idem_ttl,
    {5, 0, total, previous_level, previous_level, seq - 1, 0}, ledger)
end
total = total + applied
local level = Rules.level(total)

redis.call('HSET', KEYS[1], 'exp', total, 'level', level, 'seq', seq)
Entry.add(KEYS[2], {'exp_adjust', user_id, seq, now_ms, Bucket.run(KEYS[4]), reason, applied,
  actor, '', idem_key, total, level})
return Idempotency.remember(KEYS[3], fingerprint, idem_ttl,
  {1, applied, total, level, previous_level, seq, 0}, ledger)
