-- requires: award
--[[ award_exp: award EXP for one action, enforcing the per-action daily limit and the daily cap.

All-or-nothing: every check runs before the first write, so a refused award changes no EXP or
count. Runs in the RECEIVING user's slot. KEYS[4] is the request's at-most-once record there:
for an award to oneself (daily_chat, create_*) the request's idempotency record (the acting user
is the receiver: one round trip); for a creator-targeted award the record of its request id
(step C of the protocol in reserve_creator_award.lua), so a retry or a completion by another
request applies it once and replays the first answer. The owner and the once-per-actor record
are checked before, in the entity's slot: nothing here depends on another identity's slot.

KEYS[1]  user      HASH   ctr:{bN}:user:<uid>                exp, level, seq
KEYS[2]  today     HASH   ctr:{bN}:day:<YYYYMMDD>:<uid>      exp, a:<action> (counts)
KEYS[3]  events    STREAM ctr:{bN}:events                    ledger events of the bucket
KEYS[4]  record    STRING ctr:{bN}:idem:<digest> | ctr:{bN}:award:<rid>
                                                             "<fingerprint>|<reply json>" (or unused)
KEYS[5]  day_board  ZSET  ctr:{bN}:board:day:<YYYYMMDD>     EXP earned that UTC day, by user
KEYS[6]  week_board ZSET  ctr:{bN}:board:week:<YYYY>W<ww>   EXP earned that ISO week, by user
KEYS[7]  all_board  ZSET  ctr:{bN}:board:all                EXP earned from awards, by user
KEYS[8]  meta      HASH   ctr:{bN}:meta                      run, complete (lua/lib/bucket.lua)

ARGV[1]  user_id        string   the user who receives the EXP
ARGV[2]  action         string
ARGV[3]  reward         int      EXP the action is worth
ARGV[4]  daily_limit    int      awards per UTC day; 0 = no limit
ARGV[5]  rules          string   the rules version the call was built with: the levels and caps
                                 are compiled into the script (lib rules); another is refused
ARGV[6]  day            string   UTC day YYYYMMDD (the window is in the key; this is for the event)
ARGV[7]  day_ttl        int      seconds KEYS[2] lives from now (to midnight + grace, by the
                                 service's clock: Redis's may differ, so no absolute EXPIREAT)
ARGV[8]  now_ms         int      unix milliseconds
ARGV[9]  fingerprint    string   request fingerprint; "" = no record (not idempotent)
ARGV[10] idem_ttl       int      seconds the record KEYS[4] lives
ARGV[11] actor          string   who triggered the action
ARGV[12] may_create     "0"|"1"|"2"  "1": a missing user is new; "0": new only in a complete
                                 bucket (KEYS[8] complete), else hydrated first; "2": always
                                 hydrated first (Redis may evict keys: lua/lib/bucket.lua)
ARGV[13] target         string   "<type>:<id>" or ""
ARGV[14] idem_key       string   the Idempotency-Key, recorded on the event
ARGV[15] week_ttl       int      seconds KEYS[6] lives from now (to the ISO week's end + grace);
                                 KEYS[5] lives day_ttl. Both set on the user's first award of a day.
                                 0 = leaderboards off: KEYS[5..7] are unused and not written

Reply: {code, exp_added, total_exp, level, previous_level, daily_exp_gained, action_count, seq, replayed}
  code 1 awarded             possibly partial
  code 2 limit_reached       the action's daily limit
  code 3 cap_reached         the level's daily EXP cap
  code 5 total_limit         the total would pass the maximum (lib/bounds.lua)
  code 6 needs_hydration
  code 7 key_reused          idempotency key reused with a different request
replayed: 0 for an answer decided now; a replay of the record KEYS[4] answers the stored reply
with the unix ms it was decided at there (1 from a record written before it kept that time).
(A repeat of a once-per-actor action is answered in the entity's slot, never here.)
]]

return Award.apply()
