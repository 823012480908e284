-- requires: idempotency
--[[ recall_request: step A of a keyed creator-targeted award, in the ACTING user's slot.

The request's idempotency record is written last (remember_request.lua), with the whole answer
including whom it paid, so a retry after a transfer replays "awarded_to" the first owner.

KEYS[1]  idem  STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|<reply json>"

ARGV[1]  fingerprint  string  this request's fingerprint

Reply: {0} | {7} | the stored reply of remember_request.lua, its replayed slot (9) set to 1
  code 0 no_record           no answer recorded yet
  code 1 awarded             a stored answer (codes 1-4: the award's outcome)
  code 2 limit_reached
  code 3 cap_reached
  code 4 already_triggered
  code 7 key_reused          the key was used with a different request
]]

local replayed = Idempotency.replay(KEYS[1], ARGV[1], 9, {7})
if replayed then return replayed end
return {0}
