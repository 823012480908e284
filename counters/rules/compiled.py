"""The rules the Lua scripts apply, compiled into Lua source: ``lua/lib/rules`` of one version.

Issue #15: the award and XP scripts used to take the level thresholds, the daily caps, the tiers
and a generation's costs as JSON arguments and decode them on every call (cjson: ~5 us of Redis
per XP call for the tiers alone, ``python -m bench.lua_cost``). Instead, each rules version is
compiled into a small Lua library of functions whose answers are literals (no table is built
and nothing is decoded per call), and every script that requires ``rules`` is sent with it:
one library of functions per rules version on Redis >= 7 (the rules defined once, when Redis
loads it), one script text, hence one SHA, per script and rules version on Redis 6.2
(``counters.redis.scripts``).

How the version is carried: a call to a compiled script names the rules version it was built
with (its ``rules`` argument: ``rules_version``, as ``/readyz`` shows it); ``Scripts`` sends it
to the function (or SHA) of that version's text, and the script refuses, changing nothing, a
call naming another version (``Rules.check``). So a worker never runs a call against rules
other than the ones that built its other arguments (a reward, a limit), whatever reloads happen
between the call's building and its sending, and an old and a new worker share a Redis without
mixing.

Functions (every name and number comes from the validated rules; strings are escaped):

- ``Rules.level(exp)``: the highest level whose ``exp_required`` ``exp`` reaches (``[exp.levels]``);
- ``Rules.cap(level)``: the level's daily EXP cap (``[[exp.daily_caps]]``; one in shadow mode is
  unreachable, 10**12, so the script awards past it and the service reports ``shadow_refused``);
- ``Rules.tier(name)``: ``{level, monthly_xp, rollover}`` of a tier, nil for a name not in the
  rules (``[[xp.tiers]]``); ``Rules.rollover(name)`` whether it rolls over, with no table built
  (each table costs Redis an allocation per call: the debit's burn asks only this);
- ``Rules.cost(generation_type, tier)``: the XP a generation costs on a tier (its override, else
  the base cost), nil when the tier does not allow the type (a gate in shadow mode allows every
  type, at its cost: the service reports ``shadow_refused``) or the type is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from counters.rules import Rules, rules_version

UNREACHABLE = 10**12  # a cap no day reaches: how a cap in shadow mode is compiled


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal: ASCII letters, digits, ``_`` and ``-`` as they are,
    every other byte as a three-digit decimal escape (no name ends or breaks the literal)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if char.isascii() and (char.isalnum() or char in "_-") else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _chain(
    name: str, arg: str, cases: Iterable[tuple[str, str]], otherwise: str, test: str = "=="
) -> list[str]:
    """``function Rules.<name>(<arg>)`` answering the first case whose test holds."""
    lines = [f"function Rules.{name}({arg})"]
    lines += [f"  if {arg} {test} {when} then return {value} end" for when, value in cases]
    return [*lines, f"  return {otherwise}", "end"]


def _runs(values: tuple[int, ...]) -> list[tuple[int, int]]:
    """(last level, value) of each run of equal values, levels numbered from 1."""
    runs: list[tuple[int, int]] = []
    for level, value in enumerate(values, start=1):
        if runs and runs[-1][1] == value:
            runs[-1] = (level, value)
        else:
            runs.append((level, value))
    return runs


def lua_rules(rules: Rules) -> str:
    """The ``rules`` library of ``rules``'s version (see the module's docstring)."""
    version = rules_version(rules)
    exp, xp = rules.exp, rules.xp
    caps = tuple(
        UNREACHABLE if shadow else cap
        for cap, shadow in zip(exp.caps_by_level, exp.shadow_caps_by_level, strict=True)
    )
    levels = [(str(t), str(n)) for n, t in reversed(list(enumerate(exp.thresholds, start=1)))]
    flag: Callable[[bool], str] = lambda value: "true" if value else "false"  # noqa: E731
    tiers = [
        (
            lua_string(t.name),
            f"{{level = {t.level}, monthly_xp = {t.monthly_xp}, rollover = {flag(t.rollover)}}}",
        )
        for t in xp.tiers
    ]
    rollovers = [(lua_string(t.name), "true") for t in xp.tiers if t.rollover]
    lines = [
        f"--[[ rules {version}: compiled by counters/rules/compiled.py from the rules served;",
        "every script that requires it is in one library (or one text each) per rules version. ]]",
        f"local Rules = {{version = {lua_string(version)}}}",
        "",
        "-- Refuse (change nothing) a call built with other rules than these.",
        "function Rules.check(version)",
        "  if version ~= Rules.version then",
        "    return redis.error_reply('RULES the call names rules ' .. tostring(version) ..",
        "      ', the script was compiled with ' .. Rules.version)",
        "  end",
        "end",
        "",
        *_chain("level", "exp", levels, "1", ">="),
        "",
        *_chain("cap", "level", [(str(last), str(cap)) for last, cap in _runs(caps)], "0", "<="),
        "",
        *_chain("tier", "name", tiers, "nil"),
        "",
        *_chain("rollover", "name", rollovers, "false"),
        "",
        "function Rules.cost(generation_type, tier)",
    ]
    for kind in xp.costs:
        allowed = [t for t in xp.tiers if kind in t.allows or t.shadow]
        lines.append(f"  if generation_type == {lua_string(kind)} then")
        lines += [
            f"    if tier == {lua_string(t.name)} then return {xp.cost_for(kind, t)} end"
            for t in allowed
        ]
        lines += ["    return nil", "  end"]
    return "\n".join([*lines, "  return nil", "end", ""])
