"""Our gain against the shared thin probe's, in one in-process harness: the Python gap alone.

``python -m bench.hot_thin [requests [rounds]]``: ``bench.hot_cost``'s harness (app in this
process, uvloop, 64 in flight, the 10th percentile over 256-request batches of this thread's
CPU per request) serving ``daily_chat`` awards with user JWTs, as the wrk probe's callers send
them, alternately by

- ``ours``: this app on a throwaway Redis, its token cache filled first (as the probe's warm-up
  fills it);
- ``thin``: ``../shared/perf/thin/thin.py``'s ASGI app (``bench.baselines.thin``) on a
  password-less throwaway Redis (it sends no AUTH), its token dict filled with the same tokens.

Over HTTP the two differ also in what uvicorn does with their answers and in their scripts'
cost in Redis; here only their Python (and the Redis client's) is counted, so the difference
is what the service's own code costs beyond the thinnest design (README, "Sixth round"). Each
target runs ``rounds`` times (default 3), alternated; the least is printed. Reported, never
asserted; skipped (with a message) when the probe is not on this machine.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis as redis_py
import uvloop

import bench.hot_cost as hot_cost
from api.app import create_app
from bench import direct, scenarios
from bench.baselines.thin import thin_dir
from bench.metrics_cost import _asgi
from bench.wrk_probe import _plain_redis
from counters.cli.embedded import RedisServer
from counters.settings import Settings


class _Thin:
    """The probe's app where ``hot_cost.measure`` expects ours: a lifespan that connects it."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.router = self

    @contextlib.asynccontextmanager
    async def lifespan_context(self, app: object) -> AsyncIterator[None]:
        self._module.pipe.__init__()  # a fresh connection on this run's loop
        await self._module.pipe.start()
        yield

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._module.app(scope, receive, send)


def _ours(tokens: list[bytes]) -> Any:
    """``create_app`` with the token cache filled once the lifespan has started."""

    def make(settings: Settings) -> Any:
        app = create_app(settings)
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def filled(started: Any) -> AsyncIterator[None]:
            async with inner(started):
                auth = app.state.services.auth
                for token in tokens:
                    auth.authenticate_raw(b"Bearer " + token, None)
                yield

        app.router.lifespan_context = filled  # type: ignore[assignment]
        return app

    return make


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 12_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    where = thin_dir()
    if where is None:
        print("the shared thin probe (thin.py) is not on this machine: set COUNTERS_THIN_DIR")
        return
    daily = [a for a in scenarios.gain_awards() if a.action == "daily_chat"][:count]
    calls = [_asgi(raw) for raw in scenarios.user_token_requests(daily)]
    tokens = [dict(headers)[b"authorization"].split(b" ", 1)[1] for headers, _ in calls]
    seen: dict[str, list[float]] = {"ours": [], "thin": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
        _plain_redis(Path(tmp) / "thin-redis") as thin_port,
    ):
        token_file = Path(tmp) / "tokens"
        token_file.write_bytes(b"\n".join(tokens) + b"\n")
        os.environ["THIN_TOKENS"], os.environ["THIN_REDIS_PORT"] = str(token_file), str(thin_port)
        sys.path.insert(0, str(where))
        thin = _Thin(importlib.import_module("thin"))
        thin_url = f"redis://127.0.0.1:{thin_port}"
        real = hot_cost.create_app
        try:
            for _ in range(rounds):
                direct.restore(server.url, [])
                hot_cost.create_app = _ours(tokens)  # type: ignore[assignment]
                seen["ours"].append(
                    uvloop.run(hot_cost.measure(server.url, "/api/exp/gain", calls, False))
                )
                redis_py.Redis.from_url(thin_url).flushall()
                hot_cost.create_app = lambda settings: thin  # type: ignore[assignment]
                seen["thin"].append(
                    uvloop.run(hot_cost.measure(thin_url, "/api/exp/gain", calls, False))
                )
        finally:
            hot_cost.create_app = real
    for name, values in seen.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:5} {min(values):6.1f} us/request (least of {shown})")


if __name__ == "__main__":
    main()
