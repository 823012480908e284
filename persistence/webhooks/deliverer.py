"""The webhook deliverer: sends outbox rows to every configured endpoint, at least once.

One iteration (``deliver_once``) takes up to ``batch`` due rows with ``SELECT ... FOR UPDATE SKIP
LOCKED`` inside a transaction, POSTs each (in parallel, ``timeout`` seconds per request) to every
endpoint that has not yet answered 2xx, and records the outcome in the same transaction. So two
workers never take the same row at once (no needless duplicates), and a worker dying mid-send
leaves the row to be sent again: at-least-once, with a stable event id (``Counters-Event-Id``
and ``"id"`` in the body) for the receiver to dedupe on.

A failed row is retried after ``backoff * 2**(attempts-1)`` seconds (capped at ``backoff_max``,
with jitter), and marked ``failed_at`` after ``max_attempts``. Delivery order is not guaranteed.
Time comes from the injected clock, so tests can step past a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from counters.clock import Clock
from counters.errors import StorageError
from counters.metrics import (
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DELIVERED,
    WEBHOOK_FAILED,
    WEBHOOK_SECONDS,
)
from persistence.store import Store, storage_errors
from persistence.webhooks.signing import EVENT_ID_HEADER, HEADER, sign

log = logging.getLogger("persistence.webhooks")


_DUE = """
SELECT event_id, type, payload::text AS payload, attempts, delivered_to
FROM webhook_outbox
WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
ORDER BY next_attempt_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_DONE = """
UPDATE webhook_outbox SET attempts = attempts + 1, delivered_to = $2, delivered_at = $3,
       failed_at = $4, next_attempt_at = $5, last_error = $6
WHERE event_id = $1
"""


PAUSE_LOG_SECONDS = 60.0  # a pause that lasts is logged again this often, at most


@dataclass(frozen=True, slots=True)
class Endpoints:
    urls: tuple[str, ...]
    secret: str
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float = 1.0  # seconds before the first retry; doubles per attempt
    cap: float = 3_600.0
    max_attempts: int = 15

    def delay(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` (1, 2, ...), jittered to 50-100%."""
        delay: float = min(self.cap, self.first * 2 ** min(attempts - 1, 32))
        return delay * random.uniform(0.5, 1.0)


@dataclass(slots=True)
class DelivererStats:
    delivered: int = 0
    failed_attempts: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _Outcome:
    delivered_to: list[str]
    error: str | None


class Deliverer:
    def __init__(
        self,
        store: Store,
        endpoints: Endpoints,
        clock: Clock,
        *,
        backoff: Backoff | None = None,
        batch: int = 100,
        poll: float = 1.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._endpoints = endpoints
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._batch = batch
        self._poll = poll
        self._http = http or httpx.AsyncClient(timeout=endpoints.timeout)
        self.stats = DelivererStats()
        # While Postgres fails: when the pause began and when it was last logged (clock time).
        self._paused_since: float | None = None
        self._paused_logged = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def deliver_once(self) -> int:
        """Send every due row (up to ``batch``) once; returns how many rows were attempted.

        ``StorageError`` when Postgres fails, or the iteration outlives every request's timeout
        plus 10 s: the transaction rolls back and the rows stay due (sent again: at least once)."""
        now = self._clock.now()
        at = datetime.fromtimestamp(now, UTC)
        limit = self._endpoints.timeout * len(self._endpoints.urls) + 10
        async with (
            storage_errors("webhook delivery"),
            asyncio.timeout(limit),
            self._store.connection("webhook delivery") as conn,  # released shielded
            conn.transaction(),
        ):
            rows = await conn.fetch(_DUE, at, self._batch)
            if not rows:
                return 0
            outcomes = await asyncio.gather(*(self._send(row, int(now)) for row in rows))
            updates = [
                self._update(row, outcome, now) for row, outcome in zip(rows, outcomes, strict=True)
            ]
            await conn.executemany(_DONE, updates)
        return len(rows)

    async def _send(self, row: Any, timestamp: int) -> _Outcome:
        body = row["payload"].encode()
        headers = {
            "Content-Type": "application/json",
            HEADER: sign(self._endpoints.secret, timestamp, body),
            EVENT_ID_HEADER: row["event_id"],
        }
        delivered = list(row["delivered_to"])
        errors: list[str] = []
        for url in self._endpoints.urls:
            if url in delivered:
                continue
            started = time.perf_counter()
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
            else:
                if response.is_success:
                    delivered.append(url)
                else:
                    errors.append(f"{url}: HTTP {response.status_code}")
            finally:
                WEBHOOK_SECONDS.observe(time.perf_counter() - started)
            WEBHOOK_ATTEMPTS.labels(row["type"], "ok" if url in delivered else "error").inc()
        return _Outcome(delivered, "; ".join(errors) or None)

    def _update(self, row: Any, outcome: _Outcome, now: float) -> tuple[object, ...]:
        at = datetime.fromtimestamp(now, UTC)
        done = all(url in outcome.delivered_to for url in self._endpoints.urls)
        attempts = row["attempts"] + 1
        failed = not done and attempts >= self._backoff.max_attempts
        if done:
            self.stats.delivered += 1
            WEBHOOK_DELIVERED.labels(row["type"]).inc()
        else:
            self.stats.failed_attempts += 1
            self.stats.last_error = outcome.error
            log.warning("webhook %s not delivered: %s", row["event_id"], outcome.error)
        if failed:
            WEBHOOK_FAILED.labels(row["type"]).inc()
        retry_at = datetime.fromtimestamp(now + self._backoff.delay(attempts), UTC)
        return (
            row["event_id"], outcome.delivered_to, at if done else None, at if failed else None,
            retry_at, outcome.error,
        )  # fmt: skip

    def _paused(self, exc: StorageError) -> None:
        """Log a pause when it begins, then at most once per ``PAUSE_LOG_SECONDS`` while it
        lasts (each poll logged it: twice a second per worker while Postgres was down)."""
        now = self._clock.now()
        if self._paused_since is None:
            self._paused_since = self._paused_logged = now
            log.warning("webhook delivery paused: %s", exc)
        elif now - self._paused_logged >= PAUSE_LOG_SECONDS:
            self._paused_logged = now
            log.warning(
                "webhook delivery still paused after %.0f s: %s", now - self._paused_since, exc
            )

    def _resumed(self) -> None:
        if self._paused_since is not None:
            log.info(
                "webhook delivery resumed after %.0f s", self._clock.now() - self._paused_since
            )
            self._paused_since = None

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: a full batch goes on at once, else wait ``poll``."""
        while not stop.is_set():
            sent = 0
            try:
                sent = await self.deliver_once()
                self._resumed()
            except StorageError as exc:
                self.stats.last_error = str(exc)
                self._paused(exc)
            except Exception:  # a bug: keep the loop (rows stay due), say so loudly
                log.exception("webhook delivery failed unexpectedly")
            if sent < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll)


@dataclass(slots=True)
class DelivererTask:
    """A deliverer running in the background of a process, stopped cleanly on ``stop()``."""

    deliverer: Deliverer
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.deliverer.run(self._stop), name="webhooks")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the current iteration finish (cancel it after ``timeout``), close the client."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()  # safe: an interrupted iteration's rows stay due
        await self.deliverer.aclose()
