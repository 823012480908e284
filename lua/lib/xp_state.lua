-- requires: idempotency, bucket, rules, bounds
--[[ lib/xp_state: the XP state of one user, shared by every XP script.

Defined with each script whose first line is `-- requires: xp_state` (counters/redis/scripts.py:
once per function library on Redis >= 7, before the script's text under EVALSHA). It
binds the KEYS and ARGV every XP script shares, replays idempotent requests, loads the state,
applies the transitions that came due since the user's last touch (each one an event), and
writes the state and the fixed-shape reply back.

Shared KEYS and ARGV (each script's header lists them again, with its own after them):
KEYS[1]  user     HASH   ctr:{bN}:user:<uid>             xp (the state below, JSON), seq
KEYS[2]  events   STREAM ctr:{bN}:events                 ledger events of the bucket
KEYS[3]  idem     STRING ctr:{bN}:idem:<caller>:<key>    "<fingerprint>|<reply json>" (or unused)
KEYS[4]  meta     HASH   ctr:{bN}:meta                   run, complete (lua/lib/bucket.lua)
ARGV[1]  user_id      string
ARGV[2]  now_ms       int      unix milliseconds from the service clock (never Redis TIME)
ARGV[3]  fingerprint  string   request fingerprint; "" = not idempotent
ARGV[4]  idem_ttl     int      seconds an idempotency record lives
ARGV[5]  idem_key     string   the Idempotency-Key, recorded on events
ARGV[6]  actor        string   who asked, recorded on events
ARGV[7]  may_create   "0"|"1"|"2"  "1": a missing user is new; "0": new only in a complete
                               bucket (KEYS[4] complete), else hydrated first; "2": always
                               hydrated first (Redis may evict keys: lua/lib/bucket.lua)
ARGV[8]  rules        string   the rules version the call was built with; the tiers (level,
                               monthly_xp, rollover) are compiled into the script (lib rules:
                               counters/rules/compiled.py) and another version is refused

State (times in unix seconds; expires_at null = never):
  {"tier": name|null, "anchor": subscription start, "period_start", "period_end",
   "alloc": allocation left, "epoch": bumped whenever the allocation expires,
   "next_tier": tier from the next renewal (a downgrade)|null, "cancel_at_period_end": bool,
   "grants": [{"id", "left", "expires_at"}],
   "holds": [{"id", "amount", "expires_at", "generation_type", "parts": [part, ...]}]}
  part: {"src": "alloc", "xp", "epoch"} | {"src": "grant", "xp", "id", "expires_at"}
  The balance is alloc + the grants' left; held XP is not in it. Periods follow the anchor's
  anniversary by calendar month (Jan 31 -> Feb 28 -> Mar 31).

Reply of every XP script: {code, amount, ref, expires_at, extra, seq, replayed, state json}
  code 1 done
  code 2 insufficient            too little XP
  code 3 tier_required
  code 4 not_found
  code 5 already_settled
  code 6 needs_hydration
  code 7 key_reused         idempotency key reused with a different request
  code 8 hold_expired
  code 9 above_held              more than the held amount
  code 10 not_captured
  code 11 no_subscription
  code 12 unchanged
  code 13 too_many               too many active grants or holds
  code 14 period_start_conflict  period_start differs from the subscription's
  code 16 total_limit            the balance and held XP would pass the maximum (lib/bounds.lua)
]]

local XP = {}
local NEVER = 0 -- expires_at of a grant that never expires
-- The key_reused reply, built once (a Redis Function's library runs once per load): a table
-- built per call only to be passed along costs Redis an allocation (issue #15).
local KEY_REUSED = {7, 0, '', 0, 0, 0, 0, ''}

local function num(v)
  if v == nil or v == cjson.null then return 0 end
  return tonumber(v)
end

local function opt(v)
  if v == nil or v == cjson.null then return nil end
  return v
end

local function fdiv(a, b) return math.floor(a / b) end

-- Civil-date arithmetic (proleptic Gregorian, H. Hinnant's days_from_civil / civil_from_days).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = fdiv(y, 400)
  local yoe = y - era * 400
  local doy = fdiv(153 * ((m + 9) % 12) + 2, 5) + d - 1
  local doe = yoe * 365 + fdiv(yoe, 4) - fdiv(yoe, 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = fdiv(z, 146097)
  local doe = z - era * 146097
  local yoe = fdiv(doe - fdiv(doe, 1460) + fdiv(doe, 36524) - fdiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + fdiv(yoe, 4) - fdiv(yoe, 100))
  local mp = fdiv(5 * doy + 2, 153)
  local d = doy - fdiv(153 * mp + 2, 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_in_month(y, m)
  if m == 2 then
    if (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 then return 29 end
    return 28
  end
  if m == 4 or m == 6 or m == 9 or m == 11 then return 30 end
  return 31
end

-- ts plus k calendar months, the day of month clamped to the target month's length.
function XP.add_months(ts, k)
  local days = fdiv(ts, 86400)
  local secs = ts - days * 86400
  local y, m, d = civil_from_days(days)
  local m0 = m - 1 + k
  y = y + fdiv(m0, 12)
  m = m0 % 12 + 1
  return days_from_civil(y, m, math.min(d, days_in_month(y, m))) * 86400 + secs
end

-- The k with add_months(anchor, k) <= ts < add_months(anchor, k + 1).
function XP.period_of(anchor, ts)
  local k = math.max(fdiv(ts - anchor, 31 * 86400), 0) -- no month is longer: a lower bound
  while XP.add_months(anchor, k + 1) <= ts do k = k + 1 end
  return k
end

-- Encoding by hand keeps empty lists as [] (cjson writes {}) and the key order fixed. Numbers
-- go through string.format('%d'), several to a format where they follow each other: Lua's own
-- number-to-text (tostring, `..`, table.concat: %.14g) and redis.call's (%.17g) cost Redis
-- 2-4 times as many instructions a number (issue #15, bench.instructions --redis).
-- Small integers are formatted once per library load (lib/entry.lua's Entry.int), looked up
-- when called: this library is also defined alone (tests/xp/test_xp_lua.py).
local function jint(n) return Entry.int(n) end
local function jstr(v)
  if v == nil then return 'null' end
  return cjson.encode(v)
end
-- A name of a closed set (a tier, a generation type, a record's kind or status) as JSON,
-- encoded once per library load (a Redis Function's library runs once) and then looked up;
-- at most 256 kept, whatever a caller sends. Ids, which are not a closed set, go through jstr.
local NAMES, named = {}, 0
local function jname(v)
  if v == nil then return 'null' end
  local text = NAMES[v]
  if text then return text end
  text = cjson.encode(v)
  if named < 256 then
    NAMES[v], named = text, named + 1
  end
  return text
end

-- `,"expires_at":...}` closing a grant or a grant part.
local function jexpires(n)
  if n == NEVER then return ',"expires_at":null}' end
  return string.format(',"expires_at":%d}', n)
end

-- Lists are joined as they are built (a state holds a few entries): no table per list.
function XP.encode_parts(parts)
  local out, sep = '[', ''
  for _, p in ipairs(parts) do
    if p.src == 'alloc' then
      out = out .. sep .. '{"src":"alloc","xp":' .. jint(p.xp) .. ',"epoch":' .. jint(p.epoch) .. '}'
    else
      out = out .. sep .. '{"src":"grant","xp":' .. jint(p.xp) .. ',"id":' .. jstr(p.id)
        .. jexpires(p.expires_at)
    end
    sep = ','
  end
  return out .. ']'
end

function XP.decode_parts(raw)
  local parts = {}
  for i, p in ipairs(raw or {}) do
    parts[i] = {src = p.src, xp = num(p.xp), epoch = num(p.epoch), id = opt(p.id),
                expires_at = num(p.expires_at)}
  end
  return parts
end

function XP.encode(s)
  local grants, holds, sep = '', '', ''
  for _, g in ipairs(s.grants) do
    grants = grants .. sep .. '{"id":' .. jstr(g.id) .. string.format(',"left":%d', g.left)
      .. jexpires(g.expires_at)
    sep = ','
  end
  sep = ''
  for _, h in ipairs(s.holds) do
    holds = holds .. sep .. '{"id":' .. jstr(h.id)
      .. string.format(',"amount":%d,"expires_at":%d,"generation_type":', h.amount, h.expires_at)
      .. jname(h.generation_type) .. ',"parts":' .. XP.encode_parts(h.parts) .. '}'
    sep = ','
  end
  return '{"tier":' .. jname(s.tier)
    .. string.format(',"anchor":%d,"period_start":%d,"period_end":%d,"alloc":%d,"epoch":%d',
                     s.anchor, s.period_start, s.period_end, s.alloc, s.epoch)
    .. ',"next_tier":' .. jname(s.next_tier)
    .. ',"cancel_at_period_end":' .. tostring(s.cancel_at_period_end) .. ',"grants":['
    .. grants .. '],"holds":[' .. holds .. ']}'
end

-- The stored state, normalized where cjson decoded it (nulls and missing numbers as 0, a null
-- tier as nil) instead of copied into new tables: a debit's decode cost Redis ~30% less so
-- (issue #15, bench/lua_cost.py). The stored form is unchanged: the JSON the event carries.
function XP.decode(text)
  if not text then
    return {tier = nil, anchor = 0, period_start = 0, period_end = 0, alloc = 0, epoch = 0,
            next_tier = nil, cancel_at_period_end = false, grants = {}, holds = {}}
  end
  local s = cjson.decode(text)
  s.tier, s.next_tier = opt(s.tier), opt(s.next_tier)
  s.anchor, s.period_start, s.period_end = num(s.anchor), num(s.period_start), num(s.period_end)
  s.alloc, s.epoch = num(s.alloc), num(s.epoch)
  s.cancel_at_period_end = s.cancel_at_period_end == true
  local grants, holds = opt(s.grants) or {}, opt(s.holds) or {}
  s.grants, s.holds = grants, holds
  for _, g in ipairs(grants) do
    g.left, g.expires_at = num(g.left), num(g.expires_at)
  end
  for _, h in ipairs(holds) do
    h.amount, h.expires_at = num(h.amount), num(h.expires_at)
    h.parts = XP.decode_parts(opt(h.parts))
  end
  return s
end

-- A debit or hold record (KEYS[5] of the scripts that take one): what it burned, its status.
function XP.record_text(kind, status, xp, generation_type, parts)
  return '{"kind":' .. jname(kind) .. ',"status":' .. jname(status) .. ',"xp":' .. jint(xp)
    .. ',"generation_type":' .. jname(generation_type) .. ',"parts":'
    .. XP.encode_parts(parts) .. '}'
end

function XP.encode_record(r)
  return XP.record_text(r.kind, r.status, r.xp, r.generation_type, r.parts)
end

-- The bucket's run (lib/bucket.lua), read once per call however many entries it ledgers.
local function run_of(c)
  local run = c.run
  if not run then
    run = Bucket.run(c.meta)
    c.run = run
  end
  return run
end

-- Write a debit or hold record's text (XP.record_text) for `ttl` seconds (nil: keep its TTL)
-- and ledger it (lib/records.lua), so a refund or capture after a Redis loss still finds it.
-- Its expiry by the service clock: now_ms + the TTL just set (Redis's clock does not move
-- within a script), PTTL only for a kept TTL.
function XP.save_record_text(key, text, ttl)
  if ttl then
    redis.call('SET', key, text, 'EX', ttl)
  else
    redis.call('SET', key, text, 'KEEPTTL')
  end
  local c = XP.c
  if c.may_create == '1' then return end -- no durable store: nothing to ledger
  local left_ms
  if ttl then left_ms = tonumber(ttl) * 1000 else left_ms = redis.call('PTTL', key) end
  Records.ledger(c.events, c.meta, c.user_id, key, text, tonumber(c.now_ms) + left_ms, run_of(c))
end

function XP.save_record(key, record, ttl)
  XP.save_record_text(key, XP.encode_record(record), ttl)
end

function XP.read_record(key)
  local text = redis.call('GET', key)
  if not text then return nil end
  local raw = cjson.decode(text)
  return {kind = raw.kind, status = raw.status, xp = num(raw.xp),
          generation_type = raw.generation_type, parts = XP.decode_parts(raw.parts)}
end

function XP.topup(s)
  local total = 0
  for _, g in ipairs(s.grants) do total = total + g.left end
  return total
end

function XP.held(s)
  local total = 0
  for _, h in ipairs(s.holds) do total = total + h.amount end
  return total
end

function XP.balance(s) return s.alloc + XP.topup(s) end

-- XP that may still be added: the balance and the held XP stay within lib/bounds' MAX, so what a
-- release or an expired hold returns stays within it too.
function XP.room(s) return Bounds.MAX - XP.balance(s) - XP.held(s) end

-- One ledger event. `at` (unix s) marks a transition that came due then: its actor is "system".
-- Returns the state as the event carries it (XP.encode), for an XP.finish that follows at once.
function XP.emit(kind, action, amount, target, at, extra)
  local c, s = XP.c, XP.s
  local state = XP.encode(s)
  c.seq = c.seq + 1
  c.dirty = true
  local topup = XP.topup(s)
  -- persistence/events.py LAYOUTS: the common fields, the kind's own, `extra`'s values
  -- ({name, value, ...}, in layout order), the state last; joined here (Entry.add_joined),
  -- every number by %d (amount 0 is never "-0").
  local tail = ''
  if extra then
    for i = 2, #extra, 2 do
      local v = extra[i]
      if type(v) == 'number' then v = jint(v) end
      tail = tail .. v .. '\31'
    end
  end
  Entry.add_joined(c.events, kind .. '\31' .. c.user_id .. '\31' .. jint(c.seq) .. '\31'
    .. c.now_ms .. '\31' .. run_of(c) .. '\31' .. action .. '\31' .. jint(amount) .. '\31'
    .. (at and 'system' or c.actor) .. '\31' .. target .. '\31' .. (at and '' or c.idem_key)
    .. '\31' .. (at and jint(at * 1000) or c.now_ms) .. '\31'
    .. string.format('%d\31%d\31%d\31%d\31', s.alloc + topup, s.alloc, topup, XP.held(s))
    .. (s.tier or '') .. '\31' .. tail .. state)
  return state
end

-- Put burned parts back where they came from; a part whose source expired by `at` is lost.
function XP.restore(parts, at)
  local s = XP.s
  local back = 0
  for _, p in ipairs(parts) do
    if p.src == 'alloc' then
      if s.tier and p.epoch == s.epoch then
        s.alloc = s.alloc + p.xp
        back = back + p.xp
      end
    elseif p.expires_at == NEVER or p.expires_at > at then
      local found = nil
      for _, g in ipairs(s.grants) do
        if g.id == p.id then found = g end
      end
      if found then
        found.left = found.left + p.xp
      else
        s.grants[#s.grants + 1] = {id = p.id, left = p.xp, expires_at = p.expires_at}
      end
      back = back + p.xp
    end
  end
  return back
end

-- Burn `amount` (<= the balance), soonest-expiring credit first; never-expiring credit last
-- (ties: the allocation, then the grants in their order). The next source is picked among
-- those with credit left each time (one taken from is then empty, or the amount is burned):
-- no table per source and no sort closure, each of which costs Redis an allocation per call
-- (issue #15: ~2,000 instructions a table, `python -m bench.lua_cost defs`).
local function expiry_key(at) if at == NEVER then return math.huge end return at end

function XP.burn(amount)
  local s = XP.s
  local grants = s.grants
  local alloc_at = s.period_end
  if Rules.rollover(s.tier) and not s.cancel_at_period_end then alloc_at = NEVER end
  local parts = {}
  while amount > 0 do
    local best, best_at = nil, nil -- best: 0 for the allocation, else the grant's index
    if s.alloc > 0 then best, best_at = 0, expiry_key(alloc_at) end
    for i, g in ipairs(grants) do
      if g.left > 0 then
        local at = expiry_key(g.expires_at)
        if best == nil or at < best_at then best, best_at = i, at end
      end
    end
    if best == nil then break end
    if best == 0 then
      local take = math.min(amount, s.alloc)
      amount, s.alloc = amount - take, s.alloc - take
      parts[#parts + 1] = {src = 'alloc', xp = take, epoch = s.epoch}
    else
      local g = grants[best]
      local take = math.min(amount, g.left)
      amount, g.left = amount - take, g.left - take
      parts[#parts + 1] = {src = 'grant', xp = take, id = g.id, expires_at = g.expires_at}
    end
  end
  for _, g in ipairs(grants) do
    if g.left <= 0 then -- a grant burned to nothing (or stored so) leaves the state
      local kept = {}
      for _, k in ipairs(grants) do
        if k.left > 0 then kept[#kept + 1] = k end
      end
      s.grants = kept
      break
    end
  end
  return parts
end

-- The first `amount` XP of parts, and the rest.
function XP.split(parts, amount)
  local taken, rest = {}, {}
  for _, p in ipairs(parts) do
    local take = math.min(p.xp, amount)
    amount = amount - take
    if take > 0 then
      taken[#taken + 1] = {src = p.src, xp = take, epoch = p.epoch, id = p.id, expires_at = p.expires_at}
    end
    if p.xp > take then
      rest[#rest + 1] = {src = p.src, xp = p.xp - take, epoch = p.epoch, id = p.id,
                         expires_at = p.expires_at}
    end
  end
  return taken, rest
end

-- The period that ended at period_end gives way to the next (or the subscription ends).
function XP.renew()
  local s = XP.s
  local at = s.period_end
  local old = Rules.tier(s.tier)
  local before = s.alloc
  if s.cancel_at_period_end or old == nil then
    s.alloc, s.epoch = 0, s.epoch + 1
    s.tier, s.next_tier, s.cancel_at_period_end = nil, nil, false
    s.anchor, s.period_start, s.period_end = 0, 0, 0
    if before > 0 then XP.emit('xp_allocation', 'expired', -before, '', at) end
    XP.emit('xp_subscription', 'ended', 0, '', at)
    return
  end
  local carried = 0
  if old.rollover then carried = before else s.epoch = s.epoch + 1 end
  if s.next_tier and Rules.tier(s.next_tier) then
    s.tier, s.next_tier = s.next_tier, nil
    XP.emit('xp_subscription', 'downgrade', 0, '', at)
  end
  s.next_tier = nil
  s.period_start = at
  s.period_end = XP.add_months(s.anchor, XP.period_of(s.anchor, at) + 1)
  s.alloc = carried + Rules.tier(s.tier).monthly_xp
  local over = -XP.room(s)  -- past lib/bounds' MAX: that much is not allocated
  if over > 0 then s.alloc = math.max(s.alloc - over, 0) end
  XP.emit('xp_allocation', 'renewal', s.alloc - before, '', at)
end

-- Every transition due by `now`, oldest first (at one instant: holds, then grants, then renewal).
function XP.advance(now)
  local s = XP.s
  while true do
    local at, kind, index = nil, nil, nil
    for i, h in ipairs(s.holds) do
      if h.expires_at <= now and (at == nil or h.expires_at < at) then
        at, kind, index = h.expires_at, 'hold', i
      end
    end
    for i, g in ipairs(s.grants) do
      if g.expires_at ~= NEVER and g.expires_at <= now and (at == nil or g.expires_at < at) then
        at, kind, index = g.expires_at, 'grant', i
      end
    end
    if s.tier and s.period_end <= now and (at == nil or s.period_end < at) then
      at, kind = s.period_end, 'renew'
    end
    if at == nil then return end
    if kind == 'hold' then
      local hold = table.remove(s.holds, index)
      local back = XP.restore(hold.parts, at)
      XP.emit('xp_hold_expired', hold.generation_type, back, hold.id, at)
    elseif kind == 'grant' then
      local grant = table.remove(s.grants, index)
      XP.emit('xp_grant_expired', 'expired', -grant.left, grant.id, at)
    else
      XP.renew()
    end
  end
end

-- Bind the shared KEYS/ARGV, answer a replay or a missing user, load and advance the state.
-- Returns a reply to return at once, or nil to go on with XP.s.
function XP.open()
  -- Every field the call sets is in the constructor (now, seq, dirty, run too), so the table is
  -- sized once: one more field would cost Redis a rehash of the table.
  local c = {user_key = KEYS[1], events = KEYS[2], idem = KEYS[3], meta = KEYS[4], user_id = ARGV[1],
             now_ms = ARGV[2], fingerprint = ARGV[3], idem_ttl = ARGV[4], idem_key = ARGV[5],
             actor = ARGV[6], may_create = ARGV[7], now = fdiv(tonumber(ARGV[2]), 1000), seq = 0,
             dirty = false, run = false}
  XP.c = c
  local wrong_rules = Rules.check(ARGV[8])
  if wrong_rules then return wrong_rules end
  local replayed = Idempotency.replay(c.idem, c.fingerprint, 7, KEY_REUSED)
  if replayed then return replayed end
  -- Every script that writes the user hash writes its seq, so no seq means no user (one read
  -- instead of an EXISTS and then the HMGET, as lib/award.lua)
  local user = redis.call('HMGET', c.user_key, 'xp', 'seq')
  if not user[2] and not Bucket.may_create(c.meta, c.may_create) then
    return {6, 0, '', 0, 0, 0, 0, ''}
  end
  c.seq = tonumber(user[2]) or 0
  c.dirty = false
  XP.s = XP.decode(user[1])
  XP.advance(c.now)
  return nil
end

-- Write the state back if anything changed, remember the reply for replays, and return it.
-- `encoded`: the state as the last XP.emit returned it, when nothing changed since (encoding
-- it costs Redis ~6 us: a debit's state is encoded once, not twice); nil encodes it here.
function XP.finish(code, amount, ref, expires_at, extra, encoded)
  local c = XP.c
  local state = encoded or XP.encode(XP.s)
  if c.dirty then redis.call('HSET', c.user_key, 'xp', state, 'seq', jint(c.seq)) end
  local reply = {code, amount, ref, expires_at, extra, c.seq, 0, state}
  return Idempotency.remember(c.idem, c.fingerprint, c.idem_ttl, reply, c.may_create ~= '1'
    and c.fingerprint ~= '' and
    {events = c.events, meta = c.meta, scope = c.user_id, now_ms = c.now_ms, run = c.run} or nil)
end

-- Why an id is not among the open holds: 4 never a hold, 8 expired, 5 captured or released.
function XP.closed_hold_code(record_key)
  local record = XP.read_record(record_key)
  if not record or record.kind ~= 'hold' then return 4 end
  if record.status == 'held' then return 8 end
  return 5
end
