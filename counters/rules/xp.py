"""The ``[xp]`` part of the rules file: generation costs, subscription tiers, guidance texts.

Kept apart from ``counters.rules`` (which embeds it as ``Rules.xp``) so the XP tables, their
validation and the lookups built on them read as one unit. Every error names the bad entry.
"""

from __future__ import annotations

import importlib.resources
import string
from functools import cache, cached_property
from typing import Annotated

import msgspec

from counters.errors import RulesError
from counters.ids import CONTROL_CHARACTER, GenerationType, Name

# At most 10^12: what a script adds stays exact in Lua's doubles next to a total of up to 10^15
# (lua/lib/bounds.lua).
PositiveInt = Annotated[int, msgspec.Meta(gt=0, le=10**12)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]

# The placeholders a message or guidance template may use.
PLACEHOLDERS = frozenset(
    {
        "generation_type",
        "xp_required",
        "xp_balance",
        "xp_deficit",
        "current_tier",
        "recommended_tier",
        "recommended_price",
        "recommended_xp",
    }
)


class _Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class GenerationCost(_Rule, frozen=True):
    xp: PositiveInt
    model: Text


class Tier(_Rule, frozen=True):
    name: Name
    display_name: Text
    level: PositiveInt
    price_aud: Annotated[float, msgspec.Meta(gt=0)]
    monthly_xp: PositiveInt
    allows: tuple[GenerationType, ...]
    cost_overrides: dict[GenerationType, PositiveInt] = {}
    rollover: bool = False
    # The tier gate (``allows``) is counted (metric, ``shadow_refused``), not enforced: a
    # generation the tier does not allow is charged at its base cost.
    shadow: bool = False
    # No new subscriptions (PUT and import refuse it, it is never recommended, /tiers leaves it
    # out); subscriptions that hold it keep renewing and debiting. A tier subscribers may hold
    # is retired, never removed (``counters.rules.check_tiers_kept``).
    retired: bool = False

    @property
    def price(self) -> int | float:
        """The monthly price as the seed prints it: 20, not 20.0."""
        return int(self.price_aud) if self.price_aud.is_integer() else self.price_aud


class XpMessages(_Rule, frozen=True):
    """The ``message`` of a check, one per situation."""

    sufficient: Text
    insufficient: Text
    no_subscription: Text
    tier_required: Text


class XpGuidance(_Rule, frozen=True):
    """Pieces of the ``guidance`` of a check; counters.xp.guidance joins them with spaces."""

    sufficient: Text
    deficit: Text
    upgrade_or_wait: Text
    wait_or_top_up: Text
    no_subscription: Text
    tier_required: Text
    recommended: Text


class XpRules(_Rule, frozen=True, dict=True):
    subscription_url: Text
    costs: dict[GenerationType, GenerationCost]
    tiers: tuple[Tier, ...]
    messages: XpMessages
    guidance: XpGuidance
    # Bounds on the per-user state document (one JSON value in the user hash).
    max_active_grants: PositiveInt = 100
    max_active_holds: PositiveInt = 100

    @cached_property
    def tiers_by_name(self) -> dict[str, Tier]:
        return {tier.name: tier for tier in self.tiers}

    def tier(self, name: str | None) -> Tier | None:
        """The tier called ``name`` (None for no subscription or a tier the rules dropped)."""
        return None if name is None else self.tiers_by_name.get(name)

    def cost_for(self, generation_type: str, tier: Tier | None) -> int:
        """XP one generation costs on ``tier`` (its override, else the base cost)."""
        base = self.costs[generation_type].xp
        return base if tier is None else tier.cost_overrides.get(generation_type, base)

    def lowest_allowing(self, generation_type: str, above_level: int = 0) -> Tier | None:
        """The lowest tier above ``above_level`` that allows the type and can afford it monthly."""
        for tier in self.tiers:
            if tier.retired or tier.level <= above_level or generation_type not in tier.allows:
                continue
            if tier.monthly_xp >= self.cost_for(generation_type, tier):
                return tier
        return None


def validate_xp_rules(xp: XpRules) -> None:
    """Cross-entry checks msgspec cannot express; raises ``RulesError`` naming the entry."""
    if not xp.costs:
        raise RulesError("xp.costs: at least one generation type is required")
    if not xp.tiers:
        raise RulesError("xp.tiers: at least one tier is required")
    names: set[str] = set()
    for index, tier in enumerate(xp.tiers):
        where = f"xp.tiers[{index}] ({tier.name})"
        if tier.level != index + 1:
            raise RulesError(f"{where}: tiers must have levels 1, 2, ... in order")
        if tier.name in names:
            raise RulesError(f"{where}: tier name is used twice")
        names.add(tier.name)
        for kind in tier.allows:
            if kind not in xp.costs:
                raise RulesError(f"{where}: allows unknown generation type {kind}")
        for kind in tier.cost_overrides:
            if kind not in tier.allows:
                raise RulesError(f"{where}: cost_overrides names {kind}, which it does not allow")
    if all(tier.retired for tier in xp.tiers):
        raise RulesError("xp.tiers: at least one tier must not be retired")
    for section in (xp.messages, xp.guidance):
        label = "messages" if section is xp.messages else "guidance"
        for field in section.__struct_fields__:
            _check_template(f"xp.{label}.{field}", getattr(section, field))


def _check_template(where: str, template: str) -> None:
    """Refuse a template that could fail or bloat at request time: only plain ``{name}``
    placeholders of ``PLACEHOLDERS`` (no format spec, no conversion), and it must render; and
    no control characters, which a reply's ``message`` and ``guidance`` would carry to a user
    (a NUL was served: a second reviewer's finding)."""
    control = CONTROL_CHARACTER.search(template)  # those request bodies refuse (counters.ids)
    if control is not None:
        raise RulesError(f"{where}: control character U+{ord(control[0]):04X} in a message")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise RulesError(f"{where}: not a valid template: {exc}") from exc
    fields = [name for _, name, _, _ in parts if name is not None]
    unknown = sorted(set(fields) - PLACEHOLDERS)
    if unknown or any(name == "" for name in fields):
        known = ", ".join(sorted(PLACEHOLDERS))
        raise RulesError(f"{where}: unknown placeholder(s) {unknown or ['{}']}; known: {known}")
    for _, name, spec, conversion in parts:
        if spec or conversion:
            extra = f"!{conversion}" if conversion else ""
            extra += f":{spec}" if spec else ""
            raise RulesError(
                f"{where}: placeholder {{{name}{extra}}} has a format spec or conversion;"
                f" only plain {{{name}}} is allowed"
            )
    for sample in _SAMPLES:  # the types counters.xp.guidance passes, each shape once
        try:
            template.format(**sample)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RulesError(f"{where}: does not render: {exc}") from exc


# Values of the types counters.xp.guidance fills templates with: with a recommended tier (an
# integer and a fractional price) and without one (its placeholders are then "").
_SAMPLE = {
    "generation_type": "NEW_IMAGE",
    "xp_required": 12,
    "xp_balance": 5,
    "xp_deficit": 7,
    "current_tier": "Pixel Rookie",
    "recommended_tier": "Arcade Artist",
    "recommended_price": 20,
    "recommended_xp": 800,
}
_SAMPLES: tuple[dict[str, object], ...] = (
    _SAMPLE,
    {**_SAMPLE, "recommended_price": 19.5},
    {**_SAMPLE, "current_tier": "", "recommended_tier": "", "recommended_price": "",
     "recommended_xp": ""},
)  # fmt: skip


class _XpOnly(msgspec.Struct, frozen=True):
    xp: XpRules


@cache
def default_xp_rules() -> XpRules:
    """The shipped ``[xp]`` tables (used when a rules file has no ``[xp]`` section)."""
    text = (
        importlib.resources.files("counters.rules")
        .joinpath("default_rules.toml")
        .read_text("utf-8")
    )
    try:
        xp = msgspec.toml.decode(text, type=_XpOnly).xp
    except msgspec.ValidationError as exc:
        raise RulesError(f"default_rules.toml: {exc}") from exc
    validate_xp_rules(xp)
    return xp
