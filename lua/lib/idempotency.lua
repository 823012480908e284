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

-- Remember `reply` for repeats of this request, and return it.
function Idempotency.remember(key, fingerprint, ttl, reply)
  if fingerprint ~= '' then
    redis.call('SET', key, fingerprint .. '|' .. cjson.encode(reply), 'EX', ttl)
  end
  return reply
end
