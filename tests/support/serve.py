"""A real ``counters serve`` (uvicorn, several workers) in a subprocess, on a free port; and
``serve`` in-process where its start-up checks refuse to start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from counters.cli.embedded import free_port, stop_process
from counters.cli.main import main
from tests.support.core import JWT_SECRET, SERVICE_KEY


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    pid: int  # the uvicorn supervisor (workers > 1) or the only worker


def get_json(url: str) -> dict[str, object]:
    """GET ``url`` on a new connection (so several workers may answer); the JSON body."""
    import json

    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


@contextmanager
def serve(
    redis_url: str, database_url: str, data_dir: Path, rules: Path | None = None, workers: int = 2
) -> Iterator[Served]:
    """``counters serve --workers N`` until the block ends (SIGINT, then SIGKILL after 20 s)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env |= {
        "COUNTERS_REDIS_URL": redis_url,
        "COUNTERS_DATABASE_URL": database_url,
        "COUNTERS_DATA_DIR": str(data_dir),
        "COUNTERS_SERVICE_KEYS": SERVICE_KEY,
        "COUNTERS_JWT_SECRET": JWT_SECRET,
        "COUNTERS_PORT": str(port),
        "COUNTERS_WORKERS": str(workers),
        "COUNTERS_RULES_WATCH_SECONDS": "0",  # reloads only on SIGHUP in these tests
    }
    if rules is not None:
        env["COUNTERS_RULES"] = str(rules)
    argv = [sys.executable, "-c", "from counters.cli.main import main; main()", "serve"]
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(url + "/healthz")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"serve did not start: {(data_dir / 'serve.log').read_text()}"
                    ) from None
                time.sleep(0.2)
        time.sleep(0.5 * workers)  # every worker through its lifespan start-up
        yield Served(url, proc.pid)
    finally:
        stop_process(proc, 20)
        log.close()


def refused_serve(redis_url: str, tmp_path: Path, **env: str) -> Result:
    """``counters serve`` run in-process (click's runner) where its start-up checks refuse to
    start, so it returns: the result, to assert its exit code and one line."""
    base = {
        "COUNTERS_REDIS_URL": redis_url,
        "COUNTERS_SERVICE_KEYS": "a-service-key-0123456789abcdef",
        "COUNTERS_JWT_SECRET": "a-jwt-secret-0123456789abcdef0123456789",
        "COUNTERS_DATA_DIR": str(tmp_path),
        "COUNTERS_PORT": str(free_port()),
    }
    return CliRunner().invoke(main, ["serve"], env=base | env)
