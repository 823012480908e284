"""The ledger's lag over many bucket streams, cheap when idle (issue #12; persistence/streams.py).

``exact_lag`` (``/readyz``) counts every stream; ``LagProbe`` (the durability window) looks at
active streams every refresh and at idle ones a slice at a time, so a stream that starts filling
is counted within ``buckets / slice`` refreshes, and a drained one at once. And the flush
barrier's locks stay bounded however many buckets a batch spans. Real Redis and Postgres."""

from __future__ import annotations

import math

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from counters.redis.keys import stream_key
from counters.redis.pipelining import AutoPipeline
from counters.redis.scripts import Scripts
from persistence.flusher import Flusher, longest_block_ms
from persistence.runs import LOCK_STRIPES, barriers, lock_key, retired_runs
from persistence.store import Store
from persistence.streams import LagProbe, exact_lag

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("buckets", [16, 1024])
async def test_the_probe_sees_every_stream_within_one_sweep_and_is_then_exact(
    redis_url: str, buckets: int
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        streams = [stream_key(bucket) for bucket in range(buckets)]
        filled = {streams[0]: 2, streams[buckets // 2]: 3, streams[-1]: 1}
        for stream, n in filled.items():
            for _ in range(n):
                await client.xadd(stream, {"kind": "test"})
        assert (await exact_lag(client, streams)).events == 6
        probe = LagProbe(client, streams, slice_size=16)
        sweep = math.ceil(buckets / 16)
        seen = [(await probe.refresh()).events for _ in range(sweep)]
        assert seen[-1] == 6 and seen == sorted(seen)  # never over-counts, exact after a sweep
        assert (await probe.refresh()).seconds >= 0.0
        await client.xtrim(streams[buckets // 2], maxlen=0)  # the flusher drained it
        assert (await probe.refresh()).events == 3  # active streams: at every refresh
        lag = await exact_lag(client, streams)
        assert lag.events == 3 and lag.seconds >= 0.0
        pipeline = AutoPipeline(redis_url)  # /readyz: the lengths on the scripts' transport
        try:
            assert (
                await exact_lag(client, streams, Scripts(client, pipeline).send_many)
            ).events == 3
        finally:
            await pipeline.aclose()
    finally:
        await client.aclose()


async def test_an_idle_flusher_blocks_longer_and_a_read_resets_it(
    redis_url: str, database_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = await Store.open(database_url)
    try:
        flusher = Flusher(client, store, buckets=16, block_ms=5)
        waits = []
        for _ in range(4):
            waits.append(flusher._idle_block_ms())
            assert await flusher.flush_once() == 0
        assert waits == [5, 10, 20, 20] and longest_block_ms(5) == 20
        await client.xadd(stream_key(3), {"kind": "garbage"})  # read (and quarantined)
        assert await flusher.flush_once() == 1
        assert flusher._idle_block_ms() == 5
    finally:
        await client.aclose()
        await store.close()


async def test_a_flush_over_every_bucket_takes_a_bounded_number_of_locks(
    database_url: str,
) -> None:
    # A batch touching all 1,024 buckets shares LOCK_STRIPES advisory locks, not 1,024
    # (Postgres's shared lock table is ~64 per connection); a barrier on any bucket of a
    # stripe waits for it (persistence/runs.py).
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            assert await retired_runs(conn, [(b, "r1") for b in range(1024)]) == set()
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()"
            )
        assert held == LOCK_STRIPES == 64
        assert {lock_key(b) for b in range(16)} == set(range(16))  # 16 buckets: as before
    finally:
        await conn.close()


async def test_one_batched_barrier_retires_the_older_runs_of_every_bucket(
    database_url: str,
) -> None:
    # The restore after a loss opens the barriers of up to 256 buckets in one transaction
    # (persistence/runs.py ``barriers``): each bucket's older runs are retired, its own is not.
    conn = await asyncpg.connect(database_url)
    try:
        old = [(b, "r1") for b in range(300)]
        async with conn.transaction():
            assert await retired_runs(conn, old) == set()  # a flush registered the old runs
        await barriers(conn, [(b, "r2") for b in range(0, 300, 2)])  # even buckets restored
        async with conn.transaction():
            retired = await retired_runs(conn, [*old, *((b, "r2") for b in range(300))])
        assert retired == {(b, "r1") for b in range(0, 300, 2)}
    finally:
        await conn.close()
