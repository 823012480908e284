"""CPU time of the processes under test, sampled over the load generator's measured window.

On a 2-core machine the server, Redis (or Postgres) and the load generator share the CPU, so
CPU time per request says where a target's time goes better than requests/s alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

_TICKS = os.sysconf("SC_CLK_TCK")
# % of the machine's CPU other processes used, or the hypervisor stole, during a measured
# window that makes it NOISY (``make bench``'s rule; ``bench.wrk_probe`` flags the same)
NOISY_PERCENT = 10.0


def disturbed(shares: dict[str, float]) -> float:
    """The % of the machine's CPU a window lost to other processes and the hypervisor, from
    ``CpuWindow.others_percent``'s shares: what ``NOISY_PERCENT`` is compared with."""
    return shares.get("others", 0.0) + shares.get("steal", 0.0)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its direct children (uvicorn's workers,
    Postgres's backends), including children that have exited."""
    user, system = tree_cpu_parts(pid)
    return user + system


def tree_cpu_parts(pid: int) -> tuple[float, float]:
    """``tree_cpu`` as (user, system) CPU seconds: the processes' own code against the
    kernel's work on their behalf (syscalls: socket reads and writes, epoll)."""
    user = system = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(entry) == pid or int(fields[1]) == pid:
            user, system = user + int(fields[11]), system + int(fields[12])
        if int(entry) == pid:  # children that exited (a closed pool's backends) and were reaped
            user, system = user + int(fields[13]), system + int(fields[14])
    return user / _TICKS, system / _TICKS


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine since boot: busy (every process) and stolen (by the
    hypervisor: time this VM wanted to run and could not)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / _TICKS,
        "steal": steal / _TICKS,
    }


def redis_cpu(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(slots=True)
class CpuWindow:
    """Called with "start" and "end" by ``run_load``; keeps each meter's CPU seconds between."""

    meters: dict[str, Callable[[], float]]
    started: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0
    wall_seconds: float = 0.0

    def __call__(self, phase: str) -> None:
        now = {name: meter() for name, meter in self.meters.items()}
        now |= {f"machine_{k}": v for k, v in machine_cpu().items()}
        if phase == "start":
            self.started = now
            self._wall = time.monotonic()
        else:
            self.seconds = {name: now[name] - self.started[name] for name in now}
            self.wall_seconds = time.monotonic() - self._wall

    def others_percent(self, load_seconds: float) -> dict[str, float]:
        """Of the machine's CPUs over the window: % used by processes not under test, % stolen."""
        if not self.seconds or not self.wall_seconds:
            return {}
        capacity = self.wall_seconds * (os.cpu_count() or 1)
        ours = sum(v for k, v in self.seconds.items() if not k.startswith("machine_"))
        others = self.seconds["machine_busy"] - ours - load_seconds
        return {
            "others": round(max(others, 0.0) / capacity * 100, 1),
            "steal": round(self.seconds["machine_steal"] / capacity * 100, 1),
        }

    def noisy(self, load_seconds: float) -> float:
        """Other processes' and stolen % of the machine's CPU over the window, summed: a window
        at ``NOISY_PERCENT`` or more is noisy."""
        return disturbed(self.others_percent(load_seconds))

    def per_request_us(self, requests: int) -> dict[str, float]:
        if not requests:
            return {}
        return {
            name: round(s / requests * 1e6, 1)
            for name, s in self.seconds.items()
            if not name.startswith("machine_")
        }
