"""Issue #10, items 1-8: a request spanning two identities answers the same whatever their ids
hash to. Each test runs with every identity in ONE bucket and with each in a bucket of its own
(ids picked by ``bucket_of``), through HTTP on the suite's real Redis (and Postgres where the
ledger is part of the answer)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from api.app import create_app
from counters.clock import ManualClock
from counters.redis.keys import bucket_of
from counters.settings import Settings
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, flusher
from tests.support.xp import hold, subscribe

pytestmark = pytest.mark.anyio

GAIN = "/api/exp/gain"


@dataclass(frozen=True)
class Layout:
    """Where the ids of a test hash: all in one bucket ("same") or each in its own
    ("different"), out of ``buckets`` (the deployment's count: issue #12)."""

    kind: str
    buckets: int


def pick(layout: Layout, *prefixes: str) -> list[str]:
    """One id per prefix (an entity as "<type>:<id>"): all in one bucket ("same"), or each in
    a bucket no other has ("different")."""
    chosen: list[str] = []
    for prefix in prefixes:
        for n in itertools.count():
            candidate = f"{prefix}{n}"
            if candidate in chosen:
                continue
            bucket = bucket_of(candidate, layout.buckets)
            taken = [bucket_of(c, layout.buckets) for c in chosen]
            if (layout.kind == "same" and all(b == bucket for b in taken)) or (
                layout.kind == "different" and bucket not in taken
            ):
                chosen.append(candidate)
                break
    return chosen


@pytest.fixture(params=[16, 1024])
def key_buckets(request: pytest.FixtureRequest) -> int:
    """Every test here runs with the old count and the default (issue #12)."""
    return int(request.param)


@pytest.fixture(params=["same", "different"])
def layout(request: pytest.FixtureRequest, key_buckets: int) -> Layout:
    return Layout(str(request.param), key_buckets)


def test_pick_gives_what_it_promises(key_buckets: int) -> None:
    same = pick(Layout("same", key_buckets), "fan", "a", "b", "character:c")
    assert len({bucket_of(i, key_buckets) for i in same}) == 1
    different = pick(Layout("different", key_buckets), "fan", "a", "b", "character:c")
    assert len({bucket_of(i, key_buckets) for i in different}) == 4


async def own(http: httpx2.AsyncClient, entity: str, owner: str) -> dict[str, Any]:
    kind, _, entity_id = entity.partition(":")
    response = await http.put(
        f"/api/entities/{kind}/{entity_id}", json={"owner_id": owner}, headers=service_headers()
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def act(action: str, entity: str) -> dict[str, str]:
    kind, _, entity_id = entity.partition(":")
    return {"action": action, "target_type": kind, "target_id": entity_id}


async def total(http: httpx2.AsyncClient, user: str) -> int:
    body = (await http.get("/api/exp/progress", headers=user_headers(user))).json()
    return int(body["total_exp"])


# 1. A keyed retry after a transfer replays the first answer; nobody is paid twice.
async def test_a_keyed_retry_after_a_transfer_replays_the_first_answer(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, layout: Layout
) -> None:
    fan, a, b, entity = pick(layout, "fan", "a", "b", "character:c")
    await own(durable_client, entity, a)
    headers = user_headers(fan, **{"Idempotency-Key": "k1"})
    first = await durable_client.post(GAIN, json=act("character_liked", entity), headers=headers)
    assert (first.status_code, first.json()["awarded_to"]) == (200, a)
    await own(durable_client, entity, b)
    retry = await durable_client.post(GAIN, json=act("character_liked", entity), headers=headers)
    assert (retry.status_code, retry.json()) == (200, first.json())
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await total(durable_client, a), await total(durable_client, b)) == (5, 0)
    await flusher(durable_app).drain()
    rows = await fetch(durable_app, "SELECT user_id FROM ledger WHERE idem = 'k1'")
    assert [r["user_id"] for r in rows] == [a]


# 2. One like per fan per entity, whoever owns it now.
async def test_one_like_per_fan_per_entity_whoever_owns_it(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    fan, a, b, entity = pick(layout, "fan", "a", "b", "character:c")
    await own(client, entity, a)
    like = act("character_liked", entity)
    assert (await client.post(GAIN, json=like, headers=user_headers(fan))).status_code == 200
    await own(client, entity, b)
    again = await client.post(GAIN, json=like, headers=user_headers(fan))
    assert again.status_code == 409
    assert (await total(client, a), await total(client, b)) == (5, 0)


# 3. Two workers: once a transfer has answered, no award reaches the former owner.
async def test_no_worker_pays_a_former_owner_once_the_transfer_answered(
    settings: Settings, clock: ManualClock, layout: Layout
) -> None:
    fan1, fan2, a, b, entity = pick(layout, "fan", "fan", "a", "b", "character:c")
    async with two_workers(settings, clock) as (one, two):
        await own(one, entity, a)
        fork = act("forked", entity)
        first = await one.post(GAIN, json=fork, headers=user_headers(fan1))  # warms worker one
        assert first.json()["awarded_to"] == a
        await own(two, entity, b)  # the transfer, answered by the other worker
        after = await one.post(GAIN, json=fork, headers=user_headers(fan2))
        assert (after.status_code, after.json()["awarded_to"]) == (200, b)
        assert (await total(one, a), await total(one, b)) == (10, 10)


@asynccontextmanager
async def two_workers(
    settings: Settings, clock: ManualClock
) -> AsyncIterator[tuple[httpx2.AsyncClient, httpx2.AsyncClient]]:
    """Two app instances (two worker processes' worth of state) sharing one Redis."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            app = create_app(settings, clock=clock)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx2.ASGITransport(app=app)
            client = httpx2.AsyncClient(transport=transport, base_url="http://counters")
            clients.append(await stack.enter_async_context(client))
        yield clients[0], clients[1]


# 4. Ten parallel transfers: one owner, the same in Redis and Postgres, and the one paid.
async def test_parallel_transfers_leave_one_owner_everywhere(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    layout: Layout,
) -> None:
    owners = pick(layout, *[f"o{n}_" for n in range(10)])
    fan, entity = pick(layout, "fan", "character:x")
    await asyncio.gather(*(own(durable_client, entity, owner) for owner in owners))
    await flusher(durable_app).drain()
    kind, _, entity_id = entity.partition(":")
    [row] = await fetch(
        durable_app,
        "SELECT owner_id, version FROM entity_owners WHERE entity_type = $1 AND entity_id = $2",
        kind,
        entity_id,
    )
    [record_key] = redis_client.keys(f"*:entity:{entity}")
    record = redis_client.hgetall(record_key)
    assert (row["owner_id"], row["version"]) == (record["owner"], int(record["version"]))
    assert int(record["version"]) == 10
    assert redis_client.keys("*:owned:*") == []  # no per-owner markers to go stale
    like = await durable_client.post(
        GAIN, json=act("character_liked", entity), headers=user_headers(fan)
    )
    assert like.json()["awarded_to"] == record["owner"]
    paid = {owner: await total(durable_client, owner) for owner in owners}
    assert paid == {owner: 5 if owner == record["owner"] else 0 for owner in owners}


# 5. A key's scope is (caller, acting user): the same answer whatever the ids hash to.
async def test_one_service_key_for_two_users_is_two_requests(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    u1, u2 = pick(layout, "u", "v")
    for user in (u1, u2):
        headers = service_headers(user, **{"Idempotency-Key": "shared"})
        response = await client.post(GAIN, json={"action": "daily_chat"}, headers=headers)
        assert (response.status_code, response.json()["awarded_to"]) == (200, user)
        assert "Idempotent-Replayed" not in response.headers


async def test_ids_with_colons_never_share_a_record(
    client: httpx2.AsyncClient, layout: Layout
) -> None:
    # Before, user "x" with key "y:k" and user "x:y" with key "k" both wrote idem:user:x:y:k.
    [short] = pick(Layout("same", layout.buckets), "x")
    for n in itertools.count():
        long = f"{short}:y{n}"
        same = bucket_of(long, layout.buckets) == bucket_of(short, layout.buckets)
        if same == (layout.kind == "same"):
            break
    tail = long.partition(":")[2]
    for user, key in ((short, f"{tail}:k"), (long, "k")):
        headers = user_headers(user, **{"Idempotency-Key": key})
        response = await client.post(GAIN, json={"action": "daily_chat"}, headers=headers)
        assert (response.status_code, response.json()["awarded_to"]) == (200, user)


# 6. A user token's create_* earns EXP and claims nothing; the service's record stands.
async def test_only_services_record_ownership(client: httpx2.AsyncClient, layout: Layout) -> None:
    squatter, creator, fan, entity = pick(layout, "sq", "cr", "fan", "character:new")
    create = act("create_character", entity)
    by_user = await client.post(GAIN, json=create, headers=user_headers(squatter))
    assert (by_user.status_code, by_user.json()["exp_added"]) == (200, 30)
    by_service = await client.post(GAIN, json=create, headers=service_headers(creator))
    assert by_service.status_code == 200, by_service.text
    like = await client.post(GAIN, json=act("character_liked", entity), headers=user_headers(fan))
    assert like.json()["awarded_to"] == creator


# 7. forked pays once per actor per entity.
async def test_forks_pay_once_per_actor(client: httpx2.AsyncClient, layout: Layout) -> None:
    fan, creator, entity = pick(layout, "fan", "cr", "character:f")
    await own(client, entity, creator)
    codes = [
        (await client.post(GAIN, json=act("forked", entity), headers=user_headers(fan))).status_code
        for _ in range(14)
    ]
    assert codes == [200] + [409] * 13
    assert await total(client, creator) == 10


# 8. A hold is settled only by the kind of credential that created it.
@pytest.mark.parametrize("creator_is_service", [True, False], ids=["service-hold", "user-hold"])
async def test_a_hold_is_settled_by_the_credential_kind_that_made_it(
    client: httpx2.AsyncClient, layout: Layout, creator_is_service: bool
) -> None:
    [user] = pick(layout, "h")
    await subscribe(client, user, "pixel_rookie")
    service, own_token = service_headers(user), user_headers(user)
    maker, other = (service, own_token) if creator_is_service else (own_token, service)
    if creator_is_service:
        made = await client.post(
            "/api/v1/xp/holds", json={"generation_type": "NEW_IMAGE"}, headers=service
        )
    else:
        made = await hold(client, user, "NEW_IMAGE")
    assert made.status_code == 201, made.text
    hold_id = made.json()["hold_id"]
    for verb in ("capture", "release"):
        refused = await client.post(f"/api/v1/xp/holds/{hold_id}/{verb}", headers=other)
        assert refused.status_code == 403
        assert "only" in refused.json()["detail"]
    done = await client.post(f"/api/v1/xp/holds/{hold_id}/capture", headers=maker)
    assert (done.status_code, done.json()["xp_captured"]) == (200, 12)
