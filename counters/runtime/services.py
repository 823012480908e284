"""The long-lived parts of a running service, built once (in a lifespan or a CLI command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from counters.auth import Authenticator
from counters.clock import Clock, SystemClock
from counters.errors import ConfigError
from counters.exp.entities import Entities
from counters.exp.entitlements import EntitlementService
from counters.exp.leaderboard import Leaderboards
from counters.exp.service import ExpService
from counters.redis.cluster import ClusterPipeline, is_cluster_url, parse_cluster_url
from counters.redis.hydration import Hydrator, NoDurableStore
from counters.redis.pipelining import AutoPipeline, connect_timeout
from counters.redis.scripts import Scripts
from counters.rules import Rules, load_rules, rules_version
from counters.rules.compiled import lua_rules
from counters.rules.metrics import set_rules_version
from counters.settings import Settings
from counters.xp.service import XpService
from persistence.leaderboard import ledger_sums
from persistence.recovery import (
    PostgresHydrator,
    durable_owner_lookup,
    durable_triggers_lookup,
)
from persistence.store import Store


def connect_redis(
    url: str,
    max_connections: int,
    *,
    timeout: float | None = None,
    encoding_errors: str = "strict",
) -> Redis:
    """A client whose pool waits for a free connection instead of failing under bursts.

    ``timeout`` (seconds) bounds each command's reply and the wait for a pooled connection,
    and connecting by ``connect_timeout(timeout)``; None: no bound (batch commands).
    ``encoding_errors="surrogateescape"`` reads bytes that are not UTF-8 as lone surrogates
    instead of failing (the flusher must read every entry, whatever it holds)."""
    if is_cluster_url(url):
        return connect_cluster(
            url, max_connections, timeout=timeout, encoding_errors=encoding_errors
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10 if timeout is None else max(2 * timeout, 1.0),
        socket_timeout=timeout,
        socket_connect_timeout=None if timeout is None else connect_timeout(timeout),
        decode_responses=True,
        encoding_errors=encoding_errors,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


def connect_cluster(
    url: str,
    max_connections: int,
    *,
    timeout: float | None = None,
    encoding_errors: str = "strict",
) -> Redis:
    """redis-py's ``RedisCluster`` for a ``redis+cluster://`` URL (counters/redis/cluster.py),
    with the timeouts of ``connect_redis`` on every node and ``max_connections`` per node.

    Typed as ``Redis``: it takes the same commands, and its pipelines (not transactions) split
    their commands by node, so the non-hot paths' per-key pipelines (leaderboards, restore,
    reconcile, lag) run unchanged; what a cluster refuses (a command over several slots, MULTI
    over several slots) is done per slot where it is used (persistence/cluster_flusher.py).
    ``scan_iter`` walks every master."""
    address = parse_cluster_url(url)
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=None if timeout is None else connect_timeout(timeout),
        decode_responses=True,
        encoding_errors=encoding_errors,
    )
    return cast(Redis, cluster)


def is_cluster(redis: Redis) -> bool:
    """True when ``redis`` was made by ``connect_cluster``."""
    return isinstance(redis, RedisCluster)


def open_pipeline(url: str, timeout: float) -> AutoPipeline | ClusterPipeline:
    """The auto-pipeline for ``url``: one connection, or one per cluster master."""
    return ClusterPipeline(url, timeout) if is_cluster_url(url) else AutoPipeline(url, timeout)


@dataclass(slots=True)
class Services:
    settings: Settings
    rules: Rules
    clock: Clock
    redis: Redis
    scripts: Scripts
    auth: Authenticator
    entities: Entities
    exp: ExpService
    xp: XpService
    entitlements: EntitlementService
    leaderboards: Leaderboards
    rules_version: str = ""
    # Hydrates the users Redis lacks (told by persistence.restore.EvictionCheck whether a
    # complete bucket speaks for them)
    hydrator: Hydrator = field(default_factory=NoDurableStore)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        rules: Rules | None = None,
        clock: Clock | None = None,
        hydrator: Hydrator | None = None,
        store: Store | None = None,
    ) -> Services:
        """Wire every part from settings; nothing here talks to Redis yet.

        With a ``store`` (Postgres), users Redis forgot are hydrated from it and entity owners
        Redis does not know are looked up in it.
        """
        if settings.redis_url is None:
            raise ConfigError("COUNTERS_REDIS_URL is not set (serve starts an embedded Redis)")
        rules = rules or load_rules(settings.rules)
        clock = clock or SystemClock(settings.clock_offset_seconds)
        timeout = settings.redis_timeout_seconds
        redis = connect_redis(settings.redis_url, settings.redis_max_connections, timeout=timeout)
        auto = settings.redis_autopipeline
        pipeline = open_pipeline(settings.redis_url, timeout) if auto else None
        scripts = Scripts(redis, pipeline)
        version = rules_version(rules)
        scripts.use_rules(version, lua_rules(rules))
        if store is not None and hydrator is None:
            # exp is built below; the hydrator asks it for today's window only when it runs.
            hydrator = PostgresHydrator(
                store, scripts, clock, buckets=settings.key_buckets,
                window=lambda user_id, now: exp.window(user_id, now),
                board_grace=settings.day_grace_seconds if settings.leaderboards_enabled else None,
            )  # fmt: skip
        hydrator = hydrator or NoDurableStore()
        fence = hydrator if isinstance(hydrator, PostgresHydrator) else None
        owner_lookup = durable_owner_lookup(store, fence) if store is not None else None
        triggers = durable_triggers_lookup(store) if store is not None else None
        entities = Entities(
            scripts, settings.key_buckets, clock,
            durable_lookup=owner_lookup, triggers_lookup=triggers,
        )  # fmt: skip
        exp = ExpService(
            rules.exp, version, scripts, entities, hydrator, clock,
            buckets=settings.key_buckets,
            idempotency_ttl=settings.idempotency_ttl_seconds,
            day_grace=settings.day_grace_seconds,
            day_jitter=settings.day_jitter_seconds,
            leaderboards=settings.leaderboards_enabled,
            creator_shortcut=settings.creator_shortcut,
            limit_cache_entries=settings.limit_cache_entries,
        )  # fmt: skip
        xp = XpService(
            rules.xp, version, scripts, hydrator, clock,
            buckets=settings.key_buckets,
            idempotency_ttl=settings.idempotency_ttl_seconds,
            hold_ttl=settings.hold_ttl_seconds,
        )  # fmt: skip
        entitlements = EntitlementService(
            rules.entitlements, rules.exp, scripts, hydrator, buckets=settings.key_buckets
        )
        leaderboards = Leaderboards(
            redis, clock, buckets=settings.key_buckets, grace=settings.day_grace_seconds,
            ledger_sums=ledger_sums(store) if store is not None else None,
            enabled=settings.leaderboards_enabled, scripts=scripts,
            cache_seconds=settings.leaderboard_cache_seconds,
        )  # fmt: skip
        auth = Authenticator(settings.jwt_secret, settings.service_keys)
        set_rules_version(version)
        return cls(
            settings, rules, clock, redis, scripts, auth, entities, exp, xp,
            entitlements=entitlements, leaderboards=leaderboards, rules_version=version,
            hydrator=hydrator,
        )  # fmt: skip

    def use_rules(self, rules: Rules) -> None:
        """Serve ``rules`` from the next request on (see counters/runtime/reload.py): the
        scripts compiled with them first (no await: nothing is sent), then the services."""
        version = rules_version(rules)
        self.scripts.use_rules(version, lua_rules(rules))
        self.exp.use_rules(rules.exp, version)
        self.xp.use_rules(rules.xp, version)
        self.entitlements.use_rules(rules.entitlements, rules.exp)
        self.rules, self.rules_version = rules, version
        set_rules_version(self.rules_version)

    async def close(self) -> None:
        await self.scripts.aclose()
        await self.redis.aclose()
