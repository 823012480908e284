-- requires: idempotency, bucket
--[[ recall_request: step A of a keyed creator-targeted award, in the ACTING user's slot.

The request's idempotency record is written last (remember_request.lua), with the whole answer
including whom it paid, so a retry after a transfer replays "awarded_to" the first owner.
After a Redis loss the record comes back with the acting user's hydration (issue #11): with no
record, an acting user Redis does not hold in an incomplete bucket must be hydrated first, or a
retry would run again instead of replaying.

KEYS[1]  idem  STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|<reply json>"
KEYS[2]  user  HASH    ctr:{bA}:user:<actor>    its seq says Redis holds the acting user
KEYS[3]  meta  HASH    ctr:{bA}:meta            the bucket's record (lua/lib/bucket.lua)

ARGV[1]  fingerprint  string   this request's fingerprint
ARGV[2]  may_create   "0"|"1"|"2"  "0"/"2": a missing acting user may be in Postgres (lua/lib/bucket.lua)

Reply: {0} | {6} | {7} | the stored reply of remember_request.lua, its replayed slot (9) set to 1
  code 0 no_record           no answer recorded yet
  code 6 needs_hydration     no record, and the acting user may be one Redis forgot
  code 1 awarded             a stored answer (codes 1-5: the award's outcome)
  code 2 limit_reached
  code 3 cap_reached
  code 4 already_triggered
  code 5 total_limit
  code 7 key_reused          the key was used with a different request
]]

local replayed = Idempotency.replay(KEYS[1], ARGV[1], 9, {7})
if replayed then return replayed end
if redis.call('HEXISTS', KEYS[2], 'seq') == 0 and not Bucket.may_create(KEYS[3], ARGV[2]) then
  return {6}
end
return {0}
