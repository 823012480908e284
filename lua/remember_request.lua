-- requires: idempotency, bucket
--[[ remember_request: the last step of a keyed creator-targeted award, in the ACTING user's slot.

With a durable store (ledger "1") the record also goes to the ledger as a "record" entry
(lua/lib/records.lua), so it comes back with the acting user's hydration after a Redis loss and a
keyed retry replays the first answer (issue #11), whoever owns the entity by then.

KEYS[1]  idem    STRING  ctr:{bA}:idem:<digest>   "<fingerprint>|<reply json>", for idem_ttl
KEYS[2]  events  STREAM  ctr:{bA}:events          the acting user's bucket stream
KEYS[3]  meta    HASH    ctr:{bA}:meta            the bucket's record (its run)

ARGV[1]  fingerprint  string   this request's fingerprint
ARGV[2]  idem_ttl     int      seconds the record lives
ARGV[3]  reply        json     [code, exp_added, total_exp, level, previous_level,
                               daily_exp_gained, action_count, seq, decided_ms, awarded_to]:
                               decided_ms the unix ms the award was asked at (in the replayed
                               slot: a replay of the record reports it, lib/idempotency.lua)
ARGV[4]  ledger       "0"|"1"  "1": a durable store keeps the record too
ARGV[5]  scope        string   the acting user (whose hydration restores the record)
ARGV[6]  now_ms       int      the service clock, ms (the record's expiry in the ledger)

Reply: {code}
  code 1 remembered
]]

local ledger = nil
if ARGV[4] == '1' then
  ledger = {events = KEYS[2], meta = KEYS[3], scope = ARGV[5], now_ms = ARGV[6]}
end
Idempotency.remember(KEYS[1], ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ledger)
return {1}
