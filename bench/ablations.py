"""The "ways there": each one change against the main configuration (bench/README.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from bench import cpu, flush, scenarios
from bench.measured import Measured
from bench.servers import BARE_APP, FLOOR_APP, GAIN_APP, RAW_APP

if TYPE_CHECKING:
    from bench.run import Bench


def ways_there(bench: Bench) -> None:
    """Each way there, one change against the main configuration, measured once."""
    other = 2 if bench.options.workers == 1 else 1
    jwt_requests = scenarios.user_token_requests(bench.gain_awards)
    no_autopipeline = bench.env(COUNTERS_REDIS_AUTOPIPELINE="0")
    runs: list[tuple[str, str, Callable[[], Measured]]] = [
        ("a1", "gain, one redis-py call per request (no auto-pipelining)",
         lambda: bench.http(GAIN_APP, bench.gain_requests, env=no_autopipeline, ablation=True)),
        ("r1", "bare route's body from a raw ASGI app (uvicorn's own floor, no Starlette)",
         lambda: bench.http(RAW_APP, bench.bare_requests, env={}, probe="/", ablation=True)),
        ("r2", "the hot lane's floor: gain's requests, one Redis round trip, bare's body",
         lambda: bench.http(FLOOR_APP, bench.gain_requests, ablation=True)),
        ("w1", f"bare, {other} worker(s)",
         lambda: bench.http(BARE_APP, bench.bare_requests, env={}, probe="/", workers=other,
                           ablation=True)),
        ("w2", f"gain, {other} worker(s)",
         lambda: bench.http(GAIN_APP, bench.gain_requests, workers=other, ablation=True)),
        ("h1", "bare, asyncio loop + h11 (no uvloop, no httptools)",
         lambda: bench.http(BARE_APP, bench.bare_requests, env={}, probe="/", loop="asyncio",
                           http="h11", ablation=True)),
        ("h2", "gain, asyncio loop + h11 (no uvloop, no httptools)",
         lambda: bench.http(GAIN_APP, bench.gain_requests, loop="asyncio", http="h11",
                           ablation=True)),
        ("j1", "gain, a user JWT per request (100k distinct: no cache hits)",
         lambda: bench.http(GAIN_APP, jwt_requests, ablation=True)),
    ]  # fmt: skip
    if bench.postgres is not None:
        durable = bench.env(COUNTERS_DATABASE_URL=bench.postgres.url)
        both = lambda: cpu.redis_cpu(bench.redis.url) + bench.postgres_cpu()  # noqa: E731
        runs.append(
            ("d1", "gain with Postgres: flusher in the workers, users hydrated on first touch",
             lambda: bench.http(GAIN_APP, bench.gain_requests, env=durable, db=both,
                               ablation=True))
        )  # fmt: skip
    for key, name, measure in runs:
        bench.fresh_redis()
        if bench.postgres is not None:
            asyncio.run(flush.empty_ledger(bench.postgres.url))
        bench.report.ablations.append(bench.row(key, name, measure()))
