"""Response shapes of the entitlement routes (issue #14); msgspec Structs, so the OpenAPI
document can be generated from them."""

from __future__ import annotations

import msgspec

from counters.exp.entitlements import Entitlement


class EntitlementsResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/exp/entitlements``: every feature of the rules for the caller's level."""

    user_id: str
    level: int
    entitlements: list[Entitlement]


class FeatureResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/exp/entitlements/{feature}``: a yes/no with the quantity."""

    user_id: str
    level: int
    feature: str
    allowed: bool
    quantity: int | None
    unlock_level: int
    next_level: int | None
