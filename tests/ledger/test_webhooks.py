"""Webhooks (issue #14): outbox rows in the ledger's transaction, signed delivery to a real
receiver on loopback, retries with backoff, one that fails then recovers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx2
import msgspec
import pytest
from starlette.applications import Starlette

from api.app import create_app
from counters.cli.embedded import PostgresServer
from counters.clock import ManualClock
from counters.rules import parse_rules
from counters.runtime.durability import Durability
from counters.settings import Settings
from counters.webhooks import Webhook
from persistence.webhooks.deliverer import Deliverer
from persistence.webhooks.signing import sign, verify
from tests.exp.test_rules import DEFAULTS
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, flusher
from tests.support.receiver import Receiver

pytestmark = pytest.mark.anyio

SECRET = "whsec-test-0123456789"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().serving() as running:
        yield running


def webhook_app(
    settings: Settings, clock: ManualClock, *urls: str, background: bool = False
) -> Starlette:
    """The durable app sending to ``urls``; the test runs the deliverer itself unless
    ``background``."""
    hooked = replace(
        settings, webhook_urls=urls, webhook_secret=SECRET,
        webhook_deliverer_enabled=background, webhook_poll_seconds=0.05,
    )  # fmt: skip
    # A pixel_rookie (600 XP) is "low" below 590, so one 12 XP image crosses it.
    rules = parse_rules(DEFAULTS.replace("pixel_rookie = 60", "pixel_rookie = 590"))
    return create_app(hooked, clock=clock, rules=rules)


def deliverer(app: Starlette) -> Deliverer:
    durability: Durability = app.state.durability
    assert durability.deliverer is not None
    return durability.deliverer


async def client_for(app: Starlette) -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=app)
    return httpx2.AsyncClient(transport=transport, base_url="http://counters")


def bodies(receiver: Receiver) -> list[dict[str, Any]]:
    """What the receiver got; each body also decodes as the contract's tagged union."""
    for got in receiver.received:
        typed = msgspec.json.decode(got.body, type=Webhook)
        assert typed.id == got.headers["counters-event-id"]
    return [json.loads(r.body) for r in receiver.received]


async def test_a_level_up_is_delivered_once_and_signed(
    durable_settings: Settings, clock: ManualClock, receiver: Receiver
) -> None:
    app = webhook_app(durable_settings, clock, receiver.url)
    async with app.router.lifespan_context(app), await client_for(app) as http:
        adjust = {"user_id": "w1", "delta": 90, "reason": "almost level 2"}
        await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await http.post("/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("w1"))
        await flusher(app).drain()
        await flusher(app).drain()  # nothing new: writing again adds no outbox row
        assert await deliverer(app).deliver_once() == 1
        assert await deliverer(app).deliver_once() == 0  # delivered: not sent again
        rows = await fetch(app, "SELECT event_id, attempts, delivered_at FROM webhook_outbox")
    assert [(r["event_id"], r["attempts"]) for r in rows] == [("w1:2:level_up", 1)]
    assert rows[0]["delivered_at"] is not None
    [body] = bodies(receiver)
    [got] = receiver.received
    assert got.headers["counters-event-id"] == "w1:2:level_up"
    assert got.headers["content-type"] == "application/json"
    assert verify(SECRET, got.headers["counters-signature"], got.body, now=clock.now())
    assert got.headers["counters-signature"] == sign(SECRET, int(clock.now()), got.body)
    assert not verify("another-secret", got.headers["counters-signature"], got.body, clock.now())
    assert body == {
        "id": "w1:2:level_up", "type": "level_up", "created": int(clock.now()),
        "data": {
            "user_id": "w1", "ledger_event_id": "w1:2", "level": 2, "previous_level": 1,
            "total_exp": 110, "unlocked_features": ["fork", "private_characters"],
            "action": "daily_chat",
        },
    }  # fmt: skip


async def test_a_failing_receiver_gets_it_again_after_backoff(
    durable_settings: Settings, clock: ManualClock
) -> None:
    flaky = Receiver(fail_first=2)
    app = webhook_app(durable_settings, clock, flaky.url)
    async with flaky.serving(), app.router.lifespan_context(app), await client_for(app) as http:
        adjust = {"user_id": "w2", "delta": 300, "reason": "to level 3"}
        await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await flusher(app).drain()
        assert await deliverer(app).deliver_once() == 1  # 500
        assert await deliverer(app).deliver_once() == 0  # not due yet: backoff
        clock.advance(1.0)  # the first retry comes after 0.5-1 s
        assert await deliverer(app).deliver_once() == 1  # 500 again
        clock.advance(2.0)  # the second retry: 1-2 s after the second attempt
        assert await deliverer(app).deliver_once() == 1  # 200
        clock.advance(3_600)
        assert await deliverer(app).deliver_once() == 0  # delivered: never again
        [row] = await fetch(app, "SELECT attempts, delivered_at, last_error FROM webhook_outbox")
    assert row["attempts"] == 3 and row["delivered_at"] is not None
    assert row["last_error"] is None
    assert [b["id"] for b in bodies(flaky)] == ["w2:1:level_up"] * 3  # a stable event id
    assert bodies(flaky)[0]["data"]["unlocked_features"] == [
        "fork", "private_characters", "paid_characters", "basic_analytics",
    ]  # fmt: skip
    # Each attempt is signed at its own time (the clock moved an hour since the last).
    stamps = [int(r.headers["counters-signature"].split(",")[0][2:]) for r in flaky.received]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    for got, stamp in zip(flaky.received, stamps, strict=True):
        assert verify(SECRET, got.headers["counters-signature"], got.body, now=stamp)


async def test_a_receiver_that_was_down_gets_only_what_it_missed(
    durable_settings: Settings, clock: ManualClock, receiver: Receiver
) -> None:
    later = Receiver()  # nothing listens on its port yet: connection refused
    app = webhook_app(durable_settings, clock, receiver.url, later.url)
    async with app.router.lifespan_context(app), await client_for(app) as http:
        adjust = {"user_id": "w3", "delta": 100, "reason": "to level 2"}
        await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await flusher(app).drain()
        assert await deliverer(app).deliver_once() == 1
        [row] = await fetch(
            app, "SELECT delivered_to, delivered_at, last_error FROM webhook_outbox"
        )
        assert (row["delivered_to"], row["delivered_at"]) == ([receiver.url], None)
        assert "ConnectError" in row["last_error"]
        async with later.serving():
            clock.advance(1.0)
            assert await deliverer(app).deliver_once() == 1
        [row] = await fetch(app, "SELECT delivered_to, delivered_at FROM webhook_outbox")
    assert row["delivered_to"] == [receiver.url, later.url] and row["delivered_at"] is not None
    assert len(receiver.received) == 1 and len(later.received) == 1


async def test_xp_webhooks_low_balance_renewal_and_depletion(
    durable_settings: Settings, clock: ManualClock, receiver: Receiver
) -> None:
    app = webhook_app(durable_settings, clock, receiver.url)
    async with app.router.lifespan_context(app), await client_for(app) as http:
        sub = {"tier": "pixel_rookie"}
        await http.put("/api/v1/subscriptions/w4", json=sub, headers=service_headers())
        image = {"generation_type": "NEW_IMAGE"}
        await http.post("/api/v1/xp/debit", json=image, headers=user_headers("w4"))  # 588 < 590
        await http.post("/api/v1/xp/debit", json=image, headers=user_headers("w4"))  # no new cross
        clock.advance(31 * 86_400)  # the period renews on the next touch
        await http.get("/api/v1/xp/balance", headers=user_headers("w4"))
        await http.delete("/api/v1/subscriptions/w4", headers=service_headers())
        clock.advance(31 * 86_400)  # the cancelled period ends: its allocation expires
        await http.get("/api/v1/xp/balance", headers=user_headers("w4"))
        await flusher(app).drain()
        while await deliverer(app).deliver_once():
            pass
    got = [(b["type"], b["data"]["xp_balance"]) for b in bodies(receiver)]
    assert sorted(got) == sorted([
        ("xp_low_balance", 588), ("subscription_renewed", 600), ("xp_depleted", 0),
    ])  # fmt: skip
    low = next(b for b in bodies(receiver) if b["type"] == "xp_low_balance")
    assert low["data"] | {"user_id": "w4"} == {
        "user_id": "w4", "ledger_event_id": low["data"]["ledger_event_id"], "tier": "pixel_rookie",
        "xp_balance": 588, "previous_xp_balance": 600, "kind": "xp_debit", "action": "NEW_IMAGE",
        "threshold": 590,
    }  # fmt: skip


async def test_without_endpoints_nothing_is_written_to_the_outbox(
    durable_client: httpx2.AsyncClient, durable_app: Starlette
) -> None:
    adjust = {"user_id": "w5", "delta": 300, "reason": "to level 3"}
    await durable_client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    await flusher(durable_app).drain()
    assert await fetch(durable_app, "SELECT * FROM webhook_outbox") == []
    durability: Durability = durable_app.state.durability
    assert durability.deliverer is None


async def test_two_deliverers_never_send_the_same_row_at_once(
    durable_settings: Settings, clock: ManualClock
) -> None:
    slow = Receiver(delay=0.2)  # each POST takes a while: the two iterations overlap
    app = webhook_app(durable_settings, clock, slow.url)
    async with slow.serving(), app.router.lifespan_context(app), await client_for(app) as http:
        for n in range(10):
            adjust = {"user_id": f"c{n}", "delta": 100, "reason": "to level 2"}
            await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await flusher(app).drain()
        one = deliverer(app)
        durability: Durability = app.state.durability
        assert durability.store is not None
        other = Deliverer(durability.store, one._endpoints, clock, batch=10)  # another worker
        try:
            counts = await asyncio.gather(one.deliver_once(), other.deliver_once())
        finally:
            await other.aclose()
    assert sorted(counts) == [0, 10]  # the second found every row locked and skipped it
    assert sorted(b["id"] for b in bodies(slow)) == sorted(f"c{n}:1:level_up" for n in range(10))


async def test_the_background_deliverer_sends_without_being_asked(
    durable_settings: Settings, clock: ManualClock, receiver: Receiver
) -> None:
    app = webhook_app(durable_settings, clock, receiver.url, background=True)
    async with app.router.lifespan_context(app), await client_for(app) as http:
        adjust = {"user_id": "b1", "delta": 100, "reason": "to level 2"}
        await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await flusher(app).drain()
        async with asyncio.timeout(10):
            while not receiver.received:
                await asyncio.sleep(0.02)
    assert [b["id"] for b in bodies(receiver)] == ["b1:1:level_up"]


@pytest.mark.parametrize(
    ("header", "now", "ok"),
    [
        (sign(SECRET, 1_000, b"{}"), 1_000, True),
        (sign(SECRET, 1_000, b"{}"), 1_300, True),  # within the 300 s tolerance
        (sign(SECRET, 1_000, b"{}"), 1_301, False),  # too old: a replay
        (sign(SECRET, 1_000, b"{}").replace("t=1000", "t=1001"), 1_000, False),  # t is signed
        (f"v1=junk,{sign(SECRET, 1_000, b'{}')}", 1_000, True),  # any matching v1 will do
        ("v1=abc", 1_000, False),
        ("t=abc,v1=abc", 1_000, False),
        # ASCII digits only: a superscript two made verify raise ValueError (int() cannot read
        # it), and U+0661 U+0660 U+0660 U+0660 read as 1000 passed a signature of t=1000.
        ("t=\u00b2,v1=abc", 1_000, False),
        (sign(SECRET, 1_000, b"{}").replace("t=1000", "t=\u0661\u0660\u0660\u0660"), 1_000, False),
        ("t=" + "9" * 4301 + ",v1=abc", 1_000, False),  # past int()'s 4,300 digits: ValueError
        ("", 1_000, False),
    ],
)
def test_signature_checks(header: str, now: int, ok: bool) -> None:
    assert verify(SECRET, header, b"{}", now=now) is ok
    assert not verify(SECRET, header, b"{ }", now=now)  # the body is signed


async def test_a_receiver_too_slow_to_answer_gets_it_again_with_the_same_id(
    durable_settings: Settings, clock: ManualClock
) -> None:
    """At least once: a POST whose answer never came in time counts as failed and is resent;
    the receiver sees the same event id twice and dedupes on it."""
    slow = Receiver(delay=1.0)
    app = webhook_app(replace(durable_settings, webhook_timeout_seconds=0.2), clock, slow.url)
    async with slow.serving(), app.router.lifespan_context(app), await client_for(app) as http:
        adjust = {"user_id": "s1", "delta": 100, "reason": "to level 2"}
        await http.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
        await flusher(app).drain()
        assert await deliverer(app).deliver_once() == 1  # ReadTimeout: not delivered
        [row] = await fetch(app, "SELECT attempts, delivered_at, last_error FROM webhook_outbox")
        assert (row["attempts"], row["delivered_at"]) == (1, None)
        assert "ReadTimeout" in row["last_error"]
        slow.delay = 0.0
        clock.advance(1.0)
        assert await deliverer(app).deliver_once() == 1
    assert [r.headers["counters-event-id"] for r in slow.received] == ["s1:1:level_up"] * 2


async def test_a_postgres_outage_is_logged_when_it_begins_and_ends_not_at_every_poll(
    durable_settings: Settings,
    clock: ManualClock,
    receiver: Receiver,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by an attacker: "webhook delivery paused" was logged at every poll, twice a second
    per worker, for as long as Postgres was down. Now: when it begins, at most once a minute
    while it lasts, and once when delivery resumes."""
    caplog.set_level(logging.INFO, logger="persistence.webhooks")
    app = webhook_app(durable_settings, clock, receiver.url)  # polls every 0.05 s
    async with app.router.lifespan_context(app):
        running = deliverer(app)
        stop = asyncio.Event()
        task = asyncio.create_task(running.run(stop))
        postgres_server.stop()
        try:
            await asyncio.sleep(1.0)  # some 20 polls fail
            clock.advance(61)
            await asyncio.sleep(0.5)
        finally:
            postgres_server.start()
        try:
            async with asyncio.timeout(20):
                while running.stats.last_error is None or not any(
                    "resumed" in record.getMessage() for record in caplog.records
                ):
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
    lines = [r.getMessage() for r in caplog.records if r.name == "persistence.webhooks"]
    paused = [line for line in lines if "paused" in line]
    assert len(paused) == 2, lines
    assert paused[0].startswith("webhook delivery paused: ")
    assert paused[1].startswith("webhook delivery still paused after 61 s: ")
    assert [line for line in lines if "resumed" in line] == ["webhook delivery resumed after 61 s"]
