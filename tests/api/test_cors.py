"""CORS from COUNTERS_CORS_ORIGINS: none by default, preflights answered, the hot lane included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import httpx2
import pytest

from api.app import create_app
from counters.clock import ManualClock
from counters.errors import BacklogFull
from counters.settings import Settings
from tests.support.core import user_headers

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


@pytest.fixture
async def cors_client(settings: Settings, clock: ManualClock) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(replace(settings, cors_origins=(ORIGIN,)), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            yield http


@pytest.mark.parametrize("path", ["/api/exp/gain", "/api/v1/xp/debit", "/api/v1/xp/holds"])
async def test_preflights_are_answered_for_an_allowed_origin(
    cors_client: httpx2.AsyncClient, path: str
) -> None:
    response = await cors_client.options(path, headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= set(allowed.split(", "))
    assert "POST" in response.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/exp/gain", {"action": "daily_chat"}),  # the hot lane
        ("/api/v1/xp/debit", {"generation_type": "NEW_IMAGE"}),  # the hot lane, a 403
        ("/api/v1/subscriptions/preview-generation-cost", {"generation_type": "NEW_IMAGE"}),
    ],
)
async def test_answers_carry_the_cors_headers(
    cors_client: httpx2.AsyncClient, path: str, body: dict[str, str]
) -> None:
    headers = user_headers("u1", Origin=ORIGIN)
    response = await cors_client.post(path, json=body, headers=headers)
    assert response.status_code < 500
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Retry-After" in response.headers["access-control-expose-headers"]


@pytest.mark.parametrize("path", ["/api/exp/gain", "/api/exp/gain?via=asgi", "/api/v1/xp/grants"])
async def test_the_durability_gates_503_carries_the_cors_headers(
    settings: Settings, clock: ManualClock, path: str
) -> None:
    """While the durability window is full every write gets 503 before any route runs, in
    front of Starlette's middleware: it carried no CORS headers, so a browser on an allowed
    origin saw a failed fetch, not the 503, its Retry-After or its X-Request-Id."""
    app = create_app(replace(settings, cors_origins=(ORIGIN,)), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
            app.state.durability.write_refusal = BacklogFull("Too many changes are not yet durable")
            body = {"action": "daily_chat"}
            allowed = await http.post(path, json=body, headers=user_headers("u1", Origin=ORIGIN))
            other = await http.post(
                path, json=body, headers=user_headers("u1", Origin="https://evil.example")
            )
    assert allowed.status_code == 503 and allowed.headers["retry-after"] == "1"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-Id" in allowed.headers["access-control-expose-headers"]
    assert allowed.headers["x-request-id"]
    assert other.status_code == 503 and "access-control-allow-origin" not in other.headers


async def test_another_origin_gets_no_cors_headers(cors_client: httpx2.AsyncClient) -> None:
    preflight = await cors_client.options(
        "/api/exp/gain", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert preflight.status_code == 400
    assert preflight.json() == {"detail": "Disallowed CORS origin", "code": "cors_refused"}
    assert "access-control-allow-origin" not in preflight.headers
    answer = await cors_client.post(
        "/api/exp/gain",
        json={"action": "daily_chat"},
        headers=user_headers("u1", Origin="https://evil.example"),
    )
    assert "access-control-allow-origin" not in answer.headers


async def test_by_default_no_origin_is_allowed(client: httpx2.AsyncClient) -> None:
    preflight = await client.options("/api/exp/gain", headers=PREFLIGHT)
    assert preflight.status_code == 405
    assert preflight.json()["code"] == "method_not_allowed"
    answer = await client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("u1", Origin=ORIGIN)
    )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
