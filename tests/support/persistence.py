"""Helpers for the durable-ledger tests: schema set-up, reading Postgres, driving the flusher."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from starlette.applications import Starlette

from counters.runtime.durability import Durability
from counters.runtime.services import Services, is_cluster
from persistence.cluster_flusher import ClusterFlusher
from persistence.flusher import Flusher
from persistence.migrate import migrate
from persistence.store import Store

T = TypeVar("T")
TABLES = (
    "ledger, user_totals, entity_owners, ledger_quarantine, webhook_outbox, bucket_runs,"
    " redis_records, creator_awards, lost_entries, bucket_layout"
)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even while an event loop runs."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def migrate_and_truncate(url: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            await conn.execute(f"TRUNCATE {TABLES}")
        finally:
            await conn.close()

    run_sync(go())


def services(app: Starlette) -> Services:
    svc: Services = app.state.services
    return svc


def store(app: Starlette) -> Store:
    durability: Durability = app.state.durability
    assert durability.store is not None
    return durability.store


def flusher(app: Starlette, **options: Any) -> Flusher:
    """A fresh flusher on the app's Redis and Postgres (a consumer of its own)."""
    svc = services(app)
    options.setdefault("block_ms", 10)
    kind = ClusterFlusher if is_cluster(svc.redis) else Flusher
    return kind(svc.redis, store(app), buckets=svc.settings.key_buckets, **options)


async def fetch(app: Starlette, sql: str, *args: Any) -> list[Any]:
    async with store(app).connection("test") as conn:
        rows: list[Any] = await conn.fetch(sql, *args)
        return rows


async def fetchval(app: Starlette, sql: str, *args: Any) -> Any:
    async with store(app).connection("test") as conn:
        return await conn.fetchval(sql, *args)
