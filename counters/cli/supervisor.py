"""Run uvicorn as ``uvicorn.run`` does, except that SIGHUP reloads the rules instead of
restarting every worker.

uvicorn's multi-worker supervisor answers SIGHUP by replacing each worker. Today's counters live
in Redis, so that would keep them, but it drops each worker's keep-alive connections and its
caches; forwarding the signal lets every worker swap its rules in place
(counters/runtime/reload.py). With one worker there is no supervisor: the worker itself gets the
signal.

A worker also stops when its supervisor dies without stopping it (kill -9, an OOM kill): it
asks Linux for SIGTERM on its parent's death (``counters.runtime.parent``), so orphans never keep
serving on the port, flusher included, after a supervisor restarts the service.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from counters.cli.http_guard import make_protocol
from counters.runtime.parent import SUPERVISOR_PID
from counters.settings import Settings


class RulesReloadingSupervisor(Multiprocess):
    """uvicorn's supervisor with SIGHUP forwarded to every worker."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)


def serve_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options ``counters serve`` runs the app with (``bench.serve`` serves the
    service under test with the same: what is measured is what is run)."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "loop": "uvloop",
        "http": make_protocol(settings.request_read_timeout_seconds, settings.max_header_bytes),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "timeout_graceful_shutdown": 30,  # then open connections are closed
        "access_log": False,  # the app logs its own (COUNTERS_ACCESS_LOG), with the request id
        "proxy_headers": False,  # nothing reads the client's address; it cost ~3% CPU a request
        "server_header": False,
        "log_config": None,  # logging is ours (counters.logs), configured in every worker
        "log_level": settings.log_level,
    }


def run(app: str, **options: Any) -> None:
    """``uvicorn.run(app, **options)`` with ``RulesReloadingSupervisor`` for several workers."""
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            os.environ[SUPERVISOR_PID] = str(os.getpid())  # read by follow_supervisor
            sock = config.bind_socket()
            RulesReloadingSupervisor(config, sockets=[sock]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run: the app failed to start
