"""XP through the durable ledger: every XP change is a row, and balances survive losing Redis."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
import redis
from starlette.applications import Starlette

from counters.clock import ManualClock
from counters.redis.keys import UserKeys
from counters.settings import DEFAULT_KEY_BUCKETS
from persistence.reconcile.reconciler import Reconciler
from tests.support.core import service_headers, user_headers
from tests.support.persistence import fetch, flusher, services, store

pytestmark = pytest.mark.anyio


async def call(
    client: httpx2.AsyncClient, method: str, path: str, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    response = await client.request(method, path, json=body or None, headers=headers)
    assert response.is_success, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def balance(client: httpx2.AsyncClient, user: str) -> dict[str, Any]:
    return await call(client, "GET", "/api/v1/xp/balance", user_headers(user))


async def xp_story(client: httpx2.AsyncClient, user: str) -> None:
    """Subscribe, top up, debit, hold and capture part, hold and release, refund."""
    service = service_headers(user)
    await call(client, "PUT", f"/api/v1/subscriptions/{user}", service, tier="arcade_artist")
    await call(client, "POST", "/api/v1/xp/grants", service, user_id=user, xp_amount=50,
               reason="promo")  # fmt: skip
    debit = await call(client, "POST", "/api/v1/xp/debit", user_headers(user),
                       generation_type="NEW_IMAGE")  # fmt: skip
    hold = await call(client, "POST", "/api/v1/xp/holds", user_headers(user),
                      generation_type="IMAGE_TO_VIDEO")  # fmt: skip
    await call(client, "POST", f"/api/v1/xp/holds/{hold['hold_id']}/capture", user_headers(user),
               xp_amount=100)  # fmt: skip
    other = await call(client, "POST", "/api/v1/xp/holds", user_headers(user),
                       generation_type="NEW_VIDEO")  # fmt: skip
    await call(client, "POST", f"/api/v1/xp/holds/{other['hold_id']}/release", user_headers(user))
    await call(client, "POST", "/api/v1/xp/refunds", service,
               transaction_id=debit["transaction_id"])  # fmt: skip


async def test_every_xp_change_is_ledgered_and_sums_to_the_balance(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    await xp_story(durable_client, "ann")
    await flusher(durable_app).drain()
    rows = await fetch(
        durable_app, "SELECT kind, amount FROM ledger WHERE user_id = 'ann' ORDER BY seq"
    )
    kinds = [row["kind"] for row in rows]
    assert {"xp_subscription", "xp_allocation", "xp_grant", "xp_debit", "xp_hold"} <= set(kinds)
    assert {"xp_capture", "xp_release", "xp_refund"} <= set(kinds)
    now = await balance(durable_client, "ann")
    assert sum(row["amount"] for row in rows) == now["xp_balance"] == 800 + 50 - 100
    totals = await fetch(durable_app, "SELECT * FROM user_totals WHERE user_id = 'ann'")
    assert totals[0]["xp_balance"] == now["xp_balance"] and totals[0]["tier"] == "arcade_artist"
    assert totals[0]["xp_seq"] == totals[0]["seq"] == len(rows)


async def test_an_xp_balance_survives_flushall_and_seq_goes_on(
    durable_app: Starlette,
    durable_client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    clock: ManualClock,
) -> None:
    await xp_story(durable_client, "ann")
    open_hold = {"generation_type": "NEW_IMAGE"}  # still open when Redis loses everything
    await call(durable_client, "POST", "/api/v1/xp/holds", user_headers("ann"), **open_hold)
    before = await balance(durable_client, "ann")
    await flusher(durable_app).drain()

    redis_client.flushall()

    assert await balance(durable_client, "ann") == before
    await call(durable_client, "POST", "/api/v1/xp/debit", user_headers("ann"),
               generation_type="EDIT_IMAGE")  # fmt: skip
    await flusher(durable_app).drain()
    rows = await fetch(durable_app, "SELECT seq FROM ledger WHERE user_id = 'ann' ORDER BY seq")
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))

    svc = services(durable_app)
    reconciler = Reconciler(
        svc.redis,
        store(durable_app),
        svc.scripts,
        svc.settings.key_buckets,
        svc.rules.exp.level_for,
    )
    report = await reconciler.run(flusher(durable_app))
    assert (report.users, report.drifted, report.clean) == (1, 0, True)


async def test_xp_drift_is_repaired_toward_the_higher_balance(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    service = service_headers()
    for user in ("ann", "bob"):
        await call(durable_client, "PUT", f"/api/v1/subscriptions/{user}", service,
                   tier="arcade_artist")  # fmt: skip
    await flusher(durable_app).drain()
    for user, alloc in (("ann", 900), ("bob", 700)):  # Redis's state drifts up, and down
        key = UserKeys.of(user, DEFAULT_KEY_BUCKETS).user
        state = json.loads(redis_client.hget(key, "xp") or "{}")
        redis_client.hset(key, "xp", json.dumps({**state, "alloc": alloc}))

    svc = services(durable_app)
    found: list[str] = []
    reconciler = Reconciler(
        svc.redis, store(durable_app), svc.scripts, svc.settings.key_buckets,
        svc.rules.exp.level_for, repair=True,
        on_drift=lambda finding, outcome: found.extend(finding.problems),
    )  # fmt: skip
    report = await reconciler.run(flusher(durable_app))
    assert (report.drifted, report.repaired) == (2, 2)
    assert sorted(found) == [
        "xp state: redis (balance 700) != postgres (balance 800)",
        "xp state: redis (balance 900) != postgres (balance 800)",
    ]
    assert (await balance(durable_client, "ann"))["xp_balance"] == 900
    assert (await balance(durable_client, "bob"))["xp_balance"] == 800
    repairs = await fetch(
        durable_app, "SELECT user_id, action, amount FROM ledger WHERE kind = 'reconcile_repair'"
        " AND action = 'xp'",
    )  # fmt: skip
    assert [(r["user_id"], r["amount"]) for r in repairs] == [("ann", 100)]
    reconciler.repair = False
    report = await reconciler.run(flusher(durable_app))
    assert (report.users, report.drifted, report.clean) == (2, 0, True)
