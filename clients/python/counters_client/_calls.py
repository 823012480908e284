"""What each client method sends and how an answer becomes a result or an exception: shared by
the async and the sync client, which differ only in how they wait."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import quote

import httpx2
import msgspec

from counters_client.errors import (
    BadResponse,
    Conflict,
    CountersError,
    ExpRefused,
    Forbidden,
    InvalidId,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
    error_for,
)
from counters_client.types import (
    Award,
    Balance,
    Capture,
    Cost,
    Debit,
    Grant,
    Hold,
    Limits,
    Refund,
    Release,
    Subscription,
    Tier,
    UserProgress,
    XpCheck,
    XpCheckDict,
)

T = TypeVar("T")
log = logging.getLogger("counters_client")

Target = tuple[str, str | int]  # (target_type, target_id), e.g. ("character", 123)
RETRY_STATUSES = frozenset({502, 503, 504})
FALLBACK_MESSAGE = "Unable to check your XP credits right now."
FALLBACK_GUIDANCE = (
    "⚠️ We couldn't check your XP credits just now. Please try again in a moment, "
    "or visit your subscription page to see your plan."
)


# The service's shapes of a user id and a text target id (its counters/ids.py; the client
# imports nothing from the service, and tests/clients/ checks that the two agree). A user id is
# never one of the forms the ledger records for other actors (system, import, reconcile,
# service:*, user:*; matched case-sensitively): the service refuses those with a 422.
USER_ID = re.compile(
    r"(?!(?:system|import|reconcile)$(?!\n)|service:|user:)[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}"
)
TARGET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# An integer target id: the service takes 0 to 2**63 - 1 (api/schemas/exp.py's ``TargetId``, a
# signed 64-bit integer's non-negative range) and refuses a bool (msgspec does not read JSON
# ``true`` as an int), so the client refuses the same (reviewer helper-63: -5, 2**63 and True
# were sent, refused with a 422, and the fail-open award swallowed it).
MAX_TARGET_ID = 2**63 - 1
TARGET_ID_RULE = (
    f"an integer from 0 to {MAX_TARGET_ID}, or 1-128 letters, digits and _.- starting with a"
    " letter or digit"
)


def checked_id(kind: str, value: str, shape: re.Pattern[str]) -> str:
    """``value`` when it is a whole id of ``shape``, else ``InvalidId`` before anything is sent
    (the service would answer 422; an award that fails open would swallow it as an outage)."""
    if isinstance(value, str) and shape.fullmatch(value):
        return value
    raise invalid_id(kind, value)


def quoted(value: object) -> str:
    """``value`` as a message quotes a caller's value: its repr, escaped, cut when long."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses > 4,300 digits
        return f"(an integer of {value.bit_length()} bits)"
    shown = repr(value)
    if len(shown) > 80:
        size = len(value) if isinstance(value, str) else len(shown)
        shown = f"{shown[:60]}... ({size} characters)"
    return printable(shown)


def invalid_id(kind: str, value: object, rule: str = "") -> InvalidId:
    """The ``InvalidId`` refusing ``value`` as a ``kind`` (then ``rule``, when given)."""
    detail = f"{kind} {quoted(value)} is not a {kind} the service accepts"
    return InvalidId(0, "invalid_request", detail + (f" ({rule})" if rule else ""), {})


def checked_target(target: Target) -> Target:
    """``target`` as the ``(target_type, target_id)`` pair to send; before anything is sent,
    ``TypeError`` for what is not such a pair (a tuple or list of two) and ``InvalidId`` for a
    target id the service would refuse (``TARGET_ID_RULE``). One shape, not the JS client's
    ``{"type": ..., "id": ...}`` too: a mapping raised a bare ``KeyError: 1`` (reviewer
    helper-63), and now says which shape the Python client takes; mypy flags it before that."""
    if not isinstance(target, tuple | list) or len(target) != 2:
        raise TypeError(
            "target must be a (target_type, target_id) pair such as ('character', 123), not"
            f" {quoted(target)}"
        )
    target_type, target_id = target
    if isinstance(target_id, str):
        return target_type, checked_id("target_id", target_id, TARGET_ID)
    if (
        isinstance(target_id, int)
        and not isinstance(target_id, bool)
        and 0 <= target_id <= MAX_TARGET_ID
    ):
        return target_type, target_id
    raise invalid_id("target_id", target_id, TARGET_ID_RULE)


def checked_user(user_id: str | None) -> str | None:
    """``user_id`` (None: the caller itself), or ``InvalidId``: 1-128 of ``A-Za-z0-9._@:-``,
    starting with a letter or digit, and not a reserved actor's form (``system``, ...)."""
    return None if user_id is None else checked_id("user_id", user_id, USER_ID)


def printable(text: str) -> str:
    """``text`` with what is not printable escaped (a newline as backslash-n, ESC as ``\\x1b``),
    so that a value from a caller cannot forge a log line or color a terminal."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class Call(NamedTuple, Generic[T]):
    """One request: what to send, what type the 2xx body decodes to, and whether it writes
    (a write gets an Idempotency-Key, so that retrying it is safe)."""

    method: str
    path: str
    result: type[T] | Any
    json: Any = None
    params: dict[str, str] | None = None
    user_id: str | None = None
    write: bool = False
    idempotency_key: str | None = None


class Options(NamedTuple):
    """A client's settings (see ``AsyncCountersClient``)."""

    base_url: str
    service_key: str | None
    token: str | None
    timeout: float
    retries: int
    backoff: float
    exp_fail_open: bool
    deadline: float


# Another attempt is not started with less than this left of the deadline (seconds).
MIN_ATTEMPT_SECONDS = 0.05


class Budget:
    """The time one operation may take, every attempt and backoff included (``deadline``
    seconds from its start; gRPC's and Google's client libraries call this a deadline, against
    a per-attempt timeout). Each attempt waits at most ``timeout`` and never past the deadline,
    so a stalled service costs a caller ``deadline`` seconds, not ``(retries + 1) * timeout``."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.end = time.monotonic() + options.deadline

    def attempt_timeout(self) -> float:
        """Seconds the next attempt may wait for its answer."""
        return max(min(self.options.timeout, self.left()), MIN_ATTEMPT_SECONDS)

    def left(self) -> float:
        """Seconds left of the deadline (negative once it passed)."""
        return self.end - time.monotonic()

    def check(self, request: httpx2.Request) -> None:
        """Raise ``httpx2.ReadTimeout`` once the deadline passed (between a reply's chunks)."""
        if self.left() <= 0:
            raise httpx2.ReadTimeout("the call's deadline passed while reading", request=request)

    def retry_after(
        self, attempt: int, error: BaseException | None, status: int | None
    ) -> float | None:
        """The backoff before attempt ``attempt + 1`` after attempt ``attempt`` ended with
        ``error`` (no answer) or ``status``; None when that answer is final (not retryable,
        retries spent, or the deadline would pass before another attempt could get an answer)."""
        if not retryable(error, status) or attempt >= self.options.retries:
            return None
        pause = backoff_seconds(self.options, attempt)
        if time.monotonic() + pause + MIN_ATTEMPT_SECONDS > self.end:
            return None
        return pause


def headers_for(options: Options, call: Call[Any], key: str | None) -> dict[str, str]:
    """Auth, the user acted for (service keys only) and the Idempotency-Key of one attempt."""
    headers: dict[str, str] = {}
    secret = options.service_key or options.token
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if call.user_id is not None and options.service_key:
        headers["X-User-Id"] = call.user_id
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def idempotency_key(call: Call[Any]) -> str | None:
    """The key every attempt of a write sends: the caller's, or one made for this call."""
    if not call.write:
        return None
    return call.idempotency_key or f"cc-{uuid.uuid4().hex}"


def retryable(error: BaseException | None, status: int | None) -> bool:
    """Whether another attempt may succeed: no answer (connect, read timeout) or 502/503/504."""
    if error is not None:
        return isinstance(error, httpx2.TransportError)
    return status in RETRY_STATUSES


def backoff_seconds(options: Options, attempt: int) -> float:
    return float(options.backoff * (2**attempt))


def result_of(call: Call[T], key: str | None, response: httpx2.Response, content: bytes) -> T:
    """The typed result of a 2xx answer (``content``: its whole body), or the exception its
    ``code`` names; a 2xx body that does not decode to the result type is ``BadResponse``.
    Every exception carries ``key``, the Idempotency-Key the attempts sent (None: a read)."""
    status = response.status_code
    if status < 300:
        try:
            decoded: T = msgspec.json.decode(content, type=call.result)
        except msgspec.DecodeError as exc:  # ValidationError included
            detail = f"{call.method} {call.path}: {status} body does not decode: {exc}"
            raise keyed(BadResponse(status, "bad_response", detail, {}), key) from exc
        return decoded
    try:
        body = json.loads(content)
    except ValueError:
        body = {"detail": content.decode("utf-8", "replace")}
    raise keyed(error_for(status, body, response.headers.get("retry-after")), key)


def unreachable(call: Call[Any], key: str | None, error: BaseException) -> Unavailable:
    """The exception for a call that got no (whole) answer after its retries, or whose
    deadline passed while an answer was still arriving."""
    detail = f"{call.method} {call.path}: {type(error).__name__}: {error}"
    return keyed(Unavailable(0, "unavailable", detail, {}), key)


E = TypeVar("E", bound=CountersError)


def keyed(error: E, key: str | None) -> E:
    """``error`` carrying the Idempotency-Key its call's attempts sent, so that the caller can
    retry the write with it (an ``outcome_unknown``, an ``Unavailable``)."""
    error.idempotency_key = key
    return error


def fallback_check(
    generation_type: str,
    user_id: str | None,
    error: CountersError,
    tables: tuple[dict[str, Tier], dict[str, Cost]] | None,
) -> XpCheckDict:
    """check_xp_availability's answer when the service cannot say (logged as a warning): not
    sufficient, generic guidance (the seed: "System errors - Falls back to generic guidance
    messages"); the cost when the costs table was already fetched, else 0. ``code`` says why
    (``invalid_request`` for an ``InvalidId``: nothing was sent, and a tier gate stays shut)."""
    log.warning(
        "check-xp %s for %s: %s; answering not sufficient",
        printable(generation_type), printable(str(user_id)), printable(str(error)),
    )  # fmt: skip
    cost = tables[1].get(generation_type) if tables else None
    xp_required = cost.xp_cost if cost else 0
    return {
        "has_sufficient_xp": False,
        "xp_balance": 0,
        "xp_required": xp_required,
        "xp_deficit": xp_required,
        "message": FALLBACK_MESSAGE,
        "guidance": FALLBACK_GUIDANCE,
        "subscription_url": "/subscriptions",
        "current_tier": None,
        "recommended_tier": None,
        "code": error.code,
    }


def check_dict(check: XpCheck) -> XpCheckDict:
    body: XpCheckDict = msgspec.to_builtins(check)
    if check.guidance is None:
        body.pop("guidance", None)
    return body


def fails_loudly(error: CountersError) -> bool:
    """Errors that even a fail-open award raises: the client's own credentials are wrong (401:
    a bad or revoked service key or token; 403: a key not allowed to act for users), or the
    caller's own id is not one (``InvalidId``, refused before sending). They are a mistake that
    no retry or later call fixes; swallowed, every award would be lost in silence."""
    return isinstance(error, Unauthorized | Forbidden | InvalidId)


def log_unawarded(action: str, user_id: str | None, error: CountersError) -> None:
    """An award that failed open: a rule's refusal (a limit, the cap, already triggered, one's
    own entity: ``ExpRefused``, and the other 409s) is routine (debug); the rest are warnings:
    outages, answers that do not decode, and any other error answer (a 422 for an unknown
    action, a target type the action does not take; a 404 for an entity with no recorded
    owner), which is the caller's mistake, not an outage, and would otherwise lose every such
    award unseen (reviewer helper-63: a 422 was logged at debug)."""
    routine = isinstance(error, ExpRefused | Conflict)
    level = logging.DEBUG if routine else logging.WARNING
    log.log(
        level, "no EXP for %s by %s: %s", printable(action), printable(str(user_id)),
        printable(str(error)),
    )  # fmt: skip


def cost_on_tier(
    tiers: dict[str, Tier],
    costs: dict[str, Cost],
    generation_type: str,
    user_tier: int | str | None,
) -> int:
    """XP one generation costs on a tier (level, name or display name; None: the base cost),
    from the tables the service sent. What the service answers for the same lookup (its
    ``counters.xp.guidance.get_generation_cost``), with status 0 (decided here, nothing sent
    for it): ``NotFound`` (code ``not_found``) for an unknown generation type, and
    ``InvalidRequest`` (``invalid_request``) for an unknown tier or a bool (``True == 1``
    would have matched level 1). They were bare ``KeyError``s (reviewer helper-63)."""
    if generation_type not in costs:
        known_types = ", ".join(costs)
        detail = f"Unknown generation type {quoted(generation_type)}; known types: {known_types}"
        raise NotFound(0, "not_found", detail, {})
    base = costs[generation_type].xp_cost
    if user_tier is None:
        return base
    for tier in tiers.values():
        if not isinstance(user_tier, bool) and user_tier in (
            tier.tier_level, tier.tier_name, tier.tier_display_name,
        ):  # fmt: skip
            return tier.cost_overrides.get(generation_type, base)
    known = ", ".join(f"{tier.tier_level} ({tier.tier_name})" for tier in tiers.values())
    detail = f"Unknown tier {quoted(user_tier)}; known tiers: {known}"
    raise InvalidRequest(0, "invalid_request", detail, {})


class Calls:
    """The request of every operation (one place for paths, bodies and result types)."""

    @staticmethod
    def award(
        action: str, user_id: str | None, target: Target | None, key: str | None
    ) -> Call[Award]:
        body: dict[str, Any] = {"action": action}
        if target is not None:
            target_type, target_id = checked_target(target)
            body |= {"target_type": target_type, "target_id": target_id}
        return Call("POST", "/api/exp/gain", Award, body, None, checked_user(user_id), True, key)

    @staticmethod
    def progress(user_id: str | None) -> Call[UserProgress]:
        return Call("GET", "/api/exp/progress", UserProgress, user_id=checked_user(user_id))

    @staticmethod
    def limits(user_id: str | None) -> Call[Limits]:
        return Call("GET", "/api/exp/limits", Limits, user_id=checked_user(user_id))

    @staticmethod
    def check_xp(generation_type: str, user_id: str | None, guidance: bool) -> Call[XpCheck]:
        path = f"/api/v1/subscriptions/check-xp/{quote(generation_type, safe='')}"
        params = {"include_guidance": "true" if guidance else "false"}
        return Call("GET", path, XpCheck, params=params, user_id=checked_user(user_id))

    @staticmethod
    def charge(generation_type: str, user_id: str | None, key: str | None, hold: bool) -> Call[Any]:
        path, result = ("/api/v1/xp/holds", Hold) if hold else ("/api/v1/xp/debit", Debit)
        body = {"generation_type": generation_type}
        return Call("POST", path, result, body, None, checked_user(user_id), True, key)

    @staticmethod
    def capture(
        hold_id: str, xp_amount: int | None, user_id: str | None, key: str | None
    ) -> Call[Capture]:
        body = {} if xp_amount is None else {"xp_amount": xp_amount}
        path = f"/api/v1/xp/holds/{quote(hold_id, safe='')}/capture"
        return Call("POST", path, Capture, body, None, checked_user(user_id), True, key)

    @staticmethod
    def release(hold_id: str, user_id: str | None, key: str | None) -> Call[Release]:
        path = f"/api/v1/xp/holds/{quote(hold_id, safe='')}/release"
        return Call("POST", path, Release, None, None, checked_user(user_id), True, key)

    @staticmethod
    def refund(transaction_id: str, user_id: str, key: str | None) -> Call[Refund]:
        body = {"transaction_id": transaction_id}
        return Call(
            "POST", "/api/v1/xp/refunds", Refund, body, None, checked_user(user_id), True, key
        )

    @staticmethod
    def grant(
        user_id: str, xp_amount: int, reason: str, expires_at: datetime | None, key: str | None
    ) -> Call[Grant]:
        body: dict[str, Any] = {
            "user_id": checked_id("user_id", user_id, USER_ID), "xp_amount": xp_amount,
            "reason": reason,
        }  # fmt: skip
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return Call("POST", "/api/v1/xp/grants", Grant, body, None, None, True, key)

    @staticmethod
    def subscribe(user_id: str, tier: str) -> Call[Subscription]:
        path = f"/api/v1/subscriptions/{quote(checked_id('user_id', user_id, USER_ID), safe='')}"
        return Call("PUT", path, Subscription, {"tier": tier})

    @staticmethod
    def balance(user_id: str | None) -> Call[Balance]:
        return Call("GET", "/api/v1/xp/balance", Balance, user_id=checked_user(user_id))

    @staticmethod
    def tiers() -> Call[dict[str, Tier]]:
        return Call("GET", "/api/v1/subscriptions/tiers", dict[str, Tier])

    @staticmethod
    def costs() -> Call[dict[str, Cost]]:
        return Call("GET", "/api/v1/xp/costs", dict[str, Cost])
