"""What pieces of the XP scripts cost inside Redis, measured as loops in one EVAL.

``python -m bench.lua_cost [loops]``: on a throwaway Redis, one EVAL per piece runs it ``loops``
times (default 20,000) over a typical debit's state (a subscribed user with one top-up, no
holds) with ``lua/lib/xp_state.lua`` loaded as the scripts load it; prints the microseconds per
run, less the empty loop's. A whole debit's EVALSHA costs Redis ~50-100 µs on the 2-vCPU VM
(``INFO commandstats``), too noisy under other load to show a few µs; a loop inside one EVAL is
not (issue #15: one ``XP.encode`` per debit instead of two). Reported, never asserted.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import redis

from counters.cli.embedded import RedisServer
from counters.redis.scripts import script_source

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
_PIECES = {
    "empty loop": "x = i",
    "XP.encode (the state as stored and ledgered)": "x = XP.encode(s)",
    "XP.decode (the stored state)": "x = XP.decode(ARGV[2])",
    "cjson.decode of the tiers ARGV": "x = cjson.decode(ARGV[3])",
}


def _script(body: str) -> str:
    """xp_state.lua and its libraries (as debit_xp.lua gets them), then a loop over ``body``."""
    libraries = script_source("debit_xp").split("\nlocal generation_type", 1)[0]
    return (
        f"{libraries}\nXP.c = {{tiers = {{}}}}\nlocal s = XP.decode(ARGV[2])\nlocal x\n"
        f"for i = 1, tonumber(ARGV[1]) do {body} end\nreturn 1\n"
    )


def main() -> None:
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
                    client.eval(script, 0, loops, state, tiers)
                    best = min(best, (time.perf_counter() - began) / loops * 1e6)
                costs[name] = best
        finally:
            client.close()
    empty = costs.pop("empty loop")
    for name, us in costs.items():
        print(f"{name:48} {us - empty:6.2f} us")


if __name__ == "__main__":
    main()
