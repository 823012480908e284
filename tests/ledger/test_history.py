"""History from the ledger (issue #14): newest first, cursor pages, filters, 4xx and 503."""

from __future__ import annotations

import base64
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from counters.cli.embedded import PostgresServer
from counters.clock import ManualClock
from counters.errors import InvalidRequest
from counters.history import Cursor, Family, parse_query
from tests.ledger.test_persistence_xp import xp_story
from tests.support.core import NOON, service_headers, user_headers
from tests.support.persistence import flusher

pytestmark = pytest.mark.anyio

HISTORY = "/api/exp/history"


async def pages(client: httpx2.AsyncClient, url: str, user: str, **params: Any) -> list[Any]:
    """Every page of ``url`` for ``user``, following next_cursor."""
    found: list[Any] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(url, params=query, headers=user_headers(user))
        assert response.status_code == 200, response.text
        page = response.json()
        found.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def earn(client: httpx2.AsyncClient, clock: ManualClock, user: str) -> None:
    """Seven awards and one correction, a minute apart, across two days."""
    for action in ("daily_chat", "create_scene", "create_persona", "create_scene"):
        await client.post("/api/exp/gain", json={"action": action}, headers=user_headers(user))
        clock.advance(60)
    clock.advance(86_400)  # the next day
    for action in ("daily_chat", "create_persona", "create_persona"):
        await client.post("/api/exp/gain", json={"action": action}, headers=user_headers(user))
        clock.advance(60)
    adjust = {"user_id": user, "delta": -5, "reason": "support #7"}
    await client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())


async def test_exp_history_pages_newest_first_without_gaps(
    durable_client: httpx2.AsyncClient, durable_app: Starlette, clock: ManualClock
) -> None:
    await earn(durable_client, clock, "h1")
    await earn(durable_client, clock, "other")  # never in h1's pages
    await flusher(durable_app).drain()
    found = await pages(durable_client, HISTORY, "h1", limit=3)
    assert [len(page) for page in found] == [3, 3, 2]
    rows = [row for page in found for row in page]
    assert [row["seq"] for row in rows] == list(range(8, 0, -1))
    newest = rows[0]
    assert (newest["id"], newest["kind"], newest["action"], newest["amount"]) == (
        "h1:8", "exp_adjust", "support #7", -5,
    )  # fmt: skip
    assert newest["totals"] == {"exp": 110, "level": 2}
    assert rows[-1]["occurred_at"] == "2026-11-21T12:00:00Z"
    assert rows[-1]["totals"] == {"exp": 20, "level": 1}


async def test_history_filters_by_kind_and_time(
    durable_client: httpx2.AsyncClient, durable_app: Starlette, clock: ManualClock
) -> None:
    await earn(durable_client, clock, "h2")
    await flusher(durable_app).drain()
    adjusts = await pages(durable_client, HISTORY, "h2", kind="exp_adjust")
    assert [[row["kind"] for row in page] for page in adjusts] == [["exp_adjust"]]
    next_day = {"since": "2026-11-22T00:00:00Z", "kind": "exp_award"}
    second = (await pages(durable_client, HISTORY, "h2", **next_day))[0]
    assert [row["action"] for row in second] == ["create_persona", "create_persona", "daily_chat"]
    # "+00:00" unencoded in a URL arrives as a space; it still means UTC.
    first_day = f"{HISTORY}?until=2026-11-22T00:00:00+00:00"
    first = (await durable_client.get(first_day, headers=user_headers("h2"))).json()["items"]
    assert len(first) == 4


async def test_xp_transactions_list_the_xp_family_only(
    durable_client: httpx2.AsyncClient, durable_app: Starlette
) -> None:
    await xp_story(durable_client, "x1")
    await durable_client.post(
        "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("x1")
    )
    await flusher(durable_app).drain()
    rows = [
        r for page in await pages(durable_client, "/api/v1/xp/transactions", "x1") for r in page
    ]
    kinds = [row["kind"] for row in rows]
    assert all(kind.startswith("xp_") for kind in kinds)
    assert "xp_debit" in kinds and "xp_refund" in kinds and "xp_grant" in kinds
    assert [row["seq"] for row in rows] == sorted((row["seq"] for row in rows), reverse=True)
    debit = next(row for row in rows if row["kind"] == "xp_debit")
    assert (debit["action"], debit["amount"]) == ("NEW_IMAGE", -12)
    assert "xp_balance" in debit["totals"]


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "limit must be an integer from 1 to 200"),
        ("limit=201", "limit must be an integer from 1 to 200"),
        ("limit=abc", "limit must be an integer from 1 to 200"),
        # A reviewer's finding: other scripts' digits were a limit (int() reads them), while
        # "+5" was refused; a superscript two was a 500 (int() cannot read it).
        ("limit=%D9%A1", "limit must be an integer from 1 to 200"),  # U+0661 ARABIC-INDIC ONE
        ("limit=%EF%BC%91", "limit must be an integer from 1 to 200"),  # U+FF11 FULLWIDTH ONE
        ("limit=%C2%B2", "limit must be an integer from 1 to 200"),  # U+00B2 SUPERSCRIPT TWO
        ("limit=%2B5", "limit must be an integer from 1 to 200"),
        # "not a exp": a reviewer helper-63 finding
        (
            "kind=xp_debit",
            "kind 'xp_debit' is not an exp ledger kind (exp_... or reconcile_repair)",
        ),
        (  # a kind is a name as a whole string (counters.ids), no trailing newline
            "kind=exp_award%0A",
            "kind 'exp_award\n' is not an exp ledger kind (exp_... or reconcile_repair)",
        ),
        ("since=yesterday", "since must be an ISO 8601 time, e.g. 2026-11-21T00:00:00Z"),
        # A second reviewer's: a NUL after the time was read as the time
        (
            "since=2026-11-21T00:00:00Z%00",
            "since must be an ISO 8601 time, e.g. 2026-11-21T00:00:00Z",
        ),
        ("since=2026-11-22&until=2026-11-21", "since must be before until"),
        # A reviewer's findings: in UTC these leave years 1-9999, the driver refused them, and
        # the route answered 503 storage_unavailable (an ERROR logged, a store failure counted).
        (
            "since=0001-01-01T00:00:00%2B14:00",
            "since must be a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z in"
            " UTC;"
            " 0001-01-01T00:00:00+14:00 is outside them",
        ),
        (
            "until=9999-12-31T23:59:59-12:00",
            "until must be a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z in"
            " UTC;"
            " 9999-12-31T23:59:59-12:00 is outside them",
        ),
        ("cursor=bm9wZQ", "Invalid cursor: pass next_cursor from a previous page"),
        ("cursor=%25%25", "Invalid cursor: pass next_cursor from a previous page"),
        ("page=2", "Unknown query parameter(s): page"),
        ("limit=1&limit=2", "limit may be given once"),
    ],
)
async def test_bad_parameters_are_422_with_detail(
    durable_client: httpx2.AsyncClient, query: str, detail: str
) -> None:
    response = await durable_client.get(f"{HISTORY}?{query}", headers=user_headers("u"))
    assert (response.status_code, response.json()) == (
        422,
        {"detail": detail, "code": "invalid_request"},
    )


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59.999999Z",
        "since=0001-01-01T14:00:00%2B14:00",  # 0001-01-01T00:00:00Z
        "until=9999-12-31T23:59:59%2B14:00",
    ],
)
@pytest.mark.parametrize("url", [HISTORY, "/api/v1/xp/transactions"])
async def test_times_at_the_ends_of_years_1_to_9999_in_utc_are_read(
    durable_client: httpx2.AsyncClient, url: str, query: str
) -> None:
    """The first and last instants datetime holds in UTC reach Postgres, and find nothing."""
    response = await durable_client.get(f"{url}?{query}", headers=user_headers("u"))
    assert (response.status_code, response.json()) == (200, {"items": [], "next_cursor": None})


async def test_the_transactions_route_refuses_a_time_past_year_9999_in_utc(
    durable_client: httpx2.AsyncClient,
) -> None:
    response = await durable_client.get(
        "/api/v1/xp/transactions?until=9999-12-31T23:59:59-12:00", headers=user_headers("u")
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("until must be a time from 0001-01-01T00:00:00Z")


async def test_the_transactions_route_takes_a_limit_in_ascii_digits_only(
    durable_client: httpx2.AsyncClient,
) -> None:
    url = "/api/v1/xp/transactions?limit="
    fullwidth = await durable_client.get(f"{url}%EF%BC%95", headers=user_headers("u"))
    assert (fullwidth.status_code, fullwidth.json()["detail"]) == (
        422,
        "limit must be an integer from 1 to 200",
    )
    assert (await durable_client.get(f"{url}5", headers=user_headers("u"))).status_code == 200
    # More digits than int() reads (4,300), on each route that takes a limit: a 500 before
    for route in ("/api/v1/xp/transactions", "/api/exp/history", "/api/exp/leaderboard"):
        for raw in ("9" * 4301, "0" * 4300 + "5"):
            long = await durable_client.get(f"{route}?limit={raw}", headers=user_headers("u"))
            assert long.status_code == 422, (route, long.text)
            assert long.json()["detail"].startswith("limit must be an integer from 1 to")


async def test_without_postgres_history_is_503_with_retry_after(
    client: httpx2.AsyncClient, durable_client: httpx2.AsyncClient, postgres_server: PostgresServer
) -> None:
    unconfigured = await client.get(HISTORY, headers=user_headers("u"))
    assert unconfigured.status_code == 503 and unconfigured.headers["Retry-After"] == "1"
    postgres_server.stop()
    try:
        down = await durable_client.get("/api/v1/xp/transactions", headers=user_headers("u"))
        chat = await durable_client.post(  # the hot path does not need Postgres
            "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers("known")
        )
    finally:
        postgres_server.start()
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert "detail" in down.json()
    assert chat.status_code in (200, 503)  # a user Redis never saw needs Postgres to start


@pytest.mark.parametrize(
    "raw",
    [
        "v1:99999999999999999999:1",  # past datetime's range: was a 500
        "v1:253402300800000000:1",  # year 10000
        "v1:9223372036854775807:1",
        "v1:-9223372036854775808:1",
        "v1:1796007087320000:99999999999999999999",  # past bigint: was a 503
        "v1: 1:1",  # int() is lenient about spaces, underscores and other digits
        "v1:1_000:1",
        "v1:\u0661\u0662:1",
    ],
)
def test_a_tampered_cursor_is_invalid_not_a_server_error(raw: str) -> None:
    text = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(InvalidRequest, match="Invalid cursor"):
        Cursor.decode(text)


def test_a_cursor_round_trips_to_the_microsecond() -> None:
    cursor = Cursor(int(NOON * 1_000_000) + 123, 42)
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.of(cursor.occurred_at, 42) == cursor


@pytest.mark.parametrize(("family", "other"), [("exp", "xp_debit"), ("xp", "exp_award")])
def test_a_kind_of_the_other_family_is_refused_naming_the_family(
    family: Family, other: str
) -> None:
    """Both families read "an ...": the detail said "is not a exp ledger kind" (a reviewer
    helper-63 finding)."""
    with pytest.raises(InvalidRequest) as refused:
        parse_query("u", family, {"kind": [other]})
    assert refused.value.detail == (
        f"kind '{other}' is not an {family} ledger kind ({family}_... or reconcile_repair)"
    )
