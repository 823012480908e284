"""Where errors and refused outcomes become HTTP statuses: the only place that assigns them."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.http import Reply, reply_response
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
from counters.metrics import count_store_error
from counters.redis.codes import AwardOutcome, XpOutcome

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


def storage_reply() -> Reply:
    """The one answer when Redis (or Postgres) is unavailable: 503, retry in a second."""
    return 503, {"detail": "Storage unavailable, try again"}, {"Retry-After": "1"}


def error_reply(exc: Exception, route: str) -> Reply:
    """The answer to an error raised while serving ``route`` ("METHOD /path")."""
    if isinstance(exc, RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return status_of(exc), {"detail": exc.detail}, headers
    if isinstance(exc, StorageError):
        count_store_error(exc)
        log.error("storage unavailable: %s", exc)
        return storage_reply()
    if isinstance(exc, HTTPException):
        return exc.status_code, {"detail": exc.detail}, dict(exc.headers or {})
    log.error("unhandled error on %s", route, exc_info=exc)
    return 500, {"detail": "Internal error"}, None


async def _error_response(request: Request, exc: Exception) -> Response:
    return reply_response(error_reply(exc, f"{request.method} {request.url.path}"))


EXCEPTION_HANDLERS = {
    RequestError: _error_response,
    StorageError: _error_response,
    HTTPException: _error_response,
    Exception: _error_response,
}
