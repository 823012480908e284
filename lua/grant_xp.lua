-- requires: xp_state
--[[ grant_xp: a top-up: XP added to the balance, optionally expiring.

KEYS[1]  user    HASH   ctr:{bN}:user:<uid>            xp (JSON state), seq
KEYS[2]  events  STREAM ctr:{bN}:events
KEYS[3]  idem    STRING ctr:{bN}:idem:<caller>:<key>   (or an unused key)
KEYS[4]  meta    HASH   ctr:{bN}:meta          run, complete (lua/lib/bucket.lua)

ARGV[1..8]  user_id, now_ms, fingerprint, idem_ttl, idem_key, actor, may_create, rules
            (see lua/lib/xp_state.lua)
ARGV[9]  grant_id    string
ARGV[10] xp_amount   int     > 0
ARGV[11] expires_at  int     unix seconds, after now; 0 = never
ARGV[12] reason      string  recorded as the event's action
ARGV[13] max_grants  int     live top-ups a user may have

Reply: {code, xp granted, grant id, expires_at, 0, seq, replayed, state json}
  code 1 done               granted
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 13 too_many          too many live top-ups
  code 16 total_limit       the balance would pass the maximum (lib/bounds.lua)
]]

local grant_id, amount, expires_at = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local reason, max_grants = ARGV[12], tonumber(ARGV[13])

local early = XP.open()
if early then return early end
local s = XP.s
if #s.grants >= max_grants then return XP.finish(13, 0, '', expires_at, 0) end
if amount > XP.room(s) then return XP.finish(16, 0, '', expires_at, 0) end
s.grants[#s.grants + 1] = {id = grant_id, left = amount, expires_at = expires_at}
XP.emit('xp_grant', reason, amount, grant_id)
return XP.finish(1, amount, grant_id, expires_at, 0)
