"""The durability window: past COUNTERS_MAX_UNFLUSHED_EVENTS (or _SECONDS) of acknowledged
changes not yet ledgered, writes wait (503 + Retry-After) until the flusher catches up."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx2
import pytest
from starlette.applications import Starlette

from api.app import create_app
from counters.clock import ManualClock
from counters.runtime.durability import Durability
from counters.settings import Settings
from tests.support.core import service_headers, user_headers
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio


async def adjust(client: httpx2.AsyncClient, user: str) -> httpx2.Response:
    body = {"user_id": user, "delta": 5, "reason": "support"}
    return await client.post("/api/admin/exp/adjust", json=body, headers=service_headers())


async def lag_seen(client: httpx2.AsyncClient, app: Starlette, events: int) -> None:
    """Until /readyz (every stream, exact) and the worker's watcher both see ``events``: the
    watcher looks at idle streams a slice per refresh (persistence/streams.py)."""
    durability: Durability = app.state.durability
    for _ in range(500):  # bounded wait for the background refresh; nothing is timed
        ready = (await client.get("/readyz")).json()["flusher"].get("lag_events") == events
        if ready and durability.lag is not None and durability.lag.events == events:
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
            await lag_seen(client, app, 3)
            refused = await adjust(client, "ann")
            gain = await client.post(
                "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("bob")
            )
            ready = (await client.get("/readyz")).json()
            progress = await client.get("/api/exp/progress", headers=user_headers("ann"))
            await flusher(app).drain()
            await lag_seen(client, app, 0)
            accepted = await adjust(client, "ann")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith("Too many changes are not yet durable (3 events")
    assert gain.status_code == 503  # the hot lane waits too
    assert "writes_refused" in ready["flusher"]
    assert progress.status_code == 200 and progress.json()["total_exp"] == 15  # reads go on
    assert accepted.status_code == 200 and accepted.json()["total_exp"] == 20
