"""The leaderboard route (issue #14): EXP earned today, this ISO week or all time."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import json_response, principal, query_param, services
from counters.errors import InvalidRequest
from counters.exp.leaderboard import Period
from counters.ids import is_digits

_DEFAULT_LIMIT = "10"


async def leaderboard(request: Request) -> Response:
    """``?period=day|week|all&limit=N`` (default day, 10): the top N and the caller's rank."""
    svc = services(request)
    user_id = principal(request).user_id
    unknown = sorted(set(request.query_params) - {"period", "limit"})
    if unknown:
        raise InvalidRequest(f"Unknown query parameter(s): {', '.join(unknown)}")
    period = Period.parse(query_param(request, "period", Period.DAY.value))
    raw = query_param(request, "limit", _DEFAULT_LIMIT)
    if not is_digits(raw):
        raise InvalidRequest("limit must be an integer from 1 to 100")
    return json_response(await svc.leaderboards.board(period, int(raw), user_id))


routes = [Route("/api/exp/leaderboard", leaderboard, methods=["GET"])]
