"""The flusher against the suite's real Redis and Postgres: exactly once, whatever fails when."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import Awaitable, Callable
from dataclasses import replace

import anyio
import httpx2
import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from starlette.applications import Starlette

from api.app import create_app
from counters.cli.embedded import PostgresServer, free_port
from counters.cli.main import main
from counters.clock import ManualClock
from counters.errors import StorageError
from counters.redis.keys import FLUSH_LEASE_KEY, UserKeys, bucket_of, stream_key
from counters.settings import Settings
from persistence.events import COMPACT, SEP, Batch, Rejected, expand
from persistence.events import sort_entries as sort
from persistence.flusher import GROUP, HELP, HOLD, MAX_LEASE_MS, STAND_BY, stream_lag
from persistence.store import Store
from persistence.writer import OLD_READER_REASON, escape_text, unescape_text
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, fetchval, flusher, services, store

pytestmark = pytest.mark.anyio


async def award(client: httpx2.AsyncClient, user: str, action: str = "daily_chat") -> int:
    response = await client.post(
        "/api/exp/gain", json={"action": action}, headers=user_headers(user)
    )
    assert response.status_code == 200, response.text
    total: int = response.json()["total_exp"]
    return total


async def adjust(client: httpx2.AsyncClient, user: str, delta: int, key: str = "") -> int:
    headers = service_headers(**({"Idempotency-Key": key} if key else {}))
    body = {"user_id": user, "delta": delta, "reason": "support"}
    response = await client.post("/api/admin/exp/adjust", json=body, headers=headers)
    assert response.status_code == 200, response.text
    total: int = response.json()["total_exp"]
    return total


async def burst(client: httpx2.AsyncClient, users: list[str], rounds: int) -> dict[str, int]:
    """Awards and corrections for every user; returns each user's total as the API said."""
    totals: dict[str, int] = {}
    for user in users:
        totals[user] = await award(client, user)
        for n in range(rounds):
            totals[user] = await adjust(client, user, 7 if n % 3 else -3)
    return totals


async def ledger_count(app: Starlette) -> int:
    count: int = await fetchval(app, "SELECT count(*) FROM ledger")
    return count


async def assert_ledger_matches(app: Starlette, totals: dict[str, int]) -> None:
    """Every user's ledger sums to the total the API reported, and so do their totals."""
    for user, total in totals.items():
        rows = await fetch(
            app, "SELECT seq, amount FROM ledger WHERE user_id = $1 ORDER BY seq", user
        )
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1)), user
        assert sum(row["amount"] for row in rows) == total, user
        stored = await fetch(app, "SELECT exp, seq FROM user_totals WHERE user_id = $1", user)
        assert (stored[0]["exp"], stored[0]["seq"]) == (total, len(rows)), user


async def test_events_become_ledger_rows_and_totals(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    await award(durable_client, "ann")
    await adjust(durable_client, "ann", 40, key="fix-1")
    await adjust(durable_client, "ann", 40, key="fix-1")  # replayed: no second event
    handled = await flusher(durable_app).drain()
    assert handled == 3  # two events and the keyed adjust's idempotency record
    rows = await fetch(durable_app, "SELECT * FROM ledger ORDER BY seq")
    assert [(r["event_id"], r["kind"], r["action"], r["amount"]) for r in rows] == [
        ("ann:1", "exp_award", "daily_chat", 20),
        ("ann:2", "exp_adjust", "support", 40),
    ]
    first, second = rows
    assert first["day"] == "20261121" and first["idem"] is None and first["actor"] == "ann"
    assert second["idem"] == "fix-1" and second["day"] is None
    assert first["totals"] == '{"exp": 20, "level": 1}'
    assert first["occurred_at"].timestamp() == services(durable_app).clock.now()
    await assert_ledger_matches(durable_app, {"ann": 60})
    lag = await stream_lag(services(durable_app).redis, flusher(durable_app).streams)
    assert (lag.events, lag.seconds) == (0, 0.0)  # acknowledged entries are deleted


async def test_a_batch_written_twice_changes_nothing(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    await burst(durable_client, ["ann", "bob"], 3)
    stream_entries = []
    redis_client = services(durable_app).redis
    for stream in flusher(durable_app).streams:
        stream_entries += [(stream, sid, f) for sid, f in await redis_client.xrange(stream)]
    batch = sort(stream_entries)
    first = await store(durable_app).write(batch)
    second = await store(durable_app).write(batch)
    assert (first.inserted, first.duplicates) == (8, 0)
    assert (second.inserted, second.duplicates, second.quarantined) == (0, 8, 0)
    assert await ledger_count(durable_app) == 8


async def test_a_batch_partly_ledgered_adds_only_its_new_events(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """New events are copied straight into the ledger; a batch holding one already there goes
    by ON CONFLICT instead, and its rows come out the same as the copied ones."""
    totals = await burst(durable_client, ["ann", "bob"], 3)
    redis_client = services(durable_app).redis
    entries = []
    for stream in flusher(durable_app).streams:
        entries += [(stream, sid, f) for sid, f in await redis_client.xrange(stream)]
    entries.sort(key=lambda e: (expand(e[2]).get("user", ""), int(expand(e[2]).get("seq", 0))))
    ann = [e for e in entries if expand(e[2]).get("user") == "ann"]
    first = await store(durable_app).write(sort(ann))  # copied: none was ledgered yet
    both = await store(durable_app).write(sort(entries))  # ann's again, and bob's new ones
    assert (first.inserted, first.duplicates) == (4, 0)
    assert (both.inserted, both.duplicates, both.quarantined) == (4, 4, 0)
    await assert_ledger_matches(durable_app, totals)
    rows = await fetch(durable_app, "SELECT user_id, seq, occurred_at, totals FROM ledger")
    by_path = {(r["user_id"], r["seq"]): r for r in rows}
    for user in ("ann", "bob"):  # the same columns whichever way the rows went in
        one = by_path[(user, 2)]
        assert one["occurred_at"].timestamp() == services(durable_app).clock.now()
        assert set(orjson.loads(one["totals"])) == {"exp", "level"}


async def test_killed_between_commit_and_ack_loses_and_duplicates_nothing(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    totals = await burst(durable_client, ["ann", "bob", "cy"], 4)

    class Killed(Exception):
        pass

    async def die(batch: Batch) -> None:
        raise Killed

    doomed = flusher(durable_app, after_commit=die)
    with pytest.raises(Killed):
        await doomed.flush_once(block=False)
    assert await ledger_count(durable_app) == 15  # committed...
    redis_client = services(durable_app).redis
    pending = sum([(await redis_client.xpending(s, GROUP))["pending"] for s in doomed.streams])
    assert pending == 15  # ...but never acknowledged

    # Another process takes over the dead consumer's entries (claimed at once: idle >= 0 ms).
    heir = flusher(durable_app, claim_idle_ms=0)
    assert await heir.drain() == 15
    assert (heir.stats.inserted, heir.stats.duplicates) == (0, 15)
    assert await ledger_count(durable_app) == 15
    await assert_ledger_matches(durable_app, totals)
    lag = await stream_lag(redis_client, heir.streams)
    assert lag.events == 0


async def test_a_claim_forgets_idle_consumers_with_nothing_pending_only(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await burst(durable_client, ["ann"], 2)
    doomed = flusher(durable_app, after_commit=_die)
    with pytest.raises(_Killed):
        await doomed.flush_once(block=False)  # read, never acknowledged: 3 entries pending
    redis_client = services(durable_app).redis
    stream = stream_key(bucket_of("ann", services(durable_app).settings.key_buckets))
    await redis_client.xgroup_createconsumer(stream, GROUP, "ghost")  # nothing pending
    monkeypatch.setattr("persistence.flusher._FORGET_CONSUMER_MS", -1)  # every one is idle
    heir = flusher(durable_app, claim_idle_ms=3_600_000)  # claims nothing: only forgets
    assert await heir.flush_once(block=False) == 0
    names = {c["name"] for c in await redis_client.xinfo_consumers(stream, GROUP)}
    assert "ghost" not in names and doomed.consumer in names


class _Killed(Exception):
    pass


async def _die(batch: Batch) -> None:
    raise _Killed


async def test_a_failed_acknowledgement_is_retried_by_the_same_consumer(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    totals = await burst(durable_client, ["ann"], 5)
    failures = iter([StorageError("ack lost")])

    async def flaky(batch: Batch) -> None:
        for failure in failures:
            raise failure

    one = flusher(durable_app, after_commit=flaky, backoff_max=0.01)
    assert await one.drain() == 6  # the first attempt failed after commit; the retry re-read it
    # The first write committed but was never acknowledged; the re-read found all 6 ledgered.
    assert (one.stats.inserted, one.stats.duplicates, one.stats.events) == (0, 6, 6)
    assert await ledger_count(durable_app) == 6
    await assert_ledger_matches(durable_app, totals)


async def test_postgres_down_during_a_burst_then_back(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, postgres_server: PostgresServer
) -> None:
    users = [f"user{n}" for n in range(6)]
    for user in users:  # known to Redis before the outage (a new user needs Postgres once)
        await adjust(durable_client, user, 1)
    worker = flusher(durable_app, backoff_max=0.05)
    assert await worker.drain() == 6  # the pool now holds connections that are about to break

    postgres_server.stop()
    try:
        totals = await burst(durable_client, users, 5)  # the API keeps serving from Redis
        with pytest.raises(StorageError):
            await worker.flush_once(block=False)
        lag = await stream_lag(services(durable_app).redis, worker.streams)
        assert lag.events == 36  # nothing lost: all waiting in Redis
    finally:
        postgres_server.start()  # same port, same data dir

    assert await worker.drain(max_failures=20) >= 36
    assert await ledger_count(durable_app) == 42
    await assert_ledger_matches(durable_app, totals)


async def test_flushall_recreates_the_consumer_group(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await award(durable_client, "ann")
    worker = flusher(durable_app)
    assert await worker.drain() == 1
    redis_client.flushall()
    assert await adjust(durable_client, "ann", 5) == 25  # hydrated from Postgres first
    assert await worker.drain() == 1
    await assert_ledger_matches(durable_app, {"ann": 25})


async def test_entity_owners_are_recorded_from_claims_and_assignments(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    body = {"action": "create_character", "target_type": "character", "target_id": "c1"}
    response = await durable_client.post("/api/exp/gain", json=body, headers=service_headers("ann"))
    assert response.status_code == 200
    response = await durable_client.put(
        "/api/entities/scene/s1", json={"owner_id": "bob"}, headers=service_headers()
    )
    assert response.status_code == 200
    response = await durable_client.put(
        "/api/entities/scene/s1", json={"owner_id": "cy"}, headers=service_headers()
    )
    assert response.status_code == 200
    await flusher(durable_app).drain()
    rows = await fetch(durable_app, "SELECT * FROM entity_owners ORDER BY entity_type")
    assert [(r["entity_type"], r["entity_id"], r["owner_id"], r["version"]) for r in rows] == [
        ("character", "c1", "ann", 1),
        ("scene", "s1", "cy", 2),  # the later of two assignments, in one batch
    ]
    assert await ledger_count(durable_app) == 1  # owners are not ledger rows


async def test_entries_that_cannot_be_ledgered_are_quarantined_not_dropped(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    await award(durable_client, "ann")
    redis_client = services(durable_app).redis
    stream = UserKeys.of("ann", 16).events
    await redis_client.xadd(stream, {"kind": "exp_award", "user": "ann"})  # malformed
    await flusher(durable_app).drain()
    # The same event id again from another entry: Redis lost flushed writes and reused a seq.
    await redis_client.xadd(
        stream,
        {
            "event_id": "ann:1",
            "user": "ann",
            "seq": 1,
            "ts": 1,
            "kind": "exp_award",
            "amount": 5,
            "day": "20261121",
            "exp": 5,
            "level": 1,
        },
    )
    await flusher(durable_app).drain()
    rows = await fetch(durable_app, "SELECT reason FROM ledger_quarantine ORDER BY recorded_at")
    assert [r["reason"] for r in rows] == [
        "missing event_id, seq, ts, amount",
        rows[1]["reason"],
    ]
    assert rows[1]["reason"].startswith("event_id ann:1 already ledgered from stream entry ")
    assert await ledger_count(durable_app) == 1
    assert (await stream_lag(redis_client, [stream])).events == 0


async def test_lag_counts_unflushed_events_and_the_oldest_ones_age(
    durable_app: Starlette,
) -> None:
    redis_client = services(durable_app).redis
    now_ms = int((await redis_client.time())[0]) * 1000
    await redis_client.xadd(stream_key(3), {"kind": "x"}, id=f"{now_ms - 90_000}-0")
    await redis_client.xadd(stream_key(5), {"kind": "x"}, id=f"{now_ms - 30_000}-0")
    lag = await stream_lag(redis_client, [stream_key(b) for b in range(16)])
    assert lag.events == 2
    assert 90 <= lag.seconds < 100


async def test_serve_runs_the_flusher_in_the_background_and_stops_it_cleanly(
    durable_settings: Settings, clock: ManualClock
) -> None:
    settings = replace(durable_settings, flusher_enabled=True, flush_block_ms=20)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://c") as client:
            await adjust(client, "ann", 5)
            for _ in range(500):  # waits for the background task, bounded; nothing is timed
                if await ledger_count(app):
                    break
                await asyncio.sleep(0.01)
            assert await ledger_count(app) == 1
        task = app.state.durability._task
    assert task is not None and task._task is not None and task._task.done()


def invoke(args: list[str], settings: Settings) -> Result:
    env = {"COUNTERS_REDIS_URL": settings.redis_url, "COUNTERS_DATABASE_URL": settings.database_url}
    return CliRunner().invoke(main, args, env=env)


async def test_the_migrate_and_flush_commands(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, durable_settings: Settings
) -> None:
    await burst(durable_client, ["ann"], 2)
    migrated = await anyio.to_thread.run_sync(invoke, ["migrate"], durable_settings)
    assert (migrated.exit_code, migrated.output) == (0, "schema up to date\n")
    flushed = await anyio.to_thread.run_sync(invoke, ["flush", "--burst"], durable_settings)
    assert (flushed.exit_code, flushed.output) == (0, "flushed 3 events\n")
    assert await ledger_count(durable_app) == 3


async def test_a_lingering_flusher_writes_what_came_meanwhile_in_one_transaction(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """After a small batch the flusher waits ``linger_ms`` before reading again, so the events
    made meanwhile share one transaction (one ``recorded_at``: the transaction's ``now()``)."""
    lingering = flusher(durable_app, linger_ms=1_000)
    stop = asyncio.Event()
    task = asyncio.create_task(lingering.run(stop))
    try:
        await adjust(durable_client, "ann", 5)
        for _ in range(500):  # the first event is written at once; the flusher then lingers
            if await ledger_count(durable_app):
                break
            await asyncio.sleep(0.01)
        for _ in range(3):
            await adjust(durable_client, "ann", 5)
        for _ in range(500):
            if await ledger_count(durable_app) == 4:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # a stop ends the lingering wait at once
    rows = await fetch(durable_app, "SELECT seq, recorded_at FROM ledger ORDER BY seq")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["recorded_at"] < rows[1]["recorded_at"]
    assert len({r["recorded_at"] for r in rows[1:]}) == 1


async def test_a_large_reply_is_read_whole_and_the_collector_is_on_while_a_read_waits(
    durable_app: Starlette,
) -> None:
    """The flusher pauses the cyclic collector while a reply's bytes arrive (issue #11: its
    collections cost more than hiredis's parse), not while a blocking read waits for events (the
    whole process would run uncollected), and turns it back on after the read."""
    svc = services(durable_app)
    stream = UserKeys.of("ann", svc.settings.key_buckets).events
    reader = flusher(durable_app, block_ms=2_000)
    waiting = asyncio.create_task(reader.flush_once())
    await asyncio.sleep(0.2)  # the blocking XREADGROUP is waiting now
    assert not waiting.done() and gc.isenabled()
    async with svc.redis.pipeline(transaction=True) as pipe:  # all at once: one reply
        for seq in range(1, 801):  # ~250 KB: the reply comes in several socket reads
            pipe.xadd(stream, {
                "event_id": f"ann:{seq}", "user": "ann", "seq": seq, "ts": 1_700_000_000_000,
                "kind": "exp_adjust", "action": "adjust", "amount": 1, "exp": seq, "level": 1,
            })  # fmt: skip
        await pipe.execute()
    assert await asyncio.wait_for(waiting, 10) == 800
    assert gc.isenabled()
    assert await ledger_count(durable_app) == 800
    assert await fetchval(durable_app, "SELECT exp FROM user_totals WHERE user_id = 'ann'") == 800


async def test_a_stream_mixing_both_entry_formats_is_ledgered_once(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """A rolling upgrade: entries an older worker wrote (one field per name, ``event_id``
    included) and this release's compact ones, interleaved in the same streams, are ledgered
    alike, each once, and a second delivery of the mixed batch changes nothing."""
    totals = await burst(durable_client, ["ann", "bob"], 3)
    totals["ann"] = await adjust(durable_client, "ann", 9, key="fix-1")  # and a record
    redis_client = services(durable_app).redis
    written = 0
    for stream in flusher(durable_app).streams:
        entries = await redis_client.xrange(stream)
        if entries:
            await redis_client.xdel(stream, *(sid for sid, _ in entries))
        for n, (_, fields) in enumerate(entries):  # every other one as an older worker wrote it
            assert list(fields) == [COMPACT]
            await redis_client.xadd(stream, expand(fields) if n % 2 else fields)
        written += len(entries)
    assert written == 10
    entries = []
    for stream in flusher(durable_app).streams:
        entries += [(stream, sid, f) for sid, f in await redis_client.xrange(stream)]
    assert sum(COMPACT not in f for _, _, f in entries) == 5  # named: the older format
    again = await store(durable_app).write(sort(entries))  # as if delivered before a crash
    assert (again.inserted, again.quarantined) == (9, 0)
    draining = flusher(durable_app)
    assert await draining.drain() == 10
    assert (draining.stats.duplicates, draining.stats.quarantined) == (9, 0)  # ledgered once
    await assert_ledger_matches(durable_app, totals)
    records = await fetchval(durable_app, "SELECT count(*) FROM redis_records")
    assert records == 1  # the keyed adjust's idempotency record, from either format


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    """Poll ``check`` until it holds; a bound on the wait, not a timing: on a cluster, with
    another suite running beside it, a helping flusher once took over 10 s to get there."""
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")


async def test_one_flusher_holds_the_lease_the_other_stands_by_then_takes_over(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """With a lease, one of two workers' flushers flushes; the other only checks the lease, and
    takes over when the holder stops (it releases the lease) or its lease lapses."""
    first, second = flusher(durable_app, lease_ms=8_000), flusher(durable_app, lease_ms=8_000)
    stops = asyncio.Event(), asyncio.Event()
    one = asyncio.create_task(first.run(stops[0]))
    await _until(lambda: _true(first.role == HOLD))
    two = asyncio.create_task(second.run(stops[1]))
    try:
        for n in range(3):
            await adjust(durable_client, "ann", 5 + n)
        await _until(lambda: _true(first.stats.events == 3))  # acknowledged after the commit
        assert (await ledger_count(durable_app), second.stats.events) == (3, 0)
        assert second.role == STAND_BY
        stops[0].set()
        await asyncio.wait_for(one, 5)  # stopping releases the lease
        await adjust(durable_client, "ann", 9)
        await _until(lambda: _true(second.stats.events == 1))
        assert (second.role, await ledger_count(durable_app)) == (HOLD, 4)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(one, two), 10)
    assert await services(durable_app).redis.get(FLUSH_LEASE_KEY) is None


async def test_a_flusher_standing_by_helps_a_holder_that_is_behind(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """A holder whose last read filled a stream's batch (more was waiting) marks the lease: the
    flushers standing by flush too until it has caught up."""
    redis_client = services(durable_app).redis
    standing = flusher(durable_app, lease_ms=400)
    stop = asyncio.Event()
    await redis_client.set(FLUSH_LEASE_KEY, "elsewhere|0", px=60_000)  # another worker holds it
    task = asyncio.create_task(standing.run(stop))
    try:
        await adjust(durable_client, "ann", 5)
        await asyncio.sleep(0.5)  # a few lease checks
        assert (standing.role, await ledger_count(durable_app)) == (STAND_BY, 0)
        await redis_client.set(FLUSH_LEASE_KEY, "elsewhere|1", px=60_000)  # behind: help
        await _until(lambda: _true(standing.stats.events == 1))
        assert (standing.role, await ledger_count(durable_app)) == (HELP, 1)
        assert await redis_client.get(FLUSH_LEASE_KEY) == "elsewhere|1"  # still the other's
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await redis_client.get(FLUSH_LEASE_KEY) == "elsewhere|1"  # not ours to release


async def test_a_holder_that_cannot_reach_postgres_asks_the_others_to_help(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """An attacker's finding: a worker cut off from Postgres (its own partition) held the lease
    and renewed it after every failed write, so the deployment's ledger stopped and, past the
    durability window, every write of every worker got 503. A failing holder now marks the
    lease "failing" (``|2``): the others flush too, and claim what it read and could not write
    (its retries wait half a lease, so those entries age past a quarter of it); it stays the
    holder."""
    svc = services(durable_app)
    unreachable = await Store.open(f"postgresql://counters@127.0.0.1:{free_port()}/none")
    kind = type(flusher(durable_app))
    # A lease of 6 s: with 2 s, on a slow VM running the cluster, the cut-off holder once went
    # 2 s without renewing it and the healthy one took the lease over instead of helping
    cut_off = kind(svc.redis, unreachable, buckets=svc.settings.key_buckets, block_ms=10,
                   lease_ms=6_000, backoff_max=0.2)  # fmt: skip
    healthy = flusher(durable_app, lease_ms=6_000)
    stops = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(cut_off.run(stops[0]))
    second = None
    try:
        await _until(lambda: _true(cut_off.role == HOLD))
        second = asyncio.create_task(healthy.run(stops[1]))
        await adjust(durable_client, "ann", 5)
        await _until(lambda: _true(healthy.stats.events == 1))
        assert (healthy.role, await ledger_count(durable_app)) == (HELP, 1)
        assert cut_off.stats.failures >= 1 and cut_off.role == HOLD
        lease = await svc.redis.get(FLUSH_LEASE_KEY)
        assert lease == f"{cut_off.consumer}|2"
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(first, *([second] if second else [])), 10)
        await unreachable.close()


async def test_a_lease_key_without_an_expiry_is_taken_over(durable_app: Starlette) -> None:
    """An attacker's finding: one stray ``SET ctr:flush:lease ghost|0`` (no expiry) stopped the
    ledger for good. Every lease this code writes expires, so a key without one is taken."""
    redis_client = services(durable_app).redis
    await redis_client.set(FLUSH_LEASE_KEY, "ghost-1-abc|0")
    taker = flusher(durable_app, lease_ms=8_000)
    assert await taker._lease() == HOLD
    assert await redis_client.get(FLUSH_LEASE_KEY) == f"{taker.consumer}|0"
    assert 0 < await redis_client.pttl(FLUSH_LEASE_KEY) <= 8_000


@pytest.mark.parametrize(
    ("value", "px"),
    [("ghost-1-abc|0", MAX_LEASE_MS + 60_000), ("ghost", 30_000), ("ghost|9", 30_000)],
)
async def test_a_lease_key_no_worker_could_have_written_is_taken_over(
    durable_app: Starlette, value: str, px: int
) -> None:
    """An attacker's finding: ``SET ctr:flush:lease ghost|0 PX 600000`` (an expiry, but longer
    than any lease) made every flusher stand by: the ledger stopped and, once the oldest event
    was ``COUNTERS_MAX_UNFLUSHED_SECONDS`` old, every write got 503 until the key expired. A
    key expiring later than ``MAX_LEASE_MS``, or whose value is not ``<consumer>|<state>``, is
    no lease a worker wrote: it is taken over."""
    redis_client = services(durable_app).redis
    await redis_client.set(FLUSH_LEASE_KEY, value, px=px)
    taker = flusher(durable_app, lease_ms=8_000)
    assert await taker._lease() == HOLD
    assert await redis_client.get(FLUSH_LEASE_KEY) == f"{taker.consumer}|0"
    assert 0 < await redis_client.pttl(FLUSH_LEASE_KEY) <= 8_000


async def test_the_longest_lease_a_worker_may_write_is_obeyed(durable_app: Starlette) -> None:
    """The other side of the rule above: another worker's lease of ``MAX_LEASE_MS`` (the most
    ``COUNTERS_FLUSH_LEASE_MS`` allows) is a lease, and this one stands by."""
    lease_field = next(f for f in dataclasses.fields(Settings) if f.name == "flush_lease_ms")
    assert lease_field.metadata["range"]["le"] == MAX_LEASE_MS
    redis_client = services(durable_app).redis
    await redis_client.set(FLUSH_LEASE_KEY, "other-2-def|0", px=MAX_LEASE_MS)
    standing = flusher(durable_app, lease_ms=8_000)
    assert await standing._lease() == STAND_BY
    assert await redis_client.get(FLUSH_LEASE_KEY) == "other-2-def|0"


async def test_a_holder_is_behind_when_a_read_fills_a_streams_batch(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """What the lease's "behind" says: the last read returned ``batch`` entries of some stream
    (COUNT is per stream), not that the iteration moved many events in all."""
    for n in range(3):
        await adjust(durable_client, "ann", 5 + n)
    holder = flusher(durable_app, batch=2, lease_ms=60_000)
    assert await holder._lease() == HOLD
    assert await holder.flush_once(block=False) == 2  # 2 of ann's 3: more is waiting
    assert await holder._lease() == HOLD
    redis_client = services(durable_app).redis
    assert await redis_client.get(FLUSH_LEASE_KEY) == f"{holder.consumer}|0"  # not yet told
    holder.iteration_done()  # as ``run`` does
    await holder._lease()
    assert await redis_client.get(FLUSH_LEASE_KEY) == f"{holder.consumer}|1"
    assert await holder.flush_once(block=False) == 1  # the last one: caught up
    assert not holder._full


async def _true(value: bool) -> bool:
    return value


async def test_numbers_of_fifteen_digits_or_more_are_written_exactly(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """Lua writes a number of 15 digits or more in exponent form (1e+14): the compact entry
    writes its digits instead (lua/lib/entry.lua), so it is ledgered, not quarantined."""
    await award(durable_client, "ann")  # 20 EXP
    keys = UserKeys.of("ann", services(durable_app).settings.key_buckets)
    await services(durable_app).redis.hset(keys.user, "exp", 10**14)
    total = await adjust(durable_client, "ann", 7, key="big-1")
    assert total == 10**14 + 7
    draining = flusher(durable_app)
    await draining.drain()
    assert draining.stats.quarantined == 0
    rows = await fetch(durable_app, "SELECT amount, totals FROM ledger ORDER BY seq")
    assert [orjson.loads(r["totals"])["exp"] for r in rows] == [20, 10**14 + 7]
    assert await fetchval(durable_app, "SELECT exp FROM user_totals") == 10**14 + 7


async def test_compact_entries_an_older_release_quarantined_are_ledgered_after_all(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    """During a rolling upgrade a worker of the release before the compact format reads a new
    entry as one without any field and quarantines it (acknowledged, gone from the stream). The
    new release's flusher ledgers those from the quarantine and marks them resolved; one the new
    reader refuses too stays, with its reason."""
    totals = await burst(durable_client, ["ann", "bob"], 2)
    totals["ann"] = await adjust(durable_client, "ann", 9, key="fix-1")  # and a record
    redis_client = services(durable_app).redis
    old_reader: list[Rejected] = []
    for stream in flusher(durable_app).streams:
        for sid, fields in await redis_client.xrange(stream):
            old_reader.append(Rejected(stream, sid, OLD_READER_REASON, dict(fields)))
            await redis_client.xdel(stream, sid)
    bogus = {COMPACT: SEP.join(["exp_award", "ann", "99"])}  # a field count no layout has
    old_reader.append(Rejected(old_reader[0].stream, "1-1", OLD_READER_REASON, bogus))
    await store(durable_app).quarantine(old_reader)
    assert len(old_reader) == 9  # 7 events, a record, the bogus one
    draining = flusher(durable_app)
    assert await draining.drain() == 0  # nothing in the streams: all from the quarantine
    await assert_ledger_matches(durable_app, totals)
    assert await fetchval(durable_app, "SELECT count(*) FROM redis_records") == 1
    rows = await fetch(
        durable_app, "SELECT stream_id, reason FROM ledger_quarantine WHERE resolved_at IS NULL"
    )
    assert [(r["stream_id"], r["reason"]) for r in rows] == [
        ("1-1", "exp_award entry with 2 fields, its layout has 12")
    ]
    await flusher(durable_app).drain()  # looked at again: nothing left to do
    assert await ledger_count(durable_app) == 7


def test_quarantined_text_is_unescaped_exactly() -> None:
    for text in ("plain", "a\\\\b", "nul\x00x", "\\x00 literal", "caf\u00e9", "bad\udcff", "\x1f|"):
        assert unescape_text(escape_text(text)) == text
