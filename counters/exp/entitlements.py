"""Entitlements: what a user's level allows, from the rules' ``[entitlements]`` grants.

A check is one Redis read of the user's total EXP (``read_exp.lua``; the level follows from the
total and the thresholds). Postgres is touched only in the rare case every read has: a user Redis
lost is hydrated first (``counters.redis.hydration``), so a Redis restart never demotes anyone.
"""

from __future__ import annotations

import msgspec

from counters.errors import NotFound, shown
from counters.redis.calls import ReadExp, UserDayKeys
from counters.redis.hydration import Hydrator, may_create_arg, run_hydrated
from counters.redis.keys import UserKeys
from counters.redis.scripts import Scripts
from counters.rules import ExpRules
from counters.rules.engage import EntitlementRules


class Entitlement(msgspec.Struct, frozen=True, kw_only=True):
    """One feature for one user: allowed or not, how many, and the levels that unlock it.

    ``quantity`` is None for a yes/no feature and 0 for a counted feature not yet allowed;
    ``unlock_level`` is the level it is first allowed at; ``next_level`` the level of the
    user's next grant of it (a higher quantity), None when there is none."""

    feature: str
    allowed: bool
    quantity: int | None
    unlock_level: int
    next_level: int | None


class EntitlementService:
    """Answers "may this user do X, and how much of it" from the user's level."""

    def __init__(
        self,
        rules: EntitlementRules,
        exp_rules: ExpRules,
        scripts: Scripts,
        hydrator: Hydrator,
        *,
        buckets: int,
    ) -> None:
        self.rules = rules
        self._exp_rules = exp_rules
        self._scripts = scripts
        self._hydrator = hydrator
        self._buckets = buckets

    def use_rules(self, rules: EntitlementRules, exp_rules: ExpRules) -> None:
        """Answer from ``rules`` from the next request on (a rules reload)."""
        self.rules, self._exp_rules = rules, exp_rules

    async def level(self, user_id: str) -> int:
        """The user's level: one Redis round trip (hydrated first if Redis lost the user)."""
        user = UserKeys.of(user_id, self._buckets)
        # no day hash: HGETALL of a missing key is {}
        keys = UserDayKeys(user.user, user.unused, user.meta)
        call = ReadExp(may_create=may_create_arg(self._hydrator))
        reply = await run_hydrated(self._hydrator, self._scripts, user_id, keys, call)
        total = reply[1]
        assert isinstance(total, int)
        return self._exp_rules.level_for(total)

    def at_level(self, level: int) -> list[Entitlement]:
        """Every feature of the rules for a user at ``level``, in the rules' order."""
        return [self._entitlement(name, level) for name in self.rules.features]

    def feature_at(self, feature: str, level: int) -> Entitlement:
        """One feature for a user at ``level``; ``NotFound`` listing the known features."""
        if feature not in self.rules.features:
            known = ", ".join(self.rules.features)
            raise NotFound(f"Unknown feature '{shown(feature)}'; known features: {known}")
        return self._entitlement(feature, level)

    def _entitlement(self, feature: str, level: int) -> Entitlement:
        grants = self.rules.features[feature]
        held = self.rules.grant_at(feature, level)
        upcoming = next((g for g in grants if g.level > level), None)
        counted = grants[0].quantity is not None
        quantity = held.quantity if held is not None else (0 if counted else None)
        return Entitlement(
            feature=feature, allowed=held is not None, quantity=quantity,
            unlock_level=grants[0].level, next_level=upcoming.level if upcoming else None,
        )  # fmt: skip
