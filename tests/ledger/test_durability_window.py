"""The durability window: past COUNTERS_MAX_UNFLUSHED_EVENTS (or _SECONDS) of acknowledged
changes not yet ledgered, writes wait (503 + Retry-After) until the flusher catches up."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx2
import pytest

from api.app import create_app
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import service_headers, user_headers
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio


async def adjust(client: httpx2.AsyncClient, user: str) -> httpx2.Response:
    body = {"user_id": user, "delta": 5, "reason": "support"}
    return await client.post("/api/admin/exp/adjust", json=body, headers=service_headers())


async def lag_seen(client: httpx2.AsyncClient, events: int) -> None:
    for _ in range(200):  # bounded wait for the background refresh; nothing is timed
        if (await client.get("/readyz")).json()["flusher"].get("lag_events") == events:
            await asyncio.sleep(0.05)  # one more refresh of the worker's cached lag
            return
        await asyncio.sleep(0.01)
    raise AssertionError("lag never seen")


async def test_writes_wait_while_the_unflushed_backlog_is_full(
    durable_settings: Settings, clock: ManualClock
) -> None:
    settings = replace(durable_settings, max_unflushed_events=3, lag_refresh_seconds=0.01)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://c") as client:
            for _ in range(3):
                assert (await adjust(client, "ann")).status_code == 200
            await lag_seen(client, 3)
            refused = await adjust(client, "ann")
            gain = await client.post(
                "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("bob")
            )
            ready = (await client.get("/readyz")).json()
            progress = await client.get("/api/exp/progress", headers=user_headers("ann"))
            await flusher(app).drain()
            await lag_seen(client, 0)
            accepted = await adjust(client, "ann")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith("Too many changes are not yet durable (3 events")
    assert gain.status_code == 503  # the hot lane waits too
    assert "writes_refused" in ready["flusher"]
    assert progress.status_code == 200 and progress.json()["total_exp"] == 15  # reads go on
    assert accepted.status_code == 200 and accepted.json()["total_exp"] == 20
