"""What the service answers, as typed, immutable results (msgspec Structs).

Fields are the service's (the seeds' names); a field the service adds later is ignored, so an
older client keeps working against a newer service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict

import msgspec


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Progress(_Result, frozen=True):
    current_level: int
    level_name: str
    total_exp: int
    current_level_exp: int
    exp_needed_for_next: int
    exp_to_next_level: int
    progress_percentage: float
    is_max_level: bool


class Award(_Result, frozen=True):
    """POST /api/exp/gain: the seed's success body."""

    awarded_to: str
    action: str
    success: bool
    exp_added: int
    total_exp: int
    level: int
    leveled_up: bool
    daily_exp_gained: int
    daily_exp_cap: int
    action_count: int
    action_limit: int | None
    progress: Progress


class UserProgress(_Result, frozen=True):
    user_id: str
    total_exp: int
    level: int
    progress: Progress


class Limits(_Result, frozen=True):
    level: int
    daily_exp_gained: int
    daily_exp_cap: int
    remaining_exp: int
    daily_action_counts: dict[str, int]
    action_limits: dict[str, int | None]
    exp_rewards: dict[str, int]


class TierInfo(_Result, frozen=True):
    tier_name: str
    tier_display_name: str
    tier_level: int


class RecommendedTier(TierInfo, frozen=True):
    monthly_xp_allocation: int
    monthly_price_aud: int | float


class XpCheck(_Result, frozen=True):
    """The seed's check-xp body (``guidance`` only when asked for)."""

    has_sufficient_xp: bool
    xp_balance: int
    xp_required: int
    xp_deficit: int
    message: str
    subscription_url: str
    current_tier: TierInfo | None
    recommended_tier: RecommendedTier | None
    guidance: str | None = None


class XpCheckDict(TypedDict):
    """``check_xp_availability``'s answer: the seed's dict (its middleware reads it as one)."""

    has_sufficient_xp: bool
    xp_balance: int
    xp_required: int
    xp_deficit: int
    message: str
    guidance: NotRequired[str]
    subscription_url: str
    current_tier: dict[str, Any] | None
    recommended_tier: dict[str, Any] | None
    code: NotRequired[str]  # only on the fallback: why ("unavailable", "not_found", ...)


class Debit(_Result, frozen=True):
    transaction_id: str
    xp_debited: int
    xp_balance: int


class Hold(_Result, frozen=True):
    hold_id: str
    xp_held: int
    xp_balance: int
    expires_at: datetime


class Capture(_Result, frozen=True):
    hold_id: str
    transaction_id: str
    xp_captured: int
    xp_released: int
    xp_balance: int


class Release(_Result, frozen=True):
    hold_id: str
    xp_released: int
    xp_balance: int


class Refund(_Result, frozen=True):
    transaction_id: str
    xp_refunded: int
    xp_debited: int
    xp_balance: int


class Grant(_Result, frozen=True):
    grant_id: str
    user_id: str
    xp_granted: int
    xp_balance: int
    expires_at: datetime | None


class Subscription(_Result, frozen=True):
    user_id: str
    change: str
    current_tier: TierInfo | None
    next_tier: TierInfo | None
    cancel_at_period_end: bool
    xp_allocation: int
    xp_balance: int


class Balance(_Result, frozen=True):
    user_id: str
    xp_balance: int
    xp_allocation: int
    xp_topup: int
    xp_held: int
    current_tier: TierInfo | None
    subscription_url: str


class Tier(_Result, frozen=True):
    tier_name: str
    tier_display_name: str
    tier_level: int
    monthly_price_aud: int | float
    monthly_xp_allocation: int
    allowed_generation_types: list[str]
    cost_overrides: dict[str, int]
    rollover: bool


class Cost(_Result, frozen=True):
    xp_cost: int
    model: str
