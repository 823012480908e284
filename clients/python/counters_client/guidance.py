"""The seed's ``format_xp_guidance_message``, client side: pure, no call to the service.

The texts are the seed's (the service keeps them in its rules file,
``counters/rules/default_rules.toml``; ``tests/clients/test_python_client.py`` checks that both
sides say the same for a grid of inputs). The recommended tier is the lowest above the user's
whose monthly XP covers the cost, from ``tiers`` (the service's ``/api/v1/subscriptions/tiers``;
default: the seed's three tiers).
"""

from __future__ import annotations

from collections.abc import Mapping

from counters_client.types import Tier

SUFFICIENT = "✅ You have {xp_balance} XP. Keep creating!"
DEFICIT = "⚡ You need {xp_deficit} more XP credits."
UPGRADE_OR_WAIT = "💎 Upgrade your tier or wait for your monthly XP refresh to continue creating."
WAIT_OR_TOP_UP = "⏳ Wait for your monthly XP refresh or top up your XP to continue creating."
NO_SUBSCRIPTION = "🎮 Subscribe to unlock {generation_type} and start creating!"
RECOMMENDED = (
    "🎯 Recommended: {recommended_tier} (A${recommended_price}/month) gives you "
    "{recommended_xp} XP monthly!"
)


def _tier(name: str, display: str, level: int, price: int, xp: int, allows: list[str]) -> Tier:
    return Tier(
        tier_name=name, tier_display_name=display, tier_level=level, monthly_price_aud=price,
        monthly_xp_allocation=xp, allowed_generation_types=allows, cost_overrides={},
        rollover=False,
    )  # fmt: skip


SEED_TIERS: dict[str, Tier] = {
    t.tier_name: t
    for t in (
        _tier("pixel_rookie", "Pixel Rookie", 1, 15, 600, []),
        _tier("arcade_artist", "Arcade Artist", 2, 20, 800, []),
        _tier("game_master", "Game Master", 3, 33, 1320, []),
    )
}


def find_tier(tiers: Mapping[str, Tier], user_tier: int | str | None) -> Tier | None:
    """A tier by level, name or display name (None: no subscription); KeyError if unknown."""
    if user_tier is None:
        return None
    for tier in tiers.values():
        if user_tier in (tier.tier_level, tier.tier_name, tier.tier_display_name):
            return tier
    raise KeyError(f"unknown tier {user_tier!r}")


def format_xp_guidance_message(
    has_xp: bool,
    xp_balance: int,
    xp_required: int,
    tier_name: str | None = None,
    *,
    tiers: Mapping[str, Tier] | None = None,
) -> str:
    """The seed's guidance for a balance against a cost on a tier:
    ``format_xp_guidance_message(False, 5, 12, "Pixel Rookie")`` recommends Arcade Artist."""
    tiers = SEED_TIERS if tiers is None else tiers
    tier = find_tier(tiers, tier_name)
    values: dict[str, object] = {
        "xp_balance": xp_balance,
        "xp_deficit": max(xp_required - xp_balance, 0),
        "generation_type": "this generation",
    }
    if has_xp:
        return SUFFICIENT.format(**values)
    level = tier.tier_level if tier else 0
    above = sorted(
        (
            t
            for t in tiers.values()
            if t.tier_level > level and t.monthly_xp_allocation >= xp_required
        ),
        key=lambda t: t.tier_level,
    )
    pieces = [NO_SUBSCRIPTION] if tier is None else [DEFICIT]
    if above:
        best = above[0]
        values |= {
            "recommended_tier": best.tier_display_name,
            "recommended_price": best.monthly_price_aud,
            "recommended_xp": best.monthly_xp_allocation,
        }
        pieces += [UPGRADE_OR_WAIT, RECOMMENDED] if tier is not None else [RECOMMENDED]
    elif tier is not None:
        pieces.append(WAIT_OR_TOP_UP)
    return " ".join(piece.format(**values) for piece in pieces)
