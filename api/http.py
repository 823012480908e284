"""Request and response plumbing shared by every route: body limits, decoding, auth, JSON."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from counters.auth import Principal
from counters.errors import (
    InvalidRequest,
    MalformedBody,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
    shown,
)
from counters.ids import is_digits, validation_detail
from counters.redis.idempotency import Idempotency
from counters.runtime.services import Services

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
encode = _encoder.encode  # JSON of Structs, dicts and lists

# An answer: status, JSON body and extra headers.
Reply = tuple[int, Any, dict[str, str] | None]


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded with msgspec (Structs, dicts, lists)."""
    return Response(encode(content), status, headers, "application/json")


def reply_response(reply: Reply) -> Response:
    status, content, headers = reply
    return json_response(content, status, headers)


def query_param(request: Request, name: str, default: str) -> str:
    """The one value of query parameter ``name``, or ``default`` when it is absent.

    Raises ``InvalidRequest`` (422) when it is given more than once: ``?limit=5&limit=500``
    has no single meaning, and taking the first or the last silently would let a proxy and the
    service read different requests (as in HTTP parameter pollution)."""
    values = request.query_params.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise InvalidRequest(f"Query parameter {name} is given {len(values)} times; give it once")
    return values[0]


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` (default: the setting),
    and with 415 when its ``Content-Type`` is not JSON (``check_json_media_type``)."""
    check_json_media_type(request.headers.get("content-type"))
    limit = limit or services(request).settings.max_body_bytes
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


_JSON_TYPES: dict[str, bool] = {}  # media types seen -> JSON or not (a bounded memo)


def check_json_media_type(content_type: str | bytes | None) -> None:
    """Refuse a body declared as anything but JSON: raises ``UnsupportedMediaType`` (415).

    Accepted: no ``Content-Type`` at all (a service's plain call), ``application/json`` and
    any ``application/<name>+json`` (RFC 6839), parameters such as ``charset`` ignored, case
    ignored (RFC 9110 section 8.3.1). Refused: every other type, notably ``text/plain``,
    ``application/x-www-form-urlencoded`` and ``multipart/form-data``, the three a browser may
    send cross-site without a CORS preflight: a page on another origin cannot make a user's
    browser post a body this service would apply (an attacker's finding: such bodies were
    applied as JSON)."""
    if content_type is None:
        return
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    ok = _JSON_TYPES.get(content_type)
    if ok is None:
        media = content_type.partition(";")[0].strip().lower()
        ok = media == "application/json" or (
            media.startswith("application/") and media.endswith("+json")
        )
        if len(_JSON_TYPES) < 256:
            _JSON_TYPES[content_type] = ok
    if not ok:
        raise UnsupportedMediaType(
            f"Content-Type {content_type[:100]!r} is not JSON: send application/json"
        )


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from ASGI messages, refused with 413 as soon as it (or its declared length)
    passes ``limit``; ``ClientDisconnect`` if the client went away first."""
    if declared is not None and is_digits(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"Body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode a JSON body into its request type; errors say what is wrong and where."""
    if not body.strip():
        raise MalformedBody("Request body must be a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {validation_detail(exc)}") from exc
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"Malformed JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec's own depth guard: deep nesting is not a server fault
        raise MalformedBody("Malformed JSON: nested too deeply") from exc


def repeated_header(name: str) -> RequestError:
    """The 400 (code ``repeated_header``) for a header that must come once and came twice:
    which Authorization, X-User-Id or Idempotency-Key the caller meant cannot be told, and
    taking the first let a retry carrying only the second apply again (an attacker's finding)."""
    return RequestError(f"The {name} header was sent more than once", code="repeated_header")


def single_header(request: Request, name: str) -> str | None:
    """The value of header ``name`` (lower case), None when absent; ``repeated_header`` when
    it came more than once."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise repeated_header(name)
    return values[0] if values else None


def principal(request: Request) -> Principal:
    """Who is calling (401 without valid credentials)."""
    return services(request).auth.authenticate(
        single_header(request, "authorization"), single_header(request, "x-user-id")
    )


def service_caller(request: Request) -> str:
    """The caller id of a service key, for service-only routes (403 for user tokens)."""
    return services(request).auth.authenticate_service(single_header(request, "authorization"))


def check_body_user(request: Request, user_id: str) -> None:
    """Refuse (422) an ``X-User-Id`` naming someone other than ``user_id``, the user a
    service-only route names in its body (a grant, an adjust) or its path (a subscription): the
    request would act for that user whatever the header said, and a caller that sent the header
    meant it. The batch route refuses the header outright (its items name several users)."""
    sent = single_header(request, "x-user-id")
    if sent is not None and sent != user_id:
        raise InvalidRequest(
            f"X-User-Id names {shown(sent)!r} but the request's user_id is {user_id!r}: "
            "this route acts for that user_id (send the header with that value, or none)"
        )


def idempotency(
    request: Request, caller: str, acting_for: str, payload: object
) -> Idempotency | None:
    """The request's Idempotency-Key, scoped to its caller and fingerprinted.

    The fingerprint covers the route, the user acted for and the decoded request re-encoded,
    so a retry that only differs in whitespace or key order is still the same request.
    """
    key = single_header(request, "idempotency-key")
    if key is None:  # the common case: skip building the URL and the fingerprint
        return None
    return idempotency_of(caller, key, f"{request.method} {request.url.path}", acting_for, payload)


def idempotency_of(
    caller: str, key: str | None, route: str, acting_for: str, payload: object
) -> Idempotency | None:
    """An Idempotency-Key sent for ``route`` (e.g. in a batch item), fingerprinted as above."""
    if key is None:
        return None
    return Idempotency.of(caller, key, f"{route} {acting_for}", encode(payload))


def replay_headers(replayed: bool) -> dict[str, str] | None:
    return {"Idempotent-Replayed": "true"} if replayed else None
