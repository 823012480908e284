"""Each worker sets the collector's first threshold from ``COUNTERS_GC_THRESHOLD`` (api/main.py:
CPython's 700 collected every ~70 requests of the gain mix; README, Performance, "Thirteenth
round"), and an out-of-range value stops the worker with a message naming the variable.

Each case builds the app as a uvicorn worker does (``api.main:app_from_env``) in a process of its
own, since the threshold and ``gc.freeze`` are the whole process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = "from api.main import app_from_env; app_from_env(); import gc; print(gc.get_threshold())"


def worker(tmp_path: Path, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["PYTHONPATH"] = str(ROOT)
    if value is not None:
        env["COUNTERS_GC_THRESHOLD"] = value
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("value", "first"), [(None, 10_000), ("1234", 1_234)])
def test_a_worker_sets_the_first_threshold_and_keeps_the_others(
    tmp_path: Path, value: str | None, first: int
) -> None:
    done = worker(tmp_path, value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"({first}, 10, 10)"


def test_an_out_of_range_threshold_stops_the_worker_and_says_why(tmp_path: Path) -> None:
    done = worker(tmp_path, "50")
    assert done.returncode != 0
    assert "COUNTERS_GC_THRESHOLD=50: out of range" in done.stderr
