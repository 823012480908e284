"""POST /api/exp/gain/batch: per-item outcomes and errors, the single route's exact limits under
concurrency, idempotency per item, and recovery paths (NOSCRIPT, stale owner, hydration)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from api.app import create_app
from api.routes.batch import MAX_ITEMS
from counters.clock import ManualClock, next_utc_midnight
from counters.settings import Settings
from tests.support.core import data_keys, forget_scripts, service_headers, user_headers
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio

BATCH = "/api/exp/gain/batch"


@pytest.fixture(params=[True, False], ids=["autopipeline", "pool"])
async def batch_client(
    request: pytest.FixtureRequest, settings: Settings, clock: ManualClock
) -> AsyncIterator[httpx2.AsyncClient]:
    """The app with and without auto-pipelining: the batch takes a different path in each."""
    app = create_app(replace(settings, redis_autopipeline=request.param), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            yield http


async def batch(
    http: httpx2.AsyncClient, awards: list[dict[str, Any]], expect: int = 200
) -> list[dict[str, Any]]:
    response = await http.post(BATCH, json={"awards": awards}, headers=service_headers())
    assert response.status_code == expect, response.text
    results: list[dict[str, Any]] = response.json().get("results", [])
    assert len(results) == (len(awards) if expect == 200 else 0)
    return results


def statuses(results: list[dict[str, Any]]) -> list[int]:
    return [result["status"] for result in results]


async def own(http: httpx2.AsyncClient, kind: str, entity: str, owner: str) -> None:
    path, body = f"/api/entities/{kind}/{entity}", {"owner_id": owner}
    response = await http.put(path, json=body, headers=service_headers())
    assert response.status_code == 200, response.text


async def total(http: httpx2.AsyncClient, user: str) -> int:
    body = (await http.get("/api/exp/progress", headers=user_headers(user))).json()
    return int(body["total_exp"])


async def test_each_item_gets_the_single_routes_status_and_body(
    batch_client: httpx2.AsyncClient,
) -> None:
    await own(batch_client, "character", "c1", "maker")
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    results = await batch(
        batch_client,
        [
            {"user_id": "u1", "action": "daily_chat"},
            {"user_id": "u1", "action": "daily_chat"},
            {"user_id": "fan", **like},
            {"user_id": "fan", **like},
            {"user_id": "maker", **like},
            {"user_id": "u2", "action": "character_liked", "target_type": "character",
             "target_id": "nobody-owns-it"},
            {"user_id": "u3", "action": "paid_char_sold", "target_type": "character",
             "target_id": "c1"},
            {"user_id": "u4", "action": "create_character", "target_type": "character",
             "target_id": "c1"},
        ],
    )  # fmt: skip
    assert statuses(results) == [200, 429, 200, 409, 409, 404, 200, 409]
    # What the single route answers for the same award by another user, in the same state:
    single = await batch_client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("u9")
    )
    assert results[0]["body"] == {**single.json(), "awarded_to": "u1"}
    assert "headers" not in results[0]
    again = await batch_client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("u9")
    )
    assert results[1]["body"] == again.json()
    assert results[1]["headers"] == {"Retry-After": again.headers["Retry-After"]}
    assert results[3]["body"] == {
        "detail": "fan already triggered character_liked on character c1; no EXP awarded",
        "code": "already_triggered",
    }
    assert results[4]["body"] == {
        "detail": "character_liked on your own character awards nothing",
        "code": "self_action",
    }
    assert results[5]["body"]["detail"].startswith("Unknown character nobody-owns-it")
    assert results[6]["body"]["awarded_to"] == "maker"
    assert results[7]["body"] == {
        "detail": "character c1 is already owned by another user",
        "code": "already_owned",
    }
    assert await total(batch_client, "maker") == 5 + 50


async def test_bad_items_are_their_own_4xx_and_the_rest_still_apply(
    batch_client: httpx2.AsyncClient,
) -> None:
    results = await batch(
        batch_client,
        [
            {"user_id": "u1", "action": "no_such_action"},
            {"user_id": "not a valid id!", "action": "daily_chat"},
            {"action": "daily_chat"},
            {"user_id": "u1", "action": "daily_chat", "surprise": 1},
            {"user_id": "u1", "action": "forked"},
            {"user_id": "u1", "action": "forked", "target_type": "scene"},
            {"user_id": "u1", "action": "forked", "target_type": "planet", "target_id": "p1"},
            [1, 2, 3],
            {"user_id": "u1", "action": "daily_chat"},
        ],
    )
    assert statuses(results) == [422] * 8 + [200]
    assert results[0]["body"]["detail"].startswith("Unknown action 'no_such_action'")
    assert "user_id" in results[2]["body"]["detail"]
    assert results[5]["body"] == {
        "detail": "target_type and target_id must be sent together",
        "code": "invalid_request",
    }
    assert await total(batch_client, "u1") == 20


async def test_an_item_naming_a_reserved_actor_is_its_own_422_and_pays_nobody(
    batch_client: httpx2.AsyncClient,
) -> None:
    """A black-box finding: an item with ``user_id`` ``system`` liking a character paid its
    owner, whose history then showed the actor ``system``."""
    await own(batch_client, "character", "c1", "maker")
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    reserved = ["system", "import", "reconcile", "service:1", "user:demo-user"]
    results = await batch(
        batch_client,
        [
            *({"user_id": actor, **like} for actor in reserved),
            {"user_id": "u1", "action": "daily_chat"},
            *({"user_id": actor, "action": "daily_chat"} for actor in reserved),
        ],
    )
    assert statuses(results) == [422] * 5 + [200] + [422] * 5
    for result in results[:5] + results[6:]:
        assert result["body"]["code"] == "invalid_request", result
        assert "user_id" in result["body"]["detail"], result
        assert "reserved actor" in result["body"]["detail"], result
    assert await total(batch_client, "maker") == 0
    assert await total(batch_client, "u1") == 20


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{not json", 400),
        (b'{"awards": []}', 422),
        (b'{"awards": {"user_id": "u1"}}', 422),
        (b'{"awards": [], "extra": 1}', 422),
    ],
)
async def test_a_bad_batch_is_refused_whole(
    client: httpx2.AsyncClient, redis_client: redis.Redis, body: bytes, status: int
) -> None:
    response = await client.post(BATCH, content=body, headers=service_headers())
    assert response.status_code == status, response.text
    assert data_keys(redis_client) == []


async def test_batch_size_is_capped(client: httpx2.AsyncClient, redis_client: redis.Redis) -> None:
    awards = [{"user_id": f"u{n}", "action": "daily_chat"} for n in range(MAX_ITEMS + 1)]
    await batch(client, awards, expect=422)
    assert data_keys(redis_client) == []
    results = await batch(client, awards[:MAX_ITEMS])
    assert statuses(results) == [200] * MAX_ITEMS


async def test_batches_are_for_services_only(client: httpx2.AsyncClient) -> None:
    awards = {"awards": [{"user_id": "u1", "action": "daily_chat"}]}
    response = await client.post(BATCH, json=awards, headers=user_headers("u1"))
    assert response.status_code == 403
    response = await client.post(BATCH, json=awards)
    assert response.status_code == 401


async def test_concurrent_batches_and_single_calls_keep_the_exact_limits(
    batch_client: httpx2.AsyncClient,
) -> None:
    await own(batch_client, "character", "c1", "maker")
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    scenes = [{"user_id": "u1", "action": "create_scene"}] * 25
    likes = [[{"user_id": f"fan{b}-{n}", **like} for n in range(10)] for b in range(8)]
    singles = [
        batch_client.post("/api/exp/gain", json=like, headers=service_headers(f"solo{n}"))
        for n in range(20)
    ]
    replies = await asyncio.gather(
        *(batch(batch_client, scenes) for _ in range(4)),
        *(batch(batch_client, items) for items in likes),
        *singles,
    )
    scene_statuses = Counter(s for results in replies[:4] for s in statuses(results))
    assert scene_statuses == Counter({200: 2, 429: 98})
    like_statuses = Counter(s for results in replies[4:12] for s in statuses(results))
    like_statuses.update(response.status_code for response in replies[12:])
    assert like_statuses == Counter({200: 20, 429: 80})
    assert await total(batch_client, "u1") == 30
    assert await total(batch_client, "maker") == 100


async def test_idempotency_keys_per_item_scoped_to_the_service(
    batch_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    create = {"user_id": "u1", "action": "create_character", "idempotency_key": "k1"}
    first = await batch(batch_client, [create, {**create, "idempotency_key": "k2"}])
    again = await batch(batch_client, [create, {**create, "user_id": "u2"}])
    assert statuses(first) == [200, 200]
    assert again[0] == {**first[0], "headers": {"Idempotent-Replayed": "true"}}
    assert again[1]["status"] == 200 and again[1]["body"]["awarded_to"] == "u2"
    # The same key and award through the single route is the same request: replayed.
    single = await batch_client.post(
        "/api/exp/gain",
        json={"action": "create_character"},
        headers=service_headers("u1", **{"Idempotency-Key": "k1"}),
    )
    assert single.status_code == 200
    assert single.headers["Idempotent-Replayed"] == "true"
    assert single.json() == first[0]["body"]
    # The same key with a different award is refused, and changes nothing.
    other = await batch(batch_client, [{**create, "action": "daily_chat"}])
    assert other[0] == {
        "status": 422,
        "body": {
            "detail": "Idempotency-Key was already used with a different request",
            "code": "idempotency_key_reused",
        },
    }
    assert await total(batch_client, "u1") == 60
    events = sum(redis_client.xlen(key) for key in redis_client.keys("*:events"))
    assert events == 3  # u1 twice (k1, k2), u2 once


async def test_a_key_on_the_batch_replays_the_whole_batch_and_pays_once(
    batch_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    awards = [
        {"user_id": "b1", "action": "create_character"},
        {"user_id": "b2", "action": "daily_chat"},
        {"user_id": "b1", "action": "daily_chat", "idempotency_key": "own"},  # its own key wins
    ]
    keyed = service_headers(**{"Idempotency-Key": "batch-7"})

    async def send(body: list[dict[str, Any]]) -> httpx2.Response:
        return await batch_client.post(BATCH, json={"awards": body}, headers=keyed)

    first = (await send(awards)).json()["results"]
    paid = (await total(batch_client, "b1"), await total(batch_client, "b2"))
    retried = await asyncio.gather(send(awards), send(awards))  # a retry, twice, at once
    assert statuses(first) == [200, 200, 200]
    for again in retried:
        assert again.status_code == 200
        replay = {"headers": {"Idempotent-Replayed": "true"}}
        assert again.json()["results"] == [{**item, **replay} for item in first]
    assert (await total(batch_client, "b1"), await total(batch_client, "b2")) == paid
    # The same key with another batch: the whole request is refused, nothing changes.
    other = await send([{"user_id": "b2", "action": "create_character"}])
    assert other.status_code == 422
    assert other.json() == {
        "detail": "Idempotency-Key was already used with a different request",
        "code": "idempotency_key_reused",
    }
    assert await total(batch_client, "b2") == paid[1]
    events = sum(redis_client.xlen(key) for key in redis_client.keys("*:events"))
    assert events == 3


async def test_x_user_id_on_the_batch_is_refused_not_ignored(client: httpx2.AsyncClient) -> None:
    body = {"awards": [{"user_id": "b1", "action": "daily_chat"}]}
    response = await client.post(BATCH, json=body, headers=service_headers("someone"))
    assert response.status_code == 422
    assert "each award names its user_id" in response.json()["detail"]


async def test_scripts_flushed_from_redis_are_loaded_again(
    batch_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    awards = [{"user_id": f"u{n}", "action": "daily_chat"} for n in range(5)]
    assert statuses(await batch(batch_client, awards[:2])) == [200, 200]
    forget_scripts(redis_client)
    assert statuses(await batch(batch_client, awards)) == [429, 429, 200, 200, 200]


async def test_a_batch_pays_the_owner_of_the_moment_with_self_awards_beside_it(
    batch_client: httpx2.AsyncClient,
) -> None:
    await own(batch_client, "character", "c1", "maker")
    like = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    assert statuses(await batch(batch_client, [{"user_id": "fan1", **like}])) == [200]
    await own(batch_client, "character", "c1", "heir")  # a transfer: no owner is cached
    results = await batch(
        batch_client, [{"user_id": "fan2", **like}, {"user_id": "u1", "action": "daily_chat"}]
    )
    assert statuses(results) == [200, 200]
    assert results[0]["body"]["awarded_to"] == "heir"
    assert (await total(batch_client, "maker"), await total(batch_client, "heir")) == (5, 5)


async def test_users_redis_forgot_are_hydrated_item_by_item(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    awards = [{"user_id": f"u{n}", "action": "create_scene"} for n in range(3)]
    assert statuses(await batch(durable_client, awards)) == [200, 200, 200]
    await flusher(durable_app).drain()
    redis_client.flushall()
    results = await batch(durable_client, [*awards, *awards, {**awards[0], "user_id": "new"}])
    assert statuses(results) == [200, 200, 200, 429, 429, 429, 200]
    assert [r["body"]["total_exp"] for r in results[:3]] == [30, 30, 30]


async def test_a_keyed_item_s_429_replayed_after_midnight_reports_its_limit_s_wait(
    batch_client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    """As the single route: the replay counts to the midnight after the first request, not
    after the replay, which said a whole day for a limit already reset (reviewer helper-66)."""
    midnight = next_utc_midnight(clock.now())
    clock.at = midnight - 1
    awards = [
        {"user_id": "u1", "action": "daily_chat"},
        {"user_id": "u1", "action": "daily_chat", "idempotency_key": "chat-1"},
    ]
    first = await batch(batch_client, awards)
    assert statuses(first) == [200, 429] and first[1]["headers"] == {"Retry-After": "1"}
    clock.at = midnight + 3
    again = await batch(batch_client, awards[1:])
    assert again[0]["status"] == 429 and again[0]["body"]["retry_after"] == 0
    assert again[0]["headers"] == {"Retry-After": "0", "Idempotent-Replayed": "true"}
