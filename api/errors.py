"""Where errors and refused outcomes become HTTP statuses and error codes: the only place that
assigns them.

Every error body is ``{"detail": <the seed's or our English text>, "code": <a stable name>}``
(the seed's 402/403 middleware body keeps its ``error`` and adds ``code``); callers branch on
``code``, never on the text. ``ERROR_CODES`` lists every code an answer can carry, with what it
means: the OpenAPI document and the clients are built from it.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.http import Reply, reply_response
from counters.errors import (
    AuthError,
    BacklogFull,
    ConflictError,
    ForbiddenError,
    IdempotencyMismatch,
    InvalidRequest,
    MalformedBody,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    RequestError,
    StorageError,
    UnsupportedMediaType,
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
    UnsupportedMediaType: 415,
    InvalidRequest: 422,
    IdempotencyMismatch: 422,
}

AWARD_STATUS: dict[AwardOutcome, int] = {
    AwardOutcome.AWARDED: 200,
    AwardOutcome.LIMIT_REACHED: 429,
    AwardOutcome.CAP_REACHED: 429,
    AwardOutcome.ALREADY_TRIGGERED: 409,
    AwardOutcome.TOTAL_LIMIT: 409,
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
    XpOutcome.TOTAL_LIMIT: 409,
    XpOutcome.ABOVE_HELD: 422,
}
XP_CODE: dict[XpOutcome, str] = {
    XpOutcome.INSUFFICIENT: "insufficient_xp",
    XpOutcome.TIER_REQUIRED: "tier_required",
    XpOutcome.NOT_FOUND: "not_found",
    XpOutcome.ALREADY_SETTLED: "already_settled",
    XpOutcome.HOLD_EXPIRED: "hold_expired",
    XpOutcome.NOT_CAPTURED: "not_captured",
    XpOutcome.NO_SUBSCRIPTION: "no_subscription",
    XpOutcome.PERIOD_START_CONFLICT: "period_start_conflict",
    XpOutcome.TOO_MANY: "too_many_live",
    XpOutcome.TOTAL_LIMIT: "total_limit",
    XpOutcome.ABOVE_HELD: "above_held",
}
AWARD_CODE: dict[AwardOutcome, str] = {
    AwardOutcome.LIMIT_REACHED: "daily_limit_reached",
    AwardOutcome.CAP_REACHED: "daily_cap_reached",
    AwardOutcome.ALREADY_TRIGGERED: "already_triggered",
    AwardOutcome.TOTAL_LIMIT: "total_limit",
}
XP_HOLD_CREATED = 201  # a new hold (XpOutcome.DONE on POST /api/v1/xp/holds)


# Readiness: 503 takes an instance out of a load balancer.
READINESS_STATUS: dict[bool, int] = {True: 200, False: 503}


# Every code an error body can carry, and what it means (the OpenAPI document lists them).
ERROR_CODES: dict[str, str] = {
    "invalid_request": "wrong types, missing fields or bad values (422)",
    "malformed_body": "the body is not JSON (400)",
    "repeated_header": "Authorization, X-User-Id or Idempotency-Key sent more than once (400)",
    "malformed_request": "bytes that do not parse as an HTTP request (400; the connection closes)",
    "request_timeout": (
        "the request did not arrive whole within COUNTERS_REQUEST_READ_TIMEOUT_SECONDS (408)"
    ),
    "header_too_large": "the request head is over COUNTERS_MAX_HEADER_BYTES (431)",
    "transfer_coding_not_supported": (
        "a Transfer-Encoding other than chunked, e.g. gzip (501; the connection closes)"
    ),
    "unauthorized": "no, malformed, expired or unknown credentials (401)",
    "forbidden": "the credentials may not do this (403)",
    "not_found": "an unknown route, target, generation type, hold or transaction (404)",
    "method_not_allowed": "the route does not take this method (405)",
    "cors_refused": "a CORS preflight from an origin, method or header not allowed (400)",
    "conflict": "the resource's state forbids the request (409)",
    "self_action": "a creator-targeted action on the caller's own entity (409)",
    "already_owned": "the entity is already owned by another user (409)",
    "already_triggered": "this actor already triggered this action on this entity (409)",
    "payload_too_large": "the body is over COUNTERS_MAX_BODY_BYTES (413)",
    "unsupported_media_type": (
        "a body declared (Content-Type) as other than JSON: application/json, or any"
        " application/*+json, or none (415)"
    ),
    "idempotency_key_reused": "an Idempotency-Key reused with a different request (422)",
    "daily_limit_reached": "the action's daily limit is reached; Retry-After: midnight UTC (429)",
    "daily_cap_reached": "the level's daily EXP cap is reached; Retry-After: midnight UTC (429)",
    "insufficient_xp": "the balance is short of the generation's cost (402)",
    "tier_required": "no subscription, or the tier does not allow the generation (403)",
    "already_settled": "the hold was captured or released, or the debit refunded (409)",
    "hold_expired": "the hold expired; its XP went back to the balance (409)",
    "not_captured": "a refund of a hold that was never captured (409)",
    "no_subscription": "no subscription to cancel (409)",
    "tier_retired": "a subscription to a tier the rules retired (422)",
    "period_start_conflict": "period_start differs from the subscription's start (409)",
    "total_limit": "the change would take a total EXP, or an XP balance with its held XP, past"
    " 10^15 (409)",
    "too_many_live": "the most holds or top-ups that may be open at once are open (409)",
    "above_held": "a capture of more XP than the hold holds (422)",
    "storage_unavailable": (
        "Redis (or Postgres) did not answer and the change was not sent: nothing was applied;"
        " retry (503)"
    ),
    "outcome_unknown": (
        "Redis did not answer a command it was sent (a stall or a lost connection): the write"
        " may have been applied; retry it with the same Idempotency-Key, which is safe and"
        " replays the first answer (503)"
    ),
    "internal_error": "a bug: the service logged it (500)",
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
STORAGE_DETAIL = "Storage unavailable, try again"
# A timed-out write may still run when a stalled Redis resumes (it was already sent), so the answer
# cannot promise "not applied"; it says how to retry safely, as Stripe's 5xx do (issue #11).
OUTCOME_UNKNOWN_DETAIL = (
    "Storage did not answer in time: the change may have been applied; "
    "retry with the same Idempotency-Key (it replays the first answer)"
)


def error_body(detail: str, code: str) -> dict[str, object]:
    """The body of every error answer (and of every refused batch item)."""
    return {"detail": detail, "code": code}


def status_of(error: RequestError) -> int:
    for kind in type(error).__mro__:
        if kind in REQUEST_ERROR_STATUS:
            return REQUEST_ERROR_STATUS[kind]
    return 400


def storage_reply(outcome_unknown: bool = False) -> Reply:
    """The answer when Redis (or Postgres) is unavailable: 503, retry in a second; its code says
    whether the change certainly was not applied (``storage_unavailable``) or may have been
    (``outcome_unknown``: a command sent to Redis got no reply, ``OutcomeUnknown``)."""
    if outcome_unknown:
        return 503, error_body(OUTCOME_UNKNOWN_DETAIL, "outcome_unknown"), {"Retry-After": "1"}
    return 503, error_body(STORAGE_DETAIL, "storage_unavailable"), {"Retry-After": "1"}


def error_reply(exc: Exception, route: str) -> Reply:
    """The answer to an error raised while serving ``route`` ("METHOD /path")."""
    if isinstance(exc, RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return status_of(exc), error_body(exc.detail, exc.code), headers
    if isinstance(exc, BacklogFull):  # the durability window is full: the numbers, no alarm
        return 503, error_body(str(exc), "storage_unavailable"), {"Retry-After": "1"}
    if isinstance(exc, StorageError):
        count_store_error(exc)
        log.error("storage unavailable: %s", exc)
        # A read changes nothing: its timed-out command is plain unavailability, never "the
        # change may have been applied".
        reads = route.startswith(("GET ", "HEAD "))
        return storage_reply(isinstance(exc, OutcomeUnknown) and not reads)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        return exc.status_code, error_body(exc.detail, code), dict(exc.headers or {})
    log.error("unhandled error on %s", route, exc_info=exc)
    return 500, error_body("Internal error", "internal_error"), None


async def _error_response(request: Request, exc: Exception) -> Response:
    return reply_response(error_reply(exc, f"{request.method} {request.url.path}"))


EXCEPTION_HANDLERS = {
    RequestError: _error_response,
    StorageError: _error_response,
    HTTPException: _error_response,
    Exception: _error_response,
}
