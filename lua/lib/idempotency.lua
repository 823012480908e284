-- requires: records
-- Idempotency records, shared by every script that takes an Idempotency-Key.
-- A record is "<fingerprint>|<reply as JSON>" under the request's key, for idem_ttl seconds.
local Idempotency = {}

-- A request that runs as several scripts claims its key first (claim_request.lua): until its
-- answer replaces it the record is "<fingerprint>|pending:<attempts running it>".
local PENDING = 'pending:'

-- The record under `key` as (fingerprint, the rest: a reply as JSON, or a claim), or nil.
function Idempotency.read(key)
  local stored = redis.call('GET', key)
  if not stored then return nil end
  local sep = string.find(stored, '|', 1, true)
  return string.sub(stored, 1, sep - 1), string.sub(stored, sep + 1)
end

-- A pending claim's record for `attempts` attempts of the request.
function Idempotency.claim(fingerprint, attempts)
  return fingerprint .. '|' .. PENDING .. attempts
end

-- How many attempts run a pending claim, or nil when `rest` is an answer.
function Idempotency.attempts(rest)
  if string.sub(rest, 1, #PENDING) ~= PENDING then return nil end
  return tonumber(string.sub(rest, #PENDING + 1))
end

-- A stored reply, its replayed slot set to 1 unless the record keeps a time there: an award's
-- record holds the unix ms its answer was decided at (lib/award.lua; a 429's wait counts from
-- it), a record written before that, and every other script's, holds 0.
function Idempotency.replayed(rest, replayed_slot)
  local reply = cjson.decode(rest)
  if (tonumber(reply[replayed_slot]) or 0) == 0 then reply[replayed_slot] = 1 end
  return reply
end

-- The stored reply of a repeat (its replayed slot set to 1), `mismatch` when the key was used
-- with another request, or nil when the request is new (or carries no key: fingerprint "").
-- A pending claim is another request's here: only a creator-targeted award's chain claims a
-- key, and its fingerprint (route, user, body) is no single-script request's (unless a rules
-- reload turned the action into an award to oneself while it ran: then 422, never twice).
function Idempotency.replay(key, fingerprint, replayed_slot, mismatch)
  if fingerprint == '' then return nil end
  local stored, rest = Idempotency.read(key)
  if not stored then return nil end
  if stored ~= fingerprint or Idempotency.attempts(rest) then return mismatch end
  return Idempotency.replayed(rest, replayed_slot)
end

-- Remember `reply` for repeats of this request, and return it. With `ledger` ({events, meta,
-- scope, now_ms} of the record's slot, and its run when the script read it already) the record
-- also goes to the ledger (lib/records.lua), so a keyed retry after a Redis loss replays it
-- instead of running again.
function Idempotency.remember(key, fingerprint, ttl, reply, ledger)
  if fingerprint ~= '' then
    local value = fingerprint .. '|' .. cjson.encode(reply)
    redis.call('SET', key, value, 'EX', ttl)
    if ledger then
      Records.ledger(ledger.events, ledger.meta, ledger.scope, key, value,
                     tonumber(ledger.now_ms) + tonumber(ttl) * 1000, ledger.run)
    end
  end
  return reply
end
