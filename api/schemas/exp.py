"""Request and response shapes of the EXP routes, as the seed documents them."""

from __future__ import annotations

from typing import Annotated

import msgspec

from api.schemas.common import Request
from counters.exp.levels import Progress
from counters.ids import NO_CONTROL_CHARACTERS, Name, TargetIdText, UserId

TargetType = Name
TargetId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | TargetIdText

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64), NO_CONTROL_CHARACTERS]


class GainRequest(Request, frozen=True):
    action: Label
    target_type: TargetType | None = None
    target_id: TargetId | None = None


class AdjustRequest(Request, frozen=True):
    user_id: UserId
    delta: Annotated[int, msgspec.Meta(ge=-1_000_000_000, le=1_000_000_000)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500), NO_CONTROL_CHARACTERS]


class OwnerRequest(Request, frozen=True):
    owner_id: UserId


class GainResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """The seed's award body (fields in its order; built positionally on the hot lane)."""

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
    # An addition to the seed's body: features this award unlocked or raised (empty unless it
    # levelled the user up), as named in the rules' [entitlements].
    unlocked_features: list[str]
    # Present only when a rule in shadow mode would have refused the award (README: Shadow mode).
    shadow_refused: str | None = None


class LimitsResponse(msgspec.Struct, frozen=True, kw_only=True):
    level: int
    daily_exp_gained: int
    daily_exp_cap: int
    remaining_exp: int
    daily_action_counts: dict[str, int]
    action_limits: dict[str, int | None]
    exp_rewards: dict[str, int]


class ProgressResponse(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    total_exp: int
    level: int
    progress: Progress


class AdjustResponse(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    applied_delta: int
    total_exp: int
    level: int
    leveled_up: bool
    progress: Progress
    # As in GainResponse: features this adjustment unlocked or raised (empty unless it levelled
    # the user up). A negative adjustment never takes a feature away here: entitlements are
    # read from the level (GET /api/exp/entitlements).
    unlocked_features: list[str]


class OwnerResponse(msgspec.Struct, frozen=True, kw_only=True):
    target_type: str
    target_id: str
    owner_id: str
    previous_owner_id: str | None


gain_decoder = msgspec.json.Decoder(GainRequest)
adjust_decoder = msgspec.json.Decoder(AdjustRequest)
owner_decoder = msgspec.json.Decoder(OwnerRequest)
