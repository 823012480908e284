"""A real `counters serve` in a subprocess, on the suite's own Redis and Postgres, for the tests
that need the service over real HTTP: Schemathesis, the Python and JS clients, the browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from counters.cli.embedded import free_port
from tests.support.core import JWT_SECRET, SERVICE_KEY

CORS_ORIGIN = "http://allowed.example"  # the origin the live service lets browsers call from


@contextmanager
def live_service(
    workdir: Path, redis_url: str, database_url: str, **settings: str
) -> Iterator[str]:
    """`counters serve` (dev mode, CORS for CORS_ORIGIN) until the block ends; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env |= {
        "COUNTERS_PORT": str(port),
        "COUNTERS_REDIS_URL": redis_url,
        "COUNTERS_DATABASE_URL": database_url,
        "COUNTERS_JWT_SECRET": JWT_SECRET,
        "COUNTERS_SERVICE_KEYS": SERVICE_KEY,
        "COUNTERS_DATA_DIR": str(workdir / "data"),
        "COUNTERS_DEV_MODE": "1",
        "COUNTERS_CORS_ORIGINS": CORS_ORIGIN,
        **{f"COUNTERS_{name.upper()}": value for name, value in settings.items()},
    }
    with serving(workdir, env, "/healthz") as base:
        yield base


@contextmanager
def serving(workdir: Path, env: dict[str, str], probe: str) -> Iterator[str]:
    """`counters serve` run in ``workdir`` with ``env``, until the block ends; waits until
    GET ``probe`` answers (the log is the failure's message); its base URL."""
    log_path = workdir / "serve.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", "from counters.cli.main import main; main()", "serve"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{env['COUNTERS_PORT']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}{probe}", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text()) from None
                time.sleep(0.1)
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0  # Ctrl-C: drained, embedded servers stopped
        log.close()
