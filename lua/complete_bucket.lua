--[[ complete_bucket: from now on a user missing from the bucket is new (no Postgres read).

Written after the bucket was restored from Postgres behind the flush barrier of `run`, or on an
empty ledger. Only if Redis did not lose the bucket since (its run is still `run`): a bucket
emptied meanwhile stays incomplete and is restored again.

KEYS[1]  meta  HASH  ctr:{bN}:meta   run, complete, evicted

ARGV[1]  run      string  the run the restore read (open_bucket.lua)
ARGV[2]  evicted  string  the node's `<run_id>:<evicted_keys>` (INFO server, stats) read before
                          the restore read Postgres: the marker is trusted only while the node
                          still reports it (persistence/restore.py drops it once the node evicted
                          a key or restarted since)

Reply: {code}
  code 1 completed     marked complete
  code 2 run_changed   the bucket's run is not `run`: nothing written
]]

local run = ARGV[1]
if redis.call('HGET', KEYS[1], 'run') ~= run then
  return {2}
end
redis.call('HSET', KEYS[1], 'complete', 1, 'evicted', ARGV[2])
return {1}
