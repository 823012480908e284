"""Entitlement routes: what the caller's level allows (issue #14)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import json_response, principal, services
from api.schemas.entitlements import EntitlementsResponse, FeatureResponse


async def entitlements(request: Request) -> Response:
    """Every feature, allowed or not, with its quantity and unlocking level."""
    svc = services(request)
    user_id = principal(request).user_id
    level = await svc.entitlements.level(user_id)
    body = EntitlementsResponse(
        user_id=user_id, level=level, entitlements=svc.entitlements.at_level(level)
    )
    return json_response(body)


async def entitlement(request: Request) -> Response:
    """One feature: allowed, and how many (404 for a feature the rules do not name)."""
    svc = services(request)
    user_id = principal(request).user_id
    feature = request.path_params["feature"]
    svc.entitlements.feature_at(feature, 1)  # an unknown feature is 404 before any read
    level = await svc.entitlements.level(user_id)
    found = svc.entitlements.feature_at(feature, level)
    body = FeatureResponse(
        user_id=user_id, level=level, feature=feature, allowed=found.allowed,
        quantity=found.quantity, unlock_level=found.unlock_level, next_level=found.next_level,
    )  # fmt: skip
    return json_response(body)


routes = [
    Route("/api/exp/entitlements", entitlements, methods=["GET"]),
    Route("/api/exp/entitlements/{feature}", entitlement, methods=["GET"]),
]
