-- requires: idempotency, rules, bucket, bounds
--[[ Award.apply(): award_exp.lua's whole body, shared with creator_award.lua (one script for a
creator award on one node). It reads KEYS[1..8] and ARGV[1..15] exactly as award_exp.lua's
header describes them, so a script that requires it must lay out those KEYS and ARGV first.
The levels and caps are the compiled rules' (lib rules: counters/rules/compiled.py) of the
version ARGV[5] names; a call naming another version is refused before anything is read.

Reply: award_exp.lua's (its codes are listed in the header of each script that requires this).
]]
local Award = {}
-- The key_reused reply, built once (a Redis Function's library runs once per load).
local KEY_REUSED = {7, 0, 0, 0, 0, 0, 0, 0, 0}

-- Remember the reply for the record KEYS[4] (with its ledger entry when a durable store keeps
-- records) and return it. A function of the library, not a closure made per call: each costs
-- Redis an allocation (issue #15); the ledger's table only for a record. The record's replayed
-- slot holds now_ms, when the answer was decided, so a replayed 429 counts its wait to the
-- midnight after that, not after the replay (reviewer helper-66); the reply returned holds 0.
local function finish(reply, fingerprint, idem_ttl, may_create, user_id, now_ms)
  if fingerprint == '' then return reply end
  reply[9] = tonumber(now_ms)
  Idempotency.remember(KEYS[4], fingerprint, idem_ttl, reply, may_create ~= '1'
    and {events = KEYS[3], meta = KEYS[8], scope = user_id, now_ms = now_ms} or nil)
  reply[9] = 0
  return reply
end

function Award.apply()
  local wrong_rules = Rules.check(ARGV[5])
  if wrong_rules then return wrong_rules end
  local user_id, action = ARGV[1], ARGV[2]
  local reward, daily_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
  local day, day_ttl, now_ms = ARGV[6], ARGV[7], ARGV[8]
  local fingerprint, idem_ttl, actor = ARGV[9], ARGV[10], ARGV[11]
  local may_create, target, idem_key = ARGV[12], ARGV[13], ARGV[14]
  local week_ttl = ARGV[15]
  local boards = week_ttl ~= '0'

  local replayed = Idempotency.replay(KEYS[4], fingerprint, 9, KEY_REUSED)
  if replayed then return replayed end

  -- Every script that writes the user hash writes its seq, so no seq means no user (one read
  -- instead of an EXISTS and then the HMGET).
  local user = redis.call('HMGET', KEYS[1], 'exp', 'seq')
  if not user[2] and not Bucket.may_create(KEYS[8], may_create) then
    return {6, 0, 0, 0, 0, 0, 0, 0, 0}
  end

  local total = tonumber(user[1]) or 0
  local seq = tonumber(user[2]) or 0
  local level = Rules.level(total)
  local action_field = 'a:' .. action
  local day_state = redis.call('HMGET', KEYS[2], 'exp', action_field)
  local gained = tonumber(day_state[1]) or 0
  local count = tonumber(day_state[2]) or 0

  if daily_limit > 0 and count >= daily_limit then
    return finish({2, 0, total, level, level, gained, count, seq, 0}, fingerprint, idem_ttl,
                  may_create, user_id, now_ms)
  end
  local cap = Rules.cap(level)
  if gained >= cap then
    return finish({3, 0, total, level, level, gained, count, seq, 0}, fingerprint, idem_ttl,
                  may_create, user_id, now_ms)
  end

  local added = math.min(reward, cap - gained)
  if total + added > Bounds.MAX then  -- lib/bounds: nothing written
    return finish({5, 0, total, level, level, gained, count, seq, 0}, fingerprint, idem_ttl,
                  may_create, user_id, now_ms)
  end
  total = total + added
  gained = gained + added
  count = count + 1
  seq = seq + 1
  local new_level = Rules.level(total)

  -- Numbers as text by %d (redis.call's own %.17g, table.concat's %.14g cost Redis 2-4 times
  -- the instructions: lib/xp_state.lua's jint), each formatted once for the writes and the event.
  local int = Entry.int -- small ones formatted once per library load (lib/entry.lua)
  local total_s, level_s, seq_s, added_s = int(total), int(new_level), int(seq), int(added)
  redis.call('HSET', KEYS[1], 'exp', total_s, 'level', level_s, 'seq', seq_s)
  redis.call('HSET', KEYS[2], 'exp', int(gained), action_field, int(count))
  if boards then
    redis.call('ZINCRBY', KEYS[5], added_s, user_id)
    redis.call('ZINCRBY', KEYS[6], added_s, user_id)
    redis.call('ZINCRBY', KEYS[7], added_s, user_id)
  end
  if not day_state[1] then  -- the day's first award creates the hash: its clean-up time, once
    redis.call('EXPIRE', KEYS[2], day_ttl)
    if boards then  -- shared by the bucket's users: each one's first award of a day renews them
      redis.call('EXPIRE', KEYS[5], day_ttl)
      redis.call('EXPIRE', KEYS[6], week_ttl)
    end
  end
  Entry.add_joined(KEYS[3], 'exp_award\31' .. user_id .. '\31' .. seq_s .. '\31' .. now_ms .. '\31'
    .. Bucket.run(KEYS[8]) .. '\31' .. action .. '\31' .. added_s .. '\31' .. actor .. '\31'
    .. target .. '\31' .. idem_key .. '\31' .. day .. '\31' .. total_s .. '\31' .. level_s)
  return finish({1, added, total, new_level, level, gained, count, seq, 0}, fingerprint, idem_ttl,
                may_create, user_id, now_ms)
end
