"""The hot lane's metrics cost, measured without the HTTP load's noise.

``python -m bench.metrics_cost``: one app in this process on a throwaway Redis, 60k gain
requests from row 2's mix called straight into the ASGI app, 64 at a time; the per-request
metrics are switched on and off batch by batch, so drift of a shared VM (which moves a whole
``make bench`` row by 20%) falls on both halves alike. Prints this process's CPU per request
in each half. Domain counters (awards, near-limit) stay on in both: they are the same work
either way (a Python addition each, ``counters.metrics.Batched``). Requests never touch
prometheus-client's value store (batched, moved once a second), so its multiprocess mode does
not change the result; ``PROMETHEUS_MULTIPROC_DIR=<empty dir> python -m bench.metrics_cost``
runs it that way.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from api.app import create_app
from bench import scenarios
from counters.cli.embedded import RedisServer
from counters.settings import Settings

_IN_FLIGHT = 64


def _asgi(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    head, body = raw.split(b"\r\n\r\n", 1)
    pairs = [line.split(b": ", 1) for line in head.split(b"\r\n")[1:]]
    return [(name.lower(), value) for name, value in pairs], body


async def measure(url: str, requests: list[bytes]) -> dict[bool, float]:
    """CPU microseconds per request with the hot lane's metrics on (True) and off (False)."""
    settings = Settings(
        redis_url=url, jwt_secret=scenarios.JWT_SECRET, service_keys=(scenarios.SERVICE_KEY,)
    )
    app = create_app(settings)
    calls = [_asgi(raw) for raw in requests]
    cpu = {True: 0.0, False: 0.0}
    count = {True: 0, False: 0}

    async def send(message: Any) -> None:
        pass

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/api/exp/gain", "headers": headers}
        await app(scope, receive, send)

    async with app.router.lifespan_context(app):
        for batch, start in enumerate(range(0, len(calls), _IN_FLIGHT)):
            on = batch % 2 == 0
            app._metrics = on  # the switch COUNTERS_METRICS_ENABLED sets at start
            chunk = calls[start : start + _IN_FLIGHT]
            began = time.process_time()
            await asyncio.gather(*(one(headers, body) for headers, body in chunk))
            cpu[on] += time.process_time() - began
            count[on] += len(chunk)
    return {on: cpu[on] / count[on] * 1e6 for on in cpu}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        requests = scenarios.gain_requests(scenarios.gain_awards())[:60_000]
        with RedisServer(Path(tmp) / "redis", persistent=False) as server:
            result = asyncio.run(measure(server.url, requests))
    on, off = result[True], result[False]
    print(f"gain, CPU per request in the app's process: metrics on {on:.1f} us, off {off:.1f} us,")
    print(f"on/off = {on / off:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
