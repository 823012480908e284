-- requires: bucket
-- Records a Redis loss must not forget (an idempotency record, an XP debit or hold record) go to
-- the ledger too: one stream entry of kind "record" next to the events of the same script. The
-- flusher keeps the newest of each key in redis_records; hydrating the user whose slot holds it
-- (its scope) puts it back, with the time it had left (persistence/recovery.py).
-- Only with a durable store (may_create "0"): Redis alone has nowhere to keep them.
local Records = {}

-- `expires_ms`: unix milliseconds by the service clock when the record expires. `run`: the
-- bucket's run when the script read it already (Bucket.run(meta) otherwise).
function Records.ledger(events, meta, scope, key, value, expires_ms, run)
  Entry.add_joined(events, 'record\31' .. scope .. '\31' .. key .. '\31'
    .. string.format('%d', expires_ms) .. '\31' .. (run or Bucket.run(meta)) .. '\31' .. value)
end
