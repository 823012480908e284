"""Redis knows when it holds a bucket completely, and hydration never races the flusher (#11).

A complete bucket answers "new user" with no Postgres read (so new users work while Postgres is
down); a loss makes every bucket incomplete, and the background restore refills them. A flush of
an earlier Redis incarnation still open when a user is rebuilt is waited for (the flush barrier),
and one that starts after it cannot land: the ledger never shows an event twice or a limit
exceeded because of a loss.
"""

from __future__ import annotations

import asyncio

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.redis.keys import LAYOUT_FIELD, LAYOUT_KEY, UserKeys, meta_key, stream_key
from counters.runtime.durability import Durability
from persistence.events import sort_entries
from persistence.restore import BucketRestore
from persistence.writer import write_batch
from tests.support.core import user_headers
from tests.support.persistence import fetch, flusher, services, store

pytestmark = pytest.mark.anyio

CHAT = {"action": "daily_chat"}


def restorer(app: Starlette) -> BucketRestore:
    durability: Durability = app.state.durability
    assert durability.restore is not None
    return durability.restore


async def gain(client: httpx2.AsyncClient, user: str) -> httpx2.Response:
    return await client.post("/api/exp/gain", json=CHAT, headers=user_headers(user))


def each(client: redis.Redis, command: str, keys: list[str]) -> list[int]:
    """``command`` (EXISTS, XLEN) of each key, in one pipeline (split per node on a cluster):
    one EXISTS at a time took 6 s for 16,384 keys on the cluster."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command(command, key)
    found: list[int] = pipe.execute()
    return found


async def ledger(app: Starlette, user: str) -> list[tuple[str, str]]:
    rows = await fetch(
        app, "SELECT event_id, action FROM ledger WHERE user_id = $1 ORDER BY seq", user
    )
    return [(row["event_id"], row["action"]) for row in rows]


@pytest.mark.parametrize("key_buckets", [16, 1024, 16_384])  # /readyz exact (#12)
async def test_on_an_empty_ledger_every_bucket_is_complete_and_new_users_need_no_postgres(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
    key_buckets: int,
) -> None:
    assert await restorer(durable_app).restore_once() == 0
    buckets = services(durable_app).settings.key_buckets
    assert buckets == key_buckets
    ready = (await durable_client.get("/readyz")).json()
    assert ready["restore"]["complete_buckets"] == ready["restore"]["buckets"] == buckets
    postgres_server.stop()
    try:
        # brand-new users, Postgres down: served, because Redis knows they are new
        assert (await gain(durable_client, "newbie-1")).status_code == 200
        balance = await durable_client.get("/api/v1/xp/balance", headers=user_headers("nb-2"))
        assert balance.status_code == 200, balance.text
        redis_client.flushall()  # the loss takes the markers with it
        refused = await gain(durable_client, "newbie-3")
        assert refused.status_code == 503  # new or forgotten? Only Postgres can tell now
    finally:
        postgres_server.start()
    assert (await gain(durable_client, "newbie-3")).status_code == 200  # hydrated alone


@pytest.mark.parametrize("key_buckets", [16, 1024, 16_384])  # /readyz exact (#12)
async def test_after_a_loss_the_restore_refills_every_bucket_from_postgres(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
    key_buckets: int,
) -> None:
    users = [f"r-{n}" for n in range(40)]
    for user in users:
        assert (await gain(durable_client, user)).status_code == 200
    buckets = services(durable_app).settings.key_buckets
    assert buckets == key_buckets
    # Only the users' streams hold anything: drained alone, they ledger what a drain of every
    # stream would (every stream is empty after it). On the cluster a drain polls each of the
    # 16,384 streams several times through redis-py's pipeline (19 s of the test's 21 s).
    drainer = flusher(durable_app)
    drainer.streams = sorted({UserKeys.of(user, buckets).events for user in users})
    await drainer.drain()
    assert not any(each(redis_client, "XLEN", [stream_key(b) for b in range(buckets)]))
    redis_client.flushall()
    assert not any(each(redis_client, "EXISTS", [meta_key(b) for b in range(buckets)]))

    assert await restorer(durable_app).restore_once() == 0
    # The deployment's bucket count is recorded in Redis again (the next start needs no Postgres)
    assert redis_client.hget(LAYOUT_KEY, LAYOUT_FIELD) == str(buckets)

    for user in users:  # in Redis before anyone touched them, with today's counters
        keys = UserKeys.of(user, buckets)
        assert redis_client.hget(keys.user, "exp") == "20"
    ready = (await durable_client.get("/readyz")).json()["restore"]
    assert ready["complete_buckets"] == buckets and ready["users_restored"] == len(users)
    postgres_server.stop()
    try:
        assert (await gain(durable_client, users[0])).status_code == 429  # today's chat, kept
        assert (await gain(durable_client, "brand-new")).status_code == 200
    finally:
        postgres_server.start()


async def test_a_flush_of_a_lost_incarnation_cannot_land_behind_a_hydration(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A flusher read an award, then Redis lost everything, then the user came back: the old
    batch committing late must not double the day's chat or collide with the new event's id."""
    assert (await gain(durable_client, "u")).status_code == 200
    buckets = services(durable_app).settings.key_buckets
    stream = UserKeys.of("u", buckets).events
    late = sort_entries((stream, sid, f) for sid, f in redis_client.xrange(stream))
    assert len(late.events) == 1

    redis_client.flushall()  # the award was never ledgered: inside the durability window
    assert (await gain(durable_client, "u")).status_code == 200  # u is rebuilt: nothing known

    result = await store(durable_app).write(late)  # the old flusher finally commits
    assert (result.inserted, result.quarantined, result.lost) == (0, 0, 1)
    lost = await fetch(durable_app, "SELECT stream_id, run FROM lost_entries")
    assert [row["stream_id"] for row in lost] == [late.events[0].stream_id]
    assert lost[0]["run"] == late.events[0].run  # the retired run, kept for the record
    await flusher(durable_app).drain()
    assert await ledger(durable_app, "u") == [("u:1", "daily_chat")]  # once, the acknowledged one


async def test_a_hydration_waits_for_a_flush_still_open_and_then_sees_it(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """Postgres slow (a flush transaction open) while Redis loses its data: the user is rebuilt
    only after that flush commits, so today's limit and the seq continue from it."""
    assert (await gain(durable_client, "v")).status_code == 200
    buckets = services(durable_app).settings.key_buckets
    stream = UserKeys.of("v", buckets).events
    batch = sort_entries((stream, sid, f) for sid, f in redis_client.xrange(stream))
    async with store(durable_app).connection("slow flush") as conn:
        open_flush = conn.transaction()
        await open_flush.start()
        result = await write_batch(conn, batch)  # written, not committed: the lock is held
        assert result.inserted == 1
        redis_client.flushall()
        retry = asyncio.create_task(gain(durable_client, "v"))
        await asyncio.sleep(0.5)
        assert not retry.done()  # the hydration waits behind the open flush
        await open_flush.commit()
        response = await asyncio.wait_for(retry, 10)
    assert response.status_code == 429  # today's chat came from the late flush: limit holds
    assert (await durable_client.post(
        "/api/exp/gain", json={"action": "create_scene"}, headers=user_headers("v")
    )).status_code == 200  # fmt: skip
    await flusher(durable_app).drain()
    assert await ledger(durable_app, "v") == [("v:1", "daily_chat"), ("v:2", "create_scene")]
