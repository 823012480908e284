"""The hot lane: the two routes on callers' hot paths, served straight from the ASGI scope.

``POST /api/exp/gain`` and ``POST /api/v1/xp/debit`` are called thousands of times a second by
chat and generation servers. Through Starlette each request would also pay for two middleware
layers, route matching, a ``Request``, a ``Response`` and their wrappers of ``send``: measured,
about a fifth of a gain request's server CPU (193 -> 155 us without them; README, Performance).
``CountersApp`` hands exact matches of those routes to a ``HotRoute`` before any of that; every
other request, and every non-HTTP scope, goes through Starlette as usual. Starlette still lists
the hot routes (so a GET to them is its 405) and serves them the same way when a request reaches
them through the router.

A hot route answers exactly as a Starlette route would: the same body limit, the same error
replies (``api.errors.error_reply``), the same JSON encoder.

Every HTTP request, hot or not, gets a request id (``X-Request-Id`` when the caller sent a usable
one, else a fresh one; ``counters.logs``), echoed in the response and carried by every log line
logged while it is served, and is timed into ``counters_http_request_duration_seconds`` per
route and status (``counters.metrics``). On the hot lane that is a handful of operations: the
histogram child is looked up by status in a per-route dict, no label resolution, no dict built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_reply
from api.http import Reply, check_json_media_type, encode, receive_body, repeated_header
from counters.logs import REQUEST_ID, access, new_request_id, request_id_from
from counters.metrics import HTTP_REQUESTS, Observe
from counters.runtime.durability import Durability
from counters.runtime.services import Services

_JSON = (b"content-type", b"application/json")


class Exchange(msgspec.Struct, frozen=True, gc=False):
    """One hot request: the few headers a hot route reads (the first of repeats; None when
    absent), found in one pass over the scope's raw headers, and its whole body. A Struct:
    built per request in ~0.04 us, a NamedTuple's Python ``__new__`` ~0.4."""

    authorization: bytes | None  # raw, as the token cache is keyed (counters.auth)
    user_id: str | None  # X-User-Id
    idempotency_key: str | None
    body: bytes


Handler = Callable[[Services, Exchange], Awaitable[Reply]]


class HotRoute:
    """An ASGI endpoint for one hot route: read, ``handler``, answer; errors as everywhere."""

    def __init__(self, method: str, path: str, handler: Handler) -> None:
        self.method = method
        self.path = path
        self.handler = handler
        # The route's histogram children by status (``counters.metrics``: one per label pair
        # whatever app holds the route), looked up in one step on the hot lane
        self.timers: dict[int, Observe] = {}

    @property
    def name(self) -> str:
        """The route as idempotency fingerprints and logs name it: "METHOD /path"."""
        return f"{self.method} {self.path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Served through Starlette's router (which tags and times the request itself)."""
        await self.serve(scope["app"].state.services, scope, receive, send, tag=False)

    async def serve(
        self, svc: Services, scope: Scope, receive: Receive, send: Send, *, tag: bool
    ) -> int:
        """Answer one request; its status (0 when the client left first). With ``tag``, set
        the request id and echo it in ``X-Request-Id``."""
        # The first value of each header read, in one pass, by slot (see _SLOTS)
        found: list[bytes | None] = [None, None, None, None, None, None]
        repeated = None  # the first of the single-valued headers that came twice
        for name, value in scope["headers"]:
            slot = _SLOTS.get(name)
            if slot is not None:
                if found[slot] is None:
                    found[slot] = value
                elif slot < _SINGLE:
                    repeated = name
        authorization, user_id, idempotency_key, length, sent_id, content_type = found
        request_id = ""
        if tag:
            if sent_id is None:  # the common case: a fresh id
                request_id = new_request_id()
            else:
                request_id = request_id_from(sent_id.decode("latin-1"))
            REQUEST_ID.set(request_id)
        try:
            if repeated is not None:
                raise repeated_header(repeated.decode("latin-1"))
            if content_type is not None and content_type != b"application/json":
                check_json_media_type(content_type)  # 415 unless another spelling of JSON
            limit = svc.settings.max_body_bytes
            message = await receive()
            body = message.get("body", b"")
            if (
                message["type"] != "http.request"
                or message.get("more_body", False)
                or len(body) > limit
                or (length is not None and length.isdigit() and int(length) > limit)
            ):  # not the common case (the whole body in one message, within the limit)
                body = await receive_body(_then(message, receive), _text(length), limit)
            exchange = Exchange(
                authorization,
                None if user_id is None else user_id.decode("latin-1"),
                None if idempotency_key is None else idempotency_key.decode("latin-1"),
                body,
            )
            status, content, extra = await self.handler(svc, exchange)
        except ClientDisconnect:
            return 0  # nobody is left to answer
        except Exception as exc:
            status, content, extra = error_reply(exc, self.name)
        payload = encode(content)
        raw = [_JSON, (b"content-length", b"%d" % len(payload))]
        if tag:
            raw.append((_REQUEST_ID, request_id.encode("latin-1")))
        if extra:
            raw += [(_header_name(k), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
        return status


_HEADER_NAMES: dict[str, bytes] = {}  # extra headers' names as sent (a handful of names)


def _header_name(name: str) -> bytes:
    """``name`` lower-cased and encoded, kept for the next reply that sends it."""
    found = _HEADER_NAMES.get(name)
    if found is None:
        found = name.lower().encode("latin-1")
        if len(_HEADER_NAMES) < 64:  # bounded whatever a handler names
            _HEADER_NAMES[name] = found
    return found


_REQUEST_ID = b"x-request-id"
# The headers a hot route reads, each with its slot in HotRoute.serve's ``found``; those in
# the first _SINGLE slots must come once (api.http.single_header).
_SINGLE = 3
_SLOTS = {
    b"authorization": 0, b"x-user-id": 1, b"idempotency-key": 2, b"content-length": 3,
    _REQUEST_ID: 4, b"content-type": 5,
}  # fmt: skip


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _then(first: Message, receive: Receive) -> Receive:
    """``receive``, with ``first`` (already received) answered first."""
    pending = [first]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again


# Requests that may change state, and so wait while the durability window is full.
_WRITES = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_READS_BY_POST = frozenset({"/api/v1/subscriptions/preview-generation-cost"})


async def send_reply(send: Send, reply: Reply) -> None:
    """Answer ``reply`` (status, JSON body, extra headers) straight through ASGI."""
    status, content, extra = reply
    payload = encode(content)
    raw = [_JSON, (b"content-length", str(len(payload)).encode())]
    if extra:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


_OTHER = "other"  # the route label of a path no route matched (keeps the label set bounded)


class _Timers:
    """Histogram children per (route, status), bound on first use."""

    def __init__(self) -> None:
        self._by_route: dict[str, dict[int, Observe]] = {}

    def get(self, route: str, status: int) -> Observe:
        by_status = self._by_route.get(route)
        if by_status is None:
            by_status = self._by_route[route] = {}
        observe = by_status.get(status)
        if observe is None:
            observe = by_status[status] = HTTP_REQUESTS.child(route, str(status)).observe
        return observe


_HOT_STATUS = "counters.hot_status"


def _status_in_scope(route: HotRoute) -> ASGIApp:
    """``route`` as a plain ASGI app (for middleware to wrap) that leaves its status in the
    scope, where ``CountersApp`` reads it for the timers and the access log."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        svc = scope["app"].state.services
        scope[_HOT_STATUS] = await route.serve(svc, scope, receive, send, tag=True)

    return app


class CountersApp(Starlette):
    """Starlette, with the hot routes taken out in front of its middleware and router, and
    every HTTP request tagged with its id, timed and (optionally) access-logged."""

    def __init__(
        self,
        *,
        hot: list[HotRoute],
        metrics: bool = True,
        access_log: bool = False,
        routes: list[BaseRoute] | None = None,
        hot_wrapper: Callable[[ASGIApp], ASGIApp] | None = None,
        **kwargs: Any,
    ) -> None:
        """``hot_wrapper`` puts middleware the hot routes need too (CORS) around each of them;
        None (no such middleware configured): the hot lane pays nothing for it."""
        super().__init__(routes=routes, **kwargs)
        # No 307 to the path with or without its trailing slash: Starlette builds that Location
        # from the client's Host header (an open redirect, and a POST's body not followed by
        # every client). An unknown path is a 404 with detail and code like any other.
        self.router.redirect_slashes = False
        # By path (the method is compared after): no tuple built per request
        self._hot = {route.path: route for route in hot}
        self._wrapped: dict[str, ASGIApp] | None = None  # None: no middleware around them
        if hot_wrapper is not None:
            self._wrapped = {
                path: hot_wrapper(_status_in_scope(r)) for path, r in self._hot.items()
            }
        self._metrics = metrics
        self._access_log = access_log
        self._timers = _Timers()
        self._services: Services | None = None  # while the lifespan runs; see use_services
        # Route labels by endpoint: Starlette leaves the matched endpoint in the scope.
        self._templates: dict[object, str] = {
            r.endpoint: r.path for r in routes or [] if isinstance(r, Route)
        }
        self.durability: Durability | None = None  # set by the lifespan: the write gate

    def use_services(self, services: Services | None) -> None:
        """The services requests are served with (``app.state.services``), also held in a
        plain attribute: ``state.services`` costs the hot lane ~1.3 us a request (Starlette's
        ``State`` answers through ``__getattr__``, after a failed lookup)."""
        self.state.services = services
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        durability = self.durability
        if (
            durability is not None
            and durability.write_refusal is not None
            and scope["method"] in _WRITES
            and scope["path"] not in _READS_BY_POST
        ):  # the durability window is full: writes wait (one attribute read when it is not)
            await send_reply(send, error_reply(durability.write_refusal, scope["path"]))
            return
        start = perf_counter()
        route = self._hot.get(scope["path"])
        services = self._services
        if (
            route is not None
            and route.method == scope["method"]
            and services is not None
            and not scope.get("root_path")
        ):
            scope["app"] = self
            if self._wrapped is None:
                status = await route.serve(services, scope, receive, send, tag=True)
            else:
                await self._wrapped[route.path](scope, receive, send)
                status = scope.get(_HOT_STATUS, 0)
            if status:
                if self._metrics:
                    observe = route.timers.get(status)
                    if observe is None:
                        observe = route.timers[status] = self._timers.get(route.path, status)
                    observe(perf_counter() - start)
                if self._access_log:
                    access(route.method, route.path, route.path, status, perf_counter() - start)
            return
        await self.serve_routed(scope, receive, send, start)

    async def serve_routed(self, scope: Scope, receive: Receive, send: Send, start: float) -> None:
        """Through Starlette: the request id set and echoed, the status caught for the timer."""
        sent = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID:
                sent = value.decode("latin-1")
                break
        request_id = request_id_from(sent)
        REQUEST_ID.set(request_id)
        tag = (_REQUEST_ID, request_id.encode("latin-1"))
        status = 0

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), tag]}
            await send(message)

        try:
            await super().__call__(scope, receive, tagged)
        finally:
            if status:
                route = self._templates.get(scope.get("endpoint"), _OTHER)
                elapsed = perf_counter() - start
                if self._metrics:
                    self._timers.get(route, status)(elapsed)
                if self._access_log:
                    access(scope["method"], route, scope["path"], status, elapsed)
