"""Metrics, request ids and logs as one app serves them (in-process; the multi-worker sum and
the process's own behaviour are in tests/system/test_serve.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx2
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from api.app import create_app
from counters import logs, metrics
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import SERVICE_KEY, service_headers
from tests.support.xp import debit, grant, subscribe

pytestmark = pytest.mark.anyio


def _value(name: str, **labels: str) -> float:
    metrics.flush()  # what requests counted so far (batched until then)
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _requests(route: str, status: int) -> float:
    return _value("counters_http_request_duration_seconds_count", route=route, status=str(status))


async def test_every_request_is_timed_per_route_and_status(client: httpx2.AsyncClient) -> None:
    before = {
        key: _requests(*key)
        for key in [("/api/exp/gain", 200), ("/api/exp/gain", 429), ("/api/levels", 200),
                    ("/api/entities/{target_type}/{target_id}", 401), ("other", 404)]
    }  # fmt: skip
    await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("m1"))
    await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("m1"))
    await client.get("/api/levels")
    await client.put("/api/entities/character/7")  # a templated route, no credentials
    await client.get("/no/such/path/123")
    after = {key: _requests(*key) for key in before}
    assert {key: after[key] - before[key] for key in before} == dict.fromkeys(before, 1.0)
    scraped = (await client.get("/metrics")).text
    assert 'counters_http_request_duration_seconds_count{route="/api/levels",status="200"}' in (
        scraped
    )


async def test_award_outcomes_and_near_limit_hits_are_counted(client: httpx2.AsyncClient) -> None:
    awarded = ("counters_exp_awards_total", {"action": "daily_chat", "outcome": "awarded"})
    limit = ("counters_exp_awards_total", {"action": "daily_chat", "outcome": "limit"})
    near = ("counters_exp_near_limit_total", {"action": "daily_chat", "limit": "action"})
    before = [_value(name, **labels) for name, labels in (awarded, limit, near)]
    headers = service_headers("m2") | {"Idempotency-Key": "once"}
    for _ in range(2):  # the replay is not counted again
        await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=headers)
    await client.post("/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("m2"))
    after = [_value(name, **labels) for name, labels in (awarded, limit, near)]
    # daily_chat's limit is 1: the one award is above 80% of it (envoy's near_limit), then 429.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0, 1.0, 1.0]


async def test_xp_outcomes_are_counted_per_generation_type(client: httpx2.AsyncClient) -> None:
    outcomes = {200: "debited", 402: "insufficient", 403: "tier_required"}

    def counts() -> dict[str, float]:
        return {
            outcome: _value(
                "counters_xp_debits_total", generation_type="EDIT_IMAGE", outcome=outcome
            )
            for outcome in outcomes.values()
        }

    before = counts()
    refused = await debit(client, "m3", "EDIT_IMAGE")  # no subscription, no XP
    await subscribe(client, "m3", "game_master")
    await grant(client, "m3", 1_000)
    done = await debit(client, "m3", "EDIT_IMAGE")
    after = counts()
    assert (refused.status_code in (402, 403), done.status_code) == (True, 200)
    expected = dict.fromkeys(outcomes.values(), 0.0)
    expected[outcomes[refused.status_code]] += 1
    expected["debited"] += 1
    assert {key: after[key] - before[key] for key in after} == expected


@contextmanager
def configured_logs(fmt: str) -> Iterator[io.StringIO]:
    """The service's logging configured as in production, in ``fmt``, into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.configure("info", fmt)
    handler = root.handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        for added in list(root.handlers):
            root.removeHandler(added)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The service's logging configured as in production (JSON), into a buffer."""
    with configured_logs("json") as stream:
        yield stream


async def test_storage_errors_carry_the_request_id_in_the_answer_and_the_log(
    settings: Settings, clock: ManualClock, log_lines: io.StringIO
) -> None:
    dead = Settings(
        redis_url="redis://127.0.0.1:1/0", jwt_secret=settings.jwt_secret,
        service_keys=(SERVICE_KEY,), access_log=True,
    )  # fmt: skip
    errors = ("counters_store_errors_total", {"store": "redis", "kind": "error"})
    before = _value(errors[0], **errors[1])
    app = create_app(dead, clock=clock)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://c") as http,
    ):
        response = await http.post(
            "/api/exp/gain",
            json={"action": "daily_chat"},
            headers=service_headers("m4") | {"X-Request-Id": "trace-42"},
        )
        routed = await http.get("/api/exp/limits", headers=service_headers("m4"))
    assert response.status_code == 503 and routed.status_code == 503
    assert response.headers["x-request-id"] == "trace-42"
    assert routed.headers["x-request-id"] not in ("", "trace-42")  # made here
    assert _value(errors[0], **errors[1]) - before == 2.0
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    lines = [line for line in lines if line["logger"].startswith("counters.")]  # not the client
    mine = [line for line in lines if line["request_id"] == "trace-42"]
    assert {line["logger"] for line in mine} == {"counters.api", "counters.access"}
    access = next(line for line in mine if line["logger"] == "counters.access")
    assert (access["route"], access["status"]) == ("/api/exp/gain", 503)
    other = [line for line in lines if line["request_id"] == routed.headers["x-request-id"]]
    assert len(other) == 2  # the storage error and the access line of the routed request


async def test_metrics_off_means_no_route_and_no_timing(settings: Settings) -> None:
    app = create_app(Settings(redis_url=settings.redis_url, metrics_enabled=False))
    before = _requests("/api/levels", 200)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://c") as http,
    ):
        assert (await http.get("/api/levels")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404
    assert _requests("/api/levels", 200) == before


def test_request_ids_are_accepted_only_when_safe() -> None:
    assert logs.request_id_from("abc-123.x:y/z") == "abc-123.x:y/z"
    for unsafe in ("", "a b", "x" * 129, "line\nbreak", '"quoted"'):
        made = logs.request_id_from(unsafe)
        assert made != unsafe and made.count("-") == 1
    assert logs.new_request_id() != logs.new_request_id()


def test_batched_observations_land_in_the_buckets_prometheus_would_use() -> None:
    """Batched.observe + flush gives exactly the samples of prometheus-client's own observe."""
    registry = CollectorRegistry()
    bounds = (0.001, 0.01, 0.1)
    batched = Histogram("batched_seconds", "b", ["l"], buckets=bounds, registry=registry)
    direct = Histogram("direct_seconds", "d", ["l"], buckets=bounds, registry=registry)
    amounts = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 7.0]
    child = metrics.Batched(batched, bounds).child("x")
    for amount in amounts:
        child.observe(amount)
        direct.labels("x").observe(amount)
    assert registry.get_sample_value("batched_seconds_count", {"l": "x"}) == 0.0  # not yet
    metrics.flush()

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        family = next(f for f in registry.collect() if f.name == name)
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("batched_seconds") == samples("direct_seconds")


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/exp/gain/"), ("GET", "/api/levels/")])
async def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_callers_host(
    client: httpx2.AsyncClient, method: str, path: str
) -> None:
    """Starlette's default answers 307 with an empty body and a Location built from the Host
    header: ``Host: evil.example`` sent the caller to http://evil.example/api/exp/gain."""
    headers = service_headers("slash") | {"Host": "evil.example"}
    answer = await client.request(method, path, json={"action": "daily_chat"}, headers=headers)
    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert answer.json() == {"detail": "Not Found", "code": "not_found"}


ACCESS = "counters.access"
FORGED = "1999-01-01T00:00:00.000Z INFO counters.access [-] FAKE"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_request_path_cannot_forge_a_log_line_or_color_the_terminal(
    settings: Settings, clock: ManualClock, fmt: str
) -> None:
    """The access log writes the decoded path: ``%0A`` was a raw newline (a standalone forged
    line in the text format), ``%1b[31m`` a raw ANSI escape; U+2028 and C1's CSI (U+009B)
    split or color a line too. Each record is one line, with nothing unprintable in it."""
    app = create_app(replace(settings, access_log=True), clock=clock)
    transport = httpx2.ASGITransport(app=app)
    with configured_logs(fmt) as stream:
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=transport, base_url="http://c") as http,
        ):
            for path in (
                "/api/levels%0A" + FORGED.replace(" ", "%20"),
                "/api/levels%0D%0A" + FORGED.replace(" ", "%20"),
                "/nothing%1b[31mred%E2%80%A8" + FORGED.replace(" ", "%20") + "%C2%9B31m",
            ):
                assert (await http.get(path)).status_code == 404
    written = stream.getvalue()
    assert not any(line.startswith("1999") for line in written.split("\n")), written
    if fmt == "text":
        lines = [line for line in written.split("\n") if line.split(" ")[2:3] == [ACCESS]]
    else:
        lines = [line for line in written.split("\n") if f'"logger": "{ACCESS}"' in line]
    assert len(lines) == 3 and all(line.isprintable() for line in lines), written
    if fmt == "text":
        assert "/api/levels\\n1999-01-01T00:00:00.000Z INFO counters.access [-] FAKE 404" in written
        assert "/nothing\\x1b[31mred\\u2028" in written and "\\x9b31m" in written
    else:
        paths = [json.loads(line)["message"].split(" ")[1] for line in lines]
        assert paths[0] == "/api/levels\n1999-01-01T00:00:00.000Z"  # the same text, escaped
        assert paths[2].startswith("/nothing\x1b[31mred\u20281999")
