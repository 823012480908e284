"""CPU per ledgered event, flat out, for several checkouts alternated in one session (issue #11).

``python -m bench.flush_cost [--runs 3] [--users 10000] CHECKOUT [CHECKOUT ...]``

Each run is a process of its own with ``CHECKOUT`` first on ``PYTHONPATH`` (and as its working
directory), so it runs that checkout's service, bench and flusher: it starts a throwaway Redis
and Postgres (``bench.run.Bench``'s servers), fills the streams with the memory scenario
(``--users`` users doing a typical day: ~60k events for 10,000), then drains them with one
flusher (``bench.flush.drain``, as ``flusher_capacity`` in ``make bench`` does) and counts, per
event ledgered:

- ``flusher``: the draining process's CPU (user + system) over the drain;
- ``postgres``: the postmaster and its backends, exited ones included, from before the drain to
  a second after it (the drain's pool closes as it ends: its backends must exit and be reaped);
- ``redis``: Redis's ``used_cpu_user + used_cpu_sys`` over the same span.

Runs go round robin over the checkouts (A B A B ...), so a change in the machine's load hits each
about equally; the table gives each checkout's median per column (the total is the median of the
runs' totals) and each checkout's total against the first's. Only the APIs that the bench had
before issue #11 are used (``Bench``, ``Bench.memory``, ``Bench.postgres_cpu``, ``flush.drain``,
``flush.empty_ledger``, ``cpu.redis_cpu``), so commit d7a9f3b can be measured too:
``git worktree add --detach /work/wt-d7a9 d7a9f3b``. Results are JSON lines on stderr too.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import cpu

_COLUMNS = ("flusher", "postgres", "redis", "total")

# Run inside the checkout under test (its code first on sys.path); prints one JSON line.
_CHILD = r"""
import asyncio, gc, json, sys, tempfile, time
from pathlib import Path

import bench, counters, persistence
from bench import direct, flush
from bench.options import Options
from bench.run import Bench

users = int(sys.argv[1])
exec(sys.argv[2])  # the meters: this harness's own, not the checkout's (older ones miss exited
# backends)
with tempfile.TemporaryDirectory(prefix="flush-cost-") as tmp:
    b = Bench(Options(memory_users=users, only=frozenset({"memory"})), Path(tmp))
    with b._servers():
        assert b.postgres is not None, b.report.notes
        b.with_services(direct.seed_owners)
        b.seeded = direct.snapshot(b.redis.url)
        b.memory()  # fills the streams: the memory scenario's events
        url = b.postgres.url
        buckets = direct.bench_settings(b.redis.url).key_buckets
        asyncio.run(flush.empty_ledger(url))
        time.sleep(1.0)  # the pool's backends exit before the window opens
        gc.collect()
        postmaster = int((b.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        pg, rd = tree_cpu(postmaster), redis_cpu(b.redis.url)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        drained = asyncio.run(flush.drain(b.redis.url, url, buckets))
        flusher, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        time.sleep(1.0)
        pg, rd = tree_cpu(postmaster) - pg, redis_cpu(b.redis.url) - rd
        n = max(drained.events, 1)
        print(json.dumps({
            "code": [str(Path(m.__file__).parent.parent) for m in (bench, counters, persistence)],
            "events": drained.events, "buckets": buckets, "seconds": round(wall, 2),
            "flusher": flusher * 1e6 / n, "postgres": pg * 1e6 / n, "redis": rd * 1e6 / n,
            "total": (flusher + pg + rd) * 1e6 / n,
        }))
"""


def run_once(checkout: Path, users: int) -> dict[str, object]:
    """One drain of ``checkout``'s code in a process of its own; its JSON line as a dict.
    Raises ``RuntimeError`` if the child failed or ran some other checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env = {k: v for k, v in env.items() if not k.startswith("COUNTERS_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(users), inspect.getsource(cpu)],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    code = result.pop("code")
    if any(Path(str(p)).resolve() != checkout.resolve() for p in code):  # type: ignore[attr-defined]
        raise RuntimeError(f"{checkout}: the child ran code from {code}")
    return result


def table(checkouts: list[Path], runs: dict[Path, list[dict[str, object]]]) -> str:
    """Medians per checkout and column (us per event), and each total against the first's."""
    lines = ["| checkout | runs | events | " + " | ".join(_COLUMNS) + " | total / first |"]
    lines.append("|---|---:|---:|" + "---:|" * (len(_COLUMNS) + 1))
    first = statistics.median(float(str(r["total"])) for r in runs[checkouts[0]])
    for checkout in checkouts:
        mine = runs[checkout]
        medians = [statistics.median(float(str(r[c])) for r in mine) for c in _COLUMNS]
        events = statistics.median(int(str(r["events"])) for r in mine)
        cells = " | ".join(f"{m:.1f}" for m in medians)
        lines.append(
            f"| {checkout} | {len(mine)} | {events:,.0f} | {cells} | {medians[-1] / first:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flush_cost", description=__doc__)
    parser.add_argument("checkouts", nargs="+", type=Path, help="trees to measure, alternated")
    parser.add_argument("--runs", type=int, default=3, help="runs per checkout (median shown)")
    parser.add_argument("--users", type=int, default=10_000, help="memory scenario users")
    args = parser.parse_args(argv)
    checkouts: list[Path] = [p.resolve() for p in args.checkouts]
    runs: dict[Path, list[dict[str, object]]] = {c: [] for c in checkouts}
    for n in range(args.runs):
        for checkout in checkouts:
            result = run_once(checkout, args.users)
            runs[checkout].append(result)
            line = {"run": n, "checkout": str(checkout), "load": _load(), **result}
            line = {k: round(v, 1) if isinstance(v, float) else v for k, v in line.items()}
            print(json.dumps(line), file=sys.stderr, flush=True)
    print(table(checkouts, runs))
    return 0


def _load() -> str:
    """The 1-minute load average, to state next to the figures."""
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    raise SystemExit(main())
