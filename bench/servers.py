"""The servers under test: uvicorn with the settings ``counters serve`` uses, one per target."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from counters.cli.embedded import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent

# The app factories served: the service, and the baselines it is measured against.
GAIN_APP = "api.main:app_from_env"
# The service with both hot routes' handlers replaced by one Redis round trip (bench.floor)
FLOOR_APP = "bench.baselines.floor:app_from_env"
# The floor with the service's own script commands: its Redis work and packing (bench.floor)
FLOOR_LUA_APP = "bench.baselines.floor_lua:app_from_env"
# floor-lua's commands packed ahead, once per worker (bench.floor --memo)
FLOOR_MEMO_APP = "bench.baselines.floor_memo:app_from_env"
BARE_APP = "bench.baselines.bare:app_from_env"
RAW_APP = "bench.baselines.raw_asgi:app_from_env"
PG_APP = "bench.baselines.pg_award:app_from_env"
THIN_APP = "bench.baselines.thin:app_from_env"  # the shared thin probe (bench.wrk_probe only)
# The probe's design on this service's hot lane (bench.wrk_probe only)
THIN_LANE_APP = "bench.baselines.thin_lane:app_from_env"
# Served as `counters serve` serves the service (its protocol, the hot lane), not stock uvicorn
_ON_THE_LANE = frozenset({GAIN_APP, FLOOR_APP, FLOOR_LUA_APP, FLOOR_MEMO_APP, THIN_LANE_APP})


def uvicorn_argv(
    factory: str, port: int, workers: int, loop: str = "uvloop", http: str = "httptools"
) -> list[str]:
    """Stock uvicorn with ``counters serve``'s options (counters/cli/supervisor.py), for the
    baselines (served as shipped) and the ablations of another loop or HTTP parser."""
    return [
        sys.executable, "-m", "uvicorn", factory, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", loop, "--http", http, "--no-access-log", "--no-proxy-headers",
        "--no-server-header", "--log-level", "warning",
    ]  # fmt: skip


def _answers(port: int, probe: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(probe)
            return sock.recv(64).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


def wait_for_ping(client: redis.Redis, proc: subprocess.Popen[Any], timeout: float) -> None:
    """Return once ``client`` answers PING (a redis-server ``proc`` just started, perhaps under
    valgrind); raises ``redis.ConnectionError`` after ``timeout`` seconds or once ``proc`` has
    exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    pid: int  # uvicorn's process (with several workers, their parent)


@contextmanager
def uvicorn_server(
    factory: str,
    env: Mapping[str, str],
    *,
    workers: int,
    probe_path: str = "/",
    loop: str = "uvloop",
    http: str = "httptools",
) -> Iterator[Server]:
    """Run ``factory`` under uvicorn on a free port until the block ends.

    The server sees only the COUNTERS_* variables in ``env``, none inherited from our own.
    """
    port = free_port()
    if factory in _ON_THE_LANE and (loop, http) == ("uvloop", "httptools"):
        # The service as `counters serve` runs it: its protocol and options (bench/serve.py)
        argv = [sys.executable, "-m", "bench.serve", factory]
        env = {**env, "COUNTERS_HOST": "127.0.0.1", "COUNTERS_PORT": str(port)}
        env |= {"COUNTERS_WORKERS": str(workers), "COUNTERS_LOG_LEVEL": "warning"}
    else:
        argv = uvicorn_argv(factory, port, workers, loop, http)
    probe = f"GET {probe_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    proc = subprocess.Popen(
        argv,
        env={**inherited, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers(port, probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{factory} did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        time.sleep(0.5 * workers)  # let every worker finish its lifespan start-up
        yield Server(port, proc.pid)
    finally:
        stop_process(proc, 20)
