-- requires: bucket
-- Records a Redis loss must not forget (an idempotency record, an XP debit or hold record) go to
-- the ledger too: one stream entry of kind "record" next to the events of the same script. The
-- flusher keeps the newest of each key in redis_records; hydrating the user whose slot holds it
-- (its scope) puts it back, with the time it had left (persistence/recovery.py).
-- Only with a durable store (may_create "0"): Redis alone has nowhere to keep them.
local Records = {}

-- `expires_ms`: unix milliseconds by the service clock when the record expires.
function Records.ledger(events, meta, scope, key, value, expires_ms)
  Entry.add(events, {'record', scope, key, string.format('%d', expires_ms), Bucket.run(meta),
    value})
end
