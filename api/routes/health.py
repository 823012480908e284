"""Health: GET /healthz (the process answers), GET /readyz (it can serve, and how far behind
the durable ledger is), and GET /metrics (Prometheus text, every worker's values summed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.errors import READINESS_STATUS
from api.http import json_response, query_param, services
from counters import metrics as metric_objects
from counters.redis.memory import full_nodes
from counters.runtime.durability import Durability

# Only Redis gates readiness by default: the API serves from Redis alone while Postgres is down
# (the flusher catches up later), so failing readiness then would turn a Postgres outage into a
# full outage. ``?strict=1`` also requires Postgres and a flusher that advances.
_TIMEOUT = 1.0
_log = logging.getLogger("counters.health")


async def healthz(request: Request) -> Response:
    """The process is alive and answering."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Whether this instance can serve, with Postgres's status and the flusher's lag; degraded
    (``?strict=1``: not ready) while Postgres is down, the flusher stalls, a Redis node may
    evict keys, one refuses writes for memory (``redis_memory_full``), or this worker's clock is
    more than COUNTERS_MAX_CLOCK_SKEW_SECONDS off Redis's (``clock_skew_seconds``)."""
    svc = services(request)
    durability: Durability = request.app.state.durability
    strict = query_param(request, "strict", "") in {"1", "true", "yes"}
    redis_ok = await _redis_ok(request)
    body: dict[str, object] = {"redis": "ok" if redis_ok else "down"}
    body["rules_version"] = svc.rules_version
    reload_error = request.app.state.rules_reloader.last_error
    if reload_error is not None:
        body["rules_reload_error"] = reload_error  # the file on disk is not what is served
    postgres_ok = True
    evicting = False
    skewed = False
    if redis_ok and svc.settings.max_clock_skew_seconds:
        skew = await _clock_skew(request)
        if skew is not None and abs(skew) > svc.settings.max_clock_skew_seconds:
            skewed = True
            body["clock_skew_seconds"] = round(skew, 3)
            _log.warning("clock skew: this worker's clock is %+.3f s off Redis's", skew)
    memory_full = redis_ok and await _memory_full(request)
    if memory_full:
        # PING answers, every write is refused (OOM): degraded, and strict says no.
        body["redis_memory_full"] = (
            "a Redis node reached maxmemory under noeviction: every write is refused (OOM)"
            " until memory is freed or maxmemory is raised"
        )
    if durability.store is None:
        body["postgres"] = "not configured"
    else:
        postgres_ok = await durability.store.ping(_TIMEOUT)
        body["postgres"] = "ok" if postgres_ok else "down"
        flusher: dict[str, object] = {"running": svc.settings.flusher_enabled}
        lag = None
        if redis_ok:
            with contextlib.suppress(RedisError):  # Redis went away since the ping: no lag
                lag = await durability.flusher_lag(svc)
                flusher |= {"lag_events": lag.events, "lag_seconds": lag.seconds}
        if durability.flusher is not None and durability.flusher.stats.last_error:
            flusher["last_error"] = durability.flusher.stats.last_error
        if durability.write_refusal is not None:
            flusher["writes_refused"] = str(durability.write_refusal)
        stalled = durability.stall(lag)
        if stalled is not None:
            flusher["stalled"] = stalled
            postgres_ok = False  # the ledger is not advancing: degraded, and strict says no
        body["flusher"] = flusher
        if durability.restore is not None:
            body["restore"] = durability.restore.progress.as_json()
            eviction = durability.restore.eviction
            if eviction is not None and eviction.may_evict:
                # Evicted idempotency, transaction, day or once-per-actor records change answers
                # (README, Durability): degraded, so an operator sees it, and strict says no.
                body["redis_eviction"] = (
                    "a Redis node may evict keys (maxmemory-policy is not noeviction, or CONFIG"
                    " is refused): evicted records can change answers"
                )
                evicting = True
    healthy = postgres_ok and not evicting and not memory_full and not skewed
    ready = redis_ok and (healthy or not strict)
    body["status"] = ("ready" if healthy else "degraded") if ready else "not ready"
    return json_response(body, READINESS_STATUS[ready])


async def _redis_ok(request: Request) -> bool:
    """Redis answers PING within the timeout. A pooled connection that broke when Redis
    restarted fails its first command and is dropped; so one failure is retried on a fresh
    connection before Redis counts as down (no spurious "down" right after a restart)."""
    redis = services(request).redis
    try:
        async with asyncio.timeout(_TIMEOUT):
            for attempt in range(2):
                try:
                    return bool(await redis.ping())
                except RedisError:
                    if attempt:
                        raise
    except Exception:  # any failure to answer is "down"; the body says so
        return False
    return False


async def _clock_skew(request: Request) -> float | None:
    """Seconds this worker's clock (``Services.clock``: the system clock plus
    COUNTERS_CLOCK_OFFSET_SECONDS) is ahead of Redis's ``TIME`` (negative: behind), the round
    trip's midpoint taken as Redis's instant; None when Redis does not answer in time.

    Daily limits and caps are windowed by each worker's own clock (counters/clock.py), so two
    workers whose clocks disagree by a day give one user two days' limits at once; readiness
    is where such a worker shows (found by issue #11's second attacker)."""
    svc = services(request)
    try:
        async with asyncio.timeout(_TIMEOUT):
            before = svc.clock.now()
            seconds, micros = await svc.redis.time()
            after = svc.clock.now()
    except (RedisError, OSError, TimeoutError):
        return None
    return (before + after) / 2 - (int(seconds) + int(micros) / 1e6)


async def _memory_full(request: Request) -> bool:
    """A Redis node refuses writes because its memory is full (``counters/redis/memory.py``);
    False when that cannot be read within the timeout (PING said Redis answers)."""
    try:
        async with asyncio.timeout(_TIMEOUT):
            return bool(await full_nodes(services(request).redis))
    except (RedisError, OSError, TimeoutError):
        return False


async def metrics(request: Request) -> Response:
    """Prometheus exposition text; the flusher lag is measured now, for this scrape."""
    svc = services(request)
    durability: Durability = request.app.state.durability
    if durability.store is not None:
        with contextlib.suppress(RedisError, TimeoutError):  # the gauges keep their last value
            async with asyncio.timeout(_TIMEOUT):
                lag = await durability.flusher_lag(svc)
            metric_objects.FLUSHER_LAG_EVENTS.set(lag.events)
            metric_objects.FLUSHER_LAG_SECONDS.set(lag.seconds)
    body, content_type = metric_objects.render()
    return Response(body, 200, media_type=content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
metrics_routes = [Route("/metrics", metrics, methods=["GET"])]
