"""What pieces of the XP scripts cost inside Redis, measured as loops in one EVAL.

``python -m bench.lua_cost [loops]``: on a throwaway Redis, one EVAL per piece runs it ``loops``
times (default 20,000) over a typical debit's state (a subscribed user with one top-up, no
holds) with ``lua/lib/xp_state.lua`` loaded as the scripts load it; prints the microseconds per
run, less the empty loop's. A whole debit's EVALSHA costs Redis ~50-100 µs on the 2-vCPU VM
(``INFO commandstats``), too noisy under other load to show a few µs; a loop inside one EVAL is
not (issue #15: one ``XP.encode`` per debit instead of two). Reported, never asserted.

``python -m bench.lua_cost calls [N1 N2]``: whole calls instead, as served: the app in this
process (``bench.instructions``' harness) serves N1 and then N2 requests (default 1,000 and
4,000) of the gain mix and of the debit, each on an emptied Redis, and this prints Redis's own
time in its script commands (``INFO commandstats``: ``FCALL``, ``FCALL_RO``, ``EVALSHA`` and
``EVAL`` usec) per request and per call, the difference of the two runs over N2 - N1 (seeding
and warm-up cancel out).
Timings: they move with the machine's load; ``python -m bench.instructions mix --redis`` counts
the same work in instructions.

``python -m bench.lua_cost steps [N1 N2]``: where a whole debit's work goes in Redis, in
instructions (timings of these loops moved by 30 µs from run to run on a shared VM).
debit_xp.lua with its libraries, as the service sends it (``may_create`` "0": its record
ledgered too), runs N1 and then N2 times (default 200 and 1,200) in one ``EVALSHA`` on one
subscribed user with a top-up, in a ``redis-server`` under callgrind (collecting inside
``EVALSHA`` only), each time cut after one more step (the state read and advanced, the checks,
the burn, the state encoded, the ledger event, the state written back and the reply, the
record's text, then the whole script); prints each cut's instructions per debit (the difference
of the two counts over N2 - N1) and what its step added.

``python -m bench.lua_cost defs``: what running a script's libraries costs every call, in
instructions (``redis-server`` under callgrind, collecting inside ``EVALSHA`` only): an
``EVALSHA`` of ``return 1`` against one of award_exp's and debit_xp's libraries followed by
``return 1``, with a debit's KEYS and ARGV, 200 and then 1,200 calls (and, for scale, 40
closures, and 40 small tables). An ``EVALSHA`` runs the whole text every call, so every library
function is defined again (a closure each) per call; every table a script builds is an
allocation (and later a collection) in Redis. Then the same as Redis Functions (collecting
inside ``FCALL``): a library defining award_exp's or debit_xp's libraries once, at ``FUNCTION
LOAD``, and a function that returns 1, as counters/redis/scripts.py sends scripts to Redis >= 7.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bench.servers import wait_for_ping
from counters.cli.embedded import RedisServer, find_redis_server, free_port
from counters.redis.scripts import script_source
from counters.rules import load_rules, rules_version
from counters.rules.compiled import lua_rules

_STATE = {
    "tier": "pixel_rookie", "anchor": 1764460800, "period_start": 1764460800,
    "period_end": 1767139200, "alloc": 600, "epoch": 1, "next_tier": None,
    "cancel_at_period_end": False, "holds": [],
    "grants": [{"id": "xg_0123456789abcdef01234567", "left": 10000000, "expires_at": None}],
}  # fmt: skip
_TIERS = {
    "free": {"level": 0, "monthly_xp": 0, "rollover": False},
    "pixel_rookie": {"level": 1, "monthly_xp": 600, "rollover": False},
    "arcade_artist": {"level": 2, "monthly_xp": 2000, "rollover": True},
    "game_master": {"level": 3, "monthly_xp": 6000, "rollover": True},
}
_THRESHOLDS_CAPS = ("[0,100,300,600,1000,1500]", "[150,150,300,300,500,500]")  # as passed before
_PIECES = {
    "empty loop": "x = i",
    "XP.encode (the state as stored and ledgered)": "x = XP.encode(s)",
    "XP.decode (the stored state)": "x = XP.decode(ARGV[2])",
    "  of which cjson.decode": "x = cjson.decode(ARGV[2])",
    "  cmsgpack.unpack of the same state instead": "x = cmsgpack.unpack(packed)",
    "  cmsgpack.pack of the state (a second encoding)": "x = cmsgpack.pack(raw)",
    "cjson.decode of the tiers ARGV (before #15 r4)": "x = cjson.decode(ARGV[3])",
    "Rules.rollover + Rules.cost (compiled, after)": (
        "x = Rules.rollover(s.tier); x = Rules.cost('EDIT_IMAGE', s.tier)"
    ),
    "award: decode thresholds + caps, Levels.of x2 (before)": (
        "local t, c = cjson.decode(ARGV[4]), cjson.decode(ARGV[5]); local l = 1; "
        "for j = 1, #t do if 20 >= t[j] then l = j end end; x = c[l]; "
        "for j = 1, #t do if 40 >= t[j] then l = j end end"
    ),
    "award: Rules.level x2 + Rules.cap (compiled, after)": (
        "x = Rules.cap(Rules.level(20)); x = Rules.level(40)"
    ),
}


def _script(body: str) -> str:
    """xp_state.lua and its libraries (as debit_xp.lua gets them), then a loop over ``body``."""
    libraries = script_source("debit_xp", lua_rules(load_rules())).split(
        "\nlocal generation_type", 1
    )[0]
    return (
        f"{libraries}\nXP.c = {{tiers = {{}}}}\nlocal s = XP.decode(ARGV[2])\nlocal x\n"
        "local raw = cjson.decode(ARGV[2])\nlocal packed = cmsgpack.pack(raw)\n"
        f"for i = 1, tonumber(ARGV[1]) do {body} end\nreturn 1\n"
    )


def _script_stats(url: str) -> tuple[float, int]:
    """Microseconds Redis spent in its script commands (FCALL, FCALL_RO, EVALSHA, EVAL) so
    far, and their number of calls."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    usec, calls = 0.0, 0
    for name in ("cmdstat_fcall", "cmdstat_fcall_ro", "cmdstat_evalsha", "cmdstat_eval"):
        usec += float(stats.get(name, {}).get("usec", 0))
        calls += int(stats.get(name, {}).get("calls", 0))
    return usec, calls


def calls(first: int, second: int) -> None:
    """Redis's time in script commands per request of the gain mix and the debit, as served."""
    from bench.instructions import serve_on  # its harness; imported here: it loads the app

    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
    ):
        for scenario in ("mix", "debit"):
            serve_on(server.url, scenario, 0, {})  # the scripts loaded (NOSCRIPT counts calls)
            spent: list[tuple[float, int]] = []
            for count in (first, second):
                usec, number = _script_stats(server.url)
                serve_on(server.url, scenario, count, {})
                after_usec, after_number = _script_stats(server.url)
                spent.append((after_usec - usec, after_number - number))
            usec = spent[1][0] - spent[0][0]
            number = spent[1][1] - spent[0][1]
            per_request = usec / (second - first)
            print(
                f"{scenario:6} {per_request:6.1f} us/request in script commands, "
                f"{usec / number:5.1f} us/call, {number / (second - first):.2f} calls/request"
            )


def _callgrind_redis(toggle: str, work: Callable[[redis.Redis], None]) -> int:
    """Instructions callgrind counted inside Redis's ``toggle`` function (``evalShaCommand``,
    ``fcallCommand``) while ``work`` ran against a redis-server of its own under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
            f"--toggle-collect={toggle}", str(find_redis_server()), "--bind", "127.0.0.1",
            "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp,
        ]  # fmt: skip
        with open(f"{tmp}/log", "w+") as log:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            client = redis.Redis(port=port, socket_timeout=120)
            try:
                wait_for_ping(client, proc, 60)
                work(client)
                with contextlib.suppress(redis.ConnectionError):
                    client.shutdown(nosave=True)
            finally:
                client.close()
                proc.wait(timeout=60)
            log.seek(0)
            found = re.search(r"Collected\s*:\s*(\d+)", log.read())
    if found is None:
        raise SystemExit("valgrind run of redis-server failed")
    return int(found.group(1))


def _count_evalsha(body: str, calls: int, *, function: bool = False) -> int:
    """Instructions callgrind counted inside ``EVALSHA`` over ``calls`` calls of ``body``; with
    ``function``, inside ``FCALL`` of a function of a library (``body``, loaded once) instead."""

    def work(client: redis.Redis) -> None:
        target = client.function_load(body) if function else client.script_load(body)
        verb = "FCALL" if function else "EVALSHA"
        pipe = client.pipeline(transaction=False)
        for _ in range(calls):
            pipe.execute_command(verb, target, len(_DEBIT_KEYS), *_DEBIT_KEYS, *_DEBIT_ARGV)
        pipe.execute()

    return _callgrind_redis("fcallCommand" if function else "evalShaCommand", work)


_DEBIT_KEYS = ("k:user", "k:events", "k:idem", "k:meta", "k:tx")
_DEBIT_ARGV = ("u1", "1764460800000", "", "86400", "", "service:0", "1", "v", "EDIT_IMAGE",
               "xd_1", "debit", "1764464400", "100", "2592000")  # fmt: skip


def defs() -> None:
    """Instructions per call of running award_exp's and debit_xp's libraries (no work), and
    of 40 closures and 40 tables."""
    library = lua_rules(load_rules())
    closures = "\n".join(f"function t.f{i}() return {i} end" for i in range(40))
    tables = "\n".join(f"t[{i}] = {{x = 1, y = 2, z = 3}}" for i in range(40))
    bodies = {
        "return 1": "return 1",
        "40 closures, then return 1": f"local t = {{}}\n{closures}\nreturn 1",
        "40 tables of 3 fields, then return 1": f"local t = {{}}\n{tables}\nreturn 1",
    }
    functions: dict[str, str] = {}
    for name, cut in (
        ("award_exp", "\nreturn Award.apply()"),
        ("debit_xp", "\nlocal generation_type"),
    ):
        libraries = script_source(name, library).split(cut, 1)[0]
        bodies[f"{name}'s libraries, then return 1"] = libraries + "\nreturn 1"
        functions[f"FCALL: {name}'s libraries loaded once, return 1"] = (
            f"#!lua name=probe\n{libraries}\n"
            "redis.register_function('probe', function(keys, args) return 1 end)"
        )
    functions["FCALL: return 1"] = (
        "#!lua name=probe\nredis.register_function('probe', function(keys, args) return 1 end)"
    )
    for name, body in [*bodies.items(), *functions.items()]:
        function = name in functions
        per = (
            _count_evalsha(body, 1_200, function=function)
            - _count_evalsha(body, 200, function=function)
        ) / 1_000
        print(f"{name:48} {per:9,.0f} instructions/call")


# The debit's steps, each cut running the ones before it (debit_xp.lua's own text, shortened).
_OPEN = "local early = XP.open() if early then return early end local s = XP.s "
_COST = "local cost = Rules.cost(generation_type, s.tier) "
_BURN = _COST + "local parts = XP.burn(cost) "
_EMIT = _BURN + "local state = XP.emit('xp_debit', generation_type, -cost, transaction_id) "
_FINISH = "return XP.finish(1, cost, transaction_id, 0, cost, state)"
_READ = "local user = redis.call('HMGET', KEYS[1], 'xp', 'seq') "
_STEPS = {
    "the loop alone (a transaction id and key a debit)": "return 1",
    "+ the user's hash read (HMGET)": _READ + "return 1",
    "+ its state decoded by cjson": _READ + "local raw = cjson.decode(user[1]) return 1",
    "+ XP.open instead (rules, replay, decode, advance)": _OPEN + "return 1",
    "+ the cost, balance checks": (
        _OPEN + _COST + "if XP.balance(s) < cost then return 2 end return 1"
    ),
    "+ the burn": _OPEN + _BURN + "return 1",
    "+ the state encoded once": _OPEN + _BURN + "local state = XP.encode(s) return 1",
    "+ the ledger event instead (XP.emit: encode, XADD)": _OPEN + _EMIT + "return 1",
    "+ the state written back, the reply": _OPEN + _EMIT + _FINISH,
    "+ the record's text": (
        _OPEN
        + _EMIT
        + "local t = XP.record_text(mode, 'debited', cost, generation_type, parts) "
        + _FINISH
    ),
    "the whole debit (+ the record SET and ledgered)": None,
}


def prepare_debits(client: redis.Redis, state: str) -> None:
    """The user ``step_scripts``' debits charge (``_DEBIT_KEYS``): its hash with XP state
    ``state`` and seq 1, and its bucket's meta hash (a run, complete)."""
    client.hset(_DEBIT_KEYS[0], mapping={"xp": state, "seq": 1})
    client.hset(_DEBIT_KEYS[3], mapping={"run": "1", "complete": "1"})


def _count_debits(script: str, argv: tuple[str, ...], state: str, loops: int) -> int:
    """Instructions callgrind counted inside one ``EVALSHA`` of ``script`` running ``loops``
    debits on a user whose XP state is ``state``."""

    def work(client: redis.Redis) -> None:
        prepare_debits(client, state)
        keys = _DEBIT_KEYS
        client.evalsha(client.script_load(script), len(keys), *keys, *argv, loops)

    return _callgrind_redis("evalShaCommand", work)


def step_scripts() -> tuple[tuple[str, ...], str, dict[str, str]]:
    """What ``steps`` runs: the debits' ARGV (the loop count goes after it, as ARGV[15]), the
    user's XP state (JSON, as stored), and each cut's script (KEYS: ``_DEBIT_KEYS``, set up
    by ``prepare_debits`` before it runs)."""
    rules = load_rules()
    source = script_source("debit_xp", lua_rules(rules))
    libraries, body = source.split("\nlocal generation_type", 1)
    header, whole = body.split("\nlocal early", 1)
    header, whole = "local generation_type" + header, "local early" + whole
    argv = (*_DEBIT_ARGV[:6], "0", rules_version(rules), *_DEBIT_ARGV[8:])
    scripts = {
        name: f"{libraries}\nlocal function debit()\n{header}\n{step or whole}\nend\n"
        "for i = 1, tonumber(ARGV[15]) do\n"
        "  ARGV[10] = 'xd_' .. i; KEYS[5] = 'k:tx:' .. i; debit()\nend\nreturn 1\n"
        for name, step in _STEPS.items()
    }
    return argv, json.dumps(_STATE, separators=(",", ":")), scripts


def steps(first: int, second: int) -> None:
    """Instructions per debit of each cut of debit_xp.lua (``_STEPS``) in an ``EVALSHA`` loop:
    the count at ``second`` loops less the count at ``first``, over the difference."""
    argv, state, scripts = step_scripts()
    before = 0.0
    for name, script in scripts.items():
        counts = [_count_debits(script, argv, state, loops) for loops in (first, second)]
        per = (counts[1] - counts[0]) / (second - first)
        print(f"{name:52} {per:9,.0f} instructions  ({per - before:+9,.0f})", flush=True)
        before = per


def main() -> None:
    if sys.argv[1:2] == ["steps"]:
        rest = [int(arg) for arg in sys.argv[2:4]]
        steps(*(rest if len(rest) == 2 else [200, 1_200]))
        return
    if sys.argv[1:2] == ["defs"]:
        defs()
        return
    if sys.argv[1:2] == ["calls"]:
        rest = [int(arg) for arg in sys.argv[2:4]]
        calls(*(rest if len(rest) == 2 else [1_000, 4_000]))
        return
    loops = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    state, tiers = json.dumps(_STATE), json.dumps(_TIERS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis", persistent=False) as server,
    ):
        client = redis.Redis.from_url(server.url)
        try:
            costs: dict[str, float] = {}
            for name, body in _PIECES.items():
                script = _script(body)
                best = float("inf")
                for _ in range(3):  # the least of three: other work on the machine only adds
                    began = time.perf_counter()
                    client.eval(script, 0, loops, state, tiers, *_THRESHOLDS_CAPS)
                    best = min(best, (time.perf_counter() - began) / loops * 1e6)
                costs[name] = best
        finally:
            client.close()
    empty = costs.pop("empty loop")
    for name, us in costs.items():
        print(f"{name:48} {us - empty:6.2f} us")


if __name__ == "__main__":
    main()
