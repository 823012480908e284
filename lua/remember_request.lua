-- requires: idempotency
--[[ remember_request: the last step of a keyed creator-targeted award, in the ACTING user's slot.

KEYS[1]  idem  STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|<reply json>", for idem_ttl

ARGV[1]  fingerprint  string  this request's fingerprint
ARGV[2]  idem_ttl     int     seconds the record lives
ARGV[3]  reply        json    [code, exp_added, total_exp, level, previous_level,
                               daily_exp_gained, action_count, seq, replayed (0), awarded_to]

Reply: {code}
  code 1 remembered
]]

Idempotency.remember(KEYS[1], ARGV[1], ARGV[2], cjson.decode(ARGV[3]))
return {1}
