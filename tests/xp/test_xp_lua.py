"""lua/lib/xp_state.lua alone: how scripts get it; its calendar arithmetic against Python."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import redis

import lua
from counters.redis.scripts import script_names, script_source
from counters.rules import load_rules
from counters.rules.compiled import lua_rules

LIBRARY = lua.library("xp_state")
XP_SCRIPTS = {
    "capture_hold",
    "cancel_subscription",
    "debit_xp",
    "grant_xp",
    "read_xp",
    "refund_xp",
    "release_hold",
    "set_subscription",
}


def add_months(when: datetime, k: int) -> datetime:
    """The Python model: k calendar months later, the day clamped to the month's length."""
    month0 = when.month - 1 + k
    year, month = when.year + month0 // 12, month0 % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def test_xp_scripts_get_the_library_and_others_do_not() -> None:
    names = set(script_names())
    assert names >= XP_SCRIPTS
    assert "xp_state" not in names  # lua/lib/ holds libraries, not scripts
    for name in XP_SCRIPTS:
        source = script_source(name, lua_rules(load_rules()))
        # Dependencies first, each once: entry (required by bucket), bucket (by records),
        # records (by idempotency), idempotency (by xp_state), xp_state, the script.
        assert source.startswith("--[[ lib/entry")
        assert source.index("local Entry = {}") < source.index("local Bucket = {}")
        assert source.index("local Bucket = {}") < source.index("local Records = {}")
        assert source.index("local Records = {}") < source.index("local Idempotency = {}")
        assert source.count("local Bucket = {}") == 1
        assert source.count("local Idempotency = {}") == 1
        assert source.index("local Idempotency = {}") < source.index("--[[ lib/xp_state")
        assert f"-- requires: xp_state\n--[[ {name}:" in source
    award = script_source("award_exp", lua_rules(load_rules()))
    assert "XP.open" not in award
    assert "local Rules = {" in award


def test_add_months_matches_python(redis_client: redis.Redis) -> None:
    start = datetime(1999, 12, 1, 7, 30, 15, tzinfo=UTC)
    cases = [(start + timedelta(days=d), k) for d in range(0, 3 * 366, 1) for k in (1, 2, 12, 13)]
    cases += [(datetime(1969, 12, 31, tzinfo=UTC), 2), (datetime(2100, 1, 31, tzinfo=UTC), 1)]
    args = [str(int(v)) for when, k in cases for v in (when.timestamp(), k)]
    probe = """
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = XP.add_months(tonumber(ARGV[i]), tonumber(ARGV[i + 1])) end
return out
"""
    script = LIBRARY + probe
    got = redis_client.eval(script, 0, *args)
    expected = [int(add_months(when, k).timestamp()) for when, k in cases]
    assert got == expected


def test_period_of_finds_the_period_holding_a_time(redis_client: redis.Redis) -> None:
    anchor = datetime(2024, 1, 31, 12, tzinfo=UTC)
    probes = [
        (anchor, 0),
        (datetime(2024, 2, 29, 11, 59, 59, tzinfo=UTC), 0),
        (datetime(2024, 2, 29, 12, tzinfo=UTC), 1),
        (datetime(2024, 3, 31, 11, tzinfo=UTC), 1),
        (datetime(2024, 3, 31, 12, tzinfo=UTC), 2),
        (datetime(2034, 1, 31, 12, tzinfo=UTC), 120),
        (datetime(2034, 1, 31, 11, tzinfo=UTC), 119),
    ]
    probe = "return XP.period_of(tonumber(ARGV[1]), tonumber(ARGV[2]))"
    script = LIBRARY + probe
    for when, k in probes:
        assert redis_client.eval(script, 0, int(anchor.timestamp()), int(when.timestamp())) == k
