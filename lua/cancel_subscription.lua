-- requires: xp_state
--[[ cancel_subscription: end the subscription at the end of its current period.

At that renewal the tier ends and the unused allocation expires (see XP.renew). A pending
downgrade is dropped. PUT of the current tier before then resumes it.

KEYS[1]  user    HASH   ctr:{bN}:user:<uid>            xp (JSON state), seq
KEYS[2]  events  STREAM ctr:{bN}:events
KEYS[3]  idem    STRING ctr:{bN}:idem:<caller>:<key>   (or an unused key)
KEYS[4]  meta    HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)

Reply: {code, 0, "cancel_scheduled" | "", period_end (when it ends), 0, seq, replayed, state json}
  code 1 done               cancellation scheduled
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 11 no_subscription
  code 12 unchanged         already cancelled at period end
]]

local early = XP.open()
if early then return early end
local s = XP.s
if s.tier == nil then return XP.finish(11, 0, '', 0, 0) end
if s.cancel_at_period_end then return XP.finish(12, 0, '', s.period_end, 0) end
s.cancel_at_period_end, s.next_tier = true, nil
XP.emit('xp_subscription', 'cancel_scheduled', 0, '')
return XP.finish(1, 0, 'cancel_scheduled', s.period_end, 0)
