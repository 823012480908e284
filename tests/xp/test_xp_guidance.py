"""The seed's helpers and messages word for word, and the validation of the ``[xp]`` rules."""

from __future__ import annotations

import importlib.resources

import msgspec
import pytest

from counters.clock import ManualClock
from counters.errors import InvalidRequest, NotFound, RulesError
from counters.rules import load_rules, parse_rules
from counters.rules import xp as xp_rules
from counters.runtime.services import Services
from counters.settings import Settings
from counters.xp.guidance import evaluate, format_xp_guidance_message, get_generation_cost
from tests.support.core import NOON

DEFAULTS = (
    importlib.resources.files("counters.rules").joinpath("default_rules.toml").read_text("utf-8")
)
SEED_GUIDANCE = (
    "⚡ You need 7 more XP credits. 💎 Upgrade your tier or wait for your monthly XP refresh to "
    "continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP monthly!"
)
SEED_MESSAGE = "Insufficient credits. Need 12 XP, have 5 XP (7 XP short)."


def test_the_seed_example_from_the_rules_alone() -> None:
    check = evaluate(load_rules().xp, "NEW_IMAGE", "pixel_rookie", 5, include_guidance=True)
    assert msgspec.to_builtins(check) == {
        "has_sufficient_xp": False,
        "xp_balance": 5,
        "xp_required": 12,
        "xp_deficit": 7,
        "message": SEED_MESSAGE,
        "guidance": SEED_GUIDANCE,
        "subscription_url": "/subscriptions",
        "current_tier": {
            "tier_name": "pixel_rookie",
            "tier_display_name": "Pixel Rookie",
            "tier_level": 1,
        },
        "recommended_tier": {
            "tier_name": "arcade_artist",
            "tier_display_name": "Arcade Artist",
            "tier_level": 2,
            "monthly_xp_allocation": 800,
            "monthly_price_aud": 20,
        },
    }


def test_format_xp_guidance_message_as_the_seed_calls_it() -> None:
    message = format_xp_guidance_message(
        has_xp=False, xp_balance=5, xp_required=12, tier_name="Pixel Rookie"
    )
    assert message == SEED_GUIDANCE
    assert format_xp_guidance_message(False, 5, 12, "pixel_rookie") == SEED_GUIDANCE
    assert format_xp_guidance_message(True, 600, 12, "Pixel Rookie") == (
        "✅ You have 600 XP. Keep creating!"
    )
    assert format_xp_guidance_message(False, 0, 720, "Game Master") == (
        "⚡ You need 720 more XP credits. ⏳ Wait for your monthly XP refresh or top up your XP "
        "to continue creating."
    )
    # Arcade Artist's 800 XP cannot cover 900, so the recommendation skips to Game Master.
    assert format_xp_guidance_message(False, 0, 900, "Pixel Rookie").endswith(
        "🎯 Recommended: Game Master (A$33/month) gives you 1320 XP monthly!"
    )
    assert format_xp_guidance_message(False, 0, 12) == (
        "🎮 Subscribe to unlock this generation and start creating! 🎯 Recommended: Pixel Rookie "
        "(A$15/month) gives you 600 XP monthly!"
    )
    assert format_xp_guidance_message(
        False, 100, 15, "Pixel Rookie", generation_type="NEW_VIDEO"
    ).startswith("🔒 NEW_VIDEO is not included in Pixel Rookie.")
    with pytest.raises(InvalidRequest, match="Unknown tier 'Diamond'"):
        format_xp_guidance_message(False, 0, 12, "Diamond")


def test_a_shadow_gate_is_checked_as_served() -> None:
    """A tier gate in shadow mode refuses nothing: a type it does not allow is checked against
    the balance at its base cost, by evaluate (check-xp, preview, a 402) and the seed helper."""
    xp = load_rules().xp
    tiers = list(xp.tiers)
    tiers[0] = msgspec.structs.replace(tiers[0], shadow=True)
    shadowed = msgspec.structs.replace(xp, tiers=tuple(tiers))
    short = evaluate(shadowed, "NEW_VIDEO_WITH_AUDIO", "pixel_rookie", 600, include_guidance=True)
    assert (short.has_sufficient_xp, short.xp_required, short.xp_deficit) == (False, 720, 120)
    assert short.message == "Insufficient credits. Need 720 XP, have 600 XP (120 XP short)."
    assert isinstance(short.guidance, str) and "not included" not in short.guidance
    enough = evaluate(shadowed, "NEW_VIDEO", "pixel_rookie", 600, include_guidance=False)
    assert enough.has_sufficient_xp and enough.message.startswith("Sufficient credits.")
    as_written = evaluate(xp, "NEW_VIDEO", "pixel_rookie", 600, include_guidance=False)
    assert not as_written.has_sufficient_xp and "not included" in as_written.message
    helper = format_xp_guidance_message(
        False, 600, 720, "pixel_rookie", generation_type="NEW_VIDEO_WITH_AUDIO", rules=shadowed
    )
    assert helper.startswith("⚡ You need 120 more XP credits.")


def test_get_generation_cost_as_the_seed_calls_it() -> None:
    assert get_generation_cost("NEW_IMAGE", user_tier=1) == 12
    assert get_generation_cost("NEW_VIDEO_WITH_AUDIO") == 720
    assert get_generation_cost("EDIT_IMAGE", "game_master") == 9
    with pytest.raises(NotFound, match="known types: NEW_IMAGE, NEW_IMAGE_REF"):
        get_generation_cost("NEW_HOLOGRAM", 1)
    with pytest.raises(InvalidRequest, match="known tiers: 1 \\(pixel_rookie\\)"):
        get_generation_cost("NEW_IMAGE", 7)


def test_a_tier_cost_override() -> None:
    text = DEFAULTS.replace(
        'name = "game_master"\n', 'name = "game_master"\ncost_overrides = { NEW_IMAGE = 10 }\n', 1
    )
    rules = parse_rules(text, "custom.toml").xp
    assert get_generation_cost("NEW_IMAGE", 3, rules=rules) == 10
    assert get_generation_cost("NEW_IMAGE", 2, rules=rules) == 12
    check = evaluate(rules, "NEW_IMAGE", "game_master", 10, include_guidance=False)
    assert (check.has_sufficient_xp, check.xp_required) == (True, 10)


def test_the_default_tables() -> None:
    xp = load_rules().xp
    assert [(t.name, t.display_name, t.level, t.price, t.monthly_xp) for t in xp.tiers] == [
        ("pixel_rookie", "Pixel Rookie", 1, 15, 600),
        ("arcade_artist", "Arcade Artist", 2, 20, 800),
        ("game_master", "Game Master", 3, 33, 1320),
    ]
    images = {"NEW_IMAGE", "NEW_IMAGE_REF", "EDIT_IMAGE", "EDIT_IMAGE_REF", "EDIT_IMAGE_ADD_NEW"}
    videos = {"NEW_VIDEO", "IMAGE_TO_VIDEO", "EDIT_IMAGE_REF_TO_VIDEO"}
    audio = {"NEW_VIDEO_WITH_AUDIO", "IMAGE_TO_VIDEO_WITH_AUDIO"}
    assert [set(t.allows) for t in xp.tiers] == [images, images | videos, images | videos | audio]
    models = {name: (cost.xp, cost.model) for name, cost in xp.costs.items()}
    assert models["NEW_IMAGE_REF"] == (18, "Runway Gen4 Image")
    assert models["NEW_VIDEO"] == (15, "Minimax Hailuo-02")
    assert models["IMAGE_TO_VIDEO"] == (150, "Runway Gen4 Turbo")


def test_a_rules_file_without_xp_gets_the_shipped_tables() -> None:
    exp_only = DEFAULTS.split("\n[xp]\n", 1)[0]
    assert parse_rules(exp_only).xp == load_rules().xp


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'allows = ["NEW_IMAGE", "NEW_IMAGE_REF", "EDIT_IMAGE", "EDIT_IMAGE_REF", '
            '"EDIT_IMAGE_ADD_NEW"]',
            'allows = ["NEW_IMAGE", "NEW_HOLOGRAM"]',
            "xp.tiers[0] (pixel_rookie): allows unknown generation type NEW_HOLOGRAM",
        ),
        ("level = 2\nprice_aud", "level = 5\nprice_aud", "xp.tiers[1] (arcade_artist): tiers must"),
        ('name = "game_master"', 'name = "pixel_rookie"', "tier name is used twice"),
        ("[xp.costs.EDIT_IMAGE]\nxp = 9", "[xp.costs.EDIT_IMAGE]\nxp = 0", "xp.costs.EDIT_IMAGE"),
        ('model = "FLUX 1.1 Pro"\n', "", "xp.costs.NEW_IMAGE: Object missing required field"),
        (
            'name = "pixel_rookie"\n',
            'name = "pixel_rookie"\ncost_overrides = { NEW_VIDEO = 1 }\n',
            "cost_overrides names NEW_VIDEO, which it does not allow",
        ),
        ("({xp_deficit} XP short)", "({shortfall} XP short)", "xp.messages.insufficient"),
        ("🎯 Recommended: {recommended_tier}", "🎯 {0}", "xp.guidance.recommended"),
        ("monthly_xp = 600", "monthly_xp = -600", "Expected `int` >= 1"),
        # A format spec or conversion passed validation and raised at request time (500s).
        (
            'Need {xp_required} XP, have {xp_balance} XP."',
            'Need {xp_required:s} XP."',
            "xp.messages.sufficient: placeholder {xp_required:s} has a format spec or conversion",
        ),
        (
            "({xp_deficit} XP short)",
            "({xp_deficit:s} XP short)",
            "xp.messages.insufficient: placeholder {xp_deficit:s} has a format spec",
        ),
        (
            "You have {xp_balance} XP.",
            "You have {xp_balance:>3000000} XP.",
            "xp.guidance.sufficient: placeholder {xp_balance:>3000000} has a format spec",
        ),
        (
            "unlock {generation_type} and",
            "unlock {generation_type!r} and",
            "xp.guidance.no_subscription: placeholder {generation_type!r} has a format spec or"
            " conversion; only plain {generation_type} is allowed",
        ),
        (
            "(A${recommended_price}/month)",
            "(A${recommended_price:.2f}/month)",
            "xp.guidance.recommended: placeholder {recommended_price:.2f}",
        ),
        (
            '{generation_type} is not included in {current_tier}."\n',
            '{generation_type} is not included in {current_tier.upper}."\n',
            "xp.messages.tier_required: unknown placeholder(s) ['current_tier.upper']",
        ),
        # A NUL (TOML's \u0000) was served in every 402's message (a second reviewer's finding)
        (
            "Sufficient credits. Need {xp_required} XP",
            "Sufficient credits.\\u0000 Need {xp_required} XP",
            "xp.messages.sufficient: control character U+0000 in a message",
        ),
    ],
)
def test_a_bad_xp_section_names_the_bad_entry(old: str, new: str, message: str) -> None:
    assert old in DEFAULTS
    with pytest.raises(RulesError) as error:
        parse_rules(DEFAULTS.replace(old, new, 1), "custom.toml")
    assert "custom.toml" in str(error.value)
    assert message in str(error.value)


def test_every_template_renders_with_the_types_guidance_passes() -> None:
    """The samples a template is rendered against at validation cover every placeholder."""
    assert set(xp_rules._SAMPLE) == xp_rules.PLACEHOLDERS
    for sample in xp_rules._SAMPLES:
        assert set(sample) == xp_rules.PLACEHOLDERS


@pytest.mark.anyio
async def test_check_xp_availability_returns_the_seed_dict(settings: Settings) -> None:
    services = Services.build(settings, clock=ManualClock(NOON))
    try:
        result = await services.xp.check_xp_availability("nobody", "NEW_IMAGE")
        assert result == {
            "has_sufficient_xp": False,
            "xp_balance": 0,
            "xp_required": 12,
            "xp_deficit": 12,
            "message": "No active subscription. A subscription is needed for NEW_IMAGE.",
            "subscription_url": "/subscriptions",
            "current_tier": None,
            "recommended_tier": {
                "tier_name": "pixel_rookie",
                "tier_display_name": "Pixel Rookie",
                "tier_level": 1,
                "monthly_xp_allocation": 600,
                "monthly_price_aud": 15,
            },
        }
        guided = await services.xp.check_xp_availability("nobody", "NEW_IMAGE", True)
        assert guided["guidance"].startswith("🎮 Subscribe to unlock NEW_IMAGE")
    finally:
        await services.close()
