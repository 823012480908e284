-- requires: xp_state
--[[ release_hold: give up an open hold; all of its XP returns to the balance.

KEYS[1]  user         HASH   ctr:{bN}:user:<uid>                xp (JSON state), seq
KEYS[2]  events       STREAM ctr:{bN}:events
KEYS[3]  idem         STRING ctr:{bN}:idem:<caller>:<key>       (or an unused key)
KEYS[4]  meta         HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)
KEYS[5]  transaction  STRING ctr:{bN}:xptx:<uid>:<hold_id>      the hold's record

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  hold_id  string

Reply: {code, xp returned, hold id, hold expires_at, xp that was held, seq, replayed, state json}
  code 1 done               released
  code 4 not_found          no such hold
  code 5 already_settled    already captured or released
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 8 hold_expired       the hold expired (its XP already went back)
]]

local hold_id = ARGV[9]

local early = XP.open()
if early then return early end
local s = XP.s
local index = nil
for i, h in ipairs(s.holds) do
  if h.id == hold_id then index = i end
end
if not index then return XP.finish(XP.closed_hold_code(KEYS[5]), 0, hold_id, 0, 0) end

local hold = table.remove(s.holds, index)
local back = XP.restore(hold.parts, XP.c.now)
local record = {kind = 'hold', status = 'released', xp = hold.amount,
                generation_type = hold.generation_type, parts = hold.parts}
XP.emit('xp_release', hold.generation_type, back, hold_id)
XP.save_record(KEYS[5], record) -- after its event (see debit_xp.lua)
return XP.finish(1, back, hold_id, hold.expires_at, hold.amount)
