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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from api.errors import error_reply
from api.http import Reply, encode, receive_body
from counters.runtime.services import Services

_JSON = (b"content-type", b"application/json")


class Exchange(NamedTuple):
    """One hot request: lower-cased header names (the first of repeats), and its whole body."""

    headers: dict[str, str]
    body: bytes


Handler = Callable[[Services, Exchange], Awaitable[Reply]]


class HotRoute:
    """An ASGI endpoint for one hot route: read, ``handler``, answer; errors as everywhere."""

    def __init__(self, method: str, path: str, handler: Handler) -> None:
        self.method = method
        self.path = path
        self.handler = handler

    @property
    def name(self) -> str:
        """The route as idempotency fingerprints and logs name it: "METHOD /path"."""
        return f"{self.method} {self.path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc: Services = scope["app"].state.services
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(scope["headers"])
        }
        try:
            body = await receive_body(
                receive, headers.get("content-length"), svc.settings.max_body_bytes
            )
            status, content, extra = await self.handler(svc, Exchange(headers, body))
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            status, content, extra = error_reply(exc, self.name)
        payload = encode(content)
        raw = [_JSON, (b"content-length", str(len(payload)).encode())]
        if extra:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})


class CountersApp(Starlette):
    """Starlette, with the hot routes taken out in front of its middleware and router."""

    def __init__(self, *, hot: list[HotRoute], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hot = {(route.method, route.path): route for route in hot}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._hot.get((scope["method"], scope["path"]))
            if route is not None:
                scope["app"] = self
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
