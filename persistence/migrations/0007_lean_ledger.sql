-- 0007_lean_ledger (issue #11, cheaper durability): fewer indexes to maintain per ledger row.
-- Every row inserted updates each index of the table; the flusher's Postgres CPU per event was
-- mostly the ledger's five: the key (event_id), ledger_user_seq, ledger_user_day,
-- ledger_user_time and ledger_award_day. Three are enough for every reader:
--   event_id (the key)        exactly once (ON CONFLICT), collisions (persistence/writer.py)
--   ledger_user_time          history pages (persistence/history.py); any one-user scan:
--                             reconcile's sums of a user, a user's all-time award sum
--   ledger_award_day_user     a user's awards of a day (hydration, persistence/store.py) and
--                             a day's or a week's awards (leaderboard rebuild), both by range
-- ledger_user_seq (user_id, seq) served no query: seq is read only in reconcile's per-user max,
-- which ledger_user_time's user prefix serves; (user_id, seq) is not unique either (a reconcile
-- repair row carries the seq of the user's last event).
-- On a ledger that already has rows, building the new index holds a SHARE lock on `ledger` for
-- the build (a sort of the award rows): flusher writes wait meanwhile, their
-- events safe in Redis (the durability window grows for that time), reads go on.
CREATE INDEX ledger_award_day_user ON ledger (day, user_id) WHERE kind = 'exp_award';
DROP INDEX ledger_user_day;
DROP INDEX ledger_award_day;
DROP INDEX ledger_user_seq;
