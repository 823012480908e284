-- requires: bucket
--[[ open_bucket: the bucket's run (this Redis incarnation of it) and whether it is complete.

Makes the run if it is missing (lua/lib/bucket.lua), so the caller can hold the ledger's flush
barrier for exactly the incarnation it then writes into (persistence/runs.py).

KEYS[1]  meta  HASH  ctr:{bN}:meta   run, complete

Reply: {code, run, complete}
  code 1 open      run: string; complete: 1 when a missing user of the bucket is new, else 0
]]

local run = Bucket.run(KEYS[1])
return {1, run, redis.call('HEXISTS', KEYS[1], 'complete')}
