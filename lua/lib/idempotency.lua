-- requires: records
-- Idempotency records, shared by every script that takes an Idempotency-Key.
-- A record is "<fingerprint>|<reply as JSON>" under the request's key, for idem_ttl seconds.
local Idempotency = {}

-- The stored reply of a repeat (its replayed slot set to 1), `mismatch` when the key was used
-- with another request, or nil when the request is new (or carries no key: fingerprint "").
function Idempotency.replay(key, fingerprint, replayed_slot, mismatch)
  if fingerprint == '' then return nil end
  local stored = redis.call('GET', key)
  if not stored then return nil end
  local sep = string.find(stored, '|', 1, true)
  if string.sub(stored, 1, sep - 1) ~= fingerprint then return mismatch end
  local reply = cjson.decode(string.sub(stored, sep + 1))
  reply[replayed_slot] = 1
  return reply
end

-- Remember `reply` for repeats of this request, and return it. With `ledger` ({events, meta,
-- scope, now_ms} of the record's slot) the record also goes to the ledger (lib/records.lua),
-- so a keyed retry after a Redis loss replays it instead of running again.
function Idempotency.remember(key, fingerprint, ttl, reply, ledger)
  if fingerprint ~= '' then
    local value = fingerprint .. '|' .. cjson.encode(reply)
    redis.call('SET', key, value, 'EX', ttl)
    if ledger then
      Records.ledger(ledger.events, ledger.meta, ledger.scope, key, value,
                     tonumber(ledger.now_ms) + tonumber(ttl) * 1000)
    end
  end
  return reply
end
