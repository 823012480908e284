-- requires: xp_state
--[[ import_user: one line of `counters import`, applied at most once per user and import id.

Adopting the service: a user's EXP from the product's own table is added to what the service
counted (level derived), a subscription is started (unless one is active: left as is), or a
top-up is granted. The import id (derived from the line's content) is recorded in KEYS[5] in the
same step, so the same line applied twice changes nothing; the event carries it as `idem`, so
the ledger keeps it too (the command checks the ledger for lines Redis forgot).
Events: kind `exp_import` (EXP; fields exp, level) or `xp_import` (action `subscription` with the
allocation granted, or a top-up's reason with its grant id as the target, as grant_xp records
it), so reconcile counts them in their family's sums.

KEYS[1]  user     HASH   ctr:{bN}:user:<uid>            exp, level, xp (JSON state), seq
KEYS[2]  events   STREAM ctr:{bN}:events
KEYS[3]  idem     STRING ctr:{bN}:unused                 (no Idempotency-Key: fingerprint "")
KEYS[4]  meta     HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)
KEYS[5]  imports  SET    ctr:{bN}:imports:<uid>          import ids applied to the user

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua; idem_key is the import id, fingerprint "")
ARGV[9]  op          string  "exp" | "subscription" | "topup"
ARGV[10] amount      int     EXP to add (exp), XP of the top-up (topup), 0 (subscription)
ARGV[11] tier        string  a tier of the rules (subscription) or ""
ARGV[12] at          int     unix seconds: period_start (subscription; 0 = now), expires_at
                             (topup; 0 = never), 0 (exp)
ARGV[13] max_grants  int     live top-ups a user may have
ARGV[14] reason      string  the top-up's reason, the event's action as a grant's (topup), ""

Reply: {code, amount applied, import id, expires_at or period_end, 0, seq, replayed, state json}
  code 1 done                  applied
  code 6 needs_hydration
  code 12 unchanged            already imported
  code 13 too_many             too many live top-ups
  code 15 subscription_active  a subscription is active: left as is
  code 16 total_limit          the total or balance would pass the maximum (lib/bounds.lua)
]]

local op, amount, tier_name, at = ARGV[9], tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12])
local max_grants, reason = tonumber(ARGV[13]), ARGV[14]

local early = XP.open()
if early then return early end
local c, s = XP.c, XP.s
local import_id = c.idem_key
if redis.call('SISMEMBER', KEYS[5], import_id) == 1 then
  return XP.finish(12, 0, import_id, 0, 0)
end

if op == 'exp' then
  local total = (tonumber(redis.call('HGET', c.user_key, 'exp')) or 0) + amount
  if total > Bounds.MAX then return XP.finish(16, 0, import_id, 0, 0) end
  local level = Rules.level(total)
  -- EXP only: the XP state is not written (c.dirty stays as XP.open left it), as award_exp
  -- leaves it: the event carries no xp_state, so a state written here would exist in Redis
  -- and never in Postgres (reconcile drift for every EXP-only imported user).
  c.seq = c.seq + 1
  redis.call('HSET', c.user_key, 'exp', total, 'level', level, 'seq', c.seq)
  Entry.add(c.events, {'exp_import', c.user_id, c.seq, c.now_ms, Bucket.run(c.meta), 'import',
    amount, c.actor, '', import_id, total, level})
  redis.call('SADD', KEYS[5], import_id)
  return XP.finish(1, amount, import_id, 0, 0)
end

if op == 'subscription' then
  if s.tier ~= nil then return XP.finish(15, 0, import_id, s.period_end, 0) end
  if Rules.tier(tier_name).monthly_xp - s.alloc > XP.room(s) then
    return XP.finish(16, 0, import_id, 0, 0)
  end
  local anchor = at > 0 and at or c.now
  local k = XP.period_of(anchor, c.now)
  s.tier, s.next_tier, s.cancel_at_period_end = tier_name, nil, false
  s.anchor, s.period_start, s.period_end = anchor, XP.add_months(anchor, k), XP.add_months(anchor, k + 1)
  local monthly_xp = Rules.tier(tier_name).monthly_xp
  local added = monthly_xp - s.alloc
  s.alloc = monthly_xp
  XP.emit('xp_import', 'subscription', added, tier_name)
  redis.call('SADD', KEYS[5], import_id)
  return XP.finish(1, added, import_id, s.period_end, 0)
end

-- op == 'topup'
if #s.grants >= max_grants then return XP.finish(13, 0, import_id, at, 0) end
if amount > XP.room(s) then return XP.finish(16, 0, import_id, at, 0) end
local grant_id = 'xg_' .. string.sub(import_id, 5)
s.grants[#s.grants + 1] = {id = grant_id, left = amount, expires_at = at}
XP.emit('xp_import', reason, amount, grant_id)
redis.call('SADD', KEYS[5], import_id)
return XP.finish(1, amount, import_id, at, 0)
