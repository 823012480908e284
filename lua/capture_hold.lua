-- requires: xp_state
--[[ capture_hold: take all or part of an open hold; the rest returns to the balance.

KEYS[1]  user         HASH   ctr:{bN}:user:<uid>                xp (JSON state), seq
KEYS[2]  events       STREAM ctr:{bN}:events
KEYS[3]  idem         STRING ctr:{bN}:idem:<caller>:<key>       (or an unused key)
KEYS[4]  meta         HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)
KEYS[5]  transaction  STRING ctr:{bN}:xptx:<uid>:<hold_id>      the hold's record

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  hold_id     string
ARGV[10] xp_amount   int     XP to capture; 0 = all of it
ARGV[11] record_ttl  int     seconds the record (now the refundable capture) is kept

Reply: {code, xp captured, hold id, hold expires_at, xp released (code 9: xp held), seq,
        replayed, state json}
  code 1 done               captured
  code 4 not_found          no such hold
  code 5 already_settled    already captured or released
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 8 hold_expired       the hold expired (its XP went back)
  code 9 above_held         more than is held
]]

local hold_id, amount, record_ttl = ARGV[9], tonumber(ARGV[10]), ARGV[11]

local early = XP.open()
if early then return early end
local s = XP.s
local index = nil
for i, h in ipairs(s.holds) do
  if h.id == hold_id then index = i end
end
if not index then return XP.finish(XP.closed_hold_code(KEYS[5]), 0, hold_id, 0, 0) end
local hold = s.holds[index]
if amount > hold.amount then return XP.finish(9, 0, hold_id, hold.expires_at, hold.amount) end
if amount == 0 then amount = hold.amount end

table.remove(s.holds, index)
local taken, rest = XP.split(hold.parts, amount)
local back = XP.restore(rest, XP.c.now)
local record = {kind = 'hold', status = 'captured', xp = amount,
                generation_type = hold.generation_type, parts = taken}
XP.emit('xp_capture', hold.generation_type, back, hold_id, nil, {'xp_captured', amount})
XP.save_record(KEYS[5], record, record_ttl) -- after its event (see debit_xp.lua)
return XP.finish(1, amount, hold_id, hold.expires_at, back)
