-- requires: xp_state
--[[ debit_xp: charge one generation's XP at once ("debit") or reserve it ("hold").

Every check runs before the first write: a refused debit or hold changes no XP. The cost is the
current tier's (after any renewal that came due); a tier that does not allow the type refuses.

KEYS[1]  user         HASH   ctr:{bN}:user:<uid>                xp (JSON state), seq
KEYS[2]  events       STREAM ctr:{bN}:events
KEYS[3]  idem         STRING ctr:{bN}:idem:<caller>:<key>       (or an unused key)
KEYS[4]  meta         HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)
KEYS[5]  transaction  STRING ctr:{bN}:xptx:<uid>:<txid>         the new debit or hold record

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  generation_type  string
ARGV[10] transaction_id   string  id of the new debit or hold
ARGV[11] mode             string  "debit" | "hold"
ARGV[12] hold_expires_at  int     unix seconds a hold returns to the balance by itself
ARGV[13] max_holds        int     open holds a user may have
ARGV[14] record_ttl       int     seconds the record (for capture and refund) is kept
The cost is the compiled rules' (Rules.cost: the tier's, nil when its gate refuses the type).

Reply: {code, xp taken, transaction id, hold expires_at (0 for a debit), cost, seq, replayed,
        state json}
  code 1 done               debited or held
  code 2 insufficient       insufficient XP (cost = what it needs)
  code 3 tier_required      the tier does not allow it
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 13 too_many          too many open holds
]]

local generation_type, transaction_id = ARGV[9], ARGV[10]
local mode, hold_expires_at = ARGV[11], tonumber(ARGV[12])
local max_holds, record_ttl = tonumber(ARGV[13]), ARGV[14]

local early = XP.open()
if early then return early end
local s = XP.s
local cost = s.tier and Rules.cost(generation_type, s.tier)
if not cost then return XP.finish(3, 0, '', 0, 0) end
if XP.balance(s) < cost then return XP.finish(2, 0, '', 0, cost) end
if mode == 'hold' and #s.holds >= max_holds then return XP.finish(13, 0, '', 0, cost) end

local parts = XP.burn(cost)
local status = mode == 'hold' and 'held' or 'debited'
-- The record after the event, on the stream too: a flusher's read that ends between them takes
-- the records that follow an event with it (persistence/flusher.py), never a record without
-- its event (a refund of a debit a Redis loss erased would create XP).
if mode == 'hold' then
  s.holds[#s.holds + 1] = {id = transaction_id, amount = cost, expires_at = hold_expires_at,
                           generation_type = generation_type, parts = parts}
  local state = XP.emit('xp_hold', generation_type, -cost, transaction_id)
  XP.save_record_text(KEYS[5], XP.record_text(mode, status, cost, generation_type, parts),
                     record_ttl)
  return XP.finish(1, cost, transaction_id, hold_expires_at, cost, state)
end
local state = XP.emit('xp_debit', generation_type, -cost, transaction_id)
XP.save_record_text(KEYS[5], XP.record_text(mode, status, cost, generation_type, parts),
                   record_ttl)
return XP.finish(1, cost, transaction_id, 0, cost, state)
