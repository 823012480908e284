"""Many parallel calls at one user: limits, caps and once-per-actor records hold exactly."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx2
import pytest
import redis

from tests.support.core import service_headers, user_headers

pytestmark = pytest.mark.anyio


async def post_all(
    http: httpx2.AsyncClient, calls: list[tuple[dict[str, object], dict[str, str]]]
) -> Counter[int]:
    responses = await asyncio.gather(
        *(http.post("/api/exp/gain", json=body, headers=headers) for body, headers in calls)
    )
    return Counter(response.status_code for response in responses)


async def total(http: httpx2.AsyncClient, user: str) -> int:
    body = (await http.get("/api/exp/progress", headers=user_headers(user))).json()
    return int(body["total_exp"])


async def test_200_parallel_create_scene_award_exactly_2(client: httpx2.AsyncClient) -> None:
    headers = user_headers("u1")
    statuses = await post_all(client, [({"action": "create_scene"}, headers)] * 200)
    assert statuses == Counter({200: 2, 429: 198})
    assert await total(client, "u1") == 30


async def test_parallel_likes_never_pass_the_limit(client: httpx2.AsyncClient) -> None:
    await client.put(
        "/api/entities/character/c1", json={"owner_id": "maker"}, headers=service_headers()
    )
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    statuses = await post_all(client, [(like, user_headers(f"fan{n}")) for n in range(100)])
    assert statuses == Counter({200: 20, 429: 80})
    assert await total(client, "maker") == 100


async def test_parallel_forks_never_pass_the_cap(client: httpx2.AsyncClient) -> None:
    await client.put(
        "/api/entities/scene/s1", json={"owner_id": "maker"}, headers=service_headers()
    )
    fork = {"action": "forked", "target_type": "scene", "target_id": "s1"}
    statuses = await post_all(client, [(fork, user_headers(f"fan{n}")) for n in range(60)])
    assert statuses == Counter({200: 15, 429: 45})
    assert await total(client, "maker") == 150


async def test_one_fan_liking_in_parallel_awards_once(client: httpx2.AsyncClient) -> None:
    await client.put(
        "/api/entities/character/c1", json={"owner_id": "maker"}, headers=service_headers()
    )
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    statuses = await post_all(client, [(like, user_headers("fan"))] * 50)
    assert statuses == Counter({200: 1, 409: 49})
    assert await total(client, "maker") == 5


async def test_parallel_retries_of_one_idempotency_key_apply_once(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    headers = user_headers("u1", **{"Idempotency-Key": "once"})
    statuses = await post_all(client, [({"action": "create_character"}, headers)] * 50)
    assert statuses == Counter({200: 50})
    assert await total(client, "u1") == 30
    [stream] = redis_client.keys("*:events")
    assert redis_client.xlen(stream) == 1


async def test_parallel_mixed_actions_respect_every_rule(client: httpx2.AsyncClient) -> None:
    actions = ["daily_chat", "create_character", "create_scene", "create_persona"] * 40
    statuses = await post_all(client, [({"action": a}, user_headers("u1")) for a in actions])
    assert statuses == Counter({200: 7, 429: 153})
    usage = (await client.get("/api/exp/limits", headers=user_headers("u1"))).json()
    assert usage["daily_action_counts"] == {
        "daily_chat": 1, "create_character": 2, "create_scene": 2, "create_persona": 2,
    }  # fmt: skip
    assert usage["daily_exp_gained"] == 140
