"""The hot lane: the two routes on callers' hot paths, served straight from the ASGI scope.

``POST /api/exp/gain`` and ``POST /api/v1/xp/debit`` are called thousands of times a second by
chat and generation servers. Through Starlette each request would also pay for two middleware
layers, route matching, a ``Request``, a ``Response`` and their wrappers of ``send``: measured,
about a fifth of a gain request's server CPU (193 -> 155 us without them; README, Performance).
``CountersApp`` hands exact matches of those routes to a ``HotRoute`` before any of that; every
other request, and every non-HTTP scope, goes through Starlette as usual. Starlette still lists
the hot routes (so a GET to them is its 405) and serves them the same way when a request reaches
them through the router.

Under ``counters serve`` the HTTP protocol goes one step further and serves a hot route's exact
path itself, without ASGI (``counters.cli.http_guard``, issue #15): it asks ``CountersApp.lane``
for the route and hands the parsed headers and whole body to ``CountersApp.answer_lane``, which
runs the same checks, handler and bookkeeping as the ASGI path (``HotRoute.answer`` beside
``HotRoute.serve``) and returns the status, headers and body to write.

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
from starlette.middleware import Middleware
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
        self.raw_method = method.encode("ascii")  # as an HTTP parser gives it
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
        found, repeated = read_headers(scope["headers"])
        request_id = _tagged(found[4]) if tag else None
        try:
            _check_head(found, repeated)
            length = found[3]
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
            status, content, extra = await self._handle(svc, found, body)
        except ClientDisconnect:
            return 0  # nobody is left to answer
        except Exception as exc:
            status, content, extra = error_reply(exc, self.name)
        raw, payload = render(content, extra, request_id)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
        return status

    async def answer(
        self, svc: Services, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer one request whose body was read whole (within ``max_body_bytes``) by the
        HTTP protocol itself (``counters.cli.http_guard``'s hot lane): status, response
        headers and body, exactly as ``serve`` would send them with ``tag``."""
        found, repeated = read_headers(headers)
        request_id = _tagged(found[4])
        try:
            _check_head(found, repeated)
            status, content, extra = await self._handle(svc, found, body)
        except Exception as exc:
            status, content, extra = error_reply(exc, self.name)
        raw, payload = render(content, extra, request_id)
        return status, raw, payload

    def _handle(self, svc: Services, found: list[bytes | None], body: bytes) -> Awaitable[Reply]:
        authorization, user_id, idempotency_key = found[0], found[1], found[2]
        exchange = Exchange(
            authorization,
            None if user_id is None else user_id.decode("latin-1"),
            None if idempotency_key is None else idempotency_key.decode("latin-1"),
            body,
        )
        return self.handler(svc, exchange)


def read_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes | None], bytes | None]:
    """The first value of each header a hot route reads, by slot (``_SLOTS``), found in one
    pass, and the name of the first single-valued one that came twice (None if none did)."""
    found: list[bytes | None] = [None, None, None, None, None, None]
    repeated = None
    for name, value in headers:
        slot = _SLOTS.get(name)
        if slot is not None:
            if found[slot] is None:
                found[slot] = value
            elif slot < _SINGLE:
                repeated = name
    return found, repeated


def _tagged(sent_id: bytes | None) -> str:
    """The request's id (the caller's usable ``X-Request-Id``, else a fresh one), set for the
    log lines logged while it is served."""
    request_id = new_request_id() if sent_id is None else request_id_from(sent_id.decode("latin-1"))
    REQUEST_ID.set(request_id)
    return request_id


def _check_head(found: list[bytes | None], repeated: bytes | None) -> None:
    """Refuse a repeated single-valued header (400) or a body that is not JSON (415)."""
    if repeated is not None:
        raise repeated_header(repeated.decode("latin-1"))
    content_type = found[5]
    if content_type is not None and content_type != b"application/json":
        check_json_media_type(content_type)  # 415 unless another spelling of JSON


def render(
    content: object, extra: dict[str, str] | None, request_id: str | None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A reply's response headers and JSON body (the request id echoed when given)."""
    payload = encode(content)
    raw = [_JSON, (b"content-length", b"%d" % len(payload))]
    if request_id is not None:
        raw.append((_REQUEST_ID, request_id.encode("latin-1")))
    if extra:
        raw += [(_header_name(k), v.encode("latin-1")) for k, v in extra.items()]
    return raw, payload


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


async def send_reply(send: Send, reply: Reply, request_id: str | None = None) -> None:
    """Answer ``reply`` (status, JSON body, extra headers) straight through ASGI, echoing
    ``request_id`` in ``X-Request-Id`` when given."""
    status, content, extra = reply
    raw, payload = render(content, extra, request_id)
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


class SingleHeaders:
    """Middleware, the innermost around Starlette's router: a request that sends
    Authorization, X-User-Id or Idempotency-Key more than once is answered 400
    ``repeated_header`` before any route runs, whether the route reads that header or not.

    The hot routes refuse the same in ``HotRoute`` (``_check_head``); routes went through
    ``api.http.single_header`` one by one, and three that read headers otherwise took the first
    of repeats (the hold acted for the first X-User-Id: found by reviewer helper-63). Here no
    route can forget. Inside the CORS middleware, so a browser can read the 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _, repeated = read_headers(scope["headers"])
            if repeated is not None:
                error = repeated_header(repeated.decode("latin-1"))
                await send_reply(send, error_reply(error, f"{scope['method']} {scope['path']}"))
                return
        await self.app(scope, receive, send)


class CountersApp(Starlette):
    """Starlette, with the hot routes taken out in front of its middleware and router, and
    every HTTP request tagged with its id, timed and (optionally) access-logged; a repeated
    single-valued header is refused on every route (``SingleHeaders``)."""

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
        middleware = [*(kwargs.pop("middleware", None) or ()), Middleware(SingleHeaders)]
        super().__init__(routes=routes, middleware=middleware, **kwargs)
        # No 307 to the path with or without its trailing slash: Starlette builds that Location
        # from the client's Host header (an open redirect, and a POST's body not followed by
        # every client). An unknown path is a 404 with detail and code like any other.
        self.router.redirect_slashes = False
        # By path (the method is compared after): no tuple built per request
        self._hot = {route.path: route for route in hot}
        self._lanes = {route.path.encode("latin-1"): route for route in hot}  # by raw path
        self._wrapped: dict[str, ASGIApp] | None = None  # None: no middleware around them
        # The durability gate answers in front of Starlette's middleware: behind the hot
        # routes' (CORS), else a browser on an allowed origin cannot read its 503
        self._gate: ASGIApp = self._refuse_write
        if hot_wrapper is not None:
            self._gate = hot_wrapper(self._refuse_write)
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
        if self._refuses_writes(scope["method"], scope["path"]):
            await self._gate(scope, receive, send)
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
                self._answered(route, status, start)
            return
        await self.serve_routed(scope, receive, send, start)

    def lane(self, method: bytes, path: bytes, length: int) -> HotRoute | None:
        """The hot route an HTTP protocol may serve itself (``answer_lane``) for a request
        line's ``method`` and raw ``path`` (exactly a hot route's: no query, no escapes) with a
        body of ``length`` bytes; None when there is none, while no services are set (before
        the lifespan starts), when middleware wraps the hot routes (CORS) and for a body over
        ``max_body_bytes`` (its 413 is ASGI's to answer): those go through ASGI."""
        route = self._lanes.get(path)
        if route is None or route.raw_method != method:
            return None
        services = self._services
        if services is None or self._wrapped is not None:
            return None
        if length > services.settings.max_body_bytes:
            return None
        return route

    async def answer_lane(
        self, route: HotRoute, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer a request of ``route`` (from ``lane``) read whole by the HTTP protocol, as
        ``__call__`` would through ASGI: the durability gate, the request id, the timer and the
        access log. Status, response headers (uvicorn's defaults not included) and body."""
        if self._refuses_writes(route.method, route.path):
            status, content, extra = self._write_refusal(route.path)
            found, _ = read_headers(headers)
            raw, payload = render(content, extra, _tagged(found[4]))
            return status, raw, payload
        start = perf_counter()
        services = self._services
        assert services is not None  # lane() gave the route
        status, raw, payload = await route.answer(services, headers, body)
        self._answered(route, status, start)
        return status, raw, payload

    def _refuses_writes(self, method: str, path: str) -> bool:
        """Whether the durability window is full and this request would write (one attribute
        read when it is not)."""
        durability = self.durability
        return (
            durability is not None
            and durability.write_refusal is not None
            and method in _WRITES
            and path not in _READS_BY_POST
        )

    async def _refuse_write(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The durability gate's answer through ASGI (``_write_refusal``), echoing the caller's
        ``X-Request-Id`` or naming a fresh one."""
        found, _ = read_headers(scope["headers"])
        await send_reply(send, self._write_refusal(scope["path"]), _tagged(found[4]))

    def _write_refusal(self, path: str) -> Reply:
        assert self.durability is not None and self.durability.write_refusal is not None
        return error_reply(self.durability.write_refusal, path)

    def _answered(self, route: HotRoute, status: int, start: float) -> None:
        """Time a hot request into its route's histogram and access-log it (when enabled)."""
        if self._metrics:
            observe = route.timers.get(status)
            if observe is None:
                observe = route.timers[status] = self._timers.get(route.path, status)
            observe(perf_counter() - start)
        if self._access_log:
            access(route.method, route.path, route.path, status, perf_counter() - start)

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
