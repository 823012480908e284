"""The webhook contract (issue #14): the body every endpoint receives, one Struct per type.

Spelled once here, so the outbox builds exactly these and a client (or an OpenAPI generator)
can read them. ``persistence/webhooks/outbox.py`` decides which ledger events cause which type.

    {"id": "<ledger event id>:<type>", "type": "<type>", "created": <unix s>, "data": {...}}
"""

from __future__ import annotations

import msgspec


class _Data(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    ledger_event_id: str  # the ledger row (GET /api/exp/history, /api/v1/xp/transactions)


class LevelUp(_Data, frozen=True):
    level: int
    previous_level: int
    total_exp: int
    unlocked_features: list[str]  # as named in the rules' [entitlements]
    action: str  # the award's action, or the correction's reason


class XpBalance(_Data, frozen=True, omit_defaults=True):
    """``xp_low_balance`` (with ``threshold``) and ``xp_depleted`` (without)."""

    tier: str | None
    xp_balance: int
    previous_xp_balance: int
    kind: str  # the ledger kind of the change: xp_debit, xp_hold, xp_allocation, ...
    action: str
    threshold: int | None = None


class SubscriptionRenewed(_Data, frozen=True):
    tier: str | None
    xp_allocation: int
    xp_balance: int
    renewed_at_ms: int  # when the period turned over (unix ms), not when it was applied


class _Webhook(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The body POSTed to every endpoint; ``id`` is stable: dedupe on it."""

    id: str
    created: int  # unix seconds of the ledger event


class LevelUpWebhook(_Webhook, frozen=True, tag="level_up"):
    data: LevelUp


class XpLowBalanceWebhook(_Webhook, frozen=True, tag="xp_low_balance"):
    data: XpBalance


class XpDepletedWebhook(_Webhook, frozen=True, tag="xp_depleted"):
    data: XpBalance


class SubscriptionRenewedWebhook(_Webhook, frozen=True, tag="subscription_renewed"):
    data: SubscriptionRenewed


# Tagged on "type": a receiver decodes any body with msgspec.json.decode(body, type=Webhook).
Webhook = LevelUpWebhook | XpLowBalanceWebhook | XpDepletedWebhook | SubscriptionRenewedWebhook
