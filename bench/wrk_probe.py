"""The shared thin probe's ``wrk`` setup (``../shared/perf/thin/run.sh``), against this service.

Issue #15 asks for gain and debit at >= 0.6x the bare ceiling in ``make bench`` *and* in the
thin probe's setup. That setup differs from ``make bench``'s: one uvicorn worker, ``wrk -t2
-c50``, 40,000 distinct bearer tokens (user JWTs here, so each request acts as its own user, as
a frontend's would), and the probe's actions: the three creations and ``daily_chat``, no
targets. Targets, one after another on one throwaway Redis (emptied before each), each warmed
for ``--warmup`` seconds (the token cache fills, as thin's is pre-filled) and then measured:

- ``bare``: ``bench/baselines/bare.py``, the fixed gain-sized body (the HTTP ceiling);
- ``gain``: ``POST /api/exp/gain`` on ``api.main:app_from_env`` (Redis only, metrics on);
- ``debit``: ``POST /api/v1/xp/debit`` ``EDIT_IMAGE``, the same 40,000 users subscribed to
  ``pixel_rookie`` with a top-up before the run;
- ``thin``: the shared probe's own service (``../shared/perf/thin/thin.py``, through
  ``bench/baselines/thin.py``) on a password-less Redis of its own (it sends no AUTH), with
  the same tokens and gain bodies: the thinnest design's server and Redis CPU per request beside
  ours, in the same run (left out when the probe is not on this machine);
- ``bare2``: bare again, so drift within the run shows.

Usage: ``.venv/bin/python -m bench.wrk_probe [--seconds 8] [--warmup 3]``; needs ``wrk``
(Debian's package). Prints one line a target: the ratio to bare (the mean of both bare runs),
and the CPU microseconds per request of the server process and of Redis over the measured run
(/proc and ``INFO cpu``; 1 s clock ticks make them approximate). Reported, never asserted.

``--load python --workers 2`` keeps the probe's targets, tokens and bodies but drives them as
``make bench`` drives its rows: its load generator (``bench/load.py``: 64 connections,
precomputed requests cycled in a seeded order) instead of ``wrk``, and two uvicorn workers; the
generator's CPU per request is printed too. The thin probe's design measured in ``make
bench``'s setting: what issue #15's 0.6 means there for the thinnest service. Its gain requests
are every token with every action once, then every token's creations again, shuffled (280,000
requests): each is an award the rules allow (the limits are 1 and 2 a day, the four actions
earn 80 EXP and the creations again 60, under level 1's cap of 150), so until the list runs out
every target does the same work a request, however fast it cycles (with one fixed action a
token, the faster target reached more cheap 429s: session 10's reviewer).

- ``thin-lane`` (with the probe present): the probe's design on this service's hot lane
  (``bench/baselines/thin_lane.py``: thin's token dict and script, the service's HTTP protocol,
  lane and auto-pipeline), so thin's division of labour is measured on the same HTTP path as
  ours, not on stock uvicorn's.

``--rounds N`` runs the targets N times, alternated (bare, ..., bare2 each round, so drift hits
them alike); each round's ratios are against that round's bare runs, and a summary prints each
target's median ratio and range. A window in which other processes used, or the hypervisor stole,
10% or more of the machine's CPU is flagged NOISY (``make bench``'s rule, ``bench/run.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import redis as redis_py

from bench import direct, scenarios
from bench.baselines.thin import thin_dir
from bench.cpu import NOISY_PERCENT, CpuWindow, redis_cpu, tree_cpu
from bench.load import LoadSpec, run_load
from bench.servers import (
    BARE_APP,
    GAIN_APP,
    THIN_APP,
    THIN_LANE_APP,
    uvicorn_server,
    wait_for_ping,
)
from counters.auth import issue_token
from counters.cli.embedded import RedisServer, find_redis_server, free_port, stop_process
from counters.metrics import prepare_multiprocess_dir

TOKENS = 40_000
ACTIONS = ("create_character", "create_scene", "create_persona", "daily_chat")
TIER = "pixel_rookie"

# wrk's request generator: a random token of the file, a random body of the list (as thin's).
_WRK_LUA = """
local tokens = {}
local bodies = {%(bodies)s}
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  math.randomseed(os.time() + tonumber(string.sub(tostring({}), 8), 16) %% 100000)
end
request = function()
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]},
    bodies[math.random(#bodies)])
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One measured target: requests per second, how many answers were not 2xx, and CPU
    microseconds per request of the server process and of Redis over the measured run."""

    name: str
    rps: float
    non_2xx: int
    server_us: float = 0.0
    redis_us: float = 0.0
    generator_us: float = 0.0  # --load python only: the load generator's CPU per request
    others: float = 0.0  # % of the machine's CPU used by other processes or stolen meanwhile
    split: tuple[int, ...] = ()  # --load python: the generator's connections each worker holds


def _wrk_script(path: str, bodies: list[str], where: Path) -> Path:
    lua_bodies = ", ".join("'" + body + "'" for body in bodies)
    where.write_text(_WRK_LUA % {"bodies": lua_bodies, "path": path})
    return where


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def connections_by_worker(port: int) -> tuple[int, ...]:
    """How many established connections to ``port`` each process holds, most first (``ss``
    from iproute2; empty without it). Printed so an uneven split is seen; in session 11's runs
    no worker was saturated (README, "Eleventh round"), so it did not decide a ratio."""
    if shutil.which("ss") is None:
        return ()
    argv = ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    held: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+),", out):
        held[pid] = held.get(pid, 0) + 1
    return tuple(sorted(held.values(), reverse=True))


def _wrk(url: str, script: Path, tokens: Path, seconds: float) -> tuple[float, int, int]:
    argv = ["wrk", "-t2", "-c50", f"-d{seconds:g}s", "-s", str(script), url, "--", str(tokens)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rps is None or done is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(rps.group(1)), int(non.group(1)) if non else 0, int(done.group(1))


def _python_requests(path: str, tokens: Path, bodies: list[str], again: int = 0) -> list[bytes]:
    """Every token with every body once, shuffled; then every token with the first ``again``
    bodies once more, shuffled (seeded: the same list for every target of a run)."""
    shuffle = random.Random(15).shuffle
    lines = tokens.read_text().splitlines()
    passes = [
        [(t, b) for t in lines for b in bodies],
        [(t, b) for t in lines for b in bodies[:again]],
    ]
    out: list[bytes] = []
    for pairs in passes:
        shuffle(pairs)
        out += [
            scenarios.http_request("POST", path, {"Authorization": f"Bearer {t}"}, b.encode())
            for t, b in pairs
        ]
    return out


def _every_token_once(port: int, path: str, tokens: Path) -> None:
    """Send one request per token, in order (bench/load.py cycles its list with one cursor):
    a first run of 2 s gives the rate, a second runs long enough to reach every token. The body
    names an unknown action or generation type: authenticated (and cached), then refused with
    a 4xx, so the warm-up changes no counter."""
    body = b'{"action":"warm_up"}' if path.endswith("gain") else b'{"generation_type":"WARM_UP"}'
    requests = [
        scenarios.http_request("POST", path, {"Authorization": f"Bearer {token}"}, body)
        for token in tokens.read_text().splitlines()
    ]
    first = run_load(LoadSpec(port, requests, connections=50, warmup=0.0, duration=2.0))
    rate = max(first.rps, 100.0)
    run_load(LoadSpec(port, requests, connections=50, warmup=0.0, duration=1.2 * TOKENS / rate))


def _flushall(redis_url: str) -> None:
    client = redis_py.Redis.from_url(redis_url, socket_timeout=30)
    try:
        client.flushall()
    finally:
        client.close()


def _subscribe(redis_url: str, users: list[str]) -> None:
    async def run() -> None:
        settings = replace(direct.bench_settings(redis_url), redis_timeout_seconds=30.0)
        async with direct.services(settings) as svc:
            await direct.subscribe(svc, users, TIER, 10_000_000)

    asyncio.run(run())


@contextmanager
def _plain_redis(tmp: Path) -> Iterator[int]:
    """A throwaway redis-server without a password or persistence (as the thin probe's own
    ``run.sh`` starts one): its port, until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        client = redis_py.Redis(port=port, socket_timeout=2)
        try:
            wait_for_ping(client, proc, 10)
        finally:
            client.close()
        yield port
    finally:
        stop_process(proc, 10)


def measure(
    seconds: float,
    warmup: float,
    tmp: Path,
    *,
    load: str = "wrk",
    workers: int = 1,
    rounds: int = 1,
) -> list[list[WrkResult]]:
    """Run the targets ``rounds`` times, alternated, driven by ``wrk`` or (``load="python"``)
    by ``bench/load.py``, each served by ``workers`` uvicorn workers: each round's results in
    serving order. Raises ``RuntimeError`` when a server does not start or wrk fails."""
    users = [f"wp{n}" for n in range(TOKENS)]
    tokens = tmp / "tokens"
    tokens.write_text("\n".join(issue_token(scenarios.JWT_SECRET, user) for user in users))
    gain_bodies = [f'{{"action":"{a}"}}' for a in ACTIONS]
    debit_bodies = ['{"generation_type":"EDIT_IMAGE"}']
    gain_lua = _wrk_script("/api/exp/gain", gain_bodies, tmp / "gain.lua")
    debit_lua = _wrk_script("/api/v1/xp/debit", debit_bodies, tmp / "debit.lua")
    bare_lua = _wrk_script("/", gain_bodies, tmp / "bare.lua")
    creations = len(ACTIONS) - 1  # ACTIONS lists the creations first
    python_requests = (
        {
            "/": _python_requests("/", tokens, gain_bodies, creations),
            "/api/exp/gain": _python_requests("/api/exp/gain", tokens, gain_bodies, creations),
            "/api/v1/xp/debit": _python_requests("/api/v1/xp/debit", tokens, debit_bodies),
        }
        if load == "python"
        else {}
    )
    redis = RedisServer(tmp / "redis", persistent=False)
    redis.start()
    found: list[list[WrkResult]] = []
    try:
        env = {
            "COUNTERS_REDIS_URL": redis.url,
            "COUNTERS_SERVICE_KEYS": scenarios.SERVICE_KEY,
            "COUNTERS_JWT_SECRET": scenarios.JWT_SECRET,
            "COUNTERS_DATA_DIR": str(tmp / "data"),
        }
        targets = [
            ("bare", BARE_APP, bare_lua, "/", False),
            ("gain", GAIN_APP, gain_lua, "/api/exp/gain", False),
            ("debit", GAIN_APP, debit_lua, "/api/v1/xp/debit", True),
        ]
        if thin_dir() is not None:
            targets.append(("thin", THIN_APP, gain_lua, "/api/exp/gain", False))
            targets.append(("thin-lane", THIN_LANE_APP, gain_lua, "/api/exp/gain", False))
        targets.append(("bare2", BARE_APP, bare_lua, "/", False))
        for _ in range(rounds):
            results: list[WrkResult] = []
            for name, app, script, path, subscribed in targets:
                _flushall(redis.url)
                if subscribed:
                    _subscribe(redis.url, users)
                with ExitStack() as stack:
                    redis_url, served = redis.url, env | prepare_multiprocess_dir(tmp / name)
                    if app == THIN_APP:
                        port = stack.enter_context(_plain_redis(tmp / "thin-redis"))
                        redis_url = f"redis://127.0.0.1:{port}/0"
                        served = {"THIN_TOKENS": str(tokens), "THIN_REDIS_PORT": str(port)}
                    elif app == THIN_LANE_APP:
                        served |= {"THIN_TOKENS": str(tokens)}
                    probe = "/" if app in (BARE_APP, THIN_APP) else "/healthz"
                    serving = uvicorn_server(app, served, workers=workers, probe_path=probe)
                    server = stack.enter_context(serving)
                    url = f"http://127.0.0.1:{server.port}{path}"
                    # thin's token dict is filled in every worker before it serves; ours fills
                    # per worker, and a request goes to whichever worker accepted its
                    # connection: with two workers split evenly, five passes leave a token
                    # uncached in a worker 1 time in 32 (at a 2:1 split, ~13% in the smaller;
                    # a bias against our gain of ~0.5 us a request)
                    passes = 4 * workers - 3 if app == GAIN_APP else 0
                    for _ in range(passes):
                        _every_token_once(server.port, path, tokens)
                    if load == "python":
                        run = _python_run(
                            server.port, server.pid, redis_url, python_requests[path], seconds,
                            warmup,
                        )  # fmt: skip
                    else:
                        run = _wrk_run(url, script, tokens, seconds, warmup, server.pid, redis_url)
                    results.append(replace(run, name=name))
                noisy = " NOISY" if run.others >= NOISY_PERCENT else ""
                print(
                    f"{name:<9} {run.rps:>9,.0f} req/s  non-2xx {run.non_2xx}  "
                    f"others {run.others:.0f}%{noisy}",
                    file=sys.stderr,
                    flush=True,
                )
            found.append(results)
    finally:
        redis.stop()
    return found


def _wrk_run(
    url: str, script: Path, tokens: Path, seconds: float, warmup: float, pid: int, redis_url: str
) -> WrkResult:
    """One target under ``wrk``, warmed first; CPU sampled around the measured run (wrk's
    own once it has exited, so it counts as ours, not as another process's)."""
    _wrk(url, script, tokens, warmup)
    window = _window(pid, redis_url)
    window.meters["wrk"] = _children_cpu
    window("start")
    rps, non, done = _wrk(url, script, tokens, seconds)
    window("end")
    per = window.per_request_us(max(done, 1))
    return WrkResult("", rps, non, per["server"], per["redis"], others=window.noisy(0.0))


def _python_run(
    port: int, pid: int, redis_url: str, requests: list[bytes], seconds: float, warmup: float
) -> WrkResult:
    """One target driven by ``make bench``'s load generator; CPU sampled over its window, and
    the workers' connection split at its start."""
    cpu = _window(pid, redis_url)
    split: list[tuple[int, ...]] = []

    def window(edge: str) -> None:
        if edge == "start":
            split.append(connections_by_worker(port))
        cpu(edge)

    spec = LoadSpec(port, requests, connections=64, warmup=warmup, duration=seconds)
    result = run_load(spec, window)
    done = max(result.requests, 1)
    per = cpu.per_request_us(done)
    non = sum(count for status, count in result.statuses.items() if not 200 <= status < 300)
    return WrkResult(
        "", result.rps, non, per["server"], per["redis"], result.cpu_seconds / done * 1e6,
        cpu.noisy(result.cpu_seconds), split[0] if split else (),
    )  # fmt: skip


def _window(pid: int, redis_url: str) -> CpuWindow:
    """The server's (its process tree's) and Redis's CPU, and the machine's, over a window."""
    return CpuWindow({"server": lambda: tree_cpu(pid), "redis": lambda: redis_cpu(redis_url)})


def _bare_rps(results: list[WrkResult]) -> float:
    """The mean rate of a round's bare runs (bare and bare2): what its ratios are against."""
    bares = [r.rps for r in results if r.name.startswith("bare")]
    return sum(bares) / len(bares)


def render(results: list[WrkResult]) -> str:
    """One line a target with its ratio to the mean of the round's bare runs."""
    bare = _bare_rps(results)
    lines = [
        f"{r.name:<9} {r.rps:>9,.0f} req/s  non-2xx {r.non_2xx:<7} /bare {r.rps / bare:.2f}  "
        f"CPU us/request: server {r.server_us:5.1f}, Redis {r.redis_us:5.1f}"
        + (f", generator {r.generator_us:5.1f}" if r.generator_us else "")
        + (f"  connections {'/'.join(map(str, r.split))}" if r.split else "")
        + (f"  NOISY: others {r.others:.0f}%" if r.others >= NOISY_PERCENT else "")
        for r in results
    ]
    return "\n".join(lines)


def summary(rounds: list[list[WrkResult]]) -> str:
    """Each target's median ratio to its round's bare, its range, and its median CPU per
    request (server + Redis [+ generator]), over the rounds; rounds with a NOISY window are
    counted (not dropped: on a shared VM that could leave none)."""
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    noisy = sum(any(r.others >= NOISY_PERCENT for r in results) for results in rounds)
    for results in rounds:
        bare = _bare_rps(results)
        for r in results:
            ratios.setdefault(r.name, []).append(r.rps / bare)
            cpu.setdefault(r.name, []).append(r.server_us + r.redis_us + r.generator_us)
    lines = [f"over {len(rounds)} rounds ({noisy} with a NOISY window): median /bare (range)"]
    for name, values in ratios.items():
        lines.append(
            f"{name:<9} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            f"  CPU us/request {statistics.median(cpu[name]):6.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if args.load == "wrk" and shutil.which("wrk") is None:
        print("bench.wrk_probe needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wrk-probe-") as tmp:
        found = measure(
            args.seconds, args.warmup, Path(tmp), load=args.load, workers=args.workers,
            rounds=args.rounds,
        )  # fmt: skip
        print("\n\n".join(render(results) for results in found))
        if len(found) > 1:
            print("\n" + summary(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
