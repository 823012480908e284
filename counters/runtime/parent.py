"""A worker's tie to the supervisor that started it (``counters serve --workers N``).

uvicorn's workers are re-parented to init when their supervisor dies without stopping them
(kill -9, the OOM killer), and went on serving and flushing on the port, so the service could not
be started again (an attacker's finding). ``follow_supervisor`` makes Linux send the worker
SIGTERM then, and it shuts down as on a normal stop.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

SUPERVISOR_PID = "COUNTERS_SUPERVISOR_PID"  # set for the workers by counters.cli.supervisor.run
_PR_SET_PDEATHSIG = 1  # prctl(2)


def follow_supervisor() -> None:
    """In a worker of ``counters.cli.supervisor.run`` (``COUNTERS_SUPERVISOR_PID`` set): have
    SIGTERM delivered when the supervisor dies, so the worker shuts down as on a normal stop.
    A supervisor already gone by then (the race prctl leaves) stops the worker at once.
    Elsewhere (one worker, no supervisor; not Linux) it does nothing."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if not supervisor or sys.platform != "linux":
        return
    # PR_SET_PDEATHSIG fires when the thread that spawned us exits: uvicorn's supervisor spawns
    # (and respawns) its workers from its main thread, which lives as long as it does.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)
