"""What check-xp says: enough XP or not, the message, the guidance, the tier to recommend.

Pure functions of the rules and a user's tier and balance; the texts are templates in the rules
file. ``get_generation_cost`` and ``format_xp_guidance_message`` keep the seed's signatures
(``check_xp_availability`` is ``XpService.check_xp_availability``: it reads the balance).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from counters.errors import InvalidRequest, NotFound, shown
from counters.rules.xp import Tier, XpRules, default_xp_rules

Situation = Literal["sufficient", "insufficient", "no_subscription", "tier_required"]


class TierInfo(msgspec.Struct, frozen=True, kw_only=True):
    tier_name: str
    tier_display_name: str
    tier_level: int


class RecommendedTier(msgspec.Struct, frozen=True, kw_only=True):
    tier_name: str
    tier_display_name: str
    tier_level: int
    monthly_xp_allocation: int
    monthly_price_aud: int | float


class XpCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's check-xp body; ``guidance`` is left out unless it was asked for."""

    has_sufficient_xp: bool
    xp_balance: int
    xp_required: int
    xp_deficit: int
    message: str
    guidance: str | msgspec.UnsetType = msgspec.UNSET
    subscription_url: str
    current_tier: TierInfo | None
    recommended_tier: RecommendedTier | None


def require_generation_type(rules: XpRules, generation_type: str) -> None:
    """``NotFound`` listing the known types unless ``generation_type`` is one."""
    if generation_type not in rules.costs:
        known = ", ".join(rules.costs)
        raise NotFound(f"Unknown generation type '{shown(generation_type)}'; known types: {known}")


def tier_info(tier: Tier | None) -> TierInfo | None:
    if tier is None:
        return None
    return TierInfo(tier_name=tier.name, tier_display_name=tier.display_name, tier_level=tier.level)


def recommended_info(tier: Tier | None) -> RecommendedTier | None:
    if tier is None:
        return None
    return RecommendedTier(
        tier_name=tier.name, tier_display_name=tier.display_name, tier_level=tier.level,
        monthly_xp_allocation=tier.monthly_xp, monthly_price_aud=tier.price,
    )  # fmt: skip


def evaluate(
    rules: XpRules,
    generation_type: str,
    tier_name: str | None,
    balance: int,
    include_guidance: bool,
) -> XpCheck:
    """The check of one generation for a user on ``tier_name`` (None: no subscription).

    It answers what a debit would: a tier gate in shadow mode (``Tier.shadow``) refuses nothing,
    so a type it does not allow is checked against the balance at its base cost, like the debit
    that charges it. The recommended tier is chosen by the gates as written.
    """
    require_generation_type(rules, generation_type)
    tier = rules.tier(tier_name)
    required = rules.cost_for(generation_type, tier)
    deficit = max(required - balance, 0)
    situation: Situation
    if tier is None:
        situation, recommended = "no_subscription", rules.lowest_allowing(generation_type)
    elif gate_refuses(tier, generation_type):
        situation = "tier_required"
        recommended = rules.lowest_allowing(generation_type, tier.level)
    elif deficit > 0:
        situation = "insufficient"
        recommended = rules.lowest_allowing(generation_type, tier.level)
    else:
        situation, recommended = "sufficient", None
    values = _values(generation_type, required, balance, tier, recommended)
    return XpCheck(
        has_sufficient_xp=situation == "sufficient",
        xp_balance=balance,
        xp_required=required,
        xp_deficit=deficit,
        message=getattr(rules.messages, situation).format(**values),
        guidance=_guidance(rules, situation, values, recommended)
        if include_guidance
        else msgspec.UNSET,
        subscription_url=rules.subscription_url,
        current_tier=tier_info(tier),
        recommended_tier=recommended_info(recommended),
    )


def gate_refuses(tier: Tier, generation_type: str) -> bool:
    """Whether ``tier``'s gate refuses the type as served (a gate in shadow mode refuses none)."""
    return not tier.shadow and generation_type not in tier.allows


def _values(
    generation_type: str, required: int, balance: int, tier: Tier | None, recommended: Tier | None
) -> dict[str, object]:
    return {
        "generation_type": generation_type,
        "xp_required": required,
        "xp_balance": balance,
        "xp_deficit": max(required - balance, 0),
        "current_tier": tier.display_name if tier else "",
        "recommended_tier": recommended.display_name if recommended else "",
        "recommended_price": recommended.price if recommended else "",
        "recommended_xp": recommended.monthly_xp if recommended else "",
    }


def _guidance(
    rules: XpRules, situation: Situation, values: dict[str, object], recommended: Tier | None
) -> str:
    texts = rules.guidance
    if situation == "sufficient":
        pieces = [texts.sufficient]
    elif situation == "insufficient":
        tail = [texts.upgrade_or_wait, texts.recommended] if recommended else [texts.wait_or_top_up]
        pieces = [texts.deficit, *tail]
    else:
        first = texts.no_subscription if situation == "no_subscription" else texts.tier_required
        pieces = [first, texts.recommended] if recommended else [first]
    return " ".join(piece.format(**values) for piece in pieces)


def _find_tier(rules: XpRules, user_tier: int | str | None) -> Tier | None:
    """A tier by level, name or display name (None: no subscription)."""
    if user_tier is None:
        return None
    for tier in rules.tiers:
        if user_tier in (tier.level, tier.name, tier.display_name):
            return tier
    known = ", ".join(f"{tier.level} ({tier.name})" for tier in rules.tiers)
    raise InvalidRequest(f"Unknown tier {user_tier!r}; known tiers: {known}")


def get_generation_cost(
    generation_type: str, user_tier: int | str | None = None, *, rules: XpRules | None = None
) -> int:
    """XP one generation costs on a tier (level, name or display name), as in the seed."""
    rules = rules or default_xp_rules()
    require_generation_type(rules, generation_type)
    return rules.cost_for(generation_type, _find_tier(rules, user_tier))


def format_xp_guidance_message(
    has_xp: bool,
    xp_balance: int,
    xp_required: int,
    tier_name: str | None = None,
    *,
    generation_type: str | None = None,
    rules: XpRules | None = None,
) -> str:
    """The guidance for a balance against a cost on a tier, as in the seed.

    ``format_xp_guidance_message(False, 5, 12, "Pixel Rookie")`` is the seed's guidance that
    recommends Arcade Artist. Without ``generation_type`` the recommended tier is the lowest
    above ``tier_name`` whose monthly XP covers ``xp_required``.
    """
    rules = rules or default_xp_rules()
    tier = _find_tier(rules, tier_name)
    level = tier.level if tier else 0
    situation: Situation
    recommended: Tier | None = None
    if has_xp:
        situation = "sufficient"
    else:
        if generation_type is not None:
            require_generation_type(rules, generation_type)
            recommended = rules.lowest_allowing(generation_type, level)
        else:
            above = [t for t in rules.tiers if t.level > level and t.monthly_xp >= xp_required]
            recommended = above[0] if above else None
        situation = "no_subscription" if tier is None else "insufficient"
        if tier is not None and generation_type is not None and gate_refuses(tier, generation_type):
            situation = "tier_required"
    kind = generation_type or "this generation"
    values = _values(kind, xp_required, xp_balance, tier, recommended)
    return _guidance(rules, situation, values, recommended)
