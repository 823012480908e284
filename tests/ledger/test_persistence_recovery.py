"""Recovery: Redis loses everything mid-life and no user sees their EXP, limits or owners reset."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.clock import ManualClock
from counters.redis.keys import UserKeys
from counters.settings import DEFAULT_KEY_BUCKETS
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, flusher, services

pytestmark = pytest.mark.anyio


async def gain(client: httpx2.AsyncClient, user: str, body: dict[str, str]) -> httpx2.Response:
    return await client.post("/api/exp/gain", json=body, headers=user_headers(user))


async def adjust(client: httpx2.AsyncClient, user: str, delta: int) -> int:
    body = {"user_id": user, "delta": delta, "reason": "support"}
    response = await client.post("/api/admin/exp/adjust", json=body, headers=service_headers())
    assert response.status_code == 200, response.text
    total: int = response.json()["total_exp"]
    return total


async def progress(client: httpx2.AsyncClient, user: str) -> dict[str, object]:
    response = await client.get("/api/exp/progress", headers=user_headers(user))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def limits(client: httpx2.AsyncClient, user: str) -> dict[str, object]:
    response = await client.get("/api/exp/limits", headers=user_headers(user))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def event_ids(app: Starlette, user: str) -> list[str]:
    rows = await fetch(app, "SELECT event_id FROM ledger WHERE user_id = $1 ORDER BY seq", user)
    return [row["event_id"] for row in rows]


async def test_flushall_mid_life_keeps_every_users_totals_and_todays_limits(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    clock: ManualClock,
) -> None:
    users = ["ann", "bob", "cy", "dee"]
    for n, user in enumerate(users):
        assert (await gain(durable_client, user, {"action": "daily_chat"})).status_code == 200
        character = {"action": "create_character", "target_type": "character"}
        assert (
            await gain(durable_client, user, {**character, "target_id": f"{user}-c"})
        ).is_success
        await adjust(durable_client, user, 100 * n)
    before = {user: await progress(durable_client, user) for user in users}
    used = {user: await limits(durable_client, user) for user in users}
    await flusher(durable_app).drain()

    redis_client.flushall()

    assert {user: await progress(durable_client, user) for user in users} == before
    assert {user: await limits(durable_client, user) for user in users} == used
    refused = await gain(durable_client, "ann", {"action": "daily_chat"})
    assert refused.status_code == 429  # today's daily_chat was already used, before the loss

    clock.advance(86_400)
    assert (await gain(durable_client, "ann", {"action": "daily_chat"})).status_code == 200
    await flusher(durable_app).drain()
    assert await event_ids(durable_app, "ann") == ["ann:1", "ann:2", "ann:3", "ann:4"]


async def test_events_not_flushed_before_the_loss_are_the_durability_window(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    assert await adjust(durable_client, "ann", 50) == 50
    await flusher(durable_app).drain()
    assert await adjust(durable_client, "ann", 7) == 57  # never reaches Postgres:
    redis_client.flushall()  # Redis dies before the flusher ran
    assert (await progress(durable_client, "ann"))["total_exp"] == 50
    assert await adjust(durable_client, "ann", 1) == 51
    await flusher(durable_app).drain()
    assert await event_ids(durable_app, "ann") == ["ann:1", "ann:2"]  # seq went on from Postgres
    rows = await fetch(durable_app, "SELECT amount FROM ledger WHERE user_id = 'ann' ORDER BY seq")
    assert [row["amount"] for row in rows] == [50, 1]


async def test_a_user_nobody_knows_starts_empty(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    assert (await progress(durable_client, "newcomer"))["total_exp"] == 0
    assert redis_client.hgetall(UserKeys.of("newcomer", DEFAULT_KEY_BUCKETS).user) == {
        "exp": "0",
        "level": "1",
        "seq": "0",
    }
    assert await adjust(durable_client, "newcomer", 3) == 3


async def test_many_first_touches_at_once_after_a_loss_are_all_counted(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await adjust(durable_client, "ann", 1000)
    await flusher(durable_app).drain()
    redis_client.flushall()
    totals = await asyncio.gather(*(adjust(durable_client, "ann", 1) for _ in range(25)))
    assert sorted(totals) == list(range(1001, 1026))
    await flusher(durable_app).drain()
    assert len(await event_ids(durable_app, "ann")) == 26


async def test_hydration_never_overwrites_a_user_redis_has(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await adjust(durable_client, "ann", 10)
    await flusher(durable_app).drain()
    await adjust(durable_client, "ann", 5)  # Redis is ahead of Postgres now
    hydrator = services(durable_app).exp._hydrator
    await hydrator.hydrate("ann")
    assert redis_client.hget(UserKeys.of("ann", DEFAULT_KEY_BUCKETS).user, "exp") == "15"


async def test_entity_owners_survive_the_loss(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    response = await durable_client.put(
        "/api/entities/character/c9", json={"owner_id": "ann"}, headers=service_headers()
    )
    assert response.status_code == 200
    await flusher(durable_app).drain()
    redis_client.flushall()

    liked = {"action": "character_liked", "target_type": "character", "target_id": "c9"}
    response = await gain(durable_client, "bob", liked)
    assert response.status_code == 200, response.text
    assert response.json()["awarded_to"] == "ann"
    unknown = {**liked, "target_id": "nobody-owns-this"}
    assert (await gain(durable_client, "bob", unknown)).status_code == 404
