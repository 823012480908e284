"""What the bucket count costs (issue #12): 16 buckets against the default 1,024.

``python -m bench.buckets [seconds] [counts...]`` (defaults: 6 s, counts 16 1024) starts a
throwaway Redis and Postgres and, for each bucket count, measures:

- **idle**: this process's CPU and Redis's CPU (``INFO cpu``) per second of wall time while
  nothing is written, for each background loop a ``serve`` worker runs over the buckets: the
  flusher's read loop (``Flusher.run``), the durability window's lag refresh (every
  ``lag_refresh_seconds``, as ``Durability``) and the bucket restore's pass (every
  ``restore_interval_seconds``, every bucket complete);
- **busy**: the flusher draining a day of awards spread over every bucket: events/s and this
  process's CPU per event;
- **leaderboard**: ``GET /api/exp/leaderboard``'s read (``Leaderboards.board``, all-time top
  10 and the reader's rank) over 20,000 ranked users: p50 and p99 latency, CPU per read.

The numbers depend on the machine's load: print ``uptime`` beside them (bench/README.md).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from bench import direct
from bench.flush import empty_ledger
from counters.cli.embedded import PostgresServer, RedisServer
from counters.exp.leaderboard import Period
from counters.redis.keys import board_keys, bucket_of
from counters.runtime.durability import lag_watch, make_restore
from counters.settings import Settings
from persistence.flusher import Flusher
from persistence.migrate import migrate_url
from persistence.store import Store

_RANKED_USERS = 20_000
_READS = 300
_DAY_USERS = 10_000


@dataclass(frozen=True, slots=True)
class Idle:
    loop: str
    client_ms_per_s: float  # this process's CPU, ms per second of wall time
    redis_ms_per_s: float  # redis-server's CPU, ms per second


async def _redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _measure(
    name: str,
    client: aioredis.Redis,
    seconds: float,
    body: Callable[[asyncio.Event], Coroutine[Any, Any, object]],
) -> Idle:
    stop = asyncio.Event()
    task = asyncio.create_task(body(stop))
    await asyncio.sleep(0.5)  # warm: groups made, first passes done
    cpu, redis_cpu, wall = time.process_time(), await _redis_cpu(client), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, redis_cpu = time.process_time() - cpu, await _redis_cpu(client) - redis_cpu
    wall = time.perf_counter() - wall
    stop.set()
    await task
    return Idle(name, 1000 * cpu / wall, 1000 * redis_cpu / wall)


async def idle(settings: Settings, seconds: float) -> list[Idle]:
    """Each background loop alone, over empty streams and complete buckets."""
    assert settings.redis_url is not None and settings.database_url is not None
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = await Store.open(settings.database_url)
    results: list[Idle] = []
    try:
        flusher = Flusher(client, store, buckets=settings.key_buckets)
        results.append(await _measure("flusher read", client, seconds, flusher.run))

        async def lag(stop: asyncio.Event) -> None:
            await lag_watch(client, settings, stop, lambda _lag: None)

        results.append(await _measure("lag refresh", client, seconds, lag))
        async with direct.services(settings) as svc:
            restore = make_restore(svc, store)
            await restore.restore_once()  # an empty ledger: every bucket marked complete
            interval = settings.restore_interval_seconds

            async def restoring(stop: asyncio.Event) -> None:
                await restore.run(stop, interval)

            results.append(await _measure("restore pass", client, seconds, restoring))
    finally:
        await client.aclose()
        await store.close()
    return results


@dataclass(frozen=True, slots=True)
class Busy:
    events: int
    events_per_second: float
    cpu_us_per_event: float


async def busy(settings: Settings) -> Busy:
    """Drain a day of awards by ``_DAY_USERS`` users, spread over every bucket."""
    assert settings.redis_url is not None and settings.database_url is not None
    async with direct.services(settings) as svc:
        calls = await direct.award_calls(svc, direct.typical_day(_DAY_USERS, "bk"))
    await direct.run_calls(settings.redis_url, calls)
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    store = await Store.open(settings.database_url)
    try:
        flusher = Flusher(client, store, buckets=settings.key_buckets, block_ms=100)
        await flusher.ensure_groups()
        cpu, wall = time.process_time(), time.perf_counter()
        events = await flusher.drain()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await client.aclose()
        await store.close()
    return Busy(events, events / wall, 1e6 * cpu / max(events, 1))


@dataclass(frozen=True, slots=True)
class BoardRead:
    p50_ms: float
    p99_ms: float
    cpu_us_per_read: float


async def leaderboard(settings: Settings) -> BoardRead:
    """Reads of the all-time board over ``_RANKED_USERS`` users (markers present)."""
    assert settings.redis_url is not None
    buckets = settings.key_buckets
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(_RANKED_USERS):
            user = f"rank{n}"
            board, _ = board_keys(bucket_of(user, buckets), "all")
            pipe.zadd(board, {user: (n * 7919) % 100_000})
        for bucket in range(buckets):
            pipe.set(board_keys(bucket, "all")[1], "1")
        await pipe.execute()
        async with direct.services(replace(settings, database_url=None)) as svc:
            boards = svc.leaderboards  # as served: on the scripts' auto-pipeline
            for n in range(20):  # warm
                await boards.board(Period.ALL, 10, f"rank{n}")
            took: list[float] = []
            cpu = time.process_time()
            for n in range(_READS):
                started = time.perf_counter()
                await boards.board(Period.ALL, 10, f"rank{(n * 37) % _RANKED_USERS}")
                took.append(time.perf_counter() - started)
            cpu = time.process_time() - cpu
    finally:
        await client.aclose()
    took.sort()
    return BoardRead(
        1000 * statistics.median(took), 1000 * took[int(len(took) * 0.99)], 1e6 * cpu / _READS
    )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
    counts = [int(arg) for arg in sys.argv[2:]] or [16, 1024]
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as redis_server,
        PostgresServer(Path(tmp) / "postgres") as postgres,
    ):
        asyncio.run(migrate_url(postgres.url))
        for count in counts:
            direct.restore(redis_server.url, [])
            asyncio.run(empty_ledger(postgres.url))
            base = direct.bench_settings(redis_url=redis_server.url, database_url=postgres.url)
            settings = replace(base, key_buckets=count)
            for row in uvloop.run(idle(settings, seconds)):
                print(
                    f"{count:6} buckets  idle {row.loop:13} client {row.client_ms_per_s:6.1f}"
                    f" ms/s  redis {row.redis_ms_per_s:6.1f} ms/s"
                )
            drained = uvloop.run(busy(settings))
            print(
                f"{count:6} buckets  busy flusher drain   {drained.events} events"
                f"  {drained.events_per_second:8.0f} events/s"
                f"  {drained.cpu_us_per_event:6.1f} us CPU/event"
            )
            read = uvloop.run(leaderboard(settings))
            print(
                f"{count:6} buckets  leaderboard read     p50 {read.p50_ms:6.2f} ms"
                f"  p99 {read.p99_ms:6.2f} ms  {read.cpu_us_per_read:7.0f} us CPU/read"
            )


if __name__ == "__main__":
    main()
