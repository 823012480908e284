-- 0001_ledger: the durable truth behind Redis. Every change is a ledger row; totals are the
-- latest state per user; entity owners are kept for creator-targeted awards.

-- Every change to a user's EXP or XP, exactly once. event_id is "<user>:<seq>" as the Lua scripts
-- make it (or "<user>:repair:<n>" for a reconcile repair). Rows are never updated or deleted.
CREATE TABLE ledger (
    event_id     text        PRIMARY KEY,
    user_id      text        NOT NULL,
    seq          bigint      NOT NULL,          -- the user's change counter after this change
    kind         text        NOT NULL,          -- exp_award, exp_adjust, xp_debit, ..., reconcile_repair
    action       text        NOT NULL DEFAULT '',
    amount       bigint      NOT NULL,          -- signed change
    actor        text        NOT NULL DEFAULT '',
    target       text        NOT NULL DEFAULT '',
    day          text,                          -- YYYYMMDD (UTC) of an exp_award: the daily window
    idem         text,                          -- Idempotency-Key of the request, if any
    occurred_at  timestamptz NOT NULL,
    totals       jsonb       NOT NULL,          -- every other field of the event: totals after, ...
    stream_id    text        NOT NULL,          -- the Redis stream entry it came from ("" if none)
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_user_seq ON ledger (user_id, seq);
-- Hydration rebuilds today's counters of one user from this.
CREATE INDEX ledger_user_day ON ledger (user_id, day) WHERE kind = 'exp_award';

-- The latest totals of each user. Each family of totals carries the seq of the event that set it,
-- so an event delivered late or twice never rolls a family back.
CREATE TABLE user_totals (
    user_id        text        PRIMARY KEY,
    seq            bigint      NOT NULL,
    exp_seq        bigint      NOT NULL DEFAULT 0,
    exp            bigint      NOT NULL DEFAULT 0,
    level          integer     NOT NULL DEFAULT 1,
    xp_seq         bigint      NOT NULL DEFAULT 0,
    xp_balance     bigint,
    xp_allocation  bigint,
    xp_topup       bigint,
    xp_held        bigint,
    tier           text,                        -- the subscription tier ("" or NULL: none)
    xp_state       jsonb,                       -- the whole XP state, as Redis keeps it in field xp
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Who owns an entity; position orders the owner events of one entity (its bucket's stream id).
CREATE TABLE entity_owners (
    entity_type  text        NOT NULL,
    entity_id    text        NOT NULL,
    owner_id     text        NOT NULL,
    position_ms  bigint      NOT NULL,
    position_seq bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id)
);

-- Stream entries the flusher could not ledger: malformed, or an event_id already used by a
-- different entry (Redis lost writes that had been flushed, then reused their seq). Kept here so
-- nothing is dropped silently; `counters reconcile` reports unresolved rows.
CREATE TABLE ledger_quarantine (
    stream       text        NOT NULL,
    stream_id    text        NOT NULL,
    reason       text        NOT NULL,
    fields       jsonb       NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    PRIMARY KEY (stream, stream_id)
);
