-- requires: entry
-- The bucket's own record (ctr:{bN}:meta, HASH run, complete), shared by every script that may
-- create a user or writes ledger events. It lives in the bucket's slot, so it is lost exactly
-- when the bucket's users and stream are lost (an empty restart, a failover, FLUSHALL).
local Bucket = {}

-- Whether a user (or an entity) missing from Redis is new: always with no durable store
-- (may_create "1"); with one ("0"), only when the bucket is complete (restored from Postgres, or
-- started on an empty ledger): one HEXISTS, made only for a record Redis does not hold; never
-- ("2": Redis may evict keys, so a missing one may be an evicted one: ask Postgres).
function Bucket.may_create(meta, may_create)
  return may_create == '1' or (may_create == '0' and redis.call('HEXISTS', meta, 'complete') == 1)
end

-- The id of this Redis incarnation of the bucket, made on first use from Redis's clock (so a
-- bucket emptied and refilled never gets an earlier incarnation's id). Every event carries it:
-- the flusher refuses the events of an incarnation a hydration has retired (persistence/runs.py).
function Bucket.run(meta)
  local run = redis.call('HGET', meta, 'run')
  if not run then
    local t = redis.call('TIME')
    run = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'run', run)
  end
  return run
end
