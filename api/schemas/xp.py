"""Request and response shapes of the XP routes (check-xp and the 402 body as the seed has them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from api.schemas.common import Request
from api.schemas.exp import Label
from counters.clock import AwareDatetime, to_datetime
from counters.ids import GrantReason, TransactionId, UserId
from counters.rules.xp import XpRules
from counters.xp.guidance import RecommendedTier, TierInfo, XpCheck, gate_refuses, tier_info
from counters.xp.service import XpChange
from counters.xp.state import XpState

XpAmount = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]
GenerationTypeName = Label
TierName = Label


class GenerationRequest(Request, frozen=True):
    generation_type: GenerationTypeName


class PreviewRequest(Request, frozen=True):
    generation_type: GenerationTypeName
    include_guidance: bool = False


class CaptureRequest(Request, frozen=True):
    xp_amount: XpAmount | None = None  # None: capture all of the hold


class RefundRequest(Request, frozen=True):
    transaction_id: TransactionId


class GrantRequest(Request, frozen=True):
    user_id: UserId
    xp_amount: XpAmount
    reason: GrantReason
    expires_at: AwareDatetime | None = None


class SubscriptionRequest(Request, frozen=True):
    tier: TierName
    period_start: AwareDatetime | None = None


class _Response(msgspec.Struct, frozen=True, kw_only=True):
    pass


class PreviewResponse(XpCheck, frozen=True, kw_only=True):
    """The check-xp body plus what the generation costs."""

    generation_type: str
    model: str
    base_xp_cost: int
    xp_cost: int
    tier_allows: bool
    xp_balance_after: int | None


class Refusal(_Response, frozen=True, omit_defaults=True):
    """The seed's middleware body for a refused debit or hold (402 or 403), then our additions:
    ``code`` (the same as ``error``), ``detail`` (the same as ``message``: every error body has
    ``detail`` and ``code``), the numbers the seed gives only inside ``message``, and
    ``shadow_refused`` when a tier gate in shadow mode would have refused it (403) first."""

    error: str
    message: str
    guidance: str | msgspec.UnsetType
    subscription_url: str
    recommended_tier: RecommendedTier | None
    code: str
    detail: str
    xp_balance: int
    xp_required: int
    xp_deficit: int
    shadow_refused: str | None = None  # a tier gate in shadow mode would have refused it


class DebitResponse(_Response, frozen=True, omit_defaults=True):
    transaction_id: str
    xp_debited: int
    xp_balance: int
    shadow_refused: str | None = None  # a tier gate in shadow mode would have refused it


class HoldResponse(_Response, frozen=True, omit_defaults=True):
    hold_id: str
    xp_held: int
    xp_balance: int
    expires_at: datetime
    shadow_refused: str | None = None  # a tier gate in shadow mode would have refused it


class CaptureResponse(_Response, frozen=True):
    hold_id: str
    transaction_id: str  # what a refund of this capture names
    xp_captured: int
    xp_released: int
    xp_balance: int


class ReleaseResponse(_Response, frozen=True):
    hold_id: str
    xp_released: int
    xp_balance: int


class RefundResponse(_Response, frozen=True):
    transaction_id: str
    xp_refunded: int
    xp_debited: int
    xp_balance: int


class GrantResponse(_Response, frozen=True):
    grant_id: str
    user_id: str
    xp_granted: int
    xp_balance: int
    expires_at: datetime | None


class SubscriptionResponse(_Response, frozen=True):
    user_id: str
    change: str  # subscribe | upgrade | downgrade_scheduled | resume | cancel_scheduled | none
    current_tier: TierInfo | None
    next_tier: TierInfo | None  # the tier from the next renewal (a scheduled downgrade)
    cancel_at_period_end: bool
    period_start: datetime | None
    period_end: datetime | None
    xp_allocation_added: int
    xp_allocation: int
    xp_balance: int


class Allocation(_Response, frozen=True):
    xp_left: int
    monthly_xp_allocation: int
    period_start: datetime | None
    renews_at: datetime | None  # None: no subscription, or it ends at period end
    expires_at: datetime | None  # when the XP left expires; None: it rolls over
    rolls_over: bool


class TopUp(_Response, frozen=True):
    grant_id: str
    xp_left: int
    expires_at: datetime | None


class HoldView(_Response, frozen=True):
    hold_id: str
    generation_type: str
    xp_held: int
    expires_at: datetime


class BalanceResponse(_Response, frozen=True):
    user_id: str
    xp_balance: int
    xp_allocation: int
    xp_topup: int
    xp_held: int
    allocation: Allocation
    topups: list[TopUp]
    holds: list[HoldView]
    current_tier: TierInfo | None
    next_tier: TierInfo | None
    cancel_at_period_end: bool
    subscription_url: str


def _at(ts: int | None) -> datetime | None:
    return None if not ts else to_datetime(ts)


def preview_response(rules: XpRules, generation_type: str, check: XpCheck) -> PreviewResponse:
    tier = rules.tier(check.current_tier.tier_name if check.current_tier else None)
    after = check.xp_balance - check.xp_required if check.has_sufficient_xp else None
    return PreviewResponse(
        **msgspec.structs.asdict(check),
        generation_type=generation_type,
        model=rules.costs[generation_type].model,
        base_xp_cost=rules.costs[generation_type].xp,
        xp_cost=check.xp_required,
        tier_allows=tier is not None and not gate_refuses(tier, generation_type),
        xp_balance_after=after,
    )


def refusal(change: XpChange) -> Refusal:
    assert change.check is not None
    check = change.check
    return Refusal(
        error=change.error, message=check.message, guidance=check.guidance,
        subscription_url=check.subscription_url, recommended_tier=check.recommended_tier,
        code=change.error, detail=check.message, xp_balance=check.xp_balance,
        xp_required=check.xp_required, xp_deficit=check.xp_deficit,
        shadow_refused=change.shadow_refused,
    )  # fmt: skip


def subscription_response(rules: XpRules, user_id: str, change: XpChange) -> SubscriptionResponse:
    state = change.state
    return SubscriptionResponse(
        user_id=user_id, change=change.ref or "none",
        current_tier=tier_info(rules.tier(state.tier)),
        next_tier=tier_info(rules.tier(state.next_tier)),
        cancel_at_period_end=state.cancel_at_period_end,
        period_start=_at(state.period_start), period_end=_at(state.period_end),
        xp_allocation_added=change.amount if change.ref in ("subscribe", "upgrade") else 0,
        xp_allocation=state.alloc, xp_balance=state.balance,
    )  # fmt: skip


def balance_response(rules: XpRules, user_id: str, state: XpState) -> BalanceResponse:
    tier = rules.tier(state.tier)
    rolls_over = tier is not None and tier.rollover and not state.cancel_at_period_end
    allocation = Allocation(
        xp_left=state.alloc, monthly_xp_allocation=tier.monthly_xp if tier else 0,
        period_start=_at(state.period_start),
        renews_at=None if state.cancel_at_period_end else _at(state.period_end),
        expires_at=None if rolls_over else _at(state.period_end), rolls_over=rolls_over,
    )  # fmt: skip
    return BalanceResponse(
        user_id=user_id, xp_balance=state.balance, xp_allocation=state.alloc,
        xp_topup=state.topup, xp_held=state.held, allocation=allocation,
        topups=[TopUp(grant_id=g.id, xp_left=g.left, expires_at=_at(g.expires_at))
                for g in state.grants],
        holds=[HoldView(hold_id=h.id, generation_type=h.generation_type, xp_held=h.amount,
                        expires_at=to_datetime(h.expires_at)) for h in state.holds],
        current_tier=tier_info(tier), next_tier=tier_info(rules.tier(state.next_tier)),
        cancel_at_period_end=state.cancel_at_period_end, subscription_url=rules.subscription_url,
    )  # fmt: skip


generation_decoder = msgspec.json.Decoder(GenerationRequest)
preview_decoder = msgspec.json.Decoder(PreviewRequest)
capture_decoder = msgspec.json.Decoder(CaptureRequest)
refund_decoder = msgspec.json.Decoder(RefundRequest)
grant_decoder = msgspec.json.Decoder(GrantRequest)
subscription_decoder = msgspec.json.Decoder(SubscriptionRequest)
