"""What ``make bench`` prints while it runs: which row, which run, and about how long is left.

The plan is counted from the options before anything runs (each main HTTP row repeats
``repeat`` times; its open-loop sibling too; every "way there" runs once). The time left is the
runs still to go times the average run so far (before the first run ends: warm-up + window +
an allowance for starting the server), plus a fixed allowance for each non-HTTP step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bench.options import Options

_START_ALLOWANCE = 4.0  # seconds to start uvicorn and its workers, by observation
_STEP_SECONDS = 20.0  # a non-HTTP step: the Lua ceiling, memory, the flusher
ABLATIONS = 9  # the "ways there" runs (bench/ablations.py), with Postgres


def planned(options: Options, wanted: Callable[..., bool]) -> tuple[int, int]:
    """(HTTP runs, other steps) a run of the bench with ``options`` will make."""
    repeat = options.repeat
    runs = 0
    runs += 2 * repeat if wanted("1") else 0
    runs += 2 * repeat if wanted("2", "flusher") else 0
    runs += sum(repeat for key in ("3", "4", "6", "cluster") if wanted(key))
    runs += 2 * repeat if wanted("durable") else 0  # 2p and 2n
    steps = sum(1 for key in ("5", "memory", "flusher") if wanted(key))
    if options.ablations and not options.only:
        runs += ABLATIONS
    return runs, steps


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


class Progress:
    """Prints one line as each run or step starts: its row, its number, the time left."""

    def __init__(self, options: Options, wanted: Callable[..., bool]) -> None:
        self.runs, self.steps = planned(options, wanted)
        self.guess = options.warmup + options.duration + _START_ALLOWANCE
        self.started = time.monotonic()
        self.done_runs = 0
        self.done_steps = 0
        self.run_seconds = 0.0
        self.row = ""
        self._run_began = 0.0

    def left(self) -> float:
        """Seconds still to go, by the average run so far."""
        per_run = self.run_seconds / self.done_runs if self.done_runs else self.guess
        runs_left = max(self.runs - self.done_runs, 0)
        return runs_left * per_run + max(self.steps - self.done_steps, 0) * _STEP_SECONDS

    def at_row(self, row: str) -> None:
        """The rows (and ablations) that follow belong to ``row``."""
        self.row = row

    def _say(self, what: str) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"[bench {_clock(elapsed)}] {self.row}: {what}, about {_clock(self.left())} left",
            file=sys.stderr,
            flush=True,
        )

    def run_starts(self) -> None:
        self._run_began = time.monotonic()
        self._say(f"HTTP run {self.done_runs + 1} of {self.runs}")

    def run_ends(self) -> None:
        self.done_runs += 1
        self.run_seconds += time.monotonic() - self._run_began

    def step(self, name: str) -> None:
        """A non-HTTP step starts (counted as done when the next thing starts)."""
        self._say(f"{name} (step {self.done_steps + 1} of {self.steps})")
        self.done_steps += 1
