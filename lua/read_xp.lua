-- requires: xp_state
--[[ read_xp: a user's XP state, after the transitions that came due (renewals, expiries).

Those transitions are written (each one an event); the read itself records nothing.

KEYS[1]  user    HASH   ctr:{bN}:user:<uid>   xp (JSON state), seq
KEYS[2]  events  STREAM ctr:{bN}:events
KEYS[3]  idem    STRING an unused key (reads are not idempotent writes)
KEYS[4]  meta    HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)

ARGV[1..8]  user_id, now_ms, fingerprint (""), idem_ttl, idem_key (""), actor, may_create, rules
            (see lua/lib/xp_state.lua)

Reply: {code, 0, "", 0, 0, seq, 0, state json}
  code 1 done               read
  code 6 needs_hydration
]]

local early = XP.open()
if early then return early end
return XP.finish(1, 0, '', 0, 0)
