"""Each Lua script's header against the Python that calls it (counters/redis/calls.py) and decodes
its reply codes (counters/redis/codes.py): a header that drifts from the code fails here.

A header names ``KEYS[i]`` and ``ARGV[i]`` one a line (``ARGV[a..b]  name, name, ...`` for a run
of shared ones) and its reply codes one a line as ``code <n> <name>``; a script's first line
``-- requires: lib, ...`` adds those libraries' codes (lua/lib/xp_state.lua lists the XP codes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

import msgspec
import pytest

import lua
from counters.redis.calls import CALLS, Call, UserWriteKeys, XpCall
from counters.redis.codes import MAX_TOTAL
from counters.redis.scripts import RULES_LIBRARY, script_names
from counters.rules import load_rules
from counters.rules.compiled import lua_rules

_KEY = re.compile(r"^KEYS\[(\d+)\]\s+(\w+)", re.M)
_ARG = re.compile(r"^ARGV\[(\d+)\]\s+(\w+)", re.M)
_ARG_RUN = re.compile(r"^ARGV\[(\d+)\.\.(\d+)\]\s+(.+)$", re.M)
_CODE = re.compile(r"^\s*code\s+(\d+)\s+([a-z_]+)", re.M)
_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$")
# Codes a script body returns literally: `return {n, ...}`, `XP.finish(n, ...)`, and the
# mismatch reply handed to Idempotency.replay(..., {n, ...}).
_LITERALS = (
    re.compile(r"return\s*\{\s*(\d+)\s*[,}]"),
    re.compile(r"finish\(\s*(\d+)\s*,"),
    re.compile(r"replay\([^{]*\{\s*(\d+)\s*,"),
)


@dataclass
class Header:
    keys: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    codes: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _lib(name: str) -> str:
    """A library's text; ``rules`` is compiled from the shipped rules (not a file)."""
    if name == RULES_LIBRARY:
        return lua_rules(load_rules())
    return lua.library(name)


def split(text: str) -> tuple[str, str]:
    """(the header block comment, the body after it); a file without one is all body."""
    if "--[[" not in text:
        return "", text
    start, end = text.index("--[["), text.index("]]")
    return text[start:end], text[end + 2 :]


def requires(text: str) -> list[str]:
    match = _REQUIRES.match(text.split("\n", 1)[0])
    return [] if match is None else [n.strip() for n in match.group(1).split(",") if n.strip()]


def _numbered(pairs: list[tuple[int, str]], what: str, header: Header) -> list[str]:
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        header.problems.append(f"{what} indexes {[i for i, _ in pairs]} are not 1..n")
    return [name for _, name in pairs]


def parse(text: str) -> Header:
    """The KEYS, ARGV and reply codes a header declares."""
    block, _ = split(text)
    header = Header()
    header.keys = _numbered([(int(i), n) for i, n in _KEY.findall(block)], "KEYS", header)
    args = [(int(i), n) for i, n in _ARG.findall(block)]
    for first, last, names in _ARG_RUN.findall(block):
        listed = [re.sub(r"\(.*?\)", "", n).strip() for n in names.split(",")]
        if len(listed) != int(last) - int(first) + 1:
            header.problems.append(f"ARGV[{first}..{last}] lists {len(listed)} names")
        args += [(int(first) + k, name) for k, name in enumerate(listed)]
    header.args = _numbered(args, "ARGV", header)
    for number, name in _CODE.findall(block):
        if header.codes.setdefault(int(number), name) != name:
            header.problems.append(f"code {number} is listed twice")
    return header


def family(call: type[Call]) -> dict[int, str]:
    """The reply codes Python decodes for ``call``: value -> lower-cased member name."""
    codes: dict[int, str] = {}
    for enum in call.CODES:
        for member in enum:
            assert member.value not in codes, f"{call.SCRIPT}: code {member.value} twice"
            codes[member.value] = member.name.lower()
    return codes


def fields(struct: type[msgspec.Struct]) -> list[str]:
    return list(struct.__struct_fields__)


def drift(call: type[Call], text: str) -> list[str]:
    """Every way the script ``text`` disagrees with its call type; empty when they agree."""
    header = parse(text)
    problems = [f"{call.SCRIPT}: {p}" for p in header.problems]
    if header.keys != fields(call.KEYS):
        problems.append(f"{call.SCRIPT}: KEYS {header.keys} != {fields(call.KEYS)}")
    if header.args != fields(call):
        problems.append(f"{call.SCRIPT}: ARGV {header.args} != {fields(call)}")
    expected = family(call)
    declared = dict(header.codes)
    bodies = [split(text)[1]]
    for lib in requires(text):
        lib_text = _lib(lib)
        declared.update(parse(lib_text).codes)
        bodies.append(split(lib_text)[1])
    for number, name in header.codes.items():
        if expected.get(number) != name:
            problems.append(f"{call.SCRIPT}: code {number} {name} is not in {call.CODES}")
    if declared != expected:
        problems.append(f"{call.SCRIPT}: header codes {declared} != Python's {expected}")
    for body in bodies:
        for pattern in _LITERALS:
            for number in pattern.findall(body):
                if int(number) not in expected:
                    problems.append(f"{call.SCRIPT}: returns code {number}, undeclared")
    return problems


def test_every_script_has_one_call_type() -> None:
    assert sorted(call.SCRIPT for call in CALLS) == script_names()


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.SCRIPT)
def test_the_header_matches_the_call(call: type[Call]) -> None:
    assert drift(call, lua.source(call.SCRIPT)) == []


def test_the_xp_library_header_matches_the_shared_call() -> None:
    header = parse(_lib("xp_state"))
    assert header.problems == []
    assert header.keys == fields(UserWriteKeys)
    assert header.args == fields(XpCall)
    assert header.codes == family(XpCall)


def _mutations(text: str) -> list[str]:
    """The same script with one thing drifted each: swapped ARGV, a renamed or dropped code,
    an extra key, a literal code nobody declared."""
    argv = _ARG.findall(split(text)[0])
    (_, first), (_, second) = argv[0], argv[1]
    swapped = text.replace(f"ARGV[1]  {first} ", f"ARGV[1]  {second} ", 1).replace(
        f"ARGV[2]  {second} ", f"ARGV[2]  {first} ", 1
    )
    code_line = _CODE.search(text)
    assert code_line is not None
    renamed = text.replace(code_line.group(0), code_line.group(0) + "x", 1)
    dropped = text.replace(code_line.group(0), "", 1)
    last_key = _KEY.findall(text)[-1]
    extra_key = re.sub(
        rf"^(KEYS\[{last_key[0]}\].*)$", rf"\1\nKEYS[{int(last_key[0]) + 1}]  extra  STRING", text,
        count=1, flags=re.M,
    )  # fmt: skip
    undeclared = text + "\nreturn {99, 0}\n"
    return [swapped, renamed, dropped, extra_key, undeclared]


def test_the_comparison_catches_a_drifted_header() -> None:
    award = next(call for call in CALLS if call.SCRIPT == "award_exp")
    text = lua.source("award_exp")
    assert drift(award, text) == []
    for mutated in _mutations(text):
        assert mutated != text
        assert drift(award, mutated), mutated[:200]


def test_a_python_code_missing_from_the_header_is_caught() -> None:
    class Extra(IntEnum):
        EXTRA = 42

    class Drifted(Call, frozen=True):
        SCRIPT = "assign_entity"
        KEYS = next(c for c in CALLS if c.SCRIPT == "assign_entity").KEYS
        CODES = (*next(c for c in CALLS if c.SCRIPT == "assign_entity").CODES, Extra)

        owner_id: str
        mode: str
        ledger: str
        target: str

    assert drift(Drifted, lua.source("assign_entity"))


def test_the_scripts_bound_totals_where_python_says() -> None:
    """lua/lib/bounds.lua's MAX is counters.redis.codes.MAX_TOTAL (the README's maximum)."""
    found = re.search(r"local Bounds = \{MAX = (\d+)\}", _lib("bounds"))
    assert found is not None and int(found.group(1)) == MAX_TOTAL
