-- requires: idempotency
--[[ release_request: a keyed request that claimed its key (lua/claim_request.lua) failed
before it applied anything (no owner, one's own entity): its attempt lets go of the claim, and
the claim is deleted when no other attempt of the request still runs it, so the key is free
again, as after any refused request. A claim that holds an answer, or another request's, stays.

KEYS[1]  idem  STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|pending:<attempts>" or an answer

ARGV[1]  fingerprint  string   the request's fingerprint

Reply: {code}
  code 0 kept                the key has an answer, another request's claim, or other attempts
  code 1 released            the key is free
]]

local stored, rest = Idempotency.read(KEYS[1])
if stored ~= ARGV[1] then return {0} end
local attempts = Idempotency.attempts(rest)
if not attempts then return {0} end
if attempts > 1 then
  redis.call('SET', KEYS[1], Idempotency.claim(ARGV[1], attempts - 1), 'KEEPTTL')
  return {0}
end
redis.call('DEL', KEYS[1])
return {1}
