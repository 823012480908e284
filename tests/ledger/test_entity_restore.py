"""A complete bucket speaks for its entities too (issue #11): new entities need no Postgres.

The bucket restore puts back every owner and once-per-actor record of the bucket before marking
it complete, so a claim of a brand-new entity, a like, a refused claim of an owned one and a
like on an unknown entity are all answered by Redis alone, with Postgres down. Only while Redis
evicts nothing (maxmemory-policy noeviction): otherwise a missing owner may be an evicted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.exp.creator import restore_once_calls
from counters.exp.entities import DurableOwner, Target
from counters.redis.calls import (
    AssignEntity,
    AssignEntityKeys,
    MetaKey,
    OpenBucket,
    RestoreOnceKeys,
)
from counters.redis.codes import AssignOutcome, RestoreOnceOutcome
from counters.redis.keys import EntityKeys
from counters.runtime.durability import Durability
from persistence.restore import BucketRestore
from tests.support.core import service_headers
from tests.support.persistence import fetch, flusher, services

pytestmark = pytest.mark.anyio

CREATE = {"action": "create_character", "target_type": "character"}
LIKE = {"action": "character_liked", "target_type": "character"}


def restorer(app: Starlette) -> BucketRestore:
    durability: Durability = app.state.durability
    assert durability.restore is not None
    return durability.restore


async def gain(client: httpx2.AsyncClient, body: dict[str, str], user: str) -> httpx2.Response:
    return await client.post("/api/exp/gain", json=body, headers=service_headers(user))


@pytest.fixture
def evicting(redis_client: redis.Redis) -> Iterator[None]:
    """Our own Redis set to evict (allkeys-lru) for the test, then back to noeviction."""
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


async def test_the_restore_brings_back_owners_and_likes_and_new_entities_need_no_postgres(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    postgres_server: PostgresServer,
) -> None:
    assert (await gain(durable_client, {**CREATE, "target_id": "e1"}, "ann")).status_code == 200
    assert (await gain(durable_client, {**LIKE, "target_id": "e1"}, "fan")).status_code == 200
    await flusher(durable_app).drain()
    redis_client.flushall()

    assert await restorer(durable_app).restore_once() == 0
    keys = EntityKeys.of("character", "e1", services(durable_app).settings.key_buckets)
    assert redis_client.hget(keys.owner, "owner") == "ann"  # before anyone asked for it
    assert redis_client.hexists(keys.once("character_liked"), "fan")
    postgres_server.stop()
    try:
        liked = await gain(durable_client, {**LIKE, "target_id": "e1"}, "fan")
        assert (liked.status_code, liked.json()["code"]) == (409, "already_triggered")
        taken = await gain(durable_client, {**CREATE, "target_id": "e1"}, "zed")
        assert (taken.status_code, taken.json()["code"]) == (409, "already_owned")
        created = await gain(durable_client, {**CREATE, "target_id": "e9"}, "zed")
        assert created.status_code == 200, created.text  # brand new: no Postgres read
        liked = await gain(durable_client, {**LIKE, "target_id": "e9"}, "fan")
        assert liked.status_code == 200 and liked.json()["awarded_to"] == "zed", liked.text
        unknown = await gain(durable_client, {**LIKE, "target_id": "nobody"}, "fan")
        assert unknown.status_code == 404, unknown.text  # no owner, known without Postgres
    finally:
        postgres_server.start()
    await flusher(durable_app).drain()
    paid = await fetch(
        durable_app,
        "SELECT user_id, target FROM ledger WHERE actor = 'fan' ORDER BY target",
    )
    assert [(r["user_id"], r["target"]) for r in paid] == [
        ("ann", "character:e1"), ("zed", "character:e9"),
    ]  # fmt: skip
    owners = await fetch(durable_app, "SELECT entity_id, owner_id FROM entity_owners ORDER BY 1")
    assert [(r["entity_id"], r["owner_id"]) for r in owners] == [("e1", "ann"), ("e9", "zed")]


async def test_while_redis_may_evict_a_missing_owner_is_asked_of_postgres(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    postgres_server: PostgresServer,
    request: pytest.FixtureRequest,
) -> None:
    """An evicted owner in a complete bucket would look like no owner: anyone could claim the
    entity. With a policy that evicts, completeness does not speak for entities."""
    assert await restorer(durable_app).restore_once() == 0  # every bucket complete (empty)
    request.getfixturevalue("evicting")
    assert await restorer(durable_app).restore_once() == 0  # still complete: nothing evicted
    postgres_server.stop()
    try:
        created = await gain(durable_client, {**CREATE, "target_id": "e5"}, "zed")
        assert created.status_code == 503, created.text
    finally:
        postgres_server.start()
    assert (await gain(durable_client, {**CREATE, "target_id": "e5"}, "zed")).status_code == 200


async def test_entity_restores_read_for_one_incarnation_never_land_in_another(
    durable_app: Starlette, redis_client: redis.Redis
) -> None:
    """The restore reads entities behind the barriers of the bucket's run; if Redis lost the
    bucket again before the write, what was read may miss owner changes the lost incarnation
    flushed since: nothing is written, and the next pass reads again."""
    svc = services(durable_app)
    keys = EntityKeys.of("character", "e7", svc.settings.key_buckets)
    meta = MetaKey(keys.meta)
    run = (await svc.scripts.run(meta, OpenBucket()))[1]
    redis_client.delete(keys.meta)  # lost again: the next script makes a new run
    newer = (await svc.scripts.run(meta, OpenBucket()))[1]
    assert newer != run
    owner = AssignEntity(
        owner_id="ann", mode="restore", ledger="0", target="character:e7", may_create="1",
        version=3, now_ms=0, run=run,
    )  # fmt: skip
    reply = await svc.scripts.run(AssignEntityKeys(keys.owner, keys.events, keys.meta), owner)
    assert reply[0] == AssignOutcome.RUN_CHANGED
    once = restore_once_calls([("character_liked", "fan", "ann", 1)], 60, run)["character_liked"]
    reply = await svc.scripts.run(RestoreOnceKeys(keys.once("character_liked"), keys.meta), once)
    assert reply[0] == RestoreOnceOutcome.RUN_CHANGED
    assert not redis_client.exists(keys.owner, keys.once("character_liked"))
    current = restore_once_calls([("character_liked", "fan", "ann", 1)], 60, newer)
    reply = await svc.scripts.run(
        RestoreOnceKeys(keys.once("character_liked"), keys.meta), current["character_liked"]
    )
    assert list(reply) == [RestoreOnceOutcome.RESTORED, 1]


async def test_an_owner_read_on_demand_lands_only_in_the_incarnation_it_was_read_for(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entity read back from Postgres one at a time (its bucket incomplete): if Redis lost
    the bucket again between the read and the write, the lost incarnation may have flushed an
    owner change since (here: e8 went to bob), so what was read is not written; it is read
    again for the new incarnation, and the like pays bob."""
    assert (await gain(durable_client, {**CREATE, "target_id": "e8"}, "ann")).status_code == 200
    await flusher(durable_app).drain()
    redis_client.flushall()
    entities = services(durable_app).entities
    keys = entities.keys(Target("character", "e8"))
    read = entities._durable_lookup
    assert read is not None
    owners: list[str] = []

    async def read_then_lose(target: Target) -> DurableOwner | None:
        found = await read(target)
        owners.append(found.owner_id if found else "")
        if len(owners) == 1:  # lost again; the lost incarnation's transfer reaches Postgres
            redis_client.delete(keys.meta)
            await fetch(
                durable_app,
                "UPDATE entity_owners SET owner_id = 'bob', version = version + 1"
                " WHERE entity_id = 'e8'",
            )
        return found

    monkeypatch.setattr(entities, "_durable_lookup", read_then_lose)
    liked = await gain(durable_client, {**LIKE, "target_id": "e8"}, "fan")
    assert liked.status_code == 200 and liked.json()["awarded_to"] == "bob", liked.text
    assert owners == ["ann", "bob"]
    assert redis_client.hget(keys.owner, "owner") == "bob"
