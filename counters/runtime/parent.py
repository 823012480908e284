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
from collections.abc import Callable

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
    arm = parent_death_signal(signal.SIGTERM)
    if arm is not None:
        arm()
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A function that, called in a process, has Linux deliver ``sig`` to it when the *thread*
    that spawned it exits (``prctl(PR_SET_PDEATHSIG)``, prctl(2)); None off Linux.

    The C function is resolved here, in the caller, so the returned function is safe to run
    between ``fork`` and ``exec`` (a ``preexec_fn``: no ``dlopen`` in the forked child). Used by a
    ``serve`` worker for its supervisor (``follow_supervisor``) and by the embedded Redis and
    Postgres for the process that started them (``counters.cli.embedded``)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, sig)
