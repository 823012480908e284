-- requires: xp_state
--[[ refund_xp: a failed generation's XP comes back, once.

Refunds a debit or a captured hold. Each part returns to the credit it was burned from; a part
whose credit has expired since (an earlier period's allocation, an expired top-up) is lost.

KEYS[1]  user         HASH   ctr:{bN}:user:<uid>                xp (JSON state), seq
KEYS[2]  events       STREAM ctr:{bN}:events
KEYS[3]  idem         STRING ctr:{bN}:idem:<caller>:<key>       (or an unused key)
KEYS[4]  meta         HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)
KEYS[5]  transaction  STRING ctr:{bN}:xptx:<uid>:<txid>         the debit or hold record

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  transaction_id  string

Reply: {code, xp returned, transaction id, 0, xp the transaction took, seq, replayed, state json}
  code 1 done               refunded
  code 4 not_found          no such transaction
  code 5 already_settled    already refunded
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 10 not_captured      a hold that was not captured (open, released or expired)
]]

local transaction_id = ARGV[9]

local early = XP.open()
if early then return early end
local record = XP.read_record(KEYS[5])
if not record then return XP.finish(4, 0, transaction_id, 0, 0) end
if record.status == 'refunded' then return XP.finish(5, 0, transaction_id, 0, record.xp) end
if record.status ~= 'debited' and record.status ~= 'captured' then
  return XP.finish(10, 0, transaction_id, 0, record.xp)
end

local back = XP.restore(record.parts, XP.c.now)
record.status = 'refunded'
XP.emit('xp_refund', record.generation_type, back, transaction_id)
XP.save_record(KEYS[5], record) -- after its event (see debit_xp.lua)
return XP.finish(1, back, transaction_id, 0, record.xp)
