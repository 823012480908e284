"""The HTTP ceiling: one Starlette route returning a fixed JSON body, on the same uvicorn stack."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# About the size of a gain response, so both pay the same to send their bodies.
BODY = (
    b'{"awarded_to":"u12345","action":"daily_chat","success":true,"exp_added":20,'
    b'"total_exp":20,"level":1,"leveled_up":false,"daily_exp_gained":20,"daily_exp_cap":150,'
    b'"action_count":1,"action_limit":1,"progress":{"current_level":1,"level_name":"Newbie",'
    b'"total_exp":20,"current_level_exp":20,"exp_needed_for_next":100,"exp_to_next_level":80,'
    b'"progress_percentage":20.0,"is_max_level":false}}'
)


async def fixed(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


def app_from_env() -> Starlette:
    """Uvicorn factory (``bench.baselines.bare:app_from_env``)."""
    return Starlette(routes=[Route("/", fixed, methods=["GET", "POST"])])
