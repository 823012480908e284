-- The flush barrier (persistence/runs.py, issue #11): each Redis incarnation of a bucket (its
-- "run", lua/lib/bucket.lua, carried by every event) is registered here by the flusher's
-- transactions. Before a user is rebuilt from Postgres, the hydration retires every older run of
-- the bucket under an exclusive advisory lock the flusher's transactions share: an event of a
-- retired run can no longer be ledgered (it was lost with Redis), so no user is rebuilt from
-- rows that a still-open flush would change afterwards.
CREATE TABLE bucket_runs (
    bucket integer NOT NULL,
    run text NOT NULL,
    retired boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, run)
);

-- Records a Redis loss must not forget (lua/lib/records.lua): idempotency records and XP debit or
-- hold records, the newest of each key (by stream position), put back into Redis when their
-- scope (the user whose slot holds them) is hydrated. Expired rows are deleted by the restore.
CREATE TABLE redis_records (
    key text PRIMARY KEY,
    scope text NOT NULL,
    value text NOT NULL,
    expires_ms bigint NOT NULL,
    pos_ms bigint NOT NULL,
    pos_n bigint NOT NULL
);
CREATE INDEX redis_records_scope ON redis_records (scope);

-- Who already triggered a creator-targeted action on an entity (one row per target, action and
-- actor: the first award), written by the flusher from exp_award events whose actor is not the
-- paid user. When Redis lost an entity's records, its once-per-actor entries are rebuilt from
-- here (counters/exp/creator.py), so a like is not paid twice after a loss.
CREATE TABLE creator_awards (
    target text NOT NULL,
    action text NOT NULL,
    actor text NOT NULL,
    owner_id text NOT NULL,
    ts_ms bigint NOT NULL,
    PRIMARY KEY (target, action, actor)
);

-- Entries of a retired run (persistence/runs.py): acknowledged by a Redis incarnation that was
-- lost before the flusher ledgered them (the durability window). Kept for the record, never
-- ledgered: the users were rebuilt without them. Not drift: reconcile does not count them.
CREATE TABLE lost_entries (
    stream text NOT NULL,
    stream_id text NOT NULL,
    run text NOT NULL,
    fields jsonb NOT NULL,
    lost_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, stream_id)
);
