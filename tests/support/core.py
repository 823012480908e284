"""Constants and small helpers shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from counters.auth import issue_token
from counters.redis.keys import LAYOUT_KEY, SERVED_TIERS_KEY

JWT_SECRET = "test-secret-for-the-counters-suite-0123456789"
SERVICE_KEY = "test-service-key-0123456789abcdef"
NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp()


def user_headers(user_id: str, **extra: str) -> dict[str, str]:
    """Headers of a request made with ``user_id``'s own token."""
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, user_id)}", **extra}


def service_headers(user_id: str | None = None, **extra: str) -> dict[str, str]:
    """Headers of a request made with the service key, acting for ``user_id``."""
    headers = {"Authorization": f"Bearer {SERVICE_KEY}", **extra}
    if user_id is not None:
        headers["X-User-Id"] = user_id
    return headers


def issue_token_for(user_id: str) -> str:
    """A user token for ``user_id`` signed with the suite's secret."""
    return issue_token(JWT_SECRET, user_id)


def data_keys(redis_client: redis.Redis) -> list[str]:
    """Every key in Redis but the deployment's records written at start (``ctr:layout``, the
    bucket count: counters/runtime/layout.py; ``ctr:tiers``, the tiers served:
    counters/runtime/reload.py): what requests wrote."""
    records = (LAYOUT_KEY, SERVED_TIERS_KEY)
    return sorted(key for key in redis_client.keys("*") if key not in records)


def forget_scripts(redis_client: redis.Redis) -> None:
    """Redis forgets every script and function (SCRIPT FLUSH, FUNCTION FLUSH), as a restart
    without persistence would: the next call of each answers NOSCRIPT or "Function not found"
    and must be recovered."""
    redis_client.script_flush()
    redis_client.function_flush()
