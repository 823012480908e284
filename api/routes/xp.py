"""XP credit routes: decode, one call into ``counters.xp.service``, encode."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.asgi import Exchange, HotRoute
from api.errors import XP_CODE, XP_HOLD_CREATED, XP_STATUS, error_body
from api.http import (
    Reply,
    check_body_user,
    decode,
    idempotency,
    idempotency_of,
    json_response,
    principal,
    query_param,
    read_body,
    replay_headers,
    reply_response,
    service_caller,
    services,
    single_header,
)
from api.schemas.xp import (
    CaptureRequest,
    CaptureResponse,
    DebitResponse,
    GrantResponse,
    HoldResponse,
    RefundResponse,
    ReleaseResponse,
    balance_response,
    capture_decoder,
    generation_decoder,
    grant_decoder,
    preview_decoder,
    preview_response,
    refund_decoder,
    refusal,
    subscription_decoder,
    subscription_response,
)
from counters.auth import check_user_id
from counters.clock import to_datetime
from counters.errors import ForbiddenError, InvalidRequest
from counters.redis.codes import XpOutcome
from counters.runtime.services import Services
from counters.xp.service import XpChange

_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _refused(change: XpChange) -> Response:
    return reply_response(_refusal_reply(change))


def _refusal_reply(change: XpChange) -> Reply:
    """A refused XP write: the seed's 402/403 body, or a ``detail``."""
    headers = replay_headers(change.replayed)
    status = XP_STATUS[change.outcome]
    if change.check is not None:
        return status, refusal(change), headers
    return status, error_body(change.detail or "", XP_CODE[change.outcome]), headers


async def check_xp(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    raw = query_param(request, "include_guidance", "false").lower()
    if raw not in _FLAGS:
        raise InvalidRequest("include_guidance must be true or false")
    generation_type = request.path_params["generation_type"]
    return json_response(await svc.xp.check(caller.user_id, generation_type, _FLAGS[raw]))


async def preview_cost(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    req = decode(await read_body(request), preview_decoder)
    check = await svc.xp.check(caller.user_id, req.generation_type, req.include_guidance)
    return json_response(preview_response(svc.xp.rules, req.generation_type, check))


async def balance(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    state = await svc.xp.state(caller.user_id)
    return json_response(balance_response(svc.xp.rules, caller.user_id, state))


async def _charge(svc: Services, exchange: Exchange, route: str, hold: bool) -> XpChange:
    """Decode a debit or hold request and apply it: the change, done or refused."""
    caller = svc.auth.authenticate_raw(exchange.authorization, exchange.user_id)
    req = decode(exchange.body, generation_decoder)
    idem = idempotency_of(caller.caller, exchange.idempotency_key, route, caller.user_id, req)
    return await svc.xp.charge(caller.user_id, caller.caller, req.generation_type, hold, idem)


async def debit(svc: Services, exchange: Exchange) -> Reply:
    change = await _charge(svc, exchange, _DEBIT, hold=False)
    if change.outcome is not XpOutcome.DONE:
        return _refusal_reply(change)
    # Positional (the hot lane), in DebitResponse's order: transaction_id, xp_debited,
    # xp_balance, shadow_refused
    body = DebitResponse(change.ref, change.amount, change.state.balance, change.shadow_refused)
    return XP_STATUS[change.outcome], body, replay_headers(change.replayed)


hot_debit = HotRoute("POST", "/api/v1/xp/debit", debit)
_DEBIT = hot_debit.name
_HOLDS = "/api/v1/xp/holds"


async def create_hold(request: Request) -> Response:
    authorization = single_header(request, "authorization")
    exchange = Exchange(
        None if authorization is None else authorization.encode("latin-1"),
        single_header(request, "x-user-id"),
        single_header(request, "idempotency-key"),
        await read_body(request),
    )
    change = await _charge(services(request), exchange, f"POST {_HOLDS}", hold=True)
    if change.outcome is not XpOutcome.DONE:
        return _refused(change)
    body = HoldResponse(
        hold_id=change.ref, xp_held=change.amount, xp_balance=change.state.balance,
        expires_at=to_datetime(change.expires_at), shadow_refused=change.shadow_refused,
    )  # fmt: skip
    return json_response(body, XP_HOLD_CREATED, replay_headers(change.replayed))


async def capture_hold(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    body = await read_body(request)
    req = decode(body, capture_decoder) if body.strip() else CaptureRequest()
    hold_id = request.path_params["hold_id"]
    idem = idempotency(request, caller.caller, caller.user_id, req)
    change = await svc.xp.capture(caller.user_id, caller.caller, hold_id, req.xp_amount, idem)
    if change.outcome is not XpOutcome.DONE:
        return _refused(change)
    response = CaptureResponse(
        hold_id=hold_id, transaction_id=hold_id, xp_captured=change.amount,
        xp_released=change.extra, xp_balance=change.state.balance,
    )  # fmt: skip
    return json_response(response, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def release_hold(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    await read_body(request)  # enforce the body limit; the body itself is not used
    hold_id = request.path_params["hold_id"]
    idem = idempotency(request, caller.caller, caller.user_id, {})
    change = await svc.xp.release(caller.user_id, caller.caller, hold_id, idem)
    if change.outcome is not XpOutcome.DONE:
        return _refused(change)
    body = ReleaseResponse(
        hold_id=hold_id, xp_released=change.amount, xp_balance=change.state.balance
    )
    return json_response(body, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def refund(request: Request) -> Response:
    svc = services(request)
    caller = principal(request)
    if not caller.is_service:
        raise ForbiddenError("Refunds are made by the generation service (a service key)")
    req = decode(await read_body(request), refund_decoder)
    idem = idempotency(request, caller.caller, caller.user_id, req)
    change = await svc.xp.refund(caller.user_id, caller.caller, req.transaction_id, idem)
    if change.outcome is not XpOutcome.DONE:
        return _refused(change)
    body = RefundResponse(
        transaction_id=req.transaction_id, xp_refunded=change.amount, xp_debited=change.extra,
        xp_balance=change.state.balance,
    )  # fmt: skip
    return json_response(body, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def grant(request: Request) -> Response:
    svc = services(request)
    caller = service_caller(request)
    req = decode(await read_body(request), grant_decoder)
    check_body_user(request, req.user_id)
    idem = idempotency(request, caller, req.user_id, req)
    change = await svc.xp.grant(
        req.user_id, caller, req.xp_amount, req.reason, req.expires_at, idem
    )
    if change.outcome is not XpOutcome.DONE:
        return _refused(change)
    body = GrantResponse(
        grant_id=change.ref, user_id=req.user_id, xp_granted=change.amount,
        xp_balance=change.state.balance,
        expires_at=to_datetime(change.expires_at) if change.expires_at else None,
    )  # fmt: skip
    return json_response(body, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def set_subscription(request: Request) -> Response:
    svc = services(request)
    caller = service_caller(request)
    user_id = check_user_id(request.path_params["user_id"], "user_id")
    check_body_user(request, user_id)
    req = decode(await read_body(request), subscription_decoder)
    idem = idempotency(request, caller, user_id, req)
    change = await svc.xp.set_subscription(user_id, caller, req.tier, req.period_start, idem)
    if change.outcome not in (XpOutcome.DONE, XpOutcome.UNCHANGED):
        return _refused(change)
    body = subscription_response(svc.xp.rules, user_id, change)
    return json_response(body, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def cancel_subscription(request: Request) -> Response:
    svc = services(request)
    caller = service_caller(request)
    user_id = check_user_id(request.path_params["user_id"], "user_id")
    check_body_user(request, user_id)
    await read_body(request)
    idem = idempotency(request, caller, user_id, {})
    change = await svc.xp.cancel_subscription(user_id, caller, idem)
    if change.outcome not in (XpOutcome.DONE, XpOutcome.UNCHANGED):
        return _refused(change)
    body = subscription_response(svc.xp.rules, user_id, change)
    return json_response(body, XP_STATUS[change.outcome], replay_headers(change.replayed))


async def tiers(request: Request) -> Response:
    rules = services(request).xp.rules
    body = {
        tier.name: {
            "tier_name": tier.name,
            "tier_display_name": tier.display_name,
            "tier_level": tier.level,
            "monthly_price_aud": tier.price,
            "monthly_xp_allocation": tier.monthly_xp,
            "allowed_generation_types": list(tier.allows),
            "cost_overrides": tier.cost_overrides,
            "rollover": tier.rollover,
        }
        for tier in rules.tiers
        if not tier.retired  # still served to its subscribers, not offered (README: reload)
    }
    return json_response(body)


async def costs(request: Request) -> Response:
    rules = services(request).xp.rules
    body = {kind: {"xp_cost": cost.xp, "model": cost.model} for kind, cost in rules.costs.items()}
    return json_response(body)


routes = [
    Route("/api/v1/subscriptions/check-xp/{generation_type}", check_xp, methods=["GET"]),
    Route("/api/v1/subscriptions/preview-generation-cost", preview_cost, methods=["POST"]),
    Route("/api/v1/subscriptions/tiers", tiers, methods=["GET"]),
    Route("/api/v1/subscriptions/{user_id}", set_subscription, methods=["PUT"]),
    Route("/api/v1/subscriptions/{user_id}", cancel_subscription, methods=["DELETE"]),
    Route("/api/v1/xp/costs", costs, methods=["GET"]),
    Route("/api/v1/xp/balance", balance, methods=["GET"]),
    Route(hot_debit.path, hot_debit, methods=[hot_debit.method]),
    Route(_HOLDS, create_hold, methods=["POST"]),
    Route("/api/v1/xp/holds/{hold_id}/capture", capture_hold, methods=["POST"]),
    Route("/api/v1/xp/holds/{hold_id}/release", release_hold, methods=["POST"]),
    Route("/api/v1/xp/refunds", refund, methods=["POST"]),
    Route("/api/v1/xp/grants", grant, methods=["POST"]),
]
