"""Reconcile finds injected drift between Redis, Postgres totals and the ledger, and repairs it."""

from __future__ import annotations

import anyio
import httpx2
import msgspec
import pytest
import redis
from click.testing import CliRunner, Result
from starlette.applications import Starlette

from counters.cli.main import main
from counters.redis.keys import UserKeys
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
from counters.xp.state import XpState
from persistence.reconcile.reconciler import Reconciler, Report
from persistence.reconcile.sources import Finding
from tests.support.core import JWT_SECRET, SERVICE_KEY, service_headers
from tests.support.persistence import fetch, fetchval, flusher, services, store

pytestmark = pytest.mark.anyio


async def adjust(client: httpx2.AsyncClient, user: str, delta: int) -> None:
    body = {"user_id": user, "delta": delta, "reason": "support"}
    response = await client.post("/api/admin/exp/adjust", json=body, headers=service_headers())
    assert response.status_code == 200, response.text


async def reconcile(app: Starlette, *, repair: bool = False) -> tuple[Report, list[Finding]]:
    svc = services(app)
    found: list[Finding] = []
    reconciler = Reconciler(
        svc.redis, store(app), svc.scripts, svc.settings.key_buckets, svc.rules.exp.level_for,
        repair=repair, on_drift=lambda finding, outcome: found.append(finding),
    )  # fmt: skip
    report = await reconciler.run(flusher(app))
    return report, found


def key(user: str) -> str:
    return UserKeys.of(user, DEFAULT_KEY_BUCKETS).user


async def execute(app: Starlette, sql: str, *args: object) -> None:
    async with store(app).connection("test") as conn:
        await conn.execute(sql, *args)


@pytest.fixture
async def users(durable_app: Starlette, durable_client: httpx2.AsyncClient) -> list[str]:
    """Five users with a little history each, all flushed."""
    names = ["ann", "bob", "cy", "dee", "eve"]
    for n, user in enumerate(names):
        await adjust(durable_client, user, 100 + n)
        await adjust(durable_client, user, 50)
    await flusher(durable_app).drain()
    return names


async def test_a_consistent_system_is_clean(durable_app: Starlette, users: list[str]) -> None:
    report, found = await reconcile(durable_app)
    assert found == []
    assert (report.users, report.drifted, report.in_flight, report.clean) == (5, 0, 0, True)


async def test_unflushed_events_are_in_flight_not_drift(
    durable_app: Starlette, durable_client: httpx2.AsyncClient, users: list[str]
) -> None:
    await adjust(durable_client, "ann", 5)
    await adjust(durable_client, "zed", 5)  # a user only Redis knows so far
    svc = services(durable_app)
    reconciler = Reconciler(
        svc.redis,
        store(durable_app),
        svc.scripts,
        svc.settings.key_buckets,
        svc.rules.exp.level_for,
    )
    report = await reconciler.run(flusher=None)  # no drain first: Redis is ahead
    assert (report.users, report.in_flight, report.drifted) == (6, 2, 0)


async def test_injected_drift_is_found_and_repaired_in_the_safe_direction(
    durable_app: Starlette, users: list[str], redis_client: redis.Redis
) -> None:
    # ann: Postgres totals lost 30 EXP.          bob: Redis gained 40 EXP from nowhere.
    # cy: Redis lost 20 EXP.                     dee: Redis lost a flushed write (seq behind).
    # eve: a ledger row went missing.            fay: only Redis knows her, with EXP but no event.
    await execute(durable_app, "UPDATE user_totals SET exp = exp - 30 WHERE user_id = 'ann'")
    redis_client.hincrby(key("bob"), "exp", 40)
    redis_client.hincrby(key("cy"), "exp", -20)
    redis_client.hset(key("dee"), mapping={"exp": 103, "seq": 1})
    await execute(durable_app, "DELETE FROM ledger WHERE event_id = 'eve:1'")
    redis_client.hset(key("fay"), mapping={"exp": 12, "level": 1, "seq": 0})

    report, found = await reconcile(durable_app)
    drifted = {f.observed.user_id: f.problems for f in found}
    assert sorted(drifted) == ["ann", "bob", "cy", "dee", "eve", "fay"]
    assert drifted["ann"] == ("exp: postgres 120, ledger 150", "exp: redis 150, postgres 120")
    assert drifted["dee"] == ("seq: redis 1 behind postgres 2 (lost writes)",)
    assert drifted["eve"] == ("exp: postgres 154, ledger 50",)
    assert (report.drifted, report.repaired, report.clean) == (6, 0, False)

    report, _ = await reconcile(durable_app, repair=True)
    assert (report.drifted, report.repaired, report.clean) == (6, 6, True)

    report, found = await reconcile(durable_app)
    assert (found, report.clean) == ([], True)
    # Nobody lost anything: each total is the highest any source held.
    expected = {"ann": 150, "bob": 191, "cy": 152, "dee": 153, "eve": 154, "fay": 12}
    for user, total in expected.items():
        assert int(redis_client.hget(key(user), "exp") or 0) == total, user
        stored = await fetchval(durable_app, "SELECT exp FROM user_totals WHERE user_id = $1", user)
        assert stored == total, user
    assert redis_client.hget(key("dee"), "seq") == "2"  # new event ids never repeat ledgered ones
    repairs = await fetch(
        durable_app,
        "SELECT user_id, amount FROM ledger WHERE kind = 'reconcile_repair' ORDER BY user_id",
    )
    assert [(r["user_id"], r["amount"]) for r in repairs] == [
        ("ann", 0), ("bob", 40), ("cy", 0), ("dee", 0), ("eve", 104), ("fay", 12),
    ]  # fmt: skip


async def test_an_empty_xp_state_only_redis_holds_is_repaired_for_real(
    durable_app: Starlette, users: list[str], redis_client: redis.Redis
) -> None:
    """Redis holds an XP state with balance 0, Postgres none (what an EXP-only import used to
    leave): "balance 0" ranks above "no state", so the state is copied to Postgres, and the
    repair is checked before it is reported (it used to say repaired and change nothing)."""
    redis_client.hset(key("ann"), "xp", msgspec.json.encode(XpState()).decode())
    _, found = await reconcile(durable_app)
    assert [f.problems for f in found] == [
        ("xp state: redis (balance 0) != postgres (balance None)",)
    ]
    report, _ = await reconcile(durable_app, repair=True)
    assert (report.drifted, report.repaired, report.clean) == (1, 1, True)
    report, found = await reconcile(durable_app)
    assert (found, report.clean) == ([], True)


async def test_quarantined_entries_keep_reconcile_failing(
    durable_app: Starlette, users: list[str]
) -> None:
    await services(durable_app).redis.xadd(
        UserKeys.of("ann", DEFAULT_KEY_BUCKETS).events, {"kind": "garbage"}
    )
    report, found = await reconcile(durable_app, repair=True)
    assert (found, report.quarantined, report.clean) == ([], 1, False)


def invoke(args: list[str], settings: Settings) -> Result:
    env = {
        "COUNTERS_REDIS_URL": settings.redis_url,
        "COUNTERS_DATABASE_URL": settings.database_url,
        "COUNTERS_JWT_SECRET": JWT_SECRET,
        "COUNTERS_SERVICE_KEYS": SERVICE_KEY,
    }
    return CliRunner().invoke(main, args, env=env)


async def test_the_cli_exits_1_on_drift_lists_the_users_and_repairs(
    durable_app: Starlette,
    durable_settings: Settings,
    users: list[str],
    redis_client: redis.Redis,
) -> None:
    redis_client.hincrby(key("bob"), "exp", 40)
    await execute(durable_app, "UPDATE user_totals SET exp = 1 WHERE user_id = 'cy'")

    found = await anyio.to_thread.run_sync(invoke, ["reconcile"], durable_settings)
    assert found.exit_code == 1, found.output
    assert "drift bob: exp: redis 191, postgres 151 -> not repaired" in found.output
    assert "drift cy: exp: postgres 1, ledger 152; exp: redis 152, postgres 1" in found.output
    assert "DRIFT: 5 users checked, 2 drifted, 0 repaired" in found.output
    assert "left drifted: bob, cy" in found.output

    repaired = await anyio.to_thread.run_sync(invoke, ["reconcile", "--repair"], durable_settings)
    assert repaired.exit_code == 0, repaired.output
    assert "drift bob: exp: redis 191, postgres 151 -> repaired" in repaired.output

    clean = await anyio.to_thread.run_sync(invoke, ["reconcile"], durable_settings)
    assert clean.exit_code == 0, clean.output
    assert clean.output.strip() == (
        "clean: 5 users checked, 0 drifted, 0 repaired, 0 in flight, 0 quarantined events"
    )
    count = await fetchval(
        durable_app, "SELECT count(*) FROM ledger WHERE kind = 'reconcile_repair'"
    )
    assert count == 2


async def test_the_cli_exits_2_when_a_store_fails_half_way(
    durable_settings: Settings, users: list[str], redis_client: redis.Redis
) -> None:
    """An attacker's finding: a user key of the wrong type (bob's hash replaced by a string)
    stopped reconcile with a traceback and exit 1, which a cron reads as drift. A Redis or
    Postgres error in the middle of a run is "could not run": one line, exit 2."""
    redis_client.delete(key("bob"))
    redis_client.set(key("bob"), "not a hash")
    result = await anyio.to_thread.run_sync(invoke, ["reconcile", "--no-flush"], durable_settings)
    assert result.exit_code == 2, result.output
    assert "reconcile could not run: ResponseError:" in result.output
    assert "WRONGTYPE" in result.output
