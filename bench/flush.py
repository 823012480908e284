"""The flusher under load: awards produced at a fixed rate (the peak the service reached), one
flusher consumer (as in one ``serve`` worker) moving them to Postgres, the lag sampled."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import uvloop

from bench.cpu import tree_cpu
from bench.direct import load_award_script, new_user_args
from counters.exp.types import AwardCall
from counters.redis.keys import stream_key
from counters.settings import Settings
from persistence.flusher import Flusher, stream_lag
from persistence.store import Store

_SAMPLE_EVERY = 0.25
_TICK = 0.01


@dataclass(frozen=True, slots=True)
class DrainResult:
    events: int
    seconds: float
    rows_per_second: float
    cpu_seconds: float  # this process's CPU (the flusher's Python and driver) while draining


@dataclass(frozen=True, slots=True)
class RateResult:
    target_rate: float
    awards_per_second: float  # award calls made (a refused award writes no event)
    events_per_second: float  # ledger events they produced
    flushed_per_second: float  # ledger rows written per second while producing
    max_lag_seconds: float
    max_lag_events: int
    catch_up_seconds: float  # after producing stopped, until the streams were empty
    # CPU per event ledgered from the end of the consumers' start-up to the end of the catch-up
    # (us): "flusher" the consumer processes together, then each of ``meters`` (Postgres, ...)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)


async def _open(
    redis_url: str, database_url: str, buckets: int, lease_ms: int = 0, linger_ms: int | None = None
) -> tuple[Flusher, Store]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = await Store.open(database_url)
    # As `serve` runs it unless told (the drain does not linger)
    linger = Settings().flush_linger_ms if linger_ms is None else linger_ms
    flusher = Flusher(
        client, store, buckets=buckets, block_ms=100, linger_ms=linger, lease_ms=lease_ms
    )
    return flusher, store


async def empty_ledger(database_url: str) -> None:
    """Empty the ledger's tables: each bench target restarts Redis from the same state, so the
    same event ids come again (in production Redis never forgets what Postgres has not seen)."""
    store = await Store.open(database_url)
    try:
        async with store.connection("bench") as conn:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_migrations'"
            )
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await conn.execute(f"TRUNCATE {names}")
    finally:
        await store.close()


async def drain(redis_url: str, database_url: str, buckets: int) -> DrainResult:
    """Flush everything the streams hold, flat out: the flusher's capacity."""
    flusher, store = await _open(redis_url, database_url, buckets)
    try:
        started, cpu_from = time.perf_counter(), time.process_time()
        events = await flusher.drain()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_from
    finally:
        await store.close()
    return DrainResult(events, seconds, events / seconds if seconds else 0.0, cpu_seconds)


def _consume(
    redis_url: str,
    database_url: str,
    buckets: int,
    stop: object,
    lease_ms: int = 0,
    linger_ms: int | None = None,
) -> None:
    async def run() -> None:
        flusher, store = await _open(redis_url, database_url, buckets, lease_ms, linger_ms)
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
            done.set()

        watcher = asyncio.create_task(watch())
        try:
            await flusher.run(done)
        finally:
            watcher.cancel()
            await store.close()

    uvloop.run(run())


async def at_rate(
    redis_url: str,
    database_url: str,
    buckets: int,
    calls: Sequence[AwardCall],
    rate: float,
    *,
    consumers: int = 1,
    lease_ms: int = 0,
    linger_ms: int | None = None,
    meters: dict[str, Callable[[], float]] | None = None,
) -> RateResult:
    """Produce ``calls`` at ``rate`` awards/s while ``consumers`` flusher processes (as many
    ``serve`` workers, with the flush lease ``lease_ms`` or none, lingering ``linger_ms`` or as
    the settings' default) drain them. ``meters``: more
    CPU seconds to count per event (e.g. Postgres's process tree; Redis's would count the awards
    too)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes = [
        context.Process(
            target=_consume,
            args=(redis_url, database_url, buckets, stop, lease_ms, linger_ms),
            daemon=True,
        )
        for _ in range(consumers)
    ]
    for process in processes:
        process.start()
    meters = {"flusher": lambda: sum(tree_cpu(p.pid or 0) for p in processes), **(meters or {})}
    script = await load_award_script(redis_url)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    streams = [stream_key(bucket) for bucket in range(buckets)]
    max_lag_seconds, max_lag_events = 0.0, 0
    producing = True

    async def sample() -> None:
        nonlocal max_lag_seconds, max_lag_events
        while producing:
            lag = await stream_lag(client, streams)
            max_lag_seconds = max(max_lag_seconds, lag.seconds)
            max_lag_events = max(max_lag_events, lag.events)
            await asyncio.sleep(_SAMPLE_EVERY)

    try:
        await asyncio.sleep(2.0 + consumers)  # the consumer processes start, join the group
        ledger_before = await _ledger_rows(database_url)
        cpu_before = {name: meter() for name, meter in meters.items()}
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        sent = 0
        while sent < len(calls):
            due = min(int((time.perf_counter() - started) * rate), len(calls))
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for call in calls[sent:due]:
                    pipe.execute_command(*script, *new_user_args(call))
                await pipe.execute()
                sent = due
            await asyncio.sleep(_TICK)
        produced_seconds = time.perf_counter() - started
        flushed = await _ledger_rows(database_url) - ledger_before
        producing = False
        await sampler
        catch_up_started = time.perf_counter()
        while (await stream_lag(client, streams)).events and time.perf_counter() < (
            catch_up_started + 60
        ):
            await asyncio.sleep(0.05)
        catch_up = time.perf_counter() - catch_up_started
        cpu_after = {name: meter() for name, meter in meters.items()}
        events = await _ledger_rows(database_url) - ledger_before
    finally:
        stop.set()
        for process in processes:
            process.join(20)
            if process.is_alive():
                process.kill()
        await client.aclose()
    per_event = 1e6 / max(events, 1)
    cpu = {name: round((cpu_after[name] - cpu_before[name]) * per_event, 1) for name in meters}
    return RateResult(
        rate, sent / produced_seconds, events / produced_seconds, flushed / produced_seconds,
        max_lag_seconds, max_lag_events, catch_up, cpu,
    )  # fmt: skip


async def _ledger_rows(database_url: str) -> int:
    store = await Store.open(database_url)
    try:
        async with store.connection("bench") as conn:
            count: int = await conn.fetchval("SELECT count(*) FROM ledger")
    finally:
        await store.close()
    return count


async def quarantined(database_url: str) -> dict[str, int]:
    """Events the flusher could not ledger, by reason (there should be none)."""
    store = await Store.open(database_url)
    try:
        async with store.connection("bench") as conn:
            rows = await conn.fetch(
                "SELECT reason, count(*) AS n FROM ledger_quarantine GROUP BY reason"
            )
    finally:
        await store.close()
    return {row["reason"]: row["n"] for row in rows}
