-- requires: bucket
--[[ assign_entity: record, transfer or restore the owner of an entity, in the entity's own slot.

The only writer of the owner record. Every change bumps the version and, with the ledger on,
appends an `entity_owner` event carrying that version to the entity's bucket stream in the same
atomic step, so Postgres applies owner changes in version order (persistence/writer.py keeps the
highest version) and names the owner Redis names. No other key names an owner: award scripts
read this record, so once a transfer has answered no award reaches the former owner. The event
carries the bucket's run (lua/lib/bucket.lua), as user events do: an owner change a lost Redis
incarnation acknowledged is refused by the ledger once a restore retired that run, instead of
landing behind an owner Redis got back from Postgres (persistence/runs.py).

KEYS[1]  entity  HASH    ctr:{bE}:entity:<type>:<id>   owner (user id), version (int)
KEYS[2]  events  STREAM  ctr:{bE}:events               the entity's bucket's stream
KEYS[3]  meta    HASH    ctr:{bE}:meta                 the bucket's run and completeness

ARGV[1]  owner_id    string
ARGV[2]  mode        string  "claim": set only if nobody owns the entity (a creation)
                             "assign": set whoever owns it (a service's record or a transfer)
                             "restore": set owner and version from Postgres if Redis has none
ARGV[3]  ledger      "0"|"1" "1": append the owner event (a durable store is configured)
ARGV[4]  target      string  "<type>:<id>", recorded on the event
ARGV[5]  may_create  string  "1": a missing record is new (no durable store); "0": new when
                             the bucket is complete (lua/lib/bucket.lua: the restore put back
                             every owner Postgres has), else restore it from Postgres first;
                             "2": always restore it first (Redis may evict keys)
ARGV[6]  version     int     the restored version ("restore" mode; else ignored)
ARGV[7]  now_ms      int     unix milliseconds, recorded on the event
ARGV[8]  run         string  "restore" mode: write only while the bucket's run (KEYS[3]) is this,
                             the run whose flush barriers the owner was read behind ("": always)

Reply: {code, previous_owner, version}
  code 1 recorded              previous_owner "" if none; version: the record's version now
  code 2 claim_refused         owned by previous_owner
  code 3 run_changed           "restore" mode: the bucket's run is not ARGV[8] (Redis lost it
                               again since the read): nothing written
  code 8 needs_owner_restore   no record in Redis, and Redis cannot tell the entity is new:
                               restore it from Postgres, then call again
]]

local owner, mode, ledger, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local may_create, restored_version, now_ms = ARGV[5], tonumber(ARGV[6]), ARGV[7]

local record = redis.call('HMGET', KEYS[1], 'owner', 'version')
local previous, version = record[1] or '', tonumber(record[2]) or 0
if mode == 'restore' then
  if ARGV[8] ~= '' and redis.call('HGET', KEYS[3], 'run') ~= ARGV[8] then
    return {3, '', 0}
  end
  if previous == '' then
    redis.call('HSET', KEYS[1], 'owner', owner, 'version', restored_version)
    return {1, '', restored_version}
  end
  return {1, previous, version}
end
if previous == '' and not Bucket.may_create(KEYS[3], may_create) then
  return {8, '', 0}
end
if mode == 'claim' and previous ~= '' and previous ~= owner then
  return {2, previous, version}
end
if previous == owner then
  return {1, previous, version}
end
version = version + 1
redis.call('HSET', KEYS[1], 'owner', owner, 'version', version)
if ledger == '1' then
  Entry.add(KEYS[2], {'entity_owner', target, owner, version, now_ms, Bucket.run(KEYS[3])})
end
return {1, previous, version}
