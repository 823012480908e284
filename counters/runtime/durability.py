"""The durable side of one running process: the Postgres store and the background flusher.

Made in the app's lifespan (or a CLI command) from settings: without COUNTERS_DATABASE_URL there
is no store, Redis is the only store, and nothing here runs.

The durability window: a background task refreshes the ledger's lag (events not yet in Postgres,
the oldest one's age) every COUNTERS_LAG_REFRESH_SECONDS; while it is past
COUNTERS_MAX_UNFLUSHED_EVENTS or _SECONDS, ``write_refusal`` says so and the API answers writes
503 + Retry-After (``api.asgi``), reading one attribute: no round trip on the request's path.

Postgres need not be up when the process starts: the store connects lazily, the schema
migrations are retried in the background until they apply (``Durability.schema_ready``), and
the flusher starts once they have; meanwhile the API serves from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.clock import Clock
from counters.errors import BacklogFull, StorageError
from counters.history import HistoryPage, HistoryQuery
from counters.redis.keys import stream_key
from counters.rules import Rules, load_rules
from counters.runtime.layout import check_ledger_layout, settle_buckets
from counters.runtime.services import Services, connect_redis, is_cluster
from counters.settings import Settings
from counters.tasks import cancel_and_wait
from persistence.cluster_flusher import ClusterFlusher
from persistence.flusher import Flusher, FlusherTask, Lag, longest_block_ms
from persistence.migrate import migrate_url
from persistence.recovery import PostgresHydrator
from persistence.restore import BucketRestore, EntityRestore, EvictionCheck, Trusting
from persistence.store import Store
from persistence.streams import LagProbe, exact_lag
from persistence.webhooks.deliverer import Backoff, Deliverer, DelivererTask, Endpoints
from persistence.webhooks.outbox import OutboxPolicy

log = logging.getLogger("counters.runtime")


def make_deliverer(settings: Settings, store: Store, clock: Clock) -> Deliverer | None:
    """The webhook deliverer of the settings' endpoints (None when none is configured)."""
    if not settings.webhook_urls or settings.webhook_secret is None:
        return None
    endpoints = Endpoints(
        settings.webhook_urls, settings.webhook_secret, settings.webhook_timeout_seconds
    )
    backoff = Backoff(
        settings.webhook_backoff_seconds,
        settings.webhook_backoff_max_seconds,
        settings.webhook_max_attempts,
    )
    return Deliverer(
        store, endpoints, clock, backoff=backoff, batch=settings.webhook_batch,
        poll=settings.webhook_poll_seconds,
    )  # fmt: skip


def make_flusher(
    settings: Settings, redis: Redis, store: Store, rules_of: Callable[[], Rules] | None = None
) -> Flusher:
    """A flusher with the settings' batch size, wait and claim times.

    With webhook endpoints configured, its writes also fill the webhook outbox, by the rules
    ``rules_of`` gives (the rules in force), or else the rules file the settings name."""
    if settings.webhook_urls:
        if rules_of is None:
            rules = load_rules(settings.rules)
            rules_of = lambda: rules  # noqa: E731 (a fixed file: `counters flush`)
        store.outbox = OutboxPolicy(rules_of)
    kind = ClusterFlusher if is_cluster(redis) else Flusher  # per-stream reads on a cluster
    return kind(
        redis,
        store,
        buckets=settings.key_buckets,
        batch=settings.flush_batch,
        block_ms=settings.flush_block_ms,
        linger_ms=settings.flush_linger_ms,
        lease_ms=settings.flush_lease_ms,
        claim_idle_ms=settings.flush_claim_idle_ms,
        backoff_max=settings.flush_backoff_max_seconds,
    )


def flusher_redis(settings: Settings) -> Redis:
    """The flusher's own Redis client: replies may take a whole blocking read (plus a margin),
    and stream entries that are not UTF-8 are read (as lone surrogates) so they can be
    quarantined instead of failing every read."""
    assert settings.redis_url is not None
    timeout = longest_block_ms(settings.flush_block_ms) / 1000 + max(
        5.0, settings.redis_timeout_seconds
    )
    return connect_redis(settings.redis_url, 4, timeout=timeout, encoding_errors="surrogateescape")


async def open_store(settings: Settings) -> Store:
    """The Postgres pool with the settings' size and time budgets (connects lazily)."""
    assert settings.database_url is not None
    return await Store.open(
        settings.database_url,
        max_connections=settings.database_max_connections,
        timeout=settings.database_timeout_seconds,
        write_timeout=settings.flush_timeout_seconds,
    )


def make_restore(services: Services, store: Store) -> BucketRestore:
    """The background restore of incomplete buckets, hydrating as the services do, and
    putting back the entities of each bucket (by the rules in force) before completing it."""
    buckets = services.settings.key_buckets
    hydrator = PostgresHydrator(
        store, services.scripts, services.clock, buckets=buckets, window=services.exp.window
    )
    entities = EntityRestore(store, lambda: services.exp.rules, buckets=buckets)
    trusting: list[Trusting] = [services.entities]
    if isinstance(services.hydrator, PostgresHydrator):  # the requests' hydrator: users
        trusting.append(services.hydrator)
    eviction = EvictionCheck(services.redis, services.scripts, trusting, buckets=buckets)
    return BucketRestore(
        hydrator, store, services.scripts, buckets=buckets, entities=entities, eviction=eviction
    )


@dataclass(slots=True)
class Durability:
    """The Postgres store (None without COUNTERS_DATABASE_URL) and this process's flusher."""

    store: Store | None
    settings: Settings | None = None
    flusher: Flusher | None = None
    schema_ready: bool = False
    schema_error: str | None = None
    lag: Lag | None = None  # the latest refresh (None: not measured yet, or Redis down)
    write_refusal: BacklogFull | None = None  # set while the durability window is full
    # Set for good when the ledger recorded another bucket count than this process runs with:
    # no event it writes could ever be ledgered, so writes are refused instead (issue #12).
    layout_refusal: BacklogFull | None = None
    deliverer: Deliverer | None = None
    _redis: Redis | None = None
    _task: FlusherTask | None = None
    _webhooks: DelivererTask | None = None
    _prepare: asyncio.Task[None] | None = None
    _watch: asyncio.Task[None] | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    restore: BucketRestore | None = None
    _restore_task: asyncio.Task[None] | None = None
    _eviction_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Durability:
        """Open the Postgres pool if a database is configured (it connects lazily)."""
        if settings.database_url is None:
            return cls(None, settings)
        return cls(await open_store(settings), settings)

    async def settle_layout(self, settings: Settings) -> Settings:
        """``settings`` with the deployment's recorded bucket count (``counters.runtime.layout``);
        ``ConfigError`` when the setting or the stores disagree: the process must not start."""
        assert settings.redis_url is not None, "COUNTERS_REDIS_URL is not set"
        redis = connect_redis(settings.redis_url, 1, timeout=settings.redis_timeout_seconds)
        try:
            settled = await settle_buckets(settings, redis, self.store)
        finally:
            await redis.aclose()
        self.settings = settled
        return settled

    def start(self, services: Services) -> Durability:
        """Migrate in the background (retrying while Postgres is down), then start the flusher
        when there is a store and it is enabled; and the webhook deliverer, when endpoints are
        configured and it is enabled."""
        if self.store is not None:
            settings = services.settings
            self._redis = flusher_redis(settings)
            rules_of = lambda: services.rules  # noqa: E731 (a reload swaps services.rules)
            self.flusher = make_flusher(settings, self._redis, self.store, rules_of)
            self._prepare = asyncio.create_task(self._migrate_then_flush(), name="durability")
            self._watch = asyncio.create_task(self._watch_lag(settings), name="ledger-lag")
            self.deliverer = make_deliverer(settings, self.store, services.clock)
            if self.deliverer is not None and settings.webhook_deliverer_enabled:
                self._webhooks = DelivererTask(self.deliverer)
                self._webhooks.start()
            self.restore = make_restore(services, self.store)
            interval = settings.restore_interval_seconds
            if interval > 0:
                self._eviction_task = asyncio.create_task(
                    self.restore.watch_eviction(self._closing, interval), name="eviction policy"
                )
        return self

    async def _watch_lag(self, settings: Settings) -> None:
        assert self._redis is not None

        def seen(lag: Lag | None) -> None:
            self.lag = lag  # None: Redis down: writes fail on their own; keep the last verdict
            if lag is not None:
                self.write_refusal = self.layout_refusal or backlog_refusal(settings, lag)

        await lag_watch(self._redis, settings, self._closing, seen)

    async def _migrate_then_flush(self) -> None:
        settings = self.settings
        assert settings is not None and settings.database_url is not None
        assert self.store is not None
        while True:
            try:
                connect = max(settings.database_timeout_seconds, 2.0)
                async with asyncio.timeout(60.0):  # a black-holed Postgres mid-migration
                    await migrate_url(settings.database_url, timeout=connect)
                break
            except Exception as exc:  # Postgres down, refusing or black-holed: try again
                self.schema_error = f"{type(exc).__name__}: {exc}"
                log.warning("schema migrations not applied (%s); retrying", self.schema_error)
                await asyncio.sleep(settings.migrate_retry_seconds)
        while True:  # the bucket count against the ledger's record (issue #12)
            try:
                mismatch = await check_ledger_layout(
                    self.store, settings.key_buckets, settings.database_timeout_seconds
                )
                break
            except StorageError as exc:
                self.schema_error = f"bucket count not checked: {exc}"
                await asyncio.sleep(settings.migrate_retry_seconds)
        if mismatch is not None:
            self.schema_error = mismatch
            self.layout_refusal = self.write_refusal = BacklogFull(
                f"Writes are refused: they could never be ledgered ({mismatch})"
            )
            log.error("the ledger is not flushed and writes are refused: %s", mismatch)
            return
        self.schema_ready, self.schema_error = True, None
        if settings.flusher_enabled and self.flusher is not None:
            self._task = FlusherTask(self.flusher)
            self._task.start()
        if settings.restore_interval_seconds > 0 and self.restore is not None:
            self._restore_task = asyncio.create_task(
                self.restore.run(self._closing, settings.restore_interval_seconds),
                name="bucket restore",
            )

    async def flusher_lag(self, services: Services) -> Lag:
        """Entries not yet ledgered across every bucket stream, and the oldest one's age.

        Raises ``redis.exceptions.RedisError`` when Redis does not answer."""
        streams = [stream_key(bucket) for bucket in range(services.settings.key_buckets)]
        try:
            return await exact_lag(services.redis, streams, services.scripts.send_many)
        except StorageError as exc:  # the auto-pipeline's failures, as the pool's (callers)
            raise RedisError(str(exc)) from exc

    def stall(self, lag: Lag | None) -> str | None:
        """Why the ledger is not advancing (None when it is): the oldest unledgered event is
        older than COUNTERS_FLUSH_STALL_SECONDS, or this process's flusher has not finished an
        iteration for that long (with its last error), or the schema is not applied."""
        settings = self.settings
        if self.store is None or settings is None:
            return None
        limit = settings.flush_stall_seconds
        if not self.schema_ready and self.schema_error is not None:
            return f"schema migrations not applied: {self.schema_error}"
        if lag is not None and lag.seconds > limit:
            return f"oldest unledgered event is {lag.seconds:.1f}s old (limit {limit:g}s)"
        flusher = self.flusher
        if self._task is not None and flusher is not None:
            idle = time.monotonic() - flusher.stats.last_progress
            if idle > limit:
                why = flusher.stats.last_error or "no iteration finished"
                return f"flusher has not advanced for {idle:.1f}s: {why}"
        return None

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """A page of a user's ledger; ``StorageError`` (503) without Postgres or while down."""
        if self.store is None:
            raise StorageError("history needs Postgres: COUNTERS_DATABASE_URL is not set")
        return await self.store.history(query)

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Stop the flusher cleanly, ledger what is left in the streams (for up to
        ``drain_seconds``; anything still left waits in Redis for the next flusher), then close
        the pool."""
        self._closing.set()  # the lag watcher ends after its current refresh
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watch, 10)
        for task in (self._prepare, self._restore_task, self._eviction_task):
            if task is not None:  # again and again if need be (counters.tasks.cancel_and_wait)
                await cancel_and_wait(task)
        if self._task is not None:
            await self._task.stop()
            assert self.flusher is not None
            try:
                await asyncio.wait_for(self.flusher.drain(max_failures=3), drain_seconds)
            except Exception as exc:  # shutting down: say so, never fail the shutdown
                log.warning("flusher drain at shutdown stopped early: %s", exc or type(exc))
        if self._redis is not None:
            await self._redis.aclose()
        if self._webhooks is not None:
            await self._webhooks.stop()
        elif self.deliverer is not None:
            await self.deliverer.aclose()
        if self.store is not None:
            await self.store.close()


async def lag_watch(
    redis: Redis, settings: Settings, stop: asyncio.Event, on_lag: Callable[[Lag | None], None]
) -> None:
    """Refresh the ledger's lag every ``lag_refresh_seconds`` until ``stop``, handing each
    result (None: Redis did not answer) to ``on_lag``."""
    probe = LagProbe(redis, [stream_key(bucket) for bucket in range(settings.key_buckets)])
    while not stop.is_set():
        try:
            lag: Lag | None = await probe.refresh()  # idle streams a slice at a time
        except Exception:
            lag = None
        on_lag(lag)
        with contextlib.suppress(TimeoutError):  # not cancelled mid-command: it would
            await asyncio.wait_for(stop.wait(), settings.lag_refresh_seconds)


def backlog_refusal(settings: Settings, lag: Lag) -> BacklogFull | None:
    """The refusal writes get while ``lag`` is past the durability window, else None."""
    events, seconds = settings.max_unflushed_events, settings.max_unflushed_seconds
    if (events and lag.events >= events) or (seconds and lag.seconds >= seconds):
        return BacklogFull(
            f"Too many changes are not yet durable ({lag.events} events, the oldest"
            f" {lag.seconds:.1f}s old; limits {events} events, {seconds:g}s): try again shortly"
        )
    return None
