"""A write sent to a Redis that stalls (SIGSTOP) answers 503 ``outcome_unknown``: Redis runs it
when it resumes (the command waits in its socket), so the service cannot say "not applied". A
retry with the same Idempotency-Key replays the first answer: the change is applied once
(issue #11). A command never sent (Redis refusing connections) stays ``storage_unavailable``.

A Redis of the test's own: stopping the suite's would stall the tests after this one.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest

from api.app import create_app
from counters.cli.embedded import RedisServer
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import user_headers
from tests.support.http import asgi_client
from tests.support.xp import balance, subscribe

pytestmark = pytest.mark.anyio

STOPPED_FOR = 20.0  # Redis stays stopped this long at most: an answer must come before that

# (path, body) of each write; create_scene allows two awards a day
WRITES = {
    "gain": ("/api/exp/gain", {"action": "create_scene"}),
    "debit": ("/api/v1/xp/debit", {"generation_type": "NEW_IMAGE"}),
    "hold": ("/api/v1/xp/holds", {"generation_type": "NEW_IMAGE"}),
}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(
    settings: Settings, own_redis: RedisServer, clock: ManualClock
) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(
        replace(settings, redis_url=own_redis.url, redis_timeout_seconds=0.5), clock=clock
    )
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        yield http


async def _state(client: httpx2.AsyncClient, user: str) -> tuple[Any, ...]:
    progress = await client.get("/api/exp/progress", headers=user_headers(user))
    assert progress.status_code == 200, progress.text
    xp = await balance(client, user)
    return progress.json()["total_exp"], xp["xp_balance"], xp.get("xp_held")


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_write_on_a_stalled_redis_is_outcome_unknown_and_a_keyed_retry_replays_it(
    client: httpx2.AsyncClient, own_redis: RedisServer, write: str
) -> None:
    user = f"stall-{write}"
    await subscribe(client, user, "pixel_rookie")
    path, body = WRITES[write]
    # once before the stall, so that Redis knows the script (else the stalled call's reply
    # would be NOSCRIPT: nothing would run)
    first = await client.post(path, json=body, headers=user_headers(user))
    assert first.status_code in (200, 201), first.text
    before = await _state(client, user)
    headers = user_headers(user, **{"Idempotency-Key": f"k-{write}"})
    proc = own_redis._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        stalled = await asyncio.wait_for(client.post(path, json=body, headers=headers), STOPPED_FOR)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert stalled.status_code == 503, stalled.text
    assert stalled.headers["Retry-After"] == "1"
    assert stalled.json()["code"] == "outcome_unknown"
    assert "Idempotency-Key" in stalled.json()["detail"]
    for _ in range(100):  # Redis ran the command it had already received once it resumed
        applied = await _state(client, user)
        if applied != before:
            break
        await asyncio.sleep(0.05)
    assert applied != before, "the stalled write never ran: this test shows nothing"
    retry = await client.post(path, json=body, headers=headers)
    assert retry.status_code == first.status_code, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"  # the first answer, not a second run
    assert await _state(client, user) == applied  # applied once


async def test_a_write_never_sent_is_storage_unavailable(
    client: httpx2.AsyncClient, own_redis: RedisServer
) -> None:
    await subscribe(client, "gone", "pixel_rookie")
    own_redis.stop()
    await asyncio.sleep(0.2)  # the service sees its connection closed (else: sent into it)
    try:
        refused = await client.post(
            "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("gone")
        )
    finally:
        own_redis.start()
    assert refused.status_code == 503, refused.text
    assert refused.json() == {
        "detail": "Storage unavailable, try again",
        "code": "storage_unavailable",
    }


async def test_a_read_on_a_stalled_redis_is_plain_unavailability(
    client: httpx2.AsyncClient, own_redis: RedisServer
) -> None:
    """A GET changes nothing: its timed-out command is storage_unavailable, never "the change
    may have been applied" (an attacker's finding)."""
    await subscribe(client, "reader", "pixel_rookie")
    assert (await client.get("/api/exp/limits", headers=user_headers("reader"))).status_code == 200
    proc = own_redis._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        stalled = await asyncio.wait_for(
            client.get("/api/exp/limits", headers=user_headers("reader")), STOPPED_FOR
        )
    finally:
        proc.send_signal(signal.SIGCONT)
    assert (stalled.status_code, stalled.json()["code"]) == (503, "storage_unavailable")
    assert stalled.headers["Retry-After"] == "1"
