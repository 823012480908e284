"""Run uvicorn as ``uvicorn.run`` does, except that SIGHUP reloads the rules instead of
restarting every worker.

uvicorn's multi-worker supervisor answers SIGHUP by replacing each worker. Today's counters live
in Redis, so that would keep them, but it drops each worker's keep-alive connections and its
caches; forwarding the signal lets every worker swap its rules in place
(counters/runtime/reload.py). With one worker there is no supervisor: the worker itself gets the
signal.

A worker also stops when its supervisor dies without stopping it (kill -9, an OOM kill): it
asks Linux for SIGTERM on its parent's death (``follow_supervisor``), so orphans never keep
serving on the port, flusher included, after a supervisor restarts the service.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

SUPERVISOR_PID = "COUNTERS_SUPERVISOR_PID"  # set for the workers by ``run``
_PR_SET_PDEATHSIG = 1  # prctl(2)


def follow_supervisor() -> None:
    """In a worker of ``run``'s supervisor (``COUNTERS_SUPERVISOR_PID`` set): have SIGTERM
    delivered when the supervisor dies, so the worker shuts down as on a normal stop. A
    supervisor already gone by then (the race prctl leaves) stops the worker at once. Elsewhere
    (one worker, no supervisor; not Linux) it does nothing."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if not supervisor or sys.platform != "linux":
        return
    # PR_SET_PDEATHSIG fires when the thread that spawned us exits: uvicorn's supervisor spawns
    # (and respawns) its workers from its main thread, which lives as long as it does.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)


class RulesReloadingSupervisor(Multiprocess):
    """uvicorn's supervisor with SIGHUP forwarded to every worker."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)


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
