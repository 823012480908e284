"""The rules file: levels, actions, daily caps (and the XP tables), validated once at start.

Rules are data. They ship as ``default_rules.toml`` (the seed's tables) and ``COUNTERS_RULES``
points at another file. Every error names the entry that is wrong.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from counters.errors import RulesError
from counters.ids import Name
from counters.rules.engage import (
    EntitlementRules,
    WebhookRules,
    validate_entitlements,
    validate_webhooks,
)
from counters.rules.xp import (
    GenerationCost,
    PositiveInt,
    XpRules,
    default_xp_rules,
    validate_xp_rules,
)

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class _Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Level(_Rule, frozen=True):
    level: PositiveInt
    name: str
    unlock: str
    exp_required: NonNegativeInt


class DailyCap(_Rule, frozen=True):
    min_level: PositiveInt
    max_level: PositiveInt
    cap: PositiveInt
    shadow: bool = False  # counted (metric, ``shadow_refused``) but not enforced


class Action(_Rule, frozen=True):
    exp: PositiveInt
    daily_limit: PositiveInt | None = None
    awards: Literal["actor", "creator"] = "actor"
    user_may_trigger: bool = True
    target_types: tuple[Name, ...] = ()
    records_ownership: bool = False
    once_per_actor: bool = False
    shadow: bool = False  # the daily_limit is counted (metric, ``shadow_refused``), not enforced


class ExpRules(_Rule, frozen=True, dict=True):
    levels: tuple[Level, ...]
    daily_caps: tuple[DailyCap, ...]
    actions: dict[Name, Action]
    liker_memory_days: PositiveInt = 30

    @cached_property
    def thresholds(self) -> tuple[int, ...]:
        """EXP needed for level 1, 2, ... in order."""
        return tuple(level.exp_required for level in self.levels)

    @cached_property
    def cap_rule_by_level(self) -> tuple[DailyCap, ...]:
        """The daily cap entry of level 1, 2, ... in order."""
        by_level: dict[int, DailyCap] = {}
        for cap in self.daily_caps:
            for number in range(cap.min_level, cap.max_level + 1):
                by_level[number] = cap
        return tuple(by_level[level.level] for level in self.levels)

    @cached_property
    def caps_by_level(self) -> tuple[int, ...]:
        """The daily EXP cap of level 1, 2, ... in order."""
        return tuple(cap.cap for cap in self.cap_rule_by_level)

    @cached_property
    def shadow_caps_by_level(self) -> tuple[bool, ...]:
        """Whether the daily cap of level 1, 2, ... is in shadow mode (watched, not enforced)."""
        return tuple(cap.shadow for cap in self.cap_rule_by_level)

    def level_for(self, total_exp: int) -> int:
        """The level a total EXP reaches."""
        level = 1
        for number, required in enumerate(self.thresholds, start=1):
            if total_exp >= required:
                level = number
        return level

    def cap_for(self, level: int) -> int:
        """The daily EXP cap of a level."""
        return self.caps_by_level[level - 1]


class Rules(_Rule, frozen=True):
    exp: ExpRules
    xp: XpRules = msgspec.field(default_factory=default_xp_rules)  # none given: the shipped tables
    entitlements: EntitlementRules = msgspec.field(default_factory=EntitlementRules)
    webhooks: WebhookRules = msgspec.field(default_factory=WebhookRules)


def _check_exp(exp: ExpRules) -> None:
    if not exp.levels:
        raise RulesError("exp.levels: at least one level is required")
    for index, level in enumerate(exp.levels):
        where = f"exp.levels[{index}]"
        if level.level != index + 1:
            raise RulesError(f"{where}: levels must be numbered 1, 2, ... in order")
        if index == 0 and level.exp_required != 0:
            raise RulesError(f"{where}: level 1 must require 0 EXP")
        if index > 0 and level.exp_required <= exp.levels[index - 1].exp_required:
            raise RulesError(f"{where}: exp_required must grow with each level")
    covered: dict[int, int] = {}
    for index, cap in enumerate(exp.daily_caps):
        where = f"exp.daily_caps[{index}]"
        if cap.min_level > cap.max_level or cap.max_level > len(exp.levels):
            raise RulesError(f"{where}: level range {cap.min_level}-{cap.max_level} is invalid")
        for number in range(cap.min_level, cap.max_level + 1):
            if number in covered:
                raise RulesError(f"{where}: level {number} already has a cap")
            covered[number] = cap.cap
    missing = [level.level for level in exp.levels if level.level not in covered]
    if missing:
        raise RulesError(f"exp.daily_caps: no cap for level(s) {missing}")
    for name, action in exp.actions.items():
        where = f"exp.actions.{name}"
        if action.awards == "creator" and not action.target_types:
            raise RulesError(f"{where}: a creator-awarded action needs target_types")
        if action.records_ownership and action.awards == "creator":
            raise RulesError(f"{where}: records_ownership applies to actor-awarded actions")
        if action.once_per_actor and action.awards != "creator":
            raise RulesError(f"{where}: once_per_actor applies to creator-awarded actions")


# Tables keyed by name: each entry is checked on its own first, so an error names the entry
# (msgspec reports a bad dict value only as ``actions[...]``).
NAMED_TABLES: dict[tuple[str, ...], type[msgspec.Struct]] = {
    ("exp", "actions"): Action,
    ("xp", "costs"): GenerationCost,
}


def _check_named_entries(document: dict[str, Any]) -> None:
    for path, entry_type in NAMED_TABLES.items():
        table: Any = document
        for part in path:
            table = table.get(part, {}) if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            continue
        for name, entry in table.items():
            try:
                msgspec.convert(entry, entry_type)
            except msgspec.ValidationError as exc:
                where = ".".join((*path, str(name)))
                raise RulesError(f"{where}: {exc}") from exc


def parse_rules(text: str, source: str = "rules") -> Rules:
    """Decode and validate a rules document; errors name the bad entry."""
    try:
        document = msgspec.toml.decode(text)
        _check_named_entries(document)
        rules = msgspec.convert(document, Rules)
    except msgspec.ValidationError as exc:
        raise RulesError(f"{source}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc
    except RulesError as exc:
        raise RulesError(f"{source}: {exc}") from exc
    try:
        _check_exp(rules.exp)
        validate_xp_rules(rules.xp)
        validate_entitlements(rules.entitlements, len(rules.exp.levels))
        validate_webhooks(rules.webhooks, {tier.name for tier in rules.xp.tiers})
    except RulesError as exc:
        raise RulesError(f"{source}: {exc}") from exc
    return rules


def check_tiers_kept(served: Iterable[str], rules: Rules) -> None:
    """Raise ``RulesError`` when ``rules`` lack a tier of ``served`` (the tier names this
    deployment served: the running rules', and those recorded in Redis, see
    counters/runtime/reload.py).

    Users' states hold their tier by name; a tier the rules no longer define would read as no
    subscription, and subscribing again would pay a second allocation in the same period. So a
    tier once served stays in the rules: ``retired = true`` stops new subscriptions to it."""
    missing = sorted(set(served) - {tier.name for tier in rules.xp.tiers})
    if missing:
        raise RulesError(
            f"xp.tiers: {', '.join(missing)} removed or renamed, but subscribers may hold it;"
            " keep it and mark it `retired = true` (no new subscriptions, existing ones keep"
            " renewing)"
        )


def rules_text(path: Path | None = None) -> tuple[str, str]:
    """(text, source name) of the rules file at ``path``, or of the shipped defaults.

    A file that cannot be read (missing, a directory, no permission) or is not UTF-8 (TOML 1.0:
    "A TOML file must be a valid UTF-8 encoded Unicode document") raises ``RulesError`` like bad
    TOML does, so every caller (a reload, the file watch, serve, reconcile, import) refuses it
    the same way: a decode error used to escape them all as a traceback (reviewer helper-66)."""
    if path is None:
        resource = importlib.resources.files("counters.rules").joinpath("default_rules.toml")
        return resource.read_text("utf-8"), "default_rules.toml"
    try:
        return path.read_text("utf-8"), str(path)  # one decode of the whole file: exact offsets
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RulesError(
            f"{path}: not valid UTF-8 at byte {exc.start} ({exc.reason}); a TOML file is UTF-8"
        ) from exc


def rules_version(rules: Rules) -> str:
    """The version of a set of rules: 12 hex digits of the SHA-256 of their canonical JSON, so
    a file that changes only in comments or layout keeps its version."""
    return hashlib.sha256(msgspec.json.encode(rules)).hexdigest()[:12]


def load_rules(path: Path | None = None) -> Rules:
    """Load the rules file at ``path``, or the shipped defaults."""
    return parse_rules(*rules_text(path))
