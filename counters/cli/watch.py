"""``serve`` watches the embedded Redis and Postgres it started.

Each is a child of ``serve``. One that exits (a crash, an OOM kill, ``kill -9``) is noticed
within ``interval`` seconds: reaped at once (no zombie, whose pid would block the next start),
logged on one line (logger ``counters.serve``), and ``serve`` stops (SIGTERM to itself: the
workers drain, the other server stops) and exits with status 2 and that line, so that whatever
runs it (systemd, a container runtime, a person after ``make run``) starts everything again.
Restarting only the dead server in place was not chosen: a server started from this thread
would not die with ``serve`` (PR_SET_PDEATHSIG follows the thread that started it), and a
server that keeps crashing would be restarted behind the operator's back.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence

from counters.cli.embedded import PostgresServer, RedisServer

log = logging.getLogger("counters.serve")


def describe(server: RedisServer | PostgresServer, status: int) -> str:
    """``embedded Postgres (pid 12) was killed by SIGKILL`` or ``... exited with status 1``."""
    name = "Redis" if isinstance(server, RedisServer) else "Postgres"
    if status < 0:
        how = f"was killed by {signal.Signals(-status).name}"
    else:
        how = f"exited with status {status}"
    return f"embedded {name} (pid {server.pid}, data in {server.data_dir}) {how}"


class ServerWatch:
    """A daemon thread polling the servers every ``interval`` seconds from ``start`` until
    ``stop()``; the first exit found is put in ``died`` (one line) and stops this process with
    SIGTERM."""

    def __init__(self, interval: float = 1.0) -> None:
        self._servers: list[RedisServer | PostgresServer] = []
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedded-watch", daemon=True)
        self.died: str | None = None

    def start(self, servers: Sequence[RedisServer | PostgresServer]) -> None:
        """Watch ``servers`` (none: nothing to do)."""
        self._servers = list(servers)
        if self._servers:
            self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the servers are stopped on purpose); waits for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for server in self._servers:
                status = server.exited()  # reaps it
                if status is None or self._stop.is_set():
                    continue
                self.died = describe(server, status)
                log.error("%s: stopping serve; start it again (the data is kept)", self.died)
                os.kill(os.getpid(), signal.SIGTERM)
                return
