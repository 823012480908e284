"""GET /healthz and /readyz, with and without Postgres behind the service."""

from __future__ import annotations

import httpx2
import pytest
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.rules import load_rules, rules_version
from tests.support.core import service_headers
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio


async def test_healthz_says_the_process_answers(client: httpx2.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_without_a_database(client: httpx2.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body.pop("rules_version") == rules_version(load_rules())  # the shipped defaults
    assert body == {"redis": "ok", "postgres": "not configured", "status": "ready"}


async def test_readyz_reports_the_flusher_lag(
    durable_app: Starlette, durable_client: httpx2.AsyncClient
) -> None:
    body = {"user_id": "ann", "delta": 5, "reason": "support"}
    for _ in range(3):
        response = await durable_client.post(
            "/api/admin/exp/adjust", json=body, headers=service_headers()
        )
        assert response.status_code == 200
    behind = (await durable_client.get("/readyz")).json()
    assert behind["status"] == "ready" and behind["postgres"] == "ok"
    assert behind["flusher"]["lag_events"] == 3
    assert behind["flusher"]["lag_seconds"] >= 0
    await flusher(durable_app).drain()
    caught_up = (await durable_client.get("/readyz")).json()
    assert caught_up["flusher"] == {"running": False, "lag_events": 0, "lag_seconds": 0.0}


async def test_readyz_while_postgres_is_down(
    durable_client: httpx2.AsyncClient, postgres_server: PostgresServer
) -> None:
    postgres_server.stop()
    try:
        degraded = await durable_client.get("/readyz")
        strict = await durable_client.get("/readyz?strict=1")
    finally:
        postgres_server.start()
    assert degraded.status_code == 200  # the API still serves from Redis
    assert (degraded.json()["status"], degraded.json()["postgres"]) == ("degraded", "down")
    assert strict.status_code == 503
    assert strict.json()["status"] == "not ready"
