"""The ``[entitlements]`` and ``[webhooks]`` parts of the rules file (issue #14).

Entitlements: what each level unlocks, as data. The seed prints each level's unlocks as one
text (``/api/levels`` keeps it exactly); here the same unlocks are features a service can ask
about. A feature may have several grants: ``paid_characters`` is 1 at level 3 and 2 at level 4;
a user holds the grant of the highest level they reached.

Webhooks: the XP balance below which ``xp_low_balance`` fires, per subscription tier.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import msgspec

from counters.errors import RulesError
from counters.ids import Name as Feature
from counters.rules.xp import PositiveInt


class _Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Grant(_Rule, frozen=True):
    """``feature`` is allowed from ``level`` on, ``quantity`` of it where the seed gives one."""

    feature: Feature
    level: PositiveInt
    quantity: PositiveInt | None = None


class EntitlementRules(_Rule, frozen=True, dict=True):
    grants: tuple[Grant, ...] = ()

    @cached_property
    def features(self) -> dict[str, tuple[Grant, ...]]:
        """Each feature's grants, lowest level first, in the order features first appear."""
        by_feature: dict[str, list[Grant]] = {}
        for grant in self.grants:
            by_feature.setdefault(grant.feature, []).append(grant)
        return {name: tuple(sorted(g, key=lambda x: x.level)) for name, g in by_feature.items()}

    def grant_at(self, feature: str, level: int) -> Grant | None:
        """The grant of ``feature`` a user at ``level`` holds (None: not allowed yet)."""
        held = None
        for grant in self.features.get(feature, ()):
            if grant.level <= level:
                held = grant
        return held

    def unlocked_between(self, before: int, after: int) -> list[str]:
        """Features gained (or raised in quantity) by going from level ``before`` to ``after``."""
        return [
            name
            for name, grants in self.features.items()
            if any(before < grant.level <= after for grant in grants)
        ]


class WebhookRules(_Rule, frozen=True):
    # tier name -> XP balance; xp_low_balance fires when a change takes the balance below it.
    low_balance: dict[str, PositiveInt] = {}


def validate_entitlements(rules: EntitlementRules, levels: int) -> None:
    """Grants name levels that exist; a feature's grants rise with the level, quantities with it."""
    for index, grant in enumerate(rules.grants):
        if grant.level > levels:
            where = f"entitlements.grants[{index}]"
            raise RulesError(f"{where}: level {grant.level} does not exist (1-{levels})")
    for name, grants in rules.features.items():
        where = f"entitlements.grants ({name})"
        if len({g.level for g in grants}) != len(grants):
            raise RulesError(f"{where}: two grants at the same level")
        if len({g.quantity is None for g in grants}) > 1:
            raise RulesError(f"{where}: give a quantity on every grant of a feature, or none")
        quantities = [g.quantity or 0 for g in grants]
        if any(lower >= higher for lower, higher in itertools.pairwise(quantities)):
            raise RulesError(f"{where}: a later grant must raise the quantity")


def validate_webhooks(rules: WebhookRules, tiers: set[str]) -> None:
    """Every low-balance threshold names a tier of ``[xp]``."""
    unknown = sorted(set(rules.low_balance) - tiers)
    if unknown:
        raise RulesError(f"webhooks.low_balance: unknown tier(s) {', '.join(unknown)}")
