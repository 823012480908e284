"""The bucket layout: how many hash-tag buckets this deployment has, recorded once (issue #12).

Every user key and bucket stream carries the hash tag ``{bN}``, N = crc32(id) % count
(``counters/redis/keys.py``), so changing the count moves every user to another key: it is a
fact of the deployment, not only a setting. The first start records it, in Redis (the HASH
``ctr:layout``, field ``key_buckets``; one key, no bucket tag) and, with Postgres, in the
``bucket_layout`` row (migration 0006). Every later start (``settle_buckets``):

- COUNTERS_KEY_BUCKETS not given: the recorded count is used (a deployment that recorded 16 keeps
  working after the default became 1,024); nothing recorded: the default is used and recorded.
- COUNTERS_KEY_BUCKETS given and equal to the recorded count: used.
- given and different, or Redis and Postgres recording different counts: ``ConfigError`` naming
  both, and the process does not start. Never a silent re-hash of every user.

Redis or Postgres unreachable at start: that store is not consulted (``serve`` must start and
answer 503 while a store is down). Postgres is checked again once the migrations apply
(``check_ledger_layout``, from ``Durability``): a disagreement then stops the flusher and makes
``/readyz`` say why. Redis lost (flushed, failed over empty): its record comes back from Postgres.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.errors import ConfigError, StorageError
from counters.redis.keys import LAYOUT_FIELD, LAYOUT_KEY
from counters.settings import Settings
from persistence.store import Store

log = logging.getLogger("counters.runtime")


def choose_buckets(setting: int, given: bool, recorded: dict[str, int]) -> int:
    """The bucket count to run with, from the setting (``given``: set explicitly) and what
    each store recorded (``{"redis": 16, "postgres": 16}``, absent stores left out).

    Raises ``ConfigError`` naming both counts when two records disagree, or when the setting
    was given and disagrees with the record."""
    counts = set(recorded.values())
    if len(counts) > 1:
        said = ", ".join(f"{store} records {n}" for store, n in sorted(recorded.items()))
        raise ConfigError(f"the deployment's bucket count is recorded differently: {said}")
    if not counts:
        return setting
    (count,) = counts
    if given and setting != count:
        where = " and ".join(sorted(recorded))
        raise ConfigError(
            f"COUNTERS_KEY_BUCKETS={setting} but this deployment recorded {count} buckets"
            f" ({where}); changing it would move every user to another key. Unset"
            f" COUNTERS_KEY_BUCKETS (the recorded {count} is used) or set it to {count}"
        )
    return count


async def redis_buckets(redis: Redis) -> int | None:
    """The count Redis recorded (None: none). Raises ``RedisError`` when Redis fails."""
    raw = await redis.hget(LAYOUT_KEY, LAYOUT_FIELD)
    return None if raw is None else int(raw)


async def record_redis_buckets(redis: Redis, count: int) -> int:
    """Record ``count`` in Redis unless a count is there already; returns the recorded one (a
    concurrent first start with another count wins or loses here, never both)."""
    await redis.hsetnx(LAYOUT_KEY, LAYOUT_FIELD, str(count))
    recorded = await redis_buckets(redis)
    assert recorded is not None
    return recorded


async def ledger_buckets(store: Store, timeout: float) -> int | None:
    """The count Postgres recorded (None: none). Raises ``StorageError`` when Postgres fails or
    the migration is not applied yet."""
    async with store.bounded("bucket layout", timeout) as conn:
        value: int | None = await conn.fetchval("SELECT key_buckets FROM bucket_layout")
    return value


async def record_ledger_buckets(store: Store, count: int, timeout: float) -> int:
    """Record ``count`` in Postgres unless a count is there; returns the recorded one."""
    async with store.bounded("bucket layout", timeout) as conn:
        await conn.execute(
            "INSERT INTO bucket_layout (key_buckets) VALUES ($1) ON CONFLICT DO NOTHING", count
        )
        value: int = await conn.fetchval("SELECT key_buckets FROM bucket_layout")
    return value


async def settle_buckets(settings: Settings, redis: Redis, store: Store | None) -> Settings:
    """``settings`` with the bucket count this deployment runs with, recorded where it was not.

    Raises ``ConfigError`` (the process must not start) on a disagreement; a store that does not
    answer is skipped with a warning (see the module's docstring)."""
    timeout = max(settings.redis_timeout_seconds, 1.0)
    recorded: dict[str, int] = {}
    redis_up = True
    try:
        async with asyncio.timeout(timeout):
            found = await redis_buckets(redis)
        if found is not None:
            recorded["redis"] = found
    except (RedisError, TimeoutError, OSError) as exc:
        redis_up = False
        log.warning("bucket count not checked against Redis (%s)", exc or type(exc).__name__)
    ledger_up = store is not None
    if store is not None:
        try:
            found = await ledger_buckets(store, settings.database_timeout_seconds)
            if found is not None:
                recorded["postgres"] = found
        except StorageError as exc:  # down, or the migration not applied yet: checked later
            ledger_up = False
            log.info("bucket count not checked against Postgres yet (%s)", exc)
    count = choose_buckets(settings.key_buckets, settings.buckets_given, recorded)
    if redis_up and "redis" not in recorded:
        with _skipped("Redis"):
            async with asyncio.timeout(timeout):
                recorded["redis"] = await record_redis_buckets(redis, count)
    if store is not None and ledger_up and "postgres" not in recorded:
        with _skipped("Postgres"):
            recorded["postgres"] = await record_ledger_buckets(
                store, count, settings.database_timeout_seconds
            )
    count = choose_buckets(count, True, recorded)  # a concurrent first start chose otherwise
    return replace(settings, key_buckets=count)


async def check_ledger_layout(store: Store, count: int, timeout: float) -> str | None:
    """After the migrations applied: record ``count`` in Postgres if it has none; the reason
    this process must not flush (Postgres recorded another count), else None. Raises
    ``StorageError`` when Postgres fails."""
    recorded = await record_ledger_buckets(store, count, timeout)
    if recorded == count:
        return None
    return (
        f"this process runs with {count} buckets but Postgres recorded {recorded}: restart it"
        f" with COUNTERS_KEY_BUCKETS={recorded} (or unset)"
    )


class _skipped:
    """Recording in a store that fails now is skipped (a later start records it)."""

    def __init__(self, store: str) -> None:
        self._store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, RedisError | StorageError | TimeoutError | OSError):
            log.warning("bucket count not recorded in %s (%s)", self._store, exc)
            return True
        return False
