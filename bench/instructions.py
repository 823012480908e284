"""Instructions per hot request, counted by callgrind: repeatable whatever the machine's load.

``python -m bench.instructions SCENARIO [N1 N2] [setting=true|false ...]`` runs the app in a
process of its own under ``valgrind --tool=callgrind`` twice, serving N1 and then N2 requests
(64 in flight, as ``bench.hot_cost``) on a throwaway Redis (not under valgrind), and prints
(I2 - I1) / (N2 - N1): the user-space instructions of one request (the app's Python, the Redis
client's, uvloop's; not the kernel's, not Redis's, not uvicorn's HTTP parsing). Start-up, the
seeding and the first 256 requests cancel out. SCENARIO: ``daily`` (``daily_chat`` awards, each
user once), ``mix`` (row 2's gain mix on the pre-owned entities) or ``debit`` (``EDIT_IMAGE``
for 2,000 subscribed users). ``setting=value`` overrides a boolean Settings field
(``creator_shortcut=false``, ``leaderboards_enabled=false``, ``metrics_enabled=false``).
Each count takes a minute or two (valgrind runs Python ~50x slower). Totals of one build vary
by a few million instructions (start-up), so keep N2 - N1 at 1,000 or more for ~1%.

``--redis`` counts Redis's side instead: ``redis-server`` runs under callgrind, collecting only
inside its script commands (``FCALL``, ``FCALL_RO``, ``EVALSHA``, ``EVAL``: the Lua, its
``redis.call``s, cjson), and
the app runs natively; the same difference per request. The scripts' cost in Redis without
the noise of ``INFO commandstats`` timings on a shared machine (issue #15).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
import uvloop

from api.app import create_app
from bench import direct, scenarios
from bench.metrics_cost import _asgi
from bench.servers import wait_for_ping
from counters.cli.embedded import RedisServer, find_redis_server, free_port
from counters.settings import Settings

_IN_FLIGHT = 64
_WARM = 256
_DEBIT_USERS = 2_000
_SLOW = 60.0  # seconds: Redis timeouts for a process that valgrind slows ~50x
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _requests(scenario: str, count: int) -> tuple[str, list[bytes]]:
    awards = scenarios.gain_awards()
    if scenario == "daily":
        daily = [a for a in awards if a.action == "daily_chat"][:count]
        return "/api/exp/gain", scenarios.gain_requests(daily)
    if scenario == "mix":
        return "/api/exp/gain", scenarios.gain_requests(awards[:count])
    if scenario == "debit":
        body = b'{"generation_type":"EDIT_IMAGE"}'
        headers = [
            scenarios.service_headers(scenarios.user_id(n % _DEBIT_USERS)) for n in range(count)
        ]
        return "/api/v1/xp/debit", [
            scenarios.http_request("POST", "/api/v1/xp/debit", h, body) for h in headers
        ]
    raise SystemExit(f"unknown scenario {scenario!r}: daily, mix or debit")


async def _serve(settings: Settings, scenario: str, path: str, raw: list[bytes]) -> dict[int, int]:
    """Every request through the app; the count of each status."""
    app = create_app(settings)
    calls = [_asgi(r) for r in raw]
    statuses: dict[int, int] = {}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await app(
            {"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send
        )

    async with app.router.lifespan_context(app):
        if scenario == "debit":
            users = [scenarios.user_id(n) for n in range(_DEBIT_USERS)]
            await direct.subscribe(app.state.services, users, "pixel_rookie", 10_000_000)
        for start in range(0, len(calls), _IN_FLIGHT):
            await asyncio.gather(*(one(h, b) for h, b in calls[start : start + _IN_FLIGHT]))
    return statuses


def serve(scenario: str, count: int, overrides: dict[str, bool]) -> None:
    """The measured process: ``count`` requests (plus the warm-up) on a throwaway Redis."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
    ):
        serve_on(server.url, scenario, count, overrides)


def serve_on(url: str, scenario: str, count: int, overrides: dict[str, bool]) -> None:
    """``count`` requests (plus the warm-up) through the app, on the Redis at ``url``."""
    path, raw = _requests(scenario, count + _WARM)
    direct.restore(url, [])
    settings = dataclasses.replace(
        direct.bench_settings(url), redis_timeout_seconds=_SLOW, **overrides
    )
    if scenario == "mix":

        async def seed() -> None:
            async with direct.services(settings) as svc:
                await direct.seed_owners(svc)

        uvloop.run(seed())
    statuses = uvloop.run(_serve(settings, scenario, path, raw))
    print(f"statuses {statuses}", file=sys.stderr)


def count(scenario: str, requests: int, settings: list[str]) -> int:
    """Instructions callgrind counted in one measured process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
            sys.executable, "-m", "bench.instructions", "--serve", scenario, str(requests),
            *settings,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict and set layouts every run
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2_000:]}")
    return int(found.group(1))


def count_redis(scenario: str, requests: int, settings: list[str]) -> int:
    """Instructions callgrind counted inside Redis's script commands (``FCALL``, ``FCALL_RO``,
    ``EVALSHA`` and ``EVAL``: the scripts, their ``redis.call``s, cjson; not the event loop,
    the protocol parsing or other commands) while this process serves ``requests`` natively."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
            "--toggle-collect=evalShaCommand", "--toggle-collect=evalCommand",
            "--toggle-collect=fcallCommand", "--toggle-collect=fcallroCommand",
            str(find_redis_server()), "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", tmp,
        ]  # fmt: skip
        with open(f"{tmp}/valgrind.log", "w+") as log:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            client = redis.Redis(port=port, socket_timeout=_SLOW)
            try:
                wait_for_ping(client, proc, _SLOW)
                serve_on(f"redis://127.0.0.1:{port}/0", scenario, requests, _overrides(settings))
                with contextlib.suppress(redis.ConnectionError):
                    client.shutdown(nosave=True)
            finally:
                client.close()
                try:
                    proc.wait(timeout=_SLOW)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.seek(0)
            text = log.read()
    found = _COLLECTED.search(text)
    if found is None:
        raise SystemExit(f"valgrind run of redis-server failed:\n{text[-2_000:]}")
    return int(found.group(1))


def _overrides(args: list[str]) -> dict[str, bool]:
    names = {f.name for f in dataclasses.fields(Settings)}
    found: dict[str, bool] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in names or value not in ("true", "false"):
            raise SystemExit(f"not a setting=true|false: {arg!r}")
        found[name] = value == "true"
    return found


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--serve"]:
        serve(args[1], int(args[2]), _overrides(args[3:]))
        return
    if not args:
        raise SystemExit(__doc__)
    scenario, rest = args[0], args[1:]
    counter, where = count, "app"
    if "--redis" in rest:
        rest = [arg for arg in rest if arg != "--redis"]
        counter, where = count_redis, "Redis's script commands"
    first, second = 200, 1_200
    if len(rest) >= 2 and rest[0].isdigit() and rest[1].isdigit():
        first, second, rest = int(rest[0]), int(rest[1]), rest[2:]
    _overrides(rest)  # refuse a bad one before a minute of valgrind
    low, high = counter(scenario, first, rest), counter(scenario, second, rest)
    per = (high - low) / (second - first)
    shown = " ".join(rest) or "defaults"
    counted = f"{low:,} at {first}, {high:,} at {second}"
    print(f"{scenario} ({shown}), {where}: {per:,.0f} instructions/request ({counted})")


if __name__ == "__main__":
    main()
