"""Where a hot request's server CPU goes in ``make bench``'s setting: the service against the
lane's floor and the bare ceiling, in one run.

``python -m bench.floor [--seconds 10] [--rounds 2] [--variant NAME[@TARGET]:VAR=VALUE[,...]]
[--memo]``
serves, one after another and
``--rounds`` times alternated, with ``make bench``'s options (two workers, 64 connections,
metrics on, row 2's requests: the gain mix, 100k users, the service key):

- ``bare``: row 1's bare Starlette route under stock uvicorn (the ceiling);
- ``floor``: the service served as ``counters serve`` serves it, its hot routes answered by
  one Redis round trip and the bare route's body (``bench/baselines/floor.py``): HTTP in, the
  lane's framing, one auto-pipelined call, HTTP out, and none of the service's own work;
- ``floor-lua``: the floor again, its one round trip the service's own script command for each
  request, packed by the service's packers (``bench/baselines/floor_lua.py``): the service's
  Redis work with the packers' Python, and for the 10% of ``create_*`` the service's whole
  award (not the least Python a split could have: see ``--memo``);
- ``gain``: row 2, the service itself;
- with ``--memo``, ``floor-memo``: floor-lua's commands, all of row 2's packed once per worker
  on its first gain request, in the warm-up (``bench/baselines/floor_memo.py``; ~1.3-2.2 s on
  the 2-core VM: what outlasts the warm-up counts against it): a request's Python is the lane,
  the caller, the decode and a dict lookup, less than any design could have, so its rate (not
  floor-lua's, whose creates run the service's whole ``ExpService.award``) bounds every split
  of work between the service's Python and these scripts;
- each ``--variant``: row 2 (or with ``@TARGET``, another target) again with those settings
  changed (for example ``boards-off:COUNTERS_LEADERBOARDS_ENABLED=false``,
  ``metrics-off:COUNTERS_METRICS_ENABLED=0`` or
  ``lua-boards-off@floor-lua:COUNTERS_LEADERBOARDS_ENABLED=false``), so what a part of the
  contract costs shows in the same rounds as the service and its floors.

For each it prints requests/s, the ratio to bare, CPU microseconds per request (the server's
user and system time from /proc, Redis's and the load generator's) and the busy share of the
cores, then each target's ratio round by round. The floor's server CPU against the budget 0.6 x
bare leaves the server (bare's total CPU per request / 0.6, less Redis's and the generator's
share of a gain; also scaled by gain's busy share against bare's, since a Redis-backed row
leaves cores idle) says whether any work split inside the service could reach the target
(README, Performance, "Ninth round"). Reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import direct
from bench.cpu import CpuWindow, redis_cpu, tree_cpu_parts
from bench.load import LoadSpec, run_load
from bench.options import Options
from bench.run import Bench
from bench.servers import (
    BARE_APP,
    FLOOR_APP,
    FLOOR_LUA_APP,
    FLOOR_MEMO_APP,
    GAIN_APP,
    uvicorn_server,
)

TARGETS = (
    ("bare", BARE_APP),
    ("floor", FLOOR_APP),
    ("floor-lua", FLOOR_LUA_APP),
    ("gain", GAIN_APP),
)
# With --memo: floor-lua's commands packed ahead (bench/baselines/floor_memo.py): the same Redis
# work with less Python than any design could have, so what no split with these scripts beats
MEMO = ("floor-memo", FLOOR_MEMO_APP)


@dataclass(frozen=True, slots=True)
class FloorRun:
    """One measured run: requests/s and CPU µs per request (server user and system, Redis,
    the load generator)."""

    name: str
    rps: float
    user_us: float
    system_us: float
    redis_us: float
    load_us: float

    @property
    def total_us(self) -> float:
        """Every process's CPU per request: what a CPU-bound 2-core machine divides."""
        return self.user_us + self.system_us + self.redis_us + self.load_us

    @property
    def busy(self) -> float:
        """The share of the machine's CPU the measured processes kept busy (0-1): under 1,
        requests waited with a core idle (on a round trip between processes), so the rate is
        less than the CPU per request alone allows."""
        return self.rps * self.total_us / 1e6 / (os.cpu_count() or 1)


# A name, the target it varies (a name of TARGETS other than bare) and the settings
# (environment) it changes
Variant = tuple[str, str, dict[str, str]]


def parse_variant(text: str) -> Variant:
    """``NAME[@TARGET]:VAR=VALUE[,VAR=VALUE...]`` as ``(NAME, TARGET, {VAR: VALUE})``, TARGET
    ``gain`` unless named; raises ``ValueError``."""
    head, sep, assignments = text.partition(":")
    name, at, target = head.partition("@")
    pairs = [item.partition("=") for item in assignments.split(",") if item]
    if not name or not sep or not pairs or any(not k or not eq for k, eq, _ in pairs):
        raise ValueError(f"a variant is NAME[@TARGET]:VAR=VALUE[,VAR=VALUE], not {text!r}")
    served = dict(TARGETS)
    if at and (target not in served or served[target] == BARE_APP):
        others = ", ".join(n for n, f in TARGETS if f != BARE_APP)
        raise ValueError(f"a variant's TARGET is one of {others}, not {target!r}")
    return name, target if at else "gain", {k: v for k, _, v in pairs}


def measure(
    seconds: float, rounds: int, tmp: Path, variants: tuple[Variant, ...] = (), memo: bool = False
) -> list[FloorRun]:
    """Run every target (and each variant; with ``memo``, ``floor-memo`` after ``floor-lua``)
    ``rounds`` times, alternated, each from row 2's starting state."""
    bench = Bench(Options(), tmp)
    bench.redis.start()
    runs: list[FloorRun] = []
    try:
        bench.with_services(direct.seed_owners)
        bench.seeded = direct.snapshot(bench.redis.url)
        served: list[tuple[str, str]] = [*TARGETS]
        if memo:
            served.insert(served.index(("floor-lua", FLOOR_LUA_APP)) + 1, MEMO)
        targets: list[tuple[str, str, dict[str, str]]] = [(n, f, {}) for n, f in served]
        targets += [(name, dict(TARGETS)[target], env) for name, target, env in variants]
        for _ in range(rounds):
            for name, factory, env in targets:
                bench.fresh_redis()
                runs.append(_once(bench, name, factory, seconds, env))
                print(f"{name:<9} {runs[-1].rps:>9,.0f} req/s", file=sys.stderr, flush=True)
    finally:
        bench.redis.stop()
    return runs


def _once(bench: Bench, name: str, factory: str, seconds: float, env: dict[str, str]) -> FloorRun:
    options = bench.options
    requests = bench.bare_requests if factory == BARE_APP else bench.gain_requests
    probe = "/" if factory == BARE_APP else "/api/levels"
    served = bench.env(**env)
    with uvicorn_server(factory, served, workers=options.workers, probe_path=probe) as srv:
        meters = {
            "user": lambda: tree_cpu_parts(srv.pid)[0],
            "system": lambda: tree_cpu_parts(srv.pid)[1],
            "redis": lambda: redis_cpu(bench.redis.url),
        }
        window = CpuWindow(meters)
        spec = LoadSpec(
            srv.port, requests, connections=options.connections, warmup=options.warmup,
            duration=seconds,
        )  # fmt: skip
        result = run_load(spec, window)
    per = window.per_request_us(result.requests)
    load_us = result.cpu_seconds / max(result.requests, 1) * 1e6
    redis_us = per.get("redis", 0.0) if factory != BARE_APP else 0.0
    return FloorRun(name, result.rps, per["user"], per["system"], redis_us, load_us)


def render(runs: list[FloorRun]) -> str:
    """Medians per target, their ratios to bare, and the server budget 0.6 x bare leaves."""

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs if r.name == name)

    bare = med("bare", "rps")
    lines = []
    for name in dict.fromkeys(r.name for r in runs):
        lines.append(
            f"{name:<9} {med(name, 'rps'):>9,.0f} req/s  /bare {med(name, 'rps') / bare:.2f}  "
            f"CPU us/request: server {med(name, 'user_us'):5.1f} user + "
            f"{med(name, 'system_us'):4.1f} system, Redis {med(name, 'redis_us'):5.1f}, "
            f"load {med(name, 'load_us'):5.1f}, all {med(name, 'total_us'):5.1f}, "
            f"busy {med(name, 'busy'):.0%}"
        )
    lines += [f"{name:<9} per round / that round's bare: {ratios}" for name, ratios in
              per_round(runs).items()]  # fmt: skip
    # What a gain request may spend at 0.6 x bare's rate: the CPU the machine gives a request
    # at that rate (bare's per request / 0.6, scaled by how busy gain keeps the machine against
    # bare), less Redis's and the generator's share of a gain
    others = med("gain", "redis_us") + med("gain", "load_us")
    at_bare = med("bare", "total_us") / 0.6 - others
    at_gain = med("bare", "total_us") * med("gain", "busy") / med("bare", "busy") / 0.6 - others
    floor = med("floor", "user_us") + med("floor", "system_us")
    gain = med("gain", "user_us") + med("gain", "system_us")
    lines.append(
        f"0.6 x bare leaves a gain request's server {at_bare:.1f} us at bare's busy share, "
        f"{at_gain:.1f} at gain's; the floor's server takes {floor:.1f}, the service's {gain:.1f}"
    )
    return "\n".join(lines)


def per_round(runs: list[FloorRun]) -> dict[str, str]:
    """Each target's ratio to the bare run of its own round, round by round (runs in the order
    ``measure`` made them: each round starts with bare). On a VM whose bare moves by a third
    within a run, these, not the ratio of medians taken from different rounds, are what to
    compare."""
    found: dict[str, list[float]] = {}
    bare = 0.0
    for run in runs:
        if run.name == "bare":
            bare = run.rps
        elif bare:
            found.setdefault(run.name, []).append(run.rps / bare)
    return {name: ", ".join(f"{r:.2f}" for r in ratios) for name, ratios in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # make bench's measured window (bench/options.py); session 12 and before measured 8 s
    parser.add_argument("--seconds", type=float, default=Options().duration)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--memo", action="store_true", help="floor-memo too (see TARGETS)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        runs = measure(args.seconds, args.rounds, Path(tmp), tuple(args.variant), args.memo)
        print(render(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
