"""What the bench does to Redis directly, with the service's own code: seeding, the raw ceiling of
the award script, and memory per active user-day.

Keys and arguments always come from ``counters`` (``ExpService.prepare_award`` builds the exact
EVALSHA a request would send); nothing here spells a key or an ARGV itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from bench import scenarios
from bench.scenarios import Award
from counters.auth import Principal
from counters.errors import RequestError
from counters.exp.entities import Target
from counters.exp.types import AwardCall
from counters.redis.calls import command_args
from counters.redis.idempotency import Idempotency
from counters.redis.keys import UserKeys, stream_key
from counters.redis.scripts import library_source, requires_rules, script_names, script_source
from counters.rules import load_rules
from counters.rules.compiled import lua_rules
from counters.runtime.services import Services
from counters.settings import Settings

SERVICE = "service:0"
_CHUNK = 1_000


def bench_settings(redis_url: str, database_url: str | None = None) -> Settings:
    """The settings every target runs with (the servers get them as COUNTERS_* variables)."""
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        jwt_secret=scenarios.JWT_SECRET,
        service_keys=(scenarios.SERVICE_KEY,),
        # Seeding runs 1,000 calls at once: a few connections (each now connects and AUTHs)
        # instead of a storm of 256 that timed out connecting on a loaded machine.
        redis_max_connections=16,
    )


@asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services.build(settings)
    try:
        yield svc
    finally:
        await svc.close()


async def in_chunks(coroutines: Sequence[Any], size: int = _CHUNK) -> list[Any]:
    """Await many coroutines, ``size`` at a time (they pipeline; memory stays bounded)."""
    results: list[Any] = []
    for start in range(0, len(coroutines), size):
        results += await asyncio.gather(*coroutines[start : start + size])
    return results


async def seed_owners(svc: Services) -> None:
    """Record the owners of the entities that exist before a run (fresh Redis each time)."""
    entities = scenarios.owned_entities()
    await in_chunks([svc.entities.assign(Target(kind, id_), who) for kind, id_, who in entities])


async def subscribe(svc: Services, users: Sequence[str], tier: str, top_up: int) -> None:
    """Subscribe each user to ``tier`` and give them a top-up (for the XP debit scenario)."""
    await in_chunks([svc.xp.set_subscription(user, SERVICE, tier, None, None) for user in users])
    await in_chunks([svc.xp.grant(user, SERVICE, top_up, "bench", None, None) for user in users])


def _creator_targeted(svc: Services, award: Award) -> bool:
    return svc.exp.rules.actions[award.action].awards == "creator"


def _target(award: Award) -> Target | None:
    if award.target_type is not None and award.target_id is not None:
        return Target(award.target_type, award.target_id)
    return None


async def award(svc: Services, award: Award) -> None:
    """One award through the service (a creator-targeted one takes several scripts)."""
    with suppress(RequestError):
        principal = Principal(award.user_id, SERVICE, True)
        await svc.exp.award(principal, award.action, _target(award), None)


async def award_calls(svc: Services, awards: Sequence[Award]) -> list[AwardCall]:
    """The script call each award would send, built by the service (awards it refuses are left out,
    and so are creator-targeted ones: they are a protocol of several scripts, not one call)."""

    async def prepare(award: Award) -> AwardCall | None:
        principal = Principal(award.user_id, SERVICE, True)
        try:
            return await svc.exp.prepare_award(principal, award.action, _target(award), None)
        except RequestError:
            return None

    calls = await in_chunks([prepare(award) for award in awards])
    return [call for call in calls if call is not None]


@dataclass(frozen=True, slots=True)
class CeilingResult:
    awards: int
    seconds: float
    per_second: float
    batch: int
    connections: int


async def lua_ceiling(
    url: str, calls: Sequence[AwardCall], *, batch: int = 200, connections: int = 2
) -> CeilingResult:
    """Awards/s of the award script alone: pipelined FCALL (EVALSHA on Redis 6.2, as the
    service sends it) from plain redis-py clients, in batches, ``connections`` pipelines in
    flight (so Redis never waits for the client)."""
    script = await load_award_script(url)
    chunks = [calls[i : i + batch] for i in range(0, len(calls), batch)]
    clients = [aioredis.Redis.from_url(url) for _ in range(connections)]
    queue = list(reversed(chunks))

    async def drive(client: aioredis.Redis) -> int:
        done = 0
        while queue:
            chunk = queue.pop()
            pipe = client.pipeline(transaction=False)
            for call in chunk:
                pipe.execute_command(*script, *new_user_args(call))
            await pipe.execute()
            done += len(chunk)
        return done

    try:
        started = time.perf_counter()
        done = sum(await asyncio.gather(*(drive(client) for client in clients)))
        seconds = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return CeilingResult(done, seconds, done / seconds, batch, connections)


def new_user_args(call: AwardCall) -> tuple[str | int | float, ...]:
    """The script call's arguments after the function (or SHA), with a missing user created
    (no hydration here)."""
    return command_args(call.keys, msgspec.structs.replace(call.call, may_create="1"))


async def load_award_script(url: str) -> tuple[str, str]:
    """award_exp.lua compiled with the shipped rules (the bench's), loaded as the service sends
    it: ``("FCALL", function)`` of its library on Redis >= 7, else ``("EVALSHA", sha)``."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        rules = lua_rules(load_rules())
        version = str((await client.info("server"))["redis_version"])
        if tuple(int(n) for n in version.split(".")) >= (7, 0):
            library = library_source([n for n in script_names() if requires_rules(n)], rules)
            await client.function_load(library.text, replace=True)
            return ("FCALL", library.functions["award_exp"])
        sha: str = await client.script_load(script_source("award_exp", rules))
    finally:
        await client.aclose()
    return ("EVALSHA", sha)


async def run_calls(url: str, calls: Sequence[AwardCall], batch: int = 500) -> None:
    """Apply awards as fast as possible (seeding a day of activity)."""
    script = await load_award_script(url)
    client = aioredis.Redis.from_url(url)
    try:
        for start in range(0, len(calls), batch):
            pipe = client.pipeline(transaction=False)
            for call in calls[start : start + batch]:
                pipe.execute_command(*script, *new_user_args(call))
            await pipe.execute()
    finally:
        await client.aclose()


def typical_day(users: int, prefix: str) -> list[Award]:
    """A day of ``users`` active users: the daily chat, a character created, a scene forked
    and a few likes given (received by the owners of existing characters)."""
    awards: list[Award] = []
    for n in range(users):
        user = f"{prefix}{n}"
        awards.append(Award(user, "daily_chat"))
        awards.append(Award(user, "create_character", "character", f"{prefix}-c{n}"))
        awards.append(Award(user, "forked", "scene", f"s{n % scenarios.OWNED_SCENES}"))
        for like in range(3):
            character = (n * 7 + like * 1_009) % scenarios.OWNED_CHARACTERS
            awards.append(Award(user, "character_liked", "character", f"c{character}"))
    return awards


@dataclass(frozen=True, slots=True)
class MemoryResult:
    users: int
    awards: int
    bytes_total: int
    bytes_per_user_day: float
    stream_bytes: int
    bytes_per_user_day_without_streams: float  # once the flusher has moved the events


@dataclass(frozen=True, slots=True)
class AwardCost:
    kind: str
    awards: int
    per_second: float
    mean_ms: float
    redis_calls_per_award: float


async def creator_cost(
    svc: Services, awards: int = 20_000, concurrency: int = 64
) -> list[AwardCost]:
    """Awards/s and mean latency of ``daily_chat`` (one script), an unkeyed like and a keyed like
    (the creator protocol's 3 and 4 round trips), each ``awards`` times through the service in
    this process, ``concurrency`` at once, on the auto-pipeline as under HTTP."""
    info = aioredis.Redis.from_url(svc.settings.redis_url or "")
    owners = [e for e in scenarios.owned_entities() if e[0] == "character"]
    results: list[AwardCost] = []
    try:
        for round_, kind in enumerate(("daily_chat", "character_liked", "character_liked keyed")):
            action = kind.split()[0]

            async def one(n: int, action: str = action, kind: str = kind, r: int = round_) -> float:
                principal = Principal(f"cost{r}-{n}", SERVICE, True)  # new actors each round
                target = None
                if action == "character_liked":
                    type_, id_, _ = owners[n % len(owners)]
                    target = Target(type_, id_)
                idem = Idempotency.of(SERVICE, f"k{n}", kind, b"") if "keyed" in kind else None
                started = time.perf_counter()
                await svc.exp.award(principal, action, target, idem)
                return time.perf_counter() - started

            calls_before = await _script_calls(info)
            started = time.perf_counter()
            latencies = await in_chunks([one(n) for n in range(awards)], concurrency)
            seconds = time.perf_counter() - started
            calls = await _script_calls(info) - calls_before
            mean_ms = 1000 * sum(latencies) / len(latencies)
            results.append(AwardCost(kind, awards, awards / seconds, mean_ms, calls / awards))
    finally:
        await info.aclose()
    return results


async def _script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_fcall_ro")
    )


async def memory_per_user_day(url: str, svc: Services, users: int) -> MemoryResult:
    """INFO memory before and after ``users`` users each do a typical day."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        awards = typical_day(users, "m")
        await client.memory_purge()
        before = int((await client.info("memory"))["used_memory"])
        before_streams = await _stream_bytes(client, svc)
        await run_calls(url, await award_calls(svc, awards))
        await in_chunks([award(svc, a) for a in awards if _creator_targeted(svc, a)])
        await client.memory_purge()
        after = int((await client.info("memory"))["used_memory"])
        streams = await _stream_bytes(client, svc) - before_streams
    finally:
        await client.aclose()
    total = after - before
    return MemoryResult(
        users, len(awards), total, total / users, streams, (total - streams) / users
    )


async def _stream_bytes(client: aioredis.Redis, svc: Services) -> int:
    total = 0
    for bucket in range(svc.settings.key_buckets):
        total += int(await client.memory_usage(stream_key(bucket), samples=0) or 0)
    return total


def snapshot(url: str) -> list[tuple[bytes, bytes]]:
    """Every key of Redis, dumped (to start each target from the same seeded state quickly)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(count=1_000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
        return list(zip(keys, pipe.execute(), strict=True))
    finally:
        client.close()


def seed_known_users(url: str, users: Sequence[str], buckets: int) -> None:
    """Make ``users`` known to Redis (a user hash at seq 0, as a hydration of a user Postgres
    has no row for writes): row 2p's users Redis holds."""
    client = redis.Redis.from_url(url)
    try:
        for start in range(0, len(users), 5_000):
            pipe = client.pipeline(transaction=False)
            for user in users[start : start + 5_000]:
                pipe.hset(UserKeys.of(user, buckets).user, mapping={"exp": 0, "level": 1, "seq": 0})
            pipe.execute()
    finally:
        client.close()


def restore(url: str, dumped: list[tuple[bytes, bytes]]) -> None:
    """Empty Redis, then put back what ``snapshot`` took."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
        pipe = client.pipeline(transaction=False)
        for key, value in dumped:
            pipe.restore(key, 0, value, replace=True)
        pipe.execute()
    finally:
        client.close()
