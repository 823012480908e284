"""CORS for browsers on other origins, from ``COUNTERS_CORS_ORIGINS`` (default: none allowed).

Starlette's ``CORSMiddleware`` answers preflights and adds the headers; the same middleware wraps
the hot lane's routes (``api/asgi.py``), which run ahead of Starlette's own middleware stack.
With no origins configured nothing is installed, so the hot lane pays nothing. A refused preflight
is a JSON error body with a ``code`` (``cors_refused``) like every other 4xx, not Starlette's
plain text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware as StarletteCORS
from starlette.responses import Response
from starlette.types import ASGIApp

from counters.settings import Settings

ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-User-Id", "X-Request-Id"]
EXPOSE_HEADERS = ["Retry-After", "Idempotent-Replayed", "X-Request-Id"]
_OPTIONS: dict[str, Any] = {
    "allow_methods": ["GET", "POST", "PUT", "DELETE"],
    "allow_headers": ALLOW_HEADERS,
    "expose_headers": EXPOSE_HEADERS,
    "allow_credentials": False,  # callers send bearer tokens, never cookies
    "max_age": 600,
}


class CORSMiddleware(StarletteCORS):
    """Starlette's CORS middleware, with a refused preflight answered as the API's error body:
    400 ``{"detail": "Disallowed CORS origin, method", "code": "cors_refused"}`` (the detail
    names what was refused: origin, method, headers or private-network)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        body = msgspec.json.encode({"detail": bytes(answer.body).decode(), "code": "cors_refused"})
        headers = {k: v for k, v in answer.headers.items() if k.lower().startswith("access-")}
        return Response(body, answer.status_code, headers, "application/json")


def cors_middleware(settings: Settings) -> list[Middleware]:
    """Starlette's middleware list: CORS when origins are configured, else nothing."""
    if not settings.cors_origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), **_OPTIONS)]


def hot_cors(settings: Settings) -> Callable[[ASGIApp], ASGIApp] | None:
    """What puts a hot route behind the same CORS middleware; None when no origin is allowed."""
    if not settings.cors_origins:
        return None
    origins = list(settings.cors_origins)
    return lambda app: CORSMiddleware(app, allow_origins=origins, **_OPTIONS)
