"""The seed's ``app.services.xp_utils`` helpers, as module-level functions.

They use a default client made from ``COUNTERS_URL`` and ``COUNTERS_SERVICE_KEY`` on first use
(or the one given to ``configure``)::

    from counters_client.xp_utils import check_user_xp_for_generation, get_generation_cost

    result = await check_user_xp_for_generation(user_id, "NEW_IMAGE")
    cost = await get_generation_cost("NEW_IMAGE", user_tier=1)
"""

from __future__ import annotations

import os

from counters_client.client import AsyncCountersClient
from counters_client.guidance import format_xp_guidance_message
from counters_client.types import XpCheckDict

__all__ = [
    "check_user_xp_for_generation",
    "configure",
    "format_xp_guidance_message",
    "get_generation_cost",
]

_default: AsyncCountersClient | None = None


def configure(client: AsyncCountersClient) -> None:
    """Use ``client`` for the module-level helpers."""
    global _default
    _default = client


def default_client() -> AsyncCountersClient:
    """The configured client, or one from COUNTERS_URL / COUNTERS_SERVICE_KEY."""
    global _default
    if _default is None:
        url = os.environ.get("COUNTERS_URL", "http://127.0.0.1:8000")
        key = os.environ.get("COUNTERS_SERVICE_KEY")
        if not key:
            raise RuntimeError("set COUNTERS_SERVICE_KEY (or call xp_utils.configure(client))")
        _default = AsyncCountersClient(url, service_key=key)
    return _default


async def check_user_xp_for_generation(user_id: str, generation_type: str) -> XpCheckDict:
    """The seed's simple XP check (never raises; see ``check_xp_availability``)."""
    return await default_client().check_user_xp_for_generation(user_id, generation_type)


async def get_generation_cost(generation_type: str, user_tier: int | str | None = None) -> int:
    """XP one generation costs on a tier (level, name or display name); ``NotFound`` for an
    unknown generation type, ``InvalidRequest`` for an unknown tier."""
    return await default_client().get_generation_cost(generation_type, user_tier)
