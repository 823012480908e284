--[[ complete_bucket: from now on a user missing from the bucket is new (no Postgres read).

Written after the bucket was restored from Postgres behind the flush barrier of `run`, or on an
empty ledger. Only if Redis did not lose the bucket since (its run is still `run`): a bucket
emptied meanwhile stays incomplete and is restored again.

With ARGV[2] "1" (Postgres holds no entity owner of this bucket: a first start, or a bucket no
entity ever hashed to) it also sets `entities`: an entity missing from the bucket is then new too,
and a claim of it reads no Postgres (assign_entity.lua). The restore does not refill entity
owners, so a bucket whose entities Postgres knows never gets it: its entities stay restored one
by one, when touched.

KEYS[1]  meta  HASH  ctr:{bN}:meta   run, complete, entities

ARGV[1]  run       string   the run the restore read (open_bucket.lua)
ARGV[2]  entities  "0"|"1"  "1": Postgres knows no entity of this bucket

Reply: {code}
  code 1 completed     marked complete
  code 2 run_changed   the bucket's run is not `run`: nothing written
]]

local run = ARGV[1]
if redis.call('HGET', KEYS[1], 'run') ~= run then
  return {2}
end
redis.call('HSET', KEYS[1], 'complete', 1)
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'entities', 1)
end
return {1}
