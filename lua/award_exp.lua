-- requires: idempotency, levels
--[[ award_exp: award EXP for one action, enforcing the per-action daily limit and the daily cap.

All-or-nothing: every check runs before the first write, so a refused award changes no EXP or
count. (In "actor_owns" mode the ownership marker is written whatever the outcome: the entity
exists even when its creator is past today's limit.)

KEYS[1]  user      HASH   ctr:{bN}:user:<uid>                exp, level, seq
KEYS[2]  today     HASH   ctr:{bN}:day:<YYYYMMDD>:<uid>      exp, a:<action> (counts)
KEYS[3]  events    STREAM ctr:{bN}:events                    ledger events of the bucket
KEYS[4]  idem      STRING ctr:{bN}:idem:<caller>:<key>       "<fingerprint>|<reply json>" (or an unused key)
KEYS[5]  owned     STRING ctr:{bN}:owned:<type>:<id>         set in actor_owns mode, must exist in creator modes
KEYS[6]  likers    SET    ctr:{bN}:likers:<type>:<id>        once-per-actor record (or unused)

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
ARGV[10] fingerprint    string   request fingerprint; "" = not idempotent
ARGV[11] idem_ttl       int      seconds an idempotency record lives
ARGV[12] mode           string   "actor" | "actor_owns" (records KEYS[5]) | "creator" (KEYS[5] must
                                 exist) | "creator_once" (as creator, and once per actor via KEYS[6])
ARGV[13] actor          string   who triggered the action
ARGV[14] likers_ttl     int      seconds the once-per-actor record lives after its last write
ARGV[15] may_create     "0"|"1"  "1": a missing user is new; "0": a missing user must be hydrated first
ARGV[16] target         string   "<type>:<id>" or ""
ARGV[17] idem_key       string   the Idempotency-Key, recorded on the event

Reply: {code, exp_added, total_exp, level, previous_level, daily_exp_gained, action_count, seq, replayed}
  code 1 awarded             possibly partial
  code 2 limit_reached       the action's daily limit
  code 3 cap_reached         the level's daily EXP cap
  code 4 already_triggered   this actor already did it (creator_once)
  code 5 not_owner           the cached owner is stale
  code 6 needs_hydration
  code 7 key_reused          idempotency key reused with a different request
]]

local user_id, action = ARGV[1], ARGV[2]
local reward, daily_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local day, day_ttl, now_ms = ARGV[7], ARGV[8], ARGV[9]
local fingerprint, idem_ttl = ARGV[10], ARGV[11]
local mode, actor, likers_ttl = ARGV[12], ARGV[13], ARGV[14]
local may_create, target, idem_key = ARGV[15], ARGV[16], ARGV[17]

local replayed = Idempotency.replay(KEYS[4], fingerprint, 9, {7, 0, 0, 0, 0, 0, 0, 0, 0})
if replayed then return replayed end

-- Every script that writes the user hash writes its seq, so no seq means no user (one read
-- instead of an EXISTS and then the HMGET).
local user = redis.call('HMGET', KEYS[1], 'exp', 'seq')
if not user[2] and may_create ~= '1' then
  return {6, 0, 0, 0, 0, 0, 0, 0, 0}
end
if mode == 'actor_owns' then
  redis.call('SET', KEYS[5], '1')
elseif mode ~= 'actor' and redis.call('EXISTS', KEYS[5]) == 0 then
  return {5, 0, 0, 0, 0, 0, 0, 0, 0}
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
  return Idempotency.remember(KEYS[4], fingerprint, idem_ttl, reply)
end

if mode == 'creator_once' and redis.call('SISMEMBER', KEYS[6], actor) == 1 then
  return finish({4, 0, total, level, level, gained, count, seq, 0})
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
if not day_state[1] then  -- the day's first award creates the hash: its clean-up time, once
  redis.call('EXPIRE', KEYS[2], day_ttl)
end
if mode == 'creator_once' then
  redis.call('SADD', KEYS[6], actor)
  redis.call('EXPIRE', KEYS[6], likers_ttl)
end
redis.call('XADD', KEYS[3], '*',
  'event_id', user_id .. ':' .. seq, 'user', user_id, 'seq', seq, 'ts', now_ms,
  'kind', 'exp_award', 'action', action, 'amount', added, 'actor', actor, 'target', target,
  'day', day, 'idem', idem_key, 'exp', total, 'level', new_level)
return finish({1, added, total, new_level, level, gained, count, seq, 0})
