-- requires: idempotency, levels, bucket
--[[ award_exp: award EXP for one action, enforcing the per-action daily limit and the daily cap.

All-or-nothing: every check runs before the first write, so a refused award changes no EXP or
count. Runs in the RECEIVING user's slot. KEYS[4] is the request's at-most-once record there:
for an award to oneself (daily_chat, create_*) the request's idempotency record (the acting user
is the receiver: one round trip); for a creator-targeted award the record of its request id
(step C of the protocol in reserve_creator_award.lua), so a retry or a completion by another
request applies it once and replays the first answer. The owner and the once-per-actor record
are checked before, in the entity's slot: nothing here depends on another identity's slot.

KEYS[1]  user      HASH   ctr:{bN}:user:<uid>                exp, level, seq
KEYS[2]  today     HASH   ctr:{bN}:day:<YYYYMMDD>:<uid>      exp, a:<action> (counts)
KEYS[3]  events    STREAM ctr:{bN}:events                    ledger events of the bucket
KEYS[4]  record    STRING ctr:{bN}:idem:<digest> | ctr:{bN}:award:<rid>
                                                             "<fingerprint>|<reply json>" (or unused)
KEYS[5]  day_board  ZSET  ctr:{bN}:board:day:<YYYYMMDD>     EXP earned that UTC day, by user
KEYS[6]  week_board ZSET  ctr:{bN}:board:week:<YYYY>W<ww>   EXP earned that ISO week, by user
KEYS[7]  all_board  ZSET  ctr:{bN}:board:all                EXP earned from awards, by user
KEYS[8]  meta      HASH   ctr:{bN}:meta                      run, complete (lua/lib/bucket.lua)

ARGV[1]  user_id        string   the user who receives the EXP
ARGV[2]  action         string
ARGV[3]  reward         int      EXP the action is worth
ARGV[4]  daily_limit    int      awards per UTC day; 0 = no limit
ARGV[5]  thresholds     json     [int]: EXP required for levels 1..n
ARGV[6]  caps           json     [int]: daily EXP cap of levels 1..n
ARGV[7]  day            string   UTC day YYYYMMDD (the window is in the key; this is for the event)
ARGV[8]  day_ttl        int      seconds KEYS[2] lives from now (to midnight + grace, by the
                                 service's clock: Redis's may differ, so no absolute EXPIREAT)
ARGV[9]  now_ms         int      unix milliseconds
ARGV[10] fingerprint    string   request fingerprint; "" = no record (not idempotent)
ARGV[11] idem_ttl       int      seconds the record KEYS[4] lives
ARGV[12] actor          string   who triggered the action
ARGV[13] may_create     "0"|"1"  "1": a missing user is new; "0": new only in a complete bucket
                                 (KEYS[8] complete), else hydrated first
ARGV[14] target         string   "<type>:<id>" or ""
ARGV[15] idem_key       string   the Idempotency-Key, recorded on the event
ARGV[16] week_ttl       int      seconds KEYS[6] lives from now (to the ISO week's end + grace);
                                 KEYS[5] lives day_ttl. Both set on the user's first award of a day.
                                 0 = leaderboards off: KEYS[5..7] are unused and not written

Reply: {code, exp_added, total_exp, level, previous_level, daily_exp_gained, action_count, seq, replayed}
  code 1 awarded             possibly partial
  code 2 limit_reached       the action's daily limit
  code 3 cap_reached         the level's daily EXP cap
  code 6 needs_hydration
  code 7 key_reused          idempotency key reused with a different request
(A repeat of a once-per-actor action is answered in the entity's slot, never here.)
]]

local user_id, action = ARGV[1], ARGV[2]
local reward, daily_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local day, day_ttl, now_ms = ARGV[7], ARGV[8], ARGV[9]
local fingerprint, idem_ttl, actor = ARGV[10], ARGV[11], ARGV[12]
local may_create, target, idem_key = ARGV[13], ARGV[14], ARGV[15]
local week_ttl = ARGV[16]
local boards = week_ttl ~= '0'

local replayed = Idempotency.replay(KEYS[4], fingerprint, 9, {7, 0, 0, 0, 0, 0, 0, 0, 0})
if replayed then return replayed end

-- Every script that writes the user hash writes its seq, so no seq means no user (one read
-- instead of an EXISTS and then the HMGET).
local user = redis.call('HMGET', KEYS[1], 'exp', 'seq')
if not user[2] and not Bucket.may_create(KEYS[8], may_create) then
  return {6, 0, 0, 0, 0, 0, 0, 0, 0}
end

local thresholds, caps = Levels.list(ARGV[5]), Levels.list(ARGV[6])
local total = tonumber(user[1]) or 0
local seq = tonumber(user[2]) or 0
local level = Levels.of(total, thresholds)
local action_field = 'a:' .. action
local day_state = redis.call('HMGET', KEYS[2], 'exp', action_field)
local gained = tonumber(day_state[1]) or 0
local count = tonumber(day_state[2]) or 0

local function finish(reply)
  return Idempotency.remember(KEYS[4], fingerprint, idem_ttl, reply, may_create ~= '1' and
    {events = KEYS[3], meta = KEYS[8], scope = user_id, now_ms = now_ms} or nil)
end

if daily_limit > 0 and count >= daily_limit then
  return finish({2, 0, total, level, level, gained, count, seq, 0})
end
local cap = caps[level]
if gained >= cap then
  return finish({3, 0, total, level, level, gained, count, seq, 0})
end

local added = math.min(reward, cap - gained)
total = total + added
gained = gained + added
count = count + 1
seq = seq + 1
local new_level = Levels.of(total, thresholds)

redis.call('HSET', KEYS[1], 'exp', total, 'level', new_level, 'seq', seq)
redis.call('HSET', KEYS[2], 'exp', gained, action_field, count)
if boards then
  redis.call('ZINCRBY', KEYS[5], added, user_id)
  redis.call('ZINCRBY', KEYS[6], added, user_id)
  redis.call('ZINCRBY', KEYS[7], added, user_id)
end
if not day_state[1] then  -- the day's first award creates the hash: its clean-up time, once
  redis.call('EXPIRE', KEYS[2], day_ttl)
  if boards then  -- shared by the bucket's users: each one's first award of a day renews them
    redis.call('EXPIRE', KEYS[5], day_ttl)
    redis.call('EXPIRE', KEYS[6], week_ttl)
  end
end
redis.call('XADD', KEYS[3], '*',
  'event_id', user_id .. ':' .. seq, 'user', user_id, 'seq', seq, 'ts', now_ms, 'run', Bucket.run(KEYS[8]),
  'kind', 'exp_award', 'action', action, 'amount', added, 'actor', actor, 'target', target,
  'day', day, 'idem', idem_key, 'exp', total, 'level', new_level)
return finish({1, added, total, new_level, level, gained, count, seq, 0})
