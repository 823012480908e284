"""The seed's tier-permissions middleware, as a Starlette/FastAPI dependency and a middleware.

Before a generation, ask the service whether the user has the XP; if not, answer 402 with the
seed's body, exactly::

    {"error": "insufficient_xp", "message": ..., "guidance": ..., "subscription_url": ...,
     "recommended_tier": ...}

``XpGate`` is the dependency (FastAPI: ``Depends(gate)``; Starlette: ``await gate(request)``):
it returns the check, or raises ``XpGateRefused``, whose ``response`` is that 402 (register
``xp_gate_refused`` as the exception handler). ``TierPermissionsMiddleware`` does the same for
every request whose generation type it can tell.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from counters_client.client import AsyncCountersClient
from counters_client.types import XpCheckDict

UserIdOf = Callable[[Request], str]
GenerationTypeOf = Callable[[Request], str | None]


def refusal_response(xp_check: XpCheckDict) -> JSONResponse:
    """The seed's 402 body, from a check that was not sufficient."""
    return JSONResponse(
        status_code=402,
        content={
            "error": "insufficient_xp",
            "message": xp_check["message"],
            "guidance": xp_check.get("guidance"),
            "subscription_url": xp_check.get("subscription_url"),
            "recommended_tier": xp_check.get("recommended_tier"),
        },
    )


class XpGateRefused(Exception):
    """Raised by ``XpGate`` when the XP is short; ``response`` is the seed's 402."""

    def __init__(self, xp_check: XpCheckDict) -> None:
        super().__init__(xp_check["message"])
        self.xp_check = xp_check
        self.response = refusal_response(xp_check)


async def xp_gate_refused(request: Request, exc: Exception) -> Response:
    """The exception handler that answers an ``XpGateRefused`` with its 402."""
    assert isinstance(exc, XpGateRefused)
    return exc.response


def path_param(name: str) -> GenerationTypeOf:
    """Read the generation type from a path parameter (e.g. ``/generate/{generation_type}``)."""
    return lambda request: request.path_params.get(name)


class XpGate:
    """A dependency that lets a request through only with enough XP for its generation."""

    def __init__(
        self,
        client: AsyncCountersClient,
        user_id_of: UserIdOf,
        generation_type_of: GenerationTypeOf | str,
    ) -> None:
        self.client = client
        self.user_id_of = user_id_of
        fixed = generation_type_of
        self.generation_type_of: GenerationTypeOf = (
            (lambda _request: fixed) if isinstance(fixed, str) else fixed
        )

    async def __call__(self, request: Request) -> XpCheckDict:
        generation_type = self.generation_type_of(request)
        if generation_type is None:
            raise ValueError("XpGate: no generation type in this request")
        xp_check = await self.client.check_xp_availability(
            user_id=self.user_id_of(request),
            generation_type=generation_type,
            include_guidance=True,
        )
        if not xp_check["has_sufficient_xp"]:
            raise XpGateRefused(xp_check)
        return xp_check


class TierPermissionsMiddleware:
    """ASGI middleware: the seed's tier-permissions check on each request with a generation
    type (``generation_type_of`` answers None for the others, which pass untouched)."""

    def __init__(
        self,
        app: ASGIApp,
        client: AsyncCountersClient,
        user_id_of: UserIdOf,
        generation_type_of: GenerationTypeOf,
    ) -> None:
        self.app = app
        self.gate = XpGate(client, user_id_of, generation_type_of)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if self.gate.generation_type_of(request) is not None:
            try:
                await self.gate(request)
            except XpGateRefused as refused:
                await refused.response(scope, receive, send)
                return
        await self.app(scope, receive, send)
