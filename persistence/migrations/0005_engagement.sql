-- 0005_engagement (issue #14): history pages, the webhook outbox, leaderboard rebuilds.

-- GET /api/exp/history and /api/v1/xp/transactions read one user's rows newest first, keyset on
-- (occurred_at, seq): this index serves every page with a range scan.
CREATE INDEX ledger_user_time ON ledger (user_id, occurred_at DESC, seq DESC);

-- Webhook events, written in the same transaction as the ledger rows that cause them (so a
-- committed ledger row's webhook is never lost, and a rolled-back one never sent). event_id is
-- stable ("<ledger event_id>:<type>"): re-writing a batch adds nothing, and receivers dedupe on it.
CREATE TABLE webhook_outbox (
    event_id         text        PRIMARY KEY,
    type             text        NOT NULL,          -- level_up, xp_low_balance, xp_depleted, ...
    user_id          text        NOT NULL,
    payload          jsonb       NOT NULL,          -- the body sent, exactly
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_to     text[]      NOT NULL DEFAULT '{}',   -- endpoints that answered 2xx
    delivered_at     timestamptz,                         -- every endpoint answered 2xx
    failed_at        timestamptz,                         -- gave up after the last attempt
    last_error       text
);
-- The deliverer's queue: what is still due, oldest first.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;

-- Rebuilding a day's or a week's leaderboard after a Redis loss sums that range's awards.
CREATE INDEX ledger_award_day ON ledger (day) WHERE kind = 'exp_award';
