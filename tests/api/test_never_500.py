"""Whatever arrives at any route, the answer is a deliberate status and a JSON body: never 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.errors import ERROR_CODES
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import JWT_SECRET, NOON, SERVICE_KEY, service_headers, user_headers

ROUTES = [
    ("POST", "/api/exp/gain"),
    ("POST", "/api/exp/gain/batch"),
    ("GET", "/api/exp/limits"),
    ("GET", "/api/exp/progress"),
    ("POST", "/api/admin/exp/adjust"),
    ("PUT", "/api/entities/character/c1"),
    ("GET", "/api/v1/subscriptions/check-xp/NEW_IMAGE?include_guidance=maybe"),
    ("POST", "/api/v1/subscriptions/preview-generation-cost"),
    ("GET", "/api/v1/xp/balance"),
    ("POST", "/api/v1/xp/debit"),
    ("POST", "/api/v1/xp/holds"),
    ("POST", "/api/v1/xp/holds/h1/capture"),
    ("POST", "/api/v1/xp/holds/h1/release"),
    ("POST", "/api/v1/xp/refunds"),
    ("PUT", "/api/v1/subscriptions/u1"),
    ("DELETE", "/api/v1/subscriptions/u1"),
    ("POST", "/api/v1/xp/grants"),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["action", "target_type", "target_id", "user_id", "delta", "reason", "owner_id", "awards",
     "generation_type", "include_guidance", "xp_amount", "transaction_id", "tier",
     "period_start", "expires_at", "idempotency_key"]
)  # fmt: skip
# Times at the ends of datetime's years in UTC (a grant expiring in year 10000 was applied, then
# a 500) and in the epoch's first second.
EXPIRIES = ["2030-01-01T00:00:00Z", "yesterday", "2030-01-01", "9999-12-31T23:59:59-12:00",
            "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+14:00"]  # fmt: skip
STARTS = ["2026-11-01T00:00:00Z", "1970-01-01T00:00:00.5Z", "0001-01-01T00:00:00+14:00",
          "9999-12-31T23:59:59-12:00"]  # fmt: skip
# Nearly valid bodies reach deeper than random ones: real names, odd values beside them.
nearly_valid = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["daily_chat", "create_character", "character_liked", "forked"]),
        "target_type": st.sampled_from(["character", "scene", "planet"]),
        "target_id": json_values,
        "generation_type": st.sampled_from(["NEW_IMAGE", "NEW_VIDEO_WITH_AUDIO", "nope"]),
        "xp_amount": st.integers(min_value=-(2**70), max_value=2**70),
        "user_id": st.sampled_from(["u1", "u2", "", "x" * 200]),
        "tier": st.sampled_from(["pixel_rookie", "game_master", "gold"]),
        "transaction_id": st.text(max_size=70),
        "reason": st.text(max_size=10),
        "delta": st.integers(min_value=-(2**70), max_value=2**70),
        "owner_id": st.sampled_from(["u2", "u1", "bad id"]),
        "expires_at": st.sampled_from(EXPIRIES),
        "period_start": st.sampled_from(STARTS),
        "awards": st.lists(
            st.fixed_dictionaries({"user_id": st.just("u3"), "action": st.just("daily_chat")}),
            max_size=3,
        ),
    },
)
bodies = st.one_of(
    nearly_valid.map(lambda d: ("json", d)),
    st.dictionaries(field_names, json_values, max_size=6).map(lambda d: ("json", d)),
    st.binary(max_size=64).map(lambda b: ("raw", b)),
)
headers = st.sampled_from(
    [
        user_headers("u1"),
        service_headers("u1"),
        service_headers(),
        {},
        user_headers("u1", **{"Idempotency-Key": "k"}),
    ]
)


@pytest.fixture
def served(redis_url: str) -> Iterator[tuple[asyncio.Runner, httpx2.AsyncClient]]:
    """One app, its lifespan running, for all of a test's examples, and an event loop to send
    them on. An app started and stopped per example was 6 s of the test's 6 s (200 starts:
    the Redis pool, the scripts' check, the rules compiled); the inputs are what varies, and
    Redis's state carried over between examples already."""
    config = Settings(redis_url=redis_url, jwt_secret=JWT_SECRET, service_keys=(SERVICE_KEY,))
    app = create_app(config, clock=ManualClock(NOON))
    lifespan = app.router.lifespan_context(app)
    with asyncio.Runner() as runner:
        runner.run(lifespan.__aenter__())
        transport = httpx2.ASGITransport(app=app)
        http = httpx2.AsyncClient(transport=transport, base_url="http://counters")
        try:
            yield runner, http
        finally:
            runner.run(http.aclose())
            runner.run(lifespan.__aexit__(None, None, None))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(ROUTES), body=bodies, chosen=headers)
def test_no_input_makes_a_500(
    served: tuple[asyncio.Runner, httpx2.AsyncClient],
    route: tuple[str, str],
    body: tuple[str, object],
    chosen: dict[str, str],
) -> None:
    runner, http = served
    runner.run(_send(http, route, body, chosen))


async def _send(
    http: httpx2.AsyncClient,
    route: tuple[str, str],
    body: tuple[str, object],
    chosen: dict[str, str],
) -> None:
    method, path = route
    kind, payload = body
    if kind == "json":
        response = await http.request(method, path, json=payload, headers=chosen)
    else:
        assert isinstance(payload, bytes)
        response = await http.request(method, path, content=payload, headers=chosen)
    assert response.status_code < 500, (method, path, payload, response.text)
    body = response.json()
    if response.status_code >= 400:  # every error names itself by a known code
        assert body["code"] in ERROR_CODES, (method, path, body)
        assert "detail" in body or body["error"] == body["code"], body


@pytest.fixture(autouse=True)
def _empty_redis(redis_client: redis.Redis) -> None:
    redis_client.flushall()
