"""History routes (issue #14): a user's ledger rows from Postgres, newest first, by cursor.

Never on the hot path: these read Postgres only. Without Postgres (not configured, or down) the
answer is 503 with Retry-After (``api/errors.py``), and the counters keep serving from Redis.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import json_response, principal
from counters.history import Family, parse_query
from counters.runtime.durability import Durability


async def _history(request: Request, family: Family) -> Response:
    user_id = principal(request).user_id
    params = {key: request.query_params.getlist(key) for key in request.query_params}
    query = parse_query(user_id, family, params)
    durability: Durability = request.app.state.durability
    return json_response(await durability.history(query))


async def exp_history(request: Request) -> Response:
    """The caller's EXP awards and corrections."""
    return await _history(request, "exp")


async def xp_transactions(request: Request) -> Response:
    """The caller's XP debits, holds, refunds, grants, allocations and subscription events."""
    return await _history(request, "xp")


routes = [
    Route("/api/exp/history", exp_history, methods=["GET"]),
    Route("/api/v1/xp/transactions", xp_transactions, methods=["GET"]),
]
