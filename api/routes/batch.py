"""POST /api/exp/gain/batch: many awards in one request, for a service acting for many users.

Each item is checked and applied on its own and gets its own status and body, the ones
POST /api/exp/gain would have answered; a bad item never fails its neighbours. The award scripts
of the whole batch run in one pipelined round trip (not a transaction: each award is atomic on
its own, so limits and caps hold exactly as for single awards). An item's ``idempotency_key``
works as the single route's Idempotency-Key header, scoped to the calling service: a retry
through either route with the same key and award is replayed, not applied twice.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.errors import error_reply
from api.http import (
    decode,
    idempotency_of,
    json_response,
    read_body,
    service_caller,
    services,
    single_header,
)
from api.routes.exp import award_reply, gain_target, hot_gain
from api.schemas.exp import GainRequest
from counters.auth import Principal
from counters.errors import InvalidRequest, RequestError, StorageError
from counters.exp.service import batch_item_key
from counters.exp.types import AwardRequest, AwardResult
from counters.ids import UserId, validation_detail

MAX_ITEMS = 500
_MAX_ITEM_BYTES = 1_024  # the body may hold MAX_ITEMS items of up to this size
_SINGLE_ROUTE = hot_gain.name  # batch items share its idempotency keys and fingerprints
_ROUTE = "POST /api/exp/gain/batch"


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Items stay raw here so that one bad item is that item's 422, not the whole batch's.
    awards: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


class BatchItem(GainRequest, frozen=True, kw_only=True):
    user_id: UserId
    idempotency_key: str | None = None


class ItemResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: int
    body: Any
    headers: dict[str, str] | None = None  # Retry-After, Idempotent-Replayed, as the single route


class BatchResponse(msgspec.Struct, frozen=True, kw_only=True):
    results: list[ItemResult]


batch_decoder = msgspec.json.Decoder(BatchRequest)
item_decoder = msgspec.json.Decoder(BatchItem)


async def gain_batch(request: Request) -> Response:
    svc = services(request)
    caller = service_caller(request)
    if "x-user-id" in request.headers:  # not silently ignored: each award names its user
        raise InvalidRequest(
            "X-User-Id does not apply to the batch route: each award names its user_id",
        )
    batch = decode(await read_body(request, MAX_ITEMS * _MAX_ITEM_BYTES), batch_decoder)
    # A key on the batch (as Stripe's): the batch, acting as the service caller itself.
    batch_key = single_header(request, "idempotency-key")
    batch_idem = idempotency_of(caller, batch_key, _ROUTE, caller, batch)
    if batch_idem is not None:
        await svc.exp.claim_batch_key(batch_idem)
    results: list[ItemResult | None] = [None] * len(batch.awards)
    awards: list[AwardRequest] = []
    slots: list[int] = []
    for index, raw in enumerate(batch.awards):
        try:
            derived = None if batch_idem is None else batch_item_key(batch_idem.key, index)
            awards.append(_award_request(caller, raw, derived))
            slots.append(index)
        except RequestError as exc:
            results[index] = _error(exc)
    asked_at = svc.clock.now()  # for retry_after (award_reply)
    outcomes = await svc.exp.award_many(awards)
    for index, outcome in zip(slots, outcomes, strict=True):
        if isinstance(outcome, AwardResult):
            status, body, headers = award_reply(svc, outcome, asked_at)
            results[index] = ItemResult(status=status, body=body, headers=headers or None)
        else:
            results[index] = _error(outcome)
    return json_response(BatchResponse(results=[r for r in results if r is not None]))


def _award_request(caller: str, raw: msgspec.Raw, derived_key: str | None) -> AwardRequest:
    """One item as an award; ``derived_key`` (from the batch's key) when it names no key."""
    try:
        item = item_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid award: {validation_detail(exc)}") from exc
    except RecursionError as exc:  # a Raw item is checked only for shape when the body decodes
        raise InvalidRequest("Invalid award: nested too deeply") from exc
    gain = GainRequest(action=item.action, target_type=item.target_type, target_id=item.target_id)
    key = item.idempotency_key if item.idempotency_key is not None else derived_key
    idem = idempotency_of(caller, key, _SINGLE_ROUTE, item.user_id, gain)
    return AwardRequest(Principal(item.user_id, caller, True), item.action, gain_target(gain), idem)


def _error(error: RequestError | StorageError) -> ItemResult:
    """A refused item: the status and body (with its ``code``) any route gives this error."""
    status, body, headers = error_reply(error, f"{_ROUTE} (one item)")
    return ItemResult(status=status, body=body, headers=headers)


routes = [Route("/api/exp/gain/batch", gain_batch, methods=["POST"])]
