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

``python -m bench.flush_cost --at-rate 5000 [--seconds 10] VARIANT [VARIANT ...]`` measures the
steady rate instead, with this checkout's code only: awards made at ``--at-rate`` per second
for ``--seconds`` while flusher processes ledger them as ``serve`` workers would
(``bench.flush.at_rate``), per event: the flusher processes' CPU and Postgres's, from their
start-up's end to the end of the catch-up (Redis's would count the awards too: left out). A
VARIANT is ``<consumers>:<lease ms>[:<linger ms>]``: ``2:0``, two workers' flushers both
flushing (no lease), ``2:5000`` one at a time (the flush lease), ``2:5000:200`` lingering 200 ms
instead of the default. Variants are alternated as checkouts are.

``python -m bench.flush_cost --replay [--chunk 1000] CHECKOUT [CHECKOUT ...]`` measures what
the drain does not show: row 2p's entries in batches of the size a steady rate makes. Once, with
this checkout's code, row 2p's HTTP load (known users, ``serve`` with Postgres and the flusher
off, ``--seconds`` of load after the warm-up) fills the streams; their entries are read back
(``XRANGE``) and kept in a file. Then each run, a process of its own per checkout as above, starts
a throwaway Postgres, migrates it, and writes those entries in time order, ``--chunk`` at a time,
each chunk parsed (``events.sort_entries``) and written in one transaction
(``writer.write_batch``), twice: the second pass, after a ``TRUNCATE``, is measured. Per ledger
event: ``flusher``, the process's CPU (parse and write: the flusher minus its Redis reads and
acks), and ``postgres``, the server's process tree. The drain writes one transaction of 60k
events with few records; row 2p's batches carry ~1,000 entries over ~1,000 buckets, a tenth of
them records (likes and forks), and one totals row per event. With ``--at-rate`` too
(``--replay --at-rate 3000``), each run feeds the captured entries to two flusher processes
(as two ``serve`` workers: the lease, the default linger) by ``XADD`` at that many entries a
second instead, and counts the whole loop (read, parse, write, ack): the flusher processes'
CPU and Postgres's per ledger event, from the end of their start-up to the end of the catch-up.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


# The steady rate, run inside this checkout; prints one JSON line (see the module's docstring).
_RATE_CHILD = r"""
import asyncio, dataclasses, json, sys, tempfile
from pathlib import Path

from bench import direct, flush, scenarios
from bench.options import Options
from bench.run import Bench

rate, seconds = float(sys.argv[1]), float(sys.argv[2])
consumers, lease_ms, *linger = (int(n) for n in sys.argv[3].split(":"))
with tempfile.TemporaryDirectory(prefix="flush-rate-") as tmp:
    b = Bench(Options(only=frozenset({"flusher"})), Path(tmp))
    with b._servers():
        assert b.postgres is not None, b.report.notes
        b.with_services(direct.seed_owners)
        b.seeded = direct.snapshot(b.redis.url)
        url = b.postgres.url
        asyncio.run(flush.empty_ledger(url))
        buckets = direct.bench_settings(b.redis.url).key_buckets
        awards = scenarios.gain_awards(count=int(rate * seconds), prefix="f")

        async def measure(svc):
            calls = await direct.award_calls(svc, awards)
            return await flush.at_rate(
                b.redis.url, url, buckets, calls, rate, consumers=consumers, lease_ms=lease_ms,
                linger_ms=linger[0] if linger else None, meters={"postgres": b.postgres_cpu},
            )

        result = b.with_services(measure)
        cpu = result.cpu_us_per_event
        print(json.dumps({
            **cpu, "total": round(sum(cpu.values()), 1),
            "events_per_second": result.events_per_second, "max_lag_events": result.max_lag_events,
            "catch_up_seconds": result.catch_up_seconds,
        }))
"""


# Row 2p's load with the flusher off, in this checkout; pickles its stream entries (see the
# module's docstring: --replay).
_CAPTURE_CHILD = r"""
import asyncio, dataclasses, pickle, sys, tempfile
from pathlib import Path

import redis
from bench import direct, flush
from bench.options import Options
from bench.run import GAIN_APP, Bench
from counters.redis.keys import stream_key
from counters.settings import Settings

out, seconds = sys.argv[1], float(sys.argv[2])
with tempfile.TemporaryDirectory(prefix="flush-capture-") as tmp:
    b = Bench(Options(only=frozenset({"durable"}), repeat=1, duration=seconds), Path(tmp))
    with b._servers():
        assert b.postgres is not None, b.report.notes
        url = b.postgres.url
        b.with_services(direct.seed_owners)
        b.seeded = direct.snapshot(b.redis.url)
        env = b.env(
            COUNTERS_DATABASE_URL=url, COUNTERS_FLUSHER_ENABLED="false",
            COUNTERS_MAX_UNFLUSHED_EVENTS="0", COUNTERS_MAX_UNFLUSHED_SECONDS="0",
        )
        buckets = Settings.from_env(env).key_buckets
        users = sorted({award.user_id for award in b.gain_awards})

        def prepare():
            b.fresh_redis()
            asyncio.run(flush.empty_ledger(url))
            direct.seed_known_users(b.redis.url, users, buckets)

        b.http(GAIN_APP, b.gain_requests, env=env, prepare=prepare)
        client = redis.Redis.from_url(
            b.redis.url, decode_responses=True, encoding_errors="surrogateescape"
        )
        entries = [
            (stream_key(n), sid, fields)
            for n in range(buckets)
            for sid, fields in client.xrange(stream_key(n))
        ]
        entries.sort(key=lambda e: tuple(int(x) for x in e[1].split("-")))
        Path(out).write_bytes(pickle.dumps(entries))
        print(len(entries))
"""

# Writes the pickled entries with the checkout's parser and writer; prints one JSON line.
_REPLAY_CHILD = r"""
import asyncio, json, os, pickle, sys, tempfile, time
from pathlib import Path

import asyncpg
import counters, persistence
from counters.cli.embedded import PostgresServer
from persistence.events import sort_entries
from persistence.migrate import migrate_url
from persistence.writer import write_batch

entries = pickle.loads(Path(sys.argv[1]).read_bytes())
chunk = int(sys.argv[2])
exec(sys.argv[3])  # the meters: this harness's own
chunks = [entries[i : i + chunk] for i in range(0, len(entries), chunk)]


async def passes(url, postmaster):
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    tables = [r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename <> 'schema_migrations'"
    )]
    for _ in range(2):  # the first warms the caches; the second is measured
        await conn.execute("TRUNCATE " + ", ".join(tables))
        await conn.execute("CHECKPOINT")
        time.sleep(0.3)
        pg, cpu0 = tree_cpu(postmaster), time.process_time()
        events = 0
        for part in chunks:
            batch = sort_entries(part)
            events += len(batch.events)
            await write_batch(conn, batch)
        flusher = time.process_time() - cpu0
        time.sleep(0.3)
        pg = tree_cpu(postmaster) - pg
    rows = await conn.fetchval("SELECT count(*) FROM ledger")
    await conn.close()
    return events, rows, flusher, pg


with tempfile.TemporaryDirectory(prefix="flush-replay-") as tmp:
    server = PostgresServer(data_dir=Path(tmp) / "pg")
    server.start()
    try:
        postmaster = int((Path(tmp) / "pg" / "postmaster.pid").read_text().split()[0])
        events, rows, flusher, pg = asyncio.run(passes(server.url, postmaster))
    finally:
        server.stop()
assert rows == events, (rows, events)
n = max(events, 1)
print(json.dumps({
    "code": [str(Path(m.__file__).parent.parent) for m in (counters, persistence)],
    "events": events, "batches": len(chunks),
    "flusher": flusher * 1e6 / n, "postgres": pg * 1e6 / n, "total": (flusher + pg) * 1e6 / n,
}))
"""


# The captured entries XADDed at a rate while two flusher processes ledger them (--replay
# --at-rate); prints one JSON line.
_STEADY_CHILD = r"""
import asyncio, json, multiprocessing, pickle, sys, tempfile, time
from pathlib import Path

import redis
import counters, persistence
from bench import flush
from bench.options import Options
from bench.run import Bench



def main():  # only here: the spawned flusher processes import this file as their main module
    entries = pickle.loads(Path(sys.argv[1]).read_bytes())
    rate = float(sys.argv[2])
    meters = {}
    exec(sys.argv[3], meters)  # the meters: this harness's own
    tree_cpu = meters["tree_cpu"]
    streams = sorted({stream for stream, _, _ in entries})
    with tempfile.TemporaryDirectory(prefix="flush-steady-") as tmp:
        b = Bench(Options(only=frozenset({"flusher"})), Path(tmp))
        with b._servers():
            assert b.postgres is not None, b.report.notes
            url = b.postgres.url
            asyncio.run(flush.empty_ledger(url))
            postmaster = int((b.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            context = multiprocessing.get_context("spawn")
            stop = context.Event()
            consumers = [
                context.Process(
                    target=flush._consume, args=(b.redis.url, url, 1024, stop, 5000, None),
                    daemon=True,
                )
                for _ in range(2)
            ]
            for process in consumers:
                process.start()
            time.sleep(4.0)  # the consumers start and join the group
            client = redis.Redis.from_url(b.redis.url, decode_responses=True)
            cpu0, pg0 = sum(tree_cpu(p.pid) for p in consumers), tree_cpu(postmaster)
            started, sent = time.perf_counter(), 0
            while sent < len(entries):
                due = min(int((time.perf_counter() - started) * rate), len(entries))
                if due > sent:
                    pipe = client.pipeline(transaction=False)
                    for stream, _, fields in entries[sent:due]:
                        pipe.xadd(stream, fields)
                    pipe.execute()
                    sent = due
                time.sleep(0.01)
            while sum(client.xlen(s) for s in streams) and time.perf_counter() - started < 300:
                time.sleep(0.1)
            time.sleep(0.5)
            used = sum(tree_cpu(p.pid) for p in consumers) - cpu0
            pg = tree_cpu(postmaster) - pg0
            stop.set()
            for process in consumers:
                process.join(20)
            events = asyncio.run(flush._ledger_rows(url))
            n = max(events, 1)
            print(json.dumps({
                "code": [str(Path(m.__file__).parent.parent) for m in (counters, persistence)],
                "events": events, "flusher": used * 1e6 / n, "postgres": pg * 1e6 / n,
                "total": (used + pg) * 1e6 / n,
            }))


if __name__ == "__main__":
    main()
"""


def steady_once(checkout: Path, entries: Path, rate: float) -> dict[str, object]:
    """The captured ``entries`` fed at ``rate`` a second to ``checkout``'s flushers, in a
    process of its own (a file: its flusher processes are spawned and import it)."""
    script = entries.with_name("steady.py")
    script.write_text(_STEADY_CHILD)
    return _in_checkout(checkout, str(script), str(entries), str(rate))


def capture(path: Path, seconds: float) -> int:
    """Row 2p's stream entries (this checkout's service, flusher off) pickled to ``path``;
    how many."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    done = subprocess.run(
        [sys.executable, "-c", _CAPTURE_CHILD, str(path), str(seconds)],
        cwd=root, env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"capture: exit {done.returncode}\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def replay_once(checkout: Path, entries: Path, chunk: int) -> dict[str, object]:
    """One replay of ``entries`` by ``checkout``'s parser and writer, in a process of its own."""
    return _in_checkout(checkout, _REPLAY_CHILD, str(entries), str(chunk))


def rate_once(variant: str, rate: float, seconds: float) -> dict[str, object]:
    """One steady-rate run of ``variant`` (``<consumers>:<lease ms>``) of this checkout."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    done = subprocess.run(
        [sys.executable, "-c", _RATE_CHILD, str(rate), str(seconds), variant],
        cwd=root, env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_once(checkout: Path, users: int) -> dict[str, object]:
    """One drain of ``checkout``'s code in a process of its own; its JSON line as a dict.
    Raises ``RuntimeError`` if the child failed or ran some other checkout's code."""
    return _in_checkout(checkout, _CHILD, str(users))


def _in_checkout(checkout: Path, child: str, *args: str) -> dict[str, object]:
    """Run ``child`` (source, or a script's path ending in ``.py``; its ``args``, then this
    harness's CPU meters as source) with ``checkout``'s code; its last JSON line, without
    ``code`` (checked to be the checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env = {k: v for k, v in env.items() if not k.startswith("COUNTERS_")}
    program = [child] if child.endswith(".py") else ["-c", child]
    done = subprocess.run(
        [sys.executable, *program, *args, inspect.getsource(cpu)],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    code = result.pop("code")
    if any(Path(str(p)).resolve() != checkout.resolve() for p in code):  # type: ignore[attr-defined]
        raise RuntimeError(f"{checkout}: the child ran code from {code}")
    return result


def table(
    names: list[str],
    runs: dict[str, list[dict[str, object]]],
    columns: tuple[str, ...] = _COLUMNS,
    count: str = "events",
) -> str:
    """Medians per checkout (or variant) and column (us per event), and each total against the
    first's."""
    lines = [f"| checkout | runs | {count} | " + " | ".join(columns) + " | total / first |"]
    lines.append("|---|---:|---:|" + "---:|" * (len(columns) + 1))
    first = statistics.median(float(str(r["total"])) for r in runs[names[0]])
    for name in names:
        mine = runs[name]
        medians = [statistics.median(float(str(r[c])) for r in mine) for c in columns]
        events = statistics.median(float(str(r[count])) for r in mine)
        cells = " | ".join(f"{m:.1f}" for m in medians)
        lines.append(
            f"| {name} | {len(mine)} | {events:,.0f} | {cells} | {medians[-1] / first:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flush_cost", description=__doc__)
    parser.add_argument(
        "checkouts", nargs="+", help="trees to measure (with --at-rate: variants), alternated"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per checkout (median shown)")
    parser.add_argument("--users", type=int, default=10_000, help="memory scenario users")
    parser.add_argument("--at-rate", type=float, default=0.0, help="awards/s: the steady rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="with --at-rate, --replay")
    parser.add_argument("--replay", action="store_true", help="row 2p's entries, in chunks")
    parser.add_argument("--chunk", type=int, default=1000, help="with --replay: entries a batch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flush-cost-") as tmp:
        entries = Path(tmp) / "entries.pickle"
        if args.replay:
            count = capture(entries, args.seconds)
            print(f"{count:,} entries of row 2p's load", file=sys.stderr, flush=True)
        return _measure(args, entries)


def _measure(args: argparse.Namespace, entries: Path) -> int:
    variants = args.at_rate and not args.replay  # --at-rate alone: variants of this checkout
    names = list(args.checkouts) if variants else [str(Path(p).resolve()) for p in args.checkouts]
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for n in range(args.runs):
        for name in names:
            if args.replay and args.at_rate:
                result = steady_once(Path(name), entries, args.at_rate)
            elif args.at_rate:
                result = rate_once(name, args.at_rate, args.seconds)
            elif args.replay:
                result = replay_once(Path(name), entries, args.chunk)
            else:
                result = run_once(Path(name), args.users)
            runs[name].append(result)
            line = {"run": n, "checkout": name, "load": _load(), **result}
            line = {k: round(v, 1) if isinstance(v, float) else v for k, v in line.items()}
            print(json.dumps(line), file=sys.stderr, flush=True)
    if variants:
        print(table(names, runs, ("flusher", "postgres", "total"), "events_per_second"))
    elif args.replay:
        print(table(names, runs, ("flusher", "postgres", "total")))
    else:
        print(table(names, runs))
    return 0


def _load() -> str:
    """The 1-minute load average, to state next to the figures."""
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    raise SystemExit(main())
