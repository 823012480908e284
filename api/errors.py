"""Where errors and refused outcomes become HTTP statuses: the only place that assigns them."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.http import json_response
from counters.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    IdempotencyMismatch,
    InvalidRequest,
    MalformedBody,
    NotFound,
    PayloadTooLarge,
    RequestError,
    StorageError,
)
from counters.exp import AwardOutcome
from counters.xp_state import XpOutcome

log = logging.getLogger("counters.api")

REQUEST_ERROR_STATUS: dict[type[RequestError], int] = {
    MalformedBody: 400,
    AuthError: 401,
    ForbiddenError: 403,
    NotFound: 404,
    ConflictError: 409,
    PayloadTooLarge: 413,
    InvalidRequest: 422,
    IdempotencyMismatch: 422,
}

AWARD_STATUS: dict[AwardOutcome, int] = {
    AwardOutcome.AWARDED: 200,
    AwardOutcome.LIMIT_REACHED: 429,
    AwardOutcome.CAP_REACHED: 429,
    AwardOutcome.ALREADY_TRIGGERED: 409,
}

XP_STATUS: dict[XpOutcome, int] = {
    XpOutcome.DONE: 200,
    XpOutcome.UNCHANGED: 200,
    XpOutcome.INSUFFICIENT: 402,
    XpOutcome.TIER_REQUIRED: 403,
    XpOutcome.NOT_FOUND: 404,
    XpOutcome.ALREADY_SETTLED: 409,
    XpOutcome.HOLD_EXPIRED: 409,
    XpOutcome.NOT_CAPTURED: 409,
    XpOutcome.NO_SUBSCRIPTION: 409,
    XpOutcome.PERIOD_START_CONFLICT: 409,
    XpOutcome.TOO_MANY: 409,
    XpOutcome.ABOVE_HELD: 422,
}
XP_HOLD_CREATED = 201  # a new hold (XpOutcome.DONE on POST /api/v1/xp/holds)


# Readiness: 503 takes an instance out of a load balancer.
READINESS_STATUS: dict[bool, int] = {True: 200, False: 503}


def status_of(error: RequestError) -> int:
    for kind in type(error).__mro__:
        if kind in REQUEST_ERROR_STATUS:
            return REQUEST_ERROR_STATUS[kind]
    return 400


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return json_response({"detail": exc.detail}, status_of(exc), headers)


async def storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage unavailable: %s", exc)
    return json_response({"detail": "Storage unavailable, try again"}, 503, {"Retry-After": "1"})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response({"detail": "Internal error"}, 500)


EXCEPTION_HANDLERS = {
    RequestError: request_error,
    StorageError: storage_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
