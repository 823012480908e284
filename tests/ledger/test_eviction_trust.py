"""A complete bucket speaks for its users only while Redis evicts nothing (issue #11).

Under an evicting policy an evicted user in a complete bucket would come back empty (their EXP,
level and today's counters lost): a missing user is hydrated from Postgres instead, as in an
incomplete bucket. A node that evicted and was then switched back to ``noeviction`` has its
markers dropped (each records its node's ``evicted_keys``), so the buckets are restored again
before they speak for anyone. Evictions here are real: ``volatile-lru`` with ``maxmemory 1``
evicts every key with a TTL on the node a write reaches, and nothing else (the markers stay).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
import redis
from redis.cluster import RedisCluster
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.redis.keys import UserKeys
from counters.runtime.durability import Durability
from persistence.restore import BucketRestore
from tests.support.core import service_headers, user_headers
from tests.support.persistence import flusher, services

pytestmark = [pytest.mark.anyio, pytest.mark.both_redis]

CHAT = {"action": "daily_chat"}


def restorer(app: Starlette) -> BucketRestore:
    durability: Durability = app.state.durability
    assert durability.restore is not None
    return durability.restore


def config_set(client: redis.Redis, name: str, value: str | int) -> None:
    """CONFIG SET on our own Redis, on every node of the cluster (the client's default is one)."""
    if isinstance(client, RedisCluster):
        client.config_set(name, value, target_nodes=RedisCluster.ALL_NODES)
    else:
        client.config_set(name, value)


@pytest.fixture
def policy(redis_client: redis.Redis) -> Iterator[None]:
    """The test may change our own Redis's eviction settings (every node of the cluster):
    always back to noeviction, no limit."""
    try:
        yield
    finally:
        config_set(redis_client, "maxmemory", 0)
        config_set(redis_client, "maxmemory-policy", "noeviction")


async def total_exp(client: httpx2.AsyncClient, user: str) -> httpx2.Response:
    return await client.get("/api/exp/progress", headers=user_headers(user))


async def earn_and_complete(app: Starlette, client: httpx2.AsyncClient, user: str) -> int:
    """``user`` earns EXP, it reaches Postgres, and every bucket is complete; returns the EXP."""
    earned = await client.post("/api/exp/gain", json=CHAT, headers=service_headers(user))
    assert earned.status_code == 200, earned.text
    await flusher(app).drain()
    assert await restorer(app).restore_once() == 0
    exp: int = earned.json()["total_exp"]
    assert exp > 0
    return exp


def evict(redis_client: redis.Redis, keys: UserKeys) -> None:
    """Have Redis itself evict the user (its node's ``evicted_keys`` grows): their hash made
    volatile, then one write past a 1-byte limit under ``volatile-lru``; then noeviction."""
    redis_client.expire(keys.user, 3600)
    config_set(redis_client, "maxmemory-policy", "volatile-lru")
    config_set(redis_client, "maxmemory", 1)
    try:
        redis_client.set(f"{keys.meta}:trigger", "x")  # the user's slot: the user's node
    except redis.exceptions.ResponseError:
        pass  # OOM once nothing volatile is left: the eviction happened before
    finally:
        config_set(redis_client, "maxmemory", 0)
        config_set(redis_client, "maxmemory-policy", "noeviction")
    assert not redis_client.exists(keys.user)
    assert redis_client.hexists(keys.meta, "complete")  # the marker was not evicted


@pytest.mark.usefixtures("policy")
async def test_under_an_evicting_policy_a_missing_user_is_hydrated_not_new(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
) -> None:
    exp = await earn_and_complete(durable_app, durable_client, "ann")
    config_set(redis_client, "maxmemory-policy", "allkeys-lru")
    await restorer(durable_app).check_eviction()  # the background loop's step
    ready = (await durable_client.get("/readyz")).json()  # an operator sees it
    assert ready["status"] == "degraded" and "may evict" in ready["redis_eviction"], ready
    svc = services(durable_app)
    keys = UserKeys.of("ann", svc.settings.key_buckets)
    day = keys.day(svc.exp.window("ann", svc.clock.now()).day)
    redis_client.delete(keys.user)
    redis_client.delete(day)  # as an eviction would: their EXP and today's counters
    assert redis_client.hexists(keys.meta, "complete")  # the bucket still says complete
    read = await total_exp(durable_client, "ann")
    assert (read.status_code, read.json()["total_exp"]) == (200, exp), read.text
    redis_client.delete(keys.user)
    postgres_server.stop()
    try:  # not an empty user: Postgres must say, and cannot
        read = await total_exp(durable_client, "ann")
        assert read.status_code == 503, read.text
        new = await total_exp(durable_client, "zed")
        assert new.status_code == 503, new.text  # a new user is not known new either
    finally:
        postgres_server.start()
    config_set(redis_client, "maxmemory-policy", "noeviction")
    await restorer(durable_app).check_eviction()  # nothing evicted: the markers speak again
    ready = (await durable_client.get("/readyz")).json()
    assert ready["status"] == "ready" and "redis_eviction" not in ready, ready
    postgres_server.stop()
    try:
        new = await total_exp(durable_client, "zed")
        assert (new.status_code, new.json()["total_exp"]) == (200, 0), new.text
    finally:
        postgres_server.start()


@pytest.mark.usefixtures("policy")
async def test_a_node_that_evicted_loses_its_markers_until_restored_again(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """Evicted under volatile-lru, then switched back to noeviction before any check saw the
    policy: the policy alone would trust the bucket and answer an empty user."""
    exp = await earn_and_complete(durable_app, durable_client, "ann")
    keys = UserKeys.of("ann", services(durable_app).settings.key_buckets)
    evict(redis_client, keys)
    await restorer(durable_app).check_eviction()
    assert not redis_client.hexists(keys.meta, "complete")  # dropped: restored before trusted
    read = await total_exp(durable_client, "ann")
    assert (read.status_code, read.json()["total_exp"]) == (200, exp), read.text
    assert await restorer(durable_app).restore_once() == 0  # complete again, trusted again
    await restorer(durable_app).check_eviction()
    assert redis_client.hexists(keys.meta, "complete")


def used_memory(client: redis.Redis) -> int:
    """The largest ``used_memory`` of any node (one Redis: its own)."""
    if isinstance(client, RedisCluster):
        infos = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return max(int(info["used_memory"]) for info in infos.values())
    return int(client.info("memory")["used_memory"])


@pytest.mark.usefixtures("policy")
async def test_readyz_says_degraded_while_redis_refuses_writes_for_memory(
    durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """maxmemory reached under noeviction: every write was 503 storage_unavailable (OOM only in
    the logs) while /readyz said ready. It says degraded (strict: not ready) and why, and
    ready again once memory is back under the limit."""
    assert (await durable_client.get("/readyz")).json()["status"] == "ready"
    config_set(redis_client, "maxmemory", used_memory(redis_client) // 2)
    refused = await durable_client.post("/api/exp/gain", json=CHAT, headers=service_headers("oom"))
    ready = await durable_client.get("/readyz")
    strict = await durable_client.get("/readyz?strict=1")
    config_set(redis_client, "maxmemory", 0)
    again = (await durable_client.get("/readyz")).json()
    assert (refused.status_code, refused.json()["code"]) == (503, "storage_unavailable")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "every write is refused (OOM)" in ready.json()["redis_memory_full"]
    assert strict.status_code == 503 and strict.json()["status"] == "not ready"
    assert again["status"] == "ready" and "redis_memory_full" not in again
