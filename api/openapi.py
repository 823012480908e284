"""The API contract as an OpenAPI 3.1 document, generated from the routes' msgspec types.

``OPERATIONS`` names every route once: its request type, its answers by status and who may call
it. ``document()`` turns that table into OpenAPI 3.1 with the schemas msgspec emits
(``msgspec.json.schema_components``: JSON Schema 2020-12, OpenAPI 3.1's own dialect), so a field
added to a request or response Struct is in the contract with no second place to edit.
Schemathesis holds the running service to this document (``tests/api/test_openapi.py``).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from api.errors import ERROR_CODES
from api.routes.batch import BatchItem, BatchResponse
from api.schemas.entitlements import EntitlementsResponse, FeatureResponse
from api.schemas.exp import (
    AdjustRequest,
    AdjustResponse,
    GainRequest,
    GainResponse,
    LimitsResponse,
    OwnerRequest,
    OwnerResponse,
    ProgressResponse,
    TargetType,
)
from api.schemas.xp import (
    BalanceResponse,
    CaptureRequest,
    CaptureResponse,
    DebitResponse,
    GenerationRequest,
    GrantRequest,
    GrantResponse,
    HoldResponse,
    PreviewRequest,
    PreviewResponse,
    RefundRequest,
    RefundResponse,
    Refusal,
    ReleaseResponse,
    SubscriptionRequest,
    SubscriptionResponse,
)
from counters.exp.leaderboard import MAX_LIMIT, Board, Period
from counters.history import MAX_LIMIT as HISTORY_MAX
from counters.history import HistoryPage
from counters.ids import IdempotencyKey, TargetIdText, UserId
from counters.xp.guidance import XpCheck

Auth = Literal["none", "user", "service"]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error answer: the text for people and the stable code for programs."""

    detail: str
    code: str  # one of ERROR_CODES (the document lists them as an enum)
    # daily_limit_reached: the action and its limit; daily_cap_reached: the cap and the level;
    # both: seconds until midnight UTC (as Retry-After).
    action: str | msgspec.UnsetType = msgspec.UNSET
    action_limit: int | msgspec.UnsetType = msgspec.UNSET
    daily_exp_cap: int | msgspec.UnsetType = msgspec.UNSET
    level: int | msgspec.UnsetType = msgspec.UNSET
    retry_after: int | msgspec.UnsetType = msgspec.UNSET


class LevelView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    unlock: str
    exp_required: int


class TierView(msgspec.Struct, frozen=True, kw_only=True):
    tier_name: str
    tier_display_name: str
    tier_level: int
    monthly_price_aud: int | float
    monthly_xp_allocation: int
    allowed_generation_types: list[str]
    cost_overrides: dict[str, int]
    rollover: bool


class CostView(msgspec.Struct, frozen=True, kw_only=True):
    xp_cost: int
    model: str


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class FlusherView(msgspec.Struct, frozen=True, kw_only=True):
    running: bool
    lag_events: int | msgspec.UnsetType = msgspec.UNSET
    lag_seconds: float | msgspec.UnsetType = msgspec.UNSET
    last_error: str | msgspec.UnsetType = msgspec.UNSET


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    redis: str
    postgres: str
    flusher: FlusherView | msgspec.UnsetType = msgspec.UNSET
    status: str


class BatchRequestDoc(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The batch body as documented (the route decodes each item on its own, see batch.py)."""

    awards: list[BatchItem]


class Param(NamedTuple):
    name: str
    where: Literal["path", "query", "header"]
    kind: Any  # its type; msgspec gives the schema
    description: str = ""


class Op(NamedTuple):
    """One route: what it takes, what it answers (status -> body type), who may call it."""

    method: str
    path: str
    summary: str
    auth: Auth
    ok: dict[int, Any]
    request: Any = None
    params: tuple[Param, ...] = ()
    refusals: dict[int, Any] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    media: str = "application/json"  # of the ok answers


NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_GENERATION = Param("generation_type", "path", NonEmpty)
_USER = Param("user_id", "path", UserId)
_HOLD = Param("hold_id", "path", NonEmpty)
_TARGET = (Param("target_type", "path", TargetType), Param("target_id", "path", TargetIdText))
_X_USER_ID = Param("X-User-Id", "header", UserId, "With a service key: the user acted for")
_IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "header", IdempotencyKey, "Retries with the same key apply once (24 h)"
)
_REFUSED = {402: Refusal, 403: Refusal}
_HISTORY = (
    Param(
        "limit", "query", Annotated[int, msgspec.Meta(ge=1, le=HISTORY_MAX)], "1-200, default 50"
    ),
    Param("kind", "query", str, "ledger kinds of the family, comma-separated (exp_award, ...)"),
    Param("since", "query", str, "ISO 8601 time, inclusive (no offset: UTC; in UTC, years 1-9999)"),
    Param("until", "query", str, "ISO 8601 time, exclusive (as since)"),
    Param("cursor", "query", str, "next_cursor of the previous page"),
)

OPERATIONS: tuple[Op, ...] = (
    Op("POST", "/api/exp/gain", "Award EXP for an action", "user",
       {200: GainResponse}, GainRequest),
    Op("POST", "/api/exp/gain/batch", "Award many actions in one request", "service",
       {200: BatchResponse}, BatchRequestDoc),
    Op("GET", "/api/levels", "The level table", "none", {200: dict[str, LevelView]}),
    Op("GET", "/api/exp/limits", "Today's gains, cap, counts and limits", "user",
       {200: LimitsResponse}),
    Op("GET", "/api/exp/progress", "Total EXP, level and progress", "user",
       {200: ProgressResponse}),
    Op("POST", "/api/admin/exp/adjust", "A support correction of a user's EXP", "service",
       {200: AdjustResponse}, AdjustRequest),
    Op("PUT", "/api/entities/{target_type}/{target_id}", "Record or transfer an entity's owner",
       "service", {200: OwnerResponse}, OwnerRequest, _TARGET),
    Op("GET", "/api/v1/subscriptions/check-xp/{generation_type}", "Enough XP for a generation?",
       "user", {200: XpCheck}, None,
       (_GENERATION, Param("include_guidance", "query", bool))),
    Op("POST", "/api/v1/subscriptions/preview-generation-cost", "The check plus the cost details",
       "user", {200: PreviewResponse}, PreviewRequest),
    Op("GET", "/api/v1/subscriptions/tiers", "The subscription tiers", "none",
       {200: dict[str, TierView]}),
    Op("PUT", "/api/v1/subscriptions/{user_id}", "Subscribe, upgrade or schedule a downgrade",
       "service", {200: SubscriptionResponse}, SubscriptionRequest, (_USER,)),
    Op("DELETE", "/api/v1/subscriptions/{user_id}", "Cancel at period end", "service",
       {200: SubscriptionResponse}, None, (_USER,)),
    Op("GET", "/api/v1/xp/costs", "What each generation type costs", "none",
       {200: dict[str, CostView]}),
    Op("GET", "/api/v1/xp/balance", "The balance with its parts", "user", {200: BalanceResponse}),
    Op("POST", "/api/v1/xp/debit", "Debit a generation's cost atomically", "user",
       {200: DebitResponse}, GenerationRequest, (), _REFUSED),
    Op("POST", "/api/v1/xp/holds", "Hold a generation's cost (two-phase)", "user",
       {201: HoldResponse}, GenerationRequest, (), _REFUSED),
    Op("POST", "/api/v1/xp/holds/{hold_id}/capture", "Take all or part of a hold", "user",
       {200: CaptureResponse}, CaptureRequest, (_HOLD,)),
    Op("POST", "/api/v1/xp/holds/{hold_id}/release", "Return a whole hold", "user",
       {200: ReleaseResponse}, None, (_HOLD,)),
    Op("POST", "/api/v1/xp/refunds", "A failed generation's XP back, once", "service",
       {200: RefundResponse}, RefundRequest),
    Op("POST", "/api/v1/xp/grants", "A top-up, optionally expiring", "service",
       {200: GrantResponse}, GrantRequest),
    Op("GET", "/api/exp/entitlements", "Every feature the caller's level allows, or not", "user",
       {200: EntitlementsResponse}),
    Op("GET", "/api/exp/entitlements/{feature}", "May the caller use a feature, and how much",
       "user", {200: FeatureResponse}, None, (Param("feature", "path", NonEmpty),)),
    Op("GET", "/api/exp/leaderboard", "EXP earned today, this ISO week or all time; own rank",
       "user", {200: Board}, None,
       (Param("period", "query", Period, "day (default), week or all"),
        Param("limit", "query", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)],
              "1-100, default 10"))),
    Op("GET", "/api/exp/history", "The caller's EXP ledger rows, newest first", "user",
       {200: HistoryPage}, None, _HISTORY),
    Op("GET", "/api/v1/xp/transactions", "The caller's XP ledger rows, newest first", "user",
       {200: HistoryPage}, None, _HISTORY),
    Op("GET", "/healthz", "The process answers", "none", {200: Health}),
    Op("GET", "/metrics", "Prometheus metrics (COUNTERS_METRICS_ENABLED)", "none", {200: str},
       media="text/plain"),
    Op("GET", "/readyz", "Redis, Postgres and the flusher's lag", "none",
       {200: Readiness, 503: Readiness},
       None, (Param("strict", "query", str, "1: Postgres must be up too"),)),
)  # fmt: skip

_ERRORS: dict[Auth, tuple[int, ...]] = {
    "none": (400, 404, 503),  # 400: a repeated header (api.asgi.SingleHeaders)
    "user": (400, 401, 403, 404, 409, 413, 422, 429, 503),
    "service": (400, 401, 403, 404, 409, 413, 422, 503),
}
_HEADERS = {
    "Retry-After": "Seconds until a retry can succeed (429: midnight UTC; 503: 1)",
    "Idempotent-Replayed": "true when the answer is the replay of an earlier Idempotency-Key",
}
_REF = "#/components/schemas/{name}"


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route (built once per process).

    Parameters' types go through ``schema_components`` with the bodies': on its own,
    ``msgspec.json.schema`` of an enum is ``{"$ref": "#/$defs/Period", "$defs": ...}``, and a
    ``$ref`` resolves from the document's root, which has no ``$defs`` (reviewer helper-66)."""
    types = list(dict.fromkeys([ErrorBody, *(t for op in OPERATIONS for t in _types(op))]))
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    components["ErrorBody"]["properties"]["code"]["enum"] = list(ERROR_CODES)
    components["Refusal"]["properties"]["code"]["enum"] = ["insufficient_xp", "tier_required"]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, by_type)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "counters",
            "version": "1",
            "description": "EXP/levels and XP credits. Every error body carries `detail` and a "
            "stable `code`:\n\n"
            + "\n".join(f"- `{code}`: {meaning}" for code, meaning in ERROR_CODES.items()),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in _HEADERS.items()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A user's JWT (acts as its `sub`), or a service key "
                    "(acts for the user named in X-User-Id)",
                }
            },
        },
    }


def _types(op: Op) -> list[Any]:
    kinds = (op.request, *op.ok.values(), *op.refusals.values(), *(p.kind for p in _params(op)))
    return [t for t in kinds if t is not None]


def _params(op: Op) -> list[Param]:
    """The operation's parameters, with the headers its caller and method add."""
    params = list(op.params)
    if op.auth == "user":
        params.append(_X_USER_ID)
    if op.method == "POST":
        params.append(_IDEMPOTENCY_KEY)
    return params


def _operation(op: Op, by_type: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, kind in op.ok.items():
        responses[str(status)] = _response("OK", by_type[kind], op.media)
    for status in _ERRORS[op.auth]:
        if str(status) not in responses:
            responses[str(status)] = _response("Error", by_type[ErrorBody])
    for status, kind in op.refusals.items():
        responses[str(status)] = _response(
            "Refused: the seed's middleware body", {"anyOf": [by_type[kind], by_type[ErrorBody]]}
        )
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}".translate(
            str.maketrans("", "", "{}-")
        ),
        "tags": ["xp" if "/v1/" in op.path else "exp" if op.path.startswith("/api/") else "health"],
        "parameters": [_parameter(p, by_type[p.kind]) for p in _params(op)],
        "responses": responses,
    }
    if op.request is not None:
        operation["requestBody"] = {
            "required": op.request is not CaptureRequest,  # no body: capture all of the hold
            "content": {"application/json": {"schema": by_type[op.request]}},
        }
    if op.auth != "none":
        operation["security"] = [{"bearer": []}]
    return operation


def _response(
    description: str, schema: dict[str, Any], media: str = "application/json"
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in _HEADERS},
        "content": {media: {"schema": schema}},
    }


def _parameter(param: Param, schema: dict[str, Any]) -> dict[str, Any]:
    found = {
        "name": param.name,
        "in": param.where,
        "required": param.where == "path",
        "schema": schema,
    }
    return found | ({"description": param.description} if param.description else {})
