"""A Redis loss changes no answer (issue #11): records the ledger keeps come back with their user.

After the flusher moved a request's events, an empty Redis restart (FLUSHALL here) must not turn a
keyed retry into a second application, a refund into 404, or a capture into "unknown hold".
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.clock import ManualClock
from counters.redis.keys import UserKeys
from persistence.events import expand, sort_entries
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, flusher, services, store
from tests.support.xp import balance, debit, hold, subscribe

pytestmark = pytest.mark.anyio


async def ledger_kinds(app: Starlette, user: str) -> list[str]:
    rows = await fetch(app, "SELECT kind FROM ledger WHERE user_id = $1 ORDER BY seq", user)
    return [row["kind"] for row in rows]


async def refund(client: httpx2.AsyncClient, user: str, tx: str) -> httpx2.Response:
    return await client.post(
        "/api/v1/xp/refunds", json={"transaction_id": tx}, headers=service_headers(user)
    )


async def test_a_refund_after_a_flushed_debit_and_a_loss_works_once(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(durable_client, "r1", "pixel_rookie")
    spent = await debit(durable_client, "r1", "NEW_IMAGE")
    assert spent.status_code == 200, spent.text
    tx = spent.json()["transaction_id"]
    await flusher(durable_app).drain()
    redis_client.flushall()

    back = await refund(durable_client, "r1", tx)
    assert back.status_code == 200, back.text  # not 404 "Unknown transaction"
    assert (await balance(durable_client, "r1"))["xp_balance"] == 600
    await flusher(durable_app).drain()
    redis_client.flushall()
    again = await refund(durable_client, "r1", tx)
    assert again.status_code == 409  # the refunded state came back too: once
    await flusher(durable_app).drain()
    assert (await ledger_kinds(durable_app, "r1")).count("xp_refund") == 1


async def test_a_hold_made_before_a_loss_can_be_captured_after_it(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await subscribe(durable_client, "h1", "arcade_artist")
    held = await hold(durable_client, "h1", "IMAGE_TO_VIDEO")
    assert held.status_code == 201, held.text
    await flusher(durable_app).drain()
    redis_client.flushall()
    hold_id = held.json()["hold_id"]
    captured = await durable_client.post(
        f"/api/v1/xp/holds/{hold_id}/capture", json={}, headers=user_headers("h1")
    )
    assert captured.status_code == 200, captured.text
    await flusher(durable_app).drain()
    redis_client.flushall()
    twice = await durable_client.post(
        f"/api/v1/xp/holds/{hold_id}/release", json={}, headers=user_headers("h1")
    )
    assert twice.status_code == 409, twice.text


async def test_keyed_retries_after_a_loss_replay_the_first_answer(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    clock: ManualClock,
) -> None:
    award_headers = user_headers("k1", **{"Idempotency-Key": "scene-1"})
    body = {"action": "create_scene"}
    first = await durable_client.post("/api/exp/gain", json=body, headers=award_headers)
    assert first.status_code == 200
    await subscribe(durable_client, "k1", "pixel_rookie")
    spent = await debit(durable_client, "k1", "NEW_IMAGE", **{"Idempotency-Key": "gen-1"})
    assert spent.status_code == 200
    adjust = {"user_id": "k1", "delta": 5, "reason": "support"}
    fix_headers = service_headers(**{"Idempotency-Key": "fix-1"})
    fixed = await durable_client.post("/api/admin/exp/adjust", json=adjust, headers=fix_headers)
    assert fixed.status_code == 200
    await flusher(durable_app).drain()
    redis_client.flushall()
    clock.advance(60)

    again = await durable_client.post("/api/exp/gain", json=body, headers=award_headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    spent_again = await debit(durable_client, "k1", "NEW_IMAGE", **{"Idempotency-Key": "gen-1"})
    assert spent_again.json() == spent.json()
    assert spent_again.headers["idempotent-replayed"] == "true"
    fixed_again = await durable_client.post(
        "/api/admin/exp/adjust", json=adjust, headers=fix_headers
    )
    assert fixed_again.json() == fixed.json()
    reused = await durable_client.post(
        "/api/exp/gain", json={"action": "create_persona"}, headers=award_headers
    )
    assert reused.status_code == 422  # the fingerprint came back too
    await flusher(durable_app).drain()
    kinds = await ledger_kinds(durable_app, "k1")
    assert kinds.count("exp_award") == 1 and kinds.count("xp_debit") == 1
    assert kinds.count("exp_adjust") == 1


async def test_a_read_that_stops_between_an_event_and_its_records_ledgers_them_together(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A flusher read of ``batch`` entries per stream may stop right after an event, before the
    records its script appended next (a keyed award: its idempotency record; a keyed debit:
    its idempotency record, after its transaction record and the event). They are ledgered in
    the event's transaction, so a loss right after it cannot leave the event ledgered and its
    record gone (the keyed retry applied again: the flaky load test of session 5, made certain
    here by a batch that ends at the event)."""
    award_headers = user_headers("b1", **{"Idempotency-Key": "persona-1"})
    body = {"action": "create_persona"}
    first = await durable_client.post("/api/exp/gain", json=body, headers=award_headers)
    assert first.status_code == 200, first.text
    one = flusher(durable_app, batch=1)
    assert await one.flush_once(block=False) == 2  # the event, and its record with it
    redis_client.flushall()
    again = await durable_client.post("/api/exp/gain", json=body, headers=award_headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"

    await subscribe(durable_client, "b2", "pixel_rookie")
    await flusher(durable_app).drain()
    spent = await debit(durable_client, "b2", "NEW_IMAGE", **{"Idempotency-Key": "gen-1"})
    assert spent.status_code == 200, spent.text
    # the transaction record and the debit (the read's 2 entries), then the key's record
    assert await flusher(durable_app, batch=2).flush_once(block=False) == 3
    redis_client.flushall()
    spent_again = await debit(durable_client, "b2", "NEW_IMAGE", **{"Idempotency-Key": "gen-1"})
    assert spent_again.json() == spent.json()
    assert spent_again.headers["idempotent-replayed"] == "true"
    back = await refund(durable_client, "b2", spent.json()["transaction_id"])
    assert back.status_code == 200, back.text  # the transaction record came back too
    await flusher(durable_app).drain()
    assert (await ledger_kinds(durable_app, "b1")).count("exp_award") == 1
    assert (await ledger_kinds(durable_app, "b2")).count("xp_debit") == 1


@pytest.mark.parametrize("step", ["debit", "hold", "capture", "release", "refund"])
async def test_an_xp_record_is_never_ledgered_ahead_of_its_event(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    step: str,
) -> None:
    """A helper's finding: a debit wrote its transaction record to the stream *before* its
    event, so a read of one entry ledgered the record alone; lost with Redis after that, the
    debit was gone and its record not, and a refund of it answered 200: XP out of nothing.
    Every XP script now appends its records after its event, so a read that stops at the
    event takes them with it (the trailing records) and a read never starts with them."""
    user = f"order-{step}"
    await subscribe(durable_client, user, "pixel_rookie")
    await flusher(durable_app).drain()
    if step in ("hold", "capture", "release"):
        held = await hold(durable_client, user, "NEW_IMAGE")
        assert held.status_code == 201, held.text
        if step != "hold":
            await flusher(durable_app).drain()
            path = f"/api/v1/xp/holds/{held.json()['hold_id']}/{step}"
            settled = await durable_client.post(path, headers=user_headers(user))
            assert settled.status_code == 200, settled.text
    else:
        spent = await debit(durable_client, user, "NEW_IMAGE")
        assert spent.status_code == 200, spent.text
        if step == "refund":
            await flusher(durable_app).drain()
            back = await refund(durable_client, user, spent.json()["transaction_id"])
            assert back.status_code == 200, back.text
    stream = UserKeys.of(user, services(durable_app).settings.key_buckets).events
    entries: Any = redis_client.xrange(stream)
    kinds = [expand(fields)["kind"] for _, fields in entries]
    assert kinds[0] != "record" and kinds[1:] == ["record"] * (len(kinds) - 1), kinds
    assert await flusher(durable_app, batch=1).flush_once(block=False) == len(kinds)


async def test_records_of_a_lost_incarnation_stay_lost(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """A keyed award whose event never reached the ledger must not be replayed after the loss
    (its effect is gone): its record is refused with it."""
    headers = user_headers("g1", **{"Idempotency-Key": "lost-1"})
    body = {"action": "create_scene"}
    assert (await durable_client.post("/api/exp/gain", json=body, headers=headers)).is_success
    stream = UserKeys.of("g1", services(durable_app).settings.key_buckets).events
    late = sort_entries((stream, sid, fields) for sid, fields in redis_client.xrange(stream))
    redis_client.flushall()
    assert (await durable_client.get("/api/exp/progress", headers=user_headers("g1"))).is_success
    result = await store(durable_app).write(late)
    assert (result.quarantined, result.lost) == (0, 2)  # the award and its record
    replay = await durable_client.post("/api/exp/gain", json=body, headers=headers)
    assert "idempotent-replayed" not in replay.headers  # applied now, for the first time
    await flusher(durable_app).drain()
    assert await ledger_kinds(durable_app, "g1") == ["exp_award"]


async def test_a_like_paid_before_a_loss_is_not_paid_again_after_it(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    for kind, entity in (("character", "c1"), ("character", "c2")):
        owned = await durable_client.put(
            f"/api/entities/{kind}/{entity}", json={"owner_id": "maker"}, headers=service_headers()
        )
        assert owned.status_code == 200, owned.text
    liked = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
    forked = {"action": "forked", "target_type": "character", "target_id": "c1"}
    for body in (liked, forked):
        paid = await durable_client.post("/api/exp/gain", json=body, headers=user_headers("fan"))
        assert paid.status_code == 200, paid.text
    await flusher(durable_app).drain()
    redis_client.flushall()

    for body in (liked, forked):  # the first request after the loss restores both records
        again = await durable_client.post("/api/exp/gain", json=body, headers=user_headers("fan"))
        assert again.status_code == 409, again.text
    other = {**liked, "target_id": "c2"}  # another entity: a first like, paid
    assert (
        await durable_client.post("/api/exp/gain", json=other, headers=user_headers("fan"))
    ).status_code == 200
    await flusher(durable_app).drain()
    kinds = await fetch(
        durable_app, "SELECT target, action FROM ledger WHERE user_id = 'maker' ORDER BY seq"
    )
    assert [(r["target"], r["action"]) for r in kinds] == [
        ("character:c1", "character_liked"), ("character:c1", "forked"),
        ("character:c2", "character_liked"),
    ]  # fmt: skip


@pytest.mark.parametrize("after_loss", ["transfer", "same_owner", "owner_claims"])
async def test_an_owner_write_after_a_loss_brings_back_who_was_paid(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    after_loss: str,
) -> None:
    """The first write to an entity after a Redis loss may be its owner's record (a transfer, a
    service re-recording the owner, the owner's own create claim), not a like: it must restore
    who already liked or forked it (once per actor) and whom a keyed sale paid, or the next like
    and the sale's retry pay again (found by an attacker: paid twice, to the new owner)."""
    url = "/api/entities/character/e1"
    assert (
        await durable_client.put(url, json={"owner_id": "ann"}, headers=service_headers())
    ).status_code == 200
    liked = {"action": "character_liked", "target_type": "character", "target_id": "e1"}
    forked = {"action": "forked", "target_type": "character", "target_id": "e1"}
    sold = {"action": "paid_char_sold", "target_type": "character", "target_id": "e1"}
    keyed = service_headers("fan", **{"Idempotency-Key": "sale-fan"})
    for body in (liked, forked):
        paid = await durable_client.post("/api/exp/gain", json=body, headers=service_headers("fan"))
        assert paid.status_code == 200, paid.text
    sale = await durable_client.post("/api/exp/gain", json=sold, headers=keyed)
    assert sale.status_code == 200 and sale.json()["awarded_to"] == "ann", sale.text
    await flusher(durable_app).drain()
    redis_client.flushall()

    if after_loss == "owner_claims":
        created = {"action": "create_character", "target_type": "character", "target_id": "e1"}
        claim = await durable_client.post(
            "/api/exp/gain", json=created, headers=service_headers("ann")
        )
        assert claim.status_code == 200, claim.text
    else:
        owner = "bob" if after_loss == "transfer" else "ann"
        moved = await durable_client.put(url, json={"owner_id": owner}, headers=service_headers())
        assert moved.status_code == 200, moved.text

    for body in (liked, forked):
        again = await durable_client.post(
            "/api/exp/gain", json=body, headers=service_headers("fan")
        )
        assert (again.status_code, again.json()["code"]) == (409, "already_triggered"), again.text
    retried = await durable_client.post("/api/exp/gain", json=sold, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert retried.json()["awarded_to"] == "ann"  # the first answer, whoever owns it now
    await flusher(durable_app).drain()
    paid = await fetch(
        durable_app,
        "SELECT user_id, action FROM ledger WHERE target = 'character:e1' AND kind = 'exp_award'"
        " AND actor = 'fan' ORDER BY user_id, action",
    )
    assert [(r["user_id"], r["action"]) for r in paid] == [
        ("ann", "character_liked"), ("ann", "forked"), ("ann", "paid_char_sold"),
    ]  # fmt: skip


async def test_creator_awards_written_twice_keep_one_row_each(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    """Creator awards are copied straight in; a batch written again (a re-delivery) collides on
    their key and goes by ON CONFLICT DO NOTHING: one row per target, action and actor."""
    owned = await durable_client.put(
        "/api/entities/character/c1", json={"owner_id": "maker"}, headers=service_headers()
    )
    assert owned.status_code == 200, owned.text
    for fan in ("fan", "pal"):
        body = {"action": "character_liked", "target_type": "character", "target_id": "c1"}
        paid = await durable_client.post("/api/exp/gain", json=body, headers=user_headers(fan))
        assert paid.status_code == 200, paid.text
    entries = []
    for stream in flusher(durable_app).streams:
        entries += [(stream, sid, f) for sid, f in redis_client.xrange(stream)]
    batch = sort_entries(entries)
    first = await store(durable_app).write(batch)
    second = await store(durable_app).write(batch)
    assert (first.inserted, second.inserted, second.duplicates) == (2, 0, 2)  # paid: maker
    rows = await fetch(
        durable_app, "SELECT target, action, actor, owner_id FROM creator_awards ORDER BY actor"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("character:c1", "character_liked", "fan", "maker"),
        ("character:c1", "character_liked", "pal", "maker"),
    ]
