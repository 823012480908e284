"""What a load run sends: a mix of weighted operations, built in or read from a small file.

An operation is one of::

    gain:<action>      POST /api/exp/gain (likes and forks go to the population's pre-owned
                       entities, creations name a new entity each)
    debit:<TYPE>       POST /api/v1/xp/debit {"generation_type": TYPE}
    read:limits        GET /api/exp/limits
    read:progress      GET /api/exp/progress
    read:balance       GET /api/v1/xp/balance
    read:levels        GET /api/levels

A mix file (TOML, or JSON with the same shape) names its operations and their weights::

    name = "chat-and-images"
    [weights]
    "gain:daily_chat" = 50
    "debit:EDIT_IMAGE" = 10
    "read:balance" = 5

The built-in mixes are the workloads of ``make bench`` (bench/README.md): ``gain`` (row 2, the
chat server's award mix), ``debit`` (row 3, EDIT_IMAGE), and ``mixed`` (both, plus reads).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from counters.cli.loadtest.population import GAIN_MIX, Award, Population

Weight = Annotated[int, msgspec.Meta(gt=0)]
_OPERATION = re.compile(
    r"^(gain:[a-z][a-z0-9_]*|debit:[A-Z][A-Z0-9_]*|read:(limits|progress|balance|levels))$"
)
_READS = {
    "read:limits": "/api/exp/limits",
    "read:progress": "/api/exp/progress",
    "read:balance": "/api/v1/xp/balance",
    "read:levels": "/api/levels",
}


class MixError(ValueError):
    """A mix file that cannot be used; the message names what is wrong."""


class _MixFile(msgspec.Struct, forbid_unknown_fields=True):
    weights: dict[str, Weight]
    name: str = "custom"


@dataclass(frozen=True, slots=True)
class Mix:
    """Weighted operations (see the module's docstring for their names)."""

    name: str
    weights: tuple[tuple[str, int], ...]

    @property
    def debits(self) -> bool:
        """Whether the mix spends XP (its users need a subscription first)."""
        return any(op.startswith("debit:") for op, _ in self.weights)

    @property
    def creator_awards(self) -> bool:
        """Whether the mix likes or forks (the population's entities need owners first)."""
        return any(op in ("gain:character_liked", "gain:forked") for op, _ in self.weights)


BUILT_IN: dict[str, Mix] = {
    "gain": Mix("gain", tuple((f"gain:{action}", weight) for action, weight in GAIN_MIX)),
    "debit": Mix("debit", (("debit:EDIT_IMAGE", 1),)),
    "mixed": Mix(
        "mixed",
        (
            *((f"gain:{action}", weight) for action, weight in GAIN_MIX),
            ("debit:EDIT_IMAGE", 30),
            ("debit:NEW_IMAGE", 10),
            ("read:limits", 10),
            ("read:balance", 10),
        ),
    ),
}


def load_mix(spec: str) -> Mix:
    """A built-in mix by name, or a mix file (``.toml`` or ``.json``); ``MixError`` otherwise."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    path = Path(spec)
    if not path.is_file():
        raise MixError(f"{spec}: neither a built-in mix ({', '.join(BUILT_IN)}) nor a file")
    try:
        raw = path.read_bytes()
        if path.suffix == ".json":
            parsed = msgspec.json.decode(raw, type=_MixFile)
        else:
            parsed = msgspec.toml.decode(raw, type=_MixFile)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MixError(f"{spec}: {exc}") from exc
    bad = [op for op in parsed.weights if not _OPERATION.match(op)]
    if bad or not parsed.weights:
        raise MixError(f"{spec}: unknown operation(s) {bad or '(none given)'}; see --help")
    return Mix(parsed.name, tuple(parsed.weights.items()))


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a run: the user it acts for, its operation, method, path and body."""

    user: str
    operation: str
    method: str
    path: str
    body: bytes | None


def requests_for(mix: Mix, population: Population, count: int, seed: int = 5) -> list[Request]:
    """``count`` requests of ``mix`` over the population's users, in a seeded order (a run
    cycles through them). Awards keep the bench's shape: one user each, entities by popularity."""
    rng = random.Random(seed)
    operations = rng.choices([op for op, _ in mix.weights], [w for _, w in mix.weights], k=count)
    gain_actions = tuple((op[5:], w) for op, w in mix.weights if op.startswith("gain:"))
    gains = sum(op.startswith("gain:") for op in operations)
    awards: list[Award] = []
    if gains:
        awards = population.gain_awards(gains, seed, mix=gain_actions)
    awards_left = iter(awards)
    out = []
    for op in operations:
        user = population.user(rng.randrange(population.users))
        if op.startswith("gain:"):
            award = next(awards_left)
            # the awards were drawn for actors 0..count-1: fold them onto the population
            actor = population.user(int(award.user_id[len(population.prefix) :]) % population.users)
            body = json.dumps(award.body()).encode()
            out.append(Request(actor, op, "POST", "/api/exp/gain", body))
        elif op.startswith("debit:"):
            body = json.dumps({"generation_type": op[6:]}).encode()
            out.append(Request(user, op, "POST", "/api/v1/xp/debit", body))
        else:
            out.append(Request(user, op, "GET", _READS[op], None))
    return out
