"""A generation server guarded by the seed's tier-permissions check, using counters_client.

    export COUNTERS_URL=http://127.0.0.1:8000 COUNTERS_SERVICE_KEY=...
    python clients/python/examples/app.py

then ``curl -X POST localhost:8001/generate/NEW_IMAGE -H 'X-User-Id: demo-user'``: 402 with the
seed's body when the XP is short, else the debit. ``POST /chat`` awards daily_chat and never
fails for the counters service's sake (the award fails open).
"""

from __future__ import annotations

import os

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from counters_client import AsyncCountersClient
from counters_client.tier_gate import XpGate, XpGateRefused, path_param, xp_gate_refused


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
        debit = await counters.debit(generation_type, user_id=user_of(request))  # fails closed
        return JSONResponse(
            {
                "generated": generation_type,
                "xp_required": check["xp_required"],
                "xp_debited": debit.xp_debited,
                "xp_balance": debit.xp_balance,
            }
        )

    async def chat(request: Request) -> Response:
        award = await counters.award_exp_with_limits(user_of(request), "daily_chat")
        return JSONResponse({"reply": "hello!", "exp_added": award.exp_added if award else 0})

    return Starlette(
        routes=[
            Route("/generate/{generation_type}", generate, methods=["POST"]),
            Route("/chat", chat, methods=["POST"]),
        ],
        exception_handlers={XpGateRefused: xp_gate_refused},
    )


def main() -> None:
    counters = AsyncCountersClient(
        os.environ.get("COUNTERS_URL", "http://127.0.0.1:8000"),
        service_key=os.environ["COUNTERS_SERVICE_KEY"],
    )
    uvicorn.run(create_example_app(counters), host="127.0.0.1", port=8001)


if __name__ == "__main__":
    main()
