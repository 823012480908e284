"""GET /healthz and /readyz, with and without Postgres behind the service."""

from __future__ import annotations

import time
from dataclasses import replace

import httpx2
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from api.app import create_app
from counters import metrics
from counters.cli.embedded import PostgresServer, free_port
from counters.clock import ManualClock
from counters.errors import StorageError
from counters.metrics import count_store_error
from counters.rules import load_rules, rules_version
from counters.settings import Settings
from persistence.store import Store
from tests.support.core import service_headers
from tests.support.http import asgi_client
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


@pytest.mark.parametrize("offset", [0.0, -86_400.0, 30.0])
async def test_readyz_says_degraded_when_this_workers_clock_is_off_redis(
    settings: Settings, offset: float
) -> None:
    """Daily windows follow each worker's clock: a worker a day ahead would count another day's
    limits (issue #11's second attacker). Past COUNTERS_MAX_CLOCK_SKEW_SECONDS off Redis's TIME,
    /readyz says degraded, strict says not ready; within it, nothing shows."""
    checked = replace(settings, max_clock_skew_seconds=5.0)
    app = create_app(checked, clock=ManualClock(time.time() + offset))
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        plain = await http.get("/readyz")
        strict = await http.get("/readyz?strict=1")
    if offset == 0.0:
        assert (plain.status_code, plain.json()["status"]) == (200, "ready")
        assert "clock_skew_seconds" not in plain.json()
        assert strict.status_code == 200
        return
    assert (plain.status_code, plain.json()["status"]) == (200, "degraded")
    assert plain.json()["clock_skew_seconds"] == pytest.approx(offset, abs=2.0)
    assert (strict.status_code, strict.json()["status"]) == (503, "not ready")


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


async def test_a_refused_postgres_connection_is_counted_as_a_postgres_error() -> None:
    """A refused connection is the builtin ConnectionRefusedError for either store: the store is
    named where the call failed, not guessed from the driver's exception (it used to say redis)."""
    labels = {"store": "postgres", "kind": "error"}
    before = _store_errors(**labels), _store_errors(store="redis", kind="error")
    store = await Store.open(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=2)
    try:
        with pytest.raises(StorageError) as raised:
            async with store.connection("probe"):
                pass
    finally:
        await store.close()
    assert isinstance(raised.value.__cause__, OSError)  # nothing asyncpg-specific in the chain
    count_store_error(raised.value)
    after = _store_errors(**labels), _store_errors(store="redis", kind="error")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 0.0)


def _store_errors(**labels: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("counters_store_errors_total", labels) or 0.0
