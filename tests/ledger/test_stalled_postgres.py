"""Postgres stopped (SIGSTOP: connections open, nothing answers) under a request's feet: every
Postgres call on a request's path answers 503 + Retry-After while Postgres is still stopped,
never only once it resumes (issue #11, fast failure).

A throwaway Postgres of the test's own: stopping the suite's would stall every other test. The
history read used to wait for Postgres to resume: its timeout interrupted the query, and then
the pool's release waited to reset the connection on the stopped server.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from starlette.applications import Starlette

from api.app import create_app
from counters.cli.embedded import PostgresServer
from counters.clock import ManualClock
from counters.runtime.durability import Durability
from counters.settings import Settings
from tests.support.core import user_headers
from tests.support.http import asgi_client
from tests.support.persistence import migrate_and_truncate

T = TypeVar("T")

pytestmark = pytest.mark.anyio

# Postgres stays stopped this long at most; an answer that needed it to resume never comes in time.
STOPPED_FOR = 25.0


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "postgres")
    server.start()
    migrate_and_truncate(server.url)
    yield server
    server.stop()


@pytest.fixture
async def app(
    settings: Settings, own_postgres: PostgresServer, clock: ManualClock
) -> AsyncIterator[Starlette]:
    durable = replace(
        settings,
        database_url=own_postgres.url,
        flusher_enabled=False,
        restore_interval_seconds=0,
        database_timeout_seconds=0.5,
    )
    app = create_app(durable, clock=clock)
    async with app.router.lifespan_context(app):
        await _started(app)
        yield app


async def _started(app: Starlette) -> None:
    """Wait for the app's own start-up work on Postgres (the migrations and the bucket count,
    run in the background: ``Durability._migrate_then_flush``). Under load it was still running
    when a test stopped Postgres: it then timed out mid-call against the stopped server and was
    cancelled, waiting to retry, at teardown. The request under test must be the only Postgres
    work while Postgres is stopped."""
    durability: Durability = app.state.durability
    for _ in range(600):  # 30 s
        if durability.schema_ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"migrations not applied: {durability.schema_error}")


def _stop(server: PostgresServer, sig: signal.Signals) -> None:
    """``sig`` to the postmaster and each of its children (backends and workers: each runs in a
    process group of its own, so a group signal would miss them)."""
    assert server._proc is not None
    postmaster = server._proc.pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == postmaster:
                os.kill(int(entry.name), sig)
    os.kill(postmaster, sig)


async def _while_stopped(server: PostgresServer, request: Awaitable[T]) -> T:
    """``request``'s result, awaited while Postgres is stopped (resumed after, in any case)."""
    _stop(server, signal.SIGSTOP)
    try:
        return await asyncio.wait_for(request, STOPPED_FOR)
    finally:
        _stop(server, signal.SIGCONT)


async def test_history_is_a_503_while_postgres_is_stopped(
    app: Starlette, own_postgres: PostgresServer
) -> None:
    async with asgi_client(app) as client:
        warm = await client.get("/api/exp/history", headers=user_headers("h"))
        assert warm.status_code == 200, warm.text  # a pooled connection, open when it stops
        stalled = await _while_stopped(
            own_postgres, client.get("/api/exp/history", headers=user_headers("h"))
        )
        assert stalled.status_code == 503, stalled.text
        assert stalled.headers["Retry-After"] == "1"
        assert stalled.json()["code"] == "storage_unavailable"
        again = await client.get("/api/exp/history", headers=user_headers("h"))
        assert again.status_code == 200, again.text  # the dropped connection was replaced


async def test_readyz_answers_while_postgres_is_stopped(
    app: Starlette, own_postgres: PostgresServer
) -> None:
    async with asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        stalled = await _while_stopped(own_postgres, client.get("/readyz"))
        assert stalled.json()["postgres"] == "down", stalled.text  # the hot path still serves
