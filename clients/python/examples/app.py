"""A generation server guarded by the seed's tier-permissions check, using counters_client.

    export COUNTERS_URL=http://127.0.0.1:8000 COUNTERS_SERVICE_KEY=...
    python clients/python/examples/app.py

then ``curl -X POST localhost:8001/generate/NEW_IMAGE -H 'X-User-Id: demo-user'``: 402 with the
seed's body when the XP is short, else the debit. ``POST /chat`` awards daily_chat and never
fails for the counters service's sake (the award fails open).

Neither answers a 500 for the counters client's exceptions (``counters_refused``): a user id the
service would refuse (``system``, ``a b``: ``InvalidId``) is the caller's 422; a debit refused
after the gate let it through (the balance or tier changed in between) is the service's own
402 or 403 body; no answer from the service is a 503, and any other error of it a 502.
"""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from counters_client import (
    AsyncCountersClient,
    CountersError,
    InsufficientXp,
    InvalidId,
    TierRequired,
    Unavailable,
)
from counters_client.tier_gate import XpGate, XpGateRefused, path_param, xp_gate_refused

# The status the example answers for each of the client's exceptions (the first class in the
# exception's MRO found here): a reviewer (helper-63) had /chat answer a plain 500 for X-User-Id
# "system", and /generate would for a debit refused after the gate.
STATUS_OF: dict[type[CountersError], int] = {
    InvalidId: 422,  # the caller's user id: the service would refuse it as well
    InsufficientXp: 402,  # the seed's body, as the service answered it
    TierRequired: 403,  # the same
    Unavailable: 503,  # no answer, or the service's storage is down: try again
    CountersError: 502,  # any other answer of the service this app cannot serve
}


async def counters_refused(request: Request, exc: Exception) -> Response:
    """A ``CountersError`` as a JSON answer (``STATUS_OF``): a debit's refusal with the
    service's own body (the seed's 402/403), the others ``{"detail", "code"}``."""
    assert isinstance(exc, CountersError)
    status = next(STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF)
    if isinstance(exc, InsufficientXp | TierRequired):
        return JSONResponse(exc.body, status_code=status)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status, headers)


def create_example_app(counters: AsyncCountersClient) -> Starlette:
    """The example app over a counters client (acting with a service key)."""

    def user_of(request: Request) -> str:
        """The acting user (in a real server: the session's user); 401 when there is none."""
        user_id = request.headers.get("x-user-id")
        if not user_id:
            raise HTTPException(401, "X-User-Id is required (the user this request acts for)")
        return user_id

    gate = XpGate(counters, user_of, path_param("generation_type"))

    async def generate(request: Request) -> Response:
        check = await gate(request)  # 402, the seed's body, when the XP is short
        generation_type = request.path_params["generation_type"]
        # Fails closed: refused after the gate (InsufficientXp, TierRequired) or no answer
        # (Unavailable), it raises, and counters_refused answers 402, 403 or 503.
        debit = await counters.debit(generation_type, user_id=user_of(request))
        return JSONResponse(
            {
                "generated": generation_type,
                "xp_required": check["xp_required"],
                "xp_debited": debit.xp_debited,
                "xp_balance": debit.xp_balance,
            }
        )

    async def chat(request: Request) -> Response:
        # Fails open but for the caller's own mistake: a user id the service would refuse
        # raises InvalidId (counters_refused: 422).
        award = await counters.award_exp_with_limits(user_of(request), "daily_chat")
        return JSONResponse({"reply": "hello!", "exp_added": award.exp_added if award else 0})

    return Starlette(
        routes=[
            Route("/generate/{generation_type}", generate, methods=["POST"]),
            Route("/chat", chat, methods=["POST"]),
        ],
        exception_handlers={XpGateRefused: xp_gate_refused, CountersError: counters_refused},
    )


def main() -> None:
    counters = AsyncCountersClient(
        os.environ.get("COUNTERS_URL", "http://127.0.0.1:8000"),
        service_key=os.environ["COUNTERS_SERVICE_KEY"],
    )
    uvicorn.run(create_example_app(counters), host="127.0.0.1", port=8001)


if __name__ == "__main__":
    main()
