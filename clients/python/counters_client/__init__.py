"""Python client of the counters service (EXP/levels and XP credits).

    from counters_client import AsyncCountersClient

    async with AsyncCountersClient("http://localhost:8000", service_key=KEY) as counters:
        award = await counters.award_exp_with_limits("user-1", "daily_chat")  # None: not awarded
        check = await counters.check_xp_availability("user-1", "NEW_IMAGE")
        debit = await counters.debit("NEW_IMAGE", user_id="user-1")  # raises InsufficientXp

``CountersClient`` is the same without ``await``. ``counters_client.tier_gate`` holds the seed's
tier-permissions middleware for Starlette/FastAPI; ``counters_client.xp_utils`` the seed's
module-level helpers.
"""

from __future__ import annotations

from counters_client.client import AsyncCountersClient, CountersClient
from counters_client.errors import (
    AlreadyOwned,
    AlreadyTriggered,
    BadResponse,
    Conflict,
    CountersError,
    DailyCapReached,
    DailyLimitReached,
    ExpRefused,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientXp,
    InvalidId,
    InvalidRequest,
    NotFound,
    SelfAction,
    TierRequired,
    Unauthorized,
    Unavailable,
    XpRefused,
)
from counters_client.guidance import format_xp_guidance_message

__all__ = [
    "AlreadyOwned",
    "AlreadyTriggered",
    "AsyncCountersClient",
    "BadResponse",
    "Conflict",
    "CountersClient",
    "CountersError",
    "DailyCapReached",
    "DailyLimitReached",
    "ExpRefused",
    "Forbidden",
    "IdempotencyKeyReused",
    "InsufficientXp",
    "InvalidId",
    "InvalidRequest",
    "NotFound",
    "SelfAction",
    "TierRequired",
    "Unauthorized",
    "Unavailable",
    "XpRefused",
    "format_xp_guidance_message",
]
