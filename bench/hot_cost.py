"""The hot lane's own CPU per request, measured in process, robust to a loaded machine.

``python -m bench.hot_cost [requests]``: one app in this process on a throwaway Redis (uvloop,
as served), requests called straight into the ASGI app 64 at a time, in batches of 256; prints
the 10th percentile over the batches of this thread's CPU per request (the app's Python and the
Redis client's, not Redis's). HTTP rows of ``make bench`` on a VM shared with other work move by
20% or more; the low percentile of many short batches moves less (still up to ~40% for one
round at load 7-11): A/B in alternated rounds (README, "The hot path's CPU budget").

- ``daily_chat``: ``POST /api/exp/gain`` awards to oneself (one script, one round trip), each
  user once: the path the wrk probe and the 0.6 x bare target are about;
- ``gain mix``: row 2's mix (likes and forks run the creator protocol, several round trips);
- ``debit``: ``POST /api/v1/xp/debit`` (EDIT_IMAGE) for 20k subscribed users.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from api.app import create_app
from bench import direct, scenarios
from bench.metrics_cost import _asgi
from counters.cli.embedded import RedisServer
from counters.settings import Settings

_IN_FLIGHT = 64
_BATCH = 256
_WARM = 2_048
_DEBIT_USERS = 20_000
_XP_TIER = "pixel_rookie"  # the lowest tier that allows EDIT_IMAGE (as bench.run)

Call = tuple[list[tuple[bytes, bytes]], bytes]


async def measure(url: str, path: str, calls: Sequence[Call], debit: bool) -> float:
    """The 10th percentile of CPU microseconds per request over batches of ``_BATCH``."""
    settings = Settings(
        redis_url=url, jwt_secret=scenarios.JWT_SECRET, service_keys=(scenarios.SERVICE_KEY,)
    )
    app = create_app(settings)

    async def send(message: Any) -> None:
        pass

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        await app(scope, receive, send)

    async def run(chunk: Sequence[Call]) -> None:
        for start in range(0, len(chunk), _IN_FLIGHT):
            await asyncio.gather(*(one(h, b) for h, b in chunk[start : start + _IN_FLIGHT]))

    per_request: list[float] = []
    async with app.router.lifespan_context(app):
        if debit:
            users = [scenarios.user_id(n) for n in range(_DEBIT_USERS)]
            await direct.subscribe(app.state.services, users, _XP_TIER, 10_000_000)
        await run(calls[:_WARM])
        for start in range(_WARM, len(calls), _BATCH):
            chunk = calls[start : start + _BATCH]
            began = time.thread_time()
            await run(chunk)
            per_request.append((time.thread_time() - began) / len(chunk) * 1e6)
    per_request.sort()
    return per_request[len(per_request) // 10]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    awards = scenarios.gain_awards()
    daily = [award for award in awards if award.action == "daily_chat"][:count]
    body = b'{"generation_type":"EDIT_IMAGE"}'
    debit_requests = [
        scenarios.http_request(
            "POST",
            "/api/v1/xp/debit",
            scenarios.service_headers(scenarios.user_id(n % _DEBIT_USERS)),
            body,
        )
        for n in range(count)
    ]
    targets = [
        ("daily_chat", "/api/exp/gain", scenarios.gain_requests(daily), False),
        ("gain mix", "/api/exp/gain", scenarios.gain_requests(awards[:count]), False),
        ("debit", "/api/v1/xp/debit", debit_requests, True),
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
    ):
        for name, path, requests, debit in targets:
            direct.restore(server.url, [])
            if name == "gain mix":
                uvloop.run(_seed(server.url))
            calls = [_asgi(raw) for raw in requests]
            us = uvloop.run(measure(server.url, path, calls, debit))
            print(f"{name:10} {us:6.1f} us/request (p10 of {_BATCH}-request batches)")


async def _seed(url: str) -> None:
    async with direct.services(direct.bench_settings(url)) as svc:
        await direct.seed_owners(svc)


if __name__ == "__main__":
    main()
