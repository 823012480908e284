"""The durable side of one running process: the Postgres store and the background flusher.

Made in the app's lifespan (or a CLI command) from settings: without COUNTERS_DATABASE_URL there
is no store, Redis is the only store, and nothing here runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from counters.redis.keys import stream_key
from counters.runtime.services import Services
from counters.settings import Settings
from persistence.flusher import Flusher, FlusherTask, Lag, stream_lag
from persistence.store import Store

log = logging.getLogger("counters.runtime")


def make_flusher(settings: Settings, redis: Redis, store: Store) -> Flusher:
    """A flusher with the settings' batch size, wait and claim times."""
    return Flusher(
        redis,
        store,
        buckets=settings.key_buckets,
        batch=settings.flush_batch,
        block_ms=settings.flush_block_ms,
        claim_idle_ms=settings.flush_claim_idle_ms,
        backoff_max=settings.flush_backoff_max_seconds,
    )


@dataclass(slots=True)
class Durability:
    """The Postgres store (None without COUNTERS_DATABASE_URL) and this process's flusher."""

    store: Store | None
    flusher: Flusher | None = None
    _task: FlusherTask | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Durability:
        """Open the Postgres pool if a database is configured (it connects lazily)."""
        if settings.database_url is None:
            return cls(None)
        store = await Store.open(
            settings.database_url, max_connections=settings.database_max_connections
        )
        return cls(store)

    def start(self, services: Services) -> Durability:
        """Start the background flusher when there is a store and it is enabled."""
        if self.store is not None:
            self.flusher = make_flusher(services.settings, services.redis, self.store)
            if services.settings.flusher_enabled:
                self._task = FlusherTask(self.flusher)
                self._task.start()
        return self

    async def flusher_lag(self, services: Services) -> Lag:
        """Entries not yet ledgered across every bucket stream, and the oldest one's age.

        Raises ``redis.exceptions.RedisError`` when Redis does not answer."""
        streams = [stream_key(bucket) for bucket in range(services.settings.key_buckets)]
        return await stream_lag(services.redis, streams)

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Stop the flusher cleanly, ledger what is left in the streams (for up to
        ``drain_seconds``; anything still left waits in Redis for the next flusher), then close
        the pool."""
        if self._task is not None:
            await self._task.stop()
            assert self.flusher is not None
            try:
                await asyncio.wait_for(self.flusher.drain(max_failures=3), drain_seconds)
            except Exception as exc:  # shutting down: say so, never fail the shutdown
                log.warning("flusher drain at shutdown stopped early: %s", exc or type(exc))
        if self.store is not None:
            await self.store.close()
