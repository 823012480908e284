-- requires: xp_state
--[[ set_subscription: start a subscription, or change its tier.

No tier yet: the subscription starts (anchored at period_start, or now), and the period holding
now is granted its tier's allocation. An upgrade applies at once and raises this period's
allocation by the difference of the tiers' monthly XP (XP already used stays used). A downgrade
applies at the next renewal. The current tier again clears a pending downgrade or cancellation.

KEYS[1]  user    HASH   ctr:{bN}:user:<uid>            xp (JSON state), seq
KEYS[2]  events  STREAM ctr:{bN}:events
KEYS[3]  idem    STRING ctr:{bN}:idem:<caller>:<key>   (or an unused key)
KEYS[4]  meta    HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  tier          string  a tier of the rules
ARGV[10] period_start  int     unix seconds <= now: the subscription's start (anniversary);
                               0 = now for a new subscription, the current one otherwise

Reply: {code, allocation added, change, period_end, 0, seq, replayed, state json}
  change: "subscribe" | "upgrade" | "downgrade_scheduled" | "resume" | "" (unchanged)
  code 1 done               changed
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 12 unchanged
  code 14 period_start_conflict   period_start differs from the active subscription's
  code 16 total_limit             the allocation would take the balance past the maximum
]]

local tier_name, period_start = ARGV[9], tonumber(ARGV[10])

local early = XP.open()
if early then return early end
local s, now = XP.s, XP.c.now
local new = Rules.tier(tier_name)

if s.tier == nil then
  if new.monthly_xp - s.alloc > XP.room(s) then return XP.finish(16, 0, '', 0, 0) end
  local anchor = period_start > 0 and period_start or now
  local k = XP.period_of(anchor, now)
  s.tier, s.next_tier, s.cancel_at_period_end = tier_name, nil, false
  s.anchor, s.period_start, s.period_end = anchor, XP.add_months(anchor, k), XP.add_months(anchor, k + 1)
  XP.emit('xp_subscription', 'subscribe', 0, '')
  local before = s.alloc
  s.alloc = new.monthly_xp
  XP.emit('xp_allocation', 'period_start', s.alloc - before, '')
  return XP.finish(1, s.alloc - before, 'subscribe', s.period_end, 0)
end
if period_start > 0 and period_start ~= s.anchor then
  return XP.finish(14, 0, '', s.period_end, 0)
end

local current = Rules.tier(s.tier)
local level = current and current.level or 0
if new.level > level then
  local added = math.max(new.monthly_xp - (current and current.monthly_xp or 0), 0)
  if added > XP.room(s) then return XP.finish(16, 0, '', s.period_end, 0) end
  s.tier, s.next_tier, s.cancel_at_period_end = tier_name, nil, false
  XP.emit('xp_subscription', 'upgrade', 0, '')
  if added > 0 then
    s.alloc = s.alloc + added
    XP.emit('xp_allocation', 'upgrade', added, '')
  end
  return XP.finish(1, added, 'upgrade', s.period_end, 0)
end
if new.level < level then
  if s.next_tier == tier_name and not s.cancel_at_period_end then
    return XP.finish(12, 0, '', s.period_end, 0)
  end
  s.next_tier, s.cancel_at_period_end = tier_name, false
  XP.emit('xp_subscription', 'downgrade_scheduled', 0, '')
  return XP.finish(1, 0, 'downgrade_scheduled', s.period_end, 0)
end
if s.next_tier == nil and not s.cancel_at_period_end then
  return XP.finish(12, 0, '', s.period_end, 0)
end
s.next_tier, s.cancel_at_period_end = nil, false
XP.emit('xp_subscription', 'resume', 0, '')
return XP.finish(1, 0, 'resume', s.period_end, 0)
