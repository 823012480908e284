"""Every exception the client raises, chosen by the error body's ``code``.

CountersError                 status, code, detail, the whole body, idempotency_key
├── Unavailable               no answer, 503 (storage_unavailable, outcome_unknown), 502/504
├── BadResponse               a 2xx whose body is not the result's shape (bad_response)
├── Unauthorized              401 unauthorized
├── Forbidden                 403 forbidden
├── NotFound                  404 not_found
├── InvalidRequest            400/413/422 (invalid_request, malformed_body, ...)
│   ├── IdempotencyKeyReused  422 idempotency_key_reused
│   └── InvalidId             status 0: a user or target id refused before sending (ValueError)
├── ExpRefused                an award that gave nothing
│   ├── DailyLimitReached     429 daily_limit_reached (retry_after: seconds)
│   ├── DailyCapReached       429 daily_cap_reached (retry_after: seconds)
│   ├── AlreadyTriggered      409 already_triggered
│   ├── SelfAction            409 self_action
│   └── AlreadyOwned          409 already_owned
├── XpRefused                 the seed's 402/403 body (message, guidance, recommended_tier)
│   ├── InsufficientXp        402 insufficient_xp (xp_balance, xp_required, xp_deficit)
│   └── TierRequired          403 tier_required
└── Conflict                  other 409s (already_settled, hold_expired, ...)
"""

from __future__ import annotations

from typing import Any


class CountersError(Exception):
    """An error answer (or no answer) from the service: ``status`` (the HTTP status; 0 when
    no answer came), ``code`` (the body's ``code``; branch on it), ``detail`` (for people),
    ``body`` (the whole error body), ``retry_after`` (seconds, from ``Retry-After``) and
    ``idempotency_key``: the Idempotency-Key every attempt of a write call sent (the caller's,
    or the one the client made for the call), None for a read. A write whose outcome is not
    known (``Unavailable``: ``outcome_unknown``, or no answer after the retries) may be retried
    with that key: the service applies it at most once and replays the first answer."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body
        self.retry_after: int | None = None
        self.idempotency_key: str | None = None


class Unavailable(CountersError):
    """The service could not be reached, timed out, said its storage is down (503), or a
    gateway in front of it answered 502/504 (retry with the same Idempotency-Key)."""


class BadResponse(CountersError):
    """A 2xx answer whose body does not decode to the call's result (``code`` "bad_response",
    ``status`` the answer's, ``detail`` names the decode error): a server that is not this
    service, or a broken proxy. Whether a write it answered was applied is not known."""


class Unauthorized(CountersError):
    pass


class Forbidden(CountersError):
    pass


class NotFound(CountersError):
    pass


class InvalidRequest(CountersError):
    pass


class IdempotencyKeyReused(InvalidRequest):
    pass


class InvalidId(InvalidRequest, ValueError):
    """An id the service would refuse (a user id or target id not of its shape: empty, over 128
    characters, a control character; an integer target id outside 0 to 2**63 - 1, or a bool),
    refused by the client before anything is sent (status 0, code ``invalid_request``). Every
    call raises it, the fail-open award too: it is the caller's bug, not an outage; swallowed,
    the award would be lost as if the service were down. Only ``check_xp_availability``, which
    never raises, answers not sufficient instead (its ``code`` ``invalid_request``), so that a
    tier gate stays shut. Also a ``ValueError``."""


class ExpRefused(CountersError):
    """An award refused by a rule: nothing was awarded."""


class DailyLimitReached(ExpRefused):
    pass


class DailyCapReached(ExpRefused):
    pass


class AlreadyTriggered(ExpRefused):
    pass


class SelfAction(ExpRefused):
    pass


class AlreadyOwned(ExpRefused):
    pass


class XpRefused(CountersError):
    """A debit or hold refused with the seed's middleware body (``body`` holds all of it)."""

    @property
    def xp_balance(self) -> int:
        return int(self.body.get("xp_balance", 0))

    @property
    def xp_required(self) -> int:
        return int(self.body.get("xp_required", 0))

    @property
    def xp_deficit(self) -> int:
        return int(self.body.get("xp_deficit", 0))

    @property
    def guidance(self) -> str | None:
        guidance = self.body.get("guidance")
        return guidance if isinstance(guidance, str) else None


class InsufficientXp(XpRefused):
    pass


class TierRequired(XpRefused):
    pass


class Conflict(CountersError):
    pass


BY_CODE: dict[str, type[CountersError]] = {
    "storage_unavailable": Unavailable,
    "outcome_unknown": Unavailable,  # retried with the same Idempotency-Key, as every 503
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "invalid_request": InvalidRequest,
    "malformed_body": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "idempotency_key_reused": IdempotencyKeyReused,
    "daily_limit_reached": DailyLimitReached,
    "daily_cap_reached": DailyCapReached,
    "already_triggered": AlreadyTriggered,
    "self_action": SelfAction,
    "already_owned": AlreadyOwned,
    "insufficient_xp": InsufficientXp,
    "tier_required": TierRequired,
}
_BY_STATUS: dict[int, type[CountersError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: InvalidRequest, 422: InvalidRequest, 503: Unavailable,
    # A gateway's 502/504 (after the retries): the service may have applied a write it never
    # answered, so it is Unavailable, retried with the same Idempotency-Key, like a 503.
    502: Unavailable, 504: Unavailable,
}  # fmt: skip


def error_for(status: int, body: Any, retry_after: str | None = None) -> CountersError:
    """The exception for an error answer: by its ``code``, else by its status."""
    if not isinstance(body, dict):
        body = {"detail": str(body)}
    code = str(body.get("code") or body.get("error") or f"http_{status}")
    detail = str(body.get("detail") or body.get("message") or "")
    kind = BY_CODE.get(code) or _BY_STATUS.get(status, CountersError)
    error = kind(status, code, detail, body)
    # ASCII digits only, as the JS client's /^\d+$/: str.isdigit also takes "²", which int()
    # cannot read, and a proxy's odd header would have raised out of building the error; and
    # at most 64 of them (int() refuses more than 4,300 digits).
    if (
        retry_after is not None
        and len(retry_after) <= 64
        and retry_after.isascii()
        and retry_after.isdigit()
    ):
        error.retry_after = int(retry_after)
    return error
