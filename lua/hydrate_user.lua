--[[ hydrate_user: put back a user Redis forgot, from the durable store, unless Redis has them.

Atomic: the user hash is written only if it does not exist, so a concurrent hydration or a write
that created the user first wins cleanly and this one changes nothing. Today's counters are
written only if today's hash does not exist either (one that exists is newer than the ledger).
The values were read behind the ledger's flush barrier of run ARGV[7] (persistence/runs.py): if
the bucket's run is another one, Redis lost the bucket again since, and nothing is written.

KEYS[1]  user  HASH  ctr:{bN}:user:<uid>              exp, level, seq, xp
KEYS[2]  today HASH  ctr:{bN}:day:<YYYYMMDD>:<uid>    exp, a:<action> (counts)
KEYS[3]  day_board   ZSET  ctr:{bN}:board:day:<YYYYMMDD>    (as in award_exp.lua, or unused)
KEYS[4]  week_board  ZSET  ctr:{bN}:board:week:<YYYY>W<ww>
KEYS[5]  all_board   ZSET  ctr:{bN}:board:all
KEYS[6]  meta        HASH  ctr:{bN}:meta                    run, complete

ARGV[1]  exp            int      total EXP
ARGV[2]  level          int
ARGV[3]  seq            int      the user's last change counter: new events continue from it
ARGV[4]  xp_state       string   the XP state (JSON) for field xp; "" = none
ARGV[5]  day_ttl        int      seconds KEYS[2] lives from now (as in award_exp.lua)
ARGV[6]  day_fields     json     [string]: flat pairs "exp", gained today, "a:<action>", count,
                                 ...; [] = no counters today
ARGV[7]  week_ttl       int      seconds KEYS[4] lives from now; 0 = leaderboards off
ARGV[8]  board_exp      json     [int, int, int]: EXP from awards today, this ISO week, all time
ARGV[9]  user_id        string   the member on the boards
ARGV[10] run            string   the bucket's run the values were read for; "" = no check

The user's earnings go back on the boards with ZADD GT in the same step: the user was missing,
so no award of theirs has been counted since Redis lost them, and their next awards add to the
restored sums (a board rebuilt meanwhile from the ledger holds the same sums: GT keeps them).

Reply: {code}
  code 0 skipped   Redis already had the user (nothing written)
  code 1 written   hydrated
  code 2 run_changed   the bucket's run is not ARGV[10] (nothing written)
]]

local exp, level, seq, xp_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local day_ttl, day_fields = ARGV[5], cjson.decode(ARGV[6])
local week_ttl, board_exp, user_id = ARGV[7], cjson.decode(ARGV[8]), ARGV[9]
local run = ARGV[10]

if run ~= '' and redis.call('HGET', KEYS[6], 'run') ~= run then
  return {2}
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
if xp_state ~= '' then
  redis.call('HSET', KEYS[1], 'exp', exp, 'level', level, 'seq', seq, 'xp', xp_state)
else
  redis.call('HSET', KEYS[1], 'exp', exp, 'level', level, 'seq', seq)
end
if #day_fields > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], unpack(day_fields))
  redis.call('EXPIRE', KEYS[2], day_ttl)
end
if week_ttl ~= '0' then
  local ttls = {day_ttl, week_ttl}
  for i = 1, 3 do
    if board_exp[i] > 0 then
      redis.call('ZADD', KEYS[2 + i], 'GT', board_exp[i], user_id)
      if ttls[i] then redis.call('EXPIRE', KEYS[2 + i], ttls[i]) end
    end
  end
end
return {1}
