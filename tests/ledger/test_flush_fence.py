"""A flush still open across a Redis loss lands before the restore reads, or never (issue #11).

An attacker held a lock on ``entity_owners`` from psql so that a flush transaction stayed open,
restarted Redis empty, and saw every bucket marked complete a second later; the flush committed
afterwards. Here the same: our own Redis (restarted empty) and Postgres, a second Postgres
session holding a table lock that blocks the flush mid-transaction. Whatever the flush was
writing (an entity's owner, a creator award's once-per-actor record) must either be in Postgres
before the bucket is read back into Redis, or be refused as lost: otherwise Redis answers
without an event it acknowledged (an owner Postgres names and Redis does not, a like paid twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer, RedisServer
from counters.errors import PostgresStorageError, RedisStorageError, StorageError
from counters.redis.keys import EntityKeys, bucket_of, meta_key
from counters.runtime.durability import Durability
from persistence.events import sort_entries
from persistence.restore import BucketRestore
from tests.support.core import service_headers
from tests.support.persistence import fetch, flusher, services, store

pytestmark = pytest.mark.anyio


@dataclass(frozen=True, slots=True)
class Loss:
    """What a loss test drives: the app and its client, our own Redis (its server, to restart
    it empty) and our own Postgres (its URL, for the session that holds a lock)."""

    app: Starlette
    client: httpx2.AsyncClient
    redis: redis.Redis
    server: RedisServer
    postgres: PostgresServer
    url: str


@pytest.fixture
def loss(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    database_url: str,
) -> Loss:
    return Loss(
        durable_app, durable_client, redis_client, redis_server, postgres_server, database_url
    )


LIKE = {"action": "character_liked", "target_type": "character"}


@asynccontextmanager
async def table_locked(url: str, table: str) -> AsyncIterator[None]:
    """Another session holds ``table`` in SHARE mode (reads pass, writes wait) until the block
    ends: what the attacker did from psql."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
            yield
    finally:
        await conn.close()


async def blocked_flush(app: Starlette, url: str) -> asyncio.Task[int]:
    """A flush of everything in the streams, started and left waiting on a lock in Postgres."""
    task = asyncio.create_task(flusher(app).flush_once(block=False))
    conn = await asyncpg.connect(url)
    try:
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
            if waiting or task.done():
                break
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    assert not task.done(), "the flush did not block"
    return task


async def restart_empty(server: RedisServer, app: Starlette) -> None:
    """Redis restarts with nothing (no AOF): the loss the restore exists for. Returns once the
    app's pooled connections, cut by the restart, were replaced."""
    server.stop()
    server.start()
    for _ in range(10):
        try:
            await services(app).scripts.send_many([("PING",)])
            return
        except StorageError:
            await asyncio.sleep(0.05)


async def committed(flush: asyncio.Task[int]) -> None:
    """Wait for the blocked flush to end. It committed; its acknowledgement then either went to
    the new Redis (nothing to acknowledge there) or failed on a connection the restart cut."""
    try:
        await asyncio.wait_for(flush, 10)
    except RedisStorageError as exc:
        assert "flusher ack" in str(exc)


def restorer(app: Starlette) -> BucketRestore:
    durability: Durability = app.state.durability
    assert durability.restore is not None
    return durability.restore


async def put_owner(client: httpx2.AsyncClient, entity: str, owner: str) -> None:
    url = f"/api/entities/character/{entity}"
    put = await client.put(url, json={"owner_id": owner}, headers=service_headers())
    assert put.status_code == 200, put.text


async def answer(client: httpx2.AsyncClient, path: str, body: dict[str, str], user: str) -> int:
    """The status of ``body`` posted by service ``user`` once Postgres can answer (a 503 while a
    flush holds the bucket is retried: the caller's retry)."""
    for _ in range(20):
        reply = await client.post(path, json=body, headers=service_headers(user))
        if reply.status_code != 503:
            return reply.status_code
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} stayed 503")


async def test_an_owner_flush_open_across_a_loss_commits_before_the_restore_or_never(
    loss: Loss,
) -> None:
    """ann records e1, a transfer gives it to bob (version 2); the flush of those two owner events
    (nothing else in the batch) is blocked, Redis restarts empty. The restore must not mark the
    entity's bucket complete, nor a claim read Postgres, while that flush may still commit; and
    once it has, Redis and Postgres name the same owner."""
    await put_owner(loss.client, "e1", "ann")
    await put_owner(loss.client, "e1", "bob")
    bucket_e = bucket_of("character:e1", services(loss.app).settings.key_buckets)
    create = {"action": "create_character", "target_type": "character", "target_id": "e1"}
    async with table_locked(loss.url, "entity_owners"):
        flush = await blocked_flush(loss.app, loss.url)
        await restart_empty(loss.server, loss.app)
        with pytest.raises(PostgresStorageError):  # waits behind the open flush, gives up
            await restorer(loss.app).restore_once()
        assert not loss.redis.hexists(meta_key(bucket_e), "complete")
        claimed = await loss.client.post(
            "/api/exp/gain", json=create, headers=service_headers("zed")
        )
        assert claimed.status_code == 503, claimed.text  # only Postgres can tell, and it waits
    await committed(flush)
    assert await answer(loss.client, "/api/exp/gain", create, "zed") == 409  # bob owns it
    assert await restorer(loss.app).restore_once() == 0
    await flusher(loss.app).drain()
    rows = await fetch(loss.app, "SELECT owner_id, version FROM entity_owners")
    assert [(r["owner_id"], r["version"]) for r in rows] == [("bob", 2)]
    keys = EntityKeys.of("character", "e1", services(loss.app).settings.key_buckets)
    assert loss.redis.hget(keys.owner, "owner") == "bob"


@pytest.mark.parametrize("then", ["like", "restore"])
async def test_a_like_whose_flush_is_open_across_a_loss_is_not_paid_twice(
    loss: Loss, then: str
) -> None:
    """fan likes e2 (once per actor); the flush of that award is blocked on ``creator_awards``
    and Redis restarts empty. fan likes e2 again: whatever answers while the flush is open, once
    it committed the like is already triggered, and ann was paid once. Whether the entity comes
    back on demand (the like reads Postgres) or with its bucket (the restore; then Postgres
    need not answer the like at all)."""
    await put_owner(loss.client, "e2", "ann")
    await flusher(loss.app).drain()
    like = {**LIKE, "target_id": "e2"}
    assert await answer(loss.client, "/api/exp/gain", like, "fan") == 200
    async with table_locked(loss.url, "creator_awards"):
        flush = await blocked_flush(loss.app, loss.url)
        await restart_empty(loss.server, loss.app)
        during = await loss.client.post("/api/exp/gain", json=like, headers=service_headers("fan"))
        assert during.status_code in (409, 503), during.text
    await committed(flush)
    if then == "restore":
        assert await restorer(loss.app).restore_once() == 0
        loss.postgres.stop()
        try:
            again = await loss.client.post(
                "/api/exp/gain", json=like, headers=service_headers("fan")
            )
            assert (again.status_code, again.json()["code"]) == (409, "already_triggered")
        finally:
            loss.postgres.start()
    assert await answer(loss.client, "/api/exp/gain", like, "fan") == 409
    assert await restorer(loss.app).restore_once() == 0
    await flusher(loss.app).drain()
    paid = await fetch(
        loss.app,
        "SELECT user_id FROM ledger WHERE kind = 'exp_award' AND actor = 'fan'"
        " AND target = 'character:e2'",
    )
    assert [r["user_id"] for r in paid] == ["ann"]  # once


async def test_an_owner_change_of_a_lost_incarnation_flushed_after_the_restore_is_lost(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A flusher read an owner change, Redis lost everything, the restore refilled the bucket;
    the old batch committing then must not name an owner Redis never got back: it is kept in
    ``lost_entries`` (the durability window), and a later claim stands in both stores."""
    await put_owner(durable_client, "e3", "ann")
    keys = EntityKeys.of("character", "e3", services(durable_app).settings.key_buckets)
    late = sort_entries((keys.events, sid, f) for sid, f in redis_client.xrange(keys.events))
    assert len(late.owners) == 1 and late.owners[0].run
    redis_client.flushall()
    assert await restorer(durable_app).restore_once() == 0
    await put_owner(durable_client, "e3", "bob")  # nobody owned it after the loss: bob records it

    result = await store(durable_app).write(late)  # the old flusher finally commits
    assert (result.quarantined, result.lost) == (0, 1)
    lost = await fetch(durable_app, "SELECT stream, run, fields FROM lost_entries")
    assert [(r["stream"], r["run"]) for r in lost] == [(keys.events, late.owners[0].run)]
    await flusher(durable_app).drain()
    rows = await fetch(durable_app, "SELECT owner_id FROM entity_owners")
    assert [r["owner_id"] for r in rows] == ["bob"] == [redis_client.hget(keys.owner, "owner")]
