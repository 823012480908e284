--[[ stream_mark: where a bucket's event stream stands against the ledger, read without any
entry's fields (an entry that is not UTF-8 is read only by the flusher's own client).

Before the once-per-actor records of a bucket Redis lost are read back from Postgres, every
stream must be ledgered up to where it stood when the loss was seen (persistence/marks.py): a
creator award's event is in the paid owner's bucket, which may have survived the loss with the
award not yet flushed. The flusher deletes each entry once its transaction committed, so a
stream holding no entry at or before its mark has had every one of them ledgered.

KEYS[1]  events  STREAM  ctr:{bN}:events   the bucket's event stream

ARGV[1]  mark  string  "" to take the mark; else a mark taken before

Reply: {code, id}
  code 1 marked    id: the newest entry's id, the stream's mark ("" when it holds none)
  code 2 reached   no entry at or before the mark is left; id ""
  code 3 behind    id: the oldest entry, at or before the mark, not yet ledgered
]]

local mark = ARGV[1]
if mark == '' then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #newest == 0 then
    return {1, ''}
  end
  return {1, newest[1][1]}
end
local oldest = redis.call('XRANGE', KEYS[1], '-', mark, 'COUNT', 1)
if #oldest == 0 then
  return {2, ''}
end
return {3, oldest[1][1]}
