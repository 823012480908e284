"""What the EXP service takes and answers: outcomes, results, and one award's script call.

The per-award types are msgspec Structs rather than frozen dataclasses: one is built for every
award on the hot path, and a 14-field frozen dataclass costs 6.2 us to build, a Struct 1.7 us.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from counters.auth import Principal
from counters.exp.entities import Target
from counters.redis.calls import AwardExp, AwardExpKeys
from counters.redis.codes import AwardOutcome
from counters.redis.idempotency import Idempotency
from counters.rules import Action


class AwardResult(msgspec.Struct, frozen=True, gc=False):
    """An award's outcome and the user's numbers as the script saw them when it decided.

    A refusal at the daily limit may be one a worker held (ExpService, "Refusals held
    locally"): its numbers (``total_exp``, ``level``, ``daily_exp_gained``) are those of the
    first refusal today, not read again; the seed's 429 body shows none of them."""

    outcome: AwardOutcome
    awarded_to: str
    action: str
    exp_added: int
    total_exp: int
    level: int
    previous_level: int
    daily_exp_gained: int
    daily_exp_cap: int
    action_count: int
    action_limit: int | None
    actor: str
    target: Target | None
    replayed: bool
    # A rule in shadow mode that would have refused this award: "daily_limit" or "daily_cap".
    shadow_refused: str | None = None
    # A replay of a record that keeps it: the unix ms the first answer was decided at (a 429's
    # wait counts to the midnight after it: api/routes/exp.py award_reply); else 0.
    decided_ms: int = 0

    @property
    def leveled_up(self) -> bool:
        return self.level > self.previous_level


class AwardRequest(NamedTuple):
    """One award of a batch: the arguments of ``ExpService.award``."""

    principal: Principal
    action_name: str
    target: Target | None
    idem: Idempotency | None


class AwardCall(msgspec.Struct, frozen=True, gc=False):
    """One checked award's script call: run on its own, or pipelined with others."""

    action_name: str
    action: Action
    user_id: str  # who receives the EXP
    actor: str
    target: Target | None
    keys: AwardExpKeys
    call: AwardExp


@dataclass(frozen=True, slots=True)
class DailyUsage:
    user_id: str
    total_exp: int
    level: int
    daily_exp_gained: int
    daily_exp_cap: int
    daily_action_counts: dict[str, int]

    @property
    def remaining_exp(self) -> int:
        return max(self.daily_exp_cap - self.daily_exp_gained, 0)


@dataclass(frozen=True, slots=True)
class Adjustment:
    user_id: str
    applied_delta: int
    total_exp: int
    level: int
    previous_level: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class DayWindow:
    day: str  # the UTC day in the key, YYYYMMDD
    # Seconds the day's key lives from now (to the next midnight + grace + jitter, by the
    # service's clock). Scripts take a TTL, not an EXPIREAT: Redis's clock may differ from the
    # service's (or a test's), and an EXPIREAT in Redis's past would delete the key at once.
    ttl: int
