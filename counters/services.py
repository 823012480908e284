"""The long-lived parts of a running service, built once (in a lifespan or a CLI command)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis

from counters.auth import Authenticator
from counters.clock import Clock, SystemClock
from counters.entities import Entities
from counters.errors import ConfigError
from counters.exp import ExpService
from counters.hydration import Hydrator, NoDurableStore
from counters.rules import Rules, load_rules
from counters.scripts import Scripts
from counters.settings import Settings


def connect_redis(url: str, max_connections: int) -> Redis:
    """A client whose pool waits for a free connection instead of failing under bursts."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, decode_responses=True
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


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

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        rules: Rules | None = None,
        clock: Clock | None = None,
        hydrator: Hydrator | None = None,
    ) -> Services:
        """Wire every part from settings; nothing here talks to Redis yet."""
        if settings.redis_url is None:
            raise ConfigError("COUNTERS_REDIS_URL is not set (serve starts an embedded Redis)")
        rules = rules or load_rules(settings.rules)
        clock = clock or SystemClock(settings.clock_offset_seconds)
        hydrator = hydrator or NoDurableStore()
        redis = connect_redis(settings.redis_url, settings.redis_max_connections)
        scripts = Scripts(redis)
        entities = Entities(redis, scripts, settings.key_buckets)
        exp = ExpService(
            rules.exp, scripts, entities, hydrator, clock,
            buckets=settings.key_buckets,
            idempotency_ttl=settings.idempotency_ttl_seconds,
            day_grace=settings.day_grace_seconds,
            day_jitter=settings.day_jitter_seconds,
        )  # fmt: skip
        auth = Authenticator(settings.jwt_secret, settings.service_keys)
        return cls(settings, rules, clock, redis, scripts, auth, entities, exp)

    async def close(self) -> None:
        await self.redis.aclose()
