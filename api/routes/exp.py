"""EXP and level routes: decode, one call into ``counters.exp.service``, encode."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.asgi import Exchange, HotRoute
from api.errors import AWARD_CODE, AWARD_STATUS, error_body
from api.http import (
    Reply,
    check_body_user,
    decode,
    idempotency,
    idempotency_of,
    json_response,
    principal,
    read_body,
    replay_headers,
    service_caller,
    services,
)
from api.schemas.exp import (
    AdjustResponse,
    GainRequest,
    GainResponse,
    LimitsResponse,
    OwnerResponse,
    ProgressResponse,
    adjust_decoder,
    gain_decoder,
    owner_decoder,
)
from counters.clock import next_utc_midnight
from counters.errors import InvalidRequest, NotFound, shown
from counters.exp.entities import Target
from counters.exp.types import AwardResult
from counters.ids import TARGET_ID, is_whole
from counters.redis.codes import MAX_TOTAL, AwardOutcome
from counters.runtime.services import Services


async def gain(svc: Services, exchange: Exchange) -> Reply:
    caller = svc.auth.authenticate_raw(exchange.authorization, exchange.user_id)
    req = decode(exchange.body, gain_decoder)
    target = gain_target(req)
    idem = idempotency_of(caller.caller, exchange.idempotency_key, _GAIN, caller.user_id, req)
    asked_at = svc.clock.now()  # the day a 429 counted began no later than this
    return award_reply(svc, await svc.exp.award(caller, req.action, target, idem), asked_at)


hot_gain = HotRoute("POST", "/api/exp/gain", gain)
_GAIN = hot_gain.name


def gain_target(req: GainRequest) -> Target | None:
    """The entity a gain names, if any (target_type and target_id come together)."""
    if (req.target_type is None) != (req.target_id is None):
        raise InvalidRequest("target_type and target_id must be sent together")
    if req.target_type is None:
        return None
    return Target(req.target_type, str(req.target_id))


def award_reply(svc: Services, result: AwardResult, asked_at: float) -> Reply:
    """Status, body and headers of an award's outcome (the single and the batch route).

    ``asked_at`` (Unix seconds) is the clock read before the award was sent: a daily limit or
    cap refusal's ``retry_after`` (and ``Retry-After``) counts to the UTC midnight after it, less
    the time already past, at least 1. From the clock at reply time alone, a request counted at
    23:59:59.9999 and answered just after midnight was told to wait a whole day for a limit that
    had already reset (attack3, session 7).

    A replay (README "Idempotency": a repeat returns the first response) reports the wait of
    the limit that refused the first request: to the UTC midnight after the time its record
    kept (``decided_ms``), less the time past since, at least 0 (``Retry-After: 0``, retry
    now; RFC 9110 allows it). Counted from the replay, a 429 at 23:59:59 replayed at 00:00:03
    said 86396 while a new request succeeded at once (reviewer helper-66). A record written
    before records kept that time counts from the replay, as before."""
    status = AWARD_STATUS[result.outcome]
    if result.outcome is AwardOutcome.AWARDED:
        level = result.level
        leveled_up = level > result.previous_level
        # Positional, in the seed's field order (from keywords msgspec takes ~2x as long);
        # tests/exp/test_award_exp.py::test_the_seed_success_body checks every field.
        body = GainResponse(
            result.awarded_to, result.action, True, result.exp_added, result.total_exp, level,
            leveled_up, result.daily_exp_gained, result.daily_exp_cap, result.action_count,
            result.action_limit, svc.exp.progress(result.total_exp),
            svc.rules.entitlements.unlocked_between(result.previous_level, level)
            if leveled_up
            else [],
            result.shadow_refused,
        )  # fmt: skip
        return status, body, replay_headers(result.replayed)  # no dict unless a replay
    headers: dict[str, str] = replay_headers(result.replayed) or {}
    if result.outcome is AwardOutcome.TOTAL_LIMIT:
        # No total in the text: a keyed creator award's replay rebuilds this answer from its
        # stored record, which need not hold the very total the first answer saw.
        detail = f"{result.awarded_to}'s total EXP would pass {MAX_TOTAL:,}"
        return status, error_body(detail, AWARD_CODE[result.outcome]), headers
    if result.outcome is AwardOutcome.ALREADY_TRIGGERED:
        assert result.target is not None
        detail = (
            f"{result.actor} already triggered {result.action} on {result.target.type} "
            f"{result.target.id}; no EXP awarded"
        )
        return status, error_body(detail, AWARD_CODE[result.outcome]), headers
    # The seed's text, then the numbers it holds (and the seconds until they reset) as fields.
    if result.decided_ms:
        retry_after = max(next_utc_midnight(result.decided_ms / 1000) - int(svc.clock.now()), 0)
    else:
        retry_after = max(next_utc_midnight(asked_at) - int(svc.clock.now()), 1)
    headers["Retry-After"] = str(retry_after)
    numbers: dict[str, object]
    if result.outcome is AwardOutcome.LIMIT_REACHED:
        detail = f"Daily limit reached for {result.action} ({result.action_limit}/day)"
        numbers = {"action": result.action, "action_limit": result.action_limit}
    else:
        detail = f"Daily EXP cap reached ({result.daily_exp_cap} EXP/day for level {result.level})"
        numbers = {"daily_exp_cap": result.daily_exp_cap, "level": result.level}
    numbers["retry_after"] = retry_after
    return status, error_body(detail, AWARD_CODE[result.outcome]) | numbers, headers


async def levels(request: Request) -> Response:
    rules = services(request).exp.rules
    body = {
        str(level.level): {
            "name": level.name,
            "unlock": level.unlock,
            "exp_required": level.exp_required,
        }
        for level in rules.levels
    }
    return json_response(body)


async def limits(request: Request) -> Response:
    svc = services(request)
    usage = await svc.exp.usage(principal(request).user_id)
    actions = svc.exp.rules.actions
    body = LimitsResponse(
        level=usage.level,
        daily_exp_gained=usage.daily_exp_gained,
        daily_exp_cap=usage.daily_exp_cap,
        remaining_exp=usage.remaining_exp,
        daily_action_counts=usage.daily_action_counts,
        action_limits={name: action.daily_limit for name, action in actions.items()},
        exp_rewards={name: action.exp for name, action in actions.items()},
    )
    return json_response(body)


async def exp_progress(request: Request) -> Response:
    svc = services(request)
    usage = await svc.exp.usage(principal(request).user_id)
    body = ProgressResponse(
        user_id=usage.user_id,
        total_exp=usage.total_exp,
        level=usage.level,
        progress=svc.exp.progress(usage.total_exp),
    )
    return json_response(body)


async def adjust(request: Request) -> Response:
    svc = services(request)
    caller = service_caller(request)
    req = decode(await read_body(request), adjust_decoder)
    check_body_user(request, req.user_id)
    idem = idempotency(request, caller, req.user_id, req)
    result = await svc.exp.adjust(req.user_id, req.delta, req.reason, caller, idem)
    body = AdjustResponse(
        user_id=result.user_id,
        applied_delta=result.applied_delta,
        total_exp=result.total_exp,
        level=result.level,
        leveled_up=result.level > result.previous_level,
        progress=svc.exp.progress(result.total_exp),
        unlocked_features=svc.rules.entitlements.unlocked_between(
            result.previous_level, result.level
        ),
    )
    return json_response(body, 200, replay_headers(result.replayed))


async def assign_owner(request: Request) -> Response:
    svc = services(request)
    service_caller(request)
    target_type = request.path_params["target_type"]
    target_id = request.path_params["target_id"]
    known = {t for action in svc.exp.rules.actions.values() for t in action.target_types}
    if target_type not in known:
        raise NotFound(
            f"Unknown target_type '{shown(target_type)}'; known: {', '.join(sorted(known))}"
        )
    if not is_whole(TARGET_ID, target_id):
        raise InvalidRequest("target_id must be 1-128 letters, digits and _.- characters")
    req = decode(await read_body(request), owner_decoder)
    check_body_user(request, req.owner_id)  # as a grant's: the route acts for the body's owner
    previous = await svc.entities.assign(Target(target_type, target_id), req.owner_id)
    body = OwnerResponse(
        target_type=target_type, target_id=target_id, owner_id=req.owner_id,
        previous_owner_id=previous,
    )  # fmt: skip
    return json_response(body)


routes = [
    Route(hot_gain.path, hot_gain, methods=[hot_gain.method]),
    Route("/api/levels", levels, methods=["GET"]),
    Route("/api/exp/limits", limits, methods=["GET"]),
    Route("/api/exp/progress", exp_progress, methods=["GET"]),
    Route("/api/admin/exp/adjust", adjust, methods=["POST"]),
    Route("/api/entities/{target_type}/{target_id}", assign_owner, methods=["PUT"]),
]
