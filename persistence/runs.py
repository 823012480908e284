"""The flush barrier: a user is never rebuilt from Postgres rows an open flush may still change.

Each Redis incarnation of a bucket has a run id (``lua/lib/bucket.lua``: made from Redis's
clock when the bucket's record is missing, so a later incarnation has a larger id), and every
user event, record and entity owner change carries it. The flusher's transaction takes the
bucket's advisory lock (its stripe's: ``lock_key``) in SHARE mode, registers the runs of its
events in ``bucket_runs`` and sets the events of a retired run aside (``lost_entries``). Before
a user is hydrated, ``barrier`` takes the same lock EXCLUSIVELY, so it waits for every flush of
that bucket still open, and retires every older run: from then on the rows of that bucket are
final for the older incarnations, whatever a slow flusher holds. The events a retired run still
had in flight were lost with Redis (the durability window); none of them can land behind a
hydration and collide with the ids or the limits of the user's new events.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg  # type: ignore[import-untyped]

LOCK_CLASS = 0x63747221  # advisory lock namespace of the flush barrier ("ctr!")
# Buckets share LOCK_STRIPES advisory locks (bucket % LOCK_STRIPES): a flush batch spanning
# 1,024 buckets took 1,024 locks, and Postgres's shared lock table holds about
# max_locks_per_transaction (64) x max_connections in all: a few such flushers at once failed
# with "out of shared memory" (issue #12). A barrier waits for the flushes of its stripe, a
# superset of its bucket's. With 64 buckets or fewer a stripe is a bucket, as before.
LOCK_STRIPES = 64


def lock_key(bucket: int) -> int:
    """The advisory lock (in ``LOCK_CLASS``) of ``bucket``'s flush barrier."""
    return bucket % LOCK_STRIPES


_SHARE = """
SELECT pg_advisory_xact_lock_shared($1, b) FROM (SELECT unnest($2::int[]) AS b ORDER BY 1) s
"""
_REGISTER = """
INSERT INTO bucket_runs (bucket, run) SELECT * FROM unnest($1::int[], $2::text[])
ON CONFLICT (bucket, run) DO NOTHING
"""
# Registers the pairs a flush carries and returns those retired, in one statement: each pair is
# looked up once (a run is registered by the first batch that carries it, so nearly every pair
# is already there and only read); a new one is inserted (``ON CONFLICT``: another flusher may
# register it meanwhile). New rows are never retired. Before, an ``INSERT ... ON CONFLICT DO
# NOTHING`` of every pair and a ``SELECT`` of the retired ones looked each pair up twice, in two
# statements: with a batch spread over ~1,000 buckets that was ~0.7 us of Postgres CPU per
# ledgered event (issue #11).
_REGISTER_RETIRED = """
WITH pair AS (SELECT * FROM unnest($1::int[], $2::text[]) AS p(bucket, run)),
known AS (SELECT r.bucket, r.run, r.retired FROM bucket_runs r JOIN pair USING (bucket, run)),
added AS (
    INSERT INTO bucket_runs (bucket, run)
    SELECT bucket, run FROM pair
    WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.bucket = pair.bucket AND known.run = pair.run)
    ON CONFLICT (bucket, run) DO NOTHING
)
SELECT bucket, run FROM known WHERE retired
"""


async def retired_runs(
    conn: asyncpg.Connection, runs: Iterable[tuple[int, str]]
) -> set[tuple[int, str]]:
    """Inside the flusher's transaction: share each bucket's barrier until the commit (in
    ascending order, so two flushers and a barrier cannot deadlock), register ``runs`` and
    return those that a hydration has retired."""
    pairs = sorted(set(runs))
    if not pairs:
        return set()
    stripes = sorted({lock_key(bucket) for bucket, _ in pairs})
    await conn.execute(_SHARE, LOCK_CLASS, stripes)
    rows = await conn.fetch(_REGISTER_RETIRED, [b for b, _ in pairs], [r for _, r in pairs])
    return {(row["bucket"], row["run"]) for row in rows}


async def barrier(conn: asyncpg.Connection, bucket: int, run: str) -> None:
    """Wait for every open flush of ``bucket``, then retire its runs older than ``run``.

    After this commits, Postgres holds everything of the bucket's earlier incarnations it will
    ever hold: a user read now is not older than any event the ledger may still commit."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, lock_key(bucket))
        await conn.execute(_REGISTER, [bucket], [run])
        await conn.execute(
            "UPDATE bucket_runs SET retired = true WHERE bucket = $1 AND run < $2 AND NOT retired",
            bucket,
            run,
        )


_EXCLUSIVE = """
SELECT pg_advisory_xact_lock($1, b) FROM (SELECT unnest($2::int[]) AS b ORDER BY 1) s
"""
_RETIRE = """
UPDATE bucket_runs SET retired = true FROM unnest($1::int[], $2::text[]) AS n(bucket, run)
WHERE bucket_runs.bucket = n.bucket AND bucket_runs.run < n.run AND NOT bucket_runs.retired
"""


async def barriers(conn: asyncpg.Connection, runs: Iterable[tuple[int, str]]) -> None:
    """``barrier`` for many ``(bucket, run)`` in one transaction (the restore of every bucket
    after a loss: 16,384 transactions one by one took most of a restore, issue #12). The stripes
    are locked exclusively in ascending order, as flushers share them: no deadlock."""
    pairs = sorted(set(runs))
    if not pairs:
        return
    columns = [[b for b, _ in pairs], [r for _, r in pairs]]
    async with conn.transaction():
        await conn.execute(_EXCLUSIVE, LOCK_CLASS, sorted({lock_key(b) for b, _ in pairs}))
        await conn.execute(_REGISTER, *columns)
        await conn.execute(_RETIRE, *columns)
