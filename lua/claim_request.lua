-- requires: idempotency, bucket
--[[ claim_request: the first step of a keyed request that runs as several scripts, in the slot
of its key's scope: a creator-targeted award (step A, the ACTING user's slot), a batch, a grant
or an adjust (the service caller's slot, the caller acting as itself).

Checking the key and recording it are one atomic step, so of the requests racing with one key
exactly one claims it (the same key with another fingerprint is refused: code 7, also while the
claim is pending). A "pending" claim lasts until remember_request.lua replaces it with the
request's answer, or release_request.lua frees it (the request failed before anything applied).
Another attempt of the same request (same fingerprint) may join a pending claim and run the
request too: each later step is at most once per request id (lua/reserve_creator_award.lua), so
two attempts apply it once, and a retry completes an attempt that crashed. The claim counts the
attempts running it; release_request.lua frees it only when the last one releases.

After a Redis loss the answer comes back with the acting user's hydration (issue #11): with no
record, an acting user Redis does not hold in an incomplete bucket must be hydrated first, or a
retry would run again instead of replaying.

KEYS[1]  idem  STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|<reply json>", or a claim
                                                "<fingerprint>|pending:<attempts>"
KEYS[2]  user  HASH    ctr:{bA}:user:<actor>    its seq says Redis holds the acting user
KEYS[3]  meta  HASH    ctr:{bA}:meta            the bucket's record (lua/lib/bucket.lua)

ARGV[1]  fingerprint  string   this request's fingerprint
ARGV[2]  may_create   "0"|"1"|"2"  "0"/"2": a missing acting user may be in Postgres (lua/lib/bucket.lua)
ARGV[3]  idem_ttl     int      seconds the claim (or the recorded reply) lives
ARGV[4]  claim        string   "pending": claim the key until the answer is remembered; else a
                               reply (json, as remember_request.lua's) recorded at once: the key
                               of a batch, a grant or an adjust, whose work keeps its own records

Reply: {0} | {8} | {6} | {7} | the stored reply of remember_request.lua, its replayed slot (9)
       the unix ms its answer was decided at (1 from a record that kept 0: lib/idempotency.lua)
  code 0 claimed             the key is this request's now: run it
  code 8 joined              another attempt of this request holds the pending claim: run it too
  code 6 needs_hydration     no record, and the acting user may be one Redis forgot
  code 1 awarded             a stored answer (codes 1-5: the award's outcome)
  code 2 limit_reached
  code 3 cap_reached
  code 4 already_triggered
  code 5 total_limit
  code 7 key_reused          the key was used with a different request
]]

local fingerprint, ttl, claim = ARGV[1], ARGV[3], ARGV[4]
local stored, rest = Idempotency.read(KEYS[1])
if stored then
  if stored ~= fingerprint then return {7} end
  local attempts = Idempotency.attempts(rest)
  if not attempts then return Idempotency.replayed(rest, 9) end
  redis.call('SET', KEYS[1], Idempotency.claim(fingerprint, attempts + 1), 'KEEPTTL')
  return {8}
end
if redis.call('HEXISTS', KEYS[2], 'seq') == 0 and not Bucket.may_create(KEYS[3], ARGV[2]) then
  return {6}
end
if claim == 'pending' then
  redis.call('SET', KEYS[1], Idempotency.claim(fingerprint, 1), 'EX', ttl)
else
  redis.call('SET', KEYS[1], fingerprint .. '|' .. claim, 'EX', ttl)
end
return {0}
