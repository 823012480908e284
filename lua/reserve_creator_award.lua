-- requires: bucket
--[[ reserve_creator_award: step B of a creator-targeted award, in the ENTITY's slot.

A creator award (a like, a fork) spans three identities, each with its records in its own slot:
  A  actor slot   the request's idempotency record (claim_request / remember_request.lua)
  B  entity slot  this script: who owns the entity now, and the once-per-actor record
  C  owner slot   award_exp.lua with the request id's at-most-once record (ctr:{bO}:award:<rid>)
  D  entity slot  settle_creator_award.lua: the reservation becomes "done", or is released
Every script touches one slot. B is the award's linearization point: the owner read here is
the one paid, so an award that starts after a transfer answered never pays the former owner.

A once-per-actor action keeps one entry per actor in KEYS[2] (the entity's, not the owner's:
a transfer resets nothing). B reserves it as "pending" under the request id rid; a retry with
the same rid (a keyed retry: rid = request_digest(caller, actor, key)) finds its own entry and
is told the owner recorded there, so it pays the owner the first attempt paid. Another request
that finds a pending entry of a different rid completes that award first (C with the entry's
rid, owner and fingerprint: C's record makes it at most once), settles it (D), then asks again.
A pending entry older than stale_ms (C's record may have expired) is settled as done without
paying: an award may be lost in that crash window, never paid twice.

A keyed request of an action that is not once-per-actor (paid_char_sold) records rid -> owner
in KEYS[2] (a STRING living stale_ms): its retries pay the owner the first attempt chose, even
after a transfer, and C's record in that owner's slot makes it once.

KEYS[1]  entity  HASH  ctr:{bE}:entity:<type>:<id>           owner, version
KEYS[2]  record  HASH    ctr:{bE}:once:<action>:<type>:<id>  actor -> JSON entry ("once" mode)
                 STRING  ctr:{bE}:request:<rid>              the owner rid pays ("keyed" mode)
                         or an unused key ("plain" mode)
KEYS[3]  meta    HASH  ctr:{bE}:meta   the entity's bucket's completeness (may_create "0")

ARGV[1]  actor        string   who triggered the action
ARGV[2]  rid          string   this request's id
ARGV[3]  fingerprint  string   this request's fingerprint, kept on the entry for completion
ARGV[4]  mode         string   "once": once per actor (reserve in KEYS[2]); "keyed": remember
                                 rid's owner in KEYS[2]; "plain": only read the owner
ARGV[5]  now_ms       int      unix milliseconds, service clock
ARGV[6]  stale_ms     int      a pending entry older than this is settled as done
ARGV[7]  once_ttl     int      seconds KEYS[2] lives after its last write
ARGV[8]  may_create   string   "1": a missing owner record means no owner; "0": so when the
                                 bucket is complete, else restore it from Postgres first; "2":
                                 always restore it first (Redis may evict keys)

Entry (JSON): {"state": "pending"|"done", "rid": str, "owner": str, "fp": str, "ts": now_ms}

Reply: {code, owner, rid, fingerprint}
  code 1 reserved              pay owner under rid (rid and fingerprint: this request's, or
                               the ones its own earlier attempt recorded)
  code 4 already_triggered     by this actor (owner: whom the first one paid)
  code 8 needs_owner_restore   no owner record, and Redis cannot tell there is none: restore
                               it from Postgres, then call again
  code 9 pending               under another request: complete {owner, rid, fingerprint}
                               first, then call again; two more elements: the entity's owner
                               now and the entry's ts (whether the competitor's refusal is
                               this request's too: the same owner, the same UTC day)
  code 10 no_owner             nobody owns the entity
  code 11 own_entity           the actor owns the entity
]]

local actor, rid, fingerprint, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now_ms, stale_ms, once_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local may_create = ARGV[8]

local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  if not Bucket.may_create(KEYS[3], may_create) then return {8, '', '', ''} end
  return {10, '', '', ''}
end
if owner == actor then return {11, owner, '', ''} end
if mode == 'keyed' then
  local first = redis.call('GET', KEYS[2])
  if first then return {1, first, rid, fingerprint} end
  redis.call('SET', KEYS[2], owner, 'PX', stale_ms)
  return {1, owner, rid, fingerprint}
end
if mode ~= 'once' then return {1, owner, rid, fingerprint} end

local stored = redis.call('HGET', KEYS[2], actor)
if stored then
  local entry = cjson.decode(stored)
  if entry.rid == rid then return {1, entry.owner, rid, entry.fp} end
  if entry.state == 'done' then return {4, entry.owner, '', ''} end
  if now_ms - tonumber(entry.ts) <= stale_ms then
    return {9, entry.owner, entry.rid, entry.fp, owner, tostring(entry.ts)}
  end
  entry.state = 'done'
  redis.call('HSET', KEYS[2], actor, cjson.encode(entry))
  return {4, entry.owner, '', ''}
end
local entry = {state = 'pending', rid = rid, owner = owner, fp = fingerprint, ts = now_ms}
redis.call('HSET', KEYS[2], actor, cjson.encode(entry))
redis.call('EXPIRE', KEYS[2], once_ttl)
return {1, owner, rid, fingerprint}
